//! Connection tracking: a connection a rule admitted lets its replies (and ICMP errors
//! about it) through, until it ends or idles out (docs/design.md, "Connection tracking").
//!
//! Every vif has its own two tables, so what one VM, or the outside talking to it, opens
//! can only ever displace that vif's own entries. A connection starts in the vif's
//! opening table and moves to its established table only when answered: for TCP when the
//! opener acknowledges the responder's SYN-ACK (which a spoofed source cannot do), for UDP
//! and ICMP echo on the first reply. So half-open entries (a SYN flood) never displace
//! established ones. TCP RST and FIN count only near the sender's position in sequence
//! space, and a FIN closes one direction only: the connection ends when both have.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use isolator_common::{
    ConnKey, ConnState, SegmentInfo, Settings, conntrack, direction, fault, protocol,
};

use crate::faults;
use crate::maps::{BPF_NOEXIST, CONNTRACK, CONNTRACK_EVENTS, CONNTRACK_OPENING, SETTINGS, STALE};
use crate::packet::{Frame, Packet, ipv4_mapped, quoted_key};
use crate::proto::{ip, tcp};
use crate::rules::{Place, Service, classify, flow_admits, gateway_serves, slot};
use crate::vif::Vif;

/// `-EEXIST`, what an insert with `BPF_NOEXIST` returns for a key that is there.
const EEXIST: i32 = -17;

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

/// `seq` lies within the coarse window around `end` (sequence arithmetic, modulo 2^32).
#[inline(always)]
fn in_window(seq: u32, end: u32) -> bool {
    (seq.wrapping_sub(end) as i32).unsigned_abs() <= conntrack::SEQUENCE_WINDOW
}

/// Moves `end` forward to `to` if `to` lies after it (sequence arithmetic).
#[inline(always)]
fn advance(end: &mut u32, to: u32) {
    if (to.wrapping_sub(*end) as i32) > 0 {
        *end = to;
    }
}

/// The peer id of a place ([`ConnState::peer`]).
#[inline(always)]
pub fn peer(place: Place) -> u32 {
    match place {
        Place::Segment(s) => s.id,
        Place::Outside => ConnState::PEER_OUTSIDE,
    }
}

/// Opens a tracked connection in the vif's opening table if the packet opens one (TCP
/// SYN, UDP, ICMP echo request), recording where it was judged and who the peer is (the
/// destination's place on ingress, the sender's on egress): frames delivered to the VM
/// count as part of it only from that peer, and the daemon re-checks it from there.
#[inline(always)]
pub fn open(p: &Packet, key: &mut ConnKey, vif: &Vif, direction: u8, peer: Place) {
    open_with(p, key, vif, direction, self::peer(peer));
}

/// [`open`], as a BPF subprogram of its own (several steps call it).
#[inline(never)]
fn open_with(p: &Packet, key: &mut ConnKey, vif: &Vif, direction: u8, peer: u32) {
    if !p.opens_connection() || !p.forward_key(key) {
        return;
    }
    let ifindex = vif.ifindex;
    let Some(settings) = SETTINGS.get(vif.generation) else {
        return;
    };
    let state = ConnState {
        last_seen_ns: now(),
        state: conntrack::NEW,
        direction,
        flags: 0,
        _pad: 0,
        ifindex,
        opener_end: if p.protocol == ip::TCP {
            p.tcp_end()
        } else {
            0
        },
        responder_end: 0,
        peer,
        _pad2: 0,
        epoch: settings.epoch,
    };
    // SAFETY: the inner table outlives this run (the outer map holds it).
    let Some(opening) = (unsafe { CONNTRACK_OPENING.get(&ifindex) }) else {
        faults::record(fault::CONNECTION_UNRECORDED);
        return;
    };
    match opening.insert(&*key, state, BPF_NOEXIST) {
        Ok(()) => count_event(conntrack::EVENT_CREATED),
        // Opened already (a retransmitted SYN, the next datagram).
        Err(EEXIST) => {}
        Err(_) => faults::record(fault::CONNECTION_UNRECORDED),
    }
}

/// Whether the packet belongs to a tracked connection of this vif (either direction, or
/// an ICMP error about one); updates the connection's state. `sender` is who sent the
/// packet as a peer id ([`peer`]), or [`ConnState::PEER_VM`] for the VM itself (ingress):
/// a packet delivered to the VM counts only if it comes from the connection's peer. An
/// ICMP error counts only if it goes to the source of the packet it quotes (as Linux
/// conntrack requires) and, sent by the VM, only if that packet was addressed to it.
/// Whether the connection the last [`tracked`] call on this CPU found was admitted under
/// an earlier policy (then the policy in force must judge it again, [`rejudge`], before
/// the packet passes; `key` holds its key). Kept in a per-CPU slot rather than returned:
/// a tracker returning one of two values keeps the verifier's walk of what follows it at
/// two paths.
#[inline(always)]
pub fn found_stale() -> bool {
    matches!(STALE.get(0), Some(v) if *v != 0)
}

#[inline(always)]
fn set_stale(stale: bool) {
    if let Some(v) = STALE.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot; no other run interleaves on this CPU.
        unsafe { *v = u32::from(stale) };
    }
}

#[inline(never)]
pub fn tracked(frame: &impl Frame, vif: &Vif, p: &Packet, key: &mut ConnKey, sender: u32) -> bool {
    set_stale(false);
    let ifindex = vif.ifindex;
    // Each of the vif's tables is found once, then asked for both directions' keys: a
    // packet that belongs to no connection (most that get here) costs the two tables'
    // lookups and four probes, nothing more.
    // SAFETY: the inner tables outlive this run (the outer maps hold them).
    let (established_table, opening_table) =
        unsafe { (CONNTRACK.get(&ifindex), CONNTRACK_OPENING.get(&ifindex)) };
    for from_opener in [true, false] {
        let keyed = if from_opener {
            p.forward_key(key)
        } else {
            p.reverse_key(key)
        };
        if !keyed {
            continue;
        }
        if let Some(state) = established_table.and_then(|t| t.get_ptr_mut(&*key)) {
            // SAFETY: a live entry, changed in place within this run; concurrent updates
            // of its fields are benign (last writer wins), as for any per-packet state.
            let state = unsafe { &mut *state };
            let Some(seen) = seen(vif, from_opener) else {
                return false;
            };
            set_stale(state.epoch != seen.settings.epoch);
            return from_peer(state, sender) && established(&seen, key, state, p);
        }
        if let Some(state) = opening_table.and_then(|t| t.get_ptr_mut(&*key)) {
            // SAFETY: as above.
            let state = unsafe { &mut *state };
            let Some(seen) = seen(vif, from_opener) else {
                return false;
            };
            set_stale(state.epoch != seen.settings.epoch);
            return from_peer(state, sender) && opening(&seen, key, state, p);
        }
    }
    let Some(settings) = SETTINGS.get(vif.generation) else {
        return false;
    };
    let now = now();
    if p.is_icmp_error() && quoted_key(frame, p, key) {
        if key.src != p.dst {
            return false;
        }
        // An error the VM sends reports on a packet addressed to the VM: to the address it
        // sends the error from (which the source guard checked is the VM's own).
        if sender == ConnState::PEER_VM && key.dst != p.src {
            return false;
        }
        // The quoted packet was sent by this packet's destination: it is either the
        // connection's opening direction or its reply direction.
        if live(ifindex, key, settings, now, sender) {
            return true;
        }
        core::mem::swap(&mut key.src, &mut key.dst);
        if key.protocol == ip::TCP || key.protocol == ip::UDP {
            core::mem::swap(&mut key.src_port, &mut key.dst_port);
        }
        return live(ifindex, key, settings, now, sender);
    }
    false
}

/// Judges a connection [`found_stale`] again by the policy in force and settles
/// it: still admitted, it carries the policy's epoch from now on; no longer admitted, it
/// is removed (`revoked`). Returns whether it is still admitted.
#[inline(always)]
pub fn rejudge(vif: &Vif, key: &ConnKey) -> bool {
    isolator_rejudge(
        vif.generation,
        vif.segment,
        vif.info.flags,
        vif.ifindex,
        key as *const ConnKey,
    ) != 0
}

/// [`rejudge`] as a global BPF function: the verifier checks it once, on its own, not for
/// every state the tracker can be called in. It finds the connection again by its key
/// (in the vif's established table, else its opening one) to learn where it was opened.
///
/// The policy in force still admits the connection, keyed by its opening packet, as if
/// that packet were sent now: the kernel's side of the re-check after a swap
/// (docs/design.md, "Connection tracking"), which closes the window until the daemon's
/// own re-check has run. Opened by the VM: not to a management service, to a gateway of
/// its segment only for the gateway's services and to no other address of the host, else
/// within its segment, to an exposed endpoint or through a flow, or outside every segment
/// if its segment may send there. Opened towards the VM: to one of its exposed services,
/// or from its own segment, or through a flow from the source address's segment.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn isolator_rejudge(
    generation: u32,
    segment: u32,
    segment_flags: u32,
    ifindex: u32,
    key: *const ConnKey,
) -> u32 {
    if key.is_null() {
        return 0;
    }
    // SAFETY: the verifier checked that the caller passes a whole key.
    let key = unsafe { &*key };
    // SAFETY: the inner tables outlive this run; only the direction is read.
    let found = unsafe {
        match CONNTRACK.get(&ifindex).and_then(|t| t.get(key)) {
            Some(state) => Some((true, state.direction)),
            None => CONNTRACK_OPENING
                .get(&ifindex)
                .and_then(|t| t.get(key))
                .map(|state| (false, state.direction)),
        }
    };
    let Some((established, opened)) = found else {
        return 0;
    };
    let admitted = admitted_now(generation, segment, segment_flags, opened, key);
    settle(generation, ifindex, key, established, admitted);
    u32::from(admitted)
}

#[inline(always)]
fn admitted_now(generation: u32, segment: u32, flags: u32, opened: u8, key: &ConnKey) -> bool {
    let service = Service {
        class: if key.protocol == ip::ICMP || key.protocol == ip::ICMPV6 {
            protocol::ICMP
        } else {
            key.protocol
        },
        port: if key.protocol == ip::TCP || key.protocol == ip::UDP {
            Some(key.dst_port)
        } else {
            None
        },
    };
    let v4 = ipv4_mapped(&key.dst);
    let dst = classify(generation, v4, slot::OTHER, &key.dst);
    if opened == direction::INGRESS {
        if dst.management_of(generation, service) {
            return false;
        }
        if let Some(served) = gateway_serves(generation, segment, &key.dst, dst, service) {
            return served;
        }
        if dst.host() {
            return false;
        }
        return match dst.place() {
            Place::Segment(t) if t.id == segment => true,
            _ if dst.exposes(generation, service) => true,
            Place::Segment(t) => flow_admits(generation, segment, t.id, service),
            Place::Outside => flags & SegmentInfo::EGRESS_ALLOW != 0,
        };
    }
    if dst.exposes(generation, service) {
        return true;
    }
    match classify(generation, v4, slot::OTHER, &key.src).place() {
        Place::Segment(x) => x.id == segment || flow_admits(generation, x.id, segment, service),
        Place::Outside => false,
    }
}

/// A connection still admitted carries the epoch of the policy in force from now on; one
/// no longer admitted is removed (`revoked`).
#[inline(always)]
fn settle(generation: u32, ifindex: u32, key: &ConnKey, established: bool, admitted: bool) {
    if !admitted {
        if established {
            remove_established(ifindex, key, conntrack::EVENT_REVOKED);
        } else {
            remove_opening(ifindex, key, conntrack::EVENT_REVOKED);
        }
        return;
    }
    let Some(settings) = SETTINGS.get(generation) else {
        return;
    };
    // SAFETY: the inner tables outlive this run.
    let state = unsafe {
        if established {
            CONNTRACK.get(&ifindex).and_then(|t| t.get_ptr_mut(key))
        } else {
            CONNTRACK_OPENING
                .get(&ifindex)
                .and_then(|t| t.get_ptr_mut(key))
        }
    };
    if let Some(state) = state {
        // SAFETY: a live entry, changed in place within this run.
        unsafe { (*state).epoch = settings.epoch };
    }
}

/// A packet delivered to the VM is part of a connection only if it came from the
/// connection's peer; what the VM sends is its own.
#[inline(always)]
fn from_peer(state: &ConnState, sender: u32) -> bool {
    sender == ConnState::PEER_VM || sender == state.peer
}

/// Whether `key` is a live connection of the vif, in either table, with `sender` as its
/// peer (without changing it).
#[inline(always)]
fn live(ifindex: u32, key: &ConnKey, settings: &Settings, now: u64, sender: u32) -> bool {
    let fresh = |state: &ConnState| {
        from_peer(state, sender)
            && now.saturating_sub(state.last_seen_ns)
                <= settings.timeout_ns(key.protocol, state.state)
    };
    // SAFETY: the states are read at once.
    if let Some(state) = unsafe { CONNTRACK.get_value(&ifindex, key) } {
        return fresh(state);
    }
    // SAFETY: as above.
    match unsafe { CONNTRACK_OPENING.get_value(&ifindex, key) } {
        Some(state) => fresh(state),
        None => false,
    }
}

/// Where and when the packet of a tracked connection is seen, under the policy in force's
/// timeouts; `None` without settings (no policy).
#[inline(always)]
fn seen(vif: &Vif, from_opener: bool) -> Option<Seen<'static>> {
    let settings = SETTINGS.get(vif.generation)?;
    Some(Seen {
        ifindex: vif.ifindex,
        settings,
        now: now(),
        from_opener,
    })
}

/// Where and when a packet of a tracked connection was seen, and in which direction.
struct Seen<'a> {
    ifindex: u32,
    settings: &'a Settings,
    now: u64,
    /// In the connection's opening direction.
    from_opener: bool,
}

/// A packet of an established connection. A BPF subprogram of its own (as is
/// [`opening`]): the tracker calls each for both directions.
#[inline(never)]
fn established(seen: &Seen<'_>, key: &ConnKey, state: &mut ConnState, p: &Packet) -> bool {
    let Seen {
        ifindex,
        settings,
        now,
        from_opener,
    } = *seen;
    if now.saturating_sub(state.last_seen_ns) > settings.timeout_ns(key.protocol, state.state) {
        remove_established(ifindex, key, conntrack::EVENT_EXPIRED);
        return false;
    }
    if p.protocol == ip::TCP {
        let (end, fin) = if from_opener {
            (&mut state.opener_end, ConnState::FIN_FROM_OPENER)
        } else {
            (&mut state.responder_end, ConnState::FIN_FROM_RESPONDER)
        };
        if p.tcp_flags & tcp::RST != 0 {
            if !in_window(p.tcp_seq, *end) {
                return false;
            }
            remove_established(ifindex, key, conntrack::EVENT_CLOSED);
            return true;
        }
        // A new SYN on a connection both sides closed: the 5-tuple is being reused, and
        // the new connection is judged anew.
        if from_opener
            && p.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN
            && state.state == conntrack::CLOSING
        {
            remove_established(ifindex, key, conntrack::EVENT_EXPIRED);
            return false;
        }
        if p.tcp_flags & tcp::FIN != 0 {
            if !in_window(p.tcp_seq, *end) {
                return false;
            }
            state.flags |= fin;
            if state.flags & (ConnState::FIN_FROM_OPENER | ConnState::FIN_FROM_RESPONDER)
                == ConnState::FIN_FROM_OPENER | ConnState::FIN_FROM_RESPONDER
            {
                state.state = conntrack::CLOSING;
            }
        }
        advance(end, p.tcp_end());
    }
    state.last_seen_ns = now;
    true
}

/// A packet of a connection being opened.
#[inline(never)]
fn opening(seen: &Seen<'_>, key: &ConnKey, state: &mut ConnState, p: &Packet) -> bool {
    let Seen {
        ifindex,
        settings,
        now,
        from_opener,
    } = *seen;
    if now.saturating_sub(state.last_seen_ns) > settings.timeout_ns(key.protocol, state.state) {
        remove_opening(ifindex, key, conntrack::EVENT_EXPIRED);
        return false;
    }
    if p.protocol != ip::TCP {
        state.last_seen_ns = now;
        if !from_opener {
            // The first reply: the connection is established.
            state.state = conntrack::ESTABLISHED;
            promote(ifindex, key, state);
        }
        return true;
    }
    let flags = p.tcp_flags;
    if from_opener {
        if flags & tcp::RST != 0 {
            if !in_window(p.tcp_seq, state.opener_end) {
                return false;
            }
            remove_opening(ifindex, key, conntrack::EVENT_CLOSED);
            return true;
        }
        advance(&mut state.opener_end, p.tcp_end());
        state.last_seen_ns = now;
        // The handshake's last step: the opener acknowledges the responder's SYN.
        if flags & (tcp::SYN | tcp::ACK) == tcp::ACK
            && state.flags & ConnState::SYN_ACK_SEEN != 0
            && p.tcp_ack == state.responder_end
        {
            state.state = conntrack::ESTABLISHED;
            promote(ifindex, key, state);
        }
        return true;
    }
    // From the responder: a SYN-ACK or an RST acknowledging the opener's SYN; after the
    // SYN-ACK, an RST near the responder's position.
    let acknowledges = flags & tcp::ACK != 0 && p.tcp_ack == state.opener_end;
    if flags & tcp::RST != 0 {
        let in_sequence =
            state.flags & ConnState::SYN_ACK_SEEN != 0 && in_window(p.tcp_seq, state.responder_end);
        if !(acknowledges || in_sequence) {
            return false;
        }
        remove_opening(ifindex, key, conntrack::EVENT_CLOSED);
        return true;
    }
    if flags & tcp::SYN != 0 && acknowledges {
        state.flags |= ConnState::SYN_ACK_SEEN;
        state.responder_end = p.tcp_end();
        state.last_seen_ns = now;
        return true;
    }
    // Anything else from the responder before the handshake completes is not part of it.
    false
}

/// Moves an answered connection from the vif's opening table to its established one.
#[inline(always)]
fn promote(ifindex: u32, key: &ConnKey, state: &ConnState) {
    // SAFETY: the inner tables outlive this run.
    let promoted = match unsafe { CONNTRACK.get(&ifindex) } {
        Some(established) => established.insert(key, *state, 0).is_ok(),
        None => false,
    };
    if !promoted {
        faults::record(fault::CONNECTION_UNRECORDED);
        return;
    }
    // SAFETY: as above.
    if let Some(opening) = unsafe { CONNTRACK_OPENING.get(&ifindex) } {
        let _ = opening.remove(key);
    }
}

#[inline(always)]
fn remove_established(ifindex: u32, key: &ConnKey, event: u32) {
    // SAFETY: the inner table outlives this run.
    if let Some(table) = unsafe { CONNTRACK.get(&ifindex) }
        && table.remove(key).is_ok()
    {
        count_event(event);
    }
}

#[inline(always)]
fn remove_opening(ifindex: u32, key: &ConnKey, event: u32) {
    // SAFETY: the inner table outlives this run.
    if let Some(table) = unsafe { CONNTRACK_OPENING.get(&ifindex) }
        && table.remove(key).is_ok()
    {
        count_event(event);
    }
}
