//! The starts of windows for the readers that subtract an older state ("syscalls in the last
//! minute", a port range's new flows per second, diagnose's rates): a ring of [`Base`]s, each
//! cut when recorded to what those readers subtract (per container its busiest syscalls, per
//! published range its totals and costliest ports; see `model::ports::base`).
//!
//! Resolution: one start every `spacing` (5 s in the agent) for the last [`FINE`], then one
//! every [`COARSE`] up to `keep` (15 minutes): at most `FINE / spacing + keep / COARSE + 2`
//! starts (52 in the agent). A window's start is the oldest kept at or after `now - window`,
//! so a window longer than [`FINE`] is shortened by less than [`COARSE`] (the answer states
//! the seconds it covers). Bytes: at most that count times [`Base::bound_bytes`].

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use crate::model::{Snapshot, ports::Base};

/// How far back every start is kept.
pub const FINE: Duration = Duration::from_secs(120);
/// Spacing of the starts older than [`FINE`].
pub const COARSE: Duration = Duration::from_secs(30);

pub struct Bases {
    ring: Mutex<VecDeque<Arc<Base>>>,
    spacing: Duration,
    keep: Duration,
}

impl Bases {
    pub fn new(spacing: Duration, keep: Duration) -> Self {
        Self {
            ring: Mutex::new(VecDeque::new()),
            spacing,
            keep,
        }
    }

    /// The most starts the ring holds.
    pub fn capacity(&self) -> usize {
        let per = |span: Duration, step: Duration| {
            (span.as_secs_f64() / step.as_secs_f64().max(1e-3)).ceil() as usize
        };
        per(FINE.min(self.keep), self.spacing)
            + per(self.keep.saturating_sub(FINE), COARSE.max(self.spacing))
            + 2
    }

    /// Records the start of `snap` if the newest kept one is at least `spacing` older; thins
    /// the starts older than [`FINE`] to one per [`COARSE`] and drops those older than `keep`.
    pub fn push(&self, snap: &Snapshot) {
        let mut ring = self.ring.lock().expect("lock");
        let due = ring.back().is_none_or(|last| {
            snap.taken_at
                .duration_since(last.taken_at)
                .is_ok_and(|d| d >= self.spacing)
        });
        if due {
            let base = Base::of(snap, ring.back().map(|b| &**b));
            ring.push_back(Arc::new(base));
        }
        let now = snap.taken_at;
        let age = |b: &Base| now.duration_since(b.taken_at).unwrap_or_default();
        while ring.front().is_some_and(|b| age(b) > self.keep) {
            ring.pop_front();
        }
        let mut last_kept: Option<SystemTime> = None;
        ring.retain(|b| {
            let keep = age(b) <= FINE
                || last_kept
                    .is_none_or(|t| b.taken_at.duration_since(t).unwrap_or_default() >= COARSE);
            if keep {
                last_kept = Some(b.taken_at);
            }
            keep
        });
    }

    /// The oldest kept start at or after `t` (the closest start for a window ending now);
    /// `None` when nothing that old or newer is kept.
    pub fn since(&self, t: SystemTime) -> Option<Arc<Base>> {
        let ring = self.ring.lock().expect("lock");
        ring.iter().find(|s| s.taken_at >= t).cloned()
    }

    /// How far back the history reaches.
    pub fn span(&self) -> Duration {
        let ring = self.ring.lock().expect("lock");
        match (ring.front(), ring.back()) {
            (Some(a), Some(b)) => b.taken_at.duration_since(a.taken_at).unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }

    /// Starts kept, and the bytes they hold ([`Base::bytes`]).
    pub fn held(&self) -> (usize, usize) {
        let ring = self.ring.lock().expect("lock");
        let mut counted = std::collections::HashSet::new();
        (
            ring.len(),
            ring.capacity() * std::mem::size_of::<Arc<Base>>()
                + ring.iter().map(|b| b.bytes(&mut counted)).sum::<usize>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(at: u64) -> Snapshot {
        Snapshot::empty(SystemTime::UNIX_EPOCH + Duration::from_secs(at))
    }

    #[test]
    fn starts_are_kept_at_the_spacing_and_for_the_keep_time() {
        let h = Bases::new(Duration::from_secs(5), Duration::from_secs(20));
        for t in 0..60 {
            h.push(&snap(t));
        }
        // Kept: 40, 45, 50, 55 (and nothing older than 20 s before the last push at 59).
        assert_eq!(h.span(), Duration::from_secs(15));
        let s = h
            .since(SystemTime::UNIX_EPOCH + Duration::from_secs(42))
            .unwrap();
        assert_eq!(s.taken_at, SystemTime::UNIX_EPOCH + Duration::from_secs(45));
        assert!(
            h.since(SystemTime::UNIX_EPOCH + Duration::from_secs(56))
                .is_none()
        );
    }

    #[test]
    fn older_starts_are_thinned_to_the_coarse_step() {
        let h = Bases::new(Duration::from_secs(5), Duration::from_secs(900));
        for t in 0..=1800 {
            h.push(&snap(t));
        }
        let (n, _) = h.held();
        // 15 minutes back from 1800: every 5 s for the last 2 minutes (25 starts, 1680 to
        // 1800), then every 30 s (13 min: 26 starts).
        assert!(n <= h.capacity(), "{n} starts, capacity {}", h.capacity());
        assert!(n >= 25 + 26, "{n} starts");
        assert_eq!(h.capacity(), 24 + 26 + 2);
        assert_eq!(h.span(), Duration::from_secs(900));
        let at = |t: u64| {
            h.since(SystemTime::UNIX_EPOCH + Duration::from_secs(t))
                .map(|b| b.taken_at)
        };
        // A 10-minute window starts less than COARSE later than asked.
        let start = at(1200).unwrap();
        let late = start
            .duration_since(SystemTime::UNIX_EPOCH + Duration::from_secs(1200))
            .unwrap();
        assert!(late < COARSE, "{late:?}");
        // A 1-minute window starts where asked.
        assert_eq!(
            at(1740),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1740))
        );
    }
}
