//! `/metrics`: the latest [`Snapshot`] rendered as OpenMetrics with prometheus-client.
//!
//! Nothing is counted here: a custom [`Collector`] encodes the snapshot's cumulative values on
//! each scrape, so /metrics, the JSON API and the UI always agree. Names follow
//! `berth_<subsystem>_<quantity>_<unit>`; counters get `_total` from the encoder.

use std::{fmt::Write as _, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder, text::encode,
    },
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};
use tokio::sync::watch;

use crate::model::Snapshot;

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
    let mut out = String::with_capacity(16 * 1024);
    encode(&mut out, registry)?;
    Ok(out)
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
        .map(|c| (c.name.as_str(), c.count))
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

/// A label value escaped as the exposition format requires (`\\`, `\"`, `\n`): cgroup names
/// are chosen by whoever created them, and prometheus-client writes values verbatim.
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
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

        encode_containers(&snap, &mut encoder)?;
        encode_conntrack(&snap, &mut encoder)?;
        encode_netfilter(&snap, &mut encoder)?;
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
        for cg in &snap.cgroups {
            for (name, count) in top_syscalls(&cg.syscalls, self.syscall_top) {
                ConstCounter::new(count).encode(fam.encode_family(&[
                    ("cgroup", Escaped(&cg.path)),
                    ("syscall", Escaped(name)),
                ])?)?;
            }
        }

        let mut fam = encoder.encode_descriptor(
            "berth_cgroup_syscall_latency_seconds",
            "Time tasks of the cgroup spent in syscalls, all syscalls together (probes.syscalls.latency)",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for cg in &snap.cgroups {
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
            fam.encode_family(&[("cgroup", Escaped(&cg.path))])?
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
            for cg in &snap.cgroups {
                for n in &cg.net {
                    ConstCounter::new(get(n)).encode(fam.encode_family(&[
                        ("cgroup", Escaped(&cg.path)),
                        ("direction", Escaped(n.direction)),
                        ("protocol", Escaped(n.protocol)),
                    ])?)?;
                }
            }
        }
        Ok(())
    }
}

/// Which container publishes (proto, host port), from the containers' records.
pub fn port_owner(
    containers: &[crate::runtime::ContainerSample],
    proto: u8,
    port: u16,
) -> Option<&crate::runtime::ContainerSample> {
    containers.iter().find(|c| {
        c.view
            .record
            .network
            .publish
            .iter()
            .any(|p| p.covers(proto, port))
    })
}

/// `berth_netfilter_*`: what rules, conntrack and NAT cost per hook (host-wide, every packet)
/// and per conntrack state; `berth_container_netfilter_*`: the part attributed to each
/// container through its published ports. Per-port detail is in /api/v1/ports.
fn encode_netfilter(
    snap: &Snapshot,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use std::collections::BTreeMap;
    let Some(nf) = &snap.netfilter else {
        return Ok(());
    };
    let hook = |h: &crate::probes::netfilter::HookTotal| {
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
    // By conntrack state, host-wide and per container.
    type StateKey = (&'static str, &'static str, &'static str);
    let mut by_state: BTreeMap<StateKey, (u64, u64)> = BTreeMap::new();
    let mut by_container: BTreeMap<(usize, &'static str, &'static str), (u64, u64)> =
        BTreeMap::new();
    for p in &nf.by_port {
        let e = by_state
            .entry((p.family.name(), p.hook.name(), p.ct_state.name()))
            .or_default();
        e.0 += p.packets;
        e.1 += p.nanoseconds;
        if let Some(i) = port_owner(&snap.containers, p.proto, p.port)
            .and_then(|c| snap.containers.iter().position(|x| std::ptr::eq(x, c)))
        {
            let e = by_container
                .entry((i, p.hook.name(), p.ct_state.name()))
                .or_default();
            e.0 += p.packets;
            e.1 += p.nanoseconds;
        }
    }
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
    let container_labels = |(i, hook, state): &(usize, &'static str, &'static str)| {
        let r = &snap.containers[*i].view.record;
        [
            ("container", Escaped(&r.id)),
            ("name", Escaped(&r.name)),
            ("hook", Escaped(hook)),
            ("ct_state", Escaped(state)),
        ]
    };
    family(
        encoder,
        "berth_container_netfilter_seconds",
        "Time netfilter spent on packets to the container's published ports, per hook and conntrack state",
        MetricType::Counter,
        by_container
            .iter()
            .map(|(k, (_, ns))| (container_labels(k), ConstCounter::new(*ns as f64 / 1e9))),
    )?;
    family(
        encoder,
        "berth_container_netfilter_packets",
        "Packets to the container's published ports, per hook and conntrack state",
        MetricType::Counter,
        by_container
            .iter()
            .map(|(k, (packets, _))| (container_labels(k), ConstCounter::new(*packets))),
    )?;
    Ok(())
}

/// `berth_conntrack_*`: host-wide connection tracking (the agent's network namespace).
fn encode_conntrack(
    snap: &Snapshot,
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
    for c in &snap.containers {
        if let Some(n) = c.conntrack_entries {
            ConstGauge::new(n as i64).encode(fam.encode_family(&[
                ("container", Escaped(&c.view.record.id)),
                ("name", Escaped(&c.view.record.name)),
            ])?)?;
        }
    }
    Ok(())
}

/// `berth_container_*`: one series per container, labelled by id and name.
fn encode_containers<'a>(
    snap: &'a Snapshot,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use crate::cgroup::stats::ContainerStats;

    let mut fam = encoder.encode_descriptor(
        "berth_container",
        "A container berth manages, with its image and OCI runtime",
        None,
        prometheus_client::metrics::MetricType::Info,
    )?;
    for c in &snap.containers {
        let r = &c.view.record;
        // encode_family + encode_info would emit `{,` (prometheus-client 0.24): give the
        // labels to encode_info directly.
        fam.encode_info(&[
            ("container", Escaped(&r.id)),
            ("name", Escaped(&r.name)),
            ("image", Escaped(&r.image)),
            ("runtime", Escaped(&r.runtime)),
            // Joins the berth_cgroup_* series: `* on(cgroup) group_left(name) berth_container_info`.
            ("cgroup", Escaped(&r.cgroup)),
        ])?;
    }

    let labels = |c: &'a crate::runtime::ContainerSample| {
        [
            ("container", Escaped(&c.view.record.id)),
            ("name", Escaped(&c.view.record.name)),
        ]
    };
    family(
        encoder,
        "berth_container_running",
        "Whether the container's process is running (1) or not (0)",
        MetricType::Gauge,
        snap.containers.iter().map(|c| {
            (
                labels(c),
                ConstGauge::new(i64::from(c.view.status == "running")),
            )
        }),
    )?;
    family(
        encoder,
        "berth_container_restarts",
        "Times the restart policy restarted the container",
        MetricType::Counter,
        snap.containers.iter().map(|c| {
            (
                labels(c),
                ConstCounter::new(u64::from(c.view.state.restart_count)),
            )
        }),
    )?;
    family(
        encoder,
        "berth_container_oom_kills",
        "Processes of the container killed by the kernel's OOM killer",
        MetricType::Counter,
        snap.containers.iter().map(|c| {
            // Past runs (recorded by the shim) plus the running one's cgroup.
            let live = c.stats.as_ref().map_or(0, |s| s.oom_kills);
            (labels(c), ConstCounter::new(c.view.state.oom_kills + live))
        }),
    )?;

    type Getter = fn(&ContainerStats) -> Option<f64>;
    let counters: [(&str, &str, Getter); 5] = [
        (
            "berth_container_cpu_user_seconds",
            "CPU time the container spent in user mode",
            |s| Some(s.cpu_user_seconds),
        ),
        (
            "berth_container_cpu_system_seconds",
            "CPU time the container spent in the kernel",
            |s| Some(s.cpu_system_seconds),
        ),
        (
            "berth_container_memory_failcnt",
            "Times the container's memory usage hit its limit",
            |s| Some(s.memory_failcnt as f64),
        ),
        (
            "berth_container_io_read_bytes",
            "Bytes the container read from block devices",
            |s| Some(s.io_read_bytes as f64),
        ),
        (
            "berth_container_io_write_bytes",
            "Bytes the container wrote to block devices",
            |s| Some(s.io_write_bytes as f64),
        ),
    ];
    for (name, help, get) in counters {
        family(
            encoder,
            name,
            help,
            MetricType::Counter,
            snap.containers.iter().filter_map(|c| {
                let v = c.stats.as_ref().and_then(get)?;
                Some((labels(c), ConstCounter::new(v)))
            }),
        )?;
    }
    let gauges: [(&str, &str, Getter); 5] = [
        (
            "berth_container_memory_usage_bytes",
            "Memory the container uses now",
            |s| Some(s.memory_usage_bytes as f64),
        ),
        (
            "berth_container_memory_limit_bytes",
            "The container's memory limit (absent when unlimited)",
            |s| s.memory_limit_bytes.map(|v| v as f64),
        ),
        (
            "berth_container_memory_max_usage_bytes",
            "Highest memory use the kernel recorded for the container",
            |s| s.memory_max_usage_bytes.map(|v| v as f64),
        ),
        (
            "berth_container_pids",
            "Processes and threads in the container",
            |s| Some(s.pids_current as f64),
        ),
        (
            "berth_container_pids_limit",
            "The container's process limit (absent when unlimited)",
            |s| s.pids_limit.map(|v| v as f64),
        ),
    ];
    for (name, help, get) in gauges {
        family(
            encoder,
            name,
            help,
            MetricType::Gauge,
            snap.containers.iter().filter_map(|c| {
                let v = c.stats.as_ref().and_then(get)?;
                Some((labels(c), ConstGauge::new(v)))
            }),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    #[test]
    fn only_the_busiest_syscalls_get_their_own_series() {
        let call = |nr: u32, name: &str, count: u64| crate::model::SyscallCount {
            nr,
            name: name.into(),
            count,
            latency_buckets: vec![],
            latency_sum_ns: 0,
        };
        let calls = vec![
            call(0, "read", 5),
            call(1, "write", 50),
            call(39, "getpid", 7),
            call(2, "open", 0),
        ];
        assert_eq!(
            top_syscalls(&calls, 2),
            vec![("write", 50), ("getpid", 7), ("other", 5)]
        );
        assert_eq!(
            top_syscalls(&calls, 10).len(),
            3,
            "zero counts are not exported"
        );
    }

    use super::*;
    use crate::model::{CgroupSample, CollectorRun, LostEvents, ProbeStatus, SyscallCount};

    fn snapshot() -> Snapshot {
        Snapshot {
            taken_at: SystemTime::UNIX_EPOCH,
            cgroups: vec![CgroupSample {
                id: 7,
                path: "/berth/we\"ird\\name".into(),
                syscalls: vec![SyscallCount {
                    nr: 110,
                    name: "getppid".into(),
                    count: 100_000,
                    latency_buckets: vec![],
                    latency_sum_ns: 0,
                }],
                net: vec![],
            }],
            probes: vec![ProbeStatus {
                name: "syscalls",
                attach: "raw_tracepoint/sys_enter",
                enabled: true,
                attached: true,
                program_ids: vec![1],
                error: None,
                paths: Default::default(),
            }],
            probe_runs: vec![],
            lost_events: vec![LostEvents {
                probe: "syscalls",
                map: "SYSCALLS",
                count: 0,
            }],
            collectors: vec![CollectorRun {
                name: "syscalls",
                duration_seconds: 0.001,
                success: true,
                error: None,
            }],
            containers: vec![],
            conntrack: None,
            netfilter: None,
            proxies: Default::default(),
        }
    }

    #[test]
    fn the_exposition_has_the_documented_shape() {
        let (_tx, rx) = watch::channel(Some(Arc::new(snapshot())));
        let text = render(&registry(rx, 20)).unwrap();
        let expected = [
            "# TYPE berth_build info",
            "berth_build_info{version=\"",
            "# TYPE berth_probe_up gauge",
            "berth_probe_up{probe=\"syscalls\"} 1",
            "berth_probe_lost_events_total{probe=\"syscalls\",map=\"SYSCALLS\"} 0",
            "berth_collector_success{collector=\"syscalls\"} 1",
            "# TYPE berth_cgroup_syscalls counter",
            "berth_cgroup_syscalls_total{cgroup=\"/berth/we\\\"ird\\\\name\",syscall=\"getppid\"} 100000",
        ];
        for line in expected {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("berth_userland_proxy_processes 0\n"),
            "{text}"
        );
        assert!(
            !text.contains("{}") && !text.contains("{,"),
            "empty label sets:\n{text}"
        );
    }

    #[test]
    fn before_the_first_snapshot_only_build_info_is_exposed() {
        let (_tx, rx) = watch::channel(None);
        let text = render(&registry(rx, 20)).unwrap();
        assert!(text.contains("berth_build_info"), "{text}");
        assert!(!text.contains("berth_probe_up"), "{text}");
    }
}
