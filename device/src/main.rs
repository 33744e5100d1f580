//! `edge-agent` command line (agent.md §6). Thin: parse, configure logging, call the library.
//! Every failure ends in exactly one `edge-agent: error: …` line on stderr and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use edge_agent::capture::schema::{enrol, list_user_tables, Enrolment};
use edge_agent::capture::{Capture, SystemIds};
use edge_agent::daemon::Daemon;
use edge_agent::settings::Settings;
use edge_agent::state::StateDb;
use edge_agent::{mqtt, outbox_store};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// Edge SQLite sync agent for IoT gateways.
#[derive(Debug, Parser)]
#[command(name = "edge-agent", version, about)]
struct Cli {
    /// Log format (logs go to stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (SIGTERM/SIGINT: stop taking work, wait briefly for acks, exit 0).
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show enrolled tables, journal depth, in-flight batches, pauses, last ack.
    Status {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Validate config, certificates (expiry), database access and table enrolment.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Enqueue a snapshot of one table (or every enrolled table).
    Snapshot {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "T")]
        table: Option<String>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGE_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins the cause chain on one line.
            eprintln!("edge-agent: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => run(&config),
        Command::Status { config, json } => status(&config, json),
        Command::Check { config } => check(&config),
        Command::Snapshot { config, table } => snapshot(&config, table.as_deref()),
    }
}

fn run(config: &Path) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    // Fail before touching any database when the TLS material is unusable.
    if settings.connection.server.tls {
        mqtt::tls_config(&settings.connection)?;
    }
    // One thread: the agent is I/O-light and a gateway's memory is precious.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let daemon = Daemon::open(settings)?;
        daemon.run(shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested");
}

fn open_read_only(path: &Path, key: &str) -> anyhow::Result<Connection> {
    if !path.exists() {
        bail!("config key `{key}`: {} does not exist", path.display());
    }
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("config key `{key}`: cannot open {}", path.display()))
}

fn check(config: &Path) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let c = &settings.connection;
    println!("config        ok ({})", config.display());
    if c.server.tls {
        mqtt::tls_config(c)?;
        let certs = mqtt::load_client_certs(&c.client_cert_path)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let first = certs
            .first()
            .context("config key `connection.client_cert_path`: empty")?;
        match mqtt::cert_not_after(first) {
            Some(not_after) if not_after < now => {
                let when = time::OffsetDateTime::from_unix_timestamp(not_after)
                    .ok()
                    .and_then(|t| edge_protocol::timestamp::format(t).ok())
                    .unwrap_or_else(|| not_after.to_string());
                bail!(
                    "config key `connection.client_cert_path`: certificate {} expired at {when}",
                    c.client_cert_path.display()
                );
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
    let tables = list_user_tables(&source).with_context(|| {
        format!(
            "config key `sqlite-replication.source_db_path`: reading {}",
            r.source_db_path.display()
        )
    })?;
    println!(
        "source db     ok ({}, {} tables)",
        r.source_db_path.display(),
        tables.len()
    );
    // The daemon creates missing directories, so the nearest existing ancestor must be writable.
    let mut state_dir = r
        .state_db_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    while !state_dir.exists() {
        match state_dir.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(p) => state_dir = p,
            None => break,
        }
    }
    let meta = std::fs::metadata(state_dir).with_context(|| {
        format!(
            "config key `sqlite-replication.state_db_path`: directory {} is not accessible",
            state_dir.display()
        )
    })?;
    if !meta.is_dir() || meta.permissions().readonly() {
        bail!(
            "config key `sqlite-replication.state_db_path`: {} is not a writable directory",
            state_dir.display()
        );
    }
    println!("state db      ok ({})", r.state_db_path.display());
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

fn snapshot(config: &Path, table: Option<&str>) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let r = &settings.replication;
    let mut state = StateDb::open(&r.state_db_path).with_context(|| {
        format!(
            "config key `sqlite-replication.state_db_path`: {}",
            r.state_db_path.display()
        )
    })?;
    if !r.source_db_path.exists() {
        bail!(
            "config key `sqlite-replication.source_db_path`: {} does not exist",
            r.source_db_path.display()
        );
    }
    let (capture, _) = Capture::open(
        &r.source_db_path,
        settings.capture_config(),
        &mut state,
        &mut SystemIds,
    )?;
    let tables: Vec<String> = match table {
        Some(t) => vec![t.to_owned()],
        None => capture.catalog().rows.keys().cloned().collect(),
    };
    for t in &tables {
        capture.request_snapshot(&state, t)?;
        println!("snapshot enqueued for {t}");
    }
    Ok(())
}

fn status(config: &Path, json: bool) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let r = &settings.replication;
    if !r.state_db_path.exists() {
        bail!("config key `sqlite-replication.state_db_path`: {} does not exist (the agent has not run yet)", r.state_db_path.display());
    }
    let state = StateDb::open(&r.state_db_path)?;
    outbox_store::init(&state)?;
    let outbox = outbox_store::list(&state)?;
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000;
    let mut journal: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    if let Ok(source) = open_read_only(&r.source_db_path, "sqlite-replication.source_db_path") {
        let has_journal = source
            .query_row(
                "SELECT 1 FROM sqlite_schema WHERE name = '__omega_journal'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if has_journal {
            let mut stmt = source.prepare(
                "SELECT s.table_name, count(*), sum(coalesce(length(j.row), 0) + coalesce(length(j.pk), 0) + 16) \
                 FROM \"__omega_journal\" j JOIN \"__omega_schemas\" s ON s.schema_id = j.schema_id \
                 GROUP BY s.table_name",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, (row.get(1)?, row.get(2)?)))
            })?;
            for row in rows {
                let (t, v) = row?;
                journal.insert(t, v);
            }
        }
    }
    let last_ack = outbox_store::last_ack_at(&state)?;
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
                .filter(|e| e.table_name == t.table_name && e.kind == edge_agent::spill::OUTBOX_KIND)
                .count(),
            "oldest_unacked_batch_age_secs": oldest,
            "paused": t.paused,
            "pause_watermark": t.pause_watermark,
            "needs_snapshot": t.needs_snapshot,
        }));
    }
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
        "tables": tables,
        "counters": counters,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("device        {}", settings.connection.device_name);
    println!(
        "epoch         {}",
        doc["journal_epoch"].as_str().unwrap_or("-")
    );
    println!("unacked       {} batches", outbox.len());
    println!(
        "last ack      {}",
        doc["last_ack_at"].as_str().unwrap_or("never")
    );
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
    Ok(())
}
