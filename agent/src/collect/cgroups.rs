//! `cgroups`: walks berth's tracked cgroup subtree (cgroup v2, or the unified hierarchy in
//! hybrid mode) and records every cgroup's v2 id and path; the probes then keep only the
//! counters of these live cgroups.

use super::{CollectError, Collected, Collector, Tick};
use crate::{
    cgroup::{TrackedRoot, reader::Files},
    model::CgroupSample,
};

pub struct Cgroups {
    root: TrackedRoot,
    /// Each cgroup's `cgroup.stat`, kept open between walks.
    files: Files,
}

impl Cgroups {
    pub fn new(root: TrackedRoot) -> Self {
        Self {
            root,
            files: Files::kept(),
        }
    }
}

impl Collector for Cgroups {
    fn name(&self) -> &'static str {
        "cgroups"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        for (id, path) in self.root.walk(&mut self.files) {
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
