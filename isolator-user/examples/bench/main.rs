//! `cargo xtask bench`: what each verdict costs, next to baselines measured side by side
//! in the same run, interleaved, with medians. Prints figures and ratios; fails only if it
//! cannot run, never on noise.
//!
//! 1. Live frames ([`live`]): a generator pushes frames for each verdict path through a
//!    veth into a vif carrying, in turn, an XDP_DROP floor, xdp-filter, nftables (netdev
//!    ingress with sets; bridge family with a verdict map) and isolator.
//! 2. Test-run micro numbers: the ingress program's own cost per frame with
//!    BPF_PROG_TEST_RUN (no live frames), next to a program that passes everything.
//! 3. The re-check of tracked connections after a policy swap.
//!
//! `--loader` measures something else, the userspace path of a policy load at cloud
//! scale ([`scale`]: read, parse, validate, compile), and needs no privileges.
//! `--table-size` measures the per-frame cost and the kernel apply time as the policy
//! grows from ten addresses to a million ([`table_size`]). `--reload` measures the time
//! from SIGHUP to a changed policy in force with the real daemon at 1 000 to 100 000
//! segments, and the frames misjudged meanwhile ([`reload`]).
//!
//! Runs in private network and mount namespaces on a thread of its own (veth pairs stand
//! in for vifs); frames go nowhere else. `--smoke` runs tiny sizes (the tests do, so that
//! the benchmark cannot rot); `--rounds N` and `--frames N` size the live part.

mod hotplug;
mod live;
mod plot;
mod reload;
mod scale;
mod table_size;
mod verify_cost;

/// The daemon's allocator, so that the loader's figures are the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use isolator::compile::{Link, Plan};
use isolator::dataplane::Dataplane;
use isolator::policy;
use isolator::recheck::Recheck;
use isolator_tests::frame;

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

/// The vifs, in the order of [`live::Path::vif`].
const VIFS: [&str; 3] = ["b-web", "b-db", "b-globex"];
const WEB: usize = 0;
const DB: usize = 1;

/// How much to measure.
#[derive(Clone, Copy, Debug)]
struct Options {
    live: live::Config,
    /// Test runs per micro measurement, and rounds of them (median kept).
    micro_repeat: u32,
    micro_rounds: usize,
    /// Whether to time the re-check after a policy swap (fills a connection table).
    recheck: bool,
    /// Only the hotplug latency ([`hotplug`]), instead of the rest.
    hotplug: bool,
    /// Only the cost of verifying a large host ([`verify_cost`]).
    verify_cost: bool,
    /// Only the test-run micro numbers (a quick look at the program's own cost).
    micro_only: bool,
}

impl Options {
    const FULL: Options = Options {
        live: live::Config {
            frames: 200_000,
            rounds: 7,
        },
        micro_repeat: 200_000,
        micro_rounds: 5,
        recheck: true,
        hotplug: false,
        verify_cost: false,
        micro_only: false,
    };
    /// Tiny sizes: proves every part runs, measures nothing.
    const SMOKE: Options = Options {
        live: live::Config {
            frames: 4_000,
            rounds: 1,
        },
        micro_repeat: 1_000,
        micro_rounds: 1,
        recheck: false,
        hotplug: false,
        verify_cost: false,
        micro_only: false,
    };

    fn from_args() -> anyhow::Result<Options> {
        let mut options = Options::FULL;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = |what: &str| -> anyhow::Result<u64> {
                let v = args
                    .next()
                    .with_context(|| format!("{what} needs a number"))?;
                v.parse().with_context(|| format!("{what} {v:?}: a number"))
            };
            match arg.as_str() {
                "--smoke" => options = Options::SMOKE,
                "--hotplug" => options.hotplug = true,
                "--verify-cost" => options.verify_cost = true,
                "--micro" => options.micro_only = true,
                "--rounds" => options.live.rounds = number("--rounds")?.max(1) as usize,
                "--frames" => {
                    options.live.frames = number("--frames")?.clamp(1, u32::MAX.into()) as u32
                }
                "--help" | "-h" => {
                    println!(
                        "usage: bench [--smoke] [--rounds N] [--frames N] [--micro] [--hotplug] [--verify-cost]"
                    );
                    println!("       bench --table-size [--smoke]");
                    println!(
                        "       {}",
                        reload::Config::USAGE.trim_start_matches("usage: ")
                    );
                    println!(
                        "       {}",
                        scale::Config::USAGE.trim_start_matches("usage: ")
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        Ok(options)
    }
}

fn main() -> anyhow::Result<()> {
    // As the daemon does (see `isolator::memory`), so that the loader's figures are its.
    isolator::memory::small_pages_only().context("turning transparent huge pages off")?;
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--loader") {
        return scale::run(args.skip(1));
    }
    if args.peek().map(String::as_str) == Some("--reload") {
        let config = reload::Config::from_args(args.skip(1))?;
        return std::thread::spawn(move || reload::run(&config))
            .join()
            .map_err(|_| anyhow::anyhow!("the benchmark thread panicked"))?;
    }
    if args.peek().map(String::as_str) == Some("--table-size") {
        let smoke = args.nth(1).as_deref() == Some("--smoke");
        return std::thread::spawn(move || table_sizes(smoke))
            .join()
            .map_err(|_| anyhow::anyhow!("the benchmark thread panicked"))?;
    }
    let options = Options::from_args()?;
    std::thread::spawn(move || run(options))
        .join()
        .map_err(|_| anyhow::anyhow!("the benchmark thread panicked"))?
}

/// The namespaces, the vifs (veth pairs: `b-web` and its peer `b-web-p`, ...) and the
/// dataplane with the bench policy applied. Call on a thread of its own.
fn lab() -> anyhow::Result<(Dataplane, Vec<Link>)> {
    live::private_namespaces()?;
    let mut links = Vec::new();
    for name in VIFS {
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
    Ok((dp, links))
}

/// The verdict paths of the live benchmark, one 60-byte IPv4 frame each. The exposed
/// endpoint's SYN comes before the tracked reply: it opens that connection.
fn paths() -> Vec<live::Path> {
    let path = |name, vif, frame: Vec<u8>, passes| live::Path {
        name,
        vif,
        frame: pad60(frame),
        passes,
        opened_by: None,
    };
    let exposed = 4;
    let mut paths = vec![
        path(
            "cross tenant",
            WEB,
            tcp("10.1.1.2", "10.2.1.3", 40000, 22, SYN),
            false,
        ),
        path(
            "cross segment",
            WEB,
            tcp("10.1.1.2", "10.1.2.3", 40000, 22, SYN),
            false,
        ),
        path(
            "management",
            WEB,
            tcp("10.1.1.2", "192.168.100.1", 40000, 22, SYN),
            false,
        ),
        path(
            "not exposed",
            DB,
            tcp("10.1.2.5", "10.1.1.10", 40000, 8080, SYN),
            false,
        ),
        path(
            "exposed endpoint",
            DB,
            tcp("10.1.2.5", "10.1.1.10", 40000, 443, SYN),
            true,
        ),
        path(
            "flow",
            WEB,
            tcp("10.1.1.2", "10.1.2.5", 40001, 5432, SYN),
            true,
        ),
        path(
            "tracked reply",
            WEB,
            syn_ack("10.1.1.10", "10.1.2.5", 443, 40000),
            true,
        ),
        path(
            "same segment",
            WEB,
            tcp("10.1.1.2", "10.1.1.3", 40000, 22, ACK),
            true,
        ),
    ];
    assert_eq!(paths[exposed].name, "exposed endpoint");
    paths[6].opened_by = Some(exposed);
    paths
}

/// Pads a frame to the Ethernet minimum (60 bytes without the FCS).
fn pad60(mut frame: Vec<u8>) -> Vec<u8> {
    if frame.len() < 60 {
        frame.resize(60, 0);
    }
    frame
}

fn run(options: Options) -> anyhow::Result<()> {
    if options.hotplug {
        return hotplug::run();
    }
    if options.verify_cost {
        return verify_cost::run();
    }
    let (mut dp, links) = lab()?;
    if options.micro_only {
        return micro(&mut dp, &links, options);
    }
    let reports = live::run(&mut dp, &links, &paths(), options.live)?;
    live::print(&reports, options.live);
    println!();
    micro(&mut dp, &links, options)?;
    if options.recheck {
        recheck(&mut dp, &links)?;
    }
    Ok(())
}

/// `--table-size`: the lab, then [`table_size::run`].
fn table_sizes(smoke: bool) -> anyhow::Result<()> {
    let (_dp, links) = lab()?;
    let policy = policy::parse(POLICY, "bench.yaml").map_err(|d| anyhow::anyhow!("{d}"))?;
    let base = Plan::new(&policy, &links)?;
    if smoke {
        let o = Options::SMOKE;
        table_size::run(
            &links,
            &base,
            &table_size::SMOKE,
            o.micro_repeat,
            o.micro_rounds,
        )
    } else {
        table_size::run(&links, &base, &table_size::FULL, 100_000, 5)
    }
}

/// The test-run micro table: BPF_PROG_TEST_RUN, no live frames.
fn micro(dp: &mut Dataplane, links: &[Link], options: Options) -> anyhow::Result<()> {
    let (repeat, rounds) = (options.micro_repeat, options.micro_rounds);
    let (web, db) = (links[WEB].ifindex, links[DB].ifindex);

    // (what, vif, frame, the case whose frame opens the connection this one replies in)
    let case = |name, vif, frame| (name, vif, frame, None);
    let mut cases: Vec<(&str, u32, Vec<u8>, Option<usize>)> = vec![
        case(
            "IPv4 same segment (pass)",
            web,
            tcp("10.1.1.2", "10.1.1.3", 40000, 22, ACK),
        ),
        case(
            "IPv4 cross tenant (drop)",
            web,
            tcp("10.1.1.2", "10.2.1.3", 40000, 22, SYN),
        ),
        case(
            "IPv4 to an exposed endpoint (SYN, tracked)",
            db,
            tcp("10.1.2.5", "10.1.1.10", 40000, 443, SYN),
        ),
        case(
            "IPv4 reply of a tracked connection",
            web,
            syn_ack("10.1.1.10", "10.1.2.5", 443, 40000),
        ),
        case(
            "IPv4 to a management prefix (drop)",
            web,
            tcp("10.1.1.2", "192.168.100.1", 40000, 22, SYN),
        ),
        case(
            "IPv6 same segment (pass)",
            web,
            tcp("fd00:1:1::2", "fd00:1:1::3", 40000, 22, ACK),
        ),
        case(
            "IPv6 cross tenant (drop)",
            web,
            tcp("fd00:1:1::2", "fd00:2:1::3", 40000, 22, SYN),
        ),
    ];
    cases[3].3 = Some(2);

    println!(
        "test-run micro (BPF_PROG_TEST_RUN, no live frames): isolator ingress verdict vs. a \
         pass-everything XDP program, {repeat} runs x {rounds} rounds (median), {} CPUs, kernel {}",
        // SAFETY: no preconditions (the thread is pinned: count the machine's).
        unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) },
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{:<46} {:>12} {:>12} {:>8} {:>14} {:>8}",
        "frame", "baseline ns", "isolator ns", "ratio", "Mpps per core", "verdict"
    );
    for (name, ifindex, frame, opened_by) in &cases {
        let mut baseline = Vec::new();
        let mut enforcer = Vec::new();
        // Alternate, so that both see the same machine conditions.
        for _ in 0..rounds {
            if let Some(opener) = opened_by {
                let (_, opener_vif, opener_frame, _) = &cases[*opener];
                live::open_connection(dp, *opener_vif, *ifindex, opener_frame)?;
            }
            baseline.push(dp.bench_ingress(*ifindex, frame, repeat, true)?);
            enforcer.push(dp.bench_ingress(*ifindex, frame, repeat, false)?);
        }
        // What the runs measured: the verdict they ended in.
        let verdict = match dp.test_run_ingress(*ifindex, frame)? {
            1 => "drop",
            2 => "pass",
            _ => "other",
        };
        let (b, e) = (median(&mut baseline), median(&mut enforcer));
        let ratio = e.as_secs_f64() / b.as_secs_f64().max(1e-12);
        println!(
            "{:<46} {:>12} {:>12} {:>7.2}x {:>14.1} {:>8}",
            name,
            b.as_nanos(),
            e.as_nanos(),
            ratio,
            1e3 / (e.as_nanos().max(1) as f64),
            verdict
        );
    }
    let frame = &cases[0].2;
    let mut tags = Vec::new();
    for _ in 0..rounds {
        tags.push(dp.bench_tags(web, frame, repeat)?);
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
    Ok(())
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

const SYN: u8 = frame::SYN;
const ACK: u8 = frame::ACK;
/// The MACs of every frame: the bridge of the live benchmark forwards `DST_MAC` to its
/// sink.
const SRC_MAC: frame::Mac = [0x02, 0, 0, 0, 0, 1];
pub const DST_MAC: frame::Mac = [0x02, 0, 0, 0, 0, 2];

/// An Ethernet frame with a TCP segment (sequence number 1), valid checksums; the family
/// follows the addresses.
fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frame::ip(SRC_MAC, DST_MAC, src, dst, frame::tcp(sport, dport, flags))
}

/// The SYN-ACK answering [`tcp`]'s SYN from `dst:dport` to `src:sport`: it acknowledges
/// the SYN (sequence number 1), as connection tracking requires.
fn syn_ack(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    frame::ip(
        SRC_MAC,
        DST_MAC,
        src,
        dst,
        frame::tcp_at(sport, dport, frame::SYN_ACK, 1000, 2),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark at tiny sizes, so that it cannot rot: every arm runs on every path
    /// and yields finite figures, and every arm's verdicts are the intended ones. Asserts
    /// no timing.
    #[test]
    fn smoke() {
        let options = Options::SMOKE;
        let reports = std::thread::spawn(move || -> anyhow::Result<Vec<live::PathReport>> {
            let (mut dp, links) = lab()?;
            let reports = live::run(&mut dp, &links, &paths(), options.live)?;
            live::print(&reports, options.live);
            micro(&mut dp, &links, options)?;
            table_sizes(true)?;
            Ok(reports)
        })
        .join()
        .expect("the benchmark thread panicked")
        .expect("the benchmark ran");
        assert_eq!(reports.len(), paths().len());
        for report in &reports {
            assert_eq!(report.rows.len(), live::Arm::ALL.len(), "{}", report.path);
            for row in &report.rows {
                let what = format!("{}, {}", report.path, row.arm.label());
                assert!(
                    row.ns_per_frame.is_finite() && row.ns_per_frame > 0.0,
                    "{what}: {row:?}"
                );
                assert!(row.ratio_to_floor.is_finite(), "{what}: {row:?}");
                assert!(row.received > 0, "{what}: no frame arrived: {row:?}");
                if let Some(ns) = row.program_ns {
                    assert!(ns.is_finite(), "{what}: {row:?}");
                }
                assert!(row.verdict_ok, "{what}: verdict not as intended: {row:?}");
            }
        }
    }
}
