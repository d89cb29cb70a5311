//! What `/metrics` and `/healthz` serve, on the standard topology: the text format 0.0.4
//! that promtool accepts, the documented families with their types and label sets, and
//! the interfaces gauge.

use isolator_common::verdict;
use isolator_tests::metrics::{DROP_BYTES, DROP_PACKETS, INTERFACES, PASS_BYTES, PASS_PACKETS};
use isolator_tests::{Dir, Scrape, Series, ping, topology};

use crate::common::{assert_well_formed, standard};

#[test]
fn metrics_pass_promtool_and_are_well_typed() {
    let env = standard("promtool");
    // Some traffic of every kind first, so every labelled series exists.
    let (a, b, c, g) = (
        env.vm("acme-web1"),
        env.vm("acme-web2"),
        env.vm("acme-db1"),
        env.vm("globex-web1"),
    );
    assert!(ping(a, b.v4()).unwrap());
    assert!(!ping(a, c.v4()).unwrap());
    assert!(!ping(a, g.v6()).unwrap());
    let d = env.daemon();
    let resp = d.get("/metrics").unwrap();
    assert_eq!(resp.status, 200);
    let ctype = resp.header("content-type").unwrap_or("");
    assert!(
        ctype.starts_with("text/plain") && ctype.contains("version=0.0.4"),
        "/metrics Content-Type must be the text format 0.0.4, got {ctype:?}"
    );
    let m = Scrape::parse(&resp.body).unwrap();
    // The two blocked pings are counted at acme-web1's vif under their reasons (a fresh
    // daemon: the values are what this test sent).
    for reason in [verdict::CROSS_SEGMENT, verdict::CROSS_TENANT] {
        let series = Series::drop(&a.vif, Dir::Ingress, reason);
        let v = m.value(&series).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(v >= 1.0, "{series} must count the blocked ping, is {v}");
    }
    assert_well_formed(
        &m,
        &[
            DROP_PACKETS,
            DROP_BYTES,
            PASS_PACKETS,
            PASS_BYTES,
            INTERFACES,
        ],
    );
    let healthz = d.get("/healthz").unwrap();
    assert_eq!(healthz.status, 200);
}

#[test]
fn interfaces_gauge_counts_vifs_per_segment() {
    let env = standard("gauge");
    let m = env.scrape();
    for seg in topology::SEGMENTS {
        let expected = topology::VMS.iter().filter(|v| v.seg == seg).count() as f64;
        let series = Series::interfaces(seg.tenant, seg.segment);
        assert_eq!(
            m.value(&series).unwrap(),
            expected,
            "{series}; samples:\n{}",
            m.dump(INTERFACES)
        );
    }
}

/// What an operator alerts on (issue 11, point 4): each interface enforced, and how; the
/// policy generation and when it was put into effect; the build. A restarted daemon that
/// takes the links over still says how they are attached (the kernel's mode, not "taken
/// over").
#[test]
fn enforcement_generation_and_reload_time_are_queries() {
    use isolator_tests::metrics::{
        BUILD_INFO, INTERFACE_ENFORCED, LAST_RELOAD_SUCCESS, POLICY_GENERATION,
    };
    let mut env = standard("enforced");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
    };
    let enforced = |m: &Scrape, vif: &str| {
        m.select(&Series::new(INTERFACE_ENFORCED, &[("device", vif)]))
            .iter()
            .map(|s| (s.labels.get("mode").cloned().unwrap_or_default(), s.value))
            .collect::<Vec<_>>()
    };
    let m = env.scrape();
    for vm in topology::VMS {
        assert_eq!(
            enforced(&m, &vm.vif()),
            vec![("native".to_string(), 1.0)],
            "{}",
            vm.vif()
        );
    }
    let value = |m: &Scrape, name: &'static str| {
        m.value(&Series::new(name, &[]))
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    assert_eq!(value(&m, POLICY_GENERATION), 1.0);
    let first = value(&m, LAST_RELOAD_SUCCESS);
    assert!((now() - first).abs() < 120.0, "put into effect at {first}");
    let version = Series::new(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))]);
    assert_eq!(m.value(&version).unwrap_or_else(|e| panic!("{e:#}")), 1.0);

    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.reload(&topology::policy_yaml(), true)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let m = env.scrape();
    assert_eq!(value(&m, POLICY_GENERATION), 2.0);
    assert!(
        value(&m, LAST_RELOAD_SUCCESS) > first,
        "the reload moved it on"
    );

    // Crash and restart: the links are taken over; their mode is still read right.
    let mut crashed = env.take_daemon();
    crashed.signal(libc::SIGKILL).unwrap();
    crashed
        .wait_exit(std::time::Duration::from_secs(10))
        .unwrap();
    env.start_daemon(&[]).unwrap_or_else(|e| panic!("{e:#}"));
    let m = env.scrape();
    for vm in topology::VMS {
        assert_eq!(
            enforced(&m, &vm.vif()),
            vec![("native".to_string(), 1.0)],
            "{} after a takeover",
            vm.vif()
        );
    }
    assert_eq!(
        value(&m, POLICY_GENERATION),
        1.0,
        "a new daemon counts anew"
    );

    // Large hosts: the per-interface families summed per segment, enforcement still per
    // interface.
    env.take_daemon()
        .stop(std::time::Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}"));
    env.start_daemon(&["--metrics-detail", "segment"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let m = env.scrape();
    let drops: Vec<_> = m
        .samples
        .iter()
        .filter(|s| s.name == DROP_PACKETS)
        .collect();
    assert!(!drops.is_empty());
    assert!(
        drops
            .iter()
            .all(|s| s.labels.get("device").is_none_or(|d| d.is_empty())),
        "no device label per segment: {drops:?}"
    );
    for vm in topology::VMS {
        assert_eq!(enforced(&m, &vm.vif()), vec![("native".to_string(), 1.0)]);
    }
}
