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

#[test]
fn a_rewritten_state_file_is_seen_on_the_next_call() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("state.json");
    let w = ShimWatch::default();
    write_json(&p, &state(10, true)).unwrap();
    assert_eq!(w.state("c", &p), state(10, true));
    write_json(&p, &state(10, false)).unwrap();
    assert_eq!(w.state("c", &p), state(10, false));
    // Same size, same content shape: still a new file.
    write_json(&p, &state(11, false)).unwrap();
    assert_eq!(w.state("c", &p), state(11, false));
    assert_eq!(w.reads(), 3);
}

#[test]
fn an_unchanged_state_file_is_not_read_again() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("state.json");
    let w = ShimWatch::default();
    write_json(&p, &state(10, true)).unwrap();
    for _ in 0..5 {
        assert_eq!(w.state("c", &p), state(10, true));
    }
    assert_eq!(w.reads(), 1, "read once, then served from the cache");
}

#[test]
fn a_missing_or_corrupt_state_file_reads_as_not_running() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("state.json");
    let w = ShimWatch::default();
    assert_eq!(w.state("c", &p), ShimState::default());
    write_json(&p, &state(10, true)).unwrap();
    assert_eq!(w.state("c", &p), state(10, true));
    fs::remove_file(&p).unwrap();
    assert_eq!(w.state("c", &p), ShimState::default());
    fs::write(&p, "{not json").unwrap();
    assert_eq!(w.state("c", &p), ShimState::default());
    write_json(&p, &state(12, true)).unwrap();
    assert_eq!(w.state("c", &p), state(12, true));
}

#[test]
fn a_tracked_shim_that_exits_is_reported_dead() {
    let d = tempfile::tempdir().unwrap();
    let w = ShimWatch::default();
    let mut p = Proc::start("shim", d.path());
    assert!(w.alive("c", p.pid(), d.path()));
    assert!(
        w.tracked("c"),
        "pidfd_open failed on a live process of ours: this kernel lacks pidfds (Linux 5.3)"
    );
    assert!(w.alive("c", p.pid(), d.path()), "a tracked live shim");
    p.exit();
    assert!(!w.alive("c", p.pid(), d.path()));
    assert!(!w.tracked("c"), "the pidfd of an exited shim is closed");
}

#[test]
fn a_pid_with_another_command_line_is_not_a_shim() {
    let d = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let w = ShimWatch::default();
    let p = Proc::start("not-a-shim", d.path());
    assert!(!w.alive("c", p.pid(), d.path()));
    assert!(!w.tracked("c"));
    // A shim of another container (a pid reused by another shim) is not this one's.
    let q = Proc::start("shim", other.path());
    assert!(w.alive("o", q.pid(), other.path()));
    assert!(w.tracked("o"));
    assert!(!w.alive("c", q.pid(), d.path()));
    assert!(!w.alive("o", q.pid(), d.path()));
    assert!(!w.alive("c", 0, d.path()), "pid 0 is never a shim");
}

#[test]
fn entries_of_removed_containers_are_dropped() {
    let d = tempfile::tempdir().unwrap();
    let w = ShimWatch::default();
    for id in ["a", "b", "c"] {
        let p = d.path().join(format!("{id}.json"));
        write_json(&p, &state(1, false)).unwrap();
        w.state(id, &p);
    }
    assert_eq!(w.len(), 3);
    w.forget("a");
    assert_eq!(w.len(), 2);
    w.retain(|id| id == "b");
    assert_eq!(w.len(), 1);
    assert_eq!(w.reads(), 3);
    w.state("b", &d.path().join("b.json"));
    assert_eq!(w.reads(), 3, "the kept entry is still cached");
}
