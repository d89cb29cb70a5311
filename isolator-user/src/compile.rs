//! Compiling a validated policy and the host's live links into the entries of one
//! policy generation of the kernel maps. Pure: no kernel access, unit-tested.

use std::borrow::Cow;
use std::collections::BTreeSet;

/// A hash map with a fast hash: its keys are names from the operator's policy and the
/// host's links.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use isolator_common::{Rule, RuleSet, SegmentInfo, Settings, VifInfo, limits, protocol};

const NANOS: u64 = 1_000_000_000;

use crate::policy::{Egress, InterfacePattern, Mode, NameIndex, Policy, Protocol, Service, Term};

/// A network interface of the host, as netlink reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
    /// The link kind (`IFLA_INFO_KIND`: `veth`, `tun`, `macvtap`, …); empty for a
    /// physical device.
    pub kind: String,
}

impl Link {
    /// A link of kind `veth` (what the lab and most container hosts use).
    pub fn veth(name: &str, ifindex: u32) -> Link {
        Link {
            name: name.to_string(),
            ifindex,
            kind: VETH.to_string(),
        }
    }
}

/// Link kinds that can be a vif: on these, what the VM sends is received by the host
/// side (XDP, TC ingress) and what it receives is transmitted (TC egress). On macvtap,
/// macvlan, ipvlan and ipvtap it is the other way round, so they are refused rather than
/// judged in the wrong direction.
pub const VIF_KINDS: [&str; 2] = [VETH, TUN];
const VETH: &str = "veth";
/// Tap devices (`ip tuntap`, qemu's vhost-net) report the kind `tun`.
const TUN: &str = "tun";

/// What the daemon sees of the host: every link and every address of its namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostView {
    pub links: Vec<Link>,
    /// The host's own addresses (on any link).
    pub addresses: Vec<IpAddr>,
    /// How an XDP program is attached to each link that has one (`IFLA_XDP_ATTACHED`):
    /// `native`, `generic`, `offload` or `multiple`, by ifindex. Not part of any plan.
    pub xdp_modes: std::collections::BTreeMap<u32, &'static str>,
}

impl From<&[Link]> for HostView {
    /// A host with these links and no addresses.
    fn from(links: &[Link]) -> HostView {
        HostView {
            links: links.to_vec(),
            ..HostView::default()
        }
    }
}

impl From<&Vec<Link>> for HostView {
    fn from(links: &Vec<Link>) -> HostView {
        HostView::from(links.as_slice())
    }
}

impl From<&HostView> for HostView {
    fn from(host: &HostView) -> HostView {
        host.clone()
    }
}

/// Why an interface that looks like a VM's is not enforced as one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Quarantine {
    /// Its name matches the hypervisor's vif naming scheme (`vif_names`), but no
    /// segment's `interfaces`.
    Unclassified,
    /// A segment names it, but its link kind cannot be enforced as a vif.
    UnsupportedKind(String),
}

impl fmt::Display for Quarantine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quarantine::Unclassified => f.write_str(
                "its name matches vif_names but no segment's interfaces: classify it in the policy",
            ),
            Quarantine::UnsupportedKind(kind) if kind.is_empty() => write!(
                f,
                "it is a physical device, which cannot be enforced as a vif (supported kinds: {})",
                VIF_KINDS.join(", ")
            ),
            Quarantine::UnsupportedKind(kind) => write!(
                f,
                "its link kind {kind:?} cannot be enforced as a vif (supported: {}); use a tap or veth",
                VIF_KINDS.join(", ")
            ),
        }
    }
}

impl Quarantine {
    /// The `reason` label of the refused-interface metric.
    pub fn label(&self) -> &'static str {
        match self {
            Quarantine::Unclassified => "unclassified",
            Quarantine::UnsupportedKind(_) => "unsupported_kind",
        }
    }
}

/// An interface the programs are attached to but that passes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantinedVif {
    pub name: String,
    pub ifindex: u32,
    pub why: Quarantine,
}

/// A link of the host that is not a vif: frames entering through it come from outside
/// every segment, unless it is an uplink trusted for the segment of their source address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLink {
    pub name: String,
    pub ifindex: u32,
    /// Segments that trust it as an uplink, sorted.
    pub uplink_for: Vec<u32>,
}

/// A gateway address of a segment and the services its VMs may use there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayPlan {
    pub segment: u32,
    pub address: IpAddr,
    pub services: RuleSet,
}

/// A segment with the numeric ids the kernel maps use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRef {
    pub id: u32,
    pub tenant_id: u32,
    /// Shared: a plan worked out from the last one copies its segments cheaply.
    pub tenant: Arc<str>,
    pub name: Arc<str>,
    /// [`SegmentInfo`] flags: egress allowed, audit mode.
    pub flags: u32,
}

/// A host interface that the policy manages, with the segment it belongs to and the
/// identity it declared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagedVif {
    pub name: String,
    pub ifindex: u32,
    pub segment: u32,
    /// The only source MAC it may use.
    pub mac: Option<[u8; 6]>,
    /// The only source addresses it may use; empty: its segment's prefixes.
    pub addresses: Vec<IpNet>,
    /// VLAN ids it may tag frames with.
    pub vlans: Vec<u16>,
}

/// A flow of a plan: (from segment, to segment) and the services allowed.
pub type Flow = ((u32, u32), RuleSet);

/// Everything one policy generation puts into the kernel, plus the names metrics need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// In policy order; [`Plan::segment`] finds one by its id.
    pub segments: Vec<SegmentRef>,
    /// Segment id -> position in `segments`: see [`Plan::index_segments`].
    pub segment_index: HashMap<u32, u32>,
    /// Sorted by ifindex.
    pub vifs: Vec<ManagedVif>,
    pub v4: Vec<(Ipv4Net, u32)>,
    pub v6: Vec<(Ipv6Net, u32)>,
    /// Connection tracking timeouts.
    pub settings: Settings,
    /// Management prefixes with the services they protect (merged over containing
    /// prefixes, since the kernel finds only the longest match).
    pub management_v4: Vec<(Ipv4Net, RuleSet)>,
    pub management_v6: Vec<(Ipv6Net, RuleSet)>,
    /// Exposed prefixes with their services (merged over containing exposures).
    pub exposed_v4: Vec<(Ipv4Net, RuleSet)>,
    pub exposed_v6: Vec<(Ipv6Net, RuleSet)>,
    /// Flows: (from segment, to segment) and the services allowed.
    pub flows: Vec<Flow>,
    /// Segment pairs joined by a flow in either direction, both orders.
    pub neighbours: Vec<(u32, u32)>,
    /// Interfaces that look like VMs' but are not enforceable as such, sorted by ifindex:
    /// attached, and everything dropped.
    pub quarantined: Vec<QuarantinedVif>,
    /// Every other link of the host, sorted by ifindex.
    pub links: Vec<HostLink>,
    /// The host's own addresses.
    pub host_addresses: Vec<IpAddr>,
    /// Gateways of the segments.
    pub gateways: Vec<GatewayPlan>,
    /// For each tenant of the policy, in its order, the lengths of `segments`, `v4`,
    /// `v6`, `exposed_v4`, `exposed_v6` and `gateways` after its entries: where a
    /// tenant's entries are, for [`Plan::update`].
    pub tenant_ends: Vec<[u32; 6]>,
    /// Whether a segment's id is below its name's hash ([`stable_ids_checked`]): where
    /// none is, [`Plan::update`] can work out the ids of the changed segments alone.
    pub segment_ids_wrapped: bool,
}

/// Why a policy cannot be put into the kernel maps as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// More objects than the kernel maps can hold in one generation.
    TooMany {
        what: &'static str,
        count: usize,
        limit: u32,
    },
    /// More services on one prefix or flow pair than a kernel rule set holds.
    TooManyServices {
        what: String,
        count: usize,
        limit: usize,
    },
    /// A flow names a segment the policy does not have (validation rules this out).
    UnknownSegment { name: String },
    /// Two segments claim the same link (validation rules this out; kept as a guard).
    AmbiguousLink {
        link: String,
        first: String,
        second: String,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::TooMany { what, count, limit } => write!(
                f,
                "the policy needs {count} {what}, but the kernel maps hold at most {limit}; \
                 split the host's policy or raise the limit in isolator-common"
            ),
            PlanError::TooManyServices { what, count, limit } => write!(
                f,
                "{what} has {count} distinct services, but the kernel holds at most {limit} \
                 per prefix or flow; merge port ranges or split the prefix"
            ),
            PlanError::UnknownSegment { name } => write!(f, "unknown segment {name}"),
            PlanError::AmbiguousLink {
                link,
                first,
                second,
            } => write!(
                f,
                "interface {link:?} is matched by segments {first} and {second}; \
                 make the interface patterns disjoint"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

impl Plan {
    /// Numbers the policy's segments and sorts the host's links: each link a segment's
    /// `interfaces` match is a vif of that segment (or quarantined if its kind cannot be
    /// enforced), a link `vif_names` matches but no segment is quarantined, and every
    /// other link is the host's own (an uplink for the segments that trust it).
    pub fn new(policy: &Policy, host: impl Into<HostView>) -> Result<Plan, PlanError> {
        let host = host.into();
        let ct = &policy.connection_tracking;
        let mut plan = Plan {
            settings: Settings {
                tcp_idle_ns: u64::from(ct.tcp_idle_seconds) * NANOS,
                tcp_closing_ns: u64::from(ct.tcp_closing_seconds) * NANOS,
                udp_idle_ns: u64::from(ct.udp_idle_seconds) * NANOS,
                icmp_idle_ns: u64::from(ct.icmp_idle_seconds) * NANOS,
                // Set when the plan is put into effect.
                epoch: 0,
            },
            ..Plan::default()
        };
        // The policy's segments with their ids, in policy order. The ids follow from the
        // names alone (see `stable_ids`), so that a reload that adds or removes a segment
        // or a tenant leaves every other one's entries as they were.
        let tenant_ids = stable_ids(policy.tenants.iter().map(|t| [t.name.as_str(), ""]));
        let (segment_ids, wrapped) = stable_ids_checked(policy.tenants.iter().flat_map(|t| {
            t.segments
                .iter()
                .map(|s| [t.name.as_str(), s.name.as_str()])
        }));
        plan.segment_ids_wrapped = wrapped;
        let mut by_id = Vec::with_capacity(segment_ids.len());
        // Room for every segment, prefix and exposure up front: at cloud scale growing
        // the lists copies each of them several times over.
        let (mut prefixes, mut exposures) = ([0usize; 2], [0usize; 2]);
        for segment in policy.tenants.iter().flat_map(|t| &t.segments) {
            for prefix in &segment.prefixes {
                prefixes[usize::from(prefix.addr().is_ipv6())] += 1;
            }
            for exposure in &segment.expose {
                exposures[usize::from(exposure.prefix.addr().is_ipv6())] += 1;
            }
        }
        plan.segments.reserve(segment_ids.len());
        plan.v4.reserve(prefixes[0]);
        plan.v6.reserve(prefixes[1]);
        plan.exposed_v4.reserve(exposures[0]);
        plan.exposed_v6.reserve(exposures[1]);
        plan.tenant_ends.reserve(policy.tenants.len());
        for (tenant, &tenant_id) in policy.tenants.iter().zip(&tenant_ids) {
            let ids = &segment_ids[by_id.len()..by_id.len() + tenant.segments.len()];
            plan.push_tenant(tenant, tenant_id, ids)?;
            by_id.extend(ids.iter().copied().zip(&tenant.segments));
        }

        plan.index_segments();

        let management: Vec<(IpNet, Vec<Service>)> = policy
            .management
            .iter()
            .map(|m| (m.prefix, m.services.clone()))
            .collect();
        let owner = || "the policy".to_owned();
        for (net, rules) in merge_over_containing(&management, owner, "management prefix")? {
            match net {
                IpNet::V4(n) => plan.management_v4.push((n, rules)),
                IpNet::V6(n) => plan.management_v6.push((n, rules)),
            }
        }

        let mut ids: HashMap<(&str, &str), u32> =
            HashMap::with_capacity_and_hasher(plan.segments.len(), Default::default());
        for s in &plan.segments {
            ids.entry((&s.tenant, &s.name)).or_insert(s.id);
        }
        let id_of = |tenant: &str, segment: &str| -> Result<u32, PlanError> {
            ids.get(&(tenant, segment))
                .copied()
                .ok_or_else(|| PlanError::UnknownSegment {
                    name: format!("{tenant}/{segment}"),
                })
        };
        // Every flow by its pair, the pairs in order and each pair's services in policy
        // order (a stable sort of one list, not a tree of lists).
        let mut flows: Vec<((u32, u32), Service)> = Vec::new();
        for tenant in &policy.tenants {
            for flow in &tenant.flows {
                let from = id_of(&tenant.name, &flow.from)?;
                let to = id_of(&flow.to.tenant, &flow.to.segment)?;
                flows.push(((from, to), flow.service));
            }
        }
        drop(ids);
        flows.sort_by_key(|(pair, _)| *pair);
        plan.flows = plan.flow_sets(&flows)?;
        plan.neighbours = neighbours(&plan.flows);
        for at in 0..plan.segments.len() {
            plan.mark_foreign_neighbours(at);
        }

        let mut links: Vec<&Link> = host.links.iter().collect();
        links.sort_by_key(|l| l.ifindex);
        let claims = Claims::new(&links, &by_id);
        for (l, link) in links.iter().enumerate() {
            let mut owner: Option<(u32, &crate::policy::Interface)> = None;
            // The segments whose entries match the link (by position), each once, in
            // policy order.
            let mut matching = claims.interfaces[l]
                .iter()
                .map(|&(position, _, _)| position);
            if let Some(first) = matching.next() {
                if let Some(second) = matching.find(|&other| other != first) {
                    return Err(PlanError::AmbiguousLink {
                        link: link.name.clone(),
                        first: plan.segment_label(by_id[first].0),
                        second: plan.segment_label(by_id[second].0),
                    });
                }
                // The segment's exact-name entry if it has one, else its first pattern
                // that matches (as `Segment::interface_for` chooses).
                let (_, _, at) = claims.interfaces[l][0];
                let (id, segment) = by_id[first];
                owner = Some((id, &segment.interfaces[at]));
            }
            let uplink_for = claims.uplinks[l].iter().map(|&at| by_id[at].0).collect();
            plan.place_link(link, owner, &policy.vif_names, uplink_for);
        }
        let addresses: BTreeSet<IpAddr> = host.addresses.iter().copied().collect();
        plan.host_addresses = addresses.into_iter().collect();
        plan.check()?;
        Ok(plan)
    }

    /// Appends a tenant's segments (with their ids `ids`, in its order), their prefixes,
    /// exposures (merged over containing ones) and gateways to the plan's lists, and the
    /// lists' lengths after them to `tenant_ends`.
    fn push_tenant(
        &mut self,
        tenant: &crate::policy::Tenant,
        tenant_id: u32,
        ids: &[u32],
    ) -> Result<(), PlanError> {
        let name: Arc<str> = Arc::from(tenant.name.as_str());
        for (segment, &id) in tenant.segments.iter().zip(ids) {
            self.segments.push(SegmentRef {
                id,
                tenant_id,
                tenant: Arc::clone(&name),
                name: Arc::from(segment.name.as_str()),
                flags: segment_flags(segment),
            });
            for prefix in &segment.prefixes {
                match prefix {
                    IpNet::V4(p) => self.v4.push((*p, id)),
                    IpNet::V6(p) => self.v6.push((*p, id)),
                }
            }
            let exposures: Vec<(IpNet, [Service; 1])> = segment
                .expose
                .iter()
                .map(|e| (e.prefix, [e.service]))
                .collect();
            let label = || format!("{}/{}", tenant.name, segment.name);
            for (net, rules) in merge_over_containing(&exposures, label, "exposed endpoint")? {
                match net {
                    IpNet::V4(n) => self.exposed_v4.push((n, rules)),
                    IpNet::V6(n) => self.exposed_v6.push((n, rules)),
                }
            }
            for gateway in &segment.gateways {
                let services = allowed_services(&gateway.services).map_err(|count| {
                    let what = format!(
                        "the services of gateway {} of {}/{}",
                        gateway.address, tenant.name, segment.name
                    );
                    too_many_services(what, count)
                })?;
                self.gateways.push(GatewayPlan {
                    segment: id,
                    address: gateway.address,
                    services,
                });
            }
        }
        self.tenant_ends.push(self.ends());
        Ok(())
    }

    /// The lengths of the lists a tenant adds to (see [`Plan::tenant_ends`]).
    fn ends(&self) -> [u32; 6] {
        [
            self.segments.len(),
            self.v4.len(),
            self.v6.len(),
            self.exposed_v4.len(),
            self.exposed_v6.len(),
            self.gateways.len(),
        ]
        .map(|n| n as u32)
    }

    /// Whether the plan fits the kernel maps' limits.
    fn check(&self) -> Result<(), PlanError> {
        check_limit("segments", self.segments.len(), limits::MAX_SEGMENTS)?;
        check_limit(
            "interfaces",
            self.vifs.len() + self.quarantined.len(),
            limits::MAX_VIFS,
        )?;
        check_limit("other links", self.links.len(), limits::MAX_LINKS)?;
        check_limit(
            "host addresses",
            self.host_addresses.len(),
            limits::MAX_HOST_ADDRS,
        )?;
        // An address lookup probes each prefix length in use (docs/design.md, "Classifying
        // an address"); IPv4 has 33 at most, IPv6 129.
        let mut v6_lengths = [false; 129];
        self.v6
            .iter()
            .map(|(n, _)| n.prefix_len())
            .chain(self.management_v6.iter().map(|(n, _)| n.prefix_len()))
            .chain(self.exposed_v6.iter().map(|(n, _)| n.prefix_len()))
            .chain(self.vifs.iter().flat_map(|v| {
                v.addresses.iter().filter_map(|n| match n {
                    IpNet::V6(n) => Some(n.prefix_len()),
                    IpNet::V4(_) => None,
                })
            }))
            .chain(
                self.host_addresses
                    .iter()
                    .chain(self.gateways.iter().map(|g| &g.address))
                    .filter(|a| a.is_ipv6())
                    .map(|_| 128),
            )
            .for_each(|len| v6_lengths[usize::from(len)] = true);
        check_limit(
            "distinct IPv6 prefix lengths",
            v6_lengths.iter().filter(|used| **used).count(),
            limits::MAX_PREFIX_LENGTHS as u32,
        )?;
        Ok(())
    }

    /// Each pair's rule set from the flows of `flows` (sorted by pair, each pair's
    /// services in policy order).
    fn flow_sets(&self, flows: &[((u32, u32), Service)]) -> Result<Vec<Flow>, PlanError> {
        let mut out = Vec::with_capacity(flows.len());
        let mut services: Vec<Service> = Vec::new();
        for (at, &((from, to), service)) in flows.iter().enumerate() {
            services.push(service);
            if flows
                .get(at + 1)
                .is_some_and(|(next, _)| *next == (from, to))
            {
                continue;
            }
            let set = rules(&services).map_err(|count| {
                let what = format!(
                    "the flows from {} to {}",
                    self.segment_label(from),
                    self.segment_label(to)
                );
                too_many_services(what, count)
            })?;
            services.clear();
            out.push(((from, to), set));
        }
        Ok(out)
    }

    /// Sets or clears [`SegmentInfo::FOREIGN_NEIGHBOURS`] of the segment at `at` by its
    /// neighbours (`neighbours` and `segment_index` made already).
    fn mark_foreign_neighbours(&mut self, at: usize) {
        let (id, tenant) = (self.segments[at].id, self.segments[at].tenant_id);
        let first = self.neighbours.partition_point(|&(a, _)| a < id);
        let foreign = self.neighbours[first..]
            .iter()
            .take_while(|&&(a, _)| a == id)
            .any(|&(_, b)| {
                self.position(b)
                    .is_some_and(|other| self.segments[other].tenant_id != tenant)
            });
        let flags = &mut self.segments[at].flags;
        if foreign {
            *flags |= SegmentInfo::FOREIGN_NEIGHBOURS;
        } else {
            *flags &= !SegmentInfo::FOREIGN_NEIGHBOURS;
        }
    }

    /// Adds a link of the host (links come in ifindex order) as what it is: a vif of the
    /// segment whose entry `owner` names it (quarantined if its kind cannot be enforced),
    /// quarantined if `vif_names` matches it, else the host's own link, an uplink for
    /// `uplink_for`.
    fn place_link(
        &mut self,
        link: &Link,
        owner: Option<(u32, &crate::policy::Interface)>,
        vif_names: &[InterfacePattern],
        mut uplink_for: Vec<u32>,
    ) {
        let quarantine = |why| QuarantinedVif {
            name: link.name.clone(),
            ifindex: link.ifindex,
            why,
        };
        if let Some((segment, interface)) = owner {
            if !VIF_KINDS.contains(&link.kind.as_str()) {
                self.quarantined
                    .push(quarantine(Quarantine::UnsupportedKind(link.kind.clone())));
                return;
            }
            self.vifs.push(ManagedVif {
                name: link.name.clone(),
                ifindex: link.ifindex,
                segment,
                mac: interface.mac.map(|m| m.0),
                addresses: interface.addresses.clone(),
                vlans: interface.vlans.clone(),
            });
        } else if vif_names.iter().any(|p| p.matches(&link.name)) {
            self.quarantined.push(quarantine(Quarantine::Unclassified));
        } else {
            uplink_for.sort_unstable();
            uplink_for.dedup();
            self.links.push(HostLink {
                name: link.name.clone(),
                ifindex: link.ifindex,
                uplink_for,
            });
        }
    }

    /// `tenant/segment` of a segment id.
    pub fn segment_label(&self, id: u32) -> String {
        match self.segment(id) {
            Some(s) => format!("{}/{}", s.tenant, s.name),
            None => format!("#{id}"),
        }
    }

    /// The segment with id `id`.
    pub fn segment(&self, id: u32) -> Option<&SegmentRef> {
        self.position(id).map(|at| &self.segments[at])
    }

    /// Where in `segments` (policy order) the segment with id `id` is.
    pub fn position(&self, id: u32) -> Option<usize> {
        self.segment_index.get(&id).map(|&at| at as usize)
    }

    /// Builds [`Plan::segment_index`] from `segments`: a plan made otherwise than by
    /// [`Plan::new`] calls it after changing `segments`.
    pub fn index_segments(&mut self) {
        self.segment_index = self
            .segments
            .iter()
            .enumerate()
            .map(|(at, s)| (s.id, at as u32))
            .collect();
    }
}

/// The segment pairs joined by a flow in either direction, both orders, sorted.
fn neighbours(flows: &[Flow]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = flows
        .iter()
        .flat_map(|&((from, to), _)| [(from, to), (to, from)])
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The ids of a list of names (each `[tenant, segment]`, or `[tenant, ""]` for a tenant),
/// in the list's order: a function of the set of names alone, not of their order or of
/// the names around them, so that the kernel entries of what a reload keeps are the same
/// before and after it. Each name's id is its FNV-1a hash folded into 1..2^31 (never 0,
/// never `AddrClass::NO_SEGMENT`); names whose hashes collide take the next free ids, in
/// the order of (hash, name), so a collision moves at most the names of that collision.
/// At 100 000 segments about two pairs collide.
pub fn stable_ids<'a>(names: impl Iterator<Item = [&'a str; 2]>) -> Vec<u32> {
    stable_ids_checked(names).0
}

/// The ids' space: 1..2^31.
const ID_SPACE: u32 = 1 << 31;

/// The id a name takes when no other name's hash is its own ([`stable_ids`]): its FNV-1a
/// hash folded into 1..2^31.
pub(crate) fn name_id(name: [&str; 2]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in name.iter().enumerate() {
        if i > 0 {
            // A separator no name contains: ["ab", "c"] and ["a", "bc"] differ.
            h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3);
        }
        for b in part.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    ((h >> 32) ^ h) as u32 % (ID_SPACE - 1) + 1
}

/// [`stable_ids`], and whether a name's id is below its hash (its run of colliding names
/// went past the top of the space, and it took the lowest free id).
pub(crate) fn stable_ids_checked<'a>(
    names: impl Iterator<Item = [&'a str; 2]>,
) -> (Vec<u32>, bool) {
    let names: Vec<[&str; 2]> = names.collect();
    // (hash, index), ordered by hash, then by name where hashes are equal.
    let mut order: Vec<(u32, u32)> = names
        .iter()
        .enumerate()
        .map(|(at, name)| (name_id(*name), at as u32))
        .collect();
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| names[a.1 as usize].cmp(&names[b.1 as usize]))
    });
    let ids = assign_ids(&order, ID_SPACE);
    let wrapped = order.iter().any(|&(hash, at)| ids[at as usize] < hash);
    (ids, wrapped)
}

/// The ids of `order`'s entries ((hash, index), in the order of [`stable_ids`]), hashes
/// in 1..`space`: in that order each takes the first free id from its hash on. Ids are
/// taken in ascending order, so that is its hash or the one after the last taken; past
/// the top of the space, the lowest free ids from 1.
pub(crate) fn assign_ids(order: &[(u32, u32)], space: u32) -> Vec<u32> {
    let mut ids = vec![0; order.len()];
    let mut last = 0u32;
    let mut over = Vec::new();
    for &(hash, at) in order {
        if last >= space - 1 {
            over.push(at);
            continue;
        }
        last = hash.max(last + 1);
        ids[at as usize] = last;
    }
    if !over.is_empty() {
        let mut taken: Vec<u32> = ids.iter().copied().filter(|&id| id != 0).collect();
        taken.sort_unstable();
        let (mut candidate, mut next) = (1u32, 0usize);
        for at in over {
            while next < taken.len() && taken[next] <= candidate {
                if taken[next] == candidate {
                    candidate += 1;
                }
                next += 1;
            }
            ids[at as usize] = candidate;
            candidate += 1;
        }
    }
    ids
}

mod update;

/// How many vifs of a plan declared a MAC, and addresses.
pub(crate) struct Declared {
    macs: usize,
    addresses: usize,
}

impl Declared {
    pub(crate) fn of(plan: &Plan) -> Declared {
        Declared {
            macs: plan.vifs.iter().filter(|v| v.mac.is_some()).count(),
            addresses: plan.vifs.iter().filter(|v| !v.addresses.is_empty()).count(),
        }
    }
}

/// The [`VifInfo`] flags of a vif: what it declared, and whether others declared anything
/// it must keep off.
pub(crate) fn vif_flags(vif: &ManagedVif, declared: &Declared) -> u32 {
    let mut flags = 0;
    if declared.macs > usize::from(vif.mac.is_some()) {
        flags |= VifInfo::OTHERS_DECLARED_MACS;
    }
    if declared.addresses > usize::from(!vif.addresses.is_empty()) {
        flags |= VifInfo::OTHERS_DECLARED_ADDRESSES;
    }
    if vif.mac.is_some() {
        flags |= VifInfo::HAS_MAC;
    }
    // Declared addresses are the only ones, link-local or not: a vif that declares only
    // a link-local address may send from no address of its segment (policy.md).
    if !vif.addresses.is_empty() {
        flags |= VifInfo::HAS_ADDRESSES;
    }
    if vif.addresses.iter().any(is_link_local) {
        flags |= VifInfo::HAS_LINK_LOCAL;
    }
    flags
}

/// An IPv6 link-local prefix (inside fe80::/10).
fn is_link_local(net: &IpNet) -> bool {
    match net {
        IpNet::V6(n) => n.network().segments()[0] & 0xffc0 == 0xfe80,
        IpNet::V4(_) => false,
    }
}

fn segment_flags(segment: &crate::policy::Segment) -> u32 {
    let mut flags = 0;
    if segment.egress == Egress::Allow {
        flags |= SegmentInfo::EGRESS_ALLOW;
    }
    if segment.mode == Mode::Audit {
        flags |= SegmentInfo::AUDIT;
    }
    if segment.allow_router_advertisements {
        flags |= SegmentInfo::ALLOW_RA;
    }
    if segment.allow_dhcp_server {
        flags |= SegmentInfo::ALLOW_DHCP_SERVER;
    }
    flags
}

/// The kernel form of a service.
fn rule(service: &Service) -> Rule {
    let protocol = match service.protocol {
        Protocol::Tcp => protocol::TCP,
        Protocol::Udp => protocol::UDP,
        Protocol::Icmp => protocol::ICMP,
        Protocol::Any => protocol::ANY,
    };
    let (first_port, last_port) = match service.ports {
        Some(range) => (range.first, range.last),
        None => (0, u16::MAX),
    };
    Rule {
        protocol,
        _pad: 0,
        first_port,
        last_port,
        _pad2: 0,
    }
}

/// A kernel rule set for `services`; an empty list means every protocol and port. `Err`
/// holds how many distinct services there are when a rule set cannot hold them: the
/// callers name what has them only then.
fn rules(services: &[Service]) -> Result<RuleSet, usize> {
    let mut set = RuleSet::default();
    if services.is_empty() {
        set.flags = RuleSet::ALL;
        return Ok(set);
    }
    // Most sets are small: sorted in place in the set itself, without a list.
    if services.len() <= limits::MAX_RULES {
        for (slot, service) in set.rules.iter_mut().zip(services) {
            *slot = rule(service);
        }
        let used = &mut set.rules[..services.len()];
        used.sort_unstable_by_key(|r| (r.protocol, r.first_port, r.last_port));
        let mut count = 0;
        for i in 0..used.len() {
            if count == 0 || used[i] != used[count - 1] {
                used[count] = used[i];
                count += 1;
            }
        }
        for stale in &mut set.rules[count..] {
            *stale = Rule::default();
        }
        set.count = count as u32;
        return Ok(set);
    }
    let mut rules: Vec<Rule> = services.iter().map(rule).collect();
    rules.sort_by_key(|r| (r.protocol, r.first_port, r.last_port));
    rules.dedup();
    if rules.len() > limits::MAX_RULES {
        return Err(rules.len());
    }
    set.count = rules.len() as u32;
    set.rules[..rules.len()].copy_from_slice(&rules);
    Ok(set)
}

fn too_many_services(what: String, count: usize) -> PlanError {
    PlanError::TooManyServices {
        what,
        count,
        limit: limits::MAX_RULES,
    }
}

/// The rule set of services a gateway allows: an empty list allows none (unlike a
/// management prefix's, where it protects every service). `Err` as [`rules`].
fn allowed_services(services: &[Service]) -> Result<RuleSet, usize> {
    if services.is_empty() {
        return Ok(RuleSet::default());
    }
    rules(services)
}

/// For each distinct prefix, the rule set of every entry whose prefix contains it: the
/// kernel's longest-prefix match then finds all services that apply to an address.
/// An entry with no services stands for every protocol and port. Sorted by prefix.
///
/// The prefixes sorted, those containing one come before it, and a stack of them is the
/// chain of those containing the current one: linear, bar the services merged.
fn merge_over_containing<S: AsRef<[Service]>>(
    entries: &[(IpNet, S)],
    owner: impl Fn() -> String,
    kind: &str,
) -> Result<Vec<(IpNet, RuleSet)>, PlanError> {
    let mut sorted: Vec<&(IpNet, S)> = entries.iter().collect();
    sorted.sort_by_key(|(prefix, _)| *prefix);
    // Each distinct prefix with the services of its own entries; `None`: every service.
    let mut distinct: Vec<(IpNet, Option<Vec<Service>>)> = Vec::new();
    for (prefix, services) in sorted {
        let services = services.as_ref();
        let own = match distinct.last_mut() {
            Some((last, own)) if last == prefix => own,
            _ => {
                distinct.push((*prefix, Some(Vec::new())));
                &mut distinct.last_mut().expect("just pushed").1
            }
        };
        match (own.as_mut(), services.is_empty()) {
            (Some(_), true) => *own = None,
            (Some(own), false) => own.extend_from_slice(services),
            (None, _) => {}
        }
    }
    let mut out = Vec::with_capacity(distinct.len());
    // Indices into `distinct` of the prefixes that contain the current one.
    let mut open: Vec<usize> = Vec::new();
    let mut services: Vec<Service> = Vec::new();
    for (i, (prefix, own)) in distinct.iter().enumerate() {
        while let Some(&top) = open.last() {
            if distinct[top].0.contains(prefix) {
                break;
            }
            open.pop();
        }
        let covering = || open.iter().map(|&o| &distinct[o].1).chain([own]);
        let set = if covering().any(Option::is_none) {
            rules(&[]).expect("every service is one rule set")
        } else {
            services.clear();
            services.extend(covering().flatten().flatten());
            rules(&services).map_err(|count| {
                too_many_services(format!("{kind} {prefix} of {}", owner()), count)
            })?
        };
        out.push((*prefix, set));
        open.push(i);
    }
    Ok(out)
}

/// Which entries of which segments claim each link, found through an index of the links'
/// names rather than by matching every link against every entry.
struct Claims {
    /// For each link (in the order given), the (segment's position in the list given, 0
    /// for an exact-name entry and 1 for a pattern, position in the segment's
    /// `interfaces`) of every entry that matches it, sorted: the first is the one that
    /// applies.
    interfaces: Vec<Vec<(usize, u8, usize)>>,
    /// For each link, the segments (positions) that list it as an uplink, ascending, each
    /// once.
    uplinks: Vec<Vec<usize>>,
}

impl Claims {
    fn new(links: &[&Link], segments: &[(u32, &crate::policy::Segment)]) -> Claims {
        let names: HashMap<&str, Vec<usize>> =
            links
                .iter()
                .enumerate()
                .fold(HashMap::default(), |mut names, (l, link)| {
                    names.entry(link.name.as_str()).or_default().push(l);
                    names
                });
        let index = NameIndex::new(links.iter().map(|l| Term::Literal(&l.name)).collect());
        // The links a name or pattern matches: exact names by a hash lookup (the list
        // borrowed, not copied: most entries of a cloud's policy are names).
        let matching = |pattern: &crate::policy::InterfacePattern| -> Cow<'_, [usize]> {
            if pattern.is_glob() {
                Cow::Owned(index.overlapping(Term::Pattern(pattern.as_str())))
            } else {
                names
                    .get(pattern.as_str())
                    .map_or(Cow::Borrowed(&[][..]), |links| {
                        Cow::Borrowed(links.as_slice())
                    })
            }
        };
        let mut claims = Claims {
            interfaces: vec![Vec::new(); links.len()],
            uplinks: vec![Vec::new(); links.len()],
        };
        for (position, (_, segment)) in segments.iter().enumerate() {
            for (at, interface) in segment.interfaces.iter().enumerate() {
                let glob = u8::from(interface.is_glob());
                for &l in matching(&interface.pattern).iter() {
                    claims.interfaces[l].push((position, glob, at));
                }
            }
            for uplink in &segment.uplinks {
                for &l in matching(uplink).iter() {
                    claims.uplinks[l].push(position);
                }
            }
        }
        for list in &mut claims.interfaces {
            list.sort_unstable();
        }
        for list in &mut claims.uplinks {
            list.sort_unstable();
            list.dedup();
        }
        claims
    }
}

fn check_limit(what: &'static str, count: usize, limit: u32) -> Result<(), PlanError> {
    if count > limit as usize {
        return Err(PlanError::TooMany { what, count, limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::encode;
    use crate::policy;
    use isolator_common::{AddrClass, AddrV4Key, PairInfo, VifInfo, VifKey};
    use std::collections::BTreeMap;

    const POLICY: &str = r#"
version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: ["10.1.1.0/24", "fd00:1:1::/64"]
      - name: db
        interfaces: ["vacme-db1"]
        prefixes: ["10.1.2.0/24"]
  - name: globex
    segments:
      - name: web
        interfaces: ["vglobex-web?"]
        prefixes: ["10.2.1.0/24", "fd00:2:1::/64"]
"#;

    fn links(names: &[(&str, u32)]) -> Vec<Link> {
        names.iter().map(|(n, i)| Link::veth(n, *i)).collect()
    }

    fn plan(links_: &[(&str, u32)]) -> Plan {
        let policy = policy::parse(POLICY, "test.yaml").expect("test policy is valid");
        Plan::new(&policy, &links(links_)).expect("plan")
    }

    /// The id `plan` gives segment `label` (`tenant/segment`).
    fn id(plan: &Plan, label: &str) -> u32 {
        plan.segments
            .iter()
            .find(|s| format!("{}/{}", s.tenant, s.name) == label)
            .unwrap_or_else(|| panic!("no segment {label}"))
            .id
    }

    #[test]
    fn segments_are_listed_in_policy_order_with_their_tenants() {
        let plan = plan(&[]);
        let got: Vec<(&str, &str)> = plan
            .segments
            .iter()
            .map(|s| (&*s.tenant, &*s.name))
            .collect();
        assert_eq!(
            got,
            vec![("acme", "web"), ("acme", "db"), ("globex", "web")]
        );
        let ids: BTreeSet<u32> = plan.segments.iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), 3, "distinct ids: {:?}", plan.segments);
        assert!(ids.iter().all(|&id| id != 0 && id < 1 << 31), "{ids:?}");
        let (acme, globex) = (plan.segments[0].tenant_id, plan.segments[2].tenant_id);
        assert_eq!(plan.segments[1].tenant_id, acme);
        assert_ne!(acme, globex);
        for s in &plan.segments {
            assert_eq!(plan.segment(s.id), Some(s));
            assert_eq!(plan.segment_label(s.id), format!("{}/{}", s.tenant, s.name));
        }
    }

    /// Ids follow from the names alone: a plan of the policy with a segment and a tenant
    /// added before the others, and the tenants in another order, gives every segment
    /// and tenant it keeps the id it had; and names whose hashes collide still get
    /// distinct ids, whatever their order.
    #[test]
    fn ids_follow_from_the_names_not_from_the_order_or_the_names_around() {
        let before = plan(&[]);
        let grown = POLICY.replacen(
            "tenants:\n",
            "tenants:\n  - name: aardvark\n    segments:\n      - name: first\n        interfaces: [\"vaa*\"]\n        prefixes: [10.77.0.0/24]\n",
            1,
        );
        let grown = grown.replacen(
            "    segments:\n      - name: web\n",
            "    segments:\n      - name: new\n        interfaces: [\"vnew*\"]\n        prefixes: [10.78.0.0/24]\n      - name: web\n",
            1,
        );
        let grown = policy::parse(&grown, "grown.yaml").expect("valid");
        let mut reordered = grown.clone();
        reordered.tenants.reverse();
        for policy in [&grown, &reordered] {
            let after = Plan::new(policy, HostView::default()).expect("plan");
            assert_eq!(after.segments.len(), 5);
            for s in &before.segments {
                let label = format!("{}/{}", s.tenant, s.name);
                assert_eq!(id(&after, &label), s.id, "{label}");
                let kept = after.segment(s.id).expect("kept");
                assert_eq!(kept.tenant_id, s.tenant_id, "{label}'s tenant");
            }
        }
        // Collisions: the same name listed many times takes as many ids, each once, and
        // the same ones in any order.
        let names: Vec<[&str; 2]> = (0..64).map(|_| ["t", "s"]).collect();
        let ids = stable_ids(names.iter().copied());
        let distinct: BTreeSet<u32> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), 64);
        assert_eq!(ids.windows(2).filter(|w| w[1] == w[0] + 1).count(), 63);
        let mixed = stable_ids([["a", "b"], ["t", "s"], ["c", "d"]].into_iter());
        let alone = stable_ids([["c", "d"], ["a", "b"]].into_iter());
        assert_eq!((mixed[0], mixed[2]), (alone[1], alone[0]));
        assert_ne!(
            stable_ids([["ab", "c"]].into_iter()),
            stable_ids([["a", "bc"]].into_iter())
        );
        // At the top of the space (here 1..8): the ones past it take the lowest free
        // ids.
        let order = [(1, 3), (2, 4), (7, 0), (7, 1), (7, 2)];
        assert_eq!(super::assign_ids(&order, 8), vec![7, 3, 4, 1, 2]);
        let order = [(5, 0), (5, 1), (6, 2)];
        assert_eq!(super::assign_ids(&order, 1 << 31), vec![5, 6, 7]);
    }

    #[test]
    fn links_are_assigned_by_exact_name_and_glob_and_others_ignored() {
        let plan = plan(&[
            ("lo", 1),
            ("eth0", 2),
            ("vacme-web1", 7),
            ("vacme-web22", 5),
            ("vacme-db1", 6),
            ("vacme-db2", 9),
            ("vglobex-web1", 8),
            ("vglobex-web12", 10),
        ]);
        let got: Vec<(&str, u32, String)> = plan
            .vifs
            .iter()
            .map(|v| (v.name.as_str(), v.ifindex, plan.segment_label(v.segment)))
            .collect();
        let at = |name: &'static str, ifindex, label: &str| (name, ifindex, label.to_owned());
        assert_eq!(
            got,
            vec![
                at("vacme-web22", 5, "acme/web"),
                at("vacme-db1", 6, "acme/db"),
                at("vacme-web1", 7, "acme/web"),
                at("vglobex-web1", 8, "globex/web"),
            ]
        );
    }

    /// Links are matched to entries through an index: the exact-name entry wins over a
    /// pattern of its segment, an uplink trusted by several segments lists each once,
    /// and a link two segments claim is refused (a policy made by hand; validation rules
    /// it out).
    #[test]
    fn links_are_claimed_through_the_index_as_by_matching_each_entry() {
        let text = r#"
version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vweb*", {name: vweb-lb, vlans: [100]}]
        uplinks: ["vx*"]
      - name: db
        interfaces: ["vdb?"]
        uplinks: ["vx1", "vx*"]
  - name: globex
    segments:
      - name: api
        interfaces: ["vapi-*"]
        uplinks: ["vx2"]
"#;
        let mut policy = policy::parse(text, "claims.yaml").expect("valid");
        let host = links(&[
            ("vweb-lb", 1),
            ("vweb-1", 2),
            ("vdb1", 3),
            ("vdb12", 4),
            ("vx1", 5),
            ("vx2", 6),
            ("vx3", 7),
            ("eth0", 8),
            ("vapi-", 9),
        ]);
        let plan = Plan::new(&policy, &host).expect("plan");
        let vifs: Vec<(&str, String, Vec<u16>)> = plan
            .vifs
            .iter()
            .map(|v| {
                (
                    v.name.as_str(),
                    plan.segment_label(v.segment),
                    v.vlans.clone(),
                )
            })
            .collect();
        let vif = |name, label: &str, vlans| (name, label.to_owned(), vlans);
        assert_eq!(
            vifs,
            vec![
                vif("vweb-lb", "acme/web", vec![100]),
                vif("vweb-1", "acme/web", vec![]),
                vif("vdb1", "acme/db", vec![]),
                vif("vapi-", "globex/api", vec![]),
            ]
        );
        let others: Vec<(&str, Vec<u32>)> = plan
            .links
            .iter()
            .map(|l| (l.name.as_str(), l.uplink_for.clone()))
            .collect();
        let ids = |labels: &[&str]| {
            let mut ids: Vec<u32> = labels.iter().map(|l| id(&plan, l)).collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(
            others,
            vec![
                ("vdb12", vec![]),
                ("vx1", ids(&["acme/web", "acme/db"])),
                ("vx2", ids(&["acme/web", "acme/db", "globex/api"])),
                ("vx3", ids(&["acme/web", "acme/db"])),
                ("eth0", vec![]),
            ]
        );

        let db = policy.tenants[0].segments[1].interfaces[0].clone();
        std::sync::Arc::make_mut(&mut policy.tenants[1]).segments[0]
            .interfaces
            .push(db);
        assert_eq!(
            Plan::new(&policy, &host),
            Err(PlanError::AmbiguousLink {
                link: "vdb1".to_owned(),
                first: "acme/db".to_owned(),
                second: "globex/api".to_owned(),
            })
        );
    }

    #[test]
    fn map_entries_carry_the_generation() {
        let plan = plan(&[("vacme-db1", 6)]);
        let (web, db, globex) = (
            id(&plan, "acme/web"),
            id(&plan, "acme/db"),
            id(&plan, "globex/web"),
        );
        let (acme_t, globex_t) = (plan.segments[0].tenant_id, plan.segments[2].tenant_id);
        assert_eq!(
            encode(&plan, 1).vifs,
            vec![(
                VifKey {
                    generation: 1,
                    ifindex: 6
                },
                VifInfo {
                    segment: db,
                    flags: VifInfo::HAS_HOME | VifInfo::PRESENT,
                    mac: [0; 6],
                    _pad: [0; 2],
                    info: SegmentInfo {
                        tenant: acme_t,
                        flags: SegmentInfo::EGRESS_ALLOW,
                        ..SegmentInfo::default()
                    },
                    // Its segment's /24, and that entry's class.
                    home: [10, 1, 2, 0],
                    home_mask: u32::from_ne_bytes([255, 255, 255, 0]),
                    home_class: AddrClass {
                        segment: db,
                        tenant: acme_t,
                        ..AddrClass::OUTSIDE
                    },
                }
            )]
        );
        // VIF_SLOTS mirrors VIFS, at the slot of generation 1 (ifindex 6 is small).
        let entries = encode(&plan, 1);
        assert_eq!(
            entries.vif_slots,
            vec![(limits::VIF_SLOTS + 6, entries.vifs[0].1)]
        );
        let v4: Vec<(AddrV4Key, u32, u32)> = encode(&plan, 1)
            .addresses_v4
            .iter()
            .map(|(key, class)| (*key, class.segment, class.tenant))
            .collect();
        assert_eq!(
            v4,
            vec![
                (AddrV4Key::new(1, [10, 1, 1, 0], 24), web, acme_t),
                (AddrV4Key::new(1, [10, 1, 2, 0], 24), db, acme_t),
                (AddrV4Key::new(1, [10, 2, 1, 0], 24), globex, globex_t),
            ]
        );
        let entries = encode(&plan, 0);
        let v6 = &entries.addresses_v6;
        assert_eq!(v6.len(), 2);
        assert_eq!(v6[1].0.prefix_len(), 64);
        assert_eq!(v6[1].0.tag >> 8, 0);
        assert_eq!(&v6[1].0.addr[..6], &[0xfd, 0, 0, 2, 0, 1]);
        assert_eq!(v6[1].1.segment, globex);
        assert_eq!(entries.prefix_lengths[0].1.v4[..1], [24]);
        assert_eq!(entries.prefix_lengths[0].1.v4_count, 1);
        assert_eq!(entries.prefix_lengths[0].1.v6_count, 1);
    }

    /// What the kernel's probe finds for `addr`: the lengths in the order stored, a match
    /// without longer entries inside, or whose filter rules the address out, ends the
    /// search, the last match wins.
    fn class_of(entries: &crate::encode::Entries, addr: [u8; 4]) -> Option<AddrClass> {
        probe(entries, addr).0
    }

    /// [`class_of`], and how many lookups it took.
    fn probe(entries: &crate::encode::Entries, addr: [u8; 4]) -> (Option<AddrClass>, usize) {
        let lengths = &entries.prefix_lengths[0].1;
        let mut found = None;
        let mut probes = 0;
        for len in &lengths.v4[..lengths.v4_count as usize] {
            probes += 1;
            let key = AddrV4Key::new(entries.prefix_lengths[0].0, addr, *len);
            if let Some((_, class)) = entries.addresses_v4.iter().find(|(k, _)| *k == key) {
                found = Some(*class);
                if class.flags & AddrClass::LONGER == 0
                    || class.inside & isolator_common::inside_bit_v4(addr) == 0
                {
                    break;
                }
            }
        }
        (found, probes)
    }

    /// What a class says about an address, without what steers the probing.
    fn facts(mut class: AddrClass) -> AddrClass {
        class.flags &= !AddrClass::LONGER;
        class.inside = 0;
        class
    }

    /// A home entry answers only for addresses no longer entry holds, whichever order the
    /// lengths are probed in: with the longest first, the /24 itself is not marked for
    /// the /32 inside it, but its home copy is.
    #[test]
    fn a_home_entry_never_answers_for_an_address_a_longer_entry_holds() {
        let text = r#"
version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["d-aw*"]
        prefixes: ["10.1.1.0/24"]
        expose:
          - address: 10.1.1.10
            protocol: tcp
            ports: 443
          - address: 10.1.1.0/24
            protocol: icmp
"#;
        let policy = policy::parse(text, "home.yaml").expect("valid");
        let plan = Plan::new(&policy, &links(&[("d-aw1", 3)])).expect("plan");
        let entries = encode(&plan, 1);
        let lengths = &entries.prefix_lengths[0].1;
        assert_eq!(lengths.v4[..lengths.v4_count as usize], [32, 24]);
        let vif = entries.vifs[0].1;
        assert_eq!(vif.home, [10, 1, 1, 0]);
        assert!(
            vif.home_class_of([10, 1, 1, 10]).is_none(),
            "the exposed /32"
        );
        let mut answered = 0;
        for d in 0..=255 {
            let addr = [10, 1, 1, d];
            if let Some(class) = vif.home_class_of(addr) {
                answered += 1;
                assert_eq!(Some(facts(*class)), longest_of(&entries, addr).map(facts));
            }
        }
        assert!(answered >= 240, "{answered}");
    }

    /// A vif that declares no IPv4 address has its own segment's first IPv4 prefix as its
    /// home, however many prefixes the policy holds before and after it.
    #[test]
    fn a_vif_without_an_address_has_its_segments_first_ipv4_prefix_as_home() {
        let text = r#"
version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["d-aw*"]
        prefixes: ["10.1.1.0/24", "10.1.9.0/24"]
      - name: db
        interfaces: ["d-ad*"]
        prefixes: ["fd00:1:2::/64", "10.1.2.0/24", "10.1.3.0/24"]
      - name: logs
        interfaces: ["d-al*"]
        prefixes: ["fd00:1:4::/64"]
"#;
        let policy = policy::parse(text, "homes.yaml").expect("valid");
        let plan =
            Plan::new(&policy, &links(&[("d-aw1", 3), ("d-ad1", 4), ("d-al1", 5)])).expect("plan");
        let entries = encode(&plan, 0);
        let vif = |ifindex: u32| {
            entries
                .vifs
                .iter()
                .find(|(k, _)| k.ifindex == ifindex)
                .map(|(_, v)| *v)
                .expect("vif entry")
        };
        assert_eq!(vif(3).home, [10, 1, 1, 0]);
        assert_eq!(vif(4).home, [10, 1, 2, 0]);
        assert_eq!(vif(4).home_mask, u32::from_ne_bytes([255, 255, 255, 0]));
        assert_ne!(vif(4).flags & VifInfo::HAS_HOME, 0);
        assert_eq!(
            vif(5).flags & VifInfo::HAS_HOME,
            0,
            "no IPv4 prefix: no home"
        );
    }

    /// Equal rule sets are stored once and shared by index; different ones are not.
    #[test]
    fn equal_rule_sets_share_one_entry() {
        let text = r#"
version: 1
tenants:
  - name: acme
    flows:
      - {from: web, to: db, protocol: tcp, ports: 5432}
      - {from: db, to: logs, protocol: tcp, ports: 5432}
      - {from: web, to: logs, protocol: tcp, ports: 80}
    segments:
      - name: web
        prefixes: ["10.1.1.0/24"]
      - name: db
        prefixes: ["10.1.2.0/24"]
      - name: logs
        prefixes: ["10.1.3.0/24"]
"#;
        let policy = policy::parse(text, "sets.yaml").expect("valid");
        let plan = Plan::new(&policy, HostView::default()).expect("plan");
        let entries = encode(&plan, 0);
        let flow = |from: u32, to: u32| {
            entries
                .pairs
                .iter()
                .find(|(k, _)| k.from == from && k.to == to)
                .map(|(_, info)| (info.flags & PairInfo::FLOW != 0).then_some(info.flow))
                .expect("pair entry")
                .expect("a flow")
        };
        let (web, db, logs) = (
            id(&plan, "acme/web"),
            id(&plan, "acme/db"),
            id(&plan, "acme/logs"),
        );
        assert_eq!(flow(web, db), flow(db, logs));
        assert_ne!(flow(web, db), flow(web, logs));
        assert_eq!(entries.rulesets.len(), 2);
        // A set's id follows from its rules: a policy without the shared set's flows
        // keeps the other's id.
        let fewer = text
            .replace(
                "      - {from: web, to: db, protocol: tcp, ports: 5432}\n",
                "",
            )
            .replace(
                "      - {from: db, to: logs, protocol: tcp, ports: 5432}\n",
                "",
            );
        let fewer = policy::parse(&fewer, "fewer.yaml").expect("valid");
        let fewer = encode(&Plan::new(&fewer, HostView::default()).expect("plan"), 0);
        assert_eq!(fewer.rulesets.len(), 1);
        assert_eq!(fewer.rulesets[0].0.index, flow(web, logs));
    }

    /// The longest entry containing `addr`, by brute force over every entry.
    fn longest_of(entries: &crate::encode::Entries, addr: [u8; 4]) -> Option<AddrClass> {
        entries
            .addresses_v4
            .iter()
            .filter(|(k, _)| AddrV4Key::new(k.tag >> 8, addr, k.prefix_len()) == *k)
            .max_by_key(|(k, _)| k.prefix_len())
            .map(|(_, c)| *c)
    }

    /// The bench's shape: segment and management /24s, one exposed address, no
    /// declared ones.
    const FEW_LONG: &str = r#"
version: 1
management:
  - prefix: 192.168.100.0/24
tenants:
  - name: acme
    segments:
      - name: web
        prefixes: ["10.1.1.0/24"]
        expose:
          - address: 10.1.1.10
            protocol: tcp
            ports: 443
      - name: db
        prefixes: ["10.1.2.0/24"]
  - name: globex
    segments:
      - name: web
        prefixes: ["10.2.1.0/24"]
"#;

    #[test]
    fn the_probe_order_is_the_one_with_fewer_lookups() {
        // Mostly /24s: shortest first, one lookup for an address of db or globex.
        let policy = policy::parse(FEW_LONG, "few.yaml").expect("valid");
        let plan = Plan::new(&policy, HostView::default()).expect("plan");
        let entries = encode(&plan, 1);
        let lengths = &entries.prefix_lengths[0].1;
        assert_eq!(lengths.v4[..lengths.v4_count as usize], [24, 32]);
        for (a, b, c) in [(10, 1, 1), (10, 1, 2), (10, 2, 1), (192, 168, 100)] {
            for d in 0..=255 {
                let addr = [a, b, c, d];
                assert_eq!(class_of(&entries, addr), longest_of(&entries, addr));
            }
        }
        // web's /24 holds the exposed /32: its filter sends only the addresses that share
        // 10.1.1.10's bit on to the second lookup.
        assert_eq!(probe(&entries, [10, 1, 1, 10]).1, 2);
        assert_eq!(probe(&entries, [10, 1, 1, 200]).1, 1);
        let two = (0..=255)
            .filter(|d| probe(&entries, [10, 1, 1, *d]).1 == 2)
            .count();
        assert!(two <= 8, "{two} addresses of web's /24 need two lookups");
        // Mostly /32s (forty exposed addresses in one /24): the longest first, one lookup
        // for each of them.
        let mut text = String::from(
            "version: 1\ntenants:\n  - name: acme\n    segments:\n      - name: web\n        \
             prefixes: [\"10.1.1.0/24\"]\n        expose:\n",
        );
        for d in 1..=40 {
            text.push_str(&format!(
                "          - address: 10.1.1.{d}\n            protocol: tcp\n            ports: 443\n"
            ));
        }
        let policy = policy::parse(&text, "many.yaml").expect("valid");
        let entries = encode(&Plan::new(&policy, HostView::default()).expect("plan"), 1);
        let lengths = &entries.prefix_lengths[0].1;
        assert_eq!(lengths.v4[..lengths.v4_count as usize], [32, 24]);
        for d in 0..=255 {
            let addr = [10, 1, 1, d];
            let (class, probes) = probe(&entries, addr);
            assert_eq!(class, longest_of(&entries, addr), "{addr:?}");
            if (1..=40).contains(&d) {
                assert_eq!(probes, 1, "{addr:?}");
            }
        }
    }

    #[test]
    fn the_probe_finds_the_longest_entry() {
        let entries = encode(&full_plan(), 1);
        for addr in [
            [10, 1, 1, 10],
            [10, 1, 1, 11],
            [10, 1, 1, 200],
            [10, 2, 1, 7],
            [192, 168, 100, 9],
            [192, 168, 100, 200],
            [172, 16, 3, 4],
            [8, 8, 8, 8],
        ] {
            let probed = class_of(&entries, addr);
            assert!(probed.is_some() || addr == [8, 8, 8, 8], "{addr:?}");
            assert_eq!(probed, longest_of(&entries, addr), "{addr:?}");
        }
        // Every address of the prefixes where lengths nest (/24, /28, /32; /16, /24, /29).
        for (a, b, c) in [(10, 1, 1), (10, 2, 1), (192, 168, 100), (172, 16, 3)] {
            for d in 0..=255 {
                let addr = [a, b, c, d];
                assert_eq!(
                    class_of(&entries, addr),
                    longest_of(&entries, addr),
                    "{addr:?}"
                );
            }
        }
    }

    #[test]
    fn one_lookup_classifies_an_address_by_the_longest_prefix_of_every_kind() {
        let plan = full_plan();
        let entries = encode(&plan, 1);
        let rules_at = |index: u32| {
            entries
                .rulesets
                .iter()
                .find(|(k, _)| k.index == index && k.generation == 1)
                .map(|(_, set)| rules(set))
                .expect("the rule set an entry refers to exists")
        };
        // An exposed address inside an exposed /28 inside a segment: its own services
        // merged with the /28's, and the segment's place.
        let segment = |at: usize| (plan.segments[at].id, plan.segments[at].tenant_id);
        let exposed = class_of(&entries, [10, 1, 1, 10]).expect("classified");
        assert_eq!((exposed.segment, exposed.tenant), segment(0));
        assert_eq!(exposed.flags, AddrClass::EXPOSED);
        assert_eq!(
            rules_at(exposed.exposure),
            vec![(protocol::ICMP, 0, 65535), (protocol::TCP, 443, 443)]
        );
        let in_28 = class_of(&entries, [10, 1, 1, 11]).expect("classified");
        assert_eq!(
            in_28.flags & !AddrClass::LONGER,
            AddrClass::EXPOSED,
            "the /28"
        );
        assert_eq!(rules_at(in_28.exposure), vec![(protocol::ICMP, 0, 65535)]);
        // A set of one rule for every port (or one port) has the id that says it, the
        // programs judging by the id alone; the two-rule set has an id of the hash's range.
        assert!(exposed.exposure < RuleSet::INLINE);
        assert_eq!(
            RuleSet::inline_admits(in_28.exposure, protocol::ICMP, None),
            Some(true)
        );
        assert_eq!(
            RuleSet::inline_admits(in_28.exposure, protocol::TCP, Some(443)),
            Some(false)
        );
        let plain = class_of(&entries, [10, 1, 1, 200]).expect("classified");
        assert_eq!(
            (plain.segment, plain.flags),
            (segment(0).0, AddrClass::LONGER),
            "the /24, which holds longer entries"
        );
        assert_ne!(plain.inside, 0, "the /24's filter of what lies inside");
        let other_tenant = class_of(&entries, [10, 2, 1, 7]).expect("classified");
        assert_eq!((other_tenant.segment, other_tenant.tenant), segment(2));
        // Management: the /29 inside the /24 protects everything too; the /16 only its
        // services.
        let all = class_of(&entries, [192, 168, 100, 9]).expect("classified");
        assert_eq!(all.flags, AddrClass::MANAGEMENT | AddrClass::MANAGEMENT_ALL);
        assert_eq!(all.segment, AddrClass::NO_SEGMENT);
        let some = class_of(&entries, [172, 16, 3, 4]).expect("classified");
        assert_eq!(some.flags, AddrClass::MANAGEMENT);
        assert_eq!(
            rules_at(some.management),
            vec![(protocol::TCP, 22, 22), (protocol::UDP, 53, 54)]
        );
        assert_eq!(class_of(&entries, [8, 8, 8, 8]), None, "outside everything");
        // Identical rule sets are stored once.
        let mut sets: Vec<Rules> = entries.rulesets.iter().map(|(_, s)| rules(s)).collect();
        let count = sets.len();
        sets.sort();
        sets.dedup();
        assert_eq!(sets.len(), count);
    }

    #[test]
    fn too_many_objects_is_an_error_not_a_truncation() {
        let err = check_limit("IPv4 prefixes", 20, 10).unwrap_err();
        assert_eq!(
            err,
            PlanError::TooMany {
                what: "IPv4 prefixes",
                count: 20,
                limit: 10
            }
        );
        assert!(err.to_string().contains("at most 10"));
        assert!(check_limit("x", 10, 10).is_ok());
    }

    const FULL: &str = r#"
version: 1
connection_tracking:
  tcp_idle_seconds: 100
  udp_idle_seconds: 20
management:
  - prefix: 192.168.100.0/24
  - prefix: 192.168.100.8/29
    services:
      - protocol: tcp
        ports: 22
  - prefix: 172.16.0.0/16
    services:
      - protocol: tcp
        ports: 22
      - protocol: udp
        ports: "53-54"
tenants:
  - name: acme
    flows:
      - from: web
        to: db
        protocol: tcp
        ports: 5432
      - from: web
        to: db
        protocol: icmp
      - from: web
        to: globex/web
        protocol: tcp
        ports: "8000-8080"
    segments:
      - name: web
        egress: deny
        mode: audit
        interfaces: ["vacme-web*"]
        prefixes: ["10.1.1.0/24", "fd00:1:1::/64"]
        expose:
          - address: 10.1.1.0/28
            protocol: icmp
          - address: 10.1.1.10
            protocol: tcp
            ports: 443
          - address: fd00:1:1::10
            protocol: udp
      - name: db
        interfaces: ["vacme-db1"]
        prefixes: ["10.1.2.0/24"]
  - name: globex
    segments:
      - name: web
        interfaces: ["vglobex-web?"]
        prefixes: ["10.2.1.0/24"]
"#;

    fn full_plan() -> Plan {
        let policy = policy::parse(FULL, "full.yaml").expect("the full test policy is valid");
        Plan::new(&policy, HostView::default()).expect("plan")
    }

    /// (protocol, first port, last port) of each rule.
    type Rules = Vec<(u8, u16, u16)>;

    fn rules(set: &RuleSet) -> Rules {
        set.rules[..set.count as usize]
            .iter()
            .map(|r| (r.protocol, r.first_port, r.last_port))
            .collect()
    }

    #[test]
    fn segment_flags_follow_egress_mode_and_flows_to_other_tenants() {
        let plan = full_plan();
        assert_eq!(
            plan.segments[0].flags,
            SegmentInfo::AUDIT | SegmentInfo::FOREIGN_NEIGHBOURS,
            "acme/web: deny, audit, a flow to globex/web"
        );
        assert_eq!(
            plan.segments[1].flags,
            SegmentInfo::EGRESS_ALLOW,
            "acme/db: defaults; its only flow is from its own tenant's web"
        );
        let globex_web = plan
            .segments
            .iter()
            .find(|s| (&*s.tenant, &*s.name) == ("globex", "web"))
            .expect("globex/web");
        assert_ne!(
            globex_web.flags & SegmentInfo::FOREIGN_NEIGHBOURS,
            0,
            "the receiving end of acme/web's flow is joined to another tenant too"
        );
        assert_eq!(plan.settings.tcp_idle_ns, 100 * NANOS);
        assert_eq!(plan.settings.udp_idle_ns, 20 * NANOS);
        assert_eq!(plan.settings.tcp_closing_ns, 10 * NANOS, "default");
        assert_eq!(plan.settings.icmp_idle_ns, 30 * NANOS, "default");
    }

    #[test]
    fn exposures_are_merged_over_containing_prefixes() {
        let plan = full_plan();
        let v4: Vec<(String, Rules)> = plan
            .exposed_v4
            .iter()
            .map(|(n, set)| (n.to_string(), rules(set)))
            .collect();
        assert_eq!(
            v4,
            vec![
                ("10.1.1.0/28".to_string(), vec![(protocol::ICMP, 0, 65535)]),
                (
                    "10.1.1.10/32".to_string(),
                    vec![(protocol::ICMP, 0, 65535), (protocol::TCP, 443, 443)]
                ),
            ]
        );
        assert_eq!(plan.exposed_v6.len(), 1);
        assert_eq!(plan.exposed_v6[0].0.to_string(), "fd00:1:1::10/128");
        assert_eq!(
            rules(&plan.exposed_v6[0].1),
            vec![(protocol::UDP, 0, 65535)]
        );
    }

    #[test]
    fn management_without_services_protects_everything_even_under_a_narrower_entry() {
        let plan = full_plan();
        let by_prefix = |p: &str| {
            plan.management_v4
                .iter()
                .find(|(n, _)| n.to_string() == p)
                .map(|(_, set)| *set)
                .unwrap_or_else(|| panic!("{p} missing"))
        };
        assert_eq!(by_prefix("192.168.100.0/24").flags, RuleSet::ALL);
        assert_eq!(by_prefix("192.168.100.8/29").flags, RuleSet::ALL);
        let narrow = by_prefix("172.16.0.0/16");
        assert_eq!(narrow.flags, 0);
        assert_eq!(
            rules(&narrow),
            vec![(protocol::TCP, 22, 22), (protocol::UDP, 53, 54)]
        );
    }

    #[test]
    fn flows_are_grouped_per_segment_pair_and_neighbours_go_both_ways() {
        let plan = full_plan();
        let (a, b, c) = (
            plan.segments[0].id,
            plan.segments[1].id,
            plan.segments[2].id,
        );
        let flows: BTreeMap<(u32, u32), Rules> =
            plan.flows.iter().map(|(k, set)| (*k, rules(set))).collect();
        assert_eq!(
            flows,
            BTreeMap::from([
                (
                    (a, b),
                    vec![(protocol::ICMP, 0, 65535), (protocol::TCP, 5432, 5432)]
                ),
                ((a, c), vec![(protocol::TCP, 8000, 8080)]),
            ])
        );
        let mut neighbours = vec![(a, b), (a, c), (b, a), (c, a)];
        neighbours.sort_unstable();
        assert_eq!(plan.neighbours, neighbours);
        let entries = encode(&plan, 1);
        let pairs: BTreeMap<(u32, u32), PairInfo> = entries
            .pairs
            .iter()
            .map(|(k, info)| {
                assert_eq!(k.generation, 1);
                ((k.from, k.to), *info)
            })
            .collect();
        let flags: Vec<((u32, u32), u32)> = pairs.iter().map(|(k, i)| (*k, i.flags)).collect();
        let mut expected = vec![
            ((a, b), PairInfo::FLOW),
            ((a, c), PairInfo::FLOW),
            ((b, a), PairInfo::BACK),
            ((c, a), PairInfo::BACK),
        ];
        expected.sort_unstable();
        assert_eq!(flags, expected);
        // Each order's entry carries the other's flow too, with the same rule set.
        assert_eq!(pairs[&(a, c)].flow, pairs[&(c, a)].back);
        assert_eq!(pairs[&(a, b)].flow, pairs[&(b, a)].back);
        assert_eq!(
            pairs[&(c, a)].back_summary,
            isolator_common::Summary {
                protocols: isolator_common::Summary::TCP,
                portless: 0,
                first_port: 8000,
                last_port: 8080,
                _pad: 0,
            }
        );
        let flow = pairs[&(a, c)].flow;
        let set = entries
            .rulesets
            .iter()
            .find(|(k, _)| k.index == flow)
            .expect("the flow's rule set");
        assert_eq!(rules(&set.1), vec![(protocol::TCP, 8000, 8080)]);
    }

    #[test]
    fn a_vif_entry_unites_the_flows_out_of_and_into_its_segment() {
        let mut plan = full_plan();
        let (a, b, c) = (
            plan.segments[0].id,
            plan.segments[1].id,
            plan.segments[2].id,
        );
        for (ifindex, segment) in [(11, a), (12, b), (13, c)] {
            plan.vifs.push(ManagedVif {
                name: format!("v{ifindex}"),
                ifindex,
                segment,
                ..ManagedVif::default()
            });
        }
        let entries = encode(&plan, 1);
        let info = |ifindex: u32| {
            entries
                .vifs
                .iter()
                .find(|(k, _)| k.ifindex == ifindex)
                .map(|(_, v)| v.info)
                .expect("the vif's entry")
        };
        let summary = |protocols, portless, first_port, last_port| isolator_common::Summary {
            protocols,
            portless,
            first_port,
            last_port,
            _pad: 0,
        };
        use isolator_common::Summary as S;
        // a -> b: ICMP and TCP 5432; a -> c: TCP 8000-8080. Nothing comes into a.
        assert_eq!(info(11).flows_out, summary(S::ICMP | S::TCP, 1, 0, 65535));
        assert_eq!(info(11).flows_in, S::default());
        assert_eq!(info(12).flows_out, S::default());
        assert_eq!(info(12).flows_in, summary(S::ICMP | S::TCP, 1, 0, 65535));
        assert_eq!(info(13).flows_in, summary(S::TCP, 0, 8000, 8080));
        // What c's VMs send to another segment: only a reply from 8000-8080 may belong to
        // a flow (the short way asks the pair only then).
        let c_info = info(13);
        let asked = |src_port: u16| {
            c_info.flows_out.may_admit(protocol::TCP, Some(22))
                || c_info.flows_in.may_admit(protocol::TCP, Some(src_port))
        };
        assert!(asked(8080));
        assert!(!asked(40000));
    }

    #[test]
    fn more_services_than_a_rule_set_holds_is_an_error() {
        let services: Vec<Service> = (1..=(limits::MAX_RULES as u16 + 1))
            .map(|port| Service {
                protocol: Protocol::Tcp,
                ports: Some(crate::policy::PortRange {
                    first: port,
                    last: port,
                }),
            })
            .collect();
        assert!(matches!(super::rules(&services), Err(17)));
        assert!(super::rules(&services[..limits::MAX_RULES]).is_ok());
        // More services than rules, but duplicates: one rule each, in order.
        let mut doubled: Vec<Service> = services[..9].iter().rev().copied().collect();
        doubled.extend_from_slice(&services[..9]);
        let set = super::rules(&doubled).expect("9 distinct services");
        assert_eq!(set, super::rules(&services[..9]).expect("9 services"));
        assert_eq!(set.count, 9);
        assert!(
            set.rules[..9]
                .windows(2)
                .all(|w| w[0].first_port < w[1].first_port)
        );
        // Within a set's room: sorted, each once, the rest of the set empty.
        let few = [services[3], Service::ANY, services[1], services[3]];
        let set = super::rules(&few).expect("3 distinct services");
        assert_eq!(set.count, 3);
        let ports: Vec<(u8, u16)> = set.rules[..3]
            .iter()
            .map(|r| (r.protocol, r.first_port))
            .collect();
        assert_eq!(
            ports,
            vec![(protocol::TCP, 2), (protocol::TCP, 4), (protocol::ANY, 0)]
        );
        assert!(set.rules[3..].iter().all(|r| *r == Rule::default()));
    }

    #[test]
    fn declared_identities_and_guard_options_reach_the_kernel_entries() {
        let text = r#"
version: 1
tenants:
  - name: acme
    segments:
      - name: web
        allow_router_advertisements: true
        allow_dhcp_server: true
        prefixes: ["10.1.1.0/24", "fd00:1:1::/64"]
        interfaces:
          - "vweb*"
          - name: vweb-lb
            mac: "52:54:00:12:34:56"
            addresses: ["10.1.1.10", "10.1.1.64/28", "fd00:1:1::10", "fe80::10"]
            vlans: [200, 100]
"#;
        let policy = policy::parse(text, "id.yaml").expect("valid");
        let plan = Plan::new(&policy, &links(&[("vweb-lb", 4), ("vweb-1", 5)])).expect("plan");
        assert_eq!(
            plan.segments[0].flags,
            SegmentInfo::EGRESS_ALLOW | SegmentInfo::ALLOW_RA | SegmentInfo::ALLOW_DHCP_SERVER
        );
        let lb = &plan.vifs[0];
        assert_eq!(lb.name, "vweb-lb");
        assert_eq!(lb.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(lb.vlans, vec![100, 200]);
        let entries = encode(&plan, 1);
        let (key, info) = entries.vifs[0];
        assert_eq!(key.ifindex, 4);
        assert_eq!(
            info.flags,
            VifInfo::HAS_MAC
                | VifInfo::HAS_ADDRESSES
                | VifInfo::HAS_LINK_LOCAL
                | VifInfo::HAS_HOME
                | VifInfo::PRESENT
        );
        assert_eq!(info.mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        // Its home is its first declared IPv4 address.
        assert_eq!(
            (info.home, info.home_mask),
            ([10, 1, 1, 10], u32::MAX),
            "vweb-lb's home"
        );
        let plain = entries.vifs[1].1;
        assert_eq!(
            plain.flags,
            VifInfo::OTHERS_DECLARED_MACS
                | VifInfo::OTHERS_DECLARED_ADDRESSES
                | VifInfo::HAS_HOME
                | VifInfo::PRESENT,
            "a pattern entry declares nothing, and must keep off what vweb-lb declared"
        );
        // vweb-1's home is its segment's /24, which holds what vweb-lb declared.
        assert_eq!(
            (plain.home, plain.home_mask),
            ([10, 1, 1, 0], u32::from_ne_bytes([255, 255, 255, 0]))
        );
        // Wherever the home entry answers, it answers what the probe finds; and it
        // answers for most of the /24 (not for what vweb-lb declared).
        for (_, vif) in &entries.vifs {
            let mut answered = 0;
            for d in 0..=255u8 {
                let addr = [10, 1, 1, d];
                if let Some(class) = vif.home_class_of(addr) {
                    answered += 1;
                    assert_eq!(Some(facts(*class)), longest_of(&entries, addr).map(facts));
                    assert_eq!(Some(facts(*class)), class_of(&entries, addr).map(facts));
                }
            }
            assert!(answered >= 1, "{vif:?}");
            if vif.home_mask != u32::MAX {
                // The /24's filter holds 17 bits (the /28 and the /32): about a quarter of
                // its addresses go on to a lookup.
                assert!(
                    answered >= 150,
                    "the /24's home answered for {answered} addresses"
                );
                assert!(
                    vif.home_class_of([10, 1, 1, 70]).is_none(),
                    "declared by vweb-lb"
                );
            }
        }

        let vlans: Vec<(u32, u16)> = encode(&plan, 0)
            .vif_vlans
            .iter()
            .map(|(k, _)| (k.ifindex, k.vlan))
            .collect();
        assert_eq!(vlans, vec![(4, 100), (4, 200)]);

        // Reserved for vweb-lb: its MAC and addresses, by generation, owned by ifindex 4.
        let macs = &entries.declared_macs;
        assert_eq!(macs.len(), 1);
        assert_eq!(
            (macs[0].0.generation, macs[0].0.mac, macs[0].1),
            (1, [0x52, 0x54, 0, 0x12, 0x34, 0x56], 4)
        );
        let owned = |addr| class_of(&entries, addr).map(|c| (c.flags, c.owner, c.segment));
        let web = id(&plan, "acme/web");
        assert_eq!(
            owned([10, 1, 1, 10]),
            Some((AddrClass::DECLARED, 4, web)),
            "declared by vweb-lb, in its segment"
        );
        assert_eq!(owned([10, 1, 1, 70]), Some((AddrClass::DECLARED, 4, web)));
        assert_eq!(
            owned([10, 1, 1, 11]),
            Some((AddrClass::LONGER, 0, web)),
            "anybody's in web (whose /24 holds the declared ones)"
        );
        let v6: Vec<(u8, u32)> = encode(&plan, 0)
            .addresses_v6
            .iter()
            .filter(|(_, class)| class.flags & AddrClass::DECLARED != 0)
            .map(|(key, class)| (key.prefix_len(), class.owner))
            .collect();
        assert_eq!(v6, vec![(128, 4), (128, 4)], "fd00:1:1::10 and fe80::10");
    }
}
