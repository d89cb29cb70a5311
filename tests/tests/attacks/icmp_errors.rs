//! Point 2: an ICMP error passes as part of a connection only if it goes to the source of
//! the packet it quotes and (sent by a VM) quotes a packet addressed to that VM, of a
//! connection tracked at that vif.
//!
//! Before the fix, after a UDP conversation with the outside host, a VM sent a destination
//! unreachable quoting that conversation, with 64 bytes of payload, to another tenant's
//! private VM, and it arrived: any ICMP error about any live connection passed anywhere.

use std::net::{IpAddr, SocketAddr};

use isolator_common::verdict;
use isolator_tests::Dir;
use isolator_tests::attack_lab::{
    API1, DB1, DB1_EXPOSED_UDP, Findings, OUTSIDE, OUTSIDE_V4, OUTSIDE_V6, ROUTER, Shot, Tap, WEB1,
    expect_drops, udp_socket,
};

use super::{build, eth, host, l3, payload64, prefixed, py_bytes, scapy, start, vm};

/// web1 (acme/web, egress allowed) talks UDP with the outside host (a question, an
/// answer), IPv4 and IPv6. Then it sends a destination unreachable quoting its own question,
/// with 64 bytes of payload, to globex-api1, another tenant's private VM: dropped at web1's
/// vif as `cross_tenant`, never at api1. Twins: the same error quoting the outside host's
/// answer, sent to the outside host (the quoted packet's source), arrives there; and
/// db1 (acme/db, `egress: deny`), sent a datagram to its exposed udp/7000 where nothing
/// listens, gets its port unreachable back to the outside host (the outside host's socket
/// reports the refusal), though its segment may send nothing else to the outside.
#[test]
fn an_icmp_error_about_a_conversation_goes_only_to_the_quoted_source() {
    let env = start("att-icmp");
    let (web1, api1) = (vm(&env, WEB1), vm(&env, API1));
    let (router, outside) = (host(&env, ROUTER), host(&env, OUTSIDE));
    let mut s = scapy(&web1.ns);
    let mut f = Findings::new();

    for (mine, theirs, victim) in [
        (WEB1.v4, OUTSIDE_V4, API1.v4),
        (WEB1.v6, OUTSIDE_V6, API1.v6),
    ] {
        let fam = if mine.contains(':') { "IPv6" } else { "IPv4" };
        // The conversation.
        let client_addr = SocketAddr::new(mine.parse().unwrap(), 40000);
        let server_addr = SocketAddr::new(theirs.parse().unwrap(), 7001);
        let client = udp_socket(&web1.ns, client_addr).unwrap_or_else(|e| panic!("{e:#}"));
        let server = udp_socket(&outside.ns, server_addr).unwrap_or_else(|e| panic!("{e:#}"));
        let talked = converse(&client, &server, server_addr);
        f.check(talked.is_ok(), || {
            format!("{fam}: web1 {client_addr} <-> outside {server_addr}: {talked:?}")
        });

        let (error, quote) = if fam == "IPv4" {
            ("ICMP(type=3, code=3)", "IPerror")
        } else {
            ("ICMPv6DestUnreach(code=4)", "IPerror6")
        };
        // The attack: an error quoting web1's question, to a third party.
        let attack = build(
            &mut s,
            &format!(
                "{}/{}/{error}/{quote}(src='{mine}', dst='{theirs}')/UDPerror(sport=40000, dport=7001)/Raw(load={})",
                eth(&web1.mac, &api1.mac),
                l3(mine, victim),
                py_bytes(&payload64(&format!(
                    "isolator attack lab: {fam} error to a third party"
                )))
            ),
        );
        // The twin: an error quoting the outside host's answer, to the outside host.
        let marker = payload64(&format!("isolator attack lab: {fam} error to its source"));
        let twin = build(
            &mut s,
            &format!(
                "{}/{}/{error}/{quote}(src='{theirs}', dst='{mine}')/UDPerror(sport=7001, dport=40000)/Raw(load={})",
                eth(&web1.mac, &router.mac),
                l3(mine, theirs),
                py_bytes(&marker)
            ),
        );
        f.fire_all(
            &env,
            &mut s,
            &[
                Shot::blocked(
                    &format!("{fam}: web1's error about its conversation, to globex-api1"),
                    attack,
                    &WEB1.vif(),
                    Dir::Ingress,
                    verdict::CROSS_TENANT,
                    &Tap::eth0("globex-api1", &api1.ns),
                ),
                Shot::twin(
                    &format!("{fam}: web1's error about the outside's answer, to the outside host"),
                    twin,
                    &WEB1.vif(),
                    Dir::Ingress,
                    &Tap::eth0("the outside host", &outside.ns),
                )
                .marked(&marker),
            ],
        );
    }

    // The stack's own error, from a segment that may send nothing else to the outside.
    let exposed = SocketAddr::new(DB1.v4.parse().unwrap(), DB1_EXPOSED_UDP);
    let sender = udp_socket(
        &outside.ns,
        SocketAddr::new(OUTSIDE_V4.parse().unwrap(), 40002),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    sender
        .connect(exposed)
        .unwrap_or_else(|e| panic!("connect to {exposed}: {e}"));
    let before = env.scrape();
    sender
        .send(b"anyone there?")
        .unwrap_or_else(|e| panic!("send to {exposed}: {e}"));
    let mut buf = [0u8; 64];
    let answer = sender.recv(&mut buf);
    f.check(
        matches!(&answer, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        || {
            format!(
                "the outside host's datagram to db1's exposed {exposed} (no listener) should come \
                 back refused (db1's port unreachable reaching the outside host); got {answer:?}"
            )
        },
    );
    f.extend(prefixed(
        "db1's port unreachable to the outside host",
        expect_drops(&env, &before, &DB1.vif(), Dir::Ingress, &[]),
    ));
    f.finish("ICMP errors", &env);
}

/// A question from `client` to `server_addr`, read by `server`, answered, and the answer
/// read by `client`.
fn converse(
    client: &std::net::UdpSocket,
    server: &std::net::UdpSocket,
    server_addr: SocketAddr,
) -> Result<(), String> {
    client
        .send_to(b"question", server_addr)
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 64];
    let (n, peer) = isolator_tests::net::recv_from_retrying(server, &mut buf)
        .map_err(|e| format!("the question did not arrive: {e}"))?;
    if &buf[..n] != b"question" {
        return Err(format!("the server got {:?}", &buf[..n]));
    }
    server
        .send_to(b"answer", peer)
        .map_err(|e| format!("answer: {e}"))?;
    let (n, from) = isolator_tests::net::recv_from_retrying(client, &mut buf)
        .map_err(|e| format!("the answer did not arrive: {e}"))?;
    let from_ip: IpAddr = from.ip().to_canonical();
    if &buf[..n] != b"answer" || from_ip != server_addr.ip() {
        return Err(format!("the client got {:?} from {from}", &buf[..n]));
    }
    Ok(())
}
