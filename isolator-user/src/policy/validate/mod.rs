//! Semantic validation: turns the positioned raw model into a [`Policy`], collecting
//! every problem as a [`Diagnostic`].
//!
//! One module per section of the file: [`settings`] (version, modes, guard options,
//! connection tracking), [`names`], [`interfaces`] (names and patterns, and which segment
//! owns them), [`identity`] (MAC, addresses, VLANs of an interface), [`prefixes`],
//! [`expose`], [`flows`] and [`management`], and for the host's side of a segment
//! [`gateways`] and [`links`] (`uplinks` and `vif_names`); [`values`] holds the value
//! kinds several sections share (keywords, protocols and ports, services).
//!
//! Validation runs in two passes over the segments. The first collects every segment's
//! interface names and prefixes, which are then checked against each other; the second
//! checks what refers to them anywhere in the file (identities, exposed endpoints,
//! gateways, uplinks, flows), one segment at a time, through a [`Scope`].
//!
//! Nothing compares every entry with every other: entries that may conflict are found
//! through an index ([`NameIndex`](crate::policy::NameIndex) for interface names and
//! patterns, [`NetIndex`] for prefixes and addresses, hash maps for names, MACs and
//! repeated entries), so that a policy of the whole cloud (100 000 segments, 1 000 000
//! prefixes) validates in about O(n log n). A check between entries of the file reports
//! the same first conflicting entry, and counts the same others, as a comparison with
//! every earlier entry would. Last come the checks between entries of the whole file that
//! only the second pass completes: management prefixes, the gateways against the
//! declared addresses and management prefixes, the uplinks against every interface
//! entry and `vif_names`.

pub(super) mod delta;
mod expose;
pub(super) mod flows;
mod gateways;
mod identity;
mod interfaces;
mod links;
mod management;
mod names;
pub(super) mod prefixes;
mod settings;
pub(super) mod values;

use std::collections::HashMap;
use std::hash::Hash;

use ipnet::IpNet;
use serde_saphyr::Location;

use super::raw::{RawPolicy, RawSegment};
use super::{Diagnostic, Gateway, InterfacePattern, NetIndex, Policy, Segment, Tenant};

/// (tenant index, segment index): identifies a segment within the file.
type SegmentIx = (usize, usize);

/// Collects the problems of one file.
struct Checker<'r> {
    file: &'r str,
    raw: &'r RawPolicy,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, at: &Location, message: String, help: Option<String>) {
        self.diagnostics.push(Diagnostic {
            file: self.file.to_owned(),
            line: at.line(),
            column: at.column(),
            message,
            help,
        });
    }

    /// `tenant/segment`, for messages.
    fn qualified(&self, (t, s): SegmentIx) -> String {
        let tenant = &self.raw.tenants[t];
        format!("{}/{}", tenant.name.value, tenant.segments[s].name.value)
    }
}

/// `line:column`, for messages that point at an earlier entry.
fn pos(at: &Location) -> String {
    format!("{}:{}", at.line(), at.column())
}

/// A validated entry with its source position and owning segment.
struct Placed<T> {
    value: T,
    /// As written in the file, for messages.
    raw: String,
    at: Location,
    segment: SegmentIx,
}

/// A validated top-level entry (of no segment) with its source position.
struct Listed<T> {
    value: T,
    /// As written in the file, for messages.
    raw: String,
    at: Location,
}

/// How a new entry conflicts with an earlier one.
enum Conflict {
    /// The same entry twice in one segment.
    Repeated,
    /// The same entry in two segments.
    Shared,
    /// Different entries of two segments that overlap; for interfaces, with an example
    /// name matching both.
    Overlap(Option<String>),
}

/// First conflicting earlier entry, and how many more there are. `earlier` are the
/// entries before `new` in file order that may conflict with it (an index finds them),
/// in file order.
fn first_conflict<'p, T: 'p>(
    earlier: impl IntoIterator<Item = &'p Placed<T>>,
    new: &Placed<T>,
    conflict: impl Fn(&T, &T) -> Option<Conflict>,
) -> Option<(&'p Placed<T>, Conflict, usize)> {
    let mut found = earlier.into_iter().filter_map(|old| {
        let c = conflict(&old.value, &new.value)?;
        match c {
            Conflict::Repeated | Conflict::Shared if old.segment == new.segment => {
                Some((old, Conflict::Repeated))
            }
            // Overlapping but different entries within one segment are fine.
            Conflict::Overlap(_) if old.segment == new.segment => None,
            Conflict::Repeated => Some((old, Conflict::Shared)),
            c => Some((old, c)),
        }
    });
    let (old, c) = found.next()?;
    Some((old, c, found.count()))
}

/// Entries seen so far, to find the first earlier one equal to a new one: by a scan
/// while there are few (most lists of a segment or tenant), by a hash map beyond.
struct FirstSeen<K> {
    keys: Vec<K>,
    map: HashMap<K, usize>,
}

impl<K: Eq + Hash + Clone> FirstSeen<K> {
    /// Longest list scanned.
    const SCAN: usize = 16;

    fn new() -> Self {
        FirstSeen {
            keys: Vec::new(),
            map: HashMap::new(),
        }
    }

    /// The number (in the order added) of the first entry equal to `key`.
    fn find(&self, key: &K) -> Option<usize> {
        if self.keys.len() <= Self::SCAN {
            self.keys.iter().position(|k| k == key)
        } else {
            self.map.get(key).copied()
        }
    }

    fn push(&mut self, key: K) {
        if self.keys.len() == Self::SCAN {
            for (n, k) in self.keys.iter().enumerate() {
                self.map.entry(k.clone()).or_insert(n);
            }
        }
        if self.keys.len() >= Self::SCAN {
            self.map.entry(key.clone()).or_insert(self.keys.len());
        }
        self.keys.push(key);
    }
}

fn and_more(more: usize, one: &str, many: &str) -> String {
    match more {
        0 => String::new(),
        1 => format!(" (and 1 more {one})"),
        n => format!(" (and {n} more {many})"),
    }
}

/// Every segment's valid prefixes, in file order, and an index of them.
struct FilePrefixes {
    placed: Vec<Placed<IpNet>>,
    index: NetIndex,
}

impl FilePrefixes {
    fn new(placed: Vec<Placed<IpNet>>) -> FilePrefixes {
        FilePrefixes {
            index: NetIndex::new(placed.iter().map(|p| &p.value)),
            placed,
        }
    }
}

/// One segment, as the second pass checks its entries that refer to addresses and
/// segments anywhere in the file (identities, exposed endpoints, gateways, uplinks).
struct Scope<'a> {
    ix: SegmentIx,
    raw: &'a RawSegment,
    /// The segment's valid prefixes, in file order.
    prefixes: &'a [IpNet],
    /// Every segment's valid prefixes, or `None` when some prefix of this segment is
    /// invalid or refused: then whether an address lies inside the segment is unknown
    /// and not checked.
    file_prefixes: Option<&'a FilePrefixes>,
}

/// How an address or prefix lies outside its segment, found by [`Scope::outside`].
struct Outside {
    /// `is outside`, or `is not entirely inside` (it contains a prefix of the segment).
    relation: &'static str,
    /// The other segment whose prefix holds it, if one does.
    owner: Option<SegmentIx>,
}

impl Scope<'_> {
    /// Whether `net` lies outside the segment's prefixes, and how. `None` when it lies
    /// inside, or when that is unknown (an invalid prefix of the segment).
    fn outside(&self, net: &IpNet) -> Option<Outside> {
        let file_prefixes = self.file_prefixes?;
        if self.prefixes.iter().any(|p| p.contains(net)) {
            return None;
        }
        let relation = if self.prefixes.iter().any(|p| net.contains(p)) {
            "is not entirely inside"
        } else {
            "is outside"
        };
        let owner = file_prefixes
            .index
            .containing(net)
            .into_iter()
            .map(|i| &file_prefixes.placed[i])
            .find(|p| p.segment != self.ix)
            .map(|p| p.segment);
        Some(Outside { relation, owner })
    }

    /// ` (10.1.1.0/24, fd00:1:1::/64)`, or that the segment has none.
    fn listed_prefixes(&self) -> String {
        if self.prefixes.is_empty() {
            ", which has no prefixes".to_owned()
        } else {
            let shown: Vec<String> = self.prefixes.iter().map(ToString::to_string).collect();
            format!(" ({})", shown.join(", "))
        }
    }
}

pub(super) fn validate(raw: &RawPolicy, file: &str) -> Result<Policy, Vec<Diagnostic>> {
    validate_beside(raw, file, None)
}

/// [`validate`], with the flows resolved among the tenants of the file and, for names
/// that none of them has, among `beside` (validated tenants of the same policy that are
/// not in `raw`: see [`delta`]).
fn validate_beside(
    raw: &RawPolicy,
    file: &str,
    beside: Option<&flows::Beside<'_>>,
) -> Result<Policy, Vec<Diagnostic>> {
    let mut cx = Checker {
        file,
        raw,
        diagnostics: Vec::new(),
    };

    settings::check_version(&mut cx, &raw.version);
    names::check(&mut cx);
    let mode = settings::global_mode(&mut cx);
    let connection_tracking = settings::check_connection_tracking(&mut cx);
    let vif_names = links::check_vif_names(&mut cx);

    // First pass: every segment's own settings, interface names and prefixes.
    let mut interfaces: Vec<Placed<InterfacePattern>> = Vec::new();
    let mut prefixes: Vec<Placed<IpNet>> = Vec::new();
    // Segments all of whose prefixes are valid, indexed like `raw.tenants[t].segments[s]`:
    // only these get the "outside its segment" checks.
    let mut prefixes_complete: Vec<Vec<bool>> = Vec::with_capacity(raw.tenants.len());
    let mut tenants = Vec::with_capacity(raw.tenants.len());
    for (t, raw_tenant) in raw.tenants.iter().enumerate() {
        let mut segments = Vec::with_capacity(raw_tenant.segments.len());
        let mut complete = Vec::with_capacity(raw_tenant.segments.len());
        for (s, raw_segment) in raw_tenant.segments.iter().enumerate() {
            let ix = (t, s);
            let options = settings::check_segment(&mut cx, raw_segment, mode);
            interfaces::collect(&mut cx, ix, &mut interfaces);
            let (own_prefixes, all_valid) = prefixes::collect(&mut cx, ix, &mut prefixes);
            segments.push(Segment {
                name: raw_segment.name.value.clone(),
                interfaces: Vec::new(),
                prefixes: own_prefixes,
                mode: options.mode,
                egress: options.egress,
                expose: Vec::new(),
                allow_router_advertisements: options.allow_router_advertisements,
                allow_dhcp_server: options.allow_dhcp_server,
                gateways: Vec::new(),
                uplinks: Vec::new(),
            });
            complete.push(all_valid);
        }
        tenants.push(Tenant {
            name: raw_tenant.name.value.clone(),
            segments,
            flows: Vec::new(),
        });
        prefixes_complete.push(complete);
    }

    // No interface name in two segments, no address in two segments.
    let interface_index = interfaces::check_conflicts(&mut cx, &interfaces);
    let prefixes = FilePrefixes::new(prefixes);
    prefixes::check_conflicts(&mut cx, &prefixes);

    // Second pass: interface identities, exposed endpoints, gateways, uplinks and flows
    // refer to prefixes and segments anywhere in the file.
    let directory = flows::Directory::new(raw, beside);
    let mut identities = identity::Identities::default();
    let mut gateways: Vec<Placed<Gateway>> = Vec::new();
    let mut uplinks: Vec<Placed<InterfacePattern>> = Vec::new();
    for (t, raw_tenant) in raw.tenants.iter().enumerate() {
        for (s, raw_segment) in raw_tenant.segments.iter().enumerate() {
            let segment = &mut tenants[t].segments[s];
            let scope = Scope {
                ix: (t, s),
                raw: raw_segment,
                prefixes: &segment.prefixes,
                file_prefixes: prefixes_complete[t][s].then_some(&prefixes),
            };
            let own_interfaces = identity::check(&mut cx, &scope, &mut identities);
            let exposed = expose::check(&mut cx, &scope);
            gateways.extend(gateways::check(&mut cx, &scope, &exposed));
            uplinks.extend(links::check_uplinks(&mut cx, &scope));
            segment.interfaces = own_interfaces;
            segment.expose = exposed.into_iter().map(|e| e.value).collect();
        }
        tenants[t].flows = flows::check(&mut cx, &directory, t);
    }
    identity::check_address_overlaps(&mut cx, &mut identities);
    let management = management::check(&mut cx, &prefixes);

    // The host's side of the segments against the whole file.
    gateways::check_host_addresses(&mut cx, &gateways, &identities.addresses, &management);
    links::check_uplinks_against_vifs(&mut cx, &uplinks, &interfaces, &interface_index, &vif_names);
    for gateway in gateways {
        let (t, s) = gateway.segment;
        tenants[t].segments[s].gateways.push(gateway.value);
    }
    for uplink in uplinks {
        let (t, s) = uplink.segment;
        tenants[t].segments[s].uplinks.push(uplink.value);
    }

    if cx.diagnostics.is_empty() {
        Ok(Policy {
            tenants: tenants.into_iter().map(std::sync::Arc::new).collect(),
            mode,
            management: management.into_iter().map(|m| m.value).collect(),
            connection_tracking,
            vif_names: vif_names.into_iter().map(|v| v.value).collect(),
        })
    } else {
        // Stable: problems at the same position keep the order they were found in.
        cx.diagnostics.sort_by_key(|d| (d.line, d.column));
        Err(cx.diagnostics)
    }
}

#[cfg(test)]
mod tests {
    use super::FirstSeen;

    /// Past the scanned length, the hash map finds the same first entry a scan does.
    #[test]
    fn first_seen_finds_the_first_equal_entry_at_any_length() {
        let mut seen = FirstSeen::new();
        let mut keys = Vec::new();
        for n in 0..50u32 {
            let key = n % 23;
            let expected = keys.iter().position(|&k| k == key);
            assert_eq!(seen.find(&key), expected, "entry {n}");
            seen.push(key);
            keys.push(key);
        }
        assert_eq!(seen.find(&100), None);
    }
}
