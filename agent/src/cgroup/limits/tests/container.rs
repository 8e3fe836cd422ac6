//! [`ContainerCgroup`] against cgroup trees in temp dirs: path checks, create (cpuset
//! inheritance, v2 subtree_control), apply on v2 and hybrid layouts, and removal.

use std::{fs, os::unix::fs::MetadataExt as _};

use super::{MIB, read, v1_fixture, v2_fixture, write};
use crate::cgroup::{
    CgroupError,
    limits::{ContainerCgroup, Limits},
};

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
