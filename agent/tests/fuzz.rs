//! A bounded fuzz run against both listeners of a real agent: 10,000 malformed or random
//! requests (bad methods, paths, query strings, JSON bodies with unknown keys or wrong types,
//! huge headers, truncated bodies, raw garbage) from a fixed seed, half over TCP, half over
//! the Unix socket. Every answer must be below 500 (or the connection closed on garbage), the
//! agent must stay up, and nothing may change on the host: no container, no image. Then the
//! named-field checks: an unknown key in any body or query is a 400 naming it.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use common::Agent;

/// xorshift64*: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn word(&mut self, max: usize) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_.%~!$&'()*+,;=:@/?#[]{}\"\\ ";
        let n = self.below(max + 1);
        (0..n)
            .map(|_| CHARS[self.below(CHARS.len())] as char)
            .collect()
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const METHODS: &[&str] = &[
    "GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "BREW", "get",
    "G\0T", "",
];

const PATHS: &[&str] = &[
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/ui/app.js",
    "/api/v1/system",
    "/api/v1/cgroups",
    "/api/v1/diagnose",
    "/api/v1/containers",
    "/api/v1/containers/{id}",
    "/api/v1/containers/{id}/logs",
    "/api/v1/containers/{id}/stats",
    "/api/v1/containers/{id}/syscalls",
    "/api/v1/containers/{id}/stop",
    "/api/v1/containers/{id}/kill",
    "/api/v1/containers/{id}/update",
    "/api/v1/images",
    "/api/v1/images/import",
    "/api/v1/images/{id}",
    "/api/v1/ports",
    "/api/v1/query",
    "/api/v1/../../etc/passwd",
    "//api//v1//containers",
    "/api/v2/containers",
    "*",
];

const QUERY_KEYS: &[&str] = &[
    "all",
    "follow",
    "window",
    "top",
    "t",
    "signal",
    "force",
    "bogus",
    "",
    "all[]",
    "step",
    "sort",
    "engine",
    "name",
    "container",
];

const QUERY_VALUES: &[&str] = &[
    "true",
    "false",
    "1",
    "0",
    "-1",
    "60s",
    "5m",
    "99999999999999999999",
    "1e9",
    "NaN",
    "",
    "%ff%fe",
    "KILL",
    "HUP",
    "abc",
];

/// JSON bodies: valid shapes with unknown keys, wrong types, deep nesting, truncation. Images
/// and paths never name anything that exists, so no request can create a container.
fn json_body(r: &mut Rng) -> String {
    let image = format!("/nonexistent/fuzz-{}", r.next() % 1000);
    let bodies = [
        format!("{{\"image\":\"{image}\",\"bogus_key\":1}}"),
        format!("{{\"image\":\"{image}\",\"limits\":{{\"memroy\":1}}}}"),
        format!("{{\"image\":\"{image}\",\"limits\":{{\"memory\":\"lots\"}}}}"),
        format!("{{\"image\":\"{image}\",\"cmd\":\"not-a-list\"}}"),
        format!("{{\"image\":\"{image}\",\"network\":\"nowhere\"}}"),
        format!("{{\"image\":\"{image}\",\"publish\":[\"99999:1\"]}}"),
        format!("{{\"image\":\"{image}\",\"restart\":\"sometimes\"}}"),
        format!("{{\"image\":\"{image}\",\"name\":\"../../etc\"}}"),
        format!("{{\"image\":\"nope-{}\"}}", r.next() % 1000),
        "{\"image\":\"\"}".into(),
        "{\"memory\":-5}".into(),
        "{\"cpus\":1e400}".into(),
        "{\"pids\":\"x\",\"extra\":[]}".into(),
        "{\"path\":\"/proc/self/mem\"}".into(),
        "{\"path\":\"/dev/null\"}".into(),
        "{\"path\":\"/nonexistent.tar\",\"name\":\"x:y\"}".into(),
        "{\"path\":\"relative.tar\"}".into(),
        "{\"path\":1,\"zzz\":2}".into(),
        "[1,2,3]".into(),
        "null".into(),
        "\"str\"".into(),
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
        "{\"image\":".into(),
        "{".into(),
        String::new(),
        r.word(200),
    ];
    bodies[r.below(bodies.len())].clone()
}

/// One raw request.
fn request(r: &mut Rng, host: &str) -> Vec<u8> {
    if r.below(20) == 0 {
        // Raw garbage.
        return r.bytes(2000);
    }
    let method = r.pick(METHODS);
    let id = match r.below(4) {
        0 => r.word(20),
        1 => "a".repeat(r.below(5000)),
        2 => format!("{:064x}", r.next()),
        _ => "%00%2e%2e".into(),
    };
    let mut path = r
        .pick(PATHS)
        .replace("{id}", &id.replace([' ', '#', '?'], "_"));
    if r.below(3) == 0 {
        path.push('?');
        for i in 0..r.below(4) {
            if i > 0 {
                path.push('&');
            }
            path.push_str(r.pick(QUERY_KEYS));
            path.push('=');
            path.push_str(r.pick(QUERY_VALUES));
        }
    }
    let version = r.pick(&[
        "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/9.9", "",
    ]);
    let mut req = format!("{method} {path} {version}\r\n");
    match r.below(10) {
        0 => {}
        1 => req.push_str("Host: evil.example\r\n"),
        _ => req.push_str(&format!("Host: {host}\r\n")),
    }
    match r.below(12) {
        0 => req.push_str(&format!(
            "X-Big: {}\r\n",
            "x".repeat(100_000 + r.below(400_000))
        )),
        1 => {
            for i in 0..(100 + r.below(200)) {
                req.push_str(&format!("X-H{i}: v\r\n"));
            }
        }
        2 => req.push_str(&format!("Authorization: Bearer {}\r\n", r.word(50))),
        3 => req.push_str("Transfer-Encoding: chunked\r\n"),
        4 => req.push_str("Content-Type: text/plain\r\n"),
        5 => req.push_str("Expect: 100-continue\r\n"),
        _ => req.push_str("Content-Type: application/json\r\n"),
    }
    let body = json_body(r);
    match r.below(5) {
        // Truncated: promises more than it sends.
        0 => req.push_str(&format!(
            "Content-Length: {}\r\n\r\n",
            body.len() + 1 + r.below(10_000)
        )),
        1 => req.push_str(&format!("Content-Length: {}\r\n\r\n", r.word(5))),
        2 => req.push_str("\r\n"),
        _ => req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len())),
    }
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// Sends `req`, closes the write side, reads the answer: its status, 0 when the connection
/// was closed without one (the server's answer to garbage it cannot parse).
fn exchange<S: std::io::Read + std::io::Write>(mut s: S, req: &[u8], shut: impl FnOnce(&S)) -> u16 {
    if s.write_all(req).is_err() {
        return 0;
    }
    shut(&s);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 12 {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn over_tcp(addr: &str, req: &[u8]) -> u16 {
    let s = TcpStream::connect(addr).expect("the TCP listener answers");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    exchange(s, req, |s| {
        let _ = s.shutdown(std::net::Shutdown::Write);
    })
}

fn over_socket(agent: &Agent, req: &[u8]) -> u16 {
    let s = UnixStream::connect(&agent.socket).expect("the socket answers");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    exchange(s, req, |s| {
        let _ = s.shutdown(std::net::Shutdown::Write);
    })
}

fn host_state(agent: &Agent) -> (String, String) {
    (
        agent.ok(&["ps", "-a", "-q", "-f", "engine=berth"]),
        agent.get("/api/v1/images").1,
    )
}

#[test]
fn ten_thousand_malformed_requests_get_no_5xx_and_change_nothing() {
    const REQUESTS: usize = 10_000;
    let agent = Agent::start();
    let addr = agent.base.trim_start_matches("http://").to_owned();
    let before = host_state(&agent);
    let mut rng = Rng(0x5eed_b0a7_f022_2026);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let mut errors = Vec::new();
    let mut done = 0;
    while done < REQUESTS && Instant::now() < deadline {
        let req = request(&mut rng, &addr);
        let tcp = done % 2 == 0;
        let status = if tcp {
            over_tcp(&addr, &req)
        } else {
            over_socket(&agent, &req)
        };
        *by_status.entry(status).or_default() += 1;
        if status >= 500 && errors.len() < 20 {
            let head = String::from_utf8_lossy(&req[..req.len().min(300)]).into_owned();
            errors.push(format!(
                "{} {status}: {head}",
                if tcp { "tcp" } else { "unix" }
            ));
        }
        done += 1;
    }
    eprintln!("{done} requests, answers by status: {by_status:?}");
    assert_eq!(
        done, REQUESTS,
        "the run did not finish within its time bound"
    );
    assert!(errors.is_empty(), "5xx answers:\n{}", errors.join("\n"));
    assert_eq!(agent.get("/healthz").0, 200, "agent down:\n{}", agent.log());
    assert_eq!(host_state(&agent), before, "the fuzz run changed the host");
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

/// `(status, body)` of one JSON request over the socket.
fn send_json(agent: &Agent, method: &str, path: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn unknown_keys_are_400s_naming_the_key() {
    let agent = Agent::start();
    let cases = [
        (
            "POST",
            "/api/v1/containers",
            r#"{"image":"/nonexistent","bogus_key":1}"#,
            "bogus_key",
        ),
        (
            "POST",
            "/api/v1/containers",
            r#"{"image":"/nonexistent","limits":{"memroy":1}}"#,
            "memroy",
        ),
        (
            "POST",
            "/api/v1/containers/whatever/update",
            r#"{"memroy":1}"#,
            "memroy",
        ),
        (
            "POST",
            "/api/v1/images/import",
            r#"{"path":"/x.tar","tag":"a"}"#,
            "tag",
        ),
        ("GET", "/api/v1/containers?bogus=1", "", "bogus"),
        (
            "POST",
            "/api/v1/containers/whatever/stop?time=1",
            "",
            "time",
        ),
    ];
    for (method, path, body, key) in cases {
        let (status, text) = send_json(&agent, method, path, body);
        assert_eq!(status, 400, "{method} {path} {body}: {text}");
        assert!(
            text.contains(key),
            "{method} {path} {body}: the answer names no `{key}`: {text}"
        );
    }
    // Over TCP as well (read routes only).
    let (status, body) = agent.get("/api/v1/containers?bogus=1");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bogus"), "{body}");
    // A client mistake, not a server error: importing something that is not an archive.
    for path in [
        "/proc/self/mem",
        "/dev/null",
        "/etc/hostname",
        "relative.tar",
    ] {
        let (status, text) = send_json(
            &agent,
            "POST",
            "/api/v1/images/import",
            &format!("{{\"path\":\"{path}\"}}"),
        );
        assert!((400..500).contains(&status), "import {path}: {text}");
    }
}
