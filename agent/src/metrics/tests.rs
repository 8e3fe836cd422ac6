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
        "berth_cgroup_syscalls_total{cgroup=\"/berth/we\\\"ird\\\\name\",syscall=\"getppid\"} 100000",
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
