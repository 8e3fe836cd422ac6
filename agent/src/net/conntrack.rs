//! Connection tracking, read from procfs of the agent's (the host's) network namespace:
//! host-wide `nf_conntrack_count`/`_max` and the per-CPU statistics of
//! `/proc/net/stat/nf_conntrack` (summed), and current entries per container address from
//! `/proc/net/nf_conntrack`. Readers take the procfs root so tests use fixtures.
//!
//! Absent files mean conntrack is not loaded on this host: that is "not present", not a
//! failure.

use std::{collections::HashMap, fs, net::Ipv4Addr, path::Path};

pub use crate::model::host::ConntrackStats;

/// `None` when conntrack is not loaded (the files do not exist).
pub fn host_stats(proc: &Path) -> Option<ConntrackStats> {
    let read_num =
        |p: &str| -> Option<u64> { fs::read_to_string(proc.join(p)).ok()?.trim().parse().ok() };
    let mut s = ConntrackStats {
        entries: read_num("sys/net/netfilter/nf_conntrack_count")?,
        max: read_num("sys/net/netfilter/nf_conntrack_max").unwrap_or(0),
        ..Default::default()
    };
    if let Ok(text) = fs::read_to_string(proc.join("net/stat/nf_conntrack")) {
        let sums = sum_stat(&text);
        let get = |k: &str| sums.get(k).copied().unwrap_or(0);
        s.found = get("found");
        s.new = get("new");
        s.invalid = get("invalid");
        s.insert = get("insert");
        s.insert_failed = get("insert_failed");
        s.drop = get("drop");
        s.early_drop = get("early_drop");
        s.search_restart = get("search_restart");
    }
    Some(s)
}

/// Sums the per-CPU rows (hex) of /proc/net/stat/nf_conntrack by column name. The `entries`
/// column is the same global count on every row and is not summed.
fn sum_stat(text: &str) -> HashMap<String, u64> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return HashMap::new();
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let mut sums: HashMap<String, u64> = HashMap::new();
    for line in lines {
        for (name, v) in names.iter().zip(line.split_whitespace()) {
            if *name == "entries" {
                continue;
            }
            let v = u64::from_str_radix(v, 16).unwrap_or(0);
            *sums.entry((*name).to_owned()).or_default() += v;
        }
    }
    sums
}

/// Current entries per IPv4 address appearing in them (either direction), from
/// /proc/net/nf_conntrack; an entry between two containers counts for both.
pub fn entries_by_ip(proc: &Path) -> HashMap<Ipv4Addr, u64> {
    let Ok(text) = fs::read_to_string(proc.join("net/nf_conntrack")) else {
        return HashMap::new();
    };
    count_by_ip(&text)
}

fn count_by_ip(text: &str) -> HashMap<Ipv4Addr, u64> {
    let mut out: HashMap<Ipv4Addr, u64> = HashMap::new();
    let mut seen: Vec<Ipv4Addr> = Vec::with_capacity(4);
    for line in text.lines().filter(|l| l.starts_with("ipv4")) {
        seen.clear();
        for field in line.split_whitespace() {
            let ip = field
                .strip_prefix("src=")
                .or_else(|| field.strip_prefix("dst="))
                .and_then(|v| v.parse::<Ipv4Addr>().ok());
            if let Some(ip) = ip
                && !seen.contains(&ip)
            {
                seen.push(ip);
            }
        }
        for ip in &seen {
            *out.entry(*ip).or_default() += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_rows_are_summed_by_column_except_entries() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                    00000005  00000000 00000001 00000002 00000003 00000000 00000000 00000000 00000000 0000000a 00000001 00000002 00000000  00000000 00000000 00000000 00000000\n\
                    00000005  00000000 00000001 00000002 00000000 00000000 00000000 00000000 00000000 00000001 00000000 00000000 00000000  00000000 00000000 00000000 00000001\n";
        let s = sum_stat(text);
        assert_eq!(s["new"], 4);
        assert_eq!(s["insert_failed"], 11);
        assert_eq!(s["early_drop"], 2);
        assert!(!s.contains_key("entries"));
    }

    #[test]
    fn host_stats_read_a_fixture_procfs_and_absence_means_none() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(host_stats(d.path()), None);
        fs::create_dir_all(d.path().join("sys/net/netfilter")).unwrap();
        fs::create_dir_all(d.path().join("net/stat")).unwrap();
        fs::write(d.path().join("sys/net/netfilter/nf_conntrack_count"), "7\n").unwrap();
        fs::write(
            d.path().join("sys/net/netfilter/nf_conntrack_max"),
            "262144\n",
        )
        .unwrap();
        fs::write(
            d.path().join("net/stat/nf_conntrack"),
            "entries new drop early_drop insert_failed\n00000007 00000010 00000001 00000000 00000002\n",
        )
        .unwrap();
        let s = host_stats(d.path()).unwrap();
        assert_eq!(
            (s.entries, s.max, s.new, s.drop, s.insert_failed),
            (7, 262144, 16, 1, 2)
        );
    }

    #[test]
    fn entries_count_once_per_address_in_either_direction() {
        let text = "ipv4     2 udp      17 29 src=172.30.1.2 dst=172.30.1.1 sport=5000 dport=31000 src=10.200.1.2 dst=172.30.1.2 sport=41000 dport=5000 mark=0 zone=0 use=2\n\
                    ipv4     2 udp      17 29 src=10.200.1.2 dst=10.200.1.1 sport=1 dport=2 [UNREPLIED] src=10.200.1.1 dst=10.200.1.2 sport=2 dport=1 mark=0 zone=0 use=2\n\
                    ipv6     10 udp      17 29 src=::1 dst=::1 sport=1 dport=2 src=::1 dst=::1 sport=2 dport=1 mark=0 use=2\n";
        let m = count_by_ip(text);
        assert_eq!(m[&"10.200.1.2".parse::<Ipv4Addr>().unwrap()], 2);
        assert_eq!(m[&"172.30.1.2".parse::<Ipv4Addr>().unwrap()], 1);
        assert_eq!(m.len(), 4);
    }
}
