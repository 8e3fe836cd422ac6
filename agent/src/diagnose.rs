//! `diagnose`: rules over the latest [`Snapshot`] that name a cause, the numbers behind it and
//! the fix. Readers only: nothing here touches the host.
//!
//! The rules, in the order of the mission: per-port iptables rules (Docker's way, whose cost
//! grows with the number of published ports): berth's own containers on the iptables backend,
//! then other engines' containers with everything their port mapping costs ([`portmap`]);
//! userland proxies no container accounts for, the conntrack table, then container health
//! (OOM kills, restart loops) and berth's own probes.
//!
//! Rates (new flows per second, the proxies' CPU) need an older snapshot from the history, the
//! start of the window they are measured over; without one they are said to be not measured.

mod portmap;

use serde::{Deserialize, Serialize};

use crate::model::{BackendKind, Snapshot};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finding {
    pub severity: Severity,
    /// What it is about: `container NAME`, `host`, `probe NAME`.
    pub subject: String,
    pub cause: String,
    /// The measurements behind the cause.
    pub evidence: Vec<String>,
    pub fix: String,
}

fn us(ns: u64, packets: u64) -> f64 {
    ns as f64 / packets.max(1) as f64 / 1e3
}

/// Every finding, most severe first; rates are measured since `base` (the start of the window
/// as the history keeps it).
pub fn diagnose(snap: &Snapshot, base: Option<&crate::model::ports::Base>) -> Vec<Finding> {
    let mut out = portmap::findings(snap, base);

    // The cost of nft-map containers here, as the yardstick.
    let (map_p, map_ns) = snap
        .containers
        .iter()
        .filter(|c| c.network.port_backend == Some(BackendKind::NftMap))
        .map(|c| snap.new_flow_cost(c))
        .fold((0, 0), |(p, n), c| (p + c.packets, n + c.nanoseconds));
    // The ebpf backend's own cost, when some container here uses it.
    let ebpf_ns = snap
        .containers
        .iter()
        .any(|c| c.network.port_backend == Some(BackendKind::Ebpf))
        .then(|| snap.portmap_ebpf.as_ref()?.forward_ns_per_packet())
        .flatten();
    for r in &snap.containers {
        if r.network.port_backend != Some(BackendKind::Iptables) {
            continue;
        }
        let ports: u64 = r
            .network
            .publish
            .iter()
            .map(|p| u64::from(p.host.end - p.host.start) + 1)
            .sum();
        let cost = snap.new_flow_cost(r);
        let (packets, ns) = (cost.packets, cost.nanoseconds);
        let mut evidence = vec![format!(
            "{} iptables rules for {ports} published ports (DNAT, hairpin MASQUERADE and filter ACCEPT per port)",
            3 * ports
        )];
        if packets > 0 {
            evidence.push(format!(
                "netfilter prerouting costs {:.1} µs per new-flow packet to these ports ({packets} packets measured)",
                us(ns, packets)
            ));
        }
        if map_p > 0 {
            evidence.push(format!(
                "containers here with --port-backend nft-map: {:.1} µs per new-flow packet",
                us(map_ns, map_p)
            ));
        }
        if let Some(ns) = ebpf_ns {
            evidence.push(format!(
                "containers here with --port-backend ebpf: {:.2} µs per packet in its eBPF \
                 program, no netfilter time",
                ns / 1e3
            ));
        }
        let slow = packets > 0 && us(ns, packets) > 20.0;
        out.push(Finding {
            severity: if ports >= 1000 || slow {
                Severity::Critical
            } else {
                Severity::Warning
            },
            subject: format!("container {}", r.name),
            cause: "per-port iptables rules (Docker's way of publishing ports): netfilter walks \
                    them in order for every new flow, so the CPU cost per packet grows with the \
                    number of published ports"
                .into(),
            evidence,
            fix: format!(
                "recreate it with --port-backend nft-map (berth's default): one map lookup per \
                 packet whatever the number of ports, e.g. `berth rm -f {name} && berth run \
                 --port-backend nft-map ...`; --port-backend ebpf maps ports past netfilter and \
                 conntrack at host-networking cost; host networking (--network host) avoids \
                 NAT altogether",
                name = r.name
            ),
        });
    }

    // Proxies a container finding already names are not counted twice.
    let p = &portmap::unattributed_proxies(snap);
    if p.processes > 0 {
        out.push(Finding {
            severity: if p.processes >= 100 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            subject: "host".into(),
            cause:
                "userland port-mapping proxies (docker-proxy) that no listed container accounts \
                    for: Docker starts one process per published port and protocol, and every \
                    proxied packet crosses user space"
                    .into(),
            evidence: vec![format!(
                "{} proxy processes, {:.1} MB resident, {:.1} CPU-seconds used",
                p.processes,
                p.rss_bytes as f64 / 1e6,
                p.cpu_seconds
            )],
            fix: "start dockerd with --userland-proxy=false (\"userland-proxy\": false in \
                  daemon.json) so the kernel's NAT does the work, or run the service with berth, \
                  which has no proxy"
                .into(),
        });
    }

    if let Some(ct) = &snap.conntrack {
        let fill = ct.entries as f64 / ct.max.max(1) as f64;
        let lost = ct.drop + ct.early_drop + ct.insert_failed;
        if fill >= 0.75 || lost > 0 {
            out.push(Finding {
                severity: if fill >= 0.9 || ct.drop > 0 {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                subject: "host".into(),
                cause: "the connection tracking table is filling up: every new flow through a \
                        published port takes an entry, and a full table drops packets"
                    .into(),
                evidence: vec![
                    format!(
                        "{} of {} entries in use ({:.0}%)",
                        ct.entries,
                        ct.max,
                        fill * 100.0
                    ),
                    format!(
                        "since boot: {} dropped, {} evicted early, {} failed inserts",
                        ct.drop, ct.early_drop, ct.insert_failed
                    ),
                ],
                fix: format!(
                    "raise net.netfilter.nf_conntrack_max (now {}) with nf_conntrack_buckets; for \
                     many short UDP flows lower net.netfilter.nf_conntrack_udp_timeout",
                    ct.max
                ),
            });
        }
    }

    for c in &snap.containers {
        let kills = c.oom_kills();
        if kills > 0 {
            out.push(Finding {
                severity: Severity::Warning,
                subject: format!("container {}", c.name),
                cause: "processes were killed by the kernel for exceeding the memory limit".into(),
                evidence: vec![format!(
                    "{kills} OOM kills; limit {}",
                    c.limits
                        .memory
                        .map(|m| format!("{} MiB", m >> 20))
                        .unwrap_or_else(|| "none".into())
                )],
                fix: format!(
                    "raise the limit (`berth update --memory <more> {}`) or find what grows",
                    c.name
                ),
            });
        }
        if c.state.restart_count >= 3 {
            let policy = c
                .berth
                .as_ref()
                .map_or_else(|| "its engine's".to_owned(), |b| b.restart.to_string());
            out.push(Finding {
                severity: Severity::Warning,
                subject: format!("container {}", c.name),
                cause: format!(
                    "it keeps exiting and its restart policy ({policy}) keeps restarting it"
                ),
                evidence: vec![format!(
                    "{} restarts; last exit code {}",
                    c.state.restart_count,
                    c.state.exit_code.map_or("-".into(), |c| c.to_string())
                )],
                fix: format!("read why: `berth logs {}`", c.name),
            });
        }
    }

    for p in &snap.probes {
        if let Some(e) = p.error.as_ref().filter(|_| p.enabled) {
            out.push(Finding {
                severity: Severity::Info,
                subject: format!("probe {}", p.name),
                cause: "the probe is down, so its numbers are missing".into(),
                evidence: vec![e.clone()],
                fix: "see /api/v1/system for every probe's path; the agent runs on without it"
                    .into(),
            });
        }
    }
    for l in snap.lost_events.iter().filter(|l| l.count > 0) {
        out.push(Finding {
            severity: Severity::Warning,
            subject: format!("probe {}", l.probe),
            cause: format!("map {} is full: new keys are not counted", l.map),
            evidence: vec![format!("{} events lost", l.count)],
            fix: "fewer tracked cgroups or ports, or a larger map".into(),
        });
    }
    out.sort_by_key(|f| f.severity);
    out
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::model::{ConntrackStats, ProxyStats, fixture};

    fn snapshot() -> Snapshot {
        Snapshot::empty(SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn a_quiet_host_has_no_findings() {
        assert!(diagnose(&snapshot(), None).is_empty());
    }

    #[test]
    fn proxies_and_a_full_conntrack_table_are_named_with_their_fix() {
        let mut s = snapshot();
        s.proxies = ProxyStats {
            processes: 2000,
            rss_bytes: 6_450_000_000,
            cpu_seconds: 12.0,
        };
        s.conntrack = Some(ConntrackStats {
            entries: 250_000,
            max: 262_144,
            drop: 3,
            ..Default::default()
        });
        let f = diagnose(&s, None);
        assert_eq!(f.len(), 2);
        assert!(f.iter().all(|f| f.severity == Severity::Critical));
        assert!(f.iter().any(|f| f.fix.contains("--userland-proxy=false")));
        assert!(
            f.iter()
                .any(|f| f.fix.contains("nf_conntrack_max (now 262144)"))
        );
        assert!(
            f[0].evidence[0].contains("2000 proxy processes")
                || f[1].evidence[0].contains("2000 proxy processes")
        );
    }

    #[test]
    fn the_fixture_names_the_iptables_container_its_restart_loop_and_oom_kills() {
        let f = diagnose(&fixture::snapshot(), None);
        let legacy = f
            .iter()
            .find(|f| f.subject == "container legacy")
            .expect("a finding for the iptables container");
        assert_eq!(legacy.severity, Severity::Critical, "60 µs per new flow");
        assert!(legacy.evidence[0].starts_with("6 iptables rules for 2 published ports"));
        assert!(
            legacy.evidence[1].contains("60.0 µs per new-flow packet"),
            "{legacy:?}"
        );
        assert!(legacy.evidence[2].contains("nft-map: 2.5 µs"), "{legacy:?}");
        assert!(!f.iter().any(|f| f.subject == "container media"));
        let batch: Vec<&Finding> = f
            .iter()
            .filter(|f| f.subject == "container batch")
            .collect();
        assert_eq!(batch.len(), 2, "{batch:?}");
        assert!(batch.iter().any(|f| f.cause.contains("on-failure:3")));
        assert!(
            batch
                .iter()
                .any(|f| f.evidence[0].starts_with("1 OOM kills; limit 64 MiB"))
        );
        assert_eq!(f[0].severity, Severity::Critical, "most severe first");
    }
}
