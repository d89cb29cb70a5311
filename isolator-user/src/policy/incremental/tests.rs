use std::fs;

use super::{Cache, Cut};
use crate::policy::synthetic::{Shape, generate};
use crate::policy::{Diagnostics, Policy, parse};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/policy/fixtures");

/// What a result shows: the policy, or every diagnostic as printed.
fn shown(result: &Result<Policy, Diagnostics>) -> Result<&Policy, String> {
    result.as_ref().map_err(|d| d.to_string())
}

/// Every fixture (the diagnostics' test cases, each a policy with problems) reads the same
/// through a cache as whole: through a new cache, through one that read another file,
/// and again through one that read this very file.
#[test]
fn every_fixture_reads_as_the_whole_file_does() {
    let mut sources = Vec::new();
    for entry in fs::read_dir(FIXTURES).expect("the fixtures") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            sources.push((name, fs::read_to_string(&path).expect("a fixture")));
        }
    }
    assert!(sources.len() > 20, "{} fixtures", sources.len());
    let mut shared = Cache::new();
    let mut cut = 0;
    for (name, source) in &sources {
        let whole = parse(source, name);
        let (fresh, _, reuse) = Cache::new().parse_timed(source, name);
        assert_eq!(shown(&fresh), shown(&whole), "{name}, a new cache");
        let (after_other, _, _) = shared.parse_timed(source, name);
        assert_eq!(
            shown(&after_other),
            shown(&whole),
            "{name}, after another file"
        );
        let (again, _, _) = shared.parse_timed(source, name);
        assert_eq!(shown(&again), shown(&whole), "{name}, the same file again");
        // Every fixture has a problem: read whole in the end, after a cut where one
        // could be made.
        assert!(reuse.whole, "{name}");
        cut += usize::from(Cut::of(source).is_some());
    }
    assert!(cut > 20, "only {cut} fixtures could be cut");
}

/// A cloud of 400 segments: read whole through the cut the first time; after one
/// segment's prefix changed, only its tenant is parsed, and the policy is the one the
/// whole file gives.
#[test]
fn a_change_to_one_tenant_parses_that_tenant() {
    let shape = Shape::cloud(400);
    let first = generate(&shape);
    let mut cache = Cache::new();
    let (policy, _, reuse) = cache.parse_timed(&first, "cloud.yaml");
    assert_eq!(shown(&policy), shown(&parse(&first, "cloud.yaml")));
    assert_eq!((reuse.reused, reuse.parsed, reuse.whole), (0, 100, false));

    // One segment gets another /28.
    let old = "\"10.0.2.128/28\"";
    assert!(first.contains(old), "the generator's address plan changed");
    let second = first.replacen(old, "\"10.0.2.128/28\", \"10.200.0.0/28\"", 1);
    let (policy, _, reuse) = cache.parse_timed(&second, "cloud.yaml");
    let whole = parse(&second, "cloud.yaml");
    assert_eq!(shown(&policy), shown(&whole));
    assert_eq!((reuse.reused, reuse.parsed, reuse.whole), (99, 1, false));
    let policy = policy.expect("valid");
    assert!(
        policy
            .tenants
            .iter()
            .flat_map(|t| &t.segments)
            .any(|s| s.prefixes.iter().any(|p| p.to_string() == "10.200.0.0/28")),
        "the change is in the policy read"
    );

    // A problem in one tenant: the diagnostics of the whole file, positions included,
    // and the cache keeps the last valid file's tenants.
    let broken = second.replacen("10.200.0.0/28", "10.200.0.0/33", 1);
    assert_ne!(broken, second);
    let (result, _, reuse) = cache.parse_timed(&broken, "cloud.yaml");
    assert!(reuse.whole);
    let expected = parse(&broken, "cloud.yaml")
        .expect_err("invalid")
        .to_string();
    assert_eq!(shown(&result), Err(expected.clone()));
    assert!(expected.contains("cloud.yaml:"), "{expected}");
    let (_, _, reuse) = cache.parse_timed(&second, "cloud.yaml");
    assert_eq!((reuse.reused, reuse.parsed), (100, 0));
}

/// The documented example and the packaged policy read the same through the cut.
#[test]
fn the_documented_policies_read_as_the_whole_file_does() {
    let doc = include_str!("../../../../docs/policy.md");
    let example = doc
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/policy.md has a yaml block");
    let packaged = include_str!("../../../../packaging/policy.yaml");
    for (name, source) in [("docs/policy.md", example), ("policy.yaml", packaged)] {
        let (result, _, reuse) = Cache::new().parse_timed(source, name);
        assert!(!reuse.whole, "{name} is read through the cut");
        assert_eq!(shown(&result), shown(&parse(source, name)), "{name}");
        assert!(result.is_ok(), "{name} is valid");
    }
}

/// Where the cut is not safe, the file is read whole.
#[test]
fn files_the_cut_could_misread_are_read_whole() {
    let base = "version: 1\ntenants:\n  - name: a\n    segments:\n      - name: s\n        prefixes: [10.1.0.0/24]\n  - name: b\n";
    let cases = [
        (
            "an anchor and an alias",
            format!("{base}    segments: &x []\n  - name: c\n    segments: *x\n"),
        ),
        (
            "flow style",
            "version: 1\ntenants: [{name: a}]\n".to_string(),
        ),
        ("tenants twice", format!("{base}tenants: []\n")),
        (
            "a comment after the key is fine, a value is not",
            "version: 1\ntenants: # t\n  - name: a\n".to_string(),
        ),
        (
            "a quoted string over two lines",
            "version: 1\ntenants:\n  - name: \"a\n  - b\"\n".to_string(),
        ),
        ("a tab", format!("{base}\t\n")),
        ("a second document", format!("{base}---\nversion: 1\n")),
    ];
    for (what, source) in &cases {
        let whole = parse(source, "t.yaml");
        let (result, _, reuse) = Cache::new().parse_timed(source, "t.yaml");
        assert_eq!(shown(&result), shown(&whole), "{what}");
        let expected_cut = *what == "a comment after the key is fine, a value is not";
        assert_eq!(!reuse.whole, expected_cut, "{what}: {reuse:?}");
    }
}

/// The pieces: the rest keeps the `tenants:` line and what follows the block; each entry
/// runs to the next line at its indentation that starts one, comments and blank lines
/// included.
#[test]
fn the_cut_keeps_the_rest_and_each_entry_whole() {
    let source = "version: 1\n# head\ntenants:\n  # before\n  - name: a\n    flows: []\n\n  # between\n  - name: b\nmode: audit\n";
    let cut = Cut::of(source).expect("a cut");
    assert_eq!(
        cut.rest,
        "version: 1\n# head\ntenants:\n  # before\nmode: audit\n"
    );
    assert_eq!(
        cut.entries,
        vec![
            "  - name: a\n    flows: []\n\n  # between\n",
            "  - name: b\n"
        ]
    );
    // Entries at the left margin, a last line without a newline.
    let cut = Cut::of("tenants:\n- name: a\n- name: b").expect("a cut");
    assert_eq!(cut.rest, "tenants:\n");
    assert_eq!(cut.entries, vec!["- name: a\n", "- name: b"]);
    // Interface patterns are not aliases.
    assert!(
        Cut::of("tenants:\n- name: a\n  segments: [{name: s, interfaces: [vm-*, \"x*\"]}]\n")
            .is_some()
    );
    assert!(Cut::of("tenants:\n- name: a\n  segments: [*s]\n").is_none());
}

/// Keys after the `tenants:` block, and Windows line ends: read through the cut, the same
/// policy as whole.
#[test]
fn keys_after_the_block_and_crlf_line_ends_read_as_the_whole_file_does() {
    let source = "version: 1\ntenants:\n  - name: a\n    segments:\n      - name: s\n        \
                  interfaces: [\"va*\"]\n        prefixes: [10.1.0.0/24]\n  - name: b\n    \
                  segments:\n      - name: s\n        prefixes: [10.2.0.0/24]\n        \
                  egress: allow\nmanagement:\n  - prefix: 192.168.100.0/24\nmode: audit\n";
    for (what, text) in [
        ("keys after the block", source.to_string()),
        ("CRLF line ends", source.replace('\n', "\r\n")),
    ] {
        let whole = parse(&text, "t.yaml");
        assert!(whole.is_ok(), "{what}: {:?}", shown(&whole));
        let mut cache = Cache::new();
        let (result, _, reuse) = cache.parse_timed(&text, "t.yaml");
        assert!(!reuse.whole, "{what}: read through the cut");
        assert_eq!(shown(&result), shown(&whole), "{what}");
        let (again, _, reuse) = cache.parse_timed(&text, "t.yaml");
        assert_eq!((reuse.reused, reuse.parsed), (2, 0), "{what}");
        assert_eq!(shown(&again), shown(&whole), "{what}");
    }
}

/// The cut as it was first written (a list of every line's offsets, then a second pass
/// from the `tenants:` key): the oracle for the one-pass [`Cut::of`].
fn cut_in_two_passes(source: &str) -> Option<Cut<'_>> {
    use super::{blank_or_comment, entry_indent, indentation, is_tenants_key};
    let bytes = source.as_bytes();
    let may_alias = bytes.iter().enumerate().any(|(i, &b)| {
        (b == b'&' || b == b'*')
            && (i == 0 || matches!(bytes[i - 1], b' ' | b'\n' | b'[' | b'{' | b',' | b'\t'))
    });
    if may_alias {
        return None;
    }
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, byte) in source.bytes().enumerate() {
        if byte == b'\n' {
            lines.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < source.len() {
        lines.push((start, source.len()));
    }
    let text = |(s, e): (usize, usize)| &source[s..e];
    let mut key = None;
    for (i, &line) in lines.iter().enumerate() {
        let l = text(line);
        if l.starts_with('\t') || l.starts_with('%') || l.starts_with("---") || l.starts_with("...")
        {
            return None;
        }
        if l.starts_with("tenants") || l.starts_with("\"tenants") || l.starts_with("'tenants") {
            if key.is_some() || !is_tenants_key(l) {
                return None;
            }
            key = Some(i);
        }
    }
    let key = key?;
    let first = (key + 1..lines.len()).find(|&i| !blank_or_comment(text(lines[i])))?;
    let indent = entry_indent(text(lines[first]))?;
    let mut end = first;
    let mut starts = Vec::new();
    while end < lines.len() {
        let l = text(lines[end]);
        if entry_indent(l) == Some(indent) {
            starts.push(end);
        } else if !blank_or_comment(l) && indentation(l) <= indent {
            break;
        }
        end += 1;
    }
    let mut entries = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let e = starts.get(k + 1).copied().unwrap_or(end);
        entries.push(&source[lines[s].0..lines[e - 1].1]);
    }
    let block_start = lines[first].0;
    let block_end = if end < lines.len() {
        lines[end].0
    } else {
        source.len()
    };
    Some(Cut::new(source, block_start, block_end, entries, indent))
}

/// Lines put into a file to move its block's end or make the cut unsafe (a tab, a
/// directive, a document marker, a second key, an entry less indented, a line at the
/// margin, anchors and aliases).
const INSERTS: &[&str] = &[
    "\tx: 1\n",
    "%YAML 1.2\n",
    "---\n",
    "...\n",
    "tenants:\n",
    "tenants: []\n",
    "- name: z\n",
    " - name: z\n",
    "  - name: z\n",
    "    - name: z\n",
    "x: 1\n",
    "  x: 1\n",
    "# a comment\n",
    "\n",
    "   \n",
    "  # indented comment\n",
    "  a: &x 1\n",
    "*x\n",
    "  b: [*x]\n",
    "  c: \"a*b&c\"\n",
    "&x\n",
    "  d: x*y\n",
];

/// The one-pass cut finds what the two-pass one did: on every fixture, the documented
/// policies and a synthetic cloud, and on each of them with one line changed in ways
/// that move the block's end or make the cut unsafe (a tab, a directive, a document
/// marker, a second key, an entry less indented, a line at the margin, CRLF, no final
/// newline).
#[test]
fn the_cut_in_one_pass_finds_what_two_passes_did() {
    let mut sources = vec![generate(&Shape::cloud(40))];
    for entry in fs::read_dir(FIXTURES).expect("the fixtures") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            sources.push(fs::read_to_string(&path).expect("a fixture"));
        }
    }
    sources.extend(documented());
    let mut compared = 0;
    let mut cut = 0;
    for source in &sources {
        let mut variants = vec![
            source.clone(),
            source.replace('\n', "\r\n"),
            source.trim_end_matches('\n').to_owned(),
        ];
        variants.extend(with_inserts(source, INSERTS));
        for variant in &variants {
            let one = Cut::of(variant);
            assert_eq!(one, cut_in_two_passes(variant), "{variant}");
            compared += 1;
            cut += usize::from(one.is_some());
        }
    }
    assert!(
        compared > 5000 && cut > 1000,
        "{compared} compared, {cut} cut"
    );
}

/// The cut found from the last file kept ([`Cache::follow`]) is the cut of the whole
/// file, where it is found at all: a valid cloud and the documented valid policies kept,
/// then each with lines put in at places spread over it (the inserts of the test above,
/// and an entry's line changed), and with a tenant moved, removed and doubled.
#[test]
fn the_cut_found_from_the_last_file_is_the_cut_of_the_whole_file() {
    let mut sources = vec![generate(&Shape::cloud(40))];
    sources.extend(
        documented()
            .into_iter()
            .filter(|b| parse(b, "p.yaml").is_ok() && Cut::of(b).is_some()),
    );
    // Deeper lines, and some that are not whole lines: they join the line they are put
    // before.
    let deeper = [
        "      x: 1\n",
        "      a: &x 1\n",
        "      b: [*x]\n",
        "    ",
        "x",
        "      x: 1",
    ];
    let inserts: Vec<&str> = INSERTS.iter().copied().chain(deeper).collect();
    let (mut followed, mut compared) = (0, 0);
    for source in &sources {
        let mut cache = Cache::new();
        let (kept, _, reuse) = cache.parse_timed(source, "p.yaml");
        assert!(kept.is_ok() && !reuse.whole, "{source}");
        let cut = Cut::of(source).expect("a cut");
        let mut variants = vec![source.clone(), source.trim_end_matches('\n').to_owned()];
        variants.extend(with_inserts(source, &inserts));
        // Whole entries moved, removed and doubled.
        let (first, last) = (cut.entries[0], cut.entries[cut.entries.len() - 1]);
        let body: String = cut.entries.concat();
        let around = |body: &str| format!("{}{body}{}", cut.head, cut.tail);
        variants.push(around(&body.replacen(first, "", 1)));
        variants.push(around(&format!("{}{first}", body.replacen(first, "", 1))));
        variants.push(around(&format!("{body}{last}")));
        variants.push(around(&format!("{first}{body}")));
        for variant in &variants {
            compared += 1;
            let Some(found) = cache.follow(variant) else {
                continue;
            };
            followed += 1;
            let whole = Cut::of(variant).expect("found from the last file, so it cuts");
            assert_eq!(
                (
                    &found.rest,
                    &found.entries,
                    found.head,
                    found.tail,
                    found.indent
                ),
                (
                    &whole.rest,
                    &whole.entries,
                    whole.head,
                    whole.tail,
                    whole.indent
                ),
                "{variant}"
            );
            assert_eq!(found.known.len(), found.entries.len());
            for (entry, known) in found.entries.iter().zip(&found.known) {
                if let Some(at) = known {
                    assert_eq!(*entry, &*cache.tenants[*at].text, "{variant}");
                }
            }
        }
    }
    assert!(
        followed > 100 && followed < compared,
        "{followed} of {compared} followed"
    );
}

/// The YAML examples of docs/policy.md.
fn documented() -> Vec<String> {
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policy.md");
    let docs = fs::read_to_string(docs).expect("docs/policy.md");
    docs.split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .map(str::to_owned)
        .collect()
}

/// `source` with each of `inserts` put in at a few places: its start, its end, and lines
/// spread in between.
fn with_inserts(source: &str, inserts: &[&str]) -> Vec<String> {
    let offsets: Vec<usize> = std::iter::once(0)
        .chain(source.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let step = (offsets.len() / 12).max(1);
    let mut out = Vec::new();
    for &at in offsets.iter().step_by(step).chain(offsets.last()) {
        for insert in inserts {
            out.push(format!("{}{insert}{}", &source[..at], &source[at..]));
        }
    }
    out
}
