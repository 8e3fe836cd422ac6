//! Value conversions between the v1-style numbers users and the OCI spec speak (cpu.shares,
//! blkio weight, memory+swap) and the cgroup v2 files (cpu.weight, io.weight, memory.swap.max).
//!
//! runc makes the same conversions when it creates a container on a v2 host; a live
//! `berth update` must write what runc's create wrote, so these follow runc's formulas (the
//! runc version is named per function) rather than the kernel's or the newest runc's.

use super::{BLKIO_WEIGHT_RANGE, CPU_SHARES_RANGE};

/// v1 cpu.shares -> v2 cpu.weight, runc 1.1's linear map of [2, 262144] onto [1, 10000]
/// (libcontainer/cgroups/utils.go `ConvertCPUSharesToCgroupV2Value`); 1024 -> 39. runc 1.1.5 is
/// what Debian 12 ships, so a live update writes what its create wrote. (runc >= 1.3 maps 1024
/// to 100 with a quadratic formula; change both together if berth requires a newer runc.)
pub fn cpu_shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let shares = shares.clamp(CPU_SHARES_RANGE.0, CPU_SHARES_RANGE.1);
    1 + ((shares - 2) * 9999) / 262_142
}

/// `--blkio-weight` [10, 1000] -> v2 io.weight [1, 10000], runc's linear map
/// (`ConvertBlkIOToIOWeightValue`); used only when the v2 cgroup has no io.bfq.weight.
pub fn blkio_weight_to_io_weight(weight: u16) -> u64 {
    if weight == 0 {
        return 0;
    }
    let weight = u64::from(weight.clamp(BLKIO_WEIGHT_RANGE.0, BLKIO_WEIGHT_RANGE.1));
    1 + (weight - 10) * 9999 / 990
}

/// Memory+swap (OCI/docker, v1) -> memory.swap.max (v2: swap alone); -1 stays unlimited.
pub fn memory_swap_to_v2(memory_swap: i64, memory: u64) -> i64 {
    if memory_swap < 0 {
        return -1;
    }
    memory_swap.saturating_sub(clamp_i64(memory)).max(0)
}

/// Byte counts are `u64` in [`super::Limits`] but `i64` in the OCI spec and cgroups-rs; anything
/// above `i64::MAX` is "unlimited" to the kernel anyway.
pub(crate) fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
