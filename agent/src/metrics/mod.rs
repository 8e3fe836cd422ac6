//! `/metrics`: the latest [`Snapshot`] rendered as OpenMetrics with prometheus-client.
//!
//! Nothing is counted here: a custom [`Collector`] encodes the snapshot's cumulative values on
//! each scrape, so /metrics, the JSON API and the UI always agree. Names follow
//! `berth_<subsystem>_<quantity>_<unit>`; counters get `_total` from the encoder.

use std::{collections::HashMap, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};
use tokio::sync::watch;

use self::labels::{Escaped, Rendered};
use crate::model::{CgroupView, ContainerHookKey, Snapshot};

/// Content type of the exposition, as Prometheus negotiates it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Receiver of the latest snapshot; `None` until the first collection finished.
pub type SnapshotRx = watch::Receiver<Option<Arc<Snapshot>>>;

/// Builds the registry served at /metrics; `syscall_top` caps the syscall series per cgroup.
pub fn registry(snapshots: SnapshotRx, syscall_top: usize) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "berth_build",
        "berth's version",
        Info::new([("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register_collector(Box::new(SnapshotCollector {
        snapshots,
        syscall_top,
    }));
    registry
}

/// Renders the registry as OpenMetrics text.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    render_sized(registry, 16 * 1024)
}

/// [`render`] into a buffer of `capacity` bytes to start with (the last exposition's size:
/// no regrowth of a megabyte, copied each time).
fn render_sized(registry: &Registry, capacity: usize) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(capacity);
    encode(&mut out, registry)?;
    Ok(out)
}

/// `/metrics` encoded at most once per published snapshot: every scraper (Prometheus, the UI,
/// a curl) between two ticks gets the same bytes, and concurrent first requests wait for one
/// encoding instead of each doing it. Keyed by the snapshot itself (a weak pointer, so the
/// cache never keeps an old snapshot's contents alive), so a request after a tick always gets
/// that tick's values.
pub struct Exposition {
    registry: Registry,
    snapshots: SnapshotRx,
    cached: tokio::sync::Mutex<Option<(std::sync::Weak<Snapshot>, axum::body::Bytes)>>,
}

impl Exposition {
    /// The exposition of [`registry`]`(snapshots, syscall_top)`.
    pub fn new(snapshots: SnapshotRx, syscall_top: usize) -> Self {
        Self {
            registry: registry(snapshots.clone(), syscall_top),
            snapshots,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The latest snapshot's exposition, encoded now if this snapshot's is not cached yet.
    pub async fn bytes(&self) -> Result<axum::body::Bytes, std::fmt::Error> {
        let mut cached = self.cached.lock().await;
        let Some(latest) = self.snapshots.borrow().clone() else {
            // Nothing published yet: nothing worth keeping.
            return render(&self.registry).map(Into::into);
        };
        if let Some((of, bytes)) = cached.as_ref()
            && std::sync::Weak::ptr_eq(of, &Arc::downgrade(&latest))
        {
            return Ok(bytes.clone());
        }
        // The collector reads the channel again and may see a newer snapshot than `latest`:
        // then the next request finds the key stale and encodes again (never older values).
        let size = cached
            .as_ref()
            .map_or(16 * 1024, |(_, b)| b.len() + b.len() / 8);
        let bytes: axum::body::Bytes = render_sized(&self.registry, size)?.into();
        *cached = Some((Arc::downgrade(&latest), bytes.clone()));
        Ok(bytes)
    }
}

#[derive(Debug)]
struct SnapshotCollector {
    snapshots: SnapshotRx,
    syscall_top: usize,
}

/// The `top` busiest syscalls of a cgroup by count, the rest summed as `other`.
fn top_syscalls(calls: &[crate::model::SyscallCount], top: usize) -> Vec<(&str, u64)> {
    let mut sorted: Vec<&crate::model::SyscallCount> =
        calls.iter().filter(|c| c.count > 0).collect();
    sorted.sort_by(|a, b| b.count.cmp(&a.count).then(a.nr.cmp(&b.nr)));
    let mut out: Vec<(&str, u64)> = sorted
        .iter()
        .take(top)
        .map(|c| (&*c.name, c.count))
        .collect();
    let rest: u64 = sorted.iter().skip(top).map(|c| c.count).sum();
    if rest > 0 {
        match out.iter_mut().find(|(n, _)| *n == "other") {
            Some(o) => o.1 += rest,
            None => out.push(("other", rest)),
        }
    }
    out
}

/// Encodes one metric family: its descriptor, then one sample per (labels, value).
fn family<L, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: EncodeMetric,
{
    let mut fam = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(fam.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(snap) = self.snapshots.borrow().clone() else {
            return Ok(());
        };

        let probe = |p: &'static str| [("probe", Escaped(p))];
        family(
            &mut encoder,
            "berth_probe_up",
            "Whether the probe is attached (1) or down or disabled (0)",
            MetricType::Gauge,
            snap.probes
                .iter()
                .map(|p| (probe(p.name), ConstGauge::new(i64::from(p.attached)))),
        )?;
        family(
            &mut encoder,
            "berth_probe_lost_events",
            "Events a probe could not record because its map was full",
            MetricType::Counter,
            snap.lost_events.iter().map(|l| {
                (
                    [("probe", Escaped(l.probe)), ("map", Escaped(l.map))],
                    ConstCounter::new(l.count),
                )
            }),
        )?;
        family(
            &mut encoder,
            "berth_probe_run_seconds",
            "CPU time the probe's BPF programs ran, from the kernel's BPF statistics",
            MetricType::Counter,
            snap.probe_runs
                .iter()
                .map(|r| (probe(r.probe), ConstCounter::new(r.seconds))),
        )?;
        family(
            &mut encoder,
            "berth_probe_runs",
            "Times the probe's BPF programs ran",
            MetricType::Counter,
            snap.probe_runs
                .iter()
                .map(|r| (probe(r.probe), ConstCounter::new(r.runs))),
        )?;
        let collector = |c: &'static str| [("collector", Escaped(c))];
        family(
            &mut encoder,
            "berth_collector_duration_seconds",
            "Time the collector took in its last run",
            MetricType::Gauge,
            snap.collectors
                .iter()
                .map(|c| (collector(c.name), ConstGauge::new(c.duration_seconds))),
        )?;
        family(
            &mut encoder,
            "berth_collector_success",
            "Whether the collector's last run succeeded (1) or failed (0)",
            MetricType::Gauge,
            snap.collectors
                .iter()
                .map(|c| (collector(c.name), ConstGauge::new(i64::from(c.success)))),
        )?;

        family(
            &mut encoder,
            "berth_image_pulls",
            "Registry pulls since the agent started, by result (success or failure)",
            MetricType::Counter,
            [
                (
                    [("result", Escaped("success"))],
                    ConstCounter::new(snap.pulls.succeeded),
                ),
                (
                    [("result", Escaped("failure"))],
                    ConstCounter::new(snap.pulls.failed),
                ),
            ],
        )?;
        ConstCounter::new(snap.pulls.bytes).encode(encoder.encode_descriptor(
            "berth_image_pull_bytes",
            "Blob bytes downloaded from registries (configs and layers) since the agent started",
            None,
            MetricType::Counter,
        )?)?;

        // Each container's labels, rendered once for its dozen families and its cgroup's.
        let ids: Vec<Rendered> = snap
            .containers
            .iter()
            .map(|c| Rendered::ids(Some(c)))
            .collect();
        containers::encode(&snap, &ids, &mut encoder)?;
        encode_conntrack(&snap, &ids, &mut encoder)?;
        encode_netfilter(&snap, &ids, &mut encoder)?;
        encode_portmap_ebpf(&snap, &mut encoder)?;
        let p = &snap.proxies;
        for (name, help, v) in [
            (
                "berth_userland_proxy_processes",
                "Userland port-mapping proxy processes on the host (docker-proxy and kin)",
                p.processes as i64,
            ),
            (
                "berth_userland_proxy_memory_bytes",
                "Resident memory of the userland proxies",
                p.rss_bytes as i64,
            ),
        ] {
            ConstGauge::new(v).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        ConstCounter::new(p.cpu_seconds).encode(encoder.encode_descriptor(
            "berth_userland_proxy_cpu_seconds",
            "CPU time the running userland proxies used since they started",
            None,
            MetricType::Counter,
        )?)?;

        let mut fam = encoder.encode_descriptor(
            "berth_cgroup_syscalls",
            "Syscalls entered by tasks of the cgroup, by syscall, since the cgroup was first seen",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        let cgroups = snap.cgroups();
        // A container's cgroup carries its labels too, so no join is needed to select it.
        let owners: HashMap<&str, &Rendered> = snap
            .containers
            .iter()
            .zip(&ids)
            .filter(|(c, _)| c.cgroup_id.is_some())
            .map(|(c, ids)| (c.cgroup.as_str(), ids))
            .collect();
        let no_container = Rendered::ids(None);
        // Each cgroup's labels, rendered once for its syscall, latency and network series.
        let cgroups: Vec<(&CgroupView, Rendered)> = cgroups
            .iter()
            .map(|cg| {
                let ids = owners.get(cg.path).copied().unwrap_or(&no_container);
                (cg, Rendered::cgroup(cg.path, ids))
            })
            .collect();
        for (cg, labels) in &cgroups {
            for (name, count) in top_syscalls(cg.syscalls, self.syscall_top) {
                ConstCounter::new(count)
                    .encode(fam.encode_family(&(labels, [("syscall", Escaped(name))]))?)?;
            }
        }

        let mut fam = encoder.encode_descriptor(
            "berth_cgroup_syscall_latency_seconds",
            "Time tasks of the cgroup spent in syscalls, all syscalls together (probes.syscalls.latency)",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (cg, labels) in &cgroups {
            let with: Vec<_> = cg
                .syscalls
                .iter()
                .filter(|s| !s.latency_buckets.is_empty())
                .collect();
            if with.is_empty() {
                continue;
            }
            let mut buckets = vec![0u64; berth_common::LATENCY_BUCKETS];
            let mut sum_ns = 0u64;
            for s in with {
                for (b, n) in buckets.iter_mut().zip(&s.latency_buckets) {
                    *b += n;
                }
                sum_ns += s.latency_sum_ns;
            }
            let count: u64 = buckets.iter().sum();
            // Bucket i holds [2^i, 2^(i+1)) ns: its upper bound is 2^(i+1) ns; the last one
            // is open-ended and only counts toward +Inf.
            let last = buckets.len() - 1;
            let bounds: Vec<(f64, u64)> = buckets[..last]
                .iter()
                .enumerate()
                .map(|(i, n)| (2f64.powi(i as i32 + 1) / 1e9, *n))
                .collect();
            fam.encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum_ns as f64 / 1e9,
                    count,
                    &bounds,
                    None,
                )?;
        }

        for (name, help, get) in [
            (
                "berth_cgroup_network_packets",
                "Packets of the cgroup's sockets, by direction and L4 protocol",
                (|n: &crate::model::NetCount| n.packets) as fn(&crate::model::NetCount) -> u64,
            ),
            (
                "berth_cgroup_network_bytes",
                "Bytes (layer 3, IP header included) of the cgroup's sockets, by direction and L4 protocol",
                |n: &crate::model::NetCount| n.bytes,
            ),
        ] {
            let mut fam = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (cg, labels) in &cgroups {
                for n in cg.net {
                    ConstCounter::new(get(n)).encode(fam.encode_family(&(
                        labels,
                        [
                            ("direction", Escaped(n.direction)),
                            ("protocol", Escaped(n.protocol)),
                        ],
                    ))?)?;
                }
            }
        }
        Ok(())
    }
}

/// `berth_netfilter_*`: what rules, conntrack and NAT cost per hook (host-wide, every packet)
/// and per conntrack state; `berth_container_netfilter_*`: the part attributed to each
/// container through its published ports. Per-port detail is in /api/v1/ports.
fn encode_netfilter(
    snap: &Snapshot,
    ids: &[Rendered],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use std::collections::BTreeMap;
    let Some(nf) = &snap.netfilter else {
        return Ok(());
    };
    let hook = |h: &crate::model::HookTotal| {
        [
            ("family", Escaped(h.family.name())),
            ("hook", Escaped(h.hook.name())),
        ]
    };
    family(
        encoder,
        "berth_netfilter_hook_seconds",
        "Time netfilter spent on packets between berth's first and last program, per hook (all packets)",
        MetricType::Counter,
        nf.hooks
            .iter()
            .map(|h| (hook(h), ConstCounter::new(h.nanoseconds as f64 / 1e9))),
    )?;
    family(
        encoder,
        "berth_netfilter_hook_packets",
        "Packets that crossed the hook (all packets)",
        MetricType::Counter,
        nf.hooks
            .iter()
            .map(|h| (hook(h), ConstCounter::new(h.packets))),
    )?;
    // By conntrack state, host-wide; per container from the model's one attribution.
    type StateKey = (&'static str, &'static str, &'static str);
    let mut by_state: BTreeMap<StateKey, (u64, u64)> = BTreeMap::new();
    let rows = nf
        .by_port
        .iter()
        .map(|p| (p.family, p.hook, p.ct_state, p.packets, p.nanoseconds))
        .chain(
            nf.other
                .iter()
                .map(|o| (o.family, o.hook, o.ct_state, o.packets, o.nanoseconds)),
        );
    for (family, hook, state, packets, nanoseconds) in rows {
        let e = by_state
            .entry((family.name(), hook.name(), state.name()))
            .or_default();
        e.0 += packets;
        e.1 += nanoseconds;
    }
    let by_container = snap.container_netfilter();
    let state_labels = |(family, hook, state): &(&'static str, &'static str, &'static str)| {
        [
            ("family", Escaped(family)),
            ("hook", Escaped(hook)),
            ("ct_state", Escaped(state)),
        ]
    };
    family(
        encoder,
        "berth_netfilter_seconds",
        "Time netfilter spent per hook and conntrack state (packets with a port)",
        MetricType::Counter,
        by_state
            .iter()
            .map(|(k, (_, ns))| (state_labels(k), ConstCounter::new(*ns as f64 / 1e9))),
    )?;
    family(
        encoder,
        "berth_netfilter_packets",
        "Packets per hook and conntrack state (packets with a port)",
        MetricType::Counter,
        by_state
            .iter()
            .map(|(k, (packets, _))| (state_labels(k), ConstCounter::new(*packets))),
    )?;
    let no_container = Rendered::ids(None);
    let container_labels = |(i, hook, state): &ContainerHookKey| {
        (
            ids.get(*i).unwrap_or(&no_container),
            [
                ("hook", Escaped(hook.name())),
                ("ct_state", Escaped(state.name())),
            ],
        )
    };
    family(
        encoder,
        "berth_container_netfilter_seconds",
        "Time netfilter spent on packets to the container's published ports, per hook and conntrack state",
        MetricType::Counter,
        by_container.iter().map(|(k, c)| {
            (
                container_labels(k),
                ConstCounter::new(c.nanoseconds as f64 / 1e9),
            )
        }),
    )?;
    family(
        encoder,
        "berth_container_netfilter_packets",
        "Packets to the container's published ports, per hook and conntrack state",
        MetricType::Counter,
        by_container
            .iter()
            .map(|(k, c)| (container_labels(k), ConstCounter::new(c.packets))),
    )?;
    Ok(())
}

/// `berth_portmap_ebpf_*`: what the `ebpf` port-mapping data plane did, host-wide.
fn encode_portmap_ebpf(
    snap: &Snapshot,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let Some(e) = &snap.portmap_ebpf else {
        return Ok(());
    };
    family(
        encoder,
        "berth_portmap_ebpf_packets",
        "Packets for published ports the ebpf backend's programs handled: path fast (rewritten and \
         redirected past netfilter and conntrack) or slow (declined, left to its nft rules), by reason",
        MetricType::Counter,
        e.packets.iter().map(|p| {
            (
                [("path", Escaped(p.path)), ("reason", Escaped(p.reason))],
                ConstCounter::new(p.packets),
            )
        }),
    )?;
    family(
        encoder,
        "berth_portmap_ebpf_program_seconds",
        "CPU time the ebpf backend's programs ran (kernel BPF statistics): its cost, in place of \
         netfilter's",
        MetricType::Counter,
        e.programs.iter().map(|p| {
            (
                [("program", Escaped(p.program))],
                ConstCounter::new(p.seconds),
            )
        }),
    )?;
    family(
        encoder,
        "berth_portmap_ebpf_program_runs",
        "Runs of the ebpf backend's programs (one per packet or socket call)",
        MetricType::Counter,
        e.programs
            .iter()
            .map(|p| ([("program", Escaped(p.program))], ConstCounter::new(p.runs))),
    )
}

/// `berth_conntrack_*`: host-wide connection tracking (the agent's network namespace).
fn encode_conntrack(
    snap: &Snapshot,
    ids: &[Rendered],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    if let Some(ct) = &snap.conntrack {
        for (name, help, v) in [
            (
                "berth_conntrack_entries",
                "Connections tracked now",
                ct.entries,
            ),
            (
                "berth_conntrack_entries_limit",
                "nf_conntrack_max: the table's capacity",
                ct.max,
            ),
        ] {
            ConstGauge::new(v as i64).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                ConstGauge::new(0i64).metric_type(),
            )?)?;
        }
        for (name, help, v) in [
            (
                "berth_conntrack_new",
                "Connections conntrack created",
                ct.new,
            ),
            (
                "berth_conntrack_invalid",
                "Packets conntrack could not track",
                ct.invalid,
            ),
            (
                "berth_conntrack_insert_failed",
                "Entries that could not be inserted (races, clashes)",
                ct.insert_failed,
            ),
            (
                "berth_conntrack_drop",
                "Packets dropped because the table was full and nothing could be evicted",
                ct.drop,
            ),
            (
                "berth_conntrack_early_drop",
                "Entries evicted early to make room in a full table",
                ct.early_drop,
            ),
        ] {
            ConstCounter::new(v).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?)?;
        }
    }
    let mut fam = encoder.encode_descriptor(
        "berth_container_conntrack_entries",
        "Conntrack entries with the container's address (bridge mode)",
        None,
        ConstGauge::new(0i64).metric_type(),
    )?;
    for (c, ids) in snap.containers.iter().zip(ids) {
        if let Some(n) = c.conntrack_entries {
            ConstGauge::new(n as i64).encode(fam.encode_family(&ids)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod bench;
mod containers;
mod labels;

#[cfg(test)]
mod tests;
