//! `berth agent`: start-up order, the collector loop, signal handling and shutdown.
//!
//! Order: cgroup layout -> tracked root -> probes (a probe that cannot attach is reported down
//! and the agent runs on) -> container store recovery -> collectors and the first snapshot ->
//! HTTP.
//!
//! Observe mode: with `runtime.launch = false` no OCI runtime is looked for and no container
//! manager (store, reaper, network) starts; when the manager cannot start (no usable runtime)
//! the agent degrades to the same mode. Either way every mutating route is refused with the
//! reason, which `/api/v1/system` shows too. The host paths the collectors read (`[discovery]`:
//! procfs, the cgroup mount) come from the config, so the agent can run in a container with
//! the host's directories mounted elsewhere (deploy/kubernetes/). The collector loop publishes a snapshot every `agent.interval`, and at once when a
//! change through the API asks for one ([`Refresh`]). On SIGINT/SIGTERM the HTTP server drains,
//! the collector loop stops and every BPF program is detached before the process exits.
//! Under systemd (`Type=notify`, see [`crate::notify`]): `READY=1` once the first snapshot is
//! published and both listeners are bound, `WATCHDOG=1` while the collector loop ticks,
//! `STOPPING=1` on the signal.

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, signal::unix::SignalKind, sync::watch};
use tracing::{debug, info, warn};

use crate::{
    api::{self, Mode, ReadState, Refresh, SystemInfo, WriteState},
    cgroup::{CgroupError, Hierarchy, TrackedRoot},
    collect::Registry,
    config::Config,
    metrics,
    notify::{self, Heartbeat, Notifier},
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
    #[error(transparent)]
    Token(#[from] api::access::TokenError),
}

/// Runs the agent until SIGINT/SIGTERM; `notifier` is systemd's `NOTIFY_SOCKET`, if any.
pub async fn run(config: Config, notifier: Option<Notifier>) -> Result<(), DaemonError> {
    // The token first: a token file others can read stops the agent before it changes
    // anything on the host.
    let token = config
        .http
        .token_file
        .as_deref()
        .map(api::access::Token::load)
        .transpose()?;
    info!(
        token = token.is_some(),
        "TCP listener: env values and logs {}",
        if token.is_some() {
            "only with the bearer token"
        } else {
            "never shown (no http.token_file)"
        }
    );

    // The host's cgroup mount: configured (the agent in a container, the host's tree mounted
    // elsewhere), else this mount namespace's own.
    let cgroup_mount = &config.discovery.cgroup_mount;
    let hierarchy =
        Hierarchy::detect_at((!cgroup_mount.as_os_str().is_empty()).then_some(cgroup_mount))?;
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

    // Containers: store recovery re-adopts what the shims kept running. Not in observe mode.
    let (manager, manager_error) = if config.runtime.launch {
        start_manager(&config, &hierarchy).await
    } else {
        (None, None)
    };
    let (mode, mode_reason) = match (&manager, &manager_error) {
        (Some(m), _) => (
            Mode::Manage,
            format!(
                "runtime.launch = true and the OCI runtime {} {} is usable",
                m.runtime.name, m.runtime.version
            ),
        ),
        (None, Some(e)) => (Mode::Observe, format!("containers are unavailable: {e}")),
        (None, None) => (Mode::Observe, "runtime.launch = false".to_owned()),
    };
    info!(?mode, reason = %mode_reason, "agent mode");

    let (snap_tx, snap_rx) = watch::channel(None);
    let tracked = root.clone();
    let sources = if config.discovery.enabled {
        crate::discover::meta::sources(&config.discovery, &tokio::runtime::Handle::current())
    } else {
        Vec::new()
    };
    // Every connection holds an fd: take what the hard limit allows (before the collectors,
    // which size their kept cgroup files by it), and keep the TCP cap at half of it below so
    // a flood never takes the fds the rest of the agent needs.
    let nofile = api::listen::raise_fd_limit();
    let mut registry = Registry::new(
        probes,
        root,
        &hierarchy,
        manager.clone(),
        sources,
        &config.discovery,
        nofile,
    );
    info!(collectors = ?registry.names(), "collectors");
    let first = Arc::new(tokio::task::block_in_place(|| registry.collect()));
    snap_tx.send_replace(Some(first.clone()));
    let heartbeat = Heartbeat::default();

    let root = tracked.clone();
    let runtime = manager.as_ref().map(|m| m.runtime.clone());
    let system = SystemInfo {
        version: env!("CARGO_PKG_VERSION"),
        kernel: kernel_release(),
        mode,
        mode_reason: mode_reason.clone(),
        cgroup: hierarchy.clone(),
        tracked_root: tracked,
        discovery: config.discovery.clone(),
        runtime,
        runtime_error: manager_error.clone(),
        seccomp: crate::runtime::seccomp::default_info(&crate::runtime::bundle::docker_cap_names()),
        port_backends: crate::net::portmap::detect_support(),
    };
    let manager_for_shutdown = manager.clone();
    // One snapshot every 5 s for 15 min: window queries up to 15 minutes.
    let history = Arc::new(crate::history::History::new(
        Duration::from_secs(5),
        Duration::from_secs(900),
    ));
    // The history holds every published snapshot, the first one included: a window query
    // answers as soon as /readyz does.
    history.push(first);
    let history_writer = history.clone();
    let read = ReadState {
        metrics: Arc::new(metrics::Exposition::new(
            snap_rx.clone(),
            config.probes.syscalls.top,
        )),
        snapshots: snap_rx.clone(),
        system: Arc::new(system),
        history,
    };
    let (refresh, mut refresh_rx) = Refresh::channel();
    let write = WriteState {
        snapshots: snap_rx.clone(),
        manager,
        observe_reason: (mode == Mode::Observe).then_some(mode_reason),
        refresh,
        pull: crate::image::registry::PullOptions {
            insecure_registries: config.images.insecure_registries.clone(),
            docker_config: config.images.docker_config(),
            certs_dir: config.images.certs_dir.clone(),
        },
    };

    let mut max_tcp = config.http.max_connections;
    if max_tcp as u64 > nofile / 2 {
        max_tcp = (nofile / 2).max(1) as usize;
        warn!(
            configured = config.http.max_connections,
            nofile, max_tcp, "http.max_connections lowered to half the fd limit"
        );
    }
    let addr = config.http.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    info!(%bound, "HTTP listening (read-only): /metrics /healthz /readyz /api/v1");
    let unix = bind_socket(&config.http.socket)?;
    info!(socket = %config.http.socket.display(), "API socket listening (read-write)");

    let interval = config.agent.interval.0;
    let notifier = notifier.map(Arc::new);
    let watchdog = notifier.as_ref().and_then(|n| {
        let status = format!(
            "STATUS=serving on {bound} and {}",
            config.http.socket.display()
        );
        if let Err(e) = n.notify(&format!("READY=1\n{status}")) {
            warn!(error = %e, "cannot send READY=1 to NOTIFY_SOCKET");
        }
        notify::spawn_watchdog(n.clone(), heartbeat.clone(), interval)
    });
    let stall_after = notify::test_stall_after_ticks();

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let collect_loop = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut ticks = 0u64;
        loop {
            if stall_after.is_some_and(|n| ticks >= n) {
                // Test-only stall (see notify::test_stall_after_ticks): publish nothing more.
                let _ = stop_rx.changed().await;
                break;
            }
            // A change through the API asks for a snapshot now; every request waiting when
            // the collection starts is answered by it.
            let mut waiting = Vec::new();
            tokio::select! {
                _ = tick.tick() => {}
                Some(reply) = refresh_rx.recv() => {
                    waiting.push(reply);
                    while let Ok(more) = refresh_rx.try_recv() {
                        waiting.push(more);
                    }
                }
                _ = stop_rx.changed() => break,
            }
            let snap = Arc::new(tokio::task::block_in_place(|| registry.collect()));
            history_writer.push(snap.clone());
            snap_tx.send_replace(Some(snap));
            heartbeat.beat();
            ticks += 1;
            for reply in waiting {
                let _ = reply.send(());
            }
        }
        // Dropping the registry detaches every program.
        drop(registry);
    });

    let (down_tx, down_rx) = watch::channel(false);
    let shutdown = async move {
        let signal = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!(signal, "shutting down");
        if let Some(n) = &notifier {
            if let Some(w) = &watchdog {
                w.abort();
            }
            if let Err(e) = n.notify(&format!("STOPPING=1\nSTATUS=stopping on {signal}")) {
                warn!(error = %e, "cannot send STOPPING=1 to NOTIFY_SOCKET");
            }
        }
        let _ = down_tx.send(true);
    };
    tokio::spawn(shutdown);
    let body_limit = config.http.body_limit;
    let unix_app = api::socket_app(read.clone(), write, body_limit);
    let unix_limits = api::listen::ListenLimits {
        max_connections: config.http.max_socket_connections,
        max_per_ip: None,
        header_read_timeout: config.http.header_read_timeout.0,
        // The operator's own streams (`logs -f` of a quiet container) stay open.
        idle_timeout: None,
    };
    // Separate tasks, budgets and accept loops: a TCP flood never reaches the socket.
    let unix_server = tokio::spawn(api::listen::serve_unix(
        unix,
        unix_app,
        unix_limits,
        down_rx.clone(),
    ));
    let access = Arc::new(api::access::TcpAccess::new(
        token,
        bound,
        &config.http.allowed_hosts,
    ));
    let tcp_limits = api::listen::ListenLimits {
        max_connections: max_tcp,
        max_per_ip: Some(config.http.max_connections_per_ip),
        header_read_timeout: config.http.header_read_timeout.0,
        idle_timeout: Some(config.http.idle_timeout.0),
    };
    api::listen::serve_tcp(
        listener,
        api::tcp_app(read, access, body_limit),
        tcp_limits,
        down_rx,
    )
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
    info!("stopped");
    Ok(())
}

/// Opens the container store (re-adopting what the shims kept running) with the configured OCI
/// runtime, and starts the reaper. On failure: no manager and the reason; the agent then runs
/// in observe mode.
async fn start_manager(
    config: &Config,
    hierarchy: &Hierarchy,
) -> (Option<Arc<Manager>>, Option<String>) {
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
            let m = Arc::new(m);
            // Removes exited --rm containers, records exits of containers whose shim was lost.
            m.start_reaper();
            (Some(m), None)
        }
        Ok(Err(e)) => {
            warn!(error = %e, "containers unavailable: the agent runs in observe mode");
            (None, Some(e.to_string()))
        }
        Err(e) => (None, Some(e.to_string())),
    }
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

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
