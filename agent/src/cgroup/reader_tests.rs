use std::fs;

use super::*;
use crate::cgroup::{CgroupMode, V1Mount};

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
    // Same inode, new content: the kept file sees it from offset 0.
    let mut stats = StatFiles::kept();
    fs::write(d.path().join("pids.current"), "1\n").unwrap();
    assert_eq!(
        stats.read(d.path(), Stat::PidsCurrent).unwrap(),
        Some("1\n")
    );
    fs::write(d.path().join("pids.current"), "22\n").unwrap();
    assert_eq!(
        stats.read(d.path(), Stat::PidsCurrent).unwrap(),
        Some("22\n")
    );
    assert_eq!(stats.read(d.path(), Stat::MemoryCurrent).unwrap(), None);
    fs::write(d.path().join("memory.current"), "3\n").unwrap();
    assert_eq!(stats.read(d.path(), Stat::MemoryCurrent).unwrap(), None);
    assert_eq!(stats.open_count(), 1);
    let mut once = StatFiles::once();
    assert_eq!(
        once.read(d.path(), Stat::MemoryCurrent).unwrap(),
        Some("3\n")
    );
    assert_eq!(once.open_count(), 0, "one-off reads keep nothing");
}

#[test]
fn task_count_and_memory_follow_the_cpu_time_or_the_slow_cadence() {
    let mount = tempfile::tempdir().unwrap();
    write_cgroup(mount.path(), "c", 1_000_000);
    let dir = mount.path().join("c");
    let set = |file: &str, v: &str| fs::write(dir.join(file), v).unwrap();
    let mut cache = StatsCache::new(v2_hierarchy(mount.path()), 1000).following_cpu();
    let read = |cache: &mut StatsCache| {
        let s = cache.read("c", Some(1), 0).unwrap();
        (s.memory_usage_bytes, s.pids_current)
    };
    set("memory.events", "max 0\noom_kill 0\n");
    assert_eq!(read(&mut cache), (4096, 1));
    // The CPU time stands still: the last numbers stand for up to SLOW_EVERY reads.
    set("memory.current", "8192\n");
    set("pids.current", "2\n");
    for _ in 1..SLOW_EVERY {
        assert_eq!(read(&mut cache), (4096, 1), "idle: as read last");
    }
    assert_eq!(
        read(&mut cache),
        (8192, 2),
        "read again on the slow cadence"
    );
    // It ran: read at once.
    set("memory.current", "12288\n");
    set("cpu.stat", "usage_usec 1000001\n");
    assert_eq!(read(&mut cache), (12288, 2), "its CPU time moved");
    set("memory.current", "16384\n");
    set("cpu.stat", "usage_usec 1000002\n");
    assert_eq!(read(&mut cache), (16384, 2), "and moved again");
    // berth's own change of its settings (a version bump) reads everything.
    set("memory.current", "20480\n");
    assert_eq!(
        cache.read("c", Some(1), 1).unwrap().memory_usage_bytes,
        20480
    );
    // Idle again (the CPU time as read last): a limit keeps the slow cadence, counts of
    // work done wait for IDLE_EVERY reads.
    // A version change reads everything now.
    cache.read("c", Some(1), 2).unwrap();
    let events = |cache: &mut StatsCache| {
        let s = cache.read("c", Some(1), 2).unwrap();
        (s.memory_limit_bytes, s.memory_failcnt)
    };
    set("memory.max", "1048576\n");
    set("memory.events", "max 3\noom_kill 0\n");
    let mut seen = Vec::new();
    for _ in 1..IDLE_EVERY {
        seen.push(events(&mut cache));
    }
    assert_eq!(seen[0], (None, 0), "as read last");
    let limit_at = seen.iter().position(|e| e.0 == Some(1_048_576));
    assert_eq!(
        limit_at,
        Some(SLOW_EVERY as usize - 1),
        "the limit on the slow cadence"
    );
    assert!(
        seen.iter().all(|e| e.1 == 0),
        "idle: the count waits: {seen:?}"
    );
    assert_eq!(
        events(&mut cache),
        (Some(1_048_576), 3),
        "read at IDLE_EVERY"
    );
    // Without following_cpu, every read reads them.
    let mut plain = StatsCache::new(v2_hierarchy(mount.path()), 1000);
    assert_eq!(read(&mut plain), (20480, 2));
    set("memory.current", "4096\n");
    assert_eq!(read(&mut plain), (4096, 2));
}

#[test]
fn slow_files_are_read_every_fifth_time_or_after_a_refresh() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (limit, usage) = (dir.join("memory.max"), dir.join("memory.current"));
    fs::write(&limit, "100\n").unwrap();
    fs::write(&usage, "1\n").unwrap();
    let mut files = StatFiles::kept();
    assert_eq!(files.read(dir, Stat::MemoryMax).unwrap(), Some("100\n"));
    assert_eq!(files.read(dir, Stat::MemoryCurrent).unwrap(), Some("1\n"));
    fs::write(&limit, "200\n").unwrap();
    fs::write(&usage, "2\n").unwrap();
    for _ in 1..SLOW_EVERY {
        assert_eq!(
            files.read(dir, Stat::MemoryMax).unwrap(),
            Some("100\n"),
            "as read last"
        );
        assert_eq!(
            files.read(dir, Stat::MemoryCurrent).unwrap(),
            Some("2\n"),
            "usage: every read"
        );
    }
    assert_eq!(
        files.read(dir, Stat::MemoryMax).unwrap(),
        Some("200\n"),
        "the fifth read reads"
    );
    fs::write(&limit, "300\n").unwrap();
    assert_eq!(files.read(dir, Stat::MemoryMax).unwrap(), Some("200\n"));
    files.refresh();
    assert_eq!(
        files.read(dir, Stat::MemoryMax).unwrap(),
        Some("300\n"),
        "refreshed"
    );
    // One-off reads always read.
    assert_eq!(
        StatFiles::once().read(dir, Stat::MemoryMax).unwrap(),
        Some("300\n")
    );
    // An absent slow file is absent on the cadence too.
    assert_eq!(files.read(dir, Stat::MemoryPeak).unwrap(), None);
    assert_eq!(files.read(dir, Stat::MemoryPeak).unwrap(), None);
    // One file, two stats: v1 cpu.stat's throttling counts on the cadence, v2 cpu.stat's
    // usage every time.
    let stat = dir.join("cpu.stat");
    fs::write(&stat, "nr_throttled 1\n").unwrap();
    assert_eq!(
        files.read(dir, Stat::CpuThrottling).unwrap(),
        Some("nr_throttled 1\n")
    );
    fs::write(&stat, "nr_throttled 2\n").unwrap();
    assert_eq!(
        files.read(dir, Stat::CpuThrottling).unwrap(),
        Some("nr_throttled 1\n")
    );
    assert_eq!(
        files.read(dir, Stat::CpuStat).unwrap(),
        Some("nr_throttled 2\n")
    );
    assert!(Stat::BlkioThrottle.slow() && Stat::CpuThrottling.slow() && Stat::PidsMax.slow());
    assert!(!Stat::CpuStat.slow() && !Stat::PidsCurrent.slow());
}

#[test]
fn content_larger_than_the_buffer_is_read_whole() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(Stat::CpuStat.name());
    let text: String = (0..20_000).map(|i| format!("k{i} {i}\n")).collect();
    fs::write(&p, &text).unwrap();
    let mut files = StatFiles::kept();
    let read = |f: &mut StatFiles| f.read(d.path(), Stat::CpuStat).unwrap().map(str::to_owned);
    assert_eq!(read(&mut files).map(|t| t.len()), Some(text.len()));
    assert_eq!(read(&mut files), Some(text.clone()));
    // The buffer stays grown; a shorter content is read as itself.
    fs::write(&p, "k0 1\n").unwrap();
    assert_eq!(read(&mut files).as_deref(), Some("k0 1\n"));
}

#[test]
fn the_cache_reads_each_cgroup_with_kept_files_and_forgets_gone_ones() {
    let mount = tempfile::tempdir().unwrap();
    write_cgroup(mount.path(), "a", 1_000_000);
    write_cgroup(mount.path(), "b", 3_000_000);
    let mut cache = StatsCache::new(v2_hierarchy(mount.path()), 1000);
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
    // A new cgroup at a's path (another id) replaces a's entry.
    assert_eq!(cache.read("a/", Some(3), 0).unwrap().cpu_usage_seconds, 2.0);
    assert_eq!(cache.entries.len(), 1);
    assert_eq!(cache.open_count(), kept / 2);
    // A failed read (here garbage; on cgroupfs a removed cgroup, see limits' host tests):
    // an error naming the file, and the entry is gone with its files.
    fs::write(mount.path().join("a/memory.current"), "garbage\n").unwrap();
    let err = cache.read("/a", Some(3), 0).unwrap_err().to_string();
    assert!(err.contains("a/memory.current"), "{err}");
    assert_eq!(cache.open_count(), 0, "a failed read closes the files");
    for unusable in ["../x", "a/../b", "a//b", "./a", "/", ""] {
        let err = cache.read(unusable, None, 0).unwrap_err();
        assert!(
            matches!(err, CgroupError::InvalidPath { .. }),
            "{unusable}: {err}"
        );
    }
}

#[test]
fn past_the_budget_files_are_opened_per_read() {
    let mount = tempfile::tempdir().unwrap();
    write_cgroup(mount.path(), "a", 1);
    write_cgroup(mount.path(), "b", 1);
    let mut cache = StatsCache::new(v2_hierarchy(mount.path()), 1);
    cache.read("a", Some(1), 0).unwrap();
    let kept = cache.open_count();
    assert!(kept > 1);
    cache.read("b", Some(2), 0).unwrap();
    assert_eq!(cache.open_count(), kept, "b is read without keeping files");
    assert_eq!(kept_files_budget(20_000), 5_000);
}

/// A hybrid host's cgroup: usage from the unified dir's cpu.stat, the quota and the
/// throttling counts (v1 cpu.stat) from the v1 cpu hierarchy.
#[test]
fn a_second_read_goes_through_the_same_files_and_each_dir_and_file_has_its_slot() {
    let (unified, cpu) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_cgroup(unified.path(), "c", 1_000_000);
    let v1 = cpu.path().join("c");
    fs::create_dir_all(&v1).unwrap();
    fs::write(v1.join("cpu.cfs_quota_us"), "50000\n").unwrap();
    fs::write(v1.join("cpu.cfs_period_us"), "100000\n").unwrap();
    let throttled = |n: u64| format!("nr_periods 9\nnr_throttled {n}\nthrottled_time 0\n");
    fs::write(v1.join("cpu.stat"), throttled(1)).unwrap();
    let mut h = v2_hierarchy(unified.path());
    h.mode = CgroupMode::Hybrid;
    h.v1.push(V1Mount {
        mount_point: cpu.path().to_owned(),
        controllers: vec!["cpu".into()],
    });
    let mut cache = StatsCache::new(h, 1000);
    let first = cache.read("/c", Some(7), 0).unwrap();
    assert_eq!(
        (first.cpu_usage_seconds, first.cpu_throttled_periods),
        (1.0, 1)
    );
    assert_eq!(first.cpu_quota_seconds_per_second, Some(0.5));
    let fds = cache.entries["c"].files.fds();
    let slot = |s: Stat| {
        fds.iter()
            .find(|(i, _)| *i == s as usize)
            .map(|(_, fd)| *fd)
    };
    let (usage, throttling) = (slot(Stat::CpuStat), slot(Stat::CpuThrottling));
    assert!(
        usage.is_some() && throttling.is_some() && usage != throttling,
        "two cpu.stat files, two slots: {fds:?}"
    );

    // Both files change in place: usage is read fresh through the same descriptors,
    // the throttling counts (slow) stand as read.
    let v2_stat = unified.path().join("c/cpu.stat");
    fs::write(&v2_stat, "usage_usec 2000000\n").unwrap();
    fs::write(v1.join("cpu.stat"), throttled(2)).unwrap();
    let second = cache.read("/c", Some(7), 0).unwrap();
    assert_eq!(
        (second.cpu_usage_seconds, second.cpu_throttled_periods),
        (2.0, 1)
    );
    assert_eq!(cache.entries["c"].files.fds(), fds, "the same files");
    // Through the kept file, not the path: a new file there is not read.
    fs::remove_file(&v2_stat).unwrap();
    fs::write(&v2_stat, "usage_usec 9000000\n").unwrap();
    assert_eq!(cache.read("/c", Some(7), 0).unwrap().cpu_usage_seconds, 2.0);
    // Reads 2 to SLOW_EVERY stand on the first; the next reads the v1 file again.
    for _ in 3..SLOW_EVERY {
        assert_eq!(
            cache.read("/c", Some(7), 0).unwrap().cpu_throttled_periods,
            1
        );
    }
    assert_eq!(
        cache.read("/c", Some(7), 0).unwrap().cpu_throttled_periods,
        2
    );
    assert_eq!(cache.entries["c"].files.fds(), fds);
}
