//! ICMP errors about mapped flows, translated both ways: a destination unreachable or time
//! exceeded carries the start of the offending packet, whose addresses and ports must match what
//! the receiver sent. Forward: a client's error about the published address (e.g. frag-needed)
//! goes to the container; reply: a container's error (e.g. port unreachable) goes to the client
//! from the published address. Other ICMP is left to the stack.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, bpf_fib_lookup},
    helpers::generated::bpf_redirect_peer,
    programs::TcContext,
};
use berth_common::portmap::Stat;

use crate::{
    packet::{
        ETH_HLEN, IP_CSUM, IP_DADDR, IP_HLEN, IP_SADDR, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ip,
        count, ip_at, ports_at, published, reverse,
    },
    tc::{route_out, send_out},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// Offsets: the ICMP header after an option-less outer IPv4 header, the quoted IPv4 header
/// after the 8-byte ICMP header, the quoted L4 header after an option-less quoted IPv4 header.
const ICMP: usize = ETH_HLEN + IP_HLEN;
const ICMP_CSUM: usize = ICMP + 2;
const INNER: usize = ICMP + 8;
const INNER_L4: usize = INNER + IP_HLEN;

/// The quoted packet of an ICMP error this module translates.
struct Quoted {
    ip: Ip,
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn quoted(ctx: &TcContext, outer: &Ip) -> Option<Quoted> {
    if outer.hlen != IP_HLEN || outer.fragment || outer.proto != IPPROTO_ICMP {
        return None;
    }
    let ty: u8 = ctx.load(ICMP).ok()?;
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED {
        return None;
    }
    let ip = ip_at(ctx, INNER)?;
    if ip.hlen != IP_HLEN || ip.later_fragment || ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP
    {
        return None;
    }
    let (sport, dport) = ports_at(ctx, INNER_L4)?;
    Some(Quoted { ip, sport, dport })
}

/// Rewrites the outer address at `outer_field`, the quoted address at `inner_field` and the
/// quoted port at `port_field`, keeping the outer IPv4, the quoted IPv4 and the ICMP checksums
/// right (the quoted L4 checksum is left: receivers do not check it).
#[inline(always)]
fn translate(
    ctx: &TcContext,
    outer_field: usize,
    old_outer: u32,
    new_outer: u32,
    inner_field: usize,
    old_inner: u32,
    new_inner: u32,
    port_field: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), i64> {
    ctx.l3_csum_replace(
        ETH_HLEN + IP_CSUM,
        u64::from(old_outer),
        u64::from(new_outer),
        4,
    )?;
    ctx.store(ETH_HLEN + outer_field, &new_outer, 0)?;
    let old_csum: u16 = ctx.load(INNER + IP_CSUM)?;
    ctx.l3_csum_replace(
        INNER + IP_CSUM,
        u64::from(old_inner),
        u64::from(new_inner),
        4,
    )?;
    let new_csum: u16 = ctx.load(INNER + IP_CSUM)?;
    ctx.store(INNER + inner_field, &new_inner, 0)?;
    ctx.l4_csum_replace(ICMP_CSUM, u64::from(old_inner), u64::from(new_inner), 4)?;
    ctx.l4_csum_replace(ICMP_CSUM, u64::from(old_csum), u64::from(new_csum), 2)?;
    let (old_p, new_p) = (old_port.to_be(), new_port.to_be());
    ctx.l4_csum_replace(ICMP_CSUM, u64::from(old_p), u64::from(new_p), 2)?;
    ctx.store(INNER_L4 + port_field, &new_p, 0)?;
    Ok(())
}

/// A client's ICMP error about a packet the container sent from a published port.
#[inline(always)]
pub fn forward(ctx: &TcContext, outer: &Ip) -> i32 {
    let Some(q) = quoted(ctx, outer) else {
        return TC_ACT_OK as i32;
    };
    // The quoted packet left from the published address and port.
    let Some(target) = published(q.ip.saddr, q.ip.proto, q.sport, false) else {
        return TC_ACT_OK as i32;
    };
    if outer.daddr != q.ip.saddr {
        count(Stat::FallbackIcmp);
        return TC_ACT_OK as i32;
    }
    if translate(
        ctx,
        IP_DADDR,
        outer.daddr,
        target.addr,
        IP_SADDR,
        q.ip.saddr,
        target.addr,
        0,
        q.sport,
        target.port,
    )
    .is_err()
    {
        count(Stat::FallbackMalformed);
        return TC_ACT_OK as i32;
    }
    count(Stat::IcmpHit);
    // SAFETY: plain helper call.
    (unsafe { bpf_redirect_peer(target.ifindex, 0) }) as i32
}

/// A container's ICMP error about a packet a client sent to a published port.
#[inline(always)]
pub fn reply(ctx: &TcContext, outer: &Ip) -> i32 {
    let Some(q) = quoted(ctx, outer) else {
        return TC_ACT_OK as i32;
    };
    let Some(rev) = reverse(q.ip.daddr, q.ip.proto, q.dport) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: bpf_fib_lookup is plain data; all-zero is its documented starting state.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let (_, uplink, neigh) =
        match route_out(ctx, IPPROTO_ICMP, rev.addr, outer.daddr, 0, 0, &mut fib) {
            Ok(Some(out)) => out,
            Ok(None) => return TC_ACT_OK as i32,
            Err(why) => {
                count(why);
                return TC_ACT_OK as i32;
            }
        };
    let src = if rev.addr != 0 { rev.addr } else { uplink };
    if translate(
        ctx,
        IP_SADDR,
        outer.saddr,
        src,
        IP_DADDR,
        q.ip.daddr,
        src,
        2,
        q.dport,
        rev.port,
    )
    .is_err()
    {
        count(Stat::FallbackMalformed);
        return TC_ACT_OK as i32;
    }
    let act = send_out(ctx, &fib, neigh);
    if act == TC_ACT_REDIRECT as i32 {
        count(Stat::IcmpHit);
    } else {
        count(Stat::FallbackRedirect);
    }
    act
}
