//! Ephemeral PostgreSQL: one private cluster per test process, one fresh database per test.
//!
//! Without `TEST_DATABASE_URL`, the first [`TestDatabase`] of a test process runs `initdb` into
//! a temp dir and starts `postgres` on a free port (fsync off: the data is thrown away anyway).
//! The cluster is kept in a `static` and shared by all tests of the process; the supervisor in
//! `lifeline` stops it and deletes its directory when the process exits. Databases created on it
//! are not dropped one by one: the whole cluster goes away a moment later.
//!
//! With `TEST_DATABASE_URL` (URL or `key=value` form, any database the user can connect to), each
//! [`TestDatabase`] is created on that server and dropped again when the value is dropped. Its
//! `sslmode`/`sslrootcert` carry over to every database's URL.
//!
//! **TLS.** The private cluster runs with `ssl=on` and a `hostssl`-only `pg_hba.conf` (a
//! plaintext TCP login is refused), its certificate for `localhost` and `127.0.0.1` issued by a
//! CA of its own ([`crate::pki::CertificateAuthority`]); [`TestDatabase::url`] then carries
//! `sslmode=verify-full sslrootcert=<the CA file>`, so every test connects as a deployment
//! would. `EDGE_TEST_PG_TLS=0` starts it plaintext instead (URLs say `sslmode=disable`).
//! Connections go through the store's [`edge_cloud_store::connect`], the code under test.
//! [`PostgresServer`] starts a further server of a test's own (e.g. a plaintext-only one).
//!
//! Administrative statements (`CREATE`/`DROP DATABASE`) run on a short-lived helper thread with
//! its own runtime, because the constructors and `Drop` are synchronous and are usually called
//! from inside a tokio runtime, where blocking on a second runtime would panic.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use edge_cloud_store::connect::{strip_tls_params, DbTarget, TlsDefaults};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config};

use crate::lifeline::{read_log_tail, Lifeline, LifelineSpec};
use crate::privilege::{chown_recursive, unprivileged_runner, RunAs};
use crate::program::find_program;
use crate::{free_port, HarnessError};

/// Environment variable naming an existing server to use instead of a private cluster.
pub const DATABASE_URL_ENV: &str = "TEST_DATABASE_URL";
/// Environment variable naming the directory holding `initdb` and `postgres`, overriding the search.
pub const BIN_DIR_ENV: &str = "EDGE_E2E_PG_BIN";
/// Environment variable: `0` starts the private cluster without TLS (default: TLS only).
pub const TLS_ENV: &str = "EDGE_TEST_PG_TLS";

/// How long the private cluster may take to accept connections after `postgres` starts.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Attempts with a fresh port when another process grabbed ours in the meantime.
const PORT_ATTEMPTS: usize = 3;

/// Where to reach a server and as whom.
#[derive(Debug, Clone)]
struct Server {
    host: Host,
    port: u16,
    user: String,
    password: Option<String>,
    /// Database used for `CREATE`/`DROP DATABASE`.
    admin_db: String,
    /// Databases are dropped explicitly only on a server we did not start.
    external: bool,
    /// libpq's `sslmode` / `sslrootcert` for every URL of this server (None: not named).
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

impl Server {
    fn config(&self, dbname: &str) -> Config {
        let mut config = Config::new();
        match &self.host {
            Host::Tcp(host) => config.host(host),
            Host::Unix(path) => config.host_path(path),
        };
        config
            .port(self.port)
            .user(&self.user)
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }

    /// The `key=value` connection string of `dbname`, TLS parameters included.
    fn url(&self, dbname: &str) -> String {
        let host = match &self.host {
            Host::Tcp(host) => host.clone(),
            Host::Unix(path) => path.to_string_lossy().into_owned(),
        };
        let mut parts = vec![
            format!("host={}", quote_value(&host)),
            format!("port={}", self.port),
            format!("user={}", quote_value(&self.user)),
        ];
        if let Some(password) = &self.password {
            parts.push(format!("password={}", quote_value(password)));
        }
        parts.push(format!("dbname={}", quote_value(dbname)));
        parts.extend(
            self.tls_params()
                .map(|(k, v)| format!("{k}={}", quote_value(v))),
        );
        parts.join(" ")
    }

    fn tls_params(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [
            ("sslmode", self.sslmode.as_ref()),
            ("sslrootcert", self.sslrootcert.as_ref()),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| (key, v)))
    }

    /// How the store connects to `dbname` (TLS as the URL says).
    fn target(&self, dbname: &str, connect_timeout: Duration) -> Result<DbTarget, HarnessError> {
        let mut target = DbTarget::parse(&self.url(dbname), &TlsDefaults::LOCAL)?;
        target.config_mut().connect_timeout(connect_timeout);
        Ok(target)
    }

    fn from_url(url: &str) -> Result<Server, HarnessError> {
        let invalid = |error: String| HarnessError::Invalid(format!("{DATABASE_URL_ENV}: {error}"));
        let stripped = strip_tls_params(url).map_err(|e| invalid(e.to_string()))?;
        let config = Config::from_str(&stripped.rest).map_err(|e| invalid(e.to_string()))?;
        let host = config
            .get_hosts()
            .first()
            .cloned()
            .unwrap_or_else(|| Host::Tcp("localhost".into()));
        Ok(Server {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config.get_user().unwrap_or("postgres").to_owned(),
            password: config
                .get_password()
                .map(|bytes| String::from_utf8_lossy(bytes).into_owned()),
            admin_db: config.get_dbname().unwrap_or("postgres").to_owned(),
            external: true,
            sslmode: stripped.sslmode,
            sslrootcert: stripped.sslrootcert,
        })
    }
}

/// The private cluster of this test process; never dropped (see `lifeline`).
#[derive(Debug)]
struct Cluster {
    server: Server,
    /// Holding the supervisor's stdin keeps the cluster alive until the process exits.
    _lifeline: Lifeline,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The server to create test databases on.
fn server() -> Result<Server, HarnessError> {
    if let Ok(url) = std::env::var(DATABASE_URL_ENV) {
        if !url.trim().is_empty() {
            return Server::from_url(&url);
        }
    }
    // The error is kept as text so every later test fails fast with the same message
    // instead of retrying a slow, doomed start.
    let tls = std::env::var(TLS_ENV).map_or(true, |v| v.trim() != "0");
    match CLUSTER.get_or_init(|| start_cluster(tls).map_err(|error| error.to_string())) {
        Ok(cluster) => Ok(cluster.server.clone()),
        Err(message) => Err(HarnessError::Invalid(format!(
            "the private PostgreSQL cluster could not be started: {message}"
        ))),
    }
}

/// The directory holding `initdb` and `postgres`: `$EDGE_E2E_PG_BIN`, else the highest version
/// under `/usr/lib/postgresql/*/bin` (Debian/Ubuntu), else wherever `initdb` is on `PATH`.
pub fn find_bin_dir() -> Result<PathBuf, HarnessError> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let dir = PathBuf::from(dir);
        return if has_both(&dir) {
            Ok(dir)
        } else {
            Err(HarnessError::MissingProgram(format!(
                "initdb/postgres in {BIN_DIR_ENV}={}",
                dir.display()
            )))
        };
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            // "16", "9.6": compare numerically, not as strings ("9.6" < "10").
            let version: Option<Vec<u32>> = name.split('.').map(|part| part.parse().ok()).collect();
            let bin = entry.path().join("bin");
            Some((version?, bin)).filter(|(_, bin)| has_both(bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let initdb = find_program("initdb").ok_or_else(|| {
        HarnessError::MissingProgram("PostgreSQL server binaries (initdb, postgres)".into())
    })?;
    // Follow a symlink such as /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb,
    // so `postgres` of the same installation is found next to it.
    let initdb = std::fs::canonicalize(&initdb).unwrap_or(initdb);
    initdb
        .parent()
        .map(Path::to_path_buf)
        .filter(|dir| has_both(dir))
        .ok_or_else(|| HarnessError::MissingProgram("postgres next to initdb".into()))
}

/// A temp dir the unprivileged user can reach (`$TMPDIR` may be private to root).
fn scratch_base(run_as: Option<&RunAs>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir();
    let world_searchable = std::fs::metadata(&base)
        .map(|meta| meta.permissions().mode() & 0o001 != 0)
        .unwrap_or(false);
    if run_as.is_some() && !world_searchable {
        PathBuf::from("/tmp")
    } else {
        base
    }
}

/// A PostgreSQL server of a test's own (not the shared cluster): `tls` as the shared cluster's
/// (`hostssl` only, verify-full URLs) or plaintext only (`ssl=off`, URLs with `sslmode=disable`).
/// Stopped and deleted when dropped (or when the process exits).
#[derive(Debug)]
pub struct PostgresServer {
    cluster: Cluster,
}

impl PostgresServer {
    /// Starts the server; blocks until it accepts connections.
    pub fn start(tls: bool) -> Result<PostgresServer, HarnessError> {
        Ok(PostgresServer {
            cluster: start_cluster(tls)?,
        })
    }

    /// A fresh database on this server.
    pub fn create_database(&self) -> Result<TestDatabase, HarnessError> {
        TestDatabase::create_on(self.cluster.server.clone())
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.cluster.server.port
    }
}

fn start_cluster(tls: bool) -> Result<Cluster, HarnessError> {
    let bin = find_bin_dir()?;
    let run_as = unprivileged_runner()?;
    let root = tempfile::Builder::new()
        .prefix("edge-e2e-pg-")
        .tempdir_in(scratch_base(run_as.as_ref()))
        .map_err(HarnessError::io("creating the cluster directory"))?
        // The supervisor deletes it at process exit; a TempDir in a static would never be dropped.
        .keep();
    let result = init_and_start(&bin, run_as.as_ref(), &root, tls);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

fn init_and_start(
    bin: &Path,
    run_as: Option<&RunAs>,
    root: &Path,
    tls: bool,
) -> Result<Cluster, HarnessError> {
    let data = root.join("data");
    let sockets = root.join("sockets");
    std::fs::create_dir(&sockets).map_err(HarnessError::io("creating the socket directory"))?;
    // Before the chown below: the server must own its key (PostgreSQL refuses a key file that
    // others can read).
    let tls_files = if tls {
        Some(write_tls_files(&root.join("tls"))?)
    } else {
        None
    };
    if let Some(run_as) = run_as {
        chown_recursive(root, run_as)?;
    }
    let prefix = run_as.map(|r| r.prefix.clone()).unwrap_or_default();

    let mut initdb = match prefix.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(bin.join("initdb"));
            command
        }
        None => Command::new(bin.join("initdb")),
    };
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        .arg("--locale=C")
        .current_dir(root);
    let output = initdb
        .output()
        .map_err(HarnessError::io("running initdb"))?;
    if !output.status.success() {
        return Err(HarnessError::CommandFailed {
            what: format!("initdb ({})", bin.display()),
            status: output.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }

    if tls_files.is_some() {
        // TLS only over TCP (the socket directory is private to the cluster anyway).
        let hba = "local all all trust\n\
                   hostssl all all 127.0.0.1/32 trust\n\
                   hostssl all all ::1/128 trust\n";
        let hba_path = data.join("pg_hba.conf");
        std::fs::write(&hba_path, hba)
            .map_err(HarnessError::io(format!("writing {}", hba_path.display())))?;
    }

    let mut last_error = None;
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port()?;
        let log = root.join(format!("postgres-{port}.log"));
        let mut command = vec![
            bin.join("postgres").into_os_string(),
            "-D".into(),
            data.clone().into_os_string(),
            "-p".into(),
            port.to_string().into(),
            "-k".into(),
            sockets.clone().into_os_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            // Durability is pointless for throw-away data and costs seconds per test run.
            "-c".into(),
            "fsync=off".into(),
            "-c".into(),
            "synchronous_commit=off".into(),
            "-c".into(),
            "full_page_writes=off".into(),
            // Every test opens its own connections (often a pool); the default 100 is tight.
            "-c".into(),
            "max_connections=300".into(),
        ];
        if let Some(files) = &tls_files {
            for setting in [
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", files.cert.display()),
                format!("ssl_key_file={}", files.key.display()),
            ] {
                command.push("-c".into());
                command.push(setting.into());
            }
        }
        let mut lifeline = Lifeline::spawn(LifelineSpec {
            what: "postgres".into(),
            stop_signal: "INT", // fast shutdown: abort sessions, no waiting for clients
            log: log.clone(),
            cleanup_dir: Some(root.to_path_buf()),
            run_as: prefix.clone(),
            cwd: root.to_path_buf(),
            command,
        })?;
        let server = Server {
            host: Host::Tcp("127.0.0.1".into()),
            port,
            user: "postgres".into(),
            password: None,
            admin_db: "postgres".into(),
            external: false,
            sslmode: Some(
                if tls_files.is_some() {
                    "verify-full"
                } else {
                    "disable"
                }
                .into(),
            ),
            sslrootcert: tls_files
                .as_ref()
                .map(|files| files.ca.to_string_lossy().into_owned()),
        };
        match wait_ready(&server, &mut lifeline) {
            Ok(()) => {
                return Ok(Cluster {
                    server,
                    _lifeline: lifeline,
                })
            }
            Err(error) => {
                let port_taken = read_log_tail(&log).contains("already in use");
                last_error = Some(error);
                if !port_taken {
                    break;
                }
                // Keep the directory for the next attempt: nothing asked the supervisor to stop.
            }
        }
    }
    Err(last_error.unwrap_or_else(|| HarnessError::Invalid("postgres did not start".into())))
}

/// The server's certificate and key and the CA that issued them, in a cluster's directory.
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA of the cluster's own and a server certificate for `localhost` and `127.0.0.1` (IP SAN).
fn write_tls_files(dir: &Path) -> Result<TlsFiles, HarnessError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(dir).map_err(HarnessError::io("creating the TLS directory"))?;
    let ca = crate::pki::CertificateAuthority::new("edge-sync test PostgreSQL CA")?;
    let server = ca.issue_server(&["localhost", "127.0.0.1"])?;
    let files = TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    for (path, contents) in [
        (&files.ca, ca.cert_pem()),
        (&files.cert, server.cert_pem()),
        (&files.key, server.key_pem()),
    ] {
        std::fs::write(path, contents)
            .map_err(HarnessError::io(format!("writing {}", path.display())))?;
    }
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600))
        .map_err(HarnessError::io("restricting the server key"))?;
    Ok(files)
}

/// Polls a real connection (a TCP accept is not enough: the server rejects logins while
/// "starting up") until it succeeds, the server exits, or the deadline passes.
fn wait_ready(server: &Server, lifeline: &mut Lifeline) -> Result<(), HarnessError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(10);
    loop {
        if let Some(status) = lifeline.exited() {
            return Err(lifeline.exited_error(status));
        }
        let target = server.target(&server.admin_db, Duration::from_secs(2))?;
        let attempt = run_on_helper_thread(async move { target.connect().await.map(drop) });
        let last_error = match attempt {
            Ok(()) => return Ok(()),
            Err(error) => error.to_string(),
        };
        if started.elapsed() > READY_DEADLINE {
            return Err(HarnessError::Timeout {
                what: format!(
                    "postgres on port {} to accept connections (last error: {last_error}; log {})",
                    server.port,
                    lifeline.log_path().display()
                ),
                waited: started.elapsed(),
            });
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

/// Runs `future` to completion on a new thread with its own current-thread runtime.
///
/// Safe to call from synchronous code and from inside a runtime alike (a nested `block_on`
/// would panic); it blocks the calling thread, which is acceptable for short admin statements.
pub(crate) fn run_on_helper_thread<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a tokio runtime for a PostgreSQL admin statement")
            .block_on(future)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs one admin statement against the server's admin database.
fn admin_statement(server: &Server, sql: String) -> Result<(), HarnessError> {
    let target = server.target(&server.admin_db, Duration::from_secs(10))?;
    run_on_helper_thread(async move {
        let client = target.connect().await?;
        client.batch_execute(&sql).await.map_err(HarnessError::from)
    })
}

/// A database name no other test (in this or another process) uses.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!(
        "test_{}_{}_{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        hasher.finish() as u32
    )
}

/// Where a pooler reaches the server (see `pgbouncer`).
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    /// The server's CA when it speaks TLS (the pooler then verifies it like the tests do).
    pub sslrootcert: Option<String>,
}

/// A fresh, empty database for one test.
///
/// ```no_run
/// # async fn demo() {
/// let db = edge_e2e::TestDatabase::create();
/// let client = db.connect().await;
/// client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await.expect("create");
/// // or hand `db.url()` / `db.postgres_url()` / `db.config()` to the code under test
/// # }
/// ```
#[derive(Debug)]
pub struct TestDatabase {
    server: Server,
    name: String,
}

impl TestDatabase {
    /// Creates the database (starting the private cluster on first use).
    ///
    /// Synchronous, and safe to call from async tests too (it blocks for the duration).
    ///
    /// # Panics
    /// With a message saying what failed, if no database can be created.
    #[track_caller]
    pub fn create() -> TestDatabase {
        match TestDatabase::try_create() {
            Ok(db) => db,
            Err(error) => panic!("could not create a test database: {error}"),
        }
    }

    /// Like [`TestDatabase::create`], returning the error instead of panicking.
    pub fn try_create() -> Result<TestDatabase, HarnessError> {
        TestDatabase::create_on(server()?)
    }

    fn create_on(server: Server) -> Result<TestDatabase, HarnessError> {
        let name = unique_name();
        admin_statement(&server, format!("CREATE DATABASE \"{name}\""))?;
        Ok(TestDatabase { server, name })
    }

    /// Like [`TestDatabase::create`], without blocking the runtime thread while the cluster
    /// starts.
    pub async fn create_async() -> TestDatabase {
        tokio::task::spawn_blocking(TestDatabase::try_create)
            .await
            .expect("the test database setup task panicked")
            .unwrap_or_else(|error| panic!("could not create a test database: {error}"))
    }

    /// The database name (`test_…`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// A libpq `key=value` connection string, e.g.
    /// `host=127.0.0.1 port=41234 user=postgres dbname=test_… sslmode=verify-full
    /// sslrootcert=/tmp/edge-e2e-pg-…/tls/ca.crt` (connect with [`edge_cloud_store::connect`]:
    /// tokio-postgres alone rejects `verify-full` and `sslrootcert`).
    pub fn url(&self) -> String {
        self.server.url(&self.name)
    }

    /// The CA file the server's certificate is checked against (`sslrootcert`), if any.
    pub fn sslrootcert(&self) -> Option<PathBuf> {
        self.server.sslrootcert.as_ref().map(PathBuf::from)
    }

    /// The `sslmode` of [`TestDatabase::url`] (`verify-full`, `disable`, or the external
    /// server's).
    pub fn sslmode(&self) -> Option<&str> {
        self.server.sslmode.as_deref()
    }

    /// The same as a URL: `postgres://postgres@127.0.0.1:41234/test_…`.
    pub fn postgres_url(&self) -> String {
        let host = match &self.server.host {
            Host::Tcp(host) if host.contains(':') => format!("[{host}]"),
            Host::Tcp(host) => host.clone(),
            // libpq and tokio-postgres accept a percent-encoded socket directory as the host.
            Host::Unix(path) => percent_encode(&path.to_string_lossy()),
        };
        let password = self
            .server
            .password
            .as_deref()
            .map(|p| format!(":{}", percent_encode(p)))
            .unwrap_or_default();
        let query: Vec<String> = self
            .server
            .tls_params()
            .map(|(key, value)| format!("{key}={}", percent_encode(value)))
            .collect();
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        format!(
            "postgres://{}{password}@{host}:{}/{}{query}",
            percent_encode(&self.server.user),
            self.server.port,
            percent_encode(&self.name)
        )
    }

    /// The server this database lives on, as a pooler in front of it needs it.
    pub(crate) fn upstream(&self) -> Upstream {
        let host = match &self.server.host {
            Host::Tcp(host) => host.clone(),
            Host::Unix(path) => path.to_string_lossy().into_owned(),
        };
        Upstream {
            host,
            port: self.server.port,
            user: self.server.user.clone(),
            password: self.server.password.clone(),
            sslrootcert: self.server.sslrootcert.clone(),
        }
    }

    /// A tokio-postgres config for this database, without TLS settings: connect through
    /// [`TestDatabase::target`] (or [`TestDatabase::connect`]) instead, the server may accept
    /// TLS only.
    pub fn config(&self) -> Config {
        self.server.config(&self.name)
    }

    /// How the store connects to this database (TLS included).
    pub fn target(&self) -> DbTarget {
        self.server
            .target(&self.name, Duration::from_secs(10))
            .unwrap_or_else(|error| panic!("the URL of test database {}: {error}", self.name))
    }

    /// A connected client; the connection task runs on the current runtime.
    pub async fn try_connect(&self) -> Result<Client, HarnessError> {
        self.server
            .target(&self.name, Duration::from_secs(10))?
            .connect()
            .await
            .map_err(HarnessError::from)
    }

    /// A connected client; panics with a clear message if the connection fails.
    pub async fn connect(&self) -> Client {
        match self.try_connect().await {
            Ok(client) => client,
            Err(error) => panic!("connecting to test database {}: {error}", self.name),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // On the private cluster, leave it: the whole cluster is deleted at process exit and
        // a DROP per test would only cost time.
        if !self.server.external {
            return;
        }
        // FORCE (PostgreSQL 13+) ends sessions the test left open; fall back for older servers.
        let forced = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if admin_statement(&self.server, forced).is_err() {
            let plain = format!("DROP DATABASE IF EXISTS \"{}\"", self.name);
            if let Err(error) = admin_statement(&self.server, plain) {
                eprintln!(
                    "edge-e2e: could not drop test database {}: {error}",
                    self.name
                );
            }
        }
    }
}

/// Quotes a `key=value` connection-string value when needed (libpq rules).
fn quote_value(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '\'', '\\', '\t', '\n']) {
        return value.to_owned();
    }
    let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
    format!("'{escaped}'")
}

/// Percent-encodes everything but RFC 3986 unreserved characters (a URL's user, password,
/// database or query value).
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_values_only_when_needed() {
        assert_eq!(quote_value("postgres"), "postgres");
        assert_eq!(quote_value("a b"), "'a b'");
        assert_eq!(quote_value("it's"), r"'it\'s'");
        assert_eq!(quote_value(""), "''");
    }

    #[test]
    fn percent_encodes_reserved_characters() {
        assert_eq!(percent_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
        assert_eq!(percent_encode("/var/run"), "%2Fvar%2Frun");
    }

    #[test]
    fn parses_both_url_forms() {
        let server =
            Server::from_url("postgres://alice:s%40cret@db.example:6543/admin").expect("url form");
        assert_eq!(server.port, 6543);
        assert_eq!(server.user, "alice");
        assert_eq!(server.password.as_deref(), Some("s@cret"));
        assert_eq!(server.admin_db, "admin");
        let server = Server::from_url("host=127.0.0.1 port=5433 user=bob").expect("key=value");
        assert_eq!(server.port, 5433);
        assert_eq!(server.admin_db, "postgres");
        assert!(server.external);
    }

    #[test]
    fn rendered_urls_parse_back() {
        let db = TestDatabase {
            server: Server::from_url(
                "postgres://al ice:p'w@localhost:5433/postgres?sslmode=verify-ca&sslrootcert=/tmp/a%20b/ca.crt",
            )
            .expect("url"),
            name: "test_1".into(),
        };
        for rendered in [db.url(), db.postgres_url()] {
            let stripped = strip_tls_params(&rendered).expect("TLS parameters");
            assert_eq!(stripped.sslmode.as_deref(), Some("verify-ca"), "{rendered}");
            assert_eq!(
                stripped.sslrootcert.as_deref(),
                Some("/tmp/a b/ca.crt"),
                "{rendered}"
            );
            let config = Config::from_str(&stripped.rest).expect("parses back");
            assert_eq!(config.get_user(), Some("al ice"), "{rendered}");
            assert_eq!(config.get_password(), Some(&b"p'w"[..]), "{rendered}");
            assert_eq!(config.get_dbname(), Some("test_1"), "{rendered}");
        }
        // Not a real database: keep Drop from trying to reach the server.
        let mut db = db;
        db.server.external = false;
    }

    #[test]
    fn unique_names_are_unique_and_valid_identifiers() {
        let a = unique_name();
        let b = unique_name();
        assert_ne!(a, b);
        assert!(a.len() < 63, "{a}");
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{a}"
        );
    }
}
