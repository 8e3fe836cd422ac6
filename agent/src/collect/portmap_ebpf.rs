//! `portmap_ebpf`: the `ebpf` port-mapping backend's packet counters, read from its pinned
//! `PM_STATS` map (no program is loaded for it), and its programs' run time from the kernel's
//! BPF statistics. Not set up on this host (nothing pinned): not present.

use std::path::PathBuf;

use berth_common::portmap::Stat;

use super::{CollectError, Collected, Collector, Tick};
use crate::{
    model::net::{EbpfPackets, EbpfPortmap, EbpfProgramRun},
    net::portmap::ebpf::plane,
};

pub struct PortmapEbpf {
    pin_dir: PathBuf,
}

impl PortmapEbpf {
    /// Reads the data plane pinned in `pin_dir` (see `Network::ebpf_pin_dir`).
    pub fn new(pin_dir: PathBuf) -> Self {
        Self { pin_dir }
    }
}

/// The programs by the name the kernel keeps (15 bytes of it).
const PROGRAMS: [(&str, &str); 6] = [
    ("berth_pm_forwar", "forward"),
    ("berth_pm_reply", "reply"),
    ("berth_pm_connec", "connect4"),
    ("berth_pm_sendms", "sendmsg4"),
    ("berth_pm_recvms", "recvmsg4"),
    ("berth_pm_getpee", "getpeername4"),
];

impl Collector for PortmapEbpf {
    fn name(&self) -> &'static str {
        "portmap_ebpf"
    }

    fn collect(&mut self, tick: &mut Tick<'_>) -> Result<Collected, CollectError> {
        if !self.pin_dir.exists() {
            return Ok(Collected::NotPresent);
        }
        let stats = plane::read_stats(&self.pin_dir)?;
        let packets = Stat::ALL
            .iter()
            .map(|s| {
                let (path, reason) = s.labels();
                EbpfPackets {
                    path,
                    reason,
                    packets: stats.get(s).copied().unwrap_or(0),
                }
            })
            .collect();
        let mut programs: Vec<EbpfProgramRun> = Vec::new();
        for p in aya::programs::loaded_programs().filter_map(Result::ok) {
            let Some(name) = p.name_as_str() else {
                continue;
            };
            let Some((_, label)) = PROGRAMS.iter().find(|(n, _)| *n == name) else {
                continue;
            };
            // A program replaced by an upgrade may linger until its links go: summed.
            match programs.iter_mut().find(|r| r.program == *label) {
                Some(r) => {
                    r.seconds += p.run_time().as_secs_f64();
                    r.runs += p.run_count();
                }
                None => programs.push(EbpfProgramRun {
                    program: label,
                    seconds: p.run_time().as_secs_f64(),
                    runs: p.run_count(),
                }),
            }
        }
        programs.retain(|p| p.runs > 0);
        tick.builder.snapshot.portmap_ebpf = Some(EbpfPortmap { packets, programs });
        Ok(Collected::Done)
    }
}
