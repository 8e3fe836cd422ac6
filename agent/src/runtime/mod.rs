//! Container lifecycle: run, stop, kill, rm, update, inspect, logs, stats, and recovery of
//! every container after an agent restart or crash.
//!
//! Isolation is the OCI runtime's job ([`oci`]); berth writes the bundle ([`bundle`]), mounts an
//! overlay (image or directory as the read-only lower layer, a per-container upper layer),
//! owns the cgroup limits ([`crate::cgroup::limits`]) and keeps state in the [`store`],
//! intent first. Each container is watched by its own [`shim`] process, which outlives the
//! agent; on start the agent re-adopts them.

pub mod bundle;
pub mod oci;
pub mod shim;
pub mod store;

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    io::Read as _,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, RwLock},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::{
    oci::OciRuntime,
    store::{ContainerDir, ContainerRecord, Phase, RestartPolicy, ShimState, Store, StoreError},
};
use crate::{
    cgroup::{
        Hierarchy,
        limits::{ContainerCgroup, HostCapacity, LimitError, Limits},
        stats::ContainerStats,
    },
    image::{ImageError, ImageStore},
    net::{
        NetError, Network, NetworkConfig, NetworkMode, NetworkSpec,
        portmap::{self, BackendKind, Publish},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no such container: {reference}")]
    NotFound { reference: String },
    #[error("the name {name} is already used by container {id}")]
    NameInUse { name: String, id: String },
    #[error("container {container} is running: stop it first, or use force")]
    Running { container: String },
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Limits(#[from] LimitError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("building the OCI spec ({what}): {reason}")]
    Spec { what: &'static str, reason: String },
    #[error("{runtime} {command} failed: {stderr}")]
    Runtime {
        runtime: String,
        command: &'static str,
        container: String,
        stderr: String,
    },
    #[error("OCI runtime {runtime} cannot be used: {reason}")]
    RuntimeUnusable { runtime: String, reason: String },
    #[error("the container did not start: {reason}")]
    StartFailed { container: String, reason: String },
}

impl RuntimeError {
    /// Whether the error is the client's (4xx) rather than the host's (5xx).
    pub fn is_client_error(&self) -> bool {
        match self {
            RuntimeError::NotFound { .. }
            | RuntimeError::NameInUse { .. }
            | RuntimeError::Running { .. }
            | RuntimeError::BadInput(_)
            | RuntimeError::Limits(_)
            | RuntimeError::StartFailed { .. } => true,
            RuntimeError::Net(NetError::BadInput(_) | NetError::Exhausted { .. }) => true,
            RuntimeError::Net(NetError::Portmap(e)) => e.is_client_error(),
            RuntimeError::Image(e) => e.is_client_error(),
            _ => false,
        }
    }
}

/// What `berth run` / `POST /api/v1/containers` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunRequest {
    /// Image reference (name, id, id prefix) or an absolute path to a rootfs directory.
    pub image: String,
    pub name: Option<String>,
    /// Replaces the image's Cmd; the image's Entrypoint stays in front of it.
    pub cmd: Vec<String>,
    /// `KEY=VALUE`, added to (and overriding) the image's environment.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    pub user: Option<String>,
    pub limits: Limits,
    /// `no`, `on-failure[:N]`, `always`.
    pub restart: Option<String>,
    /// `bridge` (default), `host`, `none`.
    pub network: Option<String>,
    /// `[IP:]HOST[-HOST2]:CTR[-CTR2][/udp|/tcp]`, Docker's syntax.
    pub publish: Vec<String>,
    /// `nft-map` or `iptables`; the agent's default when absent.
    pub port_backend: Option<String>,
}

/// A container as the API and CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerView {
    #[serde(flatten)]
    pub record: ContainerRecord,
    /// `creating`, `running`, `restarting`, `exited`, `removing`.
    pub status: &'static str,
    pub state: ShimState,
    pub log_path: PathBuf,
    /// v2 cgroup id, what the probes key on (while the cgroup exists).
    pub cgroup_id: Option<u64>,
}

/// Owns every container of this agent.
pub struct Manager {
    store: Store,
    pub images: ImageStore,
    pub runtime: OciRuntime,
    hierarchy: Hierarchy,
    cgroup_root: String,
    host: HostCapacity,
    containers: RwLock<BTreeMap<String, ContainerRecord>>,
    pub net: Network,
    /// Serializes mutations (run, stop, rm, update) so names and ids stay consistent.
    ops: Mutex<()>,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn new_id() -> String {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: writing into our own buffer.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n > 0 {
            filled += n as usize;
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_mounted(path: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    text.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape_mount(m).as_bytes() == want)
    })
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn mount_overlay(lower: &Path, d: &ContainerDir) -> Result<(), RuntimeError> {
    for p in [d.upper(), d.work(), d.rootfs()] {
        fs::create_dir_all(&p).map_err(io("create", &p))?;
    }
    if is_mounted(&d.rootfs()) {
        return Ok(());
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        d.upper().display(),
        d.work().display()
    );
    let target = CString::new(d.rootfs().as_os_str().as_bytes()).expect("no NUL in paths");
    let data = CString::new(opts).map_err(|_| RuntimeError::BadInput("NUL in a path".into()))?;
    // SAFETY: valid C strings; overlay takes its options as data.
    let r = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(io("mount overlay on", &d.rootfs())(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn unmount(path: &Path) {
    if !is_mounted(path) {
        return;
    }
    if let Ok(target) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: valid C string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Whether `pid` is a live shim for `dir` (pids get reused: check its command line).
fn shim_alive(pid: u32, dir: &Path) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.iter().any(|a| *a == b"shim") && args.iter().any(|a| *a == dir.as_os_str().as_bytes())
}

impl Manager {
    /// Opens the store under `state_dir`, picks the runtime, and recovers every container.
    pub fn open(
        state_dir: &Path,
        run_dir: &Path,
        runtime: &str,
        hierarchy: Hierarchy,
        cgroup_root: &str,
        network: NetworkConfig,
    ) -> Result<Self, RuntimeError> {
        let runtime = OciRuntime::detect(runtime, &hierarchy, run_dir)?;
        let store = Store::open(state_dir)?;
        let images = ImageStore::open(&state_dir.join("images"))?;
        let m = Self {
            store,
            images,
            runtime,
            hierarchy,
            cgroup_root: cgroup_root.trim_matches('/').to_owned(),
            host: HostCapacity::detect()?,
            containers: RwLock::new(BTreeMap::new()),
            net: Network::new(network, run_dir),
            ops: Mutex::new(()),
        };
        m.recover()?;
        Ok(m)
    }

    fn cgroup(&self, record: &ContainerRecord) -> ContainerCgroup {
        ContainerCgroup::new(&self.hierarchy, &record.cgroup)
    }

    fn state_of(&self, id: &str) -> ShimState {
        store::read_json(&self.store.dir(id).state())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn view(&self, record: &ContainerRecord) -> ContainerView {
        let d = self.store.dir(&record.id);
        let state = self.state_of(&record.id);
        let alive = shim_alive(state.shim_pid, &d.dir);
        let status = match record.phase {
            Phase::Creating => "creating",
            Phase::Removing => "removing",
            Phase::Created if state.running && alive => "running",
            Phase::Created if alive => "restarting",
            Phase::Created => "exited",
        };
        ContainerView {
            cgroup_id: self.cgroup(record).v2_id(),
            record: record.clone(),
            status,
            state,
            log_path: d.log(),
        }
    }

    /// Finds a container by full id, name, or unique id prefix.
    pub fn resolve(&self, reference: &str) -> Result<ContainerRecord, RuntimeError> {
        let containers = self.containers.read().expect("lock");
        if let Some(r) = containers.get(reference) {
            return Ok(r.clone());
        }
        if let Some(r) = containers.values().find(|r| r.name == reference) {
            return Ok(r.clone());
        }
        let matches: Vec<_> = containers
            .values()
            .filter(|r| !reference.is_empty() && r.id.starts_with(reference))
            .collect();
        match matches.as_slice() {
            [r] => Ok((*r).clone()),
            [] => Err(RuntimeError::NotFound {
                reference: reference.to_owned(),
            }),
            _ => Err(RuntimeError::BadInput(format!(
                "{reference} matches {} containers: give more of the id",
                matches.len()
            ))),
        }
    }

    pub fn list(&self, all: bool) -> Vec<ContainerView> {
        let records: Vec<ContainerRecord> = self
            .containers
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        let mut views: Vec<ContainerView> = records
            .iter()
            .map(|r| self.view(r))
            .filter(|v| all || matches!(v.status, "running" | "restarting"))
            .collect();
        views.sort_by(|a, b| b.record.created_at.total_cmp(&a.record.created_at));
        views
    }

    pub fn inspect(&self, reference: &str) -> Result<ContainerView, RuntimeError> {
        Ok(self.view(&self.resolve(reference)?))
    }

    /// Every container with, while it runs, its cgroup usage: what the `containers`
    /// collector reads (shim state files, procfs, cgroupfs).
    pub fn observe(&self) -> Vec<(ContainerView, Option<ContainerStats>)> {
        self.list(true)
            .into_iter()
            .map(|view| {
                let stats = (view.status == "running")
                    .then(|| self.cgroup(&view.record).stats().ok())
                    .flatten();
                (view, stats)
            })
            .collect()
    }

    /// Creates and starts a container; returns once it runs (or with the reason it does not).
    pub fn run(&self, req: RunRequest) -> Result<ContainerView, RuntimeError> {
        let _ops = self.ops.lock().expect("lock");
        let record = self.prepare(req)?;
        let d = self.store.create(&record)?;
        info!(container = %record.id, name = %record.name, image = %record.image, "creating");
        match self.start_shim(&record, &d) {
            Ok(()) => {
                let mut record = record;
                record.phase = Phase::Created;
                self.store.save(&record)?;
                self.containers
                    .write()
                    .expect("lock")
                    .insert(record.id.clone(), record.clone());
                info!(container = %record.id, "running");
                Ok(self.view(&record))
            }
            Err(e) => {
                warn!(container = %record.id, error = %e, "start failed; undoing");
                self.teardown(&record);
                Err(e)
            }
        }
    }

    /// Validates the request and resolves it into a record; changes nothing on the host.
    fn prepare(&self, req: RunRequest) -> Result<ContainerRecord, RuntimeError> {
        let bad = |m: String| Err(RuntimeError::BadInput(m));
        if req.image.is_empty() {
            return bad("no image or rootfs directory given".into());
        }
        let name = match &req.name {
            Some(n) if !valid_name(n) => {
                return bad(format!(
                    "invalid container name {n:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128 \
                     characters"
                ));
            }
            Some(n) => n.clone(),
            None => String::new(),
        };
        if !name.is_empty()
            && let Some(other) = self
                .containers
                .read()
                .expect("lock")
                .values()
                .find(|r| r.name == name)
        {
            return Err(RuntimeError::NameInUse {
                name,
                id: other.id.clone(),
            });
        }
        req.limits.validate(&self.host)?;
        let restart: RestartPolicy = match &req.restart {
            Some(r) => r.parse().map_err(RuntimeError::BadInput)?,
            None => RestartPolicy::No,
        };
        for e in &req.env {
            if !e.contains('=') || e.starts_with('=') {
                return bad(format!("-e {e}: expected KEY=VALUE"));
            }
        }

        let (lower, image_id, config) = if req.image.starts_with('/') || req.image.starts_with('.')
        {
            let p = PathBuf::from(&req.image);
            if !p.is_dir() {
                return bad(format!("rootfs {}: not a directory", p.display()));
            }
            let p = p.canonicalize().map_err(io("resolve", &p))?;
            (p, None, Default::default())
        } else {
            let image = self.images.get(&req.image)?;
            (image.rootfs.clone(), Some(image.id.clone()), image.config)
        };

        let mut args = config.entrypoint.clone();
        if req.cmd.is_empty() {
            args.extend(config.cmd.iter().cloned());
        } else {
            args.extend(req.cmd.iter().cloned());
        }
        if args.is_empty() {
            return bad(format!(
                "{} has no default command: give one after it",
                req.image
            ));
        }
        let mut env: Vec<String> = config.env.clone();
        for e in &req.env {
            let key = e.split('=').next().unwrap_or("");
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        let workdir = req
            .workdir
            .clone()
            .or(config.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into());
        if !workdir.starts_with('/') {
            return bad(format!(
                "-w {workdir}: the working directory must be absolute"
            ));
        }
        let user_spec = req.user.clone().or(config.user.clone()).unwrap_or_default();
        let (uid, gid) = bundle::resolve_user(&lower, &user_spec)?;

        let network = self.prepare_network(&req)?;

        let id = new_id();
        let name = if name.is_empty() {
            format!("berth-{}", &id[..12])
        } else {
            name
        };
        Ok(ContainerRecord {
            cgroup: format!("/{}/{}", self.cgroup_root, id),
            id,
            name,
            image: req.image.clone(),
            image_id,
            lower,
            args,
            env,
            workdir,
            user: format!("{uid}:{gid}"),
            limits: req.limits,
            restart,
            runtime: self.runtime.name.clone(),
            created_at: store::now_secs(),
            phase: Phase::Creating,
            stop_requested: false,
            network,
        })
    }

    /// Mode, published ports (parsed, checked against berth's mappings and the host's bound
    /// sockets), backend and address. Changes nothing.
    fn prepare_network(&self, req: &RunRequest) -> Result<NetworkSpec, RuntimeError> {
        let bad = |m: String| RuntimeError::BadInput(m);
        let mode: NetworkMode = req
            .network
            .as_deref()
            .unwrap_or("bridge")
            .parse()
            .map_err(bad)?;
        let publish = req
            .publish
            .iter()
            .map(|p| portmap::parse_publish(p))
            .collect::<Result<Vec<Publish>, _>>()
            .map_err(NetError::from)?;
        if mode != NetworkMode::Bridge && !publish.is_empty() {
            return Err(bad(format!(
                "-p needs --network bridge: a {} container has no ports to publish",
                match mode {
                    NetworkMode::Host => "host-network container uses the host's ports directly;",
                    _ => "--network none",
                }
            )));
        }
        let port_backend = match req.port_backend.as_deref() {
            None => self.net.config.port_backend,
            Some("nft-map") => BackendKind::NftMap,
            Some("iptables") => BackendKind::Iptables,
            Some(other) => {
                return Err(bad(format!(
                    "--port-backend {other}: expected nft-map or iptables"
                )));
            }
        };
        let records: Vec<ContainerRecord> = self
            .containers
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        let existing: Vec<Publish> = records
            .iter()
            .flat_map(|r| r.network.publish.iter().cloned())
            .collect();
        portmap::check_conflicts(&publish, &existing).map_err(NetError::from)?;
        if !publish.is_empty() {
            let in_use = crate::net::ports_in_use();
            for p in &publish {
                if let Some(port) =
                    (p.host.start..=p.host.end).find(|port| in_use.contains(&(p.proto, *port)))
                {
                    return Err(bad(format!(
                        "host port {port}/{} is already in use by a process on this host",
                        match p.proto {
                            portmap::Proto::Tcp => "tcp",
                            portmap::Proto::Udp => "udp",
                        }
                    )));
                }
            }
        }
        let ip = match mode {
            NetworkMode::Bridge => {
                let used = records.iter().filter_map(|r| r.network.ip).collect();
                Some(self.net.allocate(&used)?)
            }
            _ => None,
        };
        Ok(NetworkSpec {
            mode,
            ip,
            port_backend: (!publish.is_empty()).then_some(port_backend),
            publish,
        })
    }

    /// Removes the bridge and port-mapping tables when no container is left (agent shutdown).
    pub fn teardown_network_if_unused(&self) -> bool {
        if !self.containers.read().expect("lock").is_empty() {
            return false;
        }
        self.net.teardown();
        true
    }

    /// Overlay, bundle, runtime.json, then the shim; waits for its `ok`/`err` report.
    fn start_shim(&self, record: &ContainerRecord, d: &ContainerDir) -> Result<(), RuntimeError> {
        let t0 = Instant::now();
        mount_overlay(&record.lower, d)?;
        let t_overlay = t0.elapsed();
        self.net.attach(&record.id, &record.network)?;
        let t_net = t0.elapsed();
        let netns =
            (record.network.mode != NetworkMode::Host).then(|| self.net.netns_path(&record.id));
        let (uid, gid) = record
            .user
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
            .unwrap_or((0, 0));
        let limits = record.limits.with_swap_default(&self.host);
        let spec = bundle::spec(record, &limits, uid, gid, netns.as_deref())?;
        bundle::write(&d.bundle(), &spec)?;
        store::write_json(&d.dir.join(shim::RUNTIME_FILE), &self.runtime)?;
        let t_bundle = t0.elapsed();
        let r = spawn_shim(&d.dir).map_err(|reason| RuntimeError::StartFailed {
            container: record.id.clone(),
            reason,
        });
        tracing::debug!(
            container = %record.id,
            overlay = ?t_overlay,
            network = ?(t_net - t_overlay),
            bundle = ?(t_bundle - t_net),
            shim = ?(t0.elapsed() - t_bundle),
            "start timings"
        );
        r
    }

    /// Removes everything a container has on the host: runtime state (kills it), overlay,
    /// cgroups in every hierarchy, its store directory. Idempotent; logs what it cannot undo.
    fn teardown(&self, record: &ContainerRecord) {
        let mut r = record.clone();
        r.stop_requested = true;
        let _ = self.store.save(&r);
        if let Err(e) = self.runtime.delete(&record.id) {
            warn!(container = %record.id, error = %e, "runtime delete failed");
        }
        let d = self.store.dir(&record.id);
        // Let the shim see the exit and leave before its directory goes.
        let state = self.state_of(&record.id);
        let deadline = Instant::now() + Duration::from_secs(5);
        while shim_alive(state.shim_pid, &d.dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        unmount(&d.rootfs());
        self.net.detach(&record.id);
        if let Err(e) = self.cgroup(record).remove() {
            warn!(container = %record.id, error = %e, "cgroup removal failed");
        }
        if let Err(e) = self.store.remove_dir(&record.id) {
            warn!(container = %record.id, error = %e, "store removal failed");
        }
    }

    fn wait_exit(&self, id: &str, timeout: Duration) -> bool {
        let d = self.store.dir(id);
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.state_of(id);
            if !s.running || !shim_alive(s.shim_pid, &d.dir) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn mark_stopping(&self, record: &ContainerRecord) -> Result<ContainerRecord, RuntimeError> {
        let mut r = record.clone();
        r.stop_requested = true;
        self.store.save(&r)?;
        self.containers
            .write()
            .expect("lock")
            .insert(r.id.clone(), r.clone());
        Ok(r)
    }

    /// SIGTERM, then SIGKILL after `timeout`, as `docker stop -t`.
    pub fn stop(&self, reference: &str, timeout: Duration) -> Result<ContainerView, RuntimeError> {
        let _ops = self.ops.lock().expect("lock");
        let r = self.resolve(reference)?;
        let r = self.mark_stopping(&r)?;
        if self.view(&r).status == "running" {
            let _ = self.runtime.kill(&r.id, "TERM");
            if !self.wait_exit(&r.id, timeout) {
                let _ = self.runtime.kill(&r.id, "KILL");
                self.wait_exit(&r.id, Duration::from_secs(10));
            }
        }
        info!(container = %r.id, "stopped");
        Ok(self.view(&r))
    }

    /// Sends `signal` (name like `KILL`, `TERM`, `SIGHUP`, or a number).
    pub fn kill(&self, reference: &str, signal: &str) -> Result<ContainerView, RuntimeError> {
        let _ops = self.ops.lock().expect("lock");
        let r = self.resolve(reference)?;
        let sig = signal.trim_start_matches("SIG").to_ascii_uppercase();
        let known = [
            "HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "STOP", "CONT", "WINCH",
        ];
        if !known.contains(&sig.as_str()) && sig.parse::<u8>().map_or(true, |n| n == 0 || n > 64) {
            return Err(RuntimeError::BadInput(format!("unknown signal {signal}")));
        }
        if self.view(&r).status != "running" {
            return Err(RuntimeError::BadInput(format!(
                "container {} is not running",
                r.name
            )));
        }
        let r = if sig == "KILL" || sig == "TERM" || sig == "INT" || sig == "QUIT" {
            self.mark_stopping(&r)?
        } else {
            r
        };
        self.runtime.kill(&r.id, &sig)?;
        if sig == "KILL" {
            self.wait_exit(&r.id, Duration::from_secs(10));
        }
        Ok(self.view(&r))
    }

    pub fn remove(&self, reference: &str, force: bool) -> Result<ContainerView, RuntimeError> {
        let _ops = self.ops.lock().expect("lock");
        let r = self.resolve(reference)?;
        let view = self.view(&r);
        if matches!(view.status, "running" | "restarting") && !force {
            return Err(RuntimeError::Running {
                container: r.name.clone(),
            });
        }
        let mut r = r;
        r.phase = Phase::Removing;
        r.stop_requested = true;
        self.store.save(&r)?;
        if view.status == "running" {
            let _ = self.runtime.kill(&r.id, "KILL");
            self.wait_exit(&r.id, Duration::from_secs(10));
        }
        self.teardown(&r);
        self.containers.write().expect("lock").remove(&r.id);
        info!(container = %r.id, "removed");
        Ok(view)
    }

    /// Changes limits; applied at once to a running container's cgroups.
    pub fn update(&self, reference: &str, update: &Limits) -> Result<ContainerView, RuntimeError> {
        let _ops = self.ops.lock().expect("lock");
        let mut r = self.resolve(reference)?;
        let merged = r.limits.merged(update);
        merged.validate(&self.host)?;
        if self.view(&r).status == "running" {
            self.cgroup(&r)
                .apply(&merged.with_swap_default(&self.host))
                .map_err(|e| {
                    RuntimeError::BadInput(format!("applying limits to {}: {e}", r.name))
                })?;
        }
        r.limits = merged;
        self.store.save(&r)?;
        self.containers
            .write()
            .expect("lock")
            .insert(r.id.clone(), r.clone());
        Ok(self.view(&r))
    }

    /// Completes or undoes what a crash interrupted, re-adopts running containers and
    /// restarts those whose policy asks for it.
    fn recover(&self) -> Result<(), RuntimeError> {
        let (records, orphans) = self.store.load_all()?;
        for id in orphans {
            warn!(container = %id, "removing a container directory without a record");
            unmount(&self.store.dir(&id).rootfs());
            let _ = self.runtime.delete(&id);
            self.store.remove_dir(&id)?;
        }
        for r in records {
            match r.phase {
                Phase::Creating | Phase::Removing => {
                    info!(container = %r.id, phase = ?r.phase, "finishing an interrupted change: removing");
                    self.teardown(&r);
                }
                Phase::Created => {
                    let d = self.store.dir(&r.id);
                    let mut state = self.state_of(&r.id);
                    let alive = shim_alive(state.shim_pid, &d.dir);
                    if !alive && state.running {
                        // The shim died with the container running (or the host rebooted).
                        warn!(container = %r.id, "shim lost; the container is stopped");
                        let _ = self.runtime.delete(&r.id);
                        state.running = false;
                        state.pid = None;
                        state.finished_at = Some(store::now_secs());
                        state.error =
                            Some("the shim exited without recording the container's exit".into());
                        store::write_json(&d.state(), &state)?;
                    }
                    self.containers
                        .write()
                        .expect("lock")
                        .insert(r.id.clone(), r.clone());
                    let code = state.exit_code.unwrap_or(255);
                    if !alive
                        && !r.stop_requested
                        && r.restart.should_restart(code, state.restart_count)
                    {
                        info!(container = %r.id, policy = %r.restart, "restarting per policy");
                        state.restart_count += 1;
                        store::write_json(&d.state(), &state)?;
                        if let Err(e) = self.start_shim(&r, &d) {
                            warn!(container = %r.id, error = %e, "restart failed");
                        }
                    } else if alive {
                        info!(container = %r.id, name = %r.name, "re-adopted");
                    }
                }
            }
        }
        let known: std::collections::HashSet<String> = self
            .containers
            .read()
            .expect("lock")
            .keys()
            .cloned()
            .collect();
        self.net.reconcile(&known);
        Ok(())
    }

    /// Removes an image from the store, refusing one a container uses.
    pub fn remove_image(&self, reference: &str) -> Result<crate::image::Image, RuntimeError> {
        let _ops = self.ops.lock().expect("lock");
        let image = self.images.get(reference)?;
        if let Some(user) = self.image_in_use(&image.id) {
            return Err(RuntimeError::BadInput(format!(
                "image {reference} is used by container {user}: remove the container first"
            )));
        }
        Ok(self.images.remove(&image.id)?)
    }

    /// Images in use by containers (`image rm` refuses those).
    pub fn image_in_use(&self, image_id: &str) -> Option<String> {
        self.containers
            .read()
            .expect("lock")
            .values()
            .find(|r| r.image_id.as_deref() == Some(image_id))
            .map(|r| r.name.clone())
    }
}

/// Starts `berth shim DIR` in a new session and reads its one-line report.
fn spawn_shim(dir: &Path) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding berth's own binary: {e}"))?;
    let shim_log = fs::File::create(dir.join("shim.log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    // No pre_exec: std can then use posix_spawn (vfork), much cheaper than fork for an agent
    // with a large address space; the shim calls setsid itself after its own fork.
    cmd.arg("shim")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(shim_log);
    let mut child = cmd.spawn().map_err(|e| format!("starting the shim: {e}"))?;
    let mut out = String::new();
    let mut pipe = child.stdout.take().expect("piped");
    // The shim's first process exits at once; its fork writes the report and closes the pipe.
    let _ = child.wait();
    let _ = pipe.read_to_string(&mut out);
    let line = out.lines().next().unwrap_or("");
    if line.starts_with("ok ") {
        Ok(())
    } else if let Some(e) = line.strip_prefix("err ") {
        Err(e.to_owned())
    } else {
        let log = fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
        Err(format!("the shim exited without a report: {}", log.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_follow_dockers_rule() {
        for ok in ["web", "a", "media-1", "x_y.z", "A9"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "é", &"x".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn ids_are_64_hex_characters_and_differ() {
        let a = new_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
    }
}
