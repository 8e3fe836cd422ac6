//! `berth_container_*`: one series per container (any engine), labelled by [`ids`]: its
//! identity (`berth_container_info`), state, restarts, OOM kills, cgroup usage, and for other
//! engines' containers the per-port rules and userland proxies their published ports cost.

use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::{
    family,
    labels::{Escaped, Rendered},
};
use crate::model::{Container, Snapshot, Status};

/// The labels of every per-container series: `container` (the id), `name`, `engine`,
/// `k8s_namespace` and `k8s_pod`, so one selector finds a container without a join
/// (`{k8s_namespace="shop",k8s_pod="web-0"}`, `{engine="docker",name="media"}`). The same set
/// in every series of a family: values are empty where they do not apply (outside Kubernetes;
/// a cgroup of no container), which Prometheus treats as the label being absent.
pub(super) fn ids(c: Option<&Container>) -> [(&'static str, &str); 5] {
    [
        ("container", c.map_or("", |c| &c.id)),
        ("name", c.map_or("", |c| &c.name)),
        ("engine", c.map_or("", |c| c.engine.name())),
        (
            "k8s_namespace",
            c.and_then(Container::k8s_namespace).unwrap_or(""),
        ),
        ("k8s_pod", c.and_then(Container::k8s_pod).unwrap_or("")),
    ]
}

/// `berth_container_*`: one series per container, labelled by [`ids`] (`ids[i]` rendered for
/// `snap.containers[i]`).
pub(super) fn encode(
    snap: &Snapshot,
    ids: &[Rendered],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use crate::model::ContainerStats;

    let mut fam = encoder.encode_descriptor(
        "berth_container",
        "A container on the host, any engine, with its image, OCI runtime (berth's) and cgroup",
        None,
        prometheus_client::metrics::MetricType::Info,
    )?;
    for (c, ids) in snap.containers.iter().zip(ids) {
        // encode_family + encode_info would emit `{,` (prometheus-client 0.24): give the
        // labels to encode_info directly.
        fam.encode_info(&(
            ids,
            [
                ("image", Escaped(&c.image)),
                // The OCI runtime (runc, crun) of berth's own containers; the engine is `engine`.
                ("runtime", Escaped(c.runtime().unwrap_or(""))),
                ("cgroup", Escaped(&c.cgroup)),
            ],
        ))?;
    }

    // Each container with its rendered labels.
    let containers = || snap.containers.iter().zip(ids);
    family(
        encoder,
        "berth_container_running",
        "Whether the container's process is running (1) or not (0)",
        MetricType::Gauge,
        containers().map(|(c, labels)| {
            (
                labels,
                ConstGauge::new(i64::from(c.status == Status::Running)),
            )
        }),
    )?;
    family(
        encoder,
        "berth_container_restarts",
        "Times the restart policy restarted the container",
        MetricType::Counter,
        containers()
            .map(|(c, labels)| (labels, ConstCounter::new(u64::from(c.state.restart_count)))),
    )?;
    family(
        encoder,
        "berth_container_oom_kills",
        "Processes of the container killed by the kernel's OOM killer",
        MetricType::Counter,
        containers().map(|(c, labels)| {
            // Past runs (recorded by the shim) plus the running one's cgroup.
            (labels, ConstCounter::new(c.oom_kills()))
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
            containers().filter_map(|(c, labels)| {
                let v = c.stats.as_ref().and_then(get)?;
                Some((labels, ConstCounter::new(v)))
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
            containers().filter_map(|(c, labels)| {
                let v = c.stats.as_ref().and_then(get)?;
                Some((labels, ConstGauge::new(v)))
            }),
        )?;
    }

    // What other engines' published ports cost outside netfilter's time (which is
    // berth_container_netfilter_*): per-port rules and userland proxies.
    family(
        encoder,
        "berth_container_port_mapping_rules",
        "iptables rules (iptables-nft and iptables-legacy, every table) that point at the container's address; other engines' containers",
        MetricType::Gauge,
        containers().filter_map(|(c, labels)| {
            let rules = c.port_mapping.rules?;
            Some((labels, ConstGauge::new(rules as i64)))
        }),
    )?;
    let proxied = || containers().filter(|(c, _)| c.port_mapping.proxies.processes > 0);
    family(
        encoder,
        "berth_container_userland_proxy_processes",
        "Userland proxy processes (docker-proxy) forwarding to the container's address",
        MetricType::Gauge,
        proxied().map(|(c, labels)| {
            let n = c.port_mapping.proxies.processes as i64;
            (labels, ConstGauge::new(n))
        }),
    )?;
    family(
        encoder,
        "berth_container_userland_proxy_memory_bytes",
        "Resident memory of the userland proxies forwarding to the container's address",
        MetricType::Gauge,
        proxied().map(|(c, labels)| {
            let n = c.port_mapping.proxies.rss_bytes as i64;
            (labels, ConstGauge::new(n))
        }),
    )?;
    family(
        encoder,
        "berth_container_userland_proxy_cpu_seconds",
        "CPU time the running userland proxies forwarding to the container's address used since they started",
        MetricType::Counter,
        proxied().map(|(c, labels)| {
            let s = c.port_mapping.proxies.cpu_seconds;
            (labels, ConstCounter::new(s))
        }),
    )?;
    Ok(())
}
