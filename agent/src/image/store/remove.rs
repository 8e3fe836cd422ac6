//! Removing images, and clearing what interrupted imports and removals left in `tmp/`. A
//! removal renames the image directory into `tmp/` first (one atomic step: the image is gone
//! for every reader) and deletes it there; a crash in between leaves only a leftover that the
//! next `ImageStore::open` clears, when no other process is using `tmp/`.

use std::fs;

use tracing::{debug, info};

use super::{
    ImageStore, STORE_LOCK,
    scratch::{Lock, Scratch, remove_path, sync_dir},
};
use crate::image::{Image, ImageError};

impl ImageStore {
    /// Removes an image, its rootfs and every name pointing at it, and returns what it was.
    /// The caller checks that no container uses it.
    pub fn remove(&self, reference: &str) -> Result<Image, ImageError> {
        let image = self.get(reference)?;
        let _shared = self.lock_store(libc::LOCK_SH)?;
        let trash = Scratch::reserve(&self.tmp_dir(), "remove");
        let dir = self.image_dir(&image.id);
        fs::rename(&dir, &trash.path).map_err(|source| ImageError::Io { path: dir, source })?;
        sync_dir(&self.images_dir())?;
        self.update_names(|map| map.retain(|_, id| *id != image.id))?;
        drop(trash);
        info!(id = %image.id, names = ?image.names, "image removed");
        Ok(image)
    }

    /// Removes everything in `tmp/`, when the store lock can be taken exclusively (no other
    /// process is importing or removing).
    pub(super) fn remove_leftovers(&self) -> Result<(), ImageError> {
        let lock_path = self.root.join(STORE_LOCK);
        match Lock::take(&lock_path, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(_guard) => {
                let tmp = self.tmp_dir();
                for entry in fs::read_dir(&tmp).map_err(|source| ImageError::Io {
                    path: tmp.clone(),
                    source,
                })? {
                    let path = match entry {
                        Ok(entry) => entry.path(),
                        Err(source) => {
                            return Err(ImageError::Io {
                                path: tmp.clone(),
                                source,
                            });
                        }
                    };
                    info!(path = %path.display(), "removing leftover of an interrupted import");
                    remove_path(&path)?;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                debug!(store = %self.root.display(), "another process is importing; leaving tmp/ alone");
            }
            Err(source) => {
                return Err(ImageError::Io {
                    path: lock_path,
                    source,
                });
            }
        }
        Ok(())
    }
}
