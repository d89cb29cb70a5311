//! Where each entry of a validated [`Policy`](super::Policy) is written in its file.
//!
//! A validated policy keeps every list in file order and drops no entry (an entry that
//! is wrong makes the whole file invalid), so the positions of the raw file, list by
//! list, index the model's entries one to one: `tenants[t].segments[s].expose[i]` is
//! written at `locations.tenants[t].segments[s].expose[i]`. [`super::findings`] uses
//! them to point at the entry a finding is about.

use serde_saphyr::{Location, Spanned};

use super::raw::{RawPolicy, RawSegment, RawTenant};

/// A position in the policy file: 1-based line and column; both 0 for "no position"
/// (as in [`Diagnostic`](super::Diagnostic)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl Pos {
    fn of(at: &Location) -> Pos {
        Pos {
            line: at.line(),
            column: at.column(),
        }
    }

    fn spanned<T>(value: &Spanned<T>) -> Pos {
        Pos::of(&value.referenced)
    }
}

/// The positions of a policy's entries, indexed like the [`Policy`](super::Policy) they
/// were read with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Locations {
    /// The file name, as diagnostics show it.
    pub file: String,
    pub tenants: Vec<TenantLocations>,
    /// Each management entry's `prefix`, and each of its services' `protocol`.
    pub management: Vec<(Pos, Vec<Pos>)>,
    /// Each `vif_names` entry.
    pub vif_names: Vec<Pos>,
}

/// The positions of one tenant's entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantLocations {
    pub name: Pos,
    pub segments: Vec<SegmentLocations>,
    /// Each flow's `from`.
    pub flows: Vec<Pos>,
}

/// The positions of one segment's entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SegmentLocations {
    pub name: Pos,
    /// The `egress:` value, or the segment's name when it is not written.
    pub egress: Pos,
    /// Each interface entry's name.
    pub interfaces: Vec<Pos>,
    pub prefixes: Vec<Pos>,
    /// Each exposed endpoint's `address`.
    pub expose: Vec<Pos>,
    /// Each gateway's `address`, and each of its services' `protocol`.
    pub gateways: Vec<(Pos, Vec<Pos>)>,
    pub uplinks: Vec<Pos>,
}

impl Locations {
    pub(super) fn new(raw: &RawPolicy, file: &str) -> Locations {
        Locations {
            file: file.to_owned(),
            tenants: raw
                .tenants
                .iter()
                .map(|t| TenantLocations::new(t))
                .collect(),
            management: raw
                .management
                .iter()
                .map(|m| {
                    let services = m.services.iter().flat_map(|list| &list.value);
                    let services = services.map(|s| Pos::spanned(&s.protocol));
                    (Pos::spanned(&m.prefix), services.collect())
                })
                .collect(),
            vif_names: raw.vif_names.iter().map(Pos::spanned).collect(),
        }
    }

    /// The segment `(t, s)`'s positions; the default (no positions) if there is none.
    pub fn segment(&self, t: usize, s: usize) -> SegmentLocations {
        self.tenants
            .get(t)
            .and_then(|tenant| tenant.segments.get(s))
            .cloned()
            .unwrap_or_default()
    }
}

impl TenantLocations {
    fn new(raw: &RawTenant) -> TenantLocations {
        TenantLocations {
            name: Pos::spanned(&raw.name),
            segments: raw.segments.iter().map(SegmentLocations::new).collect(),
            flows: raw.flows.iter().map(|f| Pos::spanned(&f.from)).collect(),
        }
    }
}

impl SegmentLocations {
    fn new(raw: &RawSegment) -> SegmentLocations {
        let name = Pos::spanned(&raw.name);
        SegmentLocations {
            name,
            egress: raw.egress.as_ref().map_or(name, Pos::spanned),
            interfaces: raw
                .interfaces
                .iter()
                .map(|entry| {
                    entry
                        .value
                        .name(entry.referenced)
                        .map_or(Pos::spanned(entry), |n| Pos::spanned(&n))
                })
                .collect(),
            prefixes: raw.prefixes.iter().map(Pos::spanned).collect(),
            expose: raw
                .expose
                .iter()
                .map(|e| Pos::spanned(&e.address))
                .collect(),
            gateways: raw
                .gateways
                .iter()
                .map(|g| {
                    let services = g.services.iter().map(|s| Pos::spanned(&s.protocol));
                    (Pos::spanned(&g.address), services.collect())
                })
                .collect(),
            uplinks: raw.uplinks.iter().map(Pos::spanned).collect(),
        }
    }
}
