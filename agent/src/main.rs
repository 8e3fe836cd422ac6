//! `berth`: the agent daemon and its client verbs.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use berth::config::Config;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Containers, traced with eBPF, with port mapping costs explained."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground: probes, collectors and the HTTP endpoints.
    ///
    /// Example: `berth agent --config /etc/berth/berth.toml`, then
    /// `curl http://127.0.0.1:9847/metrics`.
    Agent {
        /// TOML configuration file; without it the built-in defaults apply.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Print the configuration in force (defaults merged with --config) and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Measure the syscall probe's cost (used by `cargo xtask bench syscalls`).
    #[command(hide = true)]
    BenchSyscalls(berth::bench::SyscallBenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent {
            config,
            print_config,
        } => {
            let config = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            if print_config {
                print!("{}", config.to_toml());
                return Ok(());
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(berth::daemon::run(config))?;
            Ok(())
        }
        Command::BenchSyscalls(args) => {
            let report = berth::bench::syscalls(&args)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
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
