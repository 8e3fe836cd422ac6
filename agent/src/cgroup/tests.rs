//! Tests of the hierarchy detection, placement and the tracked walk.

use super::{test_tree::CgTree, *};

#[test]
fn the_walk_maps_every_directory_inode_to_its_path() {
    let mount = tempfile::tempdir().unwrap();
    let root = TrackedRoot::open(mount.path(), "berth/nested").unwrap();
    assert_eq!(root.level, 2);
    assert_eq!(root.path, "/berth/nested");
    fs::create_dir_all(root.dir.join("a/b")).unwrap();
    fs::write(root.dir.join("a/cgroup.procs"), "").unwrap();
    let ino = |p: &str| fs::metadata(root.dir.join(p)).unwrap().ino();
    let mut walked = TrackedWalk::default();
    let walk = root.walk(&mut walked);
    assert_eq!(walk.len(), 3, "{walk:?}");
    assert_eq!(walk[&root.id], "/berth/nested");
    assert_eq!(walk[&ino("a")], "/berth/nested/a");
    assert_eq!(walk[&ino("a/b")], "/berth/nested/a/b");
    assert_eq!(walked.listed(), 3);
    // tmpfs notifies as cgroupfs does: nothing changed, nothing listed.
    assert_eq!(root.walk(&mut walked), walk);
    assert_eq!(walked.listed(), 0);
    assert_eq!(root.walk(&mut TrackedWalk::without_inotify()), walk);
    fs::remove_dir_all(root.dir.join("a")).unwrap();
    assert_eq!(root.walk(&mut walked).len(), 1);
    assert_eq!(
        walked.tree.watched(),
        [""],
        "the removed directories' watches went"
    );
}

/// A tracked root of this test's own on real cgroupfs (root):
/// `<cgroup2>/berth-tracked-test-<pid>-<tag>` (the foreign walk skips `berth*` trees), removed
/// on drop with what the test made below it, deepest first.
struct CgRoot {
    root: TrackedRoot,
    tree: CgTree,
}

impl CgRoot {
    fn new(tag: &str) -> Self {
        let rel = format!("berth-tracked-test-{}-{tag}", std::process::id());
        let mut root = None;
        let tree = CgTree::new(&rel, |mount, _| {
            let r = TrackedRoot::open(mount, &rel).unwrap();
            let dir = r.dir.clone();
            root = Some(r);
            dir
        });
        Self {
            root: root.expect("opened"),
            tree,
        }
    }

    /// Makes `rel` (below the root) and its missing parents.
    fn mkdir(&mut self, rel: &str) {
        self.tree.mkdir(rel);
    }

    fn rmdir(&mut self, rel: &str) {
        self.tree.rmdir(rel);
    }

    /// The cgroup id of `rel` below the root.
    fn id(&self, rel: &str) -> u64 {
        fs::metadata(self.root.dir.join(rel)).unwrap().ino()
    }

    /// The walk with inotify off (every directory listed): what any walk must return.
    fn full_walk(&self) -> HashMap<u64, String> {
        let mut walked = TrackedWalk::without_inotify();
        let found = self.root.walk(&mut walked);
        assert!(!walked.watching());
        found
    }

    /// The paths of a walk's cgroups below the root (`""` for the root), sorted.
    fn paths(&self, found: &HashMap<u64, String>) -> Vec<String> {
        let mut v: Vec<String> = found
            .values()
            .map(|p| p.strip_prefix(&self.root.path).unwrap().to_owned())
            .collect();
        v.sort();
        v
    }
}

#[test]
fn on_cgroupfs_new_and_nested_cgroups_are_in_the_next_walk_and_a_walk_at_rest_lists_nothing() {
    let mut cg = CgRoot::new("changes");
    cg.mkdir("a");
    let mut walked = TrackedWalk::default();

    // First walk: the root and a, both listed and watched.
    let found = cg.root.walk(&mut walked);
    assert!(walked.watching(), "inotify should work on cgroupfs");
    assert_eq!(cg.paths(&found), ["", "/a"]);
    assert_eq!(found[&cg.root.id], cg.root.path);
    assert_eq!(found[&cg.id("a")], format!("{}/a", cg.root.path));
    assert_eq!(walked.listed(), 2);
    assert_eq!(walked.tree.watched(), ["", "/a"]);
    assert_eq!(found, cg.full_walk());

    // At rest: nothing listed, the same map, walk after walk.
    for _ in 0..3 {
        assert_eq!(cg.root.walk(&mut walked), found);
        assert_eq!(walked.listed(), 0, "nothing changed, nothing listed");
    }

    // A new container, and cgroups a container made inside itself (as systemd in a container
    // does), nested below a cgroup already walked: all in the next walk.
    cg.mkdir("b");
    cg.mkdir("a/init.scope");
    cg.mkdir("a/system.slice/x.service");
    let found = cg.root.walk(&mut walked);
    assert_eq!(
        cg.paths(&found),
        [
            "",
            "/a",
            "/a/init.scope",
            "/a/system.slice",
            "/a/system.slice/x.service",
            "/b"
        ]
    );
    assert_eq!(
        found[&cg.id("a/system.slice/x.service")],
        format!("{}/a/system.slice/x.service", cg.root.path)
    );
    // The root and a (events), the four new ones (never listed yet).
    assert_eq!(walked.listed(), 6);
    assert_eq!(walked.tree.watched().len(), 6);
    assert_eq!(found, cg.full_walk());
    assert_eq!(cg.root.walk(&mut walked), found);
    assert_eq!(walked.listed(), 0);

    // A grandchild deep below a leaf: only its parent is listed again (and the new one).
    cg.mkdir("a/system.slice/x.service/y/z");
    let found = cg.root.walk(&mut walked);
    assert!(
        cg.paths(&found)
            .contains(&"/a/system.slice/x.service/y/z".to_owned())
    );
    assert_eq!(walked.listed(), 3, "x.service, y and z");
    assert_eq!(found, cg.full_walk());

    // Removed: gone from the next walk, with their watches (cgroupfs sends no IN_IGNORED: the
    // walk removes them).
    cg.rmdir("a/system.slice/x.service/y/z");
    cg.rmdir("a/system.slice/x.service/y");
    cg.rmdir("b");
    let found = cg.root.walk(&mut walked);
    assert_eq!(
        cg.paths(&found),
        [
            "",
            "/a",
            "/a/init.scope",
            "/a/system.slice",
            "/a/system.slice/x.service"
        ]
    );
    assert_eq!(walked.listed(), 2, "the root and x.service");
    assert_eq!(
        walked.tree.watched(),
        [
            "",
            "/a",
            "/a/init.scope",
            "/a/system.slice",
            "/a/system.slice/x.service"
        ]
    );
    assert_eq!(found, cg.full_walk());

    // Made again under its name: another cgroup (another id), watched again.
    let old = cg.id("a/init.scope");
    cg.rmdir("a/init.scope");
    cg.mkdir("a/init.scope");
    let new = cg.id("a/init.scope");
    assert_ne!(old, new);
    let found = cg.root.walk(&mut walked);
    assert!(!found.contains_key(&old));
    assert_eq!(found[&new], format!("{}/a/init.scope", cg.root.path));
    assert_eq!(found, cg.full_walk());
    cg.mkdir("a/init.scope/again");
    let found = cg.root.walk(&mut walked);
    assert!(
        cg.paths(&found).contains(&"/a/init.scope/again".to_owned()),
        "the new a/init.scope is watched"
    );
    assert_eq!(found, cg.full_walk());
    assert_eq!(cg.root.walk(&mut walked), found);
    assert_eq!(walked.listed(), 0);
}

#[test]
fn on_cgroupfs_without_inotify_every_walk_lists_every_directory_and_finds_the_same() {
    let mut cg = CgRoot::new("fallback");
    cg.mkdir("a/b");
    let mut watched = TrackedWalk::default();
    let mut fallback = TrackedWalk::without_inotify();
    for step in 0..4 {
        match step {
            1 => cg.mkdir("c/d/e"),
            2 => cg.rmdir("a/b"),
            _ => {}
        }
        let want = cg.root.walk(&mut fallback);
        assert!(!fallback.watching());
        // Every directory: the root, a, b (step 0, 1), c, d, e (from step 1).
        let dirs = [3, 6, 5, 5][step];
        assert_eq!(want.len(), dirs, "step {step}");
        assert_eq!(fallback.listed(), dirs, "step {step}");
        assert_eq!(cg.root.walk(&mut watched), want, "step {step}");
    }
    assert!(watched.watching());
    assert!(fallback.tree.watched().is_empty());
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
