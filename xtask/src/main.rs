//! `cargo xtask`: set-up, run, test, install and benchmarks for berth, so a fresh machine needs
//! exactly two commands (see README.md): `cargo xtask run` and `cargo xtask test`.
//!
//! One file per command: [`setup`], [`install`], [`bench`] (one file per benchmark); `run` and
//! `test` are a few cargo calls, here. Shared helpers in [`util`]. The xtask never depends on
//! the `berth` crate: it must build before bpf-linker is installed. What the benches need from
//! berth's code runs in `berth-bench` (agent/src/bin/berth-bench), which they build and call.

mod bench;
mod install;
mod portmap_bench;
mod setup;
mod util;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, ensure};
use clap::{Parser, Subcommand};

use crate::{setup::setup, util::cargo};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything builds and tests need (idempotent; seconds when all is present).
    Setup,
    /// Setup, build (release) and run the agent in the foreground; extra args go to
    /// `berth agent`, e.g. `cargo xtask run -- --config deploy/berth.toml`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, lint (fmt + clippy) and the whole test suite, as CI runs it.
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
    },
    /// Release build, then install the binary, the systemd unit, the default config (kept when
    /// present) and the README under `--prefix` (default /).
    Install {
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
    },
    /// Benchmarks; results are appended to docs/benchmarks.md.
    Bench {
        #[command(subcommand)]
        bench: bench::Bench,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = util::workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Setup => setup(),
        Cmd::Run { args } => {
            setup()?;
            cargo(&["build", "--release", "--package", "berth"])?;
            let status = Command::new(root.join("target/release/berth"))
                .arg("agent")
                .args(&args)
                .status()
                .context("starting target/release/berth")?;
            ensure!(status.success(), "berth agent exited with {status}");
            Ok(())
        }
        Cmd::Test { no_lint } => {
            setup()?;
            if !no_lint {
                cargo(&["fmt", "--all", "--check"])?;
                // `berth/bench` so the bench helper binary (`berth-bench`) is linted too.
                cargo(&[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--features",
                    "berth/bench",
                    "--",
                    "-D",
                    "warnings",
                ])?;
            }
            cargo(&["test", "--workspace", "--no-fail-fast"])
        }
        Cmd::Install { prefix } => install::install(&prefix),
        Cmd::Bench { bench } => bench::execute(bench),
    }
}
