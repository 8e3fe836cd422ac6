//! berth under systemd without systemd: the tests bind the `NOTIFY_SOCKET` themselves and read
//! what the real agent sends (READY, WATCHDOG, STOPPING), stall its collector loop with the
//! debug-only switch to see the watchdog pings stop, check the journald log format, and run
//! `systemd-analyze verify` (which works without systemd as PID 1) on the shipped unit.

mod common;

use std::{
    fs,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Agent, wait_for};

/// A notify socket bound in a temporary directory, as systemd's would be.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Self {
            sock,
            path,
            _dir: dir,
        }
    }

    /// The next datagram arriving within `timeout`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    }

    /// Reads datagrams until one has the line `line`; returns that datagram, or panics with
    /// everything read after `timeout`.
    fn expect(&self, line: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(msg) = self.recv(deadline.saturating_duration_since(Instant::now())) {
            if msg.lines().any(|l| l == line) {
                return msg;
            }
            seen.push(msg);
        }
        panic!("no {line} within {timeout:?}; received {seen:?}");
    }

    /// Every datagram received within `window`.
    fn collect(&self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(msg) = self.recv(deadline.saturating_duration_since(Instant::now())) {
            out.push(msg);
        }
        out
    }
}

/// The agent with `NOTIFY_SOCKET` and a 400 ms watchdog (pings every 200 ms); `env` added.
fn agent_notifying(notify: &NotifySocket, env: &[(&str, &str)]) -> Agent {
    let mut agent = Agent::prepare("");
    agent
        .env
        .push(("NOTIFY_SOCKET".into(), notify.path.to_str().unwrap().into()));
    agent.env.push(("WATCHDOG_USEC".into(), "400000".into()));
    for (k, v) in env {
        agent.env.push(((*k).into(), (*v).into()));
    }
    agent.spawn();
    agent
}

#[test]
fn ready_watchdog_and_stopping_arrive_on_the_notify_socket() {
    let notify = NotifySocket::bind();
    let mut agent = agent_notifying(&notify, &[]);

    let ready = notify.expect("READY=1", Duration::from_secs(20));
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=serving on ")),
        "READY=1 without a STATUS: {ready:?}"
    );
    notify.expect("WATCHDOG=1", Duration::from_secs(5));

    let status = agent.stop();
    assert!(status.success(), "agent exit: {status}\n{}", agent.log());
    let stopping = notify.expect("STOPPING=1", Duration::from_secs(5));
    assert!(
        stopping.contains("STATUS=stopping on SIGTERM"),
        "{stopping:?}"
    );
}

#[test]
fn containers_never_see_the_notify_socket() {
    // runc, given NOTIFY_SOCKET, proxies it into the container: it binds a socket under its
    // state dir (here that bind fails, the path being over 108 bytes, and no container starts)
    // and hands the container NOTIFY_SOCKET. The agent must keep the variables to itself.
    let notify = NotifySocket::bind();
    let agent = agent_notifying(&notify, &[]);
    notify.expect("READY=1", Duration::from_secs(20));
    let rootfs = common::busybox_rootfs(agent.dir.path());
    let out = agent.ok(&[
        "run",
        "--rm",
        rootfs.to_str().unwrap(),
        "sh",
        "-c",
        "echo notify=${NOTIFY_SOCKET:-none} watchdog=${WATCHDOG_USEC:-none}",
    ]);
    assert_eq!(out.trim(), "notify=none watchdog=none", "{}", agent.log());
}

#[test]
fn a_watchdog_pid_naming_another_process_disables_the_pings() {
    let notify = NotifySocket::bind();
    let agent = agent_notifying(&notify, &[("WATCHDOG_PID", "1")]);
    notify.expect("READY=1", Duration::from_secs(20));
    let after = notify.collect(Duration::from_millis(1500));
    assert!(
        !after.iter().any(|m| m.contains("WATCHDOG=1")),
        "pinged for another process's watchdog: {after:?}"
    );
    let log = agent.log();
    assert!(!log.contains("systemd watchdog enabled"), "{log}");
}

// The stall switch exists only in debug builds (the release binary ignores it).
#[cfg(debug_assertions)]
#[test]
fn a_stalled_collector_loop_stops_the_watchdog_pings() {
    let notify = NotifySocket::bind();
    let agent = agent_notifying(&notify, &[("BERTH_TEST_STALL_COLLECTOR_AFTER_TICKS", "5")]);
    notify.expect("READY=1", Duration::from_secs(20));
    // Pings while the loop runs its first ticks.
    notify.expect("WATCHDOG=1", Duration::from_secs(5));

    wait_for(
        Duration::from_secs(10),
        "the watchdog to see the stall",
        || agent.log().contains("collector loop stalled").then_some(()),
    );
    // Whatever was sent before the stall was seen is already queued: drop it.
    while notify.recv(Duration::from_millis(50)).is_some() {}
    let after = notify.collect(Duration::from_secs(3));
    assert!(
        !after.iter().any(|m| m.lines().any(|l| l == "WATCHDOG=1")),
        "watchdog pinged during the stall: {after:?}"
    );
    // The process is alive and serving: only the loop stalled.
    assert_eq!(agent.get("/healthz").0, 200, "{}", agent.log());
}

#[test]
fn under_journald_lines_carry_a_priority_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt as _;
    let mut agent = Agent::prepare("");
    let log = fs::File::create(agent.log_path()).unwrap();
    let meta = log.metadata().unwrap();
    agent.env.push((
        "JOURNAL_STREAM".into(),
        format!("{}:{}", meta.dev(), meta.ino()),
    ));
    agent.spawn();
    let text = agent.log();
    assert!(
        text.lines().any(|l| l.starts_with("<6> INFO berth")),
        "no `<6> INFO berth...` line:\n{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with(|c: char| c.is_ascii_digit())),
        "timestamps under journald:\n{text}"
    );
    assert!(!text.contains('\x1b'), "ANSI escapes in the log:\n{text}");
    // Debug lines (BERTH_LOG=berth=debug in the tests) get priority 7.
    wait_for(Duration::from_secs(5), "a debug line", || {
        agent
            .log()
            .lines()
            .any(|l| l.starts_with("<7>"))
            .then_some(())
    });
}

/// Directives that give the agent a private mount namespace: a restarted agent would not see
/// the containers' overlay mounts (systemd.exec(5)).
const MOUNT_NAMESPACE_DIRECTIVES: &[&str] = &[
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateMounts",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "TemporaryFileSystem",
    "BindPaths",
    "BindReadOnlyPaths",
    "ProtectProc",
    "ProcSubset",
    "MountAPIVFS",
    "RootDirectory",
    "RootImage",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "PrivateNetwork",
    "RestrictNamespaces",
];

fn shipped_unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/berth.service");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `KEY=VALUE` lines of the unit, comments aside.
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn the_shipped_unit_is_notify_with_a_watchdog_and_no_mount_namespace() {
    let d = directives(&shipped_unit());
    let get = |k: &str| d.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(get("Type"), Some("notify"));
    assert_eq!(get("NotifyAccess"), Some("main"));
    assert!(get("WatchdogSec").is_some(), "no WatchdogSec=");
    assert_eq!(get("KillMode"), Some("process"));
    assert_eq!(get("Delegate"), Some("yes"));
    let found: Vec<&str> = MOUNT_NAMESPACE_DIRECTIVES
        .iter()
        .copied()
        .filter(|k| get(k).is_some())
        .collect();
    assert!(found.is_empty(), "mount-namespace directives: {found:?}");
}

#[test]
fn the_shipped_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart's binary exists: point it at the one under test.
    let unit = shipped_unit().replace("/usr/local/bin/berth", env!("CARGO_BIN_EXE_berth"));
    let path = dir.path().join("berth.service");
    fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is missing: install Debian's systemd (`cargo xtask setup` does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // verify exits 0 on unknown keys and bad values ("..., ignoring"): any line about our
    // unit is a finding.
    let findings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("berth.service"))
        .collect();
    assert!(findings.is_empty(), "systemd-analyze verify:\n{text}");
}

#[test]
fn systemd_analyze_verify_reports_a_bad_directive() {
    // The check above would pass vacuously if verify printed nothing about a broken unit.
    let dir = tempfile::tempdir().unwrap();
    let unit = shipped_unit()
        .replace("/usr/local/bin/berth", env!("CARGO_BIN_EXE_berth"))
        .replace("Type=notify", "Type=notifyy");
    let path = dir.path().join("berth.service");
    fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is missing");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.lines().any(|l| l.contains("berth.service")), "{text}");
}
