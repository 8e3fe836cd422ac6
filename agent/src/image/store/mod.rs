//! The on-disk store: what is stored where, and reading it back. `images/<id>/image.json`
//! holds each image's record, `names.json` maps names to ids; lookups resolve references
//! against both. Writing is split by concern: [`import`] (scratch dir -> verified unpack ->
//! atomic rename), [`remove`] (removal and clearing the leftovers of interrupted work), and
//! [`scratch`] (scratch directories, locks and file helpers they share). See the module header
//! of `image` for the layout.

mod import;
mod pull;
mod remove;
mod scratch;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};
use tracing::warn;

pub use self::pull::PullTx;
use self::scratch::{Lock, set_mode};
use super::{Image, ImageConfig, ImageError, is_hex, resolve_reference};
use crate::fsutil;

const IMAGES_DIR: &str = "images";
const TMP_DIR: &str = "tmp";
const NAMES_FILE: &str = "names.json";
const STORE_LOCK: &str = "lock";
const NAMES_LOCK: &str = "names.lock";
const RECORD_FILE: &str = "image.json";
const ROOTFS_DIR: &str = "rootfs";

/// A local image store rooted at a directory, e.g. /var/lib/berth/images.
///
/// Several processes may share one store: imports and removals hold a shared lock on `lock`
/// while they use `tmp/`, and `open` only clears `tmp/` when it can take that lock exclusively;
/// `names.json` is rewritten under an exclusive lock on `names.lock`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    /// Pulls through this store since it was opened (shared by its clones).
    pulls: std::sync::Arc<PullCounters>,
}

/// What [`ImageStore::pull_stats`] reports; the registry client counts into it.
#[derive(Debug, Default)]
pub struct PullCounters {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub bytes: AtomicU64,
}

/// What `images/<id>/image.json` holds. Names live in `names.json`, the rootfs path is derived.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    id: String,
    config: ImageConfig,
    size_bytes: u64,
    imported_at: u64,
    /// Hex sha256 of each uncompressed layer, bottom first.
    diff_ids: Vec<String>,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root` and removes what interrupted imports and
    /// removals left in `tmp/`.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let store = Self {
            root: root.to_path_buf(),
            pulls: Default::default(),
        };
        for dir in [store.root.clone(), store.images_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(|source| ImageError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        // Root filesystems hold setuid binaries owned by root: host users must not reach them.
        set_mode(&store.images_dir(), 0o700)?;
        set_mode(&store.tmp_dir(), 0o700)?;
        store.remove_leftovers()?;
        Ok(store)
    }

    /// Pulls since the store was opened.
    pub fn pull_stats(&self) -> crate::model::PullStats {
        crate::model::PullStats {
            succeeded: self.pulls.succeeded.load(Ordering::Relaxed),
            failed: self.pulls.failed.load(Ordering::Relaxed),
            bytes: self.pulls.bytes.load(Ordering::Relaxed),
        }
    }

    /// The counters pulls add to.
    pub fn pull_counters(&self) -> &PullCounters {
        &self.pulls
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// All images, oldest import first.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let names = self.read_names()?;
        let mut images = Vec::new();
        for id in self.ids()? {
            match self.load(&id, &names) {
                Ok(image) => images.push(image),
                Err(e) => warn!(%id, error = %e, "skipping unreadable image"),
            }
        }
        images.sort_by(|a, b| (a.imported_at, &a.id).cmp(&(b.imported_at, &b.id)));
        Ok(images)
    }

    /// Finds an image by name (`name:tag`, `:latest` implied), full id (optionally
    /// `sha256:`-prefixed) or unique id prefix of at least 6 hex characters.
    pub fn get(&self, reference: &str) -> Result<Image, ImageError> {
        let names = self.read_names()?;
        let ids = self.ids()?;
        let id = resolve_reference(reference, &ids, &names)?;
        self.load(id, &names)
    }

    /// The layers (hex diff ids, bottom first) of the stored image `id`.
    fn diff_ids(&self, id: &str) -> Result<Vec<String>, ImageError> {
        let path = self.image_dir(id).join(RECORD_FILE);
        let bytes = fs::read(&path).map_err(|source| ImageError::Io {
            path: path.clone(),
            source,
        })?;
        let record: ImageRecord = serde_json::from_slice(&bytes)
            .map_err(|source| ImageError::Metadata { path, source })?;
        Ok(record.diff_ids)
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join(IMAGES_DIR)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    fn image_dir(&self, id: &str) -> PathBuf {
        self.images_dir().join(id)
    }

    fn lock_store(&self, how: libc::c_int) -> Result<Lock, ImageError> {
        let path = self.root.join(STORE_LOCK);
        Lock::take(&path, how).map_err(|source| ImageError::Io { path, source })
    }

    /// Ids of complete images: directories in `images/` named by an id, with a record.
    fn ids(&self) -> Result<Vec<String>, ImageError> {
        let dir = self.images_dir();
        let io_err = |source| ImageError::Io {
            path: dir.clone(),
            source,
        };
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.len() == 64 && is_hex(&name) && entry.path().join(RECORD_FILE).is_file() {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn load(&self, id: &str, names: &BTreeMap<String, String>) -> Result<Image, ImageError> {
        let dir = self.image_dir(id);
        let path = dir.join(RECORD_FILE);
        let bytes = fs::read(&path).map_err(|source| ImageError::Io {
            path: path.clone(),
            source,
        })?;
        let record: ImageRecord = serde_json::from_slice(&bytes)
            .map_err(|source| ImageError::Metadata { path, source })?;
        Ok(Image {
            names: names
                .iter()
                .filter(|(_, target)| *target == id)
                .map(|(name, _)| name.clone())
                .collect(),
            id: record.id,
            rootfs: dir.join(ROOTFS_DIR),
            config: record.config,
            size_bytes: record.size_bytes,
            imported_at: record.imported_at,
        })
    }

    fn read_names(&self) -> Result<BTreeMap<String, String>, ImageError> {
        let path = self.root.join(NAMES_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| ImageError::Metadata { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(ImageError::Io { path, source }),
        }
    }

    /// Read-modify-write of `names.json` under the names lock. Names of images that no longer
    /// exist are dropped on the way.
    fn update_names(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> Result<(), ImageError> {
        let lock_path = self.root.join(NAMES_LOCK);
        let _lock = Lock::take(&lock_path, libc::LOCK_EX).map_err(|source| ImageError::Io {
            path: lock_path,
            source,
        })?;
        let mut names = self.read_names()?;
        change(&mut names);
        let ids = self.ids()?;
        names.retain(|_, id| ids.binary_search(id).is_ok());
        let path = self.root.join(NAMES_FILE);
        let json = serde_json::to_vec_pretty(&names).map_err(|source| ImageError::Metadata {
            path: path.clone(),
            source,
        })?;
        fsutil::write_atomic(&path, &json)?;
        Ok(())
    }
}
