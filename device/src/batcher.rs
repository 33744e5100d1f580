//! Journal changes → row batches (protocol §3). Pure: ids come from the caller.
//!
//! A [`ChangeGroup`] (one table, one schema hash, commit order) is cut into batches of at most
//! [`MAX_ROWS_PER_BATCH`] rows whose encoded payload stays within `max_payload_bytes`. Sizes are
//! first estimated from the per-change sizes the journal reader reports, then each batch is
//! encoded and checked; one that still overflows is split in half. A single change that cannot
//! fit any batch is returned separately for the spill flow (protocol §7) — never dropped.
//!
//! A snapshot chunk's group (edge-policies §5) gives batches that all carry the chunk's
//! snapshot fields (a chunk larger than one batch spans several with the same
//! `snapshot_chunk`, which the cloud records once); an end-marker group gives the one
//! `rows: []` batch whose first/last_commit_seq are `snapshot_start_seq` on the wire, while its
//! [`BuiltBatch`] seqs are the marker's journal seq (what its acknowledgement covers).

use std::collections::BTreeMap;

use edge_protocol::batch::RowBatch;
use edge_protocol::fingerprint::SchemaColumns;
use edge_protocol::limits::MAX_ROWS_PER_BATCH;
use edge_protocol::wire::SnapshotFields;
use thiserror::Error;
use uuid::Uuid;

use crate::capture::journal::{ChangeGroup, PendingChange};

/// Encoding failed (cannot happen for well-formed values; reported rather than unwrapped).
#[derive(Debug, Error)]
pub enum BatchError {
    #[error("encoding a row batch: {0}")]
    Json(#[from] serde_json::Error),
    /// The envelope did not end in an empty `rows` array (the protocol type's field order
    /// changed): splicing the rows in would produce a wrong batch.
    #[error("encoding a row batch: `rows` is not the envelope's last field")]
    Layout,
}

/// A batch with its identity and bytes fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltBatch {
    pub batch_id: Uuid,
    pub table: String,
    pub first_seq: i64,
    pub last_seq: i64,
    pub rows: usize,
    pub payload: Vec<u8>,
}

/// Result of [`build_batches`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Built {
    pub batches: Vec<BuiltBatch>,
    /// Changes too large for one message even alone: they go through the spill flow.
    pub oversized: Vec<PendingChange>,
}

/// Remembers which schema hash each table last announced with `schema_columns`, so the first
/// batch per table after start-up and after a hash change carries the full fingerprint.
#[derive(Debug, Clone, Default)]
pub struct SchemaAnnouncer {
    announced: BTreeMap<String, String>,
}

impl SchemaAnnouncer {
    /// Whether the next batch of `table` under `hash` must carry `schema_columns`.
    pub fn needs(&self, table: &str, hash: &str) -> bool {
        self.announced.get(table).map(String::as_str) != Some(hash)
    }

    pub fn record(&mut self, table: &str, hash: &str) {
        self.announced.insert(table.to_owned(), hash.to_owned());
    }
}

struct Ctx<'a> {
    epoch: Uuid,
    table: &'a str,
    hash: &'a str,
    columns: &'a SchemaColumns,
    snapshot: Option<&'a SnapshotFields>,
    max_bytes: usize,
}

/// The end of an encoded batch whose `rows` is empty: `rows` is the struct's last field.
const EMPTY_ROWS_TAIL: &[u8] = b"[]}";

/// The batch header of `ctx` under `id`, without rows.
fn empty_batch(ctx: &Ctx<'_>, id: Uuid, with_schema: bool) -> RowBatch {
    RowBatch::new(
        id,
        ctx.epoch,
        ctx.table,
        ctx.hash,
        with_schema.then(|| ctx.columns.clone()),
        Vec::new(),
    )
}

/// Encodes a batch of already encoded changes.
///
/// The envelope is serialised by serde with an empty `rows` array and the changes' bytes are
/// spliced into it, which gives exactly the bytes `serde_json::to_vec` of the whole
/// [`RowBatch`] gives (a test holds this), without decoding the changes again.
fn encode(
    ctx: &Ctx<'_>,
    id: Uuid,
    with_schema: bool,
    rows: &[PendingChange],
) -> Result<Vec<u8>, BatchError> {
    let mut batch = empty_batch(ctx, id, with_schema);
    batch.first_commit_seq = rows.iter().map(|r| r.commit_seq).min().unwrap_or(0);
    batch.last_commit_seq = rows.iter().map(|r| r.commit_seq).max().unwrap_or(0);
    let envelope = serde_json::to_vec(&batch)?;
    let Some(prefix) = envelope.strip_suffix(EMPTY_ROWS_TAIL) else {
        return Err(BatchError::Layout);
    };
    let rows_len: usize = rows.iter().map(|r| r.json.len() + 1).sum();
    let mut out = Vec::with_capacity(envelope.len() + rows_len + 160);
    match ctx.snapshot {
        // The snapshot fields go first (key order means nothing in JSON): `rows` stays last.
        Some(f) => {
            let fields = serde_json::to_vec(f)?;
            let (Some(inner), Some(rest)) = (
                fields.strip_prefix(b"{").and_then(|x| x.strip_suffix(b"}")),
                prefix.strip_prefix(b"{"),
            ) else {
                return Err(BatchError::Layout);
            };
            out.push(b'{');
            out.extend_from_slice(inner);
            out.push(b',');
            out.extend_from_slice(rest);
        }
        None => out.extend_from_slice(prefix),
    }
    out.push(b'[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&r.json);
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// Cuts `group` into batches. `with_schema` puts `schema_columns` on the first batch. The
/// group's changes move into the batches (taken, not cloned); the group keeps its table, hash
/// and columns.
pub fn build_batches(
    group: &mut ChangeGroup,
    epoch: Uuid,
    with_schema: bool,
    max_payload_bytes: usize,
    new_id: &mut dyn FnMut() -> Uuid,
) -> Result<Built, BatchError> {
    let changes = std::mem::take(&mut group.changes);
    let ctx = Ctx {
        epoch,
        table: &group.table,
        hash: &group.schema_hash,
        columns: &group.schema_columns,
        snapshot: group.snapshot.as_ref(),
        max_bytes: max_payload_bytes,
    };
    if let (Some(seq), Some(fields)) = (group.end_marker_seq, ctx.snapshot) {
        return end_marker(&ctx, seq, fields, with_schema, new_id);
    }
    // Envelope size without rows (with schema when asked), plus room for the seq numbers.
    let overhead = encode(&ctx, Uuid::nil(), with_schema, &[])?.len() + 40;
    let mut out = Built::default();
    let mut current: Vec<PendingChange> = Vec::new();
    let mut current_bytes = overhead;
    let mut schema_pending = with_schema;
    for pc in changes {
        let add = pc.bytes() + 1;
        // Too big for any batch of this table: spill it. What came before is emitted first so
        // commit order is kept within the batches.
        let oversized = overhead + add > ctx.max_bytes;
        let full = current.len() >= MAX_ROWS_PER_BATCH || current_bytes + add > ctx.max_bytes;
        if !current.is_empty() && (oversized || full) {
            emit(
                &ctx,
                std::mem::take(&mut current),
                schema_pending,
                new_id,
                &mut out,
            )?;
            schema_pending = false;
            current_bytes = overhead;
        }
        if oversized {
            out.oversized.push(pc);
            continue;
        }
        current_bytes += add;
        current.push(pc);
    }
    if !current.is_empty() {
        emit(&ctx, current, schema_pending, new_id, &mut out)?;
    }
    Ok(out)
}

/// The end-marker batch of a snapshot run: `rows: []`, first/last_commit_seq =
/// `snapshot_start_seq` (edge-policies §5); acknowledged up to the marker's journal seq `seq`.
fn end_marker(
    ctx: &Ctx<'_>,
    seq: i64,
    fields: &SnapshotFields,
    with_schema: bool,
    new_id: &mut dyn FnMut() -> Uuid,
) -> Result<Built, BatchError> {
    let id = new_id();
    let mut batch = empty_batch(ctx, id, with_schema);
    batch.first_commit_seq = fields.snapshot_start_seq;
    batch.last_commit_seq = fields.snapshot_start_seq;
    batch.snapshot = Some(fields.clone());
    Ok(Built {
        batches: vec![BuiltBatch {
            batch_id: id,
            table: ctx.table.to_owned(),
            first_seq: seq,
            last_seq: seq,
            rows: 0,
            payload: serde_json::to_vec(&batch)?,
        }],
        oversized: Vec::new(),
    })
}

/// Encodes `rows` as one batch, halving until every piece fits (the size estimate is exact up
/// to the digits of the seq numbers, so this is a safety net, not the normal path).
fn emit(
    ctx: &Ctx<'_>,
    mut rows: Vec<PendingChange>,
    with_schema: bool,
    new_id: &mut dyn FnMut() -> Uuid,
    out: &mut Built,
) -> Result<(), BatchError> {
    let id = new_id();
    let n = rows.len();
    let bytes = encode(ctx, id, with_schema, &rows)?;
    if bytes.len() <= ctx.max_bytes || n <= 1 {
        if bytes.len() > ctx.max_bytes {
            out.oversized.extend(rows);
            return Ok(());
        }
        out.batches.push(BuiltBatch {
            batch_id: id,
            table: ctx.table.to_owned(),
            first_seq: rows.iter().map(|r| r.commit_seq).min().unwrap_or(0),
            last_seq: rows.iter().map(|r| r.commit_seq).max().unwrap_or(0),
            rows: n,
            payload: bytes,
        });
        return Ok(());
    }
    drop(bytes);
    let tail = rows.split_off(n / 2);
    emit(ctx, rows, with_schema, new_id, out)?;
    emit(ctx, tail, false, new_id, out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use edge_protocol::batch::{Op, RowChange};
    use edge_protocol::validate::decode_row_batch;
    use edge_protocol::value::{Row, SqlValue};

    fn group(n: usize, text_len: usize) -> ChangeGroup {
        let columns = SchemaColumns::new("t", vec![]);
        let changes = (0..n)
            .map(|i| {
                let mut row = Row::new();
                row.insert("id".into(), SqlValue::Integer(i as i64));
                row.insert("v".into(), SqlValue::Text("x".repeat(text_len)));
                let mut pk = Row::new();
                pk.insert("id".into(), SqlValue::Integer(i as i64));
                let change = RowChange {
                    commit_seq: i as i64 + 1,
                    op: Op::Insert,
                    pk,
                    row: Some(row),
                };
                PendingChange::new(&change).unwrap()
            })
            .collect();
        ChangeGroup {
            table: "t".into(),
            schema_hash: columns.schema_hash(),
            schema_columns: columns,
            changes,
            snapshot: None,
            end_marker_seq: None,
        }
    }

    fn ids() -> impl FnMut() -> Uuid {
        let mut n = 0u64;
        move || {
            n += 1;
            edge_protocol::ids::new_uuid_v7(1_700_000_000_000 + n, [n as u8; 10])
        }
    }

    fn epoch() -> Uuid {
        edge_protocol::ids::new_uuid_v7(1_600_000_000_000, [9; 10])
    }

    #[test]
    fn splits_under_the_payload_limit_and_keeps_order() {
        let mut g = group(2000, 200);
        let built = build_batches(&mut g, epoch(), true, 128 * 1024, &mut ids()).unwrap();
        assert!(built.oversized.is_empty());
        assert!(built.batches.len() >= 3);
        let mut next = 1;
        for (i, b) in built.batches.iter().enumerate() {
            assert!(b.payload.len() <= 128 * 1024);
            let decoded = decode_row_batch(&b.payload).unwrap();
            assert_eq!(decoded.schema_columns.is_some(), i == 0);
            assert_eq!(decoded.first_commit_seq, next);
            next = decoded.last_commit_seq + 1;
            assert_eq!(decoded.batch_id, b.batch_id);
        }
        assert_eq!(next, 2001);
    }

    #[test]
    fn spliced_rows_give_the_bytes_serde_gives_for_the_whole_batch() {
        for with_schema in [true, false] {
            let mut g = group(50, 7);
            let rows: Vec<RowChange> = g.changes.iter().map(|c| c.change().unwrap()).collect();
            let columns = g.schema_columns.clone();
            let built =
                build_batches(&mut g, epoch(), with_schema, 128 * 1024, &mut ids()).unwrap();
            assert_eq!(built.batches.len(), 1);
            let b = &built.batches[0];
            let whole = RowBatch::new(
                b.batch_id,
                epoch(),
                "t",
                columns.schema_hash(),
                with_schema.then_some(columns),
                rows,
            );
            assert_eq!(b.payload, serde_json::to_vec(&whole).unwrap());
            assert_eq!((b.first_seq, b.last_seq, b.rows), (1, 50, 50));
        }
    }

    #[test]
    fn at_most_4096_rows() {
        let mut g = group(10_000, 1);
        let built = build_batches(&mut g, epoch(), false, 512 * 1024, &mut ids()).unwrap();
        assert!(built.batches.iter().all(|b| b.rows <= MAX_ROWS_PER_BATCH));
        assert_eq!(built.batches.iter().map(|b| b.rows).sum::<usize>(), 10_000);
    }

    #[test]
    fn a_row_larger_than_the_limit_goes_to_spill() {
        let mut g = group(3, 10);
        let big = group(1, 200_000).changes.remove(0).change().unwrap();
        let big = RowChange {
            commit_seq: 99,
            ..big
        };
        g.changes.insert(1, PendingChange::new(&big).unwrap());
        let built = build_batches(&mut g, epoch(), false, 128 * 1024, &mut ids()).unwrap();
        assert_eq!(built.oversized.len(), 1);
        assert_eq!(built.oversized[0].commit_seq, 99);
        assert_eq!(built.batches.iter().map(|b| b.rows).sum::<usize>(), 3);
    }

    #[test]
    fn announcer_tracks_hash_changes() {
        let mut a = SchemaAnnouncer::default();
        assert!(a.needs("t", "h1"));
        a.record("t", "h1");
        assert!(!a.needs("t", "h1"));
        assert!(a.needs("t", "h2"));
    }
}
