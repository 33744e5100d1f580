//! The store's error types: [`StoreError`] (with the transient/permanent split of database
//! errors), [`OpError`] of the API's operations and [`ResetError`] of reset-materialization.

use edge_cloud_core::backpressure::ResetRefusal;
use tokio_postgres::error::SqlState;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {}", db_error_text(.0))]
    Db(#[from] tokio_postgres::Error),
    /// The message names the connection failure ([`crate::connect::describe_pool_error`]):
    /// deadpool's and tokio-postgres's own texts stop at "error performing TLS handshake".
    #[error("connection pool: {}", crate::connect::describe_pool_error(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
    #[error("pool configuration: {0}")]
    PoolBuild(#[from] deadpool_postgres::BuildError),
    #[error("migration {version} ({name}) failed: {}", db_error_text(source))]
    Migration {
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("not found: {0}")]
    NotFound(String),
}

impl StoreError {
    /// True when retrying the same work later can succeed: the database is unreachable or
    /// restarting, the pool timed out, or the transaction lost a serialization/deadlock race.
    /// Everything else (constraint and data errors, corrupt rows) is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(_) => true,
            StoreError::Db(e) | StoreError::Migration { source: e, .. } => db_error_is_transient(e),
            StoreError::PoolBuild(_)
            | StoreError::Connect(_)
            | StoreError::Corrupt(_)
            | StoreError::NotFound(_) => false,
        }
    }
}

/// Transient by SQLSTATE class: 08 connection, 40 transaction rollback (serialization,
/// deadlock), 53 insufficient resources, 57 operator intervention (shutdown, cancel), 58 system
/// error. An error without SQLSTATE is a broken connection or I/O — transient too.
pub fn db_error_is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("40")
                || c.starts_with("53")
                || c.starts_with("57")
                || c.starts_with("58")
                || *code == SqlState::LOCK_NOT_AVAILABLE
        }
    }
}

/// A database error as an operator needs it: tokio-postgres displays a server's error as just
/// "db error"; the SQLSTATE and the server's message say what happened.
pub fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Why an API operation did not happen (the API maps each variant to a status code).
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for OpError {
    fn from(e: tokio_postgres::Error) -> Self {
        OpError::Store(StoreError::Db(e))
    }
}

/// Why reset-materialization did not run.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// HTTP 409.
    #[error(transparent)]
    Refused(#[from] ResetRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}
