//! [`Plan::update`] against [`Plan::new`] on a random walk of reloads: each step edits,
//! adds or removes tenants of a valid policy, reads it through the tenant cache (so the
//! tenants that did not change are the same `Arc`s, as in the daemon) and compares the
//! two plans, errors included.

use super::*;
use crate::policy::Cache;
use crate::testing::Rng;
use std::collections::HashMap;

const REST: &str = "version: 1\nmanagement:\n  - prefix: 192.168.100.0/24\nvif_names: [\"tap*\", \"vm*\"]\ntenants:\n";

/// One segment of a tenant, as written.
#[derive(Clone)]
struct SegmentSpec {
    name: String,
    prefixes: Vec<String>,
    /// The exact-name interface, with an address of the segment or none.
    exact: (String, Option<String>),
    pattern: Option<String>,
    expose: Vec<String>,
    gateway: Option<String>,
    uplinks: Vec<String>,
}

#[derive(Clone)]
struct TenantSpec {
    name: String,
    segments: Vec<SegmentSpec>,
    /// (from, to): to as `tenant/segment`.
    flows: Vec<(String, String)>,
}

/// Segment `k` of the tenant numbered `n`: its own addresses, interfaces the host may
/// have (`vm{n}-{k}`, `p{n}-{k}-*`), uplinks among `up0`..`up3`.
fn segment(rng: &mut Rng, n: usize, k: usize) -> SegmentSpec {
    let base = format!("10.{}.{}", n >> 8, n & 255);
    let v4 = format!("{base}.{}/27", k * 32);
    let mut prefixes = vec![v4];
    if rng.below(3) == 0 {
        prefixes.push(format!("fd00:{n:x}:{k}::/64"));
    }
    SegmentSpec {
        name: format!("s{k}"),
        prefixes,
        // `x…`: a name no link of the host has.
        exact: if rng.below(4) != 0 {
            let address = (rng.below(2) == 0).then(|| format!("{base}.{}", k * 32 + 1));
            (format!("vm{n}-{k}"), address)
        } else {
            (format!("x{n}-{k}"), None)
        },
        pattern: (rng.below(3) == 0).then(|| format!("p{n}-{k}-*")),
        expose: (0..rng.below(3))
            .map(|e| format!("{base}.{}", k * 32 + 2 + e))
            .collect(),
        gateway: (rng.below(2) == 0).then(|| format!("{base}.{}", k * 32 + 30)),
        uplinks: (0..rng.below(2))
            .map(|_| format!("up{}", rng.below(4)))
            .collect(),
    }
}

fn tenant(rng: &mut Rng, n: usize) -> TenantSpec {
    TenantSpec {
        name: format!("t{n}"),
        segments: (0..1 + rng.below(3)).map(|k| segment(rng, n, k)).collect(),
        flows: Vec::new(),
    }
}

/// A flow from one of `t`'s segments to any segment of any tenant but itself.
fn flow(rng: &mut Rng, tenants: &[TenantSpec], t: usize) -> Option<(String, String)> {
    let from = tenants[t]
        .segments
        .get(rng.below(tenants[t].segments.len()))?;
    let other = &tenants[rng.below(tenants.len())];
    let to = other.segments.get(rng.below(other.segments.len()))?;
    if other.name == tenants[t].name && to.name == from.name {
        return None;
    }
    Some((from.name.clone(), format!("{}/{}", other.name, to.name)))
}

fn text(tenants: &[TenantSpec]) -> String {
    let quoted = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = REST.to_owned();
    for t in tenants {
        out.push_str(&format!("  - name: {}\n    segments:\n", t.name));
        for s in &t.segments {
            out.push_str(&format!(
                "      - name: {}\n        prefixes: [{}]\n        interfaces:\n",
                s.name,
                quoted(&s.prefixes)
            ));
            if let Some(pattern) = &s.pattern {
                out.push_str(&format!("          - \"{pattern}\"\n"));
            }
            match &s.exact {
                (name, Some(address)) => out.push_str(&format!(
                    "          - {{name: \"{name}\", addresses: [\"{address}\"]}}\n"
                )),
                (name, None) => out.push_str(&format!("          - \"{name}\"\n")),
            }
            if !s.expose.is_empty() {
                out.push_str("        expose:\n");
                for (e, address) in s.expose.iter().enumerate() {
                    let (protocol, ports) = if e % 2 == 0 {
                        ("tcp", 443)
                    } else {
                        ("udp", 53)
                    };
                    out.push_str(&format!(
                        "          - {{address: \"{address}\", protocol: {protocol}, ports: {ports}}}\n"
                    ));
                }
            }
            if let Some(gateway) = &s.gateway {
                out.push_str(&format!(
                    "        gateways: [{{address: \"{gateway}\", services: [{{protocol: udp, ports: 53}}]}}]\n"
                ));
            }
            if !s.uplinks.is_empty() {
                out.push_str(&format!("        uplinks: [{}]\n", quoted(&s.uplinks)));
            }
        }
        if !t.flows.is_empty() {
            out.push_str("    flows:\n");
            for (from, to) in &t.flows {
                out.push_str(&format!(
                    "      - {{from: {from}, to: {to}, protocol: tcp, ports: 80}}\n"
                ));
            }
        }
    }
    out
}

/// The host: vms of the first tenants' segments, pattern links (some of a kind that
/// cannot be a vif), an unclassified tap, the uplinks and a physical link, with an
/// address.
fn host() -> HostView {
    let mut links = Vec::new();
    let mut ifindex = 10;
    let mut add = |name: String, kind: &str| {
        links.push(Link {
            name,
            ifindex,
            kind: kind.to_owned(),
        });
        ifindex += 1;
    };
    for n in 0..12 {
        for k in 0..3 {
            add(format!("vm{n}-{k}"), "veth");
            if (n + k) % 3 == 0 {
                add(
                    format!("p{n}-{k}-0"),
                    if n % 2 == 0 { "veth" } else { "bridge" },
                );
            }
        }
    }
    add("tap0".into(), "tun");
    for u in 0..4 {
        add(format!("up{u}"), "");
    }
    add("eth0".into(), "");
    HostView {
        links,
        addresses: vec!["192.168.100.1".parse().expect("address")],
        ..HostView::default()
    }
}

/// One edit of the kinds a reload brings: a tenant's segment changed, added or
/// removed, its flows changed, a tenant added or removed. Some make the policy invalid
/// (a flow to a segment that went): those steps are skipped.
fn edit(rng: &mut Rng, tenants: &mut Vec<TenantSpec>, fresh: &mut usize) {
    let t = rng.below(tenants.len());
    match rng.below(9) {
        0 => {
            *fresh += 1;
            let at = rng.below(tenants.len() + 1);
            tenants.insert(at, tenant(rng, *fresh));
        }
        1 if tenants.len() > 2 => {
            tenants.remove(t);
        }
        2 => {
            let n: usize = tenants[t].name[1..].parse().expect("number");
            let k = tenants[t].segments.len();
            if k < 6 {
                let s = segment(rng, n, k);
                tenants[t].segments.push(s);
            }
        }
        3 if tenants[t].segments.len() > 1 => {
            tenants[t].segments.pop();
        }
        4 => {
            if let Some(f) = flow(rng, tenants, t) {
                tenants[t].flows.push(f);
            }
        }
        5 => {
            tenants[t].flows.clear();
        }
        _ => {
            let n: usize = tenants[t].name[1..].parse().expect("number");
            let k = rng.below(tenants[t].segments.len());
            let name = tenants[t].segments[k].name.clone();
            let mut s = segment(rng, n, k);
            s.name = name;
            tenants[t].segments[k] = s;
        }
    }
    tenants[t..].iter_mut().for_each(|t| t.flows.dedup());
}

#[test]
fn updating_the_plan_gives_what_making_it_whole_gives() {
    let host = host();
    let mut rng = Rng(0x9a7e);
    let (mut followed, mut steps) = (0, 0);
    for round in 0..40 {
        let mut fresh = 11;
        let mut tenants: Vec<TenantSpec> =
            (0..4 + rng.below(8)).map(|n| tenant(&mut rng, n)).collect();
        for t in 0..tenants.len() {
            if let Some(f) = flow(&mut rng, &tenants, t) {
                tenants[t].flows.push(f);
            }
        }
        let mut cache = Cache::new();
        let (first, _, _) = cache.parse_timed(&text(&tenants), "policy.yaml");
        let mut policy = match first {
            Ok(policy) => policy,
            Err(d) => panic!("round {round}: the first policy is not valid:\n{d}"),
        };
        let mut plan = Plan::new(&policy, &host).expect("the first plan");
        for step in 0..12 {
            let mut next = tenants.clone();
            for _ in 0..1 + rng.below(2) {
                edit(&mut rng, &mut next, &mut fresh);
            }
            let (read, _, _) = cache.parse_timed(&text(&next), "policy.yaml");
            let Ok(next_policy) = read else {
                continue;
            };
            steps += 1;
            let whole = Plan::new(&next_policy, &host);
            if follow(&plan, &policy, &next_policy, &host).is_some() {
                followed += 1;
            }
            let updated = Plan::update(&plan, &policy, &next_policy, &host);
            assert_eq!(updated, whole, "round {round}, step {step}");
            let Ok(whole) = whole else {
                continue;
            };
            tenants = next;
            policy = next_policy;
            plan = whole;
        }
    }
    // Most steps are followed, not made whole: the comparison is not of `Plan::new` with
    // itself.
    eprintln!("followed {followed} of {steps}");
    assert!(followed * 2 > steps, "followed {followed} of {steps}");
}

/// Segments whose names' hashes collide: one takes the next id. A change that adds or
/// removes one of them, or leaves them be, numbers every segment as `Plan::new` does, in
/// whichever order the two names sort.
#[test]
fn colliding_names_are_numbered_as_a_whole_plan_numbers_them() {
    // Two tenants whose segment `s0` has one hash: searched among t0, t1, ...
    let mut seen: HashMap<u32, usize> = HashMap::new();
    let (a, b) = (0..)
        .find_map(|i: usize| {
            let id = crate::compile::name_id([&format!("t{i}"), "s0"]);
            seen.insert(id, i).map(|j| (j, i))
        })
        .expect("a collision");
    let tenant = |n: usize, net: u8| {
        format!(
            "  - name: t{n}\n    segments:\n      - name: s0\n        interfaces: [\"x{n}\"]\n        prefixes: [\"10.{net}.0.0/24\"]\n"
        )
    };
    let host = HostView::default();
    let mut checked = 0;
    for (first, second) in [(a, b), (b, a)] {
        let texts = [
            format!("version: 1\ntenants:\n{}{}", tenant(first, 1), tenant(7, 3)),
            format!(
                "version: 1\ntenants:\n{}{}{}",
                tenant(first, 1),
                tenant(7, 3),
                tenant(second, 2)
            ),
            // An unrelated tenant changed beside the collision.
            format!(
                "version: 1\ntenants:\n{}{}{}",
                tenant(first, 1),
                tenant(8, 4),
                tenant(second, 2)
            ),
            format!(
                "version: 1\ntenants:\n{}{}",
                tenant(8, 4),
                tenant(second, 2)
            ),
            format!("version: 1\ntenants:\n{}{}", tenant(first, 1), tenant(7, 3)),
        ];
        let mut cache = Cache::new();
        let (policy, _, _) = cache.parse_timed(&texts[0], "p.yaml");
        let mut policy = policy.expect("valid");
        let mut plan = Plan::new(&policy, &host).expect("plan");
        for text in &texts[1..] {
            let (next, _, _) = cache.parse_timed(text, "p.yaml");
            let next = next.expect("valid");
            let whole = Plan::new(&next, &host).expect("plan");
            assert_eq!(
                Plan::update(&plan, &policy, &next, &host),
                Ok(whole.clone()),
                "{text}"
            );
            checked += 1;
            policy = next;
            plan = whole;
        }
    }
    assert_eq!(checked, 8);
}
