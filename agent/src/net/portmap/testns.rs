//! Test helpers: anonymous network namespaces and the tools run inside them.
//!
//! A [`Netns`] is made by a short-lived thread that calls `unshare(CLONE_NEWNET)` and opens
//! `/proc/thread-self/ns/net`; the open file keeps the namespace alive. [`Netns::run`] runs a
//! closure on a thread that entered it with `setns`, so the sockets it creates and the tools it
//! spawns (nft, iptables, ip) live in that namespace. Nothing is named or mounted on the host:
//! when the `Netns` and its sockets are dropped (or the test process dies), the kernel removes the
//! namespace with every interface, nft table and iptables chain in it.

use std::{fs::File, os::fd::AsRawFd, process::Command};

pub struct Netns {
    file: File,
}

impl Netns {
    /// A new network namespace with `lo` up.
    pub fn new() -> Netns {
        std::thread::spawn(|| {
            // SAFETY: plain syscall; affects only this thread, which ends right after.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) (tests need root): {}",
                std::io::Error::last_os_error()
            );
            let file = File::open("/proc/thread-self/ns/net").expect("open the new netns");
            sh("ip link set lo up");
            Netns { file }
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// A path naming this namespace for `ip ... netns PATH` (valid while `self` lives).
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd())
    }

    /// Runs `f` on a thread inside this namespace; a panic in `f` is re-raised here.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: plain syscall on a valid namespace fd; affects only this thread.
                let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
        })
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// Runs a command (words split on spaces) in the calling thread's namespace; panics with its
/// stderr if it fails. Returns stdout.
pub fn sh(cmd: &str) -> String {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let out = Command::new(words[0])
        .args(&words[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`sh`] with a stdin text.
pub fn sh_in(cmd: &str, stdin: &str) -> Result<String, String> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let mut child = Command::new(words[0])
        .args(&words[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(stdin.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
