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
//! - [`Bases`] (`bases.rs`): window starts for the readers that subtract one (per-syscall and
//!   per-port counters): each a [`Base`](crate::model::ports::Base) cut to the busiest
//!   syscalls per container and the costliest ports per range, one every 5 s for 2 minutes
//!   then one every 30 s up to 15 minutes; bounded by the container and range count
//!   ([`History::bases_bound_bytes`], documented in docs/api.md, checked by a test that fills
//!   it).
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
use crate::model::{Snapshot, ports::Base};

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
        self.bases.push(&snap);
    }

    /// The oldest kept window start taken at or after `t`; see [`Bases::since`].
    pub fn since(&self, t: SystemTime) -> Option<Arc<Base>> {
        self.bases.since(t)
    }

    /// Window starts kept, and the bytes they hold.
    pub fn bases_held(&self) -> (usize, usize) {
        self.bases.held()
    }

    /// The most bytes the window starts can hold for `containers` containers publishing
    /// distinct ranges of `range_ports` ports each ([`Base::bound_bytes`] per start).
    pub fn bases_bound_bytes(&self, containers: usize, range_ports: &[usize]) -> usize {
        self.bases.capacity()
            * (Base::bound_bytes(containers, range_ports) + std::mem::size_of::<Arc<Base>>())
            + std::mem::size_of::<Arc<Base>>()
    }

    /// Runs `f` on the series under their lock (readers compute their answer inside).
    pub fn with_series_read<T>(&self, f: impl FnOnce(&Series) -> T) -> T {
        f(&self.series.lock().expect("lock"))
    }
}
