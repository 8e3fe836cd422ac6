//! The syscall and network probes on another engine's container, against the real kernel: a
//! cgroup the classifier takes for a Docker container (`<cgroup2 mount>/docker/<64 hex>`, the
//! directory runc makes for a Docker container, also in hybrid mode) with a process in it. Its
//! counts must agree with an independent truth as berth's own containers' do (a known number
//! of getppid calls; UDP packets of a known size to a peer in a namespace of the test's, against
//! the veth's counters), its id must be in the agent's `TRACKED` map (read from the kernel) while
//! it exists and leave it when the cgroup goes, and a new cgroup under the same container id
//! starts from zero.

mod common;

use std::{
    collections::BTreeSet,
    fs,
    net::{SocketAddrV4, UdpSocket},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::{Child, Command},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData, MapInfo};
use common::{Agent, Cgroup, ClientNs, cgroup2_mount, getppid_in, wait_for};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A Docker container id (64 hex) no other run uses: pid, sequence and the clock.
fn unique_hex() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{:08x}{:08x}{:048x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Whether `<cgroup2>/docker` was absent when this test process first needed it: then the last
/// guard to go removes it.
static MADE_PARENT: OnceLock<bool> = OnceLock::new();

fn docker_parent() -> PathBuf {
    cgroup2_mount().join("docker")
}

/// `<cgroup2>/docker/<id>` with a long-lived process in it, as runc leaves a running Docker
/// container; the process is killed and the cgroup removed on drop (the `docker` parent too
/// when this test process made it and it is empty).
struct DockerCgroup {
    cgroup: Option<Cgroup>,
    init: Option<Child>,
}

impl DockerCgroup {
    fn start(id: &str) -> Self {
        let parent = docker_parent();
        MADE_PARENT.get_or_init(|| !parent.exists());
        let mut guard = DockerCgroup {
            cgroup: Some(Cgroup::create(&parent, id)),
            init: None,
        };
        let init = Command::new("sleep").arg("600").spawn().expect("sleep");
        let pid = init.id();
        guard.init = Some(init);
        let procs = guard.dir().join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("moving pid {pid} into {}: {e}", procs.display()));
        guard
    }

    fn cgroup(&self) -> &Cgroup {
        self.cgroup.as_ref().expect("cgroup present")
    }

    fn dir(&self) -> PathBuf {
        self.cgroup().dir.clone()
    }

    /// The v2 cgroup id: the directory's inode, what `bpf_get_current_cgroup_id()` returns.
    fn cgroup_id(&self) -> u64 {
        fs::metadata(self.dir()).unwrap().ino()
    }

    /// Kills the process and removes the cgroup, as `docker rm -f` does.
    fn remove(&mut self) {
        if let Some(mut c) = self.init.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.cgroup.take();
    }
}

impl Drop for DockerCgroup {
    fn drop(&mut self) {
        self.remove();
        if MADE_PARENT.get() == Some(&true) {
            // Fails while another guard's cgroup is still in it; the last one succeeds.
            let _ = fs::remove_dir(docker_parent());
        }
    }
}

/// The agent's record of container `id` (any status), once listed.
fn listed(agent: &Agent, id: &str) -> Option<serde_json::Value> {
    let (code, body) = agent.get("/api/v1/containers?all=true");
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.as_array()?.iter().find(|c| c["id"] == id).cloned()
}

/// The agent's `TRACKED` map, read from the kernel: found through the map ids of its syscall
/// program (`/api/v1/system`).
fn tracked_ids(agent: &Agent) -> BTreeSet<u64> {
    let program: u32 = agent.system()["probes"][0]["program_ids"][0]
        .as_u64()
        .expect("the syscall probe reports its program id") as u32;
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == program)
        .unwrap_or_else(|| panic!("program {program} not loaded"));
    let map_ids = info.map_ids().unwrap().expect("map ids of the program");
    let id = map_ids
        .into_iter()
        .find(|&m| MapInfo::from_id(m).unwrap().name_as_str() == Some("TRACKED"))
        .expect("the syscall program uses a map named TRACKED");
    let map = Map::HashMap(MapData::from_id(id).unwrap());
    let map = HashMap::<MapData, u64, u8>::try_from(map).unwrap();
    map.keys().map(Result::unwrap).collect()
}

/// The getppid count the agent reports for container `id`.
fn getppid_count(agent: &Agent, id: &str) -> Option<u64> {
    listed(agent, id)?["syscalls"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "getppid")?["count"]
        .as_u64()
}

/// The agent's (packets, bytes) for container `id` in one direction and protocol.
fn net_count(agent: &Agent, id: &str, direction: &str, protocol: &str) -> (u64, u64) {
    listed(agent, id)
        .and_then(|c| {
            c["net"]
                .as_array()?
                .iter()
                .find(|n| n["direction"] == direction && n["protocol"] == protocol)
                .map(|n| (n["packets"].as_u64().unwrap(), n["bytes"].as_u64().unwrap()))
        })
        .unwrap_or((0, 0))
}

/// Forks a child that joins `cgroup`, opens a UDP socket there (a socket belongs to the cgroup
/// it is created in) and sends `count` datagrams of `payload` bytes to `to`; waits for it.
/// The child does only async-signal-safe work.
fn udp_from(cgroup: &Cgroup, to: SocketAddrV4, count: u32, payload: usize) {
    let procs = cgroup.procs_cstring();
    let buf = vec![0x5au8; payload];
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the child only calls open/write/close/socket/sendto/_exit before exiting.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(2);
            }
            libc::close(fd);
            let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if s < 0 {
                libc::_exit(3);
            }
            for _ in 0..count {
                let sent = libc::sendto(
                    s,
                    buf.as_ptr().cast(),
                    buf.len(),
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                if sent != buf.len() as isize {
                    libc::_exit(4);
                }
            }
            libc::_exit(0);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "UDP sender failed (status {status:#x}) in {}",
            cgroup.dir.display()
        );
    }
}

/// Transmit (packets, layer-3 bytes) of interface `dev` from sysfs (the 14-byte Ethernet
/// header taken off, as the probe counts from the IP header).
fn tx_l3(dev: &str) -> (u64, u64) {
    let dir = PathBuf::from("/sys/class/net").join(dev).join("statistics");
    let n = |f: &str| -> u64 {
        fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (p, b) = (n("tx_packets"), n("tx_bytes"));
    (p, b - 14 * p)
}

const CALLS: u64 = 100_000;

#[test]
fn a_docker_containers_syscalls_and_packets_agree_with_the_truth() {
    let agent = Agent::start();
    let id = unique_hex();
    let ctr = DockerCgroup::start(&id);
    let cgroup_id = ctr.cgroup_id();
    let c = wait_for(
        Duration::from_secs(10),
        "the docker container listed",
        || listed(&agent, &id).filter(|c| c["status"] == "running"),
    );
    assert_eq!(c["engine"], "docker", "{c}");
    assert_eq!(c["cgroup_id"], cgroup_id, "{c}");
    // Listed means tracked: the same tick put its cgroup id into the kernel's map.
    assert!(
        tracked_ids(&agent).contains(&cgroup_id),
        "cgroup id {cgroup_id} of {id} not in TRACKED"
    );
    let system = agent.system();
    for p in 0..2 {
        let paths = &system["probes"][p]["paths"];
        assert!(
            paths["tracked_map"].as_str().is_some() && paths["subtree"].as_str().is_some(),
            "probe {} does not say how it tracks: {}",
            system["probes"][p]["name"],
            system["probes"][p]
        );
    }
    let attach = system["probes"][1]["paths"]["attach_point"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        attach.starts_with(&format!("{}:", cgroup2_mount().display())),
        "network probe not on the cgroup2 root: {attach}\n{}",
        agent.log()
    );

    // Syscalls: a known number of getppid calls.
    getppid_in(ctr.cgroup(), CALLS);
    let count = wait_for(Duration::from_secs(10), "the getppid count", || {
        getppid_count(&agent, &id).filter(|&n| n >= CALLS)
    });
    assert!(
        (CALLS..=CALLS + 100).contains(&count),
        "berth counted {count} getppid calls for docker container {id}, the workload made {CALLS}"
    );

    // Network: UDP datagrams of a known size to a peer in a namespace of the test's.
    let client = ClientNs::create();
    let peer = client
        .ns
        .run(|| UdpSocket::bind(SocketAddrV4::new(client.client_ip, 0)).unwrap());
    let to = match peer.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("peer bound to {other}"),
    };
    let (packets, payload) = (500u32, 200usize);
    let before = tx_l3(&client.host_if);
    udp_from(ctr.cgroup(), to, packets, payload);
    let after = tx_l3(&client.host_if);
    let (veth_p, veth_b) = (after.0 - before.0, after.1 - before.1);
    let want_bytes = u64::from(packets) * (20 + 8 + payload as u64);
    let (p, b) = wait_for(Duration::from_secs(10), "the UDP egress count", || {
        Some(net_count(&agent, &id, "egress", "udp")).filter(|&(p, _)| p >= u64::from(packets))
    });
    assert_eq!(
        (p, b),
        (u64::from(packets), want_bytes),
        "berth's UDP egress for {id}: {p} packets, {b} bytes; sent {packets} x {} bytes",
        20 + 8 + payload
    );
    // The veth also carries what no socket of the container sent (ARP, IPv6 neighbour
    // discovery of the host side): within 2%.
    assert!(veth_p >= u64::from(packets), "veth sent {veth_p} packets");
    let diff = (veth_b as f64 - b as f64).abs() / veth_b as f64;
    assert!(
        diff <= 0.02,
        "berth {b} bytes, veth {veth_b} bytes in {veth_p} packets ({:.2}% apart)",
        diff * 100.0
    );
    // The peer let nothing come back.
    assert_eq!(net_count(&agent, &id, "ingress", "udp"), (0, 0));
    // Nothing was refused by the map: its lost count is served, and zero.
    let lost = common::sample(
        &agent.metrics(),
        "berth_probe_lost_events_total",
        &[("probe", "syscalls"), ("map", "TRACKED")],
    );
    assert_eq!(lost, Some(0.0), "lost events of the TRACKED map");
    drop(peer);
}

#[test]
fn a_removed_cgroup_leaves_the_map_and_a_reused_container_id_starts_from_zero() {
    let agent = Agent::start();
    let id = unique_hex();
    let mut first = DockerCgroup::start(&id);
    let old = first.cgroup_id();
    wait_for(Duration::from_secs(10), "the container listed", || {
        listed(&agent, &id).filter(|c| c["cgroup_id"] == old)
    });
    getppid_in(first.cgroup(), 1_000);
    wait_for(Duration::from_secs(10), "1000 getppid calls", || {
        getppid_count(&agent, &id).filter(|&n| n >= 1_000)
    });
    assert!(tracked_ids(&agent).contains(&old));

    // Removed: gone from the API within a tick, and from the map by then.
    let removed = Instant::now();
    first.remove();
    wait_for(Duration::from_secs(5), "the container gone", || {
        listed(&agent, &id).is_none().then_some(())
    });
    let gone_after = removed.elapsed();
    assert!(
        !tracked_ids(&agent).contains(&old),
        "cgroup id {old} still in TRACKED after the container left the API ({gone_after:?})"
    );
    let (_, body) = agent.get("/api/v1/cgroups");
    let cgroups: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        !cgroups.as_array().unwrap().iter().any(|c| c["id"] == old),
        "the removed cgroup's counters are still served: {body}"
    );

    // The same container id in a new cgroup: a new cgroup id, counters from zero.
    let second = DockerCgroup::start(&id);
    let new = second.cgroup_id();
    assert_ne!(new, old, "the kernel handed the old cgroup id back");
    let c = wait_for(Duration::from_secs(10), "the new cgroup listed", || {
        listed(&agent, &id).filter(|c| c["cgroup_id"] == new)
    });
    assert!(
        c["syscalls"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["name"] != "getppid")),
        "the new cgroup came with old getppid counts: {c}"
    );
    let ids = tracked_ids(&agent);
    assert!(ids.contains(&new) && !ids.contains(&old), "{ids:?}");
    getppid_in(second.cgroup(), 500);
    let count = wait_for(Duration::from_secs(10), "500 getppid calls", || {
        getppid_count(&agent, &id).filter(|&n| n >= 500)
    });
    assert!(
        (500..=600).contains(&count),
        "{count} getppid calls for the new cgroup: the old one's 1000 carried over?"
    );
}
