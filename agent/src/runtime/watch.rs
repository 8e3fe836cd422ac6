//! What the shims say, cached and told by the kernel when it changes: every collection tick
//! reads the status of every container, and the reaper does four times a second, so even one
//! `statx` and one `poll` per container and read was ~500 syscalls a second at 50 containers,
//! most of an idle agent's budget (issue 14). At rest a pass now costs one `epoll_wait`.
//!
//! One epoll fd holds an inotify fd and the pidfd of every tracked shim. [`ShimWatch::refresh`]
//! asks it once (timeout 0; the inotify fd is read only when it is ready); callers do that once
//! per listing or reaper pass, after which [`ShimWatch::state`] and [`ShimWatch::alive`] are
//! lookups in memory, as of that refresh.
//!
//! - State: `state.json` is only ever replaced by rename ([`crate::fsutil::write_atomic`], by
//!   the shim and by the agent). The first read of a container's state puts an inotify watch on
//!   its directory, before reading, so no write is missed; an event naming the file
//!   (`IN_MOVED_TO`, `IN_CLOSE_WRITE`, `IN_CREATE`, `IN_DELETE`, `IN_MOVED_FROM`) marks it
//!   stale and the next `state` reads it again. The directory going (`IN_DELETE_SELF`,
//!   `IN_MOVE_SELF`, `IN_IGNORED`) drops the watch; `IN_Q_OVERFLOW` (events lost) marks every
//!   entry stale. The agent's own writes mark the entry stale at once ([`ShimWatch::invalidate`])
//!   so a read right after them needs no refresh.
//! - Liveness: once a shim's pid is confirmed by its command line ([`shim::alive`]), its pidfd
//!   (pidfd_open(2), Linux 5.3) joins the epoll set; it becomes readable when the process exits
//!   ([`pidfd_open(2)`](https://man7.org/linux/man-pages/man2/pidfd_open.2.html)) and cannot
//!   be fooled by a reused pid. A shim seen dead is remembered as dead for that pid (until its
//!   `state.json` changes), so an exited container costs nothing either.
//! - Cgroup id: a running container's is found (a `statx` of its cgroup directory) once per
//!   read of its state and kept until the state changes ([`ShimWatch::cgroup_id`]).
//! - Fallbacks, each logged once: where epoll cannot be created, nothing is watched and each
//!   read costs what it did before this cache was event-driven: one `statx` of `state.json`
//!   (read again when the file's identity changed: device, inode, size, mtime, ctime) and one
//!   `poll` of the pidfd. Where inotify cannot be created (or a directory cannot be watched:
//!   `fs.inotify.max_user_watches` reached), state files are checked with `statx` the same way;
//!   where a pidfd cannot join the epoll set it is polled; where pidfd_open fails, the command
//!   line is read each time.
//!
//! Entries of removed containers are dropped ([`ShimWatch::forget`], [`ShimWatch::retain`]),
//! and with them their inotify watch and pidfd.

use std::{
    collections::HashMap,
    ffi::OsString,
    fs::{self, File},
    io::Read as _,
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use nix::{
    errno::Errno,
    sys::{
        epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout},
        inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor},
    },
};
use tracing::warn;

use super::{shim, store::ShimState};

/// What tells one file at a path from the next one written there (the statx fallback).
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

/// The epoll data of the inotify fd; pidfds get tokens from 1 up.
const INOTIFY_TOKEN: u64 = 0;

/// What a watched directory reports: the state file's replacement (rename, or a plain write
/// closed), creation and removal, and the directory itself going.
fn watch_mask() -> AddWatchFlags {
    AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// How an entry's state file is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Not yet, or the watch went with its directory: tried again at the next read.
    Untried,
    Active(WatchDescriptor),
    /// inotify is unavailable for it: `statx` on each read.
    Unavailable,
}

/// A shim confirmed by its command line, watched through a pidfd.
struct Tracked {
    pid: u32,
    dir: PathBuf,
    pidfd: OwnedFd,
    /// Its epoll data while the pidfd is in the epoll set; `None`: polled on each check.
    token: Option<u64>,
}

enum Shim {
    Tracked(Tracked),
    /// Seen exited (or not a shim of this directory); forgotten when `state.json` changes.
    Dead {
        pid: u32,
        dir: PathBuf,
    },
}

struct Entry {
    /// The parsed state; with the identity of its file in the statx fallback.
    state: Option<(Option<FileId>, ShimState)>,
    /// Changed since it was read: read again on the next [`ShimWatch::state`].
    stale: bool,
    watch: Watch,
    /// The watched file's name in its directory (`state.json`).
    name: OsString,
    shim: Option<Shim>,
    /// The container's cgroup id, found while the state read last says running.
    cgroup: Option<u64>,
    /// Bumped at each read of the state: a cgroup id found before it is not kept.
    generation: u64,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            state: None,
            stale: false,
            watch: Watch::Untried,
            name: OsString::new(),
            shim: None,
            cgroup: None,
            generation: 0,
        }
    }
}

/// The epoll set with its inotify fd and pidfds.
struct Notify {
    epoll: Epoll,
    /// `None` where inotify is unavailable: state files are checked with `statx`.
    inotify: Option<Inotify>,
    /// The entries watching each directory (one per container; tests share one).
    watches: HashMap<WatchDescriptor, Vec<String>>,
    /// The entry of each pidfd in the epoll set, by token.
    pidfds: HashMap<u64, String>,
    next_token: u64,
    /// A directory could not be watched (logged once).
    warned_watch: bool,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// `None` where epoll is unavailable: every read checks the file and polls the pidfd.
    notify: Option<Notify>,
}

/// The cache, one entry per container id; owned by the [`super::Manager`].
pub(super) struct ShimWatch {
    inner: Mutex<Inner>,
    /// How often a `state.json` was read and parsed (a cache miss).
    reads: AtomicU64,
    /// Bumped whenever the cache takes in something new: an event, a read that missed, an
    /// entry invalidated or dropped, a shim confirmed or found dead ([`Self::epoch`]).
    epoch: AtomicU64,
    /// How often a `state.json` was checked with `statx` (the fallback).
    stats: AtomicU64,
}

impl Default for ShimWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl ShimWatch {
    /// A watch with its epoll set and inotify fd; logs once why not where they are missing.
    pub(super) fn new() -> Self {
        let notify = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
            Ok(epoll) => {
                let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                    .and_then(|i| {
                        epoll.add(
                            i.as_fd(),
                            EpollEvent::new(EpollFlags::EPOLLIN, INOTIFY_TOKEN),
                        )?;
                        Ok(i)
                    })
                    .map_err(|e| {
                        warn!(error = %e, "no inotify for the shims' state files: each status \
                              read checks state.json with statx")
                    })
                    .ok();
                Some(Notify {
                    epoll,
                    inotify,
                    watches: HashMap::new(),
                    pidfds: HashMap::new(),
                    next_token: INOTIFY_TOKEN + 1,
                    warned_watch: false,
                })
            }
            Err(e) => {
                warn!(error = %e, "no epoll for the shim watch: each status read checks \
                      state.json with statx and polls the shim's pidfd");
                None
            }
        };
        Self::with(notify)
    }

    /// Without epoll and inotify: the fallback everywhere.
    #[cfg(test)]
    fn unwatched() -> Self {
        Self::with(None)
    }

    fn with(notify: Option<Notify>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                notify,
            }),
            reads: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            stats: AtomicU64::new(0),
        }
    }

    /// Takes in what changed since the last call: one `epoll_wait` (timeout 0), and reads of
    /// the inotify fd only when it is ready. State files named by an event are marked stale,
    /// shims whose pidfd fired dead.
    pub(super) fn refresh(&self) {
        let mut inner = self.inner.lock().expect("lock");
        let Inner { entries, notify } = &mut *inner;
        let Some(n) = notify else { return };
        let mut events = [EpollEvent::empty(); 32];
        // Bounded: each round takes in what is ready; a full buffer means there may be more.
        for _ in 0..64 {
            let ready = match n.epoll.wait(&mut events, EpollTimeout::ZERO) {
                Ok(k) => k,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!(error = %e, "epoll_wait failed: every shim state is read again");
                    mark_all_stale(entries);
                    return;
                }
            };
            if ready > 0 {
                self.bump();
            }
            for ev in &events[..ready] {
                if ev.data() == INOTIFY_TOKEN {
                    n.take_inotify(entries);
                } else if let Some(id) = n.pidfds.remove(&ev.data())
                    && let Some(e) = entries.get_mut(&id)
                    && let Some(Shim::Tracked(t)) = &e.shim
                    && t.token == Some(ev.data())
                {
                    let _ = n.epoll.delete(t.pidfd.as_fd());
                    e.shim = Some(Shim::Dead {
                        pid: t.pid,
                        dir: t.dir.clone(),
                    });
                }
            }
            if ready < events.len() {
                return;
            }
        }
    }

    /// The state in `path` (container `id`'s `state.json`) as of the last [`Self::refresh`];
    /// the default (not running) when there is nothing to read or it does not parse.
    pub(super) fn state(&self, id: &str, path: &Path) -> ShimState {
        let mut inner = self.inner.lock().expect("lock");
        let Inner { entries, notify } = &mut *inner;
        if let Some(e) = entries.get(id)
            && matches!(e.watch, Watch::Active(_))
            && !e.stale
            && let Some((_, s)) = &e.state
        {
            return s.clone();
        }
        self.bump();
        let e = entries.entry(id.to_owned()).or_default();
        if e.watch == Watch::Untried {
            e.watch = match notify {
                Some(n) => n.watch(id, path),
                None => Watch::Unavailable,
            };
            e.name = path.file_name().unwrap_or_default().to_owned();
        }
        if matches!(e.watch, Watch::Active(_)) {
            // Watched before read: a write after this read is an event for the next refresh.
            let state = self.read(path).map_or_else(ShimState::default, |(_, s)| s);
            e.stale = false;
            return self.keep(e, None, state);
        }
        self.stats.fetch_add(1, Ordering::Relaxed);
        let current = match fs::metadata(path) {
            Ok(m) => FileId::of(&m),
            Err(_) => {
                e.state = None;
                e.cgroup = None;
                e.generation += 1;
                return ShimState::default();
            }
        };
        if let Some((Some(seen), state)) = &e.state
            && *seen == current
        {
            return state.clone();
        }
        match self.read(path) {
            Some((seen, state)) => self.keep(e, Some(seen), state),
            None => ShimState::default(),
        }
    }

    /// Keeps a state just read; a changed one also forgets a shim seen dead (its pid may be
    /// a new shim's now).
    fn keep(&self, e: &mut Entry, seen: Option<FileId>, state: ShimState) -> ShimState {
        if matches!(e.shim, Some(Shim::Dead { .. })) {
            e.shim = None;
        }
        e.state = Some((seen, state.clone()));
        e.cgroup = None;
        e.generation += 1;
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

    /// Container `id`'s cgroup id: `find` (a `statx` of its cgroup directory) runs once per
    /// read of its state while that says running, and each time otherwise. A running
    /// container's cgroup is made before its shim writes "running" and deleted after the
    /// exit is written (by the shim, or by the agent for a lost shim), so the id stays right
    /// until the state changes.
    pub(super) fn cgroup_id(&self, id: &str, find: impl FnOnce() -> Option<u64>) -> Option<u64> {
        let generation = {
            let inner = self.inner.lock().expect("lock");
            let Some(e) = inner.entries.get(id) else {
                return find();
            };
            if let Some(cgroup) = e.cgroup
                && !e.stale
            {
                return Some(cgroup);
            }
            e.generation
        };
        let found = find();
        if let Some(e) = self.inner.lock().expect("lock").entries.get_mut(id)
            && e.generation == generation
            && !e.stale
            && matches!(&e.state, Some((_, s)) if s.running)
        {
            e.cgroup = found;
        }
        found
    }

    /// Marks container `id`'s state as changed: the agent has just written it.
    pub(super) fn invalidate(&self, id: &str) {
        self.bump();
        if let Some(e) = self.inner.lock().expect("lock").entries.get_mut(id) {
            e.stale = true;
        }
    }

    /// Whether `pid` is a live shim for the container directory `dir`, as of the last
    /// [`Self::refresh`] once its pidfd is in the epoll set.
    pub(super) fn alive(&self, id: &str, pid: u32, dir: &Path) -> bool {
        if pid == 0 {
            return false;
        }
        {
            let mut inner = self.inner.lock().expect("lock");
            let Inner { entries, notify } = &mut *inner;
            if let Some(e) = entries.get_mut(id) {
                match &e.shim {
                    Some(Shim::Dead { pid: p, dir: d }) if *p == pid && d == dir => return false,
                    Some(Shim::Tracked(t)) if t.pid == pid && t.dir == dir => {
                        if t.token.is_some() {
                            return true;
                        }
                        match exited(&t.pidfd) {
                            Some(false) => return true,
                            Some(true) => {
                                e.shim = Some(Shim::Dead {
                                    pid,
                                    dir: dir.to_owned(),
                                });
                                return false;
                            }
                            // poll failed: ask /proc below, watch afresh.
                            None => set_shim(notify, e, None),
                        }
                    }
                    _ => {}
                }
            }
        }
        self.bump();
        let (alive, shim) = match confirm(pid, dir) {
            Confirmed::Not => (
                false,
                Some(Shim::Dead {
                    pid,
                    dir: dir.to_owned(),
                }),
            ),
            // Asked again next time.
            Confirmed::Untracked => (true, None),
            Confirmed::Tracked(t) => (true, Some(Shim::Tracked(t))),
        };
        let mut inner = self.inner.lock().expect("lock");
        let Inner { entries, notify } = &mut *inner;
        let e = entries.entry(id.to_owned()).or_default();
        set_shim(notify, e, shim);
        if let (Some(n), Some(Shim::Tracked(t))) = (notify, &mut e.shim) {
            n.register(id, t);
        }
        alive
    }

    /// Drops what is kept for a removed container: its inotify watch and its pidfd.
    pub(super) fn forget(&self, id: &str) {
        let mut inner = self.inner.lock().expect("lock");
        let Inner { entries, notify } = &mut *inner;
        if let Some(mut e) = entries.remove(id) {
            drop_entry(notify, id, &mut e);
            self.bump();
        }
    }

    /// Keeps only the entries of containers `keep` names.
    pub(super) fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut inner = self.inner.lock().expect("lock");
        let Inner { entries, notify } = &mut *inner;
        entries.retain(|id, e| {
            let kept = keep(id);
            if !kept {
                self.bump();
                drop_entry(notify, id, e);
            }
            kept
        });
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// A number that stays the same while nothing the cache holds can have changed: no event
    /// taken in, no read, no shim confirmed or lost since. `None` while that cannot be told
    /// from the events alone: no epoll or inotify here, an entry without its inotify watch or
    /// stale, a shim polled rather than in the epoll set. Take it after a [`Self::refresh`].
    pub(super) fn epoch(&self) -> Option<u64> {
        let inner = self.inner.lock().expect("lock");
        inner.notify.as_ref()?.inotify.as_ref()?;
        let settled = inner.entries.values().all(|e| {
            matches!(e.watch, Watch::Active(_))
                && !e.stale
                && match &e.shim {
                    Some(Shim::Tracked(t)) => t.token.is_some(),
                    _ => true,
                }
        });
        settled.then(|| self.epoch.load(Ordering::Relaxed))
    }

    #[cfg(test)]
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn stats(&self) -> u64 {
        self.stats.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn tracked(&self, id: &str) -> bool {
        self.inner
            .lock()
            .expect("lock")
            .entries
            .get(id)
            .is_some_and(|e| matches!(e.shim, Some(Shim::Tracked(_))))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().expect("lock").entries.len()
    }

    /// The raw epoll and inotify fds (for the tests' look at /proc/self/fdinfo).
    #[cfg(test)]
    fn fds(&self) -> Option<(i32, i32)> {
        let inner = self.inner.lock().expect("lock");
        let n = inner.notify.as_ref()?;
        Some((
            n.epoll.0.as_raw_fd(),
            n.inotify.as_ref()?.as_fd().as_raw_fd(),
        ))
    }

    /// Directories watched and pidfds registered, as this side counts them.
    #[cfg(test)]
    fn registered(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("lock");
        inner
            .notify
            .as_ref()
            .map_or((0, 0), |n| (n.watches.len(), n.pidfds.len()))
    }
}

fn mark_all_stale(entries: &mut HashMap<String, Entry>) {
    for e in entries.values_mut() {
        e.stale = true;
    }
}

/// Replaces an entry's shim, taking the old one's pidfd out of the epoll set (and closing it).
fn set_shim(notify: &mut Option<Notify>, e: &mut Entry, shim: Option<Shim>) {
    if let Some(Shim::Tracked(t)) = std::mem::replace(&mut e.shim, shim)
        && let (Some(n), Some(token)) = (notify.as_mut(), t.token)
    {
        n.pidfds.remove(&token);
        let _ = n.epoll.delete(t.pidfd.as_fd());
    }
}

/// Takes out an entry's watch and pidfd.
fn drop_entry(notify: &mut Option<Notify>, id: &str, e: &mut Entry) {
    set_shim(notify, e, None);
    if let (Some(n), Watch::Active(wd)) = (notify.as_mut(), e.watch) {
        n.unwatch(id, wd);
    }
    e.watch = Watch::Untried;
}

/// What /proc says of a pid named as a container's shim.
enum Confirmed {
    /// Not a live shim of that directory.
    Not,
    /// A live shim, but pidfd_open failed: its command line is read on each check.
    Untracked,
    Tracked(Tracked),
}

/// Asks /proc whether `pid` is the shim of `dir` and opens its pidfd.
fn confirm(pid: u32, dir: &Path) -> Confirmed {
    if !shim::alive(pid, dir) {
        return Confirmed::Not;
    }
    let Some(pidfd) = pidfd_open(pid) else {
        return Confirmed::Untracked;
    };
    // The pid may have been reused between the check and the open: confirm that the process
    // now at `pid` is the shim, and that the pidfd's process has not exited since (if it had,
    // the pid read after the open could name another process).
    if !shim::alive(pid, dir) || exited(&pidfd) != Some(false) {
        return Confirmed::Not;
    }
    Confirmed::Tracked(Tracked {
        pid,
        dir: dir.to_owned(),
        pidfd,
        token: None,
    })
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

#[path = "watch_notify.rs"]
mod notify;

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
