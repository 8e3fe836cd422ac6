//! A real Prometheus server (Debian's package) scrapes the agent: the target is healthy, the
//! OpenMetrics exposition parses, and PromQL returns the test cgroup's getppid count.

mod common;

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{Agent, Cgroup, free_port, getppid_in, http_get, wait_for};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const CALLS: u64 = 100_000;

struct Prometheus {
    child: Child,
    base: String,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: install Debian's prometheus package (`cargo xtask setup` does)"
        );
        let port = free_port();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: berth\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("starting prometheus");
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn api(&self, path_and_query: &str) -> Option<serde_json::Value> {
        let (status, body) = http_get(&format!("{}{path_and_query}", self.base));
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_agent_and_queries_the_syscall_count() {
    let agent = Agent::start();
    let cg = Cgroup::create(&agent.root_dir, "prom");
    getppid_in(&cg, CALLS);
    // A container with some traffic, so the container panels have data too.
    let rootfs = common::busybox_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let name = common::unique("prom");
    agent.ok(&[
        "run", "-d", "--name", &name, "--memory", "64m", rootfs, "sh", "-c",
        "while :; do ping -c 1 -W 1 \"$(ip route | awk '/default/ {print $3}')\" >/dev/null; sleep 0.2; done",
    ]);

    let dir = tempfile::tempdir().unwrap();
    let target = agent.base.trim_start_matches("http://").to_owned();
    let prom = Prometheus::start(dir.path(), &target);

    let target_state = wait_for(
        Duration::from_secs(60),
        "a successful scrape of berth",
        || {
            let v = prom.api("/api/v1/targets")?;
            let t = v["data"]["activeTargets"].as_array()?.first()?.clone();
            (t["health"] == "up").then_some(t)
        },
    );
    assert_eq!(
        target_state["lastError"],
        "",
        "scrape error: {target_state}\nprometheus log:\n{}",
        fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    );

    let up = wait_for(Duration::from_secs(30), "up{job=\"berth\"}", || {
        let v = prom.api(&format!(
            "/api/v1/query?query={}",
            urlencode("up{job=\"berth\"}")
        ))?;
        v["data"]["result"].as_array()?.first()?["value"][1]
            .as_str()
            .map(str::to_owned)
    });
    assert_eq!(up, "1");

    let query = format!(
        "berth_cgroup_syscalls_total{{cgroup=\"{}\",syscall=\"getppid\"}}",
        cg.label()
    );
    let value: f64 = wait_for(
        Duration::from_secs(30),
        "the getppid count in Prometheus",
        || {
            let v = prom.api(&format!("/api/v1/query?query={}", urlencode(&query)))?;
            v["data"]["result"].as_array()?.first()?["value"][1]
                .as_str()?
                .parse()
                .ok()
        },
    );
    assert!(
        (CALLS as f64..=CALLS as f64 + 100.0).contains(&value),
        "Prometheus has {value} for {query}, the workload made {CALLS}"
    );

    // One selector by the container's name alone finds its traffic: no join with
    // berth_container_info.
    let by_name = format!("sum(berth_cgroup_network_bytes_total{{name=\"{name}\"}})");
    let bytes: f64 = wait_for(
        Duration::from_secs(30),
        "the container's traffic by name in Prometheus",
        || {
            let v = prom.api(&format!("/api/v1/query?query={}", urlencode(&by_name)))?;
            let b: f64 = v["data"]["result"].as_array()?.first()?["value"][1]
                .as_str()?
                .parse()
                .ok()?;
            (b > 0.0).then_some(b)
        },
    );
    eprintln!("{by_name} = {bytes}");

    // Every panel of every shipped Grafana dashboard returns data from this Prometheus.
    for (dashboard, title, expr) in dashboard_queries() {
        wait_for(
            Duration::from_secs(30),
            &format!("data for panel {title:?} of {dashboard}: {expr}"),
            || {
                let v = prom.api(&format!("/api/v1/query?query={}", urlencode(&expr)))?;
                (!v["data"]["result"].as_array()?.is_empty()).then_some(())
            },
        );
    }
}

/// (dashboard file, panel title, PromQL with Grafana's variables filled in as Grafana would
/// for "All" over a short range).
fn dashboard_queries() -> Vec<(String, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/grafana");
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dash: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "10s")
                    .replace("$__range", "1m")
                    .replace("$instance", ".*")
                    .replace("$engine", ".*")
                    .replace("$container", ".*");
                assert!(!expr.contains('$'), "unhandled variable in {expr}");
                out.push((
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    panel["title"].as_str().unwrap().to_owned(),
                    expr,
                ));
            }
        }
    }
    assert!(!out.is_empty(), "no dashboards found in {}", dir.display());
    out
}

#[test]
fn the_shipped_prometheus_config_and_alert_rules_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/prometheus");
    for args in [vec!["check", "config"], vec!["check", "rules"]] {
        let file = if args[1] == "config" {
            "prometheus.yml"
        } else {
            "berth-alerts.yml"
        };
        let out = Command::new("promtool")
            .args(&args)
            .arg(dir.join(file))
            .output()
            .expect("promtool is missing: install Debian's prometheus package (`cargo xtask setup` does)");
        assert!(
            out.status.success(),
            "promtool {} {file}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
