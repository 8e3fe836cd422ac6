//! The Snapshot: everything berth knows about the host at one instant. The collectors
//! (`collect/`) build one per tick; readers (`/metrics`, `/api/v1`, `diagnose`, the UI) only
//! ever see a complete, immutable snapshot, never a half-updated one, and never the host.
//!
//! This module owns every type the snapshot holds and imports no writer module (`runtime`,
//! `probes`, `net`, `cgroup`, `discover`, `image`): writers depend on the model, not the other
//! way round (a test in `tests.rs` checks it).
//!
//! One [`Container`] record per container the agent knows, whatever launched it ([`Engine`]),
//! carrying its cgroup's probe data; cgroups the probes see that belong to no known container
//! stay visible as such ([`Snapshot::other_cgroups`]). What a container's published ports cost
//! in netfilter is computed in one place, [`ports`].

pub mod container;
#[cfg(test)]
pub(crate) mod fixture;
pub mod host;
pub mod image;
pub mod limits;
pub mod net;
pub mod netfilter;
pub mod ports;
pub mod probe;
pub mod redact;
pub mod stats;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, path::PathBuf, time::SystemTime};

use serde::{Deserialize, Serialize};

pub use self::{
    container::{ContainerState, Phase, RestartPolicy, Status},
    host::{ConntrackStats, PortMapping, ProxyStats},
    image::{Image, ImageConfig, PullEvent, PullStats},
    limits::Limits,
    net::{
        BackendKind, NetworkMode, NetworkSpec, PortBinding, PortRange, Proto, Publish,
        group_bindings,
    },
    netfilter::{CtState, Family, Hook, HookTotal, NetfilterSample, OtherCost, PortCost},
    ports::{ContainerHookKey, Cost, FlowPath},
    probe::{CollectorRun, LostEvents, ProbeRun, ProbeStatus},
    stats::ContainerStats,
};

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// When the collectors finished.
    #[serde(with = "unix_seconds")]
    pub taken_at: SystemTime,
    /// Every container the agent knows, any engine, newest first.
    pub containers: Vec<Container>,
    /// Tracked cgroups that belong to no known container, sorted by path.
    pub other_cgroups: Vec<CgroupSample>,
    pub probes: Vec<ProbeStatus>,
    /// Events the probes could not record (a full map), cumulative since load.
    pub lost_events: Vec<LostEvents>,
    /// CPU the probes' programs used, from the kernel's BPF run-time statistics.
    pub probe_runs: Vec<ProbeRun>,
    pub collectors: Vec<CollectorRun>,
    /// Host-wide conntrack (`None`: conntrack not loaded).
    pub conntrack: Option<ConntrackStats>,
    /// Netfilter cost per hook and per (protocol, original destination port), cumulative
    /// (`None`: the probe is down).
    pub netfilter: Option<NetfilterSample>,
    /// Userland port-mapping proxies on the host (docker-proxy and kin).
    pub proxies: ProxyStats,
    /// Images in berth's store.
    pub images: Vec<Image>,
    /// The `ebpf` port-mapping backend's counters (`None`: not set up on this host).
    pub portmap_ebpf: Option<net::EbpfPortmap>,
    /// Registry pulls since the agent started.
    pub pulls: PullStats,
}

impl Snapshot {
    /// A snapshot with nothing in it, taken at `taken_at` (a starting point for tests and
    /// fixtures).
    pub fn empty(taken_at: SystemTime) -> Self {
        Self {
            taken_at,
            containers: vec![],
            other_cgroups: vec![],
            probes: vec![],
            lost_events: vec![],
            probe_runs: vec![],
            collectors: vec![],
            conntrack: None,
            netfilter: None,
            proxies: Default::default(),
            images: vec![],
            portmap_ebpf: None,
            pulls: PullStats::default(),
        }
    }

    /// Every tracked cgroup with its probe data, the containers' and the others', sorted by
    /// path.
    pub fn cgroups(&self) -> Vec<CgroupView<'_>> {
        let mut out: Vec<CgroupView<'_>> = self
            .containers
            .iter()
            .filter_map(|c| {
                Some(CgroupView {
                    id: c.cgroup_id?,
                    path: &c.cgroup,
                    syscalls: &c.syscalls,
                    net: &c.net,
                })
            })
            .chain(self.other_cgroups.iter().map(|c| CgroupView {
                id: c.id,
                path: &c.path,
                syscalls: &c.syscalls,
                net: &c.net,
            }))
            .collect();
        out.sort_by(|a, b| a.path.cmp(b.path));
        out
    }

    /// The container `reference` names: a full id, a name, or a unique id prefix.
    pub fn find(&self, reference: &str) -> Result<&Container, FindError> {
        if let Some(c) = self
            .containers
            .iter()
            .find(|c| c.id == reference || c.name == reference)
        {
            return Ok(c);
        }
        let matches: Vec<&Container> = self
            .containers
            .iter()
            .filter(|c| !reference.is_empty() && c.id.starts_with(reference))
            .collect();
        match matches.as_slice() {
            [c] => Ok(c),
            [] => Err(FindError::NotFound {
                reference: reference.to_owned(),
            }),
            _ => Err(FindError::Ambiguous {
                reference: reference.to_owned(),
                matches: matches.len(),
            }),
        }
    }
}

/// Why [`Snapshot::find`] found no single container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindError {
    #[error("no such container: {reference}")]
    NotFound { reference: String },
    #[error("{reference} matches {matches} containers: give more of the id")]
    Ambiguous { reference: String, matches: usize },
}

/// What manages a container. `runtime` keeps meaning the OCI runtime (runc, crun).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Launched by this agent.
    Berth,
    /// Docker (dockerd over containerd and runc).
    Docker,
    /// containerd used directly (`ctr`, nerdctl), outside Kubernetes.
    Containerd,
    /// A Kubernetes pod's container (containerd's CRI plugin or CRI-O).
    Kubernetes,
    Podman,
    /// LXC or LXD.
    Lxc,
}

impl Engine {
    pub const ALL: [Engine; 6] = [
        Engine::Berth,
        Engine::Docker,
        Engine::Containerd,
        Engine::Kubernetes,
        Engine::Podman,
        Engine::Lxc,
    ];

    /// The lowercase name used in the API, the CLI and metrics (the serde name).
    pub fn name(self) -> &'static str {
        match self {
            Engine::Berth => "berth",
            Engine::Docker => "docker",
            Engine::Containerd => "containerd",
            Engine::Kubernetes => "kubernetes",
            Engine::Podman => "podman",
            Engine::Lxc => "lxc",
        }
    }

    /// Whether berth manages its containers (only its own: the others are observed).
    pub fn is_berth(self) -> bool {
        self == Engine::Berth
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Labels berth puts on a Kubernetes pod's containers, whichever runtime told it (containerd's
/// CRI annotations, CRI-O's, the pod labels kubelet sets): one spelling for the API, `ps` and
/// `/metrics` (`k8s_namespace`, `k8s_pod`).
pub const LABEL_K8S_NAMESPACE: &str = "berth.k8s.namespace";
pub const LABEL_K8S_POD: &str = "berth.k8s.pod";
pub const LABEL_K8S_CONTAINER: &str = "berth.k8s.container";

/// One container, whatever launched it, with its cgroup's probe data at snapshot time.
/// A field that holds env values (or other secrets) must be cleared in
/// [`Container::redacted`] (`redact.rs`): readers without the token get that copy.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Container {
    pub engine: Engine,
    /// The engine's id (64 hex characters for berth, Docker and containerd).
    pub id: String,
    pub name: String,
    /// What it runs: an image reference, or for berth a rootfs directory.
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Its cgroup's path below the cgroup2 mount, e.g. `/berth/<id>`.
    pub cgroup: String,
    /// v2 cgroup id (directory inode), what the probes key on; `None` while it has no cgroup.
    pub cgroup_id: Option<u64>,
    pub status: Status,
    /// Its process as last seen.
    pub state: ContainerState,
    /// When it was created, unix seconds.
    pub created_at: f64,
    pub limits: Limits,
    /// Cgroup usage while running.
    pub stats: Option<ContainerStats>,
    pub network: NetworkSpec,
    /// Conntrack entries with the container's address (bridge mode).
    pub conntrack_entries: Option<u64>,
    /// Per-port rules and userland proxies its published ports cost (other engines).
    pub port_mapping: PortMapping,
    /// Its stdout and stderr, where the engine keeps them.
    #[schema(value_type = Option<String>)]
    pub log_path: Option<PathBuf>,
    /// Cumulative syscalls of its cgroup, sorted by number.
    pub syscalls: Vec<SyscallCount>,
    /// Cumulative packets and bytes of its cgroup's sockets.
    pub net: Vec<NetCount>,
    /// What berth recorded when it created the container (berth's own containers only).
    #[serde(flatten)]
    #[schema(schema_with = berth_spec_fields)]
    pub berth: Option<std::sync::Arc<BerthSpec>>,
}

/// The schema of [`Container::berth`]: flattened, its fields are all there for berth's own
/// containers and all absent for other engines', so none is required (the derived schema of a
/// flattened `Option` would say "a whole BerthSpec or null", which an object without them is not).
fn berth_spec_fields() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::{
        PartialSchema as _,
        openapi::{RefOr, schema::Schema},
    };
    let mut schema = BerthSpec::schema();
    if let RefOr::T(Schema::Object(o)) = &mut schema {
        o.required.clear();
        o.description = Some(
            "berth's own containers only: what berth recorded when it created the container".into(),
        );
    }
    schema
}

impl Container {
    /// OOM kills over the container's life: past runs plus the running one's cgroup.
    pub fn oom_kills(&self) -> u64 {
        self.state.oom_kills + self.stats.as_ref().map_or(0, |s| s.oom_kills)
    }

    /// The OCI runtime berth used, when berth launched it.
    pub fn runtime(&self) -> Option<&str> {
        self.berth.as_ref().map(|b| b.runtime.as_str())
    }

    /// The Kubernetes namespace of its pod ([`LABEL_K8S_NAMESPACE`]; a pod's containers only).
    pub fn k8s_namespace(&self) -> Option<&str> {
        self.k8s_label(LABEL_K8S_NAMESPACE)
    }

    /// The name of its Kubernetes pod ([`LABEL_K8S_POD`]; a pod's containers only).
    pub fn k8s_pod(&self) -> Option<&str> {
        self.k8s_label(LABEL_K8S_POD)
    }

    /// A berth `k8s` label, read only for a pod's container: another engine's container may
    /// carry any label its creator chose.
    fn k8s_label(&self, key: &str) -> Option<&str> {
        (self.engine == Engine::Kubernetes)
            .then(|| self.labels.get(key).map(String::as_str))
            .flatten()
    }
}

/// What the user asked berth for, as recorded at create time (the store keeps it flattened in
/// each container's record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BerthSpec {
    /// Image id when run from an image.
    pub image_id: Option<String>,
    /// Read-only lower dir of the overlay (the image's rootfs or the user's directory).
    #[schema(value_type = String)]
    pub lower: PathBuf,
    /// The process: entrypoint + cmd resolved at create.
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    /// "uid:gid" resolved at create.
    pub user: String,
    pub restart: RestartPolicy,
    /// OCI runtime used for this container ("runc" or "crun").
    pub runtime: String,
    pub phase: Phase,
    /// Set by `stop`/`kill`/`rm` before signalling, so the shim does not restart it.
    pub stop_requested: bool,
    /// `--rm`: removed by the agent once it has exited (also when that happened while the
    /// agent was down). Absent in older records and written only when set, so those keep
    /// their shape.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_remove: bool,
    /// The seccomp profile in the container's bundle (`--security-opt seccomp=`); records
    /// written before berth had seccomp read as `default`, which their next start gets.
    #[serde(default)]
    pub seccomp: SeccompChoice,
}

/// Which seccomp profile a berth container runs under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SeccompChoice {
    /// moby's default profile (Docker's), resolved for the container's capabilities.
    #[default]
    Default,
    /// No filter (`--security-opt seccomp=unconfined`).
    Unconfined,
    /// A profile the client sent (`--security-opt seccomp=PATH`, read on the client side).
    Custom,
}

/// A tracked cgroup's probe data (one that belongs to no known container, in
/// [`Snapshot::other_cgroups`]).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CgroupSample {
    /// v2 cgroup id (directory inode).
    pub id: u64,
    /// Path below the cgroup2 mount, e.g. `/berth/abc`.
    pub path: String,
    /// Cumulative syscalls entered since the probe was attached (or the cgroup appeared),
    /// sorted by number.
    pub syscalls: Vec<SyscallCount>,
    /// Cumulative packets and bytes of the cgroup's sockets.
    pub net: Vec<NetCount>,
}

/// Any tracked cgroup's probe data, borrowed from the snapshot (`/api/v1/cgroups`, metrics).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CgroupView<'a> {
    pub id: u64,
    pub path: &'a str,
    pub syscalls: &'a [SyscallCount],
    pub net: &'a [NetCount],
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct NetCount {
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, `other`.
    pub protocol: &'static str,
    pub packets: u64,
    /// Bytes at layer 3 (IP header included).
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SyscallCount {
    pub nr: u32,
    /// Borrowed from the syscall table (a snapshot holds thousands of these, cloned each
    /// tick while the counts stand still: no allocation each).
    #[schema(value_type = String)]
    pub name: std::borrow::Cow<'static, str>,
    pub count: u64,
    /// Latency histogram (probes.syscalls.latency): calls per log2 bucket, bucket `i` =
    /// `[2^i, 2^(i+1))` ns; empty when latency is off.
    pub latency_buckets: Vec<u64>,
    pub latency_sum_ns: u64,
}

mod unix_seconds {
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde::Serializer;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        s.serialize_f64(secs)
    }
}
