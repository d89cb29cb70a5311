//! Valid interface entries and how interfaces are matched to segments. The rules are
//! tested by the `interfaces-*` fixtures.

use super::*;

/// 15 bytes is the maximum (`interfaces-rules` has 16).
#[test]
fn longest_interface_name_is_valid() {
    let policy = ok(&segment_with("interfaces", "[tap-0123456789a]"));
    assert_eq!(
        policy.tenants[0].segments[0].interfaces,
        [iface("tap-0123456789a")]
    );
}

/// Quoted, numbers are names; in the mapping form `name` is always text.
#[test]
fn quoted_numbers_are_names() {
    let policy = ok(&segment_with("interfaces", "[\"123\", {name: 456}]"));
    assert_eq!(
        policy.tenants[0].segments[0].interfaces,
        [iface("123"), iface("456")]
    );
}

#[test]
fn disjoint_patterns_in_two_segments_are_valid() {
    ok(r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                interfaces: ["tap-a*", "x?"]
              - name: db
                interfaces: ["tap-b*", "x??"]
        "#);
    ok(r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                interfaces: ["a*b"]
              - name: db
                interfaces: ["*c"]
        "#);
}

#[test]
fn segment_for_interface_finds_the_owner() {
    let policy = ok(r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                interfaces: ["tap-acme-*"]
          - name: globex
            segments:
              - name: db
                interfaces: ["veth-g?"]
        "#);
    let owner = |ifname| {
        policy
            .segment_for_interface(ifname)
            .map(|(t, s)| format!("{}/{}", t.name, s.name))
    };
    assert_eq!(owner("tap-acme-7").as_deref(), Some("acme/web"));
    assert_eq!(owner("veth-g1").as_deref(), Some("globex/db"));
    assert_eq!(owner("veth-g12"), None);
    assert_eq!(owner("eth0"), None);
}
