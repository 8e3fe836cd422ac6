//! File-system helpers every writer shares: one atomic, durable write (temp file in the same
//! directory, fsync, rename, fsync of the directory), the directory fsync itself (after a
//! rename), and one mount-table lookup (mountinfo read through `procfs`, with the kernel's
//! octal escapes undone here: procfs 0.18 leaves them in), so the store, the image store and
//! the network code cannot drift apart in how they persist state or find mounts. And one
//! read of a kept-open kernel file (cgroupfs, procfs) from its start: [`pread_all`].

use std::{
    fs,
    io::Write as _,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

/// A failed file-system step, naming the operation and the path.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FsError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn fail<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |source| FsError {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content, never a
/// mix: write to `.NAME.tmp-PID` beside it, fsync, rename over `path`, fsync the directory.
/// The temp file is removed when a step fails. The file is created 0600: what berth persists
/// (records, bundles with the environment, runtime state) is for root only.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail("create", &tmp))?;
        f.write_all(bytes).map_err(fail("write", &tmp))?;
        f.sync_all().map_err(fail("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(fail("rename to", path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// Creates `dir` (and missing parents) and makes it 0700, also when it already existed with a
/// wider mode (a store written by an older agent): state, bundles, logs and writable layers
/// below it are then out of reach of every user but root.
pub fn private_dir(dir: &Path) -> Result<(), FsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fail("create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(fail("chmod", dir))
}

/// Makes the entries of `dir` durable (after a rename into or out of it).
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("fsync", dir))
}

/// Whether something is mounted exactly at `path`, from /proc/self/mountinfo. An unreadable
/// mount table counts as "not mounted" (callers use this to skip an unmount or a mount that
/// is already there).
pub fn is_mounted(path: &Path) -> bool {
    let want = path.as_os_str().as_bytes();
    procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map(|mounts| {
            mounts
                .into_iter()
                .any(|m| unescape_mount_path(m.mount_point.as_os_str().as_bytes()) == want)
        })
        .unwrap_or(false)
}

/// Undoes mountinfo's escapes: the kernel writes space, tab, newline and backslash in paths as
/// `\ooo` octal (`mangle_path` in fs/seq_file.c, called by `show_mountinfo` in
/// fs/proc_namespace.c). A backslash not followed by three octal digits is kept as it is.
fn unescape_mount_path(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let octal = raw
            .get(i + 1..i + 4)
            .filter(|d| raw[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    out
}

/// Free space left after a read that tells it reached the end: more than any one line of a
/// kernel stat file, so a short read is the end and not a record that did not fit.
const SLACK: usize = 4096;

/// Reads `f` from offset 0 into `buf`, returning the length read: one `pread` when the
/// content fits with [`SLACK`] to spare, as every cgroup or procfs stat file does in the first
/// 16 KiB. `buf` only grows (zeroed once, not per read); the content is its first bytes. A
/// kernel file kept open and read this way costs one syscall per read instead of an open, a
/// read and a close (kernfs and procfs opens are tens of microseconds on a loaded VM).
pub fn pread_all(f: &fs::File, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    if buf.len() < 4 * SLACK {
        buf.resize(4 * SLACK, 0);
    }
    let mut len = 0;
    loop {
        let n = f.read_at(&mut buf[len..], len as u64)?;
        len += n;
        if n == 0 || buf.len() - len >= SLACK {
            return Ok(len);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_failed_atomic_write_names_the_path_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir/state.json");
        let e = write_atomic(&missing, b"x").unwrap_err();
        assert_eq!(e.op, "create");
        assert!(e.to_string().contains("no-such-dir"), "{e}");
        assert!(!dir.path().join("no-such-dir").exists());
    }

    #[test]
    fn atomic_writes_and_private_dirs_are_for_the_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        fs::create_dir_all(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&sub).unwrap();
        private_dir(&dir.path().join("c")).unwrap();
        for d in [sub.clone(), dir.path().join("c")] {
            assert_eq!(
                fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        let f = sub.join("x.json");
        write_atomic(&f, b"{}").unwrap();
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone_and_other_backslashes_kept() {
        assert_eq!(unescape_mount_path(br"/a\040b"), b"/a b");
        assert_eq!(unescape_mount_path(br"/t\011n\012b\134s"), b"/t\tn\nb\\s");
        assert_eq!(unescape_mount_path(br"/x\09y\"), br"/x\09y\");
    }

    #[test]
    fn the_root_and_proc_are_mounted_and_a_plain_directory_is_not() {
        assert!(is_mounted(Path::new("/")));
        assert!(is_mounted(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mounted(dir.path()));
    }
}
