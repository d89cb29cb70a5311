//! Connection tracking beyond TCP's handshake (BPF_PROG_TEST_RUN, both programs): UDP
//! conversations over a flow, over `egress: allow` and to an exposed endpoint; ICMP echo
//! (IPv4 and IPv6); FIN closing and the closing timeout; idle timeouts of 1 s, expired on
//! lookup and by the daemon's sweep. Every refused frame stands next to its twin that
//! passes (the same conversation's reply), and `expired` is read from the kernel's event
//! counters.
//!
//! Rows run in order on one loaded program, so they build on each other as a real
//! exchange would (docs/design.md, "Connection tracking").

use std::time::Duration;

use isolator::compile::Plan;
use isolator::policy;
use isolator_common::{conntrack, verdict};
use isolator_tests::frame::{
    self, ACK, FIN, L4, SYN, SYN_ACK, echo_reply, echo_request, tcp, tcp_at, udp,
};

use crate::fixture::{Lab, ROUTER_MAC, VM_MAC, from_outside, in_private_netns, ip, out, row};

/// The tables' policy with `tracking` as its `connection_tracking` (empty: the defaults).
///
/// | segment   | egress | what                                                   |
/// |-----------|--------|--------------------------------------------------------|
/// | acme/web  | allow  | flows to db: UDP 5353, ICMP                            |
/// | acme/db   | deny   | exposes UDP 7000 and TCP 80 at 10.1.2.10, fd00:1:2::10 |
fn policy(tracking: &str) -> String {
    format!(
        r#"
version: 1
{tracking}
tenants:
  - name: acme
    flows:
      - {{from: web, to: db, protocol: udp, ports: 5353}}
      - {{from: web, to: db, protocol: icmp}}
    segments:
      - name: web
        interfaces: ["c-aw*"]
        prefixes: ["10.1.1.0/24", "fd00:1:1::/64"]
      - name: db
        egress: deny
        interfaces: ["c-ad"]
        prefixes: ["10.1.2.0/24", "fd00:1:2::/64"]
        expose:
          - {{address: 10.1.2.10, protocol: udp, ports: 7000}}
          - {{address: "fd00:1:2::10", protocol: udp, ports: 7000}}
          - {{address: 10.1.2.10, protocol: tcp, ports: 80}}
          - {{address: "fd00:1:2::10", protocol: tcp, ports: 80}}
"#
    )
}

const LINKS: &[&str] = &["c-aw1", "c-aw2", "c-ad"];

/// Timeouts of one second for everything that can end by idling.
const SHORT: &str = "connection_tracking:
  udp_idle_seconds: 1
  icmp_idle_seconds: 1
  tcp_closing_seconds: 1";

/// Longer than the one-second timeouts of [`SHORT`].
const PAST_TIMEOUT: Duration = Duration::from_millis(1300);

/// The addresses of one family: a VM of web, a VM of db, db's exposed address, a host
/// outside every segment, another one.
struct Family {
    web: &'static str,
    db: &'static str,
    db_exposed: &'static str,
    outside: &'static str,
    other_outside: &'static str,
}

const V4: Family = Family {
    web: "10.1.1.2",
    db: "10.1.2.5",
    db_exposed: "10.1.2.10",
    outside: "198.51.100.7",
    other_outside: "198.51.100.8",
};

const V6: Family = Family {
    web: "fd00:1:1::2",
    db: "fd00:1:2::5",
    db_exposed: "fd00:1:2::10",
    outside: "2001:db8::7",
    other_outside: "2001:db8::8",
};

/// The UDP conversations of one family: each request opens, its reply passes, and the
/// same peer's datagram to another port (or from another port, or another peer) does not.
fn udp_rows(f: &Family) -> Vec<crate::fixture::Row> {
    let Family {
        web,
        db,
        db_exposed,
        outside,
        other_outside,
    } = *f;
    vec![
        // Over the flow web -> db (UDP 5353): tracked at both vifs.
        row(
            "UDP over the flow opens a conversation (at web)",
            "c-aw1",
            ip(web, db, udp(40000, 5353)),
            verdict::PASS,
        ),
        out(
            "delivered over the flow (opens at db)",
            "c-ad",
            ip(web, db, udp(40000, 5353)),
            verdict::PASS,
        )
        .from("c-aw1"),
        row(
            "db's reply leaves db (egress deny) as part of the conversation",
            "c-ad",
            ip(db, web, udp(5353, 40000)),
            verdict::PASS,
        ),
        out(
            "and is delivered to web",
            "c-aw1",
            ip(db, web, udp(5353, 40000)),
            verdict::PASS,
        )
        .from("c-ad"),
        row(
            "db's unsolicited datagram from the same port to another port of web",
            "c-ad",
            ip(db, web, udp(5353, 40001)),
            verdict::CROSS_SEGMENT,
        ),
        out(
            "the same, were it delivered to web",
            "c-aw1",
            ip(db, web, udp(5353, 40001)),
            verdict::CROSS_SEGMENT,
        )
        .from("c-ad"),
        row(
            "db's datagram from another port to the conversation's port",
            "c-ad",
            ip(db, web, udp(5354, 40000)),
            verdict::CROSS_SEGMENT,
        ),
        row(
            "web's next datagram of the conversation",
            "c-aw1",
            ip(web, db, udp(40000, 5353)),
            verdict::PASS,
        ),
        row(
            "and db's second reply",
            "c-ad",
            ip(db, web, udp(5353, 40000)),
            verdict::PASS,
        ),
        row(
            "web to a port the flow does not allow",
            "c-aw1",
            ip(web, db, udp(40002, 5354)),
            verdict::CROSS_SEGMENT,
        ),
        // Out of web (egress allow) to a host outside every segment.
        row(
            "UDP to outside (egress allow) opens a conversation",
            "c-aw1",
            ip(web, outside, udp(41000, 53)),
            verdict::PASS,
        ),
        out(
            "the outside host's reply reaches the VM",
            "c-aw1",
            from_outside(outside, web, udp(53, 41000)),
            verdict::PASS,
        ),
        out(
            "the outside host's datagram from the same port to another port of the VM",
            "c-aw1",
            from_outside(outside, web, udp(53, 41001)),
            verdict::NOT_EXPOSED,
        ),
        out(
            "the outside host's datagram from another port to the conversation's port",
            "c-aw1",
            from_outside(outside, web, udp(54, 41000)),
            verdict::NOT_EXPOSED,
        ),
        out(
            "another outside host with the conversation's ports",
            "c-aw1",
            from_outside(other_outside, web, udp(53, 41000)),
            verdict::NOT_EXPOSED,
        ),
        out(
            "the reply's 5-tuple sent by a VM of db is not the conversation's (its peer is outside)",
            "c-aw1",
            ip(outside, web, udp(53, 41000)),
            verdict::CROSS_SEGMENT,
        )
        .from("c-ad"),
        out(
            "the other VM of web never opened it",
            "c-aw2",
            from_outside(outside, web, udp(53, 41000)),
            verdict::NOT_EXPOSED,
        ),
        out(
            "the outside host's second reply",
            "c-aw1",
            from_outside(outside, web, udp(53, 41000)),
            verdict::PASS,
        ),
        // From outside to db's exposed UDP endpoint: db has egress deny, yet replies pass.
        out(
            "from outside to the exposed UDP endpoint",
            "c-ad",
            from_outside(outside, db_exposed, udp(42000, 7000)),
            verdict::PASS,
        ),
        row(
            "the server's reply leaves db (egress deny)",
            "c-ad",
            ip(db_exposed, outside, udp(7000, 42000)),
            verdict::PASS,
        ),
        row(
            "the server's datagram from the same port to another port of the client",
            "c-ad",
            ip(db_exposed, outside, udp(7000, 42001)),
            verdict::EGRESS_DENIED,
        ),
        row(
            "the server's datagram to another outside host",
            "c-ad",
            ip(db_exposed, other_outside, udp(7000, 42000)),
            verdict::EGRESS_DENIED,
        ),
        row(
            "the server's second reply",
            "c-ad",
            ip(db_exposed, outside, udp(7000, 42000)),
            verdict::PASS,
        ),
        out(
            "from outside to a UDP port db does not expose",
            "c-ad",
            from_outside(outside, db_exposed, udp(42000, 7001)),
            verdict::NOT_EXPOSED,
        ),
    ]
}

#[test]
fn udp_conversations_over_a_flow_egress_and_an_exposed_endpoint() {
    in_private_netns(|| {
        let mut lab = Lab::new(&policy(""), LINKS);
        let (opened_before, _) = events(&lab);
        let mut rows = udp_rows(&V4);
        rows.extend(udp_rows(&V6));
        lab.check_all(&rows);
        let (opened, _) = events(&lab);
        // Per family: the flow's at web and at db, egress's at web, the exposed one at db.
        assert_eq!(
            opened - opened_before,
            8,
            "each conversation opens once at each vif it crosses, nothing else opens"
        );
    });
}

/// The ICMP echo rows of one family.
fn echo_rows(f: &Family) -> Vec<crate::fixture::Row> {
    let Family {
        web,
        db,
        outside,
        other_outside,
        ..
    } = *f;
    vec![
        row(
            "web's echo request to outside (egress allow)",
            "c-aw1",
            ip(web, outside, echo_request(77)),
            verdict::PASS,
        ),
        out(
            "its echo reply reaches the VM",
            "c-aw1",
            from_outside(outside, web, echo_reply(77)),
            verdict::PASS,
        ),
        out(
            "an echo reply with another identifier does not",
            "c-aw1",
            from_outside(outside, web, echo_reply(78)),
            verdict::NOT_EXPOSED,
        ),
        out(
            "nor the same echo reply from another outside host",
            "c-aw1",
            from_outside(other_outside, web, echo_reply(77)),
            verdict::NOT_EXPOSED,
        ),
        out(
            "nor an echo request from outside (web exposes no ICMP)",
            "c-aw1",
            from_outside(outside, web, echo_request(77)),
            verdict::NOT_EXPOSED,
        ),
        out(
            "nor the echo reply at the other VM of web",
            "c-aw2",
            from_outside(outside, web, echo_reply(77)),
            verdict::NOT_EXPOSED,
        ),
        row(
            "web's echo request over the ICMP flow to db",
            "c-aw1",
            ip(web, db, echo_request(90)),
            verdict::PASS,
        ),
        out(
            "delivered to db",
            "c-ad",
            ip(web, db, echo_request(90)),
            verdict::PASS,
        )
        .from("c-aw1"),
        row(
            "db's echo reply leaves db (egress deny)",
            "c-ad",
            ip(db, web, echo_reply(90)),
            verdict::PASS,
        ),
        out(
            "and reaches web",
            "c-aw1",
            ip(db, web, echo_reply(90)),
            verdict::PASS,
        )
        .from("c-ad"),
        row(
            "db's echo reply nobody asked for",
            "c-ad",
            ip(db, web, echo_reply(91)),
            verdict::CROSS_SEGMENT,
        ),
        row(
            "db's echo request to web (the flow goes the other way)",
            "c-ad",
            ip(db, web, echo_request(92)),
            verdict::CROSS_SEGMENT,
        ),
        row(
            "db's echo request to outside (egress deny)",
            "c-ad",
            ip(db, outside, echo_request(93)),
            verdict::EGRESS_DENIED,
        ),
        row(
            "db's echo reply to outside nobody asked for",
            "c-ad",
            ip(db, outside, echo_reply(93)),
            verdict::EGRESS_DENIED,
        ),
    ]
}

#[test]
fn icmp_echo_is_tracked_by_identifier_v4_and_v6() {
    in_private_netns(|| {
        let mut lab = Lab::new(&policy(""), LINKS);
        let mut rows = echo_rows(&V4);
        rows.extend(echo_rows(&V6));
        lab.check_all(&rows);
    });
}

/// (opened, expired) in the kernel's event counters, summed over CPUs.
fn events(lab: &Lab) -> (u64, u64) {
    let (_, _, events) = lab.dp.conntrack().expect("conntrack events");
    (
        events[conntrack::EVENT_CREATED as usize],
        events[conntrack::EVENT_EXPIRED as usize],
    )
}

/// Tracked connections in every vif's tables.
fn entries(lab: &Lab) -> u64 {
    lab.dp.conntrack().expect("conntrack entries").0
}

/// Sequence numbers of the TCP conversations: the client's and the server's initial ones.
const C: u32 = 1000;
const S: u32 = 5000;

/// A TCP segment from outside to db's exposed TCP endpoint, and one back.
fn to_server(sport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    from_outside(
        V4.outside,
        V4.db_exposed,
        tcp_at(sport, 80, flags, seq, ack),
    )
}

fn to_client(dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    ip(
        V4.db_exposed,
        V4.outside,
        tcp_at(80, dport, flags, seq, ack),
    )
}

/// The handshake of a connection from outside to db's exposed TCP 80 (egress deny: the
/// server's segments pass only as part of it).
fn handshake(sport: u16) -> Vec<crate::fixture::Row> {
    vec![
        out("SYN", "c-ad", to_server(sport, SYN, C, 0), verdict::PASS),
        row(
            "SYN-ACK",
            "c-ad",
            to_client(sport, SYN_ACK, S, C + 1),
            verdict::PASS,
        ),
        out(
            "ACK",
            "c-ad",
            to_server(sport, ACK, C + 1, S + 1),
            verdict::PASS,
        ),
    ]
}

/// FIN closes one direction; both FINs make the connection `CLOSING`, which ends after
/// `tcp_closing_seconds` (1 s): the server's next segment is then judged anew and refused.
/// A connection established just as long ago, not closed, lives on. A FIN far from its
/// sender's position is not part of the connection.
#[test]
fn fin_closing_and_the_closing_timeout() {
    in_private_netns(|| {
        let mut lab = Lab::new(&policy(SHORT), LINKS);
        let (closed, open) = (43000, 43001);
        let mut rows = handshake(closed);
        rows.extend(handshake(open));
        rows.extend([
            row(
                "a FIN from the server far from its position is not part of the connection",
                "c-ad",
                to_client(closed, FIN | ACK, S + 1 + (1 << 21), C + 1),
                verdict::EGRESS_DENIED,
            ),
            out(
                "the client's FIN closes its direction",
                "c-ad",
                to_server(closed, FIN | ACK, C + 1, S + 1),
                verdict::PASS,
            ),
            row(
                "the server still sends (half-close)",
                "c-ad",
                to_client(closed, ACK, S + 1, C + 2),
                verdict::PASS,
            ),
            row(
                "the server's FIN: both directions closed",
                "c-ad",
                to_client(closed, FIN | ACK, S + 1, C + 2),
                verdict::PASS,
            ),
            out(
                "the client's last ACK, within the closing timeout",
                "c-ad",
                to_server(closed, ACK, C + 2, S + 2),
                verdict::PASS,
            ),
        ]);
        lab.check_all(&rows);
        let (_, expired_before) = events(&lab);
        std::thread::sleep(PAST_TIMEOUT);
        lab.check_all(&[
            row(
                "after tcp_closing_seconds the closed connection's server segment is refused",
                "c-ad",
                to_client(closed, ACK, S + 2, C + 2),
                verdict::EGRESS_DENIED,
            ),
            row(
                "the connection established as long ago, not closed, lives on",
                "c-ad",
                to_client(open, ACK, S + 1, C + 1),
                verdict::PASS,
            ),
        ]);
        let (_, expired) = events(&lab);
        assert_eq!(
            expired - expired_before,
            1,
            "the closed connection expired (on lookup), the open one did not"
        );
        // A new SYN on a 5-tuple both sides closed starts over (before its timeout).
        let reused = 43002;
        let mut rows = handshake(reused);
        rows.extend([
            out(
                "FIN from the client",
                "c-ad",
                to_server(reused, FIN | ACK, C + 1, S + 1),
                verdict::PASS,
            ),
            row(
                "FIN from the server",
                "c-ad",
                to_client(reused, FIN | ACK, S + 1, C + 2),
                verdict::PASS,
            ),
            out(
                "a new SYN on the closed 5-tuple (exposed endpoint) passes",
                "c-ad",
                to_server(reused, SYN, C + 100_000, 0),
                verdict::PASS,
            ),
            row(
                "a SYN-ACK to the old connection's sequence is no reply",
                "c-ad",
                to_client(reused, SYN_ACK, S + 7, C + 1),
                verdict::EGRESS_DENIED,
            ),
            row(
                "the SYN-ACK acknowledging the new SYN is",
                "c-ad",
                to_client(reused, SYN_ACK, S + 7, C + 100_001),
                verdict::PASS,
            ),
        ]);
        lab.check_all(&rows);
    });
}

/// A UDP request (opening) and its reply (established) to outside, and the VM's next
/// datagram, for the conversation from web's port `sport`.
fn udp_request(sport: u16) -> Vec<u8> {
    ip(V4.web, V4.outside, udp(sport, 53))
}

fn udp_reply(sport: u16) -> Vec<u8> {
    from_outside(V4.outside, V4.web, udp(53, sport))
}

/// A port unreachable from the outside host to web, quoting web's request from `sport`.
fn unreachable_about(sport: u16) -> Vec<u8> {
    frame::icmp_error(
        ROUTER_MAC,
        VM_MAC,
        V4.outside,
        V4.web,
        3,
        3,
        &ip(V4.web, V4.outside, udp(sport, 53))[14..],
    )
}

fn echo(l4: L4, reply: bool) -> Vec<u8> {
    if reply {
        from_outside(V4.outside, V4.web, l4)
    } else {
        ip(V4.web, V4.outside, l4)
    }
}

/// With `udp_idle_seconds` and `icmp_idle_seconds` at 1: a conversation idle past its
/// timeout is gone, answered (established) or not (opening); the kernel removes it when
/// its late reply looks it up (`expired`, and the reply is refused), the daemon's sweep
/// when nothing does. A conversation the VM kept alive meanwhile still gets its reply.
#[test]
fn idle_conversations_expire_on_lookup_and_by_the_sweep() {
    in_private_netns(|| {
        let text = policy(SHORT);
        let mut lab = Lab::new(&text, LINKS);
        let settings = Plan::new(&policy::parse(&text, "t.yaml").unwrap(), &lab.links)
            .unwrap()
            .settings;
        let entries_before = entries(&lab);
        let pass = verdict::PASS;
        lab.check_all(&[
            row("UDP A opens", "c-aw1", udp_request(44000), pass),
            out("UDP A answered", "c-aw1", udp_reply(44000), pass),
            row("UDP B opens, unanswered", "c-aw1", udp_request(44001), pass),
            row(
                "UDP C opens (for the sweep)",
                "c-aw1",
                udp_request(44002),
                pass,
            ),
            out("UDP C answered", "c-aw1", udp_reply(44002), pass),
            row(
                "UDP D opens (kept alive)",
                "c-aw1",
                udp_request(44003),
                pass,
            ),
            out("UDP D answered", "c-aw1", udp_reply(44003), pass),
            row("echo E", "c-aw1", echo(echo_request(60), false), pass),
            out("echo E answered", "c-aw1", echo(echo_reply(60), true), pass),
            row(
                "echo F, unanswered",
                "c-aw1",
                echo(echo_request(61), false),
                pass,
            ),
        ]);
        assert_eq!(
            entries(&lab) - entries_before,
            6,
            "six conversations tracked"
        );
        lab.check(&out(
            "an ICMP error from the peer about C, while C lives",
            "c-aw1",
            unreachable_about(44002),
            pass,
        ));
        std::thread::sleep(Duration::from_millis(700));
        lab.check(&row(
            "the VM keeps D alive",
            "c-aw1",
            udp_request(44003),
            pass,
        ));
        std::thread::sleep(Duration::from_millis(600));
        // 1.3 s after the others were last seen, 0.6 s after D.
        let (_, expired_before) = events(&lab);
        let not_exposed = verdict::NOT_EXPOSED;
        lab.check_all(&[
            out(
                "the same ICMP error about C, idle past its timeout (not removed: an error only looks)",
                "c-aw1",
                unreachable_about(44002),
                not_exposed,
            ),
            out(
                "an ICMP error about D (kept alive)",
                "c-aw1",
                unreachable_about(44003),
                pass,
            ),
            out("A's late reply", "c-aw1", udp_reply(44000), not_exposed),
            out(
                "B's late first reply",
                "c-aw1",
                udp_reply(44001),
                not_exposed,
            ),
            out(
                "E's late reply",
                "c-aw1",
                echo(echo_reply(60), true),
                not_exposed,
            ),
            out(
                "F's late first reply",
                "c-aw1",
                echo(echo_reply(61), true),
                not_exposed,
            ),
            out("D's reply (kept alive)", "c-aw1", udp_reply(44003), pass),
        ]);
        let (_, expired) = events(&lab);
        assert_eq!(
            expired - expired_before,
            4,
            "the kernel removes each of A, B, E, F when its late reply looks it up"
        );
        assert_eq!(
            entries(&lab) - entries_before,
            2,
            "C (idle, never looked up since) and D are still in the tables"
        );
        std::thread::sleep(Duration::from_millis(500));
        lab.check(&row(
            "the VM keeps D alive once more",
            "c-aw1",
            udp_request(44003),
            pass,
        ));
        let swept = lab.dp.sweep_connections(&settings).expect("sweep");
        assert_eq!(
            swept, 1,
            "the sweep removes C, idle past its timeout, not D"
        );
        assert_eq!(entries(&lab) - entries_before, 1, "D is left");
        let (_, after_sweep) = events(&lab);
        assert_eq!(
            after_sweep, expired,
            "the sweep's removals are the daemon's to count, not the kernel's"
        );
        lab.check_all(&[
            out(
                "C's late reply, after the sweep",
                "c-aw1",
                udp_reply(44002),
                not_exposed,
            ),
            out("D's reply", "c-aw1", udp_reply(44003), pass),
        ]);
        let (_, expired) = events(&lab);
        assert_eq!(
            expired, after_sweep,
            "C was gone already: nothing expires on lookup"
        );
    });
}

/// A TCP segment that is not a SYN to the exposed endpoint passes and opens nothing; the
/// UDP rows above are the contrast: any datagram opens.
#[test]
fn only_a_syn_opens_tcp_while_any_datagram_opens_udp() {
    in_private_netns(|| {
        let mut lab = Lab::new(&policy(""), LINKS);
        let (opened_before, _) = events(&lab);
        lab.check_all(&[
            out(
                "an ACK to the exposed TCP endpoint passes",
                "c-ad",
                from_outside(V4.outside, V4.db_exposed, tcp(45000, 80, ACK)),
                verdict::PASS,
            ),
            row(
                "but opens nothing: the server's answer is refused",
                "c-ad",
                ip(V4.db_exposed, V4.outside, tcp(80, 45000, ACK)),
                verdict::EGRESS_DENIED,
            ),
            out(
                "a datagram to the exposed UDP endpoint",
                "c-ad",
                from_outside(V4.outside, V4.db_exposed, udp(45000, 7000)),
                verdict::PASS,
            ),
            row(
                "opens a conversation: the server's answer passes",
                "c-ad",
                ip(V4.db_exposed, V4.outside, udp(7000, 45000)),
                verdict::PASS,
            ),
        ]);
        let (opened, _) = events(&lab);
        assert_eq!(opened - opened_before, 1, "only the datagram opened");
    });
}
