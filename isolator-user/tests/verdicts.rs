//! Table-driven verdict tests: each row is a frame, the vif it arrives on, the expected
//! XDP action and the counter that must move (BPF_PROG_TEST_RUN through aya's TestRun).
//!
//! Needs root. Each test runs on its own thread inside a private, anonymous network
//! namespace (unshare), where it creates veth pairs to stand for vifs: nothing is
//! created in, attached to or sent from the root namespace, and everything vanishes with
//! the thread.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use common::{Lab, in_private_netns, row, veths};
use isolator::compile::{ManagedVif, Plan};
use isolator::dataplane::Dataplane;
use isolator::policy;
use isolator_common::verdict;

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
  - name: globex
    segments:
      - name: web
        interfaces: ["d-gw"]
        prefixes: ["10.2.1.0/24", "fd00:2:1::/64"]
"#;

const LINKS: &[&str] = &["d-aw1", "d-aw2", "d-ad", "d-gw", "d-stranger"];

fn lab() -> Lab {
    Lab::new(POLICY, LINKS)
}

const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

fn ethernet(buf: &mut BytesMut, ether_type: u16) {
    buf.put_slice(&PEER_MAC);
    buf.put_slice(&VM_MAC);
    buf.put_u16(ether_type);
}

/// An IPv4 ICMP echo request; `ihl` in 32-bit words.
fn ipv4_with_ihl(src: Ipv4Addr, dst: Ipv4Addr, ihl: u8) -> Vec<u8> {
    let mut b = BytesMut::new();
    ethernet(&mut b, 0x0800);
    b.put_u8(0x40 | ihl);
    b.put_u8(0);
    b.put_u16(20 + 8);
    b.put_u32(0); // id, flags, fragment offset
    b.put_u8(64);
    b.put_u8(1); // ICMP
    b.put_u16(0); // checksum: not checked by the enforcer
    b.put_slice(&src.octets());
    b.put_slice(&dst.octets());
    b.put_slice(&[8, 0, 0, 0, 0, 1, 0, 1]); // echo request
    b.to_vec()
}

fn ipv4(src: &str, dst: &str) -> Vec<u8> {
    ipv4_with_ihl(src.parse().unwrap(), dst.parse().unwrap(), 5)
}

fn ipv6_with_version(src: &str, dst: &str, version: u8) -> Vec<u8> {
    let src: Ipv6Addr = src.parse().unwrap();
    let dst: Ipv6Addr = dst.parse().unwrap();
    let mut b = BytesMut::new();
    ethernet(&mut b, 0x86dd);
    b.put_u32(u32::from(version) << 28);
    b.put_u16(8);
    b.put_u8(58); // ICMPv6
    b.put_u8(64);
    b.put_slice(&src.octets());
    b.put_slice(&dst.octets());
    b.put_slice(&[128, 0, 0, 0, 0, 1, 0, 1]); // echo request
    b.to_vec()
}

fn ipv6(src: &str, dst: &str) -> Vec<u8> {
    ipv6_with_version(src, dst, 6)
}

fn arp_with_htype(sender: &str, target: &str, htype: u16) -> Vec<u8> {
    let sender: Ipv4Addr = sender.parse().unwrap();
    let target: Ipv4Addr = target.parse().unwrap();
    let mut b = BytesMut::new();
    b.put_slice(&[0xff; 6]);
    b.put_slice(&VM_MAC);
    b.put_u16(0x0806);
    b.put_u16(htype);
    b.put_u16(0x0800);
    b.put_u8(6);
    b.put_u8(4);
    b.put_u16(1); // request
    b.put_slice(&VM_MAC);
    b.put_slice(&sender.octets());
    b.put_slice(&[0; 6]);
    b.put_slice(&target.octets());
    b.to_vec()
}

fn arp(sender: &str, target: &str) -> Vec<u8> {
    arp_with_htype(sender, target, 1)
}

fn truncated(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

#[test]
fn ipv4_verdicts() {
    in_private_netns(|| {
        let mut lab = lab();
        let rows = [
            row(
                "same segment",
                "d-aw1",
                ipv4("10.1.1.2", "10.1.1.3"),
                verdict::PASS,
            ),
            row(
                "same segment, second vif",
                "d-aw2",
                ipv4("10.1.1.3", "10.1.1.2"),
                verdict::PASS,
            ),
            row(
                "other segment, same tenant",
                "d-aw1",
                ipv4("10.1.1.2", "10.1.2.3"),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "other segment, back the other way",
                "d-ad",
                ipv4("10.1.2.3", "10.1.1.2"),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "other tenant",
                "d-aw1",
                ipv4("10.1.1.2", "10.2.1.9"),
                verdict::CROSS_TENANT,
            ),
            row(
                "other tenant, from the other side",
                "d-gw",
                ipv4("10.2.1.9", "10.1.1.2"),
                verdict::CROSS_TENANT,
            ),
            row(
                "outside every segment",
                "d-aw1",
                ipv4("10.1.1.2", "192.0.2.1"),
                verdict::PASS,
            ),
            row(
                "edge of another tenant's prefix",
                "d-aw1",
                ipv4("10.1.1.2", "10.2.1.255"),
                verdict::CROSS_TENANT,
            ),
            row(
                "just past another tenant's prefix",
                "d-aw1",
                ipv4("10.1.1.2", "10.2.2.0"),
                verdict::PASS,
            ),
            row(
                "IPv4 header cut short",
                "d-aw1",
                truncated(ipv4("10.1.1.2", "10.1.1.3"), 14 + 19),
                verdict::MALFORMED,
            ),
            row(
                "IPv4 header length below 5 words",
                "d-aw1",
                ipv4_with_ihl("10.1.1.2".parse().unwrap(), "10.1.1.3".parse().unwrap(), 4),
                verdict::MALFORMED,
            ),
            row(
                "IPv4 header length beyond the frame",
                "d-aw1",
                ipv4_with_ihl("10.1.1.2".parse().unwrap(), "10.1.1.3".parse().unwrap(), 15),
                verdict::MALFORMED,
            ),
            // A frame shorter than an Ethernet header cannot be test-run (the kernel
            // answers EINVAL) nor received; the program still drops it as malformed.
            row(
                "EtherType present, nothing after it",
                "d-aw1",
                truncated(ipv4("10.1.1.2", "10.1.1.3"), 14),
                verdict::MALFORMED,
            ),
            row(
                "unknown EtherType (LLDP)",
                "d-aw1",
                {
                    let mut b = BytesMut::new();
                    ethernet(&mut b, 0x88cc);
                    b.put_slice(&[0; 46]);
                    b.to_vec()
                },
                verdict::UNKNOWN_ETHERTYPE,
            ),
            row(
                "802.1Q tag on an interface without VLANs",
                "d-aw1",
                {
                    let mut b = BytesMut::new();
                    ethernet(&mut b, 0x8100);
                    b.put_u16(100);
                    b.put_u16(0x0800);
                    b.put_slice(&ipv4("10.1.1.2", "10.2.1.9")[14..]);
                    b.to_vec()
                },
                verdict::VLAN,
            ),
            row(
                "interface not in the policy (fail closed)",
                "d-stranger",
                ipv4("10.9.9.9", "10.1.1.2"),
                verdict::NO_POLICY,
            ),
        ];
        for r in &rows {
            lab.check(r);
        }
    });
}

#[test]
fn ipv6_verdicts() {
    in_private_netns(|| {
        let mut lab = lab();
        let rows = [
            row(
                "same segment",
                "d-aw1",
                ipv6("fd00:1:1::2", "fd00:1:1::3"),
                verdict::PASS,
            ),
            row(
                "other segment, same tenant",
                "d-aw1",
                ipv6("fd00:1:1::2", "fd00:1:2::3"),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "other tenant",
                "d-aw2",
                ipv6("fd00:1:1::3", "fd00:2:1::9"),
                verdict::CROSS_TENANT,
            ),
            row(
                "other tenant, from the other side",
                "d-gw",
                ipv6("fd00:2:1::9", "fd00:1:1::3"),
                verdict::CROSS_TENANT,
            ),
            row(
                "outside every segment",
                "d-aw1",
                ipv6("fd00:1:1::2", "2001:db8::1"),
                verdict::PASS,
            ),
            row(
                "last address of another tenant's /64",
                "d-aw1",
                ipv6("fd00:1:1::2", "fd00:2:1::ffff:ffff:ffff:ffff"),
                verdict::CROSS_TENANT,
            ),
            row(
                "IPv6 header cut short",
                "d-aw1",
                truncated(ipv6("fd00:1:1::2", "fd00:1:1::3"), 14 + 39),
                verdict::MALFORMED,
            ),
            row(
                "IPv6 EtherType with version 4 inside",
                "d-aw1",
                ipv6_with_version("fd00:1:1::2", "fd00:1:1::3", 4),
                verdict::MALFORMED,
            ),
            row(
                "interface not in the policy (fail closed)",
                "d-stranger",
                ipv6("fd00:9::1", "fd00:1:1::2"),
                verdict::NO_POLICY,
            ),
        ];
        for r in &rows {
            lab.check(r);
        }
    });
}

#[test]
fn arp_verdicts() {
    in_private_netns(|| {
        let mut lab = lab();
        let rows = [
            row(
                "who-has in own segment",
                "d-aw1",
                arp("10.1.1.2", "10.1.1.3"),
                verdict::PASS,
            ),
            row(
                "who-has in another segment",
                "d-aw1",
                arp("10.1.1.2", "10.1.2.3"),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "who-has in another tenant",
                "d-gw",
                arp("10.2.1.9", "10.1.1.2"),
                verdict::CROSS_TENANT,
            ),
            row(
                "who-has outside every segment",
                "d-aw1",
                arp("10.1.1.2", "192.0.2.1"),
                verdict::PASS,
            ),
            row(
                "ARP cut before the target address",
                "d-aw1",
                truncated(arp("10.1.1.2", "10.2.1.9"), 14 + 27),
                verdict::MALFORMED,
            ),
            row(
                "ARP with a non-Ethernet hardware type",
                "d-aw1",
                arp_with_htype("10.1.1.2", "10.1.1.3", 6),
                verdict::MALFORMED,
            ),
        ];
        for r in &rows {
            lab.check(r);
        }
    });
}

#[test]
fn a_vif_whose_segment_entry_is_missing_fails_closed() {
    in_private_netns(|| {
        let links = veths(&["d-aw1", "d-orphan"]);
        let policy = policy::parse(POLICY, "verdicts.yaml").expect("valid policy");
        let mut plan = Plan::new(&policy, &links).expect("plan");
        // A vif pointing at a segment that has no entry in the SEGMENTS map.
        plan.vifs.push(ManagedVif {
            name: "d-orphan".into(),
            ifindex: links[1].ifindex,
            segment: 77,
            ..ManagedVif::default()
        });
        // And a prefix pointing at a segment without an entry.
        plan.v4.push(("10.7.7.0/24".parse().unwrap(), 78));
        let mut dp = Dataplane::load().expect("load");
        dp.apply(&plan).expect("apply");
        let mut lab = Lab { dp, links };
        lab.check(&row(
            "sender's segment entry missing",
            "d-orphan",
            ipv4("10.1.1.9", "10.1.1.2"),
            verdict::NO_POLICY,
        ));
        lab.check(&row(
            "destination's segment entry missing",
            "d-aw1",
            ipv4("10.1.1.2", "10.7.7.7"),
            verdict::NO_POLICY,
        ));
    });
}

#[test]
fn a_policy_swap_is_all_or_nothing() {
    in_private_netns(|| {
        let mut lab = lab();
        let to_db = ipv4("10.1.1.2", "10.1.2.3");
        lab.check(&row(
            "before",
            "d-aw1",
            to_db.clone(),
            verdict::CROSS_SEGMENT,
        ));
        let first_generation = lab.dp.active_generation();

        // New policy: acme/db's prefix moves into acme/web.
        let moved = POLICY.replace(
            "prefixes: [\"10.1.1.0/24\", \"fd00:1:1::/64\"]",
            "prefixes: [\"10.1.1.0/24\", \"10.1.2.0/24\", \"fd00:1:1::/64\"]",
        );
        let moved = moved.replace(
            "prefixes: [\"10.1.2.0/24\", \"fd00:1:2::/64\"]",
            "prefixes: [\"fd00:1:2::/64\"]",
        );
        let policy = policy::parse(&moved, "moved.yaml").expect("valid");
        let plan = Plan::new(&policy, &lab.links).expect("plan");
        lab.dp.apply(&plan).expect("apply");
        assert_ne!(lab.dp.active_generation(), first_generation);
        lab.check(&row(
            "after the swap",
            "d-aw1",
            to_db.clone(),
            verdict::PASS,
        ));

        // A policy the kernel cannot hold is refused whole; the active one stays.
        let mut too_big = plan.clone();
        let generation = lab.dp.active_generation();
        for i in 0..(2 * isolator_common::limits::MAX_VIFS + 1) {
            too_big.vifs.push(ManagedVif {
                name: format!("fake{i}"),
                ifindex: 100_000 + i,
                segment: 2,
                ..ManagedVif::default()
            });
        }
        assert!(
            lab.dp.apply(&too_big).is_err(),
            "an oversized policy must be refused"
        );
        assert_eq!(lab.dp.active_generation(), generation);
        lab.check(&row(
            "after the refused swap",
            "d-aw1",
            to_db,
            verdict::PASS,
        ));
        lab.check(&row(
            "after the refused swap, other tenant",
            "d-aw1",
            ipv4("10.1.1.2", "10.2.1.9"),
            verdict::CROSS_TENANT,
        ));
    });
}

#[test]
fn counters_of_interfaces_that_are_gone_can_be_pruned() {
    in_private_netns(|| {
        let mut lab = lab();
        lab.check(&row(
            "a frame on d-aw1",
            "d-aw1",
            ipv4("10.1.1.2", "10.1.1.3"),
            verdict::PASS,
        ));
        lab.check(&row(
            "a frame on d-aw2",
            "d-aw2",
            ipv4("10.1.1.3", "10.1.1.2"),
            verdict::PASS,
        ));
        let keep: std::collections::BTreeSet<u32> = [lab.ifindex("d-aw2")].into();
        assert_eq!(lab.dp.prune_counters(&keep).unwrap(), 1);
        let left: Vec<u32> = lab
            .dp
            .counters()
            .unwrap()
            .iter()
            .map(|(k, _)| k.ifindex)
            .collect();
        assert_eq!(left, vec![lab.ifindex("d-aw2")]);
    });
}

#[test]
fn every_map_but_the_scratch_space_is_pinned() {
    let ebpf = aya::Ebpf::load(isolator::dataplane::EBPF_OBJECT).expect("load (needs root)");
    let mut in_object: Vec<&str> = ebpf.maps().map(|(name, _)| name).collect();
    in_object.sort();
    let mut expected: Vec<&str> = isolator::dataplane::PINNED_MAPS.to_vec();
    expected.push("SCRATCH");
    expected.sort();
    assert_eq!(
        in_object, expected,
        "a map missing from PINNED_MAPS would not survive a daemon restart"
    );
}
