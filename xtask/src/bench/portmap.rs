//! `cargo xtask bench portmap`: CPU per UDP packet through port mappings (host, routed,
//! berth's nft-map and iptables backends) at 100 to 20,000 published ports, three traffic
//! modes, with the topology, sender and sink of [`crate::portmap_bench`]. berth's backends are
//! applied by `berth-bench portmap` ([`BerthMapper`]). Goal: nft-map flat from 100 to 20,000.

use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result};

use super::bench_binary;
use crate::{
    portmap_bench,
    util::{append_benchmark, machine, utc_now},
};

/// berth's own backend, applied in the bench's HOST namespace by `berth-bench portmap
/// add|teardown` (berth's library code), so the rules measured are exactly the ones berth
/// installs.
pub(super) struct BerthMapper {
    pub(super) bench: String,
    pub(super) backend: &'static str,
}

impl BerthMapper {
    fn args<'a>(&'a self, action: &'a str, m: &portmap_bench::Mapping<'_>) -> Vec<String> {
        let (net, len) = m.ctr_subnet;
        let mut a: Vec<String> = [
            "portmap",
            action,
            "--backend",
            self.backend,
            "--table",
            "berthbench",
            "--bridge",
            m.bridge,
            "--owner",
            "bench",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push("--subnet".into());
        a.push(format!("{net}/{len}"));
        if action == "add" {
            let first = m.ports.first().copied().unwrap_or(1);
            let last = m.ports.last().copied().unwrap_or(first);
            a.push("--ip".into());
            a.push(m.ctr_ip.to_string());
            a.push("-p".into());
            a.push(format!("{first}-{last}:{first}-{last}/udp"));
        }
        a
    }
}

impl portmap_bench::PortMapper for BerthMapper {
    fn install(&mut self, m: &portmap_bench::Mapping<'_>) -> Result<()> {
        let args = self.args("add", m);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        m.host.run(&self.bench, &args, None).map(|_| ())
    }

    fn remove(&mut self, m: &portmap_bench::Mapping<'_>) -> Result<()> {
        let args = self.args("teardown", m);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        m.host.run(&self.bench, &args, None).map(|_| ())
    }

    fn rules(&self) -> String {
        if self.backend == "nft-map" {
            "1 + map".into()
        } else {
            "3 per port".into()
        }
    }
}

pub fn bench_portmap(
    mut args: portmap_bench::Args,
    selftest: bool,
    json: Option<PathBuf>,
) -> Result<()> {
    let bench = bench_binary()?;
    if selftest {
        args.mechanisms = portmap_bench::Args::selftest().mechanisms;
    }
    let mut mechanisms = Vec::new();
    for name in args.mechanisms.clone() {
        mechanisms.push(match name.as_str() {
            "nft-map" => portmap_bench::Mechanism::mapped(
                "nft-map",
                "berth nft-map: one `dnat ip to meta l4proto . th dport map` rule",
                Box::new(BerthMapper {
                    bench: bench.clone(),
                    backend: "nft-map",
                }),
            ),
            "iptables" => portmap_bench::Mechanism::mapped(
                "iptables",
                "berth iptables: Docker's rules (iptables-nft)",
                Box::new(BerthMapper {
                    bench: bench.clone(),
                    backend: "iptables",
                }),
            ),
            other => portmap_bench::Mechanism::builtin(other)?,
        });
    }
    args.reference = "nft-map".into();
    if selftest {
        let report = portmap_bench::selftest(mechanisms)?;
        println!("{}", report.to_markdown());
        return Ok(());
    }
    let report = portmap_bench::run_with(&args, mechanisms)?;
    if let Some(path) = &json {
        fs::write(path, serde_json::to_string_pretty(&report.to_json())?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let ports: Vec<String> = args.ports.iter().map(|p| p.to_string()).collect();
    let section = format!(
        "\n## portmap ({date})\n\n\
         Command: `cargo xtask bench portmap --ports {ports}`  \n\
         Machine: {machine}  \n\
         Method: as PLATFORM.md: client netns -> veth -> HOST netns (bridge, rules) -> veth -> \
         container netns; raw-socket UDP sender (160-byte payload, sendmmsg) pinned to CPU 1 in the \
         client, multi-port epoll sink pinned to CPU 0; cost = (sender run time + ksoftirqd run \
         time) / packets; traffic aimed at the last published port; conntrack flushed between \
         cases. nft-map and iptables rows are berth's own backends (`berth-bench portmap add`, the \
         code the agent runs). CPU µs per packet.\n\n{table}\n\
         Goal: nft-map at 20,000 ports within 1.1x of nft-map at 100 ports in every mode: **{goal}**.\n",
        date = utc_now()?,
        machine = machine(),
        ports = ports.join(","),
        table = report.to_markdown(),
        goal = match report.goal_met() {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        },
    );
    append_benchmark(&section)?;
    print!("{section}");
    Ok(())
}
