//! Controls, acks and upload requests (spec §6, §7), and the HMAC signature of controls.
//!
//! A control is signed over the canonical JSON (sorted keys, no whitespace) of the envelope
//! *without* its `signature` key; absent optional fields are omitted, never written as `null`,
//! so signer and verifier agree whatever struct version each side was built with as long as both
//! omit what they do not set. The MAC is HMAC-SHA256 keyed by the device's control key, written
//! as 64 lowercase hex digits. Verification compares in constant time (`Mac::verify_slice`).

use hmac::digest::{Key, KeyInit};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;
use uuid::Uuid;

use crate::canonical::canonical_json;
use crate::limits::FORMAT_VERSION;

type HmacSha256 = Hmac<Sha256>;

/// What a control asks the device to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlKind {
    PauseLineage,
    ResumeLineage,
    UrlGrant,
    /// An operator's decision about a table the device blocked (reliability.md §2).
    UnblockTable,
}

impl ControlKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ControlKind::PauseLineage => "pause_lineage",
            ControlKind::ResumeLineage => "resume_lineage",
            ControlKind::UrlGrant => "url_grant",
            ControlKind::UnblockTable => "unblock_table",
        }
    }

    pub fn from_wire(s: &str) -> Option<ControlKind> {
        match s {
            "pause_lineage" => Some(ControlKind::PauseLineage),
            "resume_lineage" => Some(ControlKind::ResumeLineage),
            "url_grant" => Some(ControlKind::UrlGrant),
            "unblock_table" => Some(ControlKind::UnblockTable),
            _ => None,
        }
    }
}

/// `unblock_table.action`: what the operator decided about the blocking entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnblockAction {
    /// Clear the block; the device tries the entry again.
    Retry,
    /// Drop exactly the entry `commit_seq`; the cloud keeps it as a dead letter
    /// `skipped_by_operator`.
    Skip,
}

impl UnblockAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            UnblockAction::Retry => "retry",
            UnblockAction::Skip => "skip",
        }
    }

    pub fn from_wire(s: &str) -> Option<UnblockAction> {
        match s {
            "retry" => Some(UnblockAction::Retry),
            "skip" => Some(UnblockAction::Skip),
            _ => None,
        }
    }
}

/// What an upload carries (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentKind {
    PayloadSpill,
    BootstrapSnapshot,
}

impl SegmentKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SegmentKind::PayloadSpill => "payload_spill",
            SegmentKind::BootstrapSnapshot => "bootstrap_snapshot",
        }
    }

    pub fn from_wire(s: &str) -> Option<SegmentKind> {
        match s {
            "payload_spill" => Some(SegmentKind::PayloadSpill),
            "bootstrap_snapshot" => Some(SegmentKind::BootstrapSnapshot),
            _ => None,
        }
    }
}

/// Step of the upload flow a device request is (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    UrlRequest,
    Finalize,
}

impl RequestKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RequestKind::UrlRequest => "url_request",
            RequestKind::Finalize => "finalize",
        }
    }

    pub fn from_wire(s: &str) -> Option<RequestKind> {
        match s {
            "url_request" => Some(RequestKind::UrlRequest),
            "finalize" => Some(RequestKind::Finalize),
            _ => None,
        }
    }
}

/// A control on `sync/ingest/control`. Which optional fields a kind needs is checked by
/// [`crate::validate::decode_control_envelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlEnvelope {
    pub control_id: Uuid,
    pub control_kind: ControlKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_watermark: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presigned_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presigned_url_expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_kind: Option<SegmentKind>,
    /// `unblock_table`: the operator's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<UnblockAction>,
    /// `unblock_table`: the blocking entry's `commit_seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl ControlEnvelope {
    fn bare(control_id: Uuid, control_kind: ControlKind) -> Self {
        ControlEnvelope {
            control_id,
            control_kind,
            source_table: None,
            server_watermark: None,
            reason: None,
            issued_at: None,
            presigned_url: None,
            presigned_url_expires_at: None,
            batch_id: None,
            segment_kind: None,
            action: None,
            commit_seq: None,
            signature: None,
        }
    }

    /// `unblock_table` for `source_table`: `action` on the entry `commit_seq` (unsigned).
    pub fn unblock_table(
        control_id: Uuid,
        source_table: impl Into<String>,
        action: UnblockAction,
        commit_seq: i64,
        issued_at: impl Into<String>,
    ) -> Self {
        ControlEnvelope {
            source_table: Some(source_table.into()),
            action: Some(action),
            commit_seq: Some(commit_seq),
            issued_at: Some(issued_at.into()),
            ..Self::bare(control_id, ControlKind::UnblockTable)
        }
    }

    /// `pause_lineage` for `source_table` at `server_watermark` (unsigned).
    pub fn pause_lineage(
        control_id: Uuid,
        source_table: impl Into<String>,
        server_watermark: i64,
        reason: impl Into<String>,
        issued_at: impl Into<String>,
    ) -> Self {
        ControlEnvelope {
            source_table: Some(source_table.into()),
            server_watermark: Some(server_watermark),
            reason: Some(reason.into()),
            issued_at: Some(issued_at.into()),
            ..Self::bare(control_id, ControlKind::PauseLineage)
        }
    }

    /// `resume_lineage` for `source_table` from `server_watermark + 1` (unsigned).
    pub fn resume_lineage(
        control_id: Uuid,
        source_table: impl Into<String>,
        server_watermark: i64,
        issued_at: impl Into<String>,
    ) -> Self {
        ControlEnvelope {
            source_table: Some(source_table.into()),
            server_watermark: Some(server_watermark),
            issued_at: Some(issued_at.into()),
            ..Self::bare(control_id, ControlKind::ResumeLineage)
        }
    }

    /// `url_grant` answering a `url_request` (unsigned).
    #[allow(clippy::too_many_arguments)]
    pub fn url_grant(
        control_id: Uuid,
        source_table: impl Into<String>,
        batch_id: Uuid,
        segment_kind: SegmentKind,
        presigned_url: impl Into<String>,
        presigned_url_expires_at: impl Into<String>,
        issued_at: impl Into<String>,
    ) -> Self {
        ControlEnvelope {
            source_table: Some(source_table.into()),
            batch_id: Some(batch_id),
            segment_kind: Some(segment_kind),
            presigned_url: Some(presigned_url.into()),
            presigned_url_expires_at: Some(presigned_url_expires_at.into()),
            issued_at: Some(issued_at.into()),
            ..Self::bare(control_id, ControlKind::UrlGrant)
        }
    }

    /// The signed text: canonical JSON of the envelope without `signature`.
    pub fn signing_input(&self) -> String {
        let mut map = Map::new();
        map.insert(
            "control_id".into(),
            Value::from(self.control_id.to_string()),
        );
        map.insert(
            "control_kind".into(),
            Value::from(self.control_kind.as_str()),
        );
        let mut opt = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                map.insert(key.to_owned(), v);
            }
        };
        opt("source_table", self.source_table.clone().map(Value::from));
        opt("server_watermark", self.server_watermark.map(Value::from));
        opt("reason", self.reason.clone().map(Value::from));
        opt("issued_at", self.issued_at.clone().map(Value::from));
        opt("presigned_url", self.presigned_url.clone().map(Value::from));
        opt(
            "presigned_url_expires_at",
            self.presigned_url_expires_at.clone().map(Value::from),
        );
        opt(
            "batch_id",
            self.batch_id.map(|u| Value::from(u.to_string())),
        );
        opt(
            "segment_kind",
            self.segment_kind.map(|k| Value::from(k.as_str())),
        );
        opt("action", self.action.map(|a| Value::from(a.as_str())));
        opt("commit_seq", self.commit_seq.map(Value::from));
        canonical_json(&Value::Object(map))
    }
}

/// Why a control's signature does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SignatureError {
    #[error("control carries no signature")]
    Missing,
    #[error("signature is not 64 lowercase hex digits")]
    Malformed,
    #[error("signature does not match the control key")]
    Mismatch,
}

/// HMAC accepts keys of any length; it hashes keys longer than the block and zero-pads shorter
/// ones. Doing that here lets us use the infallible fixed-size constructor instead of
/// `new_from_slice`, whose (never-taken) error path we would otherwise have to invent an
/// answer for. Output is identical to `new_from_slice` (tested).
fn keyed_mac(key: &[u8]) -> HmacSha256 {
    let mut block = Key::<HmacSha256>::default();
    if key.len() > block.len() {
        let digest = Sha256::digest(key);
        block[..digest.len()].copy_from_slice(&digest);
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    <HmacSha256 as KeyInit>::new(&block)
}

/// Hex HMAC-SHA256 of [`ControlEnvelope::signing_input`] (any existing signature is ignored).
pub fn sign(envelope: &ControlEnvelope, key: &[u8]) -> String {
    let mut mac = keyed_mac(key);
    mac.update(envelope.signing_input().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Sets `envelope.signature` to [`sign`]`(envelope, key)`.
pub fn sign_in_place(envelope: &mut ControlEnvelope, key: &[u8]) {
    envelope.signature = Some(sign(envelope, key));
}

/// Checks `envelope.signature` against `key` in constant time.
pub fn verify(envelope: &ControlEnvelope, key: &[u8]) -> Result<(), SignatureError> {
    let signature = envelope
        .signature
        .as_deref()
        .ok_or(SignatureError::Missing)?;
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(SignatureError::Malformed);
    }
    let expected = hex::decode(signature).map_err(|_| SignatureError::Malformed)?;
    let mut mac = keyed_mac(key);
    mac.update(envelope.signing_input().as_bytes());
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// Ack of a control on `sync/ingest/ack`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IngestAck {
    pub format_version: u32,
    pub control_id: Uuid,
    /// The ack of an `unblock_table` skip carries the dropped journal entry, which the cloud
    /// records as a dead letter `skipped_by_operator` (reliability.md §2). Omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_entry: Option<SkippedEntry>,
}

/// A journal entry an operator skipped, as the device held it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SkippedEntry {
    pub source_table: String,
    pub commit_seq: i64,
    /// The entry's bytes as text (the journal row as a JSON object, or the row's line).
    pub entry: String,
}

impl IngestAck {
    pub fn new(control_id: Uuid) -> Self {
        IngestAck {
            format_version: FORMAT_VERSION,
            control_id,
            skipped_entry: None,
        }
    }

    /// The ack of a skip, carrying the dropped entry.
    pub fn with_skipped(mut self, entry: SkippedEntry) -> Self {
        self.skipped_entry = Some(entry);
        self
    }
}

/// `url_request` / `finalize` on `sync/ingest/request`.
///
/// The object's lines are bare row-batch rows, so the batch header they need in the cloud
/// (journal epoch, schema hash) travels here when the device knows it. Both are optional
/// additions to §7: a cloud that gets neither infers them from what the device sent before.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IngestRequest {
    pub format_version: u32,
    pub request_kind: RequestKind,
    pub source_table: String,
    pub segment_kind: SegmentKind,
    pub batch_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_epoch: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_hash: Option<String>,
}

impl IngestRequest {
    pub fn new(
        request_kind: RequestKind,
        source_table: impl Into<String>,
        segment_kind: SegmentKind,
        batch_id: Uuid,
    ) -> Self {
        IngestRequest {
            format_version: FORMAT_VERSION,
            request_kind,
            source_table: source_table.into(),
            segment_kind,
            batch_id,
            journal_epoch: None,
            schema_hash: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::new_uuid_v7;

    fn pause() -> ControlEnvelope {
        ControlEnvelope::pause_lineage(
            new_uuid_v7(1_777_366_800_000, [1; 10]),
            "device_state",
            103,
            "backpressure: staged row cap exceeded",
            "2026-04-28T09:00:00Z",
        )
    }

    #[test]
    fn sign_then_verify() {
        let key = b"edge-sync-test-control-key";
        let mut env = pause();
        assert_eq!(verify(&env, key), Err(SignatureError::Missing));
        sign_in_place(&mut env, key);
        assert_eq!(verify(&env, key), Ok(()));
        assert_eq!(verify(&env, b"other key"), Err(SignatureError::Mismatch));
        let mut tampered = env.clone();
        tampered.server_watermark = Some(104);
        assert_eq!(verify(&tampered, key), Err(SignatureError::Mismatch));
        let mut bad = env.clone();
        bad.signature = Some("zz".into());
        assert_eq!(verify(&bad, key), Err(SignatureError::Malformed));
        let mut upper = env.clone();
        upper.signature = upper.signature.map(|s| s.to_uppercase());
        assert_eq!(verify(&upper, key), Err(SignatureError::Malformed));
    }

    #[test]
    fn signing_input_matches_serde_without_signature() {
        let mut env = ControlEnvelope::url_grant(
            new_uuid_v7(5, [2; 10]),
            "t",
            new_uuid_v7(6, [3; 10]),
            SegmentKind::PayloadSpill,
            "https://example.invalid/put?x=1&y=\"2\"",
            "2026-04-28T09:15:00Z",
            "2026-04-28T09:00:00Z",
        );
        env.signature = Some("ignored".into());
        let mut v = serde_json::to_value(&env).unwrap();
        v.as_object_mut().unwrap().remove("signature");
        assert_eq!(env.signing_input(), canonical_json(&v));
    }

    #[test]
    fn key_normalisation_matches_new_from_slice() {
        let input = pause().signing_input();
        for len in [0usize, 1, 32, 63, 64, 65, 200] {
            let key: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut reference = <HmacSha256 as KeyInit>::new_from_slice(&key).unwrap();
            reference.update(input.as_bytes());
            let mut ours = keyed_mac(&key);
            ours.update(input.as_bytes());
            assert_eq!(
                ours.finalize().into_bytes(),
                reference.finalize().into_bytes(),
                "key length {len}"
            );
        }
    }
}
