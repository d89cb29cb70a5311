//! The basic verdicts: segments and tenants apart over IPv4, IPv6 and ARP, parse errors,
//! fail closed, all-or-nothing swaps, counter pruning, pinned maps.

use isolator::compile::{ManagedVif, Plan};
use isolator::policy;
use isolator_common::verdict;
use isolator_tests::frame::{
    echo_request, ethernet, tagged, truncated, with_arp_htype, with_ihl, with_ip_version,
};

use crate::fixture::{Lab, PEER_MAC, VM_MAC, arp, in_private_netns, ip, row};

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

/// An ICMP or ICMPv6 echo request the VM sends (the family follows the addresses).
fn echo(src: &str, dst: &str) -> Vec<u8> {
    ip(src, dst, echo_request(1))
}

/// An ARP request the VM sends for `target`.
fn arp_for(sender: &str, target: &str) -> Vec<u8> {
    arp(VM_MAC, VM_MAC, sender, target, 1)
}

#[test]
fn ipv4_verdicts() {
    in_private_netns(|| {
        let mut lab = lab();
        let rows = [
            row(
                "same segment",
                "d-aw1",
                echo("10.1.1.2", "10.1.1.3"),
                verdict::PASS,
            ),
            row(
                "same segment, second vif",
                "d-aw2",
                echo("10.1.1.3", "10.1.1.2"),
                verdict::PASS,
            ),
            row(
                "other segment, same tenant",
                "d-aw1",
                echo("10.1.1.2", "10.1.2.3"),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "other segment, back the other way",
                "d-ad",
                echo("10.1.2.3", "10.1.1.2"),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "other tenant",
                "d-aw1",
                echo("10.1.1.2", "10.2.1.9"),
                verdict::CROSS_TENANT,
            ),
            row(
                "other tenant, from the other side",
                "d-gw",
                echo("10.2.1.9", "10.1.1.2"),
                verdict::CROSS_TENANT,
            ),
            row(
                "outside every segment",
                "d-aw1",
                echo("10.1.1.2", "192.0.2.1"),
                verdict::PASS,
            ),
            row(
                "edge of another tenant's prefix",
                "d-aw1",
                echo("10.1.1.2", "10.2.1.255"),
                verdict::CROSS_TENANT,
            ),
            row(
                "just past another tenant's prefix",
                "d-aw1",
                echo("10.1.1.2", "10.2.2.0"),
                verdict::PASS,
            ),
            row(
                "IPv4 header cut short",
                "d-aw1",
                truncated(&echo("10.1.1.2", "10.1.1.3"), 14 + 19),
                verdict::MALFORMED,
            ),
            row(
                "IPv4 header length below 5 words",
                "d-aw1",
                with_ihl(&echo("10.1.1.2", "10.1.1.3"), 4),
                verdict::MALFORMED,
            ),
            row(
                "IPv4 header length beyond the frame",
                "d-aw1",
                with_ihl(&echo("10.1.1.2", "10.1.1.3"), 15),
                verdict::MALFORMED,
            ),
            // A frame shorter than an Ethernet header cannot be test-run (the kernel
            // answers EINVAL) nor received; the program still drops it as malformed.
            row(
                "EtherType present, nothing after it",
                "d-aw1",
                truncated(&echo("10.1.1.2", "10.1.1.3"), 14),
                verdict::MALFORMED,
            ),
            row(
                "unknown EtherType (LLDP)",
                "d-aw1",
                ethernet(VM_MAC, PEER_MAC, 0x88cc, &[0; 46]),
                verdict::UNKNOWN_ETHERTYPE,
            ),
            row(
                "802.1Q tag on an interface without VLANs",
                "d-aw1",
                tagged(&echo("10.1.1.2", "10.2.1.9"), 0x8100, 100),
                verdict::VLAN,
            ),
            row(
                "interface not in the policy (fail closed)",
                "d-stranger",
                echo("10.9.9.9", "10.1.1.2"),
                verdict::NO_POLICY,
            ),
        ];
        lab.check_all_both_ingresses(&rows);
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
                echo("fd00:1:1::2", "fd00:1:1::3"),
                verdict::PASS,
            ),
            row(
                "other segment, same tenant",
                "d-aw1",
                echo("fd00:1:1::2", "fd00:1:2::3"),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "other tenant",
                "d-aw2",
                echo("fd00:1:1::3", "fd00:2:1::9"),
                verdict::CROSS_TENANT,
            ),
            row(
                "other tenant, from the other side",
                "d-gw",
                echo("fd00:2:1::9", "fd00:1:1::3"),
                verdict::CROSS_TENANT,
            ),
            row(
                "outside every segment",
                "d-aw1",
                echo("fd00:1:1::2", "2001:db8::1"),
                verdict::PASS,
            ),
            row(
                "last address of another tenant's /64",
                "d-aw1",
                echo("fd00:1:1::2", "fd00:2:1::ffff:ffff:ffff:ffff"),
                verdict::CROSS_TENANT,
            ),
            row(
                "IPv6 header cut short",
                "d-aw1",
                truncated(&echo("fd00:1:1::2", "fd00:1:1::3"), 14 + 39),
                verdict::MALFORMED,
            ),
            row(
                "IPv6 EtherType with version 4 inside",
                "d-aw1",
                with_ip_version(&echo("fd00:1:1::2", "fd00:1:1::3"), 4),
                verdict::MALFORMED,
            ),
            row(
                "interface not in the policy (fail closed)",
                "d-stranger",
                echo("fd00:9::1", "fd00:1:1::2"),
                verdict::NO_POLICY,
            ),
        ];
        lab.check_all_both_ingresses(&rows);
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
                arp_for("10.1.1.2", "10.1.1.3"),
                verdict::PASS,
            ),
            row(
                "who-has in another segment",
                "d-aw1",
                arp_for("10.1.1.2", "10.1.2.3"),
                verdict::CROSS_SEGMENT,
            ),
            row(
                "who-has in another tenant",
                "d-gw",
                arp_for("10.2.1.9", "10.1.1.2"),
                verdict::CROSS_TENANT,
            ),
            row(
                "who-has outside every segment",
                "d-aw1",
                arp_for("10.1.1.2", "192.0.2.1"),
                verdict::PASS,
            ),
            row(
                "ARP cut before the target address",
                "d-aw1",
                truncated(&arp_for("10.1.1.2", "10.2.1.9"), 14 + 27),
                verdict::MALFORMED,
            ),
            row(
                "ARP with a non-Ethernet hardware type",
                "d-aw1",
                with_arp_htype(&arp_for("10.1.1.2", "10.1.1.3"), 6),
                verdict::MALFORMED,
            ),
        ];
        lab.check_all_both_ingresses(&rows);
    });
}

/// A vif whose ifindex is beyond `VIF_SLOTS` has its entry only in `VIFS`: it is judged
/// as any other, as the vif a frame is sent from and as the one it is delivered to; an
/// unnamed link with such an ifindex is still refused.
#[test]
fn a_vif_beyond_the_slots_is_judged_like_any_other() {
    use crate::fixture::{high_ifindex, out};
    in_private_netns(|| {
        let policy = POLICY.replace(
            r#"interfaces: ["d-aw*"]"#,
            r#"interfaces: ["d-aw*", "d-hi1"]"#,
        );
        let mut lab = Lab::new(&policy, &["d-aw1", "d-gw", "d-hi1", "d-hi2"]);
        let high = lab.ifindex("d-hi1");
        assert_eq!(Some(high), high_ifindex("d-hi1"));
        assert!(high >= isolator_common::limits::VIF_SLOTS);
        lab.check_all(&[
            row(
                "within its segment",
                "d-hi1",
                echo("10.1.1.5", "10.1.1.6"),
                verdict::PASS,
            ),
            row(
                "to another tenant",
                "d-hi1",
                echo("10.1.1.5", "10.2.1.5"),
                verdict::CROSS_TENANT,
            ),
            row(
                "a source outside its segment",
                "d-hi1",
                echo("10.1.2.5", "10.1.1.6"),
                verdict::SPOOFED_IP,
            ),
            out(
                "to it, from its segment",
                "d-hi1",
                echo("10.1.1.6", "10.1.1.5"),
                verdict::PASS,
            )
            .from("d-aw1"),
            out(
                "to it, from another tenant",
                "d-hi1",
                echo("10.2.1.5", "10.1.1.5"),
                verdict::CROSS_TENANT,
            )
            .from("d-gw"),
            out(
                "from it, to its segment",
                "d-aw1",
                echo("10.1.1.5", "10.1.1.6"),
                verdict::PASS,
            )
            .from("d-hi1"),
            out(
                "from it, to another tenant",
                "d-gw",
                echo("10.1.1.5", "10.2.1.5"),
                verdict::CROSS_TENANT,
            )
            .from("d-hi1"),
            row(
                "a link no policy names, beyond the slots",
                "d-hi2",
                echo("10.1.1.7", "10.1.1.6"),
                verdict::NO_POLICY,
            ),
        ]);
    });
}

#[test]
fn a_policy_swap_is_all_or_nothing() {
    in_private_netns(|| {
        let mut lab = lab();
        let to_db = echo("10.1.1.2", "10.1.2.3");
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
            echo("10.1.1.2", "10.2.1.9"),
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
            echo("10.1.1.2", "10.1.1.3"),
            verdict::PASS,
        ));
        lab.check(&row(
            "a frame on d-aw2",
            "d-aw2",
            echo("10.1.1.3", "10.1.1.2"),
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
fn every_map_but_the_scratch_spaces_is_pinned() {
    let ebpf = aya::Ebpf::load(isolator::dataplane::EBPF_OBJECT).expect("load (needs root)");
    // Sections of global data (`.rodata`, ...) are created anew at each load: not state.
    let mut in_object: Vec<&str> = ebpf
        .maps()
        .map(|(name, _)| name)
        .filter(|name| !name.starts_with('.'))
        .collect();
    in_object.sort();
    let mut expected: Vec<&str> = isolator::dataplane::PINNED_MAPS.to_vec();
    expected.push("SCRATCH");
    expected.push("CLASSES");
    expected.push("STALE");
    expected.push("EVENT_SAMPLE");
    // Each daemon's own: which of its vifs it is handing over from cls_bpf to TCX.
    expected.push("HANDOFF");
    expected.push("HANDOFF_COUNT");
    expected.sort();
    assert_eq!(
        in_object, expected,
        "a map missing from PINNED_MAPS would not survive a daemon restart"
    );
}

/// The kernel's verifier walks at most 1 000 000 instructions per program; near that limit
/// the next small change to the programs fails to load anywhere. Each program stays under
/// half of it.
#[test]
fn the_programs_stay_well_inside_the_verifier_s_budget() {
    in_private_netns(|| {
        let mut dp = isolator::dataplane::Dataplane::load().expect("loading the programs");
        let counts = dp.verified_instructions().unwrap();
        println!("verified instructions: {counts:?}");
        for (program, count) in counts {
            assert!(
                count > 0,
                "{program}: the kernel reported no verified instructions"
            );
            assert!(
                count < 500_000,
                "{program}: the verifier walked {count} instructions, over half its limit"
            );
        }
    });
}

/// While a vif's TC hooks are handed over from the quick `cls_bpf` attachment to TCX (the
/// vif in `HANDOFF`), both run isolator's program, the filter after every TCX program: the
/// TC programs then end the hook's chain where they pass a frame (`TC_ACT_OK`, which TCX
/// reads as `TCX_PASS`), so that the filter does not judge (and count) it again; on other
/// vifs, and on this one before and after, they pass it on (`TCX_NEXT`). A drop stays a
/// drop. Each run counts its frame once, whatever the return value.
#[test]
fn a_vif_handed_over_to_tcx_ends_its_chain_where_it_passes_a_frame() {
    use isolator::dataplane::{TC_DROP, TC_PASS, TC_PASS_END};
    use isolator_common::{CounterKey, direction};
    in_private_netns(|| {
        let mut lab = lab();
        let (aw1, aw2, gw) = (
            lab.ifindex("d-aw1"),
            lab.ifindex("d-aw2"),
            lab.ifindex("d-gw"),
        );
        let to_aw1 = echo("10.1.1.3", "10.1.1.2");
        let to_aw2 = echo("10.1.1.2", "10.1.1.3");
        let cross = echo("10.2.1.5", "10.1.1.2");
        let sent_by_aw1 = echo("10.1.1.2", "10.1.1.3");
        let passed = |lab: &Lab, ifindex: u32, dir: u8| -> u64 {
            lab.dp
                .counters()
                .expect("counters")
                .into_iter()
                .filter(|(k, _): &(CounterKey, _)| {
                    k.ifindex == ifindex && k.direction == dir && k.verdict == verdict::PASS
                })
                .map(|(_, c)| c.packets)
                .sum()
        };
        for (step, handing) in [("before", false), ("during", true), ("after", false)] {
            lab.dp.set_handing_over(aw1, handing).expect("HANDOFF");
            let on_aw1 = if handing { TC_PASS_END } else { TC_PASS };
            let before = passed(&lab, aw1, direction::EGRESS);
            assert_eq!(
                lab.dp.test_run_egress(aw1, aw2, &to_aw1).unwrap(),
                on_aw1,
                "{step} the handover: a frame d-aw1's egress passes"
            );
            assert_eq!(
                passed(&lab, aw1, direction::EGRESS),
                before + 1,
                "{step} the handover: counted once"
            );
            assert_eq!(
                lab.dp.test_run_egress(aw1, gw, &cross).unwrap(),
                TC_DROP,
                "{step} the handover: another tenant's frame to d-aw1"
            );
            assert_eq!(
                lab.dp.test_run_tags(aw1, &sent_by_aw1).unwrap(),
                on_aw1,
                "{step} the handover: an untagged frame at d-aw1's TC ingress"
            );
            assert_eq!(
                lab.dp.test_run_egress(aw2, aw1, &to_aw2).unwrap(),
                TC_PASS,
                "{step} the handover of d-aw1: d-aw2 (not handed over) passes a frame on"
            );
        }
    });
}
