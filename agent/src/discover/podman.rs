//! `podman` and `crio`: metadata of the engines built on containers/storage.
//!
//! podman (4.3 as Debian ships it, checked by running it) keeps a container's name only in its
//! own database (`libpod/bolt_state.db`, BoltDB) and in containers/storage's list of containers,
//! `<discovery.podman_root>/<driver>-containers/containers.json`: one JSON array with each
//! container's `id`, `names`, image id and a `metadata` string holding podman's
//! `{"image-name", "image-id", "name", "created-at"}`. The bundle's `config.json` names neither
//! the container nor the image (its annotations are `io.container.manager=libpod` and a few
//! `io.podman.annotations.*`). So [`Podman`] reads `containers.json`: once, then again only
//! when its size, inode or mtime changed, `stat`ed at most every [`REVALIDATE`] for containers
//! it knows and every [`MISS_RETRY`] when asked about one it does not (podman writes the file
//! before runc makes the cgroup, so a new container is there on the first look).
//!
//! CRI-O keeps each container's bundle in the same run root,
//! `<discovery.podman_runroot>/overlay-containers/<id>/userdata/config.json`, annotated with the
//! pod's names (`io.kubernetes.cri-o.*`, and the CRI labels as JSON); [`CriO`] reads them as
//! the containerd source reads containerd's ([`bundle::kubernetes`]).

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use serde::Deserialize;

use super::{
    bundle::{self, Bundles},
    cgroups::LABEL_CRI,
    meta::{Meta, MetaSource},
};
use crate::model::Engine;

/// How long the list is trusted before `containers.json` is `stat`ed again.
pub const REVALIDATE: Duration = Duration::from_secs(2);
/// How soon an unknown podman container makes the list be looked at again.
pub const MISS_RETRY: Duration = Duration::from_millis(500);
/// `containers.json` holds about 500 bytes per container; past this it is not read.
pub const MAX_BYTES: u64 = 64 << 20;

/// One entry of containers/storage's `containers.json` (the fields berth uses).
#[derive(Deserialize)]
struct StorageContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    /// The image id (empty for `--rootfs`).
    #[serde(default)]
    image: String,
    /// The engine's own JSON, as a string.
    #[serde(default)]
    metadata: String,
}

/// podman's part of `metadata`.
#[derive(Deserialize, Default)]
struct PodmanMetadata {
    #[serde(default, rename = "image-name")]
    image_name: String,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "created-at")]
    created_at: i64,
}

/// Metadata of podman's containers from containers/storage's list.
pub struct Podman {
    root: PathBuf,
    /// The list's file, once found.
    file: Option<PathBuf>,
    stamp: Option<(u64, u64, SystemTime)>,
    by_id: HashMap<String, Meta>,
    checked: Option<Instant>,
}

impl Podman {
    /// A source reading containers/storage below `root` (podman's `--root`, e.g.
    /// `/var/lib/containers/storage`).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            file: None,
            stamp: None,
            by_id: HashMap::new(),
            checked: None,
        }
    }

    /// Reads the list again if it changed.
    fn refresh(&mut self, now: Instant) {
        self.checked = Some(now);
        let file = match self.file.clone().filter(|f| f.is_file()) {
            Some(f) => f,
            None => match containers_json(&self.root) {
                Some(f) => f,
                None => {
                    self.by_id.clear();
                    self.stamp = None;
                    return;
                }
            },
        };
        self.file = Some(file.clone());
        let Ok(m) = fs::metadata(&file) else { return };
        let stamp = (
            m.ino(),
            m.len(),
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        );
        if self.stamp == Some(stamp) {
            return;
        }
        match read_list(&file) {
            Ok(list) => {
                self.by_id = list.into_iter().map(|c| (c.id.clone(), meta(c))).collect();
                self.stamp = Some(stamp);
            }
            Err(why) => {
                tracing::debug!(path = %file.display(), error = %why, "podman's container list not usable");
                // Not read again until it changes.
                self.stamp = Some(stamp);
            }
        }
    }
}

impl MetaSource for Podman {
    fn name(&self) -> &'static str {
        "podman"
    }

    fn lookup(&mut self, engine: Engine, id: &str, _: &BTreeMap<String, String>) -> Option<Meta> {
        if engine != Engine::Podman {
            return None;
        }
        let now = Instant::now();
        let wait = if self.by_id.contains_key(id) {
            REVALIDATE
        } else {
            MISS_RETRY
        };
        if self.checked.is_none_or(|c| now.duration_since(c) >= wait) {
            self.refresh(now);
        }
        self.by_id.get(id).cloned()
    }
}

/// `<root>/overlay-containers/containers.json`, or the list of whichever storage driver the
/// root uses (`vfs-containers`, `btrfs-containers`, ...).
fn containers_json(root: &Path) -> Option<PathBuf> {
    let overlay = root.join("overlay-containers/containers.json");
    if overlay.is_file() {
        return Some(overlay);
    }
    fs::read_dir(root).ok()?.flatten().find_map(|e| {
        let name = e.file_name();
        let list = e.path().join("containers.json");
        (name.to_str()?.ends_with("-containers") && list.is_file()).then_some(list)
    })
}

fn read_list(path: &Path) -> Result<Vec<StorageContainer>, String> {
    let f = fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    f.take(MAX_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    serde_json::from_slice(&text).map_err(|e| e.to_string())
}

/// A podman container's name (its first), image (by name, else by short id) and creation.
fn meta(c: StorageContainer) -> Meta {
    let md: PodmanMetadata = serde_json::from_str(&c.metadata).unwrap_or_default();
    let name = c
        .names
        .into_iter()
        .next()
        .or((!md.name.is_empty()).then_some(md.name));
    let image = if !md.image_name.is_empty() {
        Some(md.image_name)
    } else {
        (!c.image.is_empty()).then(|| c.image.chars().take(12).collect())
    };
    Meta {
        name,
        image,
        created_at: (md.created_at > 0).then_some(md.created_at as f64),
        ..Meta::default()
    }
}

/// Metadata of CRI-O's containers (a Kubernetes pod's) from their bundles in the run root.
pub struct CriO {
    /// `<runroot>/overlay-containers`.
    containers: PathBuf,
    bundles: Bundles,
}

impl CriO {
    /// A source reading CRI-O's bundles below the containers/storage run root `runroot` (e.g.
    /// `/run/containers/storage`).
    pub fn new(runroot: &Path) -> Self {
        Self {
            containers: runroot.join("overlay-containers"),
            bundles: Bundles::default(),
        }
    }
}

impl MetaSource for CriO {
    fn name(&self) -> &'static str {
        "crio"
    }

    fn lookup(
        &mut self,
        engine: Engine,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<Meta> {
        let ours = engine == Engine::Kubernetes
            && matches!(
                labels.get(LABEL_CRI).map(String::as_str),
                None | Some("crio")
            );
        if !ours || !super::cgroups::is_id(id) {
            return None;
        }
        let path = self.containers.join(id).join("userdata/config.json");
        self.bundles.lookup(
            id,
            || path.is_file().then_some(path.clone()),
            |_, annotations| bundle::kubernetes(annotations),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> String {
        format!("{n:064x}")
    }

    fn write_list(root: &Path, entries: &[(String, &str, &str, &str)]) {
        let list: Vec<serde_json::Value> = entries
            .iter()
            .map(|(id, name, image, image_name)| {
                serde_json::json!({
                    "id": id, "names": [name], "image": image, "layer": "l",
                    "metadata": serde_json::json!({
                        "image-name": image_name, "image-id": image, "name": name,
                        "created-at": 1_796_169_621
                    }).to_string(),
                    "created": "2026-12-02T00:00:21.47416243Z",
                })
            })
            .collect();
        let dir = root.join("overlay-containers");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("containers.json"),
            serde_json::to_string(&list).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn podman_containers_get_their_name_and_image_from_containers_json() {
        let root = tempfile::tempdir().unwrap();
        let img = "c8557a4a7d98158796b8145b3196cf44dd445a016624cc8fdc5a5f65c37238ab";
        write_list(
            root.path(),
            &[
                (id(1), "web", img, "localhost/bb:1"),
                (id(2), "raw", "", ""),
            ],
        );
        let mut src = Podman::new(root.path());
        let none = BTreeMap::new();
        let m = src.lookup(Engine::Podman, &id(1), &none).unwrap();
        assert_eq!(
            (m.name.as_deref(), m.image.as_deref()),
            (Some("web"), Some("localhost/bb:1"))
        );
        assert_eq!(m.created_at, Some(1_796_169_621.0));
        let m = src.lookup(Engine::Podman, &id(2), &none).unwrap();
        assert_eq!((m.name.as_deref(), m.image), (Some("raw"), None));
        assert_eq!(src.lookup(Engine::Docker, &id(1), &none), None);

        // A new container: the list is read again once the miss retry has passed.
        write_list(root.path(), &[(id(3), "new", img, "")]);
        src.checked = src.checked.map(|c| c - MISS_RETRY);
        let m = src.lookup(Engine::Podman, &id(3), &none).unwrap();
        assert_eq!(
            (m.name.as_deref(), m.image.as_deref()),
            (Some("new"), Some(&img[..12]))
        );
        assert_eq!(src.lookup(Engine::Podman, &id(1), &none), None, "gone");
    }

    #[test]
    fn another_driver_and_a_broken_list_are_handled() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("vfs-containers");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("containers.json"),
            format!(r#"[{{"id":"{}","names":["v"]}}]"#, id(5)),
        )
        .unwrap();
        let mut src = Podman::new(root.path());
        let m = src
            .lookup(Engine::Podman, &id(5), &BTreeMap::new())
            .unwrap();
        assert_eq!(m.name.as_deref(), Some("v"));

        fs::write(dir.join("containers.json"), "[{broken").unwrap();
        let mut src = Podman::new(root.path());
        assert_eq!(src.lookup(Engine::Podman, &id(5), &BTreeMap::new()), None);
        let mut src = Podman::new(Path::new("/nonexistent/berth-podman"));
        assert_eq!(src.lookup(Engine::Podman, &id(5), &BTreeMap::new()), None);
    }

    #[test]
    fn crio_bundles_name_the_pod_container() {
        let runroot = tempfile::tempdir().unwrap();
        let dir = runroot
            .path()
            .join("overlay-containers")
            .join(id(7))
            .join("userdata");
        fs::create_dir_all(&dir).unwrap();
        let spec = serde_json::json!({"annotations": {
            "io.kubernetes.cri-o.ContainerType": "container",
            "io.kubernetes.cri-o.Labels": serde_json::json!({
                "io.kubernetes.pod.name": "web-0",
                "io.kubernetes.pod.namespace": "shop",
                "io.kubernetes.container.name": "nginx",
            }).to_string(),
        }});
        fs::write(dir.join("config.json"), spec.to_string()).unwrap();
        let mut src = CriO::new(runroot.path());
        let crio: BTreeMap<String, String> = [(LABEL_CRI.to_owned(), "crio".to_owned())].into();
        let m = src.lookup(Engine::Kubernetes, &id(7), &crio).unwrap();
        assert_eq!(m.name.as_deref(), Some("shop/web-0/nginx"));
        let containerd: BTreeMap<String, String> =
            [(LABEL_CRI.to_owned(), "containerd".to_owned())].into();
        assert_eq!(src.lookup(Engine::Kubernetes, &id(7), &containerd), None);
    }
}
