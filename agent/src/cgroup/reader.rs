//! Reading cgroupfs cheaply, tick after tick.
//!
//! cgroupfs generates a file's content on every read from offset 0, so a file kept open can
//! be read again with one `pread(2)`; opening it each time costs open, statx, read, read and
//! close, five syscalls (and five runs of berth's own `sys_enter` probe) for a dozen bytes.
//! [`StatsCache`] keeps, per container cgroup, the controller placement and a [`StatFiles`]:
//! one slot per stat file ([`Stat`]), so a container's usage costs one `pread` per due stat
//! file per tick and nothing else (cAdvisor and runc reopen every file; the profile of an idle
//! berth put those opens at a third of its CPU). The user-space side is kept as small: a
//! known cgroup is found by its path as a `&str`, a file by its slot index; paths are built
//! only to open a file or to name it in an error, and nothing is allocated per read (a
//! profile of the earlier path-keyed maps put hashing `Path`s, joining paths and a clone of
//! the [`Hierarchy`] per read above the `pread`s themselves).
//!
//! A kept file whose cgroup was removed fails to read (`ENODEV`): it is reopened once by
//! path (a restarted container's new cgroup at the same path), and a cgroup that is gone is
//! an error naming the file. Kept files count against a budget ([`kept_files_budget`]: a
//! quarter of the soft `RLIMIT_NOFILE` the agent raised at start), past which reads open and
//! close again: the API's sockets keep their share of descriptors.

use std::{
    collections::HashMap,
    fs::File,
    io,
    path::{Path, PathBuf},
};

use super::{CgroupError, Hierarchy, Placement, limits::ContainerCgroup, stats};
use crate::{fsutil::pread_all, model::ContainerStats};

/// Kept files that change rarely (limits, event counts, IO totals: [`Stat::slow`]) are read
/// once every this many reads, the content read last standing in between
/// ([`StatFiles::refresh`] makes the next read a real one): at one tick per second, at most
/// 5 s old. Usage (CPU, memory, pids) is read every time.
pub const SLOW_EVERY: u32 = 5;

/// With [`StatFiles::following_cpu`], counts of work done ([`Stat::counts_work`]) of a cgroup
/// whose CPU time stands still are read once every this many reads: nothing ran to change
/// them (but writeback of its dirty pages, which v2 `io.stat` counts, within this bound).
pub const IDLE_EVERY: u32 = 30;

/// Files a [`StatsCache`] may keep open when the soft `RLIMIT_NOFILE` is `nofile` (what the
/// daemon's `raise_fd_limit` returns): a quarter of it.
pub fn kept_files_budget(nofile: u64) -> usize {
    usize::try_from(nofile / 4).unwrap_or(usize::MAX)
}

/// A stat file of a container cgroup, named by what it holds: its slot in [`StatFiles`]. A
/// file of the same name in two controllers' directories is two stats (v1 `cpu.stat` holds
/// throttling counts in the cpu hierarchy, v2 `cpu.stat` the usage in the unified one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// v1 cpuacct.usage (ns).
    CpuacctUsage,
    /// v1 cpuacct.usage_user (ns, Linux 4.7+).
    CpuacctUsageUser,
    /// v1 cpuacct.usage_sys (ns, Linux 4.7+).
    CpuacctUsageSys,
    /// v1 cpuacct.stat (USER_HZ).
    CpuacctStat,
    /// v2 cpu.stat: usage, and throttling when the cpu controller is enabled.
    CpuStat,
    /// v1 cpu.cfs_quota_us.
    CfsQuota,
    /// v1 cpu.cfs_period_us.
    CfsPeriod,
    /// v1 cpu.stat: throttling counts only.
    CpuThrottling,
    /// v2 cpu.max.
    CpuMax,
    /// v1 memory.usage_in_bytes.
    MemoryUsage,
    /// v1 memory.limit_in_bytes.
    MemoryLimit,
    /// v1 memory.max_usage_in_bytes.
    MemoryMaxUsage,
    /// v1 memory.failcnt.
    MemoryFailcnt,
    /// v1 memory.memsw.failcnt.
    MemswFailcnt,
    /// v1 memory.oom_control.
    OomControl,
    /// v2 memory.current.
    MemoryCurrent,
    /// v2 memory.max.
    MemoryMax,
    /// v2 memory.peak (Linux 5.19+).
    MemoryPeak,
    /// v2 memory.events.
    MemoryEvents,
    /// pids.current (v1 and v2).
    PidsCurrent,
    /// pids.max (v1 and v2).
    PidsMax,
    /// v1 blkio.throttle.io_service_bytes_recursive.
    BlkioThrottle,
    /// v1 blkio.bfq.io_service_bytes_recursive.
    BlkioBfq,
    /// v1 blkio.io_service_bytes_recursive (CFQ, before Linux 5.0).
    BlkioCfq,
    /// v2 io.stat.
    IoStat,
}

/// Slots of a [`StatFiles`]: one per [`Stat`].
const STATS: usize = Stat::IoStat as usize + 1;

impl Stat {
    /// The file's name in its controller's directory.
    pub const fn name(self) -> &'static str {
        match self {
            Self::CpuacctUsage => "cpuacct.usage",
            Self::CpuacctUsageUser => "cpuacct.usage_user",
            Self::CpuacctUsageSys => "cpuacct.usage_sys",
            Self::CpuacctStat => "cpuacct.stat",
            Self::CpuStat | Self::CpuThrottling => "cpu.stat",
            Self::CfsQuota => "cpu.cfs_quota_us",
            Self::CfsPeriod => "cpu.cfs_period_us",
            Self::CpuMax => "cpu.max",
            Self::MemoryUsage => "memory.usage_in_bytes",
            Self::MemoryLimit => "memory.limit_in_bytes",
            Self::MemoryMaxUsage => "memory.max_usage_in_bytes",
            Self::MemoryFailcnt => "memory.failcnt",
            Self::MemswFailcnt => "memory.memsw.failcnt",
            Self::OomControl => "memory.oom_control",
            Self::MemoryCurrent => "memory.current",
            Self::MemoryMax => "memory.max",
            Self::MemoryPeak => "memory.peak",
            Self::MemoryEvents => "memory.events",
            Self::PidsCurrent => "pids.current",
            Self::PidsMax => "pids.max",
            Self::BlkioThrottle => "blkio.throttle.io_service_bytes_recursive",
            Self::BlkioBfq => "blkio.bfq.io_service_bytes_recursive",
            Self::BlkioCfq => "blkio.io_service_bytes_recursive",
            Self::IoStat => "io.stat",
        }
    }

    /// Read every [`SLOW_EVERY`] reads by kept [`StatFiles`]: limits, event counts, IO totals
    /// and v1 throttling counts. Usage is read every time.
    pub const fn slow(self) -> bool {
        !matches!(
            self,
            Self::CpuacctUsage
                | Self::CpuacctUsageUser
                | Self::CpuacctUsageSys
                | Self::CpuacctStat
                | Self::CpuStat
                | Self::MemoryUsage
                | Self::MemoryCurrent
                | Self::PidsCurrent
        )
    }

    /// A limit (CFS quota and period, memory and pids maximum): read on the slow cadence
    /// whether the cgroup runs or not (another tool may change it).
    pub const fn limit(self) -> bool {
        matches!(
            self,
            Self::CfsQuota
                | Self::CfsPeriod
                | Self::CpuMax
                | Self::MemoryLimit
                | Self::MemoryMax
                | Self::PidsMax
        )
    }

    /// Counts of work done (peak memory, failed charges, OOM kills, throttling, IO bytes):
    /// the slow files that are not limits. With [`StatFiles::following_cpu`], read every
    /// [`IDLE_EVERY`] reads while the cgroup's CPU time stands still.
    pub const fn counts_work(self) -> bool {
        self.slow() && !self.limit()
    }

    /// Usage that cannot change while the cgroup runs no task, as far as the agent can see:
    /// its task count, and its memory but for reclaim (and socket buffers charged in softirq
    /// before the task wakes). Read every time while the CPU time moves, else as a slow file
    /// ([`StatFiles::following_cpu`]).
    pub const fn follows_cpu(self) -> bool {
        matches!(
            self,
            Self::MemoryUsage | Self::MemoryCurrent | Self::PidsCurrent
        )
    }
}

/// One cgroup file as [`Handle::read`] left it.
#[derive(Debug, Default)]
enum Handle {
    /// Not opened yet, or its cgroup went away.
    #[default]
    Untried,
    /// It does not exist (an optional file this kernel lacks, remembered: a cgroup's files do
    /// not come and go).
    Absent,
    Open(File),
}

impl Handle {
    /// Reads the file into `buf` through the open file, else by opening `path()` (kept open,
    /// or remembered absent, when `keep`); returns the length read, `None` when it does not
    /// exist. An open file that fails (`ENODEV`: its cgroup was removed, maybe made again at
    /// the same path) is reopened by path once.
    fn read(
        &mut self,
        keep: bool,
        buf: &mut Vec<u8>,
        path: impl FnOnce() -> PathBuf,
    ) -> Result<Option<usize>, CgroupError> {
        match self {
            Self::Absent => return Ok(None),
            Self::Open(f) => match pread_all(f, buf) {
                Ok(len) => return Ok(Some(len)),
                Err(_) => *self = Self::Untried,
            },
            Self::Untried => {}
        }
        let path = path();
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if keep {
                    *self = Self::Absent;
                }
                return Ok(None);
            }
            Err(source) => return Err(CgroupError::Read { path, source }),
        };
        let len = pread_all(&f, buf).map_err(|source| CgroupError::Read { path, source })?;
        if keep {
            *self = Self::Open(f);
        }
        Ok(Some(len))
    }

    fn is_open(&self) -> bool {
        matches!(self, Self::Open(_))
    }
}

/// The content of a slow file as last read, and reads left before the next real one.
#[derive(Debug, Default)]
struct Slow {
    /// Reads served from `text` since the file was read (`u32::MAX`: read it next time).
    age: u32,
    /// Whether the file existed; `text` is its content (its capacity reused from read to
    /// read).
    present: bool,
    text: String,
}

/// One [`Stat`]'s file and, for a slow one of kept [`StatFiles`], what it said.
#[derive(Debug, Default)]
struct Slot {
    handle: Handle,
    slow: Option<Slow>,
}

/// The stat files of one cgroup, one slot per [`Stat`]: kept open after the first read
/// unless made with [`StatFiles::once`]. Each [`Stat`] is read in one directory (its
/// controller's, from the cgroup's [`Placement`]), so the slot stands for that file; the path
/// is built only to open it or to name it in an error.
#[derive(Debug)]
pub struct StatFiles {
    slots: [Slot; STATS],
    keep: bool,
    buf: Vec<u8>,
    /// Whether [`Stat::follows_cpu`] files are read only while the CPU time moves.
    follow_cpu: bool,
    /// The CPU time of the last read (its bits), and whether it stood still at the last one.
    last_cpu: Option<u64>,
    idle: bool,
}

impl StatFiles {
    /// Keeps every file it reads open.
    pub fn kept() -> Self {
        Self {
            slots: Default::default(),
            keep: true,
            buf: Vec::new(),
            follow_cpu: false,
            last_cpu: None,
            idle: false,
        }
    }

    /// Kept files whose task count and memory usage ([`Stat::follows_cpu`]) are read every
    /// time only while the cgroup's CPU time moves ([`Self::cpu_read`]); while it stands still
    /// they are read as slow files are, at most [`SLOW_EVERY`] reads apart. For readers at
    /// every tick: an idle container then costs its CPU file and a slow file now and then.
    pub fn following_cpu() -> Self {
        Self {
            follow_cpu: true,
            ..Self::kept()
        }
    }

    /// The cgroup's CPU time as just read (`None`: not read, no cpu accounting here), before
    /// its [`Stat::follows_cpu`] files are.
    pub fn cpu_read(&mut self, usage_seconds: Option<f64>) {
        let bits = usage_seconds.map(f64::to_bits);
        self.idle = bits.is_some() && bits == self.last_cpu;
        self.last_cpu = bits;
    }

    /// Opens and closes each file per read (one-off reads); slow files are read every time.
    pub fn once() -> Self {
        Self {
            keep: false,
            ..Self::kept()
        }
    }

    /// Files held open.
    pub fn open_count(&self) -> usize {
        self.slots.iter().filter(|s| s.handle.is_open()).count()
    }

    /// The next read of every slow file reads it.
    pub fn refresh(&mut self) {
        for slow in self.slots.iter_mut().filter_map(|s| s.slow.as_mut()) {
            slow.age = u32::MAX;
        }
    }

    /// Closes every file and forgets what the slow ones said: the next reads open them again.
    pub fn close(&mut self) {
        self.slots = Default::default();
    }

    /// The content of `stat`'s file in `dir`, `None` when it does not exist; for a slow one
    /// ([`Stat::slow`]) of kept files, as read at most [`SLOW_EVERY`] reads ago.
    pub fn read(&mut self, dir: &Path, stat: Stat) -> Result<Option<&str>, CgroupError> {
        let path = || dir.join(stat.name());
        let slot = &mut self.slots[stat as usize];
        let follows = self.follow_cpu && stat.follows_cpu();
        if !(self.keep && (stat.slow() || follows)) {
            let len = slot.handle.read(self.keep, &mut self.buf, path)?;
            return len.map(|len| text(&self.buf[..len], path)).transpose();
        }
        // How many reads one real read serves: a file that follows the CPU time is read now
        // unless the cgroup stood idle; counts of work done wait longer while it stands idle.
        let serves = match (self.follow_cpu, self.idle) {
            (true, false) if stat.follows_cpu() => 1,
            (true, true) if stat.counts_work() => IDLE_EVERY,
            _ => SLOW_EVERY,
        };
        match &mut slot.slow {
            Some(slow) if slow.age.saturating_add(1) < serves => slow.age += 1,
            slow => {
                let len = slot.handle.read(true, &mut self.buf, path)?;
                let content = len.map(|len| text(&self.buf[..len], path)).transpose()?;
                let slow = slow.get_or_insert_with(Slow::default);
                slow.age = 0;
                slow.present = content.is_some();
                slow.text.clear();
                slow.text.push_str(content.unwrap_or_default());
            }
        }
        Ok(slot
            .slow
            .as_ref()
            .filter(|s| s.present)
            .map(|s| s.text.as_str()))
    }

    /// Descriptors of the open files, by slot (tests: the same files read again).
    #[cfg(test)]
    fn fds(&self) -> Vec<(usize, std::os::fd::RawFd)> {
        use std::os::fd::AsRawFd as _;
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.handle {
                Handle::Open(f) => Some((i, f.as_raw_fd())),
                _ => None,
            })
            .collect()
    }
}

/// `bytes` as text; not UTF-8 is a parse error naming `path()`.
fn text(bytes: &[u8], path: impl FnOnce() -> PathBuf) -> Result<&str, CgroupError> {
    std::str::from_utf8(bytes).map_err(|_| CgroupError::Parse {
        path: path(),
        content: String::from_utf8_lossy(bytes).into_owned(),
    })
}

/// One cgroup's placement and open files.
#[derive(Debug)]
struct Entry {
    /// Its v2 id when known: another id at the same path is a new cgroup.
    id: Option<u64>,
    placement: Placement,
    files: StatFiles,
    /// The caller's version of the cgroup's settings at the last read (see [`StatsCache::read`]).
    version: u64,
}

impl Entry {
    fn read(&mut self, version: u64) -> Result<ContainerStats, CgroupError> {
        if self.version != version {
            self.version = version;
            self.files.refresh();
        }
        let read = stats::read(&self.placement, &mut self.files);
        if read.is_err() {
            // Its files are stale or missing; the placement stays (a cgroup missing from a
            // v1 hierarchy fails every read: no need to look for its controllers each time).
            self.files.close();
        }
        read
    }
}

/// Usage of many containers' cgroups, tick after tick: per cgroup (by path and v2 id) its
/// controller placement, found once, and its stat files, kept open within the budget.
#[derive(Debug)]
pub struct StatsCache {
    hierarchy: Hierarchy,
    /// By path below the hierarchy roots, without leading or trailing `/` (looked up with the
    /// caller's `&str`, nothing allocated).
    entries: HashMap<String, Entry>,
    /// Files that may be kept open across all entries.
    budget: usize,
    /// Kept files made with [`StatFiles::following_cpu`].
    follow_cpu: bool,
}

impl StatsCache {
    /// Keeps at most `budget` files open across all cgroups ([`kept_files_budget`]).
    pub fn new(hierarchy: Hierarchy, budget: usize) -> Self {
        Self {
            hierarchy,
            entries: HashMap::new(),
            budget,
            follow_cpu: false,
        }
    }

    /// For a reader at every tick: each cgroup's task count and memory usage are read every
    /// time only while its CPU time moves ([`StatFiles::following_cpu`]).
    pub fn following_cpu(mut self) -> Self {
        self.follow_cpu = true;
        self
    }

    /// Usage and limits of the cgroup at `relative` (v2 id `id` when known: a new cgroup at
    /// the same path, another id, replaces the entry). A failed read closes the entry's files.
    /// `version` names the caller's view of the cgroup's settings: when it changes (berth
    /// wrote new limits) the slow files are read now rather than within [`SLOW_EVERY`] reads.
    pub fn read(
        &mut self,
        relative: &str,
        id: Option<u64>,
        version: u64,
    ) -> Result<ContainerStats, CgroupError> {
        // Every entry's path was checked when it was made: a known one is one lookup.
        let known = self.entries.get_mut(relative.trim_matches('/'));
        if let Some(entry) = known.filter(|e| e.id == id) {
            return entry.read(version);
        }
        self.insert(relative, id, version)?.read(version)
    }

    /// A new entry for the cgroup at `relative` (replacing one of another id), its files kept
    /// open while the budget allows.
    fn insert(
        &mut self,
        relative: &str,
        id: Option<u64>,
        version: u64,
    ) -> Result<&mut Entry, CgroupError> {
        let rel = ContainerCgroup::usable(relative).ok_or_else(|| CgroupError::InvalidPath {
            given: relative.to_owned(),
        })?;
        self.entries.remove(rel);
        let keep = self.open_count() < self.budget;
        let entry = Entry {
            id,
            placement: self.hierarchy.placement(rel),
            files: if keep && self.follow_cpu {
                StatFiles::following_cpu()
            } else if keep {
                StatFiles::kept()
            } else {
                StatFiles::once()
            },
            version,
        };
        Ok(self.entries.entry(rel.to_owned()).or_insert(entry))
    }

    /// Keeps the cgroups `keep(id, relative)` says are still wanted (without leading `/`);
    /// the others' files are closed.
    pub fn retain(&mut self, mut keep: impl FnMut(Option<u64>, &str) -> bool) {
        self.entries.retain(|rel, e| keep(e.id, rel));
    }

    /// Files held open across all entries.
    pub fn open_count(&self) -> usize {
        self.entries.values().map(|e| e.files.open_count()).sum()
    }
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;

/// Timing of [`StatsCache::read`] over real cgroups (not an assertion: run by hand with
/// `cargo test --release -p berth --lib read_timing -- --ignored --nocapture`, as root).
#[cfg(test)]
#[path = "reader_timing.rs"]
mod timing;
