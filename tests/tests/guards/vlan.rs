//! 802.1Q/802.1ad tags in the frame (case 6); tags in offload metadata are `vlan_offload`'s.

use isolator_common::verdict;

use super::*;

/// Case 6: 802.1Q tags only with a listed VLAN id; stacked tags never.
#[test]
fn vlan_tags_only_as_declared_and_never_stacked() {
    let env = Guards::start("guard-vlan", "enforce");
    let (w1, w2, w3, gw1, gw2) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("gw1"),
        env.node("gw2"),
    );
    // A frame tagged 100 that passes is captured on web2's eth0, like every other (a
    // packet socket sees it with or without a VLAN subinterface): no branch on whether
    // the kernel has 802.1Q support (this one has no `vlan` link type).
    let tagged = |from: &Node, to: &Node, tags: &str, marker: &str| {
        format!(
            "{}/{tags}/IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'{marker}')",
            from.eth(&to.mac),
            from.v4,
            to.v4
        )
    };
    let mut bad = Vec::new();
    let mut s1 = env.scapy("web1");
    fire_all(
        &env,
        &mut s1,
        &[
            shot(
                "untagged (control)",
                w1,
                w2,
                udp4(w1, &w1.v4, w2, &w2.v4, "vlan-none"),
                Outcome::Delivered,
            ),
            shot(
                "tag 100, listed for the interface",
                w1,
                w2,
                tagged(w1, w2, "Dot1Q(vlan=100)", "vlan-100"),
                Outcome::Delivered,
            ),
            shot(
                "tag 100 with another VM's IPv4 as source",
                w1,
                w2,
                format!(
                    "{}/Dot1Q(vlan=100)/IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'vlan-100-spoof')",
                    w1.eth(&w2.mac),
                    w3.v4,
                    w2.v4
                ),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            shot(
                "tag 100, gratuitous ARP for web3's address",
                w1,
                w2,
                format!(
                    "{}/Dot1Q(vlan=100)/ARP(op=1, hwsrc='{m}', psrc='{ip}', pdst='{ip}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    m = w1.mac,
                    ip = w3.v4
                ),
                Outcome::Dropped(verdict::ARP_SPOOF),
            ),
            shot(
                "tag 200, not listed",
                w1,
                w2,
                tagged(w1, w2, "Dot1Q(vlan=200)", "vlan-200"),
                Outcome::Dropped(verdict::VLAN),
            )
            .times(2),
            shot(
                "priority tag (VLAN id 0, 802.1p): no VLAN, as untagged",
                w1,
                w2,
                tagged(w1, w2, "Dot1Q(vlan=0, prio=5)", "vlan-0"),
                Outcome::Delivered,
            ),
            shot(
                "802.1ad 100 + 802.1Q 100 (stacked)",
                w1,
                w2,
                format!(
                    "Ether(src='{}', dst='{}', type=0x88a8)/Dot1Q(vlan=100, type=0x8100)/Dot1Q(vlan=100)/\
                     IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'vlan-qinq-ad')",
                    w1.mac, w2.mac, w1.v4, w2.v4
                ),
                Outcome::Dropped(verdict::VLAN),
            ),
            shot(
                "802.1Q 100 + 802.1Q 100 (QinQ 0x8100/0x8100)",
                w1,
                w2,
                tagged(w1, w2, "Dot1Q(vlan=100)/Dot1Q(vlan=100)", "vlan-qinq-q"),
                Outcome::Dropped(verdict::VLAN),
            ),
        ],
        &mut bad,
    );
    drop(s1);
    // gw2's interface lists no VLAN at all.
    let mut sg = env.scapy("gw2");
    fire_all(
        &env,
        &mut sg,
        &[
            shot(
                "untagged (control)",
                gw2,
                gw1,
                udp4(gw2, &gw2.v4, gw1, &gw1.v4, "gw-vlan-none"),
                Outcome::Delivered,
            ),
            shot(
                "tag 100 from an interface without vlans",
                gw2,
                gw1,
                tagged(gw2, gw1, "Dot1Q(vlan=100)", "gw-vlan-100"),
                Outcome::Dropped(verdict::VLAN),
            ),
        ],
        &mut bad,
    );
    env.verdict("VLAN guard", &bad);
}
