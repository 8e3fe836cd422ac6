//! `foreign`: containers berth did not start (Docker, containerd, Kubernetes, podman, LXC),
//! found each tick by a walk of the cgroup2 tree (`discover::cgroups`; berth's tracked root
//! is skipped). Each becomes one [`Container`] of its engine, observed, never managed
//! (`berth: None`): named by its short id until metadata lands, running while its cgroup holds
//! a process. Cost at rest: one `read` of an inotify fd and one `epoll_wait`; a `readdir` of
//! each directory whose children changed, a small read (`cgroup.events`) of each container
//! whose state changed, and one `stat` per new container.
//!
//! A container is its (id, cgroup id): a reused id in a new cgroup is a new container with
//! fresh counters, and a removed cgroup is gone from the next snapshot. Monitors (conmon) are
//! not containers; a pod's containers are listed whether workload or sandbox until metadata
//! tells them apart.

use std::{collections::BTreeMap, path::PathBuf};

use super::{CollectError, Collected, Collector, Tick};
use crate::{
    discover::{
        cgroups::{self, Found, Kind},
        meta::{Meta, MetaSource},
    },
    model::{Container, ContainerState, NetworkSpec, Status},
};

pub struct Foreign {
    /// The cgroup2 mount point (the unified hierarchy in hybrid mode).
    mount: PathBuf,
    /// berth's tracked root below it, e.g. `/berth`: its containers are the `containers`
    /// collector's.
    skip: String,
    /// The last walk's cgroups: not stat'ed or opened again.
    known: cgroups::Known,
    /// Metadata sources, asked in order; the first answer wins.
    sources: Vec<Box<dyn MetaSource>>,
}

impl Foreign {
    pub fn new(mount: impl Into<PathBuf>, skip: impl Into<String>) -> Self {
        Self {
            mount: mount.into(),
            skip: skip.into(),
            known: cgroups::Known::default(),
            sources: Vec::new(),
        }
    }

    /// Adds metadata sources (asked after those already added).
    pub fn with_sources(mut self, sources: Vec<Box<dyn MetaSource>>) -> Self {
        self.sources.extend(sources);
        self
    }
}

impl Collector for Foreign {
    fn name(&self) -> &'static str {
        "foreign"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        if !self.mount.is_dir() {
            return Ok(Collected::NotPresent);
        }
        let found = cgroups::walk(&self.mount, &self.skip, &mut self.known);
        for s in &mut self.sources {
            s.refresh();
        }
        for f in found {
            if f.discovered.kind == Kind::Conmon {
                continue;
            }
            let d = &f.discovered;
            let meta = self
                .sources
                .iter_mut()
                .find_map(|s| s.lookup(d.engine, &d.id, &d.labels));
            if meta.as_ref().is_some_and(|m| m.sandbox) {
                // A pod's sandbox (pause) is infrastructure, not a workload.
                continue;
            }
            tick.builder.snapshot.containers.push(container(f, meta));
        }
        Ok(Collected::Done)
    }
}

/// The model's record of a container found from its cgroup, with its engine's metadata.
fn container(f: Found, meta: Option<Meta>) -> Container {
    let d = f.discovered;
    let m = meta.unwrap_or_default();
    let status = if f.populated {
        Status::Running
    } else {
        Status::Exited
    };
    let name = m
        .name
        .or(d.name)
        .unwrap_or_else(|| d.id.chars().take(12).collect::<String>());
    let mut labels = d.labels;
    labels.extend(m.labels);
    Container {
        engine: d.engine,
        name,
        id: d.id,
        image: m.image.unwrap_or_default(),
        labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
        cgroup: f.path,
        cgroup_id: Some(f.cgroup_id),
        status,
        state: ContainerState {
            running: f.populated,
            // The cgroup's birth is the best start time the kernel tells without metadata.
            started_at: Some(f.created_at),
            ..ContainerState::default()
        },
        created_at: m.created_at.unwrap_or(f.created_at),
        limits: Default::default(),
        stats: None,
        network: NetworkSpec {
            mode: m.network_mode.unwrap_or_default(),
            ip: m.ip,
            publish: m.publish,
            port_backend: None,
        },
        conntrack_entries: None,
        port_mapping: Default::default(),
        log_path: m.log_path,
        syscalls: Vec::new(),
        net: Vec::new(),
        berth: None,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::{cgroup::TrackedRoot, collect::Registry, model::Engine, probes::Probes};

    fn root() -> TrackedRoot {
        TrackedRoot::fixture()
    }

    fn hex(n: usize) -> String {
        format!("{n:064x}")
    }

    fn mkcg(mount: &std::path::Path, rel: &str, populated: bool) {
        let dir = mount.join(rel);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("cgroup.events"),
            format!("populated {}\n", u8::from(populated)),
        )
        .unwrap();
    }

    #[test]
    fn foreign_containers_appear_with_their_engine_and_go_with_their_cgroup() {
        let mount = tempfile::tempdir().unwrap();
        let (a, b) = (hex(0xa), hex(0xb));
        mkcg(mount.path(), &format!("docker/{a}"), true);
        mkcg(
            mount.path(),
            &format!("machine.slice/libpod-{b}.scope"),
            false,
        );
        mkcg(
            mount.path(),
            &format!("machine.slice/libpod-conmon-{b}.scope"),
            true,
        );
        mkcg(mount.path(), &format!("berth/{}", hex(0xc)), true);
        let mut r = Registry::with(
            Probes::disabled(&root()),
            vec![Box::new(Foreign::new(mount.path(), "/berth"))],
        );
        let snap = r.collect();
        let mut got: Vec<(Engine, &str, &str, Status, bool)> = snap
            .containers
            .iter()
            .map(|c| {
                (
                    c.engine,
                    c.id.as_str(),
                    c.name.as_str(),
                    c.status,
                    c.berth.is_none(),
                )
            })
            .collect();
        got.sort_by_key(|g| g.1.to_owned());
        assert_eq!(
            got,
            [
                (Engine::Docker, a.as_str(), &a[..12], Status::Running, true),
                (Engine::Podman, b.as_str(), &b[..12], Status::Exited, true),
            ]
        );

        // Removed: gone the next tick. Same id in a new cgroup: a new container (new cgroup id).
        // The old directory is moved where the walk does not look (berth's root) rather than
        // removed: its inode stays taken, so the filesystem (ext4, tmpfs) cannot hand its
        // number to the next one, as a test running alongside could make it do after a
        // rmdir (cgroupfs never reuses one; its rmdir is tested in discover::cgroups).
        let old = snap.find(&a).unwrap().cgroup_id;
        fs::rename(
            mount.path().join(format!("docker/{a}")),
            mount.path().join("berth/gone"),
        )
        .unwrap();
        let snap = r.collect();
        assert!(snap.find(&a).is_err(), "removed cgroup still listed");
        mkcg(mount.path(), &format!("docker/{a}"), true);
        let snap = r.collect();
        let again = snap.find(&a).unwrap();
        assert_ne!(
            again.cgroup_id, old,
            "a reused id comes back as a new cgroup"
        );
        assert!(again.syscalls.is_empty() && again.net.is_empty());
    }

    /// A source that knows one container by name and one sandbox.
    struct Known {
        name_of: String,
        sandbox: String,
    }

    impl MetaSource for Known {
        fn name(&self) -> &'static str {
            "known"
        }
        fn lookup(&mut self, _: Engine, id: &str, _: &BTreeMap<String, String>) -> Option<Meta> {
            (id == self.name_of)
                .then(|| Meta {
                    name: Some("media".into()),
                    image: Some("bb:1".into()),
                    labels: [("k".to_owned(), "v".to_owned())].into(),
                    ..Meta::default()
                })
                .or_else(|| {
                    (id == self.sandbox).then(|| Meta {
                        sandbox: true,
                        ..Meta::default()
                    })
                })
        }
    }

    #[test]
    fn metadata_names_a_container_and_a_sandbox_is_not_a_workload() {
        let mount = tempfile::tempdir().unwrap();
        let (a, pod, sb) = (hex(1), "pod0123-45", hex(2));
        mkcg(mount.path(), &format!("docker/{a}"), true);
        mkcg(
            mount.path(),
            &format!("kubepods/besteffort/{pod}/{sb}"),
            true,
        );
        let source = Known {
            name_of: a.clone(),
            sandbox: sb.clone(),
        };
        let mut r = Registry::with(
            Probes::disabled(&root()),
            vec![Box::new(
                Foreign::new(mount.path(), "/berth").with_sources(vec![Box::new(source)]),
            )],
        );
        let snap = r.collect();
        assert_eq!(snap.containers.len(), 1, "the sandbox is not listed");
        let c = &snap.containers[0];
        assert_eq!((c.name.as_str(), c.image.as_str()), ("media", "bb:1"));
        assert_eq!(c.labels.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn a_rename_in_dockerds_files_shows_at_the_next_tick() {
        use crate::discover::docker::DockerSource;
        let mount = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let id = hex(0xd0c);
        mkcg(mount.path(), &format!("docker/{id}"), true);
        let dir = data.path().join("containers").join(&id);
        fs::create_dir_all(&dir).unwrap();
        let config = |name: &str| format!("{{\"ID\":\"{id}\",\"Name\":\"/{name}\"}}");
        fs::write(dir.join("config.v2.json"), config("web")).unwrap();
        let source = DockerSource::files_only(data.path());
        let mut r = Registry::with(
            Probes::disabled(&root()),
            vec![Box::new(
                Foreign::new(mount.path(), "/berth").with_sources(vec![Box::new(source)]),
            )],
        );
        assert_eq!(r.collect().find(&id).unwrap().name, "web");
        // As dockerd writes it: a temporary file renamed over it.
        fs::write(dir.join(".tmp-config.v2.json1"), config("web2")).unwrap();
        fs::rename(dir.join(".tmp-config.v2.json1"), dir.join("config.v2.json")).unwrap();
        assert_eq!(r.collect().find(&id).unwrap().name, "web2");
    }

    #[test]
    fn no_cgroup2_mount_is_not_present_rather_than_a_failure() {
        let mut r = Registry::with(
            Probes::disabled(&root()),
            vec![Box::new(Foreign::new("/nonexistent/cgroup2", "/berth"))],
        );
        let snap = r.collect();
        assert!(snap.collectors[0].success && snap.containers.is_empty());
    }
}
