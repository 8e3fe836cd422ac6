//! Helpers every xtask command shares: running commands and cargo, the workspace root, and
//! what the benches need to report (machine description, date, median, docs/benchmarks.md).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

/// The workspace directory (xtask's parent); `main` makes it the working directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs `cmd` with inherited stdio; an error unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

/// Runs `cmd` and returns its stdout; an error (with its stderr) unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the cargo that runs this xtask with `args`.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(env!("CARGO")).args(args))
}

/// `2 vCPU <model>, kernel <release>`, for bench sections and reports.
pub fn machine() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} vCPU {model}, kernel {}", kernel.trim())
}

/// Appends a section to docs/benchmarks.md (created with its preamble when absent).
pub fn append_benchmark(section: &str) -> Result<()> {
    let path = Path::new("docs/benchmarks.md");
    let mut text = fs::read_to_string(path).unwrap_or_else(|_| {
        "# berth benchmarks\n\nEvery number here was produced by the command written above it, \
         as ratios measured within one run (these machines are noisy). Newest last.\n"
            .to_owned()
    });
    text.push_str(section);
    fs::write(path, text).context("writing docs/benchmarks.md")
}

/// The median (upper median for an even count); sorts `v`.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `2026-12-01 21:37 UTC`: when a bench section was written.
pub fn utc_now() -> Result<String> {
    Ok(
        output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?
            .trim()
            .to_owned(),
    )
}
