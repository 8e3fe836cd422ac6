//! The port-mapping finding for other engines' containers (Docker's way of publishing ports):
//! per container, what its published ports cost the host (per-port iptables rules, userland
//! proxies, netfilter time per new flow against the host's own baseline, the flows per second
//! and the CPU that follows) and the concrete ways out.
//!
//! Only bridge containers with published ports or proxies are looked at: a host-networking
//! container pays no NAT, and a bridge container without published ports has no per-port rule.

use std::fmt::Write as _;

use super::{Finding, Severity};
use crate::model::{
    Container, Engine, FlowPath, Hook, NetworkMode, Proto, ProxyStats, Snapshot, ports::Base,
};

/// A container is critical from this many published ports...
const CRITICAL_PORTS: u64 = 1000;
/// ...or this many µs of netfilter per new-flow packet...
const CRITICAL_US: f64 = 20.0;
/// ...or this many proxy processes.
const CRITICAL_PROXIES: u64 = 100;
/// How many published ranges the evidence spells out.
const RANGES_SHOWN: usize = 4;

/// The window `base` spans before `snap`, in seconds.
fn window(snap: &Snapshot, base: Option<&Base>) -> Option<f64> {
    let secs = snap
        .taken_at
        .duration_since(base?.taken_at)
        .ok()?
        .as_secs_f64();
    (secs > 0.0).then_some(secs)
}

/// Distinct (protocol, host port) pairs the container publishes (Docker lists a mapping once
/// per address family).
fn published_ports(c: &Container) -> u64 {
    let mut n = 0;
    for proto in [Proto::Tcp, Proto::Udp] {
        let mut ranges: Vec<(u32, u32)> = c
            .network
            .publish
            .iter()
            .filter(|p| p.proto == proto)
            .map(|p| (u32::from(p.host.start), u32::from(p.host.end)))
            .collect();
        ranges.sort_unstable();
        let mut covered_to = 0u32;
        for (start, end) in ranges {
            let from = start.max(covered_to + 1);
            if end >= from {
                n += u64::from(end - from + 1);
                covered_to = end;
            }
        }
    }
    n
}

fn ranges(c: &Container) -> String {
    let mut shown: Vec<String> = Vec::new();
    for p in &c.network.publish {
        let r = match p.host_ip {
            Some(ip) => format!("{ip}:{}/{}", p.host, p.proto),
            None => format!("{}/{}", p.host, p.proto),
        };
        if !shown.contains(&r) {
            shown.push(r);
        }
    }
    let more = shown.len().saturating_sub(RANGES_SHOWN);
    shown.truncate(RANGES_SHOWN);
    let mut s = shown.join(", ");
    if more > 0 {
        let _ = write!(s, " and {more} more");
    }
    s
}

/// `prerouting 1.4, forward 0.6, postrouting 18.6` (µs per packet).
fn by_hook(path: &FlowPath) -> String {
    Hook::ALL
        .iter()
        .filter_map(|h| {
            let ns = path.hooks.get(h)?.ns_per_packet()?;
            Some(format!("{} {:.1}", h.name(), ns / 1e3))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Whether `c`'s published ports cost the host: another engine's bridge container with
/// published ports or proxies, and rules or proxies to show for them.
fn costs_the_host(c: &Container, ports: u64) -> bool {
    let p = &c.port_mapping;
    !c.engine.is_berth()
        && c.network.mode == NetworkMode::Bridge
        && (ports > 0 || p.proxies.processes > 0)
        && (p.rules.is_none_or(|r| r > 0) || p.proxies.processes > 0)
}

/// Proxies attributed to no container in the snapshot (host-wide total minus the containers').
pub(super) fn unattributed_proxies(snap: &Snapshot) -> ProxyStats {
    let mut left = snap.proxies.clone();
    for c in &snap.containers {
        let p = &c.port_mapping.proxies;
        left.processes = left.processes.saturating_sub(p.processes);
        left.rss_bytes = left.rss_bytes.saturating_sub(p.rss_bytes);
        left.cpu_seconds = (left.cpu_seconds - p.cpu_seconds).max(0.0);
    }
    left
}

/// One finding per other engine's container whose port mapping costs the host, the costliest
/// first.
pub(super) fn findings(snap: &Snapshot, base: Option<&Base>) -> Vec<Finding> {
    let baseline = snap.baseline_path();
    let mut out: Vec<(f64, Finding)> = Vec::new();
    for c in &snap.containers {
        let ports = published_ports(c);
        if !costs_the_host(c, ports) {
            continue;
        }
        let (finding, weight) = finding(snap, base, c, ports, &baseline);
        out.push((weight, finding));
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0));
    out.into_iter().map(|(_, f)| f).collect()
}

fn finding(
    snap: &Snapshot,
    base: Option<&Base>,
    c: &Container,
    ports: u64,
    baseline: &FlowPath,
) -> (Finding, f64) {
    let short: String = c.id.chars().take(12).collect();
    let image = if c.image.is_empty() {
        "unknown"
    } else {
        &c.image
    };
    let window = window(snap, base);
    let mut evidence = vec![format!(
        "{} container {}, image {image}, id {short}: {ports} published ports ({})",
        c.engine,
        c.name,
        ranges(c)
    )];

    let pm = &c.port_mapping;
    let at = c
        .network
        .ip
        .map_or_else(|| "its address".to_owned(), |ip| ip.to_string());
    evidence.push(match pm.rules {
        Some(n) => format!(
            "{n} iptables rules point at {at} (per published port a nat DNAT, a hairpin \
             MASQUERADE in POSTROUTING and a filter ACCEPT; iptables-nft and iptables-legacy, \
             every table)"
        ),
        None => format!("iptables rules pointing at {at}: not counted yet"),
    });

    let p = &pm.proxies;
    if p.processes > 0 {
        let mut line = format!(
            "{} userland proxy processes (docker-proxy) forward to it: {:.1} MB resident, \
             {:.1} CPU-seconds used",
            p.processes,
            mb(p.rss_bytes),
            p.cpu_seconds
        );
        if let (Some(secs), Some(before)) = (window, base.and_then(|b| b.proxy_cpu_seconds(c))) {
            let rate = (p.cpu_seconds - before).max(0.0) / secs;
            let _ = write!(
                line,
                " ({:.2}% of one core over the last {secs:.0} s)",
                rate * 100.0
            );
        }
        evidence.push(line);
    } else {
        evidence.push("no userland proxy forwards to it".into());
    }

    let path = snap.new_flow_path(c);
    let path_ns = path.ns_per_packet();
    evidence.push(match (snap.netfilter.is_some(), path_ns) {
        (false, _) => "netfilter cost per new-flow packet: not measured (the netfilter probe \
                       is down)"
            .into(),
        (true, None) => "netfilter cost per new-flow packet to its ports: not measured yet (no \
                         new flow since the probe started)"
            .into(),
        (true, Some(ns)) => format!(
            "netfilter costs {:.1} µs per new-flow packet to its ports ({}; {} new flows \
             measured)",
            ns / 1e3,
            by_hook(&path),
            path.flows()
        ),
    });
    let base_ns = baseline.ns_per_packet();
    evidence.push(match base_ns {
        Some(ns) => format!(
            "host baseline: {:.1} µs per new-flow packet to local ports no container publishes \
             ({}; {} flows), what a host-networking container pays here",
            ns / 1e3,
            by_hook(baseline),
            baseline.flows()
        ),
        None => "host baseline (new flows to local ports no container publishes, what a \
                 host-networking container pays here): not measured yet"
            .into(),
    });
    if let (Some(b), Some(ns), Some(rules)) = (base_ns, path_ns, c.port_mapping.rules)
        && rules > 0
        && b >= ns
    {
        // Docker jumps to its nat DOCKER chain for every local destination: flows to ports
        // nobody publishes walk every per-port DNAT rule too, so the baseline is inflated by
        // the very rules this finding is about.
        evidence.push(format!(
            "the baseline is not lower: new flows to any local port walk the per-port DNAT \
             rules too (Docker's nat chain is entered for every local destination), so the \
             {rules} rules raise what every service on this host pays, not only this container"
        ));
    }

    // New flows per second over the window, and the CPU they cost.
    let mut cpu_share = 0.0;
    match (window, base) {
        (Some(secs), Some(b)) => {
            let flows = path.flows().saturating_sub(b.new_flows(c)) as f64 / secs;
            let mut line = format!("{flows:.1} new flows per second over the last {secs:.0} s");
            if let Some(ns) = path_ns {
                cpu_share = flows * ns / 1e9;
                let _ = write!(
                    line,
                    ": {:.2} ms of CPU per second in netfilter ({:.2}% of one core)",
                    cpu_share * 1e3,
                    cpu_share * 100.0
                );
                if let Some(b) = base_ns {
                    let extra = flows * (ns - b).max(0.0) / 1e9;
                    let _ = write!(
                        line,
                        ", {:.2} ms per second more than at the host's baseline",
                        extra * 1e3
                    );
                }
            }
            evidence.push(line);
        }
        _ => evidence.push(
            "new flows per second: not measured yet (needs two snapshots of the history)".into(),
        ),
    }

    let us = path_ns.map_or(0.0, |ns| ns / 1e3);
    let severity =
        if ports >= CRITICAL_PORTS || us >= CRITICAL_US || p.processes >= CRITICAL_PROXIES {
            Severity::Critical
        } else {
            Severity::Warning
        };
    let finding = Finding {
        severity,
        subject: format!("container {}", c.name),
        cause: cause(c, &path),
        evidence,
        fix: fix(c),
    };
    // Costliest first: CPU share, then ports and proxies as tie-breaks.
    let weight = cpu_share * 1e6 + (ports + p.processes) as f64;
    (finding, weight)
}

/// What makes the cost, with the costliest hook when measured.
fn cause(c: &Container, path: &FlowPath) -> String {
    let mut s = format!(
        "{} publishes its ports with per-port iptables rules: netfilter walks them in order for \
         every new flow, so each new flow costs more the more ports are published",
        c.engine
    );
    let costliest = path
        .hooks
        .iter()
        .filter_map(|(h, cost)| Some((h, cost.ns_per_packet()?)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((hook, ns)) = costliest {
        let _ = write!(
            s,
            " (here {} is the largest part, {:.1} µs)",
            hook.name(),
            ns / 1e3
        );
    }
    if c.port_mapping.proxies.processes > 0 {
        s.push_str(
            "; and a userland proxy process per port and address family holds memory and copies \
             every packet it forwards through user space",
        );
    }
    s
}

/// Human sizes for `--memory`, as berth parses them.
fn size(bytes: u64) -> String {
    for (unit, shift) in [("g", 30), ("m", 20), ("k", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// How the container's engine runs a container with host networking, saves its image and
/// removes it.
fn commands(c: &Container, image: &str) -> (String, String, String) {
    let ns = c
        .labels
        .get("containerd.namespace")
        .map_or("default", String::as_str);
    match c.engine {
        Engine::Podman => (
            "`podman run --network host ...`".into(),
            format!("podman save {image} -o image.tar"),
            format!("podman rm -f {}", c.name),
        ),
        Engine::Kubernetes => (
            "`hostNetwork: true` in the pod spec".into(),
            format!("ctr -n k8s.io images export image.tar {image}"),
            "kubectl delete pod ...".into(),
        ),
        Engine::Containerd => (
            "`nerdctl run --network host ...`".into(),
            format!("ctr -n {ns} images export image.tar {image}"),
            format!("nerdctl rm -f {}", c.name),
        ),
        _ => (
            "`docker run --network host ...`".into(),
            format!("docker save {image} -o image.tar"),
            format!("docker rm -f {}", c.name),
        ),
    }
}

/// The ways out, as numbered steps with the commands.
fn fix(c: &Container) -> String {
    let image = if c.image.is_empty() {
        "IMAGE"
    } else {
        &c.image
    };
    let (host_network, save, remove) = commands(c, image);
    let p = &c.port_mapping.proxies;
    let mut steps = Vec::new();
    if p.processes > 0 {
        steps.push(format!(
            "turn the userland proxy off: set \"userland-proxy\": false in \
             /etc/docker/daemon.json and restart dockerd (frees {} processes and {:.0} MB; the \
             kernel's NAT already forwards the traffic)",
            p.processes,
            mb(p.rss_bytes)
        ));
    }
    steps.push(format!(
        "or run it with host networking ({host_network}): no NAT and no per-port rule; the \
         service binds its ports on the host, at the baseline cost above{}",
        if c.network.publish.iter().any(|p| p.host != p.container) {
            " (its host and container ports differ: configure it to listen on the host ports)"
        } else {
            ""
        }
    ));
    let mut run = format!("berth run -d --name {}", c.name);
    let mut flags: Vec<String> = Vec::new();
    for publish in &c.network.publish {
        // An engine may list a mapping once per address family.
        let flag = format!(" -p {publish}");
        if !flags.contains(&flag) {
            run.push_str(&flag);
            flags.push(flag);
        }
    }
    let l = &c.limits;
    if let Some(m) = l.memory {
        let _ = write!(run, " --memory {}", size(m));
    }
    match l.memory_swap {
        Some(s) if s < 0 => run.push_str(" --memory-swap -1"),
        Some(s) => {
            let _ = write!(run, " --memory-swap {}", size(s as u64));
        }
        None => {}
    }
    if let Some(cpus) = l.cpus {
        let _ = write!(run, " --cpus {cpus}");
    }
    if let Some(shares) = l.cpu_shares {
        let _ = write!(run, " --cpu-shares {shares}");
    }
    if let Some(pids) = l.pids {
        let _ = write!(run, " --pids-limit {pids}");
    }
    if let Some(w) = l.blkio_weight {
        let _ = write!(run, " --blkio-weight {w}");
    }
    let _ = write!(run, " {image}");
    steps.push(format!(
        "or run the same service under berth, whose nft-map backend costs one map lookup per \
         new flow whatever the number of ports and runs no proxy: `{save} && berth image \
         import image.tar --name {image}`, then `{remove} && {run}`"
    ));
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}. {s}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests;
