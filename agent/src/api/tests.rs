//! Router tests with `oneshot`: the read routes answer from a fixture snapshot alone (no agent
//! state on disk, no container manager: [`ReadState`] has none), and the write routes exist
//! only where a [`WriteState`] is given.

use std::{path::PathBuf, sync::Arc, time::Duration};

use axum::{
    body::{Body, to_bytes},
    http::{Request, StatusCode, header},
};
use tokio::sync::watch;
use tower::ServiceExt as _;

use super::*;
use crate::{
    cgroup::CgroupMode,
    history::History,
    metrics,
    model::fixture::{self, IPT_ID, MAP_ID},
};

fn read_state(snapshot: Option<Snapshot>) -> ReadState {
    let history = Arc::new(History::new(
        Duration::from_secs(5),
        Duration::from_secs(900),
    ));
    // A base 10 s before the fixture, with fewer new flows: a window has a rate.
    history.push(Arc::new(fixture::snapshot_at(Duration::ZERO, 100)));
    // The agent records every snapshot it publishes.
    if let Some(s) = &snapshot {
        history.push(Arc::new(s.clone()));
    }
    let (_tx, rx) = watch::channel(snapshot.map(Arc::new));
    ReadState {
        metrics: Arc::new(metrics::Exposition::new(rx.clone(), 20)),
        snapshots: rx,
        system: Arc::new(SystemInfo {
            version: "test",
            kernel: "6.18".into(),
            cgroup: Hierarchy {
                mode: CgroupMode::Hybrid,
                unified_mount: PathBuf::from("/sys/fs/cgroup/unified"),
                v1: Vec::new(),
            },
            mode: Mode::Observe,
            mode_reason: "test".into(),
            tracked_root: TrackedRoot::fixture(),
            discovery: crate::config::DiscoveryConfig::default(),
            runtime: None,
            runtime_error: Some("test".into()),
            seccomp: crate::runtime::seccomp::default_info(
                &crate::runtime::bundle::docker_cap_names(),
            ),
            port_backends: crate::net::portmap::detect_support(),
        }),
        history,
    }
}

fn now() -> Snapshot {
    fixture::snapshot_at(Duration::from_secs(10), 300)
}

async fn get(router: Router, uri: &str) -> (StatusCode, String, String) {
    let res = router
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

async fn json(uri: &str) -> serde_json::Value {
    let (status, _, body) = get(read_router(read_state(Some(now()))), uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn readyz_waits_for_the_first_snapshot() {
    let (status, _, body) = get(read_router(read_state(None)), "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("starting"), "{body}");
    let (status, _, _) = get(read_router(read_state(Some(now()))), "/readyz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_are_served_as_openmetrics() {
    let (status, ctype, body) = get(read_router(read_state(Some(now()))), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("berth_container_running{container=\""),
        "{body}"
    );
}

#[tokio::test]
async fn system_reports_the_tracked_root_probes_and_runtime_state() {
    let v = json("/api/v1/system").await;
    assert_eq!(v["tracked_root"]["path"], "/berth");
    assert_eq!(v["cgroup"]["mode"], "hybrid");
    assert_eq!(v["probes"][2]["name"], "netfilter");
    assert_eq!(v["probes"][2]["paths"]["fentry"], "unavailable (EPERM)");
    assert_eq!(v["runtime_error"], "test");
    assert_eq!(v["mode"], "observe");
    assert_eq!(v["mode_reason"], "test");
    assert_eq!(v["discovery"]["proc"], "/proc");
}

#[tokio::test]
async fn containers_come_from_the_snapshot_running_ones_by_default() {
    let v = json("/api/v1/containers").await;
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["media", "legacy"]);
    let all = json("/api/v1/containers?all=true").await;
    assert_eq!(all.as_array().unwrap().len(), 3);
    let c = json("/api/v1/containers/media").await;
    assert_eq!(c["id"], MAP_ID);
    assert_eq!(c["engine"], "berth");
    assert_eq!(c["status"], "running");
    assert_eq!(c["cgroup"], format!("/berth/{MAP_ID}"));
    assert_eq!(c["cgroup_id"], 101);
    assert_eq!(c["network"]["port_backend"], "nft-map");
    assert_eq!(c["runtime"], "runc", "berth's record is flattened in");
    assert_eq!(c["syscalls"][1]["name"], "write");
    let by_prefix = json("/api/v1/containers/bbb").await;
    assert_eq!(by_prefix["name"], "legacy");
}

#[tokio::test]
async fn unknown_and_ambiguous_references_are_client_errors() {
    let router = || read_router(read_state(Some(now())));
    let (status, _, body) = get(router(), "/api/v1/containers/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("no such container: nope"), "{body}");
    let mut two = now();
    two.containers[1].id = format!("aa{}", &IPT_ID[2..]);
    let (status, _, body) = get(read_router(read_state(Some(two))), "/api/v1/containers/aa").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, _) = get(router(), "/api/v1/containers?al=true").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn stats_and_syscalls_over_a_window_come_from_the_history() {
    let s = json("/api/v1/containers/media/stats").await;
    assert_eq!(s["status"], "running");
    assert_eq!(s["stats"]["memory_usage_bytes"], 10 << 20);
    let batch = json("/api/v1/containers/batch/stats").await;
    assert_eq!(batch["stats"]["memory_usage_bytes"], 0, "not running: zero");
    let v = json("/api/v1/containers/media/syscalls?top=1").await;
    assert_eq!(v["syscalls"].as_array().unwrap().len(), 1);
    assert_eq!(v["syscalls"][0]["name"], "write");
    assert_eq!(v["syscalls"][0]["count"], 1200);
    assert_eq!(v["window_seconds"], serde_json::Value::Null);
    // The fixture's counts do not change between base and now: nothing in the window.
    let w = json("/api/v1/containers/media/syscalls?window=60s").await;
    assert_eq!(w["window_seconds"], 10.0);
    assert_eq!(w["syscalls"].as_array().unwrap().len(), 0);
    let (status, _, _) = get(
        read_router(read_state(Some(now()))),
        "/api/v1/containers/media/syscalls?top=0",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn ports_show_each_range_with_its_netfilter_cost_and_rate() {
    let v = json("/api/v1/ports?window=60s").await;
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "legacy", "costliest first");
    assert_eq!(rows[0]["netfilter"]["window_us_per_second"], 1200.0);
    let media = &rows[1];
    assert_eq!(media["name"], "media");
    assert_eq!(media["backend"], "nft-map");
    assert_eq!(media["publish"]["proto"], "udp");
    assert_eq!(media["netfilter"]["new_flows"], 300);
    assert_eq!(media["netfilter"]["new_flows_per_second"], 20.0);
    assert_eq!(media["netfilter"]["ports"][0]["port"], 40000);
    assert_eq!(rows[0]["netfilter"]["prerouting_ns_per_packet"], 60000.0);
    assert_eq!(media["netfilter"]["window_us_per_packet"], 3.5);
    assert_eq!(media["netfilter"]["ports"][0]["new_flows_per_second"], 20.0);
    let one = json("/api/v1/ports?window=60s&container=media&top=1").await;
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["name"], "media");
    assert_eq!(one[0]["netfilter"]["ports"].as_array().unwrap().len(), 1);
    for (uri, code) in [
        ("/api/v1/ports?top=0", StatusCode::BAD_REQUEST),
        ("/api/v1/ports?top=x", StatusCode::BAD_REQUEST),
        ("/api/v1/ports?container=nope", StatusCode::NOT_FOUND),
    ] {
        let (status, _, body) = get(read_router(read_state(Some(now()))), uri).await;
        assert_eq!(status, code, "{uri}: {body}");
    }
    let (status, _, _) = get(
        read_router(read_state(Some(now()))),
        "/api/v1/ports?window=x",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn query_series_are_rates_between_the_fixture_s_two_frames() {
    let v = json("/api/v1/query?window=10s&step=10s&sort=netfilter").await;
    let t = fixture::TAKEN_AT as f64;
    assert_eq!(v["window_seconds"], 10.0);
    assert_eq!(v["step_seconds"], 10.0);
    assert_eq!(v["resolution_seconds"], 1.0);
    assert_eq!(v["timestamps"], serde_json::json!([t + 10.0]));
    let names: Vec<&str> = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["legacy", "media"], "60 µs per packet before 3.5");
    let media = &v["containers"][1];
    assert_eq!(media["id"], MAP_ID);
    assert_eq!(media["engine"], "berth");
    assert_eq!(media["status"], "running");
    let m = &media["series"];
    // 200 new flows in 10 s; 200 prerouting packets at 2.5 µs and 1 µs more at postrouting.
    assert_eq!(m["new_flows_per_second"], serde_json::json!([20.0]));
    assert_eq!(m["netfilter_us_per_packet"], serde_json::json!([3.5]));
    let hooks = &m["netfilter_us_per_second_by_hook"];
    assert_eq!(hooks["prerouting"], serde_json::json!([50.0]));
    assert_eq!(hooks["postrouting"], serde_json::json!([20.0]));
    assert_eq!(hooks["forward"], serde_json::json!([0.0]));
    assert_eq!(m["cpu_cores"], serde_json::json!([0.0]));
    assert_eq!(m["memory_bytes"], serde_json::json!([10485760.0]));
    assert_eq!(m["pids"], serde_json::json!([3.0]));
    assert_eq!(m["syscalls_per_second"], serde_json::json!([0.0]));
    assert_eq!(m["net_rx_bytes_per_second"], serde_json::json!([0.0]));
    // The host: every prerouting packet (400 more, 12.5 ms more) and every new flow.
    assert_eq!(
        v["host"]["netfilter_us_per_packet"],
        serde_json::json!([31.25])
    );
    assert_eq!(v["host"]["new_flows_per_second"], serde_json::json!([40.0]));
    assert_eq!(v["host"]["memory_bytes"], serde_json::json!([20971520.0]));

    // Defaults: 300 one-second steps; the history holds two frames 10 s apart.
    let d = json("/api/v1/query").await;
    assert_eq!(d["timestamps"].as_array().unwrap().len(), 300);
    let cpu = d["containers"][0]["series"]["cpu_cores"]
        .as_array()
        .unwrap();
    assert_eq!(cpu.len(), 300);
    assert!(
        cpu.iter().all(|c| c.is_null()),
        "no two frames one step apart"
    );
    let mem = d["containers"][0]["series"]["memory_bytes"]
        .as_array()
        .unwrap();
    assert_eq!(mem[299], 10485760.0);
    assert!(mem[..289].iter().all(|c| c.is_null()));
    let one = json("/api/v1/query?container=legacy&engine=berth&name=ga&top=5").await;
    assert_eq!(one["containers"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn query_parameters_are_checked_and_named() {
    let router = || read_router(read_state(Some(now())));
    for (uri, named, code) in [
        ("window=x", "window=x", StatusCode::BAD_REQUEST),
        ("window=2h", "window=2h", StatusCode::BAD_REQUEST),
        ("window=0s", "window=0s", StatusCode::BAD_REQUEST),
        ("window=2h0m", "window=", StatusCode::BAD_REQUEST),
        ("window=90m", "window=5400s", StatusCode::BAD_REQUEST),
        ("step=500ms", "step=0.5s", StatusCode::BAD_REQUEST),
        ("window=20m&step=10s", "step=10s", StatusCode::BAD_REQUEST),
        ("sort=bogus", "sort=bogus", StatusCode::BAD_REQUEST),
        ("top=abc", "top=abc", StatusCode::BAD_REQUEST),
        ("top=0", "top=0", StatusCode::BAD_REQUEST),
        ("engine=rkt", "engine=rkt", StatusCode::BAD_REQUEST),
        ("foo=1", "foo", StatusCode::BAD_REQUEST),
        ("container=nope", "container=nope", StatusCode::NOT_FOUND),
    ] {
        let (status, _, body) = get(router(), &format!("/api/v1/query?{uri}")).await;
        assert_eq!(status, code, "{uri}: {body}");
        let err: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            err["error"].as_str().unwrap().contains(named),
            "{uri}: {body}"
        );
    }
    let (status, _, _) = get(read_router(read_state(None)), "/api/v1/query").await;
    assert_eq!(status, StatusCode::OK, "the history has the base frame");
}

#[tokio::test]
async fn cgroups_images_and_diagnose_come_from_the_snapshot() {
    let cg = json("/api/v1/cgroups").await;
    assert_eq!(cg.as_array().unwrap().len(), 3);
    let images = json("/api/v1/images").await;
    assert_eq!(images[0]["names"][0], "busybox:latest");
    let d = json("/api/v1/diagnose").await;
    assert_eq!(d["checked_at"], (fixture::TAKEN_AT + 10) as f64);
    assert_eq!(d["findings"][0]["subject"], "container legacy");
}

#[tokio::test]
async fn the_read_router_has_no_mutating_routes_and_the_write_router_needs_a_runtime() {
    let post = |uri: &str| {
        Request::post(uri)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap()
    };
    let res = read_router(read_state(Some(now())))
        .oneshot(post("/api/v1/containers"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (refresh, _rx) = Refresh::channel();
    let write = WriteState {
        snapshots: read_state(Some(now())).snapshots,
        manager: None,
        observe_reason: Some("no runtime here".into()),
        refresh,
        pull: Default::default(),
    };
    let res = app(read_state(Some(now())), Some(write))
        .oneshot(post("/api/v1/containers"))
        .await
        .unwrap();
    // Routed, but this agent has no runtime: observe mode.
    assert_eq!(res.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn every_mutating_route_of_an_agent_in_observe_mode_is_refused_with_the_reason() {
    let (refresh, _rx) = Refresh::channel();
    let write = WriteState {
        snapshots: read_state(Some(now())).snapshots,
        manager: None,
        observe_reason: Some("runtime.launch = false".into()),
        refresh,
        pull: Default::default(),
    };
    let router = || app(read_state(Some(now())), Some(write.clone()));
    for (method, uri, body) in [
        ("POST", "/api/v1/containers", r#"{"image":"busybox"}"#),
        ("POST", "/api/v1/containers", "not even json"),
        ("POST", "/api/v1/containers/media/stop", ""),
        ("POST", "/api/v1/containers/media/kill?signal=TERM", ""),
        ("DELETE", "/api/v1/containers/media?force=true", ""),
        ("POST", "/api/v1/containers/media/update", "{}"),
        ("POST", "/api/v1/images/import", r#"{"path":"/x.tar"}"#),
        ("DELETE", "/api/v1/images/busybox:latest", ""),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let res = router().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::CONFLICT, "{method} {uri}");
        let text = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(
            v["error"],
            "this agent runs in observe mode (runtime.launch = false): it lists and measures the \
             host's containers but runs, changes and removes none",
            "{method} {uri}"
        );
    }
    // Reads are served; an unknown path is still a 404, not a refusal.
    let (status, _, _) = get(router(), "/api/v1/containers/media").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(router(), "/api/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_ui_is_served_from_the_binary() {
    let router = || read_router(read_state(Some(now())));
    let (status, ctype, body) = get(router(), "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(body.contains("/ui/app.js"), "{body}");
    let (status, ctype, body) = get(router(), "/ui/app.js").await;
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
    let (status, _, _) = get(read_router(read_state(Some(now()))), "/api/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_request_not_marked_as_allowed_secrets_sees_no_env_value_and_no_log() {
    let router = || read_router(read_state(Some(now())));
    for uri in ["/api/v1/containers?all=true", "/api/v1/containers/media"] {
        let (status, _, body) = get(router(), uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert!(!body.contains("MODE=fixture"), "{uri}: {body}");
        assert!(body.contains("MODE=<redacted>"), "{uri}: {body}");
    }
    let (status, _, body) = get(router(), "/api/v1/containers/media/logs").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn the_socket_router_shows_env_values_and_sends_security_headers() {
    let (tx, _rx) = Refresh::channel();
    let write = WriteState {
        snapshots: read_state(Some(now())).snapshots,
        manager: None,
        observe_reason: None,
        refresh: tx,
        pull: Default::default(),
    };
    let router = socket_app(read_state(Some(now())), write, 1024);
    let res = router
        .oneshot(
            axum::http::Request::builder()
                .uri("/api/v1/containers/media")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers();
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&body).contains("MODE=fixture"));
}

/// The fixture plus a Docker container found from its cgroup (no berth record).
fn with_docker(id: &str) -> Snapshot {
    let mut snap = now();
    let mut c = snap.containers[0].clone();
    c.engine = crate::model::Engine::Docker;
    c.id = id.to_owned();
    c.name = id[..12].to_owned();
    c.cgroup = format!("/docker/{id}");
    c.berth = None;
    snap.containers.push(c);
    snap
}

#[tokio::test]
async fn mutating_verbs_on_a_foreign_container_are_refused_with_its_engine_named() {
    let id = "d0c4e7".repeat(10) + "d0c4";
    let snap = with_docker(&id);
    let (refresh, _rx) = Refresh::channel();
    let (_tx, snapshots) = watch::channel(Some(Arc::new(snap.clone())));
    let write = WriteState {
        snapshots,
        manager: None,
        observe_reason: None,
        refresh,
        pull: Default::default(),
    };
    let router = || app(read_state(Some(snap.clone())), Some(write.clone()));
    let short = &id[..12];
    for (method, uri) in [
        ("POST", format!("/api/v1/containers/{short}/stop")),
        ("POST", format!("/api/v1/containers/{id}/kill")),
        ("DELETE", format!("/api/v1/containers/{id}?force=true")),
        ("POST", format!("/api/v1/containers/{short}/update")),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let res = router().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::CONFLICT, "{method} {uri}");
        let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains(&format!(
                "container {}",
                uri.split('/').nth(4).unwrap().split('?').next().unwrap()
            )) && body.contains(
                "is managed by docker; berth does not change containers it did not start"
            ),
            "{body}"
        );
    }
    // berth's own containers still reach the manager (here: none, so the observe-mode 409).
    let req = Request::post("/api/v1/containers/media/stop")
        .body(Body::empty())
        .unwrap();
    let res = router().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("observe mode"),
        "{body:?}"
    );
    // The read side lists it with its engine.
    let (status, _, body) = get(
        read_router(read_state(Some(snap.clone()))),
        &format!("/api/v1/containers/{short}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["engine"], "docker");
    assert!(v.get("runtime").is_none(), "no berth record: {v}");
}

#[tokio::test]
async fn a_reused_id_in_a_new_cgroup_starts_its_window_from_fresh_counters() {
    // The base in the history has `media` in cgroup 101; now the same id sits in a new cgroup.
    let mut snap = now();
    let media = snap
        .containers
        .iter_mut()
        .find(|c| c.name == "media")
        .unwrap();
    media.cgroup_id = Some(9001);
    let (status, _, body) = get(
        read_router(read_state(Some(snap))),
        "/api/v1/containers/media/syscalls?window=60s&top=1",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let w: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        w["syscalls"][0]["count"], 1200,
        "not diffed against another cgroup: {w}"
    );
}

#[tokio::test]
async fn a_docker_host_s_ports_and_findings_name_the_engine_and_rates_use_the_window() {
    let mut state = read_state(Some(fixture::docker_host_at(Duration::from_secs(10), 300)));
    let history = Arc::new(History::new(
        Duration::from_secs(5),
        Duration::from_secs(900),
    ));
    history.push(Arc::new(fixture::docker_host_at(Duration::ZERO, 100)));
    state.history = history;
    let router = read_router(state);
    let (status, _, body) = get(router.clone(), "/api/v1/ports").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sfu = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "sfu")
        .expect("the docker container's range");
    assert_eq!(sfu["engine"], "docker");
    assert_eq!(sfu["netfilter"]["new_flows_per_second"], 200.0);
    assert!(sfu["netfilter"]["new_flow_ns_per_packet"].as_f64().unwrap() > 20_000.0);

    let (status, _, body) = get(router.clone(), "/api/v1/diagnose?window=60s").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["findings"][0]["subject"], "container sfu");
    let evidence = d["findings"][0]["evidence"].as_array().unwrap();
    assert!(
        evidence.iter().any(|e| e
            .as_str()
            .unwrap()
            .starts_with("200.0 new flows per second over the last 10 s")),
        "{evidence:?}"
    );
    let (status, _, body) = get(router, "/api/v1/diagnose?window=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("window=soon"), "{body}");
}
