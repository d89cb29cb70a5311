//! `cargo xtask bench`: the cost of the ingress verdict per frame, next to a program that
//! passes everything, measured side by side in one run with BPF_PROG_TEST_RUN (the
//! kernel times `repeat` runs of each). Prints ratios; fails only if it cannot run.
//!
//! Runs in a private network namespace on a thread of its own (veth pairs stand in for
//! vifs); nothing is attached anywhere and nothing is sent.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{BufMut, BytesMut};
use isolator::compile::{Link, Plan};
use isolator::dataplane::Dataplane;
use isolator::policy;
use isolator::recheck::Recheck;

const POLICY: &str = r#"
version: 1
management:
  - prefix: 192.168.100.0/24
tenants:
  - name: acme
    flows:
      - from: web
        to: db
        protocol: tcp
        ports: 5432
    segments:
      - name: web
        interfaces: ["b-web"]
        prefixes: ["10.1.1.0/24", "fd00:1:1::/64"]
        expose:
          - address: 10.1.1.10
            protocol: tcp
            ports: 443
      - name: db
        interfaces: ["b-db"]
        prefixes: ["10.1.2.0/24", "fd00:1:2::/64"]
  - name: globex
    segments:
      - name: web
        interfaces: ["b-globex"]
        prefixes: ["10.2.1.0/24", "fd00:2:1::/64"]
"#;

/// Runs per measurement; each measurement is repeated and the median kept.
const REPEAT: u32 = 200_000;
const ROUNDS: usize = 5;

fn main() -> anyhow::Result<()> {
    std::thread::spawn(run)
        .join()
        .map_err(|_| anyhow::anyhow!("the benchmark thread panicked"))?
}

fn run() -> anyhow::Result<()> {
    // SAFETY: unshare affects only this thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "unshare(CLONE_NEWNET): {} (run as root)",
            std::io::Error::last_os_error()
        );
    }
    let mut links = Vec::new();
    for name in ["b-web", "b-db", "b-globex"] {
        let status = Command::new("ip")
            .args(["link", "add", name, "type", "veth", "peer", "name"])
            .arg(format!("{name}-p"))
            .status()
            .context("running ip")?;
        if !status.success() {
            bail!("ip link add {name} failed");
        }
        let c = std::ffi::CString::new(name)?;
        // SAFETY: c is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        links.push(Link::veth(name, ifindex));
    }
    let policy = policy::parse(POLICY, "bench.yaml").map_err(|d| anyhow::anyhow!("{d}"))?;
    let plan = Plan::new(&policy, &links)?;
    let mut dp = Dataplane::load()?;
    dp.apply(&plan)?;
    let (web, db) = (links[0].ifindex, links[1].ifindex);

    let cases: Vec<(&str, u32, Vec<u8>)> = vec![
        (
            "IPv4 same segment (pass)",
            web,
            tcp("10.1.1.2", "10.1.1.3", 40000, 22, 0x10),
        ),
        (
            "IPv4 cross tenant (drop)",
            web,
            tcp("10.1.1.2", "10.2.1.3", 40000, 22, 0x02),
        ),
        (
            "IPv4 to an exposed endpoint (SYN, tracked)",
            db,
            tcp("10.1.2.5", "10.1.1.10", 40000, 443, 0x02),
        ),
        (
            "IPv4 reply of a tracked connection",
            web,
            tcp("10.1.1.10", "10.1.2.5", 443, 40000, 0x12),
        ),
        (
            "IPv4 to a management prefix (drop)",
            web,
            tcp("10.1.1.2", "192.168.100.1", 40000, 22, 0x02),
        ),
        (
            "IPv6 same segment (pass)",
            web,
            tcp("fd00:1:1::2", "fd00:1:1::3", 40000, 22, 0x10),
        ),
        (
            "IPv6 cross tenant (drop)",
            web,
            tcp("fd00:1:1::2", "fd00:2:1::3", 40000, 22, 0x02),
        ),
    ];

    println!(
        "isolator ingress verdict vs. a pass-everything XDP program, BPF_PROG_TEST_RUN, \
         {REPEAT} runs x {ROUNDS} rounds (median), {} CPUs, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{:<46} {:>12} {:>12} {:>8} {:>14}",
        "frame", "baseline ns", "isolator ns", "ratio", "Mpps per core"
    );
    for (name, ifindex, frame) in &cases {
        let mut baseline = Vec::new();
        let mut enforcer = Vec::new();
        // Alternate, so that both see the same machine conditions.
        for _ in 0..ROUNDS {
            baseline.push(dp.bench_ingress(*ifindex, frame, REPEAT, true)?);
            enforcer.push(dp.bench_ingress(*ifindex, frame, REPEAT, false)?);
        }
        let (b, e) = (median(&mut baseline), median(&mut enforcer));
        let ratio = e.as_secs_f64() / b.as_secs_f64().max(1e-12);
        println!(
            "{:<46} {:>12} {:>12} {:>7.2}x {:>14.1}",
            name,
            b.as_nanos(),
            e.as_nanos(),
            ratio,
            1e3 / (e.as_nanos().max(1) as f64)
        );
    }
    let frame = &cases[0].2;
    let mut tags = Vec::new();
    for _ in 0..ROUNDS {
        tags.push(dp.bench_tags(web, frame, REPEAT)?);
    }
    println!(
        "{:<46} {:>12} {:>12}",
        "TC ingress (VLAN tag in metadata?), untagged",
        "-",
        median(&mut tags).as_nanos()
    );
    println!(
        "(times are the kernel's average per run; noise of a few ns is normal: compare ratios \
         within one run)"
    );
    recheck(&mut dp, &links)
}

/// The re-check of tracked connections after a policy swap, with a full table: once with
/// the same policy (everything kept: the cost of listing and judging) and once with the
/// exposure removed (everything revoked: listing, judging and deleting).
fn recheck(dp: &mut Dataplane, links: &[Link]) -> anyhow::Result<()> {
    let db = links[1].ifindex;
    // One vif's table of connections being opened (SYNs without answers stay there).
    let capacity = isolator_common::limits::OPENING_PER_VIF;
    let started = Instant::now();
    for i in 0..capacity {
        // Distinct clients of db (10.1.2.1-254) on distinct ports, SYN to web's exposed
        // endpoint: each opens one connection.
        let host = 1 + (i % 254);
        let port = 1024 + (i / 254) as u16;
        let frame = tcp(&format!("10.1.2.{host}"), "10.1.1.10", port, 443, 0x02);
        dp.test_run_ingress(db, &frame)?;
    }
    let fill = started.elapsed();
    let entries = dp.connections()?.len();
    println!(
        "\nre-check after a policy swap, {entries} tracked connections (table of {capacity}, \
         filled in {:.1} s by test runs)",
        fill.as_secs_f64()
    );
    let same = Plan::new(
        &policy::parse(POLICY, "bench.yaml").map_err(|d| anyhow::anyhow!("{d}"))?,
        links,
    )?;
    let narrower = POLICY.replace("ports: 443", "ports: 8443");
    let narrower = Plan::new(
        &policy::parse(&narrower, "bench.yaml").map_err(|d| anyhow::anyhow!("{d}"))?,
        links,
    )?;
    for (what, plan) in [
        ("same policy, every connection kept", &same),
        ("exposure removed, every connection revoked", &narrower),
    ] {
        let started = Instant::now();
        let revoked = dp.revoke_connections(&Recheck::new(plan))?;
        println!(
            "{what:<46} {:>8} ms ({revoked} revoked)",
            started.elapsed().as_millis()
        );
    }
    Ok(())
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// An Ethernet frame with a TCP segment; the family follows the addresses.
fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let src: IpAddr = src.parse().unwrap();
    let dst: IpAddr = dst.parse().unwrap();
    let mut segment = BytesMut::new();
    segment.put_u16(sport);
    segment.put_u16(dport);
    segment.put_u32(1);
    segment.put_u32(0);
    segment.put_u8(5 << 4);
    segment.put_u8(flags);
    segment.put_u16(65535);
    segment.put_u32(0);
    let mut b = BytesMut::new();
    b.put_slice(&[0x02, 0, 0, 0, 0, 2]);
    b.put_slice(&[0x02, 0, 0, 0, 0, 1]);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            b.put_u16(0x0800);
            b.put_u8(0x45);
            b.put_u8(0);
            b.put_u16(20 + segment.len() as u16);
            b.put_u32(0);
            b.put_u8(64);
            b.put_u8(6);
            b.put_u16(0);
            b.put_slice(&s.octets());
            b.put_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            b.put_u16(0x86dd);
            b.put_u32(6 << 28);
            b.put_u16(segment.len() as u16);
            b.put_u8(6);
            b.put_u8(64);
            b.put_slice(&s.octets());
            b.put_slice(&d.octets());
        }
        _ => panic!("mixed address families"),
    }
    b.put_slice(&segment);
    b.to_vec()
}
