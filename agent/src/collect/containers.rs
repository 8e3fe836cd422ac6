//! `containers`: berth's own containers from its store (records in memory, the shims'
//! `state.json`, liveness of each shim from procfs) and, while running, their cgroup usage
//! (cgroupfs, stat files kept open: `cgroup::reader`). Each becomes one [`Container`] of engine `berth`.

use std::{collections::BTreeMap, sync::Arc};

use super::{CollectError, Collected, Collector, Tick};
use crate::{
    cgroup::reader::StatsCache,
    model::{Container, Engine, Status},
    runtime::{ContainerView, Manager},
};

pub struct Containers {
    manager: Option<Arc<Manager>>,
    /// The running containers' cgroup stat files, kept open between ticks.
    stats: Option<StatsCache>,
}

impl Containers {
    /// `kept_files`: how many cgroup stat files may stay open between ticks.
    pub fn new(manager: Option<Arc<Manager>>, kept_files: usize) -> Self {
        let stats = manager.as_ref().map(|m| m.stats_cache(kept_files));
        Self { manager, stats }
    }
}

impl Collector for Containers {
    fn name(&self) -> &'static str {
        "containers"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let (Some(m), Some(cache)) = (&self.manager, &mut self.stats) else {
            return Ok(Collected::NotPresent);
        };
        for (view, stats) in m.observe(cache) {
            tick.builder
                .snapshot
                .containers
                .push(container(view, stats));
        }
        Ok(Collected::Done)
    }
}

/// The model's record of one of berth's containers.
fn container(view: ContainerView, stats: Option<crate::model::ContainerStats>) -> Container {
    let status = view.status;
    let r = view.record;
    Container {
        engine: Engine::Berth,
        id: r.id,
        name: r.name,
        image: r.image,
        labels: BTreeMap::new(),
        cgroup: r.cgroup,
        cgroup_id: view.cgroup_id,
        status,
        state: view.state,
        created_at: r.created_at,
        limits: r.limits,
        stats: stats.filter(|_| status == Status::Running),
        network: r.network,
        conntrack_entries: None,
        port_mapping: Default::default(),
        log_path: Some(view.log_path),
        syscalls: Vec::new(),
        net: Vec::new(),
        berth: Some(r.spec),
    }
}
