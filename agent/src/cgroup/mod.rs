//! Cgroup hierarchies: where cgroup v2 is mounted, which mode the host runs (pure v2, hybrid,
//! legacy), which v1 hierarchies are mounted (hybrid), where each controller of a given cgroup
//! lives ([`Placement`]), and the tracked v2 subtree: its root (created when absent) and a walk
//! that maps each cgroup id (the directory's inode, what `bpf_get_current_cgroup_id()` returns) to
//! its path, listing only the directories an inotify watch says changed (`tree`, shared with
//! the walk of other engines' containers).
//!
//! Container limits and stats live in [`limits`] and [`stats`].
//!
//! Readers take the mount point as an argument so unit tests run against a plain directory.

pub mod limits;
pub mod reader;
pub mod stats;
pub(crate) mod tree;

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read the mount table {path}: {source}")]
    MountTable {
        path: &'static str,
        source: procfs::ProcError,
    },
    #[error(
        "no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); berth attributes by \
         cgroup v2 id: mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    #[error(
        "discovery.cgroup_mount is {path}: no cgroup2 filesystem is mounted there or below it \
         (looked in /proc/self/mountinfo); mount the host's /sys/fs/cgroup there (read-write: \
         the agent creates its tracked root in it), or leave it empty to use this mount \
         namespace's own"
    )]
    NoCgroup2At { path: PathBuf },
    #[error("discovery.cgroup_mount is {path}: {source}")]
    ConfiguredMount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the tracked cgroup root {path}: {source}")]
    CreateRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot stat cgroup {path}: {source}")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cgroup path {given:?} is unusable: it must name a cgroup below the hierarchy roots, like \
         \"/berth/<id>\" (no empty, \".\" or \"..\" components)"
    )]
    InvalidPath { given: String },
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enable controllers {controllers:?} in {path}: {source}")]
    EnableControllers {
        path: PathBuf,
        controllers: String,
        source: std::io::Error,
    },
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: cgroups_rs::error::Error,
    },
    #[error("cannot write {value:?} to {path}: {source}")]
    WriteFile {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: unexpected content {content:?}")]
    Parse { path: PathBuf, content: String },
    #[error(
        "cannot remove cgroup {path}: {source}; processes still inside: {pids:?} (stop them, or \
         the container, first)"
    )]
    Remove {
        path: PathBuf,
        source: std::io::Error,
        pids: Vec<u32>,
    },
    #[error(
        "cannot set {flag} for cgroup {cgroup}: no {controller} controller (neither a mounted v1 \
         hierarchy nor enabled in the cgroup2 tree at {unified_mount})"
    )]
    ControllerMissing {
        flag: &'static str,
        controller: &'static str,
        cgroup: String,
        unified_mount: PathBuf,
    },
    #[error(
        "cannot set --blkio-weight in {dir}: it has neither {bfq} nor {legacy}; the kernel has no \
         proportional IO weight here (CFQ is gone since Linux 5.0; BFQ group scheduling or, on v2, \
         io.cost provide it); run without --blkio-weight"
    )]
    BlkioWeightUnsupported {
        dir: PathBuf,
        bfq: &'static str,
        legacy: &'static str,
    },
    #[error(
        "cannot set --memory-swap in {dir} without a memory limit (memory.max is \"max\"): \
         cgroup v2 limits swap separately, so berth needs --memory to compute it"
    )]
    SwapWithoutMemory { dir: PathBuf },
    #[error("cannot read the host's memory size from {path}: {source}")]
    Meminfo {
        path: &'static str,
        source: procfs::ProcError,
    },
}

/// How the host's cgroup hierarchies are arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// Only cgroup2, mounted at /sys/fs/cgroup (most current distributions).
    Unified,
    /// v1 controllers plus a cgroup2 mount (usually /sys/fs/cgroup/unified).
    Hybrid,
}

/// The host's cgroup layout, found once at start.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Hierarchy {
    pub mode: CgroupMode,
    /// Mount point of the cgroup2 filesystem.
    #[schema(value_type = String)]
    pub unified_mount: PathBuf,
    /// Mounted v1 hierarchies (empty on a pure v2 host), one entry per hierarchy even when the
    /// same one is mounted twice.
    pub v1: Vec<V1Mount>,
}

/// One mounted cgroup v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct V1Mount {
    #[schema(value_type = String)]
    pub mount_point: PathBuf,
    /// Controllers bound to it (`cpu`, `memory`, ...), sorted, plus `name=<name>` for a named
    /// hierarchy such as `name=systemd`.
    pub controllers: Vec<String>,
}

/// Every cgroup v1 controller the kernel knows (`SUBSYS` in include/linux/cgroup_subsys.h). The
/// other super options of a v1 mount (`rw`, `xattr`, `release_agent=...`) are not controllers.
const V1_CONTROLLERS: &[&str] = &[
    "cpuset",
    "cpu",
    "cpuacct",
    "io",
    "blkio",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
    "debug",
];

/// The v2 controllers berth enables for container cgroups (v1 names in brackets): cpu (cpu,
/// cpuacct), memory, pids, io (blkio).
pub(crate) const V2_CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io"];

impl Hierarchy {
    /// Reads /proc/self/mountinfo.
    pub fn detect() -> Result<Self, CgroupError> {
        let mounts = procfs::process::Process::myself()
            .and_then(|p| p.mountinfo())
            .map_err(|source| CgroupError::MountTable {
                path: "/proc/self/mountinfo",
                source,
            })?;
        Self::from_mounts(mounts)
    }

    /// The layout below `mount` when given (`discovery.cgroup_mount`: the host's cgroup
    /// directory mounted elsewhere, as in a container), else [`Hierarchy::detect`]. `mount` is
    /// the cgroup2 mount itself (pure v2) or a directory above it (a hybrid host's
    /// /sys/fs/cgroup, with cgroup2 at `unified/`): only the mounts at or below it count, so
    /// the agent's own cgroup mounts (a container's namespaced view) are ignored.
    pub fn detect_at(mount: Option<&Path>) -> Result<Self, CgroupError> {
        let Some(given) = mount else {
            return Self::detect();
        };
        let path = fs::canonicalize(given).map_err(|source| CgroupError::ConfiguredMount {
            path: given.to_owned(),
            source,
        })?;
        let mounts = procfs::process::Process::myself()
            .and_then(|p| p.mountinfo())
            .map_err(|source| CgroupError::MountTable {
                path: "/proc/self/mountinfo",
                source,
            })?;
        Self::from_mounts_below(mounts, &path).map_err(|e| match e {
            CgroupError::NoCgroup2 => CgroupError::NoCgroup2At {
                path: given.to_owned(),
            },
            e => e,
        })
    }

    /// [`Hierarchy::from_mounts`] of the mounts at or below `dir` only.
    pub fn from_mounts_below(
        mounts: impl IntoIterator<Item = procfs::process::MountInfo>,
        dir: &Path,
    ) -> Result<Self, CgroupError> {
        Self::from_mounts(
            mounts
                .into_iter()
                .filter(|m| m.mount_point.starts_with(dir)),
        )
    }

    /// The layout described by a mount table (what [`Hierarchy::detect`] reads).
    pub fn from_mounts(
        mounts: impl IntoIterator<Item = procfs::process::MountInfo>,
    ) -> Result<Self, CgroupError> {
        let mut unified = None;
        let mut v1: Vec<V1Mount> = Vec::new();
        for m in mounts {
            match m.fs_type.as_str() {
                "cgroup2" if unified.is_none() => unified = Some(m.mount_point.clone()),
                "cgroup" => {
                    let mut controllers: Vec<String> = m
                        .super_options
                        .iter()
                        .filter_map(|(k, v)| match (k.as_str(), v) {
                            ("name", Some(name)) => Some(format!("name={name}")),
                            (k, None) if V1_CONTROLLERS.contains(&k) => Some(k.to_string()),
                            _ => None,
                        })
                        .collect();
                    controllers.sort();
                    // A bind mount of a hierarchy already seen is the same cgroup tree.
                    if !controllers.is_empty() && !v1.iter().any(|h| h.controllers == controllers) {
                        v1.push(V1Mount {
                            mount_point: m.mount_point.clone(),
                            controllers,
                        });
                    }
                }
                _ => {}
            }
        }
        let unified_mount = unified.ok_or(CgroupError::NoCgroup2)?;
        Ok(Self {
            mode: if v1.is_empty() {
                CgroupMode::Unified
            } else {
                CgroupMode::Hybrid
            },
            unified_mount,
            v1,
        })
    }

    /// Mount point of the v1 hierarchy that holds `controller` (`memory`, `name=systemd`).
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
            .map(|h| h.mount_point.as_path())
    }

    /// Controllers available to the v2 cgroup `relative` (its `cgroup.controllers`, or the root's
    /// while it does not exist yet).
    pub fn v2_controllers(&self, relative: &str) -> Vec<String> {
        let dir = self.unified_mount.join(relative);
        let file = if dir.join("cgroup.controllers").exists() {
            dir.join("cgroup.controllers")
        } else {
            self.unified_mount.join("cgroup.controllers")
        };
        fs::read_to_string(file)
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// Where each controller of the cgroup `relative` (below every root, no leading `/`) lives:
    /// the v1 hierarchy holding it, else the cgroup2 tree when the controller is available there.
    pub fn placement(&self, relative: &str) -> Placement {
        let v2_dir = self.unified_mount.join(relative);
        let v2 = self.v2_controllers(relative);
        let place = |v1_name: &str, v2_name: &str| {
            if let Some(mount) = self.v1_mount(v1_name) {
                Some(ControllerDir::V1(mount.join(relative)))
            } else if v2.iter().any(|c| c == v2_name) {
                Some(ControllerDir::V2(v2_dir.clone()))
            } else {
                None
            }
        };
        Placement {
            memory: place("memory", "memory"),
            cpu: place("cpu", "cpu"),
            // cpu.stat with usage_usec/user_usec/system_usec is a core file of every v2 cgroup
            // (Linux 4.20+), also in hybrid mode where cpuacct is a v1 controller: one file
            // instead of v1's three (cpuacct.usage, usage_user, usage_sys).
            cpuacct: if v2_dir.join("cpu.stat").exists() {
                Some(ControllerDir::V2(v2_dir.clone()))
            } else {
                place("cpuacct", "cpu").or(Some(ControllerDir::V2(v2_dir.clone())))
            },
            pids: place("pids", "pids"),
            blkio: place("blkio", "io"),
        }
    }

    /// Whether the kernel limits swap per cgroup: v1 `memory.memsw.*` (needs swap accounting) or
    /// v2 `memory.swap.max`. On v2 the root has no such file, so a child with the memory
    /// controller tells; with none, the kernel default (accounting on) is assumed.
    pub fn swap_accounting(&self) -> bool {
        if let Some(mount) = self.v1_mount("memory") {
            return mount.join("memory.memsw.limit_in_bytes").exists();
        }
        if !self.v2_controllers("").iter().any(|c| c == "memory") {
            return false;
        }
        let Ok(entries) = fs::read_dir(&self.unified_mount) else {
            return true;
        };
        for e in entries.flatten() {
            let dir = e.path();
            if dir.join("memory.max").exists() {
                return dir.join("memory.swap.max").exists();
            }
        }
        true
    }
}

/// Where one controller's files of a given cgroup are, and in which format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerDir {
    V1(PathBuf),
    V2(PathBuf),
}

impl ControllerDir {
    pub fn path(&self) -> &Path {
        match self {
            Self::V1(p) | Self::V2(p) => p,
        }
    }

    pub fn is_v2(&self) -> bool {
        matches!(self, Self::V2(_))
    }
}

/// Directories holding each controller of one cgroup; `None` when the host has no such
/// controller for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub memory: Option<ControllerDir>,
    /// Limits: v1 `cpu` (cpu.shares, cpu.cfs_*) or v2 `cpu` (cpu.weight, cpu.max).
    pub cpu: Option<ControllerDir>,
    /// Usage: v1 `cpuacct`, else the v2 dir (cpu.stat exists in every v2 cgroup).
    pub cpuacct: Option<ControllerDir>,
    pub pids: Option<ControllerDir>,
    /// v1 `blkio` or v2 `io`.
    pub blkio: Option<ControllerDir>,
}

/// berth's subtree of the v2 hierarchy.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrackedRoot {
    /// Absolute directory, e.g. /sys/fs/cgroup/unified/berth.
    #[schema(value_type = String)]
    pub dir: PathBuf,
    /// Path relative to the cgroup2 mount with a leading `/`, as /proc/PID/cgroup shows it.
    pub path: String,
    /// v2 cgroup id of `dir`.
    pub id: u64,
    /// Depth below the mount (the mount itself is level 0).
    pub level: u32,
}

impl TrackedRoot {
    /// A root that exists nowhere (`/berth`, id 42), for tests that need one and touch
    /// nothing.
    #[cfg(test)]
    pub(crate) fn fixture() -> Self {
        Self {
            dir: std::path::PathBuf::from("/sys/fs/cgroup/unified/berth"),
            path: "/berth".into(),
            id: 42,
            level: 1,
        }
    }

    /// Creates `mount/relative` when absent and reads its id.
    pub fn open(mount: &Path, relative: &str) -> Result<Self, CgroupError> {
        let dir = mount.join(relative);
        fs::create_dir_all(&dir).map_err(|source| CgroupError::CreateRoot {
            path: dir.clone(),
            source,
        })?;
        let id = fs::metadata(&dir)
            .map_err(|source| CgroupError::Stat {
                path: dir.clone(),
                source,
            })?
            .ino();
        let level = relative.split('/').filter(|c| !c.is_empty()).count() as u32;
        Ok(Self {
            dir,
            path: format!("/{}", relative.trim_matches('/')),
            id,
            level,
        })
    }

    /// Removes the root's directory in every hierarchy (runc creates it in each v1 hierarchy
    /// as the parent of container cgroups) where it is empty; leaves the rest, e.g. when
    /// containers keep running across an agent restart. Returns the directories removed.
    pub fn remove_if_empty(&self, hierarchy: &Hierarchy) -> Vec<PathBuf> {
        let rel = self.path.trim_start_matches('/');
        let mut removed = Vec::new();
        let dirs = hierarchy
            .v1
            .iter()
            .map(|m| m.mount_point.join(rel))
            .chain(std::iter::once(self.dir.clone()));
        for dir in dirs {
            // rmdir of a cgroup fails unless it has no children and no tasks: exactly the test.
            if fs::remove_dir(&dir).is_ok() {
                removed.push(dir);
            }
        }
        removed
    }

    /// Every cgroup in the subtree, root included: id -> path (`/berth/...`). Directories that
    /// vanish during the walk are skipped: cgroups come and go all the time.
    ///
    /// `walked` is the last walk's (of this root). Every directory of the subtree is watched
    /// (containers may make cgroups of their own, e.g. systemd inside one), and one is listed
    /// again only when an inotify event said a child came or went (or it has no watch: see
    /// `tree`); the others' children come from their last listing, so at rest a walk lists
    /// nothing. The id of each cgroup is its directory entry's `d_ino` (on cgroupfs the inode
    /// number, never reused while the machine runs).
    pub fn walk(&self, walked: &mut TrackedWalk) -> HashMap<u64, String> {
        let tree = &mut walked.tree;
        let mut out = HashMap::with_capacity(walked.found + 1);
        out.insert(self.id, self.path.clone());
        tree.begin(&self.dir);
        // (path below the root, inode as its parent listed it)
        let mut stack = vec![(String::new(), self.id)];
        while let Some((path, ino)) = stack.pop() {
            let Some(children) = tree.children(&self.dir, path, ino, |_, _| Some(())) else {
                continue;
            };
            for c in children {
                out.insert(c.ino, format!("{}{}", self.path, c.path));
                stack.push((c.path.clone(), c.ino));
            }
        }
        tree.end();
        walked.found = out.len();
        out
    }
}

/// What [`TrackedRoot::walk`] keeps from one walk to the next: the subtree's directories, their
/// last listings and their inotify watches.
#[derive(Debug, Default)]
pub struct TrackedWalk {
    tree: tree::Tree<()>,
    /// Cgroups the last walk found (the next one's map is made this big).
    found: usize,
}

impl TrackedWalk {
    /// A walk that never watches: every directory listed every walk (the fallback, for tests).
    #[cfg(test)]
    pub(crate) fn without_inotify() -> Self {
        Self {
            tree: tree::Tree::without_inotify(),
            found: 0,
        }
    }

    /// Directories the last walk listed; the others' children came from their last listing.
    pub fn listed(&self) -> usize {
        self.tree.listed()
    }

    /// Whether the walk watches the directories it lists (inotify).
    pub fn watching(&self) -> bool {
        self.tree.watching()
    }
}

#[cfg(test)]
pub(crate) mod test_tree;
#[cfg(test)]
mod tests;
