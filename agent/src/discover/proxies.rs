//! Userland port-mapping proxies: Docker's `docker-proxy` (one process per published port,
//! protocol and address family when `userland-proxy` is on, the default) and its kin. Their
//! CPU and memory are what the operator pays for published ports on top of the kernel's NAT;
//! each docker-proxy's command line names the container address it forwards to
//! (`-proto udp -host-ip 0.0.0.0 -host-port 40000 -container-ip 172.17.0.2 -container-port
//! 40000`), which attributes it to that container.
//!
//! Cost per scan: one `readdir` of procfs; a process seen for the first time costs a read of
//! `comm` (once more at the next scan, in case it was caught between fork and exec), and for a
//! proxy of `stat` (CPU, RSS, start time) and `cmdline` (its target, read once per process).
//! What is known is read again on a slower cadence ([`ScanPeriods`]):
//! procfs reads cost 15-30 µs each on a small VM, and a 1,000-port mapping brings 2,000
//! proxies. The scanner takes the procfs root (`discovery.proc`) so tests can use fixtures.

use std::{
    collections::HashMap,
    fs,
    io::Read as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use procfs::FromRead as _;

pub use crate::model::host::ProxyStats;
use crate::model::{Proto, Publish, group_bindings};

/// Process names of known userland proxies.
pub const PROXY_NAMES: [&str; 3] = ["docker-proxy", "rootlessport", "slirp4netns"];

/// Where one docker-proxy forwards, from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTarget {
    /// `None` for a protocol berth does not publish (sctp).
    pub proto: Option<Proto>,
    /// `None` when absent (docker-proxy then listens on every address).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_ip: IpAddr,
    pub container_port: u16,
}

/// Parses docker-proxy's arguments (without argv\[0\]), as Go's `flag` package reads them:
/// `-name value`, `-name=value`, with one or two dashes; flags it does not know are skipped.
/// `None` without a container address and both ports.
pub fn parse_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Option<ProxyTarget> {
    let (mut proto, mut host_ip, mut host_port) = (None, None, None);
    let (mut container_ip, mut container_port) = (None, None);
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (flag, None),
        };
        let takes_value = matches!(
            name,
            "proto" | "host-ip" | "host-port" | "container-ip" | "container-port"
        );
        if !takes_value {
            continue;
        }
        let Some(value) = inline.or_else(|| it.next()) else {
            break;
        };
        match name {
            "proto" => proto = Some(value),
            "host-ip" => host_ip = value.parse::<IpAddr>().ok(),
            "host-port" => host_port = value.parse::<u16>().ok(),
            "container-ip" => container_ip = value.parse::<IpAddr>().ok(),
            _ => container_port = value.parse::<u16>().ok(),
        }
    }
    Some(ProxyTarget {
        // docker-proxy's default protocol is tcp.
        proto: proto.map_or(Some(Proto::Tcp), |p| p.parse::<Proto>().ok()),
        host_ip,
        host_port: host_port.filter(|p| *p != 0)?,
        container_ip: container_ip?,
        container_port: container_port.filter(|p| *p != 0)?,
    })
}

/// What one scan found: every proxy summed, and the docker-proxies per IPv4 container address.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyScan {
    pub total: ProxyStats,
    pub by_ip: HashMap<Ipv4Addr, ProxyStats>,
    /// The mappings behind `by_ip`, in no particular order.
    pub targets: HashMap<Ipv4Addr, Vec<ProxyTarget>>,
}

impl ProxyScan {
    /// The ranges the proxies to `ip` publish, merged: consecutive host ports mapped to
    /// consecutive container ports on the same protocol and IPv4 host address become one
    /// range. IPv6 listeners (Docker's `-host-ip ::` twin of each mapping) are left out.
    pub fn publish_of(&self, ip: Ipv4Addr) -> Vec<Publish> {
        let bindings = self.targets.get(&ip).into_iter().flatten().filter_map(|t| {
            let host_ip = match t.host_ip {
                None => None,
                Some(IpAddr::V4(a)) if a.is_unspecified() => None,
                Some(IpAddr::V4(a)) => Some(a),
                Some(IpAddr::V6(_)) => return None,
            };
            Some((t.proto?, host_ip, t.host_port, t.container_port))
        });
        group_bindings(bindings)
    }
}

/// How often the scanner reads again what it already knows: the set of proxies is exact every
/// scan (a pid that is gone is gone), but a proxy's CPU and memory, and whether a known
/// non-proxy became one, are read on a slower, spread-out cadence: one `stat` per proxy per
/// scan would cost tens of milliseconds per tick with the thousands of docker-proxies a
/// large port range brings.
#[derive(Debug, Clone, Copy)]
pub struct ScanPeriods {
    /// A proxy's CPU and RSS are read again after at least this long (up to twice, spread by
    /// pid)...
    pub stats: Duration,
    /// ...at most this many per scan, the stalest first.
    pub stats_budget: usize,
    /// A process that is not a proxy has its name read again after at least this long (up to
    /// twice, spread by pid): an `exec` into docker-proxy keeps the pid. Engines fork and
    /// exec their proxies at once (caught by the second look at a new pid), so this only
    /// catches the rare late exec; with hundreds of processes on a host each recheck is a
    /// procfs read, so a minute keeps them at a few per second.
    pub recheck: Duration,
}

impl Default for ScanPeriods {
    fn default() -> Self {
        Self {
            stats: Duration::from_secs(5),
            stats_budget: 100,
            recheck: Duration::from_secs(60),
        }
    }
}

/// What the scanner knows about one pid.
enum Known {
    /// Not a proxy as of `next` minus the recheck period.
    Other {
        next: Instant,
    },
    Proxy(Proxy),
}

struct Proxy {
    /// Start time (clock ticks since boot): a reused pid is another process.
    start: u64,
    target: Option<ProxyTarget>,
    stats: ProxyStats,
    /// When its stats are read again.
    next: Instant,
}

/// `base` stretched by up to 15/16 more, by pid, so reads spread over time.
fn spread(now: Instant, base: Duration, pid: u32) -> Instant {
    now + base + base * (pid % 16) / 16
}

/// Scans procfs for userland proxies, keeping what it learnt about each process.
pub struct ProxyScanner {
    proc: PathBuf,
    known: HashMap<u32, Known>,
    periods: ScanPeriods,
    ticks_per_second: f64,
    page_size: u64,
}

impl ProxyScanner {
    /// A scanner of `proc` (normally `/proc`, or the host's procfs mounted elsewhere).
    pub fn new(proc: impl Into<PathBuf>) -> Self {
        Self::with_periods(proc, ScanPeriods::default())
    }

    pub fn with_periods(proc: impl Into<PathBuf>, periods: ScanPeriods) -> Self {
        Self {
            proc: proc.into(),
            known: HashMap::new(),
            periods,
            ticks_per_second: procfs::ticks_per_second().max(1) as f64,
            page_size: procfs::page_size().max(1),
        }
    }

    /// Every proxy process now, with its CPU and memory, attributed to the container address
    /// it forwards to. An unreadable procfs gives an empty scan.
    pub fn scan(&mut self) -> ProxyScan {
        let now = Instant::now();
        let Ok(entries) = fs::read_dir(&self.proc) else {
            self.known.clear();
            return ProxyScan::default();
        };
        let pids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .collect();
        let mut known: HashMap<u32, Known> = HashMap::with_capacity(pids.len());
        let mut path = self.proc.clone();
        let mut buf = Vec::with_capacity(512);
        // Proxies whose stats are due, read below within the budget, stalest first.
        let mut due: Vec<(Instant, u32)> = Vec::new();
        for pid in pids {
            path.push(pid.to_string());
            let entry = match self.known.remove(&pid) {
                Some(Known::Other { next }) if next > now => Some(Known::Other { next }),
                Some(Known::Proxy(p)) => {
                    if p.next <= now {
                        due.push((p.next, pid));
                    }
                    Some(Known::Proxy(p))
                }
                seen => self.identify(&mut path, pid, now, &mut buf, seen.is_none()),
            };
            path.pop();
            if let Some(e) = entry {
                known.insert(pid, e);
            }
        }
        due.sort_unstable();
        for (_, pid) in due.into_iter().take(self.periods.stats_budget) {
            path.push(pid.to_string());
            match self.read_stat(&mut path, &mut buf) {
                Some((start, stats)) => {
                    if let Some(Known::Proxy(p)) = known.get_mut(&pid) {
                        if p.start == start {
                            p.stats = stats;
                            p.next = spread(now, self.periods.stats, pid);
                        } else {
                            // Another process under the same pid: find out anew.
                            known.remove(&pid);
                            if let Some(e) = self.identify(&mut path, pid, now, &mut buf, true) {
                                known.insert(pid, e);
                            }
                        }
                    }
                }
                None => {
                    known.remove(&pid);
                }
            }
            path.pop();
        }
        self.known = known;
        let mut out = ProxyScan::default();
        for p in self.known.values().filter_map(|k| match k {
            Known::Proxy(p) => Some(p),
            Known::Other { .. } => None,
        }) {
            add(&mut out.total, &p.stats);
            if let Some(t) = &p.target
                && let IpAddr::V4(ip) = t.container_ip
            {
                add(out.by_ip.entry(ip).or_default(), &p.stats);
                out.targets.entry(ip).or_default().push(t.clone());
            }
        }
        out
    }

    /// What the process at `dir` (`<proc>/<pid>`) is: its name first, then for a proxy its
    /// stats and command line; `None` when it is gone, or not readable whole yet.
    ///
    /// A process met for the first time (`new`) may be caught between its parent's fork and
    /// its exec (dockerd's name, the exec into docker-proxy a moment later): a non-proxy is
    /// named again at the next scan before the slow cadence applies (one more read per new
    /// process). A proxy caught inside its exec (the new name, the command line not set up
    /// yet: empty) is left for the next scan rather than kept without its target.
    fn identify(
        &self,
        dir: &mut PathBuf,
        pid: u32,
        now: Instant,
        buf: &mut Vec<u8>,
        new: bool,
    ) -> Option<Known> {
        dir.push("comm");
        let comm = read_into(dir, buf).ok().map(|b| {
            let name = String::from_utf8_lossy(b);
            PROXY_NAMES.contains(&name.trim_end())
        });
        dir.pop();
        if !comm? {
            let next = if new {
                now
            } else {
                spread(now, self.periods.recheck, pid)
            };
            return Some(Known::Other { next });
        }
        let (start, stats) = self.read_stat(dir, buf)?;
        dir.push("cmdline");
        let cmdline = read_into(dir, buf).ok().filter(|b| !b.is_empty());
        let target = cmdline.and_then(|b| {
            let args: Vec<&str> = b
                .split(|c| *c == 0)
                .skip(1)
                .filter_map(|a| std::str::from_utf8(a).ok())
                .collect();
            parse_args(args)
        });
        dir.pop();
        cmdline?;
        Some(Known::Proxy(Proxy {
            start,
            target,
            stats,
            next: spread(now, self.periods.stats, pid),
        }))
    }

    /// Start time and stats from `<dir>/stat`, if it is still a proxy.
    fn read_stat(&self, dir: &mut PathBuf, buf: &mut Vec<u8>) -> Option<(u64, ProxyStats)> {
        dir.push("stat");
        let stat = read_into(dir, buf)
            .ok()
            .and_then(|b| procfs::process::Stat::from_read(b).ok());
        dir.pop();
        let stat = stat.filter(|s| PROXY_NAMES.contains(&s.comm.as_str()))?;
        Some((
            stat.starttime,
            ProxyStats {
                processes: 1,
                rss_bytes: stat.rss * self.page_size,
                cpu_seconds: (stat.utime + stat.stime) as f64 / self.ticks_per_second,
            },
        ))
    }
}

/// Reads the whole file at `path` into `buf` (reused across calls).
fn read_into<'b>(path: &Path, buf: &'b mut Vec<u8>) -> std::io::Result<&'b [u8]> {
    buf.clear();
    fs::File::open(path)?.read_to_end(buf)?;
    Ok(buf.as_slice())
}

fn add(to: &mut ProxyStats, s: &ProxyStats) {
    to.processes += s.processes;
    to.rss_bytes += s.rss_bytes;
    to.cpu_seconds += s.cpu_seconds;
}

#[cfg(test)]
mod tests;
