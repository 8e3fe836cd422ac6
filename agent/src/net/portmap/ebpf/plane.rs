//! The loaded data plane of the `ebpf` backend: berth's `berth-portmap` object with its maps and
//! links pinned under one directory, so it keeps forwarding while the agent is down and a new
//! agent picks it up where the old one left it.
//!
//! Pins under `<dir>`: the maps by name, and `links/`:
//! - `fwd-<ifname>`: the forward program on an uplink (TCX ingress);
//! - `reply-<owner>-<ifindex>`: the reply program on a container's host-side veth (TCX
//!   ingress); the ifindex in the name tells a link of a veth that was since replaced (a
//!   restarted container) from the live one;
//! - `sock-<hook>`: the sock_addr hooks on the cgroup2 root.
//!
//! A link stays attached while its pin exists (or while the kernel object it is attached to
//! lives): removing the pin detaches it. On a new agent, existing uplink links get the freshly
//! loaded program through `BPF_LINK_UPDATE` (no moment without a program), so an upgraded agent
//! also upgrades the data plane.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHash, MapData, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use berth_common::portmap::{
    PortKey, PortTarget, RevKey, RevTarget, Stat, globals, maps, programs,
};

use super::super::PortmapError;

/// The `berth-portmap` object, built by `agent/build.rs` from `ebpf/src/portmap/`.
pub static PORTMAP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/berth-portmap"));

const SOCK_HOOKS: [&str; 4] = [
    programs::CONNECT4,
    programs::SENDMSG4,
    programs::RECVMSG4,
    programs::GETPEERNAME4,
];

/// An error with its sources ("`bpf_link_create` failed: Invalid argument").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn bpf_err(op: impl Into<String>) -> impl FnOnce(String) -> PortmapError {
    let op = op.into();
    move |reason| PortmapError::Bpf { op, reason }
}

fn io_err(op: &str, path: &Path) -> impl FnOnce(std::io::Error) -> PortmapError {
    let op = format!("{op} {}", path.display());
    move |e| PortmapError::Bpf {
        op,
        reason: e.to_string(),
    }
}

/// The data plane's entries as the maps should hold them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Entries {
    pub ports: BTreeMap<PortKey, PortTarget>,
    pub reverse: BTreeMap<RevKey, RevTarget>,
}

pub struct Plane {
    ebpf: Ebpf,
    dir: PathBuf,
}

impl Plane {
    /// Loads the object with its maps pinned in `dir` (reused when present), the sock_addr
    /// hooks acting for sockets of the network namespace with cookie `netns_cookie`.
    pub fn open(dir: &Path, netns_cookie: u64) -> Result<Self, PortmapError> {
        fs::create_dir_all(dir.join("links")).map_err(io_err("creating", dir))?;
        let load = || {
            let mut loader = EbpfLoader::new();
            loader.override_global(globals::PM_NETNS_COOKIE, &netns_cookie, true);
            for m in maps::PINNED {
                loader.map_pin_path(m, dir.join(m));
            }
            loader.load(PORTMAP_OBJECT)
        };
        let mut ebpf =
            load().map_err(|e| bpf_err("loading berth's port-mapping object")(chain(&e)))?;
        load_programs(&mut ebpf)?;
        Ok(Plane {
            ebpf,
            dir: dir.to_owned(),
        })
    }

    fn link_pin(&self, name: &str) -> PathBuf {
        self.dir.join("links").join(name)
    }

    /// Attaches the forward program to `ifname` (TCX ingress), or swaps the program of the link
    /// pinned for it by an earlier agent.
    pub fn attach_forward(&mut self, ifname: &str) -> Result<(), PortmapError> {
        let pin = self.link_pin(&format!("fwd-{ifname}"));
        let p: &mut SchedClassifier = prog(&mut self.ebpf, programs::FORWARD)?;
        let what = format!("attaching {} to {ifname}", programs::FORWARD);
        if let Ok(old) = PinnedLink::from_pin(&pin) {
            let link = SchedClassifierLink::try_from(FdLink::from(old))
                .map_err(|e| bpf_err(what.clone())(chain(&e)))?;
            match p.attach_to_link(link) {
                Ok(id) => {
                    // The pin keeps the link; our fd may go.
                    drop(p.take_link(id));
                    return Ok(());
                }
                // The interface went away and came back: attach anew below.
                Err(e) => {
                    tracing::info!(link = %pin.display(), error = %e, "stale uplink link replaced");
                    let _ = fs::remove_file(&pin);
                }
            }
        }
        attach_tcx(p, programs::FORWARD, ifname, &pin)
    }

    /// Uplinks with a forward link pinned now.
    pub fn forward_links(&self) -> BTreeSet<String> {
        self.pins("fwd-").into_iter().collect()
    }

    /// Detaches the forward program from `ifname`.
    pub fn detach_forward(&self, ifname: &str) {
        let _ = fs::remove_file(self.link_pin(&format!("fwd-{ifname}")));
    }

    /// Makes the reply program run on `owner`'s veth `ifname` (index `ifindex`): a link pinned
    /// for an older veth of the same owner is removed first.
    pub fn attach_reply(
        &mut self,
        owner: &str,
        ifname: &str,
        ifindex: u32,
    ) -> Result<(), PortmapError> {
        let want = format!("{owner}-{ifindex}");
        let mut have = false;
        for name in self.pins("reply-") {
            if reply_owner(&name) == Some(owner) {
                if name == want {
                    have = true;
                } else {
                    let _ = fs::remove_file(self.link_pin(&format!("reply-{name}")));
                }
            }
        }
        if have {
            return Ok(());
        }
        let pin = self.link_pin(&format!("reply-{want}"));
        let p: &mut SchedClassifier = prog(&mut self.ebpf, programs::REPLY)?;
        attach_tcx(p, programs::REPLY, ifname, &pin)
    }

    /// Owners with a reply link pinned.
    pub fn reply_owners(&self) -> BTreeSet<String> {
        self.pins("reply-")
            .iter()
            .filter_map(|n| reply_owner(n).map(str::to_owned))
            .collect()
    }

    /// Detaches the reply program of `owner` (all its links).
    pub fn detach_reply(&self, owner: &str) {
        for name in self.pins("reply-") {
            if reply_owner(&name) == Some(owner) {
                let _ = fs::remove_file(self.link_pin(&format!("reply-{name}")));
            }
        }
    }

    /// Attaches the sock_addr hooks to the cgroup2 directory `cgroup` unless pinned already.
    pub fn attach_sock_hooks(&mut self, cgroup: &Path) -> Result<(), PortmapError> {
        for name in SOCK_HOOKS {
            let pin = self.link_pin(&format!("sock-{name}"));
            if PinnedLink::from_pin(&pin).is_ok() {
                continue;
            }
            let dir = fs::File::open(cgroup).map_err(io_err("opening", cgroup))?;
            let p: &mut CgroupSockAddr = prog(&mut self.ebpf, name)?;
            let what = format!("attaching {name} to {}", cgroup.display());
            let id = p
                // A link is always one of many on its cgroup; BPF_LINK_CREATE wants no flags.
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| bpf_err(what.clone())(chain(&e)))?;
            let link = p
                .take_link(id)
                .map_err(|e| bpf_err(what.clone())(chain(&e)))?;
            let fd = FdLink::try_from(link).map_err(|e| bpf_err(what.clone())(chain(&e)))?;
            fd.pin(&pin).map_err(|e| bpf_err(what.clone())(chain(&e)))?;
        }
        Ok(())
    }

    /// Names after `prefix` of the pinned links that start with it.
    fn pins(&self, prefix: &str) -> Vec<String> {
        let Ok(dir) = fs::read_dir(self.dir.join("links")) else {
            return Vec::new();
        };
        let mut out: Vec<String> = dir
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(prefix))
                    .map(str::to_owned)
            })
            .collect();
        out.sort();
        out
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHash<&mut MapData, K, V>, PortmapError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| bpf_err(format!("map {name}"))("missing from the object".into()))?;
        BpfHash::try_from(map).map_err(|e| bpf_err(format!("map {name}"))(chain(&e)))
    }

    /// What the maps hold now.
    pub fn entries(&mut self) -> Result<Entries, PortmapError> {
        let ports = read_all::<PortKey, PortTarget>(&self.hash(maps::PM_PORTS)?, maps::PM_PORTS)?;
        let reverse =
            read_all::<RevKey, RevTarget>(&self.hash(maps::PM_REVERSE)?, maps::PM_REVERSE)?;
        Ok(Entries { ports, reverse })
    }

    /// Makes the maps hold exactly `want`: stale keys deleted first, then new and changed ones
    /// written (a key that stays is overwritten in place, never absent).
    pub fn write(&mut self, want: &Entries) -> Result<(), PortmapError> {
        let have = self.entries()?;
        {
            let mut ports = self.hash::<PortKey, PortTarget>(maps::PM_PORTS)?;
            for k in have.ports.keys().filter(|k| !want.ports.contains_key(k)) {
                let _ = ports.remove(k);
            }
            for (k, v) in &want.ports {
                if have.ports.get(k) != Some(v) {
                    ports
                        .insert(k, v, 0)
                        .map_err(|e| bpf_err(format!("map {}", maps::PM_PORTS))(chain(&e)))?;
                }
            }
        }
        let mut reverse = self.hash::<RevKey, RevTarget>(maps::PM_REVERSE)?;
        for k in have
            .reverse
            .keys()
            .filter(|k| !want.reverse.contains_key(k))
        {
            let _ = reverse.remove(k);
        }
        for (k, v) in &want.reverse {
            if have.reverse.get(k) != Some(v) {
                reverse
                    .insert(k, v, 0)
                    .map_err(|e| bpf_err(format!("map {}", maps::PM_REVERSE))(chain(&e)))?;
            }
        }
        Ok(())
    }

    /// Sets the host's addresses (`PM_LOCAL`) and the uplinks with their address
    /// (`PM_UPLINKS`), both in network byte order.
    pub fn set_addresses(
        &mut self,
        local: &BTreeSet<u32>,
        uplinks: &BTreeMap<u32, u32>,
    ) -> Result<(), PortmapError> {
        {
            let mut m = self.hash::<u32, u8>(maps::PM_LOCAL)?;
            let have: Vec<u32> = m.keys().filter_map(Result::ok).collect();
            for k in have.iter().filter(|k| !local.contains(k)) {
                let _ = m.remove(k);
            }
            for k in local {
                m.insert(k, 1, 0)
                    .map_err(|e| bpf_err(format!("map {}", maps::PM_LOCAL))(chain(&e)))?;
            }
        }
        let mut m = self.hash::<u32, u32>(maps::PM_UPLINKS)?;
        let have: Vec<u32> = m.keys().filter_map(Result::ok).collect();
        for k in have.iter().filter(|k| !uplinks.contains_key(k)) {
            let _ = m.remove(k);
        }
        for (k, v) in uplinks {
            m.insert(k, v, 0)
                .map_err(|e| bpf_err(format!("map {}", maps::PM_UPLINKS))(chain(&e)))?;
        }
        Ok(())
    }

    /// `PM_STATS` summed over CPUs.
    pub fn stats(&self) -> Result<BTreeMap<Stat, u64>, PortmapError> {
        read_stats(&self.dir)
    }
}

/// Loads and verifies every program of the object, unpinned, then drops it (start-up check).
pub fn verify() -> Result<(), PortmapError> {
    let mut ebpf = EbpfLoader::new()
        .load(PORTMAP_OBJECT)
        .map_err(|e| bpf_err("loading berth's port-mapping object")(chain(&e)))?;
    load_programs(&mut ebpf)
}

/// Loads (the kernel verifies) every program of the object; nothing is attached.
fn load_programs(ebpf: &mut Ebpf) -> Result<(), PortmapError> {
    for name in [programs::FORWARD, programs::REPLY] {
        let p: &mut SchedClassifier = prog(ebpf, name)?;
        p.load()
            .map_err(|e| bpf_err(format!("loading {name}"))(verifier(&e)))?;
    }
    for name in SOCK_HOOKS {
        let p: &mut CgroupSockAddr = prog(ebpf, name)?;
        p.load()
            .map_err(|e| bpf_err(format!("loading {name}"))(verifier(&e)))?;
    }
    Ok(())
}

/// `PM_STATS` of the data plane pinned in `dir`, summed over CPUs, without loading anything
/// (the metrics collector reads it this way).
pub fn read_stats(dir: &Path) -> Result<BTreeMap<Stat, u64>, PortmapError> {
    let path = dir.join(maps::PM_STATS);
    let data = MapData::from_pin(&path)
        .map_err(|e| bpf_err(format!("opening {}", path.display()))(chain(&e)))?;
    let map = aya::maps::Map::PerCpuArray(data);
    let arr = PerCpuArray::<_, u64>::try_from(map)
        .map_err(|e| bpf_err(format!("map {}", maps::PM_STATS))(chain(&e)))?;
    let mut out = BTreeMap::new();
    for s in Stat::ALL {
        let v = arr
            .get(&(s as u32), 0)
            .map_err(|e| bpf_err(format!("map {}", maps::PM_STATS))(chain(&e)))?;
        out.insert(s, v.iter().sum());
    }
    Ok(out)
}

/// Removes every pin of the data plane in `dir` (links first: that detaches the programs), and
/// the directory. Absent is fine.
pub fn remove_all(dir: &Path) {
    if let Ok(links) = fs::read_dir(dir.join("links")) {
        for e in links.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    let _ = fs::remove_dir(dir.join("links"));
    for m in maps::PINNED {
        let _ = fs::remove_file(dir.join(m));
    }
    let _ = fs::remove_dir(dir);
}

fn read_all<K: aya::Pod + Ord, V: aya::Pod>(
    m: &BpfHash<&mut MapData, K, V>,
    name: &str,
) -> Result<BTreeMap<K, V>, PortmapError> {
    let mut out = BTreeMap::new();
    for k in m.keys() {
        let k = k.map_err(|e| bpf_err(format!("map {name}"))(chain(&e)))?;
        if let Ok(v) = m.get(&k, 0) {
            out.insert(k, v);
        }
    }
    Ok(out)
}

fn reply_owner(name: &str) -> Option<&str> {
    name.rsplit_once('-').map(|(owner, _)| owner)
}

/// Attaches `p` to `ifname`'s TCX ingress and pins the link at `pin`.
fn attach_tcx(
    p: &mut SchedClassifier,
    name: &str,
    ifname: &str,
    pin: &Path,
) -> Result<(), PortmapError> {
    let what = format!("attaching {name} to {ifname}");
    let id = p
        .attach_with_options(
            ifname,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| bpf_err(what.clone())(chain(&e)))?;
    let link = p
        .take_link(id)
        .map_err(|e| bpf_err(what.clone())(chain(&e)))?;
    let fd = FdLink::try_from(link).map_err(|e| bpf_err(what.clone())(chain(&e)))?;
    fd.pin(pin)
        .map_err(|e| bpf_err(format!("pinning {}", pin.display()))(chain(&e)))?;
    Ok(())
}

fn prog<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, PortmapError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| bpf_err(format!("program {name}"))("missing from the object".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| bpf_err(format!("program {name}"))(chain(&e)))
}

/// The kernel's reason, with the verifier log when there is one.
fn verifier(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            format!(
                "{io_error}; verifier: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        }
        other => other.to_string(),
    }
}
