//! The `ebpf` backend: published ports at host-networking cost.
//!
//! The mapping is 1:1 (host port -> container address and port), so it can be stateless: TCX
//! programs rewrite addresses and ports and redirect packets past the host's netfilter and
//! conntrack (see `ebpf/src/portmap/main.rs` for the programs, [`plane`] for how they are
//! loaded, pinned and attached). Host-local clients go through sock_addr hooks.
//!
//! Every mapping is also an element of an nft-map table of its own (`<table>-bpf`,
//! [`NftMap::slow_path`]): it is the record of owners and mappings (`owners`, `mappings`,
//! conflicts), and the slow path for whatever the programs decline (IP fragments, options,
//! ICMP they do not translate, oversize packets, hairpin from containers), so a declined packet
//! is still delivered. Its DNAT rules carry counters: fast-path traffic never moves them.
//!
//! Kept apart so that a reply is never mistaken for a published port:
//! - the host's own ephemeral ports: published host ports are added to
//!   `net.ipv4.ip_local_reserved_ports` (and taken out again when unpublished);
//! - masquerade: berth's containers leaving through the host are masqueraded to source ports
//!   [`MASQUERADE_PORTS`] (the slow-path table's postrouting chain runs before berth's other
//!   tables), and the backend refuses to publish host ports in that range.
//!
//! Limits, by design of a stateless mapping: replies of a wildcard (`-p HOST:CTR`) mapping leave
//! with the egress uplink's first address (a client that used another host address should be
//! served by a `-p IP:HOST:CTR` mapping); two host ports published to the same container port
//! are served by the slow path (a reply could not tell which one the client used); IPv6 is not
//! mapped here (berth's bridge is IPv4).
//!
//! The container's host-side veth is found by its name, [`crate::net::host_veth`] of the owner.
//!
//! Host changes and who removes them: the pinned maps and links under [`EbpfOptions::pin_root`]
//! (the reply link of a container with it, the rest with [`Backend::teardown`]); the slow-path
//! table (the same); `ip_local_reserved_ports` entries (with the mappings).

pub mod plane;
mod sysctl;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Mutex,
};

use berth_common::portmap::{PortKey, PortTarget, RevKey, RevTarget, Stat};

use self::plane::{Entries, Plane};
use super::{
    Backend, BackendKind, Mapping, PortmapConfig, PortmapError, Proto, Publish, nft::NftMap,
    validate_owner,
};

/// Source ports of masqueraded container traffic with this backend: above the kernel's default
/// ephemeral range (32768-60999), so neither they nor the host's own sockets meet published
/// ports. Published host ports in this range are refused.
pub const MASQUERADE_PORTS: (u16, u16) = (61000, 65535);

/// Where the `ebpf` backend attaches and pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfOptions {
    /// Interfaces whose ingress gets the forward program; empty: those that carry an IPv4
    /// default route now.
    pub uplinks: Vec<String>,
    /// cgroup2 directory for the sock_addr hooks (host-local clients); `None`: host-local
    /// clients take the slow path.
    pub cgroup2: Option<PathBuf>,
    /// bpffs directory under which the data plane is pinned (`<pin_root>/portmap-<table>`).
    pub pin_root: PathBuf,
}

impl Default for EbpfOptions {
    fn default() -> Self {
        EbpfOptions {
            uplinks: Vec::new(),
            cgroup2: None,
            pin_root: PathBuf::from("/sys/fs/bpf/berth"),
        }
    }
}

/// The `ebpf` backend. Changes are serialised by the plane's lock.
pub struct Ebpf {
    config: PortmapConfig,
    options: EbpfOptions,
    slow: NftMap,
    plane: Mutex<Option<Loaded>>,
}

/// The loaded plane and the host ports this backend reserved in `ip_local_reserved_ports`.
struct Loaded {
    plane: Plane,
    reserved: BTreeSet<(u8, u16)>,
}

impl Ebpf {
    pub fn new(config: PortmapConfig, options: EbpfOptions) -> Self {
        let mut slow_config = config.clone();
        slow_config.table = slow_table(&config.table);
        Ebpf {
            slow: NftMap::slow_path(slow_config, MASQUERADE_PORTS),
            config,
            options,
            plane: Mutex::new(None),
        }
    }

    /// Where this backend's data plane is pinned.
    pub fn pin_dir(&self) -> PathBuf {
        pin_dir(&self.options.pin_root, &self.config.table)
    }

    /// The slow-path nft table's name.
    pub fn slow_table(&self) -> String {
        slow_table(&self.config.table)
    }

    /// What the programs did with packets so far (summed over CPUs), read from the pinned
    /// counters; `None` when the data plane is not set up.
    pub fn stats(&self) -> Option<BTreeMap<Stat, u64>> {
        plane::read_stats(&self.pin_dir()).ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Loaded>> {
        self.plane.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The loaded plane, loading it (and attaching uplinks and hooks) on first use. Call it
    /// before changing the slow-path table: what it holds then is what an earlier agent
    /// reserved.
    fn plane<'a>(&self, slot: &'a mut Option<Loaded>) -> Result<&'a mut Loaded, PortmapError> {
        if slot.is_none() {
            self.preflight()?;
            let dir = self.pin_dir();
            let fresh = !dir.exists();
            let loaded = self.load(&dir);
            if loaded.is_err() && fresh {
                // Nothing of a half-made data plane stays behind.
                plane::remove_all(&dir);
            }
            *slot = Some(loaded?);
        }
        Ok(slot.as_mut().expect("loaded above"))
    }

    /// What must hold before anything is created: bpffs, and the uplinks exist.
    fn preflight(&self) -> Result<Vec<(String, u32)>, PortmapError> {
        check_bpffs(&self.options.pin_root)?;
        let uplinks = self.uplinks()?;
        if uplinks.is_empty() {
            return Err(PortmapError::Bpf {
                op: "finding the uplinks".into(),
                reason: "no interface carries an IPv4 default route; name them in \
                         network.uplinks"
                    .into(),
            });
        }
        Ok(uplinks)
    }

    fn load(&self, dir: &Path) -> Result<Loaded, PortmapError> {
        let uplinks = self.uplinks()?;
        let mut p = Plane::open(dir, sysctl::netns_cookie()?)?;
        for (name, _) in &uplinks {
            p.attach_forward(name)?;
        }
        let want: BTreeSet<&str> = uplinks.iter().map(|(n, _)| n.as_str()).collect();
        for old in p.forward_links() {
            if !want.contains(old.as_str()) {
                p.detach_forward(&old);
            }
        }
        if let Some(cg) = &self.options.cgroup2 {
            p.attach_sock_hooks(cg)?;
        }
        let reserved = host_ports(&self.slow.mappings()?);
        Ok(Loaded { plane: p, reserved })
    }

    /// (name, ifindex) of the uplinks, checked to exist.
    fn uplinks(&self) -> Result<Vec<(String, u32)>, PortmapError> {
        let names = if self.options.uplinks.is_empty() {
            sysctl::default_route_links()?
        } else {
            self.options.uplinks.clone()
        };
        names
            .into_iter()
            .map(|n| match sysctl::ifindex(&n) {
                Some(i) => Ok((n, i)),
                None => Err(PortmapError::Bpf {
                    op: format!("uplink {n}"),
                    reason: "no such interface in this network namespace".into(),
                }),
            })
            .collect()
    }

    /// Makes the maps, the reply links and the reserved ports match the slow-path table.
    fn sync(&self, loaded: &mut Loaded) -> Result<(), PortmapError> {
        let plane = &mut loaded.plane;
        let mappings = self.slow.mappings()?;
        let owners: BTreeSet<&str> = mappings.iter().map(|m| m.owner.as_str()).collect();
        let mut veths = BTreeMap::new();
        for owner in &owners {
            let name = crate::net::host_veth(owner);
            match sysctl::ifindex(&name) {
                Some(i) => {
                    plane.attach_reply(owner, &name, i)?;
                    veths.insert(*owner, i);
                }
                // No veth (yet): its ports take the slow path.
                None => plane.detach_reply(owner),
            }
        }
        for old in plane.reply_owners() {
            if !owners.contains(old.as_str()) {
                plane.detach_reply(&old);
            }
        }
        let want = entries(&mappings, &veths);
        plane.write(&want)?;
        let (local, uplinks) = self.addresses()?;
        plane.set_addresses(&local, &uplinks)?;
        let reserve = host_ports(&mappings);
        sysctl::reserve(&loaded.reserved, &reserve)?;
        loaded.reserved = reserve;
        Ok(())
    }

    /// The host's IPv4 addresses and the uplinks' first address (network byte order).
    fn addresses(&self) -> Result<(BTreeSet<u32>, BTreeMap<u32, u32>), PortmapError> {
        let all = crate::net::link::ipv4_addresses().map_err(|e| PortmapError::Bpf {
            op: "listing the host's addresses".into(),
            reason: e.to_string(),
        })?;
        let local = all.iter().map(|(_, a)| be(*a)).collect();
        let mut uplinks = BTreeMap::new();
        for (_, index) in self.uplinks()? {
            if let Some((_, a)) = all.iter().find(|(i, _)| *i == index) {
                uplinks.insert(index, be(*a));
            }
        }
        Ok((local, uplinks))
    }
}

/// Whether the `ebpf` backend can work here: bpffs at the default pin root, and the kernel
/// verifying its programs (TCX needs Linux 6.6). Loads the object without pins and drops it.
pub fn check_support() -> Result<String, String> {
    check_bpffs(&EbpfOptions::default().pin_root).map_err(|e| e.to_string())?;
    use aya::util::KernelVersion;
    let kernel = KernelVersion::current().map_err(|e| format!("kernel version: {e}"))?;
    if kernel < KernelVersion::new(6, 6, 0) {
        return Err(format!(
            "TCX links need Linux 6.6 or later; this is {kernel:?}"
        ));
    }
    plane::verify().map_err(|e| e.to_string())?;
    Ok("bpffs mounted, TCX available, programs verified by the kernel".into())
}

/// The pin directory of the data plane of nft table `table` under `root`.
pub fn pin_dir(root: &Path, table: &str) -> PathBuf {
    root.join(format!("portmap-{table}"))
}

fn slow_table(table: &str) -> String {
    format!("{table}-bpf")
}

fn be(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    }
}

/// The map entries for `mappings` of owners whose veth is known. A container port published
/// under two host ports is left to the slow path: its replies could not tell them apart.
pub fn entries(mappings: &[Mapping], veths: &BTreeMap<&str, u32>) -> Entries {
    let mut uses: BTreeMap<RevKey, usize> = BTreeMap::new();
    let rev_key = |m: &Mapping| RevKey {
        addr: be(m.container_ip),
        port: m.container_port,
        proto: proto_number(m.proto),
        _pad: 0,
    };
    for m in mappings {
        *uses.entry(rev_key(m)).or_default() += 1;
    }
    let mut out = Entries::default();
    for m in mappings {
        let Some(&ifindex) = veths.get(m.owner.as_str()) else {
            continue;
        };
        let rk = rev_key(m);
        if uses[&rk] > 1 {
            continue;
        }
        let host = m.host_ip.map_or(0, be);
        out.ports.insert(
            PortKey {
                addr: host,
                port: m.host_port,
                proto: rk.proto,
                _pad: 0,
            },
            PortTarget {
                addr: rk.addr,
                port: m.container_port,
                _pad: 0,
                ifindex,
            },
        );
        out.reverse.insert(
            rk,
            RevTarget {
                addr: host,
                port: m.host_port,
                _pad: 0,
            },
        );
    }
    out
}

/// The (protocol, host port) pairs of `mappings`.
fn host_ports(mappings: &[Mapping]) -> BTreeSet<(u8, u16)> {
    mappings
        .iter()
        .map(|m| (proto_number(m.proto), m.host_port))
        .collect()
}

fn check_bpffs(root: &Path) -> Result<(), PortmapError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(2) == Some(&"bpf") && f.get(1).is_some_and(|m| root.starts_with(m))
    });
    if mounted {
        Ok(())
    } else {
        Err(PortmapError::Bpf {
            op: format!("pinning under {}", root.display()),
            reason: "no bpffs is mounted there; mount one (`mount -t bpf bpf /sys/fs/bpf`)".into(),
        })
    }
}

/// Refuses host ports in [`MASQUERADE_PORTS`].
fn check_masquerade_range(publish: &[Publish]) -> Result<(), PortmapError> {
    let (lo, hi) = MASQUERADE_PORTS;
    for p in publish {
        if p.host.start <= hi && p.host.end >= lo {
            return Err(PortmapError::InvalidConfig {
                field: "publish",
                value: p.to_string(),
                expected: "host ports below 61000: the ebpf backend keeps 61000-65535 for \
                           masquerading containers' outgoing traffic",
            });
        }
    }
    Ok(())
}

impl Backend for Ebpf {
    fn kind(&self) -> BackendKind {
        BackendKind::Ebpf
    }

    fn setup(&self) -> Result<(), PortmapError> {
        self.config.validate_nft()?;
        self.preflight()?;
        self.slow.setup()?;
        let mut slot = self.lock();
        let loaded = self.plane(&mut slot)?;
        self.sync(loaded)
    }

    fn add(
        &self,
        owner: &str,
        container_ip: Ipv4Addr,
        publish: &[Publish],
    ) -> Result<(), PortmapError> {
        validate_owner(owner)?;
        check_masquerade_range(publish)?;
        let mut slot = self.lock();
        let loaded = self.plane(&mut slot)?;
        self.slow.add(owner, container_ip, publish)?;
        if let Err(e) = self.sync(loaded) {
            // All or nothing: the slow path must not keep what the fast path refused.
            let _ = self.slow.remove(owner);
            loaded.plane.detach_reply(owner);
            let _ = self.sync(loaded);
            return Err(e);
        }
        Ok(())
    }

    fn remove(&self, owner: &str) -> Result<(), PortmapError> {
        validate_owner(owner)?;
        let mut slot = self.lock();
        if slot.is_none() && !self.pin_dir().exists() {
            // Never set up here: only the slow path can hold something.
            return self.slow.remove(owner);
        }
        let loaded = self.plane(&mut slot)?;
        self.slow.remove(owner)?;
        loaded.plane.detach_reply(owner);
        self.sync(loaded)
    }

    fn owners(&self) -> Result<Vec<String>, PortmapError> {
        self.slow.owners()
    }

    fn mappings(&self) -> Result<Vec<Mapping>, PortmapError> {
        self.slow.mappings()
    }

    fn teardown(&self) -> Result<(), PortmapError> {
        let mut slot = self.lock();
        let reserved = match slot.take() {
            Some(loaded) => loaded.reserved,
            None => host_ports(&self.slow.mappings()?),
        };
        sysctl::reserve(&reserved, &BTreeSet::new())?;
        plane::remove_all(&self.pin_dir());
        self.slow.teardown()
    }
}
