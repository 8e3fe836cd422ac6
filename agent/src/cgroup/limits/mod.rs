//! Container resource limits: what `berth run`/`berth update` accept (docker's flags and
//! semantics), their validation against the host, and where they go from there. This module holds
//! the model ([`Limits`], [`LimitError`], [`HostCapacity`]) and the rules (validation, merging an
//! update, docker's swap default); the rest is split by concern:
//!
//! - `size`: parsing and showing sizes (`64m`, "64MiB").
//! - `oci`: [`Limits::to_oci`], the OCI `linux.resources` runc applies when it creates the
//!   container's cgroups.
//! - `convert`: runc's v1 -> v2 value conversions (cpu.weight, io.weight, memory.swap.max).
//! - `container`: [`ContainerCgroup`], one container's cgroup in every hierarchy: create, live
//!   updates, stats, removal.
//! - `controllers`: one writer per controller (memory, cpu, pids, blkio) behind a `Controller`
//!   trait, used by [`ContainerCgroup::apply`].
//!
//! Where the limits go. runc puts a container with `linux.cgroupsPath` `/berth/<id>` at
//! `<mount>/berth/<id>` in every v1 hierarchy and in the cgroup2 tree. [`Hierarchy::placement`]
//! picks, per controller, the v1 hierarchy holding it, else the cgroup2 tree: on this project's
//! hybrid hosts (v1 controllers, cgroup2 with only hugetlb) every limit lands in v1 files, on pure
//! v2 hosts in v2 files, with runc's v1 -> v2 conversions (cpu.weight, io.weight,
//! memory.swap.max).
//!
//! Everything public is re-exported here, so callers name `crate::cgroup::limits::<item>` and
//! not the file it lives in.

mod container;
mod controllers;
mod convert;
mod oci;
mod size;

#[cfg(test)]
mod tests;

use serde::Serialize;

pub use self::{
    container::ContainerCgroup,
    convert::{blkio_weight_to_io_weight, cpu_shares_to_weight, memory_swap_to_v2},
    size::{human_bytes, parse_bytes, parse_memory_swap},
};
use super::{CgroupError, Hierarchy};

/// Docker's minimum for `--memory` (`linuxMinMemory`, 6 MiB): below it a container's runtime
/// and init cannot start reliably.
pub const MIN_MEMORY: u64 = 6 * 1024 * 1024;
/// CFS period berth uses for `--cpus` (docker's and the kernel's default), in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Smallest `--cpus`: a quota of 1 ms per 100 ms period, the kernel's minimum quota.
pub const MIN_CPUS: f64 = 0.01;
/// v1 `cpu.shares` range (kernel MIN_SHARES..MAX_SHARES).
pub const CPU_SHARES_RANGE: (u64, u64) = (2, 262_144);
/// Largest `--pids-limit`: PID_MAX_LIMIT on 64-bit kernels; pids.max rejects more.
pub const MAX_PIDS: i64 = 4_194_304;
/// `--blkio-weight` range (docker's, from CFQ's blkio.weight).
pub const BLKIO_WEIGHT_RANGE: (u16, u16) = (10, 1000);

/// Invalid limits, as given by the user; each message names the flag and the value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LimitError {
    #[error(
        "{input:?} is not a size: {reason}; use a number with an optional unit b, k, m, g or t \
         (powers of 1024), e.g. 512k, 64m, 1.5g"
    )]
    Size { input: String, reason: &'static str },
    #[error("{flag} {value}: must be at least {min}")]
    TooSmall {
        flag: &'static str,
        value: String,
        min: String,
    },
    #[error("{flag} {value}: {host}")]
    AboveHost {
        flag: &'static str,
        value: String,
        host: String,
    },
    #[error("{flag} {value}: must be between {min} and {max}")]
    OutOfRange {
        flag: &'static str,
        value: String,
        min: String,
        max: String,
    },
    #[error("{flag} {value}: not a finite number")]
    NotFinite { flag: &'static str, value: String },
    #[error("{flag} {value}: {expected}")]
    Invalid {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "--memory-swap {swap}: must be at least --memory {memory}, as it limits memory plus swap \
         (equal to --memory: no swap; -1: unlimited swap)"
    )]
    SwapBelowMemory { swap: String, memory: String },
    #[error(
        "--memory-swap {swap}: set --memory as well; --memory-swap limits memory plus swap, so it \
         means nothing alone"
    )]
    SwapWithoutMemory { swap: String },
    #[error(
        "--memory-swap {swap}: this host does not limit swap per cgroup (no \
         memory.memsw.limit_in_bytes or memory.swap.max; swap accounting is off); run without \
         --memory-swap"
    )]
    NoSwapAccounting { swap: String },
}

pub use crate::model::limits::Limits;

/// What the host offers, to reject limits it cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostCapacity {
    /// Online CPUs (`sysconf(_SC_NPROCESSORS_ONLN)`).
    pub cpus: usize,
    /// MemTotal from /proc/meminfo.
    pub memory_bytes: u64,
    /// Whether cgroups limit swap here ([`Hierarchy::swap_accounting`]); without it
    /// `--memory-swap` is rejected (runc would fail writing the missing file).
    pub swap_accounting: bool,
}

impl HostCapacity {
    /// Reads sysconf, /proc/meminfo and the cgroup mounts.
    pub fn detect() -> Result<Self, CgroupError> {
        Self::detect_with(&Hierarchy::detect()?)
    }

    /// As [`HostCapacity::detect`], with the cgroup layout already known.
    pub fn detect_with(hierarchy: &Hierarchy) -> Result<Self, CgroupError> {
        use procfs::Current as _;
        let memory_bytes = procfs::Meminfo::current()
            .map_err(|source| CgroupError::Meminfo {
                path: "/proc/meminfo",
                source,
            })?
            .mem_total;
        // SAFETY: sysconf has no memory-safety preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let cpus = usize::try_from(online)
            .ok()
            .filter(|&n| n > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1);
        Ok(Self {
            cpus,
            memory_bytes,
            swap_accounting: hierarchy.swap_accounting(),
        })
    }
}

impl Limits {
    /// Rejects what docker rejects, plus limits above the host. The first problem found wins;
    /// messages name the flag: "--memory 0: must be at least 6MiB", "--cpus 64: this host has 2
    /// CPUs".
    pub fn validate(&self, host: &HostCapacity) -> Result<(), LimitError> {
        if let Some(m) = self.memory {
            if m < MIN_MEMORY {
                return Err(LimitError::TooSmall {
                    flag: "--memory",
                    value: human_bytes(m),
                    min: human_bytes(MIN_MEMORY),
                });
            }
            if m > host.memory_bytes {
                return Err(LimitError::AboveHost {
                    flag: "--memory",
                    value: human_bytes(m),
                    host: format!("this host has {} of memory", human_bytes(host.memory_bytes)),
                });
            }
        }
        if let Some(s) = self.memory_swap {
            let shown = if s < 0 {
                s.to_string()
            } else {
                human_bytes(s as u64)
            };
            if s == 0 || s < -1 {
                return Err(LimitError::Invalid {
                    flag: "--memory-swap",
                    value: shown,
                    expected: "must be -1 (unlimited swap) or a size of at least --memory",
                });
            }
            if s > 0 {
                match self.memory {
                    None => return Err(LimitError::SwapWithoutMemory { swap: shown }),
                    Some(m) if (s as u64) < m => {
                        return Err(LimitError::SwapBelowMemory {
                            swap: shown,
                            memory: human_bytes(m),
                        });
                    }
                    Some(_) => {}
                }
            }
            if !host.swap_accounting {
                return Err(LimitError::NoSwapAccounting { swap: shown });
            }
        }
        if let Some(c) = self.cpus {
            let value = c.to_string();
            if !c.is_finite() {
                return Err(LimitError::NotFinite {
                    flag: "--cpus",
                    value,
                });
            }
            if c < MIN_CPUS {
                return Err(LimitError::TooSmall {
                    flag: "--cpus",
                    value,
                    min: MIN_CPUS.to_string(),
                });
            }
            if c > host.cpus as f64 {
                return Err(LimitError::AboveHost {
                    flag: "--cpus",
                    value,
                    host: format!(
                        "this host has {} CPU{}",
                        host.cpus,
                        if host.cpus == 1 { "" } else { "s" }
                    ),
                });
            }
        }
        if let Some(s) = self.cpu_shares {
            let (min, max) = CPU_SHARES_RANGE;
            if !(min..=max).contains(&s) {
                return Err(LimitError::OutOfRange {
                    flag: "--cpu-shares",
                    value: s.to_string(),
                    min: min.to_string(),
                    max: max.to_string(),
                });
            }
        }
        if let Some(p) = self.pids {
            if p < -1 {
                return Err(LimitError::Invalid {
                    flag: "--pids-limit",
                    value: p.to_string(),
                    expected: "must be a positive number of processes, or -1 (or 0) for unlimited",
                });
            }
            if p > MAX_PIDS {
                return Err(LimitError::OutOfRange {
                    flag: "--pids-limit",
                    value: p.to_string(),
                    min: "1".into(),
                    max: MAX_PIDS.to_string(),
                });
            }
        }
        if let Some(w) = self.blkio_weight {
            let (min, max) = BLKIO_WEIGHT_RANGE;
            if !(min..=max).contains(&w) {
                return Err(LimitError::OutOfRange {
                    flag: "--blkio-weight",
                    value: w.to_string(),
                    min: min.to_string(),
                    max: max.to_string(),
                });
            }
        }
        Ok(())
    }

    /// `self` with every field that `update` sets replaced (`berth update`). A limit cannot be
    /// unset this way, only changed (as with `docker update`); -1 lifts `pids` and `memory_swap`.
    pub fn merged(&self, update: &Limits) -> Limits {
        Limits {
            memory: update.memory.or(self.memory),
            memory_swap: update.memory_swap.or(self.memory_swap),
            cpus: update.cpus.or(self.cpus),
            cpu_shares: update.cpu_shares.or(self.cpu_shares),
            pids: update.pids.or(self.pids),
            blkio_weight: update.blkio_weight.or(self.blkio_weight),
        }
    }

    /// Docker's default for an unset `--memory-swap`: with `--memory` set, as much swap as
    /// memory (memory+swap = 2 x memory), when the host accounts swap per cgroup. Apply this to
    /// the limits handed to [`Limits::to_oci`] and [`ContainerCgroup::apply`], not to the stored
    /// ones, so a later `--memory` update moves the default along.
    pub fn with_swap_default(&self, host: &HostCapacity) -> Limits {
        let mut out = self.clone();
        if let (Some(m), None, true) = (self.memory, self.memory_swap, host.swap_accounting) {
            out.memory_swap = Some(i64::try_from(m.saturating_mul(2)).unwrap_or(i64::MAX));
        }
        out
    }

    /// CFS quota for `cpus` at [`CPU_PERIOD_US`], as docker computes it from `NanoCPUs`.
    pub fn cpu_quota_us(&self) -> Option<i64> {
        self.cpus
            .filter(|c| c.is_finite() && *c > 0.0)
            .map(|c| (c * CPU_PERIOD_US as f64).round() as i64)
    }
}
