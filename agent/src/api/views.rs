//! The JSON bodies of `/api/v1` that are not a model type as it is: typed, so the server and
//! the CLI agree on one definition instead of decoding `serde_json::Value` by key.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::{
    diagnose::Finding,
    model::{
        BackendKind, ContainerState, ContainerStats, Engine, LABEL_K8S_NAMESPACE, LABEL_K8S_POD,
        NetworkSpec, ProbeStatus, Publish, Status,
    },
};

/// `GET /api/v1/containers/{id}/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatsView {
    pub id: String,
    pub name: String,
    pub status: Status,
    /// Zero while the container does not run.
    pub stats: ContainerStats,
}

/// `GET /api/v1/containers/{id}/syscalls`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyscallsView {
    pub container: String,
    pub name: String,
    pub cgroup: String,
    /// The window the counts cover; `None` for counts since the probe saw the cgroup.
    pub window_seconds: Option<f64>,
    /// Busiest first.
    pub syscalls: Vec<SyscallRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyscallRow {
    pub nr: u32,
    pub name: String,
    pub count: u64,
    /// Calls per second over the window.
    pub per_second: Option<f64>,
    /// Mean latency, when `probes.syscalls.latency` is on.
    pub latency_mean_ns: Option<f64>,
}

/// `GET /api/v1/diagnose`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiagnoseView {
    /// When the snapshot the findings come from was taken, unix seconds.
    pub checked_at: f64,
    /// Most severe first.
    pub findings: Vec<Finding>,
}

/// `GET /api/v1/system`: start-up facts and the probes' state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SystemView<'a> {
    #[serde(flatten)]
    pub info: &'a super::SystemInfo,
    pub probes: &'a [ProbeStatus],
}

/// A container as clients read it from `GET /api/v1/containers[/{id}]`: the fields the CLI
/// shows (the server sends a [`crate::model::Container`], a superset).
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub image: String,
    pub status: Status,
    pub state: ContainerState,
    pub created_at: f64,
    /// The process (berth's containers).
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub network: NetworkSpec,
    /// What manages it: berth, docker, containerd, kubernetes, podman, lxc. A string, so a
    /// newer agent's engine still reads; empty from an agent older than engines.
    #[serde(default)]
    pub engine: String,
    /// Its engine's labels; a pod's container has its pod's under `berth.k8s.*`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ContainerSummary {
    /// Whether berth launched it (and may change it).
    pub fn is_berth(&self) -> bool {
        self.engine.is_empty() || self.engine == Engine::Berth.name()
    }

    /// `<namespace>/<pod>` of a Kubernetes pod's container.
    pub fn k8s_pod(&self) -> Option<String> {
        if self.engine != Engine::Kubernetes.name() {
            return None;
        }
        let pod = self.labels.get(LABEL_K8S_POD)?;
        Some(match self.labels.get(LABEL_K8S_NAMESPACE) {
            Some(ns) => format!("{ns}/{pod}"),
            None => pod.clone(),
        })
    }
}

/// A row of `GET /api/v1/ports` as clients read it (the server sends a
/// [`crate::model::ports::RangeCost`], a superset).
#[derive(Debug, Clone, Deserialize)]
pub struct PortSummary {
    pub container: String,
    pub name: String,
    /// The engine that manages the container (`berth`, `docker`, ...).
    #[serde(default)]
    pub engine: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub publish: Publish,
    pub backend: Option<BackendKind>,
    #[serde(default)]
    pub netfilter: Option<PortNetfilterSummary>,
}

/// The part of a `/api/v1/ports` row's netfilter cost the CLI shows.
#[derive(Debug, Clone, Deserialize)]
pub struct PortNetfilterSummary {
    /// A new flow's whole path (every hook), nanoseconds per packet.
    pub new_flow_ns_per_packet: Option<f64>,
}
