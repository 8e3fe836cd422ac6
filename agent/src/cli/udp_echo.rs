//! `berth udp-echo --ports A-B` (hidden): answers every UDP datagram on each port of the range
//! with the same bytes. A workload for tests and demos of published port ranges; it runs
//! inside containers (copied into their rootfs).

use std::{
    net::UdpSocket,
    os::fd::{AsRawFd as _, RawFd},
};

pub fn execute_udp_echo(ports: &str) -> anyhow::Result<i32> {
    let (a, b) = ports.split_once('-').unwrap_or((ports, ports));
    let (a, b): (u16, u16) = (a.parse()?, b.parse()?);
    anyhow::ensure!(a <= b, "--ports {ports}: empty range");
    // SAFETY: raising our own soft limit to the hard one.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    let sockets: Vec<UdpSocket> = (a..=b)
        .map(|p| UdpSocket::bind(("0.0.0.0", p)))
        .collect::<Result<_, _>>()?;
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd() as RawFd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    println!("udp-echo listening on {a}-{b}");
    let mut buf = [0u8; 65536];
    loop {
        // SAFETY: fds is a valid array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue;
        }
        for (i, p) in fds.iter_mut().enumerate() {
            if p.revents & libc::POLLIN != 0 {
                if let Ok((len, from)) = sockets[i].recv_from(&mut buf) {
                    let _ = sockets[i].send_to(&buf[..len], from);
                }
                p.revents = 0;
            }
        }
    }
}

/// Sends "berth-ask" to `to` and prints the answer.
pub fn execute_ask(to: std::net::SocketAddr) -> anyhow::Result<i32> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        sock.send_to(b"berth-ask", to)?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            println!("{}", String::from_utf8_lossy(&buf[..n]));
            return Ok(0);
        }
    }
    eprintln!("no answer from {to}");
    Ok(1)
}
