//! What published ports cost in netfilter, computed in one place for every reader: `/metrics`
//! (per container, hook and conntrack state), `/api/v1/ports` (per published range and port),
//! `diagnose` (new-flow cost per container) and the UI.
//!
//! The netfilter probe keys its costs by (protocol, original destination port); a port belongs
//! to the container whose published range covers it ([`Snapshot::port_owner`]).

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use serde::Serialize;

use super::{BackendKind, Container, CtState, Hook, Publish, Snapshot};

/// Packets and the nanoseconds netfilter spent on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
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

/// How many busiest ports a range lists in `/api/v1/ports`.
pub const BUSIEST_PORTS: usize = 100;

/// One published range with what netfilter costs for it (a row of `/api/v1/ports`).
#[derive(Debug, Clone, Serialize)]
pub struct RangeCost<'a> {
    /// The owning container's id.
    pub container: &'a str,
    pub name: &'a str,
    pub ip: Option<Ipv4Addr>,
    pub publish: &'a Publish,
    pub backend: Option<BackendKind>,
    /// `None` when the netfilter probe is down.
    pub netfilter: Option<RangeNetfilter>,
}

/// Netfilter cost of one published range, cumulative since the probe loaded.
#[derive(Debug, Clone, Serialize)]
pub struct RangeNetfilter {
    pub prerouting_packets: u64,
    pub prerouting_ns_per_packet: Option<f64>,
    /// New-flow packets at prerouting (one per new connection).
    pub new_flows: u64,
    /// New flows per second over the requested window; `None` without history that old.
    pub new_flows_per_second: Option<f64>,
    pub hooks: Vec<HookCost>,
    /// The busiest ports by prerouting packets, at most [`BUSIEST_PORTS`].
    pub ports: Vec<PortRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HookCost {
    pub hook: Hook,
    pub ct_state: CtState,
    pub packets: u64,
    pub ns_per_packet: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortRow {
    pub port: u16,
    pub prerouting_packets: u64,
    pub prerouting_ns_per_packet: Option<f64>,
}

/// Key of [`Snapshot::container_netfilter`]: (index into `containers`, hook, state).
pub type ContainerHookKey = (usize, Hook, CtState);

impl Snapshot {
    /// The container publishing (IP protocol number, host port), if any.
    pub fn port_owner(&self, proto: u8, port: u16) -> Option<&Container> {
        self.owner_index(proto, port).map(|i| &self.containers[i])
    }

    fn owner_index(&self, proto: u8, port: u16) -> Option<usize> {
        self.containers
            .iter()
            .position(|c| c.network.publish.iter().any(|p| p.covers(proto, port)))
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

    /// One row per published range of every container, with its netfilter cost; new flows per
    /// second are measured against `base`, an older snapshot (the start of the window).
    pub fn range_costs(&self, base: Option<&Snapshot>) -> Vec<RangeCost<'_>> {
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
                    let new_flows_per_second = base.zip(seconds).map(|(b, secs)| {
                        new_now.saturating_sub(b.new_flows(publish).packets) as f64 / secs
                    });
                    let mut busiest: Vec<(u16, Cost)> = per_port.into_iter().collect();
                    busiest.sort_by_key(|(port, cost)| (std::cmp::Reverse(cost.packets), *port));
                    busiest.truncate(BUSIEST_PORTS);
                    RangeNetfilter {
                        prerouting_packets: pre.packets,
                        prerouting_ns_per_packet: pre.ns_per_packet(),
                        new_flows: new_now,
                        new_flows_per_second,
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
                            .map(|(port, cost)| PortRow {
                                port,
                                prerouting_packets: cost.packets,
                                prerouting_ns_per_packet: cost.ns_per_packet(),
                            })
                            .collect(),
                    }
                });
                out.push(RangeCost {
                    container: &c.id,
                    name: &c.name,
                    ip: c.network.ip,
                    publish,
                    backend,
                    netfilter,
                });
            }
        }
        out
    }
}
