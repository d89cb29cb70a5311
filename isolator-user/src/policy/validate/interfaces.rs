//! Interfaces: each entry of a segment's `interfaces` is a valid name or pattern, and no
//! interface name can be matched by entries of two segments. Identities are checked in
//! [`super::identity`].

use serde_saphyr::Spanned;

use super::{Checker, Conflict, Placed, SegmentIx, and_more, first_conflict, pos};
use crate::policy::raw::{RawInterface, RawInterfaceEntry};
use crate::policy::{InterfacePattern, NameIndex, Term};

/// Adds the valid interface names and patterns of segment `ix` to `interfaces`; reports
/// the invalid ones. [`check_conflicts`] checks them against each other.
pub(super) fn collect(
    cx: &mut Checker<'_>,
    ix: SegmentIx,
    interfaces: &mut Vec<Placed<InterfacePattern>>,
) {
    let (t, s) = ix;
    let raw = cx.raw;
    for entry in &raw.tenants[t].segments[s].interfaces {
        let Some(name) = interface_name(cx, entry) else {
            continue;
        };
        match InterfacePattern::new(name.value) {
            Err(e) => cx.error(&name.referenced, e.message, e.help),
            Ok(pattern) => {
                let placed = Placed {
                    value: pattern,
                    raw: name.value.to_owned(),
                    at: name.referenced,
                    segment: ix,
                };
                interfaces.push(placed);
            }
        }
    }
}

/// `interface "name"` or `interface pattern "name"`, for messages.
pub(super) fn describe_interface(raw: &str, pattern: &InterfacePattern) -> String {
    if pattern.is_glob() {
        format!("interface pattern {raw:?}")
    } else {
        format!("interface {raw:?}")
    }
}

/// Reports each entry that an earlier entry of another segment can match a name it
/// matches, or that is listed twice in its segment. Returns the index of the entries, in
/// the order of `interfaces`.
pub(super) fn check_conflicts<'i>(
    cx: &mut Checker<'_>,
    interfaces: &'i [Placed<InterfacePattern>],
) -> NameIndex<'i> {
    let index = NameIndex::new(
        interfaces
            .iter()
            .map(|i| Term::Pattern(i.value.as_str()))
            .collect(),
    );
    for (n, new) in interfaces.iter().enumerate() {
        let earlier = index.overlapping(Term::Pattern(new.value.as_str()));
        let earlier = earlier
            .iter()
            .take_while(|&&i| i < n)
            .map(|&i| &interfaces[i]);
        check_interface(cx, earlier, new);
    }
    index
}

/// Reports `new` if an earlier entry of another segment can match a name it matches, or
/// the same entry is listed twice in one segment.
fn check_interface<'p>(
    cx: &mut Checker<'_>,
    earlier: impl Iterator<Item = &'p Placed<InterfacePattern>>,
    new: &Placed<InterfacePattern>,
) {
    let Some((old, conflict, more)) = first_conflict(earlier, new, |a, b| {
        if a == b {
            Some(Conflict::Repeated)
        } else {
            a.overlap_example(b).map(|ex| Conflict::Overlap(Some(ex)))
        }
    }) else {
        return;
    };
    let this = describe_interface(&new.raw, &new.value);
    let (message, help) = match conflict {
        Conflict::Repeated => (
            format!(
                "{this} is listed twice in segment {}: first at {}",
                cx.qualified(new.segment),
                pos(&old.at)
            ),
            "remove one of the two entries".to_owned(),
        ),
        Conflict::Shared => (
            format!(
                "{this} of segment {} is also listed in segment {} at {}{}",
                cx.qualified(new.segment),
                cx.qualified(old.segment),
                pos(&old.at),
                and_more(more, "conflicting entry", "conflicting entries"),
            ),
            "an interface can belong to only one segment; remove one of the two entries".to_owned(),
        ),
        Conflict::Overlap(example) => (
            format!(
                "{this} of segment {} overlaps {} of segment {} at {}{}{}",
                cx.qualified(new.segment),
                describe_interface(&old.raw, &old.value),
                cx.qualified(old.segment),
                pos(&old.at),
                example
                    .map(|ex| format!(": both match {ex:?}"))
                    .unwrap_or_default(),
                and_more(more, "conflicting entry", "conflicting entries"),
            ),
            "an interface can belong to only one segment; make the patterns disjoint, e.g. \
             give each segment its own literal name prefix"
                .to_owned(),
        ),
    };
    cx.error(&new.at, message, Some(help));
}

/// The interface name (or pattern) of an entry with its position, or `None` after
/// reporting an entry that is neither a string nor a mapping with `name`.
fn interface_name<'r>(cx: &mut Checker<'_>, entry: &'r RawInterface) -> Option<Spanned<&'r str>> {
    if let RawInterfaceEntry::NotAString { kind, shown } = &entry.value {
        let (message, help) = if shown.is_empty() {
            (
                "interface entry is empty".to_owned(),
                "write an interface name such as \"veth-acme1\", a pattern such as \
                 \"tap-acme-*\", or a mapping with `name`; or remove the entry"
                    .to_owned(),
            )
        } else {
            (
                format!(
                    "interface entry must be a name or a mapping with `name`, found {kind} \
                     {shown}"
                ),
                "YAML reads some unquoted values (numbers, true/false, yes/no, on/off) as \
                 something other than text: write the interface name in quotes"
                    .to_owned(),
            )
        };
        cx.error(&entry.referenced, message, Some(help));
    }
    let name = entry.value.name(entry.referenced);
    if let (RawInterfaceEntry::Mapping(_), None) = (&entry.value, &name) {
        cx.error(
            &entry.referenced,
            "interface entry has no `name`".to_owned(),
            Some(
                "write the interface's exact name (or a pattern) under `name`, e.g. \
                 `- name: tap-acme-web-01`"
                    .to_owned(),
            ),
        );
    }
    name
}
