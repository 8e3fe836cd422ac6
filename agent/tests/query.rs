//! The query API, `berth query` and `berth top` against a real agent and real containers: a
//! busy container's CPU and syscall series go from `null` (before it existed) to real numbers
//! above an idle neighbour's, and both CLI verbs show it.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Agent, busybox_rootfs, unique, wait_for};
use serde_json::Value;

fn series(view: &Value, name: &str, key: &str) -> Vec<Option<f64>> {
    view["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| {
            c["series"][key]
                .as_array()
                .unwrap()
                .iter()
                .map(Value::as_f64)
                .collect()
        })
        .unwrap_or_default()
}

fn mean(v: &[Option<f64>]) -> f64 {
    let known: Vec<f64> = v.iter().flatten().copied().collect();
    known.iter().sum::<f64>() / known.len().max(1) as f64
}

#[test]
fn a_busy_container_s_cpu_and_syscalls_rise_in_the_query_api_berth_query_and_berth_top() {
    let agent = Agent::start();
    let rootfs = busybox_rootfs(agent.dir.path()).display().to_string();
    let prefix = unique("q");
    let (idle, busy) = (format!("{prefix}-idle"), format!("{prefix}-busy"));
    agent.ok(&["run", "-d", "--name", &idle, &rootfs, "sleep", "300"]);
    // A few ticks with the idle container alone, then the busy one: CPU and a syscall (an
    // open and a close of /dev/null) per loop.
    std::thread::sleep(Duration::from_secs(3));
    let busy_from = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &busy,
        &rootfs,
        "sh",
        "-c",
        "while :; do echo x > /dev/null; done",
    ]);
    let path = format!("/api/v1/query?window=30s&step=1s&sort=syscalls&name={prefix}");
    let view = wait_for(
        Duration::from_secs(30),
        "5 s of the busy container's series",
        || {
            let (status, body) = agent.get(&path);
            assert_eq!(status, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            (series(&v, &busy, "cpu_cores").iter().flatten().count() >= 5).then_some(v)
        },
    );
    assert_eq!(view["resolution_seconds"], 1.0);
    assert_eq!(view["timestamps"].as_array().unwrap().len(), 30);
    let names: Vec<&str> = view["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [busy.as_str(), idle.as_str()],
        "sorted by syscalls/s"
    );
    let times: Vec<f64> = view["timestamps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    let cpu = series(&view, &busy, "cpu_cores");
    let sys = series(&view, &busy, "syscalls_per_second");
    // Null before it existed, numbers since.
    for (i, t) in times.iter().enumerate() {
        if *t < busy_from {
            assert_eq!(
                cpu[i], None,
                "busy's CPU at {t}, before it started at {busy_from}"
            );
            assert_eq!(sys[i], None);
        }
    }
    let idle_cpu = mean(&series(&view, &idle, "cpu_cores"));
    let idle_sys = mean(&series(&view, &idle, "syscalls_per_second"));
    let (busy_cpu, busy_sys) = (mean(&cpu), mean(&sys));
    println!(
        "busy: {busy_cpu:.3} cores, {busy_sys:.0} syscalls/s; idle: {idle_cpu:.4} cores, {idle_sys:.1} syscalls/s"
    );
    assert!(
        busy_cpu > 0.05 && busy_cpu > 10.0 * idle_cpu,
        "busy {busy_cpu} cores, idle {idle_cpu}"
    );
    assert!(
        busy_sys > 1000.0 && busy_sys > 10.0 * idle_sys,
        "busy {busy_sys}/s, idle {idle_sys}/s"
    );
    let mem = series(&view, &busy, "memory_bytes");
    assert!(mem.last().unwrap().is_some_and(|m| m > 0.0), "{mem:?}");

    // berth query --format json: the same series, as the agent sends them.
    let out = agent.ok(&[
        "query",
        "--window",
        "20s",
        "--sort",
        "cpu",
        "--filter",
        &format!("name={prefix}"),
        "--format",
        "json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["containers"][0]["name"], busy.as_str(), "{out}");
    assert!(
        series(&v, &busy, "cpu_cores").iter().flatten().count() >= 5,
        "{out}"
    );
    let table = agent.ok(&[
        "query",
        "--window",
        "20s",
        "--filter",
        &format!("container={busy}"),
    ]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&busy) && !table.contains(&idle), "{table}");

    // berth top --no-stream: one table, the busy container first with numbers.
    let top = agent.ok(&["top", "--no-stream", "--filter", &format!("name={prefix}")]);
    println!("{top}");
    let lines: Vec<&str> = top.lines().collect();
    for col in [
        "NAME",
        "ENGINE",
        "CPU %",
        "MEM",
        "PIDS",
        "NET RX/s",
        "NET TX/s",
        "SYSCALLS/s",
        "NF µs/pkt",
        "NEW FLOWS/s",
    ] {
        assert!(lines[0].contains(col), "{col} missing: {}", lines[0]);
    }
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], busy, "{top}");
    assert_eq!(row[1], "berth");
    assert!(row[2].ends_with('%') && row[2] != "0.00%", "CPU: {top}");
    assert!(
        row[7].parse::<f64>().is_ok_and(|s| s > 1000.0),
        "syscalls/s: {top}"
    );
    assert_eq!(lines.len(), 3, "{top}");

    // Bad input: a clear error naming the parameter, exit status not 0.
    let (code, _, err) = agent.cli(&["query", "--window", "2h"]);
    assert_ne!(code, 0);
    assert!(err.contains("window="), "{err}");
    let (code, _, err) = agent.cli(&["top", "--no-stream", "--sort", "bogus"]);
    assert_ne!(code, 0);
    assert!(err.contains("sort=bogus"), "{err}");
    let (code, _, err) = agent.cli(&["top", "--filter", "label=x"]);
    assert_ne!(code, 0);
    assert!(err.contains("engine="), "{err}");
}
