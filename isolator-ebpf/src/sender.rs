//! Who sent a frame that is delivered to a VM: decided by the interface it entered the
//! host through (`__sk_buff.ingress_ifindex`), never by a MAC or an address it claims
//! (invariant I8).
//!
//! - a managed vif: the vif's segment (its source guard already ran on the frame);
//! - a link the policy trusts as an uplink for some segments: the segment of the source
//!   address, if the link is trusted for it, else outside;
//! - any other link the daemon knows, or the host's own stack (ifindex 0): outside;
//! - a quarantined vif, or a link the daemon has not classified yet: the frame is dropped
//!   (`unknown_interface`): fail closed.

use isolator_common::{LinkInfo, UplinkKey, Verdict, VifInfo, VifKey};

use crate::maps::{LINKS, UPLINKS};
use crate::rules::{Class, Place, Segment};

/// The place of the sender of a frame that entered the host through `ingress_ifindex`;
/// `src` is the classification of its source address.
#[inline(always)]
pub fn of(generation: u32, ingress_ifindex: u32, src: Class) -> Result<Place, Verdict> {
    if ingress_ifindex == 0 {
        return Ok(Place::Outside);
    }
    let key = VifKey {
        generation,
        ifindex: ingress_ifindex,
    };
    if let Some(vif) = crate::vif::lookup(generation, ingress_ifindex, crate::vif::slot::SENDER) {
        if vif.flags & VifInfo::QUARANTINED != 0 {
            return Err(Verdict::UnknownInterface);
        }
        return Ok(Place::Segment(Segment {
            id: vif.segment,
            tenant: vif.info.tenant,
        }));
    }
    // SAFETY: the value is copied out at once.
    let Some(link) = unsafe { LINKS.get(key) }.copied() else {
        return Err(Verdict::UnknownInterface);
    };
    if link.flags & LinkInfo::UPLINK != 0
        && let Place::Segment(segment) = src.place()
    {
        let trust = UplinkKey {
            generation,
            ifindex: ingress_ifindex,
            segment: segment.id,
        };
        // SAFETY: only the presence of the entry is read.
        if unsafe { UPLINKS.get(trust) }.is_some() {
            return Ok(Place::Segment(segment));
        }
    }
    Ok(Place::Outside)
}
