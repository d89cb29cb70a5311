//! Fleet (issue 12): daemons follow one signed policy bundle in a real etcd (Debian's
//! etcd-server, in a namespace of its own), each daemon in a namespace lab of its own
//! standing for a hypervisor, linked to etcd's namespace by a veth.
//!
//! What each host enforces is shown with real frames: policy A keeps web and app apart,
//! policy B has a flow web -> app (UDP 9); a datagram web1 -> app1:9 is sent in every lab
//! and captured at app1.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use isolator_tests::env::METRICS_PORT;
use isolator_tests::etcd::{Certs, Etcd};
use isolator_tests::failclosed_lab::{quiet_lab, udp_sinks};
use isolator_tests::metrics::{FLEET_CONNECTED, FLEET_REVISION};
use isolator_tests::{Daemon, Lab, Series, TempDir, Vm, isolator_bin};

use crate::failclosed::{Problems, captured, carrying, udp_frame};

const PREFIX: &str = "isolator";

/// A: web and app apart. B: a flow web -> app, UDP 9 (as the signed-policy tests'). `note`
/// changes the bytes (and the hash), not the meaning.
fn policy(flow: bool, note: &str) -> String {
    format!("# {note}\n{}", crate::signed::policy(flow))
}

/// One hypervisor: its lab (web1, app1), its daemon, its files.
struct Hv {
    name: String,
    lab: Lab,
    web: Vm,
    app: Vm,
    dir: TempDir,
    daemon: Option<Daemon>,
    /// Its link's number at etcd (for partitions).
    link: usize,
    /// The group it follows (`--fleet-group`).
    group: String,
    _sinks: Vec<std::net::UdpSocket>,
}

/// etcd, the keys, and the hypervisors.
struct Fleet {
    etcd: Etcd,
    tmp: TempDir,
    trusted: PathBuf,
    key: PathBuf,
    hosts: Vec<Hv>,
    published: usize,
    /// `--etcd-ca ... --etcd-cert ... --etcd-key ...` for a TLS etcd.
    tls_args: Vec<String>,
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Fleet {
    fn new(hosts: usize, hint: &str) -> Fleet {
        Fleet::new_with(hosts, hint, false)
    }

    /// With `tls`: etcd speaks TLS only and wants a client certificate signed by its CA,
    /// which every command and daemon is given.
    fn new_with(hosts: usize, hint: &str, tls: bool) -> Fleet {
        let tmp = TempDir::new(&format!("isot-fleet-{hint}")).expect("tmp");
        let mut tls_args = Vec::new();
        let server = if tls {
            let certs = Certs::make(&tmp.path().join("certs")).unwrap_or_else(|e| panic!("{e:#}"));
            for (flag, path) in [
                ("--etcd-ca", &certs.ca),
                ("--etcd-cert", &certs.client_cert),
                ("--etcd-key", &certs.client_key),
            ] {
                tls_args.push(flag.to_string());
                tls_args.push(path.to_string_lossy().into_owned());
            }
            Some(certs.server)
        } else {
            None
        };
        let mut etcd = Etcd::start_with(tmp.path(), server).unwrap_or_else(|e| panic!("{e:#}"));
        let trusted = tmp.path().join("trusted");
        std::fs::create_dir_all(&trusted).expect("key dir");
        let out = isolator(&[
            "keygen",
            "--out",
            &trusted.to_string_lossy(),
            "--name",
            "ops",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let key = trusted.join("ops.key");
        let mut labs = Vec::new();
        for i in 0..hosts {
            let name = format!("hv{i:02}");
            let (lab, vms) = quiet_lab(
                &name,
                &[
                    ("web1", "vacme-web1", "10.1.1.2/24"),
                    ("app1", "vacme-app1", "10.1.2.2/24"),
                ],
                &[],
            )
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            etcd.link(&lab).unwrap_or_else(|e| panic!("{e:#}"));
            let sinks = udp_sinks(&[&vms[1]], 9).expect("sink");
            labs.push(Hv {
                dir: TempDir::new(&format!("isot-{name}")).expect("tmp"),
                name,
                lab,
                web: vms[0].clone(),
                app: vms[1].clone(),
                daemon: None,
                link: i + 1,
                group: "default".into(),
                _sinks: sinks,
            });
        }
        Fleet {
            etcd,
            tmp,
            trusted,
            key,
            hosts: labs,
            published: 0,
            tls_args,
        }
    }

    /// `isolator ARGS` in etcd's namespace (where etcd is on loopback), with the TLS
    /// arguments.
    fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(self.tls_args.iter().map(String::as_str));
        self.cli_as_is(&all)
    }

    /// `isolator ARGS` in etcd's namespace, nothing added.
    fn cli_as_is(&self, args: &[&str]) -> Output {
        let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
        Command::new("ip")
            .args(["netns", "exec", self.etcd.ns()])
            .arg(bin)
            .args(args)
            .output()
            .expect("running isolator")
    }

    /// Writes `policy` to a file of its own, signs it (`signed`), publishes it; the new
    /// revision and when `isolator publish` sent its transaction (Unix ms).
    fn publish(&mut self, policy: &str, signed: bool) -> (i64, u64) {
        self.published += 1;
        let file = self
            .tmp
            .write(&format!("policy-{}.yaml", self.published), policy)
            .expect("policy file");
        let mut args = vec!["publish", "--json"];
        let url = self.etcd.local_url(PREFIX);
        let trusted = self.trusted.to_string_lossy().into_owned();
        args.extend(["--etcd", &url]);
        if signed {
            let out = isolator(&[
                "sign",
                "--key",
                &self.key.to_string_lossy(),
                &file.to_string_lossy(),
            ]);
            assert!(out.status.success(), "{}", text(&out));
            args.extend(["--trusted-keys", &trusted]);
        } else {
            args.push("--unsigned");
        }
        let file = file.to_string_lossy().into_owned();
        args.push(&file);
        let out = self.cli(&args);
        assert!(out.status.success(), "publish: {}", text(&out));
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        (
            v["revision"].as_i64().expect("a revision"),
            v["sent_ms"]
                .as_u64()
                .expect("when the transaction was sent"),
        )
    }

    /// Each host's status in etcd, by host.
    fn statuses(&self) -> BTreeMap<String, serde_json::Value> {
        if !self.tls_args.is_empty() {
            // The JSON gateway would want a client certificate too: ask isolator.
            let (_, view) = self.fleet_status();
            return view["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|h| !h["status"].is_null())
                .map(|h| {
                    (
                        h["host"].as_str().unwrap_or_default().to_string(),
                        h["status"].clone(),
                    )
                })
                .collect();
        }
        let prefix = format!("/{PREFIX}/status/");
        self.etcd
            .read_prefix(&prefix)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .into_iter()
            .map(|(k, v)| {
                (
                    k.trim_start_matches(&prefix).to_string(),
                    serde_json::from_slice(&v).expect("a host status"),
                )
            })
            .collect()
    }

    /// Waits until every host of `which` reports `check` true of its status; their
    /// statuses then.
    fn await_status(
        &self,
        which: &[usize],
        what: &str,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> BTreeMap<String, serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses();
            let missing: Vec<&str> = which
                .iter()
                .map(|i| self.hosts[*i].name.as_str())
                .filter(|h| !statuses.get(*h).is_some_and(&check))
                .collect();
            if missing.is_empty() {
                return statuses;
            }
            if Instant::now() > deadline {
                let host = &self.hosts[which[0]];
                panic!(
                    "{what}: not within {timeout:?} on {missing:?}\nstatuses: {statuses:#?}\n{}'s log:\n{}",
                    host.name,
                    host.daemon
                        .as_ref()
                        .map(|d| isolator_tests::daemon::tail(&d.log(), 40))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn all(&self) -> Vec<usize> {
        (0..self.hosts.len()).collect()
    }

    fn start_daemon(&mut self, i: usize) {
        let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
        let url = self.etcd.url(PREFIX);
        let hv = &mut self.hosts[i];
        let cache = hv.dir.path().join("cache");
        let args = [
            "--policy-source",
            &url,
            "--fleet-host",
            &hv.name,
            "--fleet-group",
            &hv.group,
            "--fleet-cache",
            &cache.to_string_lossy(),
            "--trusted-keys",
            &self.trusted.to_string_lossy(),
            "--fleet-lease-seconds",
            "4",
            "--fleet-start-timeout",
            "2",
        ];
        let mut args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
        args.extend(self.tls_args.iter().map(String::as_str));
        let d = Daemon::start_source(&hv.lab, &bin, METRICS_PORT, hv.dir.path(), &args)
            .unwrap_or_else(|e| panic!("{}: {e:#}", hv.name));
        hv.daemon = Some(d);
    }

    fn await_healthy(&mut self, i: usize) {
        let hv = &mut self.hosts[i];
        let d = hv.daemon.as_mut().expect("a daemon");
        d.wait_healthy(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{}: {e:#}", hv.name));
    }

    /// A datagram web1 -> app1:9 in each of `which`; whether each arrived.
    fn web_to_app(&self, which: &[usize], marker: &str) -> Vec<bool> {
        let namespaces: Vec<&str> = which
            .iter()
            .map(|i| self.hosts[*i].app.ns.as_str())
            .collect();
        let (_, frames) = captured(&namespaces, || {
            for i in which {
                let hv = &self.hosts[*i];
                isolator_tests::net::send_frame(
                    &hv.web.ns,
                    "eth0",
                    &udp_frame(
                        &hv.web,
                        &hv.app.mac,
                        hv.app.v4(),
                        9,
                        &format!("{marker}-{i}"),
                    ),
                )
                .unwrap_or_else(|e| panic!("harness: {e:#}"));
            }
        });
        which
            .iter()
            .zip(&frames)
            .map(|(i, f)| carrying(f, &format!("{marker}-{i}")) == 1)
            .collect()
    }

    /// Checks that every host of `which` passes web -> app exactly if `flow`.
    fn expect_enforcing(&self, bad: &mut Problems, which: &[usize], flow: bool, when: &str) {
        let arrived = self.web_to_app(which, &when.replace(' ', "-"));
        for (i, arrived) in which.iter().zip(arrived) {
            bad.check(arrived == flow, || {
                format!(
                    "{when}: {}: web1 -> app1:9 {} (the policy {} it)",
                    self.hosts[*i].name,
                    if arrived { "arrived" } else { "was dropped" },
                    if flow { "allows" } else { "forbids" }
                )
            });
        }
    }

    /// `isolator status --json` of host `i`, through its control socket.
    fn control_status(&self, i: usize) -> serde_json::Value {
        let socket = self.hosts[i].dir.path().join("control.sock");
        let out = isolator(&["status", "--json", "--socket", &socket.to_string_lossy()]);
        assert!(
            out.status.success(),
            "{}: status: {}",
            self.hosts[i].name,
            text(&out)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        v["status"].clone()
    }

    fn fleet_status(&self) -> (bool, serde_json::Value) {
        let url = self.etcd.local_url(PREFIX);
        let out = self.cli(&["fleet", "status", "--etcd", &url, "--json"]);
        let code = out.status.code();
        assert!(
            code == Some(0) || code == Some(1),
            "fleet status: {}",
            text(&out)
        );
        (
            code == Some(0),
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out))),
        )
    }
}

fn isolator(args: &[&str]) -> Output {
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    Command::new(bin)
        .args(args)
        .output()
        .expect("running isolator")
}

fn state_of<'a>(fleet: &'a serde_json::Value, host: &str) -> &'a str {
    fleet["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["host"] == host)
        .and_then(|h| h["state"].as_str())
        .unwrap_or("absent")
}

fn sha256_of(text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("isot-sha-{}", std::process::id()));
    std::fs::write(&dir, text).expect("temp file");
    let out = Command::new("sha256sum")
        .arg(&dir)
        .output()
        .expect("sha256sum");
    let _ = std::fs::remove_file(&dir);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

/// A bundle that `isolator publish` would never write: a signed policy that is not valid.
fn signed_invalid_bundle(fleet: &Fleet) -> Vec<u8> {
    let invalid = policy(false, "invalid").replace("10.1.2.0/24", "10.1.2.0/33");
    let file = fleet.tmp.write("invalid.yaml", &invalid).expect("file");
    let out = isolator(&[
        "sign",
        "--key",
        &fleet.key.to_string_lossy(),
        &file.to_string_lossy(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let signature = std::fs::read_to_string(file.with_file_name("invalid.yaml.sig")).expect("sig");
    serde_json::to_vec(&serde_json::json!({
        "format": 1,
        "policy": invalid,
        "signature": signature,
        "sha256": sha256_of(&invalid),
        "published_at": "2026-12-02T00:00:00Z",
        "publisher": "attacker@etcd",
    }))
    .expect("json")
}

/// How many times the host's audit log records refusing `revision`.
fn refusals(hv: &Hv, revision: i64) -> usize {
    let log = std::fs::read_to_string(hv.dir.path().join("audit.jsonl")).unwrap_or_default();
    log.lines()
        .filter(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            v["kind"] == "reload" && v["revision"] == revision && v["result"] == "refused"
        })
        .count()
}

#[test]
fn twenty_hosts_follow_one_signed_bundle_through_bad_bundles_outages_and_compaction() {
    const HOSTS: usize = 20;
    let started = Instant::now();
    let mut fleet = Fleet::new(HOSTS, "twenty");
    let all = fleet.all();
    let mut bad = Problems::new();
    println!("fleet: etcd and {HOSTS} labs in {:?}", started.elapsed());

    // Policy A, then twenty daemons: each starts from etcd. In waves of five: twenty
    // verifying their programs at once on a two-CPU machine take about 50 s, which would
    // starve the tests that run beside this one of the CPU their daemons need to start.
    let (a1, _) = fleet.publish(&policy(false, "A1"), true);
    for wave in (0..HOSTS).collect::<Vec<_>>().chunks(5) {
        for &i in wave {
            fleet.start_daemon(i);
        }
        for &i in wave {
            fleet.await_healthy(i);
        }
    }
    fleet.await_status(&all, "every host runs A1", Duration::from_secs(30), |s| {
        s["revision"] == a1 && s["source"] == "etcd"
    });
    println!(
        "fleet: {HOSTS} daemons enforcing A1 after {:?}",
        started.elapsed()
    );
    fleet.expect_enforcing(&mut bad, &all, false, "A1 from etcd");

    // B published: time from publish to in force on every host.
    let (b1, published_ms) = fleet.publish(&policy(true, "B1"), true);
    let statuses = fleet.await_status(&all, "every host runs B1", Duration::from_secs(30), |s| {
        s["revision"] == b1
    });
    let mut lags: Vec<u64> = statuses
        .values()
        .map(|s| {
            s["applied_at_ms"]
                .as_u64()
                .expect("applied_at_ms")
                .saturating_sub(published_ms)
        })
        .collect();
    lags.sort_unstable();
    println!(
        "fleet: publish -> in force on {HOSTS} hosts: p50 {} ms, p99 {} ms, max {} ms",
        percentile(&lags, 50.0),
        percentile(&lags, 99.0),
        lags[lags.len() - 1]
    );
    fleet.expect_enforcing(&mut bad, &all, true, "B1 from etcd");
    for i in [0, HOSTS - 1] {
        let d = fleet.hosts[i].daemon.as_ref().expect("daemon");
        let m = d.scrape().expect("scrape");
        bad.check(
            m.value(&Series::new(FLEET_REVISION, &[])).ok() == Some(b1 as f64),
            || {
                format!(
                    "{}: isolator_fleet_revision must be {b1}",
                    fleet.hosts[i].name
                )
            },
        );
        bad.check(
            m.value(&Series::new(FLEET_CONNECTED, &[])).ok() == Some(1.0),
            || {
                format!(
                    "{}: isolator_fleet_connected must be 1",
                    fleet.hosts[i].name
                )
            },
        );
    }

    // A signed but invalid bundle written straight into etcd, then a valid unsigned one:
    // every host refuses both, keeps B, and says why.
    let key = format!("/{PREFIX}/policy/default");
    let invalid = fleet
        .etcd
        .put_raw(&key, &signed_invalid_bundle(&fleet))
        .unwrap_or_else(|e| panic!("{e:#}"));
    fleet.await_status(
        &all,
        "every host refuses the invalid bundle",
        Duration::from_secs(30),
        |s| {
            s["revision"] == b1
                && s["refused_revision"] == invalid
                && s["last_error"].as_str().is_some_and(|e| e.contains("/33"))
        },
    );
    let (unsigned, _) = fleet.publish(&policy(false, "unsigned"), false);
    fleet.await_status(
        &all,
        "every host refuses the unsigned bundle",
        Duration::from_secs(30),
        |s| {
            s["revision"] == b1
                && s["refused_revision"] == unsigned
                && s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("is not signed"))
        },
    );
    fleet.expect_enforcing(&mut bad, &all, true, "B1 kept after two refusals");
    let (all_ok, view) = fleet.fleet_status();
    bad.check(!all_ok, || {
        "fleet status must exit 1 while hosts refuse".into()
    });
    for hv in &fleet.hosts {
        bad.check(state_of(&view, &hv.name) == "failing", || {
            format!("{} must be failing in fleet status: {view:#}", hv.name)
        });
        bad.check(
            refusals(hv, invalid) == 1 && refusals(hv, unsigned) == 1,
            || {
                format!(
                    "{}'s audit log must record both refusals, once each",
                    hv.name
                )
            },
        );
    }
    // A reload reads the key again: the refused revision is not judged again.
    let socket = fleet.hosts[0].dir.path().join("control.sock");
    let out = isolator(&["reload", "--socket", &socket.to_string_lossy()]);
    bad.check(out.status.success(), || format!("reload: {}", text(&out)));
    std::thread::sleep(Duration::from_secs(1));
    let log = fleet.hosts[0].daemon.as_ref().expect("daemon").log();
    bad.check(
        log.contains("reading the policy bundle from etcd again"),
        || format!("the reload must read the bundle again:\n{log}"),
    );
    bad.check(refusals(&fleet.hosts[0], unsigned) == 1, || {
        format!(
            "a refused revision read again must not be judged (and audited) again:\n{}",
            std::fs::read_to_string(fleet.hosts[0].dir.path().join("audit.jsonl"))
                .unwrap_or_default()
        )
    });

    // A signed A again: every host is ok.
    let (a2, _) = fleet.publish(&policy(false, "A2"), true);
    fleet.await_status(&all, "every host runs A2", Duration::from_secs(30), |s| {
        s["revision"] == a2 && s.get("last_error").is_none()
    });
    let (all_ok, view) = fleet.fleet_status();
    bad.check(all_ok, || format!("fleet status must be all ok: {view:#}"));

    // etcd killed: every host keeps enforcing A2, and says etcd is away.
    fleet.etcd.kill().expect("kill etcd");
    for i in [0, HOSTS / 2, HOSTS - 1] {
        let d = fleet.hosts[i].daemon.as_ref().expect("daemon");
        let name = &fleet.hosts[i].name;
        let noticed = isolator_tests::metrics::poll(
            "isolator_fleet_connected 0",
            Duration::from_secs(20),
            || {
                let v = d.scrape()?.value(&Series::new(FLEET_CONNECTED, &[]))?;
                Ok(if v == 0.0 {
                    Ok(())
                } else {
                    Err(format!("{v}"))
                })
            },
        );
        bad.check(noticed.is_ok(), || format!("{name}: {noticed:?}"));
    }
    fleet.expect_enforcing(&mut bad, &all, false, "A2 kept while etcd is down");

    // A host restarted while etcd is down enforces its cached bundle.
    let restarted = 0;
    let d = fleet.hosts[restarted].daemon.take().expect("daemon");
    let status = d.stop(Duration::from_secs(20)).expect("stop");
    assert!(status.success(), "the daemon stops cleanly: {status}");
    fleet.start_daemon(restarted);
    fleet.await_healthy(restarted);
    let control = fleet.control_status(restarted);
    bad.check(
        control["fleet"]["source"] == "cache" && control["fleet"]["revision"] == a2,
        || format!("the restarted host must enforce its cached A2: {control:#}"),
    );
    let log = fleet.hosts[restarted]
        .daemon
        .as_ref()
        .expect("daemon")
        .log();
    bad.check(log.contains("enforcing the cached policy bundle"), || {
        format!("the restarted host must say it enforces its cache:\n{log}")
    });
    fleet.expect_enforcing(&mut bad, &[restarted], false, "A2 from the cache");

    // etcd back, with a newer bundle: every host catches up, the restarted one too.
    fleet.etcd.restart().unwrap_or_else(|e| panic!("{e:#}"));
    let (b2, _) = fleet.publish(&policy(true, "B2"), true);
    fleet.await_status(
        &all,
        "every host catches up with B2",
        Duration::from_secs(60),
        |s| s["revision"] == b2 && s["source"] == "etcd",
    );
    fleet.expect_enforcing(&mut bad, &all, true, "B2 after etcd came back");

    // A partition of five hosts while two bundles are published and the history is
    // compacted: they show as gone, then read the bundle again when it heals.
    let cut: Vec<usize> = (0..5).collect();
    for i in &cut {
        fleet
            .etcd
            .set_link(fleet.hosts[*i].link, false)
            .expect("cut");
    }
    let gone_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, view) = fleet.fleet_status();
        if cut
            .iter()
            .all(|i| state_of(&view, &fleet.hosts[*i].name) == "gone")
        {
            break;
        }
        if Instant::now() > gone_deadline {
            bad.push(format!("the cut-off hosts must show as gone: {view:#}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = fleet.publish(&policy(false, "A3"), true);
    let (a4, _) = fleet.publish(&policy(false, "A4"), true);
    let now = fleet.etcd.revision().expect("revision");
    fleet.etcd.compact(now).unwrap_or_else(|e| panic!("{e:#}"));
    let rest: Vec<usize> = (5..HOSTS).collect();
    fleet.await_status(&rest, "the others run A4", Duration::from_secs(30), |s| {
        s["revision"] == a4
    });
    fleet.expect_enforcing(&mut bad, &cut, true, "B2 kept during the partition");
    for i in &cut {
        fleet
            .etcd
            .set_link(fleet.hosts[*i].link, true)
            .expect("heal");
    }
    fleet.await_status(
        &cut,
        "the healed hosts run A4",
        Duration::from_secs(60),
        |s| s["revision"] == a4,
    );
    for i in &cut {
        let control = fleet.control_status(*i);
        bad.check(
            control["fleet"]["rereads"].as_u64().unwrap_or(0) >= 1,
            || {
                format!(
                    "{} resumed a compacted watch: it must have read the bundle again: {:#}",
                    fleet.hosts[*i].name, control["fleet"]
                )
            },
        );
    }
    fleet.expect_enforcing(&mut bad, &all, false, "A4 everywhere after the partition");
    let (all_ok, view) = fleet.fleet_status();
    bad.check(all_ok, || {
        format!("fleet status must be all ok at the end: {view:#}")
    });
    println!("fleet: done in {:?}", started.elapsed());
    let log = fleet.hosts[0]
        .daemon
        .as_ref()
        .map(|d| isolator_tests::daemon::tail(&d.log(), 60))
        .unwrap_or_default();
    bad.finish(
        "twenty hosts follow one bundle",
        &format!("etcd's log:\n{}", fleet.etcd.log_tail()),
        &log,
    );
}

/// The group's revision in `fleet status --json` (0: nothing published).
fn group_revision(view: &serde_json::Value) -> i64 {
    view["groups"]["default"]["revision"].as_i64().unwrap_or(0)
}

#[test]
fn over_tls_publish_refuses_strangers_and_stale_writes_and_fleet_status_sees_a_host_go() {
    let mut fleet = Fleet::new_with(2, "tls", true);
    // hv01 is a canary: it follows its own group's bundle.
    fleet.hosts[1].group = "canary".into();
    let mut bad = Problems::new();
    // etcd takes a moment to elect itself: the first publish may find it not ready yet.
    let deadline = Instant::now() + Duration::from_secs(20);
    let policy_a = fleet
        .tmp
        .write("a.yaml", &policy(false, "A"))
        .expect("file");
    let key = fleet.key.to_string_lossy().into_owned();
    let sign = |file: &std::path::Path| {
        let out = isolator(&["sign", "--key", &key, &file.to_string_lossy()]);
        assert!(out.status.success(), "{}", text(&out));
    };
    sign(&policy_a);
    let url = fleet.etcd.local_url(PREFIX);
    let trusted = fleet.trusted.to_string_lossy().into_owned();
    let publish_args = |file: &std::path::Path| -> Vec<String> {
        [
            "publish",
            "--etcd",
            &url,
            "--trusted-keys",
            &trusted,
            &file.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    loop {
        let args = publish_args(&policy_a);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = fleet.cli(&args);
        if out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            bad.check(stdout.contains("against nothing published"), || {
                format!("the first publish says nothing was there: {stdout}")
            });
            break;
        }
        assert!(
            Instant::now() < deadline,
            "publishing over TLS: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, view) = fleet.fleet_status();
    let a = group_revision(&view);
    assert!(a > 0, "the bundle is published: {view:#}");

    // Without a client certificate, with one from another CA, and in plain text: refused,
    // nothing written.
    let certs = fleet.tmp.path().join("certs");
    let args = publish_args(&policy_a);
    let mut plain: Vec<String> = args.clone();
    plain[2] = fleet.etcd.local_url(PREFIX).replace("etcds://", "etcd://");
    let ca = certs.join("ca.pem").to_string_lossy().into_owned();
    let stranger = [
        "--etcd-ca".to_string(),
        ca.clone(),
        "--etcd-cert".to_string(),
        certs.join("stranger.pem").to_string_lossy().into_owned(),
        "--etcd-key".to_string(),
        certs.join("stranger.key").to_string_lossy().into_owned(),
    ];
    for (what, extra, args) in [
        (
            "no client certificate",
            vec!["--etcd-ca".to_string(), ca.clone()],
            args.clone(),
        ),
        (
            "a stranger's client certificate",
            stranger.to_vec(),
            args.clone(),
        ),
        ("plain text to a TLS etcd", vec![], plain),
    ] {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(extra.iter().map(String::as_str));
        let out = fleet.cli_as_is(&all);
        bad.check(out.status.code() == Some(2), || {
            format!("{what}: publish must exit 2: {}", text(&out))
        });
        bad.check(
            String::from_utf8_lossy(&out.stderr).contains("nothing was published"),
            || {
                format!(
                    "{what}: publish must say nothing was published: {}",
                    text(&out)
                )
            },
        );
    }
    let (_, view) = fleet.fleet_status();
    bad.check(group_revision(&view) == a, || {
        format!("nothing may have been written: {view:#}")
    });

    // Daemons over TLS with a client certificate follow their group's bundle: A for both.
    let group_args = |file: &std::path::Path, group: &str| -> Vec<String> {
        let mut args = publish_args(file);
        args.extend(["--group".to_string(), group.to_string()]);
        args
    };
    let run = |fleet: &Fleet, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = fleet.cli(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    };
    run(&fleet, group_args(&policy_a, "canary"));
    let (_, view) = fleet.fleet_status();
    let canary_a = view["groups"]["canary"]["revision"]
        .as_i64()
        .expect("canary published");
    for i in 0..2 {
        fleet.start_daemon(i);
    }
    for i in 0..2 {
        fleet.await_healthy(i);
    }
    fleet.await_status(
        &[0],
        "the default host runs A",
        Duration::from_secs(30),
        |s| s["revision"] == a,
    );
    fleet.await_status(&[1], "the canary runs A", Duration::from_secs(30), |s| {
        s["revision"] == canary_a && s["group"] == "canary"
    });
    fleet.expect_enforcing(&mut bad, &[0, 1], false, "A over TLS");

    // B to the canary first: only the canary changes; then to everyone.
    let policy_b0 = fleet
        .tmp
        .write("b0.yaml", &policy(true, "B0"))
        .expect("file");
    sign(&policy_b0);
    run(&fleet, group_args(&policy_b0, "canary"));
    let (_, view) = fleet.fleet_status();
    let canary_b = view["groups"]["canary"]["revision"]
        .as_i64()
        .expect("canary published");
    fleet.await_status(&[1], "the canary runs B", Duration::from_secs(30), |s| {
        s["revision"] == canary_b
    });
    fleet.expect_enforcing(&mut bad, &[1], true, "B on the canary");
    fleet.expect_enforcing(&mut bad, &[0], false, "A kept beside the canary");
    let (all_ok, view) = fleet.fleet_status();
    bad.check(
        all_ok && state_of(&view, "hv00") == "ok" && state_of(&view, "hv01") == "ok",
        || format!("each host is ok against its own group: {view:#}"),
    );
    run(&fleet, group_args(&policy_b0, "default"));
    fleet.await_status(
        &[0],
        "the default host runs B after the canary",
        Duration::from_secs(30),
        |s| s["sha256"] == fleet.statuses()["hv01"]["sha256"],
    );
    fleet.expect_enforcing(&mut bad, &[0], true, "B everywhere");
    let (_, view) = fleet.fleet_status();
    let a = group_revision(&view);

    // --dry-run shows the diff and writes nothing; a publish over a revision that moved
    // since is refused, and so is one whose transaction finds the key changed.
    // (B is everywhere: this one takes the flow away again.)
    let policy_b = fleet
        .tmp
        .write("b.yaml", &policy(false, "B"))
        .expect("file");
    sign(&policy_b);
    let mut dry = publish_args(&policy_b);
    dry.push("--dry-run".into());
    let dry: Vec<&str> = dry.iter().map(String::as_str).collect();
    let out = fleet.cli(&dry);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    bad.check(out.status.success(), || {
        format!("--dry-run: {}", text(&out))
    });
    bad.check(
        stdout.contains("- flow acme/web -> acme/app: udp 9")
            && stdout.contains("not published (--dry-run)")
            && stdout.contains(&format!("--expect-revision {a}")),
        || format!("--dry-run must show the diff and the revision it saw: {stdout}"),
    );
    let policy_c = fleet
        .tmp
        .write("c.yaml", &policy(false, "C"))
        .expect("file");
    sign(&policy_c);
    let args = publish_args(&policy_c);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = fleet.cli(&args);
    assert!(out.status.success(), "publishing C: {}", text(&out));
    let (_, view) = fleet.fleet_status();
    let c = group_revision(&view);
    let mut stale = publish_args(&policy_b);
    stale.extend(["--expect-revision".to_string(), a.to_string()]);
    let stale: Vec<&str> = stale.iter().map(String::as_str).collect();
    let out = fleet.cli(&stale);
    bad.check(out.status.code() == Some(1), || {
        format!(
            "a publish over a revision that moved must exit 1: {}",
            text(&out)
        )
    });
    bad.check(
        String::from_utf8_lossy(&out.stderr).contains("someone published meanwhile"),
        || format!("it must say why: {}", text(&out)),
    );
    let (_, view) = fleet.fleet_status();
    bad.check(group_revision(&view) == c, || {
        format!("C must stay published: {view:#}")
    });
    fleet.await_status(&[0], "the TLS host runs C", Duration::from_secs(30), |s| {
        s["revision"] == c
    });

    // The host stops: its status expires with its lease and fleet status says it is gone,
    // until it is forgotten.
    let d = fleet.hosts[0].daemon.take().expect("daemon");
    d.stop(Duration::from_secs(20)).expect("stop");
    let name = fleet.hosts[0].name.clone();
    let gone = isolator_tests::metrics::poll("the host gone", Duration::from_secs(20), || {
        let (all_ok, view) = fleet.fleet_status();
        Ok(if !all_ok && state_of(&view, &name) == "gone" {
            Ok(())
        } else {
            Err(format!("{view}"))
        })
    });
    bad.check(gone.is_ok(), || format!("{gone:?}"));
    let out = fleet.cli(&["fleet", "forget", "--etcd", &url, &name]);
    bad.check(out.status.success(), || format!("forget: {}", text(&out)));
    let (all_ok, view) = fleet.fleet_status();
    bad.check(all_ok && state_of(&view, &name) == "absent", || {
        format!("a forgotten host is no longer listed: {view:#}")
    });

    // A daemon of a group nothing is published for, without a cache, does not start, and
    // says why.
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let hv = &fleet.hosts[0];
    let etcd_url = fleet.etcd.url(PREFIX);
    let empty_cache = hv.dir.path().join("no-cache");
    let mut args = vec![
        "--policy-source",
        &etcd_url,
        "--fleet-group",
        "nobody",
        "--fleet-cache",
        empty_cache.to_str().expect("utf-8"),
    ];
    args.extend(fleet.tls_args.iter().map(String::as_str));
    let mut refused = Daemon::start_source(&hv.lab, &bin, METRICS_PORT, hv.dir.path(), &args)
        .unwrap_or_else(|e| panic!("{e:#}"));
    match refused.wait_exit(Duration::from_secs(30)) {
        Ok(status) => bad.check(!status.success(), || "it must not start".into()),
        Err(e) => bad.push(format!("a daemon with nothing to enforce ran: {e:#}")),
    }
    let log = refused.log();
    bad.check(
        log.contains("nothing is published at /isolator/policy/nobody")
            && log.contains("there is no cached bundle"),
        || format!("it must say why it did not start:\n{log}"),
    );
    bad.check(
        hv.lab
            .vif_programs(&hv.web.vif)
            .expect("programs")
            .is_empty(),
        || "the refused start attached programs".into(),
    );
    bad.finish("fleet over TLS", &fleet.etcd.log_tail(), &log);
}
