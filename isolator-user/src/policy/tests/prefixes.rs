//! Valid prefixes and management prefixes. The rules are tested by the `prefixes-*` and
//! `management-*` fixtures.

use super::*;

#[test]
fn different_families_do_not_overlap() {
    ok(r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                prefixes: ["0.0.0.0/0"]
              - name: db
                prefixes: ["::/0"]
        "#);
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
