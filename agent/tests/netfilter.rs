//! The netfilter cost probe on the real kernel, always inside network namespaces this test
//! creates (a BPF netfilter link acts in the netns of the thread that creates it; others may
//! hold links in the host's): attach/EBUSY/detach, exact packet counts through a DNAT rule,
//! per-port iptables rules ranked against an nft map, and the probe's own overhead.
//!
//! Names start with `bnf<pid>`; namespaces, veths and rules die with their RAII guards.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use aya::Ebpf;
use berth::{
    cgroup::TrackedRoot,
    probes::netfilter::{
        CtState, Family, Hook, NetfilterProbe, NetfilterSample,
        loader::{self, PRIORITY_FIRST, PRIORITY_LAST},
    },
};

static SEQ: AtomicU32 = AtomicU32::new(0);
/// Timing tests run one at a time, and not while another test floods a veth.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn name(tag: &str) -> String {
    format!(
        "bnf{}{tag}{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawning");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace of our own (`ip netns add`), deleted on drop with everything in it.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = name(tag);
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a command inside the namespace, `input` on its stdin.
    fn exec(&self, cmd: &[&str], input: &str) {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `f` on a thread that entered this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = fs::File::open(&path).unwrap();
                // SAFETY: setns on this thread only; it ends with the scope.
                assert_eq!(
                    unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                    0,
                    "setns {}",
                    path.display()
                );
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces joined by a veth pair: `client` (10.99.0.2) and `host` (10.99.0.1), the
/// one the probe watches. Both are ours, so the addresses collide with nothing.
struct Pair {
    client: Netns,
    host: Netns,
}

const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

impl Pair {
    fn new() -> Self {
        let client = Netns::new("c");
        let host = Netns::new("h");
        let (a, b) = (name("a"), name("b"));
        run(
            "ip",
            &[
                "link",
                "add",
                &a,
                "netns",
                &host.name,
                "type",
                "veth",
                "peer",
                "name",
                &b,
                "netns",
                &client.name,
            ],
        );
        host.ip(&["addr", "add", "10.99.0.1/24", "dev", &a]);
        host.ip(&["link", "set", &a, "up"]);
        client.ip(&["addr", "add", "10.99.0.2/24", "dev", &b]);
        client.ip(&["link", "set", &b, "up"]);
        Self { client, host }
    }
}

fn tracked_root() -> TrackedRoot {
    // Only the syscall probe uses it; it is not started here.
    TrackedRoot {
        dir: PathBuf::from("/nonexistent"),
        path: "/".into(),
        id: 0,
        level: 0,
    }
}

/// Loads berth's object and starts the netfilter probe inside `ns`.
fn start_probe(ns: &Netns) -> (Ebpf, NetfilterProbe) {
    ns.run(|| {
        let mut ebpf = berth::probes::load_object(&tracked_root()).expect("loading the object");
        let probe = NetfilterProbe::start(Some(&mut ebpf), true);
        assert!(
            probe.status.attached,
            "netfilter probe not attached: {:?}",
            probe.status
        );
        (ebpf, probe)
    })
}

fn loaded_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

#[test]
fn both_programs_attach_on_every_hook_a_second_instance_moves_over_and_drop_detaches() {
    let ns = Netns::new("n");
    let (ebpf1, probe1) = start_probe(&ns);
    println!("status: {:?}", probe1.status);
    assert_eq!(probe1.status.paths["netfilter_pair"], "ok");
    assert!(
        probe1.status.paths["fentry"] == "available"
            || probe1.status.paths["fentry"].starts_with("unavailable ("),
        "{:?}",
        probe1.status.paths
    );
    assert_eq!(probe1.attachments.len(), 10, "{:?}", probe1.attachments);
    for a in &probe1.attachments {
        assert_eq!(
            (a.first_priority, a.last_priority),
            (PRIORITY_FIRST, PRIORITY_LAST),
            "{a:?}"
        );
    }
    for family in Family::ALL {
        for hook in Hook::ALL {
            assert!(
                probe1
                    .attachments
                    .iter()
                    .any(|a| a.family == family && a.hook == hook),
                "{family:?} {hook:?} missing"
            );
        }
    }
    let links = loader::netfilter_links().unwrap();
    let ids1 = probe1.link_ids();
    assert_eq!(ids1.len(), 20);
    for id in &ids1 {
        let (pf, hook, priority) = links[id];
        assert!(pf == 2 || pf == 10, "link {id}: pf {pf}");
        assert!(hook < 5);
        assert!(priority == PRIORITY_FIRST || priority == PRIORITY_LAST);
    }

    // A second instance in the same namespace: EBUSY on those priorities, the next ones.
    let (ebpf2, probe2) = start_probe(&ns);
    for a in &probe2.attachments {
        assert_eq!(
            (a.first_priority, a.last_priority),
            (PRIORITY_FIRST + 1, PRIORITY_LAST - 1),
            "{a:?}"
        );
    }
    let programs1 = probe1.status.program_ids.clone();
    assert!(programs1.iter().all(|id| loaded_program_ids().contains(id)));

    drop(probe1);
    drop(ebpf1);
    let links = loader::netfilter_links().unwrap();
    for id in &ids1 {
        assert!(
            !links.contains_key(id),
            "link {id} still attached after drop"
        );
    }
    for id in probe2.link_ids() {
        assert!(
            links.contains_key(&id),
            "the second instance's link {id} went too"
        );
    }
    // Programs are freed after an RCU grace period.
    let deadline = Instant::now() + Duration::from_secs(5);
    while programs1.iter().any(|id| loaded_program_ids().contains(id)) {
        assert!(
            Instant::now() < deadline,
            "programs {programs1:?} still loaded 5 s after drop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ids2 = probe2.link_ids();
    drop(probe2);
    drop(ebpf2);
    let links = loader::netfilter_links().unwrap();
    assert!(ids2.iter().all(|id| !links.contains_key(id)));
}
