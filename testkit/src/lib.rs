//! Helpers shared by berth's tests (unit tests of the `berth` lib and the integration tests in
//! `agent/tests/`); a dev-dependency only, std + libc.
//!
//! - [`Netns`]: a network namespace the test owns, gone with the guard. Tests make their
//!   interfaces, addresses, routes, nft tables and iptables chains inside one, so the host's own
//!   are never touched.
//! - [`sh`], [`sh_in`], [`Netns::sh`], [`Netns::sh_in`]: run a tool (ip, nft, iptables) in the
//!   calling thread's namespace or in a guard's.
//! - [`veth`], [`Netns::veth`]: a veth pair from one namespace into another.
//! - [`unique`]: names unique to the test process (its pid) and the call.
//! - [`Containerd`], [`Podman`]: Debian's containerd and podman run for one test, each in
//!   mount and network namespaces of its own with its own state; everything they made (tasks,
//!   containers, processes, cgroups, directories) is removed with the guard.
//! - [`Dockerd`]: a real dockerd in namespaces of its own, with an offline busybox image.
//! - [`busybox_rootfs`]: a root filesystem of Debian's busybox-static.

mod containerd;
mod dockerd;
mod engine;
mod netns;
mod podman;
mod rootfs;
mod sh;

use std::sync::atomic::{AtomicU32, Ordering};

pub use containerd::Containerd;
pub use dockerd::Dockerd;
pub use netns::{Netns, veth};
pub use podman::Podman;
pub use rootfs::busybox_rootfs;
pub use sh::{ShError, sh, sh_in};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call: `<tag><pid>x<n>`, e.g. `bh4242x0`.
///
/// Short enough for an interface name (at most 15 bytes) while `tag` has at most 3 bytes, the
/// pid at most 7 digits and `n` at most 3 (pid_max is 4194304 on 64-bit Linux).
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_carry_the_pid_and_differ_per_call() {
        let (a, b) = (unique("bt"), unique("bt"));
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("bt{}x", std::process::id())), "{a}");
        assert!(a.len() <= 15, "{a}");
    }
}
