//! [`DockerHost`]: a real Docker host for the integration tests (`tests/docker*.rs`): Debian's
//! dockerd started by the test in namespaces of its own ([`berth_testkit::Dockerd`]: own
//! network and mount namespace, data and exec roots, bridge subnet), an offline busybox image
//! (`docker import`), and the agent running INSIDE dockerd's network namespace, as on a real
//! host where both share the host's, seeing the host's cgroup tree. [`DockerHost::client`]
//! joins a client namespace to it with a veth pair, the way traffic reaches a real host.

use std::{
    path::Path,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use berth_testkit::Dockerd;
use serde_json::{Value, json};

use super::{Agent, ClientNs, wait_for};

/// One Docker host at a time: they share `/docker` in the cgroup tree, and the timings below
/// are measured on a 2-core machine.
static ONE_HOST: Mutex<()> = Mutex::new(());

/// dockerd and an agent in its network namespace. Drops the agent first, then dockerd (which
/// removes every container), then lets the next test in.
pub struct DockerHost {
    pub agent: Agent,
    pub dockerd: Dockerd,
    /// Keeps its connection to the agent open between requests: one TCP flow to a local port
    /// in all, not one per poll (each would be a new flow in the host's netfilter baseline).
    http: ureq::Agent,
    _one: MutexGuard<'static, ()>,
}

impl DockerHost {
    /// dockerd, and the agent pointed at its socket and data root.
    pub fn start() -> Self {
        Self::start_with(None, "")
    }

    /// Like [`DockerHost::start`]; `socket` replaces `discovery.docker_socket` (e.g. a path
    /// where nothing listens) and `extra` is appended to the agent's config.
    pub fn start_with(socket: Option<&Path>, extra: &str) -> Self {
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
            http: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(5))
                .build(),
            _one: one,
        }
    }

    /// `docker args...` against this host's dockerd; stdout, trimmed.
    pub fn docker(&self, args: &[&str]) -> String {
        self.dockerd.docker(args).trim().to_owned()
    }

    /// GET on the agent's TCP listener (inside the namespace): (status, body); status 0 when
    /// the agent does not answer.
    pub fn get(&self, path: &str) -> (u16, String) {
        let url = format!("{}{path}", self.agent.base);
        self.dockerd.netns.run(|| match self.http.get(&url).call() {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(_) => (0, String::new()),
        })
    }

    /// GET of a JSON document that must answer 200.
    pub fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Every container the agent lists (`?all=true`).
    pub fn containers(&self) -> Vec<Value> {
        let v = self.json("/api/v1/containers?all=true");
        v.as_array().cloned().unwrap_or_default()
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

    /// A client namespace joined to dockerd's (the "host") by a veth pair on a /30 of the
    /// run's own ([`ClientNs`]); its host side is removed from inside the namespace on drop.
    pub fn client(&self) -> HostClient<'_> {
        HostClient {
            netns: &self.dockerd.netns,
            client: Some(self.dockerd.netns.run(ClientNs::create)),
        }
    }

    /// The agent's resident memory (VmRSS of /proc/<pid>/status), bytes.
    pub fn agent_rss(&self) -> u64 {
        let pid = self.agent.pid().expect("the agent runs");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"));
        kib << 10
    }
}

/// A [`ClientNs`] made inside dockerd's namespace (see [`DockerHost::client`]).
pub struct HostClient<'a> {
    netns: &'a berth_testkit::Netns,
    client: Option<ClientNs>,
}

impl std::ops::Deref for HostClient<'_> {
    type Target = ClientNs;
    fn deref(&self) -> &ClientNs {
        self.client.as_ref().expect("client present")
    }
}

impl Drop for HostClient<'_> {
    fn drop(&mut self) {
        // ClientNs removes its host side from the namespace it is dropped in.
        if let Some(c) = self.client.take() {
            self.netns.run(move || drop(c));
        }
    }
}

/// The last 40 lines of a log.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `docker run -d` with `args` (options, then image and command); the new container's id and
/// how long `docker run` took.
pub fn run(host: &DockerHost, args: &[&str]) -> (String, Duration) {
    let started = Instant::now();
    let mut all = vec!["run", "-d"];
    all.extend_from_slice(args);
    let id = host.docker(&all);
    assert_eq!(id.len(), 64, "docker run printed {id:?}");
    (id, started.elapsed())
}

pub fn inspect(host: &DockerHost, id: &str, format: &str) -> String {
    host.docker(&["inspect", "-f", format, id])
}

/// `docker run -d --name media -p 40000-40099:40000-40099/udp bb:1 sleep 1d`.
/// Two containers that publish nothing: `hostnet` (host networking) and `plain` (a bridge
/// container without ports); their ids.
pub fn run_portless(host: &DockerHost) -> (String, String) {
    let (hostnet, _) = run(
        host,
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
    let (plain, _) = run(host, &["--name", "plain", Dockerd::BUSYBOX, "sleep", "1d"]);
    (hostnet, plain)
}

pub fn run_media(host: &DockerHost) -> (String, Duration) {
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
pub fn media_ports() -> Value {
    json!([{
        "host_ip": null,
        "host": {"start": 40000, "end": 40099},
        "container": {"start": 40000, "end": 40099},
        "proto": "udp"
    }])
}

/// `c` carries media's metadata: engine, name, image, bridge address, its 100 ports and its
/// log file.
pub fn has_media_metadata(c: &Value, id: &str, ip: &str) -> bool {
    let log = format!("/containers/{id}/{id}-json.log");
    c["log_path"].as_str().is_some_and(|p| p.ends_with(&log))
        && c["engine"] == "docker"
        && c["name"] == "media"
        && c["image"] == Dockerd::BUSYBOX
        && c["network"]["mode"] == "bridge"
        && c["network"]["ip"] == ip
        && c["network"]["publish"] == media_ports()
}
