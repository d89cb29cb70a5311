//! Settings that parse: guard options, modes, connection tracking. The rules are tested
//! by the `settings-*` fixtures.

use super::*;

#[test]
fn guard_options_parse() {
    for key in ["allow_router_advertisements", "allow_dhcp_server"] {
        for (value, expected) in [("true", true), ("false", false), ("", false)] {
            let policy = ok(&segment_with(key, value));
            let web = &policy.tenants[0].segments[0];
            let actual = if key == "allow_dhcp_server" {
                web.allow_dhcp_server
            } else {
                web.allow_router_advertisements
            };
            assert_eq!(actual, expected, "{key}: {value}");
        }
    }
}

#[test]
fn segment_mode_defaults_to_the_global_mode() {
    let modes = |src: &str| -> Vec<Mode> {
        ok(src)
            .tenants
            .iter()
            .flat_map(|t| &t.segments)
            .map(|s| s.mode)
            .collect()
    };
    let segments = "tenants:\n  - name: acme\n    segments:\n      - name: a\n      - name: b\n        \
                    mode: audit\n      - name: c\n        mode: enforce\n";
    assert_eq!(
        modes(&format!("version: 1\n{segments}")),
        [Mode::Enforce, Mode::Audit, Mode::Enforce]
    );
    assert_eq!(
        modes(&format!("version: 1\nmode: enforce\n{segments}")),
        [Mode::Enforce, Mode::Audit, Mode::Enforce]
    );
    assert_eq!(
        modes(&format!("version: 1\nmode: audit\n{segments}")),
        [Mode::Audit, Mode::Audit, Mode::Enforce]
    );
}

#[test]
fn connection_tracking_limits_are_valid() {
    let policy = ok("
        version: 1
        tenants: []
        connection_tracking:
          tcp_idle_seconds: 86400
          icmp_idle_seconds: 1
        ");
    assert_eq!(
        policy.connection_tracking,
        ConnectionTracking {
            tcp_idle_seconds: 86400,
            tcp_closing_seconds: 10,
            udp_idle_seconds: 120,
            icmp_idle_seconds: 1,
        }
    );
}
