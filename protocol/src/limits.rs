//! Limits of the protocol and of the AWS IoT Core deployment (spec §2, §7).

/// Maximum number of rows in one row or telemetry batch (`batch_too_many_rows`).
pub const MAX_ROWS_PER_BATCH: usize = 4096;

/// Largest payload the protocol accepts (`payload_too_large` above it).
pub const PROTOCOL_MAX_PAYLOAD_BYTES: usize = 512 * 1024;

/// AWS IoT Core drops messages above this size, so the agent splits batches to stay under it
/// (its `max_payload_bytes` default).
pub const IOT_CORE_MAX_PAYLOAD_BYTES: usize = 128 * 1024;

/// Largest spill / snapshot object uploaded through a presigned URL (§7).
pub const SPILL_MAX_BYTES: u64 = 1 << 30;

/// Largest single spilled row: one line of a spill object, after decompression (reliability
/// §2). The cloud refuses a longer line (`spill_line_too_long`, not retryable); the device
/// checks the same number before it uploads (`spill_row_too_large`: the table is blocked, the
/// row stays in the journal), so such a row is never uploaded only to be refused.
pub const SPILL_MAX_LINE_BYTES: usize = 64 << 20;

/// The only `format_version` this crate speaks.
pub const FORMAT_VERSION: u32 = 1;

/// Longest accepted telemetry `row_id`, in characters (see [`crate::telemetry::is_valid_row_id`]).
pub const MAX_ROW_ID_CHARS: usize = 128;

/// How long a presigned upload URL stays valid (§7).
pub const PRESIGNED_URL_VALIDITY_SECS: u64 = 15 * 60;
