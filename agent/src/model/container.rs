//! What the snapshot says about one container: its status, whatever launched it.

use serde::{Deserialize, Serialize};

/// A container's status as `ps` shows it (Docker's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
