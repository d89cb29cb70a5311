//! Semantic validation: turns the positioned raw model into a [`Policy`], collecting
//! every problem as a [`Diagnostic`].

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use super::raw::{RawPolicy, RawVersion};
use super::{Diagnostic, InterfacePattern, NAME_MAX_LEN, POLICY_VERSION, Policy, Segment, Tenant};

/// (tenant index, segment index): identifies a segment within the file.
type SegmentId = (usize, usize);

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

    // Qualified `tenant/segment` names for messages, indexed by SegmentId.
    let qualified = |(t, s): SegmentId| {
        let tenant = &raw.tenants[t];
        format!("{}/{}", tenant.name.value, tenant.segments[s].name.value)
    };

    let mut interfaces: Vec<Placed<InterfacePattern>> = Vec::new();
    let mut prefixes: Vec<Placed<IpNet>> = Vec::new();
    let mut tenants = Vec::with_capacity(raw.tenants.len());
    for (t, raw_tenant) in raw.tenants.iter().enumerate() {
        let mut segments = Vec::with_capacity(raw_tenant.segments.len());
        for (s, raw_segment) in raw_tenant.segments.iter().enumerate() {
            let id = (t, s);
            let mut segment = Segment {
                name: raw_segment.name.value.clone(),
                interfaces: Vec::with_capacity(raw_segment.interfaces.len()),
                prefixes: Vec::with_capacity(raw_segment.prefixes.len()),
            };

            for entry in &raw_segment.interfaces {
                match InterfacePattern::new(&entry.value) {
                    Err(e) => cx.error(&entry.referenced, e.message, e.help),
                    Ok(pattern) => {
                        let placed = Placed {
                            value: pattern.clone(),
                            raw: entry.value.clone(),
                            at: entry.referenced,
                            segment: id,
                        };
                        check_interface(&mut cx, &interfaces, &placed, &qualified);
                        interfaces.push(placed);
                        segment.interfaces.push(pattern);
                    }
                }
            }

            for entry in &raw_segment.prefixes {
                match parse_prefix(&entry.value) {
                    Err((message, help)) => cx.error(&entry.referenced, message, help),
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
        }
        tenants.push(Tenant {
            name: raw_tenant.name.value.clone(),
            segments,
        });
    }

    if cx.diagnostics.is_empty() {
        Ok(Policy { tenants })
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
    segment: SegmentId,
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
    qualified: &impl Fn(SegmentId) -> String,
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

fn check_prefix(
    cx: &mut Checker<'_>,
    earlier: &[Placed<IpNet>],
    new: &Placed<IpNet>,
    qualified: &impl Fn(SegmentId) -> String,
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
