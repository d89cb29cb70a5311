//! Which of many interface names and patterns can match a common name with a given one,
//! without comparing it with each.
//!
//! Every name a pattern matches starts with the pattern's literal prefix (its characters
//! before the first wildcard) and ends with its literal suffix (after the last wildcard);
//! a literal name is its own prefix and suffix. Two entries can therefore match a common
//! name only if the prefix of one starts the prefix of the other and the suffix of one
//! ends the suffix of the other. The index keeps the entries sorted by prefix and,
//! separately, by suffix read backwards. A query finds on each side the entries whose
//! prefix (suffix) starts (ends) the query's, and those whose prefix (suffix) the query's
//! starts (ends), in a few binary searches; walks the side with fewer of them; and tests
//! each for a real common name. In a valid policy entries of different segments are
//! disjoint, so each query meets few besides its true matches.

use std::cmp::Ordering;

use super::{glob_matches, is_wildcard, overlap_example};

/// An entry of the index or a query: a pattern (`*` and `?` are wildcards) or a literal
/// name (every character stands for itself, as a link's name does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Term<'a> {
    Pattern(&'a str),
    Literal(&'a str),
}

impl<'a> Term<'a> {
    fn text(self) -> &'a str {
        match self {
            Term::Pattern(s) | Term::Literal(s) => s,
        }
    }

    /// A pattern without wildcards is its one name.
    fn literal(self) -> Option<&'a str> {
        match self {
            Term::Literal(s) => Some(s),
            Term::Pattern(s) => (!s.contains(is_wildcard)).then_some(s),
        }
    }

    /// The bytes every matched name starts with.
    fn prefix(self) -> &'a [u8] {
        match self {
            Term::Literal(s) => s.as_bytes(),
            Term::Pattern(s) => &s.as_bytes()[..s.find(is_wildcard).unwrap_or(s.len())],
        }
    }

    /// The bytes every matched name ends with.
    fn suffix(self) -> &'a [u8] {
        match self {
            Term::Literal(s) => s.as_bytes(),
            // Both wildcards are one byte long.
            Term::Pattern(s) => &s.as_bytes()[s.rfind(is_wildcard).map_or(0, |i| i + 1)..],
        }
    }

    /// Whether some name is matched by both.
    pub(crate) fn overlaps(self, other: Term<'_>) -> bool {
        match (self.literal(), other.literal()) {
            (Some(a), Some(b)) => a == b,
            (Some(name), None) => glob_matches(other.text(), name),
            (None, Some(name)) => glob_matches(self.text(), name),
            (None, None) => overlap_example(self.text(), other.text()).is_some(),
        }
    }
}

/// Which end of the entries a [`Side`] sorts them by.
#[derive(Clone, Copy)]
enum End {
    Prefix,
    /// Read backwards: the suffixes' last bytes first.
    Suffix,
}

impl End {
    fn key(self, term: Term<'_>) -> &[u8] {
        match self {
            End::Prefix => term.prefix(),
            End::Suffix => term.suffix(),
        }
    }

    fn cmp(self, a: &[u8], b: &[u8]) -> Ordering {
        match self {
            End::Prefix => a.cmp(b),
            End::Suffix => a.iter().rev().cmp(b.iter().rev()),
        }
    }

    /// Whether `key` begins with `head`, reading from this end.
    fn begins(self, key: &[u8], head: &[u8]) -> bool {
        match self {
            End::Prefix => key.starts_with(head),
            End::Suffix => key.ends_with(head),
        }
    }
}

/// A distinct key and the entries that have it.
struct Group<'a> {
    key: &'a [u8],
    /// Range in [`Side::order`].
    start: u32,
    end: u32,
    /// The group with the longest key that begins this one's (a strict head of it), or
    /// [`NONE`].
    parent: u32,
}

const NONE: u32 = u32::MAX;

/// The entries sorted by one end.
struct Side<'a> {
    end: End,
    /// The key of each entry, by entry number.
    keys: Vec<&'a [u8]>,
    /// Entry numbers, sorted by key (then number).
    order: Vec<u32>,
    /// Distinct keys, sorted.
    groups: Vec<Group<'a>>,
}

/// The entries that may overlap a query, found on one side: ranges of [`Side::order`].
struct Found {
    ranges: Vec<(u32, u32)>,
    count: usize,
}

impl<'a> Side<'a> {
    fn new(end: End, terms: &[Term<'a>]) -> Side<'a> {
        let keys: Vec<&'a [u8]> = terms.iter().map(|&t| end.key(t)).collect();
        let mut order: Vec<u32> = (0..terms.len() as u32).collect();
        order.sort_by(|&a, &b| end.cmp(keys[a as usize], keys[b as usize]).then(a.cmp(&b)));
        let mut groups: Vec<Group<'a>> = Vec::new();
        // The chain of groups whose keys begin the current one, innermost last.
        let mut open: Vec<u32> = Vec::new();
        for (at, &entry) in order.iter().enumerate() {
            let key = keys[entry as usize];
            let at = at as u32;
            if let Some(last) = groups.last_mut()
                && last.key == key
            {
                last.end = at + 1;
                continue;
            }
            while let Some(&top) = open.last() {
                if end.begins(key, groups[top as usize].key) {
                    break;
                }
                open.pop();
            }
            let parent = open.last().copied().unwrap_or(NONE);
            open.push(groups.len() as u32);
            groups.push(Group {
                key,
                start: at,
                end: at + 1,
                parent,
            });
        }
        Side {
            end,
            keys,
            order,
            groups,
        }
    }

    /// The entries whose key begins the query's or that the query's key begins. For a
    /// `literal` query (one name) only the first kind and the equal ones: an entry whose
    /// prefix (suffix) is longer than the name cannot match it.
    fn find(&self, key: &[u8], literal: bool) -> Found {
        let end = self.end;
        let groups = &self.groups;
        let mut found = Found {
            ranges: Vec::new(),
            count: 0,
        };
        // Keys the query's begins (itself included) sort together, right where it would.
        let first = groups.partition_point(|g| end.cmp(g.key, key) == Ordering::Less);
        let last = if literal {
            first + usize::from(groups.get(first).is_some_and(|g| g.key == key))
        } else {
            first + groups[first..].partition_point(|g| end.begins(g.key, key))
        };
        if first < last {
            let range = (groups[first].start, groups[last - 1].end);
            found.count += (range.1 - range.0) as usize;
            found.ranges.push(range);
        }
        // Keys that strictly begin the query's sort before it, each one on the chain of
        // parents of the greatest key below the query's (every key between a head of the
        // query's key and the query's key begins with that head).
        let mut at = if first == 0 { NONE } else { first as u32 - 1 };
        while at != NONE && !end.begins(key, groups[at as usize].key) {
            at = groups[at as usize].parent;
        }
        while at != NONE {
            let group = &groups[at as usize];
            found.count += (group.end - group.start) as usize;
            found.ranges.push((group.start, group.end));
            at = group.parent;
        }
        found
    }
}

/// Interface names and patterns, numbered in the order given.
pub(crate) struct NameIndex<'a> {
    terms: Vec<Term<'a>>,
    prefixes: Side<'a>,
    suffixes: Side<'a>,
}

impl<'a> NameIndex<'a> {
    pub(crate) fn new(terms: Vec<Term<'a>>) -> NameIndex<'a> {
        NameIndex {
            prefixes: Side::new(End::Prefix, &terms),
            suffixes: Side::new(End::Suffix, &terms),
            terms,
        }
    }

    /// The numbers of the entries that match a common name with `query`, ascending.
    pub(crate) fn overlapping(&self, query: Term<'_>) -> Vec<usize> {
        let literal = query.literal().is_some();
        let by_prefix = self.prefixes.find(query.prefix(), literal);
        let by_suffix = self.suffixes.find(query.suffix(), literal);
        let (side, found, other) = if by_prefix.count <= by_suffix.count {
            (&self.prefixes, by_prefix, &self.suffixes)
        } else {
            (&self.suffixes, by_suffix, &self.prefixes)
        };
        let (query_key, mut out) = (other.end.key(query), Vec::new());
        let other_end = other.end;
        for (start, end) in found.ranges {
            for &entry in &side.order[start as usize..end as usize] {
                let term = self.terms[entry as usize];
                let key = other.keys[entry as usize];
                if (other_end.begins(key, query_key) || other_end.begins(query_key, key))
                    && term.overlaps(query)
                {
                    out.push(entry as usize);
                }
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRIES: &[&str] = &[
        "tap-acme-*",
        "tap-acme-web-1",
        "tap-a*",
        "*-acme",
        "veth-acme1",
        "t?p*",
        "tap",
        "ta",
        "*1",
        "x*y*z",
        "tap-acme-*",
        "vé*",
        "vétérinaire",
        "*web*",
        "a",
    ];

    const QUERIES: &[&str] = &[
        "tap-acme-*",
        "tap-acme-web-1",
        "tap",
        "t",
        "*",
        "*e",
        "x*",
        "xyz",
        "vé?",
        "*é*",
        "b*",
        "tap-acme-db?",
        "a*",
        "*a",
        "",
    ];

    /// Every query, as a pattern and as a literal name, finds exactly the entries a
    /// comparison with each one finds.
    #[test]
    fn the_index_finds_what_comparing_with_every_entry_finds() {
        for literal_entries in [false, true] {
            let term = |s| {
                if literal_entries {
                    Term::Literal(s)
                } else {
                    Term::Pattern(s)
                }
            };
            let terms: Vec<Term<'_>> = ENTRIES.iter().map(|s| term(*s)).collect();
            let index = NameIndex::new(terms.clone());
            for query in QUERIES
                .iter()
                .flat_map(|q| [Term::Pattern(q), Term::Literal(q)])
            {
                let expected: Vec<usize> = (0..terms.len())
                    .filter(|&i| terms[i].overlaps(query))
                    .collect();
                assert_eq!(
                    index.overlapping(query),
                    expected,
                    "{query:?} in entries taken literally: {literal_entries}"
                );
            }
        }
    }

    /// Every pattern of at most 3 characters over {a, b, *, ?}, as entries and as
    /// queries (patterns and literal names): the index finds exactly what comparing with
    /// each entry finds.
    #[test]
    fn the_index_is_exact_on_every_short_pattern() {
        let mut all = vec![String::new()];
        let mut layer = vec![String::new()];
        for _ in 0..3 {
            layer = layer
                .iter()
                .flat_map(|s| ["a", "b", "*", "?"].map(|c| format!("{s}{c}")))
                .collect();
            all.extend(layer.iter().cloned());
        }
        for literal_entries in [false, true] {
            let terms: Vec<Term<'_>> = all
                .iter()
                .map(|s| {
                    if literal_entries {
                        Term::Literal(s)
                    } else {
                        Term::Pattern(s)
                    }
                })
                .collect();
            let index = NameIndex::new(terms.clone());
            for query in all
                .iter()
                .flat_map(|q| [Term::Pattern(q), Term::Literal(q)])
            {
                let expected: Vec<usize> = (0..terms.len())
                    .filter(|&i| terms[i].overlaps(query))
                    .collect();
                assert_eq!(index.overlapping(query), expected, "{query:?}");
            }
        }
    }

    #[test]
    fn overlaps_agrees_with_the_example_search() {
        for a in ENTRIES.iter().chain(QUERIES) {
            for b in ENTRIES.iter().chain(QUERIES) {
                assert_eq!(
                    Term::Pattern(a).overlaps(Term::Pattern(b)),
                    overlap_example(a, b).is_some(),
                    "{a:?} {b:?}"
                );
            }
        }
        assert!(!Term::Literal("tap*").overlaps(Term::Literal("tap1")));
        assert!(Term::Pattern("tap*").overlaps(Term::Literal("tap*")));
        assert!(!Term::Pattern("tap1").overlaps(Term::Literal("tap*")));
    }
}
