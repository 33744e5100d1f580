//! `edge-agent` command line (agent.md §6). Thin: parse, configure logging, call the library.
//! Every failure ends in exactly one `edge-agent: error: …` line on stderr and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use edge_agent::capture::{Capture, SystemIds};
use edge_agent::settings::Settings;
use edge_agent::state::StateDb;
use edge_agent::{mqtt, status};

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
            eprintln!("edge-agent: error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line, each once. Many messages already end with their
/// source's text (`cannot read {path}: {source}`), which `{:#}` would print a second time.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => run(&config),
        Command::Status { config, json } => Ok(status::status(&config, json)?),
        Command::Check { config } => Ok(status::check(&config)?),
        Command::Snapshot { config, table } => snapshot(&config, table.as_deref()),
    }
}

fn run(config: &Path) -> anyhow::Result<()> {
    // Failpoints from `FAILPOINTS` (tests only: without the `failpoints` feature of `fail`,
    // which only the test build turns on, this does nothing).
    let _failpoints = fail::FailScenario::setup();
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
        edge_agent::daemon::run_supervised(settings, shutdown_signal()).await?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn error_line_names_each_cause_once() {
        // SettingsError::File's message ends with its io::Error source.
        let e =
            anyhow::Error::from(Settings::load(Path::new("/nonexistent/agent.toml")).unwrap_err());
        let line = one_line(&e);
        assert_eq!(line.matches("(os error 2)").count(), 1, "{line}");
        assert!(
            line.starts_with("cannot read config file /nonexistent/agent.toml: "),
            "{line}"
        );
        // A context whose cause is not in its message keeps the cause.
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            .context("opening state.db");
        assert_eq!(one_line(&e), "opening state.db: permission denied");
    }
}
