//! eBPF probes: load berth's object (built from `ebpf/`, embedded at compile time), attach each
//! enabled probe, read its maps into samples, and detach everything when dropped.
//!
//! A probe that cannot load or attach is reported down with the kernel's reason
//! ([`ProbeStatus::error`]) and the agent runs on with the others.

pub mod batch;
pub mod btf;
pub mod mapset;
pub mod net;
pub mod netfilter;
pub mod syscalls;
pub mod tracked;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use aya::{Ebpf, EbpfLoader, maps::PerCpuArray};
use berth_common::{ProbeError, globals, maps};
use tracing::{info, warn};

use crate::{
    cgroup::TrackedRoot,
    config::ProbesConfig,
    model::{LostEvents, NetCount, NetfilterSample, ProbeStatus, SyscallCount},
};

/// berth's eBPF object, built by `agent/build.rs`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/berth-probes"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeLoadError {
    #[error("loading berth's eBPF object failed: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("program {program} not found in berth's eBPF object")]
    MissingProgram { program: &'static str },
    #[error("map {map} not found in berth's eBPF object")]
    MissingMap { map: &'static str },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("kernel layout: {0}")]
    Layout(btf::BtfError),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
}

/// The program `name` of berth's object as its concrete type (`RawTracePoint`, `CgroupSkb`...).
pub fn program_mut<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut P, ProbeLoadError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(ProbeLoadError::MissingProgram { program: name })?
        .try_into()
        .map_err(program_err(name))
}

/// The sum over CPUs of a one-slot per-CPU "seen" counter (`SYSCALLS_SEEN`, `NF_PORTS_SEEN`):
/// how much its maps moved. `None` when the object lacks the map: then every tick reads them.
pub(crate) fn seen_count(ebpf: &Ebpf, map: &str) -> Option<u64> {
    let seen = PerCpuArray::<&aya::maps::MapData, u64>::try_from(ebpf.map(map)?).ok()?;
    Some(seen.get(&0, 0).ok()?.iter().sum())
}

/// Wraps an aya program error with the program's name.
pub fn program_err(
    name: &'static str,
) -> impl Fn(aya::programs::ProgramError) -> ProbeLoadError + Copy {
    move |source| ProbeLoadError::Program {
        program: name,
        source,
    }
}

/// Maps pinned under [`pin_dir`] so their counters survive an agent restart.
pub const PINNED_MAPS: [&str; 7] = berth_common::maps::PINNED;

/// Where this agent pins its maps: one directory per tracked root, so agents with different
/// roots never share counters. `None` when bpffs is not mounted at /sys/fs/bpf.
pub fn pin_dir(root: &TrackedRoot) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let bpffs = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
    });
    let name = match root.path.trim_matches('/') {
        "" => "_root".to_owned(),
        p => p.replace('/', "_"),
    };
    bpffs.then(|| Path::new("/sys/fs/bpf/berth").join(name))
}

/// Loads berth's object with the tracked root's id and level set as globals, and the
/// counting maps pinned under `pins` (reused when present: counters continue).
pub fn load_object(
    root: &TrackedRoot,
    syscall_latency: bool,
    pins: Option<&Path>,
) -> Result<Ebpf, ProbeLoadError> {
    let latency = u32::from(syscall_latency);
    let load = || {
        let mut loader = EbpfLoader::new();
        loader
            .override_global(globals::TRACK_ROOT_ID, &root.id, true)
            .override_global(globals::TRACK_ROOT_LEVEL, &root.level, true)
            .override_global(globals::SYSCALL_LATENCY, &latency, true);
        netfilter::set_globals(&mut loader);
        tracked::set_globals(&mut loader);
        if let Some(dir) = pins {
            for m in PINNED_MAPS {
                loader.map_pin_path(m, dir.join(m));
            }
        }
        loader.load(EBPF_OBJECT)
    };
    if let Some(dir) = pins.filter(|dir| stale_pins(dir)) {
        // aya reuses a pinned map as it is: one of another shape (an upgrade that resized or
        // re-flagged it) would be used with the old capacity.
        warn!(dir = %dir.display(), "pinned maps differ from this agent's; starting from zero");
        remove_pins(dir);
    }
    if let Some(dir) = pins {
        std::fs::create_dir_all(dir).map_err(|source| ProbeLoadError::Io {
            op: "creating the pin directory",
            path: dir.to_owned(),
            source,
        })?;
    }
    match load() {
        Ok(ebpf) => Ok(ebpf),
        Err(e) if pins.is_some() => {
            // Pins of an older, different object (an upgrade): start from zero.
            warn!(error = %e, "pinned maps unusable; removing them and starting from zero");
            remove_pins(pins.expect("checked"));
            std::fs::create_dir_all(pins.expect("checked")).ok();
            Ok(load()?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a map pinned in `dir` differs in type, key or value size, capacity or flags from
/// the same map of berth's object.
fn stale_pins(dir: &Path) -> bool {
    let Ok(obj) = aya_obj::Object::parse(EBPF_OBJECT) else {
        return false;
    };
    PINNED_MAPS.iter().any(|name| {
        let (Some(want), Ok(have)) = (
            obj.maps.get(*name),
            aya::maps::MapInfo::from_pin(dir.join(name)),
        ) else {
            return false;
        };
        let have_type = have.map_type().map(|t| t as u32).ok();
        (Some(want.map_type()), want.key_size(), want.value_size())
            != (have_type, have.key_size(), have.value_size())
            || want.max_entries() != have.max_entries()
            || want.map_flags() != have.map_flags()
    })
}

/// Removes a pin directory (its maps go when no program uses them).
pub fn remove_pins(dir: &Path) {
    for m in PINNED_MAPS {
        let _ = std::fs::remove_file(dir.join(m));
    }
    let _ = std::fs::remove_dir(dir);
}

/// What one probe read from its maps in one tick.
#[derive(Debug, Clone)]
pub enum ProbeData {
    /// Syscall counts per cgroup id.
    Syscalls(HashMap<u64, Vec<SyscallCount>>),
    /// Packets and bytes per cgroup id.
    Net(HashMap<u64, Vec<NetCount>>),
    /// Netfilter cost per hook and port.
    Netfilter(NetfilterSample),
}

/// One probe: what it reports about itself and how it reads its maps. Implemented by each
/// probe module; [`Probes::all`] is the one list of them.
pub trait Probe {
    fn status(&self) -> &ProbeStatus;
    /// Reads the probe's maps; `alive` says which cgroup ids still exist (keys of the others
    /// are deleted after this last read).
    fn collect(
        &self,
        ebpf: &mut Ebpf,
        alive: &dyn Fn(u64) -> bool,
    ) -> Result<ProbeData, ProbeLoadError>;
}

impl Probe for syscalls::SyscallsProbe {
    fn status(&self) -> &ProbeStatus {
        &self.status
    }
    fn collect(
        &self,
        ebpf: &mut Ebpf,
        alive: &dyn Fn(u64) -> bool,
    ) -> Result<ProbeData, ProbeLoadError> {
        syscalls::SyscallsProbe::collect(self, ebpf, alive).map(ProbeData::Syscalls)
    }
}

impl Probe for net::NetProbe {
    fn status(&self) -> &ProbeStatus {
        &self.status
    }
    fn collect(
        &self,
        ebpf: &mut Ebpf,
        alive: &dyn Fn(u64) -> bool,
    ) -> Result<ProbeData, ProbeLoadError> {
        net::NetProbe::collect(self, ebpf, alive).map(ProbeData::Net)
    }
}

impl Probe for netfilter::NetfilterProbe {
    fn status(&self) -> &ProbeStatus {
        &self.status
    }
    fn collect(
        &self,
        ebpf: &mut Ebpf,
        _alive: &dyn Fn(u64) -> bool,
    ) -> Result<ProbeData, ProbeLoadError> {
        netfilter::NetfilterProbe::collect(self, ebpf).map(ProbeData::Netfilter)
    }
}

/// Every probe of the agent, owned by the collector loop. Dropping it detaches all programs.
pub struct Probes {
    pub(crate) ebpf: Option<Ebpf>,
    pub syscalls: syscalls::SyscallsProbe,
    pub net: net::NetProbe,
    pub netfilter: netfilter::NetfilterProbe,
    /// Where the counting maps are pinned (`None`: not pinned).
    pub pins: Option<PathBuf>,
    /// Other engines' containers the syscall and network probes count (`TRACKED`).
    pub tracked: tracked::Tracked,
    /// Holds the kernel's BPF run-time statistics on (`probes.run_stats`); closing it turns
    /// them off again.
    run_stats: Option<std::os::fd::OwnedFd>,
}

impl Probes {
    /// Every probe disabled and nothing loaded: an agent run with `[probes]` all off, and
    /// tests of the collector framework.
    pub fn disabled(root: &TrackedRoot) -> Self {
        let off = crate::config::SyscallsConfig {
            enabled: false,
            ..Default::default()
        };
        Self {
            ebpf: None,
            syscalls: syscalls::SyscallsProbe::start(None, &off),
            net: net::NetProbe::start(None, false, root),
            netfilter: netfilter::NetfilterProbe::start(None, false),
            pins: None,
            tracked: Default::default(),
            run_stats: None,
        }
    }

    pub fn start(config: &ProbesConfig, root: &TrackedRoot) -> Self {
        let pins = pin_dir(root);
        if pins.is_none() {
            warn!("bpffs is not mounted at /sys/fs/bpf: counters restart from zero with the agent");
        }
        let latency = config.syscalls.enabled && config.syscalls.latency;
        let mut ebpf = match load_object(root, latency, pins.as_deref()) {
            Ok(ebpf) => Some(ebpf),
            Err(e) => {
                warn!(error = %e, "eBPF object did not load; every probe is down");
                None
            }
        };
        let mut syscalls = syscalls::SyscallsProbe::start(ebpf.as_mut(), &config.syscalls);
        let mut net = net::NetProbe::start(ebpf.as_mut(), config.network.enabled, root);
        if let Some(ebpf) = ebpf
            .as_mut()
            .filter(|_| syscalls.status.attached || net.status.attached)
        {
            // berth's new cgroups enter TRACKED at mkdir, not only at the next tick.
            let subtree = match tracked::attach_hooks(ebpf) {
                Ok(ids) => format!(
                    "{} and below: tracked from creation (cgroup_mkdir/rmdir hooks, programs {ids:?})",
                    root.path
                ),
                Err(e) => {
                    warn!(error = %e, "cgroup_mkdir hook down: berth's new cgroups are counted from the next tick");
                    format!(
                        "{} and below: tracked from the next tick (cgroup_mkdir hook down: {e})",
                        root.path
                    )
                }
            };
            for status in [&mut syscalls.status, &mut net.status] {
                if status.attached {
                    status.paths.insert(tracked::PATH_SUBTREE, subtree.clone());
                    status
                        .paths
                        .insert(tracked::PATH_MAP, tracked::map_state(0));
                }
            }
        }
        let netfilter = netfilter::NetfilterProbe::start(ebpf.as_mut(), config.netfilter.enabled);
        if netfilter.status.attached {
            info!(
                priorities = ?netfilter
                    .attachments
                    .iter()
                    .map(|a| (a.family, a.hook.name(), a.first_priority, a.last_priority))
                    .collect::<Vec<_>>(),
                paths = ?netfilter.status.paths,
                "netfilter probe priorities"
            );
        }
        let run_stats = if config.run_stats {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    warn!(error = %e, "BPF run-time statistics unavailable: no probe cost");
                    None
                }
            }
        } else {
            None
        };
        let probes = Self {
            ebpf,
            syscalls,
            net,
            netfilter,
            pins,
            tracked: Default::default(),
            run_stats,
        };
        for status in probes.status() {
            match &status.error {
                None if status.attached => info!(
                    probe = status.name,
                    attach = status.attach,
                    programs = ?status.program_ids,
                    tracked_root = %root.path,
                    "probe attached"
                ),
                None => info!(probe = status.name, "probe disabled in config"),
                Some(e) => {
                    warn!(probe = status.name, error = %e, paths = ?status.paths, "probe down")
                }
            }
        }
        probes
    }

    /// Every probe, in the order `/api/v1/system` lists them: the one list of berth's probes.
    pub fn all(&self) -> [&dyn Probe; 3] {
        [&self.syscalls, &self.net, &self.netfilter]
    }

    pub fn status(&self) -> Vec<ProbeStatus> {
        self.all().iter().map(|p| p.status().clone()).collect()
    }

    /// Reads the maps of the probe named `name`: `Ok(None)` when it is not attached (down or
    /// disabled: its status says which) or unknown.
    pub fn collect(
        &mut self,
        name: &str,
        alive: &dyn Fn(u64) -> bool,
    ) -> Result<Option<ProbeData>, ProbeLoadError> {
        let Self {
            ebpf,
            syscalls,
            net,
            netfilter,
            ..
        } = self;
        let Some(ebpf) = ebpf.as_mut() else {
            return Ok(None);
        };
        let all: [&dyn Probe; 3] = [syscalls, net, netfilter];
        match all
            .into_iter()
            .find(|p| p.status().name == name && p.status().attached)
        {
            Some(p) => p.collect(ebpf, alive).map(Some),
            None => Ok(None),
        }
    }

    /// Makes the syscall and network probes count exactly these cgroups (and those the
    /// `cgroup_mkdir` hook adds below berth's root until the next call): the `TRACKED` map gets
    /// the difference. `Ok(false)` when neither probe is attached (nothing to track for).
    pub fn track(
        &mut self,
        want: &std::collections::BTreeSet<u64>,
    ) -> Result<bool, ProbeLoadError> {
        let Some(ebpf) = self.ebpf.as_mut() else {
            return Ok(false);
        };
        if !self.syscalls.status.attached && !self.net.status.attached {
            return Ok(false);
        }
        self.tracked.sync(ebpf, want)?;
        let state = tracked::map_state(self.tracked.len());
        for status in [&mut self.syscalls.status, &mut self.net.status] {
            if status.attached {
                status.paths.insert(tracked::PATH_MAP, state.clone());
            }
        }
        Ok(true)
    }

    /// Makes the netfilter probe count exactly these published (protocol, port) pairs per port
    /// (`NF_PUBLISHED` gets the difference). `Ok(false)` when the probe is not attached.
    pub fn publish(
        &mut self,
        want: &std::collections::BTreeSet<netfilter::published::ProtoPort>,
    ) -> Result<bool, ProbeLoadError> {
        let Some(ebpf) = self.ebpf.as_mut() else {
            return Ok(false);
        };
        if !self.netfilter.status.attached {
            return Ok(false);
        }
        self.netfilter.publish(ebpf, want)?;
        Ok(true)
    }

    /// Run time and runs of each probe's programs (kernel BPF statistics; zero when off): one
    /// `BPF_OBJ_GET_INFO_BY_FD` per program of berth's, by the fds it holds (not a walk of
    /// every program on the host, three syscalls each).
    pub fn runs(&self) -> Vec<crate::model::ProbeRun> {
        if self.run_stats.is_none() {
            return Vec::new();
        }
        let mut stats: std::collections::HashMap<u32, (std::time::Duration, u64)> = self
            .ebpf
            .iter()
            .flat_map(|e| e.programs())
            // Programs this object did not load here (the netfilter pair) have no fd: no
            // syscall, an error skipped.
            .filter_map(|(_, p)| p.info().ok())
            .map(|p| (p.id(), (p.run_time(), p.run_count())))
            .collect();
        stats.extend(self.netfilter.program_runs());
        self.status()
            .into_iter()
            .filter(|s| s.attached)
            .map(|s| {
                let (t, n) = s
                    .program_ids
                    .iter()
                    .filter_map(|id| stats.get(id))
                    .fold((std::time::Duration::ZERO, 0), |(t, n), (dt, dn)| {
                        (t + *dt, n + dn)
                    });
                crate::model::ProbeRun {
                    probe: s.name,
                    seconds: t.as_secs_f64(),
                    runs: n,
                }
            })
            .collect()
    }

    /// Events lost because a map was full, summed over CPUs.
    pub fn lost_events(&self) -> Result<Vec<LostEvents>, ProbeLoadError> {
        let Some(ebpf) = &self.ebpf else {
            return Ok(Vec::new());
        };
        let map = ebpf
            .map(maps::PROBE_ERRORS)
            .ok_or(ProbeLoadError::MissingMap {
                map: maps::PROBE_ERRORS,
            })?;
        let errors =
            PerCpuArray::<_, u64>::try_from(map).map_err(|source| ProbeLoadError::Map {
                map: maps::PROBE_ERRORS,
                source,
            })?;
        let mut out = Vec::new();
        let mut untracked = self.tracked.lost();
        for e in ProbeError::ALL {
            let values = errors
                .get(&(e as u32), 0)
                .map_err(|source| ProbeLoadError::Map {
                    map: maps::PROBE_ERRORS,
                    source,
                })?;
            let count = values.iter().sum();
            if e == ProbeError::TrackedFull {
                untracked += count;
                continue;
            }
            if e == ProbeError::NetfilterPublishedFull {
                if self.netfilter.status.attached {
                    let (probe, map) = e.labels();
                    out.push(LostEvents {
                        probe,
                        map,
                        count: count + self.netfilter.published.lost(),
                    });
                }
                continue;
            }
            let (probe, map) = e.labels();
            out.push(LostEvents { probe, map, count });
        }
        // Cgroups the full TRACKED map left uncounted (refused to the hook or to the agent):
        // lost to both probes that read it.
        for status in [&self.syscalls.status, &self.net.status] {
            if status.attached {
                out.push(LostEvents {
                    probe: status.name,
                    map: maps::TRACKED,
                    count: untracked,
                });
            }
        }
        Ok(out)
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        if self.ebpf.take().is_some() {
            info!("eBPF programs detached and unloaded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_declares_every_map_the_common_crate_names() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("berth's object parses");
        for name in [
            maps::SYSCALLS,
            maps::SYSCALLS_SEEN,
            maps::SYSCALL_LATENCY_HIST,
            maps::SYSCALL_ENTER,
            maps::NET,
            maps::NF_PORTS,
            maps::NF_HOOKS,
            maps::NF_SCRATCH,
            maps::NF_PUBLISHED,
            maps::NF_OTHER,
            maps::NF_PORTS_SEEN,
            maps::NF_CARRY,
            maps::PROBE_ERRORS,
            maps::TRACKED,
        ] {
            assert!(
                obj.maps.contains_key(name),
                "map {name} (berth_common::maps) is not in the eBPF object: {:?}",
                obj.maps.keys().collect::<Vec<_>>()
            );
        }
        for name in maps::PINNED {
            assert!(obj.maps.contains_key(name), "pinned map {name} missing");
        }
    }

    #[test]
    fn pins_of_another_shape_are_replaced_and_the_objects_own_are_reused() {
        let root = TrackedRoot {
            path: format!("/berth-stale-pins-{}", std::process::id()),
            ..TrackedRoot::fixture()
        };
        let dir = pin_dir(&root).expect(
            "bpffs is not mounted at /sys/fs/bpf (`cargo xtask setup` mounts it, or \
             `mount -t bpf bpf /sys/fs/bpf`)",
        );
        struct Cleanup<'a>(&'a Path);
        impl Drop for Cleanup<'_> {
            fn drop(&mut self) {
                remove_pins(self.0);
            }
        }
        let _cleanup = Cleanup(&dir);
        // An older agent's pins: NF_PORTS with the old, preallocated 32,768 keys.
        std::fs::create_dir_all(&dir).unwrap();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(maps::NF_PORTS, 32_768);
        for m in PINNED_MAPS {
            loader.map_pin_path(m, dir.join(m));
        }
        drop(
            loader
                .load(EBPF_OBJECT)
                .expect("loading berth's object (needs root)"),
        );
        assert!(stale_pins(&dir), "a resized NF_PORTS pin was not noticed");

        let ebpf = load_object(&root, false, Some(&dir)).unwrap();
        let info = aya::maps::MapInfo::from_pin(dir.join(maps::NF_PORTS)).unwrap();
        assert_eq!(
            info.max_entries(),
            berth_common::netfilter::PORTS_MAX_ENTRIES
        );
        drop(ebpf);
        assert!(!stale_pins(&dir), "the object's own pins look stale");
    }

    #[test]
    fn lost_events_are_labelled_with_the_maps_real_names() {
        for e in ProbeError::ALL {
            let (_, map) = e.labels();
            assert!(
                aya_obj::Object::parse(EBPF_OBJECT)
                    .unwrap()
                    .maps
                    .contains_key(map),
                "{e:?} is labelled with map {map}, which the object does not have"
            );
        }
    }
}
