//! The comparison over hand-made inventories: each kind of drift, and a clean host.

use super::*;

const POLICY: &str = r#"version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vweb*"]
        prefixes: [10.1.1.0/24]
      - name: db
        interfaces: ["vdb1", "vdb9"]
        prefixes: [10.1.2.0/24]
        uplinks: ["vx-db"]
"#;

/// Program ids: 10.. isolator's (the daemon's pinned ones), 90 a foreign one, 80 a stale
/// isolator_ingress.
fn programs() -> BTreeMap<u32, String> {
    [
        (10, "isolator_ingres"),
        (11, "isolator_egress"),
        (12, "isolator_tags"),
        (80, "isolator_ingres"),
        (90, "xdp_prog"),
    ]
    .into_iter()
    .map(|(id, n)| (id, n.to_string()))
    .collect()
}

fn enforced_vif(name: &str, ifindex: u32) -> LinkDetails {
    LinkDetails {
        name: name.into(),
        ifindex,
        kind: "veth".into(),
        master: Some(1),
        xdp: Some(10),
        tcx_ingress: vec![12],
        tcx_egress: vec![11],
        ..Default::default()
    }
}

fn pins(ifindexes: &[u32]) -> BTreeMap<u32, BTreeMap<String, u32>> {
    ifindexes
        .iter()
        .map(|i| {
            let kinds = [("xdp", 10), ("tc", 11), ("tags", 12)]
                .into_iter()
                .map(|(k, id)| (k.to_string(), id))
                .collect();
            (*i, kinds)
        })
        .collect()
}

/// A bridge with web1 and db1, both enforced.
fn clean() -> Inventory {
    Inventory {
        links: vec![
            LinkDetails {
                name: "br0".into(),
                ifindex: 1,
                kind: "bridge".into(),
                ..Default::default()
            },
            enforced_vif("vweb1", 2),
            enforced_vif("vdb1", 3),
        ],
        host_addresses: vec![],
        programs: programs(),
        pinned: pins(&[2, 3]),
    }
}

fn policy() -> Policy {
    crate::policy::parse(POLICY, "policy.yaml").expect("valid")
}

fn findings(inv: &Inventory) -> Vec<(&'static str, Vec<String>)> {
    compare(&policy(), inv, &[])
        .expect("compiles")
        .into_iter()
        .filter(|f| f.severity == Severity::Violation)
        .map(|f| (f.kind, f.objects))
        .collect()
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_clean_host_has_no_violation_and_warns_of_a_missing_interface() {
    let all = compare(&policy(), &clean(), &[]).expect("compiles");
    assert!(findings(&clean()).is_empty(), "{all:#?}");
    let warnings: Vec<_> = all
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .map(|f| (f.kind, f.objects.clone()))
        .collect();
    assert_eq!(
        warnings,
        vec![(kind::MISSING_INTERFACE, strings(&["vdb9"]))]
    );
}

#[test]
fn a_detached_xdp_program_is_not_enforced_and_opens_the_bridge() {
    let mut inv = clean();
    inv.links[1].xdp = None;
    assert_eq!(
        findings(&inv),
        vec![
            (kind::NOT_ENFORCED, strings(&["vweb1"])),
            (kind::SHARED_L2_UNENFORCED, strings(&["br0", "vweb1"])),
        ]
    );
}

#[test]
fn a_foreign_xdp_program_is_reported_with_the_missing_one() {
    let mut inv = clean();
    inv.links[2].xdp = Some(90);
    let found = findings(&inv);
    assert_eq!(found[0], (kind::FOREIGN_PROGRAM, strings(&["vdb1"])));
    assert_eq!(found[1], (kind::NOT_ENFORCED, strings(&["vdb1"])));
}

#[test]
fn a_foreign_tcx_program_counts_only_before_isolators() {
    let mut inv = clean();
    inv.links[1].tcx_egress = vec![11, 90];
    assert!(findings(&inv).is_empty());
    inv.links[1].tcx_egress = vec![90, 11];
    assert_eq!(
        findings(&inv)[0],
        (kind::FOREIGN_PROGRAM, strings(&["vweb1"]))
    );
}

/// A vif that came while the daemon runs holds its TC programs as `cls_bpf` filters
/// (no pinned links) until the daemon hands them over to TCX: enforced all the same, but
/// any TCX program on the hook runs before the filter.
#[test]
fn a_quick_attachment_enforces_with_nothing_on_tcx_before_it() {
    let mut inv = clean();
    inv.programs.insert(21, "isolator_egress".into());
    inv.programs.insert(22, "isolator_tags".into());
    inv.links[1].tcx_egress = vec![];
    inv.links[1].tcx_ingress = vec![];
    inv.links[1].filters_egress = vec![21];
    inv.links[1].filters_ingress = vec![22];
    let pins = inv.pinned.get_mut(&2).expect("pinned");
    pins.remove("tc");
    pins.remove("tags");
    assert!(findings(&inv).is_empty(), "{:?}", findings(&inv));
    // A foreign TCX program runs before every filter.
    inv.links[1].tcx_egress = vec![90];
    assert_eq!(
        findings(&inv)[0],
        (kind::FOREIGN_PROGRAM, strings(&["vweb1"]))
    );
    // Neither TCX nor a filter: not enforced.
    inv.links[1].tcx_egress = vec![];
    inv.links[1].filters_egress = vec![];
    assert_eq!(findings(&inv)[0], (kind::NOT_ENFORCED, strings(&["vweb1"])));
}

#[test]
fn an_isolator_program_other_than_the_pinned_one_is_stale() {
    let mut inv = clean();
    inv.links[1].xdp = Some(80);
    assert_eq!(
        findings(&inv)[0],
        (kind::STALE_PROGRAM, strings(&["vweb1"]))
    );
}

#[test]
fn the_judge_stands_in_for_a_taken_xdp_hook() {
    let mut inv = clean();
    inv.programs.insert(13, "isolator_ingres".into());
    inv.links[1].xdp = Some(90);
    inv.links[1].tcx_ingress = vec![13];
    let pins = inv.pinned.get_mut(&2).expect("pinned");
    pins.remove("xdp");
    pins.remove("tags");
    pins.insert("judge".into(), 13);
    // Judged at TC after the other program: reported as foreign, not as unenforced.
    assert_eq!(
        findings(&inv),
        vec![
            (kind::FOREIGN_PROGRAM, strings(&["vweb1"])),
            (kind::SHARED_L2_UNENFORCED, strings(&["br0", "vweb1"])),
        ]
    );
}

#[test]
fn an_unmanaged_port_on_a_tenant_bridge_is_reported_unless_declared() {
    let mut inv = clean();
    inv.links.push(LinkDetails {
        name: "stray".into(),
        ifindex: 7,
        kind: "veth".into(),
        master: Some(1),
        ..Default::default()
    });
    assert_eq!(
        findings(&inv),
        vec![
            (kind::UNMANAGED_PORT, strings(&["stray", "br0"])),
            (kind::SHARED_L2_UNENFORCED, strings(&["br0", "stray"])),
        ]
    );
    let infra = [InterfacePattern::new("stray").expect("valid")];
    let declared = compare(&policy(), &inv, &infra).expect("compiles");
    assert!(
        declared.iter().all(|f| f.severity == Severity::Warning),
        "{declared:#?}"
    );
    // A segment's uplink is declared too.
    inv.links[3].name = "vx-db".into();
    inv.links[3].kind = "vxlan".into();
    inv.links[3].vni = Some(42);
    assert!(findings(&inv).is_empty());
}

#[test]
fn a_port_on_a_bridge_without_tenant_vifs_is_not_ours() {
    let mut inv = clean();
    inv.links.push(LinkDetails {
        name: "br1".into(),
        ifindex: 8,
        kind: "bridge".into(),
        ..Default::default()
    });
    inv.links.push(LinkDetails {
        name: "eth1".into(),
        ifindex: 9,
        master: Some(8),
        ..Default::default()
    });
    assert!(findings(&inv).is_empty());
}

#[test]
fn a_vlan_device_on_a_vif_is_an_unmanaged_port() {
    let mut inv = clean();
    inv.links.push(LinkDetails {
        name: "web1.5".into(),
        ifindex: 9,
        kind: "vlan".into(),
        vlan_id: Some(5),
        link: Some(2),
        ..Default::default()
    });
    assert_eq!(
        findings(&inv),
        vec![(kind::UNMANAGED_PORT, strings(&["web1.5", "vweb1"]))]
    );
}

/// The map comparison finds, for random tables with entries missing, changed, extra and
/// keyed twice, the lines that indexing both sides by key finds (the comparison before
/// the walk over sorted entries), in the same order.
#[test]
fn the_map_comparison_finds_what_indexing_both_sides_finds() {
    use isolator_common::RuleKey;
    fn oracle(expected: &[(RuleKey, u32)], live: &[(RuleKey, u32)]) -> Vec<String> {
        let bytes = |k: &RuleKey| [k.generation.to_ne_bytes(), k.index.to_ne_bytes()].concat();
        let index = |entries: &[(RuleKey, u32)]| -> BTreeMap<Vec<u8>, (RuleKey, u32)> {
            entries.iter().map(|(k, v)| (bytes(k), (*k, *v))).collect()
        };
        let (expected, live) = (index(expected), index(live));
        let mut lines = Vec::new();
        for (b, (key, value)) in &expected {
            match live.get(b) {
                None => lines.push(format!("missing {key:?} => {value:?}")),
                Some((_, got)) if got != value => {
                    lines.push(format!("{key:?}: expected {value:?}, found {got:?}"))
                }
                Some(_) => {}
            }
        }
        for (b, (key, value)) in &live {
            if !expected.contains_key(b) {
                lines.push(format!("extra {key:?} => {value:?}"));
            }
        }
        lines
    }
    let mut rng = crate::testing::Rng(0xd1f7);
    for round in 0..400 {
        let key = |rng: &mut crate::testing::Rng| RuleKey {
            generation: (rng.next() % 2) as u32,
            index: (rng.next() % 300) as u32,
        };
        let count = (rng.next() % 40) as usize;
        let expected: Vec<(RuleKey, u32)> = (0..count)
            .map(|_| (key(&mut rng), (rng.next() % 3) as u32))
            .collect();
        let mut live = Vec::new();
        for &(k, v) in &expected {
            match rng.next() % 6 {
                0 => {}
                1 => live.push((k, v + 1)),
                2 => {
                    live.push((k, v));
                    live.push((key(&mut rng), v));
                }
                _ => live.push((k, v)),
            }
        }
        // Reversed: the kernel lists entries in its own order.
        live.reverse();
        let mut found = Vec::new();
        diff_table("RULES", &expected, &live, &mut found);
        let want = oracle(&expected, &live);
        match found.first() {
            None => assert!(want.is_empty(), "round {round}: {want:?}"),
            Some(finding) => {
                assert_eq!(found.len(), 1);
                let shown: Vec<&str> = finding.detail.lines().skip(1).map(str::trim).collect();
                let expected_shown: Vec<String> =
                    want.iter().take(MAP_DRIFT_SHOWN).cloned().collect();
                assert_eq!(
                    shown.len().min(MAP_DRIFT_SHOWN),
                    expected_shown.len(),
                    "round {round}"
                );
                assert_eq!(
                    &shown[..expected_shown.len()],
                    &expected_shown[..],
                    "round {round}"
                );
                assert!(
                    finding.detail.starts_with(&format!("{} entr", want.len())),
                    "round {round}: {}",
                    finding.detail
                );
            }
        }
    }
}

#[test]
fn map_drift_names_the_map_and_the_entries() {
    let policy = policy();
    let plan = Plan::new(&policy, clean().host_view()).expect("compiles");
    let expected = crate::encode::encode(&plan, 1);
    let mut live = expected.clone();
    assert!(compare_maps(&expected, &live).is_empty());
    // The epoch (when the daemon swapped) is not compared.
    live.settings[0].1.epoch = 12345;
    assert!(compare_maps(&expected, &live).is_empty());
    live.vifs[0].1.segment ^= 1;
    live.gateways.push((
        isolator_common::GatewayKey {
            generation: 1,
            segment: 0,
            addr: [0; 16],
        },
        isolator_common::RuleSet::default(),
    ));
    let drift = compare_maps(&expected, &live);
    let maps: Vec<_> = drift.iter().map(|f| f.objects[0].as_str()).collect();
    assert_eq!(maps, ["GATEWAYS", "VIFS"]);
    assert!(drift[0].detail.contains("extra"), "{}", drift[0].detail);
    assert!(drift[1].detail.contains("expected"), "{}", drift[1].detail);
}
