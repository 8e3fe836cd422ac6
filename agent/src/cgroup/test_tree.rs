//! Test support: a directory tree of one test's own on real cgroupfs (root), made one
//! directory at a time and removed on drop, deepest first (cgroupfs removes only empty
//! cgroups, with `rmdir`). The walks' tests (`cgroup::tree`'s tracked walk and
//! `discover::cgroups`' foreign one) build their layouts with it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::Hierarchy;

/// `<cgroup2 mount>/<name>` and what the test made below it.
pub struct CgTree {
    root: PathBuf,
    made: Vec<PathBuf>,
}

impl CgTree {
    /// Takes `<cgroup2>/<name>`, which must not exist yet (left by another run); `make`
    /// creates it (it receives the mount and the directory and returns the root to keep).
    pub fn new(name: &str, make: impl FnOnce(&Path, &Path) -> PathBuf) -> Self {
        let mount = Hierarchy::detect()
            .expect("a cgroup hierarchy on this host")
            .unified_mount;
        let dir = mount.join(name);
        assert!(!dir.exists(), "{} left by another run", dir.display());
        let root = make(&mount, &dir);
        Self {
            made: vec![root.clone()],
            root,
        }
    }

    /// The tree's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes `rel` (below the root) and its missing parents.
    pub fn mkdir(&mut self, rel: &str) {
        let mut dir = self.root.clone();
        for c in rel.split('/').filter(|c| !c.is_empty()) {
            dir.push(c);
            if !dir.exists() {
                fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                self.made.push(dir.clone());
            }
        }
    }

    /// Removes `rel` (below the root), which must be empty of cgroups and processes.
    pub fn rmdir(&mut self, rel: &str) {
        let dir = self.root.join(rel.trim_start_matches('/'));
        fs::remove_dir(&dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
        self.made.retain(|d| *d != dir);
    }
}

impl Drop for CgTree {
    fn drop(&mut self) {
        for d in self.made.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}
