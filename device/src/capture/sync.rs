//! Schema sync: the desired trigger set recomputed from the live schema and compared, text for
//! text, with the installed triggers (one transaction), and the stored row-image layouts
//! (`__omega_schemas`) the reader decodes with.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, Connection, TransactionBehavior};
use tracing::{info, warn};

use super::schema::{self, Enrolment, RowsTable};
use super::triggers::{self, TriggerSql, TRIGGER_PREFIX};
use super::{ident, Capture, CaptureError, Catalog, PollReport, RowsEntry, StoredSchema};
use crate::state::{counter, StateDb};

impl Capture {
    /// Re-reads the schema and makes the installed triggers match it (one transaction).
    pub fn sync_schema(
        &mut self,
        state: &mut StateDb,
        first_run: bool,
        report: &mut PollReport,
    ) -> Result<(), CaptureError> {
        report.schema_synced = true;
        let config = self.config.clone();
        let known: BTreeMap<String, crate::state::TableState> = state
            .tables()?
            .into_iter()
            .map(|t| (t.table_name.clone(), t))
            .collect();
        let mut catalog = Catalog::default();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let tables = schema::list_user_tables(&tx)?;
        let existing = installed_triggers(&tx)?;
        let mut desired: BTreeMap<String, (String, TriggerSql)> = BTreeMap::new();
        for info in &tables {
            match schema::enrol(info, &config.table(&info.name)) {
                Enrolment::Rows(rows) => {
                    let table_id = ensure_table_id(&tx, &info.name)?;
                    let schema_id = ensure_schema_id(&tx, &rows)?;
                    let entry = RowsEntry {
                        table: rows,
                        table_id,
                        schema_id,
                    };
                    for t in triggers::trigger_set(&entry.plan()) {
                        desired.insert(t.name.clone(), (info.name.clone(), t));
                    }
                    catalog.rows.insert(info.name.clone(), entry);
                }
                Enrolment::Telemetry(t) => {
                    catalog.telemetry.insert(info.name.clone(), t);
                }
                Enrolment::Ignored => {
                    catalog.ignored.insert(info.name.clone());
                }
                Enrolment::NotEnrolled { reason } => {
                    catalog.not_enrolled.insert(info.name.clone(), reason);
                }
            }
        }
        // A table whose triggers were installed before but none are on it now lost them with a
        // DROP TABLE (rebuild migration, or drop + create): writes in between were not captured.
        let mut rebuilt = Vec::new();
        for name in catalog.rows.keys() {
            let had = known.get(name).is_some_and(|t| t.triggers_installed);
            let has_any = existing.values().any(|(tbl, _)| tbl == name);
            if had && !has_any {
                rebuilt.push(name.clone());
            }
        }
        let mut changed_tables = BTreeSet::new();
        for (name, (tbl, sql)) in &existing {
            let keep = desired
                .get(name)
                .is_some_and(|(t, want)| t == tbl && &want.sql == sql);
            if !keep {
                tx.execute_batch(&format!(
                    "DROP TRIGGER IF EXISTS {}",
                    ident::quote_ident(name)
                ))?;
                changed_tables.insert(tbl.clone());
            }
        }
        for (name, (tbl, want)) in &desired {
            let present = existing
                .get(name)
                .is_some_and(|(t, sql)| t == tbl && sql == &want.sql);
            if !present {
                tx.execute_batch(&want.sql)?;
                changed_tables.insert(tbl.clone());
            }
        }
        tx.commit()?;
        self.schema_version = Some(self.current_schema_version()?);

        for (name, entry) in &catalog.rows {
            let prev = known.get(name);
            let hash = &entry.table.schema_hash;
            if prev.is_some_and(|p| p.schema_hash.as_deref() != Some(hash.as_str())) {
                info!(table = %name, schema_hash = %hash, "schema changed; triggers re-created");
                state.bump_counter(counter::SCHEMA_CHANGES, name, 1)?;
            }
            let newly = prev.is_none_or(|p| p.enrolment != "enrolled");
            state.record_enrolment(name, "rows", "enrolled", None, Some(hash))?;
            state.set_triggers_installed(name, true)?;
            if newly {
                info!(table = %name, "table enrolled for row capture");
                report.enrolled.push(name.clone());
                // Rows written before the triggers existed are only reachable by a snapshot; on
                // the very first run the operator decides (snapshot_on_first_run).
                let snap = if first_run {
                    config.snapshot_on_first_run
                } else {
                    true
                };
                if snap {
                    state.set_needs_snapshot(name, true)?;
                }
            }
        }
        for name in &rebuilt {
            warn!(table = %name, "capture triggers vanished (table rebuilt or dropped and \
                re-created); re-installed them and scheduled a re-snapshot");
            state.bump_counter(counter::TABLE_REBUILDS, name, 1)?;
            state.set_needs_snapshot(name, true)?;
        }
        for (name, t) in &catalog.telemetry {
            state.record_enrolment(name, "telemetry", "enrolled", None, Some(&t.schema_hash))?;
        }
        for name in &catalog.ignored {
            state.record_enrolment(name, "ignore", "ignored", None, None)?;
        }
        for (name, reason) in &catalog.not_enrolled {
            if known.get(name).and_then(|t| t.reason.as_deref()) != Some(reason.as_str()) {
                warn!(table = %name, %reason, "table not enrolled");
            }
            state.record_enrolment(name, "rows", "not_enrolled", Some(reason), None)?;
        }
        for (name, prev) in &known {
            let present = tables.iter().any(|t| &t.name == name);
            if !present && prev.enrolment != "dropped" {
                info!(table = %name, "table no longer exists; pending entries still publish");
                state.record_enrolment(name, &prev.strategy, "dropped", None, None)?;
                state.set_triggers_installed(name, false)?;
            }
        }
        report.triggers_changed = changed_tables
            .into_iter()
            .filter(|t| catalog.rows.contains_key(t))
            .collect();
        report.rebuilt = rebuilt;
        self.catalog = catalog;
        self.load_schemas()?;
        Ok(())
    }

    /// Reloads `__omega_schemas` into the cache used to decode journal entries.
    fn load_schemas(&mut self) -> Result<(), CaptureError> {
        let mut stmt = self.conn.prepare(
            "SELECT schema_id, table_name, schema_hash, columns, pk_columns, schema_columns \
             FROM \"__omega_schemas\"",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut schemas = BTreeMap::new();
        for (schema_id, table, schema_hash, columns, pk, schema_columns) in rows {
            let bad = |what: &str| CaptureError::BadEntry {
                commit_seq: 0,
                what: format!("__omega_schemas row {schema_id}: bad {what}"),
            };
            schemas.insert(
                schema_id,
                StoredSchema {
                    schema_id,
                    table,
                    schema_hash,
                    columns: serde_json::from_str(&columns).map_err(|_| bad("columns"))?,
                    pk: serde_json::from_str(&pk).map_err(|_| bad("pk_columns"))?,
                    schema_columns: serde_json::from_str(&schema_columns)
                        .map_err(|_| bad("schema_columns"))?,
                },
            );
        }
        drop(stmt);
        self.schemas = schemas;
        Ok(())
    }

    /// The stored schema `schema_id` (reloading the cache once on a miss).
    pub fn stored_schema(&mut self, schema_id: i64) -> Result<Option<&StoredSchema>, CaptureError> {
        if !self.schemas.contains_key(&schema_id) {
            self.load_schemas()?;
        }
        Ok(self.schemas.get(&schema_id))
    }

    /// All schema ids recorded for `table`.
    pub(super) fn schema_ids_of(&self, table: &str) -> Vec<i64> {
        self.schemas
            .values()
            .filter(|s| s.table == table)
            .map(|s| s.schema_id)
            .collect()
    }
}

/// Triggers the agent owns: name → (table, sql).
fn installed_triggers(
    conn: &Connection,
) -> Result<BTreeMap<String, (String, String)>, CaptureError> {
    let mut stmt = conn.prepare(
        "SELECT name, tbl_name, sql FROM sqlite_schema WHERE type = 'trigger' \
         AND substr(name, 1, ?1) = ?2",
    )?;
    let rows = stmt
        .query_map(params![TRIGGER_PREFIX.len() as i64, TRIGGER_PREFIX], |r| {
            Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?)))
        })?
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    Ok(rows)
}

fn ensure_table_id(conn: &Connection, table: &str) -> Result<i64, CaptureError> {
    conn.execute(
        "INSERT OR IGNORE INTO \"__omega_tables\"(table_name) VALUES(?1)",
        [table],
    )?;
    Ok(conn.query_row(
        "SELECT table_id FROM \"__omega_tables\" WHERE table_name = ?1",
        [table],
        |r| r.get(0),
    )?)
}

fn ensure_schema_id(conn: &Connection, rows: &RowsTable) -> Result<i64, CaptureError> {
    let columns: Vec<&str> = rows.captured.iter().map(|c| c.name.as_str()).collect();
    let columns = serde_json::Value::from(columns).to_string();
    let pk = serde_json::Value::from(rows.pk.clone()).to_string();
    conn.execute(
        "INSERT OR IGNORE INTO \"__omega_schemas\"(table_name, schema_hash, columns, pk_columns, \
         schema_columns) VALUES(?1, ?2, ?3, ?4, ?5)",
        params![
            rows.info.name,
            rows.schema_hash,
            columns,
            pk,
            rows.schema.canonical_json()
        ],
    )?;
    Ok(conn.query_row(
        "SELECT schema_id FROM \"__omega_schemas\" WHERE table_name = ?1 AND schema_hash = ?2 \
         AND columns = ?3",
        params![rows.info.name, rows.schema_hash, columns],
        |r| r.get(0),
    )?)
}
