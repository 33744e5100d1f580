//! Spill uploads (protocol §7): a change too large for one MQTT message travels as an object.
//!
//! ```text
//!   fixed ──► Waiting ──url_request──► Requested ──url_grant──► Uploading ──PUT 2xx──► Uploaded
//!               ▲  ▲                       │ no grant in time          │ PUT failed      │
//!               │  └───────────────────────┘                           │ (backoff)       │ finalize
//!               └──────────── url expired / PUT failed ────────────────┘                 ▼
//!               ▲                                                                   Finalizing
//!               │ upload_result failed, retryable                                       │ PUBACK
//!               └────────────────────────────────────────────────────────────── AwaitingResult
//!                      done ◄── upload_result committed ──┘   └── failed, not retryable ──► Blocked
//! ```
//!
//! Why it is shaped like this:
//! - The spill's `batch_id` and its object bytes (zstd JSON Lines, one row-batch row object per
//!   line) are fixed in `state.db`'s outbox before the first `url_request`, exactly like a row
//!   batch, so a retry or a restart uploads the same object under the same id.
//! - Only that id and bytes are durable. The phase is kept in memory: after a restart a spill
//!   starts again at Waiting, which costs one more `url_request` and maybe one more PUT of the
//!   same object — both idempotent in the cloud.
//! - The table's cursor passes the spilled change only on the signed `upload_result`
//!   `committed` (reliability §2) — not on the PUBACK of `finalize`, which only says the broker
//!   has the request: the cloud may still fail to process the object (another runner's spill
//!   directory, a line over its limit). Until then the table publishes nothing after it (the
//!   daemon reads on only once the spill is done), so acknowledging later rows can never delete
//!   a change that has not reached the cloud. `failed` + retryable uploads the same object again
//!   (same `batch_id`, new `url_request`); `failed` + not retryable blocks the table, the rows
//!   stay in the journal. No result within [`REQUEST_RETRY`] re-sends `finalize` (the cloud
//!   answers a finalize or request for a finalized batch with its result again).
//! - A row whose line is over [`edge_protocol::limits::SPILL_MAX_LINE_BYTES`] (the cloud's
//!   per-line limit) is never uploaded: [`check_line`] refuses it (`spill_row_too_large`) and
//!   the table is blocked.
//! - The PUT is blocking I/O (`ureq`, rustls with ring, no native TLS) and runs on tokio's
//!   blocking pool; the daemon's loop only sees its result on a channel.

use std::io::Write;
use std::time::{Duration, Instant};

use edge_protocol::batch::RowChange;
use thiserror::Error;
use time::OffsetDateTime;
use uuid::Uuid;

/// Largest object the protocol allows (§7).
pub const MAX_OBJECT_BYTES: usize = 1 << 30;
/// zstd level: the default ratio/speed trade-off; the object is built once per spill.
pub const ZSTD_LEVEL: i32 = 3;
/// A `url_request` without an answer is sent again after this long (the cloud may have been
/// down, or the request lost with a session).
pub const REQUEST_RETRY: Duration = Duration::from_secs(30);
/// Timeout of one PUT (connect + transfer).
pub const PUT_TIMEOUT: Duration = Duration::from_secs(300);
/// Backoff after a failed upload: `min(2^failures s, MAX_BACKOFF)`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Counter (`state.db` counters) of spills fixed per table.
pub const COUNTER_SPILLS: &str = "spill_uploads";
/// Outbox `kind` of a spill entry.
pub const OUTBOX_KIND: &str = "spill";

/// Whether one spilled row (its JSON line) is within the cloud's per-line limit.
pub fn check_line(line: &[u8]) -> Result<(), SpillError> {
    if line.len() > edge_protocol::limits::SPILL_MAX_LINE_BYTES {
        return Err(SpillError::RowTooLarge(line.len()));
    }
    Ok(())
}

/// Building or uploading a spill object failed.
#[derive(Debug, Error)]
pub enum SpillError {
    #[error("encoding a spill row: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("compressing a spill object: {0}")]
    Compress(#[from] std::io::Error),
    #[error("spill object of {0} bytes exceeds the 1 GiB limit")]
    TooLarge(usize),
    #[error("spilled row of {0} bytes exceeds the cloud's per-line limit (spill_row_too_large)")]
    RowTooLarge(usize),
}

/// Why a PUT did not succeed. Every case leads to a new `url_request` (a fresh URL); the
/// distinction is for the log.
#[derive(Debug, Error)]
pub enum PutError {
    #[error("the upload URL was refused or has expired (HTTP {0})")]
    Refused(u16),
    #[error("upload failed with HTTP {0}")]
    Status(u16),
    #[error("upload transport error: {0}")]
    Transport(String),
}

/// Encodes changes as zstd-compressed JSON Lines.
pub fn encode(rows: &[RowChange]) -> Result<Vec<u8>, SpillError> {
    let lines = rows
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()?;
    encode_json(&lines)
}

/// [`encode`] for changes already encoded as JSON (as the journal reader delivers them).
pub fn encode_json(lines: &[Vec<u8>]) -> Result<Vec<u8>, SpillError> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
    for line in lines {
        enc.write_all(line)?;
        enc.write_all(b"\n")?;
    }
    let bytes = enc.finish()?;
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(SpillError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes an object made by [`encode`] (the cloud's view; used by tests).
pub fn decode(object: &[u8]) -> Result<Vec<RowChange>, SpillError> {
    let text = zstd::stream::decode_all(object)?;
    text.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).map_err(SpillError::from))
        .collect()
}

/// Whether a grant's `presigned_url_expires_at` has passed at `now`. A missing or unreadable
/// expiry is treated as valid: the PUT itself will say if it is not.
pub fn is_expired(expires_at: Option<&str>, now: OffsetDateTime) -> bool {
    expires_at
        .and_then(|s| edge_protocol::timestamp::parse(s).ok())
        .is_some_and(|t| t <= now)
}

/// Backoff after `failures` failed uploads.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF)
}

/// PUTs `body` to a presigned URL (blocking).
pub fn put(url: &str, body: &[u8], timeout: Duration) -> Result<(), PutError> {
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    match agent.put(url).send_bytes(body) {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code @ (401 | 403), _)) => Err(PutError::Refused(code)),
        Err(ureq::Error::Status(code, _)) => Err(PutError::Status(code)),
        Err(ureq::Error::Transport(t)) => Err(PutError::Transport(t.to_string())),
    }
}

/// Where a spill is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Needs a `url_request` (not before the instant: backoff).
    Waiting { not_before: Instant },
    /// `url_request` handed to the client at the instant.
    Requested { at: Instant },
    /// PUT running.
    Uploading,
    /// PUT done; `finalize` to be published.
    Uploaded,
    /// `finalize` handed to the client; its PUBACK means the broker has it.
    Finalizing,
    /// `finalize` PUBACKed at the instant: waiting for the cloud's `upload_result`.
    AwaitingResult { since: Instant },
    /// `upload_result` failed and not retryable: nothing more is sent; the table is blocked
    /// and its rows stay in the journal until an operator decides.
    Blocked,
}

/// One spilled change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spill {
    pub batch_id: Uuid,
    pub table: String,
    pub commit_seq: i64,
    pub phase: Phase,
    pub failures: u32,
    /// The batch header the cloud processes the object under, sent with every request
    /// (optional fields of `url_request`): without them the cloud has to assume the device's
    /// newest epoch and the table's current schema, wrong when the spilled change is the first
    /// of a new epoch or precedes a schema change.
    pub journal_epoch: Option<Uuid>,
    pub schema_hash: Option<String>,
    /// The object's size in bytes, sent as `content_length` (reliability §7): the cloud signs
    /// the upload URL for exactly that length.
    pub content_length: Option<u64>,
}

impl Spill {
    pub fn new(batch_id: Uuid, table: String, commit_seq: i64, now: Instant) -> Spill {
        Spill {
            batch_id,
            table,
            commit_seq,
            phase: Phase::Waiting { not_before: now },
            failures: 0,
            journal_epoch: None,
            schema_hash: None,
            content_length: None,
        }
    }

    /// The same spill with its object's size (see the field).
    pub fn with_length(mut self, object_bytes: usize) -> Self {
        self.content_length = u64::try_from(object_bytes).ok();
        self
    }

    /// The same spill with its batch header (see the fields).
    pub fn with_header(mut self, journal_epoch: Option<Uuid>, schema_hash: Option<String>) -> Self {
        self.journal_epoch = journal_epoch;
        self.schema_hash = schema_hash;
        self
    }

    /// The next thing to publish at `now`, if any.
    pub fn due(&self, now: Instant) -> Option<Due> {
        match self.phase {
            Phase::Waiting { not_before } if not_before <= now => Some(Due::Request),
            Phase::Requested { at } if at + REQUEST_RETRY <= now => Some(Due::Request),
            Phase::Uploaded => Some(Due::Finalize),
            Phase::AwaitingResult { since } if since + REQUEST_RETRY <= now => Some(Due::Finalize),
            _ => None,
        }
    }

    /// When [`Spill::due`] will next say something (for the daemon's timer).
    pub fn wake_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { not_before } => Some(not_before),
            Phase::Requested { at } => Some(at + REQUEST_RETRY),
            Phase::AwaitingResult { since } => Some(since + REQUEST_RETRY),
            _ => None,
        }
    }

    /// The PUBACK of `finalize`: the result is the cloud's to send now.
    pub fn on_finalize_acked(&mut self, now: Instant) {
        if self.phase == Phase::Finalizing {
            self.phase = Phase::AwaitingResult { since: now };
        }
    }

    /// `upload_result` `failed`: upload again after a backoff (retryable), or block.
    pub fn on_result_failed(&mut self, retryable: bool, now: Instant) {
        if self.phase == Phase::Blocked {
            return;
        }
        if retryable {
            self.failures += 1;
            self.phase = Phase::Waiting {
                not_before: now + backoff(self.failures),
            };
        } else {
            self.phase = Phase::Blocked;
        }
    }

    /// A grant arrived: whether to start the PUT now.
    pub fn on_grant(&mut self, expired: bool, now: Instant) -> bool {
        match self.phase {
            Phase::Waiting { .. } | Phase::Requested { .. } if expired => {
                // Ask again right away (protocol §7).
                self.phase = Phase::Waiting { not_before: now };
                false
            }
            Phase::Waiting { .. } | Phase::Requested { .. } => {
                self.phase = Phase::Uploading;
                true
            }
            // A duplicate grant while uploading or after: the first one is being used.
            _ => false,
        }
    }

    pub fn on_put(&mut self, ok: bool, now: Instant) {
        if self.phase != Phase::Uploading {
            return;
        }
        if ok {
            self.phase = Phase::Uploaded;
        } else {
            self.failures += 1;
            self.phase = Phase::Waiting {
                not_before: now + backoff(self.failures),
            };
        }
    }

    /// A new MQTT session without the old one: requests and finalize handed before may be gone.
    pub fn on_session_lost(&mut self, now: Instant) {
        match self.phase {
            Phase::Requested { .. } => self.phase = Phase::Waiting { not_before: now },
            Phase::Finalizing => self.phase = Phase::Uploaded,
            _ => {}
        }
    }
}

/// What a spill needs published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Request,
    Finalize,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use edge_protocol::batch::Op;
    use edge_protocol::value::{Row, SqlValue};

    fn change(seq: i64, text: &str) -> RowChange {
        let mut pk = Row::new();
        pk.insert("id".into(), SqlValue::Integer(seq));
        let mut row = pk.clone();
        row.insert("v".into(), SqlValue::Text(text.into()));
        row.insert("b".into(), SqlValue::Blob(vec![0, 1, 2, 255]));
        RowChange {
            commit_seq: seq,
            op: Op::Insert,
            pk,
            row: Some(row),
        }
    }

    #[test]
    fn objects_round_trip_and_compress() {
        let rows = vec![change(1, &"x".repeat(300_000)), change(2, "line\nbreak")];
        let object = encode(&rows).unwrap();
        assert!(object.len() < 10_000, "{}", object.len());
        assert_eq!(decode(&object).unwrap(), rows);
        // One JSON object per line: a newline inside a value is escaped.
        let text = zstd::stream::decode_all(object.as_slice()).unwrap();
        assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 2);
    }

    #[test]
    fn expiry_is_judged_against_the_given_clock() {
        let now = edge_protocol::timestamp::parse("2026-04-28T09:00:00Z").unwrap();
        assert!(is_expired(Some("2026-04-28T08:59:59Z"), now));
        assert!(is_expired(Some("2026-04-28T09:00:00Z"), now));
        assert!(!is_expired(Some("2026-04-28T09:15:00Z"), now));
        assert!(!is_expired(None, now));
        assert!(!is_expired(Some("garbage"), now));
    }

    #[test]
    fn phases_retry_and_survive_lost_sessions() {
        let t0 = Instant::now();
        let mut s = Spill::new(Uuid::nil(), "t".into(), 5, t0);
        assert_eq!(s.due(t0), Some(Due::Request));
        s.phase = Phase::Requested { at: t0 };
        assert_eq!(s.due(t0), None);
        assert_eq!(s.due(t0 + REQUEST_RETRY), Some(Due::Request));
        // Expired grant: ask again.
        assert!(!s.on_grant(true, t0));
        assert_eq!(s.due(t0), Some(Due::Request));
        assert!(s.on_grant(false, t0));
        assert!(!s.on_grant(false, t0), "duplicate grant while uploading");
        s.on_put(false, t0);
        assert_eq!(s.due(t0), None, "backoff");
        assert_eq!(s.due(t0 + backoff(1)), Some(Due::Request));
        assert!(s.on_grant(false, t0));
        s.on_put(true, t0);
        assert_eq!(s.due(t0), Some(Due::Finalize));
        s.phase = Phase::Finalizing;
        s.on_session_lost(t0);
        assert_eq!(s.due(t0), Some(Due::Finalize));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn only_the_upload_result_ends_a_spill() {
        let t0 = Instant::now();
        let mut s = Spill::new(Uuid::nil(), "t".into(), 5, t0);
        s.phase = Phase::Finalizing;
        s.on_finalize_acked(t0);
        assert_eq!(s.phase, Phase::AwaitingResult { since: t0 });
        assert_eq!(s.due(t0), None, "waits for the result");
        assert_eq!(s.due(t0 + REQUEST_RETRY), Some(Due::Finalize), "asks again");
        s.on_result_failed(true, t0);
        assert_eq!(s.due(t0 + backoff(1)), Some(Due::Request), "uploads again");
        s.phase = Phase::AwaitingResult { since: t0 };
        s.on_result_failed(false, t0);
        assert_eq!(s.phase, Phase::Blocked);
        assert_eq!(
            s.due(t0 + MAX_BACKOFF * 10),
            None,
            "a blocked spill sends nothing"
        );
        assert!(check_line(&[b'x'; 10]).is_ok());
    }
}
