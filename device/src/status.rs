//! `edge-agent status` and `edge-agent check` (agent.md §6): what the agent has done so far
//! (including the tables it blocked itself, [`blocks`]: reason and the entry's `commit_seq`), and
//! whether a config can run. Neither changes the source database: it is opened read-only (no
//! triggers installed; `check` only proves that this user could write the file and create files
//! in its directory, with a probe file it removes), and journal sizes come from the same query
//! the daemon's retention uses ([`journal_stats`]). `status` opens `state.db` as the daemon does
//! (bringing an older file's layout up to date, see [`outbox_store::init`]). `status --json`'s
//! `metrics` are [`metrics::samples`], the same code behind the daemon's `GET /metrics`.
//!
//! Output goes to stdout as the commands always printed it (scripts parse `status --json`); an
//! error ends the command with the binary's one `edge-agent: error: …` line.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use thiserror::Error;

use crate::blocks;
use crate::capture::journal::journal_stats;
use crate::capture::schema::{enrol, list_user_tables, Enrolment};
use crate::metrics;
use crate::mqtt::{self, MqttError};
use crate::outbox_store;
use crate::settings::{Settings, SettingsError};
use crate::spill;
use crate::state::{StateDb, StateError};

/// Why `status` or `check` failed. Each message names the config key at fault; the `{:#}` of
/// the binary prints the causes after it.
#[derive(Debug, Error)]
pub enum StatusError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A config key whose value cannot work.
    #[error("{0}")]
    Key(String),
    /// A config key whose file or directory could not be used, with the cause.
    #[error("{message}")]
    KeyCause {
        message: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn key_cause(
    message: String,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StatusError {
    StatusError::KeyCause {
        message,
        source: Box::new(source),
    }
}

fn open_read_only(path: &Path, key: &str) -> Result<Connection, StatusError> {
    match std::fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StatusError::Key(format!(
                "config key `{key}`: {} does not exist",
                path.display()
            )));
        }
        // A directory this user may not enter is not a missing file.
        Err(e) => {
            return Err(key_cause(
                format!("config key `{key}`: cannot access {}", path.display()),
                e,
            ));
        }
    }
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| {
        key_cause(
            format!("config key `{key}`: cannot open {}", path.display()),
            e,
        )
    })
}

/// `edge-agent check`: config, certificates (expiry), database access and table enrolment.
pub fn check(config: &Path) -> Result<(), StatusError> {
    let settings = Settings::load(config)?;
    let c = &settings.connection;
    println!("config        ok ({})", config.display());
    if c.server.tls {
        mqtt::tls_config(c)?;
        let certs = mqtt::load_client_certs(&c.client_cert_path)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let first = certs.first().ok_or_else(|| {
            StatusError::Key("config key `connection.client_cert_path`: empty".into())
        })?;
        match mqtt::cert_not_after(first) {
            Some(not_after) if not_after < now => {
                let when = time::OffsetDateTime::from_unix_timestamp(not_after)
                    .ok()
                    .and_then(|t| edge_protocol::timestamp::format(t).ok())
                    .unwrap_or_else(|| not_after.to_string());
                return Err(StatusError::Key(format!(
                    "config key `connection.client_cert_path`: certificate {} expired at {when}",
                    c.client_cert_path.display()
                )));
            }
            Some(not_after) => {
                let days = (not_after - now) / 86_400;
                if days < 30 {
                    tracing::warn!(days, "device certificate expires soon");
                }
                println!("certificates  ok (device certificate valid for {days} more days)");
            }
            None => println!("certificates  ok (expiry not readable)"),
        }
    } else {
        println!("certificates  skipped (plaintext development broker)");
    }
    println!(
        "broker        {}://{}:{} as {} under {}",
        if c.server.tls { "mqtts" } else { "mqtt" },
        c.server.host,
        c.server.port,
        c.device_name,
        c.root_topic
    );
    let r = &settings.replication;
    let source = open_read_only(&r.source_db_path, "sqlite-replication.source_db_path")?;
    let tables = list_user_tables(&source).map_err(|e| {
        key_cause(
            format!(
                "config key `sqlite-replication.source_db_path`: reading {}",
                r.source_db_path.display()
            ),
            e,
        )
    })?;
    writable_source(&r.source_db_path)?;
    println!(
        "source db     ok ({}, {} tables)",
        r.source_db_path.display(),
        tables.len()
    );
    writable_state_dir(&r.state_db_path)?;
    println!("state db      ok ({})", r.state_db_path.display());
    match settings.observability.metrics_listen {
        None => println!("metrics       off (observability.metrics_listen unset)"),
        Some(addr) if addr.ip().is_loopback() => {
            println!("metrics       http://{addr}/metrics")
        }
        Some(addr) => {
            tracing::warn!(%addr, "observability.metrics_listen is not a loopback address");
            println!(
                "metrics       http://{addr}/metrics (WARNING: not a loopback address; the \
                 endpoint has no auth, anyone who reaches it reads the metrics)"
            );
        }
    }
    for info in &tables {
        let cfg = r.capture.table(&info.name);
        let what = match enrol(info, &cfg) {
            Enrolment::Rows(t) => format!("rows      {}", t.schema_hash),
            Enrolment::Telemetry(t) => format!("telemetry {}", t.schema_hash),
            Enrolment::Ignored => "ignored".to_owned(),
            Enrolment::NotEnrolled { reason } => format!("NOT ENROLLED: {reason}"),
        };
        println!("  table {:<24} {what}", info.name);
    }
    for name in r.capture.tables.keys() {
        if !tables.iter().any(|t| &t.name == name) {
            println!("  table {name:<24} configured but not present (yet)");
        }
    }
    println!("check passed");
    Ok(())
}

/// The nearest existing ancestor of `state_db_path`, which must be a writable directory: the
/// daemon creates the missing ones.
fn writable_state_dir(state_db_path: &Path) -> Result<(), StatusError> {
    let mut state_dir = state_db_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    while !state_dir.exists() {
        match state_dir.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(p) => state_dir = p,
            None => break,
        }
    }
    let meta = std::fs::metadata(state_dir).map_err(|e| {
        key_cause(
            format!(
                "config key `sqlite-replication.state_db_path`: directory {} is not accessible",
                state_dir.display()
            ),
            e,
        )
    })?;
    if !meta.is_dir() {
        return Err(StatusError::Key(format!(
            "config key `sqlite-replication.state_db_path`: {} is not a directory",
            state_dir.display()
        )));
    }
    probe_writable_dir(state_dir).map_err(|e| {
        key_cause(
            format!(
                "config key `sqlite-replication.state_db_path`: directory {} is not writable by this user",
                state_dir.display()
            ),
            e,
        )
    })?;
    if state_db_path.exists() {
        open_for_write(state_db_path).map_err(|e| {
            key_cause(
                format!(
                    "config key `sqlite-replication.state_db_path`: {} is not writable by this user",
                    state_db_path.display()
                ),
                e,
            )
        })?;
    }
    Ok(())
}

/// The agent installs triggers in the source database and journals there, and SQLite creates
/// its `-wal`/`-shm`/`-journal` files beside it: this user must be able to write both the file
/// and its directory (the application's group, and the unit's `ReadWritePaths=`).
fn writable_source(source_db_path: &Path) -> Result<(), StatusError> {
    const KEY: &str = "sqlite-replication.source_db_path";
    open_for_write(source_db_path).map_err(|e| {
        key_cause(
            format!(
                "config key `{KEY}`: {} is not writable by this user",
                source_db_path.display()
            ),
            e,
        )
    })?;
    let dir = source_db_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    probe_writable_dir(dir).map_err(|e| {
        key_cause(
            format!(
                "config key `{KEY}`: directory {} is not writable by this user (SQLite's -wal and -journal files)",
                dir.display()
            ),
            e,
        )
    })
}

/// Opens an existing file for writing without changing it (no truncation, nothing written).
fn open_for_write(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(path).map(drop)
}

/// Creates and removes a probe file in `dir`: mode bits alone do not say what this user, its
/// groups, a read-only mount or the unit's sandbox (`ProtectSystem=strict`) allow.
fn probe_writable_dir(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".edge-agent-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// Per table `(entries, bytes)` of the journal, empty when the source database cannot be
/// opened or holds no journal yet.
fn journal_sizes(source_db_path: &Path) -> Result<BTreeMap<String, (u64, u64)>, StatusError> {
    let mut sizes = BTreeMap::new();
    let Ok(source) = open_read_only(source_db_path, "sqlite-replication.source_db_path") else {
        return Ok(sizes);
    };
    let has_journal = source
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE name = '__omega_journal'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if has_journal {
        for s in journal_stats(&source)? {
            sizes.insert(s.table, (s.entries, s.bytes));
        }
    }
    Ok(sizes)
}

/// `edge-agent status [--json]`: enrolled tables, journal depth, in-flight batches, pauses,
/// last ack.
pub fn status(config: &Path, json: bool) -> Result<(), StatusError> {
    let settings = Settings::load(config)?;
    let r = &settings.replication;
    if !r.state_db_path.exists() {
        return Err(StatusError::Key(format!("config key `sqlite-replication.state_db_path`: {} does not exist (the agent has not run yet)", r.state_db_path.display())));
    }
    let state = StateDb::open(&r.state_db_path)?;
    outbox_store::init(&state)?;
    let outbox = outbox_store::list(&state)?;
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000;
    let journal = journal_sizes(&r.source_db_path)?;
    let last_ack = outbox_store::last_ack_at(&state)?;
    crate::control_store::init(&state)?;
    let device_unknown = crate::control_store::device_unknown(&state)?
        .map(|(reason, at)| serde_json::json!({"reason": reason, "issued_at": at}));
    let blocked: BTreeMap<String, blocks::Block> = blocks::list(&state)?
        .into_iter()
        .map(|b| (b.table.clone(), b))
        .collect();
    let mut tables = Vec::new();
    for t in state.tables()? {
        let (depth, bytes) = journal.get(&t.table_name).copied().unwrap_or((0, 0));
        let inflight = outbox
            .iter()
            .filter(|e| e.table_name == t.table_name)
            .count();
        let oldest = outbox
            .iter()
            .filter(|e| e.table_name == t.table_name)
            .map(|e| e.created_at_ms)
            .min()
            .map(|ms| (now_ms - ms).max(0) / 1000);
        tables.push(serde_json::json!({
            "table": t.table_name,
            "strategy": t.strategy,
            "enrolment": t.enrolment,
            "reason": t.reason,
            "schema_hash": t.schema_hash,
            "journal_entries": depth,
            "journal_bytes": bytes,
            "last_acked_seq": t.last_acked_seq,
            "unacked_batches": inflight,
            "pending_spills": outbox
                .iter()
                .filter(|e| e.table_name == t.table_name && e.kind == spill::OUTBOX_KIND)
                .count(),
            "oldest_unacked_batch_age_secs": oldest,
            "paused": t.paused,
            "pause_watermark": t.pause_watermark,
            "needs_snapshot": t.needs_snapshot,
            "blocked": blocked.get(&t.table_name).map(block_json),
        }));
    }
    let blocked_list: Vec<_> = blocked.values().map(block_json).collect();
    // The endpoint's samples (all but edge_agent_mqtt_connected), from the same code.
    let source = open_read_only(&r.source_db_path, "sqlite-replication.source_db_path").ok();
    let metrics = metrics::samples(
        &state,
        source.as_ref(),
        &settings.connection.device_name,
        now_ms,
    )
    .map_err(|e| key_cause("reading the metrics".into(), e))?;
    let counters: Vec<_> = state
        .counters()?
        .into_iter()
        .map(|(name, table, value)| serde_json::json!({"name": name, "table": table, "value": value}))
        .collect();
    let doc = serde_json::json!({
        "device_name": settings.connection.device_name,
        "journal_epoch": state.journal_epoch()?.map(|e| e.to_string()),
        "unacked_batches": outbox.len(),
        "last_ack_at": last_ack,
        "device_unknown": device_unknown,
        "tables": tables,
        "blocked_tables": blocked_list,
        "counters": counters,
        "metrics": metrics,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print_text(&settings, &doc, outbox.len());
    let oldest = metrics
        .iter()
        .filter(|m| m.name == metrics::name::OLDEST_PENDING_AGE)
        .max_by_key(|m| m.value);
    match oldest {
        Some(m) if m.value > 0 => println!(
            "oldest pending {}s ({})",
            m.value,
            m.labels.first().map_or("", |l| l.1.as_str())
        ),
        _ => println!("oldest pending -"),
    }
    Ok(())
}

/// A block as `status --json` shows it (`blocked` of a table, and `blocked_tables`).
fn block_json(b: &blocks::Block) -> serde_json::Value {
    serde_json::json!({
        "table": b.table,
        "reason": b.reason,
        "commit_seq": b.commit_seq,
        "detail": b.detail,
        "blocked_at_ms": b.blocked_at_ms,
    })
}

/// The human-readable `status`.
fn print_text(settings: &Settings, doc: &serde_json::Value, unacked: usize) {
    println!("device        {}", settings.connection.device_name);
    println!(
        "epoch         {}",
        doc["journal_epoch"].as_str().unwrap_or("-")
    );
    println!("unacked       {unacked} batches");
    println!(
        "last ack      {}",
        doc["last_ack_at"].as_str().unwrap_or("never")
    );
    if let Some(reason) = doc["device_unknown"]["reason"].as_str() {
        println!(
            "cloud         does NOT know this device ({reason}, {}): check its registration",
            doc["device_unknown"]["issued_at"].as_str().unwrap_or("")
        );
    }
    println!(
        "{:<24} {:<10} {:<13} {:>9} {:>11} {:>9} {:>7} {:<8} snapshot",
        "table", "strategy", "enrolment", "journal", "bytes", "acked", "unacked", "paused"
    );
    for t in doc["tables"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<10} {:<13} {:>9} {:>11} {:>9} {:>7} {:<8} {}",
            t["table"].as_str().unwrap_or(""),
            t["strategy"].as_str().unwrap_or(""),
            t["enrolment"].as_str().unwrap_or(""),
            t["journal_entries"],
            t["journal_bytes"],
            t["last_acked_seq"],
            t["unacked_batches"],
            if t["paused"].as_bool() == Some(true) {
                format!("@{}", t["pause_watermark"])
            } else {
                "no".into()
            },
            if t["needs_snapshot"].as_bool() == Some(true) {
                "needed"
            } else {
                "-"
            },
        );
        if let Some(reason) = t["reason"].as_str() {
            println!("    not enrolled: {reason}");
        }
    }
    for b in doc["blocked_tables"].as_array().into_iter().flatten() {
        println!(
            "BLOCKED {} at commit_seq {}: {}{} (edgectl lineages unblock ID --retry | --skip {})",
            b["table"].as_str().unwrap_or(""),
            b["commit_seq"],
            b["reason"].as_str().unwrap_or(""),
            b["detail"]
                .as_str()
                .map(|d| format!(" — {d}"))
                .unwrap_or_default(),
            b["commit_seq"],
        );
    }
}
