//! The ingest handler (cloud.md §1–§4, §6): one envelope in, one [`Outcome`] out.
//!
//! Every batch is one transaction: ledger insert (the dedup), lineage upsert (a row lock that
//! serializes the lineage), classification, then materialization or staging, the watermark and
//! the ledger outcome. A crash or a retry anywhere leaves either all of it or none of it, and
//! the redelivery then finds the ledger row and succeeds as a no-op.
//!
//! An identity the registry does not know, or a registered one under a topic slug that is not
//! its own, is rejected `unknown_device`; after the commit the identity's control topic gets
//! the unsigned `device_unknown` notice (reliability.md §7), throttled per topic root
//! ([`crate::control_publisher::publish_device_unknown`]).
//!
//! # Layout
//! - this file — the dispatch: ingress, the device, the payload kind → its intake
//! - [`outcome`] — [`Outcome`], and the common end of an accepted batch (flow control, ledger)
//! - [`ledger`] — the one constructor of a batch's ledger row, and rejections
//! - [`schema`] — classification against the lineage's schema, schema observations
//! - [`rows`] — row batches (and the chunks of a spill object): materialize or stage
//! - [`telemetry`] — telemetry batches: sequencing, data points or staging
//! - [`upload`] — `sync/ingest/request`: upload grants and the finalize of a spill object
//! - `spill_decode` — a spill object's zstd JSON Lines → bounded chunks of rows

mod ledger;
pub mod outcome;
mod rows;
mod schema;
mod spill_decode;
mod telemetry;
pub mod upload;

use edge_cloud_core::ingress::{admit, Admitted, IngressEnvelope};
use edge_cloud_core::metrics::{BatchKind, FailureClass, Handler};
use edge_cloud_store::device_block;
use edge_cloud_store::mirror::ack_control;
use edge_cloud_store::registry::device_by_name;
use edge_cloud_store::tokio_postgres::Transaction;
use edge_cloud_store::StoreError;
use edge_protocol::control::device_unknown_reason;
use edge_protocol::topic::TopicKind;
use edge_protocol::validate::{decode_device_payload, DevicePayload, Rejection, RejectionCode};

pub use self::outcome::Outcome;

use self::ledger::reject;
use crate::control_publisher::publish_device_unknown;
use crate::metrics::ingest::increments;
use crate::{Deps, HandlerError};

/// Ingress then intake: the whole per-envelope pipeline. Its counters move here, once the
/// outcome is committed (observability.md §2, [`crate::metrics::ingest::increments`]); a
/// retryable failure counts as a transient materialization failure (the envelope comes again).
pub async fn handle(deps: &Deps, envelope: IngressEnvelope) -> Result<Outcome, HandlerError> {
    let started = std::time::Instant::now();
    let result = match admit(&envelope) {
        Ok(admitted) => {
            let kind = BatchKind::of_topic(admitted.topic.kind);
            let stripped = !admitted.stripped_fields.is_empty();
            let result = intake(deps, admitted).await;
            match &result {
                Ok(outcome) => deps
                    .metrics
                    .record_ingest(kind, &increments(outcome, stripped)),
                Err(e) if e.is_retryable() => deps.metrics.failure(FailureClass::Transient),
                Err(_) => {}
            }
            result
        }
        Err(e) => {
            tracing::warn!(topic = %envelope.topic, client_id = %envelope.client_id, error = %e,
                "envelope dropped at ingress");
            Ok(Outcome::Dropped {
                reason: e.to_string(),
            })
        }
    };
    deps.metrics.observe(Handler::Ingest, started);
    result
}

/// The worker: an admitted payload, in one transaction.
pub async fn intake(deps: &Deps, admitted: Admitted) -> Result<Outcome, HandlerError> {
    if admitted.topic.kind == TopicKind::IngestRequest {
        // Upload requests need the object store and (finalize) their own transactions.
        return upload::intake_request(deps, &admitted).await;
    }
    let mut client = deps.pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let (outcome, unknown) = intake_in(&tx, &admitted).await?;
    tx.commit().await.map_err(StoreError::from)?;
    log_outcome(&admitted, &outcome);
    if let Some(reason) = unknown {
        // After the commit, throttled, bounded in time: never holds up or fails the intake.
        if publish_device_unknown(
            &deps.publisher,
            &deps.device_unknown,
            &admitted.topic.root(),
            reason,
            time::OffsetDateTime::now_utc(),
        )
        .await
        {
            deps.metrics
                .control_published(edge_protocol::control::DEVICE_UNKNOWN, 1);
        }
    }
    Ok(outcome)
}

fn log_outcome(admitted: &Admitted, outcome: &Outcome) {
    let device = admitted.device_name();
    let topic = admitted.topic.kind.suffix();
    match outcome {
        Outcome::Rejected { code, message } => {
            tracing::warn!(device, topic, code = %code, message, "batch rejected");
        }
        other => tracing::info!(device, topic, outcome = ?other, "envelope handled"),
    }
}

/// The intake in its transaction; the second value is the `reason` of a `device_unknown` to
/// publish after the commit (reliability.md §7), when the identity is not the registry's
/// device under this topic.
async fn intake_in(
    tx: &Transaction<'_>,
    a: &Admitted,
) -> Result<(Outcome, Option<&'static str>), HandlerError> {
    let Some(device) = device_by_name(tx, a.device_name()).await? else {
        let outcome = reject(tx, a, None, Rejection::unknown_device(a.device_name())).await?;
        return Ok((outcome, Some(device_unknown_reason::NOT_REGISTERED)));
    };
    if device.topic_slug != a.topic.slug {
        // A registered identity publishing under another slug: not its device as far as the
        // topic says, so nothing of it may reach that slug's tenant.
        let rejection = Rejection::new(
            RejectionCode::UnknownDevice,
            format!(
                "device {:?} is registered under topic slug {:?}, not {:?}",
                a.device_name(),
                device.topic_slug,
                a.topic.slug
            ),
        );
        let outcome = reject(tx, a, None, rejection).await?;
        return Ok((outcome, Some(device_unknown_reason::TOPIC_NOT_ITS_OWN)));
    }
    intake_known(tx, a, &device).await.map(|o| (o, None))
}

async fn intake_known(
    tx: &Transaction<'_>,
    a: &Admitted,
    device: &edge_cloud_store::registry::Device,
) -> Result<Outcome, HandlerError> {
    let device = device.clone();
    match decode_device_payload(a.topic.kind, &a.payload) {
        Err(rejection) => reject(tx, a, Some(&device), rejection).await,
        Ok(DevicePayload::Rows(batch)) => rows::intake_rows(tx, a, &device, batch).await,
        Ok(DevicePayload::Telemetry(batch)) => {
            telemetry::intake_telemetry(tx, a, &device, batch).await
        }
        Ok(DevicePayload::Schema(obs)) => schema::observe_schema(tx, &device, obs).await,
        Ok(DevicePayload::Ack(ack)) => {
            if let Some(entry) = &ack.skipped_entry {
                // The ack of an `unblock_table` skip: the dropped entry becomes a dead letter
                // in the same transaction as the ack (reliability.md §2).
                let arrival = device_block::AckArrival {
                    transport: "control_ack",
                    topic: Some(a.topic.kind.suffix()),
                };
                match device_block::record_skipped(
                    tx,
                    device.device_id,
                    ack.control_id,
                    entry,
                    arrival,
                )
                .await?
                {
                    Some(id) => {
                        tracing::warn!(device = a.device_name(), table = %entry.source_table,
                        commit_seq = entry.commit_seq, dead_letter = id,
                        "journal entry skipped by an operator: kept as a dead letter")
                    }
                    None => tracing::warn!(device = a.device_name(), control_id = %ack.control_id,
                        "ack carries a skipped entry that matches no unblock_table skip; ignored"),
                }
            }
            let known = ack_control(tx, device.device_id, ack.control_id).await?;
            Ok(Outcome::ControlAcked {
                control_id: ack.control_id,
                known,
            })
        }
        // `intake` hands these to `upload::intake_request` before opening this transaction.
        Ok(DevicePayload::Request(req)) => Ok(Outcome::Ignored {
            reason: format!(
                "{} for {:?} outside the upload handler",
                req.request_kind.as_str(),
                req.source_table
            ),
        }),
    }
}
