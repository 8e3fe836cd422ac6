//! [`Limits`] in their OCI form, `linux.resources` in the bundle's config.json: runc applies
//! them when it creates the container's cgroups, so a new container starts limited without berth
//! writing cgroupfs itself (live updates go through [`super::ContainerCgroup::apply`]).

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};

use super::{CPU_PERIOD_US, Limits, convert::clamp_i64};

impl Limits {
    /// The OCI `linux.resources` runc applies at create. Values are v1-style, as the runtime spec
    /// defines them (runc converts for v2): memory limit and memory+swap in bytes, CFS quota and
    /// period in microseconds, cpu shares, pids limit (-1 = "max"), blkio weight.
    pub fn to_oci(&self) -> LinuxResources {
        let mut resources = LinuxResources::default();
        if self.memory.is_some() || self.memory_swap.is_some() {
            let mut memory = LinuxMemory::default();
            memory.set_limit(self.memory.map(clamp_i64));
            memory.set_swap(self.memory_swap);
            resources.set_memory(Some(memory));
        }
        if self.cpus.is_some() || self.cpu_shares.is_some() {
            let mut cpu = LinuxCpu::default();
            if let Some(quota) = self.cpu_quota_us() {
                cpu.set_quota(Some(quota));
                cpu.set_period(Some(CPU_PERIOD_US));
            }
            cpu.set_shares(self.cpu_shares);
            resources.set_cpu(Some(cpu));
        }
        if let Some(p) = self.pids {
            let mut pids = LinuxPids::default();
            pids.set_limit(if p > 0 { p } else { -1 });
            resources.set_pids(Some(pids));
        }
        if let Some(w) = self.blkio_weight {
            let mut blkio = LinuxBlockIo::default();
            blkio.set_weight(Some(w));
            resources.set_block_io(Some(blkio));
        }
        resources
    }
}
