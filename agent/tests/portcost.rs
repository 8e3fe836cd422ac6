//! What a Docker-style port mapping costs, counted against the truth on the real kernel: in
//! network namespaces the test creates, Docker's per-port rules written with real
//! `iptables-nft` and `iptables-legacy` (and Docker 28's raw-table DROP), and real
//! `docker-proxy` processes (Debian's docker.io; no dockerd runs) started as dockerd starts
//! them (readiness on fd 3). The counters must equal what was written and started.
//!
//! The end-to-end test runs the agent inside the "host" namespace, as on a Docker host where
//! the agent and dockerd share the host's: a `/docker/<id>` cgroup holds a process in a
//! "container" namespace behind a veth, a client namespace sends new flows through the DNAT
//! rules, and the agent must list the container with its address (from the kernel), its
//! published ports (from the proxies' command lines), rules and proxies, attribute netfilter
//! cost to it per hook, and `berth diagnose` must exit 1 naming it with the fix. No engine
//! metadata is involved: every number comes from the kernel.

mod common;

use std::{
    collections::BTreeSet,
    fs,
    io::Read as _,
    net::{Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use berth::discover::{
    proxies::ProxyScanner,
    rules::{RuleCounts, default_rulesets},
};
use berth_testkit::{Netns, unique};
use common::{Agent, Cgroup, cgroup2_mount, sample, udp_new_flows, wait_for};

/// Debian's docker.io ships docker-proxy in /usr/sbin (older releases: /usr/bin).
fn docker_proxy() -> PathBuf {
    ["/usr/sbin/docker-proxy", "/usr/bin/docker-proxy"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect(
            "docker-proxy not found in /usr/sbin or /usr/bin: install Debian's docker.io \
             (`cargo xtask setup` does, without starting dockerd)",
        )
}

/// docker-proxy processes, killed and reaped on drop.
struct Proxies(Vec<Child>);

impl Proxies {
    /// Starts one docker-proxy per port and address family (Docker's `0.0.0.0` and `::`)
    /// in `ns`, each forwarding `proto` to `ip` on the same port, and waits for each to report
    /// ready on fd 3 as dockerd does.
    fn start(ns: &Netns, ip: Ipv4Addr, ports: std::ops::RangeInclusive<u16>) -> Self {
        let bin = docker_proxy();
        let mut out = Proxies(Vec::new());
        for port in ports {
            for host_ip in ["0.0.0.0", "::"] {
                let child = ns.run(|| start_one(&bin, host_ip, port, ip));
                out.0.push(child);
            }
        }
        out
    }

    fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn start_one(bin: &std::path::Path, host_ip: &str, port: u16, ip: Ipv4Addr) -> Child {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (r, w) = (fds[0], fds[1]);
    let mut cmd = Command::new(bin);
    cmd.args([
        "-proto",
        "udp",
        "-host-ip",
        host_ip,
        "-host-port",
        &port.to_string(),
        "-container-ip",
        &ip.to_string(),
        "-container-port",
        &port.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // docker-proxy reports "0\n" (or "1\n" and the error) on fd 3, its parent's pipe.
    // SAFETY: between fork and exec only dup2/fcntl, async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if w == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(w, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawning docker-proxy");
    // SAFETY: closing our copy of the write end; the child holds its own.
    unsafe { libc::close(w) };
    // SAFETY: `r` is ours; the File owns and closes it.
    let mut pipe = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(r) };
    let mut said = String::new();
    pipe.read_to_string(&mut said).unwrap();
    assert!(
        said.starts_with('0'),
        "docker-proxy for {host_ip}:{port} failed to start: {said:?}"
    );
    child
}

/// Docker 20.10's rules for a container at `ip` behind `bridge` publishing `ports`/udp
/// (iptables-restore input, nat and filter), and the number of them that name `ip`.
fn docker_rules(bridge: &str, ip: Ipv4Addr, ports: std::ops::RangeInclusive<u16>) -> (String, u64) {
    let subnet = format!("{}.0/24", ip.to_string().rsplit_once('.').unwrap().0);
    let mut nat = format!(
        "*nat\n:DOCKER - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A POSTROUTING -s {subnet} ! -o {bridge} -j MASQUERADE\n\
         -A DOCKER -i {bridge} -j RETURN\n"
    );
    let mut filter = format!(
        "*filter\n:DOCKER - [0:0]\n\
         -A FORWARD -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A FORWARD -o {bridge} -j DOCKER\n\
         -A FORWARD -i {bridge} ! -o {bridge} -j ACCEPT\n"
    );
    let mut named = 0;
    for p in ports {
        nat.push_str(&format!(
            "-A POSTROUTING -s {ip}/32 -d {ip}/32 -p udp -m udp --dport {p} -j MASQUERADE\n\
             -A DOCKER ! -i {bridge} -p udp -m udp --dport {p} -j DNAT --to-destination {ip}:{p}\n"
        ));
        filter.push_str(&format!(
            "-A DOCKER -d {ip}/32 ! -i {bridge} -o {bridge} -p udp -m udp --dport {p} -j ACCEPT\n"
        ));
        named += 3;
    }
    (format!("{nat}COMMIT\n{filter}COMMIT\n"), named)
}

/// A third octet of this run's own (10.251-252.X.0/24 are used by no agent config).
fn octet() -> u8 {
    (std::process::id() % 200) as u8 + 20
}

/// Resident memory of `pids` as /proc says, bytes.
fn rss_of(pids: &[u32]) -> u64 {
    let page = procfs::page_size();
    pids.iter()
        .map(|pid| {
            let statm = fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
            statm
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                * page
        })
        .sum()
}

#[test]
fn proxies_started_and_rules_written_are_counted_exactly() {
    common::require_root();
    let ns = Netns::new();
    // Its own second octet: the other test runs at the same time with 10.251.X.
    let ip = Ipv4Addr::new(10, 252, octet(), 2);
    let (nft, written) = docker_rules("bq0", ip, 40000..=40099);
    ns.sh_in("iptables-nft-restore", &nft)
        .expect("iptables-nft-restore");
    // Docker 28's direct-access guard, in the legacy raw table: one more rule naming it.
    ns.sh(&format!(
        "iptables-legacy -t raw -A PREROUTING -d {ip}/32 ! -i bq0 -j DROP"
    ));
    let proxies = Proxies::start(&ns, ip, 40000..=40099);

    let rules = ns.run(|| RuleCounts::read(&default_rulesets(), BTreeSet::from([ip])));
    assert_eq!(
        rules.read,
        ["iptables-nft", "iptables-legacy"],
        "{:?}",
        rules.errors
    );
    assert_eq!(
        rules.of(ip),
        Some(written + 1),
        "300 written with nft, 1 with legacy"
    );
    let here = RuleCounts::read(&default_rulesets(), BTreeSet::from([ip]));
    assert_eq!(
        here.of(ip),
        Some(0),
        "the rules live in the test's namespace only"
    );

    let truth = rss_of(&proxies.pids());
    let mut scanner = ProxyScanner::new("/proc");
    let started = std::time::Instant::now();
    let scan = scanner.scan();
    let first = started.elapsed();
    // A tick's scan once the processes are known (the first read them all).
    let started = std::time::Instant::now();
    for _ in 0..10 {
        scanner.scan();
    }
    eprintln!(
        "proxy scan of {} procfs entries: first {first:?}, then {:?} per scan",
        fs::read_dir("/proc").unwrap().count(),
        started.elapsed() / 10
    );
    let mine = scan
        .by_ip
        .get(&ip)
        .expect("no docker-proxy attributed to the address");
    assert_eq!(mine.processes, 200, "one per port and family");
    assert!(scan.total.processes >= 200);
    let diff = (mine.rss_bytes as f64 - truth as f64).abs() / truth as f64;
    assert!(
        diff < 0.1,
        "RSS {} B against /proc's {truth} B ({:.1}% apart)",
        mine.rss_bytes,
        diff * 100.0
    );
    let publish: Vec<String> = scan.publish_of(ip).iter().map(|p| p.to_string()).collect();
    assert_eq!(
        publish,
        ["40000-40099:40000-40099/udp"],
        "from the command lines"
    );
    eprintln!(
        "rules: {} read in {:?}; proxies: {} with {:.1} MB (/proc: {:.1} MB)",
        rules.rules,
        rules.took,
        mine.processes,
        mine.rss_bytes as f64 / 1e6,
        truth as f64 / 1e6
    );

    drop(proxies);
    let after = ProxyScanner::new("/proc").scan();
    assert!(
        !after.by_ip.contains_key(&ip),
        "killed proxies still counted"
    );
}

/// A Docker-style id no other test or run uses.
fn unique_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:08x}{nanos:056x}", std::process::id())
}

/// A process parked in a cgroup, started in a namespace (killed and reaped on drop).
struct Parked(Child);

impl Drop for Parked {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get_json(host: &Netns, agent: &Agent, path: &str) -> serde_json::Value {
    let (status, body) = host.run(|| agent.get(path));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_docker_style_container_is_counted_attributed_and_diagnosed_from_the_kernel_alone() {
    common::require_root();
    let (host, ctr, client) = (Netns::new(), Netns::new(), Netns::new());
    let x = octet();
    let (gw, ip) = (Ipv4Addr::new(10, 251, x, 1), Ipv4Addr::new(10, 251, x, 2));
    let (host_ip, client_ip) = (Ipv4Addr::new(172, 29, x, 1), Ipv4Addr::new(172, 29, x, 2));
    let (bridge, inner) = (unique("bq"), unique("bc"));
    host.veth(&bridge, &ctr, &inner);
    host.sh(&format!("ip addr add {gw}/24 dev {bridge}"));
    host.sh(&format!("ip link set {bridge} up"));
    ctr.sh(&format!("ip addr add {ip}/24 dev {inner}"));
    ctr.sh(&format!("ip link set {inner} up"));
    ctr.sh(&format!("ip route add default via {gw}"));
    let (up, down) = (unique("bu"), unique("bd"));
    host.veth(&up, &client, &down);
    host.sh(&format!("ip addr add {host_ip}/30 dev {up}"));
    host.sh(&format!("ip link set {up} up"));
    client.sh(&format!("ip addr add {client_ip}/30 dev {down}"));
    client.sh(&format!("ip link set {down} up"));
    client.sh(&format!("ip route add default via {host_ip}"));
    host.sh("sysctl -qw net.ipv4.ip_forward=1");

    let (nft, written) = docker_rules(&bridge, ip, 40000..=40099);
    host.sh_in("iptables-nft-restore", &nft)
        .expect("iptables-nft-restore");
    host.sh(&format!(
        "iptables-legacy -t raw -A PREROUTING -d {ip}/32 ! -i {bridge} -j DROP"
    ));
    let proxies = Proxies::start(&host, ip, 40000..=40099);

    // The container: a cgroup where runc puts a Docker container, one process in its netns.
    let parent = cgroup2_mount().join("docker");
    let made_parent = !parent.exists();
    let id = unique_id();
    let cgroup = Cgroup::create(&parent, &id);
    let parked = Parked(ctr.run(|| Command::new("sleep").arg("600").spawn().unwrap()));
    fs::write(cgroup.dir.join("cgroup.procs"), parked.0.id().to_string()).unwrap();
    let name = id[..12].to_owned();

    let mut agent = Agent::prepare("");
    host.run(|| agent.spawn());
    let c = wait_for(
        Duration::from_secs(15),
        "the container with its address, rules and proxies",
        || {
            let list = get_json(&host, &agent, "/api/v1/containers?all=true");
            let c = list
                .as_array()?
                .iter()
                .find(|c| c["id"] == id.as_str())?
                .clone();
            (c["network"]["ip"] == ip.to_string()
                && c["port_mapping"]["rules"].as_u64().is_some()
                && c["port_mapping"]["proxies"]["processes"] == 200)
                .then_some(c)
        },
    );
    assert_eq!(c["engine"], "docker");
    assert_eq!(c["name"], name.as_str());
    assert_eq!(c["network"]["mode"], "bridge");
    assert_eq!(c["port_mapping"]["rules"], written + 1, "{c}");
    assert_eq!(c["network"]["publish"][0]["host"]["start"], 40000, "{c}");
    assert_eq!(c["network"]["publish"][0]["host"]["end"], 40099, "{c}");
    assert!(
        c["port_mapping"]["proxies"]["rss_bytes"].as_u64().unwrap() > 100 << 20,
        "{c}"
    );

    // New flows through the DNAT rules to the last port, and to a local port nobody publishes
    // (the baseline).
    udp_new_flows(&client, SocketAddr::from((host_ip, 40099)), 300);
    udp_new_flows(&client, SocketAddr::from((host_ip, 39000)), 300);
    let row = wait_for(
        Duration::from_secs(15),
        "per-hook netfilter cost attributed to the container's range",
        || {
            let rows = get_json(&host, &agent, "/api/v1/ports");
            let row = rows
                .as_array()?
                .iter()
                .find(|r| r["container"] == id.as_str())?
                .clone();
            let hooks = row["netfilter"]["hooks"].as_array()?;
            let new_at = |h: &str| {
                hooks
                    .iter()
                    .find(|x| x["hook"] == h && x["ct_state"] == "new")
                    .and_then(|x| x["packets"].as_u64())
                    .unwrap_or(0)
            };
            (new_at("prerouting") >= 270 && new_at("postrouting") >= 270).then_some(row)
        },
    );
    assert_eq!(row["engine"], "docker");
    assert!(
        row["netfilter"]["new_flow_ns_per_packet"].as_f64().unwrap() > 0.0,
        "{row}"
    );
    let metrics = host.run(|| agent.metrics());
    for hook in ["prerouting", "forward", "postrouting"] {
        let v = sample(
            &metrics,
            "berth_container_netfilter_packets_total",
            &[
                ("container", &id),
                ("name", &name),
                ("engine", "docker"),
                ("k8s_namespace", ""),
                ("k8s_pod", ""),
                ("hook", hook),
                ("ct_state", "new"),
            ],
        );
        assert!(v.is_some_and(|v| v >= 270.0), "{hook}: {v:?}");
    }
    assert_eq!(
        sample(
            &metrics,
            "berth_container_userland_proxy_processes",
            &[
                ("container", &id),
                ("name", &name),
                ("engine", "docker"),
                ("k8s_namespace", ""),
                ("k8s_pod", "")
            ]
        ),
        Some(200.0)
    );
    // What the collectors cost per tick with 200 proxies on the host (debug build).
    for collector in ["proxies", "rules", "addresses"] {
        let secs = sample(
            &metrics,
            "berth_collector_duration_seconds",
            &[("collector", collector)],
        );
        assert!(secs.is_some(), "collector {collector} did not run");
        eprintln!(
            "collector {collector}: {:.3} ms per tick",
            secs.unwrap_or(0.0) * 1e3
        );
    }
    let (_, ports_table, _) = agent.cli(&["ports", &name]);
    assert!(
        ports_table.contains("docker") && ports_table.contains("40000-40099"),
        "{ports_table}"
    );

    // Rates need a second history sample (one per 5 s).
    std::thread::sleep(Duration::from_secs(6));
    let (code, out, err) = agent.cli(&["diagnose"]);
    assert_eq!(code, 1, "a critical finding exits 1:\n{out}{err}");
    let at = out
        .find(&format!("CRITICAL container {name}:"))
        .unwrap_or_else(|| panic!("no critical finding for {name}:\n{out}"));
    let finding = &out[at..out[at..].find("\n\n").map_or(out.len(), |e| at + e)];
    for want in [
        format!(
            "docker container {name}, image unknown, id {name}: 100 published ports (40000-40099/udp)"
        ),
        format!("{} iptables rules point at {ip}", written + 1),
        "200 userland proxy processes (docker-proxy) forward to it".to_owned(),
        "µs per new-flow packet to its ports (prerouting ".to_owned(),
        "postrouting ".to_owned(),
        "host baseline: ".to_owned(),
        "new flows per second over the last".to_owned(),
        "\"userland-proxy\": false".to_owned(),
        format!("berth run -d --name {name} -p 40000-40099:40000-40099/udp IMAGE"),
    ] {
        assert!(finding.contains(&want), "missing {want:?} in:\n{finding}");
    }
    eprintln!("{finding}");

    // Gone: the proxies, then the cgroup. Nothing stale in the API or metrics.
    drop(proxies);
    drop(parked);
    drop(cgroup);
    wait_for(Duration::from_secs(5), "the container to disappear", || {
        let list = get_json(&host, &agent, "/api/v1/containers?all=true");
        (!list.as_array()?.iter().any(|c| c["id"] == id.as_str())).then_some(())
    });
    let metrics = host.run(|| agent.metrics());
    assert!(
        !metrics.contains(&id),
        "stale series of the removed container"
    );
    let rows = get_json(&host, &agent, "/api/v1/ports");
    assert!(!rows.to_string().contains(&id), "stale port rows");
    let (_, out, _) = agent.cli(&["diagnose"]);
    assert!(!out.contains(&name), "stale finding:\n{out}");
    drop(agent);
    if made_parent {
        let _ = fs::remove_dir(&parent);
    }
}
