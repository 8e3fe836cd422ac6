//! `containerd`: metadata of containerd's containers, `ctr` and nerdctl ones and a Kubernetes
//! pod's under containerd's CRI plugin, from the task bundles containerd writes for every
//! running task: `<discovery.containerd_state>/io.containerd.runtime.v2.task/<namespace>/<id>/
//! config.json`, the OCI spec runc was given. containerd puts a container's labels there as
//! annotations (`ctr run --label`), and its CRI plugin the pod's names
//! (`io.kubernetes.cri.sandbox-name`, `-namespace`, `-uid`, `container-name`, `container-type`,
//! `image-name`); see [`bundle::kubernetes`].
//!
//! Why the files and not containerd's API: no gRPC client to carry, no socket to be allowed on,
//! and an answer even while containerd hangs; the state dir is a tmpfs, and each bundle is read
//! once per container ([`Bundles`]). The bundle is written before runc makes the cgroup, so a
//! container is never seen before its metadata and a pod's sandbox is never listed.
//!
//! Which namespace: the cgroup path's ([`LABEL_NAMESPACE`], `/<namespace>/<id>`); `k8s.io`,
//! the CRI plugin's, for a pod's container; else (nerdctl's systemd scopes) every namespace
//! directory is looked in.
//!
//! Names: a pod's container is `<namespace>/<pod>/<container>` with the pod's names in labels
//! under berth's keys; a plain container is its nerdctl name (`nerdctl/name`), else its id.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use super::{
    bundle::{self, Annotations, Bundles},
    cgroups::{LABEL_CRI, LABEL_NAMESPACE, is_id},
    meta::{Meta, MetaSource},
};
use crate::model::Engine;

/// containerd's directory of v2 task bundles, below its state dir.
pub const TASKS: &str = "io.containerd.runtime.v2.task";
/// The namespace containerd's CRI plugin keeps Kubernetes' containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// nerdctl's annotation with the container's name.
const NERDCTL_NAME: &str = "nerdctl/name";

/// Metadata from containerd's task bundles.
pub struct Containerd {
    /// `<state>/io.containerd.runtime.v2.task`.
    tasks: PathBuf,
    bundles: Bundles,
}

impl Containerd {
    /// A source reading the task bundles below containerd's state dir `state` (e.g.
    /// `/run/containerd`).
    pub fn new(state: &Path) -> Self {
        Self {
            tasks: state.join(TASKS),
            bundles: Bundles::default(),
        }
    }
}

impl MetaSource for Containerd {
    fn name(&self) -> &'static str {
        "containerd"
    }

    fn lookup(
        &mut self,
        engine: Engine,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<Meta> {
        let namespace = match engine {
            Engine::Containerd => labels.get(LABEL_NAMESPACE).map(String::as_str),
            Engine::Kubernetes => match labels.get(LABEL_CRI).map(String::as_str) {
                None | Some("containerd") => Some(CRI_NAMESPACE),
                Some(_) => return None,
            },
            _ => return None,
        };
        if !is_component(id) || !namespace.is_none_or(is_component) {
            return None;
        }
        let key = match namespace {
            Some(ns) => format!("{ns}/{id}"),
            None => id.to_owned(),
        };
        let tasks = &self.tasks;
        self.bundles.lookup(
            &key,
            || find(tasks, namespace, id),
            |path, annotations| meta(id, path, annotations),
        )
    }
}

/// A single path component, as a containerd id or namespace is (never `..` or a `/`).
fn is_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/')
}

/// The bundle's `config.json` of `id` in `namespace`, or in whichever namespace has it.
fn find(tasks: &Path, namespace: Option<&str>, id: &str) -> Option<PathBuf> {
    let in_ns = |ns: &Path| Some(ns.join(id).join("config.json")).filter(|p| p.is_file());
    match namespace {
        Some(ns) => in_ns(&tasks.join(ns)),
        None => fs::read_dir(tasks)
            .ok()?
            .flatten()
            .find_map(|e| in_ns(&e.path())),
    }
}

/// What a bundle says: a pod's container by its pod's names, any other by its nerdctl name or
/// id, with its annotations as labels and the namespace it was found in.
fn meta(id: &str, path: &Path, annotations: &Annotations) -> Meta {
    let mut m = if bundle::is_kubernetes(annotations) {
        bundle::kubernetes(annotations)
    } else {
        Meta {
            name: annotations
                .get(NERDCTL_NAME)
                .filter(|n| !n.is_empty())
                .cloned()
                // A hex id reads best shortened (the collector does it); a chosen id is a name.
                .or_else(|| (!is_id(id)).then(|| id.to_owned())),
            labels: bundle::labels(annotations),
            ..Meta::default()
        }
    };
    // <tasks>/<namespace>/<id>/config.json
    let namespace = path
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name);
    if let Some(ns) = namespace.and_then(|n| n.to_str()) {
        m.labels.insert(LABEL_NAMESPACE.to_owned(), ns.to_owned());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LABEL_K8S_NAMESPACE, LABEL_K8S_POD};

    fn bundle(state: &Path, ns: &str, id: &str, annotations: &[(&str, &str)]) {
        let dir = state.join(TASKS).join(ns).join(id);
        fs::create_dir_all(&dir).unwrap();
        let a: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        let spec = serde_json::json!({"ociVersion": "1.0.2", "annotations": a});
        fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_pods_container_is_named_after_its_pod_and_its_sandbox_is_marked() {
        let state = tempfile::tempdir().unwrap();
        let (c, s) = (format!("{:064x}", 1), format!("{:064x}", 2));
        bundle(
            state.path(),
            "k8s.io",
            &c,
            &[
                ("io.kubernetes.cri.container-type", "container"),
                ("io.kubernetes.cri.sandbox-name", "web-0"),
                ("io.kubernetes.cri.sandbox-namespace", "shop"),
                ("io.kubernetes.cri.container-name", "nginx"),
            ],
        );
        bundle(
            state.path(),
            "k8s.io",
            &s,
            &[("io.cri-containerd.kind", "sandbox")],
        );
        let mut src = Containerd::new(state.path());
        let path = labels(&[("io.kubernetes.pod.uid", "u-1"), (LABEL_CRI, "containerd")]);
        let m = src.lookup(Engine::Kubernetes, &c, &path).unwrap();
        assert_eq!(m.name.as_deref(), Some("shop/web-0/nginx"));
        assert_eq!(m.labels[LABEL_K8S_POD], "web-0");
        assert_eq!(m.labels[LABEL_K8S_NAMESPACE], "shop");
        assert_eq!(m.labels[LABEL_NAMESPACE], "k8s.io");
        assert!(!m.sandbox);
        assert!(src.lookup(Engine::Kubernetes, &s, &path).unwrap().sandbox);
        // CRI-O's and Docker's pods are other sources'.
        let crio = labels(&[(LABEL_CRI, "crio")]);
        assert_eq!(src.lookup(Engine::Kubernetes, &c, &crio), None);
        assert_eq!(src.lookup(Engine::Docker, &c, &BTreeMap::new()), None);
    }

    #[test]
    fn a_plain_container_is_its_nerdctl_name_or_its_id_in_any_namespace() {
        let state = tempfile::tempdir().unwrap();
        let hex = format!("{:064x}", 3);
        bundle(state.path(), "default", "web-1", &[("team", "media")]);
        bundle(state.path(), "nerd", &hex, &[("nerdctl/name", "cache")]);
        let mut src = Containerd::new(state.path());
        let ns = labels(&[(LABEL_NAMESPACE, "default")]);
        let m = src.lookup(Engine::Containerd, "web-1", &ns).unwrap();
        assert_eq!(m.name.as_deref(), Some("web-1"));
        assert_eq!(m.labels["team"], "media");
        // No namespace in the path (a nerdctl scope): found by looking in each.
        let m = src
            .lookup(Engine::Containerd, &hex, &BTreeMap::new())
            .unwrap();
        assert_eq!(m.name.as_deref(), Some("cache"));
        assert_eq!(m.labels[LABEL_NAMESPACE], "nerd");
        // A hex id without a name is left to the collector to shorten.
        bundle(state.path(), "default", &format!("{:064x}", 4), &[]);
        let m = src
            .lookup(Engine::Containerd, &format!("{:064x}", 4), &ns)
            .unwrap();
        assert_eq!(m.name, None);
        // Unknown, and ids that are not one path component.
        assert_eq!(src.lookup(Engine::Containerd, "nope", &ns), None);
        assert_eq!(src.lookup(Engine::Containerd, "../default", &ns), None);
        let bad = labels(&[(LABEL_NAMESPACE, "..")]);
        assert_eq!(src.lookup(Engine::Containerd, "web-1", &bad), None);
    }
}
