//! `cargo xtask bench syscalls`: ns per getppid(2) with nothing attached, an empty raw
//! tracepoint program, and berth's syscall probe (caller untracked and tracked), measured by
//! `berth-bench syscalls` in one process; goal: a tracked call within 1.5x of a no-op call.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::bench_binary;
use crate::util::{append_benchmark, machine, output, utc_now};

/// Runs `berth-bench syscalls` (it holds berth's eBPF object) and returns its JSON report
/// (`ns_per_call`, `overhead_ns` by mode, the ratios, `counted_getppid`).
pub(super) fn measure(bench: &str, calls: u64, rounds: u32) -> Result<serde_json::Value> {
    let json = output(Command::new(bench).args([
        "syscalls",
        "--calls",
        &calls.to_string(),
        "--rounds",
        &rounds.to_string(),
    ]))?;
    serde_json::from_str(&json).context("parsing the berth-bench syscalls report")
}

/// Measures and appends a section to docs/benchmarks.md with the command, the machine and the
/// ratios.
pub fn bench_syscalls(calls: u64, rounds: u32) -> Result<()> {
    let r = measure(&bench_binary()?, calls, rounds)?;
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let ns = &r["ns_per_call"];
    let over = &r["overhead_ns"];
    let tracked_call_ratio = f(&r["tracked_call_vs_noop_call"]);
    let goal = if tracked_call_ratio <= 1.5 {
        "met"
    } else {
        "NOT met"
    };
    let section = format!(
        "\n## syscalls ({date})\n\n\
         Command: `cargo xtask bench syscalls --calls {calls} --rounds {rounds}`  \n\
         Machine: {machine}  \n\
         Method: getppid(2) in a loop pinned to one CPU, {calls} calls per mode per round, modes \
         interleaved, {rounds} rounds, median per mode. The probe counted {counted} getppid \
         calls for the bench cgroup (proof it was attached where the bench ran).\n\n\
         | mode | ns per getppid | added by the program |\n|---|---|---|\n\
         | nothing attached | {n0:.1} | - |\n\
         | no-op raw tracepoint | {n1:.1} | {o1:.1} |\n\
         | berth probe, caller untracked (early exit) | {n2:.1} | {o2:.1} |\n\
         | berth probe, caller tracked (counting) | {n3:.1} | {o3:.1} |\n\n\
         Ratios (one run): tracked call / no-op call = **{tracked_call_ratio:.2}x** \
         (goal <= 1.5x: {goal}); added cost tracked / no-op = {ot:.2}x; added cost \
         untracked / no-op = {ou:.2}x.\n",
        date = utc_now()?,
        machine = machine(),
        counted = r["counted_getppid"],
        n0 = f(&ns["none"]),
        n1 = f(&ns["noop"]),
        n2 = f(&ns["probe_untracked"]),
        n3 = f(&ns["probe_tracked"]),
        o1 = f(&over["noop"]),
        o2 = f(&over["probe_untracked"]),
        o3 = f(&over["probe_tracked"]),
        ot = f(&r["tracked_overhead_vs_noop"]),
        ou = f(&r["untracked_overhead_vs_noop"]),
    );
    append_benchmark(&section)?;
    print!("{section}");
    if tracked_call_ratio > 1.5 {
        bail!("goal not met: tracked call / no-op call = {tracked_call_ratio:.2}x > 1.5x");
    }
    Ok(())
}
