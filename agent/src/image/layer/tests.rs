//! Layer application against hostile and ordinary tars: ordering, whiteouts, path confinement
//! (symlinks, hard links, `..`), metadata and malformed input.

use std::{
    ffi::CString,
    fs, io,
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use super::{apply, disk_usage};
use crate::image::testutil::{Entry::*, layer};
use crate::image::{ImageError, LayerProblem};

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
    assert!(
        matches!(
            err,
            ImageError::InvalidLayer {
                problem: LayerProblem::HardLinkTargetMissing { .. },
                ..
            }
        ),
        "{err}"
    );
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
    assert!(
        matches!(
            err,
            ImageError::InvalidLayer {
                problem: LayerProblem::ParentNotDirectory { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_symlink_loop_is_an_invalid_layer_not_a_hang() {
    let err = apply_err(&[layer(&[
        Symlink("a", "b"),
        Symlink("b", "a"),
        File("a/x", b""),
    ])]);
    assert!(
        matches!(
            err,
            ImageError::InvalidLayer {
                problem: LayerProblem::TooManySymlinks,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_truncated_layer_is_a_read_error() {
    let mut bytes = layer(&[File("big", &[7u8; 4096])]);
    bytes.truncate(1024);
    let err = apply_err(&[bytes]);
    assert!(matches!(err, ImageError::LayerRead { .. }), "{err}");
}
