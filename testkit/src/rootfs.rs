//! A busybox root filesystem for containers the tests start (berth's, Docker's, podman's):
//! Debian's busybox-static is one static binary, so a directory with it and its applet links is
//! a complete image, made offline in milliseconds.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// A busybox root filesystem (Debian's busybox-static) in `dir/rootfs`: /bin/busybox and a
/// symlink per applet, plus /etc/passwd and /etc/group. Returns its path.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: install Debian's busybox-static (`cargo xtask setup` does)"
    );
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    root
}
