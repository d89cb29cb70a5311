//! The documentation's examples: the complete one is valid, the error examples show
//! the current diagnostics, the README's example is valid.

use super::*;

const POLICY_DOC: &str = include_str!("../../../../docs/policy.md");

/// Fenced blocks of `doc` as (info string, content).
fn fenced_blocks(doc: &str) -> Vec<(&str, String)> {
    let mut blocks = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if let Some(info) = line.strip_prefix("```") {
            let mut content = String::new();
            for inner in lines.by_ref() {
                if inner.starts_with("```") {
                    break;
                }
                content.push_str(inner);
                content.push('\n');
            }
            blocks.push((info.trim(), content));
        }
    }
    blocks
}

#[test]
fn documented_example_is_valid() {
    let blocks = fenced_blocks(POLICY_DOC);
    let (_, example) = blocks
        .iter()
        .find(|(info, _)| *info == "yaml")
        .expect("docs/policy.md has a ```yaml block");
    let policy = parse(example, "docs/policy.md").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        policy.summary(),
        Summary {
            tenants: 2,
            segments: 4,
            interfaces: 7,
            prefixes: 8,
            exposed: 4,
            flows: 3,
            management: 3,
            gateways: 2,
            uplinks: 1,
        }
    );
    assert!(POLICY_DOC.contains(&policy.summary().to_string()));
    let has_v4 = |s: &Segment| s.prefixes.iter().any(|p| matches!(p, IpNet::V4(_)));
    let has_v6 = |s: &Segment| s.prefixes.iter().any(|p| matches!(p, IpNet::V6(_)));
    let segments: Vec<&Segment> = policy.tenants.iter().flat_map(|t| &t.segments).collect();
    assert!(segments.iter().all(|s| has_v4(s) && has_v6(s)));
    let interfaces = || segments.iter().flat_map(|s| &s.interfaces);
    assert!(interfaces().any(Interface::is_glob));
    assert!(interfaces().any(|p| !p.is_glob()));
    // An interface with its whole identity, whose entry takes precedence over a pattern
    // of its segment; and an interface without identity.
    let pinned = interfaces()
        .find(|i| i.mac.is_some())
        .expect("an interface with a `mac`");
    assert!(!pinned.addresses.is_empty() && pinned.vlans.len() > 1);
    assert!(pinned.addresses.iter().any(|a| matches!(a, IpNet::V4(_))));
    assert!(pinned.addresses.iter().any(|a| matches!(a, IpNet::V6(_))));
    let (_, owner) = policy.segment_for_interface(pinned.as_str()).unwrap();
    assert!(
        owner
            .interfaces
            .iter()
            .any(|i| i.is_glob() && i.matches(pinned.as_str()))
    );
    assert_eq!(owner.interface_for(pinned.as_str()), Some(pinned));
    assert!(interfaces().any(|i| *i == Interface::new(i.pattern.clone())));
    assert!(segments.iter().any(|s| s.allow_dhcp_server));
    assert!(segments.iter().any(|s| !s.allow_dhcp_server));
    assert!(segments.iter().any(|s| s.allow_router_advertisements));

    // The example shows every key of the format, and the documented defaults.
    for key in [
        "\nmode: ",
        "\nconnection_tracking:",
        "\nmanagement:",
        " services:",
        " flows:",
        " egress: ",
        " expose:",
        "        mode: ",
        " allow_router_advertisements: ",
        " allow_dhcp_server: ",
        "  - name: ",
        " mac: ",
        " addresses: ",
        " vlans: ",
        "\nvif_names: ",
        " gateways:",
        " uplinks: ",
    ] {
        assert!(
            example.contains(key),
            "the complete example does not use {key:?}"
        );
    }
    assert_eq!(policy.connection_tracking, ConnectionTracking::default());
    assert!(segments.iter().any(|s| s.mode == Mode::Audit));
    assert!(segments.iter().any(|s| s.mode == Mode::Enforce));
    assert!(segments.iter().any(|s| s.egress == Egress::Deny));
    assert!(segments.iter().any(|s| s.egress == Egress::Allow));
    let exposed = || segments.iter().flat_map(|s| &s.expose);
    assert!(exposed().any(|e| e.prefix.prefix_len() == e.prefix.max_prefix_len()));
    assert!(exposed().any(|e| e.prefix.prefix_len() < e.prefix.max_prefix_len()));
    assert!(exposed().any(|e| matches!(e.prefix, IpNet::V6(_))));
    assert!(exposed().any(|e| e.service.protocol == Protocol::Icmp));
    let flows = || {
        policy
            .tenants
            .iter()
            .flat_map(|t| t.flows.iter().map(move |f| (t, f)))
    };
    assert!(
        flows().any(|(t, f)| f.to.tenant != t.name),
        "a cross-tenant flow"
    );
    assert!(flows().any(|(t, f)| f.to.tenant == t.name));
    assert!(flows().any(|(_, f)| f.service.ports.is_some_and(|p| p.first < p.last)));
    assert!(policy.management.iter().any(|m| m.services.is_empty()));
    assert!(policy.management.iter().any(|m| !m.services.is_empty()));

    // The host's side: `vif_names` that cover segments' interfaces, a gateway in a
    // segment prefix and a link-local one, each with services, and an uplink.
    assert!(
        policy
            .vif_names
            .iter()
            .any(|v| interfaces().any(|i| v.overlaps(&i.pattern)))
    );
    let gateways = || segments.iter().flat_map(|s| &s.gateways);
    assert!(gateways().all(|g| !g.services.is_empty()));
    assert!(gateways().any(|g| g.address.is_ipv4()));
    assert!(gateways().any(|g| matches!(g.address, IpAddr::V6(a) if a.is_unicast_link_local())));
    assert!(segments.iter().any(|s| !s.uplinks.is_empty()));
}

/// Every later ```yaml block that is directly followed by a ```text block documents
/// the exact diagnostics for that file.
#[test]
fn documented_error_examples_are_current() {
    let blocks = fenced_blocks(POLICY_DOC);
    let mut checked = 0;
    for pair in blocks.windows(2) {
        let [(yaml_info, yaml), (text_info, expected)] = pair else {
            unreachable!()
        };
        if *yaml_info != "yaml" || *text_info != "text" {
            continue;
        }
        let actual = match parse(yaml, "policy.yaml") {
            Ok(_) => panic!("documented error example is valid:\n{yaml}"),
            Err(d) => d.to_string(),
        };
        assert_eq!(&actual, expected, "for the documented example:\n{yaml}");
        checked += 1;
    }
    assert!(
        checked >= 8,
        "only {checked} documented error examples found"
    );
}

#[test]
fn readme_example_is_valid() {
    let readme = include_str!("../../../../README.md");
    let start = readme
        .find("```yaml\n")
        .expect("the README has a yaml block")
        + 8;
    let end = start + readme[start..].find("```").expect("closed");
    // The block is indented under a list item.
    let text: String = readme[start..end]
        .lines()
        .map(|l| l.strip_prefix("   ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let policy = parse(&text, "README.md").unwrap_or_else(|d| panic!("{d}"));
    let summary = policy.summary();
    assert_eq!((summary.tenants, summary.segments), (1, 2));
    assert_eq!(summary.flows, 1);
}
