//! What the kernel cannot record is said, not lost (invariant I5): with a counter map too
//! small for every (vif, direction, verdict) of a policy, frames beyond it are still judged
//! as before, counted by direction and verdict (`UNCOUNTED`), the fault is counted
//! (`KERNEL_FAULTS`) and an aya-log record reaches the daemon's log. Needs root.

use std::io::Write;
use std::sync::{Arc, Mutex};

use isolator::dataplane::{Dataplane, Sizes};
use isolator_common::{fault, verdict};
use isolator_tests::frame::{SYN, tcp};

use crate::fixture::{Lab, XDP_DROP, XDP_PASS, in_private_netns, ip};

const POLICY: &str = r#"
version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["d-aw*"]
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

#[test]
fn a_full_counter_map_counts_by_verdict_and_says_so() {
    in_private_netns(|| {
        let sizes = Sizes {
            counters: 2,
            ..Sizes::default()
        };
        let dp = Dataplane::load_sized(&sizes).expect("loading the programs");
        let mut lab = Lab::loaded(dp, POLICY, &["d-aw1", "d-aw2", "d-gw"], |_| {});
        let mut logger = lab
            .dp
            .take_kernel_logger()
            .expect("the kernel's log records");
        let (aw1, aw2) = (lab.ifindex("d-aw1"), lab.ifindex("d-aw2"));
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
        let counted: Vec<u32> = lab
            .dp
            .counters()
            .unwrap()
            .iter()
            .map(|(k, _)| k.ifindex)
            .collect();
        assert_eq!(
            counted,
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
