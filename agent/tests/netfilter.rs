//! The netfilter cost probe on the real kernel, always inside network namespaces this test
//! creates (a BPF netfilter link acts in the netns of the thread that creates it; others may
//! hold links in the host's): attach/EBUSY/detach, exact packet counts through a DNAT rule,
//! per-port iptables rules ranked against an nft map, and the probe's own overhead.
//!
//! Namespaces are anonymous ([`berth_testkit::Netns`]): veths, addresses and rules in them die
//! with their guards, or with the test process. Veth names start with `bnf` and carry the pid.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use aya::maps::PerCpuArray;

use aya::Ebpf;
use berth::{
    cgroup::TrackedRoot,
    probes::netfilter::{
        CtState, Family, Hook, NetfilterProbe, NetfilterSample,
        loader::{self, PRIORITY_FIRST, PRIORITY_LAST},
    },
};
use berth_common::ProbeError;
use berth_testkit::{Netns, unique};

/// Timing tests run one at a time, and not while another test floods a veth.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Two namespaces joined by a veth pair: `client` (10.99.0.2) and `host` (10.99.0.1), the
/// one the probe watches. Both are ours, so the addresses collide with nothing.
struct Pair {
    client: Netns,
    host: Netns,
}

const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

impl Pair {
    /// One nft rule in the host namespace: UDP to `UDP_DPORT` is DNATed to `HOST_IP:port`.
    fn dnat_to(&self, port: u16) {
        self.host
            .sh_in(
                "nft -f -",
                &format!(
                    "table ip bnf {{
                       chain pre {{
                         type nat hook prerouting priority dstnat; policy accept;
                         udp dport {UDP_DPORT} dnat to {HOST_IP}:{port}
                       }}
                     }}"
                ),
            )
            .unwrap();
    }

    fn new() -> Self {
        let client = Netns::new();
        let host = Netns::new();
        let (a, b) = (unique("bnf"), unique("bnf"));
        host.veth(&a, &client, &b);
        host.sh(&format!("ip addr add 10.99.0.1/24 dev {a}"));
        host.sh(&format!("ip link set {a} up"));
        client.sh(&format!("ip addr add 10.99.0.2/24 dev {b}"));
        client.sh(&format!("ip link set {b} up"));
        Self { client, host }
    }
}

fn tracked_root() -> TrackedRoot {
    // Only the syscall probe uses it; it is not started here.
    TrackedRoot {
        dir: PathBuf::from("/nonexistent"),
        // Unique: Probes::start pins its maps under a directory named after it.
        path: format!("/berth-nf-test-{}", std::process::id()),
        id: 0,
        level: 0,
    }
}

/// Loads berth's object and starts the netfilter probe inside `ns`, counting the UDP ports
/// `published` per port (as the agent does with containers' published ports).
fn start_probe(ns: &Netns, published: &[u16]) -> (Ebpf, NetfilterProbe) {
    ns.run(|| {
        let mut ebpf =
            berth::probes::load_object(&tracked_root(), false, None).expect("loading the object");
        let mut probe = NetfilterProbe::start(Some(&mut ebpf), true);
        assert!(
            probe.status.attached,
            "netfilter probe not attached: {:?}",
            probe.status
        );
        publish(&mut probe, &mut ebpf, published);
        (ebpf, probe)
    })
}

fn publish(probe: &mut NetfilterProbe, ebpf: &mut Ebpf, udp_ports: &[u16]) {
    let want = udp_ports.iter().map(|p| (17, *p)).collect();
    probe.publish(ebpf, &want).expect("writing NF_PUBLISHED");
}

fn loaded_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

#[test]
fn both_programs_attach_on_every_hook_a_second_instance_moves_over_and_drop_detaches() {
    let ns = Netns::new();
    let (ebpf1, probe1) = start_probe(&ns, &[]);
    println!("status: {:?}", probe1.status);
    assert_eq!(probe1.status.paths["netfilter_pair"], "ok");
    assert!(
        probe1.status.paths["fentry"] == "available"
            || probe1.status.paths["fentry"].starts_with("unavailable ("),
        "{:?}",
        probe1.status.paths
    );
    assert_eq!(probe1.attachments.len(), 10, "{:?}", probe1.attachments);
    for a in &probe1.attachments {
        assert_eq!(
            (a.first_priority, a.last_priority),
            (PRIORITY_FIRST, PRIORITY_LAST),
            "{a:?}"
        );
    }
    for family in Family::ALL {
        for hook in Hook::ALL {
            assert!(
                probe1
                    .attachments
                    .iter()
                    .any(|a| a.family == family && a.hook == hook),
                "{family:?} {hook:?} missing"
            );
        }
    }
    let links = loader::netfilter_links().unwrap();
    let ids1 = probe1.link_ids();
    assert_eq!(ids1.len(), 20);
    for id in &ids1 {
        let (pf, hook, priority) = links[id];
        assert!(pf == 2 || pf == 10, "link {id}: pf {pf}");
        assert!(hook < 5);
        assert!(priority == PRIORITY_FIRST || priority == PRIORITY_LAST);
    }

    // A second instance in the same namespace: EBUSY on those priorities, the next ones.
    let (ebpf2, probe2) = start_probe(&ns, &[]);
    for a in &probe2.attachments {
        assert_eq!(
            (a.first_priority, a.last_priority),
            (PRIORITY_FIRST + 1, PRIORITY_LAST - 1),
            "{a:?}"
        );
    }
    let programs1 = probe1.status.program_ids.clone();
    assert!(programs1.iter().all(|id| loaded_program_ids().contains(id)));

    drop(probe1);
    drop(ebpf1);
    let links = loader::netfilter_links().unwrap();
    for id in &ids1 {
        assert!(
            !links.contains_key(id),
            "link {id} still attached after drop"
        );
    }
    for id in probe2.link_ids() {
        assert!(
            links.contains_key(&id),
            "the second instance's link {id} went too"
        );
    }
    // Programs are freed after an RCU grace period.
    let deadline = Instant::now() + Duration::from_secs(5);
    while programs1.iter().any(|id| loaded_program_ids().contains(id)) {
        assert!(
            Instant::now() < deadline,
            "programs {programs1:?} still loaded 5 s after drop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ids2 = probe2.link_ids();
    drop(probe2);
    drop(ebpf2);
    let links = loader::netfilter_links().unwrap();
    assert!(ids2.iter().all(|id| !links.contains_key(id)));
}

fn sample(probe: &NetfilterProbe, ebpf: &Ebpf) -> NetfilterSample {
    probe.read(ebpf).expect("reading the netfilter maps")
}

/// (packets, nanoseconds) of one key, 0 when absent.
fn port_cost(s: &NetfilterSample, hook: Hook, port: u16, ct: CtState) -> (u64, u64) {
    family_port_cost(s, Family::Ipv4, hook, port, ct)
}

fn family_port_cost(
    s: &NetfilterSample,
    family: Family,
    hook: Hook,
    port: u16,
    ct: CtState,
) -> (u64, u64) {
    s.by_port
        .iter()
        .find(|c| {
            c.family == family
                && c.proto == 17
                && c.hook == hook
                && c.port == port
                && c.ct_state == ct
        })
        .map_or((0, 0), |c| (c.packets, c.nanoseconds))
}

fn probe_errors(ebpf: &Ebpf, e: ProbeError) -> u64 {
    let errors = PerCpuArray::<_, u64>::try_from(ebpf.map("PROBE_ERRORS").unwrap()).unwrap();
    errors.get(&(e as u32), 0).unwrap().iter().sum()
}

const UDP_DPORT: u16 = 8053;
const TARGET_PORT: u16 = 5353;
const PACKETS: u64 = 200;

#[test]
fn udp_packets_through_a_dnat_rule_are_counted_under_the_published_port_and_state() {
    let _serial = serial();
    let pair = Pair::new();
    pair.dnat_to(TARGET_PORT);
    let (ebpf, probe) = start_probe(&pair.host, &[UDP_DPORT]);
    let server = pair
        .host
        .run(|| UdpSocket::bind(SocketAddrV4::new(HOST_IP, TARGET_PORT)).unwrap());
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();

    // Ping-pong on one flow: the first packet is NEW, the rest ESTABLISHED; every answer is a
    // reply of the same connection.
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 64];
            for _ in 0..PACKETS {
                let Ok((n, from)) = server.recv_from(&mut buf) else {
                    return;
                };
                server.send_to(&buf[..n], from).unwrap();
            }
        });
        pair.client.run(|| {
            let c = UdpSocket::bind(SocketAddrV4::new(CLIENT_IP, 40000)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 64];
            for i in 0..PACKETS {
                c.send_to(b"ping", SocketAddrV4::new(HOST_IP, UDP_DPORT))
                    .unwrap();
                let (_, from) = c
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("no answer to packet {i}: {e}"));
                assert_eq!(from.port(), UDP_DPORT, "the answer was not un-NATed");
            }
        });
    });

    let s = sample(&probe, &ebpf);
    let (new, new_ns) = port_cost(&s, Hook::Prerouting, UDP_DPORT, CtState::New);
    let (est, est_ns) = port_cost(&s, Hook::Prerouting, UDP_DPORT, CtState::Established);
    let (replies, _) = port_cost(&s, Hook::Output, UDP_DPORT, CtState::Reply);
    let (input_new, _) = port_cost(&s, Hook::Input, UDP_DPORT, CtState::New);
    let (input_est, _) = port_cost(&s, Hook::Input, UDP_DPORT, CtState::Established);
    println!(
        "prerouting udp/{UDP_DPORT}: new {new} packets {new_ns} ns, established {est} packets \
         {est_ns} ns ({:.0} ns/packet); input new {input_new} established {input_est}; \
         output replies {replies}; unmatched {}",
        est_ns as f64 / est.max(1) as f64,
        probe_errors(&ebpf, ProbeError::NetfilterUnmatched)
    );
    for c in &s.by_port {
        println!("  {c:?}");
    }
    assert_eq!(new, 1, "the flow's first packet is NEW");
    assert!(
        new + est >= PACKETS && new + est <= PACKETS + 2,
        "berth counted {} packets on prerouting for udp/{UDP_DPORT}, {PACKETS} were sent",
        new + est
    );
    assert!(new_ns > 0 && est_ns > 0);
    // After the DNAT, input still counts under the published port, not TARGET_PORT.
    assert_eq!(input_new, 1);
    assert!(
        (PACKETS - 1..=PACKETS + 1).contains(&input_est),
        "{input_est}"
    );
    assert_eq!(
        port_cost(&s, Hook::Input, TARGET_PORT, CtState::Established).0,
        0
    );
    // The server's answers: the reply direction of the same connection.
    assert!((PACKETS..=PACKETS + 2).contains(&replies), "{replies}");
    let pre = s
        .hooks
        .iter()
        .find(|h| h.family == Family::Ipv4 && h.hook == Hook::Prerouting)
        .unwrap();
    assert!(pre.packets >= PACKETS && pre.nanoseconds >= new_ns + est_ns);
    assert_eq!(probe_errors(&ebpf, ProbeError::NetfilterPortsFull), 0);
}

/// Sends one UDP packet to `HOST_IP:port` from each source port of `sources` (a new flow per
/// packet) inside `ns`; returns the sender thread's CPU time plus ksoftirqd's, in ns.
fn send_new_flows(ns: &Netns, port: u16, sources: std::ops::Range<u16>) -> u64 {
    ns.run(|| {
        let soft = ksoftirqd_ns();
        let start = thread_cpu_ns();
        for src in sources {
            let s = UdpSocket::bind(SocketAddrV4::new(CLIENT_IP, src)).unwrap();
            s.send_to(b"x", SocketAddrV4::new(HOST_IP, port)).unwrap();
        }
        thread_cpu_ns() - start + ksoftirqd_ns().saturating_sub(soft)
    })
}

fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Run time of every ksoftirqd thread (softirq work deferred out of the sender's context).
fn ksoftirqd_ns() -> u64 {
    let mut total = 0;
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let dir = entry.path();
        let is_ksoftirqd =
            fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"));
        if is_ksoftirqd && let Ok(s) = fs::read_to_string(dir.join("schedstat")) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

const RULES: u16 = 5000;
const FIRST_PORT: u16 = 20000;
const SINK_PORT: u16 = 9;

/// A client/host pair whose host DNATs `FIRST_PORT..FIRST_PORT+RULES` to `HOST_IP:SINK_PORT`,
/// with an unread socket there (no ICMP errors), and the probe attached.
struct RankCase {
    label: &'static str,
    pair: Pair,
    _sink: UdpSocket,
    ebpf: Ebpf,
    probe: NetfilterProbe,
}

impl RankCase {
    fn new(label: &'static str, per_port_rules: bool) -> Self {
        let pair = Pair::new();
        let last = FIRST_PORT + RULES;
        if per_port_rules {
            // Docker's shape: a chain jumped to from PREROUTING, one DNAT rule per port.
            let mut rules = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:BNF - [0:0]\n");
            rules.push_str("-A PREROUTING -m addrtype --dst-type LOCAL -j BNF\n");
            for port in FIRST_PORT..last {
                rules.push_str(&format!(
                    "-A BNF -d {HOST_IP}/32 -p udp -m udp --dport {port} \
                     -j DNAT --to-destination {HOST_IP}:{SINK_PORT}\n"
                ));
            }
            rules.push_str("COMMIT\n");
            pair.host.sh_in("iptables-nft-restore", &rules).unwrap();
        } else {
            let elements: Vec<String> = (FIRST_PORT..last)
                .map(|p| format!("{p} : {HOST_IP} . {SINK_PORT}"))
                .collect();
            pair.host
                .sh_in(
                    "nft -f -",
                    &format!(
                        "table ip bnf {{
                           map ports {{
                             type inet_service : ipv4_addr . inet_service
                             elements = {{ {} }}
                           }}
                           chain pre {{
                             type nat hook prerouting priority dstnat; policy accept;
                             ip daddr {HOST_IP} dnat ip to udp dport map @ports
                           }}
                         }}",
                        elements.join(", ")
                    ),
                )
                .unwrap();
        }
        let sink = pair
            .host
            .run(|| UdpSocket::bind(SocketAddrV4::new(HOST_IP, SINK_PORT)).unwrap());
        let published: Vec<u16> = (FIRST_PORT..last).collect();
        let (ebpf, probe) = start_probe(&pair.host, &published);
        Self {
            label,
            pair,
            _sink: sink,
            ebpf,
            probe,
        }
    }

    /// ns per packet netfilter spent on prerouting for `count` new flows to the last port.
    fn prerouting_ns_per_new_flow(&self, round: u16, count: u16) -> f64 {
        let port = FIRST_PORT + RULES - 1;
        let before = port_cost(
            &sample(&self.probe, &self.ebpf),
            Hook::Prerouting,
            port,
            CtState::New,
        );
        let base = 30000 + round * count;
        send_new_flows(&self.pair.client, port, base..base + count);
        let after = port_cost(
            &sample(&self.probe, &self.ebpf),
            Hook::Prerouting,
            port,
            CtState::New,
        );
        let packets = after.0 - before.0;
        assert!(
            packets >= count as u64,
            "{}: {packets} new flows counted, {count} sent",
            self.label
        );
        (after.1 - before.1) as f64 / packets as f64
    }
}

#[test]
fn per_port_iptables_rules_cost_more_per_new_flow_than_one_nft_map() {
    let _serial = serial();
    let rules = RankCase::new("iptables-nft, 5000 rules", true);
    let map = RankCase::new("nft map, 5000 elements", false);
    let mut ratios = Vec::new();
    for round in 0..3 {
        let r = rules.prerouting_ns_per_new_flow(round, 200);
        let m = map.prerouting_ns_per_new_flow(round, 200);
        println!(
            "round {round}: prerouting per new flow to the last port: {} {r:.0} ns, {} \
             {m:.0} ns, ratio {:.1}",
            rules.label,
            map.label,
            r / m
        );
        ratios.push(r / m);
    }
    for ratio in ratios {
        assert!(
            ratio >= 5.0,
            "per-port rules were only {ratio:.1}x the map's cost per new flow"
        );
    }
}

#[test]
fn probe_overhead_on_a_veth_path_is_printed() {
    let _serial = serial();
    let pair = Pair::new();
    pair.dnat_to(SINK_PORT);
    let _sink = pair
        .host
        .run(|| UdpSocket::bind(SocketAddrV4::new(HOST_IP, SINK_PORT)).unwrap());
    const COUNT: u64 = 20_000;
    // One-way flow from one socket: the DNAT'd path of a published port, conntrack included.
    let send = || -> f64 {
        pair.client.run(|| {
            let s = UdpSocket::bind(SocketAddrV4::new(CLIENT_IP, 41000)).unwrap();
            let to = SocketAddrV4::new(HOST_IP, UDP_DPORT);
            let soft = ksoftirqd_ns();
            let start = thread_cpu_ns();
            for _ in 0..COUNT {
                s.send_to(&[0u8; 160], to).unwrap();
            }
            let cpu = thread_cpu_ns() - start + ksoftirqd_ns().saturating_sub(soft);
            cpu as f64 / COUNT as f64 / 1000.0
        })
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    send(); // warm-up: ARP, conntrack entry
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        without.push(send());
        let (ebpf, probe) = start_probe(&pair.host, &[UDP_DPORT]);
        with.push(send());
        let s = sample(&probe, &ebpf);
        let pre = s
            .hooks
            .iter()
            .find(|h| h.family == Family::Ipv4 && h.hook == Hook::Prerouting)
            .unwrap();
        assert!(pre.packets >= COUNT, "{pre:?}");
    }
    println!(
        "CPU µs per packet (sender + ksoftirqd), veth path with DNAT + conntrack, median of 5: \
         without the probe {:.2}, with {:.2} (runs without {without:.2?}, with {with:.2?})",
        median(without.clone()),
        median(with.clone())
    );
}

#[test]
fn untracked_packets_count_under_their_own_port_and_ipv6_is_measured_too() {
    let _serial = serial();
    let pair = Pair::new();
    // IPv6 on the same veth; nodad so the addresses work at once.
    let (host6, client6): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
        ("fd99::1".parse().unwrap(), "fd99::2".parse().unwrap());
    for (ns, addr) in [(&pair.host, host6), (&pair.client, client6)] {
        let dev = ns.sh("ip -o link show type veth");
        let dev = dev
            .split(':')
            .nth(1)
            .unwrap()
            .trim()
            .split('@')
            .next()
            .unwrap()
            .to_owned();
        ns.sh(&format!("ip addr add {addr}/64 dev {dev} nodad"));
    }
    const UNTRACKED_V4: u16 = 7000;
    const TRACKED_V6: u16 = 7001;
    const UNTRACKED_V6: u16 = 7002;
    pair.host
        .sh_in(
            "nft -f -",
            &format!(
                "table inet bnf {{
                   chain raw {{
                     type filter hook prerouting priority raw; policy accept;
                     udp dport {{ {UNTRACKED_V4}, {UNTRACKED_V6} }} notrack
                   }}
                   # A ct match turns conntrack on for both families in this netns.
                   chain input {{
                     type filter hook input priority filter; policy accept;
                     ct state new,established,untracked accept
                   }}
                 }}"
            ),
        )
        .unwrap();
    let (ebpf, probe) = start_probe(&pair.host, &[UNTRACKED_V4, TRACKED_V6, UNTRACKED_V6]);
    let sinks = pair.host.run(|| {
        (
            UdpSocket::bind(SocketAddrV4::new(HOST_IP, UNTRACKED_V4)).unwrap(),
            UdpSocket::bind((host6, TRACKED_V6)).unwrap(),
            UdpSocket::bind((host6, UNTRACKED_V6)).unwrap(),
        )
    });
    sinks
        .1
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    const N: u64 = 20;
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 64];
            for _ in 0..N {
                let Ok((n, from)) = sinks.1.recv_from(&mut buf) else {
                    return;
                };
                sinks.1.send_to(&buf[..n], from).unwrap();
            }
        });
        pair.client.run(|| {
            let v4 = UdpSocket::bind(SocketAddrV4::new(CLIENT_IP, 0)).unwrap();
            let v6 = UdpSocket::bind((client6, 0)).unwrap();
            v6.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 64];
            for i in 0..N {
                v4.send_to(b"a", SocketAddrV4::new(HOST_IP, UNTRACKED_V4))
                    .unwrap();
                v6.send_to(b"b", (host6, UNTRACKED_V6)).unwrap();
                v6.send_to(b"c", (host6, TRACKED_V6)).unwrap();
                v6.recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("no IPv6 answer to packet {i}: {e}"));
            }
        });
    });
    let s = sample(&probe, &ebpf);
    for c in &s.by_port {
        println!("  {c:?}");
    }
    let count = |family, port, ct| family_port_cost(&s, family, Hook::Prerouting, port, ct).0;
    // No conntrack entry: the port comes from the packet's own header.
    assert_eq!(count(Family::Ipv4, UNTRACKED_V4, CtState::Other), N);
    assert_eq!(count(Family::Ipv6, UNTRACKED_V6, CtState::Other), N);
    assert_eq!(count(Family::Ipv6, TRACKED_V6, CtState::New), 1);
    assert_eq!(count(Family::Ipv6, TRACKED_V6, CtState::Established), N - 1);
    assert_eq!(
        family_port_cost(&s, Family::Ipv6, Hook::Output, TRACKED_V6, CtState::Reply).0,
        N
    );
}

#[test]
fn probes_start_the_netfilter_probe_next_to_syscalls_and_report_its_paths() {
    let ns = Netns::new();
    let probes = ns.run(|| {
        berth::probes::Probes::start(&berth::config::ProbesConfig::default(), &tracked_root())
    });
    let status = serde_json::to_value(probes.status()).unwrap();
    println!("{status:#}");
    assert_eq!(status[0]["name"], "syscalls");
    let nf = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "netfilter")
        .expect("a netfilter probe status");
    assert_eq!(nf["attached"], true, "{nf}");
    assert_eq!(nf["program_ids"].as_array().unwrap().len(), 2);
    assert_eq!(nf["paths"]["netfilter_pair"], "ok");
    assert!(nf["paths"]["fentry"].is_string());
    // The syscall probe's paths say how it chooses what to count (the TRACKED map and the
    // hooks that add berth's new cgroups), nothing about netfilter.
    assert!(
        status[0]["paths"]["tracked_map"].is_string(),
        "{}",
        status[0]
    );
    assert!(status[0]["paths"]["subtree"].is_string(), "{}", status[0]);
    assert!(status[0]["paths"].get("netfilter_pair").is_none());
    let links = probes.netfilter.link_ids();
    drop(probes);
    let remaining = loader::netfilter_links().unwrap();
    assert!(links.iter().all(|id| !remaining.contains_key(id)));

    let disabled = berth::config::ProbesConfig {
        netfilter: berth::config::ProbeToggle { enabled: false },
        ..Default::default()
    };
    let probes = ns.run(|| berth::probes::Probes::start(&disabled, &tracked_root()));
    let nf = probes.netfilter.status.clone();
    drop(probes);
    if let Some(pins) = berth::probes::pin_dir(&tracked_root()) {
        berth::probes::remove_pins(&pins);
    }
    assert!(!nf.enabled && !nf.attached && nf.error.is_none() && nf.paths.is_empty());
}

#[test]
fn a_hook_whose_priorities_are_all_taken_is_reported_busy() {
    let ns = Netns::new();
    let (ebpf, probe) = start_probe(&ns, &[]);
    let err = ns.run(|| {
        let programs =
            loader::load_programs(&ebpf, berth::probes::EBPF_OBJECT, &["berth_nf_first"]).unwrap();
        // INT_MIN+1 is the probe's; take the next PRIORITY_TRIES - 1 on IPv4 prerouting.
        let _held: Vec<_> = (1..loader::PRIORITY_TRIES)
            .map(|k| loader::attach(&programs[0], 2, 0, PRIORITY_FIRST + k).unwrap())
            .collect();
        loader::attach_first_free(&programs[0], 2, 0, PRIORITY_FIRST, 1).unwrap_err()
    });
    println!("{err}");
    assert!(
        matches!(err, loader::LoaderError::Busy { pf: 2, hook: 0, from, to, .. }
            if from == PRIORITY_FIRST && to == PRIORITY_FIRST + loader::PRIORITY_TRIES - 1),
        "{err}"
    );
    drop(probe);
}

#[test]
fn a_full_port_map_counts_lost_keys_and_keeps_the_hook_totals() {
    let _serial = serial();
    const PORTS: u16 = 12;
    let pair = Pair::new();
    let (ebpf, probe) = pair.host.run(|| {
        let mut loader = aya::EbpfLoader::new();
        loader.map_max_entries("NF_PORTS", 4);
        berth::probes::netfilter::set_globals(&mut loader);
        let mut ebpf = loader.load(berth::probes::EBPF_OBJECT).unwrap();
        let mut probe = NetfilterProbe::start(Some(&mut ebpf), true);
        assert!(probe.status.attached, "{:?}", probe.status);
        let ports: Vec<u16> = (9000..9000 + PORTS).collect();
        publish(&mut probe, &mut ebpf, &ports);
        (ebpf, probe)
    });
    // No rules: no conntrack in this netns; each packet is keyed by its own port, and the
    // ones nobody listens on answer with ICMP (more keys).
    pair.client.run(|| {
        let s = UdpSocket::bind(SocketAddrV4::new(CLIENT_IP, 0)).unwrap();
        for port in 0..PORTS {
            s.send_to(b"x", SocketAddrV4::new(HOST_IP, 9000 + port))
                .unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let s = sample(&probe, &ebpf);
    assert!(s.by_port.len() <= 4, "{:?}", s.by_port);
    let lost = probe_errors(&ebpf, ProbeError::NetfilterPortsFull);
    let pre = s
        .hooks
        .iter()
        .find(|h| h.family == Family::Ipv4 && h.hook == Hook::Prerouting)
        .unwrap();
    println!(
        "kept {} keys, {lost} packets lost to a full map, {pre:?}",
        s.by_port.len()
    );
    assert!(lost >= (PORTS - 4) as u64);
    assert!(pre.packets >= PORTS as u64, "{pre:?}");
}

#[test]
fn only_published_ports_get_keys_the_rest_share_one_slot_and_unpublished_keys_go_after_a_last_read()
{
    let _serial = serial();
    let pair = Pair::new();
    // A ct match turns conntrack on in this netns: first packets are NEW.
    pair.host
        .sh_in(
            "nft -f -",
            "table ip bnf {
               chain input {
                 type filter hook input priority filter; policy accept;
                 ct state new,established accept
               }
             }",
        )
        .unwrap();
    const PUBLISHED: u16 = 7100;
    const OTHERS: u16 = 50;
    let (mut ebpf, mut probe) = start_probe(&pair.host, &[PUBLISHED]);
    // Listeners everywhere, so no ICMP error adds packets.
    let _sinks: Vec<UdpSocket> = pair.host.run(|| {
        std::iter::once(PUBLISHED)
            .chain(7200..7200 + OTHERS)
            .map(|p| UdpSocket::bind(SocketAddrV4::new(HOST_IP, p)).unwrap())
            .collect()
    });
    pair.client.run(|| {
        let s = UdpSocket::bind(SocketAddrV4::new(CLIENT_IP, 0)).unwrap();
        for port in std::iter::once(PUBLISHED).chain(7200..7200 + OTHERS) {
            s.send_to(b"x", SocketAddrV4::new(HOST_IP, port)).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let s = probe.collect(&mut ebpf).unwrap();
    println!(
        "by port {:?}\nother {:?}\nlocal {:?}",
        s.by_port, s.other, s.local_prerouting
    );
    assert!(
        s.by_port.iter().all(|c| c.port == PUBLISHED),
        "{:?}",
        s.by_port
    );
    assert_eq!(
        port_cost(&s, Hook::Prerouting, PUBLISHED, CtState::New).0,
        1
    );
    assert_eq!(port_cost(&s, Hook::Input, PUBLISHED, CtState::New).0, 1);
    let other = |hook| {
        s.other
            .iter()
            .find(|o| o.family == Family::Ipv4 && o.hook == hook && o.ct_state == CtState::New)
            .map_or(0, |o| o.packets)
    };
    let unmatched = probe_errors(&ebpf, ProbeError::NetfilterUnmatched);
    let local = s
        .local_prerouting
        .iter()
        .find(|l| l.family == Family::Ipv4)
        .map_or(0, |l| l.packets);
    if unmatched == 0 {
        assert_eq!(other(Hook::Prerouting), OTHERS as u64);
        assert_eq!(other(Hook::Input), OTHERS as u64);
        // Their prerouting cost carried to input: all delivered locally.
        assert_eq!(local, OTHERS as u64);
    } else {
        assert!(other(Hook::Input) + unmatched >= OTHERS as u64);
    }
    // The per-hook total is exact: per-port keys plus the other slots.
    let sum = |hook| {
        s.by_port
            .iter()
            .filter(|c| c.family == Family::Ipv4 && c.hook == hook)
            .map(|c| c.packets)
            .sum::<u64>()
            + s.other
                .iter()
                .filter(|o| o.family == Family::Ipv4 && o.hook == hook)
                .map(|o| o.packets)
                .sum::<u64>()
    };
    for hook in [Hook::Prerouting, Hook::Input] {
        let total = s
            .hooks
            .iter()
            .find(|h| h.family == Family::Ipv4 && h.hook == hook)
            .unwrap();
        assert_eq!(total.packets, sum(hook), "{hook:?}");
    }

    // No longer published: the next read still has its keys (their last), then they are gone.
    publish(&mut probe, &mut ebpf, &[]);
    let last = probe.collect(&mut ebpf).unwrap();
    assert_eq!(
        port_cost(&last, Hook::Prerouting, PUBLISHED, CtState::New).0,
        1
    );
    let after = probe.collect(&mut ebpf).unwrap();
    assert!(after.by_port.is_empty(), "{:?}", after.by_port);
    assert_eq!(probe_errors(&ebpf, ProbeError::NetfilterPortsFull), 0);
}
