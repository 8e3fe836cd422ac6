//! `--memory` and `--memory-swap`. v1: memory.limit_in_bytes and memory.memsw.limit_in_bytes
//! (memory plus swap, as docker and the OCI spec count it), written in the order that keeps the
//! kernel's memory <= memory+swap check true on the way up and down. v2: memory.max and
//! memory.swap.max, which counts swap alone ([`memory_swap_to_v2`]).

use std::path::Path;

use cgroups_rs::memory::MemController;

use super::{Controller, write_via};
use crate::cgroup::{
    CgroupError, ControllerDir, Placement,
    limits::{Limits, convert::clamp_i64, memory_swap_to_v2},
    stats,
};

/// The memory controller's writer.
pub(in crate::cgroup::limits) struct Memory;

impl Controller for Memory {
    const NAME: &'static str = "memory";

    fn requested_by(limits: &Limits) -> Option<&'static str> {
        // Swap alone still needs the memory controller; the message names --memory for both.
        (limits.memory.is_some() || limits.memory_swap.is_some()).then_some("--memory")
    }

    fn dir(placement: &Placement) -> Option<&ControllerDir> {
        placement.memory.as_ref()
    }

    fn apply(limits: &Limits, dir: &ControllerDir) -> Result<(), CgroupError> {
        let ctl = MemController::new(dir.path().to_path_buf(), dir.is_v2());
        match dir {
            ControllerDir::V1(path) => apply_v1(path, &ctl, limits.memory, limits.memory_swap),
            ControllerDir::V2(path) => apply_v2(path, &ctl, limits.memory, limits.memory_swap),
        }
    }
}

fn apply_v1(
    path: &Path,
    ctl: &MemController,
    memory: Option<u64>,
    swap: Option<i64>,
) -> Result<(), CgroupError> {
    let set_memory = |m: i64| {
        write_via(path, "memory.limit_in_bytes", m.to_string(), || {
            ctl.set_limit(m)
        })
    };
    let set_swap = |s: i64| {
        write_via(path, "memory.memsw.limit_in_bytes", s.to_string(), || {
            ctl.set_memswap_limit(s)
        })
    };
    match (memory.map(clamp_i64), swap) {
        (Some(m), Some(s)) => {
            // The kernel keeps memory <= memory+swap at every step: raise memsw first when the
            // new memsw is above the current memory limit (runc's setMemoryAndSwap,
            // libcontainer/cgroups/fs/memory.go).
            let current = stats::read_u64_once(&path.join("memory.limit_in_bytes"))?;
            if s == -1 || (current as i128) < i128::from(s) {
                set_swap(s)?;
                set_memory(m)?;
            } else {
                set_memory(m)?;
                set_swap(s)?;
            }
        }
        (Some(m), None) => set_memory(m)?,
        (None, Some(s)) => set_swap(s)?,
        (None, None) => {}
    }
    Ok(())
}

fn apply_v2(
    path: &Path,
    ctl: &MemController,
    memory: Option<u64>,
    swap: Option<i64>,
) -> Result<(), CgroupError> {
    if let Some(m) = memory {
        let m = clamp_i64(m);
        write_via(path, "memory.max", m.to_string(), || ctl.set_limit(m))?;
    }
    if let Some(s) = swap {
        // memory.swap.max is memory+swap minus memory: without --memory in this update, take
        // the memory limit the cgroup has now.
        let memory = match memory {
            Some(m) => Some(m),
            None if s < 0 => None,
            None => stats::read_max_once(&path.join("memory.max"))?,
        };
        let v2 = match memory {
            _ if s < 0 => -1,
            Some(m) => memory_swap_to_v2(s, m),
            None => {
                return Err(CgroupError::SwapWithoutMemory {
                    dir: path.to_path_buf(),
                });
            }
        };
        let shown = if v2 < 0 { "max".into() } else { v2.to_string() };
        write_via(path, "memory.swap.max", shown, || ctl.set_memswap_limit(v2))?;
    }
    Ok(())
}
