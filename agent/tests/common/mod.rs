//! Helpers for the integration tests: they run as root against the real kernel, start the real
//! agent binary, and remove what they create (RAII guards) with names unique to the run.
#![allow(dead_code)] // each test binary uses a different subset

pub mod docker;
pub mod registry;

use berth_testkit::{Netns, sh};
use std::{
    fs,
    io::Read as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call: `berth-it-<pid>-<n>-<tag>`.
pub fn unique(tag: &str) -> String {
    format!(
        "berth-it-{}-{}-{tag}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these integration tests load BPF programs and create cgroups: run them as root \
         (`cargo xtask test` does)"
    );
}

/// Mount point of the cgroup2 filesystem (hybrid: /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("no cgroup2 mount on this host: mount one (`cargo xtask setup` checks this)")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// HTTP GET on loopback: (status, body). Connection errors are status 0.
pub fn http_get(url: &str) -> (u16, String) {
    match ureq::get(url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// The real agent binary, started with its own tracked cgroup root and port; stopped with
/// SIGTERM (then SIGKILL) on drop, after which its cgroup root is removed.
pub struct Agent {
    child: Option<Child>,
    pub base: String,
    pub root_name: String,
    pub root_dir: PathBuf,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    /// Extra environment for the agent process (e.g. `NOTIFY_SOCKET`), set before
    /// [`Agent::spawn`].
    pub env: Vec<(String, String)>,
    log: PathBuf,
    /// The binary the agent process is started from.
    pub exe: PathBuf,
}

impl Agent {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts the agent with `extra` appended to a config that sets a unique root and port.
    pub fn start_with(extra: &str) -> Self {
        Self::start_from_with(Path::new(env!("CARGO_BIN_EXE_berth")), extra)
    }

    /// Like [`Agent::start_with`], with `http` added to the `[http]` section.
    pub fn start_with_http(http: &str, extra: &str) -> Self {
        let mut agent = Self::prepare_full(Path::new(env!("CARGO_BIN_EXE_berth")), http, extra);
        agent.spawn();
        agent
    }

    /// Starts the agent from the binary at `exe` (e.g. a copy a test replaces, as an upgrade
    /// does) and `extra` appended to the config; the CLI stays the test build's binary.
    pub fn start_from_with(exe: &Path, extra: &str) -> Self {
        let mut agent = Self::prepare_from(exe, extra);
        agent.spawn();
        agent
    }

    /// Like [`Agent::start_with`] without starting the process: set `env`, then `spawn`.
    pub fn prepare(extra: &str) -> Self {
        Self::prepare_from(Path::new(env!("CARGO_BIN_EXE_berth")), extra)
    }

    /// Like [`Agent::start_from_with`] without starting the process.
    pub fn prepare_from(exe: &Path, extra: &str) -> Self {
        Self::prepare_full(exe, "", extra)
    }

    /// The agent's config and state from `exe`, `http` added to `[http]` and `extra` appended;
    /// not started.
    pub fn prepare_full(exe: &Path, http: &str, extra: &str) -> Self {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let root_name = unique("root");
        let port = free_port();
        let config = dir.path().join("berth.toml");
        let d = dir.path().display();
        let socket = dir.path().join("berth.sock");
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Unique bridge (<= 15 bytes), subnet and nft table per agent.
        let network = format!(
            "[network]\nbridge = \"bt{}x{seq}\"\nsubnet = \"10.{}.{}.0/24\"\ntable = \"bi{}x{seq}\"\n",
            pid % 1_000_000,
            200 + seq % 50,
            pid % 256,
            pid % 1_000_000
        );
        let extra = if extra.contains("[network]") {
            extra.to_owned()
        } else {
            format!("{network}{extra}")
        };
        fs::write(
            &config,
            format!(
                "[agent]\ninterval = \"200ms\"\n\
                 [http]\nlisten = \"127.0.0.1:{port}\"\nsocket = \"{d}/berth.sock\"\n{http}\n\
                 [cgroup]\nroot = \"{root_name}\"\n\
                 [runtime]\nstate_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\n{extra}"
            ),
        )
        .unwrap();
        let log = dir.path().join("agent.log");
        Agent {
            child: None,
            base: format!("http://127.0.0.1:{port}"),
            root_dir: cgroup2_mount().join(&root_name),
            root_name,
            dir,
            socket,
            config,
            env: Vec::new(),
            log,
            exe: exe.to_owned(),
        }
    }

    /// The file the agent's stderr is appended to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The running agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the agent process on the existing config and state (also after a kill -9).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.exe)
            .args(["agent", "--config"])
            .arg(&self.config)
            .env("BERTH_LOG", "berth=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(fs::File::create(self.dir.path().join("agent.out")).unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning the berth binary");
        self.child = Some(child);
        let agent = self;
        let base = agent.base.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if http_get(&format!("{base}/readyz")).0 == 200 {
                break;
            }
            if let Some(status) = agent.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited during start-up ({status}):\n{}", agent.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready after 20 s:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash: no cleanup runs.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("agent not running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Runs a client verb against this agent: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running the berth CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Like [`Agent::cli`], asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cli(args);
        assert_eq!(
            code,
            0,
            "berth {args:?} failed ({code}): {err}\n{out}\nagent log:\n{}",
            self.log()
        );
        out
    }

    /// Waits until the container's status is `status`; returns its inspect JSON.
    pub fn wait_status(&self, c: &str, status: &str, secs: u64) -> serde_json::Value {
        wait_for(
            Duration::from_secs(secs),
            &format!("{c} to be {status}"),
            || {
                let v = self.inspect(c);
                (v["status"] == status).then_some(v)
            },
        )
    }

    /// One request over the agent's Unix socket (curl, which `cargo xtask setup` installs),
    /// with a JSON body when given: (status, body text).
    pub fn socket_request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-m",
            "60",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ])
        .arg("--unix-socket")
        .arg(&self.socket);
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "--data", b]);
        }
        let out = cmd
            .arg(format!("http://berth{path}"))
            .output()
            .expect("curl (cargo xtask setup installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// `inspect` of one container as JSON.
    pub fn inspect(&self, container: &str) -> serde_json::Value {
        let out = self.ok(&["inspect", container]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0].clone()
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&format!("{}{path}", self.base))
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    pub fn system(&self) -> serde_json::Value {
        let (status, body) = self.get("/api/v1/system");
        assert_eq!(status, 200, "GET /api/v1/system: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Sends SIGTERM and waits; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agent ignored SIGTERM for 10 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Remove every container this agent made (overlays, cgroups, shims).
            let (_, ids, _) = self.cli(&["ps", "-a", "-q", "-f", "engine=berth"]);
            for id in ids.split_whitespace() {
                let _ = self.cli(&["rm", "-f", id]);
            }
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_cgroup_tree(&self.root_dir);
        // The probes' counters pinned for this agent's tracked root (they outlive an agent on
        // purpose, so the test removes them).
        let _ = fs::remove_dir_all(Path::new("/sys/fs/bpf/berth").join(&self.root_name));
        // runc makes the root in every v1 hierarchy too (hybrid hosts).
        if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                remove_cgroup_tree(&e.path().join(&self.root_name));
            }
        }
    }
}

/// A cgroup v2 directory the test owns, removed on drop.
pub struct Cgroup {
    pub dir: PathBuf,
}

impl Cgroup {
    pub fn create(parent: &Path, name: &str) -> Self {
        let dir = parent.join(name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cgroup { dir }
    }

    /// Its `cgroup.procs` as a C string, for a forked child to open before it does its work
    /// (only async-signal-safe calls after fork).
    pub fn procs_cstring(&self) -> std::ffi::CString {
        std::ffi::CString::new(
            self.dir
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("a cgroup path has no NUL byte")
    }

    /// Path below the cgroup2 mount, as the agent labels it.
    pub fn label(&self) -> String {
        let mount = cgroup2_mount();
        format!("/{}", self.dir.strip_prefix(&mount).unwrap().display())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.dir);
    }
}

/// rmdir bottom-up; a cgroup is removable once its last task has exited.
pub fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Forks a child that moves itself into `cgroup`, makes exactly `calls` getppid(2) syscalls
/// and exits; waits for it. The child does only async-signal-safe work (no allocation).
pub fn getppid_in(cgroup: &Cgroup, calls: u64) {
    syscalls_in(cgroup, calls, 0, 0);
}

/// Like [`getppid_in`], then `sleeps` nanosleep(2) calls of `sleep_ms` each.
pub fn syscalls_in(cgroup: &Cgroup, calls: u64, sleeps: u32, sleep_ms: i64) {
    let procs = cgroup.procs_cstring();
    // SAFETY: the child only calls open/write/close/syscall/_exit before exiting.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                libc::_exit(2);
            }
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(3);
            }
            libc::close(fd);
            for _ in 0..calls {
                libc::syscall(libc::SYS_getppid);
            }
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: sleep_ms * 1_000_000,
            };
            for _ in 0..sleeps {
                libc::syscall(
                    libc::SYS_nanosleep,
                    &ts as *const libc::timespec,
                    std::ptr::null_mut::<libc::timespec>(),
                );
            }
            libc::_exit(0);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "workload child failed (status {status:#x}): could not join {}",
            cgroup.dir.display()
        );
    }
}

/// Value of the first sample of `name` in an OpenMetrics exposition that carries every one of
/// `labels` (a subset, in any order: families gain labels without breaking tests).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (pairs, value) = match rest.strip_prefix('{') {
            Some(r) => {
                let (inner, value) = r.split_once("} ")?;
                (label_pairs(inner), value)
            }
            None => (Vec::new(), rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| pairs.iter().any(|(pk, pv)| pk == k && pv == v))
            .then(|| value.trim().parse().unwrap())
    })
}

/// `k="v",k2="v2"` of an exposition line, unescaped enough for tests (`\"` and `\\`).
fn label_pairs(inner: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = inner;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => value.push(c),
            }
        }
        out.push((k.trim_start_matches(',').to_owned(), value));
        rest = &after[end..];
    }
    out
}

/// A busybox root filesystem in `dir/rootfs` (Debian's busybox-static; see the testkit).
pub use berth_testkit::busybox_rootfs;

/// Builds `oci.tar` (OCI image layout, tag `shell/oci:v1`) and `docker.tar.gz` (`docker save`
/// format, tag `shell/docker:v1`) of one busybox image with sh, tar, gzip and sha256sum, not
/// berth: Entrypoint /bin/busybox, Cmd sh, User 1000, WorkingDir /home/user, /etc/motd
/// "hello". Returns (oci.tar, docker.tar.gz, image id).
pub fn build_image_archives(dir: &Path) -> (PathBuf, PathBuf, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(include_str!("build_image.sh"))
        .arg("build_image.sh")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build_image.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = fs::read_to_string(dir.join("id"))
        .unwrap()
        .trim()
        .to_owned();
    (dir.join("oci.tar"), dir.join("docker.tar.gz"), id)
}

/// A rootfs with busybox and this build's `berth-test-echo` (the UDP echo workload,
/// `src/bin/berth-test-echo.rs`) plus the shared libraries it links, so the echo server runs
/// inside containers.
pub fn echo_rootfs(dir: &Path) -> PathBuf {
    let root = busybox_rootfs(dir);
    let exe = Path::new(env!("CARGO_BIN_EXE_berth-test-echo"));
    fs::copy(exe, root.join("bin/berth-test-echo")).unwrap();
    let ldd = Command::new("ldd").arg(exe).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            let dst = root.join(p.trim_start_matches('/'));
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            fs::copy(p, &dst).unwrap();
        }
    }
    root
}

/// A client network namespace joined to the host by a veth pair the test owns:
/// host side `host_ip/30`, client side `client_ip/30` with a default route to the host.
pub struct ClientNs {
    pub ns: Netns,
    pub host_if: String,
    pub host_ip: std::net::Ipv4Addr,
    pub client_ip: std::net::Ipv4Addr,
}

impl ClientNs {
    pub fn create() -> Self {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let host_if = berth_testkit::unique("bh");
        let peer = berth_testkit::unique("bp");
        let third = (std::process::id() % 200) as u8;
        let base = ((seq % 60) * 4) as u8;
        let host_ip = std::net::Ipv4Addr::new(172, 30, third, base + 1);
        let client_ip = std::net::Ipv4Addr::new(172, 30, third, base + 2);
        let ns = Netns::new();
        // The guard from here on: Drop removes the host side even if a step below fails.
        let client = ClientNs {
            ns,
            host_if,
            host_ip,
            client_ip,
        };
        berth_testkit::veth(&client.host_if, &client.ns, &peer);
        sh(&format!("ip addr add {host_ip}/30 dev {}", client.host_if));
        sh(&format!("ip link set {} up", client.host_if));
        client
            .ns
            .sh(&format!("ip addr add {client_ip}/30 dev {peer}"));
        client.ns.sh(&format!("ip link set {peer} up"));
        client.ns.sh(&format!("ip route add default via {host_ip}"));
        client
    }
}

impl Drop for ClientNs {
    fn drop(&mut self) {
        // The namespace (and with it the veth) goes when `ns` closes, asynchronously in the
        // kernel: remove the host side now, so the name and the /30 are free at once.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// Sends `payload` over UDP to `to` from the namespace `netns` (the host's when `None`) and
/// returns the answer, trying 3 times with a 1 s timeout.
pub fn udp_ask(netns: Option<&Netns>, to: std::net::SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let ask = || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            let _ = sock.send_to(payload, to);
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                return Some(buf[..n].to_vec());
            }
        }
        None
    };
    match netns {
        Some(ns) => ns.run(ask),
        None => ask(),
    }
}

/// From the namespace `netns`, sends one UDP datagram from each of `flows` fresh sockets (so
/// each is a new conntrack flow) to `to`. Bounded: `flows` packets, no waiting.
pub fn udp_new_flows(netns: &Netns, to: std::net::SocketAddr, flows: u32) {
    netns.run(|| {
        // Sockets stay open until all are sent, so each has its own source port.
        let mut open = Vec::with_capacity(flows as usize);
        for _ in 0..flows {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let _ = s.send_to(&[0u8; 64], to);
            open.push(s);
        }
    });
}
