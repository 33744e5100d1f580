//! The outbox's half of `state.db`: the `outbox` table, where a batch's id and bytes are fixed
//! before its first publish (and read back by id, so only the batch about to be published is
//! held in memory), and the `last_ack_at` fact `status` shows (in state.db's one `meta` table).
//!
//! [`init`] brings a `state.db` of any earlier release up to date in place (idempotent): it adds
//! `outbox.epoch` to files older than the column and moves the rows of the `publisher_meta`
//! table earlier releases kept into `meta`.

use std::collections::BTreeMap;
use std::time::Instant;

use rusqlite::{params, OptionalExtension};
use uuid::Uuid;

use crate::batcher::BuiltBatch;
use crate::outbox::{BatchKind, Outbox, Tracked};
use crate::spill::{self, Spill};
use crate::state::{counter, StateDb, StateError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    table_name TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    epoch TEXT,
    rows INTEGER
);
";

/// The `meta` key of the last acknowledgement's time (RFC 3339), shown by `status`.
pub const LAST_ACK_AT: &str = "last_ack_at";

/// A batch fixed before its first publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub batch_id: Uuid,
    /// `rows` | `telemetry` | [`spill::OUTBOX_KIND`].
    pub kind: String,
    pub table_name: String,
    pub first_seq: i64,
    pub last_seq: i64,
    pub payload: Vec<u8>,
    pub created_at_ms: i64,
    /// Journal epoch the batch's `first_seq..=last_seq` belong to. `None` only for rows fixed
    /// by an agent older than the column (the daemon then reads it from the payload).
    pub epoch: Option<Uuid>,
    /// Rows (changes, telemetry rows; 1 for a spill) the batch carries, counted into
    /// `rows_acked` when it is acknowledged. `None` only for rows fixed by an agent older than
    /// the column ([`remove_acked`] then counts the payload's `rows`).
    pub rows: Option<i64>,
}

/// Creates the outbox tables and migrates older `state.db` files in place (idempotent).
pub fn init(state: &StateDb) -> Result<(), StateError> {
    let conn = state.conn();
    conn.execute_batch(SCHEMA)?;
    // `outbox.epoch` came after the first release: add it to older state files in place.
    let has_epoch: bool = conn
        .query_row(
            "SELECT 1 FROM pragma_table_info('outbox') WHERE name = 'epoch'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !has_epoch {
        conn.execute_batch("ALTER TABLE outbox ADD COLUMN epoch TEXT")?;
    }
    // `outbox.rows` (issue 15, the acked-rows counter): older files get it, NULL in old rows.
    let has_rows: bool = conn
        .query_row(
            "SELECT 1 FROM pragma_table_info('outbox') WHERE name = 'rows'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !has_rows {
        conn.execute_batch("ALTER TABLE outbox ADD COLUMN rows INTEGER")?;
    }
    // Releases before the one `meta` table kept the publisher's facts in `publisher_meta`: its
    // rows move into `meta` (they are the newer ones should both hold a key) and the table goes,
    // in one transaction, so a crash leaves either the old layout or the new one.
    let has_publisher_meta: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'publisher_meta'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if has_publisher_meta {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO meta(key, value) SELECT key, value FROM publisher_meta WHERE true
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value;
             DROP TABLE publisher_meta;
             COMMIT;",
        )
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
    }
    Ok(())
}

/// Fixes a batch before its first publish; the same id + bytes are re-sent after a restart.
pub fn put(state: &StateDb, entry: &OutboxEntry) -> Result<(), StateError> {
    state.conn().execute(
        "INSERT INTO outbox(batch_id, kind, table_name, first_seq, last_seq, payload, \
         created_at_ms, epoch, rows) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            entry.batch_id.to_string(),
            entry.kind,
            entry.table_name,
            entry.first_seq,
            entry.last_seq,
            entry.payload,
            entry.created_at_ms,
            entry.epoch.map(|e| e.to_string()),
            entry.rows
        ],
    )?;
    Ok(())
}

/// Outbox entries in the order they were fixed.
pub fn list(state: &StateDb) -> Result<Vec<OutboxEntry>, StateError> {
    let mut stmt = state.conn().prepare(
        "SELECT batch_id, kind, table_name, first_seq, last_seq, payload, created_at_ms, \
         epoch, rows FROM outbox ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(7)?,
            OutboxEntry {
                batch_id: Uuid::nil(),
                kind: r.get(1)?,
                table_name: r.get(2)?,
                first_seq: r.get(3)?,
                last_seq: r.get(4)?,
                payload: r.get(5)?,
                created_at_ms: r.get(6)?,
                epoch: None,
                rows: r.get(8)?,
            },
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, epoch, mut entry) = row?;
        entry.batch_id = Uuid::parse_str(&id).map_err(|_| StateError::Corrupt {
            what: "outbox batch_id",
            value: id.clone(),
        })?;
        entry.epoch = match epoch {
            None => None,
            Some(text) => Some(Uuid::parse_str(&text).map_err(|_| StateError::Corrupt {
                what: "outbox epoch",
                value: text,
            })?),
        };
        out.push(entry);
    }
    Ok(out)
}

/// The journal epoch recorded with one outbox row (`None`: no such row, or a legacy row).
pub fn epoch(state: &StateDb, batch_id: Uuid) -> Result<Option<Uuid>, StateError> {
    let text: Option<Option<String>> = state
        .conn()
        .query_row(
            "SELECT epoch FROM outbox WHERE batch_id = ?1",
            [batch_id.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(text.flatten().and_then(|t| Uuid::parse_str(&t).ok()))
}

pub fn remove(state: &StateDb, batch_id: Uuid) -> Result<(), StateError> {
    state
        .conn()
        .prepare_cached("DELETE FROM outbox WHERE batch_id = ?1")?
        .execute([batch_id.to_string()])?;
    Ok(())
}

/// Removes the acknowledged batch `batch_id` (a PUBACK, a spill the cloud committed) and
/// counts it and its rows in `batches_acked` / `rows_acked`, in the caller's transaction: the
/// one place a batch counts as delivered. A row missing (already removed) counts nothing.
pub fn remove_acked(state: &StateDb, batch_id: Uuid) -> Result<(), StateError> {
    // `rows` is NULL only in rows fixed before the column: their JSON payload says (a spill's
    // zstd object is not JSON, and is one row).
    let rows: Option<i64> = state
        .conn()
        .prepare_cached(
            "DELETE FROM outbox WHERE batch_id = ?1 RETURNING coalesce(rows, \
             CASE WHEN json_valid(CAST(payload AS TEXT)) \
             THEN json_array_length(CAST(payload AS TEXT), '$.rows') END, 1)",
        )?
        .query_row([batch_id.to_string()], |r| r.get(0))
        .optional()?;
    if let Some(rows) = rows {
        state.bump_counter(counter::BATCHES_ACKED, "", 1)?;
        state.bump_counter(counter::ROWS_ACKED, "", rows)?;
    }
    Ok(())
}

/// A table's batches in the outbox (fixed, not yet acknowledged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    pub batches: u64,
    /// When the oldest of them was fixed.
    pub oldest_created_at_ms: i64,
    /// The lowest `first_seq` (a telemetry batch's `batch_seq`) among them.
    pub first_seq: i64,
}

/// [`Pending`] per table: what the metrics read, without the payloads [`list`] loads.
pub fn pending_per_table(state: &StateDb) -> Result<BTreeMap<String, Pending>, StateError> {
    let mut stmt = state.conn().prepare(
        "SELECT table_name, count(*), min(created_at_ms), min(first_seq) FROM outbox \
         GROUP BY table_name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Pending {
                batches: r.get::<_, i64>(1)?.max(0) as u64,
                oldest_created_at_ms: r.get(2)?,
                first_seq: r.get(3)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
}

/// The bytes of one fixed batch (or spill object).
pub fn payload(state: &StateDb, batch_id: Uuid) -> Result<Option<Vec<u8>>, StateError> {
    Ok(state
        .conn()
        .prepare_cached("SELECT payload FROM outbox WHERE batch_id = ?1")?
        .query_row([batch_id.to_string()], |r| r.get(0))
        .optional()?)
}

/// When the last acknowledgement arrived (RFC 3339), if ever.
pub fn last_ack_at(state: &StateDb) -> Result<Option<String>, StateError> {
    state.meta(LAST_ACK_AT)
}

pub fn set_last_ack_at(state: &StateDb, at: &str) -> Result<(), StateError> {
    state.set_meta(LAST_ACK_AT, at)
}

/// What the outbox held when the agent stopped, as the daemon resumes it.
#[derive(Debug, Default)]
pub struct Restored {
    /// Every fixed batch, waiting to be published again (before new journal entries).
    pub outbox: Outbox,
    /// Spills in progress by batch id.
    pub spills: BTreeMap<Uuid, Spill>,
    /// Per table, the highest commit_seq fixed in `epoch` (row batch or spill).
    pub fixed: BTreeMap<String, i64>,
}

/// Loads the outbox after a restart; `epoch` is the current journal epoch.
pub fn restore(state: &StateDb, epoch: Uuid, now: Instant) -> Result<Restored, StateError> {
    let mut restored = Restored::default();
    for e in list(state)? {
        if e.kind == spill::OUTBOX_KIND {
            if e.epoch.unwrap_or(epoch) == epoch {
                mark(&mut restored.fixed, &e.table_name, e.last_seq);
            }
            // The epoch is stored with the outbox row; the schema hash is not, and the
            // cloud takes the table's current one (right unless the schema changed since).
            restored.spills.insert(
                e.batch_id,
                Spill::new(e.batch_id, e.table_name, e.last_seq, now)
                    .with_header(e.epoch, None)
                    .with_length(e.payload.len()),
            );
            continue;
        }
        let kind = BatchKind::parse(&e.kind).unwrap_or(BatchKind::Rows);
        // Rows fixed before `outbox.epoch` existed carry their epoch in the payload.
        let batch_epoch = e.epoch.unwrap_or_else(|| {
            edge_protocol::validate::decode_row_batch(&e.payload)
                .map(|b| b.journal_epoch)
                .unwrap_or(epoch)
        });
        if kind == BatchKind::Rows && batch_epoch == epoch {
            mark(&mut restored.fixed, &e.table_name, e.last_seq);
        }
        restored.outbox.add(Tracked::waiting(
            e.batch_id,
            batch_epoch,
            kind,
            e.table_name,
            (e.first_seq, e.last_seq),
            e.payload.len(),
        ));
    }
    Ok(restored)
}

fn mark(fixed: &mut BTreeMap<String, i64>, table: &str, seq: i64) {
    let pos = fixed.entry(table.to_owned()).or_insert(0);
    *pos = (*pos).max(seq);
}

fn unix_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// Fixes a built row batch of `epoch`. The payload moves into state.db and is read back when
/// published: no copy stays in memory.
pub fn fix_rows(state: &StateDb, epoch: Uuid, b: BuiltBatch) -> Result<Tracked, StateError> {
    let bytes = b.payload.len();
    put(
        state,
        &OutboxEntry {
            batch_id: b.batch_id,
            kind: BatchKind::Rows.as_str().into(),
            table_name: b.table.clone(),
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            payload: b.payload,
            created_at_ms: unix_ms(),
            epoch: Some(epoch),
            rows: Some(b.rows as i64),
        },
    )?;
    Ok(Tracked::waiting(
        b.batch_id,
        epoch,
        BatchKind::Rows,
        b.table,
        (b.first_seq, b.last_seq),
        bytes,
    ))
}

/// Fixes the spill object of the change `commit_seq` of `table` (counted in
/// [`spill::COUNTER_SPILLS`]).
pub fn fix_spill(
    state: &StateDb,
    epoch: Uuid,
    batch_id: Uuid,
    table: &str,
    commit_seq: i64,
    object: Vec<u8>,
) -> Result<(), StateError> {
    put(
        state,
        &OutboxEntry {
            batch_id,
            kind: spill::OUTBOX_KIND.into(),
            table_name: table.to_owned(),
            first_seq: commit_seq,
            last_seq: commit_seq,
            payload: object,
            created_at_ms: unix_ms(),
            epoch: Some(epoch),
            rows: Some(1),
        },
    )?;
    state.bump_counter(spill::COUNTER_SPILLS, table, 1)
}

/// Fixes the telemetry batch `batch_seq` of `table` (`rows` telemetry rows).
pub fn fix_telemetry(
    state: &StateDb,
    epoch: Uuid,
    batch_id: Uuid,
    (table, batch_seq): (&str, i64),
    rows: usize,
    payload: Vec<u8>,
) -> Result<Tracked, StateError> {
    let bytes = payload.len();
    put(
        state,
        &OutboxEntry {
            batch_id,
            kind: BatchKind::Telemetry.as_str().into(),
            table_name: table.into(),
            first_seq: batch_seq,
            last_seq: batch_seq,
            payload,
            created_at_ms: unix_ms(),
            epoch: Some(epoch),
            rows: Some(rows as i64),
        },
    )?;
    Ok(Tracked::waiting(
        batch_id,
        epoch,
        BatchKind::Telemetry,
        table.into(),
        (batch_seq, batch_seq),
        bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Uuid {
        edge_protocol::ids::new_uuid_v7(1_700_000_000_000 + u64::from(n), [n; 10])
    }

    /// A state.db written by the release before the one `meta` table (see the fixture).
    fn state_db_of_the_previous_release(path: &std::path::Path) {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        conn.execute_batch(include_str!(
            "../tests/fixtures/state-db-before-one-meta-table.sql"
        ))
        .unwrap();
    }

    fn has_table(state: &StateDb, name: &str) -> bool {
        state
            .conn()
            .query_row(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()
            .unwrap()
            .is_some()
    }

    #[test]
    fn an_earlier_releases_state_db_is_migrated_in_place_and_again_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        state_db_of_the_previous_release(&path);
        for _ in 0..2 {
            let state = StateDb::open(&path).unwrap();
            init(&state).unwrap();
            assert!(!has_table(&state, "publisher_meta"));
            assert_eq!(
                last_ack_at(&state).unwrap().as_deref(),
                Some("2026-01-01T00:00:00Z")
            );
            assert_eq!(
                state
                    .journal_epoch()
                    .unwrap()
                    .map(|e| e.to_string())
                    .as_deref(),
                Some("0190163d-8000-7000-8000-000000000001")
            );
            crate::control_store::init(&state).unwrap();
            assert_eq!(
                crate::control_store::last_applied(
                    &state,
                    "t",
                    edge_protocol::control::ControlFamily::Lineage
                )
                .unwrap()
                .as_deref(),
                Some("2026-01-01T00:00:01Z")
            );
            let out = list(&state).unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].epoch, state.journal_epoch().unwrap());
            assert_eq!((out[0].last_seq, &out[0].payload[..]), (9, &b"{}"[..]));
            assert_eq!(state.last_acked("t").unwrap(), 7);
            assert_eq!(state.journal_high_water().unwrap(), 9);
            let epoch = state.journal_epoch().unwrap().unwrap();
            let restored = restore(&state, epoch, Instant::now()).unwrap();
            assert_eq!(restored.fixed, BTreeMap::from([("t".to_owned(), 9)]));
        }
    }

    #[test]
    fn acknowledged_batches_count_their_rows_also_when_fixed_before_the_rows_column() {
        let state = StateDb::open_in_memory().unwrap();
        init(&state).unwrap();
        let entry = |n: u8, rows: Option<i64>, payload: &[u8]| OutboxEntry {
            batch_id: id(n),
            kind: "rows".into(),
            table_name: "t".into(),
            first_seq: 1,
            last_seq: 2,
            payload: payload.to_vec(),
            created_at_ms: 1,
            epoch: None,
            rows,
        };
        put(&state, &entry(1, Some(7), b"{}")).unwrap();
        // Fixed by an older agent: no `rows`, the payload's `rows` array says.
        put(&state, &entry(2, None, br#"{"rows":[{},{},{}]}"#)).unwrap();
        // Not JSON (a spill's zstd object): one row.
        put(&state, &entry(3, None, &[0x28, 0xb5, 0x2f, 0xfd])).unwrap();
        for n in 1..=3 {
            remove_acked(&state, id(n)).unwrap();
        }
        // Already gone: counts nothing.
        remove_acked(&state, id(1)).unwrap();
        assert_eq!(state.counter(counter::BATCHES_ACKED, "").unwrap(), 3);
        assert_eq!(state.counter(counter::ROWS_ACKED, "").unwrap(), 11);
        assert!(list(&state).unwrap().is_empty());
    }

    #[test]
    fn a_fresh_state_db_gets_the_new_layout() {
        let state = StateDb::open_in_memory().unwrap();
        init(&state).unwrap();
        init(&state).unwrap();
        assert!(!has_table(&state, "publisher_meta"));
        assert_eq!(last_ack_at(&state).unwrap(), None);
        set_last_ack_at(&state, "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(
            last_ack_at(&state).unwrap().as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
    }

    #[test]
    fn a_restart_resumes_batches_and_spills_of_the_current_epoch() {
        let state = StateDb::open_in_memory().unwrap();
        init(&state).unwrap();
        let (epoch, old) = (id(1), id(0));
        let batch = |n: u8, last_seq: i64| BuiltBatch {
            batch_id: id(n),
            table: "t".into(),
            first_seq: 1,
            last_seq,
            rows: 1,
            payload: b"{}".to_vec(),
        };
        fix_rows(&state, old, batch(10, 900)).unwrap();
        let t = fix_rows(&state, epoch, batch(11, 20)).unwrap();
        assert_eq!((t.bytes, t.last_seq, t.kind), (2, 20, BatchKind::Rows));
        fix_spill(&state, epoch, id(12), "t", 21, b"zstd".to_vec()).unwrap();
        fix_telemetry(&state, epoch, id(13), ("temps", 4), 1, b"{}".to_vec()).unwrap();
        let restored = restore(&state, epoch, Instant::now()).unwrap();
        assert_eq!(restored.outbox.len(), 3);
        assert_eq!(restored.spills.len(), 1);
        assert_eq!(restored.spills[&id(12)].commit_seq, 21);
        // Only the current epoch counts as fixed; telemetry seqs are batch seqs.
        assert_eq!(restored.fixed, BTreeMap::from([("t".to_owned(), 21)]));
        assert_eq!(state.counter(spill::COUNTER_SPILLS, "t").unwrap(), 1);
        assert_eq!(
            payload(&state, id(12)).unwrap().as_deref(),
            Some(&b"zstd"[..])
        );
        assert_eq!(epoch_of(&state, id(11)), Some(epoch));
        remove(&state, id(12)).unwrap();
        assert_eq!(payload(&state, id(12)).unwrap(), None);
    }

    fn epoch_of(state: &StateDb, batch_id: Uuid) -> Option<Uuid> {
        epoch(state, batch_id).unwrap()
    }
}
