//! Point 3: the exceptions for neighbour discovery, MLD and DHCP clients hold only where
//! they belong: on the link, after the management check, and (from outside) only from the
//! link's infrastructure.
//!
//! Before the fix: a router solicitation, or a neighbour solicitation for the sender's own
//! address, sent unicast to the management host with any payload reached it; NS, NA, RS,
//! MLD and UDP 68->67 left `egress: deny` segments to any address; ND, MLD and UDP 67->68
//! from any outside host reached any VM, and ARP or a neighbour advertisement from outside
//! could claim a VM's address.

use isolator_common::verdict;
use isolator_tests::attack_lab::{
    DB1, DB2, Findings, MGMT, MGMT_V6, OUTSIDE_V4, OUTSIDE_V6, ROUTER, ROUTER_V4, Shot, Tap, WEB1,
    WEB2, link_local, udp_socket,
};
use isolator_tests::lab::VM_IFNAME;
use isolator_tests::netns::ip_n;
use isolator_tests::{Dir, ping};

use super::{build, eth, host, nd_payload_option, scapy, solicited_node, start, vm};

/// From web1: a router solicitation and a neighbour solicitation for web1's own address,
/// each unicast to the management host (fd00:ff::10, a management prefix) with a 64-byte
/// payload, are `management` and never reach it. Twins: the same solicitations sent as the
/// protocol intends (the RS to all routers, where the router receives it; the NS for web2's
/// address to web2's solicited-node group, where web2 receives it), and web1's own stack
/// resolving web2 over IPv6.
#[test]
fn neighbour_discovery_never_reaches_the_management_host() {
    let env = start("att-nd-mgmt");
    let (web1, web2) = (vm(&env, WEB1), vm(&env, WEB2));
    let (mgmt, router) = (host(&env, MGMT), host(&env, ROUTER));
    let mut s = scapy(&web1.ns);
    let at_mgmt = Tap::eth0("the management host", &mgmt.ns);
    let payload = nd_payload_option("isolator attack lab: payload in ND");
    let (web2_group, web2_group_mac) = solicited_node(WEB2.v6);
    let rs = |dst: &str, dst_mac: &str| {
        format!(
            "{}/IPv6(src='{}', dst='{dst}', hlim=255)/ICMPv6ND_RS()/{payload}",
            eth(&web1.mac, dst_mac),
            WEB1.v6
        )
    };
    let ns = |dst: &str, dst_mac: &str, target: &str| {
        format!(
            "{}/IPv6(src='{}', dst='{dst}', hlim=255)/ICMPv6ND_NS(tgt='{target}')/\
             ICMPv6NDOptSrcLLAddr(lladdr='{}')/{payload}",
            eth(&web1.mac, dst_mac),
            WEB1.v6,
            web1.mac
        )
    };
    let shots = [
        Shot::blocked(
            "RS unicast to the management host, with a payload",
            build(&mut s, &rs(MGMT_V6, &mgmt.mac)),
            &WEB1.vif(),
            Dir::Ingress,
            verdict::MANAGEMENT,
            &at_mgmt,
        ),
        Shot::blocked(
            "NS for web1's own address unicast to the management host, with a payload",
            build(&mut s, &ns(MGMT_V6, &mgmt.mac, WEB1.v6)),
            &WEB1.vif(),
            Dir::Ingress,
            verdict::MANAGEMENT,
            &at_mgmt,
        ),
        Shot::twin(
            "RS to all routers (twin)",
            build(&mut s, &rs("ff02::2", "33:33:00:00:00:02")),
            &WEB1.vif(),
            Dir::Ingress,
            &Tap::eth0("the router", &router.ns),
        ),
        Shot::twin(
            "NS for web2 to its solicited-node group (twin)",
            build(&mut s, &ns(&web2_group, &web2_group_mac, WEB2.v6)),
            &WEB1.vif(),
            Dir::Ingress,
            &Tap::eth0("web2", &web2.ns),
        ),
    ];
    let mut f = Findings::new();
    f.fire_all(&env, &mut s, &shots);
    // web1's stack resolves web2 (ND through the enforcer) and reaches it.
    ip_n(&web1.ns, &["-6", "neigh", "flush", "dev", VM_IFNAME]).unwrap_or_else(|e| panic!("{e:#}"));
    let pinged = ping(web1, WEB2.v6.parse().unwrap()).unwrap_or_else(|e| panic!("{e:#}"));
    f.check(pinged, || {
        "web1's stack cannot resolve and ping web2 over IPv6".into()
    });
    f.finish("ND to the management host", &env);
}

/// From db1 (acme/db, `egress: deny`), unicast to the outside host through the router
/// (captured at the router): a neighbour solicitation and an advertisement for db1's own
/// address and a router solicitation (hop limit 255, with a payload), an MLDv2 report, a
/// DHCP request (68->67) and a DHCPv6 request (546->547) are ordinary traffic to the
/// outside: `egress_denied`. Twins, on the link: DHCP discovery to 255.255.255.255 (a
/// listener on db2 gets it), DHCPv6 to ff02::1:2, an MLD report to ff02::16, an NS to db2's
/// solicited-node group, an unsolicited NA to all nodes (all at db2), and an RS to all
/// routers (at the router).
#[test]
fn link_scope_exceptions_do_not_leave_an_egress_deny_segment() {
    let env = start("att-linkscope");
    let (db1, db2, router) = (vm(&env, DB1), vm(&env, DB2), host(&env, ROUTER));
    let mut s = scapy(&db1.ns);
    let at_router = Tap::eth0("the router", &router.ns);
    let at_db2 = Tap::eth0("db2", &db2.ns);
    let payload = nd_payload_option("isolator attack lab: out of a deny segment");
    let to_router = eth(&db1.mac, &router.mac);
    let ll = link_local(&db1.ns, VM_IFNAME).unwrap_or_else(|e| panic!("{e:#}"));
    let (db2_group, db2_group_mac) = solicited_node(DB2.v6);
    let me = DB1.v6;
    let out6 = OUTSIDE_V6;
    let frames: Vec<(&str, String)> = vec![
        (
            "NS for its own address, unicast to the outside host",
            format!(
                "{to_router}/IPv6(src='{me}', dst='{out6}', hlim=255)/ICMPv6ND_NS(tgt='{me}')/{payload}"
            ),
        ),
        (
            "NA for its own address, unicast to the outside host",
            format!(
                "{to_router}/IPv6(src='{me}', dst='{out6}', hlim=255)/ICMPv6ND_NA(tgt='{me}', R=0, S=0, O=1)/\
                 ICMPv6NDOptDstLLAddr(lladdr='{}')/{payload}",
                db1.mac
            ),
        ),
        (
            "RS unicast to the outside host",
            format!("{to_router}/IPv6(src='{me}', dst='{out6}', hlim=255)/ICMPv6ND_RS()/{payload}"),
        ),
        (
            "MLDv2 report unicast to the outside host",
            format!(
                "{to_router}/IPv6(src='{me}', dst='{out6}', hlim=1)/\
                 ICMPv6MLReport2(records=[ICMPv6MLDMultAddrRec(dst='ff02::1:3')])"
            ),
        ),
        (
            "DHCP request (68->67) unicast to the outside host",
            format!(
                "{to_router}/IP(src='{}', dst='{OUTSIDE_V4}')/UDP(sport=68, dport=67)/\
                 BOOTP(op=1, ciaddr='{}', chaddr=mac2str('{}'), xid=0x150151)/\
                 DHCP(options=[('message-type', 'request'), 'end'])",
                DB1.v4, DB1.v4, db1.mac
            ),
        ),
        (
            "DHCPv6 request (546->547) unicast to the outside host",
            format!(
                "{to_router}/IPv6(src='{me}', dst='{out6}')/UDP(sport=546, dport=547)/\
                 DHCP6_Request(trid=0x1502)"
            ),
        ),
    ];
    let mut shots: Vec<Shot> = frames
        .iter()
        .map(|(what, expr)| {
            Shot::blocked(
                what,
                build(&mut s, expr),
                &DB1.vif(),
                Dir::Ingress,
                verdict::EGRESS_DENIED,
                &at_router,
            )
        })
        .collect();
    let twins: Vec<(&str, String, &Tap)> = vec![
        (
            "DHCP discovery to 255.255.255.255 (twin)",
            format!(
                "{}/IP(src='0.0.0.0', dst='255.255.255.255')/UDP(sport=68, dport=67)/\
                 BOOTP(op=1, chaddr=mac2str('{m}'), xid=0x150150)/\
                 DHCP(options=[('message-type', 'discover'), 'end'])",
                eth(&db1.mac, "ff:ff:ff:ff:ff:ff"),
                m = db1.mac
            ),
            &at_db2,
        ),
        (
            "DHCPv6 solicit to ff02::1:2 (twin)",
            format!(
                "{}/IPv6(src='{ll}', dst='ff02::1:2')/UDP(sport=546, dport=547)/DHCP6_Solicit(trid=0x1503)",
                eth(&db1.mac, "33:33:00:01:00:02")
            ),
            &at_db2,
        ),
        (
            "MLDv2 report to ff02::16 (twin)",
            format!(
                "{}/IPv6(src='{ll}', dst='ff02::16', hlim=1)/\
                 ICMPv6MLReport2(records=[ICMPv6MLDMultAddrRec(dst='ff02::1:3')])",
                eth(&db1.mac, "33:33:00:00:00:16")
            ),
            &at_db2,
        ),
        (
            "NS for db2 to its solicited-node group (twin)",
            format!(
                "{}/IPv6(src='{me}', dst='{db2_group}', hlim=255)/ICMPv6ND_NS(tgt='{}')/\
                 ICMPv6NDOptSrcLLAddr(lladdr='{}')/{payload}",
                eth(&db1.mac, &db2_group_mac),
                DB2.v6,
                db1.mac
            ),
            &at_db2,
        ),
        (
            "unsolicited NA for its own address to all nodes (twin)",
            format!(
                "{}/IPv6(src='{me}', dst='ff02::1', hlim=255)/ICMPv6ND_NA(tgt='{me}', R=0, S=0, O=1)/\
                 ICMPv6NDOptDstLLAddr(lladdr='{}')/{payload}",
                eth(&db1.mac, "33:33:00:00:00:01"),
                db1.mac
            ),
            &at_db2,
        ),
        (
            "RS to all routers (twin)",
            format!(
                "{}/IPv6(src='{ll}', dst='ff02::2', hlim=255)/ICMPv6ND_RS()/{payload}",
                eth(&db1.mac, "33:33:00:00:00:02")
            ),
            &at_router,
        ),
    ];
    for (what, expr, tap) in &twins {
        shots.push(Shot::twin(
            what,
            build(&mut s, expr),
            &DB1.vif(),
            Dir::Ingress,
            tap,
        ));
    }
    // A DHCP server's socket on db2 (the segment's own) gets the discovery.
    let listener =
        udp_socket(&db2.ns, "0.0.0.0:67".parse().unwrap()).unwrap_or_else(|e| panic!("{e:#}"));
    let mut f = Findings::new();
    f.fire_all(&env, &mut s, &shots);
    let mut buf = [0u8; 1500];
    let heard = listener.recv_from(&mut buf);
    f.check(
        matches!(&heard, Ok((n, _)) if *n > 240 && buf[..*n].windows(3).any(|w| w == [0x35, 1, 1])),
        || format!("a listener on db2's udp/67 did not get db1's DHCP discovery: {heard:?}"),
    );
    f.finish("link-scope exceptions under egress: deny", &env);
}

/// Sent from the router's namespace (outside every segment) to web1 (unicast to its MAC,
/// judged at web1's vif): a neighbour solicitation, an MLD query, a DHCP offer and a DHCPv6
/// advertisement from outside hosts' addresses (not link-local, no gateway, not the host)
/// are `not_exposed`; an ARP reply claiming web2's address is `arp_spoof`, a neighbour
/// advertisement (from the router's link-local address) claiming web2's address is
/// `nd_spoof`. Twins from the router's own addresses: its RA, an NS, an MLD query and a
/// DHCPv6 advertisement from its link-local address, an ARP request from 10.0.0.1, an NA
/// for its link-local address.
#[test]
fn nd_mld_dhcp_and_arp_from_outside_only_from_the_infrastructure() {
    let env = start("att-outside-l2");
    let (web1, router) = (vm(&env, WEB1), host(&env, ROUTER));
    let mut s = scapy(&router.ns);
    let at_web1 = Tap::eth0("web1", &web1.ns);
    let to_web1 = eth(&router.mac, &web1.mac);
    let router_ll = link_local(&router.ns, VM_IFNAME).unwrap_or_else(|e| panic!("{e:#}"));
    let web1_ll = link_local(&web1.ns, VM_IFNAME).unwrap_or_else(|e| panic!("{e:#}"));
    let (web1_group, _) = solicited_node(WEB1.v6);
    let rmac = &router.mac;
    let w1 = WEB1.v6;
    let ns = |src: &str| {
        format!(
            "{to_web1}/IPv6(src='{src}', dst='{web1_group}', hlim=255)/ICMPv6ND_NS(tgt='{w1}')/\
             ICMPv6NDOptSrcLLAddr(lladdr='{rmac}')"
        )
    };
    let mld_query = |src: &str| {
        format!("{to_web1}/IPv6(src='{src}', dst='ff02::1', hlim=1)/ICMPv6MLQuery(mrd=100)")
    };
    let dhcp6_advertise = |src: &str| {
        format!(
            "{to_web1}/IPv6(src='{src}', dst='{web1_ll}')/UDP(sport=547, dport=546)/\
             DHCP6_Advertise(trid=0x1504)"
        )
    };
    let blocked: Vec<(&str, String, u8)> = vec![
        (
            "NS from an outside host's address",
            ns(OUTSIDE_V6),
            verdict::NOT_EXPOSED,
        ),
        (
            "MLD query from an outside host's address",
            mld_query(OUTSIDE_V6),
            verdict::NOT_EXPOSED,
        ),
        (
            "DHCP offer from an outside host's address",
            format!(
                "{to_web1}/IP(src='{OUTSIDE_V4}', dst='255.255.255.255')/UDP(sport=67, dport=68)/\
                 BOOTP(op=2, yiaddr='10.1.1.50', siaddr='{OUTSIDE_V4}', chaddr=mac2str('{}'), xid=0x150152)/\
                 DHCP(options=[('message-type', 'offer'), ('server_id', '{OUTSIDE_V4}'), \
                 ('router', '{OUTSIDE_V4}'), 'end'])",
                web1.mac
            ),
            verdict::NOT_EXPOSED,
        ),
        (
            "DHCPv6 advertise from an outside host's address",
            dhcp6_advertise(OUTSIDE_V6),
            verdict::NOT_EXPOSED,
        ),
        (
            "ARP reply claiming web2's address",
            format!(
                "{to_web1}/ARP(op=2, hwsrc='{rmac}', psrc='{}', hwdst='{}', pdst='{}')",
                WEB2.v4, web1.mac, WEB1.v4
            ),
            verdict::ARP_SPOOF,
        ),
        (
            "NA from the router's link-local address claiming web2's address",
            format!(
                "{to_web1}/IPv6(src='{router_ll}', dst='{w1}', hlim=255)/\
                 ICMPv6ND_NA(tgt='{}', R=0, S=0, O=1)/ICMPv6NDOptDstLLAddr(lladdr='{rmac}')",
                WEB2.v6
            ),
            verdict::ND_SPOOF,
        ),
    ];
    let twins: Vec<(&str, String)> = vec![
        (
            "the router's RA from its link-local address (twin)",
            format!(
                "{to_web1}/IPv6(src='{router_ll}', dst='ff02::1', hlim=255)/ICMPv6ND_RA(routerlifetime=1800)/\
                 ICMPv6NDOptSrcLLAddr(lladdr='{rmac}')/ICMPv6NDOptPrefixInfo(prefix='fd00:1:1::', prefixlen=64)"
            ),
        ),
        (
            "NS from the router's link-local address (twin)",
            ns(&router_ll.to_string()),
        ),
        (
            "MLD query from the router's link-local address (twin)",
            mld_query(&router_ll.to_string()),
        ),
        (
            "DHCPv6 advertise from the router's link-local address (twin)",
            dhcp6_advertise(&router_ll.to_string()),
        ),
        (
            "ARP request from the router's own address (twin)",
            format!(
                "{to_web1}/ARP(op=1, hwsrc='{rmac}', psrc='{ROUTER_V4}', pdst='{}')",
                WEB1.v4
            ),
        ),
        (
            "NA for the router's own link-local address (twin)",
            format!(
                "{to_web1}/IPv6(src='{router_ll}', dst='{w1}', hlim=255)/\
                 ICMPv6ND_NA(tgt='{router_ll}', R=1, S=0, O=1)/ICMPv6NDOptDstLLAddr(lladdr='{rmac}')"
            ),
        ),
    ];
    let mut shots = Vec::new();
    for (what, expr, code) in &blocked {
        shots.push(Shot::blocked(
            what,
            build(&mut s, expr),
            &WEB1.vif(),
            Dir::Egress,
            *code,
            &at_web1,
        ));
    }
    for (what, expr) in &twins {
        shots.push(Shot::twin(
            what,
            build(&mut s, expr),
            &WEB1.vif(),
            Dir::Egress,
            &at_web1,
        ));
    }
    let mut f = Findings::new();
    f.fire_all(&env, &mut s, &shots);
    f.finish("ND, MLD, DHCP and ARP from outside", &env);
}
