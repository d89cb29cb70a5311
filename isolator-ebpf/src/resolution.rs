//! Address resolution (ARP, IPv6 neighbour discovery) between segments: judged by the
//! address it concerns, so that a VM can learn only what it may reach.

use isolator_common::Verdict;

use crate::packet::{KIND_ARP, Packet};
use crate::proto::{arp, icmp6};
use crate::rules::{Class, Place, classify, gateway, neighbours, slot};
use crate::vif::{Vif, cross};
use crate::{CONTINUE, Step, decide};

/// Address resolution a VM sends: ARP, and neighbour discovery that is what it claims
/// (hop limit 255) and stays on the link (a link-scope destination; for a unicast
/// neighbour solicitation or advertisement, an address of a segment, a gateway of the VM's
/// segment or the host's own). Neighbour
/// solicitations and advertisements and ARP are judged by the address they concern;
/// router solicitations (and advertisements and redirects the guard let through) pass.
/// Anything else that looks like neighbour discovery is ordinary ICMPv6 to the rules.
/// `dst` and `src` classify the frame's destination and source addresses.
#[inline(never)]
pub fn ingress(vif: &Vif, p: &Packet, dst: Class, src: Class) -> Step {
    if p.kind == KIND_ARP {
        return by_address_concerned(vif, p, dst, src);
    }
    if !p.is_link_nd() {
        return CONTINUE;
    }
    let link_scope = p.dst_link_scope_multicast() || p.dst_ipv6_link_local();
    if p.is_nd_neighbour() {
        // Unicast to a neighbour on the link: an address of a segment, a gateway of the
        // VM's segment, or the host itself.
        let on_link = dst.place() != Place::Outside
            || gateway(vif.generation, vif.segment, &p.dst, dst).is_some()
            || dst.host();
        if link_scope || on_link {
            return by_address_concerned(vif, p, dst, src);
        }
        return CONTINUE;
    }
    if link_scope {
        return decide(Verdict::Pass);
    }
    CONTINUE
}

/// ARP or a neighbour solicitation/advertisement from a VM, judged by the address it
/// concerns: outside every segment or in the sender's own → pass; in another segment →
/// only if the two may resolve each other; a management address → never.
#[inline(always)]
fn by_address_concerned(vif: &Vif, p: &Packet, dst: Class, src: Class) -> Step {
    let about = about(vif, p, dst);
    if about.management_all() {
        return decide(Verdict::Management);
    }
    match about.place() {
        Place::Outside => decide(Verdict::Pass),
        Place::Segment(s) if s.id == vif.segment => decide(Verdict::Pass),
        Place::Segment(s) if allowed(vif.generation, vif.segment, s.id, p, about, src) => {
            decide(Verdict::Pass)
        }
        Place::Segment(s) => decide(cross(vif, s)),
    }
}

/// Address resolution delivered to a VM. From another segment it passes only if it
/// concerns an address of the VM's segment and the two may resolve each other. From
/// outside (routers, the host, uplinks): ARP passes unless it claims an address of a
/// segment (other than a gateway of the VM's segment), which would let an outside host
/// divert a VM's traffic; neighbour discovery passes only as what it claims to be (hop
/// limit 255) from a link-local, unspecified, gateway or host source, and an advertisement
/// may not claim an address of a segment either.
#[inline(never)]
pub fn egress(vif: &Vif, sender: Place, p: &Packet, dst: Class, src: Class) -> Step {
    if p.kind != KIND_ARP && !p.is_nd() {
        return CONTINUE;
    }
    let Place::Segment(s) = sender else {
        return from_outside(vif, p, src);
    };
    if p.kind == KIND_ARP || (p.is_link_nd() && p.is_nd_neighbour()) {
        let about = about(vif, p, dst);
        if about.place().is(vif.segment)
            && allowed(vif.generation, s.id, vif.segment, p, about, src)
        {
            return decide(Verdict::Pass);
        }
    }
    decide(cross(vif, s))
}

#[inline(always)]
fn from_outside(vif: &Vif, p: &Packet, src: Class) -> Step {
    if p.kind == KIND_ARP {
        // Probes (sender 0.0.0.0) claim nothing.
        let probe = p.src[12..].iter().all(|b| *b == 0);
        if !probe
            && let Place::Segment(theirs) = src.place()
            && gateway(vif.generation, vif.segment, &p.src, src).is_none()
        {
            // The sender claims an address of some segment, and is no gateway of this
            // VM's. A declared gateway of the segment its address lies in (another
            // segment's router, asking for its VMs, flooded here) speaks for itself, to
            // someone else: not for this VM. Anyone else claims an address no host outside
            // the segments may speak for, which the VM could believe (Linux refreshes a
            // cached neighbour from any ARP it receives).
            return decide(
                if gateway(vif.generation, theirs.id, &p.src, src).is_some() {
                    Verdict::NotExposed
                } else {
                    Verdict::ArpSpoof
                },
            );
        }
        return decide(Verdict::Pass);
    }
    if !p.is_link_nd() {
        return CONTINUE;
    }
    let source_ok = p.source_unspecified() || infrastructure(vif, p, src);
    if !source_ok {
        return CONTINUE;
    }
    if p.icmp_type == icmp6::NEIGHBOUR_ADVERTISEMENT && claims_segment_address(vif, &p.nd_target) {
        return decide(Verdict::NdSpoof);
    }
    decide(Verdict::Pass)
}

/// A source outside every segment that the VM may believe about its link: a link-local
/// address (routers speak from those), a gateway of its segment, or one of the host's own
/// addresses.
#[inline(always)]
pub fn infrastructure(vif: &Vif, p: &Packet, src: Class) -> bool {
    p.src_ipv6_link_local()
        || gateway(vif.generation, vif.segment, &p.src, src).is_some()
        || src.host()
}

/// An address of some segment that is not a gateway of the VM's own: no host outside
/// the segments may speak for it.
#[inline(always)]
fn claims_segment_address(vif: &Vif, addr: &[u8; 16]) -> bool {
    let class = classify(vif.generation, false, slot::OTHER, addr);
    class.place() != Place::Outside && gateway(vif.generation, vif.segment, addr, class).is_none()
}

/// The address an ARP or neighbour discovery frame concerns on the receiving side: the
/// ARP target address (a request asks for it; a reply is sent to it), the target of a
/// neighbour solicitation, and the destination of a neighbour advertisement (whose
/// target is the sender's own address).
/// Returned classified (`dst` is the destination's classification).
#[inline(always)]
fn about(vif: &Vif, p: &Packet, dst: Class) -> Class {
    if p.kind != KIND_ARP && p.icmp_type == icmp6::NEIGHBOUR_SOLICITATION {
        classify(vif.generation, false, slot::CONCERNED, &p.nd_target)
    } else {
        dst
    }
}

/// Address resolution between segments `from` and `to` is allowed when a flow joins
/// them (either direction) or it asks for an exposed address. An exposed sender may
/// answer (ARP reply, neighbour advertisement) and refresh what it already knows
/// (requests sent unicast, as neighbour-cache probes are), but not discover: a broadcast
/// or multicast request from it about another segment is refused, or any VM with an
/// exposed address could map the host at layer 2.
#[inline(always)]
fn allowed(generation: u32, from: u32, to: u32, p: &Packet, about: Class, src: Class) -> bool {
    if neighbours(generation, from, to) || about.exposed_any() {
        return true;
    }
    let answer = if p.kind == KIND_ARP {
        p.arp_op == arp::REPLY
    } else {
        p.icmp_type == icmp6::NEIGHBOUR_ADVERTISEMENT
    };
    let unicast = p.dst_mac[0] & 1 == 0;
    (answer || unicast)
        && (src.exposed_any()
            || (p.icmp_type == icmp6::NEIGHBOUR_ADVERTISEMENT
                && classify(generation, false, slot::OTHER, &p.nd_target).exposed_any()))
}
