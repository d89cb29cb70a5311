//! `isolator check`'s findings: each kind on a policy that has it, and on its legitimate
//! twin that does not.

use super::*;
use crate::policy::findings::{Code, Finding, Severity, check};

fn findings(src: &str, strict: bool) -> Vec<Finding> {
    let (policy, locations) = parse_located(&dedent(src), FILE).unwrap_or_else(|d| panic!("{d}"));
    check(&policy, &locations, strict)
}

/// The (code, line, column) of every finding.
fn found(src: &str) -> Vec<(Code, u64, u64)> {
    findings(src, false)
        .iter()
        .map(|f| (f.code, f.line, f.column))
        .collect()
}

fn codes(src: &str) -> Vec<Code> {
    found(src).into_iter().map(|(code, ..)| code).collect()
}

/// Two segments of one tenant, a third of another; `extra` goes under acme/web (at
/// 8 spaces), `flows` under tenant acme.
fn policy(web: &str, flows: &str) -> String {
    format!(
        "version: 1\ntenants:\n  - name: acme\n    segments:\n      - name: web\n        \
         interfaces: [\"tap-web*\"]\n        prefixes: [10.1.1.0/24]\n{}      - name: db\n        \
         interfaces: [\"tap-db*\"]\n        prefixes: [10.1.2.0/24]\n    flows:\n{}  - name: globex\n    \
         segments:\n      - name: api\n        interfaces: [\"tap-api*\"]\n        prefixes: [10.2.0.0/24]\n",
        indent(web, 8),
        indent(flows, 6)
    )
}

#[test]
fn a_plain_policy_has_no_findings() {
    let src = policy(
        "
        expose:
          - {address: 10.1.1.10, protocol: tcp, ports: 443}
        ",
        "
        - {from: web, to: db, protocol: tcp, ports: 5432}
        ",
    );
    assert_eq!(found(&src), vec![]);
}

#[test]
fn an_exposure_of_a_whole_segment_prefix() {
    let whole = policy(
        "expose: [{address: 10.1.1.0/24, protocol: tcp, ports: 443}]",
        "",
    );
    let f = findings(&whole, false);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].code, Code::ExposesWholeSegment);
    assert_eq!((f[0].line, f[0].column), (8, 28));
    assert!(f[0].message.contains("acme/web"), "{}", f[0].message);
    let part = policy(
        "expose: [{address: 10.1.1.0/28, protocol: tcp, ports: 443}]",
        "",
    );
    assert_eq!(codes(&part), vec![]);
}

#[test]
fn flows_and_exposures_of_every_protocol_or_port() {
    let any = policy("", "- {from: web, to: db, protocol: any}");
    assert_eq!(codes(&any), vec![Code::AnyProtocol]);
    let all_ports = policy("", "- {from: web, to: db, protocol: udp}");
    assert_eq!(codes(&all_ports), vec![Code::AllPorts]);
    let written_out = policy(
        "",
        "- {from: web, to: db, protocol: tcp, ports: \"1-65535\"}",
    );
    assert_eq!(codes(&written_out), vec![Code::AllPorts]);
    let exposed = policy("expose: [{address: 10.1.1.10, protocol: any}]", "");
    assert_eq!(codes(&exposed), vec![Code::AnyProtocol]);
    // ICMP has no ports; a range is not every port.
    let narrow = policy(
        "expose: [{address: 10.1.1.10, protocol: icmp}]",
        "- {from: web, to: db, protocol: tcp, ports: \"8000-8080\"}",
    );
    assert_eq!(codes(&narrow), vec![]);
}

#[test]
fn a_cross_tenant_flow_is_a_warning_and_an_error_when_strict() {
    let src = policy(
        "",
        "- {from: web, to: globex/api, protocol: tcp, ports: 443}",
    );
    let f = findings(&src, false);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].code, f[0].severity),
        (Code::CrossTenantFlow, Severity::Warning)
    );
    assert_eq!((f[0].line, f[0].column), (13, 16));
    assert!(f[0].to_string().starts_with(
        "policy.yaml:13:16: warning[cross-tenant-flow]: flow acme/web -> globex/api tcp 443"
    ));
    let strict = findings(&src, true);
    assert_eq!(strict[0].severity, Severity::Error);
    assert!(
        strict[0]
            .to_string()
            .contains(": error[cross-tenant-flow]: ")
    );
    let same_tenant = policy("", "- {from: web, to: acme/db, protocol: tcp, ports: 443}");
    assert_eq!(codes(&same_tenant), vec![]);
}

#[test]
fn a_flow_inside_another_flow_of_its_pair_is_shadowed() {
    let src = policy(
        "",
        "
        - {from: web, to: db, protocol: tcp, ports: \"5000-6000\"}
        - {from: web, to: db, protocol: tcp, ports: 5432}
        ",
    );
    assert_eq!(found(&src), vec![(Code::Shadowed, 14, 16)]);
    // Another pair, or ports outside the range: nothing to report.
    let twin = policy(
        "",
        "
        - {from: web, to: db, protocol: tcp, ports: \"5000-6000\"}
        - {from: db, to: web, protocol: tcp, ports: 5432}
        - {from: web, to: db, protocol: tcp, ports: 6001}
        ",
    );
    assert_eq!(codes(&twin), vec![]);
}

#[test]
fn a_flow_that_exposures_of_the_whole_destination_already_admit_is_shadowed() {
    let src = policy(
        "expose: [{address: 10.1.1.0/24, protocol: tcp, ports: 443}]",
        "- {from: db, to: web, protocol: tcp, ports: 443}",
    );
    assert_eq!(codes(&src), vec![Code::ExposesWholeSegment, Code::Shadowed]);
    let twin = policy(
        "expose: [{address: 10.1.1.0/24, protocol: tcp, ports: 443}]",
        "- {from: db, to: web, protocol: tcp, ports: 8443}",
    );
    assert_eq!(codes(&twin), vec![Code::ExposesWholeSegment]);
}

#[test]
fn exposures_inside_wider_ones_are_shadowed_and_rewritten_ones_duplicates() {
    let src = policy(
        "
        expose:
          - {address: 10.1.1.0/28, protocol: tcp, ports: \"400-500\"}
          - {address: 10.1.1.10, protocol: tcp, ports: 443}
          - {address: 10.1.1.20, protocol: udp}
          - {address: 10.1.1.20, protocol: udp, ports: \"1-65535\"}
        ",
        "",
    );
    assert_eq!(
        found(&src),
        vec![
            (Code::Shadowed, 10, 23),
            (Code::AllPorts, 11, 23),
            (Code::AllPorts, 12, 23),
            (Code::Duplicate, 12, 23),
        ]
    );
    // The same address for a port the wider entry does not have.
    let twin = policy(
        "
        expose:
          - {address: 10.1.1.0/28, protocol: tcp, ports: \"400-500\"}
          - {address: 10.1.1.10, protocol: tcp, ports: 8443}
        ",
        "",
    );
    assert_eq!(codes(&twin), vec![]);
}

#[test]
fn redundant_services_of_gateways_and_management_prefixes() {
    let src = policy(
        "
        gateways:
          - address: 10.1.1.1
            services: [{protocol: udp}, {protocol: udp, ports: 53}]
        ",
        "",
    )
    .replace(
        "tenants:",
        "management:\n  - prefix: 192.168.0.0/16\n  - prefix: 192.168.1.0/24\n    services: [{protocol: tcp, ports: 22}]\ntenants:",
    );
    assert_eq!(
        found(&src),
        vec![(Code::Shadowed, 4, 13), (Code::Shadowed, 14, 52)]
    );
    let twin = policy(
        "
        gateways:
          - address: 10.1.1.1
            services: [{protocol: udp, ports: 53}, {protocol: udp, ports: 67}]
        ",
        "",
    )
    .replace(
        "tenants:",
        "management:\n  - prefix: 192.168.0.0/24\n  - prefix: 192.168.1.0/24\n    services: [{protocol: tcp, ports: 22}]\ntenants:",
    );
    assert_eq!(codes(&twin), vec![Code::ManagementReachable]);
}

#[test]
fn a_management_prefix_that_protects_some_services_is_reached_by_egress() {
    let with = |egress: &str| {
        policy(&format!("egress: {egress}"), "")
            .replace("api\n", "api\n        egress: deny\n")
            .replace(
                "      - name: db\n",
                &format!("      - name: db\n        egress: {egress}\n"),
            )
            .replace(
                "tenants:",
                "management:\n  - prefix: 172.16.0.10/32\n    services: [{protocol: tcp, ports: 22}]\ntenants:",
            )
    };
    let f = findings(&with("allow"), false);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].code, f[0].line, f[0].column),
        (Code::ManagementReachable, 3, 13)
    );
    assert!(f[0].message.contains("2 segment(s)"), "{}", f[0].message);
    assert!(
        f[0].message.contains("acme/web, acme/db"),
        "{}",
        f[0].message
    );
    // No segment reaches outside: nothing reaches the unprotected services.
    assert_eq!(codes(&with("deny")), vec![]);
    // A prefix protected for everything is never reached.
    let whole = policy("", "").replace(
        "tenants:",
        "management:\n  - prefix: 172.16.0.10/32\ntenants:",
    );
    assert_eq!(codes(&whole), vec![]);
}

#[test]
fn interface_entries_no_link_can_have() {
    for name in ["vx%d", "all", "default", "vx\\0a"] {
        let src = policy(&format!("uplinks: [\"{name}\"]"), "");
        let f = findings(&src, false);
        assert_eq!(f.len(), 1, "{name}: {f:?}");
        assert_eq!((f[0].code, f[0].line), (Code::InterfaceNeverMatches, 8));
    }
    let vif = policy("", "").replace("tenants:", "vif_names: [\"tap%d\"]\ntenants:");
    assert_eq!(found(&vif), vec![(Code::InterfaceNeverMatches, 2, 13)]);
    // Names that a link can have: '%' is fine only where the kernel never sees it.
    let twin = policy("uplinks: [\"vx-all\", \"defaults\"]", "");
    assert_eq!(codes(&twin), vec![]);
}

#[test]
fn interface_entries_that_others_of_their_list_cover() {
    let with = |interfaces: &str, uplinks: &str| {
        format!(
            "version: 1\nvif_names: [\"tap*\", \"tap-*\"]\ntenants:\n  - name: acme\n    segments:\n      \
             - name: web\n        interfaces: {interfaces}\n        uplinks: {uplinks}\n"
        )
    };
    let src = with(
        r#"["tap-web*", "tap-web-1*", tap-web-17, {name: tap-web-2, mac: "52:54:00:00:00:02"}]"#,
        r#"["vx*", "vxlan100"]"#,
    );
    // "tap-web-1*" and tap-web-17 are covered by "tap-web*" (tap-web-2 has an identity
    // of its own), "vxlan100" by "vx*", and "tap-*" of `vif_names` by "tap*".
    assert_eq!(
        found(&src),
        vec![
            (Code::Shadowed, 2, 21),
            (Code::Shadowed, 7, 34),
            (Code::Shadowed, 7, 48),
            (Code::Shadowed, 8, 26),
        ]
    );
    let twin = with(
        r#"["tap-web*", "tap-db-1*", {name: tap-web-2, vlans: [100]}]"#,
        r#"["vx*", "bond0"]"#,
    )
    .replace("[\"tap*\", \"tap-*\"]", "[\"tap*\"]");
    assert_eq!(codes(&twin), vec![]);
}

#[test]
fn glob_coverage_is_sound() {
    let covers = |a: &str, b: &str| pat(a).covers(&pat(b));
    assert!(covers("tap-*", "tap-web-*"));
    assert!(covers("tap-*", "tap-web-?"));
    assert!(covers("tap-?", "tap-1"));
    assert!(covers("*-web", "tap*-web"));
    assert!(!covers("tap-?", "tap-*"));
    assert!(!covers("tap-web-*", "tap-*"));
    assert!(!covers("tap-1", "tap-?"));
}

#[test]
fn a_policy_the_kernel_maps_cannot_hold() {
    let flows = |n: u16| {
        (1..=n)
            .map(|port| {
                format!(
                    "- {{from: web, to: db, protocol: tcp, ports: {}}}\n",
                    2 * port
                )
            })
            .collect::<String>()
    };
    let f = findings(&policy("", &flows(17)), false);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].code, f[0].severity),
        (Code::ExceedsKernelCapacity, Severity::Error)
    );
    assert_eq!((f[0].line, f[0].column), (0, 0));
    assert!(
        f[0].message.contains("17 distinct services"),
        "{}",
        f[0].message
    );
    assert_eq!(codes(&policy("", &flows(16))), vec![]);
}

#[test]
fn every_code_is_documented() {
    let doc = include_str!("../../../../docs/policy.md");
    for code in Code::ALL {
        assert!(
            doc.contains(&format!("| `{code}` | {} |", code.severity())),
            "docs/policy.md lists `{code}` with severity {}",
            code.severity()
        );
    }
}
