//! The per-container shim: `berth shim <container-dir>` (hidden), the containerd-shim pattern.
//!
//! The agent starts it; it forks once more, its parent exits and the child starts a new
//! session, so the shim is nobody's child and outlives agent restarts and crashes. It makes itself a child
//! subreaper, so the container's init (double-forked by runc) is re-parented to it and its exact
//! exit status comes from waitpid. It runs `runtime create` + `start` with the container's
//! stdout and stderr on the log file, reports `ok <pid>` or `err <reason>` on its stdout pipe
//! (which the agent reads), then waits; on exit it records the code (128 + signal when
//! killed), the OOM kills of the cgroup, deletes the runtime state (and with it the cgroups),
//! and applies the restart policy unless a stop was requested. `berth shim --adopt DIR` watches
//! a container that outlived its first shim (killed) instead of starting it ([`main`]).
//!
//! The agent starts shims from its own binary held open since start-up, so replacing the file
//! on disk (an upgrade) changes nothing for them ([`super::run`]); a shim of an older version
//! is recognised by its command line ([`alive`]) and adopted like any other.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::{ffi::OsStrExt as _, fs::OpenOptionsExt as _},
    },
    path::Path,
    time::Duration,
};

use super::{
    RuntimeError,
    oci::OciRuntime,
    store::{ContainerDir, ContainerRecord, ShimState, now_secs, read_json, write_json},
};
use crate::cgroup::{Hierarchy, limits::ContainerCgroup};

/// File in the container dir holding the [`OciRuntime`] the shim must use.
pub const RUNTIME_FILE: &str = "runtime.json";

/// Whether `pid` is a live shim for the container directory `dir` (pids get reused: its
/// command line must be `... shim ... DIR`).
pub(super) fn alive(pid: u32, dir: &Path) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.iter().any(|a| *a == b"shim") && args.iter().any(|a| *a == dir.as_os_str().as_bytes())
}

/// Entry point of `berth shim [--adopt] DIR`. Never returns to the caller's main logic.
///
/// With `adopt`, the container already runs (its first shim was lost): the shim takes its
/// init's pid from the runtime and waits for it through a pidfd instead of starting it. That
/// init is not its child, so the exit status of that run is unknown (recorded as such); runs
/// after it (restart policy) are ordinary.
pub fn main(dir: &Path, adopt: bool) -> i32 {
    // SAFETY: called first thing in a single-threaded process.
    match unsafe { libc::fork() } {
        -1 => return 1,
        0 => {}
        _ => return 0, // the agent reaps this parent at once
    }
    // SAFETY: plain syscalls: a new session (no controlling terminal, not in the agent's
    // process group, so signals to the agent's group miss it), then subreaper.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    // SAFETY: fd 1 is the status pipe the agent gave us; we own it from here on.
    let mut status = Some(unsafe { File::from_raw_fd(1) });
    let report = |status: &mut Option<File>, line: &str| {
        if let Some(mut f) = status.take() {
            let _ = writeln!(f, "{line}");
            drop(f);
            if let Ok(null) = File::open("/dev/null") {
                // SAFETY: replace fd 1 (closed above) with /dev/null.
                unsafe { libc::dup2(null.as_raw_fd(), 1) };
            }
        }
    };
    let d = ContainerDir {
        dir: dir.to_owned(),
    };
    let setup = || -> Result<(ContainerRecord, OciRuntime), String> {
        let record: ContainerRecord = read_json(&d.record())
            .map_err(|e| e.to_string())?
            .ok_or("container.json is missing")?;
        let runtime: OciRuntime = read_json(&dir.join(RUNTIME_FILE))
            .map_err(|e| e.to_string())?
            .ok_or("runtime.json is missing")?;
        Ok((record, runtime))
    };
    let (record, runtime) = match setup() {
        Ok(v) => v,
        Err(e) => {
            report(&mut status, &format!("err {e}"));
            return 1;
        }
    };
    // Found after the first report: it is only needed once the container exits.
    let mut cgroup: Option<ContainerCgroup> = None;
    let mut state = read_json::<ShimState>(&d.state())
        .ok()
        .flatten()
        .unwrap_or_default();
    state.shim_pid = std::process::id();
    state.error = None;
    let mut adopted = None;
    if adopt {
        let running = runtime
            .state(&record.id)
            .filter(|s| matches!(s.status.as_str(), "running" | "created" | "paused"))
            .and_then(|s| u32::try_from(s.pid).ok())
            .filter(|&p| p > 0);
        match running {
            Some(pid) => adopted = Some(pid),
            None => {
                report(
                    &mut status,
                    "err the container is not running: nothing to adopt",
                );
                return 1;
            }
        }
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let pid = if let Some(pid) = adopted {
            state.running = true;
            state.pid = Some(pid);
            pid
        } else {
            if state.restart_count > 0 || state.started_at.is_some() {
                // A previous run of this id (a restart, or a shim started again after a
                // crash) may have left runtime state that would make create fail.
                let _ = runtime.delete(&record.id);
            }
            let pid = match start(&runtime, &record, &d) {
                Ok(pid) => pid,
                Err(e) => {
                    state.running = false;
                    state.pid = None;
                    state.error = Some(e.to_string());
                    let _ = write_json(&d.state(), &state);
                    report(&mut status, &format!("err {e}"));
                    let _ = runtime.delete(&record.id);
                    return 1;
                }
            };
            state.running = true;
            state.pid = Some(pid);
            state.started_at = Some(now_secs());
            state.finished_at = None;
            state.exit_code = None;
            state.oom_killed = false;
            pid
        };
        let _ = write_json(&d.state(), &state);
        report(&mut status, &format!("ok {pid}"));
        if cgroup.is_none() {
            cgroup = Hierarchy::detect()
                .ok()
                .map(|h| ContainerCgroup::new(&h, &record.cgroup));
        }

        let code = match adopted.take() {
            Some(pid) => {
                wait_foreign(pid as i32);
                None
            }
            None => Some(wait_for(pid as i32)),
        };
        // Each run gets a fresh cgroup from the runtime: its OOM count is this run's.
        let oom = cgroup
            .as_ref()
            .and_then(|c| c.stats().ok())
            .map_or(0, |s| s.oom_kills);
        let _ = runtime.delete(&record.id);
        state.running = false;
        state.pid = None;
        state.finished_at = Some(now_secs());
        state.exit_code = code;
        state.error = code.is_none().then(|| {
            "exit status unknown: this shim adopted the container after its first shim was \
             lost, so its init was not this shim's child"
                .to_owned()
        });
        state.oom_kills += oom;
        state.oom_killed = oom > 0;
        let _ = write_json(&d.state(), &state);
        // An unknown status counts as a failure for the restart policy.
        let code = code.unwrap_or(255);

        // The agent may have asked for a stop meanwhile: re-read the intent.
        let current: Option<ContainerRecord> = read_json(&d.record()).ok().flatten();
        let Some(current) = current else { return 0 };
        if current.spec.stop_requested
            || !current
                .spec
                .restart
                .should_restart(code, state.restart_count)
        {
            return 0;
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(10));
        state.restart_count += 1;
    }
}

/// create + start; returns the init's host pid.
fn start(
    runtime: &OciRuntime,
    record: &ContainerRecord,
    d: &ContainerDir,
) -> Result<u32, RuntimeError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(d.log())
        .map_err(|source| RuntimeError::Io {
            op: "open",
            path: d.log(),
            source,
        })?;
    let pid_file = d.dir.join("init.pid");
    runtime.create(
        &record.id,
        &d.bundle(),
        &pid_file,
        &log,
        &d.dir.join("runtime.log"),
    )?;
    let pid: u32 = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| RuntimeError::Io {
            op: "read",
            path: pid_file.clone(),
            source: std::io::Error::other("no pid"),
        })?;
    runtime.start(&record.id)?;
    Ok(pid)
}

/// Waits until `pid`, which is not our child, has exited: a pidfd becomes readable then
/// (pidfd_open(2), Linux 5.3); where pidfds are unavailable, /proc is polled.
fn wait_foreign(pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd >= 0 {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, -1) };
            if r == 1 {
                break;
            }
            if r == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        // SAFETY: our own fd.
        unsafe { libc::close(fd) };
        return;
    }
    while Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reaps children until `pid` exits; returns its shell-style exit code.
fn wait_for(pid: i32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on any child; we are their (sub)reaper.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == -1 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // No children left: the init is gone without us seeing it (should not happen).
            return 255;
        }
        if r == pid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            if libc::WIFSIGNALED(status) {
                return 128 + libc::WTERMSIG(status);
            }
        }
    }
}
