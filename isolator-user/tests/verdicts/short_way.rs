//! The short way to a drop (docs/design.md): a plain IPv4 TCP or UDP packet to another
//! segment that no flow or exposure concerns, or to management or loopback, is refused
//! before the parser. Each row that
//! takes it stands next to twins that must not: whatever the story would judge otherwise
//! (the source guard, management, the host and its gateways, exposures, flows either
//! way, audit mode, a malformed or unusual header) keeps the story's verdict. Every row
//! runs through the XDP program and through the TC ingress judge. Needs root.

use isolator_common::verdict;
use isolator_tests::frame::{self, ACK, SYN, tagged, tcp, tcp_at, truncated, udp, with_ihl};

use crate::fixture::{Lab, PEER_MAC, VM_MAC, in_private_netns, ip, out, row};

const POLICY: &str = r#"
version: 1
vif_names: ["d-*"]
management:
  - prefix: 192.168.100.0/24
  - prefix: 192.168.101.0/24
    services: [{protocol: tcp, ports: 22}]
tenants:
  - name: acme
    segments:
      - name: web
        interfaces:
          - d-aw1
          - name: d-aw2
            addresses: ["10.1.1.20"]
        prefixes: ["10.1.1.0/24"]
        gateways:
          - address: 10.1.1.1
            services: [{protocol: udp, ports: 53}]
        expose:
          - {address: 10.1.1.30, protocol: tcp, ports: 443}
          - {address: 10.1.1.20, protocol: tcp, ports: 443}
      - name: db
        interfaces: ["d-ad"]
        prefixes: ["10.1.2.0/24"]
      - name: batch
        mode: audit
        interfaces: ["d-ab"]
        prefixes: ["10.1.3.0/24"]
    flows:
      - {from: web, to: db, protocol: tcp, ports: 5432}
      - {from: db, to: globex/api, protocol: udp, ports: 514}
  - name: globex
    segments:
      - name: api
        interfaces: ["d-ga"]
        prefixes: ["10.2.1.0/24"]
        expose:
          - {address: 10.2.1.10, protocol: tcp, ports: 443}
"#;

const LINKS: &[&str] = &["d-aw1", "d-aw2", "d-ad", "d-ab", "d-ga"];

/// Declared MACs: d-aw1 and d-aw2 declare theirs, d-ad none (it may use any MAC no other
/// interface declared, which the short way leaves to the story's lookup).
const IDENTITY_POLICY: &str = r#"
version: 1
vif_names: ["d-*"]
tenants:
  - name: acme
    segments:
      - name: web
        interfaces:
          - name: d-aw1
            mac: "02:00:00:00:00:01"
          - name: d-aw2
            mac: "02:00:00:00:00:07"
            addresses: ["10.1.1.20"]
          - d-ad
        prefixes: ["10.1.1.0/24"]
  - name: globex
    segments:
      - name: api
        interfaces: ["d-ga"]
        prefixes: ["10.2.1.0/24"]
"#;

const IDENTITY_LINKS: &[&str] = &["d-aw1", "d-aw2", "d-ad", "d-ga"];

/// A TCP SYN from the VM.
fn syn(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    ip(src, dst, tcp(40000, dport, SYN))
}

/// A UDP datagram from the VM.
fn dgram(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    ip(src, dst, udp(sport, dport))
}

/// `frame` with its IPv4 flags and fragment offset word set to `word`.
fn with_fragment_word(frame: &[u8], word: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[14 + 6..14 + 8].copy_from_slice(&word.to_be_bytes());
    let sum = ipv4_checksum(&f[14..34]);
    f[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    f
}

/// `frame` with its IPv4 total length set to `len`.
fn with_total_length(frame: &[u8], len: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[14 + 2..14 + 4].copy_from_slice(&len.to_be_bytes());
    f
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum = 0u32;
    for (i, pair) in header.chunks(2).enumerate() {
        if i != 5 {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What the VM behind d-aw1 sends from 10.1.1.2.
const WEB: &str = "10.1.1.2";

/// The MAC d-aw2 declares in [`IDENTITY_POLICY`].
const AW2_MAC: frame::Mac = [0x02, 0, 0, 0, 0, 7];

/// A TCP SYN from the VM behind d-aw2, with its declared MAC.
fn aw2_syn(src: &str, dst: &str) -> Vec<u8> {
    frame::ip(AW2_MAC, PEER_MAC, src, dst, tcp(40000, 80, SYN))
}

#[test]
fn the_short_way_refuses_only_what_the_story_would() {
    in_private_netns(|| {
        let mut lab = Lab::new(POLICY, LINKS);
        let rows = vec![
            // Taken: another tenant, another segment without a flow, either protocol.
            row(
                "tcp to another tenant",
                "d-aw1",
                syn(WEB, "10.2.1.9", 80),
                verdict::CROSS_TENANT,
            ),
            row(
                "udp to another tenant",
                "d-aw1",
                dgram(WEB, "10.2.1.9", 5000, 53),
                verdict::CROSS_TENANT,
            ),
            row(
                "tcp to another segment",
                "d-aw1",
                syn(WEB, "10.1.2.9", 80),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "the vif with declared addresses",
                "d-aw2",
                syn("10.1.1.20", "10.2.1.9", 80),
                verdict::CROSS_TENANT,
            ),
            // Flows: the flow's service passes, another service of the pair does not.
            row(
                "a flow's service",
                "d-aw1",
                syn(WEB, "10.1.2.9", 5432),
                verdict::PASS,
            ),
            row(
                "a flow's pair, another port",
                "d-aw1",
                syn(WEB, "10.1.2.9", 5433),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "a flow to another tenant",
                "d-ad",
                dgram("10.1.2.9", "10.2.1.9", 5000, 514),
                verdict::PASS,
            ),
            row(
                "that flow's pair, another port",
                "d-ad",
                dgram("10.1.2.9", "10.2.1.9", 5000, 515),
                verdict::CROSS_TENANT,
            ),
            row(
                "another tenant's flow, another source segment",
                "d-aw1",
                dgram(WEB, "10.2.1.9", 5000, 514),
                verdict::CROSS_TENANT,
            ),
            row(
                "a reply's shape on that flow, untracked",
                "d-ga",
                dgram("10.2.1.9", "10.1.2.9", 514, 5000),
                verdict::CROSS_TENANT,
            ),
            // Exposures, of the destination and of the source.
            row(
                "an exposed endpoint",
                "d-aw1",
                syn(WEB, "10.2.1.10", 443),
                verdict::PASS,
            ),
            row(
                "an exposed endpoint, another port",
                "d-aw1",
                syn(WEB, "10.2.1.10", 444),
                verdict::CROSS_TENANT,
            ),
            row(
                "from an exposed address, not a reply",
                "d-aw1",
                ip("10.1.1.30", "10.2.1.9", tcp(40000, 80, ACK)),
                verdict::CROSS_TENANT,
            ),
            // A connection to web's exposed endpoint, opened from another tenant: its
            // replies leave through the tracker, not the short way.
            out(
                "a SYN from another tenant to the exposed endpoint",
                "d-aw1",
                frame::ip(
                    PEER_MAC,
                    VM_MAC,
                    "10.2.1.9",
                    "10.1.1.30",
                    tcp_at(41000, 443, SYN, 1000, 0),
                ),
                verdict::PASS,
            )
            .from("d-ga"),
            row(
                "the exposed endpoint's reply",
                "d-aw1",
                ip(
                    "10.1.1.30",
                    "10.2.1.9",
                    tcp_at(443, 41000, SYN | ACK, 5000, 1001),
                ),
                verdict::PASS,
            ),
            // The same where the exposed address is the vif's home (its declared address):
            // the home tells the source's class without a lookup, exposed.
            out(
                "a SYN from another tenant to d-aw2's exposed address",
                "d-aw2",
                frame::ip(
                    PEER_MAC,
                    VM_MAC,
                    "10.2.1.9",
                    "10.1.1.20",
                    tcp_at(41001, 443, SYN, 1000, 0),
                ),
                verdict::PASS,
            )
            .from("d-ga"),
            row(
                "d-aw2's reply",
                "d-aw2",
                ip(
                    "10.1.1.20",
                    "10.2.1.9",
                    tcp_at(443, 41001, SYN | ACK, 5000, 1001),
                ),
                verdict::PASS,
            ),
            // The source guard first.
            row(
                "a source of another segment",
                "d-aw1",
                syn("10.1.2.5", "10.2.1.9", 80),
                verdict::SPOOFED_IP,
            ),
            row(
                "a source another vif declared",
                "d-aw1",
                syn("10.1.1.20", "10.2.1.9", 80),
                verdict::SPOOFED_IP,
            ),
            row(
                "an address of its segment it did not declare",
                "d-aw2",
                syn("10.1.1.21", "10.2.1.9", 80),
                verdict::SPOOFED_IP,
            ),
            row(
                "the unspecified source",
                "d-aw1",
                syn("0.0.0.0", "10.2.1.9", 80),
                verdict::SPOOFED_IP,
            ),
            row(
                "a DHCP server's message",
                "d-aw1",
                dgram(WEB, "10.2.1.9", 67, 68),
                verdict::DHCP_GUARD,
            ),
            row(
                "to a DHCP client port",
                "d-aw1",
                dgram(WEB, "10.2.1.9", 5000, 68),
                verdict::DHCP_GUARD,
            ),
            // Management, loopback, the host's gateways, multicast.
            row(
                "management",
                "d-aw1",
                syn(WEB, "192.168.100.1", 22),
                verdict::MANAGEMENT,
            ),
            row(
                "loopback",
                "d-aw1",
                syn(WEB, "127.0.0.1", 22),
                verdict::MANAGEMENT,
            ),
            row(
                "loopback, udp",
                "d-aw1",
                dgram(WEB, "127.0.0.9", 5000, 53),
                verdict::MANAGEMENT,
            ),
            row(
                "the service a management prefix protects",
                "d-aw1",
                syn(WEB, "192.168.101.5", 22),
                verdict::MANAGEMENT,
            ),
            row(
                "another port at that prefix",
                "d-aw1",
                syn(WEB, "192.168.101.5", 80),
                verdict::PASS,
            ),
            row(
                "another protocol to that port",
                "d-aw1",
                dgram(WEB, "192.168.101.5", 5000, 22),
                verdict::PASS,
            ),
            row(
                "management from an audited segment (not auditable)",
                "d-ab",
                syn("10.1.3.2", "192.168.100.1", 22),
                verdict::MANAGEMENT,
            ),
            row(
                "management, a source of another segment",
                "d-aw1",
                syn("10.1.2.5", "192.168.100.1", 22),
                verdict::SPOOFED_IP,
            ),
            row(
                "a gateway's service",
                "d-aw1",
                dgram(WEB, "10.1.1.1", 5000, 53),
                verdict::PASS,
            ),
            row(
                "a gateway, another service",
                "d-aw1",
                syn(WEB, "10.1.1.1", 22),
                verdict::MANAGEMENT,
            ),
            row(
                "outside every segment",
                "d-aw1",
                syn(WEB, "192.0.2.1", 80),
                verdict::PASS,
            ),
            row(
                "within the segment",
                "d-aw1",
                syn(WEB, "10.1.1.3", 80),
                verdict::PASS,
            ),
            // Audit mode counts and passes.
            row(
                "from an audited segment",
                "d-ab",
                syn("10.1.3.2", "10.2.1.9", 80),
                verdict::CROSS_TENANT,
            )
            .audited(),
            // Headers the short way leaves to the parser.
            row(
                "an IP option",
                "d-aw1",
                with_ihl(&syn(WEB, "10.2.1.9", 80), 6),
                verdict::IP_OPTIONS,
            ),
            row(
                "a first fragment",
                "d-aw1",
                with_fragment_word(&syn(WEB, "10.2.1.9", 80), 0x2000),
                verdict::CROSS_TENANT,
            ),
            row(
                "a later fragment",
                "d-aw1",
                with_fragment_word(&dgram(WEB, "10.2.1.9", 5000, 53), 0x0010),
                verdict::FRAGMENT,
            ),
            row(
                "a later fragment, far in",
                "d-aw1",
                with_fragment_word(&dgram(WEB, "10.2.1.9", 5000, 53), 0x0100),
                verdict::FRAGMENT,
            ),
            row(
                "longer than the frame",
                "d-aw1",
                with_total_length(&syn(WEB, "10.2.1.9", 80), 200),
                verdict::MALFORMED,
            ),
            row(
                "a TCP header cut short",
                "d-aw1",
                truncated(&syn(WEB, "10.2.1.9", 80), 14 + 20 + 12),
                verdict::MALFORMED,
            ),
            row(
                "tagged",
                "d-aw1",
                tagged(&syn(WEB, "10.2.1.9", 80), 0x8100, 7),
                verdict::VLAN,
            ),
        ];
        lab.check_all_both_ingresses(&rows);
    });
}

#[test]
fn declared_macs_on_the_short_way() {
    in_private_netns(|| {
        let mut lab = Lab::new(IDENTITY_POLICY, IDENTITY_LINKS);
        let rows = vec![
            row(
                "its declared MAC",
                "d-aw1",
                syn(WEB, "10.2.1.9", 80),
                verdict::CROSS_TENANT,
            ),
            row(
                "its declared MAC and address",
                "d-aw2",
                aw2_syn("10.1.1.20", "10.2.1.9"),
                verdict::CROSS_TENANT,
            ),
            row(
                "a MAC not its own",
                "d-aw2",
                frame::ip(
                    VM_MAC,
                    PEER_MAC,
                    "10.1.1.20",
                    "10.2.1.9",
                    tcp(40000, 80, SYN),
                ),
                verdict::SPOOFED_MAC,
            ),
            row(
                "another vif's declared MAC",
                "d-aw1",
                frame::ip(AW2_MAC, PEER_MAC, WEB, "10.2.1.9", tcp(40000, 80, SYN)),
                verdict::SPOOFED_MAC,
            ),
            row(
                "no MAC declared, another vif's",
                "d-ad",
                frame::ip(
                    AW2_MAC,
                    PEER_MAC,
                    "10.1.1.5",
                    "10.2.1.9",
                    tcp(40000, 80, SYN),
                ),
                verdict::SPOOFED_MAC,
            ),
            row(
                "no MAC declared, one no vif declared",
                "d-ad",
                frame::ip(
                    [0x02, 0, 0, 0, 0, 9],
                    PEER_MAC,
                    "10.1.1.5",
                    "10.2.1.9",
                    tcp(40000, 80, SYN),
                ),
                verdict::CROSS_TENANT,
            ),
        ];
        lab.check_all_both_ingresses(&rows);
    });
}
