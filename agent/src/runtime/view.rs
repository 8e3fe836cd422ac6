//! Reading containers: a record plus the shim's state becomes a [`ContainerView`] with its
//! status; lookup by id, name or id prefix; listings, stats and samples for the collector.
//! Nothing here changes the host.

use std::path::PathBuf;

use serde::Serialize;

use super::{
    Manager,
    error::RuntimeError,
    store::{ContainerRecord, Phase, ShimState},
};
use crate::{
    cgroup::{limits::ContainerCgroup, reader::StatsCache, stats::ContainerStats},
    model::Status,
};

/// A container as the API and CLI show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ContainerView {
    #[serde(flatten)]
    pub record: ContainerRecord,
    /// `creating`, `running`, `restarting`, `exited`, `removing`.
    pub status: Status,
    pub state: ShimState,
    #[schema(value_type = String)]
    pub log_path: PathBuf,
    /// v2 cgroup id, what the probes key on (while the cgroup exists).
    pub cgroup_id: Option<u64>,
}

impl Manager {
    pub(super) fn cgroup(&self, record: &ContainerRecord) -> ContainerCgroup {
        ContainerCgroup::new(&self.hierarchy, &record.cgroup)
    }

    /// What the shim last wrote; the default (not running) when there is nothing to read.
    /// Fresh: the watch takes in what changed first (one `epoll_wait`, [`super::watch`]).
    pub(super) fn state_of(&self, id: &str) -> ShimState {
        self.watch.refresh();
        self.known_state(id)
    }

    /// [`Self::state_of`] as of the last refresh of the watch: a lookup in memory while the
    /// file has not changed. For passes over every container, which refresh once first.
    pub(super) fn known_state(&self, id: &str) -> ShimState {
        self.watch.state(id, &self.store.dir(id).state())
    }

    /// Whether `shim_pid` is the live shim of container `id`, fresh ([`super::watch`]).
    pub(super) fn shim_alive(&self, id: &str, shim_pid: u32) -> bool {
        self.watch.refresh();
        self.known_alive(id, shim_pid)
    }

    /// [`Self::shim_alive`] as of the last refresh of the watch.
    pub(super) fn known_alive(&self, id: &str, shim_pid: u32) -> bool {
        self.watch.alive(id, shim_pid, &self.store.dir(id).dir)
    }

    /// The container as it is now (the watch refreshed first).
    pub(super) fn view(&self, record: &ContainerRecord) -> ContainerView {
        self.watch.refresh();
        self.known_view(record.clone())
    }

    /// The container as of the last refresh of the watch.
    fn known_view(&self, record: ContainerRecord) -> ContainerView {
        let mut state = self.known_state(&record.id);
        let status = self.status(&record, &mut state);
        ContainerView {
            cgroup_id: self
                .watch
                .cgroup_id(&record.id, || self.cgroup(&record).v2_id()),
            status,
            state,
            log_path: self.store.dir(&record.id).log(),
            record,
        }
    }

    /// The status of a container whose shim last wrote `state`; a lost shim is explained in
    /// `state.error` (and, when the container has stopped without it, `state` says so). The
    /// shim's liveness is as of the last refresh of the watch (the caller's).
    pub(super) fn status(&self, record: &ContainerRecord, state: &mut ShimState) -> Status {
        match record.spec.phase {
            Phase::Creating => return Status::Creating,
            Phase::Removing => return Status::Removing,
            Phase::Created => {}
        }
        let alive = self.known_alive(&record.id, state.shim_pid);
        match (state.running, alive) {
            (true, true) => Status::Running,
            (false, true) => Status::Restarting,
            (false, false) => Status::Exited,
            // The shim is gone (killed) without recording an exit: the runtime knows whether
            // the container still runs.
            (true, false) => match self.running_per_runtime(&record.id) {
                Some(pid) => {
                    state.pid = Some(pid);
                    state.error = Some(format!(
                        "shim lost: the shim (pid {}) is gone while {} reports the container \
                         running; stop, kill and rm act through {}, and an agent restart \
                         re-adopts it with a new shim",
                        state.shim_pid, self.runtime.name, self.runtime.name
                    ));
                    Status::Running
                }
                None => {
                    state.running = false;
                    state.pid = None;
                    state.error = Some(format!(
                        "shim lost: the shim (pid {}) exited without recording the \
                         container's exit",
                        state.shim_pid
                    ));
                    Status::Exited
                }
            },
        }
    }

    /// Finds a container by full id, name, or unique id prefix.
    pub fn resolve(&self, reference: &str) -> Result<ContainerRecord, RuntimeError> {
        let containers = self.containers.read().expect("lock");
        if let Some(r) = containers.get(reference) {
            return Ok(r.clone());
        }
        if let Some(r) = containers.values().find(|r| r.name == reference) {
            return Ok(r.clone());
        }
        let matches: Vec<_> = containers
            .values()
            .filter(|r| !reference.is_empty() && r.id.starts_with(reference))
            .collect();
        match matches.as_slice() {
            [r] => Ok((*r).clone()),
            [] => Err(RuntimeError::NotFound {
                reference: reference.to_owned(),
            }),
            _ => Err(RuntimeError::AmbiguousReference {
                reference: reference.to_owned(),
                matches: matches.len(),
            }),
        }
    }

    /// A copy of every record (the lock is held only while copying).
    pub(super) fn records(&self) -> Vec<ContainerRecord> {
        self.containers
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn list(&self, all: bool) -> Vec<ContainerView> {
        let records = self.records();
        // A removed container's entry goes with its teardown; this also drops one a reader
        // cached again while it was being removed. (`records` is sorted by id.)
        self.watch
            .retain(|id| records.binary_search_by(|r| r.id.as_str().cmp(id)).is_ok());
        // One refresh for all: at rest, every view below is a lookup in memory.
        self.watch.refresh();
        let mut views: Vec<ContainerView> = records
            .into_iter()
            .map(|r| self.known_view(r))
            .filter(|v| all || v.status.is_up())
            .collect();
        views.sort_by(|a, b| b.record.created_at.total_cmp(&a.record.created_at));
        views
    }

    pub fn inspect(&self, reference: &str) -> Result<ContainerView, RuntimeError> {
        Ok(self.view(&self.resolve(reference)?))
    }

    /// Every container with, while it runs, its cgroup usage read through `stats` (kept-open
    /// files): what the `containers` collector reads (shim state files, procfs, cgroupfs).
    pub fn observe(&self, stats: &mut StatsCache) -> Vec<(ContainerView, Option<ContainerStats>)> {
        let version = self
            .limits_version
            .load(std::sync::atomic::Ordering::Relaxed);
        let out: Vec<_> = self
            .list(true)
            .into_iter()
            .map(|view| {
                let usage = (view.status == Status::Running)
                    .then(|| {
                        stats
                            .read(&view.record.cgroup, view.cgroup_id, version)
                            .ok()
                    })
                    .flatten();
                (view, usage)
            })
            .collect();
        let read: std::collections::HashSet<(Option<u64>, &str)> = out
            .iter()
            .filter(|(_, usage)| usage.is_some())
            .map(|(v, _)| (v.cgroup_id, v.record.cgroup.trim_matches('/')))
            .collect();
        stats.retain(|id, rel| read.contains(&(id, rel)));
        out
    }

    /// A cache of cgroup stat files for [`Manager::observe`] on this manager's hierarchy,
    /// keeping at most `kept_files` open; an idle container's task count and memory are read
    /// every few ticks ([`StatsCache::following_cpu`]).
    pub fn stats_cache(&self, kept_files: usize) -> StatsCache {
        StatsCache::new(self.hierarchy.clone(), kept_files).following_cpu()
    }

    /// Removes an image from the store, refusing one a container uses.
    pub fn remove_image(&self, reference: &str) -> Result<crate::image::Image, RuntimeError> {
        let image = self.images.get(reference)?;
        if let Some(user) = self.image_in_use(&image.id) {
            return Err(RuntimeError::ImageInUse {
                image: reference.to_owned(),
                container: user,
            });
        }
        Ok(self.images.remove(&image.id)?)
    }

    /// Images in use by containers (`image rm` refuses those).
    pub fn image_in_use(&self, image_id: &str) -> Option<String> {
        self.containers
            .read()
            .expect("lock")
            .values()
            .find(|r| r.spec.image_id.as_deref() == Some(image_id))
            .map(|r| r.name.clone())
    }
}
