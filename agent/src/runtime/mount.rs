//! The container's root file system: an overlay with the image (or the user's directory) as
//! the read-only lower layer and a per-container upper layer, mounted at the bundle's
//! `rootfs`. Mount checks go through [`crate::fsutil::is_mounted`], so a path with spaces
//! (escaped in mountinfo) is found like any other.

use std::{ffi::CString, fs, os::unix::ffi::OsStrExt as _, path::Path};

use super::{
    error::{RuntimeError, io},
    store::ContainerDir,
};
use crate::fsutil::is_mounted;

/// Mounts the overlay of `d` over `lower`; a rootfs already mounted (a restart) is kept.
pub(super) fn mount_overlay(lower: &Path, d: &ContainerDir) -> Result<(), RuntimeError> {
    for p in [d.upper(), d.work(), d.rootfs()] {
        fs::create_dir_all(&p).map_err(io("create", &p))?;
    }
    let rootfs = d.rootfs();
    if is_mounted(&rootfs) {
        return Ok(());
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        d.upper().display(),
        d.work().display()
    );
    let target = CString::new(rootfs.as_os_str().as_bytes()).expect("no NUL in paths");
    // Unreachable in practice: a user's rootfs path with a NUL is no directory, so `prepare`
    // refuses it before anything is mounted.
    let data = CString::new(opts).map_err(|_| {
        io("mount overlay on", &rootfs)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a NUL byte in the overlay's directory paths",
        ))
    })?;
    // SAFETY: valid C strings; overlay takes its options as data.
    let r = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(io("mount overlay on", &rootfs)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Detaches whatever is mounted at `path`; nothing mounted is fine.
pub(super) fn unmount(path: &Path) {
    if !is_mounted(path) {
        return;
    }
    if let Ok(target) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: valid C string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unmounts on drop, so a failed assertion leaves no mount behind.
    struct Mounted<'a>(&'a Path);

    impl Drop for Mounted<'_> {
        fn drop(&mut self) {
            unmount(self.0);
        }
    }

    #[test]
    fn a_mount_on_a_path_with_a_space_is_found_and_unmounted() {
        // mountinfo writes the space as \040; the lookup must undo that escape.
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a b");
        fs::create_dir(&target).unwrap();
        assert!(!is_mounted(&target));
        let c = CString::new(target.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C strings; a tmpfs takes no data.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            r,
            0,
            "mount tmpfs (needs root): {}",
            std::io::Error::last_os_error()
        );
        let guard = Mounted(&target);
        assert!(
            is_mounted(&target),
            "{} not found in mountinfo",
            target.display()
        );
        unmount(&target);
        assert!(!is_mounted(&target));
        drop(guard);
    }
}
