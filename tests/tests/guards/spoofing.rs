//! Source addresses and MACs (cases 1 and 2), and declared identities reserved for their interface.

use isolator_common::verdict;

use super::*;

/// Cases 1 and 2: source MAC and source addresses (IPv4, IPv6, link-local, unspecified).
#[test]
fn spoofed_source_mac_and_addresses_are_dropped() {
    let env = Guards::start("guard-src", "enforce");
    let (w1, w2, w3, db) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("db1"),
    );
    let mut bad = Vec::new();
    let mut s1 = env.scapy("web1");
    let other_mac = "02:15:99:99:99:01";
    let spoof_mac = |mac: &str, marker: &str| {
        format!(
            "Ether(src='{mac}', dst='{}')/IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'{marker}')",
            w3.mac, w1.v4, w3.v4
        )
    };
    fire_all(
        &env,
        &mut s1,
        &[
            // Case 1: source MAC.
            shot(
                "own MAC (control)",
                w1,
                w3,
                spoof_mac(&w1.mac, "mac-own"),
                Outcome::Delivered,
            ),
            shot(
                "another VM's MAC",
                w1,
                w3,
                spoof_mac(&w2.mac, "mac-web2"),
                Outcome::Dropped(verdict::SPOOFED_MAC),
            )
            .times(3),
            shot(
                "an unknown MAC",
                w1,
                w3,
                spoof_mac(other_mac, "mac-other"),
                Outcome::Dropped(verdict::SPOOFED_MAC),
            ),
            shot(
                "ARP from another MAC",
                w1,
                w3,
                format!(
                    "Ether(src='{other_mac}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{other_mac}', psrc='{}', pdst='{}')",
                    w1.v4, w3.v4
                ),
                Outcome::Dropped(verdict::SPOOFED_MAC),
            ),
            // Case 2: declared addresses, IPv4 and IPv6.
            shot(
                "own IPv4 (control)",
                w1,
                w3,
                udp4(w1, &w1.v4, w3, &w3.v4, "ip4-own"),
                Outcome::Delivered,
            ),
            shot(
                "IPv4 of another VM of the segment",
                w1,
                w3,
                udp4(w1, &w2.v4, w3, &w3.v4, "ip4-web2"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            )
            .times(2),
            shot(
                "an undeclared IPv4 of its own segment",
                w1,
                w3,
                udp4(w1, "10.1.1.77", w3, &w3.v4, "ip4-77"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            shot(
                "IPv4 of another segment",
                w1,
                w3,
                udp4(w1, &db.v4, w3, &w3.v4, "ip4-db"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            shot(
                "IPv4 outside every segment",
                w1,
                w3,
                udp4(w1, "192.0.2.1", w3, &w3.v4, "ip4-out"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            shot(
                "own IPv6 (control)",
                w1,
                w3,
                udp6(w1, &w1.v6, w3, &w3.v6, "ip6-own"),
                Outcome::Delivered,
            ),
            shot(
                "IPv6 of another VM of the segment",
                w1,
                w3,
                udp6(w1, &w2.v6, w3, &w3.v6, "ip6-web2"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            )
            .times(2),
            shot(
                "IPv6 of another segment",
                w1,
                w3,
                udp6(w1, &db.v6, w3, &w3.v6, "ip6-db"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            shot(
                "own declared link-local (control)",
                w1,
                w3,
                udp6(w1, &w1.ll, w3, &w3.ll, "ll-own"),
                Outcome::Delivered,
            ),
            shot(
                "another link-local (web1 declared its own)",
                w1,
                w3,
                udp6(w1, &w2.ll, w3, &w3.ll, "ll-web2"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            // The unspecified source: DHCP discovery and DAD only.
            shot(
                "DHCPDISCOVER from 0.0.0.0:68 to 255.255.255.255:67",
                w1,
                w3,
                dhcp_discover(w1),
                Outcome::Delivered,
            ),
            shot(
                "UDP from 0.0.0.0 that is not DHCP discovery",
                w1,
                w3,
                udp4(w1, "0.0.0.0", w3, &w3.v4, "ip4-zero"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            shot(
                "ICMP echo from 0.0.0.0",
                w1,
                w3,
                format!(
                    "{}/IP(src='0.0.0.0', dst='{}')/ICMP()",
                    w1.eth(&w3.mac),
                    w3.v4
                ),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            shot(
                "DHCP from 0.0.0.0:68 to another port",
                w1,
                w3,
                format!(
                    "{}/IP(src='0.0.0.0', dst='255.255.255.255')/UDP(sport=68, dport=69)/Raw(load=b'zero-68-69')",
                    w1.eth("ff:ff:ff:ff:ff:ff")
                ),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            shot(
                "DAD neighbour solicitation from ::",
                w1,
                w3,
                dad_ns(w1, &w1.v6),
                Outcome::Delivered,
            ),
            shot(
                "ICMPv6 echo from ::",
                w1,
                w3,
                format!(
                    "{}/IPv6(src='::', dst='{}')/ICMPv6EchoRequest()",
                    w1.eth(&w3.mac),
                    w3.v6
                ),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            shot(
                "UDP from :: to all nodes",
                w1,
                w3,
                format!(
                    "{}/IPv6(src='::', dst='ff02::1')/UDP(sport=40000, dport=9)/Raw(load=b'zero6')",
                    w1.eth("33:33:00:00:00:01")
                ),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            shot(
                "neighbour advertisement from ::",
                w1,
                w3,
                format!(
                    "{}/IPv6(src='::', dst='ff02::1', hlim=255)/ICMPv6ND_NA(tgt='{}', R=0, S=0, O=1)",
                    w1.eth("33:33:00:00:00:01"),
                    w1.v6
                ),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
        ],
        &mut bad,
    );
    drop(s1);

    // web2 declares nothing: any address of its segment, any link-local address; never
    // another segment's.
    let mut s2 = env.scapy("web2");
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "any IPv4 of its segment (control)",
                w2,
                w3,
                udp4(w2, "10.1.1.77", w3, &w3.v4, "w2-ip4-77"),
                Outcome::Delivered,
            ),
            shot(
                "IPv4 of another segment",
                w2,
                w3,
                udp4(w2, &db.v4, w3, &w3.v4, "w2-ip4-db"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            )
            .times(2),
            shot(
                "any IPv6 of its segment (control)",
                w2,
                w3,
                udp6(w2, "fd00:1:1::77", w3, &w3.v6, "w2-ip6-77"),
                Outcome::Delivered,
            ),
            shot(
                "IPv6 of another segment",
                w2,
                w3,
                udp6(w2, &db.v6, w3, &w3.v6, "w2-ip6-db"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            shot(
                "IPv6 of the gw segment",
                w2,
                w3,
                udp6(w2, "fd00:1:3::2", w3, &w3.v6, "w2-ip6-gw"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            shot(
                "an undeclared link-local (its own by default)",
                w2,
                w3,
                udp6(w2, "fe80::1234", w3, &w3.ll, "w2-ll"),
                Outcome::Delivered,
            ),
        ],
        &mut bad,
    );
    env.verdict("source guard", &bad);
}

/// A declared identity is reserved: web2, a member of web that declares nothing, may not
/// send with web1's declared MAC, with an address web1 declared (IPv4, IPv6, its
/// link-local), nor claim one of them in ARP or in a neighbour advertisement; its own MAC
/// and its own (undeclared) addresses keep working, and so does web1, the owner.
#[test]
fn an_undeclared_vm_cannot_use_a_declared_identity() {
    let env = Guards::start("guard-reserved", "enforce");
    let (w1, w2, w3) = (env.node("web1"), env.node("web2"), env.node("web3"));
    let all_nodes = ("ff02::1", "33:33:00:00:00:01");
    let before = env.scrape();
    let mut bad = Vec::new();

    // Case 5, first part: the owner of the identity reaches the observer, IPv4, IPv6 and
    // link-local (which also gives web3 neighbour entries for web1's three addresses,
    // checked against poisoning at the end).
    let owner_reaches_web3 = |when: &str, bad: &mut Vec<String>| {
        for dst in [&w3.v4, &w3.v6] {
            if !ping(&w1.vm(), dst.parse().unwrap()).unwrap() {
                bad.push(format!("[case 5] web1 -> web3 ({dst}) ping {when} failed"));
            }
        }
        let target = format!("{}%eth0", w3.ll);
        let out = env
            .lab()
            .exec(&w1.ns, &["ping", "-6", "-c", "1", "-W", "2", &target])
            .unwrap();
        if !out.status.success() {
            bad.push(format!(
                "[case 5] web1 -> web3 link-local ping ({target}) {when} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    };
    owner_reaches_web3("before the spoofing attempts", &mut bad);
    for addr in [&w1.v4, &w1.v6, &w1.ll] {
        let now = neigh_mac(&w3.ns, addr);
        assert_eq!(
            now.as_deref(),
            Some(w1.mac.as_str()),
            "web3 must know web1's {addr} by web1's MAC after the pings"
        );
    }
    // Case 5, second part: web1 sends with its declared MAC and every declared address.
    let mut s1 = env.scapy("web1");
    fire_all(
        &env,
        &mut s1,
        &[
            shot(
                "[case 5] the owner's declared IPv4",
                w1,
                w3,
                udp4(w1, &w1.v4, w3, &w3.v4, "rsv-w1-ip4"),
                Outcome::Delivered,
            ),
            shot(
                "[case 5] the owner's declared IPv6",
                w1,
                w3,
                udp6(w1, &w1.v6, w3, &w3.v6, "rsv-w1-ip6"),
                Outcome::Delivered,
            ),
            shot(
                "[case 5] the owner's declared link-local",
                w1,
                w3,
                udp6(w1, &w1.ll, w3, &w3.ll, "rsv-w1-ll"),
                Outcome::Delivered,
            ),
        ],
        &mut bad,
    );
    drop(s1);

    let mut s2 = env.scapy("web2");
    // Case 1: web1's declared MAC as source.
    let with_mac = |mac: &str, marker: &str| {
        format!(
            "Ether(src='{mac}', dst='{}')/IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'{marker}')",
            w3.mac, w2.v4, w3.v4
        )
    };
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "[case 1] own MAC (twin)",
                w2,
                w3,
                with_mac(&w2.mac, "rsv-mac-own"),
                Outcome::Delivered,
            ),
            shot(
                "[case 1] web1's declared MAC, own IPv4",
                w2,
                w3,
                with_mac(&w1.mac, "rsv-mac-web1"),
                Outcome::Dropped(verdict::SPOOFED_MAC),
            )
            .times(3),
            shot(
                "[case 1] web1's declared MAC, own IPv6",
                w2,
                w3,
                format!(
                    "Ether(src='{}', dst='{}')/IPv6(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'rsv-mac6-web1')",
                    w1.mac, w3.mac, w2.v6, w3.v6
                ),
                Outcome::Dropped(verdict::SPOOFED_MAC),
            ),
            shot(
                "[case 1] ARP request from web1's declared MAC for web2's own address",
                w2,
                w3,
                format!(
                    "Ether(src='{m}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{m}', psrc='{}', pdst='{}')",
                    w2.v4,
                    w3.v4,
                    m = w1.mac
                ),
                Outcome::Dropped(verdict::SPOOFED_MAC),
            ),
        ],
        &mut bad,
    );

    // Case 2: web2's own MAC, an address web1 declared as source.
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "[case 2] own IPv4 (twin)",
                w2,
                w3,
                udp4(w2, &w2.v4, w3, &w3.v4, "rsv-ip4-own"),
                Outcome::Delivered,
            ),
            shot(
                "[case 2] an undeclared IPv4 of its segment (twin)",
                w2,
                w3,
                udp4(w2, "10.1.1.77", w3, &w3.v4, "rsv-ip4-77"),
                Outcome::Delivered,
            ),
            shot(
                "[case 2] web1's declared IPv4",
                w2,
                w3,
                udp4(w2, &w1.v4, w3, &w3.v4, "rsv-ip4-web1"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            )
            .times(2),
            shot(
                "[case 2] own IPv6 (twin)",
                w2,
                w3,
                udp6(w2, &w2.v6, w3, &w3.v6, "rsv-ip6-own"),
                Outcome::Delivered,
            ),
            shot(
                "[case 2] web1's declared IPv6",
                w2,
                w3,
                udp6(w2, &w1.v6, w3, &w3.v6, "rsv-ip6-web1"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            )
            .times(2),
            shot(
                "[case 2] own link-local (twin)",
                w2,
                w3,
                udp6(w2, &w2.ll, w3, &w3.ll, "rsv-ll-own"),
                Outcome::Delivered,
            ),
            shot(
                "[case 2] web1's declared link-local",
                w2,
                w3,
                udp6(w2, &w1.ll, w3, &w3.ll, "rsv-ll-web1"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
        ],
        &mut bad,
    );

    // Case 3: ARP claiming web1's declared IPv4. Twin first, and proof that an arriving
    // gratuitous ARP does change the observer's cache.
    let garp = |ip: &str| {
        format!(
            "{}/ARP(op=1, hwsrc='{m}', psrc='{ip}', hwdst='00:00:00:00:00:00', pdst='{ip}')",
            w2.eth("ff:ff:ff:ff:ff:ff"),
            m = w2.mac
        )
    };
    set_neigh(&w3.ns, &w2.v4, BOGUS_MAC);
    bad.extend(
        shot(
            "[case 3] gratuitous ARP for its own address (twin)",
            w2,
            w3,
            garp(&w2.v4),
            Outcome::Delivered,
        )
        .fire(&env, &mut s2)
        .0,
    );
    let now = neigh_becomes(&w3.ns, &w2.v4, &w2.mac, Duration::from_secs(2));
    if now.as_deref() != Some(w2.mac.as_str()) {
        bad.push(format!(
            "[case 3 twin] web2's gratuitous ARP for {} arrived, yet web3's cache says {now:?} \
             instead of {}: the cache check below would prove nothing",
            w2.v4, w2.mac
        ));
    }
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "[case 3] gratuitous ARP request claiming web1's declared IPv4",
                w2,
                w3,
                garp(&w1.v4),
                Outcome::Dropped(verdict::ARP_SPOOF),
            )
            .times(3),
            shot(
                "[case 3] gratuitous ARP reply claiming web1's declared IPv4",
                w2,
                w3,
                format!(
                    "{}/ARP(op=2, hwsrc='{m}', psrc='{ip}', hwdst='{m}', pdst='{ip}')",
                    w2.eth("ff:ff:ff:ff:ff:ff"),
                    m = w2.mac,
                    ip = w1.v4
                ),
                Outcome::Dropped(verdict::ARP_SPOOF),
            ),
            shot(
                "[case 3] unicast ARP reply to web3 claiming web1's declared IPv4",
                w2,
                w3,
                format!(
                    "{}/ARP(op=2, hwsrc='{}', psrc='{}', hwdst='{}', pdst='{}')",
                    w2.eth(&w3.mac),
                    w2.mac,
                    w1.v4,
                    w3.mac,
                    w3.v4
                ),
                Outcome::Dropped(verdict::ARP_SPOOF),
            ),
            shot(
                "[case 3] ARP request for web3 from its own address (twin)",
                w2,
                w3,
                format!(
                    "{}/ARP(op=1, hwsrc='{}', psrc='{}', pdst='{}')",
                    w2.eth("ff:ff:ff:ff:ff:ff"),
                    w2.mac,
                    w2.v4,
                    w3.v4
                ),
                Outcome::Delivered,
            ),
        ],
        &mut bad,
    );

    // Case 4: neighbour advertisements for web1's declared addresses. Twin first, with the
    // same proof that an arriving advertisement changes the observer's cache.
    set_neigh(&w3.ns, &w2.v6, BOGUS_MAC);
    bad.extend(
        shot(
            "[case 4] unsolicited NA for its own address (twin)",
            w2,
            w3,
            na(w2, all_nodes, &w2.v6, &w2.v6, &w2.mac),
            Outcome::Delivered,
        )
        .fire(&env, &mut s2)
        .0,
    );
    let now = neigh_becomes(&w3.ns, &w2.v6, &w2.mac, Duration::from_secs(2));
    if now.as_deref() != Some(w2.mac.as_str()) {
        bad.push(format!(
            "[case 4 twin] web2's NA for {} arrived, yet web3's cache says {now:?} instead of \
             {}: the cache check below would prove nothing",
            w2.v6, w2.mac
        ));
    }
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "[case 4] unsolicited NA for web1's declared IPv6",
                w2,
                w3,
                na(w2, all_nodes, &w2.v6, &w1.v6, &w2.mac),
                Outcome::Dropped(verdict::ND_SPOOF),
            )
            .times(3),
            shot(
                "[case 4] unicast NA to web3 for web1's declared IPv6",
                w2,
                w3,
                na(w2, (&w3.v6, &w3.mac), &w2.v6, &w1.v6, &w2.mac),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
            shot(
                "[case 4] unsolicited NA for web1's declared link-local",
                w2,
                w3,
                na(w2, all_nodes, &w2.ll, &w1.ll, &w2.mac),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
            shot(
                "[case 4] unsolicited NA for its own link-local (twin)",
                w2,
                w3,
                na(w2, all_nodes, &w2.ll, &w2.ll, &w2.mac),
                Outcome::Delivered,
            ),
        ],
        &mut bad,
    );
    drop(s2);

    // Cases 3 and 4: the observer still knows web1's addresses by web1's MAC.
    for addr in [&w1.v4, &w1.v6, &w1.ll] {
        let now = neigh_mac(&w3.ns, addr);
        if now.as_deref() != Some(w1.mac.as_str()) {
            bad.push(format!(
                "[cases 3/4] web3's neighbour cache for web1's {addr} was poisoned: {now:?}, \
                 must stay {}",
                w1.mac
            ));
        }
    }
    // Case 5 again: the owner still reaches the observer after the attempts, and none of
    // its own traffic was dropped on ingress during the whole test.
    owner_reaches_web3("after the spoofing attempts", &mut bad);
    let after = env.scrape();
    let d = delta(
        &ingress_drops(&before, &w1.vif),
        &ingress_drops(&after, &w1.vif),
    );
    if !d.is_empty() {
        bad.push(format!(
            "[case 5] the owner's traffic was dropped at {} (ingress): {}",
            w1.vif,
            fmt_delta(&d)
        ));
    }
    env.verdict("declared identity reserved", &bad);
}
