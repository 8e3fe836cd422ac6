//! Recovery at agent start: complete or undo what a crash interrupted (phases `Creating` and
//! `Removing`), remove directories without a record, re-adopt containers whose shim still
//! runs (or, when the shim was lost and the container runs on, watch them with a new shim),
//! remove `--rm` containers that exited while the agent was down, restart those whose policy
//! asks for it, and reconcile the network with what is left.

use tracing::{info, warn};

use super::{
    Manager,
    error::RuntimeError,
    mount::unmount,
    run::spawn_shim,
    store::{self, ContainerRecord, Phase},
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
                Phase::Created => self.recover_created(&r)?,
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

    /// A container handed to a shim: re-adopt it (its shim runs, or a new watcher shim when
    /// the shim was lost and the runtime says it still runs), record an exit nobody recorded,
    /// remove it if it is `--rm` and has exited, or restart it per its policy.
    fn recover_created(&self, r: &ContainerRecord) -> Result<(), RuntimeError> {
        let d = self.store.dir(&r.id);
        let mut state = self.state_of(&r.id);
        let mut alive = self.shim_alive(&r.id, state.shim_pid);
        if !alive && state.running {
            if self.running_per_runtime(&r.id).is_some() {
                // The shim was killed; the container runs on: watch it with a new shim.
                match spawn_shim(&d.dir, &r.id, true) {
                    Ok(()) => {
                        info!(container = %r.id, name = %r.name, "shim lost; re-adopted with a new shim");
                        alive = true;
                    }
                    Err(e) => {
                        warn!(container = %r.id, error = %e, "shim lost; re-adoption failed: status shows the container as the runtime reports it");
                    }
                }
            } else {
                // The shim died with the container (or the host rebooted).
                warn!(container = %r.id, "shim lost; the container is stopped");
                self.settle_lost_shim(r)?;
            }
            state = self.state_of(&r.id);
        }
        if r.spec.auto_remove && !alive && !state.running {
            info!(container = %r.id, name = %r.name, "exited while the agent was down: removing (--rm)");
            self.teardown(r);
            return Ok(());
        }
        self.containers
            .write()
            .expect("lock")
            .insert(r.id.clone(), r.clone());
        let code = state.exit_code.unwrap_or(255);
        if !alive
            && !state.running
            && !r.spec.stop_requested
            && r.spec.restart.should_restart(code, state.restart_count)
        {
            info!(container = %r.id, policy = %r.spec.restart, "restarting per policy");
            state.restart_count += 1;
            store::write_json(&d.state(), &state)?;
            self.watch.invalidate(&r.id);
            if let Err(e) = self.start_shim(r, &d) {
                warn!(container = %r.id, error = %e, "restart failed");
            }
        } else if alive {
            info!(container = %r.id, name = %r.name, "re-adopted");
        }
        Ok(())
    }
}
