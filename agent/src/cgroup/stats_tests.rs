use std::{fs, path::PathBuf};

use super::*;

fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

/// Contents as Linux 6.18 writes them in a v1 container cgroup.
fn v1_dirs() -> Vec<tempfile::TempDir> {
    vec![
        fixture(&[
            ("cpuacct.usage", "2500000000\n"),
            ("cpuacct.usage_user", "2000000000\n"),
            ("cpuacct.usage_sys", "500000000\n"),
            ("cpuacct.stat", "user 190\nsystem 40\n"),
        ]),
        fixture(&[
            ("cpu.cfs_quota_us", "50000\n"),
            ("cpu.cfs_period_us", "100000\n"),
            (
                "cpu.stat",
                "nr_periods 10\nnr_throttled 3\nthrottled_time 1500000000\nnr_bursts 0\n\
                 burst_time 0\n",
            ),
        ]),
        fixture(&[
            ("memory.usage_in_bytes", "1048576\n"),
            ("memory.limit_in_bytes", "67108864\n"),
            ("memory.max_usage_in_bytes", "2097152\n"),
            ("memory.failcnt", "3\n"),
            ("memory.memsw.failcnt", "1\n"),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
        ]),
        fixture(&[("pids.current", "3\n"), ("pids.max", "max\n")]),
        fixture(&[
            (
                "blkio.throttle.io_service_bytes_recursive",
                "254:0 Read 4194304\n254:0 Write 8192\n254:0 Sync 4202496\n254:0 Async 0\n\
                 254:0 Discard 0\n254:0 Total 4202496\nTotal 4202496\n",
            ),
            (
                "blkio.bfq.io_service_bytes_recursive",
                "254:0 Read 4096\n8:0 Read 100\n8:0 Write 200\n8:0 Total 300\nTotal 4396\n",
            ),
        ]),
    ]
}

fn v1_placement(dirs: &[tempfile::TempDir]) -> Placement {
    let v1 = |i: usize| Some(ControllerDir::V1(dirs[i].path().to_path_buf()));
    Placement {
        cpuacct: v1(0),
        cpu: v1(1),
        memory: v1(2),
        pids: v1(3),
        blkio: v1(4),
    }
}

#[test]
fn v1_files_give_every_field() {
    let dirs = v1_dirs();
    let s = read(&v1_placement(&dirs), &mut StatFiles::once()).unwrap();
    assert_eq!(
        s,
        ContainerStats {
            cpu_user_seconds: 2.0,
            cpu_system_seconds: 0.5,
            cpu_usage_seconds: 2.5,
            cpu_throttled_periods: 3,
            cpu_throttled_seconds: 1.5,
            memory_usage_bytes: 1048576,
            memory_limit_bytes: Some(67108864),
            memory_max_usage_bytes: Some(2097152),
            memory_failcnt: 4,
            oom_kills: 2,
            pids_current: 3,
            pids_limit: None,
            io_read_bytes: 4194304 + 100,
            io_write_bytes: 8192 + 200,
            cpu_quota_seconds_per_second: Some(0.5),
        }
    );
}

#[test]
fn older_v1_kernels_fall_back_to_ticks_and_lack_oom_kill() {
    let cpuacct = fixture(&[
        ("cpuacct.usage", "2500000000\n"),
        ("cpuacct.stat", "user 190\nsystem 40\n"),
    ]);
    let memory = fixture(&[
        ("memory.usage_in_bytes", "4096\n"),
        ("memory.limit_in_bytes", "9223372036854771712\n"),
        ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n"),
    ]);
    let cpu = fixture(&[
        ("cpu.cfs_quota_us", "-1\n"),
        ("cpu.cfs_period_us", "100000\n"),
    ]);
    let mut s = ContainerStats::default();
    read_v1_cpuacct(cpuacct.path(), &mut StatFiles::once(), 100, &mut s).unwrap();
    read_v1_memory(memory.path(), &mut StatFiles::once(), &mut s).unwrap();
    read_v1_cpu(cpu.path(), &mut StatFiles::once(), &mut s).unwrap();
    assert_eq!(s.cpu_user_seconds, 1.9);
    assert_eq!(s.cpu_system_seconds, 0.4);
    assert_eq!(s.memory_limit_bytes, None, "the unlimited value");
    assert_eq!(s.memory_max_usage_bytes, None);
    assert_eq!(s.oom_kills, 0);
    assert_eq!(s.cpu_quota_seconds_per_second, None);
}

#[test]
fn v2_files_give_every_field() {
    let dir = fixture(&[
        (
            "cpu.stat",
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n\
             core_sched.force_idle_usec 0\nnr_periods 10\nnr_throttled 3\n\
             throttled_usec 1500000\nnr_bursts 0\nburst_usec 0\n",
        ),
        ("cpu.max", "150000 100000\n"),
        ("memory.current", "1048576\n"),
        ("memory.max", "67108864\n"),
        ("memory.peak", "2097152\n"),
        (
            "memory.events",
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
        ),
        ("pids.current", "20\n"),
        ("pids.max", "20\n"),
        (
            "io.stat",
            "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n\
             8:0 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n",
        ),
    ]);
    let v2 = Some(ControllerDir::V2(dir.path().to_path_buf()));
    let placement = Placement {
        memory: v2.clone(),
        cpu: v2.clone(),
        cpuacct: v2.clone(),
        pids: v2.clone(),
        blkio: v2,
    };
    assert_eq!(
        read(&placement, &mut StatFiles::once()).unwrap(),
        ContainerStats {
            cpu_user_seconds: 2.0,
            cpu_system_seconds: 0.5,
            cpu_usage_seconds: 2.5,
            cpu_throttled_periods: 3,
            cpu_throttled_seconds: 1.5,
            memory_usage_bytes: 1048576,
            memory_limit_bytes: Some(67108864),
            memory_max_usage_bytes: Some(2097152),
            memory_failcnt: 4,
            oom_kills: 1,
            pids_current: 20,
            pids_limit: Some(20),
            io_read_bytes: 4097,
            io_write_bytes: 8194,
            cpu_quota_seconds_per_second: Some(1.5),
        }
    );
}

#[test]
fn a_v2_cgroup_without_controllers_still_reports_cpu_usage() {
    // Hybrid hosts: the unified dir has only core files.
    let dir = fixture(&[(
        "cpu.stat",
        "usage_usec 1000\nuser_usec 600\nsystem_usec 400\n",
    )]);
    let placement = Placement {
        cpuacct: Some(ControllerDir::V2(dir.path().to_path_buf())),
        ..Placement::default()
    };
    let s = read(&placement, &mut StatFiles::once()).unwrap();
    assert_eq!(s.cpu_usage_seconds, 0.001);
    assert_eq!(s.cpu_throttled_periods, 0);
    assert_eq!(s.memory_limit_bytes, None);
    let mut s = ContainerStats::default();
    read_v2_cpu_max(dir.path(), &mut StatFiles::once(), &mut s).unwrap();
    read_v2_io(dir.path(), &mut StatFiles::once(), &mut s).unwrap();
    assert_eq!(s, ContainerStats::default(), "absent optional files");
}

#[test]
fn unlimited_v2_values_read_as_none() {
    let dir = fixture(&[
        ("cpu.max", "max 100000\n"),
        ("memory.current", "0\n"),
        ("memory.max", "max\n"),
        ("pids.current", "0\n"),
        ("pids.max", "max\n"),
    ]);
    let mut s = ContainerStats::default();
    read_v2_cpu_max(dir.path(), &mut StatFiles::once(), &mut s).unwrap();
    read_v2_memory(dir.path(), &mut StatFiles::once(), &mut s).unwrap();
    read_pids(dir.path(), &mut StatFiles::once(), &mut s).unwrap();
    assert_eq!(s.cpu_quota_seconds_per_second, None);
    assert_eq!(s.memory_limit_bytes, None);
    assert_eq!(s.pids_limit, None);
}

#[test]
fn a_removed_cgroup_is_an_error_naming_the_file() {
    let gone = PathBuf::from("/nonexistent/berth/c1");
    let placement = Placement {
        memory: Some(ControllerDir::V2(gone.clone())),
        ..Placement::default()
    };
    let err = read(&placement, &mut StatFiles::once()).unwrap_err();
    assert!(matches!(err, CgroupError::Read { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("/nonexistent/berth/c1/memory.current"),
        "{err}"
    );
}

#[test]
fn garbage_in_a_file_is_a_parse_error_naming_it() {
    let dir = fixture(&[("pids.current", "lots\n"), ("pids.max", "max\n")]);
    let err = read_pids(
        dir.path(),
        &mut StatFiles::once(),
        &mut ContainerStats::default(),
    )
    .unwrap_err();
    assert!(matches!(err, CgroupError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("pids.current"), "{err}");
    let dir = fixture(&[
        ("memory.current", "1\n"),
        ("memory.max", "max\n"),
        ("memory.events", "oom_kill one\n"),
    ]);
    let err = read_v2_memory(
        dir.path(),
        &mut StatFiles::once(),
        &mut ContainerStats::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("memory.events"), "{err}");
}
