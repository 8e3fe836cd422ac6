//! Tests of the limits model and its cgroup writer, one file per concern: `size` (parsing and
//! showing sizes), `validate` (validation, updates, the swap default), `oci` (the spec runc
//! applies), `convert` (runc's v1 -> v2 values), `container` (a [`ContainerCgroup`] against
//! cgroup trees in temp dirs) and `host` (against the real kernel, as root). The per-controller
//! writers have theirs beside them, in `controllers/tests.rs`; the fixtures here serve both.

mod container;
mod convert;
mod host;
mod oci;
mod size;
mod validate;

use std::{fs, path::Path};

use super::*;
use crate::cgroup::{CgroupMode, Hierarchy, V1Mount};

pub(super) const MIB: u64 = 1024 * 1024;

pub(super) fn host() -> HostCapacity {
    HostCapacity {
        cpus: 2,
        memory_bytes: 2048 * MIB,
        swap_accounting: true,
    }
}

pub(super) fn invalid(limits: Limits) -> String {
    limits.validate(&host()).unwrap_err().to_string()
}

pub(super) fn read(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

pub(super) fn write(dir: &Path, file: &str, content: &str) {
    fs::write(dir.join(file), content).unwrap();
}

pub(super) fn v2_fixture() -> (tempfile::TempDir, Hierarchy) {
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

/// A v1 layout in a temp dir: memory, cpu, pids, blkio, cpuset, name=systemd.
pub(super) fn v1_fixture() -> (tempfile::TempDir, Hierarchy) {
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
