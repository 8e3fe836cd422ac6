//! Running nft and the iptables tools: arguments, an optional stdin batch, stdout back, and an
//! error that names the command and carries its stderr.
//!
//! The tools run in the network namespace of the calling thread (a spawned process inherits the
//! spawning thread's namespaces), which is how tests confine them to a namespace of their own.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use super::PortmapError;

/// Longest stderr excerpt kept in an error (a failed 20,000-line batch can echo a lot).
const STDERR_MAX: usize = 2000;

/// Runs `program args...`, feeding `stdin` if given; returns stdout.
pub(super) fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    hint: &'static str,
) -> Result<String, PortmapError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
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
        .map_err(|source| PortmapError::Spawn {
            command: command.clone(),
            source,
            hint,
        })?;
    let output = std::thread::scope(|s| {
        // Write from another thread: the tool may print before it has read everything.
        let writer = child.stdin.take().map(|mut pipe| {
            let text = stdin.unwrap_or_default();
            s.spawn(move || pipe.write_all(text.as_bytes()))
        });
        let output = child.wait_with_output();
        // A write error (EPIPE) only means the tool stopped early; its status says why.
        if let Some(w) = writer {
            let _ = w.join();
        }
        output
    })
    .map_err(|source| PortmapError::Spawn {
        command: command.clone(),
        source,
        hint,
    })?;
    if !output.status.success() {
        return Err(PortmapError::Command {
            command,
            status: output.status,
            stderr: excerpt(&String::from_utf8_lossy(&output.stderr)),
        });
    }
    String::from_utf8(output.stdout).map_err(|_| PortmapError::Unparsable {
        command,
        what: "output is not UTF-8",
        excerpt: String::new(),
    })
}

fn excerpt(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.len() <= STDERR_MAX {
        return trimmed.to_owned();
    }
    let mut end = STDERR_MAX;
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [...]", &trimmed[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_command_reports_its_name_and_stderr() {
        let e = run("sh", &["-c", "echo bad >&2; exit 3"], None, "hint").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("sh -c echo bad >&2; exit 3 failed"),
            "{text}"
        );
        assert!(text.ends_with(": bad"), "{text}");
    }

    #[test]
    fn stdin_is_fed_and_stdout_returned() {
        let big = "x".repeat(1 << 20);
        let out = run("wc", &["-c"], Some(&big), "hint").unwrap();
        assert_eq!(out.trim(), (1 << 20).to_string());
    }

    #[test]
    fn a_missing_program_says_what_to_install() {
        let e = run("bpm-no-such-tool", &[], None, "install it").unwrap_err();
        assert!(e.to_string().ends_with("; install it"), "{e}");
    }

    #[test]
    fn long_stderr_is_cut() {
        let s = "é".repeat(3000);
        let e = excerpt(&s);
        assert!(e.len() < 2100 && e.ends_with("[...]"));
    }
}
