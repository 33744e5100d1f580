#!/usr/bin/env python3
"""Checks of what operators deploy to watch edge-sync (docs/operations.md) against the
metric contract of observability.md, which lives beside the project, not in it: its names and
labels are copied below (FAMILIES) and its §5 alert examples (SPEC_RULES, SPEC_SILENT_ALARM).

1. Alarms: the three sync-health CloudWatch alarms of infra/sam/template.yaml and of the
   terraform module (alarms.tf) have exactly the expected properties (§5's shape for
   edge_devices_silent; no dimensions = the EMF [] set), the optional alarm action, and the two
   EDGE_METRICS_* variables reach the Lambdas (the sweep at least) with their defaults.
2. Prometheus rules (infra/prometheus/edge-sync-rules.yml): parses, group `edge-sync` is §5
   verbatim, every other rule uses only the spec's metric names and labels; docs/operations.md
   quotes both §5 blocks verbatim.
3. Grafana dashboard (infra/grafana/edge-sync.json): parses, takes its datasource as the
   ${DS_PROMETHEUS} input, has the project_id variable, every panel expression (and variable
   query) uses only the spec's metric names (the histogram's _bucket/_sum/_count too) and, per
   family, only the labels the spec gives it (plus the scrape's job/instance); the families the
   operator guide relies on all have a panel; no two panels overlap on the grid.
4. Self-test: each check is run on altered copies (a Period changed, Dimensions added, an
   unknown metric or label in a panel, a rule's threshold changed) and must fail on each, so a
   check that stopped biting is noticed.

usage: check-observability.py [REPO_ROOT]
"""
import copy
import json
import re
import sys
from pathlib import Path

import hcl2
import yaml

# --- the contract, copied from observability.md §2 (cloud) and §3 (agent) ------------------
# family -> labels. Keep in step with the spec by hand: a name here that the spec drops, or a
# name the spec adds and a panel uses, is a review finding.
HISTOGRAMS = {"edge_handler_duration_seconds": {"handler"}}
FAMILIES = {
    # §2 cloud counters
    "edge_batches_total": {"kind", "status"},
    "edge_batches_rejected_total": {"kind", "code"},
    "edge_stale_journal_epochs_total": set(),
    "edge_tenant_fields_stripped_total": set(),
    "edge_rows_materialized_total": {"kind", "path"},
    "edge_rows_staged_total": {"reason"},
    "edge_materialization_failures_total": {"class"},
    "edge_controls_published_total": {"kind", "attempt"},
    "edge_dead_letters_total": {"transport"},
    # §2 cloud gauges
    "edge_lineages": {"project_id", "status", "pause_reason"},
    "edge_staged_rows": {"project_id"},
    "edge_staged_bytes": {"project_id"},
    "edge_mirror_lag_seconds_max": {"project_id"},
    "edge_devices_silent": {"project_id"},
    "edge_schema_reviews_open": {"project_id", "scope", "status"},
    "edge_replay_intents_open": {"project_id"},
    "edge_replay_intents_failed": {"project_id"},
    "edge_controls_pending": {"project_id", "kind"},
    "edge_dead_letters_open": set(),
    "edge_lineage_staged_rows": {"project_id", "device", "source_table"},
    "edge_lineage_staged_bytes": {"project_id", "device", "source_table"},
    "edge_lineage_mirror_lag_seconds": {"project_id", "device", "source_table"},
    "edge_lineage_last_batch_timestamp_seconds": {"project_id", "device", "source_table"},
    "edge_lineage_paused": {"project_id", "device", "source_table", "reason"},
    "edge_metrics_lineage_series_dropped": set(),
    # §3 agent gauges
    "edge_agent_journal_rows": {"table"},
    "edge_agent_journal_bytes": {"table"},
    "edge_agent_oldest_pending_age_seconds": {"table"},
    "edge_agent_last_acked_commit_seq": {"table"},
    "edge_agent_unacked_batches": {"table"},
    "edge_agent_table_paused": {"table"},
    "edge_agent_table_needs_snapshot": {"table"},
    "edge_agent_table_blocked": {"table", "reason"},
    "edge_agent_last_ack_timestamp_seconds": set(),
    "edge_agent_mqtt_connected": set(),
    "edge_agent_info": {"device", "version", "journal_epoch"},
    # §3 agent counters
    "edge_agent_batches_acked_total": {"table"},
    "edge_agent_rows_acked_total": {"table"},
    "edge_agent_retention_dropped_entries_total": {"table"},
    "edge_agent_controls_total": {"kind", "outcome"},
}
for _h, _labels in HISTOGRAMS.items():
    FAMILIES[_h + "_bucket"] = _labels | {"le"}
    FAMILIES[_h + "_sum"] = set(_labels)
    FAMILIES[_h + "_count"] = set(_labels)
# Labels Prometheus itself adds to every scraped series (the target), allowed on every family.
TARGET_LABELS = {"job", "instance"}

# observability.md §5, the Prometheus rules, verbatim.
SPEC_RULES = [
    {
        "alert": "EdgeDeviceStoppedSyncing",
        "expr": "max by (project_id) (edge_devices_silent) > 0",
        "for": "5m",
        "annotations": {"summary": "{{ $value }} device(s) of {{ $labels.project_id }} silent: edgectl fleet health"},
    },
    {"alert": "EdgeAgentNotDelivering", "expr": "edge_agent_oldest_pending_age_seconds > 900", "for": "5m"},
]
# observability.md §5's two blocks as text: docs/operations.md quotes both verbatim, the rules
# file the first (comments included).
SPEC_RULES_TEXT = """\
groups:
  - name: edge-sync
    rules:
      - alert: EdgeDeviceStoppedSyncing
        expr: max by (project_id) (edge_devices_silent) > 0
        for: 5m
        annotations: {summary: "{{ $value }} device(s) of {{ $labels.project_id }} silent: edgectl fleet health"}
      - alert: EdgeAgentNotDelivering   # exact, where agents are scraped
        expr: edge_agent_oldest_pending_age_seconds > 900
        for: 5m
"""
SPEC_ALARM_TEXT = """\
EdgeDevicesSilentAlarm:
  Type: AWS::CloudWatch::Alarm
  Properties: {Namespace: EdgeSync, MetricName: edge_devices_silent, Statistic: Maximum, Period: 60,
    EvaluationPeriods: 5, Threshold: 0, ComparisonOperator: GreaterThanThreshold,
    TreatMissingData: breaching}   # no Dimensions = the [] set, every project; missing = sweep down
"""
# observability.md §5, the CloudWatch alarm; the two others the brief adds take the same shape
# (greater than 0 over 5 one-minute maxima) and leave missing data notBreaching, since a sweep
# that stopped writing is already the silent alarm's breaching case.
SPEC_SILENT_ALARM = {
    "Namespace": "EdgeSync", "MetricName": "edge_devices_silent", "Statistic": "Maximum",
    "Period": 60, "EvaluationPeriods": 5, "Threshold": 0,
    "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "breaching",
}
ALARMS = {
    # SAM logical id, terraform resource name, expected properties
    ("EdgeDevicesSilentAlarm", "devices_silent"): SPEC_SILENT_ALARM,
    ("EdgeDeadLettersOpenAlarm", "dead_letters_open"): dict(
        SPEC_SILENT_ALARM, MetricName="edge_dead_letters_open", TreatMissingData="notBreaching"),
    ("EdgeReplayIntentsFailedAlarm", "replay_intents_failed"): dict(
        SPEC_SILENT_ALARM, MetricName="edge_replay_intents_failed", TreatMissingData="notBreaching"),
}
TF_KEYS = {
    "Namespace": "namespace", "MetricName": "metric_name", "Statistic": "statistic",
    "Period": "period", "EvaluationPeriods": "evaluation_periods", "Threshold": "threshold",
    "ComparisonOperator": "comparison_operator", "TreatMissingData": "treat_missing_data",
}
METRICS_ENV = {"EDGE_METRICS_LINEAGE_CAP": ("MetricsLineageCap", "metrics_lineage_cap", "100"),
               "EDGE_METRICS_SILENT_AFTER": ("MetricsSilentAfter", "metrics_silent_after", "15m")}
# Families the dashboard must show (the panels docs/operations.md points at).
DASHBOARD_NEEDS = [
    "edge_batches_total", "edge_batches_rejected_total", "edge_rows_materialized_total",
    "edge_rows_staged_total", "edge_staged_rows", "edge_mirror_lag_seconds_max",
    "edge_devices_silent", "edge_schema_reviews_open", "edge_replay_intents_open",
    "edge_replay_intents_failed", "edge_controls_pending", "edge_dead_letters_open",
    "edge_handler_duration_seconds_bucket", "edge_lineage_mirror_lag_seconds",
    "edge_lineage_staged_rows", "edge_lineage_paused", "edge_metrics_lineage_series_dropped",
    "edge_agent_oldest_pending_age_seconds", "edge_agent_journal_rows",
    "edge_agent_mqtt_connected", "edge_agent_table_blocked",
]


# --- a small PromQL scanner: metric names and the labels used with them ----------------------
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes",
    "clamp", "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "day_of_month",
    "day_of_week", "delta", "deriv", "exp", "floor", "group", "histogram_quantile", "holt_winters",
    "hour", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log2", "log10", "max", "max_over_time", "min", "min_over_time", "minute", "month",
    "predict_linear", "present_over_time", "quantile", "quantile_over_time", "rate", "resets",
    "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev", "stddev_over_time", "stdvar",
    "stdvar_over_time", "sum", "sum_over_time", "time", "timestamp", "topk", "vector", "year",
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
TOKEN = re.compile(r"""
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<range>\[[^\]]*\])
  | (?P<num>(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?\b)
  | (?P<id>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[{}(),=<>+\-*/%^@])
  | (?P<ws>\s+)
  | (?P<bad>.)
""", re.X)


def scan(expr):
    """(metrics, [(metric, label)] from matchers, grouping labels, errors) of one expression."""
    toks = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr) if m.lastgroup != "ws"]
    metrics, matched, grouped, errors = [], [], set(), []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "bad":
            errors.append(f"unexpected {text!r}")
        elif kind == "id" and text in GROUPING and nxt == "(":
            j = i + 2
            while j < len(toks) and toks[j][1] != ")":
                if toks[j][0] == "id":
                    grouped.add(toks[j][1])
                j += 1
            i = j
        elif kind == "id" and (text.lower() in KEYWORDS or (text in FUNCTIONS and nxt in ("(", "by", "without"))):
            pass  # an operator keyword, or a function / aggregation (`sum by (x) (…)` too)
        elif kind == "id" or (kind == "op" and text == "{"):
            metric = text if kind == "id" else None
            if metric is not None:
                metrics.append(metric)
            else:
                errors.append("a selector without a metric name")
            j = i + 1 if kind == "id" else i
            if j < len(toks) and toks[j][1] == "{":
                j += 1
                while j < len(toks) and toks[j][1] != "}":
                    if toks[j][0] == "id":
                        if toks[j][1] == "__name__":
                            errors.append("__name__ matcher (name the metric instead)")
                        matched.append((metric, toks[j][1]))
                        j += 3  # label, operator, value
                        if j < len(toks) and toks[j][1] == ",":
                            j += 1
                        continue
                    j += 1
                i = j
        i += 1
    return metrics, matched, grouped, errors


def check_expr(expr, where):
    """Errors of one PromQL expression against FAMILIES."""
    metrics, matched, grouped, errors = scan(expr)
    errors = [f"{where}: {e} in {expr!r}" for e in errors]
    allowed_groups = set(TARGET_LABELS)
    for m in metrics:
        if m not in FAMILIES:
            errors.append(f"{where}: metric {m!r} is not in observability.md §2/§3")
        else:
            allowed_groups |= FAMILIES[m]
    for m, label in matched:
        if m in FAMILIES and label not in FAMILIES[m] | TARGET_LABELS:
            errors.append(f"{where}: label {label!r} is not a label of {m} (spec: {sorted(FAMILIES[m]) or 'none'})")
    for label in sorted(grouped - allowed_groups):
        errors.append(f"{where}: grouping label {label!r} belongs to none of {sorted(set(metrics))}")
    if not metrics and "time()" not in expr:
        errors.append(f"{where}: no metric in {expr!r}")
    return errors, set(metrics)


# --- 1. alarms -------------------------------------------------------------------------------
class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    value = (loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode)
             else loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode)
             else loader.construct_mapping(node, deep=True))
    return {f"!{suffix}": value}


CfnLoader.add_multi_constructor("!", _tag)


def load_tf(root):
    docs = {}
    for f in sorted(Path(root).glob("*.tf")):
        with open(f) as fh:
            docs[f.name] = hcl2.load(fh)
    return docs


def tf_resources(docs, rtype):
    out = {}
    for d in docs.values():
        for block in d.get("resource", []):
            for t, named in block.items():
                if t.strip('"') == rtype:
                    for name, body in named.items():
                        out[name.strip('"')] = body
    return out


def unquote(v):
    return v[1:-1] if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"' else v


def check_sam_alarms(sam):
    errors = []
    res = sam.get("Resources", {})
    for (logical, _), want in ALARMS.items():
        r = res.get(logical)
        if not r or r.get("Type") != "AWS::CloudWatch::Alarm":
            errors.append(f"SAM: no AWS::CloudWatch::Alarm {logical}")
            continue
        props = r.get("Properties", {})
        for k, v in want.items():
            if props.get(k) != v:
                errors.append(f"SAM {logical}: {k} = {props.get(k)!r}, expected {v!r}")
        for k in ("Dimensions", "Metrics", "ExtendedStatistic", "DatapointsToAlarm"):
            if k in props:
                errors.append(f"SAM {logical}: has {k} (the alarm watches the EMF [] dimension set, §5)")
        if props.get("AlarmActions") != {"!If": ["HasAlarmTopic", [{"!Ref": "AlarmTopicArn"}], {"!Ref": "AWS::NoValue"}]}:
            errors.append(f"SAM {logical}: AlarmActions is not the optional AlarmTopicArn")
    params = sam.get("Parameters", {})
    env = (sam.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}))
    sweep_env = (res.get("SweepFunction", {}).get("Properties", {}).get("Environment", {}).get("Variables", {}))
    for var, (param, _, default) in METRICS_ENV.items():
        if str(params.get(param, {}).get("Default")) != default:
            errors.append(f"SAM: parameter {param} default {params.get(param, {}).get('Default')!r}, expected {default}")
        if {**env, **sweep_env}.get(var) != {"!Ref": param}:
            errors.append(f"SAM: {var} does not reach the sweep from parameter {param}")
    if params.get("AlarmTopicArn", {}).get("Default") != "":
        errors.append("SAM: AlarmTopicArn must default to empty (no alarm action)")
    return errors


def check_tf_alarms(docs):
    errors = []
    alarms = tf_resources(docs, "aws_cloudwatch_metric_alarm")
    for (_, name), want in ALARMS.items():
        body = alarms.get(name)
        if body is None:
            errors.append(f"terraform: no aws_cloudwatch_metric_alarm.{name}")
            continue
        for k, v in want.items():
            got = unquote(body.get(TF_KEYS[k]))
            if got != v:
                errors.append(f"terraform {name}: {TF_KEYS[k]} = {got!r}, expected {v!r}")
        for k in ("dimensions", "metric_query", "extended_statistic", "datapoints_to_alarm"):
            if k in body:
                errors.append(f"terraform {name}: has {k} (the alarm watches the EMF [] dimension set, §5)")
        if "local.alarm_actions" not in str(body.get("alarm_actions")):
            errors.append(f"terraform {name}: alarm_actions is not local.alarm_actions")
    variables, env_text = {}, ""
    for d in docs.values():
        for block in d.get("variable", []):
            for k, body in block.items():
                variables[unquote(k)] = body
        for block in d.get("locals", []):
            env_text += json.dumps(block.get("common_env", "")) + json.dumps(block.get("functions", ""))
    for var, (_, tfvar, default) in METRICS_ENV.items():
        got = variables.get(tfvar, {}).get("default")
        if str(unquote(got)) != default:
            errors.append(f"terraform: variable {tfvar} default {got!r}, expected {default}")
        if not re.search(r'%s[^,}]*var\.%s\b' % (var, tfvar), env_text.replace('\\"', '"')):
            errors.append(f"terraform: {var} is not set from var.{tfvar} in the Lambdas' environment")
    alarm_topic = variables.get("alarm_topic_arn", {})
    if unquote(alarm_topic.get("default")) != "":
        errors.append("terraform: alarm_topic_arn must default to empty (no alarm action)")
    return errors


# --- 2. Prometheus rules ---------------------------------------------------------------------
def check_rules(doc):
    errors = []
    groups = {g.get("name"): g for g in (doc or {}).get("groups", [])}
    spec = groups.get("edge-sync")
    if spec is None:
        errors.append("rules: no group edge-sync (observability.md §5)")
    elif spec.get("rules") != SPEC_RULES:
        errors.append(f"rules: group edge-sync differs from observability.md §5: {spec.get('rules')!r}")
    for g in groups.values():
        for r in g.get("rules", []):
            e, _ = check_expr(str(r.get("expr", "")), f"rules {r.get('alert') or r.get('record')}")
            errors += e
            if "alert" in r and not re.fullmatch(r"\d+[smh]", str(r.get("for", ""))):
                errors.append(f"rules {r['alert']}: no `for` duration")
    return errors


def check_texts(rules_text, operations_text):
    """§5 quoted verbatim: both blocks in docs/operations.md, the rules in the rules file."""
    errors = []
    if SPEC_RULES_TEXT not in rules_text:
        errors.append("rules file: observability.md §5's rules are not in it verbatim")
    for name, text in (("rules", SPEC_RULES_TEXT), ("CloudWatch alarm", SPEC_ALARM_TEXT)):
        if text not in operations_text:
            errors.append(f"docs/operations.md: §5's {name} block is not quoted verbatim")
    if yaml.safe_load(SPEC_RULES_TEXT)["groups"][0]["rules"] != SPEC_RULES:
        errors.append("SPEC_RULES_TEXT and SPEC_RULES disagree (fix this script)")
    if {k: v for k, v in yaml.load(SPEC_ALARM_TEXT, Loader=CfnLoader)["EdgeDevicesSilentAlarm"]
            ["Properties"].items()} != SPEC_SILENT_ALARM:
        errors.append("SPEC_ALARM_TEXT and SPEC_SILENT_ALARM disagree (fix this script)")
    return errors


# --- 3. Grafana dashboard --------------------------------------------------------------------
def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def check_dashboard(dash):
    errors, used = [], set()
    inputs = {i.get("name"): i for i in dash.get("__inputs", [])}
    ds = inputs.get("DS_PROMETHEUS")
    if not ds or ds.get("type") != "datasource" or ds.get("pluginId") != "prometheus":
        errors.append("dashboard: no __inputs DS_PROMETHEUS (prometheus datasource)")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    pv = variables.get("project_id")
    if not pv:
        errors.append("dashboard: no project_id template variable")
    for name, v in variables.items():
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query":
            m = re.fullmatch(r"label_values\(\s*([A-Za-z_:][\w:]*)(\{[^}]*\})?\s*,\s*(\w+)\s*\)", str(q).strip())
            if not m:
                errors.append(f"dashboard variable {name}: query {q!r} is not label_values(metric, label)")
            else:
                e, _ = check_expr(m.group(1) + (m.group(2) or ""), f"variable {name}")
                errors += e
                if m.group(1) in FAMILIES and m.group(3) not in FAMILIES[m.group(1)]:
                    errors.append(f"variable {name}: {m.group(3)} is not a label of {m.group(1)}")
    ids = set()
    for p in walk_panels(dash.get("panels", [])):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            errors.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            errors.append(f"{where}: no gridPos")
        if p.get("type") == "row":
            continue
        targets = p.get("targets", [])
        if not targets:
            errors.append(f"{where}: no query")
        for t in [p] + targets:
            d = t.get("datasource")
            if d is not None and (not isinstance(d, dict) or d.get("uid") != "${DS_PROMETHEUS}"):
                errors.append(f"{where}: datasource {d!r} is not ${{DS_PROMETHEUS}}")
        for t in targets:
            e, m = check_expr(str(t.get("expr", "")), where)
            errors += e
            used |= m
    boxes = [(p.get("id"), p["gridPos"]) for p in walk_panels(dash.get("panels", [])) if "gridPos" in p]
    for n, (a, ga) in enumerate(boxes):
        if ga.get("x", 0) + ga.get("w", 0) > 24:
            errors.append(f"panel {a}: wider than the 24-column grid")
        for b, gb in boxes[n + 1:]:
            if (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                    and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"]):
                errors.append(f"panels {a} and {b} overlap")
    for need in DASHBOARD_NEEDS:
        if need not in used:
            errors.append(f"dashboard: no panel shows {need}")
    return errors


# --- 4. self-test ----------------------------------------------------------------------------
def self_test(sam, tf, rules, dash):
    """Each alteration must make its check fail."""
    failures = []

    def expect(name, errs):
        if not errs:
            failures.append(f"self-test: the check did not notice: {name}")

    s = copy.deepcopy(sam)
    s["Resources"]["EdgeDevicesSilentAlarm"]["Properties"]["Period"] = 300
    expect("SAM silent alarm Period 300", check_sam_alarms(s))
    s = copy.deepcopy(sam)
    s["Resources"]["EdgeReplayIntentsFailedAlarm"]["Properties"]["Dimensions"] = [{"Name": "project_id", "Value": "p"}]
    expect("SAM replay alarm with Dimensions", check_sam_alarms(s))
    s = copy.deepcopy(sam)
    s["Resources"]["EdgeDevicesSilentAlarm"]["Properties"]["TreatMissingData"] = "notBreaching"
    expect("SAM silent alarm TreatMissingData notBreaching", check_sam_alarms(s))
    t = copy.deepcopy(tf)
    for d in t.values():
        for block in d.get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    if name.strip('"') == "devices_silent":
                        body["evaluation_periods"] = 1
    expect("terraform silent alarm evaluation_periods 1", check_tf_alarms(t))
    t = copy.deepcopy(tf)
    for d in t.values():
        for block in d.get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    if name.strip('"') == "dead_letters_open":
                        body["dimensions"] = {"project_id": "p"}
    expect("terraform dead-letter alarm with dimensions", check_tf_alarms(t))
    expect("docs without the alarm block", check_texts(SPEC_RULES_TEXT, SPEC_RULES_TEXT))
    r = copy.deepcopy(rules)
    r["groups"][0]["rules"][1]["expr"] = "edge_agent_oldest_pending_age_seconds > 600"
    expect("rule threshold 600", check_rules(r))
    for expr in ("sum(edge_batches_count)", 'sum(edge_batches_total{project_id="p"})',
                 "sum by (device) (edge_staged_rows)", "edge_lineage_paused{table=\"t\"}"):
        d = copy.deepcopy(dash)
        next(p for p in walk_panels(d["panels"]) if p.get("targets"))["targets"][0]["expr"] = expr
        expect(f"dashboard expression {expr}", check_dashboard(d))
    return failures


def main(root):
    root = Path(root)
    sam = yaml.load((root / "infra/sam/template.yaml").read_text(), Loader=CfnLoader)
    tf = load_tf(root / "infra/terraform")
    rules_text = (root / "infra/prometheus/edge-sync-rules.yml").read_text()
    rules = yaml.safe_load(rules_text)
    operations_text = (root / "docs/operations.md").read_text()
    dash = json.loads((root / "infra/grafana/edge-sync.json").read_text())
    sections = {
        "alarms (SAM)": check_sam_alarms(sam),
        "alarms (terraform)": check_tf_alarms(tf),
        "Prometheus rules": check_rules(rules),
        "Grafana dashboard": check_dashboard(dash),
        "§5 quoted verbatim (rules file, docs/operations.md)": check_texts(rules_text, operations_text),
        "self-test": self_test(sam, tf, rules, dash),
    }
    for name, errs in sections.items():
        for e in errs:
            print(f"check-observability: {e}", file=sys.stderr)
        print(f"check-observability: {name}: {'FAIL' if errs else 'ok'}")
    return 1 if any(sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent))
