//! I7 under load: enforcement carries on through the daemon's death and through an
//! upgrade, with traffic running the whole time.
//!
//! Across each event run, at once: pings web1 -> web2 (same segment), a numbered UDP
//! flow web1 -> web2, a held TCP connection from a host outside to web2's exposed port
//! (web's `egress: deny`, so its replies pass only as a tracked connection), and a stream
//! of SYNs web1 -> app1 (another tenant) with a capture on app1. While no daemon runs,
//! web3's vif is deleted. Then:
//!
//! - no SYN reached app1, and (where the counters survive) each was counted as
//!   `cross_tenant`, exactly;
//! - every ping was answered and no datagram was lost;
//! - the held connection still echoes (its tracking survived), except across a change of
//!   the state layout, where, as documented, it is forgotten: its replies are dropped
//!   and a new connection works;
//! - the kernel's own ids show that each remaining vif's links are the same links with a
//!   new program inside, and web3's links were released.
//!
//! The events: `kill -9` and a restart; a `--persist` stop and the start of another build
//! (the rehearsal build); a `--persist` stop, the maps left under an older layout's
//! directory, and a start (fresh maps).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use isolator_common::verdict;
use isolator_tests::failclosed_lab::{Stream, quiet_lab};
use isolator_tests::frame::{ip_frame, parse_mac, tcp};
use isolator_tests::net::{Capture, TcpPair};
use isolator_tests::netns::ip_n;
use isolator_tests::rawbpf::{LinkIds, pinned_link_ids};
use isolator_tests::traffic::UdpFlow;
use isolator_tests::{Dir, Env, Lab, Series, isolator_rehearsal_bin, ping_count};

use crate::failclosed::{Problems, carrying};

const POLICY: &str = r#"version: 1
tenants:
  - name: acme
    segments:
      - name: web
        egress: deny
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24]
        expose: [{address: 10.1.1.3, protocol: tcp, ports: 7000}]
  - name: globex
    segments:
      - name: app
        interfaces: ["vglobex-app*"]
        prefixes: [10.2.1.0/24]
"#;

const PINGS: u16 = 800;
const PING_GAP: Duration = Duration::from_millis(10);
const MARKER: &str = "isolator: a SYN across tenants";
const IO: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Event {
    /// `kill -9`, then the same build again.
    Crash,
    /// `--persist` and SIGTERM, then the rehearsal build.
    Upgrade,
    /// `--persist` and SIGTERM, the maps moved to an older layout's directory, then a
    /// start: fresh maps.
    LayoutChange,
    /// `--persist` and SIGTERM, the policy maps named too small for the policy, then a
    /// start: larger policy maps, the state maps (connections, counters) kept.
    Resize,
}

#[test]
fn enforcement_and_traffic_carry_on_through_kill_9_and_a_restart() {
    across(Event::Crash, "uf-crash");
}

#[test]
fn enforcement_and_traffic_carry_on_through_an_upgrade_to_another_build() {
    across(Event::Upgrade, "uf-upgrade");
}

#[test]
fn a_change_of_state_layout_takes_the_links_over_with_fresh_maps() {
    across(Event::LayoutChange, "uf-layout");
}

#[test]
fn policy_maps_too_small_are_replaced_by_larger_ones_keeping_connections_and_counters() {
    across(Event::Resize, "uf-resize");
}

fn across(event: Event, hint: &str) {
    let (lab, vms) = quiet_lab(
        hint,
        &[
            ("web1", "vacme-web1", "10.1.1.2/24"),
            ("web2", "vacme-web2", "10.1.1.3/24"),
            ("web3", "vacme-web3", "10.1.1.4/24"),
            ("app1", "vglobex-app1", "10.2.1.2/24"),
        ],
        &[("client", "xclient", "10.9.0.10/24")],
    )
    .expect("lab");
    // The client and web2 reach each other on the bridge (permanent neighbours).
    lab.add_route(&vms[4].ns, "10.1.1.0/24").expect("route");
    lab.add_route(&vms[1].ns, "10.9.0.0/24").expect("route");
    let (web1, web2, web3, app1, client) = (
        vms[0].clone(),
        vms[1].clone(),
        vms[2].clone(),
        vms[3].clone(),
        vms[4].clone(),
    );
    let persist: &[&str] = match event {
        Event::Crash => &[],
        Event::Upgrade | Event::LayoutChange | Event::Resize => &["--persist"],
    };
    let mut env = Env::start_args(lab, POLICY, persist).unwrap_or_else(|e| panic!("{e:#}"));
    let mut bad = Problems::new();
    let cross = Series::drop(&web1.vif, Dir::Ingress, verdict::CROSS_TENANT);

    let mut held = TcpPair::open(&client.ns, &web2.ns, SocketAddr::new(web2.v4(), 7000), IO)
        .expect("a connection from outside to web2's exposed port");
    held.round_trip()
        .expect("the held connection echoes before");
    let flow = UdpFlow::start(
        &web1.ns,
        &web2.ns,
        SocketAddr::new(web2.v4(), 7001),
        Duration::from_millis(2),
    )
    .expect("a UDP flow web1 -> web2");
    let at_app1 = Capture::start(&app1.ns, "eth0").expect("capture on app1");
    let start = env.scrape();
    let syn = ip_frame(
        parse_mac(&web1.mac).unwrap(),
        parse_mac(&app1.mac).unwrap(),
        web1.v4(),
        app1.v4(),
        tcp(40000, 22, 0x02),
        MARKER.as_bytes(),
    );
    let syns = Stream::start(&web1.ns, "eth0", vec![syn], Duration::from_millis(2))
        .expect("a SYN stream web1 -> app1");
    let pinger = {
        let (ns, to) = (web1.ns.clone(), web2.v4());
        std::thread::spawn(move || ping_count(&ns, to, PINGS, PING_GAP, Duration::from_secs(1)))
    };

    // Some traffic before the event, counted.
    let before = isolator_tests::metrics::poll(
        "the SYN stream is counted before the event",
        Duration::from_secs(5),
        || {
            let m = env.daemon().scrape()?;
            let n = m.value(&cross)? - start.value(&cross)?;
            Ok(if n >= 50.0 {
                Ok(m)
            } else {
                Err(format!("{n} counted"))
            })
        },
    )
    .expect("counting before the event");
    let links_before = pinned_links(env.lab());

    // The event.
    let mut old = env.take_daemon();
    match event {
        Event::Crash => {
            old.signal(libc::SIGKILL).unwrap();
            old.wait_exit(Duration::from_secs(10)).unwrap();
        }
        Event::Upgrade | Event::LayoutChange | Event::Resize => {
            let log = old.log();
            let status = old.stop(Duration::from_secs(10)).unwrap();
            assert!(
                status.success(),
                "a --persist stop exits 0: {status}\n{log}"
            );
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    ip_n(env.lab().host_ns(), &["link", "del", &web3.vif]).expect("deleting web3's vif");
    let state = env.lab().state_dir().expect("state dir");
    let layout = format!("maps-v{}", isolator_common::STATE_LAYOUT);
    let older = format!("maps-v{}", isolator_common::STATE_LAYOUT - 1);
    match event {
        Event::Crash => {}
        Event::Upgrade => {
            let next = isolator_rehearsal_bin().unwrap_or_else(|e| panic!("{e:#}"));
            let version = std::process::Command::new(&next)
                .arg("--version")
                .output()
                .expect("isolator --version");
            let version = String::from_utf8_lossy(&version.stdout).to_string();
            assert!(
                version.contains("+rehearsal"),
                "the other build says so: {version}"
            );
            env.use_bin(next);
        }
        Event::LayoutChange => std::fs::rename(state.join(&layout), state.join(&older))
            .expect("moving the maps to an older layout's directory"),
        Event::Resize => {
            // Policy maps too small for the policy: the next daemon makes larger ones.
            let maps = state.join(&layout);
            let policy = crate::common::policy_maps_dir(&state);
            std::fs::rename(&policy, maps.join("policy-a4-1-a6-1-r-1-p-1-g-1-u-1"))
                .expect("renaming the policy maps as too small");
        }
    }
    env.start_daemon(&[]).unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(Duration::from_millis(300));

    // What the traffic saw.
    let replies = pinger.join().expect("the ping thread").expect("pinging");
    let sent = syns.stop().expect("the SYN stream")[0];
    std::thread::sleep(Duration::from_millis(100));
    let leaked = carrying(&at_app1.stop().expect("the capture"), MARKER);
    let delivery = flow.stop(Duration::from_secs(2)).expect("the UDP flow");
    println!(
        "{event:?}: {replies}/{PINGS} pings answered; {sent} SYNs sent, {leaked} reached app1; \
         UDP {delivery:?}"
    );
    bad.check(leaked == 0, || {
        format!("{leaked} of {sent} cross-tenant SYNs reached app1")
    });
    bad.check(replies == PINGS, || {
        format!(
            "{} of {PINGS} same-segment pings went unanswered",
            PINGS - replies
        )
    });
    bad.check(
        delivery.received == delivery.sent && !delivery.duplicates,
        || format!("the same-segment UDP flow lost datagrams: {delivery:?}"),
    );
    let after = env.scrape();
    let counted = after.value(&cross).expect("the cross_tenant series");
    match event {
        Event::Crash | Event::Upgrade | Event::Resize => {
            let grew = counted - start.value(&cross).unwrap();
            bad.check(grew == sent as f64, || {
                let was = crate::failclosed::counters(&start, &web1.vif);
                let now = crate::failclosed::counters(&after, &web1.vif);
                format!(
                    "every SYN sent ({sent}) was counted as cross_tenant, with no daemon \
                     running too: counted {grew}; {} counters before {was:?}, after {now:?}",
                    web1.vif
                )
            });
        }
        Event::LayoutChange => {
            // Fresh maps: the count starts again from zero (documented), so it misses
            // at least what the old maps had counted before the event.
            let old_count = before.value(&cross).unwrap() - start.value(&cross).unwrap();
            bad.check(counted <= sent as f64 - old_count && counted > 0.0, || {
                format!(
                    "with fresh maps the counter starts again: {counted} now, of {sent} SYNs \
                     sent, {old_count} of them counted in the old maps before the change"
                )
            });
        }
    }

    // The held connection.
    held.set_io_timeout(Duration::from_millis(800)).unwrap();
    let echoed = held.round_trip();
    match event {
        Event::Crash | Event::Upgrade | Event::Resize => {
            if let Err(e) = echoed {
                bad.push(format!("the held connection must still echo: {e:#}"));
            }
        }
        Event::LayoutChange => {
            bad.check(echoed.is_err(), || {
                "with fresh maps the held connection is forgotten (documented): its replies \
                 must be dropped"
                    .into()
            });
            let new = TcpPair::open(&client.ns, &web2.ns, SocketAddr::new(web2.v4(), 7000), IO)
                .and_then(|mut p| p.round_trip());
            if let Err(e) = new {
                bad.push(format!("a new connection after the layout change: {e:#}"));
            }
        }
    }

    // The links, from the kernel.
    let links_after = pinned_links(env.lab());
    let web3_links: Vec<&String> = links_before
        .keys()
        .filter(|name| !links_after.contains_key(*name))
        .collect();
    bad.check(web3_links.len() == 3, || {
        format!(
            "the three links (xdp, tc, tags) of the vif deleted while no daemon ran are \
             released; released: {web3_links:?}, before: {links_before:?}, after: \
             {links_after:?}"
        )
    });
    for (name, was) in &links_before {
        if let Some(now) = links_after.get(name) {
            bad.check(now.link == was.link && now.program != was.program, || {
                format!(
                    "{name}: the same link with a new program inside: before {was:?}, after \
                     {now:?}"
                )
            });
        }
    }
    bad.check(links_after.len() == 9, || {
        format!("three vifs with three links each: {links_after:?}")
    });
    if event == Event::Resize {
        let maps = state.join(&layout);
        let policy_dirs: Vec<String> = std::fs::read_dir(&maps)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with("policy-"))
                    .collect()
            })
            .unwrap_or_default();
        bad.check(
            policy_dirs.len() == 1 && policy_dirs[0] != "policy-a4-1-a6-1-r-1-p-1-g-1-u-1",
            || format!("the too small policy maps are replaced by one larger set: {policy_dirs:?}"),
        );
    }
    if event == Event::LayoutChange {
        bad.check(
            !state.join(&older).exists() && state.join(&layout).exists(),
            || format!("the older layout's maps ({older}) are removed, {layout} is in use"),
        );
    }
    bad.finish(&format!("{event:?}"), POLICY, &env.log_tail());
}

/// The pinned links of the lab's daemon by file name (`<ifindex>-xdp|tc|tags`), with the
/// ids the kernel reports for them.
fn pinned_links(lab: &Lab) -> BTreeMap<String, LinkIds> {
    let dir = lab.state_dir().expect("state dir").join("links");
    read_links(&dir)
}

fn read_links(dir: &Path) -> BTreeMap<String, LinkIds> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.expect("a directory entry");
            let ids = pinned_link_ids(&entry.path()).unwrap_or_else(|e| panic!("{e:#}"));
            (entry.file_name().to_string_lossy().to_string(), ids)
        })
        .collect()
}
