//! Interface name patterns: an exact Linux interface name, or a glob using
//! `*` (any run of characters, possibly empty) and `?` (exactly one character).
//!
//! Matching works on Unicode scalar values (`char`s); the length limit is in bytes,
//! as the kernel counts it.

pub(crate) mod index;

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

/// Longest Linux interface name in bytes (`IFNAMSIZ - 1`).
pub const IFNAME_MAX_BYTES: usize = 15;

/// Filler character used in example names where both patterns accept any character.
const FILLER: char = 'x';

/// A validated interface entry of a segment: an exact name or a glob pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfacePattern(String);

/// Why a string is not a valid interface name or pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// What is wrong, quoting the offending value.
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PatternError {}

fn is_wildcard(c: char) -> bool {
    c == '*' || c == '?'
}

impl InterfacePattern {
    /// Validates `s` as an interface name or pattern.
    ///
    /// # Errors
    ///
    /// If `s` breaks a Linux interface name rule or the pattern rules (see
    /// `docs/policy.md`).
    pub fn new(s: &str) -> Result<Self, PatternError> {
        check(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The entry as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `true` if the entry contains a wildcard (`*` or `?`), `false` for an exact name.
    pub fn is_glob(&self) -> bool {
        self.0.contains(is_wildcard)
    }

    /// Whether the interface named `ifname` is matched by this entry. Every character of
    /// `ifname` is taken literally.
    pub fn matches(&self, ifname: &str) -> bool {
        glob_matches(&self.0, ifname)
    }

    /// Whether some interface name is matched by both entries.
    pub fn overlaps(&self, other: &InterfacePattern) -> bool {
        self.overlap_example(other).is_some()
    }

    /// Whether every name `other` matches, this entry matches too. Sound (never `true`
    /// when some name of `other` escapes), and exact for the patterns a policy uses: a
    /// `*` of this entry absorbs any run of `other`'s characters and wildcards, a `?` one
    /// character or `?` of it, a literal only the same literal.
    pub fn covers(&self, other: &InterfacePattern) -> bool {
        let (a, b): (Vec<char>, Vec<char>) = (other.0.chars().collect(), self.0.chars().collect());
        // reach[i][j]: a[..i] is absorbed by b[..j].
        let mut reach = vec![vec![false; b.len() + 1]; a.len() + 1];
        reach[0][0] = true;
        for i in 0..=a.len() {
            for j in 0..=b.len() {
                if !reach[i][j] || j == b.len() {
                    continue;
                }
                match b[j] {
                    '*' => {
                        reach[i][j + 1] = true;
                        if i < a.len() {
                            reach[i + 1][j] = true;
                        }
                    }
                    '?' if i < a.len() && a[i] != '*' => reach[i + 1][j + 1] = true,
                    c if i < a.len() && a[i] == c && !is_wildcard(c) => {
                        reach[i + 1][j + 1] = true;
                    }
                    _ => {}
                }
            }
        }
        reach[a.len()][b.len()]
    }

    /// A shortest name matched by both entries, or `None` if they are disjoint.
    pub fn overlap_example(&self, other: &InterfacePattern) -> Option<String> {
        overlap_example(&self.0, &other.0)
    }
}

impl fmt::Display for InterfacePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for InterfacePattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for InterfacePattern {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn error(message: String, help: impl Into<String>) -> PatternError {
    PatternError {
        message,
        help: Some(help.into()),
    }
}

/// The kernel's `dev_valid_name()` rules plus the pattern language rules.
fn check(s: &str) -> Result<(), PatternError> {
    if s.is_empty() {
        return Err(error(
            "interface name is empty".to_owned(),
            "write an interface name such as \"veth-acme1\" or a pattern such as \"tap-acme-*\"",
        ));
    }
    if s.len() > IFNAME_MAX_BYTES {
        return Err(error(
            format!(
                "interface {s:?} is {} bytes long; Linux interface names have at most {IFNAME_MAX_BYTES} bytes",
                s.len()
            ),
            "shorten the name or pattern",
        ));
    }
    if s == "." || s == ".." {
        return Err(error(
            format!("interface {s:?} is not a valid Linux interface name"),
            "write an interface name such as \"veth-acme1\" or a pattern such as \"tap-acme-*\"",
        ));
    }

    let mut forbidden: Vec<String> = Vec::new();
    for c in s.chars() {
        let what = match c {
            '/' => "'/'".to_owned(),
            ':' => "':'".to_owned(),
            c if c.is_whitespace() => "whitespace".to_owned(),
            _ => continue,
        };
        if !forbidden.contains(&what) {
            forbidden.push(what);
        }
    }
    if !forbidden.is_empty() {
        return Err(error(
            format!(
                "interface {s:?} contains {}, which Linux does not allow in interface names",
                join_and(&forbidden)
            ),
            "Linux interface names cannot contain '/', ':' or whitespace",
        ));
    }

    let mut unsupported: Vec<String> = Vec::new();
    for c in s.chars() {
        if matches!(c, '[' | ']' | '{' | '}') && !unsupported.contains(&format!("'{c}'")) {
            unsupported.push(format!("'{c}'"));
        }
    }
    if !unsupported.is_empty() {
        return Err(error(
            format!(
                "interface pattern {s:?} uses {}, but only the wildcards '*' and '?' are supported",
                join_and(&unsupported)
            ),
            "use '*' for any run of characters and '?' for exactly one character, \
             or list the names as separate entries",
        ));
    }

    if s.chars().all(is_wildcard) {
        let message = if s.chars().all(|c| c == '*') {
            format!(
                "interface pattern {s:?} would match every interface of the host, including the uplink"
            )
        } else {
            format!(
                "interface pattern {s:?} has no literal characters: it would match every \
                 interface of the host whose name is long enough, including the uplink"
            )
        };
        return Err(error(
            message,
            "start the pattern with a prefix that only the VM interfaces of this segment have, \
             e.g. \"tap-acme-web-*\"",
        ));
    }
    Ok(())
}

fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Whether `pattern` (any string; `*` and `?` are wildcards) matches the literal `name`.
pub(super) fn glob_matches(pattern: &str, name: &str) -> bool {
    if pattern.is_ascii() && name.is_ascii() {
        // One byte is one character: no need to decode (nor to allocate).
        return glob_match(pattern.as_bytes(), name.as_bytes(), b'*', b'?');
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    glob_match(&p, &s, '*', '?')
}

/// Classic wildcard matching with single-star backtracking; `s` is literal. `star_` and
/// `one` are `*` and `?` as characters or bytes.
fn glob_match<T: Copy + PartialEq>(p: &[T], s: &[T], star_: T, one: T) -> bool {
    let (mut pi, mut si) = (0, 0);
    // Position after the most recent '*' in `p`, and the position in `s` it is tried at.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == star_ {
            star = Some((pi + 1, si));
            pi += 1;
        } else if pi < p.len() && (p[pi] == one || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if let Some((after_star, tried)) = star {
            // Let the last '*' absorb one more character and retry.
            pi = after_star;
            si = tried + 1;
            star = Some((after_star, tried + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == star_)
}

/// Searches the product automaton of two patterns for a string both accept.
///
/// State `(i, j)` = positions in `a` and `b`. Epsilon moves: `a[i] == '*'` -> `(i+1, j)`,
/// `b[j] == '*'` -> `(i, j+1)`. Character moves consume one character in both: a `*`
/// stays, `?` or a literal advances; two literals must be equal. Accepting state is
/// `(len a, len b)`. A 0-1 BFS (epsilon moves cost 0, character moves 1) with parent
/// links yields a shortest common string.
pub(super) fn overlap_example(a: &str, b: &str) -> Option<String> {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let states = (a.len() + 1) * width;
    let index = |i: usize, j: usize| i * width + j;

    let mut dist = vec![usize::MAX; states];
    // Parent state and the character consumed on the way (None for epsilon moves).
    let mut parent: Vec<Option<(usize, Option<char>)>> = vec![None; states];
    let mut queue = VecDeque::new();
    dist[0] = 0;
    queue.push_back((0usize, 0usize));

    let goal = index(a.len(), b.len());
    while let Some((i, j)) = queue.pop_front() {
        let here = index(i, j);
        if here == goal {
            break;
        }
        let d = dist[here];
        let mut relax = |ni: usize, nj: usize, c: Option<char>, queue: &mut VecDeque<_>| {
            let cost = usize::from(c.is_some());
            let next = index(ni, nj);
            if d + cost < dist[next] {
                dist[next] = d + cost;
                parent[next] = Some((here, c));
                if cost == 0 {
                    queue.push_front((ni, nj));
                } else {
                    queue.push_back((ni, nj));
                }
            }
        };
        if i < a.len() && a[i] == '*' {
            relax(i + 1, j, None, &mut queue);
        }
        if j < b.len() && b[j] == '*' {
            relax(i, j + 1, None, &mut queue);
        }
        if i < a.len() && j < b.len() {
            let (ca, cb) = (a[i], b[j]);
            if ca == '*' && cb == '*' {
                continue; // would stay in (i, j)
            }
            let c = match (is_wildcard(ca), is_wildcard(cb)) {
                (true, true) => Some(FILLER),
                (true, false) => Some(cb),
                (false, true) => Some(ca),
                (false, false) => (ca == cb).then_some(ca),
            };
            if let Some(c) = c {
                let ni = if ca == '*' { i } else { i + 1 };
                let nj = if cb == '*' { j } else { j + 1 };
                relax(ni, nj, Some(c), &mut queue);
            }
        }
    }

    if dist[goal] == usize::MAX {
        return None;
    }
    let mut example = Vec::new();
    let mut at = goal;
    while let Some((from, c)) = parent[at] {
        example.extend(c);
        at = from;
    }
    example.reverse();
    Some(example.into_iter().collect())
}
