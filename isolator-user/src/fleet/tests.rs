use std::collections::BTreeMap;
use std::time::Duration;

use super::cli::assess;
use super::follow::Backoff;
use super::*;

#[test]
fn a_location_names_members_and_a_prefix() {
    let l: Location = "etcd://10.0.0.1:2379,etcd-b.example:2380/isolator/prod/"
        .parse()
        .unwrap();
    assert_eq!(l.endpoints, ["10.0.0.1:2379", "etcd-b.example:2380"]);
    assert_eq!(l.prefix, "/isolator/prod");
    assert!(!l.tls);
    assert_eq!(l.policy_key("canary"), "/isolator/prod/policy/canary");
    assert_eq!(l.status_key("hv01"), "/isolator/prod/status/hv01");
    assert_eq!(l.host_key("hv01"), "/isolator/prod/hosts/hv01");
    assert_eq!(
        l.to_string(),
        "etcd://10.0.0.1:2379,etcd-b.example:2380/isolator/prod"
    );
    let tls: Location = "etcds://[::1]:2379/i".parse().unwrap();
    assert!(tls.tls);
    assert_eq!(tls.endpoints, ["[::1]:2379"]);
}

#[test]
fn a_location_without_prefix_port_or_scheme_is_refused_with_the_reason() {
    for (text, says) in [
        ("http://10.0.0.1:2379/isolator", "expected etcd://"),
        ("etcd://10.0.0.1:2379", "no /PREFIX"),
        ("etcd://10.0.0.1:2379/", "the prefix is empty"),
        ("etcd://10.0.0.1/isolator", "has no :PORT"),
        ("etcd://10.0.0.1:99999/isolator", "is not a port"),
        ("etcd://10.0.0.1:2379,/isolator", "has no :PORT"),
        ("etcd://10.0.0.1:2379/iso lator", "may hold only"),
        ("etcd://10.0.0.1:2379/a//b", "may hold only"),
        ("etcd://10.0.0.1:2379/a/../b", "may hold only"),
    ] {
        let e = text.parse::<Location>().unwrap_err().to_string();
        assert!(e.contains(says), "{text}: {e}");
    }
}

#[test]
fn names_of_groups_and_hosts_are_plain() {
    for good in ["default", "canary-1", "hv01.rack2", "a_b"] {
        assert!(valid_name(good), "{good}");
    }
    for bad in ["", ".", "..", "a/b", "a b", "ä", &"x".repeat(65)] {
        assert!(!valid_name(bad), "{bad}");
    }
}

#[test]
fn a_bundle_round_trips_and_one_changed_after_publishing_is_refused() {
    let bundle = Bundle::new(
        "version: 1\n".into(),
        Some("sig".into()),
        "ops@admin".into(),
    );
    let decoded = Bundle::decode(&bundle.encode()).unwrap();
    assert_eq!(decoded, bundle);

    let mut changed = bundle.clone();
    changed.policy.push_str("tenants: []\n");
    let e = Bundle::decode(&changed.encode()).unwrap_err().to_string();
    assert!(e.contains("changed after publishing"), "{e}");

    let mut future = bundle.clone();
    future.format = 2;
    let e = Bundle::decode(&future.encode()).unwrap_err().to_string();
    assert!(e.contains("bundle format 2"), "{e}");

    let e = format!("{:#}", Bundle::decode(b"version: 1").unwrap_err());
    assert!(e.contains("not a policy bundle"), "{e}");
}

#[test]
fn the_cache_keeps_the_last_bundle_stored_and_says_what_is_wrong_with_a_broken_one() {
    let dir = std::env::temp_dir().join(format!("isolator-fleet-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(cache::load(&dir).unwrap().is_none());
    let candidate = |revision| Candidate {
        key: "/i/policy/default".into(),
        revision,
        bundle: Bundle::new(format!("# {revision}\n"), None, "t@t".into()),
    };
    let (seven, nine) = (candidate(7), candidate(9));
    cache::store(&dir, &seven).unwrap();
    cache::store(&dir, &nine).unwrap();
    let (loaded, stored_ms) = cache::load(&dir).unwrap().unwrap();
    assert_eq!(loaded, nine);
    assert!(stored_ms > 0);
    // Nothing but the cache file is left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [cache::FILE]);
    std::fs::write(cache::path(&dir), b"{").unwrap();
    let e = format!("{:#}", cache::load(&dir).unwrap_err());
    assert!(e.contains("not a fleet cache"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn status(host: &str, group: &str, revision: i64) -> HostStatus {
    HostStatus {
        host: host.into(),
        group: group.into(),
        revision,
        sha256: "ab".repeat(32),
        source: "etcd".into(),
        enforced: vec!["vm1".into()],
        ..HostStatus::default()
    }
}

#[test]
fn fleet_status_flags_hosts_behind_failing_and_gone() {
    let groups = BTreeMap::from([("default".to_string(), 42), ("canary".to_string(), 50)]);
    let mut statuses = BTreeMap::new();
    statuses.insert("hv01".to_string(), status("hv01", "default", 42));
    statuses.insert("hv02".to_string(), status("hv02", "default", 41));
    let mut refused = status("hv03", "canary", 44);
    refused.refused_revision = Some(50);
    refused.last_error = Some("etcd:/i/policy/canary@50 is not signed".into());
    statuses.insert("hv03".to_string(), refused);
    let mut broken = status("hv04", "default", 42);
    broken.failed = vec![FailedInterface {
        device: "tap9".into(),
        reason: "unknown_vif".into(),
    }];
    statuses.insert("hv04".to_string(), broken);
    let mut unverified = status("hv05", "default", 42);
    unverified.verify = Some(VerifySummary {
        findings: 2,
        at_ms: 1,
    });
    statuses.insert("hv05".to_string(), unverified);
    statuses.insert("hv06".to_string(), status("hv06", "blue", 3));
    let mut cached = status("hv08", "default", 42);
    cached.source = "cache".into();
    statuses.insert("hv08".to_string(), cached);
    let registrations: BTreeMap<String, Registration> = ["hv01", "hv02", "hv07"]
        .iter()
        .map(|h| {
            (
                h.to_string(),
                Registration {
                    group: "default".into(),
                    started_ms: 1,
                },
            )
        })
        .collect();
    let rows = assess(&groups, &statuses, &registrations);
    let states: Vec<(&str, &str)> = rows.iter().map(|r| (r.host.as_str(), r.state)).collect();
    assert_eq!(
        states,
        [
            ("hv01", "ok"),
            ("hv02", "behind"),
            ("hv03", "failing"),
            ("hv04", "failing"),
            ("hv05", "failing"),
            ("hv06", "unknown-group"),
            ("hv07", "gone"),
            // Up to date: the cache is named, but it is not a failure.
            ("hv08", "ok"),
        ]
    );
    assert!(rows[1].problems[0].contains("runs revision 41, its group is at 42"));
    assert!(
        rows[2]
            .problems
            .iter()
            .any(|p| p.contains("refused revision 50"))
    );
    assert!(rows[2].problems.iter().any(|p| p.contains("is not signed")));
    assert!(rows[3].problems[0].contains("tap9 (unknown_vif)"));
    assert!(rows[6].problems[0].contains("lease expired"));
    assert!(rows[7].problems[0].contains("cached bundle"));
}

#[test]
fn backoff_doubles_to_its_bound_with_jitter_and_starts_again_after_a_success() {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
    let waits: Vec<Duration> = (0..6).map(|_| backoff.next_wait()).collect();
    for (i, bound) in [100u64, 200, 400, 800, 800, 800].iter().enumerate() {
        let bound = Duration::from_millis(*bound);
        assert!(
            waits[i] >= bound / 2 && waits[i] <= bound,
            "wait {i}: {:?} not within [{:?}, {bound:?}]",
            waits[i],
            bound / 2
        );
    }
    backoff.reset();
    assert!(backoff.next_wait() <= Duration::from_millis(100));
    // Jitter: a hundred hosts do not all wait the same.
    let mut many: Vec<Duration> = (0..100)
        .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_wait())
        .collect();
    many.sort();
    many.dedup();
    assert!(many.len() > 50, "{} distinct waits of 100", many.len());
}
