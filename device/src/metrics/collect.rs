//! The samples, from the files alone: state.db (tables, outbox, counters, blocks, the
//! oldest-pending marker) and source.db (the pending journal). The one function both
//! `status --json` and `GET /metrics` use (the endpoint adds `edge_agent_mqtt_connected`).

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::{marker, name, MetricsError, Sample};
use crate::blocks;
use crate::capture::journal::pending_stats;
use crate::outbox_store;
use crate::state::{counter, StateDb};

/// Every sample but `edge_agent_mqtt_connected`, at `now_ms`. `source` is `None` when the
/// source database cannot be opened (its journal gauges are then 0). Per enrolled table, every
/// per-table family has a sample (0 when nothing happened), so a series exists from start-up.
pub fn samples(
    state: &StateDb,
    source: Option<&Connection>,
    device: &str,
    now_ms: i64,
) -> Result<Vec<Sample>, MetricsError> {
    let outbox = outbox_store::pending_per_table(state)?;
    let markers = marker::list(state)?;
    let blocked: BTreeMap<String, String> = blocks::list(state)?
        .into_iter()
        .map(|b| (b.table, b.reason))
        .collect();
    let counters = state.counters()?;
    let count = |n: &str, table: &str| {
        counters
            .iter()
            .find(|(cn, ct, _)| cn == n && ct == table)
            .map_or(0, |c| c.2)
    };
    let table_label = |t: &str| vec![("table", t.to_owned())];
    let mut out = Vec::new();
    let tables: Vec<_> = state
        .tables()?
        .into_iter()
        .filter(|t| t.enrolment == "enrolled")
        .collect();
    for t in &tables {
        let pending = outbox.get(&t.table_name).copied();
        let telemetry = t.strategy == "telemetry";
        let (rows, bytes, age_ms, acked) = if telemetry {
            // No journal: a telemetry row is pending from the moment its batch is fixed (at
            // most one batch per table in flight), the last acked batch_seq is the one before.
            let batch_seq = state.telemetry_progress(&t.table_name)?.batch_seq;
            match pending {
                Some(p) => (
                    0,
                    0,
                    now_ms - p.oldest_created_at_ms,
                    (p.first_seq - 1).max(0),
                ),
                None => (0, 0, 0, batch_seq),
            }
        } else {
            let stats = match source {
                Some(conn) => pending_stats(conn, &t.table_name, t.last_acked_seq)?,
                None => Default::default(),
            };
            let age = match (stats.entries, markers.get(&t.table_name)) {
                (0, _) | (_, None) => 0,
                (_, Some((_, first_seen))) => now_ms - first_seen,
            };
            (stats.entries, stats.bytes, age, t.last_acked_seq)
        };
        let tl = || table_label(&t.table_name);
        out.push(Sample::new(name::JOURNAL_ROWS, tl(), rows as i64));
        out.push(Sample::new(name::JOURNAL_BYTES, tl(), bytes as i64));
        out.push(Sample::new(
            name::OLDEST_PENDING_AGE,
            tl(),
            age_ms.max(0) / 1000,
        ));
        out.push(Sample::new(name::LAST_ACKED_COMMIT_SEQ, tl(), acked));
        out.push(Sample::new(
            name::UNACKED_BATCHES,
            tl(),
            pending.map_or(0, |p| p.batches as i64),
        ));
        out.push(Sample::new(name::TABLE_PAUSED, tl(), i64::from(t.paused)));
        out.push(Sample::new(
            name::TABLE_NEEDS_SNAPSHOT,
            tl(),
            i64::from(t.needs_snapshot),
        ));
        let (reason, is_blocked) = match blocked.get(&t.table_name) {
            Some(reason) => (reason.clone(), 1),
            None => ("none".to_owned(), 0),
        };
        out.push(Sample::new(
            name::TABLE_BLOCKED,
            vec![("table", t.table_name.clone()), ("reason", reason)],
            is_blocked,
        ));
    }
    let last_ack = outbox_store::last_ack_at(state)?
        .and_then(|at| edge_protocol::timestamp::parse(&at).ok())
        .map_or(0, |t| t.unix_timestamp());
    out.push(Sample::new(name::LAST_ACK_TIMESTAMP, vec![], last_ack));
    out.push(Sample::new(
        name::INFO,
        vec![
            ("device", device.to_owned()),
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            (
                "journal_epoch",
                state
                    .journal_epoch()?
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
            ),
        ],
        1,
    ));
    out.push(Sample::new(
        name::BATCHES_ACKED,
        vec![],
        count(counter::BATCHES_ACKED, ""),
    ));
    out.push(Sample::new(
        name::ROWS_ACKED,
        vec![],
        count(counter::ROWS_ACKED, ""),
    ));
    // Every enrolled table from the start; a table that left keeps its count while state.db
    // has it.
    let mut dropped: BTreeMap<&str, i64> =
        tables.iter().map(|t| (t.table_name.as_str(), 0)).collect();
    for (n, table, value) in &counters {
        if n == counter::RETENTION_DROPPED {
            dropped.insert(table, *value);
        }
    }
    for (table, value) in dropped {
        out.push(Sample::new(
            name::RETENTION_DROPPED,
            table_label(table),
            value,
        ));
    }
    for (n, kind, value) in &counters {
        if let Some(outcome) = n.strip_prefix(counter::CONTROLS_PREFIX) {
            out.push(Sample::new(
                name::CONTROLS,
                vec![("kind", kind.clone()), ("outcome", outcome.to_owned())],
                *value,
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::outbox_store::OutboxEntry;

    fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<i64> {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && s.labels
                        .iter()
                        .zip(labels)
                        .all(|(a, b)| a.0 == b.0 && a.1 == b.1)
            })
            .map(|s| s.value)
    }

    #[test]
    fn journal_backlog_marker_age_telemetry_seq_and_blocks_per_table() {
        let state = StateDb::open_in_memory().unwrap();
        outbox_store::init(&state).unwrap();
        marker::init(&state).unwrap();
        state
            .record_enrolment("r", "rows", "enrolled", None, Some("h"))
            .unwrap();
        state
            .record_enrolment("t", "telemetry", "enrolled", None, Some("h"))
            .unwrap();
        state
            .record_enrolment("x", "rows", "not_enrolled", Some("no pk"), None)
            .unwrap();
        state.set_last_acked("r", 2).unwrap();
        // The journal: r's entries 1..=4 (2 acked), one entry of another table.
        let source = Connection::open_in_memory().unwrap();
        source
            .execute_batch(
                "CREATE TABLE __omega_schemas (schema_id INTEGER PRIMARY KEY, table_name TEXT);
                 CREATE TABLE __omega_journal (commit_seq INTEGER PRIMARY KEY, schema_id INTEGER,
                     op INTEGER, pk TEXT, row TEXT);
                 INSERT INTO __omega_schemas VALUES (1, 'r'), (2, 'other');
                 INSERT INTO __omega_journal VALUES (1, 1, 1, '[1]', '[1,\"a\"]'),
                     (2, 1, 1, '[2]', '[2,\"b\"]'), (3, 2, 1, '[9]', '[9]'),
                     (4, 1, 1, '[3]', '[3,\"c\"]'), (5, 1, 1, '[4]', '[4,\"d\"]');",
            )
            .unwrap();
        marker::apply(&state, &[("r".to_owned(), Some((4, 10_000)))]).unwrap();
        // Telemetry batch 6 is out, so 5 is the last acked.
        state
            .set_telemetry_progress(
                "t",
                &crate::state::TelemetryProgress {
                    batch_seq: 6,
                    cursor: None,
                },
            )
            .unwrap();
        outbox_store::put(
            &state,
            &OutboxEntry {
                batch_id: uuid::Uuid::now_v7(),
                kind: "telemetry".into(),
                table_name: "t".into(),
                first_seq: 6,
                last_seq: 6,
                payload: b"{}".to_vec(),
                created_at_ms: 4_000,
                epoch: None,
                rows: Some(1),
            },
        )
        .unwrap();
        blocks::block(
            &state,
            &blocks::NewBlock {
                table: "r",
                reason: blocks::UNDECODABLE_JOURNAL_ENTRY,
                commit_seq: 4,
                detail: None,
                entry: None,
                at_ms: 1,
            },
        )
        .unwrap();
        state
            .bump_counter(counter::RETENTION_DROPPED, "r", 3)
            .unwrap();
        state
            .bump_counter("controls_stale", "pause_lineage", 2)
            .unwrap();

        let s = samples(&state, Some(&source), "gw", 13_500).unwrap();
        let r = [("table", "r")];
        let t = [("table", "t")];
        assert_eq!(get(&s, name::JOURNAL_ROWS, &r), Some(2));
        let bytes = 2 * (3 + 7 + crate::capture::journal::ENTRY_OVERHEAD_BYTES as i64);
        assert_eq!(get(&s, name::JOURNAL_BYTES, &r), Some(bytes));
        assert_eq!(get(&s, name::OLDEST_PENDING_AGE, &r), Some(3));
        assert_eq!(get(&s, name::LAST_ACKED_COMMIT_SEQ, &r), Some(2));
        assert_eq!(
            get(
                &s,
                name::TABLE_BLOCKED,
                &[("table", "r"), ("reason", "undecodable_journal_entry")]
            ),
            Some(1)
        );
        assert_eq!(get(&s, name::LAST_ACKED_COMMIT_SEQ, &t), Some(5));
        assert_eq!(get(&s, name::UNACKED_BATCHES, &t), Some(1));
        assert_eq!(get(&s, name::OLDEST_PENDING_AGE, &t), Some(9));
        assert_eq!(
            get(
                &s,
                name::TABLE_BLOCKED,
                &[("table", "t"), ("reason", "none")]
            ),
            Some(0)
        );
        assert_eq!(get(&s, name::RETENTION_DROPPED, &r), Some(3));
        assert_eq!(get(&s, name::RETENTION_DROPPED, &t), Some(0));
        assert_eq!(
            get(
                &s,
                name::CONTROLS,
                &[("kind", "pause_lineage"), ("outcome", "stale")]
            ),
            Some(2)
        );
        assert_eq!(get(&s, name::LAST_ACK_TIMESTAMP, &[]), Some(0));
        assert_eq!(get(&s, name::BATCHES_ACKED, &[]), Some(0));
        // Not enrolled: no series.
        assert!(!s.iter().any(|x| x.labels.iter().any(|l| l.1 == "x")));
        assert!(!s.iter().any(|x| x.name == name::MQTT_CONNECTED));
        // Without source.db the journal gauges are 0.
        let s = samples(&state, None, "gw", 13_500).unwrap();
        assert_eq!(get(&s, name::JOURNAL_ROWS, &r), Some(0));
        assert_eq!(get(&s, name::OLDEST_PENDING_AGE, &r), Some(0));
    }
}
