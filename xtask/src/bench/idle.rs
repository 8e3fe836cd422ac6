//! `cargo xtask bench agent --berth 50,100`: what the agent costs its host at rest (issue 14).
//!
//! For each count N, one agent (release build, default 1 s interval) launches N berth
//! containers through its API (one publishing `--ports` UDP ports through the nft-map backend,
//! the others a sleeping busybox), next to the foreign fleet [`super::agent`] makes; a real
//! Prometheus scrapes `/metrics` every 5 s while the agent idles. The idle window gives the
//! agent's CPU (utime + stime from `/proc/<pid>/stat`, as a share of one core) and its RSS;
//! then the bench's own requests give `/metrics` latency and size, and the collectors' own
//! timings (`berth_collector_duration_seconds`) give the tick's cost by collector.
//!
//! Goals: <= 0.5% of one core and <= 60 MiB RSS at 50 containers; `/metrics` p99 <= 5 ms at
//! 100 containers. CPU per container is reported as the slope between the two counts. With
//! `--baseline OTHER_BINARY` each row runs that binary first, and a before/after table compares
//! the two within the one run (these machines are noisy: ratios from one run).

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::agent::{Fleet, cgroup2_mount, collector_durations, get};
use crate::util::{append_benchmark, cargo, machine, median, output, utc_now, workspace_root};

/// What one run with N berth containers showed.
struct Run {
    berth: usize,
    foreign: usize,
    idle_s: f64,
    cpu_share: f64,
    rss_mib: f64,
    rss_max_mib: f64,
    scrapes: f64,
    lat_ms: Vec<f64>,
    bytes: usize,
    per_collector: BTreeMap<String, Vec<f64>>,
    ticks_ms: Vec<f64>,
}

fn pct(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32, clk_tck: f64) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(") ").context("/proc/pid/stat")?.1;
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / clk_tck)
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

/// One timed GET of `/metrics`: (ms from connect to the last byte, body bytes).
fn timed_metrics(port: u16) -> Result<(f64, usize)> {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP body")?;
    ensure!(out.starts_with(b"HTTP/1.1 200"), "GET /metrics failed");
    Ok((ms, out.len() - at - 4))
}

/// Kills and reaps on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // SIGTERM first: the agent removes its rules and bridge on a clean stop.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prometheus(dir: &Path, target: &str) -> Result<(Reaped, u16)> {
    let bin = Path::new("/usr/bin/prometheus");
    ensure!(
        bin.exists(),
        "{} is missing: `cargo xtask setup` installs Debian's prometheus",
        bin.display()
    );
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 5s\n  scrape_timeout: 5s\n\
             scrape_configs:\n  - job_name: berth\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )?;
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prom").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("prometheus.log"))?)
        .spawn()
        .context("starting prometheus")?;
    Ok((Reaped(child), port))
}

/// Successful scrapes Prometheus recorded over the last `secs`.
fn scrapes(prom_port: u16, secs: u64) -> Result<f64> {
    let q = format!("sum_over_time(up{{job=\"berth\"}}[{secs}s])");
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'(' | b')' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = get(prom_port, &format!("/api/v1/query?query={enc}"))?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .context("no scrape count from prometheus")?
        .parse()
        .context("scrape count")
}

fn one_run(
    berth_bin: &Path,
    berth: usize,
    foreign: usize,
    ports: u32,
    idle: u64,
    requests: usize,
) -> Result<Run> {
    let pid = std::process::id();
    let tmp = std::env::temp_dir().join(format!("berth-bench-idle-{pid}-{berth}"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(tmp.join("rootfs/bin"))?;
    fs::copy("/bin/busybox", tmp.join("rootfs/bin/busybox"))?;
    for a in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", tmp.join("rootfs/bin").join(a))?;
    }
    let fleet = Fleet::create(foreign, &tmp)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let t = tmp.display();
    let tag = pid % 100_000;
    let root = format!("berth-bench-idle-{pid}");
    fs::write(
        tmp.join("berth.toml"),
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\nsocket = \"{t}/berth.sock\"\n\
             [cgroup]\nroot = \"{root}\"\n\
             [runtime]\nstate_dir = \"{t}/state\"\nrun_dir = \"{t}/run\"\n\
             [network]\nbridge = \"bbi{tag}\"\nsubnet = \"10.198.{sub}.0/24\"\ntable = \"bbi{tag}\"\n\
             [discovery]\ndocker_socket = \"{t}/no-docker.sock\"\ndocker_data_root = \"{t}/docker\"\n",
            sub = pid % 250,
        ),
    )?;
    let agent = Reaped(
        Command::new(berth_bin)
            .args(["agent", "--config"])
            .arg(tmp.join("berth.toml"))
            .stderr(fs::File::create(tmp.join("agent.log"))?)
            .spawn()?,
    );
    let apid = agent.0.id();
    let sock = tmp.join("berth.sock");
    let cli = |args: &[&str]| -> Result<String> {
        output(
            Command::new(berth_bin)
                .arg("--socket")
                .arg(&sock)
                .args(args),
        )
    };
    let mut ids: Vec<String> = Vec::new();
    let result = (|| -> Result<Run> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while cli(&["ps"]).is_err() {
            ensure!(
                Instant::now() < deadline,
                "agent did not start; see {t}/agent.log"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let rootfs = tmp.join("rootfs");
        let rootfs = rootfs.to_str().context("path")?;
        let range = format!("20000-{0}:20000-{0}/udp", 20000 + ports - 1);
        for i in 0..berth {
            let mut args = vec!["run", "-d"];
            if i == 0 && ports > 0 {
                args.extend(["-p", &range]);
            }
            args.extend([rootfs, "sleep", "1d"]);
            ids.push(cli(&args)?.trim().to_owned());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let body = get(port, "/api/v1/containers?all=true").unwrap_or_default();
            let listed = body.matches("\"id\":").count();
            if listed >= berth + foreign {
                break;
            }
            if Instant::now() > deadline {
                bail!("the agent lists {listed} of {} containers", berth + foreign);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let (_prom, prom_port) = prometheus(&tmp, &format!("127.0.0.1:{port}"))?;
        // Let launches settle and Prometheus take its first scrape.
        std::thread::sleep(Duration::from_secs(6));
        let clk: f64 = output(Command::new("getconf").arg("CLK_TCK"))?
            .trim()
            .parse()?;
        let (c0, t0) = (cpu_seconds(apid, clk)?, Instant::now());
        let mut rss_max = 0f64;
        while t0.elapsed() < Duration::from_secs(idle) {
            std::thread::sleep(Duration::from_secs(1));
            rss_max = rss_max.max(rss_mib(apid)?);
        }
        let (c1, idle_s) = (cpu_seconds(apid, clk)?, t0.elapsed().as_secs_f64());
        let rss = rss_mib(apid)?;
        let scrapes = scrapes(prom_port, idle)?;
        // Our own requests, spaced so each mostly sees a new tick.
        let mut lat_ms = Vec::new();
        let mut bytes = 0;
        let mut per: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut ticks_ms = Vec::new();
        let mut last = None;
        for _ in 0..requests {
            let (ms, b) = timed_metrics(port)?;
            lat_ms.push(ms);
            bytes = b;
            std::thread::sleep(Duration::from_millis(150));
        }
        // The tick's cost by collector: one sample per tick (a gauge of the last one).
        let end = Instant::now() + Duration::from_secs(60);
        while ticks_ms.len() < 20 && Instant::now() < end {
            let d = collector_durations(&get(port, "/metrics")?);
            let key: Vec<u64> = d.iter().map(|(_, v)| v.to_bits()).collect();
            if last.as_ref() != Some(&key) {
                last = Some(key);
                for (name, v) in &d {
                    per.entry(name.clone()).or_default().push(v * 1e3);
                }
                ticks_ms.push(d.iter().map(|(_, v)| v).sum::<f64>() * 1e3);
            }
            std::thread::sleep(Duration::from_millis(400));
        }
        Ok(Run {
            berth,
            foreign,
            idle_s,
            cpu_share: (c1 - c0) / idle_s,
            rss_mib: rss,
            rss_max_mib: rss_max,
            scrapes,
            lat_ms,
            bytes,
            per_collector: per,
            ticks_ms,
        })
    })();
    for id in &ids {
        let _ = cli(&["rm", "-f", id]);
    }
    drop(agent);
    drop(fleet);
    let _ = fs::remove_dir(cgroup2_mount().join(&root));
    if result.is_ok() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.with_context(|| format!("run with {berth} berth containers; see {t}"))
}

/// Seconds after which the agent's history holds all it keeps (window starts: 15 minutes,
/// the fine series tier 10), so its RSS stops growing at rest.
const HISTORY_FILLS_S: u64 = 900;

/// What every row shares.
pub struct Window {
    /// Foreign containers next to the berth ones.
    pub foreign: usize,
    /// UDP ports the first berth container publishes.
    pub ports: u32,
    /// Idle window, seconds.
    pub idle: u64,
    /// The bench's own `/metrics` requests after the window.
    pub requests: usize,
}

/// Runs every count in `berth` (with `baseline`, that binary first, row by row), then
/// appends one section.
pub fn bench_idle(
    berth: &[usize],
    window: Window,
    binary: Option<PathBuf>,
    baseline: Option<PathBuf>,
) -> Result<()> {
    let Window {
        foreign,
        ports,
        idle,
        requests,
    } = window;
    ensure!(
        !berth.is_empty() && berth.iter().all(|&n| (1..=200).contains(&n)),
        "--berth: counts between 1 and 200"
    );
    ensure!(
        idle >= 10 && requests >= 20,
        "--idle >= 10, --requests >= 20"
    );
    ensure!(ports <= 40_000, "--ports <= 40000");
    let bin = match &binary {
        Some(b) => b.clone(),
        None => {
            cargo(&["build", "--release", "--package", "berth"])?;
            workspace_root().join("target/release/berth")
        }
    };
    if let Some(b) = &baseline {
        ensure!(b.is_file(), "--baseline {}: no such file", b.display());
    }
    let mut runs = Vec::new();
    let mut before = Vec::new();
    for &n in berth {
        if let Some(b) = &baseline {
            before.push(one_run(b, n, foreign, ports, idle, requests)?);
        }
        runs.push(one_run(&bin, n, foreign, ports, idle, requests)?);
    }
    let compared = compare(&mut before, &mut runs);
    let mut rows = String::new();
    let mut coll_names: Vec<String> = Vec::new();
    for r in &runs {
        for k in r.per_collector.keys() {
            if !coll_names.contains(k) {
                coll_names.push(k.clone());
            }
        }
    }
    let mut coll = format!(
        "| collector | {} |\n|---|{}\n",
        runs.iter()
            .map(|r| format!("{} berth: median / p95 ms", r.berth))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(runs.len())
    );
    for name in &coll_names {
        coll.push_str(&format!("| {name} |"));
        for r in &mut runs {
            match r.per_collector.get_mut(name) {
                Some(v) => {
                    let m = median(v);
                    coll.push_str(&format!(" {m:.3} / {:.3} |", pct(v, 95)));
                }
                None => coll.push_str(" - |"),
            }
        }
        coll.push('\n');
    }
    coll.push_str("| all collectors |");
    for r in &mut runs {
        let m = median(&mut r.ticks_ms);
        coll.push_str(&format!(" {m:.3} / {:.3} |", pct(&mut r.ticks_ms, 95)));
    }
    coll.push('\n');
    let mut goals = String::new();
    for r in &mut runs {
        let (p50, p99) = (median(&mut r.lat_ms), pct(&mut r.lat_ms, 99));
        rows.push_str(&format!(
            "| {} + {} foreign | {:.2}% | {:.1} (max {:.1}) | {p50:.2} / {p99:.2} | {} | {:.0} | {:.0} s |\n",
            r.berth,
            r.foreign,
            r.cpu_share * 100.0,
            r.rss_mib,
            r.rss_max_mib,
            r.bytes,
            r.scrapes,
            r.idle_s,
        ));
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        if r.berth == 50 {
            // The history (series and window starts) fills for its first 15 minutes: RSS
            // after a shorter window is not what a long-running agent holds.
            let settled = if idle >= HISTORY_FILLS_S {
                String::new()
            } else {
                format!(
                    " after {idle} s idle, before the history filled ({HISTORY_FILLS_S} s): \
                     not the steady state"
                )
            };
            goals.push_str(&format!(
                "- 50 containers: CPU <= 0.5% of one core: **{}** ({:.2}%); RSS <= 60 MiB: **{}** ({:.1} MiB{settled})\n",
                met(r.cpu_share <= 0.005),
                r.cpu_share * 100.0,
                met(r.rss_max_mib <= 60.0),
                r.rss_max_mib,
            ));
        }
        if r.berth == 100 {
            goals.push_str(&format!(
                "- 100 containers: `/metrics` p99 <= 5 ms: **{}** ({p99:.2} ms)\n",
                met(p99 <= 5.0)
            ));
        }
    }
    if runs.len() >= 2 {
        let (a, b) = (&runs[0], &runs[runs.len() - 1]);
        let slope = (b.cpu_share - a.cpu_share) / (b.berth as f64 - a.berth as f64);
        goals.push_str(&format!(
            "- CPU per berth container (slope {} -> {}): {:.4}% of one core; per container at {}: {:.4}%\n",
            a.berth,
            b.berth,
            slope * 100.0,
            b.berth,
            b.cpu_share * 100.0 / (b.berth + b.foreign) as f64,
        ));
    }
    let counts = berth
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut bin_note = match &binary {
        Some(b) => format!(" --binary {}", b.display()),
        None => String::new(),
    };
    if let Some(b) = &baseline {
        bin_note.push_str(&format!(" --baseline {}", b.display()));
    }
    let section = format!(
        "\n## Agent at rest (issue 14) ({now})\n\n\
         Command: `cargo xtask bench agent --berth {counts} --containers {foreign} --ports {ports} \
         --idle {idle} --requests {requests}{bin_note}` on {m}.\n\
         Per row one release agent (default 1 s interval) launched the berth containers \
         through its API (one publishing {ports} UDP ports, nft-map; the others `sleep`), next \
         to {foreign} foreign cgroups with Docker's on-disk metadata; a real Prometheus scraped \
         `/metrics` every 5 s through the idle window. CPU = (utime + stime) over the window, \
         share of one core; RSS at the end (max sampled each second). Latency: {requests} of \
         the bench's own GETs of `/metrics` after the window, connect to last byte.\n\n\
         | containers | agent CPU | RSS MiB | `/metrics` p50 / p99 ms | `/metrics` bytes | \
         scrapes | idle |\n|---|---|---|---|---|---|---|\n{rows}\n\
         Tick cost by collector (`berth_collector_duration_seconds`, up to 20 ticks after the window):\n\n\
         {coll}\n\
         Goals:\n\n{goals}{compared}",
        now = utc_now()?,
        m = machine(),
    );
    print!("{section}");
    append_benchmark(&section)
}

/// The before/after table of a run with `--baseline` (rows pairwise: the same counts); empty
/// without one.
fn compare(before: &mut [Run], after: &mut [Run]) -> String {
    if before.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nBefore / after, measured in this run (before = `--baseline`, each row run just \
         before the measured one):\n\n\
         | containers | CPU before | CPU after | after / before | RSS MiB before / after | \
         `/metrics` p99 ms before / after |\n|---|---|---|---|---|---|\n",
    );
    for (b, a) in before.iter_mut().zip(after.iter_mut()) {
        let (bp, ap) = (pct(&mut b.lat_ms, 99), pct(&mut a.lat_ms, 99));
        out.push_str(&format!(
            "| {} + {} foreign | {:.2}% | {:.2}% | {:.2}x | {:.1} / {:.1} | {bp:.2} / {ap:.2} |\n",
            a.berth,
            a.foreign,
            b.cpu_share * 100.0,
            a.cpu_share * 100.0,
            a.cpu_share / b.cpu_share.max(f64::MIN_POSITIVE),
            b.rss_max_mib,
            a.rss_max_mib,
        ));
    }
    let per_container = |runs: &[Run]| {
        let r = &runs[runs.len() - 1];
        r.cpu_share * 100.0 / (r.berth + r.foreign) as f64
    };
    out.push_str(&format!(
        "\nCPU per watched container (all of them, at the last row): before {:.4}%, after \
         {:.4}% of one core ({:.1}x less).\n",
        per_container(before),
        per_container(after),
        per_container(before) / per_container(after).max(f64::MIN_POSITIVE),
    ));
    if before.len() >= 2 {
        let slope = |runs: &[Run]| {
            let (x, y) = (&runs[0], &runs[runs.len() - 1]);
            (y.cpu_share - x.cpu_share) / (y.berth as f64 - x.berth as f64) * 100.0
        };
        out.push_str(&format!(
            "CPU per added berth container (slope between the rows): before {:.4}%, after \
             {:.4}% of one core.\n",
            slope(before),
            slope(after),
        ));
    }
    out
}
