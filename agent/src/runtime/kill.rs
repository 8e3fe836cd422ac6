//! `kill`: send a signal to the container's init process through the OCI runtime.

use std::time::Duration;

use super::{ContainerView, Manager, error::RuntimeError};
use crate::model::Status;

impl Manager {
    /// Sends `signal` (name like `KILL`, `TERM`, `SIGHUP`, or a number).
    pub fn kill(&self, reference: &str, signal: &str) -> Result<ContainerView, RuntimeError> {
        let _ops = self.ops.lock().expect("lock");
        let r = self.resolve(reference)?;
        let sig = signal.trim_start_matches("SIG").to_ascii_uppercase();
        let known = [
            "HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "STOP", "CONT", "WINCH",
        ];
        if !known.contains(&sig.as_str()) && sig.parse::<u8>().map_or(true, |n| n == 0 || n > 64) {
            return Err(RuntimeError::UnknownSignal {
                signal: signal.to_owned(),
            });
        }
        if self.view(&r).status != Status::Running {
            return Err(RuntimeError::NotRunning { container: r.name });
        }
        let r = if sig == "KILL" || sig == "TERM" || sig == "INT" || sig == "QUIT" {
            self.mark_stopping(&r)?
        } else {
            r
        };
        self.runtime.kill(&r.id, &sig)?;
        if sig == "KILL" {
            self.wait_exit(&r.id, Duration::from_secs(10));
            // Without its shim nobody else records the exit.
            self.settle_lost_shim(&r)?;
        }
        Ok(self.view(&r))
    }
}
