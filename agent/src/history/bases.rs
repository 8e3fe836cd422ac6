//! A bounded ring of past [`Snapshot`]s for the readers that subtract a whole older snapshot
//! ("syscalls in the last minute", a port range's new flows per second, diagnose's rates): one
//! snapshot kept every `spacing`, for `keep`. Snapshots are immutable and shared (`Arc`), so
//! keeping one costs only what it holds.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use crate::model::Snapshot;

pub struct Bases {
    ring: Mutex<VecDeque<Arc<Snapshot>>>,
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

    /// Records `snap` if the newest kept one is at least `spacing` older; drops what is older
    /// than `keep`.
    pub fn push(&self, snap: Arc<Snapshot>) {
        let mut ring = self.ring.lock().expect("lock");
        let due = ring.back().is_none_or(|last| {
            snap.taken_at
                .duration_since(last.taken_at)
                .is_ok_and(|d| d >= self.spacing)
        });
        if due {
            ring.push_back(snap.clone());
        }
        while let Some(front) = ring.front() {
            match snap.taken_at.duration_since(front.taken_at) {
                Ok(age) if age > self.keep => {
                    ring.pop_front();
                }
                _ => break,
            }
        }
    }

    /// The oldest kept snapshot taken at or after `t` (the closest start for a window ending
    /// now); `None` when nothing that old or newer is kept.
    pub fn since(&self, t: SystemTime) -> Option<Arc<Snapshot>> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(at: u64) -> Arc<Snapshot> {
        Arc::new(Snapshot::empty(
            SystemTime::UNIX_EPOCH + Duration::from_secs(at),
        ))
    }

    #[test]
    fn snapshots_are_kept_at_the_spacing_and_for_the_keep_time() {
        let h = Bases::new(Duration::from_secs(5), Duration::from_secs(20));
        for t in 0..60 {
            h.push(snap(t));
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
}
