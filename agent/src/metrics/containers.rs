//! `berth_container_*`: one series per container (any engine), labelled by id and name: its
//! identity (`berth_container_info`), state, restarts, OOM kills and cgroup usage.

use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::{Escaped, family};
use crate::model::{Container, Snapshot, Status};

/// `berth_container_*`: one series per container, labelled by id and name.
pub(super) fn encode<'a>(
    snap: &'a Snapshot,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use crate::model::ContainerStats;

    let mut fam = encoder.encode_descriptor(
        "berth_container",
        "A container berth manages, with its image and OCI runtime",
        None,
        prometheus_client::metrics::MetricType::Info,
    )?;
    for c in &snap.containers {
        // encode_family + encode_info would emit `{,` (prometheus-client 0.24): give the
        // labels to encode_info directly.
        fam.encode_info(&[
            ("container", Escaped(&c.id)),
            ("name", Escaped(&c.name)),
            ("image", Escaped(&c.image)),
            ("runtime", Escaped(c.runtime().unwrap_or(""))),
            // Joins the berth_cgroup_* series: `* on(cgroup) group_left(name) berth_container_info`.
            ("cgroup", Escaped(&c.cgroup)),
            ("engine", Escaped(c.engine.name())),
        ])?;
    }

    let labels = |c: &'a Container| [("container", Escaped(&c.id)), ("name", Escaped(&c.name))];
    family(
        encoder,
        "berth_container_running",
        "Whether the container's process is running (1) or not (0)",
        MetricType::Gauge,
        snap.containers.iter().map(|c| {
            (
                labels(c),
                ConstGauge::new(i64::from(c.status == Status::Running)),
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
                ConstCounter::new(u64::from(c.state.restart_count)),
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
            (labels(c), ConstCounter::new(c.oom_kills()))
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
