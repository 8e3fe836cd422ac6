use super::*;

fn args(s: &str) -> Option<ProxyTarget> {
    parse_args(s.split_whitespace())
}

#[test]
fn docker_proxy_command_lines_parse_in_every_flag_form() {
    let want = ProxyTarget {
        proto: Some(Proto::Udp),
        host_ip: Some("0.0.0.0".parse().unwrap()),
        host_port: 40000,
        container_ip: "172.17.0.2".parse().unwrap(),
        container_port: 40000,
    };
    assert_eq!(
        args(
            "-proto udp -host-ip 0.0.0.0 -host-port 40000 -container-ip 172.17.0.2 \
             -container-port 40000"
        ),
        Some(want.clone())
    );
    assert_eq!(
        args(
            "--proto=udp -host-ip=0.0.0.0 --host-port 40000 -container-ip=172.17.0.2 \
             -container-port=40000 -use-listen-fd"
        ),
        Some(want)
    );
    // Docker's IPv6 twin, tcp by default, and an IPv6 container address.
    let t = args("-host-ip :: -host-port 80 -container-ip fd00::2 -container-port 8080").unwrap();
    assert_eq!(t.proto, Some(Proto::Tcp));
    assert_eq!(t.host_ip, Some("::".parse().unwrap()));
    assert_eq!(t.container_ip, "fd00::2".parse::<IpAddr>().unwrap());
    assert_eq!(t.container_port, 8080);
    // sctp is kept as a proxy of that address, with no protocol berth publishes.
    let t = args("-proto sctp -host-port 9 -container-ip 10.0.0.2 -container-port 9").unwrap();
    assert_eq!(t.proto, None);
}

#[test]
fn incomplete_or_malformed_command_lines_are_not_targets() {
    for bad in [
        "",
        "-proto udp -host-port 40000 -container-port 40000",
        "-host-port 40000 -container-ip 172.17.0.2",
        "-host-port 0 -container-ip 172.17.0.2 -container-port 1",
        "-host-port 70000 -container-ip 172.17.0.2 -container-port 1",
        "-host-port 1 -container-ip 172.17.0.999 -container-port 1",
        "-host-port 1 -container-ip 172.17.0.2 -container-port",
    ] {
        assert_eq!(args(bad), None, "{bad:?}");
    }
}

/// A fake procfs entry: comm, stat (rss pages, utime, stime, start time) and cmdline.
fn mk(root: &Path, pid: u32, comm: &str, rss: u64, cpu: (u64, u64), start: u64, cmd: &str) {
    let p = root.join(pid.to_string());
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
    fs::write(
        p.join("stat"),
        format!(
            "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 {} {} 0 0 20 0 7 0 \
             {start} 712000000 {rss} 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 \
             0 0 0 0 0 0 0 0 0 0 0\n",
            cpu.0, cpu.1
        ),
    )
    .unwrap();
    let cmdline: String = cmd.split_whitespace().map(|a| format!("{a}\0")).collect();
    fs::write(p.join("cmdline"), cmdline).unwrap();
}

/// Everything read again at every scan.
const EVERY_SCAN: ScanPeriods = ScanPeriods {
    stats: Duration::ZERO,
    stats_budget: usize::MAX,
    recheck: Duration::ZERO,
};

fn proxy_cmd(proto: &str, host_ip: &str, port: u16, ip: &str) -> String {
    format!(
        "/usr/sbin/docker-proxy -proto {proto} -host-ip {host_ip} -host-port {port} \
         -container-ip {ip} -container-port {port}"
    )
}

#[test]
fn proxies_are_attributed_to_the_address_they_forward_to_and_summed_for_the_host() {
    let d = tempfile::tempdir().unwrap();
    let page = procfs::page_size();
    let tick = procfs::ticks_per_second() as f64;
    let a = "172.17.0.2";
    mk(
        d.path(),
        10,
        "docker-proxy",
        100,
        (50, 50),
        7,
        &proxy_cmd("udp", "0.0.0.0", 40000, a),
    );
    mk(
        d.path(),
        11,
        "docker-proxy",
        200,
        (0, 100),
        7,
        &proxy_cmd("udp", "::", 40000, a),
    );
    mk(
        d.path(),
        12,
        "docker-proxy",
        300,
        (1, 1),
        7,
        &proxy_cmd("tcp", "0.0.0.0", 80, "172.17.0.3"),
    );
    mk(
        d.path(),
        13,
        "slirp4netns",
        400,
        (0, 0),
        7,
        "slirp4netns --mtu 65520 4242 tap0",
    );
    mk(
        d.path(),
        14,
        "sleep",
        999,
        (9, 9),
        7,
        &proxy_cmd("udp", "0.0.0.0", 1, a),
    );
    fs::create_dir_all(d.path().join("self")).unwrap();
    let mut scanner = ProxyScanner::with_periods(d.path(), EVERY_SCAN);
    let s = scanner.scan();
    assert_eq!(s.total.processes, 4);
    assert_eq!(s.total.rss_bytes, 1000 * page);
    let ip: Ipv4Addr = a.parse().unwrap();
    let one = &s.by_ip[&ip];
    assert_eq!((one.processes, one.rss_bytes), (2, 300 * page));
    assert!((one.cpu_seconds - 200.0 / tick).abs() < 1e-9);
    assert_eq!(s.by_ip[&"172.17.0.3".parse().unwrap()].processes, 1);
    assert_eq!(
        s.by_ip.len(),
        2,
        "slirp4netns forwards to no container address"
    );

    // The cached command line is read again only when the pid is a new process.
    mk(
        d.path(),
        11,
        "docker-proxy",
        200,
        (0, 100),
        7,
        &proxy_cmd("udp", "::", 1, "10.9.9.9"),
    );
    let again = scanner.scan();
    assert_eq!(
        again.by_ip[&ip].processes, 2,
        "same pid and start: same target"
    );
    mk(
        d.path(),
        11,
        "docker-proxy",
        200,
        (0, 100),
        8,
        &proxy_cmd("udp", "::", 1, "10.9.9.9"),
    );
    let reused = scanner.scan();
    assert_eq!(
        reused.by_ip[&ip].processes, 1,
        "a reused pid is a new process"
    );
    assert_eq!(reused.by_ip[&"10.9.9.9".parse().unwrap()].processes, 1);
    fs::remove_dir_all(d.path().join("10")).unwrap();
    assert!(
        !scanner.scan().by_ip.contains_key(&ip),
        "gone with its process"
    );
}

#[test]
fn what_is_known_is_read_again_only_when_due_and_within_the_budget() {
    let d = tempfile::tempdir().unwrap();
    let page = procfs::page_size();
    let a = "172.17.0.2";
    mk(
        d.path(),
        10,
        "docker-proxy",
        100,
        (0, 0),
        7,
        &proxy_cmd("udp", "0.0.0.0", 1, a),
    );
    mk(
        d.path(),
        11,
        "docker-proxy",
        100,
        (0, 0),
        7,
        &proxy_cmd("udp", "0.0.0.0", 2, a),
    );
    mk(d.path(), 12, "dockerd", 100, (0, 0), 7, "dockerd");
    let ip: Ipv4Addr = a.parse().unwrap();
    let mut slow = ProxyScanner::new(d.path());
    assert_eq!(slow.scan().by_ip[&ip].rss_bytes, 200 * page);
    // A new non-proxy is named once more at the next scan (see the fork/exec test), then...
    assert_eq!(slow.scan().by_ip[&ip].processes, 2);
    // ...not due yet: the stats and the name are not read again...
    mk(
        d.path(),
        10,
        "docker-proxy",
        900,
        (0, 0),
        7,
        &proxy_cmd("udp", "0.0.0.0", 1, a),
    );
    mk(
        d.path(),
        12,
        "docker-proxy",
        100,
        (0, 0),
        7,
        &proxy_cmd("udp", "0.0.0.0", 3, a),
    );
    let s = slow.scan();
    assert_eq!(
        (s.by_ip[&ip].processes, s.by_ip[&ip].rss_bytes),
        (2, 200 * page)
    );
    // ...but a process that is gone is gone at once, and a new one is read at once.
    fs::remove_dir_all(d.path().join("11")).unwrap();
    mk(
        d.path(),
        13,
        "docker-proxy",
        100,
        (0, 0),
        7,
        &proxy_cmd("udp", "0.0.0.0", 4, a),
    );
    let s = slow.scan();
    assert_eq!(s.by_ip[&ip].processes, 2, "10 and 13");

    // Due every scan but one stat per scan: the stalest first, each in turn.
    let mut budget = ProxyScanner::with_periods(
        d.path(),
        ScanPeriods {
            stats_budget: 1,
            ..EVERY_SCAN
        },
    );
    assert_eq!(
        budget.scan().by_ip[&ip].processes,
        3,
        "10, 12 and 13, read when new"
    );
    for pid in [10, 12, 13] {
        mk(
            d.path(),
            pid,
            "docker-proxy",
            1000,
            (0, 0),
            7,
            &proxy_cmd("udp", "0.0.0.0", 1, a),
        );
    }
    let rss = |s: &ProxyScan| s.by_ip[&ip].rss_bytes / page;
    assert_eq!(rss(&budget.scan()), 1000 + 2 * 100);
    assert_eq!(rss(&budget.scan()), 2000 + 100);
    assert_eq!(rss(&budget.scan()), 3000);
}

#[test]
fn a_process_caught_between_fork_and_exec_is_a_proxy_at_the_next_scan() {
    let d = tempfile::tempdir().unwrap();
    let a = "172.17.0.2";
    let ip: Ipv4Addr = a.parse().unwrap();
    // dockerd's child before its exec: dockerd's name and command line.
    mk(
        d.path(),
        20,
        "dockerd",
        100,
        (0, 0),
        7,
        "dockerd -H unix://x",
    );
    let mut scanner = ProxyScanner::new(d.path());
    assert!(scanner.scan().by_ip.is_empty());
    mk(
        d.path(),
        20,
        "docker-proxy",
        100,
        (0, 0),
        7,
        &proxy_cmd("udp", "0.0.0.0", 40000, a),
    );
    assert_eq!(
        scanner.scan().by_ip[&ip].processes,
        1,
        "named again at the next scan, not 10-20 s later"
    );

    // Inside its exec: the new name, the command line not set up yet (empty). Not kept
    // without its target: read whole at the next scan.
    mk(d.path(), 21, "docker-proxy", 100, (0, 0), 7, "");
    let s = scanner.scan();
    assert_eq!((s.total.processes, s.by_ip[&ip].processes), (1, 1));
    mk(
        d.path(),
        21,
        "docker-proxy",
        100,
        (0, 0),
        7,
        &proxy_cmd("udp", "::", 40000, a),
    );
    let s = scanner.scan();
    assert_eq!((s.total.processes, s.by_ip[&ip].processes), (2, 2));
}

#[test]
fn a_missing_procfs_is_an_empty_scan() {
    let mut scanner = ProxyScanner::new("/nonexistent/proc");
    assert_eq!(scanner.scan(), ProxyScan::default());
}

#[test]
fn published_ranges_are_rebuilt_from_the_proxies_of_an_address() {
    let ip: Ipv4Addr = "172.17.0.2".parse().unwrap();
    let t = |proto, host_ip: &str, host, ctr| ProxyTarget {
        proto: Some(proto),
        host_ip: Some(host_ip.parse().unwrap()),
        host_port: host,
        container_ip: IpAddr::V4(ip),
        container_port: ctr,
    };
    let mut targets = Vec::new();
    for p in (40000..=40099).rev() {
        targets.push(t(Proto::Udp, "0.0.0.0", p, p));
        targets.push(t(Proto::Udp, "::", p, p));
    }
    targets.push(t(Proto::Tcp, "0.0.0.0", 8080, 80));
    targets.push(t(Proto::Tcp, "0.0.0.0", 8081, 90));
    targets.push(t(Proto::Tcp, "127.0.0.1", 9000, 9000));
    let scan = ProxyScan {
        targets: [(ip, targets)].into(),
        ..Default::default()
    };
    let got: Vec<String> = scan.publish_of(ip).iter().map(|p| p.to_string()).collect();
    assert_eq!(
        got,
        [
            "8080:80/tcp",
            "8081:90/tcp",
            "127.0.0.1:9000:9000/tcp",
            "40000-40099:40000-40099/udp"
        ]
    );
    assert!(scan.publish_of("10.0.0.1".parse().unwrap()).is_empty());
}
