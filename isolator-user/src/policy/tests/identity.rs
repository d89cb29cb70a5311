//! Interface identities that parse, and the entry that applies to an interface. The
//! rules are tested by the `identity-*` fixtures.

use super::*;

/// Segment acme/web (10.1.1.0/24, fd00:1:1::/64) with the given `interfaces:` entries
/// (written at column 0), which start at line 8. For a block-style entry `- name: x`, the
/// `name` value is at column 19; on the lines after it, a `mac` value is at column 18, a
/// flow-style `addresses` list at column 24 (its first entry at 25), a flow-style `vlans`
/// list at column 20 (its first entry at 21). A string-form entry is at column 13.
fn web_interfaces(entries: &str) -> String {
    format!(
        "version: 1\ntenants:\n  - name: acme\n    segments:\n      - name: web\n        \
         prefixes: [10.1.1.0/24, \"fd00:1:1::/64\"]\n        interfaces:\n{}",
        indent(entries, 10)
    )
}

/// The interfaces of the first segment of the first tenant.
fn first_interfaces(policy: &Policy) -> &[Interface] {
    &policy.tenants[0].segments[0].interfaces
}

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

#[test]
fn interface_identities_parse_to_model() {
    let policy = ok(r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                allow_router_advertisements: false
                allow_dhcp_server: true
                interfaces:
                  - "tap-acme-web-*"
                  - name: tap-acme-web-01
                    mac: "52:54:00:12:34:56"
                    addresses: ["10.1.1.10", "fd00:1:1::10", "10.1.1.64/28"]
                    vlans: [200, 100]
                  - name: tap-acme-web-02
                    mac: 52:54:00:AB:cd:EF
                    addresses:
                      - 10.1.1.11
                  - {name: "tap-acme-lb?", vlans: [300]}
                prefixes: [10.1.1.0/24, "fd00:1:1::/64"]
              - name: gw
                allow_router_advertisements: true
                interfaces: [{name: tap-acme-gw}]
                prefixes: ["fd00:1:ff::/64"]
        "#);
    let web = &policy.tenants[0].segments[0];
    assert_eq!(
        web.interfaces,
        [
            iface("tap-acme-web-*"),
            Interface {
                pattern: pat("tap-acme-web-01"),
                mac: Some(MAC),
                addresses: vec![
                    net("10.1.1.10/32"),
                    net("fd00:1:1::10/128"),
                    net("10.1.1.64/28")
                ],
                vlans: vec![100, 200],
            },
            Interface {
                pattern: pat("tap-acme-web-02"),
                mac: Some(MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef])),
                addresses: vec![net("10.1.1.11/32")],
                vlans: vec![],
            },
            Interface {
                vlans: vec![300],
                ..iface("tap-acme-lb?")
            },
        ]
    );
    assert!(!web.allow_router_advertisements);
    assert!(web.allow_dhcp_server);
    let gw = &policy.tenants[0].segments[1];
    assert_eq!(gw.interfaces, [iface("tap-acme-gw")]);
    assert!(gw.allow_router_advertisements);
    assert!(!gw.allow_dhcp_server);

    // Both forms count as interface entries.
    assert_eq!(policy.summary().interfaces, 5);
    assert_eq!(
        policy.summary().to_string(),
        "1 tenant, 2 segments, 5 interface patterns, 3 prefixes"
    );

    // An exact-name entry applies to its interface even where a pattern also matches.
    let entry = |ifname| web.interface_for(ifname).map(Interface::as_str);
    assert_eq!(entry("tap-acme-web-01"), Some("tap-acme-web-01"));
    assert_eq!(web.interface_for("tap-acme-web-01").unwrap().mac, Some(MAC));
    assert_eq!(entry("tap-acme-web-07"), Some("tap-acme-web-*"));
    assert_eq!(web.interface_for("tap-acme-lb1").unwrap().vlans, vec![300]);
    assert_eq!(entry("tap-acme-gw"), None);
    let (_, segment) = policy.segment_for_interface("tap-acme-web-01").unwrap();
    assert_eq!(segment.name, "web");
    let (_, segment) = policy.segment_for_interface("tap-acme-gw").unwrap();
    assert_eq!(segment.name, "gw");

    let interface = &web.interfaces[1];
    assert!(interface.matches("tap-acme-web-01") && !interface.matches("tap-acme-web-02"));
    assert!(!interface.is_glob() && web.interfaces[0].is_glob());
    assert_eq!(interface.as_str(), "tap-acme-web-01");
    assert_eq!(MAC.to_string(), "52:54:00:12:34:56");
    assert_eq!(
        MacAddr([0x02, 0, 0, 0xab, 0xcd, 0xef]).to_string(),
        "02:00:00:ab:cd:ef"
    );
    assert!(MAC.is_unicast() && !MAC.is_zero());
    assert!(!MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_unicast());
    assert!(MacAddr([0; 6]).is_zero());
    assert_eq!(Interface::from(pat("veth1")), iface("veth1"));
}

#[test]
fn interface_identity_defaults() {
    let policy = ok(r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                allow_router_advertisements:
                allow_dhcp_server:
                interfaces:
                  - tap1
                  - name: tap2
                  - name: tap3
                    mac:
                    addresses:
                    vlans:
                  - name: tap4
                    vlans: []
        "#);
    let web = &policy.tenants[0].segments[0];
    assert_eq!(
        web.interfaces,
        [iface("tap1"), iface("tap2"), iface("tap3"), iface("tap4")]
    );
    assert!(!web.allow_router_advertisements);
    assert!(!web.allow_dhcp_server);

    let policy = ok("version: 1\ntenants: [{name: acme, segments: [{name: web}]}]\n");
    let web = &policy.tenants[0].segments[0];
    assert!(!web.allow_router_advertisements);
    assert!(!web.allow_dhcp_server);
}

#[test]
fn mac_in_either_case_quoted_or_not() {
    // YAML reads 52:54:00:12:34:56 as text here.
    for mac in [
        "52:54:00:12:34:56",
        "\"52:54:00:12:34:56\"",
        "'52:54:00:12:34:56'",
    ] {
        let policy = ok(&web_interfaces(&format!("- name: tap1\n  mac: {mac}\n")));
        assert_eq!(first_interfaces(&policy)[0].mac, Some(MAC), "{mac}");
    }
    let policy = ok(&web_interfaces("- {name: tap1, mac: 02:AB:cd:00:00:01}\n"));
    assert_eq!(
        first_interfaces(&policy)[0].mac,
        Some(MacAddr([0x02, 0xab, 0xcd, 0, 0, 1]))
    );
}

/// IPv6 link-local addresses lie outside every segment, yet may be declared: they pin
/// the VM's link-local sources.
#[test]
fn link_local_addresses_may_be_declared() {
    let policy = ok(&web_interfaces(
        "- name: tap1\n  addresses: [\"fe80::1\", \"10.1.1.5\"]\n",
    ));
    assert_eq!(
        first_interfaces(&policy)[0].addresses,
        [net("fe80::1/128"), net("10.1.1.5/32")]
    );
}

#[test]
fn vlans_are_sorted_and_allowed_on_patterns() {
    let policy = ok(&web_interfaces(
        "- name: tap1\n  vlans: [4094, 1, 100]\n- name: tap2\n  vlans:\n    - 7\n",
    ));
    assert_eq!(first_interfaces(&policy)[0].vlans, [1, 100, 4094]);
    assert_eq!(first_interfaces(&policy)[1].vlans, [7]);

    let policy = ok(&web_interfaces("- name: \"tap-web-*\"\n  vlans: [100]\n"));
    assert_eq!(first_interfaces(&policy)[0].vlans, [100]);
}

/// Patterns that match a common name with the same VLANs, disjoint patterns, and an
/// exact name, which takes precedence (`identity-pattern-vlans` has the conflicts).
#[test]
fn entry_that_applies_to_an_interface() {
    let policy = ok(&web_interfaces(
        r#"
        - name: "tap-a*"
          vlans: [100, 200]
        - name: "tap-*1"
          vlans: [200, 100]
        - name: "veth*"
        - name: tap-a7
          vlans: [300]
        "#,
    ));
    let web = &policy.tenants[0].segments[0];
    assert_eq!(web.interface_for("tap-a7").unwrap().vlans, [300]);
    assert_eq!(web.interface_for("tap-a8").unwrap().vlans, [100, 200]);
    assert_eq!(web.interface_for("tap-b1").unwrap().vlans, [100, 200]);
    assert!(web.interface_for("veth0").unwrap().vlans.is_empty());
    assert!(web.interface_for("eth0").is_none());
}
