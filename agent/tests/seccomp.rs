//! Seccomp in berth's containers, against the real runtime and kernel: moby's default profile
//! in every container's bundle (`Seccomp: 2`; user namespaces, keyrings, perf events and
//! io_uring refused; ordinary workloads, a UDP echo server among them, unaffected),
//! `--security-opt seccomp=unconfined` (`Seccomp: 0`) and `seccomp=PATH` (a client's profile),
//! a bad `--security-opt` refused before anything is created, and the profile in force in
//! `berth info`.

mod common;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use common::{Agent, echo_rootfs, udp_ask, unique, wait_for};

const EPERM: i32 = 1;
const ENOSYS: i32 = 38;

fn wait_running(agent: &Agent, c: &str) -> serde_json::Value {
    wait_for(Duration::from_secs(10), &format!("{c} running"), || {
        let v = agent.inspect(c);
        (v["status"] == "running").then_some(v)
    })
}

/// `berth run --rm ARGS...` in the foreground: (exit code, stdout, stderr).
fn run(agent: &Agent, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["run", "--rm", "--network", "none"];
    all.extend_from_slice(args);
    agent.cli(&all)
}

/// The `Seccomp:` mode of a container's first process.
fn seccomp_mode(agent: &Agent, opts: &[&str], rootfs: &str) -> String {
    let mut args: Vec<&str> = opts.to_vec();
    args.extend([rootfs, "sh", "-c", "grep '^Seccomp:' /proc/self/status"]);
    let (code, out, err) = run(agent, &args);
    assert_eq!(code, 0, "{err}\n{}", agent.log());
    out.trim()
        .strip_prefix("Seccomp:")
        .unwrap_or_else(|| panic!("no Seccomp line: {out}"))
        .trim()
        .to_owned()
}

/// What `berth-test-echo --try-syscalls` printed: name -> `Ok(())` or `Err(errno)`.
fn try_syscalls(agent: &Agent, opts: &[&str], rootfs: &str) -> BTreeMap<String, Result<(), i32>> {
    let mut args: Vec<&str> = opts.to_vec();
    args.extend([rootfs, "berth-test-echo", "--try-syscalls"]);
    let (code, out, err) = run(agent, &args);
    assert_eq!(code, 0, "{err}\n{out}");
    out.lines()
        .filter_map(|l| {
            let (name, what) = l.split_once(' ')?;
            let r = match what.strip_prefix("errno=") {
                Some(n) => Err(n.parse().ok()?),
                None => Ok(()),
            };
            Some((name.to_owned(), r))
        })
        .collect()
}

/// One request over the agent's Unix socket: (status, body).
fn socket_post(agent: &Agent, path: &str, body: &serde_json::Value) -> (u16, String) {
    agent.socket_request("POST", path, Some(&body.to_string()))
}

#[test]
fn a_default_container_runs_under_mobys_profile_and_refuses_the_dangerous_syscalls() {
    let agent = Agent::start();
    let rootfs = echo_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();

    assert_eq!(
        seccomp_mode(&agent, &[], rootfs),
        "2",
        "a filter is installed"
    );

    // busybox's unshare -U: unshare(CLONE_NEWUSER) needs CAP_SYS_ADMIN in the profile.
    let (code, out, err) = run(&agent, &[rootfs, "sh", "-c", "unshare -U true; echo rc=$?"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rc=") && !out.contains("rc=0"),
        "unshare -U ran: {out} {err}"
    );

    let got = try_syscalls(&agent, &[], rootfs);
    eprintln!("default profile: {got:?}");
    for name in [
        "keyctl",
        "add_key",
        "perf_event_open",
        "io_uring_setup",
        "unshare",
    ] {
        match got.get(name) {
            Some(Err(e)) if *e == EPERM || *e == ENOSYS => {}
            other => panic!("{name}: expected EPERM or ENOSYS, got {other:?} (all: {got:?})"),
        }
    }

    // Ordinary work in busybox sh: files, pipes, processes, time, signals.
    let (code, out, err) = run(
        &agent,
        &[
            rootfs,
            "sh",
            "-c",
            "mkdir -p /tmp/a && echo hello > /tmp/a/f && cat /tmp/a/f | tr a-z A-Z; \
             sleep 0.1 & wait; date +%Y >/dev/null && ps >/dev/null && kill -0 $$ && echo done",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "HELLO\ndone\n");
}

#[test]
fn the_bundle_and_the_record_carry_the_profile_and_info_names_it() {
    let agent = Agent::start();
    let rootfs = echo_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let name = unique("sc");
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        rootfs,
        "sleep",
        "60",
    ]);
    let v = wait_running(&agent, &name);
    assert_eq!(v["seccomp"], "default", "{v}");
    let id = v["id"].as_str().unwrap();
    let config = agent
        .dir
        .path()
        .join("state/containers")
        .join(id)
        .join("bundle/config.json");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let s = &spec["linux"]["seccomp"];
    assert_eq!(s["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(s["defaultErrnoRet"], 1);
    assert_eq!(s["architectures"][0], "SCMP_ARCH_X86_64");
    let names: Vec<&str> = s["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["names"].as_array().unwrap())
        .filter_map(|n| n.as_str())
        .collect();
    assert!(names.contains(&"read") && names.contains(&"chroot"));
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("io_uring") || *n == "unshare")
    );
    agent.ok(&["rm", "-f", &name]);

    let info: serde_json::Value = serde_json::from_str(&agent.ok(&["info"])).unwrap();
    let s = &info["seccomp"];
    assert_eq!(s["profile"], "moby default", "{info}");
    assert_eq!(s["version"], "seccomp/v0.2.3");
    assert_eq!(s["default_action"], "SCMP_ACT_ERRNO");
    assert!(s["syscalls_allowed"].as_u64().unwrap() > 300, "{s}");
}

#[test]
fn a_udp_echo_server_answers_under_the_default_profile() {
    let agent = Agent::start();
    let rootfs = echo_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let name = unique("echo");
    let port = 21000 + (std::process::id() % 9000) as u16;
    let p = port.to_string();
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        rootfs,
        "berth-test-echo",
        "--ports",
        &p,
    ]);
    wait_running(&agent, &name);
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let answer = wait_for(Duration::from_secs(10), "the echo under seccomp", || {
        udp_ask(None, to, b"filtered")
    });
    assert_eq!(answer, b"filtered");
    let pid = agent.inspect(&name)["state"]["pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");
    agent.ok(&["rm", "-f", &name]);
}

#[test]
fn unconfined_runs_without_a_filter_and_a_profile_file_is_applied() {
    let agent = Agent::start();
    let rootfs = echo_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let unconfined = ["--security-opt", "seccomp=unconfined"];
    assert_eq!(seccomp_mode(&agent, &unconfined, rootfs), "0");
    // The probe tells a filter's answer apart: without one, the kernel sets io_uring up.
    let got = try_syscalls(&agent, &unconfined, rootfs);
    eprintln!("unconfined: {got:?}");
    let io_uring_on = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .is_ok_and(|v| v.trim() == "0");
    if io_uring_on {
        assert_eq!(got.get("io_uring_setup"), Some(&Ok(())), "{got:?}");
    }
    let name = unique("unc");
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        unconfined[0],
        unconfined[1],
        rootfs,
        "sleep",
        "60",
    ]);
    assert_eq!(wait_running(&agent, &name)["seccomp"], "unconfined");
    agent.ok(&["rm", "-f", &name]);

    // A profile file read by the CLI: everything allowed but mkdir, answered EACCES.
    let profile = agent.dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    assert_eq!(seccomp_mode(&agent, &["--security-opt", &opt], rootfs), "2");
    let (code, out, err) = run(
        &agent,
        &[
            "--security-opt",
            &opt,
            rootfs,
            "sh",
            "-c",
            "mkdir /tmp/x 2>&1; echo rc=$?; touch /tmp/y && echo touched",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rc=1") && out.contains("touched"), "{out}");
    assert!(
        out.contains("Permission denied"),
        "EACCES from errnoRet: {out}"
    );
}

#[test]
fn a_bad_security_opt_is_refused_and_creates_nothing() {
    let agent = Agent::start();
    let rootfs = echo_rootfs(agent.dir.path());
    let rootfs = rootfs.to_str().unwrap();
    let bad_profile = agent.dir.path().join("bad.json");
    std::fs::write(&bad_profile, r#"{"defaultAction": "SCMP_ACT_SOMETIMES"}"#).unwrap();
    let bad_profile_opt = format!("seccomp={}", bad_profile.display());
    for (opt, says) in [
        ("apparmor=unconfined", "apparmor=unconfined"),
        (
            "seccomp=/nonexistent/profile.json",
            "/nonexistent/profile.json",
        ),
        (bad_profile_opt.as_str(), "SCMP_ACT_SOMETIMES"),
    ] {
        let name = unique("bad");
        let (code, out, err) = agent.cli(&[
            "run",
            "-d",
            "--name",
            &name,
            "--security-opt",
            opt,
            rootfs,
            "true",
        ]);
        assert_ne!(code, 0, "{opt} accepted: {out}");
        assert!(err.contains(says), "{opt}: {err}");
    }
    // The API: a path is not read for the client, unknown options are named; both 400.
    for opt in ["seccomp=/etc/passwd", "label=disable"] {
        let (status, body) = socket_post(
            &agent,
            "/api/v1/containers",
            &serde_json::json!({"image": rootfs, "cmd": ["true"], "security_opt": [opt]}),
        );
        assert_eq!(status, 400, "{opt}: {body}");
        assert!(body.contains(opt), "{opt}: {body}");
    }
    // Other engines' containers on the host are not this test's.
    assert_eq!(
        agent.ok(&["ps", "-a", "-q", "-f", "engine=berth"]).trim(),
        ""
    );
    let containers = agent.dir.path().join("state/containers");
    let left = std::fs::read_dir(&containers)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "state left in {}", containers.display());
}
