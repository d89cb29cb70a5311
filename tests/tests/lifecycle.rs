//! The daemon's life on the standard topology: what it attaches and detaches (SIGTERM),
//! interfaces that come and go (hotplug), SIGHUP reloads, a crash and planned restarts
//! that keep enforcing (I7), and `isolator check`.

use std::time::Duration;

use isolator_common::verdict;
use isolator_tests::frame::{parse_mac, targets};
use isolator_tests::metrics::poll;
use isolator_tests::{
    Dir, Env, Expect, Series, TempDir, Vm, isolator_bin, ping, ping_count, topology,
};

use crate::common::{capture, standard};

/// How long the daemon is given to follow a change (a new vif, a reload).
const FOLLOW: Duration = Duration::from_secs(5);

/// Permanent IPv4 neighbour entries between `a` and `b`, both ways: an echo request is
/// then exactly one frame, with no ARP whose retries depend on timing.
fn neighbours(env: &Env, a: &Vm, b: &Vm) {
    env.lab().static_neigh(a, b, b.v4()).unwrap();
    env.lab().static_neigh(b, a, a.v4()).unwrap();
}

/// One IPv4 echo request `from` -> `to` that must get no reply. With [`neighbours`] set
/// (done here; it sends nothing) it is exactly one frame: the caller checks the drop.
fn unanswered(env: &Env, from: &Vm, to: &Vm, what: &str) {
    neighbours(env, from, to);
    assert!(
        !ping(from, to.v4()).unwrap(),
        "{what}: {} -> {} ({}) was answered",
        from.name,
        to.name,
        to.v4()
    );
}

/// An IPv4 echo request `from` -> `to` gets no reply and is exactly one drop at `from`'s
/// vif (ingress) for `reason`.
fn assert_blocked(env: &Env, from: &Vm, to: &Vm, reason: u8, what: &str) {
    let before = env.scrape();
    unanswered(env, from, to, what);
    let series = Series::drop(&from.vif, Dir::Ingress, reason);
    env.daemon()
        .expect(&before, &Expect::new().grows(series, 1.0))
        .unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", env.log_tail()));
}

#[test]
fn sigterm_detaches_every_program_and_exits_zero() {
    let mut env = standard("sigterm");
    let vifs: Vec<String> = env.lab().vms().iter().map(|v| v.vif.clone()).collect();
    for vif in &vifs {
        assert_eq!(
            env.lab().vif_programs(vif).unwrap(),
            ["xdp", "tcx ingress", "tcx egress"],
            "while isolator runs, {vif} carries the XDP program, the TC program for VLAN \
             tags in metadata (ingress) and the TC program on its egress, once each:\n{}",
            env.lab().vif_details(vif).unwrap()
        );
    }
    let on_bridge = env.lab().vif_programs(isolator_tests::lab::BRIDGE).unwrap();
    assert!(
        on_bridge.is_empty(),
        "the bridge is named by no policy entry, yet has programs: {on_bridge:?}"
    );
    let (a, b, g) = (
        env.vm("acme-web1").clone(),
        env.vm("acme-web2").clone(),
        env.vm("globex-web1").clone(),
    );
    assert_blocked(
        &env,
        &a,
        &g,
        verdict::CROSS_TENANT,
        "cross tenant must be blocked while running",
    );
    assert!(
        ping(&a, b.v4()).unwrap(),
        "same segment passes while running"
    );
    // The daemon faults its memory in small pages (isolator::memory): with huge pages a
    // large policy loads 2.6 times slower.
    let pid = env.daemon().pid().expect("the daemon runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])),
        "the daemon runs with transparent huge pages on:\n{status}"
    );

    let status = env
        .take_daemon()
        .stop(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let log = env.log_tail();
    assert!(
        status.success(),
        "isolator must exit 0 on SIGTERM, got {status}; output:\n{log}"
    );
    for vif in &vifs {
        let left = env.lab().vif_programs(vif).unwrap();
        assert!(
            left.is_empty(),
            "after SIGTERM, {vif} still has BPF programs attached: {left:?}\nisolator output:\n{log}"
        );
    }
    // Nothing enforces any more: the same ping now goes through (the block was isolator's).
    assert!(
        ping(&a, g.v4()).unwrap(),
        "after isolator stopped, acme-web1 -> globex-web1 should be delivered again"
    );
}

#[test]
fn check_accepts_the_lab_policy_and_rejects_a_bad_one_with_a_position() {
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let tmp = TempDir::new("isot-check").unwrap();
    let good = tmp.write("good.yaml", &topology::policy_yaml()).unwrap();
    let out = std::process::Command::new(&bin)
        .arg("check")
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The verdict, then what the kernel maps take for the policy: its lab has 3 segments'
    // IPv4 prefixes, their exposures and the management prefix, each an address entry.
    let addresses = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("ADDRESSES_V4: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    assert!(
        out.status.success()
            && stdout
                .lines()
                .next()
                .is_some_and(|l| l.contains(": valid: "))
            && stdout.contains("kernel maps sized for it")
            && addresses.is_some_and(|n| n >= 3),
        "`isolator check` on the lab policy: {}\nstdout: {stdout}\nstderr: {}\npolicy:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        topology::policy_yaml()
    );
    // An unknown key on line 6 (the first `interfaces:`).
    let bad_text =
        topology::policy_yaml().replacen("        interfaces:", "        interfacez:", 1);
    let bad = tmp.write("bad.yaml", &bad_text).unwrap();
    let out = std::process::Command::new(&bin)
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let prefix = format!("{}:6:", bad.display());
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains(": error: ")),
        "expected a `{prefix}COL: error: ...` line on stderr, got:\n{stderr}\nfile:\n{bad_text}"
    );
}

/// Interfaces created after the daemon started are enforced, and followed when they go.
#[test]
fn hotplugged_vif_is_enforced_and_followed() {
    let mut env = standard("hotplug");
    let gauge = Series::interfaces("acme", "web");
    assert_eq!(env.value(&gauge), 2.0);
    let late = env
        .lab_mut()
        .add_vm(
            "acme-web9",
            "vacme-web9",
            &["10.1.1.9/24", "fd00:1:1::9/64"],
        )
        .unwrap();
    poll(
        "vacme-web9 (matches vacme-web*) gets its XDP program",
        FOLLOW,
        || {
            Ok(if env.lab().vif_has_xdp(&late.vif)? {
                Ok(())
            } else {
                Err(env.log_tail())
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    env.await_value(&gauge, 3.0, FOLLOW);
    let g = env.vm("globex-web1").clone();
    // No ARP: the echo request is the one frame of the late VM that reaches the drop.
    neighbours(&env, &late, &g);
    let before = env.scrape();
    let (pinged, frames) = capture(&g.ns, "eth0", || ping(&late, g.v4()).unwrap());
    assert!(!pinged, "the late VM must not reach another tenant");
    let late_mac = parse_mac(&late.mac).unwrap();
    assert!(
        !frames
            .iter()
            .any(|f| f.len() >= 12 && f[6..12] == late_mac && targets(f, g.v4())),
        "frames of the late VM reached globex-web1"
    );
    // The late vif's drop is counted under its name, once.
    env.expect(
        &before,
        &Expect::new().grows(
            Series::drop("vacme-web9", Dir::Ingress, verdict::CROSS_TENANT),
            1.0,
        ),
    );
    // Same-segment traffic of the late VM works.
    let w1 = env.vm("acme-web1").clone();
    assert!(
        ping(&late, w1.v4()).unwrap(),
        "same segment from the late VM"
    );

    // The vif goes away: the daemon follows, and the gauge drops back.
    env.lab()
        .exec_ok(env.lab().host_ns(), &["ip", "link", "del", &late.vif])
        .unwrap();
    env.await_value(&gauge, 2.0, FOLLOW);
    // Enforcement on the other vifs is untouched.
    assert_blocked(
        &env,
        &w1,
        &g,
        verdict::CROSS_TENANT,
        "cross tenant still blocked",
    );
    assert!(
        ping(&w1, env.vm("acme-web2").v4()).unwrap(),
        "same segment still passes"
    );
}

/// SIGHUP reloads the policy all at once; a policy that does not validate is refused and
/// the running one stays in force.
#[test]
fn sighup_reloads_the_policy_and_refuses_a_bad_one() {
    let env = standard("reload");
    let (w1, d1) = (env.vm("acme-web1").clone(), env.vm("acme-db1").clone());
    assert_blocked(
        &env,
        &w1,
        &d1,
        verdict::CROSS_SEGMENT,
        "no flow yet: web -> db blocked",
    );

    // A flow web -> db (ICMP): after the reload the ping passes.
    let with_flow = topology::policy_yaml().replacen(
        "  - name: acme\n    segments:\n",
        "  - name: acme\n    flows:\n      - from: web\n        to: db\n        protocol: icmp\n    segments:\n",
        1,
    );
    env.reload(&with_flow, true)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(ping(&w1, d1.v4()).unwrap(), "the new flow is in force");
    assert!(
        env.daemon()
            .log()
            .contains("reload: + flow acme/web -> acme/db: icmp"),
        "the log shows what the reload made reachable:\n{}",
        env.daemon().log()
    );
    assert_blocked(
        &env,
        &d1,
        &w1,
        verdict::CROSS_SEGMENT,
        "and only in its direction",
    );

    // A broken file: refused, counted, and the flow stays.
    env.reload(
        "version: 1\ntenants:\n  - name: acme\n    colour: blue\n",
        false,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        env.value(&Series::reloads("succeeded")),
        1.0,
        "the refused reload is not counted as succeeded"
    );
    assert!(
        env.daemon().log().contains("unknown field `colour`"),
        "the log names what is wrong:\n{}",
        env.daemon().log()
    );
    assert!(
        ping(&w1, d1.v4()).unwrap(),
        "the running policy stays in force"
    );
    let g = env.vm("globex-web1").clone();
    assert_blocked(&env, &w1, &g, verdict::CROSS_TENANT, "and keeps isolating");
}

/// I7: enforcement keeps running when the daemon crashes; a new daemon with the same state
/// directory takes the programs over without a gap (counters and policy continue), and a
/// clean SIGTERM afterwards leaves nothing behind.
#[test]
fn enforcement_survives_a_crash_and_a_restart_takes_over() {
    let mut env = standard("crash");
    let (w1, w2, g) = (
        env.vm("acme-web1").clone(),
        env.vm("acme-web2").clone(),
        env.vm("globex-web1").clone(),
    );
    let cross = Series::drop("vacme-web1", Dir::Ingress, verdict::CROSS_TENANT);
    // A permanent neighbour entry: every blocked echo request is exactly one dropped frame,
    // with no ARP retries whose number depends on timing.
    env.lab().static_neigh(&w1, &g, g.v4()).unwrap();
    const N: u16 = 3;
    let blocked = |what: &str| {
        let replies = ping_count(
            &w1.ns,
            g.v4(),
            N,
            Duration::from_millis(20),
            Duration::from_millis(300),
        )
        .unwrap();
        assert_eq!(replies, 0, "{what}");
    };
    let start = env.scrape();
    blocked("isolated while the daemon runs");
    let before = env.expect(&start, &Expect::new().grows(cross.clone(), N as f64));

    // Crash: no chance to clean up.
    let mut crashed = env.take_daemon();
    crashed.signal(libc::SIGKILL).unwrap();
    crashed.wait_exit(FOLLOW).unwrap();
    assert!(
        env.lab().vif_has_xdp(&w1.vif).unwrap(),
        "the programs stay attached after a crash"
    );
    blocked("still isolated with no daemon running");
    assert!(
        ping(&w1, w2.v4()).unwrap(),
        "same-segment traffic still passes with no daemon running"
    );

    // Restart: the new daemon takes over.
    env.start_daemon(&[]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        env.daemon().log().contains("took over"),
        "the restarted daemon took the pinned programs over:\n{}",
        env.daemon().log()
    );
    blocked("isolated after the restart");
    // Counters continue across the crash and restart: N echo requests blocked with no
    // daemon and N after the restart.
    env.expect(&before, &Expect::new().grows(cross, 2.0 * N as f64));
    assert!(
        ping(&w1, w2.v4()).unwrap(),
        "same segment after the restart"
    );

    // A clean stop removes everything, pins included.
    let status = env.take_daemon().stop(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "exit status {status}");
    for vm in env.lab().vms() {
        assert_eq!(
            env.lab().vif_programs(&vm.vif).unwrap(),
            Vec::<String>::new(),
            "{} still carries programs after SIGTERM",
            vm.vif
        );
    }
    assert!(
        !env.lab().state_dir().unwrap().exists(),
        "the state directory is removed on a clean stop"
    );
    assert!(ping(&w1, g.v4()).unwrap(), "nothing enforces any more");
}

/// `--persist`: SIGTERM stops the daemon but not the enforcement, for an upgrade; the next
/// daemon takes over.
#[test]
fn persist_keeps_enforcing_across_a_planned_restart() {
    let mut env = standard("persist");
    let (w1, w2, g) = (
        env.vm("acme-web1").clone(),
        env.vm("acme-web2").clone(),
        env.vm("globex-web1").clone(),
    );
    // Replace the fixture's daemon by one started with --persist.
    let status = env.take_daemon().stop(Duration::from_secs(10)).unwrap();
    assert!(status.success());
    env.start_daemon(&["--persist"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Three blocked echo requests, one under each daemon and one between them: the
    // counters in the kernel count all three, read by the next daemon.
    let cross = Series::drop(&w1.vif, Dir::Ingress, verdict::CROSS_TENANT);
    let before = env.scrape();
    unanswered(&env, &w1, &g, "isolated under the persistent daemon");
    env.expect(&before, &Expect::new().grows(cross.clone(), 1.0));
    let persistent = env.take_daemon();
    let log = persistent.log();
    let status = persistent.stop(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "exit status {status}\n{log}");
    assert!(
        env.lab().vif_has_xdp(&w1.vif).unwrap(),
        "--persist leaves the programs attached"
    );
    unanswered(&env, &w1, &g, "still isolated between daemons");
    assert!(
        ping(&w1, w2.v4()).unwrap(),
        "same segment passes between daemons"
    );
    env.start_daemon(&[]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        env.daemon().log().contains("took over"),
        "{}",
        env.daemon().log()
    );
    unanswered(&env, &w1, &g, "isolated under the next daemon");
    env.expect(&before, &Expect::new().grows(cross, 3.0));
}
