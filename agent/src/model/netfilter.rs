//! Netfilter cost as the snapshot holds it: per (family, hook, conntrack state, protocol,
//! original destination port) for published ports, per (family, hook, conntrack state) for
//! every other packet, and per hook, cumulative packets and nanoseconds. The netfilter probe
//! (`probes::netfilter`) fills it; [`super::ports`] attributes it to containers.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];
}

/// `enum nf_inet_hooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::Prerouting,
        Hook::Input,
        Hook::Forward,
        Hook::Output,
        Hook::Postrouting,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// Conntrack state of a packet when it left the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CtState {
    /// First packet(s) of a connection, before the peer answered.
    New,
    /// Original direction of a connection the peer answered.
    Established,
    /// The peer's direction (established or related).
    Reply,
    /// Related (ICMP errors, expectations), untracked, or no conntrack at all.
    Other,
}

impl CtState {
    pub fn name(self) -> &'static str {
        match self {
            CtState::New => "new",
            CtState::Established => "established",
            CtState::Reply => "reply",
            CtState::Other => "other",
        }
    }
}

/// Cost of one (family, hook, conntrack state, protocol, port), cumulative since load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PortCost {
    pub family: Family,
    /// IP protocol number: 6 TCP, 17 UDP, ...
    pub proto: u8,
    /// See the module header: original destination port before NAT; 0 without ports.
    pub port: u16,
    pub hook: Hook,
    pub ct_state: CtState,
    pub packets: u64,
    /// Time spent in netfilter on that hook, summed over the packets.
    pub nanoseconds: u64,
}

/// Every packet of a hook, published port or not, cumulative since load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HookTotal {
    pub family: Family,
    pub hook: Hook,
    pub packets: u64,
    pub nanoseconds: u64,
}

/// Packets to ports no container publishes (and without ports), per (family, hook, conntrack
/// state), cumulative since load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OtherCost {
    pub family: Family,
    pub hook: Hook,
    pub ct_state: CtState,
    pub packets: u64,
    pub nanoseconds: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct NetfilterSample {
    /// Published (protocol, port) pairs only, sorted by family, hook, protocol, port,
    /// conntrack state.
    pub by_port: Vec<PortCost>,
    /// Everything else, one row per (family, hook, conntrack state) that saw packets, sorted.
    pub other: Vec<OtherCost>,
    /// Per family, the prerouting cost of the new packets of `other` that were then delivered
    /// locally (reached input): with `other`'s input/new row, a new flow to the host's own
    /// services. `hook` is always prerouting.
    pub local_prerouting: Vec<HookTotal>,
    /// One per (family, hook), sorted.
    pub hooks: Vec<HookTotal>,
}
