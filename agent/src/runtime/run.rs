//! `run`: create and start a container. The record is written first (phase `Creating`), then
//! the overlay, the network, the bundle and the shim; once the shim reports the container
//! started the record moves to `Created`. Any failure undoes every step ([`Manager::teardown`]).

use std::{
    fs,
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use tracing::{info, warn};

use super::{
    ContainerView, Manager, RunRequest, bundle,
    error::RuntimeError,
    mount::mount_overlay,
    shim,
    store::{self, ContainerDir, ContainerRecord, Phase},
};
use crate::net::NetworkMode;

impl Manager {
    /// Creates and starts a container; returns once it runs (or with the reason it does not).
    pub fn run(&self, req: RunRequest) -> Result<ContainerView, RuntimeError> {
        let _ops = self.ops.lock().expect("lock");
        let record = self.prepare(req)?;
        let d = self.store.create(&record)?;
        info!(container = %record.id, name = %record.name, image = %record.image, "creating");
        match self.start_shim(&record, &d) {
            Ok(()) => {
                let mut record = record;
                record.spec.phase = Phase::Created;
                self.store.save(&record)?;
                self.containers
                    .write()
                    .expect("lock")
                    .insert(record.id.clone(), record.clone());
                info!(container = %record.id, "running");
                Ok(self.view(&record))
            }
            Err(e) => {
                warn!(container = %record.id, error = %e, "start failed; undoing");
                self.teardown(&record);
                Err(e)
            }
        }
    }

    /// Overlay, bundle, runtime.json, then the shim; waits for its `ok`/`err` report.
    pub(super) fn start_shim(
        &self,
        record: &ContainerRecord,
        d: &ContainerDir,
    ) -> Result<(), RuntimeError> {
        let t0 = Instant::now();
        mount_overlay(&record.spec.lower, d)?;
        let t_overlay = t0.elapsed();
        self.net.attach(&record.id, &record.network)?;
        let t_net = t0.elapsed();
        let netns =
            (record.network.mode != NetworkMode::Host).then(|| self.net.netns_path(&record.id));
        let (uid, gid) = record
            .spec
            .user
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
            .unwrap_or((0, 0));
        let limits = record.limits.with_swap_default(&self.host);
        let spec = bundle::spec(record, &limits, uid, gid, netns.as_deref())?;
        bundle::write(&d.bundle(), &spec)?;
        store::write_json(&d.dir.join(shim::RUNTIME_FILE), &self.runtime)?;
        let t_bundle = t0.elapsed();
        let r = spawn_shim(&d.dir).map_err(|reason| RuntimeError::StartFailed {
            container: record.id.clone(),
            reason,
        });
        tracing::debug!(
            container = %record.id,
            overlay = ?t_overlay,
            network = ?(t_net - t_overlay),
            bundle = ?(t_bundle - t_net),
            shim = ?(t0.elapsed() - t_bundle),
            "start timings"
        );
        r
    }
}

/// Starts `berth shim DIR` in a new session and reads its one-line report.
fn spawn_shim(dir: &Path) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding berth's own binary: {e}"))?;
    let shim_log = fs::File::create(dir.join("shim.log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    // No pre_exec: std can then use posix_spawn (vfork), much cheaper than fork for an agent
    // with a large address space; the shim calls setsid itself after its own fork.
    cmd.arg("shim")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(shim_log);
    let mut child = cmd.spawn().map_err(|e| format!("starting the shim: {e}"))?;
    let mut out = String::new();
    let mut pipe = child.stdout.take().expect("piped");
    // The shim's first process exits at once; its fork writes the report and closes the pipe.
    let _ = child.wait();
    let _ = pipe.read_to_string(&mut out);
    let line = out.lines().next().unwrap_or("");
    if line.starts_with("ok ") {
        Ok(())
    } else if let Some(e) = line.strip_prefix("err ") {
        Err(e.to_owned())
    } else {
        let log = fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
        Err(format!("the shim exited without a report: {}", log.trim()))
    }
}
