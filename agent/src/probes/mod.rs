//! eBPF probes: load berth's object (built from `ebpf/`, embedded at compile time), attach each
//! enabled probe, read its maps into samples, and detach everything when dropped.
//!
//! A probe that cannot load or attach is reported down with the kernel's reason
//! ([`ProbeStatus::error`]) and the agent runs on with the others.

pub mod btf;
pub mod netfilter;
pub mod syscalls;

use aya::{Ebpf, EbpfLoader, maps::PerCpuArray};
use berth_common::{ProbeError, globals};
use tracing::{info, warn};

use crate::{
    cgroup::TrackedRoot,
    config::ProbesConfig,
    model::{LostEvents, ProbeStatus},
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
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
}

/// Loads berth's object with the tracked root's id and level set as globals, and the kernel
/// struct offsets the netfilter probe needs (from BTF).
pub fn load_object(root: &TrackedRoot) -> Result<Ebpf, ProbeLoadError> {
    let mut loader = EbpfLoader::new();
    loader
        .override_global(globals::TRACK_ROOT_ID, &root.id, true)
        .override_global(globals::TRACK_ROOT_LEVEL, &root.level, true);
    netfilter::set_globals(&mut loader);
    Ok(loader.load(EBPF_OBJECT)?)
}

/// Every probe of the agent, owned by the collector loop. Dropping it detaches all programs.
pub struct Probes {
    pub(crate) ebpf: Option<Ebpf>,
    pub syscalls: syscalls::SyscallsProbe,
    pub netfilter: netfilter::NetfilterProbe,
}

impl Probes {
    pub fn start(config: &ProbesConfig, root: &TrackedRoot) -> Self {
        let mut ebpf = match load_object(root) {
            Ok(ebpf) => Some(ebpf),
            Err(e) => {
                warn!(error = %e, "eBPF object did not load; every probe is down");
                None
            }
        };
        let syscalls = syscalls::SyscallsProbe::start(ebpf.as_mut(), config.syscalls.enabled);
        match &syscalls.status.error {
            None if syscalls.status.attached => info!(
                probe = syscalls.status.name,
                attach = syscalls.status.attach,
                programs = ?syscalls.status.program_ids,
                tracked_root = %root.path,
                "probe attached"
            ),
            None => info!(probe = syscalls.status.name, "probe disabled in config"),
            Some(e) => warn!(probe = syscalls.status.name, error = %e, "probe down"),
        }
        let netfilter = netfilter::NetfilterProbe::start(ebpf.as_mut(), config.netfilter.enabled);
        let status = &netfilter.status;
        match &status.error {
            None if status.attached => info!(
                probe = status.name,
                attach = status.attach,
                programs = ?status.program_ids,
                priorities = ?netfilter
                    .attachments
                    .iter()
                    .map(|a| (a.family, a.hook.name(), a.first_priority, a.last_priority))
                    .collect::<Vec<_>>(),
                paths = ?status.paths,
                "probe attached"
            ),
            None => info!(probe = status.name, "probe disabled in config"),
            Some(e) => warn!(probe = status.name, error = %e, paths = ?status.paths, "probe down"),
        }
        Self {
            ebpf,
            syscalls,
            netfilter,
        }
    }

    pub fn status(&self) -> Vec<ProbeStatus> {
        vec![self.syscalls.status.clone(), self.netfilter.status.clone()]
    }

    /// Events lost because a map was full, summed over CPUs.
    pub fn lost_events(&self) -> Result<Vec<LostEvents>, ProbeLoadError> {
        let Some(ebpf) = &self.ebpf else {
            return Ok(Vec::new());
        };
        let map = ebpf.map("PROBE_ERRORS").ok_or(ProbeLoadError::MissingMap {
            map: "PROBE_ERRORS",
        })?;
        let errors =
            PerCpuArray::<_, u64>::try_from(map).map_err(|source| ProbeLoadError::Map {
                map: "PROBE_ERRORS",
                source,
            })?;
        let mut out = Vec::new();
        for e in ProbeError::ALL {
            let values = errors
                .get(&(e as u32), 0)
                .map_err(|source| ProbeLoadError::Map {
                    map: "PROBE_ERRORS",
                    source,
                })?;
            let (probe, map) = e.labels();
            out.push(LostEvents {
                probe,
                map,
                count: values.iter().sum(),
            });
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
