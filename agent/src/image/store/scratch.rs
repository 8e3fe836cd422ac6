//! What import and removal share: scratch directories under `tmp/` that clean up after
//! themselves, flock(2) locks between processes sharing the store, and file helpers that
//! report the path they failed on. Records and `names.json` are written with
//! [`crate::fsutil::write_atomic`], shared with the rest of berth.

use std::{
    fs::{self, File},
    io,
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::warn;

use crate::image::ImageError;

/// An exclusive scratch directory under `tmp/`, removed when dropped unless renamed away.
pub(super) struct Scratch {
    pub(super) path: PathBuf,
}

static SCRATCH_SEQ: AtomicU64 = AtomicU64::new(0);

impl Scratch {
    /// A fresh, unique path under `tmp/` (not created).
    pub(super) fn reserve(tmp: &Path, what: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let seq = SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed);
        Self {
            path: tmp.join(format!("{what}-{}-{nanos}-{seq}", std::process::id())),
        }
    }

    pub(super) fn create(tmp: &Path, what: &str) -> Result<Self, ImageError> {
        let scratch = Self::reserve(tmp, what);
        fs::create_dir(&scratch.path).map_err(|source| ImageError::Io {
            path: scratch.path.clone(),
            source,
        })?;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = remove_path(&self.path) {
            warn!(error = %e, "cannot remove scratch directory; the next open removes it");
        }
    }
}

/// An flock(2) held until dropped.
pub(super) struct Lock {
    _file: File,
}

impl Lock {
    pub(super) fn take(path: &Path, how: libc::c_int) -> io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
                return Ok(Self { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

pub(super) fn remove_path(path: &Path) -> Result<(), ImageError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ImageError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

pub(super) fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Fsyncs a directory, so that a rename into or out of it survives a crash. (The durable file
/// write itself is [`crate::fsutil::write_atomic`], which syncs its own directory.)
pub(super) fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    Ok(crate::fsutil::sync_dir(dir)?)
}
