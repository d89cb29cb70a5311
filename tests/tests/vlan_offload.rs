//! The VLAN guard against tags carried in offload metadata. A VM whose kernel tags its
//! frames as a VLAN device does hands them to its veth untagged, with the tag in
//! `skb->vlan_tci` ([`isolator_tests::vlan_push`] does exactly that): the XDP program,
//! which reads the frame bytes, never sees such a tag. The TC program on the vif's
//! ingress judges it by the same rule as a tag in the bytes (one tag, with an id the
//! interface lists; never two) and moves the frame's count from what XDP counted it as
//! to `vlan`. Needs root and the daemon binary.
//!
//! VMs: a (lists no VLAN), b (lists VLAN 100), c (the target) in segment t/s; d (lists
//! no VLAN) in segment t/aud, in audit mode.

use std::net::{SocketAddr, UdpSocket};

use isolator_common::verdict;
use isolator_tests::frame::{ip_frame, parse_mac, tagged, udp};
use isolator_tests::metrics::{DEADLINE, SETTLE, poll};
use isolator_tests::net::{Capture, send_frame};
use isolator_tests::netns::{in_netns, sysctl};
use isolator_tests::vlan_push::VlanPusher;
use isolator_tests::{Dir, Env, Lab, Scrape, Series, Vm};

/// Datagrams per case.
const N: usize = 5;

/// What one case observed: copies that reached the target, the changes of the sender's
/// ingress counters, and the drops at the target's egress (`cross_segment`: the only
/// reason a frame that passed the sender can meet there).
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    arrived: usize,
    vlan_drops: f64,
    passes: f64,
    audits: f64,
    target_drops: f64,
}

const POLICY: &str = r#"version: 1
tenants:
  - name: t
    segments:
      - name: s
        prefixes: ["10.7.0.0/24"]
        interfaces:
          - vvl-a
          - name: vvl-b
            vlans: [100]
          - vvl-c
      - name: aud
        mode: audit
        prefixes: ["10.7.1.0/24"]
        interfaces: [vvl-d]
"#;

fn start(hint: &str) -> Env<Lab> {
    let mut lab = Lab::new(hint).expect("lab");
    for (name, addr) in [
        ("a", "10.7.0.2/24"),
        ("b", "10.7.0.3/24"),
        ("c", "10.7.0.4/24"),
        ("d", "10.7.1.2/24"),
    ] {
        lab.add_vm(name, &format!("vvl-{name}"), &[addr])
            .unwrap_or_else(|e| panic!("add VM {name}: {e:#}"));
    }
    // IPv4 only: no IPv6 multicast listener reports, sent at times of the kernel's
    // choosing, among the counted frames.
    for vm in lab.vms() {
        for key in ["all", "default", "eth0"] {
            sysctl(&vm.ns, &format!("net.ipv6.conf.{key}.disable_ipv6"), "1")
                .unwrap_or_else(|e| panic!("disabling IPv6 in {}: {e:#}", vm.name));
        }
    }
    let d = lab.vm("d").ns.clone();
    lab.add_route(&d, "10.7.0.0/24 dev eth0")
        .expect("on-link route d -> s");
    Env::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The changes of `from`'s ingress counters, and of `to`'s egress drops, since `before`.
fn counted(before: &Scrape, now: &Scrape, from: &Vm, to: &Vm) -> Seen {
    let delta = |series: Series| {
        now.delta(before, &series)
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    Seen {
        arrived: 0,
        vlan_drops: delta(Series::drop(&from.vif, Dir::Ingress, verdict::VLAN)),
        passes: delta(Series::pass(&from.vif, Dir::Ingress)),
        audits: delta(Series::audits(&from.vif, Dir::Ingress)),
        target_drops: delta(Series::drop(&to.vif, Dir::Egress, verdict::CROSS_SEGMENT)),
    }
}

/// Runs `send` (which sends N frames carrying `marker` from `from` to `to`), waits until
/// `from`'s ingress counters moved as `expected` says (at most [`DEADLINE`]) and
/// [`SETTLE`] more, and returns what arrived at `to`'s eth0 and how the counters moved.
fn observe(
    env: &Env<Lab>,
    from: &Vm,
    to: &Vm,
    marker: &str,
    expected: &Seen,
    send: impl FnOnce(),
) -> Seen {
    let cap = Capture::start(&to.ns, "eth0").expect("capture");
    let before = env.scrape();
    send();
    // Not reaching them is reported by the caller, with what was seen.
    let _ = poll("the counters reach the expected values", DEADLINE, || {
        let now = counted(&before, &env.daemon().scrape()?, from, to);
        let reached = now.vlan_drops >= expected.vlan_drops
            && now.passes >= expected.passes
            && now.audits >= expected.audits
            && now.target_drops >= expected.target_drops;
        Ok(if reached {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        })
    });
    std::thread::sleep(SETTLE);
    let frames = cap.stop().expect("capture");
    Seen {
        arrived: frames
            .iter()
            .filter(|f| f.windows(marker.len()).any(|w| w == marker.as_bytes()))
            .count(),
        ..counted(&before, &env.scrape(), from, to)
    }
}

/// Permanent neighbour entries both ways: no ARP, whose timing would make `from` send
/// frames of its own (tagged too, while a pusher is on) during a later case.
fn no_arp(env: &Env<Lab>, from: &Vm, to: &Vm) {
    env.lab()
        .static_neigh(from, to, to.v4())
        .expect("static neighbour");
    env.lab()
        .static_neigh(to, from, from.v4())
        .expect("static neighbour");
}

/// N UDP datagrams from `from`'s stack to `to`.
fn datagrams(env: &Env<Lab>, from: &Vm, to: &Vm, marker: &str, expected: &Seen) -> Seen {
    let dst = to.v4();
    no_arp(env, from, to);
    let bytes = marker.as_bytes().to_vec();
    observe(env, from, to, marker, expected, || {
        in_netns(&from.ns, move || {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            for _ in 0..N {
                sock.send_to(&bytes, SocketAddr::new(dst, 9))?;
            }
            Ok(())
        })
        .expect("send");
    })
}

/// N raw frames from `from` to `to` with an 802.1Q tag `vid` in the bytes.
fn tagged_frames(
    env: &Env<Lab>,
    from: &Vm,
    to: &Vm,
    vid: u16,
    marker: &str,
    expected: &Seen,
) -> Seen {
    let frame = tagged(
        &ip_frame(
            parse_mac(&from.mac).expect("mac"),
            parse_mac(&to.mac).expect("mac"),
            from.v4(),
            to.v4(),
            udp(40000, 9),
            marker.as_bytes(),
        ),
        0x8100,
        vid,
    );
    no_arp(env, from, to);
    observe(env, from, to, marker, expected, || {
        for _ in 0..N {
            send_frame(&from.ns, "eth0", &frame).expect("send frame");
        }
    })
}

fn seen(arrived: usize, vlan_drops: usize, passes: usize, audits: usize) -> Seen {
    Seen {
        arrived,
        vlan_drops: vlan_drops as f64,
        passes: passes as f64,
        audits: audits as f64,
        target_drops: 0.0,
    }
}

#[test]
fn tags_in_offload_metadata_are_judged_like_tags_in_the_frame() {
    let env = start("vlanoff");
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|n| env.vm(n).clone());
    let mut bad = Vec::new();
    let mut check = |what: &str, expected: Seen, run: &dyn Fn(&Seen) -> Seen| {
        let got = run(&expected);
        if got != expected {
            bad.push(format!(
                "{what}:\n  got      {got:?}\n  expected {expected:?}"
            ));
        }
    };

    // The legitimate twins first: untagged, and a tag in the bytes that b may use.
    check("untagged from a", seen(N, 0, N, 0), &|e| {
        datagrams(&env, &a, &c, "untagged-a", e)
    });
    check(
        "tag 100 in the bytes from b (listed)",
        seen(N, 0, N, 0),
        &|e| tagged_frames(&env, &b, &c, 100, "bytes-100-b", e),
    );

    {
        let _push = VlanPusher::attach(&a.ns, "eth0", 0x8100, 100).expect("VLAN push on a");
        check(
            "tag 100 in metadata from a (lists no VLAN)",
            seen(0, N, 0, 0),
            &|e| datagrams(&env, &a, &c, "meta-100-a", e),
        );
    }
    {
        let _push = VlanPusher::attach(&b.ns, "eth0", 0x8100, 100).expect("VLAN push on b");
        check(
            "tag 100 in metadata from b (listed)",
            seen(N, 0, N, 0),
            &|e| datagrams(&env, &b, &c, "meta-100-b", e),
        );
        check(
            "tag 100 in metadata over tag 100 in the bytes from b (stacked)",
            seen(0, N, 0, 0),
            &|e| tagged_frames(&env, &b, &c, 100, "stacked-b", e),
        );
    }
    {
        let _push = VlanPusher::attach(&b.ns, "eth0", 0x8100, 200).expect("VLAN push on b");
        check(
            "tag 200 in metadata from b (not listed)",
            seen(0, N, 0, 0),
            &|e| datagrams(&env, &b, &c, "meta-200-b", e),
        );
    }
    {
        let _push = VlanPusher::attach(&b.ns, "eth0", 0x88a8, 100).expect("VLAN push on b");
        check(
            "802.1ad tag 100 in metadata from b (one tag, listed id)",
            seen(N, 0, N, 0),
            &|e| datagrams(&env, &b, &c, "meta-ad-100-b", e),
        );
    }
    // In audit mode the XDP program passes d's cross-segment datagrams as audited (c's
    // egress, in an enforcing segment, then drops them); a tag in metadata is refused
    // all the same (vlan is never audited) and the audited count is taken back, so the
    // frame is counted once, as a vlan drop.
    check(
        "untagged from d (audit mode, another segment)",
        Seen {
            target_drops: N as f64,
            ..seen(0, 0, 0, N)
        },
        &|e| datagrams(&env, &d, &c, "untagged-d", e),
    );
    {
        let _push = VlanPusher::attach(&d.ns, "eth0", 0x8100, 100).expect("VLAN push on d");
        check(
            "tag 100 in metadata from d (audit mode)",
            seen(0, N, 0, 0),
            &|e| datagrams(&env, &d, &c, "meta-100-d", e),
        );
    }
    assert!(
        bad.is_empty(),
        "VLAN tags in offload metadata:\n{}\ndaemon log:\n{}",
        bad.join("\n"),
        env.log_tail()
    );
}
