//! A real Docker host end to end ([`DockerHost`], tests/common/docker.rs: Debian's dockerd
//! started by the test in namespaces of its own, an offline busybox image, and the agent running
//! INSIDE dockerd's network namespace, as on a real host where both share the host's, seeing
//! the host's cgroup tree). berth lists Docker's containers from their cgroups and names them
//! from the Engine API (or, with no API, from dockerd's files), refuses to change them, and
//! forgets them once gone: also after 100 start/remove cycles, with no memory kept for them.
//!
//! What a port mapping costs (traffic, diagnose) is in tests/docker_traffic.rs; the probes'
//! counts of a Docker container against the truth in tests/docker_probes.rs.

mod common;

use std::time::{Duration, Instant};

use berth_testkit::Dockerd;
use common::docker::{DockerHost, has_media_metadata, inspect, run, run_media, run_portless, tail};
use serde_json::{Value, json};

/// The message of a refused mutation of another engine's container (api/write.rs).
const REFUSED: &str = "is managed by docker; berth does not change containers it did not start";

#[test]
fn a_docker_container_with_100_published_ports_is_listed_refused_and_forgotten() {
    let host = DockerHost::start();
    let (id, run_took) = run_media(&host);
    let ip = inspect(&host, &id, "{{.NetworkSettings.IPAddress}}");
    let (c, listed_after) = host.wait_listed(&id, Duration::from_secs(5), |c| {
        has_media_metadata(c, &id, &ip)
    });
    eprintln!(
        "docker run with 100 UDP ports: {:.2} s; listed by berth with its metadata {:.2} s later",
        run_took.as_secs_f64(),
        listed_after.as_secs_f64()
    );
    assert_eq!(c["status"], "running", "{c}");
    assert_eq!(c["cgroup"], format!("/docker/{id}"), "{c}");
    let ports: u64 = c["network"]["publish"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["host"]["end"].as_u64().unwrap() - p["host"]["start"].as_u64().unwrap() + 1)
        .sum();
    assert_eq!(ports, 100);
    // Docker's creation time (before the network and the cgroup were made), to the µs.
    let created = inspect(&host, &id, "{{.Created}}");
    let created: f64 = berth_testkit::sh(&format!("date -d {created} +%s.%N"))
        .trim()
        .parse()
        .unwrap();
    let got = c["created_at"].as_f64().unwrap_or(0.0);
    assert!(
        (got - created).abs() < 1e-3,
        "created_at {got}, Docker's {created}"
    );
    assert_eq!(
        c["log_path"].as_str(),
        Some(inspect(&host, &id, "{{.LogPath}}").as_str())
    );

    // Its cgroup's usage, as `docker stats` shows it: the tasks its pids controller counts
    // (read here from the controller's own file: v1 in hybrid mode), and memory in use.
    let pids_dir = ["/sys/fs/cgroup/pids".into(), common::cgroup2_mount()]
        .into_iter()
        .map(|m: std::path::PathBuf| m.join(format!("docker/{id}")))
        .find(|d| d.join("pids.current").exists())
        .expect("media's pids.current in the pids hierarchy or the cgroup2 tree");
    let tasks = || -> u64 {
        std::fs::read_to_string(pids_dir.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // Other engines' stats are read every few seconds (collect/foreign_stats.rs): the first
    // may predate runc's exit from the cgroup.
    let (stats, truth) = common::wait_for(Duration::from_secs(15), "media's cgroup stats", || {
        let (status, body) = host.get(&format!("/api/v1/containers/{id}/stats"));
        let v: Value = serde_json::from_str(&body).ok()?;
        let s = v["stats"].clone();
        let truth = tasks();
        (status == 200
            && s["pids_current"].as_u64()? == truth
            && s["memory_usage_bytes"].as_u64()? > 0)
            .then_some((s, truth))
    });
    eprintln!("media's stats as berth reads them ({truth} tasks in its pids cgroup): {stats}");

    // `berth ps` shows it with its engine.
    let ps = host.agent.ok(&["ps"]);
    let line = ps
        .lines()
        .find(|l| l.contains(&id[..12]))
        .unwrap_or_else(|| panic!("media not in `berth ps`:\n{ps}"));
    assert!(
        line.contains("docker") && line.contains("media") && line.contains(Dockerd::BUSYBOX),
        "{ps}"
    );

    // Mutations are refused, naming the engine, and change nothing.
    let pid = inspect(&host, &id, "{{.State.Pid}}");
    for verb in [
        &["stop", "media"][..],
        &["kill", "media"],
        &["rm", "-f", "media"],
    ] {
        let (code, out, err) = host.agent.cli(verb);
        assert_ne!(code, 0, "berth {verb:?} succeeded: {out}");
        assert!(err.contains(REFUSED), "berth {verb:?}: {err}");
    }
    assert_eq!(
        inspect(&host, &id, "{{.State.Running}} {{.State.Pid}}"),
        format!("true {pid}")
    );

    assert!(host.metrics().contains(&format!("container=\"{id}\"")));

    // Removed: gone from the API and /metrics within a couple of ticks (200 ms each).
    let started = Instant::now();
    host.docker(&["rm", "-f", "media"]);
    let rm_took = started.elapsed();
    let gone_after = host.wait_gone(&id, Duration::from_secs(5));
    eprintln!(
        "docker rm -f: {:.2} s; gone from berth's API and /metrics {:.2} s later",
        rm_took.as_secs_f64(),
        gone_after.as_secs_f64()
    );
    assert!(gone_after < Duration::from_secs(1), "{gone_after:?}");
    let (status, ports) = host.get("/api/v1/ports");
    assert_eq!(status, 200, "{ports}");
    assert!(!ports.contains(&id), "stale port rows: {ports}");
}

#[test]
fn host_network_and_portless_bridge_containers_show_their_mode_and_no_ports() {
    let host = DockerHost::start();
    let (hostnet, plain) = run_portless(&host);
    // Metadata lands within a tick or two of the cgroup (the start event): wait for it whole.
    let (h, _) = host.wait_listed(&hostnet, Duration::from_secs(5), |c| {
        c["name"] == "hostnet" && c["log_path"].is_string()
    });
    assert_eq!(h["engine"], "docker");
    assert_eq!(h["network"]["mode"], "host", "{h}");
    assert_eq!(h["network"]["ip"], Value::Null, "{h}");
    assert_eq!(h["network"]["publish"], json!([]), "{h}");

    let ip = inspect(&host, &plain, "{{.NetworkSettings.IPAddress}}");
    let (p, _) = host.wait_listed(&plain, Duration::from_secs(5), |c| {
        c["name"] == "plain" && c["network"]["ip"] == ip.as_str()
    });
    assert_eq!(p["network"]["mode"], "bridge", "{p}");
    assert_eq!(p["network"]["publish"], json!([]), "{p}");

    // A change reaches berth through the event stream.
    host.docker(&["rename", "plain", "plain2"]);
    let (_, took) = host.wait_listed(&plain, Duration::from_secs(3), |c| c["name"] == "plain2");
    eprintln!(
        "docker rename seen by berth after {:.2} s",
        took.as_secs_f64()
    );
}

#[test]
fn without_the_api_dockerds_files_give_the_same_listing() {
    let dead = std::env::temp_dir().join(format!("berth-no-docker-{}.sock", std::process::id()));
    let host = DockerHost::start_with(Some(&dead), "");
    let (id, _) = run_media(&host);
    let ip = inspect(&host, &id, "{{.NetworkSettings.IPAddress}}");
    let (_, listed_after) = host.wait_listed(&id, Duration::from_secs(5), |c| {
        has_media_metadata(c, &id, &ip)
    });
    eprintln!(
        "from dockerd's files (no API): listed {:.2} s after docker run returned",
        listed_after.as_secs_f64()
    );
    let log = host.agent.log();
    assert!(
        log.contains("docker API not answering") && log.contains(&dead.display().to_string()),
        "the agent says why it reads the files:\n{}",
        tail(&log)
    );
    // A rename rewrites config.v2.json: re-read when its mtime changes.
    host.docker(&["rename", "media", "media2"]);
    let (_, took) = host.wait_listed(&id, Duration::from_secs(5), |c| c["name"] == "media2");
    eprintln!(
        "rename seen from the files after {:.2} s",
        took.as_secs_f64()
    );

    host.docker(&["rm", "-f", &id]);
    host.wait_gone(&id, Duration::from_secs(5));
}

/// Start/remove cycles of the churn test, and the one whose RSS is the reference.
const CYCLES: usize = 100;
const REFERENCE_CYCLE: usize = 10;

#[test]
fn a_hundred_start_remove_cycles_leave_nothing_stale_and_the_agent_does_not_grow() {
    let host = DockerHost::start();
    let started = Instant::now();
    let (mut ids, mut reference) = (Vec::with_capacity(CYCLES), 0);
    for cycle in 1..=CYCLES {
        let name = format!("churn{cycle}");
        let (id, _) = run(&host, &["--name", &name, Dockerd::BUSYBOX, "sleep", "1d"]);
        // Listed with its name: the engine's metadata reached the agent and is cached.
        host.wait_listed(&id, Duration::from_secs(5), |c| {
            c["name"] == name.as_str() && c["status"] == "running"
        });
        host.docker(&["rm", "-f", &id]);
        host.wait_gone(&id, Duration::from_secs(5));
        ids.push(id);
        if cycle == REFERENCE_CYCLE {
            reference = host.agent_rss();
        }
    }
    let took = started.elapsed();
    let last = host.agent_rss();
    let ratio = last as f64 / reference as f64;
    eprintln!(
        "{CYCLES} docker run/rm -f cycles in {:.1} s ({:.2} s each); agent RSS after cycle \
         {REFERENCE_CYCLE}: {:.1} MiB, after cycle {CYCLES}: {:.1} MiB ({ratio:.3}x)",
        took.as_secs_f64(),
        took.as_secs_f64() / CYCLES as f64,
        reference as f64 / f64::from(1 << 20),
        last as f64 / f64::from(1 << 20),
    );

    // Nothing of any of them anywhere: containers, cgroups (other_cgroups included), ports,
    // /metrics, `berth ps -a`.
    let containers = host.get("/api/v1/containers?all=true").1;
    let cgroups = host.get("/api/v1/cgroups").1;
    let ports = host.get("/api/v1/ports").1;
    let metrics = host.metrics();
    let ps = host.agent.ok(&["ps", "-a"]);
    for id in &ids {
        for (what, text) in [
            ("/api/v1/containers", &containers),
            ("/api/v1/cgroups", &cgroups),
            ("/api/v1/ports", &ports),
            ("/metrics", &metrics),
        ] {
            assert!(!text.contains(id.as_str()), "{id} stale in {what}");
        }
        assert!(!ps.contains(&id[..12]), "{id} stale in berth ps -a:\n{ps}");
    }
    assert!(!metrics.contains("churn"), "a churned name in /metrics");
    assert!(
        ratio <= 1.2,
        "the agent grew from {reference} B after cycle {REFERENCE_CYCLE} to {last} B after \
         cycle {CYCLES} ({ratio:.3}x > 1.2x)"
    );
}
