//! Drain throughput and footprint of the `edge-agent` binary (scripts/bench.sh `drain`).
//!
//! A journal backlog of `EDGE_BENCH_DRAIN_ROWS` rows (default 1,000,000; 5-column table) is
//! drained by the optimised binary through the harness' mosquitto over mTLS: journal → batches
//! → PUBLISH → PUBACK → cursor advance + journal delete, token bucket off. Reported: rows/s,
//! CPU-seconds per 100k rows (utime+stime of the agent), peak RSS (`/usr/bin/time -v`), and,
//! measured in the same run, a raw rumqttc loop publishing the very same batch bytes at QoS 1
//! with the same in-flight window — the ratio says how much the agent's own work costs on top of
//! moving the bytes. Then idle RSS: a second agent process on an empty journal for a few
//! flush intervals under `/usr/bin/time -v`. `EDGE_BENCH_AGENT_BIN` runs another binary (e.g. the
//! static musl build) in place of this profile's.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_e2e::rumqttc::{AsyncClient, Event, Incoming, QoS};
use edge_e2e::{Broker, Pki, TestClient, SERVICE_USER};
use rusqlite::Connection;

const DEVICE: &str = "gw-bench";
const ROOT: &str = "bench/gw-bench";

fn write_config(dir: &Path, broker: &Broker, pki: &Pki) -> std::path::PathBuf {
    let device = pki.device(DEVICE);
    std::fs::copy(device.cert_path(), dir.join("device.crt")).unwrap();
    std::fs::copy(device.key_path(), dir.join("device.key")).unwrap();
    std::fs::copy(pki.ca().cert_path(), dir.join("ca.crt")).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[connection]
server_url = "mqtts://{host}:{port}"
device_name = "{DEVICE}"
root_topic = "{ROOT}"
ca_cert_path = "{d}/ca.crt"
client_cert_path = "{d}/device.crt"
client_key_path = "{d}/device.key"

[sqlite-replication]
source_db_path = "{d}/source.db"
state_db_path = "{d}/state.db"
flush_interval = "100ms"
rate_limit = false
snapshot_on_first_run = false

[security]
signed_control = false
allow_unsigned_control = true
"#,
            host = broker.host(),
            port = broker.port(),
            d = dir.display(),
        ),
    )
    .unwrap();
    config
}

fn spawn_timed(config: &Path, time_out: &Path) -> Child {
    Command::new("/usr/bin/time")
        .arg("-v")
        .arg("-o")
        .arg(time_out)
        // EDGE_BENCH_AGENT_BIN: measure another build of the same source (the static musl
        // binary, whose allocator is what gateways run) instead of this profile's.
        .arg(
            std::env::var_os("EDGE_BENCH_AGENT_BIN")
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_edge-agent").into()),
        )
        .args(["run", "--config"])
        .arg(config)
        .env("EDGE_AGENT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("/usr/bin/time (apt package `time`)")
}

/// The agent: the only child of `/usr/bin/time`.
fn agent_pid(time_pid: u32) -> u32 {
    let started = Instant::now();
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{time_pid}/task/{time_pid}/children"))
                .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            return pid.parse().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "agent did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); after the comm they are at 11 and 12 (0-based).
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn stop(mut child: Child, pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
}

fn max_rss_kib(time_out: &Path) -> u64 {
    let text = std::fs::read_to_string(time_out).unwrap();
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .unwrap()
        .parse()
        .unwrap()
}

fn main() {
    let rows: i64 = std::env::var("EDGE_BENCH_DRAIN_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        // `cargo bench` passes --bench; under `cargo test --all-targets` (CI) this binary runs
        // as a quick smoke test of the same path instead of the 1M-row measurement.
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            1_000_000
        } else {
            5_000
        });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &broker, &pki);
    let source = dir.path().join("source.db");
    let db = Connection::open(&source).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, value REAL, n INTEGER, note TEXT);",
    )
    .unwrap();
    // Install the triggers (what the agent does at start-up), then build the backlog.
    let settings = edge_agent::settings::Settings::load(&config).unwrap();
    drop(edge_agent::daemon::Daemon::open(settings).unwrap());
    let t0 = Instant::now();
    let tx = db.unchecked_transaction().unwrap();
    {
        let mut ins = tx
            .prepare("INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)")
            .unwrap();
        for i in 0..rows {
            ins.execute(rusqlite::params![
                i,
                format!("sensor-{}", i % 1000),
                i as f64 * 0.5,
                i * 7,
                "ok"
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    eprintln!("backlog of {rows} rows written in {:?}", t0.elapsed());

    // The "cloud": records every batch's bytes for the raw baseline.
    let mut svc = rt.block_on(async {
        let mut o = broker.mqtt_options(SERVICE_USER, &pki.service());
        o.set_max_packet_size(1 << 20, 1 << 20);
        let mut c = TestClient::connect(o).await.unwrap();
        c.subscribe("+/+/sync/#").await;
        c
    });

    // Drained = the cursor passed the last row (PUBACK seen and journal deleted). A watcher
    // thread polls state.db for that and takes the agent's CPU time at that moment, so the
    // figure is the agent's (journal → PUBACK → cursor), not how fast this process decodes
    // what the subscriber received (which, on a loaded machine, lagged the drain by seconds).
    let last: i64 = db
        .query_row("SELECT max(commit_seq) FROM __omega_journal", [], |r| {
            r.get(0)
        })
        .unwrap();
    let time_out = dir.path().join("drain.time");
    let started = Instant::now();
    let child = spawn_timed(&config, &time_out);
    let pid = agent_pid(child.id());
    let state_path = dir.path().join("state.db");
    let watcher = std::thread::spawn(move || {
        let acked = |state: &Connection| -> i64 {
            state
                .query_row(
                    "SELECT last_acked_seq FROM tables WHERE table_name = 't'",
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(0)
        };
        let state = loop {
            if let Ok(c) =
                Connection::open_with_flags(&state_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            {
                break c;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        state.busy_timeout(Duration::from_secs(10)).unwrap();
        while acked(&state) < last {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "drain too slow"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        (started.elapsed().as_secs_f64(), cpu_seconds(pid))
    });
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut received_rows = 0usize;
    rt.block_on(async {
        while received_rows < rows as usize {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "drain too slow"
            );
            if let Some(m) = svc.recv_within(Duration::from_millis(200)).await {
                if m.topic.ends_with("sync/rows/batch") {
                    let b = edge_protocol::validate::decode_row_batch(&m.payload).unwrap();
                    received_rows += b.rows.len();
                    payloads.push(m.payload);
                }
            }
        }
    });
    let (elapsed, cpu) = watcher.join().unwrap();
    // The broker's own account of any disconnect of the agent during the drain (the agent only
    // sees "closed by peer"). `Broker::log()` is only the tail, so read the whole file (the
    // harness logs everything) and keep a copy for reading after the broker's dir is gone.
    let full_log = std::fs::read_to_string(
        broker
            .dir()
            .join(format!("mosquitto-{}.log", broker.port())),
    )
    .unwrap_or_default();
    let kept = std::env::temp_dir().join("edge-bench-drain-mosquitto.log");
    let _ = std::fs::write(&kept, &full_log);
    eprintln!("full broker log: {}", kept.display());
    let mut drops = 0;
    for line in full_log.lines().filter(|l| {
        !l.contains("Received PUBLISH")
            && !l.contains("Sending PUBACK")
            && !l.contains("Sending PUBLISH")
            && !l.contains("Received PUBACK")
            && [
                "isconnect",
                "rror",
                "closed",
                "xceeded",
                "too large",
                "imeout",
                "ropped",
            ]
            .iter()
            .any(|w| l.contains(w))
    }) {
        drops += usize::from(line.contains(DEVICE));
        eprintln!("broker: {line}");
    }
    eprintln!("broker: {drops} disconnect/error lines naming {DEVICE}");
    stop(child, pid);
    let peak = max_rss_kib(&time_out);
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let batches = payloads.len();

    // Baseline: the same bytes, QoS 1, 32 in flight, raw rumqttc over the same mTLS.
    let raw = rt.block_on(async {
        let mut o = broker.mqtt_options("gw-raw", &pki.device("gw-raw"));
        o.set_max_packet_size(1 << 20, 1 << 20).set_inflight(32);
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        let n = payloads.len();
        let started = Instant::now();
        let publisher = tokio::spawn(async move {
            for p in payloads {
                client
                    .publish("bench/gw-raw/sync/rows/batch", QoS::AtLeastOnce, false, p)
                    .await
                    .unwrap();
            }
            client
        });
        let mut acks = 0;
        while acks < n {
            if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await.unwrap() {
                acks += 1;
            }
        }
        drop(publisher.await.unwrap());
        started.elapsed().as_secs_f64()
    });

    // Idle: a fresh process on the now empty journal, a few flush intervals.
    let idle_out = dir.path().join("idle.time");
    let child = spawn_timed(&config, &idle_out);
    let pid = agent_pid(child.id());
    std::thread::sleep(Duration::from_secs(5));
    let idle_cpu = cpu_seconds(pid);
    stop(child, pid);
    let idle = max_rss_kib(&idle_out);

    println!(
        "drain: {rows} rows, {batches} batches, {:.1} MiB of batch payloads",
        bytes as f64 / 1_048_576.0
    );
    println!(
        "drain: {:.0} rows/s ({elapsed:.2} s), {:.3} CPU-s per 100k rows, peak RSS {:.1} MiB",
        rows as f64 / elapsed,
        cpu / rows as f64 * 100_000.0,
        peak as f64 / 1024.0
    );
    println!(
        "raw rumqttc, same bytes: {:.0} rows/s ({raw:.2} s); agent/raw = {:.2}",
        rows as f64 / raw,
        (rows as f64 / elapsed) / (rows as f64 / raw)
    );
    println!(
        "idle: RSS {:.1} MiB, {idle_cpu:.2} CPU-s over 5 s",
        idle as f64 / 1024.0
    );
}
