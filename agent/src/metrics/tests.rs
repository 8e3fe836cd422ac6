#[test]
fn only_the_busiest_syscalls_get_their_own_series() {
    let call = |nr: u32, name: &'static str, count: u64| crate::model::SyscallCount {
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

/// docs/metrics.md: every family the agent exposes, with its type, labels and help, written
/// from what the registry renders for the fixtures (berth's containers, and a Docker host's),
/// so the reference cannot drift from the code. `BERTH_GOLDEN=update` rewrites it.
#[test]
fn docs_metrics_md_is_what_the_registry_renders() {
    use std::collections::{BTreeMap, BTreeSet};

    // family -> (type, help, label names)
    let mut families: BTreeMap<String, (String, String, BTreeSet<String>)> = BTreeMap::new();
    // Latency histograms exist only with probes.syscalls.latency on: give one syscall some.
    let mut with_latency = snapshot();
    if let Some(call) = with_latency
        .containers
        .iter_mut()
        .flat_map(|c| c.syscalls.iter_mut())
        .next()
    {
        call.latency_buckets = vec![0, 3, 1];
        call.latency_sum_ns = 12;
    }
    for snap in [
        with_latency,
        fixture::docker_host_at(std::time::Duration::ZERO, 100),
    ] {
        let (_tx, rx) = watch::channel(Some(Arc::new(snap)));
        let text = render(&registry(rx, 20)).unwrap();
        let mut help: BTreeMap<String, String> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, h) = rest.split_once(' ').unwrap_or((rest, ""));
                help.insert(name.to_owned(), h.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                let e = families.entry(name.to_owned()).or_default();
                e.0 = kind.to_owned();
                e.1 = help.get(name).cloned().unwrap_or_default();
            } else if !line.starts_with('#') {
                let Some((series, rest)) = line.split_once('{') else {
                    continue;
                };
                let family = families
                    .keys()
                    .filter(|f| series.starts_with(f.as_str()))
                    .max_by_key(|f| f.len())
                    .cloned();
                let Some(family) = family else { continue };
                let inner = rest.rsplit_once('}').map_or("", |(i, _)| i);
                let labels = families.get_mut(&family).unwrap();
                for kv in inner.split("\",") {
                    if let Some((k, _)) = kv.split_once("=\"")
                        && k != "le"
                    {
                        labels.2.insert(k.to_owned());
                    }
                }
            }
        }
    }
    let suffix = |kind: &str| match kind {
        "counter" => "_total",
        "info" => "_info",
        _ => "",
    };
    let mut md = String::from(
        "# berth metrics\n\n\
         Every family `/metrics` serves (OpenMetrics), generated from the registry by \
         `BERTH_GOLDEN=update cargo test -p berth --lib docs_metrics_md` and checked by that \
         test. Per-container series carry `container` (the id), `name`, `engine`, \
         `k8s_namespace` and `k8s_pod` (empty where they do not apply), so one selector finds \
         a container without a join. Histograms add `le`.\n\n\
         | metric | type | labels | help |\n|---|---|---|---|\n",
    );
    for (name, (kind, help, labels)) in &families {
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        md.push_str(&format!(
            "| `{name}{}` | {kind} | {} | {} |\n",
            suffix(kind),
            labels.join(", "),
            help.replace('|', "\\|")
        ));
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    if std::env::var("BERTH_GOLDEN").as_deref() == Ok("update") {
        std::fs::write(&path, &md).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (BERTH_GOLDEN=update writes it)", path.display()));
    assert!(
        have == md,
        "docs/metrics.md differs from what the registry renders; run \
         BERTH_GOLDEN=update cargo test -p berth --lib docs_metrics_md\n{md}"
    );
}

/// A label set rendered once is written exactly as prometheus-client writes the same labels
/// one by one: escapes, empty values, alone, behind a cgroup path, followed by more labels and
/// after a histogram's `le`.
#[test]
fn rendered_labels_are_the_bytes_the_encoder_writes_label_by_label() {
    #[derive(Debug)]
    struct Both {
        rendered: bool,
    }
    use prometheus_client::encoding::NoLabelSet;
    impl Collector for Both {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let pairs = [
                ("container", "a\"b\\c\nd\"\""),
                ("name", ""),
                ("k8s_pod", "web-0"),
            ];
            let path = "/berth/we\"ird\\name\n";
            let mut fam = encoder.encode_descriptor("t", "Help", None, MetricType::Gauge)?;
            let syscall = || [("syscall", Escaped("read"))];
            if self.rendered {
                let ids = Rendered::of(pairs);
                let cgroup = Rendered::cgroup(path, &ids);
                ConstGauge::new(1i64).encode(fam.encode_family(&&ids)?)?;
                ConstGauge::new(2i64).encode(fam.encode_family(&(&ids, syscall()))?)?;
                ConstGauge::new(3i64).encode(fam.encode_family(&(&cgroup, syscall()))?)?;
                let mut fam =
                    encoder.encode_descriptor("h", "Help", None, MetricType::Histogram)?;
                fam.encode_family(&&cgroup)?
                    .encode_histogram::<NoLabelSet>(0.5, 2, &[(1e-9, 1), (2e-9, 1)], None)?;
            } else {
                let ids = pairs.map(|(k, v)| (k, Escaped(v)));
                let cgroup = || {
                    (
                        [("cgroup", Escaped(path))],
                        pairs.map(|(k, v)| (k, Escaped(v))),
                    )
                };
                ConstGauge::new(1i64).encode(fam.encode_family(&ids)?)?;
                ConstGauge::new(2i64).encode(fam.encode_family(&(ids, syscall()))?)?;
                ConstGauge::new(3i64).encode(fam.encode_family(&(cgroup(), syscall()))?)?;
                let mut fam =
                    encoder.encode_descriptor("h", "Help", None, MetricType::Histogram)?;
                fam.encode_family(&cgroup())?
                    .encode_histogram::<NoLabelSet>(0.5, 2, &[(1e-9, 1), (2e-9, 1)], None)?;
            }
            Ok(())
        }
    }
    let render_with = |rendered| {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Both { rendered }));
        render(&registry).unwrap()
    };
    let (rendered, by_label) = (render_with(true), render_with(false));
    assert!(
        by_label.contains(r#"t{container="a\"b\\c\nd\"\"",name="",k8s_pod="web-0"} 1"#),
        "{by_label}"
    );
    assert!(
        by_label.contains(r#"t{cgroup="/berth/we\"ird\\name\n",container="#),
        "{by_label}"
    );
    assert!(
        by_label.contains(r#"h_bucket{le="#) && by_label.contains(r#"",cgroup="/berth/we\"ird"#),
        "{by_label}"
    );
    assert_eq!(rendered, by_label);
}
