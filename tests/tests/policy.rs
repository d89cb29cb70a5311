//! What policy v1 says (exposed endpoints, flows, egress, audit mode, management
//! prefixes), checked with real tools and real packets on the service lab
//! ([`isolator_tests::service_lab`]: 8 VMs of 3 tenants on one bridge, a router to an
//! outside host, a management host; echo servers on every VM) under its policy.
//!
//! What each scan must find is written out in full in each test, not derived from the
//! policy: the policy is in `service_lab::policy_yaml()`, the expectations here are what an
//! operator reading it would expect. Scans from the router (whose addresses lie in every
//! segment) are the baseline: every listener is up and reachable through the bridge, so a
//! port a scan does not find open was closed by isolator.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use isolator_common::{limits, verdict};
use isolator_tests::echo::{EchoOutcome, HeldConnection, tcp_echo};
use isolator_tests::metrics::all_reasons;
use isolator_tests::metrics::{
    AUDIT_BYTES, AUDIT_PACKETS, CONNTRACK_CAPACITY, CONNTRACK_ENTRIES, CONNTRACK_EVENTS,
    DROP_PACKETS,
};
use isolator_tests::nmap::{
    Endpoint, Scan, addrs, endpoints, fmt_addrs, fmt_endpoints, host_discovery, tcp_connect_scan,
};
use isolator_tests::service_lab::{
    self, MGMT, MGMT_PORT, MGMT_V4, MGMT_V6, OUTSIDE, OUTSIDE_V4, OUTSIDE_V6, ROUTER_PORT,
    SCAN_PORTS, ServiceLab, spec,
};
use isolator_tests::{Dir, Env, Scrape, Series, ping_count};

use crate::common::{assert_well_formed, service_lab as start};

/// Payload of exchanges between VMs: large enough for many full-size segments each way.
const BIG: usize = 256 * 1024;
/// Payload of exchanges with the outside host, whose frames reach the VMs' vifs from a port
/// without XDP (non-linear socket buffers at the TC program): several full-size segments.
const OUTSIDE_PAYLOAD: usize = 16 * 1024;
/// Connect timeout of a probe that is expected to be refused.
const BLOCKED: Duration = Duration::from_millis(1000);
/// Connect timeout of a probe that is expected to pass.
const ALLOWED: Duration = Duration::from_secs(3);

/// The series of drops on VM `vm`'s vif, with the tenant and segment labels of its plan.
fn drop(vm: &str, dir: Dir, code: u8) -> Series {
    let s = spec(vm);
    Series::drop(&s.vif(), dir, code).of(s.seg.tenant, s.seg.segment)
}

/// The series of audit verdicts on VM `vm`'s vif, with its tenant and segment labels.
fn audit(vm: &str, dir: Dir, code: u8) -> Series {
    let s = spec(vm);
    Series::audit(&s.vif(), dir, code).of(s.seg.tenant, s.seg.segment)
}

/// What the tests do on the service lab, with the failure messages they need.
trait ServiceEnv {
    /// The non-zero drop and audit counters, for failure messages.
    fn counters(&self) -> String;
    /// `nmap -sT` from `from` (VM or host); panics with the output if nmap fails.
    fn scan(&self, from: &str, targets: &[&str]) -> Scan;
    /// Asserts that a scan from `from` found exactly `expected` open. An endpoint nmap
    /// reported open that must be closed gets a second look ([`ServiceEnv::second_look`]):
    /// only a report that nothing in the lab bears out passes, and is printed.
    fn assert_scan(&self, what: &str, from: &str, scan: &Scan, expected: &BTreeSet<Endpoint>);
    /// Whether endpoints `extra` that `scan` reported open were really reached: the
    /// evidence if any listener in the lab accepted a connection there, a direct connect
    /// succeeded or was answered, or a second scan finds them open again; else why the
    /// report is the scanner's own (a connect scan has reported a closed port open, rarely,
    /// with no SYN-ACK anywhere in the lab: isolator never sends a packet of its own).
    fn second_look(&self, scan: &Scan, extra: &BTreeSet<Endpoint>) -> Result<String, String>;
    /// A TCP echo exchange of `len` bytes from `from` to `target`.
    fn echo(&self, from: &str, target: &str, len: usize, timeout: Duration) -> EchoOutcome;
    /// Whether one ICMP echo from `from` to `dst` is answered within 1 s.
    fn ping(&self, from: &str, dst: &str) -> bool;
    /// Connections that VM or host `at` accepted from `peer`, as `local <- peer` lines.
    fn arrivals(&self, at: &str, peer: &str) -> Vec<String>;
    /// Scans every enforced segment from `ns`, a source outside every segment with
    /// addresses `peers`; see the implementation.
    fn assert_only_exposed_reachable(&self, who: &str, ns: &str, peers: [&str; 2]);
}

impl ServiceEnv for Env<ServiceLab> {
    fn counters(&self) -> String {
        match self.daemon().scrape() {
            Ok(m) => format!(
                "daemon counters now:\n{}{}",
                m.dump(DROP_PACKETS),
                m.dump(AUDIT_PACKETS)
            ),
            Err(e) => format!("(cannot scrape /metrics: {e:#})"),
        }
    }

    fn scan(&self, from: &str, targets: &[&str]) -> Scan {
        tcp_connect_scan(self.ns(from), targets, &SCAN_PORTS)
            .unwrap_or_else(|e| panic!("scan from {from}: {e:#}"))
    }

    fn assert_scan(&self, what: &str, from: &str, scan: &Scan, expected: &BTreeSet<Endpoint>) {
        if scan.open == *expected {
            return;
        }
        let missing: BTreeSet<_> = expected.difference(&scan.open).collect();
        let extra: BTreeSet<Endpoint> = scan.open.difference(expected).copied().collect();
        let second_look = if missing.is_empty() {
            match self.second_look(scan, &extra) {
                Ok(ghost) => {
                    eprintln!("{what}: a scan from {from}: {ghost}\n{scan}");
                    return;
                }
                Err(evidence) => evidence,
            }
        } else {
            String::new()
        };
        panic!(
            "{what}: a scan from {from} must find exactly {{{}}} open\n  \
             found open that must be closed: {}\n  \
             not found open that must be: {}\n{second_look}{scan}{}",
            fmt_endpoints(expected),
            fmt_endpoints(&extra),
            fmt_endpoints(missing),
            self.counters()
        );
    }

    fn second_look(&self, scan: &Scan, extra: &BTreeSet<Endpoint>) -> Result<String, String> {
        let mut evidence = String::new();
        let names = service_lab::VMS
            .iter()
            .map(|v| v.name)
            .chain([MGMT, OUTSIDE]);
        for name in names {
            for a in self.topo().servers(name).accepted() {
                if extra.contains(&(a.local.ip(), a.local.port())) {
                    evidence += &format!("  {name} accepted {} <- {}\n", a.local, a.peer);
                }
            }
        }
        for &(addr, port) in extra {
            for _ in 0..2 {
                let target = SocketAddr::new(addr, port);
                let outcome =
                    tcp_echo(&scan.ns, target, 16, BLOCKED).unwrap_or_else(|e| panic!("{e:#}"));
                if !outcome.refused() {
                    evidence += &format!("  a direct connect to {target}: {outcome:?}\n");
                }
            }
        }
        let addrs: BTreeSet<String> = extra.iter().map(|(a, _)| a.to_string()).collect();
        let ports: BTreeSet<u16> = extra.iter().map(|&(_, p)| p).collect();
        let ports: Vec<u16> = ports.into_iter().collect();
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let rescan = tcp_connect_scan(&scan.ns, &addrs, &ports)
            .unwrap_or_else(|e| panic!("a second scan: {e:#}"));
        if rescan.open.iter().any(|e| extra.contains(e)) {
            evidence += &format!("  a second scan found them open again:\n{rescan}");
        }
        if evidence.is_empty() {
            Ok(format!(
                "nmap reported {} open, but no listener in the lab accepted a connection \
                 there, two direct connects to each were refused and a second scan found \
                 them closed: a false report of the scanner's, not a way in",
                fmt_endpoints(extra)
            ))
        } else {
            Err(format!("a second look at what must be closed:\n{evidence}"))
        }
    }

    fn echo(&self, from: &str, target: &str, len: usize, timeout: Duration) -> EchoOutcome {
        let target: SocketAddr = target.parse().expect("socket address");
        tcp_echo(self.ns(from), target, len, timeout).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn ping(&self, from: &str, dst: &str) -> bool {
        let dst: IpAddr = dst.parse().expect("address");
        ping_count(
            self.ns(from),
            dst,
            1,
            Duration::ZERO,
            Duration::from_secs(1),
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
            == 1
    }

    fn arrivals(&self, at: &str, peer: &str) -> Vec<String> {
        let peer: IpAddr = peer.parse().expect("address");
        self.topo()
            .arrived_from(at, peer)
            .iter()
            .map(|a| format!("{} <- {}", a.local, a.peer))
            .collect()
    }

    /// Over IPv4 and IPv6 the scan finds exactly the exposed endpoints; every VM counts
    /// `not_exposed` drops on its egress (never on its ingress); the private VMs accepted
    /// nothing from `peers`, and the exposed one accepted the scan on its exposed port.
    fn assert_only_exposed_reachable(&self, who: &str, ns: &str, peers: [&str; 2]) {
        let all = [ACME.as_slice(), GLOBEX.as_slice()].concat();
        let before = self.scrape();
        for (targets, expected) in [
            (
                v4_targets(&all),
                endpoints(&[("10.1.1.2", 443), ("10.2.1.2", 80), ("10.2.1.3", 8080)]),
            ),
            (
                v6_targets(&all),
                endpoints(&[
                    ("fd00:1:1::2", 443),
                    ("fd00:2:1::2", 80),
                    ("fd00:2:1::3", 8080),
                ]),
            ),
        ] {
            let scan = tcp_connect_scan(ns, &strs(&targets), &SCAN_PORTS)
                .unwrap_or_else(|e| panic!("scan from {who}: {e:#}"));
            self.assert_scan(
                &format!("from {who}: the exposed endpoints"),
                who,
                &scan,
                &expected,
            );
        }
        let after = self.scrape();
        for vm in [
            "acme-web1",
            "acme-web2",
            "acme-db1",
            "globex-api1",
            "globex-ops1",
        ] {
            assert_grew(
                &before,
                &after,
                &drop(vm, Dir::Egress, verdict::NOT_EXPOSED),
                &format!("{who} scanned {vm}'s private ports"),
            );
            let ingress = drop(vm, Dir::Ingress, verdict::NOT_EXPOSED);
            assert_eq!(
                after.value(&ingress).unwrap(),
                0.0,
                "not_exposed is judged where traffic reaches a VM (egress), yet {ingress} moved"
            );
        }
        for vm in ["acme-db1", "globex-ops1", "acme-web2"] {
            for peer in peers {
                let got = self.arrivals(vm, peer);
                assert!(got.is_empty(), "{vm} accepted from {who}: {got:?}");
            }
        }
        // The twins: the exposed endpoints did accept the scan.
        for (vm, port) in [("acme-web1", 443), ("globex-api1", 80)] {
            for peer in peers {
                let got = self.arrivals(vm, peer);
                assert!(
                    got.iter().any(|a| a.contains(&format!(":{port} <-"))),
                    "{vm}'s exposed tcp {port} accepted nothing from {who} ({peer}): {got:?}"
                );
            }
        }
    }
}

/// One expected probe: what, from, to (socket address), payload, whether it must pass.
struct Probe {
    what: &'static str,
    from: &'static str,
    to: String,
    len: usize,
    allowed: bool,
}

fn probe(what: &'static str, from: &'static str, to: &str, len: usize, allowed: bool) -> Probe {
    Probe {
        what,
        from,
        to: to.to_string(),
        len,
        allowed,
    }
}

/// Runs the probes in parallel threads and fails with every wrong outcome at once.
fn check_probes(env: &Env<ServiceLab>, probes: &[Probe]) {
    let outcomes: Vec<EchoOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|p| {
                let timeout = if p.allowed { ALLOWED } else { BLOCKED };
                s.spawn(move || env.echo(p.from, &p.to, p.len, timeout))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut wrong = Vec::new();
    for (p, o) in probes.iter().zip(&outcomes) {
        let ok = if p.allowed { o.echoed() } else { o.refused() };
        if !ok {
            wrong.push(format!(
                "{}: {} -> {} ({} bytes): expected {}, got {o:?}",
                p.what,
                p.from,
                p.to,
                p.len,
                if p.allowed {
                    "the data echoed back"
                } else {
                    "no connection"
                }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "wrong outcomes:\n  {}\n{}",
        wrong.join("\n  "),
        env.counters()
    );
}

/// Asserts that `series` grew between the two scrapes.
fn assert_grew(before: &Scrape, after: &Scrape, series: &Series, why: &str) {
    let (b, a) = (
        before
            .value(series)
            .unwrap_or_else(|e| panic!("{why}: {e:#}")),
        after
            .value(series)
            .unwrap_or_else(|e| panic!("{why}: {e:#}")),
    );
    assert!(
        a > b,
        "{why}: expected {series} to grow, it went from {b} to {a}; now:\n{}{}",
        after.dump(series.name),
        after.dump(AUDIT_PACKETS)
    );
}

/// Asserts that `series` did not change between the two scrapes.
fn assert_unchanged(before: &Scrape, after: &Scrape, series: &Series, why: &str) {
    let (b, a) = (
        before
            .value(series)
            .unwrap_or_else(|e| panic!("{why}: {e:#}")),
        after
            .value(series)
            .unwrap_or_else(|e| panic!("{why}: {e:#}")),
    );
    assert!(
        a == b,
        "{why}: expected {series} to stay at {b}, it is {a}; now:\n{}",
        after.dump(series.name)
    );
}

fn v4_targets(segs: &[service_lab::Seg]) -> Vec<String> {
    segs.iter().map(|s| s.v4_prefix()).collect()
}

fn v6_targets(segs: &[service_lab::Seg]) -> Vec<String> {
    segs.iter().map(|s| s.v6_scan_range()).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every (address, port) of the listeners of `vms`, in one family: the baseline.
fn all_listeners(vms: &[&str], v6: bool) -> BTreeSet<Endpoint> {
    let mut set = BTreeSet::new();
    for vm in vms {
        let s = spec(vm);
        let a: IpAddr = if v6 { s.v6() } else { s.v4() }.parse().unwrap();
        for p in SCAN_PORTS {
            set.insert((a, p));
        }
    }
    set
}

const ACME: [service_lab::Seg; 2] = [service_lab::ACME_WEB, service_lab::ACME_DB];
const GLOBEX: [service_lab::Seg; 2] = [service_lab::GLOBEX_API, service_lab::GLOBEX_OPS];

/// Case 1 (and 4 as a scan): from another tenant, a TCP scan of globex's prefixes finds
/// exactly its exposed (address, port) pairs, plus the flow's port from the flow's source
/// segment; an ARP scan finds only the exposed hosts; ICMP exposure is per address.
#[test]
fn scans_from_another_tenant_find_exactly_the_exposed_endpoints_v4() {
    let env = start("scan4");
    let globex = v4_targets(&GLOBEX);
    let globex = strs(&globex);

    // The baseline: within each globex segment, every listener is found (what isolator
    // then hides from the others).
    let same = env.scan("globex-api2", &[&service_lab::GLOBEX_API.v4_prefix()]);
    env.assert_scan(
        "same segment: every listener of globex/api",
        "globex-api2",
        &same,
        &all_listeners(&["globex-api1", "globex-api2"], false),
    );
    let same = env.scan("globex-ops1", &[&service_lab::GLOBEX_OPS.v4_prefix()]);
    env.assert_scan(
        "same segment: every listener of globex/ops",
        "globex-ops1",
        &same,
        &all_listeners(&["globex-ops1"], false),
    );

    let before = env.scrape();
    let from_db = env.scan("acme-db1", &globex);
    env.assert_scan(
        "acme/db has no flow to globex: only globex's exposed endpoints",
        "acme-db1",
        &from_db,
        &endpoints(&[("10.2.1.2", 80), ("10.2.1.3", 8080)]),
    );
    let from_web = env.scan("acme-web1", &globex);
    env.assert_scan(
        "acme/web: globex's exposed endpoints and the flow acme/web -> globex/api tcp 9000",
        "acme-web1",
        &from_web,
        &endpoints(&[
            ("10.2.1.2", 80),
            ("10.2.1.3", 8080),
            ("10.2.1.2", 9000),
            ("10.2.1.3", 9000),
        ]),
    );
    let after = env.scrape();
    assert_grew(
        &before,
        &after,
        &drop("acme-db1", Dir::Ingress, verdict::CROSS_TENANT),
        "acme-db1 scanned globex",
    );
    assert_grew(
        &before,
        &after,
        &drop("acme-web1", Dir::Ingress, verdict::CROSS_TENANT),
        "acme-web1 scanned globex",
    );

    // What arrived: globex/ops is private, nothing from acme reached it; globex-api1 saw
    // acme-db1 only on its exposed port.
    for peer in ["10.1.2.2", "10.1.1.2"] {
        let got = env.arrivals("globex-ops1", peer);
        assert!(got.is_empty(), "globex-ops1 accepted from {peer}: {got:?}");
    }
    let got = env.arrivals("globex-api1", "10.1.2.2");
    assert!(
        !got.is_empty() && got.iter().all(|c| c.starts_with("10.2.1.2:80 ")),
        "globex-api1 must have accepted acme-db1's scan on 10.2.1.2:80 only: {got:?}"
    );

    // Layer 2: an ARP scan from a private VM sees only the exposed hosts of globex.
    let arp = host_discovery(env.ns("acme-db1"), &globex).unwrap();
    assert_eq!(
        arp.up,
        addrs(&["10.2.1.2", "10.2.1.3"]),
        "ARP scan of globex from acme-db1 must find exactly the hosts with exposed \
         endpoints:\n{arp}"
    );

    // ICMP exposure: 10.1.1.2 answers pings from anywhere, its neighbour does not.
    assert!(
        env.ping("acme-db1", "10.1.1.2"),
        "10.1.1.2 exposes icmp: acme-db1 must get an echo reply"
    );
    // Each blocked ping counted on its own, as cross_segment at acme-db1's vif.
    let cross = drop("acme-db1", Dir::Ingress, verdict::CROSS_SEGMENT);
    let mut before = env.scrape();
    for (dst, why) in [
        (
            "10.1.1.3",
            "10.1.1.3 exposes nothing: acme-db1's ping must be dropped",
        ),
        (
            "fd00:1:1::2",
            "fd00:1:1::2 exposes only tcp 443 (the icmp exposure is 10.1.1.2's)",
        ),
    ] {
        assert!(!env.ping("acme-db1", dst), "{why}");
        let after = env.scrape();
        assert_grew(&before, &after, &cross, &format!("acme-db1 pinged {dst}"));
        before = after;
    }
}

/// Case 6: the same over IPv6 (nmap -6 over the first 16 addresses of each /64).
#[test]
fn scans_from_another_tenant_find_exactly_the_exposed_endpoints_v6() {
    let env = start("scan6");
    let globex = v6_targets(&GLOBEX);
    let globex = strs(&globex);

    // The baseline: within each globex segment, every listener is found.
    for (vm, seg, listeners) in [
        (
            "globex-api2",
            service_lab::GLOBEX_API,
            &["globex-api1", "globex-api2"][..],
        ),
        ("globex-ops1", service_lab::GLOBEX_OPS, &["globex-ops1"][..]),
    ] {
        let same = env.scan(vm, &[&seg.v6_scan_range()]);
        env.assert_scan(
            &format!("same segment: every IPv6 listener of {}", seg.path()),
            vm,
            &same,
            &all_listeners(listeners, true),
        );
    }
    let before = env.scrape();
    let from_db = env.scan("acme-db1", &globex);
    env.assert_scan(
        "acme/db has no flow to globex: only globex's exposed IPv6 endpoints",
        "acme-db1",
        &from_db,
        &endpoints(&[("fd00:2:1::2", 80), ("fd00:2:1::3", 8080)]),
    );
    let from_web = env.scan("acme-web1", &globex);
    env.assert_scan(
        "acme/web: globex's exposed IPv6 endpoints and the flow's tcp 9000",
        "acme-web1",
        &from_web,
        &endpoints(&[
            ("fd00:2:1::2", 80),
            ("fd00:2:1::3", 8080),
            ("fd00:2:1::2", 9000),
            ("fd00:2:1::3", 9000),
        ]),
    );
    let after = env.scrape();
    assert_grew(
        &before,
        &after,
        &drop("acme-db1", Dir::Ingress, verdict::CROSS_TENANT),
        "acme-db1 scanned globex over IPv6",
    );
    let got = env.arrivals("globex-ops1", "fd00:1:2::2");
    assert!(
        got.is_empty(),
        "globex-ops1 accepted from acme-db1: {got:?}"
    );

    let nd = host_discovery(env.ns("acme-db1"), &globex).unwrap();
    assert_eq!(
        nd.up,
        addrs(&["fd00:2:1::2", "fd00:2:1::3"]),
        "neighbour-discovery scan of globex from acme-db1 must find exactly the hosts with \
         exposed endpoints:\n{nd}"
    );
}

/// Case 2: the management host, with listeners on every scanned port, shows nothing to any
/// VM (enforced, egress denied, or in audit mode), over IPv4 and IPv6; every attempt is a
/// `management` drop on the VM's vif, never an audit verdict.
#[test]
fn management_host_is_unreachable_from_every_vm() {
    let env = start("mgmt");
    let baseline4 = env.scan(service_lab::ROUTER, &[MGMT_V4]);
    let baseline6 = env.scan(service_lab::ROUTER, &[MGMT_V6]);
    for (scan, a) in [(&baseline4, MGMT_V4), (&baseline6, MGMT_V6)] {
        let all: BTreeSet<Endpoint> = SCAN_PORTS
            .iter()
            .map(|p| (a.parse().unwrap(), *p))
            .collect();
        env.assert_scan(
            "baseline: the management host's listeners",
            "router",
            scan,
            &all,
        );
    }

    let vms = ["acme-web1", "acme-db1", "initech-lab1"];
    let before = env.scrape();
    let scans: Vec<(&str, Scan, Scan)> = std::thread::scope(|s| {
        let handles: Vec<_> = vms
            .iter()
            .map(|vm| {
                let env = &env;
                s.spawn(move || (*vm, env.scan(vm, &[MGMT_V4]), env.scan(vm, &[MGMT_V6])))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (vm, s4, s6) in &scans {
        env.assert_scan("management prefix", vm, s4, &BTreeSet::new());
        env.assert_scan("management prefix", vm, s6, &BTreeSet::new());
    }
    assert!(
        env.ping(service_lab::ROUTER, MGMT_V4),
        "baseline: the router gets a ping reply from {MGMT_V4}"
    );
    for vm in vms {
        assert!(
            !env.ping(vm, MGMT_V4),
            "{vm} must not get a ping reply from {MGMT_V4}"
        );
    }
    let after = env.scrape();
    for vm in vms {
        let s = spec(vm);
        for peer in [s.v4(), s.v6()] {
            let got = env.arrivals(MGMT, &peer);
            assert!(
                got.is_empty(),
                "the management host accepted connections from {vm}: {got:?}"
            );
        }
        let series = drop(vm, Dir::Ingress, verdict::MANAGEMENT);
        assert_grew(
            &before,
            &after,
            &series,
            &format!("{vm} scanned the management host"),
        );
        assert_grew(
            &before,
            &after,
            &series.bytes(),
            &format!("{vm} scanned the management host"),
        );
        // Never audited, not even in the audit segment.
        let audited = audit(vm, Dir::Ingress, verdict::MANAGEMENT);
        assert_eq!(
            after.value(&audited).unwrap(),
            0.0,
            "management is never audited, yet {audited} is non-zero:\n{}",
            after.dump(AUDIT_PACKETS)
        );
    }
}

/// I3 and "a scan finds nothing" at layer 2: a VM must not even learn that a management host
/// exists. An ARP request or neighbour solicitation for a management address is dropped
/// (`management`), so `nmap -sn` finds no host and learns no MAC address.
#[test]
fn management_host_is_invisible_to_address_resolution_scans() {
    let env = start("mgmt-l2");
    // The twin: from the router, on the bridge but no VM, the same scans find it.
    for target in [MGMT_V4, MGMT_V6] {
        let seen = host_discovery(env.ns(service_lab::ROUTER), &[target]).unwrap();
        assert_eq!(
            seen.up,
            addrs(&[target]),
            "baseline: a scan from the router finds the management host\n{seen}"
        );
    }
    let before = env.scrape();
    let arp = host_discovery(env.ns("acme-db1"), &[MGMT_V4]).unwrap();
    let nd = host_discovery(env.ns("acme-db1"), &[MGMT_V6]).unwrap();
    assert!(
        arp.up.is_empty() && nd.up.is_empty(),
        "an ARP/ND scan from acme-db1 must not find the management host; found {} and {}\n\
         {arp}{nd}{}",
        fmt_addrs(&arp.up),
        fmt_addrs(&nd.up),
        env.counters()
    );
    // Not found because isolator dropped the requests, as management.
    assert_grew(
        &before,
        &env.scrape(),
        &drop("acme-db1", Dir::Ingress, verdict::MANAGEMENT),
        "acme-db1 asked for the management host's addresses (ARP, ND)",
    );
}

/// Cases 3, 6 and 9: the flow acme/web -> acme/db tcp 5432 carries data both ways (the
/// replies are recognised as the connection's), over IPv4 and IPv6; it is one-way and for
/// its port only; the connection shows in the conntrack metrics while it is open.
#[test]
fn flow_within_a_tenant_carries_data_both_ways_and_only_one_way() {
    let env = start("flow");
    let before = env.scrape();
    {
        let mut held = HeldConnection::open(
            env.ns("acme-web1"),
            "10.1.2.2:5432".parse().unwrap(),
            ALLOWED,
        )
        .unwrap_or_else(|e| {
            panic!(
                "acme-web1 -> 10.1.2.2:5432 (flow): {e:#}\n{}",
                env.counters()
            )
        });
        let got = held.exchange(b"SELECT 1;\n").unwrap();
        assert_eq!(got, b"SELECT 1;\n", "the flow's reply came back changed");
        let m = env.scrape();
        let entries = m.value(&Series::conntrack_entries()).unwrap();
        let capacity = m.value(&Series::conntrack_capacity()).unwrap();
        let opened = Series::conntrack_event("opened");
        assert!(
            entries > 0.0,
            "a connection is open: {CONNTRACK_ENTRIES} must be > 0, got {entries}"
        );
        // Each VM's vif has its own tables of connections being opened and established.
        let per_vif = limits::CONNECTIONS_PER_VIF + limits::OPENING_PER_VIF;
        let vifs = env.lab().vms().len() as u32;
        assert_eq!(
            capacity,
            f64::from(per_vif * vifs),
            "{CONNTRACK_CAPACITY} is the size of every vif's tables together (docs/metrics.md)"
        );
        assert_grew(
            &before,
            &m,
            &opened,
            "acme-web1 opened a connection over the flow",
        );
    }
    check_probes(
        &env,
        &[
            probe("flow (IPv4)", "acme-web1", "10.1.2.2:5432", BIG, true),
            probe("flow (IPv6)", "acme-web1", "[fd00:1:2::2]:5432", BIG, true),
            probe(
                "flow from the other web VM",
                "acme-web2",
                "10.1.2.2:5432",
                BIG,
                true,
            ),
            // The listener on acme-web1:5432 is up: its own segment reaches it.
            probe("same segment", "acme-web2", "10.1.1.2:5432", BIG, true),
            probe(
                "reverse of the flow",
                "acme-db1",
                "10.1.1.2:5432",
                16,
                false,
            ),
            probe(
                "reverse of the flow (IPv6)",
                "acme-db1",
                "[fd00:1:1::2]:5432",
                16,
                false,
            ),
            probe(
                "flow is for 5432 only",
                "acme-web1",
                "10.1.2.2:22",
                16,
                false,
            ),
            probe(
                "flow is for 5432 only (IPv6)",
                "acme-web1",
                "[fd00:1:2::2]:22",
                16,
                false,
            ),
        ],
    );
    let after = env.scrape();
    assert_grew(
        &before,
        &after,
        &drop("acme-db1", Dir::Ingress, verdict::CROSS_SEGMENT),
        "acme-db1 tried the reverse of the flow",
    );
    assert_grew(
        &before,
        &after,
        &drop("acme-web1", Dir::Ingress, verdict::CROSS_SEGMENT),
        "acme-web1 tried acme-db1:22",
    );
    // The data went both ways through both vifs: passes in both directions on the db vif.
    for dir in Dir::BOTH {
        let series = Series::pass("vacme-db1", dir).of("acme", "db");
        let grew = after.value(&series).unwrap() - before.value(&series).unwrap();
        // At least 4 frames per 256 KiB even if the veth hands over 64 KiB GSO packets.
        assert!(
            grew >= 12.0,
            "3 x 256 KiB each way over the flow: {series} grew by only {grew}"
        );
    }
    for peer in ["10.1.2.2", "fd00:1:2::2"] {
        let got = env.arrivals("acme-web1", peer);
        assert!(got.is_empty(), "acme-web1 accepted from acme-db1: {got:?}");
    }
}

/// Case 4: the cross-tenant flow acme/web -> globex/api tcp 9000 admits exactly that: from
/// acme/web, to globex/api, to port 9000, one way.
#[test]
fn cross_tenant_flow_admits_only_its_port_and_direction() {
    let env = start("xflow");
    let before = env.scrape();
    check_probes(
        &env,
        &[
            probe("cross-tenant flow", "acme-web1", "10.2.1.2:9000", BIG, true),
            probe(
                "cross-tenant flow (IPv6)",
                "acme-web1",
                "[fd00:2:1::3]:9000",
                BIG,
                true,
            ),
            probe("cross-tenant flow", "acme-web2", "10.2.1.3:9000", BIG, true),
            probe("exposed endpoint", "acme-web1", "10.2.1.2:80", BIG, true),
            probe("other port", "acme-web1", "10.2.1.2:5432", 16, false),
            probe(
                "other port (IPv6)",
                "acme-web1",
                "[fd00:2:1::2]:22",
                16,
                false,
            ),
            probe(
                "other segment of globex",
                "acme-web1",
                "10.2.2.2:9000",
                16,
                false,
            ),
            probe(
                "other segment of acme",
                "acme-db1",
                "10.2.1.2:9000",
                16,
                false,
            ),
            probe("reverse", "globex-api1", "10.1.1.2:9000", 16, false),
            probe(
                "reverse (IPv6)",
                "globex-api1",
                "[fd00:1:1::3]:9000",
                16,
                false,
            ),
        ],
    );
    let after = env.scrape();
    for (vm, why) in [
        ("acme-web1", "acme-web1 tried ports the flow does not name"),
        ("acme-db1", "acme-db1 is not the flow's source"),
        ("globex-api1", "globex-api1 tried the reverse of the flow"),
    ] {
        assert_grew(
            &before,
            &after,
            &drop(vm, Dir::Ingress, verdict::CROSS_TENANT),
            why,
        );
    }
    let got = env.arrivals("globex-ops1", "10.1.1.2");
    assert!(
        got.is_empty(),
        "globex-ops1 accepted from acme-web1: {got:?}"
    );
}

/// Case 5 (and 6): from the outside host, through the router, a scan of every enforced
/// segment finds exactly the exposed endpoints, over IPv4 and IPv6; everything else is a
/// `not_exposed` drop on the egress side of the target's vif.
#[test]
fn outside_host_reaches_only_exposed_endpoints() {
    let env = start("outside");
    env.assert_only_exposed_reachable(
        "the outside host",
        env.ns(OUTSIDE),
        [OUTSIDE_V4, OUTSIDE_V6],
    );
    assert!(
        env.ping(OUTSIDE, "10.1.1.2"),
        "10.1.1.2 exposes icmp: the outside host must get an echo reply"
    );
    assert!(
        !env.ping(OUTSIDE, "10.1.1.3"),
        "10.1.1.3 exposes nothing: the outside host's ping must be dropped"
    );
}

/// Issue 3, point 4: traffic the host itself sends (its own stack, which enters no vif's
/// ingress program on the way) is judged where it reaches a VM, like the outside host's.
/// The lab host gets an address outside every segment on the bridge and on-link routes to
/// the VMs; a scan from it finds exactly the exposed endpoints, over IPv4 and IPv6.
#[test]
fn the_hosts_own_stack_reaches_only_exposed_endpoints() {
    const HOST_V4: &str = "10.255.0.1";
    const HOST_V6: &str = "fd00:ee::1";
    let env = start("hoststack");
    let lab = env.lab();
    let host = lab.host_ns().to_string();
    let bridge = isolator_tests::lab::BRIDGE;
    isolator_tests::netns::sysctl(&host, &format!("net.ipv6.conf.{bridge}.disable_ipv6"), "0")
        .unwrap_or_else(|e| panic!("enabling IPv6 on the bridge: {e:#}"));
    for args in [
        vec!["ip", "addr", "add", "10.255.0.1/32", "dev", bridge],
        vec![
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:ee::1/128",
            "dev",
            bridge,
            "nodad",
        ],
        vec![
            "ip",
            "route",
            "add",
            "10.0.0.0/8",
            "dev",
            bridge,
            "src",
            HOST_V4,
        ],
        vec![
            "ip",
            "-6",
            "route",
            "add",
            "fd00::/16",
            "dev",
            bridge,
            "src",
            HOST_V6,
        ],
    ] {
        lab.exec_ok(&host, &args)
            .unwrap_or_else(|e| panic!("{}: {e:#}", args.join(" ")));
    }
    env.assert_only_exposed_reachable("the host's own stack", &host, [HOST_V4, HOST_V6]);
    let got = env.arrivals("acme-web1", HOST_V4);
    assert!(
        got.iter().any(|a| a.contains(":443 <-")),
        "the exposed endpoint 10.1.1.2:443 accepted the host's connection: {got:?}"
    );
}

/// Case 5: egress allow lets a VM open connections to the outside (and get the replies);
/// egress deny drops them (`egress_denied`), while the segment's exposed services still
/// answer the outside; a connection a VM opened does not open the VM to the outside.
#[test]
fn egress_allow_and_deny_towards_the_outside() {
    let env = start("egress");
    let out4 = format!("{OUTSIDE_V4}:443");
    let out6 = format!("[{OUTSIDE_V6}]:443");
    let before = env.scrape();
    check_probes(
        &env,
        &[
            probe(
                "acme/web: egress allow",
                "acme-web1",
                &out4,
                OUTSIDE_PAYLOAD,
                true,
            ),
            probe(
                "acme/web: egress allow (IPv6)",
                "acme-web2",
                &out6,
                OUTSIDE_PAYLOAD,
                true,
            ),
            probe(
                "globex/ops: egress allow by default",
                "globex-ops1",
                &out4,
                OUTSIDE_PAYLOAD,
                true,
            ),
            probe("globex/api: egress deny", "globex-api1", &out4, 16, false),
            probe(
                "globex/api: egress deny (IPv6)",
                "globex-api2",
                &out6,
                16,
                false,
            ),
            probe("acme/db: egress deny", "acme-db1", &out4, 16, false),
            probe(
                "exposed, egress deny",
                OUTSIDE,
                "10.2.1.2:80",
                OUTSIDE_PAYLOAD,
                true,
            ),
            probe(
                "exposed, egress deny (IPv6)",
                OUTSIDE,
                "[fd00:2:1::3]:8080",
                OUTSIDE_PAYLOAD,
                true,
            ),
            probe(
                "exposed, egress allow",
                OUTSIDE,
                "10.1.1.2:443",
                OUTSIDE_PAYLOAD,
                true,
            ),
        ],
    );
    // acme-web1 has just talked to the outside: that opens nothing towards it.
    check_probes(
        &env,
        &[
            probe(
                "not exposed, egress allow",
                OUTSIDE,
                "10.1.1.2:22",
                16,
                false,
            ),
            probe(
                "not exposed (IPv6)",
                OUTSIDE,
                "[fd00:1:1::3]:443",
                16,
                false,
            ),
            probe(
                "not exposed, egress deny",
                OUTSIDE,
                "10.2.1.2:8080",
                16,
                false,
            ),
        ],
    );
    let after = env.scrape();
    for vm in ["globex-api1", "globex-api2", "acme-db1"] {
        assert_grew(
            &before,
            &after,
            &drop(vm, Dir::Ingress, verdict::EGRESS_DENIED),
            &format!("{vm} (egress: deny) tried to reach the outside host"),
        );
    }
    for vm in ["acme-web1", "acme-web2", "globex-api1"] {
        assert_grew(
            &before,
            &after,
            &drop(vm, Dir::Egress, verdict::NOT_EXPOSED),
            &format!("the outside host tried a private port of {vm}"),
        );
    }
    for vm in ["acme-web1", "acme-web2", "globex-ops1"] {
        let egress = drop(vm, Dir::Ingress, verdict::EGRESS_DENIED);
        assert_eq!(
            after.value(&egress).unwrap(),
            0.0,
            "{vm} has egress allow, yet {egress} moved"
        );
    }
    // What the outside host saw: the allowed VMs, none of the denied ones.
    for (vm, expect) in [
        ("10.1.1.2", true),
        ("fd00:1:1::3", true),
        ("10.2.2.2", true),
        ("10.2.1.2", false),
        ("fd00:2:1::3", false),
        ("10.1.2.2", false),
    ] {
        let got = env.arrivals(OUTSIDE, vm);
        assert_eq!(
            !got.is_empty(),
            expect,
            "connections the outside host accepted from {vm}: {got:?}"
        );
    }
}

/// The same exchanges as above with full-size segments. Frames that reach a VM's vif from a
/// port without XDP (the router here, an uplink or the host stack in production) arrive
/// as non-linear skbs; the TC egress program must judge them by their whole length (a
/// check against the linear part only once dropped every payload above ~190 bytes).
#[test]
fn full_size_data_from_the_outside_is_not_dropped() {
    let env = start("bigdata");
    let out4 = format!("{OUTSIDE_V4}:443");
    let out6 = format!("[{OUTSIDE_V6}]:443");
    check_probes(
        &env,
        &[
            probe("exposed, from outside", OUTSIDE, "10.2.1.2:80", BIG, true),
            probe(
                "exposed, from outside (IPv6)",
                OUTSIDE,
                "[fd00:1:1::2]:443",
                BIG,
                true,
            ),
            probe("egress allow, replies", "acme-web1", &out4, BIG, true),
            probe(
                "egress allow, replies (IPv6)",
                "globex-ops1",
                &out6,
                BIG,
                true,
            ),
        ],
    );
    let m = env.scrape();
    for vm in ["globex-api1", "acme-web1", "globex-ops1"] {
        let malformed = drop(vm, Dir::Egress, verdict::MALFORMED);
        assert_eq!(m.value(&malformed).unwrap(), 0.0, "{malformed}");
    }
}

/// Case 7: in a segment with `mode: audit` what would be dropped for an auditable reason
/// passes and is counted in `isolator_audit_packets_total` under that reason, while the drop
/// counter for the reason stays still; management is still enforced.
#[test]
fn audit_mode_counts_what_it_would_drop_and_passes_it() {
    let env = start("audit");
    let out4 = format!("{OUTSIDE_V4}:443");
    let before = env.scrape();
    check_probes(
        &env,
        &[
            probe(
                "egress deny, audited",
                "initech-lab1",
                &out4,
                OUTSIDE_PAYLOAD,
                true,
            ),
            probe(
                "not exposed, audited",
                OUTSIDE,
                "10.3.1.2:22",
                OUTSIDE_PAYLOAD,
                true,
            ),
            probe(
                "cross segment, both audited",
                "initech-lab1",
                "10.3.2.2:22",
                BIG,
                true,
            ),
            probe(
                "cross segment, both audited (IPv6)",
                "initech-dev1",
                "[fd00:3:1::2]:5432",
                BIG,
                true,
            ),
            // The receiver is enforced: its own vif still drops.
            probe(
                "into an enforced segment",
                "initech-lab1",
                "10.1.2.2:5432",
                16,
                false,
            ),
            probe(
                "management",
                "initech-lab1",
                &format!("{MGMT_V4}:22"),
                16,
                false,
            ),
        ],
    );
    // Audit segments show everything to an outside scan.
    let scan = env.scan(
        OUTSIDE,
        &[
            &service_lab::INITECH_LAB.v4_prefix(),
            &service_lab::INITECH_DEV.v4_prefix(),
        ],
    );
    env.assert_scan(
        "audit mode passes what it would drop",
        OUTSIDE,
        &scan,
        &all_listeners(&["initech-lab1", "initech-dev1"], false),
    );
    let after = env.scrape();
    for (vm, dir, reason) in [
        ("initech-lab1", Dir::Ingress, verdict::EGRESS_DENIED),
        ("initech-lab1", Dir::Egress, verdict::NOT_EXPOSED),
        ("initech-lab1", Dir::Ingress, verdict::CROSS_SEGMENT),
        ("initech-dev1", Dir::Egress, verdict::CROSS_SEGMENT),
        ("initech-dev1", Dir::Ingress, verdict::CROSS_SEGMENT),
        ("initech-lab1", Dir::Ingress, verdict::CROSS_TENANT),
        ("initech-dev1", Dir::Egress, verdict::NOT_EXPOSED),
    ] {
        let audit = audit(vm, dir, reason);
        assert_grew(&before, &after, &audit, "audited traffic");
        assert_grew(&before, &after, &audit.bytes(), "audited traffic");
    }
    for vm in ["initech-lab1", "initech-dev1"] {
        for dir in Dir::BOTH {
            for reason in all_reasons().filter(|r| verdict::auditable(*r)) {
                assert_unchanged(
                    &before,
                    &after,
                    &drop(vm, dir, reason),
                    &format!(
                        "{vm} is in audit mode: {} is audited, not dropped",
                        isolator_tests::metrics::reason(reason)
                    ),
                );
            }
        }
    }
    assert_grew(
        &before,
        &after,
        &drop("initech-lab1", Dir::Ingress, verdict::MANAGEMENT),
        "management is enforced in audit mode too",
    );
    assert_grew(
        &before,
        &after,
        &drop("acme-db1", Dir::Egress, verdict::CROSS_TENANT),
        "acme/db is enforced: initech-lab1's connection is dropped where it reaches acme-db1",
    );
    let got = env.arrivals(MGMT, "10.3.1.2");
    assert!(
        got.is_empty(),
        "the management host accepted from initech-lab1: {got:?}"
    );
}

/// Case 8: each policy drop reason appears on /metrics with the labels that say where and
/// which way (device, tenant, segment, direction, reason), in packets and bytes; the
/// exposition passes `promtool check metrics`; the bridge ports of the router and the
/// management host carry no program.
#[test]
fn every_policy_drop_reason_is_counted_with_its_labels() {
    let env = start("reasons");
    let before = env.scrape();
    check_probes(
        &env,
        &[
            probe(
                "management",
                "acme-db1",
                &format!("{MGMT_V4}:22"),
                16,
                false,
            ),
            probe(
                "egress_denied",
                "acme-db1",
                &format!("{OUTSIDE_V4}:443"),
                16,
                false,
            ),
            probe("not_exposed", OUTSIDE, "10.1.2.2:5432", 16, false),
            probe("cross_segment", "acme-db1", "10.1.1.3:22", 16, false),
            probe("cross_tenant", "globex-ops1", "10.1.2.2:5432", 16, false),
            probe("cross_tenant", "acme-db1", "[fd00:2:2::2]:22", 16, false),
            // The twin: the same VM reaches what is exposed to it.
            probe("exposed", "acme-db1", "10.2.1.2:80", 16, true),
        ],
    );
    let after = env.scrape();
    for (vm, dir, reason) in [
        ("acme-db1", Dir::Ingress, verdict::MANAGEMENT),
        ("acme-db1", Dir::Ingress, verdict::EGRESS_DENIED),
        ("acme-db1", Dir::Egress, verdict::NOT_EXPOSED),
        ("acme-db1", Dir::Ingress, verdict::CROSS_SEGMENT),
        ("globex-ops1", Dir::Ingress, verdict::CROSS_TENANT),
        ("acme-db1", Dir::Ingress, verdict::CROSS_TENANT),
    ] {
        let pkts = drop(vm, dir, reason);
        let why = format!("a {} probe", isolator_tests::metrics::reason(reason));
        assert_grew(&before, &after, &pkts, &why);
        assert_grew(&before, &after, &pkts.bytes(), &why);
    }
    // Types and label sets of every family, and samples of the families this version adds.
    assert_well_formed(
        &after,
        &[
            AUDIT_PACKETS,
            AUDIT_BYTES,
            CONNTRACK_ENTRIES,
            CONNTRACK_CAPACITY,
            CONNTRACK_EVENTS,
        ],
    );
    for port in [ROUTER_PORT, MGMT_PORT] {
        let progs = env.lab().vif_programs(port).unwrap();
        assert!(
            progs.is_empty(),
            "{port} matches no interface pattern of the policy, yet carries {progs:?}"
        );
    }
}

/// The lab itself keeps the safety rules: no namespace has a default route (IPv4 or IPv6),
/// the router forwards only between lab networks, and everything is removed afterwards.
#[test]
fn service_lab_has_no_default_route_and_is_removed() {
    let sl = ServiceLab::build("routes").unwrap_or_else(|e| panic!("{e:#}"));
    let namespaces = sl.lab.namespaces().to_vec();
    assert_eq!(
        namespaces.len(),
        1 + 8 + 3,
        "host, 8 VMs, router, outside, mgmt"
    );
    for ns in &namespaces {
        for family in ["-4", "-6"] {
            let out = std::process::Command::new("ip")
                .args([family, "-n", ns, "route", "show", "default"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.trim().is_empty(),
                "{ns} has a default route ({family}): {text}"
            );
        }
    }
    // Refused by the harness itself (not by `ip` for some other reason), and the twin: a
    // route that is not a default route is added.
    for route in ["0.0.0.0/0 via 203.0.113.1", "default via 203.0.113.1"] {
        match sl.lab.add_route(&sl.outside().ns, route) {
            Err(e) if format!("{e:#}").contains("refusing route") => {}
            other => panic!("Lab::add_route must refuse the default route {route:?}: {other:?}"),
        }
    }
    sl.lab
        .add_route(&sl.outside().ns, "198.51.100.0/24 via 203.0.113.1")
        .unwrap_or_else(|e| panic!("a route that is not a default route: {e:#}"));
    // Without isolator the router connects the outside host to every VM.
    let ok = tcp_echo(
        &sl.outside().ns,
        "10.1.2.2:5432".parse().unwrap(),
        OUTSIDE_PAYLOAD,
        ALLOWED,
    )
    .unwrap();
    assert!(
        ok.echoed(),
        "outside -> acme-db1 through the router: {ok:?}"
    );
    sl.destroy().unwrap();
    let left: Vec<String> = isolator_tests::lab::our_namespaces()
        .into_iter()
        .filter(|n| namespaces.contains(n))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
