//! What encoding `/metrics` costs on a host the size issue 14 measures: 100 berth containers
//! (one publishing 20,000 UDP ports) and 200 other engines' (Docker and Kubernetes pods), each
//! with cgroup stats, 22 syscalls and socket counts, shaped like the collectors' records.
//!
//! `a_host_of_300_containers_renders_the_recorded_bytes` pins the whole exposition (its length
//! and an FNV-1a hash), so a faster encoder provably writes the same bytes at this scale too;
//! `metrics_encode_cost` prints the time per encode (release build):
//! `cargo test -p berth --release --lib metrics_encode_cost -- --ignored --nocapture`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::render;
use crate::model::{
    CtState, Engine, Family, Hook, LABEL_K8S_NAMESPACE, LABEL_K8S_POD, NetCount, PortCost,
    PortRange, Proto, Publish, Snapshot, SyscallCount, fixture,
};

const SYSCALLS: [&str; 22] = [
    "read",
    "write",
    "close",
    "fstat",
    "poll",
    "lseek",
    "mmap",
    "mprotect",
    "munmap",
    "brk",
    "ioctl",
    "pread64",
    "writev",
    "sched_yield",
    "madvise",
    "nanosleep",
    "getpid",
    "sendto",
    "recvfrom",
    "futex",
    "epoll_wait",
    "openat",
];

/// A 64-hex-character id unique to `i`.
fn id(i: usize) -> String {
    format!(
        "{:016x}",
        0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)
    )
    .repeat(4)
}

/// 100 berth containers (the first publishing 20000-39999/udp, with traffic on 64 of them) and
/// 200 others: 150 Docker containers, 50 pods' containers.
pub(super) fn host_of_300() -> Snapshot {
    let mut snap = fixture::snapshot();
    let template = snap.containers[0].clone();
    snap.containers.clear();
    for i in 0..300 {
        let mut c = template.clone();
        c.id = id(i);
        c.cgroup_id = Some(1_000 + i as u64);
        if let Some(s) = c.stats.as_mut() {
            s.cpu_user_seconds = 12.345_678 * (i + 1) as f64;
            s.cpu_system_seconds = 0.001_25 * (i + 7) as f64;
            s.memory_usage_bytes = (37 << 20) + 4096 * i as u64;
            s.memory_max_usage_bytes = Some((41 << 20) + 8192 * i as u64);
            s.pids_current = 3 + (i as u64 % 40);
            s.io_read_bytes = 1_000_003 * i as u64;
            s.io_write_bytes = 77_777 * i as u64;
            s.memory_limit_bytes = (i % 3 != 0).then_some(512 << 20);
            s.pids_limit = (i % 4 != 0).then_some(4096);
        }
        c.syscalls = SYSCALLS
            .iter()
            .enumerate()
            .map(|(nr, name)| SyscallCount {
                nr: nr as u32,
                name: (*name).into(),
                count: ((nr as u64 + 1) * 7_919 + i as u64 * 13) % 1_000_003,
                latency_buckets: vec![],
                latency_sum_ns: 0,
            })
            .collect();
        c.net = [
            ("ingress", "tcp"),
            ("egress", "tcp"),
            ("ingress", "udp"),
            ("egress", "udp"),
        ]
        .iter()
        .enumerate()
        .map(|(k, (direction, protocol))| NetCount {
            direction,
            protocol,
            packets: 1_000 * (k as u64 + 1) + i as u64,
            bytes: 1_400 * (1_000 * (k as u64 + 1) + i as u64),
        })
        .collect();
        c.network.publish.clear();
        if i < 100 {
            c.name = format!("berth-app-{i}");
            c.cgroup = format!("/berth/{}", c.id);
        } else {
            c.berth = None;
            c.image = "registry.example.com/team/service:1.27.3".into();
            c.conntrack_entries = None;
            c.port_mapping.rules = Some(3);
            if i < 250 {
                c.engine = Engine::Docker;
                c.name = format!("compose-web-{i}");
                c.cgroup = format!("/system.slice/docker-{}.scope", c.id);
            } else {
                c.engine = Engine::Kubernetes;
                c.name = format!("shop/web-{i}/nginx");
                c.cgroup = format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{i:08x}.slice/cri-containerd-{}.scope",
                    c.id
                );
                c.labels = [
                    (LABEL_K8S_NAMESPACE.to_owned(), "shop".to_owned()),
                    (LABEL_K8S_POD.to_owned(), format!("web-{i}")),
                ]
                .into();
            }
        }
        snap.containers.push(c);
    }
    let range = PortRange::new(20_000, 39_999).expect("valid range");
    snap.containers[0].network.publish = vec![Publish {
        host_ip: None,
        host: range,
        container: range,
        proto: Proto::Udp,
    }];
    let nf = snap.netfilter.as_mut().expect("the fixture has netfilter");
    nf.by_port = (0..64u16)
        .flat_map(|k| {
            [
                (Hook::Prerouting, CtState::New),
                (Hook::Prerouting, CtState::Established),
                (Hook::Postrouting, CtState::New),
            ]
            .map(|(hook, ct_state)| PortCost {
                family: Family::Ipv4,
                proto: 17,
                port: 20_000 + k * 300,
                hook,
                ct_state,
                packets: 100 + u64::from(k),
                nanoseconds: 250_000 + u64::from(k) * 1_000,
            })
        })
        .collect();
    nf.by_port
        .sort_by_key(|c| (c.family, c.hook, c.proto, c.port, c.ct_state));
    snap
}

fn exposition(snap: Snapshot) -> String {
    let (_tx, rx) = watch::channel(Some(Arc::new(snap)));
    render(&super::registry(rx, 20))
        .expect("encoding into a String cannot fail")
        .replace(env!("CARGO_PKG_VERSION"), "VERSION")
}

/// FNV-1a (64 bits): a fixed, dependency-free digest of the exposition.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The exposition's length and digest, recorded from prometheus-client's plain encoding
/// before the encoder was made faster: any byte changed at this scale fails here. After a
/// deliberate change of the output (with the golden files), record the new figures.
const RECORDED: (usize, u64) = (3_569_948, 7_814_781_407_149_192_736);

#[test]
fn a_host_of_300_containers_renders_the_recorded_bytes() {
    let text = exposition(host_of_300());
    assert!(text.ends_with("# EOF\n"));
    assert_eq!(
        (text.len(), fnv1a(text.as_bytes())),
        RECORDED,
        "/metrics of host_of_300 changed: a faster encoder must write the same bytes"
    );
}

#[test]
#[ignore = "a benchmark: run it in release with --nocapture"]
fn metrics_encode_cost() {
    let snap = host_of_300();
    let (_tx, rx) = watch::channel(Some(Arc::new(snap)));
    let registry = super::registry(rx, 20);
    let mut bytes = 0;
    for _ in 0..20 {
        bytes = render(&registry).expect("encodes").len();
    }
    let lines = render(&registry).expect("encodes").lines().count();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // As `Exposition` does (the buffer sized from the last exposition), and from 16 KiB.
    for (how, capacity) in [("sized", bytes + bytes / 8), ("from 16 KiB", 16 * 1024)] {
        let runs = 200;
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                let out = super::render_sized(&registry, capacity).expect("encodes");
                let took = start.elapsed();
                assert_eq!(out.len(), bytes, "the same snapshot encodes the same bytes");
                took
            })
            .collect();
        times.sort();
        println!(
            "metrics_encode_cost ({how}): 300 containers, {bytes} bytes, {lines} lines: median {:.3} ms, p99 {:.3} ms, min {:.3} ms per encode",
            ms(times[runs / 2]),
            ms(times[runs * 99 / 100]),
            ms(times[0]),
        );
    }
}
