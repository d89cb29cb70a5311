//! Item 4: a management prefix that is not on the VM's link but behind a router. The VM's
//! route to it (and to an outside network) goes via the lab router on the bridge; its
//! frames carry the router's MAC and a destination beyond it, and must still be judged by
//! that destination. Every route here is to lab addresses only: no namespace gets a
//! default route.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use isolator_tests::failclosed_lab::quiet_v4;
use isolator_tests::netns::{in_netns, sysctl};
use isolator_tests::{Env, Lab, ping_count};

use super::{neighbour, static_fdb};
use crate::failclosed::{Problems, captured, carrying, expect_exactly, settle};

const POLICY: &str = r#"version: 1
management:
  - prefix: 192.168.100.0/24
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24]
"#;

const MGMT: &str = "192.168.100.10";
const OUTSIDE: &str = "203.0.113.10";
const PORT: u16 = 9000;

/// Item 4. web1 (10.1.1.2/24, egress allow) reaches 192.168.100.0/24 (a management
/// prefix) and 203.0.113.0/24 only through the router 10.1.1.1 on the bridge, behind
/// which the management host and an outside host sit on links of their own. A UDP
/// datagram and an echo request to the management host drop at web1's XDP as
/// `management` and never reach it (a capture on its interface); the twins to the outside
/// host arrive (the datagram captured there, the echo answered: `ingress pass` and the
/// reply's `egress pass`).
#[test]
fn management_behind_a_router_is_unreachable_and_the_outside_is_not() {
    let mut lab = Lab::new("rp-routed").unwrap_or_else(|e| panic!("harness: {e:#}"));
    let web1 =
        isolator_tests::failclosed_lab::add_v4_vm(&mut lab, "web1", "vacme-web1", "10.1.1.2/24")
            .unwrap_or_else(|e| panic!("harness: {e:#}"));
    let router = lab
        .add_router("router", "xrouter", &["10.1.1.1/24"])
        .unwrap_or_else(|e| panic!("harness: {e:#}"));
    let mgmt = lab
        .add_linked_host(
            "mgmt",
            "router",
            "rmgmt",
            &["192.168.100.1/24"],
            &["192.168.100.10/24"],
            &["10.0.0.0/8 via 192.168.100.1"],
        )
        .unwrap_or_else(|e| panic!("harness: {e:#}"));
    let outside = lab
        .add_linked_host(
            "outside",
            "router",
            "rout",
            &["203.0.113.1/24"],
            &["203.0.113.10/24"],
            &["10.0.0.0/8 via 203.0.113.1"],
        )
        .unwrap_or_else(|e| panic!("harness: {e:#}"));
    for ns in [&router.ns, &mgmt.ns, &outside.ns] {
        quiet_v4(ns).unwrap_or_else(|e| panic!("harness: {e:#}"));
        sysctl(ns, "net.ipv6.conf.eth0.disable_ipv6", "1")
            .unwrap_or_else(|e| panic!("harness: {e:#}"));
    }
    for route in [
        "192.168.100.0/24 via 10.1.1.1",
        "203.0.113.0/24 via 10.1.1.1",
    ] {
        lab.add_route(&web1.ns, route)
            .unwrap_or_else(|e| panic!("harness: {e:#}"));
    }
    neighbour(&web1.ns, "10.1.1.1", &router.mac);
    neighbour(&router.ns, "10.1.1.2", &web1.mac);
    static_fdb(&lab, &web1.mac, &web1.vif);
    static_fdb(&lab, &router.mac, "xrouter");
    let env = Env::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    let w1 = web1.vif.as_str();
    let vifs = [w1];
    let sinks: Vec<UdpSocket> = [&mgmt.ns, &outside.ns]
        .into_iter()
        .map(|ns| {
            in_netns(ns, || Ok(UdpSocket::bind(("0.0.0.0", PORT))?))
                .unwrap_or_else(|e| panic!("harness: UDP sink in {ns}: {e:#}"))
        })
        .collect();
    let client = in_netns(&web1.ns, || Ok(UdpSocket::bind(("0.0.0.0", 0))?))
        .unwrap_or_else(|e| panic!("harness: UDP client in web1: {e:#}"));
    let mut bad = Problems::new();
    for (host, dst, key) in [
        ("the management host", MGMT, "ingress management"),
        ("the outside host (twin)", OUTSIDE, "ingress pass"),
    ] {
        let what = format!("UDP from web1 to {host} {dst}:{PORT} via the router");
        let marker = format!("rp routed {dst}");
        let before = settle(&vifs, Duration::from_millis(300), || env.scrape());
        let (_, frames) = captured(&[&mgmt.ns, &outside.ns], || {
            let target: SocketAddr = format!("{dst}:{PORT}").parse().expect("address");
            client
                .send_to(marker.as_bytes(), target)
                .unwrap_or_else(|e| panic!("harness: sending {what}: {e}"));
            expect_exactly(
                &mut bad,
                env.daemon(),
                &vifs,
                &before,
                &[(w1, key, 1.0)],
                &what,
            )
        });
        let (at_mgmt, at_outside) = (carrying(&frames[0], &marker), carrying(&frames[1], &marker));
        let wanted = usize::from(dst == OUTSIDE);
        bad.check(at_mgmt == 0 && at_outside == wanted, || {
            format!(
                "{what}: expected nothing at the management host and {wanted} cop(ies) at the \
                 outside host, {at_mgmt} and {at_outside} arrived"
            )
        });
    }
    for (host, dst, answered, moves) in [
        (
            "the management host",
            MGMT,
            0,
            vec![(w1, "ingress management", 1.0)],
        ),
        (
            "the outside host (twin)",
            OUTSIDE,
            1,
            vec![(w1, "ingress pass", 1.0), (w1, "egress pass", 1.0)],
        ),
    ] {
        let what = format!("echo request from web1 to {host} {dst} via the router");
        let before = settle(&vifs, Duration::from_millis(300), || env.scrape());
        let replies = ping_count(
            &web1.ns,
            dst.parse().expect("address"),
            1,
            Duration::ZERO,
            Duration::from_millis(if answered == 1 { 2000 } else { 500 }),
        )
        .unwrap_or_else(|e| panic!("harness: {e:#}"));
        bad.check(replies == answered, || {
            format!("{what}: {answered} reply expected, {replies} came")
        });
        expect_exactly(&mut bad, env.daemon(), &vifs, &before, &moves, &what);
    }
    drop(sinks);
    bad.finish("management behind a router", POLICY, &env.log_tail());
}
