//! Invariant I2 and the layer-2 guards, with real crafted frames: scapy, inside a VM's
//! namespace, sends what a misbehaving VM could send (another MAC, another VM's address,
//! gratuitous ARP and neighbour advertisements for other addresses, router advertisements,
//! DHCP server answers, VLAN tags, malformed and evasive IP), and every case asserts two
//! things: the frame is absent at the VM it was aimed at (a raw capture on its `eth0`), and
//! the sender's vif counted exactly that many ingress drops under exactly the expected reason.
//! Each blocked case comes with the same kind of frame sent legitimately, which must arrive:
//! a capture that sees nothing proves nothing otherwise.
//!
//! Needs root, `/usr/bin/python3` with Debian's `python3-scapy`, and the `isolator` binary
//! (`cargo build -p isolator-user`, or `ISOLATOR_BIN`). Every test builds its own lab and
//! daemon (tests run in parallel).
//!
//! The lab (one bridge, tenant `acme`):
//!
//! | VM   | vif        | segment | addresses                  | identity in the policy |
//! |------|------------|---------|----------------------------|------------------------|
//! | web1 | vacme-web1 | web     | 10.1.1.2, fd00:1:1::2, LL  | mac, addresses (its link-local included), vlans [100] |
//! | web2 | vacme-web2 | web     | 10.1.1.3, fd00:1:1::3      | pattern `vacme-web*`, vlans [100] |
//! | web3 | vacme-web3 | web     | 10.1.1.4, fd00:1:1::4      | pattern (the observer) |
//! | db1  | vacme-db1  | db      | 10.1.2.2, fd00:1:2::2      | pattern `vacme-db*` |
//! | gw1  | vacme-gw1  | gw      | 10.1.3.2, fd00:1:3::2      | pattern `vacme-gw*`; segment allows DHCP servers and RAs |
//! | gw2  | vacme-gw2  | gw      | 10.1.3.3, fd00:1:3::3      | pattern |

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use isolator_tests::net::{Capture, describe_frame, fmt_mac};
use isolator_tests::netns::{in_netns, ip_n, sysctl};
use isolator_tests::prom::Metrics;
use isolator_tests::scapy::Scapy;
use isolator_tests::{Daemon, Lab, TempDir, Vm, isolator_bin, ping, ping_count};

const METRICS_PORT: u16 = 9465;
const DROP_PKTS: &str = "isolator_drop_packets_total";
const PASS_PKTS: &str = "isolator_pass_packets_total";
const AUDIT_PKTS: &str = "isolator_audit_packets_total";
const TENANT: &str = "acme";

/// One VM of the lab, with everything a scapy expression needs as strings.
#[derive(Clone, Debug)]
struct Node {
    name: &'static str,
    segment: &'static str,
    ns: String,
    vif: String,
    mac: String,
    v4: String,
    v6: String,
    /// Its IPv6 link-local address, as the kernel configured it.
    ll: String,
}

impl Node {
    fn vm(&self) -> Vm {
        Vm {
            name: self.name.to_string(),
            ns: self.ns.clone(),
            vif: self.vif.clone(),
            mac: self.mac.clone(),
            addrs: vec![
                (self.v4.parse().unwrap(), 24),
                (self.v6.parse().unwrap(), 64),
            ],
        }
    }

    /// `Ether(src=<its MAC>, dst=DST)`.
    fn eth(&self, dst: &str) -> String {
        format!("Ether(src='{}', dst='{dst}')", self.mac)
    }
}

const PLAN: [(&str, &str, &str, &str); 6] = [
    ("web1", "web", "10.1.1.2", "fd00:1:1::2"),
    ("web2", "web", "10.1.1.3", "fd00:1:1::3"),
    ("web3", "web", "10.1.1.4", "fd00:1:1::4"),
    ("db1", "db", "10.1.2.2", "fd00:1:2::2"),
    ("gw1", "gw", "10.1.3.2", "fd00:1:3::2"),
    ("gw2", "gw", "10.1.3.3", "fd00:1:3::3"),
];

/// Lab + daemon. Field order is drop order: the daemon first, then the lab, then the files.
struct Env {
    daemon: Daemon,
    lab: Lab,
    nodes: Vec<Node>,
    policy: String,
    _tmp: TempDir,
}

impl Env {
    /// Builds the lab, writes the policy with web1's real MAC and link-local address, starts
    /// the daemon. `web_mode` is the web segment's `mode`.
    fn start(hint: &str, web_mode: &str) -> Env {
        let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
        let tmp = TempDir::new("isot-guards").expect("temp dir");
        let mut lab = Lab::new(hint).expect("build lab");
        let mut nodes = Vec::new();
        for (name, segment, v4, v6) in PLAN {
            let vif = format!("vacme-{name}");
            let vm = lab
                .add_vm(name, &vif, &[&format!("{v4}/24"), &format!("{v6}/64")])
                .unwrap_or_else(|e| panic!("add VM {name}: {e:#}"));
            nodes.push(Node {
                name,
                segment,
                ns: vm.ns.clone(),
                vif,
                mac: vm.mac.clone(),
                v4: v4.to_string(),
                v6: v6.to_string(),
                ll: String::new(),
            });
        }
        for n in &mut nodes {
            n.ll = link_local(&n.ns).to_string();
        }
        let w1 = &nodes[0];
        let policy = format!(
            r#"version: 1
tenants:
  - name: {TENANT}
    segments:
      - name: web
        mode: {web_mode}
        prefixes: ["10.1.1.0/24", "fd00:1:1::/64"]
        interfaces:
          - name: {vif}
            mac: "{mac}"
            addresses: ["{v4}", "{v6}", "{ll}"]
            vlans: [100]
          - name: "vacme-web*"
            vlans: [100]
      - name: db
        prefixes: ["10.1.2.0/24", "fd00:1:2::/64"]
        interfaces: ["vacme-db*"]
      - name: gw
        allow_dhcp_server: true
        allow_router_advertisements: true
        prefixes: ["10.1.3.0/24", "fd00:1:3::/64"]
        interfaces: ["vacme-gw*"]
"#,
            vif = w1.vif,
            mac = w1.mac,
            v4 = w1.v4,
            v6 = w1.v6,
            ll = w1.ll,
        );
        let config = tmp.write("policy.yaml", &policy).expect("write policy");
        let daemon = Daemon::start_healthy(&lab, &bin, &config, METRICS_PORT, tmp.path())
            .unwrap_or_else(|e| {
                panic!("starting `{} run`: {e:#}\npolicy:\n{policy}", bin.display())
            });
        Env {
            daemon,
            lab,
            nodes,
            policy,
            _tmp: tmp,
        }
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no VM {name}"))
    }

    fn metrics(&self) -> Metrics {
        self.daemon.metrics().unwrap_or_else(|e| {
            panic!(
                "scraping /metrics: {e:#}\ndaemon output:\n{}",
                self.daemon.log()
            )
        })
    }

    fn scapy(&self, name: &str) -> Scapy {
        Scapy::start(&self.node(name).ns).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Fails the test with every problem found, the policy and the daemon's output.
    fn verdict(&self, test: &str, bad: &[String]) {
        assert!(
            bad.is_empty(),
            "{test}: {} problem(s):\n\n{}\n\npolicy:\n{}\ndaemon output (last lines):\n{}",
            bad.len(),
            bad.join("\n\n"),
            self.policy,
            tail(&self.daemon.log(), 20)
        );
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The link-local address the kernel gave `eth0` in `ns` (it appears as the link comes up).
fn link_local(ns: &str) -> Ipv6Addr {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let out = ip_n(
            ns,
            &["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"],
        )
        .unwrap_or_default();
        let found = out
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok());
        if let Some(a) = found {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no IPv6 link-local address on eth0 in {ns}: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ingress drops of `vif` by reason.
fn ingress_drops(m: &Metrics, vif: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in m.find(DROP_PKTS, &[("device", vif), ("direction", "ingress")]) {
        let reason = s.labels.get("reason").cloned().unwrap_or_default();
        *out.entry(reason).or_insert(0.0) += s.value;
    }
    out
}

/// What changed between two readings, non-zero entries only.
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in after {
        let d = v - before.get(k).copied().unwrap_or(0.0);
        if d != 0.0 {
            out.insert(k.clone(), d);
        }
    }
    for (k, v) in before {
        if !after.contains_key(k) && *v != 0.0 {
            out.insert(k.clone(), -v);
        }
    }
    out
}

fn fmt_delta(d: &BTreeMap<String, f64>) -> String {
    if d.is_empty() {
        return "nothing".into();
    }
    d.iter()
        .map(|(k, v)| format!("{k} {v:+}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ingress_passes(m: &Metrics, vif: &str) -> f64 {
    m.sum(PASS_PKTS, &[("device", vif), ("direction", "ingress")])
}

fn audits(m: &Metrics, vif: &str) -> f64 {
    m.sum(AUDIT_PKTS, &[("device", vif), ("direction", "ingress")])
}

/// `frame` without its first 802.1Q/802.1ad tag: how a tagged frame shows up to a packet
/// socket on the receiving side (the tag travels as metadata there).
fn untagged(frame: &[u8]) -> Vec<u8> {
    if frame.len() >= 18 && matches!([frame[12], frame[13]], [0x81, 0x00] | [0x88, 0xa8]) {
        let mut f = frame[..12].to_vec();
        f.extend_from_slice(&frame[16..]);
        f
    } else {
        frame.to_vec()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Counted `count` times as a drop with this reason on the sender's vif (ingress), and
    /// absent at the target.
    Dropped(&'static str),
    /// Passed by the sender's vif (no ingress drop) and received by the target.
    Delivered,
}

/// One crafted frame: built by scapy in the sender's namespace from `expr`, sent `count`
/// times while `eth0` (or `ifname`) of the target VM is captured.
struct Shot<'a> {
    what: &'a str,
    from: &'a Node,
    to: &'a Node,
    ifname: &'a str,
    expr: String,
    count: usize,
    expect: Expect,
}

fn shot<'a>(what: &'a str, from: &'a Node, to: &'a Node, expr: String, expect: Expect) -> Shot<'a> {
    Shot {
        what,
        from,
        to,
        ifname: "eth0",
        expr,
        count: 1,
        expect,
    }
}

impl<'a> Shot<'a> {
    fn times(mut self, count: usize) -> Self {
        self.count = count;
        self
    }

    fn on(mut self, ifname: &'a str) -> Self {
        self.ifname = ifname;
        self
    }

    /// Sends the frame and checks the outcome; returns the problems found (empty: as
    /// expected) and the frame's bytes.
    fn fire(&self, env: &Env, scapy: &mut Scapy) -> (Vec<String>, Vec<u8>) {
        let frame = match scapy.build(&self.expr) {
            Ok(f) => f,
            Err(e) => {
                return (
                    vec![format!("[{}] cannot build the frame: {e:#}", self.what)],
                    Vec::new(),
                );
            }
        };
        (self.fire_bytes(env, scapy, &frame), frame)
    }

    fn fire_bytes(&self, env: &Env, scapy: &mut Scapy, frame: &[u8]) -> Vec<String> {
        let vif = self.from.vif.as_str();
        let cap = Capture::start(&self.to.ns, self.ifname)
            .unwrap_or_else(|e| panic!("[{}] capture: {e:#}", self.what));
        let before = env.metrics();
        if let Err(e) = scapy.send_bytes(frame, self.count) {
            let _ = cap.stop();
            return vec![format!("[{}] scapy could not send: {e:#}", self.what)];
        }
        // Wait for the sender's vif to count the frames, then a little more for a frame
        // that (wrongly) passed to reach the target.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut after;
        loop {
            after = env.metrics();
            let counted = match self.expect {
                Expect::Dropped(reason) => {
                    ingress_drops(&after, vif)
                        .get(reason)
                        .copied()
                        .unwrap_or(0.0)
                        - ingress_drops(&before, vif)
                            .get(reason)
                            .copied()
                            .unwrap_or(0.0)
                }
                Expect::Delivered => ingress_passes(&after, vif) - ingress_passes(&before, vif),
            };
            if counted >= self.count as f64 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(150));
        let frames = cap
            .stop()
            .unwrap_or_else(|e| panic!("[{}] capture: {e:#}", self.what));
        let after = {
            let last = env.metrics();
            // Keep the reading that includes everything sent.
            if ingress_drops(&last, vif) != ingress_drops(&after, vif) {
                last
            } else {
                after
            }
        };
        let want = untagged(frame);
        let arrived = frames
            .iter()
            .filter(|f| f.as_slice() == frame || **f == want)
            .count();
        let drops = delta(&ingress_drops(&before, vif), &ingress_drops(&after, vif));
        let passes = ingress_passes(&after, vif) - ingress_passes(&before, vif);
        let mut bad = Vec::new();
        match self.expect {
            Expect::Dropped(reason) => {
                let expected: BTreeMap<String, f64> =
                    [(reason.to_string(), self.count as f64)].into();
                if drops != expected {
                    bad.push(format!(
                        "expected exactly {reason} +{} in {DROP_PKTS}{{device=\"{vif}\",direction=\"ingress\"}}, \
                         but the ingress drops changed by: {}",
                        self.count,
                        fmt_delta(&drops)
                    ));
                }
                let labels = [
                    ("device", vif),
                    ("tenant", TENANT),
                    ("segment", self.from.segment),
                    ("direction", "ingress"),
                    ("reason", reason),
                ];
                if after.get(DROP_PKTS, &labels).is_none() {
                    bad.push(format!("no sample {DROP_PKTS}{labels:?}"));
                }
                if arrived > 0 {
                    bad.push(format!(
                        "the frame arrived at {}/{} ({arrived} of {} sent)",
                        self.to.name, self.ifname, self.count
                    ));
                }
            }
            Expect::Delivered => {
                if !drops.is_empty() {
                    bad.push(format!(
                        "expected no ingress drop on {vif}, but the drops changed by: {}",
                        fmt_delta(&drops)
                    ));
                }
                if passes < self.count as f64 {
                    bad.push(format!(
                        "{PASS_PKTS} of {vif} (ingress) grew by {passes}, expected at least {}",
                        self.count
                    ));
                }
                if arrived < self.count {
                    bad.push(format!(
                        "the frame did not arrive at {}/{} ({arrived} of {} sent arrived)",
                        self.to.name, self.ifname, self.count
                    ));
                }
            }
        }
        if bad.is_empty() {
            return bad;
        }
        let from_sender: Vec<String> = frames
            .iter()
            .filter(|f| f.len() >= 14 && fmt_mac(&f[6..12]) == self.from.mac)
            .map(|f| describe_frame(f))
            .collect();
        let nonzero: Vec<String> = after
            .find(DROP_PKTS, &[("device", vif)])
            .into_iter()
            .filter(|s| s.value != 0.0)
            .map(|s| format!("{:?} {}", s.labels, s.value))
            .collect();
        vec![format!(
            "[{}] {} ({vif}) -> {}: expected {}, x{}\n  frame: {}\n  scapy: {}\n  - {}\n  \
             captured at {}/{} from the sender's MAC ({} frames captured in all): {}\n  \
             non-zero drop counters of {vif} now:\n    {}",
            self.what,
            self.from.name,
            self.to.name,
            match self.expect {
                Expect::Dropped(r) => format!("dropped as {r} and absent"),
                Expect::Delivered => "delivered".into(),
            },
            self.count,
            describe_frame(frame),
            self.expr,
            bad.join("\n  - "),
            self.to.name,
            self.ifname,
            frames.len(),
            if from_sender.is_empty() {
                "none".into()
            } else {
                from_sender.join("; ")
            },
            if nonzero.is_empty() {
                "none".into()
            } else {
                nonzero.join("\n    ")
            }
        )]
    }
}

/// Fires every shot in order, collecting the problems.
fn fire_all(env: &Env, scapy: &mut Scapy, shots: &[Shot], bad: &mut Vec<String>) {
    for s in shots {
        bad.extend(s.fire(env, scapy).0);
    }
}

/// A UDP datagram `from` -> `to` (addresses of the family of `dst`), with a marker payload.
fn udp4(from: &Node, src_ip: &str, to: &Node, dst_ip: &str, marker: &str) -> String {
    format!(
        "{}/IP(src='{src_ip}', dst='{dst_ip}')/UDP(sport=40000, dport=9)/Raw(load=b'{marker}')",
        from.eth(&to.mac)
    )
}

fn udp6(from: &Node, src_ip: &str, to: &Node, dst_ip: &str, marker: &str) -> String {
    format!(
        "{}/IPv6(src='{src_ip}', dst='{dst_ip}')/UDP(sport=40000, dport=9)/Raw(load=b'{marker}')",
        from.eth(&to.mac)
    )
}

/// Cases 1 and 2: source MAC and source addresses (IPv4, IPv6, link-local, unspecified).
#[test]
fn spoofed_source_mac_and_addresses_are_dropped() {
    let env = Env::start("guard-src", "enforce");
    let (w1, w2, w3, db) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("db1"),
    );
    let mut bad = Vec::new();
    let mut s1 = env.scapy("web1");
    let other_mac = "02:15:99:99:99:01";
    let spoof_mac = |mac: &str, marker: &str| {
        format!(
            "Ether(src='{mac}', dst='{}')/IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'{marker}')",
            w3.mac, w1.v4, w3.v4
        )
    };
    fire_all(
        &env,
        &mut s1,
        &[
            // Case 1: source MAC.
            shot(
                "own MAC (control)",
                w1,
                w3,
                spoof_mac(&w1.mac, "mac-own"),
                Expect::Delivered,
            ),
            shot(
                "another VM's MAC",
                w1,
                w3,
                spoof_mac(&w2.mac, "mac-web2"),
                Expect::Dropped("spoofed_mac"),
            )
            .times(3),
            shot(
                "an unknown MAC",
                w1,
                w3,
                spoof_mac(other_mac, "mac-other"),
                Expect::Dropped("spoofed_mac"),
            ),
            shot(
                "ARP from another MAC",
                w1,
                w3,
                format!(
                    "Ether(src='{other_mac}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{other_mac}', psrc='{}', pdst='{}')",
                    w1.v4, w3.v4
                ),
                Expect::Dropped("spoofed_mac"),
            ),
            // Case 2: declared addresses, IPv4 and IPv6.
            shot(
                "own IPv4 (control)",
                w1,
                w3,
                udp4(w1, &w1.v4, w3, &w3.v4, "ip4-own"),
                Expect::Delivered,
            ),
            shot(
                "IPv4 of another VM of the segment",
                w1,
                w3,
                udp4(w1, &w2.v4, w3, &w3.v4, "ip4-web2"),
                Expect::Dropped("spoofed_ip"),
            )
            .times(2),
            shot(
                "an undeclared IPv4 of its own segment",
                w1,
                w3,
                udp4(w1, "10.1.1.77", w3, &w3.v4, "ip4-77"),
                Expect::Dropped("spoofed_ip"),
            ),
            shot(
                "IPv4 of another segment",
                w1,
                w3,
                udp4(w1, &db.v4, w3, &w3.v4, "ip4-db"),
                Expect::Dropped("spoofed_ip"),
            ),
            shot(
                "IPv4 outside every segment",
                w1,
                w3,
                udp4(w1, "192.0.2.1", w3, &w3.v4, "ip4-out"),
                Expect::Dropped("spoofed_ip"),
            ),
            shot(
                "own IPv6 (control)",
                w1,
                w3,
                udp6(w1, &w1.v6, w3, &w3.v6, "ip6-own"),
                Expect::Delivered,
            ),
            shot(
                "IPv6 of another VM of the segment",
                w1,
                w3,
                udp6(w1, &w2.v6, w3, &w3.v6, "ip6-web2"),
                Expect::Dropped("spoofed_ip"),
            )
            .times(2),
            shot(
                "IPv6 of another segment",
                w1,
                w3,
                udp6(w1, &db.v6, w3, &w3.v6, "ip6-db"),
                Expect::Dropped("spoofed_ip"),
            ),
            shot(
                "own declared link-local (control)",
                w1,
                w3,
                udp6(w1, &w1.ll, w3, &w3.ll, "ll-own"),
                Expect::Delivered,
            ),
            shot(
                "another link-local (web1 declared its own)",
                w1,
                w3,
                udp6(w1, &w2.ll, w3, &w3.ll, "ll-web2"),
                Expect::Dropped("spoofed_ip"),
            ),
            // The unspecified source: DHCP discovery and DAD only.
            shot(
                "DHCPDISCOVER from 0.0.0.0:68 to 255.255.255.255:67",
                w1,
                w3,
                dhcp_discover(w1),
                Expect::Delivered,
            ),
            shot(
                "UDP from 0.0.0.0 that is not DHCP discovery",
                w1,
                w3,
                udp4(w1, "0.0.0.0", w3, &w3.v4, "ip4-zero"),
                Expect::Dropped("spoofed_ip"),
            ),
            shot(
                "ICMP echo from 0.0.0.0",
                w1,
                w3,
                format!(
                    "{}/IP(src='0.0.0.0', dst='{}')/ICMP()",
                    w1.eth(&w3.mac),
                    w3.v4
                ),
                Expect::Dropped("spoofed_ip"),
            ),
            shot(
                "DHCP from 0.0.0.0:68 to another port",
                w1,
                w3,
                format!(
                    "{}/IP(src='0.0.0.0', dst='255.255.255.255')/UDP(sport=68, dport=69)/Raw(load=b'zero-68-69')",
                    w1.eth("ff:ff:ff:ff:ff:ff")
                ),
                Expect::Dropped("spoofed_ip"),
            ),
            shot(
                "DAD neighbour solicitation from ::",
                w1,
                w3,
                dad_ns(w1, &w1.v6),
                Expect::Delivered,
            ),
            shot(
                "ICMPv6 echo from ::",
                w1,
                w3,
                format!(
                    "{}/IPv6(src='::', dst='{}')/ICMPv6EchoRequest()",
                    w1.eth(&w3.mac),
                    w3.v6
                ),
                Expect::Dropped("spoofed_ip"),
            ),
            shot(
                "UDP from :: to all nodes",
                w1,
                w3,
                format!(
                    "{}/IPv6(src='::', dst='ff02::1')/UDP(sport=40000, dport=9)/Raw(load=b'zero6')",
                    w1.eth("33:33:00:00:00:01")
                ),
                Expect::Dropped("spoofed_ip"),
            ),
            shot(
                "neighbour advertisement from ::",
                w1,
                w3,
                format!(
                    "{}/IPv6(src='::', dst='ff02::1', hlim=255)/ICMPv6ND_NA(tgt='{}', R=0, S=0, O=1)",
                    w1.eth("33:33:00:00:00:01"),
                    w1.v6
                ),
                Expect::Dropped("spoofed_ip"),
            ),
        ],
        &mut bad,
    );
    drop(s1);

    // web2 declares nothing: any address of its segment, any link-local address; never
    // another segment's.
    let mut s2 = env.scapy("web2");
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "any IPv4 of its segment (control)",
                w2,
                w3,
                udp4(w2, "10.1.1.77", w3, &w3.v4, "w2-ip4-77"),
                Expect::Delivered,
            ),
            shot(
                "IPv4 of another segment",
                w2,
                w3,
                udp4(w2, &db.v4, w3, &w3.v4, "w2-ip4-db"),
                Expect::Dropped("spoofed_ip"),
            )
            .times(2),
            shot(
                "any IPv6 of its segment (control)",
                w2,
                w3,
                udp6(w2, "fd00:1:1::77", w3, &w3.v6, "w2-ip6-77"),
                Expect::Delivered,
            ),
            shot(
                "IPv6 of another segment",
                w2,
                w3,
                udp6(w2, &db.v6, w3, &w3.v6, "w2-ip6-db"),
                Expect::Dropped("spoofed_ip"),
            ),
            shot(
                "IPv6 of the gw segment",
                w2,
                w3,
                udp6(w2, "fd00:1:3::2", w3, &w3.v6, "w2-ip6-gw"),
                Expect::Dropped("spoofed_ip"),
            ),
            shot(
                "an undeclared link-local (its own by default)",
                w2,
                w3,
                udp6(w2, "fe80::1234", w3, &w3.ll, "w2-ll"),
                Expect::Delivered,
            ),
        ],
        &mut bad,
    );
    env.verdict("source guard", &bad);
}

fn dhcp_discover(from: &Node) -> String {
    format!(
        "{}/IP(src='0.0.0.0', dst='255.255.255.255')/UDP(sport=68, dport=67)/\
         BOOTP(op=1, chaddr=mac2str('{mac}'), xid=0x150150)/\
         DHCP(options=[('message-type', 'discover'), 'end'])",
        from.eth("ff:ff:ff:ff:ff:ff"),
        mac = from.mac
    )
}

/// The solicited-node multicast group of `addr` and its MAC.
fn solicited_node(addr: &str) -> (String, String) {
    let a: Ipv6Addr = addr.parse().unwrap();
    let o = a.octets();
    (
        format!("ff02::1:ff{:02x}:{:02x}{:02x}", o[13], o[14], o[15]),
        format!("33:33:ff:{:02x}:{:02x}:{:02x}", o[13], o[14], o[15]),
    )
}

/// Duplicate address detection for `target`: a neighbour solicitation from ::, without a
/// link-layer address option, to the target's solicited-node group.
fn dad_ns(from: &Node, target: &str) -> String {
    let (group, mac) = solicited_node(target);
    format!(
        "{}/IPv6(src='::', dst='{group}', hlim=255)/ICMPv6ND_NS(tgt='{target}')",
        from.eth(&mac)
    )
}

/// The MAC address `ns` has for neighbour `addr` on eth0 (None: no entry, or none with an
/// address).
fn neigh_mac(ns: &str, addr: &str) -> Option<String> {
    let out = ip_n(ns, &["neigh", "show", addr, "dev", "eth0"]).ok()?;
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_string)
}

/// Waits up to `timeout` until `ns`'s neighbour entry for `addr` has MAC `mac`.
fn neigh_becomes(ns: &str, addr: &str, mac: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = neigh_mac(ns, addr);
        if now.as_deref() == Some(mac) || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn set_neigh(ns: &str, addr: &str, mac: &str) {
    ip_n(
        ns,
        &[
            "neigh", "replace", addr, "lladdr", mac, "dev", "eth0", "nud", "stale",
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
}

const BOGUS_MAC: &str = "02:15:99:99:99:99";

/// Case 3: ARP may only speak for the sender's own MAC and addresses; a gratuitous ARP that
/// takes over another VM's address does not poison a third VM's cache.
#[test]
fn arp_spoofing_is_dropped_and_caches_stay_clean() {
    let env = Env::start("guard-arp", "enforce");
    let (w1, w2, w3, db) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("db1"),
    );
    let mut bad = Vec::new();
    // The observer web3 learns web2's real MAC for 10.1.1.3.
    assert!(
        ping(&w3.vm(), w2.v4.parse().unwrap()).unwrap(),
        "web3 -> web2 ping (same segment) must work"
    );
    assert_eq!(neigh_mac(&w3.ns, &w2.v4).as_deref(), Some(w2.mac.as_str()));

    let garp = |from: &Node, ip: &str, sha: &str| {
        format!(
            "{}/ARP(op=1, hwsrc='{sha}', psrc='{ip}', hwdst='00:00:00:00:00:00', pdst='{ip}')",
            from.eth("ff:ff:ff:ff:ff:ff")
        )
    };
    let mut s1 = env.scapy("web1");
    // Control: a gratuitous ARP does change the observer's cache when it arrives.
    set_neigh(&w3.ns, &w1.v4, BOGUS_MAC);
    bad.extend(
        shot(
            "gratuitous ARP for its own address (control)",
            w1,
            w3,
            garp(w1, &w1.v4, &w1.mac),
            Expect::Delivered,
        )
        .fire(&env, &mut s1)
        .0,
    );
    let now = neigh_becomes(&w3.ns, &w1.v4, &w1.mac, Duration::from_secs(2));
    if now.as_deref() != Some(w1.mac.as_str()) {
        bad.push(format!(
            "[control] web1's gratuitous ARP for {} arrived, yet web3's cache says {now:?} \
             instead of {}: the cache check below would prove nothing",
            w1.v4, w1.mac
        ));
    }
    fire_all(
        &env,
        &mut s1,
        &[
            shot(
                "gratuitous ARP request taking over web2's address",
                w1,
                w3,
                garp(w1, &w2.v4, &w1.mac),
                Expect::Dropped("arp_spoof"),
            )
            .times(3),
            shot(
                "gratuitous ARP reply taking over web2's address",
                w1,
                w3,
                format!(
                    "{}/ARP(op=2, hwsrc='{m}', psrc='{ip}', hwdst='{m}', pdst='{ip}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    m = w1.mac,
                    ip = w2.v4
                ),
                Expect::Dropped("arp_spoof"),
            ),
            shot(
                "unicast ARP reply to web3 claiming web2's address",
                w1,
                w3,
                format!(
                    "{}/ARP(op=2, hwsrc='{}', psrc='{}', hwdst='{}', pdst='{}')",
                    w1.eth(&w3.mac),
                    w1.mac,
                    w2.v4,
                    w3.mac,
                    w3.v4
                ),
                Expect::Dropped("arp_spoof"),
            ),
            shot(
                "ARP request with a sender IP of another segment",
                w1,
                w3,
                format!(
                    "{}/ARP(op=1, hwsrc='{}', psrc='{}', pdst='{}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    w1.mac,
                    db.v4,
                    w3.v4
                ),
                Expect::Dropped("arp_spoof"),
            ),
            shot(
                "ARP request whose sender MAC is not the frame's",
                w1,
                w3,
                format!(
                    "{}/ARP(op=1, hwsrc='{}', psrc='{}', pdst='{}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    w2.mac,
                    w1.v4,
                    w3.v4
                ),
                Expect::Dropped("arp_spoof"),
            ),
            shot(
                "ARP request for web3 from its own address (control)",
                w1,
                w3,
                format!(
                    "{}/ARP(op=1, hwsrc='{}', psrc='{}', pdst='{}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    w1.mac,
                    w1.v4,
                    w3.v4
                ),
                Expect::Delivered,
            ),
            shot(
                "ARP probe from 0.0.0.0",
                w1,
                w3,
                format!(
                    "{}/ARP(op=1, hwsrc='{}', psrc='0.0.0.0', pdst='{}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    w1.mac,
                    w1.v4
                ),
                Expect::Delivered,
            ),
        ],
        &mut bad,
    );
    drop(s1);
    // web2 declares no identity: still only its own MAC as ARP sender, only its segment's
    // addresses.
    let mut s2 = env.scapy("web2");
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "gratuitous ARP for an address of its segment (control)",
                w2,
                w3,
                garp(w2, "10.1.1.77", &w2.mac),
                Expect::Delivered,
            ),
            shot(
                "gratuitous ARP for an address of another segment",
                w2,
                w3,
                garp(w2, &db.v4, &w2.mac),
                Expect::Dropped("arp_spoof"),
            ),
            shot(
                "gratuitous ARP naming another MAC as sender",
                w2,
                w3,
                garp(w2, &w2.v4, BOGUS_MAC),
                Expect::Dropped("arp_spoof"),
            ),
        ],
        &mut bad,
    );
    // The observer still knows web2 by its real MAC, and still reaches it.
    let now = neigh_mac(&w3.ns, &w2.v4);
    if now.as_deref() != Some(w2.mac.as_str()) {
        bad.push(format!(
            "web3's ARP cache for web2 ({}) was poisoned: {now:?}, must stay {}",
            w2.v4, w2.mac
        ));
    }
    if !ping(&w3.vm(), w2.v4.parse().unwrap()).unwrap() {
        bad.push("web3 -> web2 ping fails after the ARP spoofing attempts".into());
    }
    env.verdict("ARP guard", &bad);
}

fn na(from: &Node, dst: (&str, &str), src: &str, target: &str, tlla: &str) -> String {
    format!(
        "{}/IPv6(src='{src}', dst='{}', hlim=255)/ICMPv6ND_NA(tgt='{target}', R=0, S=0, O=1)/\
         ICMPv6NDOptDstLLAddr(lladdr='{tlla}')",
        from.eth(dst.1),
        dst.0
    )
}

/// Case 4: neighbour advertisements only for the sender's own addresses and MAC.
#[test]
fn neighbour_advertisement_spoofing_is_dropped() {
    let env = Env::start("guard-nd", "enforce");
    let (w1, w2, w3, db) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("db1"),
    );
    let all_nodes = ("ff02::1", "33:33:00:00:00:01");
    let mut bad = Vec::new();
    assert!(
        ping(&w3.vm(), w2.v6.parse().unwrap()).unwrap(),
        "web3 -> web2 ping6 (same segment) must work"
    );
    assert_eq!(neigh_mac(&w3.ns, &w2.v6).as_deref(), Some(w2.mac.as_str()));

    let mut s1 = env.scapy("web1");
    set_neigh(&w3.ns, &w1.v6, BOGUS_MAC);
    bad.extend(
        shot(
            "unsolicited NA for its own address (control)",
            w1,
            w3,
            na(w1, all_nodes, &w1.v6, &w1.v6, &w1.mac),
            Expect::Delivered,
        )
        .fire(&env, &mut s1)
        .0,
    );
    let now = neigh_becomes(&w3.ns, &w1.v6, &w1.mac, Duration::from_secs(2));
    if now.as_deref() != Some(w1.mac.as_str()) {
        bad.push(format!(
            "[control] web1's NA for {} arrived, yet web3's cache says {now:?} instead of {}: \
             the cache check below would prove nothing",
            w1.v6, w1.mac
        ));
    }
    fire_all(
        &env,
        &mut s1,
        &[
            shot(
                "NA for web2's address",
                w1,
                w3,
                na(w1, all_nodes, &w1.v6, &w2.v6, &w1.mac),
                Expect::Dropped("nd_spoof"),
            )
            .times(3),
            shot(
                "unicast NA to web3 for web2's address",
                w1,
                w3,
                na(w1, (&w3.v6, &w3.mac), &w1.v6, &w2.v6, &w1.mac),
                Expect::Dropped("nd_spoof"),
            ),
            shot(
                "NA for its own address with web2's MAC as target link-layer address",
                w1,
                w3,
                na(w1, all_nodes, &w1.v6, &w1.v6, &w2.mac),
                Expect::Dropped("nd_spoof"),
            ),
            shot(
                "NA for web2's link-local address",
                w1,
                w3,
                na(w1, all_nodes, &w1.ll, &w2.ll, &w1.mac),
                Expect::Dropped("nd_spoof"),
            ),
            shot(
                "NA for an address of another segment",
                w1,
                w3,
                na(w1, all_nodes, &w1.v6, &db.v6, &w1.mac),
                Expect::Dropped("nd_spoof"),
            ),
            shot(
                "NS with another MAC as source link-layer address",
                w1,
                w3,
                format!(
                    "{}/IPv6(src='{}', dst='{}', hlim=255)/ICMPv6ND_NS(tgt='{}')/ICMPv6NDOptSrcLLAddr(lladdr='{}')",
                    w1.eth(&w3.mac),
                    w1.v6,
                    w3.v6,
                    w3.v6,
                    w2.mac
                ),
                Expect::Dropped("nd_spoof"),
            ),
            shot(
                "NS with its own source link-layer address (control)",
                w1,
                w3,
                format!(
                    "{}/IPv6(src='{}', dst='{}', hlim=255)/ICMPv6ND_NS(tgt='{}')/ICMPv6NDOptSrcLLAddr(lladdr='{}')",
                    w1.eth(&w3.mac),
                    w1.v6,
                    w3.v6,
                    w3.v6,
                    w1.mac
                ),
                Expect::Delivered,
            ),
        ],
        &mut bad,
    );
    drop(s1);
    let mut s2 = env.scapy("web2");
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "NA for its own address (control)",
                w2,
                w3,
                na(w2, all_nodes, &w2.v6, &w2.v6, &w2.mac),
                Expect::Delivered,
            ),
            shot(
                "NA for an address of another segment",
                w2,
                w3,
                na(w2, all_nodes, &w2.v6, &db.v6, &w2.mac),
                Expect::Dropped("nd_spoof"),
            ),
            shot(
                "NA with another MAC as target link-layer address",
                w2,
                w3,
                na(w2, all_nodes, &w2.v6, &w2.v6, BOGUS_MAC),
                Expect::Dropped("nd_spoof"),
            ),
        ],
        &mut bad,
    );
    let now = neigh_mac(&w3.ns, &w2.v6);
    if now.as_deref() != Some(w2.mac.as_str()) {
        bad.push(format!(
            "web3's neighbour cache for web2 ({}) was poisoned: {now:?}, must stay {}",
            w2.v6, w2.mac
        ));
    }
    if !ping(&w3.vm(), w2.v6.parse().unwrap()).unwrap() {
        bad.push("web3 -> web2 ping6 fails after the ND spoofing attempts".into());
    }
    env.verdict("ND guard", &bad);
}

/// Case 4, the link-layer address option wherever it sits. Linux reads every option of a
/// neighbour solicitation or advertisement, and of two source or target link-layer
/// options it uses the first: the guard must not look at fewer options, nor at another one,
/// than the receiver does.
#[test]
fn nd_link_layer_options_are_checked_wherever_they_sit() {
    let env = Env::start("guard-ndopt", "enforce");
    let (w1, w3) = (env.node("web1"), env.node("web3"));
    let mut bad = Vec::new();
    let mut s1 = env.scapy("web1");
    let na_opts = |opts: &str| {
        format!(
            "{}/IPv6(src='{v6}', dst='ff02::1', hlim=255)/ICMPv6ND_NA(tgt='{v6}', R=0, S=0, O=1)/{opts}",
            w1.eth("33:33:00:00:00:01"),
            v6 = w1.v6
        )
    };
    let ns_opts = |opts: &str| {
        format!(
            "{}/IPv6(src='{}', dst='{}', hlim=255)/ICMPv6ND_NS(tgt='{}')/{opts}",
            w1.eth(&w3.mac),
            w1.v6,
            w3.v6,
            w3.v6
        )
    };
    let three = "ICMPv6NDOptMTU()/ICMPv6NDOptMTU()/ICMPv6NDOptMTU()";
    let tlla = |mac: &str| format!("ICMPv6NDOptDstLLAddr(lladdr='{mac}')");
    let slla = |mac: &str| format!("ICMPv6NDOptSrcLLAddr(lladdr='{mac}')");
    // Control: web3 does take the link-layer address from the 4th option.
    set_neigh(&w3.ns, &w1.v6, BOGUS_MAC);
    bad.extend(
        shot(
            "NA for its own address, its MAC in the 4th option (control)",
            w1,
            w3,
            na_opts(&format!("{three}/{}", tlla(&w1.mac))),
            Expect::Delivered,
        )
        .fire(&env, &mut s1)
        .0,
    );
    let now = neigh_becomes(&w3.ns, &w1.v6, &w1.mac, Duration::from_secs(2));
    if now.as_deref() != Some(w1.mac.as_str()) {
        bad.push(format!(
            "[control] web1's NA with its MAC in the 4th option arrived, yet web3's cache says \
             {now:?} instead of {}: the cache check below would prove nothing",
            w1.mac
        ));
    }
    fire_all(
        &env,
        &mut s1,
        &[
            shot(
                "NA for its own address, another MAC in the 4th option",
                w1,
                w3,
                na_opts(&format!("{three}/{}", tlla(BOGUS_MAC))),
                Expect::Dropped("nd_spoof"),
            ),
            shot(
                "NA for its own address, two target link-layer options, another MAC first",
                w1,
                w3,
                na_opts(&format!("{}/{}", tlla(BOGUS_MAC), tlla(&w1.mac))),
                Expect::Dropped("nd_spoof"),
            ),
            shot(
                "NA for its own address, two target link-layer options, another MAC second",
                w1,
                w3,
                na_opts(&format!("{}/{}", tlla(&w1.mac), tlla(BOGUS_MAC))),
                Expect::Dropped("nd_spoof"),
            ),
            shot(
                "NS, another MAC in the 4th option",
                w1,
                w3,
                ns_opts(&format!("{three}/{}", slla(BOGUS_MAC))),
                Expect::Dropped("nd_spoof"),
            ),
            shot(
                "NS, two source link-layer options, another MAC first",
                w1,
                w3,
                ns_opts(&format!("{}/{}", slla(BOGUS_MAC), slla(&w1.mac))),
                Expect::Dropped("nd_spoof"),
            ),
        ],
        &mut bad,
    );
    let now = neigh_mac(&w3.ns, &w1.v6);
    if now.as_deref() != Some(w1.mac.as_str()) {
        bad.push(format!(
            "web3's neighbour cache for web1 ({}) was redirected: {now:?}, must stay {}",
            w1.v6, w1.mac
        ));
    }
    env.verdict("ND link-layer options", &bad);
}

fn router_advertisement(from: &Node, prefix: &str) -> String {
    format!(
        "{}/IPv6(src='{}', dst='ff02::1', hlim=255)/ICMPv6ND_RA(routerlifetime=1800)/\
         ICMPv6NDOptSrcLLAddr(lladdr='{}')/ICMPv6NDOptPrefixInfo(prefix='{prefix}', prefixlen=64)",
        from.eth("33:33:00:00:00:01"),
        from.ll,
        from.mac
    )
}

/// A router advertisement from `from` in fragments, its ICMPv6 header whole in the first.
fn ra_fragments(s: &mut Scapy, from: &Node, id: u32) -> Vec<Vec<u8>> {
    let expr = format!(
        "[{}/f for f in fragment6(IPv6(src='{}', dst='ff02::1', hlim=255)/IPv6ExtHdrFragment(id={id})/\
         ICMPv6ND_RA(routerlifetime=1800)/ICMPv6NDOptSrcLLAddr(lladdr='{}')/\
         ICMPv6NDOptPrefixInfo(prefix='fd00:1:1::', prefixlen=64), 88)]",
        from.eth("33:33:00:00:00:01"),
        from.ll,
        from.mac
    );
    let f = s.build_list(&expr).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(f.len() >= 2, "{expr} gave {} fragments", f.len());
    f
}

fn redirect6(from: &Node, to: &Node) -> String {
    format!(
        "{}/IPv6(src='{}', dst='{}', hlim=255)/ICMPv6ND_Redirect(tgt='{}', dst='fd00:1:2::2')/\
         ICMPv6NDOptDstLLAddr(lladdr='{}')",
        from.eth(&to.mac),
        from.ll,
        to.ll,
        from.ll,
        from.mac
    )
}

fn redirect4(from: &Node, to: &Node) -> String {
    format!(
        "{}/IP(src='{}', dst='{}')/ICMP(type=5, code=1, gw='{}')/\
         IPerror(src='{}', dst='10.1.2.2')/UDPerror(sport=40000, dport=53)",
        from.eth(&to.mac),
        from.v4,
        to.v4,
        from.v4,
        to.v4
    )
}

fn dhcp_offer(from: &Node, client: &Node) -> String {
    format!(
        "{}/IP(src='{src}', dst='255.255.255.255')/UDP(sport=67, dport=68)/\
         BOOTP(op=2, yiaddr='{yi}', siaddr='{src}', chaddr=mac2str('{cm}'), xid=0x150150)/\
         DHCP(options=[('message-type', 'offer'), ('server_id', '{src}'), \
         ('subnet_mask', '255.255.255.0'), 'end'])",
        from.eth("ff:ff:ff:ff:ff:ff"),
        src = from.v4,
        yi = client
            .v4
            .rsplit_once('.')
            .map(|(p, _)| format!("{p}.50"))
            .unwrap(),
        cm = client.mac
    )
}

fn dhcp6_advertise(from: &Node, client: &Node) -> String {
    format!(
        "{}/IPv6(src='{}', dst='{}')/UDP(sport=547, dport=546)/DHCP6_Advertise(trid=0x1501)",
        from.eth(&client.mac),
        from.ll,
        client.ll
    )
}

/// Case 5: router advertisements, redirects and DHCP/DHCPv6 server messages only from a
/// segment that allows them.
#[test]
fn router_and_dhcp_server_guards() {
    let env = Env::start("guard-ra", "enforce");
    let (w1, w2, w3, gw1, gw2) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("gw1"),
        env.node("gw2"),
    );
    let mut bad = Vec::new();
    // The gw segment allows both: its messages arrive (and prove the captures work).
    let mut sg = env.scapy("gw1");
    fire_all(
        &env,
        &mut sg,
        &[
            shot(
                "router advertisement (allowed segment)",
                gw1,
                gw2,
                router_advertisement(gw1, "fd00:1:3::"),
                Expect::Delivered,
            ),
            shot(
                "IPv6 redirect (allowed segment)",
                gw1,
                gw2,
                redirect6(gw1, gw2),
                Expect::Delivered,
            ),
            shot(
                "ICMPv4 redirect (allowed segment)",
                gw1,
                gw2,
                redirect4(gw1, gw2),
                Expect::Delivered,
            ),
            shot(
                "DHCPOFFER (allowed segment)",
                gw1,
                gw2,
                dhcp_offer(gw1, gw2),
                Expect::Delivered,
            ),
            shot(
                "DHCPv6 Advertise (allowed segment)",
                gw1,
                gw2,
                dhcp6_advertise(gw1, gw2),
                Expect::Delivered,
            ),
        ],
        &mut bad,
    );
    // Control for the fragment cases below: a fragmented RA from the allowed segment
    // passes whole.
    for (k, f) in ra_fragments(&mut sg, gw1, 0x4301).iter().enumerate() {
        let what = format!("fragmented router advertisement, fragment {k} (allowed segment)");
        bad.extend(
            shot(&what, gw1, gw2, String::new(), Expect::Delivered).fire_bytes(&env, &mut sg, f),
        );
    }
    drop(sg);
    for (sender, n) in [(w1, 2usize), (w2, 1)] {
        let mut s = env.scapy(sender.name);
        fire_all(
            &env,
            &mut s,
            &[
                shot(
                    "router advertisement",
                    sender,
                    w3,
                    router_advertisement(sender, "fd00:1:1::"),
                    Expect::Dropped("ra_guard"),
                )
                .times(n),
                shot(
                    "IPv6 redirect",
                    sender,
                    w3,
                    redirect6(sender, w3),
                    Expect::Dropped("ra_guard"),
                ),
                shot(
                    "ICMPv4 redirect",
                    sender,
                    w3,
                    redirect4(sender, w3),
                    Expect::Dropped("ra_guard"),
                ),
                shot(
                    "DHCPOFFER from UDP 67",
                    sender,
                    w3,
                    dhcp_offer(sender, w3),
                    Expect::Dropped("dhcp_guard"),
                )
                .times(n),
                shot(
                    "DHCPACK unicast from UDP 67",
                    sender,
                    w3,
                    format!(
                        "{}/IP(src='{s}', dst='{c}')/UDP(sport=67, dport=68)/\
                         BOOTP(op=2, yiaddr='{c}', chaddr=mac2str('{cm}'), xid=0x150151)/\
                         DHCP(options=[('message-type', 'ack'), ('server_id', '{s}'), 'end'])",
                        sender.eth(&w3.mac),
                        s = sender.v4,
                        c = w3.v4,
                        cm = w3.mac
                    ),
                    Expect::Dropped("dhcp_guard"),
                ),
                shot(
                    "DHCPv6 Advertise from UDP 547",
                    sender,
                    w3,
                    dhcp6_advertise(sender, w3),
                    Expect::Dropped("dhcp_guard"),
                ),
                shot(
                    "DHCPv6 Reply from UDP 547 to a global address",
                    sender,
                    w3,
                    format!(
                        "{}/IPv6(src='{}', dst='{}')/UDP(sport=547, dport=546)/DHCP6_Reply(trid=0x1502)",
                        sender.eth(&w3.mac),
                        sender.v6,
                        w3.v6
                    ),
                    Expect::Dropped("dhcp_guard"),
                ),
                // Client messages are not affected.
                shot(
                    "DHCPv6 Solicit from UDP 546 (client, control)",
                    sender,
                    w3,
                    format!(
                        "{}/IPv6(src='{}', dst='ff02::1:2')/UDP(sport=546, dport=547)/DHCP6_Solicit(trid=0x1503)",
                        sender.eth("33:33:00:01:00:02"),
                        sender.ll
                    ),
                    Expect::Delivered,
                ),
            ],
            &mut bad,
        );
    }
    // Evasions: an RA behind an extension header, fragmented, or with its ICMPv6 header
    // pushed into a later fragment (RFC 7113).
    let mut s1 = env.scapy("web1");
    bad.extend(
        shot(
            "router advertisement behind a destination options header",
            w1,
            w3,
            format!(
                "{}/IPv6(src='{}', dst='ff02::1', hlim=255)/IPv6ExtHdrDestOpt()/ICMPv6ND_RA(routerlifetime=1800)",
                w1.eth("33:33:00:00:00:01"),
                w1.ll
            ),
            Expect::Dropped("ra_guard"),
        )
        .fire(&env, &mut s1)
        .0,
    );
    let frags = ra_fragments(&mut s1, w1, 0x4302);
    bad.extend(
        shot(
            "fragmented router advertisement, first fragment",
            w1,
            w3,
            String::new(),
            Expect::Dropped("ra_guard"),
        )
        .fire_bytes(&env, &mut s1, &frags[0]),
    );
    for f in &frags[1..] {
        bad.extend(
            shot(
                "fragmented router advertisement, later fragment",
                w1,
                w3,
                String::new(),
                Expect::Dropped("fragment"),
            )
            .fire_bytes(&env, &mut s1, f),
        );
    }
    let hidden = |offset_part: &str| {
        format!(
            "{}/IPv6(src='{}', dst='ff02::1', hlim=255)/{offset_part}",
            w1.eth("33:33:00:00:00:01"),
            w1.ll
        )
    };
    fire_all(
        &env,
        &mut s1,
        &[
            shot(
                "RA header pushed into the 2nd fragment: 1st fragment (extension header only)",
                w1,
                w3,
                hidden(
                    "IPv6ExtHdrFragment(nh=60, m=1, offset=0, id=0x4303)/\
                     IPv6ExtHdrDestOpt(nh=58, options=[PadN(optdata=b'\\x00' * 12)])",
                ),
                Expect::Dropped("fragment"),
            ),
            shot(
                "RA header pushed into the 2nd fragment: 2nd fragment (the RA)",
                w1,
                w3,
                hidden(
                    "IPv6ExtHdrFragment(nh=60, m=0, offset=2, id=0x4303)/\
                     Raw(load=b'\\x86\\x00' + b'\\x00' * 14)",
                ),
                Expect::Dropped("fragment"),
            ),
        ],
        &mut bad,
    );
    env.verdict("RA and DHCP guards", &bad);
}

/// DHCP server messages to relay agents: BOOTREPLY from UDP 67 to 67, DHCPv6 Relay-reply
/// from 547 to 547. docs/metrics.md defines `dhcp_guard` by the source port ("a DHCP (UDP
/// source port 67) or DHCPv6 (547) server message"), and a rogue server behind a relay
/// agent sends exactly these.
#[test]
fn dhcp_server_messages_to_relays_are_guarded() {
    let env = Env::start("guard-relay", "enforce");
    let (w2, w3, gw1, gw2) = (
        env.node("web2"),
        env.node("web3"),
        env.node("gw1"),
        env.node("gw2"),
    );
    let bootreply_to_relay = |from: &Node, to: &Node| {
        format!(
            "{}/IP(src='{}', dst='{}')/UDP(sport=67, dport=67)/\
             BOOTP(op=2, giaddr='{}', yiaddr='10.1.1.50', xid=0x150152)/\
             DHCP(options=[('message-type', 'offer'), 'end'])",
            from.eth(&to.mac),
            from.v4,
            to.v4,
            to.v4
        )
    };
    let relay_reply = |from: &Node, to: &Node| {
        format!(
            "{}/IPv6(src='{}', dst='{}')/UDP(sport=547, dport=547)/\
             DHCP6_RelayReply(linkaddr='{}', peeraddr='fe80::99')",
            from.eth(&to.mac),
            from.v6,
            to.v6,
            to.v6
        )
    };
    let mut bad = Vec::new();
    let mut sg = env.scapy("gw1");
    fire_all(
        &env,
        &mut sg,
        &[
            shot(
                "BOOTREPLY to a relay, 67 -> 67 (allowed segment)",
                gw1,
                gw2,
                bootreply_to_relay(gw1, gw2),
                Expect::Delivered,
            ),
            shot(
                "DHCPv6 Relay-reply, 547 -> 547 (allowed segment)",
                gw1,
                gw2,
                relay_reply(gw1, gw2),
                Expect::Delivered,
            ),
        ],
        &mut bad,
    );
    let mut s2 = env.scapy("web2");
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "BOOTREPLY to a relay, 67 -> 67",
                w2,
                w3,
                bootreply_to_relay(w2, w3),
                Expect::Dropped("dhcp_guard"),
            ),
            shot(
                "DHCPv6 Relay-reply, 547 -> 547",
                w2,
                w3,
                relay_reply(w2, w3),
                Expect::Dropped("dhcp_guard"),
            ),
        ],
        &mut bad,
    );
    env.verdict("DHCP relay guard", &bad);
}

/// DHCP answers to the client ports from another source port. Common clients (ISC
/// dhclient's and systemd-networkd's packet-socket filters) match only the destination port
/// 68, and DHCPv6 clients read their bound port 546 from any source: a rogue server that
/// answers from, say, UDP 6767 reaches them unless the guard also covers the client ports.
#[test]
fn dhcp_answers_to_client_ports_from_other_source_ports_are_guarded() {
    let env = Env::start("guard-dhcpport", "enforce");
    let (w2, w3, gw1, gw2) = (
        env.node("web2"),
        env.node("web3"),
        env.node("gw1"),
        env.node("gw2"),
    );
    let offer = |from: &Node, to: &Node| {
        format!(
            "{}/IP(src='{}', dst='255.255.255.255')/UDP(sport=6767, dport=68)/\
             BOOTP(op=2, yiaddr='{}', siaddr='{}', chaddr=mac2str('{}'), xid=0x150153)/\
             DHCP(options=[('message-type', 'offer'), ('server_id', '{}'), 'end'])",
            from.eth("ff:ff:ff:ff:ff:ff"),
            from.v4,
            to.v4,
            from.v4,
            to.mac,
            from.v4
        )
    };
    let advertise = |from: &Node, to: &Node| {
        format!(
            "{}/IPv6(src='{}', dst='{}')/UDP(sport=6767, dport=546)/DHCP6_Advertise(trid=0x1504)",
            from.eth(&to.mac),
            from.ll,
            to.ll
        )
    };
    let mut bad = Vec::new();
    let mut sg = env.scapy("gw1");
    fire_all(
        &env,
        &mut sg,
        &[
            shot(
                "DHCPOFFER from UDP 6767 to 68 (allowed segment)",
                gw1,
                gw2,
                offer(gw1, gw2),
                Expect::Delivered,
            ),
            shot(
                "DHCPv6 Advertise from UDP 6767 to 546 (allowed segment)",
                gw1,
                gw2,
                advertise(gw1, gw2),
                Expect::Delivered,
            ),
        ],
        &mut bad,
    );
    let mut s2 = env.scapy("web2");
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "DHCPOFFER from UDP 6767 to 68",
                w2,
                w3,
                offer(w2, w3),
                Expect::Dropped("dhcp_guard"),
            ),
            shot(
                "DHCPv6 Advertise from UDP 6767 to 546",
                w2,
                w3,
                advertise(w2, w3),
                Expect::Dropped("dhcp_guard"),
            ),
        ],
        &mut bad,
    );
    env.verdict("DHCP client-port guard", &bad);
}

/// Case 6: 802.1Q tags only with a listed VLAN id; stacked tags never.
#[test]
fn vlan_tags_only_as_declared_and_never_stacked() {
    let env = Env::start("guard-vlan", "enforce");
    let (w1, w2, w3, gw1, gw2) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("gw1"),
        env.node("gw2"),
    );
    // A frame tagged 100 that passes is delivered to web2's VLAN 100 subinterface; where
    // the kernel has no 802.1Q support (no `vlan` link type) web2's eth0 is captured instead
    // (the tag then travels as metadata and the packet socket sees the untagged frame).
    let vlan_if: &'static str = match ip_n(
        &w2.ns,
        &[
            "link", "add", "link", "eth0", "name", "eth0.100", "type", "vlan", "id", "100",
        ],
    ) {
        Ok(_) => {
            ip_n(&w2.ns, &["link", "set", "eth0.100", "up"]).unwrap();
            "eth0.100"
        }
        Err(e) => {
            eprintln!("no VLAN subinterface ({e:#}); capturing VLAN 100 on web2's eth0");
            "eth0"
        }
    };
    let tagged = |from: &Node, to: &Node, tags: &str, marker: &str| {
        format!(
            "{}/{tags}/IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'{marker}')",
            from.eth(&to.mac),
            from.v4,
            to.v4
        )
    };
    let mut bad = Vec::new();
    let mut s1 = env.scapy("web1");
    fire_all(
        &env,
        &mut s1,
        &[
            shot(
                "untagged (control)",
                w1,
                w2,
                udp4(w1, &w1.v4, w2, &w2.v4, "vlan-none"),
                Expect::Delivered,
            ),
            shot(
                "tag 100, listed for the interface",
                w1,
                w2,
                tagged(w1, w2, "Dot1Q(vlan=100)", "vlan-100"),
                Expect::Delivered,
            )
            .on(vlan_if),
            shot(
                "tag 100 with another VM's IPv4 as source",
                w1,
                w2,
                format!(
                    "{}/Dot1Q(vlan=100)/IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'vlan-100-spoof')",
                    w1.eth(&w2.mac),
                    w3.v4,
                    w2.v4
                ),
                Expect::Dropped("spoofed_ip"),
            ),
            shot(
                "tag 100, gratuitous ARP for web3's address",
                w1,
                w2,
                format!(
                    "{}/Dot1Q(vlan=100)/ARP(op=1, hwsrc='{m}', psrc='{ip}', pdst='{ip}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    m = w1.mac,
                    ip = w3.v4
                ),
                Expect::Dropped("arp_spoof"),
            ),
            shot(
                "tag 200, not listed",
                w1,
                w2,
                tagged(w1, w2, "Dot1Q(vlan=200)", "vlan-200"),
                Expect::Dropped("vlan"),
            )
            .times(2),
            shot(
                "priority tag (VLAN id 0), not listed",
                w1,
                w2,
                tagged(w1, w2, "Dot1Q(vlan=0)", "vlan-0"),
                Expect::Dropped("vlan"),
            ),
            shot(
                "802.1ad 100 + 802.1Q 100 (stacked)",
                w1,
                w2,
                format!(
                    "Ether(src='{}', dst='{}', type=0x88a8)/Dot1Q(vlan=100, type=0x8100)/Dot1Q(vlan=100)/\
                     IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'vlan-qinq-ad')",
                    w1.mac, w2.mac, w1.v4, w2.v4
                ),
                Expect::Dropped("vlan"),
            ),
            shot(
                "802.1Q 100 + 802.1Q 100 (QinQ 0x8100/0x8100)",
                w1,
                w2,
                tagged(w1, w2, "Dot1Q(vlan=100)/Dot1Q(vlan=100)", "vlan-qinq-q"),
                Expect::Dropped("vlan"),
            ),
        ],
        &mut bad,
    );
    drop(s1);
    // gw2's interface lists no VLAN at all.
    let mut sg = env.scapy("gw2");
    fire_all(
        &env,
        &mut sg,
        &[
            shot(
                "untagged (control)",
                gw2,
                gw1,
                udp4(gw2, &gw2.v4, gw1, &gw1.v4, "gw-vlan-none"),
                Expect::Delivered,
            ),
            shot(
                "tag 100 from an interface without vlans",
                gw2,
                gw1,
                tagged(gw2, gw1, "Dot1Q(vlan=100)", "gw-vlan-100"),
                Expect::Dropped("vlan"),
            ),
        ],
        &mut bad,
    );
    env.verdict("VLAN guard", &bad);
}

/// Case 7, headers: malformed IPv4, IP options, IPv6 extension header chains.
#[test]
fn malformed_and_evasive_headers_are_dropped() {
    let env = Env::start("guard-malformed", "enforce");
    let (w1, w3) = (env.node("web1"), env.node("web3"));
    let eth = w1.eth(&w3.mac);
    let ip = format!("src='{}', dst='{}'", w1.v4, w3.v4);
    let ip6 = format!("src='{}', dst='{}'", w1.v6, w3.v6);
    let udp = "UDP(sport=40000, dport=9)";
    let mut bad = Vec::new();
    let mut s = env.scapy("web1");
    let d = |what, expr: String, reason| shot(what, w1, w3, expr, Expect::Dropped(reason));
    let ok = |what, expr: String| shot(what, w1, w3, expr, Expect::Delivered);
    fire_all(
        &env,
        &mut s,
        &[
            ok("well-formed UDP (control)", format!("{eth}/IP({ip})/{udp}/Raw(load=b'mal-ok')")),
            d(
                "IPv4 header cut after 10 bytes",
                format!("Ether(src='{}', dst='{}', type=0x0800)/Raw(load=bytes(IP({ip})/{udp})[:10])", w1.mac, w3.mac),
                "malformed",
            ),
            d("IHL 4 (16-byte header)", format!("{eth}/IP({ip}, ihl=4)/{udp}/Raw(load=b'mal-ihl4')"), "malformed"),
            d(
                "IHL 15, beyond the datagram",
                format!("{eth}/IP({ip}, ihl=15)/{udp}/Raw(load=b'mal-ihl15')"),
                "malformed",
            ),
            d(
                "IHL 15 and total length 60, beyond the frame",
                format!("{eth}/IP({ip}, ihl=15, len=60)/{udp}/Raw(load=b'mal-ihl15b')"),
                "malformed",
            ),
            d(
                "total length beyond the frame",
                format!("{eth}/IP({ip}, len=1000)/{udp}/Raw(load=b'mal-len1000')"),
                "malformed",
            ),
            d(
                "total length shorter than the header",
                format!("{eth}/IP({ip}, len=12)/{udp}/Raw(load=b'mal-len12')"),
                "malformed",
            ),
            d(
                "IPv4 version 6 in an IPv4 EtherType",
                format!("{eth}/IP({ip}, version=6)/{udp}/Raw(load=b'mal-ver6')"),
                "malformed",
            ),
            d(
                "record route option",
                format!("{eth}/IP({ip}, options=[IPOption_RR(routers=['0.0.0.0'])])/{udp}/Raw(load=b'opt-rr')"),
                "ip_options",
            )
            .times(2),
            d(
                "router alert followed by record route",
                format!(
                    "{eth}/IP({ip}, options=[IPOption_Router_Alert(), IPOption_RR(routers=['0.0.0.0'])])/{udp}/Raw(load=b'opt-ra-rr')"
                ),
                "ip_options",
            ),
            d(
                "loose source route option",
                format!("{eth}/IP({ip}, options=[IPOption_LSRR(routers=['{}'])])/{udp}/Raw(load=b'opt-lsrr')", w3.v4),
                "ip_options",
            ),
            ok(
                "a lone router alert option",
                format!("{eth}/IP({ip}, options=[IPOption_Router_Alert()])/{udp}/Raw(load=b'opt-ra')"),
            ),
            ok(
                "IPv6 with 4 extension headers",
                format!("{eth}/IPv6({ip6})/{}{udp}/Raw(load=b'ext-4')", "IPv6ExtHdrDestOpt()/".repeat(4)),
            ),
            d(
                "IPv6 with 5 extension headers",
                format!("{eth}/IPv6({ip6})/{}{udp}/Raw(load=b'ext-5')", "IPv6ExtHdrDestOpt()/".repeat(5)),
                "ipv6_extensions",
            ),
            d(
                "IPv6 with 8 extension headers",
                format!(
                    "{eth}/IPv6({ip6})/IPv6ExtHdrHopByHop()/{}IPv6ExtHdrRouting()/{udp}/Raw(load=b'ext-8')",
                    "IPv6ExtHdrDestOpt()/".repeat(6)
                ),
                "ipv6_extensions",
            ),
            d(
                "IPv6 header cut after 20 bytes",
                format!("Ether(src='{}', dst='{}', type=0x86dd)/Raw(load=bytes(IPv6({ip6})/{udp})[:20])", w1.mac, w3.mac),
                "malformed",
            ),
            d(
                "IPv6 payload length beyond the frame",
                format!("{eth}/IPv6({ip6}, plen=500)/{udp}/Raw(load=b'mal-plen')"),
                "malformed",
            ),
        ],
        &mut bad,
    );
    env.verdict("malformed and evasive headers", &bad);
}

/// A UDP socket bound to `addr:port` in `ns`; stays in that namespace.
fn udp_listener(ns: &str, addr: &str, port: u16) -> UdpSocket {
    let sa = SocketAddr::new(addr.parse::<IpAddr>().unwrap(), port);
    in_netns(ns, || {
        let s = UdpSocket::bind(sa)?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        Ok(s)
    })
    .unwrap_or_else(|e| panic!("UDP listener {sa} in {ns}: {e:#}"))
}

/// Every datagram the socket received (until it is quiet for its read timeout).
fn received(sock: &UdpSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// Case 7, fragments: within a segment a fragmented datagram passes whole and is
/// reassembled; a later fragment alone, or one whose first was dropped, never passes; a
/// first fragment must hold the whole transport header.
#[test]
fn fragments_pass_only_with_their_first() {
    let env = Env::start("guard-frag", "enforce");
    let (w1, w3, db) = (env.node("web1"), env.node("web3"), env.node("db1"));
    let mut bad = Vec::new();
    let mut s = env.scapy("web1");

    // The frames (Ethernet included) of a fragmented UDP datagram with about 100 bytes of
    // payload, `marker-` repeated.
    let mut frags = |v6: bool, to: &Node, id: u32, port: u16, marker: &str| -> Vec<Vec<u8>> {
        let payload = format!("{marker}-").repeat(96 / (marker.len() + 1) + 1);
        let expr = if v6 {
            format!(
                "[{}/f for f in fragment6(IPv6(src='{}', dst='{}')/IPv6ExtHdrFragment(id={id})/\
                 UDP(sport=40000, dport={port})/Raw(load=b'{payload}'), 104)]",
                w1.eth(&to.mac),
                w1.v6,
                to.v6
            )
        } else {
            format!(
                "[{}/f for f in fragment(IP(src='{}', dst='{}', id={id})/\
                 UDP(sport=40000, dport={port})/Raw(load=b'{payload}'), fragsize=56)]",
                w1.eth(&to.mac),
                w1.v4,
                to.v4
            )
        };
        let f = s.build_list(&expr).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(f.len() >= 2, "{expr} gave {} fragments", f.len());
        f
    };
    let mut all = Vec::new();
    for (v6, fam) in [(false, "IPv4"), (true, "IPv6")] {
        let (w3_addr, db_addr) = if v6 {
            (&w3.v6, &db.v6)
        } else {
            (&w3.v4, &db.v4)
        };
        all.push((
            fam,
            frags(v6, w3, 0x4201, 7001, "same"),
            frags(v6, w3, 0x4202, 7001, "alone"),
            frags(v6, db, 0x4203, 7001, "cross"),
            w3_addr.clone(),
            db_addr.clone(),
        ));
    }
    for (fam, same, alone, cross, w3_addr, db_addr) in &all {
        // Within the segment: first and later fragments pass, the target reassembles.
        let sock = udp_listener(&w3.ns, w3_addr, 7001);
        let what_first = format!("{fam} first fragment, same segment");
        let what_later = format!("{fam} later fragment, same segment");
        bad.extend(
            shot(&what_first, w1, w3, String::new(), Expect::Delivered)
                .fire_bytes(&env, &mut s, &same[0]),
        );
        for f in &same[1..] {
            bad.extend(
                shot(&what_later, w1, w3, String::new(), Expect::Delivered)
                    .fire_bytes(&env, &mut s, f),
            );
        }
        let got = received(&sock);
        if got.len() != 1 || !got[0].starts_with(b"same-") {
            bad.push(format!(
                "[{fam} fragmented datagram within the segment] web3 must receive it reassembled \
                 once, got {} datagram(s): {:?}",
                got.len(),
                got.iter()
                    .map(|d| String::from_utf8_lossy(d).into_owned())
                    .collect::<Vec<_>>()
            ));
        }
        // A later fragment without its first.
        let what = format!("{fam} later fragment without its first");
        bad.extend(
            shot(&what, w1, w3, String::new(), Expect::Dropped("fragment"))
                .fire_bytes(&env, &mut s, &alone[1]),
        );
        let got = received(&sock);
        if !got.is_empty() {
            bad.push(format!("[{what}] web3 received {} datagram(s)", got.len()));
        }
        // Across segments: the first is judged (cross_segment), the later has no first.
        let sock = udp_listener(&db.ns, db_addr, 7001);
        let what_first = format!("{fam} first fragment to another segment");
        let what_later = format!("{fam} later fragment to another segment");
        bad.extend(
            shot(
                &what_first,
                w1,
                db,
                String::new(),
                Expect::Dropped("cross_segment"),
            )
            .fire_bytes(&env, &mut s, &cross[0]),
        );
        for f in &cross[1..] {
            bad.extend(
                shot(
                    &what_later,
                    w1,
                    db,
                    String::new(),
                    Expect::Dropped("fragment"),
                )
                .fire_bytes(&env, &mut s, f),
            );
        }
        let got = received(&sock);
        if !got.is_empty() {
            bad.push(format!(
                "[{fam} fragmented datagram to another segment] db1 received {} datagram(s)",
                got.len()
            ));
        }
    }

    // TCP: a first fragment too short for the TCP header; a fragment 8 bytes in (over the
    // flags) after a proper first, while the proper later fragment of the same datagram
    // passes.
    let ip = format!("src='{}', dst='{}'", w1.v4, w3.v4);
    let eth = w1.eth(&w3.mac);
    fire_all(
        &env,
        &mut s,
        &[
            shot(
                "TCP first fragment with 8 bytes of TCP header",
                w1,
                w3,
                format!(
                    "{eth}/IP({ip}, id=0x4210, flags='MF', frag=0, proto=6)/Raw(load=bytes(TCP(sport=40000, dport=80, flags='S'))[:8])"
                ),
                Expect::Dropped("fragment"),
            ),
            shot(
                "TCP first fragment with the whole header",
                w1,
                w3,
                format!(
                    "{eth}/IP({ip}, id=0x4211, flags='MF', frag=0)/TCP(sport=40000, dport=80, flags='S')/Raw(load=b'x' * 12)"
                ),
                Expect::Delivered,
            ),
            shot(
                "TCP fragment at offset 8 bytes (over the flags)",
                w1,
                w3,
                format!(
                    "{eth}/IP({ip}, id=0x4211, flags='MF', frag=1, proto=6)/Raw(load=b'\\x00' * 24)"
                ),
                Expect::Dropped("fragment"),
            ),
            shot(
                "TCP later fragment at offset 32 bytes",
                w1,
                w3,
                format!("{eth}/IP({ip}, id=0x4211, frag=4, proto=6)/Raw(load=b'y' * 16)"),
                Expect::Delivered,
            ),
            shot(
                "UDP first fragment with 4 bytes of UDP header",
                w1,
                w3,
                format!(
                    "{eth}/IP({ip}, id=0x4212, flags='MF', frag=0, proto=17)/Raw(load=bytes(UDP(sport=40000, dport=9))[:4])"
                ),
                Expect::Dropped("fragment"),
            ),
        ],
        &mut bad,
    );
    env.verdict("fragments", &bad);
}

/// Case 8: what a well-behaved VM's own stack does keeps working through the guards: DHCP
/// discovery, duplicate address detection, ARP and neighbour discovery, link-local.
#[test]
fn legitimate_traffic_keeps_working() {
    let env = Env::start("guard-legit", "enforce");
    let (w1, w2, w3, gw1, gw2) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("gw1"),
        env.node("gw2"),
    );
    let watched = [w1, w2, w3, gw1, gw2];
    let before = env.metrics();
    let mut bad = Vec::new();

    // DHCP discovery reaches the segment's DHCP server VM.
    let mut sc = env.scapy("gw2");
    bad.extend(
        shot(
            "DHCPDISCOVER to the segment's server",
            gw2,
            gw1,
            dhcp_discover(gw2),
            Expect::Delivered,
        )
        .fire(&env, &mut sc)
        .0,
    );
    drop(sc);

    // ARP and IPv4 within the segment, from empty neighbour caches.
    for n in [w1, w2, w3] {
        ip_n(&n.ns, &["neigh", "flush", "dev", "eth0"]).unwrap();
    }
    for (a, b) in [(w1, w2), (w2, w1), (w3, w1)] {
        if !ping(&a.vm(), b.v4.parse().unwrap()).unwrap() {
            bad.push(format!(
                "ping {} -> {} ({}) after flushing the ARP caches failed",
                a.name, b.name, b.v4
            ));
        }
        if neigh_mac(&a.ns, &b.v4).as_deref() != Some(b.mac.as_str()) {
            bad.push(format!(
                "{} resolved {} to {:?}, expected {}",
                a.name,
                b.v4,
                neigh_mac(&a.ns, &b.v4),
                b.mac
            ));
        }
    }
    // IPv6 neighbour discovery, global and link-local.
    for n in [w1, w2, w3] {
        ip_n(&n.ns, &["-6", "neigh", "flush", "dev", "eth0"]).unwrap();
    }
    for (a, b) in [(w1, w2), (w2, w1), (w3, w1)] {
        let ok = ping_count(
            &a.ns,
            b.v6.parse().unwrap(),
            1,
            Duration::ZERO,
            Duration::from_secs(2),
        )
        .unwrap()
            == 1;
        if !ok {
            bad.push(format!(
                "ping6 {} -> {} ({}) after flushing the neighbour caches failed",
                a.name, b.name, b.v6
            ));
        }
    }
    for (a, b) in [(w1, w2), (w2, w1), (w3, w1)] {
        let target = format!("{}%eth0", b.ll);
        let out = env
            .lab
            .exec(&a.ns, &["ping", "-6", "-c", "1", "-W", "2", &target])
            .unwrap();
        if !out.status.success() {
            bad.push(format!(
                "link-local ping {} -> {} ({target}) failed: {}{}",
                a.name,
                b.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    // Duplicate address detection: web2 adds an address WITH DAD. Its solicitation from ::
    // reaches web3 and the address becomes valid; an address web3 already holds fails DAD,
    // which needs web3's answer to come back through the guard too.
    sysctl(&w2.ns, "net.ipv6.conf.eth0.accept_dad", "1").unwrap();
    let fresh = "fd00:1:1::22";
    let cap = Capture::start(&w3.ns, "eth0").unwrap();
    ip_n(
        &w2.ns,
        &["-6", "addr", "add", &format!("{fresh}/64"), "dev", "eth0"],
    )
    .unwrap();
    let state = wait_dad(&w2.ns, fresh);
    let frames = cap.stop().unwrap();
    if state != "valid" {
        bad.push(format!("DAD of {fresh} on web2 did not complete: {state}"));
    }
    let (_, group_mac) = solicited_node(fresh);
    let fresh_ip: Ipv6Addr = fresh.parse().unwrap();
    let saw_ns = frames.iter().any(|f| {
        f.len() >= 78
            && fmt_mac(&f[0..6]) == group_mac
            && fmt_mac(&f[6..12]) == w2.mac
            && f[22..38] == [0u8; 16]
            && f[54] == 135
            && f[62..78] == fresh_ip.octets()
    });
    if !saw_ns {
        bad.push(format!(
            "web3 never received web2's DAD solicitation from :: for {fresh}; it got:\n  {}",
            frames
                .iter()
                .map(|f| describe_frame(f))
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    ip_n(
        &w2.ns,
        &["-6", "addr", "add", &format!("{}/64", w3.v6), "dev", "eth0"],
    )
    .unwrap();
    let state = wait_dad(&w2.ns, &w3.v6);
    if state != "dadfailed" {
        bad.push(format!(
            "web2 added web3's address {} with DAD: expected `dadfailed` (web3 defends it), got {state}",
            w3.v6
        ));
    }
    let _ = ip_n(
        &w2.ns,
        &["-6", "addr", "del", &format!("{}/64", w3.v6), "dev", "eth0"],
    );

    // None of this was dropped anywhere on ingress.
    let after = env.metrics();
    for n in watched {
        let d = delta(
            &ingress_drops(&before, &n.vif),
            &ingress_drops(&after, &n.vif),
        );
        if !d.is_empty() {
            bad.push(format!(
                "legitimate traffic was dropped at {} (ingress): {}",
                n.vif,
                fmt_delta(&d)
            ));
        }
    }
    env.verdict("legitimate traffic", &bad);
}

/// Waits up to 5 s for DAD of `addr` on eth0 in `ns`: "valid", "dadfailed", or what it
/// last looked like.
fn wait_dad(ns: &str, addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = ip_n(ns, &["-6", "-o", "addr", "show", "dev", "eth0"]).unwrap_or_default();
        let line = out
            .lines()
            .find(|l| l.contains(&format!(" {addr}/")))
            .unwrap_or("")
            .to_string();
        if line.contains("dadfailed") {
            return "dadfailed".into();
        }
        if !line.is_empty() && !line.contains("tentative") {
            return "valid".into();
        }
        if Instant::now() > deadline {
            return format!("still {line:?} after 5 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The identity checks and guards hold in audit mode too (docs/policy.md, "Mode"): only the
/// rules between segments are audited.
#[test]
fn guards_are_enforced_in_audit_mode() {
    let env = Env::start("guard-audit", "audit");
    let (w1, w2, w3, db) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("db1"),
    );
    let mut bad = Vec::new();
    let mut s = env.scapy("web1");
    let before = env.metrics();
    fire_all(
        &env,
        &mut s,
        &[
            shot(
                "another VM's MAC",
                w1,
                w3,
                format!(
                    "Ether(src='{}', dst='{}')/IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'aud-mac')",
                    w2.mac, w3.mac, w1.v4, w3.v4
                ),
                Expect::Dropped("spoofed_mac"),
            ),
            shot(
                "another VM's IPv4",
                w1,
                w3,
                udp4(w1, &w2.v4, w3, &w3.v4, "aud-ip"),
                Expect::Dropped("spoofed_ip"),
            ),
            shot(
                "gratuitous ARP for web2's address",
                w1,
                w3,
                format!(
                    "{}/ARP(op=1, hwsrc='{m}', psrc='{ip}', pdst='{ip}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    m = w1.mac,
                    ip = w2.v4
                ),
                Expect::Dropped("arp_spoof"),
            ),
            shot(
                "NA for web2's address",
                w1,
                w3,
                na(
                    w1,
                    ("ff02::1", "33:33:00:00:00:01"),
                    &w1.v6,
                    &w2.v6,
                    &w1.mac,
                ),
                Expect::Dropped("nd_spoof"),
            ),
            shot(
                "router advertisement",
                w1,
                w3,
                router_advertisement(w1, "fd00:1:1::"),
                Expect::Dropped("ra_guard"),
            ),
            shot(
                "DHCPOFFER",
                w1,
                w3,
                dhcp_offer(w1, w3),
                Expect::Dropped("dhcp_guard"),
            ),
            shot(
                "tag 200",
                w1,
                w3,
                format!(
                    "{}/Dot1Q(vlan=200)/IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'aud-vlan')",
                    w1.eth(&w3.mac),
                    w1.v4,
                    w3.v4
                ),
                Expect::Dropped("vlan"),
            ),
            shot(
                "record route option",
                w1,
                w3,
                format!(
                    "{}/IP(src='{}', dst='{}', options=[IPOption_RR(routers=['0.0.0.0'])])/UDP(sport=40000, dport=9)/Raw(load=b'aud-rr')",
                    w1.eth(&w3.mac),
                    w1.v4,
                    w3.v4
                ),
                Expect::Dropped("ip_options"),
            ),
        ],
        &mut bad,
    );
    let mid = env.metrics();
    if audits(&mid, &w1.vif) != audits(&before, &w1.vif) {
        bad.push(format!(
            "guard drops were counted as audit verdicts on {}: {AUDIT_PKTS} went from {} to {}",
            w1.vif,
            audits(&before, &w1.vif),
            audits(&mid, &w1.vif)
        ));
    }
    // Proof that the segment really is in audit mode: a cross-segment datagram is audited
    // and passed by the sender's vif.
    let frame = s.build(&udp4(w1, &w1.v4, db, &db.v4, "aud-cross")).unwrap();
    s.send_bytes(&frame, 1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let after = env.metrics();
    let audited = after.get(
        AUDIT_PKTS,
        &[
            ("device", &w1.vif),
            ("tenant", TENANT),
            ("segment", "web"),
            ("direction", "ingress"),
            ("reason", "cross_segment"),
        ],
    );
    let was = mid.sum(
        AUDIT_PKTS,
        &[
            ("device", &w1.vif),
            ("direction", "ingress"),
            ("reason", "cross_segment"),
        ],
    );
    if audited.unwrap_or(0.0) - was != 1.0 {
        bad.push(format!(
            "[control] web1 -> db1 in audit mode must be one audited cross_segment on {}, \
             got {audited:?} (was {was}): the audit mode of the web segment is not in effect",
            w1.vif
        ));
    }
    env.verdict("guards in audit mode", &bad);
}

/// A declared identity is reserved: web2, a member of web that declares nothing, may not
/// send with web1's declared MAC, with an address web1 declared (IPv4, IPv6, its
/// link-local), nor claim one of them in ARP or in a neighbour advertisement; its own MAC
/// and its own (undeclared) addresses keep working, and so does web1, the owner.
#[test]
fn an_undeclared_vm_cannot_use_a_declared_identity() {
    let env = Env::start("guard-reserved", "enforce");
    let (w1, w2, w3) = (env.node("web1"), env.node("web2"), env.node("web3"));
    let all_nodes = ("ff02::1", "33:33:00:00:00:01");
    let before = env.metrics();
    let mut bad = Vec::new();

    // Case 5, first part: the owner of the identity reaches the observer, IPv4, IPv6 and
    // link-local (which also gives web3 neighbour entries for web1's three addresses,
    // checked against poisoning at the end).
    let owner_reaches_web3 = |when: &str, bad: &mut Vec<String>| {
        for dst in [&w3.v4, &w3.v6] {
            if !ping(&w1.vm(), dst.parse().unwrap()).unwrap() {
                bad.push(format!("[case 5] web1 -> web3 ({dst}) ping {when} failed"));
            }
        }
        let target = format!("{}%eth0", w3.ll);
        let out = env
            .lab
            .exec(&w1.ns, &["ping", "-6", "-c", "1", "-W", "2", &target])
            .unwrap();
        if !out.status.success() {
            bad.push(format!(
                "[case 5] web1 -> web3 link-local ping ({target}) {when} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    };
    owner_reaches_web3("before the spoofing attempts", &mut bad);
    for addr in [&w1.v4, &w1.v6, &w1.ll] {
        let now = neigh_mac(&w3.ns, addr);
        assert_eq!(
            now.as_deref(),
            Some(w1.mac.as_str()),
            "web3 must know web1's {addr} by web1's MAC after the pings"
        );
    }
    // Case 5, second part: web1 sends with its declared MAC and every declared address.
    let mut s1 = env.scapy("web1");
    fire_all(
        &env,
        &mut s1,
        &[
            shot(
                "[case 5] the owner's declared IPv4",
                w1,
                w3,
                udp4(w1, &w1.v4, w3, &w3.v4, "rsv-w1-ip4"),
                Expect::Delivered,
            ),
            shot(
                "[case 5] the owner's declared IPv6",
                w1,
                w3,
                udp6(w1, &w1.v6, w3, &w3.v6, "rsv-w1-ip6"),
                Expect::Delivered,
            ),
            shot(
                "[case 5] the owner's declared link-local",
                w1,
                w3,
                udp6(w1, &w1.ll, w3, &w3.ll, "rsv-w1-ll"),
                Expect::Delivered,
            ),
        ],
        &mut bad,
    );
    drop(s1);

    let mut s2 = env.scapy("web2");
    // Case 1: web1's declared MAC as source.
    let with_mac = |mac: &str, marker: &str| {
        format!(
            "Ether(src='{mac}', dst='{}')/IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'{marker}')",
            w3.mac, w2.v4, w3.v4
        )
    };
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "[case 1] own MAC (twin)",
                w2,
                w3,
                with_mac(&w2.mac, "rsv-mac-own"),
                Expect::Delivered,
            ),
            shot(
                "[case 1] web1's declared MAC, own IPv4",
                w2,
                w3,
                with_mac(&w1.mac, "rsv-mac-web1"),
                Expect::Dropped("spoofed_mac"),
            )
            .times(3),
            shot(
                "[case 1] web1's declared MAC, own IPv6",
                w2,
                w3,
                format!(
                    "Ether(src='{}', dst='{}')/IPv6(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'rsv-mac6-web1')",
                    w1.mac, w3.mac, w2.v6, w3.v6
                ),
                Expect::Dropped("spoofed_mac"),
            ),
            shot(
                "[case 1] ARP request from web1's declared MAC for web2's own address",
                w2,
                w3,
                format!(
                    "Ether(src='{m}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{m}', psrc='{}', pdst='{}')",
                    w2.v4,
                    w3.v4,
                    m = w1.mac
                ),
                Expect::Dropped("spoofed_mac"),
            ),
        ],
        &mut bad,
    );

    // Case 2: web2's own MAC, an address web1 declared as source.
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "[case 2] own IPv4 (twin)",
                w2,
                w3,
                udp4(w2, &w2.v4, w3, &w3.v4, "rsv-ip4-own"),
                Expect::Delivered,
            ),
            shot(
                "[case 2] an undeclared IPv4 of its segment (twin)",
                w2,
                w3,
                udp4(w2, "10.1.1.77", w3, &w3.v4, "rsv-ip4-77"),
                Expect::Delivered,
            ),
            shot(
                "[case 2] web1's declared IPv4",
                w2,
                w3,
                udp4(w2, &w1.v4, w3, &w3.v4, "rsv-ip4-web1"),
                Expect::Dropped("spoofed_ip"),
            )
            .times(2),
            shot(
                "[case 2] own IPv6 (twin)",
                w2,
                w3,
                udp6(w2, &w2.v6, w3, &w3.v6, "rsv-ip6-own"),
                Expect::Delivered,
            ),
            shot(
                "[case 2] web1's declared IPv6",
                w2,
                w3,
                udp6(w2, &w1.v6, w3, &w3.v6, "rsv-ip6-web1"),
                Expect::Dropped("spoofed_ip"),
            )
            .times(2),
            shot(
                "[case 2] own link-local (twin)",
                w2,
                w3,
                udp6(w2, &w2.ll, w3, &w3.ll, "rsv-ll-own"),
                Expect::Delivered,
            ),
            shot(
                "[case 2] web1's declared link-local",
                w2,
                w3,
                udp6(w2, &w1.ll, w3, &w3.ll, "rsv-ll-web1"),
                Expect::Dropped("spoofed_ip"),
            ),
        ],
        &mut bad,
    );

    // Case 3: ARP claiming web1's declared IPv4. Twin first, and proof that an arriving
    // gratuitous ARP does change the observer's cache.
    let garp = |ip: &str| {
        format!(
            "{}/ARP(op=1, hwsrc='{m}', psrc='{ip}', hwdst='00:00:00:00:00:00', pdst='{ip}')",
            w2.eth("ff:ff:ff:ff:ff:ff"),
            m = w2.mac
        )
    };
    set_neigh(&w3.ns, &w2.v4, BOGUS_MAC);
    bad.extend(
        shot(
            "[case 3] gratuitous ARP for its own address (twin)",
            w2,
            w3,
            garp(&w2.v4),
            Expect::Delivered,
        )
        .fire(&env, &mut s2)
        .0,
    );
    let now = neigh_becomes(&w3.ns, &w2.v4, &w2.mac, Duration::from_secs(2));
    if now.as_deref() != Some(w2.mac.as_str()) {
        bad.push(format!(
            "[case 3 twin] web2's gratuitous ARP for {} arrived, yet web3's cache says {now:?} \
             instead of {}: the cache check below would prove nothing",
            w2.v4, w2.mac
        ));
    }
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "[case 3] gratuitous ARP request claiming web1's declared IPv4",
                w2,
                w3,
                garp(&w1.v4),
                Expect::Dropped("arp_spoof"),
            )
            .times(3),
            shot(
                "[case 3] gratuitous ARP reply claiming web1's declared IPv4",
                w2,
                w3,
                format!(
                    "{}/ARP(op=2, hwsrc='{m}', psrc='{ip}', hwdst='{m}', pdst='{ip}')",
                    w2.eth("ff:ff:ff:ff:ff:ff"),
                    m = w2.mac,
                    ip = w1.v4
                ),
                Expect::Dropped("arp_spoof"),
            ),
            shot(
                "[case 3] unicast ARP reply to web3 claiming web1's declared IPv4",
                w2,
                w3,
                format!(
                    "{}/ARP(op=2, hwsrc='{}', psrc='{}', hwdst='{}', pdst='{}')",
                    w2.eth(&w3.mac),
                    w2.mac,
                    w1.v4,
                    w3.mac,
                    w3.v4
                ),
                Expect::Dropped("arp_spoof"),
            ),
            shot(
                "[case 3] ARP request for web3 from its own address (twin)",
                w2,
                w3,
                format!(
                    "{}/ARP(op=1, hwsrc='{}', psrc='{}', pdst='{}')",
                    w2.eth("ff:ff:ff:ff:ff:ff"),
                    w2.mac,
                    w2.v4,
                    w3.v4
                ),
                Expect::Delivered,
            ),
        ],
        &mut bad,
    );

    // Case 4: neighbour advertisements for web1's declared addresses. Twin first, with the
    // same proof that an arriving advertisement changes the observer's cache.
    set_neigh(&w3.ns, &w2.v6, BOGUS_MAC);
    bad.extend(
        shot(
            "[case 4] unsolicited NA for its own address (twin)",
            w2,
            w3,
            na(w2, all_nodes, &w2.v6, &w2.v6, &w2.mac),
            Expect::Delivered,
        )
        .fire(&env, &mut s2)
        .0,
    );
    let now = neigh_becomes(&w3.ns, &w2.v6, &w2.mac, Duration::from_secs(2));
    if now.as_deref() != Some(w2.mac.as_str()) {
        bad.push(format!(
            "[case 4 twin] web2's NA for {} arrived, yet web3's cache says {now:?} instead of \
             {}: the cache check below would prove nothing",
            w2.v6, w2.mac
        ));
    }
    fire_all(
        &env,
        &mut s2,
        &[
            shot(
                "[case 4] unsolicited NA for web1's declared IPv6",
                w2,
                w3,
                na(w2, all_nodes, &w2.v6, &w1.v6, &w2.mac),
                Expect::Dropped("nd_spoof"),
            )
            .times(3),
            shot(
                "[case 4] unicast NA to web3 for web1's declared IPv6",
                w2,
                w3,
                na(w2, (&w3.v6, &w3.mac), &w2.v6, &w1.v6, &w2.mac),
                Expect::Dropped("nd_spoof"),
            ),
            shot(
                "[case 4] unsolicited NA for web1's declared link-local",
                w2,
                w3,
                na(w2, all_nodes, &w2.ll, &w1.ll, &w2.mac),
                Expect::Dropped("nd_spoof"),
            ),
            shot(
                "[case 4] unsolicited NA for its own link-local (twin)",
                w2,
                w3,
                na(w2, all_nodes, &w2.ll, &w2.ll, &w2.mac),
                Expect::Delivered,
            ),
        ],
        &mut bad,
    );
    drop(s2);

    // Cases 3 and 4: the observer still knows web1's addresses by web1's MAC.
    for addr in [&w1.v4, &w1.v6, &w1.ll] {
        let now = neigh_mac(&w3.ns, addr);
        if now.as_deref() != Some(w1.mac.as_str()) {
            bad.push(format!(
                "[cases 3/4] web3's neighbour cache for web1's {addr} was poisoned: {now:?}, \
                 must stay {}",
                w1.mac
            ));
        }
    }
    // Case 5 again: the owner still reaches the observer after the attempts, and none of
    // its own traffic was dropped on ingress during the whole test.
    owner_reaches_web3("after the spoofing attempts", &mut bad);
    let after = env.metrics();
    let d = delta(
        &ingress_drops(&before, &w1.vif),
        &ingress_drops(&after, &w1.vif),
    );
    if !d.is_empty() {
        bad.push(format!(
            "[case 5] the owner's traffic was dropped at {} (ingress): {}",
            w1.vif,
            fmt_delta(&d)
        ));
    }
    env.verdict("declared identity reserved", &bad);
}
