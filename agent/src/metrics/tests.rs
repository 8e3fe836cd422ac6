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
use crate::model::fixture;

fn snapshot() -> Snapshot {
    fixture::snapshot()
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
        "berth_collector_success{collector=\"containers\"} 1",
        "# TYPE berth_cgroup_syscalls counter",
        "berth_cgroup_syscalls_total{cgroup=\"/berth/we\\\"ird\\\\name\",container=\"\",name=\"\",engine=\"\",k8s_namespace=\"\",k8s_pod=\"\",syscall=\"getppid\"} 100000",
    ];
    for line in expected {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("berth_userland_proxy_processes 2\n"),
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

/// The whole exposition of the fixture snapshot, byte for byte (node_exporter's
/// end-to-end test is the model): a renamed metric, label or help text fails here.
/// `BERTH_GOLDEN=update cargo test -p berth --lib metrics` rewrites the file after a
/// deliberate change.
#[test]
fn the_fixture_renders_exactly_the_golden_exposition() {
    let (_tx, rx) = watch::channel(Some(Arc::new(snapshot())));
    let text = render(&registry(rx, 20))
        .unwrap()
        .replace(env!("CARGO_PKG_VERSION"), "VERSION");
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fixture-metrics.txt");
    if std::env::var("BERTH_GOLDEN").as_deref() == Ok("update") {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (BERTH_GOLDEN=update writes it)", path.display()));
    if text != golden {
        let diff: Vec<String> = golden
            .lines()
            .filter(|l| !text.lines().any(|t| t == *l))
            .map(|l| format!("- {l}"))
            .chain(
                text.lines()
                    .filter(|l| !golden.lines().any(|g| g == *l))
                    .map(|l| format!("+ {l}")),
            )
            .collect();
        panic!(
            "/metrics of the fixture differs from {}:\n{}",
            path.display(),
            diff.join("\n")
        );
    }
}

/// A pod's container carries its pod and namespace on every series, its cgroup's included;
/// other engines' containers carry their engine and empty `k8s_*` labels, so each family has
/// one label set.
#[test]
fn every_per_container_series_carries_engine_and_kubernetes_labels() {
    use crate::model::{Engine, LABEL_K8S_NAMESPACE, LABEL_K8S_POD};
    let mut snap = snapshot();
    let mut pod = snap.containers[0].clone();
    pod.engine = Engine::Kubernetes;
    pod.id = "d".repeat(64);
    pod.name = "shop/web-0/nginx".into();
    pod.cgroup = format!("/kubepods/burstable/pod0b6c/{}", pod.id);
    pod.cgroup_id = Some(4242);
    pod.berth = None;
    pod.labels = [
        (LABEL_K8S_NAMESPACE.to_owned(), "shop".to_owned()),
        (LABEL_K8S_POD.to_owned(), "web-0".to_owned()),
    ]
    .into();
    // The same labels on a Docker container mean nothing: only a pod's are read.
    let mut docker = pod.clone();
    docker.engine = Engine::Docker;
    docker.id = "e".repeat(64);
    docker.name = "media2".into();
    docker.cgroup = format!("/docker/{}", docker.id);
    docker.cgroup_id = Some(4343);
    snap.containers.extend([pod, docker]);
    let (_tx, rx) = watch::channel(Some(Arc::new(snap)));
    let text = render(&registry(rx, 20)).unwrap();
    let (d, e) = ("d".repeat(64), "e".repeat(64));
    let pod_ids = format!(
        "container=\"{d}\",name=\"shop/web-0/nginx\",engine=\"kubernetes\",k8s_namespace=\"shop\",k8s_pod=\"web-0\""
    );
    let docker_ids = format!(
        "container=\"{e}\",name=\"media2\",engine=\"docker\",k8s_namespace=\"\",k8s_pod=\"\""
    );
    for line in [
        format!("berth_container_running{{{pod_ids}}} 1"),
        format!("berth_container_memory_usage_bytes{{{pod_ids}}} "),
        format!("berth_container_info{{{pod_ids},image=\"/srv/rootfs\",runtime=\"\","),
        format!(
            "berth_cgroup_syscalls_total{{cgroup=\"/kubepods/burstable/pod0b6c/{d}\",{pod_ids},syscall="
        ),
        format!(
            "berth_cgroup_network_bytes_total{{cgroup=\"/kubepods/burstable/pod0b6c/{d}\",{pod_ids},direction="
        ),
        format!("berth_container_running{{{docker_ids}}} 1"),
        format!("berth_cgroup_syscalls_total{{cgroup=\"/docker/{e}\",{docker_ids},syscall="),
    ] {
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
    // One label set per family: every sample of a family has the same label names.
    let mut sets: std::collections::BTreeMap<&str, std::collections::BTreeSet<Vec<&str>>> =
        Default::default();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = l.split_once('{') else {
            continue;
        };
        let names: Vec<&str> = rest
            .split("\",")
            .filter_map(|kv| kv.split_once("=\"").map(|(k, _)| k))
            .collect();
        sets.entry(name.trim_end_matches("_bucket"))
            .or_default()
            .insert(names);
    }
    for (family, s) in &sets {
        if family.starts_with("berth_container") || family.starts_with("berth_cgroup") {
            assert_eq!(s.len(), 1, "{family} has label sets {s:?}");
        }
    }
}

#[test]
fn a_docker_container_s_port_mapping_and_netfilter_cost_per_hook_are_exposed() {
    let snap = fixture::docker_host_at(std::time::Duration::ZERO, 100);
    let (_tx, rx) = watch::channel(Some(Arc::new(snap)));
    let text = render(&registry(rx, 20)).unwrap();
    let id = fixture::SFU_ID;
    let sfu = format!(
        "container=\"{id}\",name=\"sfu\",engine=\"docker\",k8s_namespace=\"\",k8s_pod=\"\""
    );
    for line in [
        format!("berth_container_port_mapping_rules{{{sfu}}} 3001\n"),
        format!("berth_container_userland_proxy_processes{{{sfu}}} 2000\n"),
        format!("berth_container_userland_proxy_memory_bytes{{{sfu}}} 6900000000\n"),
        format!("berth_container_userland_proxy_cpu_seconds_total{{{sfu}}} 13.0\n"),
        format!(
            "berth_container_netfilter_packets_total{{{sfu},hook=\"postrouting\",ct_state=\"new\"}} 1000\n"
        ),
        format!(
            "berth_container_netfilter_seconds_total{{{sfu},hook=\"postrouting\",ct_state=\"new\"}} 0.0186\n"
        ),
        format!(
            "berth_container_netfilter_packets_total{{{sfu},hook=\"forward\",ct_state=\"new\"}} 1000\n"
        ),
    ] {
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
    // A host-networking container and berth's own have no port-mapping series; the portless
    // bridge container's one raw rule is counted.
    for id in [fixture::HOSTNET_ID, fixture::MAP_ID] {
        let series = format!("berth_container_port_mapping_rules{{container=\"{id}\"");
        assert!(!text.contains(&series), "{series}");
    }
    assert!(text.contains(&format!(
        "berth_container_port_mapping_rules{{container=\"{}\",name=\"worker\",engine=\"docker\",k8s_namespace=\"\",k8s_pod=\"\"}} 1\n",
        fixture::WORKER_ID
    )));
}
