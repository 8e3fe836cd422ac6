//! Container networking: `bridge` (a berth-owned Linux bridge, IPAM from a configured subnet, a
//! veth pair into the container's network namespace, default route, masquerade), `host` (the
//! host's namespace) and `none` (loopback only), plus published ports ([`portmap`]).
//!
//! berth creates the container's network namespace itself (bind-mounted under
//! `<run_dir>/netns/<id>`), wires it, and hands its path to the OCI runtime, as CNI runtimes
//! do; so a restart of the container keeps its address and mappings. Links and addresses go
//! through netlink (rtnetlink), never through `ip`.
//!
//! Owners: the bridge, the nft table and iptables chains belong to the agent (removed on
//! shutdown when no container is left); veths, netns files and map elements belong to their
//! container (removed on `rm`, and by reconciliation at start when the container is unknown).

pub mod conntrack;
pub mod link;
pub mod portmap;

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::portmap::{Backend, BackendKind, PortmapConfig, PortmapError};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Portmap(#[from] PortmapError),
    #[error("netlink: {op} {name}: {reason}")]
    Netlink {
        op: &'static str,
        name: String,
        reason: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("subnet {subnet} has no free address left")]
    Exhausted { subnet: Ipv4Net },
    #[error("container {container} is in bridge mode but its record has no address")]
    NoAddress { container: String },
    #[error("a netlink worker thread panicked (in {})", namespace(netns.as_deref()))]
    NetlinkThread { netns: Option<PathBuf> },
    #[error("netlink: link {link} is missing in {}", namespace(netns.as_deref()))]
    LinkMissing {
        link: String,
        netns: Option<PathBuf>,
    },
}

impl NetError {
    /// Whether the error is about the request (a bad or conflicting -p, no address left for
    /// one more container) rather than the host.
    pub fn is_client_error(&self) -> bool {
        match self {
            NetError::Portmap(e) => e.is_client_error(),
            NetError::Exhausted { .. } => true,
            NetError::Netlink { .. }
            | NetError::Io { .. }
            | NetError::NoAddress { .. }
            | NetError::NetlinkThread { .. }
            | NetError::LinkMissing { .. } => false,
        }
    }
}

/// "the host's namespace" or "namespace PATH", for messages.
fn namespace(netns: Option<&Path>) -> String {
    match netns {
        None => "the host's network namespace".to_owned(),
        Some(p) => format!("network namespace {}", p.display()),
    }
}

pub use crate::model::net::{NetworkMode, NetworkSpec};

/// The agent's network configuration (`[network]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Name of berth's bridge.
    pub bridge: String,
    /// Container subnet; the bridge takes its first address as the containers' gateway.
    pub subnet: Ipv4Net,
    /// Default port-mapping backend: "nft-map" (one map, flat per-packet cost) or "iptables"
    /// (one rule per port as Docker does: only to reproduce and measure the problem).
    pub port_backend: BackendKind,
    /// nftables table owned by berth (also the prefix of its iptables chains, uppercased).
    pub table: String,
    /// Interfaces where the `ebpf` backend maps packets arriving for published ports; empty:
    /// those that carry an IPv4 default route when the backend starts.
    pub uplinks: Vec<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            bridge: "berth0".into(),
            // Private, host-only; Docker's 172.17/16 and podman's 10.88/16 stay free.
            subnet: "10.231.0.0/16".parse().expect("valid default subnet"),
            port_backend: BackendKind::NftMap,
            table: "berth".into(),
            uplinks: Vec::new(),
        }
    }
}

impl NetworkConfig {
    /// Errors name the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let b = &self.bridge;
        if b.is_empty()
            || b.len() > 15
            || !b
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err((
                "network.bridge",
                format!("is `{b}`; use 1 to 15 letters, digits, - or _"),
            ));
        }
        if self.subnet.prefix_len() > 29 {
            return Err((
                "network.subnet",
                format!("is {}; use a /29 or larger", self.subnet),
            ));
        }
        let t = &self.table;
        if t.is_empty()
            || t.len() > 24
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err((
                "network.table",
                format!("is `{t}`; use 1 to 24 letters, digits, - or _"),
            ));
        }
        for u in &self.uplinks {
            if portmap::validate_ifname(u).is_err() {
                return Err((
                    "network.uplinks",
                    format!("has `{u}`; use interface names of 1 to 15 characters [a-zA-Z0-9_.-]"),
                ));
            }
        }
        Ok(())
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.hosts().next().expect("subnet has hosts")
    }

    fn portmap(&self) -> PortmapConfig {
        PortmapConfig {
            table: self.table.clone(),
            bridge: self.bridge.clone(),
            subnet: self.subnet,
        }
    }
}

/// Host veth name of a container: `vb` + 11 hex digits of its id (interface names are at most
/// 15 bytes).
pub fn host_veth(id: &str) -> String {
    format!("vb{}", &id[..id.len().min(11)])
}

fn peer_veth(id: &str) -> String {
    format!("vp{}", &id[..id.len().min(11)])
}

/// berth's networking: the bridge, the container netns files, the port backends.
pub struct Network {
    pub config: NetworkConfig,
    netns_dir: PathBuf,
    backends: BTreeMap<&'static str, Box<dyn Backend>>,
}

fn backend_key(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::NftMap => "nft-map",
        BackendKind::Iptables => "iptables",
        BackendKind::Ebpf => "ebpf",
    }
}

impl Network {
    /// `cgroup2`: where the `ebpf` backend attaches its socket hooks for host-local clients.
    pub fn new(config: NetworkConfig, run_dir: &Path, cgroup2: Option<&Path>) -> Self {
        let pm = config.portmap();
        let ebpf = portmap::ebpf::EbpfOptions {
            uplinks: config.uplinks.clone(),
            cgroup2: cgroup2.map(Path::to_owned),
            ..Default::default()
        };
        let backends = [
            BackendKind::NftMap,
            BackendKind::Iptables,
            BackendKind::Ebpf,
        ]
        .into_iter()
        .map(|k| (backend_key(k), portmap::backend_with(k, &pm, &ebpf)))
        .collect();
        Self {
            config,
            netns_dir: run_dir.join("netns"),
            backends,
        }
    }

    /// Where the `ebpf` backend pins its data plane (present once it was set up).
    pub fn ebpf_pin_dir(&self) -> PathBuf {
        portmap::ebpf::pin_dir(
            &portmap::ebpf::EbpfOptions::default().pin_root,
            &self.config.table,
        )
    }

    fn backend(&self, kind: BackendKind) -> &dyn Backend {
        self.backends[backend_key(kind)].as_ref()
    }

    /// Path of a container's network namespace file.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.netns_dir.join(id)
    }

    /// Picks the lowest free address of the subnet (the gateway excluded).
    pub fn allocate(&self, used: &HashSet<Ipv4Addr>) -> Result<Ipv4Addr, NetError> {
        let gw = self.config.gateway();
        self.config
            .subnet
            .hosts()
            .find(|ip| *ip != gw && !used.contains(ip))
            .ok_or(NetError::Exhausted {
                subnet: self.config.subnet,
            })
    }

    /// Creates the container's namespace and wires it for `spec`; idempotent, so a restart
    /// after a crash completes a half-done attach.
    pub fn attach(&self, id: &str, spec: &NetworkSpec) -> Result<(), NetError> {
        if spec.mode == NetworkMode::Host {
            return Ok(());
        }
        let ns = self.netns_path(id);
        if !crate::fsutil::is_mounted(&ns) {
            link::create_netns(&ns)?;
        }
        link::loopback_up(&ns)?;
        if spec.mode == NetworkMode::None {
            return Ok(());
        }
        let ip = spec.ip.ok_or_else(|| NetError::NoAddress {
            container: id.to_owned(),
        })?;
        let gw = self.config.gateway();
        let bridge = link::ensure_bridge(&self.config.bridge, gw, self.config.subnet.prefix_len())?;
        portmap::ensure_sysctls(&self.config.bridge)?;
        link::attach_veth(
            &host_veth(id),
            &peer_veth(id),
            bridge,
            &ns,
            ip,
            self.config.subnet.prefix_len(),
            gw,
        )?;
        if let Some(kind) = spec.port_backend
            && !spec.publish.is_empty()
        {
            let b = self.backend(kind);
            b.setup()?;
            // Idempotent: a half-done add from before a crash is replaced.
            b.remove(id)?;
            b.add(id, ip, &spec.publish)?;
        }
        Ok(())
    }

    /// Removes what `attach` made for the container; absent parts are fine.
    pub fn detach(&self, id: &str) {
        for b in self.backends.values() {
            if let Err(e) = b.remove(id) {
                warn!(container = %id, backend = ?b.kind(), error = %e, "removing port mappings failed");
            }
        }
        if let Err(e) = link::delete_link(&host_veth(id)) {
            warn!(container = %id, error = %e, "removing the veth failed");
        }
        let ns = self.netns_path(id);
        if let Err(e) = link::remove_netns(&ns) {
            warn!(container = %id, error = %e, "removing the network namespace failed");
        }
    }

    /// Removes veths, netns files and port mappings of containers not in `known` (crash
    /// leftovers); touches nothing that is not berth's.
    pub fn reconcile(&self, known: &HashSet<String>) {
        let short: HashSet<String> = known.iter().map(|id| host_veth(id)).collect();
        match link::links_with_prefix("vb") {
            Ok(links) => {
                for l in links {
                    let on_bridge = l.1.as_deref() == Some(self.config.bridge.as_str());
                    if on_bridge && !short.contains(&l.0) {
                        info!(link = %l.0, "removing a leftover veth");
                        let _ = link::delete_link(&l.0);
                    }
                }
            }
            Err(e) => warn!(error = %e, "listing links failed"),
        }
        if let Ok(entries) = fs::read_dir(&self.netns_dir) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if !known.contains(&id) {
                    info!(netns = %id, "removing a leftover network namespace");
                    let _ = link::remove_netns(&e.path());
                }
            }
        }
        for b in self.backends.values() {
            match b.owners() {
                Ok(owners) => {
                    for o in owners.into_iter().filter(|o| !known.contains(o)) {
                        info!(owner = %o, backend = ?b.kind(), "removing leftover port mappings");
                        let _ = b.remove(&o);
                    }
                }
                Err(e) => warn!(backend = ?b.kind(), error = %e, "listing port mappings failed"),
            }
        }
    }

    /// Removes the bridge, the nft table and the iptables chains (agent shutdown with no
    /// container left).
    pub fn teardown(&self) {
        for b in self.backends.values() {
            if let Err(e) = b.teardown() {
                warn!(backend = ?b.kind(), error = %e, "removing port-mapping rules failed");
            }
        }
        if let Err(e) = link::delete_link(&self.config.bridge) {
            warn!(bridge = %self.config.bridge, error = %e, "removing the bridge failed");
        }
        let _ = fs::remove_dir(&self.netns_dir);
    }
}

/// Host ports (proto, port) that sockets of the host's namespace are bound to, from
/// /proc/net/{tcp,udp}: berth refuses to publish over them.
pub fn ports_in_use() -> HashSet<(portmap::Proto, u16)> {
    let mut out = HashSet::new();
    for (file, proto) in [
        ("/proc/net/tcp", portmap::Proto::Tcp),
        ("/proc/net/tcp6", portmap::Proto::Tcp),
        ("/proc/net/udp", portmap::Proto::Udp),
        ("/proc/net/udp6", portmap::Proto::Udp),
    ] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut f = line.split_whitespace();
            let (Some(local), Some(_remote), Some(state)) = (f.nth(1), f.next(), f.next()) else {
                continue;
            };
            // TCP: only listening sockets (0A); UDP: every bound socket (07 = unconnected).
            if proto == portmap::Proto::Tcp && state != "0A" {
                continue;
            }
            if let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                out.insert((proto, port));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_modes_parse_and_refuse_others() {
        assert_eq!("bridge".parse(), Ok(NetworkMode::Bridge));
        assert_eq!("host".parse(), Ok(NetworkMode::Host));
        assert_eq!("none".parse(), Ok(NetworkMode::None));
        let e = "overlay".parse::<NetworkMode>().unwrap_err();
        assert!(e.contains("expected bridge, host or none"), "{e}");
    }

    #[test]
    fn veth_names_fit_the_kernel_limit() {
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(host_veth(&id), "vb0123456789a");
        assert!(host_veth(&id).len() <= 15);
        assert!(peer_veth(&id).len() <= 15);
    }

    #[test]
    fn allocation_skips_the_gateway_and_used_addresses() {
        let c = NetworkConfig {
            subnet: "10.9.0.0/29".parse().unwrap(),
            ..Default::default()
        };
        let n = Network::new(c, Path::new("/nonexistent"), None);
        let mut used = HashSet::new();
        let a = n.allocate(&used).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2));
        used.insert(a);
        assert_eq!(n.allocate(&used).unwrap(), Ipv4Addr::new(10, 9, 0, 3));
        for i in 2..=6 {
            used.insert(Ipv4Addr::new(10, 9, 0, i));
        }
        assert!(matches!(n.allocate(&used), Err(NetError::Exhausted { .. })));
    }

    #[test]
    fn config_validation_names_the_key() {
        let c = NetworkConfig {
            bridge: "a-very-long-bridge-name".into(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "network.bridge");
        let c = NetworkConfig {
            subnet: "10.0.0.0/30".parse().unwrap(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "network.subnet");
        let c = NetworkConfig {
            table: "bad table".into(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "network.table");
        assert!(NetworkConfig::default().validate().is_ok());
    }
}
