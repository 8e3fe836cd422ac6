//! `cargo xtask bench agent`: what one collection tick costs the agent with many containers it
//! did not launch. It makes `--containers` cgroups where Docker puts its containers
//! (`<cgroup2 mount>/docker/<id>`), each holding a sleeping process, gives each Docker's
//! on-disk metadata (`config.v2.json`, `hostconfig.json` in a data root of its own, read
//! because no Docker API answers at the configured socket), starts the release agent, waits
//! until it lists them all, and reads the collectors' own timings
//! (`berth_collector_duration_seconds`) from `/metrics` over many ticks.
//!
//! Goal (issue 9): discovery and metadata together (the `foreign` collector) <= 2 ms per tick
//! with 200 foreign containers.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::util::{append_benchmark, cargo, machine, median, utc_now, workspace_root};

/// The cgroup2 mount: the unified hierarchy in hybrid mode, else `/sys/fs/cgroup`.
pub(super) fn cgroup2_mount() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.procs").exists() {
        unified.to_owned()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// The mount points of the cgroup v1 hierarchies with a controller that berth reads stats
/// from (hybrid hosts; none on pure v2 ones), from /proc/self/mounts.
fn v1_stat_mounts() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && f[2] == "cgroup").then(|| (f[1], f[3]))
        })
        .filter(|(_, opts)| {
            opts.split(',')
                .any(|o| ["cpu", "cpuacct", "memory", "pids", "blkio"].contains(&o))
        })
        .map(|(m, _)| PathBuf::from(m))
        .collect()
}

/// Foreign containers made for the bench; removed on drop (processes, cgroups, files). Like
/// Docker's cgroupfs driver, each has its cgroup in the cgroup2 tree and, on hybrid hosts, in
/// every v1 hierarchy berth reads stats from, with its process in all of them.
pub(super) struct Fleet {
    cgroups: Vec<PathBuf>,
    sleepers: Vec<Child>,
}

impl Fleet {
    pub(super) fn create(n: usize, dir: &Path) -> Result<Self> {
        let docker = cgroup2_mount().join("docker");
        let v1: Vec<PathBuf> = v1_stat_mounts().iter().map(|m| m.join("docker")).collect();
        let mut made_parents = Vec::new();
        for parent in std::iter::once(&docker).chain(&v1) {
            if !parent.exists() {
                made_parents.push(parent.clone());
            }
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut fleet = Self {
            cgroups: Vec::new(),
            sleepers: Vec::new(),
        };
        let tag = std::process::id();
        for i in 0..n {
            let id = format!("{tag:08x}{:056x}", 0xbe00_0000_u64 + i as u64);
            let child = Command::new("sleep")
                .arg("1d")
                .stdin(Stdio::null())
                .spawn()
                .context("spawning sleep")?;
            let pid = child.id().to_string();
            fleet.sleepers.push(child);
            for parent in std::iter::once(&docker).chain(&v1) {
                let cg = parent.join(&id);
                fs::create_dir(&cg).with_context(|| format!("mkdir {}", cg.display()))?;
                fleet.cgroups.push(cg.clone());
                fs::write(cg.join("cgroup.procs"), &pid)
                    .with_context(|| format!("moving a sleeper into {}", cg.display()))?;
            }
            let meta = dir.join("docker/containers").join(&id);
            fs::create_dir_all(&meta)?;
            let ip = format!("10.210.{}.{}", i / 250, i % 250 + 2);
            fs::write(
                meta.join("config.v2.json"),
                serde_json::json!({
                    "ID": id,
                    "Name": format!("/bench-{i}"),
                    "Created": "2026-12-01T00:00:00.000000000Z",
                    "Config": {"Image": "bb:1", "Labels": {"bench": "agent"}},
                    "LogPath": meta.join(format!("{id}-json.log")),
                    "NetworkSettings": {
                        "Networks": {"bridge": {"IPAddress": ip}},
                        "Ports": {"5000/udp": [{"HostIp": "0.0.0.0", "HostPort": (20000 + i).to_string()}]},
                    },
                })
                .to_string(),
            )?;
            fs::write(
                meta.join("hostconfig.json"),
                serde_json::json!({
                    "NetworkMode": "bridge",
                    "PortBindings": {"5000/udp": [{"HostIp": "", "HostPort": (20000 + i).to_string()}]},
                })
                .to_string(),
            )?;
        }
        fleet.cgroups.extend(made_parents);
        Ok(fleet)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.sleepers {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Children before the parent (pushed last when the bench created it).
        for cg in &self.cgroups {
            for _ in 0..50 {
                if fs::remove_dir(cg).is_ok() || !cg.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// One GET over plain HTTP/1.1 to the agent's TCP listener; the body.
pub(super) fn get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP body")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    Ok(body.to_owned())
}

/// `berth_collector_duration_seconds` per collector from one scrape.
pub(super) fn collector_durations(metrics: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("berth_collector_duration_seconds{collector=\"")?;
            let (name, value) = rest.split_once("\"} ")?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

pub fn bench_agent(containers: usize, ticks: usize) -> Result<()> {
    ensure!(
        containers > 0 && ticks >= 5,
        "--containers > 0, --ticks >= 5"
    );
    cargo(&["build", "--release", "--package", "berth"])?;
    let berth = workspace_root().join("target/release/berth");
    let tmp = std::env::temp_dir().join(format!("berth-bench-agent-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let fleet = Fleet::create(containers, &tmp)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = tmp.join("berth.toml");
    let t = tmp.display();
    fs::write(
        &config,
        format!(
            "[agent]\ninterval = \"250ms\"\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\nsocket = \"{t}/berth.sock\"\n\
             [cgroup]\nroot = \"berth-bench-agent-{pid}\"\n\
             [runtime]\nlaunch = false\nstate_dir = \"{t}/state\"\nrun_dir = \"{t}/run\"\n\
             [discovery]\ndocker_socket = \"{t}/no-docker.sock\"\ndocker_data_root = \"{t}/docker\"\n",
            pid = std::process::id(),
        ),
    )?;
    let mut agent = Command::new(&berth)
        .args(["agent", "--config"])
        .arg(&config)
        .stderr(fs::File::create(tmp.join("agent.log"))?)
        .spawn()?;
    let result = (|| -> Result<String> {
        // Listed: every bench container by id, and named from its metadata.
        let deadline = Instant::now() + Duration::from_secs(60);
        let id_prefix = format!("\"id\":\"{:08x}", std::process::id());
        let named = loop {
            let body = get(port, "/api/v1/containers?all=true").unwrap_or_default();
            let listed = body.matches(&id_prefix).count();
            if listed >= containers {
                break body.matches("\"name\":\"bench-").count();
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent lists {listed} of {containers} bench containers after 60 s; \
                     see {t}/agent.log"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        // Per collector, and all of them, one sample per tick.
        let mut per: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        let mut all = Vec::new();
        let mut last = None;
        while all.len() < ticks {
            std::thread::sleep(Duration::from_millis(260));
            let d = collector_durations(&get(port, "/metrics")?);
            let f = d
                .iter()
                .find(|(n, _)| n == "foreign")
                .map(|(_, v)| *v)
                .context("no foreign collector in /metrics")?;
            // A gauge of the last tick: count each tick once.
            if last == Some(f) {
                continue;
            }
            last = Some(f);
            for (name, v) in &d {
                per.entry(name.clone()).or_default().push(v * 1e3);
            }
            all.push(d.iter().map(|(_, v)| v).sum::<f64>() * 1e3);
        }
        let p95 = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[(v.len() * 95 / 100).min(v.len() - 1)]
        };
        let mut rows = String::new();
        let mut f50 = f64::NAN;
        for (name, v) in &mut per {
            let m = median(v);
            if name == "foreign" {
                f50 = m;
            }
            let label = if name == "foreign" {
                "foreign (discovery + metadata)"
            } else {
                name.as_str()
            };
            rows.push_str(&format!("| {label} | {m:.3} | {:.3} |\n", p95(v)));
        }
        let a50 = median(&mut all);
        let a95 = p95(&mut all);
        let goal = if f50 <= 2.0 { "met" } else { "NOT met" };
        Ok(format!(
            "\n## Agent tick with {containers} foreign containers ({now})\n\n\
             Command: `cargo xtask bench agent --containers {containers} --ticks {ticks}` on {m}.\n\
             {containers} cgroups at `<cgroup2>/docker/<id>` each with a sleeping process and \
             Docker's on-disk metadata (the Docker API absent: the fallback path), release \
             agent, 250 ms interval, {ticks} ticks read from `berth_collector_duration_seconds`.\n\n\
             | collector | median ms | p95 ms |\n|---|---|---|\n\
             {rows}\
             | all collectors | {a50:.3} | {a95:.3} |\n\n\
             {named} of {containers} named from their metadata. \
             Goal: foreign <= 2 ms per tick: **{goal}** ({f50:.3} ms).\n",
            now = utc_now()?,
            m = machine(),
        ))
    })();
    let _ = agent.kill();
    let _ = agent.wait();
    drop(fleet);
    // The agent leaves its tracked root for containers that outlive it; the bench had none.
    let _ =
        fs::remove_dir(cgroup2_mount().join(format!("berth-bench-agent-{}", std::process::id())));
    let section = result?;
    let _ = fs::remove_dir_all(&tmp);
    print!("{section}");
    append_benchmark(&section)
}
