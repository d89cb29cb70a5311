//! Address resolution (ARP, IPv6 neighbour discovery) between segments: judged by the
//! address it concerns, so that a VM can learn only what it may reach.

use isolator_common::Verdict;

use crate::packet::{KIND_ARP, Packet};
use crate::proto::{arp, icmp6};
use crate::rules::{Place, exposed_any, management_address, neighbours, place};
use crate::vif::{Vif, cross};
use crate::{CONTINUE, Step, decide};

/// Step 1 of ingress: ARP and neighbour solicitations/advertisements a VM sends, judged
/// by the address they concern; other neighbour discovery (router solicitations, and
/// advertisements and redirects the guard let through) is link-local control and passes.
#[inline(always)]
pub fn ingress(vif: &Vif, p: &Packet) -> Step {
    if p.kind == KIND_ARP || p.is_nd_neighbour() {
        let about = about(p);
        if management_address(vif.generation, p.is_v4(), about) {
            return decide(Verdict::Management);
        }
        return match place(vif.generation, p.is_v4(), about) {
            Place::Outside => decide(Verdict::Pass),
            Place::Segment(s) if s == vif.segment => decide(Verdict::Pass),
            Place::Segment(s) if allowed(vif.generation, vif.segment, s, p) => {
                decide(Verdict::Pass)
            }
            Place::Segment(s) => decide(cross(vif, s)),
        };
    }
    if p.is_nd() {
        return decide(Verdict::Pass);
    }
    CONTINUE
}

/// Step 2 of egress: address resolution delivered to a VM from another segment passes
/// only if it concerns an address of the VM's segment and a flow joins the two or the
/// address concerned (or the sender) is exposed. From outside (routers, the host) it passes.
#[inline(always)]
pub fn egress(vif: &Vif, source: Place, p: &Packet) -> Step {
    if p.kind != KIND_ARP && !p.is_nd() {
        return CONTINUE;
    }
    let Place::Segment(s) = source else {
        return decide(Verdict::Pass);
    };
    if (p.kind == KIND_ARP || p.is_nd_neighbour())
        && place(vif.generation, p.is_v4(), about(p)) == Place::Segment(vif.segment)
        && allowed(vif.generation, s, vif.segment, p)
    {
        return decide(Verdict::Pass);
    }
    decide(cross(vif, s))
}

/// The address an ARP or neighbour discovery frame concerns on the receiving side: the
/// ARP target address (a request asks for it; a reply is sent to it), the target of a
/// neighbour solicitation, and the destination of a neighbour advertisement (whose
/// target is the sender's own address).
#[inline(always)]
fn about(p: &Packet) -> &[u8; 16] {
    if p.kind == KIND_ARP {
        &p.dst
    } else if p.icmp_type == icmp6::NEIGHBOUR_SOLICITATION {
        &p.nd_target
    } else {
        &p.dst
    }
}

/// Address resolution between segments `from` and `to` is allowed when a flow joins
/// them (either direction) or it asks for an exposed address. An exposed sender may
/// answer (ARP reply, neighbour advertisement) and refresh what it already knows
/// (requests sent unicast, as neighbour-cache probes are), but not discover: a broadcast
/// or multicast request from it about another segment is refused, or any VM with an
/// exposed address could map the host at layer 2.
#[inline(always)]
fn allowed(generation: u32, from: u32, to: u32, p: &Packet) -> bool {
    if neighbours(generation, from, to) || exposed_any(generation, p.is_v4(), about(p)) {
        return true;
    }
    let answer = if p.kind == KIND_ARP {
        p.arp_op == arp::REPLY
    } else {
        p.icmp_type == icmp6::NEIGHBOUR_ADVERTISEMENT
    };
    let unicast = p.dst_mac[0] & 1 == 0;
    (answer || unicast)
        && (exposed_any(generation, p.is_v4(), &p.src)
            || (p.icmp_type == icmp6::NEIGHBOUR_ADVERTISEMENT
                && exposed_any(generation, p.is_v4(), &p.nd_target)))
}
