//! `--blkio-weight`: the v1 blkio or v2 io controller's proportional weight, written directly,
//! not through cgroups-rs, whose `set_weight` writes blkio.weight (CFQ, removed in Linux 5.0) on
//! v1 and io.bfq.weight only on v2. Like runc (libcontainer/cgroups/fs/blkio.go, fs2/io.go):
//! blkio.bfq.weight, else blkio.weight (v1); io.bfq.weight, else io.weight via
//! [`blkio_weight_to_io_weight`] (v2). The BFQ weight only matters for devices whose scheduler
//! is bfq; a kernel with neither file refuses the flag
//! ([`CgroupError::BlkioWeightUnsupported`]).

use super::{Controller, write_file};
use crate::cgroup::{
    CgroupError, ControllerDir, Placement,
    limits::{Limits, blkio_weight_to_io_weight},
};

/// The blkio (v1) / io (v2) controller's writer.
pub(in crate::cgroup::limits) struct Blkio;

impl Controller for Blkio {
    const NAME: &'static str = "blkio/io";

    fn requested_by(limits: &Limits) -> Option<&'static str> {
        limits.blkio_weight.map(|_| "--blkio-weight")
    }

    fn dir(placement: &Placement) -> Option<&ControllerDir> {
        placement.blkio.as_ref()
    }

    fn apply(limits: &Limits, dir: &ControllerDir) -> Result<(), CgroupError> {
        let Some(weight) = limits.blkio_weight else {
            return Ok(());
        };
        let path = dir.path();
        let (bfq, legacy, legacy_value) = if dir.is_v2() {
            (
                "io.bfq.weight",
                "io.weight",
                blkio_weight_to_io_weight(weight),
            )
        } else {
            ("blkio.bfq.weight", "blkio.weight", u64::from(weight))
        };
        if path.join(bfq).exists() {
            write_file(&path.join(bfq), &weight.to_string())
        } else if path.join(legacy).exists() {
            write_file(&path.join(legacy), &legacy_value.to_string())
        } else {
            Err(CgroupError::BlkioWeightUnsupported {
                dir: path.to_path_buf(),
                bfq,
                legacy,
            })
        }
    }
}
