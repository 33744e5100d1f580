//! `edge-agent` command line. Thin: parse, configure logging, call the library.

use clap::Parser;

/// Edge SQLite sync agent for IoT gateways.
#[derive(Debug, Parser)]
#[command(name = "edge-agent", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
