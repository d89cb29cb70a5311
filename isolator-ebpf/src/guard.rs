//! The source guard (invariant I2): a VM may only speak as itself. Its declared MAC,
//! addresses it owns, ARP and neighbour discovery only about itself, no router or DHCP
//! server messages unless its segment allows them.

use isolator_common::{DeclaredMacKey, SegmentInfo, Verdict, VifInfo};

use crate::maps::DECLARED_MACS;
use crate::packet::{KIND_ARP, Packet};
use crate::proto::icmp6;
use crate::rules::{Class, classify, slot};
use crate::vif::Vif;
use crate::{CONTINUE, Step, decide};

/// Checks that the frame's sender is who the vif says it is. `src` is the classification
/// of the frame's source address (the ARP sender address for ARP).
#[inline(never)]
pub fn source(vif: &Vif, p: &Packet, src: Class) -> Step {
    if vif.flags & VifInfo::HAS_MAC != 0 {
        if p.src_mac != vif.mac {
            return decide(Verdict::SpoofedMac);
        }
    } else if mac_declared_by_another(vif, &p.src_mac) {
        return decide(Verdict::SpoofedMac);
    }
    if p.kind == KIND_ARP {
        // ARP probes (sender 0.0.0.0) announce nothing.
        let probe = p.src[12..].iter().all(|b| *b == 0);
        if p.arp_sha != p.src_mac || (!probe && !owns(vif, true, &p.src, src)) {
            return decide(Verdict::ArpSpoof);
        }
        return CONTINUE;
    }
    if p.source_unspecified() {
        if !p.unspecified_source_allowed() {
            return decide(Verdict::SpoofedIp);
        }
    } else if !owns(vif, p.is_v4(), &p.src, src) {
        return decide(Verdict::SpoofedIp);
    }
    if p.is_nd_neighbour() {
        if p.nd_lladdr_foreign {
            return decide(Verdict::NdSpoof);
        }
        // An advertisement speaks for its target: it must be the VM's own address.
        if p.icmp_type == icmp6::NEIGHBOUR_ADVERTISEMENT
            && !owns(
                vif,
                false,
                &p.nd_target,
                classify(vif.generation, false, slot::OTHER, &p.nd_target),
            )
        {
            return decide(Verdict::NdSpoof);
        }
    }
    if p.is_router_message() && vif.info.flags & SegmentInfo::ALLOW_RA == 0 {
        return decide(Verdict::RaGuard);
    }
    if p.is_dhcp_server_message() && vif.info.flags & SegmentInfo::ALLOW_DHCP_SERVER == 0 {
        return decide(Verdict::DhcpGuard);
    }
    CONTINUE
}

/// A MAC another interface declared: reserved for it.
#[inline(always)]
fn mac_declared_by_another(vif: &Vif, mac: &[u8; 6]) -> bool {
    if vif.flags & VifInfo::OTHERS_DECLARED_MACS == 0 {
        return false;
    }
    let key = DeclaredMacKey {
        generation: vif.generation,
        mac: *mac,
        _pad: [0; 2],
    };
    // SAFETY: the owner is read at once.
    match unsafe { DECLARED_MACS.get(key) } {
        Some(owner) => *owner != vif.ifindex,
        None => false,
    }
}

/// An IPv6 link-local address (fe80::/10).
#[inline(always)]
pub fn link_local(addr: &[u8; 16]) -> bool {
    addr[0] == 0xfe && addr[1] & 0xc0 == 0x80
}

/// Whether the VM behind `vif` owns `addr` (classified as `class`): one of its declared
/// addresses, or, when it declared none, an address of its segment that no other
/// interface declared. IPv6 link-local addresses are its own unless it declared its
/// link-local addresses, or another interface declared that one.
#[inline(always)]
pub fn owns(vif: &Vif, v4: bool, addr: &[u8; 16], class: Class) -> bool {
    let declared = if !v4 && link_local(addr) {
        VifInfo::HAS_LINK_LOCAL
    } else {
        VifInfo::HAS_ADDRESSES
    };
    let owner = class.declared_by();
    if vif.flags & declared == 0 {
        return (declared == VifInfo::HAS_LINK_LOCAL || class.place().is(vif.segment))
            && (owner == 0 || owner == vif.ifindex);
    }
    owner == vif.ifindex
}
