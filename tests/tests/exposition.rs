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
