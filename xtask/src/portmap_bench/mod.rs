//! `cargo xtask bench portmap`: CPU µs per UDP packet through port-mapping mechanisms at
//! growing numbers of published ports, measured as PLATFORM.md's "Port-mapping cost measured
//! here" was, so the numbers compare with that table.
//!
//! For each mechanism a fresh topology ([`topology`]: CLIENT -> veth -> HOST (bridge, rules)
//! -> veth -> CTR, all in namespaces of our own); for each published-port count the
//! mechanism's rules are installed in HOST (timed), a sink ([`sink`]) binds every port in CTR
//! (HOST for `host`), and for each traffic mode, after `conntrack -F` in HOST, a raw-socket
//! sender ([`sender`]) pinned to its CPU in CLIENT sends to the last published port. Cost per
//! packet = (sender's run time + ksoftirqd run time) / packets sent ([`cpu`]).
//!
//! After each case a sanity check (not a timing) that the packets took the path the row is
//! named for: HOST's conntrack table empty for `host`, filled for `host-ct`, and whatever the
//! [`PortMapper`] checks (berth's `ebpf` rows: its forward-hit counter rose by the packets sent).
//!
//! Modes: `one-way` (one 5-tuple, no reply: conntrack stays NEW/unreplied), `established`
//! (the sink answers once first), `new-flow` (a fresh source port, and after 64,512 packets a
//! fresh source address, each packet).
//!
//! API for the xtask: [`run`] with [`Args`] (clap-flattenable, defaults = the full run) for the
//! built-in mechanisms; [`run_with`] to measure other [`PortMapper`]s (berth's own backends)
//! next to or instead of them; [`Report::to_markdown`] / [`Report::to_json`]; [`selftest`] for
//! a quick functional check.

mod cpu;
mod mechanism;
mod packet;
mod report;
mod sender;
mod sink;
mod sys;
mod topology;

use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

pub use mechanism::{Kind, Mapping, Mechanism, PortMapper};
pub use report::{Cell, MechanismInfo, Report, Setup, fmt_count};

/// Traffic pattern of one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Mode {
    /// One 5-tuple, never answered.
    OneWay,
    /// One 5-tuple, answered once before the measurement.
    Established,
    /// A new 5-tuple each packet.
    NewFlow,
}

impl Mode {
    #[cfg(test)]
    pub const ALL: [Mode; 3] = [Mode::OneWay, Mode::Established, Mode::NewFlow];

    pub fn name(self) -> &'static str {
        match self {
            Mode::OneWay => "one-way",
            Mode::Established => "established",
            Mode::NewFlow => "new-flow",
        }
    }

    /// Column title, as in PLATFORM.md.
    pub fn title(self) -> &'static str {
        match self {
            Mode::OneWay => "one-way flow",
            Mode::Established => "established",
            Mode::NewFlow => "new flow per packet",
        }
    }
}

/// What to measure and how long; the defaults are the full run (a few minutes).
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Published-port counts (comma-separated), each a range starting at --first-port.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000,20000")]
    pub ports: Vec<usize>,
    /// Mechanisms in run order: host, host-ct, routed, nft-map, iptables, iptables-legacy,
    /// and ebpf (berth's backend: `cargo xtask bench portmap` only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "host,host-ct,routed,nft-map,iptables,ebpf"
    )]
    pub mechanisms: Vec<String>,
    /// Traffic modes (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "one-way,established,new-flow"
    )]
    pub modes: Vec<Mode>,
    /// Packets per case, at most.
    #[arg(long, default_value_t = 200_000)]
    pub max_packets: u64,
    /// Seconds of sending per case, at most.
    #[arg(long, default_value_t = 3.0)]
    pub max_secs: f64,
    /// Repetitions of each case; the median is reported.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// First published port.
    #[arg(long, default_value_t = 20000)]
    pub first_port: u16,
    /// UDP payload bytes.
    #[arg(long, default_value_t = 160)]
    pub payload: usize,
    /// Datagrams per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// CPU the sender is pinned to.
    #[arg(long, default_value_t = 1)]
    pub sender_cpu: usize,
    /// CPU the sink is pinned to.
    #[arg(long, default_value_t = 0)]
    pub sink_cpu: usize,
    /// Mechanism the others are compared with, and whose flatness the goal is about.
    #[arg(long, default_value = "nft-map")]
    pub reference: String,
}

impl Default for Args {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: Args,
        }
        <Wrap as clap::Parser>::parse_from(["portmap"]).args
    }
}

impl Args {
    /// Small and quick (well under 20 s): every mechanism and mode at two port counts with a
    /// few thousand packets. Proves the machinery; the numbers mean little.
    pub fn selftest() -> Self {
        Args {
            ports: vec![10, 300],
            max_packets: 5_000,
            max_secs: 0.3,
            ..Args::default()
        }
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.ports.is_empty(), "no --ports given");
        ensure!(!self.modes.is_empty(), "no --modes given");
        let most = *self.ports.iter().max().expect("non-empty");
        ensure!(
            self.ports.iter().all(|&p| p > 0)
                && usize::from(self.first_port) + most - 1 <= usize::from(u16::MAX),
            "--ports {:?} from --first-port {} do not fit in 1..=65535",
            self.ports,
            self.first_port
        );
        ensure!(self.first_port > 0, "--first-port must be > 0");
        ensure!(self.max_packets > 0, "--max-packets must be > 0");
        ensure!(
            self.max_secs > 0.0 && self.max_secs <= 60.0,
            "--max-secs must be in (0, 60]"
        );
        ensure!(self.rounds >= 1, "--rounds must be >= 1");
        ensure!(
            (1..=1400).contains(&self.payload),
            "--payload must be 1..=1400 bytes (one datagram on a 1500-byte MTU)"
        );
        ensure!((1..=1024).contains(&self.batch), "--batch must be 1..=1024");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        ensure!(
            self.sender_cpu != self.sink_cpu && self.sender_cpu < cpus && self.sink_cpu < cpus,
            "--sender-cpu {} and --sink-cpu {} must be different CPUs below {cpus}",
            self.sender_cpu,
            self.sink_cpu
        );
        Ok(())
    }

    /// Port counts ascending, duplicates removed.
    fn port_counts(&self) -> Vec<usize> {
        let mut v = self.ports.clone();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Measures `mechanisms` (built-in or any [`PortMapper`]) in order; `args.mechanisms` is
/// ignored.
pub fn run_with(args: &Args, mut mechanisms: Vec<Mechanism>) -> Result<Report> {
    args.validate()?;
    let mut names: Vec<&str> = mechanisms.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    ensure!(
        names.windows(2).all(|w| w[0] != w[1]),
        "mechanism names must be unique: {names:?}"
    );
    preflight(&mechanisms)?;
    let started = Instant::now();
    let _signals = sys::StopOnSignal::install().context("installing SIGINT/SIGTERM handlers")?;
    for name in topology::cleanup_leftovers()? {
        eprintln!("portmap bench: removed netns {name} left by a killed run");
    }
    let counts = args.port_counts();
    let ksoftirqd = cpu::Ksoftirqd::find(Path::new("/proc"))?;

    let mut cells = Vec::new();
    let mut setups = Vec::new();
    let mut infos = Vec::new();
    for mech in &mut mechanisms {
        infos.push(MechanismInfo {
            name: mech.name.clone(),
            label: mech.label.clone(),
            rules: mech.rules(),
            mapped: matches!(mech.kind, Kind::Mapped(_)),
        });
        let ctr_veth = match &mech.kind {
            Kind::Mapped(m) => m.ctr_veth(),
            _ => None,
        };
        let topo = topology::Topology::create(ctr_veth.as_deref())
            .with_context(|| format!("building the topology for {}", mech.name))?;
        // Let the previous topology's namespace teardown (a kernel worker) finish.
        std::thread::sleep(Duration::from_millis(300));
        for &count in &counts {
            measure_count(
                args,
                mech,
                &topo,
                count,
                &ksoftirqd,
                &mut cells,
                &mut setups,
            )
            .with_context(|| format!("{} with {count} published ports", mech.name))?;
        }
    }
    Ok(Report {
        machine: crate::util::machine(),
        settings: serde_json::json!({
            "max_packets": args.max_packets,
            "max_secs": args.max_secs,
            "rounds": args.rounds,
            "payload_bytes": args.payload,
            "sendmmsg_batch": args.batch,
            "sender_cpu": args.sender_cpu,
            "sink_cpu": args.sink_cpu,
            "first_port": args.first_port,
            "target_port": "the last published port",
        }),
        mechanisms: infos,
        port_counts: counts,
        modes: args.modes.clone(),
        cells,
        setups,
        reference: args.reference.clone(),
        total_secs: started.elapsed().as_secs_f64(),
    })
}

fn measure_count(
    args: &Args,
    mech: &mut Mechanism,
    topo: &topology::Topology,
    count: usize,
    ksoftirqd: &cpu::Ksoftirqd,
    cells: &mut Vec<Cell>,
    setups: &mut Vec<Setup>,
) -> Result<()> {
    let ports: Vec<u16> = (0..count).map(|i| args.first_port + i as u16).collect();
    let target = *ports.last().expect("count > 0");
    // HostConntrack's rules publish one port the bench does not aim at.
    let other = [if args.first_port > 1 {
        args.first_port - 1
    } else {
        target
            .checked_add(1)
            .context("no port is left outside the measured range")?
    }];
    let mapping = Mapping {
        host: &topo.host,
        bridge: &topo.bridge,
        uplink: &topo.uplink,
        ctr_ip: topology::CTR_IP,
        ctr_subnet: (Ipv4Addr::new(10, 251, 2, 0), topology::CTR_PREFIX),
        ports: if matches!(mech.kind, Kind::HostConntrack(_)) {
            &other
        } else {
            &ports
        },
    };
    let (sink_ns, dst) = match mech.kind {
        Kind::Host | Kind::HostConntrack(_) => (&topo.host, topology::HOST_IP),
        Kind::Routed => (&topo.ctr, topology::CTR_IP),
        Kind::Mapped(_) => (&topo.ctr, topology::HOST_IP),
    };
    let mut install_ms = None;
    if let Kind::Mapped(mapper) | Kind::HostConntrack(mapper) = &mut mech.kind {
        let t = Instant::now();
        mapper.install(&mapping).context("installing the rules")?;
        install_ms = Some(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut sink = sink::Sink::start(sink_ns, &ports, args.sink_cpu)?;
    let flow = packet::Flow {
        src: topology::CLIENT_IP,
        dst,
        sport: 45000,
        dport: target,
    };
    for &mode in &args.modes {
        let mut rounds = Vec::new();
        for _ in 0..args.rounds {
            ensure!(!sys::stop_requested(), "interrupted");
            topo.flush_conntrack()?;
            sink.begin_case(mode == Mode::Established);
            std::thread::sleep(Duration::from_millis(100));
            if mode == Mode::Established {
                sender::prime(&topo.client, flow)?;
            }
            let before = sink.received();
            let spec = sender::SendSpec {
                flow,
                mode,
                payload: args.payload,
                max_packets: args.max_packets,
                max_time: Duration::from_secs_f64(args.max_secs),
                batch: args.batch,
                cpu: args.sender_cpu,
            };
            let r = sender::send(&topo.client, spec, ksoftirqd.clone())
                .with_context(|| format!("sending, mode {}", mode.name()))?;
            ensure!(!sys::stop_requested(), "interrupted");
            // The sink drains what is queued (the sender slept 20 ms already).
            std::thread::sleep(Duration::from_millis(30));
            let received = sink.received() - before;
            ensure!(
                r.packets > 0,
                "mode {}: no packet could be sent",
                mode.name()
            );
            check_path(mech, &mapping, topo, r.packets)
                .with_context(|| format!("mode {}: the packets' path", mode.name()))?;
            let per = |ns: u64| ns as f64 / 1e3 / r.packets as f64;
            rounds.push(Cell {
                mechanism: mech.name.clone(),
                ports: count,
                mode,
                us_per_packet: per(r.sender_ns + r.softirq_ns),
                sender_us_per_packet: per(r.sender_ns),
                softirq_us_per_packet: per(r.softirq_ns),
                packets: r.packets,
                received,
                secs: r.wall.as_secs_f64(),
                sender_waited_secs: r.sender_wait_ns as f64 / 1e9,
                send_retries: r.retries,
            });
        }
        rounds.sort_by(|a, b| a.us_per_packet.total_cmp(&b.us_per_packet));
        let c = rounds.swap_remove(rounds.len() / 2);
        eprintln!(
            "portmap bench: {:<16} {:>6} ports  {:<11} {:>8} µs/packet  ({} packets, {:.1}% \
             delivered, {:.2} s, sender waited {:.2} s)",
            c.mechanism,
            count,
            mode.name(),
            report::fmt_us(c.us_per_packet),
            c.packets,
            100.0 * c.received as f64 / c.packets as f64,
            c.secs,
            c.sender_waited_secs
        );
        cells.push(c);
    }
    sink.stop()?;
    if let Kind::Mapped(mapper) | Kind::HostConntrack(mapper) = &mut mech.kind {
        let t = Instant::now();
        mapper.remove(&mapping).context("removing the rules")?;
        setups.push(Setup {
            mechanism: mech.name.clone(),
            ports: count,
            install_ms: install_ms.expect("installed above"),
            remove_ms: t.elapsed().as_secs_f64() * 1e3,
        });
    }
    Ok(())
}

/// Sanity checks after a case (not timings): host networking without conntrack left HOST's
/// conntrack table empty, with conntrack filled it; a mapper checks its own counters.
fn check_path(
    mech: &mut Mechanism,
    mapping: &Mapping<'_>,
    topo: &topology::Topology,
    sent: u64,
) -> Result<()> {
    match &mut mech.kind {
        Kind::Host => {
            let n = topo.conntrack_count()?;
            ensure!(
                n == 0,
                "{n} conntrack entries in HOST: something there uses conntrack, so `{}` does \
                 not measure host networking without it",
                mech.name
            );
        }
        Kind::HostConntrack(_) => {
            let n = topo.conntrack_count()?;
            ensure!(
                n > 0,
                "HOST's conntrack table is empty after {sent} packets: conntrack is not active \
                 there, so `{}` does not measure host networking with it",
                mech.name
            );
        }
        Kind::Routed => {}
        Kind::Mapped(mapper) => mapper.check_case(mapping, sent)?,
    }
    Ok(())
}

/// Root and the tools, before anything is created.
fn preflight(mechanisms: &[Mechanism]) -> Result<()> {
    // SAFETY: plain syscall.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the portmap bench creates network namespaces and raw sockets: run it as root"
    );
    let mut tools = vec!["ip", "bridge", "sysctl", "conntrack"];
    for m in mechanisms {
        tools.extend(m.tools());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = tools
        .into_iter()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (Debian packages iproute2, procps, conntrack, nftables, \
             iptables; `cargo xtask setup` installs them)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// [`Args::selftest`], then checks that every case sent and delivered (for mapped mechanisms
/// delivery to CTR proves the DNAT works; without it HOST would drop the datagrams).
pub fn selftest(mechanisms: Vec<Mechanism>) -> Result<Report> {
    let mut args = Args::selftest();
    args.mechanisms = mechanisms.iter().map(|m| m.name.clone()).collect();
    let report = run_with(&args, mechanisms)?;
    let expected = args.mechanisms.len() * args.port_counts().len() * args.modes.len();
    ensure!(
        report.cells.len() == expected,
        "{} cells measured, {expected} expected",
        report.cells.len()
    );
    for c in &report.cells {
        ensure!(
            c.packets > 0 && c.received > 0 && c.us_per_packet.is_finite() && c.us_per_packet > 0.0,
            "{} {} ports {}: {} sent, {} received, {} µs/packet",
            c.mechanism,
            c.ports,
            c.mode.name(),
            c.packets,
            c.received,
            c.us_per_packet
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_full_run() {
        let a = Args::default();
        assert_eq!(a.ports, vec![100, 1000, 10000, 20000]);
        assert_eq!(
            a.mechanisms,
            vec!["host", "host-ct", "routed", "nft-map", "iptables", "ebpf"]
        );
        assert_eq!(a.modes, Mode::ALL.to_vec());
        assert_eq!((a.sender_cpu, a.sink_cpu, a.payload), (1, 0, 160));
    }

    #[test]
    fn port_ranges_past_65535_are_refused() {
        let a = Args {
            ports: vec![50000],
            first_port: 20000,
            ..Args::default()
        };
        assert!(a.validate().unwrap_err().to_string().contains("do not fit"));
    }

    /// The whole machinery against the real kernel (root only; < 20 s).
    #[test]
    fn selftest_measures_every_mechanism_and_mode() {
        // SAFETY: plain syscall.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the port-mapping bench builds network namespaces: run the tests as root"
        );
        // ebpf is berth's own backend: `cargo xtask bench portmap --selftest` covers it.
        let mechanisms = Args::selftest()
            .mechanisms
            .iter()
            .filter(|n| mechanism::BUILTIN.contains(&n.as_str()))
            .map(|n| Mechanism::builtin(n))
            .collect::<Result<Vec<_>>>()
            .unwrap();
        let report = selftest(mechanisms).unwrap();
        let md = report.to_markdown();
        assert!(md.contains("| iptables |"), "{md}");
        assert!(md.contains("| host-ct | 300 | new-flow |"), "{md}");
        let list = topology::run_cmd(
            std::process::Command::new("ip").args(["netns", "list"]),
            None,
        )
        .unwrap();
        let ours = format!("{}-", topology::prefix());
        assert!(!list.contains(&ours), "namespaces left behind:\n{list}");
    }
}
