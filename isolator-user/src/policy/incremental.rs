//! Reading a policy again after a change to a few of its tenants: a [`Cache`] keeps the
//! tenants of the last file it read, by their text, so that a reload parses the YAML of
//! the tenants that changed and reuses the others. The YAML parser is most of the cost of
//! a large policy (about 4 s of 100 000 segments here). It also keeps what validation
//! made of each tenant of the last valid policy, so that the tenants that changed are
//! validated against the others rather than the whole policy again
//! ([`super::validate::delta`]).
//!
//! The file is cut at its top-level `tenants:` block sequence: the text before and after
//! the block, with the `tenants:` line, is one document (the settings, management,
//! `vif_names`), and each entry of the block (a line that starts with the block's
//! indentation and `- `, up to the next such line) another. Each is parsed on its own. The
//! cut is taken only where it cannot change what the file means, and otherwise the whole
//! file is parsed as [`super::parse`] does:
//!
//! - exactly one line starts with `tenants` at the left margin, and it is `tenants:` with
//!   nothing after it but a comment; its first entry starts with `- ` on a line of its
//!   own indentation (no flow style `[...]`);
//! - no anchor or alias may be written anywhere (`&` or `*` at the start of a value): an
//!   alias in one entry to an anchor in another would not resolve on its own, and the
//!   parser's limits on what aliases expand to apply to one document;
//! - no tab starts a line, no line at the left margin starts with `%`, `---` or `...`;
//! - each entry parses as a sequence of exactly one tenant, and the rest as a policy with
//!   no tenant.
//!
//! The next file is cut from the last one kept where it can be ([`Cache::follow`]):
//! what the two have in common at the start (the text before the block, then whole kept
//! entries, each followed by the start of an entry) and at the end (the text after the
//! block, then whole kept entries, each after a line break) is taken as it was, its
//! entries known to be the kept tenants without hashing their text; only the lines
//! between are cut, and only if they are all entries of the block (an entry's start, a
//! deeper line, a blank line or a comment) without an anchor or alias. Otherwise the
//! whole file is cut. A test holds that cut to the whole file's.
//!
//! Where a cut went through something the whole file's parse would read otherwise (a
//! quoted string over several lines, say), one of the pieces does not parse and the whole
//! file is read instead. Source positions of the pieces are relative to them, so a policy
//! with any problem is read again whole, and the diagnostics are those of
//! [`super::parse`], positions included: the cut is only ever used for a valid policy,
//! which carries no positions.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::Instant;

use super::raw::{RawPolicy, RawTenant};
use super::{Diagnostics, ParseTimes, Policy, Tenant};

/// A hash map with a fast hash: its keys are the operator's own file.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A tenant of the last valid policy read through the cut: the text of its entry, its
/// structure, and what validation made of it.
struct Kept {
    /// The hash of `text` (with [`Cache::hasher`]).
    hash: u64,
    text: Arc<str>,
    raw: Arc<RawTenant>,
    valid: Arc<Tenant>,
}

/// The tenants of the last valid policy read through the cut, by the text of their
/// entry, and the text around them.
///
/// Each entry's text is hashed once per read (a policy of 100 000 segments is 54 MB of
/// them): `by_hash` finds a kept tenant by that hash, and the texts are compared where
/// the hashes are equal. Of two kept texts with one hash (about one chance in 10^9 at a
/// million tenants), the second is not found and its tenant is parsed again: slower,
/// never wrong.
#[derive(Default)]
pub struct Cache {
    tenants: Vec<Kept>,
    /// Positions in `tenants`, by the hash of their text.
    by_hash: Map<u64, usize>,
    /// The hash of the entries' texts: the same for the life of the cache.
    hasher: foldhash::fast::RandomState,
    /// The rest of that file (see [`Cut`]); `None` before the first.
    rest: Option<String>,
    /// The text of that file before and after its tenants block, and the indentation of
    /// the block's entries: what [`Cache::follow`] needs to find the kept tenants in the
    /// next file without cutting it whole.
    around: Option<(String, String, usize)>,
}

/// What the last [`Cache::parse_timed`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reuse {
    /// Tenants taken from the cache, and tenants parsed.
    pub reused: usize,
    pub parsed: usize,
    /// Whether the file was read whole (it could not be cut, or it has problems).
    pub whole: bool,
    /// Whether only the changed tenants were validated, and checked against the others
    /// (see [`super::validate::delta`]), rather than the whole policy.
    pub delta: bool,
}

/// One entry of the tenants block as [`Cache::read`] found it: its text and that text's
/// hash, its structure, and its validated form and position in the cache when the text
/// is one of the last valid policy's.
struct Entry {
    hash: u64,
    text: Arc<str>,
    raw: Arc<RawTenant>,
    valid: Option<Arc<Tenant>>,
    kept: Option<usize>,
}

impl Cache {
    /// A cache that holds nothing yet.
    pub fn new() -> Cache {
        Cache::default()
    }

    /// [`super::parse_timed`], reusing the tenants of the last file read through this
    /// cache whose text is unchanged. The result is the same as [`super::parse_timed`]'s
    /// for the same file, diagnostics included.
    pub fn parse_timed(
        &mut self,
        source: &str,
        file_name: &str,
    ) -> (Result<Policy, Diagnostics>, ParseTimes, Reuse) {
        if source.len() <= super::MAX_POLICY_BYTES
            && let Some(cut) = self.follow(source).or_else(|| Cut::of(source))
        {
            let started = Instant::now();
            if let Some((mut raw, entries, mut reuse)) = self.read(&cut) {
                let yaml = started.elapsed();
                let started = Instant::now();
                let mut policy = None;
                if self.rest.as_deref() == Some(cut.rest.as_str()) {
                    policy = self.validate_delta(&mut raw, file_name, &entries);
                    reuse.delta = policy.is_some();
                }
                let policy = match policy {
                    Some(policy) => Ok(policy),
                    None => super::validate::validate(&raw, file_name),
                };
                if let Ok(policy) = policy {
                    let times = ParseTimes {
                        yaml,
                        validate: started.elapsed(),
                    };
                    // Only this file's tenants stay.
                    self.keep(entries, &policy, cut);
                    super::free_in_background(source.len(), raw);
                    return (Ok(policy), times, reuse);
                }
            }
        }
        let (result, times) = super::parse_timed(source, file_name);
        let reuse = Reuse {
            whole: true,
            ..Reuse::default()
        };
        (result, times, reuse)
    }

    /// [`super::validate::delta::validate`] of the file's structure against the tenants
    /// kept; `None` where it does not show the policy valid, or may not be used (the same
    /// text twice).
    fn validate_delta(
        &self,
        raw: &mut RawPolicy,
        file_name: &str,
        entries: &[Entry],
    ) -> Option<Policy> {
        // Which kept tenants the file still has (equal texts find the same one), and the
        // hashes of the texts it does not: the same text twice is refused either way. Two
        // new texts with one hash are refused too (validated whole: never wrong).
        let mut still = vec![false; self.tenants.len()];
        let mut new: Map<u64, ()> = Map::default();
        for entry in entries {
            let seen = match entry.kept {
                Some(at) => std::mem::replace(&mut still[at], true),
                None => new.insert(entry.hash, ()).is_some(),
            };
            if seen {
                return None;
            }
        }
        let prior: Vec<Option<&Arc<Tenant>>> = entries.iter().map(|e| e.valid.as_ref()).collect();
        let gone = self
            .tenants
            .iter()
            .zip(&still)
            .filter(|(_, still)| !**still)
            .map(|(kept, _)| &*kept.valid);
        super::validate::delta::validate(raw, file_name, &prior, gone)
    }

    /// Keeps the tenants of a valid policy read through the cut, and the text around
    /// them, for the next read.
    fn keep(&mut self, entries: Vec<Entry>, policy: &Policy, cut: Cut<'_>) {
        let mut tenants = Vec::with_capacity(entries.len());
        let mut by_hash = Map::with_capacity_and_hasher(entries.len(), Default::default());
        for (entry, tenant) in entries.into_iter().zip(&policy.tenants) {
            let valid = entry.valid.unwrap_or_else(|| Arc::clone(tenant));
            by_hash.entry(entry.hash).or_insert(tenants.len());
            tenants.push(Kept {
                hash: entry.hash,
                text: entry.text,
                raw: entry.raw,
                valid,
            });
        }
        self.tenants = tenants;
        self.by_hash = by_hash;
        self.rest = Some(cut.rest);
        self.around = Some((cut.head.to_owned(), cut.tail.to_owned(), cut.indent));
    }

    /// The file cut as [`Cut::of`] cuts it, found from the last file kept rather than
    /// from every line: what the two files have in common at the start (the text before
    /// the block, then kept tenants' texts, each followed by the start of an entry) and
    /// at the end (the text after the block, then kept tenants' texts, each after a line
    /// break) is taken as it was, and only the lines between are cut, as [`Cut::of`]
    /// follows a block's lines. `None` where that is not the whole answer (the text
    /// around the block changed, or the lines between could end the block or make the
    /// cut unsafe): the caller cuts the whole file.
    fn follow<'a>(&self, source: &'a str) -> Option<Cut<'a>> {
        let (head, tail, indent) = self.around.as_ref()?;
        let indent = *indent;
        let body_end = source.len().checked_sub(tail.len())?;
        if body_end < head.len()
            || !source.starts_with(head.as_str())
            || !source.ends_with(tail.as_str())
        {
            return None;
        }
        // Whether an entry of the block starts at `at` (or the block ends there).
        let entry_at = |at: usize| {
            at == body_end || {
                let line = &source[at..body_end];
                let line = &line[..line.find('\n').map_or(line.len(), |n| n + 1)];
                indentation(line) == indent && entry_indent(&line[indent..]) == Some(0)
            }
        };
        let n = self.tenants.len();
        let (mut from, mut front) = (head.len(), 0);
        while front < n {
            let text = &*self.tenants[front].text;
            if !source[from..body_end].starts_with(text) || !entry_at(from + text.len()) {
                break;
            }
            from += text.len();
            front += 1;
        }
        let (mut to, mut back) = (body_end, 0);
        while front + back < n {
            let text = &*self.tenants[n - 1 - back].text;
            if !source[from..to].ends_with(text) {
                break;
            }
            let start = to - text.len();
            if start > from && source.as_bytes()[start - 1] != b'\n' {
                break;
            }
            to = start;
            back += 1;
        }
        // The lines between: entries of the block only, nothing that could end it or make
        // the cut unsafe.
        let between = &source[from..to];
        if may_alias(between) {
            return None;
        }
        let mut starts: Vec<usize> = Vec::new();
        let mut offset = from;
        for l in between.split_inclusive('\n') {
            let at = offset;
            offset += l.len();
            let n = indentation(l);
            if l.starts_with('\t') {
                return None;
            }
            if n == indent && entry_indent(&l[n..]) == Some(0) {
                starts.push(at);
            } else if n <= indent && !blank_or_comment(&l[n..]) {
                return None;
            }
        }
        if from < to && starts.first() != Some(&from) {
            return None;
        }
        let mut entries = Vec::with_capacity(n + starts.len());
        let mut known = Vec::with_capacity(n + starts.len());
        let mut at = head.len();
        for (k, kept) in self.tenants[..front].iter().enumerate() {
            entries.push(&source[at..at + kept.text.len()]);
            known.push(Some(k));
            at += kept.text.len();
        }
        for (k, &s) in starts.iter().enumerate() {
            entries.push(&source[s..starts.get(k + 1).copied().unwrap_or(to)]);
            known.push(None);
        }
        let mut at = to;
        for k in n - back..n {
            let len = self.tenants[k].text.len();
            entries.push(&source[at..at + len]);
            known.push(Some(k));
            at += len;
        }
        Some(Cut {
            rest: self.rest.clone()?,
            entries,
            head: &source[..head.len()],
            tail: &source[body_end..],
            indent,
            known,
        })
    }

    /// The kept tenant whose text is `text` (of hash `hash`), by its position.
    fn find(&self, hash: u64, text: &str) -> Option<usize> {
        self.by_hash
            .get(&hash)
            .copied()
            .filter(|&at| *self.tenants[at].text == *text)
    }

    /// The file's structure from its pieces, the cached tenants used where their text
    /// is unchanged; with each entry of the tenants block and what was reused. `None`: a
    /// piece does not parse on its own as it should.
    fn read(&self, cut: &Cut<'_>) -> Option<(RawPolicy, Vec<Entry>, Reuse)> {
        let mut rest: RawPolicy =
            serde_saphyr::from_str_with_options(&cut.rest, super::yaml_options()).ok()?;
        if !rest.tenants.is_empty() {
            return None;
        }
        let mut reuse = Reuse::default();
        let mut entries = Vec::with_capacity(cut.entries.len());
        let mut list = Vec::with_capacity(cut.entries.len());
        for (i, text) in cut.entries.iter().enumerate() {
            // Where the cut found it among the kept tenants, it is theirs: no hash.
            let (hash, at) = match cut.known.get(i).copied().flatten() {
                Some(at) => (self.tenants[at].hash, Some(at)),
                None => {
                    let hash = self.hasher.hash_one(*text);
                    (hash, self.find(hash, text))
                }
            };
            let entry = match at {
                Some(at) => {
                    reuse.reused += 1;
                    let kept = &self.tenants[at];
                    Entry {
                        hash,
                        text: kept.text.clone(),
                        raw: kept.raw.clone(),
                        valid: Some(kept.valid.clone()),
                        kept: Some(at),
                    }
                }
                None => {
                    reuse.parsed += 1;
                    let mut one: Vec<RawTenant> =
                        serde_saphyr::from_str_with_options(text, super::yaml_options()).ok()?;
                    if one.len() != 1 {
                        return None;
                    }
                    Entry {
                        hash,
                        text: Arc::from(*text),
                        raw: Arc::new(one.pop()?),
                        valid: None,
                        kept: None,
                    }
                }
            };
            list.push(entry.raw.clone());
            entries.push(entry);
        }
        rest.tenants = list;
        Some((rest, entries, reuse))
    }
}

/// A file cut at its `tenants:` block: the rest (everything else, the `tenants:` line
/// included) and each entry's text.
#[derive(Debug, PartialEq, Eq)]
struct Cut<'a> {
    rest: String,
    entries: Vec<&'a str>,
    /// The text before the block's first entry, and after its end.
    head: &'a str,
    tail: &'a str,
    /// The indentation of the block's entries.
    indent: usize,
    /// For each entry, the kept tenant whose text it is, where [`Cache::follow`] found it
    /// so; empty from [`Cut::of`].
    known: Vec<Option<usize>>,
}

impl<'a> Cut<'a> {
    /// `None` where the file cannot be cut safely (see the module documentation).
    ///
    /// One pass over the lines (a large policy has millions), keeping only the offsets of
    /// the block's entries: every line is checked for what makes the cut unsafe, and the
    /// lines after the `tenants:` key are followed through the block.
    fn of(source: &'a str) -> Option<Cut<'a>> {
        if may_alias(source) {
            return None;
        }
        /// Where the lines after the `tenants:` key stand.
        enum Block {
            /// No `tenants:` key yet.
            Before,
            /// After the key, before the first line that is not blank or a comment.
            Key,
            /// In the block, whose entries are indented by this much.
            In(usize),
            /// After the block; the offset of its end.
            After(usize),
        }
        let mut block = Block::Before;
        let mut starts: Vec<usize> = Vec::new();
        let mut offset = 0;
        for l in source.split_inclusive('\n') {
            let at = offset;
            offset += l.len();
            // Most lines start with a space: only the others can be unsafe or the key.
            if matches!(
                l.as_bytes().first(),
                Some(b'\t' | b'%' | b'-' | b'.' | b't' | b'"' | b'\'')
            ) {
                if l.starts_with('\t')
                    || l.starts_with('%')
                    || l.starts_with("---")
                    || l.starts_with("...")
                {
                    return None;
                }
                if l.starts_with("tenants")
                    || l.starts_with("\"tenants")
                    || l.starts_with("'tenants")
                {
                    if !matches!(block, Block::Before) || !is_tenants_key(l) {
                        return None;
                    }
                    block = Block::Key;
                    continue;
                }
            }
            match block {
                Block::Before | Block::After(_) => {}
                Block::Key => {
                    if !blank_or_comment(l) {
                        let indent = entry_indent(l)?;
                        starts.push(at);
                        block = Block::In(indent);
                    }
                }
                Block::In(indent) => {
                    // As `entry_indent(l) == Some(indent)`, then `!blank_or_comment(l)
                    // && indentation(l) <= indent`, with the indentation counted once.
                    let n = indentation(l);
                    if n == indent && entry_indent(&l[n..]) == Some(0) {
                        starts.push(at);
                    } else if n <= indent && !blank_or_comment(&l[n..]) {
                        block = Block::After(at);
                    }
                }
            }
        }
        let block_end = match block {
            Block::Before | Block::Key => return None,
            Block::In(_) => source.len(),
            Block::After(end) => end,
        };
        let indent = indentation(&source[*starts.first()?..]);
        let block_start = *starts.first()?;
        let entries = starts
            .iter()
            .enumerate()
            .map(|(k, &s)| &source[s..starts.get(k + 1).copied().unwrap_or(block_end)])
            .collect();
        Some(Cut::new(source, block_start, block_end, entries, indent))
    }

    /// The cut of `source` whose block (of entries `entries`, indented by `indent`) runs
    /// from `block_start` to `block_end`.
    fn new(
        source: &'a str,
        block_start: usize,
        block_end: usize,
        entries: Vec<&'a str>,
        indent: usize,
    ) -> Cut<'a> {
        let mut rest = String::with_capacity(source.len() - (block_end - block_start) + 1);
        rest.push_str(&source[..block_start]);
        if !rest.ends_with('\n') {
            rest.push('\n');
        }
        rest.push_str(&source[block_end..]);
        Cut {
            rest,
            entries,
            head: &source[..block_start],
            tail: &source[block_end..],
            indent,
            known: Vec::new(),
        }
    }
}

/// `tenants:` alone on its line but for a comment.
fn is_tenants_key(line: &str) -> bool {
    let Some(after) = line.strip_prefix("tenants:") else {
        return false;
    };
    let after = after.trim_end_matches(['\n', '\r']);
    let after = after.trim_start_matches(' ');
    after.is_empty() || after.starts_with('#')
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn blank_or_comment(line: &str) -> bool {
    let t = line.trim_start_matches(' ').trim_end_matches(['\n', '\r']);
    t.is_empty() || t.starts_with('#')
}

/// The indentation of a line that starts a block sequence entry (`- ` or a lone `-`).
fn entry_indent(line: &str) -> Option<usize> {
    let n = indentation(line);
    let after = line[n..].strip_prefix('-')?;
    match after.bytes().next() {
        None | Some(b' ' | b'\n' | b'\r') => Some(n),
        _ => None,
    }
}

/// Whether an anchor or alias may be written: `&` or `*` where a value can start (the
/// start of a line's text, or after a space, `[`, `{` or `,`). Also true for such
/// characters inside quoted strings: a false alarm reads the file whole.
fn may_alias(source: &str) -> bool {
    let bytes = source.as_bytes();
    memchr::memchr2_iter(b'&', b'*', bytes)
        .any(|i| i == 0 || matches!(bytes[i - 1], b' ' | b'\n' | b'[' | b'{' | b',' | b'\t'))
}

#[cfg(test)]
mod delta_tests;
#[cfg(test)]
mod tests;
