//! Running a tool in the calling thread's network namespace.
//!
//! A child process starts in the namespace of the thread that spawns it, so inside
//! [`Netns::run`](crate::Netns::run) these run the tool in that namespace (no `ip netns exec`,
//! no named namespace). Words are split on whitespace: no shell, no quoting.

use std::{
    fmt,
    io::Write as _,
    process::{Command, ExitStatus, Stdio},
};

/// A command that could not be started or exited with a failure.
pub struct ShError {
    /// The command line as given.
    pub command: String,
    /// `None` when it could not be started.
    pub status: Option<ExitStatus>,
    /// Its stderr, or why it could not be started.
    pub stderr: String,
}

impl fmt::Display for ShError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "`{}` failed ({status}): {}", self.command, self.stderr),
            None => write!(f, "`{}` did not start: {}", self.command, self.stderr),
        }
    }
}

/// As Display, so that `unwrap()` shows the stderr readably.
impl fmt::Debug for ShError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for ShError {}

/// Runs `cmd` in the calling thread's namespace; panics with its stderr if it fails. Returns
/// stdout.
pub fn sh(cmd: &str) -> String {
    run(cmd, None).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`sh`] with `stdin` on the command's stdin; returns the failure instead of panicking.
pub fn sh_in(cmd: &str, stdin: &str) -> Result<String, ShError> {
    run(cmd, Some(stdin))
}

fn run(cmd: &str, stdin: Option<&str>) -> Result<String, ShError> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let (program, args) = words.split_first().expect("an empty command");
    let fail = |status, stderr: String| ShError {
        command: cmd.to_owned(),
        status,
        stderr,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(None, e.to_string()))?;
    let out = std::thread::scope(|s| {
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A writer of its own: a child that answers before reading all its input cannot
            // block us on a full pipe. A child that exits early closes it (EPIPE, ignored).
            s.spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            });
        }
        child.wait_with_output()
    })
    .map_err(|e| fail(None, e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(fail(
            Some(out.status),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_returns_stdout_and_sh_in_feeds_stdin() {
        assert_eq!(sh("echo a  b"), "a b\n");
        assert_eq!(sh_in("cat", "hello").unwrap(), "hello");
    }

    #[test]
    fn a_failing_command_reports_its_stderr_and_status() {
        let e = sh_in("ls /nonexistent-berth-testkit", "").unwrap_err();
        assert!(e.status.is_some_and(|s| !s.success()));
        assert!(e.to_string().contains("/nonexistent-berth-testkit"), "{e}");
        let e = sh_in("/nonexistent-berth-testkit", "").unwrap_err();
        assert!(e.status.is_none(), "{e}");
    }
}
