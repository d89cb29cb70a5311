//! Flows: each entry of a tenant's `flows` goes from a segment of the tenant to an
//! existing segment, with a service; none goes to its own segment or is listed twice.

use std::collections::{HashMap, HashSet};

use serde_saphyr::{Location, Spanned};

use super::values::{check_service, closest};
use super::{Checker, FirstSeen, pos};
use crate::policy::raw::RawPolicy;
use crate::policy::{Flow, SegmentId, Tenant};

/// Segment names of tenant `t`, in file order.
fn segment_names(raw: &RawPolicy, t: usize) -> Vec<&str> {
    raw.tenants[t]
        .segments
        .iter()
        .map(|s| s.name.value.as_str())
        .collect()
}

/// Validated tenants of the policy that are not in the file being checked, by name: a
/// flow may go to one of their segments (see [`super::delta`]).
pub(super) type Beside<'b> = HashMap<&'b str, &'b Tenant>;

/// The tenants and their segments by name, to resolve flows without a search.
pub(super) struct Directory<'r> {
    /// Tenant name -> the first tenant of that name.
    tenants: HashMap<&'r str, usize>,
    /// The segment names of each tenant.
    segments: Vec<HashSet<&'r str>>,
    /// Tenants beside the file's, for names none of the file's tenants has.
    beside: Option<&'r Beside<'r>>,
}

impl<'r> Directory<'r> {
    pub(super) fn new(raw: &'r RawPolicy, beside: Option<&'r Beside<'r>>) -> Directory<'r> {
        let mut tenants = HashMap::with_capacity(raw.tenants.len());
        for (t, tenant) in raw.tenants.iter().enumerate() {
            tenants.entry(tenant.name.value.as_str()).or_insert(t);
        }
        let segments = raw
            .tenants
            .iter()
            .map(|t| t.segments.iter().map(|s| s.name.value.as_str()).collect())
            .collect();
        Directory {
            tenants,
            segments,
            beside,
        }
    }

    /// Whether a tenant beside the file's is named `tenant` and has a segment `segment`.
    fn beside_has(&self, tenant: &str, segment: &str) -> bool {
        self.beside
            .and_then(|beside| beside.get(tenant))
            .is_some_and(|t| t.segments.iter().any(|s| s.name == segment))
    }

    fn tenant(&self, name: &str) -> Option<usize> {
        self.tenants.get(name).copied()
    }

    /// Whether tenant `t` has a segment `name`.
    fn has(&self, t: usize, name: &str) -> bool {
        self.segments[t].contains(name)
    }
}

/// Most names listed in one message; the rest are counted.
const LISTED_NAMES_MAX: usize = 10;

/// `"a, b, c"`, or `"a, b, ... (and 7 more)"` for long lists.
pub(in crate::policy) fn list_names(names: &[&str]) -> String {
    if names.len() <= LISTED_NAMES_MAX {
        return names.join(", ");
    }
    format!(
        "{}, ... (and {} more)",
        names[..LISTED_NAMES_MAX].join(", "),
        names.len() - LISTED_NAMES_MAX
    )
}

/// `"the segments of acme are web, db"`, or that there are none.
fn segments_of(raw: &RawPolicy, t: usize) -> String {
    let tenant = &raw.tenants[t].name.value;
    match segment_names(raw, t).as_slice() {
        [] => format!("tenant {tenant} has no segments"),
        [one] => format!("the only segment of {tenant} is {one}"),
        names => format!("the segments of {tenant} are {}", list_names(names)),
    }
}

/// The flows of tenant `t`.
pub(super) fn check(cx: &mut Checker<'_>, directory: &Directory<'_>, t: usize) -> Vec<Flow> {
    let raw = cx.raw;
    let tenant = &raw.tenants[t].name.value;
    let mut seen: Vec<(Flow, Location)> = Vec::new();
    let mut listed: FirstSeen<Flow> = FirstSeen::new();
    for entry in &raw.tenants[t].flows {
        let from = resolve_from(cx, directory, t, &entry.from);
        let to = resolve_to(cx, directory, t, &entry.to);
        let service = check_service(cx, &entry.protocol, entry.ports.as_ref());
        let (Some(from), Some(to), Some(service)) = (from, to, service) else {
            continue;
        };
        if to.tenant == *tenant && to.segment == from {
            cx.error(
                &entry.to.referenced,
                format!("flow from {to} to {to}: traffic within a segment is always allowed"),
                Some("remove this flow".to_owned()),
            );
            continue;
        }
        let flow = Flow { from, to, service };
        if let Some((_, first)) = listed.find(&flow).map(|i| &seen[i]) {
            cx.error(
                &entry.from.referenced,
                format!(
                    "flow {tenant}/{} -> {} {} is listed twice in tenant {tenant}: first at {}",
                    flow.from,
                    flow.to,
                    flow.service,
                    pos(first)
                ),
                Some("remove one of the two entries".to_owned()),
            );
            continue;
        }
        listed.push(flow.clone());
        seen.push((flow, entry.from.referenced));
    }
    seen.into_iter().map(|(flow, _)| flow).collect()
}

/// `from:`: a segment of the tenant listing the flow, by its name alone.
fn resolve_from(
    cx: &mut Checker<'_>,
    directory: &Directory<'_>,
    t: usize,
    value: &Spanned<String>,
) -> Option<String> {
    let raw = cx.raw;
    const RULE: &str = "a flow starts at a segment of the tenant that lists it";
    let tenant = &raw.tenants[t].name.value;
    let written = value.value.as_str();
    if directory.has(t, written) {
        return Some(written.to_owned());
    }
    let names = segment_names(raw, t);
    let (message, help) = if let Some((other, segment)) = written.split_once('/') {
        let help = if other == tenant && names.contains(&segment) {
            format!("write {segment:?}; {RULE}")
        } else if directory.tenant(other).is_some() {
            format!(
                "{RULE}: to allow traffic from {written}, list the flow under the `flows` of \
                 tenant {other}"
            )
        } else {
            format!("{RULE}; {}", segments_of(raw, t))
        };
        (
            format!(
                "flow source {written:?} must be a segment of tenant {tenant}, written without \
                 a tenant"
            ),
            help,
        )
    } else {
        let help = match closest(written, names.iter().copied()) {
            Some(name) => format!("did you mean {name:?}? {RULE}"),
            None => format!("{RULE}; {}", segments_of(raw, t)),
        };
        (
            format!("flow source {written:?} is not a segment of tenant {tenant}"),
            help,
        )
    };
    cx.error(&value.referenced, message, Some(help));
    None
}

/// `to:`: `segment` of the same tenant, or `tenant/segment`.
fn resolve_to(
    cx: &mut Checker<'_>,
    directory: &Directory<'_>,
    t: usize,
    value: &Spanned<String>,
) -> Option<SegmentId> {
    let raw = cx.raw;
    let tenant = &raw.tenants[t].name.value;
    let written = value.value.as_str();
    let parts: Vec<&str> = written.split('/').collect();
    let (message, help) = match parts.as_slice() {
        [segment] => {
            if directory.has(t, segment) {
                return Some(SegmentId {
                    tenant: tenant.clone(),
                    segment: (*segment).to_owned(),
                });
            }
            let names = segment_names(raw, t);
            let elsewhere = raw.tenants.iter().find(|other| {
                other.name.value != *tenant
                    && other.segments.iter().any(|s| s.name.value == *segment)
            });
            let help = if let Some(name) = closest(segment, names.iter().copied()) {
                format!("did you mean {name:?}? {}", segments_of(raw, t))
            } else if let Some(other) = elsewhere {
                format!(
                    "did you mean \"{}/{segment}\"? a segment of another tenant is written \
                     `tenant/segment`",
                    other.name.value
                )
            } else {
                format!(
                    "write a segment of tenant {tenant}, or `tenant/segment` for a segment of \
                     another tenant; {}",
                    segments_of(raw, t)
                )
            };
            (
                format!("flow destination {written:?} is not a segment of tenant {tenant}"),
                help,
            )
        }
        [other, segment] if !other.is_empty() && !segment.is_empty() => {
            match directory.tenant(other) {
                None if directory.beside_has(other, segment) => {
                    return Some(SegmentId {
                        tenant: (*other).to_owned(),
                        segment: (*segment).to_owned(),
                    });
                }
                None => {
                    let tenants: Vec<&str> =
                        raw.tenants.iter().map(|t| t.name.value.as_str()).collect();
                    let list = format!("the tenants are {}", list_names(&tenants));
                    let help = match closest(other, tenants.iter().copied()) {
                        Some(name) => format!("did you mean \"{name}/{segment}\"? {list}"),
                        None => list,
                    };
                    (
                        format!("flow destination {written:?}: there is no tenant {other:?}"),
                        help,
                    )
                }
                Some(o) => {
                    if directory.has(o, segment) {
                        return Some(SegmentId {
                            tenant: (*other).to_owned(),
                            segment: (*segment).to_owned(),
                        });
                    }
                    let names = segment_names(raw, o);
                    let help = match closest(segment, names.iter().copied()) {
                        Some(name) => {
                            format!("did you mean \"{other}/{name}\"? {}", segments_of(raw, o))
                        }
                        None => segments_of(raw, o),
                    };
                    (
                        format!(
                            "flow destination {written:?}: tenant {other} has no segment \
                             {segment:?}"
                        ),
                        help,
                    )
                }
            }
        }
        _ => (
            format!("flow destination {written:?} is not a segment name"),
            format!(
                "write \"segment\" for a segment of tenant {tenant}, or \"tenant/segment\" for \
                 a segment of another tenant"
            ),
        ),
    };
    cx.error(&value.referenced, message, Some(help));
    None
}
