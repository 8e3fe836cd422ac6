//! A container's network as the snapshot and the store hold it: mode, address, published
//! port ranges (`-p`, Docker's syntax; parsed in `net::portmap::publish`) and their backend.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use serde::{Deserialize, Serialize};

/// `--network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Bridge,
    Host,
    None,
}

impl std::str::FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bridge" => Ok(Self::Bridge),
            "host" => Ok(Self::Host),
            "none" => Ok(Self::None),
            _ => Err(format!("{s:?}: expected bridge, host or none")),
        }
    }
}

/// A container's network, decided at create and kept in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(default)]
pub struct NetworkSpec {
    pub mode: NetworkMode,
    /// Address on berth's bridge (bridge mode).
    #[schema(value_type = Option<String>)]
    pub ip: Option<Ipv4Addr>,
    pub publish: Vec<Publish>,
    /// Backend of the published ports (bridge mode with ports).
    pub port_backend: Option<BackendKind>,
}

/// Which backend programs published ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// One nftables map lookup per new flow, whatever the number of ports.
    #[default]
    NftMap,
    /// Docker's per-port iptables rules, for comparison and diagnosis.
    Iptables,
    /// eBPF programs that rewrite and redirect past netfilter and conntrack (host-networking
    /// cost); the nft-map rules of a table of its own take what they decline.
    Ebpf,
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nft-map" => Ok(BackendKind::NftMap),
            "iptables" => Ok(BackendKind::Iptables),
            "ebpf" => Ok(BackendKind::Ebpf),
            _ => Err(format!("{s:?}: expected nft-map, iptables or ebpf")),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::NftMap => "nft-map",
            BackendKind::Iptables => "iptables",
            BackendKind::Ebpf => "ebpf",
        })
    }
}

/// Transport protocol of a published port.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number (6 TCP, 17 UDP), as the probes report it.
    pub fn ip_proto(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// The name nft and iptables use (`tcp`, `udp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = PublishError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(PublishError::UnknownProto {
                proto: s.to_owned(),
            }),
        }
    }
}

/// An inclusive port range, `start <= end`, `start >= 1`. A single port has `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    /// A checked range: refuses port 0 and `start > end`.
    pub fn new(start: u16, end: u16) -> Result<Self, PublishError> {
        if start == 0 || end == 0 {
            return Err(PublishError::PortZero);
        }
        if start > end {
            return Err(PublishError::ReversedRange { start, end });
        }
        Ok(PortRange { start, end })
    }

    /// A range of one port.
    pub fn single(port: u16) -> Result<Self, PublishError> {
        Self::new(port, port)
    }

    /// Number of ports in the range (1..=65535).
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Always false for a checked range; present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }

    /// Whether the two ranges share at least one port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The ports, in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + use<> {
        self.start..=self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// One `-p` flag: host ports (optionally on one host address) mapped to container ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Publish {
    /// `None` = every host address (Docker's `0.0.0.0`).
    #[schema(value_type = Option<String>)]
    pub host_ip: Option<Ipv4Addr>,
    pub host: PortRange,
    /// Same length as `host`.
    pub container: PortRange,
    pub proto: Proto,
}

impl Publish {
    /// Whether this mapping publishes host `port` for the IP protocol number `ip_proto`
    /// (6 TCP, 17 UDP), as the probes report them.
    pub fn covers(&self, ip_proto: u8, port: u16) -> bool {
        self.proto.ip_proto() == ip_proto && (self.host.start..=self.host.end).contains(&port)
    }

    /// Number of ports (= map elements for nft-map, = rule triples for iptables).
    pub fn len(&self) -> u32 {
        self.host.len()
    }

    /// Always false for a parsed publish; present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    /// Each (host port, container port) pair, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + use<> {
        self.host.iter().zip(self.container.iter())
    }

    /// The first host port that `self` and `other` both publish for the same protocol on the same
    /// (or a wildcard) host address.
    pub fn overlap(&self, other: &Publish) -> Option<u16> {
        let same_ip = match (self.host_ip, other.host_ip) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        (self.proto == other.proto && same_ip && self.host.overlaps(&other.host))
            .then(|| self.host.start.max(other.host.start))
    }

    pub fn check(&self) -> Result<(), PublishError> {
        if self.host.start == 0 || self.container.start == 0 {
            return Err(PublishError::PortZero);
        }
        for r in [self.host, self.container] {
            if r.start > r.end {
                return Err(PublishError::ReversedRange {
                    start: r.start,
                    end: r.end,
                });
            }
        }
        if self.host.len() != self.container.len() {
            return Err(PublishError::LengthMismatch {
                host: self.host.len(),
                container: self.container.len(),
            });
        }
        Ok(())
    }
}

/// Docker syntax: `[IP:]HOST[-HOST2]:CTR[-CTR2][/proto]`.
impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(f, "{}:{}/{}", self.host, self.container, self.proto)
    }
}

/// Why a `-p` value is not valid; `net::portmap::PortmapError::Publish` adds the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("empty value; expected [IP:]HOST[-HOST2]:CTR[-CTR2][/udp|/tcp], e.g. 8080:80")]
    Empty,
    #[error(
        "missing host port; berth needs HOST:CTR (it never picks a host port for you), e.g. \
         {example}"
    )]
    MissingHostPort { example: String },
    #[error("too many ':'-separated parts; expected [IP:]HOST[-HOST2]:CTR[-CTR2][/udp|/tcp]")]
    TooManyParts,
    #[error("unknown protocol {proto}; use tcp or udp")]
    UnknownProto { proto: String },
    #[error("{text:?} is not a port number (1-65535)")]
    NotAPort { text: String },
    #[error("port {port} is out of range; ports go from 1 to 65535")]
    PortTooLarge { port: u64 },
    #[error("port 0 cannot be published; ports go from 1 to 65535")]
    PortZero,
    #[error("range {start}-{end} is reversed; write the lower port first")]
    ReversedRange { start: u16, end: u16 },
    #[error(
        "host range has {host} ports but container range has {container}; they must have the \
         same length"
    )]
    LengthMismatch { host: u32, container: u32 },
    #[error("host address {text:?} is not an IPv4 address")]
    BadIp { text: String },
    #[error("host address {text:?} is IPv6; berth publishes on IPv4 addresses only")]
    Ipv6 { text: String },
}

/// One published port as engines list them: (protocol, host address, host port, container
/// port); `None` is every address.
pub type PortBinding = (Proto, Option<Ipv4Addr>, u16, u16);

/// Single-port bindings as ranges: consecutive host ports mapped to consecutive container
/// ports, with the same protocol and host address, become one [`Publish`]. Sorted, duplicates
/// once; port 0 (not a published port) is left out.
pub fn group_bindings(bindings: impl IntoIterator<Item = PortBinding>) -> Vec<Publish> {
    let mut sorted: Vec<PortBinding> = bindings
        .into_iter()
        .filter(|&(_, _, host, container)| host != 0 && container != 0)
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<Publish> = Vec::new();
    for (proto, host_ip, host, container) in sorted {
        if let Some(last) = out.last_mut()
            && last.proto == proto
            && last.host_ip == host_ip
            && u32::from(last.host.end) + 1 == u32::from(host)
            && u32::from(last.container.end) + 1 == u32::from(container)
        {
            last.host.end = host;
            last.container.end = container;
            continue;
        }
        out.push(Publish {
            host_ip,
            host: PortRange {
                start: host,
                end: host,
            },
            container: PortRange {
                start: container,
                end: container,
            },
            proto,
        });
    }
    out
}

/// What the `ebpf` port-mapping data plane did, cumulative since it was loaded (its counters
/// are pinned, so they outlive agent restarts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EbpfPortmap {
    /// Packets by path (`fast`: rewritten and redirected past netfilter; `slow`: declined and
    /// left to the nft slow path) and reason.
    pub packets: Vec<EbpfPackets>,
    /// Run time of each of its programs, from the kernel's BPF statistics (empty when they are
    /// off: `probes.run_stats`).
    pub programs: Vec<EbpfProgramRun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EbpfPackets {
    pub path: &'static str,
    pub reason: &'static str,
    pub packets: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EbpfProgramRun {
    /// `forward`, `reply`, `connect4`, `sendmsg4`, `recvmsg4` or `getpeername4`.
    pub program: &'static str,
    pub seconds: f64,
    pub runs: u64,
}

impl EbpfPortmap {
    /// Mean run time of the forward program per packet (its cost per mapped packet), ns.
    pub fn forward_ns_per_packet(&self) -> Option<f64> {
        self.programs
            .iter()
            .find(|p| p.program == "forward" && p.runs > 0)
            .map(|p| p.seconds * 1e9 / p.runs as f64)
    }
}
