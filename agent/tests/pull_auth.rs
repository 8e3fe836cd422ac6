//! `berth pull` from registries that want credentials, as an operator's private registry does:
//! one serving TLS from a test CA (trusted by berth through its per-registry `certs_dir`, as
//! Docker's `certs.d/<host:port>/ca.crt`, never the system store) with htpasswd basic auth, and
//! one with token auth against a token server the test runs (JWTs signed with a test key).
//! Credentials come from Docker's `config.json` `auths` (`[images] docker_auth_config`).
//!
//! Needs root, docker-registry, skopeo, apache2-utils (htpasswd) and openssl
//! (`cargo xtask setup` installs them).

mod common;

use std::{fs, path::Path, sync::atomic::Ordering};

use common::{
    Agent,
    registry::{
        Registry, TOKEN_ISSUER, TOKEN_SERVICE, TestPki, TokenServer, docker_config, htpasswd,
    },
};

/// Nothing of a failed pull is left: no image listed, nothing in the store's scratch dir.
fn assert_nothing_left(agent: &Agent) {
    let ls: Vec<serde_json::Value> =
        serde_json::from_str(&agent.ok(&["image", "ls", "--format", "json"])).unwrap();
    assert!(ls.is_empty(), "a failed pull listed an image: {ls:?}");
    let tmp = agent.dir.path().join("state/images/tmp");
    let left: Vec<_> = fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "a failed pull left {left:?}");
}

/// An agent whose `[images]` reads CAs from `certs` and credentials from `auth`.
fn agent_with(certs: &Path, auth: &Path) -> Agent {
    Agent::start_with(&format!(
        "[images]\ncerts_dir = \"{}\"\ndocker_auth_config = \"{}\"\n",
        certs.display(),
        auth.display()
    ))
}

#[test]
fn a_tls_registry_with_basic_auth_pulls_with_its_own_ca_and_refuses_a_wrong_password() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(pki_dir.path());
    // skopeo's own CA dir: the CA alone (it would read *.key files as client keys).
    let skopeo_certs = pki_dir.path().join("skopeo");
    fs::create_dir(&skopeo_certs).unwrap();
    fs::copy(&pki.ca, skopeo_certs.join("ca.crt")).unwrap();
    let registry = Registry::start_with(|dir| {
        let file = dir.join("htpasswd");
        htpasswd(&file, "berth", "s3cret");
        (
            format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: \
                 berth-test\n    path: {}\n",
                pki.server_cert.display(),
                pki.server_key.display(),
                file.display()
            ),
            vec![
                format!("--dest-cert-dir={}", skopeo_certs.display()),
                "--dest-creds=berth:s3cret".into(),
            ],
        )
    });
    let build = tempfile::tempdir().unwrap();
    let (_, _, id) = common::build_image_archives(build.path());
    registry.push(&build.path().join("oci"), "private/app:v1", &[]);
    let reference = format!("{}/private/app:v1", registry.addr);

    let conf = tempfile::tempdir().unwrap();
    let certs = conf.path().join("certs.d");
    let host_certs = certs.join(&registry.addr);
    fs::create_dir_all(&host_certs).unwrap();
    let auth = conf.path().join("config.json");
    docker_config(&auth, &registry.addr, "berth", "s3cret");
    let agent = agent_with(&certs, &auth);

    // A CA that did not sign the registry's certificate: TLS fails, naming the registry.
    fs::copy(&pki.token_cert, host_certs.join("ca.crt")).unwrap();
    let (code, out, err) = agent.cli(&["pull", &reference]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains(&registry.addr) && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_nothing_left(&agent);

    // The right CA, a wrong password: the registry refuses, and says so.
    fs::copy(&pki.ca, host_certs.join("ca.crt")).unwrap();
    docker_config(&auth, &registry.addr, "berth", "wrong");
    let before = registry.blob_gets();
    let (code, out, err) = agent.cli(&["pull", &reference]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains(&registry.addr) && err.contains("refused the credentials"),
        "{err}"
    );
    assert_eq!(
        registry.blob_gets(),
        before,
        "blobs served to a wrong password"
    );
    assert_nothing_left(&agent);

    // The right password: pulled, listed, inspected, run.
    docker_config(&auth, &registry.addr, "berth", "s3cret");
    assert_eq!(agent.ok(&["pull", &reference]).trim(), id);
    assert_eq!(registry.blob_gets() - before, 3, "config and two layers");
    assert!(agent.ok(&["image", "ls"]).contains(&reference));
    let inspect: serde_json::Value =
        serde_json::from_str(&agent.ok(&["image", "inspect", &reference])).unwrap();
    assert_eq!(inspect[0]["id"], id.as_str());
    let (code, out, err) = agent.cli(&["run", "--rm", &reference, "cat", "/etc/motd"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "hello");
    agent.ok(&["image", "rm", &reference]);
    assert_nothing_left(&agent);
}

#[test]
fn a_registry_with_token_auth_pulls_with_a_token_from_its_token_server() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(pki_dir.path());
    let tokens = TokenServer::start(&pki, "tok", "t0ken");
    let registry = Registry::start_with(|_| {
        (
            format!(
                "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    \
                 issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                tokens.addr,
                pki.token_cert.display()
            ),
            vec![
                "--dest-tls-verify=false".into(),
                "--dest-creds=tok:t0ken".into(),
            ],
        )
    });
    let build = tempfile::tempdir().unwrap();
    let (_, _, id) = common::build_image_archives(build.path());
    registry.push(&build.path().join("oci"), "team/app:v1", &[]);
    let reference = format!("{}/team/app:v1", registry.addr);

    let conf = tempfile::tempdir().unwrap();
    let auth = conf.path().join("config.json");
    docker_config(&auth, &registry.addr, "tok", "wrong");
    let agent = agent_with(&conf.path().join("certs.d"), &auth);

    // The token server refuses the credentials; the registry then refuses the pull.
    let refused = tokens.refused.load(Ordering::Relaxed);
    let (code, out, err) = agent.cli(&["pull", &reference]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains(&registry.addr) && err.contains("refused the credentials"),
        "{err}"
    );
    assert!(tokens.refused.load(Ordering::Relaxed) > refused);
    assert_nothing_left(&agent);

    docker_config(&auth, &registry.addr, "tok", "t0ken");
    let issued = tokens.issued.load(Ordering::Relaxed);
    let before = registry.blob_gets();
    assert_eq!(agent.ok(&["pull", &reference]).trim(), id);
    assert!(
        tokens.issued.load(Ordering::Relaxed) > issued,
        "no token was asked for"
    );
    assert_eq!(registry.blob_gets() - before, 3);
    let (code, out, err) = agent.cli(&["run", "--rm", &reference, "cat", "/etc/motd"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "hello");
}
