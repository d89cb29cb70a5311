//! Point 6a and 6c: interfaces the daemon does not enforce as a segment's pass nothing.
//!
//! - An interface named like the hypervisor's VM interfaces (`vif_names`) that no
//!   segment classifies is attached and drops everything both ways
//!   (`unknown_interface`), `/healthz` answers 503 naming it, and
//!   `isolator_interfaces_refused{device,reason="unclassified"}` is 1, until a reload
//!   classifies it: then it is an ordinary vif of its segment.
//! - A vif created while the daemon runs is unknown until the daemon has classified it:
//!   frames from it are dropped at every VM's egress (`unknown_interface`) meanwhile, so
//!   a VM that sends from the first moment its interface exists reaches no other tenant,
//!   ever, and reaches its own segment once classified.

use std::time::Duration;

use isolator_tests::failclosed_lab::{
    LateNetns, Stream, Watched, add_late_vif, await_attached, await_health, quiet_lab, udp_sinks,
};
use isolator_tests::frame::{ip_frame, parse_mac, udp};
use isolator_tests::metrics::{DROP_PACKETS, INTERFACES_REFUSED};
use isolator_tests::{Env, Series, Vm};

use super::{Problems, captured, carrying, changes, expect_exactly, settle, udp_frame};

fn policy(web_interfaces: &str) -> String {
    format!(
        r#"version: 1
vif_names: ["vacme-*", "vglobex-*"]
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: [{web_interfaces}]
        prefixes: [10.1.1.0/24]
  - name: globex
    segments:
      - name: app
        interfaces: ["vglobex-app*"]
        prefixes: [10.2.1.0/24]
"#
    )
}

/// 6a: `vacme-lost1` matches `vif_names` (`vacme-*`) but no segment's interfaces: it is
/// quarantined. Frames from it (to its segment-to-be and to another tenant) and to it
/// drop as `unknown_interface`; its neighbours of acme/web talk to each other (the twin).
/// A SIGHUP reload that lists it in acme/web makes it a vif like the others: `/healthz`
/// 200, the refused series gone, traffic within the segment passes both ways and to
/// another tenant is `cross_tenant`.
#[test]
fn an_unclassified_vif_passes_nothing_until_a_reload_classifies_it() {
    let (lab, vms) = quiet_lab(
        "fc-unclassified",
        &[
            ("web1", "vacme-web1", "10.1.1.2/24"),
            ("web2", "vacme-web2", "10.1.1.3/24"),
            ("lost", "vacme-lost1", "10.1.1.7/24"),
            ("app1", "vglobex-app1", "10.2.1.2/24"),
        ],
        &[],
    )
    .expect("lab");
    let (web1, web2, lost, app1) = (&vms[0], &vms[1], &vms[2], &vms[3]);
    let _sinks = udp_sinks(&[web1, web2, lost, app1], 9).expect("sinks");
    let before_reload = policy(r#""vacme-web*""#);
    let fx = Watched::start(lab, &before_reload).unwrap_or_else(|e| panic!("{e:#}"));
    let mut bad = Problems::new();
    let watched: Vec<&str> = vms.iter().map(|v| v.vif.as_str()).collect();
    let quiet = || settle(&watched, Duration::from_millis(300), || fx.scrape());
    let refused = Series::new(
        INTERFACES_REFUSED,
        &[("device", &lost.vif), ("reason", "unclassified")],
    );

    if let Err(e) = await_health(fx.daemon(), 503, &[&lost.vif], Duration::from_secs(5)) {
        bad.push(format!(
            "/healthz must answer 503 naming {}: {e:#}",
            lost.vif
        ));
    }
    match fx.scrape().value(&refused) {
        Ok(v) => bad.check(v == 1.0, || format!("{refused} is {v}, expected 1")),
        Err(e) => bad.push(format!("{e:#}")),
    }
    let programs = fx.lab().vif_programs(&lost.vif).expect("programs");
    bad.check(
        ["xdp", "tcx ingress", "tcx egress"]
            .iter()
            .all(|p| programs.iter().any(|q| q == p)),
        || format!("the quarantined vif carries isolator's programs; it has {programs:?}"),
    );

    // One frame, what must change, who must get it.
    let shoot = |what: &str,
                 from: &Vm,
                 to: &Vm,
                 moves: &[(&str, &str, f64)],
                 arrives: bool,
                 bad: &mut Problems| {
        let marker = format!("{what}: {} -> {}", from.name, to.name);
        let frame = udp_frame(from, &to.mac, to.v4(), 9, &marker);
        let before = quiet();
        let (_, frames) = captured(&[&to.ns], || {
            isolator_tests::net::send_frame(&from.ns, "eth0", &frame).expect("send");
            expect_exactly(bad, fx.daemon(), &watched, &before, moves, &marker)
        });
        let n = carrying(&frames[0], &marker);
        bad.check(n == usize::from(arrives), || {
            format!(
                "[{marker}] expected {} at {}, {n} arrived",
                if arrives { "the frame" } else { "nothing" },
                to.name
            )
        });
    };
    let (w1, w2, lo) = (web1.vif.as_str(), web2.vif.as_str(), lost.vif.as_str());
    shoot(
        "unclassified",
        lost,
        web1,
        &[(lo, "ingress unknown_interface", 1.0)],
        false,
        &mut bad,
    );
    shoot(
        "unclassified",
        lost,
        app1,
        &[(lo, "ingress unknown_interface", 1.0)],
        false,
        &mut bad,
    );
    shoot(
        "unclassified",
        web1,
        lost,
        &[
            (w1, "ingress pass", 1.0),
            (lo, "egress unknown_interface", 1.0),
        ],
        false,
        &mut bad,
    );
    shoot(
        "twin",
        web2,
        web1,
        &[(w2, "ingress pass", 1.0), (w1, "egress pass", 1.0)],
        true,
        &mut bad,
    );

    // The reload that classifies it.
    let after_reload = policy(r#""vacme-web*", vacme-lost1"#);
    if let Err(e) = fx.reload(&after_reload, true) {
        bad.push(format!("the reload must succeed: {e:#}"));
    }
    if let Err(e) = await_health(fx.daemon(), 200, &[], Duration::from_secs(5)) {
        bad.push(format!("after the reload, /healthz must answer 200: {e:#}"));
    }
    let m = fx.scrape();
    let left = m.select(&Series::new(INTERFACES_REFUSED, &[("device", lo)]));
    bad.check(left.is_empty(), || {
        format!("after the reload, {lo} is still reported refused: {left:?}")
    });
    match m.value(&Series::interfaces("acme", "web")) {
        Ok(v) => bad.check(v == 3.0, || {
            format!("after the reload acme/web has 3 interfaces, the gauge says {v}")
        }),
        Err(e) => bad.push(format!("{e:#}")),
    }
    shoot(
        "classified",
        lost,
        web1,
        &[(lo, "ingress pass", 1.0), (w1, "egress pass", 1.0)],
        true,
        &mut bad,
    );
    shoot(
        "classified",
        web1,
        lost,
        &[(w1, "ingress pass", 1.0), (lo, "egress pass", 1.0)],
        true,
        &mut bad,
    );
    shoot(
        "classified",
        lost,
        app1,
        &[(lo, "ingress cross_tenant", 1.0)],
        false,
        &mut bad,
    );
    bad.finish(
        "an unclassified vif",
        &format!(
            "policy before the reload:\n{before_reload}\npolicy after:\n{after_reload}\n\
             /healthz now: {:?}\ndrops now:\n{}",
            fx.health(),
            fx.scrape().dump(DROP_PACKETS)
        ),
        &fx.log_tail(),
    );
}

const PLAIN_POLICY: &str = r#"version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24]
  - name: globex
    segments:
      - name: app
        interfaces: ["vglobex-app*"]
        prefixes: [10.2.1.0/24]
"#;

/// The new VM's MAC and address (in acme/web).
const LATE_MAC: &str = "02:15:0b:00:00:09";
const LATE_IP: &str = "10.1.1.9";
/// An address of globex/app, which the new VM claims in some of its frames.
const SPOOFED_IP: &str = "10.2.1.66";
const LATE_VIF: &str = "vacme-web9";

/// 6c: a VM whose vif is created while the daemon runs sends, from the first moment its
/// interface is up, one frame every 20 µs, in turn: to another tenant's VM (app1), to a VM
/// of its own segment (web1), and to app1 claiming an address of app1's own segment. Not
/// one frame ever reaches app1 (nor is any passed to it): the daemon guards the vif the
/// moment it is announced (its programs attached with no entry: `no_policy` at its
/// ingress) and, should a frame come before that, the receivers' egress drops it
/// (`unknown_interface`); once classified, app1's egress (`cross_tenant`: the sender is
/// the vif's segment, whatever address it claims) or its own ingress (`cross_tenant`,
/// `spoofed_ip`) drop them. Its same-segment frames arrive once it is classified. Every
/// frame sent is judged once (but those the bridge drops in the instant the port comes
/// up).
#[test]
fn a_new_vif_leaks_nothing_before_it_is_classified() {
    let (lab, vms) = quiet_lab(
        "fc-newvif",
        &[
            ("web1", "vacme-web1", "10.1.1.2/24"),
            ("app1", "vglobex-app1", "10.2.1.2/24"),
        ],
        &[],
    )
    .expect("lab");
    let (web1, app1) = (vms[0].clone(), vms[1].clone());
    let _sinks = udp_sinks(&[&web1, &app1], 9).expect("sinks");
    // The bridge knows where web1 and app1 are from the start: no frame of the new VM is
    // flooded to a port it is not addressed to.
    for vm in [&web1, &app1] {
        isolator_tests::netns::run_ok(std::process::Command::new("bridge").args([
            "-n",
            lab.host_ns(),
            "fdb",
            "replace",
            &vm.mac,
            "dev",
            &vm.vif,
            "master",
            "static",
        ]))
        .expect("static fdb entry");
    }
    let late_ns = LateNetns::new(&lab, "late").expect("netns");
    let env = Env::start(lab, PLAIN_POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    let mut bad = Problems::new();
    let late_mac = parse_mac(LATE_MAC).unwrap();
    let frame_to = |src: &str, to: &Vm, marker: &str| {
        ip_frame(
            late_mac,
            parse_mac(&to.mac).unwrap(),
            src.parse().unwrap(),
            to.v4(),
            udp(40000, 9),
            marker.as_bytes(),
        )
    };
    let cross = frame_to(LATE_IP, &app1, "late VM -> other tenant");
    let same = frame_to(LATE_IP, &web1, "late VM -> own segment");
    // Claiming an address of the receiver's own segment: a sender judged by its source
    // address would pass it as app1's neighbour.
    let claiming = frame_to(
        SPOOFED_IP,
        &app1,
        "late VM -> other tenant, as its neighbour",
    );
    let watched = [web1.vif.as_str(), app1.vif.as_str()];
    let before = settle(&watched, Duration::from_millis(300), || env.scrape());

    let (sent, frames) = captured(&[&app1.ns, &web1.ns], || {
        // The sender waits in the new VM's namespace for its eth0 and sends from the
        // first moment it can.
        let stream = Stream::start(
            &late_ns.name,
            "eth0",
            vec![cross.clone(), same.clone(), claiming.clone()],
            Duration::from_micros(20),
        )
        .expect("stream");
        // The new vif, up and a bridge port in one step; then the VM's side up. Until the
        // daemon has attached to it, and a while longer.
        let created = add_late_vif(env.lab(), LATE_VIF, LATE_MAC, &late_ns).expect("new vif");
        let attached = await_attached(env.lab(), LATE_VIF, created, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(500));
        let sent = stream.stop().expect("stream");
        (attached, sent)
    });
    let (attached, sent) = sent;
    if let Err(e) = &attached {
        bad.push(format!("{e:#}"));
    }
    let (at_app1, at_web1) = (&frames[0], &frames[1]);
    let mut leaked: Vec<String> = at_app1
        .iter()
        .filter(|f| isolator_tests::frame::source_mac(f) == LATE_MAC)
        .map(|f| isolator_tests::frame::describe(f))
        .collect();
    leaked.dedup();
    bad.check(leaked.is_empty(), || {
        format!(
            "frames of the new VM reached app1 (another tenant): {} ({} sent to app1)",
            leaked.join("; "),
            sent[0] + sent[2]
        )
    });
    let same_arrived = carrying(at_web1, "late VM -> own segment");
    bad.check(same_arrived > 0, || {
        format!(
            "after the new vif was classified, its frames to web1 (same segment) must arrive; \
             0 of {} did",
            sent[1]
        )
    });
    let after = env.scrape();
    let app1_moved = changes(&before, &after, &app1.vif);
    bad.check(
        app1_moved
            .keys()
            .all(|k| k == "egress unknown_interface" || k == "egress cross_tenant"),
        || {
            format!(
                "nothing may pass to app1, only drops of the new VM's frames; app1's counters \
                 changed by {app1_moved:?}"
            )
        },
    );
    let unknown_at = |vif: &str| {
        changes(&before, &after, vif)
            .get("egress unknown_interface")
            .copied()
            .unwrap_or(0.0)
    };
    let unknown = unknown_at(&web1.vif) + unknown_at(&app1.vif);
    let late_drop = |reason: u8| {
        after
            .value(&Series::drop(
                LATE_VIF,
                isolator_tests::Dir::Ingress,
                reason,
            ))
            // A missing series is a failure, not a zero.
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let (guarded, late_cross, late_spoofed) = (
        late_drop(isolator_common::verdict::NO_POLICY),
        late_drop(isolator_common::verdict::CROSS_TENANT),
        late_drop(isolator_common::verdict::SPOOFED_IP),
    );
    bad.check(unknown + guarded > 0.0, || {
        "no frame of the new VM was dropped before its classification (no_policy at its \
         ingress while guarded, unknown_interface at web1's or app1's egress): the test \
         did not catch the moment between the vif's creation and its classification"
            .into()
    });
    // Every frame the kernel accepted from the new VM was judged once: at its own ingress
    // while guarded (no_policy) or once classified, or by a receiver's egress before its
    // programs were attached. The bridge drops the few sent in the instant the VM's side
    // came up, before it forwards on the new port: those nobody judges.
    const BEFORE_FORWARDING: f64 = 60.0;
    let web1_moved = changes(&before, &after, &web1.vif);
    let at =
        |m: &std::collections::BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let same_judged = at(&web1_moved, "egress unknown_interface") + at(&web1_moved, "egress pass");
    bad.check(
        same_judged <= sent[1] as f64
            && web1_moved
                .keys()
                .all(|k| k == "egress unknown_interface" || k == "egress pass"),
        || {
            format!(
                "of the {} frames to web1, those that reach web1's egress are dropped as \
                 unknown_interface or passed; web1's counters changed by {web1_moved:?}",
                sent[1]
            )
        },
    );
    let cross_judged = at(&app1_moved, "egress unknown_interface")
        + at(&app1_moved, "egress cross_tenant")
        + late_cross
        + late_spoofed;
    bad.check(cross_judged <= (sent[0] + sent[2]) as f64, || {
        format!(
            "the {} frames to app1 are dropped at most once: at app1's egress ({app1_moved:?}) \
             or at the new vif's ingress as cross_tenant ({late_cross}) or spoofed_ip \
             ({late_spoofed})",
            sent[0] + sent[2]
        )
    });
    let total: u64 = sent.iter().sum();
    let judged = same_judged + cross_judged + guarded;
    bad.check(
        judged <= total as f64 && judged >= total as f64 - BEFORE_FORWARDING,
        || {
            format!(
                "each of the {total} frames sent is judged once (all but at most \
                 {BEFORE_FORWARDING}): {judged} were (to web1 {same_judged}, to app1 \
                 {cross_judged}, guarded {guarded})"
            )
        },
    );
    match after.by_reason(&Series::drops(LATE_VIF, isolator_tests::Dir::Ingress)) {
        Ok(drops) => bad.check(
            drops
                .keys()
                .all(|k| k == "cross_tenant" || k == "spoofed_ip" || k == "no_policy"),
            || {
                format!(
                    "the new vif's ingress drops only what it sends while guarded \
                     (no_policy) and its frames to app1 (cross_tenant, spoofed_ip): {drops:?}"
                )
            },
        ),
        Err(e) => bad.push(format!("{e:#}")),
    }
    bad.finish(
        "a new vif",
        &format!(
            "policy:\n{PLAIN_POLICY}\nframes sent (to app1, to web1, to app1 as its neighbour): {sent:?}, the daemon \
             attached {attached:?} after the vif was created\ndrops now:\n{}",
            after.dump(DROP_PACKETS)
        ),
        &env.log_tail(),
    );
}
