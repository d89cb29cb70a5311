//! Reports to userspace through the `EVENTS` ring buffer (docs/design.md, "Events"):
//! every attempt of a VM to reach management (for the audit log), and, only while someone
//! runs `isolator monitor`, one drop in N. Each interface has a budget per kind, CPU and
//! second (`EVENT_WINDOWS`); what it does not report is counted (`EVENTS_LOST`) and
//! carried by its next report (`suppressed`).
//!
//! The common path pays nothing: a pass reports nothing, and a drop other than
//! `management` reads one array entry to learn that no one listens.

use aya_ebpf::helpers::{bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns};
use isolator_common::{Event, EventKey, EventWindow, EventWindows, Verdict, event, limits, mapped};
use isolator_ebpf::packet::copy_bytes;

use crate::account::Outcome;
use crate::maps::{
    EVENT_SAMPLE, EVENT_SETTINGS, EVENT_WINDOW_SLOTS, EVENT_WINDOWS, EVENTS, EVENTS_LOST, SCRATCH,
};

/// Reports the frame just judged, if its verdict calls for it (see the module): a
/// management attempt, or any drop while a monitor asks. The condition is written out as
/// steps (as a call of a function of it, the egress program's verification walked more
/// than twice as many instructions).
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

/// A report the budget admits: its kind, the window it counts in, and its entry in the
/// ring buffer, reserved.
struct Admitted {
    kind: u8,
    window: &'static mut EventWindow,
    entry: aya_ebpf::maps::ring_buf::RingBufEntry<Event>,
}

/// Whether a report of a frame judged `verdict` on `ifindex` is to be made (see the
/// module): the sample for a drop other than `management`, then the interface's budget
/// for its kind, then room in the ring buffer. What the budget or the ring refuses is
/// counted as suppressed and lost.
#[inline(always)]
fn admit(ifindex: u32, verdict: u32) -> Option<Admitted> {
    let settings = EVENT_SETTINGS.get(0)?;
    let management = verdict == Verdict::Management as u32;
    let (kind, rate) = if management {
        (event::MANAGEMENT, settings.management_rate)
    } else {
        if settings.monitor_every == 0 {
            return None;
        }
        // One drop in `monitor_every`, counted per CPU.
        let n = EVENT_SAMPLE.get_ptr_mut(0)?;
        // SAFETY: a per-CPU slot; only this CPU writes it.
        unsafe {
            *n += 1;
            if *n < settings.monitor_every {
                return None;
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
                    EVENT_WINDOWS.insert(&key, &fresh, 0).ok()?;
                    EVENT_WINDOWS.get_ptr_mut(&key)?
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
        return None;
    }
    let Some(entry) = EVENTS.reserve::<Event>(0) else {
        window.suppressed = window.suppressed.wrapping_add(1);
        lost(event::lost::RING_FULL);
        return None;
    };
    window.count += 1;
    Some(Admitted {
        kind,
        window,
        entry,
    })
}

/// What a report says of the packet, beside the interface and the verdict.
struct Said<'a> {
    direction: u32,
    verdict: u32,
    protocol: u8,
    src: &'a [u8; 16],
    dst: &'a [u8; 16],
    src_port: u16,
    dst_port: u16,
    flags: u8,
}

/// Fills the admitted report's entry and submits it.
#[inline(always)]
fn submit(ifindex: u32, admitted: Admitted, said: &Said) {
    let Admitted {
        kind,
        window,
        mut entry,
    } = admitted;
    let out = entry.as_mut_ptr();
    // SAFETY: `out` is the reserved entry (an `Event`'s size, ours until submitted).
    unsafe {
        (*out).time_ns = bpf_ktime_get_boot_ns();
        (*out).ifindex = ifindex;
        (*out).kind = kind;
        (*out).direction = said.direction as u8;
        (*out).verdict = said.verdict as u8;
        (*out).protocol = said.protocol;
        copy_bytes(&mut (*out).src, said.src);
        copy_bytes(&mut (*out).dst, said.dst);
        (*out).src_port = said.src_port;
        (*out).dst_port = said.dst_port;
        (*out).flags = said.flags;
        (*out)._pad = [0; 3];
        (*out).suppressed = window.suppressed;
        (*out)._pad2 = 0;
    }
    window.suppressed = 0;
    entry.submit(0);
}

/// Makes one report, within the interface's budget, of the packet the parser left in
/// the scratch space: 1 if made, 0 if not. A global BPF function, verified once on its
/// own.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn isolator_event(ifindex: u32, direction: u32, verdict: u32, audited: u32) -> u32 {
    let Some(admitted) = admit(ifindex, verdict) else {
        return 0;
    };
    let Some(scratch) = SCRATCH.get_ptr(0) else {
        admitted.entry.discard(0);
        return 0;
    };
    // SAFETY: this CPU's scratch space, holding the frame just judged.
    let p = unsafe { &(*scratch).packet };
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
    let said = Said {
        direction,
        verdict,
        protocol: p.protocol,
        src: &p.src,
        dst: &p.dst,
        src_port: p.src_port,
        dst_port: p.dst_port,
        flags,
    };
    submit(ifindex, admitted, &said);
    1
}

/// [`report`] of an IPv4 packet with ports whose fields the caller has (the short way,
/// which leaves the scratch space alone): nothing is written for a report not made.
#[inline(always)]
pub fn report_v4(ifindex: u32, direction: u8, outcome: Outcome, fields: V4Fields) {
    if outcome.verdict == Verdict::Pass {
        return;
    }
    if outcome.verdict != Verdict::Management {
        match EVENT_SETTINGS.get(0) {
            Some(s) if s.monitor_every != 0 => {}
            _ => return,
        }
    }
    let what = u32::from(outcome.verdict as u8)
        | u32::from(direction) << 8
        | u32::from(fields.protocol) << 16
        | u32::from(outcome.audited) << 24;
    isolator_event_v4(
        ifindex,
        what,
        u32::from_ne_bytes(fields.src),
        u32::from_ne_bytes(fields.dst),
        u32::from(fields.src_port) << 16 | u32::from(fields.dst_port),
    );
}

/// The fields of an IPv4 packet with ports a report says.
#[derive(Clone, Copy)]
pub struct V4Fields {
    pub protocol: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
}

/// [`isolator_event`] for [`report_v4`], the packet's fields as arguments (a BPF call
/// takes five): `what` is the verdict, the direction in bits 8-15, the protocol in bits
/// 16-23, and bit 24 when audit mode passed the frame; `ports` the source port in the
/// high half, the destination port in the low one.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn isolator_event_v4(
    ifindex: u32,
    what: u32,
    src: u32,
    dst: u32,
    ports: u32,
) -> u32 {
    let verdict = what & 0xff;
    let Some(admitted) = admit(ifindex, verdict) else {
        return 0;
    };
    let mut flags = event::V4 | event::PORTS;
    if what >> 24 & 1 != 0 {
        flags |= event::AUDITED;
    }
    let said = Said {
        direction: what >> 8 & 0xff,
        verdict,
        protocol: (what >> 16) as u8,
        src: &mapped(src.to_ne_bytes()),
        dst: &mapped(dst.to_ne_bytes()),
        src_port: (ports >> 16) as u16,
        dst_port: ports as u16,
        flags,
    };
    submit(ifindex, admitted, &said);
    1
}
