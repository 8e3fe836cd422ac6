//! The directories [`super::walk`] lists, kept from one walk to the next and listed again only
//! when the kernel says a child came or went. At rest with a few hundred foreign containers a
//! `getdents64` of every non-container directory each tick was ~8% of the agent's CPU; now a
//! walk at rest costs one `read` of an inotify fd (`EAGAIN`).
//!
//! One inotify fd holds a watch on each directory the walk descends into: the mount and every
//! non-container directory down to the depth bound (never a container's cgroup, berth's
//! tracked root or a `berth*` tree). `mkdir` and `rmdir` of a child cgroup queue `IN_CREATE` /
//! `IN_DELETE` with `IN_ISDIR` on the parent's watch (cgroupfs is kernfs behind the VFS:
//! `vfs_mkdir` and `vfs_rmdir` notify), so a walk lists those parents again and takes every
//! other listing from memory. cAdvisor's raw container watcher does the same.
//!
//! - A watch is added before its directory is listed: a change in between is an event for the
//!   next walk (a second listing, never a miss).
//! - The kernel does not drop the watch of a removed cgroup: no `IN_DELETE_SELF` or
//!   `IN_IGNORED` comes on cgroupfs (checked on 6.18; the mark holds the kernfs inode). The
//!   walk removes the watch of every directory it no longer reaches (its parent's `IN_DELETE`
//!   had it listed again), or whose inode changed (removed and made again under its name). An
//!   `IN_IGNORED` that does come (other filesystems: the tests' tmpfs) has it listed again.
//! - `IN_Q_OVERFLOW` (events lost): every directory is listed at the next walk.
//! - Fallbacks, each logged once: where inotify cannot be created or read, or a directory
//!   cannot be watched (`fs.inotify.max_user_watches`), the directories without a watch are
//!   listed every walk; with none watched that is the full walk this replaced. A watch is
//!   tried again at each listing.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::DirEntryExt as _,
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor},
};
use tracing::{debug, warn};

use super::{Discovered, MAX_DEPTH, classify};

/// What a watched directory reports: a child made, removed or moved (the walk looks only at
/// directories; file events are skipped when read).
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ONLYDIR
}

/// A child directory as a listing found it.
#[derive(Debug)]
pub(super) struct Child {
    /// Path below the mount, e.g. `/docker/<id>`.
    pub(super) path: String,
    /// Its inode (`d_ino`): on cgroupfs the v2 cgroup id.
    pub(super) ino: u64,
    pub(super) what: What,
}

/// What the walk does with a child (others are not kept).
#[derive(Debug)]
pub(super) enum What {
    /// Not a container, within the depth bound: walked into.
    Walk,
    /// A container's cgroup (never walked into).
    Container(Discovered),
}

/// A directory the walk reached, with its last listing.
#[derive(Debug)]
struct Dir {
    /// Its inode as its parent's listing gave it (0 for the mount): a directory removed and
    /// made again under its name is another one.
    ino: u64,
    watch: Option<WatchDescriptor>,
    /// Listed at the next walk: an event named a child, or its watch went.
    dirty: bool,
    children: Vec<Child>,
}

#[derive(Debug, Default)]
enum State {
    /// Created at the first walk.
    #[default]
    Untried,
    On(Inotify),
    /// Refused or failed (logged): every directory is listed every walk.
    Off,
}

/// The listings of the directories the last walk reached, and their watches.
#[derive(Debug, Default)]
pub(super) struct Tree {
    inotify: State,
    /// Path below the mount (`""` for the mount) -> directory.
    dirs: HashMap<String, Dir>,
    /// Directories of the walk in progress not reached yet; what is left at its end went.
    left: HashMap<String, Dir>,
    /// Which directory each watch is on.
    pub(super) watches: HashMap<WatchDescriptor, String>,
    /// Directories the last walk listed (the others came from memory).
    pub(super) listed: usize,
    /// Listings since this tree was made.
    pub(super) listed_total: u64,
    /// Inotify was refused, or a directory could not be watched (logged once).
    warned: bool,
}

impl Tree {
    /// A tree that never watches: every walk lists every directory (the fallback, for tests).
    #[cfg(test)]
    pub(super) fn without_inotify() -> Self {
        Self {
            inotify: State::Off,
            ..Self::default()
        }
    }

    /// Whether directories are watched.
    pub(super) fn watching(&self) -> bool {
        matches!(self.inotify, State::On(_))
    }

    /// Starts a walk: takes in the queued events (one `read` at rest).
    pub(super) fn begin(&mut self) {
        if matches!(self.inotify, State::Untried) {
            self.inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
                Ok(i) => State::On(i),
                Err(e) => {
                    self.warn(&e, "no inotify for the cgroup tree");
                    State::Off
                }
            };
        }
        self.take_events();
        self.listed = 0;
        self.left = std::mem::take(&mut self.dirs);
    }

    /// The children of the directory at `path` (below `mount`; `ino` as its parent listed it,
    /// `depth` below the mount), listed again when it is new, an event named it, or it has no
    /// watch; `None` when it cannot be listed (gone).
    pub(super) fn children(
        &mut self,
        mount: &Path,
        path: String,
        ino: u64,
        depth: usize,
        skip: &str,
    ) -> Option<&[Child]> {
        let dir = match self.left.remove(&path) {
            Some(d) if d.ino == ino => d,
            old => {
                if let Some(old) = old {
                    // Removed and made again under its name: the old watch is on the old inode.
                    self.unwatch(&path, &old);
                }
                Dir {
                    ino,
                    watch: None,
                    dirty: true,
                    children: Vec::new(),
                }
            }
        };
        let mut dir = dir;
        if dir.dirty || dir.watch.is_none() {
            let full = full_path(mount, &path);
            if dir.watch.is_none() {
                dir.watch = self.watch(&full, &path);
            }
            let Some(children) = list(&full, &path, depth, skip) else {
                self.unwatch(&path, &dir);
                return None;
            };
            self.listed += 1;
            self.listed_total += 1;
            dir.children = children;
            dir.dirty = false;
        }
        let dir = match self.dirs.entry(path) {
            std::collections::hash_map::Entry::Vacant(v) => v.insert(dir),
            // Reached twice in one walk (cannot happen: one parent per directory).
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
        };
        Some(&dir.children)
    }

    /// Ends a walk: the directories it did not reach went; their watches go with them.
    pub(super) fn end(&mut self) {
        for (path, dir) in std::mem::take(&mut self.left) {
            self.unwatch(&path, &dir);
        }
    }

    fn watch(&mut self, full: &Path, path: &str) -> Option<WatchDescriptor> {
        let State::On(inotify) = &self.inotify else {
            return None;
        };
        match inotify.add_watch(full, mask()) {
            Ok(wd) => {
                // The same inode reached under another path takes the watch over.
                self.watches.insert(wd, path.to_owned());
                Some(wd)
            }
            // Gone: the listing fails too.
            Err(Errno::ENOENT | Errno::ENOTDIR) => None,
            Err(e) => {
                self.warn(
                    &e,
                    "cannot watch a cgroup directory (fs.inotify.max_user_watches?)",
                );
                None
            }
        }
    }

    /// Removes the watch of `dir` (at `path`) unless another path took it over.
    fn unwatch(&mut self, path: &str, dir: &Dir) {
        let Some(wd) = dir.watch else { return };
        if self.watches.get(&wd).is_none_or(|p| p != path) {
            return;
        }
        self.watches.remove(&wd);
        if let State::On(i) = &self.inotify {
            let _ = i.rm_watch(wd);
        }
    }

    /// Marks the directories named by queued events for listing.
    fn take_events(&mut self) {
        loop {
            let read = match &self.inotify {
                State::On(inotify) => inotify.read_events(),
                _ => return,
            };
            let events = match read {
                Ok(events) => events,
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    self.warn(&e, "reading inotify failed");
                    self.inotify = State::Off;
                    self.watches.clear();
                    for d in self.dirs.values_mut() {
                        d.watch = None;
                    }
                    return;
                }
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    debug!("inotify queue overflowed: every cgroup directory is listed again");
                    for d in self.dirs.values_mut() {
                        d.dirty = true;
                    }
                    continue;
                }
                let ignored = ev.mask.contains(AddWatchFlags::IN_IGNORED);
                if !ignored && !ev.mask.contains(AddWatchFlags::IN_ISDIR) {
                    continue;
                }
                let path = if ignored {
                    self.watches.remove(&ev.wd)
                } else {
                    self.watches.get(&ev.wd).cloned()
                };
                let Some(d) = path.and_then(|p| self.dirs.get_mut(&p)) else {
                    continue;
                };
                if ignored && d.watch == Some(ev.wd) {
                    d.watch = None;
                }
                d.dirty = true;
            }
        }
    }

    fn warn(&mut self, e: &Errno, what: &str) {
        if !self.warned {
            self.warned = true;
            warn!(error = %e, "{what}: cgroup directories without a watch are listed every tick");
        }
    }
}

fn full_path(mount: &Path, path: &str) -> PathBuf {
    match path.strip_prefix('/') {
        Some(rel) => mount.join(rel),
        None => mount.to_owned(),
    }
}

/// The child directories of `dir` (at `path` below the mount, `depth` deep) the walk keeps:
/// containers, and what it walks into (not `skip`, not a top-level `berth*` tree, within
/// [`MAX_DEPTH`]). `None` when it cannot be read.
fn list(dir: &Path, path: &str, depth: usize, skip: &str) -> Option<Vec<Child>> {
    let entries = fs::read_dir(dir).ok()?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let child = format!("{path}/{name}");
        if child == skip {
            continue;
        }
        let what = match classify(&child) {
            Some(d) => What::Container(d),
            None if depth + 1 < MAX_DEPTH && !(depth == 0 && name.starts_with("berth")) => {
                What::Walk
            }
            None => continue,
        };
        out.push(Child {
            path: child,
            ino: e.ino(),
            what,
        });
    }
    Some(out)
}
