//! `GET /metrics` of `edge-agent run` (`[observability] metrics_listen`): a minimal HTTP/1.x
//! listener on a std thread of its own, and the Prometheus text encoding (format 0.0.4, the
//! `prometheus_text` encoder of prometheus-client).
//!
//! Why a hand-made listener and not hyper/axum: the device binary is size-bound (≤ 8 MiB
//! stripped) and has no HTTP server; the endpoint answers one local scraper with one route, so
//! ~100 lines of std — request head bounded to [`MAX_REQUEST_BYTES`], a deadline on reading it,
//! write timeouts, one connection at a time, `Connection: close` — cover it without a server
//! stack. Why a thread and not a task on the daemon's runtime: the runtime is single-threaded
//! and runs the drain; a scrape's SQLite reads then never take a turn from it. Each scrape opens
//! its own read-only connections to state.db and source.db (WAL: they never block the daemon's
//! writes) and closes them, so an idle agent holds no extra page cache.
//!
//! A bind failure (port taken, address not on this host) does not stop the agent: syncing
//! matters more than its metrics. The error names the key and is logged again at each retry
//! (backoff [`BIND_RETRY_FIRST`] … [`BIND_RETRY_MAX`]) until the address can be bound, so the
//! endpoint comes up by itself once the port is free.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use rusqlite::{Connection, OpenFlags};
use tracing::{debug, error, info, warn};

use super::{name, samples, Kind, Sample, FAMILIES};
use crate::state::StateDb;

/// The config key, for messages.
pub const KEY: &str = "observability.metrics_listen";
/// A request head larger than this is refused (431).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// The whole request head must arrive within this.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Page cache of a scrape's source.db connection (`PRAGMA cache_size`, negative = KiB).
const SCRAPE_CACHE_KIB: i64 = -128;
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause before binding again after a failure; doubled up to [`BIND_RETRY_MAX`].
pub const BIND_RETRY_FIRST: Duration = Duration::from_secs(1);
pub const BIND_RETRY_MAX: Duration = Duration::from_secs(30);

/// What a scrape reads: the files, the device's name, and the daemon's connection flag.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub state_db: PathBuf,
    pub source_db: PathBuf,
    pub device: String,
    /// Set by the daemon on CONNACK, cleared on a disconnect.
    pub connected: Arc<AtomicBool>,
}

/// Starts the listener thread for `addr` (binding, and re-trying a failed bind, happen on it).
pub fn spawn(addr: SocketAddr, scrape: Scrape) -> std::io::Result<()> {
    if !addr.ip().is_loopback() {
        warn!(key = KEY, %addr,
            "metrics endpoint on a non-loopback address: anyone who reaches it reads the metrics (no auth)");
    }
    std::thread::Builder::new()
        .name("edge-agent-metrics".into())
        .stack_size(256 * 1024)
        .spawn(move || serve(addr, &scrape))
        .map(drop)
}

fn serve(addr: SocketAddr, scrape: &Scrape) {
    let mut pause = BIND_RETRY_FIRST;
    let listener = loop {
        match TcpListener::bind(addr) {
            Ok(l) => break l,
            Err(e) => {
                error!(key = KEY, %addr, error = %e, retry_in_secs = pause.as_secs(),
                    "config key `{KEY}`: cannot listen on {addr}: {e}; syncing goes on without the metrics endpoint, binding again later");
                std::thread::sleep(pause);
                pause = (pause * 2).min(BIND_RETRY_MAX);
            }
        }
    };
    info!(%addr, "metrics endpoint listening (GET /metrics)");
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = handle(stream, scrape) {
                    debug!(error = %e, "metrics request dropped");
                }
            }
            // Out of descriptors and the like: do not spin.
            Err(e) => {
                warn!(error = %e, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request head's first line. Pure.
pub fn route(request_line: &str) -> Route {
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics,
        ("GET", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

fn handle(mut stream: TcpStream, scrape: &Scrape) -> std::io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let Some(head) = read_head(&mut stream)? else {
        return respond(
            &mut stream,
            "431 Request Header Fields Too Large",
            "text/plain",
            b"request too large\n",
        );
    };
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    match route(line.trim_end_matches('\r')) {
        Route::Metrics => match scrape_text(scrape) {
            Ok(body) => respond(
                &mut stream,
                "200 OK",
                prometheus_text::CONTENT_TYPE,
                body.as_bytes(),
            ),
            Err(e) => {
                warn!(error = %e, "metrics scrape failed");
                respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "text/plain",
                    format!("{e}\n").as_bytes(),
                )
            }
        },
        Route::NotFound => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n"),
        Route::MethodNotAllowed => respond(
            &mut stream,
            "405 Method Not Allowed\r\nAllow: GET",
            "text/plain",
            b"method not allowed\n",
        ),
        Route::BadRequest => respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            b"bad request\n",
        ),
    }
}

/// The request head (through the blank line), `None` when it exceeds [`MAX_REQUEST_BYTES`].
/// A peer that stays silent or trickles past [`READ_DEADLINE`] gets a timeout error.
fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + READ_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(Some(head));
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// One scrape: the files' samples plus the connection flag, encoded.
fn scrape_text(scrape: &Scrape) -> Result<String, Box<dyn std::error::Error>> {
    let state = StateDb::open_read_only(&scrape.state_db)?;
    let source = Connection::open_with_flags(
        &scrape.source_db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|c| {
        c.busy_timeout(Duration::from_secs(1))?;
        // A scrape counts the pending journal (a backlog can be 1M rows): a small page cache
        // keeps that from adding megabytes to the draining agent's RSS (the default is 2 MiB
        // per connection, and musl's allocator keeps what it was given).
        c.pragma_update(None, "cache_size", SCRAPE_CACHE_KIB)?;
        Ok(c)
    })
    .ok();
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000;
    let samples = samples(&state, source.as_ref(), &scrape.device, now_ms)?;
    Ok(encode(
        &samples,
        Some(scrape.connected.load(Ordering::Relaxed)),
    )?)
}

/// The samples of one scrape as a prometheus-client collector: a collector's descriptors are
/// written whether or not a family has samples (a registered, empty `Family` is skipped), so
/// every family has its HELP and TYPE from start-up.
#[derive(Debug)]
struct Snapshot {
    samples: Vec<Sample>,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in FAMILIES {
            // prometheus-client appends `_total` to a counter's name itself.
            let (base, kind) = match f.kind {
                Kind::Gauge => (f.name, MetricType::Gauge),
                Kind::Counter => (
                    f.name.strip_suffix("_total").unwrap_or(f.name),
                    MetricType::Counter,
                ),
            };
            let mut family = encoder.encode_descriptor(base, f.help, None, kind)?;
            for s in self.samples.iter().filter(|s| s.name == f.name) {
                let labels: Vec<(&str, &str)> =
                    s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let series = family.encode_family(&labels)?;
                match f.kind {
                    Kind::Gauge => ConstGauge::new(s.value).encode(series)?,
                    Kind::Counter => ConstCounter::new(s.value.max(0) as u64).encode(series)?,
                }
            }
        }
        Ok(())
    }
}

/// The exposition text of `samples`: every family of [`FAMILIES`] with its HELP and TYPE,
/// samples or not; `connected` is `edge_agent_mqtt_connected` (left out when `None`).
pub fn encode(samples: &[Sample], connected: Option<bool>) -> Result<String, std::fmt::Error> {
    let mut samples = samples.to_vec();
    if let Some(connected) = connected {
        samples.push(Sample::new(
            name::MQTT_CONNECTED,
            Vec::new(),
            i64::from(connected),
        ));
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot { samples }));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route("GET /metrics HTTP/1.1"), Route::Metrics);
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0"), Route::Metrics);
        assert_eq!(route("GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route("GET /metrics/x HTTP/1.1"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(route("garbage"), Route::BadRequest);
        assert_eq!(route("GET /metrics SPDY/3"), Route::BadRequest);
    }

    #[test]
    fn every_family_has_help_and_type_with_the_spec_names() {
        let text = encode(&[], Some(false)).unwrap();
        for f in FAMILIES {
            let kind = match f.kind {
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
            };
            assert!(
                text.contains(&format!("# HELP {} ", f.name)),
                "{}\n{text}",
                f.name
            );
            assert!(
                text.contains(&format!("# TYPE {} {kind}\n", f.name)),
                "{}\n{text}",
                f.name
            );
        }
        assert!(text.contains("\nedge_agent_mqtt_connected 0\n"), "{text}");
        let s = [Sample::new(
            name::CONTROLS,
            vec![
                ("kind", "pause_lineage".into()),
                ("outcome", "applied".into()),
            ],
            3,
        )];
        let text = encode(&s, None).unwrap();
        assert!(
            text.contains(
                "edge_agent_controls_total{kind=\"pause_lineage\",outcome=\"applied\"} 3\n"
            ),
            "{text}"
        );
        assert!(!text.contains("edge_agent_mqtt_connected 0"), "{text}");
    }
}
