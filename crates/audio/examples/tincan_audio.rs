//! `tincan audio ...` without the node: the same subcommands, for trying the
//! engine alone and for the PESQ script.
//!
//! cargo run --release -p tincan-audio --features cli --example tincan_audio -- test --in a.wav --out b.wav

use clap::Parser;
use tincan_audio::cli::{AudioCommand, run};

/// tincan's audio engine on its own.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: AudioCommand,
}

fn main() -> anyhow::Result<()> {
    run(Cli::parse().command)
}
