//! The probes' maps: `probe_tracking`, which tells the syscall and network probes which
//! containers outside berth's subtree to count (the `TRACKED` map), then one collector per
//! probe (`syscalls`, `network`, `netfilter`: per-cgroup syscall counts and latency, per-cgroup
//! packets and bytes, netfilter cost per hook and port), and `probe_state`: each probe's
//! status, the events it lost to full maps (`PROBE_ERRORS`, `TRACKED`) and its programs' run
//! time from the kernel's BPF statistics. Last in the tick, `netfilter_published` tells the
//! netfilter probe which (protocol, port) pairs some container publishes (`NF_PUBLISHED`).

use std::collections::BTreeSet;

use super::{CollectError, Collected, Collector, Tick};
use crate::{model::CgroupSample, probes::ProbeData};

/// Runs after the container collectors: every container whose cgroup is not in berth's walked
/// subtree (another engine's) joins this tick's tracked cgroups, so the probe collectors keep
/// and report its counters, and the `TRACKED` map gets exactly the tracked cgroups' ids (the
/// difference to last tick). A container gone since, or back under the same id in a new
/// cgroup, leaves its old cgroup id behind: that id leaves the map and its counters are deleted
/// with the dead, so the new cgroup starts from zero.
pub struct ProbeTracking;

impl Collector for ProbeTracking {
    fn name(&self) -> &'static str {
        "probe_tracking"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let builder = &mut *tick.builder;
        for c in &builder.snapshot.containers {
            let Some(id) = c.cgroup_id else { continue };
            builder.cgroups.entry(id).or_insert_with(|| CgroupSample {
                id,
                path: c.cgroup.clone(),
                syscalls: Vec::new(),
                net: Vec::new(),
            });
        }
        let want: BTreeSet<u64> = builder.cgroups.keys().copied().collect();
        Ok(if tick.probes.track(&want)? {
            Collected::Done
        } else {
            Collected::NotPresent
        })
    }
}

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

/// Runs after every collector that finds published ports (berth's own containers of every
/// backend, other engines' from their API, from their proxies' command lines): the netfilter
/// probe counts exactly the ports of every container's published ranges per port from now on
/// (running or not, as [`crate::model::Snapshot::port_owner`] attributes them). Only a change
/// of the ranges is written, and then only the difference.
#[derive(Default)]
pub struct PublishedPorts {
    /// (IP protocol number, first port, last port) of every range last written, sorted.
    last: Option<Vec<(u8, u16, u16)>>,
}

impl Collector for PublishedPorts {
    fn name(&self) -> &'static str {
        "netfilter_published"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let mut ranges: Vec<(u8, u16, u16)> = tick
            .builder
            .snapshot
            .containers
            .iter()
            .flat_map(|c| &c.network.publish)
            .map(|p| (p.proto.ip_proto(), p.host.start, p.host.end))
            .collect();
        ranges.sort_unstable();
        ranges.dedup();
        if self.last.as_ref() == Some(&ranges) {
            return Ok(if tick.probes.netfilter.status.attached {
                Collected::Done
            } else {
                Collected::NotPresent
            });
        }
        let want: BTreeSet<(u8, u16)> = ranges
            .iter()
            .flat_map(|&(proto, start, end)| (start..=end).map(move |port| (proto, port)))
            .collect();
        if !tick.probes.publish(&want)? {
            return Ok(Collected::NotPresent);
        }
        self.last = Some(ranges);
        Ok(Collected::Done)
    }
}
