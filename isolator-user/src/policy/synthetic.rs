//! Large policies, valid by construction, for measuring the loader at cloud scale (the
//! `--loader` part of the bench example) and for the tests that hold it to that scale.
//!
//! A [`Shape`] says how many segments, prefixes, exposed endpoints and management prefixes
//! to write; [`generate`] writes the YAML. Segment number `g` (0-based, in file order)
//! belongs to tenant `t{g / segments_per_tenant}` and is named `s{g % segments_per_tenant}`.
//! Every segment has:
//!
//! - the interface pattern `v{g}-*` and, with its identity (a MAC, one IPv4 address, a
//!   VLAN), the exact name `v{g}` (see [`vif_name`]);
//! - `prefixes_per_segment` prefixes, IPv4 /28s out of 10.0.0.0/8 and IPv6 /64s out of
//!   fd00::/16, alternating (IPv4 first);
//! - `exposed_per_segment` exposed endpoints, single addresses spread over its prefixes;
//! - a gateway (the last address of its first IPv4 prefix) with one service;
//! - the uplink `u{g % 64}` (see [`uplink_name`]).
//!
//! Each tenant has a flow from each of its segments to the next one, and its last
//! segment has one to the first segment of the next tenant. `vif_names` is `["v*"]`.
//! The file is written the way an operator would: block style for the structure, flow
//! style for short entries.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub segments: usize,
    pub segments_per_tenant: usize,
    /// IPv4 and IPv6 alternating, IPv4 first. At least 1.
    pub prefixes_per_segment: usize,
    /// At most 12 per IPv4 prefix of the segment (a /28 holds 16 addresses).
    pub exposed_per_segment: usize,
    /// Management prefixes (at most 256 of each family), every other one with services.
    pub management: usize,
}

impl Shape {
    /// `segments` segments, 4 to a tenant, each with 2 prefixes (IPv4 and IPv6) and 2
    /// exposed endpoints, and 16 management prefixes.
    pub fn cloud(segments: usize) -> Shape {
        Shape {
            segments,
            segments_per_tenant: 4,
            prefixes_per_segment: 2,
            exposed_per_segment: 2,
            management: 16,
        }
    }

    /// Total segment prefixes.
    pub fn prefixes(&self) -> usize {
        self.segments * self.prefixes_per_segment
    }

    /// Total exposed endpoints.
    pub fn exposed(&self) -> usize {
        self.segments * self.exposed_per_segment
    }

    fn v4_per_segment(&self) -> usize {
        self.prefixes_per_segment.div_ceil(2)
    }

    /// Whether [`generate`] can write this shape as a valid policy.
    ///
    /// # Errors
    ///
    /// What is out of range.
    pub fn check(&self) -> Result<(), String> {
        // 10.0.0.0/8 holds 2^20 /28s.
        let v4 = self.segments * self.v4_per_segment();
        if self.segments_per_tenant == 0 || self.prefixes_per_segment == 0 {
            return Err("segments_per_tenant and prefixes_per_segment must be at least 1".into());
        }
        if v4 > 1 << 20 {
            return Err(format!("{v4} IPv4 /28s do not fit in 10.0.0.0/8"));
        }
        if self.exposed_per_segment > 12 * self.prefixes_per_segment {
            return Err("at most 12 exposed endpoints per prefix".into());
        }
        if self.management > 512 {
            return Err("at most 512 management prefixes".into());
        }
        if self.segments > 10_000_000 {
            return Err("interface names have at most 15 bytes".into());
        }
        Ok(())
    }
}

/// The exact interface name of segment `g` (the one with an identity); its pattern
/// `v{g}-*` matches `v{g}-0`, `v{g}-1`, ...
pub fn vif_name(g: usize) -> String {
    format!("v{g}")
}

/// The uplink name of segment `g`'s uplink: one of 64 names, each shared by many segments.
pub fn uplink_name(g: usize) -> String {
    format!("u{}", g % 64)
}

/// The `k`-th IPv4 /28 of 10.0.0.0/8.
fn v4_block(k: usize) -> Ipv4Addr {
    let k = u32::try_from(k).expect("checked by Shape::check");
    Ipv4Addr::from(0x0a00_0000 | (k << 4))
}

/// The `j`-th IPv6 /64 of segment `g`: fd00:{g / 65536}:{g % 65536}:{j}::/64.
fn v6_block(g: usize, j: usize) -> Ipv6Addr {
    let hi = u16::try_from(g >> 16).expect("checked by Shape::check");
    let lo = (g & 0xffff) as u16;
    let j = u16::try_from(j).expect("prefixes_per_segment fits in 16 bits");
    Ipv6Addr::new(0xfd00, hi, lo, j, 0, 0, 0, 0)
}

/// One of segment `g`'s prefixes as it is written in `prefixes`, and its first address.
enum Block {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Block {
    /// Prefix `i` of segment `g`.
    fn of(shape: &Shape, g: usize, i: usize) -> Block {
        if i.is_multiple_of(2) {
            Block::V4(v4_block(g * shape.v4_per_segment() + i / 2))
        } else {
            Block::V6(v6_block(g, i / 2))
        }
    }

    fn prefix(&self) -> String {
        match self {
            Block::V4(a) => format!("{a}/28"),
            Block::V6(a) => format!("{a}/64"),
        }
    }

    /// Address `host` of the block (`host` < 16).
    fn host(&self, host: u8) -> String {
        match self {
            Block::V4(a) => Ipv4Addr::from(u32::from(*a) + u32::from(host)).to_string(),
            Block::V6(a) => Ipv6Addr::from(u128::from(*a) + u128::from(host)).to_string(),
        }
    }
}

/// The policy file of `shape`.
///
/// # Panics
///
/// If [`Shape::check`] refuses the shape.
pub fn generate(shape: &Shape) -> String {
    if let Err(e) = shape.check() {
        panic!("synthetic policy shape {shape:?}: {e}");
    }
    // About 600 bytes a segment with the defaults.
    let per_segment = 400 + 60 * (shape.prefixes_per_segment + shape.exposed_per_segment);
    let mut out = String::with_capacity(200 + shape.segments * per_segment);
    out.push_str("# synthetic policy (isolator::policy::synthetic)\nversion: 1\n");
    management(shape, &mut out);
    out.push_str("vif_names: [\"v*\"]\ntenants:\n");
    let per = shape.segments_per_tenant;
    let tenants = shape.segments.div_ceil(per);
    for t in 0..tenants {
        let first = t * per;
        let count = per.min(shape.segments - first);
        writeln!(out, "  - name: t{t}\n    segments:").unwrap();
        for s in 0..count {
            segment(shape, first + s, s, &mut out);
        }
        out.push_str("    flows:\n");
        for s in 0..count.saturating_sub(1) {
            writeln!(
                out,
                "      - {{from: s{s}, to: s{}, protocol: tcp, ports: 5432}}",
                s + 1
            )
            .unwrap();
        }
        if t + 1 < tenants {
            writeln!(
                out,
                "      - {{from: s{}, to: t{}/s0, protocol: tcp, ports: \"8000-8080\"}}",
                count - 1,
                t + 1
            )
            .unwrap();
        }
    }
    out
}

fn management(shape: &Shape, out: &mut String) {
    if shape.management == 0 {
        return;
    }
    out.push_str("management:\n");
    for m in 0..shape.management {
        let i = m / 2;
        let prefix = if m.is_multiple_of(2) {
            format!("192.168.{i}.0/24")
        } else {
            format!("fd00:ff:{i:x}::/64")
        };
        if (m / 2).is_multiple_of(2) {
            writeln!(out, "  - prefix: {prefix}").unwrap();
        } else {
            writeln!(
                out,
                "  - prefix: {prefix}\n    services: [{{protocol: tcp, ports: 22}}, {{protocol: tcp, ports: \"6443-6444\"}}]"
            )
            .unwrap();
        }
    }
}

/// Segment `g`, the `s`-th of its tenant.
fn segment(shape: &Shape, g: usize, s: usize, out: &mut String) {
    let blocks: Vec<Block> = (0..shape.prefixes_per_segment)
        .map(|i| Block::of(shape, g, i))
        .collect();
    let Block::V4(_) = blocks[0] else {
        unreachable!("prefix 0 is IPv4");
    };
    let mac = format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (g >> 16) & 0xff,
        (g >> 8) & 0xff,
        g & 0xff
    );
    // The exact-name VM sends from address 1 of the first prefix; the gateway is address
    // 15; exposed endpoints are addresses 2..14 of the prefixes, round robin.
    writeln!(
        out,
        "      - name: s{s}\n        interfaces:\n          - \"v{g}-*\"\n          - {{name: v{g}, mac: \"{mac}\", addresses: [\"{}\"], vlans: [{}]}}",
        blocks[0].host(1),
        100 + g % 3000,
    )
    .unwrap();
    out.push_str("        prefixes: [");
    for (i, block) in blocks.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write!(out, "\"{}\"", block.prefix()).unwrap();
    }
    out.push_str("]\n");
    if shape.exposed_per_segment > 0 {
        out.push_str("        expose:\n");
        for e in 0..shape.exposed_per_segment {
            let block = &blocks[e % blocks.len()];
            let host = 2 + (e / blocks.len()) as u8;
            let (protocol, ports) = if e % 3 == 2 {
                ("udp", 53)
            } else {
                ("tcp", 443)
            };
            writeln!(
                out,
                "          - {{address: \"{}\", protocol: {protocol}, ports: {ports}}}",
                block.host(host)
            )
            .unwrap();
        }
    }
    writeln!(
        out,
        "        gateways: [{{address: \"{}\", services: [{{protocol: udp, ports: 53}}]}}]\n        uplinks: [{}]",
        blocks[0].host(15),
        uplink_name(g),
    )
    .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    #[test]
    fn a_small_synthetic_policy_is_valid_and_has_its_shape() {
        let shape = Shape {
            segments: 10,
            segments_per_tenant: 3,
            prefixes_per_segment: 3,
            exposed_per_segment: 5,
            management: 6,
        };
        let policy = match parse(&generate(&shape), "synthetic.yaml") {
            Ok(policy) => policy,
            Err(d) => panic!("{d}"),
        };
        let summary = policy.summary();
        assert_eq!(summary.tenants, 4);
        assert_eq!(summary.segments, 10);
        assert_eq!(summary.interfaces, 20);
        assert_eq!(summary.prefixes, shape.prefixes());
        assert_eq!(summary.exposed, shape.exposed());
        assert_eq!(summary.management, 6);
        assert_eq!(summary.gateways, 10);
        assert_eq!(summary.uplinks, 10);
        // 2 flows within each full tenant, 0 in the last (one segment), and one to the
        // next tenant from each but the last.
        assert_eq!(summary.flows, 3 * 2 + 3);
        let (tenant, segment) = policy
            .segment_for_interface(&format!("{}-7", vif_name(7)))
            .expect("v7-7 is segment 7's");
        assert_eq!((tenant.name.as_str(), segment.name.as_str()), ("t2", "s1"));
        let exact = segment.interface_for(&vif_name(7)).expect("v7 is listed");
        assert!(exact.mac.is_some() && !exact.addresses.is_empty());
    }

    #[test]
    fn shapes_that_cannot_be_valid_are_refused() {
        let mut shape = Shape::cloud(1 << 20);
        shape.prefixes_per_segment = 3;
        assert!(shape.check().is_err(), "2^21 IPv4 /28s");
        assert!(Shape::cloud(1 << 20).check().is_ok());
        shape = Shape::cloud(10);
        shape.exposed_per_segment = 25;
        assert!(shape.check().is_err());
    }
}
