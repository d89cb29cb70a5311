//! The host's side of the segments that parses: gateways, uplinks and `vif_names`. The
//! rules are tested by the `gateways-*`, `uplinks-*` and `vif-names-*` fixtures.

use super::*;

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn gateways_uplinks_and_vif_names_parse_to_model() {
    let policy = ok(r#"
        version: 1
        vif_names: ["tap*", "vnet*", veth-spare]
        tenants:
          - name: acme
            segments:
              - name: web
                prefixes: [10.1.1.0/24, "fd00:1:1::/64"]
                interfaces: ["tap-acme-web-*"]
                gateways:
                  - address: 10.1.1.1
                    services:
                      - {protocol: udp, ports: 67}
                      - {protocol: udp, ports: 53}
                      - {protocol: tcp, ports: 53}
                  - address: "fe80::1"
                    services: [{protocol: udp, ports: 547}]
                  - address: "fd00:1:1::1/128"
                    services: []
                  - address: 10.1.1.2/32
                    services:
                uplinks: [vxlan100, "bond*"]
              - name: db
                prefixes: [10.1.2.0/24]
                interfaces: ["tap-acme-db?"]
                gateways: [{address: "fe80::1"}]
                uplinks: [vxlan100]
        "#);
    // `vif_names` may overlap the segments' `interfaces`: that is their purpose.
    assert_eq!(
        policy.vif_names,
        [pat("tap*"), pat("vnet*"), pat("veth-spare")]
    );
    let (web, db) = (
        &policy.tenants[0].segments[0],
        &policy.tenants[0].segments[1],
    );
    assert_eq!(
        web.gateways,
        [
            Gateway {
                address: addr("10.1.1.1"),
                services: vec![
                    svc(Protocol::Udp, Some((67, 67))),
                    svc(Protocol::Udp, Some((53, 53))),
                    svc(Protocol::Tcp, Some((53, 53))),
                ],
            },
            Gateway {
                address: addr("fe80::1"),
                services: vec![svc(Protocol::Udp, Some((547, 547)))],
            },
            // No services, however written: only address resolution.
            Gateway {
                address: addr("fd00:1:1::1"),
                services: vec![],
            },
            Gateway {
                address: addr("10.1.1.2"),
                services: vec![],
            },
        ]
    );
    assert_eq!(web.uplinks, [pat("vxlan100"), pat("bond*")]);
    // The same link-local gateway and the same uplink in another segment.
    assert_eq!(
        db.gateways,
        [Gateway {
            address: addr("fe80::1"),
            services: vec![],
        }]
    );
    assert_eq!(db.uplinks, [pat("vxlan100")]);

    let summary = policy.summary();
    assert_eq!((summary.gateways, summary.uplinks), (5, 3));
    // The one-line summary does not change with them.
    assert_eq!(
        summary.to_string(),
        "1 tenant, 2 segments, 2 interface patterns, 3 prefixes"
    );
}

#[test]
fn host_side_keys_default_to_empty() {
    for src in [
        "version: 1\ntenants: [{name: acme, segments: [{name: web}]}]\n",
        "version: 1\nvif_names:\ntenants:\n  - name: acme\n    segments:\n      - name: web\n        \
         gateways:\n        uplinks:\n",
        "version: 1\nvif_names: []\ntenants: [{name: acme, segments: [{name: web, gateways: [], \
         uplinks: []}]}]\n",
    ] {
        let policy = parse(src, FILE).unwrap_or_else(|d| panic!("{src}\n{d}"));
        assert!(policy.vif_names.is_empty());
        let web = &policy.tenants[0].segments[0];
        assert!(web.gateways.is_empty() && web.uplinks.is_empty(), "{src}");
    }
}

/// The links the daemon guards the moment they appear: those a segment's `interfaces` or
/// `vif_names` match; uplinks and other links are not VMs'.
#[test]
fn the_policy_claims_its_segments_interfaces_and_the_vif_naming_scheme() {
    let policy = ok(r#"
        version: 1
        vif_names: ["vnet*"]
        tenants:
          - name: acme
            segments:
              - name: web
                prefixes: [10.1.1.0/24]
                interfaces: ["tap-acme-web-*", veth-acme1]
                uplinks: [vxlan100]
        "#);
    for claimed in ["tap-acme-web-7", "veth-acme1", "vnet12"] {
        assert!(policy.claims(claimed), "{claimed}");
    }
    for other in ["vxlan100", "tap-acme-db-1", "veth-acme10", "eth0", "br0"] {
        assert!(!policy.claims(other), "{other}");
    }
}
