//! Netfilter cost: what rules, conntrack and NAT cost per packet, by hook, port and conntrack
//! state.
//!
//! Hooks: two `BPF_PROG_TYPE_NETFILTER` programs (`ebpf/src/netfilter.rs`) on each of the 5
//! hooks of IPv4 and of IPv6 in the agent's network namespace: `berth_nf_first` at priority
//! INT_MIN+1 and `berth_nf_last` at INT_MAX-1, or the next free priorities inwards when another
//! BPF link holds those (a second agent). aya 0.14 has no netfilter program type: [`loader`]
//! loads and attaches them.
//!
//! Measures, per packet that reaches `last` (accepted by every hook entry in between):
//! nanoseconds between the end of `first` and the start of `last`, i.e. every other hook entry
//! of that hook: iptables/nftables chains, defrag, conntrack lookup and creation, NAT. Not
//! included: conntrack confirmation on input and postrouting (priority INT_MAX, always after
//! `last`); packets dropped or stolen (queued, defragmented) before `last`.
//! Attribution: (protocol, port), where the port is the destination port of the connection's
//! original direction before any NAT (read from the conntrack entry, so replies and hooks after
//! a DNAT still count under the published port), or the packet's own destination port as it
//! entered the hook when it has no conntrack entry; split by hook and conntrack state. Only
//! pairs some container publishes get their own key ([`published`]: the agent writes them to
//! `NF_PUBLISHED` each tick); every other packet counts in one slot per (family, hook,
//! conntrack state), and the per-hook totals count every packet either way.
//!
//! Map sizes: fixed at build time from the port space rather than from the number of ports
//! published at load, because other engines' containers (and their ports) are found only after
//! the probes load, and resizing by reloading would swap the programs' links and lose or double
//! counters. `NF_PUBLISHED` holds every TCP and UDP port; `NF_PORTS` holds 524,288 keys
//! (a forwarded port with new, established and reply traffic uses 9: 58,000 such ports; new
//! flows alone use 3 per port). Neither is preallocated (`BPF_F_NO_PREALLOC`), so their memory
//! follows the keys in use plus the kernel's bucket arrays (8 MiB and 2 MiB). `NF_PORTS` keys
//! of a port no longer published are deleted after their last read.
//!
//! Limits: a packet whose traversal is interrupted on its CPU by another packet on the same
//! hook (a softirq inside a process-context output) or that migrates to another CPU in between
//! is not measured and counts as `NetfilterUnmatched`. Without a conntrack entry, the port is
//! read from the packet's linear data: IPv6 extension headers are not walked (the protocol is
//! then the first next header, port 0).
//!
//! Maps: `NF_PUBLISHED` (hash, [`berth_common::netfilter::PublishedKey`] -> 1), `NF_PORTS` (per-CPU hash,
//! [`PortKey`] -> [`Cost`]), `NF_OTHER` (per-CPU array, [`other_slot`] -> [`Cost`]),
//! `NF_HOOKS` (per-CPU array, family * 5 + hook -> [`Cost`]), `NF_SCRATCH` and `NF_CARRY`
//! (per-CPU stamps), `PROBE_ERRORS` (`NetfilterPortsFull`, `NetfilterUnmatched`,
//! `NetfilterPublishedFull`).
//! Samples: [`NetfilterSample`], cumulative packets and nanoseconds since load.
//! Paths: `netfilter_pair` (this probe) and `fentry` (whether the kernel would allow a
//! per-function breakdown with fentry; detected, not built).

pub mod loader;
pub mod published;

use std::{collections::BTreeMap, sync::OnceLock};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
};
use berth_common::{
    globals,
    netfilter::{
        CT_ESTABLISHED, CT_NEW, CT_OTHER, CT_REPLY, CT_STATES, Cost, FAMILY_IPV4, HOOKS,
        OFFSET_NONE, PortKey, local_prerouting_slot, other_slot,
    },
};
use serde::Serialize;
use tracing::{debug, warn};

use self::loader::{Link, LoaderError, NFPROTO_IPV4, NFPROTO_IPV6, PRIORITY_FIRST, PRIORITY_LAST};
use super::{
    EBPF_OBJECT, ProbeLoadError,
    btf::{Btf, BtfError},
};
use crate::model::ProbeStatus;
pub use crate::model::netfilter::{
    CtState, Family, Hook, HookTotal, NetfilterSample, OtherCost, PortCost,
};

pub const FIRST: &str = "berth_nf_first";
pub const LAST: &str = "berth_nf_last";
const PORTS: &str = berth_common::maps::NF_PORTS;
const HOOK_TOTALS: &str = berth_common::maps::NF_HOOKS;
const OTHER: &str = berth_common::maps::NF_OTHER;
/// Kernel function whose fentry attachment is tried at start-up.
pub const FENTRY_TARGET: &str = "nf_hook_slow";

impl Family {
    /// `pf` of a netfilter link.
    pub fn pf(self) -> u32 {
        match self {
            Family::Ipv4 => NFPROTO_IPV4,
            Family::Ipv6 => NFPROTO_IPV6,
        }
    }

    fn from_index(i: u8) -> Self {
        if i == FAMILY_IPV4 {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }
}

impl CtState {
    fn from_raw(v: u8) -> Self {
        match v {
            CT_NEW => CtState::New,
            CT_ESTABLISHED => CtState::Established,
            CT_REPLY => CtState::Reply,
            _ => CtState::Other,
        }
    }
}

/// Priorities the probe's links hold on one hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub family: Family,
    pub hook: Hook,
    pub first_priority: i32,
    pub last_priority: i32,
}

/// Offsets (bytes) of the kernel fields the programs read, from the kernel's BTF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLayout {
    pub skb_head: u32,
    pub skb_network_header: u32,
    /// [`OFFSET_NONE`] without conntrack (`CONFIG_NF_CONNTRACK=n`).
    pub skb_nfct: u32,
    pub state_hook: u32,
    pub state_pf: u32,
    pub ct_orig_dport: u32,
    pub ct_orig_proto: u32,
}

/// A field of an unexpected size or position in the kernel's BTF.
fn unexpected(ty: &str, field: &str) -> BtfError {
    BtfError::NoField {
        ty: ty.to_owned(),
        field: format!("{field} of the expected size"),
    }
}

impl KernelLayout {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let sized = |ty: &str, path: &[&str], size: u32| {
            let f = btf.field(ty, path)?;
            if f.size != size {
                return Err(unexpected(ty, &path.join(".")));
            }
            Ok(f.offset)
        };
        const DPORT: &[&str] = &["tuplehash", "tuple", "dst", "u", "all"];
        const PROTO: &[&str] = &["tuplehash", "tuple", "dst", "protonum"];
        let (skb_nfct, ct_orig_dport, ct_orig_proto) = match sized("sk_buff", &["_nfct"], 8) {
            Ok(nfct) => {
                let dport = sized("nf_conn", DPORT, 2)?;
                let proto = sized("nf_conn", PROTO, 1)?;
                // The program reads 8 bytes from the port and takes protonum among them.
                if !(1..8).contains(&proto.wrapping_sub(dport)) {
                    return Err(unexpected("nf_conn", "tuplehash.tuple.dst.protonum"));
                }
                (nfct, dport, proto)
            }
            Err(BtfError::NoField { .. }) => (OFFSET_NONE, OFFSET_NONE, OFFSET_NONE),
            Err(e) => return Err(e),
        };
        Ok(Self {
            skb_head: sized("sk_buff", &["head"], 8)?,
            skb_network_header: sized("sk_buff", &["network_header"], 2)?,
            skb_nfct,
            state_hook: sized("nf_hook_state", &["hook"], 1)?,
            state_pf: sized("nf_hook_state", &["pf"], 1)?,
            ct_orig_dport,
            ct_orig_proto,
        })
    }
}

static LAYOUT: OnceLock<Result<KernelLayout, BtfError>> = OnceLock::new();

/// The running kernel's layout, read once from /sys/kernel/btf/vmlinux.
pub fn layout() -> &'static Result<KernelLayout, BtfError> {
    LAYOUT.get_or_init(|| Btf::from_sys_fs().and_then(|btf| KernelLayout::from_btf(&btf)))
}

/// Sets the programs' offset globals. Without BTF they keep [`OFFSET_NONE`], which the
/// verifier would refuse, and [`NetfilterProbe::start`] reports the BTF error instead.
pub fn set_globals(loader: &mut EbpfLoader<'_>) {
    let Ok(l) = layout() else { return };
    loader
        .override_global(globals::NF_SKB_HEAD, &l.skb_head, true)
        .override_global(globals::NF_SKB_NETWORK_HEADER, &l.skb_network_header, true)
        .override_global(globals::NF_SKB_NFCT, &l.skb_nfct, true)
        .override_global(globals::NF_STATE_HOOK, &l.state_hook, true)
        .override_global(globals::NF_STATE_PF, &l.state_pf, true)
        .override_global(globals::NF_CT_ORIG_DPORT, &l.ct_orig_dport, true)
        .override_global(globals::NF_CT_ORIG_PROTO, &l.ct_orig_proto, true);
}

pub struct NetfilterProbe {
    pub status: ProbeStatus,
    /// Priorities actually held, per (family, hook).
    pub attachments: Vec<Attachment>,
    /// Dropped before `programs`: detaching first.
    links: Vec<Link>,
    programs: Vec<loader::Program>,
    /// The published (protocol, port) pairs in `NF_PUBLISHED`.
    pub published: published::Published,
    /// The last sample and the hook totals it was read at: see [`Self::collect`].
    steady: std::sync::Mutex<Steady>,
}

/// The last sample, so maps that did not change are not read again (`NF_PORTS` is a walk of
/// 524,288 buckets even when empty: ~0.5 ms a tick).
#[derive(Default)]
struct Steady {
    /// `NF_HOOKS` at the last read: every packet of every hook bumps it first.
    hooks: Option<Vec<HookTotal>>,
    /// The maps were read again after `NF_HOOKS` had stopped moving for a tick, and no key
    /// was deleted after that read: the sample is final.
    confirmed: bool,
    /// The same for `NF_PORTS` alone, by `NF_PORTS_SEEN` (hooks move with any packet on the
    /// host; published ports' keys only with theirs).
    ports_seen: Option<u64>,
    ports_confirmed: bool,
    last: NetfilterSample,
}

impl NetfilterProbe {
    /// Run time and runs of each of its loaded programs, by program id (one syscall each).
    pub fn program_runs(&self) -> impl Iterator<Item = (u32, (std::time::Duration, u64))> + '_ {
        self.programs
            .iter()
            .filter_map(|p| p.runs().ok().map(|r| (p.id, r)))
    }

    /// Loads and attaches the pair on every hook of the calling thread's network namespace,
    /// and detects whether fentry would work. Never fails: a probe that cannot attach reports
    /// why in `status.error`.
    pub fn start(ebpf: Option<&mut Ebpf>, enabled: bool) -> Self {
        let mut probe = Self {
            status: ProbeStatus {
                name: "netfilter",
                attach: "netfilter/ipv4+ipv6 5 hooks, first+last",
                enabled,
                attached: false,
                program_ids: Vec::new(),
                error: None,
                paths: BTreeMap::new(),
            },
            attachments: Vec::new(),
            links: Vec::new(),
            programs: Vec::new(),
            published: Default::default(),
            steady: Default::default(),
        };
        if !enabled {
            return probe;
        }
        let pair = match ebpf {
            None => Err("berth's eBPF object did not load (see the agent's log)".to_owned()),
            Some(ebpf) => match layout() {
                Err(e) => Err(e.to_string()),
                Ok(_) => probe.attach(ebpf).map_err(|e| e.to_string()),
            },
        };
        match pair {
            Ok(()) => {
                probe.status.attached = true;
                probe.status.paths.insert("netfilter_pair", "ok".to_owned());
            }
            Err(e) => {
                probe
                    .status
                    .paths
                    .insert("netfilter_pair", format!("unavailable: {e}"));
                probe.status.error = Some(e);
            }
        }
        probe.status.paths.insert("fentry", detect_fentry());
        probe
    }

    fn attach(&mut self, ebpf: &Ebpf) -> Result<(), LoaderError> {
        let mut programs = loader::load_programs(ebpf, EBPF_OBJECT, &[FIRST, LAST])?;
        let last = programs.pop().expect("two programs");
        let first = programs.pop().expect("two programs");
        let mut links = Vec::new();
        let mut attachments = Vec::new();
        for family in Family::ALL {
            let attached: Result<(), LoaderError> = Hook::ALL.iter().try_for_each(|&hook| {
                let pf = family.pf();
                // `first` before `last`, so no `last` ever runs without its `first`.
                let f = loader::attach_first_free(&first, pf, hook as u32, PRIORITY_FIRST, 1)?;
                let l = loader::attach_first_free(&last, pf, hook as u32, PRIORITY_LAST, -1)?;
                attachments.push(Attachment {
                    family,
                    hook,
                    first_priority: f.priority,
                    last_priority: l.priority,
                });
                links.extend([f, l]);
                Ok(())
            });
            match (family, attached) {
                (_, Ok(())) => {}
                (Family::Ipv4, Err(e)) => return Err(e),
                // A kernel without IPv6: the IPv4 measurements stand.
                (Family::Ipv6, Err(e)) => {
                    warn!(error = %e, "netfilter probe: IPv6 hooks unavailable");
                    links.retain(|l: &Link| l.pf != NFPROTO_IPV6);
                    attachments.retain(|a| a.family != Family::Ipv6);
                    self.status
                        .paths
                        .insert("ipv6", format!("unavailable: {e}"));
                }
            }
        }
        debug!(?attachments, "netfilter probe attached");
        self.status.program_ids = vec![first.id, last.id];
        self.programs = vec![first, last];
        self.links = links;
        self.attachments = attachments;
        Ok(())
    }

    /// Kernel ids of the probe's links.
    pub fn link_ids(&self) -> Vec<u32> {
        self.links.iter().map(|l| l.id).collect()
    }

    /// Reads the maps ([`Self::read`]), then deletes the `NF_PORTS` keys of pairs no longer in
    /// `NF_PUBLISHED` (this was their last read: the sample still has them).
    ///
    /// While `NF_HOOKS` stands still (every packet bumps it before its port or other slot),
    /// nothing else moved: after one more read to let in-flight program runs finish, the last
    /// sample is returned without reading the other maps.
    pub fn collect(&self, ebpf: &mut Ebpf) -> Result<NetfilterSample, ProbeLoadError> {
        let hooks = hook_totals(ebpf)?;
        let mut steady = self.steady.lock().unwrap_or_else(|e| e.into_inner());
        if steady.confirmed && steady.hooks.as_ref() == Some(&hooks) {
            return Ok(steady.last.clone());
        }
        let ports_seen = crate::probes::seen_count(ebpf, berth_common::maps::NF_PORTS_SEEN);
        let same_ports =
            ports_seen.is_some() && steady.ports_seen == ports_seen && steady.ports_confirmed;
        let sample = self.read_with(ebpf, same_ports.then(|| steady.last.by_port.clone()))?;
        let gone: Vec<PortKey> = sample
            .by_port
            .iter()
            .filter(|p| !self.published.contains((p.proto, p.port)))
            .map(raw_key)
            .collect();
        if !gone.is_empty() {
            let err = |source| ProbeLoadError::Map { map: PORTS, source };
            let map = ebpf
                .map_mut(PORTS)
                .ok_or(ProbeLoadError::MissingMap { map: PORTS })?;
            let mut ports =
                PerCpuHashMap::<&mut MapData, PortKey, Cost>::try_from(map).map_err(err)?;
            for key in &gone {
                match ports.remove(key) {
                    Ok(()) => {}
                    Err(e) if crate::probes::mapset::errno(&e) == Some(libc::ENOENT) => {}
                    Err(e) => return Err(err(e)),
                }
            }
            debug!(
                keys = gone.len(),
                "netfilter: keys of unpublished ports deleted"
            );
        }
        steady.confirmed = gone.is_empty() && steady.hooks.as_ref() == Some(&hooks);
        steady.hooks = Some(hooks);
        steady.ports_confirmed =
            gone.is_empty() && ports_seen.is_some() && steady.ports_seen == ports_seen;
        steady.ports_seen = ports_seen;
        steady.last = sample.clone();
        Ok(sample)
    }

    /// Reads `NF_PORTS`, `NF_OTHER` and `NF_HOOKS`, summing the per-CPU values; deletes
    /// nothing.
    pub fn read(&self, ebpf: &Ebpf) -> Result<NetfilterSample, ProbeLoadError> {
        self.read_with(ebpf, None)
    }

    /// [`Self::read`], with `by_port` standing for `NF_PORTS` when given.
    fn read_with(
        &self,
        ebpf: &Ebpf,
        by_port: Option<Vec<PortCost>>,
    ) -> Result<NetfilterSample, ProbeLoadError> {
        let err = |map: &'static str| move |source| ProbeLoadError::Map { map, source };
        let map = |name: &'static str| {
            ebpf.map(name)
                .ok_or(ProbeLoadError::MissingMap { map: name })
        };
        let by_port = match by_port {
            Some(by_port) => by_port,
            None => {
                // In batches when the kernel can (two bpf(2) calls per key otherwise: most of an idle
                // agent's CPU in the profile of docs/benchmarks.md).
                let batched = match (map(PORTS)?, aya::util::nr_cpus()) {
                    (aya::maps::Map::PerCpuHashMap(data), Ok(cpus)) => {
                        crate::probes::batch::per_cpu_entries::<PortKey, Cost>(data, cpus).ok()
                    }
                    _ => None,
                };
                let entries: Vec<(PortKey, Vec<Cost>)> = match batched {
                    Some(all) => all,
                    None => PerCpuHashMap::<&MapData, PortKey, Cost>::try_from(map(PORTS)?)
                        .map_err(err(PORTS))?
                        .iter()
                        .map(|e| e.map(|(k, v)| (k, v.to_vec())).map_err(err(PORTS)))
                        .collect::<Result<_, _>>()?,
                };
                let mut by_port = Vec::new();
                for (key, values) in entries {
                    let (packets, nanoseconds) = sum(&values);
                    by_port.push(PortCost {
                        family: Family::from_index(key.family),
                        proto: key.proto,
                        port: key.port,
                        hook: Hook::ALL[(key.hook as usize).min(Hook::ALL.len() - 1)],
                        ct_state: CtState::from_raw(key.ct_state),
                        packets,
                        nanoseconds,
                    });
                }
                by_port.sort_by_key(|p| (p.family, p.hook, p.proto, p.port, p.ct_state));
                by_port
            }
        };

        let others = array_sums(ebpf, OTHER)?;
        let slot = |index: u32| -> Result<(u64, u64), ProbeLoadError> {
            Ok(others.get(index as usize).copied().unwrap_or_default())
        };
        let mut other = Vec::new();
        let mut local_prerouting = Vec::new();
        for (f, family) in Family::ALL.into_iter().enumerate() {
            for hook in Hook::ALL {
                for state in 0..CT_STATES as u8 {
                    let (packets, nanoseconds) = slot(other_slot(f as u8, hook as u8, state))?;
                    if packets > 0 {
                        other.push(OtherCost {
                            family,
                            hook,
                            ct_state: CtState::from_raw(state),
                            packets,
                            nanoseconds,
                        });
                    }
                }
            }
            let (packets, nanoseconds) = slot(local_prerouting_slot(f as u8))?;
            if packets > 0 {
                local_prerouting.push(HookTotal {
                    family,
                    hook: Hook::Prerouting,
                    packets,
                    nanoseconds,
                });
            }
        }

        let hooks = hook_totals(ebpf)?;
        Ok(NetfilterSample {
            by_port,
            other,
            local_prerouting,
            hooks,
        })
    }

    /// Makes `NF_PUBLISHED` hold exactly `want` (the difference is written).
    pub fn publish(
        &mut self,
        ebpf: &mut Ebpf,
        want: &std::collections::BTreeSet<published::ProtoPort>,
    ) -> Result<crate::probes::mapset::SyncOutcome, ProbeLoadError> {
        let out = self.published.sync(ebpf, want)?;
        // Another set of ports: the next collect reads the maps (keys of ports no longer
        // published go after that read).
        let steady = self.steady.get_mut().unwrap_or_else(|e| e.into_inner());
        steady.confirmed = false;
        steady.ports_confirmed = false;
        self.status.paths.insert(
            PATH_PUBLISHED,
            format!(
                "{} published (protocol, port) pairs counted per port, synced each tick",
                self.published.len()
            ),
        );
        Ok(out)
    }
}

/// Every slot of the per-CPU array of [`Cost`]s `name`, summed over CPUs, by index: one
/// `BPF_MAP_LOOKUP_BATCH` where the kernel has it (one lookup per slot otherwise, each also a
/// run of berth's own `sys_enter` probe: 52 a tick for `NF_OTHER` and `NF_HOOKS`).
fn array_sums(ebpf: &Ebpf, name: &'static str) -> Result<Vec<(u64, u64)>, ProbeLoadError> {
    let err = |source| ProbeLoadError::Map { map: name, source };
    let map = ebpf
        .map(name)
        .ok_or(ProbeLoadError::MissingMap { map: name })?;
    if let (aya::maps::Map::PerCpuArray(data), Ok(cpus)) = (map, aya::util::nr_cpus())
        && let Ok(all) = crate::probes::batch::per_cpu_entries::<u32, Cost>(data, cpus)
    {
        let mut out = vec![(0, 0); all.len()];
        for (index, values) in all {
            if let Some(slot) = out.get_mut(index as usize) {
                *slot = sum(&values);
            }
        }
        return Ok(out);
    }
    let array = PerCpuArray::<&MapData, Cost>::try_from(map).map_err(err)?;
    (0..array.len())
        .map(|i| Ok(sum(&array.get(&i, 0).map_err(err)?)))
        .collect()
}

/// `NF_HOOKS`: every packet of each (family, hook), summed over CPUs.
fn hook_totals(ebpf: &Ebpf) -> Result<Vec<HookTotal>, ProbeLoadError> {
    let totals = array_sums(ebpf, HOOK_TOTALS)?;
    let mut hooks = Vec::new();
    for (f, family) in Family::ALL.into_iter().enumerate() {
        for hook in Hook::ALL {
            let index = f as u32 * HOOKS + hook as u32;
            let (packets, nanoseconds) = totals.get(index as usize).copied().unwrap_or_default();
            hooks.push(HookTotal {
                family,
                hook,
                packets,
                nanoseconds,
            });
        }
    }
    Ok(hooks)
}

/// Key of the probe's `paths` in `/api/v1/system`: what `NF_PUBLISHED` holds.
pub const PATH_PUBLISHED: &str = "published_ports";

/// The `NF_PORTS` key a row was read from.
fn raw_key(p: &PortCost) -> PortKey {
    PortKey {
        family: p.family as u8,
        hook: p.hook as u8,
        ct_state: match p.ct_state {
            CtState::New => CT_NEW,
            CtState::Established => CT_ESTABLISHED,
            CtState::Reply => CT_REPLY,
            CtState::Other => CT_OTHER,
        },
        proto: p.proto,
        port: p.port,
        _pad: 0,
    }
}

fn sum(values: &[Cost]) -> (u64, u64) {
    values
        .iter()
        .fold((0, 0), |(p, n), c| (p + c.packets, n + c.nanoseconds))
}

/// "available", or "unavailable (EPERM): ..." for the status' `fentry` path.
fn detect_fentry() -> String {
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(e) => return format!("unavailable (no BTF): {e}"),
    };
    match loader::probe_fentry(&btf, FENTRY_TARGET) {
        Ok(()) => "available".to_owned(),
        Err(e) => format!("unavailable ({}): {e}", e.errno()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::btf::tests::Builder;

    #[test]
    fn conntrack_states_map_from_the_programs_values() {
        assert_eq!(CtState::from_raw(CT_NEW), CtState::New);
        assert_eq!(CtState::from_raw(CT_ESTABLISHED), CtState::Established);
        assert_eq!(CtState::from_raw(CT_REPLY), CtState::Reply);
        assert_eq!(CtState::from_raw(200), CtState::Other);
    }

    #[test]
    fn hooks_are_in_kernel_order() {
        for (i, h) in Hook::ALL.iter().enumerate() {
            assert_eq!(*h as usize, i);
        }
        assert_eq!(Hook::Postrouting.name(), "postrouting");
        assert_eq!(Family::Ipv6.pf(), 10);
    }

    /// A BTF with sk_buff {head, network_header} and nf_hook_state {hook, pf}, no _nfct.
    fn without_conntrack() -> Btf {
        let mut b = Builder::new();
        b.add("u8", 1, 0, 1, &[8]); // 1
        b.add("u16", 1, 0, 2, &[16]); // 2
        b.add("", 2, 0, 1, &[]); // 3: u8 *
        let (head, nh) = (b.string("head"), b.string("network_header"));
        b.add("sk_buff", 4, 2, 16, &[head, 3, 0, nh, 2, 64]); // 4
        let (hook, pf) = (b.string("hook"), b.string("pf"));
        b.add("nf_hook_state", 4, 2, 2, &[hook, 1, 0, pf, 1, 8]); // 5
        Btf::parse(b.build()).unwrap()
    }

    #[test]
    fn a_kernel_without_conntrack_gets_no_conntrack_offsets() {
        let l = KernelLayout::from_btf(&without_conntrack()).unwrap();
        assert_eq!(l.skb_head, 0);
        assert_eq!(l.skb_network_header, 8);
        assert_eq!(l.state_pf, 1);
        assert_eq!(l.skb_nfct, OFFSET_NONE);
        assert_eq!(l.ct_orig_dport, OFFSET_NONE);
    }

    #[test]
    fn the_running_kernels_layout_is_found() {
        let Ok(btf) = Btf::from_sys_fs() else {
            return;
        };
        let l = KernelLayout::from_btf(&btf).unwrap();
        // PLATFORM.md, checked by hand on 6.18: state->hook = 0, state->pf = 1.
        assert_eq!((l.state_hook, l.state_pf), (0, 1));
        assert_ne!(l.skb_nfct, OFFSET_NONE);
        assert_eq!(l.ct_orig_proto, l.ct_orig_dport + 2);
    }
}
