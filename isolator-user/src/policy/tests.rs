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
                        interfaces: vec![pat("tap-acme-web-*"), pat("veth-acme1")],
                        prefixes: vec![net("10.1.1.0/24"), net("fd00:1:1::/64")],
                    },
                    Segment {
                        name: "db_1".into(),
                        interfaces: vec![pat("tap-acme-db?")],
                        prefixes: vec![],
                    },
                ],
            },
            Tenant {
                name: "9lives".into(),
                segments: vec![],
            },
        ],
    };
    assert_eq!(policy, expected);
    let summary = policy.summary();
    assert_eq!(
        summary,
        Summary {
            tenants: 2,
            segments: 2,
            interfaces: 3,
            prefixes: 2
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
    let top = one_error("version: 1\ntenants: []\nmanagement: []\n");
    assert_diag(&top, 3, 1, &["unknown field `management`", "help:"]);

    let tenant = one_error("version: 1\ntenants:\n  - name: acme\n    flows: []\n");
    assert_diag(&tenant, 4, 5, &["unknown field `flows`"]);

    let segment = one_error(&segment_with("expose", "[]"));
    assert_diag(&segment, 6, 9, &["unknown field `expose`"]);
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
            interfaces: 6,
            prefixes: 8
        }
    );
    assert!(POLICY_DOC.contains(&policy.summary().to_string()));
    let has_v4 = |s: &Segment| s.prefixes.iter().any(|p| matches!(p, IpNet::V4(_)));
    let has_v6 = |s: &Segment| s.prefixes.iter().any(|p| matches!(p, IpNet::V6(_)));
    let segments: Vec<&Segment> = policy.tenants.iter().flat_map(|t| &t.segments).collect();
    assert!(segments.iter().all(|s| has_v4(s) && has_v6(s)));
    let interfaces = || segments.iter().flat_map(|s| &s.interfaces);
    assert!(interfaces().any(InterfacePattern::is_glob));
    assert!(interfaces().any(|p| !p.is_glob()));
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
