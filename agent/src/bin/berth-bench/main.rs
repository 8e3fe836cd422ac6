//! `berth-bench`: the measuring side of `cargo xtask bench`, kept out of the `berth` binary.
//! Built only with the `bench` feature (`cargo build --release -p berth --features bench --bin
//! berth-bench`, which the xtask runs); it drives berth's own library code (probes, port-mapping
//! backends) so what it measures is exactly what the agent runs.
//!
//! Verbs: `syscalls` (the syscall probe's cost per getppid, JSON on stdout), `netfilter-hold`
//! (the netfilter probe pair attached until stdin closes), `portmap` (berth's port-mapping
//! backend applied in the current network namespace, no agent).

mod netfilter_hold;
mod noop;
mod portmap;
mod syscalls;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "berth-bench",
    about = "berth's bench helpers, run by `cargo xtask bench` (not installed)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the syscall probe's cost per getppid against nothing attached and an empty raw
    /// tracepoint program; prints a JSON report (used by `cargo xtask bench syscalls|probes`).
    ///
    /// Example: `berth-bench syscalls --calls 100000 --rounds 3`
    Syscalls(syscalls::SyscallBenchArgs),
    /// Attach berth's netfilter probe pair in the current network namespace, print `ready`,
    /// and hold it until standard input closes (used by `cargo xtask bench probes`).
    ///
    /// Example: `ip netns exec host berth-bench netfilter-hold`
    NetfilterHold,
    /// Apply berth's port-mapping backend in the current network namespace, without an agent
    /// (used by `cargo xtask bench portmap` inside its own namespaces).
    ///
    /// Example: `berth-bench portmap add --ip 10.231.0.2 -p 20000-20099:20000-20099/udp`
    Portmap(portmap::PortmapArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr: stdout carries the report or `ready`.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("berth=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Syscalls(args) => syscalls::execute_syscalls(&args),
        Command::NetfilterHold => netfilter_hold::execute_netfilter_hold(),
        Command::Portmap(args) => portmap::execute_portmap(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-bench: error: {e:#}");
            ExitCode::from(125)
        }
    }
}
