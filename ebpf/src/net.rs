//! Network traffic per cgroup.
//!
//! Hooks: cgroup_skb ingress (`berth_skb_ingress`) and egress (`berth_skb_egress`) on the
//! cgroup2 root; the kernel runs them for every packet of every socket on the host, in any
//! network namespace (bridge- and host-mode containers alike), and they count those whose
//! socket's cgroup is in `TRACKED` (see `tracked.rs`).
//! Map: `NET` ([`NetKey`] -> per-CPU [`NetValue`]): packets and L3 bytes by the socket's v2
//! cgroup id, direction and L4 protocol. Both programs always let the packet pass.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_skb_cgroup_id,
    macros::{cgroup_skb, map},
    maps::PerCpuHashMap,
    programs::SkBuffContext,
};
use berth_common::{
    DIRECTION_EGRESS, DIRECTION_INGRESS, NET_MAX_ENTRIES, NetKey, NetValue, ProbeError,
};

use crate::{EEXIST_NEG, count_error, tracked::tracked};

#[map]
static NET: PerCpuHashMap<NetKey, NetValue> = PerCpuHashMap::with_max_entries(NET_MAX_ENTRIES, 0);

/// ETH_P_IP and ETH_P_IPV6 as `__sk_buff.protocol` holds them (network byte order).
const ETH_P_IP_BE: u32 = 0x0800u16.to_be() as u32;
const ETH_P_IPV6_BE: u32 = 0x86DDu16.to_be() as u32;

#[cgroup_skb]
pub fn berth_skb_ingress(ctx: SkBuffContext) -> i32 {
    count(&ctx, DIRECTION_INGRESS);
    1
}

#[cgroup_skb]
pub fn berth_skb_egress(ctx: SkBuffContext) -> i32 {
    count(&ctx, DIRECTION_EGRESS);
    1
}

#[inline(always)]
fn count(ctx: &SkBuffContext, direction: u8) {
    // SAFETY: the helper reads the cgroup of the skb's socket.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    if !tracked(cgroup_id) {
        return;
    }
    // Data starts at the network header for cgroup_skb programs.
    let protocol: u8 = match ctx.skb.protocol() {
        ETH_P_IP_BE => ctx.load::<u8>(9).unwrap_or(0),
        ETH_P_IPV6_BE => ctx.load::<u8>(6).unwrap_or(0),
        _ => 0,
    };
    let key = NetKey {
        cgroup_id,
        direction,
        protocol,
        _pad: [0; 6],
    };
    let len = u64::from(ctx.len());
    if let Some(v) = NET.get_ptr_mut(&key) {
        // SAFETY: this CPU's value; nothing else writes it while we run.
        unsafe {
            (*v).packets += 1;
            (*v).bytes += len;
        }
        return;
    }
    let first = NetValue {
        packets: 1,
        bytes: len,
    };
    match NET.insert(&key, &first, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(EEXIST_NEG) => {
            // Another CPU created the entry meanwhile: our slot exists now.
            if let Some(v) = NET.get_ptr_mut(&key) {
                unsafe {
                    (*v).packets += 1;
                    (*v).bytes += len;
                }
            }
        }
        Err(_) => count_error(ProbeError::NetMapFull),
    }
}
