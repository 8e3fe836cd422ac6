//! [`Podman`]: Debian's podman 4.3 run for one test with its own storage root, run root, tmp
//! dir and network config dir, every command inside one mount namespace (private propagation,
//! a tmpfs of its own on `/run`, where runc and netavark keep state whatever podman's flags
//! say) and one network namespace, both held by a parked process. Options this host needs
//! (PLATFORM.md): the cgroupfs manager, runc (crun refuses cgroup hybrid mode), and rlimits
//! within the hard limits, which [`Podman::run`] passes with `--network none`.
//!
//! Drop removes every container and image, the parked process, any process still naming the
//! guard's directory (conmon, fuse-overlayfs), the containers' cgroups
//! (`/libpod_parent/libpod-<id>` and podman's `conmon` cgroup, with the parent once empty) and
//! the directory.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Child,
    sync::Mutex,
};

use crate::{ShError, engine};

/// A podman of the test's own; everything it made is removed on drop.
pub struct Podman {
    /// The guard's directory.
    pub dir: PathBuf,
    /// containers/storage's root (`--root`, `discovery.podman_root`).
    pub root: PathBuf,
    /// Its run root (`--runroot`, `discovery.podman_runroot`).
    pub runroot: PathBuf,
    holder: Child,
    ids: Mutex<Vec<String>>,
}

impl Podman {
    /// Parks a process in new mount and network namespaces for podman's commands. Needs root,
    /// `podman` and `runc` (Debian's: `cargo xtask setup` installs them), `unshare` and
    /// `nsenter`.
    pub fn start() -> Podman {
        for tool in ["podman", "runc", "conmon"] {
            assert!(
                engine::which(tool),
                "{tool} not found: install Debian's podman and runc (`cargo xtask setup` does)"
            );
        }
        let dir = engine::scratch_dir("podman");
        let log = fs::File::create(dir.join("holder.log")).unwrap();
        let holder = engine::spawn_isolated("exec sleep infinity", log);
        let guard = Podman {
            root: dir.join("root"),
            runroot: dir.join("runroot"),
            dir,
            holder,
            ids: Mutex::new(Vec::new()),
        };
        // The namespaces are ready once a command runs in them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Err(e) = engine::run_in(guard.holder.id(), "true", &[]) {
            assert!(
                std::time::Instant::now() < deadline,
                "the namespaces for podman are not ready: {e}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        guard
    }

    /// `podman GLOBAL-FLAGS ARGS...` with the guard's storage and options: stdout, or the
    /// failure.
    pub fn podman(&self, args: &[&str]) -> Result<String, ShError> {
        let d = |p: &str| self.dir.join(p).to_string_lossy().into_owned();
        let (root, runroot, tmp, net) = (d("root"), d("runroot"), d("tmp"), d("networks"));
        let mut all = vec![
            "--cgroup-manager",
            "cgroupfs",
            "--runtime",
            "runc",
            "--root",
            &root,
            "--runroot",
            &runroot,
            "--tmpdir",
            &tmp,
            "--network-config-dir",
            &net,
            "--events-backend",
            "none",
        ];
        all.extend_from_slice(args);
        engine::run_in(self.holder.id(), "podman", &all)
    }

    /// `podman run -d --name NAME --network none` (with rlimits this host allows) of `image`
    /// (an image reference, or `--rootfs DIR`) and `cmd`; returns the container's id. Panics
    /// with podman's error when it fails.
    pub fn run(&self, name: &str, image: &[&str], cmd: &[&str]) -> String {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        args.extend_from_slice(image);
        args.extend_from_slice(cmd);
        let id = self
            .podman(&args)
            .unwrap_or_else(|e| panic!("{e}"))
            .trim()
            .to_owned();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "podman run printed {id:?}, not an id"
        );
        self.ids.lock().unwrap().push(id.clone());
        id
    }

    /// `podman import` of a tar of `rootfs` as image `reference`.
    pub fn import(&self, rootfs: &Path, reference: &str) -> Result<String, ShError> {
        let tar = self.dir.join("rootfs.tar");
        crate::sh(&format!(
            "tar -C {} -cf {} .",
            rootfs.display(),
            tar.display()
        ));
        self.podman(&["import", tar.to_str().unwrap(), reference])
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-f", "-a", "-t", "0"]);
        let _ = self.podman(&["rmi", "-f", "-a"]);
        engine::stop(&mut self.holder);
        engine::kill_naming(&self.dir);
        let ids = std::mem::take(&mut *self.ids.lock().unwrap_or_else(|e| e.into_inner()));
        let cgroups: Vec<String> = ids
            .iter()
            .map(|id| format!("/libpod_parent/libpod-{id}"))
            .collect();
        engine::remove_cgroups(&cgroups);
        // conmon's, shared by every podman on the host: removed only once empty.
        engine::remove_empty_cgroups(&["/libpod_parent/conmon".to_owned()]);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
