//! `update`: change a container's limits; a running container's cgroups get them at once.

use super::{ContainerView, Manager, error::RuntimeError};
use crate::{cgroup::limits::Limits, model::Status};

impl Manager {
    /// Changes limits; applied at once to a running container's cgroups.
    pub fn update(&self, reference: &str, update: &Limits) -> Result<ContainerView, RuntimeError> {
        let _ops = self.ops.lock().expect("lock");
        let mut r = self.resolve(reference)?;
        let merged = r.limits.merged(update);
        merged.validate(&self.host)?;
        if self.view(&r).status == Status::Running {
            self.cgroup(&r)
                .apply(&merged.with_swap_default(&self.host))
                .map_err(|e| RuntimeError::ApplyLimits {
                    container: r.name.clone(),
                    source: Box::new(e),
                })?;
        }
        r.limits = merged;
        self.store.save(&r)?;
        self.limits_version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.containers
            .write()
            .expect("lock")
            .insert(r.id.clone(), r.clone());
        Ok(self.view(&r))
    }
}
