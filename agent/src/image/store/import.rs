//! Importing an archive: the plan is read and verified from the archive's metadata, every
//! layer is checked against its digests while it is unpacked into a scratch directory under
//! `tmp/`, the record is written, the filesystem synced, and only then is the directory
//! renamed into `images/`, so `list` never sees half an image. Names move afterwards, in one
//! atomic rewrite of `names.json`. An id already stored is reused, not unpacked again.

use std::{
    fs::{self, File},
    io::{self, BufReader},
    os::unix::io::AsRawFd,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

use super::{
    ImageRecord, ImageStore, RECORD_FILE, ROOTFS_DIR,
    scratch::{Scratch, remove_path, set_mode, sync_dir},
};
use crate::{
    fsutil,
    image::{
        Image, ImageConfig, ImageError,
        archive::{Archive, ImportPlan},
        compression::LayerStream,
        digest::{self, HashingReader},
        layer, normalize_name,
    },
};

impl ImageStore {
    /// Imports an image archive (`docker save` output or an OCI layout tar, plain or gzip) and
    /// returns the image. The names found in the archive and `name` (if given) all point at it
    /// afterwards, moving away from images that had them. Importing an image whose id is
    /// already stored reuses its rootfs and only updates names.
    pub fn import(&self, archive: &Path, name: Option<&str>) -> Result<Image, ImageError> {
        let extra_name = name.map(normalize_name).transpose()?;
        let _shared = self.lock_store(libc::LOCK_SH)?;
        let scratch = Scratch::create(&self.tmp_dir(), "import")?;
        let archive = Archive::open(archive, &scratch.path)?;
        let plan = archive.plan()?;
        let final_dir = self.image_dir(&plan.id);

        if final_dir.join(RECORD_FILE).exists() {
            info!(id = %plan.id, "image already stored; reusing its rootfs");
        } else {
            self.unpack(&archive, &plan, &scratch.path)?;
            commit_dir(self, &scratch.path, &plan.id)?;
            info!(id = %plan.id, archive = %archive.path().display(), "image imported");
        }
        drop(scratch);

        let mut names = plan.names.clone();
        if let Some(extra) = extra_name
            && !names.contains(&extra)
        {
            names.push(extra);
        }
        if !names.is_empty() {
            self.update_names(|map| {
                for name in &names {
                    if let Some(old) = map.insert(name.clone(), plan.id.clone())
                        && old != plan.id
                    {
                        info!(%name, from = %old, to = %plan.id, "name moved to the new image");
                    }
                }
            })?;
        }
        self.get(&plan.id)
    }

    /// Unpacks all layers into `<scratch>/rootfs` and writes `<scratch>/image.json`.
    fn unpack(
        &self,
        archive: &Archive,
        plan: &ImportPlan,
        scratch: &Path,
    ) -> Result<(), ImageError> {
        let rootfs = scratch.join(ROOTFS_DIR);
        fs::create_dir(&rootfs).map_err(|source| ImageError::Io {
            path: rootfs.clone(),
            source,
        })?;
        set_mode(&rootfs, 0o755)?;
        for (i, source) in plan.layers.iter().enumerate() {
            debug!(layer = %source.member, index = i, "applying layer");
            if let Some(digest) = &source.digest {
                archive.verify(&source.member, digest, source.size)?;
            }
            let (section, _) = archive.open_member(&source.member)?;
            let diff_id = apply_layer(&rootfs, &source.member, section)?;
            archive.check_digest(
                &format!("{} (uncompressed, rootfs.diff_ids[{i}])", source.member),
                &source.diff_id,
                &diff_id,
            )?;
        }
        // The archive copy, if any, is not part of the image.
        let _ = fs::remove_file(scratch.join("archive.tar"));
        let diff_ids = plan.layers.iter().map(|l| l.diff_id.clone()).collect();
        write_record(scratch, &plan.id, plan.config.clone(), diff_ids)
    }
}

/// Writes `<scratch>/image.json` for the unpacked `<scratch>/rootfs` and syncs both to disk.
pub(super) fn write_record(
    scratch: &Path,
    id: &str,
    config: ImageConfig,
    diff_ids: Vec<String>,
) -> Result<(), ImageError> {
    let rootfs = scratch.join(ROOTFS_DIR);
    let record = ImageRecord {
        id: id.to_string(),
        config,
        size_bytes: layer::disk_usage(&rootfs)?,
        imported_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        diff_ids,
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|source| ImageError::Metadata {
        path: scratch.join(RECORD_FILE),
        source,
    })?;
    fsutil::write_atomic(&scratch.join(RECORD_FILE), &json)?;
    // One syncfs for the whole rootfs instead of an fsync per file: after the rename into
    // `images/` the image is visible, so its content must be on disk first.
    syncfs(scratch)
}

/// Renames a complete scratch directory (record written, synced) into `images/<id>`.
pub(super) fn commit_dir(store: &ImageStore, scratch: &Path, id: &str) -> Result<(), ImageError> {
    let final_dir = store.image_dir(id);
    if final_dir.exists() && !final_dir.join(RECORD_FILE).exists() {
        // Not an image (no record): nothing berth writes looks like this; clear it.
        warn!(path = %final_dir.display(), "replacing an incomplete image directory");
        remove_path(&final_dir)?;
    }
    match fs::rename(scratch, &final_dir) {
        Ok(()) => {}
        // Another import of the same image won the race: use its result.
        Err(e)
            if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY))
                && final_dir.join(RECORD_FILE).exists() => {}
        Err(source) => {
            return Err(ImageError::Io {
                path: final_dir,
                source,
            });
        }
    }
    sync_dir(&store.images_dir())
}

/// Applies one layer blob (compressed or not) and returns the sha256 of its uncompressed tar.
pub(super) fn apply_layer(
    rootfs: &Path,
    member: &str,
    section: impl io::Read,
) -> Result<String, ImageError> {
    let read_err = |source| ImageError::LayerRead {
        layer: member.to_string(),
        source,
    };
    let mut hasher = Sha256::new();
    {
        let mut stream = HashingReader::new(
            LayerStream::new(BufReader::with_capacity(1 << 16, section), member)?,
            &mut hasher,
        );
        layer::apply(rootfs, member, &mut stream)?;
        // The diff id covers the whole tar, including the end-of-archive blocks and padding
        // the tar reader stopped before; draining also completes the gzip CRC check.
        io::copy(&mut stream, &mut io::sink()).map_err(read_err)?;
    }
    Ok(digest::hex(hasher))
}

fn syncfs(path: &Path) -> Result<(), ImageError> {
    let io_err = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = File::open(path).map_err(io_err)?;
    // SAFETY: syncfs on a file descriptor we own.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    Ok(())
}
