//! Policy file, format version 1 (YAML): parsing and validation.
//!
//! A pure module: apart from [`load`] reading the file, nothing here touches the system.
//! [`parse`] returns either a fully validated [`Policy`] or every problem found, each
//! with file, line and column. The format is documented for operators in
//! `docs/policy.md`.
//!
//! Layout: `raw` holds the serde types as written (with source positions), `validate`
//! turns them into the model below (one module per section of the file), `pattern`
//! implements interface name patterns (and `pattern::index` finds which of many overlap
//! one), `nets` finds which of many prefixes overlap one, and [`synthetic`] writes large
//! valid policies for measurements. The tests are in `tests`; the diagnostics for
//! invalid files are fixtures in `fixtures` (a policy file and its exact diagnostics).
//!
//! Beyond validity: [`findings`] reports what a valid policy exposes or admits that an
//! operator should look at (`isolator check`), at the positions `locations` keeps
//! ([`parse_located`]); [`diff`] compares two policies by what they make reachable
//! (`isolator diff`, and the daemon's log of each reload); both compare services
//! through [`reach::ServiceSet`].

pub mod diff;
pub mod findings;
mod incremental;
mod locations;
mod nets;
mod pattern;
mod raw;
pub mod reach;
pub mod synthetic;
mod validate;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_saphyr::{
    DuplicateKeyPolicy, Localizer, Location, RenderOptions, SnippetMode, UserMessageFormatter,
};

pub use incremental::{Cache, Reuse};
pub use locations::{Locations, Pos, SegmentLocations, TenantLocations};
pub(crate) use nets::NetIndex;
pub(crate) use pattern::index::{NameIndex, Term};
pub use pattern::{IFNAME_MAX_BYTES, InterfacePattern, PatternError};

/// The policy format version this module reads.
pub const POLICY_VERSION: u64 = 1;

/// Longest tenant or segment name, in characters.
pub const NAME_MAX_LEN: usize = 63;

/// Largest policy file isolator reads, in bytes (256 MiB). A policy of 100 000 segments
/// with 1 000 000 prefixes and as many exposed endpoints, as [`synthetic`] writes it,
/// takes 124 MB.
pub const MAX_POLICY_BYTES: usize = 256 << 20;

/// Most YAML values (scalars, lists and mappings) a policy may have: 32 000 000, about
/// three times the 11 200 000 of a policy of 100 000 segments with 1 000 000 prefixes and
/// as many exposed endpoints. Without aliases a file of [`MAX_POLICY_BYTES`] cannot reach it by
/// much; with them, it stops an alias bomb (the alias limits below stop it sooner).
pub const MAX_YAML_NODES: usize = 32_000_000;

/// Deepest nesting of lists and mappings: a policy needs 9 (tenants, segments,
/// interfaces, addresses); more is a mistake or an attack on the parser's stack.
pub const MAX_YAML_DEPTH: usize = 32;

/// The YAML parser's limits: sized for a policy of the whole cloud, and far below what
/// would exhaust the host. Aliases (`*name`) keep serde-saphyr's defaults: at most
/// 50 000 of them and of anchors, at most 10 aliases per anchor on average once there are
/// 100, and at most 1 000 000 values copied through them, which is what stops a "billion
/// laughs".
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        with_snippet: false,
        duplicate_keys: DuplicateKeyPolicy::Error,
        budget: serde_saphyr::budget! {
            max_nodes: MAX_YAML_NODES,
            // Every node is one event, every list and mapping one more for its end.
            max_events: 2 * MAX_YAML_NODES,
            // The parser's own nesting limits stay above it (255 flow collections), so that
            // this one, which says how deep, is the one that trips.
            max_depth: MAX_YAML_DEPTH,
            max_total_scalar_bytes: MAX_POLICY_BYTES,
        },
    }
}

/// A validated policy. Source positions are stripped.
///
/// Guarantees: tenant names are unique, segment names are unique within their tenant,
/// names follow the name rules, no interface name can be matched by entries of two
/// segments, no address lies in prefixes of two segments, and no segment prefix overlaps
/// an address range no VM can own (loopback, link-local, multicast, ...; see
/// `docs/policy.md`). Interface identities follow the rules in [`Interface`]. Every
/// exposed endpoint lies inside a prefix of its own segment, every flow names existing
/// segments, no management prefix overlaps a segment prefix, gateways follow the rules in
/// [`Gateway`], no uplink can match a name that an `interfaces` entry or a
/// [`Policy::vif_names`] pattern matches, and connection tracking timeouts are within
/// 1..=[`TIMEOUT_MAX_SECONDS`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// Shared: a reload keeps the tenants whose text did not change (see [`Cache`]).
    pub tenants: Vec<Arc<Tenant>>,
    /// The global default mode (`mode:` at the top level). Each segment's resolved
    /// mode is in [`Segment::mode`]; use that one for enforcement.
    pub mode: Mode,
    /// Infrastructure prefixes no VM may reach, in file order; no two are equal.
    pub management: Vec<Management>,
    pub connection_tracking: ConnectionTracking,
    /// The hypervisor's naming scheme for VM interfaces, in file order; no two are equal.
    /// An interface whose name one of these matches but no segment's `interfaces` entry
    /// is not left open: it is attached to and everything it sends and receives is
    /// dropped (reason `unknown_interface`) until a policy classifies it. May overlap
    /// segments' `interfaces` entries: that is their purpose.
    pub vif_names: Vec<InterfacePattern>,
}

/// A customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    pub segments: Vec<Segment>,
    /// Allowances from one of this tenant's segments to another segment, in file order;
    /// no two are equal, and none goes from a segment to itself.
    pub flows: Vec<Flow>,
}

/// One service (private subnetwork) of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    /// Interface entries (exact names and glob patterns, with their identity), in file
    /// order. Use [`Segment::interface_for`] to find the entry that applies to a host
    /// interface.
    pub interfaces: Vec<Interface>,
    /// Canonical prefixes (no host bits set), in file order.
    pub prefixes: Vec<IpNet>,
    /// Resolved: the segment's own `mode`, else the policy's global one.
    pub mode: Mode,
    /// What happens to traffic from this segment to destinations outside every segment.
    pub egress: Egress,
    /// Endpoints others may reach, in file order; each lies inside one of
    /// [`Segment::prefixes`], no two are equal.
    pub expose: Vec<Expose>,
    /// The segment's VMs may send IPv6 router advertisements and redirects, and ICMPv4
    /// redirects. Default `false`: dropped with reason `ra_guard`.
    pub allow_router_advertisements: bool,
    /// The segment's VMs may send DHCP and DHCPv6 server messages. Default `false`:
    /// dropped with reason `dhcp_guard`.
    pub allow_dhcp_server: bool,
    /// The host's own addresses in this segment (the VMs' gateway) and the services the
    /// segment's VMs may use there, in file order; no two have the same address.
    pub gateways: Vec<Gateway>,
    /// Links that are not VMs (a VXLAN device, a bond towards other hypervisors) over
    /// which this segment's VMs on other hosts reach this host's, in file order; no two
    /// are equal. A frame entering through one counts as from this segment only if its
    /// source address lies in [`Segment::prefixes`]; any other, as from outside. One link
    /// may be an uplink of several segments; none can match a name that an
    /// `interfaces` entry of any segment or a [`Policy::vif_names`] pattern matches.
    pub uplinks: Vec<InterfacePattern>,
}

impl Segment {
    /// The entry of this segment that applies to the interface named `ifname`: its
    /// exact-name entry if it has one, else the first pattern that matches it (validation
    /// guarantees that every pattern of a segment matching one name declares the same
    /// `vlans`, and patterns have no `mac` or `addresses`). `None` if no entry matches.
    pub fn interface_for(&self, ifname: &str) -> Option<&Interface> {
        self.interfaces
            .iter()
            .find(|i| !i.pattern.is_glob() && i.matches(ifname))
            .or_else(|| self.interfaces.iter().find(|i| i.matches(ifname)))
    }
}

/// A MAC address. Displays as `52:54:00:12:34:56` (lowercase hex, `:`-separated).
/// In a validated policy it is unicast and not all zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The group bit (lowest bit of the first octet) is clear.
    pub fn is_unicast(self) -> bool {
        self.0[0] & 1 == 0
    }

    /// `00:00:00:00:00:00`.
    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// One entry of a segment's `interfaces`: an exact name or a glob pattern, and for an
/// exact name optionally the identity of the VM behind it.
///
/// Guarantees of a validated policy: a glob pattern has no `mac` and no `addresses`;
/// no MAC is declared on two interfaces; every address lies inside one of its segment's
/// prefixes, no two of an interface are equal, and no address of one interface overlaps
/// one of another interface; `vlans` are in 1..=4094; patterns of one segment that
/// match a common name have the same `vlans`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub pattern: InterfacePattern,
    /// The only source MAC the VM may use; `None`: not pinned (ARP and neighbour
    /// discovery must still name the frame's own source MAC).
    pub mac: Option<MacAddr>,
    /// The only source addresses the VM may use besides IPv6 link-local ones (and the
    /// unspecified address for DHCP discovery and duplicate address detection):
    /// canonical (a lone address in the file becomes a /32 or /128), in file order.
    /// Empty: any address of the segment's prefixes.
    pub addresses: Vec<IpNet>,
    /// 802.1Q VLAN ids the VM may tag frames with, sorted, deduplicated. Empty: tagged
    /// frames are dropped.
    pub vlans: Vec<u16>,
}

impl Interface {
    /// An entry with no identity: no MAC, no addresses, no VLANs.
    pub fn new(pattern: InterfacePattern) -> Self {
        Self {
            pattern,
            mac: None,
            addresses: Vec::new(),
            vlans: Vec::new(),
        }
    }

    /// Whether the interface named `ifname` is matched by this entry's pattern.
    pub fn matches(&self, ifname: &str) -> bool {
        self.pattern.matches(ifname)
    }

    /// The name or pattern as written in the policy.
    pub fn as_str(&self) -> &str {
        self.pattern.as_str()
    }

    /// `true` for a glob pattern, `false` for an exact name.
    pub fn is_glob(&self) -> bool {
        self.pattern.is_glob()
    }
}

impl From<InterfacePattern> for Interface {
    fn from(pattern: InterfacePattern) -> Self {
        Self::new(pattern)
    }
}

/// Whether a segment's verdicts are enforced or only counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Drop what the policy forbids.
    #[default]
    Enforce,
    /// Count what would be dropped (as an audit verdict, under its reason) and pass it.
    Audit,
}

impl Mode {
    /// The keyword used in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP protocol selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP for IPv4 and ICMPv6 for IPv6, every message type.
    Icmp,
    /// Every IP protocol.
    Any,
}

impl Protocol {
    /// The keyword used in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Any => "any",
        }
    }

    /// Whether the protocol has ports (`tcp`, `udp`).
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive range of TCP or UDP ports. Validated: `1 <= first <= last <= 65535`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// A range, or `None` if it breaks the rules (port 0, or `first > last`).
    pub fn new(first: u16, last: u16) -> Option<Self> {
        (first >= 1 && first <= last).then_some(Self { first, last })
    }

    /// A single port, or `None` for port 0.
    pub fn single(port: u16) -> Option<Self> {
        Self::new(port, port)
    }

    /// Whether `port` is in the range.
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    /// `443`, or `8000-8080`: the forms the policy file accepts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A protocol and, for TCP and UDP, optionally a port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Service {
    pub protocol: Protocol,
    /// `None` = every port. Always `None` for [`Protocol::Icmp`] and [`Protocol::Any`].
    pub ports: Option<PortRange>,
}

impl Service {
    /// Every protocol, every port.
    pub const ANY: Service = Service {
        protocol: Protocol::Any,
        ports: None,
    };
}

impl fmt::Display for Service {
    /// `tcp 443`, `udp 8000-8080`, `tcp` (every port), `icmp`, `any`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.protocol)?;
        if let Some(ports) = self.ports {
            write!(f, " {ports}")?;
        }
        Ok(())
    }
}

/// What happens to traffic from a segment to destinations outside every segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Egress {
    #[default]
    Allow,
    /// Dropped with reason `egress_denied`.
    Deny,
}

impl Egress {
    /// The keyword used in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Egress::Allow => "allow",
            Egress::Deny => "deny",
        }
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An endpoint of a segment that others (other segments, outside) may reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Expose {
    /// Canonical; a lone address in the file becomes a /32 or /128.
    pub prefix: IpNet,
    pub service: Service,
}

/// A segment named by its tenant and its own name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentId {
    pub tenant: String,
    pub segment: String,
}

impl fmt::Display for SegmentId {
    /// `tenant/segment`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.segment)
    }
}

/// An allowance from a segment of the owning tenant to another segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Flow {
    /// A segment of the tenant that lists the flow.
    pub from: String,
    /// Resolved: the tenant is always filled in, also for a segment of the same tenant.
    pub to: SegmentId,
    pub service: Service,
}

/// The host's own address in a segment (the VMs' gateway), and what the segment's VMs
/// may use there. Everything else a VM sends to the address is dropped (reason
/// `management`); address resolution for it (ARP, neighbour discovery) passes.
///
/// Guarantees of a validated policy: the address lies inside one of its segment's
/// prefixes or is IPv6 link-local (fe80::/10); no other gateway of the segment has it;
/// no interface of any segment declares it in `addresses`; it lies in no exposed
/// endpoint of its segment and in no management prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Gateway {
    pub address: IpAddr,
    /// The services the segment's VMs may use at the address, in file order; no two are
    /// equal. Empty: none, only address resolution. (Unlike [`Management::services`],
    /// where empty means every service.)
    pub services: Vec<Service>,
}

/// An address range of the infrastructure that no VM may reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Management {
    /// Canonical; overlaps no segment prefix.
    pub prefix: IpNet,
    /// The protected services; empty = every protocol and port. No two are equal.
    pub services: Vec<Service>,
}

/// Longest connection tracking timeout, in seconds (one day).
pub const TIMEOUT_MAX_SECONDS: u32 = 86_400;

/// Connection tracking idle timeouts, each in 1..=[`TIMEOUT_MAX_SECONDS`] seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionTracking {
    /// An established TCP connection with no packet for this long ends.
    pub tcp_idle_seconds: u32,
    /// A TCP connection that saw FIN or RST ends after this long.
    pub tcp_closing_seconds: u32,
    /// A UDP conversation with no datagram for this long ends.
    pub udp_idle_seconds: u32,
    /// An ICMP echo exchange with no packet for this long ends.
    pub icmp_idle_seconds: u32,
}

impl Default for ConnectionTracking {
    fn default() -> Self {
        Self {
            tcp_idle_seconds: 7440,
            tcp_closing_seconds: 10,
            udp_idle_seconds: 120,
            icmp_idle_seconds: 30,
        }
    }
}

impl Policy {
    /// Whether the policy claims the link named `ifname` as a VM's: a segment's
    /// `interfaces` or `vif_names` match it. Such a link must never pass frames unjudged.
    pub fn claims(&self, ifname: &str) -> bool {
        self.tenants
            .iter()
            .flat_map(|t| &t.segments)
            .any(|s| s.interface_for(ifname).is_some())
            || self.vif_names.iter().any(|p| p.matches(ifname))
    }

    /// Counts for a one-line report.
    pub fn summary(&self) -> Summary {
        let segments = || self.tenants.iter().flat_map(|t| &t.segments);
        Summary {
            tenants: self.tenants.len(),
            segments: segments().count(),
            interfaces: segments().map(|s| s.interfaces.len()).sum(),
            prefixes: segments().map(|s| s.prefixes.len()).sum(),
            exposed: segments().map(|s| s.expose.len()).sum(),
            flows: self.tenants.iter().map(|t| t.flows.len()).sum(),
            management: self.management.len(),
            gateways: segments().map(|s| s.gateways.len()).sum(),
            uplinks: segments().map(|s| s.uplinks.len()).sum(),
        }
    }

    /// The segment that manages the interface named `ifname`, if any. Validation
    /// guarantees at most one segment matches.
    pub fn segment_for_interface(&self, ifname: &str) -> Option<(&Tenant, &Segment)> {
        self.tenants.iter().find_map(|tenant| {
            tenant
                .segments
                .iter()
                .find(|segment| segment.interfaces.iter().any(|p| p.matches(ifname)))
                .map(|segment| (&**tenant, segment))
        })
    }

    /// The segment `id` names, if it exists. Every [`Flow::to`] of a validated policy
    /// resolves.
    pub fn segment(&self, id: &SegmentId) -> Option<(&Tenant, &Segment)> {
        let tenant = self.tenants.iter().find(|t| t.name == id.tenant)?;
        let segment = tenant.segments.iter().find(|s| s.name == id.segment)?;
        Some((tenant, segment))
    }
}

/// Counts of a policy's elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub tenants: usize,
    pub segments: usize,
    /// Interface entries (exact names and patterns).
    pub interfaces: usize,
    pub prefixes: usize,
    /// Exposed endpoints of all segments.
    pub exposed: usize,
    /// Flows of all tenants.
    pub flows: usize,
    /// Management prefixes.
    pub management: usize,
    /// Gateways of all segments.
    pub gateways: usize,
    /// Uplink entries of all segments (a link that carries several segments counts once
    /// for each).
    pub uplinks: usize,
}

impl fmt::Display for Summary {
    /// E.g. `2 tenants, 4 segments, 6 interface patterns, 8 prefixes`. Exposed
    /// endpoints, flows, management prefixes, gateways and uplinks are not part of the
    /// line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn count(n: usize, one: &str, many: &str) -> String {
            format!("{n} {}", if n == 1 { one } else { many })
        }
        write!(
            f,
            "{}, {}, {}, {}",
            count(self.tenants, "tenant", "tenants"),
            count(self.segments, "segment", "segments"),
            count(self.interfaces, "interface pattern", "interface patterns"),
            count(self.prefixes, "prefix", "prefixes"),
        )
    }
}

/// One problem in a policy file. `line` and `column` are 1-based; both are 0 when the
/// problem has no position (e.g. the file cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: u64,
    pub column: u64,
    /// What is wrong, quoting the offending value.
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE:COL: error: MESSAGE`, then `  help: HELP` on a second line if present.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// All problems found in a policy file, sorted by position. Never empty when returned
/// by [`parse`] or [`load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    /// Each diagnostic on its own line (two lines with help), every line terminated by
    /// `\n`, so `eprint!("{diagnostics}")` prints a complete report.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for diagnostic in &self.0 {
            writeln!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Parses and validates a policy. `file_name` is only used in diagnostics.
///
/// # Errors
///
/// YAML syntax errors, unknown keys, duplicate keys and wrong value types stop parsing
/// and yield one diagnostic; otherwise every semantic problem is reported, sorted by
/// position.
pub fn parse(source: &str, file_name: &str) -> Result<Policy, Diagnostics> {
    parse_timed(source, file_name).0
}

/// How long the two phases of [`parse`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseTimes {
    /// Reading the YAML into the file's structure (with source positions).
    pub yaml: Duration,
    /// Checking it, building the [`Policy`] and freeing the file's structure; zero when
    /// the YAML phase failed.
    pub validate: Duration,
}

/// [`parse`], and how long its phases took.
pub fn parse_timed(source: &str, file_name: &str) -> (Result<Policy, Diagnostics>, ParseTimes) {
    parse_raw(source, file_name, |raw| {
        validate::validate(raw, file_name).map_err(Diagnostics)
    })
}

/// [`parse`], and where each entry of the policy is written in the file (for
/// [`findings`], which point at entries of a valid policy).
///
/// # Errors
///
/// As [`parse`].
pub fn parse_located(source: &str, file_name: &str) -> Result<(Policy, Locations), Diagnostics> {
    parse_raw(source, file_name, |raw| {
        let policy = validate::validate(raw, file_name).map_err(Diagnostics)?;
        Ok((policy, Locations::new(raw, file_name)))
    })
    .0
}

/// Files larger than this are freed on a thread of their own once read.
const FREE_IN_BACKGROUND_BYTES: usize = 1 << 20;

/// Frees the structure of a file of `size` bytes: for a large one (about 0.3 s for
/// 100 000 segments) on a thread of its own, not on the way of whoever waits for the
/// policy; here if no thread can be started.
fn free_in_background<T: Send + 'static>(size: usize, structure: T) {
    if size > FREE_IN_BACKGROUND_BYTES {
        // On error the closure, and the structure with it, is dropped here.
        let _ = std::thread::Builder::new()
            .name("free".into())
            .spawn(move || drop(structure));
    }
}

/// Reads the YAML of a policy and hands it to `check`, timing both phases.
fn parse_raw<T>(
    source: &str,
    file_name: &str,
    check: impl FnOnce(&raw::RawPolicy) -> Result<T, Diagnostics>,
) -> (Result<T, Diagnostics>, ParseTimes) {
    let mut times = ParseTimes::default();
    if source.len() > MAX_POLICY_BYTES {
        return (
            Err(Diagnostics(vec![too_large(file_name, source.len())])),
            times,
        );
    }
    let started = Instant::now();
    let raw = serde_saphyr::from_str_with_options::<raw::RawPolicy>(source, yaml_options());
    times.yaml = started.elapsed();
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => {
            return (
                Err(Diagnostics(vec![yaml_diagnostic(&e, file_name)])),
                times,
            );
        }
    };
    let started = Instant::now();
    let checked = check(&raw);
    times.validate = started.elapsed();
    free_in_background(source.len(), raw);
    (checked, times)
}

/// Reads and parses a policy file. Diagnostics name the file as `path` displays.
///
/// # Errors
///
/// As [`parse`]; an unreadable file yields one diagnostic at line 0, column 0.
pub fn load(path: &Path) -> Result<Policy, Diagnostics> {
    let (source, file_name) = read(path)?;
    parse(&source, &file_name)
}

/// [`load`], and where each entry of the policy is written (see [`parse_located`]).
///
/// # Errors
///
/// As [`load`].
pub fn load_located(path: &Path) -> Result<(Policy, Locations), Diagnostics> {
    let (source, file_name) = read(path)?;
    parse_located(&source, &file_name)
}

/// The text of a policy file and its name for diagnostics.
fn read(path: &Path) -> Result<(String, String), Diagnostics> {
    let file_name = path.display().to_string();
    // Refused before it is read, not after.
    if let Ok(metadata) = std::fs::metadata(path)
        && let Ok(size) = usize::try_from(metadata.len())
        && size > MAX_POLICY_BYTES
    {
        return Err(Diagnostics(vec![too_large(&file_name, size)]));
    }
    let source = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: file_name.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read policy file: {e}"),
            help: Some("check the path and permissions".to_owned()),
        }])
    })?;
    Ok((source, file_name))
}

/// A file larger than [`MAX_POLICY_BYTES`].
fn too_large(file_name: &str, size: usize) -> Diagnostic {
    Diagnostic {
        file: file_name.to_owned(),
        line: 0,
        column: 0,
        message: format!(
            "the policy file is {size} bytes long; isolator reads policy files of at most \
             {MAX_POLICY_BYTES} bytes (256 MiB)"
        ),
        help: Some(
            "check that this is the policy file; a policy of 100 000 segments with 1 000 000 \
             prefixes and as many exposed endpoints takes about 125 MB"
                .to_owned(),
        ),
    }
}

/// What is wrong, and what to do, when the YAML breaks one of the limits of
/// [`yaml_options`]; `None` for any other error.
fn limit_diagnostic(error: &serde_saphyr::Error) -> Option<(String, String)> {
    use serde_saphyr::Error as E;
    use serde_saphyr::budget::BudgetBreach as B;
    const ALIAS_HELP: &str = "a policy needs no YAML anchors (`&name`) and aliases (`*name`): \
         write the values out. The limit guards against documents that expand enormously \
         through aliases (\"billion laughs\")";
    let nodes = || {
        (
            format!(
                "the policy has more than {MAX_YAML_NODES} YAML values (scalars, lists and \
                 mappings), the most isolator reads"
            ),
            "check that this is the policy file; a policy of 100 000 segments with \
             1 000 000 prefixes and as many exposed endpoints has about 11 000 000 values \
             (each use of an alias `*name` counts its anchor's values again)"
                .to_owned(),
        )
    };
    let aliases = |what: String| {
        (
            format!("the policy's YAML aliases {what}"),
            ALIAS_HELP.to_owned(),
        )
    };
    let mut error = error;
    while let E::AliasError { error: inner, .. } | E::WithSnippet { error: inner, .. } = error {
        error = inner;
    }
    let depth = |depth: String| {
        (
            format!(
                "the policy nests lists and mappings {depth}deep; isolator reads at most \
                 {MAX_YAML_DEPTH} levels"
            ),
            "a policy nests at most 9 levels (tenants, segments, interfaces, addresses): \
             check the indentation and the brackets"
                .to_owned(),
        )
    };
    Some(match error {
        E::Budget { breach, .. } => match breach {
            B::Nodes { .. } | B::Events { .. } => nodes(),
            B::Depth { depth: n } => depth(format!("{n} levels ")),
            B::ScalarBytes { total_scalar_bytes } => (
                format!(
                    "the policy's values hold {total_scalar_bytes} bytes; isolator reads at \
                     most {MAX_POLICY_BYTES}"
                ),
                "check that this is the policy file (each use of an alias `*name` counts its \
                 anchor's values again)"
                    .to_owned(),
            ),
            B::Aliases { aliases: n } => aliases(format!("are used {n} times, more than allowed")),
            B::Anchors { anchors } => aliases(format!(
                "have {anchors} anchors (`&name`), more than allowed"
            )),
            B::AliasAnchorRatio {
                aliases: n,
                anchors,
            } => aliases(format!(
                "are used {n} times for {anchors} anchors (`&name`), more than 10 uses per \
                 anchor"
            )),
            B::RecordedAnchorEvents { .. } => aliases(format!(
                "expand to more than {} values",
                serde_saphyr::Budget::default().max_recorded_anchor_events
            )),
            B::RecordedAnchorBytes { .. } => aliases(format!(
                "expand to more than {} bytes",
                serde_saphyr::Budget::default().max_recorded_anchor_bytes
            )),
            _ => return None,
        },
        E::AliasReplayLimitExceeded {
            max_total_replayed_events,
            ..
        } => aliases(format!(
            "expand to more than {max_total_replayed_events} values"
        )),
        E::AliasExpansionLimitExceeded { .. } | E::AliasReplayCounterOverflow { .. } => {
            aliases("expand to more values than allowed".to_owned())
        }
        E::AliasReplayStackDepthExceeded { max_depth, .. } => aliases(format!(
            "nest more than {max_depth} deep (an alias of an anchor that holds an alias ...)"
        )),
        // The parser's own nesting limit, should it trip first.
        _ if error.to_string().starts_with("recursion limit exceeded") => depth("too ".to_owned()),
        _ => return None,
    })
}

/// Renders messages without serde-saphyr's "at line X, column Y" suffix: the position
/// goes in front, as in every other diagnostic.
struct NoLocationSuffix;

impl Localizer for NoLocationSuffix {
    fn attach_location<'a>(&self, base: Cow<'a, str>, _loc: Location) -> Cow<'a, str> {
        base
    }
}

fn yaml_diagnostic(error: &serde_saphyr::Error, file_name: &str) -> Diagnostic {
    let formatter = UserMessageFormatter.with_localizer(&NoLocationSuffix);
    let mut options = RenderOptions::new(&formatter);
    options.snippets = SnippetMode::Off;
    let (line, column) = error.location().map_or((0, 0), |l| (l.line(), l.column()));
    if let Some((message, help)) = limit_diagnostic(error) {
        return Diagnostic {
            file: file_name.to_owned(),
            line,
            column,
            message,
            help: Some(help),
        };
    }
    let message = error.render_with_options(options);
    Diagnostic {
        file: file_name.to_owned(),
        line,
        column,
        help: yaml_help(error, &message),
        message,
    }
}

fn yaml_help(error: &serde_saphyr::Error, message: &str) -> Option<String> {
    use serde_saphyr::Error as E;
    let help = match error.without_snippet() {
        E::Eof { .. } => "the policy file is empty; it needs at least `version: 1` and `tenants:`",
        E::Unexpected {
            expected: "sequence start",
            ..
        } => "a list is expected here: `[a, b]`, or one `- item` per line",
        E::Unexpected {
            expected: "mapping start",
            ..
        } => "a mapping is expected here: `key: value` entries",
        E::Unexpected {
            expected: "string scalar",
            ..
        } => "a single value is expected here, not a list or a mapping",
        E::NullIntoString { .. } => "write a value after the colon",
        E::MultipleDocuments { .. } => {
            "a policy file holds exactly one YAML document; remove the `---` separator"
        }
        _ if message.starts_with("unknown field") => {
            "remove the key or fix its spelling; the message lists the keys allowed here \
             (see docs/policy.md)"
        }
        _ if message.starts_with("duplicate mapping key") => {
            "each key may appear only once in a mapping; remove or merge the repeated key"
        }
        _ => return None,
    };
    Some(help.to_owned())
}
