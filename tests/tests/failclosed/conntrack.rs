//! Point 5: the connection table cannot be used against other tenants. Each vif has its
//! own tables (opening: 1024, established: 4096); a connection is established only when
//! the handshake completes; an RST or FIN counts only within 2^20 of its sender's
//! position; a FIN closes one direction.
//!
//! The lab: two tenants, each with one VM serving an exposed TCP port from an
//! `egress: deny` segment (so that a server's replies pass only as part of a tracked
//! connection), and two hosts outside every segment on the bridge: `client`, which opens
//! the connections, and `attacker`, which sends spoofed frames (scapy, or the frame
//! builder for the flood). IPv4 only, permanent neighbour entries: every frame counted is
//! one the test caused.
//!
//! | host     | where                                        | address   |
//! |----------|----------------------------------------------|-----------|
//! | web1     | acme/web, `egress: deny`, exposes TCP 443    | 10.1.1.2  |
//! | app1     | globex/app, `egress: deny`, exposes TCP 443  | 10.2.1.2  |
//! | client   | outside, bridge port `xclient`               | 10.9.0.10 |
//! | attacker | outside, bridge port `xattack`               | 10.9.0.66 |

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use isolator_common::verdict;
use isolator_tests::failclosed_lab::{
    FrameSender, PinnedCpu, TcpPair, add_v4_vm, position, quiet_v4, tcp_segments,
};
use isolator_tests::frame::{SYN, ip_frame, parse_mac, tcp};
use isolator_tests::lab::Host;
use isolator_tests::metrics::{CONNTRACK_EVENTS, DROP_PACKETS};
use isolator_tests::scapy::Scapy;
use isolator_tests::{Dir, Env, Expect, Lab, Series, Vm};

use super::{Problems, awaited, changes, expected, settle};
use crate::common::capture;

const PORT: u16 = 443;
/// Connect, read and write timeout on the held connections.
const IO: Duration = Duration::from_secs(3);

fn policy(closing_seconds: u32) -> String {
    format!(
        r#"version: 1
connection_tracking:
  tcp_closing_seconds: {closing_seconds}
tenants:
  - name: acme
    segments:
      - name: web
        egress: deny
        interfaces: [vacme-web1]
        prefixes: [10.1.1.0/24]
        expose: [{{address: 10.1.1.2, protocol: tcp, ports: {PORT}}}]
  - name: globex
    segments:
      - name: app
        egress: deny
        interfaces: [vglobex-app1]
        prefixes: [10.2.1.0/24]
        expose: [{{address: 10.2.1.2, protocol: tcp, ports: {PORT}}}]
"#
    )
}

struct Ct {
    env: Env<Lab>,
    web1: Vm,
    app1: Vm,
    client: Host,
    attacker: Host,
    policy: String,
}

impl Ct {
    fn start(hint: &str, closing_seconds: u32) -> Ct {
        let mut lab = Lab::new(hint).expect("lab");
        let web1 = add_v4_vm(&mut lab, "web1", "vacme-web1", "10.1.1.2/24").expect("web1");
        let app1 = add_v4_vm(&mut lab, "app1", "vglobex-app1", "10.2.1.2/24").expect("app1");
        let client = lab
            .add_bridge_host("client", "xclient", &["10.9.0.10/8"], &[])
            .expect("client");
        let attacker = lab
            .add_bridge_host("attacker", "xattack", &["10.9.0.66/8"], &[])
            .expect("attacker");
        for h in [&client, &attacker] {
            quiet_v4(&h.ns).expect("IPv6 off");
            isolator_tests::netns::sysctl(&h.ns, "net.ipv6.conf.eth0.disable_ipv6", "1")
                .expect("IPv6 off");
        }
        // Permanent neighbours between the client and the servers, both ways.
        let client_vm = host_as_vm(&client);
        for vm in [&web1, &app1] {
            lab.static_neigh(&client_vm, vm, vm.v4()).expect("neigh");
            lab.static_neigh(vm, &client_vm, client_vm.v4())
                .expect("neigh");
        }
        let policy = policy(closing_seconds);
        let env = Env::start(lab, &policy).unwrap_or_else(|e| panic!("{e:#}"));
        Ct {
            env,
            web1,
            app1,
            client,
            attacker,
            policy,
        }
    }

    /// A connection from the client to `server`'s exposed port; data both ways once.
    fn connect(&self, server: &Vm) -> TcpPair {
        let target = SocketAddr::new(server.v4(), PORT);
        let mut pair = TcpPair::open(&self.client.ns, &server.ns, target, IO)
            .unwrap_or_else(|e| panic!("client -> {target}: {e:#}\n{}", self.report()));
        pair.round_trip().unwrap_or_else(|e| {
            panic!(
                "client -> {target}: first exchange: {e:#}\n{}",
                self.report()
            )
        });
        pair
    }

    /// Waits until no counter of the two servers moves any more.
    fn quiet(&self) -> isolator_tests::Scrape {
        settle(
            &[&self.web1.vif, &self.app1.vif],
            Duration::from_millis(500),
            || self.env.scrape(),
        )
    }

    fn report(&self) -> String {
        match self.env.daemon().scrape() {
            Ok(m) => format!(
                "policy:\n{}\nconnection tracking:\n{}drops:\n{}daemon output:\n{}",
                self.policy,
                m.dump(CONNTRACK_EVENTS),
                m.dump(DROP_PACKETS),
                self.env.log_tail()
            ),
            Err(e) => format!("(cannot scrape: {e:#})\n{}", self.env.log_tail()),
        }
    }
}

/// A host seen as a VM, for the lab's neighbour helper.
fn host_as_vm(h: &Host) -> Vm {
    Vm {
        name: h.name.clone(),
        ns: h.ns.clone(),
        vif: h.port.clone().unwrap_or_default(),
        mac: h.mac.clone(),
        addrs: h.addrs.clone(),
    }
}

fn reset() -> Series {
    Series::conntrack_event("reset")
}

fn opened() -> Series {
    Series::conntrack_event("opened")
}

/// Spoofed SYNs in the flood: more than the old single table held (262 144 entries for
/// every vif together) and far more than a vif's opening table (1 024), so that the test
/// tells a shared table from per-vif ones.
const FLOOD: u32 = 300_000;

/// A flood of spoofed SYNs from outside to one tenant's exposed endpoint, each from
/// another source address, fills only that vif's table of connections being opened:
/// another tenant's idle established connection lives on and carries data afterwards,
/// and nothing of that tenant is dropped.
#[test]
fn a_syn_flood_evicts_no_other_tenants_connection() {
    // The other tenant's connection and the flood on one CPU: see `PinnedCpu`.
    let _cpu = PinnedCpu::to(0).expect("pin");
    let ct = Ct::start("fc-synflood", 10);
    let mut bad = Problems::new();
    // The other tenant's connection, established, then idle during the flood.
    let mut other = ct.connect(&ct.app1);
    // web1 answers every SYN, as an exposed server does (with SYN cookies once its
    // backlog is full): its SYN-ACKs go towards the spoofed sources, through the
    // attacker's port, where they end.
    let listener = isolator_tests::netns::in_netns(&ct.web1.ns, || {
        Ok(std::net::TcpListener::bind(SocketAddr::new(
            ct.web1.v4(),
            PORT,
        ))?)
    })
    .expect("web1's listener");
    let attacker_vm = host_as_vm(&ct.attacker);
    ct.env
        .lab()
        .static_neigh(&ct.web1, &attacker_vm, attacker_vm.v4())
        .expect("neigh");
    ct.env
        .lab()
        .add_route(&ct.web1.ns, "198.18.0.0/15 via 10.9.0.66")
        .expect("route");

    let attacker_mac = parse_mac(&ct.attacker.mac).unwrap();
    let web1_mac = parse_mac(&ct.web1.mac).unwrap();
    // Sources in 198.18.0.0/15 (no segment's; web1 routes them to the attacker's port),
    // each (address, port) once.
    let frames = (0..FLOOD).map(|i| {
        let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (i % 131_072));
        let sport = 1024 + (i / 131_072) as u16;
        ip_frame(
            attacker_mac,
            web1_mac,
            IpAddr::V4(src),
            ct.web1.v4(),
            tcp(sport, PORT, SYN),
            &[],
        )
    });
    let before = ct.quiet();
    let sender = FrameSender::open(&ct.attacker.ns, "eth0").expect("sender");
    let started = Instant::now();
    let sent = sender.send_all(frames).unwrap_or_else(|e| panic!("{e:#}"));
    let took = started.elapsed();
    let after = awaited(
        &mut bad,
        ct.env.daemon(),
        &before,
        &Expect::new()
            .grows(Series::pass(&ct.web1.vif, Dir::Egress), f64::from(FLOOD))
            .grows(opened(), f64::from(FLOOD)),
        "every spoofed SYN passes web1's egress and opens an entry",
    );
    bad.check(sent == FLOOD as usize, || {
        format!("sent {sent} of {FLOOD} SYNs")
    });
    let flooded = changes(&before, &after, &ct.web1.vif);
    bad.check(
        flooded.get("egress pass") == Some(&f64::from(FLOOD))
            && flooded.get("ingress pass").is_some_and(|n| *n > 0.0)
            && flooded.keys().all(|k| {
                ["egress pass", "ingress pass", "ingress egress_denied"].contains(&k.as_str())
            }),
        || {
            format!(
                "the flood's SYNs pass web1's egress (an exposed endpoint), nothing else is \
                 delivered to web1, and its SYN-ACKs pass as part of the connections being \
                 opened (or, answering a SYN the flood itself pushed out of web1's own table, \
                 drop as egress_denied); web1's counters changed by {flooded:?}"
            )
        },
    );
    let untouched = changes(&before, &after, &ct.app1.vif);
    bad.check(untouched.is_empty(), || {
        format!("the flood concerns no frame of app1, yet its counters changed by {untouched:?}")
    });

    // The other tenant's connection, idle through the flood, still carries data both ways.
    let before = after;
    if let Err(e) = other.round_trip() {
        bad.push(format!(
            "after {FLOOD} spoofed SYNs to web1 (sent in {took:?}), app1's idle connection \
             with the client must still carry data both ways: {e:#}"
        ));
    }
    let after = ct.quiet();
    let app1 = changes(&before, &after, &ct.app1.vif);
    bad.check(
        app1.keys().all(|k| k.ends_with(" pass")) && app1.contains_key("ingress pass"),
        || {
            format!(
                "app1's exchange after the flood passes both ways and drops nothing; its \
                 counters changed by {app1:?}"
            )
        },
    );
    drop(listener);
    bad.finish(
        "a SYN flood to one tenant's exposed endpoint",
        &ct.report(),
        "",
    );
}

/// An RST with the connection's 4-tuple but a sequence number far from its sender's
/// position, from the same place as the connection's peer (outside), does not end the
/// connection: data still flows both ways. Its twin, in the window (the position read
/// from a capture of the connection), ends the entry (`reset` +1): the server's next
/// segment, which only the connection let out of its `egress: deny` segment, is judged
/// anew and dropped (`egress_denied`), and its reply data no longer reaches the client.
#[test]
fn only_an_rst_in_the_window_ends_a_connection() {
    let ct = Ct::start("fc-rst", 10);
    let mut bad = Problems::new();
    let mut conn = ct.connect(&ct.web1);
    let client = conn.client_addr();
    let server = SocketAddr::new(ct.web1.v4(), PORT);

    // The positions of both ends, from a capture of one exchange at each end.
    let positions = |conn: &mut TcpPair| -> (u32, u32) {
        let ((r, at_client), at_server) = capture(&ct.web1.ns, "eth0", || {
            capture(&ct.client.ns, "eth0", || conn.round_trip())
        });
        r.unwrap_or_else(|e| panic!("exchange: {e:#}\n{}", ct.report()));
        let from_client = tcp_segments(
            &at_server,
            (client.ip(), client.port()),
            (server.ip(), PORT),
        );
        let from_server = tcp_segments(
            &at_client,
            (server.ip(), PORT),
            (client.ip(), client.port()),
        );
        (
            position(&from_client).expect("the capture holds the client's segments"),
            position(&from_server).expect("the capture holds the server's segments"),
        )
    };
    let (client_end, server_end) = positions(&mut conn);

    let mut attacker = Scapy::start(&ct.attacker.ns).unwrap_or_else(|e| panic!("{e:#}"));
    let rst = |seq: u32| {
        format!(
            "Ether(src='{}', dst='{}')/IP(src='{}', dst='{}')/TCP(sport={}, dport={PORT}, \
             flags='R', seq={seq})",
            ct.attacker.mac,
            ct.web1.mac,
            client.ip(),
            server.ip(),
            client.port()
        )
    };

    // Out of the window: 2^30 past the client's position.
    let far = client_end.wrapping_add(1 << 30);
    let before = ct.quiet();
    let (sent, frames) = capture(&ct.web1.ns, "eth0", || attacker.sendp(&rst(far), 1));
    let sent = sent.unwrap_or_else(|e| panic!("{e:#}"));
    let after = awaited(
        &mut bad,
        ct.env.daemon(),
        &before,
        &Expect::new()
            .grows(Series::pass(&ct.web1.vif, Dir::Egress), 1.0)
            .grows(reset(), 0.0),
        "the out-of-window RST passes as a packet to the exposed endpoint and resets nothing",
    );
    let moved = changes(&before, &after, &ct.web1.vif);
    bad.check(moved == expected(&[("egress pass", 1.0)]), || {
        format!(
            "an out-of-window RST (seq {far}, the client is at {client_end}) is judged like any \
             packet to the exposed endpoint (one egress pass) and changes nothing; web1's \
             counters changed by {moved:?}"
        )
    });
    bad.check(
        frames.contains(&sent),
        || "the out-of-window RST, addressed to the exposed endpoint, reaches web1 (whose stack ignores it)".into(),
    );
    let before = ct.quiet();
    if let Err(e) = conn.round_trip() {
        bad.push(format!(
            "after an out-of-window RST the connection must still carry data both ways: {e:#}"
        ));
    }
    let after = ct.quiet();
    let moved = changes(&before, &after, &ct.web1.vif);
    bad.check(
        moved.keys().all(|k| k.ends_with(" pass")) && after.delta(&before, &reset()).unwrap() == 0.0,
        || format!("the exchange after the out-of-window RST drops nothing, resets nothing: web1's counters changed by {moved:?}"),
    );

    // The server's next segment passes while the connection lives: a bare ACK at its
    // current position, sent by scapy in web1 (the same bytes after the in-window RST).
    let (client_end, server_end2) = positions(&mut conn);
    assert!(
        server_end2 != server_end,
        "the exchange moved the server's position"
    );
    let mut server_side = Scapy::start(&ct.web1.ns).unwrap_or_else(|e| panic!("{e:#}"));
    let probe = format!(
        "Ether(src='{}', dst='{}')/IP(src='{}', dst='{}')/TCP(sport={PORT}, dport={}, \
         flags='A', seq={server_end2}, ack={client_end})",
        ct.web1.mac,
        ct.client.mac,
        server.ip(),
        client.ip(),
        client.port()
    );
    let before = ct.quiet();
    let (sent, frames) = capture(&ct.client.ns, "eth0", || server_side.sendp(&probe, 1));
    let sent = sent.unwrap_or_else(|e| panic!("{e:#}"));
    let after = awaited(
        &mut bad,
        ct.env.daemon(),
        &before,
        &Expect::new().grows(Series::pass(&ct.web1.vif, Dir::Ingress), 1.0),
        "web1's segment within the live connection passes",
    );
    let moved = changes(&before, &after, &ct.web1.vif);
    bad.check(moved == expected(&[("ingress pass", 1.0)]), || {
        format!("web1's segment within the live connection passes once; web1's counters changed by {moved:?}")
    });
    bad.check(frames.contains(&sent), || {
        "web1's segment within the live connection reaches the client".into()
    });

    // In the window: 32 KiB behind the client's position (within 2^20 for isolator;
    // behind what web1's stack already acknowledged, so the stack ignores it and only
    // isolator's entry ends).
    let near = client_end.wrapping_sub(0x8000);
    let before = ct.quiet();
    let (sent, frames) = capture(&ct.web1.ns, "eth0", || attacker.sendp(&rst(near), 1));
    let sent = sent.unwrap_or_else(|e| panic!("{e:#}"));
    let after = awaited(
        &mut bad,
        ct.env.daemon(),
        &before,
        &Expect::new()
            .grows(Series::pass(&ct.web1.vif, Dir::Egress), 1.0)
            .grows(reset(), 1.0),
        "the in-window RST passes and ends the entry",
    );
    let moved = changes(&before, &after, &ct.web1.vif);
    bad.check(moved == expected(&[("egress pass", 1.0)]), || {
        format!("the in-window RST passes once as part of the connection; web1's counters changed by {moved:?}")
    });
    bad.check(frames.contains(&sent), || {
        "the in-window RST reaches web1".into()
    });

    // The server's next segment is judged anew: nothing lets it out of its segment.
    let before = after;
    let (sent, frames) = capture(&ct.client.ns, "eth0", || server_side.sendp(&probe, 1));
    let sent = sent.unwrap_or_else(|e| panic!("{e:#}"));
    let denied = Series::drop(&ct.web1.vif, Dir::Ingress, verdict::EGRESS_DENIED);
    let after = awaited(
        &mut bad,
        ct.env.daemon(),
        &before,
        &Expect::new().grows(denied, 1.0).grows(reset(), 0.0),
        "after the in-window RST, web1's next segment is dropped as egress_denied",
    );
    let moved = changes(&before, &after, &ct.web1.vif);
    bad.check(moved == expected(&[("ingress egress_denied", 1.0)]), || {
        format!(
            "after the in-window RST, web1's next segment of the connection is judged anew and \
             dropped as egress_denied; web1's counters changed by {moved:?}"
        )
    });
    bad.check(!frames.contains(&sent), || {
        "after the in-window RST, web1's segment still reached the client".into()
    });
    // And with the real stacks: the request still reaches the server (an exposed
    // endpoint), its reply does not come back.
    match conn.round_trip() {
        Ok(_) => bad.push("after the in-window RST, the server's reply still reached the client".into()),
        Err(e) => bad.check(format!("{e:#}").contains("the client reads reply"), || {
            format!("after the in-window RST, the request must still reach the server (exposed endpoint); got: {e:#}")
        }),
    }
    bad.finish(
        "RST inside and outside the sequence window",
        &ct.report(),
        "",
    );
}

/// A FIN closes one direction only: after the client's `shutdown(SHUT_WR)`, the server
/// keeps sending over the half-closed connection, with pauses longer than
/// `tcp_closing_seconds` (2 s here), and every byte arrives; nothing is dropped.
#[test]
fn a_half_closed_connection_carries_data_past_the_closing_timeout() {
    use std::io::{Read, Write};
    const CLOSING: u32 = 2;
    let ct = Ct::start("fc-halfclose", CLOSING);
    let mut bad = Problems::new();
    let mut conn = ct.connect(&ct.web1);
    let before = ct.quiet();
    conn.client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown(SHUT_WR)");
    let mut buf = [0u8; 64];
    match conn.server.read(&mut buf) {
        Ok(0) => {}
        other => bad.push(format!(
            "the server must read the client's FIN (EOF), got {other:?}"
        )),
    }
    let pause = Duration::from_secs(u64::from(CLOSING) + 1);
    for i in 0..3 {
        if i > 0 {
            // Nothing is sent in either direction for longer than the closing timeout.
            std::thread::sleep(pause);
        }
        let chunk = format!("server -> client after the client's FIN, chunk {i}\n");
        if let Err(e) = conn.server.write_all(chunk.as_bytes()) {
            bad.push(format!("the server writes chunk {i}: {e}"));
            break;
        }
        let mut got = vec![0u8; chunk.len()];
        match conn.client.read_exact(&mut got) {
            Ok(()) if got == chunk.as_bytes() => {}
            Ok(()) => bad.push(format!("chunk {i} changed on the way")),
            Err(e) => {
                bad.push(format!(
                    "chunk {i} (sent {} s after the client's FIN, after a pause of {pause:?} \
                     > tcp_closing_seconds {CLOSING}) did not reach the client: {e}",
                    i * (CLOSING + 1)
                ));
                break;
            }
        }
    }
    let after = ct.quiet();
    let moved = changes(&before, &after, &ct.web1.vif);
    bad.check(
        moved.keys().all(|k| k.ends_with(" pass")) && moved.contains_key("ingress pass"),
        || {
            format!(
                "the half-closed connection's frames all pass both ways; web1's counters changed \
                 by {moved:?}"
            )
        },
    );
    bad.finish("half-close", &ct.report(), "");
}
