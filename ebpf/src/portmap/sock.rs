//! Host-local clients: the sock_addr hooks on the cgroup2 root. A socket of the agent's network
//! namespace that connects or sends to a published (protocol, port) on one of the host's
//! addresses or 127.0.0.0/8 is pointed at the container itself (no NAT, no conntrack), and
//! `recvmsg`/`getpeername` show it the address it asked for. Sockets of every other namespace
//! (containers, other engines' namespaces) and every other destination are left alone.
use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use berth_common::portmap::{SockOrig, Stat};

use crate::packet::{IPPROTO_TCP, IPPROTO_UDP, count, published, recall, remember, sock_key};

/// Cookie of the agent's network namespace; set at load time.
#[unsafe(no_mangle)]
static PM_NETNS_COOKIE: u64 = 0;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

#[inline(always)]
fn ours(ctx: &SockAddrContext) -> bool {
    // SAFETY: read of a load-time constant.
    let want = unsafe { core::ptr::read_volatile(&PM_NETNS_COOKIE) };
    // SAFETY: plain helper call on the program's context.
    want != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == want
}

#[inline(always)]
fn proto(ctx: &SockAddrContext) -> u8 {
    // SAFETY: the context is the kernel's bpf_sock_addr.
    match unsafe { (*ctx.sock_addr).type_ } {
        SOCK_STREAM => IPPROTO_TCP,
        SOCK_DGRAM => IPPROTO_UDP,
        _ => 0,
    }
}

/// connect4 / sendmsg4: a published destination becomes the container.
#[inline(always)]
fn to_container(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    let proto = proto(ctx);
    if proto == 0 {
        return;
    }
    // SAFETY: the context is the kernel's bpf_sock_addr; these fields are readable here.
    let (addr, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    let host_port = u16::from_be(port as u16);
    let Some(t) = published(addr, proto, host_port, true) else {
        return;
    };
    // SAFETY: plain helper call on the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    remember(
        &sock_key(cookie, t.addr, t.port),
        &SockOrig {
            addr,
            port: host_port,
            _pad: 0,
        },
    );
    // SAFETY: connect4 and sendmsg4 may write the destination.
    unsafe {
        (*ctx.sock_addr).user_ip4 = t.addr;
        (*ctx.sock_addr).user_port = u32::from(t.port.to_be());
    }
    count(Stat::SockHit);
}

/// recvmsg4 / getpeername4: the container's address becomes the one the socket asked for.
#[inline(always)]
fn to_published(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    // SAFETY: the context is the kernel's bpf_sock_addr; these fields are readable here.
    let (addr, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    // SAFETY: plain helper call on the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(orig) = recall(&sock_key(cookie, addr, u16::from_be(port as u16))) else {
        return;
    };
    // SAFETY: recvmsg4 and getpeername4 may write the address shown to the application.
    unsafe {
        (*ctx.sock_addr).user_ip4 = orig.addr;
        (*ctx.sock_addr).user_port = u32::from(orig.port.to_be());
    }
}

#[cgroup_sock_addr(connect4)]
pub fn berth_pm_connect4(ctx: SockAddrContext) -> i32 {
    to_container(&ctx);
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn berth_pm_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_container(&ctx);
    1
}

#[cgroup_sock_addr(recvmsg4)]
pub fn berth_pm_recvmsg4(ctx: SockAddrContext) -> i32 {
    to_published(&ctx);
    1
}

#[cgroup_sock_addr(getpeername4)]
pub fn berth_pm_getpeername4(ctx: SockAddrContext) -> i32 {
    to_published(&ctx);
    1
}
