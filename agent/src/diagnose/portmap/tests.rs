use std::time::Duration;

use super::*;
use crate::{
    diagnose::diagnose,
    model::{Limits, fixture},
};

fn window() -> (Snapshot, Snapshot) {
    (
        fixture::docker_host_at(Duration::from_secs(60), 300),
        fixture::docker_host_at(Duration::ZERO, 100),
    )
}

fn of<'a>(f: &'a [Finding], name: &str) -> Vec<&'a Finding> {
    let subject = format!("container {name}");
    f.iter().filter(|f| f.subject == subject).collect()
}

#[test]
fn a_docker_container_with_a_thousand_ports_is_named_with_every_number_and_critical() {
    let (now, base) = window();
    let f = diagnose(&now, Some(&Base::of(&base, None)));
    let sfu = of(&f, "sfu");
    assert_eq!(sfu.len(), 1, "{f:#?}");
    let sfu = sfu[0];
    assert_eq!(sfu.severity, Severity::Critical);
    assert!(
        sfu.cause
            .starts_with("docker publishes its ports with per-port iptables rules"),
        "{}",
        sfu.cause
    );
    assert!(
        sfu.cause
            .contains("(here postrouting is the largest part, 18.6 µs); and a userland proxy"),
        "{}",
        sfu.cause
    );
    let e = &sfu.evidence;
    assert_eq!(
        e[0],
        "docker container sfu, image mediasoup:3, id 5f5f5f5f5f5f: 1000 published ports \
         (50000-50999/udp)"
    );
    assert!(
        e[1].starts_with("3001 iptables rules point at 172.17.0.2"),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with(
            "2000 userland proxy processes (docker-proxy) forward to it: 6900.0 MB resident, \
             15.0 CPU-seconds used (3.33% of one core over the last 60 s)"
        ),
        "{}",
        e[2]
    );
    assert_eq!(
        e[3],
        "netfilter costs 20.6 µs per new-flow packet to its ports (prerouting 1.4, forward \
         0.6, postrouting 18.6; 3000 new flows measured)"
    );
    assert!(
        e[4].starts_with(
            "host baseline: 2.0 µs per new-flow packet to local ports no container publishes \
             (prerouting 1.1, input 0.9; 150 flows)"
        ),
        "{}",
        e[4]
    );
    // 2000 flows in 60 s at 20.6 µs: 0.69 ms/s; 18.6 µs above the baseline: 0.62 ms/s.
    assert_eq!(
        e[5],
        "33.3 new flows per second over the last 60 s: 0.69 ms of CPU per second in netfilter \
         (0.07% of one core), 0.62 ms per second more than at the host's baseline"
    );
    let steps: Vec<&str> = sfu.fix.lines().collect();
    assert_eq!(steps.len(), 3, "{}", sfu.fix);
    assert!(steps[0].starts_with("1. turn the userland proxy off: set \"userland-proxy\": false"));
    assert!(
        steps[0].contains("frees 2000 processes and 6900 MB"),
        "{}",
        steps[0]
    );
    assert!(
        steps[1].contains("`docker run --network host ...`"),
        "{}",
        steps[1]
    );
    assert!(
        steps[2].ends_with(
            "`docker rm -f sfu && berth run -d --name sfu -p 50000-50999:50000-50999/udp \
             --memory 2g --cpus 2 --pids-limit 500 mediasoup:3`"
        ),
        "{}",
        steps[2]
    );
    assert!(steps[2].contains("`docker save mediasoup:3 -o image.tar && berth image import"));
}

#[test]
fn the_costliest_container_comes_first_and_a_small_one_is_a_warning() {
    let (now, base) = window();
    let f = findings(&now, Some(&Base::of(&base, None)));
    let names: Vec<&str> = f.iter().map(|f| f.subject.as_str()).collect();
    assert_eq!(names, ["container sfu", "container web"]);
    let web = &f[1];
    assert_eq!(web.severity, Severity::Warning);
    assert!(
        web.evidence[0].contains("1 published ports (8080/tcp)"),
        "{web:?}"
    );
    assert!(
        web.evidence[3].starts_with("netfilter costs 3.0 µs"),
        "{web:?}"
    );
    assert!(
        web.fix.contains("host and container ports differ"),
        "8080 -> 80 needs the service moved: {}",
        web.fix
    );
    assert!(
        web.fix.contains(" -p 8080:80/tcp nginx:1.27`"),
        "{}",
        web.fix
    );
}

#[test]
fn host_networking_and_portless_bridge_containers_get_no_port_mapping_finding() {
    let (now, base) = window();
    let f = diagnose(&now, Some(&Base::of(&base, None)));
    assert!(of(&f, "hostnet").is_empty(), "{f:#?}");
    assert!(
        of(&f, "worker").is_empty(),
        "one raw DROP rule, no port: {f:#?}"
    );
}

#[test]
fn the_host_wide_proxy_finding_counts_only_proxies_no_container_accounts_for() {
    let (now, base) = window();
    let f = diagnose(&now, Some(&Base::of(&base, None)));
    let host: Vec<&Finding> = f
        .iter()
        .filter(|f| f.subject == "host" && f.cause.contains("proxies"))
        .collect();
    assert_eq!(host.len(), 1, "{f:#?}");
    assert_eq!(host[0].severity, Severity::Warning, "3, not 2005");
    assert!(
        host[0].evidence[0].starts_with("3 proxy processes, 12.0 MB resident"),
        "{:?}",
        host[0].evidence
    );
}

#[test]
fn without_history_or_measurements_the_numbers_say_so() {
    let mut now = fixture::docker_host_at(Duration::ZERO, 0);
    now.netfilter
        .as_mut()
        .unwrap()
        .other
        .retain(|c| c.hook != Hook::Input);
    if let Some(sfu) = now.containers.iter_mut().find(|c| c.name == "sfu") {
        sfu.port_mapping.rules = None;
    }
    let f = findings(&now, None);
    let sfu = &f[0];
    assert_eq!(sfu.subject, "container sfu");
    assert_eq!(
        sfu.severity,
        Severity::Critical,
        "1000 ports and 2000 proxies"
    );
    let e = &sfu.evidence;
    assert_eq!(
        e[1],
        "iptables rules pointing at 172.17.0.2: not counted yet"
    );
    assert!(e[2].ends_with("CPU-seconds used"), "no window: {}", e[2]);
    assert!(e[3].contains("not measured yet (no new flow"), "{}", e[3]);
    assert!(e[4].ends_with("not measured yet"), "{}", e[4]);
    assert!(
        e[5].starts_with("new flows per second: not measured yet"),
        "{}",
        e[5]
    );
    now.netfilter = None;
    let f = findings(&now, None);
    assert!(f[0].evidence[3].contains("the netfilter probe is down"));
}

#[test]
fn critical_from_the_per_packet_cost_or_the_proxies_alone() {
    let mut now = fixture::docker_host_at(Duration::ZERO, 100);
    let web = now.containers.iter_mut().find(|c| c.name == "web").unwrap();
    web.port_mapping.proxies.processes = 100;
    let f = findings(&now, None);
    assert_eq!(
        f.iter()
            .find(|f| f.subject == "container web")
            .unwrap()
            .severity,
        Severity::Critical
    );

    let mut now = fixture::docker_host_at(Duration::ZERO, 100);
    for c in &mut now.netfilter.as_mut().unwrap().by_port {
        if c.port == 8080 && c.hook == Hook::Postrouting {
            c.nanoseconds = c.packets * 18_500;
        }
    }
    let f = findings(&now, None);
    let web = f.iter().find(|f| f.subject == "container web").unwrap();
    assert_eq!(web.severity, Severity::Critical, "{:?}", web.evidence);
}

#[test]
fn published_ports_count_each_protocol_and_port_once() {
    let now = fixture::docker_host_at(Duration::ZERO, 1);
    let mut c = now
        .containers
        .iter()
        .find(|c| c.name == "sfu")
        .unwrap()
        .clone();
    let mut twin = c.network.publish[0].clone();
    twin.host_ip = Some("127.0.0.1".parse().unwrap());
    let mut overlap = c.network.publish[0].clone();
    overlap.host.start = 50990;
    overlap.host.end = 51009;
    c.network.publish.extend([twin, overlap]);
    assert_eq!(published_ports(&c), 1010);
}

#[test]
fn limits_print_as_berth_reads_them() {
    assert_eq!(size(2 << 30), "2g");
    assert_eq!(size(512 << 20), "512m");
    assert_eq!(size(1000), "1000");
    let now = fixture::docker_host_at(Duration::ZERO, 1);
    let mut c = now
        .containers
        .iter()
        .find(|c| c.name == "web")
        .unwrap()
        .clone();
    c.limits = Limits {
        memory: Some(64 << 20),
        memory_swap: Some(-1),
        cpu_shares: Some(512),
        blkio_weight: Some(300),
        ..Default::default()
    };
    c.engine = Engine::Podman;
    // Listed once per address family by its engine: one -p.
    let twin = c.network.publish[0].clone();
    c.network.publish.push(twin);
    let fix = fix(&c);
    assert!(
        fix.contains(
            "berth run -d --name web -p 8080:80/tcp --memory 64m --memory-swap -1 --cpu-shares \
             512 --blkio-weight 300 nginx:1.27"
        ),
        "{fix}"
    );
    assert!(fix.contains("podman save nginx:1.27"), "{fix}");
}
