//! Versioned SQL migrations, embedded in the binary and applied in order, once each.
//!
//! `schema_migrations` records what ran. Concurrent migrators (several runners or Lambdas
//! starting at once) serialize on an advisory lock, and each migration runs in its own
//! transaction together with its bookkeeping row, so a crash leaves either all of a migration
//! or none of it.

use tokio_postgres::Client;

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
        name: "device_blocks",
        sql: include_str!("../migrations/0008_device_blocks.sql"),
    },
];

/// Arbitrary constant naming the migration advisory lock.
const MIGRATION_LOCK: i64 = 0x6564_6765_5f6d_6967; // "edge_mig"

/// Applies the migrations not yet recorded; returns the versions applied by this call.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply_pending(client).await;
    // Unlock even after a failure; the session may be reused from a pool.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_pending(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let done: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        let wrap = |source| StoreError::Migration {
            version: m.version,
            name: m.name,
            source,
        };
        let tx = client.transaction().await.map_err(wrap)?;
        tx.batch_execute(m.sql).await.map_err(wrap)?;
        tx.execute(
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

/// Whether the time-series tables are hypertables (TimescaleDB present when 0002 ran).
pub async fn hypertables_enabled(client: &Client) -> Result<bool, StoreError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}
