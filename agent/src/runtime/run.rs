//! `run`: create and start a container. The record is written first (phase `Creating`), then
//! the overlay, the network, the bundle and the shim; once the shim reports the container
//! started the record moves to `Created`. Any failure undoes every step ([`Manager::teardown`]).

use std::{
    fs,
    io::Read as _,
    os::{
        fd::AsRawFd as _,
        unix::{fs::OpenOptionsExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
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
                std::sync::Arc::make_mut(&mut record.spec).phase = Phase::Created;
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
        let r = spawn_shim(&d.dir, &record.id, false);
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

/// berth's own binary as it was when the agent started, held open: an upgrade that replaces
/// (renames over, or deletes and recreates) the file on disk leaves this inode intact, so
/// shims keep being started from the version of the agent that talks to them.
static OWN_BINARY: OnceLock<Result<fs::File, String>> = OnceLock::new();

/// Opens (once) the agent's own executable; call at start-up, before anyone can replace it.
pub(super) fn pin_own_binary() -> Result<(), String> {
    OWN_BINARY
        .get_or_init(|| {
            fs::File::open("/proc/self/exe")
                .map_err(|e| format!("opening berth's own binary (/proc/self/exe): {e}"))
        })
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

/// The path a child can exec the pinned binary by: `/proc/self/fd/N` resolves in the child,
/// whose descriptor table is a copy of the agent's (the kernel opens the file before it
/// closes the close-on-exec descriptors).
fn own_binary_path() -> Result<PathBuf, String> {
    pin_own_binary()?;
    let f = OWN_BINARY
        .get()
        .and_then(|r| r.as_ref().ok())
        .expect("pinned above");
    Ok(PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())))
}

/// Starts `berth shim [--adopt] DIR` in a new session and reads its one-line report. A shim
/// that cannot be started is the host's failure ([`RuntimeError::Shim`]); a container the
/// shim could not start is reported as [`RuntimeError::StartFailed`] with its reason.
pub(super) fn spawn_shim(dir: &Path, id: &str, adopt: bool) -> Result<(), RuntimeError> {
    let host = |reason: String| RuntimeError::Shim {
        container: id.to_owned(),
        reason,
    };
    let exe = own_binary_path().map_err(host)?;
    let shim_log = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("shim.log"))
        .map_err(|e| host(format!("creating {}: {e}", dir.join("shim.log").display())))?;
    let mut cmd = Command::new(exe);
    // No pre_exec: std can then use posix_spawn (vfork), much cheaper than fork for an agent
    // with a large address space; the shim calls setsid itself after its own fork.
    cmd.arg0("berth").arg("shim");
    if adopt {
        cmd.arg("--adopt");
    }
    cmd.arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(shim_log);
    let mut child = cmd
        .spawn()
        .map_err(|e| host(format!("starting the shim: {e}")))?;
    let mut out = String::new();
    let mut pipe = child.stdout.take().expect("piped");
    // The shim's first process exits at once; its fork writes the report and closes the pipe.
    let _ = child.wait();
    let _ = pipe.read_to_string(&mut out);
    let line = out.lines().next().unwrap_or("");
    if line.starts_with("ok ") {
        Ok(())
    } else if let Some(e) = line.strip_prefix("err ") {
        Err(RuntimeError::StartFailed {
            container: id.to_owned(),
            reason: e.to_owned(),
        })
    } else {
        let log = fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
        Err(host(format!(
            "the shim exited without a report: {}",
            log.trim()
        )))
    }
}
