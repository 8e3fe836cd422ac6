//! Port-mapping mechanisms under test and the pluggable rule installer.
//!
//! Built in: `host` (sink in HOST, no rules, so no conntrack there either), `host-ct` (sink in
//! HOST with an nft NAT table present for other ports, so conntrack tracks the flows, as on a
//! real host where NAT rules exist), `routed` (client aims at the container's address
//! through HOST, no NAT), `nft-map` (one nft table, DNAT through one
//! `inet_proto . inet_service : ipv4_addr . inet_service` map), `iptables` and
//! `iptables-legacy` (Docker 20.10's three rules per port, through `iptables-restore` or
//! `iptables-legacy-restore`). Anything else, berth's own backends in particular, plugs in as
//! a [`PortMapper`].

use std::{fmt::Write as _, net::Ipv4Addr};

use anyhow::{Result, bail};

use super::topology::Netns;

/// What a [`PortMapper`] must publish: every port in `ports` on HOST, protocol UDP, to the
/// same port on `ctr_ip`.
pub struct Mapping<'a> {
    /// HOST's namespace: rules go there. Use [`Netns::run`] to run a tool inside it, or
    /// [`Netns::run_in`] to run Rust code (netlink, a berth backend) on a thread inside it.
    pub host: &'a Netns,
    /// The bridge CTR hangs off (Docker's `docker0`).
    pub bridge: &'a str,
    /// HOST's veth to CLIENT (the uplink clients come in through).
    pub uplink: &'a str,
    pub ctr_ip: Ipv4Addr,
    /// CTR's subnet, for masquerade rules.
    pub ctr_subnet: (Ipv4Addr, u8),
    /// Host port == container port. The bench aims at the last one: for per-port rule lists,
    /// the last rule is the worst case.
    pub ports: &'a [u16],
}

/// Installs and removes the port-mapping rules of one mechanism in HOST.
pub trait PortMapper: Send {
    /// Publishes `m.ports`. Timed: this is the mechanism's setup cost.
    fn install(&mut self, m: &Mapping<'_>) -> Result<()>;
    /// Removes what `install` added (the namespace is deleted at the end anyway). Timed.
    fn remove(&mut self, m: &Mapping<'_>) -> Result<()>;
    /// Short rule count for the report, e.g. "3 per port".
    fn rules(&self) -> String;
    /// The name HOST's veth to CTR must have (a backend that finds a container's veth by its
    /// name); `None`: any.
    fn ctr_veth(&self) -> Option<String> {
        None
    }
    /// Called after each case with the packets the case sent: a sanity check that they took
    /// the path this mechanism stands for (a counter of its own, say), never a timing.
    fn check_case(&mut self, _m: &Mapping<'_>, _sent: u64) -> Result<()> {
        Ok(())
    }
}

/// Where the sink listens and where the client aims.
pub enum Kind {
    /// Sink in HOST (host networking), client aims at HOST's address; no rules, so no
    /// conntrack in HOST (the bench checks its table stays empty).
    Host,
    /// As [`Kind::Host`], with the mapper's rules installed for a port the bench does not aim
    /// at (its [`Mapping::ports`] is that one port): conntrack is active in HOST and tracks the
    /// measured flows too (the bench checks its table fills).
    HostConntrack(Box<dyn PortMapper>),
    /// Sink in CTR, client aims at CTR's address, HOST only routes; no rules, no NAT.
    Routed,
    /// Sink in CTR, client aims at HOST's address, the mapper's rules translate.
    Mapped(Box<dyn PortMapper>),
}

pub struct Mechanism {
    /// Name in the report ("nft-map", "iptables", "berth-nft", ...).
    pub name: String,
    /// Longer label for the markdown table.
    pub label: String,
    pub kind: Kind,
}

/// Names of the built-in mechanisms, for `--mechanisms`.
pub const BUILTIN: &[&str] = &[
    "host",
    "host-ct",
    "routed",
    "nft-map",
    "iptables",
    "iptables-legacy",
];

impl Mechanism {
    pub fn mapped(name: &str, label: &str, mapper: Box<dyn PortMapper>) -> Self {
        Mechanism {
            name: name.to_owned(),
            label: label.to_owned(),
            kind: Kind::Mapped(mapper),
        }
    }

    pub fn builtin(name: &str) -> Result<Self> {
        let plain = |label: &str, kind| Mechanism {
            name: name.to_owned(),
            label: label.to_owned(),
            kind,
        };
        Ok(match name {
            "host" => plain("host netns, no conntrack", Kind::Host),
            "host-ct" => plain(
                "host netns, conntrack active (an nft NAT table for another port)",
                Kind::HostConntrack(Box::new(NftMap)),
            ),
            "routed" => plain("routed to container, no NAT", Kind::Routed),
            "nft-map" => Mechanism::mapped(
                name,
                "one nft `dnat ip to meta l4proto . th dport map` rule",
                Box::new(NftMap),
            ),
            "iptables" => Mechanism::mapped(
                name,
                "iptables-nft, Docker's rules",
                Box::new(DockerIptables {
                    restore: "iptables-restore",
                }),
            ),
            "iptables-legacy" => Mechanism::mapped(
                name,
                "iptables-legacy, Docker's rules",
                Box::new(DockerIptables {
                    restore: "iptables-legacy-restore",
                }),
            ),
            other => bail!(
                "unknown port-mapping mechanism {other:?}; known: {}",
                BUILTIN.join(", ")
            ),
        })
    }

    /// Programs this mechanism runs inside HOST (for the pre-flight check).
    pub fn tools(&self) -> &'static [&'static str] {
        match self.name.as_str() {
            "nft-map" | "host-ct" => &["nft"],
            "iptables" => &["iptables-restore"],
            "iptables-legacy" => &["iptables-legacy-restore"],
            _ => &[],
        }
    }

    pub fn rules(&self) -> String {
        match &self.kind {
            Kind::Host | Kind::Routed => "0".to_owned(),
            Kind::HostConntrack(m) => format!("{} (other port)", m.rules()),
            Kind::Mapped(m) => m.rules(),
        }
    }
}

/// nft table name in HOST (HOST is the bench's own namespace; the name only has to be
/// recognisable).
const NFT_TABLE: &str = "bb_portmap";

/// One nft table: DNAT through a (proto . port) -> (addr . port) map; flat per-packet cost.
pub struct NftMap;

/// The nft script that publishes `m.ports` (nft text: nft 1.0.6 cannot load its own JSON for
/// an `ipv4_addr . inet_service` map, see PLATFORM.md).
pub fn nft_map_script(m: &Mapping<'_>) -> String {
    let (br, ctr) = (m.bridge, m.ctr_ip);
    let (net, len) = m.ctr_subnet;
    let mut elements = String::with_capacity(m.ports.len() * 32);
    for (i, p) in m.ports.iter().enumerate() {
        if i > 0 {
            elements.push_str(",\n");
        }
        let _ = write!(elements, "            udp . {p} : {ctr} . {p}");
    }
    format!(
        "table ip {NFT_TABLE} {{\n\
         \x20   map ports {{\n\
         \x20       type inet_proto . inet_service : ipv4_addr . inet_service\n\
         \x20       elements = {{\n{elements}\n        }}\n\
         \x20   }}\n\
         \x20   chain prerouting {{\n\
         \x20       type nat hook prerouting priority dstnat; policy accept;\n\
         \x20       fib daddr type local dnat ip to meta l4proto . th dport map @ports\n\
         \x20   }}\n\
         \x20   chain output {{\n\
         \x20       type nat hook output priority -100; policy accept;\n\
         \x20       fib daddr type local dnat ip to meta l4proto . th dport map @ports\n\
         \x20   }}\n\
         \x20   chain postrouting {{\n\
         \x20       type nat hook postrouting priority srcnat; policy accept;\n\
         \x20       ip saddr {net}/{len} oifname != \"{br}\" masquerade\n\
         \x20       iifname \"{br}\" oifname \"{br}\" ct status dnat masquerade\n\
         \x20   }}\n\
         \x20   chain forward {{\n\
         \x20       type filter hook forward priority filter; policy drop;\n\
         \x20       ct state established,related accept\n\
         \x20       oifname \"{br}\" ct status dnat accept\n\
         \x20       iifname \"{br}\" accept\n\
         \x20   }}\n\
         }}\n"
    )
}

impl PortMapper for NftMap {
    fn install(&mut self, m: &Mapping<'_>) -> Result<()> {
        m.host.run("nft", &["-f", "-"], Some(&nft_map_script(m)))?;
        Ok(())
    }

    fn remove(&mut self, m: &Mapping<'_>) -> Result<()> {
        m.host
            .run("nft", &["delete", "table", "ip", NFT_TABLE], None)?;
        Ok(())
    }

    fn rules(&self) -> String {
        "1 + map".to_owned()
    }
}

/// Docker 20.10's rules for `-p P:P/udp` on the default bridge, three per port, as
/// `iptables-save` shows them after `docker run -p A-B:A-B/udp`: nat DNAT in DOCKER (jumped
/// from PREROUTING for local destinations), nat POSTROUTING hairpin MASQUERADE, filter ACCEPT
/// in DOCKER (jumped from FORWARD after the ESTABLISHED shortcut). Per-port rules are appended
/// in port order, so the last port is matched by the last rule.
pub struct DockerIptables {
    /// `iptables-restore` (nf_tables) or `iptables-legacy-restore`.
    pub restore: &'static str,
}

pub fn docker_rules(m: &Mapping<'_>) -> String {
    let (b, c) = (m.bridge, m.ctr_ip);
    let (net, len) = m.ctr_subnet;
    let mut s = String::with_capacity(m.ports.len() * 300 + 2048);
    s.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n",
    );
    let _ = writeln!(s, "-A POSTROUTING -s {net}/{len} ! -o {b} -j MASQUERADE");
    for p in m.ports {
        let _ = writeln!(
            s,
            "-A POSTROUTING -s {c}/32 -d {c}/32 -p udp -m udp --dport {p} -j MASQUERADE"
        );
    }
    let _ = writeln!(s, "-A DOCKER -i {b} -j RETURN");
    for p in m.ports {
        let _ = writeln!(
            s,
            "-A DOCKER ! -i {b} -p udp -m udp --dport {p} -j DNAT --to-destination {c}:{p}"
        );
    }
    s.push_str(
        "COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :DOCKER - [0:0]\n:DOCKER-ISOLATION-STAGE-1 - [0:0]\n:DOCKER-ISOLATION-STAGE-2 - [0:0]\n\
         :DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n",
    );
    let _ = write!(
        s,
        "-A FORWARD -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A FORWARD -o {b} -j DOCKER\n\
         -A FORWARD -i {b} ! -o {b} -j ACCEPT\n\
         -A FORWARD -i {b} -o {b} -j ACCEPT\n"
    );
    for p in m.ports {
        let _ = writeln!(
            s,
            "-A DOCKER -d {c}/32 ! -i {b} -o {b} -p udp -m udp --dport {p} -j ACCEPT"
        );
    }
    let _ = write!(
        s,
        "-A DOCKER-ISOLATION-STAGE-1 -i {b} ! -o {b} -j DOCKER-ISOLATION-STAGE-2\n\
         -A DOCKER-ISOLATION-STAGE-1 -j RETURN\n\
         -A DOCKER-ISOLATION-STAGE-2 -o {b} -j DROP\n\
         -A DOCKER-ISOLATION-STAGE-2 -j RETURN\n\
         -A DOCKER-USER -j RETURN\nCOMMIT\n"
    );
    s
}

/// Empty nat and filter tables: `*-restore` without `--noflush` flushes every chain of the
/// tables it loads and deletes their user chains (inside HOST only).
const EMPTY_TABLES: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n\
    :OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n\
    *filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

impl PortMapper for DockerIptables {
    fn install(&mut self, m: &Mapping<'_>) -> Result<()> {
        m.host.run(self.restore, &[], Some(&docker_rules(m)))?;
        Ok(())
    }

    fn remove(&mut self, m: &Mapping<'_>) -> Result<()> {
        m.host.run(self.restore, &[], Some(EMPTY_TABLES))?;
        Ok(())
    }

    fn rules(&self) -> String {
        "3 per port".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_mapping<T>(ports: &[u16], f: impl FnOnce(&Mapping<'_>) -> T) -> T {
        // A Netns value that is never created: only its name is used by the text builders.
        let host = std::mem::ManuallyDrop::new(Netns::fake("bbtest-0-host"));
        f(&Mapping {
            host: &host,
            bridge: "bb1br",
            uplink: "bb1h0",
            ctr_ip: Ipv4Addr::new(10, 251, 2, 2),
            ctr_subnet: (Ipv4Addr::new(10, 251, 2, 0), 24),
            ports,
        })
    }

    #[test]
    fn docker_rules_are_three_per_port_with_the_last_port_last() {
        let text = with_mapping(&[20000, 20001, 20002], docker_rules);
        let per_port = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(per_port("--dport"), 9);
        assert_eq!(per_port("-j DNAT --to-destination 10.251.2.2:"), 3);
        assert_eq!(per_port("-d 10.251.2.2/32 -p udp -m udp --dport"), 3);
        assert_eq!(per_port("-o bb1br -p udp -m udp --dport"), 3);
        let dnat: Vec<&str> = text.lines().filter(|l| l.contains("-j DNAT")).collect();
        assert!(dnat[2].ends_with("--dport 20002 -j DNAT --to-destination 10.251.2.2:20002"));
        assert_eq!(text.matches("COMMIT").count(), 2);
        assert!(text.contains(":FORWARD DROP"));
    }

    #[test]
    fn nft_map_script_has_one_element_per_port_and_one_dnat_rule() {
        let text = with_mapping(&[20000, 20001], nft_map_script);
        assert!(text.contains("udp . 20000 : 10.251.2.2 . 20000,\n"));
        assert!(text.contains("udp . 20001 : 10.251.2.2 . 20001\n"));
        assert_eq!(
            text.matches("dnat ip to meta l4proto . th dport map @ports")
                .count(),
            2
        );
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn unknown_mechanisms_are_refused_with_the_known_list() {
        let err = Mechanism::builtin("ebpf").err().unwrap().to_string();
        assert!(err.contains("nft-map, iptables"), "{err}");
    }
}
