//! What the snapshot says about berth itself: each probe's state, its cost, the events it lost,
//! and each collector's last run.

use serde::Serialize;

/// Whether a probe is attached, and why not when it is not.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
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

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ProbeRun {
    pub probe: &'static str,
    pub seconds: f64,
    pub runs: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LostEvents {
    pub probe: &'static str,
    pub map: &'static str,
    pub count: u64,
}

/// One collector's last run, for `berth_collector_*`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CollectorRun {
    pub name: &'static str,
    pub duration_seconds: f64,
    pub success: bool,
    pub error: Option<String>,
}
