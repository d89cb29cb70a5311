//! Fragments (case 7): a later fragment passes only with its first.

use isolator_common::verdict;

use std::net::{IpAddr, SocketAddr, UdpSocket};

use isolator_tests::netns::in_netns;

use super::*;

/// A UDP socket bound to `addr:port` in `ns`; stays in that namespace.
fn udp_listener(ns: &str, addr: &str, port: u16) -> UdpSocket {
    let sa = SocketAddr::new(addr.parse::<IpAddr>().unwrap(), port);
    in_netns(ns, || {
        let s = UdpSocket::bind(sa)?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        Ok(s)
    })
    .unwrap_or_else(|e| panic!("UDP listener {sa} in {ns}: {e:#}"))
}

/// Every datagram the socket received (until it is quiet for its read timeout).
fn received(sock: &UdpSocket) -> Vec<Vec<u8>> {
    isolator_tests::net::drain_udp(sock)
}

/// Case 7, fragments: within a segment a fragmented datagram passes whole and is
/// reassembled; a later fragment alone, or one whose first was dropped, never passes; a
/// first fragment must hold the whole transport header.
#[test]
fn fragments_pass_only_with_their_first() {
    let env = Guards::start("guard-frag", "enforce");
    let (w1, w3, db) = (env.node("web1"), env.node("web3"), env.node("db1"));
    let mut bad = Vec::new();
    let mut s = env.scapy("web1");

    // The frames (Ethernet included) of a fragmented UDP datagram with about 100 bytes of
    // payload, `marker-` repeated.
    let mut frags = |v6: bool, to: &Node, id: u32, port: u16, marker: &str| -> Vec<Vec<u8>> {
        let payload = format!("{marker}-").repeat(96 / (marker.len() + 1) + 1);
        let expr = if v6 {
            format!(
                "[{}/f for f in fragment6(IPv6(src='{}', dst='{}')/IPv6ExtHdrFragment(id={id})/\
                 UDP(sport=40000, dport={port})/Raw(load=b'{payload}'), 104)]",
                w1.eth(&to.mac),
                w1.v6,
                to.v6
            )
        } else {
            format!(
                "[{}/f for f in fragment(IP(src='{}', dst='{}', id={id})/\
                 UDP(sport=40000, dport={port})/Raw(load=b'{payload}'), fragsize=56)]",
                w1.eth(&to.mac),
                w1.v4,
                to.v4
            )
        };
        let f = s.build_list(&expr).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(f.len() >= 2, "{expr} gave {} fragments", f.len());
        f
    };
    let mut all = Vec::new();
    for (v6, fam) in [(false, "IPv4"), (true, "IPv6")] {
        let (w3_addr, db_addr) = if v6 {
            (&w3.v6, &db.v6)
        } else {
            (&w3.v4, &db.v4)
        };
        all.push((
            fam,
            frags(v6, w3, 0x4201, 7001, "same"),
            frags(v6, w3, 0x4202, 7001, "alone"),
            frags(v6, db, 0x4203, 7001, "cross"),
            w3_addr.clone(),
            db_addr.clone(),
        ));
    }
    for (fam, same, alone, cross, w3_addr, db_addr) in &all {
        // Within the segment: first and later fragments pass, the target reassembles.
        let sock = udp_listener(&w3.ns, w3_addr, 7001);
        let what_first = format!("{fam} first fragment, same segment");
        let what_later = format!("{fam} later fragment, same segment");
        bad.extend(
            shot(&what_first, w1, w3, String::new(), Outcome::Delivered)
                .fire_bytes(&env, &mut s, &same[0]),
        );
        for f in &same[1..] {
            bad.extend(
                shot(&what_later, w1, w3, String::new(), Outcome::Delivered)
                    .fire_bytes(&env, &mut s, f),
            );
        }
        let got = received(&sock);
        if got.len() != 1 || !got[0].starts_with(b"same-") {
            bad.push(format!(
                "[{fam} fragmented datagram within the segment] web3 must receive it reassembled \
                 once, got {} datagram(s): {:?}",
                got.len(),
                got.iter()
                    .map(|d| String::from_utf8_lossy(d).into_owned())
                    .collect::<Vec<_>>()
            ));
        }
        // A later fragment without its first.
        let what = format!("{fam} later fragment without its first");
        bad.extend(
            shot(
                &what,
                w1,
                w3,
                String::new(),
                Outcome::Dropped(verdict::FRAGMENT),
            )
            .fire_bytes(&env, &mut s, &alone[1]),
        );
        let got = received(&sock);
        if !got.is_empty() {
            bad.push(format!("[{what}] web3 received {} datagram(s)", got.len()));
        }
        // Across segments: the first is judged (cross_segment), the later has no first.
        let sock = udp_listener(&db.ns, db_addr, 7001);
        let what_first = format!("{fam} first fragment to another segment");
        let what_later = format!("{fam} later fragment to another segment");
        bad.extend(
            shot(
                &what_first,
                w1,
                db,
                String::new(),
                Outcome::Dropped(verdict::CROSS_SEGMENT),
            )
            .fire_bytes(&env, &mut s, &cross[0]),
        );
        for f in &cross[1..] {
            bad.extend(
                shot(
                    &what_later,
                    w1,
                    db,
                    String::new(),
                    Outcome::Dropped(verdict::FRAGMENT),
                )
                .fire_bytes(&env, &mut s, f),
            );
        }
        let got = received(&sock);
        if !got.is_empty() {
            bad.push(format!(
                "[{fam} fragmented datagram to another segment] db1 received {} datagram(s)",
                got.len()
            ));
        }
    }

    // TCP: a first fragment too short for the TCP header; a fragment 8 bytes in (over the
    // flags) after a proper first, while the proper later fragment of the same datagram
    // passes.
    let ip = format!("src='{}', dst='{}'", w1.v4, w3.v4);
    let eth = w1.eth(&w3.mac);
    fire_all(
        &env,
        &mut s,
        &[
            shot(
                "TCP first fragment with 8 bytes of TCP header",
                w1,
                w3,
                format!(
                    "{eth}/IP({ip}, id=0x4210, flags='MF', frag=0, proto=6)/Raw(load=bytes(TCP(sport=40000, dport=80, flags='S'))[:8])"
                ),
                Outcome::Dropped(verdict::FRAGMENT),
            ),
            shot(
                "TCP first fragment with the whole header",
                w1,
                w3,
                format!(
                    "{eth}/IP({ip}, id=0x4211, flags='MF', frag=0)/TCP(sport=40000, dport=80, flags='S')/Raw(load=b'x' * 12)"
                ),
                Outcome::Delivered,
            ),
            shot(
                "TCP fragment at offset 8 bytes (over the flags)",
                w1,
                w3,
                format!(
                    "{eth}/IP({ip}, id=0x4211, flags='MF', frag=1, proto=6)/Raw(load=b'\\x00' * 24)"
                ),
                Outcome::Dropped(verdict::FRAGMENT),
            ),
            shot(
                "TCP later fragment at offset 32 bytes",
                w1,
                w3,
                format!("{eth}/IP({ip}, id=0x4211, frag=4, proto=6)/Raw(load=b'y' * 16)"),
                Outcome::Delivered,
            ),
            shot(
                "UDP first fragment with 4 bytes of UDP header",
                w1,
                w3,
                format!(
                    "{eth}/IP({ip}, id=0x4212, flags='MF', frag=0, proto=17)/Raw(load=bytes(UDP(sport=40000, dport=9))[:4])"
                ),
                Outcome::Dropped(verdict::FRAGMENT),
            ),
        ],
        &mut bad,
    );
    env.verdict("fragments", &bad);
}
