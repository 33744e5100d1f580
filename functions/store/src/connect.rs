//! How we connect to PostgreSQL: the one place that reads a database URL, decides on TLS and
//! builds the connector. Every pool ([`crate::pool::connect`], the Lambdas' pool) and every
//! direct connection (tests, tools) goes through [`DbTarget`].
//!
//! # TLS, as libpq does it
//! The URL (`postgres://…?sslmode=…&sslrootcert=…`) or `key=value` string may carry libpq's
//! `sslmode` and `sslrootcert`. tokio-postgres knows only `disable|prefer|require` and no
//! `sslrootcert`, so both are parsed and stripped here before the rest goes to
//! [`tokio_postgres::Config`]. TLS is rustls on the ring provider (no aws-lc-rs, as everywhere in
//! the workspace).
//!
//! | `sslmode` | TLS | certificate check |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `allow` | treated as `prefer` (tokio-postgres cannot retry a refused plaintext login over TLS) | as `prefer` |
//! | `prefer` | if the server offers it, else plaintext | none, unless `sslrootcert` is given: then the chain |
//! | `require` | always (a server without TLS is an error) | none, unless `sslrootcert` is given: then the chain (libpq) |
//! | `verify-ca` | always | chain against `sslrootcert`; host name not checked |
//! | `verify-full` | always | chain against `sslrootcert` and the host name (`host`, not `hostaddr`) |
//!
//! `sslrootcert` is a PEM file of one or more CA certificates (e.g. RDS's `global-bundle.pem`),
//! or `system`: the operating system's trust store (rustls-native-certs, as libpq's `system`
//! uses OpenSSL's default store). `verify-ca`/`verify-full` without `sslrootcert` is an error
//! ([`ConnectError::RootCertMissing`]), as in libpq (which would look for
//! `~/.postgresql/root.crt`; we do not). Unix-socket hosts never use TLS (PostgreSQL does not
//! offer it there; libpq ignores `sslmode` for them).
//!
//! Unlike libpq, `prefer` does not retry in plaintext after a failed handshake (tokio-postgres
//! does not); the failure is reported.
//!
//! When the URL names no `sslmode`, the caller's [`TlsDefaults`] apply: [`TlsDefaults::LOCAL`]
//! is libpq's `prefer`; the Lambdas use [`TlsDefaults::aws`] (`verify-full`).
//!
//! # Errors
//! tokio-postgres reports every TLS failure as "error performing TLS handshake" and hides the
//! cause in its source chain. [`describe`] turns a connection error into one line that says
//! what is wrong: an untrusted certificate (naming `sslrootcert`), a host-name mismatch, a
//! server without TLS under `require`/`verify-*`, a hostssl-only server under `disable`.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's spelling (`verify-full`, …).
    pub fn parse(value: &str) -> Result<SslMode, ConnectError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(ConnectError::SslMode(other.to_owned())),
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// True when a connection without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the CA certificates that sign the server's certificate come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file with one or more CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store.
    System,
}

impl RootCerts {
    /// `system` or a path, as libpq reads the value.
    pub fn parse(value: &str) -> RootCerts {
        if value == "system" {
            RootCerts::System
        } else {
            RootCerts::File(PathBuf::from(value))
        }
    }
}

impl fmt::Display for RootCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCerts::File(path) => write!(f, "sslrootcert {}", path.display()),
            RootCerts::System => f.write_str("sslrootcert=system (the system trust store)"),
        }
    }
}

/// What applies when the URL does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsDefaults {
    pub sslmode: SslMode,
    pub sslrootcert: Option<RootCerts>,
}

impl TlsDefaults {
    /// libpq's default: `prefer`, no CA.
    pub const LOCAL: TlsDefaults = TlsDefaults {
        sslmode: SslMode::Prefer,
        sslrootcert: None,
    };

    /// In AWS: `verify-full` against `sslrootcert` (e.g. the RDS CA bundle named by
    /// `EDGE_DB_SSLROOTCERT`).
    pub fn aws(sslrootcert: Option<RootCerts>) -> TlsDefaults {
        TlsDefaults {
            sslmode: SslMode::VerifyFull,
            sslrootcert,
        }
    }
}

/// Why a database URL cannot be used, or a connection failed (one line each).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("database URL: {0}")]
    Url(String),
    #[error("database URL: invalid sslmode {0:?} (expected disable, allow, prefer, require, verify-ca or verify-full)")]
    SslMode(String),
    #[error("database TLS: sslmode={0} needs sslrootcert (a CA bundle file such as the RDS global-bundle.pem, or `system`)")]
    RootCertMissing(SslMode),
    #[error("database TLS: cannot read {roots}: {reason}")]
    RootCertUnreadable { roots: RootCerts, reason: String },
    #[error("database TLS: {0}")]
    Tls(String),
    /// A connection attempt failed; the text comes from [`describe`].
    #[error("{0}")]
    Connect(String),
}

/// A parsed database URL: the tokio-postgres config (TLS parameters stripped) and the TLS
/// policy that goes with it.
#[derive(Debug, Clone)]
pub struct DbTarget {
    config: tokio_postgres::Config,
    sslmode: SslMode,
    sslrootcert: Option<RootCerts>,
}

impl DbTarget {
    /// Parses `url` (`postgres://…` or `key=value …`), applying `defaults` for what it does not
    /// name.
    pub fn parse(url: &str, defaults: &TlsDefaults) -> Result<DbTarget, ConnectError> {
        let stripped = strip_tls_params(url)?;
        let mut config: tokio_postgres::Config = stripped
            .rest
            .parse()
            .map_err(|e: tokio_postgres::Error| ConnectError::Url(error_chain(&e)))?;
        let sslmode = match &stripped.sslmode {
            Some(value) => SslMode::parse(value)?,
            None => defaults.sslmode,
        };
        let sslrootcert = match &stripped.sslrootcert {
            Some(value) if !value.is_empty() => Some(RootCerts::parse(value)),
            Some(_) => None,
            None => defaults.sslrootcert.clone(),
        };
        if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && sslrootcert.is_none() {
            return Err(ConnectError::RootCertMissing(sslmode));
        }
        let unix_only = !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|host| !matches!(host, Host::Tcp(_)));
        config.ssl_mode(match sslmode {
            _ if unix_only => tokio_postgres::config::SslMode::Disable,
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        Ok(DbTarget {
            config,
            sslmode,
            sslrootcert,
        })
    }

    /// The tokio-postgres config (sslmode mapped, libpq-only parameters removed).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Mutable, for settings such as timeouts and keepalives.
    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }

    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    pub fn sslrootcert(&self) -> Option<&RootCerts> {
        self.sslrootcert.as_ref()
    }

    /// The TLS connector for this target (reads the CA file now, so a missing file is reported
    /// before the first connection).
    pub fn tls(&self) -> Result<DbTls, ConnectError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match &self.sslrootcert {
            Some(roots) => Some(load_roots(roots)?),
            None => None,
        };
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = match roots {
            Some(roots) => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| ConnectError::Tls(e.to_string()))?;
                if self.sslmode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly { webpki })
                }
            }
            None => Arc::new(NoCertificateCheck { provider }),
        };
        let client_config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(DbTls {
            inner: MakeRustlsConnect::new(client_config),
            context: Arc::new(TlsContext {
                sslmode: self.sslmode,
                sslrootcert: self.sslrootcert.clone(),
            }),
        })
    }

    /// One connection, its I/O task spawned on the current runtime.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let (client, connection) = self
            .config
            .connect(self.tls()?)
            .await
            .map_err(|e| ConnectError::Connect(describe(&e)))?;
        tokio::spawn(async move {
            // Ends with an error when the server goes away; the client sees that on its next
            // query.
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// [`DbTarget::parse`] with [`TlsDefaults::LOCAL`], then [`DbTarget::connect`].
pub async fn connect(url: &str) -> Result<Client, ConnectError> {
    DbTarget::parse(url, &TlsDefaults::LOCAL)?.connect().await
}

/// The `sslmode`/`sslrootcert` values found in a URL and the URL without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrippedUrl {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    /// What tokio-postgres parses.
    pub rest: String,
}

/// Extracts and removes `sslmode` and `sslrootcert` from a URL or `key=value` string (the
/// last occurrence wins, as in libpq).
pub fn strip_tls_params(url: &str) -> Result<StrippedUrl, ConnectError> {
    let trimmed = url.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        strip_from_url(trimmed)
    } else {
        strip_from_key_values(url)
    }
}

fn strip_from_url(url: &str) -> Result<StrippedUrl, ConnectError> {
    let (base, fragment) = match url.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (url, None),
    };
    let mut out = StrippedUrl {
        sslmode: None,
        sslrootcert: None,
        rest: base.to_owned(),
    };
    if let Some((head, query)) = base.split_once('?') {
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match percent_decode(key)?.as_str() {
                "sslmode" => out.sslmode = Some(percent_decode(value)?),
                "sslrootcert" => out.sslrootcert = Some(percent_decode(value)?),
                _ => kept.push(pair),
            }
        }
        out.rest = if kept.is_empty() {
            head.to_owned()
        } else {
            format!("{head}?{}", kept.join("&"))
        };
    }
    if let Some(fragment) = fragment {
        out.rest = format!("{}#{fragment}", out.rest);
    }
    Ok(out)
}

fn percent_decode(value: &str) -> Result<String, ConnectError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = value
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ConnectError::Url(format!("invalid percent-encoding in {value:?}"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ConnectError::Url(format!("{value:?} is not UTF-8")))
}

/// libpq's `key = value` syntax: whitespace between pairs, optional whitespace around `=`,
/// values optionally in single quotes with `\` escapes. The TLS pairs are cut out of the
/// string; everything else stays byte for byte.
fn strip_from_key_values(s: &str) -> Result<StrippedUrl, ConnectError> {
    let bytes = s.as_bytes();
    let mut out = StrippedUrl {
        sslmode: None,
        sslrootcert: None,
        rest: String::new(),
    };
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[start..i];
        i = skip_ws(i);
        if i >= bytes.len() || bytes[i] != b'=' {
            return Err(ConnectError::Url(format!(
                "expected `=` after {key:?} in the connection string"
            )));
        }
        i = skip_ws(i + 1);
        let mut value = Vec::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => {
                        return Err(ConnectError::Url(format!(
                            "unterminated quoted value of {key:?} in the connection string"
                        )))
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < bytes.len() => {
                        value.push(bytes[i + 1]);
                        i += 2;
                    }
                    Some(&byte) => {
                        value.push(byte);
                        i += 1;
                    }
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    value.push(bytes[i + 1]);
                    i += 2;
                } else {
                    value.push(bytes[i]);
                    i += 1;
                }
            }
        }
        let value = String::from_utf8(value)
            .map_err(|_| ConnectError::Url(format!("the value of {key:?} is not UTF-8")))?;
        match key {
            "sslmode" => {
                out.sslmode = Some(value);
                cuts.push((start, i));
            }
            "sslrootcert" => {
                out.sslrootcert = Some(value);
                cuts.push((start, i));
            }
            _ => {}
        }
    }
    let mut rest = String::with_capacity(s.len());
    let mut from = 0;
    for (start, end) in cuts {
        rest.push_str(&s[from..start]);
        from = end;
    }
    rest.push_str(&s[from..]);
    out.rest = rest;
    Ok(out)
}

fn load_roots(roots: &RootCerts) -> Result<RootCertStore, ConnectError> {
    let unreadable = |reason: String| ConnectError::RootCertUnreadable {
        roots: roots.clone(),
        reason,
    };
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            let pem = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
            let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|e| unreadable(format!("not PEM: {e}")))?;
            let (added, _ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(unreadable("no CA certificate in the file".into()));
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "no CA certificates found".into());
                return Err(unreadable(why));
            }
        }
    }
    Ok(store)
}

/// What a handshake error message needs to know.
#[derive(Debug)]
struct TlsContext {
    sslmode: SslMode,
    sslrootcert: Option<RootCerts>,
}

impl TlsContext {
    fn explain(&self, host: &str, error: io::Error) -> TlsHandshakeError {
        let rustls_error = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        let roots = self
            .sslrootcert
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "sslrootcert".into());
        let message = match rustls_error {
            Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                format!("server certificate of {host} not trusted by {roots} (UnknownIssuer)")
            }
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => format!(
                "server certificate not valid for host {host} (sslmode={} checks the host name; \
                 verify-ca would not)",
                self.sslmode
            ),
            Some(rustls::Error::InvalidCertificate(reason)) => {
                format!("server certificate of {host} rejected: {reason:?}")
            }
            Some(other) => format!("handshake with {host} failed: {other}"),
            None => format!("handshake with {host} failed: {error}"),
        };
        TlsHandshakeError(format!("database TLS: {message}"))
    }
}

/// A failed TLS handshake, in one line (`database TLS: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsHandshakeError(pub String);

/// The `MakeTlsConnect` of every database connection: tokio-postgres-rustls with our
/// verifier, its handshake errors made readable.
#[derive(Clone)]
pub struct DbTls {
    inner: MakeRustlsConnect,
    context: Arc<TlsContext>,
}

impl fmt::Debug for DbTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbTls")
            .field("sslmode", &self.context.sslmode)
            .field("sslrootcert", &self.context.sslrootcert)
            .finish_non_exhaustive()
    }
}

impl<S> MakeTlsConnect<S> for DbTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect: Send,
    <<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect as TlsConnect<S>>::Future: Send,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = DbTlsConnect<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, Self::Error> {
        Ok(DbTlsConnect {
            inner: <MakeRustlsConnect as MakeTlsConnect<S>>::make_tls_connect(
                &mut self.inner,
                hostname,
            )?,
            host: hostname.to_owned(),
            context: Arc::clone(&self.context),
        })
    }
}

/// One handshake (see [`DbTls`]).
#[derive(Debug)]
pub struct DbTlsConnect<T> {
    inner: T,
    host: String,
    context: Arc<TlsContext>,
}

impl<S, T> TlsConnect<S> for DbTlsConnect<T>
where
    T: TlsConnect<S, Error = io::Error> + Send + 'static,
    T::Future: Send + 'static,
{
    type Stream = T::Stream;
    type Error = TlsHandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<T::Stream, TlsHandshakeError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let DbTlsConnect {
            inner,
            host,
            context,
        } = self;
        let handshake = inner.connect(stream);
        Box::pin(async move {
            handshake
                .await
                .map_err(|error| context.explain(&host, error))
        })
    }
}

/// `require` without `sslrootcert`, as libpq: encrypted, the certificate not checked (the
/// handshake signature still is, so the peer holds the certificate's key).
#[derive(Debug)]
struct NoCertificateCheck {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca` (and `prefer`/`require` with `sslrootcert`): the chain must lead to a trusted
/// CA; the host name is not compared. webpki checks the chain before the name, so a
/// name-only failure means the chain was good.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// One line saying why a connection failed (see the module doc).
pub fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        // PostgreSQL's own refusal of a plaintext login: `… no encryption` (pg_hba.conf has
        // only `hostssl` lines for this client).
        if *db.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && db.message().ends_with("no encryption")
        {
            return format!(
                "database refuses a connection without TLS (sslmode=disable): {}",
                db.message()
            );
        }
    }
    let source = std::error::Error::source(error);
    if let Some(handshake) = source.and_then(|s| s.downcast_ref::<TlsHandshakeError>()) {
        return handshake.0.clone();
    }
    if source.is_some_and(|s| s.to_string() == "server does not support TLS") {
        return "database TLS: the server does not offer TLS, but sslmode \
                (require, verify-ca or verify-full) does not allow a connection without it"
            .into();
    }
    error_chain(error)
}

/// [`describe`] for a pool checkout: the backend's connection error, or the pool's own.
pub fn describe_pool_error(error: &deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(e) => describe(e),
        other => other.to_string(),
    }
}

/// An error and its sources on one line (`a: b: c`).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_tls_parameters_from_urls() {
        let s = strip_tls_params(
            "postgres://u:p@db.example:5432/edge?sslmode=verify-full&application_name=x&sslrootcert=%2Fopt%2Frds%20ca.pem",
        )
        .expect("parses");
        assert_eq!(s.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(s.sslrootcert.as_deref(), Some("/opt/rds ca.pem"));
        assert_eq!(
            s.rest,
            "postgres://u:p@db.example:5432/edge?application_name=x"
        );
        let s = strip_tls_params("postgresql://db/edge?sslmode=require").expect("parses");
        assert_eq!(s.rest, "postgresql://db/edge");
        let s = strip_tls_params("postgres://db/edge").expect("parses");
        assert_eq!((s.sslmode, s.sslrootcert), (None, None));
    }

    #[test]
    fn strips_tls_parameters_from_key_values() {
        let s = strip_tls_params(
            "host=db.example sslmode = verify-ca port=5432 sslrootcert='/opt/my ca\\'s.pem' user=edge",
        )
        .expect("parses");
        assert_eq!(s.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(s.sslrootcert.as_deref(), Some("/opt/my ca's.pem"));
        let config: tokio_postgres::Config = s.rest.parse().expect("rest parses");
        assert_eq!(config.get_user(), Some("edge"));
        assert_eq!(config.get_ports(), [5432]);
        assert!(strip_tls_params("host=db sslrootcert='open").is_err());
        assert!(strip_tls_params("host").is_err());
    }

    #[test]
    fn bad_sslmode_is_a_named_error() {
        let error = DbTarget::parse("host=db sslmode=verify_full", &TlsDefaults::LOCAL)
            .expect_err("refused");
        assert_eq!(error, ConnectError::SslMode("verify_full".into()));
        assert!(error
            .to_string()
            .contains("invalid sslmode \"verify_full\""));
    }

    #[test]
    fn defaults_apply_when_the_url_is_silent() {
        let local = DbTarget::parse("postgres://db/edge", &TlsDefaults::LOCAL).expect("local");
        assert_eq!(local.sslmode(), SslMode::Prefer);
        assert_eq!(
            local.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        let aws = TlsDefaults::aws(Some(RootCerts::File("/opt/ca.pem".into())));
        let lambda = DbTarget::parse("postgres://db/edge", &aws).expect("aws");
        assert_eq!(lambda.sslmode(), SslMode::VerifyFull);
        assert_eq!(
            lambda.sslrootcert(),
            Some(&RootCerts::File("/opt/ca.pem".into()))
        );
        assert_eq!(
            lambda.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        // The URL wins over the defaults.
        let explicit = DbTarget::parse("postgres://db/edge?sslmode=disable", &aws).expect("url");
        assert_eq!(explicit.sslmode(), SslMode::Disable);
        assert_eq!(
            DbTarget::parse("postgres://db/edge", &TlsDefaults::aws(None)).expect_err("no CA"),
            ConnectError::RootCertMissing(SslMode::VerifyFull)
        );
    }

    #[test]
    fn unix_sockets_never_use_tls() {
        let target = DbTarget::parse(
            "host=/var/run/postgresql sslmode=require",
            &TlsDefaults::LOCAL,
        )
        .expect("parses");
        assert_eq!(
            target.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
    }

    #[test]
    fn system_and_missing_root_files() {
        assert_eq!(RootCerts::parse("system"), RootCerts::System);
        let target = DbTarget::parse(
            "host=db sslmode=verify-ca sslrootcert=/nonexistent/ca.pem",
            &TlsDefaults::LOCAL,
        )
        .expect("parses");
        let error = target.tls().expect_err("no file");
        assert!(
            error
                .to_string()
                .starts_with("database TLS: cannot read sslrootcert /nonexistent/ca.pem: "),
            "{error}"
        );
    }
}
