//! The reference model of the verdict: what `docs/design.md` says the kernel programs
//! decide about one frame, as a pure function of the validated policy, the host's links
//! and addresses, the vif, the direction and the frame's bytes.
//!
//! It is written from the documents (design.md's numbered steps, policy.md's rules), not
//! from the compiled maps: it never calls `compile` or `encode`, so a bug in compiling
//! the policy into map entries shows as a disagreement with the kernel. The differential
//! test (`isolator-user/tests/verdicts/differential.rs`) holds the loaded programs to it;
//! verification and `explain` are meant to reuse it. (It takes the host as
//! [`HostView`], the input `compile` takes too, and nothing `compile` produces.)
//!
//! Where the differential test showed that the documents left a case unsaid, and the
//! kernel's answer was the sound one, the model follows the kernel and design.md was
//! corrected; each such case is a fixed row of the differential test, marked "found by
//! the differential test" here too.
//!
//! What it covers: identifying the vif (quarantined, unmanaged), the parser's refusals
//! ([`frame`]), the source guard (VLAN, MAC, addresses, ARP, ND, router advertisements,
//! DHCP servers), management and loopback, address resolution, the host and gateways,
//! link-scope housekeeping, segments, exposures, flows, egress modes, the sender of a
//! delivered frame (vifs, trusted uplinks, the host, unclassified links), and audit mode.
//!
//! What it does not cover (the generator of the differential test leaves these out):
//! - **state**: it is stateless. Connection tracking (step 7 on ingress, 6 on egress:
//!   replies, ICMP errors about a connection, the host's own connections through a
//!   gateway) is not modelled: every frame is judged as if no connection were known. A
//!   later fragment is judged as one whose first fragment never passed (`fragment`).
//! - ICMP errors are judged as ordinary ICMP (their quoted packet is not read).
//! - the `isolator_tags` program (VLAN tags in offload metadata).
//! - kernel faults (full counter or state maps).
//! - link kinds: a link a segment names is taken as a supported vif if its kind is in
//!   [`VIF_KINDS`], else quarantined; the lab only has veths.

pub mod frame;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
pub use isolator_common::verdict::Verdict;

use crate::compile::{HostView, VIF_KINDS};
use crate::policy::{Egress, Mode, Policy, Protocol, Segment, Service, Tenant};
use frame::{Frame, Ip, L3, L4, icmp6};

/// Which program judges the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// XDP on the vif: the VM behind it sends the frame.
    Ingress,
    /// TC egress on the vif: the frame is delivered to the VM behind it, having entered
    /// the host through the link with this ifindex (0: the host's own stack).
    Egress { entered: u32 },
}

/// What the model decides: the verdict, and whether a segment in audit mode counted it
/// (an auditable drop that passes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Judgement {
    pub verdict: Verdict,
    pub audited: bool,
}

impl Judgement {
    /// Whether the frame goes on.
    pub fn passes(self) -> bool {
        self.verdict == Verdict::Pass || self.audited
    }
}

impl std::fmt::Display for Judgement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.verdict.label(), self.audited) {
            (None, _) => f.write_str("pass"),
            (Some(reason), false) => write!(f, "drop {reason}"),
            (Some(reason), true) => write!(f, "pass, audited {reason}"),
        }
    }
}

/// An entry of the policy that decided a verdict (for `isolator explain`), by its indexes
/// in the [`Policy`]: `tenant` into `tenants`, `segment` into that tenant's `segments`,
/// `index` into the list named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cited {
    /// A segment: the frame's sender or receiver (what a cross-segment or within-segment
    /// verdict is about).
    Segment { tenant: usize, segment: usize },
    /// An exposed endpoint that admitted the frame.
    Exposure {
        tenant: usize,
        segment: usize,
        index: usize,
    },
    /// A flow of the tenant that admitted the frame.
    Flow { tenant: usize, index: usize },
    /// A management prefix that protects the destination.
    Management { index: usize },
    /// A gateway of the sender's segment that the frame is for.
    Gateway {
        tenant: usize,
        segment: usize,
        index: usize,
    },
    /// The sender's segment's `egress` setting.
    Egress { tenant: usize, segment: usize },
}

/// The verdict on `frame` crossing the vif with ifindex `vif` in `direction`, under
/// `policy` on a host with the links and addresses of `host`.
pub fn verdict(
    policy: &Policy,
    host: &HostView,
    vif: u32,
    direction: Direction,
    frame: &[u8],
) -> Judgement {
    explain(policy, host, vif, direction, frame).0
}

/// [`verdict`], and the policy entries that decided it (in the order the steps consulted
/// them; empty where no entry did: a guard, the parser, an unmanaged vif).
pub fn explain(
    policy: &Policy,
    host: &HostView,
    vif: u32,
    direction: Direction,
    frame: &[u8],
) -> (Judgement, Vec<Cited>) {
    let world = World::new(policy, host);
    let judgement = world.judge(vif, direction, frame);
    (judgement, world.cited.take())
}

impl World<'_> {
    fn judge(&self, vif: u32, direction: Direction, frame: &[u8]) -> Judgement {
        let world = self;
        let Some(me) = world.vif(vif) else {
            return enforced(Verdict::NoPolicy);
        };
        let Some(me) = me else {
            return enforced(Verdict::UnknownInterface);
        };
        let segment = world.segments[me.segment];
        let decided = frame::parse(frame).and_then(|frame| match direction {
            Direction::Ingress => world.ingress(&me, &frame),
            Direction::Egress { entered } => world.egress(&me, entered, &frame),
        });
        let verdict = match decided {
            Ok(()) => Verdict::Pass,
            Err(v) => v,
        };
        Judgement {
            verdict,
            audited: verdict.auditable() && segment.1.mode == Mode::Audit,
        }
    }
}

fn enforced(verdict: Verdict) -> Judgement {
    Judgement {
        verdict,
        audited: false,
    }
}

/// A managed vif: its segment (index into [`World::segments`]) and identity.
#[derive(Clone, Debug)]
struct Vif {
    ifindex: u32,
    segment: usize,
    mac: Option<[u8; 6]>,
    addresses: Vec<IpNet>,
    vlans: Vec<u16>,
}

/// The policy and host, arranged for judging.
struct World<'a> {
    policy: &'a Policy,
    host: &'a HostView,
    /// Every segment with its tenant, in policy order.
    segments: Vec<(&'a Tenant, &'a Segment)>,
    /// Managed vifs of the host.
    vifs: Vec<Vif>,
    /// Ifindexes of quarantined links.
    quarantined: Vec<u32>,
    /// The entries that decided, as the steps consult them.
    cited: std::cell::RefCell<Vec<Cited>>,
}

/// Decides (`Err`) or goes on (`Ok`).
type Step = Result<(), Verdict>;

const PASS: Step = Err(Verdict::Pass);

fn in_nets(nets: &[IpNet], a: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&a))
}

fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

fn is_link_scope_multicast(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => a.octets()[..3] == [224, 0, 0],
        IpAddr::V6(a) => a.segments()[0] == 0xff02,
    }
}

fn is_multicast_or_broadcast(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => a.is_multicast() || a == Ipv4Addr::BROADCAST,
        IpAddr::V6(a) => a.is_multicast(),
    }
}

fn is_unspecified(a: IpAddr) -> bool {
    a.is_unspecified()
}

fn is_loopback(a: IpAddr) -> bool {
    a.is_loopback()
}

/// Whether `service` admits a packet of `protocol` to `dport` (family `v6` for ICMP).
fn admits(service: &Service, protocol: u8, dport: Option<u16>, v6: bool) -> bool {
    let ports_ok = || match service.ports {
        None => true,
        Some(range) => dport.is_some_and(|p| range.contains(p)),
    };
    match service.protocol {
        Protocol::Any => true,
        Protocol::Tcp => protocol == frame::TCP && ports_ok(),
        Protocol::Udp => protocol == frame::UDP && ports_ok(),
        Protocol::Icmp => protocol == if v6 { frame::ICMPV6 } else { frame::ICMP },
    }
}

fn admits_ip(service: &Service, ip: &Ip) -> bool {
    admits(service, ip.protocol, ip.dport(), ip.is_v6())
}

/// An ARP reply, or a request to a unicast MAC (a refresh): where an exposed sender
/// address lets resolution across segments pass.
fn arp_answer_or_unicast(f: &Frame, arp: &frame::Arp) -> bool {
    arp.op == 2 || f.dst_mac[0] & 1 == 0
}

/// The sender of a frame delivered to a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sender {
    Segment(usize),
    Outside,
}

impl<'a> World<'a> {
    fn new(policy: &'a Policy, host: &'a HostView) -> Self {
        let segments: Vec<_> = policy
            .tenants
            .iter()
            .flat_map(|t| t.segments.iter().map(move |s| (&**t, s)))
            .collect();
        let mut vifs = Vec::new();
        let mut quarantined = Vec::new();
        for link in &host.links {
            let owner = segments
                .iter()
                .position(|(_, s)| s.interface_for(&link.name).is_some());
            match owner {
                Some(i) if VIF_KINDS.contains(&link.kind.as_str()) => {
                    let entry = segments[i]
                        .1
                        .interface_for(&link.name)
                        .expect("matched above");
                    vifs.push(Vif {
                        ifindex: link.ifindex,
                        segment: i,
                        mac: entry.mac.map(|m| m.0),
                        addresses: entry.addresses.clone(),
                        vlans: entry.vlans.clone(),
                    });
                }
                Some(_) => quarantined.push(link.ifindex),
                None if policy.vif_names.iter().any(|p| p.matches(&link.name)) => {
                    quarantined.push(link.ifindex)
                }
                None => {}
            }
        }
        World {
            policy,
            host,
            segments,
            vifs,
            quarantined,
            cited: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// `None`: no entry (`no_policy`); `Some(None)`: quarantined.
    fn vif(&self, ifindex: u32) -> Option<Option<Vif>> {
        if self.quarantined.contains(&ifindex) {
            return Some(None);
        }
        self.vifs
            .iter()
            .find(|v| v.ifindex == ifindex)
            .map(|v| Some(v.clone()))
    }

    fn segment_of(&self, a: IpAddr) -> Option<usize> {
        self.segments
            .iter()
            .position(|(_, s)| in_nets(&s.prefixes, a))
    }

    fn cite(&self, cited: Cited) {
        self.cited.borrow_mut().push(cited);
    }

    /// The (tenant, segment) indexes of segment `i` of [`World::segments`].
    fn indexes(&self, i: usize) -> (usize, usize) {
        let mut left = i;
        for (t, tenant) in self.policy.tenants.iter().enumerate() {
            if left < tenant.segments.len() {
                return (t, left);
            }
            left -= tenant.segments.len();
        }
        unreachable!("segment {i} is in the policy")
    }

    fn cite_segment(&self, i: usize) {
        let (tenant, segment) = self.indexes(i);
        self.cite(Cited::Segment { tenant, segment });
    }

    /// `cross_segment` within a tenant, `cross_tenant` across tenants.
    fn cross(&self, from: usize, to: usize) -> Verdict {
        self.cite_segment(from);
        self.cite_segment(to);
        if self.segments[from].0.name == self.segments[to].0.name {
            Verdict::CrossSegment
        } else {
            Verdict::CrossTenant
        }
    }

    fn flow_admits(&self, from: usize, to: usize, ip: &Ip) -> bool {
        let found = self.indexed_flows(from, to).find(|(_, s)| admits_ip(s, ip));
        if let Some((index, _)) = found {
            let tenant = self.indexes(from).0;
            self.cite(Cited::Flow { tenant, index });
        }
        found.is_some()
    }

    fn flows(&self, from: usize, to: usize) -> impl Iterator<Item = &'a Service> + '_ {
        self.indexed_flows(from, to).map(|(_, s)| s)
    }

    /// The flows from `from` to `to`, with their index in the tenant's `flows`.
    fn indexed_flows(
        &self,
        from: usize,
        to: usize,
    ) -> impl Iterator<Item = (usize, &'a Service)> + '_ {
        let (tenant, segment) = self.segments[from];
        let (to_tenant, to_segment) = self.segments[to];
        tenant
            .flows
            .iter()
            .enumerate()
            .filter(move |(_, f)| {
                f.from == segment.name
                    && f.to.tenant == to_tenant.name
                    && f.to.segment == to_segment.name
            })
            .map(|(i, f)| (i, &f.service))
    }

    /// A flow joins the two segments, in either direction.
    fn neighbours(&self, a: usize, b: usize) -> bool {
        self.flows(a, b).next().is_some() || self.flows(b, a).next().is_some()
    }

    /// An exposed endpoint of `segment` admits the packet.
    fn exposed_admits(&self, segment: usize, ip: &Ip) -> bool {
        let found = self.segments[segment]
            .1
            .expose
            .iter()
            .position(|e| e.prefix.contains(&ip.dst) && admits_ip(&e.service, ip));
        if let Some(index) = found {
            let (tenant, segment) = self.indexes(segment);
            self.cite(Cited::Exposure {
                tenant,
                segment,
                index,
            });
        }
        found.is_some()
    }

    /// The address lies in an exposed endpoint of any segment (for any service).
    fn exposed_address(&self, a: IpAddr) -> bool {
        self.segments
            .iter()
            .any(|(_, s)| s.expose.iter().any(|e| e.prefix.contains(&a)))
    }

    /// The management prefixes containing `a` protect this packet (`None`: protect
    /// every service, for address resolution).
    fn management_protects(&self, a: IpAddr, ip: Option<&Ip>) -> bool {
        let found = self.policy.management.iter().position(|m| {
            m.prefix.contains(&a)
                && (m.services.is_empty()
                    || ip.is_some_and(|ip| m.services.iter().any(|s| admits_ip(s, ip))))
        });
        if let Some(index) = found {
            self.cite(Cited::Management { index });
        }
        found.is_some()
    }

    fn host_address(&self, a: IpAddr) -> bool {
        self.host.addresses.contains(&a)
    }

    fn gateway(&self, segment: usize, a: IpAddr) -> Option<&'a crate::policy::Gateway> {
        self.segments[segment]
            .1
            .gateways
            .iter()
            .find(|g| g.address == a)
    }

    /// The addresses other managed vifs declared.
    fn declared_by_others(&self, me: &Vif, a: IpAddr) -> bool {
        self.vifs
            .iter()
            .any(|v| v.ifindex != me.ifindex && in_nets(&v.addresses, a))
    }

    /// Whether the VM behind `me` may send from `a` (the unspecified address is judged
    /// by the caller).
    fn owns(&self, me: &Vif, a: IpAddr) -> bool {
        if self.declared_by_others(me, a) {
            return false;
        }
        if is_link_local(a) {
            let declared_link_local: Vec<IpNet> = me
                .addresses
                .iter()
                .filter(|n| is_link_local(n.network()))
                .copied()
                .collect();
            return declared_link_local.is_empty() || in_nets(&declared_link_local, a);
        }
        if me.addresses.is_empty() {
            in_nets(&self.segments[me.segment].1.prefixes, a)
        } else {
            in_nets(&me.addresses, a)
        }
    }

    // ------------------------------------------------------------------ ingress

    fn ingress(&self, me: &Vif, f: &Frame) -> Step {
        self.guard(me, f)?;
        let s = me.segment;
        match &f.l3 {
            L3::Arp(arp) => self.resolution(
                s,
                IpAddr::V4(arp.target),
                &[IpAddr::V4(arp.sender)],
                arp_answer_or_unicast(f, arp),
            ),
            L3::Ip(ip) => self.ingress_ip(me, ip),
        }
    }

    /// Ingress step 1: the source guard.
    fn guard(&self, me: &Vif, f: &Frame) -> Step {
        if let Some(id) = f.vlan
            && !me.vlans.contains(&id)
        {
            return Err(Verdict::Vlan);
        }
        match me.mac {
            Some(mac) if mac != f.src_mac => return Err(Verdict::SpoofedMac),
            None if self
                .vifs
                .iter()
                .any(|v| v.ifindex != me.ifindex && v.mac == Some(f.src_mac)) =>
            {
                return Err(Verdict::SpoofedMac);
            }
            _ => {}
        }
        let segment = self.segments[me.segment].1;
        match &f.l3 {
            L3::Arp(arp) => {
                if arp.sender_mac != f.src_mac
                    || !(arp.sender.is_unspecified() || self.owns(me, IpAddr::V4(arp.sender)))
                {
                    return Err(Verdict::ArpSpoof);
                }
                Ok(())
            }
            L3::Ip(ip) => {
                let unspecified_ok = match ip.src {
                    IpAddr::V4(_) => matches!(
                        ip.l4,
                        L4::Udp {
                            sport: 68,
                            dport: 67
                        }
                    ),
                    // Duplicate address detection: the solicitation, and the MLD report
                    // joining the solicited-node group before it (RFC 3810 5.2.13; found
                    // by the differential test).
                    IpAddr::V6(_) => matches!(
                        ip.icmp_kind(),
                        Some(icmp6::NEIGHBOUR_SOLICITATION | icmp6::MLD_V2_REPORT)
                    ),
                };
                let src_ok = if is_unspecified(ip.src) {
                    unspecified_ok
                } else {
                    self.owns(me, ip.src)
                };
                if !src_ok {
                    return Err(Verdict::SpoofedIp);
                }
                if let L4::Icmp {
                    kind, nd: Some(nd), ..
                } = &ip.l4
                {
                    if *kind == icmp6::NEIGHBOUR_ADVERTISEMENT
                        && !self.owns(me, IpAddr::V6(nd.target))
                    {
                        return Err(Verdict::NdSpoof);
                    }
                    if nd.options.len() > frame::ND_MAX_OPTIONS
                        || nd
                            .options
                            .iter()
                            .any(|(t, mac)| matches!(t, 1 | 2) && *mac != f.src_mac)
                    {
                        return Err(Verdict::NdSpoof);
                    }
                }
                let router = match ip.l4 {
                    L4::Icmp { kind, .. } if ip.is_v6() => {
                        kind == icmp6::ROUTER_ADVERTISEMENT || kind == icmp6::REDIRECT
                    }
                    L4::Icmp { kind, .. } => kind == frame::ICMP4_REDIRECT,
                    _ => false,
                };
                if router && !segment.allow_router_advertisements {
                    return Err(Verdict::RaGuard);
                }
                // The ports are per family (found by the differential test).
                let dhcp_server = if ip.is_v6() {
                    matches!(
                        ip.l4,
                        L4::Udp { sport: 547, .. } | L4::Udp { dport: 546, .. }
                    )
                } else {
                    matches!(ip.l4, L4::Udp { sport: 67, .. } | L4::Udp { dport: 68, .. })
                };
                if dhcp_server && !segment.allow_dhcp_server {
                    return Err(Verdict::DhcpGuard);
                }
                Ok(())
            }
        }
    }

    /// Ingress step 3 for a frame about `concerned`, from the sender's address `sender`;
    /// an exposed sender address counts only for answers and unicast refreshes
    /// (`answer_or_unicast`; threat model, found again by the differential test).
    fn resolution(
        &self,
        s: usize,
        concerned: IpAddr,
        sender: &[IpAddr],
        answer_or_unicast: bool,
    ) -> Step {
        if self.management_protects(concerned, None) {
            return Err(Verdict::Management);
        }
        match self.segment_of(concerned) {
            None => PASS,
            Some(t) if t == s => PASS,
            Some(t) => {
                if self.neighbours(s, t)
                    || self.exposed_address(concerned)
                    || (answer_or_unicast && sender.iter().any(|a| self.exposed_address(*a)))
                {
                    PASS
                } else {
                    Err(self.cross(s, t))
                }
            }
        }
    }

    /// Whether an ND message is what it claims to be (design.md ingress step 3).
    fn genuine_nd(&self, ip: &Ip, kind: u8) -> bool {
        if ip.hop_limit != 255 {
            return false;
        }
        let link_scope = is_link_scope_multicast(ip.dst) || is_link_local(ip.dst);
        // Unicast to an address inside a segment, or to one of the host's own (the VM
        // checking that its router is reachable; found by the differential test).
        let unicast_in_segment = matches!(
            kind,
            icmp6::NEIGHBOUR_SOLICITATION | icmp6::NEIGHBOUR_ADVERTISEMENT
        ) && !is_multicast_or_broadcast(ip.dst)
            && (self.segment_of(ip.dst).is_some() || self.host_address(ip.dst));
        match kind {
            icmp6::NEIGHBOUR_SOLICITATION | icmp6::NEIGHBOUR_ADVERTISEMENT => {
                link_scope || unicast_in_segment
            }
            _ => link_scope,
        }
    }

    fn ingress_ip(&self, me: &Vif, ip: &Ip) -> Step {
        let s = me.segment;
        let segment = self.segments[s].1;
        // 2. Management and loopback.
        if is_loopback(ip.dst) || self.management_protects(ip.dst, Some(ip)) {
            return Err(Verdict::Management);
        }
        // 3. Address resolution (neighbour discovery as what it claims to be).
        if let (Some(kind), L4::Icmp { nd, .. }) = (ip.nd_kind(), &ip.l4)
            && self.genuine_nd(ip, kind)
        {
            match (kind, nd) {
                (icmp6::NEIGHBOUR_SOLICITATION, Some(nd)) => {
                    let unicast = !ip.dst.is_multicast();
                    return self.resolution(s, IpAddr::V6(nd.target), &[ip.src], unicast);
                }
                // The advertised address is the sender's too (found by the differential
                // test).
                (icmp6::NEIGHBOUR_ADVERTISEMENT, Some(nd)) => {
                    let senders = [ip.src, IpAddr::V6(nd.target)];
                    return self.resolution(s, ip.dst, &senders, true);
                }
                // Router solicitations, and advertisements and redirects the guard let
                // through, to link-scope destinations.
                _ => return PASS,
            }
        }
        // 4. The host and the gateways.
        if let Some(gateway) = self.gateway(s, ip.dst) {
            let (tenant, seg) = self.indexes(s);
            if let Some(index) = segment.gateways.iter().position(|g| g.address == ip.dst) {
                self.cite(Cited::Gateway {
                    tenant,
                    segment: seg,
                    index,
                });
            }
            if gateway.services.iter().any(|svc| admits_ip(svc, ip)) {
                return PASS;
            }
            return Err(Verdict::Management);
        }
        if self.host_address(ip.dst) {
            return Err(Verdict::Management);
        }
        // 5. Link-scope housekeeping.
        // A client's message: from the client port to the server port (found by the
        // differential test).
        let udp = |ports: (u16, u16)| matches!(ip.l4, L4::Udp { sport, dport } if (sport, dport) == ports);
        let dhcp_client = match ip.dst {
            IpAddr::V4(d) => d == Ipv4Addr::BROADCAST && udp((68, 67)),
            IpAddr::V6(d) => {
                d == "ff02::1:2".parse::<Ipv6Addr>().expect("literal") && udp((546, 547))
            }
        };
        let mld = ip.is_mld() && is_link_scope_multicast(ip.dst);
        let igmp = matches!(ip.l4, L4::Igmp { .. }) && ip.dst.is_multicast();
        if dhcp_client
            || mld
            || igmp
            || is_link_scope_multicast(ip.dst)
            || (is_link_local(ip.dst) && !ip.dst.is_multicast())
        {
            return PASS;
        }
        // 6. Within the segment.
        let target = self.segment_of(ip.dst);
        if target == Some(s) {
            self.cite_segment(s);
            return PASS;
        }
        // 8. Another segment.
        if let Some(t) = target {
            if self.exposed_admits(t, ip) || self.flow_admits(s, t, ip) {
                return PASS;
            }
            return Err(self.cross(s, t));
        }
        // 9. Outside every segment.
        let (tenant, seg) = self.indexes(s);
        self.cite(Cited::Egress {
            tenant,
            segment: seg,
        });
        match segment.egress {
            Egress::Allow => PASS,
            Egress::Deny => Err(Verdict::EgressDenied),
        }
    }

    // ------------------------------------------------------------------- egress

    /// Egress step 1: the sender, by the link the frame entered through and its source.
    fn sender(&self, entered: u32, src: IpAddr) -> Result<Sender, Verdict> {
        if entered == 0 {
            return Ok(Sender::Outside);
        }
        if self.quarantined.contains(&entered) {
            return Err(Verdict::UnknownInterface);
        }
        if let Some(v) = self.vifs.iter().find(|v| v.ifindex == entered) {
            return Ok(Sender::Segment(v.segment));
        }
        let Some(link) = self.host.links.iter().find(|l| l.ifindex == entered) else {
            return Err(Verdict::UnknownInterface);
        };
        let trusted = self.segments.iter().position(|(_, s)| {
            in_nets(&s.prefixes, src) && s.uplinks.iter().any(|u| u.matches(&link.name))
        });
        Ok(trusted.map_or(Sender::Outside, Sender::Segment))
    }

    fn egress(&self, me: &Vif, entered: u32, f: &Frame) -> Step {
        let t = me.segment;
        // A tag the receiving interface does not list (found by the differential test;
        // design.md's egress step 1 says so since).
        if let Some(id) = f.vlan
            && !me.vlans.contains(&id)
        {
            return Err(Verdict::Vlan);
        }
        let src = match &f.l3 {
            L3::Arp(arp) => IpAddr::V4(arp.sender),
            L3::Ip(ip) => ip.src,
        };
        // 1. The sender. 2. From T.
        let sender = self.sender(entered, src)?;
        if sender == Sender::Segment(t) {
            self.cite_segment(t);
            return PASS;
        }
        match &f.l3 {
            L3::Arp(arp) => self.egress_arp(t, sender, f, arp),
            L3::Ip(ip) => self.egress_ip(t, sender, ip),
        }
    }

    /// Egress step 3 for ARP.
    fn egress_arp(&self, t: usize, sender: Sender, f: &Frame, arp: &frame::Arp) -> Step {
        let (target, spa) = (IpAddr::V4(arp.target), IpAddr::V4(arp.sender));
        match sender {
            Sender::Segment(x) => {
                self.resolved_from(x, t, target, &[spa], arp_answer_or_unicast(f, arp))
            }
            Sender::Outside => match self.segment_of(spa) {
                None => PASS,
                Some(_) if self.gateway(t, spa).is_some() => PASS,
                Some(owner) if self.gateway(owner, spa).is_some() => Err(Verdict::NotExposed),
                Some(_) => Err(Verdict::ArpSpoof),
            },
        }
    }

    /// Resolution from segment `x` about `concerned` delivered to a VM of `t`.
    fn resolved_from(
        &self,
        x: usize,
        t: usize,
        concerned: IpAddr,
        sender: &[IpAddr],
        answer_or_unicast: bool,
    ) -> Step {
        let about_t = in_nets(&self.segments[t].1.prefixes, concerned);
        if about_t
            && (self.neighbours(x, t)
                || self.exposed_address(concerned)
                || (answer_or_unicast && sender.iter().any(|a| self.exposed_address(*a))))
        {
            PASS
        } else {
            Err(self.cross(x, t))
        }
    }

    fn egress_ip(&self, t: usize, sender: Sender, ip: &Ip) -> Step {
        // 3. Address resolution.
        if let (Some(kind), L4::Icmp { nd, .. }) = (ip.nd_kind(), &ip.l4) {
            match sender {
                // Neighbour discovery from another segment is address resolution or
                // nothing: a solicitation or advertisement with hop limit 255 about an
                // address of T, between segments that may resolve each other; any other
                // (hop limit below 255, router solicitations) is `cross_*` (found by the
                // differential test).
                Sender::Segment(x) => {
                    return match (kind, nd) {
                        _ if ip.hop_limit != 255 => Err(self.cross(x, t)),
                        (icmp6::NEIGHBOUR_SOLICITATION, Some(nd)) => self.resolved_from(
                            x,
                            t,
                            IpAddr::V6(nd.target),
                            &[ip.src],
                            !ip.dst.is_multicast(),
                        ),
                        (icmp6::NEIGHBOUR_ADVERTISEMENT, Some(nd)) => {
                            let senders = [ip.src, IpAddr::V6(nd.target)];
                            self.resolved_from(x, t, ip.dst, &senders, true)
                        }
                        _ => Err(self.cross(x, t)),
                    };
                }
                Sender::Outside => {
                    let trusted_source = is_link_local(ip.src)
                        || is_unspecified(ip.src)
                        || self.gateway(t, ip.src).is_some()
                        || self.host_address(ip.src);
                    if ip.hop_limit == 255 && trusted_source {
                        if let (icmp6::NEIGHBOUR_ADVERTISEMENT, Some(nd)) = (kind, nd) {
                            let claimed = IpAddr::V6(nd.target);
                            if self.segment_of(claimed).is_some()
                                && self.gateway(t, claimed).is_none()
                            {
                                return Err(Verdict::NdSpoof);
                            }
                        }
                        return PASS;
                    }
                }
            }
        }
        // 4. Not for this VM. Link-local destinations (169.254/16, fe80::/10) go on: a VM
        // has such addresses too (found by the differential test, as the next line).
        let in_t = in_nets(&self.segments[t].1.prefixes, ip.dst);
        let link_local =
            is_link_local(ip.dst) || matches!(ip.dst, IpAddr::V4(a) if a.is_link_local());
        // Nor is the unspecified address a unicast one.
        if !is_multicast_or_broadcast(ip.dst) && !in_t && !link_local && !is_unspecified(ip.dst) {
            return Err(match sender {
                Sender::Segment(x) => self.cross(x, t),
                Sender::Outside => Verdict::NotExposed,
            });
        }
        // 5. Housekeeping from outside.
        if sender == Sender::Outside {
            // Per family (found by the differential test).
            let ports = if ip.is_v6() { (547, 546) } else { (67, 68) };
            let dhcp_answer = matches!(ip.l4, L4::Udp { sport, dport } if (sport, dport) == ports)
                && (is_link_local(ip.src)
                    || self.gateway(t, ip.src).is_some()
                    || self.host_address(ip.src));
            let mld = ip.is_mld() && is_link_local(ip.src);
            let igmp_query = matches!(
                ip.l4,
                L4::Igmp {
                    kind: frame::IGMP_QUERY
                }
            );
            if dhcp_answer || mld || igmp_query {
                return PASS;
            }
        }
        // 7. An exposed endpoint of T.
        if self.exposed_admits(t, ip) {
            return PASS;
        }
        // 8. A flow from the sender's segment, or nothing from outside.
        match sender {
            Sender::Segment(x) if self.flow_admits(x, t, ip) => PASS,
            Sender::Segment(x) => Err(self.cross(x, t)),
            Sender::Outside => {
                self.cite_segment(t);
                Err(Verdict::NotExposed)
            }
        }
    }
}

#[cfg(test)]
mod tests;
