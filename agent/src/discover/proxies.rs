//! Userland port-mapping proxies: Docker's `docker-proxy` (one process per published port
//! and protocol when `userland-proxy` is on, the default) and its kin. Found by a procfs scan
//! of process names; their CPU and memory are what the operator pays for published ports on
//! top of the kernel's NAT. Readers take the procfs root so tests can use fixtures.

use std::{fs, path::Path};

/// Process names of known userland proxies.
pub const PROXY_NAMES: [&str; 3] = ["docker-proxy", "rootlessport", "slirp4netns"];

pub use crate::model::host::ProxyStats;

/// Scans `proc` (normally `/proc`) for userland proxy processes.
pub fn scan(proc: &Path) -> ProxyStats {
    let mut out = ProxyStats::default();
    let Ok(entries) = fs::read_dir(proc) else {
        return out;
    };
    // SAFETY: sysconf has no preconditions.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
        )
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let dir = proc.join(pid);
        let Ok(comm) = fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !PROXY_NAMES.contains(&comm.trim()) {
            continue;
        }
        out.processes += 1;
        if let Ok(statm) = fs::read_to_string(dir.join("statm"))
            && let Some(rss) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        {
            out.rss_bytes += rss * page;
        }
        if let Ok(stat) = fs::read_to_string(dir.join("stat"))
            && let Some(ticks) = cpu_ticks(&stat)
        {
            out.cpu_seconds += ticks as f64 / tick;
        }
    }
    out
}

/// utime + stime from /proc/PID/stat (fields 14 and 15, after the parenthesised name, which
/// may itself contain spaces and parentheses).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 -> index 11, stime index 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_are_found_by_name_with_their_memory_and_cpu() {
        let d = tempfile::tempdir().unwrap();
        let mk = |pid: &str, comm: &str, rss_pages: u64, utime: u64, stime: u64| {
            let p = d.path().join(pid);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(p.join("statm"), format!("1000 {rss_pages} 10 1 0 5 0\n")).unwrap();
            fs::write(
                p.join("stat"),
                format!("{pid} ({comm}) S 1 1 1 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0 5\n"),
            )
            .unwrap();
        };
        mk("10", "docker-proxy", 100, 50, 50);
        mk("11", "docker-proxy", 200, 0, 100);
        mk("12", "sleep", 999, 999, 999);
        fs::create_dir_all(d.path().join("self")).unwrap();
        let s = scan(d.path());
        assert_eq!(s.processes, 2);
        // SAFETY: sysconf has no preconditions.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK) as f64,
                libc::sysconf(libc::_SC_PAGESIZE) as u64,
            )
        };
        assert_eq!(s.rss_bytes, 300 * page);
        assert!((s.cpu_seconds - 200.0 / tick).abs() < 1e-9);
    }

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "7 (a (b) c) S 1 1 1 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 5";
        assert_eq!(cpu_ticks(line), Some(7));
    }
}
