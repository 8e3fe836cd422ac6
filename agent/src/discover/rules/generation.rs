//! A cheap fingerprint of the iptables rulesets of the calling thread's network namespace, so
//! the full read (`iptables-save`, tens of milliseconds for thousands of rules) runs only when
//! something changed: nftables' generation id (`NFT_MSG_GETGEN` over nfnetlink; it moves on
//! every committed change, iptables-nft's included) and, per legacy table, the entry count and
//! blob size (`IPT_SO_GET_INFO`, what `iptables-legacy-save` asks first). Neither reads a
//! rule. A legacy change that keeps both (a rule replaced by one of the same size) is missed;
//! the watcher's periodic read covers it.
//!
//! Legacy tables are asked only when `/proc/thread-self/net/ip_tables_names` lists them:
//! asking for a table that does not exist would make the kernel load and register it.

use std::{ffi::CString, fs, os::fd::AsRawFd as _};

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

/// What changes when a ruleset changes; `None` parts could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub nft: Option<u32>,
    /// (table, entries, size) per legacy table, in the kernel's order.
    pub legacy: Option<Vec<(String, u32, u32)>>,
}

impl Generation {
    /// The calling thread's namespace, now.
    pub fn current() -> Self {
        Self {
            nft: nft_generation(),
            legacy: legacy_tables(),
        }
    }

    /// Whether both parts were read, so an unchanged value means unchanged rulesets.
    pub fn is_complete(&self) -> bool {
        self.nft.is_some() && self.legacy.is_some()
    }
}

/// nfnetlink header (`struct nfgenmsg`) after the netlink header: family, version, res_id.
const NFGENMSG_LEN: usize = 4;
const NLMSG_HDRLEN: usize = 16;
const NFTA_GEN_ID: u16 = 1;

/// The nftables generation id of this namespace.
fn nft_generation() -> Option<u32> {
    let socket = Socket::new(NETLINK_NETFILTER).ok()?;
    let mut req = [0u8; NLMSG_HDRLEN + NFGENMSG_LEN];
    let len = req.len() as u32;
    let kind = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_GETGEN as u16;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&kind.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0 (already zero).
    socket.send(&req, 0).ok()?;
    // The kernel answers within send(): the reply is queued when it returns.
    socket.set_non_blocking(true).ok()?;
    let (reply, _) = socket.recv_from_full().ok()?;
    parse_gen_reply(&reply)
}

/// NFTA_GEN_ID of a NEWGEN reply (`None` for an error or anything else).
fn parse_gen_reply(msg: &[u8]) -> Option<u32> {
    let u16_at = |i: usize| Some(u16::from_ne_bytes(msg.get(i..i + 2)?.try_into().ok()?));
    let len = u32::from_ne_bytes(msg.get(0..4)?.try_into().ok()?) as usize;
    let kind = u16_at(4)?;
    let newgen = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_NEWGEN as u16;
    if kind != newgen || len > msg.len() {
        return None;
    }
    let mut at = NLMSG_HDRLEN + NFGENMSG_LEN;
    while at + 4 <= len {
        let alen = usize::from(u16_at(at)?);
        let atype = u16_at(at + 2)? & 0x3fff;
        if alen < 4 {
            return None;
        }
        if atype == NFTA_GEN_ID && alen >= 8 {
            return Some(u32::from_be_bytes(
                msg.get(at + 4..at + 8)?.try_into().ok()?,
            ));
        }
        at += (alen + 3) & !3;
    }
    None
}

/// `struct ipt_getinfo` (linux/netfilter_ipv4/ip_tables.h).
#[repr(C)]
struct IptGetinfo {
    name: [u8; 32],
    valid_hooks: u32,
    hook_entry: [u32; 5],
    underflow: [u32; 5],
    num_entries: u32,
    size: u32,
}

/// IPT_BASE_CTL + 0.
const IPT_SO_GET_INFO: libc::c_int = 64;

/// Entries and size of every legacy table in this namespace (empty when none exists).
fn legacy_tables() -> Option<Vec<(String, u32, u32)>> {
    let names = match fs::read_to_string("/proc/thread-self/net/ip_tables_names") {
        Ok(n) => n,
        // No ip_tables in this kernel: no legacy rules.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Vec::new()),
        Err(_) => return None,
    };
    let names: Vec<&str> = names.lines().filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        return Some(Vec::new());
    }
    // SAFETY: a plain socket(2); the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let c = CString::new(name).ok()?;
        let bytes = c.as_bytes_with_nul();
        let mut info = IptGetinfo {
            name: [0; 32],
            valid_hooks: 0,
            hook_entry: [0; 5],
            underflow: [0; 5],
            num_entries: 0,
            size: 0,
        };
        if bytes.len() > info.name.len() {
            return None;
        }
        info.name[..bytes.len()].copy_from_slice(bytes);
        let mut len = std::mem::size_of::<IptGetinfo>() as libc::socklen_t;
        // SAFETY: `info` is a valid, writable ipt_getinfo of `len` bytes for the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_IP,
                IPT_SO_GET_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return None;
        }
        out.push((name.to_owned(), info.num_entries, info.size));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use berth_testkit::Netns;

    use super::*;

    #[test]
    fn a_gen_reply_gives_its_id_and_anything_else_none() {
        let newgen = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_NEWGEN as u16;
        let mut msg = Vec::new();
        msg.extend_from_slice(&36u32.to_ne_bytes());
        msg.extend_from_slice(&newgen.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&[0; 4]);
        // NFTA_GEN_PROC_PID first, then NFTA_GEN_ID.
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&2u16.to_ne_bytes());
        msg.extend_from_slice(&77u32.to_be_bytes());
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&1u16.to_ne_bytes());
        msg.extend_from_slice(&4242u32.to_be_bytes());
        assert_eq!(parse_gen_reply(&msg), Some(4242));
        assert_eq!(parse_gen_reply(&msg[..30]), None, "truncated");
        let mut error = msg.clone();
        error[4..6].copy_from_slice(&2u16.to_ne_bytes());
        assert_eq!(parse_gen_reply(&error), None, "NLMSG_ERROR");
    }

    /// Root: a namespace of the test's own, changed with the real tools.
    #[test]
    fn the_fingerprint_moves_with_nft_and_legacy_rule_changes_only() {
        let ns = Netns::new();
        let g0 = ns.run(Generation::current);
        assert!(g0.is_complete(), "{g0:?}");
        assert_eq!(
            g0.legacy,
            Some(vec![]),
            "a new namespace has no legacy table"
        );
        assert_eq!(ns.run(Generation::current), g0, "nothing changed");
        ns.sh("iptables-nft -t nat -A POSTROUTING -s 10.9.0.2/32 -d 10.9.0.2/32 -j MASQUERADE");
        let g1 = ns.run(Generation::current);
        assert_ne!(g1.nft, g0.nft);
        assert_eq!(g1.legacy, g0.legacy);
        ns.sh("iptables-legacy -t raw -A PREROUTING -d 10.9.0.2/32 -j DROP");
        let g2 = ns.run(Generation::current);
        assert_eq!(g2.nft, g1.nft);
        let raw = g2.legacy.as_ref().unwrap();
        assert_eq!(raw.len(), 1, "{raw:?}");
        assert_eq!(raw[0].0, "raw");
        ns.sh("iptables-legacy -t raw -A PREROUTING -d 10.9.0.3/32 -j DROP");
        let g3 = ns.run(Generation::current);
        assert_eq!(
            g3.legacy.as_ref().unwrap()[0].1,
            raw[0].1 + 1,
            "one more entry"
        );
        // The caller's own namespace was never read or changed by any of this.
        assert_ne!(Generation::current().legacy, g3.legacy);
    }
}
