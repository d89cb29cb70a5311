//! Point 7: fragments. Each vif has its own table of datagrams in flight, keyed by the
//! IPv6 Fragment header's Next Header (the same in every fragment of a datagram), and a
//! later fragment may not start before the end of the transport header its first was
//! judged by.
//!
//! The lab: two tenants with two VMs each, IPv4 and IPv6, permanent neighbour entries.
//!
//! | VM   | vif          | segment    | addresses               |
//! |------|--------------|------------|-------------------------|
//! | web1 | vacme-web1   | acme/web   | 10.1.1.2, fd00:1:1::2   |
//! | web2 | vacme-web2   | acme/web   | 10.1.1.3, fd00:1:1::3   |
//! | app1 | vglobex-app1 | globex/app | 10.2.1.2, fd00:2:1::2   |
//! | app2 | vglobex-app2 | globex/app | 10.2.1.3, fd00:2:1::3   |

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use isolator_tests::failclosed_lab::{FrameSender, PinnedCpu, static_mesh, tcp_segments};
use isolator_tests::frame::{V4, describe, parse_mac, udp};
use isolator_tests::metrics::DROP_PACKETS;
use isolator_tests::netns::in_netns;
use isolator_tests::scapy::Scapy;
use isolator_tests::{Env, Lab, Scrape, Vm};

use super::{Problems, expect_exactly, settle};
use crate::common::capture;

const POLICY: &str = r#"version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24, "fd00:1:1::/64"]
  - name: globex
    segments:
      - name: app
        interfaces: ["vglobex-app*"]
        prefixes: [10.2.1.0/24, "fd00:2:1::/64"]
"#;

struct Frags {
    env: Env<Lab>,
    vms: Vec<Vm>,
}

impl Frags {
    fn start(hint: &str) -> Frags {
        let mut lab = Lab::new(hint).expect("lab");
        let mut vms = Vec::new();
        for (name, vif, v4, v6) in [
            ("web1", "vacme-web1", "10.1.1.2/24", "fd00:1:1::2/64"),
            ("web2", "vacme-web2", "10.1.1.3/24", "fd00:1:1::3/64"),
            ("app1", "vglobex-app1", "10.2.1.2/24", "fd00:2:1::2/64"),
            ("app2", "vglobex-app2", "10.2.1.3/24", "fd00:2:1::3/64"),
        ] {
            vms.push(lab.add_vm(name, vif, &[v4, v6]).expect("VM"));
        }
        let refs: Vec<&Vm> = vms.iter().collect();
        static_mesh(&lab, &refs).expect("neighbours");
        let env = Env::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"));
        Frags { env, vms }
    }

    fn vm(&self, name: &str) -> &Vm {
        self.vms.iter().find(|v| v.name == name).expect("VM")
    }

    /// Waits until no VM's counters move any more (a VM's kernel sends multicast listener
    /// reports of its own after its interface came up).
    fn quiet(&self) -> Scrape {
        let vifs: Vec<&str> = self.vms.iter().map(|v| v.vif.as_str()).collect();
        settle(&vifs, Duration::from_millis(700), || self.env.scrape())
    }

    /// Waits for `moves` (VM, "<direction> <what>", by) and checks that these are the only
    /// changes of the four VMs' counters.
    fn expect_exactly(
        &self,
        bad: &mut Problems,
        before: &Scrape,
        moves: &[(&str, &str, f64)],
        what: &str,
    ) -> Scrape {
        let moves: Vec<(&str, &str, f64)> = moves
            .iter()
            .map(|(vm, key, by)| (self.vm(vm).vif.as_str(), *key, *by))
            .collect();
        let watched: Vec<&str> = self.vms.iter().map(|v| v.vif.as_str()).collect();
        expect_exactly(bad, self.env.daemon(), &watched, before, &moves, what)
    }

    fn report(&self) -> String {
        format!(
            "policy:\n{POLICY}\ndrops now:\n{}",
            self.env.scrape().dump(DROP_PACKETS)
        )
    }
}

/// A UDP socket bound to `addr:port` in `ns`.
fn udp_listener(ns: &str, addr: IpAddr, port: u16) -> UdpSocket {
    let sa = SocketAddr::new(addr, port);
    in_netns(ns, || {
        let s = UdpSocket::bind(sa)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(s)
    })
    .unwrap_or_else(|e| panic!("UDP listener {sa} in {ns}: {e:#}"))
}

/// Every datagram the socket received (until it is quiet for its read timeout).
fn received(sock: &UdpSocket) -> Vec<Vec<u8>> {
    isolator_tests::net::drain_udp(sock)
}

/// `len` bytes of payload that say what they are.
fn payload(marker: &str, len: usize) -> String {
    let mut p = format!("{marker}-").repeat(len / (marker.len() + 1) + 1);
    p.truncate(len);
    p
}

/// The Ethernet frames of a UDP datagram `from` -> `to` (IPv6) with a Destination Options
/// header after the Fragment header, fragmented by scapy into pieces of at most 200 bytes
/// of IPv6 packet.
fn v6_with_dest_opts(
    s: &mut Scapy,
    from: &Vm,
    to: &Vm,
    id: u32,
    port: u16,
    data: &str,
) -> Vec<Vec<u8>> {
    let expr = format!(
        "[Ether(src='{}', dst='{}')/f for f in fragment6(IPv6(src='{}', dst='{}')/\
         IPv6ExtHdrFragment(id={id})/IPv6ExtHdrDestOpt()/UDP(sport=40000, dport={port})/\
         Raw(load=b'{data}'), 200)]",
        from.mac,
        to.mac,
        from.v6(),
        to.v6()
    );
    let frames = s.build_list(&expr).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(frames.len() >= 3, "{expr} gave {} fragments", frames.len());
    for f in &frames {
        // Every fragment's Fragment header names Destination Options (60) as the next
        // header, the first's chain then goes on to UDP.
        assert_eq!(f[14 + 6], 44, "IPv6 next header: the Fragment header");
        assert_eq!(
            f[14 + 40],
            60,
            "the Fragment header's next header: Destination Options"
        );
    }
    frames
}

/// A UDP datagram with a Destination Options header after the Fragment header (the
/// Fragment header's Next Header is 60, not UDP) arrives whole: every fragment passes and
/// the listener gets the datagram once. The same datagram to another tenant: the first
/// fragment is `cross_tenant`, its later fragments `fragment`, nothing arrives.
#[test]
fn ipv6_fragments_with_options_after_the_fragment_header_arrive_whole() {
    let fx = Frags::start("fc-frag-opts");
    let mut bad = Problems::new();
    let (web1, web2, app1) = (fx.vm("web1"), fx.vm("web2"), fx.vm("app1"));
    let mut s = Scapy::start(&web1.ns).unwrap_or_else(|e| panic!("{e:#}"));
    let data = payload("destopts", 600);
    let sender = FrameSender::open(&web1.ns, "eth0").expect("sender");

    let same = v6_with_dest_opts(&mut s, web1, web2, 0x5101, 7101, &data);
    let n = same.len() as f64;
    let sock = udp_listener(&web2.ns, web2.v6(), 7101);
    let before = fx.quiet();
    sender.send_all(&same).expect("send");
    fx.expect_exactly(
        &mut bad,
        &before,
        &[("web1", "ingress pass", n), ("web2", "egress pass", n)],
        "every fragment of the datagram passes, within the segment",
    );
    let got = received(&sock);
    bad.check(got.len() == 1 && got[0] == data.as_bytes(), || {
        format!(
            "web2 must receive the datagram reassembled, once; got {} datagram(s) of {:?} bytes",
            got.len(),
            got.iter().map(Vec::len).collect::<Vec<_>>()
        )
    });

    // Its twin to another tenant.
    let cross = v6_with_dest_opts(&mut s, web1, app1, 0x5102, 7101, &data);
    let sock = udp_listener(&app1.ns, app1.v6(), 7101);
    let before = fx.quiet();
    sender.send_all(&cross).expect("send");
    fx.expect_exactly(
        &mut bad,
        &before,
        &[
            ("web1", "ingress cross_tenant", 1.0),
            ("web1", "ingress fragment", n - 1.0),
        ],
        "the same datagram to another tenant: the first fragment is cross_tenant, the rest fragment",
    );
    let got = received(&sock);
    bad.check(got.is_empty(), || {
        format!("app1 (another tenant) received {} datagram(s)", got.len())
    });
    bad.finish(
        "IPv6 fragments with Destination Options after the Fragment header",
        &fx.report(),
        &fx.env.log_tail(),
    );
}

/// First fragments in the flood: more than the old single table held (16 384 datagrams
/// of every vif together), far more than a vif's own (256).
const FRAGMENT_FLOOD: u16 = 20_000;

/// A flood of first fragments from one VM (each of another datagram) fills only its own
/// tables: another tenant's datagrams, whose first fragments passed before the flood and
/// whose later fragments come after it, arrive whole (IPv4 and IPv6).
#[test]
fn a_flood_of_first_fragments_does_not_push_out_another_tenants_datagrams() {
    // The legitimate first fragments and the flood on one CPU: see `PinnedCpu`.
    let _cpu = PinnedCpu::to(0).expect("pin");
    let fx = Frags::start("fc-frag-flood");
    let mut bad = Problems::new();
    let (web1, web2, app1, app2) = (fx.vm("web1"), fx.vm("web2"), fx.vm("app1"), fx.vm("app2"));
    let mut s = Scapy::start(&app1.ns).unwrap_or_else(|e| panic!("{e:#}"));
    let v4_data = payload("legit-v4", 400);
    let v6_data = payload("legit-v6", 400);
    let v4 = s
        .build_list(&format!(
            "[Ether(src='{}', dst='{}')/f for f in fragment(IP(src='{}', dst='{}', id=0x6101)/\
             UDP(sport=40000, dport=7102)/Raw(load=b'{v4_data}'), fragsize=128)]",
            app1.mac,
            app2.mac,
            app1.v4(),
            app2.v4()
        ))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let v6 = s
        .build_list(&format!(
            "[Ether(src='{}', dst='{}')/f for f in fragment6(IPv6(src='{}', dst='{}')/\
             IPv6ExtHdrFragment(id=0x6102)/UDP(sport=40000, dport=7102)/Raw(load=b'{v6_data}'), 160)]",
            app1.mac,
            app2.mac,
            app1.v6(),
            app2.v6()
        ))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        v4.len() >= 3 && v6.len() >= 3,
        "fragments: {} and {}",
        v4.len(),
        v6.len()
    );
    let (n4, n6) = (v4.len() as f64, v6.len() as f64);
    let sock4 = udp_listener(&app2.ns, app2.v4(), 7102);
    let sock6 = udp_listener(&app2.ns, app2.v6(), 7102);
    let app_sender = FrameSender::open(&app1.ns, "eth0").expect("sender");
    let web_sender = FrameSender::open(&web1.ns, "eth0").expect("sender");

    // The first fragments of the legitimate datagrams.
    let before = fx.quiet();
    app_sender.send_all([&v4[0], &v6[0]]).expect("send");
    let after = fx.expect_exactly(
        &mut bad,
        &before,
        &[("app1", "ingress pass", 2.0), ("app2", "egress pass", 2.0)],
        "the first fragments of app1's datagrams pass",
    );

    // The flood: web1 sends first fragments of FRAGMENT_FLOOD datagrams to web2.
    let (m1, m2) = (parse_mac(&web1.mac).unwrap(), parse_mac(&web2.mac).unwrap());
    let flood = (1..=FRAGMENT_FLOOD).map(|id| {
        let mut f = V4::new(
            &web1.v4().to_string(),
            &web2.v4().to_string(),
            udp(40000, 9),
        );
        f.id = id;
        f.more_fragments = true;
        f.payload.extend_from_slice(&[0x5a; 24]);
        f.frame(m1, m2)
    });
    let before = after;
    web_sender.send_all(flood).expect("flood");
    let flood_n = f64::from(FRAGMENT_FLOOD);
    let after = fx.expect_exactly(
        &mut bad,
        &before,
        &[
            ("web1", "ingress pass", flood_n),
            ("web2", "egress pass", flood_n),
        ],
        "the flood's first fragments pass within acme/web",
    );

    // The rest of the legitimate datagrams.
    let before = after;
    app_sender
        .send_all(v4[1..].iter().chain(v6[1..].iter()))
        .expect("send");
    let rest = n4 + n6 - 2.0;
    fx.expect_exactly(
        &mut bad,
        &before,
        &[
            ("app1", "ingress pass", rest),
            ("app2", "egress pass", rest),
        ],
        &format!(
            "after a flood of {FRAGMENT_FLOOD} first fragments from another tenant's VM, the \
             later fragments of app1's datagrams still pass"
        ),
    );
    for (fam, sock, data) in [("IPv4", &sock4, &v4_data), ("IPv6", &sock6, &v6_data)] {
        let got = received(sock);
        bad.check(got.len() == 1 && got[0] == data.as_bytes(), || {
            format!(
                "app2 must receive app1's {fam} datagram whole, once; got {} datagram(s)",
                got.len()
            )
        });
    }
    bad.finish(
        "a flood of first fragments",
        &fx.report(),
        &fx.env.log_tail(),
    );
}

/// An IPv6 TCP datagram in two fragments: a later fragment at offset 8 (reaching back
/// over the ports' end, the sequence and acknowledgement numbers and the flags its first
/// was judged by) is dropped (`fragment`), so the receiver never has the datagram; the
/// same segment split at offset 24 (after the 20-byte TCP header) arrives whole: the
/// receiver reassembles it and answers the SYN.
#[test]
fn an_ipv6_tcp_fragment_at_offset_8_is_dropped_and_a_legal_split_arrives() {
    let fx = Frags::start("fc-frag-tcp8");
    let mut bad = Problems::new();
    let (web1, web2) = (fx.vm("web1"), fx.vm("web2"));
    let listener = in_netns(&web2.ns, || {
        Ok(std::net::TcpListener::bind(SocketAddr::new(
            web2.v6(),
            7103,
        ))?)
    })
    .expect("listener");
    let mut s = Scapy::start(&web1.ns).unwrap_or_else(|e| panic!("{e:#}"));
    // The TCP segment (checksum for the IPv6 pseudo-header): a SYN with 16 bytes of data.
    let segment = s
        .run(&format!(
            "print(bytes(IPv6(src='{}', dst='{}')/TCP(sport=40001, dport=7103, flags='S', \
             seq=1000)/Raw(load=b'0123456789abcdef'))[40:].hex())",
            web1.v6(),
            web2.v6()
        ))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let segment = segment.trim().to_string();
    assert_eq!(segment.len(), 2 * 36, "20 bytes of TCP header, 16 of data");
    let mut fragment = |id: u32, offset_bytes: usize, more: bool, part: &str| {
        s.build(&format!(
            "Ether(src='{}', dst='{}')/IPv6(src='{}', dst='{}')/IPv6ExtHdrFragment(nh=6, \
                 id={id}, offset={}, m={})/Raw(load=bytes.fromhex('{part}'))",
            web1.mac,
            web2.mac,
            web1.v6(),
            web2.v6(),
            offset_bytes / 8,
            u8::from(more)
        ))
        .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let bytes = |from: usize, to: usize| segment[2 * from..2 * to].to_string();
    let sender = FrameSender::open(&web1.ns, "eth0").expect("sender");
    let syn_ack_from_web2 = |frames: &[Vec<u8>]| {
        tcp_segments(frames, (web2.v6(), 7103), (web1.v6(), 40001))
            .iter()
            .any(|t| t.syn && t.ack == 1001)
    };

    // The first fragment (the whole TCP header, 4 bytes of data), then one at offset 8.
    let first = fragment(0x7101, 0, true, &bytes(0, 24));
    let over = fragment(0x7101, 8, false, &bytes(8, 36));
    let before = fx.quiet();
    let (sent, at_web1) = capture(&web1.ns, "eth0", || {
        capture(&web2.ns, "eth0", || sender.send_all([&first, &over]))
    });
    let (sent, at_web2) = sent;
    sent.expect("send");
    let after = fx.expect_exactly(
        &mut bad,
        &before,
        &[
            ("web1", "ingress pass", 1.0),
            ("web1", "ingress fragment", 1.0),
            ("web2", "egress pass", 1.0),
        ],
        "the first fragment passes, the one at offset 8 is dropped as fragment",
    );
    bad.check(at_web2.contains(&first) && !at_web2.contains(&over), || {
        format!(
            "web2 must receive the first fragment and not the one at offset 8: first {}, offset 8 {}",
            at_web2.contains(&first),
            at_web2.contains(&over)
        )
    });
    bad.check(!syn_ack_from_web2(&at_web1), || {
        "web2 answered a SYN it can only have reassembled with the fragment at offset 8".into()
    });

    // The same segment split after the TCP header: both fragments pass, web2 reassembles
    // the SYN and answers it (SYN-ACK), web1's stack resets it (no socket).
    let first = fragment(0x7102, 0, true, &bytes(0, 24));
    let second = fragment(0x7102, 24, false, &bytes(24, 36));
    let before = after;
    let (sent, at_web1) = capture(&web1.ns, "eth0", || {
        capture(&web2.ns, "eth0", || sender.send_all([&first, &second]))
    });
    let (sent, at_web2) = sent;
    sent.expect("send");
    fx.expect_exactly(
        &mut bad,
        &before,
        &[
            // The two fragments and web1's RST to the SYN-ACK; the SYN-ACK.
            ("web1", "ingress pass", 3.0),
            ("web2", "egress pass", 3.0),
            ("web2", "ingress pass", 1.0),
            ("web1", "egress pass", 1.0),
        ],
        "both fragments of the legal split pass; web2 answers the reassembled SYN",
    );
    bad.check(
        at_web2.contains(&first) && at_web2.contains(&second),
        || "web2 must receive both fragments of the legal split".into(),
    );
    bad.check(syn_ack_from_web2(&at_web1), || {
        let seen: Vec<String> = at_web1.iter().map(|f| describe(f)).collect();
        format!("web2 must reassemble the SYN and answer it; frames at web1: {seen:?}")
    });
    drop(listener);
    bad.finish(
        "IPv6 TCP fragment at offset 8",
        &fx.report(),
        &fx.env.log_tail(),
    );
}
