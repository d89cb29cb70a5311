//! Prefixes: each entry of a segment's `prefixes` is a CIDR prefix of unicast addresses a
//! VM can own, and no address belongs to two segments.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde_saphyr::Location;

use super::{Checker, Conflict, FilePrefixes, Placed, SegmentIx, and_more, first_conflict, pos};

/// The valid prefixes of segment `ix` (also added to `prefixes`), and whether all of the
/// segment's prefixes are valid; reports the invalid ones. [`check_conflicts`] checks
/// them against each other.
pub(super) fn collect(
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
                if !usable(cx, &entry.value, net, ix, &entry.referenced) {
                    all_valid = false;
                    continue;
                }
                let placed = Placed {
                    value: net,
                    raw: entry.value.clone(),
                    at: entry.referenced,
                    segment: ix,
                };
                prefixes.push(placed);
                own.push(net);
            }
        }
    }
    (own, all_valid)
}

/// fe80::/10, the IPv6 link-local prefix.
const IPV6_LINK_LOCAL: IpNet = v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10);

/// ::ffff:0:0/96, where IPv4 addresses are written as IPv6 ones.
const IPV4_MAPPED: IpNet = v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96);

/// Whether `net` lies inside fe80::/10, the IPv6 link-local prefix.
pub(super) fn is_ipv6_link_local(net: &IpNet) -> bool {
    IPV6_LINK_LOCAL.contains(net)
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), len)
}

const fn v6(segments: [u16; 8], len: u8) -> IpNet {
    let [a, b, c, d, e, f, g, h] = segments;
    IpNet::new_assert(IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), len)
}

/// An address range that no segment prefix may overlap: no VM owns an address in it.
pub(in crate::policy) struct Reserved {
    pub net: IpNet,
    /// `net` as the documentation writes it (Rust shows ::ffff:0:0 as ::ffff:0.0.0.0).
    pub shown: &'static str,
    /// What the range is.
    name: &'static str,
    /// Why no segment can hold it.
    why: &'static str,
}

/// Every reserved range, listed once: the checks and their messages iterate it.
pub(in crate::policy) const RESERVED: &[Reserved] = &[
    Reserved {
        net: v4(0, 0, 0, 0, 8),
        shown: "0.0.0.0/8",
        name: "the IPv4 \"this network\" range, with the unspecified address 0.0.0.0",
        why: "its addresses stand for \"this host\" before it has an address, never for a VM",
    },
    Reserved {
        net: v4(127, 0, 0, 0, 8),
        shown: "127.0.0.0/8",
        name: "the IPv4 loopback range",
        why: "loopback addresses never leave a host, so no VM sends from or receives at one",
    },
    Reserved {
        net: v4(169, 254, 0, 0, 16),
        shown: "169.254.0.0/16",
        name: "the IPv4 link-local range",
        why: "a link-local address is valid on one link only, so it cannot place a VM in a \
              segment",
    },
    Reserved {
        net: v4(224, 0, 0, 0, 4),
        shown: "224.0.0.0/4",
        name: "the IPv4 multicast range",
        why: "a multicast address names a group of receivers, never one VM",
    },
    Reserved {
        net: v4(240, 0, 0, 0, 4),
        shown: "240.0.0.0/4",
        name: "the reserved IPv4 range, with the broadcast address 255.255.255.255",
        why: "hosts do not use these addresses, and the broadcast address reaches every host \
              of a link",
    },
    Reserved {
        net: v6([0, 0, 0, 0, 0, 0, 0, 0], 128),
        shown: "::/128",
        name: "the IPv6 unspecified address",
        why: "it stands for the absence of an address, never for a VM",
    },
    Reserved {
        net: v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
        shown: "::1/128",
        name: "the IPv6 loopback address",
        why: "loopback addresses never leave a host, so no VM sends from or receives at one",
    },
    Reserved {
        net: IPV4_MAPPED,
        shown: "::ffff:0:0/96",
        name: "the IPv4-mapped IPv6 range",
        why: "the kernel stores IPv4 addresses in this form, so such a prefix would alias \
              IPv4 traffic",
    },
    Reserved {
        net: IPV6_LINK_LOCAL,
        shown: "fe80::/10",
        name: "the IPv6 link-local range",
        why: "a link-local address is valid on one link only, so it cannot place a VM in a \
              segment",
    },
    Reserved {
        net: v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        shown: "ff00::/8",
        name: "the IPv6 multicast range",
        why: "a multicast address names a group of receivers, never one VM",
    },
];

const USABLE_HELP: &str = "a segment prefix holds unicast addresses that the segment's VMs own";

/// The reserved ranges `net` overlaps, in table order.
fn reserved_overlapping(net: &IpNet) -> Vec<&'static Reserved> {
    RESERVED
        .iter()
        .filter(|r| r.net.contains(net) || net.contains(&r.net))
        .collect()
}

/// Whether `net`, written as `written` at `at`, can be a prefix of segment `ix`: it
/// overlaps no [`RESERVED`] range. Reports it if not.
fn usable(cx: &mut Checker<'_>, written: &str, net: IpNet, ix: SegmentIx, at: &Location) -> bool {
    if net.prefix_len() > 0
        && !RESERVED
            .iter()
            .any(|r| r.net.contains(&net) || net.contains(&r.net))
    {
        return true;
    }
    let this = format!("prefix {written:?} of segment {}", cx.qualified(ix));
    if net.prefix_len() == 0 {
        let (family, held, example) = match net {
            IpNet::V4(_) => (
                "IPv4",
                "the unspecified, loopback, link-local, multicast and broadcast ones",
                "10.1.1.0/24",
            ),
            IpNet::V6(_) => (
                "IPv6",
                "the unspecified, loopback, IPv4-mapped, link-local and multicast ones",
                "fd00:1:1::/64",
            ),
        };
        cx.error(
            at,
            format!("{this} is a default route: it holds every {family} address, {held}"),
            Some(format!(
                "{USABLE_HELP}, not the destinations they may reach: list the networks the VMs \
                 use, e.g. \"{example}\"; `egress` decides what they may reach outside every \
                 segment"
            )),
        );
        return false;
    }
    let overlapping = reserved_overlapping(&net);
    let Some(first) = overlapping.first() else {
        return true;
    };
    let more = and_more(overlapping.len() - 1, "reserved range", "reserved ranges");
    let (what, help) = if net == first.net {
        (
            format!("is {}", first.name),
            format!("{USABLE_HELP}: remove this prefix{}", instead(&net, first)),
        )
    } else if first.net.contains(&net) {
        (
            format!("lies within {}, {}", first.shown, first.name),
            format!("{USABLE_HELP}: remove this prefix{}", instead(&net, first)),
        )
    } else {
        let ranges: Vec<String> = overlapping.iter().map(|r| r.shown.to_owned()).collect();
        (
            format!("contains {}, {}{more}", first.shown, first.name),
            format!(
                "{USABLE_HELP}: split it into prefixes that leave out {}",
                join_and(&ranges)
            ),
        )
    };
    cx.error(at, format!("{this} {what}: {}", first.why), Some(help));
    false
}

/// What to write instead of `net`, which is or lies within `range`, where there is
/// something: the IPv4 prefix an IPv4-mapped one stands for, or where a VM's link-local
/// addresses go.
fn instead(net: &IpNet, range: &Reserved) -> String {
    if range.net == IPV6_LINK_LOCAL {
        return "; a VM's link-local addresses need no prefix: declare them in its \
                interface's `addresses`"
            .to_owned();
    }
    let IpNet::V6(mapped) = net else {
        return String::new();
    };
    let ipv4 = mapped
        .network()
        .to_ipv4_mapped()
        .filter(|_| range.net == IPV4_MAPPED)
        .map(|addr| IpNet::new_assert(IpAddr::V4(addr), mapped.prefix_len() - 96));
    match ipv4 {
        Some(ipv4) if ipv4.prefix_len() > 0 && reserved_overlapping(&ipv4).is_empty() => {
            format!("; write an IPv4 prefix as such, here \"{ipv4}\"")
        }
        _ => String::new(),
    }
}

/// `a`, `a and b`, `a, b and c`.
fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Reports each prefix that overlaps an earlier prefix of another segment, or that is
/// listed twice in its segment.
pub(super) fn check_conflicts(cx: &mut Checker<'_>, prefixes: &FilePrefixes) {
    let earlier = prefixes.index.earlier_overlapping();
    for (new, earlier) in prefixes.placed.iter().zip(&earlier) {
        let earlier = earlier.iter().map(|&i| &prefixes.placed[i as usize]);
        check_prefix(cx, earlier, new);
    }
}

/// Reports `new` if it overlaps a prefix of another segment, or is listed twice in its
/// segment.
fn check_prefix<'p>(
    cx: &mut Checker<'_>,
    earlier: impl Iterator<Item = &'p Placed<IpNet>>,
    new: &Placed<IpNet>,
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
