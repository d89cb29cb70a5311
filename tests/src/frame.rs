//! The one frame builder of the tests (BPF_PROG_TEST_RUN tables and lab alike), on the
//! `etherparse` crate: headers are etherparse's, with true lengths and valid checksums.
//! A deliberately broken frame is a well-formed one plus one explicit edit, named after
//! what it breaks ([`truncated`], [`with_ihl`], [`with_ip_version`], [`tagged`], the
//! fields of [`V4`]); frames no stack would build at all come from scapy in the lab
//! ([`crate::scapy`]). Reading frames back ([`describe`], [`targets`]) uses etherparse too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, Ethernet2Header, IcmpEchoHeader,
    Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpFragOffset, IpNumber, Ipv4Header,
    Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, NetSlice, SlicedPacket, TcpHeader,
    TransportSlice, UdpHeader,
};

pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
/// The MAC of the all-nodes group ff02::1.
pub const ALL_NODES: Mac = [0x33, 0x33, 0, 0, 0, 1];

/// TCP flags, as in the header's flags byte.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;
pub const SYN_ACK: u8 = SYN | ACK;

/// ICMP and ICMPv6 types the tests name.
pub mod icmp {
    pub const V4_DEST_UNREACHABLE: u8 = 3;
    pub const V4_REDIRECT: u8 = 5;
    pub const V6_PACKET_TOO_BIG: u8 = 2;
    pub const MLD_QUERY: u8 = 130;
    pub const ROUTER_SOLICITATION: u8 = 133;
    pub const ROUTER_ADVERTISEMENT: u8 = 134;
    pub const NEIGHBOUR_SOLICITATION: u8 = 135;
    pub const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
    pub const REDIRECT: u8 = 137;
    pub const MLD_V2_REPORT: u8 = 143;
}

/// Neighbour discovery option types.
pub mod nd_option {
    pub const SOURCE_LL: u8 = 1;
    pub const TARGET_LL: u8 = 2;
    pub const MTU: u8 = 5;
}

/// A transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6 echo request (by the address family).
    EchoRequest {
        id: u16,
    },
    /// ICMP or ICMPv6 echo reply.
    EchoReply {
        id: u16,
    },
    /// Any other ICMP or ICMPv6 message: type, code, the header's last four bytes.
    Icmp {
        kind: u8,
        code: u8,
        rest: [u8; 4],
    },
}

/// A TCP segment with sequence number 1 and acknowledgement number 0 (a first SYN).
pub fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    tcp_at(sport, dport, flags, 1, 0)
}

/// A TCP segment with the given sequence and acknowledgement numbers (connection tracking
/// follows both: a SYN-ACK must acknowledge the SYN, an RST must lie near the sender's
/// position).
pub fn tcp_at(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
        seq,
        ack,
    }
}

pub fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

pub fn echo_request(id: u16) -> L4 {
    L4::EchoRequest { id }
}

pub fn echo_reply(id: u16) -> L4 {
    L4::EchoReply { id }
}

/// An ICMP/ICMPv6 message of type `kind`, code 0.
pub fn icmp(kind: u8) -> L4 {
    L4::Icmp {
        kind,
        code: 0,
        rest: [0; 4],
    }
}

fn v4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => panic!("{a} is not an IPv4 address"),
    }
}

fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => panic!("{a} is not an IPv6 address"),
    }
}

/// Parses an address literal; panics on a bad one (a test bug).
pub fn addr(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad address {s:?}: {e}"))
}

/// The transport header of `l4` followed by `payload`, with its checksum for the
/// `src`/`dst` pseudo-header, and its IP protocol number.
pub fn transport(src: IpAddr, dst: IpAddr, l4: L4, payload: &[u8]) -> (u8, Vec<u8>) {
    let mut out = Vec::new();
    let proto = match l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
            seq,
            ack,
        } => {
            let mut h = TcpHeader::new(sport, dport, seq, 65535);
            h.acknowledgment_number = ack;
            h.fin = flags & FIN != 0;
            h.syn = flags & SYN != 0;
            h.rst = flags & RST != 0;
            h.psh = flags & 0x08 != 0;
            h.ack = flags & ACK != 0;
            h.urg = flags & 0x20 != 0;
            h.checksum = match (src, dst) {
                (IpAddr::V4(_), _) => h.calc_checksum_ipv4_raw(v4(src), v4(dst), payload),
                (IpAddr::V6(_), _) => h.calc_checksum_ipv6_raw(v6(src), v6(dst), payload),
            }
            .expect("TCP segment size");
            out.extend_from_slice(&h.to_bytes());
            IpNumber::TCP
        }
        L4::Udp { sport, dport } => {
            let mut h = UdpHeader {
                source_port: sport,
                destination_port: dport,
                length: (UdpHeader::LEN + payload.len()) as u16,
                checksum: 0,
            };
            h.checksum = match src {
                IpAddr::V4(_) => h.calc_checksum_ipv4_raw(v4(src), v4(dst), payload),
                IpAddr::V6(_) => h.calc_checksum_ipv6_raw(v6(src), v6(dst), payload),
            }
            .expect("UDP datagram size");
            out.extend_from_slice(&h.to_bytes());
            IpNumber::UDP
        }
        L4::EchoRequest { .. } | L4::EchoReply { .. } | L4::Icmp { .. } if src.is_ipv4() => {
            let t = match l4 {
                L4::EchoRequest { id } => Icmpv4Type::EchoRequest(IcmpEchoHeader { id, seq: 1 }),
                L4::EchoReply { id } => Icmpv4Type::EchoReply(IcmpEchoHeader { id, seq: 1 }),
                L4::Icmp { kind, code, rest } => Icmpv4Type::Unknown {
                    type_u8: kind,
                    code_u8: code,
                    bytes5to8: rest,
                },
                _ => unreachable!(),
            };
            out.extend_from_slice(&Icmpv4Header::with_checksum(t, payload).to_bytes());
            IpNumber::ICMP
        }
        L4::EchoRequest { .. } | L4::EchoReply { .. } | L4::Icmp { .. } => {
            let t = match l4 {
                L4::EchoRequest { id } => Icmpv6Type::EchoRequest(IcmpEchoHeader { id, seq: 1 }),
                L4::EchoReply { id } => Icmpv6Type::EchoReply(IcmpEchoHeader { id, seq: 1 }),
                L4::Icmp { kind, code, rest } => Icmpv6Type::Unknown {
                    type_u8: kind,
                    code_u8: code,
                    bytes5to8: rest,
                },
                _ => unreachable!(),
            };
            let h = Icmpv6Header::with_checksum(t, v6(src), v6(dst), payload)
                .expect("ICMPv6 message size");
            out.extend_from_slice(&h.to_bytes());
            IpNumber::IPV6_ICMP
        }
    };
    out.extend_from_slice(payload);
    (proto.0, out)
}

/// An IP packet (no Ethernet header) carrying `body` as protocol `proto`; the family
/// follows the addresses.
pub fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, body: &[u8]) -> Vec<u8> {
    // Neighbour discovery is sent with hop limit 255 (RFC 4861), everything else with 64.
    let nd = proto == IpNumber::IPV6_ICMP.0
        && body
            .first()
            .is_some_and(|kind| (icmp::ROUTER_SOLICITATION..=icmp::REDIRECT).contains(kind));
    ip_packet_with_hop_limit(src, dst, proto, body, if nd { 255 } else { 64 })
}

/// [`ip_packet`] with a chosen TTL / hop limit.
pub fn ip_packet_with_hop_limit(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    body: &[u8],
    hop_limit: u8,
) -> Vec<u8> {
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let mut h = Ipv4Header::new(
                body.len() as u16,
                hop_limit,
                IpNumber(proto),
                v4(src),
                v4(dst),
            )
            .expect("IPv4 payload size");
            h.dont_fragment = false;
            h.write(&mut out).expect("writing to a Vec");
        }
        (IpAddr::V6(_), IpAddr::V6(_)) => {
            let h = Ipv6Header {
                payload_length: body.len() as u16,
                next_header: IpNumber(proto),
                hop_limit,
                source: v6(src),
                destination: v6(dst),
                ..Default::default()
            };
            h.write(&mut out).expect("writing to a Vec");
        }
        _ => panic!("mixed address families: {src} -> {dst}"),
    }
    out.extend_from_slice(body);
    out
}

/// An Ethernet II frame.
pub fn ethernet(src_mac: Mac, dst_mac: Mac, ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Ethernet2Header {
        source: src_mac,
        destination: dst_mac,
        ether_type: EtherType(ether_type),
    }
    .to_bytes()
    .to_vec();
    out.extend_from_slice(payload);
    out
}

fn ether_type_of(a: IpAddr) -> u16 {
    if a.is_ipv4() {
        EtherType::IPV4.0
    } else {
        EtherType::IPV6.0
    }
}

/// Ethernet, IP (the family of the addresses), `l4`, `payload`: a frame as a stack sends it.
pub fn ip_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: IpAddr,
    dst: IpAddr,
    l4: L4,
    payload: &[u8],
) -> Vec<u8> {
    let (proto, body) = transport(src, dst, l4, payload);
    ethernet(
        src_mac,
        dst_mac,
        ether_type_of(src),
        &ip_packet(src, dst, proto, &body),
    )
}

/// [`ip_frame`] with address literals and no payload.
pub fn ip(src_mac: Mac, dst_mac: Mac, src: &str, dst: &str, l4: L4) -> Vec<u8> {
    ip_frame(src_mac, dst_mac, addr(src), addr(dst), l4, &[])
}

/// An ICMP (or ICMPv6) error `kind`/`code` from `src` to `dst` quoting `quoted` (an IP
/// packet, e.g. [`ip`] without its first 14 bytes).
pub fn icmp_error(
    src_mac: Mac,
    dst_mac: Mac,
    src: &str,
    dst: &str,
    kind: u8,
    code: u8,
    quoted: &[u8],
) -> Vec<u8> {
    let l4 = L4::Icmp {
        kind,
        code,
        rest: [0; 4],
    };
    ip_frame(src_mac, dst_mac, addr(src), addr(dst), l4, quoted)
}

/// An ARP packet for Ethernet/IPv4 in a frame from `eth_src` to `eth_dst`: operation `op`
/// (1 request, 2 reply), sender `sha`/`spa`, target MAC zero, target address `tpa`.
pub fn arp(eth_src: Mac, eth_dst: Mac, op: u16, sha: Mac, spa: &str, tpa: &str) -> Vec<u8> {
    let spa: Ipv4Addr = spa.parse().expect("IPv4 sender address");
    let tpa: Ipv4Addr = tpa.parse().expect("IPv4 target address");
    let packet = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation(op),
        &sha,
        &spa.octets(),
        &[0; 6],
        &tpa.octets(),
    )
    .expect("ARP address sizes");
    ethernet(eth_src, eth_dst, EtherType::ARP.0, &packet.to_bytes())
}

/// A neighbour solicitation (135) or advertisement (136) about `target`, with no flags and
/// the given 8-byte options `(type, six bytes)`.
pub fn nd(
    src_mac: Mac,
    dst_mac: Mac,
    kind: u8,
    src: &str,
    dst: &str,
    target: &str,
    options: &[(u8, [u8; 6])],
) -> Vec<u8> {
    let target: Ipv6Addr = target.parse().expect("IPv6 target");
    let mut body = target.octets().to_vec();
    for (t, value) in options {
        body.extend_from_slice(&[*t, 1]);
        body.extend_from_slice(value);
    }
    ip_frame(src_mac, dst_mac, addr(src), addr(dst), icmp(kind), &body)
}

/// A router advertisement from `src` to all nodes: hop limit 64, router lifetime 30 s.
pub fn router_advertisement(src_mac: Mac, src: &str) -> Vec<u8> {
    let l4 = L4::Icmp {
        kind: icmp::ROUTER_ADVERTISEMENT,
        code: 0,
        rest: [64, 0, 0, 30],
    };
    // Reachable time and retransmission timer.
    ip_frame(src_mac, ALL_NODES, addr(src), addr("ff02::1"), l4, &[0; 8])
}

/// An IPv4 packet with the fields the guards look at under the caller's control. The
/// transport bytes (`payload`) are built by [`V4::new`] and may be edited.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub id: u16,
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub offset: u16,
    /// Option bytes (a multiple of 4, at most 40).
    pub options: Vec<u8>,
    /// Total length; by default the true one.
    pub total_len: Option<u16>,
    pub payload: Vec<u8>,
}

impl V4 {
    pub fn new(src: &str, dst: &str, l4: L4) -> V4 {
        let (protocol, payload) = transport(addr(src), addr(dst), l4, &[]);
        V4 {
            src: src.parse().expect("IPv4 source"),
            dst: dst.parse().expect("IPv4 destination"),
            protocol,
            id: 0x1234,
            more_fragments: false,
            offset: 0,
            options: Vec::new(),
            total_len: None,
            payload,
        }
    }

    pub fn frame(&self, src_mac: Mac, dst_mac: Mac) -> Vec<u8> {
        let mut h = Ipv4Header::new(
            self.payload.len() as u16,
            64,
            IpNumber(self.protocol),
            self.src.octets(),
            self.dst.octets(),
        )
        .expect("IPv4 payload size");
        h.identification = self.id;
        h.dont_fragment = false;
        h.more_fragments = self.more_fragments;
        h.fragment_offset = IpFragOffset::try_new(self.offset).expect("fragment offset");
        h.options = etherparse::Ipv4Options::try_from(self.options.as_slice())
            .expect("IPv4 options length");
        h.total_len = self
            .total_len
            .unwrap_or((h.header_len() + self.payload.len()) as u16);
        let mut packet = Vec::new();
        h.write(&mut packet).expect("writing to a Vec");
        packet.extend_from_slice(&self.payload);
        ethernet(src_mac, dst_mac, EtherType::IPV4.0, &packet)
    }
}

/// An IPv6 extension header of a chain built by [`v6_with_extensions`].
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    DestinationOptions,
    /// A fragment header: offset in 8-byte units, more-fragments flag, identification.
    Fragment {
        offset: u16,
        more: bool,
        id: u32,
    },
}

impl Ext {
    fn number(self) -> IpNumber {
        match self {
            Ext::HopByHop => IpNumber::IPV6_HEADER_HOP_BY_HOP,
            Ext::DestinationOptions => IpNumber::IPV6_DESTINATION_OPTIONS,
            Ext::Fragment { .. } => IpNumber::IPV6_FRAGMENTATION_HEADER,
        }
    }
}

/// An IPv6 frame whose transport `l4` follows the extension headers `exts` (empty options,
/// 8 bytes each).
pub fn v6_with_extensions(
    src_mac: Mac,
    dst_mac: Mac,
    src: &str,
    dst: &str,
    exts: &[Ext],
    l4: L4,
) -> Vec<u8> {
    let (proto, transport) = transport(addr(src), addr(dst), l4, &[]);
    let mut body = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(IpNumber(proto), |e| e.number());
        match *ext {
            Ext::Fragment { offset, more, id } => {
                let offset = IpFragOffset::try_new(offset).expect("fragment offset");
                Ipv6FragmentHeader::new(next, offset, more, id)
                    .write(&mut body)
                    .expect("writing to a Vec");
            }
            Ext::HopByHop | Ext::DestinationOptions => {
                Ipv6RawExtHeader::new_raw(next, &[0; 6])
                    .expect("extension length")
                    .write(&mut body)
                    .expect("writing to a Vec");
            }
        }
    }
    body.extend_from_slice(&transport);
    let first = exts.first().map_or(IpNumber(proto), |e| e.number());
    let packet = ip_packet(addr(src), addr(dst), first.0, &body);
    ethernet(src_mac, dst_mac, EtherType::IPV6.0, &packet)
}

/// `frame` with a VLAN tag (`tpid` 0x8100 or 0x88a8, VLAN id `vid`) after the MAC addresses.
pub fn tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&vid.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// `frame` without its first VLAN tag: how a tagged frame shows up to a packet socket on
/// the receiving side (the tag travels as metadata there).
pub fn untagged(frame: &[u8]) -> Vec<u8> {
    if frame.len() >= 18 && matches!([frame[12], frame[13]], [0x81, 0x00] | [0x88, 0xa8]) {
        let mut f = frame[..12].to_vec();
        f.extend_from_slice(&frame[16..]);
        f
    } else {
        frame.to_vec()
    }
}

/// The first `len` bytes of `frame`.
pub fn truncated(frame: &[u8], len: usize) -> Vec<u8> {
    frame[..len.min(frame.len())].to_vec()
}

/// An untagged IPv4 frame with its header length field set to `ihl` (32-bit words),
/// everything else unchanged.
pub fn with_ihl(frame: &[u8], ihl: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[14] = (f[14] & 0xf0) | (ihl & 0x0f);
    f
}

/// An untagged IP frame with its version field set to `version`.
pub fn with_ip_version(frame: &[u8], version: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[14] = (version << 4) | (f[14] & 0x0f);
    f
}

/// An untagged IPv4 or IPv6 frame with its TTL / hop limit set to `hop_limit` (checksums
/// are not recomputed: the programs do not check them).
pub fn with_hop_limit(frame: &[u8], hop_limit: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => f[14 + 8] = hop_limit,
        _ => f[14 + 7] = hop_limit,
    }
    f
}

/// An untagged ARP frame with hardware type `htype`.
pub fn with_arp_htype(frame: &[u8], htype: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[14..16].copy_from_slice(&htype.to_be_bytes());
    f
}

/// Parses `02:15:00:00:00:01`.
pub fn parse_mac(s: &str) -> anyhow::Result<Mac> {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("bad MAC {s:?}"))?;
    v.try_into().map_err(|_| anyhow::anyhow!("bad MAC {s:?}"))
}

/// Formats a MAC address like `ip` does (`02:15:00:00:00:01`).
pub fn fmt_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The frame's source MAC, formatted (empty for a runt).
pub fn source_mac(frame: &[u8]) -> String {
    frame.get(6..12).map(fmt_mac).unwrap_or_default()
}

/// The target address of a neighbour solicitation or advertisement (its first 16 bytes).
fn nd_target(kind: u8, payload: &[u8]) -> Option<Ipv6Addr> {
    if kind != icmp::NEIGHBOUR_SOLICITATION && kind != icmp::NEIGHBOUR_ADVERTISEMENT {
        return None;
    }
    let t: [u8; 16] = payload.get(..16)?.try_into().ok()?;
    Some(Ipv6Addr::from(t))
}

/// What a frame is, as far as the tests care: its addresses and, for ARP and
/// neighbour discovery, the address it concerns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub src_mac: String,
    pub dst_mac: String,
    pub what: String,
    /// IP source and destination (ARP: sender and target address).
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// ICMPv6 type.
    pub icmpv6: Option<u8>,
    /// The address an ARP packet or a neighbour solicitation/advertisement is about.
    pub concerns: Option<IpAddr>,
}

/// Reads a frame with etherparse (lax about what it cannot parse: the summary then says
/// less).
pub fn summary(f: &[u8]) -> Summary {
    let mut s = Summary {
        src_mac: source_mac(f),
        dst_mac: f.get(0..6).map(fmt_mac).unwrap_or_default(),
        ..Summary::default()
    };
    let Ok(p) = SlicedPacket::from_ethernet(f) else {
        s.what = format!("unparsed frame of {} bytes", f.len());
        return s;
    };
    match &p.net {
        Some(NetSlice::Arp(a)) => {
            let to_ip = |b: &[u8]| <[u8; 4]>::try_from(b).ok().map(IpAddr::from);
            s.src = to_ip(a.sender_protocol_addr());
            s.dst = to_ip(a.target_protocol_addr());
            s.concerns = s.dst;
            s.what = format!(
                "ARP {} who-has/is {} from {}",
                if a.operation() == ArpOperation::REQUEST {
                    "request"
                } else {
                    "reply"
                },
                s.dst.map_or("?".into(), |a| a.to_string()),
                s.src.map_or("?".into(), |a| a.to_string()),
            );
        }
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            s.src = Some(IpAddr::from(h.source()));
            s.dst = Some(IpAddr::from(h.destination()));
            s.what = format!(
                "IPv4 proto {} {} -> {}",
                h.protocol().0,
                h.source_addr(),
                h.destination_addr()
            );
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            s.src = Some(IpAddr::from(h.source_addr()));
            s.dst = Some(IpAddr::from(h.destination_addr()));
            s.what = format!(
                "IPv6 nh {} {} -> {}",
                h.next_header().0,
                h.source_addr(),
                h.destination_addr()
            );
            if let Some(TransportSlice::Icmpv6(icmp)) = &p.transport {
                let kind = icmp.type_u8();
                s.icmpv6 = Some(kind);
                s.what.push_str(&format!(" icmpv6 type {kind}"));
                if let Some(t) = nd_target(kind, icmp.payload()) {
                    s.concerns = Some(IpAddr::V6(t));
                    s.what.push_str(&format!(" target {t}"));
                }
            }
        }
        None => {
            let et = f
                .get(12..14)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            s.what = format!("ethertype {et:#06x}");
        }
    }
    s
}

/// A one-line description of an Ethernet frame, for messages.
pub fn describe(f: &[u8]) -> String {
    let s = summary(f);
    format!(
        "{} > {} {} ({} bytes)",
        s.src_mac,
        s.dst_mac,
        s.what,
        f.len()
    )
}

/// Whether frame `f` is about `addr`: an ARP packet whose target is `addr`, an IP packet to
/// `addr`, or a neighbour solicitation/advertisement whose target is `addr`.
pub fn targets(f: &[u8], addr: IpAddr) -> bool {
    let s = summary(f);
    s.dst == Some(addr) || s.concerns == Some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 1];
    const B: Mac = [2, 0, 0, 0, 0, 2];

    #[test]
    fn well_formed_frames_parse_back_with_valid_checksums() {
        let f = ip(A, B, "10.1.1.2", "10.1.1.3", tcp(1000, 22, SYN));
        let p = etherparse::PacketHeaders::from_ethernet_slice(&f).unwrap();
        let Some(etherparse::NetHeaders::Ipv4(h, _)) = &p.net else {
            panic!("not IPv4: {p:?}")
        };
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        let Some(etherparse::TransportHeader::Tcp(t)) = &p.transport else {
            panic!("not TCP")
        };
        assert!(t.syn && !t.ack);
        assert_eq!(
            t.checksum,
            t.calc_checksum_ipv4(h, &[]).unwrap(),
            "TCP checksum"
        );
        let ns = nd(
            A,
            ALL_NODES,
            icmp::NEIGHBOUR_SOLICITATION,
            "fd00::2",
            "ff02::1:ff00:3",
            "fd00::3",
            &[(nd_option::SOURCE_LL, A)],
        );
        assert!(targets(&ns, addr("fd00::3")));
        assert_eq!(summary(&ns).icmpv6, Some(135));
        let a = arp(A, BROADCAST, 1, A, "10.1.1.2", "10.1.1.3");
        assert_eq!(a.len(), 42);
        assert!(targets(&a, addr("10.1.1.3")));
        assert!(!targets(&a, addr("10.1.1.2")));
        assert!(
            describe(&a).contains("ARP request who-has/is 10.1.1.3"),
            "{}",
            describe(&a)
        );
    }

    #[test]
    fn edits_break_exactly_one_thing() {
        let f = ip(A, B, "10.1.1.2", "10.1.1.3", echo_request(1));
        assert_eq!(with_ihl(&f, 4)[14], 0x44);
        assert_eq!(with_ip_version(&f, 6)[14], 0x65);
        let t = tagged(&f, 0x8100, 100);
        assert_eq!(&t[12..16], &[0x81, 0, 0, 100]);
        assert_eq!(untagged(&t), f);
        assert_eq!(truncated(&f, 20).len(), 20);
        let v = V4 {
            options: vec![0x94, 0x04, 0, 0],
            more_fragments: true,
            offset: 2,
            ..V4::new("10.1.1.2", "10.1.1.3", udp(1, 2))
        }
        .frame(A, B);
        assert_eq!(v[14], 0x46, "IHL 6 with one option word");
        assert_eq!(u16::from_be_bytes([v[20], v[21]]), 0x2002);
        let six = v6_with_extensions(
            A,
            B,
            "fd00::2",
            "fd00::3",
            &[
                Ext::HopByHop,
                Ext::Fragment {
                    offset: 2,
                    more: false,
                    id: 7,
                },
            ],
            udp(1, 2),
        );
        assert_eq!(six[14 + 6], 0, "first next header: hop-by-hop");
        assert_eq!(six.len(), 14 + 40 + 8 + 8 + 8);
    }
}
