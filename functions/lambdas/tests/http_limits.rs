//! Issue 13 defect 13 (reliability.md §7): the runner's HTTP listener enforces the body size
//! limit before buffering and before auth, has header and body read timeouts, and caps its
//! concurrent connections — each against the real `edge-cloud run` process, its bounds set
//! through the environment (docs/deploy.md).
#![allow(clippy::unwrap_used)]

mod common;
mod runner_process;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use edge_e2e::{Broker, Pki};
use runner_process::RunnerProcess;

struct Listener {
    _env: common::Env,
    _broker: Broker,
    _dir: tempfile::TempDir,
    runner: RunnerProcess,
}

async fn runner(env: &[(&str, &str)]) -> Listener {
    let e = common::env().await;
    let pki = Pki::generate();
    let broker = Broker::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let runner = RunnerProcess::start(&e.db.url(), &broker, &pki, dir.path(), "edge-service", env);
    Listener {
        _env: e,
        _broker: broker,
        _dir: dir,
        runner,
    }
}

fn connect(l: &Listener) -> TcpStream {
    let s = TcpStream::connect(l.runner.http).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Reads until `deadline` for the start of a response; `None` if none came.
fn response_within(s: &mut TcpStream, deadline: Duration) -> Option<String> {
    let until = Instant::now() + deadline;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned())
}

/// Whether the server closed the connection (EOF, reset, or an answer such as 408).
fn closed_or_answered(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        // 0: closed; more: an answer (e.g. 408) — either way the connection is given up.
        Ok(n) => n <= buf.len(),
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

const APPROVE: &str = "/core/api/v1/projects/0193a000-0000-7000-8000-0000000000b1/edge/\
                       schema-reviews/0193a000-0000-7000-8000-0000000000c1/approve";

#[tokio::test(flavor = "multi_thread")]
async fn http_listener_buffers_whole_body_before_size_check_and_auth() {
    let l = runner(&[]).await;
    // 1 GiB declared, no credentials, only 64 KiB sent: refused at once, not after 1 GiB.
    let mut s = connect(&l);
    write!(
        s,
        "POST {APPROVE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 1073741824\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[b' '; 64 * 1024]).unwrap();
    let answer = response_within(&mut s, Duration::from_secs(5));
    let answer = answer.expect("no answer to a 1 GiB declared body within 5 s (buffering it?)");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Chunked, no length declared: refused once it crosses 10 MiB, before the body ends.
    let mut s = connect(&l);
    write!(
        s,
        "POST {APPROVE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..11 {
        if write!(s, "{:x}\r\n", chunk.len()).is_err() || s.write_all(&chunk).is_err() {
            break;
        }
        let _ = s.write_all(b"\r\n");
    }
    let answer = response_within(&mut s, Duration::from_secs(5))
        .expect("no answer to an 11 MiB chunked body that never ends");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_listener_has_no_header_read_timeout_slowloris_is_dropped() {
    let l = runner(&[("EDGE_HTTP_HEADER_TIMEOUT_MS", "1000")]).await;
    let mut s = connect(&l);
    s.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut dropped = false;
    // One header line every 200 ms, never the blank line that ends the header.
    while started.elapsed() < Duration::from_secs(6) {
        if s.write_all(b"X-Slow: y\r\n").is_err() || closed_or_answered(&mut s) {
            dropped = true;
            break;
        }
    }
    assert!(
        dropped,
        "a trickling client still held its connection after 6 s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "dropped only after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_listener_has_no_connection_cap_extra_connection_waits() {
    let l = runner(&[("EDGE_HTTP_MAX_CONNECTIONS", "2")]).await;
    // Two connections hold the two slots (headers started, not finished).
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(&l);
            s.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // Connected after them, so behind them in the listen backlog.
    let mut probe = connect(&l);
    probe
        .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let early = response_within(&mut probe, Duration::from_secs(1));
    assert!(
        early.is_none(),
        "a third connection was served over a cap of 2: {early:?}"
    );
    // One slot frees: the waiting connection is served.
    drop(held.pop());
    let answer =
        response_within(&mut probe, Duration::from_secs(10)).expect("served once a slot freed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
