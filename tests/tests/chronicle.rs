//! The control socket and the audit log (issue 9, points 4 and 5): `isolator status` and
//! `isolator reload` through the daemon's socket, refused for other users, and every
//! policy load, reload and control request on record in a hash chain that
//! `isolator audit verify` checks, across a restart, and that names the record someone
//! changed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use isolator_tests::env::METRICS_PORT;

use crate::common::text;
use isolator_tests::failclosed_lab::quiet_lab;
use isolator_tests::{Daemon, TempDir, isolator_bin};
use serde_json::Value;

const POLICY: &str = r#"version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vchr-web*"]
        prefixes: [10.1.1.0/24]
      - name: app
        interfaces: ["vchr-app*"]
        prefixes: [10.1.2.0/24]
"#;

/// The same with a flow web -> app.
const POLICY_B: &str = r#"version: 1
tenants:
  - name: acme
    flows:
      - {from: web, to: app, protocol: udp, ports: 9}
    segments:
      - name: web
        interfaces: ["vchr-web*"]
        prefixes: [10.1.1.0/24]
      - name: app
        interfaces: ["vchr-app*"]
        prefixes: [10.1.2.0/24]
"#;

/// Runs `isolator ARGS`, as root or (with `as_user`) as uid/gid 65534 and no other group.
fn isolator(args: &[&str], as_user: bool) -> Output {
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let mut cmd = if as_user {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.args(args).output().expect("running isolator")
}

fn status(socket: &str) -> Value {
    let out = isolator(&["status", "--socket", socket, "--json"], false);
    assert!(out.status.success(), "isolator status: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

/// The audit log's records.
fn records(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_else(|e| panic!("reading {}: {e}", log.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn verify(log: &Path) -> Output {
    isolator(&["audit", "verify", &log.to_string_lossy()], false)
}

#[test]
fn status_and_reload_through_the_control_socket_are_on_record_in_a_verified_chain() {
    let (lab, vms) = quiet_lab(
        "chron",
        &[
            ("web1", "vchr-web1", "10.1.1.2/24"),
            ("app1", "vchr-app1", "10.1.2.2/24"),
        ],
        &[],
    )
    .expect("lab");
    let tmp = TempDir::new("isot-chronicle").expect("tmp");
    let config = tmp.write("policy.yaml", POLICY).expect("policy");
    let socket: PathBuf = tmp.path().join("control.sock");
    let socket_arg = socket.to_string_lossy().into_owned();
    let log = tmp.path().join("audit.jsonl");
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    // The audit log's checkpoints are signed by a key whose public half is elsewhere.
    let keys = tmp.path().join("keys");
    let trusted = tmp.path().join("trusted");
    for d in [&keys, &trusted] {
        std::fs::create_dir_all(d).expect("key dir");
    }
    let keygen = isolator(
        &[
            "keygen",
            "--out",
            &keys.to_string_lossy(),
            "--name",
            "audit",
        ],
        false,
    );
    assert!(keygen.status.success(), "{}", text(&keygen));
    std::fs::rename(keys.join("audit.pub"), trusted.join("audit.pub")).expect("move");
    let key = keys.join("audit.key").to_string_lossy().into_owned();
    let start = || {
        let mut d = Daemon::start(
            &lab,
            &bin,
            &config,
            METRICS_PORT,
            tmp.path(),
            &["--audit-key", &key],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        d.wait_healthy(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}"));
        d
    };
    let daemon = start();

    // The socket is root's alone.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&socket)
            .expect("the socket exists")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the control socket's mode");

    // Status: the policy in force and every vif, enforced, with its mode.
    let s = status(&socket_arg);
    assert_eq!(s["ok"], true);
    let st = &s["status"];
    assert_eq!(st["policy"]["sha256"], sha256_hex(&config).as_str());
    assert_eq!(st["generation"], 1);
    let interfaces = st["interfaces"].as_array().expect("interfaces");
    for vm in &vms {
        let i = interfaces
            .iter()
            .find(|i| i["device"] == vm.vif.as_str())
            .unwrap_or_else(|| panic!("{} missing from {interfaces:?}", vm.vif));
        assert_eq!(i["state"], "enforced", "{i}");
        assert_eq!(i["tenant"], "acme", "{i}");
        assert!(
            matches!(i["mode"].as_str(), Some("native" | "generic")),
            "{i}"
        );
    }
    let human = isolator(&["status", "--socket", &socket_arg], false);
    assert!(human.status.success(), "{}", text(&human));
    let human = String::from_utf8_lossy(&human.stdout).into_owned();
    assert!(
        human.contains("vchr-web1") && human.contains("acme/web") && human.contains("enforced"),
        "{human}"
    );

    // A reload through the socket puts the new policy into effect and says so.
    std::fs::write(&config, POLICY_B).expect("policy B");
    let out = isolator(&["reload", "--socket", &socket_arg], false);
    assert!(out.status.success(), "reload: {}", text(&out));
    let st = status(&socket_arg)["status"].clone();
    assert_eq!(st["generation"], 2);
    assert_eq!(st["last_reload"]["result"], "ok");
    assert_eq!(st["policy"]["sha256"], sha256_hex(&config).as_str());

    // A bad policy: refused, exit 1, the running one stays.
    let in_force = sha256_hex(&config);
    std::fs::write(&config, "version: 1\ntenants: [oops\n").expect("bad policy");
    let out = isolator(&["reload", "--socket", &socket_arg], false);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        text(&out)
    );
    let st = status(&socket_arg)["status"].clone();
    assert_eq!(st["generation"], 2);
    assert_eq!(st["last_reload"]["result"], "refused");
    assert_eq!(st["policy"]["sha256"], in_force.as_str());

    // Another user: the socket's mode keeps them out; opened up by mistake, the daemon
    // itself refuses them (SO_PEERCRED) and records it.
    let out = isolator(&["status", "--socket", &socket_arg], true);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .expect("chmod");
    let out = isolator(&["status", "--socket", &socket_arg], true);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused: uid 65534"),
        "{}",
        text(&out)
    );
    assert!(
        out.stdout.is_empty(),
        "nothing about the host for a stranger: {}",
        text(&out)
    );

    // Everything is on record, in order, with who asked.
    let r = records(&log);
    let kinds: Vec<&str> = r.iter().filter_map(|r| r["kind"].as_str()).collect();
    assert_eq!(
        &kinds[..3],
        ["start", "checkpoint", "policy_load"],
        "{kinds:?}"
    );
    let control: Vec<&Value> = r.iter().filter(|r| r["kind"] == "control").collect();
    let me = std::process::id();
    assert!(
        control
            .iter()
            .any(|c| c["request"] == "status" && c["caller"]["uid"] == 0 && c["result"] == "ok"),
        "{control:?}"
    );
    let reloads: Vec<&Value> = r.iter().filter(|r| r["kind"] == "reload").collect();
    assert_eq!(reloads.len(), 2, "{reloads:?}");
    assert_eq!(reloads[0]["result"], "ok");
    assert_eq!(reloads[0]["trigger"], "control");
    // The digest, worked out beside the reload, is on record: policy B's.
    assert_eq!(reloads[0]["sha256"], in_force.as_str(), "{}", reloads[0]);
    assert_eq!(reloads[0]["diff"]["widened"], 1, "{}", reloads[0]);
    assert!(
        reloads[0]["diff"]["lines"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l
                .as_str()
                .is_some_and(|l| l.contains("flow acme/web -> acme/app")))),
        "the reload's record says what it widened: {}",
        reloads[0]
    );
    assert_eq!(reloads[1]["result"], "refused");
    assert!(reloads[1]["error"].as_str().is_some_and(|e| !e.is_empty()));
    let refused: Vec<&&Value> = control
        .iter()
        .filter(|c| c["result"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{control:?}");
    assert_eq!(refused[0]["caller"]["uid"], 65534);
    assert!(
        refused[0]["caller"]["pid"]
            .as_u64()
            .is_some_and(|p| p != u64::from(me))
    );
    let out = verify(&log);
    assert!(out.status.success(), "the chain verifies: {}", text(&out));

    // Across a restart the chain goes on.
    daemon.stop(Duration::from_secs(20)).expect("stop");
    std::fs::write(&config, POLICY_B).expect("policy B again");
    let daemon = start();
    let r = records(&log);
    let restarted = r
        .iter()
        .rposition(|r| r["kind"] == "start")
        .expect("a second start");
    assert_eq!(
        (
            r[restarted - 2]["kind"].as_str(),
            r[restarted - 1]["kind"].as_str()
        ),
        (Some("stop"), Some("checkpoint"))
    );
    let out = verify(&log);
    assert!(out.status.success(), "after a restart: {}", text(&out));
    // With the public key, the checkpoints are checked too (start, stop, start).
    let out = isolator(
        &[
            "audit",
            "verify",
            "--all",
            "--trusted-keys",
            &trusted.to_string_lossy(),
            "--json",
            &log.to_string_lossy(),
        ],
        false,
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["checkpoints_verified"], 3, "{v}");
    assert_eq!(v["ok"], true);
    daemon.stop(Duration::from_secs(20)).expect("stop");

    // A record changed afterwards (a refusal made to look like success) is named.
    let original = std::fs::read_to_string(&log).expect("read");
    let line = original
        .lines()
        .position(|l| l.contains("\"result\":\"refused\"") && l.contains("\"kind\":\"reload\""))
        .expect("the refused reload");
    let forged: Vec<String> = original
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == line {
                l.replace("\"refused\"", "\"ok\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&log, forged.join("\n") + "\n").expect("forge");
    let out = verify(&log);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("audit.jsonl:{}:", line + 2)),
        "names the record after the changed one: {}",
        text(&out)
    );
}

const MANAGED: &str = r#"version: 1
management:
  - prefix: 192.168.100.0/24
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vchm-web*"]
        prefixes: [10.1.1.0/24]
      - name: app
        interfaces: ["vchm-app*"]
        prefixes: [10.1.2.0/24]
"#;

#[test]
fn management_attempts_are_on_record_within_a_budget_and_a_monitor_sees_drops_as_they_happen() {
    use isolator_tests::Series;
    use isolator_tests::metrics::{AUDIT_EVENTS_DROPPED, MANAGEMENT_ATTEMPTS, poll};
    use isolator_tests::net::FrameSender;

    use crate::failclosed::udp_frame;

    let (lab, vms) = quiet_lab(
        "chrm",
        &[
            ("web1", "vchm-web1", "10.1.1.2/24"),
            ("app1", "vchm-app1", "10.1.2.2/24"),
        ],
        &[],
    )
    .expect("lab");
    let (web1, app1) = (&vms[0], &vms[1]);
    let tmp = TempDir::new("isot-chronicle-m").expect("tmp");
    let config = tmp.write("policy.yaml", MANAGED).expect("policy");
    let socket = tmp.path().join("control.sock");
    let socket_arg = socket.to_string_lossy().into_owned();
    let log = tmp.path().join("audit.jsonl");
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let mut daemon = Daemon::start(
        &lab,
        &bin,
        &config,
        METRICS_PORT,
        tmp.path(),
        &["--audit-management-rate", "5"],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    daemon
        .wait_healthy(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}"));

    // A flood of 300 attempts on ssh of a management address: every one counted, five
    // per CPU and second on record, the rest counted as not recorded.
    let sender = FrameSender::open(&web1.ns, "eth0").expect("sender");
    let management: std::net::IpAddr = "192.168.100.5".parse().expect("address");
    let attempt = udp_frame(web1, "02:00:00:00:00:99", management, 22, "attempt");
    sender
        .send_all(std::iter::repeat_n(&attempt, 300))
        .expect("flood");
    let attempts = Series::new(
        MANAGEMENT_ATTEMPTS,
        &[
            ("device", "vchm-web1"),
            ("tenant", "acme"),
            ("segment", "web"),
        ],
    );
    let limited = Series::new(AUDIT_EVENTS_DROPPED, &[("reason", "rate_limited")]);
    let (counted, not_recorded) = poll("the flood counted", Duration::from_secs(10), || {
        let m = daemon.scrape()?;
        let (a, l) = (m.value(&attempts)?, m.value(&limited)?);
        Ok(if a == 300.0 && l > 0.0 {
            Ok((a, l))
        } else {
            Err(format!("attempts {a}, rate_limited {l}"))
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.log()));
    let recorded = poll("the records written", Duration::from_secs(5), || {
        let r: Vec<Value> = records(&log)
            .into_iter()
            .filter(|r| r["kind"] == "management_attempt")
            .collect();
        Ok(if r.len() as f64 + not_recorded == counted {
            Ok(r)
        } else {
            Err(format!("{} records, {not_recorded} not recorded", r.len()))
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        !recorded.is_empty() && recorded.len() <= 5 * cpus * 2,
        "{} records for a burst within about a second",
        recorded.len()
    );
    for r in &recorded {
        assert_eq!(r["device"], "vchm-web1", "{r}");
        assert_eq!(
            (&r["tenant"], &r["segment"]),
            (&"acme".into(), &"web".into())
        );
        assert_eq!(r["dst"], "192.168.100.5");
        assert_eq!(r["src"], "10.1.1.2");
        assert_eq!(
            (&r["protocol"], &r["dst_port"]),
            (&"udp".into(), &22.into())
        );
        assert_eq!(r["reason"], "management");
    }
    let out = verify(&log);
    assert!(out.status.success(), "{}", text(&out));

    // A monitor asks for cross-segment drops of web1: it sees them as they happen, and
    // nothing else (the management attempts sent meanwhile are filtered out).
    let mut monitor = Command::new(&bin)
        .args(["monitor", "--socket", &socket_arg, "--json"])
        .args(["--device", "vchm-web1", "--reason", "cross_segment"])
        .args(["--count", "5"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("isolator monitor");
    let cross = udp_frame(web1, &app1.mac, app1.v4(), 9, "cross");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while monitor.try_wait().expect("wait").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the monitor saw fewer than 5 drops"
        );
        sender.send_all([&cross, &attempt]).expect("send");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = monitor.wait_with_output().expect("monitor output");
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    for l in &lines {
        assert_eq!(l["reason"], "cross_segment", "{l}");
        assert_eq!(l["kind"], "drop", "{l}");
        assert_eq!(
            (&l["src"], &l["dst"]),
            (&"10.1.1.2".into(), &"10.1.2.2".into())
        );
        assert_eq!(
            (&l["tenant"], &l["segment"]),
            (&"acme".into(), &"web".into())
        );
        assert_eq!(l["dst_port"], 9);
    }
    // Its request is on record.
    assert!(
        records(&log)
            .iter()
            .any(|r| r["kind"] == "control" && r["request"] == "monitor"),
        "the monitor request is audited"
    );
    daemon.stop(Duration::from_secs(20)).expect("stop");
}
