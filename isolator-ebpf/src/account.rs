//! The single accounting exit: every verdict is counted here, under the vif, the
//! direction, the reason and the audit flag, and this is where pass or drop is decided.
//! The verdict, the reason and the counters can therefore never disagree (invariant I5).

use aya_ebpf::{helpers::bpf_xdp_adjust_meta, programs::XdpContext};
use isolator_common::{
    Counter, CounterKey, SegmentInfo, Verdict, counter_block_index, fault, limits, uncounted_index,
};

use crate::faults;
use crate::maps::{BPF_NOEXIST, COUNTER_BLOCKS, COUNTERS, UNCOUNTED};
use crate::vif::Vif;

/// A verdict with what audit mode made of it: `audited` when a drop was counted as such
/// but the frame passes because its segment is in audit mode.
#[derive(Clone, Copy)]
pub struct Outcome {
    pub verdict: Verdict,
    pub audited: bool,
}

impl Outcome {
    /// Whether the frame goes on.
    #[inline(always)]
    pub fn passes(&self) -> bool {
        self.verdict == Verdict::Pass || self.audited
    }
}

/// Audit mode passes what its segment would drop for an auditable reason; the mode of the
/// vif's own segment applies (the sender's on ingress, the receiver's on egress).
#[inline(always)]
pub fn audit(verdict: Verdict, vif: &Vif) -> Outcome {
    audit_by(verdict, vif.info.flags)
}

/// [`audit`] by the flags of the vif's segment (`SegmentInfo::flags`).
#[inline(always)]
pub fn audit_by(verdict: Verdict, segment_flags: u32) -> Outcome {
    let audited = verdict.auditable() && segment_flags & SegmentInfo::AUDIT != 0;
    Outcome { verdict, audited }
}

#[inline(always)]
fn counter_key(ifindex: u32, direction: u8, verdict: u8, audited: bool) -> CounterKey {
    CounterKey {
        ifindex,
        direction,
        verdict,
        flags: if audited { CounterKey::AUDIT } else { 0 },
        _pad: 0,
    }
}

/// Counts the frame under its outcome, reports it if it calls for a report
/// ([`crate::events`]), and says whether it passes.
#[inline(always)]
pub fn account(ifindex: u32, direction: u8, outcome: Outcome, bytes: u64) -> bool {
    crate::events::report(ifindex, direction, outcome);
    count(ifindex, direction, outcome, bytes)
}

/// [`account`] without the report: for a caller that reports the frame itself.
#[inline(always)]
pub fn count(ifindex: u32, direction: u8, outcome: Outcome, bytes: u64) -> bool {
    add(
        counter_key(ifindex, direction, outcome.verdict as u8, outcome.audited),
        1,
        bytes,
    );
    outcome.passes()
}

/// Takes back one frame counted by [`account`] (see `isolator_tags`). Per-CPU values may
/// wrap below zero when the two programs ran on different CPUs; userspace sums them with
/// wrapping arithmetic.
#[inline(always)]
pub fn uncount(ifindex: u32, direction: u8, verdict: u8, audited: bool, bytes: u64) {
    add(
        counter_key(ifindex, direction, verdict, audited),
        0u64.wrapping_sub(1),
        0u64.wrapping_sub(bytes),
    );
}

/// Adds to the counter of `key`: in the interface's block of `COUNTER_BLOCKS` (an array
/// slot) if it has one and the frame was not audited, else in `COUNTERS` (a hash).
#[inline(always)]
fn add(key: CounterKey, packets: u64, bytes: u64) {
    if key.flags == 0
        && key.ifindex < limits::COUNTER_BLOCKS
        && let Some(block) = COUNTER_BLOCKS.get_ptr_mut(key.ifindex)
    {
        let at = counter_block_index(key.direction, key.verdict);
        // SAFETY: this CPU's block of a live array slot; `at` is below the block's
        // length (its mask).
        let counter = unsafe { &mut (*block).counters[at & 63] as *mut Counter };
        bump(counter, packets, bytes);
        return;
    }
    if let Some(counter) = COUNTERS.get_ptr_mut(key) {
        bump(counter, packets, bytes);
        return;
    }
    let first = Counter { packets, bytes };
    if COUNTERS.insert(key, first, BPF_NOEXIST).is_ok() {
        return;
    }
    // Another CPU may have created the key meanwhile: then count on ours.
    if let Some(counter) = COUNTERS.get_ptr_mut(key) {
        bump(counter, packets, bytes);
        return;
    }
    // The map is full: count by direction and verdict only, and say so.
    let slot = uncounted_index(
        key.direction,
        key.verdict,
        key.flags & CounterKey::AUDIT != 0,
    );
    if let Some(counter) = UNCOUNTED.get_ptr_mut(slot) {
        bump(counter, packets, bytes);
    }
    faults::record(fault::COUNTER_MAP_FULL);
}

#[inline(always)]
fn bump(counter: *mut Counter, packets: u64, bytes: u64) {
    // SAFETY: a per-CPU value of a live entry (or a per-CPU array slot); only this CPU
    // writes it.
    unsafe {
        (*counter).packets = (*counter).packets.wrapping_add(packets);
        (*counter).bytes = (*counter).bytes.wrapping_add(bytes);
    }
}

/// First byte of the metadata the XDP program leaves in front of a frame it passed under
/// audit mode: `[AUDIT_META, reason, 0, 0]`. Frames it passed plainly carry none.
pub const AUDIT_META: u8 = 0xa7;

/// Tells `isolator_tags` under which counter an audited frame was counted (it may have to
/// move it). Only audited frames, so the common path pays nothing. A driver without XDP
/// metadata support leaves it out.
#[inline(always)]
pub fn note_audited(ctx: &XdpContext, verdict: Verdict) {
    // SAFETY: the helper checks the headroom itself and fails rather than overrun.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -4) } != 0 {
        return;
    }
    let meta = ctx.metadata();
    if meta + 4 > ctx.data() {
        return;
    }
    // SAFETY: the four bytes between metadata and data were just bounds-checked.
    unsafe {
        *(meta as *mut [u8; 4]) = [AUDIT_META, verdict as u8, 0, 0];
    }
}

/// How the XDP program counted a frame that `isolator_tags` now refuses: the reason and
/// audit flag from its metadata note, else a plain pass.
#[inline(always)]
pub fn counted_as(meta: usize, data: usize) -> (u8, bool) {
    if meta + 4 <= data {
        // SAFETY: the four metadata bytes were just bounds-checked against the data start.
        let note = unsafe { *(meta as *const [u8; 4]) };
        if note[0] == AUDIT_META {
            return (note[1], true);
        }
    }
    (Verdict::Pass as u8, false)
}
