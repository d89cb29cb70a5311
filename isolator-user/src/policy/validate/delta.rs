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
    prior: &[Option<&'p Tenant>],
    gone: impl Iterator<Item = &'p Tenant>,
) -> Option<Policy> {
    debug_assert_eq!(prior.len(), raw.tenants.len());
    let changed: Vec<usize> = (0..prior.len()).filter(|&t| prior[t].is_none()).collect();
    let beside = beside(raw, &changed, prior);

    // The changed tenants as a file of their own.
    let all = std::mem::take(&mut raw.tenants);
    raw.tenants = changed.iter().map(|&t| all[t].clone()).collect();
    let checked = super::validate_beside(raw, file, Some(&beside));
    raw.tenants = all;
    let mut checked = checked.ok()?;

    let new = Changed::of(&checked.tenants);
    if !new.meets_none(prior.iter().flatten().copied()) {
        return None;
    }
    if !new.keeps_every_flow(gone, prior.iter().flatten().copied()) {
        return None;
    }

    let mut fresh = std::mem::take(&mut checked.tenants).into_iter();
    let mut tenants = Vec::with_capacity(prior.len());
    for known in prior {
        tenants.push(match known {
            Some(tenant) => (*tenant).clone(),
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

/// What the changed tenants hold that an unchanged tenant's entries may conflict with.
struct Changed<'c> {
    names: HashSet<&'c str>,
    interfaces: Vec<&'c InterfacePattern>,
    interface_index: NameIndex<'c>,
    uplinks: Vec<&'c InterfacePattern>,
    uplink_index: NameIndex<'c>,
    prefixes: NetIndex,
    macs: HashSet<MacAddr>,
    /// Declared addresses of interfaces.
    addresses: NetIndex,
    /// Gateways, as /32 or /128 prefixes.
    gateways: Vec<IpNet>,
    gateway_index: NetIndex,
    /// The segments of the changed tenants.
    segments: HashSet<(&'c str, &'c str)>,
}

impl<'c> Changed<'c> {
    fn of(tenants: &'c [Tenant]) -> Changed<'c> {
        let segments = || tenants.iter().flat_map(|t| &t.segments);
        let interfaces: Vec<&InterfacePattern> = segments()
            .flat_map(|s| &s.interfaces)
            .map(|i| &i.pattern)
            .collect();
        let uplinks: Vec<&InterfacePattern> = segments().flat_map(|s| &s.uplinks).collect();
        let addresses: Vec<IpNet> = segments()
            .flat_map(|s| &s.interfaces)
            .flat_map(|i| i.addresses.iter().copied())
            .collect();
        let gateways: Vec<IpNet> = segments()
            .flat_map(|s| &s.gateways)
            .map(|g| IpNet::from(g.address))
            .collect();
        let terms = |patterns: &[&'c InterfacePattern]| {
            patterns.iter().map(|p| Term::Pattern(p.as_str())).collect()
        };
        Changed {
            names: tenants.iter().map(|t| t.name.as_str()).collect(),
            interface_index: NameIndex::new(terms(&interfaces)),
            interfaces,
            uplink_index: NameIndex::new(terms(&uplinks)),
            uplinks,
            prefixes: NetIndex::new(segments().flat_map(|s| &s.prefixes)),
            macs: segments()
                .flat_map(|s| &s.interfaces)
                .filter_map(|i| i.mac)
                .collect(),
            addresses: NetIndex::new(&addresses),
            gateway_index: NetIndex::new(&gateways),
            gateways,
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
                    if self.meets_interface(&interface.pattern)
                        || interface.mac.is_some_and(|mac| self.macs.contains(&mac))
                        || interface
                            .addresses
                            .iter()
                            .any(|address| self.meets_address(address))
                    {
                        return false;
                    }
                }
                if segment
                    .prefixes
                    .iter()
                    .any(|prefix| !self.prefixes.overlapping(prefix).is_empty())
                {
                    return false;
                }
                // A gateway that a changed interface declares, or lies within.
                if segment.gateways.iter().any(|g| {
                    !self
                        .addresses
                        .containing(&IpNet::from(g.address))
                        .is_empty()
                }) {
                    return false;
                }
                if segment
                    .uplinks
                    .iter()
                    .any(|uplink| self.meets_uplink(uplink))
                {
                    return false;
                }
            }
        }
        true
    }

    /// An interface entry that a changed interface entry (the same, or one that can
    /// match a common name) or a changed uplink can match a name it matches.
    fn meets_interface(&self, pattern: &InterfacePattern) -> bool {
        let term = Term::Pattern(pattern.as_str());
        let same = |found: Vec<usize>, patterns: &[&InterfacePattern]| {
            found
                .into_iter()
                .any(|i| patterns[i] == pattern || patterns[i].overlap_example(pattern).is_some())
        };
        (!self.interfaces.is_empty()
            && same(self.interface_index.overlapping(term), &self.interfaces))
            || (!self.uplinks.is_empty()
                && same(self.uplink_index.overlapping(term), &self.uplinks))
    }

    /// A declared address that is, contains or lies within a changed declared address,
    /// or that holds a changed gateway.
    fn meets_address(&self, address: &IpNet) -> bool {
        !self.addresses.overlapping(address).is_empty()
            || (!self.gateways.is_empty()
                && self
                    .gateway_index
                    .overlapping(address)
                    .into_iter()
                    .any(|g| address.contains(&self.gateways[g])))
    }

    /// An uplink that can match a name a changed interface entry matches.
    fn meets_uplink(&self, uplink: &InterfacePattern) -> bool {
        !self.interfaces.is_empty()
            && self
                .interface_index
                .overlapping(Term::Pattern(uplink.as_str()))
                .into_iter()
                .any(|i| uplink.overlap_example(self.interfaces[i]).is_some())
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
