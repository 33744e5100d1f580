//! The S3 object store: presigned PUT URLs for the device, GetObject for the finalize.
//!
//! Presigning is local SigV4 signing with the Lambda role's credentials, so the role needs
//! `s3:PutObject` on the bucket's `spill/*` keys for the URL to work, and `s3:GetObject` to
//! read the object back. The body streams from S3 into the blocking decoder through a channel
//! of a few chunks: the object is never held whole in memory.

use std::io::Read;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::presigning::PresigningConfig;
use hyper::body::Bytes;
use time::OffsetDateTime;

use super::AwsError;
use crate::objects::{ObjectError, ObjectReader, ObjectStore, SourceFailure};

/// Objects in one S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Objects {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Objects {
    pub fn new(sdk: &SdkConfig, bucket: impl Into<String>) -> Self {
        S3Objects {
            client: aws_sdk_s3::Client::new(sdk),
            bucket: bucket.into(),
        }
    }

    /// Over an already configured client (tests, custom endpoints).
    pub fn from_client(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        S3Objects {
            client,
            bucket: bucket.into(),
        }
    }
}

fn unavailable<E>(op: &'static str, e: aws_sdk_s3::error::SdkError<E, HttpResponse>) -> ObjectError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    ObjectError::Unavailable(AwsError::service(op, e).to_string())
}

impl ObjectStore for S3Objects {
    async fn presign_put(
        &self,
        key: &str,
        expires_at: OffsetDateTime,
        content_length: Option<u64>,
    ) -> Result<String, ObjectError> {
        let secs = (expires_at - OffsetDateTime::now_utc())
            .whole_seconds()
            .max(1);
        let config = PresigningConfig::expires_in(Duration::from_secs(secs.unsigned_abs()))
            .map_err(|e| ObjectError::Config(format!("presigning: {e}")))?;
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            // Signed as the `content-length` header (X-Amz-SignedHeaders): S3 refuses a PUT
            // of any other length with SignatureDoesNotMatch.
            .set_content_length(content_length.and_then(|n| i64::try_from(n).ok()))
            .presigned(config)
            .await
            .map_err(|e| unavailable("s3:PutObject (presign)", e))?;
        Ok(req.uri().to_owned())
    }

    /// Nothing to do: the bucket's lifecycle rule expires `spill/` objects
    /// (`SpillRetentionDays`), which keeps the role free of `s3:DeleteObject` and leaves the
    /// object for inspection meanwhile.
    async fn discard(&self, _key: &str) -> Result<(), ObjectError> {
        Ok(())
    }

    async fn open(&self, key: &str) -> Result<Option<ObjectReader>, ObjectError> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    return Ok(None);
                }
                return Err(unavailable("s3:GetObject", e));
            }
        };
        let size = out.content_length().and_then(|n| u64::try_from(n).ok());
        let mut body = out.body;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(4);
        tokio::spawn(async move {
            loop {
                let next = body.next().await;
                let item = match next {
                    None => return,
                    Some(Ok(bytes)) => Ok(bytes),
                    Some(Err(e)) => Err(e.to_string()),
                };
                let failed = item.is_err();
                // The reader was dropped (the finalize gave up): stop reading.
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Some(ObjectReader {
            size,
            body: Box::new(ChannelReader {
                rx,
                current: Bytes::new(),
            }),
        }))
    }
}

/// A blocking [`Read`] over chunks arriving on a channel (used on the blocking pool only).
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(std::io::Error::other(SourceFailure(e))),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.split_off(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

    /// A store over a client with static credentials: presigning needs no network.
    fn offline_store() -> S3Objects {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                None,
                None,
                "test",
            ))
            .build();
        S3Objects::from_client(aws_sdk_s3::Client::from_conf(conf), "spill-bucket")
    }

    /// Presigning is local SigV4 signing: no network, so the URL the device gets is checkable.
    #[tokio::test]
    async fn presigned_put_urls_name_the_key_and_expire_in_15_minutes() {
        let store = offline_store();
        let key = edge_cloud_core::spill::object_key(uuid::Uuid::nil(), uuid::Uuid::nil());
        let expires = OffsetDateTime::now_utc()
            + time::Duration::seconds(edge_cloud_core::spill::URL_TTL_SECONDS);
        let url = store.presign_put(&key, expires, None).await.unwrap();
        assert!(
            url.starts_with("https://spill-bucket.s3.eu-west-1.amazonaws.com/spill/"),
            "{url}"
        );
        assert!(url.contains(".jsonl.zst?"), "{url}");
        // Whole seconds: the clock moved a little between the two `now`s.
        assert!(
            url.contains("X-Amz-Expires=900") || url.contains("X-Amz-Expires=899"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Signature="), "{url}");
        assert!(url.contains("x-id=PutObject"), "{url}");
        assert!(url.contains("X-Amz-SignedHeaders=host&"), "{url}");
    }

    /// Reliability §7: a grant for an object of known size is signed with its
    /// `content-length`, so S3 takes that length only (SignatureDoesNotMatch otherwise).
    #[tokio::test]
    async fn presigned_put_urls_sign_the_content_length_when_it_is_known() {
        let store = offline_store();
        let key = edge_cloud_core::spill::object_key(uuid::Uuid::nil(), uuid::Uuid::nil());
        let expires = OffsetDateTime::now_utc() + time::Duration::seconds(60);
        let a = store.presign_put(&key, expires, Some(4096)).await.unwrap();
        assert!(
            a.contains("X-Amz-SignedHeaders=content-length%3Bhost"),
            "{a}"
        );
        let b = store.presign_put(&key, expires, Some(4097)).await.unwrap();
        let sig = |u: &str| u.split("X-Amz-Signature=").nth(1).map(str::to_owned);
        assert_ne!(sig(&a), sig(&b), "the length is part of the signature");
    }
}
