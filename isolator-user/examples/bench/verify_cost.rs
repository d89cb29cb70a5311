//! The cost of verifying a large host (`--verify-cost`, issue 10's "500 vifs and 10 000
//! segments"): the real daemon enforces a policy of 10 000 segments on 500 veth vifs in
//! the benchmark's private namespaces; `isolator verify` (what the daemon also runs after
//! every change and every `--verify-interval`, on a thread of its own) is timed against
//! it, median of a few runs, with its split: the listing of the host and the comparison.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use isolator_tests::TempDir;

use super::hotplug::{DaemonGuard, create, isolator_bin, runtime_with_netlink};

const VIFS: usize = 500;
const SEGMENTS: usize = 10_000;
const RUNS: usize = 3;
const STATE_DIR: &str = "/sys/fs/bpf/isolator-hotplug";

/// 10 000 one-segment tenants, a /24 each; the first 500 claim one vif `vvc<i>` each.
fn policy() -> String {
    let mut text = String::from("version: 1\ntenants:\n");
    for i in 0..SEGMENTS {
        let _ = write!(
            text,
            "  - name: t{i}\n    segments:\n      - name: s\n        prefixes: [\"10.{}.{}.0/24\"]\n",
            i / 256,
            i % 256
        );
        if i < VIFS {
            let _ = writeln!(text, "        interfaces: [\"vvc{i}\"]");
        }
    }
    text
}

/// Runs the measurement and prints it. Call on a thread of its own: it enters private
/// namespaces.
pub fn run() -> anyhow::Result<()> {
    let bin = isolator_bin()?;
    super::live::private_namespaces()?;
    let tmp = TempDir::new("isolator-verify-cost")?;
    let config = tmp.write("policy.yaml", &policy())?;
    let (rt, netlink) = runtime_with_netlink()?;
    let created = Instant::now();
    rt.block_on(async {
        for i in 0..VIFS {
            create(&netlink, &format!("vvc{i}"), &format!("pvc{i}")).await?;
        }
        anyhow::Ok(())
    })?;
    let created = created.elapsed();
    let started = Instant::now();
    let daemon = DaemonGuard::start(&bin, &config, &tmp)?;
    daemon.wait_healthy(Duration::from_secs(600))?;
    println!(
        "verify cost: {VIFS} veth vifs, a policy of {SEGMENTS} segments; links created in \
         {:.1} s, the daemon enforcing all of them {:.1} s after its start; {} CPUs, kernel {}",
        created.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        // SAFETY: no preconditions.
        unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) },
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let mut times = Vec::new();
    for run in 0..RUNS {
        let t = Instant::now();
        let out = Command::new(&bin)
            .args(["verify", "--json", "--config"])
            .arg(&config)
            .args(["--state-dir", STATE_DIR])
            .output()
            .context("isolator verify")?;
        let took = t.elapsed();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!("verify's output: {}", String::from_utf8_lossy(&out.stderr))
        })?;
        let findings = report["findings"].as_array().map_or(0, Vec::len);
        if out.status.code() != Some(0) {
            bail!(
                "verify found {findings} finding(s) on a host as the policy says (exit {:?}): {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        println!(
            "  run {}: {:.2} s, {} links listed, {findings} finding(s)",
            run + 1,
            took.as_secs_f64(),
            report["inventory"]["links"].as_array().map_or(0, Vec::len)
        );
        times.push(took);
    }
    daemon.check_running()?;
    times.sort();
    println!(
        "  isolator verify: median {:.2} s of {RUNS} runs (a separate process; the daemon's \
         own verification does the same work on a thread of its own)",
        times[RUNS / 2].as_secs_f64()
    );
    daemon.stop()?;
    Ok(())
}
