//! `--cpus` and `--cpu-shares`. v1: cpu.cfs_quota_us with cpu.cfs_period_us, and cpu.shares.
//! v2: cpu.max (`<quota> <period>`) and cpu.weight, converted from shares as runc converts them
//! ([`cpu_shares_to_weight`]); cgroups-rs would write the shares number to cpu.weight unchanged.

use cgroups_rs::cpu::CpuController;

use super::{Controller, write_via};
use crate::cgroup::{
    CgroupError, ControllerDir, Placement,
    limits::{CPU_PERIOD_US, Limits, cpu_shares_to_weight},
};

/// The cpu controller's writer (limits; usage is cpuacct's, read in [`crate::cgroup::stats`]).
pub(in crate::cgroup::limits) struct Cpu;

impl Controller for Cpu {
    const NAME: &'static str = "cpu";

    fn requested_by(limits: &Limits) -> Option<&'static str> {
        if limits.cpus.is_some() {
            Some("--cpus")
        } else if limits.cpu_shares.is_some() {
            Some("--cpu-shares")
        } else {
            None
        }
    }

    fn dir(placement: &Placement) -> Option<&ControllerDir> {
        placement.cpu.as_ref()
    }

    fn apply(limits: &Limits, dir: &ControllerDir) -> Result<(), CgroupError> {
        let path = dir.path();
        let ctl = CpuController::new(path.to_path_buf(), dir.is_v2());
        if let Some(q) = limits.cpu_quota_us() {
            let (file, shown) = if dir.is_v2() {
                ("cpu.max", format!("{q} {CPU_PERIOD_US}"))
            } else {
                ("cpu.cfs_quota_us", format!("{q} (period {CPU_PERIOD_US})"))
            };
            write_via(path, file, shown, || {
                ctl.set_cfs_quota_and_period(Some(q), Some(CPU_PERIOD_US))
            })?;
        }
        if let Some(s) = limits.cpu_shares {
            // cgroups-rs writes the number as given to cpu.weight on v2: converting is ours.
            let (file, value) = if dir.is_v2() {
                ("cpu.weight", cpu_shares_to_weight(s))
            } else {
                ("cpu.shares", s)
            };
            write_via(path, file, value.to_string(), || ctl.set_shares(value))?;
        }
        Ok(())
    }
}
