//! The programs' reports (`EVENTS`): every attempt to reach management, within each
//! interface's budget per second, with what was not reported counted and carried by the
//! next report; drops reported only while a monitor asks, one in N; passes never. Needs
//! root.

use isolator::events;
use isolator_common::{Event, EventSettings, event, verdict};
use isolator_tests::frame::{SYN, tcp, udp};

use crate::fixture::{Lab, in_private_netns, ip, row};

const POLICY: &str = r#"
version: 1
management:
  - prefix: 192.168.100.0/24
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["d-aw*", "d-hi*"]
        prefixes: ["10.1.1.0/24"]
      - name: db
        interfaces: ["d-ad"]
        prefixes: ["10.1.2.0/24"]
"#;

/// Every report waiting in the ring buffer.
fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(events::parse(&item).expect("a report"));
    }
    out
}

fn settings(monitor_every: u32, monitor_rate: u32) -> EventSettings {
    EventSettings {
        monitor_every,
        monitor_rate,
        management_rate: 3,
        _pad: 0,
    }
}

/// Pins the calling thread to one CPU: the budgets are per CPU.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is valid; the calls only change this thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

#[test]
fn management_attempts_are_reported_within_a_budget_and_other_drops_only_when_asked() {
    in_private_netns(|| {
        pin_to_one_cpu();
        let mut lab = Lab::new(POLICY, &["d-aw1", "d-ad"]);
        let mut ring = lab.dp.take_events().expect("the ring buffer");
        lab.dp.set_event_settings(settings(0, 0)).expect("settings");
        let web = lab.ifindex("d-aw1");
        let attempt = row(
            "web -> management ssh",
            "d-aw1",
            ip("10.1.1.2", "192.168.100.5", tcp(40000, 22, SYN)),
            verdict::MANAGEMENT,
        );
        let cross = row(
            "web -> db",
            "d-aw1",
            ip("10.1.1.2", "10.1.2.2", udp(5000, 53)),
            verdict::CROSS_SEGMENT,
        );
        let same = row(
            "web -> web",
            "d-aw1",
            ip("10.1.1.2", "10.1.1.3", udp(5000, 53)),
            verdict::PASS,
        );
        let lost_before = lab.dp.events_lost().expect("lost");

        // Ten attempts in a burst: three reported (the budget), seven counted as not.
        for _ in 0..10 {
            lab.check(&attempt);
        }
        // Other drops and passes: nothing while no monitor asks.
        for _ in 0..5 {
            lab.check(&cross);
            lab.check(&same);
        }
        let got = drain(&mut ring);
        assert_eq!(got.len(), 3, "{got:?}");
        for e in &got {
            assert_eq!(
                (e.kind, e.ifindex, e.verdict, e.protocol),
                (event::MANAGEMENT, web, verdict::MANAGEMENT, 6)
            );
            assert_eq!(e.flags, event::V4 | event::PORTS);
            assert_eq!((e.src_port, e.dst_port), (40000, 22));
            // IPv4-mapped, as userspace reads it (the short way writes the report from
            // the frame's fields, the story from the parsed packet).
            assert_eq!(e.src, isolator_common::mapped([10, 1, 1, 2]));
            assert_eq!(e.dst, isolator_common::mapped([192, 168, 100, 5]));
            assert_eq!(e.direction, isolator_common::direction::INGRESS);
            assert_eq!(e.suppressed, 0);
        }
        let lost = lab.dp.events_lost().expect("lost");
        let rate_limited = event::lost::RATE_LIMITED as usize;
        assert_eq!(lost[rate_limited] - lost_before[rate_limited], 7);

        // A new second: the next report carries the seven not made.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        lab.check(&attempt);
        let got = drain(&mut ring);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].suppressed, 7);

        // A monitor asks for one drop in two: drops are reported, passes still not, and
        // management attempts as before.
        lab.dp
            .set_event_settings(settings(2, 100))
            .expect("settings");
        for _ in 0..6 {
            lab.check(&cross);
            lab.check(&same);
        }
        let got = drain(&mut ring);
        assert_eq!(got.len(), 3, "one cross-segment drop in two: {got:?}");
        for e in &got {
            assert_eq!((e.kind, e.verdict), (event::DROP, verdict::CROSS_SEGMENT));
            assert_eq!((e.src_port, e.dst_port), (5000, 53));
            // The dropped packet's own addresses, not those of the pass judged before it
            // (the short way to a drop writes what the report reads; docs/design.md).
            assert_eq!((e.protocol, e.flags), (17, event::V4 | event::PORTS));
            assert_eq!(&e.src[12..], &[10, 1, 1, 2]);
            assert_eq!(&e.dst[12..], &[10, 1, 2, 2]);
        }
        // The monitor leaves: drops stop being reported.
        lab.dp
            .set_event_settings(settings(0, 100))
            .expect("settings");
        for _ in 0..6 {
            lab.check(&cross);
        }
        assert!(drain(&mut ring).is_empty());
    });
}

/// The budget holds for every interface, whichever map keeps its window: an array slot
/// for a small ifindex (`EVENT_WINDOW_SLOTS`), the LRU hash (`EVENT_WINDOWS`) beyond
/// `limits::COUNTER_BLOCKS`; and each interface has its own.
#[test]
fn each_interface_has_its_own_budget_in_either_map() {
    in_private_netns(|| {
        pin_to_one_cpu();
        let mut lab = Lab::new(POLICY, &["d-aw1", "d-hi1"]);
        let mut ring = lab.dp.take_events().expect("the ring buffer");
        lab.dp.set_event_settings(settings(0, 0)).expect("settings");
        let (small, high) = (lab.ifindex("d-aw1"), lab.ifindex("d-hi1"));
        assert!(small < isolator_common::limits::COUNTER_BLOCKS);
        assert!(high >= isolator_common::limits::COUNTER_BLOCKS);
        let attempt = |vif| {
            row(
                "web -> management ssh",
                vif,
                ip("10.1.1.2", "192.168.100.5", tcp(40000, 22, SYN)),
                verdict::MANAGEMENT,
            )
        };
        for _ in 0..5 {
            lab.check(&attempt("d-aw1"));
            lab.check(&attempt("d-hi1"));
        }
        let mut from: Vec<u32> = drain(&mut ring).iter().map(|e| e.ifindex).collect();
        from.sort();
        let mut expected = vec![small, small, small, high, high, high];
        expected.sort();
        assert_eq!(from, expected, "three reports of each interface, no more");
    });
}
