//! The object store of spill/snapshot uploads (protocol §7): one trait, [`ObjectStore`], with
//! two backends — S3 in AWS ([`crate::aws::s3::S3Objects`]) and a directory behind the local
//! runner's HTTP PUT endpoint ([`local::LocalObjects`]); the configured one is
//! [`crate::env::Objects`]. What is done with an object (grants, finalize) is the ingest
//! handler's ([`crate::ingest::upload`]).
//!
//! # Layout
//! - [`local`] — the directory store with HMAC-signed expiring URLs, and its HTTP PUT endpoint

pub mod local;

use std::future::Future;
use std::io::Read;

use time::OffsetDateTime;

/// An object store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The store could not be reached or answered with an error: retrying may help.
    #[error("object store: {0}")]
    Unavailable(String),
    /// The store is misconfigured (no credentials, bad bucket name, ...).
    #[error("object store configuration: {0}")]
    Config(String),
}

impl ObjectError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ObjectError::Unavailable(_))
    }
}

/// An object opened for reading: a blocking reader (the decode runs on the blocking pool).
pub struct ObjectReader {
    /// Size in bytes when the store says.
    pub size: Option<u64>,
    pub body: Box<dyn Read + Send>,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Where upload objects live. One trait, two real backends: [`crate::aws::s3::S3Objects`] and
/// [`local::LocalObjects`].
pub trait ObjectStore: Send + Sync {
    /// A URL the device can HTTP PUT the object `key` to until `expires_at`; signed for
    /// exactly `content_length` bytes when given (reliability §7: the store refuses any other
    /// length), else bounded by the store's size limit only.
    fn presign_put(
        &self,
        key: &str,
        expires_at: OffsetDateTime,
        content_length: Option<u64>,
    ) -> impl Future<Output = Result<String, ObjectError>> + Send;

    /// Drops an object whose rows are committed (best effort; a store may leave it to its
    /// own expiry).
    fn discard(&self, key: &str) -> impl Future<Output = Result<(), ObjectError>> + Send;

    /// The object, or `None` when there is none under `key`.
    fn open(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<ObjectReader>, ObjectError>> + Send;
}

/// Marks an I/O error as coming from the object store, not from the zstd decoder.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceFailure(pub String);
