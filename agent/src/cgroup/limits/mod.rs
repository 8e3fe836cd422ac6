//! Container resource limits: what `berth run`/`berth update` accept (docker's flags and
//! semantics), their validation against the host, their OCI form (`linux.resources`, which runc
//! applies when it creates the container's cgroups), live updates of a running container's
//! cgroups, and removal of every cgroup directory a container had.
//!
//! Where the limits go. runc puts a container with `linux.cgroupsPath` `/berth/<id>` at
//! `<mount>/berth/<id>` in every v1 hierarchy and in the cgroup2 tree. [`Hierarchy::placement`]
//! picks, per controller, the v1 hierarchy holding it, else the cgroup2 tree: on this project's
//! hybrid hosts (v1 controllers, cgroup2 with only hugetlb) every limit lands in v1 files, on pure
//! v2 hosts in v2 files, with runc's v1 -> v2 conversions (cpu.weight, io.weight,
//! memory.swap.max).
//!
//! cgroups-rs 0.3.4 and why berth does not use its `Cgroup`/`Hierarchy` types:
//! - `hierarchies::auto()` picks `V1` unless /sys/fs/cgroup itself is cgroup2 (statfs), so on
//!   hybrid hosts it manages the v1 controllers only: its mount table reader keeps `cgroup` mounts
//!   and drops the `cgroup2` one, so the unified dir would never be created or removed.
//! - `V2` hard-codes /sys/fs/cgroup as the mount; `V1` knows `name=systemd` but no other named
//!   hierarchy.
//! - `Cgroup::create` panics (`verify_path`) on a path with a leading `/` (`PathBuf::push`
//!   replaces the root) and only logs a failed mkdir.
//!
//! So berth finds the directories itself ([`Hierarchy`]) and drives cgroups-rs's per-controller
//! types (`MemController`, `CpuController`, `PidController`) at explicit directories: they write
//! the v1 or v2 file names and formats (`max`, `cpu.max` pairs). Where cgroups-rs writes the
//! wrong file (blkio weight) berth writes cgroupfs directly; see [`ContainerCgroup::apply`].
//! Stats are parsed here from plain files ([`super::stats`]): cgroups-rs's v2 readers unwrap
//! missing files (memory.low, memory.swap.events) and would panic.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use cgroups_rs::{MaxValue, cpu::CpuController, memory::MemController, pid::PidController};
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};
use serde::Serialize;

use super::{
    CgroupError, ControllerDir, Hierarchy, V2_CONTROLLERS,
    stats::{self, ContainerStats},
};

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

/// Parses a size as docker does (go-units `RAMInBytes`): a number, optionally fractional, and an
/// optional case-insensitive unit `b`, `k`, `m`, `g`, `t` or `p` (powers of 1024; `kb`, `kib`
/// and `ki` mean the same as `k`). Fractional bytes are dropped: "1.5k" is 1536.
pub fn parse_bytes(s: &str) -> Result<u64, LimitError> {
    let err = |reason| LimitError::Size {
        input: s.to_string(),
        reason,
    };
    let input = s.trim();
    if input.is_empty() {
        return Err(err("it is empty"));
    }
    let split = input
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(input.len());
    let (number, unit) = input.split_at(split);
    if number.is_empty() || !number.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(err("it does not start with a digit"));
    }
    let unit = unit.trim_start().to_ascii_lowercase();
    let exponent = match unit.as_str() {
        "" | "b" => 0,
        u => ["k", "m", "g", "t", "p"]
            .iter()
            .position(|l| {
                u.strip_prefix(l)
                    .is_some_and(|rest| matches!(rest, "" | "b" | "i" | "ib"))
            })
            .map(|i| i as u32 + 1)
            .ok_or_else(|| err("unknown unit"))?,
    };
    let multiplier = 1024u64.pow(exponent);
    let bytes = if number.contains('.') {
        if number.matches('.').count() > 1 {
            return Err(err("more than one decimal point"));
        }
        let value: f64 = number.parse().map_err(|_| err("not a number"))?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes >= i64::MAX as f64 {
            return Err(err("too large"));
        }
        bytes as u64
    } else {
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .ok_or_else(|| err("too large"))?
    };
    if bytes > i64::MAX as u64 {
        return Err(err("too large"));
    }
    Ok(bytes)
}

/// Parses `--memory-swap`: `-1` (unlimited swap) or a size as [`parse_bytes`] reads it.
pub fn parse_memory_swap(s: &str) -> Result<i64, LimitError> {
    if s.trim() == "-1" {
        return Ok(-1);
    }
    // parse_bytes caps at i64::MAX.
    parse_bytes(s).map(|b| b as i64)
}

/// `12582912` -> "12MiB", `1536` -> "1.5KiB", `100` -> "100B", `0` -> "0".
pub fn human_bytes(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value}{}", units[unit])
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

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

    /// The OCI `linux.resources` runc applies at create. Values are v1-style, as the runtime spec
    /// defines them (runc converts for v2): memory limit and memory+swap in bytes, CFS quota and
    /// period in microseconds, cpu shares, pids limit (-1 = "max"), blkio weight.
    pub fn to_oci(&self) -> LinuxResources {
        let mut resources = LinuxResources::default();
        if self.memory.is_some() || self.memory_swap.is_some() {
            let mut memory = LinuxMemory::default();
            memory.set_limit(self.memory.map(clamp_i64));
            memory.set_swap(self.memory_swap);
            resources.set_memory(Some(memory));
        }
        if self.cpus.is_some() || self.cpu_shares.is_some() {
            let mut cpu = LinuxCpu::default();
            if let Some(quota) = self.cpu_quota_us() {
                cpu.set_quota(Some(quota));
                cpu.set_period(Some(CPU_PERIOD_US));
            }
            cpu.set_shares(self.cpu_shares);
            resources.set_cpu(Some(cpu));
        }
        if let Some(p) = self.pids {
            let mut pids = LinuxPids::default();
            pids.set_limit(if p > 0 { p } else { -1 });
            resources.set_pids(Some(pids));
        }
        if let Some(w) = self.blkio_weight {
            let mut blkio = LinuxBlockIo::default();
            blkio.set_weight(Some(w));
            resources.set_block_io(Some(blkio));
        }
        resources
    }

    /// CFS quota for `cpus` at [`CPU_PERIOD_US`], as docker computes it from `NanoCPUs`.
    pub fn cpu_quota_us(&self) -> Option<i64> {
        self.cpus
            .filter(|c| c.is_finite() && *c > 0.0)
            .map(|c| (c * CPU_PERIOD_US as f64).round() as i64)
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

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

/// One container's cgroup: the same relative path in every hierarchy.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    hierarchy: Hierarchy,
    /// As given, e.g. `/berth/<id>` (the OCI `linux.cgroupsPath`).
    given: String,
    /// `given` without leading and trailing `/`; `None` when unusable (empty, `.`, `..`), in
    /// which case every operation fails with [`CgroupError::InvalidPath`] and touches nothing.
    relative: Option<String>,
}

/// How long [`ContainerCgroup::remove`] keeps retrying a busy cgroup (processes still exiting),
/// doubling from 10 ms as runc does: 10 + 20 + 40 + 80 + 160 ms.
const REMOVE_RETRIES: u32 = 5;

impl ContainerCgroup {
    /// `relative` is the cgroup path below every hierarchy root, as in the OCI
    /// `linux.cgroupsPath` (`/berth/<id>`); a leading `/` is optional.
    pub fn new(hierarchy: &Hierarchy, relative: &str) -> Self {
        let trimmed = relative.trim_matches('/');
        let usable = !trimmed.is_empty()
            && !trimmed.contains('\0')
            && Path::new(trimmed)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
            && !trimmed.split('/').any(|c| c.is_empty() || c == ".");
        Self {
            hierarchy: hierarchy.clone(),
            given: relative.to_string(),
            relative: usable.then(|| trimmed.to_string()),
        }
    }

    /// The path as given to [`ContainerCgroup::new`].
    pub fn path(&self) -> &str {
        &self.given
    }

    fn relative(&self) -> Result<&str, CgroupError> {
        self.relative
            .as_deref()
            .ok_or_else(|| CgroupError::InvalidPath {
                given: self.given.clone(),
            })
    }

    /// The cgroup2 directory (what BPF attributes by), whether or not it exists.
    pub fn unified_dir(&self) -> Option<PathBuf> {
        self.relative
            .as_deref()
            .map(|r| self.hierarchy.unified_mount.join(r))
    }

    /// Every directory of this cgroup in every mounted hierarchy: one per v1 hierarchy (named
    /// ones such as name=systemd included), then the cgroup2 one. Empty for an unusable path.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let Some(rel) = self.relative.as_deref() else {
            return Vec::new();
        };
        self.hierarchy
            .v1
            .iter()
            .map(|h| h.mount_point.join(rel))
            .chain(std::iter::once(self.hierarchy.unified_mount.join(rel)))
            .collect()
    }

    /// v2 cgroup id: the inode of the cgroup2 directory, what `bpf_get_current_cgroup_id()`
    /// returns for the container's tasks. `None` while the directory does not exist.
    pub fn v2_id(&self) -> Option<u64> {
        fs::metadata(self.unified_dir()?).ok().map(|m| m.ino())
    }

    /// Creates the cgroup in every hierarchy, as runc does at create (berth needs it for tests
    /// and for cgroups it makes itself). Idempotent. v1 cpuset dirs get their parent's
    /// cpuset.cpus/mems (an empty cpuset refuses tasks); in the cgroup2 tree each ancestor
    /// enables cpu, memory, pids and io for its children where available (pure v2 hosts).
    pub fn create(&self) -> Result<(), CgroupError> {
        let rel = self.relative()?;
        for h in &self.hierarchy.v1 {
            let cpuset = h.controllers.iter().any(|c| c == "cpuset");
            create_levels(&h.mount_point, rel, |parent, child| {
                if cpuset {
                    inherit_cpuset(parent, child)?;
                }
                Ok(())
            })?;
        }
        create_levels(&self.hierarchy.unified_mount, rel, |parent, _| {
            enable_v2_controllers(parent)
        })
    }

    /// Writes `limits` into the running container's cgroups (`berth update`); unset fields are
    /// left alone. Pass limits through [`Limits::validate`] and [`Limits::with_swap_default`]
    /// first. A limit whose controller the host lacks fails with
    /// [`CgroupError::ControllerMissing`]; earlier writes stay (each file is independent).
    ///
    /// - memory (v1): memory.limit_in_bytes and memory.memsw.limit_in_bytes, ordered as runc
    ///   orders them so the kernel's memory <= memory+swap check holds on the way up and down;
    ///   (v2): memory.max and memory.swap.max = memory+swap - memory.
    /// - cpus: cpu.cfs_quota_us/cpu.cfs_period_us (v1), cpu.max (v2); shares: cpu.shares (v1),
    ///   cpu.weight via [`cpu_shares_to_weight`] (v2).
    /// - pids: pids.max (`max` for -1/0).
    /// - blkio weight: written directly, not through cgroups-rs, whose `set_weight` writes
    ///   blkio.weight (CFQ, removed in Linux 5.0) on v1 and io.bfq.weight only on v2. Like runc
    ///   (libcontainer/cgroups/fs/blkio.go, fs2/io.go): blkio.bfq.weight, else blkio.weight (v1);
    ///   io.bfq.weight, else io.weight via [`blkio_weight_to_io_weight`] (v2). The BFQ weight
    ///   only matters for devices whose scheduler is bfq.
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        let rel = self.relative()?;
        let placement = self.hierarchy.placement(rel);
        let need = |dir: &Option<ControllerDir>, flag, controller| {
            dir.clone().ok_or_else(|| CgroupError::ControllerMissing {
                flag,
                controller,
                cgroup: self.given.clone(),
                unified_mount: self.hierarchy.unified_mount.clone(),
            })
        };
        if limits.memory.is_some() || limits.memory_swap.is_some() {
            let dir = need(&placement.memory, "--memory", "memory")?;
            apply_memory(&dir, limits.memory, limits.memory_swap)?;
        }
        if limits.cpus.is_some() || limits.cpu_shares.is_some() {
            let flag = if limits.cpus.is_some() {
                "--cpus"
            } else {
                "--cpu-shares"
            };
            let dir = need(&placement.cpu, flag, "cpu")?;
            apply_cpu(&dir, limits.cpu_quota_us(), limits.cpu_shares)?;
        }
        if let Some(p) = limits.pids {
            let dir = need(&placement.pids, "--pids-limit", "pids")?;
            let ctl = PidController::new(dir.path().to_path_buf(), dir.is_v2());
            let max = if p > 0 {
                MaxValue::Value(p)
            } else {
                MaxValue::Max
            };
            let shown = max.to_string();
            write_via(dir.path(), "pids.max", shown, || ctl.set_pid_max(max))?;
        }
        if let Some(w) = limits.blkio_weight {
            let dir = need(&placement.blkio, "--blkio-weight", "blkio/io")?;
            apply_blkio_weight(&dir, w)?;
        }
        Ok(())
    }

    /// Usage and limits now, from the controllers [`Hierarchy::placement`] finds.
    pub fn stats(&self) -> Result<ContainerStats, CgroupError> {
        let rel = self.relative()?;
        stats::read(&self.hierarchy.placement(rel))
    }

    /// Removes the cgroup from every hierarchy (children first, as runc does); an absent
    /// directory is fine. A busy one (tasks still exiting) is retried for ~300 ms. Every
    /// hierarchy is tried; the first failure is returned, naming the directory and the
    /// processes still inside.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.relative()?;
        let mut first_error = None;
        for dir in self.dirs() {
            if let Err(e) = remove_tree(&dir) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Creates `root/relative` one level at a time, calling `each(parent, child)` after each mkdir
/// (and for levels that already existed, so a half-made path gets completed).
fn create_levels(
    root: &Path,
    relative: &str,
    mut each: impl FnMut(&Path, &Path) -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    let mut parent = root.to_path_buf();
    for component in relative.split('/') {
        let child = parent.join(component);
        match fs::create_dir(&child) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(CgroupError::Create {
                    path: child,
                    source,
                });
            }
        }
        each(&parent, &child)?;
        parent = child;
    }
    Ok(())
}

/// v1 cpuset: a new cgroup starts with empty cpuset.cpus and cpuset.mems and then refuses tasks
/// (ENOSPC); copy the parent's, as runc does (libcontainer/cgroups/fs/cpuset.go).
fn inherit_cpuset(parent: &Path, child: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let path = child.join(file);
        let Ok(current) = fs::read_to_string(&path) else {
            continue;
        };
        if !current.trim().is_empty() {
            continue;
        }
        let from = parent.join(file);
        let value =
            fs::read_to_string(&from).map_err(|source| CgroupError::Read { path: from, source })?;
        write_file(&path, value.trim())?;
    }
    Ok(())
}

/// Enables berth's controllers for the children of `dir` in the cgroup2 tree, where `dir`
/// offers them and does not already delegate them (runc does the same on v2).
fn enable_v2_controllers(dir: &Path) -> Result<(), CgroupError> {
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
    let available = read("cgroup.controllers");
    let enabled = read("cgroup.subtree_control");
    let wanted: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let controllers = wanted.join(" ");
    let path = dir.join("cgroup.subtree_control");
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(controllers.as_bytes()))
        .map_err(|source| CgroupError::EnableControllers {
            path,
            controllers,
            source,
        })
}

/// Runs a cgroups-rs write and names the file and value on failure.
fn write_via(
    dir: &Path,
    file: &str,
    value: String,
    write: impl FnOnce() -> cgroups_rs::error::Result<()>,
) -> Result<(), CgroupError> {
    write().map_err(|source| CgroupError::Write {
        path: dir.join(file),
        value,
        source,
    })
}

/// Writes an existing cgroupfs file (never creates one; truncates, as runc does, which
/// cgroupfs ignores and fixture files need).
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::WriteFile {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
}

fn apply_memory(
    dir: &ControllerDir,
    memory: Option<u64>,
    swap: Option<i64>,
) -> Result<(), CgroupError> {
    let path = dir.path();
    let ctl = MemController::new(path.to_path_buf(), dir.is_v2());
    match dir {
        ControllerDir::V1(_) => {
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
                    // The kernel keeps memory <= memory+swap at every step: raise memsw first
                    // when the new memsw is above the current memory limit (runc's
                    // setMemoryAndSwap, libcontainer/cgroups/fs/memory.go).
                    let current = stats::read_u64(&path.join("memory.limit_in_bytes"))?;
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
        }
        ControllerDir::V2(_) => {
            if let Some(m) = memory {
                let m = clamp_i64(m);
                write_via(path, "memory.max", m.to_string(), || ctl.set_limit(m))?;
            }
            if let Some(s) = swap {
                let memory = match memory {
                    Some(m) => Some(m),
                    None if s < 0 => None,
                    None => stats::read_max(&path.join("memory.max"))?,
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
        }
    }
    Ok(())
}

fn apply_cpu(
    dir: &ControllerDir,
    quota_us: Option<i64>,
    shares: Option<u64>,
) -> Result<(), CgroupError> {
    let path = dir.path();
    let ctl = CpuController::new(path.to_path_buf(), dir.is_v2());
    if let Some(q) = quota_us {
        let (file, shown) = if dir.is_v2() {
            ("cpu.max", format!("{q} {CPU_PERIOD_US}"))
        } else {
            ("cpu.cfs_quota_us", format!("{q} (period {CPU_PERIOD_US})"))
        };
        write_via(path, file, shown, || {
            ctl.set_cfs_quota_and_period(Some(q), Some(CPU_PERIOD_US))
        })?;
    }
    if let Some(s) = shares {
        // cgroups-rs writes the number as given to cpu.weight on v2: converting is ours.
        let (file, value) = if dir.is_v2() {
            ("cpu.weight", cpu_shares_to_weight(s))
        } else {
            ("cpu.shares", s)
        };
        write_via(path, file, value.to_string(), || ctl.set_shares(value))?;
    }
    Ok(())
}

fn apply_blkio_weight(dir: &ControllerDir, weight: u16) -> Result<(), CgroupError> {
    let path = dir.path();
    let (bfq, legacy, legacy_value) = if dir.is_v2() {
        (
            "io.bfq.weight",
            "io.weight",
            blkio_weight_to_io_weight(weight),
        )
    } else {
        ("blkio.bfq.weight", "blkio.weight", u64::from(weight))
    };
    if path.join(bfq).exists() {
        write_file(&path.join(bfq), &weight.to_string())
    } else if path.join(legacy).exists() {
        write_file(&path.join(legacy), &legacy_value.to_string())
    } else {
        Err(CgroupError::BlkioWeightUnsupported {
            dir: path.to_path_buf(),
            bfq,
            legacy,
        })
    }
}

/// rmdir `dir` after its sub-cgroups (a container may create its own), retrying while busy.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    let mut delay = Duration::from_millis(10);
    let mut attempt = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < REMOVE_RETRIES => {
                std::thread::sleep(delay);
                delay *= 2;
                attempt += 1;
            }
            Err(source) => {
                let pids = fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                    pids,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{CgroupMode, V1Mount};

    const MIB: u64 = 1024 * 1024;

    fn host() -> HostCapacity {
        HostCapacity {
            cpus: 2,
            memory_bytes: 2048 * MIB,
            swap_accounting: true,
        }
    }

    fn invalid(limits: Limits) -> String {
        limits.validate(&host()).unwrap_err().to_string()
    }

    #[test]
    fn parse_bytes_reads_docker_units() {
        for (input, bytes) in [
            ("1024", 1024),
            ("0", 0),
            ("10b", 10),
            ("512k", 512 * 1024),
            ("512K", 512 * 1024),
            ("64m", 64 * MIB),
            ("64MB", 64 * MIB),
            ("64MiB", 64 * MIB),
            ("64mi", 64 * MIB),
            ("1g", 1024 * MIB),
            ("1.5g", 1536 * MIB),
            ("1.5k", 1536),
            ("0.5b", 0),
            ("2t", 2 << 40),
            ("1p", 1 << 50),
            (" 3 m ", 3 * MIB),
        ] {
            assert_eq!(parse_bytes(input), Ok(bytes), "{input:?}");
        }
    }

    #[test]
    fn parse_bytes_rejects_what_is_not_a_size() {
        for input in [
            "",
            "m",
            "-1",
            "-1m",
            "1x",
            "1mb2",
            "1.2.3",
            "NaN",
            "inf",
            "1e9",
            ".5m",
            "1 g b",
            "9999999999999t",
            "16e",
        ] {
            let err = parse_bytes(input).unwrap_err();
            assert!(matches!(err, LimitError::Size { .. }), "{input:?}: {err}");
            assert!(err.to_string().contains("e.g. 512k"), "{err}");
        }
    }

    #[test]
    fn memory_swap_accepts_minus_one_and_sizes() {
        assert_eq!(parse_memory_swap("-1"), Ok(-1));
        assert_eq!(parse_memory_swap("1g"), Ok(1 << 30));
        assert!(parse_memory_swap("-2").is_err());
    }

    #[test]
    fn human_bytes_prefers_exact_binary_units() {
        assert_eq!(human_bytes(0), "0");
        assert_eq!(human_bytes(100), "100B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(6 * MIB), "6MiB");
        assert_eq!(human_bytes(2 << 30), "2GiB");
    }

    #[test]
    fn sensible_limits_pass_validation() {
        let limits = Limits {
            memory: Some(64 * MIB),
            memory_swap: Some(128 * MIB as i64),
            cpus: Some(1.5),
            cpu_shares: Some(512),
            pids: Some(100),
            blkio_weight: Some(500),
        };
        limits.validate(&host()).unwrap();
        Limits::default().validate(&host()).unwrap();
        for pids in [-1, 0, 1, MAX_PIDS] {
            let l = Limits {
                pids: Some(pids),
                ..Limits::default()
            };
            l.validate(&host()).unwrap();
        }
        let unlimited_swap = Limits {
            memory_swap: Some(-1),
            ..Limits::default()
        };
        unlimited_swap.validate(&host()).unwrap();
    }

    #[test]
    fn memory_below_six_mib_or_above_the_host_is_rejected_naming_the_flag() {
        let memory = |m| Limits {
            memory: Some(m),
            ..Limits::default()
        };
        assert_eq!(invalid(memory(0)), "--memory 0: must be at least 6MiB");
        assert_eq!(
            invalid(memory(MIN_MEMORY - 1)),
            "--memory 6.0MiB: must be at least 6MiB"
        );
        assert_eq!(
            invalid(memory(4096 * MIB)),
            "--memory 4GiB: this host has 2GiB of memory"
        );
        memory(MIN_MEMORY).validate(&host()).unwrap();
    }

    #[test]
    fn memory_swap_must_cover_memory_need_memory_and_be_accounted() {
        let limits = |memory, swap| Limits {
            memory,
            memory_swap: Some(swap),
            ..Limits::default()
        };
        let below = invalid(limits(Some(128 * MIB), 64 * MIB as i64));
        assert!(
            below.starts_with("--memory-swap 64MiB: must be at least --memory 128MiB"),
            "{below}"
        );
        let alone = invalid(limits(None, 64 * MIB as i64));
        assert!(
            alone.starts_with("--memory-swap 64MiB: set --memory"),
            "{alone}"
        );
        for nonsense in [0, -2] {
            let msg = invalid(limits(Some(64 * MIB), nonsense));
            assert!(msg.starts_with("--memory-swap"), "{msg}");
        }
        let mut no_accounting = host();
        no_accounting.swap_accounting = false;
        let msg = limits(Some(64 * MIB), -1)
            .validate(&no_accounting)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("does not limit swap"), "{msg}");
        // Equal to memory means "no swap" and is fine.
        limits(Some(64 * MIB), 64 * MIB as i64)
            .validate(&host())
            .unwrap();
    }

    #[test]
    fn cpus_that_are_zero_negative_nan_or_above_the_host_are_rejected() {
        let cpus = |c| Limits {
            cpus: Some(c),
            ..Limits::default()
        };
        assert_eq!(invalid(cpus(64.0)), "--cpus 64: this host has 2 CPUs");
        assert_eq!(invalid(cpus(0.0)), "--cpus 0: must be at least 0.01");
        assert_eq!(invalid(cpus(-1.0)), "--cpus -1: must be at least 0.01");
        assert_eq!(invalid(cpus(0.001)), "--cpus 0.001: must be at least 0.01");
        assert_eq!(invalid(cpus(f64::NAN)), "--cpus NaN: not a finite number");
        assert_eq!(
            invalid(cpus(f64::INFINITY)),
            "--cpus inf: not a finite number"
        );
        cpus(2.0).validate(&host()).unwrap();
        cpus(0.01).validate(&host()).unwrap();
    }

    #[test]
    fn shares_pids_and_blkio_weight_out_of_range_are_rejected() {
        let shares = |s| Limits {
            cpu_shares: Some(s),
            ..Limits::default()
        };
        assert_eq!(
            invalid(shares(0)),
            "--cpu-shares 0: must be between 2 and 262144"
        );
        assert!(invalid(shares(262_145)).starts_with("--cpu-shares 262145"));
        let pids = |p| Limits {
            pids: Some(p),
            ..Limits::default()
        };
        assert!(invalid(pids(-2)).starts_with("--pids-limit -2: must be a positive number"));
        assert_eq!(
            invalid(pids(MAX_PIDS + 1)),
            "--pids-limit 4194305: must be between 1 and 4194304"
        );
        let blkio = |w| Limits {
            blkio_weight: Some(w),
            ..Limits::default()
        };
        assert_eq!(
            invalid(blkio(9)),
            "--blkio-weight 9: must be between 10 and 1000"
        );
        assert_eq!(
            invalid(blkio(0)),
            "--blkio-weight 0: must be between 10 and 1000"
        );
        assert!(invalid(blkio(1001)).starts_with("--blkio-weight 1001"));
    }

    #[test]
    fn an_update_overrides_only_the_fields_it_sets() {
        let stored = Limits {
            memory: Some(64 * MIB),
            cpus: Some(1.0),
            pids: Some(10),
            ..Limits::default()
        };
        let update = Limits {
            cpus: Some(0.5),
            pids: Some(-1),
            blkio_weight: Some(100),
            ..Limits::default()
        };
        assert_eq!(
            stored.merged(&update),
            Limits {
                memory: Some(64 * MIB),
                cpus: Some(0.5),
                pids: Some(-1),
                blkio_weight: Some(100),
                ..Limits::default()
            }
        );
        assert_eq!(stored.merged(&Limits::default()), stored);
    }

    #[test]
    fn unset_swap_defaults_to_twice_memory_where_swap_is_accounted() {
        let memory = Limits {
            memory: Some(64 * MIB),
            ..Limits::default()
        };
        assert_eq!(
            memory.with_swap_default(&host()).memory_swap,
            Some(128 * MIB as i64)
        );
        let mut no_accounting = host();
        no_accounting.swap_accounting = false;
        assert_eq!(memory.with_swap_default(&no_accounting), memory);
        let explicit = Limits {
            memory_swap: Some(-1),
            ..memory.clone()
        };
        assert_eq!(explicit.with_swap_default(&host()), explicit);
    }

    #[test]
    fn the_oci_resources_carry_what_runc_expects() {
        let limits = Limits {
            memory: Some(64 * MIB),
            memory_swap: Some(128 * MIB as i64),
            cpus: Some(0.5),
            cpu_shares: Some(512),
            pids: Some(100),
            blkio_weight: Some(300),
        };
        let r = limits.to_oci();
        let memory = r.memory().unwrap();
        assert_eq!(memory.limit(), Some(64 * MIB as i64));
        assert_eq!(memory.swap(), Some(128 * MIB as i64));
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(r.pids().unwrap().limit(), 100);
        assert_eq!(r.block_io().as_ref().unwrap().weight(), Some(300));

        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["memory"]["limit"], 67108864);
        assert_eq!(json["memory"]["swap"], 134217728);
        assert_eq!(json["cpu"]["quota"], 50000);
        assert_eq!(json["cpu"]["period"], 100000);
        assert_eq!(json["cpu"]["shares"], 512);
        assert_eq!(json["pids"]["limit"], 100);
        assert_eq!(json["blockIO"]["weight"], 300);
    }

    #[test]
    fn unlimited_pids_become_minus_one_and_unset_limits_stay_out_of_the_spec() {
        for p in [-1, 0] {
            let l = Limits {
                pids: Some(p),
                ..Limits::default()
            };
            assert_eq!(l.to_oci().pids().unwrap().limit(), -1);
        }
        let r = Limits::default().to_oci();
        assert!(r.memory().is_none() && r.cpu().is_none());
        assert!(r.pids().is_none() && r.block_io().is_none());
        let quota = Limits {
            cpus: Some(1.25),
            ..Limits::default()
        };
        assert_eq!(
            quota.to_oci().cpu().as_ref().unwrap().quota(),
            Some(125_000)
        );
        assert_eq!(quota.to_oci().cpu().as_ref().unwrap().shares(), None);
    }

    #[test]
    fn v1_values_convert_to_v2_as_runc_converts_them() {
        assert_eq!(cpu_shares_to_weight(2), 1);
        assert_eq!(cpu_shares_to_weight(512), 20);
        assert_eq!(cpu_shares_to_weight(1024), 39);
        assert_eq!(cpu_shares_to_weight(262_144), 10_000);
        assert_eq!(blkio_weight_to_io_weight(10), 1);
        assert_eq!(blkio_weight_to_io_weight(500), 4950);
        assert_eq!(blkio_weight_to_io_weight(1000), 10_000);
        assert_eq!(
            memory_swap_to_v2(128 * MIB as i64, 64 * MIB),
            64 * MIB as i64
        );
        assert_eq!(memory_swap_to_v2(64 * MIB as i64, 64 * MIB), 0);
        assert_eq!(memory_swap_to_v2(-1, 64 * MIB), -1);
    }

    #[test]
    fn unusable_cgroup_paths_touch_nothing() {
        let (_mount, h) = v2_fixture();
        for path in [
            "",
            "/",
            "//",
            "/berth/../etc",
            "berth/./x",
            "berth//x",
            "..",
        ] {
            let cg = ContainerCgroup::new(&h, path);
            assert!(cg.dirs().is_empty(), "{path:?}");
            assert_eq!(cg.v2_id(), None);
            for err in [
                cg.create().unwrap_err(),
                cg.remove().unwrap_err(),
                cg.apply(&Limits::default()).unwrap_err(),
                cg.stats().unwrap_err(),
            ] {
                assert!(
                    matches!(err, CgroupError::InvalidPath { .. }),
                    "{path:?}: {err}"
                );
            }
        }
        let ok = ContainerCgroup::new(&h, "/berth/c1/");
        assert_eq!(ok.dirs(), vec![h.unified_mount.join("berth/c1")]);
        assert_eq!(ok.path(), "/berth/c1/");
    }

    fn read(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
            .trim()
            .to_string()
    }

    fn write(dir: &Path, file: &str, content: &str) {
        fs::write(dir.join(file), content).unwrap();
    }

    fn v2_fixture() -> (tempfile::TempDir, Hierarchy) {
        let mount = tempfile::tempdir().unwrap();
        write(
            mount.path(),
            "cgroup.controllers",
            "cpuset cpu io memory pids\n",
        );
        write(mount.path(), "cgroup.subtree_control", "");
        let h = Hierarchy {
            mode: CgroupMode::Unified,
            unified_mount: mount.path().to_path_buf(),
            v1: Vec::new(),
        };
        (mount, h)
    }

    #[test]
    fn on_v2_limits_go_to_v2_files_with_runc_conversions() {
        let (mount, h) = v2_fixture();
        let cg = ContainerCgroup::new(&h, "/berth/c1");
        cg.create().unwrap();
        assert_eq!(
            read(mount.path(), "cgroup.subtree_control"),
            "+cpu +memory +pids +io"
        );
        let dir = mount.path().join("berth/c1");
        assert!(dir.is_dir());
        assert_eq!(cg.v2_id(), Some(fs::metadata(&dir).unwrap().ino()));
        write(&dir, "cpu.max", "max 100000\n");
        write(&dir, "memory.max", "max\n");
        write(&dir, "memory.swap.max", "max\n");
        write(&dir, "pids.max", "max\n");
        write(&dir, "io.weight", "default 100\n");

        let limits = Limits {
            memory: Some(512 * MIB),
            memory_swap: Some(1024 * MIB as i64),
            cpus: Some(0.5),
            cpu_shares: Some(1024),
            pids: Some(100),
            blkio_weight: Some(500),
        };
        cg.apply(&limits).unwrap();
        assert_eq!(read(&dir, "memory.max"), "536870912");
        assert_eq!(read(&dir, "memory.swap.max"), "536870912");
        assert_eq!(read(&dir, "cpu.max"), "50000 100000");
        assert_eq!(read(&dir, "cpu.weight"), "39");
        assert_eq!(read(&dir, "pids.max"), "100");
        assert_eq!(read(&dir, "io.weight"), "4950");

        // BFQ takes the docker weight as is; -1 lifts pids and swap.
        write(&dir, "io.bfq.weight", "default 100\n");
        let update = Limits {
            memory_swap: Some(-1),
            pids: Some(-1),
            blkio_weight: Some(300),
            ..Limits::default()
        };
        cg.apply(&update).unwrap();
        assert_eq!(read(&dir, "io.bfq.weight"), "300");
        assert_eq!(read(&dir, "pids.max"), "max");
        assert_eq!(read(&dir, "memory.swap.max"), "max");

        // Swap alone is computed against the current memory.max.
        let swap_only = Limits {
            memory_swap: Some(768 * MIB as i64),
            ..Limits::default()
        };
        cg.apply(&swap_only).unwrap();
        assert_eq!(read(&dir, "memory.swap.max"), (256 * MIB).to_string());
        write(&dir, "memory.max", "max\n");
        let err = cg.apply(&swap_only).unwrap_err();
        assert!(
            matches!(err, CgroupError::SwapWithoutMemory { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_limit_without_its_controller_names_the_flag() {
        let (mount, h) = v2_fixture();
        write(mount.path(), "cgroup.controllers", "memory\n");
        let cg = ContainerCgroup::new(&h, "/berth/c1");
        cg.create().unwrap();
        assert_eq!(read(mount.path(), "cgroup.subtree_control"), "+memory");
        let err = cg
            .apply(&Limits {
                pids: Some(5),
                ..Limits::default()
            })
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CgroupError::ControllerMissing { .. }));
        assert!(
            msg.contains("--pids-limit") && msg.contains("pids"),
            "{msg}"
        );
    }

    /// A v1 layout in a temp dir: memory, cpu, pids, blkio, cpuset, name=systemd.
    fn v1_fixture() -> (tempfile::TempDir, Hierarchy) {
        let root = tempfile::tempdir().unwrap();
        let mut v1 = Vec::new();
        for c in ["memory", "cpu", "pids", "blkio", "cpuset", "name=systemd"] {
            let mount = root.path().join(c.trim_start_matches("name="));
            fs::create_dir_all(&mount).unwrap();
            v1.push(V1Mount {
                mount_point: mount,
                controllers: vec![c.to_string()],
            });
        }
        write(&root.path().join("cpuset"), "cpuset.cpus", "0-1\n");
        write(&root.path().join("cpuset"), "cpuset.mems", "0\n");
        let unified = root.path().join("unified");
        fs::create_dir_all(&unified).unwrap();
        write(&unified, "cgroup.controllers", "hugetlb\n");
        let h = Hierarchy {
            mode: CgroupMode::Hybrid,
            unified_mount: unified,
            v1,
        };
        (root, h)
    }

    #[test]
    fn on_hybrid_layouts_limits_go_to_v1_files() {
        let (root, h) = v1_fixture();
        let cg = ContainerCgroup::new(&h, "berth/c1");
        // The kernel makes these files at mkdir; the fixture pre-creates them.
        let dir = |c: &str| root.path().join(c).join("berth/c1");
        for c in ["cpuset", "cpu", "memory", "pids", "blkio"] {
            fs::create_dir_all(root.path().join(c).join("berth/c1")).unwrap();
        }
        write(&root.path().join("cpuset/berth"), "cpuset.cpus", "");
        write(&root.path().join("cpuset/berth"), "cpuset.mems", "");
        write(&dir("cpuset"), "cpuset.cpus", "\n");
        write(&dir("cpuset"), "cpuset.mems", "\n");
        write(
            &dir("memory"),
            "memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(
            &dir("memory"),
            "memory.memsw.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(&dir("cpu"), "cpu.cfs_quota_us", "-1\n");
        write(&dir("cpu"), "cpu.cfs_period_us", "100000\n");
        write(&dir("pids"), "pids.max", "max\n");

        cg.create().unwrap();
        assert_eq!(cg.dirs().len(), 7, "six v1 hierarchies and the unified one");
        assert!(cg.dirs().iter().all(|d| d.is_dir()), "{:?}", cg.dirs());
        assert_eq!(read(&dir("cpuset"), "cpuset.cpus"), "0-1");
        assert_eq!(read(&dir("cpuset"), "cpuset.mems"), "0");

        let limits = Limits {
            memory: Some(64 * MIB),
            memory_swap: Some(128 * MIB as i64),
            cpus: Some(1.5),
            cpu_shares: Some(512),
            pids: Some(20),
            blkio_weight: None,
        };
        cg.apply(&limits).unwrap();
        assert_eq!(read(&dir("memory"), "memory.limit_in_bytes"), "67108864");
        assert_eq!(
            read(&dir("memory"), "memory.memsw.limit_in_bytes"),
            "134217728"
        );
        assert_eq!(read(&dir("cpu"), "cpu.cfs_quota_us"), "150000");
        assert_eq!(read(&dir("cpu"), "cpu.cfs_period_us"), "100000");
        assert_eq!(read(&dir("cpu"), "cpu.shares"), "512");
        assert_eq!(read(&dir("pids"), "pids.max"), "20");

        let weight = Limits {
            blkio_weight: Some(300),
            ..Limits::default()
        };
        let err = cg.apply(&weight).unwrap_err();
        assert!(
            matches!(err, CgroupError::BlkioWeightUnsupported { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("blkio.bfq.weight"), "{err}");
        write(&dir("blkio"), "blkio.bfq.weight", "100\n");
        cg.apply(&weight).unwrap();
        assert_eq!(read(&dir("blkio"), "blkio.bfq.weight"), "300");

        cg.remove().unwrap_err(); // plain dirs with files in them: rmdir fails, names the dir
    }

    #[test]
    fn removing_deletes_nested_cgroups_and_tolerates_absent_dirs() {
        let (_root, h) = v1_fixture();
        let cg = ContainerCgroup::new(&h, "/berth/c2");
        cg.create().unwrap();
        // A container may make its own sub-cgroups.
        fs::create_dir_all(h.unified_mount.join("berth/c2/inner/deeper")).unwrap();
        // One hierarchy already cleaned up by the runtime.
        fs::remove_dir(&cg.dirs()[0]).unwrap();
        cg.remove().unwrap();
        assert!(cg.dirs().iter().all(|d| !d.exists()));
        assert!(h.unified_mount.join("berth").is_dir(), "parents stay");
        cg.remove().unwrap();
    }

    #[test]
    fn a_cgroup_that_cannot_be_removed_is_named_in_the_error() {
        let (_root, h) = v1_fixture();
        let cg = ContainerCgroup::new(&h, "/berth/c3");
        cg.create().unwrap();
        let memory = h.v1_mount("memory").unwrap().join("berth/c3");
        write(&memory, "cgroup.procs", "4242\n");
        let err = cg.remove().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&memory.display().to_string()), "{msg}");
        assert!(msg.contains("4242"), "{msg}");
        // The other hierarchies were still cleaned up.
        assert!(!h.unified_mount.join("berth/c3").exists());
    }
}

/// Against the real kernel (root): cgroups named `berth-limits-it-<pid>-<test>` in every
/// hierarchy, always removed by [`host_tests::Cleanup`], even when an assertion fails.
#[cfg(test)]
mod host_tests {
    use std::{
        io::{BufRead as _, BufReader},
        process::{Child, ChildStdout, Command, Stdio},
    };

    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// Removes the cgroup on drop; declared before [`Inside`] so the process is gone first.
    struct Cleanup(ContainerCgroup);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Err(e) = self.0.remove() {
                eprintln!("cleanup of {}: {e}", self.0.path());
            }
        }
    }

    /// A `sh` this test started, moved into every directory of a cgroup; killed and reaped on
    /// drop.
    struct Inside {
        child: Child,
        stdout: BufReader<ChildStdout>,
    }

    impl Inside {
        /// Runs `script` in a shell that first writes its pid into each dir's cgroup.procs.
        fn spawn(cg: &ContainerCgroup, script: &str) -> Self {
            let mut child = Command::new("/bin/sh")
                .arg("-c")
                .arg(format!(
                    "for d in \"$@\"; do echo $$ > \"$d/cgroup.procs\" || exit 1; done; {script}"
                ))
                .arg("sh")
                .args(cg.dirs())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn /bin/sh");
            let stdout = BufReader::new(child.stdout.take().unwrap());
            Self { child, stdout }
        }

        fn line(&mut self) -> String {
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            line.trim().to_string()
        }

        /// Closes its stdin (the scripts end with `read`) and waits.
        fn finish(mut self) -> std::process::ExitStatus {
            drop(self.child.stdin.take());
            self.child.wait().unwrap()
        }
    }

    impl Drop for Inside {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn unique(test: &str) -> (Hierarchy, ContainerCgroup) {
        let h = Hierarchy::detect().unwrap();
        let path = format!("/berth-limits-it-{}-{test}", std::process::id());
        let cg = ContainerCgroup::new(&h, &path);
        (h, cg)
    }

    fn read(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
            .trim()
            .to_string()
    }

    /// Reads back what `apply` wrote, in the format of wherever the controller lives.
    fn assert_limits(h: &Hierarchy, cg: &ContainerCgroup, memory: u64, swap: i64, quota: i64) {
        let p = h.placement(cg.path().trim_start_matches('/'));
        match p.memory.unwrap() {
            ControllerDir::V1(d) => {
                assert_eq!(read(&d, "memory.limit_in_bytes"), memory.to_string());
                assert_eq!(read(&d, "memory.memsw.limit_in_bytes"), swap.to_string());
            }
            ControllerDir::V2(d) => {
                assert_eq!(read(&d, "memory.max"), memory.to_string());
                let v2 = memory_swap_to_v2(swap, memory);
                assert_eq!(read(&d, "memory.swap.max"), v2.to_string());
            }
        }
        match p.cpu.unwrap() {
            ControllerDir::V1(d) => {
                assert_eq!(read(&d, "cpu.cfs_quota_us"), quota.to_string());
                assert_eq!(read(&d, "cpu.cfs_period_us"), "100000");
                assert_eq!(read(&d, "cpu.shares"), "512");
            }
            ControllerDir::V2(d) => {
                assert_eq!(read(&d, "cpu.max"), format!("{quota} 100000"));
                assert_eq!(
                    read(&d, "cpu.weight"),
                    cpu_shares_to_weight(512).to_string()
                );
            }
        }
    }

    #[test]
    fn a_real_cgroup_takes_limits_and_updates_shows_usage_and_is_removed_everywhere() {
        let (h, cg) = unique("update");
        let _cleanup = Cleanup(cg.clone());
        cg.create().unwrap();
        let dirs = cg.dirs();
        assert_eq!(dirs.len(), h.v1.len() + 1);
        assert!(dirs.iter().all(|d| d.is_dir()), "{dirs:?}");
        let unified = cg.unified_dir().unwrap();
        assert_eq!(cg.v2_id(), Some(fs::metadata(&unified).unwrap().ino()));

        let host = HostCapacity::detect_with(&h).unwrap();
        let first = Limits {
            memory: Some(64 * MIB),
            memory_swap: Some(128 * MIB as i64),
            cpus: Some(0.5),
            cpu_shares: Some(512),
            pids: Some(20),
            blkio_weight: None,
        };
        first.validate(&host).unwrap();
        cg.apply(&first).unwrap();
        assert_limits(&h, &cg, 64 * MIB, 128 * MIB as i64, 50_000);
        let pids = h.placement(cg.path().trim_start_matches('/')).pids.unwrap();
        assert_eq!(read(pids.path(), "pids.max"), "20");

        // Growing memory and memory+swap: memsw has to go first on v1.
        let update = Limits {
            memory: Some(256 * MIB),
            memory_swap: Some(512 * MIB as i64),
            cpus: Some(host.cpus.min(2) as f64 * 0.75),
            pids: Some(-1),
            ..Limits::default()
        };
        let merged = first.merged(&update);
        merged.validate(&host).unwrap();
        cg.apply(&merged).unwrap();
        let quota = merged.cpu_quota_us().unwrap();
        assert_limits(&h, &cg, 256 * MIB, 512 * MIB as i64, quota);
        assert_eq!(read(pids.path(), "pids.max"), "max");
        // And shrinking back: memory has to go first.
        cg.apply(&first).unwrap();
        assert_limits(&h, &cg, 64 * MIB, 128 * MIB as i64, 50_000);
        cg.apply(&merged).unwrap();

        let idle = cg.stats().unwrap();
        assert_eq!(idle.pids_current, 0, "{idle:?}");
        assert_eq!(idle.memory_limit_bytes, Some(256 * MIB));
        assert_eq!(idle.pids_limit, None);
        assert_eq!(idle.cpu_quota_seconds_per_second, Some(quota as f64 / 1e5));

        let mut inside = Inside::spawn(
            &cg,
            "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo ready; read x || :",
        );
        assert_eq!(inside.line(), "ready");
        let busy = cg.stats().unwrap();
        assert!(busy.pids_current >= 1, "{busy:?}");
        assert!(busy.cpu_usage_seconds > 0.0, "{busy:?}");
        assert!(
            busy.cpu_user_seconds + busy.cpu_system_seconds > 0.0,
            "{busy:?}"
        );
        assert!(busy.memory_usage_bytes > 0, "{busy:?}");
        assert!(inside.finish().success());

        let done = cg.stats().unwrap();
        assert_eq!(done.pids_current, 0, "{done:?}");
        assert!(done.cpu_usage_seconds >= busy.cpu_usage_seconds);

        cg.remove().unwrap();
        for d in &dirs {
            assert!(!d.exists(), "{} is still there", d.display());
        }
        assert_eq!(cg.v2_id(), None);
        cg.remove().unwrap();
    }

    #[test]
    fn blkio_weight_reaches_the_kernel_where_it_has_a_weight_file() {
        let (h, cg) = unique("blkio");
        let _cleanup = Cleanup(cg.clone());
        cg.create().unwrap();
        let Some(dir) = h.placement(cg.path().trim_start_matches('/')).blkio else {
            eprintln!("no blkio/io controller on this host: nothing to check");
            return;
        };
        let weight = Limits {
            blkio_weight: Some(300),
            ..Limits::default()
        };
        let bfq = if dir.is_v2() {
            "io.bfq.weight"
        } else {
            "blkio.bfq.weight"
        };
        let legacy = if dir.is_v2() {
            "io.weight"
        } else {
            "blkio.weight"
        };
        match cg.apply(&weight) {
            Ok(()) if dir.path().join(bfq).exists() => {
                // v1 shows "300"; v2 io.bfq.weight shows "default 300".
                let shown = read(dir.path(), bfq);
                assert!(shown.ends_with("300"), "{bfq}: {shown}");
            }
            Ok(()) => assert!(dir.path().join(legacy).exists()),
            Err(CgroupError::BlkioWeightUnsupported { .. }) => {
                assert!(!dir.path().join(bfq).exists() && !dir.path().join(legacy).exists());
                eprintln!("this kernel has no blkio weight file: --blkio-weight is refused");
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_process_above_the_memory_limit_is_oom_killed_and_counted() {
        let (_h, cg) = unique("oom");
        let _cleanup = Cleanup(cg.clone());
        cg.create().unwrap();
        // memory+swap above memory: the memory counter is the one that fails, and only it
        // counts failures (memory.memsw.failcnt stays 0 on Linux 6.18, see stats.rs).
        let limits = Limits {
            memory: Some(16 * MIB),
            memory_swap: Some(32 * MIB as i64),
            ..Limits::default()
        };
        cg.apply(&limits).unwrap();
        // dd's 64 MiB buffer is touched by the read from /dev/zero: the memcg OOM killer must
        // take dd (the largest task; 64 MiB is above memory+swap too), and the shell reports
        // 128 + SIGKILL.
        let mut inside = Inside::spawn(
            &cg,
            "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo status=$?; read x || :",
        );
        assert_eq!(inside.line(), "status=137");
        let s = cg.stats().unwrap();
        assert_eq!(s.oom_kills, 1, "{s:?}");
        assert!(s.memory_failcnt > 0, "{s:?}");
        assert_eq!(s.memory_limit_bytes, Some(16 * MIB));
        if let Some(peak) = s.memory_max_usage_bytes {
            assert!(peak > 8 * MIB && peak <= 16 * MIB, "{s:?}");
        }
        assert!(inside.finish().success());
    }
}
