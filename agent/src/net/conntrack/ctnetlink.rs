//! ctnetlink (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_CTNETLINK`) as the conntrack counter
//! uses it: a dump of the IPv4 table (`IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`), lookups of one
//! entry by its original tuple (the same request without it), and a socket subscribed to the
//! `NFNLGRP_CONNTRACK_NEW` and `NFNLGRP_CONNTRACK_DESTROY` groups. All read each entry down to
//! its id (`CTA_ID`, stable for the entry's life) and the distinct IPv4
//! addresses of its original and reply tuples.
//!
//! Messages are parsed by `netlink-packet-netfilter` (the rust-netlink family rtnetlink comes
//! from), which knows the tuples; `CTA_ID` is one of the attributes it leaves raw, read here as
//! the kernel's big-endian u32. Sockets are `netlink-sys`'s.
//!
//! Every socket here acts in the namespace of the thread that opened it, for good.

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use netlink_packet_core::{
    Emitable as _, NLA_TYPE_MASK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, Nla as _,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, Tuple},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// `CTA_ID` and `CTA_ZONE` (linux/netfilter/nfnetlink_conntrack.h), not among the crate's
/// named attributes.
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
/// `IPCTNL_MSG_CT_GET` in the ctnetlink subsystem.
const CT_GET: u16 = ((libc::NFNL_SUBSYS_CTNETLINK as u16) << 8) | 1;
/// Multicast groups (linux/netfilter/nfnetlink.h, `enum nfnetlink_groups`).
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
/// Big enough for any datagram: dump replies are at most 32 KiB, events a few hundred bytes.
const RECV_BUF: usize = 64 * 1024;
/// A dump that has not answered in this long is abandoned.
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

/// The distinct IPv4 addresses of an entry's two tuples (at most four).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    ips: [Ipv4Addr; 4],
    len: u8,
}

impl Default for Addrs {
    fn default() -> Self {
        Self {
            ips: [Ipv4Addr::UNSPECIFIED; 4],
            len: 0,
        }
    }
}

impl Addrs {
    fn push(&mut self, ip: Ipv4Addr) {
        let n = usize::from(self.len);
        if n < self.ips.len() && !self.ips[..n].contains(&ip) {
            self.ips[n] = ip;
            self.len += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ips[..usize::from(self.len)].iter().copied()
    }
}

impl FromIterator<Ipv4Addr> for Addrs {
    fn from_iter<T: IntoIterator<Item = Ipv4Addr>>(iter: T) -> Self {
        let mut a = Addrs::default();
        for ip in iter {
            a.push(ip);
        }
        a
    }
}

/// One IPv4 entry: its id and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub id: u32,
    pub addrs: Addrs,
    /// What finds it again ([`Lookup`]): its `CTA_TUPLE_ORIG` and `CTA_ZONE` attributes as
    /// the kernel sent them; read for dumps only.
    pub key: Option<Box<[u8]>>,
}

/// One message of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub event: Event,
    pub flags: u16,
    pub seq: u32,
}

/// What one message said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An entry: a dump reply or a NEW event.
    New(Flow),
    /// A DESTROY event.
    Destroy(u32),
    /// The end of a dump.
    Done,
    /// An error answer to a request (`NLMSG_ERROR` with a code).
    Error(i32),
    /// Anything else: another family, another subsystem, an ack, a message without an id.
    Other,
}

/// The messages of one datagram, in order; `keys` reads each entry's [`Flow::key`]. A message
/// that does not parse ends the datagram: what follows it cannot be found.
pub fn parse(datagram: &[u8], keys: bool) -> Vec<Msg> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < datagram.len() {
        let Ok(msg) = NetlinkMessage::<NetfilterMessage>::deserialize(&datagram[at..]) else {
            break;
        };
        let len = msg.header.length as usize;
        out.push(Msg {
            event: event(&msg, keys),
            flags: msg.header.flags,
            seq: msg.header.sequence_number,
        });
        if len == 0 {
            break;
        }
        at += (len + 3) & !3;
    }
    out
}

fn event(msg: &NetlinkMessage<NetfilterMessage>, keys: bool) -> Event {
    let nf = match &msg.payload {
        NetlinkPayload::Done(_) => return Event::Done,
        NetlinkPayload::Error(e) => {
            return e.code.map_or(Event::Other, |c| Event::Error(c.get()));
        }
        NetlinkPayload::InnerMessage(nf) => nf,
        _ => return Event::Other,
    };
    if nf.header.family != NetfilterProtoFamily::IPv4 {
        return Event::Other;
    }
    match &nf.inner {
        NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) => {
            flow(attrs, keys).map_or(Event::Other, Event::New)
        }
        NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(attrs)) => {
            id(attrs).map_or(Event::Other, Event::Destroy)
        }
        _ => Event::Other,
    }
}

fn id(attrs: &[ConntrackAttribute]) -> Option<u32> {
    attrs.iter().find_map(|a| match a {
        ConntrackAttribute::Other(nla)
            if nla.kind() & NLA_TYPE_MASK == CTA_ID && nla.value_len() == 4 =>
        {
            let mut v = [0u8; 4];
            nla.emit_value(&mut v);
            Some(u32::from_be_bytes(v))
        }
        _ => None,
    })
}

fn flow(attrs: &[ConntrackAttribute], keys: bool) -> Option<Flow> {
    let mut addrs = Addrs::default();
    for a in attrs {
        let (ConntrackAttribute::CtaTupleOrig(tuples) | ConntrackAttribute::CtaTupleReply(tuples)) =
            a
        else {
            continue;
        };
        for t in tuples {
            let Tuple::Ip(ips) = t else { continue };
            for ip in ips {
                if let IPTuple::SourceAddress(IpAddr::V4(v4))
                | IPTuple::DestinationAddress(IpAddr::V4(v4)) = ip
                {
                    addrs.push(*v4);
                }
            }
        }
    }
    Some(Flow {
        id: id(attrs)?,
        addrs,
        key: keys.then(|| key(attrs)),
    })
}

fn key(attrs: &[ConntrackAttribute]) -> Box<[u8]> {
    let parts: Vec<&ConntrackAttribute> = attrs
        .iter()
        .filter(|a| match a {
            ConntrackAttribute::CtaTupleOrig(_) => true,
            ConntrackAttribute::Other(nla) => nla.kind() & NLA_TYPE_MASK == CTA_ZONE,
            _ => false,
        })
        .collect();
    let mut out = vec![0; parts.iter().map(|a| a.buffer_len()).sum()];
    let mut at = 0;
    for a in parts {
        a.emit(&mut out[at..]);
        at += a.buffer_len();
    }
    out.into_boxed_slice()
}

/// Reads every IPv4 entry of the calling thread's namespace, calling `each` once per reply
/// entry (an entry may come twice if it moved while the dump ran).
pub fn dump(mut each: impl FnMut(Flow)) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    set_timeout(socket.as_raw_fd(), DUMP_TIMEOUT)?;
    const SEQ: u32 = 1;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = SEQ;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
            ConntrackMessage::Get(vec![]),
        )),
    );
    req.finalize();
    let mut bytes = vec![0; req.buffer_len()];
    req.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let n = recv(&socket, &mut buf, 0)?;
        for Msg { event, flags, .. } in parse(&buf[..n], true) {
            if flags & NLM_F_DUMP_INTR != 0 {
                return Err(io::Error::other(
                    "the conntrack dump was interrupted (NLM_F_DUMP_INTR)",
                ));
            }
            match event {
                Event::New(f) => each(f),
                Event::Done => return Ok(()),
                Event::Error(code) => return Err(io::Error::from_raw_os_error(-code)),
                Event::Destroy(_) | Event::Other => {}
            }
        }
    }
}

/// Finds single entries again by their [`Flow::key`] (`IPCTNL_MSG_CT_GET` without
/// `NLM_F_DUMP`: one hash lookup in the kernel, not a walk of the table).
pub struct Lookup {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Lookup {
    pub fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        set_timeout(socket.as_raw_fd(), DUMP_TIMEOUT)?;
        Ok(Self {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// The id of the entry `key` names now; `None` when there is none.
    pub fn id_of(&mut self, key: &[u8]) -> io::Result<Option<u32>> {
        self.seq = self.seq.wrapping_add(1);
        let len = 20 + key.len();
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
        req.extend_from_slice(&CT_GET.to_ne_bytes());
        req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0.
        req.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        req.extend_from_slice(key);
        self.socket.send(&req, 0)?;
        loop {
            let n = recv(&self.socket, &mut self.buf, 0)?;
            // A late answer to an earlier request is skipped.
            for m in parse(&self.buf[..n], false) {
                if m.seq != self.seq {
                    continue;
                }
                return match m.event {
                    Event::New(f) => Ok(Some(f.id)),
                    Event::Error(code) if code == -libc::ENOENT => Ok(None),
                    Event::Error(code) => Err(io::Error::from_raw_os_error(-code)),
                    _ => Err(io::Error::other(
                        "an unexpected answer to a conntrack lookup",
                    )),
                };
            }
        }
    }
}

/// A socket subscribed to the NEW and DESTROY events of the calling thread's namespace.
pub struct Events {
    socket: Socket,
    buf: Vec<u8>,
}

impl Events {
    /// Subscribes, with a receive buffer of `rcvbuf` bytes (forced past `rmem_max` when the
    /// caller may, as root can).
    pub fn subscribe(rcvbuf: usize) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        let size = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
        if setsockopt(socket.as_raw_fd(), libc::SO_RCVBUFFORCE, size).is_err() {
            socket.set_rx_buf_sz(size)?;
        }
        // Lost events are reported (ENOBUFS), so the counts are rebuilt rather than drift.
        socket.set_no_enobufs(false)?;
        socket.add_membership(NFNLGRP_CONNTRACK_NEW)?;
        socket.add_membership(NFNLGRP_CONNTRACK_DESTROY)?;
        socket.set_non_blocking(true)?;
        Ok(Self {
            socket,
            buf: vec![0; RECV_BUF],
        })
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// The events of one queued datagram; `Ok(None)` when none is queued. `ENOBUFS` means
    /// events were lost.
    pub fn queued(&mut self) -> io::Result<Option<Vec<Event>>> {
        match recv(&self.socket, &mut self.buf, libc::MSG_DONTWAIT) {
            Ok(n) => Ok(Some(
                parse(&self.buf[..n], false)
                    .into_iter()
                    .map(|m| m.event)
                    .collect(),
            )),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Throws away every queued event (after a loss: they predate the dump that follows).
    pub fn discard_queued(&mut self) {
        loop {
            match recv(&self.socket, &mut self.buf, libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(_) => return,
            }
        }
    }
}

/// One datagram into `buf`; a datagram larger than `buf` is an error, not a silent cut.
fn recv(socket: &Socket, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    let n = socket.recv(&mut &mut buf[..], flags | libc::MSG_TRUNC)?;
    if n > buf.len() {
        return Err(io::Error::other(format!(
            "a ctnetlink datagram of {n} bytes exceeds the {} byte buffer",
            buf.len()
        )));
    }
    Ok(n)
}

fn set_timeout(fd: RawFd, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(fd, libc::SO_RCVTIMEO, tv)
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, value: T) -> io::Result<()> {
    // SAFETY: `value` is a plain value of the size passed, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&raw const value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NEW event captured on this kernel (6.18): UDP 10.213.0.1:40000 -> 10.213.0.2:9999,
    /// unreplied, CTA_ID 0x43d7d70a; the nlattr nesting is ORIG/REPLY -> IP/PROTO.
    const NEW: &[u8] = &[
        0x94, 0, 0, 0, 0x00, 0x01, 0x00, 0x06, 0, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr
        0x02, 0, 0, 0, // nfgenmsg: AF_INET
        0x34, 0, 0x01, 0x80, 0x14, 0, 0x01, 0x80, // CTA_TUPLE_ORIG, CTA_TUPLE_IP
        0x08, 0, 0x01, 0, 0x0a, 0xd5, 0, 0x01, 0x08, 0, 0x02, 0, 0x0a, 0xd5, 0, 0x02, //
        0x1c, 0, 0x02, 0x80, 0x05, 0, 0x01, 0, 0x11, 0, 0, 0, 0x06, 0, 0x02, 0, 0x9c, 0x40, 0, 0,
        0x06, 0, 0x03, 0, 0x27, 0x0f, 0, 0, //
        0x34, 0, 0x02, 0x80, 0x14, 0, 0x01, 0x80, // CTA_TUPLE_REPLY, CTA_TUPLE_IP
        0x08, 0, 0x01, 0, 0x0a, 0xd5, 0, 0x02, 0x08, 0, 0x02, 0, 0x0a, 0xd5, 0, 0x01, //
        0x1c, 0, 0x02, 0x80, 0x05, 0, 0x01, 0, 0x11, 0, 0, 0, 0x06, 0, 0x02, 0, 0x27, 0x0f, 0, 0,
        0x06, 0, 0x03, 0, 0x9c, 0x40, 0, 0, //
        0x08, 0, 0x0c, 0, 0x43, 0xd7, 0xd7, 0x0a, // CTA_ID
        0x08, 0, 0x03, 0, 0, 0, 0, 0x08, 0x08, 0, 0x07, 0, 0, 0, 0, 0x1e, // status, timeout
    ];

    /// Its DESTROY event (`conntrack -D`): IPCTNL_MSG_CT_DELETE, the same tuples and id.
    fn destroy() -> Vec<u8> {
        let mut m = NEW.to_vec();
        m[4] = 0x02;
        m[6] = 0;
        m
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn a_captured_new_event_gives_its_id_and_both_addresses_once() {
        let evs: Vec<Event> = parse(NEW, false).into_iter().map(|m| m.event).collect();
        assert_eq!(evs.len(), 1);
        let Event::New(f) = &evs[0] else {
            panic!("{evs:?}")
        };
        assert_eq!(f.id, 0x43d7_d70a);
        assert_eq!(
            f.addrs.iter().collect::<Vec<_>>(),
            [ip("10.213.0.1"), ip("10.213.0.2")]
        );
    }

    #[test]
    fn a_destroy_event_gives_its_id() {
        assert_eq!(
            parse(&destroy(), false)[0].event,
            Event::Destroy(0x43d7_d70a)
        );
    }

    #[test]
    fn a_nat_entry_counts_up_to_four_distinct_addresses() {
        let mut m = NEW.to_vec();
        // The reply tuple from 172.30.1.2 to 10.200.1.2, as after DNAT and SNAT.
        m[84..88].copy_from_slice(&[172, 30, 1, 2]);
        m[92..96].copy_from_slice(&[10, 200, 1, 2]);
        let Event::New(f) = &parse(&m, false)[0].event else {
            panic!()
        };
        assert_eq!(f.addrs.iter().count(), 4, "{f:?}");
    }

    #[test]
    fn datagrams_of_several_messages_are_read_in_order() {
        let mut d = NEW.to_vec();
        d.extend_from_slice(&destroy());
        let evs: Vec<Event> = parse(&d, false).into_iter().map(|m| m.event).collect();
        assert!(matches!(evs[0], Event::New(_)), "{evs:?}");
        assert_eq!(evs[1], Event::Destroy(0x43d7_d70a));
    }

    #[test]
    fn other_families_truncated_and_idless_messages_count_nothing() {
        let mut v6 = NEW.to_vec();
        v6[16] = libc::AF_INET6 as u8;
        assert_eq!(parse(&v6, false)[0].event, Event::Other);
        assert!(parse(&NEW[..100], false).is_empty(), "truncated");
        assert!(parse(&[], false).is_empty());
        // CTA_ID renamed to an attribute nobody reads: no id, no flow.
        let mut idless = NEW.to_vec();
        idless[126] = 0x3f;
        assert_eq!(parse(&idless, false)[0].event, Event::Other);
    }

    #[test]
    fn a_dumped_entrys_key_is_its_original_tuple_as_the_kernel_sent_it() {
        let Event::New(f) = &parse(NEW, true)[0].event else {
            panic!()
        };
        assert_eq!(f.key.as_deref(), Some(&NEW[20..72]));
    }
}
