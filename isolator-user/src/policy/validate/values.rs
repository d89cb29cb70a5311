//! Values several sections share: keywords (with suggestions for misspelled ones) and
//! services (a protocol and its ports).

use serde_saphyr::Spanned;

use super::{Checker, pos};
use serde_saphyr::Location;

use crate::policy::raw::{RawPorts, RawScalar, RawService};
use crate::policy::{PortRange, Protocol, Service};

/// The keywords a key accepts, for [`choose`].
pub(super) struct Keywords<T: 'static> {
    pub key: &'static str,
    pub choices: &'static [(&'static str, T)],
    /// What to write instead, explaining each choice.
    pub help: &'static str,
}

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
pub(super) fn choose<T: Copy>(
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
pub(in crate::policy) fn closest<'c>(
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
pub(in crate::policy) fn edit_distance(a: &str, b: &str) -> usize {
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

const PORTS_RANGE_HELP: &str = "ports are 1 to 65535; leave out `ports` for every port";

const PORTS_FORM_HELP: &str = "write one port as a number (`ports: 443`) or one range as a \
     quoted string (`ports: \"8000-8080\"`); for several ports or ranges, write one entry for each";

/// A protocol and its optional ports, or `None` after reporting what is wrong.
pub(super) fn check_service(
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

/// The `services` of `owner` (a management prefix or a gateway, for messages), in file
/// order, or `None` after reporting what is wrong: an invalid service, or one listed
/// twice.
pub(super) fn check_services(
    cx: &mut Checker<'_>,
    list: &[RawService],
    owner: &dyn Fn() -> String,
) -> Option<Vec<Service>> {
    let mut valid = true;
    let mut services: Vec<(Service, Location)> = Vec::new();
    for raw_service in list {
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
                    "service {service} is listed twice for {}: first at {}",
                    owner(),
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
