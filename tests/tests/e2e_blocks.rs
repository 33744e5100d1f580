//! Defect 11 ("the agent never exits on a data error"), reliability.md §2 "Blocked tables" and
//! §6: a journal entry the reader cannot decode blocks only its table — visibly (`status`, the
//! lineage's `device_block`) — never the process and never the other tables, until an operator
//! decides through the HTTP API (`POST …/unblock`): `skip` drops exactly that entry (a dead
//! letter `skipped_by_operator` keeps its bytes), `retry` tries it again.
//!
//! The real `edge-agent` binary runs as a child process (as on a gateway; `EDGE_AGENT_BIN`
//! overrides which one, e.g. an older build to see the defect); the undecodable entry is
//! written by the system's own SQLite (the `sqlite3` CLI, 3.40 here) into the application's
//! database, in the same transaction as the application row it describes. The broker,
//! PostgreSQL, the runner and the HTTP API (served on a real socket) are the harness' real ones.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::{agent_bin, agent_config, approve, lineage, Stack, CONTROL_KEY, DEADLINE};
use edge_e2e::{wait_for, wait_for_some};
use edge_functions::api::auth::{mint, AuthConfig, Claims, MANAGE_DEVICES};
use edge_functions::api::Api;
use serde_json::{json, Value};
use uuid::Uuid;

const SECRET: &[u8] = b"e2e-blocks-secret";

/// The agent as a child process with the stack's configuration.
struct Agent {
    config: PathBuf,
    log: PathBuf,
    child: std::sync::Mutex<Child>,
}

impl Agent {
    fn start(stack: &Stack) -> Agent {
        let dir = stack.dir.path();
        let config = dir.join("agent.toml");
        let text = agent_config(dir, &stack.broker, &stack.pki).replace(
            "[security]",
            &format!("{}\n[security]", common::DEFAULT_REPLICATION),
        );
        std::fs::write(&config, text).unwrap();
        let log = dir.join("agent.log");
        let child = Command::new(agent_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("OMEGA_AUTH_TOKEN", CONTROL_KEY)
            .env("EDGE_AGENT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent {
            config,
            log,
            child: std::sync::Mutex::new(child),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the agent's log) unless the process is still running.
    fn assert_running(&self, when: &str) {
        if let Some(status) = self.child.lock().unwrap().try_wait().unwrap() {
            panic!(
                "the agent exited ({status}) {when}; its log:\n{}",
                self.log()
            );
        }
    }

    /// `edge-agent status --json`.
    fn status(&self) -> Value {
        let out = Command::new(agent_bin())
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .env("OMEGA_AUTH_TOKEN", CONTROL_KEY)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `edge-agent status` (text).
    fn status_text(&self) -> String {
        let out = Command::new(agent_bin())
            .args(["status", "--config"])
            .arg(&self.config)
            .env("OMEGA_AUTH_TOKEN", CONTROL_KEY)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stop(self) {
        let mut child = self.child.lock().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The HTTP API on a real socket, and an operator's token.
struct Http {
    addr: SocketAddr,
    token: String,
    org: Uuid,
    project: Uuid,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Http {
    async fn start(stack: &Stack) -> Http {
        let api = Arc::new(Api::new(
            stack.deps.pool.clone(),
            AuthConfig::hs256(SECRET.to_vec()),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(edge_functions::api::local::serve(
            api,
            listener,
            std::future::pending(),
        ));
        let token = mint(
            SECRET,
            &Claims {
                sub: "operator@e2e".into(),
                org_id: stack.device.org_id,
                projects: vec![stack.device.project_id],
                permissions: vec![MANAGE_DEVICES.into()],
                exp: 4_000_000_000,
                iat: 0,
            },
        )
        .unwrap();
        Http {
            addr,
            token,
            org: stack.device.org_id,
            project: stack.device.project_id,
            server,
        }
    }

    /// One HTTP/1.1 request (`Connection: close`), answered as (status, JSON body).
    async fn send(&self, method: &str, rel: &str, body: Option<Value>) -> (u16, Value) {
        let path = format!("/core/api/v1/projects/{}/edge{rel}", self.project);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nORG-ID: {}\r\n\
             Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            self.token,
            self.org,
            body.len()
        );
        if method != "GET" {
            req.push_str(&format!("Idempotency-Key: {}\r\n", Uuid::now_v7()));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        let addr = self.addr;
        let raw = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            String::from_utf8(out).unwrap()
        })
        .await
        .unwrap();
        let status: u16 = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {raw:?}"));
        let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
        let text = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_owned()
        };
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

/// The application writes row `id` of `bad` with the system's SQLite (the CLI), and in the
/// same transaction its journal entry is made undecodable (a truncated row image), so the
/// agent only ever sees the broken entry. Returns the entry's commit_seq.
fn write_undecodable(source: &Path, id: i64) -> i64 {
    let sql = format!(
        "BEGIN; INSERT INTO bad (id, v) VALUES ({id}, {id}.5); \
         UPDATE __omega_journal SET row = '[{id},' WHERE commit_seq = \
             (SELECT max(commit_seq) FROM __omega_journal); \
         SELECT max(commit_seq) FROM __omega_journal; COMMIT;"
    );
    let out = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 10000")
        .arg(source)
        .arg(&sql)
        .output()
        .expect("the sqlite3 CLI (the system's libsqlite3)");
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Both tables approved and mirrored, then an undecodable entry in `bad`: the agent keeps
/// running, `good` keeps syncing, `status` and the lineage show the block with the entry's
/// commit_seq. Returns what the two tests go on with.
async fn blocked() -> (Stack, Agent, Http, i64) {
    let stack = Stack::start(
        "CREATE TABLE good (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
         CREATE TABLE bad (id INTEGER PRIMARY KEY, v REAL);
         INSERT INTO good VALUES (1, 'a'), (2, 'b');
         INSERT INTO bad VALUES (1, 1.5), (2, 2.5);",
    )
    .await;
    let agent = Agent::start(&stack);
    let http = Http::start(&stack).await;
    for table in ["good", "bad"] {
        let id = stack.lineage_id(table).await;
        approve(&stack.deps, id).await;
    }
    stack.assert_mirror_converges("good", &["id"]).await;
    stack.assert_mirror_converges("bad", &["id"]).await;

    let source = stack.dir.path().join("source.db");
    let seq = write_undecodable(&source, 5);
    // Writes after it, in both tables.
    stack
        .app
        .execute_batch(
            "INSERT INTO bad VALUES (6, 6.5);
             INSERT INTO good VALUES (3, 'c'), (4, 'd'); UPDATE good SET v = 'bb' WHERE id = 2;",
        )
        .unwrap();

    // The lineage shows the device's block with the entry's commit_seq.
    let (bad_id, _, _) = lineage(&stack.pg, "bad").await.unwrap();
    let block = wait_for_some(DEADLINE, "the lineage's device_block", || {
        let (http, agent) = (&http, &agent);
        async move {
            agent.assert_running("after the undecodable entry");
            let (status, body) = http.send("GET", &format!("/lineages/{bad_id}"), None).await;
            assert_eq!(status, 200, "{body}");
            let b = &body["data"]["lineage"]["device_block"];
            (!b.is_null()).then(|| b.clone())
        }
    })
    .await;
    agent.assert_running("after the undecodable entry");
    assert_eq!(block["reason"], "undecodable_journal_entry", "{block}");
    assert_eq!(block["commit_seq"], seq, "{block}");
    // Every other table keeps syncing.
    stack.assert_mirror_converges("good", &["id"]).await;
    agent.assert_running("while the other table syncs");

    // `status` lists the block (JSON and text) and keeps the entry in the journal.
    let status = agent.status();
    let blocked = status["blocked_tables"].as_array().unwrap();
    assert_eq!(blocked.len(), 1, "{status}");
    assert_eq!(blocked[0]["table"], "bad");
    assert_eq!(blocked[0]["reason"], "undecodable_journal_entry");
    assert_eq!(blocked[0]["commit_seq"], seq);
    let text = agent.status_text();
    assert!(
        text.contains(&format!("BLOCKED bad at commit_seq {seq}")),
        "{text}"
    );
    let kept: i64 = stack
        .app
        .query_row(
            "SELECT count(*) FROM __omega_journal WHERE commit_seq = ?1",
            [seq],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, 1, "a blocked entry stays in the journal");
    // Row 6 (after the block) has not reached the mirror: the table is held in order.
    let mirror_has_6: bool = stack
        .pg
        .query_one(
            &format!(
                "SELECT count(*) > 0 FROM \"{}\" WHERE id = 6",
                lineage(&stack.pg, "bad").await.unwrap().2.unwrap()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !mirror_has_6,
        "nothing of the blocked table after the entry is published"
    );
    (stack, agent, http, seq)
}

/// Unblock refusals that need no device: 422 for a bad body, 409 for the wrong entry.
async fn refusals(http: &Http, lineage_id: Uuid, seq: i64) {
    let path = format!("/lineages/{lineage_id}/unblock");
    let (status, body) = http
        .send(
            "POST",
            &path,
            Some(json!({"action": "drop", "commit_seq": seq})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_body");
    let (status, body) = http
        .send(
            "POST",
            &path,
            Some(json!({"action": "skip", "commit_seq": seq + 1})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "commit_seq_mismatch");
}

async fn device_block_cleared(stack: &Stack, http: &Http) {
    let (bad_id, _, _) = lineage(&stack.pg, "bad").await.unwrap();
    wait_for(
        DEADLINE,
        "the device to report the table unblocked",
        || async move {
            let (_, body) = http.send("GET", &format!("/lineages/{bad_id}"), None).await;
            body["data"]["lineage"]["device_block"].is_null()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_journal_entry_blocks_only_its_table_until_skipped() {
    let (stack, agent, http, seq) = blocked().await;
    let (bad_id, _, _) = lineage(&stack.pg, "bad").await.unwrap();
    refusals(&http, bad_id, seq).await;

    let (status, body) = http
        .send(
            "POST",
            &format!("/lineages/{bad_id}/unblock"),
            Some(json!({"action": "skip", "commit_seq": seq})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["action"], "skip");
    stack.wait_control_acked("bad", "unblock_table").await;
    device_block_cleared(&stack, &http).await;

    // The dead letter keeps the entry's bytes.
    let pg = &stack.pg;
    let (error, entry): (String, String) = wait_for_some(
        DEADLINE,
        "the skipped_by_operator dead letter",
        || async move {
            pg.query_opt(
                "SELECT error, body FROM edge_dead_letters WHERE error LIKE 'skipped_by_operator%'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
        },
    )
    .await;
    assert!(error.contains(&format!("commit_seq {seq}")), "{error}");
    let entry: Value = serde_json::from_str(&entry).unwrap();
    assert_eq!(entry["commit_seq"], seq);
    assert_eq!(entry["row"], "[5,");
    assert_eq!(entry["source_table"], "bad");

    // The table syncs again: row 6 arrives, the skipped row 5 does not — until the
    // application writes it again (a full row image).
    stack
        .app
        .execute_batch("UPDATE bad SET v = 5.25 WHERE id = 5;")
        .unwrap();
    stack.assert_mirror_converges("bad", &["id"]).await;
    stack.assert_mirror_converges("good", &["id"]).await;
    agent.assert_running("after the skip");
    assert!(agent.status()["blocked_tables"]
        .as_array()
        .unwrap()
        .is_empty());
    let left: i64 = stack
        .app
        .query_row(
            "SELECT count(*) FROM __omega_journal WHERE commit_seq = ?1",
            [seq],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "the skipped entry is gone from the journal");
    // Nothing left to decide: 409.
    let (status, body) = http
        .send(
            "POST",
            &format!("/lineages/{bad_id}/unblock"),
            Some(json!({"action": "retry", "commit_seq": seq})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "lineage_not_blocked");
    agent.stop();
    drop(http);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_journal_entry_blocks_only_its_table_until_retried() {
    let (stack, agent, http, seq) = blocked().await;
    let (bad_id, _, _) = lineage(&stack.pg, "bad").await.unwrap();
    let first = agent.status()["blocked_tables"][0]["blocked_at_ms"].clone();
    let (_, before) = http.send("GET", &format!("/lineages/{bad_id}"), None).await;
    let since = before["data"]["lineage"]["device_block"]["since"].clone();
    // A retry of an entry that still cannot be decoded blocks the table again, same entry.
    let (status, body) = http
        .send(
            "POST",
            &format!("/lineages/{bad_id}/unblock"),
            Some(json!({"action": "retry", "commit_seq": seq})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    stack.wait_control_acked("bad", "unblock_table").await;
    let again = wait_for_some(
        DEADLINE,
        "the table blocked again at the same entry",
        || {
            let (agent, first) = (&agent, &first);
            async move {
                let s = agent.status();
                s["blocked_tables"]
                    .as_array()
                    .and_then(|b| b.first())
                    .filter(|b| b["blocked_at_ms"] != *first)
                    .map(|b| b["commit_seq"].clone())
            }
        },
    )
    .await;
    assert_eq!(again, seq);
    agent.assert_running("after a retry that failed again");
    wait_for(DEADLINE, "the cloud to see the new block", || {
        let (http, since) = (&http, &since);
        async move {
            let (_, body) = http.send("GET", &format!("/lineages/{bad_id}"), None).await;
            let b = &body["data"]["lineage"]["device_block"];
            !b.is_null() && b["since"] != *since && b["commit_seq"] == seq
        }
    })
    .await;

    // The operator repairs the entry (the application's own SQLite), then retries.
    let source = stack.dir.path().join("source.db");
    let out = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 10000")
        .arg(&source)
        .arg(format!(
            "UPDATE __omega_journal SET row = '[5,5.5]' WHERE commit_seq = {seq};"
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    let (status, body) = http
        .send(
            "POST",
            &format!("/lineages/{bad_id}/unblock"),
            Some(json!({"action": "retry", "commit_seq": seq})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    device_block_cleared(&stack, &http).await;
    // Rows 5 (the retried entry) and 6 arrive; no dead letter was made.
    stack.assert_mirror_converges("bad", &["id"]).await;
    stack.assert_mirror_converges("good", &["id"]).await;
    agent.assert_running("after the retry");
    let dead: i64 = stack
        .pg
        .query_one(
            "SELECT count(*) FROM edge_dead_letters WHERE error LIKE 'skipped_by_operator%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "a retry drops nothing");
    agent.stop();
    drop(http);
    stack.stop().await;
}
