//! The syscall and network probes on a real Docker container ([`DockerHost`]: Debian's dockerd
//! in namespaces of its own, the agent inside its network namespace), against an independent
//! truth as the tests of berth's own containers have it (tests/syscalls.rs, tests/network.rs):
//! a known number of getppid calls made inside the container (`docker exec` of this build's
//! `berth-test-echo --getppid N`, in an image made offline with `docker import`), and UDP
//! datagrams of a known size sent from it, against the byte counters of its veth.
//!
//! The container lives in `/docker/<id>`, outside berth's own cgroup subtree: the probes count
//! it only when they cover other engines' containers.

mod common;

use std::{
    net::{SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use common::{
    docker::{DockerHost, tail},
    echo_rootfs,
};
use serde_json::Value;

/// The image with busybox and `berth-test-echo` (and the libraries it links).
const IMAGE: &str = "echo:1";
const CALLS: u64 = 100_000;
/// UDP datagrams sent from the container, and their payload in bytes.
const DATAGRAMS: u64 = 500;
const PAYLOAD: u64 = 200;
/// IPv4 and UDP headers: the probe counts from the IP header.
const HEADERS: u64 = 20 + 8;

/// `docker import` of a rootfs with `berth-test-echo` in /bin, as [`IMAGE`].
fn import_echo_image(host: &DockerHost) {
    let dir = tempfile::tempdir().unwrap();
    let root = echo_rootfs(dir.path());
    let tar = dir.path().join("echo.tar");
    berth_testkit::sh(&format!(
        "tar -C {} -cf {} .",
        root.display(),
        tar.display()
    ));
    host.docker(&["import", tar.to_str().unwrap(), IMAGE]);
}

/// The getppid count the agent serves for container `c`.
fn getppid_count(c: &Value) -> Option<u64> {
    c["syscalls"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "getppid")?["count"]
        .as_u64()
}

/// The agent's (packets, bytes) for container `c` in one direction and protocol.
fn net_count(c: &Value, direction: &str, protocol: &str) -> (u64, u64) {
    c["net"]
        .as_array()
        .and_then(|n| {
            n.iter()
                .find(|n| n["direction"] == direction && n["protocol"] == protocol)
        })
        .map_or((0, 0), |n| {
            (
                n["packets"].as_u64().unwrap_or(0),
                n["bytes"].as_u64().unwrap_or(0),
            )
        })
}

/// Received (packets, layer-3 bytes) of the host side of container `id`'s veth, i.e. what
/// the container sent: found by the peer index of its eth0, read in dockerd's namespace
/// (`ip -s -j link`; the 14-byte Ethernet header taken off each packet).
fn veth_rx(host: &DockerHost, id: &str) -> (u64, u64) {
    let peer: u64 = host
        .docker(&["exec", id, "cat", "/sys/class/net/eth0/iflink"])
        .parse()
        .expect("eth0's peer index");
    let links: Value =
        serde_json::from_str(&host.dockerd.netns.sh("ip -s -j link show")).expect("ip -j output");
    let link = links
        .as_array()
        .and_then(|l| l.iter().find(|l| l["ifindex"] == peer))
        .unwrap_or_else(|| panic!("no link with index {peer} in dockerd's namespace: {links}"));
    let rx = &link["stats64"]["rx"];
    let (packets, bytes) = (
        rx["packets"].as_u64().unwrap(),
        rx["bytes"].as_u64().unwrap(),
    );
    (packets, bytes - 14 * packets)
}

/// Waits up to 10 s until `got` finds `what` in container `id`'s record; panics with what
/// the agent served for it (a container the probes do not cover has no counts at all).
fn counted<T>(host: &DockerHost, id: &str, what: &str, got: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = host.find(id);
        if let Some(v) = c.as_ref().and_then(&got) {
            return v;
        }
        if Instant::now() > deadline {
            let c = c.unwrap_or_default();
            panic!(
                "berth did not count the {what} of docker container {id} (cgroup {}, id {}) \
                 within 10 s: it serves syscalls {} and net {}; the probes count this \
                 container only if they cover other engines' containers",
                c["cgroup"], c["cgroup_id"], c["syscalls"], c["net"]
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_docker_containers_syscalls_and_udp_bytes_agree_with_the_truth() {
    let host = DockerHost::start();
    import_echo_image(&host);
    let id = host.docker(&["run", "-d", "--name", "counted", IMAGE, "sleep", "1d"]);
    let (c, _) = host.wait_listed(&id, Duration::from_secs(5), |c| {
        c["name"] == "counted" && c["status"] == "running"
    });
    assert_eq!(c["engine"], "docker", "{c}");

    // Syscalls: a known number of getppid calls, inside the container.
    let said = host.docker(&[
        "exec",
        &id,
        "berth-test-echo",
        "--getppid",
        &CALLS.to_string(),
    ]);
    assert_eq!(said, format!("getppid {CALLS}"));
    let count = counted(&host, &id, "getppid calls", |c| {
        getppid_count(c).filter(|&n| n >= CALLS)
    });
    assert!(
        (CALLS..=CALLS + 100).contains(&count),
        "berth counted {count} getppid calls for docker container {id}, the workload made \
         {CALLS}"
    );

    // Network: UDP datagrams of a known size from the container to a peer on the host (the
    // bridge's address, in dockerd's namespace), against its veth's counters.
    let peer = host
        .dockerd
        .netns
        .run(|| UdpSocket::bind(SocketAddrV4::new(host.dockerd.gateway, 0)))
        .expect("binding the peer on the bridge address");
    let to = peer.local_addr().unwrap();
    let before = veth_rx(&host, &id);
    let said = host.docker(&[
        "exec",
        &id,
        "berth-test-echo",
        "--send",
        &to.to_string(),
        &DATAGRAMS.to_string(),
        &PAYLOAD.to_string(),
    ]);
    assert_eq!(said, format!("sent {DATAGRAMS}"));
    let after = veth_rx(&host, &id);
    let (veth_p, veth_b) = (after.0 - before.0, after.1 - before.1);
    let want = DATAGRAMS * (HEADERS + PAYLOAD);
    let (p, b) = counted(&host, &id, "UDP egress", |c| {
        Some(net_count(c, "egress", "udp")).filter(|&(p, _)| p >= DATAGRAMS)
    });
    eprintln!(
        "docker container {}: {count} getppid calls counted ({CALLS} made); UDP egress {p} \
         packets, {b} bytes; veth {veth_p} packets, {veth_b} bytes",
        &id[..12]
    );
    assert_eq!(
        (p, b),
        (DATAGRAMS, want),
        "berth's UDP egress for {id}; sent {DATAGRAMS} x {} bytes",
        HEADERS + PAYLOAD
    );
    // The veth also carries what no socket of the container sent (ARP): within 2%.
    assert!(veth_p >= DATAGRAMS, "veth carried {veth_p} packets");
    let apart = (veth_b as f64 - b as f64).abs() / veth_b as f64;
    assert!(
        apart <= 0.02,
        "berth {b} bytes, veth {veth_b} bytes in {veth_p} packets ({:.2}% apart)\n{}",
        apart * 100.0,
        tail(&host.agent.log())
    );
    // Nothing came back: the peer never answers.
    let c = host.find(&id).unwrap();
    assert_eq!(net_count(&c, "ingress", "udp"), (0, 0), "{c}");
    drop(peer);
}
