//! `cargo xtask bench portmap`: CPU per UDP packet through port mappings (host networking
//! without and with conntrack, routed, berth's nft-map, iptables and ebpf backends) at 100 to
//! 20,000 published ports, three traffic modes, with the topology, sender and sink of
//! [`crate::portmap_bench`]. berth's backends are applied by `berth-bench portmap`
//! ([`BerthMapper`], [`EbpfMapper`]). Goals: nft-map flat from 100 to 20,000; ebpf's new-flow
//! packet at the most ports within 1.1x of host networking with conntrack active.

use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result, ensure};

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

/// berth's `ebpf` backend, applied in HOST by `berth-bench portmap add --backend ebpf` with the
/// bench's client-facing veth as its uplink, pinned under a bpffs directory of this run
/// (removed by [`PortMapper::remove`] and on drop). HOST's veth to CTR is named as berth names
/// the owner's veth, so the backend finds it. After each case its forward-hit counter must
/// have risen by about the packets sent: the row cannot measure the slow path unnoticed.
pub(super) struct EbpfMapper {
    bench: String,
    owner: String,
    veth: String,
    pin_root: PathBuf,
    /// The forward-hit counter after the last install or check.
    hits: u64,
}

/// Share of a case's packets the ebpf forward program must have counted (the rest may be
/// dropped before it, e.g. by a full veth queue) and the extra it may count (the established
/// mode's priming packet).
const MIN_HIT_SHARE: f64 = 0.95;
const EXTRA_HITS: u64 = 16;

impl EbpfMapper {
    pub(super) fn new(bench: &str) -> Result<Self> {
        let owner = format!("bench{}", std::process::id());
        let out = std::process::Command::new(bench)
            .args(["portmap", "veth-name", "--owner", &owner])
            .output()
            .with_context(|| format!("running {bench} portmap veth-name"))?;
        ensure!(
            out.status.success(),
            "{bench} portmap veth-name failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let veth = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(!veth.is_empty(), "berth-bench printed no veth name");
        Ok(EbpfMapper {
            bench: bench.to_owned(),
            owner,
            veth,
            pin_root: PathBuf::from(format!("/sys/fs/bpf/berth-bench-{}", std::process::id())),
            hits: 0,
        })
    }

    fn run(&self, m: &portmap_bench::Mapping<'_>, action: &str) -> Result<String> {
        let (net, len) = m.ctr_subnet;
        let first = m.ports.first().copied().unwrap_or(1);
        let last = m.ports.last().copied().unwrap_or(first);
        let mut args: Vec<String> = [
            "portmap",
            action,
            "--backend",
            "ebpf",
            // Short: the slow-path table is "<table>-bpf", at most 12 characters.
            "--table",
            "bbench",
            "--bridge",
            m.bridge,
            "--owner",
            &self.owner,
            "--uplink",
            m.uplink,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--subnet".into(),
            format!("{net}/{len}"),
            "--pin-root".into(),
            self.pin_root.to_string_lossy().into_owned(),
        ]);
        if action == "add" {
            args.extend([
                "--ip".into(),
                m.ctr_ip.to_string(),
                "-p".into(),
                format!("{first}-{last}:{first}-{last}/udp"),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Network namespace only: `ip netns exec` would hide /sys/fs/bpf.
        m.host.run_net_only(&self.bench, &args)
    }

    fn forward_hits(&self, m: &portmap_bench::Mapping<'_>) -> Result<u64> {
        let json = self.run(m, "stats")?;
        let v: serde_json::Value = serde_json::from_str(&json)
            .with_context(|| format!("parsing berth-bench portmap stats: {json:?}"))?;
        v["fast_forward"]
            .as_u64()
            .with_context(|| format!("no fast_forward counter in {json}"))
    }
}

impl portmap_bench::PortMapper for EbpfMapper {
    fn install(&mut self, m: &portmap_bench::Mapping<'_>) -> Result<()> {
        self.run(m, "add")?;
        self.hits = self.forward_hits(m)?;
        Ok(())
    }

    fn remove(&mut self, m: &portmap_bench::Mapping<'_>) -> Result<()> {
        self.run(m, "teardown")?;
        fs::remove_dir(&self.pin_root)
            .with_context(|| format!("removing {}", self.pin_root.display()))
    }

    fn rules(&self) -> String {
        "2 TCX programs + map".into()
    }

    fn ctr_veth(&self) -> Option<String> {
        Some(self.veth.clone())
    }

    fn check_case(&mut self, m: &portmap_bench::Mapping<'_>, sent: u64) -> Result<()> {
        let now = self.forward_hits(m)?;
        let hits = now.saturating_sub(self.hits);
        self.hits = now;
        ensure!(
            hits as f64 >= MIN_HIT_SHARE * sent as f64 && hits <= sent + EXTRA_HITS,
            "the ebpf forward program counted {hits} hits for {sent} packets sent: the row \
             would not measure the fast path"
        );
        Ok(())
    }
}

impl Drop for EbpfMapper {
    /// After a failed run: unpins whatever is left (links first, which detaches the programs).
    fn drop(&mut self) {
        if self.pin_root.exists() {
            let _ = fs::remove_dir_all(&self.pin_root);
        }
    }
}

/// The ratios the ebpf goal is judged by, at the most published ports in new-flow mode: ebpf /
/// host with conntrack and ebpf / host without it.
pub(super) fn ebpf_ratios(report: &portmap_bench::Report) -> (Option<f64>, Option<f64>) {
    let most = report.port_counts.last().copied().unwrap_or(0);
    let new_flow = portmap_bench::Mode::NewFlow;
    (
        report.versus("ebpf", "host-ct", most, new_flow),
        report.versus("ebpf", "host", most, new_flow),
    )
}

/// Goal for ebpf's new-flow packet against host networking with conntrack active.
pub(super) const EBPF_GOAL: f64 = 1.1;

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
            "host-ct" => portmap_bench::Mechanism {
                name: "host-ct".into(),
                label: "host netns, conntrack active (berth's nft-map table, another port)".into(),
                kind: portmap_bench::Kind::HostConntrack(Box::new(BerthMapper {
                    bench: bench.clone(),
                    backend: "nft-map",
                })),
            },
            "ebpf" => portmap_bench::Mechanism::mapped(
                "ebpf",
                "berth ebpf: TCX forward and reply programs, one map",
                Box::new(EbpfMapper::new(&bench)?),
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
    let section = section(&args, &report)?;
    append_benchmark(&section)?;
    print!("{section}");
    Ok(())
}

/// The docs/benchmarks.md section of a full run: command, machine, method, table, goals.
fn section(args: &portmap_bench::Args, report: &portmap_bench::Report) -> Result<String> {
    let list = |v: Vec<String>| v.join(",");
    let command = format!(
        "cargo xtask bench portmap --ports {} --mechanisms {} --max-packets {} --max-secs {} \
         --rounds {}",
        list(args.ports.iter().map(|p| p.to_string()).collect()),
        list(args.mechanisms.clone()),
        args.max_packets,
        args.max_secs,
        args.rounds,
    );
    let most = report
        .port_counts
        .last()
        .map_or("-".into(), |&p| portmap_bench::fmt_count(p as u64));
    let (vs_ct, vs_host) = ebpf_ratios(report);
    let ratio = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}x"));
    let ebpf_goal = match vs_ct {
        Some(r) if r <= EBPF_GOAL => "met",
        Some(_) => "NOT met",
        None => "not measured",
    };
    Ok(format!(
        "\n## portmap ({date})\n\n\
         Command: `{command}`  \n\
         Machine: {machine}  \n\
         Method: as PLATFORM.md: client netns -> veth -> HOST netns (bridge, rules) -> veth -> \
         container netns; raw-socket UDP sender (160-byte payload, sendmmsg) pinned to CPU 1 in the \
         client, multi-port epoll sink pinned to CPU 0; cost = (sender run time + ksoftirqd run \
         time) / packets; traffic aimed at the last published port; conntrack flushed between \
         cases; all rows from this one run. nft-map, iptables and ebpf rows are berth's own \
         backends (`berth-bench portmap add`, the code the agent runs); ebpf's forward program \
         sits on HOST's client-facing veth (its uplink), HOST's veth to the container is named \
         as berth names a container's veth, and after every ebpf case its forward-hit counter \
         had risen by the packets sent (95% at least), so no ebpf row measured the slow path. \
         With --rounds N each cell is the median of N repetitions. \
         `host`: the sink in HOST, nothing in HOST uses conntrack (no rules at all; checked \
         after every case: HOST's conntrack table empty). `host-ct`: the same with berth's \
         nft-map table present in HOST for another port, as on a real host with NAT rules, so \
         conntrack tracks the measured flows (checked after every case: the table not empty). \
         CPU µs per packet.\n\n{table}\n\
         Goal: nft-map at {most} ports within 1.1x of nft-map at the fewest in every mode: \
         **{flat}**.  \n\
         Goal: ebpf new flow per packet at {most} ports within {EBPF_GOAL}x of host networking \
         with conntrack active: ebpf / host-ct = **{vs_ct}**, **{ebpf_goal}**; ebpf / host \
         without conntrack = {vs_host}.\n",
        date = utc_now()?,
        machine = machine(),
        table = report.to_markdown(),
        flat = match report.goal_met() {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        },
        vs_ct = ratio(vs_ct),
        vs_host = ratio(vs_host),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portmap_bench::{Cell, Mode, Report};

    fn report(ebpf_new_flow: f64) -> Report {
        let cell = |mechanism: &str, ports, mode, us| Cell {
            mechanism: String::from(mechanism),
            ports,
            mode,
            us_per_packet: us,
            sender_us_per_packet: us,
            softirq_us_per_packet: 0.0,
            packets: 1000,
            received: 1000,
            secs: 0.1,
            sender_waited_secs: 0.0,
            send_retries: 0,
        };
        let mut cells = Vec::new();
        for ports in [100, 20000] {
            cells.push(cell("host", ports, Mode::NewFlow, 4.0));
            cells.push(cell("host-ct", ports, Mode::NewFlow, 5.0));
            // The ratio is taken at the most ports only.
            let e = if ports == 20000 { ebpf_new_flow } else { 50.0 };
            cells.push(cell("ebpf", ports, Mode::NewFlow, e));
        }
        Report {
            machine: "test".into(),
            settings: serde_json::json!({}),
            mechanisms: Vec::new(),
            port_counts: vec![100, 20000],
            modes: vec![Mode::NewFlow],
            cells,
            setups: Vec::new(),
            reference: "nft-map".into(),
            total_secs: 1.0,
        }
    }

    #[test]
    fn the_ebpf_goal_compares_new_flows_at_the_most_ports_with_both_host_rows() {
        let (ct, host) = ebpf_ratios(&report(5.25));
        assert!((ct.unwrap() - 1.05).abs() < 1e-9);
        assert!((host.unwrap() - 1.3125).abs() < 1e-9);
        let args = portmap_bench::Args {
            ports: vec![100, 20000],
            ..portmap_bench::Args::default()
        };
        let met = section(&args, &report(5.25)).unwrap();
        assert!(met.contains("ebpf / host-ct = **1.05x**, **met**"), "{met}");
        assert!(met.contains("without conntrack = 1.31x"), "{met}");
        assert!(
            met.contains("`cargo xtask bench portmap --ports 100,20000 --mechanisms host,host-ct,")
        );
        let missed = section(&args, &report(6.0)).unwrap();
        assert!(missed.contains("= **1.20x**, **NOT met**"), "{missed}");
    }
}
