//! Items 1 and 2: frames for everyone on the link. Broadcasts and link-scope multicast a VM
//! sends flood the whole bridge; isolator must hand them only to its own segment (the
//! receivers' egress judges them by the vif they entered through). LLDP, which no VM
//! should send, drops at the sender's XDP as `unknown_ethertype`.

use std::net::IpAddr;
use std::time::Duration;

use isolator_tests::Env;
use isolator_tests::failclosed_lab::{FrameSender, quiet_lab, udp_sinks};
use isolator_tests::frame::{self, addr, parse_mac, udp};

use super::{static_fdb_all, vm, watched};
use crate::failclosed::{Problems, captured, carrying, expect_exactly, settle, udp_frame};

const POLICY: &str = r#"version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24, fd00:1:1::/64]
      - name: db
        interfaces: ["vacme-db*"]
        prefixes: [10.1.2.0/24, fd00:1:2::/64]
  - name: globex
    segments:
      - name: web
        interfaces: ["vglobex-web*"]
        prefixes: [10.2.1.0/24, fd00:2:1::/64]
"#;

/// The UDP port every datagram here goes to (mDNS's; a socket listens on it in every
/// receiver, so that no kernel answers with an ICMP error).
const PORT: u16 = 5353;

/// Item 1: web1 (acme/web) sends UDP to 255.255.255.255, to its subnet's broadcast
/// 10.1.1.255, to mDNS's 224.0.0.251 and to mDNS's ff02::fb (from its link-local address),
/// each to the matching broadcast or multicast MAC: every copy the bridge floods reaches
/// web2 (same segment: `egress pass`) and neither db1 (acme/db: `cross_segment` at its
/// egress) nor globex-web1 (another tenant: `cross_tenant`); web1's ingress passes each
/// once. Captures in the three receivers prove what arrived.
#[test]
fn broadcast_and_multicast_reach_only_the_senders_segment() {
    let (lab, vms) = quiet_lab(
        "rp-bcast",
        &[
            ("web1", "vacme-web1", "10.1.1.2/24"),
            ("web2", "vacme-web2", "10.1.1.3/24"),
            ("db1", "vacme-db1", "10.1.2.2/24"),
            ("gweb1", "vglobex-web1", "10.2.1.2/24"),
        ],
        &[],
    )
    .unwrap_or_else(|e| panic!("harness: lab: {e:#}"));
    static_fdb_all(&lab, &vms);
    let env = Env::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    let (web1, web2, db1, gweb1) = (
        vm(&vms, "web1"),
        vm(&vms, "web2"),
        vm(&vms, "db1"),
        vm(&vms, "gweb1"),
    );
    let _sinks = udp_sinks(&[web2, db1, gweb1], PORT).expect("harness: UDP sinks");
    let sender = FrameSender::open(&web1.ns, "eth0").expect("harness: sender in web1");
    let web1_mac = parse_mac(&web1.mac).expect("MAC");
    let v6_frame = |dst_mac: &str, dst: &str, marker: &str| {
        frame::ip_frame(
            web1_mac,
            parse_mac(dst_mac).expect("MAC"),
            addr("fe80::15:ff:fe00:1"),
            addr(dst),
            udp(PORT, PORT),
            marker.as_bytes(),
        )
    };
    let v4_frame = |dst_mac: &str, dst: &str, marker: &str| {
        udp_frame(
            web1,
            dst_mac,
            dst.parse::<IpAddr>().expect("address"),
            PORT,
            marker,
        )
    };
    let cases = [
        (
            "limited broadcast 255.255.255.255",
            v4_frame(
                "ff:ff:ff:ff:ff:ff",
                "255.255.255.255",
                "rp limited broadcast",
            ),
            "rp limited broadcast",
        ),
        (
            "subnet broadcast 10.1.1.255",
            v4_frame("ff:ff:ff:ff:ff:ff", "10.1.1.255", "rp subnet broadcast"),
            "rp subnet broadcast",
        ),
        (
            "mDNS 224.0.0.251",
            v4_frame("01:00:5e:00:00:fb", "224.0.0.251", "rp mdns v4"),
            "rp mdns v4",
        ),
        (
            "mDNS ff02::fb",
            v6_frame("33:33:00:00:00:fb", "ff02::fb", "rp mdns v6"),
            "rp mdns v6",
        ),
    ];
    let vifs = watched(&vms);
    let receivers = [web2, db1, gweb1];
    let namespaces: Vec<&str> = receivers.iter().map(|v| v.ns.as_str()).collect();
    let mut bad = Problems::new();
    for (what, bytes, marker) in &cases {
        let before = settle(&vifs, Duration::from_millis(300), || env.scrape());
        let (_, frames) = captured(&namespaces, || {
            sender
                .send(bytes)
                .unwrap_or_else(|e| panic!("harness: {e:#}"));
            expect_exactly(
                &mut bad,
                env.daemon(),
                &vifs,
                &before,
                &[
                    (&web1.vif, "ingress pass", 1.0),
                    (&web2.vif, "egress pass", 1.0),
                    (&db1.vif, "egress cross_segment", 1.0),
                    (&gweb1.vif, "egress cross_tenant", 1.0),
                ],
                what,
            )
        });
        for (receiver, got) in receivers.iter().zip(&frames) {
            let wanted = usize::from(receiver.name == "web2");
            let arrived = carrying(got, marker);
            bad.check(arrived == wanted, || {
                format!(
                    "{what} from web1: {wanted} copy expected at {}, {arrived} arrived",
                    receiver.name
                )
            });
        }
    }
    bad.finish(
        "broadcast and multicast stay in the sender's segment",
        POLICY,
        &env.log_tail(),
    );
}

/// An LLDP frame (EtherType 0x88cc): chassis id (web1's MAC), port id `eth0`, TTL 120,
/// a port description carrying `marker`, end.
fn lldp(src: [u8; 6], dst: [u8; 6], marker: &str) -> Vec<u8> {
    let tlv = |kind: u16, value: &[u8]| -> Vec<u8> {
        let mut out = ((kind << 9) | value.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(value);
        out
    };
    let mut chassis = vec![4u8];
    chassis.extend_from_slice(&src);
    let body = [
        tlv(1, &chassis),
        tlv(2, b"\x05eth0"),
        tlv(3, &120u16.to_be_bytes()),
        tlv(4, marker.as_bytes()),
        tlv(0, &[]),
    ]
    .concat();
    frame::ethernet(src, dst, 0x88cc, &body)
}

/// Item 2: LLDP from web1, to the nearest-bridge group 01:80:c2:00:00:0e (which a Linux
/// bridge would not forward anyway) and to web2's MAC (which it would): each drops at
/// web1's XDP as `unknown_ethertype`, once, and the unicast one does not reach web2.
/// Twin: a UDP frame from web1 to web2's MAC arrives and passes both vifs.
#[test]
fn lldp_from_a_vm_is_an_unknown_ethertype() {
    let (lab, vms) = quiet_lab(
        "rp-lldp",
        &[
            ("web1", "vacme-web1", "10.1.1.2/24"),
            ("web2", "vacme-web2", "10.1.1.3/24"),
            ("gweb1", "vglobex-web1", "10.2.1.2/24"),
        ],
        &[],
    )
    .unwrap_or_else(|e| panic!("harness: lab: {e:#}"));
    static_fdb_all(&lab, &vms);
    let env = Env::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    let (web1, web2) = (vm(&vms, "web1"), vm(&vms, "web2"));
    let _sinks = udp_sinks(&[web2], PORT).expect("harness: UDP sink");
    let sender = FrameSender::open(&web1.ns, "eth0").expect("harness: sender in web1");
    let (src, to_web2) = (
        parse_mac(&web1.mac).expect("MAC"),
        parse_mac(&web2.mac).expect("MAC"),
    );
    let nearest_bridge = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];
    let cases = [
        (
            "LLDP to 01:80:c2:00:00:0e",
            lldp(src, nearest_bridge, "rp lldp group"),
            "rp lldp group",
            vec![(web1.vif.as_str(), "ingress unknown_ethertype", 1.0)],
            0,
        ),
        (
            "LLDP to web2's MAC",
            lldp(src, to_web2, "rp lldp unicast"),
            "rp lldp unicast",
            vec![(web1.vif.as_str(), "ingress unknown_ethertype", 1.0)],
            0,
        ),
        (
            "twin: UDP to web2",
            udp_frame(web1, &web2.mac, web2.v4(), PORT, "rp lldp twin"),
            "rp lldp twin",
            vec![
                (web1.vif.as_str(), "ingress pass", 1.0),
                (web2.vif.as_str(), "egress pass", 1.0),
            ],
            1,
        ),
    ];
    let vifs = watched(&vms);
    let mut bad = Problems::new();
    for (what, bytes, marker, moves, wanted) in &cases {
        let before = settle(&vifs, Duration::from_millis(300), || env.scrape());
        let (_, frames) = captured(&[&web2.ns], || {
            sender
                .send(bytes)
                .unwrap_or_else(|e| panic!("harness: {e:#}"));
            expect_exactly(&mut bad, env.daemon(), &vifs, &before, moves, what)
        });
        let arrived = carrying(&frames[0], marker);
        bad.check(arrived == *wanted, || {
            format!("{what}: {wanted} copy expected at web2, {arrived} arrived")
        });
    }
    bad.finish("LLDP from a VM", POLICY, &env.log_tail());
}
