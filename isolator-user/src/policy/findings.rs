//! `isolator check`'s findings: what a valid policy allows that an operator should look
//! at before deploying it.
//!
//! Validation ([`super::parse`]) refuses what cannot be enforced; a finding is about a
//! policy that can be, but exposes, admits or declares more (or other) than it probably
//! means to: an exposed endpoint that is a whole segment, flows to every port, flows
//! between tenants, entries that others make redundant, management prefixes the
//! segments' egress reaches, interface entries no link can ever have, and a policy the
//! kernel maps cannot hold. Each [`Finding`] has a stable [`Code`], a [`Severity`] (a
//! warning, or an error; `--strict` makes every warning an error), the position of the
//! entry it is about, and what to do. The codes are documented in `docs/policy.md`
//! ("Findings").
//!
//! Pure: a function of the validated policy and where its entries are written. The
//! capacity check compiles the policy without the host's links, as `isolator check`
//! always did.

use std::collections::HashMap;
use std::fmt;

use ipnet::IpNet;

use super::reach::{ServiceSet, shown};
use super::{InterfacePattern, Locations, Policy, Pos, Protocol, Segment, Service};

/// What a finding is about. Each code is stable: tools may match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    /// An exposed endpoint is a whole prefix of its segment.
    ExposesWholeSegment,
    /// A flow or exposed endpoint with `protocol: any`.
    AnyProtocol,
    /// A TCP or UDP flow or exposed endpoint without `ports` (or with all of them).
    AllPorts,
    /// A flow from one tenant's segment to another tenant's.
    CrossTenantFlow,
    /// An entry that others of its list admit, protect or match entirely.
    Shadowed,
    /// An entry that admits, protects or matches the same as an earlier one, written
    /// differently.
    Duplicate,
    /// A management prefix that protects only some services, whose others the
    /// segments with `egress: allow` reach.
    ManagementReachable,
    /// An interface entry that no Linux link name can ever match.
    InterfaceNeverMatches,
    /// The policy does not fit the kernel maps.
    ExceedsKernelCapacity,
}

impl Code {
    /// Every code, in the order of the documentation's table.
    pub const ALL: [Code; 9] = [
        Code::ExposesWholeSegment,
        Code::AnyProtocol,
        Code::AllPorts,
        Code::CrossTenantFlow,
        Code::Shadowed,
        Code::Duplicate,
        Code::ManagementReachable,
        Code::InterfaceNeverMatches,
        Code::ExceedsKernelCapacity,
    ];

    /// The code as printed and in JSON (kebab-case).
    pub fn as_str(self) -> &'static str {
        match self {
            Code::ExposesWholeSegment => "exposes-whole-segment",
            Code::AnyProtocol => "any-protocol",
            Code::AllPorts => "all-ports",
            Code::CrossTenantFlow => "cross-tenant-flow",
            Code::Shadowed => "shadowed",
            Code::Duplicate => "duplicate",
            Code::ManagementReachable => "management-reachable",
            Code::InterfaceNeverMatches => "interface-never-matches",
            Code::ExceedsKernelCapacity => "exceeds-kernel-capacity",
        }
    }

    /// The severity without `--strict`: an error only for a policy the daemon cannot
    /// put into effect.
    pub fn severity(self) -> Severity {
        match self {
            Code::ExceedsKernelCapacity => Severity::Error,
            _ => Severity::Warning,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How serious a finding is: an error makes `isolator check` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding about one entry of the policy file. `line` and `column` are 1-based, both
/// 0 when the finding is about the whole policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub code: Code,
    pub severity: Severity,
    pub file: String,
    pub line: u64,
    pub column: u64,
    /// What the entry allows, naming it.
    pub message: String,
    /// What to do about it.
    pub help: String,
}

impl fmt::Display for Finding {
    /// `FILE:LINE:COL: warning[CODE]: MESSAGE`, then `  help: HELP`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}[{}]: {}\n  help: {}",
            self.file, self.line, self.column, self.severity, self.code, self.message, self.help
        )
    }
}

/// Every finding about `policy`, sorted by position; with `strict`, every one an error.
pub fn check(policy: &Policy, locations: &Locations, strict: bool) -> Vec<Finding> {
    let mut out = Out {
        file: &locations.file,
        findings: Vec::new(),
    };
    for (t, tenant) in policy.tenants.iter().enumerate() {
        let flow_at = |i: usize| tenant_pos(locations, t, |l| l.flows.get(i).copied());
        for (s, segment) in tenant.segments.iter().enumerate() {
            let at = locations.segment(t, s);
            let name = format!("{}/{}", tenant.name, segment.name);
            exposures(&mut out, segment, &name, &at.expose);
            services_lists(&mut out, segment, &name, &at.gateways);
            interfaces(&mut out, segment, &name, &at.interfaces, &at.uplinks);
        }
        flows(&mut out, policy, t, &flow_at);
    }
    management(&mut out, policy, locations);
    let vif_names: Vec<(&InterfacePattern, Pos)> = policy
        .vif_names
        .iter()
        .zip(positions(&locations.vif_names))
        .collect();
    patterns(&mut out, &vif_names, &|_| true, "entry", "of `vif_names`");
    capacity(&mut out, policy);

    let mut findings = out.findings;
    if strict {
        for finding in &mut findings {
            finding.severity = Severity::Error;
        }
    }
    findings.sort_by_key(|a| (a.line, a.column, a.code));
    findings
}

/// Findings being collected.
struct Out<'l> {
    file: &'l str,
    findings: Vec<Finding>,
}

impl Out<'_> {
    fn push(&mut self, code: Code, at: Pos, message: String, help: String) {
        self.findings.push(Finding {
            code,
            severity: code.severity(),
            file: self.file.to_owned(),
            line: at.line,
            column: at.column,
            message,
            help,
        });
    }
}

/// `positions` followed by "no position" for ever, so that zipping with a list of the
/// model never shortens it.
fn positions(positions: &[Pos]) -> impl Iterator<Item = Pos> + '_ {
    positions
        .iter()
        .copied()
        .chain(std::iter::repeat(Pos::default()))
}

fn tenant_pos(
    locations: &Locations,
    t: usize,
    get: impl Fn(&super::TenantLocations) -> Option<Pos>,
) -> Pos {
    locations.tenants.get(t).and_then(get).unwrap_or_default()
}

fn line_col(at: Pos) -> String {
    format!("{}:{}", at.line, at.column)
}

/// The wide-service findings of a flow or exposed endpoint (`what` names it).
fn wide(out: &mut Out<'_>, service: Service, at: Pos, what: &str, narrow_help: &str) {
    if service.protocol == Protocol::Any {
        out.push(
            Code::AnyProtocol,
            at,
            format!("{what} admits every IP protocol and port (`protocol: any`)"),
            format!(
                "name the protocol and ports the service uses, e.g. `protocol: tcp` with \
                 `ports: 443`, one entry per protocol; {narrow_help}"
            ),
        );
    } else if ServiceSet::of(service).has_all_ports() {
        out.push(
            Code::AllPorts,
            at,
            format!(
                "{what} admits every {} port",
                service.protocol.as_str().to_uppercase()
            ),
            format!(
                "add `ports` with the port or range the service listens on, e.g. `ports: 443`; \
                 {narrow_help}"
            ),
        );
    }
}

/// One entry of a list whose entries may make each other redundant.
struct Entry<'a, K> {
    /// What it applies to: entries with different keys never shadow each other, an
    /// entry is shadowed by those whose key [`Covers`] its own.
    key: K,
    services: ServiceSet,
    at: Pos,
    /// Names the entry in messages.
    what: &'a str,
}

/// Whether one key applies to everything another applies to.
trait Covers {
    fn covers(&self, other: &Self) -> bool;
}

impl Covers for IpNet {
    fn covers(&self, other: &Self) -> bool {
        self.contains(other)
    }
}

impl Covers for () {
    fn covers(&self, (): &Self) -> bool {
        true
    }
}

/// `duplicate` and `shadowed` findings of a list: an entry whose services another entry
/// with the same key and services has (written differently; validation refuses the
/// same entry twice) is a duplicate of the first; one whose services the entries with
/// covering keys have together is shadowed. `kind` names the list's entries, `help` what
/// to do about a redundant one. Entries are compared with every other of the list: the
/// lists this is used for are one segment's exposures, one pair's flows, one entry's
/// services, and the management prefixes.
fn redundant<K: Covers + PartialEq>(out: &mut Out<'_>, entries: &[Entry<'_, K>], help: &str) {
    for (i, entry) in entries.iter().enumerate() {
        let same =
            |other: &Entry<'_, K>| other.key == entry.key && other.services == entry.services;
        if let Some(first) = entries[..i].iter().find(|e| same(e)) {
            out.push(
                Code::Duplicate,
                entry.at,
                format!(
                    "{} admits the same as {} at {}",
                    entry.what,
                    first.what,
                    line_col(first.at)
                ),
                format!("remove one of the two entries; {help}"),
            );
            continue;
        }
        let covering: Vec<&Entry<'_, K>> = entries
            .iter()
            .enumerate()
            .filter(|&(j, other)| j != i && !same(other) && other.key.covers(&entry.key))
            .map(|(_, other)| other)
            .collect();
        let together = covering
            .iter()
            .fold(ServiceSet::empty(), |acc, e| acc.union(&e.services));
        let Some((one, rest)) = covering.split_first() else {
            continue;
        };
        if !together.contains(&entry.services) {
            continue;
        }
        let more = match rest.len() {
            0 => String::new(),
            n => format!(" and {n} more entries"),
        };
        let by = format!("{} at {}{more}", one.what, line_col(one.at));
        out.push(
            Code::Shadowed,
            entry.at,
            format!("{} is shadowed: {by} already covers it", entry.what),
            format!("remove it; {help}"),
        );
    }
}

fn exposures(out: &mut Out<'_>, segment: &Segment, name: &str, at: &[Pos]) {
    let whats: Vec<String> = segment
        .expose
        .iter()
        .map(|e| {
            format!(
                "exposed endpoint {} {} of {name}",
                shown(&e.prefix),
                e.service
            )
        })
        .collect();
    let mut entries = Vec::with_capacity(segment.expose.len());
    for ((expose, at), what) in segment.expose.iter().zip(positions(at)).zip(&whats) {
        if segment.prefixes.contains(&expose.prefix) {
            out.push(
                Code::ExposesWholeSegment,
                at,
                format!(
                    "{what} is the whole segment prefix {}: every address in it, of every VM \
                     there now or later, is reachable from other segments and from outside",
                    expose.prefix
                ),
                "expose only the addresses that serve it (e.g. `address: 10.1.1.10`), or a \
                 smaller prefix that holds only those servers"
                    .to_owned(),
            );
        }
        wide(
            out,
            expose.service,
            at,
            what,
            "every service an exposed endpoint admits is reachable from outside",
        );
        entries.push(Entry {
            key: expose.prefix,
            services: ServiceSet::of(expose.service),
            at,
            what,
        });
    }
    redundant(
        out,
        &entries,
        "an address is exposed for the services of every entry that contains it",
    );
}

/// The services of each gateway of a segment, one list per gateway.
fn services_lists(out: &mut Out<'_>, segment: &Segment, name: &str, at: &[(Pos, Vec<Pos>)]) {
    let none = (Pos::default(), Vec::new());
    for (g, gateway) in segment.gateways.iter().enumerate() {
        let (_, service_at) = at.get(g).unwrap_or(&none);
        services_list(
            out,
            &gateway.services,
            service_at,
            &format!("gateway {} of {name}", gateway.address),
            "a gateway admits the services of all its entries",
        );
    }
}

/// `duplicate` and `shadowed` findings of the `services` of one entry (`owner`).
fn services_list(out: &mut Out<'_>, services: &[Service], at: &[Pos], owner: &str, help: &str) {
    let whats: Vec<String> = services
        .iter()
        .map(|s| format!("service {s} of {owner}"))
        .collect();
    let entries: Vec<Entry<'_, ()>> = services
        .iter()
        .zip(positions(at))
        .zip(&whats)
        .map(|((service, at), what)| Entry {
            key: (),
            services: ServiceSet::of(*service),
            at,
            what,
        })
        .collect();
    redundant(out, &entries, help);
}

fn flows(out: &mut Out<'_>, policy: &Policy, t: usize, flow_at: &dyn Fn(usize) -> Pos) {
    let tenant = &policy.tenants[t];
    let whats: Vec<String> = tenant
        .flows
        .iter()
        .map(|f| format!("flow {}/{} -> {} {}", tenant.name, f.from, f.to, f.service))
        .collect();
    // Flows by the pair they join, in file order.
    let mut pairs: HashMap<(&str, &super::SegmentId), Vec<Entry<'_, ()>>> = HashMap::new();
    let mut order = Vec::new();
    for (i, flow) in tenant.flows.iter().enumerate() {
        let at = flow_at(i);
        let what = &whats[i];
        wide(
            out,
            flow.service,
            at,
            what,
            "a flow admits every address of the destination segment",
        );
        if flow.to.tenant != tenant.name {
            out.push(
                Code::CrossTenantFlow,
                at,
                format!(
                    "{what} joins tenant {} to tenant {}: VMs of one customer reach every \
                     address of another's segment",
                    tenant.name, flow.to.tenant
                ),
                format!(
                    "make sure both tenants asked for it; an exposed endpoint of {} would \
                     admit only the addresses that serve it",
                    flow.to
                ),
            );
        }
        if let Some((_, target)) = policy.segment(&flow.to)
            && let Some(exposed) = exposed_everywhere(target)
            && exposed.contains(&ServiceSet::of(flow.service))
        {
            out.push(
                Code::Shadowed,
                at,
                format!(
                    "{what} is shadowed: the exposed endpoints of {} already admit {} to \
                     every address of the segment, from every segment and from outside",
                    flow.to, flow.service
                ),
                "remove the flow, or narrow the exposed endpoints to the addresses that \
                 serve them"
                    .to_owned(),
            );
        }
        let key = (flow.from.as_str(), &flow.to);
        let list = pairs.entry(key).or_insert_with(|| {
            order.push(key);
            Vec::new()
        });
        list.push(Entry {
            key: (),
            services: ServiceSet::of(flow.service),
            at,
            what,
        });
    }
    for key in order {
        redundant(
            out,
            &pairs[&key],
            "a pair of segments admits the services of all its flows",
        );
    }
}

/// What every address of `segment` is exposed for (`None` for a segment without
/// prefixes): for each prefix the services of the exposed endpoints that are that very
/// prefix, and of those, what all prefixes have.
fn exposed_everywhere(segment: &Segment) -> Option<ServiceSet> {
    segment
        .prefixes
        .iter()
        .map(|prefix| {
            let on_it = segment.expose.iter().filter(|e| e.prefix == *prefix);
            ServiceSet::of_all(on_it.map(|e| &e.service))
        })
        .reduce(|a, b| a.intersect(&b))
}

fn management(out: &mut Out<'_>, policy: &Policy, locations: &Locations) {
    let none = (Pos::default(), Vec::new());
    let whats: Vec<String> = policy
        .management
        .iter()
        .map(|m| format!("management prefix {}", m.prefix))
        .collect();
    let mut entries = Vec::with_capacity(policy.management.len());
    for (i, m) in policy.management.iter().enumerate() {
        let (at, service_at) = locations.management.get(i).unwrap_or(&none);
        entries.push(Entry {
            key: m.prefix,
            services: ServiceSet::protected(&m.services),
            at: *at,
            what: whats[i].as_str(),
        });
        services_list(
            out,
            &m.services,
            service_at,
            &whats[i],
            "a management prefix protects the services of all its entries",
        );
    }
    redundant(
        out,
        &entries,
        "an address is protected for the services of every management prefix that contains it",
    );

    let egress: Vec<String> = policy
        .tenants
        .iter()
        .flat_map(|t| {
            let allowed = t
                .segments
                .iter()
                .filter(|s| s.egress == super::Egress::Allow);
            allowed.map(move |s| format!("{}/{}", t.name, s.name))
        })
        .collect();
    if egress.is_empty() {
        return;
    }
    for entry in &entries {
        let protected = entries
            .iter()
            .filter(|e| e.key.contains(&entry.key))
            .fold(ServiceSet::empty(), |acc, e| acc.union(&e.services));
        if protected.is_all() {
            continue;
        }
        let named: Vec<&str> = egress.iter().take(3).map(String::as_str).collect();
        let more = match egress.len().saturating_sub(named.len()) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        out.push(
            Code::ManagementReachable,
            entry.at,
            format!(
                "{} protects only {protected}: every other service of it is a destination \
                 outside every segment, which {} segment(s) with `egress: allow` reach ({}{more})",
                entry.what,
                egress.len(),
                named.join(", "),
            ),
            "leave out `services` to protect every protocol and port of the prefix, or set \
             `egress: deny` on the segments that must not reach the infrastructure"
                .to_owned(),
        );
    }
}

/// Why no Linux link can ever be named as `pattern` matches, if none can.
fn never_matches(pattern: &InterfacePattern) -> Option<&'static str> {
    let name = pattern.as_str();
    if name.contains('%') {
        // The kernel reads a requested name with '%' as a template ("tap%d") and
        // replaces it; a name with any other '%' is refused.
        Some(
            "contains '%', which no link name has: the kernel replaces \"%d\" in a requested name with a number and refuses any other '%'",
        )
    } else if name.contains('\0') {
        Some("contains a NUL character, which ends a link name in the kernel")
    } else if name == "all" || name == "default" {
        Some("is reserved: the kernel refuses to name a link \"all\" or \"default\"")
    } else {
        None
    }
}

/// `interface-never-matches`, `shadowed` and `duplicate` findings of a list of interface
/// names and patterns (`what` names an entry, `list` the list, for messages). Only the
/// entries `redundant_if_covered` accepts can be shadowed (any entry may cover them).
fn patterns(
    out: &mut Out<'_>,
    entries: &[(&InterfacePattern, Pos)],
    redundant_if_covered: &dyn Fn(usize) -> bool,
    what: &str,
    list: &str,
) {
    for (i, &(pattern, at)) in entries.iter().enumerate() {
        if let Some(why) = never_matches(pattern) {
            out.push(
                Code::InterfaceNeverMatches,
                at,
                format!("{what} {:?} {list} {why}", pattern.as_str()),
                "write the name the hypervisor gives the link (`ip link` shows it), e.g. \
                 \"tap-acme-web-0\" or the pattern \"tap-acme-web-*\""
                    .to_owned(),
            );
            continue;
        }
        if !redundant_if_covered(i) {
            continue;
        }
        // Two entries that match the same names: the later one is the duplicate.
        let covering = entries.iter().enumerate().find(|&(j, (other, _))| {
            j != i && other.covers(pattern) && (j < i || !pattern.covers(other))
        });
        if let Some((j, (other, other_at))) = covering {
            let (code, relation) = if pattern.covers(other) && j < i {
                (Code::Duplicate, "matches the same names as")
            } else {
                (
                    Code::Shadowed,
                    "is shadowed: every name it matches is matched by",
                )
            };
            out.push(
                code,
                at,
                format!(
                    "{what} {:?} {list} {relation} {:?} at {}",
                    pattern.as_str(),
                    other.as_str(),
                    line_col(*other_at)
                ),
                "remove it; the entry that covers it already applies to those links".to_owned(),
            );
        }
    }
}

fn interfaces(out: &mut Out<'_>, segment: &Segment, name: &str, at: &[Pos], uplinks_at: &[Pos]) {
    let list = format!("of {name}");
    let entries: Vec<(&InterfacePattern, Pos)> = segment
        .interfaces
        .iter()
        .map(|i| &i.pattern)
        .zip(positions(at))
        .collect();
    // Only an entry without an identity of its own can be redundant: an exact name with
    // a MAC, addresses or other VLANs than the patterns that match it says more.
    let plain = |i: usize| {
        let entry = &segment.interfaces[i];
        entry.mac.is_none()
            && entry.addresses.is_empty()
            && (entry.is_glob()
                || segment
                    .interfaces
                    .iter()
                    .filter(|p| p.is_glob() && p.matches(entry.as_str()))
                    .all(|p| p.vlans == entry.vlans))
    };
    patterns(out, &entries, &plain, "interface", &list);
    let uplinks: Vec<(&InterfacePattern, Pos)> =
        segment.uplinks.iter().zip(positions(uplinks_at)).collect();
    patterns(out, &uplinks, &|_| true, "uplink", &list);
}

/// `exceeds-kernel-capacity`: the policy compiled without the host's links, as the
/// daemon would before adding them.
fn capacity(out: &mut Out<'_>, policy: &Policy) {
    if let Err(e) = crate::compile::Plan::new(policy, crate::compile::HostView::default()) {
        out.push(
            Code::ExceedsKernelCapacity,
            Pos::default(),
            format!("the policy cannot be put into the kernel maps: {e}"),
            "the daemon refuses this policy; merge entries (adjacent port ranges, prefixes) \
             or split the policy between hosts"
                .to_owned(),
        );
    }
}
