//! ARP (case 3) and neighbour discovery (case 4): a VM speaks only for its own MAC and addresses, and no third VM's cache is poisoned.

use isolator_common::verdict;

use super::*;

/// Case 3: ARP may only speak for the sender's own MAC and addresses; a gratuitous ARP that
/// takes over another VM's address does not poison a third VM's cache.
#[test]
fn arp_spoofing_is_dropped_and_caches_stay_clean() {
    let env = Guards::start("guard-arp", "enforce");
    let (w1, w2, w3, db) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("db1"),
    );
    let mut bad = Vec::new();
    // The observer web3 learns web2's real MAC for 10.1.1.3.
    assert!(
        ping(&w3.vm(), w2.v4.parse().unwrap()).unwrap(),
        "web3 -> web2 ping (same segment) must work"
    );
    assert_eq!(neigh_mac(&w3.ns, &w2.v4).as_deref(), Some(w2.mac.as_str()));

    let garp = |from: &Node, ip: &str, sha: &str| {
        format!(
            "{}/ARP(op=1, hwsrc='{sha}', psrc='{ip}', hwdst='00:00:00:00:00:00', pdst='{ip}')",
            from.eth("ff:ff:ff:ff:ff:ff")
        )
    };
    let mut s1 = env.scapy("web1");
    // Control: a gratuitous ARP does change the observer's cache when it arrives.
    set_neigh(&w3.ns, &w1.v4, BOGUS_MAC);
    bad.extend(
        shot(
            "gratuitous ARP for its own address (control)",
            w1,
            w3,
            garp(w1, &w1.v4, &w1.mac),
            Outcome::Delivered,
        )
        .fire(&env, &mut s1)
        .0,
    );
    let now = neigh_becomes(&w3.ns, &w1.v4, &w1.mac, Duration::from_secs(2));
    if now.as_deref() != Some(w1.mac.as_str()) {
        bad.push(format!(
            "[control] web1's gratuitous ARP for {} arrived, yet web3's cache says {now:?} \
             instead of {}: the cache check below would prove nothing",
            w1.v4, w1.mac
        ));
    }
    fire_all(
        &env,
        &mut s1,
        &[
            shot(
                "gratuitous ARP request taking over web2's address",
                w1,
                w3,
                garp(w1, &w2.v4, &w1.mac),
                Outcome::Dropped(verdict::ARP_SPOOF),
            )
            .times(3),
            shot(
                "gratuitous ARP reply taking over web2's address",
                w1,
                w3,
                format!(
                    "{}/ARP(op=2, hwsrc='{m}', psrc='{ip}', hwdst='{m}', pdst='{ip}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    m = w1.mac,
                    ip = w2.v4
                ),
                Outcome::Dropped(verdict::ARP_SPOOF),
            ),
            shot(
                "unicast ARP reply to web3 claiming web2's address",
                w1,
                w3,
                format!(
                    "{}/ARP(op=2, hwsrc='{}', psrc='{}', hwdst='{}', pdst='{}')",
                    w1.eth(&w3.mac),
                    w1.mac,
                    w2.v4,
                    w3.mac,
                    w3.v4
                ),
                Outcome::Dropped(verdict::ARP_SPOOF),
            ),
            shot(
                "ARP request with a sender IP of another segment",
                w1,
                w3,
                format!(
                    "{}/ARP(op=1, hwsrc='{}', psrc='{}', pdst='{}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    w1.mac,
                    db.v4,
                    w3.v4
                ),
                Outcome::Dropped(verdict::ARP_SPOOF),
            ),
            shot(
                "ARP request whose sender MAC is not the frame's",
                w1,
                w3,
                format!(
                    "{}/ARP(op=1, hwsrc='{}', psrc='{}', pdst='{}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    w2.mac,
                    w1.v4,
                    w3.v4
                ),
                Outcome::Dropped(verdict::ARP_SPOOF),
            ),
            shot(
                "ARP request for web3 from its own address (control)",
                w1,
                w3,
                format!(
                    "{}/ARP(op=1, hwsrc='{}', psrc='{}', pdst='{}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    w1.mac,
                    w1.v4,
                    w3.v4
                ),
                Outcome::Delivered,
            ),
            shot(
                "ARP probe from 0.0.0.0",
                w1,
                w3,
                format!(
                    "{}/ARP(op=1, hwsrc='{}', psrc='0.0.0.0', pdst='{}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    w1.mac,
                    w1.v4
                ),
                Outcome::Delivered,
            ),
        ],
        &mut bad,
    );
    drop(s1);
    // web2 declares no identity: still only its own MAC as ARP sender, only its segment's
    // addresses.
    let mut s2 = env.scapy("web2");
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "gratuitous ARP for an address of its segment (control)",
                w2,
                w3,
                garp(w2, "10.1.1.77", &w2.mac),
                Outcome::Delivered,
            ),
            shot(
                "gratuitous ARP for an address of another segment",
                w2,
                w3,
                garp(w2, &db.v4, &w2.mac),
                Outcome::Dropped(verdict::ARP_SPOOF),
            ),
            shot(
                "gratuitous ARP naming another MAC as sender",
                w2,
                w3,
                garp(w2, &w2.v4, BOGUS_MAC),
                Outcome::Dropped(verdict::ARP_SPOOF),
            ),
        ],
        &mut bad,
    );
    // The observer still knows web2 by its real MAC, and still reaches it.
    let now = neigh_mac(&w3.ns, &w2.v4);
    if now.as_deref() != Some(w2.mac.as_str()) {
        bad.push(format!(
            "web3's ARP cache for web2 ({}) was poisoned: {now:?}, must stay {}",
            w2.v4, w2.mac
        ));
    }
    if !ping(&w3.vm(), w2.v4.parse().unwrap()).unwrap() {
        bad.push("web3 -> web2 ping fails after the ARP spoofing attempts".into());
    }
    env.verdict("ARP guard", &bad);
}

/// Case 4: neighbour advertisements only for the sender's own addresses and MAC.
#[test]
fn neighbour_advertisement_spoofing_is_dropped() {
    let env = Guards::start("guard-nd", "enforce");
    let (w1, w2, w3, db) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("db1"),
    );
    let all_nodes = ("ff02::1", "33:33:00:00:00:01");
    let mut bad = Vec::new();
    assert!(
        ping(&w3.vm(), w2.v6.parse().unwrap()).unwrap(),
        "web3 -> web2 ping6 (same segment) must work"
    );
    assert_eq!(neigh_mac(&w3.ns, &w2.v6).as_deref(), Some(w2.mac.as_str()));

    let mut s1 = env.scapy("web1");
    set_neigh(&w3.ns, &w1.v6, BOGUS_MAC);
    bad.extend(
        shot(
            "unsolicited NA for its own address (control)",
            w1,
            w3,
            na(w1, all_nodes, &w1.v6, &w1.v6, &w1.mac),
            Outcome::Delivered,
        )
        .fire(&env, &mut s1)
        .0,
    );
    let now = neigh_becomes(&w3.ns, &w1.v6, &w1.mac, Duration::from_secs(2));
    if now.as_deref() != Some(w1.mac.as_str()) {
        bad.push(format!(
            "[control] web1's NA for {} arrived, yet web3's cache says {now:?} instead of {}: \
             the cache check below would prove nothing",
            w1.v6, w1.mac
        ));
    }
    fire_all(
        &env,
        &mut s1,
        &[
            shot(
                "NA for web2's address",
                w1,
                w3,
                na(w1, all_nodes, &w1.v6, &w2.v6, &w1.mac),
                Outcome::Dropped(verdict::ND_SPOOF),
            )
            .times(3),
            shot(
                "unicast NA to web3 for web2's address",
                w1,
                w3,
                na(w1, (&w3.v6, &w3.mac), &w1.v6, &w2.v6, &w1.mac),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
            shot(
                "NA for its own address with web2's MAC as target link-layer address",
                w1,
                w3,
                na(w1, all_nodes, &w1.v6, &w1.v6, &w2.mac),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
            shot(
                "NA for web2's link-local address",
                w1,
                w3,
                na(w1, all_nodes, &w1.ll, &w2.ll, &w1.mac),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
            shot(
                "NA for an address of another segment",
                w1,
                w3,
                na(w1, all_nodes, &w1.v6, &db.v6, &w1.mac),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
            shot(
                "NS with another MAC as source link-layer address",
                w1,
                w3,
                format!(
                    "{}/IPv6(src='{}', dst='{}', hlim=255)/ICMPv6ND_NS(tgt='{}')/ICMPv6NDOptSrcLLAddr(lladdr='{}')",
                    w1.eth(&w3.mac),
                    w1.v6,
                    w3.v6,
                    w3.v6,
                    w2.mac
                ),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
            shot(
                "NS with its own source link-layer address (control)",
                w1,
                w3,
                format!(
                    "{}/IPv6(src='{}', dst='{}', hlim=255)/ICMPv6ND_NS(tgt='{}')/ICMPv6NDOptSrcLLAddr(lladdr='{}')",
                    w1.eth(&w3.mac),
                    w1.v6,
                    w3.v6,
                    w3.v6,
                    w1.mac
                ),
                Outcome::Delivered,
            ),
        ],
        &mut bad,
    );
    drop(s1);
    let mut s2 = env.scapy("web2");
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "NA for its own address (control)",
                w2,
                w3,
                na(w2, all_nodes, &w2.v6, &w2.v6, &w2.mac),
                Outcome::Delivered,
            ),
            shot(
                "NA for an address of another segment",
                w2,
                w3,
                na(w2, all_nodes, &w2.v6, &db.v6, &w2.mac),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
            shot(
                "NA with another MAC as target link-layer address",
                w2,
                w3,
                na(w2, all_nodes, &w2.v6, &w2.v6, BOGUS_MAC),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
        ],
        &mut bad,
    );
    let now = neigh_mac(&w3.ns, &w2.v6);
    if now.as_deref() != Some(w2.mac.as_str()) {
        bad.push(format!(
            "web3's neighbour cache for web2 ({}) was poisoned: {now:?}, must stay {}",
            w2.v6, w2.mac
        ));
    }
    if !ping(&w3.vm(), w2.v6.parse().unwrap()).unwrap() {
        bad.push("web3 -> web2 ping6 fails after the ND spoofing attempts".into());
    }
    env.verdict("ND guard", &bad);
}

/// Case 4, the link-layer address option wherever it sits. Linux reads every option of a
/// neighbour solicitation or advertisement, and of two source or target link-layer
/// options it uses the first: the guard must not look at fewer options, nor at another one,
/// than the receiver does.
#[test]
fn nd_link_layer_options_are_checked_wherever_they_sit() {
    let env = Guards::start("guard-ndopt", "enforce");
    let (w1, w3) = (env.node("web1"), env.node("web3"));
    let mut bad = Vec::new();
    let mut s1 = env.scapy("web1");
    let na_opts = |opts: &str| {
        format!(
            "{}/IPv6(src='{v6}', dst='ff02::1', hlim=255)/ICMPv6ND_NA(tgt='{v6}', R=0, S=0, O=1)/{opts}",
            w1.eth("33:33:00:00:00:01"),
            v6 = w1.v6
        )
    };
    let ns_opts = |opts: &str| {
        format!(
            "{}/IPv6(src='{}', dst='{}', hlim=255)/ICMPv6ND_NS(tgt='{}')/{opts}",
            w1.eth(&w3.mac),
            w1.v6,
            w3.v6,
            w3.v6
        )
    };
    let three = "ICMPv6NDOptMTU()/ICMPv6NDOptMTU()/ICMPv6NDOptMTU()";
    let tlla = |mac: &str| format!("ICMPv6NDOptDstLLAddr(lladdr='{mac}')");
    let slla = |mac: &str| format!("ICMPv6NDOptSrcLLAddr(lladdr='{mac}')");
    // Control: web3 does take the link-layer address from the 4th option.
    set_neigh(&w3.ns, &w1.v6, BOGUS_MAC);
    bad.extend(
        shot(
            "NA for its own address, its MAC in the 4th option (control)",
            w1,
            w3,
            na_opts(&format!("{three}/{}", tlla(&w1.mac))),
            Outcome::Delivered,
        )
        .fire(&env, &mut s1)
        .0,
    );
    let now = neigh_becomes(&w3.ns, &w1.v6, &w1.mac, Duration::from_secs(2));
    if now.as_deref() != Some(w1.mac.as_str()) {
        bad.push(format!(
            "[control] web1's NA with its MAC in the 4th option arrived, yet web3's cache says \
             {now:?} instead of {}: the cache check below would prove nothing",
            w1.mac
        ));
    }
    fire_all(
        &env,
        &mut s1,
        &[
            shot(
                "NA for its own address, another MAC in the 4th option",
                w1,
                w3,
                na_opts(&format!("{three}/{}", tlla(BOGUS_MAC))),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
            shot(
                "NA for its own address, two target link-layer options, another MAC first",
                w1,
                w3,
                na_opts(&format!("{}/{}", tlla(BOGUS_MAC), tlla(&w1.mac))),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
            shot(
                "NA for its own address, two target link-layer options, another MAC second",
                w1,
                w3,
                na_opts(&format!("{}/{}", tlla(&w1.mac), tlla(BOGUS_MAC))),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
            shot(
                "NS, another MAC in the 4th option",
                w1,
                w3,
                ns_opts(&format!("{three}/{}", slla(BOGUS_MAC))),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
            shot(
                "NS, two source link-layer options, another MAC first",
                w1,
                w3,
                ns_opts(&format!("{}/{}", slla(BOGUS_MAC), slla(&w1.mac))),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
        ],
        &mut bad,
    );
    let now = neigh_mac(&w3.ns, &w1.v6);
    if now.as_deref() != Some(w1.mac.as_str()) {
        bad.push(format!(
            "web3's neighbour cache for web1 ({}) was redirected: {now:?}, must stay {}",
            w1.v6, w1.mac
        ));
    }
    env.verdict("ND link-layer options", &bad);
}
