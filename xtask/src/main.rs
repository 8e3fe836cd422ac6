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
    /// Port-mapping cost bench, development entry (temporary; `bench portmap` replaces it).
    /// Prints markdown; nothing is appended to docs/benchmarks.md.
    BenchPortmapDev {
        #[command(flatten)]
        args: portmap_bench::Args,
        /// Quick functional run (< 20 s): every mechanism and mode at 10 and 300 ports.
        #[arg(long)]
        selftest: bool,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
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
                cargo(&[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])?;
            }
            cargo(&["test", "--workspace", "--no-fail-fast"])
        }
        Cmd::BenchPortmapDev {
            args,
            selftest,
            json,
        } => portmap_bench::dev_main(&args, selftest, json.as_deref()),
        Cmd::Bench { bench } => match bench {
            Bench::Syscalls { calls, rounds } => bench_syscalls(calls, rounds),
            Bench::Launch { runs } => bench_launch(runs),
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

/// Runs the measurement in the agent binary (it holds the eBPF object) and appends a section
/// to docs/benchmarks.md with the command, the machine and the ratios.
fn bench_syscalls(calls: u64, rounds: u32) -> Result<()> {
    setup()?;
    cargo(&["build", "--release", "--package", "berth"])?;
    let json = output(Command::new("target/release/berth").args([
        "bench-syscalls",
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
             [probes.syscalls]\nenabled = false\n",
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
    let result = (|| -> Result<(f64, f64, String)> {
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
        let bare_root = tmp.join("bare-root");
        let mut berth_ms = Vec::new();
        let mut bare_ms = Vec::new();
        for i in 0..runs {
            let start = Instant::now();
            let id = cli(&["run", "-d", rootfs, "sleep", "1000"])?
                .trim()
                .to_owned();
            berth_ms.push(start.elapsed().as_secs_f64() * 1e3);
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
        Ok((median(&mut berth_ms), median(&mut bare_ms), runtime_name))
    })();
    let _ = Command::new("kill").arg(agent.id().to_string()).status();
    let _ = agent.wait();
    let _ = fs::remove_dir_all(tmp.join("state"));
    let _ = fs::remove_dir_all(&tmp);
    let (berth_ms, bare_ms, runtime) = result?;
    let ratio = berth_ms / bare_ms;
    let goal = if ratio <= 1.2 { "met" } else { "NOT met" };
    let section = format!(
        "\n## launch ({date})\n\n\
         Command: `cargo xtask bench launch --runs {runs}`  \n\
         Machine: {machine}  \n\
         Method: create-to-running wall time, median of {runs} runs each, interleaved. berth: \
         `berth run -d ROOTFS sleep 1000` (CLI, API over the Unix socket, overlay mount, bundle, \
         shim, {runtime} create + start) until it returns with the process running. Bare: \
         `{runtime} create` + `{runtime} start` of the same config.json berth generated (plain \
         rootfs directory, no overlay). Each container removed before the next run.\n\n\
         | path | median ms |\n|---|---|\n| berth run -d | {berth_ms:.1} |\n| bare {runtime} create + start | {bare_ms:.1} |\n\n\
         Ratio (one run): **{ratio:.2}x** (goal <= 1.2x: {goal}).\n",
        date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?.trim(),
        machine = machine()?,
    );
    append_benchmark(&section)?;
    print!("{section}");
    Ok(())
}
