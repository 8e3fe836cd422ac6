//! A cgroup subtree's directories, kept from one walk to the next and listed again only when
//! the kernel says a child came or went: one mechanism for both walks of the tree, other
//! engines' containers (`discover::cgroups::walk`, from the cgroup2 mount down to a depth
//! bound) and berth's own tracked subtree ([`super::TrackedRoot::walk`], every directory).
//! At rest with a few hundred foreign containers a `getdents64` of every non-container
//! directory each tick was ~8% of the agent's CPU; now a walk at rest costs one `read` of an
//! inotify fd (`EAGAIN`).
//!
//! The tree does not decide where a walk goes: the walk asks for the children of each
//! directory it descends into ([`Tree::children`]), and a listing keeps the children the
//! walk's classifier returns something for (the foreign walk: containers and directories to
//! walk into; the tracked walk: every child). One inotify fd holds a watch on each directory
//! the walk asked for. `mkdir` and `rmdir` of a child cgroup queue `IN_CREATE` / `IN_DELETE`
//! with `IN_ISDIR` on the parent's watch (cgroupfs is kernfs behind the VFS: `vfs_mkdir` and
//! `vfs_rmdir` notify), so a walk lists those parents again and takes every other listing
//! from memory. cAdvisor's raw container watcher does the same.
//!
//! - A watch is added before its directory is listed: a change in between is an event for the
//!   next walk (a second listing, never a miss).
//! - The kernel does not drop the watch of a removed cgroup: no `IN_DELETE_SELF` or
//!   `IN_IGNORED` comes on cgroupfs (checked on 6.18; the mark holds the kernfs inode). The
//!   walk removes the watch of every directory it no longer reaches (its parent's `IN_DELETE`
//!   had it listed again), or whose inode changed (removed and made again under its name). An
//!   `IN_IGNORED` that does come (other filesystems: the tests' tmpfs) has it listed again.
//!   The walk's own top directory (the mount, or berth's tracked root) is taken as there for
//!   good: removed and made again, its new inode would go unwatched.
//! - `IN_Q_OVERFLOW` (events lost): every directory is listed at the next walk.
//! - Fallbacks, each logged once per tree: where inotify cannot be created or read, or a
//!   directory cannot be watched (`fs.inotify.max_user_watches`), the directories without a
//!   watch are listed every walk; with none watched that is a full walk. A watch is tried
//!   again at each listing.

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

/// What a watched directory reports: a child made, removed or moved (a walk looks only at
/// directories; file events are skipped when read).
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ONLYDIR
}

/// A child directory as a listing found it, with what the walk's classifier made of it.
#[derive(Debug)]
pub(crate) struct Child<T> {
    /// Path below the walk's top directory, e.g. `/docker/<id>` (the top is `""`).
    pub(crate) path: String,
    /// Its inode (`d_ino`): on cgroupfs the v2 cgroup id.
    pub(crate) ino: u64,
    pub(crate) what: T,
}

/// A directory the walk reached, with its last listing.
#[derive(Debug)]
struct Dir<T> {
    /// Its inode as its parent's listing gave it (the caller's for the top directory): a
    /// directory removed and made again under its name is another one.
    ino: u64,
    watch: Option<WatchDescriptor>,
    /// Listed at the next walk: an event named a child, or its watch went.
    dirty: bool,
    children: Vec<Child<T>>,
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

/// The listings of the directories the last walk reached, and their watches; `T` is what the
/// walk's classifier keeps of a child. One tree serves one walk (one top directory, one
/// classifier): listings from memory are what that classifier made of them.
#[derive(Debug)]
pub(crate) struct Tree<T> {
    inotify: State,
    /// Path below the top directory (`""` for the top) -> directory.
    dirs: HashMap<String, Dir<T>>,
    /// Directories of the walk in progress not reached yet; what is left at its end went.
    left: HashMap<String, Dir<T>>,
    /// Which directory each watch is on.
    watches: HashMap<WatchDescriptor, String>,
    /// Directories the last walk listed (the others came from memory).
    listed: usize,
    /// Inotify was refused, or a directory could not be watched (logged once).
    warned: bool,
    /// The top directory of the walk (named in the log: the tracked and the foreign walk each
    /// have a tree).
    top: PathBuf,
}

impl<T> Default for Tree<T> {
    fn default() -> Self {
        Self {
            inotify: State::default(),
            dirs: HashMap::new(),
            left: HashMap::new(),
            watches: HashMap::new(),
            listed: 0,
            warned: false,
            top: PathBuf::new(),
        }
    }
}

impl<T> Tree<T> {
    /// A tree that never watches: every walk lists every directory (the fallback, for tests).
    #[cfg(test)]
    pub(crate) fn without_inotify() -> Self {
        Self {
            inotify: State::Off,
            ..Self::default()
        }
    }

    /// Whether directories are watched.
    pub(crate) fn watching(&self) -> bool {
        matches!(self.inotify, State::On(_))
    }

    /// Directories the last walk listed; the others' children came from their last listing
    /// (no inotify event named them).
    pub(crate) fn listed(&self) -> usize {
        self.listed
    }

    /// The paths of the watched directories (below the top), sorted.
    #[cfg(test)]
    pub(crate) fn watched(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.watches.values().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Starts a walk: takes in the queued events (one `read` at rest).
    pub(crate) fn begin(&mut self, top: &Path) {
        if self.top != top {
            self.top = top.to_owned();
        }
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

    /// The children of the directory at `path` (below `top`, the walk's top directory; `ino` as
    /// its parent listed it), listed again when it is new, an event named it, or it has no
    /// watch: a listing keeps each child directory `classify` (given its path below `top` and
    /// its name) returns something for. `None` when it cannot be listed (gone).
    pub(crate) fn children(
        &mut self,
        top: &Path,
        path: String,
        ino: u64,
        classify: impl FnMut(&str, &str) -> Option<T>,
    ) -> Option<&[Child<T>]> {
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
            let full = full_path(top, &path);
            if dir.watch.is_none() {
                dir.watch = self.watch(&full, &path);
            }
            let Some(children) = list(&full, &path, classify) else {
                self.unwatch(&path, &dir);
                return None;
            };
            self.listed += 1;
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
    pub(crate) fn end(&mut self) {
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
    fn unwatch(&mut self, path: &str, dir: &Dir<T>) {
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
            warn!(
                error = %e,
                tree = %self.top.display(),
                "{what}: cgroup directories without a watch are listed every tick"
            );
        }
    }
}

fn full_path(top: &Path, path: &str) -> PathBuf {
    match path.strip_prefix('/') {
        Some(rel) => top.join(rel),
        None => top.to_owned(),
    }
}

/// The child directories of `dir` (at `path` below the top) `classify` keeps; names that are
/// not UTF-8 are skipped (no runtime makes them, and a path string could not name them).
/// `None` when it cannot be read.
fn list<T>(
    dir: &Path,
    path: &str,
    mut classify: impl FnMut(&str, &str) -> Option<T>,
) -> Option<Vec<Child<T>>> {
    let entries = fs::read_dir(dir).ok()?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        // The entry's type and inode (`d_type`, `d_ino`: on cgroupfs the inode number is the
        // cgroup id): no statx per child.
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let child = format!("{path}/{name}");
        let Some(what) = classify(&child, name) else {
            continue;
        };
        out.push(Child {
            path: child,
            ino: e.ino(),
            what,
        });
    }
    Some(out)
}
