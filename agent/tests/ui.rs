//! The web UI in a real browser: Debian's chromium, headless, driven over the DevTools
//! protocol (tests/common/cdp.rs) against the real agent with real containers.
//!
//! Two berth containers publish UDP ranges: an echo server behind the nft map that a client
//! namespace keeps busy (network, syscalls, CPU), and a container behind per-port iptables
//! rules that later gets new flows. The page must load without a console error, show exactly
//! the containers and the plotted series `/api/v1/query` answers for the same window and
//! filters (read from the page: the table's rows and `window.berthCharts`, the arrays uPlot
//! draws), keep polling without a reload, show the diagnose finding for the iptables container
//! with its measured cost once the new flows arrive, rank the ranges by cost with the iptables
//! range's cost per packet well above the map's, and re-query when the filters change.
//! Screenshots (1366x768 and the whole page) go to target/test-artifacts/.

#[path = "common/cdp.rs"]
mod cdp;
mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use common::{Agent, ClientNs, echo_rootfs, udp_new_flows, unique, wait_for};
use serde_json::Value;

/// The laptop screen the page must be readable on.
const SCREEN: (u32, u32) = (1366, 768);

/// UDP echo requests from a socket in the client namespace, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Load {
    fn start(client: &ClientNs, to: SocketAddr) -> Self {
        let sock = client.ns.run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
        sock.connect(to).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut answered, mut buf) = (0, [0u8; 2048]);
            while !flag.load(Ordering::Relaxed) {
                let _ = sock.send(&[7u8; 1000]);
                if sock.recv(&mut buf).is_ok() {
                    answered += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            answered
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where the screenshots go: target/test-artifacts/.
fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts")
}

/// What the page shows: its last poll (`berthView`), the table's rows and every chart's data.
const READ_PAGE: &str = r#"(() => ({
  view: window.berthView,
  rows: [...document.querySelectorAll('#containers tbody tr[data-id]')].map((tr) => ({
    id: tr.dataset.id, name: tr.dataset.name, engine: tr.dataset.engine,
    cells: [...tr.cells].map((td) => td.textContent.trim()),
  })),
  charts: Object.entries(window.berthCharts).map(([key, c]) => ({
    key, owner: c.owner, fields: c.fields, data: c.data,
    drawn: !!document.querySelector(`[data-chart="${CSS.escape(key)}"] canvas`),
  })),
}))()"#;

/// The port view's rows: container, cost (netfilter µs/s) and µs/packet, as ranked.
const READ_PORTS: &str = r#"[...document.querySelectorAll('#ports tbody tr[data-container]')].map((tr) => ({
  container: tr.dataset.container, cost: Number(tr.dataset.cost),
  us_per_packet: tr.dataset.usPerPacket === "" ? null : Number(tr.dataset.usPerPacket),
}))"#;

/// Reads the page right after one of its polls and `/api/v1/query` with the same URL, until
/// both answers end on the same frame of the history (the agent adds one per second, so a
/// few tries do); returns (page, api).
fn page_and_api(page: &mut cdp::Page, agent: &Agent) -> (Value, Value) {
    let mut ends = Vec::new();
    for _ in 0..30 {
        let polls = page.eval("window.berthView.polls");
        wait_for(Duration::from_secs(15), "the page's next poll", || {
            (page.eval("window.berthView.polls") != polls).then_some(())
        });
        let shown = page.eval(READ_PAGE);
        let url = shown["view"]["url"]
            .as_str()
            .expect("berthView.url")
            .to_owned();
        let (status, body) = agent.get(&url);
        assert_eq!(status, 200, "GET {url}: {body}");
        let api: Value = serde_json::from_str(&body).unwrap();
        let (p, a) = (last_ts(&shown["view"]), last_ts(&api));
        if p == a {
            return (shown, api);
        }
        ends.push(a - p);
    }
    panic!("the page's query never ended on the API's newest frame; API minus page: {ends:?} s");
}

fn last_ts(v: &Value) -> f64 {
    v["timestamps"]
        .as_array()
        .and_then(|t| t.last())
        .and_then(Value::as_f64)
        .expect("timestamps")
}

/// Every chart of the page equals the API's series, point for point; returns how many series
/// were compared.
fn assert_plotted_equals_api(shown: &Value, api: &Value) -> usize {
    let ts = &api["timestamps"];
    let charts = shown["charts"].as_array().unwrap();
    let chart = |key: &str| {
        charts
            .iter()
            .find(|c| c["key"] == key)
            .unwrap_or_else(|| panic!("no chart {key} on the page: {:?}", keys(charts)))
    };
    let mut compared = 0;
    let mut owners = vec![("host".to_owned(), &api["host"])];
    for c in api["containers"].as_array().unwrap() {
        owners.push((c["id"].as_str().unwrap().to_owned(), &c["series"]));
    }
    for metric in [
        "cpu",
        "memory",
        "net",
        "syscalls",
        "netfilter",
        "flows",
        "hooks",
    ] {
        for (owner, series) in &owners {
            if owner == "host" && metric == "hooks" {
                continue; // the host has no split by hook
            }
            let key = format!("{owner}/{metric}");
            let c = chart(&key);
            assert_eq!(c["drawn"], true, "chart {key} has no canvas");
            assert_eq!(
                numbers(&c["data"][0]),
                numbers(ts),
                "chart {key}: timestamps differ from the API's"
            );
            for (i, field) in c["fields"].as_array().unwrap().iter().enumerate() {
                let field = field.as_str().unwrap();
                assert_eq!(
                    numbers(&c["data"][i + 1]),
                    numbers(field.split('.').fold(*series, |v, k| &v[k])),
                    "chart {key}: {field} plotted differs from the API's"
                );
                compared += 1;
            }
        }
    }
    // Nothing else is plotted (no chart of a container the API did not return).
    assert_eq!(
        charts.len(),
        6 + (owners.len() - 1) * 7,
        "charts: {:?}",
        keys(charts)
    );
    compared
}

/// A JSON array of numbers and nulls as values (the browser writes 3.0 as 3, serde as 3.0).
fn numbers(v: &Value) -> Vec<Option<f64>> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| {
            assert!(x.is_null() || x.is_number(), "not a number: {x}");
            x.as_f64()
        })
        .collect()
}

fn keys(charts: &[Value]) -> Vec<&str> {
    charts.iter().filter_map(|c| c["key"].as_str()).collect()
}

/// The largest known value of a container's series in the API's answer (`a.b`: nested).
fn peak(api: &Value, id: &str, field: &str) -> f64 {
    api["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .and_then(|c| field.split('.').fold(&c["series"], |v, k| &v[k]).as_array())
        .map(|v| v.iter().filter_map(Value::as_f64).fold(0.0, f64::max))
        .unwrap_or_else(|| panic!("container {id} missing from {api}"))
}

#[test]
fn the_page_plots_what_the_query_api_answers_and_shows_the_iptables_finding_live() {
    let agent = Agent::start();
    let probes = agent.system()["probes"].clone();
    for name in ["netfilter", "network", "syscalls"] {
        let p = probes
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no probe {name} in {probes}"));
        assert_eq!(
            p["attached"],
            true,
            "probe {name} down: {p}\n{}",
            agent.log()
        );
    }
    let rootfs = echo_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    // Host ports no other test publishes (tests/network.rs stops at 54999), per run.
    let base = 55000 + (std::process::id() % 5) as u16 * 1100;
    let (echo, ipt) = (unique("ui-echo"), unique("ui-ipt"));
    // "berth-it-<pid>-": the names of this run's containers and no one else's.
    let prefix = format!("berth-it-{}-", std::process::id());
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &echo,
        "-p",
        &format!("{}-{}:7000-7009/udp", base + 1000, base + 1009),
        rootfs,
        "berth-test-echo",
        "--ports",
        "7000-7009",
    ]);
    let ipt_range = format!("{base}-{}", base + 999);
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &ipt,
        "--port-backend",
        "iptables",
        "-p",
        &format!("{ipt_range}:{ipt_range}/udp"),
        rootfs,
        "sleep",
        "600",
    ]);
    let echo_id = agent.wait_status(&echo, "running", 10)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ipt_id = agent.wait_status(&ipt, "running", 10)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(Duration::from_secs(10), "the echo server", || {
        agent
            .ok(&["logs", &echo])
            .contains("listening")
            .then_some(())
    });
    let client = ClientNs::create();
    let load = Load::start(&client, SocketAddr::from((client.host_ip, base + 1000)));

    let browser = cdp::Browser::launch(SCREEN.0, SCREEN.1);
    let mut page = browser.page();
    page.shot_on_failure = Some(artifacts().join(format!("ui-{}-failed.png", std::process::id())));
    page.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({ "width": SCREEN.0, "height": SCREEN.1, "deviceScaleFactor": 1, "mobile": false }),
    );
    // Only this run's containers (the name filter is a substring), a minute at 1 s steps.
    page.goto(&format!("{}/#name={prefix}&window=60s&top=20", agent.base));
    page.eval("window.loadedOnce = 'still the first load'");
    wait_for(Duration::from_secs(30), "the page's first poll", || {
        (page.eval("window.berthView.polls").as_u64() >= Some(1)).then_some(())
    });
    let problems = page.problems();
    assert!(
        problems.is_empty(),
        "the page logged problems:\n{}",
        problems.join("\n")
    );
    wait_for(
        Duration::from_secs(30),
        "both containers on the page",
        || {
            let ids = page.eval(
            "[...document.querySelectorAll('#containers tbody tr[data-id]')].map((r) => r.dataset.id)",
        );
            let ids = ids.as_array().cloned().unwrap_or_default();
            (ids.contains(&Value::from(echo_id.as_str()))
                && ids.contains(&Value::from(ipt_id.as_str())))
            .then_some(())
        },
    );
    let problems = page.problems();
    assert!(
        problems.is_empty(),
        "the page logged problems:\n{}",
        problems.join("\n")
    );

    // Rows and plotted series against the API, once the echo traffic shows in the window.
    wait_for(
        Duration::from_secs(30),
        "8 seconds of echo traffic in the query window",
        || {
            let (_, body) = agent.get(&format!("/api/v1/query?window=60s&container={echo_id}"));
            let api: Value = serde_json::from_str(&body).ok()?;
            let rx = &api["containers"][0]["series"]["net_rx_bytes_per_second"];
            let busy = numbers(rx).iter().flatten().filter(|v| **v > 0.0).count();
            (busy >= 8).then_some(())
        },
    );
    let (shown, api) = page_and_api(&mut page, &agent);
    let rows: Vec<(&str, &str, &str)> = shown["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap(),
                r["name"].as_str().unwrap(),
                r["engine"].as_str().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(&str, &str, &str)> = api["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap(),
                c["name"].as_str().unwrap(),
                c["engine"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows, expected,
        "the table's rows are not the API's containers"
    );
    assert_eq!(
        rows.len(),
        2,
        "only this run's two containers match {prefix}: {rows:?}"
    );
    let compared = assert_plotted_equals_api(&shown, &api);
    let points = api["timestamps"].as_array().unwrap().len();
    for field in [
        "memory_bytes",
        "net_rx_bytes_per_second",
        "net_tx_bytes_per_second",
        "syscalls_per_second",
    ] {
        assert!(
            peak(&api, &echo_id, field) > 0.0,
            "the echo container's {field} is never above 0: {api}"
        );
    }
    eprintln!("{compared} series of {points} points plotted exactly as /api/v1/query answers");

    // New flows to the iptables container's last port: its finding gains the measured cost.
    let finding = format!(
        r#"document.querySelector('.finding[data-subject="container {ipt}"]')?.textContent ?? null"#
    );
    let before = page.eval(&finding);
    assert!(
        before
            .as_str()
            .is_some_and(|t| !t.contains("per new-flow packet to these ports")),
        "before any traffic the iptables finding should name its rules only: {before}"
    );
    udp_new_flows(
        &client.ns,
        SocketAddr::from((client.host_ip, base + 999)),
        300,
    );
    let text = wait_for(
        Duration::from_secs(30),
        "the measured cost in the page's finding",
        || {
            page.eval(&finding)
                .as_str()
                .filter(|t| t.contains("per new-flow packet to these ports"))
                .map(str::to_owned)
        },
    );
    assert!(
        text.contains("3000 iptables rules for 1000 published ports"),
        "{text}"
    );
    assert!(text.contains("--port-backend nft-map"), "{text}");
    // The port view: both ranges, costliest (netfilter µs per second) first, and per packet
    // the iptables range above the nft map's.
    let ranges = wait_for(
        Duration::from_secs(20),
        "the iptables range's cost per packet",
        || {
            let rows = page.eval(READ_PORTS);
            let rows = rows.as_array()?.clone();
            let ipt_row = rows.iter().find(|r| r["container"] == ipt_id.as_str())?;
            ipt_row["us_per_packet"].as_f64().filter(|us| *us > 0.0)?;
            Some(rows)
        },
    );
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    let costs: Vec<f64> = ranges.iter().map(|r| r["cost"].as_f64().unwrap()).collect();
    assert!(
        costs[0] >= costs[1],
        "ranges not costliest first: {ranges:?}"
    );
    let per_packet = |id: &str| {
        let r = ranges.iter().find(|r| r["container"] == id).unwrap();
        r["us_per_packet"].as_f64().unwrap_or(0.0)
    };
    let (ipt_us, echo_us) = (per_packet(&ipt_id), per_packet(&echo_id));
    assert!(
        ipt_us > 2.0 * echo_us,
        "per packet the iptables range should cost well above the nft map's: {ranges:?}"
    );
    eprintln!(
        "port view: iptables range {ipt_us:.1} µs/packet, nft-map range {echo_us:.1}; {ranges:?}"
    );
    let (shown, api) = page_and_api(&mut page, &agent);
    assert_plotted_equals_api(&shown, &api);
    assert!(peak(&api, &ipt_id, "new_flows_per_second") > 0.0, "{api}");
    assert!(
        peak(&api, &ipt_id, "netfilter_us_per_packet") > 0.0,
        "{api}"
    );
    assert!(
        peak(&api, &ipt_id, "netfilter_us_per_second_by_hook.prerouting") > 0.0,
        "{api}"
    );
    assert_eq!(
        page.eval("window.loadedOnce"),
        "still the first load",
        "the page reloaded instead of updating"
    );

    let dir = artifacts();
    let shot = page.screenshot(
        &dir.join(format!("ui-{}-1366x768.png", std::process::id())),
        false,
    );
    let full = page.screenshot(
        &dir.join(format!("ui-{}-full.png", std::process::id())),
        true,
    );
    eprintln!("screenshots: {} {}", shot.display(), full.display());

    // A container's name scrolls to its charts and keeps the filters.
    let hash = page.eval("location.hash");
    page.eval("document.querySelector('#containers a[data-charts]').click()");
    assert_eq!(
        page.eval("location.hash"),
        hash,
        "clicking a name changed the filters"
    );
    assert!(
        page.eval("window.scrollY").as_f64() > Some(0.0),
        "clicking a name did not scroll to its charts"
    );

    // The filters: the engine selector lists berth; docker's containers are none of these;
    // a full name leaves one row. Each change is a new query, not a reload.
    let engines = page
        .eval("[...document.querySelector('#filters [name=engine]').options].map((o) => o.value)");
    assert!(
        engines.as_array().unwrap().contains(&Value::from("berth")),
        "engine options: {engines}"
    );
    for (hash, want) in [
        (format!("name={prefix}&engine=docker&window=60s"), vec![]),
        (format!("name={ipt}&window=300s"), vec![ipt_id.as_str()]),
    ] {
        page.eval(&format!("location.hash = {:?}", hash));
        let rows = wait_for(
            Duration::from_secs(20),
            &format!("the rows of #{hash}"),
            || {
                let v = page.eval(&format!(
                "window.berthView.url.includes({:?}) && window.berthView.url.endsWith({:?}) ? \
                 [...document.querySelectorAll('#containers tbody tr[data-id]')].map((r) => r.dataset.id) : null",
                if hash.contains("docker") { "engine=docker" } else { "window=300s" },
                format!("name={}", if hash.contains("docker") { &prefix } else { &ipt }),
            ));
                v.as_array().cloned()
            },
        );
        assert_eq!(rows, want, "rows for #{hash}");
        let charts = page
            .eval("Object.keys(window.berthCharts).filter((k) => !k.startsWith('host/')).length");
        assert_eq!(charts, want.len() * 7, "container charts for #{hash}");
    }
    let problems = page.problems();
    assert!(
        problems.is_empty(),
        "the page logged problems:\n{}",
        problems.join("\n")
    );
    let answered = load.finish();
    assert!(answered > 0, "the echo container answered no request");
}
