//! Point 9, the smaller fixes: (a) isolator's egress judgement runs first in a vif's TCX
//! chain and hands what it passes on with TCX_NEXT, so a foreign program attached before
//! the daemon started, returning TC_ACT_OK (TCX_PASS), skips nothing; (b) link-scope
//! IPv4 multicast (VRRP, mDNS) and IGMP pass within an `egress: deny` segment and from
//! outside, and never reach another tenant; (c) 802.1p priority-tagged frames (VLAN id 0)
//! pass like untagged ones.
//!
//! Every lab here is IPv4 only with permanent neighbour entries
//! ([`isolator_tests::failclosed_lab::quiet_lab`]): every counted frame is the test's.

use isolator_common::verdict;
use isolator_tests::failclosed_lab::{CountingTcx, FrameSender, quiet_lab, udp_sinks};
use isolator_tests::frame::tagged;
use isolator_tests::metrics::{AUDIT_PACKETS, DROP_PACKETS};
use isolator_tests::scapy::Scapy;
use isolator_tests::{Dir, Env, Expect, Lab, Series, Vm};

use super::{Problems, awaited, captured, expect_exactly, settle, udp_frame};
use crate::common::copies;

/// Counter changes a frame must cause: (vif, `"<direction> pass"` or
/// `"<direction> <reason>"`, by).
type Moves<'a> = Vec<(&'a str, &'a str, f64)>;

fn vm<'a>(vms: &'a [Vm], name: &str) -> &'a Vm {
    vms.iter().find(|v| v.name == name).expect("VM")
}

fn watched(vms: &[Vm]) -> Vec<&str> {
    vms.iter().map(|v| v.vif.as_str()).collect()
}

const TCX_POLICY: &str = r#"version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24]
  - name: globex
    segments:
      - name: aud
        mode: audit
        interfaces: ["vglobex-aud*"]
        prefixes: [10.2.1.0/24]
"#;

/// (a) A foreign TC program on web2's egress, attached before the daemon starts and
/// returning TC_ACT_OK (TCX_PASS: pass and end the chain), does not make isolator's egress
/// judgement be skipped: a frame from another tenant (whose audit-mode segment lets it
/// leave its VM, counted as audit) and one from outside to a port web2 does not expose are
/// still dropped at web2's egress (`cross_tenant`, `not_exposed`), and the foreign program
/// never sees them; a same-segment frame arrives, and the foreign program sees exactly the
/// frames isolator passed (it runs after isolator, which passes with TCX_NEXT).
#[test]
fn a_foreign_tc_program_attached_first_does_not_skip_the_egress_judgement() {
    let (lab, vms) = quiet_lab(
        "fc-tcx",
        &[
            ("web1", "vacme-web1", "10.1.1.2/24"),
            ("web2", "vacme-web2", "10.1.1.3/24"),
            ("aud1", "vglobex-aud1", "10.2.1.2/24"),
        ],
        &[("outside", "xoutside", "10.9.0.10/8")],
    )
    .expect("lab");
    let foreign =
        CountingTcx::attach_egress(lab.host_ns(), "vacme-web2").unwrap_or_else(|e| panic!("{e:#}"));
    let env = Env::start(lab, TCX_POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    let mut bad = Problems::new();
    let (web1, web2, aud1, outside) = (
        vm(&vms, "web1"),
        vm(&vms, "web2"),
        vm(&vms, "aud1"),
        vm(&vms, "outside"),
    );
    let _sinks = udp_sinks(&[web2], 9).expect("sinks");
    let programs = env.lab().vif_programs(&web2.vif).expect("programs");
    bad.check(
        programs.iter().filter(|p| *p == "tcx egress").count() == 2,
        || format!("web2's egress carries isolator's program and the foreign one: {programs:?}"),
    );
    let vifs = watched(&vms);
    // (what, sender, frame, counter changes, arrives at web2)
    let cases: Vec<(&str, &Vm, Vec<u8>, Moves, bool)> = vec![
        (
            "same segment: web1 -> web2",
            web1,
            udp_frame(web1, &web2.mac, web2.v4(), 9, "tcx-same-segment"),
            vec![
                (web1.vif.as_str(), "ingress pass", 1.0),
                (web2.vif.as_str(), "egress pass", 1.0),
            ],
            true,
        ),
        (
            "cross tenant: aud1 (audit mode) -> web2",
            aud1,
            udp_frame(aud1, &web2.mac, web2.v4(), 9, "tcx-cross-tenant"),
            vec![(web2.vif.as_str(), "egress cross_tenant", 1.0)],
            false,
        ),
        (
            "outside -> web2, not exposed",
            outside,
            udp_frame(outside, &web2.mac, web2.v4(), 9, "tcx-not-exposed"),
            vec![(web2.vif.as_str(), "egress not_exposed", 1.0)],
            false,
        ),
    ];
    let start_count = foreign.count().expect("count");
    let start_pass = env.value(&Series::pass(&web2.vif, Dir::Egress));
    for (what, from, frame, moves, arrives) in cases {
        let sender = FrameSender::open(&from.ns, "eth0").expect("sender");
        let seen_before = foreign.count().expect("count");
        let before = settle(&vifs, std::time::Duration::from_millis(300), || {
            env.scrape()
        });
        let (_, frames) = captured(&[&web2.ns], || {
            sender.send(&frame).expect("send");
            expect_exactly(&mut bad, env.daemon(), &vifs, &before, &moves, what);
            // aud1's own ingress lets its cross-tenant frame go, counted as audit.
            let audited = f64::from(u8::from(from.name == "aud1"));
            let audit = Series::audit(&aud1.vif, Dir::Ingress, verdict::CROSS_TENANT);
            awaited(
                &mut bad,
                env.daemon(),
                &before,
                &Expect::new().grows(audit, audited),
                what,
            );
        });
        let arrived = copies(&frames[0], &frame);
        bad.check(arrived == usize::from(arrives), || {
            format!(
                "{what}: expected {} at web2, {arrived} arrived",
                if arrives { "the frame" } else { "nothing" }
            )
        });
        let seen = foreign.count().expect("count") - seen_before;
        bad.check(seen == u64::from(arrives), || {
            format!(
                "{what}: the foreign program on web2's egress must see {} frame(s) (only what \
                 isolator passed), it saw {seen}",
                u64::from(arrives)
            )
        });
    }
    let passed = env.value(&Series::pass(&web2.vif, Dir::Egress)) - start_pass;
    let seen = foreign.count().expect("count") - start_count;
    bad.check(seen as f64 == passed, || {
        format!("the foreign program saw {seen} frames, isolator passed {passed} at web2's egress")
    });
    let m = env.scrape();
    bad.finish(
        "TCX order",
        &format!(
            "policy:\n{TCX_POLICY}\ndrops:\n{}audits:\n{}",
            m.dump(DROP_PACKETS),
            m.dump(AUDIT_PACKETS)
        ),
        &env.log_tail(),
    );
}

const MULTICAST_POLICY: &str = r#"version: 1
tenants:
  - name: acme
    segments:
      - name: db
        egress: deny
        interfaces: ["vacme-db*"]
        prefixes: [10.1.2.0/24]
  - name: globex
    segments:
      - name: web
        interfaces: ["vglobex-web*"]
        prefixes: [10.2.1.0/24]
"#;

/// The multicast lab: db1 and db2 in acme/db (`egress: deny`), web1 in globex/web, a
/// router outside every segment on the bridge.
fn multicast_lab(hint: &str) -> (Env<Lab>, Vec<Vm>) {
    let (lab, vms) = quiet_lab(
        hint,
        &[
            ("db1", "vacme-db1", "10.1.2.2/24"),
            ("db2", "vacme-db2", "10.1.2.3/24"),
            ("web1", "vglobex-web1", "10.2.1.2/24"),
        ],
        &[("router", "xrouter", "10.9.0.1/8")],
    )
    .expect("lab");
    let env = Env::start(lab, MULTICAST_POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    (env, vms)
}

/// One crafted frame (scapy expression) sent from `from`, with the exact counter changes
/// it must cause and the VMs it must reach (and every other VM it must not).
struct Shot<'a> {
    what: &'a str,
    from: &'a Vm,
    expr: String,
    moves: Moves<'a>,
    reaches: Vec<&'a str>,
}

/// Fires each shot and checks the counters of every vif of `vms` and what arrived at
/// each of `receivers`.
fn fire(env: &Env<Lab>, vms: &[Vm], receivers: &[&Vm], shots: Vec<Shot>, bad: &mut Problems) {
    let vifs = watched(vms);
    let namespaces: Vec<&str> = receivers.iter().map(|v| v.ns.as_str()).collect();
    for shot in shots {
        let mut s = Scapy::start(&shot.from.ns).unwrap_or_else(|e| panic!("{e:#}"));
        // IGMP is in scapy's contrib.
        s.run("load_contrib('igmp')")
            .expect("scapy: load_contrib('igmp')");
        let frame = match s.build(&shot.expr) {
            Ok(f) => f,
            Err(e) => {
                bad.push(format!("[{}] cannot build {}: {e:#}", shot.what, shot.expr));
                continue;
            }
        };
        let before = settle(&vifs, std::time::Duration::from_millis(300), || {
            env.scrape()
        });
        let (_, frames) = captured(&namespaces, || {
            s.send_bytes(&frame, 1).expect("send");
            expect_exactly(bad, env.daemon(), &vifs, &before, &shot.moves, shot.what)
        });
        for (vm, got) in receivers.iter().zip(&frames) {
            if vm.name == shot.from.name {
                continue;
            }
            let arrived = copies(got, &frame);
            let wanted = usize::from(shot.reaches.contains(&vm.name.as_str()));
            bad.check(arrived == wanted, || {
                format!(
                    "[{}] expected {wanted} cop(ies) at {}, {arrived} arrived\n  frame: {}",
                    shot.what, vm.name, shot.expr
                )
            });
        }
    }
}

/// (b) VRRP (224.0.0.18, protocol 112) and mDNS (224.0.0.251) between two VMs of an
/// `egress: deny` segment arrive, and never at another tenant's VM (`cross_tenant` at its
/// egress); an IGMP membership query from a router outside every segment reaches every
/// VM. The twins: a routable multicast group (239.1.2.3) from the deny segment is
/// `egress_denied`; an IGMP query from another tenant's VM is `cross_tenant` at the
/// receivers.
#[test]
fn link_scope_multicast_and_igmp_pass_in_a_deny_segment_and_stay_in_the_tenant() {
    let (env, vms) = multicast_lab("fc-mcast");
    let mut bad = Problems::new();
    let (db1, db2, web1, router) = (
        vm(&vms, "db1"),
        vm(&vms, "db2"),
        vm(&vms, "web1"),
        vm(&vms, "router"),
    );
    let (d1, d2, w1) = (db1.vif.as_str(), db2.vif.as_str(), web1.vif.as_str());
    let eth = |from: &Vm, group_mac: &str| format!("Ether(src='{}', dst='{group_mac}')", from.mac);
    let igmp_query = |from: &Vm| {
        format!(
            "{}/IP(src='{}', dst='224.0.0.1', ttl=1, options=[IPOption_Router_Alert()])/\
             IGMP(type=0x11, mrcode=100, gaddr='0.0.0.0')",
            eth(from, "01:00:5e:00:00:01"),
            from.v4()
        )
    };
    let shots = vec![
        Shot {
            what: "VRRP advertisement from db1 (egress: deny) to 224.0.0.18",
            from: db1,
            expr: format!(
                "{}/IP(src='{}', dst='224.0.0.18', ttl=255, proto=112)/\
                 VRRP(vrid=7, priority=100, addrlist=['10.1.2.100'])",
                eth(db1, "01:00:5e:00:00:12"),
                db1.v4()
            ),
            moves: vec![
                (d1, "ingress pass", 1.0),
                (d2, "egress pass", 1.0),
                (w1, "egress cross_tenant", 1.0),
            ],
            reaches: vec!["db2"],
        },
        Shot {
            what: "mDNS query from db1 (egress: deny) to 224.0.0.251",
            from: db1,
            expr: format!(
                "{}/IP(src='{}', dst='224.0.0.251', ttl=255)/UDP(sport=5353, dport=5353)/\
                 DNS(qd=DNSQR(qname='db.local', qtype='A'))",
                eth(db1, "01:00:5e:00:00:fb"),
                db1.v4()
            ),
            moves: vec![
                (d1, "ingress pass", 1.0),
                (d2, "egress pass", 1.0),
                (w1, "egress cross_tenant", 1.0),
            ],
            reaches: vec!["db2"],
        },
        Shot {
            what: "twin: UDP from db1 (egress: deny) to the routable group 239.1.2.3",
            from: db1,
            expr: format!(
                "{}/IP(src='{}', dst='239.1.2.3', ttl=8)/UDP(sport=40000, dport=5000)/\
                 Raw(load=b'routable multicast')",
                eth(db1, "01:00:5e:01:02:03"),
                db1.v4()
            ),
            moves: vec![(d1, "ingress egress_denied", 1.0)],
            reaches: vec![],
        },
        Shot {
            what: "IGMP membership query from the router (outside)",
            from: router,
            expr: igmp_query(router),
            moves: vec![
                (d1, "egress pass", 1.0),
                (d2, "egress pass", 1.0),
                (w1, "egress pass", 1.0),
            ],
            reaches: vec!["db1", "db2", "web1"],
        },
        Shot {
            what: "twin: IGMP membership query from web1 (another tenant's VM)",
            from: web1,
            expr: igmp_query(web1),
            moves: vec![
                (w1, "ingress pass", 1.0),
                (d1, "egress cross_tenant", 1.0),
                (d2, "egress cross_tenant", 1.0),
            ],
            reaches: vec![],
        },
    ];
    fire(&env, &vms, &[db1, db2, web1], shots, &mut bad);
    bad.finish(
        "link-scope multicast and IGMP",
        &format!(
            "policy:\n{MULTICAST_POLICY}\ndrops:\n{}",
            env.scrape().dump(DROP_PACKETS)
        ),
        &env.log_tail(),
    );
}

/// (c) An 802.1p priority-tagged frame (VLAN id 0) is judged as untagged: within the
/// segment it arrives, exactly like its untagged twin; to another tenant it is
/// `cross_tenant`, like untagged; a tag with VLAN id 5, which the interface does not
/// list, is `vlan`.
#[test]
fn priority_tagged_frames_pass_like_untagged_ones() {
    let (env, vms) = multicast_lab("fc-prio");
    let mut bad = Problems::new();
    let (db1, db2, web1) = (vm(&vms, "db1"), vm(&vms, "db2"), vm(&vms, "web1"));
    let (d1, d2) = (db1.vif.as_str(), db2.vif.as_str());
    let vifs = watched(&vms);
    let _sinks = udp_sinks(&[db2, web1], 9).expect("sinks");
    let sender = FrameSender::open(&db1.ns, "eth0").expect("sender");
    let receivers = [db2.ns.as_str(), web1.ns.as_str()];
    let same = |marker: &str| udp_frame(db1, &db2.mac, db2.v4(), 9, marker);
    // (what, frame, counter changes, copies at db2 and web1)
    let cases: Vec<(&str, Vec<u8>, Moves, [usize; 2])> = vec![
        (
            "untagged, same segment",
            same("prio-untagged"),
            vec![(d1, "ingress pass", 1.0), (d2, "egress pass", 1.0)],
            [1, 0],
        ),
        (
            "priority tag (VLAN id 0, PCP 5), same segment",
            tagged(&same("prio-tagged"), 0x8100, 5 << 13),
            vec![(d1, "ingress pass", 1.0), (d2, "egress pass", 1.0)],
            [1, 0],
        ),
        (
            "priority tag (VLAN id 0), to another tenant",
            tagged(
                &udp_frame(db1, &web1.mac, web1.v4(), 9, "prio-cross"),
                0x8100,
                0,
            ),
            vec![(d1, "ingress cross_tenant", 1.0)],
            [0, 0],
        ),
        (
            "twin: VLAN id 5, not listed, same segment",
            tagged(&same("prio-vlan5"), 0x8100, 5),
            vec![(d1, "ingress vlan", 1.0)],
            [0, 0],
        ),
    ];
    for (what, frame, moves, wanted) in cases {
        let before = settle(&vifs, std::time::Duration::from_millis(300), || {
            env.scrape()
        });
        let (_, frames) = captured(&receivers, || {
            sender.send(&frame).expect("send");
            expect_exactly(&mut bad, env.daemon(), &vifs, &before, &moves, what)
        });
        for ((name, got), want) in ["db2", "web1"].iter().zip(&frames).zip(wanted) {
            let arrived = copies(got, &frame);
            bad.check(arrived == want, || {
                format!("[{what}] expected {want} cop(ies) at {name}, {arrived} arrived")
            });
        }
    }
    bad.finish(
        "802.1p priority tags",
        &format!(
            "policy:\n{MULTICAST_POLICY}\ndrops:\n{}",
            env.scrape().dump(DROP_PACKETS)
        ),
        &env.log_tail(),
    );
}
