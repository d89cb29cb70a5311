//! Tests of the policy module: diagnostics as fixture files (`../fixtures`, run by
//! [`fixtures`]), and as code what reads better as code: valid files and the model they
//! parse to, the helpers of the model, loading files, the pattern matcher and the
//! documentation.

mod diff;
mod docs;
mod findings;
mod fixtures;
mod host;
mod identity;
mod interfaces;
mod load;
mod model;
mod names;
mod patterns;
mod prefixes;
mod settings;
mod values;

use super::*;

const FILE: &str = "policy.yaml";

/// Strips a leading newline and the common indentation, so test YAML can be indented
/// with the code. Line 1 is the first line after the opening quote's newline.
pub(super) fn dedent(s: &str) -> String {
    let s = s.strip_prefix('\n').unwrap_or(s);
    let indent = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    s.lines()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

pub(super) fn ok(src: &str) -> Policy {
    match parse(&dedent(src), FILE) {
        Ok(policy) => policy,
        Err(d) => panic!("expected a valid policy, got:\n{d}"),
    }
}

/// A file with one segment `acme/web` whose `key:` line is line 6 (value at column 15).
pub(super) fn segment_with(key: &str, value: &str) -> String {
    format!(
        "version: 1\ntenants:\n  - name: acme\n    segments:\n      - name: web\n        {key}: {value}\n"
    )
}

pub(super) fn pat(s: &str) -> InterfacePattern {
    InterfacePattern::new(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// An interface entry without identity.
pub(super) fn iface(s: &str) -> Interface {
    Interface::new(pat(s))
}

pub(super) fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// `dedent(s)` with every non-empty line indented by `n` spaces.
pub(super) fn indent(s: &str, n: usize) -> String {
    dedent(s)
        .lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{}{l}", " ".repeat(n))
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

pub(super) fn svc(protocol: Protocol, ports: Option<(u16, u16)>) -> Service {
    Service {
        protocol,
        ports: ports.map(|(first, last)| PortRange::new(first, last).unwrap()),
    }
}

pub(super) fn id(tenant: &str, segment: &str) -> SegmentId {
    SegmentId {
        tenant: tenant.into(),
        segment: segment.into(),
    }
}
