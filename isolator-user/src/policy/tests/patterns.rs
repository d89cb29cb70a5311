//! Interface name patterns: matching, and the overlap analysis.

use super::*;

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
