//! Reading containers: a record plus the shim's state becomes a [`ContainerView`] with its
//! status; lookup by id, name or id prefix; listings, stats and samples for the collector.
//! Nothing here changes the host.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    Manager,
    error::RuntimeError,
    shim,
    store::{self, ContainerRecord, Phase, ShimState},
};
use crate::{
    cgroup::{limits::ContainerCgroup, stats::ContainerStats},
    model::Status,
    net::NetworkSpec,
};

/// A container as the API and CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerView {
    #[serde(flatten)]
    pub record: ContainerRecord,
    /// `creating`, `running`, `restarting`, `exited`, `removing`.
    pub status: Status,
    pub state: ShimState,
    pub log_path: PathBuf,
    /// v2 cgroup id, what the probes key on (while the cgroup exists).
    pub cgroup_id: Option<u64>,
}

/// One container's sample for the collector.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerSample {
    pub view: ContainerView,
    pub stats: Option<ContainerStats>,
    /// Conntrack entries with the container's address (bridge mode).
    pub conntrack_entries: Option<u64>,
}

impl Manager {
    pub(super) fn cgroup(&self, record: &ContainerRecord) -> ContainerCgroup {
        ContainerCgroup::new(&self.hierarchy, &record.cgroup)
    }

    /// What the shim last wrote; the default (not running) when there is nothing to read.
    pub(super) fn state_of(&self, id: &str) -> ShimState {
        store::read_json(&self.store.dir(id).state())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    pub(super) fn view(&self, record: &ContainerRecord) -> ContainerView {
        let d = self.store.dir(&record.id);
        let state = self.state_of(&record.id);
        let alive = shim::alive(state.shim_pid, &d.dir);
        let status = match record.phase {
            Phase::Creating => Status::Creating,
            Phase::Removing => Status::Removing,
            Phase::Created if state.running && alive => Status::Running,
            Phase::Created if alive => Status::Restarting,
            Phase::Created => Status::Exited,
        };
        ContainerView {
            cgroup_id: self.cgroup(record).v2_id(),
            record: record.clone(),
            status,
            state,
            log_path: d.log(),
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

    pub fn list(&self, all: bool) -> Vec<ContainerView> {
        let records: Vec<ContainerRecord> = self
            .containers
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        let mut views: Vec<ContainerView> = records
            .iter()
            .map(|r| self.view(r))
            .filter(|v| all || v.status.is_up())
            .collect();
        views.sort_by(|a, b| b.record.created_at.total_cmp(&a.record.created_at));
        views
    }

    pub fn inspect(&self, reference: &str) -> Result<ContainerView, RuntimeError> {
        Ok(self.view(&self.resolve(reference)?))
    }

    /// Views, cgroup stats and conntrack entries of every container, for the collector.
    pub fn samples(&self) -> Vec<ContainerSample> {
        let views = self.list(true);
        let conntrack = if views.iter().any(|v| v.record.network.ip.is_some()) {
            crate::net::conntrack::entries_by_ip(Path::new("/proc"))
        } else {
            Default::default()
        };
        views
            .into_iter()
            .map(|view| {
                let stats = (view.status == Status::Running)
                    .then(|| self.cgroup(&view.record).stats().ok())
                    .flatten();
                let conntrack_entries = view
                    .record
                    .network
                    .ip
                    .map(|ip| conntrack.get(&ip).copied().unwrap_or(0));
                ContainerSample {
                    view,
                    stats,
                    conntrack_entries,
                }
            })
            .collect()
    }

    pub fn stats(&self, reference: &str) -> Result<ContainerStats, RuntimeError> {
        let r = self.resolve(reference)?;
        Ok(self.cgroup(&r).stats().unwrap_or_default())
    }

    /// Every published mapping: (container id, name, address, spec).
    pub fn ports(&self) -> Vec<(String, String, NetworkSpec)> {
        self.containers
            .read()
            .expect("lock")
            .values()
            .filter(|r| !r.network.publish.is_empty())
            .map(|r| (r.id.clone(), r.name.clone(), r.network.clone()))
            .collect()
    }

    /// Images in use by containers (`image rm` refuses those).
    pub fn image_in_use(&self, image_id: &str) -> Option<String> {
        self.containers
            .read()
            .expect("lock")
            .values()
            .find(|r| r.image_id.as_deref() == Some(image_id))
            .map(|r| r.name.clone())
    }
}
