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

use std::{fs::File, path::PathBuf};

use crate::fsutil::pread_all;

pub use crate::model::host::ConntrackStats;

/// The host-wide numbers, read every tick from three procfs files kept open (one `pread`
/// each; opening a `/proc/sys` file walks its sysctl table, most of the cost of a read).
/// A file that fails to read is opened again at the next read: conntrack may be loaded
/// after the agent starts. The files belong to the network namespace the agent is in when
/// they are opened (the host's).
#[derive(Debug)]
pub struct HostStats {
    proc: PathBuf,
    files: [Option<File>; 3],
    buf: Vec<u8>,
}

const COUNT: &str = "sys/net/netfilter/nf_conntrack_count";
const MAX: &str = "sys/net/netfilter/nf_conntrack_max";
const STAT: &str = "net/stat/nf_conntrack";

impl HostStats {
    /// Reads below `proc` (normally `/proc`; tests use fixtures).
    pub fn new(proc: impl Into<PathBuf>) -> Self {
        Self {
            proc: proc.into(),
            files: [None, None, None],
            buf: Vec::new(),
        }
    }

    /// `None` when conntrack is not loaded (the files do not exist).
    pub fn read(&mut self) -> Option<ConntrackStats> {
        let mut s = ConntrackStats {
            entries: self.read_num(0)?,
            max: self.read_num(1).unwrap_or(0),
            ..Default::default()
        };
        if let Some(len) = self.read_file(2)
            && let Ok(text) = std::str::from_utf8(&self.buf[..len])
        {
            sum_stat(text, &mut s);
        }
        Some(s)
    }

    fn read_num(&mut self, i: usize) -> Option<u64> {
        let len = self.read_file(i)?;
        std::str::from_utf8(&self.buf[..len])
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// File `i`'s content into `buf` (its length), opened first when it is not open.
    fn read_file(&mut self, i: usize) -> Option<usize> {
        if self.files[i].is_none() {
            self.files[i] = File::open(self.proc.join([COUNT, MAX, STAT][i])).ok();
        }
        let len = pread_all(self.files[i].as_ref()?, &mut self.buf);
        if len.is_err() {
            self.files[i] = None;
        }
        len.ok()
    }
}

/// Sums the per-CPU rows (hex) of /proc/net/stat/nf_conntrack into `s` by column name. The
/// `entries` column is the same global count on every row and is not summed.
fn sum_stat(text: &str, s: &mut ConntrackStats) {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return;
    };
    for line in lines {
        for (name, v) in header.split_whitespace().zip(line.split_whitespace()) {
            let field = match name {
                "found" => &mut s.found,
                "new" => &mut s.new,
                "invalid" => &mut s.invalid,
                "insert" => &mut s.insert,
                "insert_failed" => &mut s.insert_failed,
                "drop" => &mut s.drop,
                "early_drop" => &mut s.early_drop,
                "search_restart" => &mut s.search_restart,
                _ => continue,
            };
            *field += u64::from_str_radix(v, 16).unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_rows_are_summed_by_column_except_entries() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                    00000005  00000000 00000001 00000002 00000003 00000000 00000000 00000000 00000000 0000000a 00000001 00000002 00000000  00000000 00000000 00000000 00000000\n\
                    00000005  00000000 00000001 00000002 00000000 00000000 00000000 00000000 00000000 00000001 00000000 00000000 00000000  00000000 00000000 00000000 00000001\n";
        let mut s = ConntrackStats::default();
        sum_stat(text, &mut s);
        assert_eq!(
            (s.new, s.insert_failed, s.early_drop, s.search_restart),
            (4, 11, 2, 1)
        );
        assert_eq!(
            s.entries, 0,
            "entries is the count file's, not a sum of rows"
        );
    }

    #[test]
    fn host_stats_read_a_fixture_procfs_and_absence_means_none() {
        use std::fs;
        let d = tempfile::tempdir().unwrap();
        let mut stats = HostStats::new(d.path());
        assert_eq!(stats.read(), None);
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
        // Loaded after the first read: found at the next one.
        let s = stats.read().unwrap();
        assert_eq!(
            (s.entries, s.max, s.new, s.drop, s.insert_failed),
            (7, 262144, 16, 1, 2)
        );
        // The kept-open files give what they hold now.
        fs::write(d.path().join("sys/net/netfilter/nf_conntrack_count"), "9\n").unwrap();
        assert_eq!(stats.read().unwrap().entries, 9);
    }
}
