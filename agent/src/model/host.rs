//! Host-wide facts in the snapshot: connection tracking and userland port-mapping proxies.

use serde::Serialize;

/// Host-wide conntrack state; counters are cumulative since the module loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ConntrackStats {
    pub entries: u64,
    pub max: u64,
    pub found: u64,
    pub new: u64,
    pub invalid: u64,
    pub insert: u64,
    pub insert_failed: u64,
    pub drop: u64,
    pub early_drop: u64,
    pub search_restart: u64,
}

/// What the proxies on this host use, summed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ProxyStats {
    pub processes: u64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// CPU time used since each started (user + system), seconds.
    pub cpu_seconds: f64,
}

/// What a container's published ports cost the host outside berth's own backends: per-port
/// firewall rules that point at its address, and the userland proxies that forward to it
/// (Docker's way). Counted for other engines' containers; empty for berth's (its backend is
/// in `network.port_backend`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PortMapping {
    /// iptables rules (nft and legacy, every table) that match on or NAT to its address;
    /// `None` when the ruleset could not be read.
    pub rules: Option<u64>,
    /// The proxy processes forwarding to its address.
    pub proxies: ProxyStats,
}

impl PortMapping {
    /// Nothing counted: no rules, no proxies.
    pub fn is_empty(&self) -> bool {
        self.rules.unwrap_or(0) == 0 && self.proxies.processes == 0
    }
}
