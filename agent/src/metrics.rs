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
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};
use tokio::sync::watch;

use crate::model::Snapshot;

/// Content type of the exposition, as Prometheus negotiates it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Receiver of the latest snapshot; `None` until the first collection finished.
pub type SnapshotRx = watch::Receiver<Option<Arc<Snapshot>>>;

/// Builds the registry served at /metrics.
pub fn registry(snapshots: SnapshotRx) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "berth_build",
        "berth's version",
        Info::new([("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register_collector(Box::new(SnapshotCollector { snapshots }));
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

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(snap) = self.snapshots.borrow().clone() else {
            return Ok(());
        };

        let mut fam = encoder.encode_descriptor(
            "berth_probe_up",
            "Whether the probe is attached (1) or down or disabled (0)",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for p in &snap.probes {
            ConstGauge::new(i64::from(p.attached))
                .encode(fam.encode_family(&[("probe", Escaped(p.name))])?)?;
        }

        let mut fam = encoder.encode_descriptor(
            "berth_probe_lost_events",
            "Events a probe could not record because its map was full",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for l in &snap.lost_events {
            ConstCounter::new(l.count).encode(
                fam.encode_family(&[("probe", Escaped(l.probe)), ("map", Escaped(l.map))])?,
            )?;
        }

        let mut fam = encoder.encode_descriptor(
            "berth_collector_duration_seconds",
            "Time the collector took in its last run",
            None,
            ConstGauge::new(0f64).metric_type(),
        )?;
        for c in &snap.collectors {
            ConstGauge::new(c.duration_seconds)
                .encode(fam.encode_family(&[("collector", Escaped(c.name))])?)?;
        }
        let mut fam = encoder.encode_descriptor(
            "berth_collector_success",
            "Whether the collector's last run succeeded (1) or failed (0)",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for c in &snap.collectors {
            ConstGauge::new(i64::from(c.success))
                .encode(fam.encode_family(&[("collector", Escaped(c.name))])?)?;
        }

        encode_containers(&snap, &mut encoder)?;

        let mut fam = encoder.encode_descriptor(
            "berth_cgroup_syscalls",
            "Syscalls entered by tasks of the cgroup, by syscall, since the cgroup was first seen",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for cg in &snap.cgroups {
            for s in &cg.syscalls {
                ConstCounter::new(s.count).encode(fam.encode_family(&[
                    ("cgroup", Escaped(&cg.path)),
                    ("syscall", Escaped(&s.name)),
                ])?)?;
            }
        }
        Ok(())
    }
}

/// `berth_container_*`: one series per container, labelled by id and name.
fn encode_containers(
    snap: &Snapshot,
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
        ])?;
    }

    let labels = |c: &crate::runtime::ContainerSample| {
        [
            ("container", c.view.record.id.clone()),
            ("name", c.view.record.name.clone()),
        ]
    };
    let mut fam = encoder.encode_descriptor(
        "berth_container_running",
        "Whether the container's process is running (1) or not (0)",
        None,
        ConstGauge::new(0i64).metric_type(),
    )?;
    for c in &snap.containers {
        let l = labels(c);
        ConstGauge::new(i64::from(c.view.status == "running")).encode(
            fam.encode_family(&[("container", Escaped(&l[0].1)), ("name", Escaped(&l[1].1))])?,
        )?;
    }
    let mut fam = encoder.encode_descriptor(
        "berth_container_restarts",
        "Times the restart policy restarted the container",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    for c in &snap.containers {
        let l = labels(c);
        ConstCounter::new(u64::from(c.view.state.restart_count)).encode(
            fam.encode_family(&[("container", Escaped(&l[0].1)), ("name", Escaped(&l[1].1))])?,
        )?;
    }
    let mut fam = encoder.encode_descriptor(
        "berth_container_oom_kills",
        "Processes of the container killed by the kernel's OOM killer",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    for c in &snap.containers {
        let l = labels(c);
        let live = c.stats.as_ref().map_or(0, |s| s.oom_kills);
        ConstCounter::new(c.view.state.oom_kills + live).encode(
            fam.encode_family(&[("container", Escaped(&l[0].1)), ("name", Escaped(&l[1].1))])?,
        )?;
    }

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
        let mut fam =
            encoder.encode_descriptor(name, help, None, ConstCounter::new(0f64).metric_type())?;
        for c in &snap.containers {
            let Some(v) = c.stats.as_ref().and_then(get) else {
                continue;
            };
            let l = labels(c);
            ConstCounter::new(v).encode(
                fam.encode_family(&[("container", Escaped(&l[0].1)), ("name", Escaped(&l[1].1))])?,
            )?;
        }
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
        let mut fam =
            encoder.encode_descriptor(name, help, None, ConstGauge::new(0f64).metric_type())?;
        for c in &snap.containers {
            let Some(v) = c.stats.as_ref().and_then(get) else {
                continue;
            };
            let l = labels(c);
            ConstGauge::new(v).encode(
                fam.encode_family(&[("container", Escaped(&l[0].1)), ("name", Escaped(&l[1].1))])?,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

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
                }],
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
        }
    }

    #[test]
    fn the_exposition_has_the_documented_shape() {
        let (_tx, rx) = watch::channel(Some(Arc::new(snapshot())));
        let text = render(&registry(rx)).unwrap();
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
    }

    #[test]
    fn before_the_first_snapshot_only_build_info_is_exposed() {
        let (_tx, rx) = watch::channel(None);
        let text = render(&registry(rx)).unwrap();
        assert!(text.contains("berth_build_info"), "{text}");
        assert!(!text.contains("berth_probe_up"), "{text}");
    }
}
