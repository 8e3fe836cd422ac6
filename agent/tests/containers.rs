//! Containers through the real OCI runtime and real cgroups: lifecycle, limits enforced by the
//! kernel, live updates, survival of agent crashes, bad input that changes nothing.

mod common;

use std::{fs, path::PathBuf, time::Duration};

use common::{Agent, busybox_rootfs, unique, wait_for};

fn rootfs(agent: &Agent) -> String {
    busybox_rootfs(agent.dir.path()).display().to_string()
}

/// Every directory of the container's cgroup in every hierarchy that may hold one.
fn cgroup_dirs(agent: &Agent, id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let p = e.path().join(&agent.root_name).join(id);
        out.push(p);
    }
    out.push(common::cgroup2_mount().join(&agent.root_name).join(id));
    out
}

#[test]
fn a_container_runs_stops_and_is_removed_without_a_trace() {
    let agent = Agent::start();
    let rootfs = rootfs(&agent);
    let name = unique("life");
    let id = agent
        .ok(&[
            "run",
            "-d",
            "--name",
            &name,
            &rootfs,
            "sh",
            "-c",
            "echo hello from berth; exec sleep 300",
        ])
        .trim()
        .to_owned();
    assert_eq!(id.len(), 64, "run -d prints the id: {id}");
    let v = agent.wait_status(&name, "running", 10);
    assert!(v["state"]["pid"].as_u64().unwrap() > 1);

    let ps = agent.ok(&["ps"]);
    assert!(ps.contains(&name) && ps.contains(&id[..12]), "{ps}");
    let ps_json: serde_json::Value =
        serde_json::from_str(&agent.ok(&["ps", "--format", "json"])).unwrap();
    assert!(
        ps_json
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == name.as_str())
    );

    wait_for(Duration::from_secs(5), "the log line", || {
        agent
            .ok(&["logs", &name])
            .contains("hello from berth")
            .then_some(())
    });
    // The cgroup exists in every v1 hierarchy and the unified one while it runs.
    let dirs = cgroup_dirs(&agent, &id);
    let existing: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(existing.len() >= 3, "container cgroups: {existing:?}");
    assert!(
        common::cgroup2_mount()
            .join(&agent.root_name)
            .join(&id)
            .exists()
    );

    // sleep as PID 1 ignores SIGTERM: stop escalates to SIGKILL after -t.
    agent.ok(&["stop", "-t", "1", &name]);
    let v = agent.wait_status(&name, "exited", 15);
    assert_eq!(v["state"]["exit_code"], 137, "{v}");
    assert!(!agent.ok(&["ps"]).contains(&name));
    assert!(agent.ok(&["ps", "-a"]).contains("Exited (137)"));

    let store = agent.dir.path().join("state/containers").join(&id);
    assert!(store.join("upper").exists());
    agent.ok(&["rm", &name]);
    for d in &dirs {
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }
    assert!(
        !store.exists(),
        "store entry and writable layer left behind"
    );
    assert!(!agent.ok(&["ps", "-a"]).contains(&name));
    let (code, _, err) = agent.cli(&["inspect", &name]);
    assert_ne!(code, 0);
    assert!(err.contains("no such container"), "{err}");
}

#[test]
fn run_without_detach_streams_output_and_returns_the_exit_code() {
    let agent = Agent::start();
    let rootfs = rootfs(&agent);
    let (code, out, err) =
        agent.cli(&["run", &rootfs, "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("out") && out.contains("err"), "{out}");
}

#[test]
fn memory_past_the_limit_is_oom_killed_and_counted() {
    let agent = Agent::start();
    let rootfs = rootfs(&agent);
    let name = unique("oom");
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--memory",
        "64m",
        &rootfs,
        "sh",
        "-c",
        "head -c 300m /dev/zero | tail",
    ]);
    let v = agent.wait_status(&name, "exited", 30);
    assert_eq!(v["state"]["exit_code"], 137, "{v}");
    assert_eq!(v["state"]["oom_kills"], 1, "{v}");
    assert_eq!(agent.get("/healthz").0, 200, "the agent is unaffected");
}

#[test]
fn a_fork_loop_is_capped_by_the_pids_limit() {
    let agent = Agent::start();
    let rootfs = rootfs(&agent);
    let name = unique("pids");
    // The inner shell forks until the kernel refuses (busybox sh then exits); its children
    // stay with the container's init.
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--pids-limit",
        "20",
        &rootfs,
        "sh",
        "-c",
        "sh -c 'while :; do sleep 120 & done'; exec sleep 120",
    ]);
    wait_for(
        Duration::from_secs(10),
        "the fork loop to hit the limit",
        || {
            agent
                .ok(&["logs", &name])
                .contains("can't fork")
                .then_some(())
        },
    );
    // Stats come from the agent's snapshot, at most one collection interval old: wait for one
    // taken after the loop filled the cgroup, then check it sits at the limit, not above.
    let stats = || -> serde_json::Value {
        let out = agent.ok(&["stats", "--no-stream", "--format", "json", &name]);
        serde_json::from_str(&out).unwrap()
    };
    let v = wait_for(
        Duration::from_secs(5),
        "a snapshot near the pids limit",
        || {
            let v = stats();
            (v[0]["stats"]["pids_current"].as_u64()? >= 18).then_some(v)
        },
    );
    let s = &v[0]["stats"];
    assert_eq!(v[0]["status"], "running", "{v}");
    assert_eq!(s["pids_limit"], 20, "{s}");
    let pids = s["pids_current"].as_u64().unwrap();
    assert!(
        (18..=20).contains(&pids),
        "{pids} pids under --pids-limit 20: {s}"
    );
    // And it stays capped.
    std::thread::sleep(Duration::from_millis(500));
    let later = stats()[0]["stats"]["pids_current"].as_u64().unwrap();
    assert!(later <= 20, "{later} pids under --pids-limit 20");
}

#[test]
fn a_busy_loop_is_held_to_its_cpu_quota() {
    let agent = Agent::start();
    let rootfs = rootfs(&agent);
    let name = unique("cpu");
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--cpus",
        "0.2",
        &rootfs,
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    agent.wait_status(&name, "running", 10);
    let usage = || -> f64 {
        let out = agent.ok(&["stats", "--no-stream", "--format", "json", &name]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["stats"]["cpu_usage_seconds"].as_f64().unwrap()
    };
    std::thread::sleep(Duration::from_millis(500));
    let (u0, t0) = (usage(), std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (u1, t1) = (usage(), std::time::Instant::now());
    let rate = (u1 - u0) / (t1 - t0).as_secs_f64();
    assert!(
        rate <= 0.25,
        "busy loop used {rate:.3} CPU-seconds per second under --cpus 0.2"
    );
    assert!(
        rate >= 0.1,
        "busy loop used only {rate:.3} CPU-s/s: is it running?"
    );
}

#[test]
fn update_changes_the_memory_limit_of_a_running_container() {
    let agent = Agent::start();
    let rootfs = rootfs(&agent);
    let name = unique("upd");
    let id = agent
        .ok(&[
            "run", "-d", "--name", &name, "--memory", "64m", &rootfs, "sleep", "300",
        ])
        .trim()
        .to_owned();
    agent.wait_status(&name, "running", 10);
    let file = PathBuf::from("/sys/fs/cgroup/memory")
        .join(&agent.root_name)
        .join(&id)
        .join("memory.limit_in_bytes");
    let v2 = common::cgroup2_mount()
        .join(&agent.root_name)
        .join(&id)
        .join("memory.max");
    let read = || {
        fs::read_to_string(&file)
            .or_else(|_| fs::read_to_string(&v2))
            .unwrap()
    };
    assert_eq!(read().trim(), (64u64 << 20).to_string());
    agent.ok(&["update", "--memory", "128m", &name]);
    assert_eq!(read().trim(), (128u64 << 20).to_string());
    assert_eq!(agent.inspect(&name)["limits"]["memory"], 128u64 << 20);
}

#[test]
fn containers_survive_an_agent_crash_and_are_readopted() {
    let mut agent = Agent::start();
    let rootfs = rootfs(&agent);
    let a = unique("keep-a");
    let b = unique("keep-b");
    let c = unique("quits");
    for n in [&a, &b] {
        agent.ok(&[
            "run",
            "-d",
            "--name",
            n,
            &rootfs,
            "sh",
            "-c",
            "while :; do echo tick; sleep 0.2; done",
        ]);
    }
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &c,
        &rootfs,
        "sh",
        "-c",
        "sleep 2; exit 7",
    ]);
    for n in [&a, &b, &c] {
        agent.wait_status(n, "running", 10);
    }
    agent.kill9();
    std::thread::sleep(Duration::from_secs(3));
    agent.spawn();

    for n in [&a, &b] {
        let v = agent.inspect(n);
        assert_eq!(v["status"], "running", "{n}: {v}");
        let log = PathBuf::from(v["log_path"].as_str().unwrap());
        let before = fs::metadata(&log).unwrap().len();
        std::thread::sleep(Duration::from_millis(800));
        assert!(
            fs::metadata(&log).unwrap().len() > before,
            "{n}'s log stopped growing"
        );
    }
    let v = agent.inspect(&c);
    assert_eq!(v["status"], "exited", "{v}");
    assert_eq!(v["state"]["exit_code"], 7, "{v}");
    let ps = agent.ok(&["ps", "-a"]);
    for n in [&a, &b, &c] {
        assert!(ps.contains(n.as_str()), "{n} missing from ps -a:\n{ps}");
    }
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let agent = Agent::start();
    let rootfs = rootfs(&agent);
    let taken = unique("taken");
    agent.ok(&["run", "-d", "--name", &taken, &rootfs, "sleep", "300"]);
    let store = agent.dir.path().join("state/containers");
    let count = || fs::read_dir(&store).unwrap().count();
    let before = count();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "-d", "--name", "bad name", &rootfs, "true"],
            "invalid container name",
        ),
        (
            vec!["run", "-d", "--name", &taken, &rootfs, "true"],
            "already used",
        ),
        (
            vec!["run", "-d", "/nonexistent/rootfs", "true"],
            "not a directory",
        ),
        (
            vec!["run", "-d", "no-such-image:latest", "true"],
            "no-such-image",
        ),
        (
            vec!["run", "-d", "--memory", "0", &rootfs, "true"],
            "--memory",
        ),
        (
            vec!["run", "-d", "--memory", "lots", &rootfs, "true"],
            "--memory",
        ),
        (vec!["run", "-d", "--cpus", "-1", &rootfs, "true"], "--cpus"),
        (
            vec!["run", "-d", "--cpus", "1000", &rootfs, "true"],
            "--cpus",
        ),
        (
            vec!["run", "-d", "--pids-limit", "-5", &rootfs, "true"],
            "--pids-limit",
        ),
        (
            vec!["run", "-d", "--restart", "sometimes", &rootfs, "true"],
            "--restart",
        ),
        (
            vec!["run", "-d", "--bogus-flag", &rootfs, "true"],
            "--bogus-flag",
        ),
        (
            vec!["run", "-d", &rootfs, "/no/such/binary"],
            "no/such/binary",
        ),
        (vec!["stop", "no-such-container"], "no such container"),
        (vec!["rm", "no-such-container"], "no such container"),
        (vec!["rm", &taken], "running"),
        (vec!["update", "--memory", "0", &taken], "--memory"),
        (vec!["kill", "-s", "NOPE", &taken], "unknown signal"),
    ];
    for (args, needle) in cases {
        let (code, out, err) = agent.cli(&args);
        assert_ne!(code, 0, "berth {args:?} succeeded: {out}");
        assert!(
            err.contains(needle),
            "berth {args:?}: expected {needle:?} in: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(
        count(),
        before,
        "a refused command left a container directory"
    );
    assert_eq!(agent.inspect(&taken)["status"], "running");
    assert_eq!(
        agent.inspect(&taken)["limits"]["memory"],
        serde_json::Value::Null
    );
}

#[test]
fn images_built_by_other_tools_import_and_run() {
    let agent = Agent::start();
    let build = tempfile::tempdir().unwrap();
    let (oci, docker, id) = common::build_image_archives(build.path());
    assert_eq!(
        agent.ok(&["image", "import", oci.to_str().unwrap()]).trim(),
        id
    );
    assert_eq!(
        agent
            .ok(&[
                "image",
                "import",
                docker.to_str().unwrap(),
                "--name",
                "media:1"
            ])
            .trim(),
        id,
        "one image, two archives: one id"
    );
    let ls = agent.ok(&["image", "ls"]);
    for name in ["shell/oci:v1", "shell/docker:v1", "media:1"] {
        assert!(ls.contains(name), "{name} missing from image ls:\n{ls}");
    }
    // Entrypoint /bin/busybox + our command, as uid 1000 in /home/user.
    let (code, out, err) = agent.cli(&[
        "run",
        "shell/oci:v1",
        "sh",
        "-c",
        "cat /etc/motd; id -u; pwd; ls /data",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "hello\n1000\n/home/user\nnew\n");
    // The image's default command runs too (Entrypoint busybox + Cmd sh reads no input).
    let name = unique("img");
    agent.ok(&["run", "-d", "--name", &name, "media:1", "sleep", "300"]);
    agent.wait_status(&name, "running", 10);
    // Writes go to the container's layer, never to the image.
    agent.ok(&[
        "run",
        "--user",
        "0",
        "media:1",
        "sh",
        "-c",
        "echo changed > /etc/motd",
    ]);
    let (_, out, _) = agent.cli(&["run", "media:1", "cat", "/etc/motd"]);
    assert_eq!(out, "hello\n", "a container changed the image");
    let (code, _, err) = agent.cli(&["image", "rm", "media:1"]);
    assert_ne!(code, 0);
    assert!(err.contains("used by container"), "{err}");
    let (code, _, err) = agent.cli(&["image", "import", "/nonexistent.tar"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent.tar"), "{err}");
    let corrupt = build.path().join("corrupt.tar");
    fs::write(&corrupt, b"this is not an archive").unwrap();
    let (code, _, err) = agent.cli(&["image", "import", corrupt.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("corrupt.tar"), "{err}");
}

#[test]
fn restart_policies_restart_failures_up_to_their_limit() {
    let mut agent = Agent::start();
    let rootfs = rootfs(&agent);
    let flaky = unique("flaky");
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &flaky,
        "--restart",
        "on-failure:2",
        &rootfs,
        "sh",
        "-c",
        "echo run; exit 3",
    ]);
    let v = wait_for(Duration::from_secs(20), "two restarts, then exited", || {
        let v = agent.inspect(&flaky);
        (v["status"] == "exited" && v["state"]["restart_count"] == 2).then_some(v)
    });
    assert_eq!(v["state"]["exit_code"], 3, "{v}");
    assert_eq!(
        agent.ok(&["logs", &flaky]).matches("run").count(),
        3,
        "1 run + 2 restarts"
    );

    // `always` also restarts a clean exit, and a container the agent finds dead at start.
    let steady = unique("always");
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &steady,
        "--restart",
        "always",
        &rootfs,
        "sh",
        "-c",
        "sleep 1; exit 0",
    ]);
    wait_for(
        Duration::from_secs(20),
        "a restart of the always container",
        || (agent.inspect(&steady)["state"]["restart_count"].as_u64()? >= 1).then_some(()),
    );
    // A stopped container stays stopped.
    agent.ok(&["stop", "-t", "1", &steady]);
    let count = agent.inspect(&steady)["state"]["restart_count"].clone();
    std::thread::sleep(Duration::from_secs(2));
    let v = agent.inspect(&steady);
    assert_eq!(v["status"], "exited", "{v}");
    assert_eq!(v["state"]["restart_count"], count, "restarted after stop");
    agent.kill9();
    agent.spawn();
    assert_eq!(
        agent.inspect(&steady)["status"],
        "exited",
        "restarted a stopped container on agent start"
    );
}

#[test]
fn an_interrupted_create_or_remove_is_undone_on_the_next_start() {
    let mut agent = Agent::start();
    let rootfs = rootfs(&agent);
    let mut ids = Vec::new();
    for phase in ["creating", "removing"] {
        let name = unique(phase);
        let id = agent
            .ok(&["run", "-d", "--name", &name, &rootfs, "sleep", "300"])
            .trim()
            .to_owned();
        agent.wait_status(&name, "running", 10);
        ids.push((id, phase));
    }
    agent.kill9();
    // Rewind each record to the phase a crash would have left it in.
    let store = agent.dir.path().join("state/containers");
    for (id, phase) in &ids {
        let path = store.join(id).join("container.json");
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        v["phase"] = serde_json::json!(phase);
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    }
    // And a directory from a crash before the first record was written.
    fs::create_dir_all(store.join("0".repeat(64))).unwrap();
    agent.spawn();
    for (id, phase) in &ids {
        assert!(!store.join(id).exists(), "{phase}: store entry left");
        for d in cgroup_dirs(&agent, id) {
            assert!(!d.exists(), "{phase}: cgroup {} left", d.display());
        }
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(id.as_str()),
            "{phase}: overlay of {id} still mounted"
        );
        let ps = fs::read_dir("/proc").unwrap().flatten().any(|p| {
            fs::read(p.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(id.as_str()))
                .unwrap_or(false)
        });
        assert!(!ps, "{phase}: a process of {id} is still running");
    }
    assert!(!store.join("0".repeat(64)).exists());
    // Other engines' containers on the host are not this test's.
    assert_eq!(
        agent.ok(&["ps", "-a", "-q", "-f", "engine=berth"]).trim(),
        ""
    );
}
