//! `berth-test-flood`: opens many idle TCP connections as an unprivileged user, for the
//! listener tests (`tests/listeners.rs`). Not part of the product; std and libc only.
//!
//! `berth-test-flood PORT COUNT FIRST_ADDR`: as root, raises its fd limit, drops to
//! nobody (65534), then opens COUNT non-blocking connections to 127.0.0.1:PORT, bound to
//! 127.0.0.FIRST_ADDR, 127.0.0.(FIRST_ADDR+1), ... (1,000 per address, so the ephemeral
//! port range is not exhausted), sends nothing, prints `opened N` and holds them until
//! stdin closes.

use std::{io::Read as _, net::Ipv4Addr, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(port), Some(count), Some(first)) = (
        args.get(1).and_then(|a| a.parse::<u16>().ok()),
        args.get(2).and_then(|a| a.parse::<u32>().ok()),
        args.get(3).and_then(|a| a.parse::<u8>().ok()),
    ) else {
        eprintln!("usage: berth-test-flood PORT COUNT FIRST_ADDR");
        return ExitCode::from(2);
    };
    // SAFETY: plain syscalls on local structs; no threads exist yet.
    unsafe {
        let lim = libc::rlimit {
            rlim_cur: u64::from(count) + 64,
            rlim_max: u64::from(count) + 64,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            eprintln!("setrlimit: {}", std::io::Error::last_os_error());
            return ExitCode::FAILURE;
        }
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(65534) != 0
            || libc::setuid(65534) != 0
        {
            eprintln!("dropping to nobody: {}", std::io::Error::last_os_error());
            return ExitCode::FAILURE;
        }
    }
    let mut fds = Vec::new();
    let mut failed = 0u32;
    for i in 0..count {
        let src = Ipv4Addr::new(127, 0, 0, first.saturating_add((i / 1000) as u8));
        // SAFETY: socket/bind/connect with valid sockaddr_in structs.
        unsafe {
            let fd = libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            );
            if fd < 0 {
                failed += 1;
                continue;
            }
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_addr.s_addr = u32::from_ne_bytes(src.octets());
            let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) != 0 {
                libc::close(fd);
                failed += 1;
                continue;
            }
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            sa.sin_port = port.to_be();
            let r = libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len);
            if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
                libc::close(fd);
                failed += 1;
                continue;
            }
            fds.push(fd);
        }
        if i % 500 == 499 {
            // Let the listener's accept queue drain now and then.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    println!("opened {} failed {failed}", fds.len());
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    for fd in fds {
        // SAFETY: closing fds this process opened.
        unsafe { libc::close(fd) };
    }
    ExitCode::SUCCESS
}
