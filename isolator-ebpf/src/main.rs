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
//! | `fast` | the short way to a drop (step 8, early, before the parser) |
//! | `guard` | the source guard (I2) |
//! | `sender` | where a delivered frame comes from |
//! | `rules` | where addresses lie; management, exposures, flows |
//! | `resolution` | ARP and neighbour discovery between segments |
//! | `fragments` | later fragments follow their first |
//! | `conntrack` | tracked connections |
//! | `faults` | what the kernel could not record: counted and logged |
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
mod events;
mod fast;
mod faults;
mod fragments;
mod guard;
mod maps;
mod resolution;
mod rules;
mod sender;
mod vif;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, tcx_action_base::TCX_NEXT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use isolator_common::{ConnState, SegmentInfo, Verdict, direction};
use isolator_ebpf::{packet, proto};

use crate::account::{Outcome, account, audit, counted_as, note_audited, uncount};
use crate::maps::Scratch;
use crate::packet::KIND_ARP;
use crate::packet::{Frame, TcFrame, XdpFrame, parse};
use crate::rules::{
    HostVerdict, Place, classified, connection_possible, flow, host, keep_home, known, slot,
};
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
    // The short way to a drop, for what it is sure of; the story for the rest.
    let decided = fast::isolator_short_way(ctx.ctx, ifindex, bytes as u32);
    if decided & fast::UNDECIDED == 0 {
        return decided;
    }
    let frame = XdpFrame::new(&ctx);
    let outcome = judge(&frame, ifindex, direction::INGRESS, ifindex, decided);
    let passes = account(ifindex, direction::INGRESS, outcome, bytes);
    faults::flush();
    if passes {
        if outcome.audited {
            note_audited(&ctx, outcome.verdict);
        }
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// What the TC programs return for a frame they let pass on `ifindex`: `TCX_NEXT`, so
/// that programs attached after isolator's (it attaches first) still judge it; a drop is
/// final. While the vif's hooks are handed over from the quick `cls_bpf` attachment to
/// TCX (`maps::HANDOFF`), both run isolator's program: there `TC_ACT_OK`, which ends the
/// chain under TCX (`TCX_PASS`) and passes under `cls_bpf`, so that no frame is judged
/// (and counted) twice.
#[inline(always)]
fn tc_pass_on(ifindex: u32) -> i32 {
    let handing = maps::HANDOFF_COUNT.get(0).is_some_and(|n| *n != 0);
    if handing && maps::HANDOFF.get_ptr(&ifindex).is_some() {
        TC_ACT_OK
    } else {
        TCX_NEXT
    }
}

#[classifier]
pub fn isolator_egress(ctx: TcContext) -> i32 {
    // SAFETY: the context's socket buffer is valid for the whole run.
    let (ifindex, entered) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex) };
    let bytes = ctx.len() as u64;
    // Make the headers linear so that they can be read directly.
    let want = if ctx.len() < 256 { ctx.len() } else { 256 };
    let _ = ctx.pull_data(want);
    let outcome = judge(&TcFrame::new(&ctx), ifindex, direction::EGRESS, entered, 0);
    let passes = account(ifindex, direction::EGRESS, outcome, bytes);
    faults::flush();
    if passes {
        tc_pass_on(ifindex)
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
    if offloaded_tag_allowed(present, tci, ifindex, inner) {
        return tc_pass_on(ifindex);
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
    faults::flush();
    TC_ACT_SHOT
}

/// Whether the VLAN tag a frame carries in offload metadata (if any) may pass: one tag
/// with an id the interface lists, never two. An 802.1p priority tag (VLAN id 0) is no
/// VLAN: the frame is judged as untagged, as the XDP program judged it.
#[inline(always)]
fn offloaded_tag_allowed(present: u32, tci: u32, ifindex: u32, inner: u32) -> bool {
    if present == 0 {
        return true;
    }
    let stacked = proto::ether::is_vlan_tag(u16::from_be(inner as u16));
    let vlan = tci as u16 & proto::ether::VLAN_ID_MASK;
    !stacked
        && (vlan == 0
            || match identify(ifindex) {
                Some(vif) => vlan_allowed(&vif, vlan),
                None => false,
            })
}

/// What a VM sends, judged on its vif's TC ingress instead of XDP: attached only where
/// another program holds the vif's XDP hook, in place of both [`isolator_ingress`] and
/// [`isolator_tags`] (it applies the offloaded-tag rule too). The same story as XDP, on
/// the socket buffer; what the other XDP program redirects never gets here.
#[classifier]
pub fn isolator_ingress_tc(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the context's socket buffer is valid for the whole run.
    let (ifindex, present, tci, inner) = unsafe {
        (
            (*skb).ifindex,
            (*skb).vlan_present,
            (*skb).vlan_tci,
            (*skb).protocol,
        )
    };
    let bytes = ctx.len() as u64;
    let outcome = if offloaded_tag_allowed(present, tci, ifindex, inner) {
        let want = if ctx.len() < 256 { ctx.len() } else { 256 };
        let _ = ctx.pull_data(want);
        judge(&TcFrame::new(&ctx), ifindex, direction::INGRESS, ifindex, 0)
    } else {
        Outcome {
            verdict: Verdict::Vlan,
            audited: false,
        }
    };
    let passes = account(ifindex, direction::INGRESS, outcome, bytes);
    faults::flush();
    if passes {
        tc_pass_on(ifindex)
    } else {
        TC_ACT_SHOT
    }
}

/// A program that passes everything: the baseline `cargo xtask bench` measures the
/// enforcer against (the kernel's own cost of running an XDP program). Never attached.
#[xdp]
pub fn isolator_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Identifies the vif, parses the frame, applies the checks both directions share (VLAN
/// tags in the bytes, later fragments), then the direction's story; remembers a first
/// fragment that passes so that its later fragments may follow. `entered` is the
/// interface the frame entered the host through (the vif itself on ingress).
/// `handed`: what the short way left for the story ([`fast::UNDECIDED`] and its flags),
/// else 0.
#[inline(always)]
fn judge(frame: &impl Frame, ifindex: u32, dir: u8, entered: u32, handed: u32) -> Outcome {
    let refuse = |verdict| Outcome {
        verdict,
        audited: false,
    };
    let vif = if handed & fast::IDENTIFIED != 0 {
        vif::identified(handed & 1, ifindex)
    } else {
        identify(ifindex)
    };
    let Some(vif) = vif else {
        return refuse(Verdict::NoPolicy);
    };
    if vif.quarantined() {
        return refuse(Verdict::UnknownInterface);
    }
    let fail_closed = refuse(Verdict::NoPolicy);
    let Some(scratch) = maps::scratch() else {
        return fail_closed;
    };
    scratch.packet.reset();
    let verdict = match parse(frame, &mut scratch.packet) {
        Err(verdict) => verdict,
        Ok(()) if scratch.packet.has_vlan && !vlan_allowed(&vif, scratch.packet.vlan) => {
            Verdict::Vlan
        }
        Ok(()) => {
            // The copy of the vif's entry `identify` made.
            let entry = &scratch.vifs[vif::slot::RUNS_ON as usize];
            let mut kept = keep_home(entry, &scratch.packet);
            if handed & fast::DESTINATION_KNOWN != 0 {
                kept |= known::DESTINATION;
            }
            if dir == direction::INGRESS {
                verdict_of(ingress(frame, &vif, scratch, kept))
            } else {
                verdict_of(egress(frame, &vif, entered, scratch, kept))
            }
        }
    };
    let outcome = audit(verdict, &vif);
    if outcome.passes() {
        fragments::remember_first(vif.ifindex, &scratch.packet, &mut scratch.frag);
    }
    outcome
}

/// Ingress: what a VM of segment S may send (docs/design.md, "Ingress"). A BPF subprogram
/// of its own (as is [`egress`]): the verifier then walks each story's branches apart from
/// the rest of the program, which keeps it well inside its budget.
/// `kept`: the addresses whose classes are in their slots already ([`keep_home`]).
#[inline(never)]
fn ingress(frame: &impl Frame, vif: &Vif, scratch: &mut Scratch, kept: u32) -> Step {
    let Scratch {
        packet: p,
        key,
        frag,
        ..
    } = scratch;
    let p = &*p;
    let generation = vif.generation;
    let sender = vif.segment;
    let v4 = p.is_v4();
    let src = classified(
        generation,
        v4,
        slot::SOURCE,
        &p.src,
        kept & known::SOURCE != 0,
    );
    // 1. The source guard; a later fragment is then judged by its first.
    guard::source(vif, p, src)?;
    fragments::later(vif.ifindex, p, frag)?;
    // Every later step asks about the destination: classified once.
    let dst = classified(
        generation,
        v4,
        slot::DESTINATION,
        &p.dst,
        kept & known::DESTINATION != 0,
    );
    // 2. Management prefixes and loopback, before every exception.
    if p.kind != KIND_ARP && (p.dst_loopback() || dst.management(generation, p)) {
        return decide(Verdict::Management);
    }
    // 3. Address resolution, by the address it concerns, and only on the link.
    resolution::ingress(vif, p, dst, src)?;
    // 4. The host itself and the segment's gateways: skip the link-scope and segment
    // exceptions; after step 7 (the connections either side opened), a service declared
    // at a gateway opens a connection, anything else is `management`.
    let to_host = !matches!(host(generation, sender, p, dst), HostVerdict::NotHost);
    let target = dst.place();
    if !to_host {
        // 5. Link-scope housekeeping, which receivers on the link judge themselves: DHCP
        // discovery to the servers' broadcast addresses, multicast listener and IGMP
        // messages, link-scope multicast, IPv6 link-local unicast.
        if p.is_dhcp_client_broadcast()
            || (p.is_mld() && p.dst_link_scope_multicast())
            || (p.is_igmp() && p.dst_multicast())
            || p.dst_link_scope_multicast()
            || p.dst_ipv6_link_local()
        {
            return decide(Verdict::Pass);
        }
        // 6. Within the segment.
        if target.is(sender) {
            return decide(Verdict::Pass);
        }
        // 8, early: to another segment, a packet no connection the policy admits can
        // carry (no flow or exposure admits its service either way).
        if let Place::Segment(t) = target
            && !connection_possible(vif, sender, t.id, p, t.tenant)
        {
            return decide(cross(vif, t));
        }
    }
    // 7. A tracked connection, or an ICMP error about one the VM took part in. This comes
    // before a gateway's service opens one, so that the VM's side of a connection to the
    // service (the handshake's last ACK, its data) moves it along.
    if connection(frame, vif, p, key, ConnState::PEER_VM) {
        return decide(Verdict::Pass);
    }
    if to_host {
        // Asked again rather than carried across step 7: the verifier then walks the
        // tracker with one flag, not three states (the lookups are cheap and this path
        // rare).
        if let HostVerdict::Service = host(generation, sender, p, dst) {
            conntrack::open(p, key, vif, direction::INGRESS, Place::Outside);
            return decide(Verdict::Pass);
        }
        return decide(Verdict::Management);
    }
    match target {
        // 8. Another segment: an exposed endpoint or a flow.
        Place::Segment(t) => {
            if dst.exposed(generation, p) || flow(generation, sender, t.id, p) {
                conntrack::open(p, key, vif, direction::INGRESS, target);
                decide(Verdict::Pass)
            } else {
                decide(cross(vif, t))
            }
        }
        // 9. Outside every segment.
        Place::Outside => {
            if vif.info.flags & SegmentInfo::EGRESS_ALLOW != 0 {
                conntrack::open(p, key, vif, direction::INGRESS, target);
                decide(Verdict::Pass)
            } else {
                decide(Verdict::EgressDenied)
            }
        }
    }
}

/// Egress: what may reach a VM of segment T (docs/design.md, "Egress"). `kept` as for
/// [`ingress`].
#[inline(never)]
fn egress(frame: &impl Frame, vif: &Vif, entered: u32, scratch: &mut Scratch, kept: u32) -> Step {
    let Scratch {
        packet: p,
        key,
        frag,
        ..
    } = scratch;
    let p = &*p;
    let generation = vif.generation;
    let receiver = vif.segment;
    fragments::later(vif.ifindex, p, frag)?;
    // 1. The sender: the interface the frame entered the host through.
    let v4 = p.is_v4();
    let src = classified(
        generation,
        v4,
        slot::SOURCE,
        &p.src,
        kept & known::SOURCE != 0,
    );
    let source = sender::of(generation, entered, src)?;
    // 2. From T.
    if source.is(receiver) {
        return decide(Verdict::Pass);
    }
    let dst = classified(
        generation,
        v4,
        slot::DESTINATION,
        &p.dst,
        kept & known::DESTINATION != 0,
    );
    // 3. Address resolution.
    resolution::egress(vif, source, p, dst, src)?;
    // 4. A unicast packet for an address outside this segment is not for this VM,
    // however it got its MAC: no connection or exposure of another place applies here.
    if p.is_unicast_routable() && !dst.place().is(receiver) {
        return match source {
            Place::Segment(s) => decide(cross(vif, s)),
            Place::Outside => decide(Verdict::NotExposed),
        };
    }
    // 5. Link-local housekeeping from outside: DHCP answers from the infrastructure (a
    // link-local source, a gateway of T, the host), multicast listener queries from a
    // link-local source, IGMP queries.
    if source == Place::Outside
        && ((p.is_dhcp_server() && resolution::infrastructure(vif, p, src))
            || (p.is_mld() && p.src_ipv6_link_local())
            || p.is_igmp_query())
    {
        return decide(Verdict::Pass);
    }
    // 8, early: from another segment, a packet no connection the policy admits can
    // carry.
    if let Place::Segment(s) = source
        && !connection_possible(vif, s.id, receiver, p, s.tenant)
    {
        return decide(cross(vif, s));
    }
    // 6. A tracked connection, or an ICMP error about one the VM took part in.
    if connection(frame, vif, p, key, conntrack::peer(source)) {
        return decide(Verdict::Pass);
    }
    // 7. An exposed endpoint of T.
    if dst.exposed(generation, p) {
        conntrack::open(p, key, vif, direction::EGRESS, source);
        return decide(Verdict::Pass);
    }
    // 8. From another segment: a flow; from outside: nothing else.
    match source {
        Place::Segment(s) if flow(generation, s.id, receiver, p) => {
            conntrack::open(p, key, vif, direction::EGRESS, source);
            decide(Verdict::Pass)
        }
        Place::Segment(s) => decide(cross(vif, s)),
        Place::Outside => decide(Verdict::NotExposed),
    }
}

/// Whether a tracked connection carries the packet (steps 7 and 6). One admitted under an
/// earlier policy is judged again by the one in force first, and removed if it no longer
/// admits it: a revoked connection stops at once, not when the daemon's re-check reaches
/// it.
#[inline(always)]
fn connection(
    frame: &impl Frame,
    vif: &Vif,
    p: &packet::Packet,
    key: &mut isolator_common::ConnKey,
    sender: u32,
) -> bool {
    conntrack::tracked(frame, vif, p, key, sender)
        && (!conntrack::found_stale() || conntrack::rejudge(vif, key))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// SAFETY: the kernel reads the license from this section by this name; nothing else in
// the object is called LICENSE.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
