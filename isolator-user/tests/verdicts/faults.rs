//! What the kernel cannot record is said, not lost (invariant I5): with a counter map too
//! small for every (vif, direction, verdict) of a policy, frames beyond it are still judged
//! as before, counted by direction and verdict (`UNCOUNTED`), the fault is counted
//! (`KERNEL_FAULTS`) and an aya-log record reaches the daemon's log. Needs root.

use std::io::Write;
use std::sync::{Arc, Mutex};

use isolator::dataplane::{Dataplane, Sizes};
use isolator_common::{CounterKey, direction, fault, limits, verdict};
use isolator_tests::frame::{SYN, tcp};

use crate::fixture::{Lab, XDP_DROP, XDP_PASS, in_private_netns, ip};

const POLICY: &str = r#"
version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["d-aw*", "d-hi*"]
        prefixes: ["10.1.1.0/24"]
  - name: globex
    segments:
      - name: web
        interfaces: ["d-gw"]
        prefixes: ["10.2.1.0/24"]
"#;

/// A writer for the log subscriber that keeps what it gets.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A lab whose counter hash (`COUNTERS`) holds `keys` keys.
fn with_counter_keys(keys: u32, names: &[&str]) -> Lab {
    let sizes = Sizes {
        counters: keys,
        ..Sizes::default()
    };
    let dp = Dataplane::load_sized(&sizes).expect("loading the programs");
    Lab::loaded(dp, POLICY, names, |_| {})
}

/// The interface of each counter that counted something, in the counters' order.
fn counted_ifindexes(lab: &Lab) -> Vec<u32> {
    let counters = lab.dp.counters().expect("counters");
    counters.iter().map(|(k, _)| k.ifindex).collect()
}

/// Interfaces with an ifindex beyond `limits::COUNTER_BLOCKS` are counted in the hash
/// (`COUNTERS`), whose capacity this test exhausts.
#[test]
fn a_full_counter_map_counts_by_verdict_and_says_so() {
    in_private_netns(|| {
        let mut lab = with_counter_keys(2, &["d-hi1", "d-hi2", "d-gw"]);
        let mut logger = lab
            .dp
            .take_kernel_logger()
            .expect("the kernel's log records");
        let (aw1, aw2) = (lab.ifindex("d-hi1"), lab.ifindex("d-hi2"));
        assert!(aw1 >= limits::COUNTER_BLOCKS && aw2 >= limits::COUNTER_BLOCKS);
        let pass = ip("10.1.1.2", "10.1.1.3", tcp(40000, 22, SYN));
        let cross = ip("10.1.1.2", "10.2.1.5", tcp(40000, 22, SYN));
        // Two keys fill the map: d-aw1 pass, d-aw1 cross_tenant.
        assert_eq!(lab.dp.test_run_ingress(aw1, &pass).unwrap(), XDP_PASS);
        assert_eq!(lab.dp.test_run_ingress(aw1, &cross).unwrap(), XDP_DROP);
        assert_eq!(
            lab.dp.faults().unwrap()[fault::COUNTER_MAP_FULL as usize],
            0
        );
        assert!(lab.dp.uncounted().unwrap().is_empty());
        // A third key does not fit: the frames are still judged as before.
        assert_eq!(
            lab.dp.test_run_ingress(aw2, &cross).unwrap(),
            XDP_DROP,
            "a cross-tenant frame is dropped whether or not it can be counted by vif"
        );
        assert_eq!(lab.dp.test_run_ingress(aw2, &pass).unwrap(), XDP_PASS);
        assert_eq!(lab.dp.test_run_ingress(aw2, &cross).unwrap(), XDP_DROP);
        assert_eq!(
            counted_ifindexes(&lab),
            vec![aw1, aw1],
            "the map holds its two keys, no more"
        );
        let mut uncounted: Vec<(u8, u8, u64, u64)> = lab
            .dp
            .uncounted()
            .unwrap()
            .iter()
            .map(|u| (u.direction, u.verdict, u.frames.packets, u.frames.bytes))
            .collect();
        uncounted.sort();
        let len = pass.len() as u64;
        assert_eq!(
            uncounted,
            vec![
                (0, verdict::PASS, 1, len),
                (0, verdict::CROSS_TENANT, 2, 2 * len),
            ],
            "the frames that did not fit, by direction and verdict"
        );
        assert_eq!(
            lab.dp.faults().unwrap()[fault::COUNTER_MAP_FULL as usize],
            3,
            "each frame that did not fit is a fault"
        );
        // The log record (rate-limited: one per CPU and 10 s) reaches the daemon's log.
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || logger.flush());
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(
            log.contains("isolator::kernel")
                && log.contains(
                    "the counter map is full: frames are counted by direction and reason only"
                ),
            "the kernel's record in the daemon's log: {log:?}"
        );
    });
}

/// Interfaces with a small ifindex are counted in their block of `COUNTER_BLOCKS` (an
/// array slot, no hash lookup): however small the hash, every (direction, verdict) of
/// theirs is counted by vif, and none is a fault.
#[test]
fn small_ifindexes_are_counted_in_their_block_whatever_the_hash_holds() {
    in_private_netns(|| {
        let mut lab = with_counter_keys(1, &["d-aw1", "d-aw2", "d-gw"]);
        let (aw1, aw2) = (lab.ifindex("d-aw1"), lab.ifindex("d-aw2"));
        assert!(aw1 < limits::COUNTER_BLOCKS && aw2 < limits::COUNTER_BLOCKS);
        let pass = ip("10.1.1.2", "10.1.1.3", tcp(40000, 22, SYN));
        let cross = ip("10.1.1.2", "10.2.1.5", tcp(40000, 22, SYN));
        let len = pass.len() as u64;
        for (vif, frame, times) in [(aw1, &pass, 2), (aw1, &cross, 3), (aw2, &cross, 1)] {
            for _ in 0..times {
                lab.dp.test_run_ingress(vif, frame).unwrap();
            }
        }
        let key = |ifindex, verdict| CounterKey {
            ifindex,
            direction: direction::INGRESS,
            verdict,
            flags: 0,
            _pad: 0,
        };
        let counted: Vec<(CounterKey, u64, u64)> = lab
            .dp
            .counters()
            .unwrap()
            .into_iter()
            .map(|(k, c)| (k, c.packets, c.bytes))
            .collect();
        let mut expected = vec![
            (key(aw1, verdict::PASS), 2, 2 * len),
            (key(aw1, verdict::CROSS_TENANT), 3, 3 * len),
            (key(aw2, verdict::CROSS_TENANT), 1, len),
        ];
        expected.sort();
        assert_eq!(counted, expected, "each (vif, direction, verdict) counted");
        assert_eq!(
            lab.dp
                .counter(&key(aw1, verdict::CROSS_TENANT))
                .unwrap()
                .packets,
            3
        );
        assert!(lab.dp.uncounted().unwrap().is_empty());
        assert_eq!(
            lab.dp.faults().unwrap()[fault::COUNTER_MAP_FULL as usize],
            0,
            "no frame of a small ifindex needs the hash"
        );
        // The block of an interface no longer attached to is cleared: a new interface
        // with its ifindex starts from nothing.
        let keep = std::collections::BTreeSet::from([aw1]);
        assert_eq!(
            lab.dp.prune_counters(&keep).unwrap(),
            1,
            "aw2's one counter"
        );
        assert_eq!(
            counted_ifindexes(&lab),
            vec![aw1, aw1],
            "aw2's block was cleared"
        );
        lab.dp.test_run_ingress(aw2, &cross).unwrap();
        assert_eq!(
            lab.dp
                .counter(&key(aw2, verdict::CROSS_TENANT))
                .unwrap()
                .packets,
            1,
            "counted from zero again"
        );
    });
}
