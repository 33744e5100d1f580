//! The rejection codes of spec §9 and the [`Rejection`] every decoder returns, with the
//! constructors the checks share.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::value::ValueError;

/// Batch-level rejection codes (spec §9). Serialized as the snake_case code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionCode {
    EnvelopeUnstrippedTenantFields,
    InvalidFormatVersion,
    UnsupportedFormatVersion,
    InvalidBatchId,
    BatchTooManyRows,
    RowCountMismatch,
    CursorTimestampMismatch,
    InvalidRowId,
    InvalidNumberEncoding,
    DuplicateBatchSeq,
    StaleBatchSeq,
    MalformedJson,
    PayloadTooLarge,
    InvalidSchemaHash,
    InvalidRow,
    UnknownDevice,
    InvalidIdentifier,
    /// A row batch's snapshot fields do not form a chunk or an end marker (edge-policies §5).
    InvalidSnapshot,
}

impl RejectionCode {
    /// Every code, in spec order.
    pub const ALL: [RejectionCode; 18] = [
        RejectionCode::EnvelopeUnstrippedTenantFields,
        RejectionCode::InvalidFormatVersion,
        RejectionCode::UnsupportedFormatVersion,
        RejectionCode::InvalidBatchId,
        RejectionCode::BatchTooManyRows,
        RejectionCode::RowCountMismatch,
        RejectionCode::CursorTimestampMismatch,
        RejectionCode::InvalidRowId,
        RejectionCode::InvalidNumberEncoding,
        RejectionCode::DuplicateBatchSeq,
        RejectionCode::StaleBatchSeq,
        RejectionCode::MalformedJson,
        RejectionCode::PayloadTooLarge,
        RejectionCode::InvalidSchemaHash,
        RejectionCode::InvalidRow,
        RejectionCode::UnknownDevice,
        RejectionCode::InvalidIdentifier,
        RejectionCode::InvalidSnapshot,
    ];

    /// The exact code string of spec §9.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectionCode::EnvelopeUnstrippedTenantFields => "envelope_unstripped_tenant_fields",
            RejectionCode::InvalidFormatVersion => "invalid_format_version",
            RejectionCode::UnsupportedFormatVersion => "unsupported_format_version",
            RejectionCode::InvalidBatchId => "invalid_batch_id",
            RejectionCode::BatchTooManyRows => "batch_too_many_rows",
            RejectionCode::RowCountMismatch => "row_count_mismatch",
            RejectionCode::CursorTimestampMismatch => "cursor_timestamp_mismatch",
            RejectionCode::InvalidRowId => "invalid_row_id",
            RejectionCode::InvalidNumberEncoding => "invalid_number_encoding",
            RejectionCode::DuplicateBatchSeq => "duplicate_batch_seq",
            RejectionCode::StaleBatchSeq => "stale_batch_seq",
            RejectionCode::MalformedJson => "malformed_json",
            RejectionCode::PayloadTooLarge => "payload_too_large",
            RejectionCode::InvalidSchemaHash => "invalid_schema_hash",
            RejectionCode::InvalidRow => "invalid_row",
            RejectionCode::UnknownDevice => "unknown_device",
            RejectionCode::InvalidIdentifier => "invalid_identifier",
            RejectionCode::InvalidSnapshot => "invalid_snapshot",
        }
    }
}

impl fmt::Display for RejectionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the §9 codes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown rejection code {0:?}")]
pub struct UnknownRejectionCode(pub String);

impl FromStr for RejectionCode {
    type Err = UnknownRejectionCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RejectionCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownRejectionCode(s.to_owned()))
    }
}

/// Why a payload was rejected: the code goes to the segment ledger, the message to logs.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: RejectionCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: RejectionCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }

    /// The session identity has no device-registry entry (decided by the cloud, not by payload).
    pub fn unknown_device(device_name: &str) -> Self {
        Rejection::new(
            RejectionCode::UnknownDevice,
            format!("no registry entry for device {device_name:?}"),
        )
    }
}

pub(super) fn reject(code: RejectionCode, message: impl Into<String>) -> Rejection {
    Rejection::new(code, message)
}

pub(super) fn malformed(message: impl Into<String>) -> Rejection {
    reject(RejectionCode::MalformedJson, message)
}

pub(super) fn value_rejection(at: String, e: ValueError) -> Rejection {
    let code = if e.is_number_encoding() {
        RejectionCode::InvalidNumberEncoding
    } else {
        RejectionCode::InvalidRow
    };
    reject(code, format!("{at}: {e}"))
}

pub(super) fn invalid_row(message: impl Into<String>) -> Rejection {
    reject(RejectionCode::InvalidRow, message)
}

/// `invalid_identifier` (reliability.md §7) when `name` — a table name, a column name, a key
/// of a row object — contains NUL: no PostgreSQL identifier or text can hold it, so the batch
/// is refused by name (and ledgered) instead of failing later as a dead letter.
pub(super) fn check_identifier(at: &str, name: &str) -> Result<(), Rejection> {
    if name.contains('\0') {
        return Err(reject(
            RejectionCode::InvalidIdentifier,
            format!("{at} {:?} contains NUL", name.replace('\0', "\\0")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn codes_round_trip_through_str_serde_and_display() {
        for code in RejectionCode::ALL {
            let s = code.as_str();
            assert_eq!(s.parse::<RejectionCode>().unwrap(), code);
            assert_eq!(code.to_string(), s);
            assert_eq!(serde_json::to_value(code).unwrap(), Value::from(s));
            assert_eq!(
                serde_json::from_value::<RejectionCode>(Value::from(s)).unwrap(),
                code
            );
        }
        let spec =
            "envelope_unstripped_tenant_fields invalid_format_version unsupported_format_version \
            invalid_batch_id batch_too_many_rows row_count_mismatch cursor_timestamp_mismatch \
            invalid_row_id invalid_number_encoding duplicate_batch_seq stale_batch_seq \
            malformed_json payload_too_large invalid_schema_hash invalid_row unknown_device \
            invalid_identifier invalid_snapshot";
        let listed: Vec<&str> = RejectionCode::ALL
            .iter()
            .map(RejectionCode::as_str)
            .collect();
        assert_eq!(listed, spec.split_whitespace().collect::<Vec<_>>());
        assert!("nope".parse::<RejectionCode>().is_err());
    }

    #[test]
    fn unknown_device_constructor() {
        let r = Rejection::unknown_device("gw-99");
        assert_eq!(r.code, RejectionCode::UnknownDevice);
        assert_eq!(r.code.as_str(), "unknown_device");
        assert!(r.to_string().starts_with("unknown_device: "));
    }
}
