//! The IoT policy in `infra/sam/template.yaml` grants exactly the topics of protocol §1.
//!
//! The template is parsed as written (CloudFormation tags included), `!Sub` is resolved with the
//! parameter defaults, and each request is evaluated with the subset of IoT Core's policy
//! semantics the template uses: default deny, explicit deny wins, `Action` lists, resource ARNs
//! with the `*` (any run of characters, `/` included) and `?` (one character) wildcards, the
//! `${iot:Connection.Thing.ThingName}` variable (a statement whose variable cannot be resolved —
//! no thing attached to the connection — matches nothing), and the `Bool` condition on
//! `iot:Connection.Thing.IsAttached`. MQTT wildcards (`+`, `#`) are ordinary characters in a
//! policy resource, which is why a device subscribing to `edge/+/sync/ingest/control` is refused.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde_norway::Value;

const TEMPLATE: &str = include_str!("../../../infra/sam/template.yaml");
const THING_VAR: &str = "${iot:Connection.Thing.ThingName}";
const REGION: &str = "eu-west-1";
const ACCOUNT: &str = "123456789012";

fn template() -> Value {
    serde_norway::from_str(TEMPLATE).unwrap()
}

fn parameter_defaults(t: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in t["Parameters"].as_mapping().unwrap() {
        if let Some(d) = v.get("Default") {
            let d = match d {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => panic!("default {other:?}"),
            };
            out.insert(k.as_str().unwrap().to_owned(), d);
        }
    }
    out
}

/// `!Sub "..."` / `Fn::Sub` with pseudo parameters and parameter defaults; `${!x}` is the
/// literal `${x}` (how IoT policy variables survive CloudFormation).
fn resolve(v: &Value, params: &BTreeMap<String, String>) -> String {
    let raw = match v {
        Value::String(s) => return s.clone(),
        Value::Tagged(t) if t.tag == "Sub" => t.value.as_str().unwrap().to_owned(),
        Value::Mapping(m) if m.contains_key("Fn::Sub") => m["Fn::Sub"].as_str().unwrap().to_owned(),
        other => panic!("unsupported intrinsic in policy: {other:?}"),
    };
    let mut out = String::new();
    let mut rest = raw.as_str();
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').unwrap() + i;
        let name = &rest[i + 2..end];
        if let Some(literal) = name.strip_prefix('!') {
            out.push_str("${");
            out.push_str(literal);
            out.push('}');
        } else {
            let value = match name {
                "AWS::Partition" => "aws".to_owned(),
                "AWS::Region" => REGION.to_owned(),
                "AWS::AccountId" => ACCOUNT.to_owned(),
                p => params
                    .get(p)
                    .cloned()
                    .unwrap_or_else(|| panic!("no default for ${{{p}}}")),
            };
            out.push_str(&value);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn one_or_many(v: &Value) -> Vec<&Value> {
    match v {
        Value::Sequence(s) => s.iter().collect(),
        other => vec![other],
    }
}

#[derive(Debug)]
struct Statement {
    allow: bool,
    actions: Vec<String>,
    resources: Vec<String>,
    requires_attached: bool,
}

fn statements(doc: &Value, params: &BTreeMap<String, String>) -> Vec<Statement> {
    one_or_many(&doc["Statement"])
        .into_iter()
        .map(|s| {
            let requires_attached = match s.get("Condition") {
                None => false,
                Some(c) => {
                    let cond = c.as_mapping().unwrap();
                    assert_eq!(cond.len(), 1, "only the Bool condition is modelled: {c:?}");
                    let b = c["Bool"].as_mapping().unwrap();
                    assert_eq!(b.len(), 1);
                    assert_eq!(b["iot:Connection.Thing.IsAttached"].as_str(), Some("true"));
                    true
                }
            };
            Statement {
                allow: match s["Effect"].as_str().unwrap() {
                    "Allow" => true,
                    "Deny" => false,
                    e => panic!("effect {e}"),
                },
                actions: one_or_many(&s["Action"])
                    .into_iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
                resources: one_or_many(&s["Resource"])
                    .into_iter()
                    .map(|r| resolve(r, params))
                    .collect(),
                requires_attached,
            }
        })
        .collect()
}

/// IoT policy wildcard match: `*` any run (including `/`), `?` exactly one character.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

struct Connection<'a> {
    /// The thing attached to the certificate, if any.
    thing: Option<&'a str>,
}

fn statement_matches(s: &Statement, conn: &Connection<'_>, action: &str, resource: &str) -> bool {
    if !s
        .actions
        .iter()
        .any(|a| glob(a.as_bytes(), action.as_bytes()))
    {
        return false;
    }
    if s.requires_attached && conn.thing.is_none() {
        return false;
    }
    s.resources.iter().any(|r| {
        let r = if r.contains(THING_VAR) {
            match conn.thing {
                Some(t) => r.replace(THING_VAR, t),
                None => return false,
            }
        } else {
            r.clone()
        };
        assert!(!r.contains("${"), "unmodelled policy variable in {r}");
        glob(r.as_bytes(), resource.as_bytes())
    })
}

fn allowed(policy: &[Statement], conn: &Connection<'_>, action: &str, resource: &str) -> bool {
    let hits: Vec<&Statement> = policy
        .iter()
        .filter(|s| statement_matches(s, conn, action, resource))
        .collect();
    hits.iter().any(|s| s.allow) && !hits.iter().any(|s| !s.allow)
}

fn arn(kind: &str, rest: &str) -> String {
    format!("arn:aws:iot:{REGION}:{ACCOUNT}:{kind}/{rest}")
}

const DEVICE_TOPICS: [&str; 5] = [
    "sync/rows/batch",
    "sync/telemetry/batch",
    "sync/schema/observe",
    "sync/ingest/ack",
    "sync/ingest/request",
];
const CONTROL: &str = "sync/ingest/control";

fn device_policy() -> (Vec<Statement>, String) {
    let t = template();
    let params = parameter_defaults(&t);
    let slug = params["TopicSlug"].clone();
    let policy = &t["Resources"]["DevicePolicy"];
    assert_eq!(policy["Type"].as_str(), Some("AWS::IoT::Policy"));
    (
        statements(&policy["Properties"]["PolicyDocument"], &params),
        slug,
    )
}

#[test]
fn each_device_connects_only_as_its_own_attached_thing() {
    let (p, _) = device_policy();
    for me in ["gw-07", "gw-08"] {
        let conn = Connection { thing: Some(me) };
        let other = if me == "gw-07" { "gw-08" } else { "gw-07" };
        assert!(allowed(&p, &conn, "iot:Connect", &arn("client", me)));
        assert!(!allowed(&p, &conn, "iot:Connect", &arn("client", other)));
        assert!(!allowed(
            &p,
            &conn,
            "iot:Connect",
            &arn("client", "edge-service")
        ));
    }
    // A certificate with no thing attached resolves no policy variable: nothing is allowed.
    let orphan = Connection { thing: None };
    assert!(!allowed(
        &p,
        &orphan,
        "iot:Connect",
        &arn("client", "gw-07")
    ));
    assert!(!allowed(
        &p,
        &orphan,
        "iot:Publish",
        &arn("topic", "edge/gw-07/sync/rows/batch")
    ));
}

#[test]
fn each_device_publishes_only_its_own_five_topics() {
    let (p, slug) = device_policy();
    for (me, other) in [("gw-07", "gw-08"), ("gw-08", "gw-07")] {
        let conn = Connection { thing: Some(me) };
        for t in DEVICE_TOPICS {
            let own = arn("topic", &format!("{slug}/{me}/{t}"));
            assert!(allowed(&p, &conn, "iot:Publish", &own), "{me} → {own}");
            let theirs = arn("topic", &format!("{slug}/{other}/{t}"));
            assert!(
                !allowed(&p, &conn, "iot:Publish", &theirs),
                "{me} → {theirs}"
            );
            // Another slug, a deeper level, a prefix trick: all outside the root topic.
            for bad in [
                format!("other-slug/{me}/{t}"),
                format!("{slug}/{me}/{t}/extra"),
                format!("{slug}/x/{me}/{t}"),
                format!("/{me}/{t}"),
                format!("{slug}/{me}x/{t}"),
            ] {
                assert!(
                    !allowed(&p, &conn, "iot:Publish", &arn("topic", &bad)),
                    "{me} → {bad}"
                );
            }
        }
        // No device may publish a control, its own or anyone's.
        for whose in [me, other] {
            let control = arn("topic", &format!("{slug}/{whose}/{CONTROL}"));
            assert!(
                !allowed(&p, &conn, "iot:Publish", &control),
                "{me} → {control}"
            );
        }
        // Publish rights do not leak into other actions.
        let rows = arn("topic", &format!("{slug}/{me}/sync/rows/batch"));
        assert!(!allowed(&p, &conn, "iot:Receive", &rows));
        assert!(!allowed(&p, &conn, "iot:UpdateThingShadow", &rows));
    }
}

#[test]
fn each_device_subscribes_and_receives_only_its_own_control_topic() {
    let (p, slug) = device_policy();
    for (me, other) in [("gw-07", "gw-08"), ("gw-08", "gw-07")] {
        let conn = Connection { thing: Some(me) };
        let own = format!("{slug}/{me}/{CONTROL}");
        assert!(allowed(
            &p,
            &conn,
            "iot:Subscribe",
            &arn("topicfilter", &own)
        ));
        assert!(allowed(&p, &conn, "iot:Receive", &arn("topic", &own)));
        let theirs = format!("{slug}/{other}/{CONTROL}");
        assert!(!allowed(
            &p,
            &conn,
            "iot:Subscribe",
            &arn("topicfilter", &theirs)
        ));
        assert!(!allowed(&p, &conn, "iot:Receive", &arn("topic", &theirs)));
        // MQTT wildcards are literal characters to the policy engine: no fan-in subscriptions.
        for filter in [
            format!("{slug}/+/{CONTROL}"),
            format!("{slug}/{me}/sync/#"),
            format!("{slug}/#"),
            "#".to_owned(),
        ] {
            assert!(
                !allowed(&p, &conn, "iot:Subscribe", &arn("topicfilter", &filter)),
                "{me} subscribes {filter}"
            );
        }
        // A device-to-cloud topic is not readable by the device (nor anyone else's).
        for t in DEVICE_TOPICS {
            let filter = format!("{slug}/{me}/{t}");
            assert!(!allowed(
                &p,
                &conn,
                "iot:Subscribe",
                &arn("topicfilter", &filter)
            ));
            let o = format!("{slug}/{other}/{t}");
            assert!(!allowed(&p, &conn, "iot:Receive", &arn("topic", &o)));
        }
    }
}

#[test]
fn the_sweep_function_may_publish_controls_and_nothing_else() {
    let t = template();
    let params = parameter_defaults(&t);
    let slug = &params["TopicSlug"];
    let policies = one_or_many(&t["Resources"]["SweepFunction"]["Properties"]["Policies"]);
    let inline: Vec<&Value> = policies
        .into_iter()
        .filter(|p| p.get("Statement").is_some())
        .collect();
    assert_eq!(inline.len(), 1);
    let p = statements(inline[0], &params);
    let conn = Connection { thing: None };
    for d in ["gw-07", "gw-08"] {
        let control = arn("topic", &format!("{slug}/{d}/{CONTROL}"));
        assert!(allowed(&p, &conn, "iot:Publish", &control));
        for t in DEVICE_TOPICS {
            let spoof = arn("topic", &format!("{slug}/{d}/{t}"));
            assert!(
                !allowed(&p, &conn, "iot:Publish", &spoof),
                "sweep → {spoof}"
            );
        }
    }
    assert!(!allowed(
        &p,
        &conn,
        "iot:Publish",
        &arn("topic", &format!("other/gw-07/{CONTROL}"))
    ));
}

/// A `!Ref X` / `!GetAtt X.Y` as written in the template.
fn tag(v: &Value) -> Option<(String, String)> {
    match v {
        Value::Tagged(t) => Some((
            t.tag.to_string().trim_start_matches('!').to_owned(),
            t.value.as_str()?.to_owned(),
        )),
        _ => None,
    }
}

/// The SAM policy templates (`SQSSendMessagePolicy: {...}`) a function lists, by name.
fn policy_templates(t: &Value, function: &str) -> Vec<(String, Value)> {
    one_or_many(&t["Resources"][function]["Properties"]["Policies"])
        .into_iter()
        .filter_map(|p| p.as_mapping())
        .flat_map(|m| m.iter())
        .filter(|(k, _)| k.as_str() != Some("Statement"))
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

#[test]
fn only_api_and_sweep_may_nudge_the_replay_queue_and_only_sweep_forwards_events() {
    let t = template();
    let replay_queue_name = Some(("GetAtt".to_owned(), "ReplayQueue.QueueName".to_owned()));
    for f in ["ApiFunction", "SweepFunction"] {
        let env = &t["Resources"][f]["Properties"]["Environment"]["Variables"];
        assert_eq!(
            tag(&env["EDGE_REPLAY_QUEUE_URL"]),
            Some(("Ref".to_owned(), "ReplayQueue".to_owned())),
            "{f} is told the replay queue"
        );
        let sends: Vec<_> = policy_templates(&t, f)
            .into_iter()
            .filter(|(k, _)| k == "SQSSendMessagePolicy")
            .collect();
        assert_eq!(sends.len(), 1, "{f}");
        assert_eq!(tag(&sends[0].1["QueueName"]), replay_queue_name, "{f}");
    }
    for f in ["IngestFunction", "ReplayFunction"] {
        assert!(
            !policy_templates(&t, f)
                .iter()
                .any(|(k, _)| k == "SQSSendMessagePolicy" || k == "EventBridgePutEventsPolicy"),
            "{f} neither sends to queues nor forwards events"
        );
    }
    let sweep_env = &t["Resources"]["SweepFunction"]["Properties"]["Environment"]["Variables"];
    assert_eq!(
        tag(&sweep_env["EDGE_EVENT_BUS_NAME"]),
        Some(("Ref".to_owned(), "EventBusName".to_owned()))
    );
    let put: Vec<_> = policy_templates(&t, "SweepFunction")
        .into_iter()
        .filter(|(k, _)| k == "EventBridgePutEventsPolicy")
        .collect();
    assert_eq!(put.len(), 1);
    assert_eq!(
        tag(&put[0].1["EventBusName"]),
        Some(("Ref".to_owned(), "EventBusName".to_owned())),
        "PutEvents on the configured bus only"
    );
    assert!(!policy_templates(&t, "ApiFunction")
        .iter()
        .any(|(k, _)| k == "EventBridgePutEventsPolicy"));
}

#[test]
fn one_topic_rule_per_device_topic_builds_the_ingress_envelope() {
    let t = template();
    let params = parameter_defaults(&t);
    let slug = &params["TopicSlug"];
    let mut froms = Vec::new();
    for (_, r) in t["Resources"].as_mapping().unwrap() {
        if r["Type"].as_str() != Some("AWS::IoT::TopicRule") {
            continue;
        }
        let payload = &r["Properties"]["TopicRulePayload"];
        let sql = resolve(&payload["Sql"], &params);
        // cloud.md §1: the envelope fields the ingest handler decodes.
        for field in [
            "encode(*, 'base64') AS payload_b64",
            "topic() AS topic",
            "clientid() AS client_id",
            "principal() AS principal",
            "timestamp() AS received_at_ms",
        ] {
            assert!(sql.contains(field), "{sql} lacks {field}");
        }
        let from = sql.split("FROM '").nth(1).unwrap().trim_end_matches('\'');
        froms.push(from.to_owned());
        let actions = payload["Actions"].as_sequence().unwrap();
        assert_eq!(actions.len(), 1);
        assert!(actions[0].get("Sqs").is_some(), "rule forwards to SQS");
        assert!(
            payload["ErrorAction"].get("Sqs").is_some(),
            "rule errors are kept"
        );
    }
    froms.sort();
    let mut want: Vec<String> = DEVICE_TOPICS
        .iter()
        .map(|t| format!("{slug}/+/{t}"))
        .collect();
    want.sort();
    assert_eq!(
        froms, want,
        "exactly the five device→cloud topics, never control"
    );
}

#[test]
fn the_ingest_event_source_reports_partial_batch_failures() {
    let t = template();
    let ev = &t["Resources"]["IngestFunction"]["Properties"]["Events"]["Ingest"];
    assert_eq!(ev["Type"].as_str(), Some("SQS"));
    let types = ev["Properties"]["FunctionResponseTypes"]
        .as_sequence()
        .unwrap();
    assert_eq!(types[0].as_str(), Some("ReportBatchItemFailures"));
    for f in [
        "IngestFunction",
        "ApiFunction",
        "ReplayFunction",
        "SweepFunction",
    ] {
        let m = &t["Resources"][f]["Metadata"];
        assert_eq!(m["BuildMethod"].as_str(), Some("rust-cargolambda"), "{f}");
    }
    assert_eq!(
        t["Globals"]["Function"]["Architectures"][0].as_str(),
        Some("arm64")
    );
}

#[test]
fn glob_follows_iot_wildcards() {
    assert!(glob(b"a/*", b"a/b/c"));
    assert!(glob(b"a/?/c", b"a/b/c"));
    assert!(!glob(b"a/?/c", b"a/bb/c"));
    assert!(!glob(b"a/b", b"a/b/c"));
    assert!(glob(b"iot:*", b"iot:Publish"));
}

#[test]
fn the_ingest_function_may_presign_and_read_spill_objects_only() {
    let t = template();
    let f = &t["Resources"]["IngestFunction"]["Properties"];
    assert_eq!(
        tag(&f["Environment"]["Variables"]["EDGE_SPILL_BUCKET"]),
        Some(("Ref".to_owned(), "SpillBucket".to_owned()))
    );
    assert!(
        policy_templates(&t, "IngestFunction")
            .iter()
            .all(|(k, _)| !k.starts_with("S3")),
        "no broad S3 policy template"
    );
    let inline: Vec<&Value> = one_or_many(&f["Policies"])
        .into_iter()
        .filter_map(|p| p.get("Statement"))
        .flat_map(one_or_many)
        .collect();
    let mut s3_actions = Vec::new();
    for s in &inline {
        let actions: Vec<&str> = one_or_many(&s["Action"])
            .into_iter()
            .filter_map(Value::as_str)
            .collect();
        for a in actions.iter().filter(|a| a.starts_with("s3:")) {
            s3_actions.push((*a).to_owned());
            let resource = match &s["Resource"] {
                Value::Tagged(t) => t.value.as_str().unwrap_or_default().to_owned(),
                other => format!("{other:?}"),
            };
            match *a {
                // The presigned PUT is signed with this role; finalize reads the object back.
                "s3:PutObject" | "s3:GetObject" => {
                    assert_eq!(resource, "${SpillBucket.Arn}/spill/*", "{a}")
                }
                // Only so a missing object is a 404, and only under spill/.
                "s3:ListBucket" => {
                    assert_eq!(resource, "SpillBucket.Arn");
                    assert_eq!(
                        s["Condition"]["StringLike"]["s3:prefix"].as_str(),
                        Some("spill/*")
                    );
                }
                other => panic!("unexpected {other}"),
            }
        }
    }
    s3_actions.sort();
    assert_eq!(
        s3_actions,
        ["s3:GetObject", "s3:ListBucket", "s3:PutObject"]
    );
}
