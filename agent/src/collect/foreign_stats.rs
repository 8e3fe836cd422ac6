//! `foreign_stats`: CPU, memory, pids and IO of other engines' running containers, read from
//! their cgroups with the readers berth uses for its own (`cgroup::stats`; v1 hierarchies in
//! hybrid mode hold them at the same relative path as the unified one).
//!
//! A full read is a dozen small cgroupfs files per container (kept open and read with one
//! `pread` each, `cgroup::reader`): at one tick per second and hundreds of containers that
//! would still be most of the agent's work. So each container is read
//! when it is first seen and then every [`STATS_EVERY`], at most [`PER_TICK`] per tick (the
//! stalest first), and the snapshot carries the last reading in between, as cAdvisor's
//! housekeeping interval does. Like cAdvisor's dynamic housekeeping, a container whose CPU
//! time did not move between two reads (it ran no task: its pids cannot have changed, its
//! memory only by reclaim) is read again after twice the gap, up to [`IDLE_EVERY`]; any
//! movement brings it back to [`STATS_EVERY`]. Counters stay monotonic; gauges are at most
//! that old. A read of a container whose CPU time stands still is its CPU file alone, its task
//! count and memory every few reads, as for berth's own ([`StatsCache::following_cpu`]): it
//! ran no task, so they could only have shrunk by reclaim.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{CollectError, Collected, Collector, Tick};
use crate::{
    cgroup::{Hierarchy, reader::StatsCache},
    model::{ContainerStats, Status},
};

/// How old a foreign container's stats may get.
pub const STATS_EVERY: Duration = Duration::from_secs(5);
/// How old an idle foreign container's stats may get (its CPU time did not move).
pub const IDLE_EVERY: Duration = Duration::from_secs(20);
/// Containers read at most per tick.
pub const PER_TICK: usize = 25;

pub struct ForeignStats {
    files: StatsCache,
    /// cgroup id -> its last reading.
    last: HashMap<u64, Reading>,
}

/// A container's last reading: when, what, and the gap before the next one.
#[derive(Debug, Clone)]
struct Reading {
    at: Instant,
    stats: ContainerStats,
    every: Duration,
}

impl Reading {
    /// The reading after `previous` (none for a container first read): the gap doubles while
    /// the CPU time stands still, up to [`IDLE_EVERY`].
    fn next(previous: Option<&Reading>, at: Instant, stats: ContainerStats) -> Self {
        let every = match previous {
            Some(p) if p.stats.cpu_usage_seconds == stats.cpu_usage_seconds => {
                (p.every * 2).min(IDLE_EVERY)
            }
            _ => STATS_EVERY,
        };
        Self { at, stats, every }
    }
}

impl ForeignStats {
    /// `kept_files`: how many cgroup stat files may stay open between ticks.
    pub fn new(hierarchy: Hierarchy, kept_files: usize) -> Self {
        Self {
            files: StatsCache::new(hierarchy, kept_files).following_cpu(),
            last: HashMap::new(),
        }
    }
}

impl Collector for ForeignStats {
    fn name(&self) -> &'static str {
        "foreign_stats"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let now = Instant::now();
        let containers = &mut tick.builder.snapshot.containers;
        // Due: running foreign containers never read, or read longest ago.
        let mut due: Vec<(Option<Instant>, usize)> = containers
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.engine.is_berth() && c.status == Status::Running)
            .filter_map(|(i, c)| {
                let last = self.last.get(&c.cgroup_id?);
                last.is_none_or(|r| now.duration_since(r.at) >= r.every)
                    .then_some((last.map(|r| r.at), i))
            })
            .collect();
        due.sort_by_key(|(at, _)| *at);
        for &(_, i) in due.iter().take(PER_TICK) {
            let c = &containers[i];
            let Some(id) = c.cgroup_id else { continue };
            match self.files.read(&c.cgroup, Some(id), 0) {
                Ok(s) => {
                    let reading = Reading::next(self.last.get(&id), now, s);
                    self.last.insert(id, reading);
                }
                // Gone between the walk and now, or a controller it is not in: no numbers.
                Err(_) => {
                    self.last.remove(&id);
                }
            }
        }
        let mut live = HashMap::with_capacity(self.last.len());
        for c in containers.iter_mut().filter(|c| !c.engine.is_berth()) {
            let Some(id) = c.cgroup_id else { continue };
            if let Some(entry) = self.last.remove(&id) {
                if c.status == Status::Running {
                    c.stats = Some(entry.stats.clone());
                }
                live.insert(id, entry);
            }
        }
        // What is left belongs to containers that are gone.
        self.last = live;
        self.files
            .retain(|id, _| id.is_some_and(|id| self.last.contains_key(&id)));
        Ok(Collected::Done)
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use super::*;
    use crate::collect::Listed;
    use crate::{
        cgroup::{CgroupMode, TrackedRoot},
        collect::Registry,
        model::{Container, Engine, fixture},
        probes::Probes,
    };

    /// A Docker container at `/docker/<id>` (cgroup id 77) and one of berth's.
    fn listed() -> Vec<Container> {
        let mut c: Container = fixture::snapshot().containers.remove(0);
        let berth = c.clone();
        c.engine = Engine::Docker;
        c.berth = None;
        c.stats = None;
        c.cgroup = format!("/docker/{}", "d".repeat(64));
        c.cgroup_id = Some(77);
        vec![c, berth]
    }

    /// The listed containers, then a fresh `foreign_stats` over a cgroup2 tree at `mount`.
    fn registry(mount: &Path) -> Registry {
        let hierarchy = Hierarchy {
            mode: CgroupMode::Unified,
            unified_mount: mount.to_owned(),
            v1: Vec::new(),
        };
        Registry::with(
            Probes::disabled(&TrackedRoot::fixture()),
            vec![
                Box::new(Listed(listed)),
                Box::new(ForeignStats::new(hierarchy, 1000)),
            ],
        )
    }

    fn docker_of(snap: &crate::model::Snapshot) -> &Container {
        snap.containers
            .iter()
            .find(|c| c.cgroup_id == Some(77))
            .expect("the docker container listed")
    }

    fn v2_files(dir: &Path, memory: u64) {
        fs::create_dir_all(dir).unwrap();
        for (f, v) in [
            ("cgroup.controllers", "cpu memory pids".to_owned()),
            (
                "cpu.stat",
                "usage_usec 2000000\nuser_usec 1500000\nsystem_usec 500000\n".into(),
            ),
            ("cpu.max", "max 100000\n".into()),
            ("memory.current", format!("{memory}\n")),
            ("memory.max", "max\n".into()),
            ("pids.current", "3\n".into()),
            ("pids.max", "max\n".into()),
        ] {
            fs::write(dir.join(f), v).unwrap();
        }
    }

    #[test]
    fn an_idle_containers_gap_doubles_up_to_the_idle_bound_and_any_cpu_brings_it_back() {
        let t = Instant::now();
        let stats = |cpu: f64| ContainerStats {
            cpu_usage_seconds: cpu,
            ..Default::default()
        };
        let first = Reading::next(None, t, stats(1.0));
        assert_eq!(first.every, STATS_EVERY);
        let mut r = first;
        let mut gaps = Vec::new();
        for _ in 0..4 {
            r = Reading::next(Some(&r), t, stats(1.0));
            gaps.push(r.every.as_secs());
        }
        assert_eq!(
            gaps,
            [10, 20, 20, 20],
            "doubling while the CPU time stands still"
        );
        let moved = Reading::next(Some(&r), t, stats(1.5));
        assert_eq!(moved.every, STATS_EVERY, "it ran: back to the base gap");
    }

    #[test]
    fn an_idle_foreign_containers_memory_is_read_again_once_its_cpu_time_moves() {
        let mount = tempfile::tempdir().unwrap();
        let dir = mount.path().join("docker").join("d".repeat(64));
        v2_files(&dir, 1 << 20);
        let mut stats = ForeignStats::new(
            Hierarchy {
                mode: CgroupMode::Unified,
                unified_mount: mount.path().to_owned(),
                v1: Vec::new(),
            },
            1000,
        );
        let mut probes = Probes::disabled(&TrackedRoot::fixture());
        // One tick over the listed containers, then every reading made due for the next one;
        // the docker container's memory as the tick saw it.
        let mut tick = |stats: &mut ForeignStats| {
            let mut builder = crate::collect::Builder::new();
            builder.snapshot.containers = listed();
            let mut t = crate::collect::Tick {
                builder: &mut builder,
                probes: &mut probes,
            };
            stats.collect(&mut t).unwrap();
            for r in stats.last.values_mut() {
                r.at = Instant::now().checked_sub(IDLE_EVERY).unwrap();
            }
            let snap = builder.finish();
            docker_of(&snap).stats.as_ref().unwrap().memory_usage_bytes
        };
        assert_eq!(tick(&mut stats), 1 << 20);
        // Its CPU time stands still: the due read is its CPU file; memory stands as read.
        fs::write(dir.join("memory.current"), format!("{}\n", 2 << 20)).unwrap();
        assert_eq!(tick(&mut stats), 1 << 20, "read while it stood idle");
        // It ran: the next read takes its memory too.
        fs::write(
            dir.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 1900000\nsystem_usec 600000\n",
        )
        .unwrap();
        assert_eq!(
            tick(&mut stats),
            2 << 20,
            "not read after its CPU time moved"
        );
    }

    #[test]
    fn a_foreign_container_gets_its_cgroup_usage_and_is_not_read_again_within_the_interval() {
        let mount = tempfile::tempdir().unwrap();
        let dir = mount.path().join("docker").join("d".repeat(64));
        v2_files(&dir, 1 << 20);
        let mut r = registry(mount.path());
        let snap = r.collect();
        let docker = docker_of(&snap);
        let s = docker
            .stats
            .as_ref()
            .expect("stats of the docker container");
        assert_eq!((s.memory_usage_bytes, s.pids_current), (1 << 20, 3));
        assert!((s.cpu_usage_seconds - 2.0).abs() < 1e-9);
        // berth's own container keeps what its own collector gave (here the fixture's).
        let berth = snap
            .containers
            .iter()
            .find(|c| c.engine.is_berth())
            .unwrap();
        assert_eq!(berth.stats, fixture::snapshot().containers[0].stats);

        // Within STATS_EVERY the last reading is carried, not read again.
        v2_files(&dir, 2 << 20);
        let snap = r.collect();
        let docker = docker_of(&snap);
        assert_eq!(docker.stats.as_ref().unwrap().memory_usage_bytes, 1 << 20);

        // Its cgroup gone: no numbers rather than stale ones, once it is read again.
        fs::remove_dir_all(&dir).unwrap();
        let mut r = registry(mount.path());
        let snap = r.collect();
        let docker = docker_of(&snap);
        assert!(docker.stats.is_none());
    }
}
