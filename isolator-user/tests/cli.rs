//! `isolator check` and `isolator diff` as an operator or a pipeline runs them: the built
//! binary, its exit status, its text and its JSON. No root, no network.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// A directory of policy files, removed when dropped.
struct Files(PathBuf);

impl Files {
    fn new() -> Files {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "isolator-cli-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        Files(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("writing a policy file");
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn isolator(args: &[&str], files: &[&Path]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_isolator"))
        .args(args)
        .args(files)
        .output()
        .expect("running isolator")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// acme/web and acme/db, globex/api; `flows` are acme's. The first flow's `from` value
/// is at line 12, column 16.
fn policy(flows: &str) -> String {
    format!(
        "version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: [\"tap-web*\"]
        prefixes: [10.1.1.0/24]
      - name: db
        interfaces: [\"tap-db*\"]
        prefixes: [10.1.2.0/24]
    flows:
{flows}  - name: globex
    segments:
      - name: api
        interfaces: [\"tap-api*\"]
        prefixes: [10.2.0.0/24]
"
    )
}

const TO_DB: &str = "      - {from: web, to: db, protocol: tcp, ports: 5432}\n";
const TO_API: &str = "      - {from: web, to: globex/api, protocol: tcp, ports: 443}\n";

#[test]
fn check_warns_about_a_cross_tenant_flow_and_exits_0() {
    let files = Files::new();
    let path = files.write("cross.yaml", &policy(TO_API));
    let out = isolator(&["check"], &[&path]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    let expected = format!("{}:12:16: warning[cross-tenant-flow]: ", path.display());
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    assert!(stderr.contains("  help: "), "{stderr}");
    assert!(text(&out.stdout).contains(": valid: "));
}

#[test]
fn check_strict_makes_the_cross_tenant_flow_an_error_and_exits_1() {
    let files = Files::new();
    let path = files.write("cross.yaml", &policy(TO_API));
    let out = isolator(&["check", "--strict"], &[&path]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    let expected = format!("{}:12:16: error[cross-tenant-flow]: ", path.display());
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    // Its twin within one tenant has no finding, strict or not.
    let twin = files.write("twin.yaml", &policy(TO_DB));
    let out = isolator(&["check", "--strict"], &[&twin]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn check_json_is_one_object_with_the_findings() {
    let files = Files::new();
    let path = files.write("cross.yaml", &policy(TO_API));
    for (strict, severity, status) in [(false, "warning", 0), (true, "error", 1)] {
        let mut args = vec!["check", "--json"];
        if strict {
            args.push("--strict");
        }
        let out = isolator(&args, &[&path]);
        assert_eq!(out.status.code(), Some(status));
        let json: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
        assert_eq!(json["valid"], true);
        assert_eq!(json["strict"], strict);
        assert_eq!(json["summary"]["segments"], 3);
        let findings = json["findings"].as_array().expect("findings");
        assert_eq!(findings.len(), 1, "{json:#}");
        assert_eq!(findings[0]["code"], "cross-tenant-flow");
        assert_eq!(findings[0]["severity"], severity);
        assert_eq!(
            (findings[0]["line"].as_u64(), findings[0]["column"].as_u64()),
            (Some(12), Some(16))
        );
        assert_eq!(findings[0]["file"], path.display().to_string());
        assert!(
            json["kernel_maps"]
                .as_array()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // An invalid file: its errors as findings of code `invalid`.
    let bad = files.write(
        "bad.yaml",
        &policy(TO_API).replace("10.2.0.0/24", "10.2.0.1/24"),
    );
    let out = isolator(&["check", "--json"], &[&bad]);
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["valid"], false);
    assert_eq!(json["findings"][0]["code"], "invalid");
    assert_eq!(json["findings"][0]["line"], 17);
}

#[test]
fn diff_exit_status_says_whether_reachability_widened() {
    let files = Files::new();
    let old = files.write("old.yaml", &policy(TO_DB));
    let wider = files.write("wider.yaml", &policy(&format!("{TO_DB}{TO_API}")));
    let same = files.write(
        "same.yaml",
        &policy("      - {from: web, to: acme/db, protocol: tcp, ports: \"5432-5432\"}\n"),
    );

    let out = isolator(&["diff"], &[&old, &same]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).ends_with(": no change\n"),
        "{}",
        text(&out.stdout)
    );

    let out = isolator(&["diff"], &[&old, &wider]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("+ flow acme/web -> globex/api: tcp 443\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 widened, 0 narrowed, 0 other: reachability widened"),
        "{stdout}"
    );

    let out = isolator(&["diff"], &[&wider, &old]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stdout).starts_with("- flow acme/web -> globex/api: tcp 443\n"));

    let out = isolator(&["diff", "--json"], &[&old, &wider]);
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (json["widened"].as_u64(), json["narrowed"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(json["changes"][0]["effect"], "widened");
    assert_eq!(json["changes"][0]["kind"], "flow");
    assert_eq!(json["changes"][0]["subject"], "acme/web -> globex/api");

    let bad = files.write("bad.yaml", "version: 2\ntenants: []\n");
    let out = isolator(&["diff"], &[&old, &bad]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("bad.yaml:1:10: error: "),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn check_json_reports_the_signature() {
    let files = Files::new();
    let path = files.write("signed.yaml", &policy(TO_DB));
    let keys = files.0.join("keys");
    std::fs::create_dir_all(&keys).expect("key directory");
    let keys_arg = keys.to_string_lossy().into_owned();
    let out = isolator(&["keygen", "--out", &keys_arg, "--name", "ops"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let check = || isolator(&["check", "--json", "--trusted-keys", &keys_arg], &[&path]);

    let out = check();
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["signed_by"], Value::Null);
    assert_eq!(json["findings"][0]["code"], "signature");
    assert_eq!(json["errors"], 1);

    let secret = keys.join("ops.key");
    let out = isolator(&["sign", "--key", &secret.to_string_lossy()], &[&path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(json["signed_by"].is_string(), "{json:#}");
    assert_eq!(json["findings"], serde_json::json!([]));
}

#[test]
fn publish_refuses_before_reaching_etcd_what_it_must_not_send() {
    let files = Files::new();
    let good = files.write("good.yaml", &policy(""));
    let invalid = files.write(
        "bad.yaml",
        &policy("").replace("10.1.1.0/24", "10.1.1.0/33"),
    );
    let (good, invalid) = (good.to_str().unwrap(), invalid.to_str().unwrap());
    // Port 9 of loopback: nothing listens; none of these may get that far.
    let url = "etcd://127.0.0.1:9/isolator";
    for (args, says) in [
        (
            vec!["publish", "--etcd", url, good],
            "give --trusted-keys DIR",
        ),
        (
            vec!["publish", "--etcd", url, "--unsigned", invalid],
            "invalid: 1 error(s)",
        ),
        (
            vec![
                "publish",
                "--etcd",
                "http://127.0.0.1:9/x",
                "--unsigned",
                good,
            ],
            "expected etcd://",
        ),
        (
            vec![
                "publish",
                "--etcd",
                url,
                "--unsigned",
                "--group",
                "a/b",
                good,
            ],
            "group \"a/b\"",
        ),
        (
            vec![
                "publish",
                "--etcd",
                url,
                "--unsigned",
                "--etcd-ca",
                good,
                good,
            ],
            "write the cluster as etcds://",
        ),
    ] {
        let out = isolator(&args, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{args:?}: expected {says:?} in {stderr}"
        );
        assert!(
            stderr.contains("nothing was published") || stderr.contains("--etcd"),
            "{stderr}"
        );
    }
}

#[test]
fn run_with_a_bad_policy_source_says_what_is_wrong_before_loading_anything() {
    for (source, says) in [
        ("etcd://127.0.0.1:2379", "no /PREFIX"),
        ("etcd://127.0.0.1/isolator", "has no :PORT"),
        ("file:///etc/isolator/policy.yaml", "expected etcd://"),
    ] {
        let out = isolator(&["run", "--policy-source", source], &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{source}: {stderr}");
        assert!(
            stderr.contains("--policy-source") && stderr.contains(says),
            "{source}: {stderr}"
        );
    }
    let out = isolator(
        &[
            "run",
            "--policy-source",
            "etcd://127.0.0.1:2379/i",
            "--fleet-host",
            "a b",
        ],
        &[],
    );
    for extra in [&["--fleet-group", "canary"][..], &["--etcd-ca", "ca.pem"]] {
        let mut args = vec!["run", "--config", "/nonexistent.yaml"];
        args.extend(extra);
        let out = isolator(&args, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("are for --policy-source"),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        text(&out.stderr).contains("--fleet-host \"a b\""),
        "{}",
        text(&out.stderr)
    );
}
