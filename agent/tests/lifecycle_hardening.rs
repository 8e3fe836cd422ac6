//! The container lifecycle where it used to break (issue 11): `--rm` as Docker's (also when the
//! container exits while the agent is down), an upgrade that replaces the berth binary under a
//! running agent, a shim killed under a running container, a store no other user can read, and
//! a client's bad import path answered as its mistake.

mod common;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{Agent, busybox_rootfs, unique, wait_for};

fn rootfs(agent: &Agent) -> String {
    busybox_rootfs(agent.dir.path()).display().to_string()
}

fn store_dir(agent: &Agent) -> PathBuf {
    agent.dir.path().join("state/containers")
}

/// Whether `ps -a` still lists the container or the store still holds its directory.
fn gone(agent: &Agent, name: &str, id: &str) -> bool {
    !agent.ok(&["ps", "-a"]).contains(name) && !store_dir(agent).join(id).exists()
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn kill9(pid: u64) {
    // SAFETY: a plain kill(2) of a shim this test's agent started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    wait_for(Duration::from_secs(5), "the shim to die", || {
        (!pid_alive(pid)).then_some(())
    });
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn run_rm_removes_the_container_when_it_exits_also_while_the_agent_is_down() {
    let mut agent = Agent::start();
    let rootfs = rootfs(&agent);

    // Attached: the exit code comes back and nothing is left.
    let name = unique("rm-attached");
    let (code, out, err) = agent.cli(&[
        "run",
        "--rm",
        "--name",
        &name,
        &rootfs,
        "sh",
        "-c",
        "echo bye; exit 3",
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("bye"), "{out}");
    assert!(!agent.ok(&["ps", "-a"]).contains(&name));
    assert_eq!(fs::read_dir(store_dir(&agent)).unwrap().count(), 0);

    // Detached: the agent removes it when it exits, overlay and store directory included.
    let name = unique("rm-detached");
    let id = agent
        .ok(&["run", "-d", "--rm", "--name", &name, &rootfs, "sleep", "1"])
        .trim()
        .to_owned();
    let rootfs_mount = store_dir(&agent).join(&id).join("bundle/rootfs");
    wait_for(Duration::from_secs(15), "the --rm container to go", || {
        gone(&agent, &name, &id).then_some(())
    });
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*rootfs_mount.to_string_lossy()),
        "overlay left mounted"
    );

    // Exits while the agent is down: removed when the agent comes back.
    let name = unique("rm-down");
    let id = agent
        .ok(&["run", "-d", "--rm", "--name", &name, &rootfs, "sleep", "2"])
        .trim()
        .to_owned();
    agent.wait_status(&name, "running", 10);
    agent.kill9();
    std::thread::sleep(Duration::from_secs(4));
    agent.spawn();
    assert!(
        gone(&agent, &name, &id),
        "{name} stayed after the agent restarted:\n{}",
        agent.ok(&["ps", "-a"])
    );

    // --rm with a restart policy is refused, as Docker does.
    let (code, _, err) = agent.cli(&["run", "-d", "--rm", "--restart", "always", &rootfs, "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("--rm and --restart"), "{err}");
}

#[test]
fn a_replaced_binary_still_starts_containers_and_old_shims_stay_adopted() {
    let bin = tempfile::tempdir().unwrap();
    let exe = bin.path().join("berth");
    fs::copy(env!("CARGO_BIN_EXE_berth"), &exe).unwrap();
    let mut agent = Agent::start_from_with(&exe, "");
    let rootfs = rootfs(&agent);
    let old = unique("old-shim");
    agent.ok(&["run", "-d", "--name", &old, &rootfs, "sleep", "300"]);
    let before = agent.wait_status(&old, "running", 10);

    // The upgrade: a new binary renamed over the old one, as package managers do (`cp` over
    // a running binary fails with ETXTBSY). The agent's /proc/self/exe is now "(deleted)".
    let staged = bin.path().join("berth.new");
    fs::copy(env!("CARGO_BIN_EXE_berth"), &staged).unwrap();
    fs::rename(&staged, &exe).unwrap();

    let new = unique("after-upgrade");
    let (code, out, err) = agent.cli(&["run", "-d", "--name", &new, &rootfs, "sleep", "300"]);
    assert_eq!(
        code,
        0,
        "run after the binary was replaced: {err}{out}\n{}",
        agent.log()
    );
    agent.wait_status(&new, "running", 10);

    // The agent restarts from the new binary; both shims are adopted, unchanged.
    agent.stop();
    agent.spawn();
    let after = agent.wait_status(&old, "running", 10);
    assert_eq!(
        after["state"]["shim_pid"], before["state"]["shim_pid"],
        "{after}"
    );
    assert!(after["state"]["error"].is_null(), "{after}");
    agent.wait_status(&new, "running", 10);
    agent.ok(&["stop", "-t", "1", &old]);
    assert_eq!(
        agent.wait_status(&old, "exited", 15)["state"]["exit_code"],
        137
    );
}

#[test]
fn a_killed_shim_is_reported_and_stop_acts_on_the_container() {
    let agent = Agent::start();
    let rootfs = rootfs(&agent);
    let name = unique("lost-shim");
    agent.ok(&["run", "-d", "--name", &name, &rootfs, "sleep", "300"]);
    let v = agent.wait_status(&name, "running", 10);
    let init = v["state"]["pid"].as_u64().unwrap();
    kill9(v["state"]["shim_pid"].as_u64().unwrap());

    // Still running, per runc, and the status says the shim is lost.
    let v = wait_for(
        Duration::from_secs(5),
        "the lost shim in the status",
        || {
            let v = agent.inspect(&name);
            v["state"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("shim lost"))
                .then_some(v)
        },
    );
    assert_eq!(v["status"], "running", "{v}");
    let error = v["state"]["error"].as_str().unwrap_or("");
    assert!(
        !error.contains("  "),
        "the message is one sentence: {error:?}"
    );
    assert_eq!(v["state"]["pid"].as_u64(), Some(init), "{v}");
    assert!(pid_alive(init));
    assert!(agent.ok(&["ps"]).contains(&name));

    // stop really stops it (sleep as PID 1 ignores SIGTERM: SIGKILL after -t).
    agent.ok(&["stop", "-t", "1", &name]);
    assert!(
        !pid_alive(init),
        "stop returned but the container's init runs on"
    );
    let v = agent.wait_status(&name, "exited", 5);
    assert!(v["state"]["exit_code"].is_null(), "{v}");
    assert!(
        v["state"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("shim lost"),
        "{v}"
    );
    // kill now fails clearly; rm cleans up.
    let (code, _, err) = agent.cli(&["kill", &name]);
    assert_ne!(code, 0);
    assert!(err.contains("not running"), "{err}");
    agent.ok(&["rm", &name]);
}

#[test]
fn a_killed_shim_is_replaced_by_a_new_watcher_on_agent_restart() {
    let mut agent = Agent::start();
    let rootfs = rootfs(&agent);
    let name = unique("readopt");
    agent.ok(&["run", "-d", "--name", &name, &rootfs, "sleep", "300"]);
    let v = agent.wait_status(&name, "running", 10);
    let init = v["state"]["pid"].as_u64().unwrap();
    let old_shim = v["state"]["shim_pid"].as_u64().unwrap();
    kill9(old_shim);
    agent.stop();
    agent.spawn();

    let v = agent.wait_status(&name, "running", 10);
    let new_shim = v["state"]["shim_pid"].as_u64().unwrap();
    assert_ne!(new_shim, old_shim, "{v}");
    assert!(pid_alive(new_shim));
    assert!(v["state"]["error"].is_null(), "{v}");
    assert_eq!(v["state"]["pid"].as_u64(), Some(init), "{v}");

    // The new watcher sees the exit and records it, and leaves.
    agent.ok(&["kill", &name]);
    let v = agent.wait_status(&name, "exited", 10);
    assert!(!pid_alive(init));
    assert!(v["state"]["finished_at"].as_f64().is_some(), "{v}");
    wait_for(Duration::from_secs(5), "the watcher to leave", || {
        (!pid_alive(new_shim)).then_some(())
    });
}

#[test]
fn nothing_under_the_state_dir_is_readable_by_another_user() {
    let agent = Agent::start();
    let rootfs = rootfs(&agent);
    let name = unique("secret");
    let id = agent
        .ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "-e",
            "TOKEN=hunter2",
            &rootfs,
            "sh",
            "-c",
            "echo the-secret-log-line; exec sleep 300",
        ])
        .trim()
        .to_owned();
    agent.wait_status(&name, "running", 10);
    let state = agent.dir.path().join("state");
    let c = state.join("containers").join(&id);
    for d in [
        state.clone(),
        state.join("containers"),
        c.clone(),
        c.join("bundle"),
    ] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    for f in [
        "container.json",
        "state.json",
        "bundle/config.json",
        "container.log",
    ] {
        assert_eq!(mode(&c.join(f)), 0o600, "{f}");
    }

    // With every directory above the state dir open, another user still reads nothing.
    let top_mode = mode(agent.dir.path());
    fs::set_permissions(agent.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "find"])
        .arg(&state)
        .args(["-readable", "-type", "f"])
        .output()
        .expect("runuser");
    let seen = Command::new("runuser")
        .args(["-u", "nobody", "--", "cat"])
        .arg(c.join("container.log"))
        .output()
        .expect("runuser");
    fs::set_permissions(agent.dir.path(), fs::Permissions::from_mode(top_mode)).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "readable as nobody"
    );
    assert!(!seen.status.success());
    assert!(!String::from_utf8_lossy(&seen.stdout).contains("the-secret-log-line"));
}

#[test]
fn importing_a_kernel_file_is_a_client_error_naming_it() {
    let agent = Agent::start();
    for path in ["/proc/self/mem", "/dev/zero"] {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-m",
                "30",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "-X",
                "POST",
            ])
            .arg("--unix-socket")
            .arg(&agent.socket)
            .args(["-H", "content-type: application/json", "--data"])
            .arg(format!(r#"{{"path":"{path}"}}"#))
            .arg("http://berth/api/v1/images/import")
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        let code: u16 = code.trim().parse().unwrap();
        assert_eq!(code, 400, "{path}: {body}");
        assert!(
            body.contains(path) && body.contains("not a regular file"),
            "{body}"
        );
    }
}
