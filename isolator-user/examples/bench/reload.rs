//! `--reload`: how long after SIGHUP the real daemon has a changed policy in force, at
//! cloud scale, and whether any frame is misjudged meanwhile.
//!
//! The policy is a synthetic cloud (`isolator::policy::synthetic`, `Shape::cloud`: 4
//! segments a tenant, 2 prefixes and 2 exposed endpoints a segment, flows, gateways,
//! uplinks) of 1 000, 10 000 and 100 000 segments, plus a tenant `bench` whose segments
//! `a` and `b` hold the two vifs of this host (`rla`, `rlb`, veths in the benchmark's
//! private namespaces). Each reload moves `b`'s prefix (172.16.1.0/24 <-> 172.16.2.0/24):
//! one segment of the whole plan changes. With `--front` the tenant `bench` comes first
//! in the file and every reload also adds a segment before `b`, so that every segment
//! after it is in another place in the file than in the policy the swap compares with
//! (the other generation's, two reloads before): what a reload writes then shows whether
//! ids follow from places. The time is from just before `kill(SIGHUP)`
//! (the file is written before) to the moment the program attached to `rlb` judges a
//! frame from 172.16.1.2 by the new policy (`BPF_PROG_TEST_RUN` of that program, every
//! 200 us): passed under the first policy, dropped as spoofed under the second. So it
//! holds everything the daemon does: reading, parsing and validating the file, listing
//! the host, compiling, writing the maps, the flip. Each reload is sent once the daemon
//! has counted the previous one (`isolator_policy_reloads_total`) and 2 s more have
//! passed (its own verification runs then). The first two reloads after the daemon's
//! start write the policy whole (the maps it takes over are not known to it), the
//! others only what changed; the table shows them apart.
//!
//! Meanwhile a second thread judges two frames on `rla`, whose segment no reload
//! changes, through its attached program, without pause: a pass within its segment and a
//! drop to another tenant. A run that ends otherwise is misjudged (both policies agree
//! on both frames). That thread shares the 2 CPUs with the daemon, as live traffic would.

use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use isolator::policy::synthetic::{Shape, generate};
use isolator_tests::TempDir;
use isolator_tests::frame;
use isolator_tests::rawbpf::{prog_fd_by_id, test_run_xdp};

use crate::hotplug::{DaemonGuard, Probe, create, isolator_bin, metric, runtime_with_netlink};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// How long a reload may take before the benchmark gives up.
const GIVE_UP: Duration = Duration::from_secs(120);
/// How long the benchmark lets the daemon be after a reload is counted, before the next.
const SETTLE: Duration = Duration::from_secs(2);
/// Reloads the daemon counts as put into effect.
const RELOADS: &str = "isolator_policy_reloads_total{result=\"succeeded\"}";

/// What to measure.
pub struct Config {
    pub sizes: Vec<usize>,
    /// Reloads per size.
    pub runs: usize,
    /// The tenant `bench` first in the file, and every reload adds a segment before `b`:
    /// every segment after it is in another place than in the policy before, and than
    /// in the one the other generation holds (two reloads before).
    pub front: bool,
}

impl Config {
    pub fn full() -> Config {
        Config {
            sizes: vec![1_000, 10_000, 100_000],
            runs: 6,
            front: false,
        }
    }

    /// Tiny sizes: proves the path runs, measures nothing.
    pub fn smoke() -> Config {
        Config {
            sizes: vec![10],
            runs: 2,
            front: false,
        }
    }

    pub const USAGE: &str =
        "usage: bench --reload [--smoke] [--sizes N,N,...] [--runs N] [--front]";

    pub fn from_args(args: impl Iterator<Item = String>) -> anyhow::Result<Config> {
        let mut config = Config::full();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let mut value =
                |what: &str| args.next().with_context(|| format!("{what} needs a value"));
            match arg.as_str() {
                "--smoke" => {
                    config = Config {
                        front: config.front,
                        ..Config::smoke()
                    }
                }
                "--front" => config.front = true,
                "--sizes" => config.sizes = crate::scale::sizes(&value("--sizes")?)?,
                "--runs" => config.runs = crate::scale::number("--runs", &value("--runs")?)?.max(1),
                other => bail!("unknown argument {other:?}; {}", Config::USAGE),
            }
        }
        Ok(config)
    }
}

/// The tenant of this host's two vifs; `b_prefix` is segment `b`'s; `added` more
/// segments (`c1`, `c2`, ..., no vif on this host) between `a` and `b`.
fn bench_tenant(b_prefix: &str, added: usize) -> String {
    let added: String = (1..=added)
        .map(|k| {
            format!(
                "      - name: c{k}\n        interfaces: [\"rlc{k}\"]\n        prefixes: [\"172.17.{}.{}/28\"]\n",
                k / 16,
                (k % 16) * 16
            )
        })
        .collect();
    format!(
        r#"  - name: bench
    segments:
      - name: a
        interfaces: ["rla"]
        prefixes: ["172.16.0.0/24"]
{added}      - name: b
        interfaces: ["rlb"]
        prefixes: ["{b_prefix}"]
"#
    )
}

/// The two policies a reload alternates between, and the verdict of the probe on `rlb`
/// under each.
const POLICIES: [(&str, u32); 2] = [("172.16.1.0/24", XDP_PASS), ("172.16.2.0/24", XDP_DROP)];

fn udp(src: &str, dst: &str) -> Vec<u8> {
    frame::ip(
        [0x02, 0, 0, 0, 0x10, 1],
        [0x02, 0, 0, 0, 0x10, 2],
        src,
        dst,
        frame::udp(40000, 9),
    )
}

/// One size's figures.
struct Row {
    segments: usize,
    bytes: usize,
    /// SIGHUP to in force, each reload.
    reloads: Vec<Duration>,
    runs: u64,
    misjudged: u64,
    /// The daemon's resident memory after the reloads, in bytes (`VmRSS`).
    rss: u64,
}

/// Runs the measurement and prints its table. Call on a thread of its own: it enters
/// private namespaces.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let bin = isolator_bin()?;
    super::live::private_namespaces()?;
    let (rt, netlink) = runtime_with_netlink()?;
    let a = rt.block_on(create(&netlink, "rla", "pla"))?;
    let b = rt.block_on(create(&netlink, "rlb", "plb"))?;
    drop(rt);
    let probe = Probe::new()?;
    let mut rows = Vec::new();
    for &segments in &config.sizes {
        rows.push(measure(
            &bin,
            &probe,
            segments,
            config.runs,
            config.front,
            a,
            b,
        )?);
    }
    print(&rows, &bin, config.front);
    plot(&rows)
}

/// `reload.png`: SIGHUP to in force against the number of segments, for the first
/// reload after the daemon's start (written whole) and the median of the later ones.
fn plot(rows: &[Row]) -> anyhow::Result<()> {
    use crate::plot::{Series, dir, lines};
    let ms = |d: &Duration| (d.as_secs_f64() * 1e3).max(0.001);
    let median = |row: &Row| {
        let mut later: Vec<f64> = row.reloads.iter().skip(1).map(ms).collect();
        later.sort_by(f64::total_cmp);
        later.get(later.len() / 2).copied()
    };
    lines(
        &dir().join("reload.png"),
        "SIGHUP to the changed policy in force (one segment changed)",
        "segments in the policy",
        "ms",
        &[
            Series {
                label: "first reload after the start (written whole)".into(),
                points: rows
                    .iter()
                    .filter_map(|r| Some((r.segments as f64, ms(r.reloads.first()?))))
                    .collect(),
            },
            Series {
                label: "later reloads (median)".into(),
                points: rows
                    .iter()
                    .filter_map(|r| Some((r.segments as f64, median(r)?)))
                    .collect(),
            },
        ],
    )
}

fn measure(
    bin: &std::path::Path,
    probe: &Probe,
    segments: usize,
    runs: usize,
    front: bool,
    a: u32,
    b: u32,
) -> anyhow::Result<Row> {
    let shape = Shape::cloud(segments);
    shape.check().map_err(|e| anyhow::anyhow!(e))?;
    let cloud = generate(&shape);
    let policy = |i: usize| {
        if front {
            let tenant = bench_tenant(POLICIES[i % 2].0, i);
            cloud.replacen("tenants:\n", &format!("tenants:\n{tenant}"), 1)
        } else {
            format!("{cloud}{}", bench_tenant(POLICIES[i % 2].0, 0))
        }
    };
    let tmp = TempDir::new("isolator-reload")?;
    let config = tmp.write("policy.yaml", &policy(0))?;
    let bytes = policy(0).len();
    let daemon = DaemonGuard::start(bin, &config, &tmp)?;
    daemon.wait_healthy(GIVE_UP)?;
    let program = |ifindex: u32| -> anyhow::Result<OwnedFd> {
        let id = probe
            .xdp_program(ifindex)?
            .with_context(|| format!("no XDP program on ifindex {ifindex}"))?;
        prog_fd_by_id(id)
    };
    let (on_a, on_b) = (program(a)?, program(b)?);
    let on_b_probe = udp("172.16.1.2", "172.16.1.3");
    let agreed = [
        (udp("172.16.0.2", "172.16.0.3"), XDP_PASS),
        // 10.0.0.0/28 is tenant t0's; nothing is exposed on UDP.
        (udp("172.16.0.2", "10.0.0.9"), XDP_DROP),
    ];
    for (frame, expected) in &agreed {
        let got = test_run_xdp(on_a.as_fd(), a, frame)?;
        if got != *expected {
            bail!("rla: a frame both policies agree on ended {got}, not {expected}");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (judged, misjudged) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let judge = {
        let (stop, judged, misjudged) = (stop.clone(), judged.clone(), misjudged.clone());
        let program = on_a.try_clone()?;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (frame, expected) in &agreed {
                    let action = test_run_xdp(program.as_fd(), a, frame);
                    judged.fetch_add(1, Ordering::Relaxed);
                    if action.ok() != Some(*expected) {
                        misjudged.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let mut reloads = Vec::new();
    let outcome = (|| -> anyhow::Result<()> {
        let succeeded = || -> anyhow::Result<f64> { Ok(metric(RELOADS)?.unwrap_or(0.0)) };
        for run in 1..=runs {
            let (_, expected) = POLICIES[run % 2];
            std::fs::write(&config, policy(run))?;
            // The daemon is done with the previous reload (what it does once the policy
            // is in force: the re-check of tracked connections, the diff for the log and
            // the audit record), and its verification after it has had a moment.
            let deadline = Instant::now() + GIVE_UP;
            while succeeded()? < (run - 1) as f64 {
                if Instant::now() > deadline {
                    bail!("reload {} not counted after {GIVE_UP:?}", run - 1);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(SETTLE);
            let started = Instant::now();
            // SAFETY: a signal to our own child.
            if unsafe { libc::kill(daemon.pid(), libc::SIGHUP) } != 0 {
                bail!("SIGHUP: {}", std::io::Error::last_os_error());
            }
            loop {
                if test_run_xdp(on_b.as_fd(), b, &on_b_probe)? == expected {
                    reloads.push(started.elapsed());
                    break;
                }
                if started.elapsed() > GIVE_UP {
                    daemon.check_running()?;
                    bail!("reload {run} of {segments} segments not in force after {GIVE_UP:?}");
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    judge
        .join()
        .map_err(|_| anyhow::anyhow!("the judging thread panicked"))?;
    outcome?;
    let rss = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    // With the daemon's debug log on (RUST_LOG=isolator=debug), where its time went.
    if std::env::var_os("RUST_LOG").is_some() {
        for line in daemon.log().lines().filter(|l| {
            ["policy loaded", "reconciled", "swapped", "policy reloaded"]
                .iter()
                .any(|what| l.contains(what))
        }) {
            println!("  daemon: {line}");
        }
    }
    daemon.stop()?;
    Ok(Row {
        segments,
        bytes,
        reloads,
        runs: judged.load(Ordering::Relaxed),
        misjudged: misjudged.load(Ordering::Relaxed),
        rss,
    })
}

fn print(rows: &[Row], bin: &std::path::Path, front: bool) {
    println!(
        "\nreload: SIGHUP to a changed policy in force (one segment's prefix moved{}), real \
         daemon {}, {} CPUs, kernel {}",
        if front {
            "; the changed tenant first, each reload a segment added before it"
        } else {
            ""
        },
        bin.display(),
        // SAFETY: no preconditions.
        unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) },
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{:>9} {:>8} {:>22} {:>8} {:>9} {:>9} {:>9} {:>22} {:>10}",
        "segments",
        "file MB",
        "first two ms",
        "later",
        "min ms",
        "p50 ms",
        "max ms",
        "misjudged / judged",
        "daemon MB"
    );
    for row in rows {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let whole: Vec<String> = row
            .reloads
            .iter()
            .take(2)
            .map(|d| format!("{:.0}", ms(d)))
            .collect();
        let mut later: Vec<f64> = row.reloads.iter().skip(2).map(ms).collect();
        later.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if later.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{:.0}",
                    later[((later.len() - 1) as f64 * q).round() as usize]
                )
            }
        };
        println!(
            "{:>9} {:>8.1} {:>22} {:>8} {:>9} {:>9} {:>9} {:>22} {:>10.0}",
            row.segments,
            row.bytes as f64 / 1e6,
            whole.join(", "),
            later.len(),
            at(0.0),
            at(0.5),
            at(1.0),
            format!("{} / {}", row.misjudged, row.runs),
            row.rss as f64 / 1e6
        );
    }
}
