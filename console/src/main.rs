//! `edgectl`: parses the command line and runs the verb (the console crate's library); prints
//! errors as console.md §3 says and exits with its codes.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use edge_console::client::{ClientError, Connection};
use edge_console::unblock::{self, Decision};

#[derive(Parser)]
#[command(
    name = "edgectl",
    about = "Operator console over the edge-sync HTTP API"
)]
struct Cli {
    #[arg(long, global = true)]
    url: Option<String>,
    #[arg(long, global = true)]
    token: Option<String>,
    #[arg(long, global = true)]
    org: Option<String>,
    #[arg(long, global = true)]
    project: Option<String>,
    /// Print exactly the answer's `data` (errors as JSON on stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Seconds before a request gives up.
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
    /// Idempotency-Key of a mutation (default: a new UUIDv7).
    #[arg(long, global = true)]
    idempotency_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lineages.
    Lineages {
        #[command(subcommand)]
        verb: LineageVerb,
    },
}

#[derive(Subcommand)]
enum LineageVerb {
    /// Decide about a table the device blocked: retry the entry, or skip exactly it.
    Unblock(UnblockArgs),
}

#[derive(Args)]
struct UnblockArgs {
    /// The lineage id.
    id: String,
    /// Clear the block; the device tries the entry again.
    #[arg(long, conflicts_with = "skip", required_unless_present = "skip")]
    retry: bool,
    /// Drop exactly the entry SEQ (its `device_block.commit_seq`); the cloud keeps it as a
    /// dead letter `skipped_by_operator`.
    #[arg(long, value_name = "SEQ")]
    skip: Option<i64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let conn = Connection::resolve(
        cli.url,
        cli.token,
        cli.org,
        cli.project,
        Duration::from_secs(cli.timeout.max(1)),
    );
    let key = cli
        .idempotency_key
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let conn = match conn {
        Ok(c) => c,
        Err(e) => return report(&e, None, json),
    };
    let result = match &cli.command {
        Command::Lineages {
            verb: LineageVerb::Unblock(a),
        } => {
            let decision = match a.skip {
                Some(commit_seq) => Decision::Skip { commit_seq },
                None => Decision::Retry,
            };
            unblock::run(&conn, &a.id, decision, &key)
        }
    };
    match result {
        Ok(data) => {
            if json {
                println!("{data}");
            } else {
                println!(
                    "unblock_table sent: {} commit_seq {} (control {})",
                    data["action"].as_str().unwrap_or("?"),
                    data["commit_seq"],
                    data["control_id"].as_str().unwrap_or("?")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => report(&e, Some(&conn.url), json),
    }
}

fn report(e: &ClientError, url: Option<&str>, json: bool) -> ExitCode {
    if json {
        eprintln!("{}", e.to_json());
    } else {
        eprintln!("edgectl: {e}");
        if let Some(hint) = url.and_then(|u| e.hint(u)) {
            eprintln!("hint: {hint}");
        }
    }
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
}
