//! Values several sections share: valid ports, and the suggestions for misspelled
//! names and keywords. The rules are tested by the `services-*` fixtures.

use super::*;

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

#[test]
fn valid_ports() {
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
