//! Recovery at agent start: complete or undo what a crash interrupted (phases `Creating` and
//! `Removing`), remove directories without a record, re-adopt containers whose shim still
//! runs, restart those whose policy asks for it, and reconcile the network with what is left.

use tracing::{info, warn};

use super::{
    Manager,
    error::RuntimeError,
    mount::unmount,
    shim,
    store::{self, Phase},
};

impl Manager {
    /// Completes or undoes what a crash interrupted, re-adopts running containers and
    /// restarts those whose policy asks for it.
    pub(super) fn recover(&self) -> Result<(), RuntimeError> {
        let (records, orphans) = self.store.load_all()?;
        for id in orphans {
            warn!(container = %id, "removing a container directory without a record");
            unmount(&self.store.dir(&id).rootfs());
            let _ = self.runtime.delete(&id);
            self.store.remove_dir(&id)?;
        }
        for r in records {
            match r.spec.phase {
                Phase::Creating | Phase::Removing => {
                    info!(container = %r.id, phase = ?r.spec.phase, "finishing an interrupted change: removing");
                    self.teardown(&r);
                }
                Phase::Created => {
                    let d = self.store.dir(&r.id);
                    let mut state = self.state_of(&r.id);
                    let alive = shim::alive(state.shim_pid, &d.dir);
                    if !alive && state.running {
                        // The shim died with the container running (or the host rebooted).
                        warn!(container = %r.id, "shim lost; the container is stopped");
                        let _ = self.runtime.delete(&r.id);
                        state.running = false;
                        state.pid = None;
                        state.finished_at = Some(store::now_secs());
                        state.error =
                            Some("the shim exited without recording the container's exit".into());
                        store::write_json(&d.state(), &state)?;
                    }
                    self.containers
                        .write()
                        .expect("lock")
                        .insert(r.id.clone(), r.clone());
                    let code = state.exit_code.unwrap_or(255);
                    if !alive
                        && !r.spec.stop_requested
                        && r.spec.restart.should_restart(code, state.restart_count)
                    {
                        info!(container = %r.id, policy = %r.spec.restart, "restarting per policy");
                        state.restart_count += 1;
                        store::write_json(&d.state(), &state)?;
                        if let Err(e) = self.start_shim(&r, &d) {
                            warn!(container = %r.id, error = %e, "restart failed");
                        }
                    } else if alive {
                        info!(container = %r.id, name = %r.name, "re-adopted");
                    }
                }
            }
        }
        let known: std::collections::HashSet<String> = self
            .containers
            .read()
            .expect("lock")
            .keys()
            .cloned()
            .collect();
        self.net.reconcile(&known);
        Ok(())
    }
}
