//! What published ports cost in netfilter, computed in one place for every reader: `/metrics`
//! (per container, hook and conntrack state), `/api/v1/ports` (per published range and port),
//! `diagnose` (new-flow cost per container against the host's baseline) and the UI.
//!
//! The netfilter probe keys its costs by (protocol, original destination port); a port belongs
//! to the container whose published range covers it ([`Snapshot::port_owner`]), whatever its
//! engine: a running one before a stopped one that still lists the range.
//!
//! A new flow's cost is its path: the mean cost per packet of every hook its first packets
//! cross (prerouting, forward and postrouting for a published port on a bridge), summed
//! ([`FlowPath`]). The host's baseline is the same for new flows to local ports no container
//! publishes (prerouting and input): what a host-networking service pays on this host.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use serde::Serialize;

use super::{BackendKind, Container, CtState, Engine, Hook, Proto, Publish, Snapshot, Status};

mod base;
pub use self::base::{Base, BaseSyscall, PORTS_KEPT, SYSCALLS_KEPT};

/// Packets and the nanoseconds netfilter spent on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Cost {
    pub packets: u64,
    pub nanoseconds: u64,
}

impl Cost {
    fn add(&mut self, packets: u64, nanoseconds: u64) {
        self.packets += packets;
        self.nanoseconds += nanoseconds;
    }

    /// Mean nanoseconds per packet; `None` without packets.
    pub fn ns_per_packet(&self) -> Option<f64> {
        (self.packets > 0).then(|| self.nanoseconds as f64 / self.packets as f64)
    }

    /// Mean microseconds per packet (0 without packets).
    pub fn us_per_packet(&self) -> f64 {
        self.ns_per_packet().unwrap_or(0.0) / 1e3
    }
}

/// What a new flow costs in netfilter along its path: per hook, the new-state packets that
/// crossed it and their nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FlowPath {
    pub hooks: BTreeMap<Hook, Cost>,
}

impl FlowPath {
    fn add(&mut self, hook: Hook, packets: u64, nanoseconds: u64) {
        self.hooks
            .entry(hook)
            .or_default()
            .add(packets, nanoseconds);
    }

    /// The path's cost per packet: each hook's mean, summed; `None` when no packet was
    /// measured.
    pub fn ns_per_packet(&self) -> Option<f64> {
        let means: Vec<f64> = self
            .hooks
            .values()
            .filter_map(Cost::ns_per_packet)
            .collect();
        (!means.is_empty()).then(|| means.iter().sum())
    }

    /// New flows: packets at the first hook they cross (prerouting, or output for flows the
    /// host itself opens).
    pub fn flows(&self) -> u64 {
        let at = |h| self.hooks.get(&h).map_or(0, |c: &Cost| c.packets);
        at(Hook::Prerouting) + at(Hook::Output)
    }
}

/// How many busiest ports a range lists in `/api/v1/ports`.
pub const BUSIEST_PORTS: usize = 100;

/// One published range with what netfilter costs for it (a row of `/api/v1/ports`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RangeCost<'a> {
    /// The owning container's id.
    pub container: &'a str,
    pub name: &'a str,
    pub engine: Engine,
    #[schema(value_type = Option<String>)]
    pub ip: Option<Ipv4Addr>,
    pub publish: &'a Publish,
    pub backend: Option<BackendKind>,
    /// `None` when the netfilter probe is down.
    pub netfilter: Option<RangeNetfilter>,
    /// For an `ebpf`-backend range: the forward program's mean run time per packet (host-wide,
    /// kernel BPF statistics), its cost in place of netfilter's (its packets cost no netfilter
    /// time); `None` for other backends or before a packet.
    pub ebpf_ns_per_packet: Option<f64>,
}

/// Netfilter cost of one published range, cumulative since the probe loaded.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RangeNetfilter {
    pub prerouting_packets: u64,
    pub prerouting_ns_per_packet: Option<f64>,
    /// New-flow packets at prerouting (one per new connection).
    pub new_flows: u64,
    /// New flows per second over the requested window; `None` without history that old.
    pub new_flows_per_second: Option<f64>,
    /// A new flow's whole path: the per-packet cost of every hook its new-state packets
    /// crossed, summed (see [`FlowPath`]); `None` before the first new flow.
    pub new_flow_ns_per_packet: Option<f64>,
    pub hooks: Vec<HookCost>,
    /// Seconds the window figures cover (the requested window, or what the history reaches);
    /// `None` without history that old.
    pub window_seconds: Option<f64>,
    /// Over the window: netfilter time of every hook per packet entering at prerouting, µs.
    pub window_us_per_packet: Option<f64>,
    /// Over the window: netfilter time of every hook per second, µs (what rows sort by).
    pub window_us_per_second: Option<f64>,
    /// The costliest ports over the window (by `window_us_per_second`; without a window, by
    /// prerouting packets), at most [`BUSIEST_PORTS`].
    pub ports: Vec<PortRow>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HookCost {
    pub hook: Hook,
    pub ct_state: CtState,
    pub packets: u64,
    pub ns_per_packet: Option<f64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PortRow {
    pub port: u16,
    pub prerouting_packets: u64,
    pub prerouting_ns_per_packet: Option<f64>,
    /// Over the window: netfilter time of every hook per packet entering at prerouting, µs.
    pub window_us_per_packet: Option<f64>,
    /// Over the window: netfilter time of every hook per second, µs.
    pub window_us_per_second: Option<f64>,
    /// Over the window: new flows per second.
    pub new_flows_per_second: Option<f64>,
}

/// A port's (or a range's) cumulative counters: prerouting packets, every hook's nanoseconds,
/// new flows at prerouting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PortCounters {
    pre_packets: u64,
    ns: u64,
    new: u64,
}

impl PortCounters {
    /// One sample's counters.
    fn of(p: &super::PortCost) -> Self {
        let pre = p.hook == Hook::Prerouting;
        PortCounters {
            pre_packets: if pre { p.packets } else { 0 },
            ns: p.nanoseconds,
            new: if pre && p.ct_state == CtState::New {
                p.packets
            } else {
                0
            },
        }
    }

    fn add(&mut self, o: PortCounters) {
        self.pre_packets += o.pre_packets;
        self.ns += o.ns;
        self.new += o.new;
    }

    /// The increase since `base` (a counter that went down restarted from zero).
    fn since(self, base: PortCounters) -> PortCounters {
        let inc = |b: u64, n: u64| if n < b { n } else { n - b };
        PortCounters {
            pre_packets: inc(base.pre_packets, self.pre_packets),
            ns: inc(base.ns, self.ns),
            new: inc(base.new, self.new),
        }
    }

    /// (µs per packet, µs per second, new flows per second) of an increase over `seconds`.
    fn window(self, seconds: f64) -> (Option<f64>, f64, f64) {
        (
            (self.pre_packets > 0).then(|| self.ns as f64 / self.pre_packets as f64 / 1e3),
            self.ns as f64 / seconds / 1e3,
            self.new as f64 / seconds,
        )
    }
}

/// Per port of `publish`, the snapshot's cumulative counters.
fn port_counters(snap: &Snapshot, publish: &Publish) -> BTreeMap<u16, PortCounters> {
    let mut out: BTreeMap<u16, PortCounters> = BTreeMap::new();
    for p in snap
        .netfilter
        .iter()
        .flat_map(|nf| &nf.by_port)
        .filter(|p| publish.covers(p.proto, p.port))
    {
        out.entry(p.port).or_default().add(PortCounters::of(p));
    }
    out
}

/// Key of [`Snapshot::container_netfilter`]: (index into `containers`, hook, state).
pub type ContainerHookKey = (usize, Hook, CtState);

impl Snapshot {
    /// The container publishing (IP protocol number, host port), if any.
    pub fn port_owner(&self, proto: u8, port: u16) -> Option<&Container> {
        self.owner_index(proto, port).map(|i| &self.containers[i])
    }

    fn owner_index(&self, proto: u8, port: u16) -> Option<usize> {
        let covers = |c: &Container| c.network.publish.iter().any(|p| p.covers(proto, port));
        self.containers
            .iter()
            .position(|c| c.status == Status::Running && covers(c))
            .or_else(|| self.containers.iter().position(covers))
    }

    /// Netfilter cost per container (index into `containers`), hook and conntrack state, of
    /// the packets to its published ports.
    pub fn container_netfilter(&self) -> BTreeMap<ContainerHookKey, Cost> {
        let mut out = BTreeMap::new();
        let Some(nf) = &self.netfilter else {
            return out;
        };
        for p in &nf.by_port {
            if let Some(i) = self.owner_index(p.proto, p.port) {
                out.entry((i, p.hook, p.ct_state))
                    .or_insert_with(Cost::default)
                    .add(p.packets, p.nanoseconds);
            }
        }
        out
    }

    /// Prerouting cost of new flows to `container`'s published ports.
    pub fn new_flow_cost(&self, container: &Container) -> Cost {
        let mut cost = Cost::default();
        for (publish, _) in self.ranges_of(container) {
            let new = self.new_flows(publish);
            cost.add(new.packets, new.nanoseconds);
        }
        cost
    }

    fn ranges_of<'a>(
        &self,
        container: &'a Container,
    ) -> impl Iterator<Item = (&'a Publish, Option<BackendKind>)> {
        container
            .network
            .publish
            .iter()
            .map(|p| (p, container.network.port_backend))
    }

    /// New-flow packets at prerouting to the range, with their cost.
    fn new_flows(&self, publish: &Publish) -> Cost {
        let mut cost = Cost::default();
        if let Some(nf) = &self.netfilter {
            for c in nf.by_port.iter().filter(|c| {
                c.hook == Hook::Prerouting
                    && c.ct_state == CtState::New
                    && publish.covers(c.proto, c.port)
            }) {
                cost.add(c.packets, c.nanoseconds);
            }
        }
        cost
    }

    /// What new flows to `container`'s published ports cost, hook by hook.
    pub fn new_flow_path(&self, container: &Container) -> FlowPath {
        let mut path = FlowPath::default();
        if let Some(nf) = &self.netfilter {
            for c in nf.by_port.iter().filter(|c| {
                c.ct_state == CtState::New
                    && container
                        .network
                        .publish
                        .iter()
                        .any(|p| p.covers(c.proto, c.port))
            }) {
                path.add(c.hook, c.packets, c.nanoseconds);
            }
        }
        path
    }

    /// The host's baseline: what new flows to local ports that no container publishes cost,
    /// at prerouting and input (only packets that were delivered locally, so containers'
    /// outgoing flows, forwarded, are left out: the probe carries their prerouting cost to
    /// input). Empty when there were none or the probe is down.
    pub fn baseline_path(&self) -> FlowPath {
        let mut path = FlowPath::default();
        let Some(nf) = &self.netfilter else {
            return path;
        };
        for c in nf
            .other
            .iter()
            .filter(|c| c.hook == Hook::Input && c.ct_state == CtState::New && c.packets > 0)
        {
            path.add(c.hook, c.packets, c.nanoseconds);
        }
        if path.hooks.is_empty() {
            return path;
        }
        for c in nf.local_prerouting.iter().filter(|c| c.packets > 0) {
            path.add(Hook::Prerouting, c.packets, c.nanoseconds);
        }
        path
    }

    /// One row per published range of every container, with its netfilter cost; new flows per
    /// second are measured against `base`, the start of the window as the history keeps it
    /// ([`Base`]: the range's totals, its costliest ports, and the largest counters of the
    /// ports it cut).
    ///
    /// Rows are sorted by their netfilter time over the window, costliest first (by
    /// cumulative nanoseconds without a window).
    pub fn range_costs(&self, base: Option<&Base>) -> Vec<RangeCost<'_>> {
        let seconds = base
            .and_then(|b| self.taken_at.duration_since(b.taken_at).ok())
            .map(|d: Duration| d.as_secs_f64())
            .filter(|s| *s > 0.0);
        let mut out = Vec::new();
        for c in &self.containers {
            for (publish, backend) in self.ranges_of(c) {
                let netfilter = self.netfilter.as_ref().map(|nf| {
                    let mut hooks: BTreeMap<(Hook, CtState), Cost> = BTreeMap::new();
                    let mut per_port: BTreeMap<u16, Cost> = BTreeMap::new();
                    let mut pre = Cost::default();
                    for p in nf
                        .by_port
                        .iter()
                        .filter(|p| publish.covers(p.proto, p.port))
                    {
                        hooks
                            .entry((p.hook, p.ct_state))
                            .or_default()
                            .add(p.packets, p.nanoseconds);
                        if p.hook == Hook::Prerouting {
                            pre.add(p.packets, p.nanoseconds);
                            per_port
                                .entry(p.port)
                                .or_default()
                                .add(p.packets, p.nanoseconds);
                        }
                    }
                    let new_now = self.new_flows(publish).packets;
                    let start = base.map(|b| b.range(publish));
                    let counters = port_counters(self, publish);
                    let window = start.zip(seconds).map(|(start, secs)| {
                        let per_port: BTreeMap<u16, (Option<f64>, f64, f64)> = counters
                            .iter()
                            .map(|(port, now)| {
                                let before = start.map(|r| r.port(*port, *now)).unwrap_or_default();
                                (*port, now.since(before).window(secs))
                            })
                            .collect();
                        let mut range = PortCounters::default();
                        for now in counters.values() {
                            range.add(*now);
                        }
                        let range = range.since(start.map(|r| r.total).unwrap_or_default());
                        (secs, range.window(secs), per_port)
                    });
                    let new_flows_per_second = window.as_ref().map(|(secs, _, _)| {
                        new_now.saturating_sub(start.flatten().map_or(0, |r| r.total.new)) as f64
                            / secs
                    });
                    let cost_of = |port: &u16| {
                        window
                            .as_ref()
                            .and_then(|(_, _, w)| w.get(port))
                            .map(|w| w.1)
                    };
                    let mut busiest: Vec<(u16, Cost)> = per_port.into_iter().collect();
                    busiest.sort_by(|(pa, ca), (pb, cb)| {
                        cost_of(pb)
                            .unwrap_or(0.0)
                            .total_cmp(&cost_of(pa).unwrap_or(0.0))
                            .then(cb.packets.cmp(&ca.packets))
                            .then(pa.cmp(pb))
                    });
                    busiest.truncate(BUSIEST_PORTS);
                    let mut path = FlowPath::default();
                    for ((hook, state), cost) in &hooks {
                        if *state == CtState::New {
                            path.add(*hook, cost.packets, cost.nanoseconds);
                        }
                    }
                    RangeNetfilter {
                        prerouting_packets: pre.packets,
                        prerouting_ns_per_packet: pre.ns_per_packet(),
                        new_flows: new_now,
                        new_flows_per_second,
                        new_flow_ns_per_packet: path.ns_per_packet(),
                        window_seconds: window.as_ref().map(|w| w.0),
                        window_us_per_packet: window.as_ref().and_then(|w| w.1.0),
                        window_us_per_second: window.as_ref().map(|w| w.1.1),
                        hooks: hooks
                            .into_iter()
                            .map(|((hook, ct_state), cost)| HookCost {
                                hook,
                                ct_state,
                                packets: cost.packets,
                                ns_per_packet: cost.ns_per_packet(),
                            })
                            .collect(),
                        ports: busiest
                            .into_iter()
                            .map(|(port, cost)| {
                                let w = window.as_ref().and_then(|(_, _, w)| w.get(&port));
                                PortRow {
                                    port,
                                    prerouting_packets: cost.packets,
                                    prerouting_ns_per_packet: cost.ns_per_packet(),
                                    window_us_per_packet: w.and_then(|w| w.0),
                                    window_us_per_second: w.map(|w| w.1),
                                    new_flows_per_second: w.map(|w| w.2),
                                }
                            })
                            .collect(),
                    }
                });
                out.push(RangeCost {
                    container: &c.id,
                    name: &c.name,
                    engine: c.engine,
                    ip: c.network.ip,
                    publish,
                    backend,
                    netfilter,
                    ebpf_ns_per_packet: (backend == Some(BackendKind::Ebpf))
                        .then(|| {
                            self.portmap_ebpf
                                .as_ref()
                                .and_then(|e| e.forward_ns_per_packet())
                        })
                        .flatten(),
                });
            }
        }
        let cost = |r: &RangeCost<'_>| {
            r.netfilter.as_ref().map_or(0.0, |nf| {
                nf.window_us_per_second.unwrap_or_else(|| {
                    nf.hooks
                        .iter()
                        .map(|h| h.ns_per_packet.unwrap_or(0.0) * h.packets as f64)
                        .sum::<f64>()
                        / 1e3
                })
            })
        };
        // Stable: equal costs keep the containers' order.
        out.sort_by(|a, b| cost(b).total_cmp(&cost(a)));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::fixture;

    fn us(path: &FlowPath) -> Option<f64> {
        path.ns_per_packet().map(|ns| (ns / 100.0).round() / 10.0)
    }

    #[test]
    fn a_foreign_container_s_new_flows_cost_every_hook_they_cross() {
        let s = fixture::docker_host_at(Duration::ZERO, 100);
        let sfu = s.find("sfu").unwrap();
        let path = s.new_flow_path(sfu);
        let hooks: Vec<(Hook, u64)> = path.hooks.iter().map(|(h, c)| (*h, c.packets)).collect();
        assert_eq!(
            hooks,
            [
                (Hook::Prerouting, 1000),
                (Hook::Forward, 1000),
                (Hook::Postrouting, 1000)
            ],
            "established packets are not new flows"
        );
        assert_eq!(us(&path), Some(20.6));
        assert_eq!(path.flows(), 1000);
        assert_eq!(
            s.port_owner(17, 50999).map(|c| c.engine),
            Some(Engine::Docker)
        );
        let hostnet = s.find("hostnet").unwrap();
        assert_eq!(s.new_flow_path(hostnet), FlowPath::default());
        assert_eq!(FlowPath::default().ns_per_packet(), None);
    }

    #[test]
    fn the_baseline_is_local_delivery_to_ports_no_container_publishes() {
        let s = fixture::docker_host_at(Duration::ZERO, 100);
        let b = s.baseline_path();
        // ssh (22/tcp) reached input; 443 was forwarded (a container's outgoing flow); 53 is
        // output only; published ports are the containers'.
        let hooks: Vec<(Hook, u64)> = b.hooks.iter().map(|(h, c)| (*h, c.packets)).collect();
        assert_eq!(hooks, [(Hook::Prerouting, 50), (Hook::Input, 50)]);
        assert_eq!(us(&b), Some(2.0));
        let mut down = s.clone();
        down.netfilter = None;
        assert_eq!(down.baseline_path(), FlowPath::default());
    }

    #[test]
    fn a_running_container_owns_a_port_before_a_stopped_one_listing_it() {
        let mut s = fixture::docker_host_at(Duration::ZERO, 100);
        let mut stopped = s.find("sfu").unwrap().clone();
        stopped.id = "0".repeat(64);
        stopped.name = "old-sfu".into();
        stopped.status = Status::Exited;
        s.containers.insert(0, stopped);
        assert_eq!(
            s.port_owner(17, 50000).map(|c| c.name.as_str()),
            Some("sfu")
        );
        s.containers.retain(|c| c.name != "sfu");
        assert_eq!(
            s.port_owner(17, 50000).map(|c| c.name.as_str()),
            Some("old-sfu")
        );
    }

    #[test]
    fn port_rows_carry_the_engine_and_the_whole_new_flow_path() {
        let base = fixture::docker_host_at(Duration::ZERO, 100);
        let now = fixture::docker_host_at(Duration::from_secs(10), 300);
        let rows = now.range_costs(Some(&Base::of(&base, None)));
        let sfu = rows.iter().find(|r| r.name == "sfu").unwrap();
        assert_eq!((sfu.engine, sfu.backend), (Engine::Docker, None));
        let nf = sfu.netfilter.as_ref().unwrap();
        assert_eq!(
            nf.new_flow_ns_per_packet.map(|ns| ns.round()),
            Some(20_600.0)
        );
        assert_eq!(nf.new_flows_per_second, Some(200.0));
        let post = nf
            .hooks
            .iter()
            .find(|h| h.hook == Hook::Postrouting && h.ct_state == CtState::New)
            .unwrap();
        assert_eq!(post.ns_per_packet, Some(18_600.0));
        let media = rows.iter().find(|r| r.name == "media").unwrap();
        assert_eq!(media.engine, Engine::Berth);
        let json = serde_json::to_value(sfu).unwrap();
        assert_eq!(json["engine"], "docker");
        assert!(
            rows.iter()
                .all(|r| r.name != "hostnet" && r.name != "worker")
        );
    }
}
