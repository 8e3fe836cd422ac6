//! Syscall counting and latency.
//!
//! Hooks: raw tracepoint `sys_enter` (`berth_sys_enter`), and with latency on, `sys_exit`
//! (`berth_sys_exit`). (The empty baseline program of `cargo xtask bench syscalls` is not
//! here: the bench loads it itself.)
//! Maps: `SYSCALLS` (per-CPU hash, [`SyscallKey`] -> u64 calls), `SYSCALLS_SEEN` (per-CPU
//! array, one slot: how much the others changed), `SYSCALL_ENTER` (LRU hash,
//! pid_tgid -> [`SyscallEnter`]), `SYSCALL_LATENCY` (per-CPU hash, [`SyscallKey`] ->
//! [`LatencyHist`]), `PROBE_ERRORS` (per-CPU array,
//! shared with the other probes, in `main.rs`).
//! Tasks outside the tracked cgroups (`TRACKED`, see `tracked.rs`) leave after one helper call
//! and one hash lookup.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};
use berth_common::{
    LATENCY_BUCKETS, LatencyHist, ProbeError, SYSCALL_ENTER_MAX_ENTRIES,
    SYSCALL_LATENCY_MAX_ENTRIES, SYSCALL_NR_OTHER, SYSCALLS_MAX_ENTRIES, SyscallEnter, SyscallKey,
};

use crate::{EEXIST_NEG, count_error, tracked::tracked};

/// Set by the agent at load time; see `berth_common::globals`.
#[unsafe(no_mangle)]
static SYSCALL_LATENCY: u32 = 0;

#[map]
static SYSCALL_ENTER: LruHashMap<u64, SyscallEnter> =
    LruHashMap::with_max_entries(SYSCALL_ENTER_MAX_ENTRIES, 0);

#[map]
static SYSCALL_LATENCY_HIST: PerCpuHashMap<SyscallKey, LatencyHist> =
    PerCpuHashMap::with_max_entries(SYSCALL_LATENCY_MAX_ENTRIES, 0);

#[map]
static SYSCALLS: PerCpuHashMap<SyscallKey, u64> =
    PerCpuHashMap::with_max_entries(SYSCALLS_MAX_ENTRIES, 0);

/// Counted syscalls and latency samples, per CPU, bumped after the maps above: while its sum
/// stands still the agent does not read them again (`SyscallsProbe::collect`).
#[map]
static SYSCALLS_SEEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn seen() {
    if let Some(v) = SYSCALLS_SEEN.get_ptr_mut(0) {
        // SAFETY: this CPU's value; nothing else writes it while we run.
        unsafe { *v += 1 };
    }
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn berth_sys_enter(ctx: RawTracePointContext) -> i32 {
    try_sys_enter(&ctx);
    0
}

#[inline(always)]
fn try_sys_enter(ctx: &RawTracePointContext) {
    // Early exit for every task outside the tracked cgroups: one helper, one lookup.
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !tracked(cgroup_id) {
        return;
    }
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
    seen();
    // SAFETY: a plain integer global.
    if unsafe { core::ptr::read_volatile(&SYSCALL_LATENCY) } != 0 {
        let enter = SyscallEnter {
            // SAFETY: helpers without arguments.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            cgroup_id,
            nr,
            _pad: 0,
        };
        let _ = SYSCALL_ENTER.insert(&bpf_get_current_pid_tgid(), &enter, BPF_ANY as u64);
    }
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn berth_sys_exit(_ctx: RawTracePointContext) -> i32 {
    try_sys_exit();
    0
}

#[inline(always)]
fn try_sys_exit() {
    let tid = bpf_get_current_pid_tgid();
    // Untracked threads never stamped an entry: one lookup and out.
    // SAFETY: the value is copied out before the delete below.
    let Some(enter) = (unsafe { SYSCALL_ENTER.get(&tid) }).copied() else {
        return;
    };
    let _ = SYSCALL_ENTER.remove(&tid);
    // SAFETY: helper without arguments.
    let delta = unsafe { bpf_ktime_get_ns() }.saturating_sub(enter.ts_ns);
    let bucket = log2_bucket(delta);
    let key = SyscallKey {
        cgroup_id: enter.cgroup_id,
        nr: enter.nr,
        _pad: 0,
    };
    if SYSCALL_LATENCY_HIST.get_ptr_mut(&key).is_none() {
        let zero = LatencyHist::default();
        match SYSCALL_LATENCY_HIST.insert(&key, &zero, BPF_NOEXIST as u64) {
            Ok(()) | Err(EEXIST_NEG) => {}
            Err(_) => {
                count_error(ProbeError::LatencyMapFull);
                return;
            }
        }
    }
    if let Some(h) = SYSCALL_LATENCY_HIST.get_ptr_mut(&key) {
        // SAFETY: this CPU's value; the index is bounded by log2_bucket.
        unsafe {
            if bucket < LATENCY_BUCKETS {
                (*h).buckets[bucket] += 1;
            }
            (*h).sum_ns += delta;
        }
    }
    seen();
}

/// floor(log2(ns)) clamped to the histogram; branch-only, no loop.
#[inline(always)]
fn log2_bucket(ns: u64) -> usize {
    let mut v = ns;
    let mut r = 0usize;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    if r >= LATENCY_BUCKETS {
        LATENCY_BUCKETS - 1
    } else {
        r
    }
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
