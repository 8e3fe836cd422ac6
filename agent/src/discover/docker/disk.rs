//! What dockerd's files said, for every container asked about while the API does not answer,
//! kept current by inotify. A `statx` of both files of every container every
//! [`DISK_RECHECK`](super::DISK_RECHECK) was ~6% of an agent at rest with 200 containers;
//! now nothing is checked until the kernel says something changed.
//!
//! One inotify fd, made at the first read and closed once no entry is left, watches
//! `<data_root>/containers` (a container's directory made, removed or moved) and the directory of
//! each container asked about. dockerd replaces `config.v2.json` and `hostconfig.json` by
//! write-to-temp + rename (`IN_MOVED_TO`); a plain write (`IN_CLOSE_WRITE`), a new file
//! (`IN_CREATE`), a removal (`IN_DELETE`, `IN_MOVED_FROM`) and `touch` (`IN_ATTRIB`) count too. An
//! event naming one of the two files, or the container's directory, marks its entry stale;
//! [`Disk::take_events`] reads the queue once per tick (one `read`, `EAGAIN` at rest) and the
//! next lookup reads a stale entry's files again. A directory is watched before its files are
//! read, so a write after the read is an event, never a miss. The directory going
//! (`IN_DELETE_SELF`, `IN_MOVE_SELF`, `IN_IGNORED`) drops its watch and marks the entry stale;
//! `IN_Q_OVERFLOW` (events lost) marks every entry stale.
//!
//! Fallback, logged once: an entry whose directory cannot be watched (inotify refused or failed,
//! `fs.inotify.max_user_watches` reached, or no directory and no `containers` directory to
//! report its creation) keeps the mtimes of its files, and the API task compares them every
//! `DISK_RECHECK` as before ([`Disk::prune`] hands it those entries); one that changed is
//! stale, and the lookup that reads it again tries to watch it again.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, SystemTime},
};

use nix::{
    errno::Errno,
    sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor},
};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{DiskError, read_disk};
use crate::discover::meta::Meta;

/// The files berth reads in a container's directory.
const FILES: [&str; 2] = ["config.v2.json", "hostconfig.json"];

/// mtimes of config.v2.json and hostconfig.json (the fallback's check).
pub(super) type Stamp = (Option<SystemTime>, Option<SystemTime>);

/// What a container directory's watch reports: its two files replaced, written, made, removed
/// or touched, and the directory going.
fn dir_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// What the watch on `containers` reports: a container's directory made, removed or moved, and
/// `containers` going.
fn parent_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// How an entry's files are kept current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Watch {
    /// By the watch on its directory.
    Dir(WatchDescriptor),
    /// It has no directory (yet): the watch on `containers` reports one made.
    Parent,
    /// Not watched: its stamp is checked every `DISK_RECHECK`.
    Stat,
}

pub(super) struct DiskEntry {
    /// `None`: no files, or unreadable ones (logged).
    pub(super) meta: Option<Meta>,
    /// mtimes of the files when read (`Watch::Stat` only).
    stamp: Stamp,
    /// Last asked about; entries no tick asked about for `FORGET` are dropped (a pass can
    /// come twice within a tick: dropping what the last pass saw unasked re-read the files of
    /// every container that often).
    pub(super) asked: Instant,
    /// An event named its files or directory since they were read.
    stale: bool,
    watch: Watch,
}

enum Notify {
    /// Made at the next read.
    Untried,
    On {
        inotify: Inotify,
        /// The watch on `containers`, where there is one.
        parent: Option<WatchDescriptor>,
        /// The entry each container directory's watch is for.
        dirs: HashMap<WatchDescriptor, String>,
    },
    /// Refused or failed (logged): every entry is `Watch::Stat`.
    Off,
}

/// What one read of a container's files gave.
pub(super) struct Read {
    meta: Option<Meta>,
    stamp: Stamp,
}

/// The entries, their watches and counters.
pub(super) struct Disk {
    pub(super) entries: HashMap<String, DiskEntry>,
    notify: Notify,
    /// Reads of a container's files (each a miss of this cache).
    pub(super) reads: u64,
    /// Stamp checks (`statx` of both files; the fallback).
    pub(super) stats: u64,
    /// Inotify was refused or a directory could not be watched (logged once).
    warned: bool,
}

impl Default for Disk {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            notify: Notify::Untried,
            reads: 0,
            stats: 0,
            warned: false,
        }
    }
}

impl Disk {
    /// Without inotify: every entry on the fallback (tests).
    #[cfg(test)]
    pub(super) fn without_inotify() -> Self {
        Self {
            notify: Notify::Off,
            ..Self::default()
        }
    }

    /// Watches in place: on `containers` and on container directories (tests).
    #[cfg(test)]
    pub(super) fn watches(&self) -> usize {
        match &self.notify {
            Notify::On { parent, dirs, .. } => usize::from(parent.is_some()) + dirs.len(),
            _ => 0,
        }
    }

    /// The entry's metadata when it is current (marked asked); `None` when `id` has no entry
    /// or an event made it stale: its files are to be read.
    pub(super) fn fresh(&mut self, id: &str) -> Option<Option<Meta>> {
        let e = self.entries.get_mut(id)?;
        // Asked now even when stale: the task does not forget it while it is being read.
        e.asked = Instant::now();
        (!e.stale).then(|| e.meta.clone())
    }

    /// Watches the directory of container `id` (below `containers`) before its files are read.
    pub(super) fn watch(&mut self, containers: &Path, id: &str) -> Watch {
        if matches!(self.notify, Notify::Untried) {
            self.notify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
                Ok(inotify) => Notify::On {
                    inotify,
                    parent: None,
                    dirs: HashMap::new(),
                },
                Err(e) => {
                    self.warn(&e, "no inotify for dockerd's files");
                    Notify::Off
                }
            };
        }
        let old = self.entries.get(id).map(|e| e.watch);
        let Notify::On {
            inotify,
            parent,
            dirs,
        } = &mut self.notify
        else {
            return Watch::Stat;
        };
        if parent.is_none() {
            // No `containers` (yet): ENOENT, tried again at the next read.
            *parent = inotify.add_watch(containers, parent_mask()).ok();
        }
        let result = inotify.add_watch(&containers.join(id), dir_mask());
        if let (Some(Watch::Dir(old)), Ok(new)) = (old, &result)
            && old != *new
            && dirs.get(&old).is_some_and(|i| i == id)
        {
            // Its directory was replaced: the old watch is on the old one.
            dirs.remove(&old);
            let _ = inotify.rm_watch(old);
        }
        match result {
            Ok(wd) => {
                dirs.insert(wd, id.to_owned());
                Watch::Dir(wd)
            }
            Err(Errno::ENOENT | Errno::ENOTDIR) if parent.is_some() => Watch::Parent,
            Err(Errno::ENOENT | Errno::ENOTDIR) => Watch::Stat,
            Err(e) => {
                self.warn(&e, "cannot watch a docker container's directory");
                Watch::Stat
            }
        }
    }

    /// Keeps what a read of `id`'s files gave (its directory watched as `watch` before the
    /// read) and returns its metadata.
    pub(super) fn store(&mut self, id: &str, read: Read, watch: Watch) -> Option<Meta> {
        self.reads += 1;
        if watch == Watch::Stat {
            self.stats += 1;
        }
        let meta = read.meta.clone();
        // What marked it stale while it was read (an event, a changed stamp) came before this
        // read began, or is marked again at the next refresh or check.
        self.entries.insert(
            id.to_owned(),
            DiskEntry {
                meta: read.meta,
                stamp: read.stamp,
                asked: Instant::now(),
                stale: false,
                watch,
            },
        );
        meta
    }

    /// Takes in the queued events (one `read` at rest): entries they name become stale.
    pub(super) fn take_events(&mut self) {
        loop {
            let Notify::On {
                inotify,
                parent,
                dirs,
            } = &mut self.notify
            else {
                return;
            };
            let events = match inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    self.warn(&e, "reading inotify failed");
                    self.notify = Notify::Off;
                    for e in self.entries.values_mut() {
                        e.watch = Watch::Stat;
                        e.stale = true;
                    }
                    return;
                }
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    debug!("inotify queue overflowed: dockerd's files are read again");
                    for e in self.entries.values_mut() {
                        e.stale = true;
                    }
                    continue;
                }
                let gone = ev.mask.intersects(
                    AddWatchFlags::IN_IGNORED
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF,
                );
                if gone && !ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // Moved (the kernel drops a deleted directory's watch itself).
                    let _ = inotify.rm_watch(ev.wd);
                }
                let name = ev.name.as_ref().and_then(|n| n.to_str());
                if *parent == Some(ev.wd) {
                    if gone {
                        // No `containers` any more: entries without a directory lose their
                        // watch; read again, they get the fallback.
                        *parent = None;
                        for e in self.entries.values_mut() {
                            if e.watch == Watch::Parent {
                                e.watch = Watch::Stat;
                                e.stale = true;
                            }
                        }
                    } else if let Some(e) = name.and_then(|n| self.entries.get_mut(n)) {
                        e.stale = true;
                    }
                    continue;
                }
                let id = if gone {
                    dirs.remove(&ev.wd)
                } else {
                    dirs.get(&ev.wd).cloned()
                };
                let Some(e) = id.and_then(|id| self.entries.get_mut(&id)) else {
                    continue;
                };
                if gone {
                    if e.watch == Watch::Dir(ev.wd) {
                        e.watch = Watch::Stat;
                    }
                    e.stale = true;
                } else if name.is_some_and(|n| FILES.contains(&n)) {
                    e.stale = true;
                }
            }
        }
    }

    /// Forgets the entries no lookup asked about for `forget` (their containers are gone),
    /// with their watches (all of inotify once none is left), and returns the entries on the
    /// fallback with their stamps, to check.
    pub(super) fn prune(&mut self, forget: Duration) -> Vec<(String, Stamp)> {
        let Self {
            entries, notify, ..
        } = self;
        entries.retain(|id, e| {
            let keep = e.asked.elapsed() < forget;
            if !keep
                && let (Watch::Dir(wd), Notify::On { inotify, dirs, .. }) = (e.watch, &mut *notify)
                && dirs.get(&wd).is_some_and(|i| i == id)
            {
                dirs.remove(&wd);
                let _ = inotify.rm_watch(wd);
            }
            keep
        });
        if entries.is_empty() {
            // Closing the fd drops every watch; made again at the next read.
            *notify = Notify::Untried;
        }
        entries
            .iter()
            .filter(|(_, e)| e.watch == Watch::Stat)
            .map(|(id, e)| (id.clone(), e.stamp))
            .collect()
    }

    /// Takes in a check of the fallback: `n` entries' stamps compared, those of `changed`
    /// differed (their files are read again at the next lookup, which also tries to watch
    /// them again).
    pub(super) fn checked(&mut self, n: usize, changed: &[String]) {
        self.stats += n as u64;
        for id in changed {
            if let Some(e) = self.entries.get_mut(id) {
                e.stale = true;
            }
        }
    }

    fn warn(&mut self, e: &Errno, what: &str) {
        if !self.warned {
            self.warned = true;
            warn!(error = %e, "{what}: their mtimes are checked every few seconds instead");
        }
    }
}

/// The files of the container directory `dir`, with their mtimes when they are not watched
/// (`watch` is `Watch::Stat`; mtimes first, so a write during the read is seen by the next
/// check).
pub(super) fn read(dir: &Path, watch: Watch) -> Read {
    let stamp = if watch == Watch::Stat {
        stamp(dir)
    } else {
        (None, None)
    };
    let meta = match read_disk(dir) {
        Ok(m) => Some(m),
        Err(DiskError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            None
        }
        Err(e) => {
            warn!(error = %e, "docker container files unreadable");
            None
        }
    };
    Read { meta, stamp }
}

/// The mtimes of the two files in `dir` (two `statx`).
pub(super) fn stamp(dir: &Path) -> Stamp {
    let mtime = |f: &str| {
        std::fs::metadata(dir.join(f))
            .and_then(|m| m.modified())
            .ok()
    };
    (mtime(FILES[0]), mtime(FILES[1]))
}
