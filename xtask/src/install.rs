//! `cargo xtask install`: release build, then the binary, the systemd unit, the default
//! config (kept when present) and the README under a prefix.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::util::{cargo, workspace_root};

pub fn install(prefix: &Path) -> Result<()> {
    cargo(&["build", "--release", "--package", "berth"])?;
    let root = workspace_root();
    let copy = |from: PathBuf, to: &str, mode: u32, keep: bool| -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let to = prefix.join(to);
        if keep && to.exists() {
            eprintln!("xtask: keeping {}", to.display());
            return Ok(());
        }
        fs::create_dir_all(to.parent().context("no parent")?)?;
        // Copy to a temp name and rename: replacing a running binary must not corrupt it.
        let tmp = to.with_extension("xtask-new");
        fs::copy(&from, &tmp).with_context(|| format!("copying {}", from.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        fs::rename(&tmp, &to)?;
        eprintln!("xtask: installed {}", to.display());
        Ok(())
    };
    copy(
        root.join("target/release/berth"),
        "usr/local/bin/berth",
        0o755,
        false,
    )?;
    copy(
        root.join("deploy/systemd/berth.service"),
        "etc/systemd/system/berth.service",
        0o644,
        false,
    )?;
    copy(
        root.join("deploy/berth.toml"),
        "etc/berth/berth.toml",
        0o644,
        true,
    )?;
    copy(
        root.join("README.md"),
        "usr/local/share/doc/berth/README.md",
        0o644,
        false,
    )?;
    eprintln!("xtask: now `systemctl daemon-reload && systemctl enable --now berth`");
    Ok(())
}
