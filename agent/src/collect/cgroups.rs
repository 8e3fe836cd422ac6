//! `cgroups`: walks berth's tracked cgroup subtree (cgroup v2, or the unified hierarchy in
//! hybrid mode) and records every cgroup's v2 id and path; the probes then keep only the
//! counters of these live cgroups. The subtree's directories are watched through inotify, so
//! a tick at rest lists none of them.

use super::{CollectError, Collected, Collector, Tick};
use crate::{
    cgroup::{TrackedRoot, TrackedWalk},
    model::CgroupSample,
};

pub struct Cgroups {
    root: TrackedRoot,
    /// The subtree's directories as the last walk found them, with their watches.
    walked: TrackedWalk,
}

impl Cgroups {
    pub fn new(root: TrackedRoot) -> Self {
        Self {
            root,
            walked: TrackedWalk::default(),
        }
    }
}

impl Collector for Cgroups {
    fn name(&self) -> &'static str {
        "cgroups"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        for (id, path) in self.root.walk(&mut self.walked) {
            tick.builder.cgroups.insert(
                id,
                CgroupSample {
                    id,
                    path,
                    syscalls: Vec::new(),
                    net: Vec::new(),
                },
            );
        }
        Ok(Collected::Done)
    }
}
