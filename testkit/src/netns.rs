//! [`Netns`]: an anonymous network namespace, kept alive by an open file of this process.
//!
//! Why anonymous rather than named (`ip netns add`, a bind mount under `/run/netns`):
//! - Nothing is left behind. A named namespace lives as long as its mount: a test that crashes,
//!   is killed by a timeout or aborts on a double panic skips its `Drop` and leaves the
//!   namespace, its interfaces and its rules on the host. An anonymous one lives only while
//!   something holds it (this guard's file, a socket created inside, a process that entered
//!   it); when the test process dies, the kernel removes it with every interface, address, route,
//!   nft table and iptables chain in it.
//! - It still has a path: `/proc/<pid>/fd/<n>` names the open namespace file, and both
//!   `setns(2)` and iproute2 (`ip link set X netns PATH`, `ip link add ... netns PATH`: a name
//!   containing `/` is opened as a file) accept it.
//! - Names are needed only by `ip netns exec` and `ip -n`. [`Netns::run`] covers both: a child
//!   process starts in the namespace of the thread that spawns it, so `Command`s (or
//!   [`sh`]/[`Netns::sh`]) run inside a thread that entered the namespace act there.
//!
//! [`Netns::named`] makes a named one (`ip netns add`) instead, for a long-lived daemon the test
//! starts inside (dockerd, see [`crate::Dockerd`]) and for a person debugging a run with `ip
//! netns exec`; its guard deletes the name on drop, and a test killed before that leaves it (`ip
//! netns list` shows it, with the pid in its name).
//!
//! The namespace is made by a short-lived thread (`unshare(CLONE_NEWNET)` affects only the
//! calling thread); every entry is on a thread of its own, so no test thread ever changes
//! namespace.

use std::{fs::File, os::fd::AsRawFd as _, path::PathBuf, thread};

use crate::sh::sh;

/// A network namespace of the test's own, with `lo` up; removed by the kernel once this guard
/// and whatever was created inside (sockets, processes) are gone.
pub struct Netns {
    file: File,
    /// Its name under /run/netns, for a named one.
    name: Option<String>,
}

impl Netns {
    /// A new network namespace with `lo` up. Needs root (CAP_SYS_ADMIN).
    pub fn new() -> Netns {
        thread::spawn(|| {
            // SAFETY: a plain syscall; it moves only this thread, which ends right after.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) failed (tests that make namespaces need root): {}",
                std::io::Error::last_os_error()
            );
            let file = File::open("/proc/thread-self/ns/net").expect("opening the new netns");
            sh("ip link set lo up");
            Netns { file, name: None }
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// A named network namespace (`ip netns add name`, so `/run/netns/<name>`) with `lo` up;
    /// the name is deleted on drop. Needs root.
    pub fn named(name: &str) -> Netns {
        sh(&format!("ip netns add {name}"));
        // The guard from here on: a failure below still deletes the name.
        let file = File::open(format!("/run/netns/{name}"));
        let ns = Netns {
            file: file.unwrap_or_else(|e| {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", name])
                    .output();
                panic!("opening /run/netns/{name}: {e}")
            }),
            name: Some(name.to_owned()),
        };
        ns.sh("ip link set lo up");
        ns
    }

    /// The name under /run/netns of a [`Netns::named`] namespace.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// `/proc/<pid>/fd/<n>`: a path naming this namespace for `setns` or for `ip ... netns
    /// PATH`, valid while `self` lives.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file.as_raw_fd()
        ))
    }

    /// Runs `f` on a new thread inside this namespace and returns its result; a panic in `f` is
    /// re-raised here. Sockets `f` creates stay in this namespace wherever they are used later;
    /// processes it spawns start in it.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: a plain syscall on a namespace fd we hold open; it moves only this
                // thread, which ends with `f`.
                let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
        })
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// [`sh`] inside this namespace.
    pub fn sh(&self, cmd: &str) -> String {
        self.run(|| sh(cmd))
    }

    /// [`sh_in`](crate::sh_in) inside this namespace.
    pub fn sh_in(&self, cmd: &str, stdin: &str) -> Result<String, crate::ShError> {
        self.run(|| crate::sh_in(cmd, stdin))
    }

    /// A veth pair: `name` in this namespace, `peer_name` in `peer`. Both are down.
    pub fn veth(&self, name: &str, peer: &Netns, peer_name: &str) {
        self.run(|| veth(name, peer, peer_name));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            // The namespace itself lives on while a process inside holds it.
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .output();
        }
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

/// A veth pair: `name` in the calling thread's namespace, `peer_name` in `peer`. Both are down.
pub fn veth(name: &str, peer: &Netns, peer_name: &str) {
    sh(&format!(
        "ip link add {name} type veth peer name {peer_name} netns {}",
        peer.path().display()
    ));
}

#[cfg(test)]
mod tests {
    use std::{fs, net::UdpSocket};

    use super::*;

    fn ns_id(path: &str) -> String {
        fs::read_link(path).unwrap().display().to_string()
    }

    /// Root only, as every test that makes a namespace.
    #[test]
    fn run_is_inside_lo_is_up_and_the_caller_stays_where_it_was() {
        let here = ns_id("/proc/thread-self/ns/net");
        let ns = Netns::new();
        let inside = ns.run(|| ns_id("/proc/thread-self/ns/net"));
        assert_ne!(inside, here);
        assert_eq!(ns_id(ns.path().to_str().unwrap()), inside);
        assert_eq!(ns_id("/proc/thread-self/ns/net"), here);
        assert!(ns.sh("ip -o link show lo").contains("UP"));
        // Children of the thread inside are inside: they see only this namespace's links.
        assert_eq!(ns.sh("ip -o link show").lines().count(), 1);
        // Loopback works in there.
        ns.run(|| {
            let a = UdpSocket::bind("127.0.0.1:0").unwrap();
            a.send_to(b"x", a.local_addr().unwrap()).unwrap();
            assert_eq!(a.recv(&mut [0; 4]).unwrap(), 1);
        });
    }

    #[test]
    fn a_named_namespace_has_its_name_while_the_guard_lives() {
        let name = format!("berth-tk-{}", crate::unique("n"));
        let ns = Netns::named(&name);
        let run_netns = format!("/run/netns/{name}");
        assert_eq!(ns.name(), Some(name.as_str()));
        // /run/netns/<name> is a bind mount of the namespace file: the same inode.
        let ino = |p: &str| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        assert_eq!(ino(&run_netns), ns.run(|| ino("/proc/thread-self/ns/net")));
        assert!(ns.sh("ip -o link show lo").contains("UP"));
        drop(ns);
        assert!(!std::path::Path::new(&run_netns).exists(), "name left");
    }

    #[test]
    fn a_panic_inside_is_raised_to_the_caller() {
        let ns = Netns::new();
        let e = std::panic::catch_unwind(|| ns.run(|| panic!("inside"))).unwrap_err();
        assert_eq!(e.downcast_ref::<&str>(), Some(&"inside"));
    }

    #[test]
    fn a_veth_joins_two_namespaces_and_nothing_of_it_is_in_the_callers() {
        let (a, b) = (Netns::new(), Netns::new());
        let (x, y) = (crate::unique("bt"), crate::unique("bt"));
        a.veth(&x, &b, &y);
        a.sh(&format!("ip addr add 10.213.0.1/30 dev {x}"));
        a.sh(&format!("ip link set {x} up"));
        b.sh(&format!("ip addr add 10.213.0.2/30 dev {y}"));
        b.sh(&format!("ip link set {y} up"));
        let sock = b.run(|| UdpSocket::bind("10.213.0.2:0").unwrap());
        let to = sock.local_addr().unwrap();
        a.run(|| {
            UdpSocket::bind("10.213.0.1:0")
                .unwrap()
                .send_to(b"hi", to)
                .unwrap()
        });
        sock.set_read_timeout(Some(std::time::Duration::from_secs(3)))
            .unwrap();
        assert_eq!(sock.recv(&mut [0; 4]).unwrap(), 2);
        // Nothing of it is in the caller's namespace.
        assert!(!sh("ip -o link show").contains(&x));
    }
}
