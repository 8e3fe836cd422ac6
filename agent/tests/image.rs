//! Image archives built by other tools than berth (sh, tar, gzip, sha256sum), in both formats,
//! import into a rootfs with whiteouts applied and a runnable busybox.
//!
//! Needs /bin/busybox (Debian's busybox-static) and root (layer ownership is kept).

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use berth::image::{Image, ImageStore};

/// Builds, from the same two layer tars and config, `oci.tar` (OCI image layout) and
/// `docker.tar.gz` (`docker save` format, gzip-compressed as a whole), and writes the expected
/// image id to `id`. Layer 2 deletes `etc/doomed` with a whiteout and makes `data` opaque.
const BUILD: &str = include_str!("common/build_image.sh");

struct Built {
    dir: tempfile::TempDir,
    id: String,
}

impl Built {
    fn oci(&self) -> PathBuf {
        self.dir.path().join("oci.tar")
    }

    fn docker(&self) -> PathBuf {
        self.dir.path().join("docker.tar.gz")
    }
}

fn build() -> Built {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(BUILD)
        .arg("build.sh")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = fs::read_to_string(dir.path().join("id"))
        .unwrap()
        .trim()
        .to_string();
    Built { dir, id }
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    (dir, store)
}

fn whiteouts_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".wh.")
        {
            found.push(path.clone());
        }
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            found.extend(whiteouts_under(&path));
        }
    }
    found
}

fn assert_image(image: &Image, id: &str) {
    assert_eq!(image.id, id);
    assert_eq!(image.config.entrypoint, ["/bin/busybox"]);
    assert_eq!(image.config.cmd, ["sh"]);
    assert_eq!(image.config.env, ["PATH=/bin"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/home/user"));
    assert_eq!(image.config.user.as_deref(), Some("1000"));

    let root = &image.rootfs;
    let busybox = root.join("bin/busybox");
    let meta = fs::metadata(&busybox).unwrap();
    assert_eq!(meta.len(), fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(meta.permissions().mode() & 0o111, 0o111);
    let out = Command::new(&busybox)
        .args(["echo", "hello from the image"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the image\n"
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );

    assert!(root.join("etc/passwd").is_file());
    assert!(root.join("etc/motd").is_file());
    assert!(!root.join("etc/doomed").exists(), "whiteout not applied");
    assert!(
        !root.join("data/old").exists(),
        "opaque dir kept old content"
    );
    assert!(
        !root.join("data/sub").exists(),
        "opaque dir kept old content"
    );
    assert_eq!(fs::read_to_string(root.join("data/new")).unwrap(), "new\n");
    assert!(
        whiteouts_under(root).is_empty(),
        "{:?}",
        whiteouts_under(root)
    );

    let home = fs::metadata(root.join("home/user")).unwrap();
    assert_eq!(home.permissions().mode() & 0o7777, 0o700);
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    assert_eq!(
        fs::metadata(root.join("home/user/file")).unwrap().uid(),
        1000
    );
    assert!(image.size_bytes >= meta.len());
}

#[test]
fn an_oci_layout_built_with_shell_tools_imports_with_whiteouts_applied() {
    let built = build();
    let (_dir, store) = store();
    let image = store.import(&built.oci(), None).unwrap();
    assert_eq!(image.names, ["shell/oci:v1"]);
    assert_image(&image, &built.id);
    assert_eq!(store.get("shell/oci:v1").unwrap(), image);
}

#[test]
fn a_gzipped_docker_save_archive_built_with_shell_tools_imports_with_whiteouts_applied() {
    let built = build();
    let (_dir, store) = store();
    let image = store.import(&built.docker(), Some("extra:tag")).unwrap();
    assert_eq!(image.names, ["extra:tag", "shell/docker:v1"]);
    assert_image(&image, &built.id);
}

#[test]
fn both_formats_of_one_image_share_one_rootfs_and_remove_cleans_up() {
    let built = build();
    let (_dir, store) = store();
    let first = store.import(&built.oci(), None).unwrap();
    let second = store.import(&built.docker(), None).unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(first.rootfs, second.rootfs);
    assert_eq!(second.names, ["shell/docker:v1", "shell/oci:v1"]);
    assert_eq!(store.list().unwrap().len(), 1);

    let removed = store.remove(&built.id[..12]).unwrap();
    assert_eq!(removed.names, second.names);
    assert!(!removed.rootfs.exists());
    assert!(store.list().unwrap().is_empty());
}
