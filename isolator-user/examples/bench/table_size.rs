//! `--table-size`: what a frame costs as the policy grows from ten addresses to a million,
//! and what putting such a policy into the kernel takes.
//!
//! The bench policy is grown at the plan level (no YAML: `--loader` measures that part)
//! by extra tenants of one segment each, a /24 apiece (from 11.0.0.0 upwards, up to
//! 100 000 segments), and beyond that by exposed /32 endpoints inside them (TCP 443). The
//! prefix lengths in use stay those of the bench policy (/24 and /32), so what grows is
//! only the number of entries. For each size, on one dataplane sized for the largest:
//! the time `Dataplane::apply` takes to put the policy into the kernel whole (encode the
//! plan's entries, remove what the other generation held, write it, flip, wait, remove the
//! old one: what a reload cost before reloads wrote only what changed) and how much of it
//! the encoding is; the time a reload that changes one segment's prefix takes (it writes
//! only the entries that differ) and the entries it writes; how many frames a second
//! thread judging without pause during both saw misjudged; the entries and the kernel
//! memory of the address map; and the test-run time of
//! the ingress verdict for a cross-tenant drop, a same-segment pass and a drop into one
//! of the extra segments, interleaved with a pass-everything program, medians.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context as _;
use ipnet::Ipv4Net;
use isolator::compile::{Plan, SegmentRef};
use isolator::dataplane::{Dataplane, Sizes};
use isolator::encode::encode;
use isolator_common::programs;
use isolator_common::{Rule, RuleSet, SegmentInfo, maps, protocol};
use isolator_tests::rawbpf::test_run_xdp;

use crate::{WEB, median, tcp};

/// The sizes measured (addresses: segment prefixes plus exposed endpoints).
pub const FULL: [usize; 4] = [10, 1_000, 100_000, 1_000_000];
/// Tiny sizes for the smoke test.
pub const SMOKE: [usize; 2] = [10, 100];

/// The most extra segments added; beyond it, addresses are exposed endpoints.
const MAX_SEGMENTS: usize = 100_000;

/// The `i`-th extra segment's /24, from 11.0.0.0 upwards.
fn extra_prefix(i: usize) -> Ipv4Net {
    let base = u32::from(Ipv4Addr::new(11, 0, 0, 0)) + (i as u32) * 256;
    Ipv4Net::new(Ipv4Addr::from(base), 24).expect("a /24")
}

/// `base` with `addresses` more addresses: extra one-segment tenants, then exposed
/// endpoints in them.
pub fn grow(base: &Plan, addresses: usize) -> Plan {
    let mut plan = base.clone();
    let segments = addresses.min(MAX_SEGMENTS);
    // Above every id of the base plan's (ids follow from names: see `stable_ids`).
    let first_id = plan.segments.iter().map(|s| s.id + 1).max().unwrap_or(1);
    let first_tenant = plan
        .segments
        .iter()
        .map(|s| s.tenant_id + 1)
        .max()
        .unwrap_or(0);
    for i in 0..segments {
        let id = first_id + i as u32;
        plan.segments.push(SegmentRef {
            id,
            tenant_id: first_tenant + i as u32,
            tenant: format!("t{i}").into(),
            name: "s".into(),
            flags: SegmentInfo::EGRESS_ALLOW,
        });
        plan.v4.push((extra_prefix(i), id));
    }
    plan.index_segments();
    let mut https = RuleSet::default();
    https.rules[0] = Rule {
        protocol: protocol::TCP,
        first_port: 443,
        last_port: 443,
        ..Rule::default()
    };
    https.count = 1;
    for j in 0..addresses - segments {
        let prefix = extra_prefix(j % segments.max(1));
        let host = (j / segments.max(1)) as u32 + 1;
        let addr = Ipv4Addr::from(u32::from(prefix.network()) + host);
        plan.exposed_v4
            .push((Ipv4Net::new(addr, 32).expect("a /32"), https));
    }
    plan
}

/// One size's figures.
struct Row {
    addresses: usize,
    entries: usize,
    /// Of which the plan's entries (pure userspace).
    encoding: Duration,
    /// Putting the policy into the kernel whole.
    apply: Duration,
    /// A reload that changes one segment's prefix, and the entries it wrote and removed.
    one_segment: Duration,
    one_segment_entries: usize,
    /// Test runs judged while the swap ran, and how many ended otherwise than both
    /// policies say.
    runs: u64,
    misjudged: u64,
    memory: u64,
    /// (case, isolator ns, baseline ns, verdict)
    cases: Vec<(&'static str, Duration, Duration, u32)>,
}

/// Measures every size in `sizes`: `repeat` test runs per measurement, `rounds` rounds.
pub fn run(
    links: &[isolator::compile::Link],
    base: &Plan,
    sizes: &[usize],
    repeat: u32,
    rounds: usize,
) -> anyhow::Result<()> {
    let largest = grow(base, sizes.iter().copied().max().unwrap_or(0));
    let mut dp = Dataplane::load_sized(&Sizes::for_plan(&largest))
        .context("loading a dataplane sized for the largest policy")?;
    drop(largest);
    let web = links[WEB].ifindex;
    let cases: [(&'static str, Vec<u8>); 3] = [
        (
            "cross tenant (drop)",
            tcp("10.1.1.2", "10.2.1.3", 40000, 22, crate::SYN),
        ),
        (
            "same segment (pass)",
            tcp("10.1.1.2", "10.1.1.3", 40000, 22, crate::ACK),
        ),
        (
            "to an extra tenant (drop)",
            tcp("10.1.1.2", "11.0.0.77", 40000, 22, crate::SYN),
        ),
    ];
    // The swaps measured below are from a policy in force, as a reload's are.
    dp.apply(base).context("applying the bench policy")?;
    let mut rows = Vec::new();
    for &addresses in sizes {
        let plan = grow(base, addresses);
        let started = Instant::now();
        let entries = encode(&plan, 0).addresses_v4.len();
        let encoding = started.elapsed();
        let program = dp.program_fd(programs::XDP_INGRESS)?;
        let frames = [(cases[0].1.clone(), 1), (cases[1].1.clone(), 2)];
        // As a reload whose policy the daemon does not know the maps to hold: whole.
        dp.forget_contents();
        let (apply, mut runs, mut misjudged) = judged_apply(&mut dp, &plan, &program, web, &frames)
            .with_context(|| format!("applying the policy grown by {addresses} addresses"))?;
        // The other generation now holds nothing; once it holds this policy too, a reload
        // that moves one segment's prefix elsewhere.
        dp.apply(&plan).context("applying the same policy again")?;
        let mut moved = plan.clone();
        if let Some((prefix, _)) = moved.v4.last_mut() {
            *prefix = Ipv4Net::new(Ipv4Addr::new(12, 0, 0, 0), 24).expect("a /24");
        }
        let (one_segment, more_runs, more_misjudged) =
            judged_apply(&mut dp, &moved, &program, web, &frames)
                .context("applying a policy with one segment changed")?;
        runs += more_runs;
        misjudged += more_misjudged;
        let one_segment_entries = dp.last_written().map(|w| w.put + w.removed).unwrap_or(0);
        let memory = dp
            .footprints()?
            .iter()
            .find(|f| f.name == maps::ADDRESSES_V4)
            .map(|f| f.memory_bytes)
            .unwrap_or(0);
        let mut measured = Vec::new();
        for (name, frame) in &cases {
            let (mut own, mut floor) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                floor.push(dp.bench_ingress(web, frame, repeat, true)?);
                own.push(dp.bench_ingress(web, frame, repeat, false)?);
            }
            let verdict = dp.test_run_ingress(web, frame)?;
            measured.push((*name, median(&mut own), median(&mut floor), verdict));
        }
        rows.push(Row {
            addresses,
            entries,
            encoding,
            apply,
            one_segment,
            one_segment_entries,
            runs,
            misjudged,
            memory,
            cases: measured,
        });
    }
    print(&rows, repeat, rounds);
    plot(&rows)
}

/// `dp.apply(plan)`, timed, while a second thread judges `frames` on `vif` without pause:
/// every run must end as given (both policies, old and new, agree on them). The time, the
/// runs, and how many ended otherwise.
fn judged_apply(
    dp: &mut Dataplane,
    plan: &Plan,
    program: &std::os::fd::OwnedFd,
    vif: u32,
    frames: &[(Vec<u8>, u32)],
) -> anyhow::Result<(Duration, u64, u64)> {
    let program = program.try_clone()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (runs, misjudged) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let judge = {
        let (stop, runs, misjudged) = (stop.clone(), runs.clone(), misjudged.clone());
        let frames = frames.to_vec();
        // A thread spawned here shares this thread's (private) network namespace.
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (frame, expected) in &frames {
                    let action = test_run_xdp(std::os::fd::AsFd::as_fd(&program), vif, frame);
                    runs.fetch_add(1, Ordering::Relaxed);
                    if action.ok() != Some(*expected) {
                        misjudged.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let started = Instant::now();
    let applied = dp.apply(plan);
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    judge
        .join()
        .map_err(|_| anyhow::anyhow!("the judging thread panicked"))?;
    applied?;
    Ok((
        took,
        runs.load(Ordering::Relaxed),
        misjudged.load(Ordering::Relaxed),
    ))
}

/// `table-size-ns.png` (ns per frame against the number of addresses, for each case and
/// the pass-everything baseline) and `table-size-apply.png` (the apply time against the
/// number of addresses, and of segments).
fn plot(rows: &[Row]) -> anyhow::Result<()> {
    use crate::plot::{Series, dir, lines};
    let x = |r: &Row| r.addresses.max(1) as f64;
    let mut series: Vec<Series> = rows[0]
        .cases
        .iter()
        .enumerate()
        .map(|(i, (name, ..))| Series {
            label: format!("isolator: {name}"),
            points: rows
                .iter()
                .map(|r| (x(r), r.cases[i].1.as_nanos().max(1) as f64))
                .collect(),
        })
        .collect();
    series.push(Series {
        label: "pass-everything program".into(),
        points: rows
            .iter()
            .map(|r| {
                let floor = r.cases.iter().map(|c| c.2.as_nanos()).min().unwrap_or(1);
                (x(r), floor.max(1) as f64)
            })
            .collect(),
    });
    lines(
        &dir().join("table-size-ns.png"),
        "Per-frame cost against table size (test runs, medians)",
        "addresses in the policy",
        "ns per frame",
        &series,
    )?;
    lines(
        &dir().join("table-size-apply.png"),
        "Policy apply time against table size",
        "addresses (up to 100 000: one-segment tenants, one /24 each; beyond: exposed /32s)",
        "apply ms (write, flip, wait)",
        &[
            Series {
                label: "the whole policy".into(),
                points: rows
                    .iter()
                    .map(|r| (x(r), (r.apply.as_secs_f64() * 1e3).max(0.001)))
                    .collect(),
            },
            Series {
                label: "a reload changing one segment".into(),
                points: rows
                    .iter()
                    .map(|r| (x(r), (r.one_segment.as_secs_f64() * 1e3).max(0.001)))
                    .collect(),
            },
        ],
    )
}

fn print(rows: &[Row], repeat: u32, rounds: usize) {
    println!(
        "\nper-frame cost against table size (test runs of the ingress verdict, {repeat} runs x \
         {rounds} rounds, medians; the bench policy grown by one-segment tenants with a /24 \
         each, then exposed /32s; prefix lengths in use: /24 and /32)"
    );
    print!(
        "{:>10} {:>10} {:>10} {:>11} {:>14} {:>8} {:>20} {:>10}",
        "addresses",
        "entries",
        "apply ms",
        "encoding ms",
        "1 segment ms",
        "written",
        "misjudged / judged",
        "map MiB"
    );
    for (name, ..) in &rows[0].cases {
        print!(" {:>28}", format!("{name} ns (x at 10)"));
    }
    println!();
    for row in rows {
        print!(
            "{:>10} {:>10} {:>10.1} {:>11.1} {:>14.1} {:>8} {:>20} {:>10.1}",
            row.addresses,
            row.entries,
            row.apply.as_secs_f64() * 1e3,
            row.encoding.as_secs_f64() * 1e3,
            row.one_segment.as_secs_f64() * 1e3,
            row.one_segment_entries,
            format!("{} / {}", row.misjudged, row.runs),
            row.memory as f64 / (1 << 20) as f64
        );
        for (i, (_, own, _, verdict)) in row.cases.iter().enumerate() {
            let first = rows[0].cases[i].1.as_nanos().max(1) as f64;
            let ns = own.as_nanos();
            let what = match verdict {
                1 => "drop",
                2 => "pass",
                _ => "other",
            };
            print!(
                " {:>28}",
                format!("{ns} ({:.2}x) {what}", ns as f64 / first)
            );
        }
        println!();
    }
    println!(
        "(baseline, a pass-everything program, measured alongside: {} ns)",
        rows.iter()
            .flat_map(|r| r.cases.iter().map(|c| c.2.as_nanos()))
            .min()
            .unwrap_or(0)
    );
}
