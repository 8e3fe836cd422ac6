//! What the shims say, cached: every collection tick reads the status of every container, and
//! the reaper does four times a second, so reading `state.json` and `/proc/<pid>/cmdline` each
//! time was a third of an idle agent's CPU (issue 14). Here a container's status costs one
//! `statx` and one `poll` while nothing changes.
//!
//! - State: `state.json` is only ever written with [`crate::fsutil::write_atomic`] (temp file +
//!   rename, by the shim and by the agent), so each write puts a new file at the path and its
//!   identity (device, inode, size, mtime and ctime in ns) changes. While the identity is the
//!   one read last, the parsed state is returned as it was; otherwise the file is read again
//!   (identity taken from the open file, so it always matches the bytes read). A miss needs
//!   two writes between two reads that reuse the inode number with the same size within one
//!   timestamp tick; the next write is then seen again.
//! - Liveness: once a shim's pid is confirmed by its command line ([`shim::alive`]), a pidfd
//!   (pidfd_open(2), Linux 5.3) is kept for it; it becomes readable when the process exits
//!   ([`pidfd_open(2)`](https://man7.org/linux/man-pages/man2/pidfd_open.2.html)), and it
//!   cannot be fooled by a reused pid. Where pidfd_open fails, each check reads the command
//!   line as before.
//!
//! Entries of removed containers are dropped ([`ShimWatch::forget`], [`ShimWatch::retain`]).

use std::{
    collections::HashMap,
    fs::{self, File},
    io::Read as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{shim, store::ShimState};

/// What tells one file at a path from the next one written there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    fn of(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// A shim confirmed by its command line, watched through a pidfd.
struct Tracked {
    pid: u32,
    dir: PathBuf,
    pidfd: OwnedFd,
}

#[derive(Default)]
struct Entry {
    state: Option<(FileId, ShimState)>,
    shim: Option<Tracked>,
}

/// The cache, one entry per container id; owned by the [`super::Manager`].
#[derive(Default)]
pub(super) struct ShimWatch {
    entries: Mutex<HashMap<String, Entry>>,
    /// How often a `state.json` was read and parsed (a cache miss).
    reads: AtomicU64,
}

impl ShimWatch {
    /// The state in `path` (container `id`'s `state.json`); the default (not running) when
    /// there is nothing to read or it does not parse, as before the cache.
    pub(super) fn state(&self, id: &str, path: &Path) -> ShimState {
        let current = match fs::metadata(path) {
            Ok(m) => FileId::of(&m),
            Err(_) => {
                if let Some(e) = self.entries.lock().expect("lock").get_mut(id) {
                    e.state = None;
                }
                return ShimState::default();
            }
        };
        if let Some(Entry {
            state: Some((seen, state)),
            ..
        }) = self.entries.lock().expect("lock").get(id)
            && *seen == current
        {
            return state.clone();
        }
        let Some((seen, state)) = self.read(path) else {
            return ShimState::default();
        };
        self.entries
            .lock()
            .expect("lock")
            .entry(id.to_owned())
            .or_default()
            .state = Some((seen, state.clone()));
        state
    }

    /// Reads and parses the file; the identity is the open file's, so it names these bytes.
    fn read(&self, path: &Path) -> Option<(FileId, ShimState)> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let mut f = File::open(path).ok()?;
        let seen = FileId::of(&f.metadata().ok()?);
        let mut bytes = Vec::with_capacity(usize::try_from(seen.size).unwrap_or(0));
        f.read_to_end(&mut bytes).ok()?;
        // A corrupt file reads as the default, as it did uncached; it stays so until rewritten.
        Some((seen, serde_json::from_slice(&bytes).unwrap_or_default()))
    }

    /// Whether `pid` is a live shim for the container directory `dir`.
    pub(super) fn alive(&self, id: &str, pid: u32, dir: &Path) -> bool {
        if pid == 0 {
            return false;
        }
        {
            let mut entries = self.entries.lock().expect("lock");
            if let Some(e) = entries.get_mut(id)
                && let Some(t) = &e.shim
                && t.pid == pid
                && t.dir == dir
            {
                match exited(&t.pidfd) {
                    Some(false) => return true,
                    Some(true) => {
                        e.shim = None;
                        return false;
                    }
                    // poll failed: ask /proc below, watch afresh.
                    None => e.shim = None,
                }
            }
        }
        if !shim::alive(pid, dir) {
            return false;
        }
        let Some(pidfd) = pidfd_open(pid) else {
            return true;
        };
        // The pid may have been reused between the check and the open: confirm that the
        // process now at `pid` is the shim, and that the pidfd's process has not exited since
        // (if it had, the pid read after the open could name another process).
        if !shim::alive(pid, dir) || exited(&pidfd) != Some(false) {
            return false;
        }
        self.entries
            .lock()
            .expect("lock")
            .entry(id.to_owned())
            .or_default()
            .shim = Some(Tracked {
            pid,
            dir: dir.to_owned(),
            pidfd,
        });
        true
    }

    /// Drops what is kept for a removed container (its pidfd is closed).
    pub(super) fn forget(&self, id: &str) {
        self.entries.lock().expect("lock").remove(id);
    }

    /// Keeps only the entries of containers `keep` names.
    pub(super) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.entries.lock().expect("lock").retain(|id, _| keep(id));
    }

    #[cfg(test)]
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn tracked(&self, id: &str) -> bool {
        self.entries
            .lock()
            .expect("lock")
            .get(id)
            .is_some_and(|e| e.shim.is_some())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().expect("lock").len()
    }
}

/// A pidfd for `pid` (close-on-exec, as pidfds always are); `None` where unavailable.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: a new fd that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the pidfd's process has exited (the pidfd is readable then); `None` if poll fails.
fn exited(pidfd: &OwnedFd) -> Option<bool> {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    match unsafe { libc::poll(&mut p, 1, 0) } {
        0 => Some(false),
        1 if p.revents & libc::POLLIN != 0 => Some(true),
        _ => None,
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
