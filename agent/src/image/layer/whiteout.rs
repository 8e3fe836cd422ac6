//! Whiteouts (OCI image spec, `layer.md`): an entry `.wh.<name>` deletes `<name>` from the
//! lower layers, and `.wh..wh..opq` empties its directory of lower-layer content. Both act on
//! lower layers only: what this layer wrote (in any order of the tar) is kept, and neither
//! marker appears in the result.

use std::{
    ffi::{OsStr, OsString},
    fs,
    os::unix::ffi::OsStrExt,
    path::Path,
};

use tracing::debug;

use super::{Applier, sys::remove_any};
use crate::image::ImageError;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

impl Applier<'_> {
    /// Applies entry `name` (parent components `parent`, last component `last`) when it is a
    /// whiteout or an opaque marker, and returns whether it was one.
    pub(super) fn whiteout_entry(
        &mut self,
        name: &[u8],
        parent: &[OsString],
        last: &[u8],
    ) -> Result<bool, ImageError> {
        if last == OPAQUE {
            let dir = self.parent_for_write(name, parent)?;
            self.make_opaque(&dir)?;
            return Ok(true);
        }
        let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX) else {
            return Ok(false);
        };
        if hidden.starts_with(WHITEOUT_PREFIX) || hidden.is_empty() || hidden == b"." {
            debug!(layer = self.layer, entry = %String::from_utf8_lossy(name), "skipping whiteout metadata");
            return Ok(true);
        }
        if hidden == b".." {
            return Err(self.unsafe_path(name));
        }
        self.whiteout(parent, OsStr::from_bytes(hidden))?;
        Ok(true)
    }

    fn whiteout(&mut self, parent: &[OsString], hidden: &OsStr) -> Result<(), ImageError> {
        let Ok(dir) = self.resolve_dir(parent, false) else {
            return Ok(()); // nothing below to hide
        };
        let target = dir.join(hidden);
        if self.written.contains(&target) {
            // Whiteouts apply to lower layers only (image-spec layer.md).
            return Ok(());
        }
        remove_any(&target)
    }

    /// Removes everything in `dir` this layer did not write.
    fn make_opaque(&self, dir: &Path) -> Result<(), ImageError> {
        let io_err = |path: &Path, source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        for child in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let child = child.map_err(|e| io_err(dir, e))?.path();
            if self.written.contains(&child) {
                let is_dir = fs::symlink_metadata(&child)
                    .map_err(|e| io_err(&child, e))?
                    .is_dir();
                if is_dir {
                    self.make_opaque(&child)?;
                }
            } else {
                remove_any(&child)?;
            }
        }
        Ok(())
    }
}
