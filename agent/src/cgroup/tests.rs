//! Tests of the hierarchy detection, placement and the tracked walk.

use super::*;

#[test]
fn the_walk_maps_every_directory_inode_to_its_path() {
    let mount = tempfile::tempdir().unwrap();
    let root = TrackedRoot::open(mount.path(), "berth/nested").unwrap();
    assert_eq!(root.level, 2);
    assert_eq!(root.path, "/berth/nested");
    fs::create_dir_all(root.dir.join("a/b")).unwrap();
    fs::write(root.dir.join("a/cgroup.procs"), "").unwrap();
    let ino = |p: &str| fs::metadata(root.dir.join(p)).unwrap().ino();
    let stat = |n: u32| format!("nr_descendants {n}\nnr_dying_descendants 0\n");
    fs::write(root.dir.join("a/cgroup.stat"), stat(1)).unwrap();
    let mut files = Files::kept();
    let walk = root.walk(&mut files);
    assert_eq!(walk.len(), 3, "{walk:?}");
    assert_eq!(walk[&root.id], "/berth/nested");
    assert_eq!(walk[&ino("a")], "/berth/nested/a");
    assert_eq!(walk[&ino("a/b")], "/berth/nested/a/b");
    // A cgroup whose cgroup.stat counts no descendants is not listed (a leaf container:
    // one pread, no readdir); one that counts some is.
    fs::write(root.dir.join("a/cgroup.stat"), stat(0)).unwrap();
    let leaf = root.walk(&mut files);
    assert_eq!(leaf.len(), 2, "a/b is behind a leaf: {leaf:?}");
    fs::write(root.dir.join("a/cgroup.stat"), stat(1)).unwrap();
    assert_eq!(root.walk(&mut files), walk);
    fs::remove_dir_all(root.dir.join("a")).unwrap();
    assert_eq!(root.walk(&mut files).len(), 1);
    assert_eq!(files.open_count(), 0, "files of gone cgroups are closed");
}

/// This project's hybrid machines, plus a bind mount of the memory hierarchy.
const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:32 / /mnt/memory-again rw,relatime - cgroup cgroup rw,memory
43 31 0:39 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup rw,net_cls,net_prio
";

fn mounts(text: &str) -> Vec<procfs::process::MountInfo> {
    use procfs::FromBufRead as _;
    procfs::process::MountInfos::from_buf_read(text.as_bytes())
        .unwrap()
        .0
}

fn fixture_v2(controllers: &str) -> (tempfile::TempDir, Hierarchy) {
    let mount = tempfile::tempdir().unwrap();
    fs::write(mount.path().join("cgroup.controllers"), controllers).unwrap();
    let h = Hierarchy {
        mode: CgroupMode::Unified,
        unified_mount: mount.path().to_path_buf(),
        v1: Vec::new(),
    };
    (mount, h)
}

#[test]
fn a_hybrid_mount_table_lists_each_v1_hierarchy_once_with_named_ones() {
    let h = Hierarchy::from_mounts(mounts(HYBRID_MOUNTINFO)).unwrap();
    assert_eq!(h.mode, CgroupMode::Hybrid);
    assert_eq!(h.unified_mount, Path::new("/sys/fs/cgroup/unified"));
    let listed: Vec<(&Path, Vec<&str>)> =
        h.v1.iter()
            .map(|m| {
                let c = m.controllers.iter().map(String::as_str).collect();
                (m.mount_point.as_path(), c)
            })
            .collect();
    assert_eq!(
        listed,
        vec![
            (Path::new("/sys/fs/cgroup/cpu"), vec!["cpu"]),
            (Path::new("/sys/fs/cgroup/cpuacct"), vec!["cpuacct"]),
            (Path::new("/sys/fs/cgroup/memory"), vec!["memory"]),
            (Path::new("/sys/fs/cgroup/blkio"), vec!["blkio"]),
            (Path::new("/sys/fs/cgroup/pids"), vec!["pids"]),
            (Path::new("/sys/fs/cgroup/systemd"), vec!["name=systemd"]),
            (
                Path::new("/sys/fs/cgroup/net_cls,net_prio"),
                vec!["net_cls", "net_prio"]
            ),
        ]
    );
    assert_eq!(
        h.v1_mount("name=systemd"),
        Some(Path::new("/sys/fs/cgroup/systemd"))
    );
    assert_eq!(h.v1_mount("hugetlb"), None);
}

#[test]
fn a_pure_v2_mount_table_is_unified_without_v1_hierarchies() {
    let text = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - \
                cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
    let h = Hierarchy::from_mounts(mounts(text)).unwrap();
    assert_eq!(h.mode, CgroupMode::Unified);
    assert_eq!(h.unified_mount, Path::new("/sys/fs/cgroup"));
    assert!(h.v1.is_empty());
}

#[test]
fn a_configured_mount_takes_the_cgroup_mounts_below_it_and_ignores_the_agents_own() {
    // A container's own (namespaced) cgroup2 at /sys/fs/cgroup, the host's hybrid tree
    // bind-mounted below /host.
    let text = "\
30 23 0:26 / /sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw
50 23 0:28 / /host/sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
51 50 0:32 / /host/sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
52 50 0:38 / /host/sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    let below = |dir: &str| Hierarchy::from_mounts_below(mounts(text), Path::new(dir));
    let h = below("/host/sys/fs/cgroup").unwrap();
    assert_eq!(h.mode, CgroupMode::Hybrid);
    assert_eq!(h.unified_mount, Path::new("/host/sys/fs/cgroup/unified"));
    assert_eq!(
        h.v1_mount("memory"),
        Some(Path::new("/host/sys/fs/cgroup/memory"))
    );
    let h = below("/host/sys/fs/cgroup/unified").unwrap();
    assert_eq!(h.unified_mount, Path::new("/host/sys/fs/cgroup/unified"));
    assert_eq!(h.mode, CgroupMode::Unified);
    // A v1 hierarchy alone has no cgroup2 below it.
    assert!(matches!(
        below("/host/sys/fs/cgroup/memory"),
        Err(CgroupError::NoCgroup2)
    ));
}

#[test]
fn a_configured_mount_that_is_missing_or_holds_no_cgroup2_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    for (path, says) in [
        (missing.as_path(), "No such file"),
        (dir.path(), "no cgroup2 filesystem is mounted there"),
    ] {
        let msg = Hierarchy::detect_at(Some(path)).unwrap_err().to_string();
        let named = format!("discovery.cgroup_mount is {}", path.display());
        assert!(msg.contains(&named) && msg.contains(says), "{msg}");
    }
}

#[test]
fn a_mount_table_without_cgroup2_is_refused() {
    let text = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n";
    let err = Hierarchy::from_mounts(mounts(text)).unwrap_err();
    assert!(matches!(err, CgroupError::NoCgroup2), "{err}");
}

#[test]
fn on_hybrid_hosts_v1_controllers_hold_the_limits() {
    let mut h = Hierarchy::from_mounts(mounts(HYBRID_MOUNTINFO)).unwrap();
    let (unified, _) = fixture_v2("hugetlb");
    h.unified_mount = unified.path().to_path_buf();
    let p = h.placement("berth/c1");
    let v1 = |m: &str| Some(ControllerDir::V1(PathBuf::from(m)));
    assert_eq!(p.memory, v1("/sys/fs/cgroup/memory/berth/c1"));
    assert_eq!(p.cpu, v1("/sys/fs/cgroup/cpu/berth/c1"));
    assert_eq!(p.cpuacct, v1("/sys/fs/cgroup/cpuacct/berth/c1"));
    assert_eq!(p.pids, v1("/sys/fs/cgroup/pids/berth/c1"));
    assert_eq!(p.blkio, v1("/sys/fs/cgroup/blkio/berth/c1"));
}

#[test]
fn on_pure_v2_hosts_only_available_controllers_are_placed() {
    let (mount, h) = fixture_v2("cpuset cpu memory pids");
    let dir = mount.path().join("berth/c1");
    let v2 = Some(ControllerDir::V2(dir.clone()));
    let p = h.placement("berth/c1");
    assert_eq!(p.memory, v2);
    assert_eq!(p.cpu, v2);
    assert_eq!(p.cpuacct, v2);
    assert_eq!(p.pids, v2);
    assert_eq!(p.blkio, None, "io is not in cgroup.controllers");

    // Once the cgroup exists, its own cgroup.controllers decides.
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("cgroup.controllers"), "memory io").unwrap();
    let p = h.placement("berth/c1");
    assert_eq!(p.cpu, None);
    assert_eq!(p.cpuacct, v2, "cpu.stat exists in every v2 cgroup");
    assert_eq!(p.blkio, v2);
}

#[test]
fn swap_accounting_follows_the_memsw_and_swap_max_files() {
    let root = tempfile::tempdir().unwrap();
    let memory = root.path().join("memory");
    fs::create_dir_all(&memory).unwrap();
    let (_unified, mut h) = fixture_v2("");
    h.v1.push(V1Mount {
        mount_point: memory.clone(),
        controllers: vec!["memory".into()],
    });
    assert!(!h.swap_accounting());
    fs::write(memory.join("memory.memsw.limit_in_bytes"), "").unwrap();
    assert!(h.swap_accounting());

    let (mount, h) = fixture_v2("cpu memory");
    let child = mount.path().join("system.slice");
    fs::create_dir_all(&child).unwrap();
    fs::write(child.join("memory.max"), "max").unwrap();
    assert!(!h.swap_accounting());
    fs::write(child.join("memory.swap.max"), "max").unwrap();
    assert!(h.swap_accounting());
}

#[test]
fn this_host_has_a_cgroup2_mount() {
    let h = Hierarchy::detect().unwrap();
    assert!(h.unified_mount.join("cgroup.procs").exists(), "{h:?}");
}
