//! The container's side: one UDP socket per published port, all in one epoll set, drained by
//! one thread pinned to its own CPU. It counts what arrives and, while a case asks for it,
//! answers the first datagram of each flow once (so HOST's conntrack entry becomes
//! ESTABLISHED). Its own CPU time is not part of the measured cost.

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
