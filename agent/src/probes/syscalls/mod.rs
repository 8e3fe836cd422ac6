//! Syscall counts per cgroup.
//!
//! Hooks: raw tracepoint `sys_enter` (program `berth_sys_enter` in `ebpf/src/syscalls.rs`).
//! Tasks outside the tracked v2 subtree leave after one `bpf_get_current_ancestor_cgroup_id`
//! call; tracked ones add 1 to their (cgroup id, syscall nr) slot of a per-CPU hash.
//! Maps: `SYSCALLS` ([`SyscallKey`] -> per-CPU u64), `PROBE_ERRORS` (full-map count).
//! Metrics: `berth_cgroup_syscalls_total{cgroup, syscall}` (calls, counter).

mod names;

use std::collections::HashMap;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::RawTracePoint,
};
use berth_common::{SYSCALL_NR_OTHER, SyscallKey};

use super::ProbeLoadError;
use crate::model::{CgroupSample, ProbeStatus, SyscallCount};

pub const PROGRAM: &str = "berth_sys_enter";
pub const TRACEPOINT: &str = "sys_enter";
const MAP: &str = "SYSCALLS";

/// Name of an x86_64 syscall number: `getppid`, or `syscall_<nr>` for numbers this table
/// does not know (newer kernels), `other` for the out-of-range bucket.
pub fn name(nr: u32) -> String {
    if nr == SYSCALL_NR_OTHER {
        return "other".to_owned();
    }
    match names::X86_64.get(nr as usize) {
        Some(n) if !n.is_empty() => (*n).to_owned(),
        _ => format!("syscall_{nr}"),
    }
}

/// Number of a syscall name, the inverse of [`name`] for the names in the table.
pub fn number(name: &str) -> Option<u32> {
    names::X86_64
        .iter()
        .position(|n| !n.is_empty() && *n == name)
        .map(|i| i as u32)
}

pub struct SyscallsProbe {
    pub status: ProbeStatus,
}

impl SyscallsProbe {
    pub fn start(ebpf: Option<&mut Ebpf>, enabled: bool) -> Self {
        let mut status = ProbeStatus {
            name: "syscalls",
            attach: "raw_tracepoint/sys_enter",
            enabled,
            attached: false,
            program_ids: Vec::new(),
            error: None,
            paths: Default::default(),
        };
        if enabled {
            match ebpf.ok_or(None).and_then(|e| attach(e).map_err(Some)) {
                Ok(id) => {
                    status.attached = true;
                    status.program_ids = vec![id];
                }
                Err(e) => {
                    status.error = Some(match e {
                        Some(e) => e.to_string(),
                        None => "berth's eBPF object did not load (see the agent's log)".into(),
                    })
                }
            }
        }
        Self { status }
    }

    /// Reads `SYSCALLS`, sums the per-CPU values and groups them by cgroup. Keys of cgroups
    /// that no longer exist (not in `paths`) are deleted so the map does not fill with the dead.
    pub fn collect(
        &self,
        ebpf: &mut Ebpf,
        paths: &HashMap<u64, String>,
    ) -> Result<Vec<CgroupSample>, ProbeLoadError> {
        let mut by_cgroup: HashMap<u64, Vec<SyscallCount>> = HashMap::new();
        let mut dead = Vec::new();
        {
            let map = ebpf
                .map_mut(MAP)
                .ok_or(ProbeLoadError::MissingMap { map: MAP })?;
            let mut counts = PerCpuHashMap::<&mut MapData, SyscallKey, u64>::try_from(map)
                .map_err(|source| ProbeLoadError::Map { map: MAP, source })?;
            for entry in counts.iter() {
                let (key, values) =
                    entry.map_err(|source| ProbeLoadError::Map { map: MAP, source })?;
                if !paths.contains_key(&key.cgroup_id) {
                    dead.push(key);
                    continue;
                }
                by_cgroup
                    .entry(key.cgroup_id)
                    .or_default()
                    .push(SyscallCount {
                        nr: key.nr,
                        name: name(key.nr),
                        count: values.iter().sum(),
                    });
            }
            for key in dead {
                // Gone already (raced with another reader) is fine.
                let _ = counts.remove(&key);
            }
        }
        let mut out: Vec<CgroupSample> = paths
            .iter()
            .map(|(&id, path)| {
                let mut syscalls = by_cgroup.remove(&id).unwrap_or_default();
                syscalls.sort_by_key(|s| s.nr);
                CgroupSample {
                    id,
                    path: path.clone(),
                    syscalls,
                }
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

fn attach(ebpf: &mut Ebpf) -> Result<u32, ProbeLoadError> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(PROGRAM)
        .ok_or(ProbeLoadError::MissingProgram { program: PROGRAM })?
        .try_into()
        .map_err(|source| ProbeLoadError::Program {
            program: PROGRAM,
            source,
        })?;
    let err = |source| ProbeLoadError::Program {
        program: PROGRAM,
        source,
    };
    program.load().map_err(err)?;
    program.attach(TRACEPOINT).map_err(err)?;
    let id = program.info().map_err(err)?.id();
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_numbers_have_their_x86_64_names() {
        assert_eq!(name(0), "read");
        assert_eq!(name(39), "getpid");
        assert_eq!(name(110), "getppid");
        assert_eq!(name(231), "exit_group");
        assert_eq!(name(435), "clone3");
        assert_eq!(name(462), "mseal");
    }

    #[test]
    fn unknown_numbers_get_a_bounded_fallback_name() {
        assert_eq!(name(400), "syscall_400");
        assert_eq!(name(900), "syscall_900");
        assert_eq!(name(SYSCALL_NR_OTHER), "other");
    }

    #[test]
    fn names_map_back_to_numbers() {
        assert_eq!(number("getppid"), Some(110));
        assert_eq!(number("no_such_call"), None);
        assert_eq!(number(""), None);
    }
}
