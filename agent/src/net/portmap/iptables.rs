//! The `iptables` backend: Docker 20.10's per-port rules, kept to reproduce and measure what they
//! cost (every new flow walks chains whose length grows with the number of published ports).
//!
//! Per published port, exactly Docker's three rules (its userland proxy off):
//!
//! ```text
//! nat     -A <P>-D-<h> [-d HOSTIP/32] -p udp -m udp --dport HOST -m comment --comment <owner>
//!             -j DNAT --to-destination CTRIP:CTR
//! nat     -A <P>-H-<h> -s CTRIP/32 -d CTRIP/32 -p udp -m udp --dport CTR
//!             -m comment --comment <owner> -j MASQUERADE                     (hairpin)
//! filter  -A <P>-F-<h> -d CTRIP/32 ! -i BRIDGE -o BRIDGE -p udp -m udp --dport CTR
//!             -m comment --comment <owner> -j ACCEPT
//! ```
//!
//! `<P>` is the table name uppercased (`BERTH`), `<h>` 12 hex digits of an FNV-1a hash of the
//! owner. Where Docker appends every container's rules to its shared DOCKER chains, berth gives
//! each owner its own three chains, jumped to from dispatch chains by one rule commented with the
//! owner; a packet still walks one rule per published port, so the cost being reproduced is the
//! same, and `remove` deletes three jumps and three chains instead of searching 60,000 rules.
//!
//! Chains and jumps (`setup`):
//!
//! ```text
//! nat     PREROUTING  ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j <P>
//!         OUTPUT      -m addrtype --dst-type LOCAL -j <P>
//!         POSTROUTING -j <P>-POSTROUTING
//!         <P>               owner jumps to <P>-D-<h>               (dispatch, kept by setup)
//!         <P>-HAIRPIN       owner jumps to <P>-H-<h>               (dispatch, kept by setup)
//!         <P>-POSTROUTING   -s SUBNET ! -o BRIDGE -j MASQUERADE    (base, rewritten by setup)
//!                           -s 127.0.0.0/8 -o BRIDGE -m conntrack --ctstate DNAT -j MASQUERADE
//!                           -j <P>-HAIRPIN
//! filter  FORWARD (first) -j <P>-FORWARD;  INPUT (first) -j <P>-INPUT
//!         <P>-FORWARD       -o BRIDGE -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
//!                           -o BRIDGE -j <P>-ACCEPT
//!                           -i BRIDGE ! -o BRIDGE -j ACCEPT;  -i BRIDGE -o BRIDGE -j ACCEPT
//!         <P>-ACCEPT        owner jumps to <P>-F-<h>               (dispatch, kept by setup)
//!         <P>-INPUT         -i BRIDGE -d 127.0.0.0/8 -m conntrack ! --ctstate DNAT -j DROP
//! ```
//!
//! The base rules match the nft-map backend's, so the two differ only in how a port is found.
//!
//! Loading: every change is `iptables-restore --noflush` batches, one transaction per table
//! (nat, then filter; if the filter batch fails, the nat part is undone). Docker runs one
//! `iptables` command per rule, 3-4 ms each here, which is why it takes 32-40 s to publish
//! 1,000 ports (PLATFORM.md); a batch loads tens of thousands of rules in seconds. Reads parse
//! `iptables-save`. The `iptables` binaries on the PATH are used (nf_tables variant on Debian 12).

use std::{collections::BTreeSet, fmt::Write as _, net::Ipv4Addr, sync::Mutex};

use super::{
    Backend, BackendKind, Mapping, PortmapConfig, PortmapError, Proto, Publish, check_add, exec,
    validate_owner,
};

const HINT: &str = "berth's iptables backend needs iptables (`apt install iptables`)";

/// The `iptables` backend. Changes are serialised by an internal lock.
pub struct Iptables {
    config: PortmapConfig,
    lock: Mutex<()>,
}

/// Names of berth's chains for one prefix.
struct Names {
    prefix: String,
    /// nat, DNAT dispatch.
    dnat: String,
    /// nat, hairpin dispatch.
    hairpin: String,
    /// nat, base (rewritten by setup).
    postrouting: String,
    /// filter, base.
    forward: String,
    /// filter, ACCEPT dispatch.
    accept: String,
    /// filter, base.
    input: String,
}

impl Names {
    fn new(config: &PortmapConfig) -> Self {
        let p = config.chain_prefix();
        Names {
            dnat: p.clone(),
            hairpin: format!("{p}-HAIRPIN"),
            postrouting: format!("{p}-POSTROUTING"),
            forward: format!("{p}-FORWARD"),
            accept: format!("{p}-ACCEPT"),
            input: format!("{p}-INPUT"),
            prefix: p,
        }
    }

    /// The owner's (DNAT, hairpin, filter) chains.
    fn owner_chains(&self, owner: &str) -> (String, String, String) {
        let h = owner_hash(owner);
        let p = &self.prefix;
        (
            format!("{p}-D-{h}"),
            format!("{p}-H-{h}"),
            format!("{p}-F-{h}"),
        )
    }

    /// Whether `chain` is an owner chain of kind `kind` (`D`, `H` or `F`) under this prefix.
    fn is_owner_chain(&self, chain: &str, kind: char) -> bool {
        chain
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_prefix(kind))
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|h| {
                h.len() == 12
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
    }
}

/// 48 bits of FNV-1a 64 as 12 hex digits: stable across builds, short enough for chain names
/// (at most 28 bytes).
fn owner_hash(owner: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in owner.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}

/// One rule of `iptables-save` output.
#[derive(Debug, Clone)]
struct Rule {
    chain: String,
    /// Everything after `-A <chain> `, as saved (valid input for `-D <chain> `).
    spec: String,
    tokens: Vec<String>,
}

impl Rule {
    fn value_of(&self, option: &str) -> Option<&str> {
        let i = self.tokens.iter().position(|t| t == option)?;
        self.tokens.get(i + 1).map(String::as_str)
    }

    fn target(&self) -> Option<&str> {
        self.value_of("-j").or_else(|| self.value_of("-g"))
    }

    fn comment(&self) -> Option<&str> {
        self.value_of("--comment")
    }

    fn delete_line(&self) -> String {
        format!("-D {} {}", self.chain, self.spec)
    }
}

/// One table of `iptables-save -t <table>`.
#[derive(Debug, Default)]
struct Saved {
    chains: BTreeSet<String>,
    rules: Vec<Rule>,
}

impl Saved {
    fn parse(text: &str) -> Self {
        let mut saved = Saved::default();
        for line in text.lines() {
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    saved.chains.insert(name.to_owned());
                }
            } else if let Some(rest) = line.strip_prefix("-A ")
                && let Some((chain, spec)) = rest.split_once(' ')
            {
                saved.rules.push(Rule {
                    chain: chain.to_owned(),
                    spec: spec.to_owned(),
                    tokens: tokens(spec),
                });
            }
        }
        saved
    }

    fn has_chain(&self, chain: &str) -> bool {
        self.chains.contains(chain)
    }

    fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    fn jumps(&self, from: &str, to: &str) -> bool {
        self.rules_in(from).any(|r| r.target() == Some(to))
    }
}

/// Splits an iptables-save rule into words, honouring double quotes (comments may be quoted).
fn tokens(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut started = false;
    for c in spec.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
            started = true;
        } else if c.is_whitespace() && !quoted {
            if started {
                out.push(std::mem::take(&mut cur));
                started = false;
            }
        } else {
            cur.push(c);
            started = true;
        }
    }
    if started {
        out.push(cur);
    }
    out
}

impl Iptables {
    pub fn new(config: PortmapConfig) -> Self {
        Iptables {
            config,
            lock: Mutex::new(()),
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, table: &str) -> Result<Saved, PortmapError> {
        let out = exec::run("iptables-save", &["-t", table], None, HINT)?;
        Ok(Saved::parse(&out))
    }

    fn restore(&self, script: &str) -> Result<(), PortmapError> {
        exec::run("iptables-restore", &["-w", "--noflush"], Some(script), HINT).map(drop)
    }

    /// The DNAT rules in owner chains, read back as mappings.
    fn parse_mappings(&self, names: &Names, nat: &Saved) -> Result<Vec<Mapping>, PortmapError> {
        let bad = |what: &'static str, r: &Rule| PortmapError::Unparsable {
            command: "iptables-save -t nat".to_owned(),
            what,
            excerpt: format!("-A {} {}", r.chain, r.spec),
        };
        let mut out = Vec::new();
        for r in nat
            .rules
            .iter()
            .filter(|r| names.is_owner_chain(&r.chain, 'D'))
        {
            if r.target() != Some("DNAT") {
                continue;
            }
            let proto: Proto = r
                .value_of("-p")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| bad("no tcp/udp protocol", r))?;
            let host_port = r
                .value_of("--dport")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| bad("no destination port", r))?;
            let host_ip = match r.value_of("-d") {
                None => None,
                Some(d) => Some(
                    d.trim_end_matches("/32")
                        .parse()
                        .map_err(|_| bad("a destination that is not one address", r))?,
                ),
            };
            let (cip, cport) = r
                .value_of("--to-destination")
                .and_then(|d| d.split_once(':'))
                .and_then(|(ip, port)| Some((ip.parse().ok()?, port.parse().ok()?)))
                .ok_or_else(|| bad("no ADDRESS:PORT DNAT destination", r))?;
            out.push(Mapping {
                owner: r.comment().unwrap_or_default().to_owned(),
                proto,
                host_ip,
                host_port,
                container_ip: cip,
                container_port: cport,
            });
        }
        Ok(out)
    }

    /// Lines deleting `owner`'s jumps from `dispatch` chains, then flushing and deleting its
    /// `chains` (those that exist).
    fn owner_removal(saved: &Saved, owner: &str, dispatch: &[&str], chains: &[&str]) -> String {
        let mut s = String::new();
        for d in dispatch {
            for r in saved.rules_in(d) {
                let target_is_mine = r.target().is_some_and(|t| chains.contains(&t));
                if target_is_mine || r.comment() == Some(owner) {
                    _ = writeln!(s, "{}", r.delete_line());
                }
            }
        }
        for c in chains.iter().filter(|c| saved.has_chain(c)) {
            _ = writeln!(s, "-F {c}");
        }
        for c in chains.iter().filter(|c| saved.has_chain(c)) {
            _ = writeln!(s, "-X {c}");
        }
        s
    }
}

fn table_batch(table: &str, body: &str) -> String {
    format!("*{table}\n{body}COMMIT\n")
}

impl Backend for Iptables {
    fn kind(&self) -> BackendKind {
        BackendKind::Iptables
    }

    fn setup(&self) -> Result<(), PortmapError> {
        self.config.validate()?;
        let _g = self.guard();
        let n = Names::new(&self.config);
        let br = &self.config.bridge;
        let net = self.config.subnet.trunc();
        let nat = self.save("nat")?;
        let filter = self.save("filter")?;

        let mut s = String::new();
        for c in [&n.dnat, &n.hairpin] {
            if !nat.has_chain(c) {
                _ = writeln!(s, ":{c} - [0:0]");
            }
        }
        // Declaring an existing chain under --noflush flushes it: the base chain is rewritten.
        _ = writeln!(s, ":{} - [0:0]", n.postrouting);
        _ = writeln!(s, "-A {} -s {net} ! -o {br} -j MASQUERADE", n.postrouting);
        _ = writeln!(
            s,
            "-A {} -s 127.0.0.0/8 -o {br} -m conntrack --ctstate DNAT -j MASQUERADE",
            n.postrouting
        );
        _ = writeln!(s, "-A {} -j {}", n.postrouting, n.hairpin);
        let nat_jumps = [
            (
                "PREROUTING",
                &n.dnat,
                "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL ",
            ),
            ("OUTPUT", &n.dnat, "-m addrtype --dst-type LOCAL "),
            ("POSTROUTING", &n.postrouting, ""),
        ];
        for (from, to, matches) in nat_jumps {
            if !nat.jumps(from, to) {
                _ = writeln!(s, "-A {from} {matches}-j {to}");
            }
        }
        let nat_batch = table_batch("nat", &s);

        let mut s = String::new();
        if !filter.has_chain(&n.accept) {
            _ = writeln!(s, ":{} - [0:0]", n.accept);
        }
        let f = &n.forward;
        _ = writeln!(s, ":{f} - [0:0]");
        _ = writeln!(
            s,
            "-A {f} -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        _ = writeln!(s, "-A {f} -o {br} -j {}", n.accept);
        _ = writeln!(s, "-A {f} -i {br} ! -o {br} -j ACCEPT");
        _ = writeln!(s, "-A {f} -i {br} -o {br} -j ACCEPT");
        _ = writeln!(s, ":{} - [0:0]", n.input);
        _ = writeln!(
            s,
            "-A {} -i {br} -d 127.0.0.0/8 -m conntrack ! --ctstate DNAT -j DROP",
            n.input
        );
        for (from, to) in [("FORWARD", &n.forward), ("INPUT", &n.input)] {
            if !filter.jumps(from, to) {
                _ = writeln!(s, "-I {from} 1 -j {to}");
            }
        }
        let filter_batch = table_batch("filter", &s);

        self.restore(&nat_batch)?;
        self.restore(&filter_batch)
    }

    fn add(
        &self,
        owner: &str,
        container_ip: Ipv4Addr,
        publish: &[Publish],
    ) -> Result<(), PortmapError> {
        self.config.validate()?;
        let _g = self.guard();
        let n = Names::new(&self.config);
        let nat = self.save("nat")?;
        let filter = self.save("filter")?;
        for (saved, chain, table) in [
            (&nat, &n.dnat, "nat"),
            (&nat, &n.hairpin, "nat"),
            (&filter, &n.accept, "filter"),
        ] {
            if !saved.has_chain(chain) {
                return Err(PortmapError::NotSetUp {
                    backend: BackendKind::Iptables,
                    missing: format!("iptables chain {chain} in table {table}"),
                });
            }
        }
        let current = self.parse_mappings(&n, &nat)?;
        check_add(&self.config, owner, container_ip, publish, &current)?;
        if publish.is_empty() {
            return Ok(());
        }

        let (dc, hc, fc) = n.owner_chains(owner);
        let br = &self.config.bridge;
        let ports: u32 = publish.iter().map(Publish::len).sum();
        let mut nat_rules = String::with_capacity(250 * ports as usize);
        let mut filter_rules = String::with_capacity(130 * ports as usize);
        for p in publish {
            let proto = p.proto;
            let dst = p
                .host_ip
                .map(|ip| format!("-d {ip}/32 "))
                .unwrap_or_default();
            let c = format!("-m comment --comment {owner}");
            for (host, ctr) in p.pairs() {
                _ = writeln!(
                    nat_rules,
                    "-A {dc} {dst}-p {proto} -m {proto} --dport {host} {c} \
                     -j DNAT --to-destination {container_ip}:{ctr}"
                );
                _ = writeln!(
                    nat_rules,
                    "-A {hc} -s {container_ip}/32 -d {container_ip}/32 -p {proto} -m {proto} \
                     --dport {ctr} {c} -j MASQUERADE"
                );
                _ = writeln!(
                    filter_rules,
                    "-A {fc} -d {container_ip}/32 ! -i {br} -o {br} -p {proto} -m {proto} \
                     --dport {ctr} {c} -j ACCEPT"
                );
            }
        }

        let mut head = String::new();
        let new_d = !nat.has_chain(&dc);
        let new_h = !nat.has_chain(&hc);
        for (new, chain, dispatch) in [(new_d, &dc, &n.dnat), (new_h, &hc, &n.hairpin)] {
            if new {
                _ = writeln!(head, ":{chain} - [0:0]");
                _ = writeln!(
                    head,
                    "-A {dispatch} -m comment --comment {owner} -j {chain}"
                );
            }
        }
        self.restore(&table_batch("nat", &(head + &nat_rules)))?;

        let mut head = String::new();
        if !filter.has_chain(&fc) {
            _ = writeln!(head, ":{fc} - [0:0]");
            _ = writeln!(head, "-A {} -m comment --comment {owner} -j {fc}", n.accept);
        }
        if let Err(e) = self.restore(&table_batch("filter", &(head + &filter_rules))) {
            // Undo the nat half: drop chains made now, else delete the rules appended now.
            let mut undo = String::new();
            for (new, chain, dispatch) in [(new_d, &dc, &n.dnat), (new_h, &hc, &n.hairpin)] {
                if new {
                    _ = writeln!(
                        undo,
                        "-D {dispatch} -m comment --comment {owner} -j {chain}"
                    );
                    _ = writeln!(undo, "-F {chain}\n-X {chain}");
                } else {
                    for line in nat_rules.lines() {
                        if let Some(rest) = line.strip_prefix("-A ")
                            && rest.starts_with(chain.as_str())
                        {
                            _ = writeln!(undo, "-D {rest}");
                        }
                    }
                }
            }
            if let Err(undo_err) = self.restore(&table_batch("nat", &undo)) {
                tracing::error!(owner, error = %undo_err, "could not undo the nat rules of a failed add; `remove` the owner");
            }
            return Err(e);
        }
        Ok(())
    }

    fn remove(&self, owner: &str) -> Result<(), PortmapError> {
        validate_owner(owner)?;
        self.config.validate()?;
        let _g = self.guard();
        let n = Names::new(&self.config);
        let (dc, hc, fc) = n.owner_chains(owner);
        let nat = self.save("nat")?;
        let s = Self::owner_removal(&nat, owner, &[&n.dnat, &n.hairpin], &[&dc, &hc]);
        if !s.is_empty() {
            self.restore(&table_batch("nat", &s))?;
        }
        let filter = self.save("filter")?;
        let s = Self::owner_removal(&filter, owner, &[&n.accept], &[&fc]);
        if !s.is_empty() {
            self.restore(&table_batch("filter", &s))?;
        }
        Ok(())
    }

    fn owners(&self) -> Result<Vec<String>, PortmapError> {
        self.config.validate()?;
        let _g = self.guard();
        let n = Names::new(&self.config);
        let mut owners = BTreeSet::new();
        for (table, dispatch, kinds) in [
            ("nat", vec![&n.dnat, &n.hairpin], &['D', 'H'][..]),
            ("filter", vec![&n.accept], &['F'][..]),
        ] {
            let saved = self.save(table)?;
            for r in &saved.rules {
                let ours = dispatch.contains(&&r.chain)
                    || kinds.iter().any(|k| n.is_owner_chain(&r.chain, *k));
                if ours && let Some(c) = r.comment() {
                    owners.insert(c.to_owned());
                }
            }
        }
        Ok(owners.into_iter().collect())
    }

    fn mappings(&self) -> Result<Vec<Mapping>, PortmapError> {
        self.config.validate()?;
        let _g = self.guard();
        let n = Names::new(&self.config);
        let mut all = self.parse_mappings(&n, &self.save("nat")?)?;
        all.sort();
        Ok(all)
    }

    fn teardown(&self) -> Result<(), PortmapError> {
        self.config.validate()?;
        let _g = self.guard();
        let n = Names::new(&self.config);
        for (table, builtins, fixed, kinds) in [
            (
                "nat",
                &["PREROUTING", "OUTPUT", "POSTROUTING"][..],
                vec![&n.dnat, &n.hairpin, &n.postrouting],
                &['D', 'H'][..],
            ),
            (
                "filter",
                &["FORWARD", "INPUT"][..],
                vec![&n.forward, &n.accept, &n.input],
                &['F'][..],
            ),
        ] {
            let saved = self.save(table)?;
            let mine: Vec<&String> = saved
                .chains
                .iter()
                .filter(|c| fixed.contains(c) || kinds.iter().any(|k| n.is_owner_chain(c, *k)))
                .collect();
            let mut s = String::new();
            for b in builtins {
                for r in saved.rules_in(b) {
                    if r.target().is_some_and(|t| mine.iter().any(|c| *c == t)) {
                        _ = writeln!(s, "{}", r.delete_line());
                    }
                }
            }
            for c in &mine {
                _ = writeln!(s, "-F {c}");
            }
            for c in &mine {
                _ = writeln!(s, "-X {c}");
            }
            if !s.is_empty() {
                self.restore(&table_batch(table, &s))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "iptables_tests.rs"]
mod tests;
