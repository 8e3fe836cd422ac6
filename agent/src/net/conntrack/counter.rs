//! The conntrack entries per IPv4 address of the calling thread's network namespace, kept up
//! to date from ctnetlink events, so the cost follows the flow churn rather than the table size
//! (reading the whole text table every 5 s cost ~0.33% of a core at 6,000 entries here; this
//! costs ~0.12% at 200 new flows a second, ~0.05% on a table whose old entries live on, and
//! nothing on a quiet one).
//!
//! How:
//! 1. Subscribe to the NEW and DESTROY groups first, then dump the table: every entry of the
//!    dump is counted once per distinct address of its two tuples and remembered by id
//!    (`CTA_ID`) with its addresses (~50 bytes an entry). Events queued meanwhile are applied
//!    after the dump: a NEW for an id already counted is not counted again, a DESTROY for an
//!    unknown id is ignored. UPDATE events are not subscribed to.
//! 2. Then +1 per address on NEW, -1 on DESTROY. The thread sleeps in `poll` between events
//!    and lets them gather for [`Tuning::coalesce`] after each wake (a busy table costs a few
//!    wakes a second, not one per event); at rest nothing runs beyond one sysctl read every
//!    [`Tuning::verify_max`].
//! 3. Lost events (`ENOBUFS`: the socket buffer, 8 MiB forced as root, overflowed) or a dump
//!    that failed: the queued events are thrown away and the table dumped again.
//!
//! Two kernel rules shape the rest:
//! - `net.netfilter.nf_conntrack_events = 0` turns events off: the counts then come from a full
//!   dump every [`Tuning::poll_every`] (logged at start). The sysctl is read again at every
//!   check and the mode follows it.
//! - With the default `2` ("only while someone listens") an entry created while nobody listened
//!   never sends any event, DESTROY included (`nf_ct_ecache_ext_add`,
//!   net/netfilter/nf_conntrack_ecache.c; the tests show it). So entries known only from a dump
//!   stay "seeded", with their original tuple, until an event names them. While some remain
//!   they are checked [`Tuning::verify_every`] after the dump, then with a gap doubling up to
//!   [`Tuning::verify_max`], and never more than [`Tuning::check_share`] of a core (so such an
//!   entry may be counted for up to a minute after it ended, longer on a table whose dump is
//!   costly; every entry younger than the subscription is exact): looked up one by one by tuple
//!   (`IPCTNL_MSG_CT_GET`: one hash probe each) and dropped when gone; above
//!   [`Tuning::lookup_max`] of them a dump checks them all at once. A dump is not cheap here:
//!   it walks and locks every hash bucket (~26 ms of CPU at 262,144 buckets and 5,700 entries,
//!   twice the text table's read), which is why nothing dumps periodically while events flow.
//!   The checks end once the entries older than the subscription have all ended.
//!
//! `poll` also watches a socket pair whose other end the [`Counter`] holds: dropping the
//! counter ends the thread at once, and a change of [`Counter::set_wanted`] wakes it. While
//! not wanted (no container has an address) the netlink socket is closed and the counts are
//! unknown.

use std::{
    collections::HashSet,
    fs,
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use super::{
    ctnetlink::{self, Events, Lookup},
    tally::Tally,
};

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; the clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The shortest gap after a check that took `spent` of CPU for the checks to stay within
/// `share` of a core.
fn cost_floor(spent: Duration, share: f64) -> Duration {
    if share <= 0.0 || !share.is_finite() {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(spent.as_secs_f64() / share).unwrap_or(Duration::MAX)
}

/// Timing of the counter thread.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// How soon the entries known only from a dump are first checked; the gap then doubles.
    pub verify_every: Duration,
    /// The longest gap between checks, and the period of the sysctl's re-read once no such
    /// entry is left.
    pub verify_max: Duration,
    /// How long events gather after a wake before the next.
    pub coalesce: Duration,
    /// How often the table is dumped when events are off.
    pub poll_every: Duration,
    /// The event socket's receive buffer.
    pub rcvbuf: usize,
    /// Above this many seeded entries a check dumps the table rather than looking each up.
    pub lookup_max: usize,
    /// The share of one core the checks of seeded entries may take: the gap after a check
    /// is at least its CPU time over this share (a big table's dump spaces the checks out).
    pub check_share: f64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            // Checks at 5, 15, 35 and 75 s, then once a minute, spaced further when a check is
            // costly (`check_share`): a dead entry older than the counter counts for a minute
            // or, after a dump of a big table, a few minutes.
            verify_every: Duration::from_secs(5),
            verify_max: Duration::from_secs(60),
            // Five wakes a second at most under churn, well within a tick.
            coalesce: Duration::from_millis(200),
            // The interval of the text-table reader this replaced.
            poll_every: Duration::from_secs(5),
            // ~25,000 events of a burst at ~330 bytes of socket memory each.
            rcvbuf: 8 << 20,
            // A dump walks every hash bucket (~26 ms at 262,144 buckets here, however few the
            // entries); a lookup is one hash probe and a round trip of ~6 µs.
            lookup_max: 2_000,
            // 0.02% of a core: a 26 ms dump is followed by 130 s without one; a few hundred
            // lookups (~2 ms) stay on the schedule above.
            check_share: 0.0002,
        }
    }
}

type Shared = Arc<Mutex<Option<Tally>>>;

fn lock(s: &Shared) -> MutexGuard<'_, Option<Tally>> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The thread that keeps a [`Tally`] of its namespace; it ends when this is dropped.
pub struct Counter {
    shared: Shared,
    wanted: Arc<AtomicBool>,
    losses: Arc<AtomicU64>,
    wake: UnixStream,
}

impl Counter {
    /// Starts counting in the calling thread's network namespace. `proc` is the procfs root
    /// the sysctl is read from (`<proc>/sys/net/netfilter/nf_conntrack_events`).
    pub fn start(proc: &Path, tuning: Tuning) -> io::Result<Self> {
        let (wake, theirs) = UnixStream::pair()?;
        theirs.set_nonblocking(true)?;
        let shared: Shared = Arc::default();
        let wanted = Arc::new(AtomicBool::new(true));
        let losses = Arc::new(AtomicU64::new(0));
        let mut worker = Worker {
            shared: Arc::clone(&shared),
            wanted: Arc::clone(&wanted),
            losses: Arc::clone(&losses),
            wake: theirs,
            sysctl: proc.join("sys/net/netfilter/nf_conntrack_events"),
            tuning,
            live: None,
            gap: tuning.verify_every,
        };
        thread::Builder::new()
            .name("berth-conntrack".into())
            .spawn(move || worker.run())?;
        Ok(Self {
            shared,
            wanted,
            losses,
            wake,
        })
    }

    /// Whether counting is wanted; when not, the socket is closed and the counts unknown.
    pub fn set_wanted(&self, wanted: bool) {
        if self.wanted.swap(wanted, Ordering::Relaxed) != wanted {
            let _ = (&self.wake).write(&[1]);
        }
    }

    /// `f` over the current counts; `None` until the first dump has landed.
    /// How many times events were lost (and the counts rebuilt from a dump).
    pub fn losses(&self) -> u64 {
        self.losses.load(Ordering::Relaxed)
    }

    pub fn with<R>(&self, f: impl FnOnce(&Tally) -> R) -> Option<R> {
        lock(&self.shared).as_ref().map(f)
    }
}

/// How the counts are kept.
enum Live {
    Events(Events),
    Polling,
}

struct Worker {
    shared: Shared,
    wanted: Arc<AtomicBool>,
    losses: Arc<AtomicU64>,
    wake: UnixStream,
    sysctl: PathBuf,
    tuning: Tuning,
    /// `None` while not wanted; the next periodic check.
    live: Option<(Live, Instant)>,
    /// The current gap between checks.
    gap: Duration,
}

enum Woke {
    Gone,
    Nudged,
    Readable,
    Timeout,
}

impl Worker {
    fn run(&mut self) {
        loop {
            if !self.wanted.load(Ordering::Relaxed) {
                if self.live.take().is_some() {
                    *lock(&self.shared) = None;
                    debug!("conntrack counter closed: no container has an address");
                }
                if let Woke::Gone = self.wait(None, None) {
                    return;
                }
                continue;
            }
            if self.live.is_none() {
                let live = self.open();
                self.gap = self.period_of(&live);
                self.live = Some((live, Instant::now() + self.gap));
            }
            let (fd, due) = match &self.live {
                Some((Live::Events(e), due)) => (Some(e.fd()), *due),
                Some((Live::Polling, due)) => (None, *due),
                None => continue,
            };
            match self.wait(fd, Some(due)) {
                Woke::Gone => return,
                Woke::Nudged | Woke::Timeout => {}
                Woke::Readable => {
                    self.drain();
                    // Let events gather, so a busy table costs a few wakes a second rather than
                    // one per event; a drop still ends the thread at once.
                    let until = Instant::now() + self.tuning.coalesce;
                    if let Woke::Gone = self.wait(None, Some(until)) {
                        return;
                    }
                }
            }
            // Due whether or not events kept the socket busy meanwhile.
            if self.wanted.load(Ordering::Relaxed) && Instant::now() >= due {
                self.check();
            }
        }
    }

    fn period_of(&self, live: &Live) -> Duration {
        match live {
            Live::Polling => self.tuning.poll_every,
            Live::Events(_) => self.tuning.verify_every,
        }
    }

    /// Whether events are on (the sysctl is not 0); unreadable counts as on.
    fn events_on(&self) -> bool {
        fs::read_to_string(&self.sysctl).map_or(true, |s| s.trim() != "0")
    }

    /// Subscribes (events on) and seeds the counts with a dump.
    fn open(&mut self) -> Live {
        let live = if self.events_on() {
            match Events::subscribe(self.tuning.rcvbuf) {
                Ok(e) => Live::Events(e),
                Err(e) => {
                    warn!(error = %e, "conntrack events not subscribed: counting by a full dump every {:?}", self.tuning.poll_every);
                    Live::Polling
                }
            }
        } else {
            info!(
                sysctl = %self.sysctl.display(),
                "conntrack events are off (nf_conntrack_events = 0): counting by a full dump every {:?}",
                self.tuning.poll_every
            );
            Live::Polling
        };
        self.seed();
        live
    }

    /// Replaces the counts with a fresh dump (every entry seeded); on failure they become
    /// unknown until the next check.
    fn seed(&self) {
        let mut tally = Tally::default();
        match ctnetlink::dump(|f| tally.add(f, true)) {
            Ok(()) => {
                debug!(entries = tally.len(), "conntrack counts seeded");
                *lock(&self.shared) = Some(tally);
            }
            Err(e) => {
                warn!(error = %e, "conntrack dump failed; trying again at the next check");
                *lock(&self.shared) = None;
            }
        }
    }

    /// Applies every queued event; a loss re-seeds.
    fn drain(&mut self) {
        let Some((Live::Events(events), _)) = &mut self.live else {
            return;
        };
        let mut batch = Vec::new();
        let lost = loop {
            match events.queued() {
                Ok(Some(evs)) => batch.extend(evs),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = lost {
            warn!(error = %e, "conntrack events lost: counting again from a dump");
            events.discard_queued();
            self.losses.fetch_add(1, Ordering::Relaxed);
            self.seed();
            return;
        }
        if let Some(t) = lock(&self.shared).as_mut() {
            for ev in &batch {
                t.apply(ev);
            }
        }
    }

    /// The periodic check: follow the sysctl, re-dump when polling or unseeded, and drop the
    /// seeded entries that are gone.
    fn check(&mut self) {
        let on = self.events_on();
        let polling = matches!(self.live, Some((Live::Polling, _)));
        if on == polling {
            // The mode changed (or a subscription failed earlier): start over.
            self.live = None;
            return;
        }
        let t = self.tuning;
        self.gap = if polling {
            self.seed();
            t.poll_every
        } else if lock(&self.shared).is_none() {
            self.seed();
            t.verify_every
        } else {
            let seeded = lock(&self.shared).as_ref().map_or(0, Tally::seeded);
            let started = thread_cpu();
            let removed = if seeded > t.lookup_max {
                self.verify_by_dump()
            } else if seeded > 0 {
                self.verify_by_lookup()
            } else {
                0
            };
            let next = if seeded == removed {
                t.verify_max
            } else {
                // Doubling whether or not some ended: on a host where old entries keep ending
                // one by one, checking again at once meant a dump every few seconds.
                (self.gap * 2).clamp(t.verify_every, t.verify_max)
            };
            next.max(cost_floor(
                thread_cpu().saturating_sub(started),
                t.check_share,
            ))
        };
        if let Some((_, due)) = &mut self.live {
            *due = Instant::now() + self.gap;
        }
    }

    /// Drops the seeded entries a fresh dump no longer shows; returns how many.
    fn verify_by_dump(&self) -> usize {
        let mut alive = HashSet::new();
        match ctnetlink::dump(|f| {
            alive.insert(f.id);
        }) {
            Ok(()) => {
                let mut guard = lock(&self.shared);
                let Some(t) = guard.as_mut() else { return 0 };
                let before = t.len();
                t.retain_seeded(&alive);
                debug!(
                    seeded = t.seeded(),
                    "entries older than the counter checked by a dump"
                );
                before - t.len()
            }
            Err(e) => {
                warn!(error = %e, "conntrack dump failed; trying again at the next check");
                0
            }
        }
    }

    /// Drops the seeded entries the kernel no longer finds by their original tuple (or finds
    /// under another id: a new entry, which its NEW event counts); returns how many.
    fn verify_by_lookup(&self) -> usize {
        let keys = lock(&self.shared)
            .as_ref()
            .map(Tally::seeded_keys)
            .unwrap_or_default();
        let gone = Lookup::new().and_then(|mut l| {
            let mut gone = Vec::new();
            for (id, key) in &keys {
                if l.id_of(key)? != Some(*id) {
                    gone.push(*id);
                }
            }
            Ok(gone)
        });
        match gone {
            Ok(gone) => {
                let mut guard = lock(&self.shared);
                let Some(t) = guard.as_mut() else { return 0 };
                let before = t.len();
                t.remove_seeded(&gone);
                debug!(
                    seeded = t.seeded(),
                    "entries older than the counter looked up"
                );
                before - t.len()
            }
            Err(e) => {
                warn!(error = %e, "conntrack lookup failed; trying again at the next check");
                0
            }
        }
    }

    /// Sleeps until the wake socket or `fd` is readable, or until `due`.
    fn wait(&mut self, fd: Option<RawFd>, due: Option<Instant>) -> Woke {
        let mut fds = vec![libc::pollfd {
            fd: self.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(fd) = fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = due.map_or(-1, |due| {
            let ms = due.saturating_duration_since(Instant::now()).as_millis();
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        });
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if rc < 0 {
            return Woke::Nudged;
        }
        if fds[0].revents != 0 {
            let mut b = [0u8; 64];
            return match self.wake.read(&mut b) {
                Ok(0) => Woke::Gone,
                Ok(_) => Woke::Nudged,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Woke::Nudged,
                Err(_) => Woke::Gone,
            };
        }
        if fds.get(1).is_some_and(|p| p.revents != 0) {
            return Woke::Readable;
        }
        if rc == 0 { Woke::Timeout } else { Woke::Nudged }
    }
}

#[cfg(test)]
#[path = "counter_tests.rs"]
mod tests;
