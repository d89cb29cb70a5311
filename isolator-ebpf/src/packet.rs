//! Parsing a frame far enough to judge it, shared by the XDP and TC programs.

use core::mem;

use crate::proto::{dhcp, ether, icmp4, icmp6, ip, nd_option, tcp};
use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    programs::{TcContext, XdpContext},
};
use isolator_common::{ConnKey, Verdict};
use network_types::{
    arp::ArpHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

/// Bounds of a frame's data, for XDP and TC alike.
pub trait Frame {
    /// Start of the directly readable data.
    fn start(&self) -> usize;
    /// End of the directly readable data (for TC, of the linear part only).
    fn end(&self) -> usize;
    /// Length of the whole frame as it travels, what length fields in headers are
    /// checked against.
    fn wire_len(&self) -> usize;
}

/// An XDP frame, by its context pointer held as an integer. Handed to a BPF subprogram by
/// reference, a context wrapper lets the compiler read `data` and `data_end` in the caller
/// and pass them on as 32-bit integers, which the verifier refuses as pointer arithmetic;
/// an integer handle keeps the loads where they are used.
#[derive(Clone, Copy)]
pub struct XdpFrame(usize);

impl XdpFrame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> XdpFrame {
        XdpFrame(ctx.ctx as usize)
    }

    /// The frame of the XDP context `ctx` (a global BPF function's argument).
    #[inline(always)]
    pub fn from_context(ctx: *mut xdp_md) -> XdpFrame {
        XdpFrame(ctx as usize)
    }

    #[inline(always)]
    fn md(&self) -> &xdp_md {
        // SAFETY: the context the kernel handed the program, valid for the whole run.
        unsafe { &*(self.0 as *const xdp_md) }
    }
}

impl Frame for XdpFrame {
    #[inline(always)]
    fn start(&self) -> usize {
        self.md().data as usize
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.md().data_end as usize
    }
    #[inline(always)]
    fn wire_len(&self) -> usize {
        self.end() - self.start()
    }
}

/// A socket buffer of a TC program, by its context pointer (see [`XdpFrame`]).
#[derive(Clone, Copy)]
pub struct TcFrame(usize);

impl TcFrame {
    #[inline(always)]
    pub fn new(ctx: &TcContext) -> TcFrame {
        TcFrame(ctx.skb.skb as usize)
    }

    #[inline(always)]
    fn skb(&self) -> &__sk_buff {
        // SAFETY: the context the kernel handed the program, valid for the whole run.
        unsafe { &*(self.0 as *const __sk_buff) }
    }
}

impl Frame for TcFrame {
    #[inline(always)]
    fn start(&self) -> usize {
        self.skb().data as usize
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.skb().data_end as usize
    }
    #[inline(always)]
    fn wire_len(&self) -> usize {
        // A socket buffer's payload may lie beyond its linear part.
        self.skb().len as usize
    }
}

/// A frame held in a byte slice: the parser on the host (unit tests, fuzzing, `explain`).
pub struct Bytes<'a>(pub &'a [u8]);

impl Frame for Bytes<'_> {
    #[inline(always)]
    fn start(&self) -> usize {
        self.0.as_ptr() as usize
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.0.as_ptr() as usize + self.0.len()
    }
    #[inline(always)]
    fn wire_len(&self) -> usize {
        self.0.len()
    }
}

/// The one bounds check: a pointer to a `T` at `offset`, or `None` when it would reach
/// past the end of the frame.
#[inline(always)]
pub fn ptr_at<T>(frame: &impl Frame, offset: usize) -> Option<*const T> {
    let start = frame.start();
    let end = frame.end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Length of an Ethernet header (destination, source, EtherType).
pub const ETH_LEN: usize = 14;

/// A reference to the `T` at `offset`, or `None` when it would reach past the end of the
/// frame. Every header read goes through here.
#[inline(always)]
pub fn at<T>(frame: &impl Frame, offset: usize) -> Option<&T> {
    const {
        assert!(
            align_of::<T>() == 1,
            "headers are read unaligned: byte-aligned types only"
        )
    };
    let ptr = ptr_at::<T>(frame, offset)?;
    // SAFETY: `ptr_at` checked that the `size_of::<T>()` bytes at `offset` lie within the
    // frame's data, which outlives the borrow of `frame`; `T` is byte-aligned (above) and a
    // header of plain bytes, valid for any contents.
    Some(unsafe { &*ptr })
}

/// Copies `src` into `dst` byte by byte. Written out so that the compiler keeps it inline:
/// a plain array copy or run of zero stores becomes a call of `memcpy`, `memmove` or
/// `memset`, which in BPF are loops of one byte per iteration (several times the cost).
/// The volatile reads stop the compiler from recognising the idiom.
#[inline(always)]
pub fn copy_bytes<const N: usize>(dst: &mut [u8; N], src: &[u8; N]) {
    for i in 0..N {
        // SAFETY: `i < N`: a valid byte of `src`.
        dst[i] = unsafe { core::ptr::read_volatile(&src[i]) };
    }
}

/// Sets `dst` to the IPv4-mapped form of `addr`, byte by byte (see [`copy_bytes`]; for
/// places not known to be aligned; [`set_mapped`] for the packet's own addresses).
#[inline(always)]
pub fn set_mapped_bytes(dst: &mut [u8; 16], addr: &[u8; 4]) {
    zero_bytes(dst);
    // SAFETY: indices within the array.
    unsafe {
        core::ptr::write_volatile(&mut dst[10], 0xff);
        core::ptr::write_volatile(&mut dst[11], 0xff);
    }
    for i in 0..4 {
        // SAFETY: `i < 4`.
        dst[12 + i] = unsafe { core::ptr::read_volatile(&addr[i]) };
    }
}

/// Sets address `which` of `p` to the IPv4-mapped form of `addr` (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn set_mapped(p: &mut Packet, which: Address, addr: &[u8; 4]) {
    let mut bytes = [0, 0, 0xff, 0xff, 0, 0, 0, 0];
    for i in 0..4 {
        // SAFETY: `i < 4`: a valid byte of `addr` (read one at a time: the frame's bytes
        // are not aligned).
        bytes[4 + i] = unsafe { core::ptr::read_volatile(&addr[i]) };
    }
    p.set_address(which, 0, u64::from_ne_bytes(bytes));
}

/// Sets address `which` of `p` to the 16 bytes at `addr` (an IPv6 address in the frame).
#[inline(always)]
pub fn set_copied(p: &mut Packet, which: Address, addr: &[u8; 16]) {
    let (mut lo, mut hi) = ([0u8; 8], [0u8; 8]);
    for i in 0..8 {
        // SAFETY: `i < 8`: valid bytes of `addr` (one at a time: not aligned).
        unsafe {
            lo[i] = core::ptr::read_volatile(&addr[i]);
            hi[i] = core::ptr::read_volatile(&addr[8 + i]);
        }
    }
    p.set_address(which, u64::from_ne_bytes(lo), u64::from_ne_bytes(hi));
}

/// Zeroes `dst` (see [`copy_bytes`]).
#[inline(always)]
pub fn zero_bytes<const N: usize>(dst: &mut [u8; N]) {
    for byte in dst.iter_mut() {
        // SAFETY: a valid byte of `dst`.
        unsafe { core::ptr::write_volatile(byte, 0) };
    }
}

/// Stores `value` where the compiler may not merge it with its neighbours into a call of
/// `memset` (see [`copy_bytes`]).
#[inline(always)]
fn clear<T>(field: &mut T, value: T) {
    // SAFETY: a valid, aligned field.
    unsafe { core::ptr::write_volatile(field, value) };
}

pub const KIND_IPV4: u8 = 4;
pub const KIND_IPV6: u8 = 6;
pub const KIND_ARP: u8 = 1;

/// IPv6 extension headers walked before giving up (the frame is then malformed).
const MAX_IPV6_EXTENSIONS: usize = 4;

/// What the programs need to know about a frame (kept in a per-CPU scratch map: it does
/// not fit on the BPF stack alongside everything else). Addresses are 16 bytes, IPv4 ones
/// IPv4-mapped; for ARP, `src`/`dst` are the sender and target protocol addresses.
///
/// The three addresses come first, 8-byte aligned, so that they are written a word at a
/// time ([`Packet::set_address`]).
#[repr(C, align(8))]
pub struct Packet {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Target address of an IPv6 neighbour solicitation or advertisement.
    pub nd_target: [u8; 16],
    pub kind: u8,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// IP protocol of the transport header (after IPv6 extension headers).
    pub protocol: u8,
    /// Whether the transport header was parsed (false for non-first fragments and
    /// protocols other than TCP, UDP, ICMP, ICMPv6).
    pub has_ports: bool,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 message type; for IGMP, the IGMP message type.
    pub icmp_type: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    /// Offset of the transport header.
    pub l4_offset: usize,
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
    /// The protocol a fragment's key names: IPv4's protocol field, or the Next Header of
    /// IPv6's Fragment header (the same in every fragment of a datagram).
    pub frag_proto: u8,
    /// A later fragment's offset, in bytes into the fragmentable part.
    pub frag_offset: u32,
    /// Where the fragmentable part starts (after the IPv4 header, or after IPv6's
    /// Fragment header), as an offset in the frame.
    pub frag_part_start: usize,
    /// Length of the transport header (TCP with its options, UDP, ICMP: 8).
    pub l4_header_len: usize,
    /// TCP sequence and acknowledgement numbers, and the payload length.
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub tcp_payload: u32,
}

/// The first fragment of a fragmented datagram (it carries the transport header).
pub const FRAGMENT_FIRST: u8 = 1;
/// A later fragment (no transport header).
pub const FRAGMENT_LATER: u8 = 2;

/// Which address of a [`Packet`] [`Packet::set_address`] writes.
#[derive(Clone, Copy)]
pub enum Address {
    Source,
    Destination,
    NdTarget,
}

// The addresses are 8-byte aligned (see `Packet::set_address`).
const _: () = assert!(
    core::mem::align_of::<Packet>() >= 8
        && core::mem::offset_of!(Packet, src).is_multiple_of(8)
        && core::mem::offset_of!(Packet, dst).is_multiple_of(8)
        && core::mem::offset_of!(Packet, nd_target).is_multiple_of(8)
);

impl Packet {
    /// Sets one of the addresses to the 16 bytes `[lo, hi]` (as native words), two
    /// stores instead of sixteen (see [`copy_bytes`]).
    #[inline(always)]
    pub fn set_address(&mut self, which: Address, lo: u64, hi: u64) {
        let field = match which {
            Address::Source => &mut self.src,
            Address::Destination => &mut self.dst,
            Address::NdTarget => &mut self.nd_target,
        };
        let words = field as *mut [u8; 16] as *mut u64;
        // SAFETY: the field is 16 bytes at an 8-byte aligned offset of an 8-byte aligned
        // struct (asserted above): two aligned words.
        unsafe {
            core::ptr::write_volatile(words, lo);
            core::ptr::write_volatile(words.add(1), hi);
        }
    }

    /// Clears what the previous packet on this CPU left.
    #[inline(always)]
    pub fn reset(&mut self) {
        clear(&mut self.kind, 0);
        clear(&mut self.protocol, 0);
        clear(&mut self.has_ports, false);
        clear(&mut self.src_port, 0);
        clear(&mut self.dst_port, 0);
        clear(&mut self.tcp_flags, 0);
        clear(&mut self.icmp_type, 0);
        clear(&mut self.hop_limit, 0);
        clear(&mut self.l4_offset, 0);
        self.set_address(Address::NdTarget, 0, 0);
        clear(&mut self.nd_lladdr_foreign, false);
        clear(&mut self.arp_op, 0);
        clear(&mut self.has_vlan, false);
        clear(&mut self.vlan, 0);
        clear(&mut self.fragment, 0);
        clear(&mut self.frag_id, 0);
        clear(&mut self.frag_proto, 0);
        clear(&mut self.frag_offset, 0);
        clear(&mut self.frag_part_start, 0);
        clear(&mut self.l4_header_len, 0);
        clear(&mut self.tcp_seq, 0);
        clear(&mut self.tcp_ack, 0);
        clear(&mut self.tcp_payload, 0);
    }

    #[inline(always)]
    pub fn is_v4(&self) -> bool {
        self.kind != KIND_IPV6
    }

    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        (self.kind == KIND_IPV4 && self.protocol == ip::ICMP)
            || (self.kind == KIND_IPV6 && self.protocol == ip::ICMPV6)
    }

    /// ICMP echo request (either family).
    #[inline(always)]
    pub fn is_echo_request(&self) -> bool {
        self.is_icmp()
            && self.has_ports
            && ((self.kind == KIND_IPV4 && self.icmp_type == icmp4::ECHO_REQUEST)
                || (self.kind == KIND_IPV6 && self.icmp_type == icmp6::ECHO_REQUEST))
    }

    #[inline(always)]
    pub fn is_echo_reply(&self) -> bool {
        self.is_icmp()
            && self.has_ports
            && ((self.kind == KIND_IPV4 && self.icmp_type == icmp4::ECHO_REPLY)
                || (self.kind == KIND_IPV6 && self.icmp_type == icmp6::ECHO_REPLY))
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

    /// The destination is a link-scope multicast group (224.0.0.0/24, ff02::/16): never
    /// routed, it reaches only the link.
    #[inline(always)]
    pub fn dst_link_scope_multicast(&self) -> bool {
        let d = &self.dst;
        if self.kind == KIND_IPV4 {
            d[12] == 224 && d[13] == 0 && d[14] == 0
        } else {
            d[0] == 0xff && d[1] & 0x0f == 0x02
        }
    }

    /// The destination is a multicast group (224.0.0.0/4, ff00::/8).
    #[inline(always)]
    pub fn dst_multicast(&self) -> bool {
        if self.kind == KIND_IPV4 {
            self.dst[12] & 0xf0 == 0xe0
        } else {
            self.dst[0] == 0xff
        }
    }

    /// The destination is an IPv6 link-local unicast address (fe80::/10).
    #[inline(always)]
    pub fn dst_ipv6_link_local(&self) -> bool {
        self.kind == KIND_IPV6 && ipv6_link_local(&self.dst)
    }

    /// The source is an IPv6 link-local address (fe80::/10).
    #[inline(always)]
    pub fn src_ipv6_link_local(&self) -> bool {
        self.kind == KIND_IPV6 && ipv6_link_local(&self.src)
    }

    /// The destination is a loopback address (127.0.0.0/8, ::1), which no frame on a
    /// link may carry.
    #[inline(always)]
    pub fn dst_loopback(&self) -> bool {
        let d = &self.dst;
        if self.kind == KIND_IPV4 {
            d[12] == 127
        } else if self.kind == KIND_IPV6 {
            d[..15].iter().all(|b| *b == 0) && d[15] == 1
        } else {
            false
        }
    }

    /// An IGMP message (any type); IGMP is link-local control (TTL 1).
    #[inline(always)]
    pub fn is_igmp(&self) -> bool {
        self.kind == KIND_IPV4 && self.protocol == ip::IGMP
    }

    /// An IGMP membership query (a router asking who listens).
    #[inline(always)]
    pub fn is_igmp_query(&self) -> bool {
        self.is_igmp() && self.icmp_type == IGMP_MEMBERSHIP_QUERY
    }

    /// A DHCP or DHCPv6 client message to the servers' link-scope addresses: the limited
    /// broadcast (255.255.255.255) or All_DHCP_Relay_Agents_and_Servers (ff02::1:2).
    #[inline(always)]
    pub fn is_dhcp_client_broadcast(&self) -> bool {
        if !self.is_dhcp_client() {
            return false;
        }
        let d = &self.dst;
        if self.kind == KIND_IPV4 {
            d[12..].iter().all(|b| *b == 0xff)
        } else {
            d[0] == 0xff
                && d[1] == 0x02
                && d[2..13].iter().all(|b| *b == 0)
                && d[13] == 1
                && d[14] == 0
                && d[15] == 2
        }
    }

    /// Neighbour discovery that is what it claims: hop limit 255 (RFC 4861 requires it; a
    /// message with less was forwarded, so it did not come from the link).
    #[inline(always)]
    pub fn is_link_nd(&self) -> bool {
        self.is_nd() && self.hop_limit == 255
    }

    /// Whether the packet is an unspecified-source message the protocols allow: DHCP
    /// discovery, and duplicate address detection (neighbour solicitation and the
    /// multicast listener report sent with it).
    #[inline(always)]
    pub fn unspecified_source_allowed(&self) -> bool {
        if self.kind == KIND_IPV4 {
            self.protocol == ip::UDP
                && self.has_ports
                && self.src_port == dhcp::V4_CLIENT
                && self.dst_port == dhcp::V4_SERVER
        } else {
            self.kind == KIND_IPV6
                && self.protocol == ip::ICMPV6
                && self.has_ports
                && (self.icmp_type == icmp6::NEIGHBOUR_SOLICITATION
                    || self.icmp_type == icmp6::MLDV2_REPORT)
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
            && ((self.kind == KIND_IPV6
                && (self.icmp_type == icmp6::ROUTER_ADVERTISEMENT
                    || self.icmp_type == icmp6::REDIRECT))
                || (self.kind == KIND_IPV4 && self.icmp_type == icmp4::REDIRECT))
    }

    /// ICMP errors that quote the packet they answer.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        self.is_icmp()
            && self.has_ports
            && ((self.kind == KIND_IPV4
                && matches!(
                    self.icmp_type,
                    icmp4::DEST_UNREACHABLE | icmp4::TIME_EXCEEDED | icmp4::PARAMETER_PROBLEM
                ))
                || (self.kind == KIND_IPV6
                    && matches!(
                        self.icmp_type,
                        icmp6::DEST_UNREACHABLE
                            | icmp6::PACKET_TOO_BIG
                            | icmp6::TIME_EXCEEDED
                            | icmp6::PARAMETER_PROBLEM
                    )))
    }

    /// IPv6 neighbour discovery: router solicitation/advertisement, neighbour
    /// solicitation/advertisement, redirect.
    #[inline(always)]
    pub fn is_nd(&self) -> bool {
        self.kind == KIND_IPV6
            && self.protocol == ip::ICMPV6
            && self.has_ports
            && matches!(self.icmp_type, icmp6::ROUTER_SOLICITATION..=icmp6::REDIRECT)
    }

    /// Neighbour solicitation or advertisement (these carry a target address).
    #[inline(always)]
    pub fn is_nd_neighbour(&self) -> bool {
        self.is_nd()
            && matches!(
                self.icmp_type,
                icmp6::NEIGHBOUR_SOLICITATION | icmp6::NEIGHBOUR_ADVERTISEMENT
            )
    }

    /// IPv6 multicast listener messages (MLD queries, reports, done).
    #[inline(always)]
    pub fn is_mld(&self) -> bool {
        self.kind == KIND_IPV6
            && self.protocol == ip::ICMPV6
            && self.has_ports
            && matches!(
                self.icmp_type,
                icmp6::MLD_QUERY..=icmp6::MLD_DONE | icmp6::MLDV2_REPORT
            )
    }

    /// A DHCP or DHCPv6 client message to servers.
    #[inline(always)]
    pub fn is_dhcp_client(&self) -> bool {
        self.protocol == ip::UDP
            && self.has_ports
            && ((self.kind == KIND_IPV4
                && self.src_port == dhcp::V4_CLIENT
                && self.dst_port == dhcp::V4_SERVER)
                || (self.kind == KIND_IPV6
                    && self.src_port == dhcp::V6_CLIENT
                    && self.dst_port == dhcp::V6_SERVER))
    }

    /// A message only a DHCP or DHCPv6 server (or relay) sends: from a server port, or to
    /// a client port.
    #[inline(always)]
    pub fn is_dhcp_server_message(&self) -> bool {
        self.protocol == ip::UDP
            && self.has_ports
            && ((self.kind == KIND_IPV4
                && (self.src_port == dhcp::V4_SERVER || self.dst_port == dhcp::V4_CLIENT))
                || (self.kind == KIND_IPV6
                    && (self.src_port == dhcp::V6_SERVER || self.dst_port == dhcp::V6_CLIENT)))
    }

    /// A DHCP or DHCPv6 server message to a client.
    #[inline(always)]
    pub fn is_dhcp_server(&self) -> bool {
        self.protocol == ip::UDP
            && self.has_ports
            && ((self.kind == KIND_IPV4
                && self.src_port == dhcp::V4_SERVER
                && self.dst_port == dhcp::V4_CLIENT)
                || (self.kind == KIND_IPV6
                    && self.src_port == dhcp::V6_SERVER
                    && self.dst_port == dhcp::V6_CLIENT))
    }

    /// The key of the connection this packet would open or continue in its own
    /// direction. ICMP echo replies have none (they only ever answer).
    #[inline(always)]
    pub fn forward_key(&self, key: &mut ConnKey) -> bool {
        if !self.trackable() || self.is_echo_reply() {
            return false;
        }
        copy_bytes(&mut key.src, &self.src);
        copy_bytes(&mut key.dst, &self.dst);
        key.protocol = self.protocol;
        key.src_port = self.src_port;
        key.dst_port = if self.is_icmp() { 0 } else { self.dst_port };
        zero_bytes(&mut key._pad);
        true
    }

    /// The key of the connection this packet would answer. ICMP echo requests have none.
    #[inline(always)]
    pub fn reverse_key(&self, key: &mut ConnKey) -> bool {
        if !self.trackable() || self.is_echo_request() {
            return false;
        }
        copy_bytes(&mut key.src, &self.dst);
        copy_bytes(&mut key.dst, &self.src);
        key.protocol = self.protocol;
        // An echo reply carries the request's identifier where a request has its port.
        if self.is_icmp() {
            key.src_port = self.src_port;
            key.dst_port = 0;
        } else {
            key.src_port = self.dst_port;
            key.dst_port = self.src_port;
        }
        zero_bytes(&mut key._pad);
        true
    }

    /// TCP, UDP and ICMP echo can be tracked.
    #[inline(always)]
    fn trackable(&self) -> bool {
        self.has_ports
            && (self.protocol == ip::TCP
                || self.protocol == ip::UDP
                || self.is_echo_request()
                || self.is_echo_reply())
    }

    /// For a first fragment: where in the fragmentable part its transport header ends; no
    /// later fragment may start before it.
    #[inline(always)]
    pub fn fragment_header_end(&self) -> u32 {
        (self.l4_offset + self.l4_header_len).saturating_sub(self.frag_part_start) as u32
    }

    /// TCP: the sequence number after this segment (SYN and FIN count one).
    #[inline(always)]
    pub fn tcp_end(&self) -> u32 {
        let mut end = self.tcp_seq.wrapping_add(self.tcp_payload);
        if self.tcp_flags & (tcp::SYN | tcp::FIN) != 0 {
            end = end.wrapping_add(1);
        }
        end
    }

    /// Whether this packet opens a connection: TCP SYN without ACK, any UDP datagram,
    /// ICMP echo request.
    #[inline(always)]
    pub fn opens_connection(&self) -> bool {
        if !self.has_ports {
            return false;
        }
        match self.protocol {
            ip::TCP => self.tcp_flags & (tcp::SYN | tcp::ACK | tcp::RST) == tcp::SYN,
            ip::UDP => true,
            _ => self.is_echo_request(),
        }
    }
}

/// Parses the frame into `p`. Errors are verdict codes (`MALFORMED`, `UNKNOWN_ETHERTYPE`,
/// `VLAN`, `IP_OPTIONS`, `FRAGMENT`, `IPV6_EXTENSIONS`). A BPF subprogram of its own: its
/// many paths (extension headers, ND options) end in one result, so they do not multiply
/// what the verifier walks after it.
#[inline(never)]
pub fn parse(frame: &impl Frame, p: &mut Packet) -> Result<(), Verdict> {
    // Read as bytes: network-types' EthHdr holds a u16 and so is not byte-aligned.
    let eth: &[u8; ETH_LEN] = at(frame, 0).ok_or(Verdict::Malformed)?;
    for i in 0..6 {
        // SAFETY: `i < 6`, within the header (see `copy_bytes`).
        unsafe {
            p.dst_mac[i] = core::ptr::read_volatile(&eth[i]);
            p.src_mac[i] = core::ptr::read_volatile(&eth[6 + i]);
        }
    }
    let mut ether_type = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l3 = ETH_LEN;
    if ether::is_vlan_tag(ether_type) {
        let tag: &[u8; 4] = at(frame, ETH_LEN).ok_or(Verdict::Malformed)?;
        p.vlan = u16::from_be_bytes([tag[0], tag[1]]) & ether::VLAN_ID_MASK;
        // VLAN id 0 is an 802.1p priority tag: the frame belongs to no VLAN.
        p.has_vlan = p.vlan != 0;
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        if ether::is_vlan_tag(ether_type) {
            // Stacked tags never pass.
            return Err(Verdict::Vlan);
        }
        l3 = ETH_LEN + 4;
    }
    match ether_type {
        ether::IPV4 => parse_ipv4(frame, p, l3),
        ether::IPV6 => parse_ipv6(frame, p, l3),
        ether::ARP => parse_arp(frame, p, l3),
        _ => Err(Verdict::UnknownEthertype),
    }
}

#[inline(always)]
fn parse_arp(frame: &impl Frame, p: &mut Packet, l3: usize) -> Result<(), Verdict> {
    let arp: &ArpHdr = at(frame, l3).ok_or(Verdict::Malformed)?;
    if arp.htype != [0, 1] || arp.ptype != [0x08, 0x00] || arp.hlen != 6 || arp.plen != 4 {
        return Err(Verdict::Malformed);
    }
    p.kind = KIND_ARP;
    set_mapped(p, Address::Source, &arp.spa);
    set_mapped(p, Address::Destination, &arp.tpa);
    copy_bytes(&mut p.arp_sha, &arp.sha);
    p.arp_op = u16::from_be_bytes(arp.oper);
    Ok(())
}

/// The only IPv4 option let through: a lone router alert (IGMP and MLD use it).
const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0, 0];

#[inline(always)]
fn parse_ipv4(frame: &impl Frame, p: &mut Packet, l3: usize) -> Result<(), Verdict> {
    let ip: &Ipv4Hdr = at(frame, l3).ok_or(Verdict::Malformed)?;
    let header_len = ip.ihl() as usize;
    let total_len = ip.tot_len() as usize;
    if ip.version() != 4
        || header_len < Ipv4Hdr::LEN
        || total_len < header_len
        || l3 + total_len > frame.wire_len()
    {
        return Err(Verdict::Malformed);
    }
    if header_len > Ipv4Hdr::LEN {
        let options: &[u8; 4] = at(frame, l3 + Ipv4Hdr::LEN).ok_or(Verdict::Malformed)?;
        if header_len != Ipv4Hdr::LEN + 4 || *options != ROUTER_ALERT {
            return Err(Verdict::IpOptions);
        }
    }
    p.kind = KIND_IPV4;
    set_mapped(p, Address::Source, &ip.src_addr);
    set_mapped(p, Address::Destination, &ip.dst_addr);
    p.protocol = ip.proto;
    p.hop_limit = ip.ttl;
    let offset = ip.frag_offset();
    let more = ip.frag_flags() & 1 != 0;
    if offset != 0 || more {
        p.frag_id = u32::from(ip.id());
        p.frag_proto = ip.proto;
        p.frag_offset = u32::from(offset) * 8;
        p.frag_part_start = l3 + header_len;
        p.fragment = if offset != 0 {
            FRAGMENT_LATER
        } else {
            FRAGMENT_FIRST
        };
    }
    if offset != 0 {
        // A later fragment carries no transport header: it passes only with its first
        // (see docs/design.md). One starting 8 bytes in would overwrite TCP's flags.
        if offset == 1 && ip.proto == ip::TCP {
            return Err(Verdict::Fragment);
        }
        return Ok(());
    }
    parse_l4(frame, p, l3 + header_len, total_len - header_len)
}

#[inline(always)]
fn parse_ipv6(frame: &impl Frame, p: &mut Packet, l3: usize) -> Result<(), Verdict> {
    let ip: &Ipv6Hdr = at(frame, l3).ok_or(Verdict::Malformed)?;
    let payload_len = ip.payload_len() as usize;
    if ip.version() != 6 || l3 + Ipv6Hdr::LEN + payload_len > frame.wire_len() {
        return Err(Verdict::Malformed);
    }
    p.kind = KIND_IPV6;
    set_copied(p, Address::Source, &ip.src_addr);
    set_copied(p, Address::Destination, &ip.dst_addr);
    p.hop_limit = ip.hop_limit;
    // IPv4-mapped addresses never appear on the wire (RFC 4291, 2.5.5.2); the maps store
    // IPv4 addresses in that form, so such a packet could pose as IPv4 traffic.
    if ipv4_mapped(&p.src) || ipv4_mapped(&p.dst) {
        return Err(Verdict::Malformed);
    }
    let mut next = ip.next_hdr;
    let mut walked = 0usize;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        let offset = l3 + Ipv6Hdr::LEN + walked;
        match next {
            // Hop-by-hop options, routing, destination options.
            ip::HOP_BY_HOP | ip::ROUTING | ip::DESTINATION_OPTIONS => {
                let h: &[u8; 2] = at(frame, offset).ok_or(Verdict::Malformed)?;
                next = h[0];
                walked += (h[1] as usize + 1) * 8;
            }
            // Fragment header.
            ip::FRAGMENT => {
                let h: &[u8; 8] = at(frame, offset).ok_or(Verdict::Malformed)?;
                next = h[0];
                walked += 8;
                let fragment = u16::from_be_bytes([h[2], h[3]]);
                p.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                p.frag_proto = next;
                p.frag_offset = u32::from(fragment & 0xfff8);
                p.frag_part_start = offset + 8;
                if fragment & 0xfff8 != 0 {
                    p.fragment = FRAGMENT_LATER;
                    p.protocol = next;
                    // One starting 8 bytes in would overwrite TCP's flags (RFC 1858).
                    if p.frag_offset == 8 && next == ip::TCP {
                        return Err(Verdict::Fragment);
                    }
                    return Ok(());
                }
                if fragment & 1 != 0 {
                    p.fragment = FRAGMENT_FIRST;
                }
            }
            _ => break,
        }
    }
    if ip::is_extension(next) {
        // More extension headers than the bound: refuse rather than guess.
        return Err(Verdict::Ipv6Extensions);
    }
    if walked > payload_len {
        return Err(Verdict::Malformed);
    }
    p.protocol = next;
    parse_l4(frame, p, l3 + Ipv6Hdr::LEN + walked, payload_len - walked)
}

/// IGMP membership query (RFC 3376).
pub const IGMP_MEMBERSHIP_QUERY: u8 = 0x11;

/// An IPv6 link-local address (fe80::/10).
#[inline(always)]
pub fn ipv6_link_local(addr: &[u8; 16]) -> bool {
    addr[0] == 0xfe && addr[1] & 0xc0 == 0x80
}

/// An IPv4-mapped IPv6 address (`::ffff:0:0/96`).
#[inline(always)]
pub fn ipv4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}

/// Parses the transport header at `offset`, of which the IP header says `available`
/// bytes are payload.
#[inline(always)]
fn parse_l4(
    frame: &impl Frame,
    p: &mut Packet,
    offset: usize,
    available: usize,
) -> Result<(), Verdict> {
    p.l4_offset = offset;
    // A first fragment must carry the whole transport header (RFC 1858); any other
    // packet too short for it is malformed.
    let short = if p.fragment == FRAGMENT_FIRST {
        Verdict::Fragment
    } else {
        Verdict::Malformed
    };
    match p.protocol {
        ip::TCP => {
            if available < 20 {
                return Err(short);
            }
            let h: &[u8; 20] = at(frame, offset).ok_or(Verdict::Malformed)?;
            let header_len = (h[12] >> 4) as usize * 4;
            if header_len < 20 {
                return Err(Verdict::Malformed);
            }
            if available < header_len {
                return Err(short);
            }
            p.src_port = u16::from_be_bytes([h[0], h[1]]);
            p.dst_port = u16::from_be_bytes([h[2], h[3]]);
            p.tcp_seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            p.tcp_ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
            p.tcp_flags = h[13];
            p.tcp_payload = (available - header_len) as u32;
            p.l4_header_len = header_len;
            p.has_ports = true;
        }
        ip::UDP => {
            if available < 8 {
                return Err(short);
            }
            let h: &[u8; 8] = at(frame, offset).ok_or(Verdict::Malformed)?;
            if u16::from_be_bytes([h[4], h[5]]) < 8 {
                return Err(Verdict::Malformed);
            }
            p.src_port = u16::from_be_bytes([h[0], h[1]]);
            p.dst_port = u16::from_be_bytes([h[2], h[3]]);
            p.l4_header_len = 8;
            p.has_ports = true;
        }
        ip::ICMP | ip::ICMPV6 => {
            if (p.protocol == ip::ICMP) != (p.kind == KIND_IPV4) {
                // ICMP inside IPv6 or ICMPv6 inside IPv4: other protocols, no ports.
                return Ok(());
            }
            if available < 8 {
                return Err(short);
            }
            let h: &[u8; 8] = at(frame, offset).ok_or(Verdict::Malformed)?;
            p.icmp_type = h[0];
            // The echo identifier stands in for a port.
            p.src_port = u16::from_be_bytes([h[4], h[5]]);
            p.l4_header_len = 8;
            p.has_ports = true;
            if p.is_nd_neighbour() {
                parse_nd(frame, p, offset, available)?;
            }
        }
        ip::IGMP if p.kind == KIND_IPV4 => {
            if available < 8 {
                return Err(short);
            }
            let h: &[u8; 8] = at(frame, offset).ok_or(Verdict::Malformed)?;
            p.icmp_type = h[0];
            p.l4_header_len = 8;
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
fn parse_nd(
    frame: &impl Frame,
    p: &mut Packet,
    offset: usize,
    available: usize,
) -> Result<(), Verdict> {
    if available < 24 {
        return Err(Verdict::Malformed);
    }
    let t: &[u8; 16] = at(frame, offset + 8).ok_or(Verdict::Malformed)?;
    set_copied(p, Address::NdTarget, t);
    p.nd_lladdr_foreign = false;
    let mut walked = 24usize;
    for _ in 0..MAX_ND_OPTIONS {
        if walked >= available {
            return Ok(());
        }
        if walked + 8 > available {
            return Err(Verdict::Malformed);
        }
        let o: &[u8; 8] = at(frame, offset + walked).ok_or(Verdict::Malformed)?;
        if o[1] == 0 {
            return Err(Verdict::Malformed);
        }
        // 1: source link-layer address (solicitations), 2: target (advertisements).
        if (o[0] == nd_option::SOURCE_LINK_LAYER_ADDRESS
            || o[0] == nd_option::TARGET_LINK_LAYER_ADDRESS)
            && [o[2], o[3], o[4], o[5], o[6], o[7]] != p.src_mac
        {
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
        let Some(ip) = at::<Ipv4Hdr>(frame, offset) else {
            return false;
        };
        let header_len = ip.ihl() as usize;
        if ip.version() != 4 || header_len < Ipv4Hdr::LEN {
            return false;
        }
        set_mapped_bytes(&mut key.src, &ip.src_addr);
        set_mapped_bytes(&mut key.dst, &ip.dst_addr);
        key.protocol = ip.proto;
        l4 = offset + header_len;
    } else {
        let Some(ip) = at::<Ipv6Hdr>(frame, offset) else {
            return false;
        };
        // An IPv6 header quoting IPv4-mapped addresses could only match IPv4 connections.
        if ip.version() != 6 || ipv4_mapped(&ip.src_addr) || ipv4_mapped(&ip.dst_addr) {
            return false;
        }
        copy_bytes(&mut key.src, &ip.src_addr);
        copy_bytes(&mut key.dst, &ip.dst_addr);
        key.protocol = ip.next_hdr;
        l4 = offset + Ipv6Hdr::LEN;
    }
    let Some(h) = at::<[u8; 8]>(frame, l4) else {
        return false;
    };
    zero_bytes(&mut key._pad);
    match key.protocol {
        ip::TCP | ip::UDP => {
            key.src_port = u16::from_be_bytes([h[0], h[1]]);
            key.dst_port = u16::from_be_bytes([h[2], h[3]]);
            true
        }
        ip::ICMP | ip::ICMPV6 if (key.protocol == ip::ICMP) == (p.kind == KIND_IPV4) => {
            // Only a quoted echo request belongs to a tracked connection.
            let echo = if key.protocol == ip::ICMP {
                icmp4::ECHO_REQUEST
            } else {
                icmp6::ECHO_REQUEST
            };
            key.src_port = u16::from_be_bytes([h[4], h[5]]);
            key.dst_port = 0;
            h[0] == echo
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isolator_common::mapped;

    const VM: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const PEER: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

    fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&PEER);
        f.extend_from_slice(&VM);
        f.extend_from_slice(&ether_type.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], fragment: u16, l4: &[u8]) -> Vec<u8> {
        let total = (20 + l4.len()) as u16;
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0x12, 0x34]);
        h.extend_from_slice(&fragment.to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(l4);
        ethernet(ether::IPV4, &h)
    }

    fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(&[next, 255]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(payload);
        ethernet(ether::IPV6, &h)
    }

    fn tcp_header(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        h
    }

    fn v6(last: u8) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = last;
        a
    }

    fn parsed(frame: &[u8]) -> Result<Packet, Verdict> {
        // SAFETY: Packet is integers, booleans and byte arrays; all zeros is a valid value.
        let mut p: Packet = unsafe { core::mem::zeroed() };
        p.reset();
        parse(&Bytes(frame), &mut p).map(|()| p)
    }

    #[test]
    fn ipv4_tcp_is_read_with_ports_flags_and_mapped_addresses() {
        let f = ipv4(
            ip::TCP,
            [10, 1, 1, 2],
            [10, 2, 1, 3],
            0,
            &tcp_header(4000, 443, tcp::SYN),
        );
        let p = parsed(&f).expect("well-formed");
        assert_eq!(p.kind, KIND_IPV4);
        assert_eq!(p.src, mapped([10, 1, 1, 2]));
        assert_eq!(p.dst, mapped([10, 2, 1, 3]));
        assert_eq!((p.protocol, p.src_port, p.dst_port), (ip::TCP, 4000, 443));
        assert_eq!(p.tcp_flags, tcp::SYN);
        assert!(p.has_ports && p.opens_connection());
        assert_eq!((p.src_mac, p.dst_mac), (VM, PEER));
    }

    #[test]
    fn truncated_and_inconsistent_headers_are_malformed() {
        let good = ipv4(
            ip::UDP,
            [10, 1, 1, 2],
            [10, 2, 1, 3],
            0,
            &[0, 1, 0, 2, 0, 8, 0, 0],
        );
        assert!(parsed(&good).is_ok());
        for cut in [0, 13, 14, 20, 33] {
            assert_eq!(
                parsed(&good[..cut]).err(),
                Some(Verdict::Malformed),
                "cut at {cut}"
            );
        }
        // Header length below 20 bytes.
        let mut short_ihl = good.clone();
        short_ihl[14] = 0x44;
        assert_eq!(parsed(&short_ihl).err(), Some(Verdict::Malformed));
        // Version 6 under the IPv4 EtherType.
        let mut wrong_version = good.clone();
        wrong_version[14] = 0x65;
        assert_eq!(parsed(&wrong_version).err(), Some(Verdict::Malformed));
        // Total length beyond the frame.
        let mut long = good.clone();
        long[17] = 200;
        assert_eq!(parsed(&long).err(), Some(Verdict::Malformed));
        // UDP length below its header.
        let mut udp = good;
        udp[14 + 20 + 5] = 4;
        assert_eq!(parsed(&udp).err(), Some(Verdict::Malformed));
    }

    #[test]
    fn vlan_tags_are_read_and_stacked_tags_refused() {
        let inner = ipv4(
            ip::UDP,
            [10, 1, 1, 2],
            [10, 1, 1, 3],
            0,
            &[0, 1, 0, 2, 0, 8, 0, 0],
        );
        let mut tagged = inner[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 100]);
        tagged.extend_from_slice(&inner[12..]);
        let p = parsed(&tagged).expect("one tag parses");
        assert!(p.has_vlan);
        assert_eq!(p.vlan, 100);
        let mut stacked = inner[..12].to_vec();
        stacked.extend_from_slice(&[0x88, 0xa8, 0x00, 10, 0x81, 0x00, 0x00, 100]);
        stacked.extend_from_slice(&inner[12..]);
        assert_eq!(parsed(&stacked).err(), Some(Verdict::Vlan));
    }

    #[test]
    fn unknown_ethertypes_and_ipv4_options_are_refused() {
        assert_eq!(
            parsed(&ethernet(0x88cc, &[0; 46])).err(),
            Some(Verdict::UnknownEthertype)
        );
        let options_then_udp = [0, 0, 0, 0, 0, 1, 0, 2, 0, 8, 0, 0];
        let mut with_options = ipv4(ip::UDP, [10, 1, 1, 2], [10, 1, 1, 3], 0, &options_then_udp);
        with_options[14] = 0x46;
        with_options[14 + 20..14 + 24].copy_from_slice(&[0x07, 0x04, 0, 0]);
        assert_eq!(parsed(&with_options).err(), Some(Verdict::IpOptions));
        with_options[14 + 20..14 + 24].copy_from_slice(&[0x94, 0x04, 0, 0]);
        assert!(parsed(&with_options).is_ok(), "a lone router alert passes");
    }

    #[test]
    fn fragments_are_classified_and_short_first_fragments_refused() {
        let more = 0x2000;
        let first = ipv4(
            ip::TCP,
            [10, 1, 1, 2],
            [10, 2, 1, 3],
            more,
            &tcp_header(1, 2, 0),
        );
        let p = parsed(&first).expect("a first fragment with the whole header");
        assert_eq!((p.fragment, p.frag_id), (FRAGMENT_FIRST, 0x1234));
        let short = ipv4(ip::TCP, [10, 1, 1, 2], [10, 2, 1, 3], more, &[0; 8]);
        assert_eq!(parsed(&short).err(), Some(Verdict::Fragment));
        let later = ipv4(ip::UDP, [10, 1, 1, 2], [10, 2, 1, 3], 3, &[0; 8]);
        let p = parsed(&later).expect("a later fragment");
        assert!(p.fragment == FRAGMENT_LATER && !p.has_ports);
        let over_flags = ipv4(ip::TCP, [10, 1, 1, 2], [10, 2, 1, 3], 1, &[0; 8]);
        assert_eq!(parsed(&over_flags).err(), Some(Verdict::Fragment));
    }

    #[test]
    fn ipv6_extension_headers_are_walked_up_to_the_bound() {
        let udp = [0u8, 1, 0, 2, 0, 8, 0, 0];
        let mut payload = vec![ip::UDP, 0, 0, 0, 0, 0, 0, 0];
        payload.extend_from_slice(&udp);
        let p = parsed(&ipv6(ip::DESTINATION_OPTIONS, v6(2), v6(3), &payload)).expect("parses");
        assert_eq!((p.protocol, p.dst_port), (ip::UDP, 2));
        // Five hop-by-hop headers in a row: more than the walk's bound.
        let mut chain = Vec::new();
        for _ in 0..5 {
            chain.extend_from_slice(&[ip::HOP_BY_HOP, 0, 0, 0, 0, 0, 0, 0]);
        }
        chain.extend_from_slice(&udp);
        assert_eq!(
            parsed(&ipv6(ip::HOP_BY_HOP, v6(2), v6(3), &chain)).err(),
            Some(Verdict::Ipv6Extensions)
        );
    }

    #[test]
    fn neighbour_discovery_options_are_all_checked() {
        let mut ns = vec![icmp6::NEIGHBOUR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
        ns.extend_from_slice(&v6(9));
        ns.extend_from_slice(&[nd_option::SOURCE_LINK_LAYER_ADDRESS, 1]);
        ns.extend_from_slice(&VM);
        let p = parsed(&ipv6(ip::ICMPV6, v6(2), v6(9), &ns)).expect("parses");
        assert!(p.is_nd_neighbour() && !p.nd_lladdr_foreign);
        assert_eq!(p.nd_target, v6(9));
        // A second option naming another MAC.
        ns.extend_from_slice(&[nd_option::SOURCE_LINK_LAYER_ADDRESS, 1]);
        ns.extend_from_slice(&PEER);
        let p = parsed(&ipv6(ip::ICMPV6, v6(2), v6(9), &ns)).expect("parses");
        assert!(p.nd_lladdr_foreign);
    }

    #[test]
    fn icmp_errors_yield_the_key_of_the_quoted_packet() {
        let quoted = ipv4(
            ip::TCP,
            [10, 2, 1, 3],
            [10, 1, 1, 2],
            0,
            &tcp_header(443, 4000, 0),
        );
        let mut icmp = vec![icmp4::DEST_UNREACHABLE, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted[14..14 + 28]);
        let f = ipv4(ip::ICMP, [10, 1, 1, 2], [10, 2, 1, 3], 0, &icmp);
        let p = parsed(&f).expect("parses");
        assert!(p.is_icmp_error());
        // SAFETY: ConnKey is plain integers and byte arrays.
        let mut key: ConnKey = unsafe { core::mem::zeroed() };
        assert!(quoted_key(&Bytes(&f), &p, &mut key));
        assert_eq!(
            (key.src, key.dst),
            (mapped([10, 2, 1, 3]), mapped([10, 1, 1, 2]))
        );
        assert_eq!(
            (key.src_port, key.dst_port, key.protocol),
            (443, 4000, ip::TCP)
        );
    }

    /// Every truncation of a well-formed frame is malformed (its length fields then reach
    /// past the end), and no corruption of one makes the parser panic (in a debug build an
    /// arithmetic overflow would).
    #[test]
    fn every_truncation_is_malformed_and_no_byte_flip_panics() {
        let frames = [
            ipv4(
                ip::TCP,
                [10, 1, 1, 2],
                [10, 2, 1, 3],
                0,
                &tcp_header(1, 2, tcp::SYN),
            ),
            ipv6(
                ip::ICMPV6,
                v6(2),
                v6(3),
                &[icmp6::ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 1],
            ),
        ];
        for frame in frames {
            assert!(parsed(&frame).is_ok());
            for cut in 0..frame.len() {
                let head = frame[..cut].to_vec();
                assert_eq!(
                    parsed(&head).err(),
                    Some(Verdict::Malformed),
                    "cut at {cut}"
                );
            }
            for i in 0..frame.len() {
                for bit in 0..8 {
                    let mut flipped = frame.clone();
                    flipped[i] ^= 1 << bit;
                    // Decided either way; the property is that it returns.
                    let _decided = parsed(&flipped);
                }
            }
        }
    }
}
