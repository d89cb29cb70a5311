//! Issue 13 point 6: vifs created in a burst while the daemon runs. A VM behind a vif
//! created in the middle of the burst sends frames to another tenant's VM from the first
//! moment its link is up, while the daemon is busy guarding and classifying the others:
//! not one of them is delivered, and the counters account for them (docs/design.md, "Who
//! sent a frame" and "Fail closed": until the daemon has attached to a new vif, frames
//! from it drop at every managed VM's egress as `unknown_interface`; once it has, at the
//! vif's own ingress as `no_policy`, then by its segment's rules).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use isolator_tests::failclosed_lab::{
    LateNetns, Stream, add_late_vif, await_attached, quiet_lab, udp_sinks,
};
use isolator_tests::frame::{ip_frame, parse_mac, source_mac, udp};
use isolator_tests::lab::BRIDGE;
use isolator_tests::metrics::DROP_PACKETS;
use isolator_tests::netns::{ip_n, run_ok};
use isolator_tests::{Dir, Env, Series};

use crate::failclosed::{Problems, captured, changes, settle};

const POLICY: &str = r#"version: 1
vif_names: ["vacme-*", "vglobex-*"]
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

/// Vifs created in the burst; the new VMs' vifs are among them, at these positions.
const BURST: usize = 40;
const SENDERS: [usize; 3] = [0, BURST / 2, BURST - 1];
/// An address of globex/app that the new VMs claim in half of their frames.
const SPOOFED_IP: &str = "10.2.1.66";
/// Frames the bridge drops, unjudged and undelivered, in the instant a VM's side of its
/// link comes up (before the bridge forwards on the new port), per new VM.
const BEFORE_FORWARDING: f64 = 60.0;

fn sender_mac(k: usize) -> String {
    format!("02:15:0b:00:01:{k:02x}")
}

/// Datagrams waiting on `sock` (non-blocking), as bytes.
fn received(sock: &UdpSocket) -> Vec<Vec<u8>> {
    sock.set_nonblocking(true).expect("non-blocking");
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// 40 vifs of acme/web appear at once (as a host boots its VMs). Three of them (the
/// first, the middle and the last created) belong to VMs that send UDP to app1 (globex)
/// from the first moment their link is up, one frame every 20 µs, half of them claiming
/// an address of app1's own segment. Not one frame reaches app1 (its capture and its UDP
/// socket), nothing passes at app1's egress, and every frame the kernel accepted is
/// judged once: at app1's egress (`unknown_interface`, before the daemon attached to the
/// sender's vif) or at the sender's vif's ingress (`no_policy` while guarded, then
/// `cross_tenant` or `spoofed_ip`), all but the few the bridge drops as the port comes up.
#[test]
fn a_burst_of_new_vifs_leaks_nothing_to_another_tenant() {
    let (lab, vms) = quiet_lab(
        "hp-burst",
        &[
            ("web1", "vacme-web1", "10.1.1.2/24"),
            ("app1", "vglobex-app1", "10.2.1.2/24"),
        ],
        &[],
    )
    .expect("lab");
    let (web1, app1) = (vms[0].clone(), vms[1].clone());
    let sinks = udp_sinks(&[&app1], 9).expect("sink");
    // The bridge knows where app1 is from the start: the new VMs' frames to it are
    // forwarded to its port only.
    for vm in [&web1, &app1] {
        run_ok(std::process::Command::new("bridge").args([
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
    let late: Vec<LateNetns> = SENDERS
        .iter()
        .map(|k| LateNetns::new(&lab, &format!("s{k}")).expect("netns"))
        .collect();
    let env = Env::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    let mut bad = Problems::new();
    let vif = |k: usize| format!("vacme-web{}", 100 + k);
    let frames_of = |k: usize, s: usize| -> Vec<Vec<u8>> {
        let mac = parse_mac(&sender_mac(k)).unwrap();
        let own = format!("10.1.1.{}", 100 + s);
        [
            (own.as_str(), "burst VM -> other tenant"),
            (SPOOFED_IP, "burst VM -> other tenant, as its neighbour"),
        ]
        .iter()
        .map(|(src, marker)| {
            ip_frame(
                mac,
                parse_mac(&app1.mac).unwrap(),
                src.parse().unwrap(),
                app1.v4(),
                udp(40000, 9),
                marker.as_bytes(),
            )
        })
        .collect()
    };
    let sender_vifs: Vec<String> = SENDERS.iter().map(|k| vif(*k)).collect();
    let before = settle(&[&app1.vif], Duration::from_millis(300), || env.scrape());

    let ((sent, attached, burst_took), frames) = captured(&[&app1.ns], || {
        let streams: Vec<Stream> = SENDERS
            .iter()
            .enumerate()
            .map(|(s, k)| {
                Stream::start(
                    &late[s].name,
                    "eth0",
                    frames_of(*k, s),
                    Duration::from_micros(20),
                )
                .expect("stream")
            })
            .collect();
        let started = Instant::now();
        let mut created = Vec::new();
        for k in 0..BURST {
            let name = vif(k);
            match SENDERS.iter().position(|s| *s == k) {
                Some(s) => created.push((
                    name.clone(),
                    add_late_vif(env.lab(), &name, &sender_mac(k), &late[s]).expect("new vif"),
                )),
                None => {
                    ip_n(
                        env.lab().host_ns(),
                        &[
                            "link",
                            "add",
                            "name",
                            &name,
                            "master",
                            BRIDGE,
                            "up",
                            "type",
                            "veth",
                            "peer",
                            "name",
                            &format!("hpb{k}"),
                        ],
                    )
                    .expect("burst vif");
                }
            }
        }
        let burst_took = started.elapsed();
        let attached: Vec<_> = created
            .iter()
            .map(|(name, at)| {
                (
                    name.clone(),
                    await_attached(env.lab(), name, *at, Duration::from_secs(30)),
                )
            })
            .collect();
        // Classified by now or soon: the frames go on meeting the segment's rules.
        std::thread::sleep(Duration::from_millis(1500));
        let sent: Vec<Vec<u64>> = streams
            .into_iter()
            .map(|s| s.stop().expect("stream"))
            .collect();
        (sent, attached, burst_took)
    });
    for (name, a) in &attached {
        if let Err(e) = a {
            bad.push(format!("{name}: {e:#}"));
        }
    }
    let at_app1 = &frames[0];
    let senders: Vec<String> = SENDERS.iter().map(|k| sender_mac(*k)).collect();
    let mut leaked: Vec<String> = at_app1
        .iter()
        .filter(|f| senders.contains(&source_mac(f)))
        .map(|f| isolator_tests::frame::describe(f))
        .collect();
    leaked.dedup();
    let total: u64 = sent.iter().flatten().sum();
    bad.check(leaked.is_empty(), || {
        format!(
            "frames of the new VMs reached app1 (another tenant): {} ({total} sent)",
            leaked.join("; ")
        )
    });
    let datagrams = received(&sinks[0]);
    let got = datagrams
        .iter()
        .filter(|d| d.windows(8).any(|w| w == b"burst VM"))
        .count();
    bad.check(got == 0, || {
        format!("app1's UDP socket received {got} datagrams of the new VMs")
    });

    let after = env.scrape();
    let app1_moved = changes(&before, &after, &app1.vif);
    bad.check(
        app1_moved
            .keys()
            .all(|k| k == "egress unknown_interface" || k == "egress cross_tenant"),
        || {
            format!(
                "nothing may pass to app1, only drops of the new VMs' frames; app1's counters \
                 changed by {app1_moved:?}"
            )
        },
    );
    let at =
        |m: &std::collections::BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let unknown = at(&app1_moved, "egress unknown_interface");
    let at_receiver = unknown + at(&app1_moved, "egress cross_tenant");
    let mut at_senders = 0.0;
    let mut guarded = 0.0;
    for name in &sender_vifs {
        match after.by_reason(&Series::drops(name, Dir::Ingress)) {
            Ok(drops) => {
                bad.check(
                    drops
                        .keys()
                        .all(|k| k == "cross_tenant" || k == "spoofed_ip" || k == "no_policy"),
                    || {
                        format!(
                            "{name}'s ingress drops only what it sends while guarded \
                             (no_policy) and its frames to app1 (cross_tenant, spoofed_ip): \
                             {drops:?}"
                        )
                    },
                );
                guarded += drops.get("no_policy").copied().unwrap_or(0.0);
                at_senders += drops.values().sum::<f64>();
            }
            Err(e) => bad.push(format!("{e:#}")),
        }
        if let Ok(n) = after.value(&Series::pass(name, Dir::Ingress))
            && n > 0.0
        {
            bad.push(format!("{name}'s ingress passed {n} frames to app1"));
        }
    }
    let judged = at_receiver + at_senders;
    let slack = BEFORE_FORWARDING * SENDERS.len() as f64;
    bad.check(
        judged <= total as f64 && judged >= total as f64 - slack,
        || {
            format!(
                "each of the {total} frames sent is judged once (all but at most {slack}): \
                 {judged} were (at app1's egress {at_receiver}, of which unknown_interface \
                 {unknown}; at the senders' ingress {at_senders}, of which no_policy {guarded})"
            )
        },
    );
    bad.check(guarded > 0.0 || unknown > 0.0, || {
        "no frame was dropped before its vif was classified (no_policy, unknown_interface): \
         the test did not catch the moment between a vif's creation and its classification"
            .into()
    });
    eprintln!(
        "burst of {BURST} vifs created in {burst_took:?}; the senders' vifs were guarded \
         {attached:?} after their creation; of {total} frames sent: {unknown} dropped at \
         app1's egress as unknown_interface (sent before the daemon had attached to their \
         vif), {guarded} at the senders' ingress as no_policy, {} after classification",
        judged - unknown - guarded
    );
    // The daemon's own verification may look while the burst goes on: links that came
    // during a look are no drift of the maps (a false finding makes the daemon read its
    // maps again before the next change, and warns the operator of nothing).
    std::thread::sleep(Duration::from_secs(1));
    let log = env.log();
    bad.check(!log.contains("map_drift"), || {
        format!(
            "the verification reported no map drift during the burst:\n{}",
            log.lines()
                .filter(|l| l.contains("map_drift"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    bad.finish(
        "a burst of new vifs",
        &format!(
            "policy:\n{POLICY}\nframes sent per sender (own address, claiming app1's segment): \
             {sent:?}; burst of {BURST} created in {burst_took:?}; attached after creation: \
             {attached:?}\ndrops now:\n{}",
            after.dump(DROP_PACKETS)
        ),
        &env.log_tail(),
    );
}

/// The programs on `vif` once they stop changing: `quick` (TC programs as `cls_bpf`
/// filters) or handed over to TCX.
fn await_programs(env: &Env<isolator_tests::lab::Lab>, vif: &str, quick: bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let programs = env.lab().vif_programs(vif).expect("programs");
        let filters = programs.iter().filter(|p| p.starts_with("tc ")).count();
        let tcx = programs.iter().filter(|p| p.starts_with("tcx ")).count();
        let done = programs.first().map(String::as_str) == Some("xdp")
            && programs.len() == 3
            && if quick {
                filters == 2 && tcx == 0
            } else {
                tcx == 2 && filters == 0
            };
        if done || Instant::now() > deadline {
            return programs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Frames web1 sends to the new VM `to` (its vif `vif`) while `during` runs, one every
/// 50 µs: each is judged at web1's ingress, then once at the new vif's egress, and none
/// reaches the VM unjudged. Returns a description of what went wrong, if anything.
fn judged_once(
    env: &Env<isolator_tests::lab::Lab>,
    web1: &isolator_tests::lab::Vm,
    (vif, mac, ip, ns): (&str, &str, &str, &str),
    during: impl FnOnce(),
) -> Option<String> {
    let frame = ip_frame(
        parse_mac(&web1.mac).unwrap(),
        parse_mac(mac).unwrap(),
        web1.v4(),
        ip.parse().unwrap(),
        udp(40000, 9),
        b"handover",
    );
    let before = settle(&[&web1.vif, vif], Duration::from_millis(300), || {
        env.scrape()
    });
    let (sent, frames) = captured(&[ns], || {
        let stream = Stream::start(&web1.ns, "eth0", vec![frame], Duration::from_micros(50))
            .expect("stream");
        during();
        stream.stop().expect("stream")
    });
    let after = settle(&[&web1.vif, vif], Duration::from_millis(300), || {
        env.scrape()
    });
    let sender = changes(&before, &after, &web1.vif);
    let receiver = changes(&before, &after, vif);
    let passed_at_web1 = sender.get("ingress pass").copied().unwrap_or(0.0);
    let judged_at_vif: f64 = receiver
        .iter()
        .filter(|(k, _)| k.starts_with("egress "))
        .map(|(_, v)| *v)
        .sum();
    let passed_at_vif = receiver.get("egress pass").copied().unwrap_or(0.0);
    let delivered = frames[0]
        .iter()
        .filter(|f| f.windows(8).any(|w| w == b"handover"))
        .count() as f64;
    let total: u64 = sent.iter().sum();
    if passed_at_web1 < 100.0 || judged_at_vif > passed_at_web1 || passed_at_vif < delivered {
        return Some(format!(
            "{total} frames sent, {passed_at_web1} passed web1's ingress, {judged_at_vif} judged at \
             {vif}'s egress ({passed_at_vif} passed), {delivered} delivered: each must be judged \
             once at the egress (never more often than web1 passed them) and none delivered \
             unjudged; web1 {sender:?}, {vif} {receiver:?}"
        ));
    }
    None
}

/// A link that comes while the daemon runs gets its TC programs the quick way, as
/// `cls_bpf` filters (no RCU grace period under the RTNL lock), and is handed over to TCX
/// once no new link has come for `--handover-quiet-ms`: every frame to it is judged once,
/// the quick way, during the handover and after it. A daemon killed while the vif holds
/// quick attachments leaves it enforced (I7); the next one takes it over through TCX and
/// removes the filters.
#[test]
fn a_new_vif_is_attached_the_quick_way_then_handed_over_to_tcx() {
    let (lab, vms) = quiet_lab(
        "hp-quick",
        &[
            ("web1", "vacme-web1", "10.1.1.2/24"),
            ("app1", "vglobex-app1", "10.2.1.2/24"),
        ],
        &[],
    )
    .expect("lab");
    let web1 = vms[0].clone();
    let late = [
        LateNetns::new(&lab, "q9").expect("netns"),
        LateNetns::new(&lab, "q8").expect("netns"),
    ];
    // No handover while the first daemon runs.
    let mut env = Env::start_args(lab, POLICY, &["--handover-quiet-ms", "3600000"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut bad = Problems::new();
    let new_vif = |env: &Env<isolator_tests::lab::Lab>, vif: &str, mac: &str, ns: &LateNetns| {
        let at = add_late_vif(env.lab(), vif, mac, ns).expect("new vif");
        await_attached(env.lab(), vif, at, Duration::from_secs(30)).expect("attached");
        run_ok(std::process::Command::new("bridge").args([
            "-n",
            env.lab().host_ns(),
            "fdb",
            "replace",
            mac,
            "dev",
            vif,
            "master",
            "static",
        ]))
        .expect("static fdb entry");
    };
    let nine = (
        "vacme-web9",
        "02:15:0b:00:02:09",
        "10.1.1.9",
        late[0].name.as_str(),
    );
    new_vif(&env, nine.0, nine.1, &late[0]);
    let programs = await_programs(&env, nine.0, true);
    bad.check(
        programs.iter().filter(|p| p.starts_with("tc ")).count() == 2
            && !programs.iter().any(|p| p.starts_with("tcx")),
        || format!("a new vif first carries XDP and two cls_bpf filters: {programs:?}"),
    );
    if let Some(e) = judged_once(&env, &web1, nine, || {
        std::thread::sleep(Duration::from_millis(300))
    }) {
        bad.push(format!("the quick attachment: {e}"));
    }

    // Killed while the vif holds quick attachments: still enforced.
    let mut crashed = env.take_daemon();
    crashed.signal(libc::SIGKILL).expect("SIGKILL");
    crashed.wait_exit(Duration::from_secs(10)).expect("exit");
    let programs = env.lab().vif_programs(nine.0).expect("programs");
    bad.check(
        programs.iter().filter(|p| p.starts_with("tc ")).count() == 2,
        || format!("a killed daemon's quick attachments stay: {programs:?}"),
    );
    env.start_daemon(&["--handover-quiet-ms", "1000"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let programs = await_programs(&env, nine.0, false);
    bad.check(programs == ["xdp", "tcx ingress", "tcx egress"], || {
        format!("the next daemon takes the vif over through TCX, filters removed: {programs:?}")
    });
    if let Some(e) = judged_once(&env, &web1, nine, || {
        std::thread::sleep(Duration::from_millis(300))
    }) {
        bad.push(format!("after the restart: {e}"));
    }

    // A vif that comes now is handed over about a second later, frames flowing.
    let eight = (
        "vacme-web8",
        "02:15:0b:00:02:08",
        "10.1.1.8",
        late[1].name.as_str(),
    );
    new_vif(&env, eight.0, eight.1, &late[1]);
    let mut during = Vec::new();
    if let Some(e) = judged_once(&env, &web1, eight, || {
        during = await_programs(&env, eight.0, false);
        std::thread::sleep(Duration::from_millis(300));
    }) {
        bad.push(format!("across the handover: {e}"));
    }
    bad.check(during == ["xdp", "tcx ingress", "tcx egress"], || {
        format!("the new vif is handed over to TCX: {during:?}")
    });
    bad.finish("quick attachments", "", &env.log_tail());
}
