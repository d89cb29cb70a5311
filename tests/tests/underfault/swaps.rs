//! I6 with real packets: continuous same-segment traffic (allowed by both policies)
//! across a hundred SIGHUP reloads alternating between two policies loses nothing, and
//! no frame anywhere is dropped as `no_policy`. A reload that validates but that the
//! kernel refuses (its rule set table is full: filled behind the daemon's back through
//! the pinned map, as a fault would, and the new policy needs a rule set neither
//! generation holds: a swap writes only what differs from the policy the other
//! generation holds) keeps the old policy in force, is counted as failed, and the next
//! reload after the fault is gone succeeds.

use std::net::SocketAddr;
use std::time::Duration;

use isolator_common::{RuleKey, RuleSet, maps, verdict};
use isolator_tests::failclosed_lab::{quiet_lab, udp_sinks};
use isolator_tests::metrics::DROP_PACKETS;
use isolator_tests::netns::in_netns;
use isolator_tests::rawbpf::{map_delete, map_lookup, map_update, obj_get};
use isolator_tests::traffic::UdpFlow;
use isolator_tests::{Dir, Env, Series, ping_count};

use crate::failclosed::Problems;

/// Two policies that judge web → app differently (B has a flow) and web → web alike.
fn policy(flow: bool) -> String {
    let flows = if flow {
        "    flows:\n      - from: web\n        to: app\n        protocol: udp\n        ports: 9\n"
    } else {
        ""
    };
    format!(
        r#"version: 1
management:
  - prefix: 192.168.100.0/24
tenants:
  - name: acme
{flows}    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24]
      - name: app
        interfaces: ["vacme-app*"]
        prefixes: [10.1.2.0/24]
"#
    )
}

const RELOADS: usize = 100;

#[test]
fn a_hundred_reloads_under_traffic_lose_nothing_and_a_refused_one_changes_nothing() {
    let (lab, vms) = quiet_lab(
        "uf-swaps",
        &[
            ("web1", "vacme-web1", "10.1.1.2/24"),
            ("web2", "vacme-web2", "10.1.1.3/24"),
            ("app1", "vacme-app1", "10.1.2.2/24"),
        ],
        &[],
    )
    .expect("lab");
    let (web1, web2, app1) = (vms[0].clone(), vms[1].clone(), vms[2].clone());
    let _sinks = udp_sinks(&[&app1], 9).expect("sink");
    let env = Env::start(lab, &policy(false)).unwrap_or_else(|e| panic!("{e:#}"));
    let mut bad = Problems::new();
    let no_policy = Series::new(DROP_PACKETS, &[("reason", "no_policy")]);
    let start = env.scrape();
    let flow = UdpFlow::start(
        &web1.ns,
        &web2.ns,
        SocketAddr::new(web2.v4(), 7000),
        Duration::from_millis(1),
    )
    .expect("a flow web1 -> web2");
    for i in 0..RELOADS {
        if let Err(e) = env.reload(&policy(i % 2 == 0), true) {
            bad.push(format!("reload {i}: {e:#}"));
            break;
        }
    }
    let delivery = flow.stop(Duration::from_secs(2)).expect("the flow");
    println!("across {RELOADS} reloads: {delivery:?}");
    if delivery.sent < 200 {
        bad.push(format!(
            "only {} datagrams were sent across the reloads: the flow proved nothing",
            delivery.sent
        ));
    }
    if delivery.received != delivery.sent || delivery.duplicates {
        bad.push(format!(
            "same-segment traffic allowed by both policies lost {} of {} datagrams across \
             {RELOADS} reloads (first lost: {:?}; duplicates: {})",
            delivery.sent - delivery.received,
            delivery.sent,
            delivery.lost,
            delivery.duplicates
        ));
    }
    let after = env.scrape();
    match (start.sum(&no_policy), after.sum(&no_policy)) {
        (Ok(a), Ok(b)) if a == 0.0 && b == 0.0 => {}
        (a, b) => bad.push(format!(
            "no frame may be dropped as no_policy across reloads: before {a:?}, after {b:?}"
        )),
    }

    // Reload i installs the flow when i is even: the last (99) left policy A in force.
    let to_app = Series::drop("vacme-web1", Dir::Ingress, verdict::CROSS_SEGMENT);
    // B with one more flow: a rule set that neither generation holds (the other one
    // holds B), which the full table refuses.
    let refused_reload = policy(true).replace(
        "        ports: 9\n",
        "        ports: 9\n      - from: app\n        to: web\n        protocol: tcp\n        ports: 22\n",
    );
    assert_ne!(refused_reload, policy(true));
    // Fill the rule set table behind the daemon's back: the active generation's entries
    // plus junk up to its capacity, so that the next generation's flow finds no room.
    let dir = env.lab().state_dir().expect("state dir");
    // Policy maps (and CONFIG) live in a directory named after their sizes.
    let maps_dir = crate::common::policy_maps_dir(&dir);
    let config = obj_get(&maps_dir.join(maps::CONFIG)).expect("CONFIG");
    let active = u32::from_ne_bytes(
        map_lookup(&config, &0u32.to_ne_bytes(), 4)
            .expect("reading CONFIG")
            .expect("CONFIG[0]")
            .try_into()
            .unwrap(),
    );
    let table = obj_get(&maps_dir.join(maps::RULESETS)).expect("RULESETS");
    let junk_key = |i: u32| {
        let key = RuleKey {
            generation: active,
            index: 1_000_000 + i,
        };
        let mut bytes = key.generation.to_ne_bytes().to_vec();
        bytes.extend_from_slice(&key.index.to_ne_bytes());
        bytes
    };
    let value = vec![0u8; size_of::<RuleSet>()];
    let mut junk = 0;
    loop {
        match map_update(&table, &junk_key(junk), &value) {
            Ok(()) => junk += 1,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::E2BIG)) => break,
            Err(e) => panic!("filling RULESETS: {e}"),
        }
    }
    println!("{junk} junk entries fill the rule set table");
    let before_refused = env.scrape();
    if let Err(e) = env.reload(&refused_reload, false) {
        bad.push(format!("the reload the kernel refuses: {e:#}"));
    }
    if !env
        .daemon()
        .log()
        .contains("the running policy stays in force")
    {
        bad.push("the log must say that the running policy stays in force".into());
    }
    // Policy A stays: web1 -> app1 UDP/9 is still dropped as cross_segment.
    let sent = in_netns(&web1.ns, || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..3 {
            socket.send_to(b"to app1", (app1.v4(), 9))?;
        }
        Ok(())
    });
    if let Err(e) = sent {
        bad.push(format!("sending web1 -> app1: {e:#}"));
    }
    if let Err(e) = env.daemon().expect(
        &before_refused,
        &isolator_tests::Expect::new().grows(to_app.clone(), 3.0),
    ) {
        bad.push(format!(
            "after the refused reload, the old policy (no flow web -> app) stays: {e:#}"
        ));
    }
    for i in 0..junk {
        map_delete(&table, &junk_key(i)).expect("removing the junk");
    }
    if let Err(e) = env.reload(&refused_reload, true) {
        bad.push(format!(
            "once the fault is gone, the same reload succeeds: {e:#}"
        ));
    }
    let replies = ping_count(
        &web1.ns,
        web2.v4(),
        3,
        Duration::from_millis(20),
        Duration::from_millis(500),
    )
    .expect("ping");
    if replies != 3 {
        bad.push(format!("same segment after it all: {replies} of 3 replies"));
    }
    bad.finish(
        "reloads under traffic",
        &format!("policies:\n{}\n{}", policy(false), policy(true)),
        &env.log_tail(),
    );
}
