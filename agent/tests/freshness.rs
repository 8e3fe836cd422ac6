//! No loss of freshness (issue 14): what `/metrics` and the read API show is at most one
//! collection old, also now that `/metrics` is encoded once per snapshot and cached. A
//! container's process is killed from outside berth (no API call tells the agent); the change
//! must show in `/metrics` and in the API by the first snapshot that was collected entirely
//! after it, counted in snapshots (their `checked_at`), not in seconds.

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{Agent, busybox_rootfs, sample, unique, wait_for};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// When the latest published snapshot was taken (unix seconds).
fn snapshot_time(agent: &Agent) -> f64 {
    let (status, body) = agent.get("/api/v1/diagnose");
    assert_eq!(status, 200, "GET /api/v1/diagnose: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["checked_at"].as_f64().expect("checked_at")
}

/// `berth_container_running` of `name` in `/metrics`.
fn running_metric(agent: &Agent, name: &str) -> Option<f64> {
    sample(
        &agent.metrics(),
        "berth_container_running",
        &[("name", name)],
    )
}

/// The read API's status of `name`.
fn api_status(agent: &Agent, name: &str) -> String {
    let (status, body) = agent.get(&format!("/api/v1/containers/{name}"));
    assert_eq!(status, 200, "GET /api/v1/containers/{name}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["status"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_container_killed_behind_the_agents_back_shows_in_metrics_and_the_api_within_one_interval() {
    let agent = Agent::start();
    let rootfs = busybox_rootfs(agent.dir.path()).display().to_string();
    let name = unique("fresh");
    agent.ok(&["run", "-d", "--name", &name, &rootfs, "sleep", "300"]);
    let pid = agent.wait_status(&name, "running", 10)["state"]["pid"]
        .as_u64()
        .expect("a running container has a pid");
    // Both readers show it running (the cache filled with a snapshot that has it).
    wait_for(Duration::from_secs(10), "running in /metrics", || {
        (running_metric(&agent, &name) == Some(1.0)).then_some(())
    });
    assert_eq!(api_status(&agent, &name), "running");

    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(killed.success(), "kill -9 {pid}");
    wait_for(Duration::from_secs(10), "the killed process to go", || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    let gone = now();

    // Snapshots taken after the process was gone; the first may have started collecting
    // before, the second cannot have: by then both readers must show the change.
    let mut after: Vec<f64> = Vec::new();
    let seen_in = wait_for(
        Duration::from_secs(30),
        "two snapshots after the kill",
        || {
            let t = snapshot_time(&agent);
            if t > gone && !after.contains(&t) {
                after.push(t);
            }
            let metric = running_metric(&agent, &name);
            let status = api_status(&agent, &name);
            if metric == Some(0.0) && status != "running" {
                return Some(after.len());
            }
            assert!(
                after.len() < 2,
                "{} snapshots taken after the kill and still: /metrics running={metric:?}, \
                 API status {status}",
                after.len()
            );
            None
        },
    );
    assert!(
        seen_in <= 2,
        "seen only after {seen_in} snapshots taken after the change"
    );
    agent.ok(&["rm", "-f", &name]);
}
