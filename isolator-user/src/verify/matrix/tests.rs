//! Probe selection, pure over a policy and the host's vifs.

use super::*;

/// web and app of acme (IPv4 and IPv6), db of globex (IPv4 only, no vif here); a flow
/// web -> app on TCP 8080 and UDP 5000-5010; app exposes 10.1.2.10 on TCP 443; web
/// exposes ICMP; two management prefixes (one fully protected, one only on SSH).
const POLICY: &str = r#"version: 1
management:
  - prefix: 192.168.100.0/24
  - prefix: 172.16.0.10/32
    services:
      - {protocol: tcp, ports: 22}
tenants:
  - name: acme
    flows:
      - {from: web, to: app, protocol: tcp, ports: 8080}
      - {from: web, to: app, protocol: udp, ports: "5000-5010"}
    segments:
      - name: web
        interfaces: ["vweb*"]
        prefixes: [10.1.1.0/24, "fd00:1:1::/64"]
        expose:
          - {address: 10.1.1.0/24, protocol: icmp}
      - name: app
        interfaces:
          - "vapp*"
          - name: vapp-fixed
            addresses: [10.1.2.2]
        prefixes: [10.1.2.0/24, "fd00:1:2::/64"]
        expose:
          - {address: 10.1.2.10, protocol: tcp, ports: 443}
  - name: globex
    segments:
      - name: db
        interfaces: ["vdb*"]
        prefixes: [10.2.1.0/24]
"#;

fn policy() -> Policy {
    crate::policy::parse(POLICY, "policy.yaml").expect("a valid policy")
}

fn vif(name: &str, ifindex: u32, segment: u32, addresses: &[&str]) -> ManagedVif {
    ManagedVif {
        name: name.into(),
        ifindex,
        segment,
        mac: None,
        addresses: addresses.iter().map(|a| a.parse().expect("net")).collect(),
        vlans: Vec::new(),
    }
}

/// web1 (no declared address), app's fixed vif and a second app vif; no db vif.
fn vifs() -> Vec<ManagedVif> {
    vec![
        vif("vweb1", 11, 0, &[]),
        vif("vapp-fixed", 12, 1, &["10.1.2.2/32"]),
        vif("vapp2", 13, 1, &[]),
    ]
}

fn cell(from: From, to: To) -> CellPlan {
    plan(&policy(), &vifs())
        .into_iter()
        .find(|c| c.from == from && c.to == to)
        .expect("a cell")
}

/// A cell's probes as (service, src, dst, why, receiver).
fn probes(c: &CellPlan) -> Vec<(String, String, String, &'static str, Option<u32>)> {
    c.probes
        .iter()
        .map(|p| {
            (
                p.service(),
                p.src.to_string(),
                p.dst.to_string(),
                p.why,
                p.receiver,
            )
        })
        .collect()
}

fn row(
    service: &str,
    src: &str,
    dst: &str,
    why: &'static str,
    receiver: Option<u32>,
) -> (String, String, String, &'static str, Option<u32>) {
    (service.into(), src.into(), dst.into(), why, receiver)
}

#[test]
fn every_segment_and_outside_by_every_segment_management_and_outside() {
    let cells = plan(&policy(), &vifs());
    // 3 segments + outside, by 3 segments + management + outside.
    assert_eq!(cells.len(), 4 * 5);
    assert_eq!(cells[0].from, From::Segment(0));
    assert_eq!(cells[3].to, To::Management);
    assert_eq!(cells[19].from, From::Outside);
    assert_eq!(cells[19].to, To::Outside);
}

#[test]
fn between_two_segments_each_exposure_each_flow_and_what_neither_admits() {
    let c = cell(From::Segment(0), To::Segment(1));
    assert_eq!(c.status, Status::Probed);
    assert!(c.probes.iter().all(|p| p.sender == Some(11)));
    assert_eq!(
        probes(&c),
        vec![
            // The exposure, at its address (no vif declares it: app's first vif).
            row("tcp/443", "10.1.1.1", "10.1.2.10", why::EXPOSED, Some(12)),
            // The flows at the address app's vif declares (the range's first port).
            row("tcp/8080", "10.1.1.1", "10.1.2.2", why::FLOW, Some(12)),
            row("udp/5000", "10.1.1.1", "10.1.2.2", why::FLOW, Some(12)),
            // What neither admits.
            row("tcp/9", "10.1.1.1", "10.1.2.2", why::NOT_ALLOWED, Some(12)),
            row("udp/9", "10.1.1.1", "10.1.2.2", why::NOT_ALLOWED, Some(12)),
            row("icmp", "10.1.1.1", "10.1.2.2", why::NOT_ALLOWED, Some(12)),
            // IPv6: no declared address, so the first of app's prefix (not the
            // sender's), received by app's first vif.
            row("tcp/8080", "fd00:1:1::", "fd00:1:2::", why::FLOW, Some(12)),
            row("udp/5000", "fd00:1:1::", "fd00:1:2::", why::FLOW, Some(12)),
            row(
                "tcp/9",
                "fd00:1:1::",
                "fd00:1:2::",
                why::NOT_ALLOWED,
                Some(12)
            ),
            row(
                "udp/9",
                "fd00:1:1::",
                "fd00:1:2::",
                why::NOT_ALLOWED,
                Some(12)
            ),
            row(
                "icmp",
                "fd00:1:1::",
                "fd00:1:2::",
                why::NOT_ALLOWED,
                Some(12)
            ),
        ]
    );
}

#[test]
fn the_reverse_direction_has_no_flow_and_an_icmp_exposure_is_no_sample() {
    let c = cell(From::Segment(1), To::Segment(0));
    // IPv4: app sends from its fixed vif's declared address; web exposes ICMP on its
    // whole prefix, so the ICMP probe is the exposure's and there is no ICMP sample.
    // IPv6: the fixed vif declares none of the family (it could not send one), so the
    // vif that declares nothing sends, from the first address of app's prefix.
    assert_eq!(
        probes(&c),
        vec![
            row("icmp", "10.1.2.2", "10.1.1.1", why::EXPOSED, Some(11)),
            row("tcp/9", "10.1.2.2", "10.1.1.1", why::NOT_ALLOWED, Some(11)),
            row("udp/9", "10.1.2.2", "10.1.1.1", why::NOT_ALLOWED, Some(11)),
            row(
                "tcp/9",
                "fd00:1:2::",
                "fd00:1:1::",
                why::NOT_ALLOWED,
                Some(11)
            ),
            row(
                "udp/9",
                "fd00:1:2::",
                "fd00:1:1::",
                why::NOT_ALLOWED,
                Some(11)
            ),
            row(
                "icmp",
                "fd00:1:2::",
                "fd00:1:1::",
                why::NOT_ALLOWED,
                Some(11)
            ),
        ]
    );
    let senders: Vec<_> = c.probes.iter().map(|p| p.sender).collect();
    assert_eq!(
        senders,
        [Some(12), Some(12), Some(12), Some(13), Some(13), Some(13)]
    );
}

#[test]
fn a_segment_without_a_vif_is_no_sender_and_as_receiver_only_ingress_judges() {
    let c = cell(From::Segment(2), To::Segment(0));
    assert_eq!(c.status, Status::NoVif);
    assert!(c.probes.is_empty());
    // web -> db: IPv4 only (db has no IPv6 prefix), no receiver.
    let c = cell(From::Segment(0), To::Segment(2));
    assert_eq!(c.status, Status::Probed);
    assert!(
        c.note
            .as_deref()
            .is_some_and(|n| n.contains("only by the sender's ingress"))
    );
    assert!(
        c.probes
            .iter()
            .all(|p| !p.dst.is_ipv6() && p.receiver.is_none())
    );
    assert_eq!(
        c.probes.iter().map(Probe::service).collect::<Vec<_>>(),
        ["tcp/9", "udp/9", "icmp"]
    );
    // Outside to db: nothing of this host judges it.
    assert_eq!(cell(From::Outside, To::Segment(2)).status, Status::NoVif);
}

#[test]
fn within_a_segment_another_vif_receives() {
    let c = cell(From::Segment(1), To::Segment(1));
    assert!(c.note.is_none());
    // The sender is never the receiver: the fixed vif sends IPv4 to vapp2, vapp2 IPv6 to
    // the fixed vif.
    for p in &c.probes {
        let expected = if p.dst.is_ipv6() { (13, 12) } else { (12, 13) };
        assert_eq!(
            (p.sender, p.receiver),
            (Some(expected.0), Some(expected.1)),
            "{p:?}"
        );
    }
    // The exposure of app, and samples at an address of app that is not the sender's.
    let v4: Vec<_> = probes(&c)
        .into_iter()
        .filter(|p| !p.1.contains(':'))
        .collect();
    assert_eq!(
        v4[0],
        row("tcp/443", "10.1.2.2", "10.1.2.10", why::EXPOSED, Some(13))
    );
    assert!(
        v4[1..]
            .iter()
            .all(|p| p.2 == "10.1.2.1" && p.3 == why::WITHIN),
        "{v4:?}"
    );
}

#[test]
fn management_each_protected_service_and_one_that_is_not() {
    let c = cell(From::Segment(0), To::Management);
    assert_eq!(
        probes(&c),
        vec![
            // Every service protected: SSH and ICMP.
            row("tcp/22", "10.1.1.1", "192.168.100.1", why::PROTECTED, None),
            row("icmp", "10.1.1.1", "192.168.100.1", why::PROTECTED, None),
            // Only SSH: and a port it does not protect.
            row("tcp/22", "10.1.1.1", "172.16.0.10", why::PROTECTED, None),
            row("tcp/9", "10.1.1.1", "172.16.0.10", why::UNPROTECTED, None),
        ]
    );
}

#[test]
fn outside_sends_from_a_documentation_address_and_is_sent_to_one() {
    let c = cell(From::Segment(0), To::Outside);
    let got = probes(&c);
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(
        got[0],
        row("tcp/443", "10.1.1.1", "198.51.100.7", why::OUTSIDE, None)
    );
    assert_eq!(
        got[5],
        row("icmp", "fd00:1:1::", "2001:db8::7", why::OUTSIDE, None)
    );

    let c = cell(From::Outside, To::Segment(1));
    assert!(c.probes.iter().all(|p| p.sender.is_none()));
    let got = probes(&c);
    assert_eq!(
        got[0],
        row(
            "tcp/443",
            "198.51.100.7",
            "10.1.2.10",
            why::EXPOSED,
            Some(12)
        )
    );
    // No flows from outside: the rest are samples.
    assert!(got[1..].iter().all(|p| p.3 == why::NOT_ALLOWED), "{got:?}");
    assert!(
        got.iter().any(|p| p.1 == "2001:db8::7"),
        "IPv6 too: {got:?}"
    );

    for to in [To::Management, To::Outside] {
        let c = cell(From::Outside, to);
        assert_eq!(c.status, Status::NotJudged);
        assert!(c.probes.is_empty());
    }
}

#[test]
fn samples_skip_what_is_admitted_and_the_outside_address_avoids_every_prefix() {
    let any_tcp = Service {
        protocol: Protocol::Tcp,
        ports: None,
    };
    let port_9 = Service {
        protocol: Protocol::Udp,
        ports: crate::policy::PortRange::single(9),
    };
    assert_eq!(
        not_admitted(&[&any_tcp, &port_9]),
        [(Proto::Udp, 4444), (Proto::Icmp, 0)]
    );
    assert!(not_admitted(&[&Service::ANY]).is_empty());

    let taken = POLICY.replace("192.168.100.0/24", "198.51.100.0/24");
    let p = crate::policy::parse(&taken, "policy.yaml").expect("valid");
    assert_eq!(
        outside_address(&p, false),
        Some("203.0.113.7".parse().unwrap())
    );
}
