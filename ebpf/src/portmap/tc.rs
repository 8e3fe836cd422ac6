//! The two TCX programs: forward (uplink ingress) and reply (container veth ingress).
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        TC_ACT_OK, TC_ACT_REDIRECT, bpf_fib_lookup,
    },
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
    },
    macros::classifier,
    programs::TcContext,
};
use berth_common::portmap::Stat;

use crate::{
    icmp,
    packet::{
        ETH_HLEN, ETH_P_IP, IP_DADDR, IP_HLEN, IP_SADDR, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
        Ip, count, ip_at, ports_at, published, reverse, rewrite, uplink_addr,
    },
};

const AF_INET: u8 = 2;

#[classifier]
pub fn berth_pm_forward(ctx: TcContext) -> i32 {
    forward(&ctx).unwrap_or(TC_ACT_OK as i32)
}

#[classifier]
pub fn berth_pm_reply(ctx: TcContext) -> i32 {
    reply(&ctx).unwrap_or(TC_ACT_OK as i32)
}

/// What a frame is, as far as the programs care.
enum Frame {
    /// Not for us: leave it to the stack.
    Pass,
    Icmp(Ip),
    /// TCP or UDP with its L4 header at `l4`.
    L4 {
        ip: Ip,
        l4: usize,
        sport: u16,
        dport: u16,
    },
}

#[inline(always)]
fn frame(ctx: &TcContext) -> Frame {
    if ctx.load::<u16>(12).map(u16::from_be) != Ok(ETH_P_IP) {
        return Frame::Pass;
    }
    let Some(ip) = ip_at(ctx, ETH_HLEN) else {
        return Frame::Pass;
    };
    if ip.proto == IPPROTO_ICMP {
        return Frame::Icmp(ip);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP || ip.later_fragment {
        return Frame::Pass;
    }
    let l4 = ETH_HLEN + ip.hlen;
    match ports_at(ctx, l4) {
        Some((sport, dport)) => Frame::L4 {
            ip,
            l4,
            sport,
            dport,
        },
        None => Frame::Pass,
    }
}

/// Why a mapped packet is left to the slow path, if it is.
#[inline(always)]
fn declined(ip: &Ip) -> Option<Stat> {
    if ip.fragment {
        Some(Stat::FallbackFragment)
    } else if ip.hlen != IP_HLEN {
        Some(Stat::FallbackIpOptions)
    } else {
        None
    }
}

/// Client -> host address:published port => container address:port, into its namespace.
#[inline(always)]
fn forward(ctx: &TcContext) -> Result<i32, i64> {
    let (ip, l4, dport) = match frame(ctx) {
        Frame::Pass => return Ok(TC_ACT_OK as i32),
        Frame::Icmp(ip) => return Ok(icmp::forward(ctx, &ip)),
        Frame::L4 { ip, l4, dport, .. } => (ip, l4, dport),
    };
    let Some(target) = published(ip.daddr, ip.proto, dport, false) else {
        return Ok(TC_ACT_OK as i32);
    };
    if let Some(why) = declined(&ip) {
        count(why);
        return Ok(TC_ACT_OK as i32);
    }
    if rewrite(
        ctx,
        ETH_HLEN,
        IP_DADDR,
        ip.daddr,
        target.addr,
        l4,
        ip.proto,
        2,
        dport,
        target.port,
    )
    .is_err()
    {
        count(Stat::FallbackMalformed);
        return Ok(TC_ACT_OK as i32);
    }
    // SAFETY: plain helper call.
    let act = unsafe { bpf_redirect_peer(target.ifindex, 0) };
    count(Stat::ForwardHit);
    Ok(act as i32)
}

/// Where a packet from a container to `daddr` leaves the host: (uplink ifindex, its address,
/// whether the neighbour is known and the MACs were filled), or `None` when it does not leave
/// through an uplink (to the host itself, another container, a non-uplink interface).
#[inline(always)]
pub fn route_out(
    ctx: &TcContext,
    proto: u8,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    fib: &mut bpf_fib_lookup,
) -> Result<Option<(u32, u32, bool)>, Stat> {
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.sport = sport.to_be();
    fib.dport = dport.to_be();
    // SAFETY: the context pointer is the skb; the union members are plain integers.
    unsafe {
        fib.ifindex = (*ctx.skb.skb).ingress_ifindex;
        fib.__bindgen_anon_3.ipv4_src = saddr;
        fib.__bindgen_anon_4.ipv4_dst = daddr;
    }
    // SAFETY: `fib` is a valid, initialised bpf_fib_lookup of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    } as u32;
    let neigh = match rc {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(Stat::FallbackMtu),
        _ => return Ok(None),
    };
    Ok(uplink_addr(fib.ifindex).map(|a| (fib.ifindex, a, neigh)))
}

/// Sends the (rewritten) frame out of `ifindex`: with the MACs the route lookup found, or
/// through the neighbour subsystem when it found none yet.
#[inline(always)]
pub fn send_out(ctx: &TcContext, fib: &bpf_fib_lookup, neigh: bool) -> i32 {
    if neigh {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&fib.dmac);
        macs[6..].copy_from_slice(&fib.smac);
        if ctx.store(0, &macs, 0).is_err() {
            return TC_ACT_OK as i32;
        }
        // SAFETY: plain helper call.
        (unsafe { bpf_redirect(fib.ifindex, 0) }) as i32
    } else {
        // SAFETY: no next-hop parameters: the kernel resolves the route's own gateway.
        (unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) }) as i32
    }
}

/// Container published port -> client outside: the source becomes the published address and
/// port, and the packet goes straight to the uplink.
#[inline(always)]
fn reply(ctx: &TcContext) -> Result<i32, i64> {
    let (ip, l4, sport, dport) = match frame(ctx) {
        Frame::Pass => return Ok(TC_ACT_OK as i32),
        Frame::Icmp(ip) => return Ok(icmp::reply(ctx, &ip)),
        Frame::L4 {
            ip,
            l4,
            sport,
            dport,
        } => (ip, l4, sport, dport),
    };
    let Some(rev) = reverse(ip.saddr, ip.proto, sport) else {
        return Ok(TC_ACT_OK as i32);
    };
    if let Some(why) = declined(&ip) {
        count(why);
        return Ok(TC_ACT_OK as i32);
    }
    // SAFETY: bpf_fib_lookup is plain data; all-zero is its documented starting state.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let (_, uplink, neigh) =
        match route_out(ctx, ip.proto, rev.addr, ip.daddr, rev.port, dport, &mut fib) {
            Ok(Some(out)) => out,
            Ok(None) => return Ok(TC_ACT_OK as i32),
            Err(why) => {
                count(why);
                return Ok(TC_ACT_OK as i32);
            }
        };
    let src = if rev.addr != 0 { rev.addr } else { uplink };
    if rewrite(
        ctx, ETH_HLEN, IP_SADDR, ip.saddr, src, l4, ip.proto, 0, sport, rev.port,
    )
    .is_err()
    {
        count(Stat::FallbackMalformed);
        return Ok(TC_ACT_OK as i32);
    }
    let act = send_out(ctx, &fib, neigh);
    if act == TC_ACT_REDIRECT as i32 {
        count(Stat::ReplyHit);
    } else {
        count(Stat::FallbackRedirect);
    }
    Ok(act)
}
