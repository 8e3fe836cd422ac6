//! Container networking against the real kernel: bridge, host and none modes, published port
//! ranges through nftables, conflicts refused without a trace, cleanup after rm and after a
//! crash. Traffic only between namespaces, veths and bridges the test creates.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use common::{Agent, ClientNs, echo_rootfs, udp_ask, unique, wait_for};

fn wait_running(agent: &Agent, c: &str) -> serde_json::Value {
    wait_for(Duration::from_secs(10), &format!("{c} running"), || {
        let v = agent.inspect(c);
        (v["status"] == "running").then_some(v)
    })
}

fn nft_table(agent: &Agent) -> Option<String> {
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("table = \""))?
        .trim_end_matches('"')
        .to_owned();
    let out = Command::new("nft")
        .args(["list", "table", "ip", &name])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Ports of this agent's bridge (its containers' veths); other tests' links do not count.
fn bridge_ports(agent: &Agent) -> usize {
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let bridge = text
        .lines()
        .find_map(|l| l.strip_prefix("bridge = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", &bridge])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn links() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

#[test]
fn a_udp_server_with_2000_published_ports_answers_clients_in_a_netns_and_on_the_host() {
    let agent = Agent::start();
    let rootfs = echo_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let name = unique("echo");
    let id = agent
        .ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            "31000-32999:41000-42999/udp",
            rootfs,
            "berth-test-echo",
            "--ports",
            "41000-42999",
        ])
        .trim()
        .to_owned();
    wait_running(&agent, &name);
    wait_for(Duration::from_secs(10), "the echo server", || {
        agent
            .ok(&["logs", &name])
            .contains("listening")
            .then_some(())
    });
    let client = ClientNs::create();
    for port in [31000u16, 32000, 32999] {
        let to = SocketAddr::from((client.host_ip, port));
        let answer = udp_ask(Some(&client.ns), to, format!("ping {port}").as_bytes());
        assert_eq!(
            answer.as_deref(),
            Some(format!("ping {port}").as_bytes()),
            "no echo from the client netns via {to}\n{}",
            nft_table(&agent).unwrap_or_default()
        );
        let answer = udp_ask(None, to, b"from the host");
        assert_eq!(
            answer.as_deref(),
            Some(&b"from the host"[..]),
            "no echo on the host via {to}"
        );
    }
    // Hairpin: a container reaching its own published port through the host's address.
    let hairpin = unique("hairpin");
    let (code, out, err) = agent.cli(&[
        "run", "--rm", "--name", &hairpin, "-p", "33000:43000/udp", rootfs, "sh", "-c",
        "berth-test-echo --ports 43000 & sleep 0.5; gw=$(ip route | awk '/default/ {print $3}'); berth-test-echo --ask $gw:33000",
    ]);
    assert_eq!(code, 0, "hairpin failed: {out}{err}");
    assert!(out.contains("berth-ask"), "{out}");
    // The mapping is listed with its backend.
    let ports: serde_json::Value =
        serde_json::from_str(&agent.ok(&["ports", "--format", "json", &name])).unwrap();
    assert_eq!(ports[0]["backend"], "nft-map", "{ports}");
    assert_eq!(ports[0]["publish"]["host"]["start"], 31000);
    // One rule per hook, not one per port.
    let table = nft_table(&agent).expect("berth's nft table exists");
    let rules = table.matches("dnat ip to").count();
    assert_eq!(rules, 2, "DNAT rules grow with ports:\n{table}");
    let elements = table.matches(&format!("comment \"{id}\"")).count();
    assert_eq!(elements, 2000, "one map element per published port");
    assert!(
        table.contains(&id) || table.contains(&id[..12]),
        "owner of the elements not recorded"
    );

    agent.ok(&["rm", "-f", &name]);
    let table = nft_table(&agent).unwrap_or_default();
    assert!(
        !table.contains(&id[..12]),
        "elements of the removed container remain:\n{table}"
    );
    assert!(
        !links().contains(&berth::net::host_veth(&id)),
        "veth left after rm"
    );
    assert!(
        udp_ask(
            Some(&client.ns),
            SocketAddr::from((client.host_ip, 31000)),
            b"x"
        )
        .is_none()
    );
}

#[test]
fn host_mode_answers_without_any_berth_rule_and_none_mode_has_only_loopback() {
    let agent = Agent::start();
    let rootfs = echo_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let name = unique("host");
    let port = 20000 + (std::process::id() % 10000) as u16;
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        rootfs,
        "berth-test-echo",
        "--ports",
        &port.to_string(),
    ]);
    wait_running(&agent, &name);
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let answer = wait_for(Duration::from_secs(10), "the host-mode echo", || {
        udp_ask(None, to, b"hi")
    });
    assert_eq!(answer, b"hi");
    assert!(
        nft_table(&agent).is_none(),
        "a host-mode container made berth rules"
    );

    let (code, out, err) = agent.cli(&[
        "run",
        "--rm",
        "--network",
        "none",
        rootfs,
        "sh",
        "-c",
        "ip -o link | wc -l; ip -o addr | grep -c 127.0.0.1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "1\n1\n", "none mode: only lo, up with 127.0.0.1");
    let (code, _, err) = agent.cli(&["run", "--network", "host", "-p", "80:80", rootfs, "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("-p needs --network bridge"), "{err}");
}

#[test]
fn two_containers_cannot_publish_the_same_host_port_and_the_loser_leaves_no_trace() {
    let agent = Agent::start();
    let rootfs = echo_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let first = unique("first");
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &first,
        "-p",
        "35000-35099:35000-35099/udp",
        rootfs,
        "sleep",
        "300",
    ]);
    wait_running(&agent, &first);
    let store = agent.dir.path().join("state/containers");
    let dirs = std::fs::read_dir(&store).unwrap().count();
    let ports_before = bridge_ports(&agent);
    let (code, _, err) = agent.cli(&["run", "-d", "-p", "35050:35050/udp", rootfs, "sleep", "300"]);
    assert_ne!(code, 0);
    assert!(err.contains("35050"), "{err}");
    // Same port, other protocol: fine.
    agent.ok(&["run", "-d", "-p", "35050:35050/tcp", rootfs, "sleep", "300"]);
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), dirs + 1);
    assert_eq!(
        bridge_ports(&agent),
        ports_before + 1,
        "one veth for the tcp container only"
    );
    for bad in [
        "35000-35001:1/udp",
        "0:80",
        "70000:80",
        "1.2.3:80:80",
        "80:80/sctp",
        "x",
    ] {
        let (code, _, err) = agent.cli(&["run", "-d", "-p", bad, rootfs, "true"]);
        assert_ne!(code, 0, "-p {bad} accepted");
        assert!(err.contains(bad), "-p {bad}: {err}");
    }
    let (code, _, err) = agent.cli(&[
        "run",
        "-d",
        "--port-backend",
        "xdp",
        "-p",
        "1:1",
        rootfs,
        "true",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--port-backend"), "{err}");
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), dirs + 1);
}

#[test]
fn a_crash_mid_setup_leaks_nothing_and_frees_the_address() {
    let mut agent = Agent::start();
    let rootfs = echo_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let name = unique("crash");
    let id = agent
        .ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            "36000-36999:36000-36999/udp",
            rootfs,
            "sleep",
            "300",
        ])
        .trim()
        .to_owned();
    let ip = wait_running(&agent, &name)["network"]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    agent.kill9();
    let path = agent
        .dir
        .path()
        .join("state/containers")
        .join(&id)
        .join("container.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["phase"] = serde_json::json!("creating");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    agent.spawn();
    let table = nft_table(&agent).unwrap_or_default();
    assert!(
        !table.contains(&id[..12]),
        "elements of the crashed container remain:\n{table}"
    );
    assert!(
        !links().contains(&berth::net::host_veth(&id)),
        "veth left after the crash"
    );
    assert!(
        !agent.dir.path().join("run/netns").join(&id).exists(),
        "netns left"
    );
    // The address is free again: the next container gets it.
    let next = unique("next");
    agent.ok(&["run", "-d", "--name", &next, rootfs, "sleep", "300"]);
    assert_eq!(wait_running(&agent, &next)["network"]["ip"], ip.as_str());
}

/// Layer-3 bytes and packets through the container's host-side veth, from sysfs:
/// (rx = sent by the container, tx = received by it).
fn veth_l3(id: &str) -> ((u64, u64), (u64, u64)) {
    let dir = std::path::PathBuf::from("/sys/class/net")
        .join(berth::net::host_veth(id))
        .join("statistics");
    let n = |f: &str| -> u64 {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (rxp, rxb, txp, txb) = (
        n("rx_packets"),
        n("rx_bytes"),
        n("tx_packets"),
        n("tx_bytes"),
    );
    // sysfs counts the 14-byte Ethernet header; the probe counts from the IP header.
    ((rxp, rxb - 14 * rxp), (txp, txb - 14 * txp))
}

#[test]
fn network_bytes_agree_with_the_veth_counters() {
    let agent = Agent::start();
    let rootfs = common::busybox_rootfs(agent.dir.path());
    let name = unique("bytes");
    let id = agent
        .ok(&[
            "run", "-d", "--name", &name, rootfs.to_str().unwrap(), "sh", "-c",
            "gw=$(ip route | awk '/default/ {print $3}'); ping -q -c 300 -i 0.01 -s 1200 $gw; echo done; exec sleep 300",
        ])
        .trim()
        .to_owned();
    wait_for(Duration::from_secs(30), "the pings", || {
        agent.ok(&["logs", &name]).contains("done").then_some(())
    });
    std::thread::sleep(Duration::from_millis(600));
    let ((sent_p, sent_b), (recv_p, recv_b)) = veth_l3(&id);
    let cgroup = agent.inspect(&name)["cgroup"].as_str().unwrap().to_owned();
    let text = agent.metrics();
    let get = |metric: &str, dir: &str| {
        common::sample(
            &text,
            metric,
            &[
                ("cgroup", &cgroup),
                ("direction", dir),
                ("protocol", "icmp"),
            ],
        )
        .unwrap_or(0.0)
    };
    let (eb, ib) = (
        get("berth_cgroup_network_bytes_total", "egress"),
        get("berth_cgroup_network_bytes_total", "ingress"),
    );
    let (ep, ip) = (
        get("berth_cgroup_network_packets_total", "egress"),
        get("berth_cgroup_network_packets_total", "ingress"),
    );
    assert_eq!((ep, ip), (300.0, 300.0), "icmp packets counted by berth");
    // The veth also carries what no socket sent (ARP, IPv6 neighbour discovery): within 2%.
    for (what, berth, veth, vp) in [
        ("egress", eb, sent_b, sent_p),
        ("ingress", ib, recv_b, recv_p),
    ] {
        let diff = (veth as f64 - berth).abs() / veth as f64;
        assert!(
            diff <= 0.02,
            "{what}: berth {berth} bytes, veth {veth} bytes in {vp} packets ({:.2}% apart)",
            diff * 100.0
        );
    }
}

#[test]
fn the_iptables_backend_answers_too_with_one_rule_set_per_port() {
    let agent = Agent::start();
    let rootfs = echo_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let name = unique("ipt");
    let id = agent
        .ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--port-backend",
            "iptables",
            "-p",
            "34000-34099:44000-44099/udp",
            rootfs,
            "berth-test-echo",
            "--ports",
            "44000-44099",
        ])
        .trim()
        .to_owned();
    wait_running(&agent, &name);
    wait_for(Duration::from_secs(10), "the echo server", || {
        agent
            .ok(&["logs", &name])
            .contains("listening")
            .then_some(())
    });
    let client = ClientNs::create();
    let to = SocketAddr::from((client.host_ip, 34099));
    assert_eq!(
        udp_ask(Some(&client.ns), to, b"ipt").as_deref(),
        Some(&b"ipt"[..])
    );
    let rules = |owner: &str| {
        let out = Command::new("iptables-save").output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A") && l.contains(owner) && l.contains("dport"))
            .count()
    };
    assert_eq!(rules(&id), 300, "Docker's 3 rules per port");
    let ports: serde_json::Value =
        serde_json::from_str(&agent.ok(&["ports", "--format", "json", &name])).unwrap();
    assert_eq!(ports[0]["backend"], "iptables", "{ports}");
    agent.ok(&["rm", "-f", &name]);
    assert_eq!(rules(&id), 0, "rules left after rm");
}

#[test]
fn netfilter_cost_ranks_per_port_rules_above_the_map_and_names_the_container_and_port() {
    let agent = Agent::start();
    let system = agent.system();
    let nf = system["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "netfilter")
        .cloned()
        .unwrap();
    assert_eq!(
        nf["attached"],
        true,
        "netfilter probe down: {nf}\n{}",
        agent.log()
    );
    let rootfs = echo_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let (ipt, map) = (unique("rank-ipt"), unique("rank-map"));
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &ipt,
        "--port-backend",
        "iptables",
        "-p",
        "45000-49999:45000-49999/udp",
        rootfs,
        "sleep",
        "300",
    ]);
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &map,
        "--port-backend",
        "nft-map",
        "-p",
        "50000-54999:50000-54999/udp",
        rootfs,
        "sleep",
        "300",
    ]);
    wait_running(&agent, &ipt);
    wait_running(&agent, &map);
    let client = ClientNs::create();
    // New flow per packet to the last port of each: the worst case for per-port rules.
    common::udp_new_flows(&client.ns, SocketAddr::from((client.host_ip, 49999)), 500);
    common::udp_new_flows(&client.ns, SocketAddr::from((client.host_ip, 54999)), 500);
    let cost = |name: &str, port: u64| -> Option<f64> {
        let (_, body) = agent.get("/api/v1/ports");
        let rows: serde_json::Value = serde_json::from_str(&body).ok()?;
        let row = rows.as_array()?.iter().find(|r| r["name"] == name)?.clone();
        let p = row["netfilter"]["ports"]
            .as_array()?
            .iter()
            .find(|p| p["port"] == port)?
            .clone();
        // The probe leaves out a packet whose traversal another packet interrupted on its CPU
        // (counted as NetfilterUnmatched, see probes/netfilter): on a loaded machine a few of
        // the 500 are, so 90% measured is enough to rank.
        (p["prerouting_packets"].as_u64()? >= 450)
            .then(|| p["prerouting_ns_per_packet"].as_f64())?
    };
    let ipt_ns = wait_for(
        Duration::from_secs(10),
        "the iptables container's cost",
        || cost(&ipt, 49999),
    );
    let map_ns = wait_for(
        Duration::from_secs(10),
        "the nft-map container's cost",
        || cost(&map, 54999),
    );
    assert!(
        ipt_ns >= 5.0 * map_ns,
        "5,000 per-port iptables rules cost {ipt_ns:.0} ns per new-flow packet at prerouting, \
         the nft map {map_ns:.0} ns: expected at least 5x"
    );
    // And /metrics attributes it to the containers by name.
    let text = agent.metrics();
    for name in [&ipt, &map] {
        assert!(
            text.lines().any(
                |l| l.starts_with("berth_container_netfilter_seconds_total{")
                    && l.contains(&format!("name=\"{name}\""))
                    && l.contains("hook=\"prerouting\"")
                    && l.contains("ct_state=\"new\"")
            ),
            "no netfilter cost for {name} in /metrics"
        );
    }
    eprintln!("prerouting ns/packet, new flows: iptables {ipt_ns:.0}, nft-map {map_ns:.0}");

    // diagnose names the cause and the fix for the iptables container, not the nft-map one.
    let (code, out, err) = agent.cli(&["diagnose", "--format", "json"]);
    assert_eq!(code, 1, "a critical finding sets exit status 1: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let findings = v["findings"].as_array().unwrap();
    let f = findings
        .iter()
        .find(|f| f["subject"] == format!("container {ipt}"))
        .unwrap_or_else(|| panic!("no finding for {ipt}: {out}"));
    assert_eq!(f["severity"], "critical", "{f}");
    assert!(
        f["cause"]
            .as_str()
            .unwrap()
            .contains("per-port iptables rules"),
        "{f}"
    );
    assert!(
        f["evidence"].to_string().contains("15000 iptables rules"),
        "{f}"
    );
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains("--port-backend nft-map"),
        "{f}"
    );
    assert!(
        !findings
            .iter()
            .any(|f| f["subject"] == format!("container {map}")),
        "{out}"
    );
}

#[test]
fn userland_proxies_are_counted_and_diagnosed() {
    let agent = Agent::start();
    // A process named docker-proxy, as Docker starts one per published port.
    let bin = agent.dir.path().join("docker-proxy");
    std::fs::copy("/bin/sleep", &bin).unwrap();
    let mut proxy = Command::new(&bin).arg("30").spawn().unwrap();
    let count = wait_for(Duration::from_secs(10), "the proxy in /metrics", || {
        common::sample(&agent.metrics(), "berth_userland_proxy_processes", &[])
            .filter(|&n| n >= 1.0)
    });
    let (_, out, _) = agent.cli(&["diagnose", "--format", "json"]);
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(count >= 1.0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["cause"].as_str().unwrap_or("").contains("docker-proxy"))
        .unwrap_or_else(|| panic!("no proxy finding: {out}"))
        .clone();
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains("--userland-proxy=false"),
        "{f}"
    );
    // The human form says the same.
    let (_, text, _) = agent.cli(&["diagnose"]);
    assert!(
        text.contains("fix:") || text.contains("No problems"),
        "{text}"
    );
}

#[test]
fn conntrack_counts_agree_with_the_conntrack_tool() {
    let agent = Agent::start();
    let rootfs = echo_rootfs(agent.dir.path());
    let name = unique("ct");
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        "46000-46009:46000-46009/udp",
        rootfs.to_str().unwrap(),
        "sleep",
        "300",
    ]);
    let ip = wait_running(&agent, &name)["network"]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = ClientNs::create();
    common::udp_new_flows(&client.ns, SocketAddr::from((client.host_ip, 46009)), 200);
    // The conntrack tool's own view: entries whose original destination port is ours, and
    // entries naming the container's address.
    let tool = |args: &[&str]| -> u64 {
        let out = Command::new("conntrack")
            .args(args)
            .output()
            .expect("conntrack (Debian's conntrack package)");
        String::from_utf8_lossy(&out.stdout).lines().count() as u64
    };
    // (Entries of an earlier run may still be there: filter by this run's client address.)
    let host_ip = client.host_ip.to_string();
    let by_port = tool(&[
        "-L",
        "-p",
        "udp",
        "--orig-dst",
        &host_ip,
        "--orig-port-dst",
        "46009",
    ]);
    let by_ip = tool(&[
        "-L",
        "-p",
        "udp",
        "--orig-dst",
        &host_ip,
        "--reply-src",
        &ip,
    ]);
    assert_eq!(
        by_port, 200,
        "the conntrack tool sees {by_port} flows to 46009"
    );
    let (new_flows, entries) = wait_for(Duration::from_secs(10), "berth's conntrack view", || {
        let (_, body) = agent.get("/api/v1/ports");
        let rows: serde_json::Value = serde_json::from_str(&body).ok()?;
        let row = rows
            .as_array()?
            .iter()
            .find(|r| r["name"] == name.as_str())?
            .clone();
        let new_flows = row["netfilter"]["new_flows"].as_u64()?;
        let text = agent.metrics();
        let entries = common::sample(
            &text,
            "berth_container_conntrack_entries",
            &[
                ("container", agent.inspect(&name)["id"].as_str()?),
                ("name", name.as_str()),
            ],
        )? as u64;
        (new_flows >= 200 && entries >= 200).then_some((new_flows, entries))
    });
    assert_eq!(
        new_flows, by_port,
        "new flows seen by berth's netfilter probe vs conntrack -L"
    );
    assert_eq!(
        entries, by_ip,
        "entries with the container's address vs conntrack -L"
    );
    let text = agent.metrics();
    assert!(common::sample(&text, "berth_conntrack_entries", &[]).unwrap_or(0.0) >= 200.0);
}
