//! `isolator explain`: one frame through the programs attached on the host (a test run on
//! the live maps, nothing sent), and through the reference model, with the policy entries
//! that decided it (file:line).

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context as _, bail};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use isolator_common::{
    Counter, CounterBlock, CounterKey, counter_block_index, direction, limits, maps, programs,
};
use serde::Serialize;

use super::{Inventory, kernel_name, live};
use crate::compile::{ManagedVif, Plan};
use crate::dataplane::{LiveContext, test_run_live};
use crate::model::{self, Cited, Direction, Verdict};
use crate::policy::{Locations, Policy};

/// The frame to explain.
pub enum Input {
    /// Built from its fields: a TCP SYN, a UDP datagram or an ICMP echo request.
    Fields {
        /// A vif's name, or a source address.
        from: String,
        to: IpAddr,
        /// The source address when `from` is a vif (default: its declared address, else
        /// the first of its segment's prefixes).
        src: Option<IpAddr>,
        protocol: Proto,
        port: u16,
        sport: u16,
    },
    /// Given whole (hex or the first frame of a pcap), sent by the VM behind `from`, or
    /// from outside (the host's stack) without it.
    Bytes {
        from: Option<String>,
        frame: Vec<u8>,
    },
}

/// The protocol of a frame built from fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// One program's judgement, live and modelled.
#[derive(Debug, Serialize)]
pub struct Step {
    /// `ingress` or `egress`.
    pub direction: &'static str,
    pub device: String,
    /// `tenant/segment` of the device.
    pub segment: Option<String>,
    /// The program that ran: name and id.
    pub program: String,
    /// The live verdict: `pass`, or the drop reason; with `audited` a drop audit mode
    /// passed.
    pub live: String,
    pub live_passes: bool,
    pub model: String,
    pub model_passes: bool,
    pub agree: bool,
    /// What else to know about the live run (several counters moved: traffic meanwhile).
    pub note: Option<String>,
    /// The policy entries that decided, as the model found them: `file:line: entry`.
    pub decided_by: Vec<String>,
}

/// What `explain` found.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub frame: String,
    pub summary: String,
    pub steps: Vec<Step>,
    /// The frame's fate: `pass` or the reason of the drop that ended it.
    pub verdict: String,
    /// Its fate as the model judges it along the same path (ingress at the sender, then
    /// egress at the receiver), whatever the live programs did.
    pub model_verdict: String,
    /// A step where the live programs and the model disagree, or a different fate.
    pub disagree: bool,
    /// Assumptions made in building the frame.
    pub notes: Vec<String>,
}

/// What a test run of frames through the live programs needs, read once: the policy
/// (with its entries' positions), the host's inventory, the policy compiled for the host
/// (for its vifs), and the daemon's counters (to read a drop's reason).
pub struct Live {
    pub policy: Policy,
    pub locations: Locations,
    pub inv: Inventory,
    pub plan: Plan,
    host: crate::compile::HostView,
    counters: Counters,
}

impl Live {
    /// Reads the policy in `config` and the host, beside the daemon whose state is under
    /// `state_dir`.
    pub fn load(config: &Path, state_dir: &Path) -> anyhow::Result<Live> {
        let (policy, locations) = live::load_policy(config)?;
        let inv = live::inventory(state_dir)?;
        let plan = Plan::new(&policy, inv.host_view())
            .map_err(|e| anyhow::anyhow!("compiling the policy for this host: {e}"))?;
        let counters = open_counters(state_dir)?;
        Ok(Live {
            host: inv.host_view(),
            policy,
            locations,
            inv,
            plan,
            counters,
        })
    }

    /// The managed vifs of the host.
    pub fn vifs(&self) -> &[ManagedVif] {
        &self.plan.vifs
    }

    /// Runs `frame` through the live ingress program of `sender` (none: the frame comes
    /// from the host's stack) and, if it passes, the live egress program of `receiver`
    /// (none: no managed vif receives it); beside each, the model's judgement at that
    /// program. Fails if neither is given, or a program to run is missing.
    pub fn run(
        &self,
        sender: Option<&ManagedVif>,
        receiver: Option<&ManagedVif>,
        frame: &[u8],
        notes: Vec<String>,
    ) -> anyhow::Result<Explanation> {
        let (policy, locations, inv) = (&self.policy, &self.locations, &self.inv);
        let label = |v: &ManagedVif| self.plan.segment_label(v.segment);
        let entered = sender.map_or(0, |s| s.ifindex);
        let mut hops = Vec::new();
        if let Some(vif) = sender {
            let link = inv.link(vif.ifindex).context("the sender's link is gone")?;
            let judge = inv
                .pinned
                .get(&vif.ifindex)
                .is_some_and(|p| p.contains_key("judge"));
            let (program, context) = if judge {
                (
                    find(inv, &link.tc_ingress(), programs::TC_INGRESS_JUDGE),
                    LiveContext::Tc {
                        ifindex: vif.ifindex,
                        entered: vif.ifindex,
                    },
                )
            } else {
                (
                    find(
                        inv,
                        &link.xdp.into_iter().collect::<Vec<_>>(),
                        programs::XDP_INGRESS,
                    ),
                    LiveContext::Xdp {
                        ifindex: vif.ifindex,
                    },
                )
            };
            let program = program.with_context(|| {
                format!(
                    "{} has no isolator program judging what it sends (see isolator verify)",
                    vif.name
                )
            })?;
            hops.push((vif, program, context, Direction::Ingress, "ingress"));
        }
        if let Some(vif) = receiver {
            let link = inv
                .link(vif.ifindex)
                .context("the receiver's link is gone")?;
            let program = find(inv, &link.tc_egress(), programs::TC_EGRESS).with_context(|| {
                format!(
                    "{} has no isolator program judging what reaches it (see isolator verify)",
                    vif.name
                )
            })?;
            let context = LiveContext::Tc {
                ifindex: vif.ifindex,
                entered,
            };
            hops.push((
                vif,
                program,
                context,
                Direction::Egress { entered },
                "egress",
            ));
        }
        if hops.is_empty() {
            bail!(
                "neither the sender nor the receiver of this frame is a vif the policy manages: no isolator program judges it"
            );
        }
        // The model along the whole path, whatever the live programs did.
        let judged: Vec<(model::Judgement, Vec<Cited>)> = hops
            .iter()
            .map(|(vif, _, _, direction, _)| {
                model::explain(policy, &self.host, vif.ifindex, *direction, frame)
            })
            .collect();
        let model_verdict = judged
            .iter()
            .find(|(j, _)| !j.passes())
            .map_or_else(|| "pass".to_string(), |(j, _)| j.to_string());
        let mut steps = Vec::new();
        for ((vif, program, context, _, dir_label), (judgement, cited)) in
            hops.into_iter().zip(judged)
        {
            let step = run_step(
                &self.counters,
                program,
                context,
                frame,
                (vif, label(vif)),
                dir_label,
                judgement,
                &cited,
                policy,
                locations,
            )?;
            let passed = step.live_passes;
            steps.push(step);
            if !passed {
                break;
            }
        }
        let verdict = steps
            .iter()
            .find(|s| !s.live_passes)
            .map_or_else(|| "pass".to_string(), |s| s.live.clone());
        let (src, dst) = addresses(frame);
        let describe = |a: Option<IpAddr>| a.map_or("?".to_string(), |a| a.to_string());
        let summary = format!(
            "{} -> {}: from {} to {}",
            describe(src),
            describe(dst),
            sender.map_or("outside (the host's stack)".to_string(), |v| format!(
                "{} ({})",
                v.name,
                label(v)
            )),
            receiver.map_or("no managed vif".to_string(), |v| format!(
                "{} ({})",
                v.name,
                label(v)
            )),
        );
        Ok(Explanation {
            frame: frame.iter().map(|b| format!("{b:02x}")).collect(),
            summary,
            disagree: steps.iter().any(|s| !s.agree) || verdict != model_verdict,
            steps,
            verdict,
            model_verdict,
            notes,
        })
    }
}

/// The source and destination addresses of a frame (an ARP's sender and target).
fn addresses(frame: &[u8]) -> (Option<IpAddr>, Option<IpAddr>) {
    match model::frame::parse(frame).ok().map(|f| f.l3) {
        Some(model::frame::L3::Ip(ip)) => (Some(ip.src), Some(ip.dst)),
        Some(model::frame::L3::Arp(arp)) => {
            (Some(IpAddr::V4(arp.sender)), Some(IpAddr::V4(arp.target)))
        }
        None => (None, None),
    }
}

/// The vif that owns `a`: one that declares it, else the first of the segment whose
/// prefixes hold it.
pub fn vif_of<'a>(policy: &Policy, plan: &'a Plan, a: IpAddr) -> Option<&'a ManagedVif> {
    let vifs = &plan.vifs;
    if let Some(v) = vifs
        .iter()
        .find(|v| v.addresses.iter().any(|n| n.contains(&a)))
    {
        return Some(v);
    }
    let segment = plan.segments.get(segment_of(policy, a)?)?.id;
    vifs.iter().find(|v| v.segment == segment)
}

/// The index (in policy order, as `Plan::segments`) of the segment whose prefixes hold
/// `a`.
pub fn segment_of(policy: &Policy, a: IpAddr) -> Option<usize> {
    policy
        .tenants
        .iter()
        .flat_map(|t| &t.segments)
        .position(|s| s.prefixes.iter().any(|p| p.contains(&a)))
}

/// Explains `input` under the policy in `config`, with the daemon's state under
/// `state_dir`.
pub fn explain(config: &Path, state_dir: &Path, input: &Input) -> anyhow::Result<Explanation> {
    let live = Live::load(config, state_dir)?;
    let (policy, plan, vifs) = (&live.policy, &live.plan, live.vifs());
    let mut notes = Vec::new();
    let (sender, frame) = match input {
        Input::Fields {
            from,
            to,
            src,
            protocol,
            port,
            sport,
        } => {
            let (sender, src) = match from.parse::<IpAddr>() {
                Ok(a) => (vif_of(policy, plan, a), a),
                Err(_) => {
                    let Some(vif) = vifs.iter().find(|v| &v.name == from) else {
                        bail!("{from} is neither an address nor an interface the policy manages");
                    };
                    let src = match src {
                        Some(a) => *a,
                        None => source_of(policy, plan, vif, to.is_ipv6()).inspect(|a| {
                            notes.push(format!(
                                "source address {a} assumed ({} declares none; give --src)",
                                vif.name
                            ))
                        })?,
                    };
                    (Some(vif), src)
                }
            };
            let receiver = vif_of(policy, plan, *to);
            let frame = build_frame(
                macs(sender, receiver),
                (src, *to),
                *protocol,
                Opening::Yes,
                *sport,
                *port,
            )?;
            (sender, frame)
        }
        Input::Bytes { from, frame } => {
            let sender = match from {
                None => None,
                Some(name) => Some(
                    vifs.iter()
                        .find(|v| &v.name == name)
                        .with_context(|| format!("{name} is no interface the policy manages"))?,
                ),
            };
            (sender, frame.clone())
        }
    };
    let receiver = addresses(&frame).1.and_then(|d| vif_of(policy, plan, d));
    live.run(sender, receiver, &frame, notes)
}

/// The MACs of a frame from `sender` to `receiver`: their declared ones, else made up.
pub fn macs(sender: Option<&ManagedVif>, receiver: Option<&ManagedVif>) -> ([u8; 6], [u8; 6]) {
    (
        sender.and_then(|v| v.mac).unwrap_or([0x02, 0, 0, 0, 0, 1]),
        receiver
            .and_then(|v| v.mac)
            .unwrap_or([0x02, 0, 0, 0, 0, 2]),
    )
}

/// isolator's program `name` among `ids`, as (id, kernel name).
fn find(inv: &Inventory, ids: &[u32], name: &str) -> Option<(u32, String)> {
    ids.iter().find_map(|id| {
        let n = inv.programs.get(id)?;
        (n == kernel_name(name)).then(|| (*id, n.clone()))
    })
}

/// A source address for `vif`: its first declared one of the family, else the first
/// address of its segment's first prefix of the family.
fn source_of(policy: &Policy, plan: &Plan, vif: &ManagedVif, v6: bool) -> anyhow::Result<IpAddr> {
    if let Some(n) = vif.addresses.iter().find(|n| n.addr().is_ipv6() == v6) {
        return Ok(n.addr());
    }
    let at = plan.position(vif.segment).context("the vif's segment")?;
    let segment = policy
        .tenants
        .iter()
        .flat_map(|t| &t.segments)
        .nth(at)
        .context("the vif's segment")?;
    segment
        .prefixes
        .iter()
        .find(|p| p.addr().is_ipv6() == v6)
        .and_then(|p| p.hosts().next())
        .with_context(|| format!("{} has no address of that family; give --src", vif.name))
}

/// The running daemon's counter maps, as pinned: the hash and the per-interface blocks.
struct Counters {
    hashed: PerCpuHashMap<MapData, CounterKey, Counter>,
    blocks: PerCpuArray<MapData, CounterBlock>,
}

fn open_counters(state_dir: &Path) -> anyhow::Result<Counters> {
    let dir = crate::dataplane::state_map_dir(state_dir);
    let open = |name: &str| -> anyhow::Result<aya::maps::Map> {
        let path = dir.join(name);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        aya::maps::Map::from_map_data(data).with_context(|| format!("opening {}", path.display()))
    };
    Ok(Counters {
        hashed: open(maps::COUNTERS)?
            .try_into()
            .context("COUNTERS is no counter map")?,
        blocks: open(maps::COUNTER_BLOCKS)?
            .try_into()
            .context("COUNTER_BLOCKS is no counter block map")?,
    })
}

/// Packets counted so far at `ifindex` in `dir`, by (verdict, flags).
fn counted(counters: &Counters, ifindex: u32, dir: u8) -> anyhow::Result<Vec<((u8, u8), u64)>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in counters.hashed.iter() {
        let (key, values) = entry.context("reading the counters")?;
        if key.ifindex == ifindex && key.direction == dir {
            let packets = values.iter().fold(0u64, |a, c| a.wrapping_add(c.packets));
            out.insert((key.verdict, key.flags), packets);
        }
    }
    if ifindex < limits::COUNTER_BLOCKS {
        let blocks = counters
            .blocks
            .get(&ifindex, 0)
            .context("reading the counter blocks")?;
        for verdict in 0..32u8 {
            let at = counter_block_index(dir, verdict);
            let packets = blocks
                .iter()
                .fold(0u64, |a, b| a.wrapping_add(b.counters[at].packets));
            if packets != 0 {
                let total = out.entry((verdict, 0)).or_insert(0u64);
                *total = total.wrapping_add(packets);
            }
        }
    }
    Ok(out.into_iter().collect())
}

fn verdict_text(verdict: Verdict, audited: bool) -> String {
    model::Judgement { verdict, audited }.to_string()
}

#[expect(clippy::too_many_arguments, reason = "one step's inputs, each named")]
fn run_step(
    counters: &Counters,
    (id, name): (u32, String),
    context: LiveContext,
    frame: &[u8],
    (vif, segment): (&ManagedVif, String),
    dir_label: &'static str,
    judgement: model::Judgement,
    cited: &[Cited],
    policy: &Policy,
    locations: &Locations,
) -> anyhow::Result<Step> {
    let dir = if dir_label == "ingress" {
        direction::INGRESS
    } else {
        direction::EGRESS
    };
    let before = counted(counters, vif.ifindex, dir)?;
    let fd = live::program_fd(id).with_context(|| format!("opening program {id} ({name})"))?;
    let action = test_run_live(std::os::fd::AsFd::as_fd(&fd), frame, context)
        .with_context(|| format!("running program {id} ({name}) on the frame"))?;
    let after = counted(counters, vif.ifindex, dir)?;
    let live_passes = match context {
        // XDP_PASS.
        LiveContext::Xdp { .. } => action == 2,
        // TCX_NEXT or TC_ACT_OK.
        LiveContext::Tc { .. } => matches!(action as i32, -1 | 0),
    };
    let moved: Vec<(u8, u8)> = after
        .iter()
        .filter(|(k, n)| before.iter().find(|(b, _)| b == k).map_or(0, |(_, m)| *m) < *n)
        .map(|(k, _)| *k)
        .collect();
    let as_verdict =
        |(v, flags): (u8, u8)| Verdict::from_code(v).map(|v| (v, flags & CounterKey::AUDIT != 0));
    let consistent: Vec<(Verdict, bool)> = moved
        .iter()
        .filter_map(|k| as_verdict(*k))
        .filter(|(v, audited)| (*v == Verdict::Pass || *audited) == live_passes)
        .collect();
    let mut note = None;
    let live = match consistent.as_slice() {
        [one] => verdict_text(one.0, one.1),
        [] => {
            note = Some("no counter moved: the reason is not known".to_string());
            if live_passes {
                "pass".to_string()
            } else {
                "drop".to_string()
            }
        }
        several => {
            note = Some(format!(
                "{} counters of the vif moved meanwhile (traffic): the reason is the model's if it is among them",
                several.len()
            ));
            let pick = several
                .iter()
                .find(|(v, a)| *v == judgement.verdict && *a == judgement.audited)
                .unwrap_or(&several[0]);
            verdict_text(pick.0, pick.1)
        }
    };
    let model = judgement.to_string();
    Ok(Step {
        direction: dir_label,
        device: vif.name.clone(),
        segment: Some(segment),
        program: format!("{name} #{id}"),
        agree: live == model,
        live,
        live_passes,
        model_passes: judgement.passes(),
        model,
        note,
        decided_by: cited.iter().map(|c| cite(policy, locations, c)).collect(),
    })
}

/// `file:line: entry` for a cited entry.
fn cite(policy: &Policy, locations: &Locations, cited: &Cited) -> String {
    let at = |pos: crate::policy::Pos| format!("{}:{}", locations.file, pos.line);
    let seg = |t: usize, s: usize| {
        let tenant = &policy.tenants[t];
        (tenant, &tenant.segments[s], locations.segment(t, s))
    };
    match *cited {
        Cited::Segment { tenant, segment } => {
            let (t, s, l) = seg(tenant, segment);
            format!(
                "{}: segment {}/{} ({})",
                at(l.name),
                t.name,
                s.name,
                join(&s.prefixes)
            )
        }
        Cited::Exposure {
            tenant,
            segment,
            index,
        } => {
            let (t, s, l) = seg(tenant, segment);
            let e = &s.expose[index];
            let pos = l.expose.get(index).copied().unwrap_or(l.name);
            format!(
                "{}: exposed {}/{} {}: {}",
                at(pos),
                t.name,
                s.name,
                e.prefix,
                e.service
            )
        }
        Cited::Flow { tenant, index } => {
            let t = &policy.tenants[tenant];
            let f = &t.flows[index];
            let pos = locations
                .tenants
                .get(tenant)
                .and_then(|l| l.flows.get(index).copied())
                .unwrap_or_default();
            format!(
                "{}: flow {}/{} -> {}/{}: {}",
                at(pos),
                t.name,
                f.from,
                f.to.tenant,
                f.to.segment,
                f.service
            )
        }
        Cited::Management { index } => {
            let m = &policy.management[index];
            let pos = locations
                .management
                .get(index)
                .map(|m| m.0)
                .unwrap_or_default();
            let services: Vec<String> = m.services.iter().map(|s| s.to_string()).collect();
            format!(
                "{}: management {}{}",
                at(pos),
                m.prefix,
                if services.is_empty() {
                    String::new()
                } else {
                    format!(": {}", services.join(", "))
                }
            )
        }
        Cited::Gateway {
            tenant,
            segment,
            index,
        } => {
            let (t, s, l) = seg(tenant, segment);
            let g = &s.gateways[index];
            let pos = l.gateways.get(index).map_or(l.name, |g| g.0);
            let services: Vec<String> = g.services.iter().map(|s| s.to_string()).collect();
            format!(
                "{}: gateway {} of {}/{}: {}",
                at(pos),
                g.address,
                t.name,
                s.name,
                if services.is_empty() {
                    "no services".to_string()
                } else {
                    services.join(", ")
                }
            )
        }
        Cited::Egress { tenant, segment } => {
            let (t, s, l) = seg(tenant, segment);
            format!(
                "{}: egress of {}/{}: {}",
                at(l.egress),
                t.name,
                s.name,
                s.egress.as_str()
            )
        }
    }
}

fn join(nets: &[ipnet::IpNet]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one's-complement sum of `data`, folded.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for chunk in part.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether a frame built from fields is one that opens a tracked connection where it
/// passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// A TCP SYN, an ICMP echo request.
    Yes,
    /// A TCP ACK, an ICMP echo reply: the rules judge them as the opening ones (the
    /// reference model does not look at TCP flags or the echo's direction), but they open
    /// nothing. (Every UDP datagram opens a connection where it passes.)
    No,
}

/// An Ethernet frame between `macs` (source, destination) from `addresses.0` to
/// `addresses.1`: a TCP SYN (or ACK), a UDP datagram (4 bytes of payload) or an ICMP echo
/// request (or reply), with correct lengths and checksums.
pub fn build_frame(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    (src, dst): (IpAddr, IpAddr),
    protocol: Proto,
    opening: Opening,
    sport: u16,
    dport: u16,
) -> anyhow::Result<Vec<u8>> {
    let v6 = match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => bail!("{src} and {dst} are of different families"),
    };
    let (number, mut l4) = match protocol {
        Proto::Tcp => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..8].copy_from_slice(&1u32.to_be_bytes());
            h[12] = 5 << 4;
            // SYN, or ACK.
            h[13] = if opening == Opening::Yes { 0x02 } else { 0x10 };
            h[14..16].copy_from_slice(&64240u16.to_be_bytes());
            (6u8, h)
        }
        Proto::Udp => {
            let mut h = vec![0u8; 12];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&12u16.to_be_bytes());
            h[8..12].copy_from_slice(b"isol");
            (17, h)
        }
        Proto::Icmp => {
            let mut h = vec![0u8; 8];
            h[0] = match (v6, opening) {
                (true, Opening::Yes) => 128,
                (true, Opening::No) => 129,
                (false, Opening::Yes) => 8,
                (false, Opening::No) => 0,
            };
            h[4..6].copy_from_slice(&sport.to_be_bytes());
            h[6..8].copy_from_slice(&1u16.to_be_bytes());
            (if v6 { 58 } else { 1 }, h)
        }
    };
    let addr = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let (s, d) = (addr(src), addr(dst));
    let len = l4.len() as u16;
    // The pseudo-header (not for ICMPv4).
    let pseudo: Vec<u8> = if v6 {
        [
            &s[..],
            &d[..],
            &u32::from(len).to_be_bytes(),
            &[0, 0, 0, number],
        ]
        .concat()
    } else {
        [&s[..], &d[..], &[0, number], &len.to_be_bytes()[..]].concat()
    };
    let at = match protocol {
        Proto::Tcp => 16,
        Proto::Udp => 6,
        Proto::Icmp => 2,
    };
    let sum = if protocol == Proto::Icmp && !v6 {
        checksum(&[&l4])
    } else {
        checksum(&[&pseudo, &l4])
    };
    l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    let mut frame = [&dst_mac[..], &src_mac[..]].concat();
    if v6 {
        frame.extend_from_slice(&0x86ddu16.to_be_bytes());
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&[number, 64]);
    } else {
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&(20 + len).to_be_bytes());
        h.extend_from_slice(&[0, 1, 0x40, 0, 64, number, 0, 0]);
        h.extend_from_slice(&s);
        h.extend_from_slice(&d);
        let sum = checksum(&[&h]);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        frame.extend_from_slice(&h);
    }
    if v6 {
        frame.extend_from_slice(&s);
        frame.extend_from_slice(&d);
    }
    frame.extend_from_slice(&l4);
    Ok(frame)
}

/// The first frame of a pcap file (Ethernet link type, either byte order, micro- or
/// nanosecond timestamps).
pub fn first_pcap_frame(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(bytes.len() >= 24 + 16, "too short for a pcap file");
    let magic = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => bail!("not a pcap file (pcapng is not read; convert with `editcap -F pcap`)"),
    };
    let u32_at = |at: usize| {
        let b: [u8; 4] = bytes[at..at + 4].try_into().expect("4 bytes");
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    anyhow::ensure!(
        u32_at(20) == 1,
        "the pcap's link type is {}, not Ethernet",
        u32_at(20)
    );
    let captured = u32_at(24 + 8) as usize;
    let frame = bytes
        .get(40..40 + captured)
        .context("the pcap's first frame is cut")?;
    Ok(frame.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_frame_parses_as_what_it_was_built_from() {
        let frame = build_frame(
            ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
            ("10.1.1.2".parse().unwrap(), "10.2.1.2".parse().unwrap()),
            Proto::Tcp,
            Opening::Yes,
            40000,
            443,
        )
        .expect("built");
        let parsed = model::frame::parse(&frame).expect("parses");
        let model::frame::L3::Ip(ip) = parsed.l3 else {
            panic!("not IP")
        };
        assert_eq!(ip.dport(), Some(443));
        assert_eq!(ip.sport(), Some(40000));
        assert_eq!(ip.protocol, 6);
        // A valid IPv4 header checksum sums to zero.
        assert_eq!(checksum(&[&frame[14..34]]), 0);
        for proto in [Proto::Udp, Proto::Icmp] {
            let v6 = build_frame(
                ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
                ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap()),
                proto,
                Opening::No,
                1,
                53,
            )
            .expect("built");
            assert!(model::frame::parse(&v6).is_ok(), "{proto:?}");
        }
    }

    #[test]
    fn the_first_frame_of_a_pcap() {
        let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&65535u32.to_le_bytes());
        pcap.extend_from_slice(&1u32.to_le_bytes());
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&3u32.to_le_bytes());
        pcap.extend_from_slice(&3u32.to_le_bytes());
        pcap.extend_from_slice(&[1, 2, 3]);
        assert_eq!(first_pcap_frame(&pcap).expect("read"), [1, 2, 3]);
    }
}
