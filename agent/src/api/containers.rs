//! `/api/v1/containers` and `/api/v1/images`: reads on every listener, changes only on the
//! Unix socket ([`super::Access::ReadWrite`]).

use std::{path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::{ApiError, AppState};
use crate::{
    cgroup::limits::Limits,
    runtime::{Manager, RunRequest, RuntimeError},
};

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match &e {
            RuntimeError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            RuntimeError::NameInUse { .. } | RuntimeError::Running { .. } => {
                ApiError::Conflict(e.to_string())
            }
            _ if e.is_client_error() => ApiError::BadRequest(e.to_string()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

fn manager(state: &AppState) -> Result<Arc<Manager>, ApiError> {
    state.manager.clone().ok_or_else(|| {
        ApiError::Unavailable(format!(
            "containers are unavailable on this agent: {}",
            state.manager_error.as_deref().unwrap_or("no OCI runtime")
        ))
    })
}

/// Runs a blocking manager call off the async workers.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Manager) -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, ApiError> {
    let m = manager(state)?;
    tokio::task::spawn_blocking(move || f(&m))
        .await
        .map_err(|e| ApiError::Internal(format!("task failed: {e}")))?
        .map_err(ApiError::from)
}

pub fn read_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/containers", get(list))
        .route("/api/v1/containers/{id}", get(inspect))
        .route("/api/v1/containers/{id}/logs", get(logs))
        .route("/api/v1/containers/{id}/stats", get(stats))
        .route("/api/v1/containers/{id}/syscalls", get(syscalls))
        .route("/api/v1/images", get(images))
        .route("/api/v1/ports", get(ports))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct PortsQuery {
    /// Window for `new_flows_per_second` (default 10s, at most the 15 minutes of history).
    window: Option<String>,
}

/// One row per published range: container, address, mapping, backend, and what netfilter
/// costs for it (from the netfilter probe): prerouting ns per packet, new flows (and per
/// second over `window`), per hook and conntrack state, and the busiest ports.
async fn ports(
    State(s): State<AppState>,
    q: Result<Query<PortsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    use crate::{
        net::portmap::Publish,
        probes::netfilter::{CtState, Hook, NetfilterSample},
    };
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let window = match q.window.as_deref() {
        None => std::time::Duration::from_secs(10),
        Some(w) => {
            w.parse::<crate::config::HumanDuration>()
                .map_err(|e| ApiError::BadRequest(format!("window={w}: {e}")))?
                .0
        }
    };
    let rows = blocking(&s, |m| Ok(m.ports())).await?;
    let latest = s.snapshots.borrow().clone();
    let base = latest.as_ref().and_then(|l| {
        let from = l.taken_at.checked_sub(window)?;
        s.history.since(from)
    });
    let in_range = |p: &Publish, proto: u8, port: u16| p.covers(proto, port);
    let new_at_prerouting = |nf: &NetfilterSample, p: &Publish| -> u64 {
        nf.by_port
            .iter()
            .filter(|c| c.hook == Hook::Prerouting && c.ct_state == CtState::New)
            .filter(|c| in_range(p, c.proto, c.port))
            .map(|c| c.packets)
            .sum()
    };
    let mut out = Vec::new();
    for (id, name, net) in rows {
        for p in net.publish {
            let mut cost = serde_json::Value::Null;
            if let Some(nf) = latest.as_ref().and_then(|l| l.netfilter.as_ref()) {
                let mut hooks: std::collections::BTreeMap<(&str, &str), (u64, u64)> =
                    Default::default();
                let mut per_port: std::collections::BTreeMap<u16, (u64, u64)> = Default::default();
                let (mut pre_p, mut pre_ns) = (0u64, 0u64);
                for c in nf.by_port.iter().filter(|c| in_range(&p, c.proto, c.port)) {
                    let e = hooks.entry((c.hook.name(), c.ct_state.name())).or_default();
                    e.0 += c.packets;
                    e.1 += c.nanoseconds;
                    if c.hook == Hook::Prerouting {
                        pre_p += c.packets;
                        pre_ns += c.nanoseconds;
                        let e = per_port.entry(c.port).or_default();
                        e.0 += c.packets;
                        e.1 += c.nanoseconds;
                    }
                }
                let per = |packets: u64, ns: u64| (packets > 0).then(|| ns as f64 / packets as f64);
                let new_now = new_at_prerouting(nf, &p);
                let rate = base.as_ref().and_then(|b| {
                    let nf0 = b.netfilter.as_ref()?;
                    let secs = latest
                        .as_ref()?
                        .taken_at
                        .duration_since(b.taken_at)
                        .ok()?
                        .as_secs_f64();
                    (secs > 0.0)
                        .then(|| new_now.saturating_sub(new_at_prerouting(nf0, &p)) as f64 / secs)
                });
                let mut busiest: Vec<(u16, (u64, u64))> = per_port.into_iter().collect();
                busiest.sort_by_key(|b| std::cmp::Reverse(b.1.0));
                busiest.truncate(100);
                cost = serde_json::json!({
                    "prerouting_packets": pre_p,
                    "prerouting_ns_per_packet": per(pre_p, pre_ns),
                    "new_flows": new_now,
                    "new_flows_per_second": rate,
                    "hooks": hooks.iter().map(|((h, st), (pk, ns))| serde_json::json!({
                        "hook": h, "ct_state": st, "packets": pk, "ns_per_packet": per(*pk, *ns),
                    })).collect::<Vec<_>>(),
                    "ports": busiest.iter().map(|(port, (pk, ns))| serde_json::json!({
                        "port": port, "prerouting_packets": pk, "prerouting_ns_per_packet": per(*pk, *ns),
                    })).collect::<Vec<_>>(),
                });
            }
            out.push(serde_json::json!({
                "container": id, "name": name, "ip": net.ip,
                "publish": p, "backend": net.port_backend, "netfilter": cost,
            }));
        }
    }
    Ok(Json(out).into_response())
}

pub fn write_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/containers", post(run))
        .route("/api/v1/containers/{id}", axum::routing::delete(remove))
        .route("/api/v1/containers/{id}/stop", post(stop))
        .route("/api/v1/containers/{id}/kill", post(kill))
        .route("/api/v1/containers/{id}/update", post(update))
        .route("/api/v1/images/import", post(import_image))
        .route(
            "/api/v1/images/{reference}",
            axum::routing::delete(remove_image),
        )
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ListQuery {
    all: bool,
}

async fn list(State(s): State<AppState>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let v = blocking(&s, move |m| Ok(m.list(q.all))).await?;
    Ok(Json(v).into_response())
}

async fn inspect(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let v = blocking(&s, move |m| m.inspect(&id)).await?;
    Ok(Json(v).into_response())
}

async fn stats(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let v = blocking(&s, move |m| {
        let view = m.inspect(&id)?;
        let stats = m.stats(&id)?;
        Ok(serde_json::json!({ "id": view.record.id, "name": view.record.name, "status": view.status, "stats": stats }))
    })
    .await?;
    Ok(Json(v).into_response())
}

async fn run(
    State(s): State<AppState>,
    body: Result<Json<RunRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let v = blocking(&s, move |m| m.run(req)).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct StopQuery {
    t: Option<u64>,
}

async fn stop(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<StopQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let t = Duration::from_secs(q.t.unwrap_or(10).min(3600));
    let v = blocking(&s, move |m| m.stop(&id, t)).await?;
    Ok(Json(v).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct KillQuery {
    signal: Option<String>,
}

async fn kill(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<KillQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let signal = q.signal.unwrap_or_else(|| "KILL".into());
    let v = blocking(&s, move |m| m.kill(&id, &signal)).await?;
    Ok(Json(v).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RemoveQuery {
    force: bool,
}

async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let v = blocking(&s, move |m| m.remove(&id, q.force)).await?;
    Ok(Json(v).into_response())
}

async fn update(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<Limits>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(limits) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let v = blocking(&s, move |m| m.update(&id, &limits)).await?;
    Ok(Json(v).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LogsQuery {
    follow: bool,
}

/// The container's log (stdout and stderr); with `follow`, the response stays open and
/// streams new output until the container has exited.
async fn logs(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let m = manager(&s)?;
    let view = {
        let m = m.clone();
        tokio::task::spawn_blocking(move || m.inspect(&id))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??
    };
    let path: PathBuf = view.log_path.clone();
    let id = view.record.id.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut pos = 0u64;
        loop {
            let mut chunk = Vec::new();
            if let Ok(mut f) = tokio::fs::File::open(&path).await
                && f.seek(std::io::SeekFrom::Start(pos)).await.is_ok()
            {
                let _ = f.read_to_end(&mut chunk).await;
            }
            pos += chunk.len() as u64;
            if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            if !q.follow {
                return;
            }
            let m2 = m.clone();
            let id2 = id.clone();
            let done = tokio::task::spawn_blocking(move || {
                m2.inspect(&id2)
                    .map(|v| !matches!(v.status, "running" | "restarting" | "creating"))
                    .unwrap_or(true)
            })
            .await
            .unwrap_or(true);
            if done {
                // One last read after the exit, then end the stream.
                let mut chunk = Vec::new();
                if let Ok(mut f) = tokio::fs::File::open(&path).await
                    && f.seek(std::io::SeekFrom::Start(pos)).await.is_ok()
                {
                    let _ = f.read_to_end(&mut chunk).await;
                }
                if !chunk.is_empty() {
                    let _ = tx.send(Ok(chunk)).await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let stream = tokio_stream_from(rx);
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn images(State(s): State<AppState>) -> Result<Response, ApiError> {
    let v = blocking(&s, |m| Ok(m.images.list()?)).await?;
    Ok(Json(v).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportRequest {
    path: PathBuf,
    name: Option<String>,
}

async fn import_image(
    State(s): State<AppState>,
    body: Result<Json<ImportRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let v = blocking(&s, move |m| {
        Ok(m.images.import(&req.path, req.name.as_deref())?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn remove_image(
    State(s): State<AppState>,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let v = blocking(&s, move |m| {
        let image = m.images.get(&reference)?;
        if let Some(user) = m.image_in_use(&image.id) {
            return Err(RuntimeError::BadInput(format!(
                "image {reference} is used by container {user}: remove the container first"
            )));
        }
        Ok(m.images.remove(&image.id)?)
    })
    .await?;
    Ok(Json(v).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct SyscallsQuery {
    top: Option<usize>,
    window: Option<String>,
}

/// The container's busiest syscalls: cumulative, or over `window` (e.g. `60s`, `5m`, up to
/// the 15 minutes of history kept), with rates and mean latency when latency is on.
async fn syscalls(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<SyscallsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let top = q.top.unwrap_or(10);
    if top == 0 || top > 500 {
        return Err(ApiError::BadRequest(format!("top={top}: use 1 to 500")));
    }
    let window = q
        .window
        .as_deref()
        .map(|w| {
            w.parse::<crate::config::HumanDuration>()
                .map_err(|e| ApiError::BadRequest(format!("window={w}: {e}")))
        })
        .transpose()?;
    let view = blocking(&s, move |m| m.inspect(&id)).await?;
    let latest = s.snapshots.borrow().clone().ok_or(ApiError::NotReady)?;
    let find = |snap: &crate::model::Snapshot| {
        snap.cgroups
            .iter()
            .find(|c| c.path == view.record.cgroup)
            .map(|c| c.syscalls.clone())
            .unwrap_or_default()
    };
    let now_calls = find(&latest);
    let (base_calls, seconds) = match window {
        None => (Vec::new(), None),
        Some(w) => {
            let from = latest
                .taken_at
                .checked_sub(w.0)
                .unwrap_or(std::time::UNIX_EPOCH);
            match s.history.since(from) {
                Some(base) => {
                    let secs = latest
                        .taken_at
                        .duration_since(base.taken_at)
                        .unwrap_or_default()
                        .as_secs_f64();
                    (find(&base), Some(secs))
                }
                None => (Vec::new(), None),
            }
        }
    };
    let mut rows: Vec<serde_json::Value> = now_calls
        .iter()
        .map(|c| {
            let b = base_calls.iter().find(|b| b.nr == c.nr);
            let count = c.count - b.map_or(0, |b| b.count.min(c.count));
            let lat_calls: u64 = c.latency_buckets.iter().sum::<u64>()
                - b.map_or(0, |b| b.latency_buckets.iter().sum::<u64>());
            let lat_sum =
                c.latency_sum_ns - b.map_or(0, |b| b.latency_sum_ns.min(c.latency_sum_ns));
            serde_json::json!({
                "nr": c.nr,
                "name": c.name,
                "count": count,
                "per_second": seconds.filter(|s| *s > 0.0).map(|s| count as f64 / s),
                "latency_mean_ns": (lat_calls > 0).then(|| lat_sum as f64 / lat_calls as f64),
            })
        })
        .filter(|r| r["count"].as_u64().unwrap_or(0) > 0)
        .collect();
    rows.sort_by(|a, b| b["count"].as_u64().cmp(&a["count"].as_u64()));
    rows.truncate(top);
    Ok(Json(serde_json::json!({
        "container": view.record.id,
        "name": view.record.name,
        "cgroup": view.record.cgroup,
        "window_seconds": seconds,
        "syscalls": rows,
    }))
    .into_response())
}
