//! A real Docker host end to end: Debian's dockerd started by the test in namespaces of its own
//! ([`berth_testkit::Dockerd`]: own network and mount namespace, data and exec roots, bridge
//! subnet), an offline busybox image (`docker import`), and the agent running INSIDE dockerd's
//! network namespace, as on a real host where both share the host's, seeing the host's cgroup
//! tree. berth lists Docker's containers from their cgroups and names them from the Engine API
//! (or, with no API, from dockerd's files), refuses to change them, and forgets them once gone.
//!
//! [`DockerHost`] starts dockerd and the agent once per test and hands both out: tests of the
//! port-mapping cost and of traffic extend this file with it (a veth into `host.dockerd.netns`,
//! `host.get("/api/v1/ports")`, `host.agent.cli(&["diagnose"])`).

mod common;

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use berth_testkit::Dockerd;
use common::{Agent, wait_for};
use serde_json::{Value, json};

/// One Docker host at a time: they share `/docker` in the cgroup tree, and the timings below
/// are measured on a 2-core machine.
static ONE_HOST: Mutex<()> = Mutex::new(());

/// The message of a refused mutation of another engine's container (api/write.rs).
const REFUSED: &str = "is managed by docker; berth does not change containers it did not start";

/// dockerd and an agent in its network namespace. Drops the agent first, then dockerd (which
/// removes every container), then lets the next test in.
pub struct DockerHost {
    pub agent: Agent,
    pub dockerd: Dockerd,
    _one: MutexGuard<'static, ()>,
}

impl DockerHost {
    /// dockerd, and the agent pointed at its socket and data root.
    pub fn start() -> Self {
        Self::start_with(None, "")
    }

    /// Like [`DockerHost::start`]; `socket` replaces `discovery.docker_socket` (e.g. a path
    /// where nothing listens) and `extra` is appended to the agent's config.
    pub fn start_with(socket: Option<&std::path::Path>, extra: &str) -> Self {
        let one = ONE_HOST.lock().unwrap_or_else(|e| e.into_inner());
        let dockerd = Dockerd::start();
        let socket = socket.unwrap_or(&dockerd.socket);
        let mut agent = Agent::prepare(&format!(
            "[discovery]\ndocker_socket = \"{}\"\ndocker_data_root = \"{}\"\n{extra}",
            socket.display(),
            dockerd.data_root.display()
        ));
        // Spawned from a thread inside the namespace: the agent's listeners, probes and
        // netfilter links are there, with dockerd's bridge and rules.
        dockerd.netns.run(|| agent.spawn());
        DockerHost {
            agent,
            dockerd,
            _one: one,
        }
    }

    /// `docker args...` against this host's dockerd; stdout, trimmed.
    pub fn docker(&self, args: &[&str]) -> String {
        self.dockerd.docker(args).trim().to_owned()
    }

    /// GET on the agent's TCP listener (inside the namespace): (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        self.dockerd.netns.run(|| self.agent.get(path))
    }

    /// Every container the agent lists (`?all=true`).
    pub fn containers(&self) -> Vec<Value> {
        let (status, body) = self.get("/api/v1/containers?all=true");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn find(&self, id: &str) -> Option<Value> {
        self.containers().into_iter().find(|c| c["id"] == id)
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// Waits until the agent lists `id` with `pred` true of it; returns it and how long it took.
    /// (A container is listed from its cgroup at once; its metadata lands with the API's start
    /// event, a tick or two later: `pred` says what to wait for.)
    pub fn wait_listed(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let c = self.find(id);
            if let Some(c) = c.as_ref().filter(|c| pred(c)) {
                return (c.clone(), started.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "{id} not listed as expected within {timeout:?}; last seen: {c:?}\nagent log:\n{}",
                tail(&self.agent.log())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until neither the API nor /metrics mention `id`; returns how long it took.
    pub fn wait_gone(&self, id: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        wait_for(
            timeout,
            &format!("{id} to leave the API and /metrics"),
            || {
                let listed = self.containers().iter().any(|c| c["id"] == id);
                (!listed && !self.metrics().contains(id)).then_some(())
            },
        );
        started.elapsed()
    }
}

/// The last 40 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `docker run -d` with `args` (options, then image and command); the new container's id.
fn run(host: &DockerHost, args: &[&str]) -> (String, Duration) {
    let started = Instant::now();
    let mut all = vec!["run", "-d"];
    all.extend_from_slice(args);
    let id = host.docker(&all);
    assert_eq!(id.len(), 64, "docker run printed {id:?}");
    (id, started.elapsed())
}

fn inspect(host: &DockerHost, id: &str, format: &str) -> String {
    host.docker(&["inspect", "-f", format, id])
}

/// `docker run -d --name media -p 40000-40099:40000-40099/udp bb:1 sleep 1d`.
fn run_media(host: &DockerHost) -> (String, Duration) {
    run(
        host,
        &[
            "--name",
            "media",
            "-p",
            "40000-40099:40000-40099/udp",
            Dockerd::BUSYBOX,
            "sleep",
            "1d",
        ],
    )
}

/// The published ports of `media` as the API shows them: one range of 100 UDP ports.
fn media_ports() -> Value {
    json!([{
        "host_ip": null,
        "host": {"start": 40000, "end": 40099},
        "container": {"start": 40000, "end": 40099},
        "proto": "udp"
    }])
}

/// `c` carries media's metadata: engine, name, image, bridge address, its 100 ports and its
/// log file.
fn has_media_metadata(c: &Value, id: &str, ip: &str) -> bool {
    let log = format!("/containers/{id}/{id}-json.log");
    c["log_path"].as_str().is_some_and(|p| p.ends_with(&log))
        && c["engine"] == "docker"
        && c["name"] == "media"
        && c["image"] == Dockerd::BUSYBOX
        && c["network"]["mode"] == "bridge"
        && c["network"]["ip"] == ip
        && c["network"]["publish"] == media_ports()
}

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
    let (hostnet, _) = run(
        &host,
        &[
            "--name",
            "hostnet",
            "--network",
            "host",
            Dockerd::BUSYBOX,
            "sleep",
            "1d",
        ],
    );
    let (plain, _) = run(&host, &["--name", "plain", Dockerd::BUSYBOX, "sleep", "1d"]);
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
