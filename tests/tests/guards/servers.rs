//! Router advertisements, redirects and DHCP/DHCPv6 server messages (case 5) only from a segment that allows them.

use isolator_common::verdict;

use super::*;

/// Case 5: router advertisements, redirects and DHCP/DHCPv6 server messages only from a
/// segment that allows them.
#[test]
fn router_and_dhcp_server_guards() {
    let env = Guards::start("guard-ra", "enforce");
    let (w1, w2, w3, gw1, gw2) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("gw1"),
        env.node("gw2"),
    );
    let mut bad = Vec::new();
    // The gw segment allows both: its messages arrive (and prove the captures work).
    let mut sg = env.scapy("gw1");
    fire_all(
        &env,
        &mut sg,
        &[
            shot(
                "router advertisement (allowed segment)",
                gw1,
                gw2,
                router_advertisement(gw1, "fd00:1:3::"),
                Outcome::Delivered,
            ),
            shot(
                "IPv6 redirect (allowed segment)",
                gw1,
                gw2,
                redirect6(gw1, gw2),
                Outcome::Delivered,
            ),
            shot(
                "ICMPv4 redirect (allowed segment)",
                gw1,
                gw2,
                redirect4(gw1, gw2),
                Outcome::Delivered,
            ),
            shot(
                "DHCPOFFER (allowed segment)",
                gw1,
                gw2,
                dhcp_offer(gw1, gw2),
                Outcome::Delivered,
            ),
            shot(
                "DHCPv6 Advertise (allowed segment)",
                gw1,
                gw2,
                dhcp6_advertise(gw1, gw2),
                Outcome::Delivered,
            ),
        ],
        &mut bad,
    );
    // Control for the fragment cases below: a fragmented RA from the allowed segment
    // passes whole.
    for (k, f) in ra_fragments(&mut sg, gw1, 0x4301).iter().enumerate() {
        let what = format!("fragmented router advertisement, fragment {k} (allowed segment)");
        bad.extend(
            shot(&what, gw1, gw2, String::new(), Outcome::Delivered).fire_bytes(&env, &mut sg, f),
        );
    }
    drop(sg);
    for (sender, n) in [(w1, 2usize), (w2, 1)] {
        let mut s = env.scapy(sender.name);
        fire_all(
            &env,
            &mut s,
            &[
                shot(
                    "router advertisement",
                    sender,
                    w3,
                    router_advertisement(sender, "fd00:1:1::"),
                    Outcome::Dropped(verdict::RA_GUARD),
                )
                .times(n),
                shot(
                    "IPv6 redirect",
                    sender,
                    w3,
                    redirect6(sender, w3),
                    Outcome::Dropped(verdict::RA_GUARD),
                ),
                shot(
                    "ICMPv4 redirect",
                    sender,
                    w3,
                    redirect4(sender, w3),
                    Outcome::Dropped(verdict::RA_GUARD),
                ),
                shot(
                    "DHCPOFFER from UDP 67",
                    sender,
                    w3,
                    dhcp_offer(sender, w3),
                    Outcome::Dropped(verdict::DHCP_GUARD),
                )
                .times(n),
                shot(
                    "DHCPACK unicast from UDP 67",
                    sender,
                    w3,
                    format!(
                        "{}/IP(src='{s}', dst='{c}')/UDP(sport=67, dport=68)/\
                         BOOTP(op=2, yiaddr='{c}', chaddr=mac2str('{cm}'), xid=0x150151)/\
                         DHCP(options=[('message-type', 'ack'), ('server_id', '{s}'), 'end'])",
                        sender.eth(&w3.mac),
                        s = sender.v4,
                        c = w3.v4,
                        cm = w3.mac
                    ),
                    Outcome::Dropped(verdict::DHCP_GUARD),
                ),
                shot(
                    "DHCPv6 Advertise from UDP 547",
                    sender,
                    w3,
                    dhcp6_advertise(sender, w3),
                    Outcome::Dropped(verdict::DHCP_GUARD),
                ),
                shot(
                    "DHCPv6 Reply from UDP 547 to a global address",
                    sender,
                    w3,
                    format!(
                        "{}/IPv6(src='{}', dst='{}')/UDP(sport=547, dport=546)/DHCP6_Reply(trid=0x1502)",
                        sender.eth(&w3.mac),
                        sender.v6,
                        w3.v6
                    ),
                    Outcome::Dropped(verdict::DHCP_GUARD),
                ),
                // Client messages are not affected.
                shot(
                    "DHCPv6 Solicit from UDP 546 (client, control)",
                    sender,
                    w3,
                    format!(
                        "{}/IPv6(src='{}', dst='ff02::1:2')/UDP(sport=546, dport=547)/DHCP6_Solicit(trid=0x1503)",
                        sender.eth("33:33:00:01:00:02"),
                        sender.ll
                    ),
                    Outcome::Delivered,
                ),
            ],
            &mut bad,
        );
    }
    // Evasions: an RA behind an extension header, fragmented, or with its ICMPv6 header
    // pushed into a later fragment (RFC 7113).
    let mut s1 = env.scapy("web1");
    bad.extend(
        shot(
            "router advertisement behind a destination options header",
            w1,
            w3,
            format!(
                "{}/IPv6(src='{}', dst='ff02::1', hlim=255)/IPv6ExtHdrDestOpt()/ICMPv6ND_RA(routerlifetime=1800)",
                w1.eth("33:33:00:00:00:01"),
                w1.ll
            ),
            Outcome::Dropped(verdict::RA_GUARD),
        )
        .fire(&env, &mut s1)
        .0,
    );
    let frags = ra_fragments(&mut s1, w1, 0x4302);
    bad.extend(
        shot(
            "fragmented router advertisement, first fragment",
            w1,
            w3,
            String::new(),
            Outcome::Dropped(verdict::RA_GUARD),
        )
        .fire_bytes(&env, &mut s1, &frags[0]),
    );
    for f in &frags[1..] {
        bad.extend(
            shot(
                "fragmented router advertisement, later fragment",
                w1,
                w3,
                String::new(),
                Outcome::Dropped(verdict::FRAGMENT),
            )
            .fire_bytes(&env, &mut s1, f),
        );
    }
    let hidden = |offset_part: &str| {
        format!(
            "{}/IPv6(src='{}', dst='ff02::1', hlim=255)/{offset_part}",
            w1.eth("33:33:00:00:00:01"),
            w1.ll
        )
    };
    fire_all(
        &env,
        &mut s1,
        &[
            shot(
                "RA header pushed into the 2nd fragment: 1st fragment (extension header only)",
                w1,
                w3,
                hidden(
                    "IPv6ExtHdrFragment(nh=60, m=1, offset=0, id=0x4303)/\
                     IPv6ExtHdrDestOpt(nh=58, options=[PadN(optdata=b'\\x00' * 12)])",
                ),
                Outcome::Dropped(verdict::FRAGMENT),
            ),
            shot(
                "RA header pushed into the 2nd fragment: 2nd fragment (the RA)",
                w1,
                w3,
                hidden(
                    "IPv6ExtHdrFragment(nh=60, m=0, offset=2, id=0x4303)/\
                     Raw(load=b'\\x86\\x00' + b'\\x00' * 14)",
                ),
                Outcome::Dropped(verdict::FRAGMENT),
            ),
        ],
        &mut bad,
    );
    env.verdict("RA and DHCP guards", &bad);
}

/// DHCP server messages to relay agents: BOOTREPLY from UDP 67 to 67, DHCPv6 Relay-reply
/// from 547 to 547. docs/metrics.md defines `dhcp_guard` by the source port ("a DHCP (UDP
/// source port 67) or DHCPv6 (547) server message"), and a rogue server behind a relay
/// agent sends exactly these.
#[test]
fn dhcp_server_messages_to_relays_are_guarded() {
    let env = Guards::start("guard-relay", "enforce");
    let (w2, w3, gw1, gw2) = (
        env.node("web2"),
        env.node("web3"),
        env.node("gw1"),
        env.node("gw2"),
    );
    let bootreply_to_relay = |from: &Node, to: &Node| {
        format!(
            "{}/IP(src='{}', dst='{}')/UDP(sport=67, dport=67)/\
             BOOTP(op=2, giaddr='{}', yiaddr='10.1.1.50', xid=0x150152)/\
             DHCP(options=[('message-type', 'offer'), 'end'])",
            from.eth(&to.mac),
            from.v4,
            to.v4,
            to.v4
        )
    };
    let relay_reply = |from: &Node, to: &Node| {
        format!(
            "{}/IPv6(src='{}', dst='{}')/UDP(sport=547, dport=547)/\
             DHCP6_RelayReply(linkaddr='{}', peeraddr='fe80::99')",
            from.eth(&to.mac),
            from.v6,
            to.v6,
            to.v6
        )
    };
    let mut bad = Vec::new();
    let mut sg = env.scapy("gw1");
    fire_all(
        &env,
        &mut sg,
        &[
            shot(
                "BOOTREPLY to a relay, 67 -> 67 (allowed segment)",
                gw1,
                gw2,
                bootreply_to_relay(gw1, gw2),
                Outcome::Delivered,
            ),
            shot(
                "DHCPv6 Relay-reply, 547 -> 547 (allowed segment)",
                gw1,
                gw2,
                relay_reply(gw1, gw2),
                Outcome::Delivered,
            ),
        ],
        &mut bad,
    );
    let mut s2 = env.scapy("web2");
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "BOOTREPLY to a relay, 67 -> 67",
                w2,
                w3,
                bootreply_to_relay(w2, w3),
                Outcome::Dropped(verdict::DHCP_GUARD),
            ),
            shot(
                "DHCPv6 Relay-reply, 547 -> 547",
                w2,
                w3,
                relay_reply(w2, w3),
                Outcome::Dropped(verdict::DHCP_GUARD),
            ),
        ],
        &mut bad,
    );
    env.verdict("DHCP relay guard", &bad);
}

/// DHCP answers to the client ports from another source port. Common clients (ISC
/// dhclient's and systemd-networkd's packet-socket filters) match only the destination port
/// 68, and DHCPv6 clients read their bound port 546 from any source: a rogue server that
/// answers from, say, UDP 6767 reaches them unless the guard also covers the client ports.
#[test]
fn dhcp_answers_to_client_ports_from_other_source_ports_are_guarded() {
    let env = Guards::start("guard-dhcpport", "enforce");
    let (w2, w3, gw1, gw2) = (
        env.node("web2"),
        env.node("web3"),
        env.node("gw1"),
        env.node("gw2"),
    );
    let offer = |from: &Node, to: &Node| {
        format!(
            "{}/IP(src='{}', dst='255.255.255.255')/UDP(sport=6767, dport=68)/\
             BOOTP(op=2, yiaddr='{}', siaddr='{}', chaddr=mac2str('{}'), xid=0x150153)/\
             DHCP(options=[('message-type', 'offer'), ('server_id', '{}'), 'end'])",
            from.eth("ff:ff:ff:ff:ff:ff"),
            from.v4,
            to.v4,
            from.v4,
            to.mac,
            from.v4
        )
    };
    let advertise = |from: &Node, to: &Node| {
        format!(
            "{}/IPv6(src='{}', dst='{}')/UDP(sport=6767, dport=546)/DHCP6_Advertise(trid=0x1504)",
            from.eth(&to.mac),
            from.ll,
            to.ll
        )
    };
    let mut bad = Vec::new();
    let mut sg = env.scapy("gw1");
    fire_all(
        &env,
        &mut sg,
        &[
            shot(
                "DHCPOFFER from UDP 6767 to 68 (allowed segment)",
                gw1,
                gw2,
                offer(gw1, gw2),
                Outcome::Delivered,
            ),
            shot(
                "DHCPv6 Advertise from UDP 6767 to 546 (allowed segment)",
                gw1,
                gw2,
                advertise(gw1, gw2),
                Outcome::Delivered,
            ),
        ],
        &mut bad,
    );
    let mut s2 = env.scapy("web2");
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "DHCPOFFER from UDP 6767 to 68",
                w2,
                w3,
                offer(w2, w3),
                Outcome::Dropped(verdict::DHCP_GUARD),
            ),
            shot(
                "DHCPv6 Advertise from UDP 6767 to 546",
                w2,
                w3,
                advertise(w2, w3),
                Outcome::Dropped(verdict::DHCP_GUARD),
            ),
        ],
        &mut bad,
    );
    env.verdict("DHCP client-port guard", &bad);
}
