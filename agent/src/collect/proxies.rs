//! `proxies`: userland port-mapping proxies (docker-proxy and kin) from a procfs scan: how many
//! run, their resident memory and CPU time.

use std::path::PathBuf;

use super::{CollectError, Collected, Collector, Tick};

pub struct Proxies {
    proc: PathBuf,
}

impl Proxies {
    pub fn new(proc: impl Into<PathBuf>) -> Self {
        Self { proc: proc.into() }
    }
}

impl Collector for Proxies {
    fn name(&self) -> &'static str {
        "proxies"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        tick.builder.snapshot.proxies = crate::discover::proxies::scan(&self.proc);
        Ok(Collected::Done)
    }
}
