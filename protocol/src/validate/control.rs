//! The control channel's documents: acks and upload requests from the device (spec §6, §7) and
//! control envelopes from the cloud (spec §6).

use serde_json::Value;

use super::envelope::{check_batch_id, check_format_version, parse_object, source_table, Origin};
use super::rejection::{malformed, Rejection};
use super::schema::check_schema_hash;
use crate::control::{
    AckResult, ControlEnvelope, ControlKind, DeviceUnknown, IngestAck, IngestRequest, RequestKind,
    SegmentKind, SkippedEntry, UnblockAction, UploadOutcome, DEVICE_UNKNOWN,
};
use crate::ids::{parse_uuid_hyphenated, parse_uuid_v7};
use crate::timestamp;
use crate::wire::{Hello, WireOptions, HELLO_REQUEST_KIND};

/// Decodes an ack of a control (spec §6).
pub fn decode_ingest_ack(bytes: &[u8]) -> Result<IngestAck, Rejection> {
    let map = parse_object(bytes, Origin::Device)?;
    let format_version = check_format_version(&map)?;
    let control_id = map
        .get("control_id")
        .and_then(Value::as_str)
        .and_then(parse_uuid_hyphenated)
        .ok_or_else(|| malformed("control_id is missing or not a hyphenated UUID"))?;
    let result = match map.get("result") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "applied" => Some(AckResult::Applied),
        Some(Value::String(s)) if s == "rejected" => Some(AckResult::Rejected),
        Some(_) => return Err(malformed("result is not applied or rejected")),
    };
    let skipped_entry = match map.get("skipped_entry") {
        None | Some(Value::Null) => None,
        Some(v) => Some(skipped_entry(v)?),
    };
    Ok(IngestAck {
        format_version,
        control_id,
        result,
        skipped_entry,
    })
}

fn skipped_entry(v: &Value) -> Result<SkippedEntry, Rejection> {
    let obj = v
        .as_object()
        .ok_or_else(|| malformed("skipped_entry is not an object"))?;
    let source_table = obj
        .get("source_table")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && !t.contains('\0'))
        .ok_or_else(|| malformed("skipped_entry.source_table is missing or not a table name"))?;
    let commit_seq = obj
        .get("commit_seq")
        .and_then(Value::as_i64)
        .filter(|n| *n > 0)
        .ok_or_else(|| malformed("skipped_entry.commit_seq is not a positive integer"))?;
    let entry = obj
        .get("entry")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("skipped_entry.entry is missing or not a string"))?;
    Ok(SkippedEntry {
        source_table: source_table.to_owned(),
        commit_seq,
        entry: entry.to_owned(),
    })
}

/// Decodes a `url_request` / `finalize` (spec §7).
pub fn decode_ingest_request(bytes: &[u8]) -> Result<IngestRequest, Rejection> {
    let map = parse_object(bytes, Origin::Device)?;
    let format_version = check_format_version(&map)?;
    let batch_id = check_batch_id(&map)?;
    let request_kind = map
        .get("request_kind")
        .and_then(Value::as_str)
        .and_then(RequestKind::from_wire)
        .ok_or_else(|| malformed("request_kind is not url_request or finalize"))?;
    let source_table = source_table(&map)?;
    let segment_kind = segment_kind(map.get("segment_kind"))?
        .ok_or_else(|| malformed("segment_kind is missing"))?;
    let journal_epoch = match map.get("journal_epoch") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .and_then(parse_uuid_v7)
                .ok_or_else(|| malformed("journal_epoch is not a hyphenated UUIDv7"))?,
        ),
    };
    let schema_hash = match map.get("schema_hash") {
        None | Some(Value::Null) => None,
        Some(_) => Some(check_schema_hash(&map)?),
    };
    let content_length = match map.get("content_length") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| malformed("content_length is not a byte count"))?,
        ),
    };
    Ok(IngestRequest {
        format_version,
        request_kind,
        source_table,
        segment_kind,
        batch_id,
        journal_epoch,
        schema_hash,
        content_length,
    })
}

fn segment_kind(v: Option<&Value>) -> Result<Option<SegmentKind>, Rejection> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .and_then(SegmentKind::from_wire)
            .map(Some)
            .ok_or_else(|| malformed("segment_kind is not payload_spill or bootstrap_snapshot")),
    }
}

/// Decodes the unsigned `device_unknown` (reliability.md §7): `Ok(None)` when `bytes` is some
/// other control (decode it with [`decode_control_envelope`]).
pub fn decode_device_unknown(bytes: &[u8]) -> Result<Option<DeviceUnknown>, Rejection> {
    let map = parse_object(bytes, Origin::Cloud)?;
    if map.get("control_kind").and_then(Value::as_str) != Some(DEVICE_UNKNOWN) {
        return Ok(None);
    }
    let text = |key: &str| {
        map.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| malformed(format!("{DEVICE_UNKNOWN} needs {key}")))
    };
    let reason = text("reason")?;
    let issued_at = text("issued_at")?;
    timestamp::parse(&issued_at).map_err(|e| malformed(format!("issued_at: {e}")))?;
    Ok(Some(DeviceUnknown::new(reason, issued_at)))
}

/// Decodes a control envelope received by the device (spec §6). Does not verify the signature.
pub fn decode_control_envelope(bytes: &[u8]) -> Result<ControlEnvelope, Rejection> {
    let map = parse_object(bytes, Origin::Cloud)?;
    let control_id = map
        .get("control_id")
        .and_then(Value::as_str)
        .and_then(parse_uuid_hyphenated)
        .ok_or_else(|| malformed("control_id is missing or not a hyphenated UUID"))?;
    let control_kind = map
        .get("control_kind")
        .and_then(Value::as_str)
        .and_then(ControlKind::from_wire)
        .ok_or_else(|| malformed("control_kind is not a known control"))?;

    let opt_string = |key: &str| -> Result<Option<String>, Rejection> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(malformed(format!("{key} is not a string"))),
        }
    };
    let opt_time = |key: &str| -> Result<Option<String>, Rejection> {
        let value = opt_string(key)?;
        if let Some(text) = &value {
            timestamp::parse(text).map_err(|e| malformed(format!("{key}: {e}")))?;
        }
        Ok(value)
    };
    let source_table = opt_string("source_table")?;
    let server_watermark = match map.get("server_watermark") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| malformed("server_watermark is not an integer"))?,
        ),
    };
    let reason = opt_string("reason")?;
    let issued_at = opt_time("issued_at")?;
    let presigned_url = opt_string("presigned_url")?;
    let presigned_url_expires_at = opt_time("presigned_url_expires_at")?;
    let batch_id = match map.get("batch_id") {
        None | Some(Value::Null) => None,
        Some(_) => Some(check_batch_id(&map)?),
    };
    let segment_kind = segment_kind(map.get("segment_kind"))?;
    let outcome = match map.get("outcome") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .and_then(UploadOutcome::from_wire)
                .ok_or_else(|| malformed("outcome is not committed or failed"))?,
        ),
    };
    let code = opt_string("code")?;
    let retryable = match map.get("retryable") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(malformed("retryable is not a boolean")),
    };
    let action = match map.get("action") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .and_then(UnblockAction::from_wire)
                .ok_or_else(|| malformed("action is not retry or skip"))?,
        ),
    };
    let commit_seq = match map.get("commit_seq") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| malformed("commit_seq is not an integer"))?,
        ),
    };
    let signature = opt_string("signature")?;
    let opt_list = |key: &str| -> Result<Option<Vec<String>>, Rejection> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| malformed(format!("{key} holds a non-string")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(malformed(format!("{key} is not an array"))),
        }
    };
    let content_encodings = opt_list("content_encodings")?;
    let features = opt_list("features")?;
    let max_decompressed_bytes = match map.get("max_decompressed_bytes") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| malformed("max_decompressed_bytes is not an integer"))?,
        ),
    };

    let missing = |what: &str| malformed(format!("{} needs {what}", control_kind.as_str()));
    match control_kind {
        ControlKind::PauseLineage | ControlKind::ResumeLineage => {
            if source_table.as_deref().is_none_or(str::is_empty) {
                return Err(missing("source_table"));
            }
            if server_watermark.is_none() {
                return Err(missing("server_watermark"));
            }
        }
        ControlKind::SetWireOptions => {
            if features.is_none() {
                return Err(missing("features"));
            }
        }
        ControlKind::UnblockTable => {
            if source_table.as_deref().is_none_or(str::is_empty) {
                return Err(missing("source_table"));
            }
            if action.is_none() {
                return Err(missing("action"));
            }
            if commit_seq.is_none() {
                return Err(missing("commit_seq"));
            }
        }
        ControlKind::UrlGrant => {
            if presigned_url.is_none() {
                return Err(missing("presigned_url"));
            }
            if presigned_url_expires_at.is_none() {
                return Err(missing("presigned_url_expires_at"));
            }
        }
        ControlKind::UploadResult => {
            if source_table.as_deref().is_none_or(str::is_empty) {
                return Err(missing("source_table"));
            }
            if batch_id.is_none() {
                return Err(missing("batch_id"));
            }
            match outcome {
                None => return Err(missing("outcome")),
                Some(UploadOutcome::Failed) if code.is_none() || retryable.is_none() => {
                    return Err(missing("code and retryable when failed"))
                }
                _ => {}
            }
        }
    }
    Ok(ControlEnvelope {
        control_id,
        control_kind,
        source_table,
        server_watermark,
        reason,
        issued_at,
        presigned_url,
        presigned_url_expires_at,
        batch_id,
        segment_kind,
        outcome,
        code,
        retryable,
        content_encodings,
        features,
        max_decompressed_bytes,
        action,
        commit_seq,
        signature,
    })
}

/// The `request_kind` of a `sync/ingest/request` document, if it has a string one.
pub fn request_kind_of(bytes: &[u8]) -> Option<String> {
    let map = parse_object(bytes, Origin::Device).ok()?;
    map.get("request_kind")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Decodes a `hello` (edge-policies §0).
pub fn decode_hello(bytes: &[u8]) -> Result<Hello, Rejection> {
    let map = parse_object(bytes, Origin::Device)?;
    let format_version = check_format_version(&map)?;
    if map.get("request_kind").and_then(Value::as_str) != Some(HELLO_REQUEST_KIND) {
        return Err(malformed("request_kind is not hello"));
    }
    let agent_version = match map.get("agent_version") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(malformed("agent_version is missing or not a string")),
    };
    let strings = |v: Option<&Value>, key: &str| -> Result<Vec<String>, Rejection> {
        match v {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| malformed(format!("{key} holds a non-string")))
                })
                .collect(),
            Some(_) => Err(malformed(format!("{key} is not an array"))),
        }
    };
    let capabilities = strings(map.get("capabilities"), "capabilities")?;
    let granted = match map.get("granted") {
        None | Some(Value::Null) => WireOptions::default(),
        Some(Value::Object(g)) => WireOptions {
            content_encodings: strings(g.get("content_encodings"), "granted.content_encodings")?,
            features: strings(g.get("features"), "granted.features")?,
            max_decompressed_bytes: g.get("max_decompressed_bytes").and_then(Value::as_i64),
        },
        Some(_) => return Err(malformed("granted is not an object")),
    };
    Ok(Hello {
        format_version,
        request_kind: HELLO_REQUEST_KIND.to_owned(),
        agent_version,
        capabilities,
        granted,
    })
}

#[cfg(test)]
mod hello_tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_is_not_an_upload_request() {
        let h = Hello::new("0.1.0", crate::wire::grant_for(&[]));
        let bytes = serde_json::to_vec(&h).unwrap();
        assert_eq!(decode_hello(&bytes).unwrap(), h);
        assert_eq!(request_kind_of(&bytes).as_deref(), Some("hello"));
        // What a cloud without negotiation does with it: a named rejection, nothing granted.
        assert!(decode_ingest_request(&bytes).is_err());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::control::{sign_in_place, verify};
    use crate::ids::new_uuid_v7;

    #[test]
    fn an_unblock_table_control_round_trips_and_is_signed_over_its_decision() {
        let mut env = ControlEnvelope::unblock_table(
            new_uuid_v7(1_777_366_800_000, [4; 10]),
            "readings",
            UnblockAction::Skip,
            42,
            "2026-04-28T09:00:00Z",
        );
        sign_in_place(&mut env, b"k");
        let bytes = serde_json::to_vec(&env).unwrap();
        let back = decode_control_envelope(&bytes).unwrap();
        assert_eq!(back, env);
        assert_eq!(verify(&back, b"k"), Ok(()));
        let mut tampered = back.clone();
        tampered.commit_seq = Some(43);
        assert!(verify(&tampered, b"k").is_err(), "commit_seq is signed");
        tampered = back;
        tampered.action = Some(UnblockAction::Retry);
        assert!(verify(&tampered, b"k").is_err(), "action is signed");
    }

    #[test]
    fn an_unblock_table_control_needs_its_table_action_and_entry() {
        let id = new_uuid_v7(1, [1; 10]);
        for (body, needs) in [
            (
                serde_json::json!({"control_id": id, "control_kind": "unblock_table", "action": "retry", "commit_seq": 1}),
                "source_table",
            ),
            (
                serde_json::json!({"control_id": id, "control_kind": "unblock_table", "source_table": "t", "commit_seq": 1}),
                "action",
            ),
            (
                serde_json::json!({"control_id": id, "control_kind": "unblock_table", "source_table": "t", "action": "skip"}),
                "commit_seq",
            ),
        ] {
            let err = decode_control_envelope(body.to_string().as_bytes()).unwrap_err();
            assert!(err.message.contains(needs), "{}", err.message);
        }
        let bad = serde_json::json!({"control_id": id, "control_kind": "unblock_table",
            "source_table": "t", "action": "drop", "commit_seq": 1});
        assert!(decode_control_envelope(bad.to_string().as_bytes()).is_err());
    }

    #[test]
    fn an_ack_may_carry_the_skipped_entry() {
        let id = new_uuid_v7(1, [1; 10]);
        let plain = IngestAck::new(id);
        let text = serde_json::to_string(&plain).unwrap();
        assert!(
            !text.contains("skipped_entry"),
            "omitted when absent: {text}"
        );
        assert_eq!(decode_ingest_ack(text.as_bytes()).unwrap(), plain);
        let skip = plain.with_skipped(SkippedEntry {
            source_table: "t".into(),
            commit_seq: 7,
            entry: "{\"row\":\"[1,\"}".into(),
        });
        let bytes = serde_json::to_vec(&skip).unwrap();
        assert_eq!(decode_ingest_ack(&bytes).unwrap(), skip);
        let bad = serde_json::json!({"format_version": 1, "control_id": id,
            "skipped_entry": {"source_table": "t", "commit_seq": 0, "entry": ""}});
        assert!(decode_ingest_ack(bad.to_string().as_bytes()).is_err());
    }
}
