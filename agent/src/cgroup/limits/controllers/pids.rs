//! `--pids-limit`: pids.max, the same file and format on v1 and v2. Docker's "0 or -1 for
//! unlimited" becomes `max`.

use cgroups_rs::{MaxValue, pid::PidController};

use super::{Controller, write_via};
use crate::cgroup::{CgroupError, ControllerDir, Placement, limits::Limits};

/// The pids controller's writer.
pub(in crate::cgroup::limits) struct Pids;

impl Controller for Pids {
    const NAME: &'static str = "pids";

    fn requested_by(limits: &Limits) -> Option<&'static str> {
        limits.pids.map(|_| "--pids-limit")
    }

    fn dir(placement: &Placement) -> Option<&ControllerDir> {
        placement.pids.as_ref()
    }

    fn apply(limits: &Limits, dir: &ControllerDir) -> Result<(), CgroupError> {
        let Some(p) = limits.pids else {
            return Ok(());
        };
        let ctl = PidController::new(dir.path().to_path_buf(), dir.is_v2());
        let max = if p > 0 {
            MaxValue::Value(p)
        } else {
            MaxValue::Max
        };
        let shown = max.to_string();
        write_via(dir.path(), "pids.max", shown, || ctl.set_pid_max(max))
    }
}
