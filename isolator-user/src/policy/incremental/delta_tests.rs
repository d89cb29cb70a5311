//! Validation of the changed tenants against the kept ones (`validate::delta`) against the
//! whole file's, on a random walk of edits: each edit changes, adds or removes tenants,
//! often borrowing a value of another tenant, and the result through the cache must be
//! the result of reading the whole file.

use super::Cache;
use crate::policy::{Diagnostics, Policy, parse};
use crate::testing::Rng;

/// What a result shows: the policy, or every diagnostic as printed.
fn shown(result: &Result<Policy, Diagnostics>) -> Result<&Policy, String> {
    result.as_ref().map_err(|d| d.to_string())
}

const REST: &str =
    "version: 1\nmanagement:\n  - prefix: 192.168.100.0/24\nvif_names: [\"tap*\"]\ntenants:\n";

/// One tenant of one segment, every entry that validation checks between tenants
/// written out, so that an edit can give it another tenant's.
#[derive(Clone)]
struct Spec {
    name: String,
    segment: String,
    prefixes: Vec<String>,
    interfaces: Vec<String>,
    /// The identified interface: name, MAC, addresses (one IPv4 inside the segment, an
    /// IPv6 link-local address and prefix).
    vm: String,
    mac: String,
    addresses: Vec<String>,
    /// Gateways (one IPv4 inside the segment, one IPv6 link-local).
    gateways: Vec<String>,
    uplinks: Vec<String>,
    /// `tenant/segment`, TCP port 80 from the tenant's segment.
    flows: Vec<String>,
}

impl Spec {
    /// Tenant `i` of `n`: disjoint from every other, with a flow to the next tenant.
    fn base(i: usize, n: usize) -> Spec {
        Spec {
            name: format!("t{i}"),
            segment: "web".to_owned(),
            prefixes: vec![format!("10.{i}.0.0/24")],
            interfaces: vec![format!("vm-{i}-*")],
            vm: format!("lb-{i}"),
            mac: format!("52:54:00:00:{i:02x}:01"),
            addresses: vec![
                format!("10.{i}.0.10"),
                format!("fe80::a:{i}"),
                format!("fe80::b:{i}00/120"),
            ],
            gateways: vec![format!("10.{i}.0.1"), format!("fe80::1:{i}")],
            uplinks: vec![format!("up-{i}")],
            flows: vec![format!("t{}/web", (i + 1) % n)],
        }
    }

    fn text(&self) -> String {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = format!(
            "  - name: {}\n    segments:\n      - name: {}\n        prefixes: [{}]\n        \
             interfaces:\n",
            self.name,
            self.segment,
            list(&self.prefixes)
        );
        for interface in &self.interfaces {
            out.push_str(&format!("          - \"{interface}\"\n"));
        }
        out.push_str(&format!(
            "          - name: \"{}\"\n            mac: \"{}\"\n            addresses: [{}]\n",
            self.vm,
            self.mac,
            list(&self.addresses)
        ));
        if !self.gateways.is_empty() {
            out.push_str("        gateways:\n");
            for gateway in &self.gateways {
                out.push_str(&format!("          - address: \"{gateway}\"\n"));
            }
        }
        out.push_str(&format!("        uplinks: [{}]\n", list(&self.uplinks)));
        if !self.flows.is_empty() {
            out.push_str("    flows:\n");
            for to in &self.flows {
                out.push_str(&format!(
                    "      - from: {}\n        to: {to}\n        protocol: tcp\n        ports: 80\n",
                    self.segment
                ));
            }
        }
        out
    }
}

fn file(tenants: &[Spec]) -> String {
    let mut out = REST.to_owned();
    for tenant in tenants {
        out.push_str(&tenant.text());
    }
    out
}

/// Changes one thing of tenant `k`, mostly to a value tenant `j` (another, or the same)
/// has: every kind of entry that is checked between tenants, and its legitimate twin.
/// About half of the edits are legitimate.
fn edit(rng: &mut Rng, tenants: &mut Vec<Spec>, fresh: &mut usize) {
    let n = tenants.len();
    let k = rng.below(n);
    let j = rng.below(n);
    let other = tenants[j].clone();
    let ix = |s: &Spec| s.name[1..].to_owned();
    let (oi, own) = (ix(&other), ix(&tenants[k]));
    let old = format!("{}/{}", tenants[k].name, tenants[k].segment);
    let t = &mut tenants[k];
    if rng.below(2) == 0 {
        // Legitimate, if nothing else is wrong.
        match rng.below(8) {
            0 => t.uplinks.push(format!("up-{own}-{}", rng.below(3))),
            1 => t.mac = format!("52:54:00:01:{:02x}:{:02x}", rng.below(256), rng.below(256)),
            2 => t.gateways.push(format!("fe80::2:{}", rng.below(1000))),
            3 => t
                .prefixes
                .push(format!("10.{}.0.0/24", 100 + rng.below(50))),
            4 => t.vm = format!("{}-{}", t.vm, rng.below(4)),
            5 if n < 12 => {
                *fresh += 1;
                let mut new = Spec::base(200 + *fresh % 50, n);
                new.flows = vec![format!("{}/{}", other.name, other.segment)];
                tenants.insert(k, new);
            }
            6 if n > 2 => {
                // A tenant goes, with the flows to it.
                tenants.remove(k);
                for tenant in tenants.iter_mut() {
                    tenant.flows.retain(|to| *to != old);
                }
            }
            _ => {
                // A segment is renamed, with the flows to it.
                let segment = format!("web{}", rng.below(3));
                let new = format!("{}/{segment}", t.name);
                t.segment = segment;
                for tenant in tenants.iter_mut() {
                    for to in &mut tenant.flows {
                        if *to == old {
                            to.clone_from(&new);
                        }
                    }
                }
            }
        }
        return;
    }
    match rng.below(20) {
        // Patterns whose literal end is shorter than a name they match.
        16 => t.interfaces.push(format!("*{}", &other.vm[1..])),
        17 => t
            .interfaces
            .push(format!("{}*", &other.vm[..other.vm.len() - 1])),
        // A gateway inside another interface's declared prefix.
        18 => t.gateways.push(format!("fe80::b:{oi}05")),
        // A declared prefix that holds another tenant's link-local gateway (and one
        // more address).
        19 => {
            if let Ok(group) = u32::from_str_radix(&oi, 16) {
                t.addresses.push(format!("fe80::1:{:x}/127", group & !1));
            }
        }
        0 => t.name = other.name,
        1 => t.interfaces.push(format!("vm-{oi}-7")),
        2 => t.interfaces.push("vm-*".to_owned()),
        3 => t.interfaces.push(other.vm),
        4 => t.interfaces.push(other.uplinks[0].clone()),
        5 => t.uplinks.push(format!("vm-{oi}-x?")),
        6 => t.mac = other.mac,
        7 => t.addresses.push(other.addresses[1].clone()),
        8 => t.addresses.push(other.gateways[1].clone()),
        9 => t.gateways.push(other.addresses[1].clone()),
        10 => t.prefixes.push(format!("10.{oi}.0.128/25")),
        11 => t.flows.push(format!("{}/{}", other.name, other.segment)),
        12 => t.flows.push(format!("{}/db", other.name)),
        13 => t.segment = format!("web{}", rng.below(3)),
        14 if n > 2 => {
            tenants.remove(k);
        }
        _ => t.name = format!("t{own}x"),
    }
}

/// A random walk of edits over a policy of eight tenants: each edit (one, two or three
/// changes at once) is read through a cache that read the walk's last valid file, and
/// must give what reading the file whole gives: the same policy, or the same diagnostics.
/// A valid file is validated by its changed tenants alone; an invalid one never passes.
#[test]
fn validating_the_changed_tenants_gives_what_the_whole_file_gives() {
    walk(0x1507_a70e);
}

/// The same walk, the changed tenants' entries always looked up through indexes (as
/// when many tenants change) rather than scanned.
#[test]
fn validating_the_changed_tenants_through_indexes_gives_what_the_whole_file_gives() {
    crate::policy::validate::delta::SCAN_IN_TESTS.with(|scan| scan.set(Some(0)));
    walk(0x2b0b_5eed);
}

fn walk(seed: u64) {
    const STEPS: usize = 800;
    let n = 8;
    let mut valid: Vec<Spec> = (0..n).map(|i| Spec::base(i, n)).collect();
    let mut cache = Cache::new();
    let first = file(&valid);
    let (result, _, reuse) = cache.parse_timed(&first, "walk.yaml");
    assert_eq!(shown(&result), shown(&parse(&first, "walk.yaml")));
    assert!(result.is_ok() && !reuse.whole && !reuse.delta, "{reuse:?}");

    let mut rng = Rng(seed);
    let (mut fresh, mut by_delta, mut refused) = (0, 0, 0);
    for step in 0..STEPS {
        let mut tenants = valid.clone();
        for _ in 0..1 + usize::from(rng.below(3) == 0) {
            if !tenants.is_empty() {
                edit(&mut rng, &mut tenants, &mut fresh);
            }
        }
        let source = file(&tenants);
        let (result, _, reuse) = cache.parse_timed(&source, "walk.yaml");
        let whole = parse(&source, "walk.yaml");
        assert_eq!(shown(&result), shown(&whole), "step {step}:\n{source}");
        match result {
            Ok(_) => {
                // Every valid file after the first was validated by its changes.
                assert!(reuse.delta, "step {step}: {reuse:?}\n{source}");
                by_delta += 1;
                valid = tenants;
            }
            Err(_) => refused += 1,
        }
    }
    // Both kinds are common, so the walk covers what it should.
    assert!(by_delta > STEPS / 4, "{by_delta} valid edits");
    assert!(refused > STEPS / 4, "{refused} refused edits");
}

/// A change around the tenants (here a management prefix over an unchanged tenant's
/// prefix) is validated with the whole file: the settings were part of what the kept
/// tenants were validated with.
#[test]
fn a_change_around_the_tenants_validates_the_whole_file() {
    let tenants: Vec<Spec> = (0..4).map(|i| Spec::base(i, 4)).collect();
    let mut cache = Cache::new();
    let first = file(&tenants);
    assert!(cache.parse_timed(&first, "p.yaml").0.is_ok());
    let second = first.replacen("192.168.100.0/24", "10.2.0.0/16", 1);
    assert_ne!(first, second);
    let (result, _, reuse) = cache.parse_timed(&second, "p.yaml");
    let whole = parse(&second, "p.yaml");
    assert!(whole.is_err(), "the management prefix holds t2's");
    assert_eq!(shown(&result), shown(&whole));
    assert!(!reuse.delta, "{reuse:?}");
    // Unchanged tenants and settings: validated by the (no) changes.
    let (result, _, reuse) = cache.parse_timed(&first, "p.yaml");
    assert!(result.is_ok() && reuse.delta, "{reuse:?}");
}

/// A tenant written twice, word for word: both copies are kept tenants, but together
/// they are a duplicate, which only the whole file's validation sees.
#[test]
fn the_same_tenant_twice_validates_the_whole_file() {
    let tenants: Vec<Spec> = (0..4).map(|i| Spec::base(i, 4)).collect();
    let mut cache = Cache::new();
    let first = file(&tenants);
    assert!(cache.parse_timed(&first, "p.yaml").0.is_ok());
    let second = format!("{first}{}", tenants[1].text());
    let (result, _, reuse) = cache.parse_timed(&second, "p.yaml");
    let whole = parse(&second, "p.yaml");
    assert!(whole.is_err(), "t1 twice");
    assert_eq!(shown(&result), shown(&whole));
    assert!(!reuse.delta, "{reuse:?}");
}

/// A new tenant written twice, word for word: neither copy is kept, and together they
/// are a duplicate, which only the whole file's validation sees.
#[test]
fn a_new_tenant_twice_validates_the_whole_file() {
    let tenants: Vec<Spec> = (0..4).map(|i| Spec::base(i, 4)).collect();
    let mut cache = Cache::new();
    let first = file(&tenants);
    assert!(cache.parse_timed(&first, "p.yaml").0.is_ok());
    let new = Spec::base(4, 5).text();
    let second = format!("{first}{new}{new}");
    let (result, _, reuse) = cache.parse_timed(&second, "p.yaml");
    let whole = parse(&second, "p.yaml");
    assert!(whole.is_err(), "t4 twice");
    assert_eq!(shown(&result), shown(&whole));
    assert!(!reuse.delta, "{reuse:?}");
}

/// A kept tenant whose text the cache cannot find by its hash (as the second of two kept
/// texts with one hash): parsed again, validated as a tenant gone and come back, and
/// the policy is the whole file's.
#[test]
fn a_kept_text_not_found_by_its_hash_is_read_again() {
    let tenants: Vec<Spec> = (0..4).map(|i| Spec::base(i, 4)).collect();
    let mut cache = Cache::new();
    let first = file(&tenants);
    assert!(cache.parse_timed(&first, "p.yaml").0.is_ok());
    let lost = cache
        .by_hash
        .iter()
        .find(|(_, at)| cache.tenants[**at].text.contains("name: t2"))
        .map(|(hash, _)| *hash)
        .expect("t2 is kept");
    cache.by_hash.remove(&lost);
    // The whole file cut, its entries found by their hashes (not where the last file had
    // them, which would find t2 without its hash).
    cache.around = None;
    let second = first.replacen("10.0.0.10", "10.0.0.11", 1);
    assert_ne!(first, second);
    let (result, _, reuse) = cache.parse_timed(&second, "p.yaml");
    let whole = parse(&second, "p.yaml");
    assert_eq!(shown(&result), shown(&whole));
    assert!(result.is_ok() && reuse.delta, "{reuse:?}");
    assert_eq!((reuse.reused, reuse.parsed), (2, 2), "{reuse:?}");
    // Kept again, and found next time.
    let (result, _, reuse) = cache.parse_timed(&first, "p.yaml");
    assert_eq!(shown(&result), shown(&parse(&first, "p.yaml")));
    assert_eq!((reuse.reused, reuse.parsed), (3, 1), "{reuse:?}");
}
