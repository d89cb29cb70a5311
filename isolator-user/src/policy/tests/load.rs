//! How diagnostics display, and reading policy files.

use std::path::Path;

use super::*;

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

/// 100 000 one-segment tenants, each with one prefix (IPv4 and IPv6 alternating): the
/// policy of issue 13, which the YAML parser's default budget (250 000 values) refused.
#[test]
fn a_policy_of_100_000_segments_loads() {
    let mut source = String::from("version: 1\ntenants:\n");
    for i in 0..100_000u32 {
        let prefix = if i % 2 == 0 {
            format!("10.{}.{}.0/24", i >> 9, (i >> 1) & 0xff)
        } else {
            format!("fd00:{:x}:{:x}::/64", i >> 16, i & 0xffff)
        };
        source.push_str(&format!(
            "  - name: t{i}\n    segments: [{{name: s, prefixes: [\"{prefix}\"]}}]\n"
        ));
    }
    let policy = match parse(&source, FILE) {
        Ok(policy) => policy,
        Err(d) => panic!("{}", d.0[0]),
    };
    let summary = policy.summary();
    assert_eq!((summary.tenants, summary.segments), (100_000, 100_000));
    assert_eq!(summary.prefixes, 100_000);
}

/// A "billion laughs": each anchor holds ten aliases of the one before, 10^9 values in
/// all. Refused at once, saying what and what to do.
#[test]
fn an_alias_bomb_is_refused_with_a_clear_message() {
    let mut source = String::from(
        "version: 1\ntenants: []\nvif_names:\n  - &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for level in 1..9 {
        let aliases = vec![format!("*a{}", level - 1); 10].join(", ");
        source.push_str(&format!("  - &a{level} [{aliases}]\n"));
    }
    let d = parse(&source, FILE).unwrap_err();
    assert_eq!(d.len(), 1, "{d}");
    let d = &d.0[0];
    assert_eq!(d.file, FILE);
    assert!(d.line > 0, "{d}");
    assert!(d.message.starts_with("the policy's YAML aliases "), "{d}");
    let help = d.help.as_deref().unwrap_or_default();
    assert!(help.starts_with("a policy needs no YAML anchors"), "{d}");
}

/// Lists nested far deeper than a policy ever nests are refused by the parser's depth
/// limit, not by a stack overflow.
#[test]
fn absurd_nesting_is_refused_with_a_clear_message() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let source = format!(
            "version: 1\ntenants: []\nvif_names: [{}x{}]\n",
            open.repeat(10_000),
            close.repeat(10_000)
        );
        let d = parse(&source, FILE).unwrap_err();
        assert_eq!(d.len(), 1, "{d}");
        let d = &d.0[0];
        assert_eq!((d.file.as_str(), d.line), (FILE, 3), "{d}");
        assert!(
            d.message.starts_with("the policy nests lists and mappings")
                && d.message
                    .ends_with(&format!("at most {MAX_YAML_DEPTH} levels")),
            "{d}"
        );
        assert!(
            d.help
                .as_deref()
                .unwrap_or_default()
                .contains("indentation"),
            "{d}"
        );
    }
}

/// A file larger than isolator reads is refused before it is read (this one is sparse).
#[test]
fn a_file_too_large_is_refused_before_it_is_read() {
    let dir = std::env::temp_dir().join(format!("isolator-policy-large-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("huge.yaml");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(MAX_POLICY_BYTES as u64 + 1).unwrap();
    let d = load(&path).unwrap_err();
    assert_eq!(d.len(), 1);
    let d = &d.0[0];
    assert_eq!(d.file, path.display().to_string());
    assert!(
        d.message.starts_with(&format!(
            "the policy file is {} bytes long",
            MAX_POLICY_BYTES + 1
        )),
        "{d}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
