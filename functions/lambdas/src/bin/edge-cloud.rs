//! `edge-cloud` — the local runner (cloud.md §12): `migrate`, `devices`, `pki`, `run`,
//! `dead-letters`, `token`.
//!
//! Glue: parses the flags (each also read from the environment) and hands them to
//! [`edge_functions::commands`].

use clap::Parser as _;
use edge_functions::commands::{execute, Cli};
use edge_functions::env::{init_tracing, LogOutput};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing(LogOutput::Terminal);
    // Failpoints from `FAILPOINTS` (compiled in only for the tests' builds).
    let _failpoints = fail::FailScenario::setup();
    execute(Cli::parse()).await?;
    Ok(())
}
