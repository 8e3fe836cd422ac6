//! Registries for the pull tests: Debian's `docker-registry` started on 127.0.0.1 with its own
//! config and storage (plain HTTP, TLS from a test CA with htpasswd basic auth, or token auth
//! against [`TokenServer`]), images pushed by `skopeo` (not berth), the registry's own access
//! log as the judge of what was fetched, and a throttling TCP proxy to catch a pull
//! mid-download. Everything listens on loopback on free ports and goes on drop.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// Asserts `tool` is on PATH, naming the package setup installs.
pub fn require_tool(tool: &str, package: &str) {
    assert!(
        Command::new("sh")
            .args(["-c", &format!("command -v {tool} >/dev/null")])
            .status()
            .unwrap()
            .success(),
        "{tool} is missing: run `cargo xtask setup` (Debian's {package} package)"
    );
}

/// Runs `cmd`, asserting success; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A docker-registry on loopback with its own storage; killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    log: PathBuf,
    pub dir: tempfile::TempDir,
    /// Extra `skopeo copy` flags every push needs (TLS verification, credentials).
    push_flags: Vec<String>,
}

impl Registry {
    /// A plain-HTTP registry without auth.
    pub fn start() -> Self {
        Self::start_with(|_| (String::new(), vec!["--dest-tls-verify=false".into()]))
    }

    /// A registry whose config gets the YAML `extra(dir)` returns (top-level keys such as
    /// `auth:`, or `tls:` lines under `http:` when they start with two spaces), with the skopeo
    /// push flags it returns.
    pub fn start_with(extra: impl FnOnce(&Path) -> (String, Vec<String>)) -> Self {
        require_tool("docker-registry", "docker-registry");
        require_tool("skopeo", "skopeo");
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let addr = format!("127.0.0.1:{port}");
        let (yaml, push_flags) = extra(dir.path());
        let config = dir.path().join("registry.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: \
                 {}\nhttp:\n  addr: {addr}\n{yaml}",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("registry.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let registry = Self {
            child,
            addr,
            log,
            dir,
            push_flags,
        };
        super::wait_for(Duration::from_secs(10), "docker-registry listening", || {
            TcpStream::connect(&registry.addr).ok()
        });
        registry
    }

    /// Pushes `oci:<layout>[:<tag>]` as `name:tag` with skopeo.
    pub fn push(&self, layout: &Path, name: &str, extra: &[&str]) {
        self.push_ref(&format!("oci:{}", layout.display()), name, extra);
    }

    /// Pushes the skopeo source `source` as `name:tag`.
    pub fn push_ref(&self, source: &str, name: &str, extra: &[&str]) {
        run(Command::new("skopeo")
            .arg("copy")
            .args(&self.push_flags)
            .args(extra)
            .arg(source)
            .arg(format!("docker://{}/{name}", self.addr)));
    }

    /// The registry's access log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap()
    }

    /// Blob downloads the registry served (its access log, status 200).
    pub fn blob_gets(&self) -> usize {
        self.gets("/blobs/sha256:")
    }

    /// GETs of paths containing `what` the registry answered with 200.
    pub fn gets(&self, what: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(what) && l.contains("\" 200 "))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An OCI layout on disk: read and rewrite its single image (`index.json`'s first entry).
pub struct Layout(pub PathBuf);

impl Layout {
    pub fn blob(&self, digest: &str) -> PathBuf {
        self.0.join("blobs/sha256").join(&digest["sha256:".len()..])
    }

    pub fn json(&self, digest: &str) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.blob(digest)).unwrap()).unwrap()
    }

    /// Stores `bytes` as a blob; returns its digest.
    pub fn put(&self, bytes: &[u8]) -> String {
        let hex = sha(bytes);
        fs::write(self.0.join("blobs/sha256").join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    }

    pub fn manifest_digest(&self) -> String {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(self.0.join("index.json")).unwrap()).unwrap();
        index["manifests"][0]["digest"].as_str().unwrap().to_owned()
    }

    /// A copy at `to` whose config is changed by `edit` (so a new image id) and whose extra
    /// layers `add` (plain tars) are appended; the index points at the new manifest. Returns
    /// the copy, its manifest digest and its image id (config hex).
    pub fn variant(
        &self,
        to: &Path,
        edit: impl FnOnce(&mut serde_json::Value),
        add: &[&Path],
    ) -> (Layout, String, String) {
        run(Command::new("cp").arg("-a").arg(&self.0).arg(to));
        let out = Layout(to.to_owned());
        let mut manifest = out.json(&out.manifest_digest());
        let mut config = out.json(manifest["config"]["digest"].as_str().unwrap());
        edit(&mut config);
        for tar in add {
            let bytes = fs::read(tar).unwrap();
            let digest = out.put(&bytes);
            config["rootfs"]["diff_ids"]
                .as_array_mut()
                .unwrap()
                .push(digest.clone().into());
            manifest["layers"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest, "size": bytes.len()}));
        }
        let cfg = serde_json::to_vec(&config).unwrap();
        let cfg_digest = out.put(&cfg);
        manifest["config"]["digest"] = cfg_digest.clone().into();
        manifest["config"]["size"] = cfg.len().into();
        let man = serde_json::to_vec(&manifest).unwrap();
        let man_digest = out.put(&man);
        let arch = config["architecture"]
            .as_str()
            .unwrap_or("amd64")
            .to_owned();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": man_digest, "size": man.len(),
            "platform": {"architecture": arch, "os": "linux"}}]});
        fs::write(to.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        (out, man_digest, cfg_digest["sha256:".len()..].to_owned())
    }
}

/// A test CA, a server certificate for 127.0.0.1 it signs, and a self-signed token-signing
/// key pair, all made by openssl in `dir`.
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub token_cert: PathBuf,
    pub token_key: PathBuf,
}

impl TestPki {
    pub fn create(dir: &Path) -> Self {
        require_tool("openssl", "openssl");
        let p = |f: &str| dir.join(f);
        let ossl = |args: &[&str]| {
            run(Command::new("openssl").current_dir(dir).args(args));
        };
        ossl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=berth test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        ossl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        ossl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ]);
        ossl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=berth test token issuer",
            "-keyout",
            "token.key",
            "-out",
            "token.crt",
        ]);
        TestPki {
            ca: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            token_cert: p("token.crt"),
            token_key: p("token.key"),
        }
    }
}

/// A bcrypt htpasswd file with one user (apache2-utils' `htpasswd`).
pub fn htpasswd(path: &Path, user: &str, password: &str) {
    require_tool("htpasswd", "apache2-utils");
    run(Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(path)
        .args([user, password]));
}

/// Docker's client `config.json` with one `auths` entry.
pub fn docker_config(path: &Path, registry: &str, user: &str, password: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    fs::write(
        path,
        serde_json::json!({"auths": {registry: {"auth": auth}}}).to_string(),
    )
    .unwrap();
}

/// The token service of the registry's `auth: token:` flow: a loopback HTTP server that checks
/// basic credentials and issues a JWT (RS256, signed by openssl with the test key, the
/// certificate in `x5c`) granting the scope asked for.
pub struct TokenServer {
    pub addr: String,
    /// Tokens issued and requests refused so far.
    pub issued: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

pub const TOKEN_ISSUER: &str = "berth-test-issuer";
pub const TOKEN_SERVICE: &str = "berth-test-registry";

impl TokenServer {
    pub fn start(pki: &TestPki, user: &str, password: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&pki.token_cert)
            .output()
            .unwrap()
            .stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let key = pki.token_key.clone();
        let issued = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (i, r, s) = (issued.clone(), refused.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        serve_token(conn, &expected, &x5c, &key, &i, &r);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        TokenServer {
            addr,
            issued,
            refused,
            stop,
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_token(
    mut conn: TcpStream,
    expected_auth: &str,
    x5c: &str,
    key: &Path,
    issued: &AtomicUsize,
    refused: &AtomicUsize,
) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut authorization = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            authorization = v.trim().to_owned();
        }
    }
    if authorization != expected_auth {
        refused.fetch_add(1, Ordering::Relaxed);
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
        let _ = write!(
            conn,
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    // Every `scope=repository:NAME:ACTIONS` asked for is granted.
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut access = Vec::new();
    for pair in query.split('&') {
        let Some(("scope", v)) = pair.split_once('=') else {
            continue;
        };
        let v = v
            .replace("%3A", ":")
            .replace("%3a", ":")
            .replace("%2F", "/")
            .replace("%2f", "/")
            .replace("%2C", ",")
            .replace("%2c", ",");
        let mut parts = v.splitn(3, ':');
        if let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next())
        {
            access.push(serde_json::json!({"type": kind, "name": name,
                "actions": actions.split(',').collect::<Vec<_>>()}));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({"iss": TOKEN_ISSUER, "sub": "tok", "aud": TOKEN_SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now - 10,
        "jti": format!("{}-{now}", issued.load(Ordering::Relaxed)), "access": access});
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let mut sig = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut sig).unwrap();
    assert!(child.wait().unwrap().success(), "openssl dgst -sign failed");
    let token = format!("{signing_input}.{}", b64(&sig));
    issued.fetch_add(1, Ordering::Relaxed);
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A TCP proxy on loopback in front of `upstream`; while `slow` is set it passes the
/// upstream's answers on at about 1 MB/s, so a test can act mid-download.
pub struct SlowProxy {
    pub addr: String,
    pub slow: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl SlowProxy {
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let slow = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (sl, st, up) = (slow.clone(), stop.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pipe(c2, s2, None));
                let (sl, st) = (sl.clone(), st.clone());
                std::thread::spawn(move || pipe(server, client, Some((sl, st))));
            }
        });
        SlowProxy { addr, slow, stop }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` until either side closes; throttled while the flag is set.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    throttle: Option<(Arc<AtomicBool>, Arc<AtomicBool>)>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some((_, stop)) = &throttle
            && stop.load(Ordering::Relaxed)
        {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some((slow, _)) = &throttle
            && slow.load(Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(16));
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}
