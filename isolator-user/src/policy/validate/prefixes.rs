//! Prefixes: each entry of a segment's `prefixes` is a CIDR prefix, and no address
//! belongs to two segments.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{Checker, Conflict, Placed, SegmentIx, and_more, first_conflict, pos};

/// The valid prefixes of segment `ix`, each checked against those of the segments before
/// it (in `prefixes`, which the valid ones are added to), and whether all of the
/// segment's prefixes are valid.
pub(super) fn check(
    cx: &mut Checker<'_>,
    ix: SegmentIx,
    prefixes: &mut Vec<Placed<IpNet>>,
) -> (Vec<IpNet>, bool) {
    let (t, s) = ix;
    let raw = cx.raw;
    let entries = &raw.tenants[t].segments[s].prefixes;
    let mut own = Vec::with_capacity(entries.len());
    let mut all_valid = true;
    for entry in entries {
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
                    segment: ix,
                };
                check_prefix(cx, prefixes, &placed);
                prefixes.push(placed);
                own.push(net);
            }
        }
    }
    (own, all_valid)
}

/// Whether `net` lies inside fe80::/10, the IPv6 link-local prefix.
pub(super) fn is_ipv6_link_local(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(n) if n.network().segments()[0] & 0xffc0 == 0xfe80
        && n.prefix_len() >= 10)
}

/// Reports `new` if it overlaps a prefix of another segment, or is listed twice in its
/// segment.
fn check_prefix(cx: &mut Checker<'_>, earlier: &[Placed<IpNet>], new: &Placed<IpNet>) {
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
                cx.qualified(new.segment),
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
                cx.qualified(new.segment),
                cx.qualified(old.segment),
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
                    cx.qualified(new.segment),
                    old.raw,
                    cx.qualified(old.segment),
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

/// Parses an exposed endpoint or a declared address: a lone address (a /32 or /128) or
/// a CIDR prefix.
pub(super) fn parse_endpoint(s: &str) -> Result<IpNet, (String, Option<String>)> {
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
