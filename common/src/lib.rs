//! The kernel/user contract of berth's eBPF maps.
//!
//! Every type that crosses a map lives here, `#[repr(C)]` with explicit padding, so the eBPF
//! programs (`ebpf/`) and the agent (`agent/src/probes/`) agree on one layout. The `user` feature
//! adds `aya::Pod` for the userspace side.
#![no_std]

/// Largest syscall number counted as itself; anything at or above it (x32 numbers, garbage from a
/// bad `orig_ax`) is counted under [`SYSCALL_NR_OTHER`] so the key space stays bounded.
pub const SYSCALL_NR_MAX: u32 = 1023;
/// Bucket for out-of-range syscall numbers (including negative ones).
pub const SYSCALL_NR_OTHER: u32 = SYSCALL_NR_MAX;

/// Key of the `SYSCALLS` per-CPU hash map: one entry per (cgroup v2 id, syscall number).
/// Value: `u64`, syscalls entered on that CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallKey {
    /// v2 (unified) cgroup id of the calling task, as `bpf_get_current_cgroup_id()` returns it:
    /// the inode number of the cgroup's directory.
    pub cgroup_id: u64,
    /// Syscall number (x86_64 table on x86_64), or [`SYSCALL_NR_OTHER`].
    pub nr: u32,
    /// Explicit padding: keys are hashed byte-wise by the kernel, so it must always be zero.
    pub _pad: u32,
}

/// Capacity of the `SYSCALLS` map: distinct (cgroup, syscall) pairs. A busy container uses
/// 50 to 150 syscalls, so this tracks a few hundred containers. When it is full, new pairs are
/// counted in [`ProbeError::SyscallsMapFull`] instead: never dropped silently.
pub const SYSCALLS_MAX_ENTRIES: u32 = 65_536;

/// Buckets of the syscall latency histogram: bucket `i` counts calls of `[2^i, 2^(i+1))` ns
/// (bucket 0 also takes 0 ns); the last bucket takes everything from 2^31 ns (2.1 s) up.
pub const LATENCY_BUCKETS: usize = 32;

/// Value of the `SYSCALL_LATENCY` per-CPU hash (key [`SyscallKey`]): a log2 histogram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHist {
    pub buckets: [u64; LATENCY_BUCKETS],
    /// Sum of all latencies, nanoseconds.
    pub sum_ns: u64,
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self {
            buckets: [0; LATENCY_BUCKETS],
            sum_ns: 0,
        }
    }
}

/// Value of the `SYSCALL_ENTER` LRU hash (key: the thread's pid_tgid): what `sys_exit` needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallEnter {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub nr: u32,
    pub _pad: u32,
}

/// Capacity of `SYSCALL_LATENCY` (distinct (cgroup, syscall) pairs with latency data).
pub const SYSCALL_LATENCY_MAX_ENTRIES: u32 = 16_384;
/// Capacity of `SYSCALL_ENTER`: threads inside a syscall at once (LRU: a thread that dies
/// in a syscall, e.g. exit_group, is evicted, never leaked).
pub const SYSCALL_ENTER_MAX_ENTRIES: u32 = 65_536;

/// Direction of a packet as the cgroup sees it (`NetKey::direction`).
pub const DIRECTION_INGRESS: u8 = 0;
pub const DIRECTION_EGRESS: u8 = 1;

/// Key of the `NET` per-CPU hash map: one entry per (cgroup v2 id of the packet's socket,
/// direction, L4 protocol number). Value: [`NetValue`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetKey {
    pub cgroup_id: u64,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...); 0 when not IP.
    pub protocol: u8,
    pub _pad: [u8; 6],
}

/// Value of the `NET` map, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetValue {
    pub packets: u64,
    /// Bytes at layer 3 (IP header included, link header excluded), as `skb->len` is for
    /// cgroup_skb programs.
    pub bytes: u64,
}

/// Capacity of the `NET` map: cgroups x 2 directions x a few protocols.
pub const NET_MAX_ENTRIES: u32 = 16_384;

/// Capacity of the `TRACKED` hash (cgroup v2 id -> `u8`): the cgroups whose tasks and sockets
/// the syscall and network probes count, berth's whole subtree plus the containers of other
/// engines (Docker, containerd, Kubernetes, podman, LXC). The agent syncs it each tick; a
/// cgroup that finds it full is not counted, and is reported in
/// `berth_probe_lost_events_total` (map `TRACKED`, [`ProbeError::TrackedFull`]).
pub const TRACKED_MAX_ENTRIES: u32 = 16_384;

/// Indexes of the `PROBE_ERRORS` per-CPU array (value `u64`): events a probe could not record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// A syscall whose (cgroup, syscall) pair found the `SYSCALLS` map full.
    SyscallsMapFull = 0,
    /// A packet whose (cgroup, direction, protocol) found the `NET` map full.
    NetMapFull = 1,
    /// A syscall exit whose (cgroup, syscall) found the `SYSCALL_LATENCY` map full.
    LatencyMapFull = 2,
    /// A packet whose (family, hook, conntrack state, protocol, port) key found the `NF_PORTS`
    /// map full. It is still counted in the per-hook totals (`NF_HOOKS`).
    NetfilterPortsFull = 3,
    /// A packet seen by the `last` netfilter program whose `first` timestamp was gone (another
    /// packet took its scratch slot: nesting or a slot collision), so its time was not recorded.
    NetfilterUnmatched = 4,
    /// A cgroup created below berth's root that the `cgroup_mkdir` hook could not put into the
    /// full `TRACKED` map (the agent adds the containers it could not insert itself when it
    /// reports this): its syscalls and packets are not counted.
    TrackedFull = 5,
    /// A published (protocol, port) the full `NF_PUBLISHED` map refused (the agent counts these
    /// itself, one per refusal; the kernel never writes the slot): its packets count in the
    /// per-hook "other" slots instead of per port.
    NetfilterPublishedFull = 6,
}

impl ProbeError {
    /// Number of slots in `PROBE_ERRORS`.
    pub const COUNT: u32 = 7;
    /// Every variant, in index order.
    pub const ALL: [ProbeError; Self::COUNT as usize] = [
        ProbeError::SyscallsMapFull,
        ProbeError::NetMapFull,
        ProbeError::LatencyMapFull,
        ProbeError::NetfilterPortsFull,
        ProbeError::NetfilterUnmatched,
        ProbeError::TrackedFull,
        ProbeError::NetfilterPublishedFull,
    ];

    /// `(probe, map)` labels for the metric that reports this error.
    pub const fn labels(self) -> (&'static str, &'static str) {
        match self {
            ProbeError::SyscallsMapFull => ("syscalls", maps::SYSCALLS),
            ProbeError::NetMapFull => ("network", maps::NET),
            ProbeError::LatencyMapFull => ("syscalls", maps::SYSCALL_LATENCY_HIST),
            ProbeError::NetfilterPortsFull => ("netfilter", maps::NF_PORTS),
            ProbeError::NetfilterUnmatched => ("netfilter", maps::NF_SCRATCH),
            // Lost to the network probe as well: the agent reports it for both.
            ProbeError::TrackedFull => ("syscalls", maps::TRACKED),
            ProbeError::NetfilterPublishedFull => ("netfilter", maps::NF_PUBLISHED),
        }
    }
}
// Names of the read-only globals the agent sets at load time (`EbpfLoader::set_global`).
/// Names of the maps in berth's eBPF object, defined once: the eBPF side declares its statics
/// with these names (`ebpf/src/*.rs`; a test in `agent/src/probes/` checks the object holds
/// every one), the agent looks them up, pins them and labels lost events with them.
/// The `ebpf` port-mapping backend's maps.
pub mod portmap;

pub mod maps {
    /// Per-CPU hash, [`crate::SyscallKey`] -> u64 calls.
    pub const SYSCALLS: &str = "SYSCALLS";
    /// Per-CPU array, one u64: syscalls counted and latency samples taken, bumped after
    /// `SYSCALLS` / `SYSCALL_LATENCY_HIST`; unchanged, they need no new read.
    pub const SYSCALLS_SEEN: &str = "SYSCALLS_SEEN";
    /// Per-CPU hash, [`crate::SyscallKey`] -> [`crate::LatencyHist`].
    pub const SYSCALL_LATENCY_HIST: &str = "SYSCALL_LATENCY_HIST";
    /// LRU hash, thread id -> [`crate::SyscallEnter`] (sys_enter to sys_exit).
    pub const SYSCALL_ENTER: &str = "SYSCALL_ENTER";
    /// Per-CPU hash, [`crate::NetKey`] -> [`crate::NetValue`].
    pub const NET: &str = "NET";
    /// Per-CPU hash, [`crate::netfilter::PortKey`] -> [`crate::netfilter::Cost`].
    pub const NF_PORTS: &str = "NF_PORTS";
    /// Per-CPU array, family * HOOKS + hook -> [`crate::netfilter::Cost`].
    pub const NF_HOOKS: &str = "NF_HOOKS";
    /// Per-CPU array of [`crate::netfilter::Scratch`] stamps between the two programs.
    pub const NF_SCRATCH: &str = "NF_SCRATCH";
    /// Hash, [`crate::netfilter::PublishedKey`] -> `u8` (1): the (protocol, port) pairs some
    /// container publishes, written by the agent each tick; only they get `NF_PORTS` keys.
    pub const NF_PUBLISHED: &str = "NF_PUBLISHED";
    /// Per-CPU array, [`crate::netfilter::other_slot`] -> [`crate::netfilter::Cost`]: packets
    /// to ports no container publishes, per (family, hook, conntrack state).
    pub const NF_OTHER: &str = "NF_OTHER";
    /// Per-CPU array, one u64: writes to `NF_PORTS`, bumped after each; unchanged, `NF_PORTS`
    /// needs no new read.
    pub const NF_PORTS_SEEN: &str = "NF_PORTS_SEEN";
    /// Per-CPU array of [`crate::netfilter::Carry`], one per family: a new unpublished
    /// packet's prerouting cost, until `last` sees it at input (local delivery).
    pub const NF_CARRY: &str = "NF_CARRY";
    /// Hash, cgroup v2 id -> `u8` (1): the cgroups the syscall and network probes count.
    pub const TRACKED: &str = "TRACKED";
    /// Per-CPU array, [`crate::ProbeError`] -> u64 events lost.
    pub const PROBE_ERRORS: &str = "PROBE_ERRORS";

    /// Maps pinned under /sys/fs/bpf/berth/<root> so their counters survive an agent restart.
    pub const PINNED: [&str; 7] = [
        SYSCALLS,
        SYSCALL_LATENCY_HIST,
        NET,
        NF_PORTS,
        NF_HOOKS,
        NF_OTHER,
        PROBE_ERRORS,
    ];
}

pub mod globals {
    /// `u64`: v2 cgroup id of the tracked subtree's root: the `cgroup_mkdir` hook puts every
    /// cgroup created below it into `TRACKED` at once.
    pub const TRACK_ROOT_ID: &str = "TRACK_ROOT_ID";
    /// `u32`: depth of that root below the cgroup2 mount (the mount itself is level 0).
    pub const TRACK_ROOT_LEVEL: &str = "TRACK_ROOT_LEVEL";
    /// `u32`: 1 when syscall latency is measured (sys_enter stamps, sys_exit records).
    pub const SYSCALL_LATENCY: &str = "SYSCALL_LATENCY";

    // Kernel struct offsets for the netfilter probe, in bytes, read from the kernel's BTF
    // (/sys/kernel/btf/vmlinux) by the agent: Rust eBPF has no CO-RE. All `u32`;
    // [`crate::netfilter::OFFSET_NONE`] when the field does not exist on this kernel.
    // Offsets the `cgroup_mkdir`/`cgroup_rmdir` hooks read, all `u32` from BTF like the
    // netfilter ones below.
    /// `struct cgroup`, `root` (`struct cgroup_root *`).
    pub const CG_ROOT: &str = "CG_ROOT";
    /// `struct cgroup`, `kn` (`struct kernfs_node *`).
    pub const CG_KN: &str = "CG_KN";
    /// `struct cgroup`, `level` (`int`).
    pub const CG_LEVEL: &str = "CG_LEVEL";
    /// `struct cgroup`, `ancestors` (`struct cgroup *[]`, indexed by level).
    pub const CG_ANCESTORS: &str = "CG_ANCESTORS";
    /// `struct cgroup_root`, `hierarchy_id` (`int`; 0 is the cgroup2 hierarchy).
    pub const CGROOT_HIERARCHY_ID: &str = "CGROOT_HIERARCHY_ID";
    /// `struct kernfs_node`, `id` (`u64`: the cgroup id).
    pub const KN_ID: &str = "KN_ID";

    /// `struct sk_buff`, `head` (`unsigned char *`).
    pub const NF_SKB_HEAD: &str = "NF_SKB_HEAD";
    /// `struct sk_buff`, `network_header` (`__u16`, offset of the L3 header from `head`).
    pub const NF_SKB_NETWORK_HEADER: &str = "NF_SKB_NETWORK_HEADER";
    /// `struct sk_buff`, `_nfct` (`unsigned long`: `struct nf_conn *` | `enum ip_conntrack_info`).
    pub const NF_SKB_NFCT: &str = "NF_SKB_NFCT";
    /// `struct nf_hook_state`, `hook` (`u8`).
    pub const NF_STATE_HOOK: &str = "NF_STATE_HOOK";
    /// `struct nf_hook_state`, `pf` (`u8`).
    pub const NF_STATE_PF: &str = "NF_STATE_PF";
    /// `struct nf_conn`, `tuplehash[IP_CT_DIR_ORIGINAL].tuple.dst.u.all` (`__be16`): the
    /// destination port of the connection's first packet, before any NAT.
    pub const NF_CT_ORIG_DPORT: &str = "NF_CT_ORIG_DPORT";
    /// `struct nf_conn`, `tuplehash[IP_CT_DIR_ORIGINAL].tuple.dst.protonum` (`u8`).
    pub const NF_CT_ORIG_PROTO: &str = "NF_CT_ORIG_PROTO";
}

/// The netfilter cost probe: two `BPF_PROG_TYPE_NETFILTER` programs, `first` and `last`, on
/// every hook of IPv4 and IPv6, measure the time netfilter spends between them per packet.
pub mod netfilter {
    /// Hooks per family: prerouting, input, forward, output, postrouting (`enum nf_inet_hooks`).
    pub const HOOKS: u32 = 5;
    /// Families, by index: 0 = IPv4 (`NFPROTO_IPV4` = 2), 1 = IPv6 (`NFPROTO_IPV6` = 10).
    pub const FAMILIES: u32 = 2;
    /// Entries of `NF_HOOKS`: index `family * HOOKS + hook`.
    pub const HOOK_SLOTS: u32 = FAMILIES * HOOKS;
    /// Entries of `NF_SCRATCH` (per CPU): one stamp per (family, hook), index as `NF_HOOKS`.
    /// A packet that passes the same hook on the same CPU while another one is between
    /// `first` and `last` there (a softirq interrupting a process-context output) takes the
    /// slot: the outer packet is then not measured and counts as
    /// [`crate::ProbeError::NetfilterUnmatched`]. (Several slots chosen by skb address would
    /// need the address as a number, and the verifier forbids arithmetic on that pointer.)
    pub const SCRATCH_SLOTS: u32 = HOOK_SLOTS;
    /// Capacity of `NF_PUBLISHED`: every TCP and every UDP port (the only protocols a
    /// container publishes), so no published port is ever refused.
    pub const PUBLISHED_MAX_ENTRIES: u32 = 2 * 65_536;
    /// Capacity of `NF_PORTS`: distinct (family, hook, ct state, protocol, port) keys, created
    /// only for published (protocol, port) pairs (`NF_PUBLISHED`), and deleted by the agent
    /// after their last read once the port is no longer published. A forwarded port with new,
    /// established and reply traffic uses 9 keys (3 hooks x 3 states): this holds 40,000 such
    /// ports, or 4 keys for every TCP and UDP port. The map is not preallocated
    /// ([`PORTS_MAP_FLAGS`]): memory follows the keys in use, the cap costs only the kernel's
    /// bucket array (16 bytes x capacity rounded up to a power of two: 8 MiB).
    /// When full, new keys count in [`crate::ProbeError::NetfilterPortsFull`] and still reach
    /// the per-hook totals.
    pub const PORTS_MAX_ENTRIES: u32 = 1 << 19;
    /// `BPF_F_NO_PREALLOC`, for `NF_PORTS` and `NF_PUBLISHED`.
    pub const PORTS_MAP_FLAGS: u32 = 1;
    /// Conntrack states ([`CT_NEW`] .. [`CT_OTHER`]).
    pub const CT_STATES: u32 = 4;
    /// First `NF_OTHER` slot of the local-delivery prerouting costs ([`local_prerouting_slot`]).
    pub const LOCAL_PREROUTING_BASE: u32 = HOOK_SLOTS * CT_STATES;
    /// Entries of `NF_OTHER`: one per (family, hook, conntrack state) for packets to ports no
    /// container publishes, then one per family for the prerouting cost of those of them that
    /// were new and then delivered locally (reached input): the host's own services' baseline.
    pub const OTHER_SLOTS: u32 = LOCAL_PREROUTING_BASE + FAMILIES;

    /// Index in `NF_OTHER` of (family index, hook, conntrack state).
    pub const fn other_slot(family: u8, hook: u8, ct_state: u8) -> u32 {
        (family as u32 * HOOKS + hook as u32) * CT_STATES + ct_state as u32
    }

    /// Index in `NF_OTHER` of the prerouting cost of new unpublished packets of `family` that
    /// reached input.
    pub const fn local_prerouting_slot(family: u8) -> u32 {
        LOCAL_PREROUTING_BASE + family as u32
    }
    /// Value of an offset global for a field this kernel does not have.
    pub const OFFSET_NONE: u32 = u32::MAX;

    /// Family indexes of [`PortKey::family`].
    pub const FAMILY_IPV4: u8 = 0;
    pub const FAMILY_IPV6: u8 = 1;

    /// Conntrack state of a packet as the `last` program sees it, from the low 3 bits of
    /// `skb->_nfct` (`enum ip_conntrack_info`).
    pub const CT_NEW: u8 = 0;
    /// `IP_CT_ESTABLISHED`: original direction, after the peer answered.
    pub const CT_ESTABLISHED: u8 = 1;
    /// `IP_CT_ESTABLISHED_REPLY` or `IP_CT_RELATED_REPLY`: the peer's direction.
    pub const CT_REPLY: u8 = 2;
    /// `IP_CT_RELATED`, untracked (`notrack`), or no conntrack entry at all.
    pub const CT_OTHER: u8 = 3;

    /// Key of the `NF_PORTS` per-CPU hash. Value: [`Cost`].
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct PortKey {
        /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
        pub family: u8,
        /// `enum nf_inet_hooks`: 0 prerouting .. 4 postrouting.
        pub hook: u8,
        /// [`CT_NEW`], [`CT_ESTABLISHED`], [`CT_REPLY`] or [`CT_OTHER`].
        pub ct_state: u8,
        /// IP protocol number (6 TCP, 17 UDP, ...).
        pub proto: u8,
        /// Destination port of the connection's original direction before any NAT (from the
        /// conntrack entry), or of the packet as it entered the hook when it has no entry;
        /// host byte order; 0 for protocols without ports and for non-first fragments.
        pub port: u16,
        /// Explicit padding: keys are hashed byte-wise by the kernel, so it must always be zero.
        pub _pad: u16,
    }

    /// Value of `NF_PORTS` and `NF_HOOKS` (per CPU): packets and the nanoseconds netfilter
    /// spent on them between the `first` and the `last` program.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Cost {
        pub packets: u64,
        pub nanoseconds: u64,
    }

    /// Key of `NF_PUBLISHED` (value `u8`, 1): a published (protocol, host port).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct PublishedKey {
        /// IP protocol number: 6 TCP, 17 UDP.
        pub proto: u8,
        /// Explicit padding: keys are hashed byte-wise by the kernel, so it must always be zero.
        pub _pad: u8,
        /// Host port, host byte order.
        pub port: u16,
    }

    /// Value of `NF_CARRY` (per CPU, one per family).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Carry {
        /// Address of the `struct sk_buff` whose prerouting cost this is; 0 when free.
        pub skb: u64,
        pub nanoseconds: u64,
    }

    /// Value of `NF_SCRATCH`: what `first` saw, for `last` on the same CPU.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Scratch {
        /// Address of the `struct sk_buff`; 0 when the slot is free.
        pub skb: u64,
        /// `bpf_ktime_get_ns()` at the end of `first`.
        pub start_ns: u64,
        /// Destination port as the packet entered the hook (host byte order).
        pub port: u16,
        pub proto: u8,
        pub _pad: [u8; 5],
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `SyscallKey` is `#[repr(C)]`, `Copy`, made of integers only, with explicit padding:
    // every bit pattern is valid.
    unsafe impl aya::Pod for super::SyscallKey {}
    // SAFETY: as above, integers and explicit padding only.
    unsafe impl aya::Pod for super::NetKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LatencyHist {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SyscallEnter {}
    // SAFETY: as above: `#[repr(C)]` integers with explicit padding.
    unsafe impl aya::Pod for super::netfilter::PortKey {}
    unsafe impl aya::Pod for super::netfilter::Cost {}
    unsafe impl aya::Pod for super::netfilter::Scratch {}
    unsafe impl aya::Pod for super::netfilter::PublishedKey {}
    unsafe impl aya::Pod for super::netfilter::Carry {}
    // SAFETY: as above: `#[repr(C)]` integers with explicit padding.
    unsafe impl aya::Pod for super::portmap::PortKey {}
    unsafe impl aya::Pod for super::portmap::PortTarget {}
    unsafe impl aya::Pod for super::portmap::RevKey {}
    unsafe impl aya::Pod for super::portmap::RevTarget {}
    unsafe impl aya::Pod for super::portmap::SockKey {}
    unsafe impl aya::Pod for super::portmap::SockOrig {}
}
