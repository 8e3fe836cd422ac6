//! `cargo xtask bench NAME`: whole-system benchmarks, one file each; every run appends a
//! section to docs/benchmarks.md with the exact command, the machine and the ratios.
//!
//! - [`syscalls`]: ns per getppid with nothing, an empty program and berth's syscall probe;
//! - [`launch`]: create-to-running latency of `berth run -d` against the bare OCI runtime;
//! - [`portmap`]: CPU per UDP packet through port mappings at 100 to 20,000 published ports;
//! - [`probes`]: what the syscall and netfilter probes cost, in one run;
//! - [`agent`]: the collection tick's cost with many containers berth did not launch;
//! - [`idle`]: the agent at rest with berth and foreign containers and Prometheus scraping it.
//!
//! The measurements that need berth's own code (its eBPF object, its port-mapping backends)
//! run in `berth-bench`, a bin of the agent package behind the `bench` feature, built here by
//! [`bench_binary`]: the release `berth` binary carries none of it.

mod agent;
mod idle;
mod launch;
mod portmap;
mod probes;
mod syscalls;

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::{
    portmap_bench,
    setup::setup,
    util::{cargo, workspace_root},
};

#[derive(Subcommand)]
pub enum Bench {
    /// ns per getppid: nothing attached, a no-op raw tracepoint, berth's syscall probe.
    Syscalls {
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
        #[arg(long, default_value_t = 9)]
        rounds: u32,
    },
    /// CPU per UDP packet through port mappings (host, routed, berth's nft-map and iptables
    /// backends) at 100 to 20,000 published ports, three traffic modes, in namespaces of its
    /// own; the table and ratios go to docs/benchmarks.md.
    Portmap {
        #[command(flatten)]
        args: portmap_bench::Args,
        /// Quick functional run (every mechanism and mode at 10 and 300 ports); prints the
        /// table, appends nothing.
        #[arg(long)]
        selftest: bool,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// What the probes cost: the syscall probe per getppid (against nothing and a no-op
    /// program, counting and with latency), and the netfilter probe per packet (nft-map path
    /// with and without the probe pair), in one run.
    Probes {
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
        #[arg(long, default_value_t = 9)]
        rounds: u32,
    },
    /// The collection tick's cost with many foreign (Docker) containers: discovery and
    /// metadata (the `foreign` collector) and all collectors, from the agent's own timings.
    /// With `--berth 50,100`: the agent at rest instead (CPU, RSS, `/metrics` latency and
    /// size, tick cost by collector) with that many berth containers it launched, the foreign
    /// ones, and a real Prometheus scraping every 5 s.
    Agent {
        /// Foreign (Docker) containers.
        #[arg(long, default_value_t = 200)]
        containers: usize,
        #[arg(long, default_value_t = 40)]
        ticks: usize,
        /// Berth containers per run, comma-separated: the at-rest bench.
        #[arg(long, value_delimiter = ',')]
        berth: Vec<usize>,
        /// UDP ports published by the first berth container (at-rest bench).
        #[arg(long, default_value_t = 20_000)]
        ports: u32,
        /// Idle window in seconds (at-rest bench).
        #[arg(long, default_value_t = 60)]
        idle: u64,
        /// The bench's own `/metrics` requests after the window (at-rest bench).
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// The agent binary to measure (at-rest bench); default: this tree's release build.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Another agent binary measured in the same run, row by row before the measured one
        /// (at-rest bench): the before/after table.
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
    /// Create-to-running latency: `berth run -d` against the bare runtime (create + start)
    /// on the same bundle, interleaved, median of each.
    Launch {
        #[arg(long, default_value_t = 25)]
        runs: u32,
    },
}

/// Sets the machine up, then runs the benchmark.
pub fn execute(bench: Bench) -> Result<()> {
    setup()?;
    match bench {
        Bench::Syscalls { calls, rounds } => syscalls::bench_syscalls(calls, rounds),
        Bench::Launch { runs } => launch::bench_launch(runs),
        Bench::Agent {
            containers,
            ticks,
            berth,
            ports,
            idle,
            requests,
            binary,
            baseline,
        } => {
            if berth.is_empty() {
                agent::bench_agent(containers, ticks)
            } else {
                let window = idle::Window {
                    foreign: containers,
                    ports,
                    idle,
                    requests,
                };
                idle::bench_idle(&berth, window, binary, baseline)
            }
        }
        Bench::Probes { calls, rounds } => probes::bench_probes(calls, rounds),
        Bench::Portmap {
            args,
            selftest,
            json,
        } => portmap::bench_portmap(args, selftest, json),
    }
}

/// Builds `berth-bench` (release, `bench` feature: the bench helpers the `berth` binary does
/// not carry) and returns its path.
pub fn bench_binary() -> Result<String> {
    cargo(&[
        "build",
        "--release",
        "--package",
        "berth",
        "--features",
        "bench",
        "--bin",
        "berth-bench",
    ])?;
    Ok(workspace_root()
        .join("target/release/berth-bench")
        .to_string_lossy()
        .into_owned())
}
