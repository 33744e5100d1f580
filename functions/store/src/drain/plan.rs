//! Decoding and planning a group of staged rows of one bound hash, before any statement is
//! sent (no I/O): the mirror upsert or the telemetry values, which rows drain and which are
//! misfits.

use std::collections::HashMap;

use edge_cloud_core::mirror::{plan_upserts, MirrorTable, UpsertPlan};
use edge_cloud_core::staged_json;
use edge_cloud_core::telemetry::data_point_value;
use edge_protocol::batch::{Op, RowChange};
use edge_protocol::ids::{uuid_v7_unix_ms, CommitPosition};
use edge_protocol::value::{row_from_json, Row, ValueError};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::lineage::Bindings;
use crate::mirror::TelemetryValue;

/// Key of a staged row.
pub(crate) type StagedKey = (Uuid, i64, String);

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
    /// The newest [`source_time`] of the drained rows: what the lineage's
    /// `newest_materialized_source_at` rises to when they are deleted.
    pub newest_source: Option<OffsetDateTime>,
}

impl GroupWrites<'_> {
    fn drain(&mut self, key: StagedKey, r: &tokio_postgres::Row) {
        self.drained.push(key);
        self.newest_source = self.newest_source.max(source_time(r));
    }
}

/// The source time of a staged row (observability.md §4): a telemetry row's `ts` (the newest
/// row of a batch is its `cursor_end_ts`), else the UUIDv7 time of its batch id — what the live
/// intake records for the same batch (`edge_cloud_store::lineage::Received`).
pub(crate) fn source_time(r: &tokio_postgres::Row) -> Option<OffsetDateTime> {
    if r.get::<_, &str>(3) == "telemetry" {
        return r.get(7);
    }
    let ms = uuid_v7_unix_ms(&r.get(8))?;
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// One statement of a [`GroupWrites`].
#[derive(Debug)]
pub(crate) enum GroupWrite<'t> {
    Upsert(&'t MirrorTable, UpsertPlan),
    Telemetry(Uuid, Vec<TelemetryValue>),
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
                    keys.push((key(r), r));
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
        for (i, (k, r)) in keys.into_iter().enumerate() {
            match failed_idx.get(&i) {
                Some(e) => out.failed.push((k, (*e).to_owned())),
                None => out.drain(k, r),
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
                    out.drain(key(r), r);
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
    let mut value = staged_json::decode(&value);
    if value.is_null() {
        return Ok(None);
    }
    wide_integers_as_reals(&mut value);
    row_from_json(&value).map(Some).map_err(|e| e.to_string())
}

/// jsonb prints every number in plain decimal, so a staged REAL of 2^63 or more (below 2^64)
/// reads back as an integer outside the i64 range. No SQLite INTEGER is ever there, so such a
/// number is that REAL (reliability.md §6); every other number decodes as usual.
fn wide_integers_as_reals(value: &mut serde_json::Value) {
    let Some(map) = value.as_object_mut() else {
        return;
    };
    for v in map.values_mut() {
        if let serde_json::Value::Number(n) = v {
            if n.is_u64() && n.as_i64().is_none() {
                if let Some(f) = n.as_f64().and_then(serde_json::Number::from_f64) {
                    *n = f;
                }
            }
        }
    }
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
        // u64 range: never an SQLite integer, so the REAL jsonb printed in plain decimal.
        assert_eq!(
            parse_staged(r#"{"r": 9223372036854775808}"#)
                .unwrap()
                .unwrap()["r"],
            edge_protocol::value::SqlValue::Real(9_223_372_036_854_775_808.0)
        );
        let restored = parse_staged(&nul.to_string()).unwrap().unwrap();
        assert_eq!(
            restored.get("note"),
            Some(&edge_protocol::value::SqlValue::Text("a\u{0}b".into()))
        );
    }
}
