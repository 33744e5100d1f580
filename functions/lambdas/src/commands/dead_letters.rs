//! `edge-cloud dead-letters`: the ingress messages whose handling failed permanently, parked
//! instead of dropped — listed, or fed through the ingest handler again.

use clap::Subcommand;
use edge_cloud_store::dead_letters::list;
use edge_cloud_store::pool;

use super::CommandError;
use crate::dead_letter::{retry, retry_open, RetryOutcome};
use crate::Deps;

#[derive(Subcommand, Debug)]
pub enum DeadLettersCommand {
    /// List parked messages (open ones unless --all), oldest first.
    List {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Include resolved dead letters.
        #[arg(long)]
        all: bool,
        /// One JSON object per line, bodies included.
        #[arg(long)]
        json: bool,
    },
    /// Feed parked messages through the ingest handler again (after fixing the cause);
    /// duplicates are harmless. Exits non-zero when any retry failed again.
    Retry {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Only this dead letter (default: every open one).
        #[arg(long)]
        id: Option<i64>,
    },
}

/// Runs one `dead-letters` subcommand.
pub async fn execute(command: DeadLettersCommand) -> Result<(), CommandError> {
    match command {
        DeadLettersCommand::List {
            database_url,
            all,
            json,
        } => {
            let p = pool::connect(&database_url, 1)?;
            let c = p.get().await.map_err(CommandError::Connect)?;
            let mut after = 0;
            let mut shown = 0;
            loop {
                let page = list(&**c, all, after, 500).await?;
                let Some(last) = page.last() else { break };
                after = last.id;
                for d in &page {
                    shown += 1;
                    if json {
                        println!("{}", serde_json::to_string(d)?);
                    } else {
                        println!(
                            "{:>6}  {}  {:<4}  {}  attempts={}  {}{}",
                            d.id,
                            d.created_at,
                            d.transport,
                            d.topic.as_deref().unwrap_or("-"),
                            d.attempts,
                            d.error,
                            d.resolution
                                .as_deref()
                                .map(|r| format!("  [resolved: {r}]"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
            if !json {
                eprintln!("{shown} dead letter(s)");
            }
        }
        DeadLettersCommand::Retry { database_url, id } => {
            let deps = Deps::new(pool::connect(&database_url, 2)?);
            let outcomes = match id {
                Some(id) => vec![(id, retry(&deps, id).await?)],
                None => retry_open(&deps).await?,
            };
            let mut failed = 0;
            for (id, outcome) in &outcomes {
                match outcome {
                    RetryOutcome::Resolved(o) => println!("{id}: resolved ({o})"),
                    RetryOutcome::Failed(e) => {
                        failed += 1;
                        println!("{id}: failed again: {e}");
                    }
                    RetryOutcome::AlreadyResolved => println!("{id}: already resolved"),
                    RetryOutcome::NotFound => {
                        failed += 1;
                        println!("{id}: no such dead letter");
                    }
                }
            }
            eprintln!("{} retried, {failed} failed", outcomes.len());
            if failed > 0 {
                return Err(CommandError::Refused(format!(
                    "{failed} dead letter(s) still failing"
                )));
            }
        }
    }
    Ok(())
}
