//! Versioned SQL migrations, embedded in the binary and applied in order, once each.
//!
//! `schema_migrations` records what ran. Each migration runs in its own transaction together
//! with its bookkeeping row, so a crash leaves either all of a migration or none of it, and
//! concurrent migrators (several runners or Lambdas starting at once) serialize on an advisory
//! lock held by that transaction — safe through a transaction-mode pooler too.

use tokio_postgres::Client;

use crate::unnamed::UnnamedStatements;
use crate::StoreError;

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Append only: never edit a released file.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "core",
        sql: include_str!("../migrations/0001_core.sql"),
    },
    Migration {
        version: 2,
        name: "timescale",
        sql: include_str!("../migrations/0002_timescale.sql"),
    },
    Migration {
        version: 3,
        name: "flow_control",
        sql: include_str!("../migrations/0003_flow_control.sql"),
    },
    Migration {
        version: 4,
        name: "registry",
        sql: include_str!("../migrations/0004_registry.sql"),
    },
    Migration {
        version: 5,
        name: "event_forwarding",
        sql: include_str!("../migrations/0005_event_forwarding.sql"),
    },
    Migration {
        version: 6,
        name: "spill_uploads",
        sql: include_str!("../migrations/0006_spill_uploads.sql"),
    },
    Migration {
        version: 7,
        name: "dead_letters",
        sql: include_str!("../migrations/0007_dead_letters.sql"),
    },
    Migration {
        version: 8,
        name: "runner_presence",
        sql: include_str!("../migrations/0008_runner_presence.sql"),
    },
    Migration {
        version: 9,
        name: "snapshot_runs",
        sql: include_str!("../migrations/0009_snapshot_runs.sql"),
    },
    Migration {
        version: 10,
        name: "mirror_owners",
        sql: include_str!("../migrations/0010_mirror_owners.sql"),
    },
    Migration {
        version: 11,
        name: "device_blocks",
        sql: include_str!("../migrations/0011_device_blocks.sql"),
    },
    Migration {
        version: 12,
        name: "lineage_health",
        sql: include_str!("../migrations/0012_lineage_health.sql"),
    },
];

/// Arbitrary constant naming the migration advisory lock.
const MIGRATION_LOCK: i64 = 0x6564_6765_5f6d_6967; // "edge_mig"

/// Applies the migrations not yet recorded; returns the versions applied by this call.
///
/// Each migration is one transaction that first takes the advisory lock *of that transaction*
/// (`pg_advisory_xact_lock`), then checks `schema_migrations`, applies and records. A session
/// lock would not survive a transaction-mode pooler (pgbouncer, RDS Proxy): the lock and the
/// unlock could run on different server connections, leaving the lock held on one of them.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let wrap = |source| StoreError::Migration {
            version: m.version,
            name: m.name,
            source,
        };
        let tx = client.transaction().await?;
        tx.execute_unnamed("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        let done = tx
            .query_opt_unnamed(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&m.version],
            )
            .await?
            .is_some();
        if done {
            tx.commit().await?;
            continue;
        }
        tx.batch_execute(m.sql).await.map_err(wrap)?;
        tx.execute_unnamed(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(wrap)?;
        tx.commit().await.map_err(wrap)?;
        applied.push(m.version);
    }
    Ok(applied)
}

/// A mirror table written by more than its recorded owner: a collision from before
/// `edge_mirror_tables` (reliability.md §3), reported by `edge-cloud migrate` and left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorCollision {
    pub table_name: String,
    /// `lineage <id>` or `coalesced_mirror <id>`, with its org and project.
    pub owner: String,
    /// The other lineages / coalesced mirrors that name the table.
    pub others: Vec<String>,
}

impl std::fmt::Display for MirrorCollision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mirror table {:?} is owned by {} but also named by {}",
            self.table_name,
            self.owner,
            self.others.join(", ")
        )
    }
}

/// Mirror tables named by a lineage or coalesced mirror other than their owner (a lineage
/// adopted into the coalesced mirror that owns its table is not a collision).
pub async fn mirror_collisions(client: &Client) -> Result<Vec<MirrorCollision>, StoreError> {
    let rows = client
        .query_unnamed(
            "WITH named AS ( \
                 SELECT l.mirror_table_name AS t, 'lineage ' || l.id || ' (org ' || l.org_id \
                         || ', project ' || l.project_id || ')' AS who, \
                     l.id AS lid, NULL::uuid AS cid, l.project_id \
                 FROM edge_table_lineages l WHERE l.mirror_table_name IS NOT NULL \
                 UNION ALL \
                 SELECT m.mirror_table_name, 'coalesced_mirror ' || m.id || ' (org ' || m.org_id \
                         || ', project ' || m.project_id || ')', NULL, m.id, m.project_id \
                 FROM edge_coalesced_mirrors m) \
             SELECT o.table_name, \
                 CASE WHEN o.lineage_id IS NOT NULL THEN 'lineage ' || o.lineage_id \
                     ELSE 'coalesced_mirror ' || o.coalesced_mirror_id END \
                     || ' (org ' || o.org_id || ', project ' || o.project_id || ')', \
                 array_agg(n.who ORDER BY n.who) \
             FROM edge_mirror_tables o JOIN named n ON n.t = o.table_name \
             WHERE NOT (n.lid IS NOT DISTINCT FROM o.lineage_id \
                         AND n.cid IS NOT DISTINCT FROM o.coalesced_mirror_id) \
                 AND NOT (o.coalesced_mirror_id IS NOT NULL AND n.lid IS NOT NULL \
                          AND n.project_id = o.project_id) \
             GROUP BY o.table_name, o.lineage_id, o.coalesced_mirror_id, o.org_id, o.project_id \
             ORDER BY o.table_name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| MirrorCollision {
            table_name: r.get(0),
            owner: r.get(1),
            others: r.get(2),
        })
        .collect())
}

/// Whether the time-series tables are hypertables (TimescaleDB present when 0002 ran).
pub async fn hypertables_enabled(client: &Client) -> Result<bool, StoreError> {
    let row = client
        .query_one_unnamed(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}
