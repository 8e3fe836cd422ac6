//! Which cgroups the syscall and network probes count: those whose v2 id is in `TRACKED`.
//!
//! One lookup decides, for every task and socket on the host, so the early exit of an untracked
//! syscall costs one helper call and one (inlined) hash lookup. The agent fills the map each
//! tick with every cgroup of its subtree and every other engine's container; between ticks,
//! `berth_cgroup_mkdir` (raw tracepoint `cgroup_mkdir`) adds a cgroup created below berth's
//! root at once, so a new container of berth's is counted from its first syscall, and
//! `berth_cgroup_rmdir` (`cgroup_rmdir`) drops any removed cgroup, so nothing created and
//! removed between two ticks stays behind. Both hooks read `struct cgroup` through offsets the
//! agent takes from the kernel's BTF (Rust eBPF has no CO-RE) and act only on the cgroup2
//! hierarchy (hierarchy id 0), whose ids are what `bpf_get_current_cgroup_id()` returns.
//! Map: `TRACKED` (cgroup v2 id -> `u8`); a full map counts `ProbeError::TrackedFull`.
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint},
    maps::HashMap,
    programs::RawTracePointContext,
};
use berth_common::{ProbeError, TRACKED_MAX_ENTRIES, netfilter::OFFSET_NONE};

use crate::count_error;

#[map]
pub static TRACKED: HashMap<u64, u8> = HashMap::with_max_entries(TRACKED_MAX_ENTRIES, 0);

// Set by the agent at load time; see `berth_common::globals`.
#[unsafe(no_mangle)]
static TRACK_ROOT_ID: u64 = 0;
#[unsafe(no_mangle)]
static TRACK_ROOT_LEVEL: u32 = 0;
#[unsafe(no_mangle)]
static CG_ROOT: u32 = OFFSET_NONE;
#[unsafe(no_mangle)]
static CG_KN: u32 = OFFSET_NONE;
#[unsafe(no_mangle)]
static CG_LEVEL: u32 = OFFSET_NONE;
#[unsafe(no_mangle)]
static CG_ANCESTORS: u32 = OFFSET_NONE;
#[unsafe(no_mangle)]
static CGROOT_HIERARCHY_ID: u32 = OFFSET_NONE;
#[unsafe(no_mangle)]
static KN_ID: u32 = OFFSET_NONE;

/// Whether the probes count the cgroup with this v2 id.
#[inline(always)]
pub fn tracked(cgroup_id: u64) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { TRACKED.get(&cgroup_id) }.is_some()
}

#[inline(always)]
fn global<T: Copy>(g: &T) -> T {
    // SAFETY: globals are plain integers written once before load.
    unsafe { core::ptr::read_volatile(g) }
}

/// Reads a `T` at `base + off` of kernel memory; `None` on a bad address.
#[inline(always)]
fn read<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.ok()
}

/// The v2 id of `struct cgroup *cgrp`, or `None` when it belongs to a v1 hierarchy.
#[inline(always)]
fn v2_id(cgrp: u64) -> Option<u64> {
    let root: u64 = read(cgrp, global(&CG_ROOT))?;
    let hierarchy: i32 = read(root, global(&CGROOT_HIERARCHY_ID))?;
    if hierarchy != 0 {
        return None;
    }
    kn_id(cgrp)
}

#[inline(always)]
fn kn_id(cgrp: u64) -> Option<u64> {
    let kn: u64 = read(cgrp, global(&CG_KN))?;
    read(kn, global(&KN_ID))
}

/// Whether `cgrp` (a v2 cgroup) is berth's root or below it: its ancestor at the root's level
/// is the root.
#[inline(always)]
fn below_root(cgrp: u64) -> Option<bool> {
    let level: i32 = read(cgrp, global(&CG_LEVEL))?;
    let root_level = global(&TRACK_ROOT_LEVEL);
    if level < 0 || (level as u32) < root_level || root_level > 255 {
        return Some(false);
    }
    let ancestor: u64 = read(cgrp, global(&CG_ANCESTORS) + root_level * 8)?;
    Some(kn_id(ancestor)? == global(&TRACK_ROOT_ID))
}

// cgroup_mkdir(struct cgroup *cgrp, const char *path)
#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn berth_cgroup_mkdir(ctx: RawTracePointContext) -> i32 {
    let cgrp: u64 = ctx.arg(0);
    if let Some(id) = v2_id(cgrp)
        && below_root(cgrp) == Some(true)
        && TRACKED.insert(&id, &1, BPF_ANY as u64).is_err()
    {
        count_error(ProbeError::TrackedFull);
    }
    0
}

// cgroup_rmdir(struct cgroup *cgrp, const char *path)
#[raw_tracepoint(tracepoint = "cgroup_rmdir")]
pub fn berth_cgroup_rmdir(ctx: RawTracePointContext) -> i32 {
    let cgrp: u64 = ctx.arg(0);
    if let Some(id) = v2_id(cgrp) {
        // Absent (not tracked) is the common case and fine.
        let _ = TRACKED.remove(&id);
    }
    0
}
