//! `berth pull` and `berth run REF` against a real registry: Debian's `docker-registry` started
//! on 127.0.0.1 with its own config and storage, images pushed to it by `skopeo` (not berth)
//! from an OCI layout built by `common/build_image.sh`. The registry's own access log is the
//! judge of what berth fetched.
//!
//! Needs root, docker-registry and skopeo (`cargo xtask setup` installs both).

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::Agent;
use sha2::{Digest as _, Sha256};

/// A docker-registry on loopback with its own storage; killed on drop.
struct Registry {
    child: Child,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Self {
        for tool in ["docker-registry", "skopeo"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool} >/dev/null")])
                    .status()
                    .unwrap()
                    .success(),
                "{tool} is missing: run `cargo xtask setup` (Debian's {tool} package)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("registry.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: \
                 {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("registry.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let registry = Self {
            child,
            addr,
            log,
            _dir: dir,
        };
        common::wait_for(Duration::from_secs(10), "docker-registry listening", || {
            std::net::TcpStream::connect(&registry.addr).ok()
        });
        registry
    }

    /// Pushes the OCI layout at `layout` as `name:tag` with skopeo.
    fn push(&self, layout: &Path, name: &str, extra: &[&str]) {
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("docker://{}/{name}", self.addr))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Blob downloads the registry logged (its access log).
    fn blob_gets(&self) -> usize {
        fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A copy of the layout at `from` whose config adds `env` (so a new image id), rewritten with
/// a new manifest and index; returns (layout, image id).
fn variant(from: &Path, to: &Path, env: &str) -> (PathBuf, String) {
    let cp = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(cp.success());
    let blobs = to.join("blobs/sha256");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(to.join("index.json")).unwrap()).unwrap();
    let man_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blobs.join(&man_digest[7..])).unwrap()).unwrap();
    let cfg_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(blobs.join(&cfg_digest[7..])).unwrap()).unwrap();
    config["config"]["Env"] = serde_json::json!([env]);
    let cfg = serde_json::to_vec(&config).unwrap();
    let id = sha(&cfg);
    fs::write(blobs.join(&id), &cfg).unwrap();
    manifest["config"]["digest"] = format!("sha256:{id}").into();
    manifest["config"]["size"] = cfg.len().into();
    let man = serde_json::to_vec(&manifest).unwrap();
    let man_hex = sha(&man);
    fs::write(blobs.join(&man_hex), &man).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{man_hex}"), "size": man.len(),
        "platform": {"architecture": "amd64", "os": "linux"}}]});
    fs::write(to.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    (to.to_path_buf(), id)
}

/// Nothing of a failed pull is left: no image listed, nothing in the store's scratch dir.
fn assert_nothing_left(agent: &Agent, images_before: usize) {
    let ls: Vec<serde_json::Value> =
        serde_json::from_str(&agent.ok(&["image", "ls", "--format", "json"])).unwrap();
    assert_eq!(
        ls.len(),
        images_before,
        "a failed pull listed an image: {ls:?}"
    );
    let tmp = agent.dir.path().join("state/images/tmp");
    let left: Vec<_> = fs::read_dir(&tmp).unwrap().collect();
    assert!(
        left.is_empty(),
        "a failed pull left {left:?} in {}",
        tmp.display()
    );
}

#[test]
fn an_image_pushed_by_skopeo_pulls_runs_and_moves_with_its_tag() {
    let registry = Registry::start();
    let build = tempfile::tempdir().unwrap();
    let (_, _, id) = common::build_image_archives(build.path());
    let layout = build.path().join("oci");
    registry.push(&layout, "shell/app:v1", &[]);
    let agent = Agent::start();
    let reference = format!("{}/shell/app:v1", registry.addr);

    let before = registry.blob_gets();
    let out = agent.ok(&["pull", &reference]);
    assert_eq!(out.trim(), id, "the pulled image's id is its config digest");
    let fetched = registry.blob_gets() - before;
    assert_eq!(fetched, 3, "config and two layers fetched once each");
    let ls = agent.ok(&["image", "ls"]);
    assert!(ls.contains(&reference), "{ls}");

    // Entrypoint /bin/busybox + our command, as the image says.
    let (code, out, err) = agent.cli(&[
        "run",
        "--rm",
        "--pull",
        "never",
        &reference,
        "cat",
        "/etc/motd",
    ]);
    assert_eq!(code, 0, "{out}{err}\n{}", agent.log());
    assert_eq!(out.trim(), "hello");

    // The same digest again: the manifest is asked for, no blob is fetched.
    let before = registry.blob_gets();
    assert_eq!(agent.ok(&["pull", &reference]).trim(), id);
    assert_eq!(
        registry.blob_gets() - before,
        0,
        "a second pull fetched blobs"
    );

    // The tag moves to a new image: the next pull gets the new digest and the name follows.
    let (layout2, id2) = variant(&layout, &build.path().join("oci2"), "VERSION=2");
    assert_ne!(id, id2);
    registry.push(&layout2, "shell/app:v1", &[]);
    assert_eq!(agent.ok(&["pull", &reference]).trim(), id2);
    let (code, out, err) = agent.cli(&[
        "run",
        "--rm",
        "--pull",
        "always",
        &reference,
        "sh",
        "-c",
        "echo $VERSION",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "2");

    // `run` of a reference not stored yet pulls it (--pull missing, the default).
    registry.push(&layout, "shell/other:v3", &[]);
    let other = format!("{}/shell/other:v3", registry.addr);
    let (code, out, err) = agent.cli(&["run", "--rm", &other, "cat", "/etc/motd"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "hello");
}

#[test]
fn unknown_tags_and_unreachable_registries_fail_clearly_and_leave_nothing() {
    let registry = Registry::start();
    let build = tempfile::tempdir().unwrap();
    common::build_image_archives(build.path());
    registry.push(&build.path().join("oci"), "shell/app:v1", &[]);
    let agent = Agent::start();

    let missing = format!("{}/shell/app:nope", registry.addr);
    let (code, out, err) = agent.cli(&["pull", &missing]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains(&missing) && err.contains("no such tag"),
        "{err}"
    );
    assert_nothing_left(&agent, 0);

    // A port nothing listens on.
    let closed = format!("127.0.0.1:{}/shell/app:v1", common::free_port());
    let (code, out, err) = agent.cli(&["pull", &closed]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains(&closed) && err.contains("cannot be reached"),
        "{err}"
    );
    assert_nothing_left(&agent, 0);

    let (code, _, err) = agent.cli(&["run", "--rm", &closed, "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot be reached"), "{err}");
    assert_nothing_left(&agent, 0);

    let (code, _, err) = agent.cli(&["pull", "Not/A Ref"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid image reference"), "{err}");
}

#[test]
fn a_zstd_layer_pulls_and_runs() {
    let registry = Registry::start();
    let build = tempfile::tempdir().unwrap();
    common::build_image_archives(build.path());
    registry.push(
        &build.path().join("oci"),
        "shell/zstd:v1",
        // skopeo compresses the uncompressed layer (the second) with zstd.
        &["--dest-compress-format", "zstd"],
    );
    let reference = format!("{}/shell/zstd:v1", registry.addr);
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    let manifest = String::from_utf8_lossy(&raw.stdout);
    assert!(
        manifest.contains("+zstd"),
        "no zstd layer pushed: {manifest}"
    );
    let agent = Agent::start();
    agent.ok(&["pull", &reference]);
    let (code, out, err) = agent.cli(&["run", "--rm", &reference, "cat", "/etc/motd"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "hello");
}

#[test]
fn a_layer_that_does_not_match_its_digest_fails_naming_it_and_leaves_nothing() {
    let registry = Registry::start();
    let build = tempfile::tempdir().unwrap();
    common::build_image_archives(build.path());
    let layout = build.path().join("oci");
    registry.push(&layout, "shell/bad:v1", &[]);
    // The registry's own copy of the first layer, flipped in place (same size): it serves the
    // bytes as they are on disk.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let man_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(layout.join("blobs/sha256").join(&man_digest[7..])).unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = &layer[7..];
    let data = registry
        ._dir
        .path()
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    let agent = Agent::start();
    let reference = format!("{}/shell/bad:v1", registry.addr);
    let (code, out, err) = agent.cli(&["pull", &reference]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains(&layer) && err.contains("does not match its digest"),
        "{err}"
    );
    assert_nothing_left(&agent, 0);
    let (code, _, err) = agent.cli(&["run", "--rm", &reference, "true"]);
    assert_ne!(code, 0);
    assert!(err.contains(&layer), "{err}");
    let ps = agent.ok(&["ps", "-a", "-q"]);
    assert!(ps.trim().is_empty(), "a failed pull left a container: {ps}");
    assert_nothing_left(&agent, 0);
}
