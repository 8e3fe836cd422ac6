//! HTTP: `/metrics` (OpenMetrics), `/healthz` (the process answers), `/readyz` (the first
//! snapshot is published), the JSON API under `/api/v1` and the UI.
//!
//! Two routers with two states. The read router ([`read_router`], state [`ReadState`]) answers
//! from the latest [`Snapshot`] and the [`History`] only: it holds no container manager and
//! never touches the host (a container's log excepted, which it streams from the file the
//! snapshot names). The write router ([`write_router`], state [`WriteState`]) changes the host
//! through the container manager, then has the collectors publish a fresh snapshot before it
//! answers, so a client's next read sees its change. The TCP listener serves only the read
//! router; the Unix socket (0660) serves both ([`app`]).
//!
//! Each listener is served by its own accept loop with its own limits ([`listen`]); the TCP
//! side checks the Host header and the bearer token ([`access`]) and, without the token,
//! shows no env value and no log. Every request body and query rejects unknown fields, named
//! in a 400.

pub mod access;
pub mod listen;
pub mod openapi;
mod pull;
mod read;
mod series;
pub mod views;
mod write;

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::{
    cgroup::{Hierarchy, TrackedRoot},
    config::DiscoveryConfig,
    history::History,
    metrics::SnapshotRx,
    model::Snapshot,
    runtime::{Manager, oci::OciRuntime, seccomp::SeccompInfo},
};

/// Whether this agent launches containers: fixed at start-up, shown by /api/v1/system, and
/// what every mutating route checks first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Runs containers through an OCI runtime, and observes the host's other containers.
    Manage,
    /// Runs, changes and removes nothing (`runtime.launch = false`, or no OCI runtime is
    /// usable); every container on the host is still listed and measured.
    Observe,
}

/// Facts fixed at start-up, shown by /api/v1/system.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SystemInfo {
    pub version: &'static str,
    pub kernel: String,
    /// `manage` or `observe`, and why.
    pub mode: Mode,
    pub mode_reason: String,
    /// The cgroup layout in use; `unified_mount` is `discovery.cgroup_mount` when configured.
    pub cgroup: Hierarchy,
    pub tracked_root: TrackedRoot,
    /// The host paths the collectors read (procfs, the engines' sockets and state).
    pub discovery: DiscoveryConfig,
    /// The OCI runtime containers use; `None` when none could be used.
    pub runtime: Option<OciRuntime>,
    /// Why containers are unavailable, when they are.
    pub runtime_error: Option<String>,
    /// The seccomp profile containers get by default (moby's), as resolved on this host.
    pub seccomp: SeccompInfo,
    /// Which port-mapping backends work here, found at start-up.
    pub port_backends: Vec<crate::net::portmap::BackendSupport>,
}

/// What the read routes see: snapshots, history and start-up facts. No manager.
#[derive(Clone)]
pub struct ReadState {
    pub snapshots: SnapshotRx,
    /// `/metrics`, encoded once per snapshot.
    pub metrics: Arc<crate::metrics::Exposition>,
    pub system: Arc<SystemInfo>,
    /// Past snapshots for window queries.
    pub history: Arc<History>,
}

impl ReadState {
    fn latest(&self) -> Result<Arc<Snapshot>, ApiError> {
        self.snapshots.borrow().clone().ok_or(ApiError::NotReady)
    }
}

/// Asks the collector loop for a fresh snapshot and waits until it is published.
#[derive(Clone)]
pub struct Refresh(mpsc::Sender<oneshot::Sender<()>>);

impl Refresh {
    /// The handle and the receiver the collector loop serves.
    pub fn channel() -> (Self, mpsc::Receiver<oneshot::Sender<()>>) {
        let (tx, rx) = mpsc::channel(64);
        (Self(tx), rx)
    }

    /// Returns once a snapshot collected after this call is published (at most 10 s; a slow
    /// collection only delays what the client reads next, so it is logged, not failed).
    pub async fn now(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(tx).await.is_err() {
            return;
        }
        if tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .is_err()
        {
            warn!("no fresh snapshot within 10 s after a change");
        }
    }
}

/// What the write routes use: the manager (`None` in observe mode) and the refresh handle.
#[derive(Clone)]
pub struct WriteState {
    /// The published snapshots, to answer a change with the container as it is now.
    pub snapshots: SnapshotRx,
    pub manager: Option<Arc<Manager>>,
    /// Why this agent runs in observe mode, when it does (`manager` is then `None`): every
    /// mutating route is refused with it.
    pub observe_reason: Option<String>,
    pub refresh: Refresh,
    /// Which registries `POST /api/v1/images/pull` may reach over plain HTTP, and credentials.
    pub pull: crate::image::registry::PullOptions,
}

/// The router of a listener: reads always, writes when `write` is given (the Unix socket).
pub fn app(read: ReadState, write: Option<WriteState>) -> Router {
    let router = read_router(read);
    match write {
        Some(w) => router.merge(write_router(w)),
        None => router,
    }
}

/// The TCP listener's router: reads only, behind the Host and token checks.
pub fn tcp_app(read: ReadState, access: Arc<access::TcpAccess>, body_limit: usize) -> Router {
    read_router(read)
        .layer(axum::middleware::from_fn_with_state(
            access,
            access::tcp_guard,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(access::security_headers))
}

/// The Unix socket's router: reads and writes; its clients see everything.
pub fn socket_app(read: ReadState, write: WriteState, body_limit: usize) -> Router {
    app(read, Some(write))
        .layer(axum::middleware::from_fn(access::socket_trusted))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(access::security_headers))
}

pub fn read_router(state: ReadState) -> Router {
    let (routes, _) = read::routes().split_for_parts();
    routes.merge(crate::ui::routes()).with_state(state)
}

pub fn write_router(state: WriteState) -> Router {
    write::router(state)
}

/// A query string the route does not accept is the client's mistake: a 400 with the reason.
fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|axum::extract::Query(v)| v)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// Most rows a `top=` may ask for (the document's maximum).
const TOP_MAX: usize = 100_000;

/// A `top=N` parameter: 1 to [`TOP_MAX`], or a 400 naming it.
fn top_param(t: &str) -> Result<usize, ApiError> {
    match t.parse::<usize>() {
        Ok(n) if (1..=TOP_MAX).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "top={t}: use a whole number from 1 to {TOP_MAX}"
        ))),
    }
}

/// A JSON body the route does not accept (unknown key, wrong type, not an object) is the
/// client's mistake: a 400 naming the field.
fn body<T>(b: Result<Object<T>, ApiError>) -> Result<T, ApiError> {
    b.map(|Object(v)| v)
}

/// A JSON object body: axum's [`Json`], with its content type check and messages, that also
/// refuses a body that is not an object: serde reads a struct from an array too (its fields in
/// order), so `[null, null]` would pass as an update that changes nothing.
struct Object<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Object<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let headers = req.headers().clone();
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let mut again = axum::extract::Request::new(axum::body::Body::from(bytes.clone()));
        *again.headers_mut() = headers;
        let Json(v) = Json::<T>::from_request(again, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Ok(Object(v)),
            _ => Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            )),
        }
    }
}

/// The body of every error response: what went wrong, for a person to read.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The reason (for a 500, only a pointer to the agent's log).
    pub error: String,
}

/// Errors shown to HTTP clients: a clear 4xx for their mistakes, a generic 5xx for ours (the
/// cause goes to the log).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no snapshot yet: the agent is starting")]
    NotReady,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    /// An upstream the agent needed (a registry) could not be reached: not the client's
    /// mistake, not the agent's failure.
    #[error("{0}")]
    BadGateway(String),
    #[error("internal error: see the agent's log")]
    Internal(String),
}

impl From<crate::model::FindError> for ApiError {
    fn from(e: crate::model::FindError) -> Self {
        match e {
            crate::model::FindError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            crate::model::FindError::Ambiguous { .. } => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::NotReady | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(cause) => {
                error!(%cause, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests;
