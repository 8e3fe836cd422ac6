//! Container lifecycle: run, stop, kill, rm, update, inspect, logs, stats, and recovery of
//! every container after an agent restart or crash.
//!
//! Isolation is the OCI runtime's job ([`oci`]); berth writes the bundle ([`bundle`]), mounts an
//! overlay ([`mount`]: image or directory as the read-only lower layer, a per-container upper
//! layer), owns the cgroup limits ([`crate::cgroup::limits`]) and keeps state in the [`store`],
//! intent first. Each container is watched by its own [`shim`] process, which outlives the
//! agent; on start the agent re-adopts them ([`recover`]).
//!
//! One lifecycle verb per file, each an `impl Manager` block: [`run`], [`stop`], [`kill`],
//! [`remove`], [`update`], [`recover`]; exits handled after the fact (`--rm`, lost shims) in
//! [`reap`]; reads in [`view`], through a cache of what the shims say ([`watch`]); request
//! validation in [`request`].

pub mod bundle;
mod error;
mod id;
mod kill;
mod mount;
pub mod oci;
mod reap;
mod recover;
mod remove;
mod request;
mod run;
pub mod seccomp;
pub mod shim;
mod stop;
pub mod store;
mod update;
mod view;
mod watch;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Mutex, RwLock},
};

pub use self::{
    error::RuntimeError, reap::AUTO_REMOVE_GRACE, request::RunRequest, view::ContainerView,
};
use self::{
    oci::OciRuntime,
    store::{ContainerRecord, Store},
};
use crate::{
    cgroup::{Hierarchy, limits::HostCapacity},
    image::ImageStore,
    net::{Network, NetworkConfig},
};

/// Owns every container of this agent.
pub struct Manager {
    store: Store,
    pub images: ImageStore,
    pub runtime: OciRuntime,
    hierarchy: Hierarchy,
    cgroup_root: String,
    host: HostCapacity,
    containers: RwLock<BTreeMap<String, ContainerRecord>>,
    pub net: Network,
    /// Each container's `state.json` and shim liveness, cached.
    watch: watch::ShimWatch,
    /// Serializes mutations (run, stop, rm, update) so names and ids stay consistent.
    ops: Mutex<()>,
    /// Bumped by every `update`: the containers collector then reads limit files at once
    /// (`cgroup::reader::StatsCache` reads them every few ticks otherwise).
    limits_version: std::sync::atomic::AtomicU64,
}

impl Manager {
    /// Opens the store under `state_dir`, picks the runtime, and recovers every container.
    pub fn open(
        state_dir: &Path,
        run_dir: &Path,
        runtime: &str,
        hierarchy: Hierarchy,
        cgroup_root: &str,
        network: NetworkConfig,
    ) -> Result<Self, RuntimeError> {
        // Before anything else: the binary shims are started from, as it is now.
        run::pin_own_binary().map_err(|reason| RuntimeError::Shim {
            container: "(any)".into(),
            reason,
        })?;
        let runtime = OciRuntime::detect(runtime, &hierarchy, run_dir)?;
        let store = Store::open(state_dir)?;
        let images = ImageStore::open(&state_dir.join("images"))?;
        let net = Network::new(network, run_dir, Some(&hierarchy.unified_mount));
        let m = Self {
            store,
            images,
            runtime,
            hierarchy,
            cgroup_root: cgroup_root.trim_matches('/').to_owned(),
            host: HostCapacity::detect()?,
            containers: RwLock::new(BTreeMap::new()),
            net,
            watch: watch::ShimWatch::default(),
            ops: Mutex::new(()),
            limits_version: Default::default(),
        };
        m.recover()?;
        Ok(m)
    }
}
