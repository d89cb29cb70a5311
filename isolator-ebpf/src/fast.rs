//! The short way to a drop: a plain IPv4 TCP or UDP packet a VM sends to another segment
//! that no flow or exposure concerns, or to management or loopback, refused by the XDP
//! program before the parser fills the scratch space (docs/design.md, "The short way to a
//! drop").
//!
//! [`judged`] reads the few header fields such a packet needs straight from the frame and
//! decides only a drop that the whole story ([`crate::ingress`]) would decide with the same
//! reason: each of its conditions is one under which the story refuses at its step 2
//! (management) or, skipping step 7, at step 8. Whatever it is not sure of (another
//! protocol, an IP option, a fragment, a source outside the vif's home, a destination
//! with any other flag the story looks at) it leaves to the story, which judges the frame
//! from its start, reusing the vif's entry and the destination's class the short way
//! found. It never passes a frame (but as audit mode passes any auditable drop), so a
//! mistake in it could only drop what the story would drop for another reason, or leave
//! to the story what it could have refused. The verdict table `short_way` runs each frame
//! through the XDP program and through the TC ingress judge, which has no short way: both
//! must agree.

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    programs::XdpContext,
};
use isolator_common::{AddrClass, SegmentInfo, Verdict, VifInfo, direction, vif_slot};

use crate::account::{audit_by, count, note_audited};
use crate::packet::{Frame, XdpFrame, at};
use crate::proto::{dhcp, ip};
use crate::rules::{
    REPLIES, copy_class, isolator_pair_admits, pair_service, probe_v4, set_admits, slot,
};
use crate::vif;
use crate::{events, maps};

/// Ethernet header: destination and source MAC, EtherType.
const ETH_LEN: usize = 14;
/// An IPv4 header without options.
const IPV4_LEN: usize = 20;

/// Flags of a destination's class that the short way leaves to the story: what it asks
/// about before its step 8 (the host, gateways). Management (step 2) and exposures (steps
/// 7 and 8) it asks about itself.
const STORY_FLAGS: u32 = AddrClass::HOST | AddrClass::GATEWAY;

/// In what [`isolator_short_way`] returns: it leaves the frame to the story (else the
/// value is the XDP action). With it, [`IDENTIFIED`] and [`DESTINATION_KNOWN`] tell the
/// story what it need not do again.
pub const UNDECIDED: u32 = 1 << 31;
/// The vif's entry is in this CPU's scratch space, under the generation in bit 0
/// ([`crate::vif::identified`]).
pub const IDENTIFIED: u32 = 1 << 30;
/// The destination's class is in its slot (`rules::slot::DESTINATION`), as the probe
/// found it.
pub const DESTINATION_KNOWN: u32 = 1 << 29;

/// What [`judged`] returns for a drop: its reason.
const CROSS_TENANT: u32 = 1;
const CROSS_SEGMENT: u32 = 2;
const MANAGEMENT: u32 = 3;

/// The XDP program's short way: for a frame it refuses (see the module), counts and
/// reports the frame as the story's exit does ([`account`], audit mode included), and
/// returns the XDP action; [`UNDECIDED`] for every other frame, which the program then
/// judges from the start, with what it already knows ([`IDENTIFIED`],
/// [`DESTINATION_KNOWN`]). A global BPF function: the verifier checks it
/// once, on its own, and walks the story after it as it did without it.
///
/// It reads the vif's entry where it lies in `VIF_SLOTS` (a vif found only in `VIFS` is
/// left to the story), and the destination's class where it lies in its address map (or
/// in the vif's entry, its home); it copies the entry into the scratch space, and the
/// class into its slot, only for a frame it leaves to the story; a report of a drop
/// takes the packet's fields as arguments ([`events::report_v4`]), written only into a
/// report the budget admits. A drop thus costs no copy.
///
/// A fault it records (a full counter map) is counted at once and logged at the next
/// exit of a program on this CPU: the log's record is large, and the verifier would walk
/// it here too.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn isolator_short_way(ctx: *mut xdp_md, ifindex: u32, bytes: u32) -> u32 {
    if ctx.is_null() {
        return UNDECIDED;
    }
    let Some(&generation) = maps::CONFIG.get(0) else {
        return UNDECIDED;
    };
    // The vif's entry where it lies in its slot. A vif without one (an ifindex of 16384
    // or more, in `VIFS`) is left to the story: the verifier would walk the short way
    // once more for an entry in the scratch space.
    let entry = match vif_slot(generation, ifindex).and_then(|at| maps::VIF_SLOTS.get(at)) {
        Some(entry) if entry.flags & VifInfo::PRESENT != 0 => entry,
        _ => return UNDECIDED,
    };
    let mut probed = Probed::No;
    let refusal = if entry.flags & VifInfo::QUARANTINED != 0 {
        None
    } else {
        judged(
            &XdpFrame::from_context(ctx),
            generation,
            ifindex,
            entry,
            &mut probed,
        )
    };
    let Some(refusal) = refusal else {
        // The story takes over the destination's class, in its slot as the probe of
        // `rules::isolator_classify` leaves it, ...
        let known = match probed {
            Probed::No => 0,
            Probed::Found(class) => slot_class(class),
            Probed::Nothing => slot_class(&AddrClass::OUTSIDE),
        };
        // ... and the vif's entry from the scratch space.
        if vif::isolator_vif(generation, ifindex, vif::slot::RUNS_ON) == 0 {
            return UNDECIDED;
        }
        return UNDECIDED | IDENTIFIED | (generation & 1) | known;
    };
    let verdict = match refusal.code {
        CROSS_TENANT => Verdict::CrossTenant,
        CROSS_SEGMENT => Verdict::CrossSegment,
        _ => Verdict::Management,
    };
    let outcome = audit_by(verdict, entry.info.flags);
    // Reported as the story's exit would, with the packet's fields as arguments: nothing
    // is written for a report the budget refuses.
    events::report_v4(ifindex, direction::INGRESS, outcome, refusal.fields);
    if count(ifindex, direction::INGRESS, outcome, u64::from(bytes)) {
        note_audited(&XdpContext::new(ctx), verdict);
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// What the short way reads of the destination's class.
struct Destination {
    segment: u32,
    tenant: u32,
    flags: u32,
    management: u32,
    exposure: u32,
}

impl Destination {
    /// Read here, each field once (volatile reads: the compiler would otherwise carry
    /// the pointer on and read where a field is used).
    #[inline(always)]
    fn of(class: &AddrClass) -> Destination {
        // SAFETY: reads of a valid reference's fields.
        unsafe {
            Destination {
                segment: core::ptr::read_volatile(&class.segment),
                tenant: core::ptr::read_volatile(&class.tenant),
                flags: core::ptr::read_volatile(&class.flags),
                management: core::ptr::read_volatile(&class.management),
                exposure: core::ptr::read_volatile(&class.exposure),
            }
        }
    }
}

/// The class of IPv4 address `addr`, by the probe ([`probe_v4`]): `None` when no entry
/// holds it. A subprogram of its own (not a global function: the verifier checks it at
/// each call, and it returns the entry where it lies), so that the verifier goes on after
/// the probe's loop from one state per outcome rather than from each of its exits.
#[inline(never)]
fn probed_class(generation: u32, addr: [u8; 4]) -> Option<&'static AddrClass> {
    let lengths = maps::PREFIX_LENGTHS.get(generation)?;
    probe_v4(generation, lengths, addr)
}

/// Whether [`judged`] probed for the destination's class, and what it found.
#[derive(Clone, Copy)]
enum Probed {
    No,
    Found(&'static AddrClass),
    Nothing,
}

/// Puts a destination's class into its slot for the story; [`DESTINATION_KNOWN`] if it
/// could.
#[inline(always)]
fn slot_class(class: &AddrClass) -> u32 {
    match maps::CLASSES.get_ptr_mut(slot::DESTINATION) {
        Some(out) => {
            copy_class(out, class);
            DESTINATION_KNOWN
        }
        None => 0,
    }
}

/// A drop the short way decided: its reason, and what a report of it says.
struct Refusal {
    code: u32,
    fields: events::V4Fields,
}

/// The module's conditions, checked against the frame and the vif's entry: the drop
/// if they all hold. Sets `probed` when it classified the destination by the probe.
#[inline(always)]
fn judged(
    frame: &impl Frame,
    generation: u32,
    ifindex: u32,
    entry: &VifInfo,
    probed: &mut Probed,
) -> Option<Refusal> {
    let eth: &[u8; ETH_LEN] = at(frame, 0)?;
    // IPv4, untagged.
    if eth[12] != 0x08 || eth[13] != 0x00 {
        return None;
    }
    // The source guard's MAC check, without the lookup of other interfaces' MACs.
    if entry.flags & VifInfo::HAS_MAC != 0 {
        for i in 0..6 {
            if eth[6 + i] != entry.mac[i] {
                return None;
            }
        }
    } else if entry.flags & VifInfo::OTHERS_DECLARED_MACS != 0 {
        return None;
    }
    let h: &[u8; IPV4_LEN] = at(frame, ETH_LEN)?;
    // Version 4 without options, all of it within the frame, not a fragment (no offset,
    // no "more fragments"): the parser would accept the header as it is.
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if h[0] != 0x45
        || total < IPV4_LEN
        || ETH_LEN + total > frame.wire_len()
        || h[6] & 0x3f != 0
        || h[7] != 0
    {
        return None;
    }
    let dst = [h[16], h[17], h[18], h[19]];
    // Within the vif's own segment (its home tells it without a lookup): the story's
    // step 6 passes it unless something before refuses it; nothing for the short way.
    if let Some(class) = entry.home_class_of(dst)
        && class.segment == entry.segment
    {
        return None;
    }
    // The destination's class, before the checks below, which tell the verifier about
    // the frame in ways that would have it walk the probe once for each. Loopback and
    // link-scope destinations are not looked up (the steps below decide them).
    let loopback = dst[0] == 127;
    let link_scope = dst[0] == 0 || dst[0] >= 224 || (dst[0] == 169 && dst[1] == 254);
    let class = if loopback || link_scope {
        None
    } else {
        // Read into a value: the class lies in the vif's entry or in the address map.
        match entry.home_class_of(dst) {
            Some(class) => Some(Destination::of(class)),
            None => {
                let found = probed_class(generation, dst);
                *probed = match found {
                    Some(class) => Probed::Found(class),
                    None => Probed::Nothing,
                };
                Some(Destination::of(found?))
            }
        }
    };
    let available = total - IPV4_LEN;
    let protocol = h[9];
    let ports: &[u8; 4] = match protocol {
        ip::TCP => {
            let t: &[u8; 20] = at(frame, ETH_LEN + IPV4_LEN)?;
            let header = usize::from(t[12] >> 4) * 4;
            if available < 20 || header < 20 || available < header {
                return None;
            }
            at(frame, ETH_LEN + IPV4_LEN)?
        }
        ip::UDP => {
            let u: &[u8; 8] = at(frame, ETH_LEN + IPV4_LEN)?;
            if available < 8 || u16::from_be_bytes([u[4], u[5]]) < 8 {
                return None;
            }
            at(frame, ETH_LEN + IPV4_LEN)?
        }
        _ => return None,
    };
    let src_port = u16::from_be_bytes([ports[0], ports[1]]);
    let dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    // What only a DHCP server sends is the guard's (a UDP packet from the server port or
    // to the client port).
    if protocol == ip::UDP && (src_port == dhcp::V4_SERVER || dst_port == dhcp::V4_CLIENT) {
        return None;
    }
    let src = [h[12], h[13], h[14], h[15]];
    // A source the vif owns, told by its home: the guard's address check. An unspecified
    // source (the guard's own rule) never lies in a home the short way accepts.
    if src[0] == 0 {
        return None;
    }
    let source = entry.home_class_of(src)?;
    let owner = if source.flags & AddrClass::DECLARED != 0 {
        source.owner
    } else {
        0
    };
    let owned = if entry.flags & VifInfo::HAS_ADDRESSES == 0 {
        source.segment == entry.segment && (owner == 0 || owner == ifindex)
    } else {
        owner == ifindex
    };
    // An exposed source may be answering a connection (the story asks its rule set).
    if !owned || source.flags & AddrClass::EXPOSED != 0 {
        return None;
    }
    let refused = |code: u32| {
        Some(Refusal {
            code,
            fields: events::V4Fields {
                protocol,
                src,
                dst,
                src_port,
                dst_port,
            },
        })
    };
    // Step 2: loopback, before every exception.
    if loopback {
        return refused(MANAGEMENT);
    }
    // A routable unicast destination: not multicast, the limited broadcast, link-local or
    // 0/8 (the story's link-scope steps).
    let class = class?;
    // Step 2: a management prefix that protects the service (every service, or one its
    // rule set admits); else the story goes on past it.
    if class.flags & AddrClass::MANAGEMENT != 0 {
        let protected = class.flags & AddrClass::MANAGEMENT_ALL != 0
            || set_admits(generation, class.management, protocol, Some(dst_port));
        return if protected { refused(MANAGEMENT) } else { None };
    }
    if class.segment == AddrClass::NO_SEGMENT
        || class.segment == entry.segment
        || class.flags & STORY_FLAGS != 0
    {
        return None;
    }
    // An exposed endpoint of the other segment: the story's steps 7 and 8 pass what its
    // rule set admits; anything else it refuses as if nothing were exposed there.
    if class.flags & AddrClass::EXPOSED != 0
        && set_admits(generation, class.exposure, protocol, Some(dst_port))
    {
        return None;
    }
    let other = if class.tenant == entry.info.tenant {
        CROSS_SEGMENT
    } else {
        CROSS_TENANT
    };
    // Step 8, early: no flow between the two segments admits the packet either way (a
    // segment with no flow to another tenant has no entry with any of theirs to ask; one
    // whose flows, out and in, all rule the service out has none to ask at all).
    let asked = entry.info.flows_out.may_admit(protocol, Some(dst_port))
        || entry.info.flows_in.may_admit(protocol, Some(src_port));
    if asked && !(other == CROSS_TENANT && entry.info.flags & SegmentInfo::FOREIGN_NEIGHBOURS == 0)
    {
        let (class_word, ports) = pair_service(protocol, true, dst_port, src_port);
        let (from, to) = (entry.segment, class.segment);
        if isolator_pair_admits(generation, from, to, class_word | REPLIES, ports) != 0 {
            return None;
        }
    }
    refused(other)
}
