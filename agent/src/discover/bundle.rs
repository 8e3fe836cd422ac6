//! OCI bundles other engines leave on disk, read for metadata: the `config.json` an engine gave
//! runc holds the container's annotations, where containerd keeps `ctr --label`s and its CRI
//! plugin the pod's names, and CRI-O its own (`io.kubernetes.cri-o.*`). Reading the file needs
//! no client, no socket permission and no answer from a daemon that may hang; the engines keep
//! their bundles on a tmpfs (`/run/...`), so a read is a few tens of microseconds.
//!
//! [`Bundles`] caches what each container's bundle said, by id: a file is read once, then
//! `stat`ed at most every [`REVALIDATE`] and read again only when its size, inode or mtime
//! changed; a container with no bundle is looked for again at the same pace; entries not asked
//! for in [`FORGET`] are dropped. [`kubernetes`] turns the annotations of a pod's container, in
//! any runtime's spelling, into berth's [`Meta`].

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use serde::Deserialize;

use super::meta::Meta;
use crate::model::{LABEL_K8S_CONTAINER, LABEL_K8S_NAMESPACE, LABEL_K8S_POD};

/// How long an answer is trusted before the file is `stat`ed again.
pub const REVALIDATE: Duration = Duration::from_secs(5);
/// Entries nobody asked for in this long are dropped (their container is gone).
pub const FORGET: Duration = Duration::from_secs(60);
/// A bundle's `config.json` is a few kilobytes; anything past this is not read.
pub const MAX_BYTES: u64 = 1 << 20;
/// Annotations kept as labels at most, and their longest key and value: what a container's
/// creator wrote is bounded before it reaches the API.
const MAX_LABELS: usize = 128;
const MAX_KEY: usize = 253;
const MAX_VALUE: usize = 4096;

/// The annotations of an OCI runtime spec (`config.json`); the rest of the spec is skipped.
pub type Annotations = BTreeMap<String, String>;

#[derive(Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: Annotations,
}

/// What identifies one version of a file: rewritten in place or replaced, one of them moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: SystemTime,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Stamp {
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }
}

struct Entry {
    /// The file the answer came from (`None`: no bundle was found).
    path: Option<PathBuf>,
    stamp: Option<Stamp>,
    meta: Option<Meta>,
    checked: Instant,
    used: Instant,
}

/// Cached metadata from bundle files, by container id.
#[derive(Default)]
pub struct Bundles {
    entries: HashMap<String, Entry>,
    pruned: Option<Instant>,
}

impl Bundles {
    /// What the bundle of container `key` says: from the cache while it is fresh, else from
    /// the file `find` names (called only when the cached file is gone or there was none),
    /// turned into [`Meta`] by `parse` (given the file's path and its annotations). `None` when
    /// there is no bundle or it cannot be read.
    pub fn lookup(
        &mut self,
        key: &str,
        find: impl FnOnce() -> Option<PathBuf>,
        parse: impl FnOnce(&Path, &Annotations) -> Meta,
    ) -> Option<Meta> {
        let now = Instant::now();
        self.prune(now);
        if let Some(e) = self.entries.get_mut(key) {
            e.used = now;
            if now.duration_since(e.checked) < REVALIDATE {
                return e.meta.clone();
            }
            e.checked = now;
            if let (Some(path), Some(stamp)) = (&e.path, e.stamp) {
                match fs::metadata(path) {
                    Ok(m) if Stamp::of(&m) == stamp => return e.meta.clone(),
                    // Changed: read again from the same place.
                    Ok(_) => {
                        let path = path.clone();
                        return self.load(key, Some(path), now, parse);
                    }
                    Err(_) => {}
                }
            }
        }
        self.load(key, find(), now, parse)
    }

    fn load(
        &mut self,
        key: &str,
        path: Option<PathBuf>,
        now: Instant,
        parse: impl FnOnce(&Path, &Annotations) -> Meta,
    ) -> Option<Meta> {
        let (stamp, meta) = match path.as_deref().map(|p| (p, read(p))) {
            Some((p, Ok((stamp, annotations)))) => (Some(stamp), Some(parse(p, &annotations))),
            Some((_, Err((stamp, why)))) => {
                tracing::debug!(
                    path = %path.as_deref().unwrap_or(Path::new("")).display(),
                    error = %why,
                    "bundle not usable for metadata"
                );
                (stamp, None)
            }
            None => (None, None),
        };
        self.entries.insert(
            key.to_owned(),
            Entry {
                path,
                stamp,
                meta: meta.clone(),
                checked: now,
                used: now,
            },
        );
        meta
    }

    fn prune(&mut self, now: Instant) {
        if self
            .pruned
            .is_some_and(|p| now.duration_since(p) < FORGET / 2)
        {
            return;
        }
        self.pruned = Some(now);
        self.entries
            .retain(|_, e| now.duration_since(e.used) < FORGET);
    }

    /// Entries held (for tests and the bench).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The annotations of the spec at `path`, with the file's stamp; on failure the stamp when
/// the file could be opened (a bad file is not read again until it changes) and why.
fn read(path: &Path) -> Result<(Stamp, Annotations), (Option<Stamp>, String)> {
    let mut f = fs::File::open(path).map_err(|e| (None, e.to_string()))?;
    let stamp = Stamp::of(&f.metadata().map_err(|e| (None, e.to_string()))?);
    if stamp.len > MAX_BYTES {
        return Err((Some(stamp), format!("larger than {MAX_BYTES} bytes")));
    }
    let mut text = Vec::with_capacity(stamp.len as usize);
    (&mut f)
        .take(MAX_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| (Some(stamp), e.to_string()))?;
    let spec: Spec = serde_json::from_slice(&text).map_err(|e| (Some(stamp), e.to_string()))?;
    Ok((stamp, spec.annotations))
}

/// The annotations worth showing as labels: all of them, within bounds (at most
/// `MAX_LABELS`, keys and values of a sane length; the rest are left out).
pub fn labels(annotations: &Annotations) -> BTreeMap<String, String> {
    annotations
        .iter()
        .filter(|(k, v)| k.len() <= MAX_KEY && v.len() <= MAX_VALUE)
        .take(MAX_LABELS)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The pod's name, in containerd's CRI annotations, as the pod label kubelet sets, and in
/// CRI-O's.
const POD_NAME: [&str; 3] = [
    "io.kubernetes.cri.sandbox-name",
    "io.kubernetes.pod.name",
    "io.kubernetes.cri-o.KubeName",
];
const POD_NAMESPACE: [&str; 3] = [
    "io.kubernetes.cri.sandbox-namespace",
    "io.kubernetes.pod.namespace",
    "io.kubernetes.cri-o.Namespace",
];
const POD_UID: [&str; 2] = ["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"];
const CONTAINER_NAME: [&str; 2] = [
    "io.kubernetes.cri.container-name",
    "io.kubernetes.container.name",
];
const CONTAINER_TYPE: [&str; 2] = [
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri-o.ContainerType",
];
const IMAGE: [&str; 2] = [
    "io.kubernetes.cri.image-name",
    "io.kubernetes.cri-o.ImageName",
];
/// CRI-O keeps the pod's CRI labels (`io.kubernetes.pod.name`, ...) as one JSON object here.
const CRIO_LABELS: &str = "io.kubernetes.cri-o.Labels";
/// containerd's CRI plugin labels its sandbox containers `io.cri-containerd.kind=sandbox`.
const CONTAINERD_KIND: &str = "io.cri-containerd.kind";

/// Whether the annotations are a Kubernetes pod's container's (any of the keys above).
pub fn is_kubernetes(annotations: &Annotations) -> bool {
    POD_NAME
        .iter()
        .chain(&CONTAINER_TYPE)
        .chain(&[CRIO_LABELS, CONTAINERD_KIND])
        .any(|k| annotations.contains_key(*k))
}

/// A pod's container as its runtime annotated it: named `<namespace>/<pod>/<container>` (what
/// `kubectl -n NS logs POD -c CONTAINER` takes; unique on a node, where the same pod name in
/// two namespaces is common), the pod's namespace, name and uid and the container's name in
/// labels under berth's keys, the image, and whether it is the pod's sandbox.
pub fn kubernetes(annotations: &Annotations) -> Meta {
    let crio: BTreeMap<String, String> = annotations
        .get(CRIO_LABELS)
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    let get = |keys: &[&str]| -> Option<String> {
        keys.iter()
            .find_map(|k| annotations.get(*k).or_else(|| crio.get(*k)))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let (namespace, pod, container) = (get(&POD_NAMESPACE), get(&POD_NAME), get(&CONTAINER_NAME));
    let sandbox = get(&CONTAINER_TYPE).as_deref() == Some("sandbox")
        || get(&[CONTAINERD_KIND]).as_deref() == Some("sandbox")
        // dockershim's and cri-dockerd's name for the sandbox.
        || container.as_deref() == Some("POD");
    let mut labels = labels(annotations);
    for (key, value) in [
        (LABEL_K8S_NAMESPACE, &namespace),
        (LABEL_K8S_POD, &pod),
        (LABEL_K8S_CONTAINER, &container),
        (super::cgroups::LABEL_POD_UID, &get(&POD_UID)),
    ] {
        if let Some(v) = value {
            labels.insert(key.to_owned(), v.clone());
        }
    }
    let name = match (&namespace, &pod, &container) {
        (_, None, _) => None,
        (Some(ns), Some(pod), Some(c)) => Some(format!("{ns}/{pod}/{c}")),
        (None, Some(pod), Some(c)) => Some(format!("{pod}/{c}")),
        (Some(ns), Some(pod), None) => Some(format!("{ns}/{pod}")),
        (None, Some(pod), None) => Some(pod.clone()),
    };
    Meta {
        name,
        image: get(&IMAGE),
        labels,
        sandbox,
        ..Meta::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn write_spec(path: &Path, annotations: &[(&str, &str)]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sleep", "1d"]},
            "annotations": ann(annotations),
        });
        fs::write(path, spec.to_string()).unwrap();
    }

    #[test]
    fn cri_annotations_name_the_pod_container_under_berths_keys() {
        let m = kubernetes(&ann(&[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.sandbox-name", "web-0"),
            ("io.kubernetes.cri.sandbox-namespace", "shop"),
            ("io.kubernetes.cri.sandbox-uid", "0b6c-11"),
            ("io.kubernetes.cri.container-name", "nginx"),
            (
                "io.kubernetes.cri.image-name",
                "docker.io/library/nginx:1.27",
            ),
        ]));
        assert_eq!(m.name.as_deref(), Some("shop/web-0/nginx"));
        assert_eq!(m.image.as_deref(), Some("docker.io/library/nginx:1.27"));
        assert!(!m.sandbox);
        for (k, v) in [
            (LABEL_K8S_NAMESPACE, "shop"),
            (LABEL_K8S_POD, "web-0"),
            (LABEL_K8S_CONTAINER, "nginx"),
            ("io.kubernetes.pod.uid", "0b6c-11"),
            ("io.kubernetes.cri.sandbox-name", "web-0"),
        ] {
            assert_eq!(m.labels.get(k).map(String::as_str), Some(v), "{k}");
        }
    }

    #[test]
    fn pod_labels_and_crio_spellings_give_the_same_names() {
        let by_labels = kubernetes(&ann(&[
            ("io.kubernetes.pod.name", "web-0"),
            ("io.kubernetes.pod.namespace", "shop"),
            ("io.kubernetes.container.name", "nginx"),
        ]));
        let crio = kubernetes(&ann(&[
            ("io.kubernetes.cri-o.ContainerType", "container"),
            (
                "io.kubernetes.cri-o.Labels",
                r#"{"io.kubernetes.pod.name":"web-0","io.kubernetes.pod.namespace":"shop","io.kubernetes.container.name":"nginx"}"#,
            ),
            ("io.kubernetes.cri-o.ImageName", "quay.io/x/nginx:1"),
        ]));
        assert_eq!(by_labels.name.as_deref(), Some("shop/web-0/nginx"));
        assert_eq!(crio.name, by_labels.name);
        assert_eq!(crio.image.as_deref(), Some("quay.io/x/nginx:1"));
        assert!(is_kubernetes(&ann(&[("io.kubernetes.pod.name", "p")])));
        assert!(!is_kubernetes(&ann(&[("nerdctl/name", "web")])));
    }

    #[test]
    fn every_runtimes_sandbox_is_told_apart() {
        for pairs in [
            &[("io.kubernetes.cri.container-type", "sandbox")][..],
            &[("io.cri-containerd.kind", "sandbox")],
            &[("io.kubernetes.cri-o.ContainerType", "sandbox")],
            &[("io.kubernetes.container.name", "POD")],
        ] {
            let m = kubernetes(&ann(pairs));
            assert!(m.sandbox, "{pairs:?}");
        }
        let m = kubernetes(&ann(&[
            ("io.kubernetes.cri.container-type", "sandbox"),
            ("io.kubernetes.cri.sandbox-name", "web-0"),
            ("io.kubernetes.cri.sandbox-namespace", "shop"),
        ]));
        assert_eq!(m.name.as_deref(), Some("shop/web-0"));
    }

    #[test]
    fn labels_are_bounded() {
        let mut a: Annotations = (0..500).map(|i| (format!("k{i:03}"), "v".into())).collect();
        a.insert("big".into(), "x".repeat(MAX_VALUE + 1));
        let l = labels(&a);
        assert_eq!(l.len(), MAX_LABELS);
        assert!(!l.contains_key("big"));
    }

    #[test]
    fn a_bundle_is_read_once_and_again_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/config.json");
        write_spec(&path, &[("io.kubernetes.pod.name", "one")]);
        let mut b = Bundles::default();
        let finds = std::cell::Cell::new(0);
        let get = |b: &mut Bundles| {
            b.lookup(
                "a",
                || {
                    finds.set(finds.get() + 1);
                    Some(path.clone())
                },
                |_, a| kubernetes(a),
            )
        };
        assert_eq!(get(&mut b).unwrap().name.as_deref(), Some("one"));
        // Rewritten (another length): the cache answers until it revalidates.
        write_spec(&path, &[("io.kubernetes.pod.name", "second")]);
        assert_eq!(get(&mut b).unwrap().name.as_deref(), Some("one"));
        b.entries.get_mut("a").unwrap().checked -= REVALIDATE;
        assert_eq!(get(&mut b).unwrap().name.as_deref(), Some("second"));
        // Unchanged: a stat, no read, no search.
        b.entries.get_mut("a").unwrap().checked -= REVALIDATE;
        assert_eq!(get(&mut b).unwrap().name.as_deref(), Some("second"));
        assert_eq!(
            finds.get(),
            1,
            "the file was found once and then re-stat'ed"
        );
        // Gone: searched again, and nothing is known.
        fs::remove_file(&path).unwrap();
        b.entries.get_mut("a").unwrap().checked -= REVALIDATE;
        assert_eq!(get(&mut b), None);
        assert_eq!(finds.get(), 2);
    }

    #[test]
    fn a_missing_or_bad_bundle_is_not_looked_for_every_time_and_entries_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        fs::write(&bad, "{not json").unwrap();
        let huge = dir.path().join("huge.json");
        fs::write(&huge, vec![b' '; MAX_BYTES as usize + 1]).unwrap();
        let mut b = Bundles::default();
        let mut finds = 0;
        for _ in 0..3 {
            for (id, path) in [("none", None), ("bad", Some(&bad)), ("huge", Some(&huge))] {
                let got = b.lookup(
                    id,
                    || {
                        finds += 1;
                        path.cloned()
                    },
                    |_, a| kubernetes(a),
                );
                assert_eq!(got, None, "{id}");
            }
        }
        assert_eq!(finds, 3, "one search per id within {REVALIDATE:?}");
        assert_eq!(b.len(), 3);
        for e in b.entries.values_mut() {
            e.used -= FORGET;
        }
        b.pruned = None;
        b.lookup("other", || None, |_, a| kubernetes(a));
        assert_eq!(b.len(), 1, "entries nobody asked for are dropped");
    }
}
