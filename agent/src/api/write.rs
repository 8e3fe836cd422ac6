//! The routes that change the host, only on the Unix socket: containers (run, stop, kill, rm,
//! update) and images (import, pull, rm). Each calls the container manager off the async workers,
//! then waits for a fresh snapshot so the client's next read sees the change; a changed
//! container is answered with its record from that snapshot (`rm`: as it was removed).
//! Containers of other engines are refused with 409 before the manager is asked, and so is
//! every route of an agent in observe mode (`runtime.launch = false`, or no usable OCI
//! runtime): the request conflicts with what this agent is, so retrying will not help (503
//! would tell a client to retry).

use std::{path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{FromRequest as _, Path, Query, Request, State, rejection::QueryRejection},
    http::StatusCode,
    middleware::{Next, from_fn_with_state},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ErrorBody, Object, WriteState, body, query};
use crate::{
    model::{Container, Image, Limits},
    runtime::{ContainerView, Manager, RunRequest, RuntimeError},
};

/// 404 (also for an image reference nothing matches) and 409 for lookups and state conflicts
/// (as Docker's API answers them), 400 for the caller's other mistakes, and 500 for every host
/// failure ([`RuntimeError::is_client_error`] decides; the cause is logged).
impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match &e {
            RuntimeError::NotFound { .. }
            | RuntimeError::Image(crate::image::ImageError::UnknownReference { .. }) => {
                ApiError::NotFound(e.to_string())
            }
            RuntimeError::NameInUse { .. }
            | RuntimeError::Running { .. }
            | RuntimeError::NotRunning { .. }
            | RuntimeError::ImageInUse { .. } => ApiError::Conflict(e.to_string()),
            _ if e.is_client_error() => ApiError::BadRequest(e.to_string()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

/// Each route is registered with its OpenAPI operation (`#[utoipa::path]` on its handler): a
/// route cannot exist without its description. Without state: the document is built from it
/// too, on listeners that serve no write.
pub fn routes() -> OpenApiRouter<WriteState> {
    OpenApiRouter::new()
        .routes(routes!(run))
        .routes(routes!(remove))
        .routes(routes!(stop))
        .routes(routes!(kill))
        .routes(routes!(update))
        .routes(routes!(import_image))
        .routes(routes!(super::pull::pull_image))
        .routes(routes!(remove_image))
}

/// The routes with their state, refusing every change in observe mode.
pub fn router(state: WriteState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        // Only on matched routes: an unknown path stays a 404.
        .route_layer(from_fn_with_state(state.clone(), refuse_in_observe_mode))
        .with_state(state)
}

/// Every mutating route of an agent in observe mode: 409 with the reason, whatever the request
/// names. Its body is read first (up to the body limit, as an extractor would): a client still
/// writing it when the answer comes would get a broken pipe instead of the reason.
async fn refuse_in_observe_mode(State(s): State<WriteState>, req: Request, next: Next) -> Response {
    if s.observe_reason.is_some() {
        let _ = axum::body::Bytes::from_request(req, &()).await;
        return observe_mode(&s).into_response();
    }
    next.run(req).await
}

/// The refusal of an agent that launches nothing, with the reason it does not.
pub(super) fn observe_mode(state: &WriteState) -> ApiError {
    ApiError::Conflict(format!(
        "this agent runs in observe mode ({}): it lists and measures the host's containers but \
         runs, changes and removes none",
        state
            .observe_reason
            .as_deref()
            .unwrap_or("no OCI runtime is usable")
    ))
}

/// Runs a blocking manager call off the async workers, then waits for a snapshot that shows
/// its effect (also after a failure: a failed run may have changed nothing, or undone its
/// steps, and either is what the next read must see).
async fn change<T: Serialize + Send + 'static>(
    state: &WriteState,
    f: impl FnOnce(&Manager) -> Result<T, RuntimeError> + Send + 'static,
) -> Result<Json<T>, ApiError> {
    Ok(Json(blocking(state, f).await?))
}

/// Like [`change`] for a change to one container: answers with the container as the fresh
/// snapshot shows it, the same record `GET /api/v1/containers/{id}` returns.
async fn change_container(
    state: &WriteState,
    f: impl FnOnce(&Manager) -> Result<ContainerView, RuntimeError> + Send + 'static,
) -> Result<Json<Container>, ApiError> {
    let view = blocking(state, f).await?;
    let snap = state.snapshots.borrow().clone().ok_or(ApiError::NotReady)?;
    let c = snap.find(&view.record.id)?;
    Ok(Json(c.clone()))
}

async fn blocking<T: Send + 'static>(
    state: &WriteState,
    f: impl FnOnce(&Manager) -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, ApiError> {
    let m: Arc<Manager> = state.manager.clone().ok_or_else(|| observe_mode(state))?;
    let result = tokio::task::spawn_blocking(move || f(&m))
        .await
        .map_err(|e| ApiError::Internal(format!("task failed: {e}")))?;
    state.refresh.now().await;
    Ok(result?)
}

/// Refuses a change to a container berth did not start (found in the snapshot from its
/// cgroup: Docker, containerd, Kubernetes, podman, LXC), before the manager is asked: berth
/// observes those and leaves them to their engine. A reference that names one of berth's own
/// containers exactly (id or name) is berth's, whatever else it prefixes; one that names
/// nothing in the snapshot is the manager's to answer.
fn refuse_foreign(state: &WriteState, reference: &str) -> Result<(), ApiError> {
    let Some(snap) = state.snapshots.borrow().clone() else {
        return Ok(());
    };
    let exact_berth = snap
        .containers
        .iter()
        .any(|c| c.engine.is_berth() && (c.id == reference || c.name == reference));
    match snap.find(reference) {
        Ok(c) if !exact_berth && !c.engine.is_berth() => Err(ApiError::Conflict(format!(
            "container {reference} is managed by {}; berth does not change containers it did not \
             start",
            c.engine
        ))),
        _ => Ok(()),
    }
}

#[utoipa::path(post, path = "/api/v1/containers", tag = "containers",
    description = "Runs a container from an imported image; answers with it as the next snapshot shows it. Only on the Unix socket (writes are never served on TCP).",
    request_body = RunRequest,
    responses((status = 201, description = "The container as the next snapshot shows it", body = Container), (status = 400, description = "A body or query the route does not accept, or a bad value", body = ErrorBody), (status = 404, description = "No such image", body = ErrorBody), (status = 409, description = "The container's state forbids it, it belongs to another engine, or the agent runs in observe mode", body = ErrorBody), (status = 500, description = "The host failed (the cause is in the agent's log)", body = ErrorBody), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn run(
    State(s): State<WriteState>,
    req: Result<Object<RunRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let req = body(req)?;
    let v = change_container(&s, move |m| m.run(req)).await?;
    Ok((StatusCode::CREATED, v).into_response())
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StopQuery {
    /// Seconds between SIGTERM and SIGKILL (default 10, at most 3600).
    #[param(maximum = 3600)]
    t: Option<u64>,
}

#[utoipa::path(post, path = "/api/v1/containers/{id}/stop", tag = "containers",
    description = "SIGTERM, then SIGKILL after `t` seconds. Only on the Unix socket (writes are never served on TCP).",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), StopQuery),
    responses((status = 200, description = "The container as the next snapshot shows it", body = Container), (status = 400, description = "A body or query the route does not accept, or a bad value", body = ErrorBody), (status = 404, description = "No such container", body = ErrorBody), (status = 409, description = "The container's state forbids it, it belongs to another engine, or the agent runs in observe mode", body = ErrorBody), (status = 500, description = "The host failed (the cause is in the agent's log)", body = ErrorBody), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn stop(
    State(s): State<WriteState>,
    Path(id): Path<String>,
    q: Result<Query<StopQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    refuse_foreign(&s, &id)?;
    let q = query(q)?;
    let t = match q.t.unwrap_or(10) {
        t @ 0..=3600 => Duration::from_secs(t),
        t => {
            return Err(ApiError::BadRequest(format!(
                "t={t}: use 0 to 3600 seconds"
            )));
        }
    };
    Ok(change_container(&s, move |m| m.stop(&id, t))
        .await?
        .into_response())
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct KillQuery {
    /// Signal name or number (default `KILL`).
    signal: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/containers/{id}/kill", tag = "containers",
    description = "Sends a signal to the container's process. Only on the Unix socket (writes are never served on TCP).",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), KillQuery),
    responses((status = 200, description = "The container as the next snapshot shows it", body = Container), (status = 400, description = "A body or query the route does not accept, or a bad value", body = ErrorBody), (status = 404, description = "No such container", body = ErrorBody), (status = 409, description = "The container's state forbids it, it belongs to another engine, or the agent runs in observe mode", body = ErrorBody), (status = 500, description = "The host failed (the cause is in the agent's log)", body = ErrorBody), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn kill(
    State(s): State<WriteState>,
    Path(id): Path<String>,
    q: Result<Query<KillQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    refuse_foreign(&s, &id)?;
    let q = query(q)?;
    let signal = q.signal.unwrap_or_else(|| "KILL".into());
    Ok(change_container(&s, move |m| m.kill(&id, &signal))
        .await?
        .into_response())
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RemoveQuery {
    /// Kill a running container first.
    force: bool,
}

#[utoipa::path(delete, path = "/api/v1/containers/{id}", tag = "containers",
    description = "Removes a stopped container (a running one with `force=true`); answers with its record as it was removed. Only on the Unix socket (writes are never served on TCP).",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), RemoveQuery),
    responses((status = 200, description = "The container as it was removed", body = ContainerView), (status = 400, description = "A body or query the route does not accept, or a bad value", body = ErrorBody), (status = 404, description = "No such container", body = ErrorBody), (status = 409, description = "The container's state forbids it, it belongs to another engine, or the agent runs in observe mode", body = ErrorBody), (status = 500, description = "The host failed (the cause is in the agent's log)", body = ErrorBody), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn remove(
    State(s): State<WriteState>,
    Path(id): Path<String>,
    q: Result<Query<RemoveQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    refuse_foreign(&s, &id)?;
    let q = query(q)?;
    Ok(change(&s, move |m| m.remove(&id, q.force))
        .await?
        .into_response())
}

#[utoipa::path(post, path = "/api/v1/containers/{id}/update", tag = "containers",
    description = "Changes a container's resource limits. Only on the Unix socket (writes are never served on TCP).",
    params(("id" = String, Path, description = "Container id, unique id prefix or name")),
    request_body = Limits,
    responses((status = 200, description = "The container as the next snapshot shows it", body = Container), (status = 400, description = "A body or query the route does not accept, or a bad value", body = ErrorBody), (status = 404, description = "No such container", body = ErrorBody), (status = 409, description = "The container's state forbids it, it belongs to another engine, or the agent runs in observe mode", body = ErrorBody), (status = 500, description = "The host failed (the cause is in the agent's log)", body = ErrorBody), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn update(
    State(s): State<WriteState>,
    Path(id): Path<String>,
    limits: Result<Object<Limits>, ApiError>,
) -> Result<Response, ApiError> {
    refuse_foreign(&s, &id)?;
    let limits = body(limits)?;
    Ok(change_container(&s, move |m| m.update(&id, &limits))
        .await?
        .into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ImportRequest {
    /// Absolute path of the archive on the agent's host.
    #[schema(value_type = String)]
    path: PathBuf,
    /// A name for the image (`name:tag`), besides the archive's own.
    name: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/images/import", tag = "images",
    description = "Imports an image archive (`docker save` or OCI layout tar) the agent reads from its host. Only on the Unix socket (writes are never served on TCP).",
    request_body = ImportRequest,
    responses((status = 201, description = "The image", body = Image), (status = 400, description = "A body or query the route does not accept, or a bad value", body = ErrorBody), (status = 409, description = "The container's state forbids it, it belongs to another engine, or the agent runs in observe mode", body = ErrorBody), (status = 500, description = "The host failed (the cause is in the agent's log)", body = ErrorBody), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn import_image(
    State(s): State<WriteState>,
    req: Result<Object<ImportRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let req = body(req)?;
    archive_path(&req.path)?;
    let v = change(&s, move |m| {
        Ok(m.images.import(&req.path, req.name.as_deref())?)
    })
    .await?;
    Ok((StatusCode::CREATED, v).into_response())
}

/// `path` must be absolute: the agent's working directory means nothing to a client. What
/// the path names (a device, a FIFO, `/proc/self/mem`) is checked by the image store, which
/// answers those as the client's mistake too.
fn archive_path(path: &std::path::Path) -> Result<(), ApiError> {
    if !path.is_absolute() {
        return Err(ApiError::BadRequest(format!(
            "path `{}`: must be an absolute path to an image archive",
            path.display()
        )));
    }
    Ok(())
}

#[utoipa::path(delete, path = "/api/v1/images/{reference}", tag = "images",
    description = "Removes an image no container uses. Only on the Unix socket (writes are never served on TCP).",
    params(("reference" = String, Path, description = "Image id, id prefix or name")),
    responses((status = 200, description = "The image as it was removed", body = Image), (status = 400, description = "A body or query the route does not accept, or a bad value", body = ErrorBody), (status = 404, description = "No such image", body = ErrorBody), (status = 409, description = "The container's state forbids it, it belongs to another engine, or the agent runs in observe mode", body = ErrorBody), (status = 500, description = "The host failed (the cause is in the agent's log)", body = ErrorBody), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn remove_image(
    State(s): State<WriteState>,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    Ok(change(&s, move |m| m.remove_image(&reference))
        .await?
        .into_response())
}
