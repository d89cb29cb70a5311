//! Management prefixes: each entry of `management` is a prefix that overlaps no segment
//! prefix, with the services it protects; none is listed twice.

use ipnet::IpNet;
use serde_saphyr::Location;

use super::prefixes::parse_prefix;
use super::values::check_services;
use super::{Checker, FilePrefixes, Listed, and_more, pos};
use crate::policy::raw::RawManagement;
use crate::policy::{Management, Service};

/// The management prefixes, each checked against every segment's valid prefixes.
pub(super) fn check(
    cx: &mut Checker<'_>,
    segment_prefixes: &FilePrefixes,
) -> Vec<Listed<Management>> {
    let raw = &cx.raw.management;
    let mut out = Vec::with_capacity(raw.len());
    // (prefix, as written, position) of the valid management prefixes so far.
    let mut seen: Vec<(IpNet, &str, Location)> = Vec::new();
    for entry in raw {
        let written = entry.prefix.value.as_str();
        let prefix = match parse_prefix(written) {
            Ok(net) => Some(net),
            Err((message, help)) => {
                cx.error(&entry.prefix.referenced, message, help);
                None
            }
        };
        let services = check_management_services(cx, entry, written);

        let Some(prefix) = prefix else {
            continue;
        };
        let mut valid = true;
        let overlapping = segment_prefixes.index.overlapping(&prefix);
        let mut overlapping = overlapping.iter().map(|&i| &segment_prefixes.placed[i]);
        if let Some(first) = overlapping.next() {
            valid = false;
            let relation = if first.value == prefix {
                "is the same as"
            } else if prefix.contains(&first.value) {
                "contains"
            } else {
                "lies within"
            };
            cx.error(
                &entry.prefix.referenced,
                format!(
                    "management prefix {written:?} {relation} prefix {:?} of segment {} at {}{}",
                    first.raw,
                    cx.qualified(first.segment),
                    pos(&first.at),
                    and_more(
                        overlapping.count(),
                        "overlapping prefix",
                        "overlapping prefixes"
                    ),
                ),
                Some(
                    "a management prefix must never be inside a tenant segment, nor a segment \
                     inside it: VMs own their segment's addresses; make the prefixes disjoint, \
                     e.g. by splitting the management prefix"
                        .to_owned(),
                ),
            );
        }
        if let Some((_, first_raw, first_at)) = seen.iter().find(|(net, _, _)| *net == prefix) {
            valid = false;
            cx.error(
                &entry.prefix.referenced,
                format!(
                    "management prefix {written:?} is listed twice: first{} at {}",
                    if *first_raw == written {
                        String::new()
                    } else {
                        format!(" as {first_raw:?}")
                    },
                    pos(first_at)
                ),
                Some("remove one of the two entries, or merge their `services`".to_owned()),
            );
        } else {
            seen.push((prefix, written, entry.prefix.referenced));
        }
        if let (true, Some(services)) = (valid, services) {
            out.push(Listed {
                value: Management { prefix, services },
                raw: written.to_owned(),
                at: entry.prefix.referenced,
            });
        }
    }
    out
}

/// The services of one management entry (empty = every service), or `None` after
/// reporting what is wrong.
fn check_management_services(
    cx: &mut Checker<'_>,
    entry: &RawManagement,
    written: &str,
) -> Option<Vec<Service>> {
    let Some(list) = &entry.services else {
        return Some(Vec::new());
    };
    if list.value.is_empty() {
        cx.error(
            &list.referenced,
            format!("management prefix {written:?} has an empty `services` list"),
            Some(
                "leave out `services` to protect every protocol and port of the prefix, or list \
                 the services to protect"
                    .to_owned(),
            ),
        );
        return None;
    }
    check_services(cx, &list.value, &|| {
        format!("management prefix {written:?}")
    })
}
