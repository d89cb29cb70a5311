//! Fragments cannot carry traffic past a port rule: a later fragment passes only if the
//! first fragment of its datagram passed, recently (docs/design.md, "Fragments").

use aya_ebpf::helpers::bpf_ktime_get_ns;
use isolator_common::{FragKey, Verdict};

use crate::maps::FRAGMENTS;
use crate::packet::{FRAGMENT_FIRST, FRAGMENT_LATER, Packet};
use crate::{CONTINUE, Step, decide};

/// How long later fragments may follow their first.
const TIMEOUT_NS: u64 = 30_000_000_000;

#[inline(always)]
fn key(p: &Packet, frag: &mut FragKey) {
    frag.src = p.src;
    frag.dst = p.dst;
    frag.id = p.frag_id;
    frag.protocol = p.protocol;
    frag._pad = [0; 3];
}

/// A later fragment is judged by its first: pass if the first passed recently, else drop.
/// Any other packet goes on.
#[inline(always)]
pub fn later(p: &Packet, frag: &mut FragKey) -> Step {
    if p.fragment != FRAGMENT_LATER {
        return CONTINUE;
    }
    key(p, frag);
    // SAFETY: reads the clock; no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the timestamp is read at once.
    match unsafe { FRAGMENTS.get(&*frag) } {
        Some(first) if now.saturating_sub(*first) <= TIMEOUT_NS => decide(Verdict::Pass),
        _ => decide(Verdict::Fragment),
    }
}

/// Remembers a first fragment that passed, so that its later fragments may follow.
#[inline(always)]
pub fn remember_first(p: &Packet, frag: &mut FragKey) {
    if p.fragment != FRAGMENT_FIRST {
        return;
    }
    key(p, frag);
    // SAFETY: reads the clock; no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = FRAGMENTS.insert(&*frag, now, 0);
}
