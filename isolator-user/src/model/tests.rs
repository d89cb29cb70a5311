//! The model on a few rows of docs/policy.md's example, by hand (the differential test
//! holds the kernel to the model; these hold the model to the documents).

use super::*;
use crate::compile::Link;

const POLICY: &str = r#"
version: 1
management:
  - prefix: 192.168.100.0/24
tenants:
  - name: acme
    segments:
      - name: web
        interfaces:
          - name: tap-web
            mac: "52:54:00:12:34:56"
            addresses: ["10.1.1.10"]
        prefixes: [10.1.1.0/24]
        expose: [{address: 10.1.1.10, protocol: tcp, ports: 443}]
        gateways: [{address: 10.1.1.1, services: [{protocol: udp, ports: 53}]}]
      - name: db
        egress: deny
        interfaces: [tap-db]
        prefixes: [10.1.2.0/24]
    flows: [{from: web, to: db, protocol: tcp, ports: 5432}]
"#;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

fn host() -> HostView {
    HostView {
        links: vec![
            Link::veth("tap-web", 2),
            Link::veth("tap-db", 3),
            Link::veth("eth0", 4),
        ],
        addresses: vec!["192.0.2.1".parse().unwrap()],
        ..HostView::default()
    }
}

/// An Ethernet/IPv4/TCP SYN.
fn tcp(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x30, 0x39]);
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

fn judge(vif: u32, direction: Direction, frame: &[u8]) -> String {
    let policy = crate::policy::parse(POLICY, "test.yaml").unwrap();
    verdict(&policy, &host(), vif, direction, frame).to_string()
}

#[test]
fn documented_rows() {
    let web = [10, 1, 1, 10];
    let db = [10, 1, 2, 20];
    let any_mac = [0x02, 0, 0, 0, 0, 9];
    let rows = [
        (
            "flow web->db",
            2,
            Direction::Ingress,
            tcp(MAC, web, db, 5432),
            "pass",
        ),
        (
            "not the flow's port",
            2,
            Direction::Ingress,
            tcp(MAC, web, db, 22),
            "drop cross_segment",
        ),
        (
            "spoofed MAC",
            2,
            Direction::Ingress,
            tcp(any_mac, web, db, 5432),
            "drop spoofed_mac",
        ),
        (
            "undeclared address",
            2,
            Direction::Ingress,
            tcp(MAC, [10, 1, 1, 11], db, 5432),
            "drop spoofed_ip",
        ),
        (
            "management",
            2,
            Direction::Ingress,
            tcp(MAC, web, [192, 168, 100, 1], 80),
            "drop management",
        ),
        (
            "gateway, no such service",
            2,
            Direction::Ingress,
            tcp(MAC, web, [10, 1, 1, 1], 53),
            "drop management",
        ),
        (
            "host address",
            2,
            Direction::Ingress,
            tcp(MAC, web, [192, 0, 2, 1], 22),
            "drop management",
        ),
        (
            "db to the outside",
            3,
            Direction::Ingress,
            tcp(any_mac, db, [8, 8, 8, 8], 443),
            "drop egress_denied",
        ),
        (
            "db may not open web",
            3,
            Direction::Ingress,
            tcp(any_mac, db, web, 443),
            "pass",
        ),
        (
            "outside to web's exposure",
            2,
            Direction::Egress { entered: 4 },
            tcp(any_mac, [8, 8, 8, 8], web, 443),
            "pass",
        ),
        (
            "outside to db",
            3,
            Direction::Egress { entered: 4 },
            tcp(any_mac, [8, 8, 8, 8], db, 5432),
            "drop not_exposed",
        ),
        (
            "web to db on the flow",
            3,
            Direction::Egress { entered: 2 },
            tcp(MAC, web, db, 5432),
            "pass",
        ),
        (
            "db to web, not exposed",
            2,
            Direction::Egress { entered: 3 },
            tcp(any_mac, db, web, 22),
            "drop cross_segment",
        ),
        (
            "an unclassified link",
            2,
            Direction::Egress { entered: 9 },
            tcp(any_mac, db, web, 443),
            "drop unknown_interface",
        ),
        (
            "no entry",
            4,
            Direction::Ingress,
            tcp(any_mac, db, web, 443),
            "drop no_policy",
        ),
        (
            "truncated",
            2,
            Direction::Ingress,
            tcp(MAC, web, db, 5432)[..30].to_vec(),
            "drop malformed",
        ),
    ];
    let wrong: Vec<String> = rows
        .iter()
        .filter_map(|(name, vif, dir, frame, expected)| {
            let got = judge(*vif, *dir, frame);
            (got != *expected).then(|| format!("{name}: {got}, expected {expected}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
