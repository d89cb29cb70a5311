//! Exposed endpoints: each entry of a segment's `expose` is an address or prefix of the
//! segment itself, with a service; none is listed twice.

use super::prefixes::parse_endpoint;
use super::values::check_service;
use super::{Checker, FirstSeen, Outside, Placed, Scope, pos};
use crate::policy::Expose;

/// The exposed endpoints of the segment.
pub(super) fn check(cx: &mut Checker<'_>, scope: &Scope<'_>) -> Vec<Placed<Expose>> {
    let own = scope.ix;
    let mut seen: Vec<Placed<Expose>> = Vec::new();
    let mut listed: FirstSeen<Expose> = FirstSeen::new();
    for entry in &scope.raw.expose {
        let prefix = match parse_endpoint(&entry.address.value) {
            Ok(net) => Some(net),
            Err((message, help)) => {
                cx.error(&entry.address.referenced, message, help);
                None
            }
        };
        let service = check_service(cx, &entry.protocol, entry.ports.as_ref());
        let Some(prefix) = prefix else {
            continue;
        };
        let written = &entry.address.value;
        if let Some(Outside { relation, owner }) = scope.outside(&prefix) {
            let listed = scope.listed_prefixes();
            let help = match owner {
                Some(owner) => format!(
                    "{written} belongs to segment {}: expose it there; an exposed endpoint \
                     must be an address of its own segment",
                    cx.qualified(owner)
                ),
                None => "an exposed endpoint must be an address of its own segment: fix the \
                         address, or add a prefix that contains it to the segment's `prefixes`"
                    .to_owned(),
            };
            cx.error(
                &entry.address.referenced,
                format!(
                    "exposed endpoint {written} {relation} segment {}{listed}",
                    cx.qualified(own)
                ),
                Some(help),
            );
            continue;
        }
        let Some(service) = service else {
            continue;
        };
        let placed = Placed {
            value: Expose { prefix, service },
            raw: written.clone(),
            at: entry.address.referenced,
            segment: own,
        };
        if let Some(first) = listed.find(&placed.value).map(|i| &seen[i]) {
            cx.error(
                &placed.at,
                format!(
                    "exposed endpoint {written} {service} is listed twice in segment {}: \
                     first{} at {}",
                    cx.qualified(own),
                    if first.raw == placed.raw {
                        String::new()
                    } else {
                        format!(" as {}", first.raw)
                    },
                    pos(&first.at)
                ),
                Some("remove one of the two entries".to_owned()),
            );
            continue;
        }
        listed.push(placed.value.clone());
        seen.push(placed);
    }
    seen
}
