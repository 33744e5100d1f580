//! The connection pool. Built once per process (Lambda cold start or runner start).

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use crate::connect::{DbTarget, TlsDefaults};
use crate::StoreError;

/// A pool over `url` (libpq key/value or `postgres://` URL), at most `max_size` connections.
///
/// TLS as the URL's `sslmode`/`sslrootcert` say, libpq's `prefer` when it says nothing (see
/// [`crate::connect`]). The Lambdas build theirs with the AWS default (`verify-full`) instead.
pub fn connect(url: &str, max_size: usize) -> Result<Pool, StoreError> {
    connect_with(url, &TlsDefaults::LOCAL, max_size, RecyclingMethod::Fast)
}

/// A pool over `url` with the given TLS defaults and recycling.
pub fn connect_with(
    url: &str,
    defaults: &TlsDefaults,
    max_size: usize,
    recycling_method: RecyclingMethod,
) -> Result<Pool, StoreError> {
    pool_for(DbTarget::parse(url, defaults)?, max_size, recycling_method)
}

/// A pool over an already parsed target.
pub fn pool_for(
    target: DbTarget,
    max_size: usize,
    recycling_method: RecyclingMethod,
) -> Result<Pool, StoreError> {
    let tls = target.tls()?;
    let manager = Manager::from_config(
        target.config().clone(),
        tls,
        ManagerConfig { recycling_method },
    );
    Ok(Pool::builder(manager).max_size(max_size).build()?)
}
