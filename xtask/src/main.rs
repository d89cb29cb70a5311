//! The verbs a person runs: `cargo xtask setup | demo | test | lint | bench | fuzz`.

mod demo;
mod setup;

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
    /// Measure the ingress verdict per frame against a pass-everything XDP program,
    /// side by side in one run (BPF_PROG_TEST_RUN); prints ratios, never a verdict.
    Bench,
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
            setup::run()?;
            lint()?;
            let isolator_bin = build_isolator()?;
            println!("test: running every test");
            run_tests(&mut [
                // The eBPF crate's parser, on the host (its programs build for BPF only).
                cargo().args(["test", "--package", "isolator-ebpf", "--lib"]),
                cargo()
                    .args([
                        "test",
                        "--workspace",
                        "--exclude",
                        "isolator-ebpf",
                        "--lib",
                        "--bins",
                        "--tests",
                        // Every test binary runs, so the total line counts every failure.
                        "--no-fail-fast",
                    ])
                    .env("ISOLATOR_BIN", &isolator_bin),
            ])
        }
        Verb::Lint => lint(),
        Verb::Bench => {
            require_root("the benchmark loads eBPF programs")?;
            setup::run()?;
            println!("bench: building (release) and running");
            run_cmd(cargo().args([
                "run",
                "--release",
                "--quiet",
                "--package",
                "isolator-user",
                "--example",
                "bench",
            ]))
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

/// Runs each `cargo test`, passing their output through (all of them, even after a
/// failure), and ends with one line that totals every test binary's result.
fn run_tests(cmds: &mut [&mut Command]) -> anyhow::Result<()> {
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    for cmd in cmds.iter_mut() {
        if let Err(e) = run_test_command(cmd, &mut totals) {
            failures.push(format!("{e:#}"));
        }
    }
    let Totals {
        passed,
        failed,
        ignored,
    } = totals;
    println!("{passed} passed, {failed} failed, {ignored} skipped");
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    if passed == 0 {
        bail!("no test ran");
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
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
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
    let status = child.wait().context("waiting for cargo test")?;
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

fn lint() -> anyhow::Result<()> {
    println!("lint: rustfmt");
    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    println!("lint: clippy");
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "isolator-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("lint: clippy on the eBPF crate (nightly, bpfel-unknown-none)");
    let target = target_dir().join("ebpf-lint");
    // Through rustup: `$CARGO` is the stable toolchain's own cargo, which knows no `+nightly`.
    run_cmd(
        Command::new("rustup")
            .current_dir(workspace_root())
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
            .env("CARGO_TARGET_DIR", target),
    )
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds the `isolator` binary and returns its path.
fn build_isolator() -> anyhow::Result<PathBuf> {
    println!("build: isolator");
    run_cmd(cargo().args(["build", "--package", "isolator-user", "--bin", "isolator"]))?;
    let bin = target_dir().join("debug/isolator");
    if !bin.exists() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

fn require_root(why: &str) -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!("run this as root: {why}");
    }
    Ok(())
}
