//! Valid prefixes and management prefixes. The rules are tested by the `prefixes-*` and
//! `management-*` fixtures.

use super::*;

/// The same bits in the other family are other addresses.
#[test]
fn different_families_do_not_overlap() {
    ok(r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                prefixes: ["10.0.0.0/8"]
              - name: db
                prefixes: ["::a00:0/104"]
        "#);
}

/// Prefixes right next to the reserved ranges (`prefixes-reserved-*` has the ranges).
#[test]
fn prefixes_next_to_reserved_ranges_are_valid() {
    let prefixes = [
        "1.0.0.0/8",
        "126.255.255.0/24",
        "128.0.0.0/8",
        "169.253.0.0/16",
        "169.255.0.0/16",
        "223.255.255.0/24",
        "::2/128",
        "::fffe:0:0/96",
        "::1:0:0:0/80",
        "fe00::/9",
        "fec0::/10",
        "fe00::/16",
        "2001:db8::/32",
    ];
    let policy = ok(&segment_with("prefixes", &format!("{prefixes:?}")));
    let parsed: Vec<IpNet> = prefixes.iter().map(|p| net(p)).collect();
    assert_eq!(policy.tenants[0].segments[0].prefixes, parsed);
}

#[test]
fn management_prefixes_may_overlap_each_other() {
    let policy = ok(r#"
        version: 1
        management:
          - prefix: 10.0.0.0/8
            services: [{protocol: tcp, ports: 22}]
          - prefix: 10.10.0.0/16
          - prefix: "10.0.0.0/9"
        tenants:
          - name: acme
            segments: [{name: web, prefixes: [172.16.0.0/24, "fd00::/64"]}]
        "#);
    assert_eq!(
        policy.management,
        [
            Management {
                prefix: net("10.0.0.0/8"),
                services: vec![svc(Protocol::Tcp, Some((22, 22)))],
            },
            Management {
                prefix: net("10.10.0.0/16"),
                services: vec![],
            },
            Management {
                prefix: net("10.0.0.0/9"),
                services: vec![],
            },
        ]
    );
}

/// The table of reserved ranges shows each range as it is written.
#[test]
fn reserved_ranges_are_shown_as_written() {
    for range in validate::prefixes::RESERVED {
        assert_eq!(
            range.shown.parse::<IpNet>(),
            Ok(range.net),
            "{}",
            range.shown
        );
    }
}
