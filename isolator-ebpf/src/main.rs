//! Kernel side of isolator: an XDP program judging what each VM sends (ingress) and a
//! TC program judging what is delivered to it (egress), on the host side of every vif.
//!
//! Each reads like the policy: identify the vif, parse, classify, decide, account.
//! Every exit goes through [`account`], so the verdict and the counters can never
//! disagree. The order of the rules is documented in docs/design.md.
#![no_std]
#![no_main]
// Map keys that live in the per-CPU scratch map are passed by reference: clippy's
// suggestion (pass by value) would copy them onto the BPF stack, which is too small.
#![allow(clippy::needless_borrows_for_generic_args)]

mod packet;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_meta},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use isolator_common::{
    ConnKey, ConnState, Counter, CounterKey, DeclaredMacKey, FragKey, GENERATION_PREFIX_BITS,
    Ipv4PrefixKey, Ipv6PrefixKey, MacKey, PairKey, RuleSet, SegmentInfo, SegmentKey, Settings,
    VIF_PREFIX_BITS, VifAddrV4Key, VifAddrV6Key, VifInfo, VifKey, VlanKey, conntrack, direction,
    limits, protocol, verdict,
};

use crate::packet::{
    FRAGMENT_FIRST, FRAGMENT_LATER, Frame, IPPROTO_TCP, IPPROTO_UDP, KIND_ARP, KIND_IPV4, Packet,
    TCP_FIN, TCP_RST, is_vlan_tag, parse, quoted_key,
};

#[map]
static CONFIG: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(2, 0);

#[map]
static VIFS: HashMap<VifKey, VifInfo> = HashMap::with_max_entries(2 * limits::MAX_VIFS, 0);

#[map]
static SEGMENTS: HashMap<SegmentKey, SegmentInfo> =
    HashMap::with_max_entries(2 * limits::MAX_SEGMENTS, 0);

#[map]
static PREFIXES_V4: LpmTrie<Ipv4PrefixKey, u32> =
    LpmTrie::with_max_entries(2 * limits::MAX_PREFIXES, 0);

#[map]
static PREFIXES_V6: LpmTrie<Ipv6PrefixKey, u32> =
    LpmTrie::with_max_entries(2 * limits::MAX_PREFIXES, 0);

#[map]
static MANAGEMENT_V4: LpmTrie<Ipv4PrefixKey, RuleSet> =
    LpmTrie::with_max_entries(2 * limits::MAX_MANAGEMENT, 0);

#[map]
static MANAGEMENT_V6: LpmTrie<Ipv6PrefixKey, RuleSet> =
    LpmTrie::with_max_entries(2 * limits::MAX_MANAGEMENT, 0);

#[map]
static EXPOSED_V4: LpmTrie<Ipv4PrefixKey, RuleSet> =
    LpmTrie::with_max_entries(2 * limits::MAX_EXPOSED, 0);

#[map]
static EXPOSED_V6: LpmTrie<Ipv6PrefixKey, RuleSet> =
    LpmTrie::with_max_entries(2 * limits::MAX_EXPOSED, 0);

#[map]
static FLOWS: HashMap<PairKey, RuleSet> = HashMap::with_max_entries(2 * limits::MAX_FLOW_PAIRS, 0);

#[map]
static NEIGHBOURS: HashMap<PairKey, u32> = HashMap::with_max_entries(4 * limits::MAX_FLOW_PAIRS, 0);

#[map]
static CONNTRACK: LruHashMap<ConnKey, ConnState> =
    LruHashMap::with_max_entries(limits::MAX_CONNECTIONS, 0);

#[map]
static CONNTRACK_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(conntrack::EVENTS, 0);

#[map]
static MAC_VIFS: LruHashMap<MacKey, u32> = LruHashMap::with_max_entries(limits::MAX_MACS, 0);

#[map]
static VIF_ADDRS_V4: LpmTrie<VifAddrV4Key, u8> =
    LpmTrie::with_max_entries(2 * limits::MAX_VIF_ADDRS, 0);

#[map]
static VIF_ADDRS_V6: LpmTrie<VifAddrV6Key, u8> =
    LpmTrie::with_max_entries(2 * limits::MAX_VIF_ADDRS, 0);

#[map]
static DECLARED_MACS: HashMap<DeclaredMacKey, u32> =
    HashMap::with_max_entries(2 * limits::MAX_VIFS, 0);

#[map]
static DECLARED_V4: LpmTrie<Ipv4PrefixKey, u32> =
    LpmTrie::with_max_entries(2 * limits::MAX_VIF_ADDRS, 0);

#[map]
static DECLARED_V6: LpmTrie<Ipv6PrefixKey, u32> =
    LpmTrie::with_max_entries(2 * limits::MAX_VIF_ADDRS, 0);

#[map]
static VIF_VLANS: HashMap<VlanKey, u8> = HashMap::with_max_entries(2 * limits::MAX_VIF_VLANS, 0);

#[map]
static FRAGMENTS: LruHashMap<FragKey, u64> = LruHashMap::with_max_entries(limits::MAX_FRAGMENTS, 0);

/// How long later fragments may follow their first.
const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;

#[map]
static COUNTERS: PerCpuHashMap<CounterKey, Counter> =
    PerCpuHashMap::with_max_entries(limits::MAX_COUNTERS, 0);

/// Per-CPU working memory: the parsed packet and a connection key.
#[repr(C)]
struct Scratch {
    packet: Packet,
    key: ConnKey,
    frag: FragKey,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const BPF_NOEXIST: u64 = 1;

/// The parsed packet and a key to build lookups in, on this CPU.
#[inline(always)]
fn scratch() -> Option<(
    &'static mut Packet,
    &'static mut ConnKey,
    &'static mut FragKey,
)> {
    let s = SCRATCH.get_ptr_mut(0)?;
    let s = unsafe { &mut *s };
    s.packet.reset();
    Some((&mut s.packet, &mut s.key, &mut s.frag))
}

/// The vif a program runs on, in the active generation.
struct Vif {
    generation: u32,
    ifindex: u32,
    segment: u32,
    /// The vif's declared identity.
    vif: VifInfo,
    /// Its segment's tenant and flags.
    info: SegmentInfo,
}

/// Where an address lies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Segment(u32),
    Outside,
}

#[xdp]
pub fn isolator_ingress(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let (code, audited) = match identify(ifindex) {
        Some(vif) => judge(&ctx, &vif, direction::INGRESS),
        None => (verdict::NO_POLICY, false),
    };
    if account(ifindex, direction::INGRESS, code, audited, bytes) {
        if audited {
            note_audited(&ctx, code);
        }
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// First byte of the metadata the XDP program leaves in front of a frame it passed under
/// audit mode: `[AUDIT_META, reason, 0, 0]`. Frames it passed plainly carry none.
const AUDIT_META: u8 = 0xa7;

/// Tells [`isolator_tags`] under which counter a passed frame was counted (it may have to
/// move it). Only audited frames, so the common path pays nothing. A driver without XDP
/// metadata support leaves it out; see [`isolator_tags`].
#[inline(always)]
fn note_audited(ctx: &XdpContext, code: u8) {
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -4) } != 0 {
        return;
    }
    let meta = ctx.metadata();
    if meta + 4 > ctx.data() {
        return;
    }
    unsafe {
        *(meta as *mut [u8; 4]) = [AUDIT_META, code, 0, 0];
    }
}

/// The VLAN guard for tags outside the frame bytes. A kernel VLAN device (or bridge, or
/// program) on a VM whose interface offloads VLAN insertion (veth does) hands the frame
/// over untagged with the tag in `skb->vlan_tci`: the XDP program never sees it. This
/// program runs next, on the skb, and applies the same rule as the XDP program does to
/// tags in the bytes: one tag with an id the interface lists, never two. A frame it
/// refuses was already counted by the XDP program (as passed, or audited); that count is
/// moved to `vlan`, so every frame is still counted once.
#[classifier]
pub fn isolator_tags(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    let (present, tci, ifindex, inner) = unsafe {
        (
            (*skb).vlan_present,
            (*skb).vlan_tci,
            (*skb).ifindex,
            (*skb).protocol,
        )
    };
    if present == 0 {
        return TC_ACT_OK;
    }
    let stacked = is_vlan_tag(u16::from_be(inner as u16));
    let allowed = !stacked
        && match identify(ifindex) {
            Some(vif) => vlan_allowed(&vif, (tci & 0x0fff) as u16),
            None => false,
        };
    if allowed {
        return TC_ACT_OK;
    }
    let bytes = ctx.len() as u64;
    let (data, meta) = unsafe { ((*skb).data as usize, (*skb).data_meta as usize) };
    let (counted, audited) = if meta + 4 <= data {
        let note = unsafe { *(meta as *const [u8; 4]) };
        if note[0] == AUDIT_META {
            (note[1], true)
        } else {
            (verdict::PASS, false)
        }
    } else {
        (verdict::PASS, false)
    };
    uncount(ifindex, direction::INGRESS, counted, audited, bytes);
    account(ifindex, direction::INGRESS, verdict::VLAN, false, bytes);
    TC_ACT_SHOT
}

#[inline(always)]
fn counter_key(ifindex: u32, dir: u8, code: u8, audited: bool) -> CounterKey {
    CounterKey {
        ifindex,
        direction: dir,
        verdict: code,
        flags: if audited { CounterKey::AUDIT } else { 0 },
        _pad: 0,
    }
}

/// Takes back one packet counted by [`account`]. Per-CPU values may wrap below zero when
/// the two programs ran on different CPUs; userspace sums them with wrapping arithmetic.
#[inline(always)]
fn uncount(ifindex: u32, dir: u8, code: u8, audited: bool, bytes: u64) {
    let key = counter_key(ifindex, dir, code, audited);
    match COUNTERS.get_ptr_mut(key) {
        Some(counter) => unsafe {
            (*counter).packets = (*counter).packets.wrapping_sub(1);
            (*counter).bytes = (*counter).bytes.wrapping_sub(bytes);
        },
        None => {
            let minus = Counter {
                packets: 0u64.wrapping_sub(1),
                bytes: 0u64.wrapping_sub(bytes),
            };
            let _ = COUNTERS.insert(key, minus, BPF_NOEXIST);
        }
    }
}

#[classifier]
pub fn isolator_egress(ctx: TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let bytes = ctx.len() as u64;
    // Make the headers linear so that they can be read directly.
    let want = if ctx.len() < 256 { ctx.len() } else { 256 };
    let _ = ctx.pull_data(want);
    let (code, audited) = match identify(ifindex) {
        Some(vif) => judge(&ctx, &vif, direction::EGRESS),
        None => (verdict::NO_POLICY, false),
    };
    if account(ifindex, direction::EGRESS, code, audited, bytes) {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    }
}

/// A program that passes everything: the baseline `cargo xtask bench` measures the
/// enforcer against (the kernel's own cost of running an XDP program). Never attached.
#[xdp]
pub fn isolator_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The single accounting exit: counts the packet under its verdict (and audit flag)
/// and says whether it passes.
#[inline(always)]
fn account(ifindex: u32, dir: u8, code: u8, audited: bool, bytes: u64) -> bool {
    let key = counter_key(ifindex, dir, code, audited);
    match COUNTERS.get_ptr_mut(key) {
        Some(counter) => unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        },
        None => {
            let first = Counter { packets: 1, bytes };
            // Another CPU may have created the key meanwhile: then count on ours.
            if COUNTERS.insert(key, first, BPF_NOEXIST).is_err()
                && let Some(counter) = COUNTERS.get_ptr_mut(key)
            {
                unsafe {
                    (*counter).packets += 1;
                    (*counter).bytes += bytes;
                }
            }
        }
    }
    code == verdict::PASS || audited
}

/// Parses the frame, applies the checks both directions share (VLAN tags, later
/// fragments), then the direction's rules; remembers a first fragment that passes so
/// that its later fragments may follow.
#[inline(always)]
fn judge(frame: &impl Frame, vif: &Vif, dir: u8) -> (u8, bool) {
    let Some((p, key, frag)) = scratch() else {
        return (verdict::NO_POLICY, false);
    };
    let code = match parse(frame, p) {
        Err(code) => code,
        Ok(()) => {
            if p.has_vlan && !vlan_allowed(vif, p.vlan) {
                verdict::VLAN
            } else if dir == direction::INGRESS {
                judge_ingress(frame, vif, p, key, frag)
            } else {
                judge_egress(frame, vif, p, key, frag)
            }
        }
    };
    let (code, audited) = audit(code, vif);
    if (code == verdict::PASS || audited) && p.fragment == FRAGMENT_FIRST {
        fragment_key(p, frag);
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = FRAGMENTS.insert(&*frag, now, 0);
    }
    (code, audited)
}

#[inline(always)]
fn vlan_allowed(vif: &Vif, vlan: u16) -> bool {
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

#[inline(always)]
fn fragment_key(p: &Packet, frag: &mut FragKey) {
    frag.src = p.src;
    frag.dst = p.dst;
    frag.id = p.frag_id;
    frag.protocol = p.protocol;
    frag._pad = [0; 3];
}

/// A later fragment passes only if its datagram's first fragment passed, recently.
#[inline(always)]
fn later_fragment(p: &Packet, frag: &mut FragKey) -> u8 {
    fragment_key(p, frag);
    let now = unsafe { bpf_ktime_get_ns() };
    match unsafe { FRAGMENTS.get(&*frag) } {
        Some(first) if now.saturating_sub(*first) <= FRAGMENT_TIMEOUT_NS => verdict::PASS,
        _ => verdict::FRAGMENT,
    }
}

/// Audit mode passes what its segment would drop for an auditable reason.
#[inline(always)]
fn audit(code: u8, vif: &Vif) -> (u8, bool) {
    let audited = code != verdict::PASS
        && verdict::auditable(code)
        && vif.info.flags & SegmentInfo::AUDIT != 0;
    (code, audited)
}

/// The vif's segment and its settings in the active generation; `None` fails closed.
#[inline(always)]
fn identify(ifindex: u32) -> Option<Vif> {
    let generation = *CONFIG.get(0)?;
    let vif = unsafe {
        VIFS.get(VifKey {
            generation,
            ifindex,
        })
    }?;
    let segment = vif.segment;
    let vif = *vif;
    let info = *unsafe {
        SEGMENTS.get(SegmentKey {
            generation,
            segment,
        })
    }?;
    Some(Vif {
        generation,
        ifindex,
        segment,
        vif,
        info,
    })
}

/// What a frame a VM sends may do.
#[inline(always)]
fn judge_ingress(
    frame: &impl Frame,
    vif: &Vif,
    p: &Packet,
    key: &mut ConnKey,
    frag: &mut FragKey,
) -> u8 {
    let guard = guard_source(vif, p);
    if guard != verdict::PASS {
        return guard;
    }
    learn_mac(&p.src_mac, vif.ifindex);
    if p.fragment == FRAGMENT_LATER {
        return later_fragment(p, frag);
    }
    let generation = vif.generation;
    let sender = vif.segment;

    // Address resolution: judged by the address it is about (see `resolution_about`).
    if p.kind == KIND_ARP || p.is_nd_neighbour() {
        let about = resolution_about(p);
        if management_address(generation, p.is_v4(), about) {
            return verdict::MANAGEMENT;
        }
        return match place(generation, p.is_v4(), about) {
            Place::Outside => verdict::PASS,
            Place::Segment(s) if s == sender => verdict::PASS,
            Place::Segment(s) => {
                if resolution_allowed(generation, sender, s, p) {
                    verdict::PASS
                } else {
                    cross(vif, s)
                }
            }
        };
    }
    // Router solicitations, and router advertisements and redirects the guard let
    // through: link-local control.
    if p.is_nd() {
        return verdict::PASS;
    }

    if management(generation, p) {
        return verdict::MANAGEMENT;
    }
    let target = place(generation, p.is_v4(), &p.dst);
    if target == Place::Segment(sender) {
        return verdict::PASS;
    }
    if tracked(frame, p, key, generation) {
        return verdict::PASS;
    }
    match target {
        Place::Segment(s) => {
            if exposed(generation, p) || flow(generation, sender, s, p) {
                track(p, key, vif, direction::INGRESS);
                verdict::PASS
            } else {
                cross(vif, s)
            }
        }
        Place::Outside => {
            if p.is_dhcp_client() || p.is_mld() {
                return verdict::PASS;
            }
            // Addressed at layer 2 to a VM (link-local and other addresses outside every
            // segment): judged as traffic to that VM's segment.
            if let Place::Segment(s) = mac_place(generation, &p.dst_mac) {
                return if s == sender {
                    verdict::PASS
                } else {
                    cross(vif, s)
                };
            }
            if vif.info.flags & SegmentInfo::EGRESS_ALLOW != 0 {
                track(p, key, vif, direction::INGRESS);
                verdict::PASS
            } else {
                verdict::EGRESS_DENIED
            }
        }
    }
}

/// What may be delivered to a VM.
#[inline(always)]
fn judge_egress(
    frame: &impl Frame,
    vif: &Vif,
    p: &Packet,
    key: &mut ConnKey,
    frag: &mut FragKey,
) -> u8 {
    if p.fragment == FRAGMENT_LATER {
        return later_fragment(p, frag);
    }
    let generation = vif.generation;
    let receiver = vif.segment;
    let source = source_place(generation, p);
    if source == Place::Segment(receiver) {
        return verdict::PASS;
    }

    // Address resolution from another segment: only about this segment, and only for
    // what it may reach here or between segments joined by a flow. From outside every
    // segment (routers, the host): allowed.
    if p.kind == KIND_ARP || p.is_nd() {
        let Place::Segment(s) = source else {
            return verdict::PASS;
        };
        if (p.kind == KIND_ARP || p.is_nd_neighbour())
            && place(generation, p.is_v4(), resolution_about(p)) == Place::Segment(receiver)
            && resolution_allowed(generation, s, receiver, p)
        {
            return verdict::PASS;
        }
        return cross(vif, s);
    }
    // A unicast packet for an address outside this segment is not for this VM, however
    // it got its MAC: no connection or exposure of another place applies here.
    if p.is_unicast_routable() && place(generation, p.is_v4(), &p.dst) != Place::Segment(receiver) {
        return match source {
            Place::Segment(s) => cross(vif, s),
            Place::Outside => verdict::NOT_EXPOSED,
        };
    }
    // Link-local housekeeping from routers and the host: DHCP answers, multicast
    // listener queries and reports.
    if source == Place::Outside && (p.is_dhcp_server() || p.is_mld()) {
        return verdict::PASS;
    }
    if tracked(frame, p, key, generation) {
        return verdict::PASS;
    }
    if exposed(generation, p) {
        track(p, key, vif, direction::EGRESS);
        return verdict::PASS;
    }
    match source {
        Place::Segment(s) => {
            if flow(generation, s, receiver, p) {
                track(p, key, vif, direction::EGRESS);
                verdict::PASS
            } else {
                cross(vif, s)
            }
        }
        Place::Outside => verdict::NOT_EXPOSED,
    }
}

/// The address an ARP or neighbour discovery frame concerns on the receiving side: the
/// ARP target address (a request asks for it; a reply is sent to it), the target of a
/// neighbour solicitation, and the destination of a neighbour advertisement (whose
/// target is the sender's own address).
#[inline(always)]
fn resolution_about(p: &Packet) -> &[u8; 16] {
    if p.kind == KIND_ARP {
        &p.dst
    } else if p.icmp_type == 135 {
        &p.nd_target
    } else {
        &p.dst
    }
}

/// Address resolution between segments `from` and `to` is allowed when a flow joins
/// them (either direction) or it asks for an exposed address. An exposed sender may
/// answer (ARP reply, neighbour advertisement) and refresh what it already knows
/// (requests sent unicast, as neighbour-cache probes are), but not discover: a
/// broadcast or multicast request from it about another segment is refused, or any VM
/// with an exposed address could map the host at layer 2.
#[inline(always)]
fn resolution_allowed(generation: u32, from: u32, to: u32, p: &Packet) -> bool {
    if neighbours(generation, from, to) || exposed_any(generation, p.is_v4(), resolution_about(p)) {
        return true;
    }
    let answer = if p.kind == KIND_ARP {
        p.arp_op == 2
    } else {
        p.icmp_type == 136
    };
    let unicast = p.dst_mac[0] & 1 == 0;
    (answer || unicast)
        && (exposed_any(generation, p.is_v4(), &p.src)
            || (p.icmp_type == 136 && exposed_any(generation, p.is_v4(), &p.nd_target)))
}

/// The address is in a management prefix protected for every protocol: not even its
/// existence may be learned from a VM.
#[inline(always)]
fn management_address(generation: u32, v4: bool, addr: &[u8; 16]) -> bool {
    match lpm_lookup(&MANAGEMENT_V4, &MANAGEMENT_V6, generation, v4, addr) {
        Some(rules) => rules.flags & RuleSet::ALL != 0,
        None => false,
    }
}

/// A VM may only speak as itself (invariant I2): its declared MAC, addresses it owns,
/// ARP and neighbour discovery only about itself, no router or DHCP server messages
/// unless its segment allows them.
#[inline(always)]
fn guard_source(vif: &Vif, p: &Packet) -> u8 {
    if vif.vif.flags & VifInfo::HAS_MAC != 0 {
        if p.src_mac != vif.vif.mac {
            return verdict::SPOOFED_MAC;
        }
    } else if mac_declared_by_another(vif, &p.src_mac) {
        return verdict::SPOOFED_MAC;
    }
    if p.kind == KIND_ARP {
        // ARP probes (sender 0.0.0.0) announce nothing.
        let probe = p.src[12..].iter().all(|b| *b == 0);
        if p.arp_sha != p.src_mac || (!probe && !owns(vif, true, &p.src)) {
            return verdict::ARP_SPOOF;
        }
        return verdict::PASS;
    }
    if p.source_unspecified() {
        if !p.unspecified_source_allowed() {
            return verdict::SPOOFED_IP;
        }
    } else if !owns(vif, p.kind == KIND_IPV4, &p.src) {
        return verdict::SPOOFED_IP;
    }
    if p.is_nd_neighbour() {
        if p.nd_lladdr_foreign {
            return verdict::ND_SPOOF;
        }
        // An advertisement speaks for its target: it must be the VM's own address.
        if p.icmp_type == 136 && !owns(vif, false, &p.nd_target) {
            return verdict::ND_SPOOF;
        }
    }
    if p.is_router_message() && vif.info.flags & SegmentInfo::ALLOW_RA == 0 {
        return verdict::RA_GUARD;
    }
    if p.is_dhcp_server_message() && vif.info.flags & SegmentInfo::ALLOW_DHCP_SERVER == 0 {
        return verdict::DHCP_GUARD;
    }
    verdict::PASS
}

/// A MAC another interface declared: reserved for it.
#[inline(always)]
fn mac_declared_by_another(vif: &Vif, mac: &[u8; 6]) -> bool {
    let key = DeclaredMacKey {
        generation: vif.generation,
        mac: *mac,
        _pad: [0; 2],
    };
    if vif.vif.flags & VifInfo::OTHERS_DECLARED_MACS == 0 {
        return false;
    }
    match unsafe { DECLARED_MACS.get(key) } {
        Some(owner) => *owner != vif.ifindex,
        None => false,
    }
}

/// An address another interface declared: reserved for it.
#[inline(always)]
fn address_declared_by_another(vif: &Vif, v4: bool, addr: &[u8; 16]) -> bool {
    if vif.vif.flags & VifInfo::OTHERS_DECLARED_ADDRESSES == 0 {
        return false;
    }
    match lpm_lookup(&DECLARED_V4, &DECLARED_V6, vif.generation, v4, addr) {
        Some(owner) => *owner != vif.ifindex,
        None => false,
    }
}

#[inline(always)]
fn link_local(addr: &[u8; 16]) -> bool {
    addr[0] == 0xfe && addr[1] & 0xc0 == 0x80
}

/// Whether the VM behind `vif` owns `addr`: one of its declared addresses, or, when it
/// declared none, an address of its segment. IPv6 link-local addresses are its own
/// unless it declared its link-local addresses.
#[inline(always)]
fn owns(vif: &Vif, v4: bool, addr: &[u8; 16]) -> bool {
    let declared = if !v4 && link_local(addr) {
        VifInfo::HAS_LINK_LOCAL
    } else {
        VifInfo::HAS_ADDRESSES
    };
    if vif.vif.flags & declared == 0 {
        return (declared == VifInfo::HAS_LINK_LOCAL
            || place(vif.generation, v4, addr) == Place::Segment(vif.segment))
            && !address_declared_by_another(vif, v4, addr);
    }
    let generation = vif.generation.to_be_bytes();
    let ifindex = vif.ifindex.to_be_bytes();
    if v4 {
        let key = Key::new(
            VIF_PREFIX_BITS + 32,
            VifAddrV4Key {
                generation,
                ifindex,
                addr: [addr[12], addr[13], addr[14], addr[15]],
            },
        );
        VIF_ADDRS_V4.get(&key).is_some()
    } else {
        let key = Key::new(
            VIF_PREFIX_BITS + 128,
            VifAddrV6Key {
                generation,
                ifindex,
                addr: *addr,
            },
        );
        VIF_ADDRS_V6.get(&key).is_some()
    }
}

/// `cross_segment` or `cross_tenant` for traffic between the vif's own segment and
/// segment `other` (either direction): the vif's tenant is already known.
#[inline(always)]
fn cross(vif: &Vif, other: u32) -> u8 {
    match unsafe {
        SEGMENTS.get(SegmentKey {
            generation: vif.generation,
            segment: other,
        })
    } {
        Some(o) if o.tenant == vif.info.tenant => verdict::CROSS_SEGMENT,
        Some(_) => verdict::CROSS_TENANT,
        None => verdict::NO_POLICY,
    }
}

/// The segment an address belongs to.
#[inline(always)]
fn place(generation: u32, v4: bool, addr: &[u8; 16]) -> Place {
    match lpm_lookup(&PREFIXES_V4, &PREFIXES_V6, generation, v4, addr) {
        Some(segment) => Place::Segment(*segment),
        None => Place::Outside,
    }
}

/// Where a delivered frame comes from: the segment of its source address, else the
/// segment of the vif its source MAC was last seen on (link-local and unspecified
/// sources), else outside.
#[inline(always)]
fn source_place(generation: u32, p: &Packet) -> Place {
    let by_address = place(generation, p.is_v4(), &p.src);
    if by_address != Place::Outside {
        return by_address;
    }
    mac_place(generation, &p.src_mac)
}

/// The segment of the vif a unicast MAC was last seen sending on, else outside.
#[inline(always)]
fn mac_place(generation: u32, mac: &[u8; 6]) -> Place {
    if mac[0] & 1 != 0 {
        return Place::Outside;
    }
    let key = MacKey {
        addr: *mac,
        _pad: [0; 2],
    };
    let Some(ifindex) = (unsafe { MAC_VIFS.get(key) }) else {
        return Place::Outside;
    };
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
fn learn_mac(mac: &[u8; 6], ifindex: u32) {
    // Group addresses are never a sender's.
    if mac[0] & 1 != 0 {
        return;
    }
    let key = MacKey {
        addr: *mac,
        _pad: [0; 2],
    };
    match unsafe { MAC_VIFS.get(key) } {
        Some(known) if *known == ifindex => {}
        _ => {
            let _ = MAC_VIFS.insert(key, ifindex, 0);
        }
    }
}

/// Whether any rule of `rules` admits the packet.
#[inline(always)]
fn admits(rules: &RuleSet, p: &Packet) -> bool {
    let class = if p.is_icmp() {
        protocol::ICMP
    } else {
        p.protocol
    };
    let has_ports = p.has_ports && (p.protocol == IPPROTO_TCP || p.protocol == IPPROTO_UDP);
    rules.admits(class, if has_ports { Some(p.dst_port) } else { None })
}

/// Longest-prefix lookup of `addr` (IPv4-mapped for IPv4) under `generation` in the
/// map pair of its family.
#[inline(always)]
fn lpm_lookup<'a, V>(
    v4map: &'a LpmTrie<Ipv4PrefixKey, V>,
    v6map: &'a LpmTrie<Ipv6PrefixKey, V>,
    generation: u32,
    v4: bool,
    addr: &[u8; 16],
) -> Option<&'a V> {
    let g = generation.to_be_bytes();
    if v4 {
        let key = Key::new(
            GENERATION_PREFIX_BITS + 32,
            Ipv4PrefixKey {
                generation: g,
                addr: [addr[12], addr[13], addr[14], addr[15]],
            },
        );
        v4map.get(&key)
    } else {
        let key = Key::new(
            GENERATION_PREFIX_BITS + 128,
            Ipv6PrefixKey {
                generation: g,
                addr: *addr,
            },
        );
        v6map.get(&key)
    }
}

/// The destination is a management address for this protocol and port.
#[inline(always)]
fn management(generation: u32, p: &Packet) -> bool {
    match lpm_lookup(
        &MANAGEMENT_V4,
        &MANAGEMENT_V6,
        generation,
        p.is_v4(),
        &p.dst,
    ) {
        Some(rules) => admits(rules, p),
        None => false,
    }
}

/// The destination is an exposed endpoint for this protocol and port.
#[inline(always)]
fn exposed(generation: u32, p: &Packet) -> bool {
    match lpm_lookup(&EXPOSED_V4, &EXPOSED_V6, generation, p.is_v4(), &p.dst) {
        Some(rules) => admits(rules, p),
        None => false,
    }
}

/// The address is exposed for some service (address resolution may reach it).
#[inline(always)]
fn exposed_any(generation: u32, v4: bool, addr: &[u8; 16]) -> bool {
    lpm_lookup(&EXPOSED_V4, &EXPOSED_V6, generation, v4, addr).is_some()
}

/// A flow from segment `from` to segment `to` admits the packet.
#[inline(always)]
fn flow(generation: u32, from: u32, to: u32, p: &Packet) -> bool {
    match unsafe {
        FLOWS.get(PairKey {
            generation,
            from,
            to,
        })
    } {
        Some(rules) => admits(rules, p),
        None => false,
    }
}

/// A flow joins the two segments in one direction or the other.
#[inline(always)]
fn neighbours(generation: u32, a: u32, b: u32) -> bool {
    unsafe {
        NEIGHBOURS
            .get(PairKey {
                generation,
                from: a,
                to: b,
            })
            .is_some()
    }
}

#[inline(always)]
fn count_event(event: u32) {
    if let Some(c) = CONNTRACK_EVENTS.get_ptr_mut(event) {
        unsafe { *c += 1 };
    }
}

/// Opens a tracked connection if the packet opens one (TCP SYN, UDP, ICMP echo request),
/// recording where it was judged (for the daemon's re-check against a new policy).
#[inline(always)]
fn track(p: &Packet, key: &mut ConnKey, vif: &Vif, direction: u8) {
    if !p.opens_connection() {
        return;
    }
    if !p.forward_key(key) {
        return;
    }
    let state = ConnState {
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
        state: conntrack::NEW,
        direction,
        _pad: [0; 2],
        ifindex: vif.ifindex,
    };
    let inserted = CONNTRACK.insert(&*key, state, BPF_NOEXIST).is_ok();
    if inserted {
        count_event(conntrack::EVENT_CREATED);
    }
}

/// Whether the packet belongs to a tracked connection (either direction, or an ICMP
/// error about one); updates the connection's state.
#[inline(always)]
fn tracked(frame: &impl Frame, p: &Packet, key: &mut ConnKey, generation: u32) -> bool {
    let Some(settings) = SETTINGS.get(generation) else {
        return false;
    };
    let now = unsafe { bpf_ktime_get_ns() };
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
        if key.protocol == IPPROTO_TCP || key.protocol == IPPROTO_UDP {
            core::mem::swap(&mut key.src_port, &mut key.dst_port);
        }
        return live(key, settings, now);
    }
    false
}

#[inline(always)]
fn timeout(state: &ConnState, protocol: u8, settings: &Settings) -> u64 {
    match protocol {
        IPPROTO_TCP => {
            if state.state == conntrack::ESTABLISHED {
                settings.tcp_idle_ns
            } else {
                settings.tcp_closing_ns
            }
        }
        IPPROTO_UDP => settings.udp_idle_ns,
        _ => settings.icmp_idle_ns,
    }
}

/// Whether `key` is a live connection (without changing it).
#[inline(always)]
fn live(key: &ConnKey, settings: &Settings, now: u64) -> bool {
    match unsafe { CONNTRACK.get(key) } {
        Some(state) => {
            now.saturating_sub(state.last_seen_ns) <= timeout(state, key.protocol, settings)
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
    let state = unsafe { &mut *state };
    if now.saturating_sub(state.last_seen_ns) > timeout(state, key.protocol, settings) {
        let _ = CONNTRACK.remove(key);
        count_event(conntrack::EVENT_EXPIRED);
        return false;
    }
    if p.protocol == IPPROTO_TCP && p.tcp_flags & TCP_RST != 0 {
        let _ = CONNTRACK.remove(key);
        count_event(conntrack::EVENT_CLOSED);
        return true;
    }
    state.last_seen_ns = now;
    if p.protocol == IPPROTO_TCP && p.tcp_flags & TCP_FIN != 0 {
        state.state = conntrack::CLOSING;
    } else if reply && state.state == conntrack::NEW {
        state.state = conntrack::ESTABLISHED;
    }
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
