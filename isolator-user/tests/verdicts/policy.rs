//! Verdict tables for the full isolation policy (BPF_PROG_TEST_RUN, both programs):
//! management prefixes, exposed endpoints, flows, egress, connection tracking, audit
//! mode, and what the egress program lets reach a VM. IPv4 and IPv6. Needs root.
//!
//! Rows run in order on one loaded program, so the connection tracking rows build on
//! each other as a real exchange would.

use isolator_common::verdict;
use isolator_tests::frame::{
    ACK, BROADCAST, FIN, RST, SYN, SYN_ACK, echo_reply, echo_request, icmp, ip as ip_from,
    router_advertisement, tcp, tcp_at, udp,
};

use isolator_tests::frame;

use crate::fixture::{
    Lab, PEER_MAC, ROUTER_MAC, VM_MAC, arp as arp_frame, arp_request, from_outside, icmp_error,
    in_private_netns, ip, nd, nd_advertisement, out, quoted, row,
};

const POLICY: &str = r#"
version: 1
management:
  - prefix: 192.168.100.0/24
  - prefix: fd00:ff::/64
  - prefix: 10.9.0.0/16
    services:
      - protocol: tcp
        ports: 22
tenants:
  - name: acme
    flows:
      - from: web
        to: db
        protocol: tcp
        ports: 5432
      - from: web
        to: globex/api
        protocol: udp
        ports: "5000-5010"
    segments:
      - name: web
        interfaces: ["d-aw*"]
        prefixes: ["10.1.1.0/24", "fd00:1:1::/64"]
        expose:
          - address: 10.1.1.10
            protocol: tcp
            ports: 443
          - address: fd00:1:1::10
            protocol: tcp
            ports: 443
          - address: 10.1.1.0/24
            protocol: icmp
      - name: db
        egress: deny
        interfaces: ["d-ad"]
        prefixes: ["10.1.2.0/24", "fd00:1:2::/64"]
        gateways:
          - address: 10.1.2.1
            services:
              - {protocol: udp, ports: 67}
              - {protocol: udp, ports: 53}
        expose:
          - address: 10.1.2.10
            protocol: tcp
            ports: 80
          - address: fd00:1:2::10
            protocol: tcp
            ports: 80
  - name: globex
    segments:
      - name: api
        mode: audit
        interfaces: ["d-ga"]
        prefixes: ["10.2.1.0/24", "fd00:2:1::/64"]
"#;

const LINKS: &[&str] = &["d-aw1", "d-aw2", "d-ad", "d-ga"];

fn lab() -> Lab {
    Lab::new(POLICY, LINKS)
}

#[test]
fn ingress_rules_ipv4() {
    in_private_netns(|| {
        let mut lab = lab();
        lab.check_all(&[
            row(
                "to a management prefix",
                "d-aw1",
                ip("10.1.1.2", "192.168.100.5", tcp(40000, 80, SYN)),
                verdict::MANAGEMENT,
            ),
            row(
                "to a management prefix protecting ssh, on ssh",
                "d-aw1",
                ip("10.1.1.2", "10.9.1.1", tcp(40000, 22, SYN)),
                verdict::MANAGEMENT,
            ),
            row(
                "to a management prefix protecting ssh, other port: outside, egress allowed",
                "d-aw1",
                ip("10.1.1.2", "10.9.1.1", tcp(40000, 80, SYN)),
                verdict::PASS,
            ),
            row(
                "outside every segment from a segment with egress deny",
                "d-ad",
                ip("10.1.2.5", "192.0.2.1", udp(40000, 53)),
                verdict::EGRESS_DENIED,
            ),
            row(
                "DHCP discovery passes despite egress deny",
                "d-ad",
                ip("0.0.0.0", "255.255.255.255", udp(68, 67)),
                verdict::PASS,
            ),
            row(
                "to an exposed endpoint of another segment",
                "d-ad",
                ip("10.1.2.5", "10.1.1.10", tcp(41000, 443, SYN)),
                verdict::PASS,
            ),
            row(
                "to an address of that segment that is not exposed",
                "d-ad",
                ip("10.1.2.5", "10.1.1.11", tcp(41000, 443, SYN)),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "to the exposed address on a port not exposed",
                "d-ad",
                ip("10.1.2.5", "10.1.1.10", tcp(41000, 80, SYN)),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "ICMP to a prefix exposed for ICMP",
                "d-ad",
                ip("10.1.2.5", "10.1.1.77", echo_request(7)),
                verdict::PASS,
            ),
            row(
                "UDP to a prefix exposed for ICMP only",
                "d-ad",
                ip("10.1.2.5", "10.1.1.77", udp(41000, 53)),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "over a flow",
                "d-aw1",
                ip("10.1.1.2", "10.1.2.5", tcp(42000, 5432, SYN)),
                verdict::PASS,
            ),
            row(
                "a flow's segment pair on another port",
                "d-aw1",
                ip("10.1.1.2", "10.1.2.5", tcp(42000, 5433, SYN)),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "against a flow's direction",
                "d-ad",
                ip("10.1.2.5", "10.1.1.2", tcp(42000, 5432, SYN)),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "over a cross-tenant flow, inside its port range",
                "d-aw1",
                ip("10.1.1.2", "10.2.1.5", udp(43000, 5010)),
                verdict::PASS,
            ),
            row(
                "cross-tenant, outside the flow's port range",
                "d-aw1",
                ip("10.1.1.2", "10.2.1.5", udp(43000, 5011)),
                verdict::CROSS_TENANT,
            ),
            row(
                "from a segment in audit mode: counted, passed",
                "d-ga",
                ip("10.2.1.5", "10.1.1.2", tcp(44000, 22, SYN)),
                verdict::CROSS_TENANT,
            )
            .audited(),
            row(
                "ARP for a management address",
                "d-aw1",
                arp_request(VM_MAC, "10.1.1.2", "192.168.100.10"),
                verdict::MANAGEMENT,
            ),
            row(
                "ARP for an address of a prefix protected only for ssh",
                "d-aw1",
                arp_request(VM_MAC, "10.1.1.2", "10.9.1.1"),
                verdict::PASS,
            ),
            row(
                "an exposed server broadcasting ARP for another tenant's VM (discovery)",
                "d-ad",
                arp_request(VM_MAC, "10.1.2.10", "10.2.1.5"),
                verdict::CROSS_TENANT,
            ),
            row(
                "the exposed server answering that VM's ARP",
                "d-ad",
                arp_frame(VM_MAC, VM_MAC, "10.1.2.10", "10.2.1.5", 2),
                verdict::PASS,
            ),
            row(
                "the exposed server probing that VM's MAC (unicast request)",
                "d-ad",
                {
                    let mut f = arp_frame(VM_MAC, VM_MAC, "10.1.2.10", "10.2.1.5", 1);
                    f[..6].copy_from_slice(&PEER_MAC);
                    f
                },
                verdict::PASS,
            ),
            row(
                "audit mode never lets a management drop through",
                "d-ga",
                ip("10.2.1.5", "192.168.100.1", tcp(44000, 22, SYN)),
                verdict::MANAGEMENT,
            ),
        ]);
    });
}

#[test]
fn ingress_rules_ipv6() {
    in_private_netns(|| {
        let mut lab = lab();
        lab.check_all(&[
            row(
                "to a management prefix",
                "d-aw1",
                ip("fd00:1:1::2", "fd00:ff::1", tcp(40000, 443, SYN)),
                verdict::MANAGEMENT,
            ),
            row(
                "outside every segment from a segment with egress deny",
                "d-ad",
                ip("fd00:1:2::5", "2001:db8::1", tcp(40000, 443, SYN)),
                verdict::EGRESS_DENIED,
            ),
            row(
                "outside every segment, egress allowed",
                "d-aw1",
                ip("fd00:1:1::2", "2001:db8::1", tcp(40000, 443, SYN)),
                verdict::PASS,
            ),
            row(
                "to an exposed endpoint",
                "d-ad",
                ip("fd00:1:2::5", "fd00:1:1::10", tcp(41000, 443, SYN)),
                verdict::PASS,
            ),
            row(
                "to the exposed address on another port",
                "d-ad",
                ip("fd00:1:2::5", "fd00:1:1::10", tcp(41000, 444, SYN)),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "ICMPv6 to a segment exposing ICMP only on IPv4",
                "d-ad",
                ip("fd00:1:2::5", "fd00:1:1::77", echo_request(3)),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "over a flow",
                "d-aw1",
                ip("fd00:1:1::2", "fd00:1:2::5", tcp(42000, 5432, SYN)),
                verdict::PASS,
            ),
            row(
                "over a cross-tenant flow",
                "d-aw2",
                ip("fd00:1:1::3", "fd00:2:1::5", udp(43000, 5000)),
                verdict::PASS,
            ),
            row(
                "neighbour solicitation for another segment's address, no flow or exposure",
                "d-ga",
                nd(
                    [2, 0, 0, 0, 0, 0x0a],
                    135,
                    "fd00:2:1::5",
                    "ff02::1:ff00:3",
                    "fd00:1:2::3",
                ),
                verdict::CROSS_TENANT,
            )
            .audited(),
            row(
                "neighbour solicitation for a management address",
                "d-aw1",
                nd(
                    [2, 0, 0, 0, 0, 0x0c],
                    135,
                    "fd00:1:1::2",
                    "ff02::1:ff00:10",
                    "fd00:ff::10",
                ),
                verdict::MANAGEMENT,
            ),
            row(
                "an exposed server soliciting another segment's address (discovery)",
                "d-ad",
                nd(
                    [2, 0, 0, 0, 0, 0x0b],
                    135,
                    "fd00:1:2::10",
                    "ff02::1:ff00:5",
                    "fd00:2:1::5",
                ),
                verdict::CROSS_TENANT,
            ),
            row(
                "neighbour solicitation for an exposed address",
                "d-ad",
                nd(
                    [2, 0, 0, 0, 0, 0x0b],
                    135,
                    "fd00:1:2::5",
                    "ff02::1:ff00:10",
                    "fd00:1:1::10",
                ),
                verdict::PASS,
            ),
            row(
                "neighbour solicitation between segments joined by a flow",
                "d-ad",
                nd(
                    [2, 0, 0, 0, 0, 0x0b],
                    135,
                    "fd00:1:2::5",
                    "ff02::1:ff00:2",
                    "fd00:1:1::2",
                ),
                verdict::PASS,
            ),
        ]);
    });
}

/// Sequence numbers of the tables' TCP conversations: the client's and the server's
/// initial ones.
const C: u32 = 1000;
const S: u32 = 5000;

#[test]
fn connection_tracking_ipv4() {
    in_private_netns(|| {
        let mut lab = lab();
        lab.check_all(&[
            // A client in db opens a connection to web's exposed endpoint. Each vif it
            // crosses tracks it in its own tables.
            row(
                "SYN to the exposed endpoint opens a connection (at db)",
                "d-ad",
                ip("10.1.2.5", "10.1.1.10", tcp_at(50000, 443, SYN, C, 0)),
                verdict::PASS,
            ),
            out(
                "the SYN is delivered to the server (opens at web)",
                "d-aw1",
                ip("10.1.2.5", "10.1.1.10", tcp_at(50000, 443, SYN, C, 0)),
                verdict::PASS,
            )
            .from("d-ad"),
            row(
                "a SYN-ACK that does not acknowledge the SYN is no reply",
                "d-aw1",
                ip(
                    "10.1.1.10",
                    "10.1.2.5",
                    tcp_at(443, 50000, SYN_ACK, S, C + 7),
                ),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "the server's SYN-ACK acknowledging the SYN is a reply",
                "d-aw1",
                ip(
                    "10.1.1.10",
                    "10.1.2.5",
                    tcp_at(443, 50000, SYN_ACK, S, C + 1),
                ),
                verdict::PASS,
            ),
            out(
                "and is delivered to the client",
                "d-ad",
                ip(
                    "10.1.1.10",
                    "10.1.2.5",
                    tcp_at(443, 50000, SYN_ACK, S, C + 1),
                ),
                verdict::PASS,
            )
            .from("d-aw1"),
            row(
                "the client's ACK completes the handshake",
                "d-ad",
                ip(
                    "10.1.2.5",
                    "10.1.1.10",
                    tcp_at(50000, 443, ACK, C + 1, S + 1),
                ),
                verdict::PASS,
            ),
            out(
                "at the server's vif too",
                "d-aw1",
                ip(
                    "10.1.2.5",
                    "10.1.1.10",
                    tcp_at(50000, 443, ACK, C + 1, S + 1),
                ),
                verdict::PASS,
            )
            .from("d-ad"),
            row(
                "an unsolicited packet from the exposed port to another client port",
                "d-aw1",
                ip("10.1.1.10", "10.1.2.5", tcp(443, 50001, ACK)),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "a non-SYN to the exposed endpoint passes but opens nothing",
                "d-ad",
                ip("10.1.2.5", "10.1.1.10", tcp(50002, 443, ACK)),
                verdict::PASS,
            ),
            row(
                "so the server's answer to it is refused",
                "d-aw1",
                ip("10.1.1.10", "10.1.2.5", tcp(443, 50002, ACK)),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "an ICMP error about the connection, to its client, passes",
                "d-aw1",
                icmp_error(
                    "10.1.1.10",
                    "10.1.2.5",
                    3,
                    3,
                    &quoted("10.1.2.5", "10.1.1.10", tcp(50000, 443, SYN)),
                ),
                verdict::PASS,
            ),
            row(
                "an ICMP error about it sent to a third party (another tenant) is refused",
                "d-aw1",
                icmp_error(
                    "10.1.1.10",
                    "10.2.1.5",
                    3,
                    3,
                    &quoted("10.1.2.5", "10.1.1.10", tcp(50000, 443, SYN)),
                ),
                verdict::CROSS_TENANT,
            ),
            row(
                "a neighbour VM cannot report on a connection it never saw",
                "d-aw2",
                icmp_error(
                    "10.1.1.10",
                    "10.1.2.5",
                    3,
                    3,
                    &quoted("10.1.2.5", "10.1.1.10", tcp(50000, 443, SYN)),
                ),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "an ICMP error about no connection is refused",
                "d-aw1",
                icmp_error(
                    "10.1.1.10",
                    "10.1.2.5",
                    3,
                    3,
                    &quoted("10.1.2.5", "10.1.1.10", tcp(50009, 443, SYN)),
                ),
                verdict::CROSS_SEGMENT,
            ),
            out(
                "an RST far from the server's position, spoofed from outside, is not part of it",
                "d-ad",
                from_outside(
                    "10.1.1.10",
                    "10.1.2.5",
                    tcp_at(443, 50000, RST | ACK, S + 1 + (1 << 21), C + 1),
                ),
                verdict::NOT_EXPOSED,
            ),
            out(
                "and the connection goes on",
                "d-ad",
                ip(
                    "10.1.1.10",
                    "10.1.2.5",
                    tcp_at(443, 50000, ACK, S + 1, C + 1),
                ),
                verdict::PASS,
            )
            .from("d-aw1"),
            row(
                "the client's RST (in sequence) ends the connection at db",
                "d-ad",
                ip(
                    "10.1.2.5",
                    "10.1.1.10",
                    tcp_at(50000, 443, RST | ACK, C + 1, S + 1),
                ),
                verdict::PASS,
            ),
            out(
                "and at web",
                "d-aw1",
                ip(
                    "10.1.2.5",
                    "10.1.1.10",
                    tcp_at(50000, 443, RST | ACK, C + 1, S + 1),
                ),
                verdict::PASS,
            )
            .from("d-ad"),
            row(
                "after the RST the server's packets are no replies",
                "d-aw1",
                ip(
                    "10.1.1.10",
                    "10.1.2.5",
                    tcp_at(443, 50000, ACK, S + 1, C + 1),
                ),
                verdict::CROSS_SEGMENT,
            ),
            // ICMP echo through an exposure.
            row(
                "echo request to a prefix exposed for ICMP",
                "d-ad",
                ip("10.1.2.5", "10.1.1.77", echo_request(9)),
                verdict::PASS,
            ),
            out(
                "delivered to the VM that holds the address",
                "d-aw2",
                ip("10.1.2.5", "10.1.1.77", echo_request(9)),
                verdict::PASS,
            )
            .from("d-ad"),
            row(
                "its echo reply",
                "d-aw2",
                ip("10.1.1.77", "10.1.2.5", echo_reply(9)),
                verdict::PASS,
            ),
            row(
                "an echo reply nobody asked for",
                "d-aw2",
                ip("10.1.1.77", "10.1.2.5", echo_reply(10)),
                verdict::CROSS_SEGMENT,
            ),
            // From outside to db's exposed endpoint: db has egress deny, yet replies pass.
            out(
                "from outside to an exposed endpoint",
                "d-ad",
                from_outside("203.0.113.9", "10.1.2.10", tcp_at(51000, 80, SYN, C, 0)),
                verdict::PASS,
            ),
            row(
                "the reply leaves a segment with egress deny",
                "d-ad",
                ip(
                    "10.1.2.10",
                    "203.0.113.9",
                    tcp_at(80, 51000, SYN_ACK, S, C + 1),
                ),
                verdict::PASS,
            ),
            row(
                "but the server opening anything outside does not",
                "d-ad",
                ip("10.1.2.10", "203.0.113.9", tcp(80, 51001, SYN)),
                verdict::EGRESS_DENIED,
            ),
            out(
                "the client completes the handshake",
                "d-ad",
                from_outside(
                    "203.0.113.9",
                    "10.1.2.10",
                    tcp_at(51000, 80, ACK, C + 1, S + 1),
                ),
                verdict::PASS,
            ),
            row(
                "the server's FIN closes its direction only",
                "d-ad",
                ip(
                    "10.1.2.10",
                    "203.0.113.9",
                    tcp_at(80, 51000, FIN | ACK, S + 1, C + 1),
                ),
                verdict::PASS,
            ),
            out(
                "the client may still send (half-close)",
                "d-ad",
                from_outside(
                    "203.0.113.9",
                    "10.1.2.10",
                    tcp_at(51000, 80, ACK, C + 1, S + 2),
                ),
                verdict::PASS,
            ),
            row(
                "and the server acknowledge it",
                "d-ad",
                ip(
                    "10.1.2.10",
                    "203.0.113.9",
                    tcp_at(80, 51000, ACK, S + 2, C + 1),
                ),
                verdict::PASS,
            ),
            // A VM of web (egress allowed) opens a connection outside.
            row(
                "a VM opens a connection outside",
                "d-aw1",
                ip("10.1.1.2", "198.51.100.7", tcp_at(52000, 80, SYN, C, 0)),
                verdict::PASS,
            ),
            out(
                "the outside server's reply reaches the VM",
                "d-aw1",
                from_outside(
                    "198.51.100.7",
                    "10.1.1.2",
                    tcp_at(80, 52000, SYN_ACK, S, C + 1),
                ),
                verdict::PASS,
            ),
            out(
                "the outside server to another port of the VM",
                "d-aw1",
                from_outside(
                    "198.51.100.7",
                    "10.1.1.2",
                    tcp_at(80, 52001, SYN_ACK, S, C + 1),
                ),
                verdict::NOT_EXPOSED,
            ),
        ]);
    });
}

#[test]
fn connection_tracking_ipv6() {
    in_private_netns(|| {
        let mut lab = lab();
        lab.check_all(&[
            row(
                "SYN over a flow opens a connection",
                "d-aw1",
                ip("fd00:1:1::2", "fd00:1:2::5", tcp_at(53000, 5432, SYN, C, 0)),
                verdict::PASS,
            ),
            out(
                "delivered over the flow",
                "d-ad",
                ip("fd00:1:1::2", "fd00:1:2::5", tcp_at(53000, 5432, SYN, C, 0)),
                verdict::PASS,
            )
            .from("d-aw1"),
            row(
                "the reply passes",
                "d-ad",
                ip(
                    "fd00:1:2::5",
                    "fd00:1:1::2",
                    tcp_at(5432, 53000, SYN_ACK, S, C + 1),
                ),
                verdict::PASS,
            ),
            out(
                "and is delivered",
                "d-aw1",
                ip(
                    "fd00:1:2::5",
                    "fd00:1:1::2",
                    tcp_at(5432, 53000, SYN_ACK, S, C + 1),
                ),
                verdict::PASS,
            )
            .from("d-ad"),
            row(
                "an ICMPv6 packet-too-big about the connection passes",
                "d-ad",
                icmp_error(
                    "fd00:1:2::5",
                    "fd00:1:1::2",
                    2,
                    0,
                    &quoted("fd00:1:1::2", "fd00:1:2::5", tcp(53000, 5432, ACK)),
                ),
                verdict::PASS,
            ),
            row(
                "an ICMPv6 error quoting IPv4-mapped addresses matches nothing",
                "d-ad",
                icmp_error(
                    "fd00:1:2::5",
                    "fd00:1:1::2",
                    2,
                    0,
                    &quoted("::ffff:10.1.1.2", "::ffff:10.1.2.5", tcp(53000, 5432, ACK)),
                ),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "an IPv6 packet from an IPv4-mapped address is malformed",
                "d-aw1",
                ip("::ffff:10.1.1.2", "fd00:1:2::5", tcp(53000, 5432, SYN)),
                verdict::MALFORMED,
            ),
            row(
                "the server opening the other way is refused",
                "d-ad",
                ip("fd00:1:2::5", "fd00:1:1::2", tcp(5432, 53001, SYN)),
                verdict::CROSS_SEGMENT,
            ),
            out(
                "from outside to an exposed endpoint",
                "d-aw1",
                from_outside("2001:db8::9", "fd00:1:1::10", tcp_at(54000, 443, SYN, C, 0)),
                verdict::PASS,
            ),
            row(
                "its reply",
                "d-aw1",
                ip(
                    "fd00:1:1::10",
                    "2001:db8::9",
                    tcp_at(443, 54000, SYN_ACK, S, C + 1),
                ),
                verdict::PASS,
            ),
            out(
                "from outside to a port not exposed",
                "d-aw1",
                from_outside("2001:db8::9", "fd00:1:1::10", tcp(54000, 22, SYN)),
                verdict::NOT_EXPOSED,
            ),
        ]);
    });
}

#[test]
fn egress_rules() {
    in_private_netns(|| {
        let mut lab = lab();
        let db_mac = [2, 0, 0, 0, 0, 0xdb];
        lab.check_all(&[
            out(
                "same segment",
                "d-aw1",
                ip("10.1.1.3", "10.1.1.2", tcp(1000, 22, SYN)),
                verdict::PASS,
            )
            .from("d-aw2"),
            out(
                "from another segment, not exposed",
                "d-aw1",
                ip("10.1.2.5", "10.1.1.2", tcp(1000, 22, SYN)),
                verdict::CROSS_SEGMENT,
            )
            .from("d-ad"),
            out(
                "from another tenant",
                "d-aw1",
                ip("10.2.1.5", "10.1.1.2", tcp(1000, 22, SYN)),
                verdict::CROSS_TENANT,
            )
            .from("d-ga"),
            out(
                "from another segment over a flow into this one",
                "d-ad",
                ip("10.1.1.5", "10.1.2.5", tcp(1000, 5432, SYN)),
                verdict::PASS,
            )
            .from("d-aw1"),
            // The receiving end of a cross-tenant flow judges by its own segment's flags
            // (a flow to another tenant): delivered inside the flow's ports, refused
            // (audited: globex/api is in audit mode) one port beyond.
            out(
                "from another tenant over a cross-tenant flow into this one",
                "d-ga",
                ip("10.1.1.5", "10.2.1.5", udp(43000, 5010)),
                verdict::PASS,
            )
            .from("d-aw1"),
            out(
                "from another tenant, outside the cross-tenant flow's ports",
                "d-ga",
                ip("10.1.1.5", "10.2.1.5", udp(43000, 5011)),
                verdict::CROSS_TENANT,
            )
            .from("d-aw1")
            .audited(),
            out(
                "from outside to an exposed endpoint",
                "d-aw1",
                from_outside("203.0.113.9", "10.1.1.10", tcp(1000, 443, SYN)),
                verdict::PASS,
            ),
            out(
                "from outside to an address not exposed",
                "d-aw1",
                from_outside("203.0.113.9", "10.1.1.11", tcp(1000, 443, SYN)),
                verdict::NOT_EXPOSED,
            ),
            out(
                "from the uplink with a source address of the segment itself: still outside",
                "d-aw1",
                from_outside("10.1.1.3", "10.1.1.2", tcp(1000, 22, SYN)),
                verdict::NOT_EXPOSED,
            ),
            out(
                "from the uplink with a source in a segment a flow comes from: still outside",
                "d-ad",
                from_outside("10.1.1.5", "10.1.2.5", tcp(1000, 5432, SYN)),
                verdict::NOT_EXPOSED,
            ),
            out(
                "from the host's own stack with a source of the segment: outside",
                "d-aw1",
                ip("10.1.1.3", "10.1.1.2", tcp(1000, 22, SYN)),
                verdict::NOT_EXPOSED,
            )
            .by_host(),
            out(
                "from a link the daemon has not classified: dropped, fail closed",
                "d-aw1",
                ip("10.1.1.3", "10.1.1.2", tcp(1000, 22, SYN)),
                verdict::UNKNOWN_INTERFACE,
            )
            .through_unclassified(),
            out(
                "from outside, UDP to a VM",
                "d-aw1",
                from_outside("203.0.113.9", "10.1.1.2", udp(1000, 53)),
                verdict::NOT_EXPOSED,
            ),
            out(
                "from outside into an audit segment: counted, passed",
                "d-ga",
                from_outside("203.0.113.9", "10.2.1.5", tcp(1000, 22, SYN)),
                verdict::NOT_EXPOSED,
            )
            .audited(),
            out(
                "a multicast listener query from a link-local source outside",
                "d-aw1",
                ip_from(
                    ROUTER_MAC,
                    [0x33, 0x33, 0, 0, 0, 1],
                    "fe80::1",
                    "ff02::1",
                    icmp(130),
                ),
                verdict::PASS,
            ),
            out(
                "a multicast listener query from a global source outside",
                "d-aw1",
                ip_from(
                    ROUTER_MAC,
                    [0x33, 0x33, 0, 0, 0, 1],
                    "2001:db8::1",
                    "ff02::1",
                    icmp(130),
                ),
                verdict::NOT_EXPOSED,
            ),
            out(
                "a multicast listener report from another segment's VM",
                "d-aw1",
                ip_from(
                    [2, 0, 0, 0, 0, 0xdb],
                    [0x33, 0x33, 0, 0, 0, 0x16],
                    "fd00:1:2::5",
                    "ff02::16",
                    icmp(143),
                ),
                verdict::CROSS_SEGMENT,
            )
            .from("d-ad"),
            out(
                "a DHCP server's answer from the segment's gateway",
                "d-ad",
                ip_from(
                    ROUTER_MAC,
                    BROADCAST,
                    "10.1.2.1",
                    "255.255.255.255",
                    udp(67, 68),
                ),
                verdict::PASS,
            ),
            out(
                "a DHCP server's answer from any other outside host",
                "d-ad",
                ip_from(
                    ROUTER_MAC,
                    BROADCAST,
                    "192.0.2.1",
                    "255.255.255.255",
                    udp(67, 68),
                ),
                verdict::NOT_EXPOSED,
            ),
            out(
                "ARP from another segment's VM for its own neighbour (shared bridge)",
                "d-aw1",
                arp_request(db_mac, "10.1.2.5", "10.1.2.6"),
                verdict::CROSS_SEGMENT,
            )
            .from("d-ad"),
            out(
                "ARP from another segment's VM for this segment's exposed address",
                "d-aw1",
                arp_request(db_mac, "10.1.2.5", "10.1.1.10"),
                verdict::PASS,
            )
            .from("d-ad"),
            out(
                "ARP from a router outside every segment",
                "d-aw1",
                arp_request(ROUTER_MAC, "192.0.2.1", "10.1.1.2"),
                verdict::PASS,
            ),
            out(
                "ARP from outside claiming an address of a segment (to divert its traffic)",
                "d-aw1",
                arp_request(ROUTER_MAC, "10.1.1.3", "10.1.1.2"),
                verdict::ARP_SPOOF,
            ),
            out(
                "ARP from outside for the segment's gateway",
                "d-ad",
                arp_request(ROUTER_MAC, "10.1.2.1", "10.1.2.5"),
                verdict::PASS,
            ),
            out(
                "neighbour solicitation from another segment for its own neighbour",
                "d-ga",
                nd(db_mac, 135, "fd00:1:2::5", "ff02::1:ff00:6", "fd00:1:2::6"),
                verdict::CROSS_TENANT,
            )
            .from("d-ad")
            .audited(),
            out(
                "router advertisement from a router outside every segment",
                "d-aw1",
                router_advertisement(ROUTER_MAC, "fe80::1"),
                verdict::PASS,
            ),
            out(
                "a router advertisement that was forwarded (hop limit 64) is no ND",
                "d-aw1",
                frame::with_hop_limit(&router_advertisement(ROUTER_MAC, "fe80::1"), 64),
                verdict::NOT_EXPOSED,
            ),
            out(
                "a neighbour advertisement from outside claiming a segment's address",
                "d-aw1",
                nd_advertisement(ROUTER_MAC, "fe80::1", "ff02::1", "fd00:1:1::3"),
                verdict::ND_SPOOF,
            ),
        ]);
        // Frames delivered by MAC to a VM whose segment their destination address is not
        // in are not for it, whatever connection or exposure they belong to.
        lab.check_all(&[
            row(
                "a web VM pings an address outside every segment (egress allowed)",
                "d-aw1",
                ip("10.1.1.2", "10.9.9.9", echo_request(5)),
                verdict::PASS,
            ),
            out(
                "the same frame delivered by MAC to a db VM",
                "d-ad",
                ip("10.1.1.2", "10.9.9.9", echo_request(5)),
                verdict::CROSS_SEGMENT,
            )
            .from("d-aw1"),
            out(
                "a frame to web's exposed endpoint delivered by MAC to a db VM",
                "d-ad",
                ip("10.2.1.5", "10.1.1.10", tcp(1000, 443, SYN)),
                verdict::CROSS_TENANT,
            )
            .from("d-ga"),
            out(
                "from outside, to an address outside every segment",
                "d-aw1",
                from_outside("203.0.113.9", "198.51.100.1", tcp(1000, 443, SYN)),
                verdict::NOT_EXPOSED,
            ),
        ]);
        // Link-scope traffic: the sending VM lets it onto the link, and each receiving
        // VM judges it by where it entered the host.
        lab.check_all(&[
            row(
                "a db VM solicits a neighbour of its segment from its link-local address",
                "d-ad",
                nd(db_mac, 135, "fe80::db", "ff02::1:ff00:6", "fd00:1:2::6"),
                verdict::PASS,
            ),
            out(
                "its link-local traffic to a web VM",
                "d-aw1",
                ip_from(db_mac, BROADCAST, "fe80::db", "fe80::1:2", echo_request(1)),
                verdict::CROSS_SEGMENT,
            )
            .from("d-ad"),
            out(
                "its router advertisement (from a VM, another segment)",
                "d-aw1",
                router_advertisement(db_mac, "fe80::db"),
                verdict::CROSS_SEGMENT,
            )
            .from("d-ad"),
            out(
                "its DHCP discovery broadcast (unspecified source)",
                "d-aw1",
                ip_from(db_mac, BROADCAST, "0.0.0.0", "255.255.255.255", udp(68, 67)),
                verdict::CROSS_SEGMENT,
            )
            .from("d-ad"),
            row(
                "link-local unicast from db (egress deny) goes onto the link",
                "d-ad",
                ip_from(db_mac, ROUTER_MAC, "fe80::db", "fe80::1:3", echo_request(2)),
                verdict::PASS,
            ),
            out(
                "where a web VM refuses it",
                "d-aw1",
                ip_from(db_mac, ROUTER_MAC, "fe80::db", "fe80::1:3", echo_request(2)),
                verdict::CROSS_SEGMENT,
            )
            .from("d-ad"),
            out(
                "and a VM of its own segment takes it",
                "d-ad",
                ip_from(db_mac, BROADCAST, "fe80::db", "fe80::2:2", echo_request(1)),
                verdict::PASS,
            )
            .from("d-ad"),
            row(
                "mDNS (link-scope multicast) from db, egress deny notwithstanding",
                "d-ad",
                ip_from(
                    db_mac,
                    [1, 0, 0x5e, 0, 0, 0xfb],
                    "10.1.2.5",
                    "224.0.0.251",
                    udp(5353, 5353),
                ),
                verdict::PASS,
            ),
            out(
                "reaches no other tenant",
                "d-ga",
                ip_from(
                    db_mac,
                    [1, 0, 0x5e, 0, 0, 0xfb],
                    "10.1.2.5",
                    "224.0.0.251",
                    udp(5353, 5353),
                ),
                verdict::CROSS_TENANT,
            )
            .from("d-ad")
            .audited(),
            row(
                "multicast beyond the link from db (egress deny)",
                "d-ad",
                ip_from(
                    db_mac,
                    [1, 0, 0x5e, 1, 1, 1],
                    "10.1.2.5",
                    "239.1.1.1",
                    udp(5000, 5000),
                ),
                verdict::EGRESS_DENIED,
            ),
        ]);
    });
}

/// Every tracked connection records where it was opened; after a policy swap the ones the
/// new policy would not admit are removed, and their next packets are judged as new ones.
#[test]
fn a_new_policy_revokes_the_connections_it_no_longer_admits() {
    use isolator::compile::Plan;
    use isolator::policy;
    use isolator::recheck::Recheck;
    use isolator_common::direction;

    in_private_netns(|| {
        let mut lab = lab();
        let (web1, db) = (lab.ifindex("d-aw1"), lab.ifindex("d-ad"));
        lab.check_all(&[
            row(
                "a flow web -> db opens a connection (at web's ingress)",
                "d-aw1",
                ip("10.1.1.2", "10.1.2.5", tcp_at(42000, 5432, SYN, C, 0)),
                verdict::PASS,
            ),
            out(
                "and at db's egress",
                "d-ad",
                ip("10.1.1.2", "10.1.2.5", tcp_at(42000, 5432, SYN, C, 0)),
                verdict::PASS,
            )
            .from("d-aw1"),
            row(
                "db opens one to web's exposed endpoint (at db's ingress)",
                "d-ad",
                ip("10.1.2.5", "10.1.1.10", tcp_at(50000, 443, SYN, C, 0)),
                verdict::PASS,
            ),
            out(
                "and at web's egress",
                "d-aw1",
                ip("10.1.2.5", "10.1.1.10", tcp_at(50000, 443, SYN, C, 0)),
                verdict::PASS,
            )
            .from("d-ad"),
            out(
                "an outside client opens one to it (at web's egress)",
                "d-aw1",
                from_outside("198.51.100.7", "10.1.1.10", tcp_at(51000, 443, SYN, C, 0)),
                verdict::PASS,
            ),
        ]);
        let mut opened: Vec<(u16, u8, u32, u32, bool)> = lab
            .dp
            .tracked()
            .unwrap()
            .iter()
            .map(|t| {
                let outside = t.state.peer == isolator_common::ConnState::PEER_OUTSIDE;
                (
                    t.key.src_port,
                    t.state.direction,
                    t.state.ifindex,
                    t.vif,
                    outside,
                )
            })
            .collect();
        opened.sort();
        assert_eq!(
            opened,
            vec![
                (42000, direction::INGRESS, web1, web1, false),
                (42000, direction::EGRESS, db, db, false),
                (50000, direction::INGRESS, db, db, false),
                (50000, direction::EGRESS, web1, web1, false),
                (51000, direction::EGRESS, web1, web1, true),
            ],
            "each vif tracks what it judged, recording the direction, the vif and whether \
             the peer is outside"
        );

        let swap = |lab: &mut Lab, text: &str| -> u64 {
            let policy = policy::parse(text, "test.yaml").expect("valid policy");
            let plan = Plan::new(&policy, &lab.links).expect("plan");
            lab.dp.apply(&plan).expect("applying the new policy");
            lab.dp.revoke_connections(&Recheck::new(&plan)).unwrap()
        };

        // The flow now admits another port only.
        let narrower = POLICY.replace("        ports: 5432\n", "        ports: 5433\n");
        assert_ne!(narrower, POLICY);
        assert_eq!(
            swap(&mut lab, &narrower),
            2,
            "only the web -> db connection, at both of its vifs"
        );
        lab.check_all(&[
            row(
                "the revoked connection's next segment is judged anew",
                "d-aw1",
                ip(
                    "10.1.1.2",
                    "10.1.2.5",
                    tcp_at(42000, 5432, ACK, C + 1, S + 1),
                ),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "and so is its reply direction",
                "d-ad",
                ip(
                    "10.1.2.5",
                    "10.1.1.2",
                    tcp_at(5432, 42000, SYN_ACK, S, C + 1),
                ),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "a connection the new policy still admits keeps passing",
                "d-aw1",
                ip(
                    "10.1.1.10",
                    "10.1.2.5",
                    tcp_at(443, 50000, SYN_ACK, S, C + 1),
                ),
                verdict::PASS,
            ),
        ]);

        let mut kept: Vec<u16> = lab
            .dp
            .connections()
            .unwrap()
            .iter()
            .map(|(k, _)| k.src_port)
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            vec![50000, 50000, 51000],
            "both connections to 443 are kept, at each vif that tracks them"
        );

        // No longer exposed on 443: both connections to it end.
        let unexposed = narrower.replace("ports: 443\n", "ports: 8443\n");
        assert_ne!(unexposed, narrower);
        assert_eq!(swap(&mut lab, &unexposed), 3);
        assert_eq!(lab.dp.connections().unwrap(), vec![]);
        lab.check_all(&[row(
            "the server's next segment to db is refused",
            "d-aw1",
            ip(
                "10.1.1.10",
                "10.1.2.5",
                tcp_at(443, 50000, ACK, S + 1, C + 1),
            ),
            verdict::CROSS_SEGMENT,
        )]);
        assert_eq!(swap(&mut lab, &unexposed), 0, "nothing left to revoke");
    });
}

/// Revocation without a window: right after a swap, before the daemon's re-check has
/// looked at any table, the programs judge a connection admitted under the earlier policy
/// again on its next packet: one the new policy no longer admits stops at once (and is
/// removed, counted `revoked`), one it still admits goes on under the new policy. (Between
/// segments, a packet whose service no flow or exposure admits any more is refused before
/// the tables are asked at all; this is about what that early step lets through: here, a
/// client outside every segment.)
#[test]
fn the_kernel_cuts_a_revoked_connection_on_its_next_packet_before_any_recheck() {
    use isolator::compile::Plan;
    use isolator::policy;

    in_private_netns(|| {
        let mut lab = lab();
        lab.check_all(&[
            row(
                "a flow web -> db opens a connection (at web's ingress)",
                "d-aw1",
                ip("10.1.1.2", "10.1.2.5", tcp_at(42000, 5432, SYN, C, 0)),
                verdict::PASS,
            ),
            out(
                "and at db's egress",
                "d-ad",
                ip("10.1.1.2", "10.1.2.5", tcp_at(42000, 5432, SYN, C, 0)),
                verdict::PASS,
            )
            .from("d-aw1"),
            out(
                "an outside client opens one to web's exposed endpoint (at web's egress)",
                "d-aw1",
                from_outside("198.51.100.7", "10.1.1.10", tcp_at(51000, 443, SYN, C, 0)),
                verdict::PASS,
            ),
        ]);
        let revoked = |lab: &Lab| {
            let (_, _, events) = lab.dp.conntrack().expect("connection events");
            events[isolator_common::conntrack::EVENT_REVOKED as usize]
        };
        let before = revoked(&lab);
        // No longer exposed on 443; no re-check runs.
        let unexposed = POLICY.replace("ports: 443\n", "ports: 8443\n");
        assert_ne!(unexposed, POLICY);
        let plan = Plan::new(
            &policy::parse(&unexposed, "test.yaml").expect("valid policy"),
            &lab.links,
        )
        .expect("plan");
        lab.dp.apply(&plan).expect("applying the new policy");
        assert_eq!(
            lab.dp.connections().unwrap().len(),
            3,
            "nothing removed the connections yet"
        );
        let epoch_of = |lab: &Lab, port: u16, direction: u8| {
            lab.dp
                .connections()
                .unwrap()
                .iter()
                .find(|(k, st)| k.src_port == port && st.direction == direction)
                .map(|(_, st)| st.epoch)
        };
        let old_epoch = epoch_of(&lab, 42000, isolator_common::direction::EGRESS);
        lab.check_all(&[
            out(
                "the revoked connection's next segment from the client is refused at once",
                "d-aw1",
                from_outside(
                    "198.51.100.7",
                    "10.1.1.10",
                    tcp_at(51000, 443, ACK, C + 1, S + 1),
                ),
                verdict::NOT_EXPOSED,
            ),
            row(
                "a connection the new policy still admits goes on (twin): db's answer",
                "d-ad",
                ip(
                    "10.1.2.5",
                    "10.1.1.2",
                    tcp_at(5432, 42000, SYN_ACK, S, C + 1),
                ),
                verdict::PASS,
            ),
        ]);
        let left: Vec<u16> = lab
            .dp
            .connections()
            .unwrap()
            .iter()
            .map(|(k, _)| k.src_port)
            .collect();
        assert!(
            !left.contains(&51000),
            "the programs removed the revoked connection: {left:?}"
        );
        assert_eq!(revoked(&lab) - before, 1, "counted as revoked");
        let new_epoch = epoch_of(&lab, 42000, isolator_common::direction::EGRESS);
        assert!(
            new_epoch.is_some() && new_epoch != old_epoch,
            "the connection still admitted now carries the new policy's epoch: {old_epoch:?} \
             -> {new_epoch:?}"
        );
    });
}

/// Each vif has its own connection tables, and connections being opened have a table of
/// their own: a flood of spoofed SYNs from outside fills only the half-open table of the
/// VM it targets (the oldest half-open entries go), never its established connections and
/// never another vif's; a spoofed SYN never becomes an established entry.
#[test]
fn a_syn_flood_displaces_only_its_targets_half_open_entries() {
    use isolator_common::limits::OPENING_PER_VIF;

    in_private_netns(|| {
        let mut lab = lab();
        let web1 = lab.ifindex("d-aw1");
        // An established connection of the target (web's exposed server, a client in db)
        // and one of another tenant's VM (globex, to an outside server).
        lab.check_all(&[
            out(
                "db's client to web's server",
                "d-aw1",
                ip("10.1.2.5", "10.1.1.10", tcp_at(40000, 443, SYN, C, 0)),
                verdict::PASS,
            )
            .from("d-ad"),
            row(
                "the server answers",
                "d-aw1",
                ip(
                    "10.1.1.10",
                    "10.1.2.5",
                    tcp_at(443, 40000, SYN_ACK, S, C + 1),
                ),
                verdict::PASS,
            ),
            out(
                "the client completes the handshake",
                "d-aw1",
                ip(
                    "10.1.2.5",
                    "10.1.1.10",
                    tcp_at(40000, 443, ACK, C + 1, S + 1),
                ),
                verdict::PASS,
            )
            .from("d-ad"),
            row(
                "a globex VM opens a connection outside (its segment allows egress)",
                "d-ga",
                ip("10.2.1.5", "198.51.100.7", tcp_at(41000, 80, SYN, C, 0)),
                verdict::PASS,
            ),
            out(
                "and gets its answer",
                "d-ga",
                from_outside(
                    "198.51.100.7",
                    "10.2.1.5",
                    tcp_at(80, 41000, SYN_ACK, S, C + 1),
                ),
                verdict::PASS,
            ),
            row(
                "which it acknowledges",
                "d-ga",
                ip(
                    "10.2.1.5",
                    "198.51.100.7",
                    tcp_at(41000, 80, ACK, C + 1, S + 1),
                ),
                verdict::PASS,
            ),
        ]);
        // The flood: spoofed sources from outside, SYN to the exposed endpoint.
        let extra = 500u32;
        let total = OPENING_PER_VIF + extra;
        let spoofed = |i: u32| {
            (
                format!("198.51.{}.{}", 1 + i / 250, 1 + i % 250),
                1024 + i as u16,
            )
        };
        for i in 0..total {
            let (src, port) = spoofed(i);
            let frame = from_outside(&src, "10.1.1.10", tcp_at(port, 443, SYN, C, 0));
            let action = lab
                .dp
                .test_run_egress(web1, lab.ifindex(crate::fixture::UPLINK), &frame)
                .unwrap();
            assert_eq!(
                action,
                isolator::dataplane::TC_PASS,
                "SYN {i} to the exposed endpoint passes"
            );
        }
        let tracked = lab.dp.tracked().unwrap();
        let at_web: Vec<_> = tracked.iter().filter(|t| t.vif == web1).collect();
        let half_open = at_web.iter().filter(|t| t.opening).count();
        assert!(
            half_open <= OPENING_PER_VIF as usize && half_open >= (OPENING_PER_VIF - 256) as usize,
            "{half_open} half-open entries at the target, in a table of {OPENING_PER_VIF}"
        );
        assert_eq!(
            at_web.iter().filter(|t| !t.opening).count(),
            1,
            "the target's established connection is still there"
        );
        let (oldest, oldest_port) = spoofed(0);
        let (newest, newest_port) = spoofed(total - 1);
        lab.check_all(&[
            out(
                "the target's established connection still works",
                "d-aw1",
                ip(
                    "10.1.2.5",
                    "10.1.1.10",
                    tcp_at(40000, 443, ACK, C + 1, S + 1),
                ),
                verdict::PASS,
            )
            .from("d-ad"),
            out(
                "so does the other tenant's",
                "d-ga",
                from_outside(
                    "198.51.100.7",
                    "10.2.1.5",
                    tcp_at(80, 41000, ACK, S + 1, C + 1),
                ),
                verdict::PASS,
            ),
        ]);
        // The oldest spoofed entries were pushed out of the half-open table; the newest is
        // there, and stays half-open (the spoofer never sees the SYN-ACK, so it cannot
        // complete the handshake).
        let tracked = lab.dp.tracked().unwrap();
        let find = |port: u16| {
            tracked
                .iter()
                .find(|t| t.vif == web1 && t.key.src_port == port)
        };
        assert!(
            find(oldest_port).is_none(),
            "the oldest half-open entry ({oldest}) was evicted"
        );
        let newest_entry = find(newest_port).expect("the newest spoofed connection is tracked");
        assert!(
            newest_entry.opening,
            "a spoofed SYN ({newest}) stays half-open"
        );
    });
}
