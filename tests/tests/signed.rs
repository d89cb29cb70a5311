//! Signed policies (issue 9, point 3): `isolator keygen`, `isolator sign`, and a daemon
//! started with `--trusted-keys` that loads and reloads only a policy with a valid
//! signature by a trusted key. A refused reload keeps the running policy in force (shown
//! with frames: what it drops stays dropped), is counted, and says why; the signer's key
//! id and the policy's hash are exported.

use std::path::Path;
use std::time::Duration;

use isolator_common::verdict;
use isolator_tests::env::METRICS_PORT;
use isolator_tests::failclosed_lab::{quiet_lab, udp_sinks};
use isolator_tests::metrics::{POLICY_INFO, SIGNATURE_REFUSALS, poll};
use isolator_tests::{Daemon, Dir, Expect, Series, TempDir, Vm, isolator_bin};

use crate::failclosed::{Problems, captured, carrying, udp_frame};

/// A: web and app apart. B: a flow web -> app, UDP 9 (the fleet tests' policies too).
pub fn policy(flow: bool) -> String {
    let flows = if flow {
        "    flows:\n      - {from: web, to: app, protocol: udp, ports: 9}\n"
    } else {
        ""
    };
    format!(
        r#"version: 1
tenants:
  - name: acme
{flows}    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24]
      - name: app
        interfaces: ["vacme-app*"]
        prefixes: [10.1.2.0/24]
"#
    )
}

/// Runs `isolator ARGS`; its stdout, or a panic with its output.
fn isolator(args: &[&str]) -> String {
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let out = std::process::Command::new(&bin)
        .args(args)
        .output()
        .expect("running isolator");
    assert!(
        out.status.success(),
        "isolator {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_hex(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("running sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

/// One UDP datagram web1 -> app1:9; whether it arrived at app1.
fn web_to_app(web1: &Vm, app1: &Vm, marker: &str) -> bool {
    let (_, frames) = captured(&[&app1.ns], || {
        isolator_tests::net::send_frame(
            &web1.ns,
            "eth0",
            &udp_frame(web1, &app1.mac, app1.v4(), 9, marker),
        )
        .unwrap_or_else(|e| panic!("harness: {e:#}"))
    });
    carrying(&frames[0], marker) == 1
}

#[test]
fn only_a_policy_signed_by_a_trusted_key_is_loaded_or_reloaded() {
    let (lab, vms) = quiet_lab(
        "signed",
        &[
            ("web1", "vacme-web1", "10.1.1.2/24"),
            ("app1", "vacme-app1", "10.1.2.2/24"),
        ],
        &[],
    )
    .expect("lab");
    let (web1, app1) = (vms[0].clone(), vms[1].clone());
    let _sinks = udp_sinks(&[&app1], 9).expect("sink");
    let tmp = TempDir::new("isot-signed").expect("tmp");
    let trusted = tmp.path().join("trusted");
    let elsewhere = tmp.path().join("elsewhere");
    for d in [&trusted, &elsewhere] {
        std::fs::create_dir_all(d).expect("key dir");
    }
    let id = isolator(&[
        "keygen",
        "--out",
        &trusted.to_string_lossy(),
        "--name",
        "ops",
    ]);
    let id = id
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.strip_suffix(':'))
        .expect("keygen says the key id")
        .to_string();
    isolator(&[
        "keygen",
        "--out",
        &elsewhere.to_string_lossy(),
        "--name",
        "stranger",
    ]);
    let ops_key = trusted.join("ops.key");
    let stranger_key = elsewhere.join("stranger.key");
    let config = tmp.write("policy.yaml", &policy(false)).expect("policy");
    let sig = config.with_file_name("policy.yaml.sig");
    let sign = |key: &Path| {
        isolator(&[
            "sign",
            "--key",
            &key.to_string_lossy(),
            &config.to_string_lossy(),
        ]);
    };
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let args = ["--trusted-keys", trusted.to_str().expect("utf-8 path")];
    let mut bad = Problems::new();

    // Unsigned: the daemon refuses to start, attaching nothing.
    let mut refused = Daemon::start(&lab, &bin, &config, METRICS_PORT, tmp.path(), &args)
        .unwrap_or_else(|e| panic!("{e:#}"));
    match refused.wait_exit(Duration::from_secs(20)) {
        Ok(status) => bad.check(!status.success(), || {
            format!("an unsigned policy must not start the daemon: exit {status}")
        }),
        Err(e) => bad.push(format!("the daemon ran an unsigned policy: {e:#}")),
    }
    bad.check(refused.log().contains("is not signed"), || {
        format!(
            "the error must say the policy is not signed:\n{}",
            refused.log()
        )
    });
    bad.check(
        lab.vif_programs(&web1.vif).expect("programs").is_empty(),
        || "the refused start attached programs".into(),
    );
    drop(refused);

    // Signed by the trusted key: it runs, and says who signed what.
    sign(&ops_key);
    isolator(&[
        "check",
        &config.to_string_lossy(),
        "--trusted-keys",
        &trusted.to_string_lossy(),
    ]);
    let mut daemon = Daemon::start(&lab, &bin, &config, METRICS_PORT, tmp.path(), &args)
        .unwrap_or_else(|e| panic!("{e:#}"));
    daemon
        .wait_healthy(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let info = |sha: &str| Series::new(POLICY_INFO, &[("sha256", sha), ("signer", &id)]);
    let first = sha256_hex(&config);
    match daemon.scrape().and_then(|m| m.value(&info(&first))) {
        Ok(v) => bad.check(v == 1.0, || format!("{} is {v}", info(&first))),
        Err(e) => bad.push(format!("the signer and hash must be exported: {e:#}")),
    }
    bad.check(!web_to_app(&web1, &app1, "signed: A"), || {
        "policy A drops web -> app".into()
    });

    // Three reloads that must be refused, the running policy A staying in force.
    let cross = Series::drop(&web1.vif, Dir::Ingress, verdict::CROSS_SEGMENT);
    let refusals = Series::new(SIGNATURE_REFUSALS, &[]);
    for (what, prepare) in [
        (
            "policy B, signature left from A (changed after signing)",
            Box::new(|| {}) as Box<dyn Fn()>,
        ),
        (
            "policy B signed by a key that is not trusted",
            Box::new(|| sign(&stranger_key)),
        ),
        (
            "policy B without a signature",
            Box::new(|| std::fs::remove_file(&sig).expect("removing the signature")),
        ),
    ] {
        std::fs::write(&config, policy(true)).expect("policy B");
        prepare();
        let before = daemon.scrape().expect("scrape");
        daemon.signal(libc::SIGHUP).expect("SIGHUP");
        let counted = daemon.expect(
            &before,
            &Expect::new()
                .grows(Series::reloads("failed"), 1.0)
                .grows(refusals.clone(), 1.0),
        );
        if let Err(e) = counted {
            bad.push(format!("{what}: the refused reload must be counted: {e:#}"));
        }
        let before = daemon.scrape().expect("scrape");
        bad.check(!web_to_app(&web1, &app1, what), || {
            format!("{what}: the running policy A must stay: web -> app arrived")
        });
        if let Err(e) = daemon.expect(&before, &Expect::new().grows(cross.clone(), 1.0)) {
            bad.push(format!("{what}: dropped as cross_segment, once: {e:#}"));
        }
        let health = daemon.get("/healthz").expect("/healthz");
        bad.check(
            health.status == 200 && health.body.contains("last reload refused"),
            || format!("{what}: /healthz (200, enforcement whole) says why: {health:?}"),
        );
    }

    // Signed by the trusted key but not a valid policy: refused as invalid, which is no
    // signature refusal (whatever words its diagnostics hold).
    std::fs::write(&config, format!("{}design: draft\n", policy(true))).expect("invalid policy");
    sign(&ops_key);
    let before = daemon.scrape().expect("scrape");
    daemon.signal(libc::SIGHUP).expect("SIGHUP");
    match daemon.expect(
        &before,
        &Expect::new().grows(Series::reloads("failed"), 1.0),
    ) {
        Ok(after) => {
            let d = after.value(&refusals).unwrap_or(f64::NAN)
                - before.value(&refusals).unwrap_or(f64::NAN);
            bad.check(d == 0.0, || {
                format!("an invalid, properly signed policy is no signature refusal: +{d}")
            });
        }
        Err(e) => bad.push(format!(
            "the invalid policy's reload must be refused: {e:#}"
        )),
    }
    std::fs::write(&config, policy(true)).expect("policy B");

    // B signed by the trusted key: accepted.
    sign(&ops_key);
    let before = daemon.scrape().expect("scrape");
    daemon.signal(libc::SIGHUP).expect("SIGHUP");
    if let Err(e) = daemon.expect(
        &before,
        &Expect::new().grows(Series::reloads("succeeded"), 1.0),
    ) {
        bad.push(format!(
            "policy B signed by the trusted key must load: {e:#}"
        ));
    }
    let second = sha256_hex(&config);
    let shown = poll(
        "the new policy's hash is exported",
        Duration::from_secs(5),
        || {
            let m = daemon.scrape()?;
            Ok(match m.value(&info(&second)) {
                Ok(1.0) => Ok(()),
                other => Err(format!("{other:?}")),
            })
        },
    );
    if let Err(e) = shown {
        bad.push(format!("{e:#}"));
    }
    bad.check(web_to_app(&web1, &app1, "signed: B"), || {
        "policy B lets web -> app through".into()
    });
    bad.finish("signed policies", &policy(true), &daemon.log());
}
