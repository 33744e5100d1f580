//! Governance events to Amazon EventBridge (cloud.md §11): the sweep Lambda's
//! [`EventForwarder`].
//!
//! Each event becomes one `PutEvents` entry on the configured bus: `Source` is
//! [`DEFAULT_SOURCE`] (or `EDGE_EVENT_SOURCE`), `DetailType` the event type as stored
//! (`integration.edge_table_lineage.ingestion_paused.v1`, …: [`EVENT_TYPES`]) and `Detail` the
//! event itself with its database id, so rules can route on type and consumers can
//! de-duplicate: forwarding is at-least-once (a batch that fails half-way is sent again whole
//! by the next sweep, see [`crate::events`]).
//!
//! Limits that shape the packing ([`pack`]): at most 10 entries per `PutEvents` call and
//! 256 KiB per call, an entry's size counted as Source + DetailType + Detail (+ 14 bytes for
//! the time). An event whose detail alone would not fit is sent as a stub naming its id and
//! `"truncated": true` instead — one oversized payload must not wedge the cursor forever; the
//! full event stays readable through the API's events feed.

use aws_config::SdkConfig;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use edge_cloud_store::forwarding::ForwardEvent;
use serde_json::{json, Value};

use super::AwsError;
use crate::events::{EventForwarder, ForwardError};

/// Every event type the handlers write to `edge_events`, i.e. every `DetailType` a rule can
/// match: cloud.md §11's names, plus the lineage sweep/epoch and consolidation events.
/// (`integration.edge_export_segment.materialized.v1` of §11 is not emitted: a materialized
/// batch is visible in the mirror and the ledger, not as an event.) `tests/event_types.rs`
/// checks this list against the code, the SAM template, terraform and docs/deploy.md.
pub const EVENT_TYPES: &[&str] = &[
    "integration.edge_schema_review.queued.v1",
    "integration.edge_schema_review.approved.v1",
    "integration.edge_schema_review.rejected.v1",
    "integration.edge_schema_review.abandoned.v1",
    "integration.edge_table_lineage.ingestion_paused.v1",
    "integration.edge_table_lineage.ingestion_resumed.v1",
    "integration.edge_table_lineage.snapshot_swept.v1",
    "integration.edge_table_lineage.stale_epoch.v1",
    "integration.edge_export_segment.materialization_failed.v1",
    "integration.edge_coalesced_mirror.consolidated.v1",
];

/// The `Source` of every entry unless `EDGE_EVENT_SOURCE` says otherwise.
pub const DEFAULT_SOURCE: &str = "edge-sync";
/// Entries per `PutEvents` call (service limit).
pub const MAX_ENTRIES_PER_CALL: usize = 10;
/// Bytes per `PutEvents` call (service limit, all entries together).
pub const MAX_BYTES_PER_CALL: usize = 256 * 1024;
/// What EventBridge adds to an entry's size for its `Time` field.
const TIME_BYTES: usize = 14;

/// One entry as it will be sent, before it becomes an SDK type (so the packing is testable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub event_id: i64,
    pub detail_type: String,
    pub detail: String,
}

impl Entry {
    fn size(&self, source: &str) -> usize {
        source.len() + self.detail_type.len() + self.detail.len() + TIME_BYTES
    }
}

/// The `Detail` of one event: everything the events feed shows.
fn detail(e: &ForwardEvent) -> Value {
    json!({
        "id": e.id,
        "event_type": e.event_type,
        "org_id": e.org_id,
        "project_id": e.project_id,
        "subject_id": e.subject_id,
        "created_at": e.created_at,
        "payload": e.payload,
    })
}

/// The events of one forwarded batch as `PutEvents` calls, in order: each call holds at most
/// [`MAX_ENTRIES_PER_CALL`] entries and [`MAX_BYTES_PER_CALL`] bytes.
pub fn pack(source: &str, events: &[ForwardEvent]) -> Vec<Vec<Entry>> {
    let mut calls: Vec<Vec<Entry>> = Vec::new();
    let mut bytes = 0;
    for e in events {
        let mut entry = Entry {
            event_id: e.id,
            detail_type: e.event_type.clone(),
            detail: detail(e).to_string(),
        };
        if entry.size(source) > MAX_BYTES_PER_CALL {
            // The stub: the same fields without the payload.
            let mut stub = detail(e);
            if let Some(fields) = stub.as_object_mut() {
                fields.remove("payload");
                fields.insert("truncated".into(), Value::Bool(true));
            }
            entry.detail = stub.to_string();
        }
        let size = entry.size(source);
        let full = calls
            .last()
            .is_none_or(|c| c.len() == MAX_ENTRIES_PER_CALL || bytes + size > MAX_BYTES_PER_CALL);
        if full {
            calls.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(call) = calls.last_mut() {
            call.push(entry);
        }
    }
    calls
}

/// `PutEvents` on one bus.
#[derive(Debug, Clone)]
pub struct EventBridgeForwarder {
    client: aws_sdk_eventbridge::Client,
    bus: String,
    source: String,
}

impl EventBridgeForwarder {
    /// `bus` is a bus name or ARN (`default` for the account's default bus).
    pub fn new(sdk: &SdkConfig, bus: impl Into<String>, source: impl Into<String>) -> Self {
        EventBridgeForwarder {
            client: aws_sdk_eventbridge::Client::new(sdk),
            bus: bus.into(),
            source: source.into(),
        }
    }
}

impl EventForwarder for EventBridgeForwarder {
    /// The cursor's name: one cursor for EventBridge whatever the bus, so switching buses
    /// does not re-send history.
    fn name(&self) -> &str {
        "eventbridge"
    }

    async fn forward(&self, events: &[ForwardEvent]) -> Result<(), ForwardError> {
        for call in pack(&self.source, events) {
            let entries: Vec<PutEventsRequestEntry> = call
                .iter()
                .map(|e| {
                    PutEventsRequestEntry::builder()
                        .event_bus_name(&self.bus)
                        .source(&self.source)
                        .detail_type(&e.detail_type)
                        .detail(&e.detail)
                        .build()
                })
                .collect();
            let out = self
                .client
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| ForwardError(AwsError::service("events:PutEvents", e).to_string()))?;
            // PutEvents answers 200 with per-entry failures (throttling, internal errors):
            // the batch counts as failed, so the cursor stays and the next sweep re-sends it.
            if out.failed_entry_count() > 0 {
                let first = out
                    .entries()
                    .iter()
                    .zip(&call)
                    .find(|(r, _)| r.error_code().is_some())
                    .map(|(r, e)| {
                        format!(
                            "event {}: {} {}",
                            e.event_id,
                            r.error_code().unwrap_or(""),
                            r.error_message().unwrap_or("")
                        )
                    })
                    .unwrap_or_default();
                return Err(ForwardError(format!(
                    "events:PutEvents: {} of {} entries failed ({first})",
                    out.failed_entry_count(),
                    call.len()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn event(id: i64, payload: Value) -> ForwardEvent {
        ForwardEvent {
            id,
            event_type: "integration.edge_table_lineage.ingestion_paused.v1".into(),
            org_id: Uuid::nil(),
            project_id: Uuid::nil(),
            subject_id: Some(Uuid::nil()),
            payload,
            created_at: "2026-11-25T22:00:00Z".into(),
        }
    }

    #[test]
    fn ten_entries_per_call_in_order() {
        let events: Vec<_> = (1..=23).map(|i| event(i, json!({"n": i}))).collect();
        let calls = pack(DEFAULT_SOURCE, &events);
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 3]
        );
        let ids: Vec<i64> = calls.iter().flatten().map(|e| e.event_id).collect();
        assert_eq!(ids, (1..=23).collect::<Vec<_>>());
        let d: Value = serde_json::from_str(&calls[0][0].detail).unwrap();
        assert_eq!(d["id"], 1);
        assert_eq!(d["payload"]["n"], 1);
        assert_eq!(
            calls[0][0].detail_type,
            "integration.edge_table_lineage.ingestion_paused.v1"
        );
    }

    #[test]
    fn calls_stay_under_the_byte_limit() {
        // 100 KiB payloads: two fit a call, a third would not.
        let big = "x".repeat(100 * 1024);
        let events: Vec<_> = (1..=5).map(|i| event(i, json!({ "s": big }))).collect();
        let calls = pack(DEFAULT_SOURCE, &events);
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        for call in &calls {
            let bytes: usize = call.iter().map(|e| e.size(DEFAULT_SOURCE)).sum();
            assert!(bytes <= MAX_BYTES_PER_CALL, "{bytes}");
        }
    }

    #[test]
    fn an_oversized_event_is_sent_as_a_stub() {
        let huge = "y".repeat(300 * 1024);
        let events = vec![event(1, json!({"n": 1})), event(2, json!({ "s": huge }))];
        let calls = pack(DEFAULT_SOURCE, &events);
        let entries: Vec<&Entry> = calls.iter().flatten().collect();
        assert_eq!(entries.len(), 2);
        let stub: Value = serde_json::from_str(&entries[1].detail).unwrap();
        assert_eq!(stub["id"], 2);
        assert_eq!(stub["truncated"], true);
        assert!(stub.get("payload").is_none());
        assert!(entries[1].size(DEFAULT_SOURCE) < 1024);
    }

    #[test]
    fn no_events_no_calls() {
        assert!(pack(DEFAULT_SOURCE, &[]).is_empty());
    }
}
