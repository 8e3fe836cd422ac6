//! What a Docker port mapping costs, end to end on a real Docker host ([`DockerHost`]: Debian's
//! dockerd in namespaces of its own, the agent inside its network namespace, which plays the
//! host's): `docker run -p 40000-40099:40000-40099/udp` with the userland proxy on (Docker's
//! default) must be listed with its 100 ports, the iptables rules dockerd wrote for it counted
//! from the ruleset, and its 200 docker-proxy processes with their RSS, each against an
//! independent count (iptables-save, /proc). New-flow UDP traffic from a client namespace the
//! test joins to the host by a veth pair then goes to its last port, and to a port of the
//! host's own that no container publishes (the baseline): `/api/v1/ports` must attribute the
//! per-packet netfilter cost to the container on that port, hook by hook, and `berth diagnose`
//! must exit 1 naming it first, with its numbers and the fix, while a host-networking and a
//! portless bridge container beside it get no finding. `docker rm -f` then removes it from
//! every reader within a tick or two.

mod common;

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use berth_testkit::Dockerd;
use common::{
    docker::{DockerHost, has_media_metadata, inspect, run_media, run_portless},
    sample, udp_new_flows, wait_for,
};
use serde_json::Value;

/// New flows sent to media's last port, and as many to the baseline port.
const FLOWS: u32 = 500;
/// media's last published port: the end of the per-port rules, the costliest to reach.
const LAST_PORT: u16 = 40099;
/// A port of the host's own, published by no container: where the baseline's flows go.
const BASELINE_PORT: u16 = 39000;

/// iptables rules of both backends, every table, that name `ip` as a single address
/// (`-s/-d IP/32`) or as a DNAT target (`IP:PORT`), read with the iptables tools in the calling
/// thread's namespace: (rules per backend that could be read).
fn rules_naming(ip: Ipv4Addr) -> Vec<(&'static str, u64)> {
    let (single, target) = (format!("{ip}/32"), format!("{ip}:"));
    let mut out = Vec::new();
    for tool in ["iptables-nft-save", "iptables-legacy-save"] {
        let Ok(dump) = berth_testkit::sh_in(tool, "") else {
            continue;
        };
        let n = dump
            .lines()
            .filter(|l| l.starts_with("-A "))
            .filter(|l| {
                l.split_whitespace()
                    .any(|w| w == single || w.starts_with(&target))
            })
            .count();
        out.push((tool, n as u64));
    }
    out
}

/// docker-proxy processes forwarding to `ip` (their command line names it after
/// `-container-ip`), from /proc: (processes, resident bytes).
fn proxies_of(ip: Ipv4Addr) -> (u64, u64) {
    let want = ip.to_string();
    let page = procfs::page_size();
    let (mut n, mut rss) = (0, 0);
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_proxy = args.first().is_some_and(|a| a.ends_with(b"docker-proxy"));
        let to_ip = args
            .windows(2)
            .any(|w| w[0] == b"-container-ip" && w[1] == want.as_bytes());
        if !(is_proxy && to_ip) {
            continue;
        }
        let Ok(statm) = fs::read_to_string(e.path().join("statm")) else {
            continue;
        };
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        n += 1;
        rss += pages * page;
    }
    (n, rss)
}

/// The new-state packets and mean ns per packet of `hook` in a `/api/v1/ports` row.
fn new_at(row: &Value, hook: &str) -> (u64, f64) {
    row["netfilter"]["hooks"]
        .as_array()
        .and_then(|hooks| {
            hooks
                .iter()
                .find(|h| h["hook"] == hook && h["ct_state"] == "new")
        })
        .map_or((0, 0.0), |h| {
            (
                h["packets"].as_u64().unwrap_or(0),
                h["ns_per_packet"].as_f64().unwrap_or(0.0),
            )
        })
}

/// The finding about `subject` (e.g. `container media`) in a `/api/v1/diagnose` answer.
fn finding<'a>(diag: &'a Value, subject: &str) -> Option<&'a Value> {
    diag["findings"]
        .as_array()?
        .iter()
        .find(|f| f["subject"] == subject)
}

#[test]
fn a_docker_port_mapping_is_counted_attributed_per_hook_diagnosed_and_forgotten() {
    let host = DockerHost::start();
    let (id, run_took) = run_media(&host);
    let ip: Ipv4Addr = inspect(&host, &id, "{{.NetworkSettings.IPAddress}}")
        .parse()
        .expect("media's bridge address");
    // Beside it, the two kinds of container that publish nothing.
    let (hostnet, plain) = run_portless(&host);

    // The truth, once `docker run` has returned: dockerd's rules in its namespace, its proxies.
    let rules = host.dockerd.netns.run(|| rules_naming(ip));
    let rules_total: u64 = rules.iter().map(|(_, n)| n).sum();
    let (proxies, proxies_rss) = proxies_of(ip);
    eprintln!(
        "docker run with 100 published UDP ports (userland proxy on): {:.2} s; ruleset: \
         {rules:?} name {ip}; /proc: {proxies} docker-proxy processes, {:.1} MB resident",
        run_took.as_secs_f64(),
        proxies_rss as f64 / 1e6
    );
    assert_eq!(
        rules_total, 300,
        "Docker 20.10 writes 3 rules per published port (nat DNAT, nat POSTROUTING \
         MASQUERADE, filter ACCEPT): {rules:?}"
    );
    assert_eq!(proxies, 200, "one docker-proxy per port and address family");

    let (c, listed_after) = host.wait_listed(&id, Duration::from_secs(5), |c| {
        has_media_metadata(c, &id, &ip.to_string())
            && c["port_mapping"]["rules"] == rules_total
            && c["port_mapping"]["proxies"]["processes"] == proxies
    });
    let rss = c["port_mapping"]["proxies"]["rss_bytes"].as_u64().unwrap();
    eprintln!(
        "listed with its metadata, {rules_total} rules and {proxies} proxies ({:.1} MB) {:.2} s \
         after docker run returned",
        rss as f64 / 1e6,
        listed_after.as_secs_f64()
    );
    let apart = (rss as f64 - proxies_rss as f64).abs() / proxies_rss as f64;
    assert!(
        apart < 0.1,
        "proxies' RSS {rss} B against /proc's {proxies_rss} B ({:.1}% apart)",
        apart * 100.0
    );
    let labels = [
        ("container", id.as_str()),
        ("name", "media"),
        ("engine", "docker"),
        ("k8s_namespace", ""),
        ("k8s_pod", ""),
    ];
    let metrics = host.metrics();
    assert_eq!(
        sample(&metrics, "berth_container_port_mapping_rules", &labels),
        Some(rules_total as f64)
    );
    assert_eq!(
        sample(
            &metrics,
            "berth_container_userland_proxy_processes",
            &labels
        ),
        Some(200.0)
    );

    // New flows from a client namespace: to media's last port through Docker's DNAT, and to a
    // service of the host's own on a port nobody publishes (what a host-networking container
    // pays). One flow each first, so the neighbours are resolved before the burst (packets
    // waiting for ARP sit in a short queue that drops the overflow).
    //
    // Docker 20.10 puts each port's rules at the top of nat DOCKER and filter DOCKER: the last
    // port's DNAT and ACCEPT come first (its prerouting and forward are the cheapest of the
    // range; 40000's the dearest), while every flow to a local address walks all of nat
    // DOCKER in prerouting (`-m addrtype --dst-type LOCAL -j DOCKER`), so here the host's
    // baseline may cost more than media's last port. Postrouting walks every hairpin
    // MASQUERADE rule for each new forwarded flow, whatever its port.
    let client = host.client();
    let service = host
        .dockerd
        .netns
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, BASELINE_PORT)))
        .expect("binding the host's baseline service");
    let to_media = SocketAddr::from((client.host_ip, LAST_PORT));
    let to_host = SocketAddr::from((client.host_ip, BASELINE_PORT));
    udp_new_flows(&client.ns, to_media, 1);
    udp_new_flows(&client.ns, to_host, 1);
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    udp_new_flows(&client.ns, to_media, FLOWS);
    udp_new_flows(&client.ns, to_host, FLOWS);
    let media_row = || {
        let rows = host.json("/api/v1/ports");
        rows.as_array()?
            .iter()
            .find(|r| r["container"] == id)
            .cloned()
    };
    wait_for(
        Duration::from_secs(10),
        "per-hook netfilter cost of the new flows on media's range",
        || {
            let row = media_row()?;
            ["prerouting", "forward", "postrouting"]
                .iter()
                .all(|h| new_at(&row, h).0 >= u64::from(FLOWS))
                .then_some(())
        },
    );
    eprintln!(
        "2 x {FLOWS} new flows sent; attributed per hook {:.2} s later",
        sent.elapsed().as_secs_f64()
    );
    // A few ticks on, every packet of the burst is in: the figures below stay as they are.
    std::thread::sleep(Duration::from_millis(600));
    let row = media_row().expect("media's row");
    assert_eq!(row["engine"], "docker", "{row}");
    assert_eq!(row["name"], "media", "{row}");
    assert_eq!(row["ip"], ip.to_string(), "{row}");
    let ports = row["netfilter"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "only the last port saw traffic: {row}");
    assert_eq!(ports[0]["port"], LAST_PORT, "{row}");
    assert!(
        ports[0]["prerouting_packets"].as_u64().unwrap() >= u64::from(FLOWS),
        "{row}"
    );
    let mut by_hook = Vec::new();
    for hook in ["prerouting", "forward", "postrouting"] {
        let (packets, ns) = new_at(&row, hook);
        assert!(ns > 0.0, "{hook}: no time measured: {row}");
        by_hook.push(format!("{hook} {:.1}", ns / 1e3));
        let v = sample(
            &host.metrics(),
            "berth_container_netfilter_packets_total",
            &[
                labels[0],
                labels[1],
                labels[2],
                labels[3],
                labels[4],
                ("hook", hook),
                ("ct_state", "new"),
            ],
        );
        assert_eq!(v, Some(packets as f64), "{hook} in /metrics");
    }
    let path_us = row["netfilter"]["new_flow_ns_per_packet"].as_f64().unwrap() / 1e3;
    eprintln!(
        "/api/v1/ports: media on {LAST_PORT}: {path_us:.1} µs per new-flow packet ({})",
        by_hook.join(", ")
    );

    // diagnose: once two history snapshots frame the flows (one every 5 s), the finding has
    // every number; then the CLI, over the agent's socket, says it and exits 1.
    let diag = wait_for(
        Duration::from_secs(15),
        "media's finding with its flows per second",
        || {
            let diag = host.json("/api/v1/diagnose");
            let f = finding(&diag, "container media")?;
            f["evidence"]
                .as_array()?
                .iter()
                .any(|e| {
                    e.as_str()
                        .is_some_and(|e| e.contains("new flows per second over the last"))
                })
                .then_some(diag)
        },
    );
    for other in ["hostnet", "plain"] {
        assert!(
            finding(&diag, &format!("container {other}")).is_none(),
            "{other} publishes nothing, yet: {diag}"
        );
    }
    let (code, out, err) = host.agent.cli(&["diagnose"]);
    assert_eq!(code, 1, "a critical finding exits 1:\n{out}{err}");
    assert!(
        out.starts_with("CRITICAL container media:"),
        "media is not the first finding:\n{out}"
    );
    let text = &out[..out.find("\n\n").unwrap_or(out.len())];
    let short = &id[..12];
    for want in [
        format!(
            "docker container media, image {}, id {short}: 100 published ports \
             (40000-40099/udp)",
            Dockerd::BUSYBOX
        ),
        format!("{rules_total} iptables rules point at {ip}"),
        "200 userland proxy processes (docker-proxy) forward to it: ".to_owned(),
        // The same µs per hook as /api/v1/ports: no flow came since.
        format!(
            "netfilter costs {path_us:.1} µs per new-flow packet to its ports ({};",
            by_hook.join(", ")
        ),
        "host baseline: ".to_owned(),
        "(prerouting ".to_owned(),
        "new flows per second over the last".to_owned(),
        "\"userland-proxy\": false".to_owned(),
        "`docker run --network host ...`".to_owned(),
        format!(
            "berth run -d --name media -p 40000-40099:40000-40099/udp {}",
            Dockerd::BUSYBOX
        ),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    // The baseline: the burst to the host's own port, at prerouting and input.
    let baseline = text
        .lines()
        .find(|l| l.contains("host baseline: "))
        .unwrap();
    let flows: u64 = baseline
        .rsplit_once("; ")
        .and_then(|(_, n)| n.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no flow count in {baseline:?}"));
    assert!(
        baseline.contains("input ") && flows >= u64::from(FLOWS),
        "{baseline}"
    );
    // Docker's nat chain is entered for every local destination: when the baseline costs
    // more than media's flows, the finding says the rules inflate it (and only then).
    let base_us: f64 = baseline
        .split("host baseline: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no µs in {baseline:?}"));
    let inflated = text.contains("the baseline is not lower");
    if (base_us - path_us).abs() > 0.15 {
        assert_eq!(
            inflated,
            base_us > path_us,
            "baseline {base_us} µs vs media {path_us} µs:\n{text}"
        );
    }
    assert!(
        !out.contains("container hostnet") && !out.contains("container plain"),
        "a finding for a container that publishes nothing:\n{out}"
    );
    eprintln!("berth diagnose (exit {code}):\n{text}");
    drop(service);

    // Removed: gone from every reader within a tick or two (200 ms each).
    let started = Instant::now();
    host.docker(&["rm", "-f", "media"]);
    let rm_took = started.elapsed();
    let gone_after = host.wait_gone(&id, Duration::from_secs(5));
    eprintln!(
        "docker rm -f media: {:.2} s; gone from the API and /metrics {:.2} s later",
        rm_took.as_secs_f64(),
        gone_after.as_secs_f64()
    );
    assert!(gone_after < Duration::from_secs(1), "{gone_after:?}");
    let metrics = host.metrics();
    assert!(
        !metrics.contains("name=\"media\""),
        "stale series of media in /metrics"
    );
    let (_, rows) = host.get("/api/v1/ports");
    assert!(
        !rows.contains(&id) && !rows.contains("\"media\""),
        "stale port rows: {rows}"
    );
    let (_, cgroups) = host.get("/api/v1/cgroups");
    assert!(!cgroups.contains(&id), "stale cgroup: {cgroups}");
    let (_, out, err) = host.agent.cli(&["diagnose"]);
    assert!(
        !out.contains("media") && !out.contains(&id[..12]) && !out.contains(&ip.to_string()),
        "stale finding:\n{out}{err}"
    );
    assert_eq!(proxies_of(ip).0, 0, "dockerd left proxies");
    // The other two are still listed, with no finding.
    for other in [&hostnet, &plain] {
        assert!(host.find(other).is_some(), "{other} not listed");
    }
}
