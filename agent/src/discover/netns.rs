//! A container's network as the kernel shows it, without asking its engine: whether its
//! processes share the host's network namespace (host networking) and, if not, the IPv4
//! addresses local to their namespace. Read from a process of its cgroup (`cgroup.procs`):
//! `/proc/<pid>/ns/net` against the agent's own, and `/proc/<pid>/net/fib_trie` (the kernel's
//! routing trie, which lists every local address of that namespace). Port-mapping costs are
//! attributed by address, so a container whose engine does not answer is still accounted for.

use std::{fs, net::Ipv4Addr, os::unix::fs::MetadataExt as _, path::Path};

/// What the kernel says about one container's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelNetwork {
    /// Its processes run in the agent's network namespace.
    pub host: bool,
    /// Its first non-loopback local IPv4 address (none in the host's namespace).
    pub ip: Option<Ipv4Addr>,
}

/// The local IPv4 addresses a `fib_trie` lists (`|-- A.B.C.D` followed by `/32 host LOCAL`),
/// loopback left out, in order, each once.
pub fn local_addresses(fib_trie: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let line = line.trim_start();
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr.trim().parse().ok();
        } else if line.starts_with("/32 host LOCAL")
            && let Some(ip) = last.take()
            && !ip.is_loopback()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// The network of the container whose cgroup directory is `cgroup_dir`, from its first
/// process, with `proc` the host's procfs; `None` without a process or when procfs does not
/// answer (it exited meanwhile).
pub fn of_cgroup(proc: &Path, cgroup_dir: &Path) -> Option<KernelNetwork> {
    let procs = fs::read_to_string(cgroup_dir.join("cgroup.procs")).ok()?;
    let own = fs::metadata(proc.join("self/ns/net")).ok()?.ino();
    for pid in procs.lines().filter(|l| !l.is_empty()) {
        let dir = proc.join(pid);
        let Ok(ns) = fs::metadata(dir.join("ns/net")) else {
            continue;
        };
        if ns.ino() == own {
            return Some(KernelNetwork {
                host: true,
                ip: None,
            });
        }
        let Ok(trie) = fs::read_to_string(dir.join("net/fib_trie")) else {
            continue;
        };
        return Some(KernelNetwork {
            host: false,
            ip: local_addresses(&trie).first().copied(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use berth_testkit::Netns;

    use super::*;

    #[test]
    fn local_addresses_come_from_the_trie_once_each_without_loopback() {
        let trie = std::fs::read_to_string("/proc/self/net/fib_trie").unwrap();
        let here = local_addresses(&trie);
        assert!(here.iter().all(|ip| !ip.is_loopback()), "{here:?}");
        let fixture = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
             \x20    +-- 172.17.0.0/16 2 0 2\n        |-- 172.17.0.0\n           /16 link UNICAST\n\
             \x20       |-- 172.17.0.2\n           /32 host LOCAL\n        |-- 172.17.255.255\n\
             \x20          /32 link BROADCAST\n     |-- 127.0.0.1\n        /32 host LOCAL\n\
             Local:\n        |-- 172.17.0.2\n           /32 host LOCAL\n";
        assert_eq!(
            local_addresses(fixture),
            ["172.17.0.2".parse::<Ipv4Addr>().unwrap()]
        );
        assert!(local_addresses("").is_empty());
    }

    /// Root: a process in a namespace of the test's own, in a cgroup-like directory.
    #[test]
    fn a_process_in_another_namespace_gives_its_address_and_one_here_is_host_networking() {
        let ns = Netns::new();
        let (veth, peer) = (berth_testkit::unique("bv"), berth_testkit::unique("bw"));
        ns.sh(&format!("ip link add {veth} type veth peer name {peer}"));
        ns.sh(&format!("ip addr add 10.231.9.2/24 dev {veth}"));
        ns.sh(&format!("ip link set {veth} up"));
        let mut inside = ns.run(|| Command::new("sleep").arg("30").spawn().unwrap());
        let mut here = Command::new("sleep").arg("30").spawn().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let proc = Path::new("/proc");
        std::fs::write(
            dir.path().join("cgroup.procs"),
            format!("{}\n", inside.id()),
        )
        .unwrap();
        let got = of_cgroup(proc, dir.path());
        std::fs::write(dir.path().join("cgroup.procs"), format!("{}\n", here.id())).unwrap();
        let host = of_cgroup(proc, dir.path());
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        let empty = of_cgroup(proc, dir.path());
        for c in [&mut inside, &mut here] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert_eq!(
            got,
            Some(KernelNetwork {
                host: false,
                ip: Some("10.231.9.2".parse().unwrap())
            })
        );
        assert_eq!(
            host,
            Some(KernelNetwork {
                host: true,
                ip: None
            })
        );
        assert_eq!(empty, None);
    }
}
