//! `conntrack`: the host's connection tracking from procfs (`nf_conntrack_count`/`_max`, the
//! per-CPU statistics) and the current entries per container address (bridge mode), read
//! after the containers so each gets its count. Not loaded on this host: not present.
//!
//! The host-wide numbers are a few small files, read every tick. The entries per address need
//! the whole table (`/proc/net/nf_conntrack`, one text line per flow: ~20 ms for 6,000 flows
//! here, and a media server holds hundreds of thousands), so a counter thread reads it every
//! [`COUNT_EVERY`] while some container has an address, and the tick takes its latest result.
//! The thread inherits the agent's network namespace (the table is per namespace) and ends
//! with the collector.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use super::{CollectError, Collected, Collector, Tick};
use crate::net::conntrack;

/// How often the counter thread reads the whole table.
pub const COUNT_EVERY: Duration = Duration::from_secs(5);

pub struct Conntrack {
    proc: PathBuf,
    counter: Option<Counter>,
}

impl Conntrack {
    pub fn new(proc: impl Into<PathBuf>) -> Self {
        Self {
            proc: proc.into(),
            counter: None,
        }
    }
}

impl Collector for Conntrack {
    fn name(&self) -> &'static str {
        "conntrack"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let snap = &mut tick.builder.snapshot;
        snap.conntrack = conntrack::host_stats(&self.proc);
        if snap.conntrack.is_none() {
            return Ok(Collected::NotPresent);
        }
        let wanted = snap.containers.iter().any(|c| c.network.ip.is_some());
        if wanted && self.counter.is_none() {
            self.counter = Counter::start(&self.proc);
        }
        let Some(counter) = &self.counter else {
            return Ok(Collected::Done);
        };
        counter.wanted.store(wanted, Ordering::Relaxed);
        // Until the first count lands, the entries are unknown rather than zero.
        if let Some(by_ip) = counter.latest() {
            for c in &mut snap.containers {
                c.conntrack_entries = c.network.ip.map(|ip| by_ip.get(&ip).copied().unwrap_or(0));
            }
        }
        Ok(Collected::Done)
    }
}

/// Entries per address, as one read of the table counted them.
type ByIp = Arc<HashMap<Ipv4Addr, u64>>;

/// The thread that counts entries per address, and its latest count.
struct Counter {
    latest: Arc<Mutex<Option<ByIp>>>,
    wanted: Arc<AtomicBool>,
    /// Dropped with the collector: the thread sees it and ends.
    _alive: Arc<()>,
}

impl Counter {
    fn start(proc: &Path) -> Option<Self> {
        let latest = Arc::new(Mutex::new(None));
        let wanted = Arc::new(AtomicBool::new(true));
        let alive = Arc::new(());
        let (l, w, a, proc) = (
            Arc::clone(&latest),
            Arc::clone(&wanted),
            Arc::downgrade(&alive),
            proc.to_owned(),
        );
        thread::Builder::new()
            .name("berth-conntrack".into())
            .spawn(move || {
                while a.upgrade().is_some() {
                    if w.load(Ordering::Relaxed) {
                        let counts = Arc::new(conntrack::entries_by_ip(&proc));
                        *l.lock().unwrap_or_else(|e| e.into_inner()) = Some(counts);
                    }
                    // Short sleeps, so a dropped collector ends the thread promptly.
                    for _ in 0..COUNT_EVERY.as_millis() / 100 {
                        if a.strong_count() == 0 {
                            return;
                        }
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "conntrack counter thread not started"))
            .ok()?;
        Some(Self {
            latest,
            wanted,
            _alive: alive,
        })
    }

    fn latest(&self) -> Option<ByIp> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
