//! Validating a policy again after a change to a few of its tenants, without checking the
//! whole file: the tenants that changed are validated as a file of their own (with the
//! same settings, management prefixes and `vif_names`), then checked against the
//! unchanged ones, whose validated form is known from the last valid policy.
//!
//! Why that is enough. A tenant's validated form, and every check that looks at one
//! tenant alone, depend only on the tenant's own text and the settings around the
//! tenants; a check between entries of the file is about a pair of entries (two
//! interface entries, two prefixes, two MACs, two declared addresses, a gateway and a
//! declared address, an uplink and an interface entry, two tenant names) or about a flow
//! and the segment it names. The last valid policy had the same settings and the same
//! unchanged tenants, so every pair of unchanged entries passed then and passes now. What
//! is left:
//!
//! - pairs of changed entries, and changed entries against the settings: the changed
//!   tenants' own validation;
//! - a changed entry against an unchanged one: [`validate`] walks the unchanged tenants
//!   once, looking each entry up in small indexes of the changed ones, with the same
//!   conflict rules as the whole file's checks (entries of two tenants are never of one
//!   segment, so every overlap between them is a conflict);
//! - a flow of a changed tenant to an unchanged tenant's segment: resolved among the
//!   unchanged tenants ([`super::flows::Beside`]);
//! - a flow of an unchanged tenant to a segment that no longer exists (its tenant was
//!   changed or removed): checked against the segments that went.
//!
//! Anything else falls back to the whole file's validation: a change with a problem (its
//! diagnostics then are those of [`super::validate`]), the same tenant text twice, or
//! other settings.

use std::collections::HashSet;
use std::sync::Arc;

use ipnet::IpNet;

use super::flows::Beside;
use crate::policy::raw::RawPolicy;
use crate::policy::{
    InterfacePattern, MacAddr, NameIndex, NetIndex, Policy, SegmentId, Tenant, Term,
};

/// The policy `raw` is, if it is valid and that is shown by checking its changed tenants
/// against the unchanged ones; `None` when that does not show it (the caller validates
/// the whole file).
///
/// `prior[t]` is the validated form of `raw.tenants[t]` when that tenant's text is one of
/// the last valid policy, which had the same settings (everything but the tenants);
/// `None` for the tenants that are new or changed. `gone` are the validated tenants of
/// that policy whose text is no longer in the file. No text may be in the file twice.
/// `raw.tenants` is left as it was.
pub(in crate::policy) fn validate<'p>(
    raw: &mut RawPolicy,
    file: &str,
    prior: &[Option<&'p Arc<Tenant>>],
    gone: impl Iterator<Item = &'p Tenant>,
) -> Option<Policy> {
    debug_assert_eq!(prior.len(), raw.tenants.len());
    let changed: Vec<usize> = (0..prior.len()).filter(|&t| prior[t].is_none()).collect();
    let known: Vec<Option<&Tenant>> = prior.iter().map(|t| t.map(|t| &**t)).collect();
    let beside = beside(raw, &changed, &known);

    // The changed tenants as a file of their own.
    let all = std::mem::take(&mut raw.tenants);
    raw.tenants = changed.iter().map(|&t| all[t].clone()).collect();
    let checked = super::validate_beside(raw, file, Some(&beside));
    raw.tenants = all;
    let mut checked = checked.ok()?;

    let new = Changed::of(&checked.tenants);
    if !new.meets_none(known.iter().flatten().copied()) {
        return None;
    }
    if !new.keeps_every_flow(gone, known.iter().flatten().copied()) {
        return None;
    }

    let mut fresh = std::mem::take(&mut checked.tenants).into_iter();
    let mut tenants = Vec::with_capacity(prior.len());
    for known in prior {
        tenants.push(match known {
            Some(tenant) => Arc::clone(tenant),
            None => fresh.next()?,
        });
    }
    checked.tenants = tenants;
    Some(checked)
}

/// The unchanged tenants that flows of the changed tenants name (`tenant/segment`), by
/// name. A name given to two tenants is a problem the checks find.
fn beside<'p>(raw: &RawPolicy, changed: &[usize], prior: &[Option<&'p Tenant>]) -> Beside<'p> {
    let named: HashSet<&str> = changed
        .iter()
        .flat_map(|&t| &raw.tenants[t].flows)
        .filter_map(|flow| flow.to.value.split_once('/').map(|(tenant, _)| tenant))
        .collect();
    let mut beside = Beside::new();
    if named.is_empty() {
        return beside;
    }
    for tenant in prior.iter().flatten() {
        if named.contains(tenant.name.as_str()) {
            beside.entry(tenant.name.as_str()).or_insert(tenant);
        }
    }
    beside
}

/// Interface names and patterns of the changed tenants, to look entries up in: while
/// there are few, a scan that first compares the literal ends every matched name has
/// (see [`NameIndex`]); an index beyond.
struct Names<'c> {
    patterns: Vec<&'c InterfacePattern>,
    /// Each pattern's literal prefix and suffix, for the scan.
    ends: Vec<(&'c [u8], &'c [u8])>,
    index: Option<NameIndex<'c>>,
}

/// Most entries scanned rather than indexed.
const SCAN: usize = 32;

#[cfg(test)]
thread_local! {
    /// The tests' choice of [`SCAN`], to cover both ways of looking entries up.
    pub(in crate::policy) static SCAN_IN_TESTS: std::cell::Cell<Option<usize>> =
        const { std::cell::Cell::new(None) };
}

/// [`SCAN`], or the tests' choice.
fn scan() -> usize {
    #[cfg(test)]
    if let Some(scan) = SCAN_IN_TESTS.with(std::cell::Cell::get) {
        return scan;
    }
    SCAN
}

/// The bytes every name `pattern` matches starts with, and ends with.
fn literal_ends(pattern: &str) -> (&[u8], &[u8]) {
    let wildcard = |c: char| c == '*' || c == '?';
    let bytes = pattern.as_bytes();
    let first = pattern.find(wildcard).unwrap_or(bytes.len());
    // Both wildcards are one byte long.
    let last = pattern.rfind(wildcard).map_or(0, |i| i + 1);
    (&bytes[..first], &bytes[last..])
}

impl<'c> Names<'c> {
    fn new(patterns: Vec<&'c InterfacePattern>) -> Names<'c> {
        let index = (patterns.len() > scan())
            .then(|| NameIndex::new(patterns.iter().map(|p| Term::Pattern(p.as_str())).collect()));
        Names {
            ends: patterns.iter().map(|p| literal_ends(p.as_str())).collect(),
            patterns,
            index,
        }
    }

    /// Whether one of the entries can match a name that `pattern` matches.
    fn meet(&self, pattern: &InterfacePattern) -> bool {
        let term = Term::Pattern(pattern.as_str());
        if let Some(index) = &self.index {
            return !index.overlapping(term).is_empty();
        }
        if self.patterns.is_empty() {
            return false;
        }
        let (prefix, suffix) = literal_ends(pattern.as_str());
        self.patterns.iter().zip(&self.ends).any(|(other, (p, s))| {
            (p.starts_with(prefix) || prefix.starts_with(p))
                && (s.ends_with(suffix) || suffix.ends_with(s))
                && Term::Pattern(other.as_str()).overlaps(term)
        })
    }
}

/// Prefixes of the changed tenants, to look prefixes up in: a scan while there are
/// few, an index beyond.
struct Nets {
    nets: Vec<IpNet>,
    index: Option<NetIndex>,
}

impl Nets {
    fn new(nets: Vec<IpNet>) -> Nets {
        Nets {
            index: (nets.len() > scan()).then(|| NetIndex::new(&nets)),
            nets,
        }
    }

    /// Whether one of the prefixes is `net`, contains it or lies within it.
    fn overlap(&self, net: &IpNet) -> bool {
        match &self.index {
            Some(index) => !index.overlapping(net).is_empty(),
            None => self.nets.iter().any(|n| n.contains(net) || net.contains(n)),
        }
    }

    /// Whether one of the prefixes contains `net` (or is it).
    fn hold(&self, net: &IpNet) -> bool {
        match &self.index {
            Some(index) => !index.containing(net).is_empty(),
            None => self.nets.iter().any(|n| n.contains(net)),
        }
    }

    /// Whether one of the prefixes lies within `net` (or is it).
    fn within(&self, net: &IpNet) -> bool {
        match &self.index {
            Some(index) => index
                .overlapping(net)
                .into_iter()
                .any(|i| net.contains(&self.nets[i])),
            None => self.nets.iter().any(|n| net.contains(n)),
        }
    }
}

/// What the changed tenants hold that an unchanged tenant's entries may conflict with.
struct Changed<'c> {
    names: HashSet<&'c str>,
    interfaces: Names<'c>,
    uplinks: Names<'c>,
    prefixes: Nets,
    macs: HashSet<MacAddr>,
    /// Declared addresses of interfaces.
    addresses: Nets,
    /// Gateways, as /32 or /128 prefixes.
    gateways: Nets,
    /// The segments of the changed tenants.
    segments: HashSet<(&'c str, &'c str)>,
}

impl<'c> Changed<'c> {
    fn of(tenants: &'c [Arc<Tenant>]) -> Changed<'c> {
        let segments = || tenants.iter().flat_map(|t| &t.segments);
        Changed {
            names: tenants.iter().map(|t| t.name.as_str()).collect(),
            interfaces: Names::new(
                segments()
                    .flat_map(|s| &s.interfaces)
                    .map(|i| &i.pattern)
                    .collect(),
            ),
            uplinks: Names::new(segments().flat_map(|s| &s.uplinks).collect()),
            prefixes: Nets::new(
                segments()
                    .flat_map(|s| s.prefixes.iter().copied())
                    .collect(),
            ),
            macs: segments()
                .flat_map(|s| &s.interfaces)
                .filter_map(|i| i.mac)
                .collect(),
            addresses: Nets::new(
                segments()
                    .flat_map(|s| &s.interfaces)
                    .flat_map(|i| i.addresses.iter().copied())
                    .collect(),
            ),
            gateways: Nets::new(
                segments()
                    .flat_map(|s| &s.gateways)
                    .map(|g| IpNet::from(g.address))
                    .collect(),
            ),
            segments: tenants
                .iter()
                .flat_map(|t| {
                    t.segments
                        .iter()
                        .map(|s| (t.name.as_str(), s.name.as_str()))
                })
                .collect(),
        }
    }

    /// Whether no entry of the `unchanged` tenants conflicts with a changed one, by the
    /// rules of the whole file's checks between entries.
    fn meets_none<'u>(&self, unchanged: impl Iterator<Item = &'u Tenant>) -> bool {
        for tenant in unchanged {
            if self.names.contains(tenant.name.as_str()) {
                return false;
            }
            for segment in &tenant.segments {
                for interface in &segment.interfaces {
                    // An interface entry that a changed interface entry (the same, or one
                    // that can match a common name) or a changed uplink can match a name
                    // it matches; a MAC of a changed interface; a declared address that
                    // is, contains or lies within a changed one, or holds a changed
                    // gateway.
                    if self.interfaces.meet(&interface.pattern)
                        || self.uplinks.meet(&interface.pattern)
                        || interface.mac.is_some_and(|mac| self.macs.contains(&mac))
                        || interface
                            .addresses
                            .iter()
                            .any(|a| self.addresses.overlap(a) || self.gateways.within(a))
                    {
                        return false;
                    }
                }
                if segment.prefixes.iter().any(|p| self.prefixes.overlap(p)) {
                    return false;
                }
                // A gateway that a changed interface declares, or lies within.
                if segment
                    .gateways
                    .iter()
                    .any(|g| self.addresses.hold(&IpNet::from(g.address)))
                {
                    return false;
                }
                // An uplink that can match a name a changed interface entry matches.
                if segment.uplinks.iter().any(|u| self.interfaces.meet(u)) {
                    return false;
                }
            }
        }
        true
    }

    /// Whether every flow of the `unchanged` tenants still names a segment: none names
    /// a segment of the `gone` tenants that the changed tenants do not have.
    fn keeps_every_flow<'u>(
        &self,
        gone: impl Iterator<Item = &'u Tenant>,
        unchanged: impl Iterator<Item = &'u Tenant>,
    ) -> bool {
        let went: HashSet<SegmentId> = gone
            .flat_map(|t| {
                t.segments.iter().map(|s| SegmentId {
                    tenant: t.name.clone(),
                    segment: s.name.clone(),
                })
            })
            .filter(|id| {
                !self
                    .segments
                    .contains(&(id.tenant.as_str(), id.segment.as_str()))
            })
            .collect();
        went.is_empty()
            || unchanged
                .flat_map(|t| &t.flows)
                .all(|flow| !went.contains(&flow.to))
    }
}
