//! The verbs a person runs: `cargo xtask setup | demo | test | lint | bench | fuzz`.

mod demo;
mod package;
mod setup;
mod watchdog;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::setup::run_cmd;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Install every prerequisite (Debian packages, rust-src, bpf-linker); idempotent.
    Setup,
    /// Set up, build, and show isolator enforcing on a lab of network namespaces.
    Demo,
    /// Set up, check formatting and lints, build, and run every test (unit, BPF test
    /// runs, namespace integration tests). This is what CI runs.
    Test,
    /// Check formatting and clippy only.
    Lint,
    /// Measure each verdict path on live frames (isolator next to an XDP_DROP floor,
    /// xdp-filter and nftables, interleaved in one run), then the test-run micro numbers;
    /// prints figures and ratios, never fails on noise. Arguments go to the benchmark:
    /// `--rounds N`, `--frames N`, `--smoke`. `bench --loader [--sizes N,N] [--runs N]`
    /// instead times reading, parsing, validating and compiling policies of up to
    /// 100 000 segments (no kernel, no root).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build a Debian package (target/package/isolator_VERSION-REVISION_amd64.deb) with
    /// the binary, the systemd unit, an example policy, manual pages, completions, the
    /// docs, the Grafana dashboard and the alert rules.
    Package {
        /// The Debian revision.
        #[arg(long, default_value_t = 1)]
        revision: u32,
        /// Where to write it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Package this binary instead of building the release one.
        #[arg(long)]
        bin: Option<PathBuf>,
        /// Do not compress (quicker; for tests).
        #[arg(long)]
        uncompressed: bool,
    },
    /// Hold the kernel programs to the reference model (`isolator::model`): the
    /// differential test with many more frames than `test` runs (random policies ×
    /// random frames, BPF_PROG_TEST_RUN against the model); prints the count and the
    /// time, and on a disagreement the minimal policy and frame.
    Fuzz {
        /// How many frames to judge.
        #[arg(long, default_value_t = 1_000_000)]
        cases: u64,
        /// Replay a run: the seed a previous run printed (default: a fresh one).
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Verb::Setup => setup::run(),
        Verb::Demo => {
            require_root("the demo creates network namespaces and loads eBPF programs")?;
            setup::run()?;
            let isolator_bin = build_isolator()?;
            demo::run(demo::DemoOptions { isolator_bin })
        }
        Verb::Test => {
            require_root("the tests create network namespaces and load eBPF programs")?;
            test()
        }
        Verb::Lint => lint(),
        Verb::Package {
            revision,
            out,
            bin,
            uncompressed,
        } => package::run(&package::PackageOptions {
            bin,
            revision,
            uncompressed,
            out: out.unwrap_or_else(|| target_dir().join("package")),
        })
        .map(|_| ()),
        Verb::Bench { args } => {
            // The loader's benchmark touches no kernel: no root, nothing to set up.
            if args.first().map(String::as_str) != Some("--loader") {
                require_root("the benchmark loads eBPF programs")?;
                setup::run()?;
            }
            println!("bench: building (release) and running");
            run_cmd(
                cargo()
                    .args([
                        "run",
                        "--release",
                        "--quiet",
                        "--package",
                        "isolator-user",
                        "--example",
                        "bench",
                        "--",
                    ])
                    .args(&args),
            )
        }
        Verb::Fuzz { cases, seed } => {
            require_root(
                "the differential test creates network namespaces and loads eBPF programs",
            )?;
            setup::run()?;
            fuzz(cases, seed)
        }
    }
}

/// Runs the differential test with `cases` frames and reports how many ran and how long.
fn fuzz(cases: u64, seed: Option<u64>) -> anyhow::Result<()> {
    println!("fuzz: {cases} frames, kernel against model");
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--package",
        "isolator-user",
        "--test",
        "verdicts",
        "--",
        "--exact",
        "differential::differential_kernel_against_model",
        "--nocapture",
    ])
    .env("ISOLATOR_MODEL_CASES", cases.to_string());
    // A fresh seed unless one is given (the test command's own default is fixed).
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    cmd.env("ISOLATOR_MODEL_SEED", seed.to_string());
    let started = std::time::Instant::now();
    let result = run_cmd(&mut cmd);
    println!(
        "fuzz: {} after {:.0} s (the test's own line above gives the frames judged)",
        if result.is_ok() {
            "no disagreement"
        } else {
            "DISAGREEMENT"
        },
        started.elapsed().as_secs_f64()
    );
    result
}

/// How long the whole of `cargo xtask test` may take unless `XTASK_TEST_TIMEOUT_MINUTES`
/// says otherwise (CI allows 90; a run takes about 15 on two cores once set up, 35 on a
/// new machine, which first builds bpf-linker and everything else).
const TEST_TIMEOUT_MINUTES: u64 = 60;

/// `cargo xtask test`: set up, lint, build, every test, the demo's own checks. Every phase
/// after setup runs even when one before it failed (a lint failure hides no test
/// failure); the run fails if any did, and the last lines say which.
fn test() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let minutes = match std::env::var("XTASK_TEST_TIMEOUT_MINUTES") {
        Ok(v) => v
            .parse::<u64>()
            .with_context(|| format!("XTASK_TEST_TIMEOUT_MINUTES={v:?}: a whole number"))?,
        Err(_) => TEST_TIMEOUT_MINUTES,
    };
    watchdog::arm(std::time::Duration::from_secs(minutes * 60));
    watchdog::phase("setup");
    setup::run()?;
    let mut report = Vec::new();
    let mut failed = Vec::new();

    watchdog::phase("lint");
    match lint() {
        Ok(()) => report.push("lint: ok".to_string()),
        Err(e) => {
            report.push(format!("lint: FAILED: {e:#}"));
            failed.push("lint");
        }
    }

    watchdog::phase("building the isolator binaries");
    let rehearsal_bin = build_rehearsal()?;
    let isolator_bin = build_isolator()?;

    watchdog::phase("the tests");
    println!("test: running every test");
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    for cmd in [
        // The eBPF crate's parser, on the host (its programs build for BPF only).
        cargo().args(["test", "--package", "isolator-ebpf", "--lib"]),
        cargo()
            .args([
                "test",
                "--workspace",
                "--exclude",
                "isolator-ebpf",
                // No doc-tests: the crates' examples are not written as tests.
                "--lib",
                "--bins",
                "--tests",
                // Every test binary runs, so the total line counts every failure.
                "--no-fail-fast",
            ])
            .env("ISOLATOR_BIN", &isolator_bin)
            .env("ISOLATOR_REHEARSAL_BIN", &rehearsal_bin)
            // The package test builds packages with this very xtask.
            .env("XTASK_BIN", std::env::current_exe()?),
    ] {
        if let Err(e) = run_test_command(cmd, &mut totals) {
            failures.push(format!("{e:#}"));
        }
    }
    // Labs of a test binary that died by a signal (and their daemons): gone before the
    // demo builds its own.
    isolator_tests::lab::reap_stale();
    let Totals {
        passed,
        failed: failed_tests,
        ignored,
    } = totals;
    if failures.is_empty() && passed > 0 {
        report.push(format!(
            "tests: {passed} passed, 0 failed, {ignored} skipped"
        ));
    } else {
        report.push(format!(
            "tests: FAILED: {passed} passed, {failed_tests} failed, {ignored} skipped{}",
            if passed == 0 { " (no test ran)" } else { "" }
        ));
        failed.push("tests");
    }

    watchdog::phase("the demo");
    println!("test: the demo, with its own checks");
    match demo::run(demo::DemoOptions {
        isolator_bin: isolator_bin.clone(),
    }) {
        Ok(()) => report.push("demo: ok, every observation matched the policy".to_string()),
        Err(e) => {
            report.push(format!("demo: FAILED: {e:#}"));
            failed.push("demo");
        }
    }

    println!();
    for line in &report {
        println!("{line}");
    }
    println!("{passed} passed, {failed_tests} failed, {ignored} skipped");
    println!(
        "xtask test took {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

fn run_test_command(cmd: &mut Command, totals: &mut Totals) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let shown = format!("{cmd:?}");
    let mut child = watchdog::spawn(cmd.stdout(std::process::Stdio::piped()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let Totals {
        passed,
        failed,
        ignored,
    } = totals;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        std::io::stdout().flush().ok();
        if let Some(rest) = line.trim().strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => *passed += n,
                    "failed" => *failed += n,
                    "ignored" => *ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = watchdog::wait(child)?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// rustfmt, clippy, and clippy on the eBPF crate: all three run, and the error names each
/// that failed.
fn lint() -> anyhow::Result<()> {
    let target = target_dir().join("ebpf-lint");
    let steps: [(&str, Command); 3] = [
        ("rustfmt", {
            let mut c = cargo();
            c.args(["fmt", "--all", "--check"]);
            c
        }),
        ("clippy", {
            let mut c = cargo();
            c.args([
                "clippy",
                "--workspace",
                "--exclude",
                "isolator-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]);
            c
        }),
        ("clippy on the eBPF crate (nightly, bpfel-unknown-none)", {
            // Through rustup: `$CARGO` is the stable toolchain's own cargo, which knows
            // no `+nightly`.
            let mut c = Command::new("rustup");
            c.current_dir(workspace_root())
                .args([
                    "run",
                    "nightly",
                    "cargo",
                    "clippy",
                    "--package",
                    "isolator-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--release",
                    "--",
                    "-D",
                    "warnings",
                ])
                .env("CARGO_TARGET_DIR", target);
            c
        }),
    ];
    let mut failed = Vec::new();
    for (what, mut cmd) in steps {
        println!("lint: {what}");
        if let Err(e) = watchdog::run(&mut cmd) {
            eprintln!("lint: {what} failed: {e:#}");
            failed.push(what);
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join(", "));
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds the `isolator` binary and returns its path.
fn build_isolator() -> anyhow::Result<PathBuf> {
    println!("build: isolator");
    watchdog::run(cargo().args(["build", "--package", "isolator-user", "--bin", "isolator"]))?;
    let bin = target_dir().join("debug/isolator");
    if !bin.exists() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

/// Builds the rehearsal build of `isolator` (the same source, `--features rehearsal`: its
/// version says so), which the upgrade tests start in place of a running daemon, and
/// keeps it as `isolator-rehearsal` beside the normal one (built after it, so that
/// `debug/isolator` is the normal build).
fn build_rehearsal() -> anyhow::Result<PathBuf> {
    println!("build: isolator (rehearsal build, for the upgrade tests)");
    watchdog::run(cargo().args([
        "build",
        "--package",
        "isolator-user",
        "--bin",
        "isolator",
        "--features",
        "rehearsal",
    ]))?;
    let built = target_dir().join("debug/isolator");
    let kept = target_dir().join("debug/isolator-rehearsal");
    std::fs::copy(&built, &kept)
        .with_context(|| format!("copying {} to {}", built.display(), kept.display()))?;
    Ok(kept)
}

fn require_root(why: &str) -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!("run this as root: {why}");
    }
    Ok(())
}
