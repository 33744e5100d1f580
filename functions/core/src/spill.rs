//! Spill / snapshot uploads (protocol §7): the decisions, without I/O.
//!
//! ```text
//!  url_request ──► header known? ──no──► no grant (spill_schema_unknown / spill_epoch_unknown);
//!       │                                 the device asks again after 30 s
//!       └─yes──► record (first request fixes the header) ──► url_grant (URL valid 15 min)
//!  PUT ──► object store (S3 presigned, or the runner's HMAC-signed local URL)
//!  finalize ──► ledger kind `spill` (dedup on batch_id) ──► rows in bounded chunks through
//!               the row-batch intake ──► finalized │ failed (named code; a new url_request
//!               for the same batch may try again)
//! ```
//!
//! Why the header is decided here: the object's lines are bare row-batch rows, and a
//! `url_request` from today's agent carries no journal epoch or schema hash. The device
//! publishes the table's schema observation (and the batches before the spilled change) ahead
//! of the request, so at request time the lineage's current hash and the device's newest epoch
//! are the spilled change's. Values the request carries win over the inference; values
//! recorded at the first request win over later ones, so every grant and the finalize agree.
//!
//! Upload tokens (the local object store): `HMAC-SHA256(SHA-256(secret), "PUT\n{key}\n{expires}")` in
//! the URL, checked in constant time, so the local URL is as unforgeable and as expiring as an
//! S3 presigned one.

use edge_protocol::control::{IngestRequest, SegmentKind};
use hmac::digest::{Key, KeyInit};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// How long a granted upload URL is valid (protocol §7).
pub const URL_TTL_SECONDS: i64 = 15 * 60;
/// Largest object accepted (protocol §7: max 1 GiB).
pub const MAX_OBJECT_BYTES: u64 = 1 << 30;
/// Largest single line (one row) after decompression: the device checks the same number before
/// it uploads (one constant, [`edge_protocol::limits::SPILL_MAX_LINE_BYTES`]).
pub const MAX_LINE_BYTES: usize = edge_protocol::limits::SPILL_MAX_LINE_BYTES;
/// Open uploads (requested or granted, not yet finalized) one device may hold at once
/// (reliability §7); a `url_request` beyond it gets no grant (`spill_too_many_open_uploads`)
/// and the device asks again later.
pub const MAX_OPEN_UPLOADS_PER_DEVICE: i64 = 16;
/// A chunk of rows goes through intake once it holds this many rows...
pub const CHUNK_ROWS: usize = 4_096;
/// ...or this many bytes of line text, whichever comes first (a single larger line is a chunk
/// of its own). Bounds the memory of a finalize whatever the object's size.
pub const CHUNK_BYTES: usize = 8 << 20;

/// Named outcomes of the upload flow that are not a row-batch rejection code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpillCode {
    /// This deployment has no object store configured: nothing is granted.
    NotConfigured,
    /// No schema hash known for the table yet (no observation or batch arrived): no grant now.
    SchemaUnknown,
    /// No journal epoch known for the device yet: no grant now.
    EpochUnknown,
    /// `finalize` for a batch that was never requested.
    NotRequested,
    /// `finalize` names another table or segment kind than the request did.
    RequestMismatch,
    /// The object is not in the store.
    ObjectMissing,
    /// The object is over [`MAX_OBJECT_BYTES`].
    ObjectTooLarge,
    /// The object is not a zstd stream (or is truncated).
    ObjectCorrupt,
    /// A line is over [`MAX_LINE_BYTES`].
    LineTooLong,
    /// A line is not a valid row (the message names the line and the row rule).
    InvalidLine,
    /// The object holds no row.
    ObjectEmpty,
    /// Rows are not in strictly increasing `commit_seq` order.
    OutOfOrder,
    /// The object store could not be read (a transient error): upload again.
    StoreUnavailable,
    /// The device already holds [`MAX_OPEN_UPLOADS_PER_DEVICE`] open uploads: no grant now.
    TooManyOpenUploads,
}

impl SpillCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            SpillCode::NotConfigured => "spill_not_configured",
            SpillCode::SchemaUnknown => "spill_schema_unknown",
            SpillCode::EpochUnknown => "spill_epoch_unknown",
            SpillCode::NotRequested => "spill_not_requested",
            SpillCode::RequestMismatch => "spill_request_mismatch",
            SpillCode::ObjectMissing => "spill_object_missing",
            SpillCode::ObjectTooLarge => "spill_object_too_large",
            SpillCode::ObjectCorrupt => "spill_object_corrupt",
            SpillCode::LineTooLong => "spill_line_too_long",
            SpillCode::InvalidLine => "spill_invalid_line",
            SpillCode::ObjectEmpty => "spill_object_empty",
            SpillCode::OutOfOrder => "spill_out_of_order",
            SpillCode::StoreUnavailable => "spill_store_unavailable",
            SpillCode::TooManyOpenUploads => "spill_too_many_open_uploads",
        }
    }

    /// Whether a `finalize` failing with this code can succeed after the device uploads the
    /// same batch again (`upload_result`'s `retryable`, reliability §2): the object missing,
    /// cut short or unreadable for now — yes; a line the cloud will never take — no (the
    /// device blocks the table and an operator decides).
    pub fn retryable(&self) -> bool {
        match self {
            SpillCode::ObjectMissing
            | SpillCode::ObjectCorrupt
            | SpillCode::ObjectEmpty
            | SpillCode::StoreUnavailable
            | SpillCode::NotRequested
            | SpillCode::SchemaUnknown
            | SpillCode::EpochUnknown
            | SpillCode::TooManyOpenUploads => true,
            SpillCode::NotConfigured
            | SpillCode::RequestMismatch
            | SpillCode::ObjectTooLarge
            | SpillCode::LineTooLong
            | SpillCode::InvalidLine
            | SpillCode::OutOfOrder => false,
        }
    }
}

impl std::fmt::Display for SpillCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The object key of an upload: one per (device, batch), so a re-request overwrites the same
/// object and a device can only ever write its own keys (the key is the cloud's choice).
pub fn object_key(device_id: Uuid, batch_id: Uuid) -> String {
    format!("spill/{device_id}/{batch_id}.jsonl.zst")
}

/// The batch header the rows of an object are processed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub journal_epoch: Uuid,
    pub schema_hash: String,
}

/// What the cloud knows when a request arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// Fixed at an earlier request of the same batch.
    pub recorded_epoch: Option<Uuid>,
    pub recorded_hash: Option<String>,
    /// The device's newest journal epoch among its lineages' watermarks.
    pub newest_epoch: Option<Uuid>,
    /// The table's lineage's current schema hash (last batch or observation).
    pub current_hash: Option<String>,
}

/// The header for `req`: recorded values first (every grant and the finalize must agree),
/// then what the request carries, then the inference.
pub fn resolve_header(req: &IngestRequest, known: &Known) -> Result<Header, SpillCode> {
    let journal_epoch = known
        .recorded_epoch
        .or(req.journal_epoch)
        .or(known.newest_epoch)
        .ok_or(SpillCode::EpochUnknown)?;
    let schema_hash = known
        .recorded_hash
        .clone()
        .or_else(|| req.schema_hash.clone())
        .or_else(|| known.current_hash.clone())
        .ok_or(SpillCode::SchemaUnknown)?;
    Ok(Header {
        journal_epoch,
        schema_hash,
    })
}

/// A finalize is processed only for a batch that was requested with the same table and kind.
pub fn check_finalize(
    req: &IngestRequest,
    recorded: Option<(&str, SegmentKind)>,
) -> Result<(), SpillCode> {
    match recorded {
        None => Err(SpillCode::NotRequested),
        Some((table, kind)) if table == req.source_table && kind == req.segment_kind => Ok(()),
        Some(_) => Err(SpillCode::RequestMismatch),
    }
}

/// Why an upload token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("upload URL expired")]
    Expired,
    #[error("upload URL signature does not verify")]
    Forged,
}

type HmacSha256 = Hmac<Sha256>;

fn token_mac(secret: &[u8], key: &str, expires_unix: i64, length: Option<u64>) -> HmacSha256 {
    // Keyed by SHA-256(secret) in a zero-padded block: any secret length works and the
    // infallible constructor needs no invented error path.
    let mut block = Key::<HmacSha256>::default();
    let digest = Sha256::digest(secret);
    block[..digest.len()].copy_from_slice(&digest);
    let mut mac = <HmacSha256 as KeyInit>::new(&block);
    mac.update(b"PUT\n");
    mac.update(key.as_bytes());
    mac.update(b"\n");
    mac.update(expires_unix.to_string().as_bytes());
    if let Some(n) = length {
        // The length is signed like S3 signs `content-length`: a URL for N bytes takes N only.
        mac.update(b"\nlength=");
        mac.update(n.to_string().as_bytes());
    }
    mac
}

/// Hex signature of an upload of `key` valid until `expires_unix`, for exactly `length` bytes
/// when given.
pub fn sign_upload(secret: &[u8], key: &str, expires_unix: i64, length: Option<u64>) -> String {
    hex::encode(
        token_mac(secret, key, expires_unix, length)
            .finalize()
            .into_bytes(),
    )
}

/// Checks an upload token at `now_unix`: a forged signature is reported before expiry, so a
/// guessed URL learns nothing about which keys exist. `length` is the URL's signed length.
pub fn verify_upload(
    secret: &[u8],
    key: &str,
    expires_unix: i64,
    length: Option<u64>,
    signature_hex: &str,
    now_unix: i64,
) -> Result<(), TokenError> {
    let given = hex::decode(signature_hex).map_err(|_| TokenError::Forged)?;
    token_mac(secret, key, expires_unix, length)
        .verify_slice(&given)
        .map_err(|_| TokenError::Forged)?;
    if now_unix >= expires_unix {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// Whether an object key is one this module makes (`spill/<uuid>/<uuid>.jsonl.zst`): the local
/// store refuses anything else before touching the file system.
pub fn is_object_key(key: &str) -> bool {
    let mut parts = key.split('/');
    let (Some("spill"), Some(device), Some(file), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some(batch) = file.strip_suffix(".jsonl.zst") else {
        return false;
    };
    Uuid::try_parse(device).is_ok_and(|u| u.hyphenated().to_string() == device)
        && Uuid::try_parse(batch).is_ok_and(|u| u.hyphenated().to_string() == batch)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use edge_protocol::control::RequestKind;
    use edge_protocol::ids::new_uuid_v7;

    fn req() -> IngestRequest {
        IngestRequest::new(
            RequestKind::UrlRequest,
            "t",
            SegmentKind::PayloadSpill,
            new_uuid_v7(1_777_366_800_000, [1; 10]),
        )
    }

    #[test]
    fn header_prefers_recorded_then_request_then_inference() {
        let e1 = new_uuid_v7(1, [1; 10]);
        let e2 = new_uuid_v7(2, [2; 10]);
        let e3 = new_uuid_v7(3, [3; 10]);
        let mut r = req();
        assert_eq!(
            resolve_header(&r, &Known::default()),
            Err(SpillCode::EpochUnknown)
        );
        let inferred = Known {
            newest_epoch: Some(e1),
            ..Known::default()
        };
        assert_eq!(resolve_header(&r, &inferred), Err(SpillCode::SchemaUnknown));
        let inferred = Known {
            newest_epoch: Some(e1),
            current_hash: Some("h1".into()),
            ..Known::default()
        };
        assert_eq!(
            resolve_header(&r, &inferred).unwrap(),
            Header {
                journal_epoch: e1,
                schema_hash: "h1".into()
            }
        );
        r.journal_epoch = Some(e2);
        r.schema_hash = Some("h2".into());
        assert_eq!(resolve_header(&r, &inferred).unwrap().journal_epoch, e2);
        let recorded = Known {
            recorded_epoch: Some(e3),
            recorded_hash: Some("h3".into()),
            ..inferred
        };
        assert_eq!(
            resolve_header(&r, &recorded).unwrap(),
            Header {
                journal_epoch: e3,
                schema_hash: "h3".into()
            }
        );
    }

    #[test]
    fn finalize_must_match_its_request() {
        let r = req();
        assert_eq!(check_finalize(&r, None), Err(SpillCode::NotRequested));
        assert_eq!(
            check_finalize(&r, Some(("t", SegmentKind::PayloadSpill))),
            Ok(())
        );
        assert_eq!(
            check_finalize(&r, Some(("u", SegmentKind::PayloadSpill))),
            Err(SpillCode::RequestMismatch)
        );
        assert_eq!(
            check_finalize(&r, Some(("t", SegmentKind::BootstrapSnapshot))),
            Err(SpillCode::RequestMismatch)
        );
    }

    #[test]
    fn upload_tokens_expire_and_cannot_be_forged() {
        let key = object_key(Uuid::nil(), new_uuid_v7(5, [5; 10]));
        assert!(is_object_key(&key));
        let sig = sign_upload(b"secret", &key, 1_000, None);
        assert_eq!(
            verify_upload(b"secret", &key, 1_000, None, &sig, 999),
            Ok(())
        );
        assert_eq!(
            verify_upload(b"secret", &key, 1_000, None, &sig, 1_000),
            Err(TokenError::Expired)
        );
        // A later expiry with the old signature, another key, another secret, junk.
        assert_eq!(
            verify_upload(b"secret", &key, 2_000, None, &sig, 999),
            Err(TokenError::Forged)
        );
        let other = object_key(Uuid::nil(), new_uuid_v7(6, [6; 10]));
        assert_eq!(
            verify_upload(b"secret", &other, 1_000, None, &sig, 999),
            Err(TokenError::Forged)
        );
        assert_eq!(
            verify_upload(b"other", &key, 1_000, None, &sig, 999),
            Err(TokenError::Forged)
        );
        assert_eq!(
            verify_upload(b"secret", &key, 1_000, None, "zz", 999),
            Err(TokenError::Forged)
        );
        // A length-bound URL: the length is part of what is signed; dropping or changing it
        // does not verify, and an unbound signature does not verify with a length added.
        let bound = sign_upload(b"secret", &key, 1_000, Some(4096));
        assert_eq!(
            verify_upload(b"secret", &key, 1_000, Some(4096), &bound, 999),
            Ok(())
        );
        for length in [None, Some(4097), Some(0)] {
            assert_eq!(
                verify_upload(b"secret", &key, 1_000, length, &bound, 999),
                Err(TokenError::Forged)
            );
        }
        assert_eq!(
            verify_upload(b"secret", &key, 1_000, Some(4096), &sig, 999),
            Err(TokenError::Forged)
        );
    }

    #[test]
    fn only_our_keys_are_object_keys() {
        for bad in [
            "",
            "spill/x/y.jsonl.zst",
            "spill/../etc/passwd",
            "other/00000000-0000-0000-0000-000000000000/00000000-0000-0000-0000-000000000000.jsonl.zst",
            "spill/00000000-0000-0000-0000-000000000000/00000000-0000-0000-0000-000000000000.jsonl.zst/x",
            "spill/00000000-0000-0000-0000-000000000000/00000000-0000-0000-0000-000000000000",
            "spill/00000000000000000000000000000000/00000000-0000-0000-0000-000000000000.jsonl.zst",
        ] {
            assert!(!is_object_key(bad), "{bad}");
        }
        assert_eq!(SpillCode::ObjectCorrupt.to_string(), "spill_object_corrupt");
    }
}
