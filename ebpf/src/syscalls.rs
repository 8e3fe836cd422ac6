//! Syscall counting.
//!
//! Hooks: raw tracepoint `sys_enter` (`berth_sys_enter`); `berth_noop` on the same hook is an
//! empty program used only by `cargo xtask bench syscalls` as the cost baseline.
//! Maps: `SYSCALLS` (per-CPU hash, [`SyscallKey`] -> u64 calls), `PROBE_ERRORS` (per-CPU array,
//! shared with the other probes, in `main.rs`).
//! Tasks outside the tracked cgroup subtree leave after one helper call.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::{map, raw_tracepoint},
    maps::PerCpuHashMap,
    programs::RawTracePointContext,
};
use berth_common::{ProbeError, SYSCALL_NR_OTHER, SYSCALLS_MAX_ENTRIES, SyscallKey};

use crate::{EEXIST_NEG, count_error};

/// Set by the agent at load time; see `berth_common::globals`.
#[unsafe(no_mangle)]
static TRACK_ROOT_ID: u64 = 0;
#[unsafe(no_mangle)]
static TRACK_ROOT_LEVEL: u32 = 0;

#[map]
static SYSCALLS: PerCpuHashMap<SyscallKey, u64> =
    PerCpuHashMap::with_max_entries(SYSCALLS_MAX_ENTRIES, 0);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn berth_sys_enter(ctx: RawTracePointContext) -> i32 {
    try_sys_enter(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn berth_noop(_ctx: RawTracePointContext) -> i32 {
    0
}

#[inline(always)]
fn try_sys_enter(ctx: &RawTracePointContext) {
    // SAFETY: globals are plain integers written once before load.
    let root = unsafe { core::ptr::read_volatile(&TRACK_ROOT_ID) };
    let level = unsafe { core::ptr::read_volatile(&TRACK_ROOT_LEVEL) };
    // Early exit: one helper call for every task outside the tracked subtree.
    // SAFETY: helpers without pointer arguments.
    if unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) } != root {
        return;
    }
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // sys_enter(struct pt_regs *regs, long id)
    let id: i64 = ctx.arg(1);
    let nr = if id >= 0 && id < SYSCALL_NR_OTHER as i64 {
        id as u32
    } else {
        SYSCALL_NR_OTHER
    };
    let key = SyscallKey {
        cgroup_id,
        nr,
        _pad: 0,
    };
    count(&key);
}

#[inline(always)]
fn count(key: &SyscallKey) {
    if let Some(v) = SYSCALLS.get_ptr_mut(key) {
        // SAFETY: per-CPU value of this CPU; nothing else writes it while we run.
        unsafe { *v += 1 };
        return;
    }
    match SYSCALLS.insert(key, &1, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU created the entry between our lookup and insert: our slot exists now.
        Err(EEXIST_NEG) => {
            if let Some(v) = SYSCALLS.get_ptr_mut(key) {
                unsafe { *v += 1 };
            }
        }
        Err(_) => count_error(ProbeError::SyscallsMapFull),
    }
}
