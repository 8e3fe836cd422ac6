//! Extracting one tar entry into the rootfs: regular files, directories, symlinks, hard links
//! and fifos, with their mode (setuid included), ownership, mtime and `SCHILY.xattr.*` extended
//! attributes taken from the header and its PAX extensions. Device nodes are skipped (creating
//! them may not be allowed, and containers get theirs from the runtime). Whatever is already at
//! the target is replaced, never written through.

use std::{
    ffi::OsStr,
    fs,
    io::{self, Read, Write},
    os::unix::{
        ffi::OsStrExt,
        fs::{OpenOptionsExt, PermissionsExt},
    },
    path::Path,
};

use tracing::{debug, warn};

use super::{
    Applier,
    sys::{create_dir, cstring, lsetxattr, remove_any, set_mtime},
};
use crate::image::{ImageError, LayerProblem};

/// Ownership, mode and times of an entry, with PAX overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Applier<'_> {
    /// Applies one entry of the layer tar.
    pub(super) fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), ImageError> {
        let name = entry.path_bytes().into_owned();
        let mut kind = entry.header().entry_type();
        if kind == tar::EntryType::Regular && name.ends_with(b"/") {
            // Old tars mark directories by a trailing slash only.
            kind = tar::EntryType::Directory;
        }
        let mut components = self.components(&name)?;
        let Some(last) = components.pop() else {
            if kind == tar::EntryType::Directory {
                let meta = self.meta(entry, &name)?;
                let root = self.root.to_path_buf();
                self.set_meta(&root, &meta, false)?;
                self.dir_times.push((root, meta.mtime));
            }
            return Ok(());
        };
        if self.whiteout_entry(&name, &components, last.as_bytes())? {
            return Ok(());
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let meta = self.meta(entry, &name)?;
                let target = self.parent_for_write(&name, &components)?.join(&last);
                self.write_file(entry, &target, &meta)?;
                self.written.insert(target);
            }
            tar::EntryType::Directory => {
                let meta = self.meta(entry, &name)?;
                let target = self.parent_for_write(&name, &components)?.join(&last);
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&target)?;
                        create_dir(&target)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir(&target)?,
                    Err(source) => {
                        return Err(ImageError::Io {
                            path: target,
                            source,
                        });
                    }
                }
                self.set_meta(&target, &meta, false)?;
                self.dir_times.push((target.clone(), meta.mtime));
                self.written.insert(target);
            }
            tar::EntryType::Symlink => {
                let meta = self.meta(entry, &name)?;
                let link = entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| self.invalid(&name, LayerProblem::SymlinkWithoutTarget))?;
                let target = self.parent_for_write(&name, &components)?.join(&last);
                remove_any(&target)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target).map_err(
                    |source| ImageError::Io {
                        path: target.clone(),
                        source,
                    },
                )?;
                self.set_meta(&target, &meta, true)?;
                self.written.insert(target);
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .ok_or_else(|| self.invalid(&name, LayerProblem::HardLinkWithoutTarget))?;
                let target = self.parent_for_write(&name, &components)?.join(&last);
                self.hard_link(&name, &link, &target)?;
                self.written.insert(target);
            }
            tar::EntryType::Fifo => {
                let meta = self.meta(entry, &name)?;
                let target = self.parent_for_write(&name, &components)?.join(&last);
                remove_any(&target)?;
                let c = cstring(&target)?;
                // SAFETY: `c` is a valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                    return Err(ImageError::Io {
                        path: target,
                        source: io::Error::last_os_error(),
                    });
                }
                self.set_meta(&target, &meta, false)?;
                self.written.insert(target);
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                debug!(layer = self.layer, entry = %String::from_utf8_lossy(&name), "skipping device node");
            }
            other => {
                debug!(layer = self.layer, entry = %String::from_utf8_lossy(&name), kind = ?other, "skipping tar entry type");
            }
        }
        Ok(())
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
    ) -> Result<Meta, ImageError> {
        let header = entry.header();
        let mode = header.mode().map_err(|e| self.read_error(e))? & 0o7777;
        let mut uid = header.uid().map_err(|e| self.read_error(e))?;
        let mut gid = header.gid().map_err(|e| self.read_error(e))?;
        let mut mtime = header.mtime().map_err(|e| self.read_error(e))? as i64;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|e| self.read_error(e))? {
            for ext in pax {
                let ext = ext.map_err(|e| self.read_error(e))?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                let number = || {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.split('.').next())
                        .and_then(|v| v.parse::<i64>().ok())
                };
                match key {
                    b"uid" => uid = number().and_then(|n| u64::try_from(n).ok()).unwrap_or(uid),
                    b"gid" => gid = number().and_then(|n| u64::try_from(n).ok()).unwrap_or(gid),
                    b"mtime" => mtime = number().unwrap_or(mtime),
                    _ => {
                        if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                            xattrs.push((attr.to_vec(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let uid = u32::try_from(uid)
            .map_err(|_| self.invalid(name, LayerProblem::UidOutOfRange { uid }))?;
        let gid = u32::try_from(gid)
            .map_err(|_| self.invalid(name, LayerProblem::GidOutOfRange { gid }))?;
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// Owner, then mode (chown clears setuid bits), then xattrs (chown clears
    /// security.capability), then mtime (except for directories, done at the end).
    fn set_meta(&self, path: &Path, meta: &Meta, symlink: bool) -> Result<(), ImageError> {
        let io_err = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)) {
            Ok(()) => {}
            // Not root: keep our own ownership rather than fail.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                debug!(path = %path.display(), "cannot chown (not root); keeping the owner");
            }
            Err(source) => return Err(io_err(source)),
        }
        if !symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode)).map_err(io_err)?;
        }
        for (name, value) in &meta.xattrs {
            if let Err(e) = lsetxattr(path, name, value) {
                warn!(
                    path = %path.display(),
                    xattr = %String::from_utf8_lossy(name),
                    error = %e,
                    "cannot set extended attribute"
                );
            }
        }
        let is_dir = !symlink
            && fs::symlink_metadata(path)
                .map(|m| m.is_dir())
                .unwrap_or(false);
        if !is_dir {
            set_mtime(path, meta.mtime).map_err(io_err)?;
        }
        Ok(())
    }

    fn write_file<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        target: &Path,
        meta: &Meta,
    ) -> Result<(), ImageError> {
        remove_any(target)?;
        let io_err = |source| ImageError::Io {
            path: target.to_path_buf(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(target)
            .map_err(io_err)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e)),
            };
            file.write_all(&buf[..n]).map_err(io_err)?;
        }
        drop(file);
        self.set_meta(target, meta, false)
    }

    fn hard_link(&mut self, name: &[u8], link: &[u8], target: &Path) -> Result<(), ImageError> {
        let mut components = self.components(link)?;
        let Some(last) = components.pop() else {
            return Err(self.invalid(name, LayerProblem::HardLinkToRoot));
        };
        let resolved = self.resolve_dir(&components, false);
        let missing = || {
            self.invalid(
                name,
                LayerProblem::HardLinkTargetMissing {
                    target: String::from_utf8_lossy(link).into_owned(),
                },
            )
        };
        let source = match resolved {
            Ok(dir) => dir.join(&last),
            Err(_) => return Err(missing()),
        };
        match fs::symlink_metadata(&source) {
            Ok(m) if m.is_dir() => {
                return Err(self.invalid(name, LayerProblem::HardLinkToDirectory));
            }
            Ok(_) => {}
            Err(_) => return Err(missing()),
        }
        if source == target {
            return Ok(());
        }
        remove_any(target)?;
        fs::hard_link(&source, target).map_err(|e| ImageError::Io {
            path: target.to_path_buf(),
            source: e,
        })
    }
}
