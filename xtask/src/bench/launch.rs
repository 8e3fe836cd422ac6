//! `cargo xtask bench launch`: create-to-running latency of `berth run -d` (CLI, API, overlay,
//! network namespace, bundle, shim, runtime) against the bare OCI runtime's create + start of
//! the same config.json, interleaved; plus a 20,000-port container. Goal: within 1.2x.

use std::{fs, process::Command};

use anyhow::{Context as _, Result, ensure};

use crate::util::{append_benchmark, cargo, machine, median, output, run, utc_now, workspace_root};

/// `berth run -d` vs `runc create` + `runc start` of the bundle berth generated, both until the
/// container's process runs; each container is removed before the next run.
pub fn bench_launch(runs: u32) -> Result<()> {
    use std::time::{Duration, Instant};
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
        date = utc_now()?,
        machine = machine(),
    );
    append_benchmark(&section)?;
    print!("{section}");
    Ok(())
}
