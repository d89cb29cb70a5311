//! Counters that survive: every connection tracking event count lives in the kernel's
//! pinned map, so a daemon killed and started again neither starts them over nor
//! inflates them (the eviction count, an estimate from the others, included).
//!
//! Before the restart the test makes one event of each kind happen for real: connections
//! opened from outside to exposed ports, one ended by an RST, a UDP conversation that
//! expires and is swept by the daemon, one revoked by a reload, one released with the
//! tables of a vif that is deleted. Then `kill -9`, a restart, and every count is the same.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use isolator_tests::failclosed_lab::quiet_lab;
use isolator_tests::metrics::{CONNTRACK_EVENTS, poll};
use isolator_tests::net::TcpPair;
use isolator_tests::netns::{in_netns, ip_n};
use isolator_tests::{Env, Scrape, Series};

use crate::failclosed::Problems;

fn policy(web2_exposed: bool) -> String {
    let web2 = if web2_exposed {
        "\n          - {address: 10.1.1.3, protocol: tcp, ports: 7000}"
    } else {
        ""
    };
    format!(
        r#"version: 1
connection_tracking:
  udp_idle_seconds: 1
tenants:
  - name: acme
    segments:
      - name: web
        egress: deny
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24]
        expose:
          - {{address: 10.1.1.2, protocol: tcp, ports: 7000}}
          - {{address: 10.1.1.2, protocol: udp, ports: 7001}}
          - {{address: 10.1.1.4, protocol: tcp, ports: 7000}}{web2}
"#
    )
}

const EVENTS: [&str; 6] = [
    "opened", "reset", "expired", "revoked", "released", "evicted",
];
const IO: Duration = Duration::from_secs(3);

fn events(m: &Scrape) -> Vec<(&'static str, f64)> {
    EVENTS
        .iter()
        .map(|e| {
            let v = m
                .value(&Series::new(CONNTRACK_EVENTS, &[("event", e)]))
                .unwrap_or_else(|err| panic!("{err:#}"));
            (*e, v)
        })
        .collect()
}

#[test]
fn connection_tracking_counts_survive_a_restart_neither_reset_nor_inflated() {
    let (lab, vms) = quiet_lab(
        "uf-counts",
        &[
            ("web1", "vacme-web1", "10.1.1.2/24"),
            ("web2", "vacme-web2", "10.1.1.3/24"),
            ("web3", "vacme-web3", "10.1.1.4/24"),
        ],
        &[("client", "xclient", "10.9.0.10/24")],
    )
    .expect("lab");
    let (web1, web2, web3, client) = (
        vms[0].clone(),
        vms[1].clone(),
        vms[2].clone(),
        vms[3].clone(),
    );
    lab.add_route(&client.ns, "10.1.1.0/24").expect("route");
    for vm in [&web1, &web2, &web3] {
        lab.add_route(&vm.ns, "10.9.0.0/24").expect("route");
    }
    let mut env = Env::start(lab, &policy(true)).unwrap_or_else(|e| panic!("{e:#}"));
    let mut bad = Problems::new();
    let start = env.scrape();
    let at = |port| SocketAddr::new(web1.v4(), port);

    // Opened: two connections to web1, one to web2, one to web3.
    let mut kept = TcpPair::open(&client.ns, &web1.ns, at(7000), IO).expect("client -> web1");
    kept.round_trip().expect("echo");
    let reset = TcpPair::open(&client.ns, &web1.ns, at(7000), IO).expect("client -> web1");
    let mut to_web2 = TcpPair::open(&client.ns, &web2.ns, SocketAddr::new(web2.v4(), 7000), IO)
        .expect("client -> web2");
    to_web2.round_trip().expect("echo");
    let mut to_web3 = TcpPair::open(&client.ns, &web3.ns, SocketAddr::new(web3.v4(), 7000), IO)
        .expect("client -> web3");
    to_web3.round_trip().expect("echo");
    // Reset: the client aborts one (SO_LINGER 0: an RST instead of a FIN).
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            reset.client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(reset);
    // Expired: a UDP datagram to web1 opens a conversation idle past 1 s at once.
    in_netns(&client.ns, || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        socket.send_to(b"a conversation", at(7001))?;
        Ok(())
    })
    .expect("a datagram to web1");
    // Revoked: web2's exposure goes.
    env.reload(&policy(false), true)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Released: web3's vif goes, and its tables with it.
    ip_n(env.lab().host_ns(), &["link", "del", &web3.vif]).expect("deleting web3's vif");

    // Wait for all of it to be counted (the sweep runs every 10 s).
    let value = |m: &Scrape, e: &str| {
        m.value(&Series::new(CONNTRACK_EVENTS, &[("event", e)]))
            .unwrap_or_else(|err| panic!("{err:#}"))
            - start
                .value(&Series::new(CONNTRACK_EVENTS, &[("event", e)]))
                .unwrap()
    };
    let wanted = [
        ("opened", 5.0),
        ("reset", 1.0),
        ("expired", 1.0),
        ("revoked", 1.0),
        ("released", 1.0),
        ("evicted", 0.0),
    ];
    let before = poll(
        "one event of each kind is counted",
        Duration::from_secs(20),
        || {
            let m = env.daemon().scrape()?;
            let seen: Vec<(&str, f64)> = wanted.iter().map(|(e, _)| (*e, value(&m, e))).collect();
            Ok(if seen.iter().zip(wanted).all(|(s, w)| s.1 == w.1) {
                Ok(m)
            } else {
                Err(format!("{seen:?}"))
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", env.log_tail()));
    let counted = events(&before);
    println!("before the restart: {counted:?}");

    let mut old = env.take_daemon();
    old.signal(libc::SIGKILL).unwrap();
    old.wait_exit(Duration::from_secs(10)).unwrap();
    env.start_daemon(&[]).unwrap_or_else(|e| panic!("{e:#}"));
    let after = events(&env.scrape());
    println!("after the restart: {after:?}");
    bad.check(after == counted, || {
        format!(
            "a restart neither resets nor inflates the connection tracking counts: before \
             {counted:?}, after {after:?}"
        )
    });
    // The connections still tracked still pass.
    kept.set_io_timeout(Duration::from_millis(800)).unwrap();
    if let Err(e) = kept.round_trip() {
        bad.push(format!("the connection kept across the restart: {e:#}"));
    }
    bad.finish("counters across a restart", &policy(true), &env.log_tail());
}
