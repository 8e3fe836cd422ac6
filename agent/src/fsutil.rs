//! File-system helpers every writer shares: one atomic, durable write (temp file in the same
//! directory, fsync, rename, fsync of the directory), the directory fsync itself (after a
//! rename), and one mount-table lookup (through
//! `procfs`, which undoes mountinfo's octal escapes), so the store, the image store and the
//! network code cannot drift apart in how they persist state or find mounts.

use std::{
    fs,
    io::Write as _,
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
/// The temp file is removed when a step fails.
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
        let mut f = fs::File::create(&tmp).map_err(fail("create", &tmp))?;
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
    procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map(|mounts| mounts.into_iter().any(|m| m.mount_point == path))
        .unwrap_or(false)
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
    fn the_root_and_proc_are_mounted_and_a_plain_directory_is_not() {
        assert!(is_mounted(Path::new("/")));
        assert!(is_mounted(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mounted(dir.path()));
    }
}
