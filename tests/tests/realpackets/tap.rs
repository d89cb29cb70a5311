//! Item 5: a tap vif, as hypervisors create them, not only veth. The tap is created in
//! the lab's host namespace with `ip tuntap`, and this process opens it through
//! `/dev/net/tun` and plays the VM: what it writes enters the host on the tap (XDP,
//! `ingress`), what the host transmits on the tap (TC egress) is what it reads.

use std::time::Duration;

use isolator_common::verdict;
use isolator_tests::failclosed_lab::{quiet_lab, udp_sinks};
use isolator_tests::frame::{addr, ip_frame, parse_mac, udp};
use isolator_tests::net::FrameSender;
use isolator_tests::tap::Tap;
use isolator_tests::{Dir, Env, Expect, Series};

use super::{neighbour, static_fdb, static_fdb_all, vm, watched};
use crate::common::ARRIVAL;
use crate::failclosed::{Problems, awaited, captured, carrying, expect_exactly, settle, udp_frame};

const POLICY: &str = r#"version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vacme-web*", "tapacme*"]
        prefixes: [10.1.1.0/24]
  - name: globex
    segments:
      - name: aud
        mode: audit
        interfaces: ["vglobex-aud*"]
        prefixes: [10.2.1.0/24]
"#;

const TAP: &str = "tapacme1";
const TAP_MAC: &str = "02:15:aa:00:00:09";
const TAP_IP: &str = "10.1.1.9";
const PORT: u16 = 9;

/// Item 5. The tap `tapacme1` (acme/web; its VM is this process, 10.1.1.9) next to web2
/// (acme/web, a veth) and aud1 (globex/aud, audit mode, a veth). isolator attaches its
/// three programs to the tap as to a veth. What the VM writes: a UDP frame to web2 arrives
/// (`ingress pass` at the tap, `egress pass` at web2), the same to aud1 drops at the tap's
/// XDP (`ingress cross_tenant`) and never reaches aud1. What it is sent: web2's frame is
/// read from the tap (`egress pass` at the tap); aud1's (its audit-mode segment lets it
/// leave, counted as audit) drops at the tap's TC egress (`egress cross_tenant`) and is
/// never read.
#[test]
fn a_tap_vif_is_judged_both_ways() {
    let (lab, vms) = quiet_lab(
        "rp-tap",
        &[
            ("web2", "vacme-web2", "10.1.1.3/24"),
            ("aud1", "vglobex-aud1", "10.2.1.2/24"),
        ],
        &[],
    )
    .unwrap_or_else(|e| panic!("harness: lab: {e:#}"));
    let tap = Tap::create(&lab, TAP, TAP_MAC).unwrap_or_else(|e| panic!("harness: {e:#}"));
    static_fdb_all(&lab, &vms);
    static_fdb(&lab, TAP_MAC, TAP);
    let (web2, aud1) = (vm(&vms, "web2"), vm(&vms, "aud1"));
    for v in [web2, aud1] {
        neighbour(&v.ns, TAP_IP, TAP_MAC);
    }
    let env = Env::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    let mut bad = Problems::new();
    let programs = env.lab().vif_programs(TAP).expect("harness: programs");
    bad.check(programs == ["xdp", "tcx ingress", "tcx egress"], || {
        format!("the tap carries isolator's three programs, once each: {programs:?}")
    });
    let _sinks = udp_sinks(&[web2, aud1], PORT).expect("harness: UDP sinks");
    let mut vifs = watched(&vms);
    vifs.push(TAP);
    let tap_mac = parse_mac(TAP_MAC).expect("MAC");
    let from_tap = |to: &isolator_tests::Vm, marker: &str| {
        ip_frame(
            tap_mac,
            parse_mac(&to.mac).expect("MAC"),
            addr(TAP_IP),
            to.v4(),
            udp(40000, PORT),
            marker.as_bytes(),
        )
    };
    // What the VM behind the tap writes.
    for (to, moves, arrives) in [
        (
            web2,
            vec![
                (TAP, "ingress pass", 1.0),
                (web2.vif.as_str(), "egress pass", 1.0),
            ],
            1,
        ),
        (aud1, vec![(TAP, "ingress cross_tenant", 1.0)], 0),
    ] {
        let what = format!("the tap's VM writes UDP to {}", to.name);
        let marker = format!("rp tap to {}", to.name);
        let before = settle(&vifs, Duration::from_millis(300), || env.scrape());
        let (_, frames) = captured(&[&to.ns], || {
            tap.write(&from_tap(to, &marker))
                .unwrap_or_else(|e| panic!("harness: {e:#}"));
            expect_exactly(&mut bad, env.daemon(), &vifs, &before, &moves, &what)
        });
        let arrived = carrying(&frames[0], &marker);
        bad.check(arrived == arrives, || {
            format!(
                "{what}: {arrives} copy expected at {}, {arrived} arrived",
                to.name
            )
        });
    }
    // What the host transmits to the VM behind the tap.
    for (from, moves, audited, arrives) in [
        (
            web2,
            vec![
                (web2.vif.as_str(), "ingress pass", 1.0),
                (TAP, "egress pass", 1.0),
            ],
            0.0,
            1,
        ),
        (aud1, vec![(TAP, "egress cross_tenant", 1.0)], 1.0, 0),
    ] {
        let what = format!("{} sends UDP to the tap's VM", from.name);
        let marker = format!("rp tap from {}", from.name);
        let sender = FrameSender::open(&from.ns, "eth0").expect("harness: sender");
        // Whatever an earlier case left unread.
        tap.read_for(Duration::from_millis(1))
            .expect("harness: read");
        let before = settle(&vifs, Duration::from_millis(300), || env.scrape());
        sender
            .send(&udp_frame(from, TAP_MAC, addr(TAP_IP), PORT, &marker))
            .unwrap_or_else(|e| panic!("harness: {e:#}"));
        expect_exactly(&mut bad, env.daemon(), &vifs, &before, &moves, &what);
        let audit = Series::audit(&aud1.vif, Dir::Ingress, verdict::CROSS_TENANT);
        awaited(
            &mut bad,
            env.daemon(),
            &before,
            &Expect::new().grows(audit, audited),
            &what,
        );
        let read = tap.read_for(ARRIVAL).expect("harness: read");
        let arrived = carrying(&read, &marker);
        bad.check(arrived == arrives, || {
            format!("{what}: {arrives} copy expected at the tap, {arrived} read")
        });
    }
    bad.finish("a tap vif", POLICY, &env.log_tail());
}
