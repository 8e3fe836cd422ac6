//! Behaviour tests of both backends against the real nft and iptables (root), each inside network
//! namespaces the test creates ([`berth_testkit::Netns`]): the host's own tables, chains,
//! interfaces and sysctls are never touched, and everything vanishes with the test, also when it
//! fails. Traffic goes only between those namespaces.
//!
//! Timings (a 20,000-port add per backend) are printed, never asserted; see them with
//! `cargo test -p berth --lib net::portmap -- --nocapture`.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use berth_testkit::{Netns, sh, sh_in, veth};
use serde_json::Value;

use super::{
    BackendKind, PortmapConfig, PortmapError, backend, ensure_sysctls, nft, parse_publish,
};

/// Unique per test run: names of tables, chains and interfaces start with it.
pub(super) fn run_prefix() -> String {
    format!("bpm{}", std::process::id())
}

pub(super) const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub(super) const CTR_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub(super) const HOST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
pub(super) const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

pub(super) fn config() -> PortmapConfig {
    PortmapConfig {
        table: run_prefix(),
        bridge: format!("{}br", run_prefix()),
        subnet: "10.77.0.0/24".parse().unwrap(),
    }
}

pub(super) fn pubs(flags: &[&str]) -> Vec<super::Publish> {
    flags.iter().map(|f| parse_publish(f).unwrap()).collect()
}

pub(super) fn nft_json(args: &str) -> Value {
    serde_json::from_str(&sh(&format!("nft -j {args}"))).unwrap()
}

/// (chain, rule text) of every rule in our table, from `nft -j list table`.
fn nft_rules(table: &str) -> Vec<(String, String)> {
    let json = nft_json(&format!("list table ip {table}"));
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("rule"))
        .map(|r| {
            (
                r["chain"].as_str().unwrap().to_owned(),
                r["expr"].to_string(),
            )
        })
        .collect()
}

fn nft_element_count(table: &str, map: &str) -> usize {
    let json = nft_json(&format!("list map ip {table} {map}"));
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("map"))
        .map(|m| m.get("elem").and_then(Value::as_array).map_or(0, Vec::len))
        .sum()
}

fn nft_tables() -> Vec<String> {
    let json = nft_json("list tables");
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("table"))
        .map(|t| {
            format!(
                "{} {}",
                t["family"].as_str().unwrap(),
                t["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn nft_map_keeps_one_rule_per_hook_whatever_the_number_of_ports() {
    let ns = Netns::new();
    ns.run(|| {
        let cfg = config();
        let t = cfg.table.clone();
        // Someone else's table: must survive everything below.
        let other = format!("{t}x");
        sh_in(
            "nft -f -",
            &format!(
                "table ip {other} {{\n chain c {{\n type nat hook prerouting priority dstnat; \
                 policy accept;\n udp dport 30000 counter\n }}\n}}\n"
            ),
        )
        .unwrap();
        let b = backend(BackendKind::NftMap, &cfg);
        assert_eq!(b.kind(), BackendKind::NftMap);
        let e = b.add("early", CTR_IP, &pubs(&["1:1"])).unwrap_err();
        assert!(matches!(e, PortmapError::NotSetUp { .. }), "{e}");
        assert_eq!(b.owners().unwrap(), Vec::<String>::new());

        b.setup().unwrap();
        let rules_empty = nft_rules(&t);

        let big = pubs(&["30000-49999:30000-49999/udp"]);
        let start = Instant::now();
        b.add("owner-a", CTR_IP, &big).unwrap();
        eprintln!(
            "nft-map: add of 20,000 UDP ports took {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        let small = pubs(&["80:8080/tcp", "443:8443/tcp", "127.0.0.1:5432:5432/tcp"]);
        b.add("owner-b", Ipv4Addr::new(10, 77, 0, 3), &small)
            .unwrap();

        // The rules do not grow with ports: one rule per hook, one rule per map.
        let rules = nft_rules(&t);
        assert_eq!(rules, rules_empty);
        let count = |chain: &str| rules.iter().filter(|(c, _)| c == chain).count();
        assert_eq!(count("prerouting"), 1);
        assert_eq!(count("output"), 1);
        assert_eq!(count("published"), 2);
        let text = sh(&format!("nft list table ip {t}"));
        assert_eq!(text.matches("map @ports").count(), 1, "{}", &text[..2000]);
        assert_eq!(text.matches("map @hostports").count(), 1);
        assert_eq!(nft_element_count(&t, "ports"), 20_002);
        assert_eq!(nft_element_count(&t, "hostports"), 1);
        assert_eq!(b.mappings().unwrap().len(), 20_003);
        assert_eq!(b.owners().unwrap(), ["owner-a", "owner-b"]);

        // setup again (agent restart): idempotent, mappings kept.
        b.setup().unwrap();
        assert_eq!(nft_rules(&t), rules_empty);
        assert_eq!(b.mappings().unwrap().len(), 20_003);

        // A port already mapped by another owner: refused, and nothing of that add lands.
        let clash = pubs(&["60000:60000/udp", "49999:1/udp"]);
        let e = b.add("owner-c", CTR_IP, &clash).unwrap_err();
        assert!(
            e.to_string().contains(
                "udp port 49999 on every host address is already published by \"owner-a\""
            ),
            "{e}"
        );
        // The kernel enforces it too: the raw batch fails as a whole.
        let raw = nft::add_script(&cfg, "owner-c", CTR_IP, &clash);
        assert!(sh_in("nft -f -", &raw).is_err());
        assert_eq!(nft_element_count(&t, "ports"), 20_002);
        assert_eq!(b.owners().unwrap(), ["owner-a", "owner-b"]);
        // A host-address mapping against a wildcard one of the same port.
        let e = b
            .add("owner-c", CTR_IP, &pubs(&["127.0.0.1:443:1"]))
            .unwrap_err();
        assert!(e.to_string().contains("\"owner-b\""), "{e}");

        // remove: exactly that owner's elements.
        let start = Instant::now();
        b.remove("owner-a").unwrap();
        eprintln!(
            "nft-map: remove of 20,000 UDP ports took {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        let left = b.mappings().unwrap();
        assert_eq!(left.len(), 3);
        assert!(left.iter().all(|m| m.owner == "owner-b"));
        assert_eq!(b.owners().unwrap(), ["owner-b"]);
        b.remove("owner-a").unwrap();
        b.remove("never-added").unwrap();
        assert!(b.remove("bad owner").is_err());

        b.teardown().unwrap();
        let tables = nft_tables();
        assert!(!tables.contains(&format!("ip {t}")), "{tables:?}");
        assert!(tables.contains(&format!("ip {other}")), "{tables:?}");
        assert!(sh(&format!("nft list table ip {other}")).contains("udp dport 30000"));
        b.teardown().unwrap();
        assert_eq!(b.owners().unwrap(), Vec::<String>::new());
    });
}

/// Rules of `table` from iptables-save, as `-A` lines.
fn ipt_rules(table: &str) -> Vec<String> {
    sh(&format!("iptables-save -t {table}"))
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_owned)
        .collect()
}

fn ipt_chains(table: &str) -> Vec<String> {
    sh(&format!("iptables-save -t {table}"))
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

/// Per-port rules (nat DNAT + hairpin, filter ACCEPT) of `owner`.
fn ipt_port_rules(owner: &str) -> usize {
    let mine = format!("--comment {owner} ");
    ["nat", "filter"]
        .iter()
        .flat_map(|t| ipt_rules(t))
        .filter(|l| l.contains("--dport") && l.contains(&mine))
        .count()
}

#[test]
fn iptables_writes_three_rules_per_port_and_removes_exactly_its_own() {
    let ns = Netns::new();
    ns.run(|| {
        let cfg = config();
        let p = cfg.chain_prefix();
        // Someone else's chains and jumps: must survive everything below.
        let other = format!("{p}X");
        sh(&format!("iptables -t nat -N {other}"));
        sh(&format!("iptables -t nat -A PREROUTING -j {other}"));
        sh(&format!(
            "iptables -t nat -A {other} -p udp --dport 30000 -j RETURN"
        ));
        sh("iptables -t filter -A FORWARD -p udp --dport 30000 -j ACCEPT");
        let foreign_nat = ipt_rules("nat");
        let foreign_filter = ipt_rules("filter");

        let b = backend(BackendKind::Iptables, &cfg);
        assert_eq!(b.kind(), BackendKind::Iptables);
        let e = b.add("early", CTR_IP, &pubs(&["1:1"])).unwrap_err();
        assert!(matches!(e, PortmapError::NotSetUp { .. }), "{e}");
        b.setup().unwrap();
        let base_nat = ipt_rules("nat").len();
        let base_filter = ipt_rules("filter").len();
        b.setup().unwrap();
        assert_eq!(ipt_rules("nat").len(), base_nat, "setup is idempotent");
        assert_eq!(ipt_rules("filter").len(), base_filter);

        let big = pubs(&["30000-49999:30000-49999/udp"]);
        let start = Instant::now();
        b.add("owner-a", CTR_IP, &big).unwrap();
        eprintln!(
            "iptables: add of 20,000 UDP ports (60,000 rules) took {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        let small = pubs(&["80:8080/tcp", "443:8443/tcp", "127.0.0.1:5432:5432/tcp"]);
        b.add("owner-b", Ipv4Addr::new(10, 77, 0, 3), &small)
            .unwrap();

        // Rules grow with ports: 3 per port, plus 3 jumps per owner.
        assert_eq!(ipt_port_rules("owner-a"), 60_000);
        assert_eq!(ipt_port_rules("owner-b"), 9);
        let total = ipt_rules("nat").len() + ipt_rules("filter").len();
        assert_eq!(total, base_nat + base_filter + 3 * 20_003 + 2 * 3);
        assert_eq!(b.mappings().unwrap().len(), 20_003);
        assert_eq!(b.owners().unwrap(), ["owner-a", "owner-b"]);
        b.setup().unwrap();
        assert_eq!(b.mappings().unwrap().len(), 20_003, "setup keeps mappings");

        let clash = pubs(&["60000:60000/udp", "49999:1/udp"]);
        let e = b.add("owner-c", CTR_IP, &clash).unwrap_err();
        assert!(
            e.to_string().contains("already published by \"owner-a\""),
            "{e}"
        );
        assert_eq!(ipt_port_rules("owner-c"), 0);
        assert_eq!(b.owners().unwrap(), ["owner-a", "owner-b"]);

        // A second add for an owner appends to its chains.
        b.add(
            "owner-b",
            Ipv4Addr::new(10, 77, 0, 3),
            &pubs(&["8000:8000/udp"]),
        )
        .unwrap();
        assert_eq!(ipt_port_rules("owner-b"), 12);

        let start = Instant::now();
        b.remove("owner-a").unwrap();
        eprintln!(
            "iptables: remove of 20,000 UDP ports took {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        assert_eq!(ipt_port_rules("owner-a"), 0);
        assert_eq!(ipt_port_rules("owner-b"), 12);
        assert_eq!(b.owners().unwrap(), ["owner-b"]);
        assert_eq!(b.mappings().unwrap().len(), 4);
        b.remove("owner-a").unwrap();

        b.teardown().unwrap();
        assert_eq!(ipt_rules("nat"), foreign_nat);
        assert_eq!(ipt_rules("filter"), foreign_filter);
        let left: Vec<String> = ["nat", "filter"]
            .iter()
            .flat_map(|t| ipt_chains(t))
            .filter(|c| c.starts_with(&p))
            .collect();
        assert_eq!(left, [other]);
        b.teardown().unwrap();
        assert_eq!(b.owners().unwrap(), Vec::<String>::new());
    });
}

#[test]
fn ensure_sysctls_turns_on_forwarding_and_route_localnet_of_the_bridge() {
    let ns = Netns::new();
    ns.run(|| {
        let br = format!("{}s", run_prefix());
        sh(&format!("ip link add {br} type bridge"));
        ensure_sysctls(&br).unwrap();
        ensure_sysctls(&br).unwrap();
        let read = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_owned();
        assert_eq!(read("/proc/sys/net/ipv4/ip_forward"), "1");
        assert_eq!(
            read(&format!("/proc/sys/net/ipv4/conf/{br}/route_localnet")),
            "1"
        );
        assert_eq!(read("/proc/sys/net/ipv4/conf/lo/route_localnet"), "0");
        assert!(ensure_sysctls("bpmnosuchbr").is_err());
    });
}

/// Three namespaces: "host" (rules, bridge, veth to the client), "ctr" (container on the
/// bridge) and "client" (another machine on the host's veth).
pub(super) struct Topology {
    pub(super) host: Netns,
    pub(super) ctr: Netns,
    pub(super) client: Netns,
    pub(super) cfg: PortmapConfig,
}

fn topology() -> Topology {
    topology_with(&format!("{}c", run_prefix()))
}

/// Host, container and client namespaces: the container on a bridge of the host through the
/// veth `ctr_veth`, the client on a veth `<prefix>x` (the host's uplink, [`HOST_IP`]).
pub(super) fn topology_with(ctr_veth: &str) -> Topology {
    let (host, ctr, client) = (Netns::new(), Netns::new(), Netns::new());
    let cfg = config();
    let pre = run_prefix();
    let br = cfg.bridge.clone();
    host.run(|| {
        sh(&format!("ip link add {br} type bridge"));
        sh(&format!("ip addr add {BRIDGE_IP}/24 dev {br}"));
        sh(&format!("ip link set {br} up"));
        veth(ctr_veth, &ctr, "eth0");
        sh(&format!("ip link set {ctr_veth} master {br}"));
        // Needed with br_netfilter (see the module header): the hairpin DNAT is bridged back.
        sh(&format!(
            "ip link set {ctr_veth} type bridge_slave hairpin on"
        ));
        sh(&format!("ip link set {ctr_veth} up"));
        veth(&format!("{pre}x"), &client, "eth0");
        sh(&format!("ip addr add {HOST_IP}/24 dev {pre}x"));
        sh(&format!("ip link set {pre}x up"));
    });
    ctr.run(|| {
        sh(&format!("ip addr add {CTR_IP}/24 dev eth0"));
        sh("ip link set eth0 up");
        sh(&format!("ip route add default via {BRIDGE_IP}"));
    });
    client.run(|| {
        sh(&format!("ip addr add {CLIENT_IP}/24 dev eth0"));
        sh("ip link set eth0 up");
        // Only the bridge address, to show a host-address mapping is not published there.
        sh(&format!("ip route add {BRIDGE_IP}/32 via {HOST_IP}"));
    });
    Topology {
        host,
        ctr,
        client,
        cfg,
    }
}

/// Echo servers in a namespace (UDP and TCP); stopped and joined on drop.
pub(super) struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Echo {
    pub(super) fn start(ns: &Netns, udp: &[u16], tcp: &[u16]) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let (udp_socks, tcp_socks) = ns.run(|| {
            let u: Vec<UdpSocket> = udp
                .iter()
                .map(|p| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, *p)).unwrap())
                .collect();
            let t: Vec<TcpListener> = tcp
                .iter()
                .map(|p| TcpListener::bind((Ipv4Addr::UNSPECIFIED, *p)).unwrap())
                .collect();
            (u, t)
        });
        let mut threads = Vec::new();
        for sock in udp_socks {
            let stop = stop.clone();
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let reply =
                            format!("echo:{} from {from}", String::from_utf8_lossy(&buf[..n]));
                        let _ = sock.send_to(reply.as_bytes(), from);
                    }
                }
            }));
        }
        for listener in tcp_socks {
            let stop = stop.clone();
            listener.set_nonblocking(true).unwrap();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, from)) => {
                            conn.set_nonblocking(false).unwrap();
                            conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                            let mut buf = [0u8; 1500];
                            if let Ok(n) = conn.read(&mut buf) {
                                let reply = format!(
                                    "echo:{} from {from}",
                                    String::from_utf8_lossy(&buf[..n])
                                );
                                let _ = conn.write_all(reply.as_bytes());
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }));
        }
        Echo { stop, threads }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sends one UDP datagram from `ns` to `to` (a few tries) and returns the echo text and where it
/// came from; `None` if nothing came back.
pub(super) fn udp_ask(ns: &Netns, to: SocketAddrV4, tries: u32) -> Option<(String, SocketAddr)> {
    let sock = ns.run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap());
    sock.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let mut buf = [0u8; 1500];
    for i in 0..tries {
        if sock.send_to(format!("ping{i}").as_bytes(), to).is_err() {
            return None;
        }
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            return Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
        }
    }
    None
}

pub(super) fn udp_echo(ns: &Netns, to: SocketAddrV4) -> String {
    let (text, from) = udp_ask(ns, to, 5).unwrap_or_else(|| panic!("no UDP echo from {to}"));
    assert_eq!(
        from,
        SocketAddr::V4(to),
        "reply must come from the published address"
    );
    assert!(text.starts_with("echo:ping"), "{text}");
    text
}

pub(super) fn tcp_echo(ns: &Netns, to: SocketAddrV4) -> String {
    let mut conn = ns
        .run(|| TcpStream::connect_timeout(&to.into(), Duration::from_secs(3)))
        .unwrap_or_else(|e| panic!("TCP connect to {to}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    conn.write_all(b"hello").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("echo:hello"), "{text}");
    text
}

fn end_to_end(kind: BackendKind) {
    let topo = topology();
    let b = backend(kind, &topo.cfg);
    let publish = pubs(&[
        "40000-41999:50000-51999/udp",
        "8080:80/tcp",
        &format!("{HOST_IP}:7001:7001/udp"),
    ]);
    // A service of the host bound to every address, loopback included, and a container that
    // routes 127.0.0.9 to the host (it owns its netns, so it can).
    let _host_service = Echo::start(&topo.host, &[7777], &[]);
    topo.ctr.run(|| {
        sh("ip route del local 127.0.0.0/8 dev lo table local");
        sh(&format!("ip route add 127.0.0.9/32 via {BRIDGE_IP}"));
        for conf in ["all", "eth0"] {
            let path = format!("/proc/sys/net/ipv4/conf/{conf}/route_localnet");
            std::fs::write(path, "1").unwrap();
        }
    });
    let loopback_attack = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), 7777);
    topo.host.run(|| ensure_sysctls(&topo.cfg.bridge).unwrap());
    // route_localnet alone lets the container reach the host's loopback...
    assert!(udp_ask(&topo.ctr, loopback_attack, 3).is_some());
    topo.host.run(|| {
        b.setup().unwrap();
        b.add("ctr-1", CTR_IP, &publish).unwrap();
    });
    // ...the backend's guard rule closes that again (CVE-2020-8558).
    assert_eq!(udp_ask(&topo.ctr, loopback_attack, 1), None);
    let _echo = Echo::start(&topo.ctr, &[50000, 51000, 51999, 7001], &[80]);
    let at = |ip: Ipv4Addr, port: u16| SocketAddrV4::new(ip, port);

    // From another machine: first, middle and last port of the range; client address kept.
    for port in [40000, 41000, 41999] {
        let text = udp_echo(&topo.client, at(HOST_IP, port));
        assert!(text.contains(&format!("from {CLIENT_IP}:")), "{text}");
    }
    tcp_echo(&topo.client, at(HOST_IP, 8080));
    udp_echo(&topo.client, at(HOST_IP, 7001));
    // A host-address mapping is not published on the host's other addresses.
    assert_eq!(udp_ask(&topo.client, at(BRIDGE_IP, 7001), 1), None);

    // From the host itself (output hook): its own address and 127.0.0.1.
    udp_echo(&topo.host, at(HOST_IP, 40000));
    let text = udp_echo(&topo.host, at(Ipv4Addr::LOCALHOST, 41999));
    assert!(
        text.contains(&format!("from {BRIDGE_IP}:")),
        "masqueraded: {text}"
    );
    tcp_echo(&topo.host, at(Ipv4Addr::LOCALHOST, 8080));

    // Hairpin: the container reaches its own published port through the host address.
    let text = udp_echo(&topo.ctr, at(HOST_IP, 41000));
    assert!(
        text.contains(&format!("from {BRIDGE_IP}:")),
        "masqueraded: {text}"
    );
    tcp_echo(&topo.ctr, at(HOST_IP, 8080));

    // After remove (and after teardown) nothing is forwarded any more.
    topo.host.run(|| b.remove("ctr-1").unwrap());
    assert_eq!(udp_ask(&topo.client, at(HOST_IP, 40000), 1), None);
    topo.host.run(|| {
        b.add("ctr-1", CTR_IP, &publish).unwrap();
    });
    udp_echo(&topo.client, at(HOST_IP, 41000));
    topo.host.run(|| b.teardown().unwrap());
    assert_eq!(udp_ask(&topo.client, at(HOST_IP, 40000), 1), None);
}

#[test]
fn nft_map_forwards_published_ports_from_clients_the_host_and_the_container_itself() {
    end_to_end(BackendKind::NftMap);
}

#[test]
fn iptables_forwards_published_ports_from_clients_the_host_and_the_container_itself() {
    end_to_end(BackendKind::Iptables);
}

/// What `nft list table` shows after `setup` (the module docs of `nft` show the same).
const GOLDEN_NFT: &str = r#"table ip {T} {
	map ports {
		type inet_proto . inet_service : ipv4_addr . inet_service
	}

	map hostports {
		type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
	}

	chain published {
		dnat ip to ip daddr . meta l4proto . th dport map @hostports
		dnat ip to meta l4proto . th dport map @ports
	}

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local ip daddr != 127.0.0.0/8 jump published
	}

	chain output {
		type nat hook output priority -100; policy accept;
		fib daddr type local jump published
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.77.0.0/24 oifname != "{BR}" masquerade
		ct status dnat ip saddr 10.77.0.0/24 ip daddr 10.77.0.0/24 masquerade
		ct status dnat ip saddr 127.0.0.0/8 oifname "{BR}" masquerade
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		oifname "{BR}" ct state established,related accept
		oifname "{BR}" ct status dnat accept
		iifname "{BR}" accept
	}

	chain input {
		type filter hook input priority filter; policy accept;
		iifname "{BR}" ip daddr 127.0.0.0/8 ct status ! dnat drop
	}
}
"#;

#[test]
fn nft_lists_the_documented_table_after_setup_twice() {
    let ns = Netns::new();
    ns.run(|| {
        let cfg = config();
        let b = backend(BackendKind::NftMap, &cfg);
        b.setup().unwrap();
        b.setup().unwrap();
        let want = GOLDEN_NFT
            .replace("{T}", &cfg.table)
            .replace("{BR}", &cfg.bridge);
        assert_eq!(sh(&format!("nft list table ip {}", cfg.table)), want);
    });
}
