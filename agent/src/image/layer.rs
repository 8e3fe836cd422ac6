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

use std::{
    collections::{HashSet, VecDeque},
    ffi::{CString, OsStr, OsString},
    fs,
    io::{self, Read, Write},
    os::unix::{
        ffi::{OsStrExt, OsStringExt},
        fs::{OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use tracing::{debug, warn};

use super::ImageError;

/// Most symlinks followed while resolving one path (Linux's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

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

/// Ownership, mode and times of an entry, with PAX overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

enum Resolve {
    NotFound,
    NotADirectory(PathBuf),
    TooManyLinks,
    Io(PathBuf, io::Error),
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

    fn invalid(&self, entry: &[u8], reason: impl Into<String>) -> ImageError {
        ImageError::InvalidLayer {
            layer: self.layer.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }

    fn unsafe_path(&self, entry: &[u8]) -> ImageError {
        ImageError::UnsafePath {
            layer: self.layer.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
        }
    }

    /// Splits an entry name into components, rejecting anything that could leave the root.
    fn components(&self, name: &[u8]) -> Result<Vec<OsString>, ImageError> {
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
    fn resolve_dir(&mut self, components: &[OsString], create: bool) -> Result<PathBuf, Resolve> {
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

    fn parent_for_write(
        &mut self,
        name: &[u8],
        parent: &[OsString],
    ) -> Result<PathBuf, ImageError> {
        self.resolve_dir(parent, true).map_err(|e| match e {
            Resolve::NotADirectory(p) => self.invalid(
                name,
                format!("a parent, {}, is not a directory", p.display()),
            ),
            Resolve::TooManyLinks => self.invalid(name, "too many levels of symbolic links"),
            Resolve::NotFound => self.invalid(name, "a parent directory cannot be created"),
            Resolve::Io(path, source) => ImageError::Io { path, source },
        })
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
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
        let last_bytes = last.as_bytes();

        if last_bytes == OPAQUE {
            let dir = self.parent_for_write(&name, &components)?;
            return self.make_opaque(&dir);
        }
        if let Some(hidden) = last_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(WHITEOUT_PREFIX) || hidden.is_empty() || hidden == b"." {
                debug!(layer = self.layer, entry = %String::from_utf8_lossy(&name), "skipping whiteout metadata");
                return Ok(());
            }
            if hidden == b".." {
                return Err(self.unsafe_path(&name));
            }
            return self.whiteout(&components, OsStr::from_bytes(hidden));
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
                    .ok_or_else(|| self.invalid(&name, "symbolic link without a target"))?;
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
                    .ok_or_else(|| self.invalid(&name, "hard link without a target"))?;
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
            .map_err(|_| self.invalid(name, format!("uid {uid} is out of range")))?;
        let gid = u32::try_from(gid)
            .map_err(|_| self.invalid(name, format!("gid {gid} is out of range")))?;
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
            return Err(self.invalid(name, "hard link to the root directory"));
        };
        let resolved = self.resolve_dir(&components, false);
        let missing = || {
            self.invalid(
                name,
                format!(
                    "hard link target {} does not exist",
                    String::from_utf8_lossy(link)
                ),
            )
        };
        let source = match resolved {
            Ok(dir) => dir.join(&last),
            Err(_) => return Err(missing()),
        };
        match fs::symlink_metadata(&source) {
            Ok(m) if m.is_dir() => return Err(self.invalid(name, "hard link to a directory")),
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

fn create_dir(path: &Path) -> Result<(), ImageError> {
    fs::create_dir(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes whatever is at `path` without following a symlink there; absent is fine.
fn remove_any(path: &Path) -> Result<(), ImageError> {
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

fn cstring(path: &Path) -> Result<CString, ImageError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| ImageError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"),
    })
}

/// Sets atime and mtime of `path` without following a symlink.
fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
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

fn lsetxattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::image::testutil::{Entry::*, layer};

    fn apply_all(layers: &[Vec<u8>]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        for (i, l) in layers.iter().enumerate() {
            apply(&root, &format!("layer{i}"), l.as_slice()).unwrap();
        }
        (dir, root)
    }

    fn apply_err(layers: &[Vec<u8>]) -> ImageError {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        for (i, l) in layers.iter().enumerate() {
            if let Err(e) = apply(&root, &format!("layer{i}"), l.as_slice()) {
                return e;
            }
        }
        panic!("all layers applied")
    }

    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(path.strip_prefix(root).unwrap().display().to_string());
                if fs::symlink_metadata(&path).unwrap().is_dir() {
                    stack.push(path);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts_and_opaque_dirs() {
        let lower = layer(&[
            Dir("etc"),
            File("etc/passwd", b"root"),
            File("etc/shadow", b"secret"),
            Dir("data"),
            File("data/old", b"old"),
            Dir("data/sub"),
            File("data/sub/deep", b"deep"),
            Dir("keep"),
            File("keep/k", b"k"),
        ]);
        let upper = layer(&[
            File("etc/.wh.shadow", b""),
            Dir("data"),
            File("data/.wh..wh..opq", b""),
            File("data/new", b"new"),
            File("etc/passwd", b"root2"),
        ]);
        let (_dir, root) = apply_all(&[lower, upper]);
        assert_eq!(
            tree(&root),
            ["data", "data/new", "etc", "etc/passwd", "keep", "keep/k"]
        );
        assert_eq!(fs::read(root.join("etc/passwd")).unwrap(), b"root2");
    }

    #[test]
    fn entries_before_an_opaque_marker_in_the_same_layer_survive() {
        let lower = layer(&[
            Dir("d"),
            File("d/lower", b"x"),
            Dir("d/sub"),
            File("d/sub/l", b""),
        ]);
        let upper = layer(&[
            Dir("d"),
            File("d/mine", b"y"),
            Dir("d/sub"),
            File("d/sub/mine", b""),
            File("d/.wh..wh..opq", b""),
        ]);
        let (_dir, root) = apply_all(&[lower, upper]);
        assert_eq!(tree(&root), ["d", "d/mine", "d/sub", "d/sub/mine"]);
    }

    #[test]
    fn a_whiteout_does_not_delete_a_file_of_its_own_layer() {
        let only = layer(&[File("a", b"1"), File(".wh.a", b"")]);
        let (_dir, root) = apply_all(&[only]);
        assert_eq!(tree(&root), ["a"]);
    }

    #[test]
    fn a_whiteout_removes_a_whole_directory_and_tolerates_absent_targets() {
        let lower = layer(&[Dir("d"), File("d/f", b""), Dir("d/e")]);
        let upper = layer(&[
            File(".wh.d", b""),
            File(".wh.nothing", b""),
            File("no/dir/.wh.x", b""),
        ]);
        let (_dir, root) = apply_all(&[lower, upper]);
        assert!(tree(&root).is_empty(), "{:?}", tree(&root));
    }

    #[test]
    fn a_parent_dir_entry_is_rejected() {
        for name in ["../evil", "a/../../evil", "./../evil"] {
            let err = apply_err(&[layer(&[File(name, b"x")])]);
            assert!(
                matches!(err, ImageError::UnsafePath { .. }),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn an_absolute_entry_is_rejected() {
        let err = apply_err(&[layer(&[File("/etc/evil", b"x")])]);
        assert!(matches!(err, ImageError::UnsafePath { ref entry, .. } if entry == "/etc/evil"));
    }

    #[test]
    fn a_symlink_to_slash_is_followed_inside_the_rootfs() {
        let outside = tempfile::tempdir().unwrap();
        let outside_abs = outside.path().to_str().unwrap().to_string();
        let lower = layer(&[
            Symlink("etc", "/"),
            Symlink("escape", &outside_abs),
            Symlink("up", "../../../../../.."),
        ]);
        let upper = layer(&[
            File("etc/passwd", b"inside"),
            File("escape/pwned", b"inside"),
            File("up/pwned2", b"inside"),
        ]);
        let (_dir, root) = apply_all(&[lower, upper]);
        assert_eq!(fs::read(root.join("passwd")).unwrap(), b"inside");
        assert_eq!(fs::read(root.join("pwned2")).unwrap(), b"inside");
        let relocated = root.join(outside_abs.trim_start_matches('/')).join("pwned");
        assert_eq!(fs::read(relocated).unwrap(), b"inside");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(fs::read_link(root.join("etc")).unwrap(), Path::new("/"));
    }

    #[test]
    fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        let lower = layer(&[Symlink("x", victim.to_str().unwrap())]);
        let upper = layer(&[File("x", b"new")]);
        let (_dir, root) = apply_all(&[lower, upper]);
        assert!(fs::symlink_metadata(root.join("x")).unwrap().is_file());
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
    }

    #[test]
    fn hard_links_stay_inside_the_rootfs() {
        let err = apply_err(&[layer(&[Hardlink("stolen", "../../etc/passwd")])]);
        assert!(matches!(err, ImageError::UnsafePath { .. }), "{err}");
        let err = apply_err(&[layer(&[Hardlink("stolen", "/etc/passwd")])]);
        assert!(matches!(err, ImageError::UnsafePath { .. }), "{err}");
        // Through a symlink to /, the target is looked up in the rootfs, where it is absent.
        let err = apply_err(&[layer(&[
            Symlink("esc", "/"),
            Hardlink("stolen", "esc/etc/passwd"),
        ])]);
        assert!(matches!(err, ImageError::InvalidLayer { .. }), "{err}");
    }

    #[test]
    fn a_hard_link_shares_the_inode_of_a_lower_file() {
        let lower = layer(&[File("bin/busybox", b"elf")]);
        let upper = layer(&[Hardlink("bin/sh", "bin/busybox")]);
        let (_dir, root) = apply_all(&[lower, upper]);
        let a = fs::metadata(root.join("bin/busybox")).unwrap();
        let b = fs::metadata(root.join("bin/sh")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(disk_usage(&root).unwrap(), 3);
    }

    #[test]
    fn device_nodes_are_skipped_and_fifos_created() {
        let (_dir, root) = apply_all(&[layer(&[CharDevice("dev/null"), Fifo("run/fifo")])]);
        assert!(!root.join("dev/null").exists());
        use std::os::unix::fs::FileTypeExt;
        assert!(
            fs::symlink_metadata(root.join("run/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }

    #[test]
    fn mode_setuid_bits_and_ownership_are_kept() {
        let (_dir, root) = apply_all(&[layer(&[
            FileWith("bin/su", b"x", 0o4755, 0, 0),
            FileWith("home/u/f", b"x", 0o600, 1234, 4321),
        ])]);
        let su = fs::metadata(root.join("bin/su")).unwrap();
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
        let f = fs::metadata(root.join("home/u/f")).unwrap();
        assert_eq!(f.permissions().mode() & 0o7777, 0o600);
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!((f.uid(), f.gid()), (1234, 4321));
        }
        assert_eq!(f.mtime(), 1_700_000_000);
    }

    #[test]
    fn extended_attributes_from_pax_headers_are_set() {
        let (_dir, root) = apply_all(&[layer(&[FileXattr("bin/ping", "user.berth", b"cap")])]);
        let path = root.join("bin/ping");
        let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
        let mut buf = [0u8; 16];
        // SAFETY: valid C strings and a buffer of the given length.
        let n = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                c"user.berth".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOTSUP) {
            return; // the test directory's filesystem has no user xattrs
        }
        assert_eq!(&buf[..n as usize], b"cap");
    }

    #[test]
    fn a_file_used_as_a_directory_is_an_invalid_layer() {
        let err = apply_err(&[layer(&[File("a", b""), File("a/b", b"")])]);
        assert!(matches!(err, ImageError::InvalidLayer { .. }), "{err}");
    }

    #[test]
    fn a_symlink_loop_is_an_invalid_layer_not_a_hang() {
        let err = apply_err(&[layer(&[
            Symlink("a", "b"),
            Symlink("b", "a"),
            File("a/x", b""),
        ])]);
        assert!(matches!(err, ImageError::InvalidLayer { .. }), "{err}");
    }

    #[test]
    fn a_truncated_layer_is_a_read_error() {
        let mut bytes = layer(&[File("big", &[7u8; 4096])]);
        bytes.truncate(1024);
        let err = apply_err(&[bytes]);
        assert!(matches!(err, ImageError::LayerRead { .. }), "{err}");
    }
}
