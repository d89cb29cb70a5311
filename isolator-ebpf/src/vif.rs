//! Which vif a program runs on, and what the active policy says about it.

use isolator_common::{SegmentInfo, Verdict, VifInfo, VifKey, VlanKey};

use crate::maps::{CONFIG, VIF_VLANS, VIFS};
use crate::rules::Segment;

/// The vif a program runs on, in the active generation.
pub struct Vif {
    pub generation: u32,
    pub ifindex: u32,
    pub segment: u32,
    /// The vif's declared identity: [`VifInfo`]'s flags and MAC.
    pub flags: u32,
    pub mac: [u8; 6],
    /// Its segment's tenant and flags.
    pub info: SegmentInfo,
}

/// The vif's segment and its settings in the active generation; `None` fails closed.
#[inline(always)]
pub fn identify(ifindex: u32) -> Option<Vif> {
    entry(ifindex).map(|(vif, _)| vif)
}

/// [`identify`], and the vif's entry itself (valid for the whole run: entries of the
/// active generation are not removed while a program can run on it, docs/design.md,
/// the swap).
#[inline(always)]
pub fn entry(ifindex: u32) -> Option<(Vif, &'static VifInfo)> {
    let generation = *CONFIG.get(0)?;
    // SAFETY: see above; the fields the steps use are copied out at once.
    let entry = unsafe {
        VIFS.get(VifKey {
            generation,
            ifindex,
        })
    }?;
    Some((
        Vif {
            generation,
            ifindex,
            segment: entry.segment,
            flags: entry.flags,
            mac: entry.mac,
            info: entry.info,
        },
        entry,
    ))
}

impl Vif {
    /// The vif looks like a VM's but is not enforceable as one: everything drops.
    #[inline(always)]
    pub fn quarantined(&self) -> bool {
        self.flags & VifInfo::QUARANTINED != 0
    }
}

/// Whether the vif may tag its frames with VLAN id `vlan`.
#[inline(always)]
pub fn vlan_allowed(vif: &Vif, vlan: u16) -> bool {
    // SAFETY: only the presence of the entry is read.
    unsafe {
        VIF_VLANS
            .get(VlanKey {
                generation: vif.generation,
                ifindex: vif.ifindex,
                vlan,
                _pad: [0; 2],
            })
            .is_some()
    }
}

/// `cross_segment` or `cross_tenant` for traffic between the vif's own segment and segment
/// `other` (either direction).
#[inline(always)]
pub fn cross(vif: &Vif, other: Segment) -> Verdict {
    if other.tenant == vif.info.tenant {
        Verdict::CrossSegment
    } else {
        Verdict::CrossTenant
    }
}
