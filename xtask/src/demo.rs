//! `cargo xtask demo`: isolator enforcing on a lab of network namespaces.
//!
//! Builds the standard lab (two tenants x two segments, five VMs on ONE bridge), writes the
//! policy, starts `isolator run` in the lab's host namespace, sends ICMP, ICMPv6 and TCP
//! (v4 and v6) within a segment, across segments and across tenants, and prints what was
//! expected, what happened and what the daemon counted on the sender's vif. Then stops the
//! daemon with SIGTERM and removes the lab, also on Ctrl-C and on any error (RAII guards).
//! Fails if any observation differs from the expectation.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use isolator_tests::signal::{check_interrupted, install_interrupt_handler};
use isolator_tests::topology::{self, Relation, plan};
use isolator_tests::{Daemon, Lab, Metrics, TempDir, Vm, ping_count, tcp_probe};

/// Port of `/metrics` inside the lab's host namespace (its own loopback: no clash with the
/// root namespace).
pub const METRICS_PORT: u16 = 9464;

/// What the demo needs.
pub struct DemoOptions {
    /// The `isolator` binary to run.
    pub isolator_bin: PathBuf,
}

/// The pairs the demo sends traffic between.
const PAIRS: [(&str, &str); 6] = [
    ("acme-web1", "acme-web2"),
    ("acme-web2", "acme-web1"),
    ("acme-web1", "acme-db1"),
    ("acme-web1", "globex-web1"),
    ("globex-db1", "globex-web1"),
    ("globex-web1", "acme-web2"),
];

#[derive(Clone, Copy)]
enum Proto {
    Icmp,
    Icmp6,
    Tcp,
    Tcp6,
}

impl Proto {
    const ALL: [Proto; 4] = [Proto::Icmp, Proto::Icmp6, Proto::Tcp, Proto::Tcp6];

    fn name(self) -> &'static str {
        match self {
            Proto::Icmp => "icmp",
            Proto::Icmp6 => "icmpv6",
            Proto::Tcp => "tcp",
            Proto::Tcp6 => "tcp6",
        }
    }

    fn dst(self, to: &Vm) -> IpAddr {
        match self {
            Proto::Icmp | Proto::Tcp => to.v4(),
            Proto::Icmp6 | Proto::Tcp6 => to.v6(),
        }
    }
}

pub fn run(opts: DemoOptions) -> Result<()> {
    install_interrupt_handler();
    if !opts.isolator_bin.is_file() {
        bail!("{} does not exist", opts.isolator_bin.display());
    }
    // Declaration order = reverse drop order: the daemon goes first, then the lab, then tmp.
    let tmp = TempDir::new("isolator-demo")?;

    println!("creating lab…");
    let mut lab = Lab::new("demo")?;
    topology::build(&mut lab)?;
    println!(
        "  host namespace {} with bridge br0; one namespace per VM, all vifs on br0:",
        lab.host_ns()
    );
    for vm in lab.vms() {
        let p = plan(&vm.name);
        println!(
            "  {:<12} vif {:<13} {:<7} {:<4} {:<12} {}",
            vm.name,
            vm.vif,
            p.seg.tenant,
            p.seg.segment,
            vm.v4(),
            vm.v6()
        );
    }
    check_interrupted()?;

    let policy = topology::policy_yaml();
    let config = tmp.write("policy.yaml", &policy)?;
    println!("writing policy {}:", config.display());
    for line in policy.lines() {
        println!("  | {line}");
    }

    println!(
        "starting isolator ({}) in {}…",
        opts.isolator_bin.display(),
        lab.host_ns()
    );
    let daemon = Daemon::start_healthy(&lab, &opts.isolator_bin, &config, METRICS_PORT, tmp.path())
        .context("starting isolator")?;
    println!(
        "  /healthz answers 200 at http://{} (inside {})",
        daemon.metrics_addr(),
        lab.host_ns()
    );
    for vm in lab.vms() {
        let attached = lab.vif_has_xdp(&vm.vif)?;
        println!(
            "  {:<13} {}",
            vm.vif,
            if attached {
                "XDP attached"
            } else {
                "NO XDP PROGRAM"
            }
        );
    }

    println!("sending traffic…");
    println!();
    let header = format!(
        "{:<12} {:<12} {:<14} {:<7} {:<10} {:<10} {:<3} sender vif, from the VM (change)",
        "FROM", "TO", "KIND", "PROTO", "EXPECTED", "OBSERVED", ""
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len() + 10));
    let mut mismatches = Vec::new();
    for (i, (from, to)) in PAIRS.iter().enumerate() {
        let (f, t) = (lab.vm(from), lab.vm(to));
        let rel = Relation::of(&plan(from), &plan(to));
        for proto in Proto::ALL {
            check_interrupted()?;
            let before = daemon.metrics()?;
            let dst = proto.dst(t);
            let delivered = match proto {
                Proto::Icmp | Proto::Icmp6 => {
                    ping_count(&f.ns, dst, 1, Duration::ZERO, Duration::from_secs(1))? == 1
                }
                Proto::Tcp | Proto::Tcp6 => {
                    tcp_probe(&f.ns, &t.ns, dst, 8000 + i as u16, Duration::from_secs(1))?
                        .delivered()
                }
            };
            let after = daemon.metrics()?;
            let ok = delivered == rel.allowed();
            let expected = if rel.allowed() {
                "delivered"
            } else {
                "blocked"
            };
            let observed = if delivered { "delivered" } else { "blocked" };
            println!(
                "{:<12} {:<12} {:<14} {:<7} {:<10} {:<10} {:<3} {}",
                from,
                to,
                rel.to_string(),
                proto.name(),
                expected,
                observed,
                if ok { "ok" } else { "!!" },
                counter_change(&before, &after, &f.vif)
            );
            if !ok {
                mismatches.push(format!(
                    "{from} -> {to} {} ({rel}): expected {expected}, observed {observed}",
                    proto.name()
                ));
            }
        }
    }
    println!(
        "(a row's counters are the change during that probe; they include late ARP/ND retries \
         of earlier blocked probes)"
    );
    println!();

    println!("counters on /metrics per vif (packets; in = from the VM, out = to the VM):");
    let m = daemon.metrics()?;
    println!(
        "  {:<13} {:<7} {:<4} {:>8} {:>8} {:>8} {:>8}   drops by reason",
        "DEVICE", "TENANT", "SEG", "PASS IN", "DROP IN", "PASS OUT", "DROP OUT"
    );
    for vm in lab.vms() {
        let p = plan(&vm.name);
        let c =
            |name: &str, dir: &str| m.sum(name, &[("device", vm.vif.as_str()), ("direction", dir)]);
        println!(
            "  {:<13} {:<7} {:<4} {:>8} {:>8} {:>8} {:>8}   {}",
            vm.vif,
            p.seg.tenant,
            p.seg.segment,
            c("isolator_pass_packets_total", "ingress"),
            c("isolator_drop_packets_total", "ingress"),
            c("isolator_pass_packets_total", "egress"),
            c("isolator_drop_packets_total", "egress"),
            drop_reasons(&m, &vm.vif)
        );
    }
    for seg in topology::SEGMENTS {
        let n = m.get(
            "isolator_interfaces",
            &[("tenant", seg.tenant), ("segment", seg.segment)],
        );
        println!(
            "  isolator_interfaces{{tenant={},segment={}}} = {}",
            seg.tenant,
            seg.segment,
            n.map_or("missing".to_string(), |v| v.to_string())
        );
    }
    println!();

    println!("stopping isolator (SIGTERM)…");
    let status = daemon.stop(Duration::from_secs(10))?;
    println!("  isolator exited: {status}");
    if !status.success() {
        mismatches.push(format!("isolator exited with {status} on SIGTERM"));
    }
    let mut clean = true;
    for vm in lab.vms() {
        let left = lab.vif_programs(&vm.vif)?;
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
    lab.destroy()?;
    drop(tmp);

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

/// `pass +N, drop +M (reason)` in the ingress direction (from the VM) of `vif` between two
/// scrapes.
fn counter_change(before: &Metrics, after: &Metrics, vif: &str) -> String {
    let dev = [("device", vif), ("direction", "ingress")];
    let delta = |name: &str| after.sum(name, &dev) - before.sum(name, &dev);
    let mut s = format!(
        "pass +{}, drop +{}",
        delta("isolator_pass_packets_total"),
        delta("isolator_drop_packets_total")
    );
    let reasons: Vec<String> = after
        .find("isolator_drop_packets_total", &dev)
        .iter()
        .filter_map(|smp| {
            let reason = smp.labels.get("reason")?;
            let mut key: Vec<(&str, &str)> = smp
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            key.sort();
            let was = before
                .get("isolator_drop_packets_total", &key)
                .unwrap_or(0.0);
            (smp.value > was).then(|| format!("{reason} +{}", smp.value - was))
        })
        .collect();
    if !reasons.is_empty() {
        s.push_str(&format!(" ({})", reasons.join(", ")));
    }
    s
}

/// `reason/direction=N, ...` for the non-zero drop counters of `vif`.
fn drop_reasons(m: &Metrics, vif: &str) -> String {
    m.find("isolator_drop_packets_total", &[("device", vif)])
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
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(", ")
}
