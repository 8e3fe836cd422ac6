//! sd_notify(3) for a `Type=notify` unit: one datagram per state change (`READY=1`,
//! `STOPPING=1`, `WATCHDOG=1`, `STATUS=...`) to the Unix socket named by `NOTIFY_SOCKET`
//! (abstract when it starts with `@`), and the watchdog interval from `WATCHDOG_USEC`.
//!
//! Written on std's `UnixDatagram` rather than the `sd-notify` crate (0.5): the protocol is one
//! `sendto`, and the variables must leave the environment before anything is spawned, which
//! [`Notifier::take_from_env`] does in one place. The shims and the OCI runtime inherit the
//! agent's environment: runc seeing `NOTIFY_SOCKET` would wait for the container itself to
//! report ready (its systemd-in-container support), and a container could ping our watchdog.
//! Protocol: <https://www.freedesktop.org/software/systemd/man/sd_notify.html>.

use std::{
    ffi::OsString,
    os::unix::net::UnixDatagram,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{info, warn};

/// Where to send notifications; `None` from [`Notifier::take_from_env`] outside systemd.
#[derive(Debug)]
pub struct Notifier {
    socket: OsString,
    /// `WATCHDOG_USEC`, when the watchdog is enabled for this process (`WATCHDOG_PID` unset
    /// or ours).
    pub watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads and removes `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    ///
    /// # Safety
    /// Changes the environment: call it before any other thread exists.
    pub unsafe fn take_from_env() -> Option<Self> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        for v in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            // SAFETY: the caller guarantees no other thread reads the environment.
            unsafe { std::env::remove_var(v) };
        }
        let socket = socket.filter(|s| !s.is_empty())?;
        let ours = pid.is_none_or(|p| p.trim() == std::process::id().to_string());
        let watchdog = usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            .map(Duration::from_micros);
        Some(Self { socket, watchdog })
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines) in one datagram.
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt as _;
        let sock = UnixDatagram::unbound()?;
        let bytes = self.socket.as_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &self.socket)?;
        }
        Ok(())
    }
}

/// When the collector loop last published a snapshot: the watchdog's proof of life.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Heartbeat {
    /// The collector loop completed a tick now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last [`Heartbeat::beat`] (or since creation).
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Sends `WATCHDOG=1` every half watchdog period while the collector loop has published a
/// snapshot within `max(2 x interval, half the period)`. A stalled loop stops the pings, and
/// systemd restarts the agent once a whole period (`WatchdogSec=`) passes without one; a single
/// slow collection only skips a ping. `None` when the watchdog is not enabled.
pub fn spawn_watchdog(
    notifier: Arc<Notifier>,
    heartbeat: Heartbeat,
    interval: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    let period = notifier.watchdog?;
    let every = period / 2;
    let stale = (interval * 2).max(every);
    info!(?period, ?stale, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stalled = false;
        loop {
            tick.tick().await;
            let age = heartbeat.age();
            if age <= stale {
                if stalled {
                    info!(?age, "collector loop running again: watchdog pings resume");
                }
                stalled = false;
                if let Err(e) = notifier.notify("WATCHDOG=1") {
                    warn!(error = %e, "cannot send WATCHDOG=1 to NOTIFY_SOCKET");
                }
            } else if !stalled {
                stalled = true;
                warn!(
                    ?age,
                    ?stale,
                    "collector loop stalled: watchdog pings withheld"
                );
            }
        }
    }))
}

/// Test-only: `BERTH_TEST_STALL_COLLECTOR_AFTER_TICKS=N` makes the collector loop stop
/// publishing after N ticks, so a test can watch the watchdog pings stop. Read only in debug
/// builds (the integration tests'); release builds, which `cargo xtask install` ships, ignore it.
pub fn test_stall_after_ticks() -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let n = std::env::var("BERTH_TEST_STALL_COLLECTOR_AFTER_TICKS")
        .ok()?
        .parse()
        .ok()?;
    warn!(ticks = n, "test switch: the collector loop will stall");
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_arrives_as_one_datagram_on_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: path.into_os_string(),
            watchdog: None,
        };
        n.notify("READY=1\nSTATUS=up").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");
    }

    #[test]
    fn an_at_sign_names_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("berth-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            socket: format!("@{name}").into(),
            watchdog: None,
        };
        n.notify("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }
}
