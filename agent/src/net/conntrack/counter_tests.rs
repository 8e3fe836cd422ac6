use std::{
    net::{Ipv4Addr, UdpSocket},
    process::Command,
};

use std::sync::atomic::AtomicU16;

use berth_testkit::{Netns, unique};

use super::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A named namespace of the test's own with conntrack active (an nft `ct state new` rule)
/// and six addresses on `lo`; gone with the guard.
fn tracked_netns() -> Netns {
    let ns = Netns::named(&unique("bct"));
    for i in 1..=6 {
        ns.sh(&format!("ip addr add 10.213.0.{i}/32 dev lo"));
    }
    ns.sh_in(
        "nft -f -",
        "table ip berth_ct_test {\n chain out {\n  type filter hook output priority 0;\n  ct state new counter\n }\n}\n",
    )
    .expect("nft (Debian's nftables package)");
    ns
}

/// `n` UDP flows from `src` to `dst` inside `ns`, each from a source port of its own (a
/// random ephemeral port may repeat, and the same tuple is the same entry).
fn flows(ns: &Netns, src: &str, dst: &str, n: usize) {
    static PORT: AtomicU16 = AtomicU16::new(20_000);
    ns.run(|| {
        for _ in 0..n {
            let port = PORT.fetch_add(1, Ordering::Relaxed);
            let s = UdpSocket::bind((ip(src), port)).unwrap();
            s.send_to(b"x", (ip(dst), 9)).unwrap();
        }
    });
}

/// New flows from 10.213.0.5 to .6 inside `ns` every 10 ms until dropped: events never
/// stop, as on a busy host.
struct Churn {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn churn(ns: &Netns) -> Churn {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    // Spawned inside the namespace, the thread stays in it.
    let thread = ns.run(move || {
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let u = UdpSocket::bind((ip("10.213.0.5"), 0)).unwrap();
                u.send_to(b"x", (ip("10.213.0.6"), 9)).unwrap();
                thread::sleep(Duration::from_millis(10));
            }
        })
    });
    Churn {
        stop,
        thread: Some(thread),
    }
}

/// Entries naming `ip` as `conntrack -L` (run with `ip netns exec`) lists them.
fn tool_count(ns: &Netns, ip: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name().unwrap(), "conntrack", "-L"])
        .output()
        .expect("conntrack (Debian's conntrack package)");
    assert!(out.status.success(), "{out:?}");
    let (s, d) = (format!("src={ip} "), format!("dst={ip} "));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&s) || l.contains(&d))
        .count() as u64
}

fn conntrack_d(ns: &Netns, src: &str) {
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name().unwrap(),
            "conntrack",
            "-D",
            "-s",
            src,
        ])
        .output()
        .expect("conntrack (Debian's conntrack package)");
}

/// Waits (10 s at most) until the counter's counts of the four addresses equal the tool's,
/// and returns them.
fn agree(ns: &Netns, c: &Counter, want: [u64; 4]) -> [u64; 4] {
    let ips = ["10.213.0.1", "10.213.0.2", "10.213.0.3", "10.213.0.4"];
    let tool = ips.map(|i| tool_count(ns, i));
    assert_eq!(tool, want, "conntrack -L itself");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ours = c.with(|t| ips.map(|i| t.get(ip(i))));
        if ours == Some(tool) {
            return tool;
        }
        assert!(
            Instant::now() < deadline,
            "counter {ours:?} vs conntrack -L {tool:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_costly_check_spaces_the_next_one_out() {
    let share = Tuning::default().check_share;
    assert_eq!(
        cost_floor(Duration::from_millis(26), share),
        Duration::from_secs(130)
    );
    assert!(cost_floor(Duration::from_micros(500), share) < Duration::from_secs(5));
    assert_eq!(cost_floor(Duration::from_secs(1), 0.0), Duration::ZERO);
    assert_eq!(cost_floor(Duration::from_secs(1), f64::NAN), Duration::ZERO);
    assert!(
        thread_cpu() > Duration::ZERO,
        "the thread's CPU clock reads"
    );
}

fn quick() -> Tuning {
    Tuning {
        verify_every: Duration::from_secs(1),
        verify_max: Duration::from_secs(2),
        poll_every: Duration::from_secs(1),
        // The tests' namespaces share the host's hash table: a dump's cost must not
        // space their checks out.
        check_share: 1.0,
        ..Tuning::default()
    }
}

/// Root: a namespace of the test's own, real conntrack, the real tool; older entries
/// checked by lookups.
#[test]
fn counts_follow_new_and_deleted_flows_as_conntrack_lists_them() {
    follow_flows(quick());
}

/// The same with older entries checked by dumps.
#[test]
fn older_entries_checked_by_a_dump_when_many() {
    follow_flows(Tuning {
        lookup_max: 0,
        ..quick()
    });
}

fn follow_flows(tuning: Tuning) {
    let ns = tracked_netns();
    // Older than the counter: with nf_conntrack_events = 2 these never send an event.
    flows(&ns, "10.213.0.4", "10.213.0.2", 5);
    let c = ns
        .run(|| Counter::start(Path::new("/proc"), tuning))
        .unwrap();
    agree(&ns, &c, [0, 5, 0, 5]);
    // Subscribed now. The periodic checks must run though the event socket is never quiet.
    let _churn = churn(&ns);
    flows(&ns, "10.213.0.1", "10.213.0.2", 40);
    flows(&ns, "10.213.0.3", "10.213.0.2", 10);
    agree(&ns, &c, [40, 55, 10, 5]);
    assert_eq!(c.with(|t| t.seeded()), Some(5), "only the older entries");
    // Checks that find the older entries alive keep them.
    thread::sleep(tuning.verify_every * 2 + Duration::from_millis(500));
    agree(&ns, &c, [40, 55, 10, 5]);
    assert_eq!(c.with(|t| t.seeded()), Some(5), "kept by the checks");
    conntrack_d(&ns, "10.213.0.3");
    agree(&ns, &c, [40, 45, 0, 5]);
    // No DESTROY event for these: the periodic check finds them gone.
    conntrack_d(&ns, "10.213.0.4");
    agree(&ns, &c, [40, 40, 0, 0]);
    assert_eq!(c.with(|t| t.seeded()), Some(0));
    // Not wanted: closed, counts unknown; wanted again: a fresh dump.
    c.set_wanted(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.with(|_| ()).is_some() {
        assert!(
            Instant::now() < deadline,
            "counts still known while not wanted"
        );
        thread::sleep(Duration::from_millis(20));
    }
    flows(&ns, "10.213.0.3", "10.213.0.1", 3);
    c.set_wanted(true);
    agree(&ns, &c, [43, 40, 3, 0]);
}

/// Root: a receive buffer far too small for a burst; the loss is seen and the counts
/// rebuilt.
#[test]
fn lost_events_rebuild_the_counts_from_a_dump() {
    let ns = tracked_netns();
    let tuning = Tuning {
        rcvbuf: 4096,
        ..quick()
    };
    let c = ns
        .run(|| Counter::start(Path::new("/proc"), tuning))
        .unwrap();
    agree(&ns, &c, [0, 0, 0, 0]);
    flows(&ns, "10.213.0.1", "10.213.0.2", 1000);
    agree(&ns, &c, [1000, 1000, 0, 0]);
    assert!(c.losses() > 0, "a 4 KiB buffer held 1,000 events");
}

/// Root: events turned off in the namespace; the counts come from periodic dumps.
#[test]
fn with_events_off_the_counts_come_from_periodic_dumps() {
    let ns = tracked_netns();
    ns.sh("sysctl -w net.netfilter.nf_conntrack_events=0");
    let c = ns
        .run(|| Counter::start(Path::new("/proc"), quick()))
        .unwrap();
    agree(&ns, &c, [0, 0, 0, 0]);
    flows(&ns, "10.213.0.1", "10.213.0.2", 20);
    agree(&ns, &c, [20, 20, 0, 0]);
    conntrack_d(&ns, "10.213.0.1");
    agree(&ns, &c, [0, 0, 0, 0]);
}
