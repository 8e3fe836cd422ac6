//! `rules`: how many iptables rules point at each other engine's container address
//! (`Container.port_mapping.rules`), from the latest reading of a [`RuleWatcher`] thread
//! (`discover::rules`: reading thousands of rules costs far more than a tick may, so it runs
//! off the tick). The watcher starts with the first such container, is told the set of
//! addresses every tick (a change makes it read again), and counts in the agent's network
//! namespace. berth's own containers are left out: their backend is theirs
//! (`network.port_backend`). Host-mode containers have no address of their own.

use std::{collections::BTreeSet, net::Ipv4Addr};

use super::{CollectError, Collected, Collector, Tick};
use crate::{
    discover::rules::{RuleWatcher, Ruleset, WatchTimes, default_rulesets},
    model::{Container, NetworkMode},
};

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

/// The container's own address when another engine gave it one on a bridge.
fn counted(c: &Container) -> Option<Ipv4Addr> {
    (!c.engine.is_berth() && c.network.mode == NetworkMode::Bridge)
        .then_some(c.network.ip)
        .flatten()
}

impl Collector for Rules {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let snap = &mut tick.builder.snapshot;
        let addresses: BTreeSet<Ipv4Addr> = snap.containers.iter().filter_map(counted).collect();
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
        for c in &mut snap.containers {
            if let Some(ip) = counted(c) {
                c.port_mapping.rules = latest.of(ip);
            }
        }
        if latest.read.is_empty() {
            return Err(CollectError::Rules {
                errors: latest.errors.join("; "),
            });
        }
        Ok(Collected::Done)
    }
}
