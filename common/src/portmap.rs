//! Maps of the `ebpf` port-mapping backend (`ebpf/src/portmap.rs`, `agent/src/net/portmap/ebpf`).
//!
//! Addresses are IPv4 in network byte order (as the packet holds them), ports in host byte
//! order. Every key has explicit zeroed padding: the kernel hashes keys byte-wise.

/// `PM_PORTS`: (host address or 0 for every host address, L4 protocol, host port) -> where the
/// packet goes. `-p IP:...` mappings are looked up first, then the wildcard.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `PM_PORTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTarget {
    /// The container's address (network order).
    pub addr: u32,
    /// The container's port.
    pub port: u16,
    pub _pad: u16,
    /// Host-side veth of the container: the forward program redirects to its peer.
    pub ifindex: u32,
}

/// `PM_REVERSE`: (container address, L4 protocol, container port) -> the published address and
/// port its replies leave with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `PM_REVERSE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevTarget {
    /// The host address of a `-p IP:...` mapping; 0: the egress uplink's address (`PM_UPLINKS`).
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// `PM_SOCKS` (LRU): what a host socket's `connect`/`sendmsg` asked for before the hook
/// rewrote it to the container, so `recvmsg`/`getpeername` show the published address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub cookie: u64,
    /// Container address and port the socket talks to.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Value of `PM_SOCKS`: the address and port the application used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOrig {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Capacity of `PM_PORTS` and `PM_REVERSE`: every TCP and UDP port once (hash maps without
/// preallocation: memory follows what is published).
pub const PORTS_MAX_ENTRIES: u32 = 131_072;
/// Capacity of `PM_UPLINKS` (ifindex -> the uplink's IPv4 address) and `PM_LOCAL` (host
/// addresses).
pub const UPLINKS_MAX_ENTRIES: u32 = 64;
pub const LOCAL_MAX_ENTRIES: u32 = 256;
/// Capacity of the `PM_SOCKS` LRU.
pub const SOCKS_MAX_ENTRIES: u32 = 65_536;

/// Indices of the `PM_STATS` per-CPU array of u64: what the programs did with each packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stat {
    /// Forward path: rewritten to the container and redirected past netfilter.
    ForwardHit = 0,
    /// Reply path: rewritten to the published address and redirected to the uplink.
    ReplyHit,
    /// ICMP errors translated (both directions).
    IcmpHit,
    /// Host sockets whose destination the connect/sendmsg hooks rewrote.
    SockHit,
    /// Declined, left to the stack (the nft slow path): IP fragment.
    FallbackFragment,
    /// Declined: IPv4 options.
    FallbackIpOptions,
    /// Declined: an ICMP message the programs do not translate.
    FallbackIcmp,
    /// Declined: packet larger than the egress MTU without GSO.
    FallbackMtu,
    /// Declined: the redirect or the route lookup failed (no route, no neighbour yet...).
    FallbackRedirect,
    /// Declined: a truncated or malformed header.
    FallbackMalformed,
}

impl Stat {
    pub const COUNT: u32 = 10;
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::ForwardHit,
        Stat::ReplyHit,
        Stat::IcmpHit,
        Stat::SockHit,
        Stat::FallbackFragment,
        Stat::FallbackIpOptions,
        Stat::FallbackIcmp,
        Stat::FallbackMtu,
        Stat::FallbackRedirect,
        Stat::FallbackMalformed,
    ];

    /// (`path`, `reason`) labels of `berth_portmap_ebpf_packets_total`.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Stat::ForwardHit => ("fast", "forward"),
            Stat::ReplyHit => ("fast", "reply"),
            Stat::IcmpHit => ("fast", "icmp"),
            Stat::SockHit => ("fast", "socket"),
            Stat::FallbackFragment => ("slow", "fragment"),
            Stat::FallbackIpOptions => ("slow", "ip_options"),
            Stat::FallbackIcmp => ("slow", "icmp"),
            Stat::FallbackMtu => ("slow", "mtu"),
            Stat::FallbackRedirect => ("slow", "no_route"),
            Stat::FallbackMalformed => ("slow", "malformed"),
        }
    }
}

/// Map names.
pub mod maps {
    pub const PM_PORTS: &str = "PM_PORTS";
    pub const PM_REVERSE: &str = "PM_REVERSE";
    pub const PM_UPLINKS: &str = "PM_UPLINKS";
    pub const PM_LOCAL: &str = "PM_LOCAL";
    pub const PM_SOCKS: &str = "PM_SOCKS";
    pub const PM_STATS: &str = "PM_STATS";
    /// Pinned under the backend's directory: the data plane outlives the agent.
    pub const PINNED: [&str; 6] = [
        PM_PORTS, PM_REVERSE, PM_UPLINKS, PM_LOCAL, PM_SOCKS, PM_STATS,
    ];
}

/// Globals set at load time.
pub mod globals {
    /// `u64`: cookie of the network namespace whose host-local sockets the sock_addr hooks
    /// rewrite (the agent's); sockets of other namespaces are left alone.
    pub const PM_NETNS_COOKIE: &str = "PM_NETNS_COOKIE";
}

/// Program names.
pub mod programs {
    pub const FORWARD: &str = "berth_pm_forward";
    pub const REPLY: &str = "berth_pm_reply";
    pub const CONNECT4: &str = "berth_pm_connect4";
    pub const SENDMSG4: &str = "berth_pm_sendmsg4";
    pub const RECVMSG4: &str = "berth_pm_recvmsg4";
    pub const GETPEERNAME4: &str = "berth_pm_getpeername4";
}
