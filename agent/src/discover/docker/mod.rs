//! `docker`: metadata of Docker's containers for the `foreign` collector: name, image, labels,
//! network mode, address, published ports, creation time and log file ([`fields`]).
//!
//! Two ways to know them, the first that answers wins:
//! - **The Engine API** over dockerd's Unix socket (`discovery.docker_socket`), through bollard,
//!   the API version negotiated (Docker 20.10 speaks 1.41). A task on the agent's tokio runtime
//!   owns the client: it lists every container (`all=true`) and inspects each, then follows
//!   `/events` (a container's create, start, die, rename, update, destroy; a network's connect
//!   and disconnect) and inspects the container each names, and re-lists every [`RESYNC`]. An
//!   inspect that times out (dockerd holds a container's lock while starting it, seconds with
//!   hundreds of published ports) is retried every [`RETRY_PENDING`] until it answers. Every
//!   request is bounded by `discovery.metadata_timeout`; the event stream is opened from before
//!   the listing, so no event falls between the two.
//! - **dockerd's files** when the socket is absent or does not answer:
//!   `<docker_data_root>/containers/<id>/config.v2.json` and `hostconfig.json`, read when an id is
//!   first asked about and read again at the first lookup after an inotify event named them
//!   ([`disk`]; where a directory cannot be watched, the task compares the files' mtimes every
//!   [`DISK_RECHECK`] instead). While the API answers they are not read: dockerd rewrites them
//!   while it starts a container, and a read then gives half of it (a name without its log
//!   file); a container the API has not described yet is shown by its short id for the tick or
//!   two until the start event lands.
//!
//! The collector's tick calls [`MetaSource::refresh`] (one `read` of the inotify fd while files
//! are followed) and then asks [`MetaSource::lookup`] about each container, which takes a mutex
//! only the task also takes (briefly, never across an await) and clones a cached [`Meta`]: in
//! the steady state it makes no syscall. Only an id seen for the first time while the API does
//! not answer, or whose files changed, costs a read of its two files.

mod disk;
mod fields;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use bollard::{
    API_DEFAULT_VERSION, Docker,
    errors::Error as ApiError,
    models::{EventMessage, EventMessageTypeEnum},
    query_parameters::{EventsOptions, ListContainersOptions},
};
use futures_util::StreamExt as _;
use tokio::{
    runtime::Handle,
    task::AbortHandle,
    time::{Instant, MissedTickBehavior},
};
use tracing::{debug, info, warn};

pub use fields::{DiskError, read_disk};

use self::disk::Disk;

use super::{
    cgroups::is_id,
    meta::{Meta, MetaSource},
};
use crate::{config::DiscoveryConfig, model::Engine};

/// The API is listed again this often (events keep the cache current in between).
pub const RESYNC: Duration = Duration::from_secs(60);
/// A container whose inspect failed is asked again this often.
pub const RETRY_PENDING: Duration = Duration::from_secs(1);
/// While the API does not answer: how often to try it again, and how often entries no lookup
/// asks about are forgotten and the files inotify cannot watch are checked for changes (their
/// mtimes; tests/docker.rs wants a rename seen within 5 s).
const RECONNECT: Duration = Duration::from_secs(5);
const DISK_RECHECK: Duration = Duration::from_secs(3);
/// A container no lookup asked about for this long is forgotten (its cgroup is gone).
const FORGET: Duration = Duration::from_secs(30);
/// The events that change what berth shows of a container.
const EVENTS: [&str; 8] = [
    "create",
    "start",
    "die",
    "rename",
    "update",
    "destroy",
    "connect",
    "disconnect",
];

/// Why the API could not be used; the task then reads the files until it answers again.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("discovery.docker_socket {path} is not valid UTF-8")]
    SocketPath { path: PathBuf },
    #[error("docker API at {socket}: {source}")]
    Api { socket: PathBuf, source: ApiError },
    #[error("docker API at {socket} did not answer within {timeout:?}")]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("docker API at {socket}: the event stream ended")]
    EventsEnded { socket: PathBuf },
}

/// What the task and the lookups share.
#[derive(Default)]
struct Cache {
    /// Whether the API answers: its map is then current.
    api_up: bool,
    /// id -> metadata, from the API.
    api: HashMap<String, Meta>,
    /// id -> what the files said, for every id asked about while the API did not answer.
    disk: Disk,
}

fn lock(cache: &Mutex<Cache>) -> MutexGuard<'_, Cache> {
    // A panic elsewhere while holding it leaves plain maps: still usable.
    cache.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Docker metadata source (see the module doc).
pub struct DockerSource {
    cache: Arc<Mutex<Cache>>,
    /// `<docker_data_root>/containers`.
    containers: PathBuf,
    /// The API task, stopped with the source.
    task: Option<AbortHandle>,
}

impl DockerSource {
    /// The source, with its API task spawned on `runtime`.
    pub fn start(config: &DiscoveryConfig, runtime: &Handle) -> Self {
        let mut source = Self::files_only(&config.docker_data_root);
        let task = Task {
            cache: source.cache.clone(),
            socket: config.docker_socket.clone(),
            containers: source.containers.clone(),
            timeout: config.metadata_timeout.0,
        };
        source.task = Some(runtime.spawn(task.run()).abort_handle());
        source
    }

    /// A source that reads only dockerd's files under `data_root`, follows them through inotify
    /// ([`MetaSource::refresh`]), and neither checks the unwatched ones nor forgets any (that
    /// is the task's; tests).
    pub fn files_only(data_root: &Path) -> Self {
        Self {
            cache: Arc::default(),
            containers: data_root.join("containers"),
            task: None,
        }
    }
}

impl Drop for DockerSource {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl MetaSource for DockerSource {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn refresh(&mut self) {
        lock(&self.cache).disk.take_events();
    }

    fn lookup(
        &mut self,
        engine: Engine,
        id: &str,
        _labels: &std::collections::BTreeMap<String, String>,
    ) -> Option<Meta> {
        if engine != Engine::Docker {
            return None;
        }
        let watch = {
            let mut cache = lock(&self.cache);
            if cache.api_up {
                return cache.api.get(id).cloned();
            }
            if let Some(meta) = cache.disk.fresh(id) {
                return meta;
            }
            // First sight of this id while the API does not answer, or its files changed.
            if !is_id(id) {
                return None;
            }
            // Watched before read: a write after the read is an event for the next refresh.
            cache.disk.watch(&self.containers, id)
        };
        // Its files, outside the lock.
        let read = disk::read(&self.containers.join(id), watch);
        lock(&self.cache).disk.store(id, read, watch)
    }
}

/// The fallback: a `statx` of both files of each entry inotify does not watch; the next
/// lookup reads those whose mtimes changed.
fn recheck_stamps(cache: &Mutex<Cache>, containers: &Path, unwatched: &[(String, disk::Stamp)]) {
    let changed: Vec<String> = unwatched
        .iter()
        .filter(|(id, old)| disk::stamp(&containers.join(id)) != *old)
        .map(|(id, _)| id.clone())
        .collect();
    lock(cache).disk.checked(unwatched.len(), &changed);
}

/// The API task: connect, follow, fall back to the files while the API is away.
struct Task {
    cache: Arc<Mutex<Cache>>,
    socket: PathBuf,
    containers: PathBuf,
    timeout: Duration,
}

impl Task {
    async fn run(self) {
        let mut said_down = false;
        let mut rechecked: Option<Instant> = None;
        let (socket, data_root) = (self.socket.display(), self.containers.display());
        loop {
            match self.connect().await {
                Ok(docker) => {
                    said_down = false;
                    info!(socket = %socket, "docker API answers; following its events");
                    let e = self.follow(&docker).await;
                    lock(&self.cache).api_up = false;
                    warn!(error = %e, data_root = %data_root, "docker API lost; reading files");
                }
                Err(e) if !said_down => {
                    said_down = true;
                    if self.socket.exists() || self.containers.exists() {
                        let msg = "docker API not answering; reading dockerd's files";
                        info!(error = %e, data_root = %data_root, "{msg}");
                    } else {
                        let msg = "no Docker here (no socket, no data root)";
                        info!(socket = %socket, data_root = %data_root, "{msg}");
                    }
                }
                Err(e) => debug!(error = %e, "docker API still not answering"),
            }
            // Files every DISK_RECHECK, the API every RECONNECT: a reconnect attempt does not
            // bring the files' check forward.
            let retry = Instant::now() + RECONNECT;
            loop {
                if rechecked.is_none_or(|t: Instant| t.elapsed() >= DISK_RECHECK) {
                    self.recheck_disk().await;
                    rechecked = Some(Instant::now());
                }
                if Instant::now() >= retry {
                    break;
                }
                let next = rechecked.map_or(retry, |t| t + DISK_RECHECK).min(retry);
                tokio::time::sleep_until(next).await;
            }
        }
    }

    /// Forgets what no lookup asks about; checks the unwatched files off the runtime's threads
    /// (nothing to check while inotify watches them all).
    async fn recheck_disk(&self) {
        let unwatched = lock(&self.cache).disk.prune(FORGET);
        if unwatched.is_empty() {
            return;
        }
        let (cache, containers) = (self.cache.clone(), self.containers.clone());
        let _ = tokio::task::spawn_blocking(move || {
            recheck_stamps(&cache, &containers, &unwatched);
        })
        .await;
    }

    fn api_error(&self, source: ApiError) -> DockerError {
        DockerError::Api {
            socket: self.socket.clone(),
            source,
        }
    }

    /// `fut` within the metadata timeout.
    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, DockerError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|source| self.api_error(source)),
            Err(_) => Err(DockerError::Timeout {
                socket: self.socket.clone(),
                timeout: self.timeout,
            }),
        }
    }

    async fn connect(&self) -> Result<Docker, DockerError> {
        let path = self
            .socket
            .to_str()
            .ok_or_else(|| DockerError::SocketPath {
                path: self.socket.clone(),
            })?;
        // bollard's own bound is whole seconds and covers only the response head; `call`
        // bounds every request by the configured timeout.
        let secs = self.timeout.as_secs().max(1) + 1;
        let docker =
            Docker::connect_with_unix(path, secs, API_DEFAULT_VERSION).map_err(|source| {
                DockerError::Api {
                    socket: self.socket.clone(),
                    source,
                }
            })?;
        self.call(docker.negotiate_version()).await
    }

    /// Lists, then follows events until the API fails; returns why it stopped.
    async fn follow(&self, docker: &Docker) -> DockerError {
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let filters = HashMap::from([
            (
                "type".to_owned(),
                vec!["container".to_owned(), "network".to_owned()],
            ),
            (
                "event".to_owned(),
                EVENTS.iter().map(|e| (*e).to_owned()).collect(),
            ),
        ]);
        // From a second before the listing: dockerd replays what happened since.
        let mut events = docker.events(Some(EventsOptions {
            since: Some(since.saturating_sub(1).to_string()),
            until: None,
            filters: Some(filters),
        }));
        let mut pending = HashSet::new();
        if let Err(e) = self.resync(docker, &mut pending).await {
            return e;
        }
        lock(&self.cache).api_up = true;
        let mut resync = tokio::time::interval_at(Instant::now() + RESYNC, RESYNC);
        let mut retry = tokio::time::interval_at(Instant::now() + RETRY_PENDING, RETRY_PENDING);
        // `retry` is not polled while nothing is pending: no burst of missed ticks after.
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        retry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(ev)) => self.on_event(docker, &ev, &mut pending).await,
                    Some(Err(source)) => Err(self.api_error(source)),
                    None => Err(DockerError::EventsEnded { socket: self.socket.clone() }),
                },
                _ = resync.tick() => {
                    self.recheck_disk().await;
                    self.resync(docker, &mut pending).await
                }
                _ = retry.tick(), if !pending.is_empty() => {
                    for id in std::mem::take(&mut pending) {
                        self.inspect(docker, &id, &mut pending).await;
                    }
                    Ok(())
                }
            };
            if let Err(e) = step {
                return e;
            }
        }
    }

    async fn on_event(
        &self,
        docker: &Docker,
        ev: &EventMessage,
        pending: &mut HashSet<String>,
    ) -> Result<(), DockerError> {
        let actor = ev.actor.as_ref();
        let id = match ev.typ {
            Some(EventMessageTypeEnum::CONTAINER) => actor.and_then(|a| a.id.as_deref()),
            // A network event names the container in its attributes.
            Some(EventMessageTypeEnum::NETWORK) => actor
                .and_then(|a| a.attributes.as_ref())
                .and_then(|a| a.get("container"))
                .map(String::as_str),
            _ => None,
        };
        let Some(id) = id.filter(|id| is_id(id)) else {
            return Ok(());
        };
        debug!(
            id,
            action = ev.action.as_deref().unwrap_or(""),
            "docker event"
        );
        if ev.action.as_deref() == Some("destroy") {
            lock(&self.cache).api.remove(id);
            pending.remove(id);
        } else {
            self.inspect(docker, id, pending).await;
        }
        Ok(())
    }

    /// Inspects one container into the cache; a failure leaves it pending, a 404 removes it.
    async fn inspect(&self, docker: &Docker, id: &str, pending: &mut HashSet<String>) {
        match self.call(docker.inspect_container(id, None)).await {
            Ok(c) => {
                let meta = fields::Fields::from_api(&c).meta();
                lock(&self.cache).api.insert(id.to_owned(), meta);
                pending.remove(id);
            }
            Err(DockerError::Api {
                source:
                    ApiError::DockerResponseServerError {
                        status_code: 404, ..
                    },
                ..
            }) => {
                lock(&self.cache).api.remove(id);
                pending.remove(id);
            }
            Err(e) => {
                debug!(id, error = %e, "docker inspect failed; retrying");
                pending.insert(id.to_owned());
            }
        }
    }

    /// Lists every container: inspects those not cached, forgets those gone.
    async fn resync(
        &self,
        docker: &Docker,
        pending: &mut HashSet<String>,
    ) -> Result<(), DockerError> {
        let list = self
            .call(docker.list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            })))
            .await?;
        let ids: HashSet<String> = list.into_iter().filter_map(|c| c.id).collect();
        let new: Vec<String> = {
            let mut c = lock(&self.cache);
            c.api.retain(|id, _| ids.contains(id));
            ids.iter()
                .filter(|id| !c.api.contains_key(*id))
                .cloned()
                .collect()
        };
        pending.retain(|id| ids.contains(id));
        for id in new {
            self.inspect(docker, &id, pending).await;
        }
        debug!(
            containers = ids.len(),
            pending = pending.len(),
            "docker resync"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests;
