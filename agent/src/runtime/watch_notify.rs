//! The kernel side of the shim watch ([`super`]): inotify watches on container directories
//! (shared by the entries of one directory, removed with the last), pidfds in the epoll set,
//! and the reading of inotify events into stale marks.

use std::{collections::HashMap, os::fd::AsFd as _, path::Path};

use nix::{
    errno::Errno,
    sys::{
        epoll::{EpollEvent, EpollFlags},
        inotify::{AddWatchFlags, WatchDescriptor},
    },
};
use tracing::warn;

use super::{Entry, Notify, Tracked, Watch, mark_all_stale, watch_mask};

impl Notify {
    /// Watches the directory of `path` for entry `id`.
    pub(super) fn watch(&mut self, id: &str, path: &Path) -> Watch {
        let Some(inotify) = &self.inotify else {
            return Watch::Unavailable;
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        match inotify.add_watch(dir, watch_mask()) {
            Ok(wd) => {
                let ids = self.watches.entry(wd).or_default();
                if !ids.iter().any(|i| i == id) {
                    ids.push(id.to_owned());
                }
                Watch::Active(wd)
            }
            // Not there (yet, or any more): statx says so this time; tried again next time.
            Err(Errno::ENOENT | Errno::ENOTDIR) => Watch::Untried,
            Err(e) => {
                if !self.warned_watch {
                    self.warned_watch = true;
                    warn!(error = %e, dir = %dir.display(), "cannot watch a container \
                          directory (fs.inotify.max_user_watches?): its state.json is checked \
                          with statx on each read");
                }
                Watch::Unavailable
            }
        }
    }

    /// Takes entry `id` off watch `wd`; the watch itself goes with its last entry.
    pub(super) fn unwatch(&mut self, id: &str, wd: WatchDescriptor) {
        let Some(ids) = self.watches.get_mut(&wd) else {
            return;
        };
        ids.retain(|i| i != id);
        if ids.is_empty() {
            self.watches.remove(&wd);
            if let Some(i) = &self.inotify {
                let _ = i.rm_watch(wd);
            }
        }
    }

    /// Puts a tracked shim's pidfd into the epoll set; it is polled on each check otherwise.
    pub(super) fn register(&mut self, id: &str, t: &mut Tracked) {
        let token = self.next_token;
        if self
            .epoll
            .add(t.pidfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
            .is_ok()
        {
            self.next_token += 1;
            self.pidfds.insert(token, id.to_owned());
            t.token = Some(token);
        }
    }

    /// Reads every queued inotify event and marks what they name stale.
    pub(super) fn take_inotify(&mut self, entries: &mut HashMap<String, Entry>) {
        let Some(inotify) = &self.inotify else { return };
        loop {
            let events = match inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!(error = %e, "reading inotify failed: the shims' state files are \
                          checked with statx from now on");
                    let _ = self.epoll.delete(inotify.as_fd());
                    self.inotify = None;
                    self.watches.clear();
                    for e in entries.values_mut() {
                        e.watch = Watch::Unavailable;
                        e.stale = true;
                    }
                    return;
                }
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    mark_all_stale(entries);
                    continue;
                }
                let gone = ev
                    .mask
                    .intersects(AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF)
                    || ev.mask.contains(AddWatchFlags::IN_MOVE_SELF);
                let Some(ids) = (if gone {
                    self.watches.remove(&ev.wd)
                } else {
                    self.watches.get(&ev.wd).cloned()
                }) else {
                    continue;
                };
                if gone && !ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // Moved or deleted: the kernel drops a deleted dir's watch itself.
                    if let Some(i) = &self.inotify {
                        let _ = i.rm_watch(ev.wd);
                    }
                }
                for id in &ids {
                    if let Some(e) = entries.get_mut(id)
                        && (gone || ev.name.as_deref() == Some(e.name.as_os_str()))
                    {
                        e.stale = true;
                        if gone {
                            e.watch = Watch::Untried;
                        }
                    }
                }
            }
        }
    }
}
