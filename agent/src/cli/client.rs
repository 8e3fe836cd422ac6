//! A small HTTP/1.1 client over the agent's Unix socket: one request per connection, bodies
//! read to the end or decoded from chunks as they arrive (for `logs -f`).

use std::{
    io::{BufRead as _, BufReader, Read, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the berth agent at {socket}: {source} (is `berth agent` running? is --socket right?)"
    )]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent at {socket}: {source}")]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent sent a malformed response: {0}")]
    Protocol(String),
    /// The agent answered with an error; its message is for the user.
    #[error("{message}")]
    Api { status: u16, message: String },
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
        |source| ClientError::Io {
            socket: self.socket.clone(),
            source,
        }
    }

    /// Sends a request; calls `on_body` with each piece of the body as it arrives.
    pub fn stream(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        mut on_body: impl FnMut(&[u8]),
    ) -> Result<u16, ClientError> {
        let mut conn =
            UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(self.io())?;
        let mut r = BufReader::new(conn);
        let mut line = String::new();
        r.read_line(&mut line).map_err(self.io())?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Protocol(format!("status line {line:?}")))?;
        let mut chunked = false;
        let mut length: Option<usize> = None;
        loop {
            line.clear();
            r.read_line(&mut line).map_err(self.io())?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if k == "content-length" {
                    length = v.parse().ok();
                }
            }
        }
        if chunked {
            loop {
                line.clear();
                r.read_line(&mut line).map_err(self.io())?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| ClientError::Protocol(format!("chunk size {line:?}")))?;
                if size == 0 {
                    break;
                }
                let mut buf = vec![0; size];
                r.read_exact(&mut buf).map_err(self.io())?;
                on_body(&buf);
                let mut crlf = [0; 2];
                r.read_exact(&mut crlf).map_err(self.io())?;
            }
        } else {
            let mut buf = Vec::new();
            match length {
                Some(n) => {
                    buf.resize(n, 0);
                    r.read_exact(&mut buf).map_err(self.io())?;
                }
                None => {
                    r.read_to_end(&mut buf).map_err(self.io())?;
                }
            }
            on_body(&buf);
        }
        Ok(status)
    }

    /// A request whose JSON answer is decoded; error answers become [`ClientError::Api`].
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let mut buf = Vec::new();
        let status = self.stream(method, path, body, |b| buf.extend_from_slice(b))?;
        if !(200..300).contains(&status) {
            let message = error_message(&buf)
                .unwrap_or_else(|| String::from_utf8_lossy(&buf).trim().to_owned());
            return Err(ClientError::Api { status, message });
        }
        serde_json::from_slice(&buf)
            .map_err(|e| ClientError::Protocol(format!("{e} in {}", String::from_utf8_lossy(&buf))))
    }
}

/// The `error` of an API error body (`{"error": "..."}`), if it is one.
pub fn error_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error)
}

/// Percent-encodes a path segment (container names and ids are safe, but be strict).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
