//! A server process that dies with the test process.
//!
//! The private PostgreSQL cluster lives in a `static`, and statics are never dropped; a test that
//! is killed (timeout, Ctrl-C, `SIGKILL`) never runs `Drop` either. So instead of relying on our
//! own cleanup code, every server runs under a tiny `sh` supervisor whose standard input is a pipe
//! held by the test process. The kernel closes that pipe however the test process ends; the
//! supervisor's `read` then returns, it signals the server, and — once the server has exited —
//! removes the server's scratch directory if asked to.
//!
//! The supervisor prints the server's pid first, so a test can also kill the server hard
//! (crash simulation) and so readiness polling can notice an early exit via the supervisor's
//! own exit status.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::HarnessError;

/// `$1` signal for a graceful stop, `$2` log file, `$3` directory to remove after a requested stop
/// ("" for none), `$4…` the server command line.
///
/// The server gets `/dev/null` as stdin and does not inherit fd 3 (our pipe), so only the reader
/// subshell holds it. The reader creates a marker before signalling, so the main shell can tell
/// "stopped because we asked" (remove the directory) from "died on its own" (keep the log for
/// the error message).
const SUPERVISOR: &str = r#"
sig=$1; log=$2; cleanup=$3; shift 3
exec 3<&0
"$@" </dev/null 3<&- >>"$log" 2>&1 &
pid=$!
echo "$pid"
(
    read -r _ <&3
    if [ -n "$cleanup" ]; then : >"$cleanup/.stop-requested"; fi
    kill -s "$sig" "$pid"
) >/dev/null 2>&1 </dev/null &
exec 3<&-
wait "$pid"
rc=$?
if [ -n "$cleanup" ] && [ -e "$cleanup/.stop-requested" ]; then rm -rf "$cleanup"; fi
exit "$rc"
"#;

/// What to run and how to stop it.
#[derive(Debug)]
pub(crate) struct LifelineSpec {
    /// Name for messages ("mosquitto", "postgres").
    pub what: String,
    /// Signal name for a graceful stop (`TERM`, `INT`).
    pub stop_signal: &'static str,
    /// Where the server's stdout/stderr go.
    pub log: PathBuf,
    /// Removed by the supervisor after a requested stop.
    pub cleanup_dir: Option<PathBuf>,
    /// Prefix that runs the supervisor as another user (`setpriv …`), if any.
    pub run_as: Vec<OsString>,
    /// Working directory of the supervisor and server.
    pub cwd: PathBuf,
    /// The server command line.
    pub command: Vec<OsString>,
}

/// A running supervised server. Dropping it stops the server gracefully.
#[derive(Debug)]
pub(crate) struct Lifeline {
    what: String,
    log: PathBuf,
    supervisor: Child,
    /// Closing this is the stop request.
    pipe: Option<ChildStdin>,
    server_pid: u32,
}

impl Lifeline {
    pub(crate) fn spawn(spec: LifelineSpec) -> Result<Lifeline, HarnessError> {
        let (program, prefix_args) = match spec.run_as.split_first() {
            Some((program, rest)) => (program.clone(), rest.to_vec()),
            None => (OsString::from("sh"), Vec::new()),
        };
        let mut command = Command::new(&program);
        command.args(prefix_args);
        if !spec.run_as.is_empty() {
            command.arg("sh");
        }
        let cleanup = spec
            .cleanup_dir
            .as_ref()
            .map(|dir| dir.as_os_str().to_owned())
            .unwrap_or_default();
        command
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("lifeline")
            .arg(spec.stop_signal)
            .arg(&spec.log)
            .arg(cleanup)
            .args(&spec.command)
            .current_dir(&spec.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut supervisor = command
            .spawn()
            .map_err(HarnessError::io(format!("starting {}", spec.what)))?;
        let pipe = supervisor.stdin.take();
        let stdout = supervisor.stdout.take().ok_or_else(|| {
            HarnessError::Invalid(format!("{}: supervisor has no stdout", spec.what))
        })?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(HarnessError::io(format!(
                "reading the pid of {}",
                spec.what
            )))?;
        let server_pid = line.trim().parse::<u32>().map_err(|_| {
            HarnessError::Invalid(format!(
                "{}: supervisor printed {line:?} instead of a pid",
                spec.what
            ))
        })?;
        Ok(Lifeline {
            what: spec.what,
            log: spec.log,
            supervisor,
            pipe,
            server_pid,
        })
    }

    /// `Some(status)` once the server (and so the supervisor) has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.supervisor.try_wait().ok().flatten()
    }

    /// An error describing an early exit, with the end of the server's log.
    pub(crate) fn exited_error(&self, status: ExitStatus) -> HarnessError {
        HarnessError::ServerExited {
            what: self.what.clone(),
            status: status.to_string(),
            log: read_log_tail(&self.log),
        }
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// Graceful stop: close the pipe, wait for the supervisor; kill hard after `deadline`.
    pub(crate) fn stop(&mut self, deadline: Duration) {
        self.pipe = None;
        let stopped =
            crate::wait::try_wait_until(deadline, "server exit", || self.exited().is_some());
        if stopped.is_err() {
            self.kill_hard();
        }
    }

    /// `SIGKILL` to the server, as a crash would; waits for the supervisor to reap it.
    pub(crate) fn kill_hard(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(r#"kill -s KILL "$1" 2>/dev/null"#)
            .arg("kill")
            .arg(self.server_pid.to_string())
            .status();
        self.pipe = None;
        let _ = self.supervisor.wait();
    }
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.stop(Duration::from_secs(10));
        }
    }
}

/// The last few KiB of a log file, for error messages.
pub(crate) fn read_log_tail(path: &Path) -> String {
    const TAIL: usize = 8 * 1024;
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(TAIL);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(error) => format!("(could not read {}: {error})", path.display()),
    }
}
