#!/usr/bin/env python3
"""Structure check of the terraform module with a real HCL2 parser (python-hcl2).

Runs where no terraform binary (or no provider plugin) is available, so a broken module is
still caught: every .tf file must parse; every `var.`, `local.`, `data.` and resource
reference must name something declared; the resources the deployment needs must exist; and the
device policy and topic rules must agree with infra/sam/template.yaml (whose policy
functions/lambdas/tests/deploy_policy.rs evaluates), so the two deployments cannot drift.

usage: check-terraform.py infra/terraform
"""
import re
import sys
from pathlib import Path

import hcl2
import yaml


def unquote(s):
    return s[1:-1] if isinstance(s, str) and len(s) >= 2 and s[0] == s[-1] == '"' else s


def strings(node):
    """Every string (keys included) anywhere in a parsed structure."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def main(root):
    errors = []
    docs = {}
    for f in sorted(Path(root).glob("*.tf")):
        try:
            with open(f) as fh:
                docs[f.name] = hcl2.load(fh)
        except Exception as e:  # the parser's own error types vary by version
            errors.append(f"{f}: does not parse: {e}")
    if not docs:
        errors.append(f"{root}: no .tf files")

    variables, locals_, resources, data, outputs = set(), set(), {}, set(), set()
    for d in docs.values():
        for block in d.get("variable", []):
            variables.update(unquote(k) for k in block)
        for block in d.get("locals", []):
            locals_.update(k for k in block if not k.startswith("__"))
        for block in d.get("resource", []):
            for rtype, named in block.items():
                for rname, body in named.items():
                    resources[(unquote(rtype), unquote(rname))] = body
        for block in d.get("data", []):
            for dtype, named in block.items():
                for dname in named:
                    data.add((unquote(dtype), unquote(dname)))
        for block in d.get("output", []):
            outputs.update(unquote(k) for k in block)

    ref = re.compile(r"(?<![\w.$])(var|local|data|aws_[a-z0-9_]+)\.([A-Za-z0-9_]+)(?:\.([A-Za-z0-9_]+))?")
    for name, d in docs.items():
        for s in strings(d):
            for kind, a, b in ref.findall(s):
                if kind == "var" and a not in variables:
                    errors.append(f"{name}: var.{a} is not declared")
                elif kind == "local" and a not in locals_:
                    errors.append(f"{name}: local.{a} is not declared")
                elif kind == "data" and (a, b) not in data:
                    errors.append(f"{name}: data.{a}.{b} is not declared")
                elif kind.startswith("aws_") and (kind, a) not in resources:
                    errors.append(f"{name}: {kind}.{a} is not declared")

    need = {
        "aws_iot_policy": 1, "aws_iot_topic_rule": 1, "aws_sqs_queue": 4, "aws_lambda_function": 1,
        "aws_lambda_event_source_mapping": 2, "aws_apigatewayv2_authorizer": 1,
        "aws_apigatewayv2_route": 1, "aws_cloudwatch_event_rule": 1,
        "aws_s3_bucket_lifecycle_configuration": 1, "aws_cloudwatch_metric_alarm": 3,
        "aws_iam_role_policy": 2,
    }
    for rtype, n in need.items():
        have = sum(1 for (t, _) in resources if t == rtype)
        if have < n:
            errors.append(f"missing resource: {rtype} (need {n}, have {have})")
    for out in ["device_policy_name", "api_url", "ingest_queue_url", "spill_bucket_name"]:
        if out not in outputs:
            errors.append(f"missing output {out}")

    esm = resources.get(("aws_lambda_event_source_mapping", "ingest"), {})
    if "ReportBatchItemFailures" not in " ".join(strings(esm)):
        errors.append("ingest event source mapping lacks ReportBatchItemFailures")
    auth = resources.get(("aws_apigatewayv2_authorizer", "jwt"), {})
    if unquote(auth.get("authorizer_type")) != "JWT":
        errors.append("the HTTP API authorizer is not a JWT authorizer")
    for name, body in resources.items():
        if name[0] == "aws_lambda_function":
            if "arm64" not in " ".join(strings(body)) or unquote(body.get("runtime")) != "provided.al2023":
                errors.append(f"{name}: not arm64 / provided.al2023")

    # Parity with the SAM template.
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: (
        loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode)
        else loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node)))
    sam_path = Path(root).parent / "sam" / "template.yaml"
    sam = yaml.load(sam_path.read_text(), Loader=Loader)
    sam_statements = sam["Resources"]["DevicePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    tf_policy = " ".join(strings(resources.get(("aws_iot_policy", "device"), {})))
    for st in sam_statements:
        m = re.search(r'Sid = "%s", Effect = "Allow", Action = "([^"]+)"' % st["Sid"], tf_policy)
        if not m:
            errors.append(f"terraform device policy lacks statement {st['Sid']}")
        elif m.group(1) != st["Action"]:
            errors.append(f"{st['Sid']}: action {m.group(1)} != SAM {st['Action']}")
    sam_topics = [r.split("ThingName}/", 1)[1] for st in sam_statements if st["Sid"] == "PublishOwnDeviceTopics"
                  for r in st["Resource"]]
    tf_topics = []
    for d in docs.values():
        for block in d.get("locals", []):
            if "device_topics" in block:
                tf_topics = [unquote(t) for t in block["device_topics"]]
    if sorted(sam_topics) != sorted(tf_topics):
        errors.append(f"device topics differ: SAM {sam_topics} vs terraform {tf_topics}")
    sam_sql = {r["Properties"]["TopicRulePayload"]["Sql"].split(" FROM ")[0]
               for r in sam["Resources"].values() if r["Type"] == "AWS::IoT::TopicRule"}
    tf_rule = resources.get(("aws_iot_topic_rule", "device_topic"), {})
    tf_sql = unquote(tf_rule.get("sql", "")).split(" FROM ")[0]
    if sam_sql != {tf_sql}:
        errors.append(f"topic rule SELECT differs: SAM {sam_sql} vs terraform {tf_sql!r}")

    for e in errors:
        print(f"check-terraform: {e}", file=sys.stderr)
    print(f"check-terraform: {len(docs)} files, {len(resources)} resources, "
          f"{len(variables)} variables, {len(outputs)} outputs: {'FAIL' if errors else 'ok'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "infra/terraform"))
