//! [`Containerd`]: Debian's containerd, started for one test with its own root, state, socket
//! and config, in a mount namespace of its own (with a private tmpfs on `/run`, where
//! containerd 1.6 keeps its shims' sockets and runc's state whatever its config says) and a
//! network namespace of its own (anonymous: it goes with the processes in it). `ctr` runs in
//! the same namespaces ([`Containerd::ctr`]), so the FIFOs it makes are where containerd looks.
//!
//! What containerd leaves on the host itself is what a test looks at: the task bundles under
//! [`Containerd::state`] and the containers' cgroups (runc makes them in every hierarchy).
//! Drop removes both: every task and container, containerd, any process still naming the
//! guard's directory (shims), the cgroups of the containers run through the guard and their
//! parents once empty, and the directory.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Child,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{ShError, engine};

/// A containerd of the test's own; everything it made is removed on drop.
pub struct Containerd {
    /// The guard's directory: config, root, state, socket, log.
    pub dir: PathBuf,
    /// containerd's state dir (`discovery.containerd_state`): task bundles are below
    /// `io.containerd.runtime.v2.task/<namespace>/<id>`.
    pub state: PathBuf,
    /// Its gRPC socket.
    pub socket: PathBuf,
    child: Child,
    /// Cgroup paths (below a hierarchy's mount) of the containers run through the guard.
    cgroups: Mutex<Vec<String>>,
}

impl Containerd {
    /// Starts containerd and waits until it answers. Needs root, `containerd`, `ctr`,
    /// `containerd-shim-runc-v2` and `runc` (Debian's `containerd` and `runc`: `cargo xtask
    /// setup` installs them), `unshare` and `nsenter`.
    pub fn start() -> Containerd {
        for tool in ["containerd", "ctr", "containerd-shim-runc-v2", "runc"] {
            assert!(
                engine::which(tool),
                "{tool} not found: install Debian's containerd and runc (`cargo xtask setup` does)"
            );
        }
        let dir = engine::scratch_dir("ctrd");
        let (state, socket) = (dir.join("state"), dir.join("containerd.sock"));
        let config = dir.join("config.toml");
        let d = dir.display();
        fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{d}/root\"\n\
                 state = \"{d}/state\"\n\
                 # The CRI plugin would read /etc/cni and serve streams; tests label containers\n\
                 # as it would instead.\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
            ),
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        let child = engine::spawn_isolated(
            &format!("exec containerd --config {}", config.display()),
            log,
        );
        let mut guard = Containerd {
            dir,
            state,
            socket,
            child,
            cgroups: Mutex::new(Vec::new()),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if guard.ctr(&["version"]).is_ok() {
                return guard;
            }
            if let Ok(Some(status)) = guard.child.try_wait() {
                panic!(
                    "containerd exited during start-up ({status}):\n{}",
                    guard.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer on {} within 20 s:\n{}",
                guard.socket.display(),
                guard.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr --address SOCKET ARGS...` in containerd's namespaces: stdout, or the failure.
    pub fn ctr(&self, args: &[&str]) -> Result<String, ShError> {
        let mut all = vec!["--address", self.socket.to_str().unwrap()];
        all.extend_from_slice(args);
        engine::run_in(self.child.id(), "ctr", &all)
    }

    /// `ctr -n NAMESPACE run -d --rootfs` of `cmd` in `rootfs` as container `id`, with `labels`
    /// (they become the bundle's annotations) and, when given, its cgroup path (as runc takes
    /// it with the cgroupfs driver; containerd's default is `/<namespace>/<id>`). Panics with
    /// ctr's error and containerd's log when it fails.
    pub fn run(
        &self,
        namespace: &str,
        id: &str,
        cgroup: Option<&str>,
        labels: &[(&str, &str)],
        rootfs: &Path,
        cmd: &[&str],
    ) {
        let path = cgroup.map_or_else(|| format!("/{namespace}/{id}"), str::to_owned);
        // Recorded first: a run that fails half-way may have made it.
        self.cgroups.lock().unwrap().push(path.clone());
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["-n", namespace, "run", "-d", "--null-io", "--rootfs"];
        for l in &labels {
            args.extend(["--label", l]);
        }
        args.extend(["--cgroup", &path]);
        let rootfs = rootfs.to_str().unwrap();
        args.extend([rootfs, id]);
        args.extend_from_slice(cmd);
        if let Err(e) = self.ctr(&args) {
            panic!("{e}\ncontainerd's log:\n{}", self.log());
        }
    }

    /// Kills the task of `id` and removes it and the container (its cgroup goes with it).
    pub fn remove(&self, namespace: &str, id: &str) -> Result<(), ShError> {
        let _ = self.ctr(&["-n", namespace, "tasks", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        // `tasks rm` fails while the task is still running; the kill lands within moments.
        while let Err(e) = self.ctr(&["-n", namespace, "tasks", "rm", "-f", id]) {
            if Instant::now() > deadline || e.stderr.contains("not found") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.ctr(&["-n", namespace, "containers", "rm", id])
            .map(|_| ())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let namespaces = self.ctr(&["namespaces", "ls", "-q"]).unwrap_or_default();
        for ns in namespaces.split_whitespace() {
            let ids = self
                .ctr(&["-n", ns, "containers", "ls", "-q"])
                .unwrap_or_default();
            for id in ids.split_whitespace() {
                let _ = self.remove(ns, id);
            }
        }
        engine::stop(&mut self.child);
        engine::kill_naming(&self.dir);
        let cgroups = std::mem::take(&mut *self.cgroups.lock().unwrap_or_else(|e| e.into_inner()));
        engine::remove_cgroups(&cgroups);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
