//! `conntrack`: the host's connection tracking from procfs (`nf_conntrack_count`/`_max`, the
//! per-CPU statistics) and the current entries per container address (bridge mode), read
//! after the containers so each gets its count. Not loaded on this host: not present.

use std::path::PathBuf;

use super::{CollectError, Collected, Collector, Tick};
use crate::net::conntrack;

pub struct Conntrack {
    proc: PathBuf,
}

impl Conntrack {
    pub fn new(proc: impl Into<PathBuf>) -> Self {
        Self { proc: proc.into() }
    }
}

impl Collector for Conntrack {
    fn name(&self) -> &'static str {
        "conntrack"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let snap = &mut tick.builder.snapshot;
        snap.conntrack = conntrack::host_stats(&self.proc);
        if snap.conntrack.is_none() {
            return Ok(Collected::NotPresent);
        }
        if snap.containers.iter().any(|c| c.network.ip.is_some()) {
            let by_ip = conntrack::entries_by_ip(&self.proc);
            for c in &mut snap.containers {
                c.conntrack_entries = c.network.ip.map(|ip| by_ip.get(&ip).copied().unwrap_or(0));
            }
        }
        Ok(Collected::Done)
    }
}
