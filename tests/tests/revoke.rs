//! End-to-end: tracked connections are re-checked after a policy reload (SIGHUP), and those
//! the new policy would not admit "if their opening packet were sent now" are revoked: their
//! next packets are judged as new ones (a mid-stream TCP segment opens nothing) and dropped,
//! in both directions, and each revoked connection is counted in
//! `isolator_conntrack_events_total{event="revoked"}`. Connections the new policy still
//! admits keep passing, without a single dropped packet.
//!
//! Each test runs the service lab ([`isolator_tests::service_lab`]: VMs of three
//! tenants on one bridge, a router to an outside host) under a policy of its own (see [`Policy`]: the service lab's topology, with the flows, exposures and egress
//! that each test switches). Every connection is a real TCP connection whose two ends the
//! test holds: a listener in the server's namespace, a client in the client's namespace
//! (both made through `in_netns`), data exchanged both ways before the reload, and after it
//! written on both ends and looked for on the other end.
//!
//! Exact counts: nothing but the test's own connections opens a tracked connection in these
//! labs (the echo servers of the service lab only answer, and nothing connects to them), so
//! `isolator_conntrack_entries` is checked to equal the number of cross-boundary connections
//! the test opened, and the `revoked` series must grow by exactly the number of those the new
//! policy no longer admits. Neighbour entries between the VMs that talk across a boundary are
//! static, so that what stalls a revoked connection is the connection table and not ARP/ND
//! (which the new policy may also refuse).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use isolator_common::verdict;
use isolator_tests::metrics::{CONNTRACK_EVENTS, DROP_PACKETS};
use isolator_tests::net::TcpPair;
use isolator_tests::service_lab::{OUTSIDE, OUTSIDE_V4, OUTSIDE_V6, ServiceLab, spec};
use isolator_tests::{Dir, Env, Expect, Scrape, Series, TcpOutcome, tcp_probe};

use crate::common::service;

/// Ports of the test's own listeners: none of the service lab's echo ports.
const PORT_REVOKED: u16 = 7001;
const PORT_KEPT: u16 = 7002;
const PORT_SAME: u16 = 7003;
const PORT_EXPOSED: u16 = 7080;
const PORT_OTHER: u16 = 7081;
const PORT_OUT: [u16; 3] = [7443, 7444, 7445];

/// Connect timeout of a connection that must be established.
const CONNECT: Duration = Duration::from_secs(3);
/// Connect timeout of a new connection that must fail.
const BLOCKED: Duration = Duration::from_millis(1000);
/// Read and write timeout on every socket: nothing waits longer.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// How long data written on a revoked connection is given to (not) arrive.
const STALL: Duration = Duration::from_secs(1);
/// How long a reload that must revoke nothing is watched for a wrong revocation.
const NO_REVOCATION: Duration = Duration::from_secs(1);

/// The policy of these tests: the service lab's tenants and segments (every vif managed, all
/// enforced), the management prefixes, and what each test switches: acme's flows, the
/// exposed endpoints of globex/api, and the egress of acme/web. acme/db and globex/api have
/// `egress: deny`, globex/ops `egress: allow`.
#[derive(Clone, Debug)]
struct Policy {
    flows: Vec<String>,
    api_expose: Vec<String>,
    web_egress: &'static str,
    newcomers: bool,
}

impl Policy {
    fn new() -> Policy {
        Policy {
            flows: Vec::new(),
            api_expose: Vec::new(),
            web_egress: "allow",
            newcomers: false,
        }
    }

    /// A tenant `aardvark` before every other, and a segment `cache` of acme before `web`
    /// (no VM in either): every segment of the lab is in another place in the file.
    fn newcomers(mut self) -> Policy {
        self.newcomers = true;
        self
    }

    /// A flow of tenant acme, `from` -> `to`, TCP `port`.
    fn flow(mut self, from: &str, to: &str, port: u16) -> Policy {
        self.flows.push(format!(
            "{{from: {from}, to: {to}, protocol: tcp, ports: {port}}}"
        ));
        self
    }

    /// An exposed endpoint of globex/api: TCP `port` of `address`.
    fn expose(mut self, address: &str, port: u16) -> Policy {
        self.api_expose.push(format!(
            "{{address: \"{address}\", protocol: tcp, ports: {port}}}"
        ));
        self
    }

    fn web_egress(mut self, egress: &'static str) -> Policy {
        self.web_egress = egress;
        self
    }

    fn yaml(&self) -> String {
        format!(
            r#"# isolator revocation tests (tests/tests/revoke.rs); the gateways are the router's
version: 1
management:
  - prefix: 192.168.100.0/24
  - prefix: fd00:ff::/64
tenants:
{aardvark}  - name: acme
    flows: [{flows}]
    segments:
{cache}      - name: web
        egress: {web_egress}
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/28, "fd00:1:1::/64"]
        gateways: [{{address: 10.1.1.1}}, {{address: "fd00:1:1::1"}}]
      - name: db
        egress: deny
        interfaces: ["vacme-db*"]
        prefixes: [10.1.2.0/28, "fd00:1:2::/64"]
        gateways: [{{address: 10.1.2.1}}, {{address: "fd00:1:2::1"}}]
  - name: globex
    segments:
      - name: api
        egress: deny
        interfaces: ["vglobex-api*"]
        prefixes: [10.2.1.0/28, "fd00:2:1::/64"]
        gateways: [{{address: 10.2.1.1}}, {{address: "fd00:2:1::1"}}]
        expose: [{expose}]
      - name: ops
        interfaces: ["vglobex-ops*"]
        prefixes: [10.2.2.0/28, "fd00:2:2::/64"]
        gateways: [{{address: 10.2.2.1}}, {{address: "fd00:2:2::1"}}]
  - name: initech
    segments:
      - name: lab
        interfaces: ["vinitech-lab*"]
        prefixes: [10.3.1.0/28, "fd00:3:1::/64"]
        gateways: [{{address: 10.3.1.1}}, {{address: "fd00:3:1::1"}}]
      - name: dev
        interfaces: ["vinitech-dev*"]
        prefixes: [10.3.2.0/28, "fd00:3:2::/64"]
        gateways: [{{address: 10.3.2.1}}, {{address: "fd00:3:2::1"}}]
"#,
            flows = self.flows.join(", "),
            expose = self.api_expose.join(", "),
            web_egress = self.web_egress,
            aardvark = if self.newcomers {
                "  - name: aardvark\n    segments:\n      - name: first\n        \
                 interfaces: [\"vaardvark-*\"]\n        prefixes: [10.9.9.0/28]\n"
            } else {
                ""
            },
            cache = if self.newcomers {
                "      - name: cache\n        interfaces: [\"vacme-cache*\"]\n        \
                 prefixes: [10.1.9.0/28]\n"
            } else {
                ""
            },
        )
    }
}

/// The revocation counter.
fn revoked() -> Series {
    Series::conntrack_event("revoked")
}

/// Dropped packets on VM `vm`'s vif in `dir` for `reason`.
fn drop(vm: &str, dir: Dir, reason: u8) -> Series {
    Series::drop(&spec(vm).vif(), dir, reason)
}

/// The service lab under `policy`.
fn start(hint: &str, policy: &Policy) -> Env<ServiceLab> {
    service(hint, &policy.yaml())
}

/// What the tests do on their lab.
trait RevokeEnv {
    /// The connection-tracking and drop counters and the daemon's output, for failure
    /// messages.
    fn report(&self) -> String;
    /// Permanent neighbour entries between VMs `a` and `b`, both ways, both families: no
    /// ARP/ND between them, whatever the policy says about it.
    fn static_neighbours(&self, a: &str, b: &str);
    /// Opens a TCP connection from `client` (VM or host) to `target`, served by a listener
    /// of the test in `server`, and exchanges data both ways once. Panics unless it all
    /// works.
    fn connect(&self, what: &str, client: &str, server: &str, target: &str) -> Conn;
    /// Asserts that exactly `n` connections are tracked: the test's own.
    fn assert_entries(&self, n: usize, why: &str);
    /// Writes `policy`, sends SIGHUP, waits until the reload is counted as succeeded, and
    /// then until exactly `n` more connections are counted as revoked (and no more come).
    fn reload_revoking(&self, policy: &Policy, n: usize, why: &str) -> Scrape;
    /// A new connection from `client` to `target` (a listener bound there in `server`)
    /// must not be established, and its SYNs are dropped where `judged` says: (VM whose
    /// vif judges them, direction, reason).
    fn assert_new_connection_fails(
        &self,
        what: &str,
        client: &str,
        server: &str,
        target: &str,
        judged: (&str, Dir, u8),
    );
    /// Asserts, for each `(vm, direction, reason, why)`, that the drop counter grew between
    /// the two scrapes.
    fn assert_drops_grew(&self, before: &Scrape, after: &Scrape, cases: &[(&str, Dir, u8, &str)]);
}

impl RevokeEnv for Env<ServiceLab> {
    fn report(&self) -> String {
        match self.daemon().scrape() {
            Ok(m) => format!(
                "connection tracking now:\n{}  {:?}\ndrop counters now:\n{}daemon output:\n{}",
                m.dump(CONNTRACK_EVENTS),
                m.value(&Series::conntrack_entries()),
                m.dump(DROP_PACKETS),
                self.log_tail()
            ),
            Err(e) => format!("(cannot scrape /metrics: {e:#})"),
        }
    }

    fn static_neighbours(&self, a: &str, b: &str) {
        let (va, vb) = (self.vm(a), self.vm(b));
        for (from, to) in [(va, vb), (vb, va)] {
            for addr in [to.v4(), to.v6()] {
                self.lab()
                    .static_neigh(from, to, addr)
                    .unwrap_or_else(|e| panic!("neighbour {addr} in {}: {e:#}", from.name));
            }
        }
    }

    fn connect(&self, what: &str, client: &str, server: &str, target: &str) -> Conn {
        let target: SocketAddr = target.parse().expect("socket address");
        let what = format!("{what} ({client} -> {server} at {target})");
        let mut conn = Conn::open(&what, self.ns(client), self.ns(server), target)
            .unwrap_or_else(|e| panic!("{what}: expected a connection: {e:#}\n{}", self.report()));
        if let Err(e) = conn.round_trip() {
            panic!(
                "{}: expected data to pass both ways before the reload: {e:#}\n{}",
                conn.what,
                self.report()
            );
        }
        conn
    }

    fn assert_entries(&self, n: usize, why: &str) {
        let got = self.value(&Series::conntrack_entries());
        assert_eq!(
            got,
            n as f64,
            "{why}: expected exactly {n} tracked connections, got {got}\n{}",
            self.report()
        );
    }

    fn reload_revoking(&self, policy: &Policy, n: usize, why: &str) -> Scrape {
        let before = self.scrape();
        self.reload(&policy.yaml(), true)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.report()));
        let mut expect = Expect::new().grows(revoked(), n as f64);
        if n == 0 {
            expect = expect.settle(NO_REVOCATION);
        }
        self.daemon()
            .expect(&before, &expect)
            .unwrap_or_else(|e| panic!("{why}: {e:#}\n{}", self.report()))
    }

    fn assert_new_connection_fails(
        &self,
        what: &str,
        client: &str,
        server: &str,
        target: &str,
        judged: (&str, Dir, u8),
    ) {
        let target: SocketAddr = target.parse().expect("socket address");
        let before = self.scrape();
        let got = tcp_probe(
            self.ns(client),
            self.ns(server),
            target.ip(),
            target.port(),
            BLOCKED,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            matches!(got, TcpOutcome::ConnectFailed(_)),
            "{what}: a new connection {client} -> {target} after the reload must fail, got \
             {got:?}\n{}",
            self.report()
        );
        let (vm, dir, reason) = judged;
        let why = format!("{what}: the new connection's SYNs");
        self.assert_drops_grew(&before, &self.scrape(), &[(vm, dir, reason, &why)]);
    }

    fn assert_drops_grew(&self, before: &Scrape, after: &Scrape, cases: &[(&str, Dir, u8, &str)]) {
        let mut wrong = Vec::new();
        for (vm, dir, reason, why) in cases {
            let series = drop(vm, *dir, *reason);
            let grew = after
                .delta(before, &series)
                .unwrap_or_else(|e| panic!("{e:#}"));
            if grew <= 0.0 {
                wrong.push(format!("{why}: expected {series} to grow, it did not"));
            }
        }
        assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), self.report());
    }
}

/// One TCP connection between two lab namespaces; the test holds both ends.
struct Conn {
    what: String,
    pair: TcpPair,
}

impl Conn {
    /// Binds a listener at `target` in `server_ns`, connects to it from `client_ns`, accepts.
    fn open(what: &str, client_ns: &str, server_ns: &str, target: SocketAddr) -> Result<Conn> {
        let pair = TcpPair::open(client_ns, server_ns, target, CONNECT)?;
        pair.set_io_timeout(IO_TIMEOUT)?;
        Ok(Conn {
            what: what.to_string(),
            pair,
        })
    }

    /// A request client -> server and a reply server -> client, each read in full by the
    /// other end within [`IO_TIMEOUT`]. Returns how long it took.
    fn round_trip(&mut self) -> Result<Duration> {
        self.pair.round_trip()
    }

    /// Writes a line on each end (client -> server and server -> client), without waiting.
    fn send_both(&mut self) -> Result<()> {
        self.pair
            .client
            .write_all(b"after the reload: client -> server\n")?;
        self.pair
            .server
            .write_all(b"after the reload: server -> client\n")?;
        Ok(())
    }

    /// What has arrived so far, without waiting: (at the server, at the client).
    fn arrived(&mut self) -> Result<(Vec<u8>, Vec<u8>)> {
        Ok((drain(&mut self.pair.server)?, drain(&mut self.pair.client)?))
    }
}

/// Reads whatever is in the socket's receive queue now.
fn drain(s: &mut TcpStream) -> Result<Vec<u8>> {
    s.set_nonblocking(true)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let result = loop {
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    s.set_nonblocking(false)?;
    result?;
    Ok(got)
}

/// After a reload that must have revoked every connection of `conns`: writes on both ends of
/// each, waits [`STALL`], and fails unless nothing arrived at either end.
fn assert_stalled(env: &Env<ServiceLab>, conns: &mut [&mut Conn], why: &str) {
    for c in conns.iter_mut() {
        if let Err(e) = c.send_both() {
            panic!("{}: writing after the reload: {e:#}", c.what);
        }
    }
    std::thread::sleep(STALL);
    let mut leaked = Vec::new();
    for c in conns.iter_mut() {
        let (at_server, at_client) = c
            .arrived()
            .unwrap_or_else(|e| panic!("{}: reading after the reload: {e:#}", c.what));
        for (dir, got) in [
            ("client -> server", at_server),
            ("server -> client", at_client),
        ] {
            if !got.is_empty() {
                leaked.push(format!(
                    "{} [{dir}]: {:?} arrived",
                    c.what,
                    String::from_utf8_lossy(&got)
                ));
            }
        }
    }
    assert!(
        leaked.is_empty(),
        "{why}: the connection must be revoked, so that data written on it after the reload \
         does not arrive within {STALL:?} in either direction; it did:\n  {}\n{}",
        leaked.join("\n  "),
        env.report()
    );
}

/// The connection must still carry data both ways after the reload.
fn assert_survives(env: &Env<ServiceLab>, conn: &mut Conn, why: &str) {
    for _ in 0..3 {
        if let Err(e) = conn.round_trip() {
            panic!(
                "{why}: {} must keep carrying data both ways after the reload: {e:#}\n{}",
                conn.what,
                env.report()
            );
        }
    }
}

/// 1. A flow removed by a reload revokes the connection it admitted: data stalls both ways
///    (dropped as `cross_segment` on the sender's vif), a new connection fails, and the
///    `revoked` series counts exactly that one connection.
#[test]
fn removing_a_flow_revokes_its_tracked_connection() {
    let with_flow = Policy::new().flow("web", "db", PORT_REVOKED);
    let env = start("revoke-flow", &with_flow);
    env.static_neighbours("acme-web1", "acme-db1");
    env.static_neighbours("acme-web1", "acme-web2");
    let mut conn = env.connect(
        "flow web -> db tcp 7001",
        "acme-web1",
        "acme-db1",
        &format!("10.1.2.2:{PORT_REVOKED}"),
    );
    // The twin: a connection of the same VM that no policy can revoke.
    let mut same = env.connect(
        "same segment (never tracked)",
        "acme-web1",
        "acme-web2",
        &format!("10.1.1.3:{PORT_SAME}"),
    );
    env.assert_entries(
        2,
        "one connection over the flow, tracked at each of its two vifs; nothing else \
         crosses a boundary",
    );

    env.reload_revoking(
        &Policy::new(),
        2,
        "the reload removed the flow of the one tracked connection (at both vifs)",
    );
    let before = env.scrape();
    assert_stalled(
        &env,
        &mut [&mut conn],
        "the reload removed the only flow web -> db",
    );
    let after = env.scrape();
    assert_survives(&env, &mut same, "a connection within acme/web");
    env.assert_drops_grew(
        &before,
        &after,
        &[
            (
                "acme-web1",
                Dir::Ingress,
                verdict::CROSS_SEGMENT,
                "acme-web1 wrote on the revoked connection",
            ),
            (
                "acme-db1",
                Dir::Ingress,
                verdict::CROSS_SEGMENT,
                "acme-db1 answered on the revoked connection",
            ),
        ],
    );
    env.assert_new_connection_fails(
        "no flow web -> db any more",
        "acme-web1",
        "acme-db1",
        &format!("10.1.2.2:{PORT_REVOKED}"),
        ("acme-web1", Dir::Ingress, verdict::CROSS_SEGMENT),
    );
    env.assert_entries(0, "the revoked connection left the table");
}

/// 2. A reload that removes one flow revokes nothing else: a connection over a flow that
///    stays, connections from another tenant's VM and from the outside host to an endpoint
///    that stays exposed, and a connection within a segment keep exchanging data while the
///    policy is swapped and after, with no failed round trip and no dropped packet; at most
///    the one connection of the removed flow is counted as revoked (that it stalls is test 1's
///    assertion, in the same scenario).
#[test]
fn connections_the_new_policy_still_allows_survive_the_reload() {
    let base = Policy::new()
        .flow("web", "db", PORT_KEPT)
        .expose("10.2.1.3", PORT_EXPOSED);
    let before_policy = base.clone().flow("web", "db", PORT_REVOKED);
    let env = start("revoke-keep", &before_policy);
    env.static_neighbours("acme-web1", "acme-db1");
    env.static_neighbours("acme-db1", "globex-api2");
    env.static_neighbours("acme-web1", "acme-web2");

    let _doomed = env.connect(
        "flow web -> db tcp 7001 (removed by the reload)",
        "acme-web1",
        "acme-db1",
        &format!("10.1.2.2:{PORT_REVOKED}"),
    );
    let mut survivors = [
        env.connect(
            "flow web -> db tcp 7002 (stays)",
            "acme-web1",
            "acme-db1",
            &format!("10.1.2.2:{PORT_KEPT}"),
        ),
        env.connect(
            "exposed 10.2.1.3 tcp 7080 (stays), from another tenant",
            "acme-db1",
            "globex-api2",
            &format!("10.2.1.3:{PORT_EXPOSED}"),
        ),
        env.connect(
            "exposed 10.2.1.3 tcp 7080 (stays), from the outside host",
            OUTSIDE,
            "globex-api2",
            &format!("10.2.1.3:{PORT_EXPOSED}"),
        ),
        env.connect(
            "same segment (never tracked)",
            "acme-web1",
            "acme-web2",
            &format!("10.1.1.3:{PORT_SAME}"),
        ),
    ];
    env.assert_entries(
        7,
        "four connections cross a boundary (the same-segment one does not): the three \
         between VMs tracked at both of their vifs, the outside host's at the server's",
    );
    let before = env.scrape();

    talking_through(&env, &mut survivors, || {
        env.reload(&base.yaml(), true)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", env.report()));
        let reloaded_at = Instant::now();
        // The idle connection of the removed flow, and only it, is revoked.
        env.daemon()
            .expect(&before, &Expect::new().grows(revoked(), 2.0))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", env.report()));
        reloaded_at
    });
    let after = env.scrape();

    // Not one packet of theirs was dropped (the doomed connection stayed idle). Were one of
    // them revoked, its answers would be dropped where the server sends them (ingress of the
    // server's vif: cross_segment, cross_tenant, egress_denied), while its requests would
    // still pass (the flow or exposure admits them). Egress drops are not looked at: the VMs'
    // MLD reports, flooded on the bridge, are dropped there as cross_* at any time.
    no_ingress_drops(
        &env,
        (&before, &after),
        &["acme-web1", "acme-web2", "acme-db1", "globex-api2"],
    );
    let grew = after
        .delta(&before, &revoked())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        grew,
        2.0,
        "exactly the connection of the removed flow is revoked (at both of its vifs)\n{}",
        env.report()
    );
    env.assert_entries(5, "the three tracked survivors stay in the tables");
}

/// Asserts that no frame was dropped at the ingress of `vms`' vifs between the two scrapes
/// (the connections across a reload lost no packet).
fn no_ingress_drops(env: &Env<ServiceLab>, (before, after): (&Scrape, &Scrape), vms: &[&str]) {
    for vm in vms {
        let series = Series::drops(&spec(vm).vif(), Dir::Ingress);
        let dropped = after
            .delta(before, &series)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            dropped,
            0.0,
            "the surviving connections must lose no packet across the reload, yet {series} \
             grew by {dropped}\n{}",
            env.report()
        );
    }
}

/// Round trips on every connection of `survivors`, every 20 ms, from 200 ms before
/// `reload` until 700 ms after it returns; asserts that none failed and that each made at
/// least 5 after the moment `reload` returns (what it returns).
fn talking_through(
    env: &Env<ServiceLab>,
    survivors: &mut [Conn],
    reload: impl FnOnce() -> Instant,
) {
    let stop = AtomicBool::new(false);
    let (reloaded_at, results) = std::thread::scope(|s| {
        let handles: Vec<_> = survivors
            .iter_mut()
            .map(|c| {
                let stop = &stop;
                s.spawn(move || {
                    let mut rtts: Vec<(Instant, Duration)> = Vec::new();
                    let give_up = Instant::now() + Duration::from_secs(20);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < give_up {
                        match c.round_trip() {
                            Ok(rtt) => rtts.push((Instant::now(), rtt)),
                            Err(e) => return (rtts, Some(format!("{e:#}"))),
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    (rtts, None)
                })
            })
            .collect();
        // Stops the round trips also when the reload panics (the scope joins them first).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let guard = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(200));
        let reloaded_at = reload();
        std::thread::sleep(Duration::from_millis(700));
        std::mem::drop(guard);
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (reloaded_at, results)
    });
    let mut wrong = Vec::new();
    for (c, (rtts, error)) in survivors.iter().zip(&results) {
        let max = rtts.iter().map(|(_, d)| *d).max().unwrap_or_default();
        let after_reload = rtts.iter().filter(|(t, _)| *t > reloaded_at).count();
        if let Some(e) = error {
            wrong.push(format!(
                "{}: a round trip failed after {} good ones: {e}",
                c.what,
                rtts.len()
            ));
        } else if after_reload < 5 {
            wrong.push(format!(
                "{}: only {after_reload} round trips completed after the reload (slowest \
                 {max:?})",
                c.what
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "connections the new policy still admits must keep exchanging data across the reload, \
         uninterrupted:\n  {}\n{}",
        wrong.join("\n  "),
        env.report()
    );
}

/// Issue 13, point 4: a reload that adds a tenant before every other and a segment before
/// the connections' own keeps every tracked connection, exchanging data without a pause or
/// a dropped packet, and revokes none: a connection records its peer's segment id, and ids
/// follow from names, not from places in the file (with ids in policy order, every
/// segment of the lab got another id and the re-check revoked what it no longer placed).
#[test]
fn a_reload_that_moves_every_segment_in_the_file_keeps_every_connection() {
    let policy = Policy::new()
        .flow("web", "db", PORT_KEPT)
        .expose("10.2.1.3", PORT_EXPOSED);
    let env = start("revoke-moved", &policy);
    env.static_neighbours("acme-web1", "acme-db1");
    env.static_neighbours("acme-db1", "globex-api2");
    let mut survivors = [
        env.connect(
            "flow web -> db tcp 7002",
            "acme-web1",
            "acme-db1",
            &format!("10.1.2.2:{PORT_KEPT}"),
        ),
        env.connect(
            "exposed 10.2.1.3 tcp 7080, from another tenant",
            "acme-db1",
            "globex-api2",
            &format!("10.2.1.3:{PORT_EXPOSED}"),
        ),
        env.connect(
            "exposed 10.2.1.3 tcp 7080, from the outside host",
            OUTSIDE,
            "globex-api2",
            &format!("10.2.1.3:{PORT_EXPOSED}"),
        ),
    ];
    env.assert_entries(
        5,
        "the two between VMs at both vifs, the outside host's at one",
    );
    let before = env.scrape();
    talking_through(&env, &mut survivors, || {
        env.reload(&policy.clone().newcomers().yaml(), true)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", env.report()));
        let reloaded_at = Instant::now();
        // The daemon's re-check has run when the reload is counted; give it a moment more.
        env.daemon()
            .expect(
                &before,
                &Expect::new().grows(revoked(), 0.0).settle(NO_REVOCATION),
            )
            .unwrap_or_else(|e| panic!("{e:#}\n{}", env.report()));
        reloaded_at
    });
    let after = env.scrape();
    no_ingress_drops(
        &env,
        (&before, &after),
        &["acme-web1", "acme-db1", "globex-api2"],
    );
    let grew = after
        .delta(&before, &revoked())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(grew, 0.0, "no connection is revoked\n{}", env.report());
    env.assert_entries(5, "every connection stays in the tables");
}

/// 3. Exposure: connections to an exposed endpoint, from another tenant's VM and from the
///    outside host (through the router), survive a reload that keeps the exposure (and
///    removes another one), and stall after a reload that removes it: `cross_tenant` on both
///    VMs' vifs, `not_exposed` where the outside's data reaches the server, `egress_denied`
///    for the server's answers to the outside (globex/api has `egress: deny`).
#[test]
fn removing_an_exposure_revokes_cross_tenant_and_outside_connections() {
    let exposed = format!("10.2.1.2:{PORT_EXPOSED}");
    let policy = Policy::new()
        .expose("10.2.1.2", PORT_EXPOSED)
        .expose("10.2.1.3", PORT_OTHER);
    let env = start("revoke-expose", &policy);
    env.static_neighbours("acme-db1", "globex-api1");
    let mut from_vm = env.connect(
        "exposed 10.2.1.2 tcp 7080, from another tenant",
        "acme-db1",
        "globex-api1",
        &exposed,
    );
    let mut from_outside = env.connect(
        "exposed 10.2.1.2 tcp 7080, from the outside host",
        OUTSIDE,
        "globex-api1",
        &exposed,
    );
    env.assert_entries(
        3,
        "two connections to the exposed endpoint: acme-db1's at both VMs' vifs, the \
         outside host's at the server's",
    );

    // A reload that keeps the exposure (it drops the other one): nothing is revoked.
    env.reload_revoking(
        &Policy::new().expose("10.2.1.2", PORT_EXPOSED),
        0,
        "a reload that keeps the exposure revokes nothing",
    );
    assert_survives(&env, &mut from_vm, "the reload kept the exposure");
    assert_survives(&env, &mut from_outside, "the reload kept the exposure");
    env.assert_entries(3, "both connections are still tracked");

    // A reload that removes it: both are revoked.
    env.reload_revoking(
        &Policy::new().expose("10.2.1.3", PORT_OTHER),
        3,
        "the reload removed the exposure both connections depended on",
    );
    let before = env.scrape();
    assert_stalled(
        &env,
        &mut [&mut from_vm, &mut from_outside],
        "the reload removed the exposure of 10.2.1.2 tcp 7080",
    );
    let after = env.scrape();
    env.assert_drops_grew(
        &before,
        &after,
        &[
            (
                "acme-db1",
                Dir::Ingress,
                verdict::CROSS_TENANT,
                "acme-db1 wrote on its revoked connection to globex",
            ),
            (
                "globex-api1",
                Dir::Ingress,
                verdict::CROSS_TENANT,
                "globex-api1 answered acme-db1 on the revoked connection",
            ),
            (
                "globex-api1",
                Dir::Egress,
                verdict::NOT_EXPOSED,
                "the outside host wrote on its revoked connection",
            ),
            (
                "globex-api1",
                Dir::Ingress,
                verdict::EGRESS_DENIED,
                "globex-api1 (egress: deny) answered the outside host on the revoked connection",
            ),
        ],
    );
    env.assert_new_connection_fails(
        "10.2.1.2 tcp 7080 is no longer exposed",
        "acme-db1",
        "globex-api1",
        &exposed,
        ("acme-db1", Dir::Ingress, verdict::CROSS_TENANT),
    );
    env.assert_new_connection_fails(
        "10.2.1.2 tcp 7080 is no longer exposed",
        OUTSIDE,
        "globex-api1",
        &exposed,
        ("globex-api1", Dir::Egress, verdict::NOT_EXPOSED),
    );
    env.assert_entries(0, "both revoked connections left the table");
    // The twin: the exposure the reload kept admits a new connection from the same VM.
    env.static_neighbours("acme-db1", "globex-api2");
    let mut kept = env.connect(
        "exposed 10.2.1.3 tcp 7081 (kept), from another tenant",
        "acme-db1",
        "globex-api2",
        &format!("10.2.1.3:{PORT_OTHER}"),
    );
    assert_survives(&env, &mut kept, "the reload kept the exposure of 10.2.1.3");
}

/// 4. `egress: allow` -> `egress: deny`: acme-web1's connections to the outside host (IPv4
///    and IPv6, through the router) stall: `egress_denied` for what acme-web1 sends,
///    `not_exposed` for what the outside sends it. globex/ops keeps `egress: allow`: its
///    connection to the outside survives.
#[test]
fn egress_deny_revokes_connections_to_the_outside() {
    let env = start("revoke-egress", &Policy::new());
    let mut out4 = env.connect(
        "acme/web egress allow, IPv4",
        "acme-web1",
        OUTSIDE,
        &format!("{OUTSIDE_V4}:{}", PORT_OUT[0]),
    );
    let mut out6 = env.connect(
        "acme/web egress allow, IPv6",
        "acme-web1",
        OUTSIDE,
        &format!("[{OUTSIDE_V6}]:{}", PORT_OUT[1]),
    );
    let mut ops = env.connect(
        "globex/ops egress allow (stays)",
        "globex-ops1",
        OUTSIDE,
        &format!("{OUTSIDE_V4}:{}", PORT_OUT[2]),
    );
    env.assert_entries(3, "three connections to the outside");

    env.reload_revoking(
        &Policy::new().web_egress("deny"),
        2,
        "the reload denied acme/web's egress: both of acme-web1's connections",
    );
    let before = env.scrape();
    assert_stalled(
        &env,
        &mut [&mut out4, &mut out6],
        "the reload set acme/web to egress: deny",
    );
    let after = env.scrape();
    assert_survives(&env, &mut ops, "globex/ops still has egress: allow");
    env.assert_drops_grew(
        &before,
        &after,
        &[
            (
                "acme-web1",
                Dir::Ingress,
                verdict::EGRESS_DENIED,
                "acme-web1 wrote on its revoked connections to the outside",
            ),
            (
                "acme-web1",
                Dir::Egress,
                verdict::NOT_EXPOSED,
                "the outside host answered on acme-web1's revoked connections",
            ),
        ],
    );
    env.assert_new_connection_fails(
        "acme/web has egress: deny",
        "acme-web1",
        OUTSIDE,
        &format!("{OUTSIDE_V4}:{}", PORT_OUT[0]),
        ("acme-web1", Dir::Ingress, verdict::EGRESS_DENIED),
    );
    env.assert_entries(1, "only globex-ops1's connection is still tracked");
}

/// 5. IPv6: of two connections web -> db over two flows, the reload removes one flow; its
///    connection stalls both ways, the other keeps carrying data, exactly one is revoked.
#[test]
fn removing_a_flow_revokes_its_ipv6_connection_and_keeps_the_other() {
    let kept = Policy::new().flow("web", "db", PORT_KEPT);
    let env = start("revoke-v6", &kept.clone().flow("web", "db", PORT_REVOKED));
    env.static_neighbours("acme-web1", "acme-db1");
    let mut doomed = env.connect(
        "flow web -> db tcp 7001, IPv6",
        "acme-web1",
        "acme-db1",
        &format!("[fd00:1:2::2]:{PORT_REVOKED}"),
    );
    let mut survivor = env.connect(
        "flow web -> db tcp 7002 (stays), IPv6",
        "acme-web1",
        "acme-db1",
        &format!("[fd00:1:2::2]:{PORT_KEPT}"),
    );
    env.assert_entries(4, "two connections over the flows, each at both vifs");

    env.reload_revoking(
        &kept,
        2,
        "the reload removed the flow of one of the two connections",
    );
    let before = env.scrape();
    assert_stalled(
        &env,
        &mut [&mut doomed],
        "the reload removed the flow web -> db tcp 7001",
    );
    let after = env.scrape();
    assert_survives(&env, &mut survivor, "the flow web -> db tcp 7002 stays");
    env.assert_drops_grew(
        &before,
        &after,
        &[
            (
                "acme-web1",
                Dir::Ingress,
                verdict::CROSS_SEGMENT,
                "acme-web1 wrote on the revoked IPv6 connection",
            ),
            (
                "acme-db1",
                Dir::Ingress,
                verdict::CROSS_SEGMENT,
                "acme-db1 answered on the revoked IPv6 connection",
            ),
        ],
    );
    env.assert_new_connection_fails(
        "no flow web -> db tcp 7001 any more",
        "acme-web1",
        "acme-db1",
        &format!("[fd00:1:2::2]:{PORT_REVOKED}"),
        ("acme-web1", Dir::Ingress, verdict::CROSS_SEGMENT),
    );
    env.assert_entries(2, "the surviving connection is still tracked, at both vifs");
}
