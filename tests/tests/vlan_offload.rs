//! The VLAN guard against tags carried in offload metadata. A VM whose kernel tags its
//! frames as a VLAN device does hands them to its veth untagged, with the tag in
//! `skb->vlan_tci` ([`isolator_tests::vlan_push`] does exactly that): the XDP program,
//! which reads the frame bytes, never sees such a tag. The TC program on the vif's
//! ingress judges it by the same rule as a tag in the bytes (one tag, with an id the
//! interface lists; never two) and moves the frame's count from what XDP counted it as
//! to `vlan`. Needs root and the daemon binary.
//!
//! VMs: a (lists no VLAN), b (lists VLAN 100), c (the target) in segment t/s; d (lists
//! no VLAN) in segment t/aud, in audit mode.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use isolator_tests::net::{Capture, parse_mac, send_frame};
use isolator_tests::netns::{in_netns, sysctl};
use isolator_tests::vlan_push::VlanPusher;
use isolator_tests::{Daemon, Lab, Metrics, TempDir, Vm, isolator_bin};

const METRICS_PORT: u16 = 9466;
const DROP_PKTS: &str = "isolator_drop_packets_total";
const PASS_PKTS: &str = "isolator_pass_packets_total";
const AUDIT_PKTS: &str = "isolator_audit_packets_total";
/// Datagrams per case.
const N: usize = 5;

struct Env {
    daemon: Daemon,
    lab: Lab,
    _tmp: TempDir,
}

/// What one case observed: copies that reached the target, and the changes of the
/// sender's ingress counters.
#[derive(Debug, PartialEq)]
struct Seen {
    arrived: usize,
    vlan_drops: f64,
    passes: f64,
    audits: f64,
}

impl Env {
    fn start(hint: &str) -> Env {
        let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
        let tmp = TempDir::new("isot-vlanoff").expect("temp dir");
        let mut lab = Lab::new(hint).expect("lab");
        for (name, addr) in [
            ("a", "10.7.0.2/24"),
            ("b", "10.7.0.3/24"),
            ("c", "10.7.0.4/24"),
            ("d", "10.7.1.2/24"),
        ] {
            lab.add_vm(name, &format!("vvl-{name}"), &[addr])
                .unwrap_or_else(|e| panic!("add VM {name}: {e:#}"));
        }
        // IPv4 only: no IPv6 multicast listener reports, sent at times of the kernel's
        // choosing, among the counted frames.
        for vm in lab.vms() {
            for key in ["all", "default", "eth0"] {
                sysctl(&vm.ns, &format!("net.ipv6.conf.{key}.disable_ipv6"), "1")
                    .unwrap_or_else(|e| panic!("disabling IPv6 in {}: {e:#}", vm.name));
            }
        }
        let d = lab.vm("d").ns.clone();
        lab.add_route(&d, "10.7.0.0/24 dev eth0")
            .expect("on-link route d -> s");
        let policy = r#"version: 1
tenants:
  - name: t
    segments:
      - name: s
        prefixes: ["10.7.0.0/24"]
        interfaces:
          - vvl-a
          - name: vvl-b
            vlans: [100]
          - vvl-c
      - name: aud
        mode: audit
        prefixes: ["10.7.1.0/24"]
        interfaces: [vvl-d]
"#;
        let config = tmp.write("policy.yaml", policy).expect("policy");
        let daemon = Daemon::start_healthy(&lab, &bin, &config, METRICS_PORT, tmp.path())
            .unwrap_or_else(|e| panic!("starting the daemon: {e:#}"));
        Env {
            daemon,
            lab,
            _tmp: tmp,
        }
    }

    fn vm(&self, name: &str) -> Vm {
        self.lab.vm(name).clone()
    }

    fn metrics(&self) -> Metrics {
        self.daemon
            .metrics()
            .unwrap_or_else(|e| panic!("/metrics: {e:#}\n{}", self.daemon.log()))
    }

    /// Runs `send` (which sends N frames carrying `marker` from `from` to `to`) and
    /// returns what arrived at `to`'s eth0 and how `from`'s ingress counters moved.
    fn observe(&self, from: &Vm, to: &Vm, marker: &str, send: impl FnOnce()) -> Seen {
        let cap = Capture::start(&to.ns, "eth0").expect("capture");
        let before = self.metrics();
        send();
        std::thread::sleep(Duration::from_millis(300));
        let frames = cap.stop().expect("capture");
        let after = self.metrics();
        let vif = [("device", from.vif.as_str()), ("direction", "ingress")];
        let vlan = [
            ("device", from.vif.as_str()),
            ("direction", "ingress"),
            ("reason", "vlan"),
        ];
        let delta = |name: &str, labels: &[(&str, &str)]| {
            after.sum(name, labels) - before.sum(name, labels)
        };
        Seen {
            arrived: frames
                .iter()
                .filter(|f| f.windows(marker.len()).any(|w| w == marker.as_bytes()))
                .count(),
            vlan_drops: delta(DROP_PKTS, &vlan),
            passes: delta(PASS_PKTS, &vif),
            audits: delta(AUDIT_PKTS, &vif),
        }
    }

    /// Permanent neighbour entries both ways: no ARP, whose timing would make `from`
    /// send frames of its own (tagged too, while a pusher is on) during a later case.
    fn no_arp(&self, from: &Vm, to: &Vm) {
        self.lab
            .static_neigh(from, to, to.v4())
            .expect("static neighbour");
        self.lab
            .static_neigh(to, from, from.v4())
            .expect("static neighbour");
    }

    /// N UDP datagrams from `from`'s stack to `to`.
    fn datagrams(&self, from: &Vm, to: &Vm, marker: &str) -> Seen {
        let dst = to.v4();
        self.no_arp(from, to);
        let bytes = marker.as_bytes().to_vec();
        self.observe(from, to, marker, || {
            in_netns(&from.ns, move || {
                let sock = UdpSocket::bind("0.0.0.0:0")?;
                for _ in 0..N {
                    sock.send_to(&bytes, SocketAddr::new(dst, 9))?;
                }
                Ok(())
            })
            .expect("send");
        })
    }

    /// N raw frames from `from` to `to` with an 802.1Q tag `vid` in the bytes.
    fn tagged_frames(&self, from: &Vm, to: &Vm, vid: u16, marker: &str) -> Seen {
        let frame = tagged_udp(from, to, vid, marker);
        self.no_arp(from, to);
        self.observe(from, to, marker, || {
            for _ in 0..N {
                send_frame(&from.ns, "eth0", &frame).expect("send frame");
            }
        })
    }
}

/// Ethernet / 802.1Q `vid` / IPv4 / UDP to port 9, carrying `marker`.
fn tagged_udp(from: &Vm, to: &Vm, vid: u16, marker: &str) -> Vec<u8> {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (from.v4(), to.v4()) else {
        unreachable!("IPv4 lab")
    };
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&9u16.to_be_bytes());
    udp.extend_from_slice(&((8 + marker.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(marker.as_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Vec::new();
    frame.extend_from_slice(&parse_mac(&to.mac).expect("mac"));
    frame.extend_from_slice(&parse_mac(&from.mac).expect("mac"));
    frame.extend_from_slice(&0x8100u16.to_be_bytes());
    frame.extend_from_slice(&vid.to_be_bytes());
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp);
    frame
}

fn seen(arrived: usize, vlan_drops: usize, passes: usize, audits: usize) -> Seen {
    Seen {
        arrived,
        vlan_drops: vlan_drops as f64,
        passes: passes as f64,
        audits: audits as f64,
    }
}

#[test]
fn tags_in_offload_metadata_are_judged_like_tags_in_the_frame() {
    let env = Env::start("vlanoff");
    let (a, b, c, d) = (env.vm("a"), env.vm("b"), env.vm("c"), env.vm("d"));
    let mut bad = Vec::new();
    let mut check = |what: &str, got: Seen, expected: Seen| {
        if got != expected {
            bad.push(format!(
                "{what}:\n  got      {got:?}\n  expected {expected:?}"
            ));
        }
    };

    // The legitimate twins first: untagged, and a tag in the bytes that b may use.
    check(
        "untagged from a",
        env.datagrams(&a, &c, "untagged-a"),
        seen(N, 0, N, 0),
    );
    check(
        "tag 100 in the bytes from b (listed)",
        env.tagged_frames(&b, &c, 100, "bytes-100-b"),
        seen(N, 0, N, 0),
    );

    {
        let _push = VlanPusher::attach(&a.ns, "eth0", 0x8100, 100).expect("VLAN push on a");
        check(
            "tag 100 in metadata from a (lists no VLAN)",
            env.datagrams(&a, &c, "meta-100-a"),
            seen(0, N, 0, 0),
        );
    }
    {
        let _push = VlanPusher::attach(&b.ns, "eth0", 0x8100, 100).expect("VLAN push on b");
        check(
            "tag 100 in metadata from b (listed)",
            env.datagrams(&b, &c, "meta-100-b"),
            seen(N, 0, N, 0),
        );
        check(
            "tag 100 in metadata over tag 100 in the bytes from b (stacked)",
            env.tagged_frames(&b, &c, 100, "stacked-b"),
            seen(0, N, 0, 0),
        );
    }
    {
        let _push = VlanPusher::attach(&b.ns, "eth0", 0x8100, 200).expect("VLAN push on b");
        check(
            "tag 200 in metadata from b (not listed)",
            env.datagrams(&b, &c, "meta-200-b"),
            seen(0, N, 0, 0),
        );
    }
    {
        let _push = VlanPusher::attach(&b.ns, "eth0", 0x88a8, 100).expect("VLAN push on b");
        check(
            "802.1ad tag 100 in metadata from b (one tag, listed id)",
            env.datagrams(&b, &c, "meta-ad-100-b"),
            seen(N, 0, N, 0),
        );
    }
    // In audit mode the XDP program passes d's cross-segment datagrams as audited (c's
    // egress, in an enforcing segment, then drops them); a tag in metadata is refused
    // all the same (vlan is never audited) and the audited count is taken back, so the
    // frame is counted once, as a vlan drop.
    check(
        "untagged from d (audit mode, another segment)",
        env.datagrams(&d, &c, "untagged-d"),
        seen(0, 0, 0, N),
    );
    {
        let _push = VlanPusher::attach(&d.ns, "eth0", 0x8100, 100).expect("VLAN push on d");
        check(
            "tag 100 in metadata from d (audit mode)",
            env.datagrams(&d, &c, "meta-100-d"),
            seen(0, N, 0, 0),
        );
    }
    assert!(
        bad.is_empty(),
        "VLAN tags in offload metadata:\n{}\ndaemon log:\n{}",
        bad.join("\n"),
        env.daemon.log()
    );
}
