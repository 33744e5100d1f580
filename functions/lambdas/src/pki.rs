//! The local stack's certificate authority: what AWS IoT Core's certificate registry is in the
//! cloud, for mosquitto on one machine (`edge-cloud pki init`, `edge-cloud devices create
//! --ca-dir`).
//!
//! Layout of a CA directory (all PEM; keys are ECDSA P-256, written with mode 0600):
//! - `ca.crt` / `ca.key` — the authority, created when missing and reused afterwards;
//! - `server.crt` / `server.key` — the broker's certificate (`localhost`, `127.0.0.1`, `::1`);
//! - `<name>.crt` / `<name>.key` — a client identity whose CN is `<name>`: the broker's
//!   `use_identity_as_username` turns it into the MQTT username the ACL patterns match (`%u`).
//!
//! An existing CA is loaded from its own certificate, so certificates issued later chain to the
//! same `ca.crt` the broker and every device already trust.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// File names inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVER_NAME: &str = "server";

/// Certificate lifetime of issued identities. Devices in the field get theirs from AWS IoT;
/// this CA serves development and small deployments, so a long validity avoids surprise
/// expiries while `edge-agent check` still reports the date.
const ISSUED_VALIDITY_DAYS: i64 = 825;
const CA_VALIDITY_DAYS: i64 = 3650;

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate operation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0:?} is not a usable certificate name (letters, digits, '.', '_', '-' only)")]
    BadName(String),
    #[error("{} exists but {} is missing: restore it or remove both", present.display(), missing.display())]
    HalfCa { present: PathBuf, missing: PathBuf },
}

/// Paths of one issued identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedIdentity {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A certificate authority kept in a directory.
pub struct LocalCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("LocalCa").field("dir", &self.dir).finish()
    }
}

impl LocalCa {
    /// Opens the CA in `dir`, creating the directory and a new CA when none exists.
    pub fn open_or_create(dir: &Path) -> Result<LocalCa, PkiError> {
        fs::create_dir_all(dir).map_err(io("creating the CA directory", dir))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let issuer = match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert_pem = fs::read_to_string(&cert_path)
                    .map_err(io("reading the CA certificate", &cert_path))?;
                let key_pem =
                    fs::read_to_string(&key_path).map_err(io("reading the CA key", &key_path))?;
                let key = KeyPair::from_pem(&key_pem)?;
                Issuer::from_ca_cert_pem(&cert_pem, key)?
            }
            (false, false) => {
                let mut params = CertificateParams::new(Vec::<String>::new())?;
                params
                    .distinguished_name
                    .push(DnType::CommonName, "edge-sync local CA");
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, "edge-sync");
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                set_validity(&mut params, CA_VALIDITY_DAYS);
                let key = KeyPair::generate()?;
                let cert = params.self_signed(&key)?;
                write_private(&key_path, &key.serialize_pem())?;
                write_public(&cert_path, &cert.pem())?;
                Issuer::new(params, key)
            }
            (true, false) => {
                return Err(PkiError::HalfCa {
                    present: cert_path,
                    missing: key_path,
                })
            }
            (false, true) => {
                return Err(PkiError::HalfCa {
                    present: key_path,
                    missing: cert_path,
                })
            }
        };
        Ok(LocalCa {
            dir: dir.to_path_buf(),
            issuer,
        })
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of `ca.crt`, what brokers and clients trust.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// Issues (or re-issues, replacing the files) a client identity with CN `name`.
    pub fn issue_client(&self, name: &str) -> Result<IssuedIdentity, PkiError> {
        check_name(name)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(name, name, params)
    }

    /// Issues the broker's server certificate (`server.crt`/`server.key`) for `names`
    /// (DNS names or IP addresses).
    pub fn issue_server(&self, names: &[&str]) -> Result<IssuedIdentity, PkiError> {
        let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cn = names.first().copied().unwrap_or("localhost");
        self.issue(SERVER_NAME, cn, params)
    }

    fn issue(
        &self,
        file_stem: &str,
        common_name: &str,
        mut params: CertificateParams,
    ) -> Result<IssuedIdentity, PkiError> {
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, ISSUED_VALIDITY_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let identity = IssuedIdentity {
            cert_path: self.dir.join(format!("{file_stem}.crt")),
            key_path: self.dir.join(format!("{file_stem}.key")),
        };
        write_private(&identity.key_path, &key.serialize_pem())?;
        write_public(&identity.cert_path, &cert.pem())?;
        Ok(identity)
    }
}

/// Certificate names become file names and MQTT usernames: keep them to a safe alphabet.
fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != SERVER_NAME
        && name != "ca"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(name.to_owned()))
    }
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack backwards so a gateway whose clock lags slightly still accepts it.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.to_path_buf();
    move |source| PkiError::Io { what, path, source }
}

fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    fs::write(path, contents).map_err(io("writing", path))
}

/// Writes a private key readable by its owner only, created with that mode so the key is never
/// briefly world-readable.
fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("creating", path))?;
    file.write_all(contents.as_bytes())
        .map_err(io("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reuses_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::open_or_create(dir.path()).unwrap();
        let first = fs::read_to_string(ca.cert_path()).unwrap();
        let gw = ca.issue_client("gw-07").unwrap();
        assert!(gw.cert_path.ends_with("gw-07.crt"));
        let again = LocalCa::open_or_create(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(again.cert_path()).unwrap(), first);
        again.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&gw.key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_unsafe_names_and_half_cas() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::open_or_create(dir.path()).unwrap();
        for bad in ["", "../x", "a/b", "ca", "server", "gw 1", "+", ".hidden"] {
            assert!(
                matches!(ca.issue_client(bad), Err(PkiError::BadName(_))),
                "{bad}"
            );
        }
        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        assert!(matches!(
            LocalCa::open_or_create(dir.path()),
            Err(PkiError::HalfCa { .. })
        ));
    }
}
