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
            && let Some(cut) = Cut::of(source)
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
                    self.keep(entries, &policy, cut.rest);
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
    fn keep(&mut self, entries: Vec<Entry>, policy: &Policy, rest: String) {
        let mut tenants = Vec::with_capacity(entries.len());
        let mut by_hash = Map::with_capacity_and_hasher(entries.len(), Default::default());
        for (entry, tenant) in entries.into_iter().zip(&policy.tenants) {
            let valid = entry.valid.unwrap_or_else(|| Arc::clone(tenant));
            by_hash.entry(entry.hash).or_insert(tenants.len());
            tenants.push(Kept {
                text: entry.text,
                raw: entry.raw,
                valid,
            });
        }
        self.tenants = tenants;
        self.by_hash = by_hash;
        self.rest = Some(rest);
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
        for text in &cut.entries {
            let hash = self.hasher.hash_one(*text);
            let entry = match self.find(hash, text) {
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
        let block_start = *starts.first()?;
        let entries = starts
            .iter()
            .enumerate()
            .map(|(k, &s)| &source[s..starts.get(k + 1).copied().unwrap_or(block_end)])
            .collect();
        let mut rest = String::with_capacity(source.len() - (block_end - block_start) + 1);
        rest.push_str(&source[..block_start]);
        if !rest.ends_with('\n') {
            rest.push('\n');
        }
        rest.push_str(&source[block_end..]);
        Some(Cut { rest, entries })
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
