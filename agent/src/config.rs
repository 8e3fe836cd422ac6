//! Agent configuration: TOML, every section `#[serde(default)]` and `deny_unknown_fields`, so
//! an empty file means the built-in defaults and a typo is an error naming the key.
//!
//! The defaults live in one place, the `Default` impls below; `deploy/berth.toml` is the same
//! configuration written out with comments, and a unit test keeps the two equal.
//! `berth agent --print-config` prints the configuration in force.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors loading or validating a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config file {path}: `{key}` {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub agent: AgentConfig,
    pub http: HttpConfig,
    pub cgroup: CgroupConfig,
    pub runtime: RuntimeConfig,
    pub network: crate::net::NetworkConfig,
    pub probes: ProbesConfig,
    pub discovery: DiscoveryConfig,
    pub images: ImagesConfig,
}

/// `[images]`: registries `berth pull` talks to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    /// `host[:port]` of registries reached over plain HTTP (loopback ones always are).
    pub insecure_registries: Vec<String>,
    /// Docker's client config whose `auths` give registry credentials; empty:
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub docker_auth_config: PathBuf,
    /// Per-registry CA certificates in Docker's layout: every `*.crt` in
    /// `<certs_dir>/<host[:port]>/` is trusted for that registry only, on top of the system
    /// roots (which berth never changes); a registry with such a directory is reached over TLS
    /// even on loopback.
    pub certs_dir: PathBuf,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            docker_auth_config: PathBuf::new(),
            // Docker's /etc/docker/certs.d, under berth's own config directory.
            certs_dir: PathBuf::from("/etc/berth/certs.d"),
        }
    }
}

impl ImagesConfig {
    /// The Docker client config to read credentials from, if one can be named.
    pub fn docker_config(&self) -> Option<PathBuf> {
        if !self.docker_auth_config.as_os_str().is_empty() {
            return Some(self.docker_auth_config.clone());
        }
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// How often collectors read the kernel and publish a snapshot.
    pub interval: HumanDuration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            // Prometheus scrapes every 15 s by default; 1 s keeps the API and UI live.
            interval: HumanDuration(Duration::from_secs(1)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Read-only HTTP listener for /metrics, /healthz, /readyz and /api/v1.
    #[serde(with = "socket_addr")]
    pub listen: SocketAddr,
    /// Unix socket for the client verbs (`berth run`, `ps`, ...): the only listener that
    /// accepts changes. Mode 0660, owned by root.
    pub socket: PathBuf,
    /// A file holding the bearer token that unlocks env values and logs on the TCP listener
    /// (`Authorization: Bearer TOKEN`). It must not be readable by group or others: the agent
    /// refuses to start otherwise. Without it, the TCP listener never shows them.
    pub token_file: Option<PathBuf>,
    /// Host names (with or without `:port`) the TCP listener answers besides its own address,
    /// `localhost`, `127.0.0.1` and `[::1]`; any other Host header is refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Open TCP connections at most; more are closed at once. Lowered at start to half the
    /// agent's file descriptor limit so the Unix socket, the probes and the containers keep
    /// theirs.
    pub max_connections: usize,
    /// Open TCP connections at most from one client address.
    pub max_connections_per_ip: usize,
    /// Unix socket connections at most (a separate budget: a TCP flood never takes these).
    pub max_socket_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: HumanDuration,
    /// A connection that moves no byte either way for this long is closed; a stream that
    /// carries data (`logs -f`) is not idle.
    pub idle_timeout: HumanDuration,
    /// Largest request body accepted, bytes.
    pub body_limit: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            // Loopback only: exposing it further is the operator's decision.
            listen: SocketAddr::from(([127, 0, 0, 1], 9847)),
            socket: PathBuf::from(DEFAULT_SOCKET),
            // No token: env values and logs only over the Unix socket.
            token_file: None,
            allowed_hosts: Vec::new(),
            // The agent raises its fd soft limit to the hard one and lowers this to half of
            // it if needed, leaving room for everything else it opens.
            max_connections: 4096,
            // One client address cannot take the whole budget.
            max_connections_per_ip: 64,
            max_socket_connections: 256,
            header_read_timeout: HumanDuration(Duration::from_secs(5)),
            idle_timeout: HumanDuration(Duration::from_secs(30)),
            // Request bodies are small JSON objects (run, update, import).
            body_limit: 1024 * 1024,
        }
    }
}

/// Where the agent's Unix socket is unless configured otherwise; the CLI's default too.
pub const DEFAULT_SOCKET: &str = "/run/berth/berth.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// OCI runtime: "auto" (crun on pure cgroup v2 when installed, else runc), "runc", "crun".
    pub oci: String,
    /// Persistent state: images, containers (records, bundles, logs, writable layers).
    pub state_dir: PathBuf,
    /// Volatile state (tmpfs): the OCI runtime's own state root.
    pub run_dir: PathBuf,
    /// Launch and manage containers. `false` is observe mode: no OCI runtime is looked for,
    /// the mutating verbs are refused, and the agent only observes (as a DaemonSet does).
    pub launch: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            oci: "auto".into(),
            state_dir: PathBuf::from("/var/lib/berth"),
            run_dir: PathBuf::from("/run/berth"),
            launch: true,
        }
    }
}

/// Where the other engines' containers and the host's own views are. Every path is the host's
/// as the agent sees it: in a container, mount the host's directories and point these at them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Observe containers berth did not launch (found from the cgroup tree).
    pub enabled: bool,
    /// The host's procfs (PIDs of the host: proxies, conntrack).
    #[schema(value_type = String)]
    pub proc: PathBuf,
    /// The host's cgroup2 (or hybrid `unified`) mount, or a directory above it (the host's
    /// /sys/fs/cgroup mounted elsewhere); empty: detected from mountinfo.
    #[schema(value_type = String)]
    pub cgroup_mount: PathBuf,
    /// Docker Engine API socket (metadata: names, images, labels, published ports).
    #[schema(value_type = String)]
    pub docker_socket: PathBuf,
    /// Docker's data root (`config.v2.json`, `hostconfig.json`: the fallback when the API
    /// does not answer).
    #[schema(value_type = String)]
    pub docker_data_root: PathBuf,
    /// containerd's state dir (task bundles' `config.json`: labels, Kubernetes names).
    #[schema(value_type = String)]
    pub containerd_state: PathBuf,
    /// podman's (containers/storage) root and run root, for names and images.
    #[schema(value_type = String)]
    pub podman_root: PathBuf,
    #[schema(value_type = String)]
    pub podman_runroot: PathBuf,
    /// How long one metadata request may take before the agent goes on without it.
    #[schema(value_type = String)]
    pub metadata_timeout: HumanDuration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            proc: PathBuf::from("/proc"),
            cgroup_mount: PathBuf::new(),
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            docker_data_root: PathBuf::from("/var/lib/docker"),
            containerd_state: PathBuf::from("/run/containerd"),
            podman_root: PathBuf::from("/var/lib/containers/storage"),
            podman_runroot: PathBuf::from("/run/containers/storage"),
            // Metadata is never needed for the numbers: a slow engine must not hold a tick.
            metadata_timeout: HumanDuration(Duration::from_millis(500)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupConfig {
    /// berth's subtree of the cgroup v2 (unified) hierarchy, relative to its mount. Every
    /// cgroup below it is tracked by the probes; the agent creates it when absent.
    pub root: String,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        Self {
            root: "berth".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbesConfig {
    /// Keep the kernel's BPF run-time statistics on while the agent runs, for
    /// `berth_probe_run_seconds_total` (the probes' own CPU cost). It adds two clock reads to
    /// every BPF program run on the host.
    pub run_stats: bool,
    pub syscalls: SyscallsConfig,
    pub network: ProbeToggle,
    /// Netfilter cost per hook and port (a BPF netfilter program pair on every hook): on by
    /// default: it costs a fraction of a µs per packet and hook (agent/tests/netfilter.rs),
    /// small next to what it measures.
    pub netfilter: ProbeToggle,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            // What the probes cost is part of what berth must explain.
            run_stats: true,
            syscalls: SyscallsConfig::default(),
            network: ProbeToggle::default(),
            netfilter: ProbeToggle::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyscallsConfig {
    pub enabled: bool,
    /// Latency histograms (adds a sys_exit program and a timestamp per tracked syscall:
    /// about twice the cost of counting alone, so off unless asked for).
    pub latency: bool,
    /// Syscalls per cgroup exported to /metrics, busiest first; the rest are summed under
    /// syscall="other". The API has them all. Bounded labels keep Prometheus healthy.
    pub top: usize,
}

impl Default for SyscallsConfig {
    fn default() -> Self {
        Self {
            // Counting costs ~0.1 µs per syscall of a tracked task and one helper call for
            // the rest (docs/benchmarks.md): cheap enough to be on by default.
            enabled: true,
            latency: false,
            top: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeToggle {
    pub enabled: bool,
}

impl Default for ProbeToggle {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            reason,
        };
        let interval = self.agent.interval.0;
        if interval < Duration::from_millis(100) || interval > Duration::from_secs(60) {
            return Err(invalid(
                "agent.interval",
                format!(
                    "is {}; it must be between 100ms and 60s",
                    self.agent.interval
                ),
            ));
        }
        validate_cgroup_root(&self.cgroup.root).map_err(|r| invalid("cgroup.root", r))?;
        if !["auto", "runc", "crun"].contains(&self.runtime.oci.as_str()) {
            return Err(invalid(
                "runtime.oci",
                format!(
                    "is `{}`; use \"auto\", \"runc\" or \"crun\"",
                    self.runtime.oci
                ),
            ));
        }
        self.network
            .validate()
            .map_err(|(key, reason)| invalid(key, reason))?;
        if self.probes.syscalls.top == 0 || self.probes.syscalls.top > 500 {
            return Err(invalid(
                "probes.syscalls.top",
                format!("is {}; use 1 to 500", self.probes.syscalls.top),
            ));
        }
        for (key, n) in [
            ("http.max_connections", self.http.max_connections),
            (
                "http.max_connections_per_ip",
                self.http.max_connections_per_ip,
            ),
            (
                "http.max_socket_connections",
                self.http.max_socket_connections,
            ),
            ("http.body_limit", self.http.body_limit),
        ] {
            if n == 0 {
                return Err(invalid(key, "is 0; it must be at least 1".into()));
            }
        }
        for (key, d) in [
            ("http.header_read_timeout", self.http.header_read_timeout),
            ("http.idle_timeout", self.http.idle_timeout),
        ] {
            if d.0.is_zero() {
                return Err(invalid(key, "is 0; it must be positive".into()));
            }
        }
        if let Some(p) = &self.http.token_file
            && !p.is_absolute()
        {
            return Err(invalid(
                "http.token_file",
                format!("is `{}`; it must be an absolute path", p.display()),
            ));
        }
        for (key, p) in [
            ("runtime.state_dir", &self.runtime.state_dir),
            ("runtime.run_dir", &self.runtime.run_dir),
            ("http.socket", &self.http.socket),
            ("discovery.proc", &self.discovery.proc),
            ("discovery.docker_socket", &self.discovery.docker_socket),
            (
                "discovery.docker_data_root",
                &self.discovery.docker_data_root,
            ),
            (
                "discovery.containerd_state",
                &self.discovery.containerd_state,
            ),
            ("discovery.podman_root", &self.discovery.podman_root),
            ("discovery.podman_runroot", &self.discovery.podman_runroot),
        ] {
            if !p.is_absolute() {
                return Err(invalid(
                    key,
                    format!("is `{}`; it must be an absolute path", p.display()),
                ));
            }
        }
        if !self.discovery.cgroup_mount.as_os_str().is_empty()
            && !self.discovery.cgroup_mount.is_absolute()
        {
            return Err(invalid(
                "discovery.cgroup_mount",
                format!(
                    "is `{}`; it must be an absolute path, or empty to detect it",
                    self.discovery.cgroup_mount.display()
                ),
            ));
        }
        let t = self.discovery.metadata_timeout.0;
        if t < Duration::from_millis(10) || t > Duration::from_secs(10) {
            return Err(invalid(
                "discovery.metadata_timeout",
                format!(
                    "is {}; it must be between 10ms and 10s",
                    self.discovery.metadata_timeout
                ),
            ));
        }
        Ok(())
    }

    /// The configuration as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes to TOML")
    }
}

fn validate_cgroup_root(root: &str) -> Result<(), String> {
    let p = Path::new(root);
    if root.is_empty() {
        return Err("is empty; give a path below the cgroup2 mount such as \"berth\"".into());
    }
    if p.is_absolute() {
        return Err(format!(
            "is `{root}`; it must be relative to the cgroup2 mount, e.g. \"berth\""
        ));
    }
    if root
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "is `{root}`; `.`, `..` and empty components are not allowed"
        ));
    }
    Ok(())
}

/// A duration written as `250ms`, `1s`, `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{s}` has no unit; write e.g. 500ms, 1s or 2m"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` does not start with a whole number"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            _ => return Err(format!("`{s}` has unknown unit `{unit}`; use ms, s or m")),
        };
        Ok(Self(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

mod socket_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "`{s}` is not an IP:PORT socket address, e.g. \"127.0.0.1:9847\" or \"[::1]:9847\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn an_empty_file_means_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn the_shipped_config_changes_no_default() {
        let shipped = include_str!("../../deploy/berth.toml");
        assert_eq!(parse(shipped).unwrap(), Config::default());
    }

    #[test]
    fn print_config_output_parses_back_to_the_same_config() {
        let c = Config::default();
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn an_unknown_key_is_named_in_the_error() {
        let e = parse("[http]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("listen_port"), "{msg}");
        assert!(msg.contains("test.toml"), "{msg}");
    }

    #[test]
    fn a_bad_listen_address_is_named_in_the_error() {
        let msg = parse("[http]\nlisten = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("listen"), "{msg}");
        assert!(msg.contains("not an IP:PORT"), "{msg}");
    }

    #[test]
    fn cgroup_roots_that_escape_the_mount_are_refused() {
        for bad in ["", "/berth", "../x", "a//b", "a/./b"] {
            let text = format!("[cgroup]\nroot = \"{bad}\"\n");
            let msg = parse(&text).unwrap_err().to_string();
            assert!(msg.contains("cgroup.root"), "{bad}: {msg}");
        }
        assert_eq!(
            parse("[cgroup]\nroot = \"a/b\"\n").unwrap().cgroup.root,
            "a/b"
        );
    }

    #[test]
    fn intervals_are_human_durations_within_bounds() {
        assert_eq!(
            parse("[agent]\ninterval = \"250ms\"\n")
                .unwrap()
                .agent
                .interval,
            HumanDuration(Duration::from_millis(250))
        );
        for bad in ["1", "5h", "10ms", "2m", "x1s"] {
            let text = format!("[agent]\ninterval = \"{bad}\"\n");
            assert!(parse(&text).is_err(), "{bad} accepted");
        }
    }
}
