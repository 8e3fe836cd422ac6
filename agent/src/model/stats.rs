//! A container's resource usage and limits from its cgroup (`cgroup::stats` reads them).

use serde::{Deserialize, Serialize};

/// One container's resource usage and limits at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContainerStats {
    /// CPU time in user mode since the cgroup was created, seconds.
    pub cpu_user_seconds: f64,
    /// CPU time in kernel mode, seconds.
    pub cpu_system_seconds: f64,
    /// Total CPU time, seconds (v1: cpuacct.usage, which is not exactly user + system).
    pub cpu_usage_seconds: f64,
    /// CFS periods in which the cgroup hit its quota.
    pub cpu_throttled_periods: u64,
    /// Time the cgroup's tasks were held back by the quota, seconds.
    pub cpu_throttled_seconds: f64,
    /// Memory charged to the cgroup, page cache included, bytes.
    pub memory_usage_bytes: u64,
    /// Memory limit, bytes; `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// Highest usage seen, bytes; `None` where the kernel does not track it.
    pub memory_max_usage_bytes: Option<u64>,
    /// Times a charge hit the limit (v1 memory.failcnt + memory.memsw.failcnt; v2
    /// memory.events `max`).
    pub memory_failcnt: u64,
    /// Processes killed by the OOM killer in this cgroup.
    pub oom_kills: u64,
    /// Tasks (threads) in the cgroup.
    pub pids_current: u64,
    /// pids.max; `None` when unlimited.
    pub pids_limit: Option<u64>,
    /// Bytes read from block devices.
    pub io_read_bytes: u64,
    /// Bytes written to block devices.
    pub io_write_bytes: u64,
    /// CPU quota as CPUs (quota / period): 0.5 = half a CPU; `None` when unlimited.
    pub cpu_quota_seconds_per_second: Option<f64>,
}
