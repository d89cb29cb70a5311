//! The fixes of the second audit, proven with real frames between network namespaces:
//! every blocked frame next to its legitimate twin, what arrived (captures, sockets, a
//! macvtap's character device) and exact counter deltas with the right reason.
//!
//! | module        | point | what |
//! |---------------|-------|------|
//! | `macvtap`     | 4     | a macvtap a segment names is quarantined: nothing in, nothing out, `unsupported_kind` |
//! | `conntrack`   | 5     | per-vif tables: a SYN flood evicts no other tenant's connection; RST only in the window; half-close |
//! | `quarantine`  | 6a, 6c| an unclassified vif drops everything until classified; a new vif leaks nothing before |
//! | `reconcile`   | 6b    | a failed reconcile shows in `/healthz` and the metrics, keeps enforcing, is retried |
//! | `fragments`   | 7     | IPv6 fragments keyed by the Fragment header; per-vif tables; the offset-8 TCP fragment |
//! | `smaller`     | 9     | TCX order, link-scope multicast and IGMP in `egress: deny`, 802.1p priority tags |
//!
//! Helpers beyond the common lab are in [`isolator_tests::failclosed_lab`].

mod conntrack;
mod fragments;
mod macvtap;
mod quarantine;
mod reconcile;
mod smaller;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use isolator_tests::frame::{self, parse_mac, udp};
use isolator_tests::metrics::{DROP_PACKETS, PASS_PACKETS};
use isolator_tests::net::Capture;
use isolator_tests::{Daemon, Dir, Expect, Scrape, Series, Vm};

use crate::common::ARRIVAL;

/// Problems found by a test, reported all at once with the daemon's output: a test that
/// stops at the first wrong thing hides what else the product got wrong.
#[derive(Default)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn new() -> Problems {
        Problems::default()
    }

    /// Records `what` unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    /// Records one problem.
    pub fn push(&mut self, what: String) {
        self.0.push(what);
    }

    /// Fails the test with every problem, `context` (what was sent, the policy) and the
    /// daemon's output.
    pub fn finish(self, test: &str, context: &str, log: &str) {
        assert!(
            self.0.is_empty(),
            "{test}: {} problem(s):\n\n{}\n\n{context}\ndaemon output (last lines):\n{log}",
            self.0.len(),
            self.0.join("\n\n"),
        );
    }
}

/// Polls until the counters moved as `expect` says and stay there; on failure records
/// `what` and the counters in `bad` and returns the scrape of the moment, so that the test
/// goes on and reports everything it finds.
pub fn awaited(
    bad: &mut Problems,
    daemon: &Daemon,
    before: &Scrape,
    expect: &Expect,
    what: &str,
) -> Scrape {
    match expect.wait(before, || daemon.scrape()) {
        Ok(m) => m,
        Err(e) => {
            bad.push(format!("{what}: {e:#}"));
            daemon
                .scrape()
                .unwrap_or_else(|e| panic!("scraping /metrics: {e:#}"))
        }
    }
}

/// Waits for `moves` (vif, `"<direction> pass"` or `"<direction> <reason>"`, by) and
/// checks that these are the only changes of the counters of every vif in `watched`.
pub fn expect_exactly(
    bad: &mut Problems,
    daemon: &Daemon,
    watched: &[&str],
    before: &Scrape,
    moves: &[(&str, &str, f64)],
    what: &str,
) -> Scrape {
    let mut expect = Expect::new();
    for (vif, key, by) in moves {
        expect = expect.grows(series_of(vif, key), *by);
    }
    let after = awaited(bad, daemon, before, &expect, what);
    for vif in watched {
        let wanted: Vec<(&str, f64)> = moves
            .iter()
            .filter(|(v, _, _)| v == vif)
            .map(|(_, key, by)| (*key, *by))
            .collect();
        let got = changes(before, &after, vif);
        bad.check(got == expected(&wanted), || {
            format!(
                "{what}: the counters of {vif} must change by exactly {wanted:?}, they changed by {got:?}"
            )
        });
    }
    after
}

/// Captures on `eth0` of every namespace in `namespaces` while `act` runs, and
/// [`ARRIVAL`] longer; returns what `act` returned and the frames of each namespace.
pub fn captured<T>(namespaces: &[&str], act: impl FnOnce() -> T) -> (T, Vec<Vec<Vec<u8>>>) {
    let caps: Vec<Capture> = namespaces
        .iter()
        .map(|ns| Capture::start(ns, "eth0").unwrap_or_else(|e| panic!("capture: {e:#}")))
        .collect();
    let result = act();
    std::thread::sleep(ARRIVAL);
    let frames = caps
        .into_iter()
        .map(|c| c.stop().unwrap_or_else(|e| panic!("capture: {e:#}")))
        .collect();
    (result, frames)
}

/// An IPv4 or IPv6 UDP frame from `from` to (`to_mac`, `to_ip`), destination port
/// `dport`, carrying `marker` (to find it among captured frames).
pub fn udp_frame(from: &Vm, to_mac: &str, to_ip: IpAddr, dport: u16, marker: &str) -> Vec<u8> {
    let src = if to_ip.is_ipv4() {
        from.v4()
    } else {
        from.v6()
    };
    frame::ip_frame(
        parse_mac(&from.mac).expect("MAC"),
        parse_mac(to_mac).expect("MAC"),
        src,
        to_ip,
        udp(40000, dport),
        marker.as_bytes(),
    )
}

/// How many of `frames` carry `marker` anywhere in their bytes.
pub fn carrying(frames: &[Vec<u8>], marker: &str) -> usize {
    let m = marker.as_bytes();
    frames
        .iter()
        .filter(|f| f.windows(m.len()).any(|w| w == m))
        .count()
}

/// Every counter of `device` (passes and drops by reason, both directions), non-zero
/// only: for "exactly this changed, nothing else" checks.
pub fn counters(m: &Scrape, device: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in &m.samples {
        if s.labels.get("device").map(String::as_str) != Some(device) {
            continue;
        }
        let dir = s.labels.get("direction").cloned().unwrap_or_default();
        let key = match s.name.as_str() {
            PASS_PACKETS => format!("{dir} pass"),
            DROP_PACKETS => format!(
                "{dir} {}",
                s.labels.get("reason").cloned().unwrap_or_default()
            ),
            _ => continue,
        };
        if s.value != 0.0 {
            *out.entry(key).or_insert(0.0) += s.value;
        }
    }
    out
}

/// What changed in `device`'s counters between two scrapes (non-zero changes only), as
/// `"<direction> pass"` / `"<direction> <reason>"` → change.
pub fn changes(before: &Scrape, after: &Scrape, device: &str) -> BTreeMap<String, f64> {
    let (b, a) = (counters(before, device), counters(after, device));
    let mut out = BTreeMap::new();
    for k in b.keys().chain(a.keys()) {
        let d = a.get(k).copied().unwrap_or(0.0) - b.get(k).copied().unwrap_or(0.0);
        if d != 0.0 {
            out.insert(k.clone(), d);
        }
    }
    out
}

/// `[("egress pass", 1.0), ...]` as a map, for comparing with [`changes`].
pub fn expected(entries: &[(&str, f64)]) -> BTreeMap<String, f64> {
    entries
        .iter()
        .filter(|(_, v)| *v != 0.0)
        .map(|(k, v)| (k.to_string(), *v))
        .collect()
}

/// The series a key of [`changes`] stands for, for the polling [`isolator_tests::Expect`].
pub fn series_of(device: &str, key: &str) -> Series {
    let (dir, what) = key.split_once(' ').expect("\"<direction> <what>\"");
    let dir = match dir {
        "ingress" => Dir::Ingress,
        "egress" => Dir::Egress,
        other => panic!("direction {other}"),
    };
    if what == "pass" {
        Series::pass(device, dir)
    } else {
        let code = isolator_common::verdict::DROP_REASONS
            .iter()
            .find(|(_, name, _)| *name == what)
            .unwrap_or_else(|| panic!("no drop reason {what}"))
            .0;
        Series::drop(device, dir, code)
    }
}

/// Polls `scrape` until the counters of every device in `devices` stay unchanged for
/// `quiet` (a VM's kernel sends some frames of its own choosing after its interface came
/// up); gives up after 10 s and returns the last scrape either way.
pub fn settle(devices: &[&str], quiet: Duration, mut scrape: impl FnMut() -> Scrape) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = scrape();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = scrape();
        let moved = devices
            .iter()
            .any(|d| counters(&now, d) != counters(&last, d));
        if moved {
            since = Instant::now();
        } else if since.elapsed() >= quiet || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}
