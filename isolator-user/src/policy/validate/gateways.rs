//! Gateways: each entry of a segment's `gateways` is one address of the host itself,
//! inside the segment's prefixes or IPv6 link-local, with the services the segment's
//! VMs may use there. It is no VM's: no interface declares it, no exposed endpoint of the
//! segment holds it, and no management prefix does.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_saphyr::Location;

use super::identity::Declared;
use super::prefixes::{is_ipv6_link_local, parse_prefix};
use super::values::check_services;
use super::{Checker, Listed, Outside, Placed, Scope, and_more, pos};
use crate::policy::{Expose, Gateway, Management, NetIndex};

const ADDRESS_HELP: &str = "write the host's address in the segment, e.g. \"10.1.1.1\", or an \
                            IPv6 link-local address such as \"fe80::1\"";

/// Parses a gateway's `address`: one address, also written as a /32 or /128.
fn parse_address(s: &str) -> Result<IpAddr, (String, Option<String>)> {
    if !s.contains('/') {
        return s.parse::<IpAddr>().map_err(|_| {
            (
                format!("{s:?} is not an IP address"),
                Some(ADDRESS_HELP.to_owned()),
            )
        });
    }
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => {
            return Err(parse_prefix(s).err().unwrap_or_else(|| {
                (
                    format!("{s:?} is not an IP address"),
                    Some(ADDRESS_HELP.to_owned()),
                )
            }));
        }
    };
    if net.prefix_len() == net.max_prefix_len() {
        return Ok(net.addr());
    }
    let help = if net.addr() == net.network() {
        ADDRESS_HELP.to_owned()
    } else {
        format!("did you mean \"{}\"? write the address alone", net.addr())
    };
    Err((
        format!("gateway address {s:?} is a prefix: a gateway is one address"),
        Some(help),
    ))
}

/// The gateways of the segment, checked against its prefixes and exposed endpoints.
pub(super) fn check(
    cx: &mut Checker<'_>,
    scope: &Scope<'_>,
    exposed: &[Placed<Expose>],
) -> Vec<Placed<Gateway>> {
    let own = scope.ix;
    let mut out: Vec<Placed<Gateway>> = Vec::with_capacity(scope.raw.gateways.len());
    // (address, as written, position) of the gateways with a valid address so far.
    let mut seen: Vec<(IpAddr, &str, Location)> = Vec::new();
    for entry in &scope.raw.gateways {
        let written = entry.address.value.as_str();
        let at = entry.address.referenced;
        let address = match parse_address(written) {
            Ok(address) => Some(address),
            Err((message, help)) => {
                cx.error(&at, message, help);
                None
            }
        };
        let services = check_services(cx, &entry.services, &|| format!("gateway {written}"));
        let Some(address) = address else {
            continue;
        };
        let net = IpNet::from(address);
        if !is_ipv6_link_local(&net)
            && let Some(Outside { relation, owner }) = scope.outside(&net)
        {
            let help = match owner {
                Some(owner) => format!(
                    "{written} belongs to segment {}: list the gateway there; a gateway is the \
                     host's address inside its own segment",
                    cx.qualified(owner)
                ),
                None => "a gateway is the host's address inside its segment, or an IPv6 \
                         link-local address: fix the address, or add a prefix that contains \
                         it to the segment's `prefixes`"
                    .to_owned(),
            };
            cx.error(
                &at,
                format!(
                    "gateway {written} {relation} segment {}{}",
                    cx.qualified(own),
                    scope.listed_prefixes()
                ),
                Some(help),
            );
            continue;
        }
        if let Some((_, first, first_at)) = seen.iter().find(|(a, ..)| *a == address) {
            cx.error(
                &at,
                format!(
                    "gateway {written} is listed twice in segment {}: first{} at {}",
                    cx.qualified(own),
                    if *first == written {
                        String::new()
                    } else {
                        format!(" as {first}")
                    },
                    pos(first_at)
                ),
                Some("remove one of the two entries, or merge their `services`".to_owned()),
            );
            continue;
        }
        seen.push((address, written, at));
        let mut within = exposed.iter().filter(|e| e.value.prefix.contains(&net));
        if let Some(endpoint) = within.next() {
            let relation = if endpoint.value.prefix == net {
                "is exposed as endpoint"
            } else {
                "lies within exposed endpoint"
            };
            cx.error(
                &at,
                format!(
                    "gateway {written} of segment {} {relation} {} {} at {}{}",
                    cx.qualified(own),
                    endpoint.raw,
                    endpoint.value.service,
                    pos(&endpoint.at),
                    and_more(within.count(), "exposed endpoint", "exposed endpoints"),
                ),
                Some(format!(
                    "a gateway is the host itself, not a VM, and is never exposed: narrow the \
                     exposure so that it leaves out {address}, or choose another gateway \
                     address"
                )),
            );
            continue;
        }
        if let Some(services) = services {
            out.push(Placed {
                value: Gateway { address, services },
                raw: written.to_owned(),
                at,
                segment: own,
            });
        }
    }
    out
}

/// Reports every gateway that an interface of any segment declares in its `addresses`,
/// or that lies in a management prefix: at the gateway, naming the first such entry.
pub(super) fn check_host_addresses(
    cx: &mut Checker<'_>,
    gateways: &[Placed<Gateway>],
    declared: &[Declared],
    management: &[Listed<Management>],
) {
    let declared_index = NetIndex::new(declared.iter().map(|d| &d.net));
    let management_index = NetIndex::new(management.iter().map(|m| &m.value.prefix));
    for gateway in gateways {
        let net = IpNet::from(gateway.value.address);
        let declaring = declared_index.containing(&net);
        let holding = management_index.containing(&net);
        if declaring.is_empty() && holding.is_empty() {
            continue;
        }
        let this = format!(
            "gateway {} of segment {}",
            gateway.raw,
            cx.qualified(gateway.segment)
        );
        let mut declaring = declaring.iter().map(|&i| &declared[i]);
        if let Some(first) = declaring.next() {
            let relation = if first.net == net {
                "is an address".to_owned()
            } else {
                format!("lies within address {:?}", first.raw)
            };
            let segment = if first.segment == gateway.segment {
                String::new()
            } else {
                format!(" of segment {}", cx.qualified(first.segment))
            };
            cx.error(
                &gateway.at,
                format!(
                    "{this} {relation} of interface {:?}{segment} at {}{}",
                    first.interface,
                    pos(&first.at),
                    and_more(
                        declaring.count(),
                        "declaring interface",
                        "declaring interfaces"
                    ),
                ),
                Some(
                    "a gateway is the host's own address, and no VM may send from it: remove it \
                     from the interface's `addresses`, or choose another gateway address"
                        .to_owned(),
                ),
            );
        }
        let mut holding = holding.iter().map(|&i| &management[i]);
        if let Some(first) = holding.next() {
            cx.error(
                &gateway.at,
                format!(
                    "{this} lies within management prefix {:?} at {}{}",
                    first.raw,
                    pos(&first.at),
                    and_more(holding.count(), "management prefix", "management prefixes"),
                ),
                Some(
                    "the segment's VMs reach their gateway, but no VM may reach a management \
                     prefix: choose another gateway address, or leave it out of the management \
                     prefix"
                        .to_owned(),
                ),
            );
        }
    }
}
