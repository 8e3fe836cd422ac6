//! `cargo xtask`: set-up, run, test and benchmarks for berth, so a fresh machine needs exactly
//! two commands (see README.md): `cargo xtask run` and `cargo xtask test`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};

mod portmap_bench;

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
];
/// bpf-linker release that works with the nightly in this machine image (LLVM 22).
const BPF_LINKER_VERSION: &str = "0.10.4";
/// LLVM major version bpf-linker 0.10.4 loads from rustc's own libLLVM.
const NIGHTLY_LLVM_MAJOR: u32 = 22;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything builds and tests need (idempotent; seconds when all is present).
    Setup,
    /// Setup, build (release) and run the agent in the foreground; extra args go to
    /// `berth agent`, e.g. `cargo xtask run -- --config deploy/berth.toml`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, lint (fmt + clippy) and the whole test suite, as CI runs it.
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
    },
    /// Release build, then install the binary, the systemd unit, the default config (kept when
    /// present) and the README under `--prefix` (default /).
    Install {
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
    },
    /// Benchmarks; results are appended to docs/benchmarks.md.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// ns per getppid: nothing attached, a no-op raw tracepoint, berth's syscall probe.
    Syscalls {
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
        #[arg(long, default_value_t = 9)]
        rounds: u32,
    },
    /// CPU per UDP packet through port mappings (host, routed, berth's nft-map and iptables
    /// backends) at 100 to 20,000 published ports, three traffic modes, in namespaces of its
    /// own; the table and ratios go to docs/benchmarks.md.
    Portmap {
        #[command(flatten)]
        args: portmap_bench::Args,
        /// Quick functional run (every mechanism and mode at 10 and 300 ports); prints the
        /// table, appends nothing.
        #[arg(long)]
        selftest: bool,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// What the probes cost: the syscall probe per getppid (against nothing and a no-op
    /// program, counting and with latency), and the netfilter probe per packet (nft-map path
    /// with and without the probe pair), in one run.
    Probes {
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
        #[arg(long, default_value_t = 9)]
        rounds: u32,
    },
    /// Create-to-running latency: `berth run -d` against the bare runtime (create + start)
    /// on the same bundle, interleaved, median of each.
    Launch {
        #[arg(long, default_value_t = 25)]
        runs: u32,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Setup => setup(),
        Cmd::Run { args } => {
            setup()?;
            cargo(&["build", "--release", "--package", "berth"])?;
            let status = Command::new(root.join("target/release/berth"))
                .arg("agent")
                .args(&args)
                .status()
                .context("starting target/release/berth")?;
            ensure!(status.success(), "berth agent exited with {status}");
            Ok(())
        }
        Cmd::Test { no_lint } => {
            setup()?;
            if !no_lint {
                cargo(&["fmt", "--all", "--check"])?;
                // `berth/bench` so the bench helper binary (`berth-bench`) is linted too.
                cargo(&[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--features",
                    "berth/bench",
                    "--",
                    "-D",
                    "warnings",
                ])?;
            }
            cargo(&["test", "--workspace", "--no-fail-fast"])
        }
        Cmd::Install { prefix } => install(&prefix),
        Cmd::Bench { bench } => match bench {
            Bench::Syscalls { calls, rounds } => bench_syscalls(calls, rounds),
            Bench::Launch { runs } => bench_launch(runs),
            Bench::Probes { calls, rounds } => bench_probes(calls, rounds),
            Bench::Portmap {
                args,
                selftest,
                json,
            } => bench_portmap(args, selftest, json),
        },
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(env!("CARGO")).args(args))
}

/// Builds `berth-bench` (release, `bench` feature: the bench helpers the `berth` binary does
/// not carry) and returns its path.
fn bench_binary() -> Result<String> {
    cargo(&[
        "build",
        "--release",
        "--package",
        "berth",
        "--features",
        "bench",
        "--bin",
        "berth-bench",
    ])?;
    Ok(workspace_root()
        .join("target/release/berth-bench")
        .to_string_lossy()
        .into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// Idempotent set-up of a fresh machine of this project's kind (Debian 12, root).
fn setup() -> Result<()> {
    ensure!(
        is_root(),
        "cargo xtask setup installs packages and mounts bpffs/tracefs: run it as root"
    );
    apt_packages()?;
    nightly_toolchain()?;
    bpf_linker()?;
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

/// Runs the measurement in `berth-bench` (it holds berth's eBPF object) and appends a section
/// to docs/benchmarks.md with the command, the machine and the ratios.
fn bench_syscalls(calls: u64, rounds: u32) -> Result<()> {
    setup()?;
    let bench = bench_binary()?;
    let json = output(Command::new(&bench).args([
        "syscalls",
        "--calls",
        &calls.to_string(),
        "--rounds",
        &rounds.to_string(),
    ]))?;
    let r: serde_json::Value = serde_json::from_str(&json).context("parsing the bench report")?;
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let ns = &r["ns_per_call"];
    let over = &r["overhead_ns"];
    let tracked_call_ratio = f(&r["tracked_call_vs_noop_call"]);
    let goal = if tracked_call_ratio <= 1.5 {
        "met"
    } else {
        "NOT met"
    };
    let section = format!(
        "\n## syscalls ({date})\n\n\
         Command: `cargo xtask bench syscalls --calls {calls} --rounds {rounds}`  \n\
         Machine: {machine}  \n\
         Method: getppid(2) in a loop pinned to one CPU, {calls} calls per mode per round, modes \
         interleaved, {rounds} rounds, median per mode. The probe counted {counted} getppid \
         calls for the bench cgroup (proof it was attached where the bench ran).\n\n\
         | mode | ns per getppid | added by the program |\n|---|---|---|\n\
         | nothing attached | {n0:.1} | - |\n\
         | no-op raw tracepoint | {n1:.1} | {o1:.1} |\n\
         | berth probe, caller untracked (early exit) | {n2:.1} | {o2:.1} |\n\
         | berth probe, caller tracked (counting) | {n3:.1} | {o3:.1} |\n\n\
         Ratios (one run): tracked call / no-op call = **{tracked_call_ratio:.2}x** \
         (goal <= 1.5x: {goal}); added cost tracked / no-op = {ot:.2}x; added cost \
         untracked / no-op = {ou:.2}x.\n",
        date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?.trim(),
        machine = machine()?,
        counted = r["counted_getppid"],
        n0 = f(&ns["none"]),
        n1 = f(&ns["noop"]),
        n2 = f(&ns["probe_untracked"]),
        n3 = f(&ns["probe_tracked"]),
        o1 = f(&over["noop"]),
        o2 = f(&over["probe_untracked"]),
        o3 = f(&over["probe_tracked"]),
        ot = f(&r["tracked_overhead_vs_noop"]),
        ou = f(&r["untracked_overhead_vs_noop"]),
    );
    append_benchmark(&section)?;
    print!("{section}");
    if tracked_call_ratio > 1.5 {
        bail!("goal not met: tracked call / no-op call = {tracked_call_ratio:.2}x > 1.5x");
    }
    Ok(())
}

fn machine() -> Result<String> {
    let kernel = output(Command::new("uname").arg("-r"))?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    Ok(format!("{cpus} vCPU {model}, kernel {}", kernel.trim()))
}

fn append_benchmark(section: &str) -> Result<()> {
    let path = Path::new("docs/benchmarks.md");
    let mut text = fs::read_to_string(path).unwrap_or_else(|_| {
        "# berth benchmarks\n\nEvery number here was produced by the command written above it, \
         as ratios measured within one run (these machines are noisy). Newest last.\n"
            .to_owned()
    });
    text.push_str(section);
    fs::write(path, text).context("writing docs/benchmarks.md")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `berth run -d` vs `runc create` + `runc start` of the bundle berth generated, both until the
/// container's process runs; each container is removed before the next run.
fn bench_launch(runs: u32) -> Result<()> {
    use std::time::{Duration, Instant};
    setup()?;
    cargo(&["build", "--release", "--package", "berth"])?;
    let berth = workspace_root().join("target/release/berth");
    let tmp = std::env::temp_dir().join(format!("berth-bench-launch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(tmp.join("rootfs/bin"))?;
    fs::copy("/bin/busybox", tmp.join("rootfs/bin/busybox"))?;
    for a in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", tmp.join("rootfs/bin").join(a))?;
    }
    let root_name = format!("berth-bench-{}", std::process::id());
    let config = tmp.join("berth.toml");
    fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nsocket = \"{t}/berth.sock\"\n\
             [cgroup]\nroot = \"{root_name}\"\n\
             [runtime]\nstate_dir = \"{t}/state\"\nrun_dir = \"{t}/run\"\n\
             [network]\nbridge = \"bbl{pid}\"\nsubnet = \"10.199.{sub}.0/24\"\ntable = \"bb{pid}\"\n\
             [probes.syscalls]\nenabled = false\n",
            pid = std::process::id() % 100_000,
            sub = std::process::id() % 250,
            t = tmp.display()
        ),
    )?;
    let mut agent = Command::new(&berth)
        .args(["agent", "--config"])
        .arg(&config)
        .stderr(fs::File::create(tmp.join("agent.log"))?)
        .spawn()?;
    let sock = tmp.join("berth.sock");
    let cli = |args: &[&str]| -> Result<String> {
        output(Command::new(&berth).arg("--socket").arg(&sock).args(args))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while cli(&["ps"]).is_err() {
        ensure!(
            Instant::now() < deadline,
            "agent did not start; see {}/agent.log",
            tmp.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let result = (|| -> Result<(f64, f64, f64, f64, String)> {
        let rootfs = tmp.join("rootfs");
        let rootfs = rootfs.to_str().context("path")?;
        // One container to take berth's bundle from.
        let id = cli(&["run", "-d", rootfs, "sleep", "1000"])?
            .trim()
            .to_owned();
        let info: serde_json::Value = serde_json::from_str(&cli(&["info"])?)?;
        let runtime = info["runtime"]["path"]
            .as_str()
            .context("no runtime")?
            .to_owned();
        let runtime_name = info["runtime"]["name"]
            .as_str()
            .unwrap_or("runc")
            .to_owned();
        let bare = tmp.join("bare");
        fs::create_dir_all(&bare)?;
        let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(
            tmp.join("state/containers")
                .join(&id)
                .join("bundle/config.json"),
        )?)?;
        cli(&["rm", "-f", &id])?;
        spec["root"]["path"] = serde_json::json!(rootfs);
        // The runtime makes a fresh network namespace itself (berth's none mode prepares one).
        if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
            for n in ns.iter_mut() {
                if n["type"] == "network" {
                    n.as_object_mut().map(|o| o.remove("path"));
                }
            }
        }
        let bare_root = tmp.join("bare-root");
        let mut berth_ms = Vec::new();
        let mut bridge_ms = Vec::new();
        let mut bare_ms = Vec::new();
        for i in 0..runs {
            let start = Instant::now();
            let id = cli(&["run", "-d", "--network", "none", rootfs, "sleep", "1000"])?
                .trim()
                .to_owned();
            berth_ms.push(start.elapsed().as_secs_f64() * 1e3);
            cli(&["rm", "-f", &id])?;
            let start = Instant::now();
            let id = cli(&["run", "-d", rootfs, "sleep", "1000"])?
                .trim()
                .to_owned();
            bridge_ms.push(start.elapsed().as_secs_f64() * 1e3);
            cli(&["rm", "-f", &id])?;

            let bid = format!("bench-bare-{}-{i}", std::process::id());
            spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/{root_name}/{bid}"));
            fs::write(bare.join("config.json"), serde_json::to_vec(&spec)?)?;
            let rt = |args: &[&str]| {
                run(Command::new(&runtime)
                    .arg("--root")
                    .arg(&bare_root)
                    .args(args)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null()))
            };
            let start = Instant::now();
            rt(&["create", "--bundle", bare.to_str().context("path")?, &bid])?;
            rt(&["start", &bid])?;
            bare_ms.push(start.elapsed().as_secs_f64() * 1e3);
            rt(&["delete", "--force", &bid])?;
        }
        // A media server's port range: 20,000 UDP ports through nft-map.
        let mut wide_ms = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let id = cli(&[
                "run",
                "-d",
                "-p",
                "20000-39999:20000-39999/udp",
                rootfs,
                "sleep",
                "1000",
            ])?
            .trim()
            .to_owned();
            wide_ms.push(start.elapsed().as_secs_f64() * 1e3);
            cli(&["rm", "-f", &id])?;
        }
        Ok((
            median(&mut berth_ms),
            median(&mut bridge_ms),
            median(&mut bare_ms),
            median(&mut wide_ms),
            runtime_name,
        ))
    })();
    let _ = Command::new("kill").arg(agent.id().to_string()).status();
    let _ = agent.wait();
    let _ = fs::remove_dir_all(tmp.join("state"));
    let _ = fs::remove_dir_all(&tmp);
    let (berth_ms, bridge_ms, bare_ms, wide_ms, runtime) = result?;
    let wide_goal = if wide_ms < 1000.0 { "met" } else { "NOT met" };
    let ratio = berth_ms / bare_ms;
    let goal = if ratio <= 1.2 { "met" } else { "NOT met" };
    let section = format!(
        "\n## launch ({date})\n\n\
         Command: `cargo xtask bench launch --runs {runs}`  \n\
         Machine: {machine}  \n\
         Method: create-to-running wall time, median of {runs} runs each, interleaved. berth: \
         `berth run -d --network none ROOTFS sleep 1000` (CLI, API over the Unix socket, \
         overlay mount, network namespace, bundle, shim, {runtime} create + start) until it \
         returns with the process running. Bare: `{runtime} create` + `{runtime} start` of the \
         same config.json berth generated (plain rootfs directory, no overlay, the runtime \
         making the network namespace). Each container removed before the next run. The \
         bridge row (veth, address, route on berth's bridge) has no bare counterpart.\n\n\
         | path | median ms |\n|---|---|\n| berth run -d --network none | {berth_ms:.1} |\n\
         | bare {runtime} create + start | {bare_ms:.1} |\n\
         | berth run -d (bridge) | {bridge_ms:.1} |\n\
         | berth run -d -p 20000-39999:20000-39999/udp (median of 5) | {wide_ms:.1} |\n\n\
         A 20,000-port container running in under 1 s: {wide_goal} (Docker 20.10 here: \
         32-40 s for 1,000 ports).  \n\
         Ratio (one run): **{ratio:.2}x** (goal <= 1.2x: {goal}).\n",
        date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?.trim(),
        machine = machine()?,
    );
    append_benchmark(&section)?;
    print!("{section}");
    Ok(())
}

fn install(prefix: &Path) -> Result<()> {
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

/// berth's own backend, applied in the bench's HOST namespace by `berth-bench portmap
/// add|teardown` (berth's library code), so the rules measured are exactly the ones berth
/// installs.
struct BerthMapper {
    bench: String,
    backend: &'static str,
}

impl BerthMapper {
    fn args<'a>(&'a self, action: &'a str, m: &portmap_bench::Mapping<'_>) -> Vec<String> {
        let (net, len) = m.ctr_subnet;
        let mut a: Vec<String> = [
            "portmap",
            action,
            "--backend",
            self.backend,
            "--table",
            "berthbench",
            "--bridge",
            m.bridge,
            "--owner",
            "bench",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push("--subnet".into());
        a.push(format!("{net}/{len}"));
        if action == "add" {
            let first = m.ports.first().copied().unwrap_or(1);
            let last = m.ports.last().copied().unwrap_or(first);
            a.push("--ip".into());
            a.push(m.ctr_ip.to_string());
            a.push("-p".into());
            a.push(format!("{first}-{last}:{first}-{last}/udp"));
        }
        a
    }
}

impl portmap_bench::PortMapper for BerthMapper {
    fn install(&mut self, m: &portmap_bench::Mapping<'_>) -> Result<()> {
        let args = self.args("add", m);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        m.host.run(&self.bench, &args, None).map(|_| ())
    }

    fn remove(&mut self, m: &portmap_bench::Mapping<'_>) -> Result<()> {
        let args = self.args("teardown", m);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        m.host.run(&self.bench, &args, None).map(|_| ())
    }

    fn rules(&self) -> String {
        if self.backend == "nft-map" {
            "1 + map".into()
        } else {
            "3 per port".into()
        }
    }
}

fn bench_portmap(
    mut args: portmap_bench::Args,
    selftest: bool,
    json: Option<PathBuf>,
) -> Result<()> {
    setup()?;
    let bench = bench_binary()?;
    if selftest {
        args.mechanisms = portmap_bench::Args::selftest().mechanisms;
    }
    let mut mechanisms = Vec::new();
    for name in args.mechanisms.clone() {
        mechanisms.push(match name.as_str() {
            "nft-map" => portmap_bench::Mechanism::mapped(
                "nft-map",
                "berth nft-map: one `dnat ip to meta l4proto . th dport map` rule",
                Box::new(BerthMapper {
                    bench: bench.clone(),
                    backend: "nft-map",
                }),
            ),
            "iptables" => portmap_bench::Mechanism::mapped(
                "iptables",
                "berth iptables: Docker's rules (iptables-nft)",
                Box::new(BerthMapper {
                    bench: bench.clone(),
                    backend: "iptables",
                }),
            ),
            other => portmap_bench::Mechanism::builtin(other)?,
        });
    }
    args.reference = "nft-map".into();
    if selftest {
        let report = portmap_bench::selftest(mechanisms)?;
        println!("{}", report.to_markdown());
        return Ok(());
    }
    let report = portmap_bench::run_with(&args, mechanisms)?;
    if let Some(path) = &json {
        fs::write(path, serde_json::to_string_pretty(&report.to_json())?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let ports: Vec<String> = args.ports.iter().map(|p| p.to_string()).collect();
    let section = format!(
        "\n## portmap ({date})\n\n\
         Command: `cargo xtask bench portmap --ports {ports}`  \n\
         Machine: {machine}  \n\
         Method: as PLATFORM.md: client netns -> veth -> HOST netns (bridge, rules) -> veth -> \
         container netns; raw-socket UDP sender (160-byte payload, sendmmsg) pinned to CPU 1 in the \
         client, multi-port epoll sink pinned to CPU 0; cost = (sender run time + ksoftirqd run \
         time) / packets; traffic aimed at the last published port; conntrack flushed between \
         cases. nft-map and iptables rows are berth's own backends (`berth-bench portmap add`, the \
         code the agent runs). CPU µs per packet.\n\n{table}\n\
         Goal: nft-map at 20,000 ports within 1.1x of nft-map at 100 ports in every mode: **{goal}**.\n",
        date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?.trim(),
        machine = machine()?,
        ports = ports.join(","),
        table = report.to_markdown(),
        goal = match report.goal_met() {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        },
    );
    append_benchmark(&section)?;
    print!("{section}");
    Ok(())
}

/// berth's nft-map backend with berth's netfilter probe pair attached in HOST for the whole
/// measurement (`berth-bench netfilter-hold`, stopped by closing its stdin).
struct ProbedMapper {
    inner: BerthMapper,
    hold: Option<std::process::Child>,
}

impl portmap_bench::PortMapper for ProbedMapper {
    fn install(&mut self, m: &portmap_bench::Mapping<'_>) -> Result<()> {
        use std::io::BufRead as _;
        self.inner.install(m)?;
        let mut child = m
            .host
            .exec(&self.inner.bench)
            .arg("netfilter-hold")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting berth-bench netfilter-hold")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        ensure!(
            line.trim() == "ready",
            "berth-bench netfilter-hold did not attach: {line:?}"
        );
        self.hold = Some(child);
        Ok(())
    }

    fn remove(&mut self, m: &portmap_bench::Mapping<'_>) -> Result<()> {
        if let Some(mut c) = self.hold.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
        self.inner.remove(m)
    }

    fn rules(&self) -> String {
        "1 + map, + probe".into()
    }
}

fn bench_probes(calls: u64, rounds: u32) -> Result<()> {
    setup()?;
    let bench = bench_binary()?;
    // Syscalls: the same measurement as `bench syscalls`.
    let json = output(Command::new(&bench).args([
        "syscalls",
        "--calls",
        &calls.to_string(),
        "--rounds",
        &rounds.to_string(),
    ]))?;
    let r: serde_json::Value = serde_json::from_str(&json).context("parsing the bench report")?;
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    // Netfilter: nft-map at 100 ports, with and without the probe pair, three modes.
    let mut args = portmap_bench::Args {
        ports: vec![100],
        reference: "nft-map".into(),
        ..Default::default()
    };
    let mechanisms = vec![
        portmap_bench::Mechanism::mapped(
            "nft-map",
            "berth nft-map",
            Box::new(BerthMapper {
                bench: bench.clone(),
                backend: "nft-map",
            }),
        ),
        portmap_bench::Mechanism::mapped(
            "nft-map+probe",
            "berth nft-map, netfilter probe attached",
            Box::new(ProbedMapper {
                inner: BerthMapper {
                    bench: bench.clone(),
                    backend: "nft-map",
                },
                hold: None,
            }),
        ),
    ];
    args.mechanisms = mechanisms.iter().map(|m| m.name.clone()).collect();
    let report = portmap_bench::run_with(&args, mechanisms)?;
    let mut rows = String::new();
    let mut worst: f64 = 0.0;
    for mode in report.modes.clone() {
        let without = report.us("nft-map", 100, mode).unwrap_or(f64::NAN);
        let with = report.us("nft-map+probe", 100, mode).unwrap_or(f64::NAN);
        worst = worst.max(with - without);
        rows.push_str(&format!(
            "| {} | {without:.2} | {with:.2} | {:+.2} |\n",
            mode.name(),
            with - without
        ));
    }
    let tracked_ratio = f(&r["tracked_call_vs_noop_call"]);
    let section = format!(
        "\n## probes ({date})\n\n\
         Command: `cargo xtask bench probes --calls {calls} --rounds {rounds}`  \n\
         Machine: {machine}\n\n\
         Syscall probe, ns per getppid (median of {rounds} interleaved rounds of {calls} calls, \
         pinned): nothing {n0:.1}, no-op raw tracepoint {n1:.1}, berth untracked {n2:.1}, berth \
         tracked {n3:.1}. Tracked call / no-op call = **{tracked_ratio:.2}x** (goal <= 1.5x: \
         {g1}); added cost tracked / no-op = {ot:.2}x.\n\n\
         Netfilter probe, CPU µs per UDP packet on the nft-map path (100 published ports, the \
         `bench portmap` method), without and with berth's first/last program pair on every \
         hook:\n\n| mode | without | with | added |\n|---|---|---|---|\n{rows}\n\
         Worst added cost: **{worst:.2} µs per packet** (goal <= 0.3 µs: {g2}).\n",
        date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?.trim(),
        machine = machine()?,
        n0 = f(&r["ns_per_call"]["none"]),
        n1 = f(&r["ns_per_call"]["noop"]),
        n2 = f(&r["ns_per_call"]["probe_untracked"]),
        n3 = f(&r["ns_per_call"]["probe_tracked"]),
        ot = f(&r["tracked_overhead_vs_noop"]),
        g1 = if tracked_ratio <= 1.5 {
            "met"
        } else {
            "NOT met"
        },
        g2 = if worst <= 0.3 { "met" } else { "NOT met" },
    );
    append_benchmark(&section)?;
    print!("{section}");
    Ok(())
}
