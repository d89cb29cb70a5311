//! The attack lab: the bypasses an audit found, replayed with real frames. Two small
//! topologies with their policies, and the machinery that fires one crafted frame and
//! checks everything that became of it: which vif judged it, under exactly which reason
//! (or that it passed), and whether it arrived where it was aimed.
//!
//! The routed lab ([`build`], [`policy_yaml`]):
//!
//! ```text
//!  netns <lab>h: br0 ---+-- vacme-web1 vacme-web2 vacme-db1 vacme-db2 vglobex-api1 (managed)
//!                       +-- xrouter --- router  eth0: 10.0.0.1/8, IPv6 link-local only
//!                       |               eth1: 203.0.113.1/24, 2001:db8:ff::1/64 --- outside
//!                       |                     (a veth of its own, not on the bridge)
//!                       +-- xmgmt ----- mgmt    192.168.100.10/24, fd00:ff::10/64
//! ```
//!
//! | VM          | vif          | tenant/segment | IPv4        | IPv6           | policy |
//! |-------------|--------------|----------------|-------------|----------------|--------|
//! | acme-web1   | vacme-web1   | acme/web       | 10.1.1.2/24 | fd00:1:1::2/64 | no identity (no `mac`) |
//! | acme-web2   | vacme-web2   | acme/web       | 10.1.1.3/24 | fd00:1:1::3/64 | exposes tcp 443 |
//! | acme-db1    | vacme-db1    | acme/db        | 10.1.2.2/24 | fd00:1:2::2/64 | `egress: deny`; exposes udp 7000 |
//! | acme-db2    | vacme-db2    | acme/db        | 10.1.2.3/24 | fd00:1:2::3/64 | |
//! | globex-api1 | vglobex-api1 | globex/api     | 10.2.1.2/24 | fd00:2:1::2/64 | private: exposes nothing |
//!
//! Every VM has on-link routes 10.0.0.0/8, fd00::/16 and 192.168.100.0/24, and routes to
//! the outside networks via the router (203.0.113.0/24 via 10.0.0.1, 2001:db8:ff::/64 via
//! the router's link-local address). The router's LAN addresses lie outside every segment,
//! so the policy needs none of the keys `gateways`, `uplinks` and `vif_names`: the same
//! tests run against a binary from before those keys existed (which refuses them), to show
//! that they fail there. The management prefixes are 192.168.100.0/24 and fd00:ff::/64.
//!
//! The host lab ([`build_host`], [`host_policy_yaml`]): web1, web2 (acme/web, `egress:
//! deny`) and db1 (acme/db) on the bridge, and the host itself (the daemon's namespace)
//! with addresses on `br0` inside acme/web, 10.1.1.1 and fd00:1:1::1, declared as the
//! segment's gateways offering tcp 8053 and udp 53, plus its IPv6 link-local address.
//!
//! A [`Shot`] is one crafted frame (scapy, [`crate::scapy`]), sent from a lab namespace
//! while a [`Tap`] captures where it is aimed; [`Shot::fire`] waits until the judging vif
//! counted it as expected (exactly, with [`Expect`]: a missing series is an error), then
//! checks that no other drop reason of that vif and direction moved and that the frame
//! arrived (a twin) or did not (an attack).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::env::{Env, Topology};
use crate::frame::describe;
use crate::lab::{BRIDGE, Lab, VM_IFNAME, Vm};
use crate::metrics::{DEADLINE, Dir, Expect, Scrape, Series, poll, reason};
use crate::net::{Capture, ping_count};
use crate::netns::{in_netns, ip_n, sysctl};
use crate::scapy::Scapy;

/// A VM of the attack labs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub name: &'static str,
    pub tenant: &'static str,
    pub segment: &'static str,
    pub v4: &'static str,
    pub v6: &'static str,
}

impl VmSpec {
    /// `v<name>`, e.g. `vacme-web1`.
    pub fn vif(&self) -> String {
        format!("v{}", self.name)
    }
}

const fn vm(
    name: &'static str,
    tenant: &'static str,
    segment: &'static str,
    v4: &'static str,
    v6: &'static str,
) -> VmSpec {
    VmSpec {
        name,
        tenant,
        segment,
        v4,
        v6,
    }
}

pub const WEB1: VmSpec = vm("acme-web1", "acme", "web", "10.1.1.2", "fd00:1:1::2");
pub const WEB2: VmSpec = vm("acme-web2", "acme", "web", "10.1.1.3", "fd00:1:1::3");
pub const DB1: VmSpec = vm("acme-db1", "acme", "db", "10.1.2.2", "fd00:1:2::2");
pub const DB2: VmSpec = vm("acme-db2", "acme", "db", "10.1.2.3", "fd00:1:2::3");
pub const API1: VmSpec = vm("globex-api1", "globex", "api", "10.2.1.2", "fd00:2:1::2");

/// The VMs of the routed lab.
pub const VMS: [VmSpec; 5] = [WEB1, WEB2, DB1, DB2, API1];
/// The VMs of the host lab.
pub const HOST_LAB_VMS: [VmSpec; 3] = [WEB1, WEB2, DB1];

/// The plan entry of VM `name`; panics if unknown (a test bug).
pub fn spec(name: &str) -> VmSpec {
    *VMS.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no VM {name} in the attack labs"))
}

pub const ROUTER: &str = "router";
pub const ROUTER_PORT: &str = "xrouter";
/// The router's address on the bridge: outside every segment.
pub const ROUTER_V4: &str = "10.0.0.1";
pub const OUTSIDE: &str = "outside";
pub const OUTSIDE_V4: &str = "203.0.113.10";
pub const OUTSIDE_V6: &str = "2001:db8:ff::10";
pub const MGMT: &str = "mgmt";
pub const MGMT_PORT: &str = "xmgmt";
pub const MGMT_V4: &str = "192.168.100.10";
pub const MGMT_V6: &str = "fd00:ff::10";

/// The port acme/web exposes at web2, and the UDP port acme/db exposes at db1.
pub const WEB2_EXPOSED_TCP: u16 = 443;
pub const DB1_EXPOSED_UDP: u16 = 7000;

/// The host lab: the host's addresses in acme/web (its gateways), the MAC it gives `br0`,
/// and the services the policy offers there.
pub const GATEWAY_V4: &str = "10.1.1.1";
pub const GATEWAY_V6: &str = "fd00:1:1::1";
pub const BRIDGE_MAC: &str = "02:15:0f:00:00:01";
pub const GATEWAY_TCP: u16 = 8053;
pub const GATEWAY_UDP: u16 = 53;
/// Ports the host listens on that no gateway offers.
pub const HOST_PRIVATE_TCP: u16 = 8054;
pub const HOST_PRIVATE_UDP: u16 = 54;

/// The routed lab's policy (YAML v1, no key newer than the audited version).
pub fn policy_yaml() -> String {
    format!(
        r#"# isolator attack lab policy (tests/src/attack_lab.rs)
version: 1
management:
  - prefix: 192.168.100.0/24
  - prefix: fd00:ff::/64
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24, "fd00:1:1::/64"]
        expose:
          - {{address: {w2v4}, protocol: tcp, ports: {web_tcp}}}
          - {{address: "{w2v6}", protocol: tcp, ports: {web_tcp}}}
      - name: db
        egress: deny
        interfaces: ["vacme-db*"]
        prefixes: [10.1.2.0/24, "fd00:1:2::/64"]
        expose:
          - {{address: {d1v4}, protocol: udp, ports: {db_udp}}}
  - name: globex
    segments:
      - name: api
        interfaces: ["vglobex-api*"]
        prefixes: [10.2.1.0/24, "fd00:2:1::/64"]
"#,
        w2v4 = WEB2.v4,
        w2v6 = WEB2.v6,
        web_tcp = WEB2_EXPOSED_TCP,
        d1v4 = DB1.v4,
        db_udp = DB1_EXPOSED_UDP,
    )
}

/// The host lab's policy: acme/web (`egress: deny`) with the host's gateways offering
/// tcp 8053 and udp 53, acme/db without gateways.
pub fn host_policy_yaml() -> String {
    let services = format!(
        "[{{protocol: tcp, ports: {GATEWAY_TCP}}}, {{protocol: udp, ports: {GATEWAY_UDP}}}]"
    );
    format!(
        r#"# isolator host lab policy (tests/src/attack_lab.rs)
version: 1
tenants:
  - name: acme
    segments:
      - name: web
        egress: deny
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24, "fd00:1:1::/64"]
        gateways:
          - {{address: {GATEWAY_V4}, services: {services}}}
          - {{address: "{GATEWAY_V6}", services: {services}}}
      - name: db
        interfaces: ["vacme-db*"]
        prefixes: [10.1.2.0/24, "fd00:1:2::/64"]
"#
    )
}

fn add_vms(lab: &mut Lab, vms: &[VmSpec]) -> Result<()> {
    lab.set_onlink_routes(&["10.0.0.0/8", "fd00::/16", "192.168.100.0/24"]);
    for v in vms {
        let addrs = [format!("{}/24", v.v4), format!("{}/64", v.v6)];
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        lab.add_vm(v.name, &v.vif(), &addrs)?;
    }
    Ok(())
}

/// Builds the routed lab (see the module documentation). The daemon is not started.
pub fn build(hint: &str) -> Result<Lab> {
    let mut lab = Lab::new(hint)?;
    add_vms(&mut lab, &VMS)?;
    let router = lab
        .add_router(ROUTER, ROUTER_PORT, &[&format!("{ROUTER_V4}/8")])
        .context("attack lab: router")?;
    // IPv6 on the LAN: the router's link-local address only, so that it speaks neighbour
    // discovery from it (as routers do); the segments are on-link.
    lab.add_route(&router.ns, "fd00::/16 dev eth0")?;
    lab.add_linked_host(
        OUTSIDE,
        ROUTER,
        "eth1",
        &["203.0.113.1/24", "2001:db8:ff::1/64"],
        &[&format!("{OUTSIDE_V4}/24"), &format!("{OUTSIDE_V6}/64")],
        &["10.0.0.0/8 via 203.0.113.1", "fd00::/16 via 2001:db8:ff::1"],
    )
    .context("attack lab: outside host")?;
    lab.add_bridge_host(
        MGMT,
        MGMT_PORT,
        &[&format!("{MGMT_V4}/24"), &format!("{MGMT_V6}/64")],
        &["10.0.0.0/8", "fd00::/16"],
    )
    .context("attack lab: management host")?;
    let router_ll = link_local(&router.ns, VM_IFNAME)?;
    let vms: Vec<Vm> = lab.vms().to_vec();
    for v in &vms {
        lab.add_route(&v.ns, &format!("203.0.113.0/24 via {ROUTER_V4}"))?;
        lab.add_route(
            &v.ns,
            &format!("2001:db8:ff::/64 via {router_ll} dev {VM_IFNAME}"),
        )?;
    }
    Ok(lab)
}

/// Builds the host lab (see the module documentation): the VMs, and on the host's bridge
/// a fixed MAC, IPv6 (without duplicate address detection) and the gateway addresses. The
/// daemon is not started; it reads the host's addresses when it starts.
pub fn build_host(hint: &str) -> Result<Lab> {
    let mut lab = Lab::new(hint)?;
    add_vms(&mut lab, &HOST_LAB_VMS)?;
    let host = lab.host_ns().to_string();
    // A bridge takes the lowest MAC of its ports unless given one: fixed, it stays put.
    ip_n(&host, &["link", "set", BRIDGE, "address", BRIDGE_MAC])?;
    sysctl(&host, &format!("net.ipv6.conf.{BRIDGE}.accept_dad"), "0")?;
    sysctl(&host, &format!("net.ipv6.conf.{BRIDGE}.disable_ipv6"), "0")?;
    ip_n(
        &host,
        &["addr", "add", &format!("{GATEWAY_V4}/24"), "dev", BRIDGE],
    )?;
    ip_n(
        &host,
        &[
            "addr",
            "add",
            &format!("{GATEWAY_V6}/64"),
            "dev",
            BRIDGE,
            "nodad",
        ],
    )?;
    link_local(&host, BRIDGE)?;
    Ok(lab)
}

/// Makes the bridge of the routed lab learn where every VM is (each pings the router: its
/// ARP request passes everywhere, the echo passes where egress is allowed), so that a
/// unicast frame aimed at one VM reaches only that VM's vif and the counts stay exact.
pub fn warm_up(lab: &Lab) -> Result<()> {
    let target: IpAddr = ROUTER_V4.parse().expect("router address");
    std::thread::scope(|s| {
        let handles: Vec<_> = lab
            .vms()
            .iter()
            .map(|v| {
                s.spawn(move || {
                    ping_count(&v.ns, target, 1, Duration::ZERO, Duration::from_millis(500))
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(r) => {
                    r?;
                }
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        Ok(())
    })
}

/// The IPv6 link-local address of `ifname` in `ns`, once the kernel configured it.
pub fn link_local(ns: &str, ifname: &str) -> Result<IpAddr> {
    poll(
        &format!("an IPv6 link-local address on {ifname} in {ns}"),
        Duration::from_secs(3),
        || {
            let out = ip_n(
                ns,
                &["-6", "-o", "addr", "show", "dev", ifname, "scope", "link"],
            )?;
            let found = out
                .split_whitespace()
                .skip_while(|w| *w != "inet6")
                .nth(1)
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse::<IpAddr>().ok());
            Ok(found.ok_or(out))
        },
    )
}

/// How many SYNs a connect sends in a namespace given [`one_syn_retry`]: the first and one
/// retransmission (after 1 s; the kernel gives up 2 s later). The kernel, not a client's
/// timeout, decides, so a blocked connect is counted exactly.
pub const SYNS_PER_BLOCKED_CONNECT: f64 = 2.0;

/// Lets TCP in namespace `ns` retransmit a SYN only once (`net.ipv4.tcp_syn_retries=1`,
/// the smallest value; IPv6 too), with exponential backoff (`tcp_syn_linear_timeouts=0`
/// where the kernel has it: with its default of 4 linear timeouts the kernel, which gives
/// up by elapsed time, sends a third SYN): a blocked connect fails after 3 s with exactly
/// [`SYNS_PER_BLOCKED_CONNECT`] SYNs.
pub fn one_syn_retry(ns: &str) -> Result<()> {
    sysctl(ns, "net.ipv4.tcp_syn_retries", "1")?;
    if std::path::Path::new("/proc/sys/net/ipv4/tcp_syn_linear_timeouts").exists() {
        sysctl(ns, "net.ipv4.tcp_syn_linear_timeouts", "0")?;
    }
    Ok(())
}

/// How long a blocked connect is given (more than the kernel's 3 s, so the kernel ends it).
pub const BLOCKED_CONNECT: Duration = Duration::from_secs(6);

/// A UDP socket bound to `addr` inside namespace `ns`, with a 2 s read timeout; usable from
/// any thread.
pub fn udp_socket(ns: &str, addr: SocketAddr) -> Result<UdpSocket> {
    let s = in_netns(ns, || {
        UdpSocket::bind(addr).with_context(|| format!("bind udp {addr}"))
    })
    .with_context(|| format!("in netns {ns}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// Where frames are captured: an interface of a lab namespace (what it receives).
#[derive(Clone, Debug)]
pub struct Tap {
    pub label: String,
    pub ns: String,
    pub ifname: String,
}

impl Tap {
    pub fn new(label: &str, ns: &str, ifname: &str) -> Tap {
        Tap {
            label: label.to_string(),
            ns: ns.to_string(),
            ifname: ifname.to_string(),
        }
    }

    /// The `eth0` of a VM or host.
    pub fn eth0(label: &str, ns: &str) -> Tap {
        Tap::new(label, ns, VM_IFNAME)
    }
}

/// Which captured frames are the shot arriving.
#[derive(Clone, Debug)]
pub enum Seen {
    /// Byte for byte the frame sent: a bridge delivers frames unchanged.
    Copy,
    /// A frame containing these bytes: a routed frame has new MACs and a lower TTL.
    Marker(Vec<u8>),
}

impl Seen {
    fn matches(&self, sent: &[u8], got: &[u8]) -> bool {
        match self {
            Seen::Copy => got == sent,
            Seen::Marker(m) => !m.is_empty() && got.windows(m.len()).any(|w| w == m.as_slice()),
        }
    }
}

/// What must become of a shot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Dropped with this reason (`isolator_common::verdict`) by the judging vif, and never
    /// arrives.
    Dropped(u8),
    /// Passed by the judging vif (no drop of any reason there) and arrives.
    Delivered,
}

/// How long a capture stays open after the counters said what happened to a frame, for a
/// frame that (wrongly) passed to arrive.
pub const ARRIVAL: Duration = Duration::from_millis(150);

/// One crafted frame: what it is, who judges it, what must become of it, where to look.
#[derive(Clone, Debug)]
pub struct Shot {
    pub what: String,
    pub frame: Vec<u8>,
    pub count: usize,
    /// The vif whose program judges the frame, and the direction: `Ingress` for what a VM
    /// sends, `Egress` for what is delivered to a VM.
    pub vif: String,
    pub dir: Dir,
    pub expected: Expected,
    pub tap: Tap,
    pub seen: Seen,
}

impl Shot {
    /// An attack: `frame` must be dropped by `vif` in `dir` with `reason` and must not
    /// show up at `tap`.
    pub fn blocked(what: &str, frame: Vec<u8>, vif: &str, dir: Dir, reason: u8, tap: &Tap) -> Shot {
        Shot {
            what: what.to_string(),
            frame,
            count: 1,
            vif: vif.to_string(),
            dir,
            expected: Expected::Dropped(reason),
            tap: tap.clone(),
            seen: Seen::Copy,
        }
    }

    /// A legitimate twin: `frame` must pass `vif` in `dir` and arrive at `tap`.
    pub fn twin(what: &str, frame: Vec<u8>, vif: &str, dir: Dir, tap: &Tap) -> Shot {
        Shot {
            expected: Expected::Delivered,
            ..Shot::blocked(what, frame, vif, dir, 0, tap)
        }
    }

    /// Recognises the arrival by `marker` instead of an exact copy (routed frames).
    pub fn marked(mut self, marker: &[u8]) -> Shot {
        self.seen = Seen::Marker(marker.to_vec());
        self
    }

    pub fn times(mut self, count: usize) -> Shot {
        self.count = count;
        self
    }

    /// Sends the frame `count` times from `scapy`'s namespace while `tap` captures; waits
    /// until the judging vif counted it as expected (exactly; at most [`DEADLINE`]), then
    /// [`ARRIVAL`] longer; returns every way in which the outcome differs from the
    /// expectation (empty: as expected).
    pub fn fire<T: Topology>(&self, env: &Env<T>, scapy: &mut Scapy) -> Vec<String> {
        let problems = self.outcome(env, scapy);
        if problems.is_empty() {
            return problems;
        }
        vec![format!(
            "[{}] sent from netns {} x{}, judged by {} ({}), expected {}\n  frame: {}\n  - {}",
            self.what,
            scapy.ns(),
            self.count,
            self.vif,
            self.dir.label(),
            match self.expected {
                Expected::Dropped(code) => format!(
                    "a drop as {} and nothing at {}",
                    reason(code),
                    self.tap.label
                ),
                Expected::Delivered => format!("a pass and the frame at {}", self.tap.label),
            },
            describe(&self.frame),
            problems.join("\n  - ")
        )]
    }

    fn outcome<T: Topology>(&self, env: &Env<T>, scapy: &mut Scapy) -> Vec<String> {
        let daemon = env.daemon();
        let cap = match Capture::start(&self.tap.ns, &self.tap.ifname) {
            Ok(c) => c,
            Err(e) => return vec![format!("capture at {}: {e:#}", self.tap.label)],
        };
        let before = match daemon.scrape() {
            Ok(m) => m,
            Err(e) => return vec![format!("{e:#}")],
        };
        if let Err(e) = scapy.send_bytes(&self.frame, self.count) {
            return vec![format!("scapy could not send: {e:#}")];
        }
        let mut problems = Vec::new();
        let n = self.count as f64;
        match self.expected {
            Expected::Dropped(code) => {
                let series = Series::drop(&self.vif, self.dir, code);
                if let Err(e) = Expect::new()
                    .grows(series, n)
                    .wait(&before, || daemon.scrape())
                {
                    problems.push(format!("{e:#}"));
                }
            }
            Expected::Delivered => {
                let series = Series::pass(&self.vif, self.dir);
                let counted = poll("the judging vif passes the frame", DEADLINE, || {
                    let d = daemon.scrape()?.delta(&before, &series)?;
                    Ok(if d >= n {
                        Ok(())
                    } else {
                        Err(format!("{series} +{d}"))
                    })
                });
                if let Err(e) = counted {
                    problems.push(format!("{e:#}"));
                }
            }
        }
        std::thread::sleep(ARRIVAL);
        let frames = match cap.stop() {
            Ok(f) => f,
            Err(e) => return vec![format!("capture at {}: {e:#}", self.tap.label)],
        };
        let after = match daemon.scrape() {
            Ok(m) => m,
            Err(e) => return vec![format!("{e:#}")],
        };
        let drops = drops_delta(&before, &after, &self.vif, self.dir);
        let arrived = frames
            .iter()
            .filter(|f| self.seen.matches(&self.frame, f))
            .count();
        match self.expected {
            Expected::Dropped(code) => {
                let wanted = [(reason(code).to_string(), n)].into_iter().collect();
                if drops != wanted {
                    problems.push(format!(
                        "expected the drops of {} ({}) to change by exactly {} +{n}; they changed by: {}",
                        self.vif,
                        self.dir.label(),
                        reason(code),
                        fmt_delta(&drops)
                    ));
                }
                if arrived > 0 {
                    problems.push(format!(
                        "it arrived at {} ({arrived} of {} sent)",
                        self.tap.label, self.count
                    ));
                }
            }
            Expected::Delivered => {
                if !drops.is_empty() {
                    problems.push(format!(
                        "expected no drop on {} ({}), but the drops changed by: {}",
                        self.vif,
                        self.dir.label(),
                        fmt_delta(&drops)
                    ));
                }
                if arrived < self.count {
                    problems.push(format!(
                        "it did not arrive at {} ({arrived} of {} sent arrived; {} frames captured there)",
                        self.tap.label,
                        self.count,
                        frames.len()
                    ));
                }
            }
        }
        problems
    }
}

/// Waits until the drops of `vif` in `dir` grew by exactly `drops` (reason code, count),
/// with [`Expect`], and checks that no other reason of that vif and direction moved.
/// Returns the problems found (empty: as expected).
pub fn expect_drops<T: Topology>(
    env: &Env<T>,
    before: &Scrape,
    vif: &str,
    dir: Dir,
    drops: &[(u8, f64)],
) -> Vec<String> {
    let daemon = env.daemon();
    let mut expect = Expect::new();
    for (code, n) in drops {
        expect = expect.grows(Series::drop(vif, dir, *code), *n);
    }
    let after = match expect.wait(before, || daemon.scrape()) {
        Ok(after) => after,
        Err(e) => return vec![format!("{e:#}")],
    };
    let wanted: std::collections::BTreeMap<String, f64> = drops
        .iter()
        .filter(|(_, n)| *n != 0.0)
        .map(|(code, n)| (reason(*code).to_string(), *n))
        .collect();
    let got = drops_delta(before, &after, vif, dir);
    if got == wanted {
        return Vec::new();
    }
    vec![format!(
        "expected the drops of {vif} ({}) to change by exactly: {}; they changed by: {}",
        dir.label(),
        fmt_delta(&wanted),
        fmt_delta(&got)
    )]
}

/// The change of every drop reason of `vif` in `dir` between two scrapes (non-zero only).
pub fn drops_delta(
    before: &Scrape,
    after: &Scrape,
    vif: &str,
    dir: Dir,
) -> std::collections::BTreeMap<String, f64> {
    let series = Series::drops(vif, dir);
    let (b, a) = match (before.by_reason(&series), after.by_reason(&series)) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(e), _) | (_, Err(e)) => {
            return [(format!("<unreadable: {e:#}>"), f64::NAN)].into();
        }
    };
    let mut out = std::collections::BTreeMap::new();
    for k in a.keys().chain(b.keys()) {
        let d = a.get(k).copied().unwrap_or(0.0) - b.get(k).copied().unwrap_or(0.0);
        if d != 0.0 {
            out.insert(k.clone(), d);
        }
    }
    out
}

/// `reason +n, ...`, or `nothing`.
pub fn fmt_delta(d: &std::collections::BTreeMap<String, f64>) -> String {
    if d.is_empty() {
        return "nothing".into();
    }
    d.iter()
        .map(|(k, v)| format!("{k} {v:+}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The problems a test found, reported all at once at the end.
#[derive(Default)]
pub struct Findings {
    problems: Vec<String>,
}

impl Findings {
    pub fn new() -> Findings {
        Findings::default()
    }

    /// Records the problems of one step (e.g. [`Shot::fire`]).
    pub fn extend(&mut self, problems: Vec<String>) {
        self.problems.extend(problems);
    }

    /// Records `problem` unless `ok`.
    pub fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.problems.push(problem());
        }
    }

    /// Records the error of a counter expectation, if any.
    pub fn counted(&mut self, what: &str, result: Result<Scrape>) {
        if let Err(e) = result {
            self.problems.push(format!("[{what}] {e:#}"));
        }
    }

    /// Fires every shot in order from `scapy`.
    pub fn fire_all<T: Topology>(&mut self, env: &Env<T>, scapy: &mut Scapy, shots: &[Shot]) {
        for s in shots {
            let p = s.fire(env, scapy);
            self.extend(p);
        }
    }

    /// Fails the test with every problem found, the policy and the daemon's last lines.
    pub fn finish<T: Topology>(self, test: &str, env: &Env<T>) {
        if self.problems.is_empty() {
            return;
        }
        let policy = std::fs::read_to_string(env.config()).unwrap_or_default();
        panic!(
            "{test}: {} problem(s):\n\n{}\n\npolicy:\n{policy}\ndaemon output (last lines):\n{}",
            self.problems.len(),
            self.problems.join("\n\n"),
            env.log_tail()
        );
    }
}
