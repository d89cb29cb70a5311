//! Verdict tables for the source and layer-2 guards (invariant I2) and for malformed
//! and evasive frames (BPF_PROG_TEST_RUN). Needs root.
//!
//! d-aw1 declares its identity (MAC, addresses, VLAN 100); d-aw2 declares none (its
//! segment's prefixes apply); db allows router advertisements and DHCP servers.

use isolator::compile::Plan;
use isolator_common::{SegmentInfo, verdict};
use isolator_tests::frame::{
    BROADCAST, Ext, V4, echo_request, icmp, ip as ip_from, router_advertisement, tagged, tcp,
    truncated, udp,
};

use isolator_tests::frame::v6_with_extensions;

use crate::fixture::{
    Lab, PEER_MAC, VM_MAC, arp as arp_frame, in_private_netns, nd_with_lladdr, nd_with_options,
    out, row,
};

const POLICY: &str = r#"
version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["d-aw*"]
        prefixes: ["10.1.1.0/24", "fd00:1:1::/64"]
      - name: db
        interfaces: ["d-ad"]
        prefixes: ["10.1.2.0/24", "fd00:1:2::/64"]
"#;

const M1: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
const M2: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x02];
const MDB: [u8; 6] = [0x02, 0, 0, 0, 0xdb, 0x01];
/// An MTU option's body: reserved, MTU 1500.
const MTU: [u8; 6] = [0, 0, 0, 0, 0x05, 0xdc];

fn declare(plan: &mut Plan) {
    let aw1 = plan
        .vifs
        .iter_mut()
        .find(|v| v.name == "d-aw1")
        .expect("d-aw1 is managed");
    aw1.mac = Some(M1);
    aw1.addresses = vec![
        "10.1.1.2/32".parse().unwrap(),
        "fd00:1:1::2/128".parse().unwrap(),
        "fe80::a1/128".parse().unwrap(),
    ];
    aw1.vlans = vec![100];
    let db = plan.segments.iter_mut().find(|s| &*s.name == "db").unwrap();
    db.flags |= SegmentInfo::ALLOW_RA | SegmentInfo::ALLOW_DHCP_SERVER;
}

fn lab() -> Lab {
    Lab::with_plan(POLICY, &["d-aw1", "d-aw2", "d-ad"], declare)
}

#[test]
fn source_addresses_and_macs() {
    in_private_netns(|| {
        let mut lab = lab();
        lab.check_all_both_ingresses(&[
            row(
                "declared MAC and address",
                "d-aw1",
                ip_from(M1, PEER_MAC, "10.1.1.2", "10.1.1.3", tcp(1000, 22, 2)),
                verdict::PASS,
            ),
            row(
                "another source MAC than the declared one",
                "d-aw1",
                ip_from(M2, PEER_MAC, "10.1.1.2", "10.1.1.3", tcp(1000, 22, 2)),
                verdict::SPOOFED_MAC,
            ),
            row(
                "an address of the segment that was not declared",
                "d-aw1",
                ip_from(M1, PEER_MAC, "10.1.1.3", "10.1.1.4", tcp(1000, 22, 2)),
                verdict::SPOOFED_IP,
            ),
            row(
                "declared IPv6 address",
                "d-aw1",
                ip_from(M1, PEER_MAC, "fd00:1:1::2", "fd00:1:1::3", tcp(1000, 22, 2)),
                verdict::PASS,
            ),
            row(
                "undeclared IPv6 address",
                "d-aw1",
                ip_from(M1, PEER_MAC, "fd00:1:1::3", "fd00:1:1::4", tcp(1000, 22, 2)),
                verdict::SPOOFED_IP,
            ),
            row(
                "its declared link-local source",
                "d-aw1",
                ip_from(M1, PEER_MAC, "fe80::a1", "fe80::2", echo_request(1)),
                verdict::PASS,
            ),
            row(
                "another link-local source, link-local addresses declared",
                "d-aw1",
                ip_from(M1, PEER_MAC, "fe80::1", "fe80::2", echo_request(1)),
                verdict::SPOOFED_IP,
            ),
            row(
                "any link-local source when none are declared",
                "d-aw2",
                ip_from(M2, PEER_MAC, "fe80::1", "fe80::2", echo_request(1)),
                verdict::PASS,
            ),
            row(
                "no declared addresses: any address of the segment",
                "d-aw2",
                ip_from(M2, PEER_MAC, "10.1.1.77", "10.1.1.3", tcp(1000, 22, 2)),
                verdict::PASS,
            ),
            row(
                "no declared addresses: another segment's address",
                "d-aw2",
                ip_from(M2, PEER_MAC, "10.1.2.5", "10.1.1.3", tcp(1000, 22, 2)),
                verdict::SPOOFED_IP,
            ),
            row(
                "no declared addresses: an address outside every segment",
                "d-aw2",
                ip_from(M2, PEER_MAC, "192.0.2.1", "10.1.1.3", tcp(1000, 22, 2)),
                verdict::SPOOFED_IP,
            ),
            row(
                "unspecified source for DHCP discovery",
                "d-aw2",
                ip_from(M2, BROADCAST, "0.0.0.0", "255.255.255.255", udp(68, 67)),
                verdict::PASS,
            ),
            row(
                "unspecified source for anything else",
                "d-aw2",
                ip_from(M2, PEER_MAC, "0.0.0.0", "10.1.1.3", tcp(1000, 22, 2)),
                verdict::SPOOFED_IP,
            ),
            row(
                "unspecified source for duplicate address detection",
                "d-aw2",
                nd_with_lladdr(M2, M2, 135, "::", "ff02::1:ff00:9", "fd00:1:1::9"),
                verdict::PASS,
            ),
            row(
                "unspecified IPv6 source for an echo",
                "d-aw2",
                ip_from(M2, PEER_MAC, "::", "fd00:1:1::3", echo_request(1)),
                verdict::SPOOFED_IP,
            ),
        ]);
    });
}

#[test]
fn arp_and_neighbour_discovery() {
    in_private_netns(|| {
        let mut lab = lab();
        lab.check_all_both_ingresses(&[
            row(
                "ARP for itself",
                "d-aw1",
                arp_frame(M1, M1, "10.1.1.2", "10.1.1.3", 1),
                verdict::PASS,
            ),
            row(
                "gratuitous ARP taking over another VM's address",
                "d-aw1",
                arp_frame(M1, M1, "10.1.1.3", "10.1.1.3", 2),
                verdict::ARP_SPOOF,
            ),
            row(
                "ARP whose sender MAC is not the frame's",
                "d-aw2",
                arp_frame(M2, M1, "10.1.1.7", "10.1.1.3", 1),
                verdict::ARP_SPOOF,
            ),
            row(
                "ARP claiming another segment's address",
                "d-aw2",
                arp_frame(M2, M2, "10.1.2.5", "10.1.1.3", 1),
                verdict::ARP_SPOOF,
            ),
            row(
                "ARP probe (sender 0.0.0.0)",
                "d-aw2",
                arp_frame(M2, M2, "0.0.0.0", "10.1.1.9", 1),
                verdict::PASS,
            ),
            row(
                "ARP from the declared MAC with another MAC in the frame",
                "d-aw1",
                arp_frame(M2, M2, "10.1.1.2", "10.1.1.3", 1),
                verdict::SPOOFED_MAC,
            ),
            row(
                "advertisement of its own address",
                "d-aw1",
                nd_with_lladdr(M1, M1, 136, "fd00:1:1::2", "ff02::1", "fd00:1:1::2"),
                verdict::PASS,
            ),
            row(
                "advertisement of another VM's address",
                "d-aw1",
                nd_with_lladdr(M1, M1, 136, "fd00:1:1::2", "ff02::1", "fd00:1:1::3"),
                verdict::ND_SPOOF,
            ),
            row(
                "advertisement with another target link-layer address",
                "d-aw2",
                nd_with_lladdr(M2, M1, 136, "fd00:1:1::7", "ff02::1", "fd00:1:1::7"),
                verdict::ND_SPOOF,
            ),
            row(
                "solicitation with another source link-layer address",
                "d-aw2",
                nd_with_lladdr(M2, M1, 135, "fd00:1:1::7", "ff02::1:ff00:3", "fd00:1:1::3"),
                verdict::ND_SPOOF,
            ),
            row(
                "advertisement of another link-local address, link-local declared",
                "d-aw1",
                nd_with_lladdr(M1, M1, 136, "fe80::a1", "ff02::1", "fe80::b2"),
                verdict::ND_SPOOF,
            ),
            row(
                "advertisement of its declared link-local address",
                "d-aw1",
                nd_with_lladdr(M1, M1, 136, "fe80::a1", "ff02::1", "fe80::a1"),
                verdict::PASS,
            ),
            row(
                "a foreign target link-layer address after three other options",
                "d-aw2",
                nd_with_options(
                    M2,
                    136,
                    "fd00:1:1::7",
                    "ff02::1",
                    "fd00:1:1::7",
                    &[(5, MTU), (5, MTU), (5, MTU), (2, M1)],
                ),
                verdict::ND_SPOOF,
            ),
            row(
                "a foreign target link-layer address first, its own second",
                "d-aw2",
                nd_with_options(
                    M2,
                    136,
                    "fd00:1:1::7",
                    "ff02::1",
                    "fd00:1:1::7",
                    &[(2, M1), (2, M2)],
                ),
                verdict::ND_SPOOF,
            ),
            row(
                "a foreign source link-layer address in a solicitation's fourth option",
                "d-aw2",
                nd_with_options(
                    M2,
                    135,
                    "fd00:1:1::7",
                    "ff02::1:ff00:3",
                    "fd00:1:1::3",
                    &[(5, MTU), (5, MTU), (5, MTU), (1, M1)],
                ),
                verdict::ND_SPOOF,
            ),
            row(
                "more options than are walked",
                "d-aw2",
                nd_with_options(
                    M2,
                    136,
                    "fd00:1:1::7",
                    "ff02::1",
                    "fd00:1:1::7",
                    &[(5, MTU); 9],
                ),
                verdict::ND_SPOOF,
            ),
            row(
                "its own link-layer address among other options",
                "d-aw2",
                nd_with_options(
                    M2,
                    136,
                    "fd00:1:1::7",
                    "ff02::1",
                    "fd00:1:1::7",
                    &[(5, MTU), (2, M2), (5, MTU)],
                ),
                verdict::PASS,
            ),
            row(
                "advertisement of another segment's address",
                "d-aw2",
                nd_with_lladdr(M2, M2, 136, "fd00:1:1::7", "ff02::1", "fd00:1:2::5"),
                verdict::ND_SPOOF,
            ),
        ]);
    });
}

#[test]
fn router_and_dhcp_guards() {
    in_private_netns(|| {
        let mut lab = lab();
        lab.check_all_both_ingresses(&[
            row(
                "router advertisement from a VM",
                "d-aw2",
                router_advertisement(M2, "fe80::2"),
                verdict::RA_GUARD,
            ),
            row(
                "router advertisement where the segment allows it",
                "d-ad",
                router_advertisement(MDB, "fe80::db"),
                verdict::PASS,
            ),
            row(
                "IPv6 redirect from a VM",
                "d-aw2",
                ip_from(M2, PEER_MAC, "fe80::2", "fe80::3", icmp(137)),
                verdict::RA_GUARD,
            ),
            row(
                "ICMPv4 redirect from a VM",
                "d-aw2",
                ip_from(M2, PEER_MAC, "10.1.1.7", "10.1.1.3", icmp(5)),
                verdict::RA_GUARD,
            ),
            row(
                "DHCP server message from a VM",
                "d-aw2",
                ip_from(M2, BROADCAST, "10.1.1.7", "255.255.255.255", udp(67, 68)),
                verdict::DHCP_GUARD,
            ),
            row(
                "DHCPv6 server message from a VM",
                "d-aw2",
                ip_from(M2, PEER_MAC, "fe80::2", "fe80::3", udp(547, 546)),
                verdict::DHCP_GUARD,
            ),
            row(
                "DHCP server message to a relay (67 -> 67)",
                "d-aw2",
                ip_from(M2, PEER_MAC, "10.1.1.7", "10.1.1.3", udp(67, 67)),
                verdict::DHCP_GUARD,
            ),
            row(
                "DHCPv6 relay reply (547 -> 547)",
                "d-aw2",
                ip_from(M2, PEER_MAC, "fd00:1:1::7", "fd00:1:1::3", udp(547, 547)),
                verdict::DHCP_GUARD,
            ),
            row(
                "a DHCP answer from another source port (6767 -> 68)",
                "d-aw2",
                ip_from(M2, BROADCAST, "10.1.1.7", "255.255.255.255", udp(6767, 68)),
                verdict::DHCP_GUARD,
            ),
            row(
                "a DHCPv6 answer from another source port (6767 -> 546)",
                "d-aw2",
                ip_from(M2, PEER_MAC, "fe80::2", "fe80::3", udp(6767, 546)),
                verdict::DHCP_GUARD,
            ),
            row(
                "DHCP server where the segment allows it",
                "d-ad",
                ip_from(MDB, BROADCAST, "10.1.2.1", "255.255.255.255", udp(67, 68)),
                verdict::PASS,
            ),
            row(
                "DHCP client",
                "d-aw2",
                ip_from(M2, BROADCAST, "10.1.1.7", "255.255.255.255", udp(68, 67)),
                verdict::PASS,
            ),
        ]);
    });
}

#[test]
fn vlan_tags() {
    in_private_netns(|| {
        let mut lab = lab();
        let plain = ip_from(M1, PEER_MAC, "10.1.1.2", "10.1.1.3", tcp(1000, 22, 2));
        lab.check_all_both_ingresses(&[
            row(
                "a VLAN the interface lists",
                "d-aw1",
                tagged(&plain, 0x8100, 100),
                verdict::PASS,
            ),
            row(
                "a VLAN the interface does not list",
                "d-aw1",
                tagged(&plain, 0x8100, 200),
                verdict::VLAN,
            ),
            row(
                "any tag from an interface without VLANs",
                "d-aw2",
                tagged(
                    &ip_from(M2, PEER_MAC, "10.1.1.7", "10.1.1.3", tcp(1000, 22, 2)),
                    0x8100,
                    100,
                ),
                verdict::VLAN,
            ),
            row(
                "stacked tags, both listed",
                "d-aw1",
                tagged(&tagged(&plain, 0x8100, 100), 0x88a8, 100),
                verdict::VLAN,
            ),
            row(
                "stacked 802.1Q tags",
                "d-aw1",
                tagged(&tagged(&plain, 0x8100, 100), 0x8100, 100),
                verdict::VLAN,
            ),
            row(
                "a listed VLAN does not excuse a spoofed source inside",
                "d-aw1",
                tagged(
                    &ip_from(M1, PEER_MAC, "10.1.1.9", "10.1.1.3", tcp(1000, 22, 2)),
                    0x8100,
                    100,
                ),
                verdict::SPOOFED_IP,
            ),
            out(
                "a tagged frame delivered to a VM without VLANs",
                "d-aw2",
                tagged(
                    &ip_from(M1, PEER_MAC, "10.1.1.2", "10.1.1.7", tcp(1000, 22, 2)),
                    0x8100,
                    100,
                ),
                verdict::VLAN,
            ),
        ]);
    });
}

#[test]
fn malformed_and_evasive_frames() {
    in_private_netns(|| {
        let mut lab = lab();
        let base = || V4::new("10.1.1.7", "10.1.1.3", tcp(1000, 22, 2));
        let longer = V4 {
            total_len: Some(200),
            ..base()
        };
        let shorter = V4 {
            total_len: Some(16),
            ..base()
        };
        let options = V4 {
            options: vec![0x07, 0x04, 0x04, 0x00], // record route
            ..base()
        };
        let router_alert = V4 {
            options: vec![0x94, 0x04, 0, 0],
            protocol: 2, // IGMP
            payload: vec![0x16, 0, 0, 0, 224, 0, 0, 251],
            ..base()
        };
        let two_options = V4 {
            options: vec![0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00],
            ..base()
        };
        let mut bad_offset = base();
        bad_offset.payload[12] = 4 << 4; // TCP data offset 4 words
        let udp_len = {
            let mut v = V4::new("10.1.1.7", "10.1.1.3", udp(1000, 53));
            v.payload[5] = 7; // UDP length 7
            v
        };
        lab.check_all_both_ingresses(&[
            row(
                "IPv4 total length beyond the frame",
                "d-aw2",
                longer.frame(M2, PEER_MAC),
                verdict::MALFORMED,
            ),
            row(
                "IPv4 total length below the header length",
                "d-aw2",
                shorter.frame(M2, PEER_MAC),
                verdict::MALFORMED,
            ),
            row(
                "IPv4 options",
                "d-aw2",
                options.frame(M2, PEER_MAC),
                verdict::IP_OPTIONS,
            ),
            row(
                "a lone router alert option (IGMP)",
                "d-aw2",
                router_alert.frame(M2, PEER_MAC),
                verdict::PASS,
            ),
            row(
                "router alert followed by another option",
                "d-aw2",
                two_options.frame(M2, PEER_MAC),
                verdict::IP_OPTIONS,
            ),
            row(
                "TCP data offset below 5 words",
                "d-aw2",
                bad_offset.frame(M2, PEER_MAC),
                verdict::MALFORMED,
            ),
            row(
                "UDP length below its header",
                "d-aw2",
                udp_len.frame(M2, PEER_MAC),
                verdict::MALFORMED,
            ),
            row(
                "IPv6 with two extension headers",
                "d-aw2",
                v6_with_extensions(
                    M2,
                    PEER_MAC,
                    "fd00:1:1::7",
                    "fd00:1:1::3",
                    &[Ext::HopByHop, Ext::DestinationOptions],
                    tcp(1000, 22, 2),
                ),
                verdict::PASS,
            ),
            row(
                "IPv6 with more extension headers than walked",
                "d-aw2",
                v6_with_extensions(
                    M2,
                    PEER_MAC,
                    "fd00:1:1::7",
                    "fd00:1:1::3",
                    &[Ext::DestinationOptions; 5],
                    tcp(1000, 22, 2),
                ),
                verdict::IPV6_EXTENSIONS,
            ),
            row(
                "an extension chain hiding a cross-segment destination",
                "d-aw2",
                v6_with_extensions(
                    M2,
                    PEER_MAC,
                    "fd00:1:1::7",
                    "fd00:1:2::5",
                    &[Ext::DestinationOptions; 2],
                    tcp(1000, 22, 2),
                ),
                verdict::CROSS_SEGMENT,
            ),
        ]);
    });
}

#[test]
fn truncated_at_every_header_boundary() {
    in_private_netns(|| {
        let mut lab = lab();
        let v4 = V4::new("10.1.1.7", "10.1.1.3", tcp(1000, 22, 2)).frame(M2, PEER_MAC);
        let v6 = ip_from(M2, PEER_MAC, "fd00:1:1::7", "fd00:1:1::3", tcp(1000, 22, 2));
        let udp4 = V4::new("10.1.1.7", "10.1.1.3", udp(1000, 53)).frame(M2, PEER_MAC);
        let icmp6 = ip_from(M2, PEER_MAC, "fd00:1:1::7", "fd00:1:1::3", echo_request(1));
        let arp = arp_frame(M2, M2, "10.1.1.7", "10.1.1.3", 1);
        let tag = tagged(&v4, 0x8100, 100);
        // (frame, cut lengths): every header end and one byte before it.
        let cases: [(&str, &Vec<u8>, &[usize]); 6] = [
            ("IPv4/TCP", &v4, &[14, 15, 33, 34, 53]),
            ("IPv6/TCP", &v6, &[14, 53, 54, 73]),
            ("IPv4/UDP", &udp4, &[34, 41]),
            ("IPv6/ICMPv6", &icmp6, &[54, 61]),
            ("ARP", &arp, &[14, 41]),
            ("802.1Q", &tag, &[15, 17]),
        ];
        for (what, frame, cuts) in cases {
            // The twin: the whole frame is judged on its merits (d-aw2 lists no VLAN),
            // so `malformed` below is the cut's doing.
            let whole = if what == "802.1Q" {
                verdict::VLAN
            } else {
                verdict::PASS
            };
            lab.check(&row(
                format!("{what} whole (twin)"),
                "d-aw2",
                frame.clone(),
                whole,
            ));
            for cut in cuts {
                let name = format!("{what} cut to {cut} bytes");
                lab.check(&row(
                    name,
                    "d-aw2",
                    truncated(frame, *cut),
                    verdict::MALFORMED,
                ));
            }
        }
    });
}

#[test]
fn fragments() {
    in_private_netns(|| {
        let mut lab = lab();
        let first = V4 {
            id: 7,
            more_fragments: true,
            ..V4::new("10.1.1.7", "10.1.1.3", udp(1000, 53))
        };
        let later = V4 {
            id: 7,
            offset: 2, // 16 bytes in, last
            protocol: 17,
            payload: vec![0; 8],
            ..V4::new("10.1.1.7", "10.1.1.3", udp(1000, 53))
        };
        let stray = V4 {
            id: 8,
            ..later.clone()
        };
        let cross_first = V4 {
            id: 9,
            more_fragments: true,
            ..V4::new("10.1.1.7", "10.1.2.5", udp(1000, 53))
        };
        let cross_later = V4 {
            id: 9,
            dst: "10.1.2.5".parse().unwrap(),
            ..later.clone()
        };
        let tiny_first = V4 {
            id: 10,
            more_fragments: true,
            payload: vec![0x03, 0xe8, 0, 22, 0, 0, 0, 1], // 8 bytes of a TCP header
            protocol: 6,
            ..V4::new("10.1.1.7", "10.1.1.3", udp(1000, 53))
        };
        let overlap = V4 {
            id: 11,
            offset: 1, // 8 bytes in: over TCP's flags
            protocol: 6,
            payload: vec![0; 16],
            ..V4::new("10.1.1.7", "10.1.1.3", udp(1000, 53))
        };
        let v6_first = v6_with_extensions(
            M2,
            PEER_MAC,
            "fd00:1:1::7",
            "fd00:1:1::3",
            &[Ext::Fragment {
                offset: 0,
                more: true,
                id: 77,
            }],
            udp(1000, 53),
        );
        let v6_later = v6_with_extensions(
            M2,
            PEER_MAC,
            "fd00:1:1::7",
            "fd00:1:1::3",
            &[Ext::Fragment {
                offset: 2,
                more: false,
                id: 77,
            }],
            udp(1000, 53),
        );
        let v6_stray = v6_with_extensions(
            M2,
            PEER_MAC,
            "fd00:1:1::7",
            "fd00:1:1::3",
            &[Ext::Fragment {
                offset: 2,
                more: false,
                id: 78,
            }],
            udp(1000, 53),
        );
        lab.check_all(&[
            row(
                "a first fragment",
                "d-aw2",
                first.frame(M2, PEER_MAC),
                verdict::PASS,
            ),
            row(
                "its later fragment",
                "d-aw2",
                later.frame(M2, PEER_MAC),
                verdict::PASS,
            ),
            row(
                "a later fragment whose first never passed",
                "d-aw2",
                stray.frame(M2, PEER_MAC),
                verdict::FRAGMENT,
            ),
            row(
                "a first fragment across segments",
                "d-aw2",
                cross_first.frame(M2, PEER_MAC),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "its later fragment does not slip through",
                "d-aw2",
                cross_later.frame(M2, PEER_MAC),
                verdict::FRAGMENT,
            ),
            row(
                "a first fragment too short for the TCP header",
                "d-aw2",
                tiny_first.frame(M2, PEER_MAC),
                verdict::FRAGMENT,
            ),
            row(
                "a TCP fragment overlapping the header's flags",
                "d-aw2",
                overlap.frame(M2, PEER_MAC),
                verdict::FRAGMENT,
            ),
            row("an IPv6 first fragment", "d-aw2", v6_first, verdict::PASS),
            row("its later fragment", "d-aw2", v6_later, verdict::PASS),
            row(
                "an IPv6 later fragment whose first never passed",
                "d-aw2",
                v6_stray,
                verdict::FRAGMENT,
            ),
            out(
                "a later fragment delivered to a VM without its first",
                "d-ad",
                V4 {
                    id: 12,
                    ..later.clone()
                }
                .frame(VM_MAC, PEER_MAC),
                verdict::FRAGMENT,
            ),
        ]);
    });
}

/// A swap that withdraws a declared address or VLAN withdraws it for good. The two
/// generations alternate, so the third policy is written under the generation of the
/// first: nothing of the first may come back with it.
#[test]
fn withdrawn_addresses_and_vlans_stay_withdrawn_across_generations() {
    in_private_netns(|| {
        let mut lab = lab();
        let old_source = ip_from(M1, PEER_MAC, "10.1.1.2", "10.1.1.3", tcp(1000, 22, 2));
        let new_source = ip_from(M1, PEER_MAC, "10.1.1.9", "10.1.1.3", tcp(1000, 22, 2));
        lab.check_all(&[
            row(
                "declared at first",
                "d-aw1",
                old_source.clone(),
                verdict::PASS,
            ),
            row(
                "its VLAN at first",
                "d-aw1",
                tagged(&old_source, 0x8100, 100),
                verdict::PASS,
            ),
        ]);
        let policy = isolator::policy::parse(POLICY, "test.yaml").expect("valid policy");
        let mut narrower = Plan::new(&policy, &lab.links).expect("plan");
        declare(&mut narrower);
        let aw1 = narrower
            .vifs
            .iter_mut()
            .find(|v| v.name == "d-aw1")
            .unwrap();
        aw1.addresses = vec!["10.1.1.9/32".parse().unwrap()];
        aw1.vlans = vec![];
        for (swap, address, vlan) in [
            (
                "the second policy",
                "withdrawn address, second policy",
                "withdrawn VLAN, second policy",
            ),
            (
                "the same policy again",
                "withdrawn address, generation of the first policy",
                "withdrawn VLAN, generation of the first policy",
            ),
        ] {
            lab.dp.apply(&narrower).expect("applying");
            lab.check_all(&[
                row(address, "d-aw1", old_source.clone(), verdict::SPOOFED_IP),
                row(
                    "the newly declared address",
                    "d-aw1",
                    new_source.clone(),
                    verdict::PASS,
                ),
                row(
                    vlan,
                    "d-aw1",
                    tagged(&new_source, 0x8100, 100),
                    verdict::VLAN,
                ),
            ]);
            // The active generation holds the new policy exactly: nothing of an earlier
            // one left in it. (After the same policy again, so does the other one.)
            let active = lab.dp.active_generation();
            assert_eq!(
                lab.differences(active, Some(&narrower)),
                Vec::<String>::new(),
                "after {swap}, the active generation differs from the policy"
            );
            if swap == "the same policy again" {
                assert_eq!(
                    lab.differences(active ^ 1, Some(&narrower)),
                    Vec::<String>::new(),
                    "after {swap}, the other generation differs from the previous policy"
                );
            }
        }
        // Every map of the object is either policy (generation-keyed, listed by
        // `generations`) or state that outlives policies; a new map must be put in one.
        let mut classified: Vec<&str> = lab
            .dp
            .generations()
            .unwrap()
            .iter()
            .map(|(name, _)| *name)
            .chain(isolator::dataplane::STATE_MAPS)
            .collect();
        classified.sort();
        let mut pinned = isolator::dataplane::PINNED_MAPS.to_vec();
        pinned.sort();
        assert_eq!(classified, pinned);
    });
}

/// The lab's own plan, and the same with another address declared for d-aw1.
fn two_plans(lab: &Lab) -> (Plan, Plan) {
    let policy = isolator::policy::parse(POLICY, "test.yaml").expect("valid policy");
    let mut first = Plan::new(&policy, &lab.links).expect("plan");
    declare(&mut first);
    let mut second = first.clone();
    let aw1 = second.vifs.iter_mut().find(|v| v.name == "d-aw1").unwrap();
    aw1.addresses = vec!["10.1.1.9/32".parse().unwrap()];
    (first, second)
}

/// What a swap saw just before it changed the generation that is not active: (active
/// generation, whether the previous swap had been retired, how its wait went, what the
/// generation about to be changed held).
type BeforeChange = (
    u32,
    bool,
    Option<isolator::dataplane::Grace>,
    isolator::encode::Entries,
);
static BEFORE_CHANGE: std::sync::Mutex<Vec<BeforeChange>> = std::sync::Mutex::new(Vec::new());

fn record_before_change(dp: &isolator::dataplane::Dataplane) {
    let active = dp.active_generation();
    let held = dp
        .read_generation(active ^ 1)
        .expect("reading the generation about to change");
    BEFORE_CHANGE.lock().unwrap().push((
        active,
        dp.retiring().is_none(),
        dp.last_swap_wait(),
        held,
    ));
}

/// A swap changes the generation that is not active only after the kernel said that
/// every program run that could have read it has ended (an RCU grace period through
/// membarrier, not a fixed sleep, waited by the retirement of the swap that left it):
/// at that moment it still holds, whole, the policy of the swap before last, and the
/// swap writes only what differs from it. A swap that changed it before the wait, or
/// did not wait, or waited a fixed time instead, or wrote more than the difference,
/// fails here.
#[test]
fn a_generation_is_changed_only_after_every_run_on_it_has_ended() {
    in_private_netns(|| {
        let mut lab = lab();
        assert_eq!(
            isolator::dataplane::wait_for_readers(),
            isolator::dataplane::Grace::Rcu,
            "this kernel must wait for an RCU grace period on request (membarrier)"
        );
        lab.dp.observe_before_change(record_before_change);
        let (first, second) = two_plans(&lab);
        let plans = [&first, &second, &first, &second];
        for (swap, plan) in plans.iter().enumerate() {
            let old = lab.dp.active_generation();
            lab.dp.apply(plan).expect("applying");
            let new = lab.dp.active_generation();
            assert_eq!(new, old ^ 1, "swap {swap} flips the generation");
            let seen = std::mem::take(&mut *BEFORE_CHANGE.lock().unwrap());
            assert_eq!(
                seen.len(),
                1,
                "swap {swap}: observed once before the change"
            );
            let (active, retired, wait, held) = &seen[0];
            assert_eq!(*active, old, "swap {swap}: changed before the flip");
            assert!(
                *retired,
                "swap {swap}: the swap before it was retired (its wait over) first"
            );
            assert_eq!(
                *wait,
                Some(isolator::dataplane::Grace::Rcu),
                "swap {swap}: after an RCU grace period"
            );
            // What the generation held: nothing at first (maps made for this lab; the lab's
            // own plan went into the other one), then the plan of the swap before last
            // (the lab's, `first`, for swap 1).
            let base = match swap {
                0 => None,
                1 => Some(&first),
                _ => Some(plans[swap - 2]),
            };
            let expected = base
                .map(|p| isolator::encode::encode(p, new))
                .unwrap_or_default();
            assert_eq!(
                isolator::verify::compare_maps(&expected, held).len(),
                0,
                "swap {swap}: the generation about to change still held the policy of the \
                 swap before last, whole"
            );
            assert_eq!(
                lab.differences(new, Some(plan)),
                Vec::<String>::new(),
                "after swap {swap}, the active generation holds its policy exactly"
            );
            let written = lab.dp.last_written().expect("a swap wrote");
            match swap {
                0 => assert!(written.whole, "swap 0 wrote into an empty generation"),
                // The same plan as the generation held: only the settings' epoch changes.
                2 | 3 => assert_eq!(
                    (written.put, written.removed, written.whole),
                    (1, 0, false),
                    "swap {swap}: the same policy again writes the epoch and nothing else"
                ),
                _ => assert!(!written.whole, "swap {swap} changed what differs"),
            }
        }
    });
}

/// Where the dataplane does not know what a generation holds (maps taken over from an
/// earlier daemon, drift the verification found: `forget_contents`), the swap reads it
/// from the kernel and writes only what differs from it; the generation left behind is
/// read at the retirement. A swap that wrote the whole policy instead, or built on a
/// wrong record, fails here.
#[test]
fn a_generation_not_known_is_read_and_changed_where_it_differs() {
    in_private_netns(|| {
        let mut lab = lab();
        let (first, second) = two_plans(&lab);
        lab.dp.apply(&first).expect("applying");
        lab.dp.apply(&second).expect("applying");
        // The other generation holds `first`: nothing but the epoch to write.
        lab.dp.forget_contents();
        lab.dp.apply(&first).expect("applying");
        let written = lab.dp.last_written().expect("written");
        assert_eq!((written.put, written.removed, written.whole), (1, 0, false));
        let active = lab.dp.active_generation();
        assert_eq!(lab.differences(active, Some(&first)), Vec::<String>::new());
        assert_eq!(
            lab.differences(active ^ 1, Some(&second)),
            Vec::<String>::new()
        );
        // The other generation holds `second` (read at the retirement): the difference.
        lab.dp.forget_contents();
        lab.dp.apply(&first).expect("applying");
        let written = lab.dp.last_written().expect("written");
        // The entries that differ between the two policies (missing, extra or changed, the
        // epoch aside), and the settings, whose epoch changes with every swap.
        let differing: usize = isolator::verify::compare_maps(
            &isolator::encode::encode(&first, active ^ 1),
            &isolator::encode::encode(&second, active ^ 1),
        )
        .iter()
        .map(|finding| {
            let count = finding.detail.split(' ').next().unwrap_or_default();
            count.parse::<usize>().expect("a count of entries")
        })
        .sum();
        assert!(!written.whole);
        assert_eq!(
            written.put + written.removed,
            differing + 1,
            "the difference between the two policies and the epoch: {written:?}"
        );
        let active = lab.dp.active_generation();
        assert_eq!(lab.differences(active, Some(&first)), Vec::<String>::new());
        assert_eq!(
            lab.differences(active ^ 1, Some(&first)),
            Vec::<String>::new()
        );
    });
}

/// A declared identity is reserved: a VM that declared nothing (d-aw2) may use any MAC
/// and its segment's addresses, but not the MAC or an address that another interface
/// (d-aw1) declared, whether as a source, an ARP sender or an advertised target.
#[test]
fn a_declared_identity_is_reserved_for_its_interface() {
    in_private_netns(|| {
        let mut lab = lab();
        lab.check_all(&[
            row(
                "an undeclared VM with its own MAC and an address of its segment",
                "d-aw2",
                ip_from(M2, PEER_MAC, "10.1.1.7", "10.1.1.3", tcp(1000, 22, 2)),
                verdict::PASS,
            ),
            row(
                "the MAC d-aw1 declared",
                "d-aw2",
                ip_from(M1, PEER_MAC, "10.1.1.7", "10.1.1.3", tcp(1000, 22, 2)),
                verdict::SPOOFED_MAC,
            ),
            row(
                "the IPv4 address d-aw1 declared",
                "d-aw2",
                ip_from(M2, PEER_MAC, "10.1.1.2", "10.1.1.3", tcp(1000, 22, 2)),
                verdict::SPOOFED_IP,
            ),
            row(
                "the IPv6 address d-aw1 declared",
                "d-aw2",
                ip_from(M2, PEER_MAC, "fd00:1:1::2", "fd00:1:1::3", tcp(1000, 22, 2)),
                verdict::SPOOFED_IP,
            ),
            row(
                "an IPv6 address of its segment nobody declared",
                "d-aw2",
                ip_from(M2, PEER_MAC, "fd00:1:1::7", "fd00:1:1::3", tcp(1000, 22, 2)),
                verdict::PASS,
            ),
            row(
                "the link-local address d-aw1 declared",
                "d-aw2",
                ip_from(M2, PEER_MAC, "fe80::a1", "fe80::3", tcp(1000, 22, 2)),
                verdict::SPOOFED_IP,
            ),
            row(
                "a link-local address nobody declared",
                "d-aw2",
                ip_from(M2, PEER_MAC, "fe80::a2", "fe80::3", tcp(1000, 22, 2)),
                verdict::PASS,
            ),
            row(
                "ARP claiming the address d-aw1 declared",
                "d-aw2",
                arp_frame(M2, M2, "10.1.1.2", "10.1.1.3", 2),
                verdict::ARP_SPOOF,
            ),
            row(
                "ARP for its own address",
                "d-aw2",
                arp_frame(M2, M2, "10.1.1.7", "10.1.1.3", 1),
                verdict::PASS,
            ),
            row(
                "advertisement of the address d-aw1 declared",
                "d-aw2",
                nd_with_lladdr(M2, M2, 136, "fd00:1:1::7", "ff02::1", "fd00:1:1::2"),
                verdict::ND_SPOOF,
            ),
            row(
                "advertisement of its own address",
                "d-aw2",
                nd_with_lladdr(M2, M2, 136, "fd00:1:1::7", "ff02::1", "fd00:1:1::7"),
                verdict::PASS,
            ),
            row(
                "the owner itself",
                "d-aw1",
                ip_from(M1, PEER_MAC, "10.1.1.2", "10.1.1.3", tcp(1000, 22, 2)),
                verdict::PASS,
            ),
            row(
                "another segment's VM with the MAC d-aw1 declared",
                "d-ad",
                ip_from(M1, PEER_MAC, "10.1.2.5", "10.1.2.6", tcp(1000, 22, 2)),
                verdict::SPOOFED_MAC,
            ),
        ]);
    });
}
