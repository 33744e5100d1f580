//! pgbouncer in transaction mode in front of a test database: the stand-in for RDS Proxy and
//! for a self-managed pooler (issue 14).
//!
//! [`Pgbouncer::start`] writes `pgbouncer.ini` and a userlist into a temp dir, starts
//! `/usr/sbin/pgbouncer` (Debian's `pgbouncer` package; `EDGE_E2E_PGBOUNCER` overrides the path)
//! on a free loopback port under the `lifeline` supervisor — as the same unprivileged user as
//! the private PostgreSQL cluster when the tests run as root, since pgbouncer refuses to run as
//! root — and waits until its admin console accepts a login.
//!
//! Clients connect to [`Pgbouncer::url`]; every statement outside an explicit transaction may
//! run on another of the few server connections. [`Pgbouncer::show`] reads the admin console
//! (`SHOW POOLS`, `SHOW STATS`, …).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::lifeline::{read_log_tail, Lifeline, LifelineSpec};
use crate::postgres::{run_on_helper_thread, TestDatabase, Upstream};
use crate::privilege::{chown_recursive, unprivileged_runner};
use crate::program::find_program;
use crate::{free_port, HarnessError};

/// Environment variable naming the pgbouncer binary, overriding the search.
pub const PGBOUNCER_ENV: &str = "EDGE_E2E_PGBOUNCER";

/// How long pgbouncer may take to accept logins.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// The pool settings that matter for the tests.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Server connections per (database, user): `default_pool_size`.
    pub server_connections: u32,
    /// Client connections pgbouncer accepts: `max_client_conn`.
    pub max_clients: u32,
}

impl Default for PoolSettings {
    /// Two server connections, room for a hundred clients.
    fn default() -> Self {
        PoolSettings {
            server_connections: 2,
            max_clients: 100,
        }
    }
}

/// A running pgbouncer (stopped on drop).
#[derive(Debug)]
pub struct Pgbouncer {
    port: u16,
    user: String,
    // Declared before `root`: the process stops before its directory goes.
    lifeline: Lifeline,
    root: tempfile::TempDir,
}

/// The user of the admin console and of the pooled connections.
const ADMIN_DB: &str = "pgbouncer";

/// `pgbouncer.ini`: transaction pooling of every database of `upstream`, trust authentication
/// of `user` (listed in `userlist.txt`) on loopback only.
///
/// The one place the server side is described: to the harness's TLS-only cluster pgbouncer
/// connects with `server_tls_sslmode = verify-full` against the cluster's CA, as a deployment's
/// pooler in front of RDS would.
fn config_text(port: u16, root: &Path, upstream: &Upstream, settings: PoolSettings) -> String {
    let password = upstream
        .password
        .as_deref()
        .map(|p| format!(" password={p}"))
        .unwrap_or_default();
    let server_tls = upstream
        .sslrootcert
        .as_deref()
        .map(|ca| format!("server_tls_sslmode = verify-full\nserver_tls_ca_file = {ca}\n"))
        .unwrap_or_default();
    format!(
        "[databases]\n\
         * = host={host} port={upstream_port} user={user}{password}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {root}/userlist.txt\n\
         admin_users = {user}\n\
         stats_users = {user}\n\
         pool_mode = transaction\n\
         default_pool_size = {servers}\n\
         min_pool_size = 0\n\
         reserve_pool_size = 0\n\
         max_db_connections = {servers}\n\
         max_client_conn = {clients}\n\
         server_reset_query =\n\
         ignore_startup_parameters = extra_float_digits\n\
         logfile = {root}/pgbouncer.log\n\
         pidfile = {root}/pgbouncer.pid\n\
         log_connections = 0\n\
         log_disconnections = 0\n\
         {server_tls}",
        host = upstream.host,
        upstream_port = upstream.port,
        user = upstream.user,
        servers = settings.server_connections,
        clients = settings.max_clients,
        root = root.display(),
    )
}

impl Pgbouncer {
    /// Starts pgbouncer in front of `db`'s server; panics with a clear message on failure.
    #[track_caller]
    pub fn start(db: &TestDatabase, settings: PoolSettings) -> Pgbouncer {
        match Pgbouncer::try_start(db, settings) {
            Ok(pooler) => pooler,
            Err(error) => panic!("could not start pgbouncer: {error}"),
        }
    }

    /// Like [`Pgbouncer::start`], returning the error.
    pub fn try_start(db: &TestDatabase, settings: PoolSettings) -> Result<Pgbouncer, HarnessError> {
        let program = find_pgbouncer()?;
        let upstream = db.upstream();
        let run_as = unprivileged_runner()?;
        let root = tempfile::Builder::new()
            .prefix("edge-e2e-pgbouncer-")
            .tempdir_in("/tmp")
            .map_err(HarnessError::io("creating the pgbouncer directory"))?;
        let port = free_port()?;
        std::fs::write(
            root.path().join("pgbouncer.ini"),
            config_text(port, root.path(), &upstream, settings),
        )
        .map_err(HarnessError::io("writing pgbouncer.ini"))?;
        std::fs::write(
            root.path().join("userlist.txt"),
            format!("\"{}\" \"\"\n", upstream.user),
        )
        .map_err(HarnessError::io("writing the pgbouncer userlist"))?;
        if let Some(run_as) = &run_as {
            chown_recursive(root.path(), run_as)?;
        }
        let mut lifeline = Lifeline::spawn(LifelineSpec {
            what: "pgbouncer".into(),
            // SIGTERM: immediate shutdown (SIGINT would wait for clients to finish).
            stop_signal: "TERM",
            log: root.path().join("stderr.log"),
            cleanup_dir: None,
            run_as: run_as.map(|r| r.prefix).unwrap_or_default(),
            cwd: root.path().to_path_buf(),
            command: vec![
                program.into_os_string(),
                root.path().join("pgbouncer.ini").into_os_string(),
            ],
        })?;
        wait_ready(port, &upstream.user, &mut lifeline, root.path())?;
        Ok(Pgbouncer {
            port,
            user: upstream.user,
            lifeline,
            root,
        })
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A `key=value` connection string to `db` through the pooler.
    pub fn url(&self, db: &TestDatabase) -> String {
        format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            self.port,
            self.user,
            db.name()
        )
    }

    /// One admin console command (`SHOW POOLS`, `SHOW STATS`, …): its rows as column → value.
    pub async fn show(&self, command: &str) -> Result<Vec<BTreeMap<String, String>>, HarnessError> {
        let (client, connection) = admin_config(self.port, &self.user).connect(NoTls).await?;
        let connection = tokio::spawn(connection);
        // The console speaks the simple query protocol only.
        let messages = client.simple_query(command).await;
        drop(client);
        let _ = connection.await;
        Ok(messages?
            .into_iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => Some(
                    row.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, column)| {
                            (
                                column.name().to_owned(),
                                row.get(i).unwrap_or_default().to_owned(),
                            )
                        })
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    /// pgbouncer's own log (errors it saw from clients and servers).
    pub fn log(&self) -> String {
        read_log_tail(&self.root.path().join("pgbouncer.log"))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.lifeline.exited().is_none()
    }
}

fn find_pgbouncer() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os(PGBOUNCER_ENV) {
        return Ok(PathBuf::from(path));
    }
    let debian = PathBuf::from("/usr/sbin/pgbouncer");
    if debian.is_file() {
        return Ok(debian);
    }
    find_program("pgbouncer")
        .ok_or_else(|| HarnessError::MissingProgram("pgbouncer (Debian package pgbouncer)".into()))
}

fn admin_config(port: u16, user: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(ADMIN_DB)
        .connect_timeout(Duration::from_secs(5));
    config
}

/// Polls a login to the admin console until it works, pgbouncer exits, or the deadline passes.
fn wait_ready(
    port: u16,
    user: &str,
    lifeline: &mut Lifeline,
    root: &Path,
) -> Result<(), HarnessError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(10);
    loop {
        if let Some(status) = lifeline.exited() {
            let mut error = lifeline.exited_error(status);
            if let HarnessError::ServerExited { log, .. } = &mut error {
                log.push_str(&read_log_tail(&root.join("pgbouncer.log")));
            }
            return Err(error);
        }
        let config = admin_config(port, user);
        let attempt = run_on_helper_thread(async move {
            let (client, connection) = config.connect(NoTls).await?;
            drop(client);
            drop(connection);
            Ok::<(), tokio_postgres::Error>(())
        });
        let last_error = match attempt {
            Ok(()) => return Ok(()),
            Err(error) => error.to_string(),
        };
        if started.elapsed() > READY_DEADLINE {
            return Err(HarnessError::Timeout {
                what: format!(
                    "pgbouncer on port {port} to accept logins (last error: {last_error}; log {})",
                    root.join("pgbouncer.log").display()
                ),
                waited: started.elapsed(),
            });
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_pools_in_transaction_mode_with_the_given_sizes() {
        let upstream = Upstream {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            sslrootcert: Some("/tmp/x/ca.crt".into()),
        };
        let text = config_text(
            6432,
            Path::new("/tmp/x"),
            &upstream,
            PoolSettings {
                server_connections: 2,
                max_clients: 50,
            },
        );
        for line in [
            "* = host=127.0.0.1 port=5432 user=postgres\n",
            "pool_mode = transaction\n",
            "default_pool_size = 2\n",
            "max_client_conn = 50\n",
            "listen_port = 6432\n",
            "server_tls_sslmode = verify-full\n",
            "server_tls_ca_file = /tmp/x/ca.crt\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }
}
