//! Maps, counters and header helpers shared by the programs.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use berth_common::portmap::{
    LOCAL_MAX_ENTRIES, PORTS_MAX_ENTRIES, PortKey, PortTarget, RevKey, RevTarget,
    SOCKS_MAX_ENTRIES, SockKey, SockOrig, Stat, UPLINKS_MAX_ENTRIES,
};

#[map]
pub static PM_PORTS: HashMap<PortKey, PortTarget> =
    HashMap::with_max_entries(PORTS_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
pub static PM_REVERSE: HashMap<RevKey, RevTarget> =
    HashMap::with_max_entries(PORTS_MAX_ENTRIES, BPF_F_NO_PREALLOC);
/// Uplink ifindex -> its IPv4 address (network order).
#[map]
pub static PM_UPLINKS: HashMap<u32, u32> = HashMap::with_max_entries(UPLINKS_MAX_ENTRIES, 0);
/// The host's own IPv4 addresses (network order) -> 1.
#[map]
pub static PM_LOCAL: HashMap<u32, u8> = HashMap::with_max_entries(LOCAL_MAX_ENTRIES, 0);
#[map]
pub static PM_SOCKS: LruHashMap<SockKey, SockOrig> =
    LruHashMap::with_max_entries(SOCKS_MAX_ENTRIES, 0);
#[map]
pub static PM_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

#[inline(always)]
pub fn count(s: Stat) {
    if let Some(v) = PM_STATS.get_ptr_mut(s as u32) {
        // SAFETY: this CPU's slot; nothing else writes it while we run.
        unsafe { *v += 1 };
    }
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// Offsets inside an IPv4 header without options.
pub const IP_CSUM: usize = 10;
pub const IP_SADDR: usize = 12;
pub const IP_DADDR: usize = 16;
pub const IP_HLEN: usize = 20;
/// Offset of the checksum inside the L4 header.
pub const TCP_CSUM: usize = 16;
pub const UDP_CSUM: usize = 6;

/// What the IPv4 header says.
pub struct Ip {
    pub proto: u8,
    /// Header length in bytes.
    pub hlen: usize,
    /// More-fragments flag or a fragment offset: part of a fragmented datagram.
    pub fragment: bool,
    /// A fragment that is not the first (no L4 header).
    pub later_fragment: bool,
    pub saddr: u32,
    pub daddr: u32,
}

/// The IPv4 header at `off`, or `None` if the frame is not IPv4 or too short.
#[inline(always)]
pub fn ip_at(ctx: &TcContext, off: usize) -> Option<Ip> {
    let ver_ihl: u8 = ctx.load(off).ok()?;
    if ver_ihl >> 4 != 4 {
        return None;
    }
    let frag: u16 = u16::from_be(ctx.load(off + 6).ok()?);
    Some(Ip {
        proto: ctx.load(off + 9).ok()?,
        hlen: usize::from(ver_ihl & 0x0f) * 4,
        fragment: frag & 0x3fff != 0,
        later_fragment: frag & 0x1fff != 0,
        saddr: ctx.load(off + IP_SADDR).ok()?,
        daddr: ctx.load(off + IP_DADDR).ok()?,
    })
}

/// Source and destination port of the TCP or UDP header at `off` (host order).
#[inline(always)]
pub fn ports_at(ctx: &TcContext, off: usize) -> Option<(u16, u16)> {
    let s: u16 = ctx.load(off).ok()?;
    let d: u16 = ctx.load(off + 2).ok()?;
    Some((u16::from_be(s), u16::from_be(d)))
}

/// Offset of the checksum of an L4 header of `proto`.
#[inline(always)]
pub fn l4_csum_off(proto: u8) -> usize {
    if proto == IPPROTO_TCP {
        TCP_CSUM
    } else {
        UDP_CSUM
    }
}

/// Flags of `bpf_l4_csum_replace` for `proto`: UDP keeps a zero checksum zero.
#[inline(always)]
pub fn l4_flags(proto: u8) -> u64 {
    if proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    }
}

/// Rewrites the address at `ip + addr_off` and the port at `l4 + port_off` of a TCP or UDP
/// packet, fixing the IPv4 and L4 checksums incrementally.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    ip: usize,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    l4: usize,
    proto: u8,
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), i64> {
    let csum = l4 + l4_csum_off(proto);
    let flags = l4_flags(proto);
    let (old_p, new_p) = (old_port.to_be(), new_port.to_be());
    if old_addr != new_addr {
        ctx.l4_csum_replace(
            csum,
            u64::from(old_addr),
            u64::from(new_addr),
            flags | BPF_F_PSEUDO_HDR as u64 | 4,
        )?;
        ctx.l3_csum_replace(ip + IP_CSUM, u64::from(old_addr), u64::from(new_addr), 4)?;
        ctx.store(ip + addr_off, &new_addr, 0)?;
    }
    if old_p != new_p {
        ctx.l4_csum_replace(csum, u64::from(old_p), u64::from(new_p), flags | 2)?;
        ctx.store(l4 + port_off, &new_p, 0)?;
    }
    Ok(())
}

/// Looks up a published (address, protocol, port): the `-p IP:` mapping first, then the
/// wildcard one when `addr` is one of the host's addresses (`loopback_ok`: 127.0.0.0/8 too).
#[inline(always)]
pub fn published(addr: u32, proto: u8, port: u16, loopback_ok: bool) -> Option<PortTarget> {
    let exact = PortKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    if let Some(t) = unsafe { PM_PORTS.get(&exact) } {
        return Some(*t);
    }
    let loopback = addr & 0xff == 127;
    // SAFETY: as above.
    let local = unsafe { PM_LOCAL.get(&addr) }.is_some();
    if !(local || loopback_ok && loopback) {
        return None;
    }
    let any = PortKey {
        addr: 0,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: as above.
    unsafe { PM_PORTS.get(&any) }.copied()
}

/// The published address and port of a container's (address, protocol, port), if any.
#[inline(always)]
pub fn reverse(addr: u32, proto: u8, port: u16) -> Option<RevTarget> {
    let key = RevKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    unsafe { PM_REVERSE.get(&key) }.copied()
}

/// The IPv4 address of uplink `ifindex`, if it is one.
#[inline(always)]
pub fn uplink_addr(ifindex: u32) -> Option<u32> {
    // SAFETY: the value is copied out at once.
    unsafe { PM_UPLINKS.get(&ifindex) }.copied()
}

/// (cookie, container address and port) -> what the socket asked for.
#[inline(always)]
pub fn sock_key(cookie: u64, addr: u32, port: u16) -> SockKey {
    SockKey {
        cookie,
        addr,
        port,
        _pad: 0,
    }
}

#[inline(always)]
pub fn remember(key: &SockKey, orig: &SockOrig) {
    let _ = PM_SOCKS.insert(key, orig, 0);
}

#[inline(always)]
pub fn recall(key: &SockKey) -> Option<SockOrig> {
    // SAFETY: the value is copied out at once.
    unsafe { PM_SOCKS.get(key) }.copied()
}
