//! Cgroup hierarchies: where cgroup v2 is mounted, which mode the host runs (pure v2, hybrid,
//! legacy), and the tracked v2 subtree: its root (created when absent) and a walk that maps each
//! cgroup id (the directory's inode, what `bpf_get_current_cgroup_id()` returns) to its path.
//!
//! Readers take the mount point as an argument so unit tests run against a plain directory.

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
}

/// How the host's cgroup hierarchies are arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// Only cgroup2, mounted at /sys/fs/cgroup (most current distributions).
    Unified,
    /// v1 controllers plus a cgroup2 mount (usually /sys/fs/cgroup/unified).
    Hybrid,
}

/// The host's cgroup layout, found once at start.
#[derive(Debug, Clone, Serialize)]
pub struct Hierarchy {
    pub mode: CgroupMode,
    /// Mount point of the cgroup2 filesystem.
    pub unified_mount: PathBuf,
}

impl Hierarchy {
    /// Reads /proc/self/mountinfo.
    pub fn detect() -> Result<Self, CgroupError> {
        let mounts = procfs::process::Process::myself()
            .and_then(|p| p.mountinfo())
            .map_err(|source| CgroupError::MountTable {
                path: "/proc/self/mountinfo",
                source,
            })?;
        let mut unified = None;
        let mut v1 = false;
        for m in mounts {
            match m.fs_type.as_str() {
                "cgroup2" if unified.is_none() => unified = Some(m.mount_point.clone()),
                "cgroup" => v1 = true,
                _ => {}
            }
        }
        let unified_mount = unified.ok_or(CgroupError::NoCgroup2)?;
        Ok(Self {
            mode: if v1 {
                CgroupMode::Hybrid
            } else {
                CgroupMode::Unified
            },
            unified_mount,
        })
    }
}

/// berth's subtree of the v2 hierarchy.
#[derive(Debug, Clone, Serialize)]
pub struct TrackedRoot {
    /// Absolute directory, e.g. /sys/fs/cgroup/unified/berth.
    pub dir: PathBuf,
    /// Path relative to the cgroup2 mount with a leading `/`, as /proc/PID/cgroup shows it.
    pub path: String,
    /// v2 cgroup id of `dir`.
    pub id: u64,
    /// Depth below the mount (the mount itself is level 0).
    pub level: u32,
}

impl TrackedRoot {
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

    /// Every cgroup in the subtree, root included: id -> path (`/berth/...`). Directories that
    /// vanish during the walk are skipped: cgroups come and go all the time.
    pub fn walk(&self) -> HashMap<u64, String> {
        let mut out = HashMap::new();
        out.insert(self.id, self.path.clone());
        let mut stack = vec![(self.dir.clone(), self.path.clone())];
        while let Some((dir, path)) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                if !meta.is_dir() {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                let child = format!("{path}/{name}");
                out.insert(meta.ino(), child.clone());
                stack.push((e.path(), child));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
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
        let walk = root.walk();
        assert_eq!(walk.len(), 3, "{walk:?}");
        assert_eq!(walk[&root.id], "/berth/nested");
        assert_eq!(walk[&ino("a")], "/berth/nested/a");
        assert_eq!(walk[&ino("a/b")], "/berth/nested/a/b");
    }

    #[test]
    fn this_host_has_a_cgroup2_mount() {
        let h = Hierarchy::detect().unwrap();
        assert!(h.unified_mount.join("cgroup.procs").exists(), "{h:?}");
    }
}
