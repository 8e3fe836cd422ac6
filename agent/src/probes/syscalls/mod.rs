//! Syscall counts and latency per cgroup.
//!
//! Hooks: raw tracepoint `sys_enter` (program `berth_sys_enter` in `ebpf/src/syscalls.rs`),
//! and `sys_exit` (`berth_sys_exit`) when `probes.syscalls.latency` is on.
//! Tasks outside the tracked v2 subtree leave after one `bpf_get_current_ancestor_cgroup_id`
//! call; tracked ones add 1 to their (cgroup id, syscall nr) slot of a per-CPU hash, and with
//! latency on stamp the entry time per thread; sys_exit adds the duration to a log2 histogram.
//! Maps: `SYSCALLS` ([`SyscallKey`] -> per-CPU u64), `SYSCALL_ENTER`, `SYSCALL_LATENCY_HIST`
//! ([`SyscallKey`] -> per-CPU [`LatencyHist`]), `PROBE_ERRORS` (full-map count).
//! Metrics: `berth_cgroup_syscalls_total{cgroup, syscall}` (calls, top N per cgroup) and
//! `berth_cgroup_syscall_latency_seconds{cgroup}` (histogram over all syscalls).

mod names;

use std::{collections::HashMap, sync::Mutex};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::RawTracePoint,
};
use berth_common::{LATENCY_BUCKETS, LatencyHist, SYSCALL_NR_OTHER, SyscallKey};

use super::ProbeLoadError;
use crate::model::{ProbeStatus, SyscallCount};

pub const PROGRAM: &str = "berth_sys_enter";
pub const TRACEPOINT: &str = "sys_enter";
const EXIT_PROGRAM: &str = "berth_sys_exit";
const MAP: &str = berth_common::maps::SYSCALLS;
const LATENCY_MAP: &str = berth_common::maps::SYSCALL_LATENCY_HIST;

/// Name of an x86_64 syscall number: `getppid`, or `syscall_<nr>` for numbers this table
/// does not know (newer kernels), `other` for the out-of-range bucket.
pub fn name(nr: u32) -> std::borrow::Cow<'static, str> {
    if nr == SYSCALL_NR_OTHER {
        return "other".into();
    }
    match names::X86_64.get(nr as usize) {
        Some(n) if !n.is_empty() => (*n).into(),
        _ => format!("syscall_{nr}").into(),
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
    latency: bool,
    steady: Mutex<Steady>,
}

/// What the last reads saw, so maps that did not change are not read again: every key of a
/// cgroup that ever made a syscall stays in `SYSCALLS` (the counts are cumulative and pinned),
/// and reading them all costs ~0.3 µs each, most of an idle agent's probe time.
#[derive(Default)]
struct Steady {
    /// `SYSCALLS_SEEN`'s sum at the last read of the maps.
    seen: Option<u64>,
    /// The maps were read again after `seen` had stopped moving for a tick: what they hold
    /// is final (a program run that bumped `SYSCALLS_SEEN` has long written its counts).
    confirmed: bool,
    last: HashMap<u64, Vec<SyscallCount>>,
}

impl SyscallsProbe {
    pub fn start(ebpf: Option<&mut Ebpf>, config: &crate::config::SyscallsConfig) -> Self {
        let enabled = config.enabled;
        let latency = enabled && config.latency;
        let mut status = ProbeStatus {
            name: "syscalls",
            attach: if latency {
                "raw_tracepoint/sys_enter+sys_exit"
            } else {
                "raw_tracepoint/sys_enter"
            },
            enabled,
            attached: false,
            program_ids: Vec::new(),
            error: None,
            paths: Default::default(),
        };
        if enabled {
            match ebpf
                .ok_or(None)
                .and_then(|e| attach(e, latency).map_err(Some))
            {
                Ok(ids) => {
                    status.attached = true;
                    status.program_ids = ids;
                }
                Err(e) => {
                    status.error = Some(match e {
                        Some(e) => e.to_string(),
                        None => "berth's eBPF object did not load (see the agent's log)".into(),
                    })
                }
            }
        }
        Self {
            status,
            latency,
            steady: Mutex::default(),
        }
    }

    /// Reads `SYSCALLS` and sums the per-CPU values by cgroup; keys of cgroups for which
    /// `alive` is false are deleted after this last read, so the map does not fill with the
    /// dead. While `SYSCALLS_SEEN` stands still (and the maps were read once more after it
    /// stopped), the maps are not read: the last counts are returned.
    pub fn collect(
        &self,
        ebpf: &mut Ebpf,
        alive: &dyn Fn(u64) -> bool,
    ) -> Result<HashMap<u64, Vec<SyscallCount>>, ProbeLoadError> {
        let seen = super::seen_count(ebpf, berth_common::maps::SYSCALLS_SEEN);
        let mut steady = self.steady.lock().unwrap_or_else(|e| e.into_inner());
        if seen.is_some() && steady.seen == seen && steady.confirmed {
            // Nothing counted since the last read: the same counts (of live cgroups; the
            // keys of the dead go at the next read).
            return Ok(steady
                .last
                .iter()
                .filter(|(id, _)| alive(**id))
                .map(|(id, calls)| (*id, calls.clone()))
                .collect());
        }
        let by_cgroup = self.read(ebpf, alive)?;
        steady.confirmed = seen.is_some() && steady.seen == seen;
        steady.seen = seen;
        steady.last = by_cgroup.clone();
        Ok(by_cgroup)
    }

    /// Every count of the maps, by cgroup; deletes the keys of dead cgroups.
    fn read(
        &self,
        ebpf: &mut Ebpf,
        alive: &dyn Fn(u64) -> bool,
    ) -> Result<HashMap<u64, Vec<SyscallCount>>, ProbeLoadError> {
        let mut by_cgroup: HashMap<u64, Vec<SyscallCount>> = HashMap::new();
        let mut dead = Vec::new();
        for (key, values) in entries::<u64>(ebpf, MAP)? {
            if !alive(key.cgroup_id) {
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
                    latency_buckets: Vec::new(),
                    latency_sum_ns: 0,
                });
        }
        remove::<u64>(ebpf, MAP, &dead)?;
        if self.latency {
            self.collect_latency(ebpf, alive, &mut by_cgroup)?;
        }
        for v in by_cgroup.values_mut() {
            v.sort_by_key(|s| s.nr);
        }
        Ok(by_cgroup)
    }

    /// Merges the latency histograms into `by_cgroup`.
    fn collect_latency(
        &self,
        ebpf: &mut Ebpf,
        alive: &dyn Fn(u64) -> bool,
        by_cgroup: &mut HashMap<u64, Vec<SyscallCount>>,
    ) -> Result<(), ProbeLoadError> {
        let mut dead = Vec::new();
        for (key, values) in entries::<LatencyHist>(ebpf, LATENCY_MAP)? {
            if !alive(key.cgroup_id) {
                dead.push(key);
                continue;
            }
            let mut buckets = vec![0u64; LATENCY_BUCKETS];
            let mut sum = 0;
            for v in values.iter() {
                for (b, n) in buckets.iter_mut().zip(v.buckets.iter()) {
                    *b += n;
                }
                sum += v.sum_ns;
            }
            let calls = by_cgroup.entry(key.cgroup_id).or_default();
            match calls.iter_mut().find(|c| c.nr == key.nr) {
                Some(c) => {
                    c.latency_buckets = buckets;
                    c.latency_sum_ns = sum;
                }
                None => calls.push(SyscallCount {
                    nr: key.nr,
                    name: name(key.nr),
                    count: 0,
                    latency_buckets: buckets,
                    latency_sum_ns: sum,
                }),
            }
        }
        remove::<LatencyHist>(ebpf, LATENCY_MAP, &dead)
    }
}

/// Every (key, per-CPU values) of the per-CPU hash `map`: in batches when the kernel can
/// (`super::batch`), else key by key.
fn entries<V: aya::Pod>(
    ebpf: &mut Ebpf,
    map: &'static str,
) -> Result<Vec<(SyscallKey, Vec<V>)>, ProbeLoadError> {
    let err = |source| ProbeLoadError::Map { map, source };
    let m = ebpf
        .map_mut(map)
        .ok_or(ProbeLoadError::MissingMap { map })?;
    if let (aya::maps::Map::PerCpuHashMap(data), Ok(cpus)) = (&*m, aya::util::nr_cpus())
        && let Ok(all) = super::batch::per_cpu_entries::<SyscallKey, V>(data, cpus)
    {
        return Ok(all);
    }
    let hash = PerCpuHashMap::<&mut MapData, SyscallKey, V>::try_from(m).map_err(err)?;
    hash.iter()
        .map(|e| {
            e.map(|(k, v)| (k, v.iter().copied().collect()))
                .map_err(err)
        })
        .collect()
}

/// Deletes `keys` (of cgroups that are gone) from `map`; one already gone is fine.
fn remove<V: aya::Pod>(
    ebpf: &mut Ebpf,
    map: &'static str,
    keys: &[SyscallKey],
) -> Result<(), ProbeLoadError> {
    if keys.is_empty() {
        return Ok(());
    }
    let m = ebpf
        .map_mut(map)
        .ok_or(ProbeLoadError::MissingMap { map })?;
    let mut hash = PerCpuHashMap::<&mut MapData, SyscallKey, V>::try_from(m)
        .map_err(|source| ProbeLoadError::Map { map, source })?;
    for key in keys {
        let _ = hash.remove(key);
    }
    Ok(())
}

fn attach(ebpf: &mut Ebpf, latency: bool) -> Result<Vec<u32>, ProbeLoadError> {
    let mut ids = Vec::new();
    let programs: &[(&'static str, &str)] = if latency {
        // sys_exit first: an entry stamped before its exit program exists is evicted by LRU.
        &[(EXIT_PROGRAM, "sys_exit"), (PROGRAM, TRACEPOINT)]
    } else {
        &[(PROGRAM, TRACEPOINT)]
    };
    for &(name, tracepoint) in programs {
        let program: &mut RawTracePoint = super::program_mut(ebpf, name)?;
        let err = super::program_err(name);
        program.load().map_err(err)?;
        program.attach(tracepoint).map_err(err)?;
        ids.push(program.info().map_err(err)?.id());
    }
    Ok(ids)
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
