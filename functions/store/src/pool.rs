//! The connection pool. Built once per process (Lambda cold start or runner start).

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::StoreError;

/// A pool over `url` (libpq key/value or `postgres://` URL), at most `max_size` connections.
///
/// TLS: none here — the local stack and the harness use loopback; in AWS the pooler (RDS
/// Proxy) terminates TLS inside the VPC.
pub fn connect(url: &str, max_size: usize) -> Result<Pool, StoreError> {
    let config: tokio_postgres::Config = url.parse()?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager).max_size(max_size).build()?)
}
