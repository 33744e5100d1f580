//! Applies the hypertables' compression and retention policies (the decisions:
//! [`edge_cloud_core::timescale`]). Run by `edge-cloud migrate` after the migrations, every time:
//! it reads what the database has and changes only what differs, so re-running it is free and
//! new flags take effect on the next `migrate`.

use edge_cloud_core::timescale::{plan, CurrentPolicy, Hypertable, Policies, TablePolicy};
use tokio_postgres::Client;

use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// What `apply` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyReport {
    /// No `timescaledb` extension in this database: plain tables, no policies.
    NotInstalled,
    /// The extension is there but these tables are plain tables: TimescaleDB was installed after
    /// the first `migrate` (migration 0002 found nothing to do then). Converting a full table takes
    /// a lock on it, so it is left to the operator (docs/deploy.md "TimescaleDB").
    NotHypertables(Vec<&'static str>),
    /// Policies in place; the statements this run executed (empty: nothing changed).
    Applied(Vec<String>),
}

/// Moves every hypertable's policies to `wanted`, in one transaction.
pub async fn apply(client: &mut Client, wanted: &Policies) -> Result<PolicyReport, StoreError> {
    let installed: bool = client
        .query_one_unnamed(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')",
            &[],
        )
        .await?
        .get(0);
    if !installed {
        return Ok(PolicyReport::NotInstalled);
    }
    let mut plain = Vec::new();
    let mut statements = Vec::new();
    for (table, policy) in wanted.tables() {
        let current = current_policy(client, table).await?;
        if !current.is_hypertable {
            plain.push(table.name);
            continue;
        }
        statements.extend(plan(table, policy, current));
    }
    if !plain.is_empty() {
        return Ok(PolicyReport::NotHypertables(plain));
    }
    let tx = client.transaction().await?;
    for sql in &statements {
        tx.batch_execute(sql).await?;
    }
    tx.commit().await?;
    Ok(PolicyReport::Applied(statements))
}

async fn current_policy(client: &Client, table: Hypertable) -> Result<CurrentPolicy, StoreError> {
    let row = client
        .query_opt_unnamed(
            "SELECT h.compression_enabled, \
                 (SELECT extract(epoch FROM (j.config->>'compress_after')::interval)::bigint \
                  FROM timescaledb_information.jobs j \
                  WHERE j.hypertable_schema = h.hypertable_schema \
                    AND j.hypertable_name = h.hypertable_name \
                    AND j.proc_name = 'policy_compression' LIMIT 1), \
                 (SELECT extract(epoch FROM (j.config->>'drop_after')::interval)::bigint \
                  FROM timescaledb_information.jobs j \
                  WHERE j.hypertable_schema = h.hypertable_schema \
                    AND j.hypertable_name = h.hypertable_name \
                    AND j.proc_name = 'policy_retention' LIMIT 1) \
             FROM timescaledb_information.hypertables h \
             WHERE h.hypertable_schema = current_schema() AND h.hypertable_name = $1",
            &[&table.name],
        )
        .await?;
    Ok(match row {
        None => CurrentPolicy::default(),
        Some(r) => CurrentPolicy {
            is_hypertable: true,
            compression_enabled: r.get(0),
            compress_after_s: r.get(1),
            drop_after_s: r.get(2),
        },
    })
}

/// The one line `migrate` prints for a report.
pub fn describe(report: &PolicyReport, wanted: &Policies) -> String {
    let show = |p: TablePolicy| {
        format!(
            "compress after {}, drop after {}",
            p.compress_after.map_or("off".into(), |a| a.to_string()),
            p.drop_after.map_or("off".into(), |a| a.to_string())
        )
    };
    match report {
        PolicyReport::NotInstalled => {
            "timescaledb not installed: plain tables, no compression or retention policies".into()
        }
        PolicyReport::NotHypertables(tables) => format!(
            "timescaledb is installed but {} are plain tables (the extension came after the first \
             migrate): convert them with create_hypertable(..., migrate_data => true) as \
             docs/deploy.md \"TimescaleDB\" shows, then run migrate again",
            tables.join(", ")
        ),
        PolicyReport::Applied(statements) => format!(
            "timescaledb policies: telemetry_data_point_value {}; edge_export_segments {} ({} changed)",
            show(wanted.telemetry),
            show(wanted.ledger),
            statements.len()
        ),
    }
}
