//! The OpenAPI document as a running agent serves it: the same on both listeners (the TCP
//! one without a token), and accepted by `openapi-spec-validator` (PyPI, installed by
//! `cargo xtask setup` in its Python virtualenv). The routes it must list are checked by the
//! unit tests of `api::openapi`.

mod common;

use std::{path::Path, process::Command};

use common::Agent;

/// `cargo xtask setup` installs the Python tools here (xtask/src/setup.rs, PY_TOOLS_VENV).
const VALIDATOR: &str = "/opt/berth-tools/venv/bin/openapi-spec-validator";

#[test]
fn both_listeners_serve_a_valid_openapi_31_document() {
    assert!(
        Path::new(VALIDATOR).exists(),
        "{VALIDATOR} is missing: `cargo xtask setup` installs it (PyPI, in a virtualenv)"
    );
    let agent = Agent::start();
    let (status, tcp) = agent.get("/api/v1/openapi.json");
    assert_eq!(status, 200, "TCP: {tcp}");
    let (status, socket) = agent.socket_request("GET", "/api/v1/openapi.json", None);
    assert_eq!(status, 200, "socket: {socket}");
    assert_eq!(tcp, socket, "the listeners serve different documents");

    let doc: serde_json::Value = serde_json::from_str(&tcp).expect("the document is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    // The write routes are described on TCP too (as socket-only), where they are not served.
    let run = &doc["paths"]["/api/v1/containers"]["post"]["description"];
    assert!(
        run.as_str()
            .is_some_and(|d| d.contains("Only on the Unix socket")),
        "{run}"
    );
    let (status, body) = agent.socket_request("POST", "/api/v1/openapi.json", Some("{}"));
    assert_eq!(status, 405, "the document is read-only: {body}");

    let file = agent.dir.path().join("openapi.json");
    std::fs::write(&file, &tcp).expect("writing the document");
    let out = Command::new(VALIDATOR)
        .arg(&file)
        .output()
        .expect("running openapi-spec-validator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openapi-spec-validator rejects the document:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("OK"), "{stdout}\n{stderr}");
}
