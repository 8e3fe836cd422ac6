//! The container's side: one UDP socket per published port, all in one epoll set, drained by
//! one thread pinned to its own CPU. It counts what arrives and, while a case asks for it,
//! answers the first datagram of each flow once (so HOST's conntrack entry becomes
//! ESTABLISHED). Its own CPU time is not part of the measured cost.
//!
//! RLIMIT_NOFILE: root here lacks CAP_SYS_RESOURCE and the hard limit is 20,000, fewer than
//! 20,000 sockets plus the process's other fds. Ports beyond what fits are bound by forked
//! holder processes (in the same namespace) that only keep them bound; the sink thread itself
//! binds the last ports, the measured one among them. Either way every published port has a
//! bound socket in CTR, as in a container that listens on all of them.

use std::{
    collections::HashSet,
    mem,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};

use super::{
    sys,
    topology::{Netns, join},
};

#[derive(Default)]
struct Ctl {
    stop: AtomicBool,
    reply_once: AtomicBool,
    /// Bumped at each case: forgets which flows were answered.
    generation: AtomicU64,
    received: AtomicU64,
}

pub struct Sink {
    ctl: Arc<Ctl>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// Per-socket receive buffer: a burst the sink is slow to drain is queued, not dropped.
const RCVBUF: libc::c_int = 1 << 20;
const RECV_BATCH: usize = 32;

impl Sink {
    /// Binds every port in `ns` (0.0.0.0) and returns once all are bound.
    pub fn start(ns: &Netns, ports: &[u16], cpu: usize) -> Result<Self> {
        let ctl = Arc::new(Ctl::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let ports = ports.to_vec();
        let c = ctl.clone();
        let thread = ns.spawn_in("sink", Some(cpu), move || serve(&ports, &c, ready_tx))?;
        let mut sink = Sink {
            ctl,
            thread: Some(thread),
        };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            // The thread failed (its error explains) or is stuck binding.
            return Err(sink
                .stop()
                .err()
                .unwrap_or_else(|| anyhow!("the sink did not bind its ports within 60 s")));
        }
        Ok(sink)
    }

    /// Starts a case: reply once per flow or never; counts go on.
    pub fn begin_case(&self, reply_once: bool) {
        self.ctl.reply_once.store(reply_once, Ordering::SeqCst);
        self.ctl.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn received(&self) -> u64 {
        self.ctl.received.load(Ordering::SeqCst)
    }

    pub fn stop(&mut self) -> Result<()> {
        self.ctl.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => join(t),
            None => Ok(()),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn serve(ports: &[u16], ctl: &Ctl, ready: mpsc::Sender<()>) -> Result<()> {
    let limit = sys::raise_nofile(ports.len() as u64 + 1024).context("raising RLIMIT_NOFILE")?;
    // Margin for what other threads open meanwhile (pipes of `ip`/`nft` children, files).
    let budget = |open: u64| limit.saturating_sub(open + 512).max(1) as usize;
    let own = ports.len().min(budget(sys::open_fds()?));
    let (held, ports) = ports.split_at(ports.len() - own);
    // Forked before this thread opens its sockets, so the children's fd tables stay small.
    let _holders = held
        .chunks(budget(sys::open_fds()?))
        .map(Holder::spawn)
        .collect::<Result<Vec<_>>>()?;
    let mut socks = Vec::with_capacity(ports.len());
    for &p in ports {
        let s = sys::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0)
            .context("creating a UDP socket")?;
        sys::set_int_opt(&s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF)
            .context("SO_RCVBUFFORCE")?;
        sys::bind(&s, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, p))
            .with_context(|| format!("binding UDP port {p}"))?;
        socks.push(s);
    }
    // SAFETY: plain syscall; the fd is ours alone.
    let ep = unsafe {
        OwnedFd::from_raw_fd(
            sys::check(libc::epoll_create1(libc::EPOLL_CLOEXEC)).context("epoll_create1")?,
        )
    };
    for (i, s) in socks.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: valid fds and event.
        sys::check(unsafe {
            libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev)
        })
        .context("epoll_ctl")?;
    }
    let _ = ready.send(());

    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut bufs = vec![[0u8; 2048]; RECV_BATCH];
    // SAFETY: sockaddr_in is plain data.
    let mut from: Vec<libc::sockaddr_in> = vec![unsafe { mem::zeroed() }; RECV_BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = (0..RECV_BATCH)
        .map(|k| {
            // SAFETY: mmsghdr is plain data; the pointers set below outlive the loop.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_name = (&mut from[k] as *mut libc::sockaddr_in).cast();
            m.msg_hdr.msg_iov = &mut iovs[k];
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut answered: HashSet<(SocketAddrV4, u16)> = HashSet::new();
    let mut generation = 0;
    while !ctl.stop.load(Ordering::Relaxed) {
        // SAFETY: valid buffer of events.len() entries.
        let n = unsafe {
            libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, 50)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if sys::errno_is(&e, &[libc::EINTR]) {
                continue;
            }
            return Err(e).context("epoll_wait");
        }
        let g = ctl.generation.load(Ordering::SeqCst);
        if g != generation {
            answered.clear();
            generation = g;
        }
        let reply = ctl.reply_once.load(Ordering::SeqCst);
        for ev in &events[..n as usize] {
            let i = ev.u64 as usize;
            let fd = socks[i].as_raw_fd();
            loop {
                for m in &mut msgs {
                    m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as u32;
                }
                // SAFETY: msgs point into bufs/from/iovs, alive and unmoved.
                let got = unsafe {
                    libc::recvmmsg(
                        fd,
                        msgs.as_mut_ptr(),
                        RECV_BATCH as u32,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if got < 0 {
                    let e = std::io::Error::last_os_error();
                    if sys::errno_is(&e, &[libc::EAGAIN, libc::EINTR]) {
                        break;
                    }
                    return Err(e).context("recvmmsg");
                }
                let got = got as usize;
                ctl.received.fetch_add(got as u64, Ordering::SeqCst);
                if reply {
                    for f in &from[..got] {
                        let peer = sys::from_sockaddr(f);
                        if answered.insert((peer, ports[i])) {
                            send_reply(fd, f).context("replying")?;
                        }
                    }
                }
                if got < RECV_BATCH {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn send_reply(fd: libc::c_int, to: &libc::sockaddr_in) -> std::io::Result<()> {
    let msg = b"berth bench reply";
    // SAFETY: valid buffer and address.
    let rc = unsafe {
        libc::sendto(
            fd,
            msg.as_ptr().cast(),
            msg.len(),
            libc::MSG_DONTWAIT,
            (to as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A forked child of the sink thread (so in CTR) that binds `ports` and holds them until
/// dropped (SIGKILL, then reaped). It also dies with the thread that forked it
/// (PR_SET_PDEATHSIG), so a killed bench leaves none behind.
struct Holder {
    pid: libc::pid_t,
}

/// Child-to-parent status: [0 ok | 1 failed][errno i32 LE][port u16 LE].
const STATUS_LEN: usize = 7;

impl Holder {
    fn spawn(ports: &[u16]) -> Result<Self> {
        let (status_r, status_w) = sys::pipe()?;
        // SAFETY: plain syscalls.
        let parent = unsafe { libc::getpid() };
        let pid = sys::check(unsafe { libc::fork() }).context("fork")?;
        if pid == 0 {
            // SAFETY: the child of a multithreaded process; hold_ports only makes
            // async-signal-safe system calls and never returns.
            unsafe { hold_ports(ports, parent, status_w.as_raw_fd()) }
        }
        drop(status_w);
        let holder = Holder { pid };
        let mut status = [0u8; STATUS_LEN];
        let mut f = std::fs::File::from(status_r);
        std::io::Read::read_exact(&mut f, &mut status)
            .context("the port-holder process died before reporting")?;
        if status[0] != 0 {
            let errno = i32::from_le_bytes([status[1], status[2], status[3], status[4]]);
            let port = u16::from_le_bytes([status[5], status[6]]);
            return Err(std::io::Error::from_raw_os_error(errno))
                .with_context(|| format!("binding UDP port {port} in the port-holder process"));
        }
        Ok(holder)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // SAFETY: our own child, reaped exactly once.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Body of a holder child. Only system calls: no allocation, no locks (another thread of the
/// parent may have held the allocator's lock at fork time). It first closes every inherited
/// fd but stdio and its status pipe, so it holds no other thread's pipes open.
unsafe fn hold_ports(ports: &[u16], parent: libc::pid_t, status: libc::c_int) -> ! {
    // SAFETY: system calls on fds and memory this child owns.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        let s = status as libc::c_uint;
        if s > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, s - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, s + 1, u32::MAX, 0u32);
        let report = |ok: bool, errno: i32, port: u16| {
            let mut msg = [0u8; STATUS_LEN];
            msg[0] = u8::from(!ok);
            msg[1..5].copy_from_slice(&errno.to_le_bytes());
            msg[5..7].copy_from_slice(&port.to_le_bytes());
            libc::write(status, msg.as_ptr().cast(), STATUS_LEN);
        };
        for &p in ports {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let sa = sys::sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, p));
            if fd < 0
                || libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    mem::size_of::<libc::sockaddr_in>() as u32,
                ) < 0
            {
                report(false, *libc::__errno_location(), p);
                libc::_exit(1);
            }
        }
        report(true, 0, 0);
        libc::close(status);
        loop {
            libc::pause();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind_udp(port: u16) -> std::io::Result<OwnedFd> {
        let s = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        sys::bind(&s, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
        Ok(s)
    }

    /// Root only (a namespace of its own).
    #[test]
    fn holder_processes_keep_ports_bound_until_dropped() {
        // SAFETY: plain syscall.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test builds a network namespace: run the tests as root"
        );
        let ns = super::super::topology::lone_netns("ctr").unwrap();
        ns.run_in("holder test", || {
            let holder = Holder::spawn(&[31000, 31001, 31002])?;
            for p in [31000, 31002] {
                let e = bind_udp(p).expect_err("the port is held");
                assert!(sys::errno_is(&e, &[libc::EADDRINUSE]), "{e}");
            }
            drop(holder);
            bind_udp(31001)?;
            let e = Holder::spawn(&[31003, 31003])
                .err()
                .expect("a port twice fails");
            assert!(
                format!("{e:#}").contains("port 31003 in the port-holder"),
                "{e:#}"
            );
            Ok(())
        })
        .unwrap();
    }
}
