//! `POST /api/v1/images/pull` (socket only): a registry pull, answered with the image when it
//! is stored, or, with `progress: true`, as a stream of [`PullEvent`]s (one JSON object per
//! line, as Docker's pull streams its progress) for the CLI's per-layer display. Failures
//! before the first event (a bad reference, an unknown tag, a refused password, an unreachable
//! registry) keep their own status code in both forms; once streaming, a failure is the last
//! line. Every pull also lands in the agent's log (resolved, each layer, stored or failed).

use std::{convert::Infallible, sync::Arc};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt as _;
use serde::Deserialize;
use tracing::{debug, info, warn};
use utoipa::ToSchema;

use super::{ApiError, ErrorBody, Object, WriteState, body, write::observe_mode};
use crate::{
    image::{ImageError, registry},
    model::{Image, PullEvent},
    runtime::{Manager, RuntimeError},
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PullRequest {
    /// Image reference, e.g. `debian:bookworm` or `registry.example:5000/app@sha256:...`.
    reference: String,
    /// `missing`: answer with the stored image when the reference already resolves locally
    /// (`berth run --pull missing`); `always` (the default): ask the registry.
    #[serde(default)]
    policy: PullPolicy,
    /// Stream the pull's progress as `application/x-ndjson` ([`PullEvent`] per line, the
    /// last one `pulled` or `error`) instead of answering once with the image.
    #[serde(default)]
    progress: bool,
}

#[derive(Deserialize, Default, PartialEq, ToSchema)]
#[serde(rename_all = "lowercase")]
enum PullPolicy {
    #[default]
    Always,
    Missing,
}

/// Pulls an image (the download runs on the async workers, unpacking off them), then waits
/// for a fresh snapshot so `image ls` right after lists it.
#[utoipa::path(post, path = "/api/v1/images/pull", tag = "images",
    description = "Pulls an image from a registry (Docker's reference syntax); with `policy: missing`, answers with the stored image when the reference already resolves locally; with `progress: true`, streams the pull's steps as JSON lines. Only on the Unix socket (writes are never served on TCP).",
    request_body = PullRequest,
    responses(
        (status = 200, description = "The stored image (`policy: missing`), or with `progress: true` the pull's steps, one JSON object per line, the last `pulled` or `error`", content(
            (Image = "application/json"),
            (PullEvent = "application/x-ndjson"),
        )),
        (status = 201, description = "The pulled image", body = Image),
        (status = 400, description = "A body the route does not accept, a bad reference, or a registry refusal (credentials, a blob that does not match its digest)", body = ErrorBody),
        (status = 404, description = "The registry has no such image", body = ErrorBody),
        (status = 409, description = "The agent runs in observe mode", body = ErrorBody),
        (status = 500, description = "The host or the download failed (the cause is in the agent's log)", body = ErrorBody),
        (status = 502, description = "The registry cannot be reached (connection refused, DNS, TLS, timeout)", body = ErrorBody),
    ))]
pub(super) async fn pull_image(
    State(s): State<WriteState>,
    req: Result<Object<PullRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let req = body(req)?;
    let m: Arc<Manager> = s.manager.clone().ok_or_else(|| observe_mode(&s))?;
    let store = m.images.clone();
    if req.policy == PullPolicy::Missing
        && let Ok(image) = store.get(&req.reference)
    {
        return Ok(Json(image).into_response());
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PullEvent>();
    let reference = req.reference.clone();
    let opts = s.pull.clone();
    let task = tokio::spawn(async move {
        let logged = reference.clone();
        let report = move |event: PullEvent| {
            log_event(&logged, &event);
            let _ = tx.send(event);
        };
        registry::pull(&store, &reference, &opts, &report).await
    });
    if !req.progress {
        // Events are only logged; the answer waits for the end.
        while rx.recv().await.is_some() {}
        let result = finish(task).await;
        s.refresh.now().await;
        return match result {
            Ok(image) => Ok((StatusCode::CREATED, Json(image)).into_response()),
            Err(e) => Err(failed(&req.reference, e)),
        };
    }
    let Some(first) = rx.recv().await else {
        // Over before it started: the failure keeps its status code.
        let result = finish(task).await;
        s.refresh.now().await;
        return match result {
            Ok(image) => Ok((StatusCode::CREATED, Json(image)).into_response()),
            Err(e) => Err(failed(&req.reference, e)),
        };
    };
    let refresh = s.refresh.clone();
    let reference = req.reference.clone();
    let rest = futures_util::stream::unfold((rx, Some(task)), move |(mut rx, task)| {
        let refresh = refresh.clone();
        let reference = reference.clone();
        async move {
            if let Some(event) = rx.recv().await {
                return Some((event, (rx, task)));
            }
            let last = match finish(task?).await {
                Ok(image) => PullEvent::Pulled { image },
                Err(e) => {
                    warn!(%reference, error = %e, "pull failed");
                    PullEvent::Error {
                        error: e.to_string(),
                    }
                }
            };
            refresh.now().await;
            Some((last, (rx, None)))
        }
    });
    let lines = futures_util::stream::once(async { first })
        .chain(rest)
        .map(|event| {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, Infallible>(Bytes::from(line))
        });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// The pull task's result (a panicked task is a host failure).
async fn finish(
    task: tokio::task::JoinHandle<Result<Image, ImageError>>,
) -> Result<Image, ImageError> {
    task.await.unwrap_or_else(|e| {
        Err(ImageError::Io {
            path: "<pull task>".into(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

/// Logs a failed pull and answers it as the client needs it: 404 when the registry has no such
/// manifest, 502 when the registry cannot be reached, else as every other image error.
fn failed(reference: &str, e: ImageError) -> ApiError {
    warn!(%reference, error = %e, "pull failed");
    match e {
        ImageError::ManifestUnknown { .. } => ApiError::NotFound(e.to_string()),
        ImageError::Unreachable { .. } => ApiError::BadGateway(e.to_string()),
        e => RuntimeError::from(e).into(),
    }
}

/// The agent's log of a pull: each step at info, byte counts at debug.
fn log_event(reference: &str, event: &PullEvent) {
    match event {
        PullEvent::Resolved {
            manifest,
            id,
            layers,
        } => info!(%reference, %manifest, %id, layers, "pull: manifest resolved"),
        PullEvent::LayerExists { digest } => {
            info!(%reference, layer = %digest, "pull: layer already stored")
        }
        PullEvent::Downloading {
            digest,
            current,
            total,
        } => debug!(%reference, layer = %digest, current, total, "pull: downloading"),
        PullEvent::LayerDone { digest, total } => {
            info!(%reference, layer = %digest, bytes = total, "pull: layer downloaded and verified")
        }
        PullEvent::Pulled { .. } | PullEvent::Error { .. } => {}
    }
}
