//! Golden shapes of what users and dashboards depend on: the metric families and label names of
//! `/metrics`, and the field paths of every `/api/v1` JSON response, for a scripted set of
//! containers (bridge with an nft-map range, bridge with an iptables range, host network, an
//! exited one, an imported image, one run/update/kill/stop/rm cycle over the socket).
//!
//! The golden files in `tests/golden/` were captured from the code before the snapshot refactor
//! (issue 8); what the agent serves now must be a superset of them, so a rename or a dropped
//! field fails here. `BERTH_GOLDEN=update cargo test -p berth --test golden` rewrites them
//! (after a deliberate, documented change only).

mod common;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use common::{Agent, ClientNs, busybox_rootfs, unique, wait_for};

/// Field paths of a JSON value: `.a.b`, `.list[].c`; objects record their keys, arrays their
/// elements' fields.
fn json_paths(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let p = format!("{prefix}.{k}");
                out.insert(p.clone());
                json_paths(v, &p, out);
            }
        }
        serde_json::Value::Array(items) => {
            let p = format!("{prefix}[]");
            for item in items {
                json_paths(item, &p, out);
            }
        }
        _ => {}
    }
}

/// `TYPE name kind` per family and `SAMPLE name{label,...}` per distinct label-name set.
fn metric_shape(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            out.insert(format!("TYPE {rest}"));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, labels) = match line.find('{') {
            Some(i) => {
                let end = line.rfind('}').expect("closing brace");
                (&line[..i], label_names(&line[i + 1..end]))
            }
            None => (line.split(' ').next().unwrap_or(line), Vec::new()),
        };
        out.insert(format!("SAMPLE {name}{{{}}}", labels.join(",")));
    }
    out
}

/// Label names of `a="x",b="y \" z"` (values may hold escaped quotes and commas).
fn label_names(s: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        names.push(rest[..eq].trim_start_matches(',').to_owned());
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = Some(eq + 2 + i + 1);
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[end.expect("unterminated label value")..];
    }
    names.sort();
    names
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `now` against the golden file `name`: every golden line must still be there.
fn check_superset(name: &str, now: &BTreeSet<String>) {
    let path = golden_dir().join(name);
    if std::env::var("BERTH_GOLDEN").as_deref() == Ok("update") {
        std::fs::create_dir_all(golden_dir()).unwrap();
        let text: String = now.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (BERTH_GOLDEN=update writes it)", path.display()));
    let missing: Vec<&str> = golden
        .lines()
        .filter(|l| !l.is_empty() && !now.contains(*l) && !has_wider_sample(now, l))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lines of {} are gone (renamed or dropped):\n{}",
        missing.len(),
        path.display(),
        missing.join("\n")
    );
}

/// Whether `now` has the sample line `line` (`SAMPLE name{a,b}`) with a superset of its label
/// names: a label added to a family keeps every old label (and query) working.
fn has_wider_sample(now: &BTreeSet<String>, line: &str) -> bool {
    let parse = |l: &str| -> Option<(String, BTreeSet<String>)> {
        let rest = l.strip_prefix("SAMPLE ")?;
        let (name, labels) = rest.split_once('{')?;
        let labels = labels.trim_end_matches('}');
        Some((
            name.to_owned(),
            labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    };
    let Some((name, want)) = parse(line) else {
        return false;
    };
    now.iter()
        .filter_map(|l| parse(l))
        .any(|(n, have)| n == name && have.is_superset(&want))
}

/// One request over the agent's Unix socket: (status, JSON body).
fn socket_api(
    agent: &Agent,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let (status, body) = agent.socket_request(method, path, body);
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body}"));
    (status, json)
}

fn get_json(agent: &Agent, path: &str) -> serde_json::Value {
    let (status, body) = agent.get(path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Another engine's container as berth finds it: a process in `<cgroup2>/docker/<64 hex>` (no
/// Docker running: named by its short id). Killed and removed on drop, with the `docker`
/// parent when this test made it.
struct ForeignContainer {
    child: std::process::Child,
    _cgroup: common::Cgroup,
    /// Dropped after `_cgroup` (fields drop in order).
    _made_parent: Option<common::Cgroup>,
}

impl ForeignContainer {
    fn start() -> Self {
        let id = format!("{:0>64}", format!("{:x}ee", std::process::id()));
        let mount = common::cgroup2_mount();
        let parent = mount.join("docker");
        let made_parent = (!parent.exists()).then(|| common::Cgroup::create(&mount, "docker"));
        let cgroup = common::Cgroup::create(&parent, &id);
        let child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        std::fs::write(cgroup.dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        ForeignContainer {
            child,
            _cgroup: cgroup,
            _made_parent: made_parent,
        }
    }
}

impl Drop for ForeignContainer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn metrics_and_api_keep_every_family_label_and_field_of_the_golden_files() {
    // Listed beside berth's own: its responses must match the document too.
    let _foreign = ForeignContainer::start();
    let agent = Agent::start();
    let rootfs = busybox_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let (map, ipt, host, done) = (
        unique("g-map"),
        unique("g-ipt"),
        unique("g-host"),
        unique("g-done"),
    );
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &map,
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        "--pids-limit",
        "100",
        "-e",
        "MODE=golden",
        "--restart",
        "on-failure:3",
        "-p",
        "46100-46109:46100-46109/udp",
        rootfs,
        "sleep",
        "300",
    ]);
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &ipt,
        "--port-backend",
        "iptables",
        "-p",
        "46200-46204:46200-46204/udp",
        rootfs,
        "sleep",
        "300",
    ]);
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &host,
        "--network",
        "host",
        rootfs,
        "sleep",
        "300",
    ]);
    agent.ok(&["run", "-d", "--name", &done, rootfs, "sh", "-c", "exit 3"]);
    for n in [&map, &ipt, &host] {
        agent.wait_status(n, "running", 20);
    }
    agent.wait_status(&done, "exited", 20);

    // Images: one imported from a `docker save` archive.
    let img_dir = agent.dir.path().join("images");
    std::fs::create_dir_all(&img_dir).unwrap();
    let (_, docker_tar, _) = common::build_image_archives(&img_dir);
    let import = format!(
        r#"{{"path":{},"name":"golden/img:v1"}}"#,
        serde_json::to_string(docker_tar.to_str().unwrap()).unwrap()
    );
    let (status, imported) = socket_api(&agent, "POST", "/api/v1/images/import", Some(&import));
    assert_eq!(status, 201, "{imported}");

    // New flows to both ranges, so per-port netfilter cost has rows.
    let client = ClientNs::create();
    common::udp_new_flows(&client.ns, SocketAddr::from((client.host_ip, 46100)), 20);
    common::udp_new_flows(&client.ns, SocketAddr::from((client.host_ip, 46200)), 20);
    wait_for(
        Duration::from_secs(15),
        "per-port cost in /api/v1/ports",
        || {
            let ports = get_json(&agent, "/api/v1/ports");
            let rows = ports.as_array()?;
            (rows.len() == 2
                && rows.iter().all(|r| {
                    r["netfilter"]["ports"]
                        .as_array()
                        .is_some_and(|p| !p.is_empty())
                }))
            .then_some(())
        },
    );
    // Two history samples (one per 5 s) so window queries have a base.
    std::thread::sleep(Duration::from_secs(6));

    let mut api = BTreeSet::new();
    // (method, path template, status, body): checked against the OpenAPI document at the end.
    let mut responses = Vec::new();
    let mut record = |route: &str, status: u16, v: &serde_json::Value| {
        responses.push(response_case(route, status, v));
        let mut paths = BTreeSet::new();
        json_paths(v, "", &mut paths);
        paths.insert(String::new());
        for p in paths {
            api.insert(format!("{route} {p}"));
        }
    };
    for route in [
        "/api/v1/system",
        "/api/v1/cgroups",
        "/api/v1/diagnose",
        "/api/v1/images",
        "/api/v1/ports",
        "/api/v1/ports?window=5s",
        "/api/v1/ports?window=5s&top=1",
        "/api/v1/query?window=10s&step=5s",
        "/api/v1/query?window=20m&top=2&sort=syscalls",
        "/api/v1/containers",
        "/api/v1/containers?all=true",
    ] {
        record(&format!("GET {route}"), 200, &get_json(&agent, route));
    }
    for n in [&map, &ipt, &host, &done] {
        for (suffix, route) in [
            ("", "/api/v1/containers/{id}"),
            ("/stats", "/api/v1/containers/{id}/stats"),
            ("/syscalls", "/api/v1/containers/{id}/syscalls"),
            (
                "/syscalls?top=5&window=5s",
                "/api/v1/containers/{id}/syscalls?top=5&window=5s",
            ),
        ] {
            let v = get_json(&agent, &format!("/api/v1/containers/{n}{suffix}"));
            record(&format!("GET {route}"), 200, &v);
        }
    }
    let (status, v) = socket_api(&agent, "GET", "/api/v1/containers/no-such-container", None);
    assert_eq!(status, 404, "{v}");
    record("GET /api/v1/containers/{missing}", status, &v);
    let (status, v) = socket_api(&agent, "GET", "/api/v1/query?step=bad", None);
    assert_eq!(status, 400, "{v}");
    record("GET /api/v1/query (bad input)", status, &v);

    // Changes, over the socket.
    record("POST /api/v1/images/import", 201, &imported);
    let cycle = unique("g-cycle");
    let run = format!(
        r#"{{"image":{},"name":"{cycle}","cmd":["sleep","300"],"limits":{{"memory":67108864}},"publish":["46300:46300/udp"]}}"#,
        serde_json::to_string(rootfs).unwrap()
    );
    let (status, v) = socket_api(&agent, "POST", "/api/v1/containers", Some(&run));
    assert_eq!(status, 201, "{v}");
    record("POST /api/v1/containers", status, &v);
    let (status, v) = socket_api(
        &agent,
        "POST",
        &format!("/api/v1/containers/{cycle}/update"),
        Some(r#"{"memory":134217728,"pids":50}"#),
    );
    assert_eq!(status, 200, "{v}");
    record("POST /api/v1/containers/{id}/update", status, &v);
    let (status, v) = socket_api(
        &agent,
        "POST",
        &format!("/api/v1/containers/{cycle}/kill?signal=CONT"),
        None,
    );
    assert_eq!(status, 200, "{v}");
    record("POST /api/v1/containers/{id}/kill", status, &v);
    let (status, v) = socket_api(
        &agent,
        "POST",
        &format!("/api/v1/containers/{cycle}/stop?t=1"),
        None,
    );
    assert_eq!(status, 200, "{v}");
    record("POST /api/v1/containers/{id}/stop", status, &v);
    let (status, v) = socket_api(
        &agent,
        "DELETE",
        &format!("/api/v1/containers/{cycle}"),
        None,
    );
    assert_eq!(status, 200, "{v}");
    record("DELETE /api/v1/containers/{id}", status, &v);
    let (status, v) = socket_api(&agent, "DELETE", "/api/v1/images/golden%2Fimg:v1", None);
    assert_eq!(status, 200, "{v}");
    record("DELETE /api/v1/images/{reference}", status, &v);
    let (status, v) = socket_api(
        &agent,
        "POST",
        "/api/v1/containers",
        Some("{\"image\":\"\"}"),
    );
    assert_eq!(status, 400, "{v}");
    record("POST /api/v1/containers (bad input)", status, &v);

    let metrics = metric_shape(&agent.metrics());
    check_superset("metrics.txt", &metrics);
    check_superset("api.txt", &api);
    let (status, doc) = socket_api(&agent, "GET", "/api/v1/openapi.json", None);
    assert_eq!(status, 200, "{doc}");
    check_against_document(doc, responses);
}

/// `GET /api/v1/containers/{id}/syscalls?top=5` (or `... (bad input)`) as the document names
/// it: (`get`, `/api/v1/containers/{id}/syscalls`).
fn response_case(route: &str, status: u16, v: &serde_json::Value) -> serde_json::Value {
    let (method, rest) = route.split_once(' ').expect("METHOD /path");
    let path = rest.split(['?', ' ']).next().unwrap_or(rest);
    let path = path.replace("{missing}", "{id}");
    serde_json::json!([method.to_lowercase(), path, status, v])
}

/// Every response the test received validates against the schema the OpenAPI document gives
/// for its route and status (jsonschema, from the Python tools of `cargo xtask setup`).
fn check_against_document(doc: serde_json::Value, cases: Vec<serde_json::Value>) {
    use std::io::Write as _;
    let python = Path::new("/opt/berth-tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: `cargo xtask setup` creates it (with openapi-spec-validator)",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/validate_responses.py");
    let mut child = std::process::Command::new(python)
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running validate_responses.py");
    let input = serde_json::json!({ "doc": doc, "cases": cases }).to_string();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writing the responses");
    let out = child.wait_with_output().expect("validate_responses.py");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "responses that violate the OpenAPI document:\n{report}"
    );
    eprintln!("{report}");
}

#[test]
fn label_names_survive_escaped_quotes_and_commas() {
    assert_eq!(
        label_names(r#"name="a,\"b=\"c",container="x""#),
        vec!["container".to_owned(), "name".to_owned()]
    );
    let shape = metric_shape("# TYPE x counter\nx_total{b=\"1\",a=\"2\"} 3\ny 1\n");
    assert!(shape.contains("TYPE x counter"));
    assert!(shape.contains("SAMPLE x_total{a,b}"));
    assert!(shape.contains("SAMPLE y{}"));
    let now: BTreeSet<String> = ["SAMPLE x_total{a,b,engine}".to_owned()].into();
    assert!(has_wider_sample(&now, "SAMPLE x_total{a,b}"));
    assert!(!has_wider_sample(&now, "SAMPLE x_total{a,c}"));
    assert!(!has_wider_sample(&now, "SAMPLE y_total{a}"));
}
