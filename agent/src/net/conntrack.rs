//! Connection tracking of the agent's (the host's) network namespace:
//! - host-wide `nf_conntrack_count`/`_max` and the per-CPU statistics of
//!   `/proc/net/stat/nf_conntrack` (summed), from procfs (readers take the procfs root so
//!   tests use fixtures): a few small files, cheap to read every tick;
//! - entries per IPv4 address ([`counter`]), kept from ctnetlink events ([`ctnetlink`]) rather
//!   than by reading the whole table (`/proc/net/nf_conntrack` as text was O(table) every
//!   period: 19 ms for 6,000 entries, and a media server holds hundreds of thousands).
//!
//! Absent files mean conntrack is not loaded on this host: that is "not present", not a
//! failure.

pub mod counter;
pub mod ctnetlink;
pub mod tally;

use std::{collections::HashMap, fs, path::Path};

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
}
