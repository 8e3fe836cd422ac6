//! Property-based requests generated from the agent's own OpenAPI document: `schemathesis`
//! (PyPI, installed by `cargo xtask setup` in its Python virtualenv) runs against a real agent
//! with containers and an image, over both listeners, and fails on any 5xx or any answer the
//! document does not describe (status, content type, headers, body schema). Part of the
//! hardening fuzz suite with `fuzz.rs`, which sends malformed bytes the document cannot
//! describe; this one sends what a client reading the document would send, valid or not.
//!
//! Bounded: a fixed seed, a fixed number of examples per operation, one worker, and a wall
//! clock cap on each schemathesis process.

mod common;

use std::{
    fs,
    io::Read as _,
    net::{Shutdown, TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::{Agent, busybox_rootfs, unique};

/// `cargo xtask setup` installs it here (xtask/src/setup.rs, PY_TOOLS_VENV), pinned.
const SCHEMATHESIS: &str = "/opt/berth-tools/venv/bin/schemathesis";
const TOKEN: &str = "schema-fuzz-token-7f3a";
/// Test cases per operation and phase; with the coverage phase's own cases this is about a
/// thousand requests per listener.
const MAX_EXAMPLES: &str = "40";
const SEED: &str = "20261202";
/// The cap on one schemathesis process; a run normally takes well under a minute.
const WALL_CLOCK: Duration = Duration::from_secs(240);

/// schemathesis's settings (its checks are set here, not on its command line, which would
/// override the per-operation ones). On both listeners: no 5xx, every answer one the document
/// describes (status, content type, headers, body schema), a request the schema forbids is
/// refused, one it allows is not refused with 400 (`positive_data_acceptance`), an
/// undocumented method gets 405; on the socket also the `Allow` header. Off: the checks
/// about authorization schemes and resources created by the run (nothing is created).
/// - `follow=true` on a running container's log is a stream that ends only when the container
///   exits: by design, not a hang, so the generated requests never follow.
/// - Three writes take values whose rules a JSON schema does not carry (their descriptions
///   do): a signal name or number, an absolute archive path, and limits with bounds that
///   depend on the host. So does `GET /api/v1/query`: a window of at most 60m, and a step
///   no finer than the resolution the window reads and no longer than the window. A
///   schema-valid value they refuse with 400 is not counted against them; every other check
///   still applies.
/// - TCP: the write routes are described as socket-only and answer 405 there by design, so
///   its `Allow` header lists fewer methods than the document: that check is off.
fn config(allow_header: bool) -> String {
    format!(
        r#"
[checks.ignored_auth]
enabled = false
[checks.object_level_authorization]
enabled = false
[checks.missing_required_header]
enabled = false
[checks.use_after_free]
enabled = false
[checks.ensure_resource_availability]
enabled = false
[checks.allow_header_conformance]
enabled = {allow_header}

[[operations]]
include-path = "/api/v1/containers/{{id}}/logs"
parameters = {{ "query.follow" = "false" }}

[[operations]]
include-operation-id = ["kill", "import_image", "update", "get_query"]
checks.positive_data_acceptance.enabled = false
"#
    )
}

/// Forwards 127.0.0.1:<random port> to the agent's Unix socket (schemathesis speaks HTTP over
/// TCP only): one thread per direction of each connection. Stopped and joined on drop.
struct Bridge {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Bridge {
    fn start(socket: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the bridge");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, socket) = (stop.clone(), socket.to_owned());
        let accept = std::thread::spawn(move || {
            for tcp in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(tcp) = tcp else { continue };
                let Ok(unix) = UnixStream::connect(&socket) else {
                    continue;
                };
                let (tcp2, unix2) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
                std::thread::spawn(move || copy(tcp, unix, |u| u.shutdown(Shutdown::Write)));
                std::thread::spawn(move || copy(unix2, tcp2, |t| t.shutdown(Shutdown::Write)));
            }
        });
        Bridge {
            port,
            stop,
            accept: Some(accept),
        }
    }
}

/// Copies `from` to `to` until end of stream or an error, then half-closes `to`.
fn copy<R: std::io::Read, W: std::io::Write>(
    mut from: R,
    mut to: W,
    shut: impl FnOnce(&W) -> std::io::Result<()>,
) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = shut(&to);
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Runs schemathesis on `doc` against `url` with `args`; panics with its report when it fails
/// or runs past [`WALL_CLOCK`]. Returns its report.
fn schemathesis(
    dir: &Path,
    label: &str,
    doc: &Path,
    url: &str,
    allow_header: bool,
    args: &[&str],
) -> String {
    let config = dir.join(format!("schemathesis-{label}.toml"));
    fs::write(&config, self::config(allow_header)).unwrap();
    let out_path = dir.join(format!("schemathesis-{label}.txt"));
    let out = fs::File::create(&out_path).unwrap();
    let mut child = Command::new(SCHEMATHESIS)
        .arg("--config-file")
        .arg(&config)
        .args(["--no-color", "run"])
        .arg(doc)
        .args(["--url", url, "--max-examples", MAX_EXAMPLES])
        .args(["--seed", SEED, "--workers", "1", "--request-timeout", "20"])
        .args(["--generation-database", "none", "--max-failures", "20"])
        .args(args)
        .current_dir(dir)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .expect("running schemathesis");
    let deadline = Instant::now() + WALL_CLOCK;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut report = String::new();
    fs::File::open(&out_path)
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    match status {
        None => panic!("schemathesis over {label} ran past {WALL_CLOCK:?}:\n{report}"),
        Some(s) if !s.success() => panic!("schemathesis over {label} failed ({s}):\n{report}"),
        Some(_) => report,
    }
}

/// The tested operations, as schemathesis counts them ("Tested: N").
fn tested(report: &str) -> usize {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn schemathesis_finds_no_5xx_and_no_answer_outside_the_document_on_either_listener() {
    assert!(
        Path::new(SCHEMATHESIS).exists(),
        "{SCHEMATHESIS} is missing: `cargo xtask setup` installs schemathesis (PyPI, in a \
         virtualenv)"
    );
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("token");
    fs::write(&token, format!("{TOKEN}\n")).unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let mut agent = Agent::prepare_full(
        Path::new(env!("CARGO_BIN_EXE_berth")),
        &format!("token_file = \"{}\"", token.display()),
        "",
    );
    agent.spawn();

    // Data for the routes: a running container (env value, published range, exits promptly
    // on SIGTERM so a generated stop never waits its timeout), an exited one with a log, an
    // image.
    let rootfs = busybox_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let (up, done) = (unique("sf-up"), unique("sf-done"));
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &up,
        "-e",
        "SECRET=fuzz",
        "-p",
        "46400-46401:46400-46401/udp",
        rootfs,
        "sh",
        "-c",
        "trap 'exit 0' TERM; echo up; while true; do sleep 1; done",
    ]);
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &done,
        rootfs,
        "sh",
        "-c",
        "echo bye; exit 3",
    ]);
    agent.wait_status(&up, "running", 20);
    agent.wait_status(&done, "exited", 20);
    let images = agent.dir.path().join("images");
    fs::create_dir_all(&images).unwrap();
    let (oci_tar, _, _) = common::build_image_archives(&images);
    let import = format!(
        r#"{{"path":{},"name":"fuzz/img:v1"}}"#,
        serde_json::to_string(oci_tar.to_str().unwrap()).unwrap()
    );
    let (status, body) = agent.socket_request("POST", "/api/v1/images/import", Some(&import));
    assert_eq!(status, 201, "{body}");
    // What earlier runs found, fixed, stated plainly (the seeded run may not repeat them).
    for (method, path, body, want) in [
        ("DELETE", "/api/v1/images/0".to_owned(), None, 404),
        (
            "POST",
            format!("/api/v1/containers/{done}/update"),
            Some("[null,null]"),
            400,
        ),
        (
            "POST",
            format!("/api/v1/containers/{done}/stop?t=3601"),
            None,
            400,
        ),
        ("GET", "/api/v1/ports?window=".to_owned(), None, 400),
    ] {
        let (status, text) = agent.socket_request(method, &path, body);
        assert_eq!(status, want, "{method} {path} {body:?}: {text}");
    }
    // Two history samples (one per 5 s), so window queries compute rates.
    std::thread::sleep(Duration::from_secs(6));

    let (status, doc) = agent.get("/api/v1/openapi.json");
    assert_eq!(status, 200, "{doc}");
    let work: PathBuf = agent.dir.path().join("schemathesis");
    fs::create_dir_all(&work).unwrap();
    let doc_path = work.join("openapi.json");
    fs::write(&doc_path, &doc).unwrap();

    // TCP: the read routes, with the token (so logs and env values are served). The write
    // routes are described as socket-only and answer 405 or 404 here by design.
    let auth = format!("Authorization: Bearer {TOKEN}");
    let tcp = schemathesis(
        &work,
        "tcp",
        &doc_path,
        &agent.base,
        false,
        &["-H", &auth, "--include-method", "GET"],
    );
    assert!(tested(&tcp) >= 10, "too few operations tested:\n{tcp}");

    // The Unix socket, through a TCP bridge: the read routes and the writes on existing
    // objects (stop, kill, update, rm of containers, image import and rm), last, since they
    // may stop or remove the containers above (the stateful phase follows links from the
    // listings to real ids). Not run: POST /api/v1/containers (it would start containers
    // from generated rootfs paths anywhere on the host, with generated commands, networks and
    // published ports) and POST /api/v1/images/pull (generated references name registries on
    // the internet: tests send traffic to loopback only).
    let bridge = Bridge::start(&agent.socket);
    let socket = schemathesis(
        &work,
        "unix",
        &doc_path,
        &format!("http://127.0.0.1:{}", bridge.port),
        true,
        &[
            "--exclude-operation-id",
            "run",
            "--exclude-operation-id",
            "pull_image",
        ],
    );
    drop(bridge);
    assert!(
        tested(&socket) >= 16,
        "too few operations tested:\n{socket}"
    );

    assert_eq!(agent.get("/healthz").0, 200, "agent down:\n{}", agent.log());
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    eprintln!("{tcp}\n{socket}");
    // The agent's drop removes its containers while it still runs; then the token goes.
    drop(agent);
    drop(secrets);
}
