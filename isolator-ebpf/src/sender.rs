//! Who sent a frame that is delivered to a VM.

use isolator_common::{MacKey, VifKey};

use crate::maps::{MAC_VIFS, VIFS};
use crate::packet::Packet;
use crate::rules::{Place, place};

/// Where a delivered frame comes from: the segment of its source address, else the
/// segment of the vif its source MAC was last seen sending on (link-local and unspecified
/// sources), else outside.
#[inline(always)]
pub fn source_place(generation: u32, p: &Packet) -> Place {
    let by_address = place(generation, p.is_v4(), &p.src);
    if by_address != Place::Outside {
        return by_address;
    }
    mac_place(generation, &p.src_mac)
}

/// The segment of the vif a unicast MAC was last seen sending on, else outside.
#[inline(always)]
pub fn mac_place(generation: u32, mac: &[u8; 6]) -> Place {
    if mac[0] & 1 != 0 {
        return Place::Outside;
    }
    let key = MacKey {
        addr: *mac,
        _pad: [0; 2],
    };
    // SAFETY: the ifindex is read at once.
    let Some(ifindex) = (unsafe { MAC_VIFS.get(key) }) else {
        return Place::Outside;
    };
    // SAFETY: the segment is read at once.
    match unsafe {
        VIFS.get(VifKey {
            generation,
            ifindex: *ifindex,
        })
    } {
        Some(vif) => Place::Segment(vif.segment),
        None => Place::Outside,
    }
}

/// Remembers which vif a source MAC sends from (for [`source_place`]).
#[inline(always)]
pub fn learn_mac(mac: &[u8; 6], ifindex: u32) {
    // Group addresses are never a sender's.
    if mac[0] & 1 != 0 {
        return;
    }
    let key = MacKey {
        addr: *mac,
        _pad: [0; 2],
    };
    // SAFETY: the ifindex is read at once.
    match unsafe { MAC_VIFS.get(key) } {
        Some(known) if *known == ifindex => {}
        _ => {
            let _ = MAC_VIFS.insert(key, ifindex, 0);
        }
    }
}
