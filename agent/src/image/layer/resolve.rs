//! Resolving entry names inside the rootfs the way a chroot would, without trusting the tar or
//! the lower layers: names are split into components (`..` and absolute names reject the
//! image), and parent directories are walked with `lstat` one component at a time, following
//! symlinks *inside* the rootfs and stopping `..` at its top. The kernel never resolves a path
//! of the image, so no symlink can lead a write out of the rootfs.

use std::{
    collections::VecDeque,
    ffi::OsString,
    fs, io,
    os::unix::{
        ffi::{OsStrExt, OsStringExt},
        fs::PermissionsExt,
    },
    path::PathBuf,
};

use super::Applier;
use crate::image::{ImageError, LayerProblem};

/// Most symlinks followed while resolving one path (Linux's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// Why a directory could not be resolved.
pub(super) enum Resolve {
    NotFound,
    NotADirectory(PathBuf),
    TooManyLinks,
    Io(PathBuf, io::Error),
}

impl Applier<'_> {
    /// Splits an entry name into components, rejecting anything that could leave the root.
    pub(super) fn components(&self, name: &[u8]) -> Result<Vec<OsString>, ImageError> {
        if name.starts_with(b"/") {
            return Err(self.unsafe_path(name));
        }
        let mut out = Vec::new();
        for part in name.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err(self.unsafe_path(name)),
                p => out.push(OsString::from_vec(p.to_vec())),
            }
        }
        Ok(out)
    }

    /// Resolves `components` to a directory inside the root, following symlinks within the
    /// root and creating missing directories when `create` is set.
    pub(super) fn resolve_dir(
        &mut self,
        components: &[OsString],
        create: bool,
    ) -> Result<PathBuf, Resolve> {
        let mut current = self.root.to_path_buf();
        let mut depth = 0usize;
        let mut queue: VecDeque<OsString> = components.iter().cloned().collect();
        let mut links = 0;
        while let Some(part) = queue.pop_front() {
            match part.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    if depth > 0 {
                        current.pop();
                        depth -= 1;
                    }
                    continue;
                }
                _ => {}
            }
            let next = current.join(&part);
            match fs::symlink_metadata(&next) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Resolve::TooManyLinks);
                    }
                    let target = fs::read_link(&next).map_err(|e| Resolve::Io(next.clone(), e))?;
                    let target = target.as_os_str().as_bytes();
                    if target.starts_with(b"/") {
                        current = self.root.to_path_buf();
                        depth = 0;
                    }
                    for piece in target.split(|b| *b == b'/').rev() {
                        queue.push_front(OsString::from_vec(piece.to_vec()));
                    }
                    continue;
                }
                Ok(_) => return Err(Resolve::NotADirectory(next)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&next).map_err(|e| Resolve::Io(next.clone(), e))?;
                    let _ = fs::set_permissions(&next, fs::Permissions::from_mode(0o755));
                    self.written.insert(next.clone());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Resolve::NotFound),
                Err(e) => return Err(Resolve::Io(next, e)),
            }
            current = next;
            depth += 1;
        }
        Ok(current)
    }

    pub(super) fn parent_for_write(
        &mut self,
        name: &[u8],
        parent: &[OsString],
    ) -> Result<PathBuf, ImageError> {
        self.resolve_dir(parent, true).map_err(|e| match e {
            Resolve::NotADirectory(parent) => {
                self.invalid(name, LayerProblem::ParentNotDirectory { parent })
            }
            Resolve::TooManyLinks => self.invalid(name, LayerProblem::TooManySymlinks),
            Resolve::NotFound => self.invalid(name, LayerProblem::ParentMissing),
            Resolve::Io(path, source) => ImageError::Io { path, source },
        })
    }
}
