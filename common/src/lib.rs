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
}

impl ProbeError {
    /// Number of slots in `PROBE_ERRORS`.
    pub const COUNT: u32 = 3;
    /// Every variant, in index order.
    pub const ALL: [ProbeError; Self::COUNT as usize] = [
        ProbeError::SyscallsMapFull,
        ProbeError::NetMapFull,
        ProbeError::LatencyMapFull,
    ];

    /// `(probe, map)` labels for the metric that reports this error.
    pub const fn labels(self) -> (&'static str, &'static str) {
        match self {
            ProbeError::SyscallsMapFull => ("syscalls", "SYSCALLS"),
            ProbeError::NetMapFull => ("network", "NET"),
            ProbeError::LatencyMapFull => ("syscalls", "SYSCALL_LATENCY"),
        }
    }
}

/// Names of the read-only globals the agent sets at load time (`EbpfLoader::set_global`).
pub mod globals {
    /// `u64`: v2 cgroup id of the tracked subtree's root. Tasks outside it exit early.
    pub const TRACK_ROOT_ID: &str = "TRACK_ROOT_ID";
    /// `u32`: depth of that root below the cgroup2 mount (the mount itself is level 0).
    pub const TRACK_ROOT_LEVEL: &str = "TRACK_ROOT_LEVEL";
    /// `u32`: 1 when syscall latency is measured (sys_enter stamps, sys_exit records).
    pub const SYSCALL_LATENCY: &str = "SYSCALL_LATENCY";
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
}
