//! The OCI runtime driver: runc or crun as a subprocess, with berth's own state root
//! (`--root`), so `runc list` of other tools is untouched and berth's containers are found
//! again after an agent restart.
//!
//! Detection at start-up: `auto` picks crun on pure cgroup v2 hosts (faster) when installed,
//! runc otherwise. crun 1.8 refuses cgroup hybrid mode ("cgroups in hybrid mode not supported,
//! drop all controllers from cgroupv2"), so on hybrid hosts `auto` is runc and an explicit
//! `crun` is refused with that reason.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::{Deserialize, Serialize};

use super::error::RuntimeError;
use crate::cgroup::{CgroupMode, Hierarchy};

/// The runtime in use, as `/api/v1/system` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct OciRuntime {
    /// `runc` or `crun`.
    pub name: String,
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub version: String,
    /// `--root` state directory of the runtime (tmpfs: gone after a reboot, as the containers).
    #[schema(value_type = String)]
    pub root: PathBuf,
    /// Why this runtime was chosen.
    pub reason: String,
}

/// What the runtime reports about a container (`runc state`).
#[derive(Debug, Clone, Deserialize)]
pub struct RuntimeState {
    pub status: String,
    pub pid: i64,
}

fn find(name: &str) -> Option<PathBuf> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(name))
    .find(|p| p.is_file())
}

fn version(path: &Path) -> Option<String> {
    let out = Command::new(path).arg("--version").output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    })
}

impl OciRuntime {
    /// Picks the runtime named in config (`auto`, `runc`, `crun`) and checks that it runs.
    pub fn detect(wanted: &str, hierarchy: &Hierarchy, root: &Path) -> Result<Self, RuntimeError> {
        let hybrid = hierarchy.mode == CgroupMode::Hybrid;
        let (name, reason) = match wanted {
            "runc" => ("runc", "configured".to_owned()),
            "crun" if hybrid => {
                return Err(RuntimeError::RuntimeUnusable {
                    runtime: "crun".into(),
                    reason: "crun refuses cgroup hybrid mode (v1 controllers plus a cgroup2 mount \
                             with controllers): use runtime.oci = \"runc\" or \"auto\""
                        .into(),
                });
            }
            "crun" => ("crun", "configured".to_owned()),
            _ if hybrid => (
                "runc",
                "auto: cgroup hybrid mode, which crun refuses".to_owned(),
            ),
            _ if find("crun").is_some() => {
                ("crun", "auto: cgroup v2 and crun installed".to_owned())
            }
            _ => ("runc", "auto: crun not installed".to_owned()),
        };
        let path = find(name).ok_or_else(|| RuntimeError::RuntimeUnusable {
            runtime: name.into(),
            reason: format!("{name} is not installed (apt-get install {name})"),
        })?;
        let version = version(&path).ok_or_else(|| RuntimeError::RuntimeUnusable {
            runtime: name.into(),
            reason: format!("`{} --version` failed", path.display()),
        })?;
        Ok(Self {
            name: name.into(),
            path,
            version,
            root: root.join(name),
            reason,
        })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.path);
        c.arg("--root").arg(&self.root);
        c
    }

    fn run(&self, args: &[&str], what: &'static str, id: &str) -> Result<(), RuntimeError> {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuntimeError::Io {
                op: "run",
                path: self.path.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        Err(RuntimeError::Runtime {
            runtime: self.name.clone(),
            command: what,
            container: id.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }

    /// `create`: the container's init waits for `start`. Its stdout and stderr go to `log`;
    /// the runtime's own messages go to `runtime_log` (JSON lines), whose last error is
    /// returned when create fails.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        log: &File,
        runtime_log: &Path,
    ) -> Result<(), RuntimeError> {
        let clone = |f: &File| {
            f.try_clone().map_err(|source| RuntimeError::Io {
                op: "dup",
                path: bundle.to_owned(),
                source,
            })
        };
        let _ = std::fs::remove_file(runtime_log);
        let status = Command::new(&self.path)
            .arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(runtime_log)
            .args(["--log-format", "json", "create", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(clone(log)?)
            .stderr(clone(log)?)
            .status()
            .map_err(|source| RuntimeError::Io {
                op: "run",
                path: self.path.clone(),
                source,
            })?;
        if status.success() {
            return Ok(());
        }
        Err(RuntimeError::Runtime {
            runtime: self.name.clone(),
            command: "create",
            container: id.to_owned(),
            stderr: last_error(runtime_log).unwrap_or_else(|| format!("exited with {status}")),
        })
    }

    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(&["start", id], "start", id)
    }

    /// Sends `signal` (e.g. `TERM`, `KILL`) to the container's init.
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        self.run(&["kill", id, signal], "kill", id)
    }

    /// Removes the runtime's state and the container's cgroups; absent is fine.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self.run(&["delete", "--force", id], "delete", id) {
            Err(RuntimeError::Runtime { stderr, .. })
                if stderr.contains("does not exist") || stderr.contains("not exist") =>
            {
                Ok(())
            }
            r => r,
        }
    }

    /// `None` when the runtime does not know the container.
    pub fn state(&self, id: &str) -> Option<RuntimeState> {
        let out = self
            .cmd()
            .args(["state", id])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }
}

/// The last `"level":"error"` message of a runtime's JSON log.
fn last_error(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["level"] == "error").then(|| v["msg"].as_str().unwrap_or(l).to_owned())
    })
}
