//! The streaming decode of a spill object (protocol §7): zstd JSON Lines on the blocking pool
//! → chunks of at most [`CHUNK_ROWS`] rows / [`CHUNK_BYTES`] bytes, handed over through a
//! channel of one, so the decoder waits while intake writes the previous chunk and memory
//! stays bounded whatever the object's size.

use std::io::{BufRead, BufReader, Read};

use edge_cloud_core::spill::{
    SpillCode, CHUNK_BYTES, CHUNK_ROWS, MAX_LINE_BYTES, MAX_OBJECT_BYTES,
};
use edge_protocol::batch::RowChange;
use edge_protocol::validate::decode_spill_line;

use crate::objects::SourceFailure;

/// A failure of the finalize that is recorded, not retried.
pub(super) struct Failed {
    pub(super) code: SpillCode,
    pub(super) message: String,
}

impl Failed {
    pub(super) fn new(code: SpillCode, message: impl Into<String>) -> Self {
        Failed {
            code,
            message: message.into(),
        }
    }
}

/// One bounded chunk of decoded rows.
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) rows: Vec<RowChange>,
    /// Compressed bytes read so far (for the ledger).
    pub(super) compressed_bytes: u64,
}

#[derive(Debug)]
pub(super) enum DecodeError {
    Failed(Failed),
    /// The store failed while streaming (retryable).
    Source(String),
}

impl std::fmt::Debug for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Counts what is read and stops at the object limit (a presigned S3 PUT does not bound it).
struct Counted<R> {
    inner: R,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
#[error("object over the 1 GiB limit")]
struct OverLimit;

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self
            .read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed)
            + n as u64;
        if total > MAX_OBJECT_BYTES {
            return Err(std::io::Error::other(OverLimit));
        }
        Ok(n)
    }
}

fn classify_io(e: &std::io::Error) -> DecodeError {
    let inner = e.get_ref();
    if let Some(s) = inner.and_then(|i| i.downcast_ref::<SourceFailure>()) {
        return DecodeError::Source(s.0.clone());
    }
    if inner.is_some_and(|i| i.is::<OverLimit>()) {
        return DecodeError::Failed(Failed::new(SpillCode::ObjectTooLarge, "over 1 GiB"));
    }
    DecodeError::Failed(Failed::new(SpillCode::ObjectCorrupt, format!("zstd: {e}")))
}

/// Decodes `body` (zstd JSON Lines) on the blocking pool into chunks; the channel holds one
/// chunk, so the decoder waits while intake writes the previous one.
pub(super) fn decode_stream(
    body: Box<dyn Read + Send>,
) -> tokio::sync::mpsc::Receiver<Result<Chunk, DecodeError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::task::spawn_blocking(move || {
        let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Counted {
            inner: body,
            read: read.clone(),
        };
        let decoder = match zstd::stream::read::Decoder::new(counted) {
            Ok(d) => d,
            Err(e) => {
                let _ = tx.blocking_send(Err(classify_io(&e)));
                return;
            }
        };
        let mut lines = BufReader::with_capacity(1 << 16, decoder);
        let mut rows = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut line_no = 0usize;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let limit = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX) + 1;
            let n = match (&mut lines).take(limit).read_until(b'\n', &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.blocking_send(Err(classify_io(&e)));
                    return;
                }
            };
            if n == 0 {
                break;
            }
            line_no += 1;
            if buf.len() > MAX_LINE_BYTES {
                let _ = tx.blocking_send(Err(DecodeError::Failed(Failed::new(
                    SpillCode::LineTooLong,
                    format!("line {line_no} is over {MAX_LINE_BYTES} bytes"),
                ))));
                return;
            }
            let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let row = match decode_spill_line(line_no, text) {
                Ok(r) => r,
                Err(r) => {
                    let _ = tx.blocking_send(Err(DecodeError::Failed(Failed::new(
                        SpillCode::InvalidLine,
                        format!("{}: {}", r.code, r.message),
                    ))));
                    return;
                }
            };
            if let Some(prev) = rows.last().map(|r: &RowChange| r.commit_seq) {
                if row.commit_seq <= prev {
                    let _ = tx.blocking_send(Err(DecodeError::Failed(Failed::new(
                        SpillCode::OutOfOrder,
                        format!(
                            "line {line_no}: commit_seq {} does not follow {prev}",
                            row.commit_seq
                        ),
                    ))));
                    return;
                }
            }
            chunk_bytes += text.len();
            rows.push(row);
            if rows.len() >= CHUNK_ROWS || chunk_bytes >= CHUNK_BYTES {
                let chunk = Chunk {
                    rows: std::mem::take(&mut rows),
                    compressed_bytes: read.load(std::sync::atomic::Ordering::Relaxed),
                };
                chunk_bytes = 0;
                if tx.blocking_send(Ok(chunk)).is_err() {
                    // The finalize gave up (its transaction failed): stop decoding.
                    return;
                }
            }
        }
        if !rows.is_empty() {
            let _ = tx.blocking_send(Ok(Chunk {
                rows,
                compressed_bytes: read.load(std::sync::atomic::Ordering::Relaxed),
            }));
        }
    });
    rx
}
