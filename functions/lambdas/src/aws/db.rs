//! The database pool as a Lambda uses it.
//!
//! A Lambda environment is frozen between invocations, for seconds or for hours. Its pooled
//! connections survive the freeze as file descriptors, but the server side may not: RDS Proxy
//! drops idle client connections (30 min by default), a NAT forgets the flow after 350 s, a
//! failover resets everything. Two measures keep the first request after a thaw from failing
//! or hanging on such a connection:
//! - **verified recycling**: every checkout of an idle connection runs an empty query first
//!   (deadpool's `RecyclingMethod::Verified`); a connection that fails it is discarded and a
//!   new one is opened, transparently. Cost: one round trip per checkout (well under 1 ms to
//!   RDS Proxy in the same AZ).
//! - **thaw sweep**: a connection whose peer vanished silently would make that check wait for
//!   TCP's retransmission timeout, so when the wall clock says the environment was idle longer
//!   than [`STALE_AFTER`], every idle connection is dropped before the request. The wall clock,
//!   not `Instant`: whether the monotonic clock advances while a microVM is paused is not
//!   something to rely on.
//!
//! TLS: `verify-full` unless the database URL says otherwise (`sslmode=…`), against the URL's
//! `sslrootcert` or, when it names none, [`SSLROOTCERT_ENV`]: `system` through RDS Proxy (its
//! certificate is an ACM one under Amazon's public roots), the RDS CA bundle
//! (`global-bundle.pem`, shipped with the function) for a direct RDS endpoint, whose RDS CAs
//! are in no public root store (docs/deploy.md "Database TLS"). RDS for PostgreSQL 15+
//! (`rds.force_ssl`) and a TLS-requiring RDS Proxy refuse plaintext anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Pool, RecyclingMethod};
use edge_cloud_store::connect::{DbTarget, RootCerts, TlsDefaults};

use super::AwsError;

/// Environment variable naming the CA bundle (a PEM file, or `system`) the Lambdas verify the
/// database's certificate against when the URL has no `sslrootcert`.
pub const SSLROOTCERT_ENV: &str = "EDGE_DB_SSLROOTCERT";

/// Idle time after which pooled connections are not trusted any more.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// A pool for a Lambda: verified recycling, connect timeout and TCP keepalives (so a dead peer
/// is noticed mid-request too), TLS `verify-full` by default (see the module doc).
pub fn lambda_pool(url: &str, max_size: usize) -> Result<Pool, AwsError> {
    let sslrootcert = std::env::var(SSLROOTCERT_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| RootCerts::parse(v.trim()));
    let mut target = DbTarget::parse(url, &TlsDefaults::aws(sslrootcert))
        .map_err(|e| AwsError::Config(e.to_string()))?;
    let config = target.config_mut();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    edge_cloud_store::pool::pool_for(target, max_size, RecyclingMethod::Verified)
        .map_err(|e| AwsError::Config(format!("database pool: {e}")))
}

/// Remembers when the last invocation ran and drops idle connections after a long pause.
#[derive(Debug, Default)]
pub struct ThawGuard {
    last_ms: AtomicU64,
}

impl ThawGuard {
    /// Call at the start of every invocation. Returns how many idle connections were dropped.
    pub fn before_request(&self, pool: &Pool) -> usize {
        self.before_request_at(pool, now_ms())
    }

    pub fn before_request_at(&self, pool: &Pool, now_ms: u64) -> usize {
        let last = self.last_ms.swap(now_ms, Ordering::Relaxed);
        let stale_ms = u64::try_from(STALE_AFTER.as_millis()).unwrap_or(u64::MAX);
        if last == 0 || now_ms.saturating_sub(last) <= stale_ms {
            return 0;
        }
        // Only idle connections are in the slots; ones checked out by a running request are
        // not touched.
        let dropped = pool.retain(|_, _| false).removed.len();
        if dropped > 0 {
            tracing::info!(
                dropped,
                idle_ms = now_ms - last,
                "thawed: dropped idle database connections"
            );
        }
        dropped
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
