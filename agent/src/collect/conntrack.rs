//! `conntrack`: the host's connection tracking from procfs (`nf_conntrack_count`/`_max`, the
//! per-CPU statistics) and the current entries per container address (bridge mode), read
//! after the containers so each gets its count. Not loaded on this host: not present.
//!
//! The host-wide numbers are a few small files, kept open and read every tick. The entries per address come
//! from a [`Counter`] thread started when some container first has an address: one ctnetlink
//! dump, then NEW/DESTROY events, so its cost follows the flow churn, not the table size, and
//! it sleeps at rest. With `net.netfilter.nf_conntrack_events = 0` (events off) it dumps the
//! table every 5 s instead and says so in the log. The tick reads its current counts; until
//! the first dump lands they are unknown rather than zero. The thread inherits the agent's
//! network namespace (the table is per namespace), closes its socket while no container has
//! an address, and ends with the collector.

use std::path::PathBuf;

use super::{CollectError, Collected, Collector, Tick};
use crate::net::conntrack::{
    self,
    counter::{Counter, Tuning},
};

pub struct Conntrack {
    proc: PathBuf,
    host: conntrack::HostStats,
    counter: Option<Counter>,
}

impl Conntrack {
    pub fn new(proc: impl Into<PathBuf>) -> Self {
        let proc = proc.into();
        Self {
            host: conntrack::HostStats::new(&proc),
            proc,
            counter: None,
        }
    }
}

impl Collector for Conntrack {
    fn name(&self) -> &'static str {
        "conntrack"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let snap = &mut tick.builder.snapshot;
        snap.conntrack = self.host.read();
        if snap.conntrack.is_none() {
            return Ok(Collected::NotPresent);
        }
        let wanted = snap.containers.iter().any(|c| c.network.ip.is_some());
        if wanted && self.counter.is_none() {
            self.counter = Counter::start(&self.proc, Tuning::default())
                .map_err(|e| tracing::warn!(error = %e, "conntrack counter thread not started"))
                .ok();
        }
        let Some(counter) = &self.counter else {
            return Ok(Collected::Done);
        };
        counter.set_wanted(wanted);
        counter.with(|tally| {
            for c in &mut snap.containers {
                c.conntrack_entries = c.network.ip.map(|ip| tally.get(ip));
            }
        });
        Ok(Collected::Done)
    }
}
