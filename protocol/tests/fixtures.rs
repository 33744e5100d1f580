//! Golden fixtures: every `valid/` file decodes and re-encodes to the same JSON value, every
//! `invalid/` file is rejected with exactly the code in its name. See `fixtures/README.md`.

// Test helpers outside #[test] fns are not covered by clippy.toml's allow-unwrap-in-tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use edge_protocol::batch::{Op, RowBatch, RowChange};
use edge_protocol::control::{self, ControlKind, SignatureError};
use edge_protocol::ids::new_uuid_v7;
use edge_protocol::limits::{MAX_ROWS_PER_BATCH, PROTOCOL_MAX_PAYLOAD_BYTES};
use edge_protocol::telemetry::{TelemetryBatch, TelemetryRow};
use edge_protocol::topic::TopicKind;
use edge_protocol::validate::{self, DevicePayload, Rejection, RejectionCode};
use edge_protocol::value::{Row, SqlValue};
use serde_json::Value;

/// The documented test control key (fixtures/README.md).
const TEST_CONTROL_KEY: &[u8] = b"edge-sync-test-control-key";

fn fixture_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(sub)
}

fn files(sub: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(fixture_dir(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_str().unwrap().to_owned();
            (stem, fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// Decodes a valid fixture with the decoder its prefix names and re-encodes it.
fn decode_and_reencode(name: &str, bytes: &[u8]) -> Value {
    let enc = |v: Result<Value, serde_json::Error>| v.unwrap();
    if name.starts_with("row_batch") {
        enc(serde_json::to_value(
            validate::decode_row_batch(bytes).unwrap(),
        ))
    } else if name.starts_with("telemetry_batch") {
        enc(serde_json::to_value(
            validate::decode_telemetry_batch(bytes).unwrap(),
        ))
    } else if name.starts_with("schema_observation") {
        enc(serde_json::to_value(
            validate::decode_schema_observation(bytes).unwrap(),
        ))
    } else if name.starts_with("ingest_ack") {
        enc(serde_json::to_value(
            validate::decode_ingest_ack(bytes).unwrap(),
        ))
    } else if name.starts_with("ingest_request") {
        enc(serde_json::to_value(
            validate::decode_ingest_request(bytes).unwrap(),
        ))
    } else if name.starts_with("control") {
        enc(serde_json::to_value(
            validate::decode_control_envelope(bytes).unwrap(),
        ))
    } else {
        panic!("valid fixture {name} has no known prefix")
    }
}

#[test]
fn valid_fixtures_round_trip() {
    let all = files("valid");
    assert!(all.len() >= 12, "fixtures missing: {}", all.len());
    for (name, bytes) in all {
        let original: Value = serde_json::from_slice(&bytes).unwrap();
        let reencoded = decode_and_reencode(&name, &bytes);
        assert_eq!(reencoded, original, "{name} does not round-trip");
        // Plain serde decoding agrees with the validating decoder.
        if name.starts_with("row_batch") {
            let plain: RowBatch = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(plain, validate::decode_row_batch(&bytes).unwrap(), "{name}");
        }
    }
}

#[test]
fn valid_device_payloads_decode_by_topic() {
    let cases = [
        ("row_batch", TopicKind::RowsBatch),
        ("telemetry_batch", TopicKind::TelemetryBatch),
        ("schema_observation", TopicKind::SchemaObserve),
        ("ingest_ack", TopicKind::IngestAck),
        ("ingest_request", TopicKind::IngestRequest),
    ];
    for (name, bytes) in files("valid") {
        let Some((_, kind)) = cases.iter().find(|(p, _)| name.starts_with(p)) else {
            continue;
        };
        let payload = validate::decode_device_payload(*kind, &bytes).unwrap();
        let matches = matches!(
            (&payload, kind),
            (DevicePayload::Rows(_), TopicKind::RowsBatch)
                | (DevicePayload::Telemetry(_), TopicKind::TelemetryBatch)
                | (DevicePayload::Schema(_), TopicKind::SchemaObserve)
                | (DevicePayload::Ack(_), TopicKind::IngestAck)
                | (DevicePayload::Request(_), TopicKind::IngestRequest)
        );
        assert!(matches, "{name}");
    }
    let any = &files("valid")[0].1;
    assert_eq!(
        validate::decode_device_payload(TopicKind::IngestControl, any)
            .unwrap_err()
            .code,
        RejectionCode::MalformedJson
    );
}

#[test]
fn row_batch_fixture_holds_every_value_kind() {
    let bytes = fs::read(fixture_dir("valid").join("row_batch.json")).unwrap();
    let batch = validate::decode_row_batch(&bytes).unwrap();
    let values: Vec<&SqlValue> = batch
        .rows
        .iter()
        .flat_map(|r| r.row.iter().flat_map(|row| row.values()))
        .collect();
    let has = |f: &dyn Fn(&SqlValue) -> bool| values.iter().any(|v| f(v));
    assert!(has(&|v| matches!(v, SqlValue::Null)));
    assert!(has(&|v| *v == SqlValue::Integer(i64::MAX)));
    assert!(has(&|v| *v == SqlValue::Integer(i64::MIN)));
    assert!(has(&|v| matches!(v, SqlValue::Real(f) if f.is_finite())));
    assert!(has(&|v| *v == SqlValue::Real(f64::INFINITY)));
    assert!(has(&|v| *v == SqlValue::Real(f64::NEG_INFINITY)));
    assert!(has(&|v| *v == SqlValue::Blob(vec![0, 255, 1, 2])));
    assert!(has(&|v| *v == SqlValue::Blob(Vec::new())));
    assert!(has(&|v| matches!(v, SqlValue::Text(t) if !t.is_ascii())));
    assert!(batch
        .rows
        .iter()
        .any(|r| r.op == Op::Delete && r.row.is_none()));
    assert!(batch.rows.iter().all(|r| r.pk.len() == 2));
    assert_eq!(
        batch.schema_columns.unwrap().schema_hash(),
        "e586452aace43d93bcfa37663feed3f24ecef832ea9d1891d51488c9aefc0024"
    );
}

#[test]
fn signed_control_fixture_verifies_with_the_test_key() {
    let bytes = fs::read(fixture_dir("valid").join("control_pause_lineage_signed.json")).unwrap();
    let env = validate::decode_control_envelope(&bytes).unwrap();
    assert_eq!(env.control_kind, ControlKind::PauseLineage);
    assert_eq!(control::verify(&env, TEST_CONTROL_KEY), Ok(()));
    // The fixture was signed by an independent implementation (Python's hmac); ours agrees.
    assert_eq!(
        Some(control::sign(&env, TEST_CONTROL_KEY)),
        env.signature.clone()
    );
    assert_eq!(
        control::verify(&env, b"wrong key"),
        Err(SignatureError::Mismatch)
    );
    let mut tampered = env.clone();
    tampered.reason = Some("something else".into());
    assert_eq!(
        control::verify(&tampered, TEST_CONTROL_KEY),
        Err(SignatureError::Mismatch)
    );
    let unsigned = fs::read(fixture_dir("valid").join("control_pause_lineage.json")).unwrap();
    let unsigned = validate::decode_control_envelope(&unsigned).unwrap();
    assert_eq!(
        control::verify(&unsigned, TEST_CONTROL_KEY),
        Err(SignatureError::Missing)
    );
}

fn expected_code(name: &str) -> RejectionCode {
    let code = name.split("--").next().unwrap();
    code.parse()
        .unwrap_or_else(|_| panic!("invalid fixture {name} is not named after a code"))
}

/// Rule of fixtures/README.md: telemetry if the text mentions `"batch_seq"`.
fn decode_invalid(bytes: &[u8]) -> (TopicKind, Result<(), Rejection>) {
    if String::from_utf8_lossy(bytes).contains("\"batch_seq\"") {
        (
            TopicKind::TelemetryBatch,
            validate::decode_telemetry_batch(bytes).map(drop),
        )
    } else {
        (
            TopicKind::RowsBatch,
            validate::decode_row_batch(bytes).map(drop),
        )
    }
}

#[test]
fn invalid_fixtures_yield_the_code_in_their_name() {
    let mut seen = BTreeSet::new();
    for (name, bytes) in files("invalid") {
        let expected = expected_code(&name);
        let (kind, result) = decode_invalid(&bytes);
        let rejection = result.expect_err(&name);
        assert_eq!(rejection.code, expected, "{name}: {rejection}");
        let via_topic = validate::decode_device_payload(kind, &bytes).unwrap_err();
        assert_eq!(via_topic.code, expected, "{name} via topic");
        seen.insert(expected);
    }
    seen.insert(batch_too_many_rows().code);
    seen.insert(payload_too_large().code);
    let cloud_state_only = [
        RejectionCode::DuplicateBatchSeq,
        RejectionCode::StaleBatchSeq,
        RejectionCode::UnknownDevice,
    ];
    for code in RejectionCode::ALL {
        if !cloud_state_only.contains(&code) {
            assert!(seen.contains(&code), "no fixture triggers {code}");
        }
    }
}

fn row(i: i64) -> RowChange {
    let pk: Row = [("id".to_owned(), SqlValue::Integer(i))].into();
    RowChange {
        commit_seq: i,
        op: Op::Insert,
        pk: pk.clone(),
        row: Some(pk),
    }
}

fn row_batch(rows: Vec<RowChange>) -> RowBatch {
    RowBatch::new(
        new_uuid_v7(1_777_366_800_000, [9; 10]),
        new_uuid_v7(1_777_366_000_000, [1; 10]),
        "t",
        "0".repeat(64),
        None,
        rows,
    )
}

fn batch_too_many_rows() -> Rejection {
    let at_limit = row_batch((1..=MAX_ROWS_PER_BATCH as i64).map(row).collect());
    let bytes = serde_json::to_vec(&at_limit).unwrap();
    assert!(validate::decode_row_batch(&bytes).is_ok());
    let over = row_batch((1..=MAX_ROWS_PER_BATCH as i64 + 1).map(row).collect());
    let bytes = serde_json::to_vec(&over).unwrap();
    assert!(bytes.len() <= PROTOCOL_MAX_PAYLOAD_BYTES);
    validate::decode_row_batch(&bytes).unwrap_err()
}

#[test]
fn generated_batch_too_many_rows() {
    assert_eq!(batch_too_many_rows().code, RejectionCode::BatchTooManyRows);

    let trow = |i: usize| TelemetryRow {
        ts: format!("2026-04-28T09:{:02}:{:02}Z", i / 60 % 60, i % 60),
        row_id: None,
        fields: Row::new(),
    };
    let over = TelemetryBatch::new(
        new_uuid_v7(1, [0; 10]),
        1,
        "temps",
        "0".repeat(64),
        (0..=MAX_ROWS_PER_BATCH).map(trow).collect(),
    );
    let bytes = serde_json::to_vec(&over).unwrap();
    assert_eq!(
        validate::decode_telemetry_batch(&bytes).unwrap_err().code,
        RejectionCode::BatchTooManyRows
    );
}

fn payload_too_large() -> Rejection {
    let mut big = row(1);
    if let Some(r) = big.row.as_mut() {
        r.insert(
            "payload".into(),
            SqlValue::Text("x".repeat(PROTOCOL_MAX_PAYLOAD_BYTES)),
        );
    }
    let bytes = serde_json::to_vec(&row_batch(vec![big])).unwrap();
    assert!(bytes.len() > PROTOCOL_MAX_PAYLOAD_BYTES);
    validate::decode_row_batch(&bytes).unwrap_err()
}

#[test]
fn generated_payload_too_large() {
    assert_eq!(payload_too_large().code, RejectionCode::PayloadTooLarge);
    // Checked before anything else, even JSON syntax.
    let junk = vec![b'{'; PROTOCOL_MAX_PAYLOAD_BYTES + 1];
    for decode in [
        |b: &[u8]| validate::decode_row_batch(b).map(drop),
        |b: &[u8]| validate::decode_telemetry_batch(b).map(drop),
        |b: &[u8]| validate::decode_schema_observation(b).map(drop),
        |b: &[u8]| validate::decode_ingest_ack(b).map(drop),
        |b: &[u8]| validate::decode_ingest_request(b).map(drop),
        |b: &[u8]| validate::decode_control_envelope(b).map(drop),
    ] {
        assert_eq!(
            decode(&junk).unwrap_err().code,
            RejectionCode::PayloadTooLarge
        );
    }
    // Exactly at the limit is fine size-wise (it fails later, as JSON).
    let at_limit = vec![b' '; PROTOCOL_MAX_PAYLOAD_BYTES];
    assert_eq!(
        validate::decode_row_batch(&at_limit).unwrap_err().code,
        RejectionCode::MalformedJson
    );
}

#[test]
fn check_order_tenant_fields_before_number_encoding_and_version() {
    // Both a tenant field and an unrepresentable number: the tenant check wins (security first).
    let text = br#"{"org_id":"x","format_version":0,"n":1e999}"#;
    assert_eq!(
        validate::decode_row_batch(text).unwrap_err().code,
        RejectionCode::EnvelopeUnstrippedTenantFields
    );
    let text = br#"{"format_version":0,"n":1e999}"#;
    assert_eq!(
        validate::decode_row_batch(text).unwrap_err().code,
        RejectionCode::InvalidNumberEncoding
    );
    // A syntax error next to a bad number is still malformed JSON.
    let text = br#"{"format_version":1,"n":1e999,}"#;
    assert_eq!(
        validate::decode_row_batch(text).unwrap_err().code,
        RejectionCode::MalformedJson
    );
}

type Decoder = fn(&[u8]) -> Result<(), Rejection>;

#[test]
fn small_documents_reject_with_named_codes() {
    let cases: [(&[u8], Decoder, RejectionCode); 10] = [
        (
            br#"{"format_version":1,"control_id":"nope"}"#,
            |b| validate::decode_ingest_ack(b).map(drop),
            RejectionCode::MalformedJson,
        ),
        (
            br#"{"format_version":2,"control_id":"01939b4f-1000-7000-8000-0000000000c1"}"#,
            |b| validate::decode_ingest_ack(b).map(drop),
            RejectionCode::UnsupportedFormatVersion,
        ),
        (
            br#"{"format_version":1,"request_kind":"url_request","source_table":"t","segment_kind":"payload_spill","batch_id":"6f1c2a9e-3b4d-4e5f-8a6b-7c8d9e0f1a2b"}"#,
            |b| validate::decode_ingest_request(b).map(drop),
            RejectionCode::InvalidBatchId,
        ),
        (
            br#"{"format_version":1,"request_kind":"download","source_table":"t","segment_kind":"payload_spill","batch_id":"01939b4e-a000-7000-8000-0000000000b1"}"#,
            |b| validate::decode_ingest_request(b).map(drop),
            RejectionCode::MalformedJson,
        ),
        (
            br#"{"format_version":1,"source_table":"t","schema_hash":"abc","observed_at":"2026-04-28T09:00:00Z"}"#,
            |b| validate::decode_schema_observation(b).map(drop),
            RejectionCode::InvalidSchemaHash,
        ),
        (
            br#"{"format_version":1,"fleet_id":"f","source_table":"t","schema_hash":"abc","observed_at":"x"}"#,
            |b| validate::decode_schema_observation(b).map(drop),
            RejectionCode::EnvelopeUnstrippedTenantFields,
        ),
        (
            br#"{"control_id":"01939b4f-1000-7000-8000-0000000000c1","control_kind":"pause_lineage","source_table":"t"}"#,
            |b| validate::decode_control_envelope(b).map(drop),
            RejectionCode::MalformedJson,
        ),
        (
            br#"{"control_id":"01939b4f-1000-7000-8000-0000000000c1","control_kind":"url_grant","presigned_url":"https://x","presigned_url_expires_at":"2026-04-28T09:15:00Z","batch_id":"not-a-uuid"}"#,
            |b| validate::decode_control_envelope(b).map(drop),
            RejectionCode::InvalidBatchId,
        ),
        (
            br#"{"control_id":"01939b4f-1000-7000-8000-0000000000c1","control_kind":"upload_result","source_table":"t","batch_id":"01939b4e-a000-7000-8000-0000000000b1","outcome":"failed"}"#,
            |b| validate::decode_control_envelope(b).map(drop),
            RejectionCode::MalformedJson,
        ),
        (
            br#"{"control_id":"01939b4f-1000-7000-8000-0000000000c1","control_kind":"upload_result","source_table":"t","batch_id":"01939b4e-a000-7000-8000-0000000000b1","outcome":"lost"}"#,
            |b| validate::decode_control_envelope(b).map(drop),
            RejectionCode::MalformedJson,
        ),
    ];
    for (bytes, decode, code) in cases {
        let err = decode(bytes).unwrap_err();
        assert_eq!(err.code, code, "{}: {err}", String::from_utf8_lossy(bytes));
    }
}
