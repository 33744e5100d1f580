//! Spill / snapshot uploads, the cloud half (protocol §7): `url_request` → signed `url_grant`
//! control with a URL valid 15 minutes; `finalize` → the object's rows through the very same
//! row-batch intake as a batch on `sync/rows/batch`.
//!
//! The decisions are in [`edge_cloud_core::spill`], the tables in [`edge_cloud_store::spill`];
//! this module moves bytes: the object store behind [`ObjectStore`] (S3 in AWS, a directory
//! behind the local runner's HTTP PUT endpoint locally) and the streaming decode.
//!
//! Finalize runs in one transaction: the ledger row (kind `spill`, dedup on batch_id) first,
//! then the object read as a stream — zstd decoded and split into lines on a blocking thread,
//! handed over in chunks of at most [`CHUNK_ROWS`] rows / [`CHUNK_BYTES`] bytes through a
//! channel of one — so memory stays bounded whatever the object's size, and a bad line
//! anywhere rolls everything back. The failure is then recorded on the upload in a transaction
//! of its own with its named code; a later `url_request` for the same batch can try again.
//!
//! # Layout
//! - [`local`] — the directory store with HMAC-signed expiring URLs, and its HTTP PUT endpoint

pub mod local;

use std::future::Future;
use std::io::{BufRead, BufReader, Read};

use edge_cloud_core::ingress::Admitted;
use edge_cloud_core::intake::ledger_time_ms;
use edge_cloud_core::spill::{
    check_finalize, object_key, resolve_header, Header, Known, SpillCode, CHUNK_BYTES, CHUNK_ROWS,
    MAX_LINE_BYTES, MAX_OBJECT_BYTES, URL_TTL_SECONDS,
};
use edge_cloud_store::ledger::{insert_segment, Segment};
use edge_cloud_store::registry::{device_by_name, Device};
use edge_cloud_store::spill::{
    issue_url_grant, known_header, lock_upload, record_finalize, record_request,
    reuse_pending_grant, FinalizeOutcome, Grant,
};
use edge_cloud_store::StoreError;
use edge_protocol::batch::{RowBatch, RowChange};
use edge_protocol::control::{IngestRequest, RequestKind};
use edge_protocol::validate::{decode_ingest_request, decode_spill_line, Rejection};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ingest::{self, Outcome};
use crate::{Deps, HandlerError};

/// A pending grant is re-sent instead of minting a new URL only while its URL has at least
/// this long left: enough for the device to receive it and finish the PUT.
pub const REUSE_MIN_VALIDITY_SECONDS: i64 = 5 * 60;

/// An object store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The store could not be reached or answered with an error: retrying may help.
    #[error("object store: {0}")]
    Unavailable(String),
    /// The store is misconfigured (no credentials, bad bucket name, ...).
    #[error("object store configuration: {0}")]
    Config(String),
}

impl ObjectError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ObjectError::Unavailable(_))
    }
}

/// An object opened for reading: a blocking reader (the decode runs on the blocking pool).
pub struct ObjectReader {
    /// Size in bytes when the store says.
    pub size: Option<u64>,
    pub body: Box<dyn Read + Send>,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Where upload objects live. One trait, two real backends: [`crate::aws::s3::S3Objects`] and
/// [`local::LocalObjects`].
pub trait ObjectStore: Send + Sync {
    /// A URL the device can HTTP PUT the object `key` to until `expires_at`.
    fn presign_put(
        &self,
        key: &str,
        expires_at: OffsetDateTime,
    ) -> impl Future<Output = Result<String, ObjectError>> + Send;

    /// Drops an object whose rows are committed (best effort; a store may leave it to its
    /// own expiry).
    fn discard(&self, key: &str) -> impl Future<Output = Result<(), ObjectError>> + Send;

    /// The object, or `None` when there is none under `key`.
    fn open(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<ObjectReader>, ObjectError>> + Send;
}

/// The configured backend (an enum rather than a trait object: the trait's methods are
/// `async`, and there are exactly two).
#[derive(Debug)]
pub enum Objects {
    Local(local::LocalObjects),
    S3(crate::aws::s3::S3Objects),
}

impl ObjectStore for Objects {
    async fn presign_put(
        &self,
        key: &str,
        expires_at: OffsetDateTime,
    ) -> Result<String, ObjectError> {
        match self {
            Objects::Local(o) => o.presign_put(key, expires_at).await,
            Objects::S3(o) => o.presign_put(key, expires_at).await,
        }
    }

    async fn discard(&self, key: &str) -> Result<(), ObjectError> {
        match self {
            Objects::Local(o) => o.discard(key).await,
            Objects::S3(o) => o.discard(key).await,
        }
    }

    async fn open(&self, key: &str) -> Result<Option<ObjectReader>, ObjectError> {
        match self {
            Objects::Local(o) => o.open(key).await,
            Objects::S3(o) => o.open(key).await,
        }
    }
}

/// An envelope on `sync/ingest/request`: `url_request` or `finalize`.
pub async fn intake_request(deps: &Deps, a: &Admitted) -> Result<Outcome, HandlerError> {
    let mut client = deps.pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let Some(device) = device_by_name(&*tx, a.device_name()).await? else {
        let o = ingest::reject(&tx, a, None, Rejection::unknown_device(a.device_name())).await?;
        tx.commit().await.map_err(StoreError::from)?;
        return Ok(o);
    };
    let req = match decode_ingest_request(&a.payload) {
        Ok(r) => r,
        Err(rejection) => {
            let o = ingest::reject(&tx, a, Some(&device), rejection).await?;
            tx.commit().await.map_err(StoreError::from)?;
            log(&device, None, &o);
            return Ok(o);
        }
    };
    let outcome = match req.request_kind {
        RequestKind::UrlRequest => {
            let o = grant(deps, &tx, &device, &req).await?;
            tx.commit().await.map_err(StoreError::from)?;
            o
        }
        RequestKind::Finalize => {
            drop(tx);
            drop(client);
            finalize(deps, a, &device, &req).await?
        }
    };
    log(&device, Some(&req), &outcome);
    Ok(outcome)
}

fn log(device: &Device, req: Option<&IngestRequest>, outcome: &Outcome) {
    let device = device.device_name.as_str();
    let kind = req.map(|r| r.request_kind.as_str());
    let batch_id = req.map(|r| r.batch_id.to_string());
    match outcome {
        Outcome::UploadNotGranted { code, .. } | Outcome::SpillFailed { code, .. } => {
            tracing::warn!(device, kind, batch_id, code = %code, ?outcome, "upload request not served");
        }
        Outcome::Rejected { code, message } => {
            tracing::warn!(device, kind, code = %code, message, "upload request rejected");
        }
        other => tracing::info!(device, kind, batch_id, outcome = ?other, "upload request handled"),
    }
}

/// `url_request`: resolve the header, record the upload, issue a signed grant.
async fn grant(
    deps: &Deps,
    tx: &edge_cloud_store::tokio_postgres::Transaction<'_>,
    device: &Device,
    req: &IngestRequest,
) -> Result<Outcome, HandlerError> {
    let Some(objects) = deps.objects.as_deref() else {
        return Ok(Outcome::UploadNotGranted {
            batch_id: req.batch_id,
            code: SpillCode::NotConfigured,
        });
    };
    let existing = lock_upload(tx, device.device_id, req.batch_id).await?;
    if existing.as_ref().is_some_and(|u| u.status == "finalized") {
        // A late duplicate request after the finalize: the rows are in; nothing to upload.
        return Ok(Outcome::Duplicate {
            batch_id: req.batch_id,
        });
    }
    let (newest_epoch, current_hash) =
        known_header(tx, device.device_id, &req.source_table).await?;
    let known = Known {
        recorded_epoch: existing.as_ref().and_then(|u| u.journal_epoch),
        recorded_hash: existing.as_ref().and_then(|u| u.schema_hash.clone()),
        newest_epoch,
        current_hash,
    };
    let key = object_key(device.device_id, req.batch_id);
    let header = match resolve_header(req, &known) {
        Ok(h) => h,
        Err(code) => {
            // Recorded without a header: the device asks again in 30 s, by when the
            // observation or batches that tell will have arrived.
            record_request(tx, device.device_id, req, &key, None).await?;
            return Ok(Outcome::UploadNotGranted {
                batch_id: req.batch_id,
                code,
            });
        }
    };
    record_request(tx, device.device_id, req, &key, Some(&header)).await?;
    let now = OffsetDateTime::now_utc();
    let still_useful = now + time::Duration::seconds(REUSE_MIN_VALIDITY_SECONDS);
    if let Some(control_id) =
        reuse_pending_grant(tx, device.device_id, req.batch_id, still_useful).await?
    {
        return Ok(Outcome::UploadGranted {
            batch_id: req.batch_id,
            control_id,
        });
    }
    let expires_at = now + time::Duration::seconds(URL_TTL_SECONDS);
    let url = objects
        .presign_put(&key, expires_at)
        .await
        .map_err(HandlerError::Object)?;
    let issued = issue_url_grant(
        tx,
        device,
        &Grant {
            source_table: &req.source_table,
            batch_id: req.batch_id,
            segment_kind: req.segment_kind,
            url: &url,
            expires_at,
        },
        now,
        Uuid::now_v7(),
    )
    .await?;
    Ok(Outcome::UploadGranted {
        batch_id: req.batch_id,
        control_id: issued.control_id,
    })
}

/// After the commit the rows live in PostgreSQL; the object is only clutter (a duplicate
/// finalize never reads it: the ledger answers first). A failure is logged, nothing else.
async fn discard(deps: &Deps, device: &Device, req: &IngestRequest) {
    let Some(objects) = deps.objects.as_deref() else {
        return;
    };
    let key = object_key(device.device_id, req.batch_id);
    if let Err(e) = objects.discard(&key).await {
        tracing::warn!(%key, error = %e, "finalized spill object could not be removed");
    }
}

/// A failure of the finalize that is recorded, not retried.
struct Failed {
    code: SpillCode,
    message: String,
}

impl Failed {
    fn new(code: SpillCode, message: impl Into<String>) -> Self {
        Failed {
            code,
            message: message.into(),
        }
    }
}

/// Why the processing transaction did not commit.
enum Abort {
    Failed(Failed),
    Handler(HandlerError),
}

impl From<HandlerError> for Abort {
    fn from(e: HandlerError) -> Self {
        Abort::Handler(e)
    }
}

impl From<StoreError> for Abort {
    fn from(e: StoreError) -> Self {
        Abort::Handler(HandlerError::Store(e))
    }
}

/// `finalize`: the object's rows through the row intake, in one transaction.
async fn finalize(
    deps: &Deps,
    a: &Admitted,
    device: &Device,
    req: &IngestRequest,
) -> Result<Outcome, HandlerError> {
    let mut client = deps.pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    match process(deps, &tx, a, device, req).await {
        Ok(outcome) => {
            tx.commit().await.map_err(StoreError::from)?;
            if matches!(outcome, Outcome::Accepted { .. }) {
                discard(deps, device, req).await;
            }
            Ok(outcome)
        }
        Err(Abort::Handler(e)) => Err(e),
        Err(Abort::Failed(f)) => {
            // Nothing of the object stays: the ledger row goes too, so a retry is not a
            // "duplicate". Only the outcome is recorded, on the upload.
            tx.rollback().await.map_err(StoreError::from)?;
            let tx = client.transaction().await.map_err(StoreError::from)?;
            record_finalize(
                &*tx,
                device.device_id,
                req.batch_id,
                &FinalizeOutcome {
                    status: "failed",
                    code: Some(f.code.as_str()),
                    detail: Some(&f.message),
                    object_bytes: None,
                    row_count: None,
                },
            )
            .await?;
            tx.commit().await.map_err(StoreError::from)?;
            Ok(Outcome::SpillFailed {
                batch_id: req.batch_id,
                code: f.code,
                message: f.message,
            })
        }
    }
}

async fn process(
    deps: &Deps,
    tx: &edge_cloud_store::tokio_postgres::Transaction<'_>,
    a: &Admitted,
    device: &Device,
    req: &IngestRequest,
) -> Result<Outcome, Abort> {
    let upload = lock_upload(tx, device.device_id, req.batch_id).await?;
    check_finalize(
        req,
        upload
            .as_ref()
            .map(|u| (u.source_table.as_str(), u.segment_kind)),
    )
    .map_err(|code| {
        Abort::Failed(Failed::new(
            code,
            format!("finalize of batch {}", req.batch_id),
        ))
    })?;
    let Some(upload) = upload else {
        return Err(Abort::Failed(Failed::new(
            SpillCode::NotRequested,
            "no upload",
        )));
    };
    let header = match (&upload.journal_epoch, &upload.schema_hash) {
        (Some(e), Some(h)) => Header {
            journal_epoch: *e,
            schema_hash: h.clone(),
        },
        // Granted uploads always have a header; this is a finalize without a grant.
        _ => {
            return Err(Abort::Failed(Failed::new(
                SpillCode::NotRequested,
                "finalize of an upload that was never granted",
            )))
        }
    };
    let batch_time = ingest::time_from_ms(ledger_time_ms(&req.batch_id));
    let segment = Segment {
        device_id: device.device_id,
        batch_id: req.batch_id,
        batch_time,
        raw_batch_id: None,
        received_at: ingest::time_from_ms(a.received_at_ms),
        device_name: device.device_name.clone(),
        org_id: Some(device.org_id),
        project_id: Some(device.project_id),
        fleet_id: Some(device.fleet_id),
        lineage_id: None,
        source_table: Some(req.source_table.clone()),
        kind: "spill",
        journal_epoch: Some(header.journal_epoch),
        first_seq: None,
        last_seq: None,
        schema_hash: Some(header.schema_hash.clone()),
        row_count: 0,
        bytes: 0,
        status: "accepted",
        rejection_code: None,
        rejection_detail: None,
        stripped_tenant_fields: ingest::count(a.stripped_fields.len()),
    };
    if !insert_segment(tx, &segment).await? {
        return Ok(Outcome::Duplicate {
            batch_id: req.batch_id,
        });
    }
    let Some(objects) = deps.objects.as_deref() else {
        return Err(Abort::Failed(Failed::new(
            SpillCode::NotConfigured,
            "no object store configured",
        )));
    };
    let reader = objects
        .open(&upload.object_key)
        .await
        .map_err(|e| Abort::Handler(HandlerError::Object(e)))?
        .ok_or_else(|| {
            Abort::Failed(Failed::new(
                SpillCode::ObjectMissing,
                format!("no object under {}", upload.object_key),
            ))
        })?;
    if let Some(size) = reader.size.filter(|s| *s > MAX_OBJECT_BYTES) {
        return Err(Abort::Failed(Failed::new(
            SpillCode::ObjectTooLarge,
            format!("{size} bytes"),
        )));
    }
    let mut chunks = decode_stream(reader.body);
    let mut total = ingest::Processed::default();
    let (mut first, mut last, mut rows, mut bytes) = (None::<i64>, None::<i64>, 0i64, 0u64);
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(|e| match e {
            DecodeError::Failed(f) => Abort::Failed(f),
            DecodeError::Source(msg) => {
                Abort::Handler(HandlerError::Object(ObjectError::Unavailable(msg)))
            }
        })?;
        if let (Some(prev), Some(next)) = (last, chunk.rows.first().map(|r| r.commit_seq)) {
            if next <= prev {
                return Err(Abort::Failed(Failed::new(
                    SpillCode::OutOfOrder,
                    format!("commit_seq {next} does not follow {prev}"),
                )));
            }
        }
        first = first.or(chunk.rows.first().map(|r| r.commit_seq));
        last = chunk.rows.last().map(|r| r.commit_seq).or(last);
        let offset = usize::try_from(rows).unwrap_or(usize::MAX);
        rows += ingest::count64(chunk.rows.len());
        bytes = chunk.compressed_bytes;
        let batch = RowBatch::new(
            req.batch_id,
            header.journal_epoch,
            req.source_table.clone(),
            header.schema_hash.clone(),
            None,
            chunk.rows,
        );
        let p = ingest::rows_into_lineage(tx, device, &batch, batch_time, offset).await?;
        total.merge(p);
    }
    if rows == 0 {
        return Err(Abort::Failed(Failed::new(
            SpillCode::ObjectEmpty,
            "the object holds no row",
        )));
    }
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    edge_cloud_store::spill::note_segment(
        tx,
        device.device_id,
        req.batch_id,
        batch_time,
        (first, last),
        rows,
        bytes,
    )
    .await?;
    record_finalize(
        tx,
        device.device_id,
        req.batch_id,
        &FinalizeOutcome {
            status: "finalized",
            code: None,
            detail: None,
            object_bytes: Some(bytes),
            row_count: Some(rows),
        },
    )
    .await?;
    Ok(ingest::accept_processed(tx, device.device_id, req.batch_id, batch_time, &total).await?)
}

/// One bounded chunk of decoded rows.
#[derive(Debug)]
struct Chunk {
    rows: Vec<RowChange>,
    /// Compressed bytes read so far (for the ledger).
    compressed_bytes: u64,
}

#[derive(Debug)]
enum DecodeError {
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

/// Marks an I/O error as coming from the object store, not from the zstd decoder.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceFailure(pub String);

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
fn decode_stream(
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
