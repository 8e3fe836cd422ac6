//! eBPF probes: load berth's object (built from `ebpf/`, embedded at compile time), attach each
//! enabled probe, read its maps into samples, and detach everything when dropped.
//!
//! A probe that cannot load or attach is reported down with the kernel's reason
//! ([`ProbeStatus::error`]) and the agent runs on with the others.

pub mod net;
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
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/berth-probes"));

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
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
}

/// Loads berth's object with the tracked root's id and level set as globals.
pub fn load_object(root: &TrackedRoot, syscall_latency: bool) -> Result<Ebpf, ProbeLoadError> {
    let latency = u32::from(syscall_latency);
    Ok(EbpfLoader::new()
        .override_global(globals::TRACK_ROOT_ID, &root.id, true)
        .override_global(globals::TRACK_ROOT_LEVEL, &root.level, true)
        .override_global(globals::SYSCALL_LATENCY, &latency, true)
        .load(EBPF_OBJECT)?)
}

/// Every probe of the agent, owned by the collector loop. Dropping it detaches all programs.
pub struct Probes {
    pub(crate) ebpf: Option<Ebpf>,
    pub syscalls: syscalls::SyscallsProbe,
    pub net: net::NetProbe,
}

impl Probes {
    pub fn start(config: &ProbesConfig, root: &TrackedRoot) -> Self {
        let mut ebpf = match load_object(root, config.syscalls.enabled && config.syscalls.latency) {
            Ok(ebpf) => Some(ebpf),
            Err(e) => {
                warn!(error = %e, "eBPF object did not load; every probe is down");
                None
            }
        };
        let syscalls = syscalls::SyscallsProbe::start(ebpf.as_mut(), &config.syscalls);
        let net = net::NetProbe::start(ebpf.as_mut(), config.network.enabled, root);
        let probes = Self {
            ebpf,
            syscalls,
            net,
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
                Some(e) => warn!(probe = status.name, error = %e, "probe down"),
            }
        }
        probes
    }

    pub fn status(&self) -> Vec<ProbeStatus> {
        vec![self.syscalls.status.clone(), self.net.status.clone()]
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
