//! `GET /api/v1/query`: the per-container series over a window, from the history's series
//! store alone (`history::query` computes them; this file turns query strings into its
//! parameters and its errors into HTTP statuses).

use std::time::Duration;

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiError, ErrorBody, ReadState, query};
use crate::{
    config::HumanDuration,
    history::query::{self as series_query, QueryError, QueryParams, QueryView},
    model::Engine,
};

#[derive(Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SeriesQuery {
    /// How far back: `300s` (default), `10m`; at most `60m`. Windows up to `10m` read the
    /// full-resolution tier (one point per tick), longer ones the one-minute tier.
    #[param(pattern = "^[0-9]{1,19}(ms|s|m)$")]
    window: Option<String>,
    /// Spacing of the points: default the resolution of the tier the window reads, never
    /// finer, at most the window, at most 3600 points.
    #[param(pattern = "^[0-9]{1,19}(ms|s|m)$")]
    step: Option<String>,
    /// Series whose mean over the window orders the containers, highest first: `cpu_cores`
    /// (default; `cpu`), `memory_bytes`, `pids`, `net_rx_bytes_per_second`,
    /// `net_tx_bytes_per_second`, `syscalls_per_second`, `netfilter_us_per_packet`,
    /// `new_flows_per_second`.
    #[param(value_type = Option<SortParam>)]
    sort: Option<String>,
    /// Keep the first N containers after sorting (default: every one).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100000)]
    top: Option<String>,
    /// Only this engine's containers: berth, docker, containerd, kubernetes, podman, lxc.
    #[param(value_type = Option<Engine>)]
    engine: Option<String>,
    /// Only containers whose name contains this.
    name: Option<String>,
    /// Only this container: id, name or unique id prefix.
    container: Option<String>,
}

/// The names `sort` takes (the document's enum; `history::query::sort_key` reads them).
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(super) enum SortParam {
    CpuCores,
    MemoryBytes,
    Pids,
    NetRxBytesPerSecond,
    NetTxBytesPerSecond,
    SyscallsPerSecond,
    NetfilterUsPerPacket,
    NewFlowsPerSecond,
    Cpu,
    Memory,
    Rx,
    Tx,
    Syscalls,
    Netfilter,
    Flows,
}

fn duration(param: &str, v: Option<&str>) -> Result<Option<Duration>, ApiError> {
    v.map(|v| {
        v.parse::<HumanDuration>()
            .map(|d| d.0)
            .map_err(|e| ApiError::BadRequest(format!("{param}={v}: {e}")))
    })
    .transpose()
}

impl SeriesQuery {
    fn params(self) -> Result<QueryParams, ApiError> {
        let defaults = QueryParams::default();
        let top = self.top.as_deref().map(super::top_param).transpose()?;
        let engine = self
            .engine
            .map(|e| {
                Engine::ALL
                    .into_iter()
                    .find(|x| x.name() == e)
                    .ok_or_else(|| {
                        let names: Vec<&str> = Engine::ALL.iter().map(|x| x.name()).collect();
                        ApiError::BadRequest(format!("engine={e}: use one of {}", names.join(", ")))
                    })
            })
            .transpose()?;
        Ok(QueryParams {
            window: duration("window", self.window.as_deref())?.unwrap_or(defaults.window),
            step: duration("step", self.step.as_deref())?,
            sort: self.sort.unwrap_or(defaults.sort),
            top,
            engine,
            name: self.name,
            container: self.container,
        })
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Empty => ApiError::NotReady,
            QueryError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/query", tag = "query",
    description = "Per-container series over a window (CPU, memory, pids, network, syscalls, netfilter cost per packet and per hook, new flows), one value per step, rates computed from counter deltas; host totals. `null` where unknown (no probe, the container not present yet).",
    params(SeriesQuery),
    responses(
        (status = 200, description = "The series", body = QueryView),
        (status = 400, description = "A query parameter the route does not accept, or a bad value (named)", body = ErrorBody),
        (status = 404, description = "`container` matches no container in the window", body = ErrorBody),
        (status = 503, description = "No history yet: the agent is starting", body = ErrorBody),
    ))]
pub(super) async fn get_query(
    State(s): State<ReadState>,
    q: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(q)?.params()?;
    let view: QueryView = s
        .history
        .with_series_read(|series| series_query::run(series, &params))?;
    Ok(Json(view).into_response())
}
