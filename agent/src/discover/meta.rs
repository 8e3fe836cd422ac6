//! Metadata of containers berth did not launch: what their engine says beyond the cgroup
//! (name, image, labels, address, published ports, whether a pod's container is its
//! sandbox). Each source is optional, caches what it read, answers within
//! `discovery.metadata_timeout`, and is never needed for the numbers: a container without
//! metadata is still listed, counted and traced, named by its short id.
//!
//! The `foreign` collector asks every source about every container it found, each tick, so a
//! lookup must be a cache hit in the steady state (a map lookup and a clone); sources refresh
//! their caches on their own schedule (an event stream, a new container id, a changed file),
//! or at [`MetaSource::refresh`], called once per tick before the lookups.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use tokio::runtime::Handle;

use super::docker::DockerSource;
use crate::{
    config::DiscoveryConfig,
    model::{Engine, NetworkMode, Publish},
};

/// What one source knows about one container; every field is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    pub name: Option<String>,
    /// Image reference as the engine shows it (e.g. `nginx:1.27`).
    pub image: Option<String>,
    /// The engine's labels (Docker labels, containerd labels / OCI annotations, CRI labels).
    pub labels: BTreeMap<String, String>,
    pub network_mode: Option<NetworkMode>,
    /// The container's IPv4 address on its bridge.
    pub ip: Option<Ipv4Addr>,
    /// Published ports, host side and container side, as ranges.
    pub publish: Vec<Publish>,
    /// A pod's sandbox (pause) container: infrastructure, not a workload.
    pub sandbox: bool,
    /// Creation time, unix seconds (the cgroup's birth is used when absent).
    pub created_at: Option<f64>,
    pub log_path: Option<PathBuf>,
}

/// One engine's metadata (Docker API and data root, containerd state, podman storage).
pub trait MetaSource: Send {
    /// Its name in logs and in `/api/v1/system`.
    fn name(&self) -> &'static str;
    /// Takes in what changed since the last call (e.g. queued inotify events), once per
    /// collection tick before its lookups, which then answer as of it. Nothing by default.
    fn refresh(&mut self) {}
    /// What it knows about the container `id` of `engine` (the cgroup path's labels in
    /// `labels`, e.g. the containerd namespace); `None` when it knows nothing. Must not block
    /// longer than the metadata timeout, and should answer from a cache.
    fn lookup(
        &mut self,
        engine: Engine,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<Meta>;
}

/// The metadata sources `config` enables, in the order they are asked. Sources that follow an
/// engine in the background (the Docker API's events) spawn their task on `runtime`, the
/// agent's, and stop it when dropped.
pub fn sources(config: &DiscoveryConfig, runtime: &Handle) -> Vec<Box<dyn MetaSource>> {
    vec![
        Box::new(DockerSource::start(config, runtime)),
        Box::new(super::containerd::Containerd::new(&config.containerd_state)),
        Box::new(super::podman::CriO::new(&config.podman_runroot)),
        Box::new(super::podman::Podman::new(&config.podman_root)),
    ]
}
