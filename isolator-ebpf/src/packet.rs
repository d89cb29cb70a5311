//! Parsing a frame far enough to judge it, shared by the XDP and TC programs.

use core::mem;

use aya_ebpf::programs::{TcContext, XdpContext};
use isolator_common::{ConnKey, verdict};
use network_types::{
    arp::ArpHdr,
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

/// Bounds of a frame's data, for XDP and TC alike.
pub trait Frame {
    /// Start of the directly readable data.
    fn start(&self) -> usize;
    /// End of the directly readable data (for TC, of the linear part only).
    fn end(&self) -> usize;
    /// Length of the whole frame, what length fields in headers are checked against.
    fn len(&self) -> usize;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.data_end() - self.data()
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn len(&self) -> usize {
        // A socket buffer's payload may lie beyond its linear part.
        TcContext::len(self) as usize
    }
}

/// The one bounds check: a pointer to a `T` at `offset`, or an error when it would reach
/// past the end of the frame.
#[inline(always)]
pub fn ptr_at<T>(frame: &impl Frame, offset: usize) -> Result<*const T, ()> {
    let start = frame.start();
    let end = frame.end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

pub const KIND_IPV4: u8 = 4;
pub const KIND_IPV6: u8 = 6;
pub const KIND_ARP: u8 = 1;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// IPv6 extension headers walked before giving up (the frame is then malformed).
const MAX_IPV6_EXTENSIONS: usize = 4;

/// What the programs need to know about a frame (kept in a per-CPU scratch map: it does
/// not fit on the BPF stack alongside everything else). Addresses are 16 bytes, IPv4 ones
/// IPv4-mapped; for ARP, `src`/`dst` are the sender and target protocol addresses.
#[repr(C)]
pub struct Packet {
    pub kind: u8,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IP protocol of the transport header (after IPv6 extension headers).
    pub protocol: u8,
    /// Whether the transport header was parsed (false for non-first fragments and
    /// protocols other than TCP, UDP, ICMP, ICMPv6).
    pub has_ports: bool,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// Offset of the transport header.
    pub l4_offset: usize,
    /// Target address of an IPv6 neighbour solicitation or advertisement.
    pub nd_target: [u8; 16],
    /// A neighbour solicitation or advertisement carries a link-layer address option
    /// other than the frame's source MAC (or more options than the parser walks).
    pub nd_lladdr_foreign: bool,
    /// ARP sender hardware address and operation (1 request, 2 reply).
    pub arp_sha: [u8; 6],
    pub arp_op: u16,
    /// An 802.1Q / 802.1ad tag and its VLAN id.
    pub has_vlan: bool,
    pub vlan: u16,
    /// [`FRAGMENT_FIRST`], [`FRAGMENT_LATER`] or 0.
    pub fragment: u8,
    /// IPv4 identification or IPv6 fragment identification.
    pub frag_id: u32,
}

/// The first fragment of a fragmented datagram (it carries the transport header).
pub const FRAGMENT_FIRST: u8 = 1;
/// A later fragment (no transport header).
pub const FRAGMENT_LATER: u8 = 2;

impl Packet {
    /// Clears what the previous packet on this CPU left.
    #[inline(always)]
    pub fn reset(&mut self) {
        self.kind = 0;
        self.protocol = 0;
        self.has_ports = false;
        self.src_port = 0;
        self.dst_port = 0;
        self.tcp_flags = 0;
        self.icmp_type = 0;
        self.l4_offset = 0;
        self.nd_target = [0; 16];
        self.nd_lladdr_foreign = false;
        self.arp_op = 0;
        self.has_vlan = false;
        self.vlan = 0;
        self.fragment = 0;
        self.frag_id = 0;
    }

    #[inline(always)]
    pub fn is_v4(&self) -> bool {
        self.kind != KIND_IPV6
    }

    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        (self.kind == KIND_IPV4 && self.protocol == IPPROTO_ICMP)
            || (self.kind == KIND_IPV6 && self.protocol == IPPROTO_ICMPV6)
    }

    /// ICMP echo request (either family).
    #[inline(always)]
    pub fn is_echo_request(&self) -> bool {
        self.is_icmp()
            && self.has_ports
            && ((self.kind == KIND_IPV4 && self.icmp_type == 8)
                || (self.kind == KIND_IPV6 && self.icmp_type == 128))
    }

    #[inline(always)]
    pub fn is_echo_reply(&self) -> bool {
        self.is_icmp()
            && self.has_ports
            && ((self.kind == KIND_IPV4 && self.icmp_type == 0)
                || (self.kind == KIND_IPV6 && self.icmp_type == 129))
    }

    /// A destination that names one host beyond the link: not broadcast, multicast,
    /// link-local or unspecified.
    #[inline(always)]
    pub fn is_unicast_routable(&self) -> bool {
        let d = &self.dst;
        if self.kind == KIND_IPV4 {
            let first = d[12];
            !(first >= 224 || (first == 169 && d[13] == 254) || first == 0)
        } else {
            let unspecified = d.iter().all(|b| *b == 0);
            !(d[0] == 0xff || (d[0] == 0xfe && d[1] & 0xc0 == 0x80) || unspecified)
        }
    }

    /// Whether the packet is an unspecified-source message the protocols allow: DHCP
    /// discovery, and duplicate address detection (neighbour solicitation and the
    /// multicast listener report sent with it).
    #[inline(always)]
    pub fn unspecified_source_allowed(&self) -> bool {
        if self.kind == KIND_IPV4 {
            self.protocol == IPPROTO_UDP
                && self.has_ports
                && self.src_port == 68
                && self.dst_port == 67
        } else {
            self.kind == KIND_IPV6
                && self.protocol == IPPROTO_ICMPV6
                && self.has_ports
                && (self.icmp_type == 135 || self.icmp_type == 143)
        }
    }

    /// The source address is unspecified (0.0.0.0 or ::).
    #[inline(always)]
    pub fn source_unspecified(&self) -> bool {
        if self.kind == KIND_IPV6 {
            self.src.iter().all(|b| *b == 0)
        } else {
            self.src[12..].iter().all(|b| *b == 0)
        }
    }

    /// A router advertisement or redirect (ICMPv6 134, 137; ICMPv4 redirect 5).
    #[inline(always)]
    pub fn is_router_message(&self) -> bool {
        self.is_icmp()
            && self.has_ports
            && ((self.kind == KIND_IPV6 && (self.icmp_type == 134 || self.icmp_type == 137))
                || (self.kind == KIND_IPV4 && self.icmp_type == 5))
    }

    /// ICMP errors that quote the packet they answer.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        self.is_icmp()
            && self.has_ports
            && ((self.kind == KIND_IPV4 && matches!(self.icmp_type, 3 | 11 | 12))
                || (self.kind == KIND_IPV6 && matches!(self.icmp_type, 1..=4)))
    }

    /// IPv6 neighbour discovery: router solicitation/advertisement, neighbour
    /// solicitation/advertisement, redirect.
    #[inline(always)]
    pub fn is_nd(&self) -> bool {
        self.kind == KIND_IPV6
            && self.protocol == IPPROTO_ICMPV6
            && self.has_ports
            && matches!(self.icmp_type, 133..=137)
    }

    /// Neighbour solicitation or advertisement (these carry a target address).
    #[inline(always)]
    pub fn is_nd_neighbour(&self) -> bool {
        self.is_nd() && matches!(self.icmp_type, 135 | 136)
    }

    /// IPv6 multicast listener messages (MLD queries, reports, done).
    #[inline(always)]
    pub fn is_mld(&self) -> bool {
        self.kind == KIND_IPV6
            && self.protocol == IPPROTO_ICMPV6
            && self.has_ports
            && matches!(self.icmp_type, 130..=132 | 143)
    }

    /// A DHCP or DHCPv6 client message to servers.
    #[inline(always)]
    pub fn is_dhcp_client(&self) -> bool {
        self.protocol == IPPROTO_UDP
            && self.has_ports
            && ((self.kind == KIND_IPV4 && self.src_port == 68 && self.dst_port == 67)
                || (self.kind == KIND_IPV6 && self.src_port == 546 && self.dst_port == 547))
    }

    /// A message only a DHCP or DHCPv6 server (or relay) sends: from a server port, or to
    /// a client port.
    #[inline(always)]
    pub fn is_dhcp_server_message(&self) -> bool {
        self.protocol == IPPROTO_UDP
            && self.has_ports
            && ((self.kind == KIND_IPV4 && (self.src_port == 67 || self.dst_port == 68))
                || (self.kind == KIND_IPV6 && (self.src_port == 547 || self.dst_port == 546)))
    }

    /// A DHCP or DHCPv6 server message to a client.
    #[inline(always)]
    pub fn is_dhcp_server(&self) -> bool {
        self.protocol == IPPROTO_UDP
            && self.has_ports
            && ((self.kind == KIND_IPV4 && self.src_port == 67 && self.dst_port == 68)
                || (self.kind == KIND_IPV6 && self.src_port == 547 && self.dst_port == 546))
    }

    /// The key of the connection this packet would open or continue in its own
    /// direction. ICMP echo replies have none (they only ever answer).
    #[inline(always)]
    pub fn forward_key(&self, key: &mut ConnKey) -> bool {
        if !self.trackable() || self.is_echo_reply() {
            return false;
        }
        key.src = self.src;
        key.dst = self.dst;
        key.protocol = self.protocol;
        key.src_port = self.src_port;
        key.dst_port = if self.is_icmp() { 0 } else { self.dst_port };
        key._pad = [0; 3];
        true
    }

    /// The key of the connection this packet would answer. ICMP echo requests have none.
    #[inline(always)]
    pub fn reverse_key(&self, key: &mut ConnKey) -> bool {
        if !self.trackable() || self.is_echo_request() {
            return false;
        }
        key.src = self.dst;
        key.dst = self.src;
        key.protocol = self.protocol;
        // An echo reply carries the request's identifier where a request has its port.
        if self.is_icmp() {
            key.src_port = self.src_port;
            key.dst_port = 0;
        } else {
            key.src_port = self.dst_port;
            key.dst_port = self.src_port;
        }
        key._pad = [0; 3];
        true
    }

    /// TCP, UDP and ICMP echo can be tracked.
    #[inline(always)]
    fn trackable(&self) -> bool {
        self.has_ports
            && (self.protocol == IPPROTO_TCP
                || self.protocol == IPPROTO_UDP
                || self.is_echo_request()
                || self.is_echo_reply())
    }

    /// Whether this packet opens a connection: TCP SYN without ACK, any UDP datagram,
    /// ICMP echo request.
    #[inline(always)]
    pub fn opens_connection(&self) -> bool {
        if !self.has_ports {
            return false;
        }
        match self.protocol {
            IPPROTO_TCP => self.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN,
            IPPROTO_UDP => true,
            _ => self.is_echo_request(),
        }
    }
}

#[inline(always)]
fn mapped(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// Parses the frame into `p`. Errors are verdict codes (`MALFORMED`, `UNKNOWN_ETHERTYPE`,
/// `VLAN`, `IP_OPTIONS`, `FRAGMENT`, `IPV6_EXTENSIONS`).
#[inline(always)]
pub fn parse(frame: &impl Frame, p: &mut Packet) -> Result<(), u8> {
    let eth: *const EthHdr = ptr_at(frame, 0).map_err(|()| verdict::MALFORMED)?;
    let eth = unsafe { &*eth };
    p.src_mac = eth.src_addr;
    p.dst_mac = eth.dst_addr;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut l3 = EthHdr::LEN;
    if is_vlan_tag(ether_type) {
        let tag: *const [u8; 4] = ptr_at(frame, EthHdr::LEN).map_err(|()| verdict::MALFORMED)?;
        let tag = unsafe { &*tag };
        p.has_vlan = true;
        p.vlan = u16::from_be_bytes([tag[0], tag[1]]) & 0x0fff;
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        if is_vlan_tag(ether_type) {
            // Stacked tags never pass.
            return Err(verdict::VLAN);
        }
        l3 = EthHdr::LEN + 4;
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(frame, p, l3),
        ETH_P_IPV6 => parse_ipv6(frame, p, l3),
        ETH_P_ARP => parse_arp(frame, p, l3),
        _ => Err(verdict::UNKNOWN_ETHERTYPE),
    }
}

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// Whether an EtherType (host order) announces a VLAN tag: 802.1Q or 802.1ad.
#[inline(always)]
pub fn is_vlan_tag(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

#[inline(always)]
fn parse_arp(frame: &impl Frame, p: &mut Packet, l3: usize) -> Result<(), u8> {
    let arp: *const ArpHdr = ptr_at(frame, l3).map_err(|()| verdict::MALFORMED)?;
    let arp = unsafe { &*arp };
    if arp.htype != [0, 1] || arp.ptype != [0x08, 0x00] || arp.hlen != 6 || arp.plen != 4 {
        return Err(verdict::MALFORMED);
    }
    p.kind = KIND_ARP;
    p.src = mapped(arp.spa);
    p.dst = mapped(arp.tpa);
    p.arp_sha = arp.sha;
    p.arp_op = u16::from_be_bytes(arp.oper);
    Ok(())
}

/// The only IPv4 option let through: a lone router alert (IGMP and MLD use it).
const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0, 0];

#[inline(always)]
fn parse_ipv4(frame: &impl Frame, p: &mut Packet, l3: usize) -> Result<(), u8> {
    let ip: *const Ipv4Hdr = ptr_at(frame, l3).map_err(|()| verdict::MALFORMED)?;
    let ip = unsafe { &*ip };
    let header_len = ip.ihl() as usize;
    let total_len = ip.tot_len() as usize;
    if ip.version() != 4
        || header_len < Ipv4Hdr::LEN
        || total_len < header_len
        || l3 + total_len > frame.len()
    {
        return Err(verdict::MALFORMED);
    }
    if header_len > Ipv4Hdr::LEN {
        let options: *const [u8; 4] =
            ptr_at(frame, l3 + Ipv4Hdr::LEN).map_err(|()| verdict::MALFORMED)?;
        if header_len != Ipv4Hdr::LEN + 4 || unsafe { *options } != ROUTER_ALERT {
            return Err(verdict::IP_OPTIONS);
        }
    }
    p.kind = KIND_IPV4;
    p.src = mapped(ip.src_addr);
    p.dst = mapped(ip.dst_addr);
    p.protocol = ip.proto;
    let offset = ip.frag_offset();
    let more = ip.frag_flags() & 1 != 0;
    if offset != 0 || more {
        p.frag_id = u32::from(ip.id());
        p.fragment = if offset != 0 {
            FRAGMENT_LATER
        } else {
            FRAGMENT_FIRST
        };
    }
    if offset != 0 {
        // A later fragment carries no transport header: it passes only with its first
        // (see docs/design.md). One starting 8 bytes in would overwrite TCP's flags.
        if offset == 1 && ip.proto == IPPROTO_TCP {
            return Err(verdict::FRAGMENT);
        }
        return Ok(());
    }
    parse_l4(frame, p, l3 + header_len, total_len - header_len)
}

#[inline(always)]
fn parse_ipv6(frame: &impl Frame, p: &mut Packet, l3: usize) -> Result<(), u8> {
    let ip: *const Ipv6Hdr = ptr_at(frame, l3).map_err(|()| verdict::MALFORMED)?;
    let ip = unsafe { &*ip };
    let payload_len = ip.payload_len() as usize;
    if ip.version() != 6 || l3 + Ipv6Hdr::LEN + payload_len > frame.len() {
        return Err(verdict::MALFORMED);
    }
    p.kind = KIND_IPV6;
    p.src = ip.src_addr;
    p.dst = ip.dst_addr;
    let mut next = ip.next_hdr;
    let mut walked = 0usize;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        let offset = l3 + Ipv6Hdr::LEN + walked;
        match next {
            // Hop-by-hop options, routing, destination options.
            0 | 43 | 60 => {
                let h: *const [u8; 2] = ptr_at(frame, offset).map_err(|()| verdict::MALFORMED)?;
                let h = unsafe { &*h };
                next = h[0];
                walked += (h[1] as usize + 1) * 8;
            }
            // Fragment header.
            44 => {
                let h: *const [u8; 8] = ptr_at(frame, offset).map_err(|()| verdict::MALFORMED)?;
                let h = unsafe { &*h };
                next = h[0];
                walked += 8;
                let fragment = u16::from_be_bytes([h[2], h[3]]);
                p.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                if fragment & 0xfff8 != 0 {
                    p.fragment = FRAGMENT_LATER;
                    p.protocol = next;
                    return Ok(());
                }
                if fragment & 1 != 0 {
                    p.fragment = FRAGMENT_FIRST;
                }
            }
            _ => break,
        }
    }
    if matches!(next, 0 | 43 | 44 | 60) {
        // More extension headers than the bound: refuse rather than guess.
        return Err(verdict::IPV6_EXTENSIONS);
    }
    if walked > payload_len {
        return Err(verdict::MALFORMED);
    }
    p.protocol = next;
    parse_l4(frame, p, l3 + Ipv6Hdr::LEN + walked, payload_len - walked)
}

/// Parses the transport header at `offset`, of which the IP header says `available`
/// bytes are payload.
#[inline(always)]
fn parse_l4(frame: &impl Frame, p: &mut Packet, offset: usize, available: usize) -> Result<(), u8> {
    p.l4_offset = offset;
    // A first fragment must carry the whole transport header (RFC 1858); any other
    // packet too short for it is malformed.
    let short = if p.fragment == FRAGMENT_FIRST {
        verdict::FRAGMENT
    } else {
        verdict::MALFORMED
    };
    match p.protocol {
        IPPROTO_TCP => {
            if available < 20 {
                return Err(short);
            }
            let h: *const [u8; 20] = ptr_at(frame, offset).map_err(|()| verdict::MALFORMED)?;
            let h = unsafe { &*h };
            if h[12] >> 4 < 5 {
                return Err(verdict::MALFORMED);
            }
            p.src_port = u16::from_be_bytes([h[0], h[1]]);
            p.dst_port = u16::from_be_bytes([h[2], h[3]]);
            p.tcp_flags = h[13];
            p.has_ports = true;
        }
        IPPROTO_UDP => {
            if available < 8 {
                return Err(short);
            }
            let h: *const [u8; 8] = ptr_at(frame, offset).map_err(|()| verdict::MALFORMED)?;
            let h = unsafe { &*h };
            if u16::from_be_bytes([h[4], h[5]]) < 8 {
                return Err(verdict::MALFORMED);
            }
            p.src_port = u16::from_be_bytes([h[0], h[1]]);
            p.dst_port = u16::from_be_bytes([h[2], h[3]]);
            p.has_ports = true;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if (p.protocol == IPPROTO_ICMP) != (p.kind == KIND_IPV4) {
                // ICMP inside IPv6 or ICMPv6 inside IPv4: other protocols, no ports.
                return Ok(());
            }
            if available < 8 {
                return Err(short);
            }
            let h: *const [u8; 8] = ptr_at(frame, offset).map_err(|()| verdict::MALFORMED)?;
            let h = unsafe { &*h };
            p.icmp_type = h[0];
            // The echo identifier stands in for a port.
            p.src_port = u16::from_be_bytes([h[4], h[5]]);
            p.has_ports = true;
            if p.is_nd_neighbour() {
                parse_nd(frame, p, offset, available)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Options of a neighbour solicitation or advertisement walked for link-layer addresses;
/// a message with more is refused (its later options could not be checked).
const MAX_ND_OPTIONS: usize = 8;

/// Reads the target address of a neighbour solicitation or advertisement at `offset`
/// (its ICMPv6 header) and checks every source/target link-layer address option against
/// the frame's source MAC: all must match, as a receiver may believe any of them.
#[inline(always)]
fn parse_nd(frame: &impl Frame, p: &mut Packet, offset: usize, available: usize) -> Result<(), u8> {
    if available < 24 {
        return Err(verdict::MALFORMED);
    }
    let t: *const [u8; 16] = ptr_at(frame, offset + 8).map_err(|()| verdict::MALFORMED)?;
    p.nd_target = unsafe { *t };
    p.nd_lladdr_foreign = false;
    let mut walked = 24usize;
    for _ in 0..MAX_ND_OPTIONS {
        if walked >= available {
            return Ok(());
        }
        if walked + 8 > available {
            return Err(verdict::MALFORMED);
        }
        let o: *const [u8; 8] = ptr_at(frame, offset + walked).map_err(|()| verdict::MALFORMED)?;
        let o = unsafe { &*o };
        if o[1] == 0 {
            return Err(verdict::MALFORMED);
        }
        // 1: source link-layer address (solicitations), 2: target (advertisements).
        if (o[0] == 1 || o[0] == 2) && [o[2], o[3], o[4], o[5], o[6], o[7]] != p.src_mac {
            p.nd_lladdr_foreign = true;
        }
        walked += o[1] as usize * 8;
    }
    if walked < available {
        // Options beyond the walk: they could carry a link-layer address unchecked.
        p.nd_lladdr_foreign = true;
    }
    Ok(())
}

/// For an ICMP error, the key of the packet it quotes, as that packet was sent.
/// Returns false when the quote is too short or not TCP, UDP or ICMP echo.
#[inline(always)]
pub fn quoted_key(frame: &impl Frame, p: &Packet, key: &mut ConnKey) -> bool {
    // The mask changes nothing (offsets stay below 14 + 40 + 4 * 2048) but gives the
    // verifier a bound for a value read back from memory.
    let offset = (p.l4_offset & 0x3fff) + 8;
    let l4;
    if p.kind == KIND_IPV4 {
        let Ok(ip) = ptr_at::<Ipv4Hdr>(frame, offset) else {
            return false;
        };
        let ip = unsafe { &*ip };
        let header_len = ip.ihl() as usize;
        if header_len < Ipv4Hdr::LEN {
            return false;
        }
        key.src = mapped(ip.src_addr);
        key.dst = mapped(ip.dst_addr);
        key.protocol = ip.proto;
        l4 = offset + header_len;
    } else {
        let Ok(ip) = ptr_at::<Ipv6Hdr>(frame, offset) else {
            return false;
        };
        let ip = unsafe { &*ip };
        key.src = ip.src_addr;
        key.dst = ip.dst_addr;
        key.protocol = ip.next_hdr;
        l4 = offset + Ipv6Hdr::LEN;
    }
    let Ok(h) = ptr_at::<[u8; 8]>(frame, l4) else {
        return false;
    };
    let h = unsafe { &*h };
    match key.protocol {
        IPPROTO_TCP | IPPROTO_UDP => {
            key.src_port = u16::from_be_bytes([h[0], h[1]]);
            key.dst_port = u16::from_be_bytes([h[2], h[3]]);
            true
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Only a quoted echo request belongs to a tracked connection.
            let echo = if key.protocol == IPPROTO_ICMP { 8 } else { 128 };
            key.src_port = u16::from_be_bytes([h[4], h[5]]);
            key.dst_port = 0;
            h[0] == echo
        }
        _ => false,
    }
}
