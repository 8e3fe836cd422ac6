//! Reading cgroupfs cheaply, tick after tick.
//!
//! cgroupfs generates a file's content on every read from offset 0, so a file kept open can
//! be read again with one `pread(2)`; opening it each time costs open, statx, read, read and
//! close, five syscalls (and five runs of berth's own `sys_enter` probe) for a dozen bytes.
//! [`Files`] keeps what it read open; [`StatsCache`] keeps one [`Files`] and the controller
//! placement per container cgroup, so a container's usage costs one `pread` per stat file per
//! tick and nothing else (cAdvisor and runc reopen every file; the profile of an idle berth
//! put those opens at a third of its CPU).
//!
//! A kept file whose cgroup was removed fails to read (`ENODEV`): it is reopened once by
//! path (a restarted container's new cgroup at the same path), and a cgroup that is gone is
//! an error naming the file. Kept files count against a budget (a quarter of the soft
//! `RLIMIT_NOFILE`, which the agent raises at start), past which reads open and close again:
//! the API's sockets keep their share of descriptors.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use super::{CgroupError, Hierarchy, Placement, limits::ContainerCgroup, stats};
use crate::model::ContainerStats;

/// Free space left after a read that tells it reached the end: more than any one line of a
/// cgroup file, so a short read is the end and not a record that did not fit.
const SLACK: usize = 4096;

/// Kept files that change rarely (limits, event counts, IO totals) are read once every this
/// many reads, the content read last standing in between ([`Files::refresh`] makes the next
/// read a real one): at one tick per second, at most 5 s old. Usage (CPU, memory, pids) is
/// read every time; v1 throttling counts go slow through [`Files::read_slow`].
pub const SLOW_EVERY: u32 = 5;

/// File names read every [`SLOW_EVERY`] reads.
const SLOW: [&str; 14] = [
    "cpu.cfs_quota_us",
    "cpu.cfs_period_us",
    "cpu.max",
    "memory.limit_in_bytes",
    "memory.max",
    "memory.max_usage_in_bytes",
    "memory.peak",
    "memory.failcnt",
    "memory.memsw.failcnt",
    "memory.oom_control",
    "memory.events",
    "pids.max",
    "io.stat",
    "blkio.", // every blkio.*_recursive file
];

fn is_slow(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    SLOW.iter()
        .any(|s| name == *s || (s.ends_with('.') && name.starts_with(s)))
}

/// The content of a slow file as last read, and reads left before the next real one.
#[derive(Debug)]
struct Slow {
    left: u32,
    text: Option<String>,
}

/// cgroupfs files read by path; kept open after the first read unless made with
/// [`Files::once`].
#[derive(Debug)]
pub struct Files {
    /// Path -> the open file, or `None` when it does not exist (an optional file this kernel
    /// lacks, remembered: its cgroup's files do not come and go).
    open: HashMap<PathBuf, Option<File>>,
    /// Slow files of kept [`Files`]: what they said.
    slow: HashMap<PathBuf, Slow>,
    keep: bool,
    buf: Vec<u8>,
}

impl Files {
    /// Keeps every file it reads open.
    pub fn kept() -> Self {
        Self {
            open: HashMap::new(),
            slow: HashMap::new(),
            keep: true,
            buf: Vec::new(),
        }
    }

    /// Opens and closes each file per read (one-off reads).
    pub fn once() -> Self {
        Self {
            keep: false,
            ..Self::kept()
        }
    }

    /// Files held open.
    pub fn open_count(&self) -> usize {
        self.open.values().filter(|f| f.is_some()).count()
    }

    /// The next read of every slow file reads it.
    pub fn refresh(&mut self) {
        for s in self.slow.values_mut() {
            s.left = 0;
        }
    }

    /// The file's content, `None` when it does not exist; for a slow file of kept [`Files`],
    /// as read at most [`SLOW_EVERY`] reads ago.
    pub fn read(&mut self, path: &Path) -> Result<Option<&str>, CgroupError> {
        if is_slow(path) {
            self.read_slow(path)
        } else {
            self.read_now(path)
        }
    }

    /// [`Files::read`] on the slow cadence whatever the file's name (a v1 `cpu.stat` holds
    /// only throttling counts, a v2 one the CPU usage).
    pub fn read_slow(&mut self, path: &Path) -> Result<Option<&str>, CgroupError> {
        if !self.keep {
            return self.read_now(path);
        }
        match self.slow.get_mut(path) {
            Some(s) if s.left > 0 => s.left -= 1,
            _ => {
                let text = self.read_now(path)?.map(str::to_owned);
                self.slow.insert(
                    path.to_owned(),
                    Slow {
                        left: SLOW_EVERY - 1,
                        text,
                    },
                );
            }
        }
        Ok(self.slow.get(path).and_then(|s| s.text.as_deref()))
    }

    fn read_now(&mut self, path: &Path) -> Result<Option<&str>, CgroupError> {
        let err = |source: io::Error| CgroupError::Read {
            path: path.to_path_buf(),
            source,
        };
        match self.open.get(path) {
            Some(None) => return Ok(None),
            Some(Some(f)) => match pread_all(f, &mut self.buf) {
                Ok(()) => return self.text(path).map(Some),
                // Its cgroup was removed (maybe made again at the same path): reopen below.
                Err(_) => {
                    self.open.remove(path);
                }
            },
            None => {}
        }
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.keep {
                    self.open.insert(path.to_owned(), None);
                }
                return Ok(None);
            }
            Err(e) => return Err(err(e)),
        };
        pread_all(&f, &mut self.buf).map_err(err)?;
        if self.keep {
            self.open.insert(path.to_owned(), Some(f));
        }
        self.text(path).map(Some)
    }

    /// Keeps the files whose paths `keep` accepts; the others are closed.
    pub fn retain(&mut self, mut keep: impl FnMut(&Path) -> bool) {
        self.open.retain(|p, _| keep(p));
        self.slow.retain(|p, _| self.open.contains_key(p));
    }

    fn text(&self, path: &Path) -> Result<&str, CgroupError> {
        std::str::from_utf8(&self.buf).map_err(|_| CgroupError::Parse {
            path: path.to_path_buf(),
            content: String::from_utf8_lossy(&self.buf).into_owned(),
        })
    }
}

/// Reads `f` from offset 0 into `buf` (replacing its content): one `pread` when the content
/// fits with [`SLACK`] to spare, as every stat file does in the first 16 KiB.
fn pread_all(f: &File, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut len = 0;
    buf.resize(buf.capacity().max(4 * SLACK), 0);
    loop {
        let n = f.read_at(&mut buf[len..], len as u64)?;
        len += n;
        if n == 0 || buf.len() - len >= SLACK {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    buf.truncate(len);
    Ok(())
}

/// One cgroup's placement and open files.
#[derive(Debug)]
struct Entry {
    placement: Placement,
    files: Files,
    /// The caller's version of the cgroup's settings at the last read (see [`StatsCache::read`]).
    version: u64,
}

/// Usage of many containers' cgroups, tick after tick: per cgroup (by v2 id and path) its
/// controller placement, found once, and its stat files, kept open within the budget.
#[derive(Debug)]
pub struct StatsCache {
    hierarchy: Hierarchy,
    entries: HashMap<(Option<u64>, String), Entry>,
    /// Files that may be kept open across all entries.
    budget: usize,
}

impl StatsCache {
    pub fn new(hierarchy: Hierarchy) -> Self {
        let mut lim = libc::rlimit {
            rlim_cur: 1024,
            rlim_max: 1024,
        };
        // SAFETY: getrlimit with a valid pointer to a local struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        Self::with_budget(hierarchy, (lim.rlim_cur / 4) as usize)
    }

    pub fn with_budget(hierarchy: Hierarchy, budget: usize) -> Self {
        Self {
            hierarchy,
            entries: HashMap::new(),
            budget,
        }
    }

    /// Usage and limits of the cgroup at `relative` (v2 id `id` when known: a new cgroup at
    /// the same path is a new entry). A failed read closes the entry's files.
    /// `version` names the caller's view of the cgroup's settings: when it changes (berth
    /// wrote new limits) the slow files are read now rather than within [`SLOW_EVERY`] reads.
    pub fn read(
        &mut self,
        relative: &str,
        id: Option<u64>,
        version: u64,
    ) -> Result<ContainerStats, CgroupError> {
        let cg = ContainerCgroup::new(&self.hierarchy, relative);
        let key = (id, cg.relative()?.to_owned());
        if !self.entries.contains_key(&key) {
            let keep = self.open_count() < self.budget;
            self.entries.insert(
                key.clone(),
                Entry {
                    placement: self.hierarchy.placement(&key.1),
                    files: if keep { Files::kept() } else { Files::once() },
                    version,
                },
            );
        }
        let entry = self.entries.get_mut(&key).expect("inserted above");
        if entry.version != version {
            entry.version = version;
            entry.files.refresh();
        }
        let read = stats::read(&entry.placement, &mut entry.files);
        if read.is_err() {
            // Its files are stale or missing; the placement stays (a cgroup missing from a
            // v1 hierarchy fails every read: no need to look for its controllers each time).
            entry.files = if entry.files.keep {
                Files::kept()
            } else {
                Files::once()
            };
        }
        read
    }

    /// Keeps the cgroups `keep(id, relative)` says are still wanted (without leading `/`);
    /// the others' files are closed.
    pub fn retain(&mut self, mut keep: impl FnMut(Option<u64>, &str) -> bool) {
        self.entries.retain(|(id, rel), _| keep(*id, rel));
    }

    /// Files held open across all entries.
    pub fn open_count(&self) -> usize {
        self.entries.values().map(|e| e.files.open_count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::cgroup::CgroupMode;

    fn v2_hierarchy(mount: &Path) -> Hierarchy {
        Hierarchy {
            mode: CgroupMode::Unified,
            unified_mount: mount.to_owned(),
            v1: Vec::new(),
        }
    }

    fn write_cgroup(mount: &Path, name: &str, usage_usec: u64) {
        let dir = mount.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.controllers"), "memory pids\n").unwrap();
        fs::write(
            dir.join("cpu.stat"),
            format!("usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 2\n"),
        )
        .unwrap();
        fs::write(dir.join("memory.current"), "4096\n").unwrap();
        fs::write(dir.join("memory.max"), "max\n").unwrap();
        fs::write(dir.join("pids.current"), "1\n").unwrap();
        fs::write(dir.join("pids.max"), "max\n").unwrap();
    }

    #[test]
    fn kept_files_are_read_again_from_the_start_and_absence_is_remembered() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, "1\n").unwrap();
        let mut files = Files::kept();
        assert_eq!(files.read(&p).unwrap(), Some("1\n"));
        // Same inode, new content: the kept file sees it from offset 0.
        fs::write(&p, "22\n").unwrap();
        assert_eq!(files.read(&p).unwrap(), Some("22\n"));
        assert_eq!(files.open_count(), 1);
        let absent = d.path().join("absent");
        assert_eq!(files.read(&absent).unwrap(), None);
        fs::write(&absent, "3\n").unwrap();
        assert_eq!(files.read(&absent).unwrap(), None, "absence is remembered");
        assert_eq!(Files::once().read(&absent).unwrap(), Some("3\n"));
    }

    #[test]
    fn slow_files_are_read_every_fifth_time_or_after_a_refresh() {
        let d = tempfile::tempdir().unwrap();
        let (limit, usage) = (d.path().join("memory.max"), d.path().join("memory.current"));
        fs::write(&limit, "100\n").unwrap();
        fs::write(&usage, "1\n").unwrap();
        let mut files = Files::kept();
        assert_eq!(files.read(&limit).unwrap(), Some("100\n"));
        assert_eq!(files.read(&usage).unwrap(), Some("1\n"));
        fs::write(&limit, "200\n").unwrap();
        fs::write(&usage, "2\n").unwrap();
        for _ in 1..SLOW_EVERY {
            assert_eq!(files.read(&limit).unwrap(), Some("100\n"), "as read last");
            assert_eq!(
                files.read(&usage).unwrap(),
                Some("2\n"),
                "usage: every read"
            );
        }
        assert_eq!(
            files.read(&limit).unwrap(),
            Some("200\n"),
            "the fifth read reads"
        );
        fs::write(&limit, "300\n").unwrap();
        assert_eq!(files.read(&limit).unwrap(), Some("200\n"));
        files.refresh();
        assert_eq!(files.read(&limit).unwrap(), Some("300\n"), "refreshed");
        // One-off reads always read.
        assert_eq!(Files::once().read(&limit).unwrap(), Some("300\n"));
        // A file of any name can be read on the cadence (v1 cpu.stat), or every time.
        let stat = d.path().join("cpu.stat");
        fs::write(&stat, "nr_throttled 1\n").unwrap();
        assert_eq!(files.read_slow(&stat).unwrap(), Some("nr_throttled 1\n"));
        fs::write(&stat, "nr_throttled 2\n").unwrap();
        assert_eq!(files.read_slow(&stat).unwrap(), Some("nr_throttled 1\n"));
        assert_eq!(files.read(&stat).unwrap(), Some("nr_throttled 2\n"));
        assert!(is_slow(Path::new(
            "/x/blkio.throttle.io_service_bytes_recursive"
        )));
        assert!(!is_slow(Path::new("/x/cpu.stat")) && !is_slow(Path::new("/x/pids.current")));
    }

    #[test]
    fn content_larger_than_the_buffer_is_read_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big");
        let text: String = (0..20_000).map(|i| format!("8:{i} Read {i}\n")).collect();
        fs::write(&p, &text).unwrap();
        let mut files = Files::kept();
        assert_eq!(files.read(&p).unwrap().map(str::len), Some(text.len()));
        assert_eq!(files.read(&p).unwrap(), Some(text.as_str()));
    }

    #[test]
    fn the_cache_reads_each_cgroup_with_kept_files_and_forgets_gone_ones() {
        let mount = tempfile::tempdir().unwrap();
        write_cgroup(mount.path(), "a", 1_000_000);
        write_cgroup(mount.path(), "b", 3_000_000);
        let mut cache = StatsCache::with_budget(v2_hierarchy(mount.path()), 1000);
        let a = cache.read("/a", Some(1), 0).unwrap();
        assert_eq!(a.cpu_usage_seconds, 1.0);
        assert_eq!(a.memory_usage_bytes, 4096);
        assert_eq!(cache.read("/b", Some(2), 0).unwrap().cpu_usage_seconds, 3.0);
        let kept = cache.open_count();
        assert!(kept >= 6, "cpu.stat, memory and pids files of both: {kept}");
        // New numbers through the same open files.
        fs::write(mount.path().join("a/cpu.stat"), "usage_usec 2000000\n").unwrap();
        assert_eq!(cache.read("/a", Some(1), 0).unwrap().cpu_usage_seconds, 2.0);
        assert_eq!(cache.open_count(), kept);
        // b is no longer wanted: dropped with its files.
        cache.retain(|id, rel| id == Some(1) && rel == "a");
        assert_eq!(cache.open_count(), kept / 2);
        // A failed read (here garbage; on cgroupfs a removed cgroup, see limits' host tests):
        // an error naming the file, and the entry is gone with its files.
        fs::write(mount.path().join("a/memory.current"), "garbage\n").unwrap();
        let err = cache.read("/a", Some(1), 0).unwrap_err().to_string();
        assert!(err.contains("a/memory.current"), "{err}");
        assert_eq!(cache.open_count(), 0, "a failed read closes the files");
        assert!(
            cache.read("../x", None, 0).is_err(),
            "an unusable path reads nothing"
        );
    }

    #[test]
    fn past_the_budget_files_are_opened_per_read() {
        let mount = tempfile::tempdir().unwrap();
        write_cgroup(mount.path(), "a", 1);
        write_cgroup(mount.path(), "b", 1);
        let mut cache = StatsCache::with_budget(v2_hierarchy(mount.path()), 1);
        cache.read("a", Some(1), 0).unwrap();
        let kept = cache.open_count();
        assert!(kept > 1);
        cache.read("b", Some(2), 0).unwrap();
        assert_eq!(cache.open_count(), kept, "b is read without keeping files");
    }
}

/// Timing of [`StatsCache::read`] over real cgroups (not an assertion: run by hand with
/// `cargo test --release -p berth --lib read_timing -- --ignored --nocapture`, as root).
#[cfg(test)]
mod timing {
    use std::time::Instant;

    use super::*;
    use crate::cgroup::limits::ContainerCgroup;

    /// Removes the cgroups, then their parent, on drop.
    struct Made(Vec<ContainerCgroup>, ContainerCgroup);

    impl Drop for Made {
        fn drop(&mut self) {
            for cg in self.0.iter().chain(std::iter::once(&self.1)) {
                if let Err(e) = cg.remove() {
                    eprintln!("cleanup of {}: {e}", cg.path());
                }
            }
        }
    }

    /// CPU time of this thread: (user, system), in µs.
    fn thread_cpu() -> (f64, f64) {
        // SAFETY: getrusage with a valid pointer to a zeroed local struct.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
        let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
        (us(u.ru_utime), us(u.ru_stime))
    }

    #[test]
    #[ignore = "timing by hand, as root on real cgroupfs"]
    fn read_timing_of_50_real_cgroups() {
        const CGROUPS: usize = 50;
        const ROUNDS: usize = 1000;
        let h = Hierarchy::detect().unwrap();
        let parent = format!("/berth-readbench-{}", std::process::id());
        let cgs: Vec<ContainerCgroup> = (0..CGROUPS)
            .map(|i| ContainerCgroup::new(&h, &format!("{parent}/c{i}")))
            .collect();
        let made = Made(cgs, ContainerCgroup::new(&h, &parent));
        for cg in &made.0 {
            cg.create().unwrap();
        }
        let ids: Vec<Option<u64>> = made.0.iter().map(|cg| cg.v2_id()).collect();
        let mut cache = StatsCache::new(h.clone());
        for (cg, id) in made.0.iter().zip(&ids) {
            cache.read(cg.path(), *id, 0).unwrap();
        }
        let (u0, s0) = thread_cpu();
        let start = Instant::now();
        for _ in 0..ROUNDS {
            for (cg, id) in made.0.iter().zip(&ids) {
                std::hint::black_box(cache.read(cg.path(), *id, 0).unwrap());
            }
        }
        let wall = start.elapsed().as_secs_f64() * 1e6;
        let (u1, s1) = thread_cpu();
        let n = (CGROUPS * ROUNDS) as f64;
        eprintln!(
            "{:?}: {CGROUPS} cgroups x {ROUNDS} rounds, {} files kept: {:.2} µs wall per \
             container read ({:.2} µs user, {:.2} µs system)",
            h.mode,
            cache.open_count(),
            wall / n,
            (u1 - u0) / n,
            (s1 - s0) / n,
        );
    }
}
