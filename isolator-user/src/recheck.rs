//! Re-checking tracked connections against a new policy.
//!
//! The kernel admits a connection once, when its opening packet passes (an exposure, a
//! flow, `egress: allow`), and from then on passes its packets by the `CONNTRACK` entry.
//! After a policy swap the daemon judges every entry again, as if its opening packet
//! were sent now, from where it was judged then (the entry records the direction and the
//! vif), and removes those the new policy would not admit. The rules mirror the
//! kernel's (docs/design.md, "The verdict"), restricted to what can open a connection:
//!
//! * opened by a VM (ingress, sender segment S): not into a protected management
//!   prefix or loopback; to the host itself or a gateway only for a service a gateway of
//!   S declares; else the destination is in S, or is an exposed endpoint for the
//!   protocol and port, or a flow S→T admits it, or it is outside every segment and S has
//!   `egress: allow`;
//! * opened towards a VM (egress, receiving segment T) by a sender outside every segment
//!   (as the kernel recorded it, from the interface the packet entered through): the
//!   destination is an exposed endpoint; by a sender in a segment (a vif, or a trusted
//!   uplink), whose segment is that of the source address: the source is in T, or the
//!   destination is exposed, or a flow X→T admits it;
//! * and in either case the vif is still managed.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use isolator_common::{ConnKey, ConnState, RuleSet, SegmentInfo, direction, protocol};

use crate::compile::GatewayPlan;

use crate::compile::Plan;

/// Longest-prefix match over one address family: one table per prefix length in use,
/// longest first. Addresses are right-aligned in a `u128` of `bits` significant bits.
#[derive(Debug)]
struct Lpm<V> {
    bits: u8,
    by_len: Vec<(u8, HashMap<u128, V>)>,
}

impl<V: Clone> Lpm<V> {
    fn new(bits: u8, entries: impl IntoIterator<Item = (u128, u8, V)>) -> Self {
        let mut tables: HashMap<u8, HashMap<u128, V>> = HashMap::new();
        for (addr, len, value) in entries {
            tables
                .entry(len)
                .or_default()
                .insert(addr & mask(len, bits), value);
        }
        let mut by_len: Vec<_> = tables.into_iter().collect();
        by_len.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        Lpm { bits, by_len }
    }

    fn get(&self, addr: u128) -> Option<&V> {
        self.by_len
            .iter()
            .find_map(|(len, table)| table.get(&(addr & mask(*len, self.bits))))
    }
}

fn mask(len: u8, bits: u8) -> u128 {
    if len == 0 {
        0
    } else {
        (u128::MAX << (128 - u32::from(len))) >> (128 - u32::from(bits))
    }
}

fn lpm_v4<V: Clone>(entries: &[(Ipv4Net, V)]) -> Lpm<V> {
    Lpm::new(
        32,
        entries.iter().map(|(net, v)| {
            (
                u128::from(u32::from(net.addr())),
                net.prefix_len(),
                v.clone(),
            )
        }),
    )
}

fn lpm_v6<V: Clone>(entries: &[(Ipv6Net, V)]) -> Lpm<V> {
    Lpm::new(
        128,
        entries
            .iter()
            .map(|(net, v)| (u128::from(net.addr()), net.prefix_len(), v.clone())),
    )
}

/// An address of a [`ConnKey`]: IPv4 is stored IPv4-mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Addr {
    V4(u128),
    V6(u128),
}

impl Addr {
    fn ip(addr: IpAddr) -> Addr {
        match addr {
            IpAddr::V4(a) => Addr::V4(u128::from(u32::from(a))),
            IpAddr::V6(a) => Addr::V6(u128::from(a)),
        }
    }

    /// Loopback (127.0.0.0/8, ::1): never reachable from a link.
    fn loopback(self) -> bool {
        match self {
            Addr::V4(a) => a >> 24 == 127,
            Addr::V6(a) => a == 1,
        }
    }

    fn of(bytes: &[u8; 16]) -> Addr {
        let v6 = Ipv6Addr::from(*bytes);
        match v6.to_ipv4_mapped() {
            Some(v4) => Addr::V4(u128::from(u32::from(v4))),
            None => Addr::V6(u128::from(v6)),
        }
    }
}

/// A pair of tables, one per address family.
#[derive(Debug)]
struct Family<V> {
    v4: Lpm<V>,
    v6: Lpm<V>,
}

impl<V: Clone> Family<V> {
    fn new(v4: &[(Ipv4Net, V)], v6: &[(Ipv6Net, V)]) -> Self {
        Family {
            v4: lpm_v4(v4),
            v6: lpm_v6(v6),
        }
    }

    fn get(&self, addr: Addr) -> Option<&V> {
        match addr {
            Addr::V4(a) => self.v4.get(a),
            Addr::V6(a) => self.v6.get(a),
        }
    }
}

/// The new policy, indexed for judging tracked connections.
#[derive(Debug)]
pub struct Recheck {
    /// Managed vifs: ifindex → segment.
    vifs: HashMap<u32, u32>,
    /// The segments (ids) that may send outside every segment.
    egress_allowed: HashSet<u32>,
    segments: Family<u32>,
    management: Family<RuleSet>,
    exposed: Family<RuleSet>,
    flows: HashMap<(u32, u32), RuleSet>,
    /// The host's own addresses.
    host: HashSet<Addr>,
    /// (segment, gateway address) → services.
    gateways: HashMap<(u32, Addr), RuleSet>,
}

impl Recheck {
    pub fn new(plan: &Plan) -> Self {
        Recheck {
            vifs: plan.vifs.iter().map(|v| (v.ifindex, v.segment)).collect(),
            egress_allowed: plan
                .segments
                .iter()
                .filter(|s| s.flags & SegmentInfo::EGRESS_ALLOW != 0)
                .map(|s| s.id)
                .collect(),
            segments: Family::new(&plan.v4, &plan.v6),
            management: Family::new(&plan.management_v4, &plan.management_v6),
            exposed: Family::new(&plan.exposed_v4, &plan.exposed_v6),
            flows: plan.flows.iter().copied().collect(),
            host: plan.host_addresses.iter().map(|a| Addr::ip(*a)).collect(),
            gateways: plan
                .gateways
                .iter()
                .map(
                    |GatewayPlan {
                         segment,
                         address,
                         services,
                     }| { ((*segment, Addr::ip(*address)), *services) },
                )
                .collect(),
        }
    }

    /// Whether the policy would admit the connection's opening packet now, judged where
    /// it was judged when the connection opened.
    pub fn admits(&self, key: &ConnKey, state: &ConnState) -> bool {
        let Some(&vif_segment) = self.vifs.get(&state.ifindex) else {
            return false;
        };
        let dst = Addr::of(&key.dst);
        let class = match key.protocol {
            1 | 58 => protocol::ICMP,
            other => other,
        };
        let port = match key.protocol {
            6 | 17 => Some(key.dst_port),
            _ => None,
        };
        let exposed = || {
            self.exposed
                .get(dst)
                .is_some_and(|rules| rules.admits(class, port))
        };
        let flow = |from: u32, to: u32| {
            self.flows
                .get(&(from, to))
                .is_some_and(|rules| rules.admits(class, port))
        };
        match state.direction {
            direction::INGRESS => {
                let sender = vif_segment;
                if dst.loopback()
                    || self
                        .management
                        .get(dst)
                        .is_some_and(|rules| rules.admits(class, port))
                {
                    return false;
                }
                if let Some(services) = self.gateways.get(&(sender, dst)) {
                    return services.admits(class, port);
                }
                if self.host.contains(&dst) {
                    return false;
                }
                match self.segments.get(dst).copied() {
                    Some(t) if t == sender => true,
                    Some(t) => exposed() || flow(sender, t),
                    None => self.egress_allowed.contains(&sender),
                }
            }
            direction::EGRESS => {
                let receiver = vif_segment;
                // The sender's place as the kernel recorded it (by the interface the
                // opening packet entered through, not its source address).
                if state.peer == ConnState::PEER_OUTSIDE {
                    return exposed();
                }
                let sender = state.peer;
                sender == receiver || exposed() || flow(sender, receiver)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::compile::Link;
    use crate::policy;

    const POLICY: &str = "\
version: 1
management:
  - prefix: 10.99.0.0/16
  - prefix: 10.50.0.0/16
    services:
      - protocol: tcp
        ports: 22
tenants:
  - name: acme
    flows:
      - from: web
        to: db
        protocol: tcp
        ports: 5432
      - from: web
        to: globex/front
        protocol: udp
        ports: 53
    segments:
      - name: web
        interfaces: [vweb1]
        prefixes: [10.1.0.0/24, fd00:1::/64]
        egress: allow
        expose:
          - address: 10.1.0.10
            protocol: tcp
            ports: 443
          - address: fd00:1::10
            protocol: icmp
      - name: db
        interfaces: [vdb1]
        prefixes: [10.2.0.0/24, fd00:2::/64]
        egress: deny
  - name: globex
    segments:
      - name: front
        interfaces: [vfront1]
        prefixes: [10.3.0.0/24]
";

    const WEB: u32 = 11;
    const DB: u32 = 12;
    const FRONT: u32 = 13;

    fn recheck(text: &str) -> Recheck {
        let policy = policy::parse(text, "policy.yaml").expect("a valid policy");
        let links = [("vweb1", WEB), ("vdb1", DB), ("vfront1", FRONT)]
            .map(|(name, ifindex)| Link::veth(name, ifindex));
        Recheck::new(&Plan::new(&policy, links.as_slice()).expect("a plan"))
    }

    fn bytes(addr: &str) -> [u8; 16] {
        match addr.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        }
    }

    fn conn(src: &str, dst: &str, protocol: u8, dst_port: u16) -> ConnKey {
        ConnKey {
            src: bytes(src),
            dst: bytes(dst),
            src_port: 40000,
            dst_port,
            protocol,
            _pad: [0; 3],
        }
    }

    fn at(direction: u8, ifindex: u32) -> ConnState {
        ConnState {
            last_seen_ns: 1,
            state: isolator_common::conntrack::ESTABLISHED,
            direction,
            ifindex,
            ..ConnState::default()
        }
    }

    /// The id a plan of [`POLICY`] gives `tenant`/`segment`.
    fn segment_id(tenant: &str, segment: &str) -> u32 {
        let policy = policy::parse(POLICY, "policy.yaml").expect("a valid policy");
        let plan = Plan::new(&policy, crate::compile::HostView::default()).expect("a plan");
        plan.segments
            .iter()
            .find(|s| &*s.tenant == tenant && &*s.name == segment)
            .expect("a segment of the policy")
            .id
    }

    /// Opened at the receiver's egress by a VM of segment `peer` (the sender as the kernel
    /// placed it, by the interface its packet entered through).
    fn from_segment(ifindex: u32, peer: u32) -> ConnState {
        ConnState {
            peer,
            ..at(direction::EGRESS, ifindex)
        }
    }

    /// Opened at the receiver's egress by a sender the kernel placed outside every
    /// segment (whatever its source address claims).
    fn from_outside(ifindex: u32) -> ConnState {
        ConnState {
            peer: ConnState::PEER_OUTSIDE,
            ..at(direction::EGRESS, ifindex)
        }
    }

    const IN: u8 = direction::INGRESS;

    #[test]
    fn connections_are_judged_like_their_opening_packet() {
        let r = recheck(POLICY);
        let cases: &[(&str, ConnKey, ConnState, bool)] = &[
            (
                "flow web->db on its port",
                conn("10.1.0.5", "10.2.0.7", 6, 5432),
                at(IN, WEB),
                true,
            ),
            (
                "flow web->db, another port",
                conn("10.1.0.5", "10.2.0.7", 6, 5433),
                at(IN, WEB),
                false,
            ),
            (
                "flow web->db, other protocol",
                conn("10.1.0.5", "10.2.0.7", 17, 5432),
                at(IN, WEB),
                false,
            ),
            (
                "no flow db->web",
                conn("10.2.0.7", "10.1.0.5", 6, 5432),
                at(IN, DB),
                false,
            ),
            (
                "exposed endpoint, from another tenant",
                conn("10.3.0.9", "10.1.0.10", 6, 443),
                at(IN, FRONT),
                true,
            ),
            (
                "exposed address, unexposed port",
                conn("10.3.0.9", "10.1.0.10", 6, 80),
                at(IN, FRONT),
                false,
            ),
            (
                "unexposed address of the segment",
                conn("10.3.0.9", "10.1.0.11", 6, 443),
                at(IN, FRONT),
                false,
            ),
            (
                "exposed endpoint, opened at the receiver's egress from outside",
                conn("192.0.2.1", "10.1.0.10", 6, 443),
                from_outside(WEB),
                true,
            ),
            (
                "not exposed, from outside",
                conn("192.0.2.1", "10.1.0.11", 6, 443),
                from_outside(WEB),
                false,
            ),
            (
                "flow into db, opened at db's egress by a web VM",
                conn("10.1.0.5", "10.2.0.7", 6, 5432),
                from_segment(DB, segment_id("acme", "web")),
                true,
            ),
            (
                "a web source address, but entered from outside: the flow does not apply",
                conn("10.1.0.5", "10.2.0.7", 6, 5432),
                from_outside(DB),
                false,
            ),
            (
                "entered from outside, to an exposed endpoint",
                conn("10.2.0.9", "10.1.0.10", 6, 443),
                from_outside(WEB),
                true,
            ),
            (
                "to loopback, even with egress: allow",
                conn("10.1.0.5", "127.0.0.1", 6, 80),
                at(IN, WEB),
                false,
            ),
            (
                "cross-tenant flow web->globex/front",
                conn("10.1.0.5", "10.3.0.2", 17, 53),
                at(IN, WEB),
                true,
            ),
            (
                "egress: allow",
                conn("10.1.0.5", "192.0.2.1", 6, 80),
                at(IN, WEB),
                true,
            ),
            (
                "egress: deny",
                conn("10.2.0.7", "192.0.2.1", 6, 80),
                at(IN, DB),
                false,
            ),
            (
                "management prefix, every service",
                conn("10.1.0.5", "10.99.1.1", 6, 80),
                at(IN, WEB),
                false,
            ),
            (
                "management prefix, protected port",
                conn("10.1.0.5", "10.50.0.1", 6, 22),
                at(IN, WEB),
                false,
            ),
            (
                "management prefix, unprotected port: an outside destination",
                conn("10.1.0.5", "10.50.0.1", 6, 80),
                at(IN, WEB),
                true,
            ),
            (
                "same segment",
                conn("10.1.0.5", "10.1.0.6", 6, 80),
                at(IN, WEB),
                true,
            ),
            (
                "IPv6 echo to an exposed address",
                conn("fd00:2::7", "fd00:1::10", 58, 0),
                at(IN, DB),
                true,
            ),
            (
                "IPv6 TCP to that address",
                conn("fd00:2::7", "fd00:1::10", 6, 443),
                at(IN, DB),
                false,
            ),
            (
                "IPv6 flow web->db",
                conn("fd00:1::5", "fd00:2::7", 6, 5432),
                at(IN, WEB),
                true,
            ),
            (
                "IPv4 echo into db (no flow for icmp)",
                conn("10.1.0.5", "10.2.0.7", 1, 0),
                at(IN, WEB),
                false,
            ),
            (
                "opened on a vif the policy no longer manages",
                conn("10.1.0.5", "10.2.0.7", 6, 5432),
                at(IN, 99),
                false,
            ),
        ];
        for (what, key, state, expected) in cases {
            assert_eq!(r.admits(key, state), *expected, "{what}");
        }
    }

    #[test]
    fn a_narrower_policy_revokes_what_it_no_longer_admits() {
        let key = conn("10.1.0.5", "10.2.0.7", 6, 5432);
        let state = at(IN, WEB);
        assert!(recheck(POLICY).admits(&key, &state));
        let without_flow = POLICY.replace("        ports: 5432\n", "        ports: 5433\n");
        assert!(!recheck(&without_flow).admits(&key, &state));
        let denied = POLICY.replace("egress: allow", "egress: deny");
        assert!(!recheck(&denied).admits(&conn("10.1.0.5", "192.0.2.1", 6, 80), &state));
        let unexposed = POLICY.replace("ports: 443", "ports: 8443");
        assert!(
            !recheck(&unexposed)
                .admits(&conn("192.0.2.1", "10.1.0.10", 6, 443), &from_outside(WEB))
        );
    }

    #[test]
    fn longest_prefix_wins_and_lengths_mask_correctly() {
        let lpm = lpm_v4(&[
            ("10.0.0.0/8".parse().unwrap(), 1),
            ("10.1.0.0/16".parse().unwrap(), 2),
            ("10.1.2.3/32".parse().unwrap(), 3),
            ("0.0.0.0/0".parse().unwrap(), 0),
        ]);
        let v4 = |a: &str| u128::from(u32::from(a.parse::<std::net::Ipv4Addr>().unwrap()));
        assert_eq!(lpm.get(v4("10.1.2.3")), Some(&3));
        assert_eq!(lpm.get(v4("10.1.2.4")), Some(&2));
        assert_eq!(lpm.get(v4("10.2.0.1")), Some(&1));
        assert_eq!(lpm.get(v4("11.0.0.1")), Some(&0));
        let v6 = lpm_v6(&[
            ("fd00::/8".parse().unwrap(), 1),
            ("fd00:1::/64".parse().unwrap(), 2),
        ]);
        let a6 = |a: &str| u128::from(a.parse::<std::net::Ipv6Addr>().unwrap());
        assert_eq!(v6.get(a6("fd00:1::5")), Some(&2));
        assert_eq!(v6.get(a6("fd00:2::5")), Some(&1));
        assert_eq!(v6.get(a6("fe80::1")), None);
        assert_eq!(mask(32, 32), u128::from(u32::MAX));
        assert_eq!(mask(128, 128), u128::MAX);
        assert_eq!(mask(0, 128), 0);
    }
}
