//! Valid files and the model they parse to; the model's helpers.

use super::*;
use std::sync::Arc;

#[test]
fn valid_file_parses_to_model() {
    let policy = ok(r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                interfaces: ["tap-acme-web-*", "veth-acme1"]
                prefixes: ["10.1.1.0/24", "fd00:1:1::/64"]
              - name: db_1
                interfaces:
                  - tap-acme-db?
                prefixes:
          - name: 9lives
        "#);
    let expected = Policy {
        tenants: vec![
            Arc::new(Tenant {
                name: "acme".into(),
                segments: vec![
                    Segment {
                        name: "web".into(),
                        interfaces: vec![iface("tap-acme-web-*"), iface("veth-acme1")],
                        prefixes: vec![net("10.1.1.0/24"), net("fd00:1:1::/64")],
                        mode: Mode::Enforce,
                        egress: Egress::Allow,
                        expose: vec![],
                        allow_router_advertisements: false,
                        allow_dhcp_server: false,
                        gateways: vec![],
                        uplinks: vec![],
                    },
                    Segment {
                        name: "db_1".into(),
                        interfaces: vec![iface("tap-acme-db?")],
                        prefixes: vec![],
                        mode: Mode::Enforce,
                        egress: Egress::Allow,
                        expose: vec![],
                        allow_router_advertisements: false,
                        allow_dhcp_server: false,
                        gateways: vec![],
                        uplinks: vec![],
                    },
                ],
                flows: vec![],
            }),
            Arc::new(Tenant {
                name: "9lives".into(),
                segments: vec![],
                flows: vec![],
            }),
        ],
        mode: Mode::Enforce,
        management: vec![],
        connection_tracking: ConnectionTracking::default(),
        vif_names: vec![],
    };
    assert_eq!(policy, expected);
    let summary = policy.summary();
    assert_eq!(
        summary,
        Summary {
            tenants: 2,
            segments: 2,
            interfaces: 3,
            prefixes: 2,
            exposed: 0,
            flows: 0,
            management: 0,
            gateways: 0,
            uplinks: 0,
        }
    );
    assert_eq!(
        summary.to_string(),
        "2 tenants, 2 segments, 3 interface patterns, 2 prefixes"
    );
    assert!(policy.tenants[0].segments[0].interfaces[0].is_glob());
    assert!(!policy.tenants[0].segments[0].interfaces[1].is_glob());
    assert_eq!(
        policy.tenants[0].segments[0].interfaces[0].as_str(),
        "tap-acme-web-*"
    );
}

#[test]
fn full_policy_parses_to_model() {
    let policy = ok(r#"
        version: 1
        mode: audit
        connection_tracking:
          udp_idle_seconds: 60
        management:
          - prefix: 192.168.100.0/24
          - prefix: "fd00:ff::/64"
            services:
              - protocol: tcp
                ports: 22
              - protocol: tcp
                ports: "6443-6444"
              - protocol: icmp
        tenants:
          - name: acme
            flows:
              - from: web
                to: db
                protocol: tcp
                ports: 5432
              - from: web
                to: globex/api
                protocol: udp
                ports: 8000-8080
              - from: db
                to: acme/web
                protocol: any
            segments:
              - name: web
                mode: enforce
                egress: deny
                interfaces: ["tap-acme-web-*"]
                prefixes: [10.1.1.0/24, "fd00:1:1::/64"]
                expose:
                  - address: 10.1.1.10
                    protocol: tcp
                    ports: 443
                  - address: 10.1.1.0/28
                    protocol: icmp
                  - address: "fd00:1:1::10"
                    protocol: any
              - name: db
                prefixes: [10.1.2.0/24]
          - name: globex
            segments:
              - name: api
                egress: allow
                prefixes: [10.2.0.0/24]
        "#);
    let expected = Policy {
        tenants: vec![
            Arc::new(Tenant {
                name: "acme".into(),
                segments: vec![
                    Segment {
                        name: "web".into(),
                        interfaces: vec![iface("tap-acme-web-*")],
                        prefixes: vec![net("10.1.1.0/24"), net("fd00:1:1::/64")],
                        mode: Mode::Enforce,
                        egress: Egress::Deny,
                        expose: vec![
                            Expose {
                                prefix: net("10.1.1.10/32"),
                                service: svc(Protocol::Tcp, Some((443, 443))),
                            },
                            Expose {
                                prefix: net("10.1.1.0/28"),
                                service: svc(Protocol::Icmp, None),
                            },
                            Expose {
                                prefix: net("fd00:1:1::10/128"),
                                service: Service::ANY,
                            },
                        ],
                        allow_router_advertisements: false,
                        allow_dhcp_server: false,
                        gateways: vec![],
                        uplinks: vec![],
                    },
                    Segment {
                        name: "db".into(),
                        interfaces: vec![],
                        prefixes: vec![net("10.1.2.0/24")],
                        mode: Mode::Audit,
                        egress: Egress::Allow,
                        expose: vec![],
                        allow_router_advertisements: false,
                        allow_dhcp_server: false,
                        gateways: vec![],
                        uplinks: vec![],
                    },
                ],
                flows: vec![
                    Flow {
                        from: "web".into(),
                        to: id("acme", "db"),
                        service: svc(Protocol::Tcp, Some((5432, 5432))),
                    },
                    Flow {
                        from: "web".into(),
                        to: id("globex", "api"),
                        service: svc(Protocol::Udp, Some((8000, 8080))),
                    },
                    Flow {
                        from: "db".into(),
                        to: id("acme", "web"),
                        service: svc(Protocol::Any, None),
                    },
                ],
            }),
            Arc::new(Tenant {
                name: "globex".into(),
                segments: vec![Segment {
                    name: "api".into(),
                    interfaces: vec![],
                    prefixes: vec![net("10.2.0.0/24")],
                    mode: Mode::Audit,
                    egress: Egress::Allow,
                    expose: vec![],
                    allow_router_advertisements: false,
                    allow_dhcp_server: false,
                    gateways: vec![],
                    uplinks: vec![],
                }],
                flows: vec![],
            }),
        ],
        mode: Mode::Audit,
        management: vec![
            Management {
                prefix: net("192.168.100.0/24"),
                services: vec![],
            },
            Management {
                prefix: net("fd00:ff::/64"),
                services: vec![
                    svc(Protocol::Tcp, Some((22, 22))),
                    svc(Protocol::Tcp, Some((6443, 6444))),
                    svc(Protocol::Icmp, None),
                ],
            },
        ],
        connection_tracking: ConnectionTracking {
            tcp_idle_seconds: 7440,
            tcp_closing_seconds: 10,
            udp_idle_seconds: 60,
            icmp_idle_seconds: 30,
        },
        vif_names: vec![],
    };
    assert_eq!(policy, expected);

    let summary = policy.summary();
    assert_eq!(
        summary,
        Summary {
            tenants: 2,
            segments: 3,
            interfaces: 1,
            prefixes: 4,
            exposed: 3,
            flows: 3,
            management: 2,
            gateways: 0,
            uplinks: 0,
        }
    );
    // The one-line summary does not change with the new elements.
    assert_eq!(
        summary.to_string(),
        "2 tenants, 3 segments, 1 interface pattern, 4 prefixes"
    );

    let (tenant, segment) = policy.segment(&policy.tenants[0].flows[1].to).unwrap();
    assert_eq!(
        (tenant.name.as_str(), segment.name.as_str()),
        ("globex", "api")
    );
    assert!(policy.segment(&id("globex", "web")).is_none());
    assert!(policy.segment(&id("mars", "api")).is_none());
}

#[test]
fn empty_tenant_list_is_valid() {
    for src in ["version: 1\ntenants: []\n", "version: 1\ntenants:\n"] {
        let policy = parse(src, FILE).unwrap();
        assert!(policy.tenants.is_empty());
        assert_eq!(
            policy.summary().to_string(),
            "0 tenants, 0 segments, 0 interface patterns, 0 prefixes"
        );
    }
}

#[test]
fn summary_uses_singular_for_one() {
    let s = Summary {
        tenants: 1,
        segments: 1,
        interfaces: 1,
        prefixes: 1,
        ..Summary::default()
    };
    assert_eq!(
        s.to_string(),
        "1 tenant, 1 segment, 1 interface pattern, 1 prefix"
    );
}

#[test]
fn segment_without_interfaces_or_prefixes_is_valid() {
    let policy = ok("
        version: 1
        tenants:
          - name: acme
            segments:
              - name: a
              - name: b
                interfaces: []
                prefixes: []
        ");
    assert_eq!(policy.summary().segments, 2);
}

#[test]
fn overlap_within_one_segment_is_allowed() {
    ok(r#"
        version: 1
        tenants:
          - name: acme
            segments:
              - name: web
                interfaces: ["tap-*", "tap-acme-*", "tap-acme-1"]
                prefixes: [10.0.0.0/8, 10.1.0.0/16, "fd00::/8", "fd00:1::/64"]
        "#);
}

#[test]
fn new_keys_have_defaults() {
    for src in [
        "version: 1\ntenants: [{name: acme, segments: [{name: web}]}]\n",
        // A key written without a value is the same as leaving it out.
        "version: 1\nmode:\nconnection_tracking:\nmanagement:\ntenants:\n  - name: acme\n    \
         flows:\n    segments:\n      - name: web\n        mode:\n        egress:\n        expose:\n",
        "version: 1\nconnection_tracking: {}\ntenants: [{name: acme, segments: [{name: web}]}]\n",
    ] {
        let policy = parse(src, FILE).unwrap_or_else(|d| panic!("{src}\n{d}"));
        assert_eq!(policy.mode, Mode::Enforce);
        assert!(policy.management.is_empty());
        assert_eq!(
            policy.connection_tracking,
            ConnectionTracking {
                tcp_idle_seconds: 7440,
                tcp_closing_seconds: 10,
                udp_idle_seconds: 120,
                icmp_idle_seconds: 30,
            }
        );
        let tenant = &policy.tenants[0];
        assert!(tenant.flows.is_empty());
        let segment = &tenant.segments[0];
        assert_eq!(segment.mode, Mode::Enforce);
        assert_eq!(segment.egress, Egress::Allow);
        assert!(segment.expose.is_empty());
    }
}

#[test]
fn model_helpers() {
    assert_eq!(PortRange::new(0, 1), None);
    assert_eq!(PortRange::new(2, 1), None);
    assert_eq!(PortRange::single(0), None);
    let range = PortRange::new(8000, 8080).unwrap();
    assert!(range.contains(8000) && range.contains(8080) && !range.contains(8081));
    assert_eq!(range.to_string(), "8000-8080");
    assert_eq!(PortRange::single(443).unwrap().to_string(), "443");
    assert_eq!(
        PortRange::new(1, 65535),
        Some(PortRange {
            first: 1,
            last: 65535
        })
    );

    assert_eq!(svc(Protocol::Tcp, Some((443, 443))).to_string(), "tcp 443");
    assert_eq!(svc(Protocol::Udp, Some((1, 2))).to_string(), "udp 1-2");
    assert_eq!(svc(Protocol::Tcp, None).to_string(), "tcp");
    assert_eq!(svc(Protocol::Icmp, None).to_string(), "icmp");
    assert_eq!(Service::ANY.to_string(), "any");
    assert!(Protocol::Tcp.has_ports() && Protocol::Udp.has_ports());
    assert!(!Protocol::Icmp.has_ports() && !Protocol::Any.has_ports());

    assert_eq!(id("acme", "web").to_string(), "acme/web");
    assert_eq!(Mode::default(), Mode::Enforce);
    assert_eq!(Mode::Audit.to_string(), "audit");
    assert_eq!(Egress::default(), Egress::Allow);
    assert_eq!(Egress::Deny.to_string(), "deny");
    assert_eq!(ConnectionTracking::default().tcp_idle_seconds, 7440);
    assert_eq!(TIMEOUT_MAX_SECONDS, 86_400);
}
