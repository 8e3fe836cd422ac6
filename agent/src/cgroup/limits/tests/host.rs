//! Against the real kernel (root): cgroups named `berth-limits-it-<pid>-<test>` in every
//! hierarchy, always removed by [`Cleanup`], even when an assertion fails. On this project's
//! hybrid hosts the limits land in v1 files, on pure v2 hosts in v2 files; the checks read back
//! whichever [`Hierarchy::placement`] picks.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    process::{Child, ChildStdout, Command, Stdio},
};

use super::{MIB, read};
use crate::cgroup::{
    CgroupError, ControllerDir, Hierarchy,
    limits::{ContainerCgroup, HostCapacity, Limits, cpu_shares_to_weight, memory_swap_to_v2},
    reader::StatsCache,
};

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

    // The agent's reader: files kept open across reads, one pread each.
    let mut kept = StatsCache::new(h.clone(), 1000);
    let idle = cg.stats().unwrap();
    assert_eq!(kept.read(cg.path(), None, 0).unwrap(), idle);
    assert!(kept.open_count() >= 8, "{} files kept", kept.open_count());
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
    let busy_kept = kept.read(cg.path(), None, 0).unwrap();
    assert_eq!(busy_kept.pids_current, busy.pids_current, "{busy_kept:?}");
    assert!(busy_kept.cpu_usage_seconds >= busy.cpu_usage_seconds);
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
    assert_eq!(kept.read(cg.path(), None, 0).unwrap().pids_current, 0);

    // Removed and made again at the same path (a restarted container): the kept files of
    // the removed cgroup fail, so they are reopened by path and read the new cgroup.
    cg.remove().unwrap();
    cg.create().unwrap();
    cg.apply(&first).unwrap();
    // New limits written: a new version reads the slow (limit) files at once.
    let again = kept.read(cg.path(), None, 1).unwrap();
    assert_eq!(again.memory_limit_bytes, Some(64 * MIB), "{again:?}");
    assert_eq!(again.pids_limit, Some(20), "{again:?}");
    cg.remove().unwrap();
    let err = kept.read(cg.path(), None, 1).unwrap_err();
    assert!(matches!(err, CgroupError::Read { .. }), "{err}");
    assert_eq!(
        kept.open_count(),
        0,
        "a failed read closes the cgroup's files"
    );
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
