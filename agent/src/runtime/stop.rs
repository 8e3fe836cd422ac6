//! `stop`: SIGTERM, then SIGKILL after a timeout, as `docker stop -t`; and the two steps
//! `kill` and `rm` share with it (mark the stop as requested, wait for the exit).

use std::time::{Duration, Instant};

use tracing::info;

use super::{ContainerView, Manager, error::RuntimeError, store::ContainerRecord};
use crate::model::Status;

impl Manager {
    /// SIGTERM, then SIGKILL after `timeout`, as `docker stop -t`. A container whose shim
    /// was lost is signalled through the runtime all the same; a container that outlives
    /// SIGKILL is an error, not a silent success.
    pub fn stop(&self, reference: &str, timeout: Duration) -> Result<ContainerView, RuntimeError> {
        let _ops = self.ops.lock().expect("lock");
        let r = self.resolve(reference)?;
        let r = self.mark_stopping(&r)?;
        // A shim that is starting the container (or between restarts) has not said "running"
        // yet: wait until it does, or exits now that the stop is requested, so a container
        // started a moment ago is not left running by a stop that returned.
        self.settle(&r);
        if self.view(&r).status == Status::Running {
            let _ = self.runtime.kill(&r.id, "TERM");
            if !self.wait_exit(&r.id, timeout) {
                let _ = self.runtime.kill(&r.id, "KILL");
                if !self.wait_exit(&r.id, Duration::from_secs(10)) {
                    return Err(RuntimeError::Shim {
                        container: r.id.clone(),
                        reason: "still running 10 s after SIGKILL".into(),
                    });
                }
            }
            // Without its shim nobody else records the exit.
            self.settle_lost_shim(&r)?;
            // The shim records the exit, then leaves (no restart: the stop is requested); until
            // it has, the container would read as restarting and `rm` would refuse it.
            self.settle(&r);
        }
        info!(container = %r.id, "stopped");
        Ok(self.view(&r))
    }

    /// Waits up to 5 s while the container reads as restarting (its shim alive, the container
    /// not running): a start or an exit in progress.
    fn settle(&self, r: &ContainerRecord) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.view(r).status == Status::Restarting && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(super) fn wait_exit(&self, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.state_of(id);
            if !s.running {
                return true;
            }
            if !self.shim_alive(id, s.shim_pid) {
                // Shim lost: the runtime says when the container has stopped.
                return self
                    .wait_runtime_exit(id, deadline.saturating_duration_since(Instant::now()));
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(super) fn mark_stopping(
        &self,
        record: &ContainerRecord,
    ) -> Result<ContainerRecord, RuntimeError> {
        let mut r = record.clone();
        std::sync::Arc::make_mut(&mut r.spec).stop_requested = true;
        self.store.save(&r)?;
        self.containers
            .write()
            .expect("lock")
            .insert(r.id.clone(), r.clone());
        Ok(r)
    }
}
