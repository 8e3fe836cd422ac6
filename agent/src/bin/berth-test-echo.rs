//! `berth-test-echo`: a UDP echo workload for the integration tests, copied into container
//! rootfs directories (`tests/common` `echo_rootfs`). Not part of the product: it needs only
//! std and libc, so it is cheap to build and runs in a busybox rootfs with the libraries `ldd`
//! lists.
//!
//! - `berth-test-echo --ports A-B`: answers every datagram on each port of the range with the
//!   same bytes (prints `udp-echo listening on A-B` once bound);
//! - `berth-test-echo --ask IP:PORT`: sends `berth-ask`, prints the answer, exits 0 (1 s
//!   timeout, 3 tries; exits 1 without an answer).
//! - `berth-test-echo --try-syscalls`: calls `keyctl`, `add_key`, `perf_event_open`,
//!   `io_uring_setup` and `unshare(CLONE_NEWUSER)` once each and prints `NAME ok` or
//!   `NAME errno=N` per line (the seccomp tests read it), exits 0.
//! - `berth-test-echo --getppid N`: makes exactly N getppid(2) calls, prints `getppid N`,
//!   exits 0 (a known syscall count for the probe tests, inside any container).
//! - `berth-test-echo --send IP:PORT COUNT SIZE`: sends COUNT datagrams of SIZE bytes from one
//!   socket to IP:PORT (the first alone, then a 100 ms pause so the neighbour is resolved and
//!   none of the rest waits in its queue), prints `sent COUNT`, exits 0 (a known byte count).

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    process::ExitCode,
    time::Duration,
};

const USAGE: &str = "usage: berth-test-echo --ports A-B | --ask IP:PORT | --try-syscalls | \
                     --getppid N | --send IP:PORT COUNT SIZE";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args[..] {
        ["--ports", ports] => echo(ports),
        ["--try-syscalls"] => Ok(try_syscalls()),
        ["--ask", to] => match to.parse::<SocketAddr>() {
            Ok(to) => ask(to),
            Err(e) => Err(format!("--ask {to}: {e}")),
        },
        ["--getppid", n] => match n.parse::<u64>() {
            Ok(n) => Ok(getppid(n)),
            Err(e) => Err(format!("--getppid {n}: {e}")),
        },
        ["--send", to, count, size] => send(to, count, size),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("berth-test-echo: {e}");
            ExitCode::from(2)
        }
    }
}

/// Binds every port of `A-B` (or the single port `A`) and echoes forever.
fn echo(ports: &str) -> Result<u8, String> {
    let (a, b) = ports.split_once('-').unwrap_or((ports, ports));
    let parse = |p: &str| {
        p.parse::<u16>()
            .map_err(|e| format!("--ports {ports}: {e}"))
    };
    let (a, b) = (parse(a)?, parse(b)?);
    if a > b {
        return Err(format!("--ports {ports}: empty range"));
    }
    // SAFETY: raising our own soft limit on open files to the hard one (2,000 ports = 2,000
    // sockets); a failure leaves the limit as it was and bind reports EMFILE.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
    let sockets: Vec<UdpSocket> = (a..=b)
        .map(|p| UdpSocket::bind(("0.0.0.0", p)).map_err(|e| format!("binding udp/{p}: {e}")))
        .collect::<Result<_, _>>()?;
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    println!("udp-echo listening on {a}-{b}");
    let mut buf = [0u8; 65536];
    loop {
        // SAFETY: fds is a valid array of pollfd of the given length.
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

/// Sends `berth-ask` to `to` and prints the answer.
fn ask(to: SocketAddr) -> Result<u8, String> {
    let io = |e: std::io::Error| format!("--ask {to}: {e}");
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(io)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(io)?;
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        sock.send_to(b"berth-ask", to).map_err(io)?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            println!("{}", String::from_utf8_lossy(&buf[..n]));
            return Ok(0);
        }
    }
    eprintln!("no answer from {to}");
    Ok(1)
}

/// Makes exactly `n` getppid(2) calls (through `syscall`, so no libc cache can skip one).
fn getppid(n: u64) -> u8 {
    for _ in 0..n {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    println!("getppid {n}");
    0
}

/// Sends `count` datagrams of `size` bytes to `to` from one socket.
fn send(to: &str, count: &str, size: &str) -> Result<u8, String> {
    let usage = |what: &str, e: &dyn std::fmt::Display| format!("--send {what}: {e}");
    let to: SocketAddr = to.parse().map_err(|e| usage(to, &e))?;
    let count: u32 = count.parse().map_err(|e| usage(count, &e))?;
    let size: usize = size.parse().map_err(|e| usage(size, &e))?;
    let io = |e: std::io::Error| format!("--send {to}: {e}");
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(io)?;
    let buf = vec![0x5au8; size];
    for i in 0..count {
        let sent = sock.send_to(&buf, to).map_err(io)?;
        if sent != size {
            return Err(format!("--send {to}: sent {sent} of {size} bytes"));
        }
        if i == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("sent {count}");
    Ok(0)
}

/// Calls each syscall the default seccomp profile refuses and prints what it returned.
fn try_syscalls() -> u8 {
    // A zeroed argument block, larger than the kernel's structs (perf_event_attr, 136 bytes
    // in 6.x; io_uring_params, 120); a filter answers before the kernel reads it.
    let mut block = [0u64; 64];
    // perf_event_attr: type PERF_TYPE_SOFTWARE (u32 at 0), size 128 (u32 at 4).
    block[0] = (128u64 << 32) | 1;
    let ptr = block.as_mut_ptr();
    // Prints the outcome of the call that just returned `ret` (errno read at once).
    let report = |name: &str, ret: libc::c_long| {
        if ret >= 0 {
            println!("{name} ok");
        } else {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            println!("{name} errno={errno}");
        }
        ret
    };
    // SAFETY: every pointer is into `block` or a static C string; returned fds are closed.
    unsafe {
        report("keyctl", libc::syscall(libc::SYS_keyctl, 0, -3i32, 0));
        report(
            "add_key",
            libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                c"berth-probe".as_ptr(),
                ptr,
                1usize,
                -3i32,
            ),
        );
        let fd = report(
            "perf_event_open",
            libc::syscall(libc::SYS_perf_event_open, ptr, 0, -1, -1, 0),
        );
        if fd >= 0 {
            libc::close(fd as libc::c_int);
        }
        block = [0u64; 64];
        let fd = report(
            "io_uring_setup",
            libc::syscall(libc::SYS_io_uring_setup, 1u32, block.as_mut_ptr()),
        );
        if fd >= 0 {
            libc::close(fd as libc::c_int);
        }
        report(
            "unshare",
            libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER),
        );
    }
    0
}
