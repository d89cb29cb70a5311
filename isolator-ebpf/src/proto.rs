//! Protocol numbers the programs read in frames, named once.

/// EtherTypes (host byte order).
pub mod ether {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q VLAN tag.
    pub const VLAN_8021Q: u16 = 0x8100;
    /// 802.1ad (QinQ service) tag.
    pub const VLAN_8021AD: u16 = 0x88a8;
    /// The VLAN id in a tag control information field (the rest is priority and DEI).
    pub const VLAN_ID_MASK: u16 = 0x0fff;

    /// Whether an EtherType announces a VLAN tag: 802.1Q or 802.1ad.
    #[inline(always)]
    pub const fn is_vlan_tag(ether_type: u16) -> bool {
        ether_type == VLAN_8021Q || ether_type == VLAN_8021AD
    }
}

/// IP protocol numbers (and IPv6 next-header values).
pub mod ip {
    pub const ICMP: u8 = 1;
    pub const IGMP: u8 = 2;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    /// IPv6 extension headers the parser walks.
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const DESTINATION_OPTIONS: u8 = 60;

    /// Whether an IPv6 next-header value is an extension header the parser walks.
    #[inline(always)]
    pub const fn is_extension(next: u8) -> bool {
        matches!(next, HOP_BY_HOP | ROUTING | FRAGMENT | DESTINATION_OPTIONS)
    }
}

/// ICMPv4 message types.
pub mod icmp4 {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// ICMPv6 message types.
pub mod icmp6 {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const MLD_QUERY: u8 = 130;
    pub const MLD_REPORT: u8 = 131;
    pub const MLD_DONE: u8 = 132;
    pub const ROUTER_SOLICITATION: u8 = 133;
    pub const ROUTER_ADVERTISEMENT: u8 = 134;
    pub const NEIGHBOUR_SOLICITATION: u8 = 135;
    pub const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
    pub const REDIRECT: u8 = 137;
    pub const MLDV2_REPORT: u8 = 143;
}

/// Neighbour discovery option types.
pub mod nd_option {
    pub const SOURCE_LINK_LAYER_ADDRESS: u8 = 1;
    pub const TARGET_LINK_LAYER_ADDRESS: u8 = 2;
}

/// ARP operations.
pub mod arp {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;
}

/// TCP flags (byte 13 of the header).
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// UDP ports of DHCP and DHCPv6.
pub mod dhcp {
    pub const V4_SERVER: u16 = 67;
    pub const V4_CLIENT: u16 = 68;
    pub const V6_CLIENT: u16 = 546;
    pub const V6_SERVER: u16 = 547;
}
