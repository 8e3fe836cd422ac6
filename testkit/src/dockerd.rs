//! [`Dockerd`]: a real Docker engine (Debian's docker.io, 20.10) for tests, isolated as
//! shared/PLATFORM.md describes, so it never changes the host's firewall, routes or state:
//!
//! - a network namespace of its own (named, so the test can start the agent and clients in it
//!   and a person can `ip netns exec` into a hung run): Docker's bridge, veths, iptables rules
//!   (FORWARD policy DROP included), docker-proxy listeners and `ip_forward` stay in there;
//! - a private mount namespace (`unshare -m --propagation private`): the overlay and netns
//!   mounts it makes are invisible to the host, with tmpfs over `/etc/docker`, `/run/docker`
//!   and `/run/containerd` so its key file, plugin dir and shim sockets stay out of the host's;
//! - `--data-root`, `--exec-root`, `--pidfile`, the API socket and an empty `--config-file` in a
//!   scratch directory, `--bip` on a private /24 unique to the run; dockerd starts its own
//!   containerd (its socket and state under the exec and data roots).
//!
//! What it shares with the host, as a real Docker host does: the cgroup tree (runc puts each
//! container at `/docker/<id>` in every v1 hierarchy and in the unified one) and the process
//! table. Drop removes every container, stops dockerd, its containerd and the shims (every
//! process left in its mount or network namespace), unmounts what is under the scratch dir,
//! deletes the namespace, the scratch dir and the containers' cgroups.
//!
//! The `docker` CLI used is Debian's `/usr/bin/docker` (an image may carry a newer client
//! earlier in PATH), with `DOCKER_CONFIG` in the scratch dir so `~/.docker` is never touched.

use std::{
    collections::BTreeSet,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{Netns, ShError, busybox_rootfs, unique};

/// Debian's docker CLI, the one that matches the daemon.
const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
/// PATH for dockerd: runc, containerd, docker-proxy and docker-init from Debian's packages.
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// How long dockerd may take to answer `docker info` after its start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// A docker command that takes longer is killed (`rm -f` of a container publishing 1,000 ports
/// takes ~90 s, PLATFORM.md).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// The `docker` parents in the cgroup hierarchies that no live guard of this process has
/// seen before: (live guards, parents absent when the first one started). The last guard
/// removes those parents (when empty), so concurrent guards never pull one from under another.
static CGROUP_PARENTS: Mutex<(usize, Vec<PathBuf>)> = Mutex::new((0, Vec::new()));

/// A dockerd of the test's own; everything it made is removed on drop.
pub struct Dockerd {
    /// Unique to the run: `berth-dk-<pid>x<n>`; the network namespace's name.
    pub name: String,
    /// The scratch directory holding the roots, the socket and the log.
    pub dir: PathBuf,
    /// The API socket (`-H unix://<socket>`).
    pub socket: PathBuf,
    /// `--data-root`: `containers/<id>/config.v2.json` live here.
    pub data_root: PathBuf,
    /// `--exec-root`.
    pub exec_root: PathBuf,
    /// The bridge's address (`--bip`), the gateway of its containers, e.g. 10.250.7.1.
    pub gateway: std::net::Ipv4Addr,
    /// Its network namespace (named `name`); [`Netns::run`] runs code in it.
    pub netns: Netns,
    child: Option<Child>,
    /// dockerd's mount namespace (`mnt:[...]`), to find its containerd and shims at the end.
    mnt_ns: Option<PathBuf>,
}

impl Dockerd {
    /// The busybox image every guard imports at start (`docker import`, offline).
    pub const BUSYBOX: &'static str = "bb:1";

    /// Starts dockerd and waits until `docker info` answers, then imports [`Self::BUSYBOX`].
    /// Needs root and Debian's docker.io (`cargo xtask setup` installs it).
    pub fn start() -> Dockerd {
        for tool in [DOCKERD, DOCKER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: install Debian's docker.io (`cargo xtask setup` does)"
            );
        }
        let name = format!("berth-dk-{}", unique(""));
        let dir = std::env::temp_dir().join(&name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        // Mount points of the tmpfs mounts below; on a fresh host dockerd would make them.
        for d in ["/etc/docker", "/run/docker", "/run/containerd"] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
        }
        {
            let mut parents = CGROUP_PARENTS.lock().unwrap_or_else(|e| e.into_inner());
            if parents.0 == 0 {
                parents.1 = cgroup_dirs("docker")
                    .into_iter()
                    .filter(|p| !p.exists())
                    .collect();
            }
            parents.0 += 1;
        }
        let netns = Netns::named(&name);
        // A private /24 per guard from the pid and the sequence, in 10.250-255.x: inside its own
        // namespace it meets only what the test adds there, such as an agent's bridge
        // (tests/common gives those 10.200-249.x).
        let seq: u32 = name
            .rsplit('x')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let gateway = std::net::Ipv4Addr::new(
            10,
            (250 + seq % 6) as u8,
            (std::process::id() % 256) as u8,
            1,
        );
        let mut d = Dockerd {
            socket: dir.join("docker.sock"),
            data_root: dir.join("data"),
            exec_root: dir.join("exec"),
            name,
            dir,
            gateway,
            netns,
            child: None,
            mnt_ns: None,
        };
        // From here on `d` is the guard: a failure below still cleans up.
        fs::write(d.dir.join("daemon.json"), "{}\n").unwrap();
        let script = format!(
            "mount -t tmpfs tmpfs /etc/docker && mount -t tmpfs tmpfs /run/docker && \
             mount -t tmpfs tmpfs /run/containerd && \
             exec {DOCKERD} --config-file {dir}/daemon.json --data-root {data} \
             --exec-root {exec} --pidfile {dir}/dockerd.pid -H unix://{sock} --bip {gateway}/24",
            dir = d.dir.display(),
            data = d.data_root.display(),
            exec = d.exec_root.display(),
            sock = d.socket.display(),
        );
        let log = fs::File::create(d.log_path()).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", d.name))
            .args(["--", "unshare", "-m", "--propagation", "private", "--"])
            .args(["sh", "-c", &script])
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting dockerd (nsenter, unshare: util-linux): {e}"));
        d.child = Some(child);
        d.wait_ready();
        d.mnt_ns = d
            .child
            .as_ref()
            .and_then(|c| fs::read_link(format!("/proc/{}/ns/mnt", c.id())).ok());
        let tar = d.dir.join("busybox.tar");
        let root = busybox_rootfs(&d.dir);
        crate::sh(&format!(
            "tar -C {} -cf {} .",
            root.display(),
            tar.display()
        ));
        d.docker(&["import", &tar.display().to_string(), Self::BUSYBOX]);
        d
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// dockerd's log (stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// dockerd's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.try_docker(&["info", "--format", "{{.ID}}"]).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("dockerd exited during start-up ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer `docker info` within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `docker --host unix://<socket> args...`; panics with its stderr if it fails.
    /// Returns stdout.
    pub fn docker(&self, args: &[&str]) -> String {
        self.try_docker(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Dockerd::docker`], returning the failure.
    pub fn try_docker(&self, args: &[&str]) -> Result<String, ShError> {
        let mut cmd = Command::new(DOCKER);
        cmd.arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("client"));
        let line = format!("docker {}", args.join(" "));
        output_within(&mut cmd, &line, COMMAND_TIMEOUT)
    }

    /// The full ids of every container of this engine, running or not.
    pub fn container_ids(&self) -> Vec<String> {
        let mut ids: BTreeSet<String> = self
            .try_docker(&["ps", "-aq", "--no-trunc"])
            .map(|out| out.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        // Those on disk too: a container dockerd lost track of still has its cgroups.
        if let Ok(entries) = fs::read_dir(self.data_root.join("containers")) {
            ids.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
        ids.into_iter().collect()
    }

    /// Processes (other than this one) in dockerd's mount namespace or in its network
    /// namespace: containerd, the shims, docker-proxy, host-network containers.
    fn leftover_processes(&self) -> Vec<i32> {
        let net = fs::read_link(self.netns.path()).ok();
        let me = std::process::id() as i32;
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                let ns = |kind| fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
                (self.mnt_ns.is_some() && ns("mnt") == self.mnt_ns)
                    || (net.is_some() && ns("net") == net)
            })
            .collect()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.container_ids();
        if self.child.is_some() && !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            if let Err(e) = self.try_docker(&args) {
                eprintln!("Dockerd drop: {e}");
            }
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // containerd, shims and whatever else dockerd left: SIGKILL until none is left.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.leftover_processes();
            if left.is_empty() || Instant::now() > deadline {
                if !left.is_empty() {
                    eprintln!("Dockerd drop: processes still alive: {left:?}");
                }
                break;
            }
            for pid in left {
                // SAFETY: a plain kill(2) of a process in this guard's namespaces.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        unmount_below(&self.dir);
        for id in &ids {
            for dir in cgroup_dirs(&format!("docker/{id}")) {
                remove_cgroup(&dir);
            }
        }
        {
            let mut parents = CGROUP_PARENTS.lock().unwrap_or_else(|e| e.into_inner());
            parents.0 = parents.0.saturating_sub(1);
            if parents.0 == 0 {
                for p in std::mem::take(&mut parents.1) {
                    // Only when empty: another engine's containers may live there by now.
                    let _ = fs::remove_dir(p);
                }
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("Dockerd drop: removing {}: {e}", self.dir.display());
        }
        // `netns` drops after this: the name goes, and the namespace with its last process.
    }
}

/// `rel` in every cgroup hierarchy: `/sys/fs/cgroup/<controller>/rel` (v1 and, in hybrid mode,
/// `unified`), or `/sys/fs/cgroup/rel` on a pure v2 host.
fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![base.join(rel)];
    if let Ok(entries) = fs::read_dir(base) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path().join(rel));
            }
        }
    }
    dirs
}

/// rmdir bottom-up, retrying while the last tasks exit.
fn remove_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("Dockerd drop: cannot remove cgroup {}", dir.display());
}

/// Unmounts (lazily, deepest first) every mount of this process's namespace below `dir`.
fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: a plain umount2(2) of a path we own.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Runs `cmd` to completion with its output captured, killing it after `timeout`.
fn output_within(cmd: &mut Command, line: &str, timeout: Duration) -> Result<String, ShError> {
    let fail = |status, stderr: String| ShError {
        command: line.to_owned(),
        status,
        stderr,
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(None, e.to_string()))?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let (stdout, stderr, status) = std::thread::scope(|s| {
        let o = s.spawn(move || {
            let mut v = String::new();
            if let Some(p) = out.as_mut() {
                let _ = p.read_to_string(&mut v);
            }
            v
        });
        let e = s.spawn(move || {
            let mut v = String::new();
            if let Some(p) = err.as_mut() {
                let _ = p.read_to_string(&mut v);
            }
            v
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break None,
            }
        };
        (
            o.join().unwrap_or_default(),
            e.join().unwrap_or_default(),
            status,
        )
    });
    match status {
        Some(s) if s.success() => Ok(stdout),
        Some(s) => Err(fail(Some(s), stderr)),
        None => Err(fail(
            None,
            format!("killed after {timeout:?}; stderr: {stderr}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only; a real dockerd. Everything the guard made is gone after drop.
    #[test]
    fn dockerd_runs_a_container_in_its_namespaces_and_drop_removes_everything() {
        let d = Dockerd::start();
        let id = d
            .docker(&[
                "run",
                "-d",
                "-p",
                "40000:40000/udp",
                Dockerd::BUSYBOX,
                "sleep",
                "600",
            ])
            .trim()
            .to_owned();
        assert_eq!(id.len(), 64, "{id}");
        assert_eq!(d.container_ids(), vec![id.clone()]);
        // Its address is on the guard's bridge; its cgroups are the host's.
        let ip = d.docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &id]);
        let g = d.gateway.octets();
        assert!(
            ip.trim()
                .starts_with(&format!("{}.{}.{}.", g[0], g[1], g[2])),
            "{ip} not in {}/24",
            d.gateway
        );
        let cgroups: Vec<PathBuf> = cgroup_dirs(&format!("docker/{id}"))
            .into_iter()
            .filter(|p| p.exists())
            .collect();
        assert!(!cgroups.is_empty(), "no /docker/{id} cgroup");
        // Docker's firewall and bridge are in its namespace, not in the caller's.
        assert!(d.netns.sh("ip -o link show docker0").contains("docker0"));
        assert!(!crate::sh("ip -o link show").contains("docker0"));
        let helpers = d.leftover_processes();
        assert!(
            helpers.len() >= 3,
            "containerd, a shim and docker-proxy expected in its namespaces: {helpers:?}"
        );
        let (dir, name, pid) = (d.dir.clone(), d.name.clone(), d.pid());
        drop(d);

        assert!(!dir.exists(), "scratch dir {} left", dir.display());
        assert!(
            !Path::new(&format!("/run/netns/{name}")).exists(),
            "netns {name} left"
        );
        for p in helpers.iter().copied().chain([pid as i32]) {
            assert!(
                !Path::new(&format!("/proc/{p}")).exists()
                    || fs::read_to_string(format!("/proc/{p}/stat"))
                        .is_ok_and(|s| s.contains(") Z ")),
                "process {p} still runs"
            );
        }
        for c in cgroups {
            assert!(!c.exists(), "cgroup {} left", c.display());
        }
    }
}
