//! A fixed snapshot for reader tests (metrics, API, diagnose): two berth containers (an
//! nft-map range and an iptables range), an exited one, a cgroup of no container, every probe
//! and collector, netfilter costs on both ranges, conntrack, proxies and an image. Every value
//! is fixed so golden outputs stay byte-for-byte stable.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, UNIX_EPOCH},
};

use super::*;

pub const TAKEN_AT: u64 = 1_790_000_000;
pub const MAP_ID: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const IPT_ID: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
pub const DONE_ID: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

fn publish(proto: Proto, start: u16, end: u16) -> Publish {
    Publish {
        host_ip: None,
        host: PortRange::new(start, end).expect("valid range"),
        container: PortRange::new(start, end).expect("valid range"),
        proto,
    }
}

fn syscall(nr: u32, name: &'static str, count: u64) -> SyscallCount {
    SyscallCount {
        nr,
        name: name.into(),
        count,
        latency_buckets: vec![],
        latency_sum_ns: 0,
    }
}

fn udp(direction: &'static str, packets: u64) -> NetCount {
    NetCount {
        direction,
        protocol: "udp",
        packets,
        bytes: packets * 188,
    }
}

fn berth_spec(restart: RestartPolicy) -> Option<std::sync::Arc<BerthSpec>> {
    Some(std::sync::Arc::new(BerthSpec {
        image_id: None,
        lower: PathBuf::from("/srv/rootfs"),
        args: vec!["media-server".into()],
        env: vec!["MODE=fixture".into()],
        workdir: "/".into(),
        user: "0:0".into(),
        restart,
        runtime: "runc".into(),
        phase: Phase::Created,
        stop_requested: false,
        auto_remove: false,
        seccomp: SeccompChoice::Default,
    }))
}

#[allow(clippy::too_many_arguments)]
fn container(
    id: &str,
    name: &str,
    cgroup_id: Option<u64>,
    status: Status,
    network: NetworkSpec,
    stats: Option<ContainerStats>,
    syscalls: Vec<SyscallCount>,
    net: Vec<NetCount>,
) -> Container {
    let running = status == Status::Running;
    Container {
        engine: Engine::Berth,
        id: id.into(),
        name: name.into(),
        image: "/srv/rootfs".into(),
        labels: BTreeMap::new(),
        cgroup: format!("/berth/{id}"),
        cgroup_id,
        status,
        state: ContainerState {
            shim_pid: if running { 4100 } else { 0 },
            pid: running.then_some(4101),
            running,
            started_at: Some(TAKEN_AT as f64 - 60.0),
            finished_at: (!running).then_some(TAKEN_AT as f64 - 30.0),
            exit_code: (!running).then_some(3),
            oom_killed: false,
            oom_kills: 0,
            restart_count: 0,
            error: None,
        },
        created_at: TAKEN_AT as f64 - 120.0,
        limits: Limits {
            memory: Some(64 << 20),
            ..Default::default()
        },
        stats,
        conntrack_entries: network.ip.map(|_| 12),
        port_mapping: Default::default(),
        network,
        log_path: Some(PathBuf::from(format!(
            "/var/lib/berth/containers/{id}/container.log"
        ))),
        syscalls,
        net,
        berth: berth_spec(RestartPolicy::No),
    }
}

fn stats() -> ContainerStats {
    ContainerStats {
        cpu_user_seconds: 1.5,
        cpu_system_seconds: 0.5,
        cpu_usage_seconds: 2.0,
        cpu_throttled_periods: 4,
        cpu_throttled_seconds: 0.25,
        memory_usage_bytes: 10 << 20,
        memory_limit_bytes: Some(64 << 20),
        memory_max_usage_bytes: Some(12 << 20),
        memory_failcnt: 0,
        oom_kills: 0,
        pids_current: 3,
        pids_limit: Some(100),
        io_read_bytes: 4096,
        io_write_bytes: 8192,
        cpu_quota_seconds_per_second: Some(0.5),
    }
}

fn cost(port: u16, hook: Hook, ct_state: CtState, packets: u64, ns: u64) -> PortCost {
    PortCost {
        family: Family::Ipv4,
        proto: 17,
        port,
        hook,
        ct_state,
        packets,
        nanoseconds: packets * ns,
    }
}

/// New packets to ports no container publishes.
fn other(hook: Hook, packets: u64, ns: u64) -> OtherCost {
    OtherCost {
        family: Family::Ipv4,
        hook,
        ct_state: CtState::New,
        packets,
        nanoseconds: packets * ns,
    }
}

fn probe(name: &'static str, attach: &'static str, ids: Vec<u32>) -> ProbeStatus {
    ProbeStatus {
        name,
        attach,
        enabled: true,
        attached: true,
        program_ids: ids,
        error: None,
        paths: Default::default(),
    }
}

/// The fixture snapshot; `new_flows` scales the new-flow packets (so two snapshots make a
/// window with a rate).
pub fn snapshot_at(offset: Duration, new_flows: u64) -> Snapshot {
    let map = container(
        MAP_ID,
        "media",
        Some(101),
        Status::Running,
        NetworkSpec {
            mode: NetworkMode::Bridge,
            ip: Some("10.231.0.2".parse().expect("address")),
            publish: vec![publish(Proto::Udp, 40000, 40009)],
            port_backend: Some(BackendKind::NftMap),
        },
        Some(stats()),
        vec![syscall(0, "read", 900), syscall(1, "write", 1200)],
        vec![udp("ingress", 500), udp("egress", 480)],
    );
    let ipt = container(
        IPT_ID,
        "legacy",
        Some(102),
        Status::Running,
        NetworkSpec {
            mode: NetworkMode::Bridge,
            ip: Some("10.231.0.3".parse().expect("address")),
            publish: vec![publish(Proto::Udp, 41000, 41001)],
            port_backend: Some(BackendKind::Iptables),
        },
        Some(stats()),
        vec![syscall(7, "poll", 50)],
        vec![udp("ingress", 300)],
    );
    let mut done = container(
        DONE_ID,
        "batch",
        None,
        Status::Exited,
        NetworkSpec {
            mode: NetworkMode::Host,
            ..Default::default()
        },
        None,
        vec![],
        vec![],
    );
    done.berth = berth_spec(RestartPolicy::OnFailure {
        max_retries: Some(3),
    });
    done.state.restart_count = 3;
    done.state.oom_kills = 1;
    Snapshot {
        taken_at: UNIX_EPOCH + Duration::from_secs(TAKEN_AT) + offset,
        containers: vec![map, ipt, done],
        other_cgroups: vec![CgroupSample {
            id: 100,
            path: "/berth/we\"ird\\name".into(),
            syscalls: vec![syscall(110, "getppid", 100_000)],
            net: vec![],
        }],
        probes: vec![
            probe("syscalls", "raw_tracepoint/sys_enter", vec![11]),
            probe("network", "cgroup_skb/ingress+egress", vec![12, 13]),
            ProbeStatus {
                paths: [
                    ("netfilter_pair", "ok".to_owned()),
                    ("fentry", "unavailable (EPERM)".to_owned()),
                ]
                .into_iter()
                .collect(),
                ..probe("netfilter", "netfilter/first+last", vec![14, 15])
            },
        ],
        lost_events: vec![
            LostEvents {
                probe: "syscalls",
                map: "SYSCALLS",
                count: 0,
            },
            LostEvents {
                probe: "netfilter",
                map: "NF_PORTS",
                count: 0,
            },
        ],
        probe_runs: vec![ProbeRun {
            probe: "syscalls",
            seconds: 0.125,
            runs: 250_000,
        }],
        collectors: vec![CollectorRun {
            name: "containers",
            duration_seconds: 0.002,
            success: true,
            error: None,
        }],
        conntrack: Some(ConntrackStats {
            entries: 40,
            max: 262_144,
            new: 900,
            ..Default::default()
        }),
        portmap_ebpf: Some(super::net::EbpfPortmap {
            packets: vec![
                super::net::EbpfPackets {
                    path: "fast",
                    reason: "forward",
                    packets: 5_000,
                },
                super::net::EbpfPackets {
                    path: "slow",
                    reason: "fragment",
                    packets: 2,
                },
            ],
            programs: vec![super::net::EbpfProgramRun {
                program: "forward",
                seconds: 0.0015,
                runs: 5_000,
            }],
        }),
        netfilter: Some(NetfilterSample {
            by_port: vec![
                cost(40000, Hook::Prerouting, CtState::New, new_flows, 2_500),
                cost(40000, Hook::Prerouting, CtState::Established, 400, 900),
                cost(40009, Hook::Postrouting, CtState::New, new_flows, 1_000),
                cost(41001, Hook::Prerouting, CtState::New, new_flows, 60_000),
            ],
            other: vec![other(Hook::Output, 10, 1_200)],
            local_prerouting: Vec::new(),
            hooks: vec![HookTotal {
                family: Family::Ipv4,
                hook: Hook::Prerouting,
                packets: 1_000 + 2 * new_flows,
                nanoseconds: 1_000 * 1_000 + new_flows * 62_500,
            }],
        }),
        proxies: ProxyStats {
            processes: 2,
            rss_bytes: 7 << 20,
            cpu_seconds: 0.5,
        },
        images: vec![Image {
            id: "d".repeat(64),
            names: vec!["busybox:latest".into()],
            rootfs: PathBuf::from("/var/lib/berth/images/d/rootfs"),
            config: ImageConfig {
                cmd: vec!["sh".into()],
                ..Default::default()
            },
            size_bytes: 1 << 20,
            imported_at: TAKEN_AT - 3600,
        }],
        pulls: PullStats {
            succeeded: 3,
            failed: 1,
            bytes: 5 << 20,
        },
    }
}

/// The fixture as of [`TAKEN_AT`] with 200 new flows per range.
pub fn snapshot() -> Snapshot {
    snapshot_at(Duration::ZERO, 200)
}

pub const SFU_ID: &str = "5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f";
pub const WEB_ID: &str = "3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e";
pub const HOSTNET_ID: &str = "4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a";
pub const WORKER_ID: &str = "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b";

/// A Docker container as the foreign collector and the Docker source make it.
fn docker(
    (id, cgroup_id): (&str, u64),
    name: &str,
    image: &str,
    network: NetworkSpec,
    mapping: PortMapping,
) -> Container {
    let mut c = container(
        id,
        name,
        Some(cgroup_id),
        Status::Running,
        network,
        None,
        vec![],
        vec![],
    );
    c.engine = Engine::Docker;
    c.image = image.into();
    c.cgroup = format!("/docker/{id}");
    c.berth = None;
    c.limits = Limits::default();
    c.conntrack_entries = None;
    c.port_mapping = mapping;
    c
}

/// The fixture plus a Docker host as the issue measured it: `sfu` publishing 50000-50999/udp
/// (3,001 rules, 2,000 docker-proxies, 18.6 µs per new flow in POSTROUTING), `web` with one
/// tcp port, a host-networking and a portless bridge container, new flows to an unpublished
/// local port (the baseline) and 3 proxies of no listed container; `new_flows` scales every
/// new-flow count (two snapshots make a window with a rate).
pub fn docker_host_at(offset: Duration, new_flows: u64) -> Snapshot {
    let mut s = snapshot_at(offset, new_flows);
    let bridge = |ip: &str, publish: Vec<Publish>| NetworkSpec {
        mode: NetworkMode::Bridge,
        ip: Some(ip.parse().expect("address")),
        publish,
        port_backend: None,
    };
    let proxies = |processes: u64, mb: u64, cpu_seconds: f64| ProxyStats {
        processes,
        rss_bytes: mb * 1_000_000,
        cpu_seconds,
    };
    let mut sfu = docker(
        (SFU_ID, 201),
        "sfu",
        "mediasoup:3",
        bridge("172.17.0.2", vec![publish(Proto::Udp, 50000, 50999)]),
        PortMapping {
            rules: Some(3001),
            proxies: proxies(2000, 6900, 12.0 + new_flows as f64 / 100.0),
        },
    );
    sfu.limits = Limits {
        memory: Some(2 << 30),
        cpus: Some(2.0),
        pids: Some(500),
        ..Default::default()
    };
    let mut web_publish = publish(Proto::Tcp, 8080, 8080);
    web_publish.container = PortRange::new(80, 80).expect("valid range");
    let web = docker(
        (WEB_ID, 202),
        "web",
        "nginx:1.27",
        bridge("172.17.0.3", vec![web_publish]),
        PortMapping {
            rules: Some(3),
            proxies: proxies(2, 8, 0.1),
        },
    );
    let hostnet = docker(
        (HOSTNET_ID, 203),
        "hostnet",
        "coturn:4",
        NetworkSpec {
            mode: NetworkMode::Host,
            ..Default::default()
        },
        PortMapping::default(),
    );
    let worker = docker(
        (WORKER_ID, 204),
        "worker",
        "busybox:1",
        bridge("172.17.0.4", vec![]),
        PortMapping {
            // Docker 28's raw-table DROP for its address.
            rules: Some(1),
            proxies: ProxyStats::default(),
        },
    );
    s.containers.extend([sfu, web, hostnet, worker]);
    let nf = s.netfilter.as_mut().expect("the fixture has netfilter");
    let tcp = |port, hook, packets, ns| PortCost {
        proto: 6,
        ..cost(port, hook, CtState::New, packets, ns)
    };
    nf.by_port.extend([
        cost(50999, Hook::Prerouting, CtState::New, new_flows * 10, 1_400),
        cost(50999, Hook::Forward, CtState::New, new_flows * 10, 600),
        cost(
            50999,
            Hook::Postrouting,
            CtState::New,
            new_flows * 10,
            18_600,
        ),
        cost(50999, Hook::Prerouting, CtState::Established, 5_000, 700),
        tcp(8080, Hook::Prerouting, new_flows, 1_000),
        tcp(8080, Hook::Forward, new_flows, 500),
        tcp(8080, Hook::Postrouting, new_flows, 1_500),
    ]);
    // Ports no container publishes. The baseline: ssh to the host itself (prerouting carried
    // to input); a container's outgoing flow to 443, forwarded: not local, not the baseline.
    let ssh_pre = other(Hook::Prerouting, new_flows / 2, 1_100);
    nf.other.extend([
        OtherCost {
            packets: ssh_pre.packets + 50,
            nanoseconds: ssh_pre.nanoseconds + 50 * 300,
            ..ssh_pre
        },
        other(Hook::Input, new_flows / 2, 900),
        other(Hook::Forward, 50, 300),
    ]);
    nf.other.sort_by_key(|c| (c.family, c.hook, c.ct_state));
    nf.local_prerouting.push(HookTotal {
        family: Family::Ipv4,
        hook: Hook::Prerouting,
        packets: ssh_pre.packets,
        nanoseconds: ssh_pre.nanoseconds,
    });
    nf.by_port
        .sort_by_key(|c| (c.family, c.hook, c.proto, c.port, c.ct_state));
    s.proxies = proxies(2005, 6920, 12.6 + new_flows as f64 / 100.0);
    s
}
