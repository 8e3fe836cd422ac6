//! Other engines' containers, run by the real engines (Debian's containerd 1.6 and podman 4.3,
//! each started for the test in its own mount and network namespaces with its own state; see
//! berth-testkit's `Containerd` and `Podman`), as the agent lists them: found from the cgroup
//! tree, named from the engine's state files. Kubernetes does not run here; a pod's containers
//! are made as containerd's CRI plugin makes them (`ctr -n k8s.io run` with the CRI labels,
//! which containerd writes into the bundle as annotations, and a kubepods cgroup path).

mod common;

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use berth_testkit::{Containerd, Podman};
use common::{Agent, busybox_rootfs, cgroup2_mount, unique, wait_for};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// 64 hex characters no other test or run uses (the ids CRI and podman make); the first 12
/// (the short id) differ between calls too.
fn hex_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{:06x}{:06x}{:08x}{nanos:044x}",
        SEQ.fetch_add(1, Ordering::Relaxed) & 0xff_ffff,
        nanos & 0xff_ffff,
        std::process::id(),
    )
}

/// A pod uid as Kubernetes makes them (a UUID), unique to the run.
fn pod_uid() -> String {
    let h = hex_id();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[52..64]
    )
}

/// A DNS-label-like name unique to the run, for Kubernetes namespaces and pods.
fn k8s_name(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The containers `/api/v1/containers?all=true` lists, by id.
fn containers(agent: &Agent) -> BTreeMap<String, serde_json::Value> {
    let (status, body) = agent.get("/api/v1/containers?all=true");
    assert_eq!(status, 200, "{body}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    list.into_iter()
        .map(|c| (c["id"].as_str().unwrap().to_owned(), c))
        .collect()
}

/// The sample lines of `/metrics` for `family` whose labels include every one of `labels`.
fn series<'a>(metrics: &'a str, family: &str, labels: &[(&str, &str)]) -> Vec<&'a str> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .collect()
}

fn agent_for(discovery: &str) -> Agent {
    Agent::start_with(&format!("[discovery]\n{discovery}\n"))
}

#[test]
fn kubernetes_pods_under_containerd_show_their_pod_and_a_sandbox_is_not_listed() {
    let ctrd = Containerd::start();
    let rootfs = busybox_rootfs(&ctrd.dir);
    let agent = agent_for(&format!("containerd_state = \"{}\"", ctrd.state.display()));
    let sleep = ["/bin/sleep", "1d"];
    let ns = k8s_name("shop");

    // A pod as kubelet and the CRI plugin make it with the cgroupfs driver: its sandbox and a
    // workload, labelled with the pod labels, the CRI annotations and containerd's kind.
    let (pod1, uid1, sandbox, nginx) = (k8s_name("web"), pod_uid(), hex_id(), hex_id());
    let in_pod1 = |id: &str| format!("/kubepods/burstable/pod{uid1}/{id}");
    let pod1_labels = [
        ("io.kubernetes.pod.name", pod1.as_str()),
        ("io.kubernetes.pod.namespace", ns.as_str()),
        ("io.kubernetes.pod.uid", uid1.as_str()),
    ];
    let mut labels = pod1_labels.to_vec();
    labels.extend([
        ("io.cri-containerd.kind", "sandbox"),
        ("io.kubernetes.cri.container-type", "sandbox"),
    ]);
    ctrd.run(
        "k8s.io",
        &sandbox,
        Some(&in_pod1(&sandbox)),
        &labels,
        &rootfs,
        &sleep,
    );
    let mut labels = pod1_labels.to_vec();
    labels.extend([
        ("io.cri-containerd.kind", "container"),
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.container.name", "nginx"),
        (
            "io.kubernetes.cri.image-name",
            "docker.io/library/nginx:1.27",
        ),
    ]);
    ctrd.run(
        "k8s.io",
        &nginx,
        Some(&in_pod1(&nginx)),
        &labels,
        &rootfs,
        &sleep,
    );

    // Another pod, with the systemd driver's names (made with the cgroupfs driver) and only the
    // CRI annotations' spelling.
    let (pod2, uid2, sidecar) = (k8s_name("api"), pod_uid(), hex_id());
    let systemd_path = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{sidecar}.scope",
        uid2.replace('-', "_")
    );
    ctrd.run(
        "k8s.io",
        &sidecar,
        Some(&systemd_path),
        &[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.sandbox-name", &pod2),
            ("io.kubernetes.cri.sandbox-namespace", &ns),
            ("io.kubernetes.cri.sandbox-uid", &uid2),
            ("io.kubernetes.cri.container-name", "sidecar"),
        ],
        &rootfs,
        &sleep,
    );

    // Plain containerd, its default namespace and cgroup path (`/default/<id>`).
    let plain = unique("plain");
    ctrd.run(
        "default",
        &plain,
        None,
        &[("team", "media")],
        &rootfs,
        &sleep,
    );

    // The sandbox runs, in its own cgroup, the whole time it must stay unlisted.
    let sandbox_cgroup = cgroup2_mount().join(in_pod1(&sandbox).trim_start_matches('/'));
    assert!(
        std::fs::read_to_string(sandbox_cgroup.join("cgroup.procs"))
            .is_ok_and(|p| !p.trim().is_empty()),
        "the sandbox's cgroup {} holds no process",
        sandbox_cgroup.display()
    );
    let all = wait_for(
        Duration::from_secs(10),
        "the pods' and the plain containers to be listed with their names",
        || {
            let all = containers(&agent);
            assert!(!all.contains_key(&sandbox), "the sandbox is listed");
            let named = |id: &str| all.get(id).is_some_and(|c| c["name"] != id[..12]);
            (named(&nginx) && named(&sidecar) && all.contains_key(&plain)).then_some(all)
        },
    );
    let c = &all[&nginx];
    assert_eq!(c["engine"], "kubernetes", "{c}");
    assert_eq!(c["name"], format!("{ns}/{pod1}/nginx"), "{c}");
    assert_eq!(c["image"], "docker.io/library/nginx:1.27", "{c}");
    assert_eq!(c["status"], "running", "{c}");
    assert_eq!(c["cgroup"], in_pod1(&nginx), "{c}");
    for (k, v) in [
        ("berth.k8s.namespace", ns.as_str()),
        ("berth.k8s.pod", pod1.as_str()),
        ("berth.k8s.container", "nginx"),
        ("io.kubernetes.pod.uid", uid1.as_str()),
        ("berth.k8s.qos", "burstable"),
        ("berth.containerd.namespace", "k8s.io"),
    ] {
        assert_eq!(c["labels"][k], v, "label {k}: {c}");
    }
    let c = &all[&sidecar];
    assert_eq!(
        (&c["engine"], &c["name"], &c["cgroup"]),
        (
            &"kubernetes".into(),
            &format!("{ns}/{pod2}/sidecar").into(),
            &systemd_path.clone().into()
        ),
        "{c}"
    );
    assert_eq!(c["labels"]["io.kubernetes.pod.uid"], uid2, "{c}");
    assert_eq!(c["labels"]["berth.k8s.cri"], "containerd", "{c}");
    let c = &all[&plain];
    assert_eq!(
        (&c["engine"], &c["name"], &c["cgroup"]),
        (
            &"containerd".into(),
            &plain.clone().into(),
            &format!("/default/{plain}").into()
        ),
        "{c}"
    );
    assert_eq!(c["labels"]["team"], "media", "{c}");
    assert!(
        c["labels"].get("berth.k8s.pod").is_none(),
        "a plain container has no pod: {c}"
    );

    // /metrics: one selector finds each, by pod or by engine and name; the sandbox has no
    // series.
    let m = agent.metrics();
    let by_pod = [("k8s_namespace", ns.as_str()), ("k8s_pod", pod1.as_str())];
    let hit = series(&m, "berth_container_running", &by_pod);
    assert_eq!(hit.len(), 1, "{hit:?}");
    for (k, v) in [
        ("container", nginx.as_str()),
        ("engine", "kubernetes"),
        ("name", &format!("{ns}/{pod1}/nginx")),
    ] {
        assert!(hit[0].contains(&format!("{k}=\"{v}\"")), "{k}: {}", hit[0]);
    }
    assert!(hit[0].ends_with(" 1"), "{}", hit[0]);
    let info = series(&m, "berth_container_info", &by_pod);
    assert!(
        info.len() == 1 && info[0].contains("runtime=\"\""),
        "runtime is berth's OCI runtime only: {info:?}"
    );
    let plain_series = series(
        &m,
        "berth_container_running",
        &[("engine", "containerd"), ("name", &plain)],
    );
    assert!(
        plain_series.len() == 1 && plain_series[0].contains("k8s_namespace=\"\",k8s_pod=\"\""),
        "{plain_series:?}"
    );
    assert!(!m.contains(&sandbox), "the sandbox has series");

    // `berth ps`: ENGINE and POD columns; stop is refused, naming the engine.
    let ps = agent.ok(&["ps"]);
    let header = ps.lines().next().unwrap_or_default();
    assert!(header.contains("ENGINE") && header.contains("POD"), "{ps}");
    let row = ps
        .lines()
        .find(|l| l.starts_with(&nginx[..12]))
        .unwrap_or_else(|| panic!("{} not in ps:\n{ps}", &nginx[..12]));
    assert!(
        row.contains("kubernetes") && row.contains(&format!("{ns}/{pod1}")),
        "{row}"
    );
    assert!(!ps.contains(&sandbox[..12]), "{ps}");
    let (code, _, err) = agent.cli(&["stop", &nginx]);
    assert!(
        code != 0 && err.contains("is managed by kubernetes"),
        "{code}: {err}"
    );

    // Gone with its task, from the API and from /metrics.
    ctrd.remove("k8s.io", &nginx).unwrap();
    wait_for(
        Duration::from_secs(5),
        "the removed container to go",
        || {
            (!containers(&agent).contains_key(&nginx) && !agent.metrics().contains(&nginx))
                .then_some(())
        },
    );
    assert!(containers(&agent).contains_key(&sidecar));
}

#[test]
fn podman_containers_show_as_podman_with_their_name_and_image() {
    let pm = Podman::start();
    let rootfs = busybox_rootfs(&pm.dir);
    let agent = agent_for(&format!(
        "podman_root = \"{}\"\npodman_runroot = \"{}\"",
        pm.root.display(),
        pm.runroot.display()
    ));
    let tag = unique("img").replace('-', "");
    let image = format!("localhost/berth-bb:{tag}");
    pm.import(&rootfs, &image).unwrap();
    let (raw_name, img_name) = (unique("pm-raw"), unique("pm-img"));
    let raw = pm.run(
        &raw_name,
        &["--rootfs", rootfs.to_str().unwrap()],
        &["/bin/sleep", "1d"],
    );
    let from_image = pm.run(&img_name, &[&image], &["/bin/sleep", "1d"]);

    let all = wait_for(
        Duration::from_secs(10),
        "podman's containers to be listed with their names",
        || {
            let all = containers(&agent);
            let named = |id: &str| all.get(id).is_some_and(|c| c["name"] != id[..12]);
            (named(&raw) && named(&from_image)).then_some(all)
        },
    );
    for (id, name, img) in [
        (&raw, &raw_name, ""),
        (&from_image, &img_name, image.as_str()),
    ] {
        let c = &all[id];
        assert_eq!(c["engine"], "podman", "{c}");
        assert_eq!(c["name"], name.as_str(), "{c}");
        assert_eq!(c["image"], img, "{c}");
        assert_eq!(c["status"], "running", "{c}");
        assert_eq!(c["cgroup"], format!("/libpod_parent/libpod-{id}"), "{c}");
    }
    let m = agent.metrics();
    let hit = series(
        &m,
        "berth_container_running",
        &[("engine", "podman"), ("name", &img_name)],
    );
    assert!(
        hit.len() == 1 && hit[0].contains(&format!("container=\"{from_image}\"")),
        "{hit:?}"
    );

    pm.podman(&["rm", "-f", "-t", "0", &raw_name]).unwrap();
    wait_for(
        Duration::from_secs(5),
        "the removed container to go",
        || (!containers(&agent).contains_key(&raw)).then_some(()),
    );
}
