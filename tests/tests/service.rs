//! Running as a service (issue 11, point 1): the systemd unit passes `systemd-analyze
//! verify`; readiness (`Type=notify`) is announced only once every interface the policy
//! claims is enforced, and the watchdog is fed; a stop of the unit (which runs the daemon
//! with `--persist`) leaves enforcement in place, and `isolator teardown` removes it on
//! purpose, refusing while a daemon runs.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use isolator_tests::daemon::workspace_root;
use isolator_tests::env::METRICS_PORT;

use crate::common::text;
use isolator_tests::failclosed_lab::quiet_lab;
use isolator_tests::{Daemon, TempDir, isolator_bin};

/// `systemd-analyze verify` on a copy of the unit whose binary is `bin`: its output.
fn analyze(unit_text: &str, bin: &Path, tmp: &TempDir, name: &str) -> Output {
    let unit = tmp
        .write(
            name,
            &unit_text.replace("/usr/bin/isolator", &bin.to_string_lossy()),
        )
        .expect("unit copy");
    Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (cargo xtask setup installs systemd)")
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(workspace_root().join("packaging/isolator.service"))
        .expect("packaging/isolator.service");
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let tmp = TempDir::new("isot-unit").expect("tmp");
    let out = analyze(&unit, &bin, &tmp, "isolator.service");
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "the unit must verify without a word: {}",
        text(&out)
    );
    // The checks can fail: a wrong value is reported.
    let broken = analyze(
        &unit.replace("Type=notify", "Type=notifyy"),
        &bin,
        &tmp,
        "broken.service",
    );
    assert!(!broken.stderr.is_empty(), "{}", text(&broken));
    // What the unit promises: readiness, reload, the watchdog, enforcement kept on stop.
    let exec = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    assert!(
        exec.contains(" run ") && exec.contains("--persist"),
        "{exec}"
    );
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=30",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}");
    }
}

const POLICY: &str = r#"version: 1
vif_names: ["vsvc-*"]
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vsvc-web*"]
        prefixes: [10.1.1.0/24]
"#;

/// The notifications received on `sock` until `until` says stop or `timeout` passes.
fn listen(
    sock: &UnixDatagram,
    timeout: Duration,
    mut until: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .expect("timeout");
        match sock.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let stop = until(&message);
                got.push(message);
                if stop {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    got
}

#[test]
fn readiness_waits_for_every_claimed_interface_and_the_watchdog_is_fed() {
    // One VM of acme/web, and one link the hypervisor's naming claims but no segment
    // names: quarantined, so not every claimed interface is enforced.
    let (lab, _vms) = quiet_lab(
        "svc",
        &[
            ("web1", "vsvc-web1", "10.1.1.2/24"),
            ("odd1", "vsvc-odd1", "10.9.9.2/24"),
        ],
        &[],
    )
    .expect("lab");
    let tmp = TempDir::new("isot-svc").expect("tmp");
    let config = tmp.write("policy.yaml", POLICY).expect("policy");
    let notify = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).expect("notify socket");
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let notify_env = notify.to_string_lossy().into_owned();
    let mut daemon = Daemon::start_env(
        &lab,
        &bin,
        &config,
        METRICS_PORT,
        tmp.path(),
        &[],
        &[("NOTIFY_SOCKET", &notify_env), ("WATCHDOG_USEC", "400000")],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));

    // Not ready while vsvc-odd1 is quarantined: the status line says why.
    let early = listen(&sock, Duration::from_secs(6), |m| m.contains("READY=1"));
    assert!(
        !early.iter().any(|m| m.contains("READY=1")),
        "ready although vsvc-odd1 is not enforced: {early:?}\n{}",
        daemon.log()
    );
    assert!(
        early
            .iter()
            .any(|m| m.contains("STATUS=NOT READY") && m.contains("vsvc-odd1")),
        "{early:?}"
    );
    assert!(
        early.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 4,
        "the watchdog is fed every 200 ms: {early:?}"
    );

    // The link goes: every claimed interface is enforced, the service is ready.
    let out = Command::new("ip")
        .args(["-n", lab.host_ns(), "link", "del", "vsvc-odd1"])
        .output()
        .expect("ip");
    assert!(out.status.success(), "{}", text(&out));
    let later = listen(&sock, Duration::from_secs(10), |m| m.contains("READY=1"));
    let ready = later
        .iter()
        .find(|m| m.contains("READY=1"))
        .unwrap_or_else(|| panic!("never ready: {later:?}\n{}", daemon.log()));
    assert!(
        ready.contains("STATUS=enforcing on 1 interface(s)"),
        "{ready}"
    );
    daemon
        .wait_healthy(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let status = daemon.stop(Duration::from_secs(20)).expect("stop");
    assert!(status.success());
    let last = listen(&sock, Duration::from_millis(500), |_| false);
    assert!(last.iter().any(|m| m.contains("STOPPING=1")), "{last:?}");
}

#[test]
fn teardown_removes_what_a_persisting_stop_left_and_not_while_a_daemon_runs() {
    let (lab, vms) = quiet_lab("tdown", &[("web1", "vsvc-web1", "10.1.1.2/24")], &[]).expect("lab");
    let vif = &vms[0].vif;
    let tmp = TempDir::new("isot-teardown").expect("tmp");
    let config = tmp.write("policy.yaml", POLICY).expect("policy");
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let state_dir = lab.state_dir().expect("state dir");
    let socket = tmp.path().join("control.sock");
    let teardown = || {
        Command::new(&bin)
            .arg("teardown")
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--control-socket")
            .arg(&socket)
            .output()
            .expect("isolator teardown")
    };
    let mut daemon = Daemon::start(
        &lab,
        &bin,
        &config,
        METRICS_PORT,
        tmp.path(),
        &["--persist"],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    daemon
        .wait_healthy(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Refused while the daemon runs: nothing is detached.
    let out = teardown();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));
    assert_eq!(lab.vif_programs(vif).expect("programs").len(), 3);

    // A stop (as `systemctl stop` does, SIGTERM) keeps enforcing.
    daemon.stop(Duration::from_secs(20)).expect("stop");
    assert_eq!(
        lab.vif_programs(vif).expect("programs").len(),
        3,
        "XDP and both TC programs stay after a stop with --persist"
    );

    // Teardown on purpose: everything detached, the state gone.
    let out = teardown();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("released 3 link(s) on 1 interface(s)"),
        "{}",
        text(&out)
    );
    assert!(
        lab.vif_programs(vif).expect("programs").is_empty(),
        "nothing attached after teardown: {:?}",
        lab.vif_programs(vif)
    );
    assert!(!state_dir.exists());
    let again = teardown();
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to tear down"));
}

/// A wrapper that runs `bin` as root with only `caps` in its bounding set (no other
/// capability can be gained): what the unit's `CapabilityBoundingSet=` does.
fn with_caps(tmp: &TempDir, bin: &Path, caps: &str) -> std::path::PathBuf {
    let script = tmp
        .write(
            &format!("isolator-caps-{}", caps.replace(['+', ',', '-'], "")),
            &format!(
                "#!/bin/sh\nexec setpriv --bounding-set -all,{caps} --inh-caps -all -- {} \"$@\"\n",
                bin.display()
            ),
        )
        .expect("wrapper");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    script
}

/// The capabilities the unit keeps are enough: the daemon enforces, reloads, answers on
/// its control socket and serves its metrics (what the watchdog's liveness check reads)
/// with nothing else; without CAP_NET_ADMIN it cannot attach, and says so; without
/// CAP_SYS_ADMIN it enforces but cannot read the vifs' connection tables.
#[test]
fn the_units_capabilities_are_enough_and_each_is_needed() {
    use isolator_tests::failclosed_lab::udp_sinks;
    let unit =
        std::fs::read_to_string(workspace_root().join("packaging/isolator.service")).expect("unit");
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet");
    let caps: Vec<String> = bounding
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert_eq!(
        caps,
        ["+bpf", "+net_admin", "+perfmon", "+chown", "+sys_admin"]
    );
    let (lab, vms) = quiet_lab(
        "caps",
        &[
            ("web1", "vsvc-web1", "10.1.1.2/24"),
            ("web2", "vsvc-web2", "10.1.1.3/24"),
        ],
        &[],
    )
    .expect("lab");
    let _sinks = udp_sinks(&[&vms[1]], 9).expect("sink");
    let tmp = TempDir::new("isot-caps").expect("tmp");
    let config = tmp.write("policy.yaml", POLICY).expect("policy");
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));

    // Without CAP_NET_ADMIN: nothing can be attached; the daemon says so and exits.
    let lacking = with_caps(&tmp, &bin, "+bpf,+perfmon,+chown,+sys_admin");
    let mut refused = Daemon::start(&lab, &lacking, &config, METRICS_PORT, tmp.path(), &[])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let healthy = refused.wait_healthy(Duration::from_secs(10));
    assert!(
        healthy.is_err(),
        "healthy without CAP_NET_ADMIN:\n{}",
        refused.log()
    );
    drop(refused);

    // With the unit's set: enforcing, reloading, answering.
    let wrapped = with_caps(&tmp, &bin, &caps.join(","));
    let mut daemon = Daemon::start(&lab, &wrapped, &config, METRICS_PORT, tmp.path(), &[])
        .unwrap_or_else(|e| panic!("{e:#}"));
    daemon
        .wait_healthy(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.log()));
    for vm in &vms {
        assert_eq!(
            lab.vif_programs(&vm.vif).expect("programs").len(),
            3,
            "{} enforced",
            vm.vif
        );
    }
    assert!(
        isolator_tests::ping(&vms[0], vms[1].v4()).expect("ping"),
        "same segment passes"
    );
    daemon.signal(libc::SIGHUP).expect("SIGHUP");
    let metrics = daemon.get("/metrics").expect("metrics");
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    let socket = tmp.path().join("control.sock");
    let status = Command::new(&bin)
        .args(["status", "--json", "--socket"])
        .arg(&socket)
        .output()
        .expect("status");
    assert!(status.status.success(), "{}", text(&status));
    daemon.stop(Duration::from_secs(20)).expect("stop");

    // Without CAP_SYS_ADMIN: enforcing, but the connection tables cannot be read.
    let no_admin = with_caps(&tmp, &bin, "+bpf,+net_admin,+perfmon,+chown");
    let mut daemon = Daemon::start(&lab, &no_admin, &config, METRICS_PORT, tmp.path(), &[])
        .unwrap_or_else(|e| panic!("{e:#}"));
    daemon
        .wait_healthy(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.log()));
    let metrics = daemon.get("/metrics").expect("metrics");
    assert_ne!(
        metrics.status, 200,
        "the tables were read without CAP_SYS_ADMIN"
    );
    daemon.stop(Duration::from_secs(20)).expect("stop");
}
