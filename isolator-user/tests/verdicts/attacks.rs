//! Verdict tables for what an attacker sends to get across (issue "isolation that holds
//! against an attacker"), each next to its legitimate twin: the host and its gateways,
//! loopback, management before every exception, neighbour discovery, MLD, DHCP and IGMP
//! only on the link, trusted uplinks, quarantined interfaces, fragments per vif. Needs
//! root.

use std::net::IpAddr;

use isolator::compile::Plan;
use isolator_common::verdict;
use isolator_tests::frame::{
    self, ACK, BROADCAST, Ext, SYN, SYN_ACK, V4, echo_request, icmp, ip as ip_from, tagged, tcp,
    tcp_at, udp, v6_with_extensions,
};

use crate::fixture::{
    Lab, PEER_MAC, ROUTER_MAC, VM_MAC, arp_request, from_outside, in_private_netns, ip, nd, out,
    row,
};

const POLICY: &str = r#"
version: 1
vif_names: ["d-*"]
management:
  - prefix: 192.168.100.0/24
  - prefix: fd00:ff::/64
tenants:
  - name: acme
    segments:
      - name: web
        egress: deny
        interfaces: ["d-aw*"]
        prefixes: ["10.1.1.0/24", "fd00:1:1::/64"]
        gateways:
          - address: 10.1.1.1
            services:
              - {protocol: udp, ports: 53}
              - {protocol: tcp, ports: 53}
          - address: fe80::1
            services:
              - {protocol: udp, ports: 547}
        uplinks: ["u-trunk"]
      - name: db
        interfaces: ["d-ad"]
        prefixes: ["10.1.2.0/24", "fd00:1:2::/64"]
        gateways:
          - address: 10.1.2.1
  - name: globex
    segments:
      - name: api
        interfaces: ["d-ga"]
        prefixes: ["10.2.1.0/24", "fd00:2:1::/64"]
"#;

/// d-rogue matches `vif_names` but no segment: quarantined. u-trunk is web's uplink.
const LINKS: &[&str] = &["d-aw1", "d-aw2", "d-ad", "d-ga", "d-rogue", "u-trunk"];

/// The host's own addresses, as netlink would list them: the gateway, a public address,
/// the gateway's link-local address and another link-local one.
fn with_host_addresses(plan: &mut Plan) {
    plan.host_addresses = ["10.1.1.1", "192.0.2.10", "fe80::1", "fe80::99"]
        .iter()
        .map(|a| a.parse::<IpAddr>().unwrap())
        .collect();
}

fn lab() -> Lab {
    Lab::with_plan(POLICY, LINKS, with_host_addresses)
}

/// An IP packet of protocol `proto` with `body`, from the VM to a group's MAC.
fn raw_ip(dst_mac: frame::Mac, src: &str, dst: &str, proto: u8, body: &[u8]) -> Vec<u8> {
    let packet = frame::ip_packet(frame::addr(src), frame::addr(dst), proto, body);
    frame::ethernet(VM_MAC, dst_mac, 0x0800, &packet)
}

#[test]
fn the_host_and_its_gateways_loopback_and_management_come_first() {
    in_private_netns(|| {
        let mut lab = lab();
        lab.check_all(&[
            row(
                "to loopback",
                "d-aw1",
                ip("10.1.1.2", "127.0.0.1", tcp(40000, 22, SYN)),
                verdict::MANAGEMENT,
            ),
            row(
                "to ::1",
                "d-aw1",
                ip("fd00:1:1::2", "::1", tcp(40000, 22, SYN)),
                verdict::MANAGEMENT,
            ),
            row(
                "the gateway's declared service (DNS)",
                "d-aw1",
                ip("10.1.1.2", "10.1.1.1", udp(40000, 53)),
                verdict::PASS,
            ),
            out(
                "and its answer from the host's stack",
                "d-aw1",
                ip("10.1.1.1", "10.1.1.2", udp(53, 40000)),
                verdict::PASS,
            )
            .by_host(),
            row(
                "any other service of the gateway (the host's sshd)",
                "d-aw1",
                ip("10.1.1.2", "10.1.1.1", tcp(40000, 22, SYN)),
                verdict::MANAGEMENT,
            ),
            row(
                "another address of the host",
                "d-aw1",
                ip("10.1.1.2", "192.0.2.10", tcp(40000, 22, SYN)),
                verdict::MANAGEMENT,
            ),
            row(
                "the host's link-local address",
                "d-aw1",
                ip("fe80::a1", "fe80::99", tcp(40000, 22, SYN)),
                verdict::MANAGEMENT,
            ),
            row(
                "the link-local gateway's declared service (DHCPv6)",
                "d-aw1",
                ip("fe80::a1", "fe80::1", udp(546, 547)),
                verdict::PASS,
            ),
            row(
                "another segment may not use web's gateway services",
                "d-ad",
                ip("10.1.2.5", "10.1.1.1", udp(40000, 53)),
                verdict::MANAGEMENT,
            ),
            row(
                "ARP for the gateway",
                "d-aw1",
                arp_request(VM_MAC, "10.1.1.2", "10.1.1.1"),
                verdict::PASS,
            ),
            row(
                "neighbour solicitation for the link-local gateway",
                "d-aw1",
                nd(VM_MAC, 135, "fe80::a1", "ff02::1:ff00:1", "fe80::1"),
                verdict::PASS,
            ),
            row(
                "a router solicitation to all routers",
                "d-aw1",
                ip_from(
                    VM_MAC,
                    [0x33, 0x33, 0, 0, 0, 2],
                    "fe80::a1",
                    "ff02::2",
                    icmp(133),
                ),
                verdict::PASS,
            ),
            row(
                "a router solicitation sent unicast to the management host",
                "d-aw1",
                ip_from(VM_MAC, PEER_MAC, "fd00:1:1::2", "fd00:ff::5", icmp(133)),
                verdict::MANAGEMENT,
            ),
            row(
                "a neighbour solicitation for its own address, unicast to the management host",
                "d-aw1",
                frame::nd(
                    VM_MAC,
                    PEER_MAC,
                    135,
                    "fd00:1:1::2",
                    "fd00:ff::5",
                    "fd00:1:1::2",
                    &[],
                ),
                verdict::MANAGEMENT,
            ),
            row(
                "a neighbour solicitation unicast to an outside address (egress deny)",
                "d-aw1",
                frame::nd(
                    VM_MAC,
                    PEER_MAC,
                    135,
                    "fd00:1:1::2",
                    "2001:db8::5",
                    "fd00:1:1::2",
                    &[],
                ),
                verdict::EGRESS_DENIED,
            ),
            row(
                "a neighbour solicitation to a neighbour of its segment (unicast, NUD)",
                "d-aw1",
                frame::nd(
                    VM_MAC,
                    PEER_MAC,
                    135,
                    "fd00:1:1::2",
                    "fd00:1:1::3",
                    "fd00:1:1::3",
                    &[],
                ),
                verdict::PASS,
            ),
        ]);
    });
}

/// A TCP connection to a gateway's service goes through its whole handshake and carries
/// data both ways: the VM's own segments (the handshake's last ACK, its data) move the
/// connection along, so that the host's data after its SYN-ACK reaches the VM. Its twin:
/// the same segment from the host on a port the VM never connected from is not a reply.
#[test]
fn a_tcp_connection_to_a_gateway_service_carries_data_both_ways() {
    const C: u32 = 1_000;
    const S: u32 = 7_000_000;
    in_private_netns(|| {
        let mut lab = lab();
        lab.check_all(&[
            row(
                "the VM opens a connection to the gateway's DNS over TCP",
                "d-aw1",
                ip("10.1.1.2", "10.1.1.1", tcp_at(40000, 53, SYN, C, 0)),
                verdict::PASS,
            ),
            out(
                "the host accepts",
                "d-aw1",
                ip("10.1.1.1", "10.1.1.2", tcp_at(53, 40000, SYN_ACK, S, C + 1)),
                verdict::PASS,
            )
            .by_host(),
            row(
                "the VM completes the handshake",
                "d-aw1",
                ip("10.1.1.2", "10.1.1.1", tcp_at(40000, 53, ACK, C + 1, S + 1)),
                verdict::PASS,
            ),
            row(
                "the VM's query",
                "d-aw1",
                ip("10.1.1.2", "10.1.1.1", tcp_at(40000, 53, ACK, C + 1, S + 1)),
                verdict::PASS,
            ),
            out(
                "the host's answer",
                "d-aw1",
                ip(
                    "10.1.1.1",
                    "10.1.1.2",
                    tcp_at(53, 40000, ACK, S + 1, C + 40),
                ),
                verdict::PASS,
            )
            .by_host(),
            out(
                "the same segment to a port the VM never connected from",
                "d-aw1",
                ip(
                    "10.1.1.1",
                    "10.1.1.2",
                    tcp_at(53, 40001, ACK, S + 1, C + 40),
                ),
                verdict::NOT_EXPOSED,
            )
            .by_host(),
        ]);
    });
}

#[test]
fn link_local_housekeeping_only_on_the_link() {
    in_private_netns(|| {
        let mut lab = lab();
        let igmp_report = [0x16, 0, 0x08, 0xc3, 224, 0, 0, 251];
        let vrrp = [0x31, 1, 100, 1, 0, 1, 0, 0, 10, 1, 1, 254];
        lab.check_all(&[
            row(
                "an MLD report to its link-scope group (egress deny)",
                "d-aw1",
                ip_from(
                    VM_MAC,
                    [0x33, 0x33, 0, 0, 0, 0x16],
                    "fe80::a1",
                    "ff02::16",
                    icmp(143),
                ),
                verdict::PASS,
            ),
            row(
                "an MLD report unicast to an outside address (egress deny)",
                "d-aw1",
                ip_from(VM_MAC, PEER_MAC, "fd00:1:1::2", "2001:db8::5", icmp(143)),
                verdict::EGRESS_DENIED,
            ),
            row(
                "DHCP discovery to the broadcast address",
                "d-aw1",
                ip_from(VM_MAC, BROADCAST, "0.0.0.0", "255.255.255.255", udp(68, 67)),
                verdict::PASS,
            ),
            row(
                "DHCPv6 solicit to All_DHCP_Relay_Agents_and_Servers",
                "d-aw1",
                ip_from(
                    VM_MAC,
                    [0x33, 0x33, 0, 1, 0, 2],
                    "fe80::a1",
                    "ff02::1:2",
                    udp(546, 547),
                ),
                verdict::PASS,
            ),
            row(
                "a DHCP request unicast to an outside server (egress deny)",
                "d-aw1",
                ip("10.1.1.2", "198.51.100.1", udp(68, 67)),
                verdict::EGRESS_DENIED,
            ),
            row(
                "a DHCP request unicast to the management host",
                "d-aw1",
                ip("10.1.1.2", "192.168.100.5", udp(68, 67)),
                verdict::MANAGEMENT,
            ),
            row(
                "an IGMP report (egress deny)",
                "d-aw1",
                raw_ip(
                    [1, 0, 0x5e, 0, 0, 0x16],
                    "10.1.1.2",
                    "224.0.0.22",
                    2,
                    &igmp_report,
                ),
                verdict::PASS,
            ),
            row(
                "VRRP to its link-scope group (egress deny)",
                "d-aw1",
                raw_ip(
                    [1, 0, 0x5e, 0, 0, 0x12],
                    "10.1.1.2",
                    "224.0.0.18",
                    112,
                    &vrrp,
                ),
                verdict::PASS,
            ),
            out(
                "an IGMP membership query from the router",
                "d-aw1",
                frame::ethernet(
                    ROUTER_MAC,
                    [1, 0, 0x5e, 0, 0, 1],
                    0x0800,
                    &frame::ip_packet(
                        frame::addr("192.0.2.1"),
                        frame::addr("224.0.0.1"),
                        2,
                        &[0x11, 0x64, 0xee, 0x9b, 0, 0, 0, 0],
                    ),
                ),
                verdict::PASS,
            ),
            out(
                "a DHCP answer from the segment's gateway (the host)",
                "d-aw1",
                ip_from(
                    ROUTER_MAC,
                    BROADCAST,
                    "10.1.1.1",
                    "255.255.255.255",
                    udp(67, 68),
                ),
                verdict::PASS,
            )
            .by_host(),
            out(
                "ARP from outside for the segment's gateway",
                "d-aw1",
                arp_request(ROUTER_MAC, "10.1.1.1", "10.1.1.2"),
                verdict::PASS,
            ),
            out(
                "ARP from outside claiming a VM's address",
                "d-aw1",
                arp_request(ROUTER_MAC, "10.1.1.7", "10.1.1.2"),
                verdict::ARP_SPOOF,
            ),
            out(
                "a gratuitous ARP from outside claiming another segment's address",
                "d-aw1",
                arp_request(ROUTER_MAC, "10.1.2.5", "10.1.2.5"),
                verdict::ARP_SPOOF,
            ),
            out(
                "a request from db's gateway for a db VM, flooded to web's vif: not for it",
                "d-aw1",
                arp_request(ROUTER_MAC, "10.1.2.1", "10.1.2.5"),
                verdict::NOT_EXPOSED,
            ),
            out(
                "the same request claiming a db address no gateway has: a claim web could believe",
                "d-aw1",
                arp_request(ROUTER_MAC, "10.1.2.9", "10.1.2.5"),
                verdict::ARP_SPOOF,
            ),
            row(
                "an 802.1p priority tag (VLAN id 0) is no VLAN",
                "d-aw1",
                tagged(&ip("10.1.1.2", "10.1.1.3", tcp(40000, 22, SYN)), 0x8100, 0),
                verdict::PASS,
            ),
            row(
                "its twin with VLAN id 5 the interface does not list",
                "d-aw1",
                tagged(&ip("10.1.1.2", "10.1.1.3", tcp(40000, 22, SYN)), 0x8100, 5),
                verdict::VLAN,
            ),
        ]);
    });
}

#[test]
fn senders_by_entry_interface_uplinks_and_quarantine() {
    in_private_netns(|| {
        let mut lab = lab();
        lab.check_all(&[
            out(
                "from web's trusted uplink, a web source: web (same segment)",
                "d-aw1",
                ip("10.1.1.7", "10.1.1.2", tcp(40000, 22, SYN)),
                verdict::PASS,
            )
            .from("u-trunk"),
            out(
                "from web's uplink, a db source: outside (the uplink is not trusted for db)",
                "d-ad",
                ip("10.1.2.7", "10.1.2.5", tcp(40000, 22, SYN)),
                verdict::NOT_EXPOSED,
            )
            .from("u-trunk"),
            out(
                "from web's uplink, an outside source: outside",
                "d-aw1",
                ip("198.51.100.7", "10.1.1.2", tcp(40000, 22, SYN)),
                verdict::NOT_EXPOSED,
            )
            .from("u-trunk"),
            out(
                "from the plain uplink, a web source: outside",
                "d-aw1",
                from_outside("10.1.1.7", "10.1.1.2", tcp(40000, 22, SYN)),
                verdict::NOT_EXPOSED,
            ),
            row(
                "a quarantined interface sends nothing",
                "d-rogue",
                ip("10.1.1.9", "10.1.1.2", echo_request(1)),
                verdict::UNKNOWN_INTERFACE,
            ),
            out(
                "and receives nothing",
                "d-rogue",
                ip("10.1.1.2", "10.1.1.9", echo_request(1)),
                verdict::UNKNOWN_INTERFACE,
            )
            .from("d-aw1"),
            out(
                "a frame that entered through it is refused wherever it is delivered",
                "d-aw1",
                ip("10.1.1.9", "10.1.1.2", echo_request(1)),
                verdict::UNKNOWN_INTERFACE,
            )
            .from("d-rogue"),
            // The twins: the same frames through a classified vif of web pass.
            row(
                "a classified vif sends the same frame (twin)",
                "d-aw2",
                ip("10.1.1.9", "10.1.1.2", echo_request(1)),
                verdict::PASS,
            ),
            out(
                "and receives it (twin)",
                "d-aw2",
                ip("10.1.1.2", "10.1.1.9", echo_request(1)),
                verdict::PASS,
            )
            .from("d-aw1"),
            out(
                "a frame that entered through it is delivered (twin)",
                "d-aw1",
                ip("10.1.1.9", "10.1.1.2", echo_request(1)),
                verdict::PASS,
            )
            .from("d-aw2"),
        ]);
    });
}

#[test]
fn fragments_follow_their_first_at_the_same_vif_and_not_over_its_header() {
    in_private_netns(|| {
        let mut lab = lab();
        let v6_frag = |offset, more, exts: &[Ext], l4| {
            let mut chain = vec![Ext::Fragment {
                offset,
                more,
                id: 91,
            }];
            chain.extend_from_slice(exts);
            v6_with_extensions(VM_MAC, PEER_MAC, "fd00:1:1::2", "fd00:1:1::3", &chain, l4)
        };
        let tcp_first = V4 {
            id: 21,
            more_fragments: true,
            ..V4::new("10.1.1.2", "10.1.1.3", tcp(40000, 22, SYN))
        };
        let over_header = V4 {
            id: 21,
            offset: 2, // 16 bytes in: inside the 20-byte TCP header
            protocol: 6,
            payload: vec![0; 8],
            ..V4::new("10.1.1.2", "10.1.1.3", udp(1, 1))
        };
        let after_header = V4 {
            offset: 3, // 24 bytes in: after it
            ..over_header.clone()
        };
        lab.check_all(&[
            row(
                "an IPv6 first fragment with destination options after the fragment header",
                "d-aw1",
                v6_frag(0, true, &[Ext::DestinationOptions], udp(40000, 53)),
                verdict::PASS,
            ),
            row(
                "its later fragment (same Next Header in its fragment header)",
                "d-aw1",
                v6_frag(2, false, &[Ext::DestinationOptions], udp(40000, 53)),
                verdict::PASS,
            ),
            row(
                "the same later fragment at another vif, where its first never passed",
                "d-aw2",
                v6_frag(2, false, &[Ext::DestinationOptions], udp(40000, 53)),
                verdict::FRAGMENT,
            ),
            row(
                "an IPv6 TCP fragment 8 bytes in (over the flags)",
                "d-aw1",
                v6_frag(1, false, &[], tcp(40000, 22, SYN)),
                verdict::FRAGMENT,
            ),
            row(
                "an IPv4 TCP first fragment",
                "d-aw1",
                tcp_first.frame(VM_MAC, PEER_MAC),
                verdict::PASS,
            ),
            row(
                "a later fragment reaching back into its TCP header",
                "d-aw1",
                over_header.frame(VM_MAC, PEER_MAC),
                verdict::FRAGMENT,
            ),
            row(
                "a later fragment after its header",
                "d-aw1",
                after_header.frame(VM_MAC, PEER_MAC),
                verdict::PASS,
            ),
        ]);
    });
}
