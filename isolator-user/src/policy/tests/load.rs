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
