//! The store's side of a registry pull: a [`PullTx`] holds the store's shared lock and a scratch
//! directory under `tmp/` for the duration of a pull; the registry client downloads blobs into
//! it (verified against their digests as they arrive), and [`PullTx::commit`] unpacks them,
//! checks every layer against the config's `rootfs.diff_ids`, writes the record and renames
//! the directory into `images/`, exactly as an import does. Dropping the transaction unfinished
//! (an error, an unreachable registry, a killed client) removes the scratch directory: no half
//! image is ever listed, no half-written blob kept.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use tracing::info;

use super::{
    ImageRecord, ImageStore, RECORD_FILE, ROOTFS_DIR,
    import::{apply_layer, commit_dir, write_record},
    scratch::{Lock, Scratch, set_mode},
};
use crate::image::{Image, ImageError, archive::parse_config};

/// A pull in progress: the scratch directory blobs are downloaded into.
pub struct PullTx {
    store: ImageStore,
    scratch: Scratch,
    _shared: Lock,
}

impl ImageStore {
    /// Whether an image with this id (hex sha256 of its config) is stored.
    pub fn contains(&self, id: &str) -> bool {
        self.image_dir(id).join(RECORD_FILE).exists()
    }

    /// Starts a pull: takes the shared store lock and a scratch directory for its blobs.
    pub fn begin_pull(&self) -> Result<PullTx, ImageError> {
        let shared = self.lock_store(libc::LOCK_SH)?;
        let scratch = Scratch::create(&self.tmp_dir(), "pull")?;
        let blobs = scratch.path.join("blobs");
        fs::create_dir(&blobs).map_err(|source| ImageError::Io {
            path: blobs,
            source,
        })?;
        Ok(PullTx {
            store: self.clone(),
            scratch,
            _shared: shared,
        })
    }

    /// The stored image whose layers (`diff_ids`, bottom first) are the longest leading run of
    /// `diff_ids`, with that run's length: a pull of an image on top of it downloads only
    /// the rest. Unreadable records are skipped (the pull then downloads more, nothing worse).
    pub fn base_for(&self, diff_ids: &[String]) -> Result<Option<(String, usize)>, ImageError> {
        let mut best: Option<(String, usize)> = None;
        for id in self.ids()? {
            let Ok(bytes) = fs::read(self.image_dir(&id).join(RECORD_FILE)) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<ImageRecord>(&bytes) else {
                continue;
            };
            let n = record.diff_ids.len();
            if n > 0
                && diff_ids.starts_with(&record.diff_ids)
                && best.as_ref().is_none_or(|(_, b)| n > *b)
            {
                best = Some((id, n));
            }
        }
        Ok(best)
    }

    /// Points `names` at the stored image `id` (a pull of an image already stored).
    pub fn tag(&self, id: &str, names: &[String]) -> Result<Image, ImageError> {
        if !names.is_empty() {
            self.update_names(|map| {
                for name in names {
                    if let Some(old) = map.insert(name.clone(), id.to_string())
                        && old != id
                    {
                        info!(%name, from = %old, to = %id, "name moved to the new image");
                    }
                }
            })?;
        }
        self.get(id)
    }
}

impl PullTx {
    /// Where the blob with this hex digest is downloaded to.
    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.scratch.path.join("blobs").join(hex)
    }

    /// Unpacks the downloaded layers (bottom first, each already verified against its blob
    /// digest) under the config `config` (whose sha256 is `id`), on top of a copy of the
    /// stored image `base` when given (whose layers are the config's first ones; see
    /// [`ImageStore::base_for`]), checks their diff ids and stores the image atomically;
    /// `names` point at it afterwards. `source` names the pull in errors (the reference).
    pub fn commit(
        self,
        source: &str,
        id: &str,
        config: &[u8],
        base: Option<&str>,
        layers: &[String],
        names: &[String],
    ) -> Result<Image, ImageError> {
        let (image_config, diff_ids) = parse_config(Path::new(source), "config", config)?;
        let shared = match base {
            Some(base) => self.store.diff_ids(base)?.len(),
            None => 0,
        };
        if diff_ids.len() != shared + layers.len() {
            return Err(ImageError::Registry {
                reference: source.to_string(),
                message: format!(
                    "the config lists {} layers (rootfs.diff_ids) but the manifest {}",
                    diff_ids.len(),
                    shared + layers.len()
                ),
            });
        }
        if !self.store.contains(id) {
            let rootfs = self.scratch.path.join(ROOTFS_DIR);
            match base {
                Some(base) => copy_tree(&self.store.image_dir(base).join(ROOTFS_DIR), &rootfs)?,
                None => {
                    fs::create_dir(&rootfs).map_err(|source| ImageError::Io {
                        path: rootfs.clone(),
                        source,
                    })?;
                    set_mode(&rootfs, 0o755)?;
                }
            }
            for (i, (hex, diff_id)) in layers.iter().zip(&diff_ids[shared..]).enumerate() {
                let i = i + shared;
                let path = self.blob_path(hex);
                let file = File::open(&path).map_err(|source| ImageError::Io {
                    path: path.clone(),
                    source,
                })?;
                let label = format!("sha256:{hex}");
                let actual = apply_layer(&rootfs, &label, file)?;
                if &actual != diff_id {
                    return Err(ImageError::BlobDigestMismatch {
                        reference: source.to_string(),
                        digest: label,
                        message: format!(
                            "uncompressed it hashes to sha256:{actual}, the config's \
                             rootfs.diff_ids[{i}] says sha256:{diff_id}"
                        ),
                    });
                }
                // The blob is not part of the image; free its space before the next one.
                let _ = fs::remove_file(&path);
            }
            if let Some(base) = base {
                info!(%id, %base, shared, "layers shared with a stored image");
            }
            let blobs = self.scratch.path.join("blobs");
            fs::remove_dir_all(&blobs).map_err(|source| ImageError::Io {
                path: blobs,
                source,
            })?;
            write_record(&self.scratch.path, id, image_config, diff_ids)?;
            commit_dir(&self.store, &self.scratch.path, id)?;
            info!(%id, reference = %source, "image pulled");
        }
        drop(self.scratch);
        self.store.tag(id, names)
    }
}

/// Copies a stored rootfs with everything a root filesystem holds (owners, modes, times,
/// links, device nodes, xattrs), as `cp -a` does; reflinks where the filesystem can.
fn copy_tree(from: &Path, to: &Path) -> Result<(), ImageError> {
    let out = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--"])
        .arg(from)
        .arg(to)
        .output()
        .map_err(|source| ImageError::Io {
            path: PathBuf::from("cp"),
            source,
        })?;
    if !out.status.success() {
        return Err(ImageError::Io {
            path: from.to_path_buf(),
            source: std::io::Error::other(format!(
                "cp -a to {}: {}",
                to.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    Ok(())
}
