//! `cargo xtask demo`: isolator enforcing a full policy on a lab of network namespaces.
//!
//! Builds the service lab (`isolator_tests::service_lab`: three tenants, six segments, eight
//! VMs on ONE bridge, a router to an "outside" host, a management host, echo servers on
//! every VM), writes its policy (exposed endpoints, flows within and across tenants, a
//! segment with egress deny, an audit-mode tenant, management prefixes), starts
//! `isolator run` in the lab's host namespace and sends ICMP, ICMPv6 and TCP (v4 and v6):
//! within a segment, across segments and tenants, to exposed and private ports, over the
//! flows and against them, to the management host, to and from the outside host; then it
//! scans with nmap from the outside, from another tenant and towards the management host.
//! Each row prints what was expected, what happened and what the daemon counted meanwhile
//! (drops and audit verdicts by device, direction and reason). Then it stops the daemon with
//! SIGTERM and removes the lab, also on Ctrl-C and on any error (RAII guards). Fails if any
//! observation differs from the expectation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use isolator_tests::echo::HeldConnection;
use isolator_tests::metrics::{
    AUDIT_PACKETS, CONNTRACK_EVENTS, DROP_PACKETS, PASS_PACKETS, Sample, Scrape,
};
use isolator_tests::nmap::{Endpoint, endpoints, fmt_endpoints, tcp_connect_scan};
use isolator_tests::service_lab::{
    self, MGMT, MGMT_V4, MGMT_V6, OUTSIDE, OUTSIDE_V4, OUTSIDE_V6, ROUTER, SCAN_PORTS, ServiceLab,
    spec,
};
use isolator_tests::signal::{check_interrupted, install_interrupt_handler};
use isolator_tests::{Dir, Env, Series, ping_count, tcp_echo, tcp_probe};

/// What the demo needs.
pub struct DemoOptions {
    /// The `isolator` binary to run.
    pub isolator_bin: PathBuf,
}

/// Payload of TCP exchanges between VMs.
const VM_PAYLOAD: usize = 64 * 1024;
/// Payload of TCP exchanges with the outside host: a short request and its answer.
const OUTSIDE_PAYLOAD: usize = 64;

/// The pairs of the basic rows (same segment, cross segment, cross tenant), each probed with
/// ICMP, ICMPv6, TCP and TCPv6 to ports no exposure or flow names.
const PAIRS: [(&str, &str); 6] = [
    ("acme-web1", "acme-web2"),
    ("acme-web2", "acme-web1"),
    ("acme-web1", "acme-db1"),
    ("acme-web1", "globex-ops1"),
    ("globex-ops1", "globex-api1"),
    ("globex-ops1", "acme-web2"),
];

fn relation(from: &str, to: &str) -> (&'static str, bool) {
    let (f, t) = (spec(from).seg, spec(to).seg);
    if f.tenant != t.tenant {
        ("cross tenant", false)
    } else if f != t {
        ("cross segment", false)
    } else {
        ("same segment", true)
    }
}

/// What one row does.
enum Action {
    /// One ICMP echo from `from` (VM or host) to `dst`, 1 s for the reply.
    Ping { dst: IpAddr },
    /// A TCP connection with a fresh listener in `to`'s namespace (the basic rows).
    Connect { to: String, dst: IpAddr, port: u16 },
    /// A TCP echo exchange of `len` bytes with the lab's echo servers.
    Echo { target: SocketAddr, len: usize },
}

/// One row of the table.
struct Row {
    from: String,
    to: String,
    kind: &'static str,
    proto: &'static str,
    expected: bool,
    action: Action,
}

fn row(from: &str, to: &str, kind: &'static str, expected: bool, action: Action) -> Row {
    let proto = match &action {
        Action::Ping { dst } if dst.is_ipv4() => "icmp",
        Action::Ping { .. } => "icmpv6",
        Action::Connect { dst, .. } if dst.is_ipv4() => "tcp",
        Action::Connect { .. } => "tcp6",
        Action::Echo { target, .. } if target.is_ipv4() => "tcp",
        Action::Echo { .. } => "tcp6",
    };
    Row {
        from: from.to_string(),
        to: to.to_string(),
        kind,
        proto,
        expected,
        action,
    }
}

fn echo(target: &str, len: usize) -> Action {
    Action::Echo {
        target: target.parse().expect("socket address"),
        len,
    }
}

fn ping(dst: &str) -> Action {
    Action::Ping {
        dst: dst.parse().expect("address"),
    }
}

/// The rows beyond the basic ones: exposure, flows, management, the outside, audit mode.
fn policy_rows() -> Vec<Row> {
    let out4 = format!("{OUTSIDE_V4}:443");
    let out6 = format!("[{OUTSIDE_V6}]:443");
    vec![
        row(
            "acme-db1",
            "globex-api1",
            "exposed tcp/80",
            true,
            echo("10.2.1.2:80", VM_PAYLOAD),
        ),
        row(
            "acme-db1",
            "globex-api1",
            "private tcp/22",
            false,
            echo("10.2.1.2:22", 16),
        ),
        row(
            "acme-db1",
            "globex-api2",
            "exposed tcp/8080",
            true,
            echo("[fd00:2:1::3]:8080", VM_PAYLOAD),
        ),
        row(
            "acme-db1",
            "globex-api2",
            "private tcp/80",
            false,
            echo("[fd00:2:1::3]:80", 16),
        ),
        row(
            "acme-db1",
            "acme-web1",
            "exposed icmp",
            true,
            ping("10.1.1.2"),
        ),
        row(
            "acme-web1",
            "acme-db1",
            "flow tcp/5432",
            true,
            echo("10.1.2.2:5432", VM_PAYLOAD),
        ),
        row(
            "acme-web1",
            "acme-db1",
            "flow tcp/5432",
            true,
            echo("[fd00:1:2::2]:5432", VM_PAYLOAD),
        ),
        row(
            "acme-db1",
            "acme-web1",
            "flow reversed",
            false,
            echo("10.1.1.2:5432", 16),
        ),
        row(
            "acme-web1",
            "acme-db1",
            "flow: other port",
            false,
            echo("10.1.2.2:22", 16),
        ),
        row(
            "acme-web1",
            "globex-api1",
            "x-tenant flow",
            true,
            echo("10.2.1.2:9000", VM_PAYLOAD),
        ),
        row(
            "globex-api1",
            "acme-web1",
            "x-tenant reversed",
            false,
            echo("10.1.1.2:9000", 16),
        ),
        row(
            "acme-web1",
            MGMT,
            "management",
            false,
            echo(&format!("{MGMT_V4}:22"), 16),
        ),
        row(
            "acme-web1",
            MGMT,
            "management",
            false,
            echo(&format!("[{MGMT_V6}]:443"), 16),
        ),
        row("globex-ops1", MGMT, "management", false, ping(MGMT_V4)),
        row(
            "acme-web1",
            OUTSIDE,
            "egress allow",
            true,
            echo(&out4, OUTSIDE_PAYLOAD),
        ),
        row(
            "acme-web2",
            OUTSIDE,
            "egress allow",
            true,
            echo(&out6, OUTSIDE_PAYLOAD),
        ),
        row(
            "globex-api1",
            OUTSIDE,
            "egress deny",
            false,
            echo(&out4, 16),
        ),
        row("acme-db1", OUTSIDE, "egress deny", false, echo(&out6, 16)),
        row(
            OUTSIDE,
            "globex-api1",
            "exposed tcp/80",
            true,
            echo("10.2.1.2:80", OUTSIDE_PAYLOAD),
        ),
        row(
            OUTSIDE,
            "acme-web1",
            "exposed tcp/443",
            true,
            echo("[fd00:1:1::2]:443", OUTSIDE_PAYLOAD),
        ),
        row(OUTSIDE, "acme-web1", "exposed icmp", true, ping("10.1.1.2")),
        row(
            OUTSIDE,
            "acme-web1",
            "private tcp/22",
            false,
            echo("10.1.1.2:22", 16),
        ),
        row(
            OUTSIDE,
            "acme-db1",
            "private tcp/5432",
            false,
            echo("10.1.2.2:5432", 16),
        ),
        row(
            "initech-lab1",
            OUTSIDE,
            "audit: egr. deny",
            true,
            echo(&out4, OUTSIDE_PAYLOAD),
        ),
        row(
            "initech-lab1",
            "initech-dev1",
            "audit: x-segment",
            true,
            echo("10.3.2.2:22", VM_PAYLOAD),
        ),
        row(
            "initech-lab1",
            MGMT,
            "audit: mgmt",
            false,
            echo(&format!("{MGMT_V4}:22"), 16),
        ),
    ]
}

/// The scans: from, targets, expected open pairs, what they show.
fn scans() -> Vec<(&'static str, Vec<String>, BTreeSet<Endpoint>, &'static str)> {
    let enforced = [
        service_lab::ACME_WEB,
        service_lab::ACME_DB,
        service_lab::GLOBEX_API,
        service_lab::GLOBEX_OPS,
    ];
    let globex = [service_lab::GLOBEX_API, service_lab::GLOBEX_OPS];
    vec![
        (
            OUTSIDE,
            enforced.iter().map(|s| s.v4_prefix()).collect(),
            endpoints(&[("10.1.1.2", 443), ("10.2.1.2", 80), ("10.2.1.3", 8080)]),
            "the outside sees exactly the exposed endpoints",
        ),
        (
            OUTSIDE,
            enforced.iter().map(|s| s.v6_scan_range()).collect(),
            endpoints(&[
                ("fd00:1:1::2", 443),
                ("fd00:2:1::2", 80),
                ("fd00:2:1::3", 8080),
            ]),
            "the same over IPv6",
        ),
        (
            "acme-db1",
            globex.iter().map(|s| s.v4_prefix()).collect(),
            endpoints(&[("10.2.1.2", 80), ("10.2.1.3", 8080)]),
            "another tenant sees globex's exposed endpoints only",
        ),
        (
            "acme-web1",
            vec![MGMT_V4.to_string()],
            BTreeSet::new(),
            "the management host is invisible",
        ),
        (
            ROUTER,
            vec![service_lab::ACME_DB.v4_prefix()],
            BTreeSet::new(),
            "the router is outside, though its address lies inside acme/db: db exposes nothing",
        ),
    ]
}

pub fn run(opts: DemoOptions) -> Result<()> {
    install_interrupt_handler()?;
    if !opts.isolator_bin.is_file() {
        bail!("{} does not exist", opts.isolator_bin.display());
    }
    let started = Instant::now();

    println!("creating the service lab…");
    let sl = ServiceLab::build("demo")?;
    let lab = &sl.lab;
    println!(
        "  host namespace {} with bridge br0; one namespace per VM, all vifs on br0:",
        lab.host_ns()
    );
    for vm in lab.vms() {
        let s = spec(&vm.name);
        println!(
            "  {:<13} vif {:<14} {:<8} {:<4} {:<10} {}",
            vm.name,
            vm.vif,
            s.seg.tenant,
            s.seg.segment,
            vm.v4(),
            vm.v6()
        );
    }
    for h in lab.hosts() {
        let addrs: Vec<String> = h.addrs.iter().map(|(a, l)| format!("{a}/{l}")).collect();
        let via = match &h.port {
            Some(p) => format!("bridge port {p} (not managed)"),
            None => "behind the router".to_string(),
        };
        println!("  {:<13} {:<34} {}", h.name, via, addrs.join(" "));
    }
    println!(
        "  echo servers: every VM and {MGMT} on tcp {SCAN_PORTS:?}, {OUTSIDE} on tcp {:?}",
        service_lab::OUTSIDE_PORTS
    );
    check_interrupted()?;

    let policy = service_lab::policy_yaml();
    println!("policy:");
    for line in policy.lines() {
        println!("  | {line}");
    }
    println!(
        "starting isolator ({}) in {}…",
        opts.isolator_bin.display(),
        lab.host_ns()
    );
    // The fixture's drop order: the daemon goes first, then the lab, then the files.
    let mut env =
        Env::start_bin(sl, &policy, opts.isolator_bin.clone()).context("starting isolator")?;
    println!("  policy file {}", env.config().display());
    println!(
        "  /healthz answers 200 at http://{} (inside {})",
        env.daemon().metrics_addr(),
        env.lab().host_ns()
    );
    let sl = env.topo();
    let lab = &sl.lab;
    let daemon = env.daemon();
    let mut mismatches = Vec::new();
    for vm in lab.vms() {
        let attached = lab.vif_has_xdp(&vm.vif)?;
        println!(
            "  {:<14} {}",
            vm.vif,
            if attached {
                "XDP attached"
            } else {
                "NO XDP PROGRAM"
            }
        );
        if !attached {
            mismatches.push(format!("{} has no XDP program", vm.vif));
        }
    }
    for h in lab.hosts() {
        if let Some(port) = &h.port {
            let progs = lab.vif_programs(port)?;
            println!(
                "  {port:<14} {}",
                if progs.is_empty() {
                    "nothing attached (not named by the policy)".to_string()
                } else {
                    format!("UNEXPECTED: {progs:?}")
                }
            );
            if !progs.is_empty() {
                mismatches.push(format!("{port} carries {progs:?}"));
            }
        }
    }

    println!("sending traffic…");
    println!();
    let header = format!(
        "{:<12} {:<12} {:<17} {:<6} {:<9} {:<9} {:<2}  counted meanwhile (in = from the VM, out = to the VM)",
        "FROM", "TO", "KIND", "PROTO", "EXPECTED", "OBSERVED", ""
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    let mut rows = Vec::new();
    for (i, (from, to)) in PAIRS.iter().enumerate() {
        let (kind, allowed) = relation(from, to);
        let t = lab.vm(to);
        for dst in [t.v4(), t.v6()] {
            rows.push(row(from, to, kind, allowed, Action::Ping { dst }));
            rows.push(row(
                from,
                to,
                kind,
                allowed,
                Action::Connect {
                    to: to.to_string(),
                    dst,
                    port: 8000 + i as u16,
                },
            ));
        }
    }
    rows.extend(policy_rows());
    for r in &rows {
        check_interrupted()?;
        let before = daemon.scrape()?;
        let observed = perform(sl, r)?;
        let after = daemon.scrape()?;
        let ok = observed == r.expected;
        println!(
            "{:<12} {:<12} {:<17} {:<6} {:<9} {:<9} {:<2}  {}",
            r.from,
            r.to,
            r.kind,
            r.proto,
            verdict(r.expected),
            verdict(observed),
            if ok { "ok" } else { "!!" },
            row_change(&before, &after, &vifs_of(lab, &[&r.from, &r.to]))
        );
        if !ok {
            mismatches.push(format!(
                "{} -> {} {} ({}): expected {}, observed {}",
                r.from,
                r.to,
                r.proto,
                r.kind,
                verdict(r.expected),
                verdict(observed)
            ));
        }
    }
    println!(
        "(blocked = no reply / no connection; a row's counters are the change during that \
         probe on the vifs of its VMs, plus how many broadcasts other vifs stopped)"
    );
    println!();

    println!("scanning with nmap (-sT, tcp {SCAN_PORTS:?})…");
    for (from, targets, expected, what) in scans() {
        check_interrupted()?;
        let ns = if let Some(vm) = lab.vms().iter().find(|v| v.name == from) {
            vm.ns.clone()
        } else {
            lab.host(from).ns.clone()
        };
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        let before = daemon.scrape()?;
        let scan = tcp_connect_scan(&ns, &targets, &SCAN_PORTS)?;
        let after = daemon.scrape()?;
        let ok = scan.open == expected;
        println!(
            "  {} from {from} against {} ({:.1?}): {}",
            if ok { "ok" } else { "!!" },
            targets.join(" "),
            scan.took,
            what
        );
        println!("     open:     {}", scan.open_list());
        if !ok {
            println!("     expected: {}", fmt_endpoints(&expected));
            mismatches.push(format!(
                "nmap from {from} against {}: open {}, expected {}",
                targets.join(" "),
                scan.open_list(),
                fmt_endpoints(&expected)
            ));
        }
        println!("     counted:  {}", scan_change(&before, &after));
    }
    println!();

    check_interrupted()?;
    reload_scene(&env, &policy, &mut mismatches)?;
    println!();

    println!("counters on /metrics per vif (packets; in = from the VM, out = to the VM):");
    let m = env.daemon().scrape()?;
    let lab = env.lab();
    println!(
        "  {:<14} {:<8} {:<4} {:>7} {:>7} {:>8} {:>8} {:>6}   drops by reason (audit verdicts)",
        "DEVICE", "TENANT", "SEG", "PASS IN", "DROP IN", "PASS OUT", "DROP OUT", "AUDIT"
    );
    for vm in lab.vms() {
        let s = spec(&vm.name);
        let audit = m.sum(&Series::new(AUDIT_PACKETS, &[("device", &vm.vif)]))?;
        println!(
            "  {:<14} {:<8} {:<4} {:>7} {:>7} {:>8} {:>8} {:>6}   {}",
            vm.vif,
            s.seg.tenant,
            s.seg.segment,
            m.value(&Series::pass(&vm.vif, Dir::Ingress))?,
            m.sum(&Series::drops(&vm.vif, Dir::Ingress))?,
            m.value(&Series::pass(&vm.vif, Dir::Egress))?,
            m.sum(&Series::drops(&vm.vif, Dir::Egress))?,
            audit,
            reasons(&m, &vm.vif)
        );
    }
    for seg in service_lab::SEGMENTS {
        println!(
            "  isolator_interfaces{{tenant={},segment={}}} = {}",
            seg.tenant,
            seg.segment,
            m.value(&Series::interfaces(seg.tenant, seg.segment))?
        );
    }
    let events: Vec<String> = m
        .select(&Series::new(CONNTRACK_EVENTS, &[]))
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s.labels.get("event").map(String::as_str).unwrap_or("?"),
                s.value
            )
        })
        .collect();
    println!(
        "  connection table: {} of {} entries; events: {}",
        m.value(&Series::conntrack_entries())?,
        m.value(&Series::conntrack_capacity())?,
        events.join(", ")
    );
    println!();

    println!("stopping isolator (SIGTERM)…");
    let status = env.take_daemon().stop(Duration::from_secs(10))?;
    println!("  isolator exited: {status}");
    if !status.success() {
        mismatches.push(format!("isolator exited with {status} on SIGTERM"));
    }
    let mut clean = true;
    for vm in env.lab().vms() {
        let left = env.lab().vif_programs(&vm.vif)?;
        if !left.is_empty() {
            clean = false;
            println!("  {} still has {left:?}", vm.vif);
            mismatches.push(format!("{} still has {left:?} after SIGTERM", vm.vif));
        }
    }
    if clean {
        println!("  no BPF program left on any vif");
    }

    println!("removing lab…");
    env.destroy()?;
    println!("demo took {:.1?}", started.elapsed());

    if mismatches.is_empty() {
        println!("demo: every observation matched the policy");
        Ok(())
    } else {
        for m in &mismatches {
            eprintln!("demo: MISMATCH: {m}");
        }
        bail!("{} observation(s) differ from the policy", mismatches.len())
    }
}

/// The flow the reload scene removes, as it stands in `service_lab::policy_yaml()`.
const REVOKED_FLOW: &str = "      - {from: web, to: db, protocol: tcp, ports: 5432}\n";

/// A policy reload (SIGHUP) that removes the flow web -> db: the connection that flow
/// admitted is cut at once (its tracked entry revoked), a new one is refused, and the
/// counters say so.
fn reload_scene(env: &Env<ServiceLab>, policy: &str, mismatches: &mut Vec<String>) -> Result<()> {
    let daemon = env.daemon();
    let web1 = env.ns("acme-web1");
    let target: SocketAddr = "10.1.2.2:5432".parse().expect("socket address");
    println!("reloading the policy without the flow acme web -> db tcp 5432 (SIGHUP)…");
    let mut expect = |what: &str, expected: bool, observed: bool| {
        let ok = expected == observed;
        println!(
            "  {} {what:<58} expected {:<8} observed {}",
            if ok { "ok" } else { "!!" },
            verdict(expected),
            verdict(observed)
        );
        if !ok {
            mismatches.push(format!(
                "reload: {what}: expected {}, observed {}",
                verdict(expected),
                verdict(observed)
            ));
        }
    };
    let mut held = HeldConnection::open(web1, target, Duration::from_secs(3))
        .context("acme-web1 -> 10.1.2.2:5432 over the flow")?;
    let before_reload = held
        .exchange(b"SELECT 1;\n")
        .is_ok_and(|b| b == b"SELECT 1;\n");
    expect(
        "before: acme-web1 -> acme-db1 tcp 5432, held open",
        true,
        before_reload,
    );
    let narrower = policy.replacen(REVOKED_FLOW, "", 1);
    if narrower == policy {
        bail!("the demo policy no longer contains the flow {REVOKED_FLOW:?}");
    }
    let before = daemon.scrape()?;
    // Waits (at most 5 s) until the daemon counts the reload as succeeded.
    env.reload(&narrower, true)?;
    let reloaded = daemon.scrape()?;
    // The echo of a revoked connection never comes back (the read times out after 3 s).
    let after_reload = held.exchange(b"SELECT 2;\n").is_ok();
    expect("after: the same connection", false, after_reload);
    let fresh = tcp_echo(web1, target, 64, Duration::from_millis(1500))?.echoed();
    expect(
        "after: a new connection acme-web1 -> acme-db1 tcp 5432",
        false,
        fresh,
    );
    let after = daemon.scrape()?;
    let revoked = reloaded.delta(&before, &Series::conntrack_event("revoked"))?;
    println!(
        "  counted: revoked connections +{revoked}, reloads succeeded +{}; {}",
        reloaded.delta(&before, &Series::reloads("succeeded"))?,
        row_change(
            &reloaded,
            &after,
            &vifs_of(env.lab(), &["acme-web1", "acme-db1"])
        )
    );
    if revoked <= 0.0 {
        mismatches.push("reload: no tracked connection was revoked".into());
    }
    Ok(())
}

/// The vifs of those of `names` that are VMs.
fn vifs_of(lab: &isolator_tests::Lab, names: &[&str]) -> Vec<String> {
    lab.vms()
        .iter()
        .filter(|v| names.contains(&v.name.as_str()))
        .map(|v| v.vif.clone())
        .collect()
}

fn verdict(delivered: bool) -> &'static str {
    if delivered { "delivered" } else { "blocked" }
}

/// Performs the row's action; returns whether it was delivered.
fn perform(sl: &ServiceLab, r: &Row) -> Result<bool> {
    let lab = &sl.lab;
    let ns = match lab.vms().iter().find(|v| v.name == r.from) {
        Some(vm) => vm.ns.clone(),
        None => lab.host(&r.from).ns.clone(),
    };
    Ok(match &r.action {
        Action::Ping { dst } => {
            ping_count(&ns, *dst, 1, Duration::ZERO, Duration::from_secs(1))? == 1
        }
        Action::Connect { to, dst, port } => {
            tcp_probe(&ns, &lab.vm(to).ns, *dst, *port, Duration::from_secs(1))?.delivered()
        }
        Action::Echo { target, len } => {
            let timeout = Duration::from_secs(if r.expected { 3 } else { 1 });
            tcp_echo(&ns, *target, *len, timeout)?.echoed()
        }
    })
}

/// The change of each drop and audit counter between two scrapes, keyed by (`drop` or
/// `audit`, device, `in`/`out`, reason), and of the passed packets over every vif.
struct Change {
    pass: f64,
    counters: BTreeMap<(&'static str, String, &'static str, String), f64>,
}

fn change(before: &Scrape, after: &Scrape) -> Change {
    let all = |name: &'static str| Series::new(name, &[]);
    let sum = |m: &Scrape| m.sum(&all(PASS_PACKETS)).unwrap_or(0.0);
    let pass = sum(after) - sum(before);
    let mut counters = BTreeMap::new();
    for (family, tag) in [(DROP_PACKETS, "drop"), (AUDIT_PACKETS, "audit")] {
        for s in after.select(&all(family)) {
            let was = before
                .samples
                .iter()
                .find(|b: &&Sample| b.name == s.name && b.labels == s.labels)
                .map_or(0.0, |b| b.value);
            if s.value > was {
                let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
                let dir = if l("direction") == "ingress" {
                    "in"
                } else {
                    "out"
                };
                *counters
                    .entry((tag, l("device"), dir, l("reason")))
                    .or_default() += s.value - was;
            }
        }
    }
    Change { pass, counters }
}

/// A row's counters: in detail on the vifs of the row's VMs (`vacme-db1 in cross_segment
/// +1`), the rest (broadcast ARP/ND dropped where it reaches other VMs) as one number.
fn row_change(before: &Scrape, after: &Scrape, vifs: &[String]) -> String {
    let c = change(before, after);
    let mut parts = vec![format!("pass +{}", c.pass)];
    let mut elsewhere = 0.0;
    for ((tag, device, dir, reason), d) in &c.counters {
        if vifs.contains(device) {
            parts.push(format!("{tag} {device} {dir} {reason} +{d}"));
        } else {
            elsewhere += d;
        }
    }
    if elsewhere > 0.0 {
        parts.push(format!("(+{elsewhere} broadcasts stopped at other vifs)"));
    }
    parts.join("; ")
}

/// A scan's counters, summed by kind, direction and reason over every vif.
fn scan_change(before: &Scrape, after: &Scrape) -> String {
    let c = change(before, after);
    let mut by_reason: BTreeMap<(&str, &str, &str), (f64, BTreeSet<&str>)> = BTreeMap::new();
    for ((tag, device, dir, reason), d) in &c.counters {
        let e = by_reason.entry((tag, dir, reason)).or_default();
        e.0 += d;
        e.1.insert(device);
    }
    let mut parts = vec![format!("pass +{}", c.pass)];
    for ((tag, dir, reason), (d, devices)) in by_reason {
        let on = if devices.len() == 1 {
            devices.into_iter().next().unwrap_or_default().to_string()
        } else {
            format!("{} vifs", devices.len())
        };
        parts.push(format!("{tag} {dir} {reason} +{d} ({on})"));
    }
    parts.join("; ")
}

/// `reason in=N, ...` for the non-zero drop counters of `vif`, then its audit verdicts.
fn reasons(m: &Scrape, vif: &str) -> String {
    let list = |family: &'static str| -> Vec<String> {
        m.select(&Series::new(family, &[("device", vif)]))
            .iter()
            .filter(|s| s.value > 0.0)
            .filter_map(|s| {
                let dir = match s.labels.get("direction")?.as_str() {
                    "ingress" => "in",
                    "egress" => "out",
                    other => other,
                };
                Some(format!("{} {dir}={}", s.labels.get("reason")?, s.value))
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let drops = list(DROP_PACKETS);
    let audits = list(AUDIT_PACKETS);
    let mut s = drops.join(", ");
    if !audits.is_empty() {
        s.push_str(&format!(" (audit: {})", audits.join(", ")));
    }
    s
}
