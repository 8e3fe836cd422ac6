//! deploy/kubernetes/ and the Dockerfile, checked offline: the manifests validate against the
//! Kubernetes schemas `kubernetes-validate` bundles (strict: an unknown field fails), the
//! DaemonSet shares the node's network and PID namespaces, and every host path in the agent's
//! embedded berth.toml is a volume mount of a hostPath that is that very path on the node. The
//! embedded berth.toml is checked by the agent's own parser (`berth agent --check-config`); the
//! Dockerfile by hadolint. The tools come from `cargo xtask setup` (a Python virtualenv).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use berth::config::{Config, DiscoveryConfig};
use serde_json::Value;

/// `cargo xtask setup` installs the Python tools here (xtask/src/setup.rs, PY_TOOLS_VENV).
const VENV: &str = "/opt/berth-tools/venv";

fn tool(name: &str) -> PathBuf {
    let p = Path::new(VENV).join("bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: `cargo xtask setup` installs it (PyPI, in a virtualenv)",
        p.display()
    );
    p
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every manifest file: the core ones, then the Prometheus Operator's.
fn manifest_files() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes");
    let mut files = Vec::new();
    for d in [dir.clone(), dir.join("prometheus-operator")] {
        let mut here: Vec<PathBuf> = std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        here.sort();
        files.extend(here);
    }
    files
}

/// Every document of every manifest, as JSON (PyYAML from the same virtualenv reads them).
fn documents() -> Vec<Value> {
    let out = Command::new(tool("python3"))
        .arg("-c")
        .arg(
            "import json, sys, yaml\n\
             docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]\n\
             json.dump(docs, sys.stdout)",
        )
        .args(manifest_files())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reading the manifests: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut of_kind = docs.iter().filter(|d| d["kind"] == kind);
    let doc = of_kind
        .next()
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"));
    assert!(of_kind.next().is_none(), "more than one {kind}");
    doc
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The embedded berth.toml, parsed by the agent's own parser.
fn embedded_config(docs: &[Value]) -> (String, Config) {
    let cm = find(docs, "ConfigMap");
    let text = cm["data"]["berth.toml"]
        .as_str()
        .expect("the ConfigMap holds berth.toml")
        .to_owned();
    let config = Config::parse(&text, Path::new("20-configmap.yaml berth.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    (text, config)
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_manifests_validate_offline_and_only_the_servicemonitor_has_no_bundled_schema() {
    let files = manifest_files();
    let (ok, text) = run(Command::new(tool("kubernetes-validate"))
        .arg("--strict")
        .args(&files));
    assert!(ok, "kubernetes-validate --strict:\n{text}");
    for kind in [
        "namespace",
        "serviceaccount",
        "configmap",
        "daemonset",
        "service",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("INFO") && l.contains(&format!("resource {kind}/"))),
            "no {kind} validated:\n{text}"
        );
    }
    // The validator has no schema for CRDs: the ServiceMonitor, and nothing else, is skipped
    // (its shape is checked below).
    let unchecked: Vec<&str> = text.lines().filter(|l| l.starts_with("WARN")).collect();
    assert_eq!(unchecked.len(), 1, "{text}");
    assert!(unchecked[0].contains("kind ServiceMonitor"), "{text}");

    // And it does fail a broken manifest: a misspelt field of the DaemonSet.
    let dir = tempfile::tempdir().unwrap();
    let ds = std::fs::read_to_string(repo().join("deploy/kubernetes/30-daemonset.yaml")).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, ds.replace("hostPID: true", "hostPDI: true")).unwrap();
    let (ok, text) = run(Command::new(tool("kubernetes-validate"))
        .arg("--strict")
        .arg(&bad));
    assert!(!ok && text.contains("hostPDI"), "{text}");
}

#[test]
fn the_embedded_config_passes_the_agents_own_check_and_observes() {
    let docs = documents();
    let (text, config) = embedded_config(&docs);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.toml");
    std::fs::write(&file, &text).unwrap();
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["agent", "--check-config", "--config"])
        .arg(&file));
    assert!(ok, "berth agent --check-config:\n{out}");
    assert!(out.contains("valid"), "{out}");
    assert!(!config.runtime.launch, "runtime.launch must be false");
    assert!(config.discovery.enabled);
    assert_eq!(config.http.listen.to_string(), "0.0.0.0:9847");

    // --check-config does fail a bad file, naming the key.
    std::fs::write(&file, text.replace("launch = false", "launch = \"no\"")).unwrap();
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["agent", "--check-config", "--config"])
        .arg(&file));
    assert!(!ok && out.contains("launch"), "{out}");
}

/// The volume mount whose mountPath holds `path` (the longest such), and its volume.
fn mount_of<'a>(pod: &'a Value, path: &Path) -> (&'a Value, &'a Value) {
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
        .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
        .unwrap_or_else(|| panic!("{} is below no volume mount", path.display()));
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
    (mount, volume)
}

/// Where `path` (as the agent sees it) is on the node: through its hostPath volume.
fn on_the_node(pod: &Value, path: &Path) -> PathBuf {
    let (mount, volume) = mount_of(pod, path);
    let host = volume["hostPath"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("{} is not on a hostPath volume: {volume}", path.display()));
    let rest = path
        .strip_prefix(mount["mountPath"].as_str().unwrap())
        .unwrap();
    let p = Path::new(host).join(rest);
    p.to_str()
        .map(|s| s.trim_end_matches('/').to_owned())
        .unwrap()
        .into()
}

#[test]
fn the_daemonset_shares_the_nodes_namespaces_and_mounts_every_host_path_of_its_config() {
    let docs = documents();
    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"], true,
        "netfilter links act in the node's netns"
    );
    assert_eq!(pod["hostPID"], true);
    let (_, config) = embedded_config(&docs);
    let d = &config.discovery;
    let defaults = DiscoveryConfig::default();
    // /var/run is /run on every current distribution.
    let canonical = |p: &Path| -> PathBuf {
        p.strip_prefix("/var/run")
            .map(|r| Path::new("/run").join(r))
            .unwrap_or_else(|_| p.to_owned())
    };
    for (key, path, node) in [
        ("proc", &d.proc, defaults.proc.clone()),
        ("cgroup_mount", &d.cgroup_mount, "/sys/fs/cgroup".into()),
        ("docker_socket", &d.docker_socket, defaults.docker_socket),
        (
            "docker_data_root",
            &d.docker_data_root,
            defaults.docker_data_root,
        ),
        (
            "containerd_state",
            &d.containerd_state,
            defaults.containerd_state,
        ),
        ("podman_root", &d.podman_root, defaults.podman_root),
        ("podman_runroot", &d.podman_runroot, defaults.podman_runroot),
    ] {
        assert!(
            path.starts_with("/host/"),
            "discovery.{key} = {}: the node's paths are mounted below /host",
            path.display()
        );
        assert_eq!(
            on_the_node(pod, path),
            canonical(&node),
            "discovery.{key} = {} is not the node's {}",
            path.display(),
            node.display()
        );
        let (mount, _) = mount_of(pod, path);
        assert_eq!(
            mount["mountPropagation"], "HostToContainer",
            "discovery.{key}: {mount}"
        );
        // Read-only, but for the cgroup tree, where the agent creates its tracked root.
        let writable = key == "cgroup_mount";
        assert_eq!(
            mount["readOnly"].as_bool().unwrap_or(false),
            !writable,
            "discovery.{key}: {mount}"
        );
    }
    // Pinned maps: the node's bpffs at the agent's /sys/fs/bpf, writable.
    assert_eq!(
        on_the_node(pod, Path::new("/sys/fs/bpf/berth")),
        Path::new("/sys/fs/bpf/berth")
    );
    // The root filesystem is read-only: the socket's directory is a volume.
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let socket_dir = config.http.socket.parent().unwrap();
    assert_eq!(
        mount_of(pod, &config.http.socket).0["mountPath"],
        socket_dir.to_str().unwrap()
    );
    // The config file the agent is started with is the ConfigMap's.
    let args = strs(&c["args"]);
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    let (mount, volume) = mount_of(pod, Path::new(args[at + 1]));
    assert_eq!(
        volume["configMap"]["name"],
        find(&docs, "ConfigMap")["metadata"]["name"]
    );
    assert_eq!(
        Path::new(mount["mountPath"].as_str().unwrap()).join("berth.toml"),
        Path::new(args[at + 1])
    );
}

#[test]
fn the_agent_gets_the_capabilities_bpf_and_netfilter_need_and_no_more() {
    let docs = documents();
    let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    let mut add = strs(&sc["capabilities"]["add"]);
    add.sort();
    assert_eq!(add, ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"]);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    // Every node: one toleration of everything.
    let tolerations = pod["tolerations"].as_array().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "{tolerations:?}"
    );
    for kind in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(c["resources"][kind][r].is_string(), "resources.{kind}.{r}");
        }
    }
    // Probes on the agent's own endpoints, on the port it listens on.
    let (_, config) = embedded_config(&docs);
    let port = &c["ports"][0];
    assert_eq!(port["containerPort"], config.http.listen.port());
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], port["name"], "{probe}");
    }
    // The service account exists and the agent reads nothing from the API server.
    let sa = find(&docs, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert!(!docs.iter().any(|d| {
        let k = d["kind"].as_str().unwrap_or("");
        k.ends_with("Role") || k.ends_with("RoleBinding")
    }));
    // The image is tagged with this build's version.
    let image = c["image"].as_str().unwrap();
    assert!(
        image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "{image}"
    );
    // The optional token: a Secret mounted 0400 where the commented token_file points.
    let (text, _) = embedded_config(&docs);
    let token_file = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("# token_file = "))
        .expect("a commented token_file line")
        .trim_matches('"');
    let (_, volume) = mount_of(pod, Path::new(token_file));
    assert_eq!(volume["secret"]["optional"], true);
    assert_eq!(volume["secret"]["defaultMode"], 0o400);
}

#[test]
fn the_service_and_servicemonitor_select_the_agents_and_keep_berths_labels() {
    let docs = documents();
    let pod_labels = &find(&docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"];
    let svc = find(&docs, "Service");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the Service selects the agents by {k}");
    }
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["port"], 9847);
    let sm = find(&docs, "ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects by {k}"
        );
    }
    assert_eq!(
        strs(&sm["spec"]["namespaceSelector"]["matchNames"]),
        [svc["metadata"]["namespace"].as_str().unwrap()]
    );
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["port"], port["name"]);
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(
        ep["honorLabels"], true,
        "berth's k8s_* and container labels are kept"
    );
}

#[test]
fn the_dockerfile_passes_hadolint_and_pins_the_toolchain_setup_pins() {
    let dockerfile = repo().join("Dockerfile");
    let (ok, text) = run(Command::new(tool("hadolint")).arg(&dockerfile));
    assert!(ok, "hadolint:\n{text}");
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let setup = std::fs::read_to_string(repo().join("xtask/src/setup.rs")).unwrap();
    let pinned = setup
        .lines()
        .find_map(|l| l.strip_prefix("const BPF_LINKER_VERSION: &str = \""))
        .and_then(|r| r.strip_suffix("\";"))
        .expect("BPF_LINKER_VERSION in xtask/src/setup.rs");
    assert!(
        text.contains(&format!("ARG BPF_LINKER_VERSION={pinned}")),
        "the Dockerfile's bpf-linker is not setup's {pinned}"
    );
    // A broken Dockerfile fails it (the linter runs for real).
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    std::fs::write(&bad, "FROM debian\nRUN cd /tmp && apt-get install curl\n").unwrap();
    let (ok, out) = run(Command::new(tool("hadolint")).arg(&bad));
    assert!(!ok, "hadolint passed a bad Dockerfile:\n{out}");
}
