//! The whole-stack fault suite's driver (`scripts/chaos.sh`; issue 13, docs/reliability.md).
//!
//! Runs the real stack — PostgreSQL, mosquitto (mTLS, ACL, persistent sessions), `edge-cloud run`
//! and `edge-agent` as separate processes — with an application writing a real SQLite file
//! (`tests/src/chaos/writer.py` on the system libsqlite3), approves the schema reviews through
//! the HTTP API part-way, injects faults at moments drawn from a printed seed, and then checks:
//!
//! 1. the mirror equals the source row for row, every column, values exactly (REALs bit for bit);
//! 2. every journal entry the agent logged as acknowledged (`batch acknowledged` lines) is in the
//!    mirror: the mirror row of its key is at least that version (Jepsen style);
//! 3. no daemon exited by itself, and (CI mode) every fault kind fired at least once.
//!
//! Exit status 0 = PASS, 1 = FAIL (the reasons are printed), 2 = the stack could not be set up.
//!
//! ```text
//! chaos --agent BIN --cloud BIN --writer writer.py --work DIR [--seed N] [--soak SECONDS]
//!       [--second-sqlite LIBDIR] [--agent-dir DIR (a small tmpfs, soak: disk full)]
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn err(message: impl Into<String>) -> Box<dyn std::error::Error> {
    message.into().into()
}

macro_rules! say {
    ($($arg:tt)*) => {{
        println!("[chaos {:>6.1}s] {}", started().elapsed().as_secs_f64(), format!($($arg)*));
    }};
}

fn started() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

// ---------------------------------------------------------------------------------------------
// Seeded PRNG (splitmix64): the fault schedule is a function of the seed alone.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Fault {
    AgentKill,
    RunnerKill,
    TwoRunners,
    BrokerRestart,
    PostgresKill,
    PostgresOutage60s,
    ClockBackNewEpoch,
    /// Soak only.
    DiskFull,
    /// Soak only: the application's writer restarts on the other SQLite library.
    WriterSwitch,
}

impl Fault {
    const CI: [Fault; 7] = [
        Fault::AgentKill,
        Fault::RunnerKill,
        Fault::TwoRunners,
        Fault::BrokerRestart,
        Fault::PostgresKill,
        Fault::PostgresOutage60s,
        Fault::ClockBackNewEpoch,
    ];
    fn name(self) -> &'static str {
        match self {
            Fault::AgentKill => "agent_kill9",
            Fault::RunnerKill => "runner_kill9",
            Fault::TwoRunners => "two_runners",
            Fault::BrokerRestart => "broker_restart",
            Fault::PostgresKill => "postgres_kill9",
            Fault::PostgresOutage60s => "postgres_outage_60s",
            Fault::ClockBackNewEpoch => "clock_back_new_epoch",
            Fault::DiskFull => "agent_disk_full",
            Fault::WriterSwitch => "writer_sqlite_switch",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments

struct Args {
    seed: u64,
    soak: Option<Duration>,
    agent: PathBuf,
    cloud: PathBuf,
    writer: PathBuf,
    work: PathBuf,
    second_sqlite: Option<PathBuf>,
    agent_dir: Option<PathBuf>,
}

fn parse_args() -> Res<Args> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        seed: 1,
        soak: None,
        agent: PathBuf::new(),
        cloud: PathBuf::new(),
        writer: PathBuf::new(),
        work: PathBuf::new(),
        second_sqlite: None,
        agent_dir: None,
    };
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| err(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--seed" => a.seed = value()?.parse()?,
            "--soak" => a.soak = Some(Duration::from_secs(value()?.parse()?)),
            "--agent" => a.agent = value()?.into(),
            "--cloud" => a.cloud = value()?.into(),
            "--writer" => a.writer = value()?.into(),
            "--work" => a.work = value()?.into(),
            "--second-sqlite" => a.second_sqlite = Some(value()?.into()),
            "--agent-dir" => a.agent_dir = Some(value()?.into()),
            other => return Err(err(format!("unknown argument {other}"))),
        }
    }
    for (name, path) in [
        ("--agent", &a.agent),
        ("--cloud", &a.cloud),
        ("--writer", &a.writer),
    ] {
        if !path.is_file() {
            return Err(err(format!("{name} {} is not a file", path.display())));
        }
    }
    if a.work.as_os_str().is_empty() {
        return Err(err("--work DIR is required"));
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// Processes

fn free_port() -> Res<u16> {
    Ok(edge_e2e::free_port()?)
}

fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) -> Res<()> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(err(format!(
        "timed out after {deadline:?} waiting for {what}"
    )))
}

fn log_file(path: &Path) -> Res<File> {
    Ok(OpenOptions::new().create(true).append(true).open(path)?)
}

fn tcp_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn signal(pid: u32, sig: &str, group: bool) {
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    let _ = Command::new("kill")
        .args([format!("-{sig}"), "--".into(), target])
        .stderr(Stdio::null())
        .status();
}

/// One supervised server process (its own process group, so kill -9 takes its children too).
struct Proc {
    name: String,
    child: Option<Child>,
    /// Exits nobody asked for (a daemon must never exit on its own).
    unexpected_exits: u32,
}

impl Proc {
    fn new(name: &str) -> Proc {
        Proc {
            name: name.into(),
            child: None,
            unexpected_exits: 0,
        }
    }
    fn spawn(&mut self, mut cmd: Command, log: &Path) -> Res<()> {
        use std::os::unix::process::CommandExt;
        let out = log_file(log)?;
        cmd.stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null());
        cmd.process_group(0);
        self.child = Some(
            cmd.spawn()
                .map_err(|e| err(format!("spawning {}: {e}", self.name)))?,
        );
        Ok(())
    }
    fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }
    /// Notices an exit nobody asked for; returns true when it happened.
    fn check_exit(&mut self) -> bool {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                self.unexpected_exits += 1;
                if self.unexpected_exits <= 3 || self.unexpected_exits % 50 == 0 {
                    say!(
                        "!! {} exited by itself ({status}), {} times so far",
                        self.name,
                        self.unexpected_exits
                    );
                }
                // systemd's RestartSec: do not spin.
                std::thread::sleep(Duration::from_millis(500));
                self.child = None;
                return true;
            }
        }
        false
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "KILL", true);
            let _ = c.wait();
        }
    }
    fn stop(&mut self, deadline: Duration) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM", true);
            let end = Instant::now() + deadline;
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            signal(c.id(), "KILL", true);
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    port: u16,
    user: String,
    log: PathBuf,
    proc: Proc,
}

impl Postgres {
    fn as_pg(&self, program: &Path) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.user))
            .arg(format!("--regid={}", self.user))
            .arg("--init-groups")
            .arg("--")
            .arg(program);
        c
    }
    fn init(dir: &Path, logs: &Path) -> Res<Postgres> {
        let bin = edge_e2e::postgres::find_bin_dir()?;
        let sock = dir.join("pg");
        fs::create_dir_all(&sock)?;
        let mut pg = Postgres {
            bin,
            data: sock.join("data"),
            sock: sock.clone(),
            port: free_port()?,
            user: "postgres".into(),
            log: logs.join("postgres.log"),
            proc: Proc::new("postgres"),
        };
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&sock)
            .status()?;
        if !status.success() {
            return Err(err("chown of the PostgreSQL directory failed"));
        }
        let out = pg
            .as_pg(&pg.bin.join("initdb"))
            .arg("-D")
            .arg(&pg.data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()?;
        if !out.status.success() {
            return Err(err(format!(
                "initdb: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        pg.start()?;
        let out = Command::new(pg.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "edge",
            ])
            .output()?;
        if !out.status.success() {
            return Err(err(format!(
                "createdb: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(pg)
    }
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/edge", self.port)
    }
    /// Starts (or restarts after a crash: stale backends may hold the port for a moment).
    fn start(&mut self) -> Res<()> {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let mut cmd = self.as_pg(&self.bin.join("postgres"));
            cmd.arg("-D")
                .arg(&self.data)
                .args(["-p", &self.port.to_string(), "-k"])
                .arg(&self.sock)
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
            let log = self.log.clone();
            self.proc.spawn(cmd, &log)?;
            let ready = wait_until("PostgreSQL", Duration::from_secs(30), || {
                !self.proc.running() || self.ready()
            });
            if ready.is_ok() && self.proc.running() {
                return Ok(());
            }
            self.proc.kill9();
            if Instant::now() > end {
                return Err(err("PostgreSQL did not come back within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

struct Broker {
    conf: PathBuf,
    log: PathBuf,
    port: u16,
    proc: Proc,
}

impl Broker {
    fn start(&mut self) -> Res<()> {
        let mut cmd = Command::new(
            ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
                .into_iter()
                .find(|p| Path::new(p).is_file())
                .unwrap_or("mosquitto"),
        );
        cmd.arg("-c").arg(&self.conf);
        let log = self.log.clone();
        self.proc.spawn(cmd, &log)?;
        let port = self.port;
        wait_until("mosquitto", Duration::from_secs(20), || tcp_open(port))
    }
}

// ---------------------------------------------------------------------------------------------
// The stack

struct Stack {
    args: Args,
    dir: PathBuf,
    logs: PathBuf,
    pki: PathBuf,
    device_dir: PathBuf,
    pg: Postgres,
    broker: Broker,
    runner: Proc,
    runner2: Proc,
    agent: Proc,
    writer: Proc,
    writer_generation: u64,
    writer_on_second: bool,
    http_port: u16,
    jwt_secret: String,
    spill_secret: String,
    control_key: String,
    org: String,
    project: String,
    token: String,
    agent_faketime: Option<String>,
}

const DEVICE: &str = "chaos-gw";
const TABLES: [&str; 2] = ["odd \"name\" table", "select from"];

fn random_hex(rng: &mut Rng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.next() as u8))
        .collect()
}

impl Stack {
    fn cloud(&self) -> Command {
        let mut c = Command::new(&self.args.cloud);
        c.env("DATABASE_URL", self.pg.url())
            .env("EDGE_JWT_SECRET", &self.jwt_secret)
            .env("EDGE_SPILL_SECRET", &self.spill_secret);
        c
    }

    fn setup(args: Args, rng: &mut Rng) -> Res<Stack> {
        let dir = args.work.clone();
        let _ = fs::remove_dir_all(&dir);
        let logs = dir.join("logs");
        let pki = dir.join("pki");
        let mqtt = dir.join("mqtt");
        let device_dir = match &args.agent_dir {
            Some(d) => d.clone(),
            None => dir.join("device"),
        };
        for d in [&dir, &logs, &pki, &mqtt, &device_dir] {
            fs::create_dir_all(d)?;
        }
        // PostgreSQL's user must reach its directory.
        Command::new("chmod").arg("755").arg(&dir).status()?;
        say!("PostgreSQL");
        let pg = Postgres::init(&dir, &logs)?;
        let jwt_secret = random_hex(rng, 32);
        let spill_secret = random_hex(rng, 32);
        let mut stack = Stack {
            broker: Broker {
                conf: mqtt.join("mosquitto.conf"),
                log: logs.join("mosquitto.log"),
                port: free_port()?,
                proc: Proc::new("mosquitto"),
            },
            args,
            dir,
            logs,
            pki,
            device_dir,
            pg,
            runner: Proc::new("edge-cloud run"),
            runner2: Proc::new("edge-cloud run #2"),
            agent: Proc::new("edge-agent"),
            writer: Proc::new("writer"),
            writer_generation: 0,
            writer_on_second: false,
            http_port: free_port()?,
            jwt_secret,
            spill_secret,
            control_key: String::new(),
            org: String::new(),
            project: String::new(),
            token: String::new(),
            agent_faketime: None,
        };
        let out = stack.cloud().arg("migrate").output()?;
        if !out.status.success() {
            return Err(err(format!(
                "migrate: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let out = stack
            .cloud()
            .args(["pki", "init", "--ca-dir"])
            .arg(&stack.pki)
            .output()?;
        if !out.status.success() {
            return Err(err(format!(
                "pki init: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let out = stack
            .cloud()
            .args([
                "devices", "create", "--name", DEVICE, "--slug", "chaos", "--ca-dir",
            ])
            .arg(&stack.pki)
            .output()?;
        if !out.status.success() {
            return Err(err(format!(
                "devices create: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let device: Value = serde_json::from_slice(&out.stdout)?;
        let field = |k: &str| device[k].as_str().map(str::to_owned).unwrap_or_default();
        stack.org = field("org_id");
        stack.project = field("project_id");
        stack.control_key = field("control_key");
        let out = stack
            .cloud()
            .args(["token", "--org", &stack.org, "--project", &stack.project])
            .args(["--permission", "PROJECT_CAN_MANAGE_DEVICES", "--ttl", "24h"])
            .output()?;
        stack.token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if stack.token.is_empty() {
            return Err(err(format!(
                "token: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }

        fs::write(mqtt.join("acl"), edge_e2e::mosquitto::acl_file_contents())?;
        fs::write(
            &stack.broker.conf,
            format!(
                "per_listener_settings false\nallow_anonymous false\nacl_file {mqtt}/acl\n\
                 persistence true\npersistence_location {mqtt}/\n\
                 # mosquitto's default of 1000 silently drops the rest of an offline queue.\n\
                 max_queued_messages 0\n\
                 user root\nlog_dest stderr\nconnection_messages true\n\
                 listener {port} 127.0.0.1\ncafile {pki}/ca.crt\ncertfile {pki}/server.crt\n\
                 keyfile {pki}/server.key\nrequire_certificate true\n\
                 use_identity_as_username true\n",
                mqtt = mqtt.display(),
                port = stack.broker.port,
                pki = stack.pki.display(),
            ),
        )?;
        say!("mosquitto on port {}", stack.broker.port);
        stack.broker.start()?;
        say!("edge-cloud run (API on port {})", stack.http_port);
        stack.start_runner(false)?;
        let port = stack.http_port;
        wait_until("the HTTP API", Duration::from_secs(60), || tcp_open(port))?;

        say!("writer (system libsqlite3) on source.db");
        stack.start_writer()?;
        let src = stack.source_db();
        wait_until("source.db", Duration::from_secs(20), || {
            fs::metadata(&src).map(|m| m.len() > 0).unwrap_or(false)
        })?;
        fs::write(
            stack.device_dir.join("agent.toml"),
            format!(
                "[connection]\nserver_url = \"mqtts://127.0.0.1:{port}\"\n\
                 device_name = \"{DEVICE}\"\nroot_topic = \"chaos/{DEVICE}\"\n\
                 ca_cert_path = \"{pki}/ca.crt\"\n\
                 client_cert_path = \"{pki}/{DEVICE}.crt\"\n\
                 client_key_path = \"{pki}/{DEVICE}.key\"\n\n\
                 [sqlite-replication]\nsource_db_path = \"{dev}/source.db\"\n\
                 state_db_path = \"{dev}/state.db\"\nflush_interval = \"1s\"\n\
                 low_latency = true\nsnapshot_on_first_run = true\n\n\
                 [security]\nsigned_control = true\n",
                port = stack.broker.port,
                pki = stack.pki.display(),
                dev = stack.device_dir.display(),
            ),
        )?;
        say!("edge-agent");
        stack.start_agent()?;
        Ok(stack)
    }

    fn source_db(&self) -> PathBuf {
        self.device_dir.join("source.db")
    }
    fn writer_log(&self) -> PathBuf {
        self.logs.join("writer-transactions.jsonl")
    }
    fn stop_file(&self) -> PathBuf {
        self.dir.join("writer.stop")
    }

    fn start_writer(&mut self) -> Res<()> {
        let _ = fs::remove_file(self.stop_file());
        self.writer_generation += 1;
        let rate = if self.args.soak.is_some() { "20" } else { "8" };
        let mut cmd = Command::new("python3");
        cmd.arg(&self.args.writer)
            .arg(self.source_db())
            .arg((self.args.seed * 1000 + self.writer_generation).to_string())
            .arg(self.writer_log())
            .arg(self.stop_file())
            .arg("120")
            .arg(rate);
        if self.writer_on_second {
            if let Some(lib) = &self.args.second_sqlite {
                cmd.env("LD_LIBRARY_PATH", lib);
            }
        }
        let log = self.logs.join("writer.log");
        self.writer.spawn(cmd, &log)
    }

    fn stop_writer(&mut self) -> Res<()> {
        fs::write(self.stop_file(), b"stop")?;
        if let Some(mut c) = self.writer.child.take() {
            let end = Instant::now() + Duration::from_secs(60);
            while Instant::now() < end {
                if c.try_wait()?.is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            return Err(err("the writer did not stop within 60 s"));
        }
        Ok(())
    }

    fn runner_cmd(&self, second: bool) -> Command {
        let mut c = self.cloud();
        let client_id = if second {
            "edge-service-2"
        } else {
            "edge-service"
        };
        c.arg("run")
            .arg("--mqtt-url")
            .arg(format!("mqtts://127.0.0.1:{}", self.broker.port))
            .arg("--ca")
            .arg(self.pki.join("ca.crt"))
            .arg("--cert")
            .arg(self.pki.join("edge-service.crt"))
            .arg("--key")
            .arg(self.pki.join("edge-service.key"))
            .arg("--client-id")
            .arg(client_id)
            .arg("--spill-dir")
            .arg(self.dir.join("spill"))
            // Two runners on one machine: neither takes the default metrics port.
            .arg("--metrics")
            .arg("off");
        c
    }

    fn start_runner(&mut self, second: bool) -> Res<()> {
        let mut cmd = self.runner_cmd(second);
        if second {
            let port = free_port()?;
            cmd.arg("--http").arg(format!("127.0.0.1:{port}"));
            let log = self.logs.join("edge-cloud-2.log");
            self.runner2.spawn(cmd, &log)
        } else {
            cmd.arg("--http")
                .arg(format!("127.0.0.1:{}", self.http_port));
            let log = self.logs.join("edge-cloud.log");
            self.runner.spawn(cmd, &log)
        }
    }

    fn start_agent(&mut self) -> Res<()> {
        let mut cmd = match &self.agent_faketime {
            Some(offset) => {
                let mut c = Command::new("faketime");
                c.arg("-f").arg(offset).arg(&self.args.agent);
                // Timers stay on the real monotonic clock; only the wall clock is set back.
                c.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
                c
            }
            None => Command::new(&self.args.agent),
        };
        cmd.args(["--log-format", "json", "run", "--config"])
            .arg(self.device_dir.join("agent.toml"))
            .env("OMEGA_AUTH_TOKEN", &self.control_key);
        let log = self.logs.join("edge-agent.jsonl");
        self.agent.spawn(cmd, &log)
    }

    /// The supervisor's turn (systemd's `Restart=always`): daemons that exited by themselves
    /// are counted and started again.
    fn supervise(&mut self) -> Res<()> {
        if self.agent.check_exit() {
            self.start_agent()?;
        }
        if self.runner.check_exit() {
            self.start_runner(false)?;
        }
        // The second runner only runs during its fault window; it is not restarted.
        let _ = self.runner2.check_exit();
        Ok(())
    }

    fn teardown(&mut self) {
        let _ = fs::write(self.stop_file(), b"stop");
        self.writer.stop(Duration::from_secs(5));
        self.agent.stop(Duration::from_secs(5));
        self.runner2.stop(Duration::from_secs(5));
        self.runner.stop(Duration::from_secs(5));
        self.broker.proc.stop(Duration::from_secs(5));
        self.pg.proc.stop(Duration::from_secs(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Histories: the writer's committed journal entries and the agent's acknowledged batches.

#[derive(Default)]
struct History {
    writer_offset: u64,
    /// (table, key token) → every (commit_seq, op) the writer's transactions produced.
    entries: HashMap<(String, String), Vec<(i64, i64)>>,
    /// table → newest commit_seq written.
    last_seq: HashMap<String, i64>,
    transactions: u64,
    agent_offset: u64,
    /// table → highest acknowledged seq.
    acked: HashMap<String, i64>,
    acked_batches: u64,
    acked_batch_ids: HashMap<String, u32>,
}

fn key_token_from_json(pk: &str) -> Option<String> {
    let v: Value = serde_json::from_str(pk).ok()?;
    let parts: Vec<String> = v
        .as_array()?
        .iter()
        .map(|p| match p {
            Value::Number(n) => format!("I:{n}"),
            Value::String(s) => format!("T:{s}"),
            Value::Null => "NULL".into(),
            other => format!("?:{other}"),
        })
        .collect();
    Some(parts.join("\u{1}"))
}

fn read_new_lines(path: &Path, offset: &mut u64) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    if f.seek(SeekFrom::Start(*offset)).is_err() {
        return Vec::new();
    }
    let mut lines = Vec::new();
    let mut reader = BufReader::new(f);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !line.ends_with('\n') {
                    break; // a line still being written
                }
                *offset += n as u64;
                lines.push(line);
            }
        }
    }
    lines
}

impl History {
    fn refresh(&mut self, writer_log: &Path, agent_log: &Path) {
        for line in read_new_lines(writer_log, &mut self.writer_offset) {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            self.transactions += 1;
            for e in v["entries"].as_array().cloned().unwrap_or_default() {
                let (Some(seq), Some(table), Some(op)) =
                    (e[0].as_i64(), e[1].as_str(), e[2].as_i64())
                else {
                    continue;
                };
                let Some(key) = e[3].as_str().and_then(key_token_from_json) else {
                    continue;
                };
                self.entries
                    .entry((table.to_owned(), key))
                    .or_default()
                    .push((seq, op));
                let last = self.last_seq.entry(table.to_owned()).or_insert(0);
                *last = (*last).max(seq);
            }
        }
        for line in read_new_lines(agent_log, &mut self.agent_offset) {
            if !line.contains("batch acknowledged") {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let f = &v["fields"];
            let (Some(table), Some(last)) = (f["table"].as_str(), f["last_seq"].as_i64()) else {
                continue;
            };
            self.acked_batches += 1;
            if let Some(id) = f["batch_id"].as_str() {
                *self.acked_batch_ids.entry(id.to_owned()).or_insert(0) += 1;
            }
            let a = self.acked.entry(table.to_owned()).or_insert(0);
            *a = (*a).max(last);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The verdict: mirror vs source, acknowledged history vs mirror.

struct Binding {
    source: String,
    mirror: String,
    ty: String,
    pk: i32,
}

struct MirrorRow {
    values: BTreeMap<String, String>,
    seq: i64,
    deleted: bool,
}

#[derive(Default, Debug)]
struct Comparison {
    rows_checked: u64,
    missing: u64,
    ghost: u64,
    differing: u64,
    unmirrored_tables: Vec<String>,
    unmirrored_columns: Vec<String>,
    examples: Vec<String>,
}

impl Comparison {
    fn equal(&self) -> bool {
        self.missing == 0
            && self.ghost == 0
            && self.differing == 0
            && self.unmirrored_tables.is_empty()
            && self.unmirrored_columns.is_empty()
    }
    fn example(&mut self, s: String) {
        if self.examples.len() < 12 {
            self.examples.push(s);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn source_token(v: &rusqlite::types::Value, ty: &str) -> String {
    use rusqlite::types::Value as V;
    match (v, ty) {
        (V::Null, _) => "NULL".into(),
        (V::Integer(i), "double precision") => format!("R:{:016x}", (*i as f64).to_bits()),
        (V::Integer(i), _) => format!("I:{i}"),
        (V::Real(f), "double precision") => format!("R:{:016x}", f.to_bits()),
        (V::Real(f), _) => format!("R?:{f:e}"),
        (V::Text(s), _) => format!("T:{s}"),
        (V::Blob(b), _) => format!("B:{}", hex(b)),
    }
}

fn mirror_expr(column: &str, ty: &str) -> String {
    let c = format!("\"{}\"", column.replace('"', "\"\""));
    match ty {
        "double precision" => format!("encode(float8send({c}), 'hex')"),
        "bytea" => format!("encode({c}, 'hex')"),
        _ => format!("{c}::text"),
    }
}

fn mirror_token(v: Option<String>, ty: &str) -> String {
    match v {
        None => "NULL".into(),
        Some(s) => match ty {
            "bigint" => format!("I:{s}"),
            "double precision" => format!("R:{s}"),
            "bytea" => format!("B:{s}"),
            "text" => format!("T:{s}"),
            other => format!("{other}:{s}"),
        },
    }
}

type Mirrors = HashMap<String, (Vec<Binding>, HashMap<String, MirrorRow>)>;

async fn read_mirrors(url: &str) -> Res<Mirrors> {
    // The suite's own server is plaintext on loopback; the store's connect reads the URL's
    // sslmode like every other connection.
    let client = edge_cloud_store::connect::connect(url).await?;
    let rows = client
        .query(
            "SELECT l.source_table, l.mirror_table_name, b.source_column_name, \
                 b.mirror_column_name, b.mirror_type, coalesce(b.pk_ordinal, 0) \
             FROM edge_table_lineages l JOIN edge_column_bindings b \
               ON b.lineage_id = l.id AND b.schema_hash = l.approved_schema_hash \
             WHERE b.action = 'mirror' AND l.mirror_table_name IS NOT NULL",
            &[],
        )
        .await?;
    let mut bindings: HashMap<String, (String, Vec<Binding>)> = HashMap::new();
    for r in rows {
        let entry = bindings
            .entry(r.get(0))
            .or_insert_with(|| (r.get::<_, String>(1), Vec::new()));
        entry.1.push(Binding {
            source: r.get(2),
            mirror: r.get(3),
            ty: r.get(4),
            pk: r.get(5),
        });
    }
    let mut out = HashMap::new();
    for (table, (mirror, mut bs)) in bindings {
        bs.sort_by_key(|b| (b.pk == 0, b.pk));
        let exprs: Vec<String> = bs.iter().map(|b| mirror_expr(&b.mirror, &b.ty)).collect();
        let sql = format!(
            "SELECT {}, \"_edge_commit_seq\", \"_edge_deleted\" FROM \"{}\"",
            exprs.join(", "),
            mirror.replace('"', "\"\"")
        );
        let mut rows_by_key = HashMap::new();
        for r in client.query(&sql, &[]).await? {
            let mut values = BTreeMap::new();
            let mut key = Vec::new();
            for (i, b) in bs.iter().enumerate() {
                let token = mirror_token(r.get::<_, Option<String>>(i), &b.ty);
                if b.pk > 0 {
                    key.push(token.clone());
                }
                values.insert(b.source.clone(), token);
            }
            rows_by_key.insert(
                key.join("\u{1}"),
                MirrorRow {
                    values,
                    seq: r.get(bs.len()),
                    deleted: r.get(bs.len() + 1),
                },
            );
        }
        out.insert(table, (bs, rows_by_key));
    }
    Ok(out)
}

fn compare(source: &Path, mirrors: &Mirrors) -> Res<Comparison> {
    let conn = rusqlite::Connection::open_with_flags(
        source,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let mut cmp = Comparison::default();
    for table in TABLES {
        let Some((bindings, mirror_rows)) = mirrors.get(table) else {
            cmp.unmirrored_tables.push(table.to_owned());
            continue;
        };
        let by_source: HashMap<&str, &Binding> =
            bindings.iter().map(|b| (b.source.as_str(), b)).collect();
        let mut stmt =
            conn.prepare(&format!("SELECT * FROM \"{}\"", table.replace('"', "\"\"")))?;
        let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        for n in &names {
            if !by_source.contains_key(n.as_str()) {
                cmp.unmirrored_columns.push(format!("{table}.{n}"));
            }
        }
        let mut pk_cols: Vec<&Binding> = bindings.iter().filter(|b| b.pk > 0).collect();
        pk_cols.sort_by_key(|b| b.pk);
        let mut seen = BTreeSet::new();
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            cmp.rows_checked += 1;
            let mut values = BTreeMap::new();
            for (i, n) in names.iter().enumerate() {
                let v: rusqlite::types::Value = row.get(i)?;
                let ty = by_source
                    .get(n.as_str())
                    .map(|b| b.ty.as_str())
                    .unwrap_or("?");
                values.insert(n.clone(), source_token(&v, ty));
            }
            let key: Vec<String> = pk_cols
                .iter()
                .map(|b| values.get(&b.source).cloned().unwrap_or_default())
                .collect();
            let key = key.join("\u{1}");
            seen.insert(key.clone());
            match mirror_rows.get(&key) {
                Some(m) if !m.deleted => {
                    for (n, v) in &values {
                        let Some(mv) = m.values.get(n) else { continue };
                        if mv != v {
                            cmp.differing += 1;
                            cmp.example(format!(
                                "{table} key {key:?} column {n:?}: source {v} mirror {mv}"
                            ));
                            break;
                        }
                    }
                }
                _ => {
                    cmp.missing += 1;
                    cmp.example(format!("{table} key {key:?}: in source, not in mirror"));
                }
            }
        }
        for (key, m) in mirror_rows {
            if !m.deleted && !seen.contains(key) {
                cmp.ghost += 1;
                cmp.example(format!(
                    "{table} key {key:?}: in mirror (seq {}), not in source",
                    m.seq
                ));
            }
        }
    }
    Ok(cmp)
}

/// The journal's `op` of a delete (device/src/capture/triggers.rs).
const OP_DELETE: i64 = 3;

#[derive(Default, Debug)]
struct AckCheck {
    acked_entries: u64,
    lost: u64,
    examples: Vec<String>,
}

fn check_acked(history: &History, mirrors: &Mirrors) -> AckCheck {
    let mut check = AckCheck::default();
    for ((table, key), versions) in &history.entries {
        let Some(&acked_up_to) = history.acked.get(table) else {
            continue;
        };
        let Some(&(newest_acked, op)) = versions.iter().filter(|(s, _)| *s <= acked_up_to).max()
        else {
            continue;
        };
        check.acked_entries += versions.iter().filter(|(s, _)| *s <= acked_up_to).count() as u64;
        let row = mirrors.get(table).and_then(|(_, rows)| rows.get(key));
        // A delete may leave no row at all (nothing to tombstone); anything else must be
        // there at that version or newer.
        let ok = match row {
            Some(r) => r.seq >= newest_acked || (op == OP_DELETE && r.deleted),
            None => op == OP_DELETE,
        };
        if !ok {
            check.lost += 1;
            if check.examples.len() < 12 {
                check.examples.push(format!(
                    "{table} key {key:?}: acknowledged up to commit_seq {newest_acked}, mirror has {}",
                    row.map(|r| format!("commit_seq {} deleted={}", r.seq, r.deleted))
                        .unwrap_or_else(|| "nothing".into())
                ));
            }
        }
    }
    check
}

/// Every mirror table has caught up with the writer's newest change as of `marks`.
fn caught_up(mirrors: &Mirrors, marks: &HashMap<String, i64>) -> bool {
    marks.iter().all(|(table, &mark)| {
        mirrors
            .get(table)
            .map(|(_, rows)| rows.values().map(|r| r.seq).max().unwrap_or(0) >= mark)
            .unwrap_or(false)
    })
}

// ---------------------------------------------------------------------------------------------
// Faults

struct Run {
    stack: Stack,
    rng: Rng,
    rt: tokio::runtime::Runtime,
    history: History,
    fired: BTreeMap<Fault, u32>,
    converge: Vec<Duration>,
    not_converged: u32,
    approved: Arc<Mutex<u32>>,
}

impl Run {
    fn mirrors(&self) -> Res<Mirrors> {
        let url = self.stack.pg.url();
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), read_mirrors(&url))
                .await
                .map_err(|_| err("reading the mirrors timed out"))?
        })
    }

    fn refresh(&mut self) {
        let agent_log = self.stack.logs.join("edge-agent.jsonl");
        self.history.refresh(&self.stack.writer_log(), &agent_log);
    }

    /// Waits (supervising) for `d`.
    fn pause(&mut self, d: Duration) -> Res<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.stack.supervise()?;
            std::thread::sleep(Duration::from_millis(100).min(end - Instant::now().min(end)));
        }
        Ok(())
    }

    /// After a fault: how long until every mirror table holds the writer's newest change as of
    /// the fault's end (bounded by `cap`).
    fn measure_converge(&mut self, cap: Duration) -> Res<()> {
        self.refresh();
        let marks = self.history.last_seq.clone();
        let t0 = Instant::now();
        while t0.elapsed() < cap {
            self.stack.supervise()?;
            if let Ok(m) = self.mirrors() {
                if caught_up(&m, &marks) {
                    self.converge.push(t0.elapsed());
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.not_converged += 1;
        Ok(())
    }

    fn inject(&mut self, fault: Fault) -> Res<()> {
        say!("fault: {}", fault.name());
        *self.fired.entry(fault).or_insert(0) += 1;
        match fault {
            Fault::AgentKill => {
                self.stack.agent.kill9();
                let d = self.rng.millis(0, 2000);
                self.pause(d)?;
                self.stack.start_agent()?;
            }
            Fault::RunnerKill => {
                self.stack.runner.kill9();
                let d = self.rng.millis(0, 2000);
                self.pause(d)?;
                self.stack.start_runner(false)?;
            }
            Fault::TwoRunners => {
                if !self.stack.runner2.running() {
                    self.stack.start_runner(true)?;
                }
                let d = self.rng.millis(8_000, 15_000);
                self.pause(d)?;
                if self.rng.range(0, 1) == 0 {
                    self.stack.runner2.kill9();
                } else {
                    self.stack.runner2.stop(Duration::from_secs(10));
                }
                // A runner identity comes back, as its supervisor restarts it: its persistent
                // session keeps receiving its share of the group's messages while it is away
                // (mosquitto queues shared-subscription messages for offline persistent
                // members), so an identity that never returns strands them — see
                // docs/reliability.md "Several runners". It stays in the group to the end.
                let d = self.rng.millis(0, 2000);
                self.pause(d)?;
                self.stack.start_runner(true)?;
            }
            Fault::BrokerRestart => {
                self.stack.broker.proc.stop(Duration::from_secs(10));
                let d = self.rng.millis(0, 3000);
                self.pause(d)?;
                self.stack.broker.start()?;
            }
            Fault::PostgresKill => {
                self.stack.pg.proc.kill9();
                let d = self.rng.millis(0, 3000);
                self.pause(d)?;
                self.stack.pg.start()?;
            }
            Fault::PostgresOutage60s => {
                self.stack.pg.proc.kill9();
                self.pause(Duration::from_secs(60))?;
                self.stack.pg.start()?;
            }
            Fault::ClockBackNewEpoch => {
                // The gateway loses power, its database is restored as a new instance, and it
                // boots before NTP with a clock 30 minutes behind: a new journal epoch begins
                // under the wrong time.
                self.stack.agent.kill9();
                let conn = rusqlite::Connection::open(self.stack.source_db())?;
                conn.busy_timeout(Duration::from_secs(30))?;
                conn.execute(
                    "UPDATE \"__omega_db_instance\" SET id = ?1",
                    [uuid::Uuid::now_v7().to_string()],
                )?;
                drop(conn);
                self.stack.agent_faketime = Some("-30m".into());
                self.stack.start_agent()?;
            }
            Fault::DiskFull => {
                let filler = self.stack.device_dir.join("filler");
                let mut f = File::create(&filler)?;
                let chunk = vec![0u8; 1 << 20];
                while f.write_all(&chunk).is_ok() {}
                let _ = f.sync_all();
                drop(f);
                let d = self.rng.millis(5_000, 20_000);
                self.pause(d)?;
                fs::remove_file(&filler)?;
            }
            Fault::WriterSwitch => {
                self.stack.stop_writer()?;
                self.stack.writer_on_second = !self.stack.writer_on_second;
                self.stack.start_writer()?;
            }
        }
        Ok(())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let _ = started();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chaos: {e}");
            std::process::exit(2);
        }
    };
    println!("seed={}", args.seed);
    let mut rng = Rng(args.seed);
    let stack = match Stack::setup(args, &mut rng) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chaos: setting up the stack: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: tokio runtime: {e}");
            std::process::exit(2);
        }
    };
    let mut run = Run {
        stack,
        rng,
        rt,
        history: History::default(),
        fired: BTreeMap::new(),
        converge: Vec::new(),
        not_converged: 0,
        approved: Arc::new(Mutex::new(0)),
    };
    let code = match drive(&mut run) {
        Ok(pass) => {
            if pass {
                0
            } else {
                1
            }
        }
        Err(e) => {
            println!("VERDICT: FAIL (the run itself failed: {e})");
            1
        }
    };
    run.stack.teardown();
    println!("logs: {}", run.stack.logs.display());
    std::process::exit(code);
}

fn drive(run: &mut Run) -> Res<bool> {
    let soak = run.stack.args.soak;
    let schedule: Vec<Fault> = {
        let mut kinds: Vec<Fault> = Fault::CI.to_vec();
        // A few more of the cheap ones, then shuffle (Fisher-Yates on the seed).
        for _ in 0..3 {
            kinds.push(
                [
                    Fault::AgentKill,
                    Fault::RunnerKill,
                    Fault::BrokerRestart,
                    Fault::PostgresKill,
                ][run.rng.range(0, 3) as usize],
            );
        }
        for i in (1..kinds.len()).rev() {
            let j = run.rng.range(0, i as u64) as usize;
            kinds.swap(i, j);
        }
        kinds
    };
    if soak.is_none() {
        let names: Vec<&str> = schedule.iter().map(|f| f.name()).collect();
        say!("CI schedule: {}", names.join(", "));
    }
    let cap = if soak.is_some() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(8)
    };

    // The operator approves the reviews part-way: staged rows replay then.
    let first_gap = run.rng.millis(6_000, 12_000);
    run.pause(first_gap)?;
    let stop_operator = Arc::new(AtomicBool::new(false));
    let operator = {
        let stop = stop_operator.clone();
        let approved = run.approved.clone();
        let api = ApiHandle {
            http_port: run.stack.http_port,
            project: run.stack.project.clone(),
            org: run.stack.org.clone(),
            token: run.stack.token.clone(),
        };
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut n = 0;
                if let Err(e) = api.review_pass(&mut n) {
                    say!("operator: not now ({e})");
                }
                if let Ok(mut a) = approved.lock() {
                    *a += n;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    say!("operator started (reviews approved through the HTTP API from now on)");

    let fault_start = Instant::now();
    let mut i = 0usize;
    loop {
        let fault = match soak {
            None => match schedule.get(i) {
                Some(f) => *f,
                None => break,
            },
            Some(total) => {
                if fault_start.elapsed() >= total {
                    break;
                }
                let kinds = [
                    Fault::AgentKill,
                    Fault::AgentKill,
                    Fault::RunnerKill,
                    Fault::RunnerKill,
                    Fault::TwoRunners,
                    Fault::BrokerRestart,
                    Fault::BrokerRestart,
                    Fault::PostgresKill,
                    Fault::PostgresOutage60s,
                    Fault::ClockBackNewEpoch,
                    Fault::DiskFull,
                    Fault::WriterSwitch,
                ];
                let mut f = kinds[run.rng.range(0, kinds.len() as u64 - 1) as usize];
                if f == Fault::DiskFull && run.stack.args.agent_dir.is_none() {
                    f = Fault::AgentKill;
                }
                if f == Fault::WriterSwitch && run.stack.args.second_sqlite.is_none() {
                    f = Fault::BrokerRestart;
                }
                f
            }
        };
        i += 1;
        run.inject(fault)?;
        run.measure_converge(cap)?;
        let gap = if soak.is_some() {
            run.rng.millis(500, 5_000)
        } else {
            run.rng.millis(1_000, 4_000)
        };
        run.pause(gap)?;
    }
    let last_fault_end = Instant::now();
    say!("faults done; stopping the writer");
    run.stack.stop_writer()?;
    run.refresh();

    // Converge: the mirror equals the source (condition + deadline).
    let deadline = if soak.is_some() {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(60)
    };
    let mut cmp = Comparison::default();
    let mut converged_after = None;
    let t0 = Instant::now();
    while t0.elapsed() < deadline {
        run.stack.supervise()?;
        if let Ok(m) = run.mirrors() {
            cmp = compare(&run.stack.source_db(), &m)?;
            if cmp.equal() {
                converged_after = Some(last_fault_end.elapsed());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop_operator.store(true, Ordering::Relaxed);
    let _ = operator.join();
    run.refresh();
    let mirrors = run.mirrors()?;
    let cmp_final = compare(&run.stack.source_db(), &mirrors)?;
    if converged_after.is_none() {
        cmp = cmp_final;
    }
    let acked = check_acked(&run.history, &mirrors);
    let segments = run.rt.block_on(segment_report(&run.stack.pg.url()))?;

    // ---- report -------------------------------------------------------------------------
    let mut failures = Vec::new();
    println!();
    println!(
        "=== chaos report (seed={}, mode={}) ===",
        run.stack.args.seed,
        match soak {
            Some(d) => format!("soak {}s", d.as_secs()),
            None => "ci".into(),
        }
    );
    println!("faults injected by kind:");
    let mut kinds: Vec<Fault> = Fault::CI.to_vec();
    if soak.is_some() {
        kinds.extend([Fault::DiskFull, Fault::WriterSwitch]);
    }
    for k in &kinds {
        let n = run.fired.get(k).copied().unwrap_or(0);
        println!("  {:<24} {n}", k.name());
        if n == 0 && (soak.is_none() || Fault::CI.contains(k)) {
            failures.push(format!("fault kind {} fired zero times", k.name()));
        }
    }
    println!("writer transactions:      {}", run.history.transactions);
    println!(
        "reviews approved (API):   {}",
        run.approved.lock().map(|a| *a).unwrap_or(0)
    );
    println!("rows checked:             {}", cmp.rows_checked);
    println!("rows missing in mirror:   {}", cmp.missing);
    println!("ghost rows in mirror:     {}", cmp.ghost);
    println!("rows with differing values: {}", cmp.differing);
    for t in &cmp.unmirrored_tables {
        println!("table without a mirror:   {t}");
    }
    for c in &cmp.unmirrored_columns {
        println!("column not mirrored:      {c}");
    }
    for e in &cmp.examples {
        println!("  e.g. {e}");
    }
    println!("acknowledged batches:     {}", run.history.acked_batches);
    println!("acknowledged entries:     {}", acked.acked_entries);
    println!("lost (acked, not in mirror): {}", acked.lost);
    for e in &acked.examples {
        println!("  e.g. {e}");
    }
    let dup_acks = run
        .history
        .acked_batch_ids
        .values()
        .filter(|n| **n > 1)
        .count();
    println!("duplicates: batches acked twice by the device: {dup_acks}; {segments}");
    let mut sorted = run.converge.clone();
    sorted.sort();
    println!(
        "time to converge after a fault: p50 {:.1}s p99 {:.1}s (n={}, {} not within {}s)",
        percentile(&sorted, 0.5).as_secs_f64(),
        percentile(&sorted, 0.99).as_secs_f64(),
        sorted.len(),
        run.not_converged,
        cap.as_secs()
    );
    match converged_after {
        Some(d) => println!(
            "time to converge after the last fault: {:.1}s",
            d.as_secs_f64()
        ),
        None => {
            println!(
                "time to converge after the last fault: never (deadline {}s)",
                deadline.as_secs()
            );
            failures.push(format!(
                "the mirror did not converge to the source within {}s",
                deadline.as_secs()
            ));
        }
    }
    if !cmp.equal() && converged_after.is_none() {
        failures.push(format!(
            "mirror != source: {} missing, {} ghost, {} differing, {} tables / {} columns unmirrored",
            cmp.missing,
            cmp.ghost,
            cmp.differing,
            cmp.unmirrored_tables.len(),
            cmp.unmirrored_columns.len()
        ));
    }
    if acked.lost > 0 {
        failures.push(format!(
            "{} acknowledged keys are not in the mirror",
            acked.lost
        ));
    }
    for p in [&run.stack.agent, &run.stack.runner] {
        if p.unexpected_exits > 0 {
            failures.push(format!(
                "{} exited by itself {} times",
                p.name, p.unexpected_exits
            ));
        }
    }
    let agent_errors = count_lines(
        &run.stack.logs.join("edge-agent.jsonl"),
        "\"level\":\"ERROR\"",
    );
    let runner_errors = count_lines(&run.stack.logs.join("edge-cloud.log"), "ERROR");
    println!("log lines at ERROR: agent {agent_errors}, runner {runner_errors}");
    println!(
        "fault phase: {:.0}s; total: {:.0}s",
        last_fault_end.duration_since(fault_start).as_secs_f64(),
        started().elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        println!("VERDICT: PASS");
        Ok(true)
    } else {
        println!("VERDICT: FAIL");
        for f in &failures {
            println!("  - {f}");
        }
        Ok(false)
    }
}

fn count_lines(path: &Path, needle: &str) -> usize {
    fs::read_to_string(path)
        .map(|s| s.lines().filter(|l| l.contains(needle)).count())
        .unwrap_or(0)
}

async fn segment_report(url: &str) -> Res<String> {
    // The suite's own server is plaintext on loopback; the store's connect reads the URL's
    // sslmode like every other connection.
    let client = edge_cloud_store::connect::connect(url).await?;
    let rows = client
        .query(
            "SELECT status || coalesce(':' || rejection_code, ''), count(*) \
             FROM edge_export_segments GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?;
    let parts: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect();
    let overlap: i64 = client
        .query_one(
            "SELECT count(*) FROM edge_export_segments a JOIN edge_export_segments b \
               ON a.lineage_id = b.lineage_id AND a.journal_epoch = b.journal_epoch \
              AND a.batch_id < b.batch_id AND a.status <> 'rejected' AND b.status <> 'rejected' \
              AND a.first_seq <= b.last_seq AND b.first_seq <= a.last_seq",
            &[],
        )
        .await?
        .get(0);
    Ok(format!(
        "cloud segments: {}; accepted batches overlapping another (redelivered, harmless): {overlap}",
        parts.join(", ")
    ))
}

/// What the operator thread needs of the stack (the stack itself stays on the main thread).
struct ApiHandle {
    http_port: u16,
    project: String,
    org: String,
    token: String,
}

impl ApiHandle {
    fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Res<Value> {
        let url = format!(
            "http://127.0.0.1:{}/core/api/v1/projects/{}/edge{path}",
            self.http_port, self.project
        );
        let mut c = Command::new("curl");
        c.args(["-s", "-m", "10", "-X", method, &url])
            .args(["-H", &format!("Authorization: Bearer {}", self.token)])
            .args(["-H", &format!("ORG-ID: {}", self.org)]);
        if let Some(body) = body {
            c.args(["-H", "Content-Type: application/json"])
                .args(["-H", &format!("Idempotency-Key: {}", uuid::Uuid::now_v7())])
                .args(["-d", &body.to_string()]);
        }
        let out = c.output()?;
        if !out.status.success() {
            return Err(err(format!("curl {method} {path}: exit {}", out.status)));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// One operator pass: claim and approve (all columns mirrored) every queued review.
    fn review_pass(&self, approved: &mut u32) -> Res<()> {
        let queued = self.api("GET", "/schema-reviews?status=queued", None)?;
        for review in queued["data"].as_array().cloned().unwrap_or_default() {
            let id = review["id"].as_str().unwrap_or_default();
            let lineage = review["lineage_id"].as_str().unwrap_or_default();
            let hash = review["schema_hash"].as_str().unwrap_or_default();
            let claimed = self.api(
                "POST",
                &format!("/schema-reviews/{id}/claim"),
                Some(&json!({})),
            )?;
            let Some(version) = claimed["data"]["action_version"].as_i64() else {
                continue;
            };
            let detail = self.api("GET", &format!("/lineages/{lineage}"), None)?;
            let mut columns = Vec::new();
            for v in detail["data"]["schema_versions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                if v["schema_hash"].as_str() == Some(hash) {
                    let cols = &v["columns"];
                    let list = if cols.is_object() {
                        &cols["columns"]
                    } else {
                        cols
                    };
                    for c in list.as_array().cloned().unwrap_or_default() {
                        if let Some(name) = c["name"].as_str() {
                            columns.push(json!({"source_column_name": name, "action": "mirror"}));
                        }
                    }
                }
            }
            let answer = self.api(
                "POST",
                &format!("/schema-reviews/{id}/approve"),
                Some(&json!({"action_version": version, "column_actions": columns})),
            )?;
            if answer["ok"].as_i64() == Some(1) {
                *approved += 1;
                say!(
                    "operator: approved review {id} ({} columns of {})",
                    columns.len(),
                    review["source_table"]
                );
            } else {
                say!("operator: approve {id} answered {answer}");
            }
        }
        Ok(())
    }
}
