//! `images`: the images in berth's store (its index files), for `/api/v1/images`, and the
//! store's pull counters, for `/metrics`.

use std::sync::Arc;

use super::{CollectError, Collected, Collector, Tick};
use crate::runtime::Manager;

pub struct Images {
    manager: Option<Arc<Manager>>,
}

impl Images {
    pub fn new(manager: Option<Arc<Manager>>) -> Self {
        Self { manager }
    }
}

impl Collector for Images {
    fn name(&self) -> &'static str {
        "images"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        let Some(m) = &self.manager else {
            return Ok(Collected::NotPresent);
        };
        tick.builder.snapshot.images = m.images.list()?;
        tick.builder.snapshot.pulls = m.images.pull_stats();
        Ok(Collected::Done)
    }
}
