//! Invariant I6 during the swap, not only before and after it: one thread runs a frame
//! through the loaded ingress program (BPF_PROG_TEST_RUN on the live maps) as fast as it
//! can while another swaps between two policies that judge the frame differently, about
//! a thousand times, with a plan the kernel refuses (a map full) among them. Every run
//! must be judged by one policy or the other, never `no_policy` or anything else, and
//! after every apply, refused ones included, the active generation holds exactly the
//! policy in force and the other one exactly the previous policy (or nothing).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use isolator::compile::Plan;
use isolator::dataplane::Sizes;
use isolator::policy;
use isolator_common::{direction, programs, verdict};
use isolator_tests::frame::echo_request;
use isolator_tests::rawbpf::test_run_xdp;

use crate::fixture::{Lab, XDP_DROP, XDP_PASS, in_private_netns, ip};

/// Policy A: acme/web and acme/db apart.
const A: &str = r#"
version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["d-aw*"]
        prefixes: ["10.1.1.0/24"]
      - name: db
        interfaces: ["d-ad"]
        prefixes: ["10.1.2.0/24"]
  - name: globex
    segments:
      - name: web
        interfaces: ["d-gw"]
        prefixes: ["10.2.1.0/24"]
"#;

/// Policy B: db's prefix belongs to web, so web may reach it.
fn policy_b() -> String {
    A.replace(
        "prefixes: [\"10.1.1.0/24\"]",
        "prefixes: [\"10.1.1.0/24\", \"10.1.2.0/24\"]",
    )
    .replace("prefixes: [\"10.1.2.0/24\"]", "prefixes: [\"10.1.3.0/24\"]")
}

const LINKS: &[&str] = &["d-aw1", "d-ad", "d-gw"];
const SWAPS: usize = 1000;
/// Every this many swaps, a plan the kernel refuses is tried first.
const REFUSED_EVERY: usize = 50;

#[test]
fn every_frame_is_judged_by_one_policy_or_the_other_while_swaps_run() {
    in_private_netns(|| {
        let mut lab = Lab::new(A, LINKS);
        let plan = |text: &str| {
            let policy = policy::parse(text, "test.yaml").expect("valid policy");
            Plan::new(&policy, &lab.links).expect("plan")
        };
        let (plan_a, plan_b) = (plan(A), plan(&policy_b()));
        // More IPv4 prefixes than the kernel's table holds for both generations: the
        // kernel refuses the write part way, and the apply must leave no trace.
        let mut refused = plan_b.clone();
        refused
            .v4
            .extend((0..=Sizes::default().addresses_v4).map(|i| {
                let address = std::net::Ipv4Addr::from(0x6440_0000 + i);
                (ipnet::Ipv4Net::new(address, 32).unwrap(), 0)
            }));
        let vif = lab.ifindex("d-aw1");
        let frame = ip("10.1.1.2", "10.1.2.3", echo_request(1));
        let program = lab
            .dp
            .program_fd(programs::XDP_INGRESS)
            .expect("the ingress program's fd");
        let counted = |lab: &Lab| -> BTreeMap<u8, u64> {
            let mut by_verdict = BTreeMap::new();
            for (key, counter) in lab.dp.counters().expect("counters") {
                if key.ifindex == vif && key.direction == direction::INGRESS {
                    *by_verdict.entry(key.verdict).or_default() += counter.packets;
                }
            }
            by_verdict
        };
        let before = counted(&lab);

        let stop = Arc::new(AtomicBool::new(false));
        let hammer = {
            let stop = stop.clone();
            // A thread spawned here shares this thread's (private) network namespace.
            std::thread::spawn(move || {
                let mut actions: BTreeMap<u32, u64> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let action = test_run_xdp(std::os::fd::AsFd::as_fd(&program), vif, &frame)
                        .expect("a test run");
                    *actions.entry(action).or_default() += 1;
                }
                actions
            })
        };

        let mut refusals = 0;
        // The policy the other generation holds: the lab's own at first (A).
        let mut previous = Some(&plan_a);
        let mut current = &plan_a;
        for swap in 0..SWAPS {
            if swap % REFUSED_EVERY == REFUSED_EVERY / 2 {
                let active = lab.dp.active_generation();
                assert!(
                    lab.dp.apply(&refused).is_err(),
                    "a plan beyond the kernel's tables must be refused"
                );
                refusals += 1;
                assert_eq!(lab.dp.active_generation(), active);
                // Refused before anything was written, or removed again after the
                // kernel refused part way.
                let other = lab.differences(active ^ 1, previous);
                if !other.is_empty() {
                    previous = None;
                }
                settled(
                    &lab,
                    current,
                    previous,
                    &format!("the refused apply before swap {swap}"),
                );
            }
            let next = if swap % 2 == 0 { &plan_b } else { &plan_a };
            lab.dp.apply(next).expect("applying");
            previous = Some(current);
            current = next;
            // Reading both generations takes a while: every tenth swap, and the first.
            if swap % 10 == 0 {
                settled(&lab, current, previous, &format!("swap {swap}"));
            }
        }
        stop.store(true, Ordering::Relaxed);
        let actions = hammer.join().expect("the hammer thread");

        let after = counted(&lab);
        let delta: BTreeMap<u8, u64> = after
            .iter()
            .map(|(v, n)| (*v, n - before.get(v).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let runs: u64 = actions.values().sum();
        println!(
            "{SWAPS} swaps and {refusals} refused applies under {runs} test runs: actions \
             {actions:?}, counted by verdict {delta:?}"
        );
        let names: Vec<String> = delta
            .iter()
            .map(|(v, n)| format!("{}: {n}", verdict::name(*v).unwrap_or("pass")))
            .collect();
        assert!(
            delta
                .keys()
                .all(|v| *v == verdict::PASS || *v == verdict::CROSS_SEGMENT),
            "every run is judged by policy A (cross_segment) or B (pass); counted: {names:?}"
        );
        assert_eq!(
            delta.values().sum::<u64>(),
            runs,
            "every run is counted once; counted: {names:?}"
        );
        assert_eq!(
            delta.get(&verdict::PASS).copied().unwrap_or(0),
            actions.get(&XDP_PASS).copied().unwrap_or(0),
            "the passes counted are the runs that passed"
        );
        assert_eq!(
            delta.get(&verdict::CROSS_SEGMENT).copied().unwrap_or(0),
            actions.get(&XDP_DROP).copied().unwrap_or(0),
            "the drops counted are the runs that dropped"
        );
        assert!(
            delta.len() == 2,
            "the runs saw both policies (else the hammer proved nothing): {names:?}"
        );
        assert!(
            runs > SWAPS as u64,
            "{runs} runs for {SWAPS} swaps: too few"
        );
    });
}

/// The active generation holds `current` exactly, and the other one `previous` (`None`:
/// nothing).
fn settled(lab: &Lab, current: &Plan, previous: Option<&Plan>, after: &str) {
    let active = lab.dp.active_generation();
    assert_eq!(
        lab.differences(active, Some(current)),
        Vec::<String>::new(),
        "after {after}, the active generation ({active}) differs from the policy in force"
    );
    assert_eq!(
        lab.differences(active ^ 1, previous),
        Vec::<String>::new(),
        "after {after}, the other generation differs from the previous policy"
    );
}

/// A guard returns once the new links' state tables are in their outer maps, not after
/// the grace periods their insertion waits for: of every kind, for a burst of links
/// guarded together, and for links whose tables the spare batch was still inserting
/// (ifindexes made ready before the links came). Each insertion here waits 300 ms before
/// it begins, and its thread 4 s after it (a long grace period): a guard that returned
/// before the tables were in place, or watched the wrong maps, fails here, and so does
/// one that waited for the grace period.
#[test]
fn guarded_links_have_every_state_table_in_place_when_the_guard_returns() {
    in_private_netns(|| {
        let mut lab = Lab::new(A, LINKS);
        let policy = policy::parse(A, "test.yaml").expect("valid policy");
        let grace = std::time::Duration::from_secs(4);
        lab.dp
            .delay_table_insertions(std::time::Duration::from_millis(300), grace);
        let began = std::time::Instant::now();
        let highest = lab.links.iter().map(|l| l.ifindex).max().unwrap_or(0);
        // Spares for the ifindexes the next links get (the namespace gives them in
        // order; a peer takes one too, so more than the links).
        let started = lab
            .dp
            .prepare_spares(highest + 1..highest + 9)
            .expect("preparing spares");
        assert!(started > 0, "the spare batch started");
        let burst: Vec<_> = crate::fixture::veths(&["d-aw5", "d-aw6", "d-aw7", "d-aw8"]);
        let spared: Vec<u32> = burst
            .iter()
            .map(|l| l.ifindex)
            .filter(|i| *i <= highest + 8)
            .collect();
        assert!(!spared.is_empty(), "some new links took spare ifindexes");
        let guarded = lab.dp.guard_all(
            &burst
                .iter()
                .map(|l| (l.name.clone(), l.ifindex))
                .collect::<Vec<_>>(),
        );
        for (ifindex, outcome) in guarded {
            outcome.unwrap_or_else(|e| panic!("guarding ifindex {ifindex}: {e}"));
        }
        let took = began.elapsed();
        let in_place = lab.dp.vifs_with_every_table().expect("listing tables");
        assert!(
            took < grace,
            "the guard returned in {took:?}, before the insertions' grace periods ({grace:?})"
        );
        for link in &burst {
            assert!(
                in_place.contains(&link.ifindex),
                "{} (ifindex {}, spare: {}) has every state table when its guard returns",
                link.name,
                link.ifindex,
                spared.contains(&link.ifindex)
            );
        }
        // Classified, a new link passes within its segment.
        let mut links = lab.links.clone();
        links.extend(burst.iter().cloned());
        let classified = Plan::new(&policy, &links).expect("plan");
        lab.dp.apply(&classified).expect("applying");
        let program = lab
            .dp
            .program_fd(programs::XDP_INGRESS)
            .expect("the program");
        let frame = ip("10.1.1.9", "10.1.1.3", echo_request(1));
        assert_eq!(
            test_run_xdp(std::os::fd::AsFd::as_fd(&program), burst[3].ifindex, &frame)
                .expect("test run"),
            XDP_PASS
        );
    });
}

/// The swap in two halves, as the daemon runs it ([`Dataplane::swap`], then
/// [`Dataplane::retire`] once a wait begun after it is over, the dataplane free for other
/// work in between): a link guarded in between ([`Dataplane::guard`]: attached, with no
/// entry, given its state tables while its programs attach) keeps its tables when the
/// swap is retired; a retirement that names a swap retired already (by the next swap,
/// which retires the pending one first) does nothing; and a retired swap's old generation
/// stays whole for the next swap to change. A guard without the tables, or a retirement
/// that pruned the guarded link's tables or retired another swap, fails here.
#[test]
fn a_link_guarded_between_a_swap_and_its_retirement_keeps_its_tables() {
    use isolator::dataplane::wait_for_readers;
    in_private_netns(|| {
        let mut lab = Lab::new(A, LINKS);
        let policy = policy::parse(A, "test.yaml").expect("valid policy");
        let plan = Plan::new(&policy, &lab.links).expect("plan");
        let generations = |lab: &Lab| {
            lab.dp
                .generations()
                .expect("reading the generations")
                .into_iter()
                .flat_map(|(_, generations)| generations)
                .collect::<std::collections::BTreeSet<u32>>()
        };
        let both = std::collections::BTreeSet::from([0, 1]);

        let new = crate::fixture::veths(&["d-aw9"]).remove(0);
        let old = lab.dp.active_generation();
        let swap = lab.dp.swap(&plan).expect("swapping");
        assert_eq!(
            lab.dp.active_generation(),
            old ^ 1,
            "the swap flips at once"
        );
        assert_eq!(
            generations(&lab),
            both,
            "the old generation stays until the swap is retired"
        );
        lab.dp
            .guard(&new.name, new.ifindex)
            .expect("guarding the new link");
        assert!(
            lab.dp
                .attachments()
                .any(|(ifindex, _, _)| ifindex == new.ifindex),
            "the guarded link is attached"
        );
        assert!(
            lab.dp.vifs_with_state().unwrap().contains(&new.ifindex),
            "the guard gave the new link its state tables"
        );
        lab.dp.retire(swap, wait_for_readers()).expect("retiring");
        assert_eq!(lab.dp.retiring(), None, "retired");
        assert_eq!(
            lab.differences(old, Some(&plan)),
            Vec::<String>::new(),
            "retired, the old generation stays whole for the next swap to change"
        );
        assert!(
            lab.dp.vifs_with_state().unwrap().contains(&new.ifindex),
            "retiring the swap left the link guarded since with its tables"
        );

        // A swap still pending when the next begins is retired by it; its own retirement
        // then does nothing (the next swap stays to be retired).
        let first = lab.dp.swap(&plan).expect("swapping");
        let second = lab.dp.swap(&plan).expect("swapping again");
        assert_eq!(lab.dp.retiring(), Some(second));
        lab.dp
            .retire(first, wait_for_readers())
            .expect("retiring the first");
        assert_eq!(
            lab.dp.retiring(),
            Some(second),
            "the first swap's retirement left the second pending"
        );
        lab.dp
            .retire(second, wait_for_readers())
            .expect("retiring the second");
        assert_eq!(lab.dp.retiring(), None);
        assert_eq!(generations(&lab), both, "both generations hold the policy");

        // Classified at last, the guarded link passes within its segment.
        let mut links = lab.links.clone();
        links.push(new.clone());
        let classified = Plan::new(&policy, &links).expect("plan");
        lab.dp.apply(&classified).expect("applying");
        let frame = ip("10.1.1.9", "10.1.1.3", echo_request(1));
        let program = lab
            .dp
            .program_fd(programs::XDP_INGRESS)
            .expect("the program");
        assert_eq!(
            test_run_xdp(std::os::fd::AsFd::as_fd(&program), new.ifindex, &frame)
                .expect("test run"),
            XDP_PASS,
            "the classified link passes a frame within its segment"
        );
        assert!(lab.dp.vifs_with_state().unwrap().contains(&new.ifindex));
    });
}

/// A plan that differs from the one in force only by a new vif's own entries goes in
/// without a swap (`Dataplane::add_in_place`): the generation in force gets them, so the
/// vif is judged by its segment's policy at once, with no wait for the last swap's grace
/// period; before, everything it sends drops (`no_policy`). The maps then hold exactly
/// the new plan's whole encoding (the epoch aside). A plan that changes anything else (a
/// vif gone, a prefix more) is refused and writes nothing; the next swap gives the other
/// generation the new vif too.
#[test]
fn a_new_vif_is_added_in_place_and_nothing_else_is() {
    in_private_netns(|| {
        let mut names = vec!["d-aw1", "d-aw2", "d-ad", "d-gw", "d-aw9"];
        names.push(crate::fixture::UPLINK);
        let links = crate::fixture::veths(&names);
        let without: Vec<_> = links
            .iter()
            .filter(|l| l.name != "d-aw9")
            .cloned()
            .collect();
        let policy_a = policy::parse(A, "a.yaml").expect("valid policy");
        let before = Arc::new(Plan::new(&policy_a, &without).expect("plan"));
        let after = Arc::new(Plan::new(&policy_a, &links).expect("plan"));
        let mut lab = Lab {
            dp: isolator::dataplane::Dataplane::load().expect("loading the programs"),
            links,
            ingress_via_tc: false,
        };
        let swap = lab.dp.swap_shared(&before).expect("swap");
        lab.dp
            .retire(swap, isolator::dataplane::wait_for_readers())
            .expect("retire");
        let generation = lab.dp.active_generation();
        let new = lab.ifindex("d-aw9");
        let same_segment = ip("10.1.1.9", "10.1.1.2", echo_request(1));
        let cross_tenant = ip("10.1.1.9", "10.2.1.5", echo_request(1));
        assert_eq!(
            lab.dp.test_run_ingress(new, &same_segment).unwrap(),
            XDP_DROP,
            "before: the new vif has no entry"
        );

        // Anything but new links' entries: refused, nothing written.
        let policy_b = policy::parse(&policy_b(), "b.yaml").expect("valid policy");
        let other = Arc::new(Plan::new(&policy_b, &lab.links).expect("plan"));
        assert!(
            lab.dp.add_in_place(&other).expect("no error").is_none(),
            "a prefix moved between segments is no mere addition"
        );
        assert_eq!(
            lab.differences(generation, Some(&before)),
            Vec::<String>::new(),
            "a refused addition writes nothing"
        );

        let written = lab
            .dp
            .add_in_place(&after)
            .expect("no error")
            .expect("a new vif is added in place");
        assert!(written.put > 0 && written.removed == 0, "{written:?}");
        assert_eq!(lab.dp.active_generation(), generation, "no swap");
        assert_eq!(
            lab.differences(generation, Some(&after)),
            Vec::<String>::new(),
            "the generation in force holds the new plan"
        );
        assert_eq!(
            lab.dp.test_run_ingress(new, &same_segment).unwrap(),
            XDP_PASS,
            "after: its segment's policy"
        );
        assert_eq!(
            lab.dp.test_run_ingress(new, &cross_tenant).unwrap(),
            XDP_DROP,
            "after: another tenant"
        );
        assert!(
            lab.dp.add_in_place(&before).expect("no error").is_none(),
            "a vif gone is no addition"
        );

        // The next swap writes the other generation from what it held: the new vif too.
        let swap = lab.dp.swap_shared(&after).expect("swap");
        lab.dp
            .retire(swap, isolator::dataplane::wait_for_readers())
            .expect("retire");
        let active = lab.dp.active_generation();
        assert_ne!(active, generation);
        assert_eq!(lab.differences(active, Some(&after)), Vec::<String>::new());
        assert_eq!(
            lab.dp.test_run_ingress(new, &same_segment).unwrap(),
            XDP_PASS
        );
    });
}

/// A batch of new vifs attached the quick way, as the daemon does once it runs
/// ([`Dataplane::attach_batch`]: worker threads make the `cls_bpf` filters while the
/// dataplane thread attaches XDP): each vif gets isolator's XDP program, its egress program on the egress hook
/// and the tags program on the ingress hook, and the daemon finds those filters again by
/// their program's name, as it does aya's own: handed over to TCX, or detached, a vif
/// keeps no filter (and, detached, no XDP program). A filter written under another name,
/// priority or handle would stay behind here (judging on with the daemon gone, and twice
/// after the handover).
#[test]
fn a_batch_of_quick_attachments_is_found_again_and_removed() {
    in_private_netns(|| {
        let mut lab = Lab::new(A, LINKS);
        lab.dp.attach_quickly(true);
        let burst = crate::fixture::veths(&["d-qb1", "d-qb2", "d-qb3"]);
        let links: Vec<(String, u32)> = burst.iter().map(|l| (l.name.clone(), l.ifindex)).collect();
        for (ifindex, outcome) in lab.dp.attach_batch(&links) {
            assert_eq!(
                outcome.unwrap_or_else(|e| panic!("attaching ifindex {ifindex}: {e}")),
                isolator::dataplane::AttachMode::Native
            );
        }
        let unsettled: std::collections::BTreeSet<u32> = lab.dp.unsettled().collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (connection, handle, _) = {
            let _entered = rt.enter();
            rtnetlink::new_connection().expect("netlink")
        };
        let task = rt.spawn(connection);
        let name_of = |id: u32| {
            aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .find(|p| p.id() == id)
                .and_then(|p| p.name_as_str().map(str::to_string))
                .unwrap_or_else(|| format!("program {id}"))
        };
        let names = |ifindex: u32, ingress: bool| -> Vec<String> {
            let ids = rt
                .block_on(isolator::netlink::bpf_filters(&handle, ifindex, ingress))
                .expect("listing filters");
            ids.into_iter().map(name_of).collect()
        };
        // The XDP program's name (the kernel keeps 15 bytes of it), if one is attached.
        let xdp = |ifindex: u32| -> Option<String> {
            use futures::TryStreamExt as _;
            use rtnetlink::packet_route::link::{LinkAttribute, LinkXdp};
            let message = rt
                .block_on(
                    handle
                        .link()
                        .get()
                        .match_index(ifindex)
                        .execute()
                        .try_next(),
                )
                .expect("reading the link")
                .expect("the link");
            message.attributes.iter().find_map(|a| match a {
                LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
                    LinkXdp::ProgId(id) if *id != 0 => Some(name_of(*id)),
                    _ => None,
                }),
                _ => None,
            })
        };
        let ingress = &programs::XDP_INGRESS[..15];
        for link in &burst {
            assert!(
                unsettled.contains(&link.ifindex),
                "{} attached quickly",
                link.name
            );
            assert_eq!(
                xdp(link.ifindex).as_deref(),
                Some(ingress),
                "{} XDP",
                link.name
            );
            assert_eq!(
                names(link.ifindex, false),
                [programs::TC_EGRESS],
                "{} egress",
                link.name
            );
            assert_eq!(
                names(link.ifindex, true),
                [programs::TC_INGRESS_TAGS],
                "{} ingress",
                link.name
            );
        }
        // Handed over to TCX: the filters are gone.
        while lab.dp.settle(burst[0].ifindex).expect("handing over") {}
        // Detached: the filters are gone.
        lab.dp.detach(burst[1].ifindex).expect("detaching");
        assert_eq!(xdp(burst[0].ifindex).as_deref(), Some(ingress));
        assert_eq!(xdp(burst[1].ifindex), None, "XDP left on a detached vif");
        for link in &burst[..2] {
            assert!(
                names(link.ifindex, false).is_empty(),
                "{} egress filter left",
                link.name
            );
            assert!(
                names(link.ifindex, true).is_empty(),
                "{} ingress filter left",
                link.name
            );
        }
        assert_eq!(names(burst[2].ifindex, false), [programs::TC_EGRESS]);
        task.abort();
    });
}
