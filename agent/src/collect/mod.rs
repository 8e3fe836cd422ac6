//! The collectors: the only code that reads the host to build a [`Snapshot`], one module each,
//! run in order once per tick by the [`Registry`] (node_exporter's collector framework and
//! rezolus' samplers are the models).
//!
//! The framework, not each collector, times every run and records its outcome
//! (`berth_collector_duration_seconds`, `berth_collector_success`); a collector that fails is
//! named with its error in the log and the snapshot, and the others are unaffected. A collector
//! whose source is not on this host (a probe that is down or disabled) says so with
//! [`Collected::NotPresent`], which is not a failure.
//!
//! Order matters and is fixed in [`Registry::new`]: the cgroup walk of berth's subtree first,
//! then containers, berth's own and then the foreign ones found in the cgroup tree with their
//! addresses as the kernel shows them when their engine gave none, then `probe_tracking` (the
//! foreign containers' cgroups join the tracked ones and the probes' `TRACKED` map), then the
//! probes (they keep only live tracked cgroups; the samples are joined to their containers when
//! the snapshot is finished), then what reads the containers: conntrack, userland proxies and
//! iptables rules per address, and last the published ports the netfilter probe counts per
//! port (every collector that finds published ports has run).

mod addresses;
mod cgroups;
mod conntrack;
mod containers;
mod foreign;
mod foreign_stats;
mod images;
mod portmap_ebpf;
mod probes;
mod proxies;
mod rules;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Instant, SystemTime},
};

use tracing::{debug, warn};

use crate::{
    cgroup::{Hierarchy, TrackedRoot, reader::kept_files_budget},
    config::DiscoveryConfig,
    discover::meta::MetaSource,
    model::{CgroupSample, CollectorRun, Snapshot},
    probes::{ProbeLoadError, Probes},
    runtime::{Manager, RuntimeError},
};

/// Why a collector failed this tick.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Probe(#[from] ProbeLoadError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error("no iptables ruleset could be read: {errors}")]
    Rules { errors: String },
    #[error(transparent)]
    Portmap(#[from] crate::net::portmap::PortmapError),
}

/// What a collector did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collected {
    /// Read its source into the snapshot.
    Done,
    /// Its source is not on this host (a probe down or disabled, no runtime): nothing to read.
    NotPresent,
}

/// The snapshot under construction, plus the tracked cgroups found this tick (joined to their
/// containers in [`Builder::finish`]).
pub struct Builder {
    pub snapshot: Snapshot,
    pub cgroups: BTreeMap<u64, CgroupSample>,
}

impl Builder {
    fn new() -> Self {
        Self {
            snapshot: Snapshot::empty(SystemTime::now()),
            cgroups: BTreeMap::new(),
        }
    }

    /// Moves each container's cgroup sample into the container (by v2 cgroup id); what is
    /// left belongs to no known container.
    fn finish(mut self) -> Snapshot {
        for c in &mut self.snapshot.containers {
            if let Some(sample) = c.cgroup_id.and_then(|id| self.cgroups.remove(&id)) {
                c.syscalls = sample.syscalls;
                c.net = sample.net;
            }
        }
        let mut others: Vec<CgroupSample> = self.cgroups.into_values().collect();
        others.sort_by(|a, b| a.path.cmp(&b.path));
        self.snapshot.other_cgroups = others;
        self.snapshot.containers.sort_by(|a, b| {
            b.created_at
                .total_cmp(&a.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        self.snapshot.taken_at = SystemTime::now();
        self.snapshot
    }
}

/// What a collector can reach during a tick besides its own state.
pub struct Tick<'a> {
    pub builder: &'a mut Builder,
    /// The loaded probes (their maps are read by the probe collectors).
    pub probes: &'a mut Probes,
}

/// Tests of the collectors that read containers: a collector that lists the containers its
/// function returns, each tick.
#[cfg(test)]
pub(crate) struct Listed(pub fn() -> Vec<crate::model::Container>);

#[cfg(test)]
impl Collector for Listed {
    fn name(&self) -> &'static str {
        "listed"
    }
    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        tick.builder.snapshot.containers.extend((self.0)());
        Ok(Collected::Done)
    }
}

/// One source of the snapshot.
pub trait Collector: Send {
    /// Its name in `berth_collector_*{collector}` and in logs.
    fn name(&self) -> &'static str;
    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError>;
}

/// Every collector in order, and the probes they read; owned by the collector loop. Dropping
/// it detaches every BPF program.
pub struct Registry {
    probes: Probes,
    collectors: Vec<Box<dyn Collector>>,
}

impl Registry {
    /// The collectors of this agent: the cgroup walk of `root`, berth's own containers and
    /// images (when a container manager runs), the other engines' containers below
    /// `unified_mount` (the cgroup2 mount; unless `discovery.enabled` is false) with their
    /// addresses, the probes' tracking and one collector per probe, conntrack and userland proxies from the host's procfs at
    /// `discovery.proc`, and the iptables rules of the other engines' containers. `nofile` is
    /// the soft `RLIMIT_NOFILE` in force: the cgroup stat readers keep files open within a
    /// share of it ([`kept_files_budget`]).
    pub fn new(
        probes: Probes,
        root: TrackedRoot,
        hierarchy: &Hierarchy,
        manager: Option<Arc<Manager>>,
        sources: Vec<Box<dyn MetaSource>>,
        discovery: &DiscoveryConfig,
        nofile: u64,
    ) -> Self {
        let kept_files = kept_files_budget(nofile);
        let unified_mount = hierarchy.unified_mount.as_path();
        let skip = root.path.clone();
        let manager_for_ebpf = manager.clone();
        let mut collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(cgroups::Cgroups::new(root)),
            Box::new(containers::Containers::new(manager.clone(), kept_files)),
        ];
        if discovery.enabled {
            collectors.push(Box::new(
                foreign::Foreign::new(unified_mount, skip).with_sources(sources),
            ));
            collectors.push(Box::new(addresses::Addresses::new(
                unified_mount,
                &discovery.proc,
            )));
            collectors.push(Box::new(foreign_stats::ForeignStats::new(
                hierarchy.clone(),
                kept_files,
            )));
        }
        collectors.push(Box::new(probes::ProbeTracking));
        for status in probes.status() {
            collectors.push(Box::new(probes::ProbeMaps::new(status.name)));
        }
        collectors.push(Box::new(probes::ProbeState));
        collectors.push(Box::new(images::Images::new(manager)));
        collectors.push(Box::new(conntrack::Conntrack::new(&discovery.proc)));
        collectors.push(Box::new(proxies::Proxies::new(&discovery.proc)));
        collectors.push(Box::new(rules::Rules::new()));
        collectors.push(Box::new(probes::PublishedPorts::default()));
        if let Some(m) = &manager_for_ebpf {
            collectors.push(Box::new(portmap_ebpf::PortmapEbpf::new(
                m.net.ebpf_pin_dir(),
            )));
        }
        Self { probes, collectors }
    }

    /// A registry of exactly these collectors (tests of the framework).
    pub fn with(probes: Probes, collectors: Vec<Box<dyn Collector>>) -> Self {
        Self { probes, collectors }
    }

    /// The collectors' names, in the order they run.
    pub fn names(&self) -> Vec<&'static str> {
        self.collectors.iter().map(|c| c.name()).collect()
    }

    /// Runs every collector once and returns the finished snapshot.
    pub fn collect(&mut self) -> Snapshot {
        let mut builder = Builder::new();
        let mut runs = Vec::with_capacity(self.collectors.len());
        for c in &mut self.collectors {
            let started = Instant::now();
            let mut tick = Tick {
                builder: &mut builder,
                probes: &mut self.probes,
            };
            let outcome = c.collect(&mut tick);
            let duration_seconds = started.elapsed().as_secs_f64();
            let error = match outcome {
                Ok(Collected::Done) => None,
                Ok(Collected::NotPresent) => {
                    debug!(collector = c.name(), "source not present");
                    None
                }
                Err(e) => {
                    warn!(collector = c.name(), error = %e, "collection failed");
                    Some(e.to_string())
                }
            };
            runs.push(CollectorRun {
                name: c.name(),
                duration_seconds,
                success: error.is_none(),
                error,
            });
        }
        builder.snapshot.collectors = runs;
        let snap = builder.finish();
        debug!(
            containers = snap.containers.len(),
            other_cgroups = snap.other_cgroups.len(),
            "snapshot"
        );
        snap
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::model::{Container, Engine, Status};

    fn root() -> TrackedRoot {
        TrackedRoot::fixture()
    }

    struct Failing;
    impl Collector for Failing {
        fn name(&self) -> &'static str {
            "failing"
        }
        fn collect(&mut self, _: &mut Tick<'_>) -> Result<Collected, CollectError> {
            Err(CollectError::Runtime(RuntimeError::NotFound {
                reference: "the source".into(),
            }))
        }
    }

    /// Adds one container with a cgroup, and that cgroup plus a foreign one.
    struct Fake;
    impl Collector for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
            let mut c = crate::model::fixture::snapshot().containers.remove(0);
            c.syscalls.clear();
            c.cgroup_id = Some(7);
            tick.builder.snapshot.containers.push(c);
            for (id, path) in [(7, "/berth/a"), (8, "/berth/other")] {
                tick.builder.cgroups.insert(
                    id,
                    CgroupSample {
                        id,
                        path: path.into(),
                        syscalls: vec![crate::model::SyscallCount {
                            nr: 0,
                            name: "read".into(),
                            count: id,
                            latency_buckets: vec![],
                            latency_sum_ns: 0,
                        }],
                        net: vec![],
                    },
                );
            }
            Ok(Collected::Done)
        }
    }

    #[test]
    fn a_failing_collector_is_named_and_the_others_still_run() {
        let mut r = Registry::with(
            Probes::disabled(&root()),
            vec![
                Box::new(Failing),
                Box::new(probes::ProbeMaps::new("syscalls")),
                Box::new(Fake),
            ],
        );
        assert_eq!(r.names(), ["failing", "syscalls", "fake"]);
        let snap = r.collect();
        let runs: Vec<(&str, bool)> = snap
            .collectors
            .iter()
            .map(|c| (c.name, c.success))
            .collect();
        assert_eq!(
            runs,
            [("failing", false), ("syscalls", true), ("fake", true)]
        );
        assert!(
            snap.collectors[0]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("the source"))
        );
        // A disabled probe is "not present", not a failure.
        assert!(snap.collectors[1].error.is_none());
        assert_eq!(snap.containers.len(), 1);
    }

    #[test]
    fn host_paths_come_from_the_discovery_config_and_discovery_can_be_turned_off() {
        let proc = tempfile::tempdir().unwrap();
        let nf = proc.path().join("sys/net/netfilter");
        std::fs::create_dir_all(&nf).unwrap();
        std::fs::write(nf.join("nf_conntrack_count"), "4242\n").unwrap();
        std::fs::write(nf.join("nf_conntrack_max"), "65536\n").unwrap();
        let mut discovery = DiscoveryConfig {
            proc: proc.path().to_owned(),
            enabled: false,
            ..Default::default()
        };
        let registry = |d: &DiscoveryConfig| {
            Registry::new(
                Probes::disabled(&root()),
                root(),
                &Hierarchy {
                    mode: crate::cgroup::CgroupMode::Unified,
                    unified_mount: "/nonexistent".into(),
                    v1: Vec::new(),
                },
                None,
                Vec::new(),
                d,
                1024,
            )
        };
        let mut r = registry(&discovery);
        assert!(!r.names().contains(&"foreign"), "{:?}", r.names());
        let snap = r.collect();
        let ct = snap
            .conntrack
            .expect("conntrack read from the configured procfs");
        assert_eq!((ct.entries, ct.max), (4242, 65536));
        discovery.enabled = true;
        assert!(registry(&discovery).names().contains(&"foreign"));
    }

    #[test]
    fn cgroup_samples_join_their_container_and_the_rest_stay_visible() {
        let mut r = Registry::with(Probes::disabled(&root()), vec![Box::new(Fake)]);
        let snap = r.collect();
        let c: &Container = &snap.containers[0];
        assert_eq!((c.engine, c.status), (Engine::Berth, Status::Running));
        assert_eq!(c.syscalls[0].count, 7, "its cgroup's probe data moved in");
        assert_eq!(snap.other_cgroups.len(), 1);
        assert_eq!(snap.other_cgroups[0].path, "/berth/other");
        assert_eq!(snap.cgroups().len(), 2);
    }
}
