//! `berth agent`: start-up order, the collector loop, signal handling and shutdown.
//!
//! Order: cgroup layout -> tracked root -> probes (a probe that cannot attach is reported down
//! and the agent runs on) -> first snapshot -> HTTP. On SIGINT/SIGTERM the HTTP server drains,
//! the collector loop stops and every BPF program is detached before the process exits.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::{net::TcpListener, signal::unix::SignalKind, sync::watch};
use tracing::{debug, info, warn};

use crate::{
    api::{self, Access, AppState, SystemInfo},
    cgroup::{CgroupError, Hierarchy, TrackedRoot},
    config::Config,
    metrics,
    model::{CgroupSample, CollectorRun, Snapshot},
    probes::Probes,
    runtime::Manager,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot listen on {addr} (http.listen): {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("cannot listen on the API socket {path} (http.socket): {source}")]
    Socket {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

pub async fn run(config: Config) -> Result<(), DaemonError> {
    let hierarchy = Hierarchy::detect()?;
    let root = TrackedRoot::open(&hierarchy.unified_mount, &config.cgroup.root)?;
    info!(
        mode = ?hierarchy.mode,
        mount = %hierarchy.unified_mount.display(),
        root = %root.path,
        root_id = root.id,
        "cgroup layout"
    );

    // Signals first, so a SIGTERM during start-up still shuts down cleanly.
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate()).map_err(|source| {
        DaemonError::Signal {
            signal: "SIGTERM",
            source,
        }
    })?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt()).map_err(|source| {
        DaemonError::Signal {
            signal: "SIGINT",
            source,
        }
    })?;

    let probes = Probes::start(&config.probes, &root);

    // Containers: store recovery re-adopts what the shims kept running.
    let (manager, manager_error) = {
        let rc = config.runtime.clone();
        let h = hierarchy.clone();
        let croot = config.cgroup.root.clone();
        let netc = config.network.clone();
        match tokio::task::spawn_blocking(move || {
            Manager::open(&rc.state_dir, &rc.run_dir, &rc.oci, h, &croot, netc)
        })
        .await
        {
            Ok(Ok(m)) => {
                info!(runtime = %m.runtime.name, version = %m.runtime.version, reason = %m.runtime.reason, "OCI runtime");
                (Some(Arc::new(m)), None)
            }
            Ok(Err(e)) => {
                warn!(error = %e, "containers unavailable");
                (None, Some(e.to_string()))
            }
            Err(e) => (None, Some(e.to_string())),
        }
    };

    let (snap_tx, snap_rx) = watch::channel(None);
    let mut collector = Collector {
        probes,
        root,
        manager: manager.clone(),
    };
    let first = tokio::task::block_in_place(|| collector.collect());
    snap_tx.send_replace(Some(Arc::new(first)));

    let root = collector.root.clone();
    let system = SystemInfo {
        version: env!("CARGO_PKG_VERSION"),
        kernel: kernel_release(),
        cgroup: hierarchy.clone(),
        tracked_root: collector.root.clone(),
    };
    let manager_for_shutdown = manager.clone();
    // One snapshot every 5 s for 15 min: window queries up to 15 minutes.
    let history = Arc::new(crate::history::History::new(
        Duration::from_secs(5),
        Duration::from_secs(900),
    ));
    let history_writer = history.clone();
    let state = AppState {
        registry: Arc::new(metrics::registry(
            snap_rx.clone(),
            config.probes.syscalls.top,
        )),
        snapshots: snap_rx,
        system: Arc::new(system),
        manager,
        manager_error,
        history,
    };

    let addr = config.http.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    info!(%bound, "HTTP listening (read-only): /metrics /healthz /readyz /api/v1");
    let unix = bind_socket(&config.http.socket)?;
    info!(socket = %config.http.socket.display(), "API socket listening (read-write)");

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let interval = config.agent.interval.0;
    let collect_loop = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let snap = Arc::new(tokio::task::block_in_place(|| collector.collect()));
                    history_writer.push(snap.clone());
                    snap_tx.send_replace(Some(snap));
                }
                _ = stop_rx.changed() => break,
            }
        }
        // Dropping the collector detaches every program.
        drop(collector);
    });

    let (down_tx, down_rx) = watch::channel(false);
    let shutdown = async move {
        let signal = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!(signal, "shutting down");
        let _ = down_tx.send(true);
    };
    let mut down_unix = down_rx.clone();
    let unix_app = api::app(state.clone(), Access::ReadWrite);
    let unix_server = tokio::spawn(async move {
        axum::serve(unix, unix_app)
            .with_graceful_shutdown(async move {
                let _ = down_unix.wait_for(|d| *d).await;
            })
            .await
    });
    let served = axum::serve(listener, api::app(state, Access::ReadOnly))
        .with_graceful_shutdown(shutdown)
        .await;
    // Open `logs -f` streams would hold the socket server: give it a moment, then leave.
    let _ = tokio::time::timeout(Duration::from_secs(2), unix_server).await;
    let _ = std::fs::remove_file(&config.http.socket);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(5), collect_loop)
        .await
        .is_err()
    {
        warn!("collector loop did not stop within 5 s");
    }
    if let Some(m) = &manager_for_shutdown
        && m.teardown_network_if_unused()
    {
        info!("no container left: bridge and port-mapping rules removed");
    }
    let removed = root.remove_if_empty(&hierarchy);
    debug!(?removed, "empty cgroup roots removed");
    if removed.contains(&root.dir)
        && let Some(pins) = crate::probes::pin_dir(&root)
    {
        // The counters were keyed by cgroups below this root: with it gone they are moot.
        crate::probes::remove_pins(&pins);
    }
    served.map_err(DaemonError::Serve)?;
    info!("stopped");
    Ok(())
}

/// Creates the socket's directory, replaces a stale socket, binds, and sets mode 0660.
fn bind_socket(path: &std::path::Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |source| DaemonError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another agent is listening on it",
        )));
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// Owns the probes and builds one snapshot per tick.
struct Collector {
    probes: Probes,
    root: TrackedRoot,
    manager: Option<Arc<Manager>>,
}

impl Collector {
    fn collect(&mut self) -> Snapshot {
        let mut collectors = Vec::new();

        let started = Instant::now();
        let paths = self.root.walk();
        let alive = |id: u64| paths.contains_key(&id);
        let mut syscalls = HashMap::new();
        let mut net = HashMap::new();
        let mut error = None;
        if let Some(ebpf) = self.probes.ebpf.as_mut() {
            if self.probes.syscalls.status.attached {
                match self.probes.syscalls.collect(ebpf, &alive) {
                    Ok(v) => syscalls = v,
                    Err(e) => error = Some(e.to_string()),
                }
            }
            if self.probes.net.status.attached {
                match self.probes.net.collect(ebpf, &alive) {
                    Ok(v) => net = v,
                    Err(e) => {
                        error.get_or_insert(e.to_string());
                    }
                }
            }
        }
        let mut cgroups: Vec<CgroupSample> = paths
            .iter()
            .map(|(&id, path)| CgroupSample {
                id,
                path: path.clone(),
                syscalls: syscalls.remove(&id).unwrap_or_default(),
                net: net.remove(&id).unwrap_or_default(),
            })
            .collect();
        cgroups.sort_by(|a, b| a.path.cmp(&b.path));
        let mut netfilter = None;
        if self.probes.netfilter.status.attached
            && let Some(ebpf) = self.probes.ebpf.as_ref()
        {
            match self.probes.netfilter.collect(ebpf) {
                Ok(n) => netfilter = Some(n),
                Err(e) => {
                    error.get_or_insert(e.to_string());
                }
            }
        }
        let lost_events = match self.probes.lost_events() {
            Ok(l) => l,
            Err(e) => {
                error.get_or_insert(e.to_string());
                Vec::new()
            }
        };
        if let Some(e) = &error {
            warn!(collector = "probes", error = %e, "collection failed");
        }
        collectors.push(CollectorRun {
            name: "probes",
            duration_seconds: started.elapsed().as_secs_f64(),
            success: error.is_none(),
            error,
        });
        let started = Instant::now();
        let containers = self
            .manager
            .as_ref()
            .map(|m| m.samples())
            .unwrap_or_default();
        collectors.push(CollectorRun {
            name: "containers",
            duration_seconds: started.elapsed().as_secs_f64(),
            success: true,
            error: None,
        });
        debug!(
            cgroups = cgroups.len(),
            containers = containers.len(),
            "snapshot"
        );
        Snapshot {
            proxies: crate::discover::proxies::scan(std::path::Path::new("/proc")),
            probe_runs: self.probes.runs(),
            netfilter,
            conntrack: crate::net::conntrack::host_stats(std::path::Path::new("/proc")),
            containers,
            taken_at: SystemTime::now(),
            cgroups,
            probes: self.probes.status(),
            lost_events,
            collectors,
        }
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
