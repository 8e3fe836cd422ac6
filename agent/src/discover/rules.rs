//! Per-port firewall rules of other engines' containers: how many iptables rules point at each
//! container address, in every table, from both iptables-nft and iptables-legacy. Docker
//! writes, per published port, a nat DNAT (`--to-destination IP:PORT`), a hairpin MASQUERADE
//! in nat POSTROUTING (`-s IP/32 -d IP/32`) and a filter ACCEPT in DOCKER (`-d IP/32`); Docker
//! 28 adds a raw-table `-d IP/32 ! -i BRIDGE -j DROP`. A rule counts once for an address it
//! names as its source or destination (a single address, `/32`) or as its DNAT target.
//!
//! Reading a ruleset of thousands of rules (`iptables-nft-save`, `iptables-legacy-save`) takes
//! tens of milliseconds, far more than a collection tick may: a [`RuleWatcher`] thread reads
//! them off the tick, when the rulesets changed (a cheap fingerprint polled every second, see
//! [`generation`]), when the set of container addresses changed, and at least every
//! [`WatchTimes::max_age`]; the `rules` collector takes its latest count. Nothing is read while
//! no other engine's container has an address. The counts are of the network namespace the
//! watcher thread was started in (the agent's): the tools run as its children.

pub mod generation;

use std::{
    collections::{BTreeSet, HashMap},
    io::Read as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing::{debug, warn};

use self::generation::Generation;

/// Why one ruleset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{program} not found in PATH or the sbin directories")]
    Missing { program: String },
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} exited with {status}: {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{program} did not finish within {seconds} s")]
    Timeout { program: String, seconds: u64 },
}

/// One ruleset reader: a name (`iptables-nft`) and the program that dumps it.
#[derive(Debug, Clone)]
pub struct Ruleset {
    pub name: &'static str,
    pub program: PathBuf,
}

/// Both iptables backends, as Debian and most distributions name their dump tools.
pub fn default_rulesets() -> Vec<Ruleset> {
    vec![
        Ruleset {
            name: "iptables-nft",
            program: "iptables-nft-save".into(),
        },
        Ruleset {
            name: "iptables-legacy",
            program: "iptables-legacy-save".into(),
        },
    ]
}

/// Adds to `into` the rules of an `iptables-save` dump per address they point at; returns how
/// many rules the dump holds.
pub fn count_rules(dump: &str, into: &mut HashMap<Ipv4Addr, u64>) -> u64 {
    let mut rules = 0;
    let mut ips: Vec<Ipv4Addr> = Vec::with_capacity(4);
    for line in dump.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        rules += 1;
        ips.clear();
        let mut words = Words(rule);
        while let Some(w) = words.next() {
            let ip = match w.as_ref() {
                "-s" | "-d" => words.next().and_then(|v| single_address(&v)),
                "--to-destination" => words.next().and_then(|v| dnat_address(&v)),
                _ => None,
            };
            if let Some(ip) = ip
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
        for ip in &ips {
            *into.entry(*ip).or_default() += 1;
        }
    }
    rules
}

/// `10.0.0.2`, `10.0.0.2/32` or `10.0.0.2/255.255.255.255`: one address; a wider mask is a
/// network, not a container's address.
fn single_address(v: &str) -> Option<Ipv4Addr> {
    let (ip, mask) = v.split_once('/').unwrap_or((v, "32"));
    matches!(mask, "32" | "255.255.255.255")
        .then(|| ip.parse().ok())
        .flatten()
}

/// The address of a DNAT target `IP[-IP][:PORT[-PORT]]` when it is one address.
fn dnat_address(v: &str) -> Option<Ipv4Addr> {
    let ips = v.split_once(':').map_or(v, |(ip, _)| ip);
    match ips.split_once('-') {
        Some((a, b)) if a == b => a.parse().ok(),
        Some(_) => None,
        None => ips.parse().ok(),
    }
}

/// The words of an `iptables-save` rule: split on spaces, `"..."` quoting with `\"` escapes
/// (comments and other strings holding spaces).
struct Words<'a>(&'a str);

impl<'a> Iterator for Words<'a> {
    type Item = std::borrow::Cow<'a, str>;

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.0.trim_start();
        if s.is_empty() {
            self.0 = s;
            return None;
        }
        if let Some(rest) = s.strip_prefix('"') {
            let mut word = String::new();
            let mut chars = rest.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            word.push(n);
                        }
                    }
                    '"' => {
                        self.0 = &rest[i + 1..];
                        return Some(word.into());
                    }
                    c => word.push(c),
                }
            }
            self.0 = "";
            return Some(word.into());
        }
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        self.0 = &s[end..];
        Some(s[..end].into())
    }
}

/// `program` as given when it holds a `/`, else the first of PATH and the sbin directories
/// (an agent started by an init system may have a short PATH) that has it.
fn resolve(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Longest a dump may take before it is abandoned (and the tool killed).
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The dump of one ruleset, from its tool run as a child of the calling thread (so in its
/// network namespace).
pub fn read_ruleset(program: &Path) -> Result<String, RulesError> {
    let name = program.display().to_string();
    let path = resolve(program).ok_or_else(|| RulesError::Missing {
        program: name.clone(),
    })?;
    let mut child = Command::new(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RulesError::Spawn {
            program: name.clone(),
            source,
        })?;
    // Read both pipes on their own threads, so a full pipe never blocks the tool.
    let pipe = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = pipe(child.stdout.take().map(|s| Box::new(s) as _));
    let err = pipe(child.stderr.take().map(|s| Box::new(s) as _));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < READ_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RulesError::Timeout {
                    program: name,
                    seconds: READ_TIMEOUT.as_secs(),
                });
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        return Err(RulesError::Failed {
            program: name,
            status,
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// One reading of every ruleset.
#[derive(Debug, Clone, Default)]
pub struct RuleCounts {
    /// Rules per address they point at, every ruleset and table together.
    pub by_ip: HashMap<Ipv4Addr, u64>,
    /// The container addresses known when the reading began: an address not among them may
    /// have rules this reading did not look for yet.
    pub addresses: BTreeSet<Ipv4Addr>,
    /// Rules read, of any address.
    pub rules: u64,
    /// The rulesets read (`iptables-nft`, `iptables-legacy`).
    pub read: Vec<&'static str>,
    /// Why a ruleset could not be read.
    pub errors: Vec<String>,
    pub took: Duration,
}

impl RuleCounts {
    /// Reads every ruleset now, in the calling thread's network namespace.
    pub fn read(rulesets: &[Ruleset], addresses: BTreeSet<Ipv4Addr>) -> Self {
        let started = Instant::now();
        let mut out = RuleCounts {
            addresses,
            ..Default::default()
        };
        for r in rulesets {
            match read_ruleset(&r.program) {
                Ok(dump) => {
                    out.rules += count_rules(&dump, &mut out.by_ip);
                    out.read.push(r.name);
                }
                // A host with one backend only: nothing to count in the other.
                Err(RulesError::Missing { .. }) => {}
                Err(e) => out.errors.push(e.to_string()),
            }
        }
        if out.read.is_empty() && out.errors.is_empty() {
            out.errors.push(format!(
                "none of {} is installed",
                rulesets
                    .iter()
                    .map(|r| r.program.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.took = started.elapsed();
        out
    }

    /// Rules pointing at `ip`; `None` when no ruleset could be read or `ip` was not a known
    /// container address when the reading began.
    pub fn of(&self, ip: Ipv4Addr) -> Option<u64> {
        (!self.read.is_empty() && self.addresses.contains(&ip))
            .then(|| self.by_ip.get(&ip).copied().unwrap_or(0))
    }
}

/// When the watcher reads the rulesets.
#[derive(Debug, Clone, Copy)]
pub struct WatchTimes {
    /// How often the fingerprint is checked (and a changed address set is noticed at the
    /// latest).
    pub poll: Duration,
    /// The shortest time between two readings (a ruleset being rewritten port by port is read
    /// again at this pace, not after every rule).
    pub min_gap: Duration,
    /// The longest a reading is kept when the fingerprint works.
    pub max_age: Duration,
    /// The longest a reading is kept when the fingerprint cannot be read.
    pub blind_max_age: Duration,
}

impl Default for WatchTimes {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            min_gap: Duration::from_secs(1),
            max_age: Duration::from_secs(60),
            blind_max_age: Duration::from_secs(10),
        }
    }
}

#[derive(Default)]
struct State {
    addresses: BTreeSet<Ipv4Addr>,
    /// The address set changed since the last reading began.
    dirty: bool,
    stop: bool,
    latest: Option<Arc<RuleCounts>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// A thread that keeps a recent [`RuleCounts`] of its network namespace; stopped on drop.
pub struct RuleWatcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl RuleWatcher {
    /// Starts the thread in the calling thread's network namespace.
    pub fn start(rulesets: Vec<Ruleset>, times: WatchTimes) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("berth-rules".into())
            .spawn(move || watch(&s, &rulesets, times))
            .map_err(|e| warn!(error = %e, "cannot start the rule watcher"))
            .ok();
        Self { shared, thread }
    }

    /// The container addresses whose rules matter now; a change wakes the thread.
    pub fn set_addresses(&self, addresses: BTreeSet<Ipv4Addr>) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.addresses != addresses {
            st.addresses = addresses;
            st.dirty = true;
            self.shared.wake.notify_one();
        }
    }

    /// The latest reading, if one finished.
    pub fn latest(&self) -> Option<Arc<RuleCounts>> {
        let st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.latest.clone()
    }
}

impl Drop for RuleWatcher {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.stop = true;
            self.shared.wake.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(shared: &Shared, rulesets: &[Ruleset], times: WatchTimes) {
    let mut last: Option<(Instant, Generation)> = None;
    // Logged once until they change, not at every reading.
    let mut last_errors: Vec<String> = Vec::new();
    loop {
        let (addresses, dirty) = {
            let st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let (mut st, _) = shared
                .wake
                .wait_timeout_while(st, times.poll, |st| !st.stop && !st.dirty)
                .unwrap_or_else(|e| e.into_inner());
            if st.stop {
                return;
            }
            if st.addresses.is_empty() {
                // No container to count for: keep nothing, read nothing.
                st.dirty = false;
                st.latest = None;
                last = None;
                continue;
            }
            (st.addresses.clone(), st.dirty)
        };
        let generation = Generation::current();
        let due = match &last {
            None => true,
            Some((at, before)) => {
                let age = at.elapsed();
                // An incomplete fingerprint tells nothing: read on the shorter period instead.
                let moved = generation.is_complete() && *before != generation;
                let max_age = if generation.is_complete() {
                    times.max_age
                } else {
                    times.blind_max_age
                };
                ((dirty || moved) && age >= times.min_gap) || age >= max_age
            }
        };
        if !due {
            if dirty {
                // Too soon after the last reading: wait out the gap, then read.
                std::thread::sleep(times.min_gap.min(times.poll));
            }
            continue;
        }
        {
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.dirty = false;
        }
        let counts = RuleCounts::read(rulesets, addresses);
        debug!(
            rules = counts.rules,
            addresses = counts.addresses.len(),
            took_ms = counts.took.as_millis() as u64,
            read = ?counts.read,
            "rulesets read"
        );
        if counts.errors != last_errors {
            for e in &counts.errors {
                warn!(error = %e, "ruleset not read");
            }
            last_errors = counts.errors.clone();
        }
        last = Some((Instant::now(), generation));
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.latest = Some(Arc::new(counts));
    }
}

#[cfg(test)]
mod tests;
