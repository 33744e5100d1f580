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
    /// How the cloud processed a finalized upload (reliability §2).
    UploadResult,
    /// What the cloud grants after a `hello` (edge-policies §0); staleness family `wire`.
    SetWireOptions,
    /// An operator's decision about a table the device blocked (reliability.md §2).
    UnblockTable,
}

impl ControlKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ControlKind::PauseLineage => "pause_lineage",
            ControlKind::ResumeLineage => "resume_lineage",
            ControlKind::UrlGrant => "url_grant",
            ControlKind::UploadResult => "upload_result",
            ControlKind::SetWireOptions => "set_wire_options",
            ControlKind::UnblockTable => "unblock_table",
        }
    }

    pub fn from_wire(s: &str) -> Option<ControlKind> {
        match s {
            "pause_lineage" => Some(ControlKind::PauseLineage),
            "resume_lineage" => Some(ControlKind::ResumeLineage),
            "url_grant" => Some(ControlKind::UrlGrant),
            "upload_result" => Some(ControlKind::UploadResult),
            "set_wire_options" => Some(ControlKind::SetWireOptions),
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

/// The staleness families of reliability.md §1: the device keeps, per table **and** family, the
/// `issued_at` of the last control applied, and a control older than that is acked but not
/// applied. Families are independent: a later `url_grant` never makes a re-sent
/// `pause_lineage` stale. The one list (kinds in parentheses; a kind added later maps to its
/// family in [`ControlKind::family`], nowhere else):
/// lineage (`pause_lineage`, `resume_lineage`), upload (`url_grant`, `upload_result`), policy
/// (`set_table_policy`), snapshot (`resnapshot_table`), wire (`set_wire_options`), bandwidth
/// (`set_bandwidth`), block (`unblock_table`). `state_write` is exempt (ordered by
/// `cloud_version`), and so is the unsigned `device_unknown` (it changes nothing durable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlFamily {
    Lineage,
    Upload,
    Policy,
    Snapshot,
    Wire,
    Bandwidth,
    Block,
}

impl ControlFamily {
    /// Every family, in the order of the list above.
    pub const ALL: [ControlFamily; 7] = [
        ControlFamily::Lineage,
        ControlFamily::Upload,
        ControlFamily::Policy,
        ControlFamily::Snapshot,
        ControlFamily::Wire,
        ControlFamily::Bandwidth,
        ControlFamily::Block,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ControlFamily::Lineage => "lineage",
            ControlFamily::Upload => "upload",
            ControlFamily::Policy => "policy",
            ControlFamily::Snapshot => "snapshot",
            ControlFamily::Wire => "wire",
            ControlFamily::Bandwidth => "bandwidth",
            ControlFamily::Block => "block",
        }
    }

    pub fn from_wire(s: &str) -> Option<ControlFamily> {
        ControlFamily::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl ControlKind {
    /// The staleness family of this kind ([`ControlFamily`]); `None` for a kind exempt from
    /// staleness (`state_write`).
    pub fn family(&self) -> Option<ControlFamily> {
        match self {
            ControlKind::PauseLineage | ControlKind::ResumeLineage => Some(ControlFamily::Lineage),
            ControlKind::UrlGrant | ControlKind::UploadResult => Some(ControlFamily::Upload),
            ControlKind::SetWireOptions => Some(ControlFamily::Wire),
            ControlKind::UnblockTable => Some(ControlFamily::Block),
        }
    }
}

/// `control_kind` of the one **unsigned** control (reliability.md §7).
pub const DEVICE_UNKNOWN: &str = "device_unknown";

/// Why the cloud answered a batch with `device_unknown` (its `reason`).
pub mod device_unknown_reason {
    /// The client identity is not in the registry.
    pub const NOT_REGISTERED: &str = "identity_not_registered";
    /// The identity is registered, but the topic's device slug is not its own.
    pub const TOPIC_NOT_ITS_OWN: &str = "topic_slug_mismatch";
}

/// `{control_kind:"device_unknown", reason, issued_at}` on an identity's control topic: the
/// cloud does not know the device (or not under that topic). Unsigned — no key exists for an
/// unknown device — so it must never change anything but the agent's `status` and logs; it is
/// never acked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceUnknown {
    /// Always [`DEVICE_UNKNOWN`].
    pub control_kind: String,
    pub reason: String,
    pub issued_at: String,
}

impl DeviceUnknown {
    pub fn new(reason: impl Into<String>, issued_at: impl Into<String>) -> Self {
        DeviceUnknown {
            control_kind: DEVICE_UNKNOWN.to_owned(),
            reason: reason.into(),
            issued_at: issued_at.into(),
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

/// How an upload ended in the cloud (`upload_result`'s `outcome`, reliability §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadOutcome {
    /// The object's rows are committed: the device may delete them and move its cursor.
    Committed,
    /// Not processed; `code` says why and `retryable` whether uploading again can help.
    Failed,
}

impl UploadOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            UploadOutcome::Committed => "committed",
            UploadOutcome::Failed => "failed",
        }
    }

    pub fn from_wire(s: &str) -> Option<UploadOutcome> {
        match s {
            "committed" => Some(UploadOutcome::Committed),
            "failed" => Some(UploadOutcome::Failed),
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
    /// `upload_result` only: `committed` or `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<UploadOutcome>,
    /// `upload_result` `failed` only: the named code (e.g. `spill_object_missing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// `upload_result` `failed` only: whether uploading again (same `batch_id`) can succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// `set_wire_options` (edge-policies §0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encodings: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_decompressed_bytes: Option<i64>,
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
            outcome: None,
            code: None,
            retryable: None,
            content_encodings: None,
            features: None,
            max_decompressed_bytes: None,
            action: None,
            commit_seq: None,
            signature: None,
        }
    }

    /// `set_wire_options` granting `options` (unsigned).
    pub fn set_wire_options(
        control_id: Uuid,
        options: &crate::wire::WireOptions,
        issued_at: impl Into<String>,
    ) -> Self {
        ControlEnvelope {
            content_encodings: (!options.content_encodings.is_empty())
                .then(|| options.content_encodings.clone()),
            features: Some(options.features.clone()),
            max_decompressed_bytes: options.max_decompressed_bytes,
            issued_at: Some(issued_at.into()),
            ..Self::bare(control_id, ControlKind::SetWireOptions)
        }
    }

    /// The grant a `set_wire_options` carries.
    pub fn wire_options(&self) -> crate::wire::WireOptions {
        crate::wire::WireOptions {
            content_encodings: self.content_encodings.clone().unwrap_or_default(),
            features: self.features.clone().unwrap_or_default(),
            max_decompressed_bytes: self.max_decompressed_bytes,
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

    /// `upload_result` for a finalized (or failed) upload of `batch_id` (unsigned). `code` and
    /// `retryable` are set for `failed` only.
    pub fn upload_result(
        control_id: Uuid,
        source_table: impl Into<String>,
        batch_id: Uuid,
        failure: Option<(&str, bool)>,
        issued_at: impl Into<String>,
    ) -> Self {
        let (outcome, code, retryable) = match failure {
            None => (UploadOutcome::Committed, None, None),
            Some((code, retryable)) => (
                UploadOutcome::Failed,
                Some(code.to_owned()),
                Some(retryable),
            ),
        };
        ControlEnvelope {
            source_table: Some(source_table.into()),
            batch_id: Some(batch_id),
            outcome: Some(outcome),
            code,
            retryable,
            issued_at: Some(issued_at.into()),
            ..Self::bare(control_id, ControlKind::UploadResult)
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
        opt("outcome", self.outcome.map(|o| Value::from(o.as_str())));
        opt("code", self.code.clone().map(Value::from));
        opt("retryable", self.retryable.map(Value::from));
        let list = |v: &Option<Vec<String>>| {
            v.as_ref()
                .map(|l| Value::Array(l.iter().cloned().map(Value::from).collect()))
        };
        opt("content_encodings", list(&self.content_encodings));
        opt("features", list(&self.features));
        opt(
            "max_decompressed_bytes",
            self.max_decompressed_bytes.map(Value::from),
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
    /// `applied` | `rejected` (edge-policies §0); absent = applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<AckResult>,
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
            result: None,
            skipped_entry: None,
        }
    }

    /// The ack of a skip, carrying the dropped entry.
    pub fn with_skipped(mut self, entry: SkippedEntry) -> Self {
        self.skipped_entry = Some(entry);
        self
    }

    /// An ack saying what was done with a control of the negotiated kinds.
    pub fn with_result(control_id: Uuid, result: AckResult) -> Self {
        IngestAck {
            result: Some(result),
            ..Self::new(control_id)
        }
    }
}

/// `result` of an ack (edge-policies §0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckResult {
    Applied,
    Rejected,
}

/// `url_request` / `finalize` on `sync/ingest/request`.
///
/// The object's lines are bare row-batch rows, so the batch header they need in the cloud
/// (journal epoch, schema hash) travels here when the device knows it. Both are optional
/// additions to §7: a cloud that gets neither infers them from what the device sent before.
/// `content_length` (reliability §7) is the object's exact size in bytes, fixed before the first
/// `url_request`: the grant's URL is signed for that length only, so a leaked URL cannot take
/// a bigger object; a request without it gets a URL bounded only by the store's size limit.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_length: Option<u64>,
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
            content_length: None,
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
    fn every_kind_maps_to_its_family_and_families_round_trip() {
        assert_eq!(
            ControlKind::PauseLineage.family(),
            Some(ControlFamily::Lineage)
        );
        assert_eq!(
            ControlKind::ResumeLineage.family(),
            Some(ControlFamily::Lineage)
        );
        assert_eq!(ControlKind::UrlGrant.family(), Some(ControlFamily::Upload));
        for f in ControlFamily::ALL {
            assert_eq!(ControlFamily::from_wire(f.as_str()), Some(f));
        }
        let d = serde_json::to_value(DeviceUnknown::new("identity_not_registered", "x")).unwrap();
        assert_eq!(d["control_kind"], "device_unknown");
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
    fn upload_result_signs_over_its_outcome_fields() {
        let key = b"edge-sync-test-control-key";
        let batch = new_uuid_v7(6, [3; 10]);
        let mut failed = ControlEnvelope::upload_result(
            new_uuid_v7(7, [4; 10]),
            "t",
            batch,
            Some(("spill_object_missing", true)),
            "2026-04-28T09:00:00Z",
        );
        sign_in_place(&mut failed, key);
        let mut v = serde_json::to_value(&failed).unwrap();
        assert_eq!(v["control_kind"], "upload_result");
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["code"], "spill_object_missing");
        assert_eq!(v["retryable"], true);
        v.as_object_mut().unwrap().remove("signature");
        assert_eq!(failed.signing_input(), canonical_json(&v));
        let mut tampered = failed.clone();
        tampered.retryable = Some(false);
        assert_eq!(verify(&tampered, key), Err(SignatureError::Mismatch));
        let committed = ControlEnvelope::upload_result(
            new_uuid_v7(8, [4; 10]),
            "t",
            batch,
            None,
            "2026-04-28T09:00:00Z",
        );
        let v = serde_json::to_value(&committed).unwrap();
        assert_eq!(v["outcome"], "committed");
        assert!(v.get("code").is_none() && v.get("retryable").is_none());
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
