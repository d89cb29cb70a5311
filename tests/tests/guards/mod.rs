//! Invariant I2 and the layer-2 guards, with real crafted frames: scapy, inside a VM's
//! namespace, sends what a misbehaving VM could send (another MAC, another VM's address,
//! gratuitous ARP and neighbour advertisements for other addresses, router advertisements,
//! DHCP server answers, VLAN tags, malformed and evasive IP), and every case asserts two
//! things: the frame is absent at the VM it was aimed at (a raw capture on its `eth0`), and
//! the sender's vif counted exactly that many ingress drops under exactly the expected reason.
//! Each blocked case comes with the same kind of frame sent legitimately, which must arrive:
//! a capture that sees nothing proves nothing otherwise.
//!
//! One module per guard: `spoofing` (source MAC and addresses, declared identities),
//! `neighbours` (ARP and neighbour discovery), `servers` (router advertisements, redirects,
//! DHCP servers), `vlan`, `malformed`, `fragments`, `audit` (guards in audit mode),
//! `legitimate` (what a well-behaved stack does keeps working). This module holds their
//! lab, the shot machinery and the frames several of them send. Needs `/usr/bin/python3`
//! with Debian's `python3-scapy`.
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

mod audit;
mod fragments;
mod legitimate;
mod malformed;
mod neighbours;
mod servers;
mod spoofing;
mod vlan;

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use isolator_tests::frame::{describe, fmt_mac, source_mac};
use isolator_tests::metrics::{DEADLINE, DROP_PACKETS, PASS_PACKETS, poll, reason};
use isolator_tests::net::Capture;
use isolator_tests::netns::{ip_n, sysctl};
use isolator_tests::scapy::Scapy;
use isolator_tests::{Dir, Env, Lab, Scrape, Series, Vm, ping, ping_count};

use crate::common::{ARRIVAL, copies};

pub const TENANT: &str = "acme";

/// One VM of the lab, with everything a scapy expression needs as strings.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: &'static str,
    pub segment: &'static str,
    pub ns: String,
    pub vif: String,
    pub mac: String,
    pub v4: String,
    pub v6: String,
    /// Its IPv6 link-local address, as the kernel configured it.
    pub ll: String,
}

impl Node {
    pub fn vm(&self) -> Vm {
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
    pub fn eth(&self, dst: &str) -> String {
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

/// The guards' lab under its policy (the fixture), and its VMs as [`Node`]s.
pub struct Guards {
    env: Env<Lab>,
    nodes: Vec<Node>,
    policy: String,
}

impl std::ops::Deref for Guards {
    type Target = Env<Lab>;
    fn deref(&self) -> &Env<Lab> {
        &self.env
    }
}

impl Guards {
    /// Builds the lab, writes the policy with web1's real MAC and link-local address, starts
    /// the daemon. `web_mode` is the web segment's `mode`.
    pub fn start(hint: &str, web_mode: &str) -> Guards {
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
        let env = Env::start(lab, &policy).unwrap_or_else(|e| panic!("{e:#}"));
        Guards { env, nodes, policy }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no VM {name}"))
    }

    pub fn scapy(&self, name: &str) -> Scapy {
        Scapy::start(&self.node(name).ns).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Fails the test with every problem found, the policy and the daemon's output.
    pub fn verdict(&self, test: &str, bad: &[String]) {
        assert!(
            bad.is_empty(),
            "{test}: {} problem(s):\n\n{}\n\npolicy:\n{}\ndaemon output (last lines):\n{}",
            bad.len(),
            bad.join("\n\n"),
            self.policy,
            self.log_tail()
        );
    }
}

/// The link-local address the kernel gave `eth0` in `ns` (it appears as the link comes up).
pub fn link_local(ns: &str) -> Ipv6Addr {
    poll(
        &format!("an IPv6 link-local address on eth0 in {ns}"),
        Duration::from_secs(3),
        || {
            let out = ip_n(
                ns,
                &["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"],
            )?;
            let found = out
                .split_whitespace()
                .skip_while(|w| *w != "inet6")
                .nth(1)
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok());
            Ok(found.ok_or(out))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Ingress drops of `vif` by reason (non-zero only).
pub fn ingress_drops(m: &Scrape, vif: &str) -> BTreeMap<String, f64> {
    m.by_reason(&Series::drops(vif, Dir::Ingress))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// What changed between two readings, non-zero entries only.
pub fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
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

pub fn fmt_delta(d: &BTreeMap<String, f64>) -> String {
    if d.is_empty() {
        return "nothing".into();
    }
    d.iter()
        .map(|(k, v)| format!("{k} {v:+}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Counted `count` times as a drop with this reason (an `isolator_common::verdict` code)
    /// on the sender's vif (ingress), and absent at the target.
    Dropped(u8),
    /// Passed by the sender's vif (no ingress drop) and received by the target.
    Delivered,
}

/// One crafted frame: built by scapy in the sender's namespace from `expr`, sent `count`
/// times while `eth0` of the target VM is captured.
pub struct Shot<'a> {
    what: &'a str,
    from: &'a Node,
    to: &'a Node,
    ifname: &'a str,
    expr: String,
    count: usize,
    expect: Outcome,
}

pub fn shot<'a>(
    what: &'a str,
    from: &'a Node,
    to: &'a Node,
    expr: String,
    expect: Outcome,
) -> Shot<'a> {
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
    pub fn times(mut self, count: usize) -> Self {
        self.count = count;
        self
    }

    /// Sends the frame and checks the outcome; returns the problems found (empty: as
    /// expected) and the frame's bytes.
    pub fn fire(&self, env: &Guards, scapy: &mut Scapy) -> (Vec<String>, Vec<u8>) {
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

    /// Sends `frame` `count` times while the target's interface is captured; waits until
    /// the sender's vif counted them as expected (at most [`DEADLINE`]), then [`ARRIVAL`]
    /// more for a frame that (wrongly) passed to reach the target, and checks that the
    /// counters moved by exactly what was sent.
    pub fn fire_bytes(&self, env: &Guards, scapy: &mut Scapy, frame: &[u8]) -> Vec<String> {
        let vif = self.from.vif.as_str();
        let cap = Capture::start(&self.to.ns, self.ifname)
            .unwrap_or_else(|e| panic!("[{}] capture: {e:#}", self.what));
        let before = env.scrape();
        if let Err(e) = scapy.send_bytes(frame, self.count) {
            let _ = cap.stop();
            return vec![format!("[{}] scapy could not send: {e:#}", self.what)];
        }
        let counted = match self.expect {
            Outcome::Dropped(code) => Series::drop(vif, Dir::Ingress, code),
            Outcome::Delivered => Series::pass(vif, Dir::Ingress),
        };
        // Not reaching the count is reported below, with everything else.
        let _ = poll("the sender's vif counts the frames", DEADLINE, || {
            let d = env.daemon().scrape()?.delta(&before, &counted)?;
            Ok(if d >= self.count as f64 {
                Ok(())
            } else {
                Err(format!("{counted} +{d}"))
            })
        });
        std::thread::sleep(ARRIVAL);
        let frames = cap
            .stop()
            .unwrap_or_else(|e| panic!("[{}] capture: {e:#}", self.what));
        let after = env.scrape();
        let arrived = copies(&frames, frame);
        let drops = delta(&ingress_drops(&before, vif), &ingress_drops(&after, vif));
        let passes = after
            .delta(&before, &Series::pass(vif, Dir::Ingress))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let mut bad = Vec::new();
        match self.expect {
            Outcome::Dropped(code) => {
                let reason = reason(code);
                let expected: BTreeMap<String, f64> =
                    [(reason.to_string(), self.count as f64)].into();
                if drops != expected {
                    bad.push(format!(
                        "expected exactly {reason} +{} in {DROP_PACKETS}{{device=\"{vif}\",direction=\"ingress\"}}, \
                         but the ingress drops changed by: {}",
                        self.count,
                        fmt_delta(&drops)
                    ));
                }
                let labelled = Series::drop(vif, Dir::Ingress, code).of(TENANT, self.from.segment);
                if let Err(e) = after.value(&labelled) {
                    bad.push(format!("{e:#}"));
                }
                if arrived > 0 {
                    bad.push(format!(
                        "the frame arrived at {}/{} ({arrived} of {} sent)",
                        self.to.name, self.ifname, self.count
                    ));
                }
            }
            Outcome::Delivered => {
                if !drops.is_empty() {
                    bad.push(format!(
                        "expected no ingress drop on {vif}, but the drops changed by: {}",
                        fmt_delta(&drops)
                    ));
                }
                if passes < self.count as f64 {
                    bad.push(format!(
                        "{PASS_PACKETS} of {vif} (ingress) grew by {passes}, expected at least {}",
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
            .filter(|f| source_mac(f) == self.from.mac)
            .map(|f| describe(f))
            .collect();
        vec![format!(
            "[{}] {} ({vif}) -> {}: expected {}, x{}\n  frame: {}\n  scapy: {}\n  - {}\n  \
             captured at {}/{} from the sender's MAC ({} frames captured in all): {}\n  \
             non-zero drop counters of {vif} now:\n{}",
            self.what,
            self.from.name,
            self.to.name,
            match self.expect {
                Outcome::Dropped(code) => format!("dropped as {} and absent", reason(code)),
                Outcome::Delivered => "delivered".into(),
            },
            self.count,
            describe(frame),
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
            after.dump(DROP_PACKETS)
        )]
    }
}

/// Fires every shot in order, collecting the problems.
pub fn fire_all(env: &Guards, scapy: &mut Scapy, shots: &[Shot], bad: &mut Vec<String>) {
    for s in shots {
        bad.extend(s.fire(env, scapy).0);
    }
}

/// A UDP datagram `from` -> `to` (addresses of the family of `dst`), with a marker payload.
pub fn udp4(from: &Node, src_ip: &str, to: &Node, dst_ip: &str, marker: &str) -> String {
    format!(
        "{}/IP(src='{src_ip}', dst='{dst_ip}')/UDP(sport=40000, dport=9)/Raw(load=b'{marker}')",
        from.eth(&to.mac)
    )
}

pub fn udp6(from: &Node, src_ip: &str, to: &Node, dst_ip: &str, marker: &str) -> String {
    format!(
        "{}/IPv6(src='{src_ip}', dst='{dst_ip}')/UDP(sport=40000, dport=9)/Raw(load=b'{marker}')",
        from.eth(&to.mac)
    )
}

pub fn dhcp_discover(from: &Node) -> String {
    format!(
        "{}/IP(src='0.0.0.0', dst='255.255.255.255')/UDP(sport=68, dport=67)/\
         BOOTP(op=1, chaddr=mac2str('{mac}'), xid=0x150150)/\
         DHCP(options=[('message-type', 'discover'), 'end'])",
        from.eth("ff:ff:ff:ff:ff:ff"),
        mac = from.mac
    )
}

/// The solicited-node multicast group of `addr` and its MAC.
pub fn solicited_node(addr: &str) -> (String, String) {
    let a: Ipv6Addr = addr.parse().unwrap();
    let o = a.octets();
    (
        format!("ff02::1:ff{:02x}:{:02x}{:02x}", o[13], o[14], o[15]),
        format!("33:33:ff:{:02x}:{:02x}:{:02x}", o[13], o[14], o[15]),
    )
}

/// Duplicate address detection for `target`: a neighbour solicitation from ::, without a
/// link-layer address option, to the target's solicited-node group.
pub fn dad_ns(from: &Node, target: &str) -> String {
    let (group, mac) = solicited_node(target);
    format!(
        "{}/IPv6(src='::', dst='{group}', hlim=255)/ICMPv6ND_NS(tgt='{target}')",
        from.eth(&mac)
    )
}

/// The MAC address `ns` has for neighbour `addr` on eth0 (None: no entry, or none with an
/// address). Panics if `ip` fails: that is the harness's failure, not "no entry".
pub fn neigh_mac(ns: &str, addr: &str) -> Option<String> {
    let out = ip_n(ns, &["neigh", "show", addr, "dev", "eth0"])
        .unwrap_or_else(|e| panic!("reading {ns}'s neighbour entry for {addr}: {e:#}"));
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_string)
}

/// Waits up to `timeout` until `ns`'s neighbour entry for `addr` has MAC `mac`.
pub fn neigh_becomes(ns: &str, addr: &str, mac: &str, timeout: Duration) -> Option<String> {
    let wanted = poll("the neighbour entry", timeout, || {
        let now = neigh_mac(ns, addr);
        Ok(if now.as_deref() == Some(mac) {
            Ok(now)
        } else {
            Err(format!("{now:?}"))
        })
    });
    wanted.unwrap_or_else(|_| neigh_mac(ns, addr))
}

pub fn set_neigh(ns: &str, addr: &str, mac: &str) {
    ip_n(
        ns,
        &[
            "neigh", "replace", addr, "lladdr", mac, "dev", "eth0", "nud", "stale",
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
}

pub const BOGUS_MAC: &str = "02:15:99:99:99:99";

pub fn na(from: &Node, dst: (&str, &str), src: &str, target: &str, tlla: &str) -> String {
    format!(
        "{}/IPv6(src='{src}', dst='{}', hlim=255)/ICMPv6ND_NA(tgt='{target}', R=0, S=0, O=1)/\
         ICMPv6NDOptDstLLAddr(lladdr='{tlla}')",
        from.eth(dst.1),
        dst.0
    )
}

pub fn router_advertisement(from: &Node, prefix: &str) -> String {
    format!(
        "{}/IPv6(src='{}', dst='ff02::1', hlim=255)/ICMPv6ND_RA(routerlifetime=1800)/\
         ICMPv6NDOptSrcLLAddr(lladdr='{}')/ICMPv6NDOptPrefixInfo(prefix='{prefix}', prefixlen=64)",
        from.eth("33:33:00:00:00:01"),
        from.ll,
        from.mac
    )
}

/// A router advertisement from `from` in fragments, its ICMPv6 header whole in the first.
pub fn ra_fragments(s: &mut Scapy, from: &Node, id: u32) -> Vec<Vec<u8>> {
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

pub fn redirect6(from: &Node, to: &Node) -> String {
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

pub fn redirect4(from: &Node, to: &Node) -> String {
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

pub fn dhcp_offer(from: &Node, client: &Node) -> String {
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

pub fn dhcp6_advertise(from: &Node, client: &Node) -> String {
    format!(
        "{}/IPv6(src='{}', dst='{}')/UDP(sport=547, dport=546)/DHCP6_Advertise(trid=0x1501)",
        from.eth(&client.mac),
        from.ll,
        client.ll
    )
}
