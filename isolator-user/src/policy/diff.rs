//! `isolator diff OLD NEW`: what a policy change makes reachable and what it stops.
//!
//! Computed from the two validated policies (not from compiled maps), entry kind by entry
//! kind, in the terms of the policy: which services one segment admits to another
//! (flows), which addresses are exposed for which services, which services of the
//! management prefixes are protected and which segments' egress reaches the others,
//! which segments may reach destinations outside every segment, which links belong to
//! which segment (and with which identity), and the settings that widen what a segment's
//! VMs may do (audit mode, the guard options). Each [`Change`] is
//! [`Effect::Widened`] (something is newly reachable or allowed), [`Effect::Narrowed`]
//! (something no longer is) or [`Effect::Changed`] (neither: segments and prefixes added
//! or removed, a MAC replaced, timeouts). Entries are compared by what they mean, so a
//! reordered policy, or one that writes the same services differently, has no diff.
//!
//! Exposed endpoints and management prefixes are compared through the entries that
//! contain them: an address is exposed (protected) for the services of every entry
//! whose prefix contains it, so an exposure of 10.1.1.10 that the new policy replaces
//! with one of 10.1.1.0/28 is widened (the /28), not narrowed. A prefix that several
//! smaller ones of the other policy cover together counts as not covered: the diff errs
//! towards showing a widening.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::reach::{ServiceSet, shown};
use super::{Egress, Interface, InterfacePattern, Mode, Policy, Segment, SegmentId};

/// Whether a change widens or narrows what is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Something is newly reachable or allowed. Shown as `+`.
    Widened,
    /// Something is no longer reachable or allowed. Shown as `-`.
    Narrowed,
    /// Neither, or both at once (a MAC replaced by another). Shown as `~`.
    Changed,
}

impl Effect {
    pub fn sign(self) -> char {
        match self {
            Effect::Widened => '+',
            Effect::Narrowed => '-',
            Effect::Changed => '~',
        }
    }
}

/// One change between two policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub effect: Effect,
    /// What changed: `segment`, `flow`, `exposed`, `management`, `management-reach`,
    /// `egress`, `mode`, `guard`, `gateway`, `interface`, `uplink`, `vif-names`,
    /// `prefix`, `connection-tracking`.
    pub kind: &'static str,
    /// The object: a segment, a pair `tenant/a -> tenant/b`, a prefix, an interface.
    pub subject: String,
    /// What about it.
    pub detail: String,
}

impl fmt::Display for Change {
    /// `+ flow acme/web -> acme/db: tcp 5433`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}: {}",
            self.effect.sign(),
            self.kind,
            self.subject,
            self.detail
        )
    }
}

/// Every change from one policy to another, grouped by kind, each kind sorted by
/// subject.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Diff {
    pub changes: Vec<Change>,
}

/// `isolator diff`'s exit status when nothing changed.
pub const EXIT_SAME: u8 = 0;
/// `isolator diff`'s exit status when something is newly reachable or allowed.
pub const EXIT_WIDENED: u8 = 1;
/// `isolator diff`'s exit status when the policies differ but nothing is widened.
pub const EXIT_OTHER: u8 = 2;
/// `isolator diff`'s exit status when a policy cannot be read or is invalid.
pub const EXIT_ERROR: u8 = 3;

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// How many changes have `effect`.
    pub fn count(&self, effect: Effect) -> usize {
        self.changes.iter().filter(|c| c.effect == effect).count()
    }

    /// Whether anything is newly reachable or allowed.
    pub fn widens(&self) -> bool {
        self.count(Effect::Widened) > 0
    }

    /// [`EXIT_SAME`], [`EXIT_WIDENED`] or [`EXIT_OTHER`].
    pub fn exit_status(&self) -> u8 {
        if self.is_empty() {
            EXIT_SAME
        } else if self.widens() {
            EXIT_WIDENED
        } else {
            EXIT_OTHER
        }
    }

    /// The first `limit` changes as text lines, then `… N more changes` if there are
    /// more.
    pub fn bounded_lines(&self, limit: usize) -> Vec<String> {
        let mut lines: Vec<String> = self
            .changes
            .iter()
            .take(limit)
            .map(ToString::to_string)
            .collect();
        let more = self.changes.len().saturating_sub(limit);
        if more > 0 {
            lines.push(format!(
                "… {more} more change(s) (`isolator diff` shows every one)"
            ));
        }
        lines
    }

    /// `3 widened, 1 narrowed, 0 other`.
    pub fn summary(&self) -> String {
        format!(
            "{} widened, {} narrowed, {} other",
            self.count(Effect::Widened),
            self.count(Effect::Narrowed),
            self.count(Effect::Changed)
        )
    }
}

impl fmt::Display for Diff {
    /// One change a line, each terminated by `\n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for change in &self.changes {
            writeln!(f, "{change}")?;
        }
        Ok(())
    }
}

/// What changes from `old` to `new`.
///
/// Where the management prefixes are the same, only the tenants that differ (or are in
/// one policy only) can change anything: the rest is compared without them, which keeps
/// the diff of a reload that changes one tenant of a large policy short.
pub fn diff(old: &Policy, new: &Policy) -> Diff {
    if old.management == new.management {
        let (old_part, new_part) = differing_tenants(old, new);
        return diff_of(&old_part, &new_part, old, new);
    }
    diff_of(old, new, old, new)
}

/// `old` and `new` with only the tenants that differ between them (by name).
fn differing_tenants(old: &Policy, new: &Policy) -> (Policy, Policy) {
    /// Tenants by name: borrowed names and a fast hash (the names are the operator's).
    type ByName<'a> = HashMap<&'a str, usize, foldhash::fast::RandomState>;
    fn by_name(p: &Policy) -> ByName<'_> {
        p.tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect()
    }
    let (in_old, in_new) = (by_name(old), by_name(new));
    // `Arc`'s equality compares the pointers first: a tenant a reload kept costs no
    // deeper comparison.
    let keep = |p: &Policy, other: &Policy, index: &ByName<'_>| Policy {
        tenants: p
            .tenants
            .iter()
            .filter(|t| {
                index
                    .get(t.name.as_str())
                    .is_none_or(|&i| other.tenants[i] != **t)
            })
            .cloned()
            .collect(),
        mode: p.mode,
        management: p.management.clone(),
        connection_tracking: p.connection_tracking,
        vif_names: p.vif_names.clone(),
    };
    (keep(old, new, &in_new), keep(new, old, &in_old))
}

/// [`diff`] of `old` and `new` (all of two policies, or the tenants of them that
/// differ); the settings of the whole policies from `old_whole` and `new_whole`.
pub(super) fn diff_of(old: &Policy, new: &Policy, old_whole: &Policy, new_whole: &Policy) -> Diff {
    let (a, b) = (View::new(old), View::new(new));
    let mut out = Changes::default();
    segments(&mut out, &a, &b);
    flows(&mut out, &a, &b);
    exposed(&mut out, &a, &b);
    management(&mut out, &a, &b);
    interfaces(&mut out, &a, &b);
    vif_names(&mut out, old_whole, new_whole);
    connection_tracking(&mut out, old_whole, new_whole);
    Diff { changes: out.0 }
}

#[derive(Default)]
struct Changes(Vec<Change>);

impl Changes {
    fn push(&mut self, effect: Effect, kind: &'static str, subject: String, detail: String) {
        self.0.push(Change {
            effect,
            kind,
            subject,
            detail,
        });
    }

    /// `+` for the elements `is` has and `was` not (listed, `, `-separated, in
    /// `widened`), `-` for those it no longer has.
    fn set<T: Ord + fmt::Display>(
        &mut self,
        kind: &'static str,
        subject: &str,
        was: &BTreeSet<T>,
        is: &BTreeSet<T>,
        widened: impl Fn(String) -> String,
        narrowed: impl Fn(String) -> String,
    ) {
        let list = |items: std::collections::btree_set::Difference<'_, T>| {
            items
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let added = list(is.difference(was));
        if !added.is_empty() {
            self.push(Effect::Widened, kind, subject.to_owned(), widened(added));
        }
        let removed = list(was.difference(is));
        if !removed.is_empty() {
            self.push(
                Effect::Narrowed,
                kind,
                subject.to_owned(),
                narrowed(removed),
            );
        }
    }

    /// `+` for what `new` admits beyond `old`, `-` for what it no longer admits.
    fn services(&mut self, kind: &'static str, subject: &str, old: &ServiceSet, new: &ServiceSet) {
        let added = new.minus(old);
        if !added.is_empty() {
            self.push(Effect::Widened, kind, subject.to_owned(), added.to_string());
        }
        let removed = old.minus(new);
        if !removed.is_empty() {
            self.push(
                Effect::Narrowed,
                kind,
                subject.to_owned(),
                removed.to_string(),
            );
        }
    }
}

/// One policy, indexed for comparison: everything keyed and sorted by what it is, not
/// where it is written.
struct View<'p> {
    segments: BTreeMap<SegmentId, &'p Segment>,
    /// The services each ordered pair's flows admit.
    flows: BTreeMap<(SegmentId, SegmentId), ServiceSet>,
    /// Each segment's exposed prefixes and what each entry for that very prefix admits.
    exposed: BTreeMap<SegmentId, HashMap<IpNet, ServiceSet>>,
    /// Each management prefix and what its entry protects.
    management: HashMap<IpNet, ServiceSet>,
    /// Which segment each interface entry belongs to, and the entry.
    interfaces: BTreeMap<&'p InterfacePattern, (SegmentId, &'p Interface)>,
}

impl<'p> View<'p> {
    fn new(policy: &'p Policy) -> View<'p> {
        let mut view = View {
            segments: BTreeMap::new(),
            flows: BTreeMap::new(),
            exposed: BTreeMap::new(),
            management: HashMap::new(),
            interfaces: BTreeMap::new(),
        };
        for tenant in &policy.tenants {
            for segment in &tenant.segments {
                let id = SegmentId {
                    tenant: tenant.name.clone(),
                    segment: segment.name.clone(),
                };
                let exposed = view.exposed.entry(id.clone()).or_default();
                for e in &segment.expose {
                    exposed.entry(e.prefix).or_default().insert(e.service);
                }
                for interface in &segment.interfaces {
                    view.interfaces
                        .insert(&interface.pattern, (id.clone(), interface));
                }
                view.segments.insert(id, segment);
            }
            for flow in &tenant.flows {
                let from = SegmentId {
                    tenant: tenant.name.clone(),
                    segment: flow.from.clone(),
                };
                let pair = view.flows.entry((from, flow.to.clone())).or_default();
                pair.insert(flow.service);
            }
        }
        for m in &policy.management {
            view.management
                .insert(m.prefix, ServiceSet::protected(&m.services));
        }
        view
    }

    fn segment(&self, id: &SegmentId) -> Option<&'p Segment> {
        self.segments.get(id).copied()
    }

    /// Whether the segment exists and may reach destinations outside every segment.
    fn egress(&self, id: &SegmentId) -> bool {
        self.segment(id).is_some_and(|s| s.egress == Egress::Allow)
    }

    /// What management entries protect at `net`: the services of every entry whose
    /// prefix contains it.
    fn protected(&self, net: &IpNet) -> ServiceSet {
        covering(&self.management, net)
    }
}

/// The union of the sets of every key of `by_prefix` that contains `net` (`net` itself
/// and each of its supernets).
fn covering(by_prefix: &HashMap<IpNet, ServiceSet>, net: &IpNet) -> ServiceSet {
    let mut set = ServiceSet::empty();
    let mut at = Some(*net);
    while let Some(prefix) = at {
        if let Some(services) = by_prefix.get(&prefix) {
            set = set.union(services);
        }
        at = prefix.supernet();
    }
    set
}

/// The union of both views' keys, sorted.
fn keys<'k, K: Ord + Clone + 'k, V: 'k>(
    a: &'k BTreeMap<K, V>,
    b: &'k BTreeMap<K, V>,
) -> BTreeSet<K> {
    a.keys().chain(b.keys()).cloned().collect()
}

fn segments(out: &mut Changes, a: &View<'_>, b: &View<'_>) {
    let ids = keys(&a.segments, &b.segments);
    for id in &ids {
        let subject = id.to_string();
        let (old, new) = (a.segment(id), b.segment(id));
        match (old, new) {
            (None, Some(_)) => {
                out.push(Effect::Changed, "segment", subject.clone(), "added".into())
            }
            (Some(_), None) => {
                out.push(
                    Effect::Changed,
                    "segment",
                    subject.clone(),
                    "removed".into(),
                );
            }
            _ => {}
        }
    }
    for id in &ids {
        let (old, new) = (a.segment(id), b.segment(id));
        // Everything below compares parts of the two segments: equal, nothing changed.
        if old.is_some() && old == new {
            continue;
        }
        let subject = id.to_string();
        // A segment that does not exist reaches nothing, in enforce mode.
        let (was, is) = (a.egress(id), b.egress(id));
        if was != is {
            let shown = |s: Option<&Segment>| s.map_or("(no segment)", |s| s.egress.as_str());
            let detail = format!("{} -> {}", shown(old), shown(new));
            let effect = if is {
                Effect::Widened
            } else {
                Effect::Narrowed
            };
            out.push(effect, "egress", subject.clone(), detail);
        }
        let audit = |s: Option<&Segment>| s.is_some_and(|s| s.mode == Mode::Audit);
        if audit(old) != audit(new) {
            let shown = |s: Option<&Segment>| s.map_or("(no segment)", |s| s.mode.as_str());
            let detail = format!(
                "{} -> {}{}",
                shown(old),
                shown(new),
                if audit(new) {
                    " (what the policy forbids is only counted)"
                } else {
                    ""
                }
            );
            let effect = if audit(new) {
                Effect::Widened
            } else {
                Effect::Narrowed
            };
            out.push(effect, "mode", subject.clone(), detail);
        }
        type Guard = fn(&Segment) -> bool;
        let guards: [(&str, Guard); 2] = [
            ("allow_router_advertisements", |s| {
                s.allow_router_advertisements
            }),
            ("allow_dhcp_server", |s| s.allow_dhcp_server),
        ];
        for (name, get) in guards {
            let (was, is) = (old.is_some_and(get), new.is_some_and(get));
            if was != is {
                let effect = if is {
                    Effect::Widened
                } else {
                    Effect::Narrowed
                };
                out.push(
                    effect,
                    "guard",
                    subject.clone(),
                    format!("{name}: {was} -> {is}"),
                );
            }
        }
        let prefixes = |s: Option<&Segment>| -> BTreeSet<IpNet> {
            s.map(|s| s.prefixes.iter().copied().collect())
                .unwrap_or_default()
        };
        let (was, is) = (prefixes(old), prefixes(new));
        for p in is.difference(&was) {
            out.push(
                Effect::Changed,
                "prefix",
                subject.clone(),
                format!("added {p}"),
            );
        }
        for p in was.difference(&is) {
            out.push(
                Effect::Changed,
                "prefix",
                subject.clone(),
                format!("removed {p}"),
            );
        }
        gateways(out, &subject, old, new);
        let uplinks = |s: Option<&Segment>| -> BTreeSet<String> {
            s.map(|s| {
                s.uplinks
                    .iter()
                    .map(|u| format!("{:?}", u.as_str()))
                    .collect()
            })
            .unwrap_or_default()
        };
        let (was, is) = (uplinks(old), uplinks(new));
        out.set(
            "uplink",
            &subject,
            &was,
            &is,
            |added| format!("{added} trusted for the segment's source addresses"),
            |removed| format!("{removed} no longer trusted"),
        );
    }
}

/// The services the segment's VMs may use at each gateway address (the host itself).
fn gateways(out: &mut Changes, subject: &str, old: Option<&Segment>, new: Option<&Segment>) {
    let of = |s: Option<&Segment>| -> BTreeMap<IpAddr, ServiceSet> {
        s.map(|s| {
            s.gateways
                .iter()
                .map(|g| (g.address, ServiceSet::of_all(&g.services)))
                .collect()
        })
        .unwrap_or_default()
    };
    let (was, is) = (of(old), of(new));
    let none = ServiceSet::empty();
    for address in keys(&was, &is) {
        let subject = format!("{subject} {address}");
        match (was.get(&address), is.get(&address)) {
            (None, Some(s)) if s.is_empty() => {
                out.push(
                    Effect::Changed,
                    "gateway",
                    subject,
                    "added, no services".into(),
                );
            }
            (Some(s), None) if s.is_empty() => {
                out.push(Effect::Changed, "gateway", subject, "removed".into());
            }
            (old, new) => out.services(
                "gateway",
                &subject,
                old.unwrap_or(&none),
                new.unwrap_or(&none),
            ),
        }
    }
}

fn flows(out: &mut Changes, a: &View<'_>, b: &View<'_>) {
    let none = ServiceSet::empty();
    for pair in keys(&a.flows, &b.flows) {
        let old = a.flows.get(&pair).unwrap_or(&none);
        let new = b.flows.get(&pair).unwrap_or(&none);
        if old == new {
            continue;
        }
        let subject = format!("{} -> {}", pair.0, pair.1);
        out.services("flow", &subject, old, new);
    }
}

fn exposed(out: &mut Changes, a: &View<'_>, b: &View<'_>) {
    let empty = HashMap::new();
    for id in keys(&a.exposed, &b.exposed) {
        let old = a.exposed.get(&id).unwrap_or(&empty);
        let new = b.exposed.get(&id).unwrap_or(&empty);
        // The same entries admit the same.
        if old == new {
            continue;
        }
        let prefixes: BTreeSet<&IpNet> = old.keys().chain(new.keys()).collect();
        for prefix in prefixes {
            let subject = format!("{id} {}", shown(prefix));
            let added = new
                .get(prefix)
                .map(|s| s.minus(&covering(old, prefix)))
                .unwrap_or_default();
            if !added.is_empty() {
                out.push(
                    Effect::Widened,
                    "exposed",
                    subject.clone(),
                    added.to_string(),
                );
            }
            let removed = old
                .get(prefix)
                .map(|s| s.minus(&covering(new, prefix)))
                .unwrap_or_default();
            if !removed.is_empty() {
                out.push(Effect::Narrowed, "exposed", subject, removed.to_string());
            }
        }
    }
}

/// How many segments `management-reach` lines name before `and N more`.
const NAMED_SEGMENTS: usize = 5;

fn management(out: &mut Changes, a: &View<'_>, b: &View<'_>) {
    let prefixes: BTreeSet<IpNet> = a
        .management
        .keys()
        .chain(b.management.keys())
        .copied()
        .collect();
    let ids = keys(&a.segments, &b.segments);
    // Where a prefix protects the same in both, only a segment whose egress changed
    // reaches it differently.
    let egress_changed: Vec<&SegmentId> = ids
        .iter()
        .filter(|id| a.egress(id) != b.egress(id))
        .collect();
    for prefix in &prefixes {
        let (was, is) = (a.protected(prefix), b.protected(prefix));
        let subject = prefix.to_string();
        let lost = was.minus(&is);
        if !lost.is_empty() {
            out.push(
                Effect::Widened,
                "management",
                subject.clone(),
                format!("no longer protects {lost}"),
            );
        }
        let gained = is.minus(&was);
        if !gained.is_empty() {
            out.push(
                Effect::Narrowed,
                "management",
                subject.clone(),
                format!("now protects {gained}"),
            );
        }
        // What is not protected is a destination outside every segment: the segments
        // with `egress: allow` reach it. Grouped by what changes, not by segment.
        let (open_was, open_is) = (ServiceSet::all().minus(&was), ServiceSet::all().minus(&is));
        let mut reach: BTreeMap<(Effect, String), Vec<&SegmentId>> = BTreeMap::new();
        let segments: Vec<&SegmentId> = if was == is {
            egress_changed.clone()
        } else {
            ids.iter().collect()
        };
        for id in segments {
            let old = if a.egress(id) {
                open_was.clone()
            } else {
                ServiceSet::empty()
            };
            let new = if b.egress(id) {
                open_is.clone()
            } else {
                ServiceSet::empty()
            };
            for (effect, set) in [
                (Effect::Widened, new.minus(&old)),
                (Effect::Narrowed, old.minus(&new)),
            ] {
                if !set.is_empty() {
                    reach.entry((effect, set.to_string())).or_default().push(id);
                }
            }
        }
        for ((effect, services), segments) in reach {
            let named: Vec<String> = segments
                .iter()
                .take(NAMED_SEGMENTS)
                .map(ToString::to_string)
                .collect();
            let more = match segments.len() - named.len() {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            let verb = if effect == Effect::Widened {
                "now reachable from"
            } else {
                "no longer reachable from"
            };
            let detail = format!("{services} {verb} {}{more}", named.join(", "));
            out.push(effect, "management-reach", subject.clone(), detail);
        }
    }
}

fn interfaces(out: &mut Changes, a: &View<'_>, b: &View<'_>) {
    let patterns: BTreeSet<&InterfacePattern> = a
        .interfaces
        .keys()
        .chain(b.interfaces.keys())
        .copied()
        .collect();
    for pattern in patterns {
        let (old, new) = (a.interfaces.get(pattern), b.interfaces.get(pattern));
        if old.is_some() && old == new {
            continue;
        }
        let subject = format!("{:?}", pattern.as_str());
        match (old, new) {
            (None, Some((id, _))) => out.push(
                Effect::Widened,
                "interface",
                subject,
                format!("added to {id}"),
            ),
            (Some((id, _)), None) => out.push(
                Effect::Narrowed,
                "interface",
                subject,
                format!("removed from {id}"),
            ),
            (Some((from, _)), Some((to, _))) if from != to => {
                out.push(
                    Effect::Widened,
                    "interface",
                    subject,
                    format!("moved from {from} to {to}"),
                );
            }
            (Some((_, old)), Some((_, new))) => identity(out, &subject, old, new),
            (None, None) => {}
        }
    }
}

/// What an interface may send as, within its segment.
fn identity(out: &mut Changes, subject: &str, old: &Interface, new: &Interface) {
    match (old.mac, new.mac) {
        (Some(was), None) => out.push(
            Effect::Widened,
            "interface",
            subject.to_owned(),
            format!("MAC {was} no longer pinned"),
        ),
        (None, Some(is)) => out.push(
            Effect::Narrowed,
            "interface",
            subject.to_owned(),
            format!("MAC pinned to {is}"),
        ),
        (Some(was), Some(is)) if was != is => {
            out.push(
                Effect::Changed,
                "interface",
                subject.to_owned(),
                format!("MAC {was} -> {is}"),
            );
        }
        _ => {}
    }
    let (was, is): (BTreeSet<IpNet>, BTreeSet<IpNet>) = (
        old.addresses.iter().copied().collect(),
        new.addresses.iter().copied().collect(),
    );
    if was != is {
        // Empty: any address of the segment.
        if is.is_empty() {
            out.push(
                Effect::Widened,
                "interface",
                subject.to_owned(),
                "may send from any address of its segment".into(),
            );
        } else if was.is_empty() {
            let list: Vec<String> = is.iter().map(shown).collect();
            out.push(
                Effect::Narrowed,
                "interface",
                subject.to_owned(),
                format!("may send only from {}", list.join(", ")),
            );
        } else {
            let added: Vec<String> = is.difference(&was).map(shown).collect();
            let removed: Vec<String> = was.difference(&is).map(shown).collect();
            if !added.is_empty() {
                out.push(
                    Effect::Widened,
                    "interface",
                    subject.to_owned(),
                    format!("may send from {}", added.join(", ")),
                );
            }
            if !removed.is_empty() {
                out.push(
                    Effect::Narrowed,
                    "interface",
                    subject.to_owned(),
                    format!("may no longer send from {}", removed.join(", ")),
                );
            }
        }
    }
    let (was, is): (BTreeSet<u16>, BTreeSet<u16>) = (
        old.vlans.iter().copied().collect(),
        new.vlans.iter().copied().collect(),
    );
    out.set(
        "interface",
        subject,
        &was,
        &is,
        |added| format!("may tag VLAN {added}"),
        |removed| format!("may no longer tag VLAN {removed}"),
    );
}

fn vif_names(out: &mut Changes, old: &Policy, new: &Policy) {
    let (was, is): (BTreeSet<&InterfacePattern>, BTreeSet<&InterfacePattern>) = (
        old.vif_names.iter().collect(),
        new.vif_names.iter().collect(),
    );
    for p in was.difference(&is) {
        let detail = "links it names that no segment lists are no longer quarantined".to_owned();
        out.push(
            Effect::Widened,
            "vif-names",
            format!("{:?}", p.as_str()),
            detail,
        );
    }
    for p in is.difference(&was) {
        let detail = "links it names that no segment lists are quarantined".to_owned();
        out.push(
            Effect::Narrowed,
            "vif-names",
            format!("{:?}", p.as_str()),
            detail,
        );
    }
}

fn connection_tracking(out: &mut Changes, old: &Policy, new: &Policy) {
    let (o, n) = (&old.connection_tracking, &new.connection_tracking);
    for (name, was, is) in [
        ("tcp_idle_seconds", o.tcp_idle_seconds, n.tcp_idle_seconds),
        (
            "tcp_closing_seconds",
            o.tcp_closing_seconds,
            n.tcp_closing_seconds,
        ),
        ("udp_idle_seconds", o.udp_idle_seconds, n.udp_idle_seconds),
        (
            "icmp_idle_seconds",
            o.icmp_idle_seconds,
            n.icmp_idle_seconds,
        ),
    ] {
        if was != is {
            out.push(
                Effect::Changed,
                "connection-tracking",
                name.to_owned(),
                format!("{was} -> {is}"),
            );
        }
    }
}
