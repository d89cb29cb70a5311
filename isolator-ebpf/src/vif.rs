//! Which vif a program runs on, and what the active policy says about it.

use isolator_common::{SegmentInfo, Verdict, VifInfo, VifKey, VlanKey, vif_slot};

use crate::maps::{CONFIG, SCRATCH, VIF_SLOTS, VIF_VLANS, VIFS};
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

/// The vif's segment and its settings in the active generation; `None` fails closed. A
/// copy of its whole entry stays in this CPU's scratch space for the rest of the run
/// (`Scratch::vifs[slot::RUNS_ON]`).
#[inline(always)]
pub fn identify(ifindex: u32) -> Option<Vif> {
    let generation = *CONFIG.get(0)?;
    let entry = lookup(generation, ifindex, slot::RUNS_ON)?;
    Some(Vif::of(generation, ifindex, entry))
}

/// The vif a program runs on, from the copy of its entry under `generation` that
/// [`identify`] left in this CPU's scratch space earlier in the same run.
#[inline(always)]
pub fn identified(generation: u32, ifindex: u32) -> Option<Vif> {
    let scratch = SCRATCH.get_ptr(0)?;
    // SAFETY: this CPU's scratch space, valid for the whole run.
    let entry = unsafe { &(*scratch).vifs[slot::RUNS_ON as usize] };
    Some(Vif::of(generation, ifindex, entry))
}

/// Which copy of a vif entry [`lookup`] makes (`Scratch::vifs`).
pub mod slot {
    /// The vif the program runs on.
    pub const RUNS_ON: u32 = 0;
    /// The vif a delivered frame came from.
    pub const SENDER: u32 = 1;
}

/// A copy of the entry of the vif `ifindex` under `generation`, in copy `which` (one of
/// [`slot`]) of this CPU's scratch space.
#[inline(always)]
pub fn lookup(generation: u32, ifindex: u32, which: u32) -> Option<&'static VifInfo> {
    if isolator_vif(generation, ifindex, which) == 0 {
        return None;
    }
    let scratch = SCRATCH.get_ptr(0)?;
    // SAFETY: this CPU's scratch space, valid for the whole run; `which` is checked.
    Some(unsafe { &(*scratch).vifs[(which & 1) as usize] })
}

/// Copies the entry of the vif `ifindex` under `generation` into copy `which` of this
/// CPU's scratch space: 1 if there is one, else 0. The entry is in `VIF_SLOTS` (an array
/// lookup) if the ifindex is small enough, else in `VIFS` (a hash lookup); the daemon
/// writes and removes both. A global BPF function, verified once: the two maps' pointers
/// never reach the caller, whose states would otherwise be walked once for each.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn isolator_vif(generation: u32, ifindex: u32, which: u32) -> u32 {
    let entry = match vif_slot(generation, ifindex) {
        Some(slot) => match VIF_SLOTS.get(slot) {
            Some(entry) if entry.flags & VifInfo::PRESENT != 0 => entry,
            _ => return 0,
        },
        // SAFETY: entries of the active generation are not removed while a program can
        // run on it (docs/design.md, the swap); the entry is copied at once.
        None => match unsafe {
            VIFS.get(VifKey {
                generation,
                ifindex,
            })
        } {
            Some(entry) => entry,
            None => return 0,
        },
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // Word by word (a plain copy becomes a byte loop in BPF): the entry is 80 bytes,
    // 8-byte aligned in the map and in the scratch space.
    const WORDS: usize = core::mem::size_of::<VifInfo>() / 8;
    const _: () = assert!(core::mem::size_of::<VifInfo>().is_multiple_of(8));
    let from = entry as *const VifInfo as *const [u64; WORDS];
    // SAFETY: this CPU's scratch space, used by this run only (see `maps::scratch`);
    // `which & 1` indexes one of its two copies; both are `VifInfo`s, 8-byte aligned.
    unsafe {
        let to = &mut (*scratch).vifs[(which & 1) as usize] as *mut VifInfo as *mut [u64; WORDS];
        for i in 0..WORDS {
            core::ptr::write_volatile(&mut (*to)[i], core::ptr::read_volatile(&(*from)[i]));
        }
    }
    1
}

impl Vif {
    /// The vif `ifindex` as `entry` (under `generation`) describes it.
    #[inline(always)]
    fn of(generation: u32, ifindex: u32, entry: &VifInfo) -> Vif {
        Vif {
            generation,
            ifindex,
            segment: entry.segment,
            flags: entry.flags,
            mac: entry.mac,
            info: entry.info,
        }
    }

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
