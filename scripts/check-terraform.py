#!/usr/bin/env python3
"""Structure check of the terraform module with a real HCL2 parser (python-hcl2).

Runs where no terraform binary (or no provider plugin) is available, so a broken module is
still caught: every .tf file must parse; every `var.`, `local.`, `data.` and resource
reference must name something declared; the resources the deployment needs must exist; and the
device policy and topic rules must agree with infra/sam/template.yaml (whose policy
functions/lambdas/tests/deploy_policy.rs evaluates), so the two deployments cannot drift.

It also checks the example root configuration in examples/complete (docs/deploy.md 2b): it
parses, has an `aws` provider block, passes every required module variable and nothing the
module does not declare, and re-exports every module output.

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
    required = set()
    for d in docs.values():
        for block in d.get("variable", []):
            variables.update(unquote(k) for k in block)
            required.update(unquote(k) for k, body in block.items() if "default" not in body)
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

    # Lifecycle rules: the same prefixes in both, and only prefixes something writes.
    sam_prefixes = sorted(r["Prefix"] for r in sam["Resources"]["SpillBucket"]["Properties"]
                          ["LifecycleConfiguration"]["Rules"] if "Prefix" in r)
    tf_lifecycle = resources.get(("aws_s3_bucket_lifecycle_configuration", "spill"), {})
    tf_prefixes = sorted(re.findall(r"prefix'?\"?\s*[:=]\s*'?\"?([a-z]+/)", repr(tf_lifecycle)))
    if sam_prefixes != ["spill/"] or tf_prefixes != ["spill/"]:
        errors.append(f"lifecycle prefixes: SAM {sam_prefixes}, terraform {tf_prefixes} (only spill/ is written)")

    example = Path(root) / "examples" / "complete"
    if example.is_dir():
        errors.extend(check_example(example, variables, required, outputs))
    else:
        errors.append(f"{example}: missing (docs/deploy.md 2b uses it)")

    for e in errors:
        print(f"check-terraform: {e}", file=sys.stderr)
    print(f"check-terraform: {len(docs)} files, {len(resources)} resources, "
          f"{len(variables)} variables, {len(outputs)} outputs: {'FAIL' if errors else 'ok'}")
    return 1 if errors else 0


def check_example(example, variables, required, outputs):
    """The root configuration that calls the module: provider, inputs, re-exported outputs."""
    errors = []
    docs = []
    for f in sorted(example.glob("*.tf")):
        try:
            with open(f) as fh:
                docs.append(hcl2.load(fh))
        except Exception as e:
            errors.append(f"{f}: does not parse: {e}")
    providers = {unquote(k) for d in docs for block in d.get("provider", []) for k in block}
    if "aws" not in providers:
        errors.append(f"{example}: no provider \"aws\" block")
    modules = [body for d in docs for block in d.get("module", []) for name, body in block.items()
               if unquote(name) == "edge_sync"]
    if len(modules) != 1:
        return errors + [f"{example}: expected one module \"edge_sync\", found {len(modules)}"]
    module = modules[0]
    if unquote(module.get("source")) != "../..":
        errors.append(f"{example}: module source {module.get('source')!r}, expected ../..")
    passed = {k for k in module if not k.startswith("__") and k not in ("source", "version", "providers", "depends_on")}
    for k in sorted(passed - variables):
        errors.append(f"{example}: module input {k} is not a variable of the module")
    for k in sorted(required - passed):
        errors.append(f"{example}: required module variable {k} is not passed")
    exported = set()
    for d in docs:
        for block in d.get("output", []):
            for name, body in block.items():
                m = re.search(r"module\.edge_sync\.([A-Za-z0-9_]+)", " ".join(strings(body)))
                if m:
                    exported.add(m.group(1))
    for k in sorted(exported - outputs):
        errors.append(f"{example}: re-exports module.edge_sync.{k}, which the module does not have")
    for k in sorted(outputs - exported):
        errors.append(f"{example}: does not re-export the module output {k}")
    return errors


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "infra/terraform"))
