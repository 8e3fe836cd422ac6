//! HTTP: `/metrics` (OpenMetrics), `/healthz` (the process answers), `/readyz` (the first
//! snapshot is published), and the read-only JSON API under `/api/v1`.
//!
//! `app(state)` builds the router without binding a socket, so router tests use `oneshot`.

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
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(get_readyz))
        .route("/api/v1/system", get(get_system))
        .route("/api/v1/cgroups", get(get_cgroups))
        .with_state(state)
}

/// Errors shown to HTTP clients: a clear 4xx for their mistakes, a generic 5xx for ours (the
/// cause goes to the log).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no snapshot yet: the agent is starting")]
    NotReady,
    #[error("internal error")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
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
}

async fn get_system(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snap = latest(&state)?;
    Ok(Json(SystemView {
        info: &state.system,
        probes: &snap.probes,
    })
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
            registry: Arc::new(metrics::registry(rx.clone())),
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
        }
    }

    async fn get(state: AppState, uri: &str) -> (StatusCode, String, String) {
        let res = app(state)
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
        Snapshot {
            taken_at: SystemTime::now(),
            cgroups: vec![],
            probes: vec![],
            lost_events: vec![],
            collectors: vec![],
        }
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
    async fn unknown_paths_are_404() {
        let (status, _, _) = get(state(Some(empty_snapshot())), "/api/v1/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
