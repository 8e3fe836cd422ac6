//! The reaper: a small thread of the agent that finishes what container exits leave to do.
//! `--rm` containers are removed once they have exited ([`AUTO_REMOVE_GRACE`] after the exit,
//! so an attached `berth run --rm` can remove the container itself and read its exit code in
//! the same call); containers whose shim was lost (killed) and that have since stopped get
//! their exit recorded and their runtime state deleted. Recovery at start-up does the same for
//! what happened while the agent was down ([`super::recover`]).
//!
//! A lost shim is told apart from an exited container by asking the OCI runtime
//! ([`Manager::running_per_runtime`]): `state.json` says running, the shim is gone, and
//! `runc state` says whether the container's init still runs.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use super::{
    Manager,
    error::RuntimeError,
    store::{self, ContainerRecord, Phase},
};
use crate::model::Status;

/// How long an exited `--rm` container stays before the reaper removes it: time for an
/// attached `berth run --rm`, whose log stream ends when a snapshot shows the exit, to remove
/// it itself (and read the exit code in that call).
pub const AUTO_REMOVE_GRACE: Duration = Duration::from_secs(2);

/// What a reaper pass started from and left behind.
#[derive(Debug, Default)]
struct Pass {
    /// The shim watch's epoch (`None`: it cannot tell; the next pass looks at everything).
    epoch: Option<u64>,
    /// Containers known.
    count: usize,
    /// Some container needs another look whatever happens.
    waiting: bool,
}

/// How often the reaper looks.
const REAP_INTERVAL: Duration = Duration::from_millis(250);

impl Manager {
    /// Starts the reaper thread; it stops once the manager is dropped.
    pub fn start_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("berth-reaper".into())
            .spawn(move || {
                let mut last = Pass::default();
                loop {
                    std::thread::sleep(REAP_INTERVAL);
                    let Some(m) = weak.upgrade() else { return };
                    m.reap(AUTO_REMOVE_GRACE, &mut last);
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the reaper: --rm containers stay after they exit");
        }
    }

    /// One pass: records the exit of containers whose shim was lost and which have stopped
    /// since, then removes `--rm` containers that exited at least `grace` ago.
    ///
    /// It runs four times a second, so at rest it costs one `epoll_wait` (the watch's
    /// refresh, [`super::watch`]) and nothing else: when the watch has taken in nothing since
    /// the `last` pass, the container count is the same and that pass left nothing waiting
    /// (an exited `--rm` container within its grace, a lost shim whose container runs), no
    /// container can need anything. Otherwise each container's state and shim are lookups in
    /// memory while unchanged; no copy of its record; an exited one that is not `--rm` is left
    /// at that.
    fn reap(&self, grace: Duration, last: &mut Pass) {
        self.watch.refresh();
        let epoch = self.watch.epoch();
        let count = self.containers.read().expect("lock").len();
        if epoch.is_some() && epoch == last.epoch && count == last.count && !last.waiting {
            return;
        }
        *last = Pass {
            epoch,
            count,
            waiting: false,
        };
        let watched: Vec<(String, bool)> = self
            .containers
            .read()
            .expect("lock")
            .values()
            .filter(|r| r.spec.phase == Phase::Created)
            .map(|r| (r.id.clone(), r.spec.auto_remove))
            .collect();
        for (id, auto_remove) in watched {
            let mut state = self.known_state(&id);
            if state.running {
                if self.known_alive(&id, state.shim_pid) {
                    continue;
                }
                if self.running_per_runtime(&id).is_some() {
                    // A lost shim: no event tells when the container stops.
                    last.waiting = true;
                    continue;
                }
                let Some(r) = self.record(&id) else { continue };
                {
                    let _ops = self.ops.lock().expect("lock");
                    if let Err(e) = self.settle_lost_shim(&r) {
                        last.waiting = true;
                        warn!(container = %id, error = %e, "recording the exit failed");
                    }
                }
                if !auto_remove {
                    continue;
                }
                // Just rewritten (the exit recorded).
                state = self.state_of(&id);
            }
            if !auto_remove {
                continue;
            }
            let since_exit = state
                .finished_at
                .map_or(f64::INFINITY, |t| store::now_secs() - t);
            if since_exit < grace.as_secs_f64() {
                last.waiting = true;
                continue;
            }
            let Some(r) = self.record(&id) else { continue };
            if self.status(&r, &mut state) == Status::Exited {
                match self.remove(&id, false) {
                    Ok(_) => info!(container = %id, name = %r.name, "removed (--rm)"),
                    // Gone meanwhile (`rm`, or the client of `run --rm` was first).
                    Err(RuntimeError::NotFound { .. }) => {}
                    Err(e) => {
                        last.waiting = true;
                        warn!(container = %id, error = %e, "--rm removal failed")
                    }
                }
            }
        }
    }

    /// A copy of one record; `None` once it is removed.
    fn record(&self, id: &str) -> Option<ContainerRecord> {
        self.containers.read().expect("lock").get(id).cloned()
    }

    /// The host pid of the container's init while the OCI runtime reports it running (or
    /// created or paused); `None` when it has stopped or the runtime does not know it.
    pub(super) fn running_per_runtime(&self, id: &str) -> Option<u32> {
        self.runtime
            .state(id)
            .filter(|s| matches!(s.status.as_str(), "running" | "created" | "paused"))
            .and_then(|s| u32::try_from(s.pid).ok())
            .filter(|&pid| pid > 0)
    }

    /// Whether the container's shim is gone while its `state.json` still says running.
    pub(super) fn shim_lost(&self, id: &str) -> bool {
        let state = self.state_of(id);
        state.running && !self.shim_alive(id, state.shim_pid)
    }

    /// Waits until a container whose shim is lost has stopped per the runtime.
    pub(super) fn wait_runtime_exit(&self, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.running_per_runtime(id).is_some() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Records the exit of a container whose shim was lost, once the runtime says it has
    /// stopped: runtime state deleted (and with it the cgroups), `state.json` not running.
    /// Its exit status is unknown: the init was no child of a berth shim when it exited.
    /// Nothing happens while it still runs.
    pub(super) fn settle_lost_shim(&self, record: &ContainerRecord) -> Result<(), RuntimeError> {
        if !self.shim_lost(&record.id) || self.running_per_runtime(&record.id).is_some() {
            return Ok(());
        }
        let d = self.store.dir(&record.id);
        let mut state = self.state_of(&record.id);
        if let Err(e) = self.runtime.delete(&record.id) {
            debug!(container = %record.id, error = %e, "runtime delete after a lost shim");
        }
        state.running = false;
        state.pid = None;
        state.finished_at = Some(store::now_secs());
        state.exit_code = None;
        state.error = Some(format!(
            "shim lost: the shim (pid {}) exited before the container; its exit status is \
             unknown",
            state.shim_pid
        ));
        store::write_json(&d.state(), &state)?;
        self.watch.invalidate(&record.id);
        info!(container = %record.id, "recorded the exit of a container whose shim was lost");
        Ok(())
    }
}
