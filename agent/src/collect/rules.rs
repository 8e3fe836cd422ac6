//! `rules`: how many iptables rules point at each other engine's container address
//! (`Container.port_mapping.rules`), from the latest reading of a [`RuleWatcher`] thread
//! (`discover::rules`: reading thousands of rules costs far more than a tick may, so it runs
//! off the tick). The watcher starts with the first such container, is told the set of
//! addresses every tick (a change makes it read again), and counts in the agent's network
//! namespace. berth's own containers are left out: their backend is theirs
//! (`network.port_backend`). Host-mode containers have no address of their own; containers
//! sharing one address count its rules once (see `proxies::address_owners`).

use std::{collections::BTreeSet, net::Ipv4Addr};

use super::{CollectError, Collected, Collector, Tick, proxies::address_owners};
use crate::discover::rules::{RuleWatcher, Ruleset, WatchTimes, default_rulesets};

pub struct Rules {
    rulesets: Vec<Ruleset>,
    times: WatchTimes,
    watcher: Option<RuleWatcher>,
}

impl Rules {
    pub fn new() -> Self {
        Self::with(default_rulesets(), WatchTimes::default())
    }

    /// Reads `rulesets` on `times` (tests).
    pub fn with(rulesets: Vec<Ruleset>, times: WatchTimes) -> Self {
        Self {
            rulesets,
            times,
            watcher: None,
        }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for Rules {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let snap = &mut tick.builder.snapshot;
        let owners = address_owners(&snap.containers);
        let addresses: BTreeSet<Ipv4Addr> = owners.keys().copied().collect();
        if addresses.is_empty() && self.watcher.is_none() {
            return Ok(Collected::Done);
        }
        let (rulesets, times) = (&self.rulesets, self.times);
        let watcher = self
            .watcher
            .get_or_insert_with(|| RuleWatcher::start(rulesets.clone(), times));
        watcher.set_addresses(addresses);
        let Some(latest) = watcher.latest() else {
            return Ok(Collected::Done);
        };
        for (ip, i) in owners {
            snap.containers[i].port_mapping.rules = latest.of(ip);
        }
        if latest.read.is_empty() {
            return Err(CollectError::Rules {
                errors: latest.errors.join("; "),
            });
        }
        Ok(Collected::Done)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use berth_testkit::Netns;

    use super::*;
    use crate::{
        cgroup::TrackedRoot,
        collect::Registry,
        model::{Engine, NetworkMode, Snapshot, fixture},
        probes::Probes,
    };
    use crate::{collect::Listed, model::Container};

    /// The fixture's containers plus two Docker containers sharing 10.231.10.2 (the second
    /// joined the first's namespace and publishes nothing) and a host-networking one; berth's
    /// `legacy` container sits at 10.231.10.3.
    fn listed() -> Vec<Container> {
        let mut s = fixture::docker_host_at(Duration::ZERO, 1);
        for c in &mut s.containers {
            c.port_mapping = Default::default();
            match c.name.as_str() {
                "sfu" | "worker" => c.network.ip = Some("10.231.10.2".parse().unwrap()),
                "legacy" => c.network.ip = Some("10.231.10.3".parse().unwrap()),
                _ => {}
            }
        }
        s.containers
    }

    fn rules_of(s: &Snapshot, name: &str) -> Option<u64> {
        s.find(name).unwrap().port_mapping.rules
    }

    /// Root: real iptables in a namespace of the test's own; the watcher starts in the
    /// namespace of the thread that collects.
    #[test]
    fn rules_at_a_shared_address_are_counted_once_for_the_container_publishing_ports() {
        let ns = Netns::new();
        let mut dump = String::from("*nat\n");
        for p in 50000..50010 {
            dump.push_str(&format!(
                "-A PREROUTING -p udp --dport {p} -j DNAT --to-destination 10.231.10.2:{p}\n\
                 -A POSTROUTING -s 10.231.10.2/32 -d 10.231.10.2/32 -p udp --dport {p} -j MASQUERADE\n\
                 -A PREROUTING -p udp --dport {p} -j DNAT --to-destination 10.231.10.3:{p}\n"
            ));
        }
        ns.sh_in("iptables-nft-restore", &format!("{dump}COMMIT\n"))
            .unwrap();
        let times = WatchTimes {
            poll: Duration::from_millis(50),
            min_gap: Duration::from_millis(50),
            ..WatchTimes::default()
        };
        let mut r = Registry::with(
            Probes::disabled(&TrackedRoot::fixture()),
            vec![
                Box::new(Listed(listed)),
                Box::new(Rules::with(default_rulesets(), times)),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let snap = loop {
            let snap = ns.run(|| r.collect());
            if rules_of(&snap, "sfu").is_some() {
                break snap;
            }
            assert!(Instant::now() < deadline, "no reading after 10 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(rules_of(&snap, "sfu"), Some(20));
        assert_eq!(
            rules_of(&snap, "worker"),
            None,
            "its namespace's owner has them"
        );
        assert_eq!(rules_of(&snap, "legacy"), None, "berth's own: its backend");
        let hostnet = snap.find("hostnet").unwrap();
        assert_eq!(hostnet.network.mode, NetworkMode::Host);
        assert_eq!(hostnet.port_mapping.rules, None);
        assert!(
            snap.collectors.iter().all(|c| c.success),
            "{:?}",
            snap.collectors
        );
        assert_eq!(snap.find("sfu").unwrap().engine, Engine::Docker);
    }

    #[test]
    fn no_readable_ruleset_fails_the_collector_with_the_reason() {
        let times = WatchTimes {
            poll: Duration::from_millis(20),
            min_gap: Duration::from_millis(20),
            ..WatchTimes::default()
        };
        let missing = vec![Ruleset {
            name: "iptables-nft",
            program: "berth-no-such-save".into(),
        }];
        let mut r = Registry::with(
            Probes::disabled(&TrackedRoot::fixture()),
            vec![
                Box::new(Listed(listed)),
                Box::new(Rules::with(missing, times)),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let snap = r.collect();
            let run = &snap.collectors[1];
            if !run.success {
                let e = run.error.as_deref().unwrap_or_default();
                assert!(e.contains("berth-no-such-save"), "{e}");
                assert_eq!(rules_of(&snap, "sfu"), None);
                break;
            }
            assert!(Instant::now() < deadline, "the failure was never reported");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
