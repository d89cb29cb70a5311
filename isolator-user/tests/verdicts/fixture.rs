//! The generic runner of the verdict tables (after katran's `KatranBaseTestFixtures`): a
//! table is data, rows of a description, the vif a frame crosses, the program (ingress
//! XDP or egress TC), the frame, and the expected verdict; the expected counter change
//! follows from them: exactly one packet and the frame's length under `(vif, direction,
//! verdict, audit flag)`, and no other counter moves. [`Lab::check_all`] runs every row on
//! one loaded program, in order (connection tracking rows build on each other), and fails
//! with every row that went wrong.
//!
//! Frames come from the one frame builder of the tests, `isolator_tests::frame`; the
//! helpers here only fix the MAC addresses the tables use.
//!
//! Each test runs on its own thread inside a private, anonymous network namespace
//! (unshare), where it creates veth pairs to stand for vifs: nothing is created in,
//! attached to or sent from the root namespace, and everything vanishes with the thread.

use std::process::Command;

use isolator::compile::{Link, Plan};
use isolator::dataplane::Dataplane;
use isolator::policy;
use isolator_common::{Counter, CounterKey, direction, verdict};
use isolator_tests::frame::{self, L4, Mac};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
use isolator::dataplane::{TC_DROP, TC_PASS};

/// A link of every lab that no policy names: the uplink frames from outside every segment
/// enter the host through.
pub const UPLINK: &str = "x-uplink";

/// The MAC of the VM behind the vif a row runs on.
pub const VM_MAC: Mac = [0x02, 0, 0, 0, 0, 1];
/// The MAC it sends to.
pub const PEER_MAC: Mac = [0x02, 0, 0, 0, 0, 2];
/// A router's MAC: frames from outside every segment come from it, never from a vif.
pub const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0xee];
/// The solicited-node group MAC the neighbour solicitations of [`nd`] go to.
pub const SOLICITED: Mac = [0x33, 0x33, 0xff, 0, 0, 1];

/// Runs `body` on a fresh thread in a new, anonymous network namespace: whatever it
/// creates there vanishes with the thread; nothing touches the root namespace.
pub fn in_private_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread's network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) failed: {} (these tests need root)",
            std::io::Error::last_os_error()
        );
        body()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The ifindex a link named `d-hiN` gets: beyond `limits::VIF_SLOTS`, so that the
/// programs find its entry in `VIFS` rather than `VIF_SLOTS`.
pub fn high_ifindex(name: &str) -> Option<u32> {
    let n: u32 = name.strip_prefix("d-hi")?.parse().ok()?;
    Some(isolator_common::limits::VIF_SLOTS + 1000 + n)
}

/// Creates a veth pair per name in the calling thread's (private) namespace (this kernel
/// has no dummy driver) and returns the named ends. A name `d-hiN` gets the ifindex
/// [`high_ifindex`] says.
pub fn veths(names: &[&str]) -> Vec<Link> {
    names
        .iter()
        .map(|name| {
            let mut ip = Command::new("ip");
            ip.args(["link", "add", name]);
            if let Some(index) = high_ifindex(name) {
                ip.args(["index", &index.to_string()]);
            }
            let status = ip
                .args(["type", "veth", "peer", "name"])
                .arg(format!("{name}-p"))
                .status()
                .expect("running ip");
            assert!(status.success(), "ip link add {name} failed");
            let c = std::ffi::CString::new(*name).unwrap();
            // SAFETY: c is a valid NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            assert_ne!(ifindex, 0, "{name} has no ifindex");
            Link::veth(name, ifindex)
        })
        .collect()
}

/// Which program a row runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// XDP: the frame is sent by the VM behind the vif.
    In,
    /// TC egress: the frame is delivered to the VM behind the vif.
    Out,
}

/// The interface a frame delivered to a VM entered the host through: the sender, as the
/// egress program sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entered {
    /// The lab's [`UPLINK`]: from outside every segment.
    Uplink,
    /// The host's own stack (ingress ifindex 0): from outside.
    Host,
    /// A vif of the lab: from the VM behind it.
    Vif(&'static str),
    /// A link the plan does not know (the namespace's `lo`, which the lab's plan leaves
    /// out): the daemon has not classified it yet.
    Unclassified,
}

/// One row of a table.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub dir: Dir,
    pub vif: &'static str,
    /// For a frame delivered to the VM: where it entered the host.
    pub entered: Entered,
    pub frame: Vec<u8>,
    pub verdict: u8,
    /// A drop that audit mode passes (counted with the audit flag).
    pub audited: bool,
}

/// A frame the VM behind `vif` sends (ingress).
pub fn row(name: impl Into<String>, vif: &'static str, frame: Vec<u8>, verdict: u8) -> Row {
    Row {
        name: name.into(),
        dir: Dir::In,
        vif,
        entered: Entered::Vif(vif),
        frame,
        verdict,
        audited: false,
    }
}

/// A frame delivered to the VM behind `vif` (egress), from outside every segment (it
/// entered through the lab's uplink; see [`Row::from`] and [`Row::by_host`]).
pub fn out(name: impl Into<String>, vif: &'static str, frame: Vec<u8>, verdict: u8) -> Row {
    Row {
        dir: Dir::Out,
        entered: Entered::Uplink,
        ..row(name, vif, frame, verdict)
    }
}

impl Row {
    /// A frame delivered to the VM that the VM behind `vif` sent.
    pub fn from(mut self, vif: &'static str) -> Row {
        self.entered = Entered::Vif(vif);
        self
    }

    /// A frame delivered to the VM that the host's own stack sent.
    pub fn by_host(mut self) -> Row {
        self.entered = Entered::Host;
        self
    }

    /// A frame delivered to the VM that entered through a link the plan does not know.
    pub fn through_unclassified(mut self) -> Row {
        self.entered = Entered::Unclassified;
        self
    }

    pub fn audited(mut self) -> Row {
        self.audited = true;
        self
    }

    /// Whether the program must let the frame through.
    fn passes(&self) -> bool {
        self.verdict == verdict::PASS || self.audited
    }

    /// The one counter the row must move.
    fn counter(&self, ifindex: u32) -> CounterKey {
        CounterKey {
            ifindex,
            direction: match self.dir {
                Dir::In => direction::INGRESS,
                Dir::Out => direction::EGRESS,
            },
            verdict: self.verdict,
            flags: if self.audited { CounterKey::AUDIT } else { 0 },
            _pad: 0,
        }
    }

    fn expected(&self) -> String {
        format!(
            "{} {}{} on {} ({})",
            if self.passes() { "pass" } else { "drop" },
            verdict::name(self.verdict).unwrap_or("pass"),
            if self.audited { ", audited" } else { "" },
            self.vif,
            match self.dir {
                Dir::In => "ingress",
                Dir::Out => "egress",
            }
        )
    }
}

/// The loaded programs with a policy applied, and the links standing for its vifs.
pub struct Lab {
    pub dp: Dataplane,
    pub links: Vec<Link>,
    /// Ingress rows run through the TC ingress judge (the fallback where another program
    /// holds a vif's XDP hook) instead of the XDP program.
    pub ingress_via_tc: bool,
}

impl Lab {
    /// How the entries the kernel holds under `generation` differ from what `plan`
    /// encodes to under it (`None`: nothing), the epoch aside: one line per map that
    /// differs, empty when they agree.
    pub fn differences(&self, generation: u32, plan: Option<&Plan>) -> Vec<String> {
        let live = self
            .dp
            .read_generation(generation)
            .expect("reading a generation's entries");
        let expected = plan
            .map(|plan| isolator::encode::encode(plan, generation))
            .unwrap_or_default();
        isolator::verify::compare_maps(&expected, &live)
            .into_iter()
            .map(|finding| format!("{}: {}", finding.objects.join(","), finding.detail))
            .collect()
    }

    /// Loads the programs and applies `policy_text` with `names` as the host's links.
    pub fn new(policy_text: &str, names: &[&str]) -> Lab {
        Lab::with_plan(policy_text, names, |_| {})
    }

    /// Like [`Lab::new`], letting `adjust` change the compiled plan before it is applied.
    /// Every lab also has the link [`UPLINK`], which no policy names.
    pub fn with_plan(policy_text: &str, names: &[&str], adjust: impl FnOnce(&mut Plan)) -> Lab {
        Lab::loaded(
            Dataplane::load().expect("loading the programs"),
            policy_text,
            names,
            adjust,
        )
    }

    /// Like [`Lab::with_plan`], on programs loaded already (with other map sizes).
    pub fn loaded(
        mut dp: Dataplane,
        policy_text: &str,
        names: &[&str],
        adjust: impl FnOnce(&mut Plan),
    ) -> Lab {
        let mut names = names.to_vec();
        names.push(UPLINK);
        let links = veths(&names);
        let policy = policy::parse(policy_text, "test.yaml").expect("valid policy");
        let mut plan = Plan::new(&policy, &links).expect("plan");
        adjust(&mut plan);
        dp.apply(&plan).expect("applying the policy");
        Lab {
            dp,
            links,
            ingress_via_tc: false,
        }
    }

    pub fn ifindex(&self, name: &str) -> u32 {
        self.links
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no link {name}"))
            .ifindex
    }

    /// Runs one row; returns what went wrong (the action, or any counter other than
    /// exactly the row's by one packet and the frame's length).
    fn run(&mut self, row: &Row) -> Result<(), String> {
        let ifindex = self.ifindex(row.vif);
        let before = self.dp.counters().expect("counters");
        let (action, expected) = match row.dir {
            Dir::In if self.ingress_via_tc => {
                let action = self
                    .dp
                    .test_run_ingress_tc(ifindex, &row.frame)
                    .map_err(|e| format!("test run failed: {e:?}"))?;
                let expected = if row.passes() { TC_PASS } else { TC_DROP };
                (i64::from(action), i64::from(expected))
            }
            Dir::In => {
                let action = self
                    .dp
                    .test_run_ingress(ifindex, &row.frame)
                    .map_err(|e| format!("test run failed: {e:?}"))?;
                let expected = if row.passes() { XDP_PASS } else { XDP_DROP };
                (i64::from(action), i64::from(expected))
            }
            Dir::Out => {
                let entered = match row.entered {
                    Entered::Uplink => self.ifindex(UPLINK),
                    Entered::Host => 0,
                    Entered::Vif(vif) => self.ifindex(vif),
                    Entered::Unclassified => 1,
                };
                let action = self
                    .dp
                    .test_run_egress(ifindex, entered, &row.frame)
                    .map_err(|e| format!("test run failed: {e:?}"))?;
                let expected = if row.passes() { TC_PASS } else { TC_DROP };
                (i64::from(action), i64::from(expected))
            }
        };
        let mut wrong = Vec::new();
        if action != expected {
            wrong.push(format!(
                "action {action}, expected {expected} (XDP: 1 drop, 2 pass; TC: -1 pass, 2 drop)"
            ));
        }
        let after = self.dp.counters().expect("counters");
        let get = |snapshot: &[(CounterKey, Counter)], k: &CounterKey| {
            snapshot
                .iter()
                .find(|(kk, _)| kk == k)
                .map(|(_, c)| *c)
                .unwrap_or_default()
        };
        let key = row.counter(ifindex);
        let moved = (
            get(&after, &key).packets - get(&before, &key).packets,
            get(&after, &key).bytes - get(&before, &key).bytes,
        );
        if moved != (1, row.frame.len() as u64) {
            wrong.push(format!(
                "its counter moved by {moved:?} (packets, bytes), expected (1, {})",
                row.frame.len()
            ));
        }
        for (k, c) in &after {
            if *k != key && get(&before, k) != *c {
                wrong.push(format!(
                    "another counter moved: {k:?} from {:?} to {c:?}",
                    get(&before, k)
                ));
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }

    /// [`Lab::check_all`] through the XDP program, then again with the ingress rows
    /// through the TC ingress judge, the fallback where another program holds a vif's
    /// XDP hook: the two must judge alike.
    pub fn check_all_both_ingresses(&mut self, rows: &[Row]) {
        self.ingress_via_tc = false;
        self.check_all(rows);
        self.ingress_via_tc = true;
        // A socket buffer test run refuses an IPv4 or IPv6 frame shorter than its IP
        // header (EINVAL): such frames are judged by XDP only here.
        let carried: Vec<Row> = rows
            .iter()
            .filter(|r| {
                let min = match r.frame.get(12..14) {
                    Some([0x08, 0x00]) => 14 + 20,
                    Some([0x86, 0xdd]) => 14 + 40,
                    _ => 14,
                };
                r.frame.len() >= min
            })
            .cloned()
            .collect();
        self.check_all(&carried);
        self.ingress_via_tc = false;
    }

    /// Runs one row and fails unless it went as expected.
    pub fn check(&mut self, row: &Row) {
        self.check_all(std::slice::from_ref(row));
    }

    /// Runs every row in order and fails with all the rows that went wrong.
    pub fn check_all(&mut self, rows: &[Row]) {
        let failures: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                self.run(r)
                    .err()
                    .map(|e| format!("{}: expected {}: {e}", r.name, r.expected()))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} rows failed:\n  {}",
            failures.len(),
            rows.len(),
            failures.join("\n  ")
        );
    }
}

// ------------------------------------------------- the tables' frames, from the builder

/// An IP frame the VM sends to its peer.
pub fn ip(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    frame::ip(VM_MAC, PEER_MAC, src, dst, l4)
}

/// A frame from outside every segment, through a router, to the VM.
pub fn from_outside(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    frame::ip(ROUTER_MAC, VM_MAC, src, dst, l4)
}

/// The IP packet of [`ip`], without Ethernet (what an ICMP error quotes).
pub fn quoted(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    ip(src, dst, l4)[14..].to_vec()
}

/// An ICMP (or ICMPv6) error the VM sends, quoting `quoted`.
pub fn icmp_error(src: &str, dst: &str, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    frame::icmp_error(VM_MAC, PEER_MAC, src, dst, kind, code, quoted)
}

/// A broadcast ARP packet from `eth_src` with sender `sha`/`spa`, about `tpa`.
pub fn arp(eth_src: Mac, sha: Mac, spa: &str, tpa: &str, op: u16) -> Vec<u8> {
    frame::arp(eth_src, frame::BROADCAST, op, sha, spa, tpa)
}

/// A broadcast ARP request from `src_mac` (sender `sender`) for `target`.
pub fn arp_request(src_mac: Mac, sender: &str, target: &str) -> Vec<u8> {
    arp(src_mac, src_mac, sender, target, 1)
}

/// A neighbour solicitation or advertisement about `target` with the sender's MAC as
/// source link-layer address option, to a solicited-node group.
pub fn nd(src_mac: Mac, kind: u8, src: &str, dst: &str, target: &str) -> Vec<u8> {
    let options = [(frame::nd_option::SOURCE_LL, src_mac)];
    frame::nd(src_mac, SOLICITED, kind, src, dst, target, &options)
}

/// A neighbour solicitation (source) or advertisement (target link-layer address option)
/// carrying `lladdr`, to all nodes.
pub fn nd_with_lladdr(
    src_mac: Mac,
    lladdr: Mac,
    kind: u8,
    src: &str,
    dst: &str,
    target: &str,
) -> Vec<u8> {
    let option = if kind == frame::icmp::NEIGHBOUR_SOLICITATION {
        frame::nd_option::SOURCE_LL
    } else {
        frame::nd_option::TARGET_LL
    };
    nd_with_options(src_mac, kind, src, dst, target, &[(option, lladdr)])
}

/// An unsolicited neighbour advertisement from `src_mac` for `target`, with its own MAC as
/// the target link-layer address.
pub fn nd_advertisement(src_mac: Mac, src: &str, dst: &str, target: &str) -> Vec<u8> {
    nd_with_lladdr(
        src_mac,
        src_mac,
        frame::icmp::NEIGHBOUR_ADVERTISEMENT,
        src,
        dst,
        target,
    )
}

/// A neighbour solicitation or advertisement with the given options, to all nodes.
pub fn nd_with_options(
    src_mac: Mac,
    kind: u8,
    src: &str,
    dst: &str,
    target: &str,
    options: &[(u8, [u8; 6])],
) -> Vec<u8> {
    frame::nd(src_mac, frame::ALL_NODES, kind, src, dst, target, options)
}
