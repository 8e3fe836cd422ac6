//! Behaviour tests of the `ebpf` backend against the real kernel (root): the programs loaded,
//! attached to veths of namespaces the test creates, traffic only between those namespaces.
//! The sock_addr hooks attach at the host's cgroup2 root but act only for sockets of the test's
//! "host" namespace (its cookie); a guard removes every pin, also when a test fails.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use aya::{
    maps::{HashMap as BpfHash, Map, MapData},
    programs::{SchedClassifier, TcAttachType},
};
use berth_common::portmap::{PortKey, PortTarget, Stat, maps};
use berth_testkit::{Netns, sh, sh_in, veth};

use super::{Ebpf, EbpfOptions};
use crate::net::{
    host_veth,
    portmap::{
        Backend, ensure_sysctls,
        tests::{
            BRIDGE_IP, CLIENT_IP, CTR_IP, Echo, HOST_IP, Topology, nft_json, pubs, run_prefix,
            tcp_echo, topology_with, udp_ask, udp_echo,
        },
    },
};

const OWNER: &str = "ctr-1";

/// Removes the test's pins (links first: that detaches its programs) when dropped.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        super::plane::remove_all(&self.0);
        let _ = std::fs::remove_dir(self.0.parent().expect("pin root"));
    }
}

/// `tag` keeps the pins of tests running at once apart (bpffs is not per namespace).
fn options(tag: &str) -> EbpfOptions {
    let cg = crate::cgroup::Hierarchy::detect()
        .expect("a cgroup2 mount (the sock_addr hooks attach to it)")
        .unified_mount;
    EbpfOptions {
        uplinks: vec![format!("{}x", run_prefix())],
        cgroup2: Some(cg),
        pin_root: PathBuf::from(format!(
            "/sys/fs/bpf/berth-test-{}-{tag}",
            std::process::id()
        )),
    }
}

/// The topology with the container's veth named as berth names it for [`OWNER`], and the
/// backend (not set up).
fn setup(tag: &str) -> (Topology, Ebpf, Pins) {
    let topo = topology_with(&host_veth(OWNER));
    let b = Ebpf::new(topo.cfg.clone(), options(tag));
    let pins = Pins(b.pin_dir());
    topo.host.run(|| ensure_sysctls(&topo.cfg.bridge).unwrap());
    (topo, b, pins)
}

fn stat(b: &Ebpf, s: Stat) -> u64 {
    b.stats().expect("the data plane's counters are pinned")[&s]
}

/// Packets counted by the slow-path table's DNAT rules.
fn dnat_packets(topo: &Topology, b: &Ebpf) -> u64 {
    let json = topo
        .host
        .run(|| nft_json(&format!("list chain ip {} published", b.slow_table())));
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("rule"))
        .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.get("counter").map(|c| c["packets"].as_u64().unwrap()))
        .sum()
}

fn conntrack_lines(topo: &Topology, proto: &str, port: u16) -> usize {
    topo.host.run(|| {
        sh(&format!(
            "conntrack -L -p {proto} --orig-port-dst {port} 2>/dev/null || true"
        ))
        .lines()
        .count()
    })
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn pinned_ports(b: &Ebpf) -> usize {
    let data = MapData::from_pin(b.pin_dir().join(maps::PM_PORTS)).unwrap();
    let m: BpfHash<_, PortKey, PortTarget> = BpfHash::try_from(Map::HashMap(data)).unwrap();
    m.keys().count()
}

fn tcx_programs(ns: &Netns, ifname: &str) -> usize {
    let ifname = ifname.to_owned();
    ns.run(move || {
        SchedClassifier::query_tcx(&ifname, TcAttachType::Ingress)
            .map(|(_, progs)| progs.len())
            .unwrap()
    })
}

#[test]
fn udp_through_20000_ebpf_ports_bypasses_conntrack_and_answers_clients_the_host_and_hairpin() {
    let (topo, b, _pins) = setup("udp");
    let publish = pubs(&[
        "20000-39999:20000-39999/udp",
        "45000:45001/udp",
        "8080:80/tcp",
        &format!("{HOST_IP}:7001:7001/udp"),
    ]);
    topo.host.run(|| {
        b.setup().unwrap();
        b.add(OWNER, CTR_IP, &publish).unwrap();
    });
    assert_eq!(pinned_ports(&b), 20_003);
    let _echo = Echo::start(&topo.ctr, &[20000, 30000, 39999, 45001, 7001], &[80]);
    let fwd0 = stat(&b, Stat::ForwardHit);
    let reply0 = stat(&b, Stat::ReplyHit);

    // Clients elsewhere: first, middle and last port, host port != container port, an
    // address-bound mapping, TCP. The reply comes from the published address (udp_echo checks),
    // the client's address is kept.
    for port in [20000, 30000, 39999, 45000, 7001] {
        let text = udp_echo(&topo.client, at(HOST_IP, port));
        assert!(text.contains(&format!("from {CLIENT_IP}:")), "{text}");
    }
    tcp_echo(&topo.client, at(HOST_IP, 8080));
    let fwd = stat(&b, Stat::ForwardHit) - fwd0;
    let replies = stat(&b, Stat::ReplyHit) - reply0;
    assert!(
        fwd >= 6 + 3,
        "forward hits {fwd}: the fast path must have served every client"
    );
    assert!(replies >= 6 + 3, "reply hits {replies}");
    // Past conntrack and NAT: no entry, the DNAT rules' counters did not move.
    assert_eq!(conntrack_lines(&topo, "udp", 30000), 0);
    assert_eq!(conntrack_lines(&topo, "tcp", 8080), 0);
    assert_eq!(dnat_packets(&topo, &b), 0);

    // The host itself, through the sock_addr hooks: its address, 127.0.0.1, TCP.
    let sock0 = stat(&b, Stat::SockHit);
    udp_echo(&topo.host, at(HOST_IP, 20000));
    let text = udp_echo(&topo.host, at(Ipv4Addr::LOCALHOST, 39999));
    assert!(text.contains(&format!("from {BRIDGE_IP}:")), "{text}");
    tcp_echo(&topo.host, at(Ipv4Addr::LOCALHOST, 8080));
    assert!(stat(&b, Stat::SockHit) - sock0 >= 3);

    // Hairpin: the container reaches its own published port (the nft slow path).
    let dnat0 = dnat_packets(&topo, &b);
    let text = udp_echo(&topo.ctr, at(HOST_IP, 30000));
    assert!(
        text.contains(&format!("from {BRIDGE_IP}:")),
        "masqueraded: {text}"
    );
    assert!(dnat_packets(&topo, &b) > dnat0);

    // Bypass proof: 100,000 new flows (5 source ports x 20,000 published ports), counted by a
    // rule in the container's namespace as they arrive.
    topo.ctr.run(|| {
        sh_in(
            "nft -f -",
            "table ip sink {\n chain in {\n type filter hook input priority 0; policy accept;\n \
             udp dport 20000-39999 counter\n }\n}\n",
        )
        .unwrap();
    });
    let fwd0 = stat(&b, Stat::ForwardHit);
    let dnat0 = dnat_packets(&topo, &b);
    let socks: Vec<UdpSocket> = topo.client.run(|| {
        (0..5)
            .map(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap())
            .collect()
    });
    let mut sent = 0u64;
    for s in &socks {
        for port in 20000..40000u16 {
            s.send_to(b"x", at(HOST_IP, port)).unwrap();
            sent += 1;
            if sent.is_multiple_of(200) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let received: u64 = topo.ctr.run(|| {
        let json: serde_json::Value =
            serde_json::from_str(&sh("nft -j list chain ip sink in")).unwrap();
        json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.get("rule"))
            .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e.get("counter").map(|c| c["packets"].as_u64().unwrap()))
            .sum()
    });
    let fwd = stat(&b, Stat::ForwardHit) - fwd0;
    println!("bypass: sent {sent}, received {received}, forward hits {fwd}");
    assert!(received * 100 >= sent * 99, "received {received} of {sent}");
    assert!(
        fwd >= received && fwd <= sent,
        "forward hits {fwd}, sent {sent}, received {received}"
    );
    assert_eq!(
        dnat_packets(&topo, &b),
        dnat0,
        "no packet took the DNAT rules"
    );
    assert_eq!(conntrack_lines(&topo, "udp", 25000), 0);

    // Removed: nothing of the container is left in the maps or on its veth.
    topo.host.run(|| b.remove(OWNER).unwrap());
    assert_eq!(pinned_ports(&b), 0);
    assert_eq!(tcx_programs(&topo.host, &host_veth(OWNER)), 0);
    assert_eq!(udp_ask(&topo.client, at(HOST_IP, 30000), 1), None);
    topo.host.run(|| b.teardown().unwrap());
    assert!(!b.pin_dir().exists());
    assert_eq!(tcx_programs(&topo.host, &format!("{}x", run_prefix())), 0);
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..50 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// RFC 1071 checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// From the calling thread's namespace, an ICMP "fragmentation needed" (next-hop MTU `mtu`)
/// quoting a UDP datagram `from` -> `to`, as a router on the way would send it to `from`.
fn send_frag_needed(from: Ipv4Addr, sport: u16, to: Ipv4Addr, dport: u16, mtu: u16) {
    let mut inner = vec![0u8; 28];
    inner[0] = 0x45;
    inner[2..4].copy_from_slice(&1500u16.to_be_bytes());
    inner[6] = 0x40; // DF
    inner[8] = 64;
    inner[9] = 17;
    inner[12..16].copy_from_slice(&from.octets());
    inner[16..20].copy_from_slice(&to.octets());
    let c = checksum(&inner[..20]);
    inner[10..12].copy_from_slice(&c.to_be_bytes());
    inner[20..22].copy_from_slice(&sport.to_be_bytes());
    inner[22..24].copy_from_slice(&dport.to_be_bytes());
    inner[24..26].copy_from_slice(&1480u16.to_be_bytes());
    let mut icmp = vec![3u8, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&inner);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    // SAFETY: a raw ICMP socket, closed below; sendto with a valid sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(from.octets()),
            },
            sin_zero: [0; 8],
        };
        let n = libc::sendto(
            fd,
            icmp.as_ptr().cast(),
            icmp.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n as usize, icmp.len(), "sendto: {err}");
    }
}

/// Sends `n` bytes of a known pattern.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn tcp_transfers_resets_icmp_errors_fragments_and_routed_traffic_through_an_ebpf_mapping() {
    let (topo, b, _pins) = setup("tcp");
    let pre = run_prefix();
    topo.host.run(|| {
        b.setup().unwrap();
        b.add(
            OWNER,
            CTR_IP,
            &pubs(&["9090:90/tcp", "8081:81/tcp", "20000-20009:20000-20009/udp"]),
        )
        .unwrap();
    });
    const SIZE: usize = 10 << 20;
    // 10 MB each way: the server reads everything, checks it, then sends as much back.
    let listener = topo
        .ctr
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 90)).unwrap());
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert!(
            got == pattern(SIZE),
            "server got {} bytes, not the pattern",
            got.len()
        );
        c.write_all(&pattern(SIZE)).unwrap();
    });
    let fwd0 = stat(&b, Stat::ForwardHit);
    let mut conn = topo
        .client
        .run(|| TcpStream::connect_timeout(&at(HOST_IP, 9090).into(), Duration::from_secs(3)))
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(&pattern(SIZE)).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap(); // FIN
    let mut back = Vec::new();
    conn.read_to_end(&mut back).unwrap();
    server.join().unwrap();
    assert!(
        back == pattern(SIZE),
        "client got {} bytes back",
        back.len()
    );
    assert!(stat(&b, Stat::ForwardHit) - fwd0 > 100);
    assert_eq!(conntrack_lines(&topo, "tcp", 9090), 0);

    // RST: a published port with no listener is refused by the container itself.
    let e = topo
        .client
        .run(|| TcpStream::connect_timeout(&at(HOST_IP, 8081).into(), Duration::from_secs(3)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");

    // ICMP port unreachable from the container reaches a connected client as ECONNREFUSED.
    let icmp0 = stat(&b, Stat::IcmpHit);
    let sock = topo.client.run(|| {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        s.connect(at(HOST_IP, 20005)).unwrap();
        s
    });
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send(b"anyone?").unwrap();
    let e = sock.recv(&mut [0u8; 64]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(stat(&b, Stat::IcmpHit) > icmp0);

    // A client's frag-needed about a datagram the container sent from a published port reaches
    // the container: its route to the client learns the smaller MTU.
    let _mtu_echo = Echo::start(&topo.ctr, &[20003], &[]);
    let icmp0 = stat(&b, Stat::IcmpHit);
    topo.client
        .run(|| send_frag_needed(HOST_IP, 20003, CLIENT_IP, 40000, 1200));
    wait_until("the container's route to learn MTU 1200", || {
        topo.ctr
            .run(|| sh(&format!("ip route get {CLIENT_IP}")))
            .contains("mtu 1200")
    });
    assert!(stat(&b, Stat::IcmpHit) > icmp0);

    // A 3,000-byte datagram arrives fragmented: declined, and delivered by the slow path.
    let _echo = Echo::start(&topo.ctr, &[20001], &[]);
    let frag0 = stat(&b, Stat::FallbackFragment);
    let dnat0 = dnat_packets(&topo, &b);
    let big = topo
        .client
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap());
    big.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answered = false;
    for _ in 0..3 {
        big.send_to(&vec![b'f'; 3000], at(HOST_IP, 20001)).unwrap();
        let mut buf = [0u8; 4096];
        if let Ok((n, from)) = big.recv_from(&mut buf) {
            assert_eq!(from, std::net::SocketAddr::V4(at(HOST_IP, 20001)));
            assert!(n > 1000, "echo of {n} bytes");
            answered = true;
            break;
        }
    }
    assert!(answered, "the fragmented datagram was not answered");
    assert!(stat(&b, Stat::FallbackFragment) > frag0);
    assert!(dnat_packets(&topo, &b) > dnat0);

    // Routed through the host to another namespace on a published port number: not hijacked.
    let far = Netns::new();
    let far_ip = Ipv4Addr::new(10, 78, 0, 2);
    topo.host.run(|| {
        veth(&format!("{pre}f"), &far, "eth0");
        sh(&format!("ip addr add 10.78.0.1/24 dev {pre}f"));
        sh(&format!("ip link set {pre}f up"));
    });
    far.run(|| {
        sh(&format!("ip addr add {far_ip}/24 dev eth0"));
        sh("ip link set eth0 up");
        sh("ip route add default via 10.78.0.1");
    });
    topo.client
        .run(|| sh(&format!("ip route add 10.78.0.0/24 via {HOST_IP}")));
    let _far_echo = Echo::start(&far, &[20001], &[]);
    let fwd0 = stat(&b, Stat::ForwardHit);
    udp_echo(&topo.client, at(far_ip, 20001));
    assert_eq!(
        stat(&b, Stat::ForwardHit),
        fwd0,
        "routed traffic was mapped"
    );
    topo.host.run(|| b.teardown().unwrap());
}

#[test]
fn the_mapping_outlives_the_backend_object_and_a_new_one_takes_it_over() {
    let (topo, b, _pins) = setup("restart");
    topo.host.run(|| {
        b.setup().unwrap();
        b.add(OWNER, CTR_IP, &pubs(&["20000-20099:30000-30099/udp"]))
            .unwrap();
    });
    let _echo = Echo::start(&topo.ctr, &[30050], &[]);
    udp_echo(&topo.client, at(HOST_IP, 20050));
    // The agent goes away without cleaning up (its fds closed, as on kill -9).
    drop(b);
    let fwd_after_crash = {
        let s = super::plane::read_stats(
            &super::Ebpf::new(topo.cfg.clone(), options("restart")).pin_dir(),
        )
        .unwrap();
        s[&Stat::ForwardHit]
    };
    udp_echo(&topo.client, at(HOST_IP, 20050));
    let b2 = Ebpf::new(topo.cfg.clone(), options("restart"));
    assert!(
        stat(&b2, Stat::ForwardHit) > fwd_after_crash,
        "served while no agent ran"
    );
    topo.host.run(|| b2.setup().unwrap());
    udp_echo(&topo.client, at(HOST_IP, 20050));
    assert_eq!(
        topo.host.run(|| b2.owners().unwrap()),
        vec![OWNER.to_owned()]
    );
    // The container restarts with a new veth (new ifindex): the mapping follows it.
    let veth_name = host_veth(OWNER);
    topo.host.run(|| {
        sh(&format!("ip link del {veth_name}"));
        veth(&veth_name, &topo.ctr, "eth0");
        sh(&format!(
            "ip link set {veth_name} master {}",
            topo.cfg.bridge
        ));
        sh(&format!("ip link set {veth_name} up"));
    });
    topo.ctr.run(|| {
        sh(&format!("ip addr add {CTR_IP}/24 dev eth0"));
        sh("ip link set eth0 up");
        sh(&format!("ip route add default via {BRIDGE_IP}"));
    });
    topo.host.run(|| {
        b2.remove(OWNER).unwrap();
        b2.add(OWNER, CTR_IP, &pubs(&["20000-20099:30000-30099/udp"]))
            .unwrap();
    });
    udp_echo(&topo.client, at(HOST_IP, 20050));
    assert_eq!(tcx_programs(&topo.host, &veth_name), 1);
    let reserved = topo
        .host
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap());
    assert_eq!(reserved.trim(), "20000-20099");
    topo.host.run(|| b2.remove(OWNER).unwrap());
    let reserved = topo
        .host
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap());
    assert_eq!(reserved.trim(), "");
    let e = topo
        .host
        .run(|| b2.add(OWNER, CTR_IP, &pubs(&["61000:80/udp"])).unwrap_err());
    assert!(e.to_string().contains("61000-65535"), "{e}");
    assert!(e.is_client_error());
    topo.host.run(|| b2.teardown().unwrap());
    assert!(!b2.pin_dir().exists());
}
