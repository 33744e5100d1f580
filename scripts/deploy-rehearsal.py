#!/usr/bin/env python3
"""Deploy rehearsal of infra/sam/template.yaml against moto's CloudFormation.

AWS itself is not reachable from CI, so this is the closest thing to `sam deploy` that can run
here (docs/deploy.md "Rehearsal against moto"):

1. transform the SAM template into plain CloudFormation with aws-sam-translator (the library
   `sam deploy` and cfn-lint use), managed policies looked up in moto's IAM;
2. start `moto_server` on a free loopback port, create what the template takes as parameters
   (a VPC with two subnets and a security group, a database secret, a bucket holding the four
   Lambda zips, an SNS alarm topic);
3. `CreateStack` with the transformed template, wait for the stack to settle, and check that
   every resource type moto implements was created (and the outputs resolve), listing the ones
   moto does not implement;
4. put the sync-health alarms (namespace EdgeSync), which moto's CloudFormation skips, through
   moto's CloudWatch API with the stack's properties and read them back (no dimensions, the
   alarm topic as action).

Exit status 0 when the stack reached CREATE_COMPLETE, every supported resource exists and the
unsupported list equals KNOWN_UNSUPPORTED (so a template change that moto could check, or a moto
upgrade that starts supporting a type, is noticed); 1 otherwise.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
import zipfile
from pathlib import Path

import boto3
from samtranslator.public.translator import ManagedPolicyLoader
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "infra" / "sam" / "template.yaml"
REGION = "eu-west-1"
STACK = "edge-sync"
FUNCTIONS = ("IngestFunction", "ApiFunction", "ReplayFunction", "SweepFunction")

# Resource types of the transformed template that moto 5's CloudFormation does not implement:
# moto skips them with a warning, so they are not created and nothing of them is checked here.
# Keep docs/deploy.md "Rehearsal against moto" in step with this list.
KNOWN_UNSUPPORTED = {
    "AWS::ApiGatewayV2::Api",  # the HTTP API with its routes and JWT authorizer (OpenAPI body)
    "AWS::ApiGatewayV2::Stage",
    "AWS::CloudWatch::Alarm",
    "AWS::IoT::TopicRule",
    "AWS::S3::BucketPolicy",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(workdir / "moto.log", "wb")
    proc = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"moto_server exited ({proc.returncode}); see {workdir}/moto.log")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("moto_server did not answer within 60 s")


def client(service: str, url: str):
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def lambda_zip() -> bytes:
    """A stand-in `bootstrap` (moto never runs it; creating the function needs a package)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\nexit 0\n")
    return buf.getvalue()


def main() -> int:
    # The translator resolves AWS::Region from boto3's default session; nothing may reach AWS.
    os.environ["AWS_DEFAULT_REGION"] = REGION
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ.pop("AWS_PROFILE", None)
    workdir = Path(tempfile.mkdtemp(prefix="edge-rehearsal-"))
    proc, url = start_moto(workdir)
    try:
        return rehearse(url)
    except Exception:
        # moto answers its own crashes with a bare 500: its traceback is in the log.
        lines = (workdir / "moto.log").read_text(errors="replace").splitlines()
        print("\n".join(l for l in lines[-120:] if not l.startswith("127.0.0.1")), file=sys.stderr)
        raise
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if not os.environ.get("EDGE_REHEARSAL_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


def rehearse(url: str) -> int:
    started = time.monotonic()
    # --- what the template takes as parameters -------------------------------------------
    ec2 = client("ec2", url)
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{i}.0/24", AvailabilityZone=f"{REGION}{az}")[
            "Subnet"
        ]["SubnetId"]
        for i, az in ((1, "a"), (2, "b"))
    ]
    sg = ec2.create_security_group(GroupName="edge-lambdas", Description="lambdas", VpcId=vpc)["GroupId"]
    secret = client("secretsmanager", url).create_secret(
        Name="edge/db", SecretString='{"url": "postgres://edge@proxy.local:5432/edge"}'
    )["ARN"]
    # With a JWT secret: moto's IAM role turns the `!If [HasJwtSecret, …, !Ref AWS::NoValue]`
    # policy of the other branch into a null entry and fails on it (a moto limitation, not a
    # template error: cfn-lint and `sam validate --lint` accept it).
    jwt_secret = client("secretsmanager", url).create_secret(Name="edge/jwt", SecretString="k" * 32)["ARN"]
    topic = client("sns", url).create_topic(Name="ops")["TopicArn"]
    s3 = client("s3", url)
    s3.create_bucket(Bucket="edge-artifacts", CreateBucketConfiguration={"LocationConstraint": REGION})
    package = lambda_zip()
    for f in FUNCTIONS:
        s3.put_object(Bucket="edge-artifacts", Key=f"{f}.zip", Body=package)

    # --- SAM → CloudFormation ------------------------------------------------------------
    sam = yaml_parse(TEMPLATE.read_text())
    for f in FUNCTIONS:
        # `sam build` + `sam deploy` replace CodeUri with the uploaded artefact's S3 location.
        sam["Resources"][f]["Properties"]["CodeUri"] = f"s3://edge-artifacts/{f}.zip"
    params = {
        "TopicSlug": "acme-prod",
        "DatabaseSecretArn": secret,
        "JwtSecretArn": jwt_secret,
        "JwtIssuer": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_XXXX",
        "JwtAudience": "edge-console",
        "SubnetIds": ",".join(subnets),
        "SecurityGroupIds": sg,
        "AlarmTopicArn": topic,
        "EventBusName": "default",
    }
    loader = ManagedPolicyLoader(client("iam", url))
    cfn_template = transform(copy.deepcopy(sam), params, loader)
    resources = cfn_template["Resources"]
    types = {r["Type"] for r in resources.values()}
    print(f"transformed: {len(resources)} resources of {len(types)} types")

    # --- CreateStack ---------------------------------------------------------------------
    cfn = client("cloudformation", url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfn.create_stack(
            StackName=STACK,
            TemplateBody=json.dumps(cfn_template),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
    deadline = time.monotonic() + 120
    while True:
        stack = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    status = stack["StackStatus"]
    print(f"stack {STACK}: {status}")
    created = {
        r["LogicalResourceId"]: r
        for r in cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]
    }

    failures = []
    if status != "CREATE_COMPLETE":
        failures.append(f"stack status {status}: {stack.get('StackStatusReason', '')}")
    unsupported = set()
    print(f"{'logical id':36} {'type':38} result")
    for logical, r in sorted(resources.items()):
        t = r["Type"]
        got = created.get(logical)
        if got and got["ResourceStatus"] == "CREATE_COMPLETE":
            result = f"created {got.get('PhysicalResourceId', '')}"
        elif t in KNOWN_UNSUPPORTED:
            unsupported.add(t)
            result = "not implemented by moto"
        else:
            unsupported.add(t)
            result = f"MISSING ({got['ResourceStatus'] if got else 'not created'})"
            failures.append(f"{logical} ({t}) was not created")
        print(f"{logical:36} {t:38} {result}")

    # What the stack created, checked through the service APIs.
    lam = client("lambda", url)
    for f in FUNCTIONS:
        name = created[f]["PhysicalResourceId"]
        conf = lam.get_function_configuration(FunctionName=name)
        env = conf.get("Environment", {}).get("Variables", {})
        # moto's CloudFormation drops `Architectures` (its functions are always x86_64): the
        # architecture is checked in the transformed template instead.
        arch = resources[f]["Properties"].get("Architectures")
        if conf["Runtime"] != "provided.al2023" or arch != ["arm64"]:
            failures.append(f"{f}: {conf['Runtime']} {arch}")
        if env.get("EDGE_DATABASE_SECRET_ARN") != secret:
            failures.append(f"{f}: EDGE_DATABASE_SECRET_ARN={env.get('EDGE_DATABASE_SECRET_ARN')}")
    sweep_env = lam.get_function_configuration(FunctionName=created["SweepFunction"]["PhysicalResourceId"])[
        "Environment"
    ]["Variables"]
    if sweep_env.get("EDGE_CONTROL_TRANSPORT") != "iot-data" or sweep_env.get("EDGE_EVENT_BUS_NAME") != "default":
        failures.append(f"SweepFunction environment: {sweep_env}")
    # the metrics settings (observability.md §1) with the template's defaults
    if (sweep_env.get("EDGE_METRICS_LINEAGE_CAP"), sweep_env.get("EDGE_METRICS_SILENT_AFTER")) != ("100", "15m"):
        failures.append(f"SweepFunction metrics environment: {sweep_env}")
    mappings = lam.list_event_source_mappings(FunctionName=created["IngestFunction"]["PhysicalResourceId"])[
        "EventSourceMappings"
    ]
    if not mappings or mappings[0].get("FunctionResponseTypes") != ["ReportBatchItemFailures"]:
        failures.append(f"ingest event source mapping: {mappings}")
    sqs = client("sqs", url)
    ingest_url = created["IngestQueue"]["PhysicalResourceId"]
    attrs = sqs.get_queue_attributes(QueueUrl=ingest_url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attrs.get("RedrivePolicy", "{}"))
    if attrs.get("VisibilityTimeout") != "180" or str(redrive.get("maxReceiveCount")) != "5":
        failures.append(f"IngestQueue attributes: {attrs}")
    s3.head_bucket(Bucket=created["SpillBucket"]["PhysicalResourceId"])
    # moto creates the bucket without its lifecycle rules: those are checked in the template.
    rules = resources["SpillBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    prefixes = sorted(r["Prefix"] for r in rules if "Prefix" in r)
    if prefixes != ["spill/"]:
        failures.append(f"SpillBucket lifecycle prefixes {prefixes}: only spill/ is written")
    policy = client("iot", url).get_policy(policyName=f"{STACK}-device")
    if "iot:Connection.Thing.ThingName" not in json.dumps(policy["policyDocument"]):
        failures.append(f"DevicePolicy document: {policy['policyDocument']}")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    # ApiUrl stays unresolved (the HTTP API is not implemented) and moto's Ref of an IoT policy
    # is its Python object, not the name: neither output is checked.
    expected = {
        "IngestQueueUrl": ingest_url,
        "IngestDeadLetterQueueUrl": created["IngestDeadLetterQueue"]["PhysicalResourceId"],
        "ReplayQueueUrl": created["ReplayQueue"]["PhysicalResourceId"],
        "SpillBucketName": created["SpillBucket"]["PhysicalResourceId"],
        "TopicSlug": "acme-prod",
    }
    for key, value in expected.items():
        if outputs.get(key) != value:
            failures.append(f"output {key} = {outputs.get(key)!r}, expected {value!r}")

    failures += create_sync_health_alarms(url, resources, params, topic)

    if unsupported != KNOWN_UNSUPPORTED:
        failures.append(
            "moto's unsupported types changed: now "
            f"{sorted(unsupported)}, listed {sorted(KNOWN_UNSUPPORTED)} (update KNOWN_UNSUPPORTED and docs/deploy.md)"
        )
    print(f"outputs: {json.dumps(outputs, sort_keys=True)}")
    print(f"not implemented by moto (not checked): {', '.join(sorted(unsupported))}")
    print(f"rehearsal took {time.monotonic() - started:.1f} s")
    for f in failures:
        print(f"FAIL: {f}")
    return 1 if failures else 0


def resolve(node, params: dict, conditions: dict):
    """The intrinsic functions the alarms use (Ref of a parameter, Fn::If), resolved as
    CloudFormation would; None = AWS::NoValue."""
    if isinstance(node, dict) and len(node) == 1:
        (k, v), = node.items()
        if k == "Ref":
            return None if v == "AWS::NoValue" else params[v]
        if k == "Fn::If":
            cond, yes, no = v
            return resolve(yes if conditions[cond] else no, params, conditions)
    if isinstance(node, dict):
        return {k: r for k, r in ((k, resolve(v, params, conditions)) for k, v in node.items()) if r is not None}
    if isinstance(node, list):
        return [resolve(v, params, conditions) for v in node]
    return node


def create_sync_health_alarms(url: str, resources: dict, params: dict, topic: str) -> list[str]:
    """moto's CloudFormation skips AWS::CloudWatch::Alarm: the template's sync-health alarms
    (namespace EdgeSync, observability.md §5) are put through moto's CloudWatch API instead, with
    the properties the stack would send, and read back. Only these three: the others name
    resources (queues, functions) by attributes moto's stack would have to resolve."""
    failures = []
    conditions = {"HasAlarmTopic": bool(params.get("AlarmTopicArn"))}
    cw = client("cloudwatch", url)
    alarms = {
        logical: resolve(r["Properties"], params, conditions)
        for logical, r in resources.items()
        if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"].get("Namespace") == "EdgeSync"
    }
    for logical, props in sorted(alarms.items()):
        cw.put_metric_alarm(AlarmName=f"{STACK}-{logical}", **props)
    got = {a["AlarmName"]: a for a in cw.describe_alarms(AlarmNamePrefix=f"{STACK}-")["MetricAlarms"]}
    want_metrics = {"edge_devices_silent", "edge_dead_letters_open", "edge_replay_intents_failed"}
    if {p["MetricName"] for p in alarms.values()} != want_metrics:
        failures.append(f"EdgeSync alarms watch {sorted(p['MetricName'] for p in alarms.values())}, expected {sorted(want_metrics)}")
    for logical, props in sorted(alarms.items()):
        a = got.get(f"{STACK}-{logical}")
        if a is None:
            failures.append(f"{logical}: not created through CloudWatch")
            continue
        seen = {k: a.get(k) for k in ("Namespace", "MetricName", "Statistic", "Period", "EvaluationPeriods",
                                       "Threshold", "ComparisonOperator", "TreatMissingData")}
        if a.get("Dimensions") or a.get("AlarmActions") != [topic] or seen["Namespace"] != "EdgeSync":
            failures.append(f"{logical}: dimensions {a.get('Dimensions')}, actions {a.get('AlarmActions')}, {seen}")
        print(f"alarm {logical}: {json.dumps(seen, sort_keys=True, default=str)} actions={a.get('AlarmActions')}")
    return failures


if __name__ == "__main__":
    sys.exit(main())
