//! The listeners under a hostile local user: secrets only with the token on TCP, the Host
//! header check, the UI's security headers, and an idle-connection flood that leaves the
//! operator's socket and `/healthz` answering and gives its memory back.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Agent, busybox_rootfs, unique, wait_for};

const TOKEN: &str = "t0ken-for-listener-tests-0123456789";

/// `curl` as nobody: (status, headers + body).
fn curl_as_nobody(url: &str, headers: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "nobody", "--", "curl", "-s", "-i", "--max-time", "10"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("runuser curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn token_agent() -> Agent {
    let dir = tempfile::tempdir().unwrap().keep();
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    Agent::start_with_http(
        &format!(
            "token_file = \"{}\"\nallowed_hosts = [\"berth.test\"]",
            token.display()
        ),
        "",
    )
}

#[test]
fn over_tcp_env_values_and_logs_need_the_token() {
    let agent = token_agent();
    let rootfs = busybox_rootfs(agent.dir.path()).display().to_string();
    let name = unique("secret");
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-e",
        "SECRET_VALUE=hunter2-xyzzy",
        &rootfs,
        "sh",
        "-c",
        "echo log-line-plugh; exec sleep 300",
    ]);
    // The socket (root) sees everything.
    let inspect = agent.inspect(&name);
    assert!(inspect.to_string().contains("hunter2-xyzzy"), "{inspect}");
    wait_for(Duration::from_secs(10), "the log line", || {
        agent
            .ok(&["logs", &name])
            .contains("log-line-plugh")
            .then_some(())
    });
    let one = format!("{}/api/v1/containers/{name}", agent.base);
    let all = format!("{}/api/v1/containers", agent.base);
    let logs = format!("{}/api/v1/containers/{name}/logs", agent.base);

    // nobody, no token: env keys shown, values redacted; no log.
    for url in [&one, &all] {
        let (status, body) = curl_as_nobody(url, &[]);
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains("hunter2"), "{body}");
        assert!(body.contains("SECRET_VALUE=<redacted>"), "{body}");
    }
    let (status, body) = curl_as_nobody(&logs, &[]);
    assert_eq!(status, 401, "{body}");
    assert!(
        !body.contains("log-line-plugh") && body.contains("token"),
        "{body}"
    );

    // A wrong token is refused outright.
    let (status, body) = curl_as_nobody(&one, &["Authorization: Bearer wrong"]);
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("hunter2"), "{body}");

    // With the token, both are readable.
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (status, body) = curl_as_nobody(&one, &[&auth]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("SECRET_VALUE=hunter2-xyzzy"), "{body}");
    let (status, body) = curl_as_nobody(&logs, &[&auth]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("log-line-plugh"), "{body}");
}

#[test]
fn a_foreign_host_header_is_refused_and_the_ui_carries_security_headers() {
    let agent = token_agent();
    let port = agent.base.rsplit(':').next().unwrap().to_owned();
    let url = format!("{}/api/v1/system", agent.base);
    let (status, body) = curl_as_nobody(&url, &[&format!("Host: evil.example:{port}")]);
    assert_eq!(status, 421, "{body}");
    assert!(
        body.contains("evil.example") && body.contains("DNS rebinding"),
        "{body}"
    );
    for ok in [format!("localhost:{port}"), format!("berth.test:{port}")] {
        let (status, body) = curl_as_nobody(&url, &[&format!("Host: {ok}")]);
        assert_eq!(status, 200, "Host {ok}: {body}");
    }
    let (status, head) = curl_as_nobody(&format!("{}/", agent.base), &[]);
    assert_eq!(status, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(head.contains("frame-ancestors 'none'"), "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
}

#[test]
fn a_token_file_others_can_read_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "abc\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:1\"\nsocket = \"{0}/s.sock\"\ntoken_file = \"{1}\"\n",
            dir.path().display(),
            token.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["agent", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("token") && err.contains("chmod 600"), "{err}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn agent_pid(agent: &Agent) -> u32 {
    // The agent is the process listening on its socket: find it by its config path.
    let config = agent.config.display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(&config)
            && let Ok(pid) = e.file_name().to_string_lossy().parse()
        {
            return pid;
        }
    }
    panic!("agent process not found");
}

/// `berth ps` over the socket, given at most 10 s; returns how long it took.
fn ps_within_10s(agent: &Agent) -> Duration {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--socket")
        .arg(&agent.socket)
        .arg("ps")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success(), "berth ps failed during the flood");
            return t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("berth ps did not answer within 10 s during the flood");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn healthz_within_10s(agent: &Agent) -> Duration {
    let t = Instant::now();
    let r = ureq::get(&format!("{}/healthz", agent.base))
        .timeout(Duration::from_secs(10))
        .call();
    assert!(
        matches!(&r, Ok(res) if res.status() == 200),
        "/healthz during the flood: {r:?}"
    );
    t.elapsed()
}

#[test]
fn twenty_thousand_idle_connections_leave_the_socket_and_healthz_answering() {
    let agent = Agent::start();
    let pid = agent_pid(&agent);
    let port = agent.base.rsplit(':').next().unwrap().to_owned();
    for _ in 0..20 {
        healthz_within_10s(&agent);
        ps_within_10s(&agent);
    }
    std::thread::sleep(Duration::from_millis(500));
    let baseline = rss_kib(pid);
    let fds_before = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();

    // 2 x 10,000 connections as nobody, from 127.0.0.2..=127.0.0.21.
    let started = Instant::now();
    let mut floods = Vec::new();
    for first in ["2", "12"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth-test-flood"))
            .args([port.as_str(), "10000", first])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        eprintln!("flood from 127.0.0.{first}: {}", line.trim());
        assert!(line.starts_with("opened 10000 "), "{line}");
        floods.push(child);
    }
    eprintln!("20,000 connections opened in {:?}", started.elapsed());
    let mut peak = rss_kib(pid);
    let mut worst_ps = Duration::ZERO;
    let mut worst_health = Duration::ZERO;
    for _ in 0..5 {
        worst_ps = worst_ps.max(ps_within_10s(&agent));
        worst_health = worst_health.max(healthz_within_10s(&agent));
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    eprintln!(
        "while held: berth ps <= {worst_ps:?}, /healthz <= {worst_health:?}, agent fds {fds}, \
         RSS baseline {baseline} KiB peak {peak} KiB"
    );
    for mut c in floods {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    wait_for(
        Duration::from_secs(40),
        "the flood's connections to close",
        || {
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .count();
            (fds <= fds_before + 8).then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = wait_for(
        Duration::from_secs(40),
        "RSS within 2x of its baseline",
        || {
            let rss = rss_kib(pid);
            (rss <= 2 * baseline).then_some(rss)
        },
    );
    eprintln!("after close: RSS {after} KiB (baseline {baseline} KiB)");
    healthz_within_10s(&agent);
    ps_within_10s(&agent);
}

#[test]
fn the_idle_timeout_closes_silent_connections_but_not_a_log_stream_that_carries_data() {
    let dir = tempfile::tempdir().unwrap().keep();
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let agent = Agent::start_with_http(
        &format!(
            "token_file = \"{}\"\nidle_timeout = \"2s\"\nheader_read_timeout = \"1s\"",
            token.display()
        ),
        "",
    );
    let addr = agent.base.trim_start_matches("http://").to_owned();

    // A connection that sends nothing is closed after about a second (header read timeout).
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let _ = std::io::Read::read(&mut silent, &mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        t.elapsed()
    );

    // A followed log that prints every 200 ms for 5 s outlives the 2 s idle timeout.
    let rootfs = busybox_rootfs(agent.dir.path()).display().to_string();
    let name = unique("stream");
    agent.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        &rootfs,
        "sh",
        "-c",
        "i=0; while [ $i -lt 25 ]; do echo tick-$i; i=$((i+1)); sleep 0.2; done",
    ]);
    let t = Instant::now();
    let res = ureq::get(&format!(
        "{}/api/v1/containers/{name}/logs?follow=true",
        agent.base
    ))
    .set("Authorization", &format!("Bearer {TOKEN}"))
    .timeout(Duration::from_secs(30))
    .call()
    .unwrap();
    let body = res.into_string().unwrap();
    assert!(body.contains("tick-24"), "the stream was cut: {body}");
    assert!(t.elapsed() > Duration::from_secs(4), "{:?}", t.elapsed());
}
