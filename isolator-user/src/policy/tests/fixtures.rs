//! Diagnostics as data: every `fixtures/NAME.yaml` is parsed as a policy file named
//! `NAME.yaml`, and what `isolator check` would print for it (every diagnostic, with its
//! help) must equal `fixtures/NAME.expected` exactly; an empty `.expected` file means the
//! policy is valid.
//!
//! To add a case, write the `.yaml` file and run
//! `ISOLATOR_BLESS=1 cargo test -p isolator-user --lib policy::tests::fixtures`, which
//! writes every `.expected` file from the current output; review the diff before
//! committing.

use std::fs;
use std::path::Path;

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/policy/fixtures");

/// What `isolator check` prints for `source` before its count line; empty when valid.
fn diagnostics(source: &str, file_name: &str) -> String {
    match parse(source, file_name) {
        Ok(_) => String::new(),
        Err(diagnostics) => diagnostics.to_string(),
    }
}

/// The lines that differ, position by position: `-` expected, `+` actual.
fn line_diff(expected: &str, actual: &str) -> String {
    let (expected, actual): (Vec<&str>, Vec<&str>) =
        (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    for i in 0..expected.len().max(actual.len()) {
        let (e, a) = (expected.get(i), actual.get(i));
        if e != a {
            out.extend(e.map(|e| format!("-{e}\n")));
            out.extend(a.map(|a| format!("+{a}\n")));
        }
    }
    out
}

#[test]
fn diagnostics_match_fixtures() {
    let bless = std::env::var_os("ISOLATOR_BLESS").is_some();
    let dir = Path::new(FIXTURES);
    let mut files: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{FIXTURES}: {e}"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();

    let mut failures = Vec::new();
    let mut checked = 0;
    for file in &files {
        let Some(name) = file.strip_suffix(".yaml") else {
            match file.strip_suffix(".expected") {
                Some(name) if files.contains(&format!("{name}.yaml")) => {}
                _ => failures.push(format!("{file}: not a NAME.yaml with its NAME.expected")),
            }
            continue;
        };
        let source = fs::read_to_string(dir.join(file)).unwrap();
        let actual = diagnostics(&source, file);
        let expected_path = dir.join(format!("{name}.expected"));
        if bless {
            fs::write(&expected_path, &actual).unwrap();
        }
        match fs::read_to_string(&expected_path) {
            Err(e) => failures.push(format!("{name}.expected: {e}")),
            Ok(expected) if expected != actual => failures.push(format!(
                "{file}: diagnostics differ from {name}.expected:\n{}",
                line_diff(&expected, &actual)
            )),
            Ok(_) => {}
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) with the {checked} fixtures (ISOLATOR_BLESS=1 rewrites the .expected \
         files):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(checked >= 80, "only {checked} fixtures in {FIXTURES}");
}
