//! Observe mode with the host's paths mounted elsewhere, as the agent runs in a DaemonSet's
//! container (deploy/kubernetes/): the agent starts in a private mount namespace (`unshare -m`)
//! where this host's procfs and cgroup2 mount are bind-mounted at other paths and the originals
//! are hidden (a tmpfs over the cgroup2 mount and over /proc/sys/net/netfilter), with
//! `runtime.launch = false` and `[discovery]` pointing at the binds. So what it shows can only
//! have come through the configured paths: a Docker-style cgroup made by the test is listed,
//! and the host's conntrack count is read. `berth run` and the other mutating verbs are refused
//! with the observe-mode message, and `/api/v1/system` says why.

mod common;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{Agent, Cgroup, cgroup2_mount, sample, wait_for};

/// A Docker-style id no other test or run uses: 64 lowercase hex characters.
fn unique_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("0b5e7ede{:08x}{nanos:048x}", std::process::id())
}

/// A sleeping process moved into `cgroup` (killed and reaped on drop).
struct Parked(Child);

impl Parked {
    fn start(cgroup: &Cgroup) -> Self {
        let child = Command::new("sleep").arg("300").spawn().unwrap();
        let parked = Parked(child);
        fs::write(cgroup.dir.join("cgroup.procs"), parked.0.id().to_string()).unwrap();
        parked
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A script that starts the agent (`exe`, with the arguments it is given) in a private mount
/// namespace where /proc is also at `host_proc` and the cgroup2 mount also at `host_cgroup`,
/// and both originals' contents that matter are hidden. The mounts go with the namespace when
/// the agent exits.
fn wrapper(dir: &Path, exe: &Path, host_proc: &Path, host_cgroup: &Path) -> PathBuf {
    let cgroup = cgroup2_mount();
    let script = dir.join("observe-agent.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             exec unshare -m --propagation private /bin/sh -ec '\n\
               mount --bind /proc {proc}\n\
               mount --bind {cg} {hcg}\n\
               mount -t tmpfs berth-hidden {cg}\n\
               mount -t tmpfs berth-hidden /proc/sys/net/netfilter\n\
               exec {exe} \"$@\"' observe-agent \"$@\"\n",
            proc = host_proc.display(),
            cg = cgroup.display(),
            hcg = host_cgroup.display(),
            exe = exe.display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn an_observing_agent_with_the_hosts_paths_mounted_elsewhere_lists_foreign_cgroups_and_refuses_run()
{
    assert!(
        Path::new("/proc/sys/net/netfilter/nf_conntrack_count").exists(),
        "nf_conntrack is not loaded: this test reads the host's conntrack count through \
         discovery.proc (`modprobe nf_conntrack`; the netfilter tests load it too)"
    );
    let hosts = tempfile::tempdir().unwrap();
    let host_proc = hosts.path().join("host/proc");
    let host_cgroup = hosts.path().join("host/sys/fs/cgroup");
    fs::create_dir_all(&host_proc).unwrap();
    fs::create_dir_all(&host_cgroup).unwrap();

    // The foreign container, made in the host's view before the agent starts.
    let parent = cgroup2_mount().join("docker");
    let _made_parent = (!parent.exists()).then(|| Cgroup::create(&cgroup2_mount(), "docker"));
    let id = unique_id();
    let docker = Cgroup::create(&parent, &id);
    let parked = Parked::start(&docker);

    let mut agent = Agent::prepare_full(
        Path::new(env!("CARGO_BIN_EXE_berth")),
        "",
        &format!(
            "[probes.syscalls]\nenabled = false\n[probes.network]\nenabled = false\n\
             [probes.netfilter]\nenabled = false\n\
             [discovery]\nproc = \"{}\"\ncgroup_mount = \"{}\"\n",
            host_proc.display(),
            host_cgroup.display()
        ),
    );
    let config = fs::read_to_string(&agent.config).unwrap();
    fs::write(
        &agent.config,
        config.replacen("[runtime]\n", "[runtime]\nlaunch = false\n", 1),
    )
    .unwrap();
    let (code, out, err) = run(&[
        "agent",
        "--check-config",
        "--config",
        agent.config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "--check-config: {out}{err}");
    agent.exe = wrapper(
        agent.dir.path(),
        Path::new(env!("CARGO_BIN_EXE_berth")),
        &host_proc,
        &host_cgroup,
    );
    agent.spawn();

    let system = agent.system();
    assert_eq!(system["mode"], "observe", "{system}");
    assert_eq!(system["mode_reason"], "runtime.launch = false", "{system}");
    assert!(
        system["runtime"].is_null(),
        "no OCI runtime looked for: {system}"
    );
    assert_eq!(
        system["cgroup"]["unified_mount"],
        host_cgroup.to_str().unwrap(),
        "{system}"
    );
    assert_eq!(system["discovery"]["proc"], host_proc.to_str().unwrap());

    // Listed through the bind (the original mount shows an empty tmpfs to the agent).
    let c = wait_for(
        Duration::from_secs(5),
        "the docker cgroup to be listed through discovery.cgroup_mount",
        || {
            let (status, body) = agent.get("/api/v1/containers?all=true");
            assert_eq!(status, 200, "{body}");
            let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
            list.into_iter().find(|c| c["id"] == id)
        },
    );
    assert_eq!(c["engine"], "docker", "{c}");
    assert_eq!(c["status"], "running", "{c}");
    assert_eq!(c["cgroup"], format!("/docker/{id}"));
    // The conntrack count came through discovery.proc: /proc/sys/net/netfilter is a tmpfs in
    // the agent's namespace.
    let entries = sample(&agent.metrics(), "berth_conntrack_entries", &[]);
    assert!(
        entries.is_some(),
        "no berth_conntrack_entries: procfs was not read at discovery.proc\n{}",
        agent.log()
    );

    // Mutating verbs: refused with the observe-mode message, nothing changed.
    let refusal = "this agent runs in observe mode (runtime.launch = false): it lists and \
                   measures the host's containers but runs, changes and removes none";
    for verb in [
        vec!["run", "-d", "--name", "web", "busybox:latest", "true"],
        vec!["stop", &id[..12]],
        vec!["rm", "-f", &id],
        vec!["update", "--memory", "64m", &id],
    ] {
        let (code, out, err) = agent.cli(&verb);
        assert_ne!(code, 0, "berth {verb:?} succeeded: {out}");
        assert!(err.contains(refusal), "berth {verb:?}: {err}");
    }
    assert!(
        fs::read_to_string(docker.dir.join("cgroup.procs"))
            .unwrap()
            .contains(&parked.0.id().to_string()),
        "berth moved or stopped the process"
    );
    // Reads still work over the socket.
    let ps = agent.ok(&["ps"]);
    assert!(ps.contains(&id[..12]), "{ps}");

    assert!(agent.stop().success(), "{}", agent.log());
    drop(parked);
}

/// Runs the berth binary: (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
