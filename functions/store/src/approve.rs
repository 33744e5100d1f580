//! The development approval path and the staged-row replay it triggers.
//!
//! [`approve_all_columns`] stands in for the review API (next issue): it mirrors every column
//! of the lineage's current schema, creates the mirror table and bindings, activates the
//! lineage, closes open reviews for the hash and replays the staged rows into the mirror — all
//! in the caller's transaction. [`replay_staged`] is the set-based drain the replay worker will
//! reuse.

use std::collections::HashMap;

use edge_cloud_core::mirror::{plan_upserts, MirrorTable, UpsertPlan};
use edge_cloud_core::staged_json;
use edge_cloud_core::telemetry::data_point_value;
use edge_protocol::batch::{Op, RowChange};
use edge_protocol::ids::CommitPosition;
use edge_protocol::value::{row_from_json, Row, ValueError};
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::lineage::{bindings, emit_event, lock_lineage, schema_columns, Bindings};
use crate::mirror::{apply_upserts, ensure_mirror, insert_telemetry_values, TelemetryValue};
use crate::registry::device_by_id;
use crate::StoreError;

/// What a dev-path approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApproveReport {
    pub schema_hash: String,
    pub mirror_table: Option<String>,
    pub replay: ReplayReport,
}

/// What a replay drained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Staged rows written (or superseded) and deleted from staging.
    pub drained: i64,
    /// Rows that stay staged as `materialization_failed`.
    pub failed: i64,
}

/// Dev path: approve every column of the lineage's current schema hash (see module docs).
/// `new_id` supplies fresh UUIDs (data points, the replay intent).
pub async fn approve_all_columns<C: GenericClient>(
    c: &C,
    lineage_id: Uuid,
    mut new_id: impl FnMut() -> Uuid,
) -> Result<ApproveReport, StoreError> {
    let lineage = lock_lineage(c, lineage_id).await?;
    let device = device_by_id(c, lineage.device_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("device {}", lineage.device_id)))?;
    let hash: String = c
        .query_one(
            "SELECT current_schema_hash FROM edge_table_lineages WHERE id = $1",
            &[&lineage_id],
        )
        .await?
        .get::<_, Option<String>>(0)
        .ok_or_else(|| StoreError::NotFound(format!("lineage {lineage_id} has no schema yet")))?;

    let mut mirror_table = None;
    if lineage.kind == "telemetry" {
        // Every field seen in staged rows becomes a data point named `{table}.{field}`.
        c.execute(
            "WITH fields AS ( \
                 SELECT DISTINCT jsonb_object_keys(\"row\") AS f FROM edge_staged_rows \
                 WHERE lineage_id = $1 AND schema_hash = $2 AND jsonb_typeof(\"row\") = 'object'), \
             dps AS ( \
                 INSERT INTO device_data_points (id, org_id, project_id, device_id, name) \
                 SELECT gen_random_uuid(), $3, $4, $5, $6 || '.' || f FROM fields \
                 ON CONFLICT (device_id, name) DO UPDATE SET name = EXCLUDED.name \
                 RETURNING id, name) \
             INSERT INTO edge_column_bindings (lineage_id, schema_hash, source_column_name, \
                 action, device_data_point_id) \
             SELECT $1, $2, substr(dps.name, length($6) + 2), 'map', dps.id FROM dps \
             ON CONFLICT DO NOTHING",
            &[
                &lineage_id,
                &hash,
                &device.org_id,
                &device.project_id,
                &device.device_id,
                &lineage.source_table,
            ],
        )
        .await?;
    } else {
        let columns = schema_columns(c, lineage_id, &hash).await?.ok_or_else(|| {
            StoreError::NotFound(format!(
                "no columns recorded for schema {hash}: a batch carrying schema_columns must arrive first"
            ))
        })?;
        let table = MirrorTable::for_schema(&device.device_id, &columns);
        ensure_mirror(c, &table).await?;
        let sources: Vec<&str> = table
            .columns
            .iter()
            .map(|c| c.source_name.as_str())
            .collect();
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        let types: Vec<&str> = table.columns.iter().map(|c| c.ty.sql()).collect();
        let pks: Vec<i32> = table
            .columns
            .iter()
            .map(|c| i32::try_from(c.pk_ordinal).unwrap_or(0))
            .collect();
        c.execute(
            "INSERT INTO edge_column_bindings (lineage_id, schema_hash, source_column_name, \
                 action, mirror_table_name, mirror_column_name, mirror_type, pk_ordinal) \
             SELECT $1, $2, u.s, 'mirror', $3, u.n, u.t, u.p \
             FROM unnest($4::text[], $5::text[], $6::text[], $7::integer[]) AS u(s, n, t, p) \
             ON CONFLICT DO NOTHING",
            &[
                &lineage_id,
                &hash,
                &table.name,
                &sources,
                &names,
                &types,
                &pks,
            ],
        )
        .await?;
        mirror_table = Some(table.name);
    }
    c.execute(
        "UPDATE edge_table_lineages SET status = 'active', pause_reason = NULL, \
             approved_schema_hash = $2, mirror_table_name = COALESCE($3, mirror_table_name), \
             updated_at = now() WHERE id = $1",
        &[&lineage_id, &hash, &mirror_table],
    )
    .await?;
    let reviews = c
        .query(
            "UPDATE edge_schema_reviews SET state = 'approved', decided_by = 'dev-path', \
                 decided_at = now(), action_version = action_version + 1, updated_at = now() \
             WHERE lineage_id = $1 AND schema_hash = $2 AND state IN ('queued', 'in_review') \
             RETURNING id",
            &[&lineage_id, &hash],
        )
        .await?;
    for r in &reviews {
        emit_event(
            c,
            "integration.edge_schema_review.approved.v1",
            &device,
            Some(r.get(0)),
            serde_json::json!({"lineage_id": lineage_id, "schema_hash": hash, "via": "dev-path"}),
        )
        .await?;
    }
    let intent = new_id();
    c.execute(
        "INSERT INTO edge_replay_intents (id, lineage_id, schema_hash, status, action_kind) \
         VALUES ($1, $2, $3, 'running', 'approve_all_columns')",
        &[&intent, &lineage_id, &hash],
    )
    .await?;
    let replay = replay_staged(c, lineage_id, device.device_id, 2_000).await?;
    c.execute(
        "UPDATE edge_replay_intents SET status = 'done', rows_replayed = $2, updated_at = now() \
         WHERE id = $1",
        &[&intent, &replay.drained],
    )
    .await?;
    Ok(ApproveReport {
        schema_hash: hash,
        mirror_table,
        replay,
    })
}

/// Drains a lineage's staged rows whose schema hash has bindings, in `(epoch, seq)` order and
/// chunks of `chunk` rows, through the same plan and upsert as live batches. Drained rows are
/// deleted (and uncounted); misfits stay staged as `materialization_failed`; rows of unbound
/// hashes stay as they are.
pub async fn replay_staged<C: GenericClient>(
    c: &C,
    lineage_id: Uuid,
    device_id: Uuid,
    chunk: i64,
) -> Result<ReplayReport, StoreError> {
    let mut report = ReplayReport::default();
    let mut cursor: (Uuid, i64, String) = (Uuid::nil(), i64::MIN, String::new());
    let mut binding_cache: HashMap<String, Option<Bindings>> = HashMap::new();
    loop {
        let rows = c
            .query(
                "SELECT journal_epoch, source_commit_seq, pk_key, op, pk::text, \"row\"::text, \
                     schema_hash, event_ts, batch_id, bytes \
                 FROM edge_staged_rows WHERE lineage_id = $1 \
                     AND (journal_epoch, source_commit_seq, pk_key) > ($2, $3, $4) \
                 ORDER BY journal_epoch, source_commit_seq, pk_key LIMIT $5",
                &[&lineage_id, &cursor.0, &cursor.1, &cursor.2, &chunk],
            )
            .await?;
        let Some(last) = rows.last() else { break };
        cursor = (last.get(0), last.get(1), last.get(2));
        // Group by hash, keeping (epoch, seq) order inside each group.
        let mut groups: HashMap<String, Vec<&tokio_postgres::Row>> = HashMap::new();
        for r in &rows {
            groups.entry(r.get(6)).or_default().push(r);
        }
        for (hash, group) in groups {
            if !binding_cache.contains_key(&hash) {
                let b = bindings(c, lineage_id, &hash).await?;
                binding_cache.insert(hash.clone(), b);
            }
            let Some(Some(b)) = binding_cache.get(&hash) else {
                continue;
            };
            let (drained, failed) = replay_group(c, lineage_id, device_id, b, &group).await?;
            report.drained += drained;
            report.failed += failed;
        }
    }
    Ok(report)
}

/// Key of a staged row.
pub(crate) type StagedKey = (Uuid, i64, String);

pub(crate) async fn replay_group<C: GenericClient>(
    c: &C,
    lineage_id: Uuid,
    device_id: Uuid,
    b: &Bindings,
    group: &[&tokio_postgres::Row],
) -> Result<(i64, i64), StoreError> {
    let (drained, failed) = materialize_group(c, lineage_id, device_id, b, group).await?;
    let n_drained = delete_staged(c, lineage_id, &drained).await?;
    Ok((n_drained, failed))
}

/// Writes a group of staged rows of one bound hash and marks its misfits
/// `materialization_failed`; returns the keys of the rows it drained (written or superseded),
/// which the caller deletes.
pub(crate) async fn materialize_group<C: GenericClient>(
    c: &C,
    lineage_id: Uuid,
    device_id: Uuid,
    b: &Bindings,
    group: &[&tokio_postgres::Row],
) -> Result<(Vec<StagedKey>, i64), StoreError> {
    let writes = plan_group(b, group.iter().map(|r| (*r, None)).collect());
    for w in &writes.writes {
        w.apply(c, device_id).await?;
    }
    mark_failed(c, lineage_id, &writes.failed).await?;
    Ok((
        writes.drained,
        i64::try_from(writes.failed.len()).unwrap_or(i64::MAX),
    ))
}

/// The writes a group of staged rows of one bound hash needs, decided on the client before any
/// statement is sent — so the replay worker can send them (and the chunk's deletes) back to back
/// in one pipeline instead of a round trip each.
#[derive(Debug, Default)]
pub(crate) struct GroupWrites<'t> {
    pub writes: Vec<GroupWrite<'t>>,
    /// Rows written or superseded: the caller deletes them.
    pub drained: Vec<StagedKey>,
    /// Misfits with their error: staged on as `materialization_failed`.
    pub failed: Vec<(StagedKey, String)>,
}

/// One statement of a [`GroupWrites`].
#[derive(Debug)]
pub(crate) enum GroupWrite<'t> {
    Upsert(&'t MirrorTable, UpsertPlan),
    Telemetry(Uuid, Vec<TelemetryValue>),
}

impl GroupWrite<'_> {
    pub async fn apply<C: GenericClient>(&self, c: &C, device_id: Uuid) -> Result<u64, StoreError> {
        match self {
            GroupWrite::Upsert(table, plan) => apply_upserts(c, table, device_id, plan).await,
            GroupWrite::Telemetry(batch_id, values) => {
                insert_telemetry_values(c, device_id, *batch_id, values).await
            }
        }
    }
}

/// A staged row and, when the caller already decoded it (the replay worker does while the rows
/// stream in), its change; `None` = decode here.
pub(crate) type StagedRow<'r> = (&'r tokio_postgres::Row, Option<Result<RowChange, String>>);

/// Decodes and plans a group of staged rows of one bound hash (no I/O): the mirror upsert (or
/// the telemetry values of mapped fields), which rows it drains and which are misfits.
pub(crate) fn plan_group<'t>(b: &'t Bindings, group: Vec<StagedRow<'_>>) -> GroupWrites<'t> {
    let key = |r: &tokio_postgres::Row| -> StagedKey { (r.get(0), r.get(1), r.get(2)) };
    let mut out = GroupWrites::default();
    if let Some(table) = &b.mirror {
        let mut changes = Vec::with_capacity(group.len());
        let mut keys = Vec::with_capacity(group.len());
        for (r, decoded) in group {
            match decoded.unwrap_or_else(|| staged_change(r)) {
                Ok(ch) => {
                    changes.push((CommitPosition::new(r.get(0), r.get(1)), ch));
                    keys.push(key(r));
                }
                Err(e) => out.failed.push((key(r), e)),
            }
        }
        let plan = plan_upserts(table, changes.iter().map(|(p, ch)| (*p, ch)));
        let failed_idx: HashMap<usize, &str> = plan
            .failures
            .iter()
            .map(|f| (f.index, f.error.as_str()))
            .collect();
        for (i, k) in keys.into_iter().enumerate() {
            match failed_idx.get(&i) {
                Some(e) => out.failed.push((k, (*e).to_owned())),
                None => out.drained.push(k),
            }
        }
        if !plan.is_empty() {
            out.writes.push(GroupWrite::Upsert(table, plan));
        }
    } else {
        // Telemetry (or map-only) rows: values for the mapped fields.
        let mapped: HashMap<&str, Uuid> = b.mapped.iter().map(|(s, d)| (s.as_str(), *d)).collect();
        let mut by_batch: HashMap<Uuid, Vec<TelemetryValue>> = HashMap::new();
        for (r, _) in group {
            let fields = r
                .get::<_, Option<&str>>(5)
                .map(|text| match parse_staged(text) {
                    Ok(Some(row)) => Ok(row),
                    Ok(None) => Err(ValueError::NotAnObject.to_string()),
                    Err(e) => Err(e),
                })
                .transpose();
            let ts: Option<OffsetDateTime> = r.get(7);
            let batch_id: Uuid = r.get(8);
            let seq: i64 = r.get(1);
            let index = i32::try_from(seq.rem_euclid(4096)).unwrap_or(0);
            match (fields, ts) {
                (Ok(Some(fields)), Some(ts)) => {
                    for (name, v) in &fields {
                        let (Some(dp), Some(val)) =
                            (mapped.get(name.as_str()), data_point_value(v))
                        else {
                            continue;
                        };
                        by_batch.entry(batch_id).or_default().push(TelemetryValue {
                            data_point_id: *dp,
                            ts,
                            row_index: index,
                            numeric: val.numeric,
                            text: val.text,
                            json: val.json,
                            row_id: None,
                        });
                    }
                    out.drained.push(key(r));
                }
                _ => out
                    .failed
                    .push((key(r), "staged telemetry row is unreadable".to_owned())),
            }
        }
        out.writes.extend(
            by_batch
                .into_iter()
                .map(|(batch_id, values)| GroupWrite::Telemetry(batch_id, values)),
        );
    }
    out
}

/// A staged row (read with `pk::text, "row"::text` at columns 4 and 5) as a change.
pub(crate) fn staged_change(r: &tokio_postgres::Row) -> Result<RowChange, String> {
    let op: String = r.get(3);
    let op = Op::from_wire(&op).ok_or_else(|| format!("staged op {op:?}"))?;
    let pk = match r.get::<_, Option<&str>>(4).map(parse_staged).transpose()? {
        None => Row::new(),
        Some(Some(pk)) => pk,
        Some(None) => return Err(ValueError::NotAnObject.to_string()),
    };
    let row = r
        .get::<_, Option<&str>>(5)
        .map(parse_staged)
        .transpose()?
        .flatten();
    Ok(RowChange {
        commit_seq: r.get(1),
        op,
        pk,
        row,
    })
}

/// Parses a staged `pk`/`row` value from its JSON text; `None` for JSON `null`.
///
/// Replay reads thousands of these per chunk, so the common case goes straight from text to
/// protocol values in one pass. Text that may hold the NUL marker (cloud-internal, see
/// [`staged_json`]) — or that the direct parse refuses — goes the long way: a JSON tree,
/// marker restore, then [`row_from_json`]. The long way is also what reports the error, so
/// both ways give the same outcome and message for every input.
pub(crate) fn parse_staged(text: &str) -> Result<Option<Row>, String> {
    if !text.contains(staged_json::NUL_TEXT_MARKER) {
        if let Ok(row) = serde_json::from_str::<Row>(text) {
            return Ok(Some(row));
        }
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let value = staged_json::decode(&value);
    if value.is_null() {
        return Ok(None);
    }
    row_from_json(&value).map(Some).map_err(|e| e.to_string())
}

async fn delete_staged<C: GenericClient>(
    c: &C,
    lineage_id: Uuid,
    keys: &[StagedKey],
) -> Result<i64, StoreError> {
    if keys.is_empty() {
        return Ok(0);
    }
    let epochs: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let seqs: Vec<i64> = keys.iter().map(|k| k.1).collect();
    let pks: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
    let row = c
        .query_one(
            "WITH del AS ( \
                 DELETE FROM edge_staged_rows s USING unnest($2::uuid[], $3::bigint[], $4::text[]) \
                     AS u(e, q, k) \
                 WHERE s.lineage_id = $1 AND s.journal_epoch = u.e AND s.source_commit_seq = u.q \
                     AND s.pk_key = u.k \
                 RETURNING s.bytes), \
             counted AS (SELECT count(*) AS n, COALESCE(sum(bytes), 0)::bigint AS b FROM del), \
             upd AS ( \
                 UPDATE edge_table_lineages l SET \
                     staged_row_count = greatest(l.staged_row_count - counted.n, 0), \
                     staged_bytes = greatest(l.staged_bytes - counted.b, 0), updated_at = now() \
                 FROM counted WHERE l.id = $1) \
             SELECT n FROM counted",
            &[&lineage_id, &epochs, &seqs, &pks],
        )
        .await?;
    Ok(row.get(0))
}

pub(crate) async fn mark_failed<C: GenericClient>(
    c: &C,
    lineage_id: Uuid,
    failed: &[(StagedKey, String)],
) -> Result<(), StoreError> {
    if failed.is_empty() {
        return Ok(());
    }
    let epochs: Vec<Uuid> = failed.iter().map(|k| k.0 .0).collect();
    let seqs: Vec<i64> = failed.iter().map(|k| k.0 .1).collect();
    let pks: Vec<&str> = failed.iter().map(|k| k.0 .2.as_str()).collect();
    let errors: Vec<&str> = failed.iter().map(|k| k.1.as_str()).collect();
    c.execute(
        "WITH upd AS ( \
             UPDATE edge_staged_rows s SET staging_reason = 'materialization_failed', error = u.err \
             FROM unnest($2::uuid[], $3::bigint[], $4::text[], $5::text[]) AS u(e, q, k, err) \
             WHERE s.lineage_id = $1 AND s.journal_epoch = u.e AND s.source_commit_seq = u.q \
                 AND s.pk_key = u.k AND s.staging_reason <> 'materialization_failed' \
             RETURNING u.err) \
         UPDATE edge_table_lineages l SET \
             materialization_failure_count = l.materialization_failure_count \
                 + (SELECT count(*) FROM upd)::integer, \
             materialization_last_error = COALESCE((SELECT max(err) FROM upd), \
                 l.materialization_last_error), \
             updated_at = now() \
         WHERE l.id = $1",
        &[&lineage_id, &epochs, &seqs, &pks, &errors],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What replay did before [`parse_staged`]: a JSON tree, marker restore, then the protocol
    /// decoder (`None` for JSON null).
    fn reference(text: &str) -> Result<Option<Row>, String> {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let v = staged_json::decode(&v);
        if v.is_null() {
            return Ok(None);
        }
        row_from_json(&v).map(Some).map_err(|e| e.to_string())
    }

    #[test]
    fn parse_staged_agrees_with_the_tree_decoder_on_every_kind_of_value() {
        let nul = staged_json::encode(&serde_json::json!({"id": 1, "note": "a\u{0}b"}));
        let cases = [
            r#"{"id": 1, "mode": "heat", "setpoint": 20.5}"#.to_owned(),
            r#"{"id": 1, "mode": null, "setpoint": null, "raw": null}"#.to_owned(),
            r#"{"id": -9223372036854775808, "max": 9223372036854775807}"#.to_owned(),
            // u64 range: not an SQLite integer (an error, with the same message both ways).
            r#"{"id": 9223372036854775808}"#.to_owned(),
            // jsonb prints whole reals without exponent; both ways read them the same.
            r#"{"r": 5.0, "big": 10000000000000000000000, "tiny": 0.000000000000000000001}"#
                .to_owned(),
            r#"{"r": 0.30000000000000004, "neg": -0.0, "e": 1.7976931348623157}"#.to_owned(),
            r#"{"inf": {"$real": "inf"}, "ninf": {"$real": "-inf"}}"#.to_owned(),
            r#"{"raw": {"$base64": "AP8B"}, "empty": {"$base64": ""}}"#.to_owned(),
            r#"{"raw": {"$base64": "not base64!"}}"#.to_owned(),
            r#"{"q": "it's \"quoted\" \\ back\\slash", "u": "ünïcödé ✓ 😀 \u2028"}"#.to_owned(),
            r#"{"marker_like": "$text_with_nul", "x": "{\"$base64\": \"AA==\"}"}"#.to_owned(),
            nul.to_string(),
            r#"{"note": {"$text_with_nul": "***"}}"#.to_owned(),
            r#"{"nested": {"a": 1}}"#.to_owned(),
            r#"{"b": true}"#.to_owned(),
            r#"{"arr": [1, 2]}"#.to_owned(),
            r#"{"$real": "inf"}"#.to_owned(),
            r#"{}"#.to_owned(),
            "null".to_owned(),
            "5".to_owned(),
            r#""text""#.to_owned(),
            "[1]".to_owned(),
        ];
        for text in &cases {
            assert_eq!(parse_staged(text), reference(text), "{text}");
        }
        let restored = parse_staged(&nul.to_string()).unwrap().unwrap();
        assert_eq!(
            restored.get("note"),
            Some(&edge_protocol::value::SqlValue::Text("a\u{0}b".into()))
        );
    }
}
