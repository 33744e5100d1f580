//! A PostgreSQL outage: stop the private cluster a [`TestDatabase`] lives on, start it again.
//!
//! The cluster is shared by every test of the process, so a test that stops it belongs in a
//! test binary (file) of its own. [`PostgresOutage::begin`] sends the postmaster a fast
//! shutdown (`SIGINT`: sessions end, clients see their connections drop and new ones refused)
//! and waits until `postmaster.pid` is gone; [`PostgresOutage::end`] starts the server again
//! with the command line it recorded in `postmaster.opts` (same data, port and settings), under
//! a supervisor like the first start, and waits until the database accepts connections.
//! Not available with `TEST_DATABASE_URL` (an external server is not ours to stop).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lifeline::{Lifeline, LifelineSpec};
use crate::postgres::{TestDatabase, DATABASE_URL_ENV};
use crate::privilege::unprivileged_runner;
use crate::HarnessError;

/// How long a stop or a start may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// Servers started again by [`PostgresOutage::end`]: kept until the process exits (the pipe
/// of each supervisor closes then and it stops the server and removes the cluster directory).
static RESTARTED: Mutex<Vec<Lifeline>> = Mutex::new(Vec::new());

/// The stopped server, ready to be started again.
#[derive(Debug)]
pub struct PostgresOutage {
    data: PathBuf,
    command: Vec<OsString>,
    started: Instant,
    ended: bool,
}

impl PostgresOutage {
    /// Stops the server `db` lives on (fast shutdown) and waits until it is down.
    pub async fn begin(db: &TestDatabase) -> Result<PostgresOutage, HarnessError> {
        if std::env::var(DATABASE_URL_ENV).is_ok_and(|v| !v.trim().is_empty()) {
            return Err(HarnessError::Invalid(format!(
                "a PostgreSQL outage needs the private cluster, not {DATABASE_URL_ENV}"
            )));
        }
        let client = db.try_connect().await?;
        let data: String = client.query_one("SHOW data_directory", &[]).await?.get(0);
        drop(client);
        let data = PathBuf::from(data);
        let command = parse_opts(&read(&data.join("postmaster.opts"))?)?;
        let pid_file = data.join("postmaster.pid");
        let pid = read(&pid_file)?
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .ok_or_else(|| HarnessError::Invalid(format!("no pid in {}", pid_file.display())))?;
        let status = std::process::Command::new("kill")
            .args(["-s", "INT", &pid.to_string()])
            .status()
            .map_err(HarnessError::io("signalling the postmaster"))?;
        if !status.success() {
            return Err(HarnessError::Invalid(format!(
                "kill -INT {pid} (the postmaster) failed: {status}"
            )));
        }
        let started = Instant::now();
        crate::wait::try_wait_until(DEADLINE, "PostgreSQL to shut down", || !pid_file.exists())?;
        Ok(PostgresOutage {
            data,
            command,
            started,
            ended: false,
        })
    }

    /// How long the server has been down.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Starts the server again and waits until `db` accepts connections.
    pub async fn end(mut self, db: &TestDatabase) -> Result<(), HarnessError> {
        let run_as = unprivileged_runner()?;
        let root = self.data.parent().unwrap_or(Path::new("/")).to_path_buf();
        let lifeline = Lifeline::spawn(LifelineSpec {
            what: "postgres (after an outage)".into(),
            stop_signal: "INT",
            log: root.join("postgres-after-outage.log"),
            cleanup_dir: Some(root.clone()),
            run_as: run_as.map(|r| r.prefix).unwrap_or_default(),
            cwd: root,
            command: std::mem::take(&mut self.command),
        })?;
        RESTARTED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(lifeline);
        self.ended = true;
        let deadline = Instant::now() + DEADLINE;
        loop {
            match db.try_connect().await {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() > deadline => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

fn read(path: &Path) -> Result<String, HarnessError> {
    std::fs::read_to_string(path).map_err(HarnessError::io(format!("reading {}", path.display())))
}

/// `postmaster.opts`: the program, then each argument in double quotes.
fn parse_opts(opts: &str) -> Result<Vec<OsString>, HarnessError> {
    let line = opts.trim();
    let (program, rest) = line
        .split_once(' ')
        .ok_or_else(|| HarnessError::Invalid(format!("postmaster.opts: {line:?}")))?;
    let mut command = vec![OsString::from(program)];
    let rest = rest.trim();
    if !rest.is_empty() {
        let inner = rest
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .ok_or_else(|| HarnessError::Invalid(format!("postmaster.opts: {line:?}")))?;
        command.extend(inner.split("\" \"").map(OsString::from));
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opts_are_split_into_arguments() {
        let c = parse_opts("/usr/bin/postgres \"-D\" \"/tmp/x/data\" \"-c\" \"fsync=off\"\n")
            .expect("parses");
        assert_eq!(
            c,
            ["/usr/bin/postgres", "-D", "/tmp/x/data", "-c", "fsync=off"]
        );
    }
}
