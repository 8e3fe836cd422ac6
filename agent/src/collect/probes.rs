//! The probes' maps, one collector per probe (`syscalls`, `network`, `netfilter`: per-cgroup
//! syscall counts and latency, per-cgroup packets and bytes, netfilter cost per hook and
//! port), and `probe_state`: each probe's status, the events it lost to full maps
//! (`PROBE_ERRORS`) and its programs' run time from the kernel's BPF statistics.

use super::{CollectError, Collected, Collector, Tick};
use crate::probes::ProbeData;

/// Reads one probe's maps into the snapshot.
pub struct ProbeMaps {
    probe: &'static str,
}

impl ProbeMaps {
    pub fn new(probe: &'static str) -> Self {
        Self { probe }
    }
}

impl Collector for ProbeMaps {
    fn name(&self) -> &'static str {
        self.probe
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let cgroups = &mut tick.builder.cgroups;
        let data = {
            let alive = |id: u64| cgroups.contains_key(&id);
            tick.probes.collect(self.probe, &alive)?
        };
        match data {
            None => return Ok(Collected::NotPresent),
            Some(ProbeData::Syscalls(by_cgroup)) => {
                for (id, calls) in by_cgroup {
                    if let Some(c) = cgroups.get_mut(&id) {
                        c.syscalls = calls;
                    }
                }
            }
            Some(ProbeData::Net(by_cgroup)) => {
                for (id, counts) in by_cgroup {
                    if let Some(c) = cgroups.get_mut(&id) {
                        c.net = counts;
                    }
                }
            }
            Some(ProbeData::Netfilter(sample)) => tick.builder.snapshot.netfilter = Some(sample),
        }
        Ok(Collected::Done)
    }
}

/// Status, lost events and run time of every probe.
pub struct ProbeState;

impl Collector for ProbeState {
    fn name(&self) -> &'static str {
        "probe_state"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let snap = &mut tick.builder.snapshot;
        snap.probes = tick.probes.status();
        snap.probe_runs = tick.probes.runs();
        snap.lost_events = tick.probes.lost_events()?;
        Ok(Collected::Done)
    }
}
