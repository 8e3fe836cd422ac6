//! `rm`: remove a container (killing it first with force), and the teardown every undo path
//! shares: runtime state, overlay, network, cgroups and store directory, each step idempotent.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{
    ContainerView, Manager,
    error::RuntimeError,
    mount::unmount,
    store::{ContainerRecord, Phase},
};
use crate::model::Status;

impl Manager {
    /// Removes a container; a running (or restarting) one only with `force`, killed first.
    pub fn remove(&self, reference: &str, force: bool) -> Result<ContainerView, RuntimeError> {
        let _ops = self.ops.lock().expect("lock");
        let r = self.resolve(reference)?;
        let view = self.view(&r);
        if view.status.is_up() && !force {
            return Err(RuntimeError::Running {
                container: r.name.clone(),
            });
        }
        let mut r = r;
        let spec = std::sync::Arc::make_mut(&mut r.spec);
        spec.phase = Phase::Removing;
        spec.stop_requested = true;
        self.store.save(&r)?;
        if view.status == Status::Running {
            let _ = self.runtime.kill(&r.id, "KILL");
            self.wait_exit(&r.id, Duration::from_secs(10));
        }
        self.teardown(&r);
        self.containers.write().expect("lock").remove(&r.id);
        info!(container = %r.id, "removed");
        Ok(view)
    }

    /// Removes everything a container has on the host: runtime state (kills it), overlay,
    /// cgroups in every hierarchy, its store directory. Idempotent; logs what it cannot undo.
    pub(super) fn teardown(&self, record: &ContainerRecord) {
        let mut r = record.clone();
        std::sync::Arc::make_mut(&mut r.spec).stop_requested = true;
        let _ = self.store.save(&r);
        if let Err(e) = self.runtime.delete(&record.id) {
            warn!(container = %record.id, error = %e, "runtime delete failed");
        }
        let d = self.store.dir(&record.id);
        // Let the shim see the exit and leave before its directory goes.
        let state = self.state_of(&record.id);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shim_alive(&record.id, state.shim_pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        unmount(&d.rootfs());
        self.net.detach(&record.id);
        if let Err(e) = self.cgroup(record).remove() {
            warn!(container = %record.id, error = %e, "cgroup removal failed");
        }
        if let Err(e) = self.store.remove_dir(&record.id) {
            warn!(container = %record.id, error = %e, "store removal failed");
        }
        self.watch.forget(&record.id);
    }

    /// Removes the bridge and port-mapping tables when no container is left (agent shutdown).
    pub fn teardown_network_if_unused(&self) -> bool {
        if !self.containers.read().expect("lock").is_empty() {
            return false;
        }
        self.net.teardown();
        true
    }
}
