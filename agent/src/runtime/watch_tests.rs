use std::{
    io::Write as _,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use super::*;
use crate::runtime::store::write_json;

/// A process whose command line is `sh -c 'read -r line' <arg0> <arg1>`: with `shim` and a
/// container dir as the two arguments it passes for that container's shim. It waits on its
/// stdin; [`Proc::exit`] ends it. Killed and reaped on drop.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Proc {
    fn start(arg0: &str, arg1: &Path) -> Self {
        let mut child = Command::new("sh")
            .args(["-c", "read -r line"])
            .arg(arg0)
            .arg(arg1)
            .stdin(Stdio::piped())
            .spawn()
            .expect("starting sh (the test's stand-in for a shim)");
        let stdin = child.stdin.take();
        let p = Self { child, stdin };
        // Until sh has exec'd, /proc shows the test binary's command line.
        let deadline = Instant::now() + Duration::from_secs(5);
        let path = format!("/proc/{}/cmdline", p.pid());
        while !fs::read(&path)
            .unwrap_or_default()
            .split(|&b| b == 0)
            .any(|a| a == arg0.as_bytes())
        {
            assert!(
                Instant::now() < deadline,
                "sh never showed its command line"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it exit (a line on its stdin) and reaps it.
    fn exit(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = writeln!(s, "bye");
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the stand-in shim failed: {status}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn state(shim_pid: u32, running: bool) -> ShimState {
    ShimState {
        shim_pid,
        running,
        ..Default::default()
    }
}

/// Runs `check` on a watch with epoll and inotify and on one without (the statx fallback).
fn both(check: impl Fn(ShimWatch, &str)) {
    let w = ShimWatch::new();
    assert!(
        w.fds().is_some(),
        "epoll or inotify could not be created here: the watch fell back to statx"
    );
    check(w, "watched");
    check(ShimWatch::unwatched(), "statx fallback");
}

/// Lines of /proc/self/fdinfo/FD that start with `prefix`: the kernel's own list of an
/// inotify fd's watches (`inotify wd:`) or an epoll fd's registered fds (`tfd:`).
fn fdinfo_lines(fd: i32, prefix: &str) -> usize {
    fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .expect("reading /proc/self/fdinfo")
        .lines()
        .filter(|l| l.starts_with(prefix))
        .count()
}

#[test]
fn a_rewritten_state_file_is_seen_after_the_next_refresh() {
    both(|w, mode| {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_json(&p, &state(10, true)).unwrap();
        w.refresh();
        assert_eq!(w.state("c", &p), state(10, true), "{mode}");
        write_json(&p, &state(10, false)).unwrap();
        w.refresh();
        assert_eq!(w.state("c", &p), state(10, false), "{mode}");
        // Same size, same content shape: still a new file.
        write_json(&p, &state(11, false)).unwrap();
        w.refresh();
        assert_eq!(w.state("c", &p), state(11, false), "{mode}");
        assert_eq!(w.reads(), 3, "{mode}");
    });
}

#[test]
fn an_unchanged_state_file_is_not_read_again_and_watched_costs_no_statx() {
    both(|w, mode| {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_json(&p, &state(10, true)).unwrap();
        for _ in 0..5 {
            w.refresh();
            assert_eq!(w.state("c", &p), state(10, true), "{mode}");
        }
        assert_eq!(
            w.reads(),
            1,
            "{mode}: read once, then served from the cache"
        );
        let stats = if mode == "watched" { 0 } else { 5 };
        assert_eq!(w.stats(), stats, "{mode}: statx calls");
    });
}

#[test]
fn without_a_refresh_the_watched_state_is_the_last_one_taken_in() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("state.json");
    let w = ShimWatch::new();
    write_json(&p, &state(10, true)).unwrap();
    assert_eq!(w.state("c", &p), state(10, true));
    write_json(&p, &state(10, false)).unwrap();
    assert_eq!(
        w.state("c", &p),
        state(10, true),
        "a lookup until refreshed"
    );
    // Two writes between refreshes: the events wait in the queue, the latest is read.
    write_json(&p, &state(12, false)).unwrap();
    w.refresh();
    assert_eq!(w.state("c", &p), state(12, false));
    assert_eq!(w.reads(), 2);
}

#[test]
fn the_agents_own_write_is_seen_at_once_when_invalidated() {
    both(|w, mode| {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_json(&p, &state(10, true)).unwrap();
        assert_eq!(w.state("c", &p), state(10, true), "{mode}");
        write_json(&p, &state(10, false)).unwrap();
        w.invalidate("c");
        assert_eq!(w.state("c", &p), state(10, false), "{mode}");
    });
}

#[test]
fn a_removed_and_recreated_directory_is_watched_again() {
    both(|w, mode| {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("c");
        let p = dir.join("state.json");
        fs::create_dir(&dir).unwrap();
        write_json(&p, &state(10, true)).unwrap();
        assert_eq!(w.state("c", &p), state(10, true), "{mode}");
        fs::remove_dir_all(&dir).unwrap();
        w.refresh();
        assert_eq!(w.state("c", &p), ShimState::default(), "{mode}: gone");
        assert_eq!(
            w.registered().0,
            0,
            "{mode}: the deleted dir's watch is dropped"
        );
        fs::create_dir(&dir).unwrap();
        write_json(&p, &state(11, true)).unwrap();
        w.refresh();
        assert_eq!(w.state("c", &p), state(11, true), "{mode}: back");
        write_json(&p, &state(12, false)).unwrap();
        w.refresh();
        assert_eq!(w.state("c", &p), state(12, false), "{mode}: watched again");
    });
}

#[test]
fn a_missing_or_corrupt_state_file_reads_as_not_running() {
    both(|w, mode| {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        assert_eq!(w.state("c", &p), ShimState::default(), "{mode}");
        write_json(&p, &state(10, true)).unwrap();
        w.refresh();
        assert_eq!(w.state("c", &p), state(10, true), "{mode}");
        fs::remove_file(&p).unwrap();
        w.refresh();
        assert_eq!(w.state("c", &p), ShimState::default(), "{mode}");
        fs::write(&p, "{not json").unwrap();
        w.refresh();
        assert_eq!(w.state("c", &p), ShimState::default(), "{mode}");
        write_json(&p, &state(12, true)).unwrap();
        w.refresh();
        assert_eq!(w.state("c", &p), state(12, true), "{mode}");
    });
}

#[test]
fn a_tracked_shim_that_exits_is_reported_dead() {
    both(|w, mode| {
        let d = tempfile::tempdir().unwrap();
        let mut p = Proc::start("shim", d.path());
        assert!(w.alive("c", p.pid(), d.path()), "{mode}");
        assert!(
            w.tracked("c"),
            "pidfd_open failed on a live process of ours: this kernel lacks pidfds (Linux 5.3)"
        );
        w.refresh();
        assert!(
            w.alive("c", p.pid(), d.path()),
            "{mode}: a tracked live shim"
        );
        p.exit();
        w.refresh();
        assert!(!w.alive("c", p.pid(), d.path()), "{mode}");
        assert!(
            !w.tracked("c"),
            "{mode}: the pidfd of an exited shim is closed"
        );
        assert_eq!(w.registered().1, 0, "{mode}: and out of the epoll set");
        w.refresh();
        assert!(!w.alive("c", p.pid(), d.path()), "{mode}: still dead");
    });
}

#[test]
fn a_watched_shim_costs_no_poll_until_it_exits() {
    let d = tempfile::tempdir().unwrap();
    let w = ShimWatch::new();
    let (epoll, _) = w.fds().expect("epoll and inotify");
    let mut p = Proc::start("shim", d.path());
    assert!(w.alive("c", p.pid(), d.path()));
    assert_eq!(w.registered().1, 1, "its pidfd is in the epoll set");
    assert_eq!(
        fdinfo_lines(epoll, "tfd:"),
        2,
        "the inotify fd and the pidfd"
    );
    p.exit();
    assert!(
        w.alive("c", p.pid(), d.path()),
        "as of the last refresh: no poll of its own"
    );
    w.refresh();
    assert!(!w.alive("c", p.pid(), d.path()));
    assert_eq!(
        fdinfo_lines(epoll, "tfd:"),
        1,
        "the pidfd left the epoll set"
    );
}

#[test]
fn forgetting_an_entry_removes_its_inotify_watch_and_pidfd() {
    let w = ShimWatch::new();
    let (epoll, inotify) = w.fds().expect("epoll and inotify");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let procs: Vec<_> = dirs.iter().map(|d| Proc::start("shim", d.path())).collect();
    for (i, (d, p)) in dirs.iter().zip(&procs).enumerate() {
        let id = format!("c{i}");
        let path = d.path().join("state.json");
        write_json(&path, &state(p.pid(), true)).unwrap();
        assert_eq!(w.state(&id, &path), state(p.pid(), true));
        assert!(w.alive(&id, p.pid(), d.path()));
    }
    assert_eq!(w.registered(), (3, 3));
    assert_eq!(fdinfo_lines(inotify, "inotify wd:"), 3);
    assert_eq!(fdinfo_lines(epoll, "tfd:"), 4);
    w.forget("c0");
    assert_eq!(w.registered(), (2, 2));
    assert_eq!(fdinfo_lines(inotify, "inotify wd:"), 2);
    assert_eq!(fdinfo_lines(epoll, "tfd:"), 3);
    w.retain(|id| id == "c2");
    assert_eq!(w.registered(), (1, 1));
    assert_eq!(fdinfo_lines(inotify, "inotify wd:"), 1);
    assert_eq!(fdinfo_lines(epoll, "tfd:"), 2);
    w.forget("c2");
    assert_eq!(w.registered(), (0, 0));
    assert_eq!(fdinfo_lines(inotify, "inotify wd:"), 0);
    assert_eq!(fdinfo_lines(epoll, "tfd:"), 1, "the inotify fd alone");
    w.refresh();
    assert_eq!(w.len(), 0);
}

#[test]
fn a_pid_with_another_command_line_is_not_a_shim() {
    both(|w, mode| {
        let d = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let p = Proc::start("not-a-shim", d.path());
        assert!(!w.alive("c", p.pid(), d.path()), "{mode}");
        assert!(!w.tracked("c"), "{mode}");
        // A shim of another container (a pid reused by another shim) is not this one's.
        let q = Proc::start("shim", other.path());
        assert!(w.alive("o", q.pid(), other.path()), "{mode}");
        assert!(w.tracked("o"), "{mode}");
        assert!(!w.alive("c", q.pid(), d.path()), "{mode}");
        assert!(!w.alive("o", q.pid(), d.path()), "{mode}");
        assert!(!w.alive("c", 0, d.path()), "{mode}: pid 0 is never a shim");
    });
}

#[test]
fn entries_of_removed_containers_are_dropped() {
    both(|w, mode| {
        let d = tempfile::tempdir().unwrap();
        for id in ["a", "b", "c"] {
            write_json(&d.path().join(format!("{id}.json")), &state(1, false)).unwrap();
        }
        for id in ["a", "b", "c"] {
            w.state(id, &d.path().join(format!("{id}.json")));
        }
        assert_eq!(w.len(), 3, "{mode}");
        w.forget("a");
        assert_eq!(w.len(), 2, "{mode}");
        w.retain(|id| id == "b");
        assert_eq!(w.len(), 1, "{mode}");
        assert_eq!(w.reads(), 3, "{mode}");
        w.refresh();
        w.state("b", &d.path().join("b.json"));
        assert_eq!(w.reads(), 3, "{mode}: the kept entry is still cached");
        // Three entries shared one directory's watch: it stays while one uses it.
        let watched = usize::from(mode == "watched");
        assert_eq!(w.registered().0, watched, "{mode}");
        w.forget("b");
        assert_eq!(w.registered().0, 0, "{mode}");
    });
}

#[test]
fn a_running_containers_cgroup_id_is_found_once_per_state_read() {
    both(|w, mode| {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let finds = std::cell::Cell::new(0);
        let find = |id| {
            finds.set(finds.get() + 1);
            Some(id)
        };
        write_json(&p, &state(10, true)).unwrap();
        w.state("c", &p);
        assert_eq!(w.cgroup_id("c", || find(7)), Some(7), "{mode}");
        w.refresh();
        w.state("c", &p);
        assert_eq!(w.cgroup_id("c", || find(8)), Some(7), "{mode}: kept");
        assert_eq!(finds.get(), 1, "{mode}");
        // A new state (a restart): found again.
        write_json(&p, &state(11, true)).unwrap();
        w.refresh();
        w.state("c", &p);
        assert_eq!(w.cgroup_id("c", || find(9)), Some(9), "{mode}");
        // Not running: asked each time.
        write_json(&p, &state(11, false)).unwrap();
        w.refresh();
        w.state("c", &p);
        assert_eq!(w.cgroup_id("c", || None), None, "{mode}");
        assert_eq!(w.cgroup_id("c", || find(9)), Some(9), "{mode}");
        assert_eq!(w.cgroup_id("c", || None), None, "{mode}: not kept");
        assert_eq!(finds.get(), 3, "{mode}");
    });
}

/// The reaper skips a pass while the epoch stands still: it must move with every change a
/// pass could act on, stand still at rest, and be unknown where events cannot tell.
#[test]
fn the_epoch_stands_still_at_rest_and_moves_with_each_change() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("state.json");
    let w = ShimWatch::new();
    let mut shim = Proc::start("shim", d.path());
    write_json(&p, &state(shim.pid(), true)).unwrap();
    w.refresh();
    assert_eq!(w.state("c", &p), state(shim.pid(), true));
    assert!(w.alive("c", shim.pid(), d.path()));
    w.refresh();
    let rest = w
        .epoch()
        .expect("a watched entry with its shim in the epoll set");
    for _ in 0..3 {
        w.refresh();
        assert_eq!(w.state("c", &p), state(shim.pid(), true));
        assert!(w.alive("c", shim.pid(), d.path()));
        assert_eq!(w.epoch(), Some(rest), "nothing changed");
    }
    // The shim writes its state.
    write_json(&p, &state(shim.pid(), false)).unwrap();
    w.refresh();
    let after_write = w.epoch();
    assert_ne!(
        after_write,
        Some(rest),
        "a state write moves it (or makes it unknown)"
    );
    assert_eq!(w.state("c", &p), state(shim.pid(), false));
    let settled = w.epoch().expect("read again: settled");
    // The shim exits: its pidfd fires.
    shim.exit();
    w.refresh();
    assert_ne!(w.epoch(), Some(settled), "a shim's exit moves it");
    assert!(!w.alive("c", shim.pid(), d.path()));
    let settled = w.epoch();
    // The agent's own write, and a dropped entry.
    w.invalidate("c");
    assert_eq!(w.epoch(), None, "stale until read again");
    assert_eq!(w.state("c", &p), state(shim.pid(), false));
    assert!(w.epoch().is_some() && w.epoch() != settled);
    let before = w.epoch();
    w.forget("c");
    assert_ne!(w.epoch(), before, "forgetting moves it");
    // Without epoll and inotify nothing can be told from events.
    let unwatched = ShimWatch::unwatched();
    assert_eq!(unwatched.state("c", &p), state(shim.pid(), false));
    assert_eq!(unwatched.epoch(), None);
}
