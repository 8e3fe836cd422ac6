//! The syscall probe on the real kernel: exact counts for a known workload in a cgroup made
//! below the agent's root while it runs (the `cgroup_mkdir` hook tracks it from its first call,
//! before any tick lists it), nothing counted for a cgroup outside the root that is no
//! container, and every program detached when the agent stops. Other engines' containers:
//! `foreign_probes.rs`.

mod common;

use std::time::Duration;

use common::{Agent, Cgroup, getppid_in, sample, wait_for};

const CALLS: u64 = 100_000;

/// The value of `name` for the cgroup `cgroup` (and the other `labels`), whatever else the
/// series carries and in whatever order: a cgroup's series also name its container, engine and
/// pod (empty for a cgroup that is no container).
fn cgroup_sample(text: &str, name: &str, cgroup: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: Vec<String> = [("cgroup", cgroup)]
        .iter()
        .chain(labels)
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        let have: Vec<&str> = set.split(',').collect();
        want.iter()
            .all(|w| have.contains(&w.as_str()))
            .then(|| value.trim().parse().ok())?
    })
}

#[test]
fn getppid_calls_in_a_fresh_cgroup_are_counted_exactly() {
    let agent = Agent::start();
    let system = agent.system();
    let probe = &system["probes"][0];
    assert_eq!(probe["name"], "syscalls");
    assert_eq!(
        probe["attached"],
        true,
        "syscall probe not attached: {probe}\n{}",
        agent.log()
    );

    let cg = Cgroup::create(&agent.root_dir, "work");
    getppid_in(&cg, CALLS);
    let label = cg.label();
    let labels = [("syscall", "getppid")];
    let count = wait_for(
        Duration::from_secs(10),
        "the getppid count in /metrics",
        || {
            cgroup_sample(
                &agent.metrics(),
                "berth_cgroup_syscalls_total",
                &label,
                &labels,
            )
            .filter(|&v| v >= CALLS as f64)
        },
    );
    assert!(
        (CALLS as f64..=CALLS as f64 + 100.0).contains(&count),
        "berth counted {count} getppid calls for {label}, the workload made {CALLS}"
    );

    // The probe's own cost, from the kernel's BPF statistics.
    let text = agent.metrics();
    let runs = sample(&text, "berth_probe_runs_total", &[("probe", "syscalls")]).unwrap_or(0.0);
    let secs = sample(
        &text,
        "berth_probe_run_seconds_total",
        &[("probe", "syscalls")],
    )
    .unwrap_or(0.0);
    assert!(
        runs >= CALLS as f64,
        "probe runs {runs}: fewer than the workload's syscalls"
    );
    assert!(
        secs > 0.0 && secs < 1.0,
        "probe run time {secs} s for ~{runs} runs"
    );

    // The JSON API agrees with /metrics.
    let (status, body) = agent.get("/api/v1/cgroups");
    assert_eq!(status, 200);
    let cgroups: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entry = cgroups
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == label.as_str())
        .unwrap_or_else(|| panic!("{label} missing from /api/v1/cgroups: {body}"));
    let api_count = entry["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "getppid")
        .map(|s| s["count"].as_u64().unwrap());
    assert_eq!(api_count, Some(count as u64));
}

#[test]
fn tasks_outside_the_tracked_root_are_not_counted() {
    let agent = Agent::start();
    // A sibling of the agent's root: same parent, not below it.
    let outside = Cgroup::create(&common::cgroup2_mount(), &common::unique("outside"));
    getppid_in(&outside, CALLS);
    let inside = Cgroup::create(&agent.root_dir, "inside");
    getppid_in(&inside, 10);
    let inside_label = inside.label();
    let text = wait_for(Duration::from_secs(10), "the inside cgroup's count", || {
        let text = agent.metrics();
        cgroup_sample(
            &text,
            "berth_cgroup_syscalls_total",
            &inside_label,
            &[("syscall", "getppid")],
        )
        .filter(|&v| v >= 10.0)
        .map(|_| text)
    });
    // Outside the root only containers (of other engines, on this shared host) are counted.
    let root_prefix = format!("cgroup=\"/{}", agent.root_name);
    for line in text
        .lines()
        .filter(|l| l.starts_with("berth_cgroup_syscalls_total{") && l.contains("container=\"\""))
    {
        assert!(
            line.contains(&root_prefix),
            "a cgroup outside the tracked root {} that is no container is reported: {line}",
            agent.root_name
        );
    }
    assert!(!text.contains(&outside.label()));
}

#[test]
fn stopping_the_agent_detaches_its_programs() {
    let mut agent = Agent::start();
    let ids: Vec<u32> = agent.system()["probes"][0]["program_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert!(!ids.is_empty(), "no program ids reported");
    let loaded = || -> Vec<u32> {
        aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .map(|p| p.id())
            .collect()
    };
    let before = loaded();
    for id in &ids {
        assert!(
            before.contains(id),
            "program {id} not loaded while the agent runs"
        );
    }
    let status = agent.stop();
    assert!(
        status.success(),
        "agent exited with {status}:\n{}",
        agent.log()
    );
    // The kernel frees a program once its last link and fd are gone.
    wait_for(
        Duration::from_secs(5),
        "the agent's programs to unload",
        || {
            let now = loaded();
            ids.iter().all(|id| !now.contains(id)).then_some(())
        },
    );
    assert!(agent.log().contains("detached"), "{}", agent.log());
    assert!(
        !agent.root_dir.exists(),
        "the agent left its empty cgroup root {}",
        agent.root_dir.display()
    );
}

#[test]
fn latency_histograms_place_known_sleeps_in_their_log2_bucket() {
    let agent = Agent::start_with("[probes.syscalls]\nlatency = true\n");
    let probe = &agent.system()["probes"][0];
    assert_eq!(
        probe["attach"], "raw_tracepoint/sys_enter+sys_exit",
        "{probe}"
    );
    assert_eq!(probe["attached"], true, "{probe}\n{}", agent.log());
    let cg = Cgroup::create(&agent.root_dir, "lat");
    // 20 sleeps of 10 ms: 10^7 ns lies in [2^23, 2^24) ns.
    common::syscalls_in(&cg, 1000, 20, 10);
    let label = cg.label();
    let entry = wait_for(
        Duration::from_secs(10),
        "nanosleep latency in the API",
        || {
            let (_, body) = agent.get("/api/v1/cgroups");
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let cgs = v.as_array()?;
            let c = cgs.iter().find(|c| c["path"] == label.as_str())?;
            let s = c["syscalls"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == "nanosleep")?
                .clone();
            (s["count"] == 20).then_some(s)
        },
    );
    let buckets: Vec<u64> = entry["latency_buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    // Timer slack lets a 10 ms sleep take a little longer, never less.
    assert!(
        buckets[23] >= 18,
        "10 ms sleeps not in bucket 23: {buckets:?}"
    );
    assert_eq!(buckets.iter().sum::<u64>(), 20, "{buckets:?}");
    let sum_ms = entry["latency_sum_ns"].as_u64().unwrap() as f64 / 1e6;
    assert!(
        (200.0..400.0).contains(&sum_ms),
        "20 x 10 ms summed to {sum_ms} ms"
    );
    // And /metrics has the histogram for the cgroup.
    let text = agent.metrics();
    let count = cgroup_sample(
        &text,
        "berth_cgroup_syscall_latency_seconds_count",
        &label,
        &[],
    );
    assert!(count.unwrap_or(0.0) >= 20.0, "histogram count {count:?}");
}

#[test]
fn counters_continue_across_agent_restarts() {
    let mut agent = Agent::start();
    let cg = Cgroup::create(&agent.root_dir, "keep");
    let label = cg.label();
    let labels = [("syscall", "getppid")];
    let count_at_least = |agent: &Agent, n: u64| {
        wait_for(
            Duration::from_secs(10),
            &format!("{n} getppid calls"),
            || {
                cgroup_sample(
                    &agent.metrics(),
                    "berth_cgroup_syscalls_total",
                    &label,
                    &labels,
                )
                .filter(|&v| v >= n as f64)
            },
        )
    };
    getppid_in(&cg, CALLS);
    count_at_least(&agent, CALLS);
    // A clean restart, then a crash: the pinned maps carry the counts over both.
    let status = agent.stop();
    assert!(status.success());
    agent.spawn();
    getppid_in(&cg, CALLS);
    let after_restart = count_at_least(&agent, 2 * CALLS);
    agent.kill9();
    agent.spawn();
    getppid_in(&cg, CALLS);
    let after_crash = count_at_least(&agent, 3 * CALLS);
    assert!(
        after_restart <= 2.0 * CALLS as f64 + 200.0 && after_crash <= 3.0 * CALLS as f64 + 300.0,
        "counts {after_restart} then {after_crash}: more than the workload made"
    );
}

#[test]
fn a_containers_busiest_syscalls_are_served_cumulative_and_over_a_window() {
    let agent = Agent::start();
    let rootfs = common::busybox_rootfs(agent.dir.path());
    let name = common::unique("sys");
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        rootfs.to_str().unwrap(),
        "sh",
        "-c",
        "while :; do cat /etc/passwd >/dev/null; sleep 0.05; done",
    ]);
    let path = format!("/api/v1/containers/{name}/syscalls?top=3");
    let v = wait_for(Duration::from_secs(10), "syscalls of the container", || {
        let (code, body) = agent.get(&path);
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["syscalls"].as_array()?.len() == 3).then_some(v)
    });
    let counts: Vec<u64> = v["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["count"].as_u64().unwrap())
        .collect();
    assert!(
        counts.windows(2).all(|w| w[0] >= w[1]),
        "not busiest first: {v}"
    );
    for s in v["syscalls"].as_array().unwrap() {
        let n = s["name"].as_str().unwrap();
        assert!(
            !n.is_empty() && !n.starts_with("syscall_"),
            "unnamed syscall: {v}"
        );
    }
    // Over a window: rates, and counts no larger than the cumulative ones.
    std::thread::sleep(Duration::from_secs(6));
    let (code, body) = agent.get(&format!(
        "/api/v1/containers/{name}/syscalls?top=3&window=5s"
    ));
    assert_eq!(code, 200, "{body}");
    let w: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(w["window_seconds"].as_f64().unwrap() > 0.0, "{w}");
    assert!(
        w["syscalls"][0]["per_second"].as_f64().unwrap() > 0.0,
        "{w}"
    );
    for (path, needle) in [
        (format!("/api/v1/containers/{name}/syscalls?top=0"), "top=0"),
        (
            format!("/api/v1/containers/{name}/syscalls?window=forever"),
            "window=forever",
        ),
        (
            "/api/v1/containers/nope/syscalls".to_owned(),
            "no such container",
        ),
    ] {
        let (code, body) = agent.get(&path);
        assert!((400..500).contains(&code), "{path}: {code} {body}");
        assert!(body.contains(needle), "{path}: {body}");
    }
}
