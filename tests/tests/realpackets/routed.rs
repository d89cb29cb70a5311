//! Item 4: a management prefix that is not on the VM's link but behind a router. The VM's
//! route to it (and to an outside network) goes via the lab router on the bridge; its
//! frames carry the router's MAC and a destination beyond it, and must still be judged by
//! that destination. Every route here is to lab addresses only: no namespace gets a
//! default route.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use isolator_tests::failclosed_lab::quiet_v4;
use isolator_tests::netns::{in_netns, sysctl};
use isolator_tests::{Env, Lab, ping_count};

use super::{neighbour, static_fdb};
use crate::failclosed::{Problems, captured, carrying, expect_exactly, settle};

const POLICY: &str = r#"version: 1
management:
  - prefix: 192.168.100.0/24
  - prefix: "fd00:ff::/64"
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24, "fd00:1:1::/64"]
"#;

const PORT: u16 = 9000;

/// The addresses of one family: (CIDR, address) of web1 and the router on the bridge, of
/// the router and the management host on their link, of the router and the outside host
/// on theirs; and the segment's prefix (the routes back).
struct Plan {
    web1: &'static str,
    router_lan: (&'static str, &'static str),
    mgmt: (&'static str, &'static str, &'static str),
    outside: (&'static str, &'static str, &'static str),
    segment: &'static str,
}

impl Plan {
    fn mgmt_addr(&self) -> IpAddr {
        self.mgmt.2.parse().expect("address")
    }
    fn outside_addr(&self) -> IpAddr {
        self.outside.2.parse().expect("address")
    }
}

const V4: Plan = Plan {
    web1: "10.1.1.2/24",
    router_lan: ("10.1.1.1/24", "10.1.1.1"),
    mgmt: ("192.168.100.1/24", "192.168.100.10/24", "192.168.100.10"),
    outside: ("203.0.113.1/24", "203.0.113.10/24", "203.0.113.10"),
    segment: "10.0.0.0/8",
};

const V6: Plan = Plan {
    web1: "fd00:1:1::2/64",
    router_lan: ("fd00:1:1::1/64", "fd00:1:1::1"),
    mgmt: ("fd00:ff::1/64", "fd00:ff::10/64", "fd00:ff::10"),
    outside: ("2001:db8:ff::1/64", "2001:db8:ff::10/64", "2001:db8:ff::10"),
    segment: "fd00:1:1::/64",
};

/// Item 4 over IPv4: see [`behind_a_router`].
#[test]
fn management_behind_a_router_is_unreachable_and_the_outside_is_not() {
    behind_a_router("rp-routed4", &V4);
}

/// Item 4 over IPv6: see [`behind_a_router`].
#[test]
fn management_behind_a_router_is_unreachable_and_the_outside_is_not_v6() {
    behind_a_router("rp-routed6", &V6);
}

/// web1 (acme/web, egress allow) reaches the management prefix and an outside network
/// only through the router on the bridge, behind which the management host and an
/// outside host sit on links of their own. A UDP datagram and an echo request to the
/// management host drop at web1's XDP as `management` and never reach it (a capture on
/// its interface); the twins to the outside host arrive (the datagram captured there, the
/// echo answered: `ingress pass` and the reply's `egress pass`).
fn behind_a_router(hint: &str, plan: &Plan) {
    let v6 = plan.web1.contains(':');
    let mut lab = Lab::new(hint).unwrap_or_else(|e| panic!("harness: {e:#}"));
    let web1 = lab
        .add_vm("web1", "vacme-web1", &[plan.web1])
        .unwrap_or_else(|e| panic!("harness: {e:#}"));
    let router = lab
        .add_router("router", "xrouter", &[plan.router_lan.0])
        .unwrap_or_else(|e| panic!("harness: {e:#}"));
    let back = format!("{} via {}", plan.segment, strip(plan.mgmt.0));
    let mgmt = lab
        .add_linked_host(
            "mgmt",
            "router",
            "rmgmt",
            &[plan.mgmt.0],
            &[plan.mgmt.1],
            &[&back],
        )
        .unwrap_or_else(|e| panic!("harness: {e:#}"));
    let back = format!("{} via {}", plan.segment, strip(plan.outside.0));
    let outside = lab
        .add_linked_host(
            "outside",
            "router",
            "rout",
            &[plan.outside.0],
            &[plan.outside.1],
            &[&back],
        )
        .unwrap_or_else(|e| panic!("harness: {e:#}"));
    if !v6 {
        // IPv4 only: no multicast listener reports of anyone's kernel among the counted
        // frames.
        for ns in [&web1.ns, &router.ns, &mgmt.ns, &outside.ns] {
            quiet_v4(ns).unwrap_or_else(|e| panic!("harness: {e:#}"));
            sysctl(ns, "net.ipv6.conf.eth0.disable_ipv6", "1")
                .unwrap_or_else(|e| panic!("harness: {e:#}"));
        }
    }
    for beyond in [plan.mgmt.0, plan.outside.0] {
        let route = format!("{} via {}", network(beyond), plan.router_lan.1);
        lab.add_route(&web1.ns, &route)
            .unwrap_or_else(|e| panic!("harness: {e:#}"));
    }
    neighbour(&web1.ns, plan.router_lan.1, &router.mac);
    neighbour(&router.ns, strip(plan.web1), &web1.mac);
    static_fdb(&lab, &web1.mac, &web1.vif);
    static_fdb(&lab, &router.mac, "xrouter");
    let env = Env::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    let w1 = web1.vif.as_str();
    let vifs = [w1];
    // With IPv6 on, the kernels' own multicast listener reports come up to a second
    // apart after an interface comes up: wait for a longer quiet.
    let quiet = Duration::from_millis(if v6 { 1200 } else { 300 });
    let any = if v6 { "::" } else { "0.0.0.0" };
    let _sinks: Vec<UdpSocket> = [&mgmt.ns, &outside.ns]
        .into_iter()
        .map(|ns| {
            in_netns(ns, || Ok(UdpSocket::bind((any, PORT))?))
                .unwrap_or_else(|e| panic!("harness: UDP sink in {ns}: {e:#}"))
        })
        .collect();
    let client = in_netns(&web1.ns, || Ok(UdpSocket::bind((any, 0))?))
        .unwrap_or_else(|e| panic!("harness: UDP client in web1: {e:#}"));
    let mut bad = Problems::new();
    for (host, dst, key) in [
        (
            "the management host",
            plan.mgmt_addr(),
            "ingress management",
        ),
        (
            "the outside host (twin)",
            plan.outside_addr(),
            "ingress pass",
        ),
    ] {
        let what = format!("UDP from web1 to {host} {dst} port {PORT} via the router");
        let marker = format!("rp routed {dst}");
        let before = settle(&vifs, quiet, || env.scrape());
        let (_, frames) = captured(&[&mgmt.ns, &outside.ns], || {
            client
                .send_to(marker.as_bytes(), SocketAddr::new(dst, PORT))
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
        let wanted = usize::from(dst == plan.outside_addr());
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
            plan.mgmt_addr(),
            0,
            vec![(w1, "ingress management", 1.0)],
        ),
        (
            "the outside host (twin)",
            plan.outside_addr(),
            1,
            vec![(w1, "ingress pass", 1.0), (w1, "egress pass", 1.0)],
        ),
    ] {
        let what = format!("echo request from web1 to {host} {dst} via the router");
        let before = settle(&vifs, quiet, || env.scrape());
        let replies = ping_count(
            &web1.ns,
            dst,
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
    bad.finish("management behind a router", POLICY, &env.log_tail());
}

/// `10.1.1.2/24` -> `10.1.1.2`.
fn strip(cidr: &str) -> &str {
    cidr.split_once('/').map_or(cidr, |(a, _)| a)
}

/// The network of a CIDR whose host part is `.1` / `::1` (the router's side of a link):
/// `192.168.100.1/24` -> `192.168.100.0/24`, `fd00:ff::1/64` -> `fd00:ff::/64`.
fn network(cidr: &str) -> String {
    let (addr, len) = cidr.split_once('/').expect("CIDR");
    let net = addr
        .strip_suffix(".1")
        .map(|a| format!("{a}.0"))
        .or_else(|| addr.strip_suffix("::1").map(|a| format!("{a}::")))
        .expect("a .1 or ::1 address");
    format!("{net}/{len}")
}
