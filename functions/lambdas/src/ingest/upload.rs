//! Spill / snapshot uploads, the cloud half (protocol §7): `url_request` → signed `url_grant`
//! control with a URL valid 15 minutes; `finalize` → the object's rows through the very same
//! row-batch intake as a batch on `sync/rows/batch`.
//!
//! The decisions are in [`edge_cloud_core::spill`], the tables in [`edge_cloud_store::spill`],
//! the bytes behind [`crate::objects::ObjectStore`]; the streaming decode is
//! [`super::spill_decode`].
//!
//! Finalize runs in one transaction: the ledger row (kind `spill`, dedup on batch_id) first,
//! then the object read as a stream — zstd decoded and split into lines on a blocking thread,
//! handed over in bounded chunks through a channel of one — so memory stays bounded whatever
//! the object's size, and a bad line anywhere rolls everything back. The failure is then
//! recorded on the upload in a transaction of its own with its named code; a later
//! `url_request` for the same batch can try again.
//!
//! Every finalize ends with a signed `upload_result` control (reliability §2), issued in the
//! transaction that records the outcome: `committed` with the rows' commit, `failed` with the
//! code and whether uploading again can help ([`SpillCode::retryable`]); an object store that
//! cannot be read is `spill_store_unavailable`, retryable. The device deletes its spilled rows
//! only on `committed`. A `url_request` or `finalize` for a batch already finalized is answered
//! with `committed` again, so a device restarted after the cloud's commit is never left
//! waiting. A device holds at most [`MAX_OPEN_UPLOADS_PER_DEVICE`] open uploads.

use edge_cloud_core::ingress::Admitted;
use edge_cloud_core::spill::{
    check_finalize, object_key, resolve_header, Header, Known, SpillCode, MAX_OBJECT_BYTES,
    MAX_OPEN_UPLOADS_PER_DEVICE, URL_TTL_SECONDS,
};
use edge_cloud_store::ledger::insert_segment;
use edge_cloud_store::registry::{device_by_name, Device};
use edge_cloud_store::spill::{
    issue_upload_result, issue_url_grant, known_header, lock_upload, open_uploads, record_finalize,
    record_request, reuse_pending_grant, FinalizeOutcome, Grant,
};
use edge_cloud_store::StoreError;
use edge_protocol::batch::RowBatch;
use edge_protocol::control::{IngestRequest, RequestKind};
use edge_protocol::validate::{decode_ingest_request, Rejection};
use time::OffsetDateTime;
use uuid::Uuid;

use super::ledger::{count64, reject, segment, Carried};
use super::outcome::{accept_processed, Processed};
use super::rows::rows_into_lineage;
use super::spill_decode::{decode_stream, DecodeError, Failed};
use super::Outcome;
use crate::objects::{ObjectError, ObjectStore};
use crate::{Deps, HandlerError};

/// A pending grant is re-sent instead of minting a new URL only while its URL has at least
/// this long left: enough for the device to receive it and finish the PUT.
pub const REUSE_MIN_VALIDITY_SECONDS: i64 = 5 * 60;

/// An envelope on `sync/ingest/request`: `url_request` or `finalize`.
pub async fn intake_request(deps: &Deps, a: &Admitted) -> Result<Outcome, HandlerError> {
    let mut client = deps.pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let Some(device) = device_by_name(&*tx, a.device_name()).await? else {
        let o = reject(&tx, a, None, Rejection::unknown_device(a.device_name())).await?;
        tx.commit().await.map_err(StoreError::from)?;
        return Ok(o);
    };
    if edge_protocol::validate::request_kind_of(&a.payload).as_deref()
        == Some(edge_protocol::wire::HELLO_REQUEST_KIND)
    {
        let o = hello(&tx, a, &device).await?;
        tx.commit().await.map_err(StoreError::from)?;
        log(&device, None, &o);
        return Ok(o);
    }
    let req = match decode_ingest_request(&a.payload) {
        Ok(r) => r,
        Err(rejection) => {
            let o = reject(&tx, a, Some(&device), rejection).await?;
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

/// A `hello` (edge-policies §0): when what the device last applied differs from what this
/// cloud grants, a signed `set_wire_options` is queued.
async fn hello(
    tx: &edge_cloud_store::tokio_postgres::Transaction<'_>,
    a: &Admitted,
    device: &Device,
) -> Result<Outcome, HandlerError> {
    let h = match edge_protocol::validate::decode_hello(&a.payload) {
        Ok(h) => h,
        Err(rejection) => return reject(tx, a, Some(device), rejection).await,
    };
    let grant = edge_protocol::wire::grant_for(&h.capabilities);
    if grant.same_as(&h.granted) {
        return Ok(Outcome::Ignored {
            reason: format!("hello from agent {}: grant unchanged", h.agent_version),
        });
    }
    let control_id = edge_cloud_store::wire_options::issue_wire_options(
        tx,
        device,
        &grant,
        time::OffsetDateTime::now_utc(),
        Uuid::now_v7(),
    )
    .await?;
    Ok(Outcome::Ignored {
        reason: format!(
            "hello from agent {}: set_wire_options {control_id} queued",
            h.agent_version
        ),
    })
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
        // A request after the finalize (a device restarted before it saw the result): the
        // rows are in; answered with the result again so the device can move on.
        issue_result(tx, device, &req.source_table, req.batch_id, None).await?;
        return Ok(Outcome::Duplicate {
            batch_id: req.batch_id,
        });
    }
    if req.content_length.is_some_and(|n| n > MAX_OBJECT_BYTES) {
        // Never granted: the finalize would refuse it anyway. Answered with a failed result,
        // not retryable, so the device blocks the table instead of asking every 30 s.
        issue_result(
            tx,
            device,
            &req.source_table,
            req.batch_id,
            Some(SpillCode::ObjectTooLarge),
        )
        .await?;
        return Ok(Outcome::UploadNotGranted {
            batch_id: req.batch_id,
            code: SpillCode::ObjectTooLarge,
        });
    }
    let reopening = existing.as_ref().is_none_or(|u| u.status == "failed");
    if reopening
        && open_uploads(tx, device.device_id, req.batch_id).await? >= MAX_OPEN_UPLOADS_PER_DEVICE
    {
        return Ok(Outcome::UploadNotGranted {
            batch_id: req.batch_id,
            code: SpillCode::TooManyOpenUploads,
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
        .presign_put(&key, expires_at, req.content_length)
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

/// Issues the signed `upload_result` of `batch_id` (a pending control, re-sent until acked).
async fn issue_result<C: edge_cloud_store::tokio_postgres::GenericClient + Sync>(
    c: &C,
    device: &Device,
    source_table: &str,
    batch_id: Uuid,
    failure: Option<SpillCode>,
) -> Result<(), StoreError> {
    let failure = failure.map(|code| (code.as_str(), code.retryable()));
    issue_upload_result(
        c,
        device,
        source_table,
        batch_id,
        failure,
        OffsetDateTime::now_utc(),
        Uuid::now_v7(),
    )
    .await?;
    Ok(())
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
    let processed = match process(deps, &tx, a, device, req).await {
        // The object store could not be read: nothing is kept, the device uploads again.
        Err(Abort::Handler(HandlerError::Object(e @ ObjectError::Unavailable(_)))) => Err(
            Abort::Failed(Failed::new(SpillCode::StoreUnavailable, e.to_string())),
        ),
        other => other,
    };
    match processed {
        Ok(outcome) => {
            // Accepted now, or already (a duplicate finalize): committed either way.
            issue_result(&*tx, device, &req.source_table, req.batch_id, None).await?;
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
            issue_result(&*tx, device, &req.source_table, req.batch_id, Some(f.code)).await?;
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
    let carried = Carried::Spill {
        batch_id: req.batch_id,
        source_table: &req.source_table,
        header: &header,
    };
    let segment = segment(a, Some(device), carried);
    let batch_time = segment.batch_time;
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
    let mut total = Processed::default();
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
        rows += count64(chunk.rows.len());
        bytes = chunk.compressed_bytes;
        let batch = RowBatch::new(
            req.batch_id,
            header.journal_epoch,
            req.source_table.clone(),
            header.schema_hash.clone(),
            None,
            chunk.rows,
        );
        let p = rows_into_lineage(tx, device, &batch, batch_time, offset).await?;
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
    Ok(accept_processed(tx, device.device_id, req.batch_id, batch_time, &total).await?)
}
