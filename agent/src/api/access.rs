//! Who may see what, per request: the Host header check and the bearer token of the TCP
//! listener, and the security headers every response carries.
//!
//! The Unix socket (0660 root) is trusted: its requests see env values and logs. On the TCP
//! listener a request sees them only with `Authorization: Bearer TOKEN` matching the token in
//! `http.token_file`; otherwise env values are redacted and logs refused. Handlers read the
//! decision from the [`Secrets`] request extension; a request without it sees no secret.

use std::{net::SocketAddr, path::Path, sync::Arc};

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

/// Whether this request may see env values and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secrets(pub bool);

impl Secrets {
    /// From the request's extensions; absent means no.
    pub fn of(ext: Option<axum::Extension<Secrets>>) -> bool {
        ext.is_some_and(|axum::Extension(Secrets(s))| s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path} (http.token_file): {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the token file {path} (http.token_file) has mode {mode:o}: it must not be readable or \
         writable by group or others; run `chmod 600 {path}`"
    )]
    Mode { path: std::path::PathBuf, mode: u32 },
    #[error("the token file {path} (http.token_file) is empty")]
    Empty { path: std::path::PathBuf },
}

/// The bearer token that unlocks secrets on the TCP listener.
pub struct Token(Vec<u8>);

impl Token {
    /// Reads `path` (its first line); refuses a file group or others can read or write.
    pub fn load(path: &Path) -> Result<Token, TokenError> {
        use std::os::unix::fs::PermissionsExt as _;
        let read = |source| TokenError::Read {
            path: path.to_owned(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Mode {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Token(token.as_bytes().to_vec()))
    }

    /// Constant-time comparison: the time taken depends on the lengths only, never on where
    /// the first differing byte is (no early exit; every byte is OR-ed into `diff`).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mut diff = u8::from(self.0.len() != presented.len());
        for (i, b) in presented.iter().enumerate() {
            let t = self.0.get(i % self.0.len().max(1)).copied().unwrap_or(0);
            diff |= t ^ b;
        }
        diff == 0
    }
}

/// What the TCP listener checks on every request.
pub struct TcpAccess {
    pub token: Option<Token>,
    /// Lower-case Host header values answered (`host:port`, or `host` for any port's default).
    hosts: Vec<String>,
    /// The port, when the listener is bound to every address (`0.0.0.0`, `[::]`): then any IP
    /// literal with that port is one of its names.
    any_ip: Option<u16>,
}

impl TcpAccess {
    pub fn new(token: Option<Token>, listen: SocketAddr, allowed: &[String]) -> Self {
        let port = listen.port();
        let mut hosts = vec![
            listen.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        if port == 80 {
            // Clients leave the default port out.
            hosts.extend([
                listen.ip().to_string(),
                "localhost".into(),
                "127.0.0.1".into(),
                "[::1]".into(),
            ]);
        }
        for h in allowed {
            let h = h.to_ascii_lowercase();
            if h.contains(':') && !h.ends_with(']') {
                hosts.push(h);
            } else {
                hosts.push(format!("{h}:{port}"));
                if port == 80 {
                    hosts.push(h);
                }
            }
        }
        let any_ip = listen.ip().is_unspecified().then_some(port);
        Self {
            token,
            hosts,
            any_ip,
        }
    }

    /// A listed name, or, on a listener bound to every address, any `IP:port` of its port:
    /// the node's own address as Prometheus and the kubelet's probes use it (a DaemonSet
    /// shares one config on every node). DNS rebinding always carries the attacker's host
    /// name, never an IP literal, so this opens nothing to it.
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        if self.hosts.contains(&host) {
            return true;
        }
        self.any_ip
            .is_some_and(|port| host.parse::<SocketAddr>().is_ok_and(|a| a.port() == port))
    }
}

fn refuse(status: StatusCode, msg: String) -> Response {
    (status, Json(super::ErrorBody { error: msg })).into_response()
}

/// TCP listener middleware: the Host header first (DNS rebinding), then the bearer token.
pub async fn tcp_guard(
    State(access): State<Arc<TcpAccess>>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers: &HeaderMap = req.headers();
    let host = match headers.get(header::HOST).map(|h| h.to_str()) {
        Some(Ok(h)) => h.to_owned(),
        Some(Err(_)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "the Host header is not valid text".into(),
            );
        }
        None => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "the Host header is missing: this listener answers only requests naming it".into(),
            );
        }
    };
    if !access.host_allowed(&host) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Host `{host}` is not a name of this agent: it answers its listen address, \
                 localhost and http.allowed_hosts only (DNS rebinding protection)"
            ),
        );
    }
    let secrets = match headers.get(header::AUTHORIZATION) {
        None => false,
        Some(value) => {
            let presented = value
                .as_bytes()
                .strip_prefix(b"Bearer ")
                .or_else(|| value.as_bytes().strip_prefix(b"bearer "));
            match (&access.token, presented) {
                (Some(t), Some(p)) if t.matches(p) => true,
                (None, _) => {
                    return refuse(
                        StatusCode::UNAUTHORIZED,
                        "Authorization: no token is configured on this agent (http.token_file)"
                            .into(),
                    );
                }
                _ => {
                    let mut r = refuse(
                        StatusCode::UNAUTHORIZED,
                        "Authorization: the bearer token does not match".into(),
                    );
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return r;
                }
            }
        }
    };
    req.extensions_mut().insert(Secrets(secrets));
    next.run(req).await
}

/// Unix socket middleware: its clients (root and the socket's group) see everything.
pub async fn socket_trusted(mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(Secrets(true));
    next.run(req).await
}

/// The UI's content security policy: its own scripts, styles and API only; no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Security headers on every response of both listeners (the UI's and the API's).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_matches_itself_only() {
        let t = Token(b"s3cret-token".to_vec());
        assert!(t.matches(b"s3cret-token"));
        assert!(!t.matches(b"s3cret-tokem"));
        assert!(!t.matches(b"s3cret-token2"));
        assert!(!t.matches(b"s3cret"));
        assert!(!t.matches(b""));
    }

    #[test]
    fn a_group_readable_token_file_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "abc\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = Token::load(&p).err().unwrap().to_string();
        assert!(e.contains("640") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Token::load(&p).unwrap().matches(b"abc"));
    }

    #[test]
    fn hosts_are_the_listen_address_loopback_names_and_the_configured_ones() {
        let a = TcpAccess::new(
            None,
            "127.0.0.1:9847".parse().unwrap(),
            &["berth.example".into(), "Other:1".into()],
        );
        for ok in [
            "127.0.0.1:9847",
            "localhost:9847",
            "LOCALHOST:9847",
            "[::1]:9847",
            "berth.example:9847",
            "other:1",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for no in [
            "evil.example:9847",
            "localhost",
            "127.0.0.1:80",
            "berth.example:1",
        ] {
            assert!(!a.host_allowed(no), "{no}");
        }
        // Bound to one address, another IP is not a name of this listener.
        assert!(!a.host_allowed("10.0.0.5:9847"));
    }

    #[test]
    fn a_listener_on_every_address_answers_any_ip_of_its_port_and_no_other_name() {
        for listen in ["0.0.0.0:9847", "[::]:9847"] {
            let a = TcpAccess::new(None, listen.parse().unwrap(), &[]);
            for ok in [
                "10.0.0.5:9847",
                "192.168.7.1:9847",
                "[fd00::5]:9847",
                "localhost:9847",
            ] {
                assert!(a.host_allowed(ok), "{listen}: {ok}");
            }
            for no in [
                "10.0.0.5:80",
                "10.0.0.5",
                "evil.example:9847",
                "10.0.0.5.nip.io:9847",
                "[fd00::5]:1",
            ] {
                assert!(!a.host_allowed(no), "{listen}: {no}");
            }
        }
    }
}
