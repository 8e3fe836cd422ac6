//! The Snapshot: everything berth knows about the host and its cgroups at one instant. The
//! collector loop builds one per tick; readers (/metrics, /api/v1, later diagnose and the UI)
//! only ever see a complete, immutable snapshot, never a half-updated one.

use std::time::SystemTime;

use serde::Serialize;

pub mod container;
pub use container::Status;

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// When the collectors finished.
    #[serde(with = "unix_seconds")]
    pub taken_at: SystemTime,
    /// Tracked cgroups, sorted by path.
    pub cgroups: Vec<CgroupSample>,
    pub probes: Vec<ProbeStatus>,
    /// Events the probes could not record (a full map), cumulative since load.
    pub lost_events: Vec<LostEvents>,
    /// CPU the probes' programs used, from the kernel's BPF run-time statistics.
    pub probe_runs: Vec<ProbeRun>,
    pub collectors: Vec<CollectorRun>,
    /// berth's containers with their cgroup stats.
    pub containers: Vec<crate::runtime::ContainerSample>,
    /// Host-wide conntrack (`None`: conntrack not loaded).
    pub conntrack: Option<crate::net::conntrack::ConntrackStats>,
    /// Netfilter cost per hook and per (protocol, original destination port), cumulative
    /// (`None`: the probe is down).
    pub netfilter: Option<crate::probes::netfilter::NetfilterSample>,
    /// Userland port-mapping proxies on the host (docker-proxy and kin).
    pub proxies: crate::discover::proxies::ProxyStats,
}

impl Snapshot {
    /// A snapshot with nothing in it, taken at `taken_at` (a starting point for tests and
    /// fixtures).
    pub fn empty(taken_at: SystemTime) -> Self {
        Self {
            taken_at,
            cgroups: vec![],
            probes: vec![],
            lost_events: vec![],
            probe_runs: vec![],
            collectors: vec![],
            containers: vec![],
            conntrack: None,
            netfilter: None,
            proxies: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NetCount {
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, `other`.
    pub protocol: &'static str,
    pub packets: u64,
    /// Bytes at layer 3 (IP header included).
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SyscallCount {
    pub nr: u32,
    pub name: String,
    pub count: u64,
    /// Latency histogram (probes.syscalls.latency): calls per log2 bucket, bucket `i` =
    /// `[2^i, 2^(i+1))` ns; empty when latency is off.
    pub latency_buckets: Vec<u64>,
    pub latency_sum_ns: u64,
}

/// Whether a probe is attached, and why not when it is not.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProbeStatus {
    pub name: &'static str,
    /// Program type and hook, e.g. `raw_tracepoint/sys_enter`.
    pub attach: &'static str,
    pub enabled: bool,
    pub attached: bool,
    /// Kernel ids of the loaded programs (`bpftool prog show id N`).
    pub program_ids: Vec<u32>,
    pub error: Option<String>,
    /// Measurement paths this probe detected at start-up and their state, e.g. for netfilter
    /// `{"netfilter_pair": "ok", "fentry": "unavailable (EPERM): ..."}`. Empty for probes with
    /// a single path.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub paths: std::collections::BTreeMap<&'static str, String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbeRun {
    pub probe: &'static str,
    pub seconds: f64,
    pub runs: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LostEvents {
    pub probe: &'static str,
    pub map: &'static str,
    pub count: u64,
}

/// One collector's last run, for `berth_collector_*`.
#[derive(Debug, Clone, Serialize)]
pub struct CollectorRun {
    pub name: &'static str,
    pub duration_seconds: f64,
    pub success: bool,
    pub error: Option<String>,
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
