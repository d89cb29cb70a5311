//! The model's own frame parser, written from the parser's description in
//! `docs/design.md` ("The programs"), independent of the kernel's `packet` module.
//!
//! It reads what the verdict needs (addresses, ports, flags, types, the ND target and
//! options) and refuses what the kernel's parser refuses, with the same reason.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use isolator_common::verdict::Verdict;

/// EtherTypes the parser knows.
const IPV4: u16 = 0x0800;
const IPV6: u16 = 0x86dd;
const ARP: u16 = 0x0806;
const VLAN_8021Q: u16 = 0x8100;
const VLAN_8021AD: u16 = 0x88a8;

/// IP protocol numbers.
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const IGMP: u8 = 2;

/// ICMPv6 types the verdict looks at.
pub mod icmp6 {
    pub const MLD_QUERY: u8 = 130;
    pub const MLD_REPORT: u8 = 131;
    pub const MLD_DONE: u8 = 132;
    pub const ROUTER_SOLICITATION: u8 = 133;
    pub const ROUTER_ADVERTISEMENT: u8 = 134;
    pub const NEIGHBOUR_SOLICITATION: u8 = 135;
    pub const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
    pub const REDIRECT: u8 = 137;
    pub const MLD_V2_REPORT: u8 = 143;
}

/// ICMPv4 redirect.
pub const ICMP4_REDIRECT: u8 = 5;
/// IGMP membership query.
pub const IGMP_QUERY: u8 = 0x11;

/// Most ND options the kernel walks; a message with more is refused (`nd_spoof`).
pub const ND_MAX_OPTIONS: usize = 8;

/// A frame as the verdict sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The VLAN id of the one tag the frame carries (a priority tag, id 0, counts as none).
    pub vlan: Option<u16>,
    pub l3: L3,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L3 {
    Arp(Arp),
    Ip(Ip),
}

/// ARP for Ethernet/IPv4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender: Ipv4Addr,
    pub target: Ipv4Addr,
}

/// An IPv4 or IPv6 packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ip {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL or hop limit.
    pub hop_limit: u8,
    /// The transport protocol (after IPv6 extension headers).
    pub protocol: u8,
    pub l4: L4,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6 (by the family); for neighbour solicitations and advertisements the
    /// target and the link-layer address options.
    Icmp {
        kind: u8,
        code: u8,
        nd: Option<Nd>,
    },
    Igmp {
        kind: u8,
    },
    /// A protocol the parser does not look into.
    Other,
}

/// The body of a neighbour solicitation or advertisement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nd {
    pub target: Ipv6Addr,
    /// Every option: (type, the six bytes after type and length). More than
    /// [`ND_MAX_OPTIONS`] are refused by the source guard.
    pub options: Vec<(u8, [u8; 6])>,
}

impl Ip {
    /// The destination port of TCP and UDP.
    pub fn dport(&self) -> Option<u16> {
        match self.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => Some(dport),
            _ => None,
        }
    }

    pub fn sport(&self) -> Option<u16> {
        match self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => Some(sport),
            _ => None,
        }
    }

    /// The ICMP or ICMPv6 type.
    pub fn icmp_kind(&self) -> Option<u8> {
        match self.l4 {
            L4::Icmp { kind, .. } => Some(kind),
            _ => None,
        }
    }

    pub fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }

    /// ICMPv6 of one of the neighbour discovery types (133 to 137).
    pub fn nd_kind(&self) -> Option<u8> {
        match self.l4 {
            L4::Icmp { kind, .. }
                if self.is_v6()
                    && (icmp6::ROUTER_SOLICITATION..=icmp6::REDIRECT).contains(&kind) =>
            {
                Some(kind)
            }
            _ => None,
        }
    }

    pub fn is_mld(&self) -> bool {
        self.is_v6()
            && matches!(
                self.icmp_kind(),
                Some(icmp6::MLD_QUERY | icmp6::MLD_REPORT | icmp6::MLD_DONE | icmp6::MLD_V2_REPORT)
            )
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn mac(b: &[u8], at: usize) -> Option<[u8; 6]> {
    b.get(at..at + 6)?.try_into().ok()
}

/// Parses a frame, or returns the verdict the parser reaches on it (`malformed`, `vlan`,
/// `unknown_ethertype`, `ip_options`, `ipv6_extensions`, `fragment`).
pub fn parse(b: &[u8]) -> Result<Frame, Verdict> {
    use Verdict::Malformed;
    let dst_mac = mac(b, 0).ok_or(Malformed)?;
    let src_mac = mac(b, 6).ok_or(Malformed)?;
    let mut ether_type = be16(b, 12).ok_or(Malformed)?;
    let mut at = 14;
    let mut vlan = None;
    if ether_type == VLAN_8021Q || ether_type == VLAN_8021AD {
        let tci = be16(b, 14).ok_or(Malformed)?;
        ether_type = be16(b, 16).ok_or(Malformed)?;
        at = 18;
        if ether_type == VLAN_8021Q || ether_type == VLAN_8021AD {
            return Err(Verdict::Vlan);
        }
        let id = tci & 0x0fff;
        vlan = (id != 0).then_some(id);
    }
    let rest = &b[at..];
    let l3 = match ether_type {
        ARP => L3::Arp(parse_arp(rest)?),
        IPV4 => L3::Ip(parse_v4(rest)?),
        IPV6 => L3::Ip(parse_v6(rest)?),
        _ => return Err(Verdict::UnknownEthertype),
    };
    Ok(Frame {
        src_mac,
        dst_mac,
        vlan,
        l3,
    })
}

fn parse_arp(b: &[u8]) -> Result<Arp, Verdict> {
    if b.len() < 28 || be16(b, 0) != Some(1) || be16(b, 2) != Some(IPV4) || b[4] != 6 || b[5] != 4 {
        return Err(Verdict::Malformed);
    }
    let four = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    Ok(Arp {
        op: be16(b, 6).unwrap_or(0),
        sender_mac: mac(b, 8).ok_or(Verdict::Malformed)?,
        sender: four(14),
        target: four(24),
    })
}

/// A lone router alert option (RFC 2113), the only IPv4 option the kernel admits.
const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0x00, 0x00];

fn parse_v4(b: &[u8]) -> Result<Ip, Verdict> {
    use Verdict::Malformed;
    if b.len() < 20 || b[0] >> 4 != 4 {
        return Err(Malformed);
    }
    let header = usize::from(b[0] & 0x0f) * 4;
    let total = usize::from(be16(b, 2).ok_or(Malformed)?);
    if header < 20 || header > b.len() || total < header || total > b.len() {
        return Err(Malformed);
    }
    if header > 20 && b[20..header] != ROUTER_ALERT {
        return Err(Verdict::IpOptions);
    }
    let fragment = be16(b, 6).ok_or(Malformed)?;
    let more_fragments = fragment & 0x2000 != 0;
    let offset = fragment & 0x1fff;
    if offset != 0 {
        // A later fragment: the model keeps no fragment state (see the module's doc), so
        // it is judged as one whose first fragment never passed.
        return Err(Verdict::Fragment);
    }
    let src = IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(b[16], b[17], b[18], b[19]));
    let protocol = b[9];
    let l4 = parse_l4(protocol, &b[header..total], false, more_fragments)?;
    Ok(Ip {
        src,
        dst,
        hop_limit: b[8],
        protocol,
        l4,
    })
}

/// IPv6 extension headers the kernel walks.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;
/// Most extension headers walked; more drop as `ipv6_extensions`.
const MAX_EXTENSIONS: usize = 4;

fn parse_v6(b: &[u8]) -> Result<Ip, Verdict> {
    use Verdict::Malformed;
    if b.len() < 40 || b[0] >> 4 != 6 {
        return Err(Malformed);
    }
    let payload = usize::from(be16(b, 4).ok_or(Malformed)?);
    if 40 + payload > b.len() {
        return Err(Malformed);
    }
    let addr = |at: usize| {
        let octets: [u8; 16] = b[at..at + 16].try_into().expect("16 bytes");
        Ipv6Addr::from(octets)
    };
    let (src, dst) = (addr(8), addr(24));
    if src.to_ipv4_mapped().is_some() || dst.to_ipv4_mapped().is_some() {
        return Err(Malformed);
    }
    let packet = &b[40..40 + payload];
    let mut next = b[6];
    let mut at = 0;
    let mut more_fragments = false;
    let mut walked = 0;
    while matches!(next, HOP_BY_HOP | ROUTING | FRAGMENT | DEST_OPTS) {
        if walked == MAX_EXTENSIONS {
            return Err(Verdict::Ipv6Extensions);
        }
        walked += 1;
        let header = packet.get(at..at + 8).ok_or(Malformed)?;
        let len = if next == FRAGMENT {
            let field = u16::from_be_bytes([header[2], header[3]]);
            if field >> 3 != 0 {
                return Err(Verdict::Fragment);
            }
            more_fragments = field & 1 != 0;
            8
        } else {
            (usize::from(header[1]) + 1) * 8
        };
        if at + len > packet.len() {
            return Err(Malformed);
        }
        next = header[0];
        at += len;
    }
    let l4 = parse_l4(next, &packet[at..], true, more_fragments)?;
    Ok(Ip {
        src: IpAddr::V6(src),
        dst: IpAddr::V6(dst),
        hop_limit: b[7],
        protocol: next,
        l4,
    })
}

fn parse_l4(protocol: u8, b: &[u8], v6: bool, first_fragment: bool) -> Result<L4, Verdict> {
    // A first fragment must hold the whole transport header (RFC 1858).
    let short = if first_fragment {
        Verdict::Fragment
    } else {
        Verdict::Malformed
    };
    match protocol {
        TCP => {
            if b.len() < 20 {
                return Err(short);
            }
            let offset = usize::from(b[12] >> 4) * 4;
            if offset < 20 {
                return Err(Verdict::Malformed);
            }
            if offset > b.len() {
                return Err(short);
            }
            Ok(L4::Tcp {
                sport: be16(b, 0).unwrap_or(0),
                dport: be16(b, 2).unwrap_or(0),
                flags: b[13],
            })
        }
        UDP => {
            if b.len() < 8 {
                return Err(short);
            }
            if be16(b, 4).unwrap_or(0) < 8 {
                return Err(Verdict::Malformed);
            }
            Ok(L4::Udp {
                sport: be16(b, 0).unwrap_or(0),
                dport: be16(b, 2).unwrap_or(0),
            })
        }
        ICMP if !v6 => {
            if b.len() < 8 {
                return Err(short);
            }
            Ok(L4::Icmp {
                kind: b[0],
                code: b[1],
                nd: None,
            })
        }
        ICMPV6 if v6 => {
            if b.len() < 8 {
                return Err(short);
            }
            let kind = b[0];
            let nd = if kind == icmp6::NEIGHBOUR_SOLICITATION
                || kind == icmp6::NEIGHBOUR_ADVERTISEMENT
            {
                Some(parse_nd(b)?)
            } else {
                None
            };
            Ok(L4::Icmp {
                kind,
                code: b[1],
                nd,
            })
        }
        IGMP if !v6 => {
            if b.len() < 8 {
                return Err(short);
            }
            Ok(L4::Igmp { kind: b[0] })
        }
        _ => Ok(L4::Other),
    }
}

fn parse_nd(b: &[u8]) -> Result<Nd, Verdict> {
    let target: [u8; 16] = b.get(8..24).ok_or(Verdict::Malformed)?.try_into().unwrap();
    let mut options = Vec::new();
    let mut at = 24;
    while at < b.len() {
        let kind = b[at];
        let len = usize::from(*b.get(at + 1).ok_or(Verdict::Malformed)?) * 8;
        if len == 0 || at + len > b.len() {
            return Err(Verdict::Malformed);
        }
        let value = if len >= 8 {
            mac(b, at + 2).unwrap_or([0; 6])
        } else {
            [0; 6]
        };
        options.push((kind, value));
        at += len;
    }
    Ok(Nd {
        target: Ipv6Addr::from(target),
        options,
    })
}
