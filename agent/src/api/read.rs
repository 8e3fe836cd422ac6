//! The read routes, on every listener: everything comes from the latest snapshot and the
//! history; a container's log is streamed from the file the snapshot names.

use std::{sync::Arc, time::Duration};

use axum::{
    Extension, Json,
    body::Body,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::header,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    ApiError, ErrorBody, ReadState,
    access::Secrets,
    openapi, query,
    views::{DiagnoseView, StatsView, SyscallRow, SyscallsView, SystemView},
};
use crate::{
    config::HumanDuration,
    metrics,
    model::{
        CgroupView, Container, Image, Snapshot,
        ports::{Base, RangeCost},
    },
};

/// Each route is registered with its OpenAPI operation (`#[utoipa::path]` on its handler): a
/// route cannot exist without its description.
pub fn routes() -> OpenApiRouter<ReadState> {
    OpenApiRouter::new()
        .routes(routes!(get_metrics))
        .routes(routes!(get_healthz))
        .routes(routes!(get_readyz))
        .routes(routes!(openapi::get_openapi))
        .routes(routes!(get_system))
        .routes(routes!(get_cgroups))
        .routes(routes!(get_diagnose))
        .routes(routes!(list))
        .routes(routes!(inspect))
        .routes(routes!(logs))
        .routes(routes!(stats))
        .routes(routes!(syscalls))
        .routes(routes!(images))
        .routes(routes!(ports))
        .routes(routes!(super::series::get_query))
}

/// `window=60s` as a duration (at most what the history keeps is meaningful).
fn window(param: &str, w: Option<&str>) -> Result<Option<Duration>, ApiError> {
    w.map(|w| {
        w.parse::<HumanDuration>()
            .map(|d| d.0)
            .map_err(|e| ApiError::BadRequest(format!("{param}={w}: {e}")))
    })
    .transpose()
}

/// The kept window start closest to `window` before `latest`.
fn base(s: &ReadState, latest: &Snapshot, window: Duration) -> Option<Arc<Base>> {
    let from = latest
        .taken_at
        .checked_sub(window)
        .unwrap_or(std::time::UNIX_EPOCH);
    s.history.since(from)
}

#[utoipa::path(get, path = "/metrics", tag = "metrics",
    description = "Every metric family in the OpenMetrics text format.",
    responses(
        (status = 200, description = "OpenMetrics exposition", body = String,
         content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = 500, description = "Encoding failed (see the agent's log)", body = ErrorBody),
    ))]
async fn get_metrics(State(s): State<ReadState>) -> Result<Response, ApiError> {
    let body = s
        .metrics
        .bytes()
        .await
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response())
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    description = "The process answers.",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
async fn get_healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    description = "Ready once the first snapshot is published.",
    responses(
        (status = 200, description = "`ready`", body = String, content_type = "text/plain"),
        (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody),
    ))]
async fn get_readyz(State(s): State<ReadState>) -> Result<&'static str, ApiError> {
    s.latest().map(|_| "ready\n")
}

#[utoipa::path(get, path = "/api/v1/system", tag = "system",
    description = "Start-up facts (version, kernel, mode, cgroup layout, runtime, seccomp) and the probes' state.",
    responses((status = 200, description = "The agent and the host", body = SystemView), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn get_system(State(s): State<ReadState>) -> Result<Response, ApiError> {
    let snap = s.latest()?;
    Ok(Json(SystemView {
        info: &s.system,
        probes: &snap.probes,
    })
    .into_response())
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DiagnoseQuery {
    /// Window for rates (new flows per second, proxies' CPU): default 60s, at most the 15
    /// minutes of history.
    #[param(pattern = "^[0-9]{1,19}(ms|s|m)$")]
    window: Option<String>,
}

/// Findings: cause, evidence, fix; most severe first.
#[utoipa::path(get, path = "/api/v1/diagnose", tag = "system",
    description = "Findings (cause, evidence, fix), most severe first.",
    params(DiagnoseQuery),
    responses((status = 200, description = "The findings", body = DiagnoseView), (status = 400, description = "A query parameter the route does not accept, or a bad value", body = ErrorBody), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn get_diagnose(
    State(s): State<ReadState>,
    q: Result<Query<DiagnoseQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let w = window("window", q.window.as_deref())?.unwrap_or(Duration::from_secs(60));
    let snap = s.latest()?;
    let base = base(&s, &snap, w);
    Ok(Json(DiagnoseView {
        checked_at: snap
            .taken_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        findings: crate::diagnose::diagnose(&snap, base.as_deref()),
    })
    .into_response())
}

#[utoipa::path(get, path = "/api/v1/cgroups", tag = "system",
    description = "Every cgroup the probes count, with the container it belongs to.",
    responses((status = 200, description = "The tracked cgroups", body = Vec<CgroupView>), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn get_cgroups(State(s): State<ReadState>) -> Result<Response, ApiError> {
    let snap = s.latest()?;
    Ok(Json(snap.cgroups()).into_response())
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Every container, also exited ones.
    all: bool,
}

/// Running (and restarting) containers, newest first; every one with `all`.
/// Env values only for requests that may see secrets (see `access`).
#[utoipa::path(get, path = "/api/v1/containers", tag = "containers",
    description = "Running (and restarting) containers of every engine, newest first; every one with `all=true`. On TCP without the bearer token, env values are redacted.",
    params(ListQuery),
    responses((status = 200, description = "The containers", body = Vec<Container>), (status = 400, description = "A query parameter the route does not accept, or a bad value", body = ErrorBody), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn list(
    State(s): State<ReadState>,
    secrets: Option<Extension<Secrets>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let snap = s.latest()?;
    let rows = snap.containers.iter().filter(|c| q.all || c.status.is_up());
    if Secrets::of(secrets) {
        Ok(Json(rows.collect::<Vec<&Container>>()).into_response())
    } else {
        let rows: Vec<Container> = rows.map(Container::redacted).collect();
        Ok(Json(rows).into_response())
    }
}

#[utoipa::path(get, path = "/api/v1/containers/{id}", tag = "containers",
    description = "One container. On TCP without the bearer token, env values are redacted.",
    params(("id" = String, Path, description = "Container id, unique id prefix or name")),
    responses((status = 200, description = "The container", body = Container), (status = 400, description = "The reference is ambiguous, or a query parameter is wrong", body = ErrorBody), (status = 404, description = "No container matches the reference", body = ErrorBody), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn inspect(
    State(s): State<ReadState>,
    secrets: Option<Extension<Secrets>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let snap = s.latest()?;
    let c = snap.find(&id)?;
    if Secrets::of(secrets) {
        Ok(Json(c).into_response())
    } else {
        Ok(Json(c.redacted()).into_response())
    }
}

#[utoipa::path(get, path = "/api/v1/containers/{id}/stats", tag = "containers",
    description = "The container's resource usage (zero while it does not run).",
    params(("id" = String, Path, description = "Container id, unique id prefix or name")),
    responses((status = 200, description = "Its resource usage", body = StatsView), (status = 400, description = "The reference is ambiguous, or a query parameter is wrong", body = ErrorBody), (status = 404, description = "No container matches the reference", body = ErrorBody), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn stats(State(s): State<ReadState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let snap = s.latest()?;
    let c = snap.find(&id)?;
    Ok(Json(StatsView {
        id: c.id.clone(),
        name: c.name.clone(),
        status: c.status,
        stats: c.stats.clone().unwrap_or_default(),
    })
    .into_response())
}

#[utoipa::path(get, path = "/api/v1/images", tag = "images",
    description = "The images berth's store holds. On TCP without the bearer token, env values are redacted.",
    responses((status = 200, description = "The images", body = Vec<Image>), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn images(
    State(s): State<ReadState>,
    secrets: Option<Extension<Secrets>>,
) -> Result<Response, ApiError> {
    let snap = s.latest()?;
    if Secrets::of(secrets) {
        Ok(Json(&snap.images).into_response())
    } else {
        let images: Vec<_> = snap.images.iter().map(|i| i.redacted()).collect();
        Ok(Json(images).into_response())
    }
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PortsQuery {
    /// Window for the rates and the `window_*` costs (default 10s, at most the 15 minutes
    /// of history).
    #[param(pattern = "^[0-9]{1,19}(ms|s|m)$")]
    window: Option<String>,
    /// Only this container's ranges: id, name or unique id prefix.
    container: Option<String>,
    /// Keep the N costliest ranges, each with at most its N costliest ports.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100000)]
    top: Option<String>,
}

/// One row per published range: container, address, mapping, backend, and what netfilter
/// costs for it (see `model::ports`).
#[utoipa::path(get, path = "/api/v1/ports", tag = "ports",
    description = "One row per published port range: container, address, mapping, backend and what netfilter costs for it, cumulative and over the window, costliest first (netfilter µs per second over the window).",
    params(PortsQuery),
    responses((status = 200, description = "The published ranges and their cost", body = Vec<RangeCost>), (status = 400, description = "A query parameter the route does not accept, or a bad value", body = ErrorBody), (status = 404, description = "`container` matches no container", body = ErrorBody), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn ports(
    State(s): State<ReadState>,
    q: Result<Query<PortsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let w = window("window", q.window.as_deref())?.unwrap_or(Duration::from_secs(10));
    let top = q.top.as_deref().map(super::top_param).transpose()?;
    let snap = s.latest()?;
    let only = q.container.as_deref().map(|r| snap.find(r)).transpose()?;
    let base = base(&s, &snap, w);
    let mut rows = snap.range_costs(base.as_deref());
    if let Some(c) = only {
        rows.retain(|r| r.container == c.id);
    }
    if let Some(top) = top {
        rows.truncate(top);
        for r in &mut rows {
            if let Some(nf) = r.netfilter.as_mut() {
                nf.ports.truncate(top);
            }
        }
    }
    Ok(Json(rows).into_response())
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SyscallsQuery {
    /// How many syscalls, busiest first: 1 to 500 (default 10).
    #[param(minimum = 1, maximum = 500)]
    top: Option<usize>,
    /// Window for counts and rates (`60s`, `5m`, at most the 15 minutes of history);
    /// without it, counts since the probe saw the cgroup.
    #[param(pattern = "^[0-9]{1,19}(ms|s|m)$")]
    window: Option<String>,
}

/// The container's busiest syscalls: cumulative, or over `window` (e.g. `60s`, `5m`, up to
/// the 15 minutes of history kept), with rates and mean latency when latency is on.
#[utoipa::path(get, path = "/api/v1/containers/{id}/syscalls", tag = "containers",
    description = "The container's busiest syscalls: cumulative, or over `window` with rates.",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), SyscallsQuery),
    responses((status = 200, description = "Its syscalls", body = SyscallsView), (status = 400, description = "The reference is ambiguous, or a query parameter is wrong", body = ErrorBody), (status = 404, description = "No container matches the reference", body = ErrorBody), (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody)))]
async fn syscalls(
    State(s): State<ReadState>,
    Path(id): Path<String>,
    q: Result<Query<SyscallsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let top = q.top.unwrap_or(10);
    if top == 0 || top > 500 {
        return Err(ApiError::BadRequest(format!("top={top}: use 1 to 500")));
    }
    let w = window("window", q.window.as_deref())?;
    let snap = s.latest()?;
    let c = snap.find(&id)?;
    let (base_calls, seconds) = match w.and_then(|w| base(&s, &snap, w)) {
        Some(b) => {
            let secs = snap
                .taken_at
                .duration_since(b.taken_at)
                .unwrap_or_default()
                .as_secs_f64();
            // The same container is the same id in the same cgroup: a reused id (a foreign
            // engine's, or a restart in a new cgroup) starts from fresh counters. The start
            // keeps the container's busiest syscalls; one it cut counts from zero.
            (b.syscalls(c).to_vec(), Some(secs))
        }
        None => (Vec::new(), None),
    };
    let mut rows: Vec<SyscallRow> = c
        .syscalls
        .iter()
        .filter_map(|now| {
            let b = base_calls.iter().find(|b| b.nr == now.nr);
            let count = now.count - b.map_or(0, |b| b.count.min(now.count));
            let calls_now: u64 = now.latency_buckets.iter().sum();
            let calls_before: u64 = b.map_or(0, |b| b.latency_calls);
            let lat_calls = calls_now.saturating_sub(calls_before);
            let lat_sum =
                now.latency_sum_ns - b.map_or(0, |b| b.latency_sum_ns.min(now.latency_sum_ns));
            (count > 0).then(|| SyscallRow {
                nr: now.nr,
                name: now.name.to_string(),
                count,
                per_second: seconds.filter(|s| *s > 0.0).map(|s| count as f64 / s),
                latency_mean_ns: (lat_calls > 0).then(|| lat_sum as f64 / lat_calls as f64),
            })
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.nr.cmp(&b.nr)));
    rows.truncate(top);
    Ok(Json(SyscallsView {
        container: c.id.clone(),
        name: c.name.clone(),
        cgroup: c.cgroup.clone(),
        window_seconds: seconds,
        syscalls: rows,
    })
    .into_response())
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LogsQuery {
    /// Keep the response open and stream new output until the container exits.
    follow: bool,
}

/// The container's log (stdout and stderr); with `follow`, the response stays open and
/// streams new output until the snapshots show the container has exited. Only for requests
/// that may see secrets: a log is as private as the container's env.
#[utoipa::path(get, path = "/api/v1/containers/{id}/logs", tag = "containers",
    description = "The container's log (stdout and stderr), streamed with `follow=true` until it exits. On TCP only with the bearer token; the Unix socket serves it.",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), LogsQuery),
    responses(
        (status = 200, description = "The log bytes", body = String, content_type = "application/octet-stream"),
        (status = 400, description = "The reference is ambiguous, or a query parameter is wrong", body = ErrorBody),
        (status = 401, description = "On TCP without the bearer token", body = ErrorBody),
        (status = 404, description = "No container matches the reference, or it keeps no log", body = ErrorBody),
        (status = 503, description = "No snapshot yet: the agent is starting", body = ErrorBody),
    ))]
async fn logs(
    State(s): State<ReadState>,
    secrets: Option<Extension<Secrets>>,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let snap = s.latest()?;
    let c = snap.find(&id)?;
    if !Secrets::of(secrets) {
        return Err(ApiError::Unauthorized(format!(
            "the log of {} needs the bearer token (Authorization: Bearer, http.token_file) on \
             this listener; the Unix socket serves it to root",
            c.name
        )));
    }
    let path = c
        .log_path
        .clone()
        .ok_or_else(|| ApiError::NotFound(format!("container {} keeps no log", c.name)))?;
    let id = c.id.clone();
    let mut snapshots = s.snapshots.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut pos = 0u64;
        loop {
            let chunk = read_from(&path, pos).await;
            pos += chunk.len() as u64;
            if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            if !q.follow {
                return;
            }
            let done = snapshots
                .borrow_and_update()
                .as_ref()
                .and_then(|snap| {
                    snap.containers
                        .iter()
                        .find(|c| c.id == id)
                        .map(|c| c.status)
                })
                .is_none_or(|status| !status.may_produce_output());
            if done {
                // One last read after the exit, then end the stream.
                let chunk = read_from(&path, pos).await;
                if !chunk.is_empty() {
                    let _ = tx.send(Ok(chunk)).await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut rx = rx;
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// What the file holds from `pos` on (nothing when it cannot be read yet).
async fn read_from(path: &std::path::Path, pos: u64) -> Vec<u8> {
    let mut chunk = Vec::new();
    if let Ok(mut f) = tokio::fs::File::open(path).await
        && f.seek(std::io::SeekFrom::Start(pos)).await.is_ok()
    {
        let _ = f.read_to_end(&mut chunk).await;
    }
    chunk
}
