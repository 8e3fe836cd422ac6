//! IPv4 + UDP datagrams built by hand for the raw (`IPPROTO_RAW`, header included) sender.
//!
//! The kernel fills the IPv4 total length and header checksum of header-included raw packets
//! anyway (`raw_send_hdrinc` in net/ipv4/raw.c); we fill them too so a packet is valid as
//! built. The UDP checksum is always correct: for new-flow mode [`FlowPatcher`] rewrites the
//! source address and port of a prebuilt packet and fixes the checksum in a few additions.

use std::net::Ipv4Addr;

pub const IPV4_HEADER: usize = 20;
pub const UDP_HEADER: usize = 8;
/// Byte offsets inside a built packet.
const IP_CHECKSUM: usize = 10;
const IP_SADDR: usize = 12;
const UDP_SPORT: usize = IPV4_HEADER;
const UDP_CHECKSUM: usize = IPV4_HEADER + 6;

/// One UDP flow's addresses and ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// Sum of big-endian 16-bit words (an odd last byte is padded with zero), not yet folded.
pub fn ones_sum(data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u32 = chunks
        .by_ref()
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds carries back in (RFC 1071).
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// RFC 791 header checksum of a 20-byte header whose checksum field is zero.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    !fold(ones_sum(header))
}

fn addr_sum(a: Ipv4Addr) -> u32 {
    ones_sum(&a.octets())
}

/// Pseudo-header (RFC 768) + UDP header and payload, checksum field zero, folded not inverted.
fn udp_partial(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u32 {
    addr_sum(src) + addr_sum(dst) + 17 + segment.len() as u32 + ones_sum(segment)
}

/// Final UDP checksum from a partial sum; 0 is sent as 0xffff (0 means "no checksum").
fn finish_udp(partial: u32) -> u16 {
    match !fold(partial) {
        0 => 0xffff,
        c => c,
    }
}

/// Full UDP checksum of `segment` (header + payload) with its checksum field zeroed.
pub fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    finish_udp(udp_partial(src, dst, segment))
}

/// An IPv4/UDP packet for `flow` with `payload_len` payload bytes (a recognisable pattern).
pub fn build(flow: Flow, payload_len: usize) -> Vec<u8> {
    let total = IPV4_HEADER + UDP_HEADER + payload_len;
    assert!(total <= usize::from(u16::MAX), "packet of {total} bytes");
    let mut p = vec![0u8; total];
    p[0] = 0x45; // version 4, 5 words of header
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&1u16.to_be_bytes()); // fixed id: the kernel picks none then
    p[6] = 0x40; // don't fragment
    p[8] = 64; // ttl
    p[9] = 17; // udp
    p[IP_SADDR..IP_SADDR + 4].copy_from_slice(&flow.src.octets());
    p[16..20].copy_from_slice(&flow.dst.octets());
    let udp_len = (UDP_HEADER + payload_len) as u16;
    let u = IPV4_HEADER;
    p[u..u + 2].copy_from_slice(&flow.sport.to_be_bytes());
    p[u + 2..u + 4].copy_from_slice(&flow.dport.to_be_bytes());
    p[u + 4..u + 6].copy_from_slice(&udp_len.to_be_bytes());
    for (i, b) in p[u + UDP_HEADER..].iter_mut().enumerate() {
        *b = b"berth portmap bench "[i % 20];
    }
    let ip = ipv4_checksum(&p[..IPV4_HEADER]);
    p[IP_CHECKSUM..IP_CHECKSUM + 2].copy_from_slice(&ip.to_be_bytes());
    let udp = udp_checksum(flow.src, flow.dst, &p[u..]);
    p[UDP_CHECKSUM..UDP_CHECKSUM + 2].copy_from_slice(&udp.to_be_bytes());
    p
}

/// Rewrites source address and port of packets built by [`build`] for one destination and
/// payload, keeping both checksums right, without summing the payload again.
pub struct FlowPatcher {
    /// UDP partial sum with source address, source port and checksum all zero.
    udp_base: u32,
    /// IPv4 header sum with source address and checksum zero.
    ip_base: u32,
}

impl FlowPatcher {
    pub fn new(template: &[u8]) -> Self {
        let mut t = template.to_vec();
        t[IP_CHECKSUM..IP_CHECKSUM + 2].fill(0);
        t[IP_SADDR..IP_SADDR + 4].fill(0);
        t[UDP_SPORT..UDP_SPORT + 2].fill(0);
        t[UDP_CHECKSUM..UDP_CHECKSUM + 2].fill(0);
        let dst = Ipv4Addr::new(t[16], t[17], t[18], t[19]);
        FlowPatcher {
            udp_base: udp_partial(Ipv4Addr::UNSPECIFIED, dst, &t[IPV4_HEADER..]),
            ip_base: ones_sum(&t[..IPV4_HEADER]),
        }
    }

    pub fn patch(&self, packet: &mut [u8], src: Ipv4Addr, sport: u16) {
        let s = addr_sum(src);
        packet[IP_SADDR..IP_SADDR + 4].copy_from_slice(&src.octets());
        packet[IP_CHECKSUM..IP_CHECKSUM + 2]
            .copy_from_slice(&(!fold(self.ip_base + s)).to_be_bytes());
        packet[UDP_SPORT..UDP_SPORT + 2].copy_from_slice(&sport.to_be_bytes());
        let udp = finish_udp(self.udp_base + s + u32::from(sport));
        packet[UDP_CHECKSUM..UDP_CHECKSUM + 2].copy_from_slice(&udp.to_be_bytes());
    }
}

/// Source of the `i`-th packet in new-flow mode: ports 1024..=65535, then the next address
/// from `first` on (at most 200 addresses, then it wraps), so no 5-tuple repeats within
/// 12.9 M packets.
pub fn new_flow_source(first: Ipv4Addr, i: u64) -> (Ipv4Addr, u16) {
    const PORTS: u64 = 65536 - 1024;
    let port = 1024 + (i % PORTS) as u16;
    let addr = u32::from(first) + ((i / PORTS) % 200) as u32;
    (Ipv4Addr::from(addr), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow {
            src: Ipv4Addr::new(10, 251, 1, 2),
            dst: Ipv4Addr::new(10, 251, 1, 1),
            sport: 45000,
            dport: 20099,
        }
    }

    /// A packet verifies when the one's complement sum over everything, checksum included,
    /// is 0xffff.
    fn udp_verifies(p: &[u8]) -> bool {
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let seg = &p[IPV4_HEADER..];
        fold(addr_sum(src) + addr_sum(dst) + 17 + seg.len() as u32 + ones_sum(seg)) == 0xffff
    }

    #[test]
    fn ipv4_checksum_matches_the_textbook_example() {
        // The worked example of the IPv4 header checksum (Wikipedia, "IPv4 header checksum").
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(fold(ones_sum(&h)), 0xffff);
    }

    #[test]
    fn odd_lengths_are_padded_with_a_zero_byte() {
        assert_eq!(ones_sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn built_packet_has_the_right_lengths_fields_and_checksums() {
        let p = build(flow(), 160);
        assert_eq!(p.len(), 188);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 188);
        assert_eq!(p[9], 17);
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 45000);
        assert_eq!(u16::from_be_bytes([p[22], p[23]]), 20099);
        assert_eq!(u16::from_be_bytes([p[24], p[25]]), 168);
        assert_eq!(
            fold(ones_sum(&p[..IPV4_HEADER])),
            0xffff,
            "ip header verifies"
        );
        assert!(udp_verifies(&p));
    }

    #[test]
    fn patched_packets_equal_freshly_built_ones() {
        let template = build(flow(), 160);
        let patcher = FlowPatcher::new(&template);
        let mut p = template.clone();
        for i in [0u64, 1, 777, 64_511, 64_512, 199_999, 12_000_000] {
            let (src, sport) = new_flow_source(Ipv4Addr::new(10, 251, 1, 16), i);
            patcher.patch(&mut p, src, sport);
            let fresh = build(
                Flow {
                    src,
                    sport,
                    ..flow()
                },
                160,
            );
            assert_eq!(p, fresh, "packet {i}");
            assert!(udp_verifies(&p));
        }
    }

    #[test]
    fn new_flow_sources_do_not_repeat_across_a_port_wrap() {
        let first = Ipv4Addr::new(10, 251, 1, 16);
        assert_eq!(new_flow_source(first, 0), (first, 1024));
        assert_eq!(new_flow_source(first, 64_511), (first, 65535));
        assert_eq!(
            new_flow_source(first, 64_512),
            (Ipv4Addr::new(10, 251, 1, 17), 1024)
        );
    }

    #[test]
    fn a_zero_udp_checksum_is_sent_as_all_ones() {
        assert_eq!(finish_udp(0xffff), 0xffff);
    }
}
