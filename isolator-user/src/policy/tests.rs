use std::path::Path;

use super::*;

const FILE: &str = "policy.yaml";

/// Strips a leading newline and the common indentation, so test YAML can be indented
/// with the code. Line 1 is the first line after the opening quote's newline.
fn dedent(s: &str) -> String {
    let s = s.strip_prefix('\n').unwrap_or(s);
    let indent = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    s.lines()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn ok(src: &str) -> Policy {
    match parse(&dedent(src), FILE) {
        Ok(policy) => policy,
        Err(d) => panic!("expected a valid policy, got:\n{d}"),
    }
}

fn errors(src: &str) -> Vec<Diagnostic> {
    match parse(&dedent(src), FILE) {
        Ok(policy) => panic!("expected errors, got a valid policy: {policy:?}"),
        Err(d) => {
            assert!(!d.is_empty());
            d.0
        }
    }
}

fn one_error(src: &str) -> Diagnostic {
    let mut all = errors(src);
    assert_eq!(
        all.len(),
        1,
        "expected exactly one error, got:\n{}",
        Diagnostics(all.clone())
    );
    all.pop().unwrap()
}

#[track_caller]
fn assert_diag(d: &Diagnostic, line: u64, column: u64, words: &[&str]) {
    assert_eq!(d.file, FILE);
    assert_eq!((d.line, d.column), (line, column), "position of: {d}");
    for w in words {
        assert!(d.to_string().contains(w), "{w:?} not in: {d}");
    }
}

/// A file with one segment `acme/web` whose `key:` line is line 6 (value at column 15).
fn segment_with(key: &str, value: &str) -> String {
    format!(
        "version: 1\ntenants:\n  - name: acme\n    segments:\n      - name: web\n        {key}: {value}\n"
    )
}

fn pat(s: &str) -> InterfacePattern {
    InterfacePattern::new(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// An interface entry without identity.
fn iface(s: &str) -> Interface {
    Interface::new(pat(s))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

// ---------------------------------------------------------------- valid files

#[test]
fn valid_file_parses_to_model() {
    let policy = ok(r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                interfaces: ["tap-acme-web-*", "veth-acme1"]
                prefixes: ["10.1.1.0/24", "fd00:1:1::/64"]
              - name: db_1
                interfaces:
                  - tap-acme-db?
                prefixes:
          - name: 9lives
        "#);
    let expected = Policy {
        tenants: vec![
            Tenant {
                name: "acme".into(),
                segments: vec![
                    Segment {
                        name: "web".into(),
                        interfaces: vec![iface("tap-acme-web-*"), iface("veth-acme1")],
                        prefixes: vec![net("10.1.1.0/24"), net("fd00:1:1::/64")],
                        mode: Mode::Enforce,
                        egress: Egress::Allow,
                        expose: vec![],
                        allow_router_advertisements: false,
                        allow_dhcp_server: false,
                    },
                    Segment {
                        name: "db_1".into(),
                        interfaces: vec![iface("tap-acme-db?")],
                        prefixes: vec![],
                        mode: Mode::Enforce,
                        egress: Egress::Allow,
                        expose: vec![],
                        allow_router_advertisements: false,
                        allow_dhcp_server: false,
                    },
                ],
                flows: vec![],
            },
            Tenant {
                name: "9lives".into(),
                segments: vec![],
                flows: vec![],
            },
        ],
        mode: Mode::Enforce,
        management: vec![],
        connection_tracking: ConnectionTracking::default(),
    };
    assert_eq!(policy, expected);
    let summary = policy.summary();
    assert_eq!(
        summary,
        Summary {
            tenants: 2,
            segments: 2,
            interfaces: 3,
            prefixes: 2,
            exposed: 0,
            flows: 0,
            management: 0,
        }
    );
    assert_eq!(
        summary.to_string(),
        "2 tenants, 2 segments, 3 interface patterns, 2 prefixes"
    );
    assert!(policy.tenants[0].segments[0].interfaces[0].is_glob());
    assert!(!policy.tenants[0].segments[0].interfaces[1].is_glob());
    assert_eq!(
        policy.tenants[0].segments[0].interfaces[0].as_str(),
        "tap-acme-web-*"
    );
}

#[test]
fn empty_tenant_list_is_valid() {
    for src in ["version: 1\ntenants: []\n", "version: 1\ntenants:\n"] {
        let policy = parse(src, FILE).unwrap();
        assert!(policy.tenants.is_empty());
        assert_eq!(
            policy.summary().to_string(),
            "0 tenants, 0 segments, 0 interface patterns, 0 prefixes"
        );
    }
}

#[test]
fn summary_uses_singular_for_one() {
    let s = Summary {
        tenants: 1,
        segments: 1,
        interfaces: 1,
        prefixes: 1,
        ..Summary::default()
    };
    assert_eq!(
        s.to_string(),
        "1 tenant, 1 segment, 1 interface pattern, 1 prefix"
    );
}

#[test]
fn segment_without_interfaces_or_prefixes_is_valid() {
    let policy = ok("
        version: 1
        tenants:
          - name: acme
            segments:
              - name: a
              - name: b
                interfaces: []
                prefixes: []
        ");
    assert_eq!(policy.summary().segments, 2);
}

#[test]
fn same_segment_name_in_two_tenants_is_valid() {
    ok("
        version: 1
        tenants:
          - name: acme
            segments: [{name: web}]
          - name: globex
            segments: [{name: web}]
        ");
}

#[test]
fn overlap_within_one_segment_is_allowed() {
    ok(r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                interfaces: ["tap-*", "tap-acme-*", "tap-acme-1"]
                prefixes: [10.0.0.0/8, 10.1.0.0/16, "fd00::/8", "fd00:1::/64"]
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

// ---------------------------------------------------------------- YAML level

#[test]
fn syntax_error_has_position() {
    let d = one_error(
        "
        version: 1
        tenants:
          - name: acme
           segments: []
        ",
    );
    assert_diag(
        &d,
        4,
        4,
        &["policy.yaml:4:4: error:", "did not find expected"],
    );
    // The position is shown once, in front, not repeated by serde-saphyr.
    assert!(!d.message.contains("line"), "{d}");
}

#[test]
fn unknown_keys_are_rejected_everywhere() {
    let top = one_error("version: 1\ntenants: []\nmanagment: []\n");
    assert_diag(
        &top,
        3,
        1,
        &[
            "unknown field `managment`",
            "version, mode, connection_tracking, management, tenants",
            "help:",
        ],
    );

    let tenant = one_error("version: 1\ntenants:\n  - name: acme\n    flow: []\n");
    assert_diag(
        &tenant,
        4,
        5,
        &["unknown field `flow`", "name, segments, flows"],
    );

    let segment = one_error(&segment_with("exposed", "[]"));
    assert_diag(
        &segment,
        6,
        9,
        &[
            "unknown field `exposed`",
            "name, mode, egress, allow_router_advertisements, allow_dhcp_server, interfaces, \
             prefixes, expose",
        ],
    );

    let expose = one_error(&segment_with(
        "expose",
        "[{address: 10.1.1.1, protocol: tcp, port: 22}]",
    ));
    assert_diag(
        &expose,
        6,
        53,
        &["unknown field `port`", "address, protocol, ports"],
    );

    let flow = one_error(
        "version: 1\ntenants:\n  - name: acme\n    flows: [{from: a, to: b, protocol: tcp, ports: 1, via: c}]\n",
    );
    assert_diag(
        &flow,
        4,
        55,
        &["unknown field `via`", "from, to, protocol, ports"],
    );

    let management = one_error(
        "version: 1\ntenants: []\nmanagement:\n  - prefix: 10.0.0.0/8\n    protocol: tcp\n",
    );
    assert_diag(
        &management,
        5,
        5,
        &["unknown field `protocol`", "prefix, services"],
    );

    let service = one_error(
        "version: 1\ntenants: []\nmanagement:\n  - prefix: 10.0.0.0/8\n    services: [{protocol: tcp, port: 22}]\n",
    );
    assert_diag(
        &service,
        5,
        32,
        &["unknown field `port`", "protocol, ports"],
    );

    let conntrack = one_error("version: 1\ntenants: []\nconnection_tracking:\n  tcp_timeout: 10\n");
    assert_diag(
        &conntrack,
        4,
        3,
        &[
            "unknown field `tcp_timeout`",
            "tcp_idle_seconds, tcp_closing_seconds, udp_idle_seconds, icmp_idle_seconds",
        ],
    );
}

#[test]
fn duplicate_keys_are_rejected() {
    let d = one_error("version: 1\ntenants: []\nversion: 1\n");
    assert_diag(&d, 3, 1, &["duplicate", "version"]);
    let d = one_error(
        "
        version: 1
        tenants:
          - name: acme
            name: globex
        ",
    );
    assert_diag(&d, 4, 5, &["duplicate", "name"]);
}

#[test]
fn version_is_required_and_must_be_1() {
    let d = one_error("tenants: []\n");
    assert_diag(&d, 1, 1, &["missing field `version`"]);

    let d = one_error("version: 2\ntenants: []\n");
    assert_diag(&d, 1, 10, &["unsupported", "version 2", "help:"]);

    let d = one_error("tenants: []\nversion: \"1\"\n");
    assert_diag(&d, 2, 10, &["`version` must be the number 1", "\"1\""]);

    let d = one_error("version: one\ntenants: []\n");
    assert_diag(&d, 1, 10, &["must be the number 1", "\"one\""]);
}

#[test]
fn tenants_key_is_required() {
    let d = one_error("version: 1\n");
    assert_diag(&d, 1, 1, &["missing field `tenants`"]);
}

#[test]
fn wrong_value_types_are_reported() {
    let d = one_error("version: 1\ntenants: acme\n");
    assert_diag(&d, 2, 10, &["sequence", "help: a list is expected"]);

    let d = one_error("version: 1\ntenants:\n  - name:\n");
    assert_diag(&d, 3, 9, &["null"]);

    let d = one_error("version: 1\ntenants:\n  - name: [a]\n");
    assert_eq!((d.line, d.column), (3, 11), "{d}");

    let d = one_error("version: 1\ntenants: [acme]\n");
    assert_diag(&d, 2, 11, &["mapping"]);
}

#[test]
fn empty_file_is_reported() {
    let d = parse("", FILE).unwrap_err();
    assert_eq!(d.len(), 1);
    assert_diag(&d.0[0], 1, 1, &["end of file", "help:", "empty"]);
}

#[test]
fn second_document_is_rejected() {
    let d = one_error("version: 1\ntenants: []\n---\nversion: 1\ntenants: []\n");
    assert_diag(&d, 4, 1, &["document"]);
}

// ---------------------------------------------------------------- names

#[test]
fn name_rules() {
    let cases: &[(&str, &[&str])] = &[
        (
            "Acme",
            &["tenant name \"Acme\"", "'A'", "did you mean \"acme\"?"],
        ),
        ("acme/prod", &["'/'", "did you mean \"acme-prod\"?"]),
        (
            "\"acme corp\"",
            &["whitespace", "did you mean \"acme-corp\"?"],
        ),
        ("\"\"", &["tenant name is empty"]),
        ("-acme", &["must start with a lowercase letter or digit"]),
        ("_acme", &["must start with a lowercase letter or digit"]),
        ("acme.io", &["'.'"]),
    ];
    for (name, words) in cases {
        let d = one_error(&format!("version: 1\ntenants:\n  - name: {name}\n"));
        assert_diag(&d, 3, 11, words);
    }

    let long = "a".repeat(64);
    let d = one_error(&format!("version: 1\ntenants:\n  - name: {long}\n"));
    assert_diag(&d, 3, 11, &["64 characters", "maximum is 63"]);

    let max = "a".repeat(63);
    ok(&format!("version: 1\ntenants:\n  - name: {max}\n"));
    ok("version: 1\ntenants:\n  - name: 0a_b-c\n");
}

#[test]
fn segment_names_follow_the_same_rules() {
    let d = one_error(&segment_with("interfaces", "[]").replace("name: web", "name: Web"));
    assert_diag(
        &d,
        5,
        15,
        &["segment name \"Web\"", "did you mean \"web\"?"],
    );
}

#[test]
fn duplicate_tenant_name() {
    let d = one_error(
        "
        version: 1
        tenants:
          - name: acme
          - name: globex
          - name: acme
        ",
    );
    assert_diag(&d, 5, 11, &["duplicate tenant name \"acme\"", "3:11"]);
}

#[test]
fn duplicate_segment_name_within_tenant() {
    let d = one_error(
        "
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
              - name: db
              - name: web
        ",
    );
    assert_diag(
        &d,
        7,
        15,
        &["duplicate segment name \"web\"", "tenant \"acme\"", "5:15"],
    );
}

// ---------------------------------------------------------------- interfaces

#[test]
fn interface_entry_rules() {
    let cases: &[(&str, &[&str])] = &[
        ("\"\"", &["interface name is empty"]),
        (
            "tap-0123456789ab",
            &["\"tap-0123456789ab\"", "16 bytes", "at most 15"],
        ),
        ("tap/0", &["'/'"]),
        ("\"eth0:1\"", &["':'"]),
        ("\"tap 0\"", &["whitespace"]),
        ("\".\"", &["\".\"", "not a valid Linux interface name"]),
        ("\"..\"", &["\"..\""]),
        (
            "\"tap[0-9]\"",
            &["'['", "']'", "only the wildcards '*' and '?' are supported"],
        ),
        (
            "\"tap{a,b}\"",
            &["'{'", "'}'", "only the wildcards '*' and '?' are supported"],
        ),
        ("\"*\"", &["\"*\"", "every interface", "uplink"]),
        ("\"**\"", &["every interface", "uplink"]),
        ("\"?*\"", &["no literal characters", "uplink"]),
    ];
    for (entry, words) in cases {
        let d = one_error(&segment_with("interfaces", &format!("[{entry}]")));
        assert_diag(&d, 6, 22, words);
    }
    // 15 bytes is the maximum; multi-byte characters count as bytes.
    ok(&segment_with("interfaces", "[tap-0123456789a]"));
    let d = one_error(&segment_with("interfaces", "[tap-0123456789é]"));
    assert_diag(&d, 6, 22, &["16 bytes"]);
}

#[test]
fn same_interface_twice_in_one_segment() {
    let d = one_error(&segment_with("interfaces", "[veth1, tap-*, veth1]"));
    assert_diag(
        &d,
        6,
        36,
        &["\"veth1\"", "listed twice", "acme/web", "6:22"],
    );
}

#[test]
fn same_interface_in_two_segments() {
    let d = one_error(
        "
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                interfaces: [veth-acme1]
          - name: globex
            segments:
              - name: db
                interfaces: [veth-acme1]
        ",
    );
    assert_diag(
        &d,
        10,
        22,
        &["\"veth-acme1\"", "globex/db", "acme/web", "6:22"],
    );
}

#[test]
fn overlapping_patterns_in_two_segments() {
    let d = one_error(
        r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                interfaces: ["tap-a*"]
              - name: db
                interfaces: ["tap-*-db"]
        "#,
    );
    assert_diag(
        &d,
        8,
        22,
        &[
            "\"tap-*-db\"",
            "acme/db",
            "overlaps",
            "\"tap-a*\"",
            "acme/web",
            "6:22",
            "both match \"tap-a-db\"",
        ],
    );
    // An exact name matched by a pattern of another segment.
    let d = one_error(
        r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                interfaces: ["tap-acme-1"]
              - name: db
                interfaces: ["tap-*"]
        "#,
    );
    assert_diag(&d, 8, 22, &["overlaps", "both match \"tap-acme-1\""]);
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

// ---------------------------------------------------------------- prefixes

#[test]
fn prefix_rules() {
    let cases: &[(&str, &[&str], Option<&str>)] = &[
        (
            "10.0.0.1",
            &["\"10.0.0.1\"", "no prefix length"],
            Some("\"10.0.0.1/32\""),
        ),
        (
            "\"fd00::1\"",
            &["no prefix length"],
            Some("\"fd00::1/128\""),
        ),
        ("10.0.0.0/33", &["length 33", "IPv4", "maximum is 32"], None),
        (
            "\"fd00::/129\"",
            &["length 129", "IPv6", "maximum is 128"],
            None,
        ),
        ("10.0.0.0/x", &["\"x\" is not a prefix length"], None),
        (
            "10.0.0.256/24",
            &["\"10.0.0.256\" is not a valid IPv4 or IPv6 address"],
            None,
        ),
        ("web", &["\"web\" is not an IP prefix"], None),
        (
            "10.0.0.1/24",
            &["\"10.0.0.1/24\"", "host bits"],
            Some("did you mean 10.0.0.0/24?"),
        ),
        (
            "\"fd00:1:1::1/64\"",
            &["host bits"],
            Some("did you mean fd00:1:1::/64?"),
        ),
    ];
    for (prefix, words, help) in cases {
        let d = one_error(&segment_with("prefixes", &format!("[{prefix}]")));
        assert_diag(&d, 6, 20, words);
        if let Some(help) = help {
            assert!(d.help.as_deref().unwrap().contains(help), "{d}");
        }
    }
}

#[test]
fn same_prefix_twice_in_one_segment() {
    let d = one_error(&segment_with(
        "prefixes",
        "[10.1.1.0/24, \"fd00::/64\", \"fd00:0::/64\"]",
    ));
    assert_diag(
        &d,
        6,
        46,
        &[
            "\"fd00:0::/64\"",
            "listed twice",
            "acme/web",
            "\"fd00::/64\"",
            "6:33",
        ],
    );
}

#[test]
fn overlapping_prefixes_in_two_segments() {
    let d = one_error(
        "
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                prefixes: [10.1.1.0/24]
          - name: globex
            segments:
              - name: db
                prefixes: [10.1.0.0/16]
        ",
    );
    assert_diag(
        &d,
        10,
        20,
        &[
            "\"10.1.0.0/16\"",
            "globex/db",
            "contains",
            "\"10.1.1.0/24\"",
            "acme/web",
            "6:20",
        ],
    );

    let d = one_error(
        r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                prefixes: ["fd00::/16"]
              - name: db
                prefixes: ["fd00:1::/64"]
        "#,
    );
    assert_diag(&d, 8, 20, &["lies within", "acme/web", "acme/db"]);

    let d = one_error(
        "
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                prefixes: [10.1.1.0/24]
              - name: db
                prefixes: [10.1.1.0/24]
        ",
    );
    assert_diag(&d, 8, 20, &["also assigned", "acme/web", "6:20"]);
}

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

// ---------------------------------------------------------------- interface identities

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
fn interface_mapping_keys() {
    let d = one_error(&web_interfaces(
        "- name: tap1\n  macaddr: \"52:54:00:12:34:56\"\n",
    ));
    assert_diag(
        &d,
        9,
        13,
        &[
            "unknown field `macaddr`",
            "name, mac, addresses, vlans",
            "help: remove the key",
        ],
    );

    let d = one_error(&web_interfaces("- {name: tap1, vlan: 100}\n"));
    assert_diag(&d, 8, 26, &["unknown field `vlan`"]);

    let d = one_error(&web_interfaces("- name: tap1\n  name: tap2\n"));
    assert_diag(&d, 9, 13, &["duplicate", "name"]);

    // A missing name is reported at the entry, with the file's other problems.
    let all = errors(&web_interfaces(
        "- mac: \"52:54:00:12:34:56\"\n  vlans: [1]\n- \"tap 1\"\n",
    ));
    assert_eq!(all.len(), 2, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        8,
        13,
        &[
            "interface entry has no `name`",
            "help: write the interface's exact name",
        ],
    );
    assert_diag(&all[1], 10, 13, &["whitespace"]);

    // Values of the wrong type stop reading, as everywhere.
    let d = one_error(&web_interfaces("- name: tap1\n  addresses: 10.1.1.10\n"));
    assert_diag(&d, 9, 24, &["help: a list is expected"]);
    let d = one_error(&web_interfaces("- name: tap1\n  vlans: 100\n"));
    assert_diag(&d, 9, 20, &["help: a list is expected"]);
    let d = one_error(&web_interfaces("- name: tap1\n  mac: [52, 54]\n"));
    assert_diag(&d, 9, 18, &["help: a single value is expected"]);
    let d = one_error(&web_interfaces("- [tap1]\n"));
    assert_diag(
        &d,
        8,
        13,
        &["expected an interface name or pattern, or a mapping with `name`"],
    );
}

#[test]
fn interface_entry_must_be_a_string_or_a_mapping() {
    let all = errors(&segment_with("interfaces", "[123, on, 1.5]"));
    assert_eq!(all.len(), 3, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        6,
        22,
        &[
            "interface entry must be a name or a mapping with `name`, found the number 123",
            "help: YAML reads some unquoted values",
            "quotes",
        ],
    );
    assert_diag(&all[1], 6, 27, &["found the boolean true"]);
    assert_diag(&all[2], 6, 31, &["found the number 1.5"]);

    let d = one_error(&web_interfaces("- tap1\n-\n"));
    assert_diag(
        &d,
        9,
        12,
        &["interface entry is empty", "help: write an interface name"],
    );

    // Quoted, such names are names; in the mapping form `name` is always text.
    let policy = ok(&segment_with("interfaces", "[\"123\", {name: 456}]"));
    assert_eq!(first_interfaces(&policy), [iface("123"), iface("456")]);
}

#[test]
fn interface_rules_apply_to_the_mapping_form() {
    let cases: &[(&str, &[&str])] = &[
        ("\"tap acme\"", &["whitespace"]),
        ("tap-0123456789ab", &["16 bytes"]),
        ("\"*\"", &["every interface", "uplink"]),
        ("\"\"", &["interface name is empty"]),
    ];
    for (name, words) in cases {
        let d = one_error(&web_interfaces(&format!(
            "- name: {name}\n  vlans: [100]\n"
        )));
        assert_diag(&d, 8, 19, words);
    }

    let all = errors(
        r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                interfaces:
                  - name: tap-acme-1
                    mac: "52:54:00:00:00:01"
              - name: db
                interfaces:
                  - "tap-acme-1"
                  - name: "tap-*"
                  - name: tap-db1
                  - tap-db1
        "#,
    );
    assert_eq!(all.len(), 3, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        11,
        13,
        &["interface \"tap-acme-1\" of segment acme/db is also listed in segment acme/web at 7:19"],
    );
    assert_diag(
        &all[1],
        12,
        19,
        &[
            "interface pattern \"tap-*\" of segment acme/db overlaps interface \"tap-acme-1\" of \
             segment acme/web at 7:19: both match \"tap-acme-1\"",
        ],
    );
    assert_diag(
        &all[2],
        14,
        13,
        &["interface \"tap-db1\" is listed twice in segment acme/db: first at 13:19"],
    );
}

#[test]
fn mac_rules() {
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "\"52-54-00-12-34-56\"",
            &["\"52-54-00-12-34-56\" is not a MAC address"],
            "did you mean \"52:54:00:12:34:56\"? write a MAC address as six pairs of hex digits \
             separated by ':'",
        ),
        (
            "5254001234AB",
            &["\"5254001234AB\" is not a MAC address"],
            "did you mean \"52:54:00:12:34:ab\"?",
        ),
        (
            "525400123456",
            &["\"525400123456\" is not a MAC address"],
            "did you mean \"52:54:00:12:34:56\"?",
        ),
        (
            "\"52:54:00:12:34\"",
            &["\"52:54:00:12:34\" is not a MAC address"],
            "write a MAC address as six pairs of hex digits separated by ':', e.g. \
             \"52:54:00:12:34:56\"",
        ),
        (
            "\"52:54:00:12:34:56:78\"",
            &["is not a MAC address"],
            "six pairs",
        ),
        (
            "\"52:54:0:12:34:56\"",
            &["is not a MAC address"],
            "six pairs",
        ),
        (
            "\"52:54:00:12:34:5g\"",
            &["is not a MAC address"],
            "six pairs",
        ),
        (
            "\"52:54:00:12:34:+5\"",
            &["is not a MAC address"],
            "six pairs",
        ),
        // Twelve bytes, but not twelve hex digits (nor split at character boundaries).
        ("\"a€0012345678\"", &["is not a MAC address"], "six pairs"),
        (
            "\"01:00:5e:00:00:01\"",
            &[
                "MAC address \"01:00:5e:00:00:01\" is a multicast address",
                "lowest bit of its first octet",
            ],
            "a VM sends from a unicast MAC address, whose first octet is even",
        ),
        ("\"33:33:00:00:00:01\"", &["multicast"], "unicast"),
        (
            "\"FF:FF:FF:FF:FF:FF\"",
            &["\"FF:FF:FF:FF:FF:FF\" is the broadcast address"],
            "unicast",
        ),
        (
            "\"00:00:00:00:00:00\"",
            &["MAC address \"00:00:00:00:00:00\" is all zeros"],
            "write the MAC address of the VM's interface",
        ),
    ];
    for (mac, words, help) in cases {
        let d = one_error(&web_interfaces(&format!("- name: tap1\n  mac: {mac}\n")));
        assert_diag(&d, 9, 18, words);
        assert!(d.help.as_deref().unwrap().contains(help), "{d}");
    }

    // Either case, quoted or not (YAML reads 52:54:00:12:34:56 as text here).
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

#[test]
fn same_mac_on_two_interfaces() {
    let all = errors(
        r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                interfaces:
                  - name: tap-web1
                    mac: "52:54:00:12:34:56"
                  - name: tap-web2
                    mac: "52:54:00:12:34:56"
          - name: globex
            segments:
              - name: db
                interfaces:
                  - name: tap-db1
                    mac: "52:54:00:12:34:56"
                  - name: tap-db2
                    mac: "52:54:00:12:34:57"
        "#,
    );
    assert_eq!(all.len(), 2, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        10,
        18,
        &[
            "MAC address \"52:54:00:12:34:56\" of interface \"tap-web2\" is also declared for \
             interface \"tap-web1\" at 8:18",
            "help: a MAC address belongs to one interface",
        ],
    );
    assert_diag(
        &all[1],
        16,
        18,
        &[
            "MAC address \"52:54:00:12:34:56\" of interface \"tap-db1\" is also declared for \
             interface \"tap-web1\" of segment acme/web at 8:18",
        ],
    );

    // Written differently, still the same MAC.
    let d = one_error(&web_interfaces(
        "- name: tap1\n  mac: 52:54:00:ab:cd:ef\n- name: tap2\n  mac: 52:54:00:AB:CD:EF\n",
    ));
    assert_diag(
        &d,
        11,
        18,
        &[
            "MAC address \"52:54:00:AB:CD:EF\" of interface \"tap2\"",
            "\"tap1\" at 9:18",
        ],
    );
}

#[test]
fn identity_on_a_pattern_is_rejected() {
    let all = errors(&web_interfaces(
        "- name: \"tap-web-*\"\n  mac: \"52:54:00:12:34:56\"\n  addresses: [10.1.1.10]\n  \
         vlans: [100]\n- name: \"tap-db?\"\n  addresses: [10.1.1.11]\n",
    ));
    assert_eq!(all.len(), 3, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        9,
        18,
        &[
            "interface pattern \"tap-web-*\" has a `mac`, but a pattern can match many interfaces",
            "help: an identity belongs to one interface; use an exact name",
        ],
    );
    assert_diag(
        &all[1],
        10,
        24,
        &[
            "interface pattern \"tap-web-*\" has `addresses`, but a pattern can match many \
             interfaces",
            "help: an identity belongs to one interface; use an exact name",
        ],
    );
    assert_diag(
        &all[2],
        13,
        24,
        &["interface pattern \"tap-db?\" has `addresses`"],
    );

    // VLANs are fine on a pattern.
    let policy = ok(&web_interfaces("- name: \"tap-web-*\"\n  vlans: [100]\n"));
    assert_eq!(first_interfaces(&policy)[0].vlans, [100]);
}

#[test]
fn address_rules() {
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "web",
            &["\"web\" is not an IP address or prefix"],
            "write an address such as",
        ),
        (
            "10.1.300.1",
            &["\"10.1.300.1\" is not an IP address or prefix"],
            "",
        ),
        (
            "10.1.1.7/24",
            &["prefix \"10.1.1.7/24\" has host bits set"],
            "did you mean 10.1.1.0/24, or the single address 10.1.1.7?",
        ),
        ("10.1.1.0/33", &["length 33 is too long for IPv4"], ""),
        (
            "10.9.9.9",
            &[
                "address \"10.9.9.9\" of interface \"tap1\" is outside segment acme/web \
                 (10.1.1.0/24, fd00:1:1::/64)",
            ],
            "an interface sends only from addresses of its own segment: fix the address, or \
             add a prefix that contains it to the segment's `prefixes`",
        ),
        (
            "10.1.0.0/16",
            &[
                "address \"10.1.0.0/16\" of interface \"tap1\" is not entirely inside segment acme/web",
            ],
            "",
        ),
        (
            "\"fd00:2::1\"",
            &["address \"fd00:2::1\" of interface \"tap1\" is outside segment acme/web"],
            "",
        ),
    ];
    for (address, words, help) in cases {
        let d = one_error(&web_interfaces(&format!(
            "- name: tap1\n  addresses: [{address}]\n"
        )));
        assert_diag(&d, 9, 25, words);
        assert!(d.help.as_deref().unwrap_or("").contains(help), "{d}");
    }
    // IPv6 link-local addresses lie outside every segment, yet may be declared: they pin
    // the VM's link-local sources.
    let policy = parse(
        &web_interfaces("- name: tap1\n  addresses: [\"fe80::1\", \"10.1.1.5\"]\n"),
        "t.yaml",
    )
    .expect("a link-local address may be declared");
    let addresses = &policy.tenants[0].segments[0].interfaces[0].addresses;
    assert_eq!(
        addresses,
        &vec![
            "fe80::1/128".parse::<IpNet>().unwrap(),
            "10.1.1.5/32".parse().unwrap()
        ]
    );

    // Listed twice, however written; overlapping addresses of one interface are fine.
    let d = one_error(&web_interfaces(
        "- name: tap1\n  addresses: [10.1.1.10, \"fd00:1:1::10\", 10.1.1.10/32, 10.1.1.0/28]\n",
    ));
    assert_diag(
        &d,
        9,
        52,
        &[
            "address \"10.1.1.10/32\" is listed twice for interface \"tap1\": first as \
             \"10.1.1.10\" at 9:25",
            "help: remove one of the two entries",
        ],
    );

    let d = one_error(&web_interfaces("- name: tap1\n  addresses: []\n"));
    assert_diag(
        &d,
        9,
        24,
        &[
            "interface \"tap1\" has an empty `addresses` list",
            "help: leave out `addresses` to let the VM send from any address of its segment",
        ],
    );
}

#[test]
fn addresses_must_lie_in_their_own_segment() {
    let all = errors(
        r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                prefixes: [10.1.1.0/24]
                interfaces:
                  - name: tap-web1
                    addresses: [10.1.2.10]
              - name: empty
                interfaces:
                  - name: tap-empty1
                    addresses: [10.1.1.11]
              - name: db
                prefixes: [10.1.2.0/24]
        "#,
    );
    assert_eq!(all.len(), 2, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        9,
        25,
        &[
            "address \"10.1.2.10\" of interface \"tap-web1\" is outside segment acme/web \
             (10.1.1.0/24)",
            "help: 10.1.2.10 belongs to segment acme/db; an interface sends only from \
             addresses of its own segment",
        ],
    );
    assert_diag(
        &all[1],
        13,
        25,
        &[
            "address \"10.1.1.11\" of interface \"tap-empty1\" is outside segment acme/empty, \
             which has no prefixes",
            "help: 10.1.1.11 belongs to segment acme/web",
        ],
    );

    // With an invalid prefix in the segment, whether an address lies inside it is unknown.
    let d = one_error(
        r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                prefixes: [10.1.1.0/24, 10.1.2.1/24]
                interfaces:
                  - name: tap-web1
                    addresses: [10.1.2.10]
        "#,
    );
    assert_diag(&d, 6, 33, &["host bits"]);
}

#[test]
fn addresses_of_two_interfaces_must_not_overlap() {
    let all = errors(&web_interfaces(
        r#"
        - name: tap1
          addresses: [10.1.1.10, 10.1.1.0/28, "fd00:1:1::10"]
        - name: tap2
          addresses: [10.1.1.10]
        - name: tap3
          addresses: [10.1.1.0/29]
        - name: tap4
          addresses: [10.1.1.0/25]
        - name: tap5
          addresses: ["fd00:1:1::10/128", 10.1.1.16/28]
        "#,
    ));
    let positions: Vec<(u64, u64)> = all.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(
        positions,
        [(11, 25), (13, 25), (15, 25), (17, 25)],
        "{}",
        Diagnostics(all.clone())
    );
    assert_diag(
        &all[0],
        11,
        25,
        &[
            "address \"10.1.1.10\" of interface \"tap2\" is also declared for interface \
             \"tap1\" at 9:25",
            "help: a source address belongs to one interface",
        ],
    );
    assert_diag(
        &all[1],
        13,
        25,
        &[
            "address \"10.1.1.0/29\" of interface \"tap3\" lies within address \
             \"10.1.1.0/28\" of interface \"tap1\" at 9:36",
        ],
    );
    assert_diag(
        &all[2],
        15,
        25,
        &[
            "address \"10.1.1.0/25\" of interface \"tap4\" contains address \"10.1.1.10\" of \
             interface \"tap1\" at 9:25 (and 1 more overlapping address)",
        ],
    );
    assert_diag(
        &all[3],
        17,
        25,
        &[
            "address \"fd00:1:1::10/128\" of interface \"tap5\" is also declared for interface \"tap1\" at 9:49",
        ],
    );
}

#[test]
fn vlan_rules() {
    let all = errors(&web_interfaces(
        "- name: tap1\n  vlans: [0, 4095, \"100-200\", 1.5, 200, 100, 200, -1]\n",
    ));
    let positions: Vec<(u64, u64)> = all.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(
        positions,
        [(9, 21), (9, 24), (9, 30), (9, 41), (9, 56), (9, 61)],
        "{}",
        Diagnostics(all.clone())
    );
    assert_diag(
        &all[0],
        9,
        21,
        &[
            "VLAN id 0 is out of range",
            "help: VLAN ids are 1 to 4094; 802.1Q reserves 0 and 4095",
        ],
    );
    assert_diag(&all[1], 9, 24, &["VLAN id 4095 is out of range"]);
    assert_diag(
        &all[2],
        9,
        30,
        &[
            "a VLAN id must be a whole number, found \"100-200\"",
            "help: write each VLAN id as a number, e.g. `vlans: [100, 200]`; ranges are not \
             supported",
        ],
    );
    assert_diag(&all[3], 9, 41, &["found 1.5"]);
    assert_diag(
        &all[4],
        9,
        56,
        &[
            "VLAN 200 is listed twice for interface \"tap1\": first at 9:46",
            "help: remove one of the two entries",
        ],
    );
    assert_diag(&all[5], 9, 61, &["VLAN id -1 is out of range"]);

    let policy = ok(&web_interfaces(
        "- name: tap1\n  vlans: [4094, 1, 100]\n- name: tap2\n  vlans:\n    - 7\n",
    ));
    assert_eq!(first_interfaces(&policy)[0].vlans, [1, 100, 4094]);
    assert_eq!(first_interfaces(&policy)[1].vlans, [7]);
}

#[test]
fn overlapping_patterns_need_the_same_vlans() {
    let all = errors(&web_interfaces(
        r#"
        - name: "tap-a*"
          vlans: [100]
        - "tap-*"
        - name: "tap-b*"
          vlans: [100, 200]
        "#,
    ));
    assert_eq!(all.len(), 2, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        10,
        13,
        &[
            "interface pattern \"tap-*\" of segment acme/web allows no VLAN, but pattern \
             \"tap-a*\" at 8:19 allows VLAN 100: both match \"tap-a\"",
            "help: an interface that only patterns match takes its VLANs from them",
            "exact name",
        ],
    );
    assert_diag(
        &all[1],
        11,
        19,
        &[
            "\"tap-b*\" of segment acme/web allows VLANs 100, 200, but pattern \"tap-*\" at 10:13 allows no VLAN: both match \"tap-b\"",
        ],
    );

    // Same VLANs, disjoint patterns, or an exact name, which takes precedence.
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

#[test]
fn guard_options_are_booleans() {
    for (key, column) in [
        ("allow_router_advertisements", 38),
        ("allow_dhcp_server", 28),
    ] {
        for (value, shown) in [
            ("\"true\"", "\"true\""),
            ("1", "1"),
            ("enabled", "\"enabled\""),
            ("[true]", "a list"),
        ] {
            let d = one_error(&segment_with(key, value));
            assert_diag(
                &d,
                6,
                column,
                &[
                    &format!("`{key}` must be `true` or `false`, found {shown}"),
                    &format!("help: write `{key}: true`"),
                    "default `false`",
                ],
            );
        }
        for (value, expected) in [("true", true), ("false", false), ("", false)] {
            let policy = ok(&segment_with(key, value));
            let web = &policy.tenants[0].segments[0];
            let actual = if key == "allow_dhcp_server" {
                web.allow_dhcp_server
            } else {
                web.allow_router_advertisements
            };
            assert_eq!(actual, expected, "{key}: {value}");
        }
    }
}

#[test]
fn errors_of_identity_rules_are_collected_and_sorted() {
    let all = errors(&web_interfaces(
        r#"
        - name: "tap 1"
          mac: "52:54:00:12:34"
          addresses: [10.9.9.9]
          vlans: [0]
        - name: tap2
          mac: "01:00:00:00:00:01"
          addresses: [10.1.1.1/24, 10.1.1.10]
        - name: tap3
          addresses: [10.1.1.10]
        "#,
    ));
    let positions: Vec<(u64, u64)> = all.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(
        positions,
        [
            (8, 19),
            (9, 18),
            (10, 25),
            (11, 21),
            (13, 18),
            (14, 25),
            (16, 25)
        ],
        "{}",
        Diagnostics(all.clone())
    );
    assert!(all[6].message.contains("\"tap2\""), "{}", all[6]);
}

#[test]
fn invalid_names_and_addresses_do_not_cause_follow_up_errors() {
    // tap 1 is invalid: its MAC and address are not compared with the others'. An
    // invalid address is not compared either.
    let all = errors(&web_interfaces(
        r#"
        - name: "tap 1"
          mac: "52:54:00:12:34:56"
          addresses: [10.1.1.10]
        - name: tap2
          mac: "52:54:00:12:34:56"
          addresses: [10.1.1.10, 10.1.1.1/24]
        - name: tap3
          addresses: [10.1.1.0/24]
        "#,
    ));
    let positions: Vec<(u64, u64)> = all.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(
        positions,
        [(8, 19), (13, 36), (15, 25)],
        "{}",
        Diagnostics(all.clone())
    );
    assert!(
        all[2]
            .message
            .contains("contains address \"10.1.1.10\" of interface \"tap2\"")
    );
}

// ---------------------------------------------------------------- collection

#[test]
fn all_errors_are_collected_and_sorted() {
    let all = errors(
        "
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                interfaces: [\"*\"]
                prefixes: [10.0.0.1/8]
          - name: acme
        ",
    );
    assert_eq!(all.len(), 3, "{}", Diagnostics(all.clone()));
    assert_diag(&all[0], 6, 22, &["uplink"]);
    assert_diag(&all[1], 7, 20, &["host bits"]);
    assert_diag(&all[2], 8, 11, &["duplicate tenant name"]);
}

#[test]
fn invalid_entries_do_not_cause_follow_up_errors() {
    // The second "10.0.0.1/8" is invalid; it must not also be reported as a duplicate.
    let all = errors(&segment_with("prefixes", "[10.0.0.1/8, 10.0.0.1/8]"));
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|d| d.message.contains("host bits")));
}

// ---------------------------------------------------------------- isolation policy: model

/// `dedent(s)` with every non-empty line indented by `n` spaces.
fn indent(s: &str, n: usize) -> String {
    dedent(s)
        .lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{}{l}", " ".repeat(n))
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Segment acme/web (10.1.1.0/24, fd00:1:1::/64) with the given `expose:` entries
/// (written at column 0), which start at line 8. Block style puts `address` values at
/// column 22, `protocol` values at 23 and `ports` values at 20.
fn web_exposing(entries: &str) -> String {
    format!(
        "version: 1\ntenants:\n  - name: acme\n    segments:\n      - name: web\n        \
         prefixes: [10.1.1.0/24, \"fd00:1:1::/64\"]\n        expose:\n{}",
        indent(entries, 10)
    )
}

/// Tenant acme (segments web, db) with the given `flows:` entries (written at column 0),
/// which start at line 8, then tenant globex (segments api, batch). Block style puts
/// `from` values at column 15, `to` at 13, `protocol` at 19 and `ports` at 16.
fn acme_flows(entries: &str) -> String {
    format!(
        "version: 1\ntenants:\n  - name: acme\n    segments:\n      - name: web\n      - name: db\n    \
         flows:\n{}  - name: globex\n    segments:\n      - name: api\n      - name: batch\n",
        indent(entries, 6)
    )
}

fn svc(protocol: Protocol, ports: Option<(u16, u16)>) -> Service {
    Service {
        protocol,
        ports: ports.map(|(first, last)| PortRange::new(first, last).unwrap()),
    }
}

fn id(tenant: &str, segment: &str) -> SegmentId {
    SegmentId {
        tenant: tenant.into(),
        segment: segment.into(),
    }
}

#[test]
fn full_policy_parses_to_model() {
    let policy = ok(r#"
        version: 1
        mode: audit
        connection_tracking:
          udp_idle_seconds: 60
        management:
          - prefix: 192.168.100.0/24
          - prefix: "fd00:ff::/64"
            services:
              - protocol: tcp
                ports: 22
              - protocol: tcp
                ports: "6443-6444"
              - protocol: icmp
        tenants:
          - name: acme
            flows:
              - from: web
                to: db
                protocol: tcp
                ports: 5432
              - from: web
                to: globex/api
                protocol: udp
                ports: 8000-8080
              - from: db
                to: acme/web
                protocol: any
            segments:
              - name: web
                mode: enforce
                egress: deny
                interfaces: ["tap-acme-web-*"]
                prefixes: [10.1.1.0/24, "fd00:1:1::/64"]
                expose:
                  - address: 10.1.1.10
                    protocol: tcp
                    ports: 443
                  - address: 10.1.1.0/28
                    protocol: icmp
                  - address: "fd00:1:1::10"
                    protocol: any
              - name: db
                prefixes: [10.1.2.0/24]
          - name: globex
            segments:
              - name: api
                egress: allow
                prefixes: [10.2.0.0/24]
        "#);
    let expected = Policy {
        tenants: vec![
            Tenant {
                name: "acme".into(),
                segments: vec![
                    Segment {
                        name: "web".into(),
                        interfaces: vec![iface("tap-acme-web-*")],
                        prefixes: vec![net("10.1.1.0/24"), net("fd00:1:1::/64")],
                        mode: Mode::Enforce,
                        egress: Egress::Deny,
                        expose: vec![
                            Expose {
                                prefix: net("10.1.1.10/32"),
                                service: svc(Protocol::Tcp, Some((443, 443))),
                            },
                            Expose {
                                prefix: net("10.1.1.0/28"),
                                service: svc(Protocol::Icmp, None),
                            },
                            Expose {
                                prefix: net("fd00:1:1::10/128"),
                                service: Service::ANY,
                            },
                        ],
                        allow_router_advertisements: false,
                        allow_dhcp_server: false,
                    },
                    Segment {
                        name: "db".into(),
                        interfaces: vec![],
                        prefixes: vec![net("10.1.2.0/24")],
                        mode: Mode::Audit,
                        egress: Egress::Allow,
                        expose: vec![],
                        allow_router_advertisements: false,
                        allow_dhcp_server: false,
                    },
                ],
                flows: vec![
                    Flow {
                        from: "web".into(),
                        to: id("acme", "db"),
                        service: svc(Protocol::Tcp, Some((5432, 5432))),
                    },
                    Flow {
                        from: "web".into(),
                        to: id("globex", "api"),
                        service: svc(Protocol::Udp, Some((8000, 8080))),
                    },
                    Flow {
                        from: "db".into(),
                        to: id("acme", "web"),
                        service: svc(Protocol::Any, None),
                    },
                ],
            },
            Tenant {
                name: "globex".into(),
                segments: vec![Segment {
                    name: "api".into(),
                    interfaces: vec![],
                    prefixes: vec![net("10.2.0.0/24")],
                    mode: Mode::Audit,
                    egress: Egress::Allow,
                    expose: vec![],
                    allow_router_advertisements: false,
                    allow_dhcp_server: false,
                }],
                flows: vec![],
            },
        ],
        mode: Mode::Audit,
        management: vec![
            Management {
                prefix: net("192.168.100.0/24"),
                services: vec![],
            },
            Management {
                prefix: net("fd00:ff::/64"),
                services: vec![
                    svc(Protocol::Tcp, Some((22, 22))),
                    svc(Protocol::Tcp, Some((6443, 6444))),
                    svc(Protocol::Icmp, None),
                ],
            },
        ],
        connection_tracking: ConnectionTracking {
            tcp_idle_seconds: 7440,
            tcp_closing_seconds: 10,
            udp_idle_seconds: 60,
            icmp_idle_seconds: 30,
        },
    };
    assert_eq!(policy, expected);

    let summary = policy.summary();
    assert_eq!(
        summary,
        Summary {
            tenants: 2,
            segments: 3,
            interfaces: 1,
            prefixes: 4,
            exposed: 3,
            flows: 3,
            management: 2,
        }
    );
    // The one-line summary does not change with the new elements.
    assert_eq!(
        summary.to_string(),
        "2 tenants, 3 segments, 1 interface pattern, 4 prefixes"
    );

    let (tenant, segment) = policy.segment(&policy.tenants[0].flows[1].to).unwrap();
    assert_eq!(
        (tenant.name.as_str(), segment.name.as_str()),
        ("globex", "api")
    );
    assert!(policy.segment(&id("globex", "web")).is_none());
    assert!(policy.segment(&id("mars", "api")).is_none());
}

#[test]
fn new_keys_have_defaults() {
    for src in [
        "version: 1\ntenants: [{name: acme, segments: [{name: web}]}]\n",
        // A key written without a value is the same as leaving it out.
        "version: 1\nmode:\nconnection_tracking:\nmanagement:\ntenants:\n  - name: acme\n    \
         flows:\n    segments:\n      - name: web\n        mode:\n        egress:\n        expose:\n",
        "version: 1\nconnection_tracking: {}\ntenants: [{name: acme, segments: [{name: web}]}]\n",
    ] {
        let policy = parse(src, FILE).unwrap_or_else(|d| panic!("{src}\n{d}"));
        assert_eq!(policy.mode, Mode::Enforce);
        assert!(policy.management.is_empty());
        assert_eq!(
            policy.connection_tracking,
            ConnectionTracking {
                tcp_idle_seconds: 7440,
                tcp_closing_seconds: 10,
                udp_idle_seconds: 120,
                icmp_idle_seconds: 30,
            }
        );
        let tenant = &policy.tenants[0];
        assert!(tenant.flows.is_empty());
        let segment = &tenant.segments[0];
        assert_eq!(segment.mode, Mode::Enforce);
        assert_eq!(segment.egress, Egress::Allow);
        assert!(segment.expose.is_empty());
    }
}

#[test]
fn segment_mode_defaults_to_the_global_mode() {
    let modes = |src: &str| -> Vec<Mode> {
        ok(src)
            .tenants
            .iter()
            .flat_map(|t| &t.segments)
            .map(|s| s.mode)
            .collect()
    };
    let segments = "tenants:\n  - name: acme\n    segments:\n      - name: a\n      - name: b\n        \
                    mode: audit\n      - name: c\n        mode: enforce\n";
    assert_eq!(
        modes(&format!("version: 1\n{segments}")),
        [Mode::Enforce, Mode::Audit, Mode::Enforce]
    );
    assert_eq!(
        modes(&format!("version: 1\nmode: enforce\n{segments}")),
        [Mode::Enforce, Mode::Audit, Mode::Enforce]
    );
    assert_eq!(
        modes(&format!("version: 1\nmode: audit\n{segments}")),
        [Mode::Audit, Mode::Audit, Mode::Enforce]
    );
}

#[test]
fn model_helpers() {
    assert_eq!(PortRange::new(0, 1), None);
    assert_eq!(PortRange::new(2, 1), None);
    assert_eq!(PortRange::single(0), None);
    let range = PortRange::new(8000, 8080).unwrap();
    assert!(range.contains(8000) && range.contains(8080) && !range.contains(8081));
    assert_eq!(range.to_string(), "8000-8080");
    assert_eq!(PortRange::single(443).unwrap().to_string(), "443");
    assert_eq!(
        PortRange::new(1, 65535),
        Some(PortRange {
            first: 1,
            last: 65535
        })
    );

    assert_eq!(svc(Protocol::Tcp, Some((443, 443))).to_string(), "tcp 443");
    assert_eq!(svc(Protocol::Udp, Some((1, 2))).to_string(), "udp 1-2");
    assert_eq!(svc(Protocol::Tcp, None).to_string(), "tcp");
    assert_eq!(svc(Protocol::Icmp, None).to_string(), "icmp");
    assert_eq!(Service::ANY.to_string(), "any");
    assert!(Protocol::Tcp.has_ports() && Protocol::Udp.has_ports());
    assert!(!Protocol::Icmp.has_ports() && !Protocol::Any.has_ports());

    assert_eq!(id("acme", "web").to_string(), "acme/web");
    assert_eq!(Mode::default(), Mode::Enforce);
    assert_eq!(Mode::Audit.to_string(), "audit");
    assert_eq!(Egress::default(), Egress::Allow);
    assert_eq!(Egress::Deny.to_string(), "deny");
    assert_eq!(ConnectionTracking::default().tcp_idle_seconds, 7440);
    assert_eq!(TIMEOUT_MAX_SECONDS, 86_400);
}

// ---------------------------------------------------------------- mode, egress

#[test]
fn mode_and_egress_values_are_checked() {
    let all = errors(
        "
        version: 1
        mode: Audit
        tenants:
          - name: acme
            segments:
              - name: web
                mode: block
                egress: denied
              - name: db
                egress: allowed
        ",
    );
    assert_eq!(all.len(), 4, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        2,
        7,
        &[
            "`mode` must be `enforce` or `audit`, found \"Audit\"",
            "help: did you mean `audit`?",
            "`mode: enforce`",
        ],
    );
    assert_diag(
        &all[1],
        7,
        15,
        &["found \"block\"", "help: write `mode: enforce` to drop"],
    );
    assert_diag(
        &all[2],
        8,
        17,
        &[
            "`egress` must be `allow` or `deny`, found \"denied\"",
            "help: write `egress: allow`",
            "`egress: deny`",
        ],
    );
    assert_diag(
        &all[3],
        10,
        17,
        &["found \"allowed\"", "did you mean `allow`?"],
    );

    let d = one_error("version: 1\nmode: [audit]\ntenants: []\n");
    assert_diag(&d, 2, 7, &["help: a single value is expected here"]);
}

// ---------------------------------------------------------------- protocols, ports

#[test]
fn protocol_must_be_known() {
    let all = errors(&web_exposing(
        "
        - address: 10.1.1.1
          protocol: TCP
        - address: 10.1.1.2
          protocol: http
        - address: 10.1.1.3
          protocol: icmpv6
        ",
    ));
    assert_eq!(all.len(), 3, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        9,
        23,
        &[
            "`protocol` must be one of `tcp`, `udp`, `icmp`, `any`, found \"TCP\"",
            "help: did you mean `tcp`?",
        ],
    );
    assert_diag(
        &all[1],
        11,
        23,
        &[
            "found \"http\"",
            "help: write `protocol: tcp`, `udp`, `icmp`",
        ],
    );
    assert!(!all[1].to_string().contains("did you mean"), "{}", all[1]);
    assert_diag(
        &all[2],
        13,
        23,
        &["found \"icmpv6\"", "did you mean `icmp`?", "ICMPv6"],
    );

    let d = one_error(&web_exposing("- address: 10.1.1.1\n"));
    assert_diag(&d, 8, 13, &["missing field `protocol`"]);
}

#[test]
fn port_rules() {
    let cases: &[(&str, &[&str])] = &[
        (
            "0",
            &["port 0 is out of range", "help: ports are 1 to 65535"],
        ),
        ("65536", &["port 65536 is out of range"]),
        ("-1", &["port -1 is out of range"]),
        ("\"0\"", &["port 0 is out of range"]),
        (
            "\"0-80\"",
            &["port range \"0-80\": port 0 is out of range", "1 to 65535"],
        ),
        (
            "\"80-70000\"",
            &["port range \"80-70000\": port 70000 is out of range"],
        ),
        (
            "\"8080-8000\"",
            &[
                "port range \"8080-8000\" is backwards: 8080 is greater than 8000",
                "help: write the lower port first: \"8000-8080\"",
            ],
        ),
        (
            "\"80,443\"",
            &[
                "`ports` must be one port or one range of ports, found \"80,443\"",
                "`ports: 443`",
                "`ports: \"8000-8080\"`",
                "one entry for each",
            ],
        ),
        ("http", &["found \"http\"", "`ports: 443`"]),
        ("\"80-\"", &["found \"80-\""]),
        ("\"1-2-3\"", &["found \"1-2-3\""]),
        ("80.5", &["found 80.5"]),
        ("true", &["found true"]),
        ("[80, 443]", &["found a list", "one entry for each"]),
        ("{first: 80}", &["found a mapping"]),
    ];
    for (ports, words) in cases {
        let src = web_exposing(&format!(
            "- address: 10.1.1.1\n  protocol: tcp\n  ports: {ports}\n"
        ));
        let d = one_error(&src);
        assert_diag(&d, 10, 20, words);
    }

    let valid: &[(&str, (u16, u16))] = &[
        ("1", (1, 1)),
        ("65535", (65535, 65535)),
        ("\"443\"", (443, 443)),
        ("\"8000-8080\"", (8000, 8080)),
        ("8000-8080", (8000, 8080)),
        ("\"80-80\"", (80, 80)),
        ("\"1-65535\"", (1, 65535)),
    ];
    for (ports, (first, last)) in valid {
        let policy = ok(&web_exposing(&format!(
            "- address: 10.1.1.1\n  protocol: udp\n  ports: {ports}\n"
        )));
        assert_eq!(
            policy.tenants[0].segments[0].expose[0].service,
            svc(Protocol::Udp, Some((*first, *last))),
            "ports: {ports}"
        );
    }
}

#[test]
fn ports_are_forbidden_for_icmp_and_any() {
    let all = errors(&web_exposing(
        "
        - address: 10.1.1.1
          protocol: icmp
          ports: 8
        - address: 10.1.1.2
          protocol: any
          ports: 80
        - address: 10.1.1.3
          protocol: icmp
          ports: bogus
        ",
    ));
    assert_eq!(all.len(), 3, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        10,
        20,
        &["ICMP has no ports", "help: remove `ports`"],
    );
    assert_diag(
        &all[1],
        13,
        20,
        &[
            "`ports` cannot be combined with `protocol: any`",
            "help: remove `ports`",
        ],
    );
    // The value does not matter: only the "no ports" error, no complaint about "bogus".
    assert_diag(&all[2], 16, 20, &["ICMP has no ports"]);
}

// ---------------------------------------------------------------- expose

#[test]
fn expose_address_rules() {
    let all = errors(&web_exposing(
        "
        - address: web
          protocol: tcp
        - address: 10.1.1.7/24
          protocol: tcp
        - address: 10.1.1.0/33
          protocol: tcp
        - address: \"fd00:1:1::1/64\"
          protocol: tcp
        ",
    ));
    assert_eq!(all.len(), 4, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        8,
        22,
        &[
            "\"web\" is not an IP address or prefix",
            "help: write an address such as \"10.1.1.10\"",
            "\"10.1.1.0/28\"",
        ],
    );
    assert_diag(
        &all[1],
        10,
        22,
        &[
            "prefix \"10.1.1.7/24\" has host bits set",
            "help: did you mean 10.1.1.0/24, or the single address 10.1.1.7?",
        ],
    );
    assert_diag(&all[2], 12, 22, &["length 33", "maximum is 32"]);
    assert_diag(
        &all[3],
        14,
        22,
        &[
            "host bits",
            "did you mean fd00:1:1::/64, or the single address fd00:1:1::1?",
        ],
    );
}

#[test]
fn exposed_endpoint_must_lie_in_its_own_segment() {
    let all = errors(
        r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                prefixes: [10.1.1.0/24, "fd00:1:1::/64"]
                expose:
                  - address: 10.9.9.9
                    protocol: tcp
                  - address: 10.1.0.0/23
                    protocol: tcp
                  - address: 10.2.0.10
                    protocol: tcp
                  - address: "fd00:1:2::1"
                    protocol: icmp
              - name: empty
                expose: [{address: 10.1.1.1, protocol: any}]
          - name: globex
            segments:
              - name: api
                prefixes: [10.2.0.0/24]
        "#,
    );
    assert_eq!(all.len(), 5, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        8,
        22,
        &[
            "exposed endpoint 10.9.9.9 is outside segment acme/web (10.1.1.0/24, fd00:1:1::/64)",
            "help: an exposed endpoint must be an address of its own segment",
            "add a prefix that contains it",
        ],
    );
    assert_diag(
        &all[1],
        10,
        22,
        &[
            "exposed endpoint 10.1.0.0/23 is not entirely inside segment acme/web (10.1.1.0/24, fd00:1:1::/64)",
        ],
    );
    assert_diag(
        &all[2],
        12,
        22,
        &[
            "exposed endpoint 10.2.0.10 is outside segment acme/web",
            "help: 10.2.0.10 belongs to segment globex/api: expose it there",
        ],
    );
    assert_diag(
        &all[3],
        14,
        22,
        &["exposed endpoint fd00:1:2::1 is outside segment acme/web"],
    );
    assert_diag(
        &all[4],
        17,
        28,
        &[
            "exposed endpoint 10.1.1.1 is outside segment acme/empty, which has no prefixes",
            "belongs to segment acme/web",
        ],
    );
}

#[test]
fn invalid_segment_prefix_does_not_cause_expose_errors() {
    let d = one_error(
        "version: 1\ntenants:\n  - name: acme\n    segments:\n      - name: web\n        \
         prefixes: [10.1.1.0/33]\n        expose: [{address: 10.1.1.10, protocol: tcp}]\n",
    );
    assert_diag(&d, 6, 20, &["length 33"]);
}

#[test]
fn same_exposed_endpoint_twice() {
    let all = errors(&web_exposing(
        "
        - address: 10.1.1.10
          protocol: tcp
          ports: 443
        - address: 10.1.1.10/32
          protocol: tcp
          ports: \"443\"
        - address: 10.1.1.10
          protocol: tcp
          ports: 80
        - address: \"fd00:1:1::10\"
          protocol: icmp
        - address: \"fd00:1:1:0::10\"
          protocol: icmp
        ",
    ));
    assert_eq!(all.len(), 2, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        11,
        22,
        &[
            "exposed endpoint 10.1.1.10/32 tcp 443 is listed twice in segment acme/web: \
             first as 10.1.1.10 at 8:22",
            "help: remove one of the two entries",
        ],
    );
    assert_diag(
        &all[1],
        19,
        22,
        &[
            "exposed endpoint fd00:1:1:0::10 icmp is listed twice",
            "first as fd00:1:1::10 at 17:22",
        ],
    );
}

// ---------------------------------------------------------------- flows

#[test]
fn flow_source_must_be_a_segment_of_the_tenant() {
    let all = errors(&acme_flows(
        "
        - from: wbe
          to: db
          protocol: tcp
        - from: frontend
          to: db
          protocol: tcp
        - from: acme/web
          to: db
          protocol: tcp
        - from: globex/api
          to: db
          protocol: tcp
        ",
    ));
    assert_eq!(all.len(), 4, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        8,
        15,
        &[
            "flow source \"wbe\" is not a segment of tenant acme",
            "help: did you mean \"web\"?",
        ],
    );
    assert_diag(
        &all[1],
        11,
        15,
        &[
            "flow source \"frontend\" is not a segment of tenant acme",
            "the segments of acme are web, db",
        ],
    );
    assert_diag(
        &all[2],
        14,
        15,
        &[
            "flow source \"acme/web\" must be a segment of tenant acme, written without a tenant",
            "help: write \"web\"",
        ],
    );
    assert_diag(
        &all[3],
        17,
        15,
        &["list the flow under the `flows` of tenant globex"],
    );

    let all = errors(
        "version: 1\ntenants:\n  - name: acme\n    flows: [{from: web, to: x, protocol: tcp}]\n",
    );
    assert_eq!(all.len(), 2, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        4,
        20,
        &["flow source \"web\"", "tenant acme has no segments"],
    );
    assert_diag(&all[1], 4, 29, &["flow destination \"x\""]);
}

#[test]
fn flow_destination_must_resolve() {
    let all = errors(&acme_flows(
        "
        - from: web
          to: dbb
          protocol: tcp
        - from: web
          to: api
          protocol: tcp
        - from: web
          to: globx/api
          protocol: tcp
        - from: web
          to: globex/apj
          protocol: tcp
        - from: web
          to: globex/api/v1
          protocol: tcp
        - from: web
          to: mars/x
          protocol: tcp
        - from: web
          to: storage
          protocol: tcp
        ",
    ));
    assert_eq!(all.len(), 7, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        9,
        13,
        &[
            "flow destination \"dbb\" is not a segment of tenant acme",
            "help: did you mean \"db\"?",
        ],
    );
    assert_diag(
        &all[1],
        12,
        13,
        &[
            "flow destination \"api\" is not a segment of tenant acme",
            "help: did you mean \"globex/api\"? a segment of another tenant is written `tenant/segment`",
        ],
    );
    assert_diag(
        &all[2],
        15,
        13,
        &[
            "flow destination \"globx/api\": there is no tenant \"globx\"",
            "help: did you mean \"globex/api\"? the tenants are acme, globex",
        ],
    );
    assert_diag(
        &all[3],
        18,
        13,
        &[
            "flow destination \"globex/apj\": tenant globex has no segment \"apj\"",
            "help: did you mean \"globex/api\"? the segments of globex are api, batch",
        ],
    );
    assert_diag(
        &all[4],
        21,
        13,
        &[
            "flow destination \"globex/api/v1\" is not a segment name",
            "\"tenant/segment\"",
        ],
    );
    assert_diag(
        &all[5],
        24,
        13,
        &[
            "there is no tenant \"mars\"",
            "help: the tenants are acme, globex",
        ],
    );
    assert_diag(
        &all[6],
        27,
        13,
        &[
            "flow destination \"storage\" is not a segment of tenant acme",
            "`tenant/segment` for a segment of another tenant",
            "the segments of acme are web, db",
        ],
    );
}

#[test]
fn flow_to_itself_and_duplicate_flows() {
    let all = errors(&acme_flows(
        "
        - from: web
          to: web
          protocol: any
        - from: web
          to: acme/web
          protocol: tcp
        - from: web
          to: db
          protocol: tcp
          ports: 5432
        - from: web
          to: acme/db
          protocol: tcp
          ports: \"5432\"
        - from: web
          to: db
          protocol: tcp
          ports: 5433
        - from: db
          to: web
          protocol: tcp
          ports: 5432
        ",
    ));
    assert_eq!(all.len(), 3, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        9,
        13,
        &[
            "flow from acme/web to acme/web: traffic within a segment is always allowed",
            "help: remove this flow",
        ],
    );
    assert_diag(
        &all[1],
        12,
        13,
        &["traffic within a segment is always allowed"],
    );
    assert_diag(
        &all[2],
        18,
        15,
        &[
            "flow acme/web -> acme/db tcp 5432 is listed twice in tenant acme: first at 14:15",
            "help: remove one of the two entries",
        ],
    );
}

#[test]
fn flow_service_is_checked() {
    let all = errors(&acme_flows(
        "
        - from: web
          to: db
          protocol: icmp
          ports: 7
        - from: web
          to: globex/api
          protocol: tcp
          ports: \"80,443\"
        ",
    ));
    assert_eq!(all.len(), 2, "{}", Diagnostics(all.clone()));
    assert_diag(&all[0], 11, 16, &["ICMP has no ports"]);
    assert_diag(&all[1], 15, 16, &["found \"80,443\""]);
}

// ---------------------------------------------------------------- management

#[test]
fn management_rules() {
    let all = errors(
        r#"
        version: 1
        management:
          - prefix: 10.1.0.0/16
          - prefix: 10.1.1.128/25
          - prefix: 10.1.1.0/24
          - prefix: 192.168.100.0/24
            services: []
          - prefix: 192.168.100.0/24
          - prefix: 192.168.100.7/24
          - prefix: "fd00:ff::/64"
            services:
              - protocol: tcp
                ports: 22
              - protocol: tcp
                ports: "22"
              - protocol: icmp
                ports: 1
        tenants:
          - name: acme
            segments:
              - name: web
                prefixes: [10.1.1.0/24, 10.1.2.0/24]
        "#,
    );
    assert_eq!(all.len(), 8, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        3,
        13,
        &[
            "management prefix \"10.1.0.0/16\" contains prefix \"10.1.1.0/24\" of segment \
             acme/web at 22:20 (and 1 more overlapping prefix)",
            "help: a management prefix must never be inside a tenant segment",
        ],
    );
    assert_diag(
        &all[1],
        4,
        13,
        &[
            "management prefix \"10.1.1.128/25\" lies within prefix \"10.1.1.0/24\" of segment acme/web at 22:20",
        ],
    );
    assert_diag(
        &all[2],
        5,
        13,
        &[
            "management prefix \"10.1.1.0/24\" is the same as prefix \"10.1.1.0/24\" of segment acme/web",
        ],
    );
    assert_diag(
        &all[3],
        7,
        15,
        &[
            "management prefix \"192.168.100.0/24\" has an empty `services` list",
            "help: leave out `services` to protect every protocol and port",
        ],
    );
    assert_diag(
        &all[4],
        8,
        13,
        &[
            "management prefix \"192.168.100.0/24\" is listed twice: first at 6:13",
            "help: remove one of the two entries, or merge their `services`",
        ],
    );
    assert_diag(
        &all[5],
        9,
        13,
        &["host bits", "help: did you mean 192.168.100.0/24?"],
    );
    assert_diag(
        &all[6],
        14,
        19,
        &["service tcp 22 is listed twice for management prefix \"fd00:ff::/64\": first at 12:19"],
    );
    assert_diag(&all[7], 17, 16, &["ICMP has no ports"]);
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

// ---------------------------------------------------------------- connection tracking

#[test]
fn connection_tracking_rules() {
    let all = errors(
        "
        version: 1
        tenants: []
        connection_tracking:
          tcp_idle_seconds: 0
          tcp_closing_seconds: 86401
          udp_idle_seconds: 2m
          icmp_idle_seconds: -5
        ",
    );
    assert_eq!(all.len(), 4, "{}", Diagnostics(all.clone()));
    assert_diag(
        &all[0],
        4,
        21,
        &[
            "`tcp_idle_seconds` must be from 1 to 86400 seconds (one day), found 0",
            "help: the default is 7440; leave out the key to use it",
        ],
    );
    assert_diag(&all[1], 5, 24, &["found 86401", "the default is 10"]);
    assert_diag(
        &all[2],
        6,
        21,
        &[
            "`udp_idle_seconds` must be a whole number of seconds, found \"2m\"",
            "help: write a number from 1 to 86400, e.g. `udp_idle_seconds: 120`",
        ],
    );
    assert_diag(&all[3], 7, 22, &["found -5", "the default is 30"]);

    let policy = ok("
        version: 1
        tenants: []
        connection_tracking:
          tcp_idle_seconds: 86400
          icmp_idle_seconds: 1
        ");
    assert_eq!(
        policy.connection_tracking,
        ConnectionTracking {
            tcp_idle_seconds: 86400,
            tcp_closing_seconds: 10,
            udp_idle_seconds: 120,
            icmp_idle_seconds: 1,
        }
    );

    let d = one_error("version: 1\ntenants: []\nconnection_tracking: 30\n");
    assert_diag(&d, 3, 22, &["help: a mapping is expected here"]);
}

// ---------------------------------------------------------------- collection, suggestions

#[test]
fn errors_of_all_new_rules_are_collected_and_sorted() {
    let all = errors(
        "
        version: 1
        mode: strict
        connection_tracking: {udp_idle_seconds: 0}
        management:
          - prefix: 10.1.1.0/25
        tenants:
          - name: acme
            flows: [{from: web, to: web, protocol: tcp}]
            segments:
              - name: web
                egress: block
                prefixes: [10.1.1.0/24]
                expose: [{address: 10.1.2.1, protocol: tcp, ports: 0}]
        ",
    );
    let positions: Vec<(u64, u64)> = all.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(
        positions,
        [
            (2, 7),
            (3, 41),
            (5, 13),
            (8, 29),
            (11, 17),
            (13, 28),
            (13, 60)
        ],
        "{}",
        Diagnostics(all.clone())
    );
}

#[test]
fn suggestions() {
    assert_eq!(validate::values::edit_distance("web", "web"), 0);
    assert_eq!(validate::values::edit_distance("wbe", "web"), 1);
    assert_eq!(validate::values::edit_distance("db", "dbb"), 1);
    assert_eq!(validate::values::edit_distance("", "abc"), 3);
    assert_eq!(validate::values::edit_distance("kitten", "sitting"), 3);
    let close = |value, candidates: &[&'static str]| {
        validate::values::closest(value, candidates.iter().copied())
    };
    assert_eq!(close("TCP", &["tcp", "udp"]), Some("tcp"));
    assert_eq!(close("wbe", &["db", "web"]), Some("web"));
    assert_eq!(close("enforcing", &["enforce", "audit"]), Some("enforce"));
    assert_eq!(close("api", &["web", "db"]), None);
    assert_eq!(close("x", &["db"]), None);
    assert_eq!(close("", &["db"]), None);
    assert_eq!(validate::flows::list_names(&["a", "b"]), "a, b");
    let many: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        validate::flows::list_names(&many),
        "s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, ... (and 2 more)"
    );
    // The closest of several candidates wins.
    assert_eq!(close("dbx", &["web", "dbxx", "dbx2", "db"]), Some("dbxx"));
}

// ---------------------------------------------------------------- display, load

#[test]
fn diagnostic_display_format() {
    let mut d = Diagnostic {
        file: "p.yaml".into(),
        line: 3,
        column: 7,
        message: "something is wrong".into(),
        help: None,
    };
    assert_eq!(d.to_string(), "p.yaml:3:7: error: something is wrong");
    d.help = Some("fix it".into());
    assert_eq!(
        d.to_string(),
        "p.yaml:3:7: error: something is wrong\n  help: fix it"
    );
    let all = Diagnostics(vec![d.clone(), d]);
    assert_eq!(
        all.to_string(),
        "p.yaml:3:7: error: something is wrong\n  help: fix it\n\
         p.yaml:3:7: error: something is wrong\n  help: fix it\n"
    );
}

#[test]
fn load_unreadable_file() {
    let path = Path::new("/nonexistent/isolator/policy.yaml");
    let d = load(path).unwrap_err();
    assert_eq!(d.len(), 1);
    let d = &d.0[0];
    assert_eq!(d.file, "/nonexistent/isolator/policy.yaml");
    assert_eq!((d.line, d.column), (0, 0));
    assert!(d.message.contains("cannot read"), "{d}");
    assert_eq!(d.help.as_deref(), Some("check the path and permissions"));
}

#[test]
fn load_reads_file_and_names_it_in_errors() {
    let dir = std::env::temp_dir().join(format!("isolator-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    let bad = dir.join("bad.yaml");
    std::fs::write(&good, "version: 1\ntenants: [{name: acme}]\n").unwrap();
    std::fs::write(&bad, "version: 1\ntenants: [{name: Acme}]\n").unwrap();
    assert_eq!(load(&good).unwrap().summary().tenants, 1);
    let d = load(&bad).unwrap_err();
    assert_eq!(d.0[0].file, bad.display().to_string());
    assert_eq!((d.0[0].line, d.0[0].column), (2, 18));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- patterns

#[test]
fn pattern_matches_truth_table() {
    let table: &[(&str, &str, bool)] = &[
        ("veth1", "veth1", true),
        ("veth1", "veth10", false),
        ("veth1", "veth", false),
        ("tap-*", "tap-", true),
        ("tap-*", "tap-acme-1", true),
        ("tap-*", "tap", false),
        ("tap-*", "xtap-1", false),
        ("*-web", "tap-acme-web", true),
        ("*-web", "tap-acme-web0", false),
        ("t*p*1", "tap-acme-1", true),
        ("t*p*1", "tap-acme-2", false),
        ("a*a", "a", false),
        ("a*a", "aa", true),
        ("a*a", "abca", true),
        ("tap?", "tap0", true),
        ("tap?", "tap", false),
        ("tap?", "tap10", false),
        ("tap??", "tap10", true),
        ("?ap*", "tap-x", true),
        ("a*b*c", "aXbYbZc", true),
        ("a*b*c", "aXcYb", false),
        ("a?*", "a", false),
        ("a?*", "ab", true),
        ("é?", "éx", true),
        // Characters of the interface name are always literal.
        ("a?c", "a*c", true),
        ("abc", "a*c", false),
    ];
    for &(pattern, name, expected) in table {
        assert_eq!(
            pat(pattern).matches(name),
            expected,
            "{pattern:?} matches {name:?}"
        );
    }
}

#[test]
fn pattern_overlap_truth_table() {
    let table: &[(&str, &str, bool)] = &[
        ("tap-*", "tap-acme-1", true),
        ("tap-a*", "tap-b*", false),
        ("a*b", "*c", false),
        ("a?", "?b", true),
        ("*x*", "*y*", true),
        ("veth1", "veth1", true),
        ("veth1", "veth2", false),
        ("tap-*", "tap-acme-*", true),
        ("tap?", "tap??", false),
        ("tap?*", "tap", false),
        ("*-web", "tap-*", true),
        ("*-web", "*-db", false),
        ("a*", "*b", true),
        ("a*a", "a", false),
        ("a*a", "a?a", true),
        ("??", "a*b*c", false),
        ("???", "a*b*c", true),
        ("x*y*z", "*z*y*", true),
        ("*", "*", true),
        ("*", "", true),
        ("?", "", false),
        ("", "", true),
    ];
    for &(a, b, expected) in table {
        // The raw algorithm, so that all-wildcard patterns can be in the table too.
        for (x, y) in [(a, b), (b, a)] {
            let example = pattern::overlap_example(x, y);
            assert_eq!(example.is_some(), expected, "{x:?} overlaps {y:?}");
            if let Some(example) = example {
                assert!(
                    pattern::glob_matches(x, &example) && pattern::glob_matches(y, &example),
                    "example {example:?} for {x:?} and {y:?}"
                );
            }
        }
    }
    assert!(pat("tap-*").overlaps(&pat("tap-acme-1")));
    assert!(!pat("tap-a*").overlaps(&pat("tap-b*")));
    assert_eq!(
        pat("tap-*").overlap_example(&pat("tap-acme-1")).as_deref(),
        Some("tap-acme-1")
    );
    assert_eq!(pat("a?").overlap_example(&pat("?b")).as_deref(), Some("ab"));
}

/// Cross-checks the product-automaton search against brute force on every pair of
/// patterns of length <= 3 over {a, b, *, ?} (including ones validation rejects). A shortest common string has at most one
/// character per non-'*' position of both patterns (<= 6), and a fresh letter 'c'
/// stands for any character neither pattern names.
#[test]
fn pattern_overlap_agrees_with_brute_force() {
    fn all_strings(alphabet: &[char], max_len: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut layer = vec![String::new()];
        for _ in 0..max_len {
            layer = layer
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            out.extend(layer.iter().cloned());
        }
        out
    }
    /// Straightforward recursive definition of glob matching.
    fn reference_match(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some('*'), _) => {
                reference_match(&p[1..], s) || (!s.is_empty() && reference_match(p, &s[1..]))
            }
            (Some('?'), Some(_)) => reference_match(&p[1..], &s[1..]),
            (Some(c), Some(d)) if c == d => reference_match(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let patterns = all_strings(&['a', 'b', '*', '?'], 3);
    let names = all_strings(&['a', 'b', 'c'], 6);
    for p in &patterns {
        let pc: Vec<char> = p.chars().collect();
        for n in &names {
            let nc: Vec<char> = n.chars().collect();
            assert_eq!(
                pattern::glob_matches(p, n),
                reference_match(&pc, &nc),
                "{p:?} {n:?}"
            );
        }
    }
    let matched: Vec<Vec<bool>> = patterns
        .iter()
        .map(|p| names.iter().map(|n| pattern::glob_matches(p, n)).collect())
        .collect();
    for (i, a) in patterns.iter().enumerate() {
        for (j, b) in patterns.iter().enumerate() {
            let brute = (0..names.len()).any(|k| matched[i][k] && matched[j][k]);
            let found = pattern::overlap_example(a, b);
            assert_eq!(found.is_some(), brute, "{a:?} vs {b:?}");
            if let Some(example) = found {
                assert!(pattern::glob_matches(a, &example) && pattern::glob_matches(b, &example));
            }
        }
    }
}

#[test]
fn pattern_from_str_and_errors() {
    let p: InterfacePattern = "tap-*".parse().unwrap();
    assert_eq!(p.to_string(), "tap-*");
    let e = "tap[0]".parse::<InterfacePattern>().unwrap_err();
    assert!(e.message.contains("'['"), "{e}");
    assert!(e.help.is_some());
}

// ---------------------------------------------------------------- documentation

const POLICY_DOC: &str = include_str!("../../../docs/policy.md");

/// Fenced blocks of `doc` as (info string, content).
fn fenced_blocks(doc: &str) -> Vec<(&str, String)> {
    let mut blocks = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if let Some(info) = line.strip_prefix("```") {
            let mut content = String::new();
            for inner in lines.by_ref() {
                if inner.starts_with("```") {
                    break;
                }
                content.push_str(inner);
                content.push('\n');
            }
            blocks.push((info.trim(), content));
        }
    }
    blocks
}

#[test]
fn documented_example_is_valid() {
    let blocks = fenced_blocks(POLICY_DOC);
    let (_, example) = blocks
        .iter()
        .find(|(info, _)| *info == "yaml")
        .expect("docs/policy.md has a ```yaml block");
    let policy = parse(example, "docs/policy.md").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        policy.summary(),
        Summary {
            tenants: 2,
            segments: 4,
            interfaces: 7,
            prefixes: 8,
            exposed: 4,
            flows: 3,
            management: 3,
        }
    );
    assert!(POLICY_DOC.contains(&policy.summary().to_string()));
    let has_v4 = |s: &Segment| s.prefixes.iter().any(|p| matches!(p, IpNet::V4(_)));
    let has_v6 = |s: &Segment| s.prefixes.iter().any(|p| matches!(p, IpNet::V6(_)));
    let segments: Vec<&Segment> = policy.tenants.iter().flat_map(|t| &t.segments).collect();
    assert!(segments.iter().all(|s| has_v4(s) && has_v6(s)));
    let interfaces = || segments.iter().flat_map(|s| &s.interfaces);
    assert!(interfaces().any(Interface::is_glob));
    assert!(interfaces().any(|p| !p.is_glob()));
    // An interface with its whole identity, whose entry takes precedence over a pattern
    // of its segment; and an interface without identity.
    let pinned = interfaces()
        .find(|i| i.mac.is_some())
        .expect("an interface with a `mac`");
    assert!(!pinned.addresses.is_empty() && pinned.vlans.len() > 1);
    assert!(pinned.addresses.iter().any(|a| matches!(a, IpNet::V4(_))));
    assert!(pinned.addresses.iter().any(|a| matches!(a, IpNet::V6(_))));
    let (_, owner) = policy.segment_for_interface(pinned.as_str()).unwrap();
    assert!(
        owner
            .interfaces
            .iter()
            .any(|i| i.is_glob() && i.matches(pinned.as_str()))
    );
    assert_eq!(owner.interface_for(pinned.as_str()), Some(pinned));
    assert!(interfaces().any(|i| *i == Interface::new(i.pattern.clone())));
    assert!(segments.iter().any(|s| s.allow_dhcp_server));
    assert!(segments.iter().any(|s| !s.allow_dhcp_server));
    assert!(segments.iter().any(|s| s.allow_router_advertisements));

    // The example shows every key of the format, and the documented defaults.
    for key in [
        "\nmode: ",
        "\nconnection_tracking:",
        "\nmanagement:",
        " services:",
        " flows:",
        " egress: ",
        " expose:",
        "        mode: ",
        " allow_router_advertisements: ",
        " allow_dhcp_server: ",
        "  - name: ",
        " mac: ",
        " addresses: ",
        " vlans: ",
    ] {
        assert!(
            example.contains(key),
            "the complete example does not use {key:?}"
        );
    }
    assert_eq!(policy.connection_tracking, ConnectionTracking::default());
    assert!(segments.iter().any(|s| s.mode == Mode::Audit));
    assert!(segments.iter().any(|s| s.mode == Mode::Enforce));
    assert!(segments.iter().any(|s| s.egress == Egress::Deny));
    assert!(segments.iter().any(|s| s.egress == Egress::Allow));
    let exposed = || segments.iter().flat_map(|s| &s.expose);
    assert!(exposed().any(|e| e.prefix.prefix_len() == e.prefix.max_prefix_len()));
    assert!(exposed().any(|e| e.prefix.prefix_len() < e.prefix.max_prefix_len()));
    assert!(exposed().any(|e| matches!(e.prefix, IpNet::V6(_))));
    assert!(exposed().any(|e| e.service.protocol == Protocol::Icmp));
    let flows = || {
        policy
            .tenants
            .iter()
            .flat_map(|t| t.flows.iter().map(move |f| (t, f)))
    };
    assert!(
        flows().any(|(t, f)| f.to.tenant != t.name),
        "a cross-tenant flow"
    );
    assert!(flows().any(|(t, f)| f.to.tenant == t.name));
    assert!(flows().any(|(_, f)| f.service.ports.is_some_and(|p| p.first < p.last)));
    assert!(policy.management.iter().any(|m| m.services.is_empty()));
    assert!(policy.management.iter().any(|m| !m.services.is_empty()));
}

/// Every later ```yaml block that is directly followed by a ```text block documents
/// the exact diagnostics for that file.
#[test]
fn documented_error_examples_are_current() {
    let blocks = fenced_blocks(POLICY_DOC);
    let mut checked = 0;
    for pair in blocks.windows(2) {
        let [(yaml_info, yaml), (text_info, expected)] = pair else {
            unreachable!()
        };
        if *yaml_info != "yaml" || *text_info != "text" {
            continue;
        }
        let actual = match parse(yaml, "policy.yaml") {
            Ok(_) => panic!("documented error example is valid:\n{yaml}"),
            Err(d) => d.to_string(),
        };
        assert_eq!(&actual, expected, "for the documented example:\n{yaml}");
        checked += 1;
    }
    assert!(
        checked >= 8,
        "only {checked} documented error examples found"
    );
}

#[test]
fn readme_example_is_valid() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("```yaml\n")
        .expect("the README has a yaml block")
        + 8;
    let end = start + readme[start..].find("```").expect("closed");
    // The block is indented under a list item.
    let text: String = readme[start..end]
        .lines()
        .map(|l| l.strip_prefix("   ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let policy = parse(&text, "README.md").unwrap_or_else(|d| panic!("{d}"));
    let summary = policy.summary();
    assert_eq!((summary.tenants, summary.segments), (1, 2));
    assert_eq!(summary.flows, 1);
}
