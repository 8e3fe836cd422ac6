//! Netfilter cost: time spent by netfilter (rules, conntrack, NAT) per packet and hook.
//!
//! Hooks: `BPF_PROG_TYPE_NETFILTER` links on every hook of IPv4 and IPv6, `berth_nf_first` at
//! the lowest free priority (INT_MIN+1 ...) and `berth_nf_last` at the highest (INT_MAX-1 ...).
//! The programs sit in the `socket` section only because aya 0.14 rejects objects with
//! sections it does not know; the agent loads them itself as netfilter programs
//! (`agent/src/probes/netfilter/loader.rs`).
//!
//! `first` stamps the packet (skb address, time, protocol and destination port as the packet
//! entered the hook) into a per-CPU scratch slot; `last` finds that stamp for the same skb and
//! adds one packet and the elapsed nanoseconds to
//! - `NF_HOOKS[family * 5 + hook]`: every packet of the hook;
//! - when (proto, port) is in `NF_PUBLISHED` (the agent's list of published ports):
//!   `NF_PORTS[(family, hook, ct state, proto, port)]`; the port is the conntrack entry's
//!   original destination port (before any NAT, so replies and post-DNAT hooks count under the
//!   published port), or the packet's own when it has no entry;
//! - otherwise `NF_OTHER[(family, hook, ct state)]`: one slot per hook and state for the rest
//!   of the host's traffic, so a port scan or a busy host creates no keys. A new unpublished
//!   packet's prerouting cost waits in `NF_CARRY` and joins `NF_OTHER`'s local-delivery slot
//!   when the same packet reaches input (the host's own services' baseline).
//!
//! Both programs always return NF_ACCEPT: they never change a verdict.
//! Maps: `NF_SCRATCH`, `NF_HOOKS`, `NF_PUBLISHED`, `NF_PORTS`, `NF_PORTS_SEEN`, `NF_OTHER`, `NF_CARRY`,
//! `PROBE_ERRORS`. Layouts in
//! `berth_common::netfilter`; kernel struct offsets are globals set at load time from BTF.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
};
use berth_common::{
    ProbeError,
    netfilter::{
        CT_ESTABLISHED, CT_NEW, CT_OTHER, CT_REPLY, Carry, Cost, FAMILIES, FAMILY_IPV4,
        FAMILY_IPV6, HOOK_SLOTS, HOOKS, OFFSET_NONE, OTHER_SLOTS, PORTS_MAP_FLAGS,
        PORTS_MAX_ENTRIES, PUBLISHED_MAX_ENTRIES, PortKey, PublishedKey, SCRATCH_SLOTS, Scratch,
        local_prerouting_slot, other_slot,
    },
};

use crate::{EEXIST_NEG, count_error};

// Offsets of kernel struct fields, set by the agent from /sys/kernel/btf/vmlinux; see
// `berth_common::globals`. The verifier sees them as constants (frozen read-only map), which is
// what lets `first`/`last` read `skb` and `state` fields directly.
#[unsafe(no_mangle)]
static NF_SKB_HEAD: u32 = OFFSET_NONE;
#[unsafe(no_mangle)]
static NF_SKB_NETWORK_HEADER: u32 = OFFSET_NONE;
#[unsafe(no_mangle)]
static NF_SKB_NFCT: u32 = OFFSET_NONE;
#[unsafe(no_mangle)]
static NF_STATE_HOOK: u32 = OFFSET_NONE;
#[unsafe(no_mangle)]
static NF_STATE_PF: u32 = OFFSET_NONE;
#[unsafe(no_mangle)]
static NF_CT_ORIG_DPORT: u32 = OFFSET_NONE;
#[unsafe(no_mangle)]
static NF_CT_ORIG_PROTO: u32 = OFFSET_NONE;

#[map]
static NF_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

#[map]
static NF_HOOKS: PerCpuArray<Cost> = PerCpuArray::with_max_entries(HOOK_SLOTS, 0);

#[map]
static NF_PORTS: PerCpuHashMap<PortKey, Cost> =
    PerCpuHashMap::with_max_entries(PORTS_MAX_ENTRIES, PORTS_MAP_FLAGS);

#[map]
static NF_PUBLISHED: HashMap<PublishedKey, u8> =
    HashMap::with_max_entries(PUBLISHED_MAX_ENTRIES, PORTS_MAP_FLAGS);

#[map]
static NF_OTHER: PerCpuArray<Cost> = PerCpuArray::with_max_entries(OTHER_SLOTS, 0);

/// Writes to `NF_PORTS`, per CPU, bumped after each: while its sum stands still the agent
/// does not walk `NF_PORTS` again.
#[map]
static NF_PORTS_SEEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static NF_CARRY: PerCpuArray<Carry> = PerCpuArray::with_max_entries(FAMILIES, 0);

const HOOK_PREROUTING: u8 = 0;
const HOOK_INPUT: u8 = 1;

/// The only verdict these programs give.
const NF_ACCEPT: i32 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// Low bits of `skb->_nfct` holding `enum ip_conntrack_info`.
const NFCT_INFOMASK: u64 = 7;

/// `struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff *skb; }`: the
/// verifier allows only 8-byte reads of these two pointers.
#[inline(always)]
unsafe fn ctx_args(ctx: *mut c_void) -> (*const u8, *const u8) {
    let ctx = ctx as *const *const u8;
    // SAFETY: the kernel hands a valid `bpf_nf_ctx`.
    unsafe { (*ctx, *ctx.add(1)) }
}

#[inline(always)]
fn global(g: &u32) -> u32 {
    // SAFETY: a plain integer written once before load.
    unsafe { core::ptr::read_volatile(g) }
}

/// Reads a `T` at `base + off`, where `base` is a kernel struct pointer the verifier tracks
/// (`state`, `skb`) and `off` a constant from BTF: a bounds-checked direct load.
#[inline(always)]
unsafe fn field<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: the verifier checks the access against the struct's BTF.
    unsafe { core::ptr::read_volatile(base.add(off as usize) as *const T) }
}

/// (family, hook, index of the pair in `NF_HOOKS`), or `None` for other families.
#[inline(always)]
fn hook_slot(state: *const u8) -> Option<(u8, u8, u32)> {
    // SAFETY: `state` comes from the context; offsets from BTF.
    let (pf, hook) = unsafe {
        (
            field::<u8>(state, global(&NF_STATE_PF)),
            field::<u8>(state, global(&NF_STATE_HOOK)),
        )
    };
    let family = match pf {
        NFPROTO_IPV4 => FAMILY_IPV4,
        NFPROTO_IPV6 => FAMILY_IPV6,
        _ => return None,
    };
    if hook as u32 >= HOOKS {
        return None;
    }
    Some((family, hook, family as u32 * HOOKS + hook as u32))
}

/// The scratch slot of a (family, hook) pair on this CPU.
#[inline(always)]
fn scratch(slot: u32) -> Option<*mut Scratch> {
    if slot >= SCRATCH_SLOTS {
        return None;
    }
    NF_SCRATCH.get_ptr_mut(slot)
}

/// Protocols whose first 4 L4 bytes are source and destination port.
#[inline(always)]
fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 33 | 132 | 136)
}

/// (protocol, destination port) of the packet as it is now, read from its L3 header at
/// `skb->head + skb->network_header`. Port 0 when there is none (other protocols, non-first
/// fragments, IPv6 extension headers before the L4 header).
#[inline(always)]
fn packet_proto_port(skb: *const u8, family: u8) -> (u8, u16) {
    // SAFETY: direct BTF reads of skb fields; the header itself goes through
    // bpf_probe_read_kernel, which fails cleanly on a bad address.
    unsafe {
        let head: u64 = field(skb, global(&NF_SKB_HEAD));
        let nh: u16 = field(skb, global(&NF_SKB_NETWORK_HEADER));
        let l3 = head.wrapping_add(nh as u64);
        if family == FAMILY_IPV4 {
            // version/ihl .. daddr (20 bytes) + the first 4 bytes after an option-less header.
            let Ok(h) = bpf_probe_read_kernel(l3 as *const [u8; 24]) else {
                return (0, 0);
            };
            let proto = h[9];
            let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            if !has_ports(proto) || fragment_offset != 0 {
                return (proto, 0);
            }
            let ihl = (h[0] & 0x0f) as u64 * 4;
            let port = if ihl == 20 {
                u16::from_be_bytes([h[22], h[23]])
            } else if ihl > 20 {
                match bpf_probe_read_kernel((l3 + ihl + 2) as *const [u8; 2]) {
                    Ok(p) => u16::from_be_bytes(p),
                    Err(_) => 0,
                }
            } else {
                0
            };
            (proto, port)
        } else {
            // Fixed 40-byte header + the first 4 bytes of the next one.
            let Ok(h) = bpf_probe_read_kernel(l3 as *const [u8; 44]) else {
                return (0, 0);
            };
            let next = h[6];
            if has_ports(next) {
                (next, u16::from_be_bytes([h[42], h[43]]))
            } else {
                (next, 0)
            }
        }
    }
}

/// `skb->_nfct`: `struct nf_conn *` | `enum ip_conntrack_info`; 0 on kernels without conntrack.
#[inline(always)]
fn nfct(skb: *const u8) -> u64 {
    let off = global(&NF_SKB_NFCT);
    if off == OFFSET_NONE {
        return 0;
    }
    // SAFETY: direct BTF read of an `unsigned long`.
    unsafe { field(skb, off) }
}

/// Runs first on every hook: stamps the packet for `last`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "socket")]
pub fn berth_nf_first(ctx: *mut c_void) -> i32 {
    try_first(ctx);
    NF_ACCEPT
}

#[inline(always)]
fn try_first(ctx: *mut c_void) -> Option<()> {
    // SAFETY: netfilter program context.
    let (state, skb) = unsafe { ctx_args(ctx) };
    let (family, _, slot) = hook_slot(state)?;
    // A packet that already has a conntrack entry (input, forward, postrouting) is attributed
    // from the entry by `last`: no need to read its header.
    let (proto, port) = if nfct(skb) & !NFCT_INFOMASK != 0 {
        (0, 0)
    } else {
        packet_proto_port(skb, family)
    };
    let s = scratch(slot)?;
    // SAFETY: this CPU's slot; `last` reads it on the same CPU after the hook's other entries.
    // Storing the skb pointer in a map and comparing it in `last` needs `allow_ptr_leaks`
    // (CAP_PERFMON): the agent runs as root.
    unsafe {
        (*s).skb = skb as u64;
        (*s).proto = proto;
        (*s).port = port;
        // Last, so that our own work above is not counted as netfilter's.
        (*s).start_ns = bpf_ktime_get_ns();
    }
    Some(())
}

/// Runs last on every hook: adds the packet's time since `first` to the maps.
#[unsafe(no_mangle)]
#[unsafe(link_section = "socket")]
pub fn berth_nf_last(ctx: *mut c_void) -> i32 {
    try_last(ctx);
    NF_ACCEPT
}

#[inline(always)]
fn try_last(ctx: *mut c_void) -> Option<()> {
    // First, so that our own work below is not counted as netfilter's.
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: netfilter program context.
    let (state, skb) = unsafe { ctx_args(ctx) };
    let (family, hook, slot) = hook_slot(state)?;
    let s = scratch(slot)?;
    // SAFETY: this CPU's slot (see try_first).
    let (stamped, start, mut proto, mut port) =
        unsafe { ((*s).skb, (*s).start_ns, (*s).proto, (*s).port) };
    if stamped != skb as u64 {
        count_error(ProbeError::NetfilterUnmatched);
        return None;
    }
    // SAFETY: as above. Freed so that a later pass of the same skb is not matched twice.
    unsafe { (*s).skb = 0 };
    let cost = Cost {
        packets: 1,
        nanoseconds: now.saturating_sub(start),
    };

    let mut ct_state = CT_OTHER;
    let nfct = nfct(skb);
    let ct = nfct & !NFCT_INFOMASK;
    // A NULL entry is "no conntrack" (0) or IP_CT_UNTRACKED (7): CT_OTHER.
    if ct != 0 {
        ct_state = match nfct & NFCT_INFOMASK {
            2 => CT_NEW,         // IP_CT_NEW
            0 => CT_ESTABLISHED, // IP_CT_ESTABLISHED
            3 | 4 => CT_REPLY,   // IP_CT_ESTABLISHED_REPLY, IP_CT_RELATED_REPLY
            _ => CT_OTHER,       // IP_CT_RELATED
        };
        let dport_off = global(&NF_CT_ORIG_DPORT);
        // The agent checks that protonum lies within the 8 bytes read from the port on.
        // A shift, not an index: the verifier refuses variable offsets into the stack.
        let proto_shift = (global(&NF_CT_ORIG_PROTO).wrapping_sub(dport_off) & 7) * 8;
        // SAFETY: `ct` is a live `struct nf_conn *` (the skb holds a reference);
        // bpf_probe_read_kernel fails cleanly otherwise.
        if let Ok(t) = unsafe { bpf_probe_read_kernel((ct + dport_off as u64) as *const u64) } {
            proto = (t >> proto_shift) as u8;
            // __be16 in the first two bytes (little-endian load: swap them).
            port = if has_ports(proto) {
                u16::from_be(t as u16)
            } else {
                0
            };
        }
    }

    if let Some(total) = NF_HOOKS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value of this CPU.
        unsafe {
            (*total).packets += cost.packets;
            (*total).nanoseconds += cost.nanoseconds;
        }
    }
    let published = PublishedKey {
        proto,
        _pad: 0,
        port,
    };
    // SAFETY: a plain lookup; the value is not read.
    if unsafe { NF_PUBLISHED.get(&published) }.is_some() {
        let key = PortKey {
            family,
            hook,
            ct_state,
            proto,
            port,
            _pad: 0,
        };
        add_port(&key, &cost);
    } else {
        add_other(other_slot(family, hook, ct_state), &cost);
        if ct_state == CT_NEW {
            carry(family, hook, skb as u64, cost.nanoseconds);
        }
    }
    Some(())
}

#[inline(always)]
fn add_other(slot: u32, cost: &Cost) {
    if slot >= OTHER_SLOTS {
        return;
    }
    if let Some(v) = NF_OTHER.get_ptr_mut(slot) {
        // SAFETY: per-CPU value of this CPU.
        unsafe {
            (*v).packets += cost.packets;
            (*v).nanoseconds += cost.nanoseconds;
        }
    }
}

/// A new unpublished packet: its prerouting cost waits here; if the same skb then reaches
/// input on this CPU (local delivery follows prerouting in the same softirq), that cost joins
/// the family's local-delivery prerouting slot.
#[inline(always)]
fn carry(family: u8, hook: u8, skb: u64, nanoseconds: u64) {
    let Some(c) = NF_CARRY.get_ptr_mut(family as u32) else {
        return;
    };
    // SAFETY: per-CPU value of this CPU.
    unsafe {
        if hook == HOOK_PREROUTING {
            (*c).skb = skb;
            (*c).nanoseconds = nanoseconds;
        } else if hook == HOOK_INPUT && (*c).skb == skb {
            (*c).skb = 0;
            add_other(
                local_prerouting_slot(family),
                &Cost {
                    packets: 1,
                    nanoseconds: (*c).nanoseconds,
                },
            );
        }
    }
}

#[inline(always)]
fn add_port(key: &PortKey, cost: &Cost) {
    add_port_cost(key, cost);
    if let Some(v) = NF_PORTS_SEEN.get_ptr_mut(0) {
        // SAFETY: this CPU's value; nothing else writes it while we run.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn add_port_cost(key: &PortKey, cost: &Cost) {
    if let Some(v) = NF_PORTS.get_ptr_mut(key) {
        // SAFETY: per-CPU value of this CPU; nothing else writes it while we run.
        unsafe {
            (*v).packets += cost.packets;
            (*v).nanoseconds += cost.nanoseconds;
        }
        return;
    }
    match NF_PORTS.insert(key, cost, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU created the key between our lookup and insert: our slot exists now.
        Err(EEXIST_NEG) => {
            if let Some(v) = NF_PORTS.get_ptr_mut(key) {
                unsafe {
                    (*v).packets += cost.packets;
                    (*v).nanoseconds += cost.nanoseconds;
                }
            }
        }
        Err(_) => count_error(ProbeError::NetfilterPortsFull),
    }
}
