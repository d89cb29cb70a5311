//! Links: `vif_names`, the hypervisor's naming scheme for VM interfaces, and each
//! segment's `uplinks`, links that are not VMs. Both are interface names or patterns. A
//! link is either a VM's or an uplink: no uplink can match a name that an `interfaces`
//! entry of any segment or a `vif_names` entry matches. One uplink may carry several
//! segments, so the same uplink in several segments is fine.

use serde_saphyr::Spanned;

use super::interfaces::describe_interface;
use super::{Checker, Listed, Placed, Scope, and_more, pos};
use crate::policy::raw::{RawLinkName, RawScalar};
use crate::policy::{InterfacePattern, NameIndex, Term};

/// What a list of link names is, for [`pattern`].
struct LinkKey {
    /// `vif_names` or `uplinks`.
    key: &'static str,
    /// What to write instead of a pattern made only of wildcards.
    wildcards_help: &'static str,
    /// Example names, for the help of an empty entry.
    example: &'static str,
}

const VIF_NAMES: LinkKey = LinkKey {
    key: "vif_names",
    wildcards_help: "start the pattern with the prefix the hypervisor gives its VM interfaces, \
                     e.g. \"tap*\" or \"vnet*\"",
    example: "\"tap*\" or \"vnet*\"",
};

const UPLINKS: LinkKey = LinkKey {
    key: "uplinks",
    wildcards_help: "start the pattern with a prefix that only these links have, e.g. \
                     \"vxlan*\", or list the links by name",
    example: "\"vxlan100\" or \"bond*\"",
};

const QUOTE_HELP: &str = "YAML reads some unquoted values (numbers, true/false, yes/no, on/off) \
                          as something other than text: write the name in quotes";

/// The pattern of one entry of `vif_names` or `uplinks`, or `None` after reporting what
/// is wrong with it.
fn pattern(
    cx: &mut Checker<'_>,
    entry: &Spanned<RawLinkName>,
    link: &LinkKey,
) -> Option<InterfacePattern> {
    let key = link.key;
    let (found, help) = match &entry.value.0 {
        RawScalar::Text(text) => {
            return match InterfacePattern::new(text) {
                Ok(pattern) => Some(pattern),
                Err(e) => {
                    let only_wildcards = !text.is_empty() && text.chars().all(|c| "*?".contains(c));
                    let help = if only_wildcards {
                        Some(link.wildcards_help.to_owned())
                    } else {
                        e.help
                    };
                    cx.error(&entry.referenced, e.message, help);
                    None
                }
            };
        }
        RawScalar::Other(null) if null == "null" => {
            cx.error(
                &entry.referenced,
                format!("`{key}` entry is empty"),
                Some(format!(
                    "write an interface name or pattern such as {}, or remove the entry",
                    link.example
                )),
            );
            return None;
        }
        RawScalar::Integer(n) => (format!("the number {n}"), QUOTE_HELP.to_owned()),
        RawScalar::Bool(b) => (format!("the boolean {b}"), QUOTE_HELP.to_owned()),
        RawScalar::Other(n) if n.parse::<f64>().is_ok() => {
            (format!("the number {n}"), QUOTE_HELP.to_owned())
        }
        // A list or a mapping.
        RawScalar::Other(shown) => (
            shown.clone(),
            format!(
                "write one interface name or pattern per entry, such as {}",
                link.example
            ),
        ),
    };
    cx.error(
        &entry.referenced,
        format!("`{key}` entry must be an interface name or pattern, found {found}"),
        Some(help),
    );
    None
}

/// `vif_names`: valid patterns, none listed twice.
pub(super) fn check_vif_names(cx: &mut Checker<'_>) -> Vec<Listed<InterfacePattern>> {
    let raw = cx.raw;
    let mut out: Vec<Listed<InterfacePattern>> = Vec::with_capacity(raw.vif_names.len());
    for entry in &raw.vif_names {
        let Some(value) = pattern(cx, entry, &VIF_NAMES) else {
            continue;
        };
        if let Some(first) = out.iter().find(|v| v.value == value) {
            cx.error(
                &entry.referenced,
                format!(
                    "`vif_names` entry {:?} is listed twice: first at {}",
                    value.as_str(),
                    pos(&first.at)
                ),
                Some("remove one of the two entries".to_owned()),
            );
            continue;
        }
        out.push(Listed {
            raw: value.as_str().to_owned(),
            value,
            at: entry.referenced,
        });
    }
    out
}

/// The `uplinks` of the segment: valid patterns, none listed twice in the segment.
pub(super) fn check_uplinks(
    cx: &mut Checker<'_>,
    scope: &Scope<'_>,
) -> Vec<Placed<InterfacePattern>> {
    let mut out: Vec<Placed<InterfacePattern>> = Vec::with_capacity(scope.raw.uplinks.len());
    for entry in &scope.raw.uplinks {
        let Some(value) = pattern(cx, entry, &UPLINKS) else {
            continue;
        };
        if let Some(first) = out.iter().find(|u| u.value == value) {
            cx.error(
                &entry.referenced,
                format!(
                    "uplink {:?} is listed twice in segment {}: first at {}",
                    value.as_str(),
                    cx.qualified(scope.ix),
                    pos(&first.at)
                ),
                Some("remove one of the two entries".to_owned()),
            );
            continue;
        }
        out.push(Placed {
            raw: value.as_str().to_owned(),
            value,
            at: entry.referenced,
            segment: scope.ix,
        });
    }
    out
}

/// Reports every uplink that can match a name an `interfaces` entry of any segment, or
/// a `vif_names` entry, matches: at the uplink, naming the first such entry of each
/// kind.
pub(super) fn check_uplinks_against_vifs(
    cx: &mut Checker<'_>,
    uplinks: &[Placed<InterfacePattern>],
    interfaces: &[Placed<InterfacePattern>],
    interface_index: &NameIndex<'_>,
    vif_names: &[Listed<InterfacePattern>],
) {
    for uplink in uplinks {
        let term = Term::Pattern(uplink.value.as_str());
        let candidates = interface_index.overlapping(term);
        if candidates.is_empty()
            && !vif_names
                .iter()
                .any(|vif| term.overlaps(Term::Pattern(vif.value.as_str())))
        {
            continue;
        }
        let this = format!(
            "uplink {:?} of segment {}",
            uplink.raw,
            cx.qualified(uplink.segment)
        );
        let mut overlapping = candidates
            .iter()
            .map(|&i| &interfaces[i])
            .filter_map(|interface| {
                let example = uplink.value.overlap_example(&interface.value)?;
                Some((interface, example))
            });
        if let Some((interface, example)) = overlapping.next() {
            cx.error(
                &uplink.at,
                format!(
                    "{this} overlaps {} of segment {} at {}: both match {example:?}{}",
                    describe_interface(&interface.raw, &interface.value),
                    cx.qualified(interface.segment),
                    pos(&interface.at),
                    and_more(
                        overlapping.count(),
                        "conflicting entry",
                        "conflicting entries"
                    ),
                ),
                Some(
                    "a link is either a VM's interface or an uplink, never both: make the \
                     patterns disjoint, e.g. give VM interfaces and uplinks different literal \
                     name prefixes"
                        .to_owned(),
                ),
            );
        }
        let mut overlapping = vif_names.iter().filter_map(|vif| {
            let example = uplink.value.overlap_example(&vif.value)?;
            Some((vif, example))
        });
        if let Some((vif, example)) = overlapping.next() {
            cx.error(
                &uplink.at,
                format!(
                    "{this} overlaps `vif_names` entry {:?} at {}: both match {example:?}{}",
                    vif.raw,
                    pos(&vif.at),
                    and_more(overlapping.count(), "such entry", "such entries"),
                ),
                Some(
                    "`vif_names` are the names of VM interfaces, which are dropped until a \
                     segment lists them; an uplink is not a VM's: make the patterns disjoint"
                        .to_owned(),
                ),
            );
        }
    }
}
