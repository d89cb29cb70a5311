//! Point 1: the sender of a frame is where it entered the host, never what it claims.
//!
//! (a) Before the fix, the egress program took a frame's sender from its source address,
//! else from the vif its source MAC had last been seen sending on ("learned" before any
//! check). A VM without a declared `mac` sent one frame with the router's MAC as source;
//! it was dropped as `management`, but from then on everything the router forwarded from
//! outside counted as that VM's segment: the outside host reached a neighbour's private
//! tcp/22. (b) A SYN from the router's bridge port (a port no policy names) with a source
//! address inside a segment was taken for that segment's and reached its private tcp/22.

use std::net::SocketAddr;

use isolator_common::verdict;
use isolator_tests::Dir;
use isolator_tests::attack_lab::{
    BLOCKED_CONNECT, Findings, MGMT, MGMT_V4, OUTSIDE, OUTSIDE_V4, ROUTER,
    SYNS_PER_BLOCKED_CONNECT, Shot, Tap, WEB1, WEB2, WEB2_EXPOSED_TCP, expect_drops, one_syn_retry,
};
use isolator_tests::echo::{EchoServers, tcp_echo};

use super::{build, dropped, eth, host, l3, prefixed, scapy, start, vm};

/// 1a: the outside host, through the router, cannot connect to web2's private tcp/22
/// (exactly its two SYNs counted as `not_exposed` at web2's vif). web1 (no declared MAC)
/// then sends one frame with the router's MAC as its source, to the management host:
/// dropped as `management`. Afterwards the outside host still cannot connect to web2's
/// tcp/22 (the same exact count; web2 accepted nothing from it there), while its
/// connection to web2's exposed tcp/443 carries data both ways (the twin).
#[test]
fn a_vm_sending_as_the_router_does_not_open_its_segment_to_the_outside() {
    let env = start("att-poison");
    let (web1, web2) = (vm(&env, WEB1), vm(&env, WEB2));
    let (router, mgmt, outside) = (host(&env, ROUTER), host(&env, MGMT), host(&env, OUTSIDE));
    let servers =
        EchoServers::start(&web2.ns, &[22, WEB2_EXPOSED_TCP]).unwrap_or_else(|e| panic!("{e:#}"));
    one_syn_retry(&outside.ns).unwrap_or_else(|e| panic!("{e:#}"));
    let mut f = Findings::new();
    let private: SocketAddr = format!("{}:22", WEB2.v4).parse().unwrap();
    let attack = |when: &str, f: &mut Findings| {
        let before = env.scrape();
        let got =
            tcp_echo(&outside.ns, private, 16, BLOCKED_CONNECT).unwrap_or_else(|e| panic!("{e:#}"));
        f.check(got.refused(), || {
            format!("{when}: the outside host connected to web2's private {private}: {got:?}")
        });
        f.extend(prefixed(
            &format!("{when}: outside -> {private}"),
            expect_drops(
                &env,
                &before,
                &WEB2.vif(),
                Dir::Egress,
                &[(verdict::NOT_EXPOSED, SYNS_PER_BLOCKED_CONNECT)],
            ),
        ));
    };
    attack("before the poisoning frame", &mut f);

    // The poisoning frame.
    let mut s = scapy(&web1.ns);
    let poison = build(
        &mut s,
        &format!(
            "{}/{}/TCP(sport=40001, dport=22, flags='S', seq=1000)",
            eth(&router.mac, &mgmt.mac),
            l3(WEB1.v4, MGMT_V4)
        ),
    );
    f.fire_all(
        &env,
        &mut s,
        &[Shot::blocked(
            "web1 sends with the router's MAC as source, to the management host",
            poison,
            &WEB1.vif(),
            Dir::Ingress,
            verdict::MANAGEMENT,
            &Tap::eth0("the management host", &mgmt.ns),
        )],
    );

    // The attack it enabled: the outside host to a private port of web1's neighbour.
    attack("after the poisoning frame", &mut f);
    // The labels say which VM it was kept from.
    let labelled = dropped(WEB2, Dir::Egress, verdict::NOT_EXPOSED);
    if let Err(e) = env.scrape().value(&labelled) {
        f.check(false, || format!("{e:#}"));
    }

    // The twin: the exposed endpoint of the same VM, from the same outside host.
    let exposed: SocketAddr = format!("{}:{WEB2_EXPOSED_TCP}", WEB2.v4).parse().unwrap();
    let before = env.scrape();
    let got = tcp_echo(
        &outside.ns,
        exposed,
        4096,
        std::time::Duration::from_secs(3),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    f.check(got.echoed(), || {
        format!("the outside host's exchange with web2's exposed {exposed} failed: {got:?}")
    });
    f.extend(prefixed(
        &format!("outside -> {exposed}"),
        expect_drops(&env, &before, &WEB2.vif(), Dir::Egress, &[]),
    ));

    let outside_v4 = OUTSIDE_V4.parse().unwrap();
    let accepted: Vec<String> = servers
        .accepted_from(outside_v4)
        .iter()
        .map(|a| a.local.to_string())
        .collect();
    f.check(!accepted.iter().any(|a| a.ends_with(":22")), || {
        format!("web2 accepted the outside host on tcp/22: {accepted:?}")
    });
    f.check(
        accepted.iter().any(|a| a.ends_with(&format!(":{WEB2_EXPOSED_TCP}"))),
        || format!("web2's exposed tcp/{WEB2_EXPOSED_TCP} accepted nothing from the outside host: {accepted:?}"),
    );
    f.finish("poisoned MAC", &env);
}

/// 1b: a SYN that enters through the router's bridge port with a source address of acme/web
/// (web1's, IPv4 and IPv6) to web2's private tcp/22 is from outside: it never reaches web2,
/// and web2's vif counts it `not_exposed`. The same SYN from web1 itself arrives (twin).
#[test]
fn a_segment_source_address_from_the_router_port_is_outside() {
    let env = start("att-srcaddr");
    let (web1, web2, router) = (vm(&env, WEB1), vm(&env, WEB2), host(&env, ROUTER));
    let mut from_router = scapy(&router.ns);
    let mut from_web1 = scapy(&web1.ns);
    let at_web2 = Tap::eth0("web2", &web2.ns);
    let mut f = Findings::new();
    for (src, dst) in [(WEB1.v4, WEB2.v4), (WEB1.v6, WEB2.v6)] {
        let syn = format!(
            "{}/TCP(sport=40022, dport=22, flags='S', seq=1000)",
            l3(src, dst)
        );
        let forged = build(
            &mut from_router,
            &format!("{}/{syn}", eth(&router.mac, &web2.mac)),
        );
        f.fire_all(
            &env,
            &mut from_router,
            &[Shot::blocked(
                &format!("router port: SYN {src} -> {dst}:22"),
                forged,
                &WEB2.vif(),
                Dir::Egress,
                verdict::NOT_EXPOSED,
                &at_web2,
            )],
        );
        let real = build(
            &mut from_web1,
            &format!("{}/{syn}", eth(&web1.mac, &web2.mac)),
        );
        f.fire_all(
            &env,
            &mut from_web1,
            &[Shot::twin(
                &format!("web1: SYN {src} -> {dst}:22 (twin)"),
                real,
                &WEB2.vif(),
                Dir::Egress,
                &at_web2,
            )],
        );
    }
    f.finish("segment source from the router port", &env);
}
