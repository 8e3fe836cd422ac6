//! `proxies`: userland port-mapping proxies (docker-proxy and kin) from a procfs scan
//! (`discover::proxies`): how many run host-wide, their resident memory and CPU time, and
//! each docker-proxy attributed to the container whose address it forwards to
//! (`Container.port_mapping.proxies`, other engines' containers only: berth runs no proxy).
//! A container whose engine gave no published ports gets them from its proxies' command lines.
//! Runs after the containers are listed.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::{CollectError, Collected, Collector, Tick};
use crate::{
    discover::proxies::{ProxyScan, ProxyScanner},
    model::{Container, NetworkMode},
};

/// Which of the other engines' bridge containers owns each address: containers sharing a
/// network namespace (a pod, Docker's `--network container:X`) share its address, and what
/// points at it is counted once, for the one that publishes ports (else the first listed).
pub(super) fn address_owners(containers: &[Container]) -> HashMap<Ipv4Addr, usize> {
    let mut out: HashMap<Ipv4Addr, usize> = HashMap::new();
    for (i, c) in containers.iter().enumerate() {
        if c.engine.is_berth() || c.network.mode != NetworkMode::Bridge {
            continue;
        }
        let Some(ip) = c.network.ip else {
            continue;
        };
        out.entry(ip)
            .and_modify(|o| {
                if containers[*o].network.publish.is_empty() && !c.network.publish.is_empty() {
                    *o = i;
                }
            })
            .or_insert(i);
    }
    out
}

/// How often procfs is scanned: a scan lists every process (a `readdir` of hundreds of pids,
/// most of this collector's cost), and proxies come and go with containers, whose ports and
/// addresses other collectors give every tick; in between the last scan stands.
pub const SCAN_EVERY: Duration = Duration::from_secs(3);

pub struct Proxies {
    scanner: ProxyScanner,
    last: Option<(Instant, ProxyScan)>,
}

impl Proxies {
    /// Scans `proc`: the host's procfs (`discovery.proc`).
    pub fn new(proc: impl Into<PathBuf>) -> Self {
        Self {
            scanner: ProxyScanner::new(proc),
            last: None,
        }
    }
}

impl Collector for Proxies {
    fn name(&self) -> &'static str {
        "proxies"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let due = self
            .last
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= SCAN_EVERY);
        if due {
            self.last = Some((Instant::now(), self.scanner.scan()));
        }
        let scan = &self.last.as_ref().expect("scanned above").1;
        let snap = &mut tick.builder.snapshot;
        for (ip, i) in address_owners(&snap.containers) {
            let c = &mut snap.containers[i];
            if let Some(p) = scan.by_ip.get(&ip) {
                c.port_mapping.proxies = p.clone();
                if c.network.publish.is_empty() {
                    c.network.publish = scan.publish_of(ip);
                }
            }
        }
        snap.proxies = scan.total.clone();
        Ok(Collected::Done)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::collect::Listed;
    use crate::{
        cgroup::TrackedRoot,
        collect::Registry,
        model::{Engine, fixture},
        probes::Probes,
    };

    /// Puts the fixture's containers, one of them turned into a Docker container at
    /// 172.17.0.2 without published ports, into the snapshot.
    fn listed() -> Vec<Container> {
        let mut s = fixture::snapshot();
        s.containers[1].engine = Engine::Docker;
        s.containers[1].network.ip = Some("172.17.0.2".parse().unwrap());
        s.containers[1].network.publish.clear();
        s.containers[0].network.ip = Some("172.17.0.9".parse().unwrap());
        s.containers
    }

    fn proxy(root: &std::path::Path, pid: u32, host_ip: &str, port: u16, ip: &str) {
        let p = root.join(pid.to_string());
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("comm"), "docker-proxy\n").unwrap();
        fs::write(
            p.join("stat"),
            format!(
                "{pid} (docker-proxy) S 1 1 1 0 -1 0 0 0 0 0 3 4 0 0 20 0 7 0 99 700000 250 \
                 1 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
            ),
        )
        .unwrap();
        fs::write(
            p.join("cmdline"),
            format!(
                "docker-proxy\0-proto\0udp\0-host-ip\0{host_ip}\0-host-port\0{port}\0\
                 -container-ip\0{ip}\0-container-port\0{port}\0"
            ),
        )
        .unwrap();
    }

    #[test]
    fn proxies_go_to_the_foreign_container_at_their_address_and_the_host_keeps_the_total() {
        let proc = tempfile::tempdir().unwrap();
        let mut pid = 100;
        for port in 40000..40003 {
            for host_ip in ["0.0.0.0", "::"] {
                proxy(proc.path(), pid, host_ip, port, "172.17.0.2");
                pid += 1;
            }
        }
        // Forwards to berth's container's address: berth runs no proxy, so it stays the host's.
        proxy(proc.path(), pid, "0.0.0.0", 9, "172.17.0.9");
        let mut r = Registry::with(
            Probes::disabled(&TrackedRoot::fixture()),
            vec![
                Box::new(Listed(listed)),
                Box::new(Proxies::new(proc.path())),
            ],
        );
        let snap = r.collect();
        assert_eq!(snap.proxies.processes, 7);
        let page = procfs::page_size();
        assert_eq!(snap.proxies.rss_bytes, 7 * 250 * page);
        let docker = snap.find("legacy").unwrap();
        assert_eq!(docker.port_mapping.proxies.processes, 6);
        assert_eq!(docker.port_mapping.proxies.rss_bytes, 6 * 250 * page);
        let published: Vec<String> = docker
            .network
            .publish
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            published,
            ["40000-40002:40000-40002/udp"],
            "from the command lines"
        );
        let own = snap.find("media").unwrap();
        assert_eq!(own.port_mapping.proxies.processes, 0);
    }
}
