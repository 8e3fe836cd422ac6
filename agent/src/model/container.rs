//! What the snapshot says about one container, whatever launched it: its status, the state
//! of its process, and for berth's own containers the record of what the user asked for.

use serde::{Deserialize, Serialize};

/// A container's status as `ps` shows it (Docker's words).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being prepared (bundle, overlay, cgroup, network); not started yet.
    Creating,
    /// Its init process runs.
    Running,
    /// Exited, and its restart policy is about to start it again.
    Restarting,
    /// Not running (exited, killed, or never started).
    Exited,
    /// `rm` is under way.
    Removing,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Creating,
        Status::Running,
        Status::Restarting,
        Status::Exited,
        Status::Removing,
    ];

    /// The lowercase name used in the API, the CLI and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Running => "running",
            Status::Restarting => "restarting",
            Status::Exited => "exited",
            Status::Removing => "removing",
        }
    }

    /// Whether `ps` without `-a` lists it: running, or about to run again.
    pub fn is_up(self) -> bool {
        matches!(self, Status::Running | Status::Restarting)
    }

    /// Whether output may still come (`logs -f` keeps following).
    pub fn may_produce_output(self) -> bool {
        matches!(
            self,
            Status::Running | Status::Restarting | Status::Creating
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a container is in its life, as the agent intends it. Written before acting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Bundle, overlay and cgroup being prepared; a crash here is undone on the next start.
    Creating,
    /// Handed to a shim: running, or exited (see the shim's `state.json`).
    Created,
    /// `rm` under way; a crash here is completed on the next start.
    Removing,
}

/// Restart policy, Docker's names: `no`, `on-failure[:N]`, `always`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(tag = "policy", rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    OnFailure {
        max_retries: Option<u32>,
    },
    Always,
}

impl RestartPolicy {
    /// Whether an exit with `code` after `restarts` restarts should be followed by another.
    pub fn should_restart(&self, code: i32, restarts: u32) -> bool {
        match *self {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure { max_retries } => {
                code != 0 && max_retries.is_none_or(|m| restarts < m)
            }
        }
    }
}

/// A `--restart` value that is not one of Docker's policies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestartPolicyError {
    #[error("--restart {value}: the retry count must be a positive integer")]
    RetryCount { value: String },
    #[error("--restart {value}: expected no, on-failure[:N] or always")]
    Unknown { value: String },
}

impl std::str::FromStr for RestartPolicy {
    type Err = RestartPolicyError;
    fn from_str(s: &str) -> Result<Self, RestartPolicyError> {
        match s {
            "no" => Ok(Self::No),
            "always" => Ok(Self::Always),
            "on-failure" => Ok(Self::OnFailure { max_retries: None }),
            _ => match s.strip_prefix("on-failure:") {
                Some(n) => n
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .map(|n| Self::OnFailure {
                        max_retries: Some(n),
                    })
                    .ok_or_else(|| RestartPolicyError::RetryCount {
                        value: s.to_owned(),
                    }),
                None => Err(RestartPolicyError::Unknown {
                    value: s.to_owned(),
                }),
            },
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestartPolicy::No => write!(f, "no"),
            RestartPolicy::Always => write!(f, "always"),
            RestartPolicy::OnFailure { max_retries: None } => write!(f, "on-failure"),
            RestartPolicy::OnFailure {
                max_retries: Some(n),
            } => write!(f, "on-failure:{n}"),
        }
    }
}

/// What the shim last wrote about the container's process (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, utoipa::ToSchema)]
pub struct ContainerState {
    /// Pid of the shim (outlives the agent).
    pub shim_pid: u32,
    /// Pid of the container's init process in the host pid namespace, while running.
    pub pid: Option<u32>,
    pub running: bool,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    /// Exit code as a shell reports it: 128 + signal for a killed process.
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    /// OOM kills seen in the container's cgroup over its life.
    pub oom_kills: u64,
    pub restart_count: u32,
    /// Why the shim could not start the container, if it could not.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_are_the_serde_names() {
        for s in Status::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
            let back: Status = serde_json::from_value(serde_json::json!(s.name())).unwrap();
            assert_eq!(back, s);
        }
    }
}
