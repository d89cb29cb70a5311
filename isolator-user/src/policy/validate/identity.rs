//! Interface identities: the `mac`, `addresses` and `vlans` of an interface entry. No
//! MAC or address may belong to two interfaces anywhere in the file.

use std::collections::HashMap;

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use super::interfaces::describe_interface;
use super::prefixes::{is_ipv6_link_local, parse_endpoint};
use super::{Checker, Outside, Scope, SegmentIx, and_more, pos};
use crate::policy::raw::{RawInterfaceEntry, RawInterfaceMapping, RawScalar, RawVlan};
use crate::policy::{Interface, InterfacePattern, MacAddr, NetIndex};

/// Identities declared so far anywhere in the file: no MAC or address may belong to two
/// interfaces.
#[derive(Default)]
pub(super) struct Identities {
    /// MAC -> (interface name, position of the `mac` value, segment).
    macs: HashMap<MacAddr, (String, Location, SegmentIx)>,
    /// Declared addresses of interfaces with a valid name, valid and inside their
    /// segment, in file order: [`check_address_overlaps`] checks them against each other.
    pending: Vec<Pending>,
    /// The declared addresses that overlap no other interface's, in file order (after
    /// [`check_address_overlaps`]).
    pub addresses: Vec<Declared>,
}

/// A declared address not yet checked against the other interfaces'.
struct Pending {
    declared: Declared,
    /// `interface "name"`, for messages.
    this: String,
}

/// A declared address of an interface.
pub(super) struct Declared {
    pub net: IpNet,
    /// As written in the file.
    pub raw: String,
    pub interface: String,
    pub at: Location,
    pub segment: SegmentIx,
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

/// The interfaces of the segment with their identities. Entries whose name is invalid
/// are left out (their name was reported); what of their identity does not depend on the
/// name is checked.
pub(super) fn check(
    cx: &mut Checker<'_>,
    scope: &Scope<'_>,
    identities: &mut Identities,
) -> Vec<Interface> {
    let raw = &scope.raw.interfaces;
    let own = scope.ix;
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
            .and_then(|mac| check_mac(cx, mac, &entry, identities));
        let addresses = check_addresses(cx, scope, mapping, &entry, identities);
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
    check_pattern_vlans(cx, &out, own);
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
    if let Some((other, at, segment)) = identities.macs.get(&parsed) {
        let segment = if *segment == entry.segment {
            String::new()
        } else {
            format!(" of segment {}", cx.qualified(*segment))
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
    identities.macs.insert(
        parsed,
        (entry.name.to_owned(), mac.referenced, entry.segment),
    );
    Some(parsed)
}

/// The declared `addresses` of an interface entry (empty when absent or invalid).
fn check_addresses(
    cx: &mut Checker<'_>,
    scope: &Scope<'_>,
    mapping: &RawInterfaceMapping,
    entry: &Entry<'_>,
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
        if !is_ipv6_link_local(&net)
            && let Some(Outside { relation, owner }) = scope.outside(&net)
        {
            let help = match owner {
                Some(owner) => format!(
                    "{written} belongs to segment {}; an interface sends only from addresses \
                     of its own segment",
                    cx.qualified(owner)
                ),
                None => "an interface sends only from addresses of its own segment: fix the \
                         address, or add a prefix that contains it to the segment's `prefixes`"
                    .to_owned(),
            };
            cx.error(
                &address.referenced,
                format!(
                    "address {written:?} of {this} {relation} segment {}{}",
                    cx.qualified(own),
                    scope.listed_prefixes()
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
        identities.pending.push(Pending {
            declared: Declared {
                net,
                raw: written.to_owned(),
                interface: entry.name.to_owned(),
                at: address.referenced,
                segment: own,
            },
            this: this.clone(),
        });
    }
    seen.into_iter().map(|(net, ..)| net).collect()
}

/// Reports each declared address that is, contains or lies within an address another
/// interface declared before it (and was not itself refused); keeps the others in
/// [`Identities::addresses`].
pub(super) fn check_address_overlaps(cx: &mut Checker<'_>, identities: &mut Identities) {
    let pending = std::mem::take(&mut identities.pending);
    let index = NetIndex::new(pending.iter().map(|p| &p.declared.net));
    let mut accepted = vec![false; pending.len()];
    for (n, (new, earlier)) in pending.iter().zip(index.earlier_overlapping()).enumerate() {
        let Pending { declared, this } = new;
        let (net, written, own) = (declared.net, &declared.raw, declared.segment);
        let mut overlapping = earlier
            .iter()
            .map(|&i| i as usize)
            .filter(|&i| accepted[i])
            .map(|i| &pending[i].declared)
            .filter(|d| d.interface != declared.interface || d.segment != own);
        let Some(other) = overlapping.next() else {
            accepted[n] = true;
            continue;
        };
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
            format!(" of segment {}", cx.qualified(other.segment))
        };
        cx.error(
            &declared.at,
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
    }
    identities.addresses = pending
        .into_iter()
        .zip(accepted)
        .filter_map(|(p, accepted)| accepted.then_some(p.declared))
        .collect();
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
fn check_pattern_vlans(cx: &mut Checker<'_>, interfaces: &[(Interface, Location)], own: SegmentIx) {
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
                cx.qualified(own),
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
