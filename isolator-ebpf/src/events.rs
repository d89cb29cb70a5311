//! Reports to userspace through the `EVENTS` ring buffer (docs/design.md, "Events"):
//! every attempt of a VM to reach management (for the audit log), and, only while someone
//! runs `isolator monitor`, one drop in N. Each interface has a budget per kind, CPU and
//! second (`EVENT_WINDOWS`); what it does not report is counted (`EVENTS_LOST`) and
//! carried by its next report (`suppressed`).
//!
//! The common path pays nothing: a pass reports nothing, and a drop other than
//! `management` reads one array entry to learn that no one listens.

use aya_ebpf::helpers::{bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns};
use isolator_common::{Event, EventKey, EventWindow, EventWindows, Verdict, event, limits};
use isolator_ebpf::packet::copy_bytes;

use crate::account::Outcome;
use crate::maps::{
    EVENT_SAMPLE, EVENT_SETTINGS, EVENT_WINDOW_SLOTS, EVENT_WINDOWS, EVENTS, EVENTS_LOST, SCRATCH,
};

/// Whether a frame judged `verdict` may be reported (see the module): only then does
/// [`report`] read the packet's fields in the scratch space.
#[inline(always)]
pub fn reported(verdict: Verdict) -> bool {
    verdict != Verdict::Pass
        && (verdict == Verdict::Management
            || matches!(EVENT_SETTINGS.get(0), Some(s) if s.monitor_every != 0))
}

/// Reports the frame just judged, if its verdict calls for it (see the module): the
/// condition of [`reported`], written out as steps (so written, the egress program's
/// verification walks less than half as many instructions as with a call of it).
#[inline(always)]
pub fn report(ifindex: u32, direction: u8, outcome: Outcome) {
    if outcome.verdict == Verdict::Pass {
        return;
    }
    if outcome.verdict != Verdict::Management {
        match EVENT_SETTINGS.get(0) {
            Some(s) if s.monitor_every != 0 => {}
            _ => return,
        }
    }
    isolator_event(
        ifindex,
        u32::from(direction),
        u32::from(outcome.verdict as u8),
        u32::from(outcome.audited),
    );
}

/// The window of kind `kind` of an interface with a small ifindex: an array slot
/// (`EVENT_WINDOW_SLOTS`), where others' are in the LRU hash `EVENT_WINDOWS`. A slot
/// starts zeroed, a window long past, which the first report opens anew.
#[inline(always)]
fn window_slot(ifindex: u32, kind: u8) -> Option<*mut EventWindow> {
    if ifindex >= limits::COUNTER_BLOCKS {
        return None;
    }
    let windows = EVENT_WINDOW_SLOTS.get_ptr_mut(ifindex)?;
    // SAFETY: this CPU's value of a live array slot; the index is 0 or 1.
    Some(unsafe { &mut (*windows).windows[EventWindows::index(kind)] as *mut EventWindow })
}

/// Counts a report not made.
#[inline(always)]
fn lost(why: u32) {
    if let Some(n) = EVENTS_LOST.get_ptr_mut(why) {
        // SAFETY: a per-CPU slot; only this CPU writes it.
        unsafe { *n += 1 };
    }
}

/// Makes one report, within the interface's budget: 1 if made, 0 if not. A global BPF
/// function, verified once on its own.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn isolator_event(ifindex: u32, direction: u32, verdict: u32, audited: u32) -> u32 {
    let Some(settings) = EVENT_SETTINGS.get(0) else {
        return 0;
    };
    let management = verdict == Verdict::Management as u32;
    let (kind, rate) = if management {
        (event::MANAGEMENT, settings.management_rate)
    } else {
        if settings.monitor_every == 0 {
            return 0;
        }
        // One drop in `monitor_every`, counted per CPU.
        let Some(n) = EVENT_SAMPLE.get_ptr_mut(0) else {
            return 0;
        };
        // SAFETY: a per-CPU slot; only this CPU writes it.
        unsafe {
            *n += 1;
            if *n < settings.monitor_every {
                return 0;
            }
            *n = 0;
        }
        (event::DROP, settings.monitor_rate)
    };
    // The budget's window goes by the coarse clock (a tick's precision, no clock source
    // read): a flood that is over budget pays one lookup and no clock read.
    // SAFETY: the helpers take no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let window = match window_slot(ifindex, kind) {
        Some(w) => w,
        None => {
            let key = EventKey {
                ifindex,
                kind: u32::from(kind),
            };
            match EVENT_WINDOWS.get_ptr_mut(&key) {
                Some(w) => w,
                None => {
                    let fresh = EventWindow {
                        start_ns: now,
                        count: 0,
                        suppressed: 0,
                    };
                    if EVENT_WINDOWS.insert(&key, &fresh, 0).is_err() {
                        return 0;
                    }
                    match EVENT_WINDOWS.get_ptr_mut(&key) {
                        Some(w) => w,
                        None => return 0,
                    }
                }
            }
        }
    };
    // SAFETY: this CPU's value of a live entry; only this CPU writes it.
    let window = unsafe { &mut *window };
    if now.wrapping_sub(window.start_ns) >= event::WINDOW_NS {
        window.start_ns = now;
        window.count = 0;
    }
    if window.count >= rate {
        window.suppressed = window.suppressed.wrapping_add(1);
        lost(event::lost::RATE_LIMITED);
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        window.suppressed = window.suppressed.wrapping_add(1);
        lost(event::lost::RING_FULL);
        return 0;
    };
    window.count += 1;
    let out = entry.as_mut_ptr();
    let Some(scratch) = SCRATCH.get_ptr(0) else {
        entry.discard(0);
        return 0;
    };
    // SAFETY: `out` is the reserved entry (an `Event`'s size, ours until submitted);
    // `scratch` this CPU's scratch space, holding the frame just judged.
    unsafe {
        let p = &(*scratch).packet;
        let mut flags = 0;
        if p.is_v4() {
            flags |= event::V4;
        }
        if audited != 0 {
            flags |= event::AUDITED;
        }
        if p.has_ports {
            flags |= event::PORTS;
        }
        (*out).time_ns = bpf_ktime_get_boot_ns();
        (*out).ifindex = ifindex;
        (*out).kind = kind;
        (*out).direction = direction as u8;
        (*out).verdict = verdict as u8;
        (*out).protocol = p.protocol;
        copy_bytes(&mut (*out).src, &p.src);
        copy_bytes(&mut (*out).dst, &p.dst);
        (*out).src_port = p.src_port;
        (*out).dst_port = p.dst_port;
        (*out).flags = flags;
        (*out)._pad = [0; 3];
        (*out).suppressed = window.suppressed;
        (*out)._pad2 = 0;
    }
    window.suppressed = 0;
    entry.submit(0);
    1
}
