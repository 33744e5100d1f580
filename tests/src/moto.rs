//! moto in server mode: the stand-in for AWS APIs (S3, SQS, EventBridge, IoT data plane,
//! Secrets Manager, SSM, IAM, CloudFormation) — and only for AWS, which cannot run here.
//!
//! [`Moto::start`] runs `moto_server -H 127.0.0.1 -p PORT` (PyPI `moto[server]`, installed by
//! scripts/setup.sh) under the same `Lifeline` supervisor as the other servers, with moto's
//! request recorder on: moto keeps what the IoT data plane's `Publish` received only in
//! memory, so [`Moto::recorded_requests`] reads the recorder's log instead. Each test starts
//! its own server (≈1 s), so state never leaks between tests.
//!
//! moto does not check signatures unless IAM enforcement is switched on
//! ([`Moto::enforce_iam`]: from then on every request must be signed by an IAM user's access
//! key and allowed by its policies).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::lifeline::{Lifeline, LifelineSpec};
use crate::program::find_program;
use crate::HarnessError;

/// How long moto may take to import its backends and listen.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// The region every test client uses.
pub const REGION: &str = "eu-west-1";
/// moto's default account (what ARNs it creates contain).
pub const ACCOUNT: &str = "123456789012";
/// Credentials of moto's default identity (any value works while IAM is not enforced).
pub const ACCESS_KEY: &str = "testing";
pub const SECRET_KEY: &str = "testing";

/// A running moto server; dropping it stops the server.
#[derive(Debug)]
pub struct Moto {
    port: u16,
    recording: PathBuf,
    lifeline: Option<Lifeline>,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts a moto server on a free loopback port; panics with its log on failure.
    #[track_caller]
    pub fn start() -> Moto {
        match Moto::try_start() {
            Ok(moto) => moto,
            Err(error) => panic!("could not start moto_server: {error}"),
        }
    }

    /// Like [`Moto::start`], returning the error.
    pub fn try_start() -> Result<Moto, HarnessError> {
        let program = find_program("moto_server").ok_or_else(|| {
            HarnessError::MissingProgram("moto_server (pip install 'moto[server]')".into())
        })?;
        let dir = tempfile::tempdir().map_err(HarnessError::io("creating moto's directory"))?;
        let recording = dir.path().join("recording.jsonl");
        let log = dir.path().join("moto.log");
        let port = crate::free_port()?;
        let mut lifeline = Lifeline::spawn(LifelineSpec {
            what: "moto_server".into(),
            stop_signal: "TERM",
            log: log.clone(),
            cleanup_dir: None, // the TempDir owns it
            run_as: Vec::new(),
            cwd: dir.path().to_path_buf(),
            command: vec![
                "env".into(),
                "MOTO_ENABLE_RECORDING=true".into(),
                format!("MOTO_RECORDER_FILEPATH={}", recording.display()).into(),
                program.into_os_string(),
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string().into(),
            ],
        })?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let started = Instant::now();
        let mut exited = None;
        // Ready = moto's own API answers (the listener opens before the app is importable).
        let ready = crate::wait::try_wait_until(READY_DEADLINE, "moto_server to answer", || {
            if let Some(status) = lifeline.exited() {
                exited = Some(status);
                return true;
            }
            http(addr, "GET", "/moto-api/data.json", "").is_ok_and(|(status, _)| status == 200)
        });
        if let Some(status) = exited {
            return Err(lifeline.exited_error(status));
        }
        if ready.is_err() {
            lifeline.kill_hard();
            return Err(HarnessError::Timeout {
                what: format!(
                    "moto_server on {addr}; log:\n{}",
                    crate::lifeline::read_log_tail(&log)
                ),
                waited: started.elapsed(),
            });
        }
        Ok(Moto {
            port,
            recording,
            lifeline: Some(lifeline),
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:PORT`, the endpoint URL of every service.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// From now on every request must be signed with an IAM user's access key and be allowed
    /// by that user's policies (moto's `INITIAL_NO_AUTH_ACTION_COUNT` = 0). Create the users
    /// and keys first.
    pub fn enforce_iam(&self) -> Result<(), HarnessError> {
        let (status, body) = http(self.addr(), "POST", "/moto-api/reset-auth", "0")?;
        if status != 200 {
            return Err(HarnessError::Invalid(format!(
                "moto reset-auth answered {status}: {body}"
            )));
        }
        Ok(())
    }

    /// An IAM user with an access key and no policy at all (the caller a denied Lambda role
    /// looks like); its access key id and secret. Call before [`Moto::enforce_iam`].
    pub fn create_user_without_policies(
        &self,
        name: &str,
    ) -> Result<(String, String), HarnessError> {
        self.iam(&format!(
            "Action=CreateUser&UserName={name}&Version=2010-05-08"
        ))?;
        let answer = self.iam(&format!(
            "Action=CreateAccessKey&UserName={name}&Version=2010-05-08"
        ))?;
        let field = |tag: &str| {
            let open = format!("<{tag}>");
            let close = format!("</{tag}>");
            answer
                .split_once(&open)
                .and_then(|(_, rest)| rest.split_once(&close))
                .map(|(value, _)| value.trim().to_owned())
                .ok_or_else(|| HarnessError::Invalid(format!("no {tag} in {answer}")))
        };
        Ok((field("AccessKeyId")?, field("SecretAccessKey")?))
    }

    /// One IAM query-API call. moto routes a request to a service by the credential scope of
    /// its `Authorization` header, and checks no signature before [`Moto::enforce_iam`].
    fn iam(&self, form: &str) -> Result<String, HarnessError> {
        let headers = format!(
            "Content-Type: application/x-www-form-urlencoded\r\nAuthorization: AWS4-HMAC-SHA256 \
             Credential={ACCESS_KEY}/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, \
             Signature=0\r\n"
        );
        let (status, body) = request(self.addr(), "POST", "/", &headers, form)?;
        if status != 200 {
            return Err(HarnessError::Invalid(format!(
                "moto IAM answered {status}: {body}"
            )));
        }
        Ok(body)
    }

    /// Every request moto received so far, as its recorder wrote them: JSON objects with
    /// `method`, `url`, `headers`, `body` (base64 when `body_encoded`).
    pub fn recorded_requests(&self) -> Result<Vec<serde_json::Value>, HarnessError> {
        let text = match std::fs::read_to_string(&self.recording) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(HarnessError::io("reading moto's recording")(e)),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| HarnessError::Invalid(format!("moto recording line {l:?}: {e}")))
            })
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut lifeline) = self.lifeline.take() {
            lifeline.stop(Duration::from_secs(10));
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; the status and body of the answer.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), HarnessError> {
    // text/plain: moto reads reset-auth's count from the raw body, which a form type hides.
    request(addr, method, path, "Content-Type: text/plain\r\n", body)
}

/// [`http`] with the given header lines (each ending in CRLF).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<(u16, String), HarnessError> {
    let io = |what: &str| HarnessError::io(format!("{what} moto at {addr}"));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(io("connecting to"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io("configuring"))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        addr.port(),
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(io("writing to"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(io("reading from"))?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| HarnessError::Invalid(format!("moto answered {answer:?}")))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
