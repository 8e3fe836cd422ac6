//! What the backend reads from and changes in the calling thread's network namespace:
//! interfaces, the namespace's cookie, default routes, `ip_local_reserved_ports`.

use std::{collections::BTreeSet, ffi::CString, fmt::Write as _, path::Path};

use super::PortmapError;

/// The interface index of `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14).
pub fn netns_cookie() -> Result<u64, PortmapError> {
    let err = |e: std::io::Error| PortmapError::Bpf {
        op: "reading the network namespace's cookie".into(),
        reason: e.to_string(),
    };
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just created and is owned here only.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a u64 out buffer of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// Interfaces that carry an IPv4 default route in the calling thread's namespace.
pub fn default_route_links() -> Result<Vec<String>, PortmapError> {
    let path = Path::new("/proc/thread-self/net/route");
    let text = std::fs::read_to_string(path).map_err(|e| PortmapError::Bpf {
        op: format!("reading {}", path.display()),
        reason: e.to_string(),
    })?;
    Ok(parse_default_routes(&text))
}

fn parse_default_routes(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Takes the ports of `old` that are not in `new` out of `ip_local_reserved_ports` and adds
/// those of `new`; other entries stay.
pub fn reserve(old: &BTreeSet<(u8, u16)>, new: &BTreeSet<(u8, u16)>) -> Result<(), PortmapError> {
    let err = |e: std::io::Error| PortmapError::Sysctl {
        path: RESERVED.into(),
        source: e,
    };
    let current = std::fs::read_to_string(RESERVED).map_err(err)?;
    let have = parse_ranges(&current);
    let want = merged(&have, old, new);
    if want != have {
        std::fs::write(RESERVED, format_ranges(&want)).map_err(err)?;
    }
    Ok(())
}

fn merged(
    have: &BTreeSet<u16>,
    old: &BTreeSet<(u8, u16)>,
    new: &BTreeSet<(u8, u16)>,
) -> BTreeSet<u16> {
    let new_ports: BTreeSet<u16> = new.iter().map(|(_, p)| *p).collect();
    let mut out: BTreeSet<u16> = have
        .iter()
        .copied()
        .filter(|p| new_ports.contains(p) || !old.iter().any(|(_, o)| o == p))
        .collect();
    out.extend(new_ports);
    out
}

fn parse_ranges(text: &str) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    for part in text
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
            out.extend(a..=b);
        }
    }
    out
}

fn format_ranges(ports: &BTreeSet<u16>) -> String {
    let mut s = String::new();
    let mut it = ports.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&end.wrapping_add(1)) && end != u16::MAX {
            end = it.next().expect("peeked");
        }
        if !s.is_empty() {
            s.push(',');
        }
        if start == end {
            let _ = write!(s, "{start}");
        } else {
            let _ = write!(s, "{start}-{end}");
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn reserved_ports_keep_other_entries_and_follow_the_mappings() {
        let have = parse_ranges("8000,30000-30002\n");
        assert_eq!(have.len(), 4);
        let old: BTreeSet<(u8, u16)> = [(17, 30001), (6, 40000)].into();
        let new: BTreeSet<(u8, u16)> = [(17, 40000), (17, 40001), (6, 40002)].into();
        let got = merged(&have, &old, &new);
        assert_eq!(format_ranges(&got), "8000,30000,30002,40000-40002\n");
        assert_eq!(format_ranges(&BTreeSet::new()), "\n");
        assert_eq!(format_ranges(&[65534, 65535].into()), "65534-65535\n");
    }

    #[test]
    fn default_routes_are_read_from_the_route_table() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    wg0\t00000000\t00000000\t0001\t0\t0\t0\t00000080\t0\t0\t0\n";
        assert_eq!(parse_default_routes(text), vec!["eth0".to_owned()]);
    }
}
