//! Kernel side of isolator: what a VM may send (XDP on its vif, direction ingress) and
//! what may reach it (TC on the vif's egress), plus the VLAN guard for tags carried
//! outside the frame bytes (TC on the vif's ingress).
//!
//! Each program reads like the policy: identify the vif, parse, then the steps of its
//! story (numbered as in docs/design.md), then account. A step returns a [`Step`]:
//! `Ok(())` to go on to the next one, `Err(verdict)` when it has decided (a pass
//! included). Every exit goes through [`account::account`], so the verdict, the reason
//! and the counters can never disagree. One module per concern:
//!
//! | module | concern |
//! |---|---|
//! | `maps` | every map |
//! | `account` | counting, audit mode, the pass/drop decision |
//! | `vif` | which vif, its segment and tenant |
//! | `guard` | the source guard (I2) |
//! | `sender` | where a delivered frame comes from |
//! | `rules` | where addresses lie; management, exposures, flows |
//! | `resolution` | ARP and neighbour discovery between segments |
//! | `fragments` | later fragments follow their first |
//! | `conntrack` | tracked connections |
//! | `isolator_ebpf::packet` | the parser (host-testable) |
#![no_std]
#![no_main]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys living in the per-CPU scratch map are passed by reference: by value \
              (clippy's suggestion) they would be copied onto the 512-byte BPF stack"
)]

mod account;
mod conntrack;
mod fragments;
mod guard;
mod maps;
mod resolution;
mod rules;
mod sender;
mod vif;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use isolator_common::{ConnKey, FragKey, SegmentInfo, Verdict, direction};
use isolator_ebpf::{packet, proto};

use crate::account::{Outcome, account, audit, counted_as, note_audited, uncount};
use crate::packet::{Frame, Packet, parse};
use crate::rules::{Place, exposed, flow, management, place};
use crate::vif::{Vif, cross, identify, vlan_allowed};

/// What one step of a story says: `Ok(())` (not decided, go on) or `Err(verdict)`
/// (decided; [`Verdict::Pass`] included). Steps compose with `?`.
type Step = Result<(), Verdict>;

/// Not decided yet: go on to the next step.
const CONTINUE: Step = Ok(());

/// Decided: this is the verdict.
#[inline(always)]
fn decide(verdict: Verdict) -> Step {
    Err(verdict)
}

/// The verdict a story reached. A story that decided nothing fails closed.
#[inline(always)]
fn verdict_of(story: Step) -> Verdict {
    match story {
        Ok(()) => Verdict::NoPolicy,
        Err(verdict) => verdict,
    }
}

#[xdp]
pub fn isolator_ingress(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let outcome = judge(&ctx, ifindex, direction::INGRESS);
    if account(ifindex, direction::INGRESS, outcome, bytes) {
        if outcome.audited {
            note_audited(&ctx, outcome.verdict);
        }
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[classifier]
pub fn isolator_egress(ctx: TcContext) -> i32 {
    // SAFETY: the context's socket buffer is valid for the whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let bytes = ctx.len() as u64;
    // Make the headers linear so that they can be read directly.
    let want = if ctx.len() < 256 { ctx.len() } else { 256 };
    let _ = ctx.pull_data(want);
    let outcome = judge(&ctx, ifindex, direction::EGRESS);
    if account(ifindex, direction::EGRESS, outcome, bytes) {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    }
}

/// The VLAN guard for tags outside the frame bytes. A kernel VLAN device (or bridge, or
/// program) on a VM whose interface offloads VLAN insertion (veth does) hands the frame
/// over untagged with the tag in `skb->vlan_tci`: the XDP program never sees it. This
/// program runs next, on the skb, and applies the same rule as the XDP program does to
/// tags in the bytes: one tag with an id the interface lists, never two. A frame it
/// refuses was already counted by the XDP program (as passed, or audited); that count is
/// moved to `vlan`, so every frame is still counted once.
#[classifier]
pub fn isolator_tags(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the context's socket buffer is valid for the whole run.
    let (present, tci, ifindex, inner) = unsafe {
        (
            (*skb).vlan_present,
            (*skb).vlan_tci,
            (*skb).ifindex,
            (*skb).protocol,
        )
    };
    if present == 0 {
        return TC_ACT_OK;
    }
    let stacked = proto::ether::is_vlan_tag(u16::from_be(inner as u16));
    let allowed = !stacked
        && match identify(ifindex) {
            Some(vif) => vlan_allowed(&vif, (tci & 0x0fff) as u16),
            None => false,
        };
    if allowed {
        return TC_ACT_OK;
    }
    let bytes = ctx.len() as u64;
    // SAFETY: as above.
    let (data, meta) = unsafe { ((*skb).data as usize, (*skb).data_meta as usize) };
    let (counted, audited) = counted_as(meta, data);
    uncount(ifindex, direction::INGRESS, counted, audited, bytes);
    let refused = Outcome {
        verdict: Verdict::Vlan,
        audited: false,
    };
    account(ifindex, direction::INGRESS, refused, bytes);
    TC_ACT_SHOT
}

/// A program that passes everything: the baseline `cargo xtask bench` measures the
/// enforcer against (the kernel's own cost of running an XDP program). Never attached.
#[xdp]
pub fn isolator_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Identifies the vif, parses the frame, applies the checks both directions share (VLAN
/// tags in the bytes, later fragments), then the direction's story; remembers a first
/// fragment that passes so that its later fragments may follow.
#[inline(always)]
fn judge(frame: &impl Frame, ifindex: u32, dir: u8) -> Outcome {
    let fail_closed = Outcome {
        verdict: Verdict::NoPolicy,
        audited: false,
    };
    let Some(vif) = identify(ifindex) else {
        return fail_closed;
    };
    let Some(scratch) = maps::scratch() else {
        return fail_closed;
    };
    let p = &mut scratch.packet;
    let verdict = match parse(frame, p) {
        Err(verdict) => verdict,
        Ok(()) if p.has_vlan && !vlan_allowed(&vif, p.vlan) => Verdict::Vlan,
        Ok(()) if dir == direction::INGRESS => {
            verdict_of(ingress(frame, &vif, p, &mut scratch.key, &mut scratch.frag))
        }
        Ok(()) => verdict_of(egress(frame, &vif, p, &mut scratch.key, &mut scratch.frag)),
    };
    let outcome = audit(verdict, &vif);
    if outcome.passes() {
        fragments::remember_first(p, &mut scratch.frag);
    }
    outcome
}

/// Ingress: what a VM of segment S may send (docs/design.md, "Ingress").
#[inline(always)]
fn ingress(
    frame: &impl Frame,
    vif: &Vif,
    p: &Packet,
    key: &mut ConnKey,
    frag: &mut FragKey,
) -> Step {
    let generation = vif.generation;
    let sender = vif.segment;
    // 0. The source guard, then: a later fragment is judged by its first.
    guard::source(vif, p)?;
    sender::learn_mac(&p.src_mac, vif.ifindex);
    fragments::later(p, frag)?;
    // 1. Address resolution, by the address it concerns.
    resolution::ingress(vif, p)?;
    // 2. Management.
    if management(generation, p) {
        return decide(Verdict::Management);
    }
    // 3. Within the segment.
    let target = place(generation, p.is_v4(), &p.dst);
    if target == Place::Segment(sender) {
        return decide(Verdict::Pass);
    }
    // 4. A tracked connection, or an ICMP error about one.
    if conntrack::tracked(frame, p, key, generation) {
        return decide(Verdict::Pass);
    }
    match target {
        // 5. Another segment: an exposed endpoint or a flow.
        Place::Segment(s) => {
            if exposed(generation, p) || flow(generation, sender, s, p) {
                conntrack::open(p, key, vif, direction::INGRESS);
                decide(Verdict::Pass)
            } else {
                decide(cross(vif, s))
            }
        }
        // 6. Outside every segment.
        Place::Outside => {
            if p.is_dhcp_client() || p.is_mld() {
                return decide(Verdict::Pass);
            }
            // Addressed at layer 2 to a VM (link-local and other addresses outside every
            // segment): judged as traffic to that VM's segment.
            if let Place::Segment(s) = sender::mac_place(generation, &p.dst_mac) {
                return if s == sender {
                    decide(Verdict::Pass)
                } else {
                    decide(cross(vif, s))
                };
            }
            if vif.info.flags & SegmentInfo::EGRESS_ALLOW != 0 {
                conntrack::open(p, key, vif, direction::INGRESS);
                decide(Verdict::Pass)
            } else {
                decide(Verdict::EgressDenied)
            }
        }
    }
}

/// Egress: what may reach a VM of segment T (docs/design.md, "Egress").
#[inline(always)]
fn egress(
    frame: &impl Frame,
    vif: &Vif,
    p: &Packet,
    key: &mut ConnKey,
    frag: &mut FragKey,
) -> Step {
    let generation = vif.generation;
    let receiver = vif.segment;
    fragments::later(p, frag)?;
    let source = sender::source_place(generation, p);
    // 1. From T.
    if source == Place::Segment(receiver) {
        return decide(Verdict::Pass);
    }
    // 2. Address resolution from another segment.
    resolution::egress(vif, source, p)?;
    // A unicast packet for an address outside this segment is not for this VM, however it
    // got its MAC: no connection or exposure of another place applies here.
    if p.is_unicast_routable() && place(generation, p.is_v4(), &p.dst) != Place::Segment(receiver) {
        return match source {
            Place::Segment(s) => decide(cross(vif, s)),
            Place::Outside => decide(Verdict::NotExposed),
        };
    }
    // 3. Link-local housekeeping from routers and the host: DHCP answers, multicast
    // listener queries and reports.
    if source == Place::Outside && (p.is_dhcp_server() || p.is_mld()) {
        return decide(Verdict::Pass);
    }
    // 4. A tracked connection, or an ICMP error about one.
    if conntrack::tracked(frame, p, key, generation) {
        return decide(Verdict::Pass);
    }
    // 5. An exposed endpoint of T.
    if exposed(generation, p) {
        conntrack::open(p, key, vif, direction::EGRESS);
        return decide(Verdict::Pass);
    }
    // 6. From another segment: a flow; from outside: nothing else.
    match source {
        Place::Segment(s) if flow(generation, s, receiver, p) => {
            conntrack::open(p, key, vif, direction::EGRESS);
            decide(Verdict::Pass)
        }
        Place::Segment(s) => decide(cross(vif, s)),
        Place::Outside => decide(Verdict::NotExposed),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
