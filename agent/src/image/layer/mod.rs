//! Applying one layer tar onto a rootfs directory, as docker does it, without trusting the tar.
//!
//! - Entry names with `..` or a leading `/` reject the image ([`ImageError::UnsafePath`]).
//! - Parent directories are resolved component by component with `lstat`, never by the kernel:
//!   a symlink met on the way (from this or a lower layer) is followed *inside* the rootfs, the
//!   way a chroot would (`etc -> /` then `etc/passwd` writes `<rootfs>/passwd`), and `..` stops
//!   at the rootfs. The final component is never followed: an existing entry there is replaced.
//! - Hard link targets are resolved the same way, so they always name a file inside the rootfs.
//! - Whiteouts (OCI image spec, layer.md): `.wh.<name>` deletes `<name>` from lower layers,
//!   `.wh..wh..opq` empties its directory of lower-layer content; neither appears in the result.
//!   Entries of the same layer are kept, whatever the order of the tar.
//! - Regular files, directories, symlinks, hard links and fifos are created with their mode
//!   (setuid included), ownership, mtime and `SCHILY.xattr.*` extended attributes; device nodes
//!   are skipped (creating them may not be allowed, and containers get theirs from the runtime).
//!
//! Nothing races with us: the rootfs is a private directory of the store until the import
//! completes, so resolving with `lstat` and then acting on the path is sound.

mod extract;
mod resolve;
mod sys;
#[cfg(test)]
mod tests;
mod whiteout;

use std::{
    collections::HashSet,
    fs, io,
    io::Read,
    path::{Path, PathBuf},
};

use self::sys::set_mtime;
use super::{ImageError, LayerProblem};

/// Applies the layer tar read from `reader` onto `root`. `layer` names it in errors.
/// Reads up to the tar's end-of-archive marker; the caller drains what follows.
pub(crate) fn apply<R: Read>(root: &Path, layer: &str, reader: R) -> Result<(), ImageError> {
    let mut applier = Applier {
        root,
        layer,
        written: HashSet::new(),
        dir_times: Vec::new(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| applier.read_error(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| applier.read_error(e))?;
        applier.entry(&mut entry)?;
    }
    // Directory times last: creating their children changed them.
    for (path, mtime) in applier.dir_times.iter().rev() {
        if let Err(source) = set_mtime(path, *mtime)
            && source.kind() != io::ErrorKind::NotFound
        {
            return Err(ImageError::Io {
                path: path.clone(),
                source,
            });
        }
    }
    Ok(())
}

struct Applier<'a> {
    root: &'a Path,
    layer: &'a str,
    /// Resolved paths this layer created: whiteouts and opaque markers spare them.
    written: HashSet<PathBuf>,
    dir_times: Vec<(PathBuf, i64)>,
}

impl Applier<'_> {
    fn read_error(&self, source: io::Error) -> ImageError {
        ImageError::LayerRead {
            layer: self.layer.to_string(),
            source,
        }
    }

    fn invalid(&self, entry: &[u8], problem: LayerProblem) -> ImageError {
        ImageError::InvalidLayer {
            layer: self.layer.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            problem,
        }
    }

    fn unsafe_path(&self, entry: &[u8]) -> ImageError {
        ImageError::UnsafePath {
            layer: self.layer.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
        }
    }
}

/// Bytes of regular files under `root`, hard links counted once, symlinks not followed.
pub(crate) fn disk_usage(root: &Path) -> Result<u64, ImageError> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|source| ImageError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ImageError::Io {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            let m = fs::symlink_metadata(&path).map_err(|source| ImageError::Io {
                path: path.clone(),
                source,
            })?;
            if m.is_dir() {
                stack.push(path);
            } else if m.is_file() && (m.nlink() == 1 || seen.insert((m.dev(), m.ino()))) {
                total += m.len();
            }
        }
    }
    Ok(total)
}
