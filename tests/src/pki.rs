//! Test PKI: a CA, the broker's server certificate and per-identity client certificates.
//!
//! Mirrors what AWS IoT Core does with real devices: each device holds a certificate whose CN is
//! its device name, the broker trusts one CA and maps the CN to the MQTT username
//! (`use_identity_as_username`), and the ACL is written in terms of that username. The cloud side
//! connects as [`SERVICE_USER`]. A second, unrelated CA
//! ([`CertificateAuthority::new`]) issues certificates the broker must refuse.
//!
//! Keys are ECDSA P-256 (rcgen's default), which both OpenSSL (mosquitto) and rustls accept.
//! Everything is also written as PEM files into a temp dir that lives as long as any handle
//! ([`Pki`], [`CertificateAuthority`], [`ClientIdentity`]) still refers to it, because the broker
//! re-reads them on restart and processes under test may want file paths.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;

use crate::HarnessError;

/// MQTT username (certificate CN) of the cloud side: the local runner / ingest service.
pub const SERVICE_USER: &str = "edge-service";

/// MQTT username of a test-only observer that may read every topic (`#`). It exists so that
/// negative tests can prove a forbidden publish reached *no one*, not just not the service; it
/// can publish nothing. There is no such identity in the IoT Core policy.
pub const AUDITOR_USER: &str = "edge-audit";

/// A certificate authority that can issue server and client certificates.
///
/// Cheap to clone; clones share the key and the directory.
#[derive(Clone)]
pub struct CertificateAuthority {
    inner: Arc<CaInner>,
}

struct CaInner {
    name: String,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    cert_path: PathBuf,
    dir: Arc<TempDir>,
    /// Makes file names unique when the same CN is issued twice.
    serial: AtomicU64,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("name", &self.inner.name)
            .field("cert_path", &self.inner.cert_path)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed CA with `name` as CN, its PEM written to a fresh temp dir.
    pub fn new(name: &str) -> Result<CertificateAuthority, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("edge-e2e-pki-")
            .tempdir()
            .map_err(HarnessError::io("creating the PKI directory"))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "edge-sync tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_path = dir.path().join(format!("{}-ca.crt", file_stem(name)));
        write_file(&cert_path, &cert_pem)?;
        Ok(CertificateAuthority {
            inner: Arc::new(CaInner {
                name: name.to_owned(),
                issuer: Issuer::new(params, key),
                cert_pem,
                cert_der: cert.der().clone(),
                cert_path,
                dir: Arc::new(dir),
                serial: AtomicU64::new(0),
            }),
        })
    }

    /// The CA's CN.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.inner.cert_pem
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.inner.cert_der
    }

    /// Path of the CA certificate PEM file (what a client or broker trusts).
    pub fn cert_path(&self) -> &Path {
        &self.inner.cert_path
    }

    /// The directory holding this CA's files.
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// A client certificate with `common_name` as CN (the MQTT username under
    /// `use_identity_as_username`), for TLS client authentication.
    pub fn issue_client(&self, common_name: &str) -> Result<ClientIdentity, HarnessError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(common_name, params)
    }

    /// A server certificate with `names` as subject alternative names (IP addresses become IP
    /// SANs) and the first name as CN.
    pub fn issue_server(&self, names: &[&str]) -> Result<ClientIdentity, HarnessError> {
        let sans: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(names.first().copied().unwrap_or("server"), params)
    }

    fn issue(
        &self,
        common_name: &str,
        mut params: CertificateParams,
    ) -> Result<ClientIdentity, HarnessError> {
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        // ECDSA keys sign; key encipherment would be meaningless for them.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.inner.issuer)?;
        let serial = self.inner.serial.fetch_add(1, Ordering::Relaxed);
        let stem = format!("{}-{serial}", file_stem(common_name));
        let cert_path = self.dir().join(format!("{stem}.crt"));
        let key_path = self.dir().join(format!("{stem}.key"));
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        write_file(&cert_path, &cert_pem)?;
        write_file(&key_path, &key_pem)?;
        Ok(ClientIdentity {
            inner: Arc::new(IdentityInner {
                common_name: common_name.to_owned(),
                cert_der: cert.der().clone(),
                key_der: key.serialize_der(),
                cert_pem,
                key_pem,
                cert_path,
                key_path,
                issuer_name: self.inner.name.clone(),
                _dir: Arc::clone(&self.inner.dir),
            }),
        })
    }
}

/// A certificate and its private key (a device, the service, or the broker itself).
///
/// Cheap to clone.
#[derive(Clone)]
pub struct ClientIdentity {
    inner: Arc<IdentityInner>,
}

struct IdentityInner {
    common_name: String,
    cert_der: CertificateDer<'static>,
    /// PKCS#8.
    key_der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
    cert_path: PathBuf,
    key_path: PathBuf,
    issuer_name: String,
    /// Keeps the files alive as long as the identity.
    _dir: Arc<TempDir>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No key material in test output.
        f.debug_struct("ClientIdentity")
            .field("common_name", &self.inner.common_name)
            .field("issuer", &self.inner.issuer_name)
            .field("cert_path", &self.inner.cert_path)
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// The certificate's CN (device name, or `edge-service`).
    pub fn common_name(&self) -> &str {
        &self.inner.common_name
    }

    /// The certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.inner.cert_pem
    }

    /// The private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.inner.key_pem
    }

    /// Path of the certificate PEM file.
    pub fn cert_path(&self) -> &Path {
        &self.inner.cert_path
    }

    /// Path of the private key PEM file.
    pub fn key_path(&self) -> &Path {
        &self.inner.key_path
    }

    /// The certificate as DER, for rustls.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.inner.cert_der.clone()
    }

    /// The private key as DER, for rustls.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.inner.key_der.clone()))
    }
}

/// The standard test PKI: a CA, a server certificate for `localhost`/`127.0.0.1`, and
/// convenience issuers for devices and the service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pki {
    ca: CertificateAuthority,
    server: ClientIdentity,
}

impl Pki {
    /// Generates the PKI; panics with a clear message on failure.
    #[track_caller]
    pub fn generate() -> Pki {
        Pki::try_generate().unwrap_or_else(|error| panic!("generating the test PKI: {error}"))
    }

    /// Like [`Pki::generate`], returning the error.
    pub fn try_generate() -> Result<Pki, HarnessError> {
        let ca = CertificateAuthority::new("edge-sync test CA")?;
        let server = ca.issue_server(&["localhost", "127.0.0.1"])?;
        Ok(Pki { ca, server })
    }

    /// The CA that signed everything here (the broker trusts exactly this one).
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The broker's certificate and key.
    pub fn server(&self) -> &ClientIdentity {
        &self.server
    }

    /// A device certificate with CN = `device_name`; panics on failure.
    #[track_caller]
    pub fn device(&self, device_name: &str) -> ClientIdentity {
        self.ca
            .issue_client(device_name)
            .unwrap_or_else(|error| panic!("issuing a certificate for {device_name}: {error}"))
    }

    /// The cloud service's certificate (CN [`SERVICE_USER`]); panics on failure.
    #[track_caller]
    pub fn service(&self) -> ClientIdentity {
        self.device(SERVICE_USER)
    }

    /// The test-only observer's certificate (CN [`AUDITOR_USER`]): reads every topic.
    #[track_caller]
    pub fn auditor(&self) -> ClientIdentity {
        self.device(AUDITOR_USER)
    }
}

/// A file-name-safe version of a CN.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_file(path: &Path, contents: &str) -> Result<(), HarnessError> {
    std::fs::write(path, contents).map_err(HarnessError::io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_files_for_each_identity() {
        let pki = Pki::generate();
        let device = pki.device("gw-07");
        assert_eq!(device.common_name(), "gw-07");
        assert!(device.cert_path().is_file());
        assert!(device.key_path().is_file());
        assert!(pki.ca().cert_path().is_file());
        assert!(std::fs::read_to_string(device.key_path())
            .expect("key file")
            .contains("PRIVATE KEY"));
        // Issuing the same CN twice must not overwrite the first files.
        let again = pki.device("gw-07");
        assert_ne!(again.cert_path(), device.cert_path());
        assert_eq!(pki.service().common_name(), SERVICE_USER);
    }

    #[test]
    fn file_stems_are_safe() {
        assert_eq!(file_stem("edge-sync test CA"), "edge-sync_test_CA");
        assert_eq!(file_stem("../x"), ".._x");
    }
}
