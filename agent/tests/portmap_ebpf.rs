//! The `ebpf` port-mapping backend through the agent: `berth run --port-backend ebpf`, clients
//! in a namespace and on the host, its counters in `/metrics`, the mapping answering while the
//! agent is killed and restarted, and nothing left after `rm` and shutdown. The uplink is the
//! test's own veth (`network.uplinks`), never the machine's interface.

mod common;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use aya::{
    maps::{HashMap as BpfHash, Map, MapData},
    programs::{SchedClassifier, TcAttachType},
};
use berth_common::portmap::{PortKey, PortTarget};
use common::{Agent, ClientNs, echo_rootfs, sample, udp_ask, unique, wait_for};

fn pinned_ports(dir: &std::path::Path) -> usize {
    let data = MapData::from_pin(dir.join("PM_PORTS")).expect("the ports map is pinned");
    let m: BpfHash<_, PortKey, PortTarget> = BpfHash::try_from(Map::HashMap(data)).unwrap();
    m.keys().count()
}

fn tcx_programs(ifname: &str) -> usize {
    SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)
        .map(|(_, p)| p.len())
        .unwrap_or(0)
}

#[test]
fn an_ebpf_mapping_answers_through_a_kill_9_and_rm_and_shutdown_leave_nothing() {
    let client = ClientNs::create();
    let pid = std::process::id() % 1_000_000;
    let table = format!("be{pid}");
    let network = format!(
        "[network]\nbridge = \"be{pid}\"\nsubnet = \"10.251.{}.0/24\"\ntable = \"{table}\"\n\
         uplinks = [\"{}\"]\n",
        pid % 256,
        client.host_if
    );
    let mut agent = Agent::start_with(&network);
    let pins = PathBuf::from(format!("/sys/fs/bpf/berth/portmap-{table}"));
    let support = agent.system()["port_backends"].clone();
    let ebpf = support
        .as_array()
        .and_then(|a| a.iter().find(|b| b["backend"] == "ebpf"))
        .unwrap_or_else(|| panic!("no ebpf in /api/v1/system port_backends: {support}"));
    assert_eq!(ebpf["available"], true, "{ebpf}");
    let rootfs = echo_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let name = unique("ebpf");
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--port-backend",
        "ebpf",
        "-p",
        "23000-23999:43000-43999/udp",
        rootfs,
        "berth-test-echo",
        "--ports",
        "43000-43999",
    ]);
    agent.wait_status(&name, "running", 10);
    wait_for(Duration::from_secs(10), "the echo server", || {
        agent
            .ok(&["logs", &name])
            .contains("listening")
            .then_some(())
    });
    let ask = |from_client: bool, port: u16| {
        let to = SocketAddr::from((client.host_ip, port));
        let ns = from_client.then_some(&client.ns);
        udp_ask(ns, to, format!("ping {port}").as_bytes())
    };
    for port in [23000u16, 23500, 23999] {
        assert_eq!(
            ask(true, port).as_deref(),
            Some(format!("ping {port}").as_bytes()),
            "no echo from the client namespace on {port}"
        );
    }
    // The host itself, through the socket hooks.
    let local = udp_ask(
        None,
        SocketAddr::from(([127, 0, 0, 1], 23999)),
        b"from the host",
    );
    assert_eq!(local.as_deref(), Some(&b"from the host"[..]));
    assert_eq!(pinned_ports(&pins), 1000);
    let ports: serde_json::Value =
        serde_json::from_str(&agent.ok(&["ports", "--format", "json", &name])).unwrap();
    assert_eq!(ports[0]["backend"], "ebpf", "{ports}");

    // The counters as the agent reports them, once they reach `at_least` (the snapshot is
    // taken every tick, so the latest one may predate the traffic).
    let fast = |agent: &Agent, at_least: f64| {
        wait_for(
            Duration::from_secs(5),
            "the ebpf forward hits in /metrics",
            || {
                sample(
                    &agent.metrics(),
                    "berth_portmap_ebpf_packets_total",
                    &[("path", "fast"), ("reason", "forward")],
                )
                .filter(|v| *v >= at_least)
            },
        )
    };
    let before = fast(&agent, 3.0);

    // The agent dies without cleaning up: the mapping keeps answering, and a new agent takes it
    // over with its counters.
    agent.kill9();
    assert_eq!(
        ask(true, 23123).as_deref(),
        Some(&b"ping 23123"[..]),
        "no echo while the agent is down"
    );
    agent.spawn();
    assert_eq!(ask(true, 23124).as_deref(), Some(&b"ping 23124"[..]));
    fast(&agent, before + 2.0);

    agent.ok(&["rm", "-f", &name]);
    assert_eq!(pinned_ports(&pins), 0, "map entries left after rm");
    assert!(ask(true, 23000).is_none(), "answered after rm");
    let reserved = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap();
    assert!(
        !reserved.contains("23000"),
        "reserved ports left: {reserved}"
    );
    agent.stop();
    assert!(
        !pins.exists(),
        "pins left after shutdown: {}",
        pins.display()
    );
    assert_eq!(
        tcx_programs(&client.host_if),
        0,
        "a program left on the uplink"
    );
}
