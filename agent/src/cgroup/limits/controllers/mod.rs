//! One writer per cgroup controller for live limit updates (`berth update`), each behind
//! [`Controller`]: which limits it owns, where its directory is in a [`Placement`], and how it
//! writes them there in v1 or v2 form. [`super::ContainerCgroup::apply`] runs them in a fixed
//! order (memory, cpu, pids, blkio) and turns a missing directory into
//! [`CgroupError::ControllerMissing`]; adding a controller is one file here and one line there.
//!
//! Writers drive cgroups-rs's per-controller types (`MemController`, `CpuController`,
//! `PidController`) at explicit directories, which know the v1 and v2 file names and formats
//! (`max`, `cpu.max` pairs); where cgroups-rs writes the wrong file (blkio weight) the writer
//! writes cgroupfs directly with [`write_file`]. Both helpers name the file and the value in
//! their errors.

mod blkio;
mod cpu;
mod memory;
mod pids;

#[cfg(test)]
mod tests;

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

pub(super) use self::{blkio::Blkio, cpu::Cpu, memory::Memory, pids::Pids};
use super::Limits;
use crate::cgroup::{CgroupError, ControllerDir, Placement};

/// A controller's share of [`Limits`] and how to write it into one cgroup directory.
pub(super) trait Controller {
    /// The controller as error messages name it (`memory`, `blkio/io`).
    const NAME: &'static str;

    /// The flag that asks for this controller, as error messages name it; `None` when `limits`
    /// sets nothing this controller writes (then it is not touched, nor required).
    fn requested_by(limits: &Limits) -> Option<&'static str>;

    /// This controller's directory for the cgroup, when the host has the controller.
    fn dir(placement: &Placement) -> Option<&ControllerDir>;

    /// Writes this controller's limits from `limits` into `dir`, in the v1 or v2 form `dir`
    /// says; unset limits are left alone.
    fn apply(limits: &Limits, dir: &ControllerDir) -> Result<(), CgroupError>;
}

/// Runs a cgroups-rs write and names the file and value on failure.
fn write_via(
    dir: &Path,
    file: &str,
    value: String,
    write: impl FnOnce() -> cgroups_rs::error::Result<()>,
) -> Result<(), CgroupError> {
    write().map_err(|source| CgroupError::Write {
        path: dir.join(file),
        value,
        source,
    })
}

/// Writes an existing cgroupfs file (never creates one; truncates, as runc does, which
/// cgroupfs ignores and fixture files need).
pub(super) fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::WriteFile {
            path: PathBuf::from(path),
            value: value.to_string(),
            source,
        })
}
