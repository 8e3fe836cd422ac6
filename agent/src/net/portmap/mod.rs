//! Published ports (`-p [IP:]HOST[-HOST2]:CTR[-CTR2][/udp|/tcp]`) and the two backends that
//! program them into the kernel.
//!
//! Why two: Docker writes three iptables rules per published port, so every new flow walks a
//! chain whose length grows with the number of ports (PLATFORM.md measured ~1 ms of CPU per
//! new-flow packet at 10,000 iptables-nft rules, against ~11 µs for one nft map lookup). A media
//! server that needs 20,000 UDP ports cannot live with that.
//!
//! - [`BackendKind::NftMap`] (default, [`nft`]): one nftables table `ip <table>` owned by berth.
//!   Published ports are elements of ONE map keyed by (L4 protocol, port), plus one keyed by
//!   (host address, protocol, port) for `-p IP:...`; the rules never change when ports are added,
//!   so per-packet cost stays flat. Every change is one `nft -f -` transaction.
//! - [`BackendKind::Iptables`] ([`iptables`]): Docker 20.10's per-port rules (DNAT, hairpin
//!   MASQUERADE, filter ACCEPT), kept to reproduce and measure the problem. Loaded with
//!   `iptables-restore --noflush`, one transaction per table per change.
//!
//! Both record the owner (a container id) next to what they create, so [`Backend::owners`] can
//! tell after a crash what is still programmed and berth can remove owners it no longer knows.
//!
//! Host changes and who removes them:
//! - the nft table / the iptables chains and the jumps from built-in chains: [`Backend::teardown`]
//!   (per container: [`Backend::remove`]);
//! - sysctls ([`ensure_sysctls`]): `net.ipv4.ip_forward=1` and
//!   `net.ipv4.conf.<bridge>.route_localnet=1`. They are left on when berth stops: turning
//!   forwarding off could cut traffic that other software on the host routes. The second one dies
//!   with the bridge.
//!
//! Host-local clients (`curl 127.0.0.1:8080`) are DNATed in the output hook. A packet from
//! 127.0.0.1 may only leave through an interface with `route_localnet=1` (else `sendto` fails with
//! EINVAL), so berth sets it on its bridge, masquerades 127.0.0.0/8 sources going out of the
//! bridge (the container could not answer 127.0.0.1), and drops packets arriving from the bridge
//! for 127.0.0.0/8 that are not replies of such a flow (`route_localnet` would otherwise let
//! containers reach host services bound to loopback: CVE-2020-8558,
//! <https://github.com/kubernetes/kubernetes/issues/90259>).
//!
//! Hairpin (a container reaching a published port through a host address) is masqueraded to the
//! bridge address so replies come back through the host. When `br_netfilter` is loaded with
//! `net.bridge.bridge-nf-call-iptables=1` (the Debian default once Docker ran), the DNATed packet is
//! bridged, not routed, back to the port it came from; the bridge drops it unless that port has
//! hairpin mode on (`ip link set <veth> type bridge_slave hairpin on`, Docker does the same with
//! its userland proxy off). Setting it is the bridge code's job when it attaches a veth.
//!
//! Changes are serialised inside each backend; callers check the whole set of publishes with
//! [`check_conflicts`] against their store, and `add` re-checks against what the kernel holds.

pub mod ebpf;
mod exec;
pub mod iptables;
pub mod nft;
mod publish;
#[cfg(test)]
mod tests;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::Serialize;

pub use publish::{PortRange, Proto, Publish, PublishError, check_conflicts, parse_publish};

/// Default nft table name (and, uppercased, iptables chain prefix).
pub const DEFAULT_TABLE: &str = "berth";

/// Longest accepted owner (container ids are 64 hex digits; nft comments hold up to 128 bytes).
pub const MAX_OWNER_LEN: usize = 64;

/// Longest accepted table name: the iptables chains `<TABLE>-D-<12 hex>` must fit in 28 bytes.
pub const MAX_TABLE_LEN: usize = 12;

/// Longest name of a table that only nft uses (the `ebpf` backend's slow path).
pub const MAX_NFT_TABLE_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PortmapError {
    #[error("-p {value}: {source}")]
    Publish { value: String, source: PublishError },
    #[error(
        "-p {new} overlaps -p {existing}: both publish {proto} port {port} on {addr}",
        proto = new.proto,
        addr = overlap_addr(new.host_ip, existing.host_ip)
    )]
    Conflict {
        new: Publish,
        existing: Publish,
        port: u16,
    },
    #[error(
        "-p {publish}: {proto} port {port} on {addr} is already published by {owner:?}; remove \
         that container or choose another host port",
        proto = publish.proto,
        addr = overlap_addr(publish.host_ip, *host_ip)
    )]
    AlreadyMapped {
        publish: Publish,
        port: u16,
        host_ip: Option<Ipv4Addr>,
        owner: String,
    },
    #[error(
        "invalid owner {owner:?}: use 1 to {MAX_OWNER_LEN} characters [a-zA-Z0-9_.-], starting \
         with a letter or digit (a container id)"
    )]
    InvalidOwner { owner: String },
    #[error("invalid port-mapping setting {field} = {value:?}: {expected}")]
    InvalidConfig {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "container address {container_ip} is outside the bridge subnet {subnet}; published ports \
         lead to containers on berth's bridge only"
    )]
    ContainerOutsideSubnet {
        container_ip: Ipv4Addr,
        subnet: ipnet::Ipv4Net,
    },
    #[error("cannot run {command}: {source}; {hint}")]
    Spawn {
        command: String,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot read the output of {command}: {source}")]
    Json {
        command: String,
        source: serde_json::Error,
    },
    #[error("unexpected output from {command}: {what} in {excerpt:?}")]
    Unparsable {
        command: String,
        what: &'static str,
        excerpt: String,
    },
    #[error(
        "the {backend} port-mapping backend is not set up here ({missing} is missing); berth \
         sets it up when the agent starts"
    )]
    NotSetUp {
        backend: BackendKind,
        missing: String,
    },
    #[error("eBPF port mapping: {op}: {reason}")]
    Bpf { op: String, reason: String },
    #[error("cannot set sysctl {path}: {source}")]
    Sysctl {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PortmapError {
    /// Whether the error is about the user's input (a bad or conflicting -p) rather than the
    /// host (a failing nft or iptables).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            PortmapError::Publish { .. }
                | PortmapError::Conflict { .. }
                | PortmapError::AlreadyMapped { .. }
                | PortmapError::InvalidOwner { .. }
                | PortmapError::InvalidConfig { .. }
                | PortmapError::ContainerOutsideSubnet { .. }
        )
    }
}

fn overlap_addr(a: Option<Ipv4Addr>, b: Option<Ipv4Addr>) -> String {
    match a.or(b) {
        Some(ip) => ip.to_string(),
        None => "every host address".to_owned(),
    }
}

pub use crate::model::net::BackendKind;

/// Where the backends put their rules and which traffic they treat as berth's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortmapConfig {
    /// nft table name (family `ip`), default [`DEFAULT_TABLE`]; uppercased, the prefix of the
    /// iptables chains (`BERTH`, `BERTH-POSTROUTING`, ...). `[a-z][a-z0-9_-]*`, at most
    /// [`MAX_TABLE_LEN`] characters.
    pub table: String,
    /// berth's bridge interface, e.g. `berth0`.
    pub bridge: String,
    /// The containers' subnet on that bridge (masqueraded when leaving through other interfaces).
    pub subnet: ipnet::Ipv4Net,
}

impl PortmapConfig {
    /// A config with the default table name.
    pub fn new(bridge: impl Into<String>, subnet: ipnet::Ipv4Net) -> Self {
        PortmapConfig {
            table: DEFAULT_TABLE.to_owned(),
            bridge: bridge.into(),
            subnet: subnet.trunc(),
        }
    }

    /// Refuses names that nft or iptables would reject or that could break out of the generated
    /// text (quotes, spaces, newlines).
    pub fn validate(&self) -> Result<(), PortmapError> {
        self.validate_up_to(MAX_TABLE_LEN)
    }

    /// [`PortmapConfig::validate`] for a table that has no iptables chains (nft only): names up
    /// to [`MAX_NFT_TABLE_LEN`].
    pub fn validate_nft(&self) -> Result<(), PortmapError> {
        self.validate_up_to(MAX_NFT_TABLE_LEN)
    }

    fn validate_up_to(&self, max: usize) -> Result<(), PortmapError> {
        let t = &self.table;
        let table_ok = t.len() <= max
            && t.starts_with(|c: char| c.is_ascii_lowercase())
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !table_ok {
            return Err(PortmapError::InvalidConfig {
                field: "table",
                value: t.clone(),
                expected: "1 to 12 characters (32 for an nft-only table) [a-z0-9_-] starting \
                           with a letter",
            });
        }
        validate_ifname(&self.bridge).map_err(|expected| PortmapError::InvalidConfig {
            field: "bridge",
            value: self.bridge.clone(),
            expected,
        })
    }

    /// Prefix of the iptables chains: the table name uppercased.
    pub fn chain_prefix(&self) -> String {
        self.table.to_ascii_uppercase()
    }
}

pub(crate) fn validate_ifname(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err("an interface name: 1 to 15 characters [a-zA-Z0-9_.-]")
    }
}

/// One published host port as the kernel holds it now.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Mapping {
    /// The container id recorded when it was added ("" if the element carries none).
    pub owner: String,
    pub proto: Proto,
    /// `None` = every host address.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
}

/// A way of programming published ports into the kernel. Methods act in the network namespace
/// of the calling thread (the tools they run inherit it) and block while nft or iptables run
/// (up to seconds for tens of thousands of ports): call them from `spawn_blocking` in async code.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// Creates the table/chains and base rules (masquerade of the subnet going out, hairpin,
    /// host-local, forward accept). Idempotent; never touches existing mappings.
    fn setup(&self) -> Result<(), PortmapError>;
    /// Publishes `publish` to `container_ip`, recording `owner`. All or nothing: fails with
    /// [`PortmapError::AlreadyMapped`] if any host port is already published (by anyone) on the
    /// same or a wildcard address, and then changes nothing.
    fn add(
        &self,
        owner: &str,
        container_ip: Ipv4Addr,
        publish: &[Publish],
    ) -> Result<(), PortmapError>;
    /// Removes everything of `owner`; fine if it has nothing.
    fn remove(&self, owner: &str) -> Result<(), PortmapError>;
    /// Owners that have mappings now, sorted (for reconciliation after a crash).
    fn owners(&self) -> Result<Vec<String>, PortmapError>;
    /// Every published host port now, sorted (for `berth ports` and diagnosis).
    fn mappings(&self) -> Result<Vec<Mapping>, PortmapError>;
    /// Removes the whole table/chains and the jumps to them; fine if absent.
    fn teardown(&self) -> Result<(), PortmapError>;
}

/// The backend of `kind` for `config` (the `ebpf` one with `ebpf`'s options). Nothing is
/// checked or created until a method is called.
pub fn backend_with(
    kind: BackendKind,
    config: &PortmapConfig,
    ebpf: &ebpf::EbpfOptions,
) -> Box<dyn Backend> {
    match kind {
        BackendKind::NftMap => Box::new(nft::NftMap::new(config.clone())),
        BackendKind::Iptables => Box::new(iptables::Iptables::new(config.clone())),
        BackendKind::Ebpf => Box::new(ebpf::Ebpf::new(config.clone(), ebpf.clone())),
    }
}

/// Whether a backend works on this host, as found at start-up (`/api/v1/system`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackendSupport {
    pub backend: BackendKind,
    pub available: bool,
    /// What was checked, or why it does not work.
    pub detail: String,
}

/// Checks each backend's prerequisites without changing the host: the tools of `nft-map`
/// and `iptables` on PATH; for `ebpf`, bpffs, and the kernel accepting its programs (loaded
/// and verified, then dropped: nothing attached).
pub fn detect_support() -> Vec<BackendSupport> {
    let tool = |backend, name: &str| {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
            .unwrap_or(false);
        BackendSupport {
            backend,
            available: found,
            detail: if found {
                format!("{name} found")
            } else {
                format!("{name} not found on PATH")
            },
        }
    };
    let ebpf = match ebpf::check_support() {
        Ok(detail) => BackendSupport {
            backend: BackendKind::Ebpf,
            available: true,
            detail,
        },
        Err(detail) => BackendSupport {
            backend: BackendKind::Ebpf,
            available: false,
            detail,
        },
    };
    vec![
        tool(BackendKind::NftMap, "nft"),
        tool(BackendKind::Iptables, "iptables-restore"),
        ebpf,
    ]
}

/// [`backend_with`] the default `ebpf` options.
pub fn backend(kind: BackendKind, config: &PortmapConfig) -> Box<dyn Backend> {
    backend_with(kind, config, &ebpf::EbpfOptions::default())
}

/// Turns on what published ports need, in the calling thread's network namespace:
/// `net.ipv4.ip_forward=1` (containers sit behind the host) and
/// `net.ipv4.conf.<bridge>.route_localnet=1` (so 127.0.0.1 can be DNATed to a container; see the
/// module header for the guard rule against its abuse). The bridge must exist. Both are host
/// changes that stay on when berth stops; the second goes away with the bridge.
pub fn ensure_sysctls(bridge: &str) -> Result<(), PortmapError> {
    ensure_sysctls_at(Path::new("/proc/sys"), bridge)
}

fn ensure_sysctls_at(root: &Path, bridge: &str) -> Result<(), PortmapError> {
    validate_ifname(bridge).map_err(|expected| PortmapError::InvalidConfig {
        field: "bridge",
        value: bridge.to_owned(),
        expected,
    })?;
    for rel in [
        "net/ipv4/ip_forward".to_owned(),
        format!("net/ipv4/conf/{bridge}/route_localnet"),
    ] {
        let path = root.join(rel);
        let current = std::fs::read_to_string(&path).map_err(|source| PortmapError::Sysctl {
            path: path.clone(),
            source,
        })?;
        if current.trim() != "1" {
            std::fs::write(&path, "1\n").map_err(|source| PortmapError::Sysctl {
                path: path.clone(),
                source,
            })?;
            tracing::info!(sysctl = %path.display(), "set to 1 for published ports");
        }
    }
    Ok(())
}

/// Owners end up inside nft strings and iptables comments: keep them to a safe alphabet.
fn validate_owner(owner: &str) -> Result<(), PortmapError> {
    let ok = owner.len() <= MAX_OWNER_LEN
        && owner.starts_with(|c: char| c.is_ascii_alphanumeric())
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(PortmapError::InvalidOwner {
            owner: owner.to_owned(),
        })
    }
}

/// The checks every `add` makes before touching the kernel: valid owner and config, container on
/// the bridge subnet, publishes valid and disjoint, none overlapping what is mapped now.
fn check_add(
    config: &PortmapConfig,
    owner: &str,
    container_ip: Ipv4Addr,
    publish: &[Publish],
    current: &[Mapping],
) -> Result<(), PortmapError> {
    validate_owner(owner)?;
    if !config.subnet.contains(&container_ip) {
        return Err(PortmapError::ContainerOutsideSubnet {
            container_ip,
            subnet: config.subnet,
        });
    }
    check_conflicts(publish, &[])?;
    for p in publish {
        for m in current {
            let same_ip = match (p.host_ip, m.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if m.proto == p.proto && same_ip && (p.host.start..=p.host.end).contains(&m.host_port) {
                return Err(PortmapError::AlreadyMapped {
                    publish: p.clone(),
                    port: m.host_port,
                    host_ip: m.host_ip,
                    owner: m.owner.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Sorted, deduplicated owners of `mappings` (elements without an owner left out).
fn owners_of(mappings: &[Mapping]) -> Vec<String> {
    let mut owners: Vec<String> = mappings
        .iter()
        .filter(|m| !m.owner.is_empty())
        .map(|m| m.owner.clone())
        .collect();
    owners.sort();
    owners.dedup();
    owners
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn config() -> PortmapConfig {
        PortmapConfig::new("berth0", "10.88.0.0/16".parse().unwrap())
    }

    #[test]
    fn backend_names_parse_as_they_display_and_others_are_refused() {
        for kind in [
            BackendKind::NftMap,
            BackendKind::Iptables,
            BackendKind::Ebpf,
        ] {
            assert_eq!(kind.to_string().parse::<BackendKind>(), Ok(kind));
        }
        let e = "xdp".parse::<BackendKind>().unwrap_err();
        assert!(e.contains("nft-map, iptables or ebpf"), "{e}");
    }

    #[test]
    fn the_default_table_is_berth_and_its_chain_prefix_is_uppercase() {
        let c = config();
        assert_eq!(c.table, "berth");
        assert_eq!(c.chain_prefix(), "BERTH");
        c.validate().unwrap();
    }

    #[test]
    fn names_that_could_escape_generated_text_are_refused() {
        for table in [
            "",
            "Berth",
            "be rth",
            "berth\"",
            "a-very-long-table",
            "1berth",
        ] {
            let c = PortmapConfig {
                table: table.into(),
                ..config()
            };
            assert!(c.validate().is_err(), "table {table:?}");
        }
        for bridge in ["", "br\"0", "br 0", "a-name-too-long-1", "..", "br/0"] {
            let c = PortmapConfig {
                bridge: bridge.into(),
                ..config()
            };
            assert!(c.validate().is_err(), "bridge {bridge:?}");
        }
        for owner in ["", "-x", "a\"b", "a b", "a\nb", &"a".repeat(65)] {
            assert!(validate_owner(owner).is_err(), "owner {owner:?}");
        }
        validate_owner(&"0f".repeat(32)).unwrap();
        validate_owner("web-1.a_b").unwrap();
    }

    #[test]
    fn backend_kinds_serialize_in_kebab_case_and_default_to_the_map() {
        assert_eq!(BackendKind::default(), BackendKind::NftMap);
        assert_eq!(
            serde_json::to_string(&BackendKind::NftMap).unwrap(),
            "\"nft-map\""
        );
        assert_eq!(
            serde_json::from_str::<BackendKind>("\"iptables\"").unwrap(),
            BackendKind::Iptables
        );
        assert_eq!(BackendKind::NftMap.to_string(), "nft-map");
        assert_eq!(serde_json::to_string(&Proto::Udp).unwrap(), "\"udp\"");
    }

    #[test]
    fn add_refuses_ports_already_mapped_on_the_same_or_a_wildcard_address() {
        let ip = Ipv4Addr::new(10, 88, 0, 2);
        let current = vec![Mapping {
            owner: "a".into(),
            proto: Proto::Udp,
            host_ip: None,
            host_port: 5000,
            container_ip: ip,
            container_port: 5000,
        }];
        let p = parse_publish("127.0.0.1:4990-5010:4990-5010/udp").unwrap();
        let e = check_add(&config(), "b", ip, &[p], &current).unwrap_err();
        assert_eq!(
            e.to_string(),
            "-p 127.0.0.1:4990-5010:4990-5010/udp: udp port 5000 on 127.0.0.1 is already \
             published by \"a\"; remove that container or choose another host port"
        );
        let tcp = parse_publish("5000:5000/tcp").unwrap();
        check_add(&config(), "b", ip, std::slice::from_ref(&tcp), &current).unwrap();
        let e = check_add(
            &config(),
            "b",
            Ipv4Addr::new(10, 99, 0, 2),
            &[tcp],
            &current,
        );
        assert!(matches!(
            e,
            Err(PortmapError::ContainerOutsideSubnet { .. })
        ));
    }

    #[test]
    fn sysctls_are_written_only_when_not_already_on() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net/ipv4/conf/bpm0");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(dir.path().join("net/ipv4/ip_forward"), "0\n").unwrap();
        std::fs::write(conf.join("route_localnet"), "1\n").unwrap();
        ensure_sysctls_at(dir.path(), "bpm0").unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&dir.path().join("net/ipv4/ip_forward")), "1\n");
        assert_eq!(read(&conf.join("route_localnet")), "1\n");
        let e = ensure_sysctls_at(dir.path(), "nobridge").unwrap_err();
        assert!(e.to_string().contains("nobridge/route_localnet"), "{e}");
        assert!(ensure_sysctls_at(dir.path(), "../x").is_err());
    }
}
