//! Thin wrappers over the file-system calls the extraction needs and `std` lacks or would make
//! follow symlinks: remove-whatever-is-there, `utimensat(AT_SYMLINK_NOFOLLOW)` and
//! `lsetxattr`, each reporting the path it failed on.

use std::{ffi::CString, fs, io, os::unix::ffi::OsStrExt, path::Path};

use crate::image::ImageError;

pub(super) fn create_dir(path: &Path) -> Result<(), ImageError> {
    fs::create_dir(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes whatever is at `path` without following a symlink there; absent is fine.
pub(super) fn remove_any(path: &Path) -> Result<(), ImageError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ImageError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(super) fn cstring(path: &Path) -> Result<CString, ImageError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| ImageError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"),
    })
}

/// Sets atime and mtime of `path` without following a symlink.
pub(super) fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: `c` is a valid NUL-terminated path and `times` holds two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn lsetxattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "contains NUL");
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| invalid())?;
    let c_name = CString::new(name).map_err(|_| invalid())?;
    // SAFETY: both strings are NUL-terminated; value pointer and length describe one slice.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
