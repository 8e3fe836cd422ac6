//! A container's resource limits as the user gave them (Docker's flags); parsing, validation
//! and conversion to cgroup values live in `cgroup::limits`.

use serde::{Deserialize, Serialize};

/// A container's resource limits, as the user gave them; `None` = not set (runtime default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// `--memory`, bytes.
    pub memory: Option<u64>,
    /// `--memory-swap`, bytes of memory plus swap (docker semantics): equal to `memory` = no
    /// swap, -1 = unlimited swap. Unset: see [`Limits::with_swap_default`].
    pub memory_swap: Option<i64>,
    /// `--cpus`: 0.5 -> CFS quota 50000 us per 100000 us period.
    pub cpus: Option<f64>,
    /// `--cpu-shares`, v1 relative weight 2..=262144 (1024 = default); cpu.weight on v2.
    pub cpu_shares: Option<u64>,
    /// `--pids-limit`: > 0 limits; -1 and 0 mean unlimited (docker's API: "0 or -1 for
    /// unlimited"); anything below -1 is rejected.
    pub pids: Option<i64>,
    /// `--blkio-weight`, 10..=1000; blkio.bfq.weight (v1) or io.bfq.weight/io.weight (v2).
    pub blkio_weight: Option<u16>,
}
