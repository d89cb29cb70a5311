//! Connection tracking: a connection a rule admitted lets its replies (and ICMP errors
//! about it) through, until it ends or idles out (docs/design.md, "Connection tracking").

use aya_ebpf::helpers::bpf_ktime_get_ns;
use isolator_common::{ConnKey, ConnState, Settings, conntrack};

use crate::maps::{BPF_NOEXIST, CONNTRACK, CONNTRACK_EVENTS, SETTINGS};
use crate::packet::{Frame, Packet, quoted_key};
use crate::proto::{ip, tcp};
use crate::vif::Vif;

#[inline(always)]
fn count_event(event: u32) {
    if let Some(c) = CONNTRACK_EVENTS.get_ptr_mut(event) {
        // SAFETY: a per-CPU slot; only this CPU writes it.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: reads the clock; no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Opens a tracked connection if the packet opens one (TCP SYN, UDP, ICMP echo request),
/// recording where it was judged (for the daemon's re-check against a new policy).
#[inline(always)]
pub fn open(p: &Packet, key: &mut ConnKey, vif: &Vif, direction: u8) {
    if !p.opens_connection() || !p.forward_key(key) {
        return;
    }
    let state = ConnState {
        last_seen_ns: now(),
        state: conntrack::NEW,
        direction,
        _pad: [0; 2],
        ifindex: vif.ifindex,
    };
    if CONNTRACK.insert(&*key, state, BPF_NOEXIST).is_ok() {
        count_event(conntrack::EVENT_CREATED);
    }
}

/// Whether the packet belongs to a tracked connection (either direction, or an ICMP
/// error about one); updates the connection's state.
#[inline(always)]
pub fn tracked(frame: &impl Frame, p: &Packet, key: &mut ConnKey, generation: u32) -> bool {
    let Some(settings) = SETTINGS.get(generation) else {
        return false;
    };
    let now = now();
    if p.forward_key(key) && touch(key, p, settings, now, false) {
        return true;
    }
    if p.reverse_key(key) && touch(key, p, settings, now, true) {
        return true;
    }
    if p.is_icmp_error() && quoted_key(frame, p, key) {
        // The quoted packet was sent by this packet's destination: it is either the
        // connection's opening direction or its reply direction.
        if live(key, settings, now) {
            return true;
        }
        core::mem::swap(&mut key.src, &mut key.dst);
        if key.protocol == ip::TCP || key.protocol == ip::UDP {
            core::mem::swap(&mut key.src_port, &mut key.dst_port);
        }
        return live(key, settings, now);
    }
    false
}

/// Whether `key` is a live connection (without changing it).
#[inline(always)]
fn live(key: &ConnKey, settings: &Settings, now: u64) -> bool {
    // SAFETY: the state is read at once.
    match unsafe { CONNTRACK.get(key) } {
        Some(state) => {
            now.saturating_sub(state.last_seen_ns) <= settings.timeout_ns(key.protocol, state.state)
        }
        None => false,
    }
}

/// Looks the connection up; if live, records this packet (reply, FIN, RST) and returns
/// true. An entry idle past its timeout is removed.
#[inline(always)]
fn touch(key: &ConnKey, p: &Packet, settings: &Settings, now: u64, reply: bool) -> bool {
    let Some(state) = CONNTRACK.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a live entry; concurrent updates of its few fields are benign (last writer
    // wins, as in any per-packet state update without locks).
    let state = unsafe { &mut *state };
    if now.saturating_sub(state.last_seen_ns) > settings.timeout_ns(key.protocol, state.state) {
        let _ = CONNTRACK.remove(key);
        count_event(conntrack::EVENT_EXPIRED);
        return false;
    }
    if p.protocol == ip::TCP && p.tcp_flags & tcp::RST != 0 {
        let _ = CONNTRACK.remove(key);
        count_event(conntrack::EVENT_CLOSED);
        return true;
    }
    state.last_seen_ns = now;
    if p.protocol == ip::TCP && p.tcp_flags & tcp::FIN != 0 {
        state.state = conntrack::CLOSING;
    } else if reply && state.state == conntrack::NEW {
        state.state = conntrack::ESTABLISHED;
    }
    true
}
