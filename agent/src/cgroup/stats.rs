//! Container resource usage and limits read from cgroupfs, v1 and v2 formats.
//!
//! Each reader takes a controller directory, so tests point it at fixture directories. Files a
//! kernel may lack (memory.peak before 5.19, cpuacct.usage_user before 4.7, oom_kill in
//! memory.oom_control before 4.13) leave their field unset; a missing core file (the cgroup is
//! gone) is an error naming it. Files are read through [`StatFiles`] by [`Stat`], and parsed
//! in place: keyed files are scanned for the keys wanted, nothing is allocated per read.
//!
//! | field | v1 | v2 |
//! |---|---|---|
//! | cpu_usage_seconds | cpuacct.usage (ns) | cpu.stat usage_usec |
//! | cpu_user/system_seconds | cpuacct.usage_user/usage_sys (ns), else cpuacct.stat (USER_HZ) | cpu.stat user_usec/system_usec |
//! | cpu_throttled_* | cpu.stat nr_throttled, throttled_time (ns) | cpu.stat nr_throttled, throttled_usec |
//! | cpu_quota_seconds_per_second | cpu.cfs_quota_us / cpu.cfs_period_us | cpu.max |
//! | memory_usage_bytes | memory.usage_in_bytes | memory.current |
//! | memory_limit_bytes | memory.limit_in_bytes (None when unlimited) | memory.max |
//! | memory_max_usage_bytes | memory.max_usage_in_bytes | memory.peak |
//! | memory_failcnt | memory.failcnt + memory.memsw.failcnt | memory.events `max` |
//! | oom_kills | memory.oom_control `oom_kill` | memory.events `oom_kill` |
//! | pids_current/limit | pids.current, pids.max | same |
//! | io_read/write_bytes | blkio.{throttle,bfq}.io_service_bytes_recursive | io.stat rbytes/wbytes |
//!
//! Memory usage includes the page cache (docker's CLI subtracts inactive_file; berth reports
//! the kernel's number).
//!
//! v1 IO bytes: since CFQ is gone, blkio counts IO in two places: blk-throttle's
//! `blkio.throttle.io_service_bytes*` and BFQ's `blkio.bfq.io_service_bytes*` (devices using
//! bfq only). Seen on Linux 6.18: the throttle files stay at 0 until some throttle rule exists on
//! the device (blk-throttle is enabled per queue lazily), so v1 IO bytes are often 0. The reader
//! takes, per device and direction, the larger of the files. v2's io.stat always counts.

use std::{io, path::Path};

use super::{
    CgroupError, ControllerDir, Placement,
    reader::{Stat, StatFiles},
};

pub use crate::model::stats::ContainerStats;

/// Reads every controller `placement` names; absent controllers leave their fields at default.
pub fn read(placement: &Placement, f: &mut StatFiles) -> Result<ContainerStats, CgroupError> {
    let mut s = ContainerStats::default();
    let cpu = match &placement.cpuacct {
        Some(ControllerDir::V1(dir)) => {
            read_v1_cpuacct(dir, f, procfs::ticks_per_second(), &mut s)?;
            Some(s.cpu_usage_seconds)
        }
        Some(ControllerDir::V2(dir)) => {
            read_v2_cpu_stat(dir, f, &mut s)?;
            Some(s.cpu_usage_seconds)
        }
        None => None,
    };
    f.cpu_read(cpu);
    match &placement.cpu {
        Some(ControllerDir::V1(dir)) => read_v1_cpu(dir, f, &mut s)?,
        Some(ControllerDir::V2(dir)) => read_v2_cpu_max(dir, f, &mut s)?,
        None => {}
    }
    match &placement.memory {
        Some(ControllerDir::V1(dir)) => read_v1_memory(dir, f, &mut s)?,
        Some(ControllerDir::V2(dir)) => read_v2_memory(dir, f, &mut s)?,
        None => {}
    }
    if let Some(dir) = &placement.pids {
        read_pids(dir.path(), f, &mut s)?;
    }
    match &placement.blkio {
        Some(ControllerDir::V1(dir)) => read_v1_blkio(dir, f, &mut s)?,
        Some(ControllerDir::V2(dir)) => read_v2_io(dir, f, &mut s)?,
        None => {}
    }
    Ok(s)
}

/// v1 cpuacct: cpuacct.usage, and user/system from cpuacct.usage_user/usage_sys (ns) or, on
/// older kernels, cpuacct.stat (in `ticks_per_second` units, USER_HZ).
pub fn read_v1_cpuacct(
    dir: &Path,
    f: &mut StatFiles,
    ticks_per_second: u64,
    s: &mut ContainerStats,
) -> Result<(), CgroupError> {
    s.cpu_usage_seconds = read_u64(f, dir, Stat::CpuacctUsage)? as f64 / 1e9;
    let user = read_opt_u64(f, dir, Stat::CpuacctUsageUser)?;
    let system = read_opt_u64(f, dir, Stat::CpuacctUsageSys)?;
    if let (Some(user), Some(system)) = (user, system) {
        s.cpu_user_seconds = user as f64 / 1e9;
        s.cpu_system_seconds = system as f64 / 1e9;
    } else if let Some([user, system]) =
        read_opt_keyed(f, dir, Stat::CpuacctStat, ["user", "system"])?
    {
        let hz = ticks_per_second.max(1) as f64;
        s.cpu_user_seconds = user.unwrap_or(0) as f64 / hz;
        s.cpu_system_seconds = system.unwrap_or(0) as f64 / hz;
    }
    Ok(())
}

/// v2 cpu.stat (a core file of every v2 cgroup): usage, user, system; throttling when the cpu
/// controller is enabled.
pub fn read_v2_cpu_stat(
    dir: &Path,
    f: &mut StatFiles,
    s: &mut ContainerStats,
) -> Result<(), CgroupError> {
    let keys = [
        "usage_usec",
        "user_usec",
        "system_usec",
        "nr_throttled",
        "throttled_usec",
    ];
    let content = read_trimmed(f, dir, Stat::CpuStat)?;
    let [usage, user, system, throttled, throttled_usec] =
        keyed(content, keys).map_err(|line| bad(dir, Stat::CpuStat, line))?;
    let secs = |v: Option<u64>| v.unwrap_or(0) as f64 / 1e6;
    s.cpu_usage_seconds = secs(usage);
    s.cpu_user_seconds = secs(user);
    s.cpu_system_seconds = secs(system);
    s.cpu_throttled_periods = throttled.unwrap_or(0);
    s.cpu_throttled_seconds = secs(throttled_usec);
    Ok(())
}

/// v1 cpu: the CFS quota (cpu.cfs_quota_us, -1 = none) over cpu.cfs_period_us, and throttling
/// from cpu.stat (on the slow cadence, as the limits: [`Stat::CpuThrottling`]).
pub fn read_v1_cpu(
    dir: &Path,
    f: &mut StatFiles,
    s: &mut ContainerStats,
) -> Result<(), CgroupError> {
    let quota = read_trimmed(f, dir, Stat::CfsQuota)?;
    let quota: i64 = quota.parse().map_err(|_| bad(dir, Stat::CfsQuota, quota))?;
    let period = read_u64(f, dir, Stat::CfsPeriod)?;
    s.cpu_quota_seconds_per_second =
        (quota > 0 && period > 0).then(|| quota as f64 / period as f64);
    let keys = ["nr_throttled", "throttled_time"];
    if let Some([periods, time]) = read_opt_keyed(f, dir, Stat::CpuThrottling, keys)? {
        s.cpu_throttled_periods = periods.unwrap_or(0);
        s.cpu_throttled_seconds = time.unwrap_or(0) as f64 / 1e9;
    }
    Ok(())
}

/// v2 cpu.max: "max 100000" (no quota) or "50000 100000". Absent when the cpu controller is not
/// enabled for the cgroup.
pub fn read_v2_cpu_max(
    dir: &Path,
    f: &mut StatFiles,
    s: &mut ContainerStats,
) -> Result<(), CgroupError> {
    let Some(content) = f.read(dir, Stat::CpuMax)? else {
        return Ok(());
    };
    let bad = || bad(dir, Stat::CpuMax, content);
    let mut fields = content.split_whitespace();
    let quota = fields.next().ok_or_else(bad)?;
    let period: u64 = fields
        .next()
        .unwrap_or("100000")
        .parse()
        .map_err(|_| bad())?;
    s.cpu_quota_seconds_per_second = match quota {
        "max" => None,
        q => {
            let q: u64 = q.parse().map_err(|_| bad())?;
            (period > 0).then(|| q as f64 / period as f64)
        }
    };
    Ok(())
}

/// v1 memory controller.
pub fn read_v1_memory(
    dir: &Path,
    f: &mut StatFiles,
    s: &mut ContainerStats,
) -> Result<(), CgroupError> {
    s.memory_usage_bytes = read_u64(f, dir, Stat::MemoryUsage)?;
    // "Unlimited" is PAGE_COUNTER_MAX pages: 0x7FFFFFFFFFFFF000 with 4 KiB pages, other values
    // with other page sizes; nothing real is above 2^62 bytes.
    let limit = read_u64(f, dir, Stat::MemoryLimit)?;
    s.memory_limit_bytes = (limit < 1 << 62).then_some(limit);
    s.memory_max_usage_bytes = read_opt_u64(f, dir, Stat::MemoryMaxUsage)?;
    // A charge is checked against memory+swap first, then memory, and fails at one of them, so
    // the sum counts each failed charge once. Seen on Linux 6.18: memory.memsw.failcnt stays 0
    // (failures are tracked on the memory counter only), so with --memory-swap equal to
    // --memory a container can be OOM-killed with failcnt 0; oom_kills still counts it.
    s.memory_failcnt = read_opt_u64(f, dir, Stat::MemoryFailcnt)?.unwrap_or(0)
        + read_opt_u64(f, dir, Stat::MemswFailcnt)?.unwrap_or(0);
    s.oom_kills = read_opt_keyed(f, dir, Stat::OomControl, ["oom_kill"])?
        .and_then(|[kills]| kills)
        .unwrap_or(0);
    Ok(())
}

/// v2 memory controller.
pub fn read_v2_memory(
    dir: &Path,
    f: &mut StatFiles,
    s: &mut ContainerStats,
) -> Result<(), CgroupError> {
    s.memory_usage_bytes = read_u64(f, dir, Stat::MemoryCurrent)?;
    s.memory_limit_bytes = read_max(f, dir, Stat::MemoryMax)?;
    s.memory_max_usage_bytes = read_opt_u64(f, dir, Stat::MemoryPeak)?;
    if let Some([max, kills]) = read_opt_keyed(f, dir, Stat::MemoryEvents, ["max", "oom_kill"])? {
        s.memory_failcnt = max.unwrap_or(0);
        s.oom_kills = kills.unwrap_or(0);
    }
    Ok(())
}

/// pids controller, same files in v1 and v2.
pub fn read_pids(dir: &Path, f: &mut StatFiles, s: &mut ContainerStats) -> Result<(), CgroupError> {
    s.pids_current = read_u64(f, dir, Stat::PidsCurrent)?;
    s.pids_limit = read_max(f, dir, Stat::PidsMax)?;
    Ok(())
}

/// Read and write byte counts per device (`major << 32 | minor`): the first few in place,
/// the rest (a host with many disks) on the heap.
#[derive(Default)]
struct DeviceBytes {
    first: [(u64, [u64; 2]); 8],
    len: usize,
    more: Vec<(u64, [u64; 2])>,
}

impl DeviceBytes {
    /// The counts of `device`, zero when new.
    fn of(&mut self, device: u64) -> &mut [u64; 2] {
        if let Some(i) = self.first[..self.len]
            .iter()
            .position(|(d, _)| *d == device)
        {
            return &mut self.first[i].1;
        }
        if self.len < self.first.len() {
            self.first[self.len] = (device, [0; 2]);
            self.len += 1;
            return &mut self.first[self.len - 1].1;
        }
        let i = match self.more.iter().position(|(d, _)| *d == device) {
            Some(i) => i,
            None => {
                self.more.push((device, [0; 2]));
                self.more.len() - 1
            }
        };
        &mut self.more[i].1
    }

    /// Summed over devices: [read, write].
    fn total(&self) -> [u64; 2] {
        self.first[..self.len]
            .iter()
            .chain(&self.more)
            .fold([0; 2], |[r, w], (_, [dr, dw])| {
                [r.saturating_add(*dr), w.saturating_add(*dw)]
            })
    }
}

/// "MAJ:MIN" as `major << 32 | minor`.
fn device_number(field: &str) -> Option<u64> {
    let (major, minor) = field.split_once(':')?;
    Some(u64::from(major.parse::<u32>().ok()?) << 32 | u64::from(minor.parse::<u32>().ok()?))
}

/// v1 blkio: per device and direction, the larger of the throttle and BFQ counters (see the
/// module header); "Total" lines and other operations (Sync, Async, Discard) are skipped.
pub fn read_v1_blkio(
    dir: &Path,
    f: &mut StatFiles,
    s: &mut ContainerStats,
) -> Result<(), CgroupError> {
    let mut best = DeviceBytes::default();
    for stat in [Stat::BlkioThrottle, Stat::BlkioBfq, Stat::BlkioCfq] {
        let Some(content) = f.read(dir, stat)? else {
            continue;
        };
        for line in content.lines() {
            let mut fields = line.split_whitespace();
            let (Some(device), Some(op), Some(value), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue; // "Total N"
            };
            let direction = if op.eq_ignore_ascii_case("read") {
                0
            } else if op.eq_ignore_ascii_case("write") {
                1
            } else {
                continue;
            };
            let (Some(device), Ok(value)) = (device_number(device), value.parse::<u64>()) else {
                return Err(bad(dir, stat, line));
            };
            let slot = &mut best.of(device)[direction];
            *slot = (*slot).max(value);
        }
    }
    [s.io_read_bytes, s.io_write_bytes] = best.total();
    Ok(())
}

/// v2 io.stat: "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..", summed over
/// devices. Absent when the io controller is not enabled.
pub fn read_v2_io(
    dir: &Path,
    f: &mut StatFiles,
    s: &mut ContainerStats,
) -> Result<(), CgroupError> {
    let Some(content) = f.read(dir, Stat::IoStat)? else {
        return Ok(());
    };
    let (mut read, mut write) = (0u64, 0u64);
    for line in content.lines() {
        for field in line.split_whitespace().skip(1) {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let counter = match key {
                "rbytes" => &mut read,
                "wbytes" => &mut write,
                _ => continue,
            };
            let value: u64 = value.parse().map_err(|_| bad(dir, Stat::IoStat, line))?;
            *counter = counter.saturating_add(value);
        }
    }
    s.io_read_bytes = read;
    s.io_write_bytes = write;
    Ok(())
}

/// A parse error naming `stat`'s file in `dir` (the path is built here, on failure only).
fn bad(dir: &Path, stat: Stat, content: &str) -> CgroupError {
    CgroupError::Parse {
        path: dir.join(stat.name()),
        content: content.to_owned(),
    }
}

/// The content of a file that must exist, trimmed.
fn read_trimmed<'f>(f: &'f mut StatFiles, dir: &Path, stat: Stat) -> Result<&'f str, CgroupError> {
    match f.read(dir, stat)? {
        Some(content) => Ok(content.trim()),
        None => Err(CgroupError::Read {
            path: dir.join(stat.name()),
            source: io::ErrorKind::NotFound.into(),
        }),
    }
}

fn read_u64(f: &mut StatFiles, dir: &Path, stat: Stat) -> Result<u64, CgroupError> {
    let content = read_trimmed(f, dir, stat)?;
    content.parse().map_err(|_| bad(dir, stat, content))
}

fn read_opt_u64(f: &mut StatFiles, dir: &Path, stat: Stat) -> Result<Option<u64>, CgroupError> {
    let Some(content) = f.read(dir, stat)? else {
        return Ok(None);
    };
    let trimmed = content.trim();
    trimmed
        .parse()
        .map(Some)
        .map_err(|_| bad(dir, stat, content))
}

/// A number-or-"max" file (memory.max, pids.max): `None` for "max".
fn read_max(f: &mut StatFiles, dir: &Path, stat: Stat) -> Result<Option<u64>, CgroupError> {
    let content = read_trimmed(f, dir, stat)?;
    parse_max(content).ok_or_else(|| bad(dir, stat, content))
}

/// "max" as `Some(None)`, a number as `Some(Some(n))`, anything else `None`.
fn parse_max(content: &str) -> Option<Option<u64>> {
    match content {
        "max" => Some(None),
        n => n.parse().ok().map(Some),
    }
}

/// The values of `keys` in "key value" lines (cpu.stat, memory.events, memory.oom_control,
/// cpuacct.stat), `None` for a key the file lacks; a line that is not a key and a number is
/// returned as the error.
fn keyed<'c, const N: usize>(
    content: &'c str,
    keys: [&str; N],
) -> Result<[Option<u64>; N], &'c str> {
    let mut values = [None; N];
    for line in content.lines() {
        let mut fields = line.split_whitespace();
        let (key, value) = match (fields.next(), fields.next(), fields.next()) {
            (None, _, _) => continue,
            (Some(key), Some(value), None) => (key, value),
            _ => return Err(line),
        };
        let value: u64 = value.parse().map_err(|_| line)?;
        if let Some(i) = keys.iter().position(|k| *k == key) {
            values[i] = Some(value);
        }
    }
    Ok(values)
}

/// [`keyed`] of an optional file: `None` when it does not exist.
fn read_opt_keyed<const N: usize>(
    f: &mut StatFiles,
    dir: &Path,
    stat: Stat,
    keys: [&str; N],
) -> Result<Option<[Option<u64>; N]>, CgroupError> {
    let Some(content) = f.read(dir, stat)? else {
        return Ok(None);
    };
    keyed(content, keys)
        .map(Some)
        .map_err(|line| bad(dir, stat, line))
}

/// The content of a one-off read of `path`, which must exist, trimmed.
fn read_once(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path)
        .map(|content| content.trim().to_owned())
        .map_err(|source| CgroupError::Read {
            path: path.to_owned(),
            source,
        })
}

/// A single-number file, read once.
pub(crate) fn read_u64_once(path: &Path) -> Result<u64, CgroupError> {
    let content = read_once(path)?;
    content.parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        content,
    })
}

/// A number-or-"max" file, read once: `None` for "max".
pub(crate) fn read_max_once(path: &Path) -> Result<Option<u64>, CgroupError> {
    let content = read_once(path)?;
    parse_max(&content).ok_or_else(|| CgroupError::Parse {
        path: path.to_owned(),
        content,
    })
}

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;
