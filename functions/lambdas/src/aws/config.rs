//! The SDK configuration, loaded once per cold start.
//!
//! Why a hand-built HTTP client: every `aws-sdk-*` crate's default features enable
//! `default-https-client`, which is rustls on aws-lc-rs — a C/cmake build that is slow and
//! fragile to cross-compile for the arm64 Lambdas and would put a second crypto library next
//! to the ring the workspace already uses. The SDK crates are therefore built with
//! `default-features = false` and get this client: aws-smithy-http-client's hyper 1 client with
//! rustls on ring (`rustls-ring` feature). Region and credentials come from the standard
//! environment chain (in Lambda: `AWS_REGION` and the execution role's variables).
//!
//! Endpoints: the SDK's own `AWS_ENDPOINT_URL` (and `AWS_ENDPOINT_URL_<SERVICE>`) variables
//! point every client at another endpoint, e.g. a moto server; the tests instead set the
//! endpoint, region and credentials on [`loader`], the same builder the Lambdas use, so they
//! run over the very HTTP client and configuration path of production. (The client speaks
//! plain `http://` too, for such local endpoints.)

use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};

/// The loader every SDK configuration is built from: the ring-based HTTPS client, the latest
/// behaviour version; region, credentials and endpoint from the environment unless set on it.
pub fn loader() -> ConfigLoader {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest()).http_client(http)
}

/// Region, credentials and the ring-based HTTPS client, from the environment.
pub async fn load() -> SdkConfig {
    loader().load().await
}

/// The SDK configuration of a process, loaded on first use: a Lambda whose settings need no
/// AWS call (a local `cargo lambda watch`) never loads it.
#[derive(Debug, Default)]
pub struct LazySdk(Option<SdkConfig>);

impl LazySdk {
    pub async fn get(&mut self) -> &SdkConfig {
        let sdk = match self.0.take() {
            Some(sdk) => sdk,
            None => load().await,
        };
        self.0.insert(sdk)
    }
}
