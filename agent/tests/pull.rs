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
    process::Command,
    sync::atomic::Ordering,
    time::Duration,
};

use common::{
    Agent,
    registry::{Layout, Registry, SlowProxy},
};

/// A copy of the layout at `from` whose config adds `env` (so a new image id); returns (layout,
/// image id).
fn variant(from: &Path, to: &Path, env: &str) -> (PathBuf, String) {
    let (_, _, id) =
        Layout(from.to_owned()).variant(to, |c| c["config"]["Env"] = serde_json::json!([env]), &[]);
    (to.to_path_buf(), id)
}

/// Bytes of the config and layers of the image as the registry serves it (skopeo compresses
/// plain layers on push).
fn served_bytes(reference: &str) -> u64 {
    let raw = common::registry::run(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}")),
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().unwrap())
        .map(|d| d["size"].as_u64().unwrap())
        .sum()
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
    let (code, out, err) = agent.cli(&["pull", &reference]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), id, "the pulled image's id is its config digest");
    // Not a terminal: one plain line per layer step, Docker's words.
    assert_eq!(err.matches(": Pull complete").count(), 2, "{err}");
    assert!(err.contains("manifest sha256:"), "{err}");
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
    let (code, out, err) = agent.cli(&["pull", &reference]);
    assert_eq!((code, out.trim()), (0, id.as_str()), "{err}");
    assert_eq!(
        registry.blob_gets() - before,
        0,
        "a second pull fetched blobs"
    );
    assert_eq!(err.matches(": Already exists").count(), 2, "{err}");
    let metrics = agent.metrics();
    let pulls = |result| common::sample(&metrics, "berth_image_pulls_total", &[("result", result)]);
    assert_eq!(pulls("success"), Some(2.0), "{metrics}");
    assert_eq!(pulls("failure"), Some(0.0));
    let bytes = common::sample(&metrics, "berth_image_pull_bytes_total", &[]).unwrap();
    assert_eq!(
        bytes,
        served_bytes(&reference) as f64,
        "config and layers, once"
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

    // The API tells the caller whose fault it is: no such tag 404, no registry 502.
    for (reference, status) in [(&missing, 404), (&closed, 502)] {
        let body = serde_json::json!({ "reference": reference }).to_string();
        let (code, text) = agent.socket_request("POST", "/api/v1/images/pull", Some(&body));
        assert_eq!(code, status, "{reference}: {text}");
    }

    let (code, _, err) = agent.cli(&["run", "--rm", &closed, "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot be reached"), "{err}");
    assert_nothing_left(&agent, 0);

    let metrics = agent.metrics();
    let failed = common::sample(
        &metrics,
        "berth_image_pulls_total",
        &[("result", "failure")],
    );
    assert_eq!(failed, Some(5.0), "two CLI pulls, two API pulls, one run");
    assert!(
        agent.log().contains("pull failed"),
        "failures are in the agent's log"
    );

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
        .dir
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
    let ps = agent.ok(&["ps", "-a", "-q", "-f", "engine=berth"]);
    assert!(ps.trim().is_empty(), "a failed pull left a container: {ps}");
    assert_nothing_left(&agent, 0);
}

/// The registry's platform name of this host's architecture.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("the multi-arch test knows amd64 and arm64 hosts, not {other}"),
    }
}

#[test]
fn a_multi_arch_index_pulls_the_hosts_platform() {
    let registry = Registry::start();
    let build = tempfile::tempdir().unwrap();
    common::build_image_archives(build.path());
    let base = Layout(build.path().join("oci"));
    let arch_variant = |arch: &str| {
        base.variant(
            &build.path().join(arch),
            |c| {
                c["architecture"] = arch.into();
                c["config"]["Env"] = serde_json::json!([format!("ARCH={arch}")]);
            },
            &[],
        )
    };
    let (arm, arm_manifest, arm_id) = arch_variant("arm64");
    let (amd, amd_manifest, amd_id) = arch_variant("amd64");
    // One layout holding both images under an index, the other platform listed first.
    let multi = Layout(build.path().join("multi"));
    common::registry::run(Command::new("cp").arg("-a").arg(&amd.0).arg(&multi.0));
    common::registry::run(
        Command::new("sh")
            .arg("-c")
            .arg("cp -n \"$0\"/blobs/sha256/* \"$1\"/blobs/sha256/")
            .arg(&arm.0)
            .arg(&multi.0),
    );
    let entry = |digest: &str, arch: &str| {
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": fs::metadata(multi.blob(digest)).unwrap().len(),
            "platform": {"architecture": arch, "os": "linux"}})
    };
    let (first, second) = if host_arch() == "amd64" {
        (entry(&arm_manifest, "arm64"), entry(&amd_manifest, "amd64"))
    } else {
        (entry(&amd_manifest, "amd64"), entry(&arm_manifest, "arm64"))
    };
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [first, second]}))
    .unwrap();
    let index_digest = multi.put(&index);
    fs::write(
        multi.0.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest, "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "v1"}}]})
        .to_string(),
    )
    .unwrap();
    registry.push_ref(
        &format!("oci:{}:v1", multi.0.display()),
        "shell/multi:v1",
        &["--all"],
    );

    let agent = Agent::start();
    let reference = format!("{}/shell/multi:v1", registry.addr);
    // The index as the registry serves it (skopeo may re-serialize manifests on push).
    let raw = common::registry::run(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}")),
    );
    let served: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let manifest_of = |arch: &str| {
        served["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .unwrap_or_else(|| panic!("no {arch} manifest in {raw}"))["digest"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let other_arch = if host_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let (want_manifest, other_manifest) = (manifest_of(host_arch()), manifest_of(other_arch));
    let (want_id, other_id) = if host_arch() == "amd64" {
        (&amd_id, &arm_id)
    } else {
        (&arm_id, &amd_id)
    };
    let _ = (&amd_manifest, &arm_manifest);
    let before = registry.blob_gets();
    // On a terminal (util-linux `script` gives the CLI one): layer lines redrawn in place.
    let cmd = format!(
        "{} --socket {} pull {reference}",
        env!("CARGO_BIN_EXE_berth"),
        agent.socket.display()
    );
    let tty = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script (util-linux) runs the CLI on a pseudo-terminal");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(shown.contains(want_id.as_str()), "{shown}");
    assert!(
        shown.contains("\x1b[2K") && shown.contains(": Pull complete"),
        "no redrawn progress on a terminal: {shown:?}"
    );
    assert_eq!(registry.gets(&want_manifest), 1, "{}", registry.log());
    assert_eq!(registry.gets(want_id), 1, "the host's config fetched once");
    assert_eq!(
        registry.gets(&other_manifest) + registry.gets(other_id),
        0,
        "the other platform's manifest or config was fetched"
    );
    assert_eq!(registry.blob_gets() - before, 3);
    let (code, out, err) = agent.cli(&["run", "--rm", &reference, "sh", "-c", "echo $ARCH"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), host_arch());
    let inspect: serde_json::Value =
        serde_json::from_str(&agent.ok(&["image", "inspect", &reference])).unwrap();
    assert_eq!(inspect[0]["id"], want_id.as_str());
}

#[test]
fn a_pull_killed_mid_download_lists_nothing_and_the_next_pull_completes() {
    let registry = Registry::start();
    let build = tempfile::tempdir().unwrap();
    common::build_image_archives(build.path());
    // Two 12 MiB layers of random bytes (incompressible), behind a proxy passing ~1 MB/s
    // per connection.
    let mut tars = Vec::new();
    for n in ["big1", "big2"] {
        let dir = build.path().join(n);
        fs::create_dir_all(dir.join(n)).unwrap();
        common::registry::run(
            Command::new("sh")
                .arg("-c")
                .arg("head -c 12582912 /dev/urandom > \"$0/$1/blob\" && tar -C \"$0\" -cf \"$0\".tar \"$1\"")
                .arg(&dir)
                .arg(n),
        );
        tars.push(build.path().join(format!("{n}.tar")));
    }
    let (layout, _, id) = Layout(build.path().join("oci")).variant(
        &build.path().join("oci-big"),
        |_| {},
        &[&tars[0], &tars[1]],
    );
    registry.push(&layout.0, "shell/big:v1", &[]);
    let proxy = SlowProxy::start(&registry.addr);
    let reference = format!("{}/shell/big:v1", proxy.addr);

    let mut agent = Agent::start();
    let tmp = agent.dir.path().join("state/images/tmp");
    let pull = {
        let socket = agent.socket.clone();
        let reference = reference.clone();
        std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .arg("--socket")
                .arg(socket)
                .args(["pull", &reference])
                .output()
                .unwrap()
        })
    };
    // Mid-download: both big blobs partly on disk in the store's scratch directory at once
    // (layers download concurrently).
    let partial = common::wait_for(
        Duration::from_secs(60),
        "two partly downloaded blobs",
        || {
            let out = Command::new("find")
                .arg(&tmp)
                .args(["-type", "f", "-size", "+1024k"])
                .output()
                .ok()?;
            let found = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (found.lines().count() >= 2).then_some(found)
        },
    );
    let ls: Vec<serde_json::Value> =
        serde_json::from_str(&agent.ok(&["image", "ls", "--format", "json"])).unwrap();
    assert!(ls.is_empty(), "an image is listed mid-pull: {ls:?}");
    agent.kill9();
    let out = pull.join().unwrap();
    assert!(!out.status.success(), "the pull survived its agent's death");
    assert!(
        fs::read_dir(&tmp).unwrap().next().is_some(),
        "the killed pull left nothing to clean ({partial})"
    );
    assert!(
        !agent
            .dir
            .path()
            .join("state/images/images")
            .join(&id)
            .exists(),
        "a half image is in the store"
    );

    // The next start clears the scratch data; nothing is listed; the next pull completes.
    agent.spawn();
    assert_nothing_left(&agent, 0);
    proxy.slow.store(false, Ordering::Relaxed);
    assert_eq!(agent.ok(&["pull", &reference]).trim(), id);
    let (code, out, err) = agent.cli(&[
        "run",
        "--rm",
        &reference,
        "sh",
        "-c",
        "cat /big1/blob /big2/blob | wc -c",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "25165824");
    assert_nothing_left(&agent, 1);
}

#[test]
fn layers_an_imported_image_has_are_not_downloaded_again() {
    let registry = Registry::start();
    let build = tempfile::tempdir().unwrap();
    let (oci_tar, _, base_id) = common::build_image_archives(build.path());
    // The app image: the imported base's two layers plus one of its own.
    let extra = build.path().join("extra");
    fs::create_dir_all(extra.join("app")).unwrap();
    fs::write(extra.join("app/version"), "3\n").unwrap();
    common::registry::run(
        Command::new("tar")
            .arg("-C")
            .arg(&extra)
            .arg("-cf")
            .arg(build.path().join("extra.tar"))
            .arg("app"),
    );
    let (layout, _, id) = Layout(build.path().join("oci")).variant(
        &build.path().join("oci-app"),
        |_| {},
        &[&build.path().join("extra.tar")],
    );
    registry.push(&layout.0, "shell/app:v3", &[]);
    let agent = Agent::start();
    assert_eq!(
        agent
            .ok(&["image", "import", oci_tar.to_str().unwrap()])
            .trim(),
        base_id
    );

    let reference = format!("{}/shell/app:v3", registry.addr);
    let before = registry.blob_gets();
    let (code, out, err) = agent.cli(&["pull", &reference]);
    assert_eq!((code, out.trim()), (0, id.as_str()), "{err}");
    assert_eq!(
        registry.blob_gets() - before,
        2,
        "only the config and the new layer: {err}"
    );
    assert_eq!(err.matches(": Already exists").count(), 2, "{err}");
    assert_eq!(err.matches(": Pull complete").count(), 1, "{err}");
    // The shared layers are really there, under the new one; the base is untouched.
    let (code, out, err) = agent.cli(&[
        "run",
        "--rm",
        &reference,
        "sh",
        "-c",
        "cat /etc/motd /app/version; test -e /etc/doomed && echo kept || echo gone",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["hello", "3", "gone"]
    );
    let ls: Vec<serde_json::Value> =
        serde_json::from_str(&agent.ok(&["image", "ls", "--format", "json"])).unwrap();
    assert_eq!(ls.len(), 2);
    agent.ok(&["image", "rm", &base_id]);
    let (code, out, err) = agent.cli(&["run", "--rm", &reference, "cat", "/app/version"]);
    assert_eq!((code, out.trim()), (0, "3"), "{err}");
}
