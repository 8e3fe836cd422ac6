//! What the history keeps of a snapshot as the start of a window (`diagnose?window=`,
//! `syscalls?window=`, `/api/v1/ports?window=`): only the counters those readers subtract, cut
//! to a bound when it is recorded, so a kept start costs a few KB per container instead of a
//! whole [`Snapshot`] (every container's full record, syscall tables with latency histograms,
//! and a netfilter sample of up to tens of thousands of ports).
//!
//! Kept per container: its proxies' CPU seconds, its new flows, and its [`SYSCALLS_KEPT`]
//! busiest syscalls (count, calls and nanoseconds measured for latency). Kept per published
//! range (per protocol and host port range: what [`Publish::covers`] looks at): its totals
//! (exact), the counters of its [`PORTS_KEPT`] costliest ports, and the largest counters of the
//! ports it cut. A cut port's start is taken as that largest cut value (or its value now, when
//! smaller): its window is understated by at most that value, never overstated, so a quiet
//! port does not pass for a busy one. A syscall cut from the start counts from zero over the
//! window: overstated by at most its count at the start, at most the smallest kept one's.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    mem::size_of,
    sync::Arc,
    time::SystemTime,
};

use super::{Hook, PortCounters, Publish, Snapshot};
use crate::model::{Container, CtState};

/// Ports kept per published range, the costliest (netfilter nanoseconds) at the start.
pub const PORTS_KEPT: usize = 64;
/// Syscalls kept per container, the most called at the start.
pub const SYSCALLS_KEPT: usize = 16;

/// One syscall's counters at the start of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseSyscall {
    pub nr: u32,
    pub count: u64,
    /// Calls the latency histogram counted.
    pub latency_calls: u64,
    pub latency_sum_ns: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct BaseContainer {
    id: String,
    cgroup_id: Option<u64>,
    proxy_cpu_seconds: f64,
    /// New-state packets at prerouting and output to its published ports ([`FlowPath::flows`](super::FlowPath::flows)).
    new_flows: u64,
    syscalls: Vec<BaseSyscall>,
}

/// A range's counters: (IP protocol number, first host port, last host port).
type RangeKey = (u8, u16, u16);

#[derive(Debug, Clone, Default)]
pub(super) struct BaseRange {
    /// Every port of the range, summed (exact).
    pub(super) total: PortCounters,
    /// New-state packets at prerouting and output.
    flows: u64,
    /// The costliest ports, sorted by port.
    pub(super) ports: Vec<(u16, PortCounters)>,
    /// The cut ports' largest counters (each counter on its own; zero when none was cut).
    pub(super) cut: PortCounters,
}

impl BaseRange {
    /// `port`'s counters at the start, given `now`'s: kept, or the cut ports' largest (at
    /// most `now`).
    pub(super) fn port(&self, port: u16, now: PortCounters) -> PortCounters {
        match self.ports.binary_search_by_key(&port, |(p, _)| *p) {
            Ok(i) => self.ports[i].1,
            Err(_) => PortCounters {
                pre_packets: self.cut.pre_packets.min(now.pre_packets),
                ns: self.cut.ns.min(now.ns),
                new: self.cut.new.min(now.new),
            },
        }
    }
}

/// The reduced start of a window; see the module doc.
#[derive(Debug, Clone)]
pub struct Base {
    pub taken_at: SystemTime,
    /// A container whose counters did not move since the start before shares its entry.
    containers: Vec<Arc<BaseContainer>>,
    ranges: Vec<(RangeKey, BaseRange)>,
}

fn key(p: &Publish) -> RangeKey {
    let proto = match p.proto {
        super::Proto::Tcp => 6,
        super::Proto::Udp => 17,
    };
    (proto, p.host.start, p.host.end)
}

impl Base {
    /// Cuts `snap` down to what the window readers subtract. A container whose counters are
    /// those it had in `before` (the start kept before this one) shares that start's entry:
    /// at rest a start costs a pointer per container.
    pub fn of(snap: &Snapshot, before: Option<&Base>) -> Self {
        let mut keys: Vec<RangeKey> = snap
            .containers
            .iter()
            .flat_map(|c| c.network.publish.iter().map(key))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let samples = snap
            .netfilter
            .as_ref()
            .map_or(&[][..], |nf| &nf.by_port[..]);
        // (protocol, port, range) for every port of every range, to find a sample's ranges
        // by binary search; not built while no port has a sample (at rest).
        let mut index: Vec<(u8, u16, u32)> = Vec::new();
        if !samples.is_empty() {
            for (i, (proto, start, end)) in keys.iter().enumerate() {
                index.extend((*start..=*end).map(|port| (*proto, port, i as u32)));
            }
            index.sort_unstable();
        }
        let mut per_port: Vec<BTreeMap<u16, PortCounters>> = vec![BTreeMap::new(); keys.len()];
        let mut flows = vec![0u64; keys.len()];
        for p in samples {
            let from = index.partition_point(|&(pr, po, _)| (pr, po) < (p.proto, p.port));
            for &(_, _, i) in index[from..]
                .iter()
                .take_while(|&&(pr, po, _)| (pr, po) == (p.proto, p.port))
            {
                let i = i as usize;
                per_port[i]
                    .entry(p.port)
                    .or_default()
                    .add(PortCounters::of(p));
                if p.ct_state == CtState::New && matches!(p.hook, Hook::Prerouting | Hook::Output) {
                    flows[i] += p.packets;
                }
            }
        }
        let ranges: Vec<(RangeKey, BaseRange)> = keys
            .into_iter()
            .zip(per_port.into_iter().zip(flows))
            .map(|(k, (ports, flows))| {
                let mut total = PortCounters::default();
                let mut ports: Vec<(u16, PortCounters)> = ports.into_iter().collect();
                for (_, c) in &ports {
                    total.add(*c);
                }
                ports.sort_by(|a, b| {
                    (b.1.ns, b.1.pre_packets, a.0).cmp(&(a.1.ns, a.1.pre_packets, b.0))
                });
                let mut cut = PortCounters::default();
                for (_, c) in ports.iter().skip(PORTS_KEPT) {
                    cut.pre_packets = cut.pre_packets.max(c.pre_packets);
                    cut.ns = cut.ns.max(c.ns);
                    cut.new = cut.new.max(c.new);
                }
                ports.truncate(PORTS_KEPT);
                ports.sort_by_key(|(port, _)| *port);
                ports.shrink_to_fit();
                (
                    k,
                    BaseRange {
                        total,
                        flows,
                        ports,
                        cut,
                    },
                )
            })
            .collect();
        // The start before's entries by container (same id in the same cgroup), to share.
        let before: HashMap<(&str, Option<u64>), &Arc<BaseContainer>> = before
            .iter()
            .flat_map(|b| &b.containers)
            .map(|b| ((b.id.as_str(), b.cgroup_id), b))
            .collect();
        let shared = snap
            .containers
            .iter()
            .map(|c| {
                let mut syscalls: Vec<BaseSyscall> = c
                    .syscalls
                    .iter()
                    .map(|s| BaseSyscall {
                        nr: s.nr,
                        count: s.count,
                        latency_calls: s.latency_buckets.iter().sum(),
                        latency_sum_ns: s.latency_sum_ns,
                    })
                    .collect();
                syscalls.sort_by(|a, b| b.count.cmp(&a.count).then(a.nr.cmp(&b.nr)));
                syscalls.truncate(SYSCALLS_KEPT);
                syscalls.shrink_to_fit();
                let b = BaseContainer {
                    id: c.id.clone(),
                    cgroup_id: c.cgroup_id,
                    proxy_cpu_seconds: c.port_mapping.proxies.cpu_seconds,
                    new_flows: range_flows(&ranges, c),
                    syscalls,
                };
                match before.get(&(c.id.as_str(), c.cgroup_id)) {
                    Some(&same) if **same == b => Arc::clone(same),
                    _ => Arc::new(b),
                }
            })
            .collect();
        Base {
            taken_at: snap.taken_at,
            containers: shared,
            ranges,
        }
    }

    /// The same container at the start (same id in the same cgroup).
    fn container(&self, c: &Container) -> Option<&BaseContainer> {
        self.containers
            .iter()
            .find(|b| b.id == c.id && b.cgroup_id == c.cgroup_id)
            .map(|b| &**b)
    }

    /// `c`'s proxies' CPU seconds at the start; `None` when `c` was not there.
    pub fn proxy_cpu_seconds(&self, c: &Container) -> Option<f64> {
        self.container(c).map(|b| b.proxy_cpu_seconds)
    }

    /// New flows to `c`'s published ports at the start (as [`Snapshot::new_flow_path`]'s
    /// `flows()`): its own count when it was there, else its ranges' (0 for unknown ones).
    pub fn new_flows(&self, c: &Container) -> u64 {
        self.container(c)
            .map_or_else(|| range_flows(&self.ranges, c), |b| b.new_flows)
    }

    /// `c`'s kept syscalls at the start (empty when `c` was not there).
    pub fn syscalls(&self, c: &Container) -> &[BaseSyscall] {
        self.container(c).map_or(&[], |b| &b.syscalls)
    }

    pub(super) fn range(&self, p: &Publish) -> Option<&BaseRange> {
        let k = key(p);
        self.ranges.iter().find(|(r, _)| *r == k).map(|(_, r)| r)
    }

    /// Bytes this start holds (its own size and every allocation's capacity); a container
    /// entry already in `counted` (shared with another start) is not counted again.
    pub fn bytes(&self, counted: &mut HashSet<*const ()>) -> usize {
        size_of::<Self>()
            + self.containers.capacity() * size_of::<Arc<BaseContainer>>()
            + self
                .containers
                .iter()
                .filter(|c| counted.insert(Arc::as_ptr(c).cast()))
                .map(|c| {
                    ARC_COUNTS
                        + size_of::<BaseContainer>()
                        + c.id.capacity()
                        + c.syscalls.capacity() * size_of::<BaseSyscall>()
                })
                .sum::<usize>()
            + self.ranges.capacity() * size_of::<(RangeKey, BaseRange)>()
            + self
                .ranges
                .iter()
                .map(|(_, r)| r.ports.capacity() * size_of::<(u16, PortCounters)>())
                .sum::<usize>()
    }

    /// The most [`Base::bytes`] can be for `containers` containers (ids of 64 characters)
    /// publishing distinct ranges of `range_ports` ports each, whatever their traffic and
    /// syscalls: per range at most [`PORTS_KEPT`] ports.
    pub fn bound_bytes(containers: usize, range_ports: &[usize]) -> usize {
        size_of::<Self>()
            + containers
                * (size_of::<Arc<BaseContainer>>()
                    + ARC_COUNTS
                    + size_of::<BaseContainer>()
                    + 64
                    + SYSCALLS_KEPT * size_of::<BaseSyscall>())
            + range_ports
                .iter()
                .map(|n| {
                    size_of::<(RangeKey, BaseRange)>()
                        + (*n).min(PORTS_KEPT) * size_of::<(u16, PortCounters)>()
                })
                .sum::<usize>()
    }
}

/// The two counts an `Arc` allocation holds besides its value.
const ARC_COUNTS: usize = 2 * size_of::<usize>();

fn range_flows(ranges: &[(RangeKey, BaseRange)], c: &Container) -> u64 {
    let mut keys: Vec<RangeKey> = c.network.publish.iter().map(key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.iter()
        .filter_map(|k| ranges.iter().find(|(r, _)| r == k))
        .map(|(_, r)| r.flows)
        .sum()
}
