//! Point 8: the host itself (the daemon's namespace).
//!
//! Before the fix, a destination inside the sender's segment passed before anything but
//! management, so every service the host binds on an address inside a segment prefix was
//! reachable from every VM of that segment (`egress: deny` included); the host's link-local
//! address was reachable; loopback destinations were not refused. Now the policy's
//! `gateways` say which services a segment's VMs may use at which host address; every other
//! address of the host is `management`, and so is every loopback destination.
//!
//! These tests need the `gateways` key, which a binary from before the fix refuses.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use isolator_common::verdict;
use isolator_tests::attack_lab::{
    self, BLOCKED_CONNECT, BRIDGE_MAC, DB1, Findings, GATEWAY_TCP, GATEWAY_UDP, GATEWAY_V4,
    GATEWAY_V6, HOST_PRIVATE_TCP, HOST_PRIVATE_UDP, SYNS_PER_BLOCKED_CONNECT, Shot, Tap, WEB1,
    expect_drops, link_local, one_syn_retry, udp_socket,
};
use isolator_tests::echo::{EchoOutcome, EchoServers, HeldConnection, tcp_echo};
use isolator_tests::lab::{BRIDGE, VM_IFNAME};
use isolator_tests::netns::ip_n;
use isolator_tests::{Dir, Env, Lab};

use super::{build, eth, l3, payload64, prefixed, py_bytes, scapy, solicited_node};

/// The host lab under its policy.
fn start(hint: &str) -> Env<Lab> {
    let lab = attack_lab::build_host(hint).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    Env::start(lab, &attack_lab::host_policy_yaml()).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The host listens on tcp/8053 and udp/53, which acme/web's gateways offer, and on
/// tcp/8054 and udp/54, which no gateway offers. web1 (acme/web, `egress: deny`) gets its
/// udp/53 question answered and its tcp/8053 connection accepted at both gateway addresses
/// (the twins); its connects to tcp/8054 fail (two SYNs each, `management`) and its
/// datagrams to udp/54 never arrive (`management`); db1 (acme/db, whose gateways these are
/// not) reaches none of the four services at either address, every packet `management`.
/// The host accepted exactly web1's two connections on tcp/8053.
#[test]
fn a_gateway_serves_only_its_declared_services_and_only_its_segment() {
    let env = start("att-gateway");
    let (web1, db1) = (env.vm(WEB1.name), env.vm(DB1.name));
    let host = env.lab().host_ns().to_string();
    let servers = EchoServers::start(&host, &[GATEWAY_TCP, HOST_PRIVATE_TCP])
        .unwrap_or_else(|e| panic!("{e:#}"));
    for ns in [&web1.ns, &db1.ns] {
        one_syn_retry(ns).unwrap_or_else(|e| panic!("{e:#}"));
    }
    know_the_gateways(&db1.ns);
    let sock = |addr: &str, port: u16| SocketAddr::new(addr.parse().unwrap(), port);
    let mut f = Findings::new();

    // The twins: web1 uses the declared services at both gateway addresses.
    let before = env.scrape();
    for gw in [GATEWAY_V4, GATEWAY_V6] {
        let service = sock(gw, GATEWAY_UDP);
        let server = udp_socket(&host, service).unwrap_or_else(|e| panic!("{e:#}"));
        let client = udp_socket(
            &web1.ns,
            sock(if gw.contains(':') { WEB1.v6 } else { WEB1.v4 }, 40053),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let answered = ask(&client, &server, service);
        f.check(answered.is_ok(), || {
            format!("web1 -> the gateway's declared service udp {service}: {answered:?}")
        });
        let target = sock(gw, GATEWAY_TCP);
        let held = HeldConnection::open(&web1.ns, target, Duration::from_secs(3));
        f.check(held.is_ok(), || {
            format!(
                "web1 -> the gateway's declared service tcp {target}: {:?}",
                held.as_ref().err()
            )
        });
    }
    f.extend(prefixed(
        "web1 -> the gateways' declared services",
        expect_drops(&env, &before, &WEB1.vif(), Dir::Ingress, &[]),
    ));

    // What no gateway offers, and a gateway of another segment. TCP all at once.
    let attempts = [
        (&web1.ns, "web1", sock(GATEWAY_V4, HOST_PRIVATE_TCP)),
        (&web1.ns, "web1", sock(GATEWAY_V6, HOST_PRIVATE_TCP)),
        (&db1.ns, "db1", sock(GATEWAY_V4, GATEWAY_TCP)),
        (&db1.ns, "db1", sock(GATEWAY_V6, GATEWAY_TCP)),
        (&db1.ns, "db1", sock(GATEWAY_V4, HOST_PRIVATE_TCP)),
        (&db1.ns, "db1", sock(GATEWAY_V6, HOST_PRIVATE_TCP)),
    ];
    let before = env.scrape();
    let outcomes: Vec<EchoOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = attempts
            .iter()
            .map(|(ns, _, target)| {
                s.spawn(move || {
                    tcp_echo(ns, *target, 16, BLOCKED_CONNECT).unwrap_or_else(|e| panic!("{e:#}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((_, who, target), got) in attempts.iter().zip(&outcomes) {
        f.check(got.refused(), || {
            format!("{who} -> the host's tcp {target}: expected no connection, got {got:?}")
        });
    }
    // UDP: one datagram each, to listeners that must hear nothing.
    let mut listeners = Vec::new();
    let mut datagrams = 0.0;
    let mut db1_datagrams = 0.0;
    for gw in [GATEWAY_V4, GATEWAY_V6] {
        for port in [GATEWAY_UDP, HOST_PRIVATE_UDP] {
            let service = sock(gw, port);
            if port == HOST_PRIVATE_UDP {
                listeners.push((
                    service,
                    udp_socket(&host, service).unwrap_or_else(|e| panic!("{e:#}")),
                ));
            }
            for (who, ns, v4, v6) in [
                ("web1", &web1.ns, WEB1.v4, WEB1.v6),
                ("db1", &db1.ns, DB1.v4, DB1.v6),
            ] {
                if who == "web1" && port == GATEWAY_UDP {
                    continue; // the twin above
                }
                let from = sock(if gw.contains(':') { v6 } else { v4 }, 40054);
                let client = udp_socket(ns, from).unwrap_or_else(|e| panic!("{e:#}"));
                client
                    .send_to(b"question", service)
                    .unwrap_or_else(|e| panic!("{who} -> {service}: {e}"));
                if who == "web1" {
                    datagrams += 1.0;
                } else {
                    db1_datagrams += 1.0;
                }
            }
        }
    }
    let syns = SYNS_PER_BLOCKED_CONNECT;
    f.extend(prefixed(
        "web1 -> tcp/8054 and udp/54 at the gateways",
        expect_drops(
            &env,
            &before,
            &WEB1.vif(),
            Dir::Ingress,
            &[(verdict::MANAGEMENT, 2.0 * syns + datagrams)],
        ),
    ));
    f.extend(prefixed(
        "db1 -> tcp/8053, tcp/8054, udp/53 and udp/54 at acme/web's gateways",
        expect_drops(
            &env,
            &before,
            &DB1.vif(),
            Dir::Ingress,
            &[(verdict::MANAGEMENT, 4.0 * syns + db1_datagrams)],
        ),
    ));
    for (service, listener) in &listeners {
        listener.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let heard = listener.recv_from(&mut buf);
        // Nothing queued, and only that: another error says nothing about isolator.
        f.check(
            matches!(&heard, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            || format!("the host's udp {service}, which no gateway offers, received {heard:?}"),
        );
    }

    let mut accepted: Vec<String> = servers
        .accepted()
        .iter()
        .map(|a| format!("{} <- {}", a.local, a.peer.ip()))
        .collect();
    accepted.sort();
    let mut expected = vec![
        format!("{GATEWAY_V4}:{GATEWAY_TCP} <- {}", WEB1.v4),
        format!("[{GATEWAY_V6}]:{GATEWAY_TCP} <- {}", WEB1.v6),
    ];
    expected.sort();
    f.check(accepted == expected, || {
        format!("the host accepted {accepted:?}, expected exactly {expected:?}")
    });
    f.finish("gateway services", &env);
}

/// A TCP connection from web1 to the gateway's declared tcp/8053 carries data both ways
/// (4 KiB echoed by the host), IPv4 and IPv6, with no drop at web1's vif in either
/// direction: the host's answers belong to the connection web1 opened.
#[test]
fn a_tcp_connection_to_a_gateway_service_carries_data_both_ways() {
    let env = start("att-gwdata");
    let web1 = env.vm(WEB1.name);
    let host = env.lab().host_ns().to_string();
    let _servers = EchoServers::start(&host, &[GATEWAY_TCP]).unwrap_or_else(|e| panic!("{e:#}"));
    let mut f = Findings::new();
    for gw in [GATEWAY_V4, GATEWAY_V6] {
        let target = SocketAddr::new(gw.parse().unwrap(), GATEWAY_TCP);
        let before = env.scrape();
        let got = tcp_echo(&web1.ns, target, 4096, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{e:#}"));
        f.check(got.echoed(), || {
            format!("web1 -> the gateway's declared service {target}: {got:?}")
        });
        for dir in Dir::BOTH {
            f.extend(prefixed(
                &format!("web1 <-> {target}"),
                expect_drops(&env, &before, &WEB1.vif(), dir, &[]),
            ));
        }
    }
    f.finish("TCP data with a gateway service", &env);
}

/// `ip neigh` entries for the gateway addresses on `ns`'s eth0 (the bridge's MAC): a VM of
/// another segment cannot resolve them (its ARP/ND for an address of acme/web is
/// `cross_segment`), so that its packets reach the enforcer as what they are.
fn know_the_gateways(ns: &str) {
    for gw in [GATEWAY_V4, GATEWAY_V6] {
        ip_n(
            ns,
            &[
                "neigh",
                "replace",
                gw,
                "lladdr",
                BRIDGE_MAC,
                "dev",
                VM_IFNAME,
                "nud",
                "permanent",
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// A question from `client` to `service`, read by `server` and answered; the answer read
/// by `client`.
fn ask(client: &UdpSocket, server: &UdpSocket, service: SocketAddr) -> Result<(), String> {
    client
        .send_to(b"question", service)
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 64];
    let (_, peer) = isolator_tests::net::recv_from_retrying(server, &mut buf)
        .map_err(|e| format!("the question did not arrive: {e}"))?;
    server
        .send_to(b"answer", peer)
        .map_err(|e| format!("answer: {e}"))?;
    let (n, from) = isolator_tests::net::recv_from_retrying(client, &mut buf)
        .map_err(|e| format!("the answer did not arrive: {e}"))?;
    if &buf[..n] != b"answer" || from.ip().to_canonical() != service.ip() {
        return Err(format!("got {:?} from {from}", &buf[..n]));
    }
    Ok(())
}

/// From web1, crafted: a UDP datagram to the gateway's declared udp/53 at 10.1.1.1 and at
/// fd00:1:1::1 reaches the host (the twins); the same datagram to 127.0.0.1, to ::1 and to
/// the host's link-local address on the bridge is `management` and never reaches the host;
/// so are a TCP SYN to tcp/8053 (a service of the gateway addresses, not of the link-local
/// one) and an echo request at the link-local address. The host's link-local address is
/// still resolved: web1's neighbour solicitation for it reaches the host (twin).
#[test]
fn the_hosts_link_local_address_and_loopback_are_management() {
    let env = start("att-hostll");
    let web1 = env.vm(WEB1.name);
    let host = env.lab().host_ns().to_string();
    let host_ll = link_local(&host, BRIDGE).unwrap_or_else(|e| panic!("{e:#}"));
    let web1_ll = link_local(&web1.ns, VM_IFNAME).unwrap_or_else(|e| panic!("{e:#}"));
    let at_host = Tap::new("the host (br0)", &host, BRIDGE);
    let mut s = scapy(&web1.ns);
    let to_host = eth(&web1.mac, BRIDGE_MAC);
    let udp = |src: &str, dst: &str, tag: &str| {
        format!(
            "{to_host}/{}/UDP(sport=40053, dport={GATEWAY_UDP})/Raw(load={})",
            l3(src, dst),
            py_bytes(&payload64(tag))
        )
    };
    let ll = host_ll.to_string();
    let mine_ll = web1_ll.to_string();
    let (group, group_mac) = solicited_node(&ll);
    let mut shots = Vec::new();
    for (src, gw, lo) in [
        (WEB1.v4, GATEWAY_V4, "127.0.0.1"),
        (WEB1.v6, GATEWAY_V6, "::1"),
    ] {
        shots.push(Shot::twin(
            &format!("udp/{GATEWAY_UDP} to the gateway {gw} (twin)"),
            build(&mut s, &udp(src, gw, "to the gateway")),
            &WEB1.vif(),
            Dir::Ingress,
            &at_host,
        ));
        shots.push(Shot::blocked(
            &format!("udp/{GATEWAY_UDP} to loopback {lo}"),
            build(&mut s, &udp(src, lo, "to loopback")),
            &WEB1.vif(),
            Dir::Ingress,
            verdict::MANAGEMENT,
            &at_host,
        ));
    }
    shots.push(Shot::blocked(
        "udp/53 to the host's link-local address",
        build(
            &mut s,
            &udp(&mine_ll, &ll, "to the host's link-local address"),
        ),
        &WEB1.vif(),
        Dir::Ingress,
        verdict::MANAGEMENT,
        &at_host,
    ));
    shots.push(Shot::blocked(
        "tcp/8053 SYN to the host's link-local address",
        build(
            &mut s,
            &format!(
                "{to_host}/{}/TCP(sport=40054, dport={GATEWAY_TCP}, flags='S', seq=1000)",
                l3(&mine_ll, &ll)
            ),
        ),
        &WEB1.vif(),
        Dir::Ingress,
        verdict::MANAGEMENT,
        &at_host,
    ));
    shots.push(Shot::blocked(
        "echo request to the host's link-local address",
        build(
            &mut s,
            &format!(
                "{to_host}/{}/ICMPv6EchoRequest(id=0x1505)",
                l3(&mine_ll, &ll)
            ),
        ),
        &WEB1.vif(),
        Dir::Ingress,
        verdict::MANAGEMENT,
        &at_host,
    ));
    shots.push(Shot::twin(
        "NS for the host's link-local address (twin)",
        build(
            &mut s,
            &format!(
                "{}/IPv6(src='{mine_ll}', dst='{group}', hlim=255)/ICMPv6ND_NS(tgt='{ll}')/\
                 ICMPv6NDOptSrcLLAddr(lladdr='{}')",
                eth(&web1.mac, &group_mac),
                web1.mac
            ),
        ),
        &WEB1.vif(),
        Dir::Ingress,
        &at_host,
    ));
    let mut f = Findings::new();
    f.fire_all(&env, &mut s, &shots);
    f.finish("the host's link-local address and loopback", &env);
}
