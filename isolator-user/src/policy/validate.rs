//! Semantic validation: turns the positioned raw model into a [`Policy`], collecting
//! every problem as a [`Diagnostic`].

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use super::raw::{
    RawConnectionTracking, RawExpose, RawFlag, RawInterface, RawInterfaceEntry,
    RawInterfaceMapping, RawManagement, RawPolicy, RawPorts, RawScalar, RawSeconds, RawVersion,
    RawVlan,
};
use super::{
    ConnectionTracking, Diagnostic, Egress, Expose, Flow, Interface, InterfacePattern, MacAddr,
    Management, Mode, NAME_MAX_LEN, POLICY_VERSION, Policy, PortRange, Protocol, Segment,
    SegmentId, Service, TIMEOUT_MAX_SECONDS, Tenant,
};

/// (tenant index, segment index): identifies a segment within the file.
type SegmentIx = (usize, usize);

struct Checker<'a> {
    file: &'a str,
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
}

fn pos(at: &Location) -> String {
    format!("{}:{}", at.line(), at.column())
}

pub(super) fn validate(raw: &RawPolicy, file: &str) -> Result<Policy, Vec<Diagnostic>> {
    let mut cx = Checker {
        file,
        diagnostics: Vec::new(),
    };

    check_version(&mut cx, &raw.version);
    check_names(&mut cx, raw);

    // Qualified `tenant/segment` names for messages, indexed by SegmentIx.
    let qualified = |(t, s): SegmentIx| {
        let tenant = &raw.tenants[t];
        format!("{}/{}", tenant.name.value, tenant.segments[s].name.value)
    };

    let mode = raw
        .mode
        .as_ref()
        .and_then(|m| choose(&mut cx, m, &MODE))
        .unwrap_or_default();
    let connection_tracking = check_connection_tracking(
        &mut cx,
        raw.connection_tracking
            .as_ref()
            .unwrap_or(&Default::default()),
    );

    let mut interfaces: Vec<Placed<InterfacePattern>> = Vec::new();
    let mut prefixes: Vec<Placed<IpNet>> = Vec::new();
    // Segments all of whose prefixes are valid, indexed like `raw.tenants[t].segments[s]`:
    // only these get the "exposed endpoint outside its segment" check.
    let mut prefixes_complete: Vec<Vec<bool>> = Vec::with_capacity(raw.tenants.len());
    let mut tenants = Vec::with_capacity(raw.tenants.len());
    for (t, raw_tenant) in raw.tenants.iter().enumerate() {
        let mut segments = Vec::with_capacity(raw_tenant.segments.len());
        let mut complete = Vec::with_capacity(raw_tenant.segments.len());
        for (s, raw_segment) in raw_tenant.segments.iter().enumerate() {
            let id = (t, s);
            let mut segment = Segment {
                name: raw_segment.name.value.clone(),
                interfaces: Vec::with_capacity(raw_segment.interfaces.len()),
                prefixes: Vec::with_capacity(raw_segment.prefixes.len()),
                // Resolved here: the segment's own mode, else the global one.
                mode: match &raw_segment.mode {
                    Some(own) => choose(&mut cx, own, &MODE).unwrap_or(mode),
                    None => mode,
                },
                egress: raw_segment
                    .egress
                    .as_ref()
                    .and_then(|e| choose(&mut cx, e, &EGRESS))
                    .unwrap_or_default(),
                expose: Vec::with_capacity(raw_segment.expose.len()),
                allow_router_advertisements: check_flag(
                    &mut cx,
                    raw_segment.allow_router_advertisements.as_ref(),
                    &ALLOW_RA,
                ),
                allow_dhcp_server: check_flag(
                    &mut cx,
                    raw_segment.allow_dhcp_server.as_ref(),
                    &ALLOW_DHCP_SERVER,
                ),
            };

            // Names and patterns here; identities once every segment's prefixes are known.
            for entry in &raw_segment.interfaces {
                let Some(name) = interface_name(&mut cx, entry) else {
                    continue;
                };
                match InterfacePattern::new(name.value) {
                    Err(e) => cx.error(&name.referenced, e.message, e.help),
                    Ok(pattern) => {
                        let placed = Placed {
                            value: pattern,
                            raw: name.value.to_owned(),
                            at: name.referenced,
                            segment: id,
                        };
                        check_interface(&mut cx, &interfaces, &placed, &qualified);
                        interfaces.push(placed);
                    }
                }
            }

            let mut all_valid = true;
            for entry in &raw_segment.prefixes {
                match parse_prefix(&entry.value) {
                    Err((message, help)) => {
                        all_valid = false;
                        cx.error(&entry.referenced, message, help);
                    }
                    Ok(net) => {
                        let placed = Placed {
                            value: net,
                            raw: entry.value.clone(),
                            at: entry.referenced,
                            segment: id,
                        };
                        check_prefix(&mut cx, &prefixes, &placed, &qualified);
                        prefixes.push(placed);
                        segment.prefixes.push(net);
                    }
                }
            }

            segments.push(segment);
            complete.push(all_valid);
        }
        tenants.push(Tenant {
            name: raw_tenant.name.value.clone(),
            segments,
            flows: Vec::new(),
        });
        prefixes_complete.push(complete);
    }

    // Interface identities, exposed endpoints and flows refer to prefixes and segments
    // anywhere in the file.
    let mut identities = Identities::default();
    for (t, raw_tenant) in raw.tenants.iter().enumerate() {
        for (s, raw_segment) in raw_tenant.segments.iter().enumerate() {
            tenants[t].segments[s].interfaces = check_identities(
                &mut cx,
                &raw_segment.interfaces,
                &tenants[t].segments[s].prefixes,
                prefixes_complete[t][s].then_some(&prefixes[..]),
                (t, s),
                &qualified,
                &mut identities,
            );
            let expose = check_expose(
                &mut cx,
                &raw_segment.expose,
                &tenants[t].segments[s].prefixes,
                prefixes_complete[t][s].then_some(&prefixes[..]),
                (t, s),
                &qualified,
            );
            tenants[t].segments[s].expose = expose;
        }
        tenants[t].flows = check_flows(&mut cx, raw, t);
    }
    let management = check_management(&mut cx, &raw.management, &prefixes, &qualified);

    if cx.diagnostics.is_empty() {
        Ok(Policy {
            tenants,
            mode,
            management,
            connection_tracking,
        })
    } else {
        // Stable: problems at the same position keep the order they were found in.
        cx.diagnostics.sort_by_key(|d| (d.line, d.column));
        Err(cx.diagnostics)
    }
}

fn check_version(cx: &mut Checker<'_>, version: &Spanned<RawVersion>) {
    match &version.value {
        RawVersion::Number(POLICY_VERSION) => {}
        RawVersion::Number(n) => cx.error(
            &version.referenced,
            format!("unsupported policy format version {n}"),
            Some(format!(
                "this isolator reads version {POLICY_VERSION}; write `version: {POLICY_VERSION}` \
                 and use only the keys of that version"
            )),
        ),
        RawVersion::Other(shown) => cx.error(
            &version.referenced,
            format!("`version` must be the number {POLICY_VERSION}, found {shown}"),
            Some(format!("write `version: {POLICY_VERSION}`")),
        ),
    }
}

fn check_names(cx: &mut Checker<'_>, raw: &RawPolicy) {
    let mut tenant_names: HashMap<&str, Location> = HashMap::new();
    for tenant in &raw.tenants {
        check_name(cx, "tenant", &tenant.name);
        let name = tenant.name.value.as_str();
        if let Some(first) = tenant_names.get(name) {
            cx.error(
                &tenant.name.referenced,
                format!(
                    "duplicate tenant name {name:?}: already defined at {}",
                    pos(first)
                ),
                Some("give each tenant a unique name, or merge the two entries".to_owned()),
            );
        } else {
            tenant_names.insert(name, tenant.name.referenced);
        }

        let mut segment_names: HashMap<&str, Location> = HashMap::new();
        for segment in &tenant.segments {
            check_name(cx, "segment", &segment.name);
            let seg = segment.name.value.as_str();
            if let Some(first) = segment_names.get(seg) {
                cx.error(
                    &segment.name.referenced,
                    format!(
                        "duplicate segment name {seg:?} in tenant {name:?}: already defined at {}",
                        pos(first)
                    ),
                    Some(
                        "give each segment of a tenant a unique name, or merge the two entries"
                            .to_owned(),
                    ),
                );
            } else {
                segment_names.insert(seg, segment.name.referenced);
            }
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}

/// A valid name derived from an invalid one, if there is an obvious one.
fn suggest_name(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        let c = if is_name_char(c) { c } else { '-' };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    let out = out.trim_matches(|c| c == '-' || c == '_').to_owned();
    (!out.is_empty() && out.len() <= NAME_MAX_LEN && out != name).then_some(out)
}

fn check_name(cx: &mut Checker<'_>, kind: &str, name: &Spanned<String>) {
    const RULES: &str = "names use lowercase letters a-z, digits 0-9, '-' and '_', start with a \
                         letter or digit, and have at most 63 characters";
    let value = name.value.as_str();
    let mut bad: Vec<String> = Vec::new();
    for c in value.chars().filter(|&c| !is_name_char(c)) {
        let shown = if c.is_whitespace() {
            "whitespace".to_owned()
        } else {
            format!("{c:?}")
        };
        if !bad.contains(&shown) {
            bad.push(shown);
        }
    }

    let message = if value.is_empty() {
        format!("{kind} name is empty")
    } else if !bad.is_empty() {
        format!(
            "{kind} name {value:?} contains {}, which is not allowed in names",
            bad.join(", ")
        )
    } else if value.starts_with(['-', '_']) {
        format!("{kind} name {value:?} must start with a lowercase letter or digit")
    } else if value.len() > NAME_MAX_LEN {
        format!(
            "{kind} name {value:?} is {} characters long; the maximum is {NAME_MAX_LEN}",
            value.len()
        )
    } else {
        return;
    };
    let help = match suggest_name(value) {
        Some(suggestion) => format!("did you mean {suggestion:?}? {RULES}"),
        None => RULES.to_owned(),
    };
    cx.error(&name.referenced, message, Some(help));
}

/// A validated entry with its source position and owning segment.
struct Placed<T> {
    value: T,
    /// As written in the file, for messages.
    raw: String,
    at: Location,
    segment: SegmentIx,
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

/// First conflicting earlier entry, and how many more there are.
fn first_conflict<'p, T>(
    earlier: &'p [Placed<T>],
    new: &Placed<T>,
    conflict: impl Fn(&T, &T) -> Option<Conflict>,
) -> Option<(&'p Placed<T>, Conflict, usize)> {
    let mut found = earlier.iter().filter_map(|old| {
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

fn and_more(more: usize, one: &str, many: &str) -> String {
    match more {
        0 => String::new(),
        1 => format!(" (and 1 more {one})"),
        n => format!(" (and {n} more {many})"),
    }
}

fn describe_interface(raw: &str, pattern: &InterfacePattern) -> String {
    if pattern.is_glob() {
        format!("interface pattern {raw:?}")
    } else {
        format!("interface {raw:?}")
    }
}

fn check_interface(
    cx: &mut Checker<'_>,
    earlier: &[Placed<InterfacePattern>],
    new: &Placed<InterfacePattern>,
    qualified: &impl Fn(SegmentIx) -> String,
) {
    let Some((old, conflict, more)) = first_conflict(earlier, new, |a, b| {
        if a == b {
            Some(Conflict::Repeated)
        } else {
            a.overlap_example(b).map(|ex| Conflict::Overlap(Some(ex)))
        }
    }) else {
        return;
    };
    let this = describe_interface(&new.raw, &new.value);
    let (message, help) = match conflict {
        Conflict::Repeated => (
            format!(
                "{this} is listed twice in segment {}: first at {}",
                qualified(new.segment),
                pos(&old.at)
            ),
            "remove one of the two entries".to_owned(),
        ),
        Conflict::Shared => (
            format!(
                "{this} of segment {} is also listed in segment {} at {}{}",
                qualified(new.segment),
                qualified(old.segment),
                pos(&old.at),
                and_more(more, "conflicting entry", "conflicting entries"),
            ),
            "an interface can belong to only one segment; remove one of the two entries".to_owned(),
        ),
        Conflict::Overlap(example) => (
            format!(
                "{this} of segment {} overlaps {} of segment {} at {}{}{}",
                qualified(new.segment),
                describe_interface(&old.raw, &old.value),
                qualified(old.segment),
                pos(&old.at),
                example
                    .map(|ex| format!(": both match {ex:?}"))
                    .unwrap_or_default(),
                and_more(more, "conflicting entry", "conflicting entries"),
            ),
            "an interface can belong to only one segment; make the patterns disjoint, e.g. \
             give each segment its own literal name prefix"
                .to_owned(),
        ),
    };
    cx.error(&new.at, message, Some(help));
}

/// The interface name (or pattern) of an entry with its position, or `None` after
/// reporting an entry that is neither a string nor a mapping with `name`.
fn interface_name<'r>(cx: &mut Checker<'_>, entry: &'r RawInterface) -> Option<Spanned<&'r str>> {
    if let RawInterfaceEntry::NotAString { kind, shown } = &entry.value {
        let (message, help) = if shown.is_empty() {
            (
                "interface entry is empty".to_owned(),
                "write an interface name such as \"veth-acme1\", a pattern such as \
                 \"tap-acme-*\", or a mapping with `name`; or remove the entry"
                    .to_owned(),
            )
        } else {
            (
                format!(
                    "interface entry must be a name or a mapping with `name`, found {kind} \
                     {shown}"
                ),
                "YAML reads some unquoted values (numbers, true/false, yes/no, on/off) as \
                 something other than text: write the interface name in quotes"
                    .to_owned(),
            )
        };
        cx.error(&entry.referenced, message, Some(help));
    }
    let name = entry.value.name(entry.referenced);
    if let (RawInterfaceEntry::Mapping(_), None) = (&entry.value, &name) {
        cx.error(
            &entry.referenced,
            "interface entry has no `name`".to_owned(),
            Some(
                "write the interface's exact name (or a pattern) under `name`, e.g. \
                 `- name: tap-acme-web-01`"
                    .to_owned(),
            ),
        );
    }
    name
}

// ---------------------------------------------------------------- interface identities

/// Identities declared so far anywhere in the file: no MAC or address may belong to two
/// interfaces.
#[derive(Default)]
struct Identities {
    /// (MAC, interface name, position of the `mac` value, segment).
    macs: Vec<(MacAddr, String, Location, SegmentIx)>,
    addresses: Vec<Declared>,
}

/// A declared address of an interface.
struct Declared {
    net: IpNet,
    /// As written in the file.
    raw: String,
    interface: String,
    at: Location,
    segment: SegmentIx,
}

/// The interface entry whose identity is being checked.
struct Entry<'a> {
    name: &'a str,
    /// `interface "name"` or `interface pattern "name"`, for messages.
    this: String,
    glob: bool,
    /// The name is valid: the entry's MAC and addresses take part in the uniqueness
    /// checks.
    valid: bool,
    segment: SegmentIx,
}

/// The interfaces of segment `own` with their identities. `all_prefixes` is `None`
/// when some prefix of the segment is invalid: then whether an address lies inside the
/// segment is unknown and not checked. Entries whose name is invalid are left out (their
/// name was reported); what of their identity does not depend on the name is checked.
fn check_identities(
    cx: &mut Checker<'_>,
    raw: &[RawInterface],
    own_prefixes: &[IpNet],
    all_prefixes: Option<&[Placed<IpNet>]>,
    own: SegmentIx,
    qualified: &impl Fn(SegmentIx) -> String,
    identities: &mut Identities,
) -> Vec<Interface> {
    // Entries with a valid name, with the name's position.
    let mut out: Vec<(Interface, Location)> = Vec::with_capacity(raw.len());
    for raw_entry in raw {
        let Some(name) = raw_entry.value.name(raw_entry.referenced) else {
            continue;
        };
        let pattern = InterfacePattern::new(name.value).ok();
        let RawInterfaceEntry::Mapping(mapping) = &raw_entry.value else {
            out.extend(pattern.map(|p| (Interface::new(p), name.referenced)));
            continue;
        };
        let entry = Entry {
            name: name.value,
            this: match &pattern {
                Some(p) => describe_interface(name.value, p),
                None => format!("interface {:?}", name.value),
            },
            glob: pattern.as_ref().is_some_and(InterfacePattern::is_glob),
            valid: pattern.is_some(),
            segment: own,
        };
        let mac = mapping
            .mac
            .as_ref()
            .and_then(|mac| check_mac(cx, mac, &entry, qualified, identities));
        let addresses = check_addresses(
            cx,
            mapping,
            &entry,
            own_prefixes,
            all_prefixes,
            qualified,
            identities,
        );
        let vlans = check_vlans(cx, mapping, &entry);
        if let Some(pattern) = pattern {
            let interface = Interface {
                pattern,
                mac,
                addresses,
                vlans,
            };
            out.push((interface, name.referenced));
        }
    }
    check_pattern_vlans(cx, &out, own, qualified);
    out.into_iter().map(|(interface, _)| interface).collect()
}

const MAC_FORM: &str = "write a MAC address as six pairs of hex digits separated by ':', e.g. \
                        \"52:54:00:12:34:56\"";

/// The six octets of `s` written as six pairs of hex digits (either case) separated by
/// `separator`, if it is.
fn mac_octets(s: &str, separator: char) -> Option<[u8; 6]> {
    let mut octets = [0u8; 6];
    let mut parts = s.split(separator);
    for octet in &mut octets {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *octet = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(octets)
}

/// Parses a `mac:` value: a unicast MAC address other than all zeros.
fn parse_mac(s: &str) -> Result<MacAddr, (String, String)> {
    let Some(octets) = mac_octets(s, ':') else {
        // Other common spellings: '-' separators, or twelve hex digits in a row.
        let compact = || {
            let pairs: Option<Vec<&str>> = (0..6).map(|i| s.get(2 * i..2 * i + 2)).collect();
            pairs
                .filter(|_| s.len() == 12)
                .and_then(|pairs| mac_octets(&pairs.join(":"), ':'))
        };
        let help = match mac_octets(s, '-').or_else(compact) {
            Some(octets) => format!("did you mean \"{}\"? {MAC_FORM}", MacAddr(octets)),
            None => MAC_FORM.to_owned(),
        };
        return Err((format!("{s:?} is not a MAC address"), help));
    };
    let mac = MacAddr(octets);
    if mac.is_zero() {
        return Err((
            format!("MAC address {s:?} is all zeros"),
            "write the MAC address of the VM's interface, e.g. \"52:54:00:12:34:56\"".to_owned(),
        ));
    }
    if !mac.is_unicast() {
        let what = if octets == [0xff; 6] {
            "the broadcast address"
        } else {
            "a multicast address (the lowest bit of its first octet is set)"
        };
        return Err((
            format!("MAC address {s:?} is {what}"),
            "a VM sends from a unicast MAC address, whose first octet is even, e.g. \
             \"52:54:00:12:34:56\""
                .to_owned(),
        ));
    }
    Ok(mac)
}

const IDENTITY_ON_GLOB_HELP: &str = "an identity belongs to one interface; use an exact name: \
     list the interface as an entry of its own (`- name: tap-acme-web-01`) and keep the \
     pattern for the others";

/// The `mac` of an interface entry, or `None` after reporting what is wrong.
fn check_mac(
    cx: &mut Checker<'_>,
    mac: &Spanned<String>,
    entry: &Entry<'_>,
    qualified: &impl Fn(SegmentIx) -> String,
    identities: &mut Identities,
) -> Option<MacAddr> {
    let this = &entry.this;
    if entry.glob {
        cx.error(
            &mac.referenced,
            format!("{this} has a `mac`, but a pattern can match many interfaces"),
            Some(IDENTITY_ON_GLOB_HELP.to_owned()),
        );
        return None;
    }
    let parsed = match parse_mac(&mac.value) {
        Ok(parsed) => parsed,
        Err((message, help)) => {
            cx.error(&mac.referenced, message, Some(help));
            return None;
        }
    };
    if !entry.valid {
        return None;
    }
    if let Some((_, other, at, segment)) = identities.macs.iter().find(|(m, ..)| *m == parsed) {
        let segment = if *segment == entry.segment {
            String::new()
        } else {
            format!(" of segment {}", qualified(*segment))
        };
        cx.error(
            &mac.referenced,
            format!(
                "MAC address {:?} of {this} is also declared for interface {other:?}{segment} \
                 at {}",
                mac.value,
                pos(at)
            ),
            Some(
                "a MAC address belongs to one interface; fix the MAC address of one of the two"
                    .to_owned(),
            ),
        );
        return None;
    }
    identities
        .macs
        .push((parsed, entry.name.to_owned(), mac.referenced, entry.segment));
    Some(parsed)
}

/// The declared `addresses` of an interface entry (empty when absent or invalid).
fn check_addresses(
    cx: &mut Checker<'_>,
    mapping: &RawInterfaceMapping,
    entry: &Entry<'_>,
    own_prefixes: &[IpNet],
    all_prefixes: Option<&[Placed<IpNet>]>,
    qualified: &impl Fn(SegmentIx) -> String,
    identities: &mut Identities,
) -> Vec<IpNet> {
    let this = &entry.this;
    let Some(list) = &mapping.addresses else {
        return Vec::new();
    };
    if entry.glob {
        cx.error(
            &list.referenced,
            format!("{this} has `addresses`, but a pattern can match many interfaces"),
            Some(IDENTITY_ON_GLOB_HELP.to_owned()),
        );
        return Vec::new();
    }
    if list.value.is_empty() {
        cx.error(
            &list.referenced,
            format!("{this} has an empty `addresses` list"),
            Some(
                "leave out `addresses` to let the VM send from any address of its segment, \
                 or list the addresses it may send from"
                    .to_owned(),
            ),
        );
        return Vec::new();
    }
    let own = entry.segment;
    // This entry's valid addresses, with how they were written and where.
    let mut seen: Vec<(IpNet, &str, Location)> = Vec::with_capacity(list.value.len());
    for address in &list.value {
        let written = address.value.as_str();
        let net = match parse_endpoint(written) {
            Ok(net) => net,
            Err((message, help)) => {
                cx.error(&address.referenced, message, help);
                continue;
            }
        };
        // IPv6 link-local addresses (fe80::/10) lie outside every segment; declaring them
        // pins the VM's link-local sources.
        let link_local = matches!(net, IpNet::V6(n) if n.network().segments()[0] & 0xffc0 == 0xfe80
            && n.prefix_len() >= 10);
        if let Some(all_prefixes) = all_prefixes
            && !link_local
            && !own_prefixes.iter().any(|p| p.contains(&net))
        {
            let relation = if own_prefixes.iter().any(|p| net.contains(p)) {
                "is not entirely inside"
            } else {
                "is outside"
            };
            let owner = all_prefixes
                .iter()
                .find(|p| p.segment != own && p.value.contains(&net));
            let help = match owner {
                Some(owner) => format!(
                    "{written} belongs to segment {}; an interface sends only from addresses \
                     of its own segment",
                    qualified(owner.segment)
                ),
                None => "an interface sends only from addresses of its own segment: fix the \
                         address, or add a prefix that contains it to the segment's `prefixes`"
                    .to_owned(),
            };
            cx.error(
                &address.referenced,
                format!(
                    "address {written:?} of {this} {relation} segment {}{}",
                    qualified(own),
                    listed_prefixes(own_prefixes)
                ),
                Some(help),
            );
            continue;
        }
        if let Some((_, first, at)) = seen.iter().find(|(n, ..)| *n == net) {
            cx.error(
                &address.referenced,
                format!(
                    "address {written:?} is listed twice for {this}: first{} at {}",
                    if *first == written {
                        String::new()
                    } else {
                        format!(" as {first:?}")
                    },
                    pos(at)
                ),
                Some("remove one of the two entries".to_owned()),
            );
            continue;
        }
        seen.push((net, written, address.referenced));
        if !entry.valid {
            continue;
        }
        let mut overlapping = identities
            .addresses
            .iter()
            .filter(|d| d.interface != entry.name || d.segment != own)
            .filter(|d| d.net.contains(&net) || net.contains(&d.net));
        if let Some(other) = overlapping.next() {
            let relation = if other.net == net {
                "is also declared for"
            } else if net.contains(&other.net) {
                "contains address"
            } else {
                "lies within address"
            };
            let other_address = if other.net == net {
                String::new()
            } else {
                format!(" {:?} of", other.raw)
            };
            let segment = if other.segment == own {
                String::new()
            } else {
                format!(" of segment {}", qualified(other.segment))
            };
            cx.error(
                &address.referenced,
                format!(
                    "address {written:?} of {this} {relation}{other_address} interface {:?}{segment} \
                     at {}{}",
                    other.interface,
                    pos(&other.at),
                    and_more(
                        overlapping.count(),
                        "overlapping address",
                        "overlapping addresses"
                    ),
                ),
                Some(
                    "a source address belongs to one interface, or either VM could send as the \
                     other; remove the address from one of them, or make the prefixes disjoint"
                        .to_owned(),
                ),
            );
            continue;
        }
        identities.addresses.push(Declared {
            net,
            raw: written.to_owned(),
            interface: entry.name.to_owned(),
            at: address.referenced,
            segment: own,
        });
    }
    seen.into_iter().map(|(net, ..)| net).collect()
}

/// ` (10.1.1.0/24, fd00:1:1::/64)`, or that the segment has none.
fn listed_prefixes(prefixes: &[IpNet]) -> String {
    if prefixes.is_empty() {
        ", which has no prefixes".to_owned()
    } else {
        let shown: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
        format!(" ({})", shown.join(", "))
    }
}

/// Lowest and highest VLAN id a frame may carry (802.1Q reserves 0 and 4095).
const VLAN_MIN: u16 = 1;
const VLAN_MAX: u16 = 4094;

/// The `vlans` of an interface entry, sorted and deduplicated (empty when absent).
fn check_vlans(cx: &mut Checker<'_>, mapping: &RawInterfaceMapping, entry: &Entry<'_>) -> Vec<u16> {
    let Some(list) = &mapping.vlans else {
        return Vec::new();
    };
    let mut seen: Vec<(u16, Location)> = Vec::with_capacity(list.value.len());
    for vlan in &list.value {
        let id = match parse_vlan(&vlan.value) {
            Ok(id) => id,
            Err((message, help)) => {
                cx.error(&vlan.referenced, message, Some(help));
                continue;
            }
        };
        if let Some((_, first)) = seen.iter().find(|(v, _)| *v == id) {
            cx.error(
                &vlan.referenced,
                format!(
                    "VLAN {id} is listed twice for {}: first at {}",
                    entry.this,
                    pos(first)
                ),
                Some("remove one of the two entries".to_owned()),
            );
            continue;
        }
        seen.push((id, vlan.referenced));
    }
    let mut vlans: Vec<u16> = seen.into_iter().map(|(id, _)| id).collect();
    vlans.sort_unstable();
    vlans
}

fn parse_vlan(value: &RawVlan) -> Result<u16, (String, String)> {
    match &value.0 {
        RawScalar::Integer(n) => u16::try_from(*n)
            .ok()
            .filter(|id| (VLAN_MIN..=VLAN_MAX).contains(id))
            .ok_or_else(|| {
                (
                    format!("VLAN id {n} is out of range"),
                    format!("VLAN ids are {VLAN_MIN} to {VLAN_MAX}; 802.1Q reserves 0 and 4095"),
                )
            }),
        other => Err((
            format!("a VLAN id must be a whole number, found {}", other.shown()),
            "write each VLAN id as a number, e.g. `vlans: [100, 200]`; ranges are not supported"
                .to_owned(),
        )),
    }
}

/// `VLAN 100`, `VLANs 100, 200`, `no VLAN`.
fn describe_vlans(vlans: &[u16]) -> String {
    match vlans {
        [] => "no VLAN".to_owned(),
        [one] => format!("VLAN {one}"),
        many => {
            let shown: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!("VLANs {}", shown.join(", "))
        }
    }
}

/// Two patterns of one segment that match a common name must allow the same VLANs: an
/// interface that only patterns match takes its VLANs from them. (An exact-name entry
/// takes precedence over patterns.)
fn check_pattern_vlans(
    cx: &mut Checker<'_>,
    interfaces: &[(Interface, Location)],
    own: SegmentIx,
    qualified: &impl Fn(SegmentIx) -> String,
) {
    let globs: Vec<&(Interface, Location)> = interfaces
        .iter()
        .filter(|(i, _)| i.pattern.is_glob())
        .collect();
    for (n, (new, at)) in globs.iter().enumerate() {
        let conflict = globs[..n].iter().find_map(|(old, old_at)| {
            if old.vlans == new.vlans {
                return None;
            }
            old.pattern
                .overlap_example(&new.pattern)
                .map(|example| (old, old_at, example))
        });
        let Some((old, old_at, example)) = conflict else {
            continue;
        };
        cx.error(
            at,
            format!(
                "interface pattern {:?} of segment {} allows {}, but pattern {:?} at {} allows \
                 {}: both match {example:?}",
                new.as_str(),
                qualified(own),
                describe_vlans(&new.vlans),
                old.as_str(),
                pos(old_at),
                describe_vlans(&old.vlans),
            ),
            Some(
                "an interface that only patterns match takes its VLANs from them, so \
                 overlapping patterns need the same `vlans`; or list such an interface by its \
                 exact name, whose entry takes precedence over patterns"
                    .to_owned(),
            ),
        );
    }
}

// ---------------------------------------------------------------- yes/no options

/// A yes/no key of a segment, for [`check_flag`].
struct Flag {
    key: &'static str,
    /// What to write instead.
    help: &'static str,
}

const ALLOW_RA: Flag = Flag {
    key: "allow_router_advertisements",
    help: "write `allow_router_advertisements: true` to let the segment's VMs act as IPv6 \
           routers (router advertisements and redirects), or leave out the key (default \
           `false`)",
};

const ALLOW_DHCP_SERVER: Flag = Flag {
    key: "allow_dhcp_server",
    help: "write `allow_dhcp_server: true` to let the segment's VMs answer DHCP and DHCPv6 \
           requests, or leave out the key (default `false`)",
};

/// The value of a yes/no key (`false` when absent), or `false` after reporting a value
/// that is not a boolean.
fn check_flag(cx: &mut Checker<'_>, value: Option<&Spanned<RawFlag>>, flag: &Flag) -> bool {
    let Some(value) = value else {
        return false;
    };
    match &value.value.0 {
        RawScalar::Bool(b) => *b,
        other => {
            cx.error(
                &value.referenced,
                format!(
                    "`{}` must be `true` or `false`, found {}",
                    flag.key,
                    other.shown()
                ),
                Some(flag.help.to_owned()),
            );
            false
        }
    }
}

fn check_prefix(
    cx: &mut Checker<'_>,
    earlier: &[Placed<IpNet>],
    new: &Placed<IpNet>,
    qualified: &impl Fn(SegmentIx) -> String,
) {
    let Some((old, conflict, more)) = first_conflict(earlier, new, |a, b| {
        if a == b {
            Some(Conflict::Repeated)
        } else if a.contains(b) || b.contains(a) {
            Some(Conflict::Overlap(None))
        } else {
            None
        }
    }) else {
        return;
    };
    let this = format!("prefix {:?}", new.raw);
    let (message, help) = match conflict {
        Conflict::Repeated => (
            format!(
                "{this} is listed twice in segment {}: first{} at {}",
                qualified(new.segment),
                if old.raw == new.raw {
                    String::new()
                } else {
                    format!(" as {:?}", old.raw)
                },
                pos(&old.at)
            ),
            "remove one of the two entries".to_owned(),
        ),
        Conflict::Shared => (
            format!(
                "{this} of segment {} is also assigned to segment {} at {}{}",
                qualified(new.segment),
                qualified(old.segment),
                pos(&old.at),
                and_more(more, "overlapping prefix", "overlapping prefixes"),
            ),
            "an address can belong to only one segment; remove one of the two entries".to_owned(),
        ),
        Conflict::Overlap(_) => {
            let relation = if new.value.contains(&old.value) {
                "contains"
            } else {
                "lies within"
            };
            (
                format!(
                    "{this} of segment {} {relation} prefix {:?} of segment {} at {}{}",
                    qualified(new.segment),
                    old.raw,
                    qualified(old.segment),
                    pos(&old.at),
                    and_more(more, "overlapping prefix", "overlapping prefixes"),
                ),
                "an address can belong to only one segment; shrink or split one of the prefixes"
                    .to_owned(),
            )
        }
    };
    cx.error(&new.at, message, Some(help));
}

const CIDR_HELP: &str =
    "write an IPv4 or IPv6 prefix in CIDR notation, e.g. \"10.1.1.0/24\" or \"fd00:1:1::/64\"";

/// Parses a CIDR prefix, explaining what is wrong in operator terms.
pub(super) fn parse_prefix(s: &str) -> Result<IpNet, (String, Option<String>)> {
    let Some((addr, len)) = s.split_once('/') else {
        return Err(match s.parse::<IpAddr>() {
            Ok(addr) => {
                let full = if addr.is_ipv4() { 32 } else { 128 };
                (
                    format!("prefix {s:?} has no prefix length"),
                    Some(format!(
                        "write \"{addr}/{full}\" for this single address, or the network's \
                         prefix, e.g. \"10.1.1.0/24\""
                    )),
                )
            }
            Err(_) => (
                format!("{s:?} is not an IP prefix"),
                Some(CIDR_HELP.to_owned()),
            ),
        });
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return Err((
            format!("prefix {s:?}: {addr:?} is not a valid IPv4 or IPv6 address"),
            Some(CIDR_HELP.to_owned()),
        ));
    };
    let (family, max) = if addr.is_ipv4() {
        ("IPv4", 32)
    } else {
        ("IPv6", 128)
    };
    let len = match len.parse::<u32>() {
        Ok(n) if !len.starts_with('+') => n,
        _ => {
            return Err((
                format!("prefix {s:?}: {len:?} is not a prefix length"),
                Some(format!(
                    "write the prefix length as a number from 0 to {max} after the '/', \
                     e.g. \"10.1.1.0/24\""
                )),
            ));
        }
    };
    let Some(len) = u8::try_from(len).ok().filter(|&n| n <= max) else {
        return Err((
            format!("prefix {s:?}: length {len} is too long for {family}, the maximum is {max}"),
            Some(format!(
                "use a prefix length from 0 to {max} for an {family} address"
            )),
        ));
    };
    let net = IpNet::new(addr, len).map_err(|e| (format!("prefix {s:?}: {e}"), None))?;
    if net.trunc() != net {
        return Err((
            format!("prefix {s:?} has host bits set: {addr} is not the first address of a /{len}"),
            Some(format!("did you mean {}?", net.trunc())),
        ));
    }
    Ok(net)
}

// ---------------------------------------------------------------- keywords

/// The keywords a key accepts, for [`choose`].
struct Keywords<T: 'static> {
    key: &'static str,
    choices: &'static [(&'static str, T)],
    /// What to write instead, explaining each choice.
    help: &'static str,
}

const MODE: Keywords<Mode> = Keywords {
    key: "mode",
    choices: &[("enforce", Mode::Enforce), ("audit", Mode::Audit)],
    help: "write `mode: enforce` to drop what the policy forbids, or `mode: audit` to count it \
           and let it pass",
};

const EGRESS: Keywords<Egress> = Keywords {
    key: "egress",
    choices: &[("allow", Egress::Allow), ("deny", Egress::Deny)],
    help: "write `egress: allow` to let the segment's VMs reach destinations outside every \
           segment, or `egress: deny` to drop that traffic",
};

const PROTOCOL: Keywords<Protocol> = Keywords {
    key: "protocol",
    choices: &[
        ("tcp", Protocol::Tcp),
        ("udp", Protocol::Udp),
        ("icmp", Protocol::Icmp),
        ("any", Protocol::Any),
    ],
    help: "write `protocol: tcp`, `udp`, `icmp` (ICMP and ICMPv6) or `any` (every IP protocol)",
};

/// The value of a keyword key, or `None` after reporting an unknown one.
fn choose<T: Copy>(
    cx: &mut Checker<'_>,
    value: &Spanned<String>,
    keywords: &Keywords<T>,
) -> Option<T> {
    let written = value.value.as_str();
    if let Some(&(_, v)) = keywords.choices.iter().find(|(word, _)| *word == written) {
        return Some(v);
    }
    let words: Vec<&str> = keywords.choices.iter().map(|(word, _)| *word).collect();
    let quoted: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
    let allowed = match quoted.as_slice() {
        [a, b] => format!("{a} or {b}"),
        _ => format!("one of {}", quoted.join(", ")),
    };
    let help = match closest(written, words.iter().copied()) {
        Some(word) => format!("did you mean `{word}`? {}", keywords.help),
        None => keywords.help.to_owned(),
    };
    cx.error(
        &value.referenced,
        format!("`{}` must be {allowed}, found {written:?}", keywords.key),
        Some(help),
    );
    None
}

/// The candidate `value` was most likely meant to be, if one is close enough: equal
/// but for case, within a small edit distance, or sharing a long beginning.
pub(super) fn closest<'c>(
    value: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let lower = value.to_lowercase();
    let mut best: Option<(usize, &'c str)> = None;
    for candidate in candidates {
        if candidate == lower {
            return Some(candidate);
        }
        let shorter = lower.chars().count().min(candidate.chars().count());
        let limit = if shorter <= 3 { 1 } else { 2 };
        let common = lower
            .chars()
            .zip(candidate.chars())
            .take_while(|(a, b)| a == b)
            .count();
        let distance = edit_distance(&lower, candidate);
        let score = if distance <= limit {
            distance
        } else if common >= 4 {
            limit + 1
        } else {
            continue;
        };
        if best.is_none_or(|(b, _)| score < b) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and
/// transpositions of adjacent characters each cost 1.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

// ---------------------------------------------------------------- services

const PORTS_RANGE_HELP: &str = "ports are 1 to 65535; leave out `ports` for every port";

const PORTS_FORM_HELP: &str = "write one port as a number (`ports: 443`) or one range as a \
     quoted string (`ports: \"8000-8080\"`); for several ports or ranges, write one entry for each";

/// A protocol and its optional ports, or `None` after reporting what is wrong.
fn check_service(
    cx: &mut Checker<'_>,
    protocol: &Spanned<String>,
    ports: Option<&Spanned<RawPorts>>,
) -> Option<Service> {
    let protocol = choose(cx, protocol, &PROTOCOL);
    let Some(ports) = ports else {
        return protocol.map(|protocol| Service {
            protocol,
            ports: None,
        });
    };
    match protocol {
        Some(Protocol::Icmp) => {
            cx.error(
                &ports.referenced,
                "ICMP has no ports, but `ports` is given".to_owned(),
                Some(
                    "remove `ports`; an entry with `protocol: icmp` covers every ICMP and \
                     ICMPv6 message"
                        .to_owned(),
                ),
            );
            return None;
        }
        Some(Protocol::Any) => {
            cx.error(
                &ports.referenced,
                "`ports` cannot be combined with `protocol: any`, which includes protocols \
                 without ports"
                    .to_owned(),
                Some(
                    "remove `ports` to mean every protocol, or write one entry per protocol \
                     (`tcp`, `udp`) with these ports"
                        .to_owned(),
                ),
            );
            return None;
        }
        _ => {}
    }
    let range = match parse_ports(&ports.value.0) {
        Ok(range) => range,
        Err((message, help)) => {
            cx.error(&ports.referenced, message, Some(help));
            return None;
        }
    };
    protocol.map(|protocol| Service {
        protocol,
        ports: Some(range),
    })
}

/// Parses a `ports:` value: a number, or a `"first-last"` string.
fn parse_ports(value: &RawScalar) -> Result<PortRange, (String, String)> {
    let form_error = || {
        (
            format!(
                "`ports` must be one port or one range of ports, found {}",
                value.shown()
            ),
            PORTS_FORM_HELP.to_owned(),
        )
    };
    let out_of_range = |context: String, shown: &str| {
        (
            format!("{context}port {shown} is out of range"),
            PORTS_RANGE_HELP.to_owned(),
        )
    };
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let port = |s: &str| s.parse::<u16>().ok().filter(|&p| p >= 1);

    match value {
        RawScalar::Integer(n) => u16::try_from(*n)
            .ok()
            .and_then(PortRange::single)
            .ok_or_else(|| out_of_range(String::new(), &n.to_string())),
        RawScalar::Text(text) => {
            let t = text.trim();
            if is_number(t) {
                return port(t)
                    .and_then(PortRange::single)
                    .ok_or_else(|| out_of_range(String::new(), t));
            }
            let Some((first, last)) = t.split_once('-') else {
                return Err(form_error());
            };
            let (first, last) = (first.trim(), last.trim());
            if !is_number(first) || !is_number(last) {
                return Err(form_error());
            }
            let context = format!("port range {text:?}: ");
            let a = port(first).ok_or_else(|| out_of_range(context.clone(), first))?;
            let b = port(last).ok_or_else(|| out_of_range(context, last))?;
            PortRange::new(a, b).ok_or_else(|| {
                (
                    format!("port range {text:?} is backwards: {a} is greater than {b}"),
                    format!("write the lower port first: \"{b}-{a}\""),
                )
            })
        }
        RawScalar::Bool(_) | RawScalar::Other(_) => Err(form_error()),
    }
}

// ---------------------------------------------------------------- connection tracking

fn check_connection_tracking(
    cx: &mut Checker<'_>,
    raw: &RawConnectionTracking,
) -> ConnectionTracking {
    let default = ConnectionTracking::default();
    let mut timeout = |key: &str, value: &Option<Spanned<RawSeconds>>, default: u32| {
        let Some(value) = value else {
            return default;
        };
        match &value.value.0 {
            RawScalar::Integer(n) => {
                if let Some(n) = u32::try_from(*n)
                    .ok()
                    .filter(|n| (1..=TIMEOUT_MAX_SECONDS).contains(n))
                {
                    return n;
                }
                cx.error(
                    &value.referenced,
                    format!(
                        "`{key}` must be from 1 to {TIMEOUT_MAX_SECONDS} seconds (one day), \
                         found {n}"
                    ),
                    Some(format!(
                        "the default is {default}; leave out the key to use it"
                    )),
                );
            }
            other => cx.error(
                &value.referenced,
                format!(
                    "`{key}` must be a whole number of seconds, found {}",
                    other.shown()
                ),
                Some(format!(
                    "write a number from 1 to {TIMEOUT_MAX_SECONDS}, e.g. `{key}: {default}`"
                )),
            ),
        }
        default
    };
    ConnectionTracking {
        tcp_idle_seconds: timeout(
            "tcp_idle_seconds",
            &raw.tcp_idle_seconds,
            default.tcp_idle_seconds,
        ),
        tcp_closing_seconds: timeout(
            "tcp_closing_seconds",
            &raw.tcp_closing_seconds,
            default.tcp_closing_seconds,
        ),
        udp_idle_seconds: timeout(
            "udp_idle_seconds",
            &raw.udp_idle_seconds,
            default.udp_idle_seconds,
        ),
        icmp_idle_seconds: timeout(
            "icmp_idle_seconds",
            &raw.icmp_idle_seconds,
            default.icmp_idle_seconds,
        ),
    }
}

// ---------------------------------------------------------------- exposed endpoints

/// Parses an exposed endpoint: a lone address (a /32 or /128) or a CIDR prefix.
fn parse_endpoint(s: &str) -> Result<IpNet, (String, Option<String>)> {
    if !s.contains('/') {
        return s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            (
                format!("{s:?} is not an IP address or prefix"),
                Some(
                    "write an address such as \"10.1.1.10\" or \"fd00:1:1::10\", or a prefix in \
                     CIDR notation such as \"10.1.1.0/28\""
                        .to_owned(),
                ),
            )
        });
    }
    // An address with a length is most likely meant as that single address.
    if let Ok(net) = s.parse::<IpNet>()
        && net.trunc() != net
    {
        return Err((
            format!(
                "prefix {s:?} has host bits set: {} is not the first address of a /{}",
                net.addr(),
                net.prefix_len()
            ),
            Some(format!(
                "did you mean {}, or the single address {}?",
                net.trunc(),
                net.addr()
            )),
        ));
    }
    parse_prefix(s)
}

/// The exposed endpoints of segment `own`. `all_prefixes` is `None` when some prefix
/// of the segment is invalid: then whether an endpoint lies inside the segment is
/// unknown and not checked.
fn check_expose(
    cx: &mut Checker<'_>,
    raw: &[RawExpose],
    own_prefixes: &[IpNet],
    all_prefixes: Option<&[Placed<IpNet>]>,
    own: SegmentIx,
    qualified: &impl Fn(SegmentIx) -> String,
) -> Vec<Expose> {
    let mut seen: Vec<Placed<Expose>> = Vec::new();
    for entry in raw {
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
        if let Some(all_prefixes) = all_prefixes
            && !own_prefixes.iter().any(|p| p.contains(&prefix))
        {
            let relation = if own_prefixes.iter().any(|p| prefix.contains(p)) {
                "is not entirely inside"
            } else {
                "is outside"
            };
            let listed = listed_prefixes(own_prefixes);
            let owner = all_prefixes
                .iter()
                .find(|p| p.segment != own && p.value.contains(&prefix));
            let help = match owner {
                Some(owner) => format!(
                    "{written} belongs to segment {}: expose it there; an exposed endpoint \
                     must be an address of its own segment",
                    qualified(owner.segment)
                ),
                None => "an exposed endpoint must be an address of its own segment: fix the \
                         address, or add a prefix that contains it to the segment's `prefixes`"
                    .to_owned(),
            };
            cx.error(
                &entry.address.referenced,
                format!(
                    "exposed endpoint {written} {relation} segment {}{listed}",
                    qualified(own)
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
        if let Some(first) = seen.iter().find(|e| e.value == placed.value) {
            cx.error(
                &placed.at,
                format!(
                    "exposed endpoint {written} {service} is listed twice in segment {}: \
                     first{} at {}",
                    qualified(own),
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
        seen.push(placed);
    }
    seen.into_iter().map(|e| e.value).collect()
}

// ---------------------------------------------------------------- flows

/// Segment names of tenant `t`, in file order.
fn segment_names(raw: &RawPolicy, t: usize) -> Vec<&str> {
    raw.tenants[t]
        .segments
        .iter()
        .map(|s| s.name.value.as_str())
        .collect()
}

fn tenant_index(raw: &RawPolicy, name: &str) -> Option<usize> {
    raw.tenants.iter().position(|t| t.name.value == name)
}

/// Most names listed in one message; the rest are counted.
const LISTED_NAMES_MAX: usize = 10;

/// `"a, b, c"`, or `"a, b, ... (and 7 more)"` for long lists.
pub(super) fn list_names(names: &[&str]) -> String {
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
fn check_flows(cx: &mut Checker<'_>, raw: &RawPolicy, t: usize) -> Vec<Flow> {
    let tenant = &raw.tenants[t].name.value;
    let mut seen: Vec<(Flow, Location)> = Vec::new();
    for entry in &raw.tenants[t].flows {
        let from = resolve_from(cx, raw, t, &entry.from);
        let to = resolve_to(cx, raw, t, &entry.to);
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
        if let Some((_, first)) = seen.iter().find(|(f, _)| *f == flow) {
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
        seen.push((flow, entry.from.referenced));
    }
    seen.into_iter().map(|(flow, _)| flow).collect()
}

/// `from:`: a segment of the tenant listing the flow, by its name alone.
fn resolve_from(
    cx: &mut Checker<'_>,
    raw: &RawPolicy,
    t: usize,
    value: &Spanned<String>,
) -> Option<String> {
    const RULE: &str = "a flow starts at a segment of the tenant that lists it";
    let tenant = &raw.tenants[t].name.value;
    let written = value.value.as_str();
    let names = segment_names(raw, t);
    if names.contains(&written) {
        return Some(written.to_owned());
    }
    let (message, help) = if let Some((other, segment)) = written.split_once('/') {
        let help = if other == tenant && names.contains(&segment) {
            format!("write {segment:?}; {RULE}")
        } else if tenant_index(raw, other).is_some() {
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
    raw: &RawPolicy,
    t: usize,
    value: &Spanned<String>,
) -> Option<SegmentId> {
    let tenant = &raw.tenants[t].name.value;
    let written = value.value.as_str();
    let parts: Vec<&str> = written.split('/').collect();
    let (message, help) = match parts.as_slice() {
        [segment] => {
            let names = segment_names(raw, t);
            if names.contains(segment) {
                return Some(SegmentId {
                    tenant: tenant.clone(),
                    segment: (*segment).to_owned(),
                });
            }
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
            match tenant_index(raw, other) {
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
                    let names = segment_names(raw, o);
                    if names.contains(segment) {
                        return Some(SegmentId {
                            tenant: (*other).to_owned(),
                            segment: (*segment).to_owned(),
                        });
                    }
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

// ---------------------------------------------------------------- management

fn check_management(
    cx: &mut Checker<'_>,
    raw: &[RawManagement],
    segment_prefixes: &[Placed<IpNet>],
    qualified: &impl Fn(SegmentIx) -> String,
) -> Vec<Management> {
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
        let mut overlapping = segment_prefixes
            .iter()
            .filter(|p| p.value.contains(&prefix) || prefix.contains(&p.value));
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
                    qualified(first.segment),
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
            out.push(Management { prefix, services });
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
    let mut valid = true;
    let mut services: Vec<(Service, Location)> = Vec::new();
    for raw_service in &list.value {
        let Some(service) = check_service(cx, &raw_service.protocol, raw_service.ports.as_ref())
        else {
            valid = false;
            continue;
        };
        let at = raw_service.protocol.referenced;
        if let Some((_, first)) = services.iter().find(|(s, _)| *s == service) {
            valid = false;
            cx.error(
                &at,
                format!(
                    "service {service} is listed twice for management prefix {written:?}: \
                     first at {}",
                    pos(first)
                ),
                Some("remove one of the two entries".to_owned()),
            );
            continue;
        }
        services.push((service, at));
    }
    valid.then(|| services.into_iter().map(|(s, _)| s).collect())
}
