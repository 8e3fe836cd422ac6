//! `addresses`: the network of other engines' containers as the kernel shows it
//! (`discover::netns`), for those whose engine gave no address: host networking when their
//! processes share the agent's network namespace, else their own namespace's address. Port
//! mappings (proxies, rules) are attributed by address, so this keeps them attributed when an
//! engine's API is unreachable. Runs after the containers are listed; what it found is kept per
//! cgroup (a container keeps its namespace for life), so a container costs one read of its
//! `cgroup.procs`, `ns/net` and `fib_trie` until it has an answer.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::{CollectError, Collected, Collector, Tick};
use crate::{
    discover::netns::{self, KernelNetwork},
    model::{NetworkMode, Status},
};

pub struct Addresses {
    /// The cgroup2 mount the containers' `cgroup` paths are below.
    mount: PathBuf,
    proc: PathBuf,
    /// Answers per v2 cgroup id, kept while the cgroup is listed.
    known: HashMap<u64, KernelNetwork>,
}

impl Addresses {
    pub fn new(mount: &Path, proc: &Path) -> Self {
        Self {
            mount: mount.to_owned(),
            proc: proc.to_owned(),
            known: HashMap::new(),
        }
    }
}

impl Collector for Addresses {
    fn name(&self) -> &'static str {
        "addresses"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let mut known = HashMap::with_capacity(self.known.len());
        for c in &mut tick.builder.snapshot.containers {
            let Some(id) = c.cgroup_id else {
                continue;
            };
            if c.engine.is_berth() || c.network.ip.is_some() || c.status != Status::Running {
                continue;
            }
            let net = match self.known.remove(&id) {
                Some(net) => net,
                None => {
                    let dir = self.mount.join(c.cgroup.trim_start_matches('/'));
                    // No process yet, or no address yet (its network is being set up):
                    // asked again next tick.
                    match netns::of_cgroup(&self.proc, &dir) {
                        Some(net) if net.host || net.ip.is_some() => net,
                        _ => continue,
                    }
                }
            };
            if net.host {
                c.network.mode = NetworkMode::Host;
            }
            c.network.ip = net.ip;
            known.insert(id, net);
        }
        self.known = known;
        Ok(Collected::Done)
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, process::Command, time::Duration};

    use berth_testkit::Netns;

    use super::*;
    use crate::{
        cgroup::TrackedRoot,
        collect::Registry,
        model::fixture::{self, HOSTNET_ID, SFU_ID},
        probes::Probes,
    };
    use crate::{collect::Listed, model::Container};

    /// The Docker host fixture as the foreign collector lists it before any metadata: no
    /// address, bridge mode.
    fn listed() -> Vec<Container> {
        let mut s = fixture::docker_host_at(Duration::ZERO, 1);
        for c in s.containers.iter_mut().filter(|c| !c.engine.is_berth()) {
            c.network.ip = None;
            c.network.mode = NetworkMode::Bridge;
        }
        s.containers
    }

    /// Root: one process in a namespace of the test's own, one in the test's.
    #[test]
    fn the_kernel_gives_a_container_its_address_or_tells_it_shares_the_host_s_network() {
        let ns = Netns::new();
        let (a, b) = (berth_testkit::unique("ba"), berth_testkit::unique("bb"));
        ns.sh(&format!("ip link add {a} type veth peer name {b}"));
        ns.sh(&format!("ip addr add 10.231.11.2/24 dev {a}"));
        ns.sh(&format!("ip link set {a} up"));
        let mut inside = ns.run(|| Command::new("sleep").arg("30").spawn().unwrap());
        let mut here = Command::new("sleep").arg("30").spawn().unwrap();
        let mount = tempfile::tempdir().unwrap();
        for (id, pid) in [(SFU_ID, inside.id()), (HOSTNET_ID, here.id())] {
            let dir = mount.path().join("docker").join(id);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cgroup.procs"), format!("{pid}\n")).unwrap();
        }
        let mut r = Registry::with(
            Probes::disabled(&TrackedRoot::fixture()),
            vec![
                Box::new(Listed(listed)),
                Box::new(Addresses::new(mount.path(), Path::new("/proc"))),
            ],
        );
        let first = r.collect();
        for c in [&mut inside, &mut here] {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Kept per cgroup: the processes are gone, the answer stays.
        let second = r.collect();
        for snap in [&first, &second] {
            let sfu = snap.find("sfu").unwrap();
            assert_eq!(sfu.network.ip, Some("10.231.11.2".parse().unwrap()));
            assert_eq!(sfu.network.mode, NetworkMode::Bridge);
            let host = snap.find("hostnet").unwrap();
            assert_eq!(
                (host.network.mode, host.network.ip),
                (NetworkMode::Host, None)
            );
            let web = snap.find("web").unwrap();
            assert_eq!(web.network.ip, None, "no cgroup.procs: no answer");
            let media = snap.find("media").unwrap();
            assert_eq!(
                media.network.ip,
                Some("10.231.0.2".parse().unwrap()),
                "berth's own"
            );
        }
    }
}
