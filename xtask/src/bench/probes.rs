//! `cargo xtask bench probes`: what berth's probes cost in one run: the syscall probe per
//! getppid (`berth-bench syscalls`, as `bench syscalls`: untracked, tracked below berth's root,
//! and tracked as another engine's container through the `TRACKED` map holding 200 other
//! containers) and the netfilter probe pair per UDP packet on the nft-map path at 100 ports,
//! without and with `berth-bench netfilter-hold` attached in the bench's HOST namespace.
//! Goals: a tracked call (either kind) <= 1.5x a call under a no-op program, an untracked call
//! <= 1.2x; <= 0.3 µs added per packet. A goal not met is written as NOT met.

use anyhow::{Context as _, Result, ensure};

use super::{bench_binary, portmap::BerthMapper, syscalls};
use crate::{
    portmap_bench,
    util::{append_benchmark, machine, utc_now},
};

/// berth's nft-map backend with berth's netfilter probe pair attached in HOST for the whole
/// measurement (`berth-bench netfilter-hold`, stopped by closing its stdin).
struct ProbedMapper {
    inner: BerthMapper,
    hold: Option<std::process::Child>,
}

impl portmap_bench::PortMapper for ProbedMapper {
    fn install(&mut self, m: &portmap_bench::Mapping<'_>) -> Result<()> {
        use std::io::BufRead as _;
        self.inner.install(m)?;
        let mut child = m
            .host
            .exec(&self.inner.bench)
            .arg("netfilter-hold")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting berth-bench netfilter-hold")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        ensure!(
            line.trim() == "ready",
            "berth-bench netfilter-hold did not attach: {line:?}"
        );
        self.hold = Some(child);
        Ok(())
    }

    fn remove(&mut self, m: &portmap_bench::Mapping<'_>) -> Result<()> {
        if let Some(mut c) = self.hold.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
        self.inner.remove(m)
    }

    fn rules(&self) -> String {
        "1 + map, + probe".into()
    }
}

pub fn bench_probes(calls: u64, rounds: u32) -> Result<()> {
    let bench = bench_binary()?;
    // Syscalls: the same measurement as `bench syscalls`.
    let r = syscalls::measure(&bench, calls, rounds)?;
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    // Netfilter: nft-map at 100 ports, with and without the probe pair, three modes.
    let mut args = portmap_bench::Args {
        ports: vec![100],
        reference: "nft-map".into(),
        ..Default::default()
    };
    let mechanisms = vec![
        portmap_bench::Mechanism::mapped(
            "nft-map",
            "berth nft-map",
            Box::new(BerthMapper {
                bench: bench.clone(),
                backend: "nft-map",
            }),
        ),
        portmap_bench::Mechanism::mapped(
            "nft-map+probe",
            "berth nft-map, netfilter probe attached",
            Box::new(ProbedMapper {
                inner: BerthMapper {
                    bench: bench.clone(),
                    backend: "nft-map",
                },
                hold: None,
            }),
        ),
    ];
    args.mechanisms = mechanisms.iter().map(|m| m.name.clone()).collect();
    let report = portmap_bench::run_with(&args, mechanisms)?;
    let mut rows = String::new();
    let mut worst: f64 = 0.0;
    for mode in report.modes.clone() {
        let without = report.us("nft-map", 100, mode).unwrap_or(f64::NAN);
        let with = report.us("nft-map+probe", 100, mode).unwrap_or(f64::NAN);
        worst = worst.max(with - without);
        rows.push_str(&format!(
            "| {} | {without:.2} | {with:.2} | {:+.2} |\n",
            mode.name(),
            with - without
        ));
    }
    let tracked_ratio = f(&r["tracked_call_vs_noop_call"]);
    let foreign_ratio = f(&r["foreign_call_vs_noop_call"]);
    let untracked_ratio = f(&r["untracked_call_vs_noop_call"]);
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let section = format!(
        "\n## probes ({date})\n\n\
         Command: `cargo xtask bench probes --calls {calls} --rounds {rounds}`  \n\
         Machine: {machine}\n\n\
         Syscall probe, ns per getppid (thread CPU time, median of {rounds} interleaved rounds \
         of {calls} calls, pinned; `TRACKED` holds {entries} cgroup ids): nothing {n0:.1}, no-op \
         raw tracepoint {n1:.1}, berth untracked {n2:.1}, berth tracked below its root {n3:.1}, \
         berth tracked as another engine's container {n4:.1}. Ratios to the no-op call \
         (median of the rounds' ratios, one run): tracked **{tracked_ratio:.2}x** and \
         tracked foreign **{foreign_ratio:.2}x** (goal <= 1.5x: {g1}); untracked \
         **{untracked_ratio:.2}x** (goal <= 1.2x: {g3}).\n\n\
         Netfilter probe, CPU µs per UDP packet on the nft-map path (100 published ports, the \
         `bench portmap` method), without and with berth's first/last program pair on every \
         hook:\n\n| mode | without | with | added |\n|---|---|---|---|\n{rows}\n\
         Worst added cost: **{worst:.2} µs per packet** (goal <= 0.3 µs: {g2}).\n",
        date = utc_now()?,
        machine = machine(),
        entries = r["tracked_map_entries"],
        n0 = f(&r["ns_per_call"]["none"]),
        n1 = f(&r["ns_per_call"]["noop"]),
        n2 = f(&r["ns_per_call"]["probe_untracked"]),
        n3 = f(&r["ns_per_call"]["probe_tracked"]),
        n4 = f(&r["ns_per_call"]["probe_tracked_foreign"]),
        g1 = met(tracked_ratio <= 1.5 && foreign_ratio <= 1.5),
        g3 = met(untracked_ratio <= 1.2),
        g2 = met(worst <= 0.3),
    );
    append_benchmark(&section)?;
    print!("{section}");
    Ok(())
}
