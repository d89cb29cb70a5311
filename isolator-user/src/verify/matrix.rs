//! The live reachability matrix (`isolator verify --matrix`): for every ordered pair of
//! segments, each segment to the management prefixes and to outside, and outside to each
//! segment, representative probe frames ([`plan`]: pure over the policy and the host's
//! vifs) run through the programs attached on this host, on the live maps
//! ([`Live::run`], as `isolator explain` does), and through the reference model
//! ([`crate::model`], which never reads the compiled maps). The two matrices, and every
//! probe on which they disagree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;

use super::explain::{self, Live, Opening, Proto, Step};
use crate::compile::ManagedVif;
use crate::policy::{Policy, Protocol, Segment, Service};

/// The source port of every TCP and UDP probe, the identifier of every ICMP one.
pub const PROBE_SPORT: u16 = 40999;

/// Ports tried in order for a sample of what is not allowed: the first that no service in
/// question admits.
const SAMPLE_PORTS: [u16; 4] = [9, 4444, 31337, 65000];

/// The ports probed for a TCP or UDP service of every port (and for `any`).
const ANY_TCP_PORT: u16 = 443;
const ANY_UDP_PORT: u16 = 53;

/// The port probed at a management prefix that protects every service (beside ICMP).
const MANAGEMENT_PORT: u16 = 22;

/// Addresses outside every segment (documentation ranges), tried in order.
const OUTSIDE_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 51, 100, 7),
    Ipv4Addr::new(203, 0, 113, 7),
    Ipv4Addr::new(192, 0, 2, 7),
];
const OUTSIDE_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7),
    Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 7),
];

/// A row of the matrix: who sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    /// A segment, by its index in policy order (a plan's segment id).
    Segment(usize),
    /// Outside every segment: the frame enters through the host.
    Outside,
}

/// A column: where to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    Segment(usize),
    /// The management prefixes.
    Management,
    /// Outside every segment and management prefix.
    Outside,
}

/// Why a probe is there (the `why` of the JSON output).
pub mod why {
    /// An exposed endpoint of the receiving segment.
    pub const EXPOSED: &str = "exposed";
    /// A flow from the sending segment to the receiving one.
    pub const FLOW: &str = "flow";
    /// A sample of what no exposure or flow admits.
    pub const NOT_ALLOWED: &str = "not_allowed";
    /// The same samples within one segment (where everything passes).
    pub const WITHIN: &str = "within_segment";
    /// A service a management prefix protects.
    pub const PROTECTED: &str = "protected";
    /// A service at a management prefix that it does not protect.
    pub const UNPROTECTED: &str = "unprotected";
    /// An address outside every segment.
    pub const OUTSIDE: &str = "outside";
}

/// One probe frame, by its fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub protocol: Proto,
    /// The destination port (TCP, UDP); 0 for ICMP.
    pub port: u16,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// One of [`why`].
    pub why: &'static str,
    /// The ifindex of the vif that sends it; none: it comes from outside.
    #[serde(skip)]
    pub sender: Option<u32>,
    /// The ifindex of the vif whose egress program judges it; none: no vif of this host
    /// receives it.
    #[serde(skip)]
    pub receiver: Option<u32>,
}

impl Probe {
    /// `tcp/443`, `udp/53`, `icmp`.
    pub fn service(&self) -> String {
        match self.protocol {
            Proto::Tcp => format!("tcp/{}", self.port),
            Proto::Udp => format!("udp/{}", self.port),
            Proto::Icmp => "icmp".to_string(),
        }
    }
}

/// Whether a cell was probed, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Probed,
    /// The sending segment (or, from outside, the receiving one) has no vif on this host:
    /// no program of this host judges what it sends.
    NoVif,
    /// Neither end is a vif (outside to management or to outside): isolator judges none
    /// of it.
    NotJudged,
}

/// One cell's probes.
#[derive(Clone, Debug)]
pub struct CellPlan {
    pub from: From,
    pub to: To,
    pub status: Status,
    pub note: Option<String>,
    pub probes: Vec<Probe>,
}

/// The representative probes of a service: its first port, the fixed ports of a service
/// of every port, ICMP echo.
fn representative(service: &Service) -> Vec<(Proto, u16)> {
    let first = |default| service.ports.map_or(default, |r| r.first);
    match service.protocol {
        Protocol::Tcp => vec![(Proto::Tcp, first(ANY_TCP_PORT))],
        Protocol::Udp => vec![(Proto::Udp, first(ANY_UDP_PORT))],
        Protocol::Icmp => vec![(Proto::Icmp, 0)],
        Protocol::Any => vec![
            (Proto::Tcp, ANY_TCP_PORT),
            (Proto::Udp, ANY_UDP_PORT),
            (Proto::Icmp, 0),
        ],
    }
}

/// Whether one of `services` admits `protocol` to `port`.
fn covers<'a>(services: impl IntoIterator<Item = &'a Service>, protocol: Proto, port: u16) -> bool {
    services.into_iter().any(|s| match s.protocol {
        Protocol::Any => true,
        Protocol::Tcp => protocol == Proto::Tcp && s.ports.is_none_or(|r| r.contains(port)),
        Protocol::Udp => protocol == Proto::Udp && s.ports.is_none_or(|r| r.contains(port)),
        Protocol::Icmp => protocol == Proto::Icmp,
    })
}

/// Samples of what none of `services` admits: a TCP port, a UDP port, ICMP echo (each
/// where there is one).
fn not_admitted(services: &[&Service]) -> Vec<(Proto, u16)> {
    let mut out = Vec::new();
    for protocol in [Proto::Tcp, Proto::Udp] {
        if let Some(port) = SAMPLE_PORTS
            .into_iter()
            .find(|p| !covers(services.iter().copied(), protocol, *p))
        {
            out.push((protocol, port));
        }
    }
    if !covers(services.iter().copied(), Proto::Icmp, 0) {
        out.push((Proto::Icmp, 0));
    }
    out
}

/// The first address of a prefix: the address of a /32 or /128, else its first host.
fn first_address(prefix: &IpNet) -> Option<IpAddr> {
    prefix.hosts().next()
}

fn segments(policy: &Policy) -> Vec<&Segment> {
    policy.tenants.iter().flat_map(|t| &t.segments).collect()
}

/// An address outside every segment, exposure and management prefix of `policy`.
pub fn outside_address(policy: &Policy, v6: bool) -> Option<IpAddr> {
    let taken = |a: IpAddr| {
        segments(policy)
            .iter()
            .any(|s| s.prefixes.iter().any(|p| p.contains(&a)))
            || policy.management.iter().any(|m| m.prefix.contains(&a))
    };
    let candidates: Vec<IpAddr> = if v6 {
        OUTSIDE_V6.into_iter().map(IpAddr::V6).collect()
    } else {
        OUTSIDE_V4.into_iter().map(IpAddr::V4).collect()
    };
    candidates.into_iter().find(|a| !taken(*a))
}

/// The flows of `policy` from segment `s` to segment `t` (indexes in policy order).
fn flows(policy: &Policy, s: usize, t: usize) -> Vec<&Service> {
    let mut index = 0;
    let mut names = Vec::new();
    for tenant in &policy.tenants {
        for segment in &tenant.segments {
            names.push((tenant, segment, index));
            index += 1;
        }
    }
    let (Some((from_tenant, from, _)), Some((to_tenant, to, _))) = (names.get(s), names.get(t))
    else {
        return Vec::new();
    };
    from_tenant
        .flows
        .iter()
        .filter(|f| f.from == from.name && f.to.tenant == to_tenant.name && f.to.segment == to.name)
        .map(|f| &f.service)
        .collect()
}

/// Where probes to segment `t` that are not for an exposed endpoint go: an address a vif
/// of `t` declares (not the sender's), else an address of `t`'s prefixes that is neither
/// the source, a gateway nor exposed.
fn destination(
    policy: &Policy,
    vifs: &[ManagedVif],
    sender: Option<&ManagedVif>,
    t: usize,
    src: IpAddr,
    v6: bool,
) -> Option<IpAddr> {
    let segment = segments(policy)[t];
    let not_sender = |v: &&ManagedVif| sender.is_none_or(|s| s.ifindex != v.ifindex);
    let declared = vifs
        .iter()
        .filter(|v| v.segment as usize == t)
        .filter(not_sender)
        .flat_map(|v| &v.addresses)
        .map(IpNet::addr)
        .find(|a| a.is_ipv6() == v6 && *a != src);
    let candidates: Vec<IpAddr> = segment
        .prefixes
        .iter()
        .filter(|p| p.addr().is_ipv6() == v6)
        .flat_map(|p| p.hosts().take(64))
        .filter(|a| *a != src && !segment.gateways.iter().any(|g| g.address == *a))
        .collect();
    let exposed = |a: &IpAddr| segment.expose.iter().any(|e| e.prefix.contains(a));
    declared
        .or_else(|| candidates.iter().copied().find(|a| !exposed(a)))
        .or_else(|| candidates.first().copied())
}

/// The vif of segment `s` that sends probes of a family, and its source address: the first
/// vif declaring an address of the family in the segment's prefixes (that address), else
/// the first vif that declares none (the first address of the segment's prefixes).
fn sender_of<'a>(
    policy: &Policy,
    vifs: &'a [ManagedVif],
    s: usize,
    v6: bool,
) -> Option<(&'a ManagedVif, IpAddr)> {
    let segment = segments(policy)[s];
    let of_s = || vifs.iter().filter(move |v| v.segment as usize == s);
    let declared = of_s().find_map(|v| {
        v.addresses
            .iter()
            .map(IpNet::addr)
            .find(|a| a.is_ipv6() == v6 && segment.prefixes.iter().any(|p| p.contains(a)))
            .map(|a| (v, a))
    });
    declared.or_else(|| {
        let vif = of_s().find(|v| v.addresses.is_empty())?;
        let src = segment
            .prefixes
            .iter()
            .find(|p| p.addr().is_ipv6() == v6)
            .and_then(first_address)?;
        Some((vif, src))
    })
}

/// The vif of segment `t` that receives a frame for `dst`: one that declares it, else the
/// first of `t`; never the sender.
fn receiver(
    vifs: &[ManagedVif],
    sender: Option<&ManagedVif>,
    t: usize,
    dst: IpAddr,
) -> Option<u32> {
    let candidates: Vec<&ManagedVif> = vifs
        .iter()
        .filter(|v| v.segment as usize == t && sender.is_none_or(|s| s.ifindex != v.ifindex))
        .collect();
    candidates
        .iter()
        .find(|v| v.addresses.iter().any(|n| n.contains(&dst)))
        .or(candidates.first())
        .map(|v| v.ifindex)
}

/// The probes from `src` (of `sender`'s segment, or outside) to segment `t`: each exposed
/// endpoint of `t` (its service's first port), each flow's service, and samples of what
/// neither admits.
fn segment_probes(
    policy: &Policy,
    vifs: &[ManagedVif],
    (from, sender): (From, Option<&ManagedVif>),
    t: usize,
    src: IpAddr,
    out: &mut Vec<Probe>,
) {
    let v6 = src.is_ipv6();
    let segment = segments(policy)[t];
    if !segment.prefixes.iter().any(|p| p.addr().is_ipv6() == v6) {
        return;
    }
    let mut push = |(protocol, port): (Proto, u16), dst: IpAddr, why: &'static str| {
        out.push(Probe {
            protocol,
            port,
            src,
            dst,
            why,
            sender: sender.map(|v| v.ifindex),
            receiver: receiver(vifs, sender, t, dst),
        });
    };
    for e in &segment.expose {
        if e.prefix.addr().is_ipv6() != v6 {
            continue;
        }
        if let Some(dst) = first_address(&e.prefix) {
            for probe in representative(&e.service) {
                push(probe, dst, why::EXPOSED);
            }
        }
    }
    let Some(dst) = destination(policy, vifs, sender, t, src, v6) else {
        return;
    };
    let flows = match from {
        From::Segment(s) => flows(policy, s, t),
        From::Outside => Vec::new(),
    };
    for service in &flows {
        for probe in representative(service) {
            push(probe, dst, why::FLOW);
        }
    }
    let admitted: Vec<&Service> = segment
        .expose
        .iter()
        .filter(|e| e.prefix.contains(&dst))
        .map(|e| &e.service)
        .chain(flows.iter().copied())
        .collect();
    let sample = if from == From::Segment(t) {
        why::WITHIN
    } else {
        why::NOT_ALLOWED
    };
    for probe in not_admitted(&admitted) {
        push(probe, dst, sample);
    }
}

/// The probes from `src` to the management prefixes of its family: at each prefix's first
/// address, each protected service and one that is not protected (where there is one).
fn management_probes(policy: &Policy, (sender, src): (&ManagedVif, IpAddr), out: &mut Vec<Probe>) {
    for m in &policy.management {
        if m.prefix.addr().is_ipv6() != src.is_ipv6() {
            continue;
        }
        let Some(dst) = first_address(&m.prefix) else {
            continue;
        };
        let mut push = |(protocol, port), why| {
            out.push(Probe {
                protocol,
                port,
                src,
                dst,
                why,
                sender: Some(sender.ifindex),
                receiver: None,
            })
        };
        if m.services.is_empty() {
            push((Proto::Tcp, MANAGEMENT_PORT), why::PROTECTED);
            push((Proto::Icmp, 0), why::PROTECTED);
            continue;
        }
        for service in &m.services {
            for probe in representative(service) {
                push(probe, why::PROTECTED);
            }
        }
        let services: Vec<&Service> = m.services.iter().collect();
        if let Some(probe) = not_admitted(&services).into_iter().next() {
            push(probe, why::UNPROTECTED);
        }
    }
}

/// Which probes make each cell of the matrix: rows every segment then outside, columns
/// every segment, then management, then outside; IPv4 and IPv6 wherever both ends have
/// addresses of the family. A segment sends from its first vif on this host (its declared
/// address, else the first of its prefixes); one without a vif is not probed as a sender.
///
/// `vifs`' `segment` is the segment's place in the policy (`Plan::segments`), not its id.
pub fn plan(policy: &Policy, vifs: &[ManagedVif]) -> Vec<CellPlan> {
    let count = segments(policy).len();
    let mut out = Vec::new();
    for from in (0..count).map(From::Segment).chain([From::Outside]) {
        for to in (0..count)
            .map(To::Segment)
            .chain([To::Management, To::Outside])
        {
            out.push(cell(policy, vifs, from, to));
        }
    }
    out
}

fn cell(policy: &Policy, vifs: &[ManagedVif], from: From, to: To) -> CellPlan {
    let has_vif = |s: usize| vifs.iter().any(|v| v.segment as usize == s);
    let mut cell = CellPlan {
        from,
        to,
        status: Status::Probed,
        note: None,
        probes: Vec::new(),
    };
    match (from, to) {
        (From::Segment(s), _) if !has_vif(s) => {
            cell.status = Status::NoVif;
            cell.note = Some("no vif of the sender on this host".to_string());
            return cell;
        }
        (From::Outside, To::Management | To::Outside) => {
            cell.status = Status::NotJudged;
            cell.note = Some("neither end is a vif: no isolator program judges it".to_string());
            return cell;
        }
        (From::Outside, To::Segment(t)) if !has_vif(t) => {
            cell.status = Status::NoVif;
            cell.note = Some("no vif of the receiver on this host".to_string());
            return cell;
        }
        _ => {}
    }
    for v6 in [false, true] {
        let sender = match from {
            From::Segment(s) => match sender_of(policy, vifs, s, v6) {
                Some((vif, src)) => Some((vif, src)),
                None => continue,
            },
            From::Outside => None,
        };
        let Some(src) = sender.map_or_else(|| outside_address(policy, v6), |(_, a)| Some(a)) else {
            continue;
        };
        let vif = sender.map(|(v, _)| v);
        match to {
            To::Segment(t) => segment_probes(policy, vifs, (from, vif), t, src, &mut cell.probes),
            To::Management => {
                if let Some(sender) = sender {
                    management_probes(policy, sender, &mut cell.probes);
                }
            }
            To::Outside => {
                if let (Some(dst), Some(vif)) = (outside_address(policy, v6), vif) {
                    for (protocol, port) in [
                        (Proto::Tcp, ANY_TCP_PORT),
                        (Proto::Udp, ANY_UDP_PORT),
                        (Proto::Icmp, 0),
                    ] {
                        cell.probes.push(Probe {
                            protocol,
                            port,
                            src,
                            dst,
                            why: why::OUTSIDE,
                            sender: Some(vif.ifindex),
                            receiver: None,
                        });
                    }
                }
            }
        }
    }
    if matches!(to, To::Segment(_))
        && !cell.probes.is_empty()
        && cell.probes.iter().all(|p| p.receiver.is_none())
    {
        cell.note = Some(
            "no (other) vif of the receiver on this host: judged only by the sender's ingress \
             program"
                .to_string(),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    cell.probes
        .retain(|p| seen.insert((p.protocol, p.port, p.src, p.dst)));
    cell
}

/// One probe's fate, live and modelled.
#[derive(Debug, Serialize)]
pub struct ProbeResult {
    #[serde(flatten)]
    pub probe: Probe,
    pub service: String,
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// `pass`, or the drop reason where it ended, live.
    pub live: String,
    pub live_passes: bool,
    /// The same, as the model judges it along the same path.
    pub model: String,
    pub model_passes: bool,
    pub agree: bool,
    /// The frame, in hex.
    pub frame: String,
    /// Each program it ran through (as `isolator explain` reports them).
    pub steps: Vec<Step>,
}

/// One cell: what passes, live and modelled, as compact service lists.
#[derive(Debug, Serialize)]
pub struct Cell {
    pub from: String,
    pub to: String,
    pub status: Status,
    pub note: Option<String>,
    /// The services of the probes that pass live (`tcp/443`, `icmp`; `(v4)` or `(v6)`
    /// where only that family's probe passes).
    pub live: Vec<String>,
    pub model: Vec<String>,
    pub agree: bool,
    pub probes: Vec<ProbeResult>,
}

/// The whole matrix.
#[derive(Debug, Serialize)]
pub struct Matrix {
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    /// Row by row.
    pub cells: Vec<Cell>,
    pub probes: usize,
    pub disagreements: usize,
}

impl Matrix {
    /// The probes on which the live programs and the model disagree, with their cell.
    pub fn disagreeing(&self) -> impl Iterator<Item = (&Cell, &ProbeResult)> {
        self.cells
            .iter()
            .flat_map(|c| c.probes.iter().filter(|p| !p.agree).map(move |p| (c, p)))
    }
}

fn passes(verdict: &str) -> bool {
    // `pass`, or `pass, audited REASON`.
    verdict.starts_with("pass")
}

/// The services of `probes` that pass by `passed`, in probe order: `(v4)`/`(v6)` where
/// only one family's probes of the service pass.
fn services(probes: &[ProbeResult], passed: impl Fn(&ProbeResult) -> bool) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for p in probes {
        if !order.contains(&p.service) {
            order.push(p.service.clone());
        }
    }
    order
        .into_iter()
        .filter_map(|service| {
            let of: Vec<&ProbeResult> = probes.iter().filter(|p| p.service == service).collect();
            let families = |keep: &dyn Fn(&ProbeResult) -> bool| {
                let mut f: Vec<&str> = of.iter().filter(|p| keep(p)).map(|p| p.family).collect();
                f.sort_unstable();
                f.dedup();
                f
            };
            let (all, passing) = (families(&|_| true), families(&passed));
            match passing.as_slice() {
                [] => None,
                _ if passing.len() == all.len() => Some(service),
                [one] => Some(format!("{service}({})", one.trim_start_matches("ip"))),
                _ => Some(service),
            }
        })
        .collect()
}

/// Runs every probe of [`plan`] through the live programs and the model.
pub fn run(live: &Live) -> Matrix {
    let policy = &live.policy;
    let vifs = live.vifs();
    let by_index = |i: u32| vifs.iter().find(|v| v.ifindex == i);
    // [`plan`] names segments by their place in the policy, the plan's vifs by id.
    let placed: Vec<ManagedVif> = vifs
        .iter()
        .filter_map(|v| {
            let at = live.plan.position(v.segment)?;
            Some(ManagedVif {
                segment: at as u32,
                ..v.clone()
            })
        })
        .collect();
    let label = |s: usize| match live.plan.segments.get(s) {
        Some(segment) => live.plan.segment_label(segment.id),
        None => format!("#{s}"),
    };
    let count = segments(policy).len();
    let rows: Vec<String> = (0..count).map(label).chain(["outside".into()]).collect();
    let columns: Vec<String> = (0..count)
        .map(label)
        .chain(["management".into(), "outside".into()])
        .collect();
    let mut cells = Vec::new();
    for plan in plan(policy, &placed) {
        let probes: Vec<ProbeResult> = plan
            .probes
            .into_iter()
            .map(|probe| {
                let sender = probe.sender.and_then(by_index);
                let receiver = probe.receiver.and_then(by_index);
                run_probe(live, sender, receiver, probe)
            })
            .collect();
        cells.push(Cell {
            from: match plan.from {
                From::Segment(s) => label(s),
                From::Outside => "outside".into(),
            },
            to: match plan.to {
                To::Segment(t) => label(t),
                To::Management => "management".into(),
                To::Outside => "outside".into(),
            },
            status: plan.status,
            note: plan.note,
            live: services(&probes, |p| p.live_passes),
            model: services(&probes, |p| p.model_passes),
            agree: probes.iter().all(|p| p.agree),
            probes,
        });
    }
    let probes = cells.iter().map(|c| c.probes.len()).sum();
    let disagreements = cells
        .iter()
        .flat_map(|c| &c.probes)
        .filter(|p| !p.agree)
        .count();
    Matrix {
        rows,
        columns,
        cells,
        probes,
        disagreements,
    }
}

fn run_probe(
    live: &Live,
    sender: Option<&ManagedVif>,
    receiver: Option<&ManagedVif>,
    probe: Probe,
) -> ProbeResult {
    let service = probe.service();
    let family = if probe.dst.is_ipv6() { "ipv6" } else { "ipv4" };
    let ran = explain::build_frame(
        explain::macs(sender, receiver),
        (probe.src, probe.dst),
        probe.protocol,
        Opening::No,
        PROBE_SPORT,
        probe.port,
    )
    .and_then(|frame| live.run(sender, receiver, &frame, Vec::new()));
    match ran {
        Ok(e) => ProbeResult {
            service,
            family,
            live_passes: passes(&e.verdict),
            model_passes: passes(&e.model_verdict),
            agree: !e.disagree,
            live: e.verdict,
            model: e.model_verdict,
            frame: e.frame,
            steps: e.steps,
            probe,
        },
        // A program missing (which verify reports too): nothing judges as the policy says.
        Err(e) => ProbeResult {
            service,
            family,
            live: format!("not run: {e:#}"),
            live_passes: false,
            model: "not run".into(),
            model_passes: false,
            agree: false,
            frame: String::new(),
            steps: Vec::new(),
            probe,
        },
    }
}

#[cfg(test)]
mod tests;
