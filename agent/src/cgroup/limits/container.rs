//! One container's cgroup in every hierarchy ([`ContainerCgroup`]): creating it, writing live
//! limit updates through the per-controller writers ([`super::controllers`]), reading its stats,
//! and removing every directory it had.
//!
//! runc puts a container with `linux.cgroupsPath` `/berth/<id>` at `<mount>/berth/<id>` in every
//! v1 hierarchy and in the cgroup2 tree; berth finds the same directories ([`Hierarchy`]) rather
//! than using cgroups-rs 0.3.4's `Cgroup`/`Hierarchy` types, because:
//! - `hierarchies::auto()` picks `V1` unless /sys/fs/cgroup itself is cgroup2 (statfs), so on
//!   hybrid hosts it manages the v1 controllers only: its mount table reader keeps `cgroup` mounts
//!   and drops the `cgroup2` one, so the unified dir would never be created or removed.
//! - `V2` hard-codes /sys/fs/cgroup as the mount; `V1` knows `name=systemd` but no other named
//!   hierarchy.
//! - `Cgroup::create` panics (`verify_path`) on a path with a leading `/` (`PathBuf::push`
//!   replaces the root) and only logs a failed mkdir.
//!
//! Stats are parsed from plain files ([`crate::cgroup::stats`]): cgroups-rs's v2 readers unwrap
//! missing files (memory.low, memory.swap.events) and would panic.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use super::{
    Limits,
    controllers::{Blkio, Controller, Cpu, Memory, Pids, write_file},
};
use crate::cgroup::{
    CgroupError, Hierarchy, Placement, V2_CONTROLLERS,
    reader::StatFiles,
    stats::{self, ContainerStats},
};

/// One container's cgroup: the same relative path in every hierarchy.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    hierarchy: Hierarchy,
    /// As given, e.g. `/berth/<id>` (the OCI `linux.cgroupsPath`).
    given: String,
    /// `given` without leading and trailing `/`; `None` when unusable (empty, `.`, `..`), in
    /// which case every operation fails with [`CgroupError::InvalidPath`] and touches nothing.
    relative: Option<String>,
}

/// How long [`ContainerCgroup::remove`] keeps retrying a busy cgroup (processes still exiting),
/// doubling from 10 ms as runc does: 10 + 20 + 40 + 80 + 160 ms.
const REMOVE_RETRIES: u32 = 5;

impl ContainerCgroup {
    /// `relative` is the cgroup path below every hierarchy root, as in the OCI
    /// `linux.cgroupsPath` (`/berth/<id>`); a leading `/` is optional.
    pub fn new(hierarchy: &Hierarchy, relative: &str) -> Self {
        Self {
            hierarchy: hierarchy.clone(),
            given: relative.to_string(),
            relative: Self::usable(relative).map(str::to_string),
        }
    }

    /// `relative` without leading and trailing `/` when it names a cgroup below the roots
    /// (no empty, `.` or `..` component, no NUL); `None` when unusable.
    pub(crate) fn usable(relative: &str) -> Option<&str> {
        let trimmed = relative.trim_matches('/');
        let usable = !trimmed.is_empty()
            && !trimmed.contains('\0')
            && Path::new(trimmed)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
            && !trimmed.split('/').any(|c| c.is_empty() || c == ".");
        usable.then_some(trimmed)
    }

    /// The path as given to [`ContainerCgroup::new`].
    pub fn path(&self) -> &str {
        &self.given
    }

    pub(crate) fn relative(&self) -> Result<&str, CgroupError> {
        self.relative
            .as_deref()
            .ok_or_else(|| CgroupError::InvalidPath {
                given: self.given.clone(),
            })
    }

    /// The cgroup2 directory (what BPF attributes by), whether or not it exists.
    pub fn unified_dir(&self) -> Option<PathBuf> {
        self.relative
            .as_deref()
            .map(|r| self.hierarchy.unified_mount.join(r))
    }

    /// Every directory of this cgroup in every mounted hierarchy: one per v1 hierarchy (named
    /// ones such as name=systemd included), then the cgroup2 one. Empty for an unusable path.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let Some(rel) = self.relative.as_deref() else {
            return Vec::new();
        };
        self.hierarchy
            .v1
            .iter()
            .map(|h| h.mount_point.join(rel))
            .chain(std::iter::once(self.hierarchy.unified_mount.join(rel)))
            .collect()
    }

    /// v2 cgroup id: the inode of the cgroup2 directory, what `bpf_get_current_cgroup_id()`
    /// returns for the container's tasks. `None` while the directory does not exist.
    pub fn v2_id(&self) -> Option<u64> {
        fs::metadata(self.unified_dir()?).ok().map(|m| m.ino())
    }

    /// Creates the cgroup in every hierarchy, as runc does at create (berth needs it for tests
    /// and for cgroups it makes itself). Idempotent. v1 cpuset dirs get their parent's
    /// cpuset.cpus/mems (an empty cpuset refuses tasks); in the cgroup2 tree each ancestor
    /// enables cpu, memory, pids and io for its children where available (pure v2 hosts).
    pub fn create(&self) -> Result<(), CgroupError> {
        let rel = self.relative()?;
        for h in &self.hierarchy.v1 {
            let cpuset = h.controllers.iter().any(|c| c == "cpuset");
            create_levels(&h.mount_point, rel, |parent, child| {
                if cpuset {
                    inherit_cpuset(parent, child)?;
                }
                Ok(())
            })?;
        }
        create_levels(&self.hierarchy.unified_mount, rel, |parent, _| {
            enable_v2_controllers(parent)
        })
    }

    /// Writes `limits` into the running container's cgroups (`berth update`); unset fields are
    /// left alone. Pass limits through [`Limits::validate`] and [`Limits::with_swap_default`]
    /// first. Each controller goes where [`Hierarchy::placement`] finds it (v1 files on hybrid
    /// hosts, v2 files on pure v2 hosts) in this order, one writer each:
    ///
    /// - memory (`controllers/memory.rs`): memory.limit_in_bytes and memory.memsw.limit_in_bytes
    ///   ordered as runc orders them (v1); memory.max and memory.swap.max = memory+swap - memory
    ///   (v2).
    /// - cpu (`controllers/cpu.rs`): cpu.cfs_quota_us/cpu.cfs_period_us and cpu.shares (v1),
    ///   cpu.max and cpu.weight via [`super::cpu_shares_to_weight`] (v2).
    /// - pids (`controllers/pids.rs`): pids.max (`max` for -1/0).
    /// - blkio weight (`controllers/blkio.rs`): blkio.bfq.weight or blkio.weight (v1),
    ///   io.bfq.weight or io.weight via [`super::blkio_weight_to_io_weight`] (v2).
    ///
    /// A limit whose controller the host lacks fails with [`CgroupError::ControllerMissing`];
    /// earlier writes stay (each file is independent).
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        let rel = self.relative()?;
        let placement = self.hierarchy.placement(rel);
        self.apply_controller::<Memory>(limits, &placement)?;
        self.apply_controller::<Cpu>(limits, &placement)?;
        self.apply_controller::<Pids>(limits, &placement)?;
        self.apply_controller::<Blkio>(limits, &placement)
    }

    /// Runs one controller's writer when `limits` asks for it, failing when the host lacks it.
    fn apply_controller<C: Controller>(
        &self,
        limits: &Limits,
        placement: &Placement,
    ) -> Result<(), CgroupError> {
        let Some(flag) = C::requested_by(limits) else {
            return Ok(());
        };
        let dir = C::dir(placement).ok_or_else(|| CgroupError::ControllerMissing {
            flag,
            controller: C::NAME,
            cgroup: self.given.clone(),
            unified_mount: self.hierarchy.unified_mount.clone(),
        })?;
        C::apply(limits, dir)
    }

    /// Usage and limits now, from the controllers [`Hierarchy::placement`] finds.
    pub fn stats(&self) -> Result<ContainerStats, CgroupError> {
        let rel = self.relative()?;
        stats::read(&self.hierarchy.placement(rel), &mut StatFiles::once())
    }

    /// Removes the cgroup from every hierarchy (children first, as runc does); an absent
    /// directory is fine. A busy one (tasks still exiting) is retried for ~300 ms. Every
    /// hierarchy is tried; the first failure is returned, naming the directory and the
    /// processes still inside.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.relative()?;
        let mut first_error = None;
        for dir in self.dirs() {
            if let Err(e) = remove_tree(&dir) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Creates `root/relative` one level at a time, calling `each(parent, child)` after each mkdir
/// (and for levels that already existed, so a half-made path gets completed).
fn create_levels(
    root: &Path,
    relative: &str,
    mut each: impl FnMut(&Path, &Path) -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    let mut parent = root.to_path_buf();
    for component in relative.split('/') {
        let child = parent.join(component);
        match fs::create_dir(&child) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(CgroupError::Create {
                    path: child,
                    source,
                });
            }
        }
        each(&parent, &child)?;
        parent = child;
    }
    Ok(())
}

/// v1 cpuset: a new cgroup starts with empty cpuset.cpus and cpuset.mems and then refuses tasks
/// (ENOSPC); copy the parent's, as runc does (libcontainer/cgroups/fs/cpuset.go).
fn inherit_cpuset(parent: &Path, child: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let path = child.join(file);
        let Ok(current) = fs::read_to_string(&path) else {
            continue;
        };
        if !current.trim().is_empty() {
            continue;
        }
        let from = parent.join(file);
        let value =
            fs::read_to_string(&from).map_err(|source| CgroupError::Read { path: from, source })?;
        write_file(&path, value.trim())?;
    }
    Ok(())
}

/// Enables berth's controllers for the children of `dir` in the cgroup2 tree, where `dir`
/// offers them and does not already delegate them (runc does the same on v2).
fn enable_v2_controllers(dir: &Path) -> Result<(), CgroupError> {
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
    let available = read("cgroup.controllers");
    let enabled = read("cgroup.subtree_control");
    let wanted: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let controllers = wanted.join(" ");
    let path = dir.join("cgroup.subtree_control");
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(controllers.as_bytes()))
        .map_err(|source| CgroupError::EnableControllers {
            path,
            controllers,
            source,
        })
}

/// rmdir `dir` after its sub-cgroups (a container may create its own), retrying while busy.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    let mut delay = Duration::from_millis(10);
    let mut attempt = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < REMOVE_RETRIES => {
                std::thread::sleep(delay);
                delay *= 2;
                attempt += 1;
            }
            Err(source) => {
                let pids = fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                    pids,
                });
            }
        }
    }
}
