//! berth's `ebpf` port-mapping data plane: published ports at host-networking cost.
//!
//! A separate object from the probes (`berth-portmap`): it belongs to the port-mapping backend,
//! its maps and links are pinned and outlive the agent, and it is loaded only when a container
//! publishes through it.
//!
//! - `berth_pm_forward` (TCX ingress on each uplink): a TCP or UDP packet for a published
//!   (address, protocol, port) of the host gets its destination rewritten to the container
//!   (incremental checksums; a UDP checksum of 0 stays 0) and is redirected into the container's
//!   namespace with `bpf_redirect_peer`: it never meets the host's netfilter or conntrack.
//! - `berth_pm_reply` (TCX ingress on each container's host-side veth): a packet from a
//!   published container port that the route lookup sends out of an uplink gets its source
//!   rewritten to the published address and port and is redirected to the uplink. Anything
//!   else (to the host, to other containers, hairpin) goes on to the stack.
//! - `berth_pm_connect4/sendmsg4/recvmsg4/getpeername4` (cgroup sock_addr on the cgroup2 root):
//!   sockets of the agent's network namespace that address a published port on a host address
//!   or 127.0.0.0/8 talk to the container directly and see the published address in replies.
//! - ICMP errors about mapped flows are translated both ways (`icmp.rs`).
//!
//! Whatever the programs decline (IP fragments, IP options, ICMP they do not translate, an
//! oversize packet without GSO, no route) goes on to the stack, where the backend's nft rules
//! map it: a slow path, never a black hole. `PM_STATS` counts each outcome.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod tc;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never called.
    loop {}
}

/// Host builds (`cargo clippy --workspace`) see an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
