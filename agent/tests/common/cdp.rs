//! Debian's chromium, headless, driven over the Chrome DevTools Protocol for the browser test.
//!
//! A thin client: JSON commands `{id, method, params}` over the page target's WebSocket
//! (tungstenite, blocking), answers matched by id, every event kept so the test can look for
//! console errors and uncaught exceptions. chromiumoxide would be the usual crate, but it
//! brings an async runtime into tests that are otherwise synchronous and its generated protocol
//! crate (chromiumoxide_cdp, the whole protocol as Rust types) is a long compile on the 2-core
//! machines this suite runs on, for the five methods used here.
//!
//! Chromium runs as root with `--no-sandbox` (CI is root), a fresh profile directory, and its
//! own process group, killed as a whole on drop.

use std::{
    fs,
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

/// Where Debian's package puts the browser (a wrapper script that execs the binary).
const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless chromium process and its profile directory, both gone on drop.
pub struct Browser {
    child: Child,
    profile: tempfile::TempDir,
    port: u16,
}

impl Browser {
    /// Starts chromium with a `width` x `height` window and waits for its DevTools port.
    pub fn launch(width: u32, height: u32) -> Self {
        assert!(
            Path::new(CHROMIUM).is_file(),
            "{CHROMIUM} not found: install Debian's chromium (`cargo xtask setup` does)"
        );
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(profile.path().join("stderr.log")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMIUM}: {e}"));
        let mut browser = Browser {
            child,
            profile,
            port: 0,
        };
        // Chromium writes the port it bound to its profile directory.
        let active = browser.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        browser.port = loop {
            if let Some(port) = fs::read_to_string(&active)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break port;
            }
            if let Some(status) = browser.child.try_wait().unwrap() {
                panic!(
                    "chromium exited during start-up ({status}):\n{}",
                    browser.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromium gave no DevTools port in 30 s:\n{}",
                browser.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        browser
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.profile.path().join("stderr.log")).unwrap_or_default()
    }

    /// The first page target (the window opened on about:blank), attached.
    pub fn page(&self) -> Page {
        let (status, body) =
            crate::common::http_get(&format!("http://127.0.0.1:{}/json/list", self.port));
        assert_eq!(status, 200, "DevTools /json/list: {body}");
        let targets: Value = serde_json::from_str(&body).unwrap();
        let url = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target in {targets}"))
            .to_owned();
        let (mut ws, _) =
            tungstenite::connect(&url).unwrap_or_else(|e| panic!("DevTools WebSocket {url}: {e}"));
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        let mut page = Page {
            ws,
            next_id: 0,
            events: Vec::new(),
            shot_on_failure: None,
        };
        for domain in ["Page", "Runtime", "Log"] {
            page.call(&format!("{domain}.enable"), json!({}));
        }
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser, its zygotes and renderers share the group it leads.
        // SAFETY: signalling the process group of a child this guard started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// One attached page: commands in, answers and events out.
pub struct Page {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Every event received so far, in order (`{method, params}`).
    pub events: Vec<Value>,
    /// Where to save what the page showed if the test fails while it is open.
    pub shot_on_failure: Option<PathBuf>,
}

impl Drop for Page {
    fn drop(&mut self) {
        let Some(path) = self.shot_on_failure.take() else {
            return;
        };
        if !std::thread::panicking() {
            return;
        }
        // Best effort, without panicking again: the test has already failed.
        let shot = self
            .try_call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .ok()
            .and_then(|r| {
                base64::engine::general_purpose::STANDARD
                    .decode(r["data"].as_str()?)
                    .ok()
            });
        if let Some(png) = shot
            && fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).is_ok()
            && fs::write(&path, png).is_ok()
        {
            eprintln!("the page when the test failed: {}", path.display());
        }
    }
}

impl Page {
    /// Sends `method` and waits for its answer, keeping the events that arrive meanwhile.
    /// Panics with the protocol's error message if the browser refuses the command.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("DevTools {method}: {e}"))
    }

    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws
            .send(Message::text(msg))
            .map_err(|e| e.to_string())?;
        loop {
            let text = match self.ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(_) => continue,
                Err(e) => return Err(format!("no answer: {e}")),
            };
            let v: Value = serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
            if v["id"] == id {
                return match v["error"].is_null() {
                    true => Ok(v["result"].clone()),
                    false => Err(format!("failed: {}", v["error"])),
                };
            }
            if v["method"].is_string() {
                self.events.push(v);
            }
        }
    }

    /// Navigates to `url` and waits until its document has loaded.
    pub fn goto(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url }));
        assert!(r["errorText"].is_null(), "navigating to {url}: {r}");
        crate::common::wait_for(Duration::from_secs(20), "the page to load", || {
            (self.eval("document.readyState") == "complete").then_some(())
        });
    }

    /// The value of a JavaScript expression (awaited if a promise), as JSON.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(
            r["exceptionDetails"].is_null(),
            "evaluating {expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Console errors and warnings, uncaught exceptions, and failed loads reported so far.
    pub fn problems(&mut self) -> Vec<String> {
        // A round trip collects the events already sent.
        self.eval("0");
        self.events
            .iter()
            .filter_map(|e| {
                let p = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.exceptionThrown" => {
                        Some(format!("exception: {}", p["exceptionDetails"]))
                    }
                    "Runtime.consoleAPICalled"
                        if matches!(p["type"].as_str(), Some("error" | "warning" | "assert")) =>
                    {
                        Some(format!("console.{}: {}", p["type"], p["args"]))
                    }
                    "Log.entryAdded"
                        if matches!(p["entry"]["level"].as_str(), Some("error" | "warning")) =>
                    {
                        Some(format!("log {}: {}", p["entry"]["level"], p["entry"]))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Saves a PNG of the viewport (or the whole page with `full`) to `path`.
    pub fn screenshot(&mut self, path: &Path, full: bool) -> PathBuf {
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": full }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .unwrap();
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, png).unwrap();
        path.to_owned()
    }
}
