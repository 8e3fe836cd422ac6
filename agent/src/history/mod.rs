//! What the agent remembers of past ticks, for every reader that asks about a window: the
//! query API and `berth top` (per-container series), `/api/v1/ports`, `diagnose` and
//! `syscalls?window=` (an older snapshot to subtract).
//!
//! Two stores, both fed only from the published snapshot (the collector loop in `daemon.rs`
//! calls [`History::push`] once per tick); readers only read:
//! - [`Series`] (`series.rs`): per container a fixed-size record of numbers per tick (CPU, memory,
//!   pids, network, syscalls, netfilter per hook, new flows), no snapshot clone. One point per
//!   tick (at most one per [`SeriesConfig::resolution`]) for the last 10 minutes, one per
//!   minute for the last hour; its memory is bounded by the container count
//!   ([`Series::bound_bytes`], documented in docs/api.md and checked by a test that fills it).
//! - [`Bases`] (`bases.rs`): whole snapshots, one every 5 s for 15 minutes, for the readers
//!   that need every detail of the window's start (per-syscall and per-port counters).
//!
//! Rates are computed at query time from counter deltas (`query.rs`): a counter that went
//! down restarted from zero (a new cgroup, a reloaded probe), so the increase is its value.

mod bases;
pub mod query;
pub mod series;
#[cfg(test)]
mod tests;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

pub use self::{
    bases::Bases,
    series::{Series, SeriesConfig},
};
use crate::model::Snapshot;

pub struct History {
    bases: Bases,
    series: Mutex<Series>,
}

impl History {
    /// Whole snapshots every `spacing` for `keep`, and the series with the default
    /// resolution ([`SeriesConfig::default`]).
    pub fn new(spacing: Duration, keep: Duration) -> Self {
        Self::with_series(spacing, keep, SeriesConfig::default())
    }

    pub fn with_series(spacing: Duration, keep: Duration, series: SeriesConfig) -> Self {
        Self {
            bases: Bases::new(spacing, keep),
            series: Mutex::new(Series::new(series)),
        }
    }

    /// Records a published snapshot in both stores.
    pub fn push(&self, snap: Arc<Snapshot>) {
        self.series.lock().expect("lock").record(&snap);
        self.bases.push(snap);
    }

    /// The oldest kept snapshot taken at or after `t`; see [`Bases::since`].
    pub fn since(&self, t: SystemTime) -> Option<Arc<Snapshot>> {
        self.bases.since(t)
    }

    /// Runs `f` on the series under their lock (readers compute their answer inside).
    pub fn with_series_read<T>(&self, f: impl FnOnce(&Series) -> T) -> T {
        f(&self.series.lock().expect("lock"))
    }
}
