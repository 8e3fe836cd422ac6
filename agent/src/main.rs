//! `berth`: the agent daemon and its client verbs (see `cli/`).

use std::{io::IsTerminal as _, process::ExitCode};

use berth::cli::{self, args::Cli};
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli::execute(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            ExitCode::from(125)
        }
    }
}

/// Logs to stderr: `BERTH_LOG` (EnvFilter syntax) or `berth=info`; colors only on a terminal,
/// so journald gets plain lines.
fn init_tracing() {
    let filter =
        EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("berth=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
