//! `isolator diff`: each kind of change, and policies that mean the same.

use super::*;
use crate::policy::diff::{EXIT_OTHER, EXIT_SAME, EXIT_WIDENED, diff};

/// acme/web and acme/db (flows under tenant acme), globex/api; `web`, `db` and `top`
/// are inserted under their segment and at the top level.
fn policy(top: &str, web: &str, db: &str, flows: &str) -> Policy {
    let src = format!(
        "version: 1\n{}tenants:\n  - name: acme\n    segments:\n      - name: web\n        \
         interfaces: [\"tap-web*\"]\n        prefixes: [10.1.1.0/24]\n{}      - name: db\n        \
         interfaces: [\"tap-db*\"]\n        prefixes: [10.1.2.0/24]\n{}    flows:\n{}  - name: globex\n    \
         segments:\n      - name: api\n        interfaces: [\"tap-api*\"]\n        prefixes: [10.2.0.0/24]\n",
        indent(top, 0),
        indent(web, 8),
        indent(db, 8),
        indent(flows, 6)
    );
    match parse(&src, FILE) {
        Ok(policy) => policy,
        Err(d) => panic!("{d}\n{src}"),
    }
}

/// The text lines of the diff from `old` to `new`.
fn lines(old: &Policy, new: &Policy) -> Vec<String> {
    diff(old, new)
        .changes
        .iter()
        .map(ToString::to_string)
        .collect()
}

const FLOW: &str = "- {from: web, to: db, protocol: tcp, ports: 5432}";

#[test]
fn identical_policies_have_no_diff() {
    let p = policy(
        "",
        "expose: [{address: 10.1.1.10, protocol: tcp, ports: 443}]",
        "",
        FLOW,
    );
    let d = diff(&p, &p.clone());
    assert!(d.is_empty(), "{d}");
    assert_eq!(d.exit_status(), EXIT_SAME);
}

#[test]
fn a_reordered_and_rewritten_policy_has_no_diff() {
    let old = policy(
        "",
        "
        expose:
          - {address: 10.1.1.10, protocol: tcp, ports: 443}
          - {address: 10.1.1.10, protocol: udp}
        ",
        "",
        "
        - {from: web, to: db, protocol: tcp, ports: \"5432-5433\"}
        - {from: web, to: globex/api, protocol: tcp, ports: 443}
        ",
    );
    // Entries in another order, one range written as two ports, `udp` as all its ports.
    let new = policy(
        "",
        "
        expose:
          - {address: 10.1.1.10/32, protocol: udp, ports: \"1-65535\"}
          - {address: 10.1.1.10, protocol: tcp, ports: 443}
        ",
        "",
        "
        - {from: web, to: globex/api, protocol: tcp, ports: 443}
        - {from: web, to: acme/db, protocol: tcp, ports: 5433}
        - {from: web, to: db, protocol: tcp, ports: 5432}
        ",
    );
    let d = diff(&old, &new);
    assert!(d.is_empty(), "{d}");
    assert_eq!(d.exit_status(), EXIT_SAME);
}

#[test]
fn flows_widen_and_narrow_by_the_ports_they_admit() {
    let old = policy("", "", "", FLOW);
    let wider = policy(
        "",
        "",
        "",
        "- {from: web, to: db, protocol: tcp, ports: \"5432-5434\"}",
    );
    assert_eq!(
        lines(&old, &wider),
        ["+ flow acme/web -> acme/db: tcp 5433-5434"]
    );
    assert_eq!(diff(&old, &wider).exit_status(), EXIT_WIDENED);
    assert_eq!(
        lines(&wider, &old),
        ["- flow acme/web -> acme/db: tcp 5433-5434"]
    );
    assert_eq!(diff(&wider, &old).exit_status(), EXIT_OTHER);
    let reversed = policy(
        "",
        "",
        "",
        "- {from: db, to: web, protocol: tcp, ports: 5432}",
    );
    assert_eq!(
        lines(&old, &reversed),
        [
            "+ flow acme/db -> acme/web: tcp 5432",
            "- flow acme/web -> acme/db: tcp 5432"
        ]
    );
}

#[test]
fn exposed_endpoints_compare_through_the_prefixes_that_contain_them() {
    let one = policy(
        "",
        "expose: [{address: 10.1.1.10, protocol: tcp, ports: 443}]",
        "",
        "",
    );
    let block = policy(
        "",
        "expose: [{address: 10.1.1.0/28, protocol: tcp, ports: 443}]",
        "",
        "",
    );
    assert_eq!(
        lines(&one, &block),
        ["+ exposed acme/web 10.1.1.0/28: tcp 443"]
    );
    // From a /28 to one of its addresses: only narrowed.
    assert_eq!(
        lines(&block, &one),
        ["- exposed acme/web 10.1.1.0/28: tcp 443"]
    );
    assert_eq!(diff(&block, &one).exit_status(), EXIT_OTHER);
    let none = policy("", "", "", "");
    assert_eq!(
        lines(&none, &one),
        ["+ exposed acme/web 10.1.1.10: tcp 443"]
    );
}

#[test]
fn egress_mode_and_guards() {
    let old = policy("", "", "", "");
    let new = policy(
        "",
        "
        egress: deny
        ",
        "
        mode: audit
        allow_dhcp_server: true
        ",
        "",
    );
    assert_eq!(
        lines(&old, &new),
        [
            "+ mode acme/db: enforce -> audit (what the policy forbids is only counted)",
            "+ guard acme/db: allow_dhcp_server: false -> true",
            "- egress acme/web: allow -> deny",
        ]
    );
    assert_eq!(diff(&old, &new).exit_status(), EXIT_WIDENED);
    assert_eq!(
        lines(&new, &old),
        [
            "- mode acme/db: audit -> enforce",
            "- guard acme/db: allow_dhcp_server: true -> false",
            "+ egress acme/web: deny -> allow",
        ]
    );
}

#[test]
fn management_protection_and_who_reaches_it() {
    let protected = |services: &str| {
        policy(
            &format!("management:\n  - prefix: 172.16.0.10/32\n{services}"),
            "",
            "egress: deny",
            "",
        )
    };
    let all = protected("");
    let ssh = protected("    services: [{protocol: tcp, ports: 22}]\n");
    let d = lines(&all, &ssh);
    assert_eq!(
        d[0],
        "+ management 172.16.0.10/32: no longer protects tcp 1-21, tcp 23-65535, udp, icmp, other protocols"
    );
    assert_eq!(
        d[1],
        "+ management-reach 172.16.0.10/32: tcp 1-21, tcp 23-65535, udp, icmp, other protocols now reachable from acme/web, globex/api"
    );
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(diff(&all, &ssh).exit_status(), EXIT_WIDENED);
    // Removing the prefix altogether opens everything of it.
    let none = policy("", "", "egress: deny", "");
    assert!(
        lines(&all, &none)[0].starts_with("+ management 172.16.0.10/32: no longer protects any")
    );
    assert_eq!(
        lines(&none, &all)[0],
        "- management 172.16.0.10/32: now protects any"
    );
    assert_eq!(diff(&none, &all).exit_status(), EXIT_OTHER);
}

#[test]
fn interfaces_added_removed_moved_and_their_identity() {
    let old = policy("", "", "", "");
    let mut moved = old.clone();
    let entry = std::sync::Arc::make_mut(&mut moved.tenants[0]).segments[0]
        .interfaces
        .remove(0);
    std::sync::Arc::make_mut(&mut moved.tenants[0]).segments[1]
        .interfaces
        .push(entry);
    assert_eq!(
        lines(&old, &moved),
        ["+ interface \"tap-web*\": moved from acme/web to acme/db"]
    );
    // Identities are built by hand: the YAML helper already lists `interfaces`.
    let mut pinned = old.clone();
    let mut lb = Interface::new(pat("tap-web-lb"));
    std::sync::Arc::make_mut(&mut pinned.tenants[0]).segments[0]
        .interfaces
        .push(lb.clone());
    assert_eq!(
        lines(&old, &pinned),
        ["+ interface \"tap-web-lb\": added to acme/web"]
    );
    assert_eq!(
        lines(&pinned, &old),
        ["- interface \"tap-web-lb\": removed from acme/web"]
    );
    let mut narrowed = old.clone();
    lb.mac = Some(MacAddr([0x52, 0x54, 0, 0, 0, 1]));
    lb.addresses = vec![net("10.1.1.10/32")];
    lb.vlans = vec![100];
    std::sync::Arc::make_mut(&mut narrowed.tenants[0]).segments[0]
        .interfaces
        .push(lb);
    assert_eq!(
        lines(&pinned, &narrowed),
        [
            "- interface \"tap-web-lb\": MAC pinned to 52:54:00:00:00:01",
            "- interface \"tap-web-lb\": may send only from 10.1.1.10",
            "+ interface \"tap-web-lb\": may tag VLAN 100",
        ]
    );
}

#[test]
fn segments_prefixes_gateways_uplinks_vif_names_and_timeouts() {
    let old = policy("vif_names: [\"tap*\"]\n", "", "", "");
    let mut new = policy(
        "connection_tracking: {udp_idle_seconds: 60}\n",
        "
        gateways: [{address: 10.1.1.1, services: [{protocol: udp, ports: 53}]}]
        uplinks: [vxlan100]
        ",
        "",
        "",
    );
    std::sync::Arc::make_mut(&mut new.tenants[0]).segments[0]
        .prefixes
        .push(net("10.1.3.0/24"));
    let d = lines(&old, &new);
    let mut expected = vec![
        "~ prefix acme/web: added 10.1.3.0/24",
        "+ gateway acme/web 10.1.1.1: udp 53",
        "+ uplink acme/web: \"vxlan100\" trusted for the segment's source addresses",
        "+ vif-names \"tap*\": links it names that no segment lists are no longer quarantined",
        "~ connection-tracking udp_idle_seconds: 120 -> 60",
    ];
    assert_eq!(d, expected);
    // A segment added: said so, and its egress is new.
    let mut grown = old.clone();
    let mut segment = grown.tenants[1].segments[0].clone();
    segment.name = "batch".into();
    segment.interfaces.clear();
    segment.prefixes = vec![net("10.2.1.0/24")];
    std::sync::Arc::make_mut(&mut grown.tenants[1])
        .segments
        .push(segment);
    expected = vec![
        "~ segment globex/batch: added",
        "+ egress globex/batch: (no segment) -> allow",
        "~ prefix globex/batch: added 10.2.1.0/24",
    ];
    assert_eq!(lines(&old, &grown), expected);
}

#[test]
fn a_long_diff_is_bounded_for_the_log() {
    let old = policy("", "", "", "");
    let flows: String = (1..=30)
        .map(|n| format!("- {{from: web, to: db, protocol: tcp, ports: {}}}\n", 2 * n))
        .collect();
    let new = policy("", "", "", &flows);
    let d = diff(&old, &new);
    assert_eq!(d.changes.len(), 1, "one pair, one line: {d}");
    let many = policy("", "", "", &flows.replace("to: db", "to: globex/api"));
    let both = diff(&new, &many);
    assert_eq!(both.changes.len(), 2);
    let lines = both.bounded_lines(1);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], both.changes[0].to_string());
    assert_eq!(
        lines[1],
        "… 1 more change(s) (`isolator diff` shows every one)"
    );
    assert_eq!(both.bounded_lines(5).len(), 2);
}

/// The diff of the tenants that differ is the diff of the whole policies: every pair of a
/// set of variants (a tenant changed, added, removed or renamed, an interface moved to
/// another tenant, egress opened, management changed) gives the same lines both ways.
#[test]
fn comparing_only_the_tenants_that_differ_changes_nothing() {
    use crate::policy::diff::diff_of;
    use crate::policy::synthetic::{Shape, generate};
    let cloud = generate(&Shape::cloud(12));
    let edits: [(&str, &str); 6] = [
        ("", ""),
        ("\"10.0.0.16/28\"", "\"10.0.0.16/28\", \"10.200.0.0/28\""),
        ("egress: deny", "egress: allow"),
        ("  - name: t1\n", "  - name: t1renamed\n"),
        ("- {from: s0, to: s1,", "- {from: s1, to: s0,"),
        ("\"v3-*\"", "\"v3-*\", \"moved*\""),
    ];
    let mut variants: Vec<Policy> = Vec::new();
    for (from, to) in edits {
        let text = if from.is_empty() {
            cloud.clone()
        } else {
            cloud.replacen(from, to, 1)
        };
        match parse(&text, FILE) {
            Ok(p) => variants.push(p),
            // An edit the generator's text does not allow: left out, but most must work.
            Err(_) => continue,
        }
    }
    assert!(variants.len() >= 4, "{} variants", variants.len());
    // A tenant removed, and the management prefixes changed.
    let mut fewer = variants[0].clone();
    fewer.tenants.remove(2);
    variants.push(fewer);
    let mut management = variants[0].clone();
    management.management.pop();
    variants.push(management);
    variants.push(policy("", "", "", FLOW));
    let mut differing = 0;
    for old in &variants {
        for new in &variants {
            let fast = diff(old, new);
            assert_eq!(fast, diff_of(old, new, old, new), "{fast}");
            differing += usize::from(!fast.changes.is_empty());
        }
    }
    assert!(differing > 20, "{differing} pairs differ");
}
