//! HTTP: `/metrics` (OpenMetrics), `/healthz` (the process answers), `/readyz` (the first
//! snapshot is published), and the read-only JSON API under `/api/v1`.
//!
//! `app(state, access)` builds the router without binding a socket, so router tests use
//! `oneshot`. The TCP listener gets [`Access::ReadOnly`]; the Unix socket (0660) gets
//! [`Access::ReadWrite`] and with it every route that changes the host.

pub mod containers;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tracing::error;

use crate::{
    cgroup::{Hierarchy, TrackedRoot},
    metrics::{self, SnapshotRx},
    model::{ProbeStatus, Snapshot},
};

/// Facts fixed at start-up, shown by /api/v1/system.
#[derive(Debug, Clone, Serialize)]
pub struct SystemInfo {
    pub version: &'static str,
    pub kernel: String,
    pub cgroup: Hierarchy,
    pub tracked_root: TrackedRoot,
}

#[derive(Clone)]
pub struct AppState {
    pub snapshots: SnapshotRx,
    pub registry: Arc<Registry>,
    pub system: Arc<SystemInfo>,
    /// Containers; `None` when no OCI runtime could be used (`manager_error` says why).
    pub manager: Option<Arc<crate::runtime::Manager>>,
    pub manager_error: Option<String>,
    /// Past snapshots for window queries.
    pub history: Arc<crate::history::History>,
}

/// What a listener may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

pub fn app(state: AppState, access: Access) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(get_readyz))
        .route("/api/v1/system", get(get_system))
        .route("/api/v1/cgroups", get(get_cgroups))
        .route("/api/v1/diagnose", get(get_diagnose))
        .merge(containers::read_routes())
        .merge(crate::ui::routes());
    if access == Access::ReadWrite {
        router = router.merge(containers::write_routes());
    }
    router.with_state(state)
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
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: see the agent's log")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::NotReady | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(cause) => {
                error!(%cause, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

fn latest(state: &AppState) -> Result<Arc<Snapshot>, ApiError> {
    state.snapshots.borrow().clone().ok_or(ApiError::NotReady)
}

async fn get_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let body = metrics::render(&state.registry)
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response())
}

async fn get_readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    latest(&state).map(|_| "ready\n")
}

#[derive(Serialize)]
struct SystemView<'a> {
    #[serde(flatten)]
    info: &'a SystemInfo,
    probes: &'a [ProbeStatus],
    runtime: Option<&'a crate::runtime::oci::OciRuntime>,
    runtime_error: Option<&'a str>,
}

async fn get_system(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snap = latest(&state)?;
    Ok(Json(SystemView {
        info: &state.system,
        probes: &snap.probes,
        runtime: state.manager.as_ref().map(|m| &m.runtime),
        runtime_error: state.manager_error.as_deref(),
    })
    .into_response())
}

/// Findings: cause, evidence, fix; most severe first.
async fn get_diagnose(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snap = latest(&state)?;
    let findings = crate::diagnose::diagnose(&snap);
    Ok(Json(serde_json::json!({
        "checked_at": snap.taken_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        "findings": findings,
    }))
    .into_response())
}

async fn get_cgroups(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snap = latest(&state)?;
    Ok(Json(&snap.cgroups).into_response())
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::SystemTime};

    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tokio::sync::watch;
    use tower::ServiceExt as _;

    use super::*;
    use crate::cgroup::CgroupMode;

    fn state(snapshot: Option<Snapshot>) -> AppState {
        let (_tx, rx) = watch::channel(snapshot.map(Arc::new));
        AppState {
            registry: Arc::new(metrics::registry(rx.clone(), 20)),
            snapshots: rx,
            system: Arc::new(SystemInfo {
                version: "test",
                kernel: "6.18".into(),
                cgroup: Hierarchy {
                    mode: CgroupMode::Hybrid,
                    unified_mount: PathBuf::from("/sys/fs/cgroup/unified"),
                    v1: Vec::new(),
                },
                tracked_root: TrackedRoot {
                    dir: PathBuf::from("/sys/fs/cgroup/unified/berth"),
                    path: "/berth".into(),
                    id: 42,
                    level: 1,
                },
            }),
            manager: None,
            manager_error: Some("test".into()),
            history: Arc::new(crate::history::History::new(
                std::time::Duration::from_secs(5),
                std::time::Duration::from_secs(900),
            )),
        }
    }

    async fn get(state: AppState, uri: &str) -> (StatusCode, String, String) {
        let res = app(state, Access::ReadOnly)
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let ctype = res
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    fn empty_snapshot() -> Snapshot {
        Snapshot::empty(SystemTime::now())
    }

    #[tokio::test]
    async fn readyz_waits_for_the_first_snapshot() {
        let (status, _, body) = get(state(None), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("starting"), "{body}");
        let (status, _, _) = get(state(Some(empty_snapshot())), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics() {
        let (status, ctype, body) = get(state(Some(empty_snapshot())), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    #[tokio::test]
    async fn system_reports_the_tracked_root_and_probes() {
        let (status, _, body) = get(state(Some(empty_snapshot())), "/api/v1/system").await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["tracked_root"]["path"], "/berth");
        assert_eq!(v["cgroup"]["mode"], "hybrid");
        assert!(v["probes"].is_array(), "{body}");
    }

    #[tokio::test]
    async fn the_read_only_listener_has_no_mutating_routes() {
        let res = app(state(Some(empty_snapshot())), Access::ReadOnly)
            .oneshot(
                Request::post("/api/v1/containers")
                    .header("content-type", "application/json")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        let res = app(state(Some(empty_snapshot())), Access::ReadWrite)
            .oneshot(
                Request::post("/api/v1/containers")
                    .header("content-type", "application/json")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await
            .unwrap();
        // Routed, but this agent has no runtime.
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn the_ui_is_served_from_the_binary() {
        let (status, ctype, body) = get(state(Some(empty_snapshot())), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("text/html"), "{ctype}");
        assert!(body.contains("/ui/app.js"), "{body}");
        let (status, ctype, body) = get(state(Some(empty_snapshot())), "/ui/app.js").await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("text/javascript"), "{ctype}");
        for api in [
            "/api/v1/system",
            "/api/v1/containers",
            "/api/v1/ports",
            "/api/v1/diagnose",
        ] {
            assert!(body.contains(api), "app.js does not use {api}");
        }
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        let (status, _, _) = get(state(Some(empty_snapshot())), "/api/v1/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
