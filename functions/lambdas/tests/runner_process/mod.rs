//! The real `edge-cloud run` process for the runner's crash and outage tests: started as the
//! service identity against a harness broker and database, its log in a file, killed on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use edge_e2e::{free_port, Broker, Pki};

pub struct RunnerProcess {
    child: Child,
    pub log: PathBuf,
    pub http: std::net::SocketAddr,
    /// The metrics listener (`--metrics`): a free port unless the test passed its own flag.
    pub metrics: Option<std::net::SocketAddr>,
}

impl RunnerProcess {
    /// `edge-cloud run` with `env` added to its environment; returns once its subscriptions
    /// are acknowledged (five more SUBACKs to `client_id` than before).
    pub fn start(
        db_url: &str,
        broker: &Broker,
        pki: &Pki,
        dir: &Path,
        client_id: &str,
        env: &[(&str, &str)],
    ) -> RunnerProcess {
        Self::start_with_args(db_url, broker, pki, dir, client_id, env, &[])
    }

    pub fn start_with_args(
        db_url: &str,
        broker: &Broker,
        pki: &Pki,
        dir: &Path,
        client_id: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> RunnerProcess {
        let before = broker.subacks_sent_to(client_id);
        let mut runner = Self::spawn(db_url, broker, pki, dir, client_id, env, args);
        let deadline = Instant::now() + Duration::from_secs(60);
        // The ports come from `free_port` (bind, read, release): a parallel test may take one
        // before the runner binds it. Such a start-up is retried on new ports, twice.
        let mut port_retries = 2;
        while broker.subacks_sent_to(client_id) < before + 5 {
            if let Some(status) = runner.child.try_wait().unwrap() {
                let log = runner.log_text();
                if port_retries > 0
                    && (log.contains("cannot listen") || log.contains("binding the HTTP API"))
                {
                    port_retries -= 1;
                    runner = Self::spawn(db_url, broker, pki, dir, client_id, env, args);
                    continue;
                }
                panic!("edge-cloud run exited ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "edge-cloud run did not subscribe within 60 s:\n{}",
                runner.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        runner
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(
        db_url: &str,
        broker: &Broker,
        pki: &Pki,
        dir: &Path,
        client_id: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> RunnerProcess {
        let service = pki.service();
        let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let log = dir.join(format!("edge-cloud-{}.log", http.port()));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_edge-cloud"));
        command
            .arg("run")
            .arg("--database-url")
            .arg(db_url)
            .arg("--mqtt-url")
            .arg(format!("mqtts://127.0.0.1:{}", broker.port()))
            .arg("--ca")
            .arg(pki.ca().cert_path())
            .arg("--cert")
            .arg(service.cert_path())
            .arg("--key")
            .arg(service.key_path())
            .arg("--client-id")
            .arg(client_id)
            .arg("--http")
            .arg(http.to_string())
            .args(args)
            .env_remove("FAILPOINTS")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if !args.contains(&"--spill-dir") {
            command.arg("--spill-dir").arg(dir.join("spill"));
        }
        // Runners of parallel tests must not share the default metrics port.
        let metrics = if args.contains(&"--metrics") {
            None
        } else {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
            command.arg("--metrics").arg(addr.to_string());
            Some(addr)
        };
        for (k, v) in env {
            command.env(k, v);
        }
        RunnerProcess {
            child: command.spawn().unwrap(),
            log,
            http,
            metrics,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status once the process has exited within `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
