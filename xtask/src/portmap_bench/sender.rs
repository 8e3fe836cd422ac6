//! The client's side: a header-included raw IPv4 socket (`IPPROTO_RAW`) sending prebuilt UDP
//! datagrams with sendmmsg(2), from one thread pinned to its CPU in CLIENT, bounded by a
//! packet count and a time limit. It measures its own run time and the ksoftirqd threads'
//! around the send loop; the whole forwarding path runs inside its sendmmsg calls (see
//! [`super::cpu`]).

use std::{
    mem,
    net::{SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Mode, cpu,
    packet::{self, Flow, FlowPatcher},
    sys,
    topology::{NEW_FLOW_SRC, Netns, join},
};

#[derive(Clone, Copy, Debug)]
pub struct SendSpec {
    /// The flow of one-way and established mode; new-flow mode keeps its destination and
    /// varies the source (see [`packet::new_flow_source`]).
    pub flow: Flow,
    pub mode: Mode,
    pub payload: usize,
    pub max_packets: u64,
    pub max_time: Duration,
    pub batch: usize,
    pub cpu: usize,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SendResult {
    pub packets: u64,
    /// The sender thread's run time over the loop (user + system + softirq run in its
    /// context), ns.
    pub sender_ns: u64,
    /// Time the sender was runnable but waited for its CPU (other load), ns.
    pub sender_wait_ns: u64,
    /// Sum of all ksoftirqd threads' run time over the loop (+ a 20 ms tail), ns.
    pub softirq_ns: u64,
    pub wall: Duration,
    /// sendmmsg calls that failed with ENOBUFS/EAGAIN and were retried.
    pub retries: u64,
}

/// Makes the flow's HOST conntrack entry ESTABLISHED: one datagram from an ordinary UDP socket
/// bound to the flow's source, then waits for the sink's single answer (retries up to 10 times
/// 200 ms).
pub fn prime(client: &Netns, flow: Flow) -> Result<()> {
    client.run_in("prime", move || {
        let s = UdpSocket::bind(SocketAddrV4::new(flow.src, flow.sport))
            .with_context(|| format!("binding {}:{}", flow.src, flow.sport))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf = [0u8; 64];
        for _ in 0..10 {
            s.send_to(
                b"berth bench prime",
                SocketAddrV4::new(flow.dst, flow.dport),
            )?;
            if s.recv_from(&mut buf).is_ok() {
                return Ok(());
            }
        }
        bail!(
            "no reply to {}:{} from {}:{} within 2 s: the reply path (sink, un-DNAT, \
             forwarding back to CLIENT) does not work",
            flow.src,
            flow.sport,
            flow.dst,
            flow.dport
        )
    })
}

/// Runs one measured send loop on a thread in `client`.
pub fn send(client: &Netns, spec: SendSpec, ksoftirqd: cpu::Ksoftirqd) -> Result<SendResult> {
    join(client.spawn_in("sender", Some(spec.cpu), move || {
        send_loop(&spec, &ksoftirqd)
    })?)
}

fn send_loop(spec: &SendSpec, ksoftirqd: &cpu::Ksoftirqd) -> Result<SendResult> {
    let fd = sys::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)
        .context("creating a raw IPv4 socket")?;
    let template = packet::build(spec.flow, spec.payload);
    let patcher = FlowPatcher::new(&template);
    let new_flow = spec.mode == Mode::NewFlow;
    let batch = spec.batch.max(1);
    // One buffer serves every message of a fixed flow; new-flow mode needs one per message.
    let mut bufs = vec![template; if new_flow { batch } else { 1 }];
    let dst = sys::sockaddr(SocketAddrV4::new(spec.flow.dst, 0));
    let nbufs = bufs.len();
    let mut iovs: Vec<libc::iovec> = (0..batch)
        .map(|k| {
            let b = &mut bufs[k % nbufs];
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            }
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = (0..batch)
        .map(|k| {
            // SAFETY: mmsghdr is plain data; the pointers set below outlive the loop.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_name = (&dst as *const libc::sockaddr_in).cast_mut().cast();
            m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as u32;
            m.msg_hdr.msg_iov = &mut iovs[k];
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();

    let mut next_flow = 0u64;
    let mut sent = 0u64;
    let mut retries = 0u64;
    let soft_before = ksoftirqd.runtimes()?;
    let cpu_before = cpu::own_schedstat()?;
    let start = Instant::now();
    while sent < spec.max_packets && !sys::stop_requested() {
        let want = (spec.max_packets - sent).min(batch as u64) as usize;
        if new_flow {
            for (k, b) in bufs[..want].iter_mut().enumerate() {
                let (src, sport) = packet::new_flow_source(NEW_FLOW_SRC, next_flow + k as u64);
                patcher.patch(b, src, sport);
            }
        }
        // SAFETY: msgs point at dst, iovs and bufs, all alive and unmoved.
        let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), want as u32, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if sys::errno_is(&e, &[libc::ENOBUFS, libc::EAGAIN, libc::EINTR]) && retries < 1_000_000
            {
                retries += 1;
                continue;
            }
            return Err(e).context("sendmmsg on the raw socket");
        }
        sent += n as u64;
        next_flow += n as u64;
        if start.elapsed() >= spec.max_time {
            break;
        }
    }
    let wall = start.elapsed();
    let cpu_after = cpu::own_schedstat()?;
    // Softirq work deferred to ksoftirqd finishes right after the last send.
    std::thread::sleep(Duration::from_millis(20));
    let soft_after = ksoftirqd.runtimes()?;
    Ok(SendResult {
        packets: sent,
        sender_ns: cpu_after.run_ns.saturating_sub(cpu_before.run_ns),
        sender_wait_ns: cpu_after.wait_ns.saturating_sub(cpu_before.wait_ns),
        softirq_ns: cpu::delta_sum(&soft_before, &soft_after),
        wall,
        retries,
    })
}
