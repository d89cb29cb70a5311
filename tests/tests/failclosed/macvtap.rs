//! Point 4: a macvtap (or macvlan, ipvlan, ipvtap) a segment names is not judged in the
//! wrong direction. On a macvtap what the VM writes crosses the device's transmit path and
//! what it receives crosses (generic) XDP, the reverse of a tap or veth; the daemon reads
//! the link kind and quarantines such a link: programs attached, everything dropped both
//! ways (`unknown_interface`), `/healthz` 503 naming it and its kind,
//! `isolator_interfaces_refused{device,reason="unsupported_kind"}` 1.
//!
//! The lab: web1 and web2 (veth VMs) and `vacme-webm`, a macvtap on the veth `xmvlow`
//! whose peer `xmvport` is a port of the bridge; the test is the macvtap's VM: it writes
//! frames to the macvtap's character device and reads what the VM would receive. All in
//! acme/web, whose pattern `vacme-web*` names the macvtap too. Before the daemon starts,
//! the test checks that its macvtap VM can talk to web1 both ways: afterwards, nothing
//! that does not arrive was lost to the lab.

use std::time::Duration;

use isolator_tests::failclosed_lab::{
    FrameSender, Macvtap, Watched, await_health, quiet_lab, udp_sinks,
};
use isolator_tests::frame::{ip_frame, parse_mac, udp};
use isolator_tests::metrics::{DROP_PACKETS, INTERFACES_REFUSED};
use isolator_tests::{Series, Vm};

use super::{Problems, captured, carrying, expect_exactly, settle, udp_frame};

const POLICY: &str = r#"version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24]
"#;

const MACVTAP: &str = "vacme-webm";
const MACVTAP_MAC: &str = "02:15:0a:00:00:09";
const MACVTAP_IP: &str = "10.1.1.9";

/// A frame the macvtap's VM sends to `to` (UDP port 9, `marker` as payload).
fn from_macvtap(to: &Vm, marker: &str) -> Vec<u8> {
    ip_frame(
        parse_mac(MACVTAP_MAC).unwrap(),
        parse_mac(&to.mac).unwrap(),
        MACVTAP_IP.parse().unwrap(),
        to.v4(),
        udp(40000, 9),
        marker.as_bytes(),
    )
}

#[test]
fn a_macvtap_named_by_a_segment_is_quarantined_both_ways() {
    let (lab, vms) = quiet_lab(
        "fc-macvtap",
        &[
            ("web1", "vacme-web1", "10.1.1.2/24"),
            ("web2", "vacme-web2", "10.1.1.3/24"),
        ],
        &[],
    )
    .expect("lab");
    let (web1, web2) = (vms[0].clone(), vms[1].clone());
    let _sinks = udp_sinks(&[&web1, &web2], 9).expect("sinks");
    let tap = Macvtap::create(&lab, MACVTAP, MACVTAP_MAC, "xmvlow", "xmvport")
        .unwrap_or_else(|e| panic!("macvtap: {e:#}"));
    let to_tap =
        |marker: &str| udp_frame(&web1, MACVTAP_MAC, MACVTAP_IP.parse().unwrap(), 9, marker);
    let web1_sender = FrameSender::open(&web1.ns, "eth0").expect("sender");

    // Without isolator, the macvtap's VM and web1 talk both ways (this also teaches the
    // bridge where the macvtap's MAC is).
    let (_, frames) = captured(&[&web1.ns], || {
        tap.write(&from_macvtap(&web1, "pre-daemon tap -> web1"))
            .expect("write")
    });
    assert_eq!(
        carrying(&frames[0], "pre-daemon tap -> web1"),
        1,
        "lab check: before the daemon runs, a frame written to the macvtap reaches web1"
    );
    web1_sender
        .send(&to_tap("pre-daemon web1 -> tap"))
        .expect("send");
    let read = tap.read_for(Duration::from_millis(500)).expect("read");
    assert_eq!(
        carrying(&read, "pre-daemon web1 -> tap"),
        1,
        "lab check: before the daemon runs, a frame to the macvtap's MAC is readable from its \
         character device"
    );

    let fx = Watched::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    let mut bad = Problems::new();
    match await_health(
        fx.daemon(),
        503,
        &[MACVTAP, "macvtap"],
        Duration::from_secs(5),
    ) {
        Ok(_) => {}
        Err(e) => bad.push(format!(
            "/healthz must answer 503 naming {MACVTAP} and its kind: {e:#}"
        )),
    }
    let m = fx.scrape();
    let refused = Series::new(
        INTERFACES_REFUSED,
        &[("device", MACVTAP), ("reason", "unsupported_kind")],
    );
    match m.value(&refused) {
        Ok(v) => bad.check(v == 1.0, || format!("{refused} is {v}, expected 1")),
        Err(e) => bad.push(format!("{e:#}")),
    }
    for vm in [&web1, &web2] {
        let others = m.select(&Series::new(INTERFACES_REFUSED, &[("device", &vm.vif)]));
        bad.check(others.is_empty(), || {
            format!("{} is a veth and enforced, yet refused: {others:?}", vm.vif)
        });
    }
    let programs = fx.lab().vif_programs(MACVTAP).expect("programs");
    bad.check(
        ["xdp", "tcx ingress", "tcx egress"]
            .iter()
            .all(|p| programs.iter().any(|q| q == p)),
        || format!("the quarantined macvtap carries isolator's programs; it has {programs:?}"),
    );
    let watched = [web1.vif.as_str(), web2.vif.as_str(), MACVTAP];
    let quiet = || settle(&watched, Duration::from_millis(300), || fx.scrape());

    // What the macvtap's VM writes: its device's transmit path (TC egress), dropped.
    let frame = from_macvtap(&web1, "quarantined tap -> web1");
    let before = quiet();
    let (_, frames) = captured(&[&web1.ns, &web2.ns], || {
        tap.write(&frame).expect("write");
        expect_exactly(
            &mut bad,
            fx.daemon(),
            &watched,
            &before,
            &[(MACVTAP, "egress unknown_interface", 1.0)],
            "a frame the macvtap's VM sends",
        )
    });
    for (vm, got) in [&web1, &web2].iter().zip(&frames) {
        let n = carrying(got, "quarantined tap -> web1");
        bad.check(n == 0, || {
            format!(
                "a frame written to the quarantined macvtap reached {} ({n} copies)",
                vm.name
            )
        });
    }

    // What is sent to the macvtap's MAC: its receive path (generic XDP), dropped; web1's
    // own ingress passes it (a same-segment address).
    let frame = to_tap("web1 -> quarantined tap");
    let before = quiet();
    web1_sender.send(&frame).expect("send");
    expect_exactly(
        &mut bad,
        fx.daemon(),
        &watched,
        &before,
        &[
            (web1.vif.as_str(), "ingress pass", 1.0),
            (MACVTAP, "ingress unknown_interface", 1.0),
        ],
        "a frame to the macvtap's MAC",
    );
    let read = tap.read_for(Duration::from_millis(300)).expect("read");
    bad.check(read.is_empty(), || {
        format!(
            "the quarantined macvtap's VM could read {} frame(s) ({} of them the test's)",
            read.len(),
            carrying(&read, "web1 -> quarantined tap")
        )
    });

    // The twins: the veth VMs of the same segment talk to each other.
    for (from, to) in [(&web1, &web2), (&web2, &web1)] {
        let marker = format!("{} -> {}", from.name, to.name);
        let frame = udp_frame(from, &to.mac, to.v4(), 9, &marker);
        let sender = FrameSender::open(&from.ns, "eth0").expect("sender");
        let before = quiet();
        let (_, frames) = captured(&[&to.ns], || {
            sender.send(&frame).expect("send");
            expect_exactly(
                &mut bad,
                fx.daemon(),
                &watched,
                &before,
                &[
                    (from.vif.as_str(), "ingress pass", 1.0),
                    (to.vif.as_str(), "egress pass", 1.0),
                ],
                &marker,
            )
        });
        bad.check(carrying(&frames[0], &marker) == 1, || {
            format!("the twin {marker} (veth VMs of the same segment) did not arrive")
        });
    }
    // Nothing readable from the macvtap at any point.
    let late = tap.read_for(Duration::from_millis(100)).expect("read");
    bad.check(late.is_empty(), || {
        format!(
            "the quarantined macvtap's VM could read {} frame(s)",
            late.len()
        )
    });
    let m = fx.scrape();
    bad.finish(
        "a macvtap named by a segment",
        &format!(
            "policy:\n{POLICY}\n/healthz: {:?}\ndrops:\n{}",
            fx.health(),
            m.dump(DROP_PACKETS)
        ),
        &fx.log_tail(),
    );
}
