//! Fragments cannot carry traffic past a port rule: a later fragment passes only if the
//! first fragment of its datagram passed at the same vif, recently, and it does not reach
//! back into the transport header that first fragment was judged by (docs/design.md,
//! "Fragments"). Each vif has its own table, so no VM and no outside host can push
//! another tenant's datagrams out.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use isolator_common::{FragKey, FragState, Verdict, fault};

use crate::faults;
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
    frag.protocol = p.frag_proto;
    isolator_ebpf::packet::zero_bytes(&mut frag._pad);
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: reads the clock; no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// A later fragment is judged by its first: pass if the first passed at this vif
/// recently and this one starts after its transport header, else drop. Any other packet
/// goes on.
#[inline(always)]
pub fn later(ifindex: u32, p: &Packet, frag: &mut FragKey) -> Step {
    if p.fragment != FRAGMENT_LATER {
        return CONTINUE;
    }
    key(p, frag);
    // SAFETY: the inner table outlives this run (the outer map holds it); the state is
    // copied out at once.
    let first = unsafe { FRAGMENTS.get_value(&ifindex, &*frag) }.copied();
    match first {
        Some(first)
            if now().saturating_sub(first.first_ns) <= TIMEOUT_NS
                && p.frag_offset >= first.min_offset =>
        {
            decide(Verdict::Pass)
        }
        _ => decide(Verdict::Fragment),
    }
}

/// Remembers a first fragment that passed, so that its later fragments may follow.
#[inline(always)]
pub fn remember_first(ifindex: u32, p: &Packet, frag: &mut FragKey) {
    if p.fragment != FRAGMENT_FIRST {
        return;
    }
    key(p, frag);
    let state = FragState {
        first_ns: now(),
        min_offset: p.fragment_header_end(),
        _pad: 0,
    };
    // SAFETY: as above.
    let recorded = match unsafe { FRAGMENTS.get(&ifindex) } {
        Some(table) => table.insert(&*frag, state, 0).is_ok(),
        None => false,
    };
    if !recorded {
        faults::record(fault::FRAGMENT_UNRECORDED);
    }
}
