//! The container store: one directory per container under `<state>/containers/<id>/` holding
//! the agent's intent (`container.json`), the shim's view (`state.json`), the OCI bundle, the
//! overlay upper/work dirs and the log.
//!
//! Every write is atomic (temp file, fsync, rename, fsync of the directory), and the intent is
//! written *before* the host change it describes, so after a crash at any step the next start
//! finds out what was under way and completes or undoes it ([`Phase`]).

use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    cgroup::limits::Limits,
    fsutil::{FsError, private_dir, write_atomic},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt state file {path}: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

impl From<FsError> for StoreError {
    fn from(FsError { op, path, source }: FsError) -> Self {
        StoreError::Io { op, path, source }
    }
}

/// Writes `value` as JSON to `path` atomically and durably ([`crate::fsutil::write_atomic`]).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value).expect("state serializes");
    Ok(write_atomic(path, &bytes)?)
}

/// Reads JSON from `path`; `Ok(None)` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub use crate::model::{
    BerthSpec, SeccompChoice,
    container::{ContainerState as ShimState, Phase, RestartPolicy, RestartPolicyError},
};

/// The agent's record of a container: what the user asked for, and the phase it is in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    /// What the user named: an image reference or a rootfs directory.
    pub image: String,
    pub limits: Limits,
    /// `linux.cgroupsPath`, e.g. `/berth/<id>`.
    pub cgroup: String,
    pub created_at: f64,
    /// Network mode, address and published ports.
    #[serde(default)]
    pub network: crate::net::NetworkSpec,
    /// The profile's JSON when `seccomp` is `custom`, as the client sent it (Docker keeps it
    /// in the container's HostConfig the same way); resolved again at each start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub seccomp_profile: Option<std::sync::Arc<str>>,
    /// The rest of what berth records (the same fields the snapshot shows), flattened so the
    /// file keeps one level. Shared with the snapshot's record of the container
    /// ([`crate::model::Container::berth`]): a tick does not copy its command and environment.
    #[serde(flatten)]
    #[schema(value_type = BerthSpec)]
    pub spec: std::sync::Arc<BerthSpec>,
}

/// Paths of one container's directory.
#[derive(Debug, Clone)]
pub struct ContainerDir {
    pub dir: PathBuf,
}

impl ContainerDir {
    pub fn record(&self) -> PathBuf {
        self.dir.join("container.json")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("bundle/rootfs")
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("container.log")
    }
}

/// The store root: `<state>/containers`.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

impl Store {
    /// Opens (creates) `<state>/containers`; the state directory and the store are made 0700,
    /// so records (with the environment), bundles, logs and writable layers are root's only.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let root = state_dir.join("containers");
        private_dir(state_dir)?;
        private_dir(&root)?;
        Ok(Self { root })
    }

    pub fn dir(&self, id: &str) -> ContainerDir {
        ContainerDir {
            dir: self.root.join(id),
        }
    }

    /// Creates the container's directory and writes its first record (phase `Creating`).
    pub fn create(&self, record: &ContainerRecord) -> Result<ContainerDir, StoreError> {
        let d = self.dir(&record.id);
        private_dir(&d.dir)?;
        write_json(&d.record(), record)?;
        Ok(d)
    }

    pub fn save(&self, record: &ContainerRecord) -> Result<(), StoreError> {
        write_json(&self.dir(&record.id).record(), record)
    }

    /// Every container record on disk. Directories without a readable record (a crash before
    /// the first write) are returned as ids in the second list, to be removed.
    pub fn load_all(&self) -> Result<(Vec<ContainerRecord>, Vec<String>), StoreError> {
        let mut records = Vec::new();
        let mut orphans = Vec::new();
        for e in fs::read_dir(&self.root).map_err(io("read", &self.root))? {
            let e = e.map_err(io("read", &self.root))?;
            let id = e.file_name().to_string_lossy().into_owned();
            match read_json::<ContainerRecord>(&self.dir(&id).record()) {
                Ok(Some(r)) => records.push(r),
                Ok(None) | Err(StoreError::Corrupt { .. }) => orphans.push(id),
                Err(e) => return Err(e),
            }
        }
        records.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        Ok((records, orphans))
    }

    pub fn remove_dir(&self, id: &str) -> Result<(), StoreError> {
        let d = self.dir(id);
        match fs::remove_dir_all(&d.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &d.dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_parse_as_docker_spells_them() {
        assert_eq!("no".parse(), Ok(RestartPolicy::No));
        assert_eq!("always".parse(), Ok(RestartPolicy::Always));
        assert_eq!(
            "on-failure:3".parse(),
            Ok(RestartPolicy::OnFailure {
                max_retries: Some(3)
            })
        );
        assert!("on-failure:0".parse::<RestartPolicy>().is_err());
        assert!("sometimes".parse::<RestartPolicy>().is_err());
        assert_eq!(
            RestartPolicy::OnFailure {
                max_retries: Some(3)
            }
            .to_string(),
            "on-failure:3"
        );
    }

    #[test]
    fn on_failure_restarts_only_failures_up_to_the_limit() {
        let p = RestartPolicy::OnFailure {
            max_retries: Some(2),
        };
        assert!(!p.should_restart(0, 0));
        assert!(p.should_restart(1, 1));
        assert!(!p.should_restart(1, 2));
        assert!(RestartPolicy::Always.should_restart(0, 100));
        assert!(!RestartPolicy::No.should_restart(1, 0));
    }

    #[test]
    fn json_writes_are_atomic_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        assert_eq!(read_json::<ShimState>(&p).unwrap(), None);
        let s = ShimState {
            shim_pid: 7,
            exit_code: Some(137),
            ..Default::default()
        };
        write_json(&p, &s).unwrap();
        assert_eq!(read_json::<ShimState>(&p).unwrap(), Some(s));
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp file left behind: {names:?}");
    }

    #[test]
    fn a_failed_write_keeps_the_operation_and_the_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("gone/x.json");
        match write_json(&p, &ShimState::default()) {
            Err(StoreError::Io { op, path, .. }) => {
                assert_eq!(op, "create");
                assert!(
                    path.starts_with(d.path().join("gone")),
                    "{}",
                    path.display()
                );
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        fs::write(&p, "{not json").unwrap();
        let e = read_json::<ShimState>(&p).unwrap_err().to_string();
        assert!(e.contains("x.json"), "{e}");
    }

    /// A record written before the spec was its own type (one flat object) still loads, so
    /// containers survive the upgrade; and it is written back in the same flat shape, with the
    /// seccomp choice it gets from now on (`default`).
    #[test]
    fn a_flat_record_from_an_older_agent_loads_and_stays_flat() {
        let old = serde_json::json!({
            "id": "abc", "name": "web", "image": "/srv/rootfs", "image_id": null,
            "lower": "/srv/rootfs", "args": ["sleep", "1"], "env": ["A=1"], "workdir": "/",
            "user": "0:0", "limits": {"memory": 67108864}, "restart": {"policy": "always"},
            "runtime": "runc", "cgroup": "/berth/abc", "created_at": 1.5, "phase": "created",
            "stop_requested": false,
            "network": {"mode": "bridge", "ip": "10.231.0.2", "publish": [], "port_backend": null}
        });
        let r: ContainerRecord = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(r.spec.args, ["sleep", "1"]);
        assert_eq!(r.spec.restart, RestartPolicy::Always);
        assert_eq!(r.spec.phase, Phase::Created);
        assert_eq!(r.limits.memory, Some(64 << 20));
        assert_eq!(r.spec.seccomp, SeccompChoice::Default);
        assert_eq!(r.seccomp_profile, None);
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["seccomp"], "default");
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let mut expected = keys(&old);
        expected.push("seccomp".into());
        expected.sort();
        assert_eq!(keys(&back), expected);
        assert!(!r.spec.auto_remove, "an old record is not --rm");

        let mut rm = r.clone();
        std::sync::Arc::make_mut(&mut rm.spec).auto_remove = true;
        let v = serde_json::to_value(&rm).unwrap();
        assert_eq!(v["auto_remove"], true);
        assert_eq!(serde_json::from_value::<ContainerRecord>(v).unwrap(), rm);
    }
}
