//! Fixture tests: every layout of [`super::classify`], cgroupfs and systemd driver names, and
//! the walk over a plain directory tree.

use std::{fs, os::unix::fs::MetadataExt, path::PathBuf, time::Instant};

use super::*;
use crate::cgroup::test_tree::CgTree;

const ID: &str = "3f4e8a1b2c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";
const UID: &str = "1c0de6a2-7b9f-4e11-9c3d-5a6b7c8d9e0f";
const UID_: &str = "1c0de6a2_7b9f_4e11_9c3d_5a6b7c8d9e0f";

/// (engine, id, kind) of a path, or None.
fn what(path: &str) -> Option<(Engine, String, Kind)> {
    classify(path).map(|d| (d.engine, d.id, d.kind))
}

fn labels(path: &str) -> Vec<(String, String)> {
    classify(path)
        .unwrap_or_else(|| panic!("{path} not classified"))
        .labels
        .into_iter()
        .collect()
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    v.sort();
    v
}

#[test]
fn docker_containers_are_found_with_the_cgroupfs_and_the_systemd_driver() {
    let want = Some((Engine::Docker, ID.to_owned(), Kind::Workload));
    assert_eq!(what(&format!("/docker/{ID}")), want);
    assert_eq!(what(&format!("/system.slice/docker-{ID}.scope")), want);
    // Not a container: the daemon's own unit, the parent, a short or upper-case id.
    assert_eq!(what("/system.slice/docker.service"), None);
    assert_eq!(what("/docker"), None);
    assert_eq!(what(&format!("/docker/{}", &ID[..12])), None);
    assert_eq!(what(&format!("/docker/{}", ID.to_uppercase())), None);
    assert_eq!(what(&format!("/docker/{ID}/init.scope")), None);
}

#[test]
fn containerd_and_nerdctl_containers_carry_their_namespace() {
    let d = classify(&format!("/k8s.io/{ID}")).unwrap();
    assert_eq!((d.engine, d.kind), (Engine::Containerd, Kind::Workload));
    assert_eq!(
        labels(&format!("/k8s.io/{ID}")),
        kv(&[(LABEL_NAMESPACE, "k8s.io")])
    );
    assert_eq!(
        what(&format!("/system.slice/nerdctl-{ID}.scope")),
        Some((Engine::Containerd, ID.to_owned(), Kind::Workload))
    );
    // `ctr -n default run ... web1`: any containerd id in the default namespace.
    assert_eq!(
        what("/default/web1"),
        Some((Engine::Containerd, "web1".to_owned(), Kind::Workload))
    );
    // Elsewhere only a hex id: systemd units and other runtimes' parents are not namespaces.
    for path in [
        "/moby/web1",
        &format!("/system.slice/{ID}"),
        &format!("/user.slice/{ID}"),
        &format!("/machine/{ID}"),
        "/default/bad..id",
        "/default/-x",
    ] {
        assert_eq!(what(path), None, "{path}");
    }
}

#[test]
fn kubernetes_pods_are_found_with_the_cgroupfs_driver_in_every_qos_class() {
    for (dir, qos) in [
        ("burstable/", "burstable"),
        ("besteffort/", "besteffort"),
        ("", "guaranteed"),
    ] {
        let path = format!("/kubepods/{dir}pod{UID}/{ID}");
        assert_eq!(
            what(&path),
            Some((Engine::Kubernetes, ID.to_owned(), Kind::Unknown)),
            "{path}"
        );
        assert_eq!(
            labels(&path),
            kv(&[(LABEL_POD_UID, UID), (LABEL_QOS, qos)]),
            "{path}"
        );
    }
    // CRI-O with cgroupfs names its cgroups; conmon is not a container.
    let crio = format!("/kubepods/burstable/pod{UID}/crio-{ID}");
    assert_eq!(what(&crio).unwrap().2, Kind::Unknown);
    assert_eq!(
        labels(&crio),
        kv(&[
            (LABEL_POD_UID, UID),
            (LABEL_QOS, "burstable"),
            (LABEL_CRI, "crio")
        ])
    );
    let conmon = format!("/kubepods/burstable/pod{UID}/crio-conmon-{ID}");
    assert_eq!(what(&conmon).unwrap().2, Kind::Conmon);
    // Nested under another parent (kubelet's --cgroup-root).
    assert!(what(&format!("/kubelet/kubepods/besteffort/pod{UID}/{ID}")).is_some());
}

#[test]
fn kubernetes_pods_are_found_with_the_systemd_driver_and_their_uid_gets_its_dashes_back() {
    let cases = [
        (
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            "burstable",
            "containerd",
            Kind::Unknown,
        ),
        (
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
            ),
            "besteffort",
            "crio",
            Kind::Unknown,
        ),
        (
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
            "guaranteed",
            "crio",
            Kind::Conmon,
        ),
        (
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope"),
            "guaranteed",
            "docker",
            Kind::Unknown,
        ),
        // kind's nested kubelet.
        (
            format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            "burstable",
            "containerd",
            Kind::Unknown,
        ),
    ];
    for (path, qos, cri, kind) in cases {
        assert_eq!(
            what(&path),
            Some((Engine::Kubernetes, ID.to_owned(), kind)),
            "{path}"
        );
        assert_eq!(
            labels(&path),
            kv(&[(LABEL_POD_UID, UID), (LABEL_QOS, qos), (LABEL_CRI, cri)]),
            "{path}"
        );
    }
}

#[test]
fn a_pod_uid_may_be_plain_hex_and_pod_level_cgroups_are_not_containers() {
    let path = format!("/kubepods/besteffort/pod0123abcd/{ID}");
    let d = classify(&path).unwrap();
    assert_eq!(d.labels[LABEL_POD_UID], "0123abcd");
    for path in [
        "/kubepods".to_owned(),
        "/kubepods/burstable".to_owned(),
        format!("/kubepods/burstable/pod{UID}"),
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
        format!("/kubepods/burstable/pod{UID}/not-an-id"),
        format!("/kubepods/burstable/notapod/{ID}"),
        format!("/kubepods/unknownqos/pod{UID}/{ID}"),
        format!("/kubepods/burstable/pod{UID}/{ID}/extra"),
    ] {
        assert_eq!(what(&path), None, "{path}");
    }
}

#[test]
fn podman_containers_are_found_with_both_managers_and_conmon_is_told_apart() {
    let want = Some((Engine::Podman, ID.to_owned(), Kind::Workload));
    assert_eq!(what(&format!("/machine.slice/libpod-{ID}.scope")), want);
    assert_eq!(what(&format!("/libpod_parent/libpod-{ID}")), want);
    // Rootless, under the user's slice.
    assert_eq!(
        what(&format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
        )),
        want
    );
    assert_eq!(
        what(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
        Some((Engine::Podman, ID.to_owned(), Kind::Conmon))
    );
    assert_eq!(what("/libpod_parent/conmon"), None);
}

#[test]
fn lxc_containers_are_found_by_name_in_the_new_and_the_old_layout() {
    for path in ["/lxc.payload.web", "/lxc.payload/web", "/lxc/web"] {
        let d = classify(path).unwrap();
        assert_eq!(
            (d.engine, d.id.as_str(), d.name.as_deref(), d.kind),
            (Engine::Lxc, "web", Some("web"), Kind::Workload),
            "{path}"
        );
    }
    assert_eq!(what("/lxc.monitor.web").unwrap().2, Kind::Conmon);
    assert_eq!(what("/lxc.payload."), None);
    assert_eq!(what("/lxc"), None);
}

#[test]
fn berth_rooted_trees_and_systemd_units_are_never_containers() {
    for path in [
        format!("/berth/{ID}"),
        format!("/berth-it-1-2-root/{ID}"),
        format!("/berth-test/docker/{ID}"),
        format!("/berth/system.slice/docker-{ID}.scope"),
        "/system.slice".to_owned(),
        "/system.slice/ssh.service".to_owned(),
        "/user.slice/user-0.slice/session-1.scope".to_owned(),
        "/init.scope".to_owned(),
        "/".to_owned(),
        String::new(),
    ] {
        assert_eq!(what(&path), None, "{path}");
    }
}

fn id(n: usize) -> String {
    format!("{n:064x}")
}

/// A fixture tree: `(relative dir, populated)`; each dir gets a `cgroup.events`.
fn tree(dirs: &[(&str, bool)]) -> tempfile::TempDir {
    let mount = tempfile::tempdir().unwrap();
    for (d, populated) in dirs {
        let dir = mount.path().join(d.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap();
        let events = format!("populated {}\nfrozen 0\n", u8::from(*populated));
        fs::write(dir.join("cgroup.events"), events).unwrap();
    }
    mount
}

#[test]
fn the_walk_finds_every_layout_skips_berths_root_and_does_not_enter_containers() {
    let (a, b, c, d) = (id(1), id(2), id(3), id(4));
    let mount = tree(&[
        (&format!("/docker/{a}"), true),
        (&format!("/docker/{a}/docker/{}", id(9)), true),
        (&format!("/system.slice/docker-{b}.scope"), false),
        ("/system.slice/ssh.service", true),
        (&format!("/kubepods/burstable/pod{UID}/{c}"), true),
        (&format!("/libpod_parent/libpod-{d}"), true),
        ("/lxc.payload.web", true),
        (&format!("/berth/{}", id(5)), true),
        (&format!("/berth-it-7-root/{}", id(6)), true),
        (&format!("/custom/{}", id(7)), true),
    ]);
    // A cgroup v1-style directory with cgroup.procs only.
    fs::create_dir_all(mount.path().join(format!("default/{}", id(8)))).unwrap();
    fs::write(
        mount.path().join(format!("default/{}/cgroup.procs", id(8))),
        "42\n",
    )
    .unwrap();

    let found = walk(mount.path(), "/custom", &mut Known::default());
    let got: Vec<(&str, Engine, bool)> = found
        .iter()
        .map(|f| (f.path.as_str(), f.discovered.engine, f.populated))
        .collect();
    let want = [
        (format!("/default/{}", id(8)), Engine::Containerd, true),
        (format!("/docker/{a}"), Engine::Docker, true),
        (
            format!("/kubepods/burstable/pod{UID}/{c}"),
            Engine::Kubernetes,
            true,
        ),
        (format!("/libpod_parent/libpod-{d}"), Engine::Podman, true),
        ("/lxc.payload.web".to_owned(), Engine::Lxc, true),
        (
            format!("/system.slice/docker-{b}.scope"),
            Engine::Docker,
            false,
        ),
    ];
    let want: Vec<(&str, Engine, bool)> =
        want.iter().map(|(p, e, u)| (p.as_str(), *e, *u)).collect();
    assert_eq!(got, want);
    let ino = fs::metadata(mount.path().join(format!("docker/{a}")))
        .unwrap()
        .ino();
    assert_eq!(
        found[1].cgroup_id, ino,
        "the cgroup id is the directory's inode"
    );
    assert!(found[1].created_at > 1e9);
}

#[test]
fn the_walk_stops_at_its_depth_bound() {
    let deep = format!("/a/b/c/d/e/f/g/docker-{}.scope", id(1));
    let shallow = format!("/a/b/c/d/e/docker-{}.scope", id(2));
    let mount = tree(&[(&deep, true), (&shallow, true)]);
    let found = walk(mount.path(), "/berth", &mut Known::default());
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].path, shallow);
}

#[test]
fn a_walk_over_two_hundred_containers_is_cheap() {
    let mut dirs: Vec<(String, bool)> = Vec::new();
    for n in 0..50 {
        dirs.push((format!("/docker/{}", id(n)), true));
        dirs.push((format!("/system.slice/docker-{}.scope", id(100 + n)), true));
        dirs.push((
            format!("/kubepods/burstable/pod{UID}-{n}/{}", id(200 + n)),
            true,
        ));
        dirs.push((
            format!("/machine.slice/libpod-{}.scope", id(300 + n)),
            false,
        ));
    }
    for n in 0..40 {
        dirs.push((format!("/system.slice/unit{n}.service"), true));
    }
    let refs: Vec<(&str, bool)> = dirs.iter().map(|(d, p)| (d.as_str(), *p)).collect();
    let mount = tree(&refs);
    let started = Instant::now();
    // As the collector does: each walk knows the last one's cgroups.
    let mut known = Known::default();
    let rounds = 20;
    for _ in 0..rounds {
        let found = walk(mount.path(), "/berth", &mut known);
        assert_eq!(found.len(), 200);
        assert_eq!(
            known.len(),
            200,
            "each found cgroup is kept for the next walk"
        );
    }
    let per_walk = started.elapsed() / rounds;
    // What a walk costs is `cargo xtask bench agent`'s to measure; this shows the numbers.
    eprintln!("walk of 200 container cgroups (+40 units, tmpfs): {per_walk:?}");
}

/// Real cgroupfs (root): a Docker-like cgroup of this test's own, removed on drop.
#[test]
fn on_cgroupfs_each_cgroup_events_is_watched_and_read_only_when_it_changed() {
    /// The cgroup (and its parent when this test made it), its process killed first.
    struct Removed(Vec<PathBuf>, Option<std::process::Child>);
    impl Drop for Removed {
        fn drop(&mut self) {
            if let Some(c) = &mut self.1 {
                let _ = c.kill();
                let _ = c.wait();
            }
            for d in &self.0 {
                let _ = fs::remove_dir(d);
            }
        }
    }
    let mount = crate::cgroup::Hierarchy::detect()
        .expect("a cgroup hierarchy on this host")
        .unified_mount;
    let id = format!("{:016x}{:048x}", std::process::id(), 0xe9011u64);
    let dir = mount.join("docker").join(&id);
    let mut made = vec![dir.clone()];
    if !mount.join("docker").exists() {
        made.push(mount.join("docker"));
    }
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let mut cg = Removed(made, None);
    let ino = fs::metadata(&dir).unwrap().ino();
    let mut known = Known::default();
    let ours = |found: &[Found]| {
        found
            .iter()
            .find(|f| f.cgroup_id == ino)
            .map(|f| f.populated)
    };
    assert_eq!(ours(&walk(&mount, "/berth", &mut known)), Some(false));
    assert!(
        known.epoll.is_some() && !known.unwatchable,
        "cgroup.events should be pollable on cgroupfs"
    );
    let ready = |known: &Known| {
        known
            .epoll
            .as_ref()
            .unwrap()
            .ready(known.seen.len() + 1)
            .unwrap()
    };
    assert!(!ready(&known).contains(&ino), "unchanged since read");
    let child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
    cg.1 = Some(child);
    assert!(
        ready(&known).contains(&ino),
        "a process joined: marked changed"
    );
    assert_eq!(ours(&walk(&mount, "/berth", &mut known)), Some(true));
    assert!(!ready(&known).contains(&ino), "read again by the walk");
    assert_eq!(ours(&walk(&mount, "/berth", &mut known)), Some(true));
}

/// A tree of this test's own on real cgroupfs (root): `<cgroup2>/berth-inotify-test-<pid>-<tag>`
/// walked as if it were the mount (the real mount's walk skips `berth*` trees), removed on drop,
/// deepest first.
fn cg_tree(tag: &str) -> CgTree {
    let name = format!("berth-inotify-test-{}-{tag}", std::process::id());
    CgTree::new(&name, |_, dir| {
        fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        dir.to_owned()
    })
}

/// The walk of `cg` with inotify off (every directory listed): what any walk must return.
fn full_walk(cg: &CgTree, skip: &str) -> Vec<Found> {
    let mut known = Known {
        tree: Tree::without_inotify(),
        ..Known::default()
    };
    let found = walk(cg.root(), skip, &mut known);
    assert!(!known.watching());
    found
}

fn paths(found: &[Found]) -> Vec<&str> {
    found.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn on_cgroupfs_a_walk_lists_again_only_the_directories_whose_children_changed() {
    let (a, b) = (id(0xa1), id(0xb2));
    let mut cg = cg_tree("changed");
    cg.mkdir(&format!("docker/{a}"));
    cg.mkdir("system.slice/x.slice/y.slice");
    cg.mkdir("system.slice/ssh.service");
    let mut known = Known::default();
    let skip = "/berth";

    // First walk: every directory listed and watched (the root, docker, system.slice, x.slice,
    // y.slice, ssh.service), the container found.
    let found = walk(cg.root(), skip, &mut known);
    assert!(known.watching(), "inotify should work on cgroupfs");
    assert_eq!(paths(&found), [format!("/docker/{a}")]);
    assert_eq!(known.listed(), 6);
    assert_eq!(known.tree.watched().len(), 6);
    assert_eq!(found, full_walk(&cg, skip));

    // Nothing changed: nothing listed, same answer.
    assert_eq!(walk(cg.root(), skip, &mut known), found);
    assert_eq!(known.listed(), 0, "nothing changed, nothing listed");

    // A container made deep below an already walked directory: found by the next walk, which
    // lists only its parent.
    cg.mkdir(&format!("system.slice/x.slice/y.slice/docker-{b}.scope"));
    let found = walk(cg.root(), skip, &mut known);
    assert_eq!(
        paths(&found),
        [
            format!("/docker/{a}"),
            format!("/system.slice/x.slice/y.slice/docker-{b}.scope")
        ]
    );
    assert_eq!(known.listed(), 1, "only y.slice is listed again");
    assert_eq!(found, full_walk(&cg, skip));
    assert_eq!(walk(cg.root(), skip, &mut known), found);
    assert_eq!(known.listed(), 0);

    // A removed container: gone at the next walk.
    cg.rmdir(&format!("docker/{a}"));
    let found = walk(cg.root(), skip, &mut known);
    assert_eq!(
        paths(&found),
        [format!("/system.slice/x.slice/y.slice/docker-{b}.scope")]
    );
    assert_eq!(known.listed(), 1, "only docker is listed again");
    assert_eq!(found, full_walk(&cg, skip));
    assert_eq!(known.len(), 1, "the removed container's entry is dropped");

    // A removed directory that was walked: its watch goes (cgroupfs sends no IN_IGNORED: the
    // walk removes it) and its subtree with it.
    cg.rmdir(&format!("system.slice/x.slice/y.slice/docker-{b}.scope"));
    cg.rmdir("system.slice/x.slice/y.slice");
    let found = walk(cg.root(), skip, &mut known);
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(known.tree.watched().len(), 5);
    assert_eq!(found, full_walk(&cg, skip));
    // Made again under the same name: a new directory, watched again.
    cg.mkdir(&format!("system.slice/x.slice/y.slice/docker-{b}.scope"));
    let found = walk(cg.root(), skip, &mut known);
    assert_eq!(
        paths(&found),
        [format!("/system.slice/x.slice/y.slice/docker-{b}.scope")]
    );
    assert_eq!(known.tree.watched().len(), 6);
    assert_eq!(found, full_walk(&cg, skip));
    assert_eq!(walk(cg.root(), skip, &mut known), found);
    assert_eq!(known.listed(), 0);
}

#[test]
fn on_cgroupfs_the_skipped_root_berth_trees_and_what_lies_past_the_depth_bound_are_not_watched() {
    let mut cg = cg_tree("bounds");
    cg.mkdir("tracked");
    cg.mkdir("berth-other");
    // Depths 1 to 7: a..f are walked (the root is depth 0), g is past the bound.
    cg.mkdir("a/b/c/d/e/f/g");
    let mut known = Known::default();
    let skip = "/tracked";
    assert!(walk(cg.root(), skip, &mut known).is_empty());
    assert_eq!(
        known.tree.watched().len(),
        7,
        "the root and a..f: {:?}",
        known.tree.watched()
    );

    // Containers where the walk does not look: no event, nothing listed, nothing found.
    cg.mkdir(&format!("tracked/docker/{}", id(1)));
    cg.mkdir(&format!("berth-other/docker/{}", id(2)));
    cg.mkdir(&format!("a/b/c/d/e/f/g/docker-{}.scope", id(3)));
    let found = walk(cg.root(), skip, &mut known);
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(known.listed(), 0);
    assert_eq!(found, full_walk(&cg, skip));
    // Within the bound: found.
    cg.mkdir(&format!("a/b/c/d/e/f/docker-{}.scope", id(4)));
    let found = walk(cg.root(), skip, &mut known);
    assert_eq!(
        paths(&found),
        [format!("/a/b/c/d/e/f/docker-{}.scope", id(4))]
    );
    assert_eq!(known.listed(), 1);
    assert_eq!(found, full_walk(&cg, skip));
}

#[test]
fn on_cgroupfs_without_inotify_every_walk_lists_every_directory_and_finds_the_same() {
    let (a, b) = (id(0xc1), id(0xd2));
    let mut cg = cg_tree("fallback");
    cg.mkdir(&format!("docker/{a}"));
    cg.mkdir("kubepods/burstable");
    let skip = "/berth";
    let mut watched = Known::default();
    let mut fallback = Known {
        tree: Tree::without_inotify(),
        ..Known::default()
    };
    for step in 0..4 {
        match step {
            1 => cg.mkdir(&format!("kubepods/burstable/pod{UID}/{b}")),
            2 => cg.rmdir(&format!("docker/{a}")),
            _ => {}
        }
        let want = walk(cg.root(), skip, &mut fallback);
        assert!(!fallback.watching());
        // root, docker, kubepods, burstable (+ the pod from step 1 on).
        assert_eq!(
            fallback.listed(),
            if step == 0 { 4 } else { 5 },
            "step {step}"
        );
        assert_eq!(walk(cg.root(), skip, &mut watched), want, "step {step}");
    }
    let found = walk(cg.root(), skip, &mut fallback);
    assert_eq!(paths(&found), [format!("/kubepods/burstable/pod{UID}/{b}")]);
    assert_eq!(fallback.tree.watched().len(), 0);
}
