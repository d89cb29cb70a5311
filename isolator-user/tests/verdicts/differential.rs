//! The kernel held to the reference model (`isolator::model`): random policies × random
//! and edge-case frames, each frame run through the loaded programs (BPF_PROG_TEST_RUN)
//! and through the model; any disagreement fails with the minimal policy and frame
//! proptest shrinks it to.
//!
//! One dataplane is loaded once, in a private namespace with a fixed set of links; each
//! proptest case is one policy (applied through the normal swap) and a batch of frames.
//! The number of frames comes from `ISOLATOR_MODEL_CASES` (default 10 000; `cargo xtask
//! fuzz` runs 1 000 000), the seed from `ISOLATOR_MODEL_SEED` (default: a fixed one;
//! `cargo xtask fuzz` draws a fresh one; printed so that a failure can be replayed).
//!
//! The model is stateless, so the generator leaves out what needs state: later fragments
//! and ICMP errors. Every frame the kernel passes may have opened a tracked connection;
//! those are forgotten before the next frame, so each frame is judged afresh.
//!
//! Disagreements found so far are the fixed rows of [`fixed_rows`] at the end.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Instant;

use isolator::compile::{HostView, Link, Plan};
use isolator::dataplane::{Dataplane, TC_DROP, TC_PASS};
use isolator::model::{self, Direction, Judgement, Verdict};
use isolator::policy::{self, Policy};
use isolator_common::{CounterKey, direction};
use isolator_tests::frame::{self, L4, Mac};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use crate::fixture::{XDP_DROP, XDP_PASS, in_private_netns, veths};

// ------------------------------------------------------------------------- the links

/// The candidate vifs; a policy assigns each to a segment or to none.
const VIFS: [&str; 6] = ["d-v0", "d-v1", "d-v2", "d-v3", "d-v4", "d-v5"];
/// A link `vif_names` may claim while no segment does (quarantined).
const QUARANTINE: &str = "d-q0";
/// A link no policy names: frames from outside enter through it.
const UPLINK: &str = "x-uplink";
/// A link segments may trust as their uplink.
const TRUNK: &str = "x-trunk";
/// An interface some policies declare an identity for, with no link on the host.
const GHOST: &str = "d-gone";

/// What [`Bench::kernel`] says of a frame the kernel refuses to test-run.
const UNRUNNABLE: &str = "refused by BPF_PROG_TEST_RUN";

/// Frames per policy (per proptest case).
const FRAMES_PER_POLICY: usize = 200;

/// Segments of a policy: at most 3 tenants × 3.
const MAX_SEGMENTS: usize = 9;

// ------------------------------------------------------------------- the policy spec

#[derive(Clone, Debug)]
struct ServiceSpec {
    /// 0 tcp, 1 udp, 2 icmp, 3 any.
    protocol: u8,
    /// An index into [`PORTS`] and whether it starts a range of 10.
    ports: Option<(usize, bool)>,
}

const PORTS: [u16; 8] = [22, 53, 67, 80, 443, 547, 5432, 8080];

impl ServiceSpec {
    fn yaml(&self) -> String {
        let protocol = ["tcp", "udp", "icmp", "any"][usize::from(self.protocol)];
        match self.ports {
            Some((i, range)) if self.protocol < 2 => {
                let p = PORTS[i];
                if range {
                    format!("{{protocol: {protocol}, ports: \"{p}-{}\"}}", p + 10)
                } else {
                    format!("{{protocol: {protocol}, ports: {p}}}")
                }
            }
            _ => format!("{{protocol: {protocol}}}"),
        }
    }
}

fn service() -> impl Strategy<Value = ServiceSpec> {
    (
        0u8..4,
        proptest::option::of((0..PORTS.len(), proptest::bool::weighted(0.2))),
    )
        .prop_map(|(protocol, ports)| ServiceSpec { protocol, ports })
}

#[derive(Clone, Debug)]
struct SegmentSpec {
    /// 1 IPv4, 2 IPv6, 3 both.
    families: u8,
    /// `None`: the top-level mode.
    audit: Option<bool>,
    egress_deny: bool,
    allow_ra: bool,
    allow_dhcp: bool,
    /// (host index into [`HOSTS`] or a /30, IPv6, service).
    expose: Vec<(usize, bool, bool, ServiceSpec)>,
    /// (0 .1, 1 ::1 in the segment, 2 fe80::1; services).
    gateways: Vec<(u8, Vec<ServiceSpec>)>,
    uplink: bool,
}

/// Host parts of segment addresses: 10.G.0.H and fd00:G::H (hex digits as written).
const HOSTS: [u8; 6] = [10, 11, 12, 13, 1, 200];

fn segment() -> impl Strategy<Value = SegmentSpec> {
    (
        1u8..4,
        proptest::option::of(proptest::bool::weighted(0.3)),
        proptest::bool::weighted(0.3),
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.2),
        prop::collection::vec(
            (
                0..4usize,
                any::<bool>(),
                proptest::bool::weighted(0.2),
                service(),
            ),
            0..3,
        ),
        prop::collection::vec((0u8..3, prop::collection::vec(service(), 0..2)), 0..2),
        proptest::bool::weighted(0.2),
    )
        .prop_map(
            |(families, audit, egress_deny, allow_ra, allow_dhcp, expose, gateways, uplink)| {
                SegmentSpec {
                    families,
                    audit,
                    egress_deny,
                    allow_ra,
                    allow_dhcp,
                    expose,
                    gateways,
                    uplink,
                }
            },
        )
}

#[derive(Clone, Debug)]
struct InterfaceSpec {
    /// The segment (modulo the number of segments), or none.
    segment: Option<usize>,
    /// Written as a pattern (`d-v3*`) instead of its name; no identity then.
    pattern: bool,
    mac: bool,
    /// Declared addresses: bit 0 IPv4, bit 1 IPv6, bit 2 link-local.
    addresses: u8,
    /// 0 none, 1 [100], 2 [100, 200].
    vlans: u8,
}

fn interface() -> impl Strategy<Value = InterfaceSpec> {
    (
        proptest::option::weighted(0.85, 0..MAX_SEGMENTS),
        proptest::bool::weighted(0.15),
        proptest::bool::weighted(0.4),
        prop_oneof![3 => Just(0u8), 2 => 1u8..8],
        prop_oneof![4 => Just(0u8), 1 => 1u8..3],
    )
        .prop_map(|(segment, pattern, mac, addresses, vlans)| InterfaceSpec {
            segment,
            pattern,
            mac,
            addresses,
            vlans,
        })
}

/// A random policy, as data; [`PolicySpec::yaml`] writes it.
#[derive(Clone, Debug)]
struct PolicySpec {
    /// Segments per tenant (1..=3 tenants, 1..=3 segments).
    tenants: Vec<Vec<SegmentSpec>>,
    audit: bool,
    /// (index into [`MANAGEMENT`], services; empty: everything).
    management: Vec<(usize, Vec<ServiceSpec>)>,
    vif_names: bool,
    interfaces: Vec<InterfaceSpec>,
    /// The segment declaring an identity for [`GHOST`].
    ghost: Option<usize>,
    /// (from, to, service): global segment indexes, modulo their number.
    flows: Vec<(usize, usize, ServiceSpec)>,
    /// Bits: which of [`HOST_ADDRESSES`] the host has.
    host_addresses: u8,
}

const MANAGEMENT: [&str; 4] = [
    "192.168.100.0/24",
    "172.16.0.10/32",
    "fd00:ff::/64",
    "172.16.0.0/16",
];
/// Addresses the host may have (besides the segments' gateways, which it may have too).
const HOST_ADDRESSES: [&str; 5] = [
    "192.0.2.1",
    "fe80::1",
    "2001:db8::1",
    "10.1.0.1",
    "fd00:1::1",
];

fn policy_spec() -> impl Strategy<Value = PolicySpec> {
    (
        prop::collection::vec(prop::collection::vec(segment(), 1..4), 1..4),
        proptest::bool::weighted(0.1),
        prop::collection::vec(
            (0..MANAGEMENT.len(), prop::collection::vec(service(), 0..2)),
            0..3,
        ),
        any::<bool>(),
        prop::collection::vec(interface(), VIFS.len()),
        proptest::option::weighted(0.2, 0..MAX_SEGMENTS),
        prop::collection::vec((0..MAX_SEGMENTS, 0..MAX_SEGMENTS, service()), 0..4),
        any::<u8>(),
    )
        .prop_map(
            |(tenants, audit, management, vif_names, interfaces, ghost, flows, host_addresses)| {
                PolicySpec {
                    tenants,
                    audit,
                    management,
                    vif_names,
                    interfaces,
                    ghost,
                    flows,
                    host_addresses,
                }
            },
        )
}

/// Global segment `g` (0-based): tenant `t{i}`, name `s{j}`, prefixes 10.{g+1}.0.0/24 and
/// fd00:{g+1}::/64.
struct SegmentRef {
    tenant: usize,
    name: String,
    v4: bool,
    v6: bool,
}

impl PolicySpec {
    fn segments(&self) -> Vec<SegmentRef> {
        let mut out = Vec::new();
        for (t, segments) in self.tenants.iter().enumerate() {
            for (j, s) in segments.iter().enumerate() {
                out.push(SegmentRef {
                    tenant: t,
                    name: format!("s{j}"),
                    v4: s.families & 1 != 0,
                    v6: s.families & 2 != 0,
                });
            }
        }
        out
    }

    /// The segment of interface `i`, if it has one.
    fn segment_of_vif(&self, i: usize) -> Option<usize> {
        let n = self.segments().len();
        self.interfaces[i].segment.map(|s| s % n)
    }

    /// The MAC a VM behind vif `i` declares (or would).
    fn mac_of(i: usize) -> Mac {
        [0x02, 0, 0, 0, i as u8 + 1, 1]
    }

    fn yaml(&self) -> String {
        let segs = self.segments();
        let n = segs.len();
        let mut y = String::from("version: 1\n");
        if self.audit {
            y.push_str("mode: audit\n");
        }
        let mut seen = Vec::new();
        let mut management = String::new();
        for (i, services) in &self.management {
            if seen.contains(i) {
                continue;
            }
            seen.push(*i);
            let _ = writeln!(management, "  - prefix: \"{}\"", MANAGEMENT[*i]);
            let mut listed: Vec<String> = services.iter().map(ServiceSpec::yaml).collect();
            listed.dedup();
            listed.sort();
            listed.dedup();
            if !listed.is_empty() {
                let _ = writeln!(management, "    services: [{}]", listed.join(", "));
            }
        }
        if !management.is_empty() {
            y.push_str("management:\n");
            y.push_str(&management);
        }
        if self.vif_names {
            y.push_str("vif_names: [\"d-q*\"]\n");
        }
        y.push_str("tenants:\n");
        let mut g = 0;
        for (t, segments) in self.tenants.iter().enumerate() {
            let _ = writeln!(y, "  - name: t{t}\n    segments:");
            for (j, s) in segments.iter().enumerate() {
                let n1 = g + 1;
                let _ = writeln!(y, "      - name: s{j}");
                if let Some(audit) = s.audit {
                    let _ = writeln!(
                        y,
                        "        mode: {}",
                        if audit { "audit" } else { "enforce" }
                    );
                }
                if s.egress_deny {
                    y.push_str("        egress: deny\n");
                }
                if s.allow_ra {
                    y.push_str("        allow_router_advertisements: true\n");
                }
                if s.allow_dhcp {
                    y.push_str("        allow_dhcp_server: true\n");
                }
                let mut prefixes = Vec::new();
                if segs[g].v4 {
                    prefixes.push(format!("10.{n1}.0.0/24"));
                }
                if segs[g].v6 {
                    prefixes.push(format!("\"fd00:{n1}::/64\""));
                }
                let _ = writeln!(y, "        prefixes: [{}]", prefixes.join(", "));
                let mut interfaces = Vec::new();
                for (i, spec) in self.interfaces.iter().enumerate() {
                    if self.segment_of_vif(i) != Some(g) {
                        continue;
                    }
                    if spec.pattern {
                        interfaces.push(format!("{{name: \"{}*\"{}}}", VIFS[i], vlans(spec.vlans)));
                        continue;
                    }
                    let mut entry = format!("{{name: {}", VIFS[i]);
                    if spec.mac {
                        let m = Self::mac_of(i);
                        let _ = write!(entry, ", mac: \"{}\"", frame::fmt_mac(&m));
                    }
                    let mut addresses = Vec::new();
                    let host = 20 + i;
                    if spec.addresses & 1 != 0 && segs[g].v4 {
                        addresses.push(format!("\"10.{n1}.0.{host}\""));
                    }
                    if spec.addresses & 2 != 0 && segs[g].v6 {
                        addresses.push(format!("\"fd00:{n1}::{host}\""));
                    }
                    if spec.addresses & 4 != 0 {
                        addresses.push(format!("\"fe80::{host}\""));
                    }
                    if !addresses.is_empty() {
                        let _ = write!(entry, ", addresses: [{}]", addresses.join(", "));
                    }
                    entry.push_str(&vlans(spec.vlans));
                    entry.push('}');
                    interfaces.push(entry);
                }
                if self.ghost.map(|s| s % n) == Some(g) && segs[g].v4 {
                    interfaces.push(format!(
                        "{{name: {GHOST}, mac: \"02:00:00:00:99:01\", addresses: [\"10.{n1}.0.99\"]}}"
                    ));
                }
                let _ = writeln!(y, "        interfaces: [{}]", interfaces.join(", "));
                let mut exposed = Vec::new();
                for (h, prefix, v6, svc) in &s.expose {
                    let address = match (v6, prefix) {
                        (false, _) if !segs[g].v4 => continue,
                        (true, _) if !segs[g].v6 => continue,
                        (false, false) => format!("10.{n1}.0.{}", HOSTS[*h]),
                        (false, true) => format!("10.{n1}.0.8/30"),
                        (true, false) => format!("\"fd00:{n1}::{}\"", HOSTS[*h]),
                        (true, true) => format!("\"fd00:{n1}::8/126\""),
                    };
                    let entry = format!("{{address: {address}, {}", &svc.yaml()[1..]);
                    if !exposed.contains(&entry) {
                        exposed.push(entry);
                    }
                }
                if !exposed.is_empty() {
                    let _ = writeln!(y, "        expose: [{}]", exposed.join(", "));
                }
                let mut gateways = Vec::new();
                let mut addresses = Vec::new();
                for (kind, services) in &s.gateways {
                    let address = match kind {
                        0 if segs[g].v4 => format!("10.{n1}.0.1"),
                        1 if segs[g].v6 => format!("\"fd00:{n1}::1\""),
                        2 => "\"fe80::1\"".to_string(),
                        _ => continue,
                    };
                    if addresses.contains(&address) {
                        continue;
                    }
                    addresses.push(address.clone());
                    let mut listed: Vec<String> = services.iter().map(ServiceSpec::yaml).collect();
                    listed.sort();
                    listed.dedup();
                    gateways.push(format!(
                        "{{address: {address}, services: [{}]}}",
                        listed.join(", ")
                    ));
                }
                if !gateways.is_empty() {
                    let _ = writeln!(y, "        gateways: [{}]", gateways.join(", "));
                }
                if s.uplink {
                    let _ = writeln!(y, "        uplinks: [{TRUNK}]");
                }
                g += 1;
            }
            let mut flows = Vec::new();
            for (from, to, svc) in &self.flows {
                let (from, to) = (from % n, to % n);
                if segs[from].tenant != t || from == to {
                    continue;
                }
                let entry = format!(
                    "{{from: {}, to: t{}/{}, {}",
                    segs[from].name,
                    segs[to].tenant,
                    segs[to].name,
                    &svc.yaml()[1..]
                );
                if !flows.contains(&entry) {
                    flows.push(entry);
                }
            }
            if !flows.is_empty() {
                let _ = writeln!(y, "    flows: [{}]", flows.join(", "));
            }
        }
        y
    }

    fn host_addresses(&self) -> Vec<IpAddr> {
        HOST_ADDRESSES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.host_addresses & (1 << i) != 0)
            .map(|(_, a)| a.parse().expect("address"))
            .collect()
    }
}

fn vlans(v: u8) -> String {
    match v {
        1 => ", vlans: [100]".into(),
        2 => ", vlans: [100, 200]".into(),
        _ => String::new(),
    }
}

// -------------------------------------------------------------------- the frame spec

/// An address, resolved against the policy and the vif when the frame is built.
#[derive(Clone, Copy, Debug)]
enum AddrSpec {
    /// The vif's own: a declared address, else 10.G.0.(20+i) in its segment.
    Me,
    /// Another vif's own address (by index).
    OtherVif(usize),
    /// 10.G.0.H / fd00:G::H of segment `g` (modulo), `HOSTS[h]`.
    Segment(usize, usize),
    /// A gateway of the vif's segment (.1, fd00:G::1 or fe80::1).
    Gateway(bool),
    Management(usize),
    Host(usize),
    Outside,
    Loopback,
    /// 255.255.255.255 / ff02::1.
    Broadcast,
    /// 224.0.0.251 / ff02::fb.
    LinkMulticast,
    /// 239.1.1.1 / ff05::1.
    Multicast,
    /// 255.255.255.255 / ff02::1:2.
    DhcpServers,
    /// 224.0.0.22 / ff02::1:ff00:14 (solicited-node of ::20).
    SolicitedNode,
    /// 169.254.1.1 / fe80::(20+i).
    LinkLocal(usize),
    Unspecified,
    /// The address of [`GHOST`].
    Ghost,
}

fn addr_spec() -> impl Strategy<Value = AddrSpec> {
    prop_oneof![
        6 => Just(AddrSpec::Me),
        3 => (0..VIFS.len()).prop_map(AddrSpec::OtherVif),
        5 => (0..MAX_SEGMENTS, 0..HOSTS.len()).prop_map(|(g, h)| AddrSpec::Segment(g, h)),
        2 => any::<bool>().prop_map(AddrSpec::Gateway),
        2 => (0..MANAGEMENT.len()).prop_map(AddrSpec::Management),
        2 => (0..HOST_ADDRESSES.len()).prop_map(AddrSpec::Host),
        3 => Just(AddrSpec::Outside),
        1 => Just(AddrSpec::Loopback),
        1 => Just(AddrSpec::Broadcast),
        1 => Just(AddrSpec::LinkMulticast),
        1 => Just(AddrSpec::Multicast),
        1 => Just(AddrSpec::DhcpServers),
        1 => Just(AddrSpec::SolicitedNode),
        2 => (0..VIFS.len()).prop_map(AddrSpec::LinkLocal),
        1 => Just(AddrSpec::Unspecified),
        1 => Just(AddrSpec::Ghost),
    ]
}

#[derive(Clone, Copy, Debug)]
enum MacSpec {
    Own,
    OtherVif(usize),
    Router,
    Broadcast,
    Multicast,
    Ghost,
}

fn mac_spec() -> impl Strategy<Value = MacSpec> {
    prop_oneof![
        12 => Just(MacSpec::Own),
        2 => (0..VIFS.len()).prop_map(MacSpec::OtherVif),
        2 => Just(MacSpec::Router),
        1 => Just(MacSpec::Broadcast),
        1 => Just(MacSpec::Multicast),
        1 => Just(MacSpec::Ghost),
    ]
}

#[derive(Clone, Debug)]
enum Kind {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    EchoRequest,
    EchoReply,
    /// Another ICMP/ICMPv6 type (no errors: the model does not read quotes).
    Icmp(u8),
    /// A neighbour solicitation (or advertisement): target, options (type, MAC), hop
    /// limit 255 or 64.
    Nd {
        advertisement: bool,
        target: AddrSpec,
        options: Vec<(u8, MacSpec)>,
        hop255: bool,
    },
    Arp {
        op: u16,
        sha: MacSpec,
        spa: AddrSpec,
        tpa: AddrSpec,
    },
    Igmp(u8),
    /// GRE: an IP protocol the parser does not look into.
    Gre,
    /// LLDP.
    UnknownEthertype,
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => (0..PORTS.len()).prop_map(|i| PORTS[i]),
        1 => Just(68u16),
        1 => Just(546u16),
        1 => Just(5353u16),
        1 => 1u16..=u16::MAX,
        1 => (0..PORTS.len(), 1u16..11).prop_map(|(i, d)| PORTS[i] + d),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => (port(), port(), prop_oneof![Just(frame::SYN), Just(frame::ACK), Just(frame::SYN_ACK), Just(frame::RST), Just(frame::FIN | frame::ACK)])
            .prop_map(|(sport, dport, flags)| Kind::Tcp { sport, dport, flags }),
        6 => (port(), port()).prop_map(|(sport, dport)| Kind::Udp { sport, dport }),
        2 => Just(Kind::EchoRequest),
        1 => Just(Kind::EchoReply),
        2 => prop_oneof![Just(5u8), Just(9), Just(13), Just(130), Just(131), Just(133), Just(134), Just(137), Just(143)].prop_map(Kind::Icmp),
        4 => (any::<bool>(), addr_spec(), prop::collection::vec((1u8..3, mac_spec()), 0..3), proptest::bool::weighted(0.85), proptest::bool::weighted(0.05))
            .prop_map(|(advertisement, target, mut options, hop255, many)| {
                if many {
                    options = vec![(1, MacSpec::Own); 9];
                }
                Kind::Nd { advertisement, target, options, hop255 }
            }),
        4 => (1u16..3, mac_spec(), addr_spec(), addr_spec()).prop_map(|(op, sha, spa, tpa)| Kind::Arp { op, sha, spa, tpa }),
        1 => prop_oneof![Just(0x11u8), Just(0x16), Just(0x17)].prop_map(Kind::Igmp),
        1 => Just(Kind::Gre),
        1 => Just(Kind::UnknownEthertype),
    ]
}

/// Where a frame delivered to a VM entered the host.
#[derive(Clone, Copy, Debug)]
enum EnteredSpec {
    Vif(usize),
    Uplink,
    Trunk,
    Host,
    Quarantined,
    /// `lo`: a link the plan does not know.
    Unclassified,
}

fn entered() -> impl Strategy<Value = EnteredSpec> {
    prop_oneof![
        6 => (0..VIFS.len()).prop_map(EnteredSpec::Vif),
        4 => Just(EnteredSpec::Uplink),
        2 => Just(EnteredSpec::Trunk),
        2 => Just(EnteredSpec::Host),
        1 => Just(EnteredSpec::Quarantined),
        1 => Just(EnteredSpec::Unclassified),
    ]
}

#[derive(Clone, Copy, Debug)]
enum Mutation {
    None,
    /// Cut to 15 bytes + this share (in 256ths) of the rest (BPF_PROG_TEST_RUN on TC
    /// refuses a frame of only an Ethernet header).
    Truncate(u8),
    /// The IP version field set to the other family's.
    WrongVersion,
    /// ARP hardware type 6.
    ArpHtype,
    /// A VLAN tag: TPID 0x8100 (or 0x88a8), id 0, 100, 200 or 300; stacked twice.
    Tag {
        ad: bool,
        vid: u16,
        stacked: bool,
    },
    /// IPv4 with a router alert option, or any other option.
    V4Option {
        router_alert: bool,
    },
    /// IPv6 with this many hop-by-hop / destination options headers.
    V6Extensions(u8),
    /// IPv4: the first fragment of a datagram (more fragments, offset 0), its transport
    /// header cut to this many bytes (whole if longer). Later fragments are left out: the
    /// model keeps no fragment state.
    FirstFragment(u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        30 => Just(Mutation::None),
        2 => any::<u8>().prop_map(Mutation::Truncate),
        1 => Just(Mutation::WrongVersion),
        1 => Just(Mutation::ArpHtype),
        4 => (proptest::bool::weighted(0.2), prop_oneof![Just(0u16), Just(100), Just(200), Just(300)], proptest::bool::weighted(0.1))
            .prop_map(|(ad, vid, stacked)| Mutation::Tag { ad, vid, stacked }),
        1 => any::<bool>().prop_map(|router_alert| Mutation::V4Option { router_alert }),
        1 => (1u8..6).prop_map(Mutation::V6Extensions),
        1 => prop_oneof![Just(255u8), 0u8..24].prop_map(Mutation::FirstFragment),
    ]
}

#[derive(Clone, Debug)]
struct FrameSpec {
    /// Index into [`VIFS`]; 6 = [`QUARANTINE`].
    vif: usize,
    /// `None`: ingress.
    entered: Option<EnteredSpec>,
    v6: bool,
    src_mac: MacSpec,
    src: AddrSpec,
    dst: AddrSpec,
    kind: Kind,
    mutation: Mutation,
}

fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    (
        prop_oneof![12 => 0..VIFS.len(), 1 => Just(VIFS.len())],
        proptest::option::of(entered()),
        any::<bool>(),
        mac_spec(),
        addr_spec(),
        addr_spec(),
        kind(),
        mutation(),
    )
        .prop_map(
            |(vif, entered, v6, src_mac, src, dst, kind, mutation)| FrameSpec {
                vif,
                entered,
                v6,
                src_mac,
                src,
                dst,
                kind,
                mutation,
            },
        )
}

/// What the run needs to turn specs into frames and ifindexes.
struct Context<'a> {
    spec: &'a PolicySpec,
    links: &'a [Link],
}

impl Context<'_> {
    fn ifindex(&self, name: &str) -> u32 {
        self.links
            .iter()
            .find(|l| l.name == name)
            .map_or(1, |l| l.ifindex)
    }

    /// The segment number (1-based, as in the addresses) of vif `i`, else 1.
    fn n1(&self, i: usize) -> usize {
        self.spec.segment_of_vif(i).map_or(1, |g| g + 1)
    }

    fn own(&self, i: usize, v6: bool) -> IpAddr {
        let n1 = self.n1(i);
        let host = 20 + i;
        let a = if v6 {
            format!("fd00:{n1}::{host}")
        } else {
            format!("10.{n1}.0.{host}")
        };
        a.parse().expect("address")
    }

    fn addr(&self, a: AddrSpec, vif: usize, v6: bool) -> IpAddr {
        let vif = vif.min(VIFS.len() - 1);
        let n = self.spec.segments().len();
        let text = match (a, v6) {
            (AddrSpec::Me, _) => return self.own(vif, v6),
            (AddrSpec::OtherVif(j), _) => return self.own(j, v6),
            (AddrSpec::Segment(g, h), false) => format!("10.{}.0.{}", g % n + 1, HOSTS[h]),
            (AddrSpec::Segment(g, h), true) => format!("fd00:{}::{}", g % n + 1, HOSTS[h]),
            (AddrSpec::Gateway(_), false) => format!("10.{}.0.1", self.n1(vif)),
            (AddrSpec::Gateway(false), true) => format!("fd00:{}::1", self.n1(vif)),
            (AddrSpec::Gateway(true), true) => "fe80::1".into(),
            (AddrSpec::Management(i), false) => [
                "192.168.100.7",
                "172.16.0.10",
                "192.168.100.1",
                "172.16.9.9",
            ][i]
                .into(),
            (AddrSpec::Management(i), true) => {
                ["fd00:ff::7", "fd00:ff::1", "fd00:ff::10", "fd00:ff::a"][i].into()
            }
            (AddrSpec::Host(i), _) => {
                let a: IpAddr = HOST_ADDRESSES[i].parse().expect("address");
                if a.is_ipv6() == v6 {
                    return a;
                }
                if v6 {
                    "2001:db8::1".into()
                } else {
                    "192.0.2.1".into()
                }
            }
            (AddrSpec::Outside, false) => "198.51.100.7".into(),
            (AddrSpec::Outside, true) => "2001:db8:1::7".into(),
            (AddrSpec::Loopback, false) => "127.0.0.1".into(),
            (AddrSpec::Loopback, true) => "::1".into(),
            (AddrSpec::Broadcast, false) | (AddrSpec::DhcpServers, false) => {
                "255.255.255.255".into()
            }
            (AddrSpec::Broadcast, true) => "ff02::1".into(),
            (AddrSpec::DhcpServers, true) => "ff02::1:2".into(),
            (AddrSpec::LinkMulticast, false) => "224.0.0.251".into(),
            (AddrSpec::LinkMulticast, true) => "ff02::fb".into(),
            (AddrSpec::Multicast, false) => "239.1.1.1".into(),
            (AddrSpec::Multicast, true) => "ff05::1".into(),
            (AddrSpec::SolicitedNode, false) => "224.0.0.22".into(),
            (AddrSpec::SolicitedNode, true) => "ff02::1:ff00:14".into(),
            (AddrSpec::LinkLocal(_), false) => "169.254.1.1".into(),
            (AddrSpec::LinkLocal(j), true) => format!("fe80::{}", 20 + j),
            (AddrSpec::Unspecified, false) => "0.0.0.0".into(),
            (AddrSpec::Unspecified, true) => "::".into(),
            (AddrSpec::Ghost, false) => {
                format!("10.{}.0.99", self.spec.ghost.map_or(1, |g| g % n + 1))
            }
            (AddrSpec::Ghost, true) => "fd00:1::99".into(),
        };
        text.parse().expect("address")
    }

    fn mac(&self, m: MacSpec, vif: usize) -> Mac {
        match m {
            MacSpec::Own => PolicySpec::mac_of(vif),
            MacSpec::OtherVif(j) => PolicySpec::mac_of(j),
            MacSpec::Router => [0x02, 0, 0, 0, 0, 0xee],
            MacSpec::Broadcast => frame::BROADCAST,
            MacSpec::Multicast => [0x33, 0x33, 0, 0, 0, 1],
            MacSpec::Ghost => [0x02, 0, 0, 0, 0x99, 1],
        }
    }

    /// The frame, and (vif ifindex, direction).
    fn build(&self, f: &FrameSpec) -> (Vec<u8>, u32, Direction) {
        let vif_name = VIFS.get(f.vif).copied().unwrap_or(QUARANTINE);
        // On egress the source side is the sender's (a vif's own address is the sender
        // vif's), the destination side the receiver's.
        let sender_vif = match f.entered {
            Some(EnteredSpec::Vif(j)) => j,
            _ => f.vif,
        };
        let src_mac = match f.entered {
            None => self.mac(f.src_mac, f.vif),
            Some(_) => self.mac(f.src_mac, sender_vif),
        };
        let dst_mac = match f.entered {
            None => [0x02, 0, 0, 0, 0, 0xee],
            Some(_) => PolicySpec::mac_of(f.vif.min(VIFS.len() - 1)),
        };
        let v6 = match f.kind {
            Kind::Nd { .. } => true,
            Kind::Arp { .. } | Kind::Igmp(_) => false,
            _ => f.v6,
        };
        let src = self.addr(f.src, sender_vif, v6);
        let dst = self.addr(f.dst, f.vif, v6);
        let ip = |l4: L4| frame::ip_frame(src_mac, dst_mac, src, dst, l4, &[]);
        let mut bytes = match &f.kind {
            Kind::Tcp {
                sport,
                dport,
                flags,
            } => ip(frame::tcp(*sport, *dport, *flags)),
            Kind::Udp { sport, dport } => ip(frame::udp(*sport, *dport)),
            Kind::EchoRequest => ip(frame::echo_request(7)),
            Kind::EchoReply => ip(frame::echo_reply(7)),
            Kind::Icmp(kind) => {
                let kind = match (v6, *kind) {
                    (false, k) if k >= 128 => 13,
                    (true, k) if k < 128 => 128 + 9, // 137: redirect
                    (_, k) => k,
                };
                frame::ip_frame(src_mac, dst_mac, src, dst, frame::icmp(kind), &[0; 8])
            }
            Kind::Nd {
                advertisement,
                target,
                options,
                hop255,
            } => {
                let target = self.addr(*target, f.vif, true);
                let kind = if *advertisement {
                    frame::icmp::NEIGHBOUR_ADVERTISEMENT
                } else {
                    frame::icmp::NEIGHBOUR_SOLICITATION
                };
                let options: Vec<(u8, Mac)> = options
                    .iter()
                    .map(|(t, m)| (*t, self.mac(*m, sender_vif)))
                    .collect();
                let out = frame::nd(
                    src_mac,
                    dst_mac,
                    kind,
                    &src.to_string(),
                    &dst.to_string(),
                    &target.to_string(),
                    &options,
                );
                if *hop255 {
                    out
                } else {
                    frame::with_hop_limit(&out, 64)
                }
            }
            Kind::Arp { op, sha, spa, tpa } => frame::arp(
                src_mac,
                frame::BROADCAST,
                *op,
                self.mac(*sha, sender_vif),
                &self.addr(*spa, sender_vif, false).to_string(),
                &self.addr(*tpa, f.vif, false).to_string(),
            ),
            Kind::Igmp(kind) => {
                let body = [*kind, 0, 0, 0, 224, 0, 0, 22];
                frame::ethernet(
                    src_mac,
                    dst_mac,
                    0x0800,
                    &frame::ip_packet(src, dst, 2, &body),
                )
            }
            Kind::Gre => frame::ethernet(
                src_mac,
                dst_mac,
                if v6 { 0x86dd } else { 0x0800 },
                &frame::ip_packet(src, dst, 47, &[0; 8]),
            ),
            Kind::UnknownEthertype => frame::ethernet(src_mac, dst_mac, 0x88cc, &[0; 46]),
        };
        let is_ip = matches!(u16::from_be_bytes([bytes[12], bytes[13]]), 0x0800 | 0x86dd);
        match f.mutation {
            Mutation::None => {}
            Mutation::Truncate(share) => {
                let len = 15 + (bytes.len() - 15) * usize::from(share) / 256;
                bytes = frame::truncated(&bytes, len);
            }
            Mutation::WrongVersion if is_ip => {
                let other = if bytes[12] == 0x08 { 6 } else { 4 };
                bytes = frame::with_ip_version(&bytes, other);
            }
            Mutation::ArpHtype if bytes[12..14] == [0x08, 0x06] => {
                bytes = frame::with_arp_htype(&bytes, 6);
            }
            Mutation::V4Option { router_alert } if bytes[12..14] == [0x08, 0x00] => {
                let mut packet =
                    frame::V4::new(&src.to_string(), &dst.to_string(), frame::udp(1000, 80));
                packet.payload = bytes[14 + 20..].to_vec();
                packet.protocol = bytes[14 + 9];
                packet.options = if router_alert {
                    vec![0x94, 0x04, 0, 0]
                } else {
                    vec![0x07, 0x03, 0x04, 0x00]
                };
                bytes = packet.frame(src_mac, dst_mac);
            }
            Mutation::FirstFragment(keep) if bytes[12..14] == [0x08, 0x00] => {
                let mut packet =
                    frame::V4::new(&src.to_string(), &dst.to_string(), frame::udp(1000, 80));
                let transport = &bytes[14 + 20..];
                packet.payload = transport[..transport.len().min(usize::from(keep))].to_vec();
                packet.protocol = bytes[14 + 9];
                packet.more_fragments = true;
                bytes = packet.frame(src_mac, dst_mac);
            }
            Mutation::V6Extensions(count) if bytes[12..14] == [0x86, 0xdd] => {
                if let Kind::Tcp {
                    sport,
                    dport,
                    flags,
                } = f.kind
                {
                    let exts: Vec<frame::Ext> = (0..count)
                        .map(|i| {
                            if i == 0 {
                                frame::Ext::HopByHop
                            } else {
                                frame::Ext::DestinationOptions
                            }
                        })
                        .collect();
                    bytes = frame::v6_with_extensions(
                        src_mac,
                        dst_mac,
                        &src.to_string(),
                        &dst.to_string(),
                        &exts,
                        frame::tcp(sport, dport, flags),
                    );
                }
            }
            Mutation::Tag { ad, vid, stacked } => {
                let tpid = if ad { 0x88a8 } else { 0x8100 };
                bytes = frame::tagged(&bytes, tpid, vid);
                if stacked {
                    bytes = frame::tagged(&bytes, 0x8100, vid);
                }
            }
            _ => {}
        }
        let direction = match f.entered {
            None => Direction::Ingress,
            Some(e) => Direction::Egress {
                entered: match e {
                    EnteredSpec::Vif(j) => self.ifindex(VIFS[j]),
                    EnteredSpec::Uplink => self.ifindex(UPLINK),
                    EnteredSpec::Trunk => self.ifindex(TRUNK),
                    EnteredSpec::Host => 0,
                    EnteredSpec::Quarantined => self.ifindex(QUARANTINE),
                    EnteredSpec::Unclassified => 1,
                },
            },
        };
        (bytes, self.ifindex(vif_name), direction)
    }
}

// ----------------------------------------------------------------------- the runner

/// The loaded programs and the lab's links, shared by every case.
struct Bench {
    dp: Dataplane,
    links: Vec<Link>,
}

impl Bench {
    fn new() -> Bench {
        let mut names: Vec<&str> = VIFS.to_vec();
        names.extend([QUARANTINE, UPLINK, TRUNK]);
        Bench {
            dp: Dataplane::load().expect("loading the programs"),
            links: veths(&names),
        }
    }

    fn host(&self, addresses: Vec<IpAddr>) -> HostView {
        HostView {
            links: self.links.clone(),
            addresses,
            ..HostView::default()
        }
    }

    fn apply(&mut self, policy: &Policy, host: &HostView) {
        let plan = Plan::new(policy, host).expect("plan");
        self.dp.apply(&plan).expect("applying the policy");
    }

    /// The packet counts of every counter of `vif` in direction `dir`, by (verdict,
    /// audit flag).
    fn counts(&self, vif: u32, dir: u8) -> Vec<(CounterKey, u64)> {
        let verdicts = std::iter::once(Verdict::Pass).chain(Verdict::DROPS.iter().copied());
        verdicts
            .flat_map(|v| [0, CounterKey::AUDIT].map(|flags| (v, flags)))
            .map(|(v, flags)| {
                let key = CounterKey {
                    ifindex: vif,
                    direction: dir,
                    verdict: v as u8,
                    flags,
                    _pad: 0,
                };
                (key, self.dp.counter(&key).expect("counter").packets)
            })
            .collect()
    }

    /// Runs one frame through the kernel: what it decided (from the one counter of the
    /// vif and direction that moved) and whether the action agrees with it.
    fn kernel(
        &mut self,
        vif: u32,
        direction: Direction,
        frame: &[u8],
    ) -> Result<Judgement, String> {
        let dir = match direction {
            Direction::Ingress => direction::INGRESS,
            Direction::Egress { .. } => direction::EGRESS,
        };
        let before = self.counts(vif, dir);
        let passed = match direction {
            Direction::Ingress => {
                let action = self
                    .dp
                    .test_run_ingress(vif, frame)
                    .map_err(|e| format!("test run failed: {e:?}"))?;
                if action != XDP_PASS && action != XDP_DROP {
                    return Err(format!("XDP action {action}"));
                }
                action == XDP_PASS
            }
            Direction::Egress { entered } => {
                let action = match self.dp.test_run_egress(vif, entered, frame) {
                    Ok(action) => action,
                    // BPF_PROG_TEST_RUN refuses some short frames on TC (EINVAL) that a
                    // device would deliver: such a frame cannot be compared here.
                    Err(e) if format!("{e:?}").contains("InvalidInput") => {
                        return Err(UNRUNNABLE.to_string());
                    }
                    Err(e) => return Err(format!("test run failed: {e:?}")),
                };
                if action != TC_PASS && action != TC_DROP {
                    return Err(format!("TC action {action}"));
                }
                action == TC_PASS
            }
        };
        let after = self.counts(vif, dir);
        let moved: Vec<CounterKey> = after
            .iter()
            .zip(&before)
            .filter(|((_, a), (_, b))| a != b)
            .map(|((k, _), _)| *k)
            .collect();
        let [key] = moved.as_slice() else {
            return Err(format!("{} counters moved: {moved:?}", moved.len()));
        };
        let judgement = Judgement {
            verdict: Verdict::from_code(key.verdict)
                .ok_or_else(|| format!("unknown verdict code {}", key.verdict))?,
            audited: key.flags & CounterKey::AUDIT != 0,
        };
        if judgement.passes() != passed {
            return Err(format!(
                "the action ({}) disagrees with the counter ({judgement})",
                if passed { "pass" } else { "drop" }
            ));
        }
        if passed && self.dp.tracked().map(|t| !t.is_empty()).unwrap_or(false) {
            self.dp
                .forget_connections()
                .expect("forgetting connections");
        }
        Ok(judgement)
    }
}

/// A disagreement, written for a person: the policy, the host, the frame and both sides.
#[expect(clippy::too_many_arguments, reason = "everything a report names")]
fn report(
    yaml: &str,
    host: &HostView,
    links: &[Link],
    vif: u32,
    direction: Direction,
    frame: &[u8],
    kernel: &str,
    model: Judgement,
) -> String {
    let name = |ifindex: u32| {
        links
            .iter()
            .find(|l| l.ifindex == ifindex)
            .map_or(format!("ifindex {ifindex}"), |l| l.name.clone())
    };
    let dir = match direction {
        Direction::Ingress => format!("ingress on {} (sent by its VM)", name(vif)),
        Direction::Egress { entered: 0 } => {
            format!(
                "egress on {} (delivered to its VM), from the host's own stack",
                name(vif)
            )
        }
        Direction::Egress { entered } => format!(
            "egress on {} (delivered to its VM), entered through {}",
            name(vif),
            name(entered)
        ),
    };
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "kernel and model disagree\n  kernel: {kernel}\n  model:  {model}\n  {dir}\n  frame: {}\n  hex: {hex}\n  host addresses: {:?}\n  policy:\n{}",
        frame::describe(frame),
        host.addresses,
        yaml.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    )
}

fn cases_from_env() -> usize {
    std::env::var("ISOLATOR_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// The seed: `ISOLATOR_MODEL_SEED`, else a fixed one, so that the test command (and CI)
/// judges the same frames every time; `cargo xtask fuzz` passes a fresh one.
fn seed_from_env() -> u64 {
    std::env::var("ISOLATOR_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

const DEFAULT_SEED: u64 = 20_261_202;

/// Random policies × random frames, kernel against model.
#[test]
fn differential_kernel_against_model() {
    let frames = cases_from_env();
    let seed = seed_from_env();
    // Each case has 1 to FRAMES_PER_POLICY frames (so that shrinking can drop them), on
    // average half as many.
    let policies = (2 * frames).div_ceil(FRAMES_PER_POLICY + 1).max(1);
    println!(
        "differential: about {frames} frames, {policies} policies of 1 to {FRAMES_PER_POLICY} frames, ISOLATOR_MODEL_SEED={seed}"
    );
    let started = Instant::now();
    let (ran, refused, result) = in_private_netns(move || {
        let bench = RefCell::new(Bench::new());
        let ran = RefCell::new(0usize);
        let refused = RefCell::new(0usize);
        let config = Config {
            cases: policies as u32,
            failure_persistence: None,
            max_shrink_iters: 2048,
            ..Config::default()
        };
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let strategy = (
            policy_spec(),
            prop::collection::vec(frame_spec(), 1..=FRAMES_PER_POLICY),
        );
        let result = runner.run(&strategy, |(spec, frames)| {
            let mut bench = bench.borrow_mut();
            let yaml = spec.yaml();
            let policy = policy::parse(&yaml, "differential.yaml")
                .unwrap_or_else(|e| panic!("the generator wrote an invalid policy:\n{yaml}\n{e}"));
            let host = bench.host(spec.host_addresses());
            bench.apply(&policy, &host);
            let links = bench.links.clone();
            let context = Context {
                spec: &spec,
                links: &links,
            };
            for f in &frames {
                let (bytes, vif, direction) = context.build(f);
                let model = model::verdict(&policy, &host, vif, direction, &bytes);
                let kernel = bench.kernel(vif, direction, &bytes);
                if kernel.as_ref().err().map(String::as_str) == Some(UNRUNNABLE) {
                    *refused.borrow_mut() += 1;
                    continue;
                }
                *ran.borrow_mut() += 1;
                match kernel {
                    Ok(k) if k == model => {}
                    Ok(k) => {
                        return Err(TestCaseError::fail(report(
                            &yaml,
                            &host,
                            &links,
                            vif,
                            direction,
                            &bytes,
                            &k.to_string(),
                            model,
                        )));
                    }
                    Err(e) => {
                        return Err(TestCaseError::fail(report(
                            &yaml, &host, &links, vif, direction, &bytes, &e, model,
                        )));
                    }
                }
            }
            Ok(())
        });
        (
            ran.into_inner(),
            refused.into_inner(),
            result.map_err(|e| e.to_string()),
        )
    });
    let elapsed = started.elapsed();
    println!(
        "differential: {ran} frames judged by kernel and model in {:.1} s ({:.0} µs each, shrinking included); {refused} short frames the kernel would not test-run on TC",
        elapsed.as_secs_f64(),
        elapsed.as_micros() as f64 / ran.max(1) as f64
    );
    if let Err(e) = result {
        panic!("seed {seed}: {e}");
    }
}

// ------------------------------------------------------------ fixed disagreement rows

/// One disagreement found by the differential test, kept as a fixed row: the policy,
/// the host's addresses, the frame, and the verdict `docs/design.md` asks for.
struct Fixed {
    name: &'static str,
    policy: &'static str,
    host_addresses: &'static [&'static str],
    /// The vif (one of [`VIFS`]) and, on egress, the link the frame entered through
    /// (`""` for the host's own stack).
    vif: &'static str,
    entered: Option<&'static str>,
    frame: fn() -> Vec<u8>,
    /// What the documents (and the model) say.
    expected: &'static str,
}

/// A policy of one segment (10.1.0.0/24, fd00:1::/64) whose vif `d-v0` has the given
/// interface entry, and an untouched `d-v1`.
const ONE_SEGMENT: &str = "version: 1
tenants:
  - name: t0
    segments:
      - name: s0
        prefixes: [10.1.0.0/24, \"fd00:1::/64\"]
        interfaces: [{name: d-v0, addresses: [\"fe80::20\"]}, d-v1]
";

const V6_ONLY: &str = "version: 1
tenants:
  - name: t0
    segments:
      - name: s0
        prefixes: [10.1.0.0/24, \"fd00:1::/64\"]
        interfaces: [{name: d-v0, addresses: [\"fd00:1::20\"]}, d-v1]
";

const V4_ONLY: &str = "version: 1
tenants:
  - name: t0
    segments:
      - name: s0
        prefixes: [10.1.0.0/24, \"fd00:1::/64\"]
        interfaces: [{name: d-v0, addresses: [\"10.1.0.20\"]}, d-v1]
";

const VM0: Mac = [0x02, 0, 0, 0, 1, 1];
const ROUTER: Mac = [0x02, 0, 0, 0, 0, 0xee];

fn fixed_rows() -> Vec<Fixed> {
    vec![
        // Found by the differential test; the model was wrong (design.md now says so):
        // the egress program judges a frame's tag against the receiving interface's
        // `vlans` too.
        Fixed {
            name: "egress: a tag the receiving vif does not list",
            policy: ONE_SEGMENT,
            host_addresses: &[],
            vif: "d-v1",
            entered: Some("d-v0"),
            frame: || {
                frame::tagged(
                    &frame::ip(
                        VM0,
                        ROUTER,
                        "10.1.0.20",
                        "10.1.0.21",
                        frame::tcp(22, 22, frame::SYN),
                    ),
                    0x8100,
                    100,
                )
            },
            expected: "drop vlan",
        },
        // Found by the differential test; the model was wrong: the DHCP guard's ports are
        // per family (67/68 for IPv4, 547/546 for IPv6), so UDP to port 68 over IPv6 is
        // no DHCP server message.
        Fixed {
            name: "ingress: IPv6 UDP to port 68 is not DHCPv4",
            policy: ONE_SEGMENT,
            host_addresses: &[],
            vif: "d-v1",
            entered: None,
            frame: || frame::ip(VM0, ROUTER, "fe80::1", "2001:db8::1", frame::udp(22, 68)),
            expected: "pass",
        },
        // Found by the differential test; the KERNEL is wrong (fails until fixed): a vif
        // that declares only a link-local address may send from any address of its
        // segment. policy.md: `addresses` are the *only* source addresses the VM may use.
        Fixed {
            name: "ingress: declared only fe80::20, sends from 10.1.0.23",
            policy: ONE_SEGMENT,
            host_addresses: &[],
            vif: "d-v0",
            entered: None,
            frame: || {
                frame::ip(
                    VM0,
                    ROUTER,
                    "10.1.0.23",
                    "10.1.0.21",
                    frame::tcp(22, 22, frame::SYN),
                )
            },
            expected: "drop spoofed_ip",
        },
        Fixed {
            name: "ingress: declared only fe80::20, sends from fd00:1::23",
            policy: ONE_SEGMENT,
            host_addresses: &[],
            vif: "d-v0",
            entered: None,
            frame: || {
                frame::ip(
                    VM0,
                    ROUTER,
                    "fd00:1::23",
                    "fd00:1::21",
                    frame::tcp(22, 22, frame::SYN),
                )
            },
            expected: "drop spoofed_ip",
        },
        Fixed {
            name: "ingress: declared only fd00:1::20, sends from 10.1.0.23",
            policy: V6_ONLY,
            host_addresses: &[],
            vif: "d-v0",
            entered: None,
            frame: || {
                frame::ip(
                    VM0,
                    ROUTER,
                    "10.1.0.23",
                    "10.1.0.21",
                    frame::tcp(22, 22, frame::SYN),
                )
            },
            expected: "drop spoofed_ip",
        },
        Fixed {
            name: "ingress: declared only 10.1.0.20, sends from fd00:1::23",
            policy: V4_ONLY,
            host_addresses: &[],
            vif: "d-v0",
            entered: None,
            frame: || {
                frame::ip(
                    VM0,
                    ROUTER,
                    "fd00:1::23",
                    "fd00:1::21",
                    frame::tcp(22, 22, frame::SYN),
                )
            },
            expected: "drop spoofed_ip",
        },
        // Found by the differential test; the model was wrong (design.md now says so):
        // egress step 4 ("not for this VM") leaves link-local destinations (169.254/16,
        // fe80::/10) to the later steps: a VM has such addresses too.
        Fixed {
            name: "egress: an IGMP query to an IPv4 link-local address, from outside",
            policy: ONE_SEGMENT,
            host_addresses: &[],
            vif: "d-v1",
            entered: Some("x-uplink"),
            frame: || {
                let query = [0x11, 0, 0, 0, 224, 0, 0, 22];
                let packet = frame::ip_packet(
                    frame::addr("10.9.0.1"),
                    frame::addr("169.254.1.1"),
                    2,
                    &query,
                );
                frame::ethernet(ROUTER, VM0, 0x0800, &packet)
            },
            expected: "pass",
        },
        // Found by the differential test; the model was wrong (design.md now says so):
        // the unspecified destination is no unicast address, so egress step 4 leaves it to
        // the flows.
        Fixed {
            name: "egress: UDP to 0.0.0.0 from a segment with a flow",
            policy: "version: 1
tenants:
  - name: t0
    segments:
      - name: s0
        prefixes: [10.1.0.0/24]
        interfaces: [d-v3]
      - name: s1
        prefixes: [10.2.0.0/24]
        interfaces: [d-v1]
    flows: [{from: s0, to: t0/s1, protocol: udp}]
",
            host_addresses: &[],
            vif: "d-v1",
            entered: Some("d-v3"),
            frame: || frame::ip(VM0, ROUTER, "10.1.0.23", "0.0.0.0", frame::udp(22, 22)),
            expected: "pass",
        },
        // Found by the differential test; design.md did not say (it does now): on
        // egress, neighbour discovery from another segment is address resolution (hop
        // limit 255, about an address of T, between segments that may resolve each other)
        // or `cross_*`, never ordinary ICMPv6 that a flow could pass; the model judged
        // these two as ordinary ICMPv6 (and let the flow pass them).
        Fixed {
            name: "egress: NS with hop limit 64 from a segment with an ICMP flow",
            policy: "version: 1
tenants:
  - name: t0
    segments:
      - name: s0
        prefixes: [10.1.0.0/24, \"fd00:1::/64\"]
        interfaces: [d-v3]
      - name: s1
        prefixes: [10.2.0.0/24]
        interfaces: [d-v1]
    flows: [{from: s0, to: t0/s1, protocol: icmp}]
",
            host_addresses: &[],
            vif: "d-v1",
            entered: Some("d-v3"),
            frame: || {
                let options = [(frame::nd_option::SOURCE_LL, VM0)];
                let ns = frame::nd(
                    VM0,
                    frame::ALL_NODES,
                    frame::icmp::NEIGHBOUR_SOLICITATION,
                    "fd00:1::23",
                    "fe80::1",
                    "fd00:3::23",
                    &options,
                );
                frame::with_hop_limit(&ns, 64)
            },
            expected: "drop cross_segment",
        },
        // Found by the differential test; design.md did not say (it does now): a unicast
        // neighbour solicitation to one of the host's own addresses (a VM checking its
        // router's reachability) is address resolution, not traffic to the host.
        Fixed {
            name: "ingress: unicast NS to a host address",
            policy: "version: 1
tenants:
  - name: t0
    segments:
      - name: s0
        prefixes: [\"fd00:1::/64\"]
        interfaces: [d-v1]
",
            host_addresses: &["2001:db8::1"],
            vif: "d-v1",
            entered: None,
            frame: || {
                frame::nd(
                    VM0,
                    ROUTER,
                    135,
                    "fd00:1::21",
                    "2001:db8::1",
                    "2001:db8::1",
                    &[],
                )
            },
            expected: "pass",
        },
        // Found by the differential test; the model was wrong: DHCP answers are judged
        // by the ports of their family (547 to 546 for DHCPv6).
        Fixed {
            name: "egress: UDP 67 to 68 over IPv6 from outside is no DHCP answer",
            policy: ONE_SEGMENT,
            host_addresses: &[],
            vif: "d-v1",
            entered: Some("x-uplink"),
            frame: || frame::ip(ROUTER, VM0, "fe80::1", "ff02::1", frame::udp(67, 68)),
            expected: "drop not_exposed",
        },
        Fixed {
            name: "egress: a router solicitation with hop limit 64 from a segment with a flow `any`",
            policy: "version: 1
tenants:
  - name: t0
    segments:
      - name: s0
        prefixes: [10.1.0.0/24, \"fd00:1::/64\"]
        interfaces: [d-v3]
      - name: s1
        prefixes: [10.2.0.0/24, \"fd00:2::/64\"]
        interfaces: [d-v1]
    flows: [{from: s0, to: t0/s1, protocol: any}]
",
            host_addresses: &[],
            vif: "d-v1",
            entered: Some("d-v3"),
            frame: || {
                let rs = frame::ip_frame(
                    VM0,
                    ROUTER,
                    frame::addr("fe80::23"),
                    frame::addr("ff02::2"),
                    frame::icmp(frame::icmp::ROUTER_SOLICITATION),
                    &[0; 4],
                );
                frame::with_hop_limit(&rs, 64)
            },
            expected: "drop cross_segment",
        },
        // Found by the differential test; the model followed ingress step 3's text, the
        // kernel the threat model ("for exposed addresses: answers and unicast refreshes
        // only"): an exposed *sender* address lets only ARP replies, unicast ARP requests,
        // neighbour advertisements and unicast solicitations cross; step 3 says so now.
        Fixed {
            name: "ingress: broadcast ARP request from an exposed address for another segment's",
            policy: EXPOSED_SENDER,
            host_addresses: &[],
            vif: "d-v0",
            entered: None,
            frame: || frame::arp(VM0, frame::BROADCAST, 1, VM0, "10.1.0.12", "10.2.0.10"),
            expected: "drop cross_segment",
        },
        Fixed {
            name: "ingress: the same as a unicast refresh",
            policy: EXPOSED_SENDER,
            host_addresses: &[],
            vif: "d-v0",
            entered: None,
            frame: || frame::arp(VM0, [0x02, 0, 0, 0, 9, 9], 1, VM0, "10.1.0.12", "10.2.0.10"),
            expected: "pass",
        },
        Fixed {
            name: "ingress: multicast NS from an exposed address for another segment's",
            policy: EXPOSED_SENDER,
            host_addresses: &[],
            vif: "d-v0",
            entered: None,
            frame: || {
                let group = [0x33, 0x33, 0xff, 0, 0, 0x10];
                frame::nd(
                    VM0,
                    group,
                    135,
                    "fd00:1::12",
                    "ff02::1:ff00:10",
                    "fd00:2::10",
                    &[],
                )
            },
            expected: "drop cross_segment",
        },
        // Found by the differential test; the model was wrong: for a neighbour
        // advertisement the advertised address (its target, which the guard checked the
        // VM owns) is the sender's address too, so its exposure admits the answer.
        Fixed {
            name: "ingress: NA advertising an exposed address, to another segment",
            policy: EXPOSED_SENDER,
            host_addresses: &[],
            vif: "d-v0",
            entered: None,
            frame: || {
                let peer = [0x02, 0, 0, 0, 9, 9];
                frame::nd(
                    VM0,
                    peer,
                    136,
                    "fd00:1::13",
                    "fd00:2::10",
                    "fd00:1::12",
                    &[],
                )
            },
            expected: "pass",
        },
        // Found by the differential test; the model was wrong: a DHCP client message is
        // UDP from the client port to the server port (68 to 67); to port 67 from any
        // other port it is ordinary broadcast, judged by `egress`.
        Fixed {
            name: "ingress: UDP 22 to 67 at 255.255.255.255 from an egress: deny segment",
            policy: "version: 1
tenants:
  - name: t0
    segments:
      - name: s0
        egress: deny
        prefixes: [10.1.0.0/24]
        interfaces: [d-v1]
",
            host_addresses: &[],
            vif: "d-v1",
            entered: None,
            frame: || {
                frame::ip(
                    VM0,
                    frame::BROADCAST,
                    "10.1.0.21",
                    "255.255.255.255",
                    frame::udp(22, 67),
                )
            },
            expected: "drop egress_denied",
        },
    ]
}

const EXPOSED_SENDER: &str = "version: 1
tenants:
  - name: t0
    segments:
      - name: s0
        prefixes: [10.1.0.0/24, \"fd00:1::/64\"]
        interfaces: [d-v0]
        expose: [{address: 10.1.0.12, protocol: tcp}, {address: \"fd00:1::12\", protocol: tcp}]
      - name: s1
        prefixes: [10.2.0.0/24, \"fd00:2::/64\"]
        expose: [{address: 10.2.0.12, protocol: tcp}, {address: \"fd00:2::12\", protocol: tcp}]
";

/// Every fixed row: the model gives the documented verdict, and so does the kernel.
#[test]
fn differential_fixed_rows() {
    in_private_netns(|| {
        let mut bench = Bench::new();
        let mut wrong = Vec::new();
        for row in fixed_rows() {
            let policy = policy::parse(row.policy, "fixed.yaml").expect("valid policy");
            let addresses = row
                .host_addresses
                .iter()
                .map(|a| a.parse().expect("address"))
                .collect();
            let host = bench.host(addresses);
            bench.apply(&policy, &host);
            let ifindex = |name: &str| -> u32 {
                if name.is_empty() {
                    return 0;
                }
                bench
                    .links
                    .iter()
                    .find(|l| l.name == name)
                    .map_or(1, |l| l.ifindex)
            };
            let vif = ifindex(row.vif);
            let direction = match row.entered {
                None => Direction::Ingress,
                Some(e) => Direction::Egress {
                    entered: ifindex(e),
                },
            };
            let bytes = (row.frame)();
            let model = model::verdict(&policy, &host, vif, direction, &bytes).to_string();
            let kernel = match bench.kernel(vif, direction, &bytes) {
                Ok(k) => k.to_string(),
                Err(e) => e,
            };
            if model != row.expected || kernel != row.expected {
                wrong.push(format!(
                    "{}: expected {}, model {model}, kernel {kernel}",
                    row.name, row.expected
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    });
}
