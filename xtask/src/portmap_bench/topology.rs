//! The three network namespaces of one measurement, built with iproute2:
//!
//! ```text
//! CLIENT  c0 10.251.1.2 ──veth── h0 10.251.1.1  HOST  br 10.251.2.1 ── hk ──veth── k0 10.251.2.2  CTR
//! ```
//!
//! Every link, address, route, rule and socket lives inside namespaces named
//! `bb<pid>-<seq>-{client,host,ctr}` that this process created; nothing is added to the
//! namespace the bench was started in. Static neighbour and bridge-fdb entries (fixed MACs)
//! mean no ARP, and IPv6 is disabled before any link exists, so the only traffic is the
//! bench's own (and the IGMP report HOST's bridge sends when it comes up, which stays on it). Dropping a [`Netns`] deletes the namespace and with it everything inside
//! (links, rules, conntrack entries); [`cleanup_leftovers`] deletes namespaces left by a
//! killed run.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
};

use anyhow::{Context as _, Result, ensure};

use super::sys;

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 1, 2);
/// HOST's address on the client link: the published address clients aim at.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 1, 1);
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 2, 1);
pub const CTR_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 2, 2);
pub const CTR_PREFIX: u8 = 24;
/// First source address of new-flow mode (10.251.1.16 and up, on the client link's subnet,
/// so HOST's reverse-path check accepts them).
pub const NEW_FLOW_SRC: Ipv4Addr = Ipv4Addr::new(10, 251, 1, 16);

const MAC_C0: &str = "02:bb:00:00:01:02";
const MAC_H0: &str = "02:bb:00:00:01:01";
const MAC_BR: &str = "02:bb:00:00:02:01";
const MAC_HK: &str = "02:bb:00:00:02:02";
const MAC_K0: &str = "02:bb:00:00:02:03";

/// Runs `cmd` with stdin `input`, capturing output; the error names the command and shows
/// its stderr.
pub fn run_cmd(cmd: &mut Command, input: Option<&str>) -> Result<String> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    if let Some(input) = input {
        // A writer thread: the child may fill its stdout pipe before reading all of stdin.
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output()?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("stdin writer panicked"))?
            .with_context(|| format!("writing the input of {cmd:?}"))?;
        return finish(cmd, out);
    }
    let out = child.wait_with_output()?;
    finish(cmd, out)
}

fn finish(cmd: &Command, out: std::process::Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "{cmd:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace (`ip netns add`) that this process created; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        run_cmd(Command::new("ip").args(["netns", "add", name]), None)?;
        Ok(Netns {
            name: name.to_owned(),
        })
    }

    /// A value naming a namespace that does not exist, for tests of text builders (wrap it
    /// in `ManuallyDrop`: dropping it would try to delete the namespace).
    #[cfg(test)]
    pub fn fake(name: &str) -> Self {
        Netns {
            name: name.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount setns(2) takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip netns exec NAME program ...`, to be run with [`run_cmd`].
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args` with only its network namespace switched to this one (forked from
    /// a thread inside it): unlike [`Netns::run`] (`ip netns exec`, which mounts a fresh
    /// sysfs), the program still sees the caller's mounts, e.g. the bpffs at /sys/fs/bpf.
    pub fn run_net_only(&self, program: &str, args: &[&str]) -> Result<String> {
        self.run_in(program, || run_cmd(Command::new(program).args(args), None))
    }

    /// Runs `program args` inside the namespace, feeding it `input` on stdin.
    pub fn run(&self, program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
        run_cmd(self.exec(program).args(args), input)
    }

    /// `ip -n NAME -batch -` with one iproute2 command per line.
    fn ip_batch(&self, commands: &str) -> Result<()> {
        run_cmd(
            Command::new("ip").args(["-n", &self.name, "-batch", "-"]),
            Some(commands),
        )
        .with_context(|| format!("ip batch in {}:\n{commands}", self.name))?;
        Ok(())
    }

    /// Spawns a thread that enters this namespace (only that thread), optionally pins itself
    /// to `cpu`, and runs `f`. Processes the thread forks inherit the namespace, so a backend
    /// that calls `nft` or netlink works unchanged inside `f`.
    pub fn spawn_in<T, F>(
        &self,
        what: &str,
        cpu: Option<usize>,
        f: F,
    ) -> Result<JoinHandle<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let path = self.path();
        let ns = self.name.clone();
        let what_owned = what.to_owned();
        std::thread::Builder::new()
            .name(format!("bb-{what}"))
            .spawn(move || {
                sys::enter_netns(&path)
                    .with_context(|| format!("setns into {}", path.display()))?;
                if let Some(cpu) = cpu {
                    sys::pin_to_cpu(cpu)
                        .with_context(|| format!("pinning {what_owned} to CPU {cpu}"))?;
                }
                f().with_context(|| format!("{what_owned} in netns {ns}"))
            })
            .with_context(|| format!("spawning the {what} thread"))
    }

    /// Runs `f` on a thread inside this namespace and waits for it. `f` may borrow (a scoped
    /// thread), e.g. a berth backend held by a [`super::PortMapper`]:
    /// `m.host.run_in("berth nft", || self.backend.add(&publish))`.
    pub fn run_in<T, F>(&self, what: &str, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> Result<T> + Send,
    {
        let path = self.path();
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name(format!("bb-{what}"))
                .spawn_scoped(s, || {
                    sys::enter_netns(&path)
                        .with_context(|| format!("setns into {}", path.display()))?;
                    f().with_context(|| format!("{what} in netns {}", self.name))
                })
                .with_context(|| format!("spawning the {what} thread"))?;
            join_scoped(h)
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_cmd(Command::new("ip").args(["netns", "del", &self.name]), None) {
            eprintln!("portmap bench: removing netns {}: {e:#}", self.name);
        }
    }
}

/// Joins a bench thread, turning a panic into an error.
pub fn join<T>(h: JoinHandle<Result<T>>) -> Result<T> {
    h.join().unwrap_or_else(|p| Err(panicked(p)))
}

fn join_scoped<T>(h: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    h.join().unwrap_or_else(|p| Err(panicked(p)))
}

fn panicked(p: Box<dyn std::any::Any + Send>) -> anyhow::Error {
    let msg = p
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    anyhow::anyhow!("bench thread panicked: {msg}")
}

/// CLIENT -> HOST (bridge, rules) -> CTR. Fields drop in order: all three namespaces go.
#[derive(Debug)]
pub struct Topology {
    pub client: Netns,
    pub host: Netns,
    pub ctr: Netns,
    /// The bridge in HOST that CTR's veth is attached to (Docker's `docker0`).
    pub bridge: String,
    /// HOST's veth to CLIENT.
    pub uplink: String,
}

/// Prefix of every namespace name of this process.
pub fn prefix() -> String {
    format!("bb{}", std::process::id())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// `bb<pid>-<seq>-<role>`: the shape [`is_leftover`] recognises.
fn netns_name(seq: u32, role: &str) -> String {
    format!("{}-{seq}-{role}", prefix())
}

/// A lone namespace with a fresh name, e.g. for tests (role: client, host or ctr).
#[cfg(test)]
pub fn lone_netns(role: &str) -> Result<Netns> {
    let ns = Netns::create(&netns_name(SEQ.fetch_add(1, Ordering::Relaxed), role))?;
    ns.run("ip", &["link", "set", "lo", "up"], None)?;
    Ok(ns)
}

impl Topology {
    /// `ctr_veth`: the name of HOST's veth to CTR (default `<prefix>hk`), for a mechanism
    /// that finds it by name.
    pub fn create(ctr_veth: Option<&str>) -> Result<Self> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let p = prefix();
        let ns = |role: &str| Netns::create(&netns_name(seq, role));
        let (client, host, ctr) = (ns("client")?, ns("host")?, ns("ctr")?);
        // Link names only need to be unique inside each namespace; the prefix makes them
        // recognisable in `ip -n` listings.
        let (c0, h0, br, hk, k0) = (
            format!("{p}c0"),
            format!("{p}h0"),
            format!("{p}br"),
            ctr_veth.map_or_else(|| format!("{p}hk"), str::to_owned),
            format!("{p}k0"),
        );
        for n in [&client, &host, &ctr] {
            n.run(
                "sysctl",
                &[
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
                None,
            )?;
        }
        host.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"], None)?;
        let (cn, kn) = (client.name(), ctr.name());
        host.ip_batch(&format!(
            "link set lo up\n\
             link add {h0} address {MAC_H0} type veth peer name {c0} address {MAC_C0} netns {cn}\n\
             link add {br} address {MAC_BR} type bridge\n\
             link add {hk} address {MAC_HK} type veth peer name {k0} address {MAC_K0} netns {kn}\n\
             link set {hk} master {br}\n\
             addr add {HOST_IP}/24 dev {h0}\n\
             addr add {BRIDGE_IP}/{CTR_PREFIX} dev {br}\n\
             link set {h0} up\n\
             link set {br} up\n\
             link set {hk} up\n\
             neigh replace {CLIENT_IP} lladdr {MAC_C0} dev {h0} nud permanent\n\
             neigh replace {CTR_IP} lladdr {MAC_K0} dev {br} nud permanent\n"
        ))?;
        run_cmd(
            Command::new("bridge").args([
                "-n",
                host.name(),
                "fdb",
                "replace",
                MAC_K0,
                "dev",
                &hk,
                "master",
                "static",
            ]),
            None,
        )?;
        client.ip_batch(&format!(
            "link set lo up\n\
             addr add {CLIENT_IP}/24 dev {c0}\n\
             link set {c0} up\n\
             route add default via {HOST_IP}\n\
             neigh replace {HOST_IP} lladdr {MAC_H0} dev {c0} nud permanent\n"
        ))?;
        ctr.ip_batch(&format!(
            "link set lo up\n\
             addr add {CTR_IP}/{CTR_PREFIX} dev {k0}\n\
             link set {k0} up\n\
             route add default via {BRIDGE_IP}\n\
             neigh replace {BRIDGE_IP} lladdr {MAC_BR} dev {k0} nud permanent\n"
        ))?;
        Ok(Topology {
            client,
            host,
            ctr,
            bridge: br,
            uplink: h0,
        })
    }

    /// Entries in HOST's conntrack table (0 when nothing in HOST uses conntrack: the kernel
    /// registers its hooks in a namespace only for a user such as a NAT table).
    pub fn conntrack_count(&self) -> Result<u64> {
        let out = self.host.run("conntrack", &["-C"], None)?;
        out.trim()
            .parse()
            .with_context(|| format!("`conntrack -C` printed {out:?}"))
    }

    /// Empties HOST's conntrack table (conntrack is per namespace).
    pub fn flush_conntrack(&self) -> Result<()> {
        self.host.run("conntrack", &["-F"], None)?;
        Ok(())
    }
}

/// Whether a namespace name is one of ours from a process that no longer runs the bench:
/// `bb<pid>-<seq>-<role>` with `pid` gone or no longer an xtask binary (pid reused).
pub fn is_leftover(name: &str, own_pid: u32, comm_of: impl Fn(u32) -> Option<String>) -> bool {
    let Some(rest) = name.strip_prefix("bb") else {
        return false;
    };
    let mut parts = rest.splitn(3, '-');
    let (Some(pid), Some(seq), Some(role)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if seq.parse::<u32>().is_err() || !["client", "host", "ctr"].contains(&role) || pid == own_pid {
        return false;
    }
    comm_of(pid).is_none_or(|c| !c.starts_with("xtask"))
}

/// Deletes namespaces left by a bench process that was killed (SIGKILL skips the guards).
/// Returns their names.
pub fn cleanup_leftovers() -> Result<Vec<String>> {
    let list = run_cmd(Command::new("ip").args(["netns", "list"]), None)?;
    let own = std::process::id();
    let comm_of = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    let mut removed = Vec::new();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if is_leftover(name, own, comm_of) {
            run_cmd(Command::new("ip").args(["netns", "del", name]), None)?;
            removed.push(name.to_owned());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_from_dead_or_foreign_pids_are_leftovers() {
        let comm = |pid: u32| match pid {
            100 => Some("xtask\n".to_owned()),
            200 => Some("xtask-0123abcd\n".to_owned()),
            300 => Some("bash\n".to_owned()),
            _ => None,
        };
        assert!(is_leftover("bb999-0-host", 1, comm), "dead pid");
        assert!(
            is_leftover("bb300-2-ctr", 1, comm),
            "pid reused by another program"
        );
        assert!(
            !is_leftover("bb100-0-host", 1, comm),
            "another bench still running"
        );
        assert!(
            !is_leftover("bb200-1-client", 1, comm),
            "a test binary still running"
        );
        assert!(!is_leftover("bb1-0-host", 1, comm), "our own");
        assert!(!is_leftover("berth0", 1, comm), "not ours");
        assert!(!is_leftover("bb999-host", 1, comm), "no sequence number");
        assert!(!is_leftover("bb999-0-other", 1, comm), "unknown role");
        assert!(!is_leftover("bbx-0-host", 1, comm), "no pid");
    }
}
