//! The Debian package (issue 11, point 2): `cargo xtask package` builds it; it installs
//! with dpkg, its binary checks the example policy, its unit verifies, its alert rules
//! and their tests pass promtool, its dashboard queries only documented metrics; an
//! upgrade to a rebuilt package keeps a changed configuration; a purge leaves nothing.
//! Installs into this machine's /usr, /etc and /lib (and removes it all again, on every
//! path); refuses to run where an isolator package is installed already.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use isolator_tests::daemon::workspace_root;
use isolator_tests::metrics::FAMILIES;
use isolator_tests::{TempDir, isolator_bin};

use crate::common::text;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running a command");
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    out
}

fn xtask_bin() -> PathBuf {
    std::env::var_os("XTASK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/xtask"))
}

/// Builds the package of revision `revision` into `out`.
fn build(revision: u32, out: &Path) -> PathBuf {
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let xtask = xtask_bin();
    assert!(
        xtask.is_file(),
        "{} missing: run through `cargo xtask test`, or build xtask",
        xtask.display()
    );
    run(Command::new(xtask)
        .args(["package", "--uncompressed", "--revision"])
        .arg(revision.to_string())
        .arg("--bin")
        .arg(&bin)
        .arg("--out")
        .arg(out));
    out.join(format!(
        "isolator_{}-{revision}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ))
}

fn installed_version() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status} ${Version}", "isolator"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && text.starts_with("install ok installed"))
        .then(|| text.rsplit(' ').next().unwrap_or_default().to_string())
}

fn dpkg(args: &[&str]) -> Output {
    Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("dpkg")
}

/// Purges the package when the test ends, however it ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = dpkg(&["--purge", "isolator"]);
    }
}

#[test]
fn the_package_installs_upgrades_and_purges_leaving_nothing() {
    assert_eq!(
        installed_version(),
        None,
        "an isolator package is installed on this machine: this test installs and purges \
         one, so it does not run here (remove it first)"
    );
    let tmp = TempDir::new("isot-package").expect("tmp");
    let first = build(1, &tmp.path().join("r1"));
    let second = build(2, &tmp.path().join("r2"));
    let _purge = Purge;

    let out = dpkg(&["-i", &first.to_string_lossy()]);
    assert!(out.status.success(), "dpkg -i: {}", text(&out));
    assert_eq!(
        installed_version().as_deref(),
        Some(format!("{}-1", env!("CARGO_PKG_VERSION")).as_str())
    );
    // The installed binary checks the example policy.
    let check = run(Command::new("/usr/bin/isolator").args(["check", "/etc/isolator/policy.yaml"]));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("valid"),
        "{}",
        text(&check)
    );
    for path in [
        "/lib/systemd/system/isolator.service",
        "/usr/share/man/man1/isolator.1.gz",
        "/usr/share/man/man1/isolator-run.1.gz",
        "/usr/share/bash-completion/completions/isolator",
        "/usr/share/zsh/vendor-completions/_isolator",
        "/usr/share/fish/vendor_completions.d/isolator.fish",
        "/usr/share/doc/isolator/operations.md",
        "/usr/share/isolator/grafana-dashboard.json",
    ] {
        assert!(Path::new(path).is_file(), "{path} installed");
    }
    // The installed unit verifies as it is (its binary now exists where it says).
    let verify = run(Command::new("systemd-analyze").args([
        "verify",
        "--man=no",
        "/lib/systemd/system/isolator.service",
    ]));
    assert!(verify.stderr.is_empty(), "{}", text(&verify));
    // The alert rules, and their tests.
    run(Command::new("promtool").args([
        "check",
        "rules",
        "/usr/share/isolator/prometheus-alerts.yml",
    ]));
    run(Command::new("promtool")
        .args(["test", "rules", "prometheus-alerts.test.yml"])
        .current_dir("/usr/share/isolator"));
    // The dashboard asks only for documented metrics.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("/usr/share/isolator/grafana-dashboard.json").expect("read"),
    )
    .expect("the dashboard is JSON");
    let documented: Vec<String> = FAMILIES.iter().map(|(name, ..)| name.to_string()).collect();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expression");
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("isolator_"))
            {
                queried += 1;
                assert!(
                    documented.iter().any(|d| d == name),
                    "panel {:?} asks for {name}, which docs/metrics.md does not list",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried >= 10, "{queried} metric references");

    // An operator's change to the configuration survives an upgrade.
    let mut policy = std::fs::read_to_string("/etc/isolator/policy.yaml").expect("read");
    policy.push_str("# changed by the operator\n");
    std::fs::write("/etc/isolator/policy.yaml", &policy).expect("write");
    let out = dpkg(&["-i", "--force-confold", &second.to_string_lossy()]);
    assert!(out.status.success(), "upgrade: {}", text(&out));
    assert_eq!(
        installed_version().as_deref(),
        Some(format!("{}-2", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert_eq!(
        std::fs::read_to_string("/etc/isolator/policy.yaml").expect("read"),
        policy
    );

    // A purge leaves nothing behind.
    let listed = run(Command::new("dpkg").args(["-L", "isolator"]));
    let files: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| Path::new(l).is_file())
        .map(str::to_string)
        .collect();
    assert!(files.len() > 20, "{files:?}");
    let out = dpkg(&["--purge", "isolator"]);
    assert!(out.status.success(), "purge: {}", text(&out));
    assert_eq!(installed_version(), None);
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    for dir in [
        "/etc/isolator",
        "/usr/share/isolator",
        "/usr/share/doc/isolator",
        "/var/log/isolator",
    ] {
        assert!(!Path::new(dir).exists(), "{dir} left behind");
    }
}
