//! Where addresses lie and what the policy's rules admit: one classification of an
//! address (its segment and tenant, management, exposure, the host, gateways, the
//! interface that declared it), the services of rule sets, flows between segments.

use isolator_common::{
    AddrClass, AddrV4Key, AddrV6Key, GatewayKey, PairInfo, PairKey, PrefixLengths, RuleKey,
    RuleSet, SegmentInfo, VifInfo, address_tag, inside_bit_v4, inside_bit_v6, limits, protocol,
    unmapped,
};

use crate::maps::{ADDRESSES_V4, ADDRESSES_V6, CLASSES, GATEWAYS, PAIRS, PREFIX_LENGTHS, RULESETS};
use crate::packet::Packet;
use crate::proto::ip;
use crate::vif::Vif;

/// A segment, with its tenant.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub id: u32,
    pub tenant: u32,
}

/// Where an address lies.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Segment(Segment),
    Outside,
}

impl Place {
    /// The address lies in segment `id`.
    #[inline(always)]
    pub fn is(&self, id: u32) -> bool {
        matches!(self, Place::Segment(s) if s.id == id)
    }
}

/// What the policy says about one address: its entry in `ADDRESSES_V4`/`_V6` (the
/// longest matching prefix, which carries the longest match of every kind), or nothing
/// ([`AddrClass::OUTSIDE`]), as [`classify`] left it in its slot of [`CLASSES`]. Only the
/// slot is carried around (nothing to keep on the 512-byte stack across calls); the
/// classification is read from it when asked.
#[derive(Clone, Copy)]
pub struct Class {
    slot: u32,
}

impl Class {
    #[inline(always)]
    fn get(&self) -> Option<&'static AddrClass> {
        CLASSES.get(self.slot)
    }

    #[inline(always)]
    fn flags(&self) -> u32 {
        match self.get() {
            Some(c) => c.flags,
            None => 0,
        }
    }

    /// The segment the address lies in.
    #[inline(always)]
    pub fn place(&self) -> Place {
        match self.get() {
            Some(c) if c.segment != AddrClass::NO_SEGMENT => Place::Segment(Segment {
                id: c.segment,
                tenant: c.tenant,
            }),
            _ => Place::Outside,
        }
    }

    /// The packet (to this address) is for a service a management prefix protects.
    #[inline(always)]
    pub fn management(&self, generation: u32, p: &Packet) -> bool {
        match self.get() {
            Some(c) if c.flags & AddrClass::MANAGEMENT != 0 => {
                c.flags & AddrClass::MANAGEMENT_ALL != 0 || rules_admit(generation, c.management, p)
            }
            _ => false,
        }
    }

    /// The address is in a management prefix protected for every protocol: not even its
    /// existence may be learned from a VM.
    #[inline(always)]
    pub fn management_all(&self) -> bool {
        self.flags() & AddrClass::MANAGEMENT_ALL != 0
    }

    /// The packet (to this address) is for a service the address exposes.
    #[inline(always)]
    pub fn exposed(&self, generation: u32, p: &Packet) -> bool {
        match self.get() {
            Some(c) if c.flags & AddrClass::EXPOSED != 0 => rules_admit(generation, c.exposure, p),
            _ => false,
        }
    }

    /// The packet, sent from this address, answers one to a service the address exposes
    /// (judged by the packet's source port).
    #[inline(always)]
    pub fn exposed_reply(&self, generation: u32, p: &Packet) -> bool {
        match self.get() {
            Some(c) if c.flags & AddrClass::EXPOSED != 0 => {
                reply_admitted(generation, c.exposure, p)
            }
            _ => false,
        }
    }

    /// A management prefix protects `service` (protocol class, port) at this address.
    #[inline(always)]
    pub fn management_of(&self, generation: u32, service: Service) -> bool {
        match self.get() {
            Some(c) if c.flags & AddrClass::MANAGEMENT != 0 => {
                c.flags & AddrClass::MANAGEMENT_ALL != 0
                    || service_admitted(generation, c.management, service)
            }
            _ => false,
        }
    }

    /// The address exposes `service`.
    #[inline(always)]
    pub fn exposes(&self, generation: u32, service: Service) -> bool {
        match self.get() {
            Some(c) if c.flags & AddrClass::EXPOSED != 0 => {
                service_admitted(generation, c.exposure, service)
            }
            _ => false,
        }
    }

    /// The address is exposed for some service (address resolution may reach it).
    #[inline(always)]
    pub fn exposed_any(&self) -> bool {
        self.flags() & AddrClass::EXPOSED != 0
    }

    /// One of the host's own addresses.
    #[inline(always)]
    pub fn host(&self) -> bool {
        self.flags() & AddrClass::HOST != 0
    }

    /// A gateway address of some segment.
    #[inline(always)]
    pub fn gateway_of_some_segment(&self) -> bool {
        self.flags() & AddrClass::GATEWAY != 0
    }

    /// The interface (ifindex) that declared the address as its own, or 0 (no interface
    /// has ifindex 0). A plain integer rather than an `Option`: the compiler may leave an
    /// absent `Option`'s payload register unset, which the verifier refuses to see read.
    #[inline(always)]
    pub fn declared_by(&self) -> u32 {
        match self.get() {
            Some(c) if c.flags & AddrClass::DECLARED != 0 => c.owner,
            _ => 0,
        }
    }
}

/// Keeps, in the source and destination slots, the classes of the frame's IPv4 source
/// and destination addresses that the vif's entry tells ([`VifInfo::home_class_of`]):
/// the classes the probe would find, without its lookups. Says which it kept, a bit per
/// slot ([`known`]).
#[inline(always)]
pub fn keep_home(entry: &VifInfo, p: &Packet) -> u32 {
    if !p.is_v4() {
        return 0;
    }
    let mut kept = 0;
    if let Some(class) = entry.home_class_of(unmapped(&p.src))
        && let Some(out) = CLASSES.get_ptr_mut(slot::SOURCE)
    {
        copy_class(out, class);
        kept |= known::SOURCE;
    }
    if let Some(class) = entry.home_class_of(unmapped(&p.dst))
        && let Some(out) = CLASSES.get_ptr_mut(slot::DESTINATION)
    {
        copy_class(out, class);
        kept |= known::DESTINATION;
    }
    kept
}

/// Which addresses [`keep_home`] classified.
pub mod known {
    pub const SOURCE: u32 = 1;
    pub const DESTINATION: u32 = 2;
}

/// The class of `addr` in `slot`: kept there already if `known` says so, else
/// classified now.
#[inline(always)]
pub fn classified(generation: u32, v4: bool, slot: u32, addr: &[u8; 16], kept: bool) -> Class {
    if kept {
        Class { slot }
    } else {
        classify(generation, v4, slot, addr)
    }
}

/// Where a classification is kept for the rest of a run ([`CLASSES`] slots): the source
/// and destination addresses are classified once, other addresses when asked.
pub mod slot {
    pub const SOURCE: u32 = 0;
    pub const DESTINATION: u32 = 1;
    /// The address an ARP or neighbour discovery frame concerns, when it is neither.
    pub const CONCERNED: u32 = 2;
    /// Read at once after classifying.
    pub const OTHER: u32 = 3;
}

/// Classifies `addr` (IPv4-mapped for IPv4) under `generation`, keeping the result in
/// `slot` of [`CLASSES`] for the rest of the run (until the slot is used again).
#[inline(always)]
pub fn classify(generation: u32, v4: bool, slot: u32, addr: &[u8; 16]) -> Class {
    let addr = addr as *const [u8; 16] as *const Address;
    isolator_classify(generation, u32::from(v4), slot, addr);
    Class { slot }
}

/// An address as [`isolator_classify`] takes it.
#[repr(C, align(8))]
pub struct Address {
    pub bytes: [u8; 16],
}

/// Probes the prefix lengths the policy uses, in the order `PREFIX_LENGTHS` gives, one
/// hash lookup each, until an entry of `ADDRESSES_V4`/`_V6` matches `addr` without the
/// mark `LONGER`, or with it but with `addr`'s bit clear in its `inside` filter (or the
/// lengths run out), and copies the longest match to `slot` of
/// [`CLASSES`] (else [`AddrClass::OUTSIDE`]): 1 if one matched, else 0. The cost depends
/// on the number of distinct lengths, not on the number of prefixes (docs/design.md,
/// "Classifying an address", which gives the orders and marks the compiler chooses).
///
/// A global BPF function: the verifier checks it once, on its own, rather than at every
/// call with every state the caller can be in (its loop would otherwise be walked again
/// for each of them).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn isolator_classify(
    generation: u32,
    v4: u32,
    slot: u32,
    addr: *const Address,
) -> u32 {
    let Some(out) = CLASSES.get_ptr_mut(slot) else {
        return 0;
    };
    // Nothing found (whatever the reason) is outside every prefix, never what the slot
    // held for the previous frame.
    copy_class(out, &AddrClass::OUTSIDE);
    if addr.is_null() {
        return 0;
    }
    // SAFETY: the verifier checked that the caller passes 16 readable bytes.
    let addr = unsafe { &(*addr).bytes };
    let Some(lengths) = PREFIX_LENGTHS.get(generation) else {
        return 0;
    };
    // A match without the mark is the longest; one with it is kept until a longer one
    // matches.
    let mut found = 0;
    if v4 != 0 {
        if let Some(class) = probe_v4(generation, lengths, unmapped(addr)) {
            copy_class(out, class);
            found = 1;
        }
    } else {
        let bit = inside_bit_v6(addr);
        let count = lengths.v6_count as usize;
        for i in 0..limits::MAX_PREFIX_LENGTHS {
            if i >= count {
                break;
            }
            let mask = &lengths.v6_masks[i];
            let mut key = AddrV6Key {
                tag: address_tag(generation, lengths.v6[i]),
                addr: [0; 16],
            };
            for j in 0..16 {
                key.addr[j] = addr[j] & mask[j];
            }
            // SAFETY: as above.
            if let Some(class) = unsafe { ADDRESSES_V6.get(&key) } {
                copy_class(out, class);
                found = 1;
                if class.flags & AddrClass::LONGER == 0 || class.inside & bit == 0 {
                    break;
                }
            }
        }
    }
    found
}

/// The class of IPv4 address `addr` in `ADDRESSES_V4` under `generation`, by the probe
/// of the lengths in use in the order `lengths` gives: the first match without the mark
/// of longer entries (or whose filter rules the address out), else the last match;
/// `None` when no entry holds it. The entry itself, where it lies: nothing is copied.
#[inline(always)]
pub fn probe_v4(
    generation: u32,
    lengths: &PrefixLengths,
    addr: [u8; 4],
) -> Option<&'static AddrClass> {
    let bit = inside_bit_v4(addr);
    let a = u32::from_ne_bytes(addr);
    let count = lengths.v4_count as usize;
    let mut found = None;
    // Lengths 0 to 32: no more than 33 probes to walk.
    for i in 0..33 {
        if i >= count {
            break;
        }
        let key = AddrV4Key {
            tag: address_tag(generation, lengths.v4[i]),
            addr: (a & lengths.v4_masks[i]).to_ne_bytes(),
        };
        // SAFETY: the entry is only read, within this run.
        if let Some(class) = unsafe { ADDRESSES_V4.get(&key) } {
            found = Some(class);
            if class.flags & AddrClass::LONGER == 0 || class.inside & bit == 0 {
                break;
            }
        }
    }
    found
}

/// Copies a classification field by field (a plain copy becomes a byte loop in BPF, see
/// `packet::copy_bytes`); `inside` only steers the probing and is left out.
#[inline(always)]
pub fn copy_class(out: *mut AddrClass, class: &AddrClass) {
    // SAFETY: `out` is a per-CPU slot, valid for the whole run; no other run of these
    // programs interleaves on this CPU.
    unsafe {
        core::ptr::write_volatile(&mut (*out).segment, class.segment);
        core::ptr::write_volatile(&mut (*out).tenant, class.tenant);
        core::ptr::write_volatile(&mut (*out).flags, class.flags);
        core::ptr::write_volatile(&mut (*out).management, class.management);
        core::ptr::write_volatile(&mut (*out).exposure, class.exposure);
        core::ptr::write_volatile(&mut (*out).owner, class.owner);
    }
}

/// Whether the rule set at `index` admits the packet.
#[inline(always)]
fn rules_admit(generation: u32, index: u32, p: &Packet) -> bool {
    let (class, has_ports) = service_class(p);
    let port = if has_ports { Some(p.dst_port) } else { None };
    if let Some(admitted) = RuleSet::inline_admits(index, class, port) {
        return admitted;
    }
    // SAFETY: the rule set is read within this run.
    match unsafe { RULESETS.get(RuleKey { generation, index }) } {
        Some(rules) => admits(rules, p),
        None => false,
    }
}

/// A service as rule sets judge it: the protocol class (one of `protocol`, ICMP for both
/// families) and the destination port, if the protocol has ports.
#[derive(Clone, Copy)]
pub struct Service {
    pub class: u8,
    pub port: Option<u16>,
}

/// A service's port as the global functions below take it: `NO_PORT` for none.
const NO_PORT: u32 = u32::MAX;

impl Service {
    #[inline(always)]
    fn port_word(&self) -> u32 {
        match self.port {
            Some(port) => u32::from(port),
            None => NO_PORT,
        }
    }
}

/// Whether the rule set at `index` admits `service`.
#[inline(always)]
fn service_admitted(generation: u32, index: u32, service: Service) -> bool {
    set_admits(generation, index, service.class, service.port)
}

/// Whether the rule set at `index` admits a packet of protocol class `class` to `port`:
/// told by an inline id ([`RuleSet::inline_admits`]) without a lookup, else by
/// [`isolator_rules_admit`].
#[inline(always)]
pub fn set_admits(generation: u32, index: u32, class: u8, port: Option<u16>) -> bool {
    match RuleSet::inline_admits(index, class, port) {
        Some(admitted) => admitted,
        None => {
            let word = match port {
                Some(port) => u32::from(port),
                None => NO_PORT,
            };
            isolator_rules_admit(generation, index, u32::from(class), word) != 0
        }
    }
}

/// [`service_admitted`] as a global BPF function, verified once (the re-judging of
/// connections after a swap asks it in many places).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn isolator_rules_admit(generation: u32, index: u32, class: u32, port: u32) -> u32 {
    // SAFETY: the rule set is read within this run.
    match unsafe { RULESETS.get(RuleKey { generation, index }) } {
        Some(rules) => u32::from(rules.admits(class as u8, port_of(port))),
        None => 0,
    }
}

#[inline(always)]
fn port_of(word: u32) -> Option<u16> {
    if word == NO_PORT {
        None
    } else {
        Some(word as u16)
    }
}

/// Whether `addr` (classified `class`) is a gateway of `segment` that serves `service`:
/// `Some(admitted)`, or `None` when it is no gateway of the segment.
#[inline(always)]
pub fn gateway_serves(
    generation: u32,
    segment: u32,
    addr: &[u8; 16],
    class: Class,
    service: Service,
) -> Option<bool> {
    if !class.gateway_of_some_segment() {
        return None;
    }
    let addr = addr as *const [u8; 16] as *const Address;
    match isolator_gateway_serves(
        generation,
        segment,
        u32::from(service.class),
        service.port_word(),
        addr,
    ) {
        0 => None,
        1 => Some(false),
        _ => Some(true),
    }
}

/// [`gateway_serves`] as a global BPF function: 0 no gateway of the segment, 1 a gateway
/// that does not serve the service, 2 one that does.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn isolator_gateway_serves(
    generation: u32,
    segment: u32,
    class: u32,
    port: u32,
    addr: *const Address,
) -> u32 {
    if addr.is_null() {
        return 0;
    }
    let key = GatewayKey {
        generation,
        segment,
        // SAFETY: the verifier checked that the caller passes 16 readable bytes.
        addr: unsafe { (*addr).bytes },
    };
    // SAFETY: the rule set is read within this run.
    match unsafe { GATEWAYS.get(key) } {
        Some(rules) if rules.admits(class as u8, port_of(port)) => 2,
        Some(_) => 1,
        None => 0,
    }
}

/// A flow from segment `from` to segment `to` admits `service`.
#[inline(always)]
pub fn flow_admits(generation: u32, from: u32, to: u32, service: Service) -> bool {
    match pair(generation, from, to) {
        Some(pair) if pair.flags & PairInfo::FLOW != 0 => {
            service_admitted(generation, pair.flow, service)
        }
        _ => false,
    }
}

/// Whether the rule set at `index` admits the service the packet answers (its source port
/// taken as the service's).
#[inline(always)]
fn reply_admitted(generation: u32, index: u32, p: &Packet) -> bool {
    let (class, has_ports) = service_class(p);
    let port = if has_ports { Some(p.src_port) } else { None };
    if let Some(admitted) = RuleSet::inline_admits(index, class, port) {
        return admitted;
    }
    // SAFETY: the rule set is read within this run.
    match unsafe { RULESETS.get(RuleKey { generation, index }) } {
        Some(rules) => admits_reply(rules, p),
        None => false,
    }
}

/// Whether any rule of `rules` admits the service whose answer the packet may be.
#[inline(never)]
fn admits_reply(rules: &RuleSet, p: &Packet) -> bool {
    let class = if p.is_icmp() {
        protocol::ICMP
    } else {
        p.protocol
    };
    let has_ports = p.has_ports && (p.protocol == ip::TCP || p.protocol == ip::UDP);
    rules.admits(class, if has_ports { Some(p.src_port) } else { None })
}

/// Whether a packet from segment `from` to segment `to` (`src` and `dst` classify its
/// addresses) may belong to a connection the policy admits, in either direction: opened
/// by its sender (a flow `from` → `to`, or an exposure of its destination, admits its
/// service) or answering one its receiver opened (a flow `to` → `from`, or an exposure
/// of its source, admits the service its source port would be). ICMP errors are asked
/// about too: they may come from another address than the connection's. When none
/// holds, no connection the policy admits can carry the packet, and the connection
/// tables need not be asked; nor is `PAIRS` when the segments belong to different
/// tenants (`other_tenant` is the other segment's) and the vif's segment has no flow to
/// or from another tenant's.
#[inline(never)]
pub fn connection_possible(vif: &Vif, from: u32, to: u32, p: &Packet, other_tenant: u32) -> bool {
    let generation = vif.generation;
    let (dst, src) = (
        Class {
            slot: slot::DESTINATION,
        },
        Class { slot: slot::SOURCE },
    );
    if p.is_icmp_error() || dst.exposed(generation, p) || src.exposed_reply(generation, p) {
        return true;
    }
    if other_tenant != vif.info.tenant && vif.info.flags & SegmentInfo::FOREIGN_NEIGHBOURS == 0 {
        return false;
    }
    pair_admits(generation, from, to, p, REPLIES)
}

/// Asks [`isolator_pair_admits`] about the packet.
#[inline(always)]
fn pair_admits(generation: u32, from: u32, to: u32, p: &Packet, replies: u32) -> bool {
    let (class, has_ports) = service_class(p);
    let (class_word, ports) = pair_service(class, has_ports, p.dst_port, p.src_port);
    isolator_pair_admits(generation, from, to, class_word | replies, ports) != 0
}

/// [`isolator_pair_admits`]'s class word (without [`REPLIES`]) and ports for a packet of
/// protocol class `class`, with or without ports.
#[inline(always)]
pub fn pair_service(class: u8, has_ports: bool, dst_port: u16, src_port: u16) -> (u32, u32) {
    let class_word = u32::from(class) | if has_ports { HAS_PORTS } else { 0 };
    (
        class_word,
        (u32::from(dst_port) << 16) | u32::from(src_port),
    )
}

/// In [`isolator_pair_admits`]'s class word: a reply in a flow `to` → `from` counts too.
pub const REPLIES: u32 = 1 << 9;

/// In [`isolator_pair_admits`]'s class word: the packet carries ports.
const HAS_PORTS: u32 = 1 << 8;

/// Whether a flow `from` → `to` admits a packet of protocol class `class_word & 0xff` to
/// destination port `ports >> 16`, or (with [`REPLIES`]) a flow `to` → `from` admits the
/// service its source port (`ports & 0xffff`) would be (the ports count only with
/// [`HAS_PORTS`]): 1 or 0.
/// One entry of `PAIRS` tells both directions' flows; a rule set is looked up only when
/// its summary does not rule the packet out. A global BPF function, verified once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn isolator_pair_admits(
    generation: u32,
    from: u32,
    to: u32,
    class_word: u32,
    ports: u32,
) -> u32 {
    let Some(pair) = pair(generation, from, to) else {
        return 0;
    };
    let class = class_word as u8;
    let has_ports = class_word & HAS_PORTS != 0;
    let (dst_port, src_port) = ((ports >> 16) as u16, ports as u16);
    let port = |port: u16| if has_ports { Some(port) } else { None };
    if pair.flags & PairInfo::FLOW != 0
        && pair.flow_summary.may_admit(class, port(dst_port))
        && set_admits(generation, pair.flow, class, port(dst_port))
    {
        return 1;
    }
    u32::from(
        class_word & REPLIES != 0
            && pair.flags & PairInfo::BACK != 0
            && pair.back_summary.may_admit(class, port(src_port))
            && set_admits(generation, pair.back, class, port(src_port)),
    )
}

/// The protocol class rule sets judge the packet by, and whether it carries ports they
/// judge (see [`admits`]).
#[inline(always)]
fn service_class(p: &Packet) -> (u8, bool) {
    let class = if p.is_icmp() {
        protocol::ICMP
    } else {
        p.protocol
    };
    let has_ports = p.has_ports && (p.protocol == ip::TCP || p.protocol == ip::UDP);
    (class, has_ports)
}

/// Whether any rule of `rules` admits the packet.
#[inline(never)]
pub fn admits(rules: &RuleSet, p: &Packet) -> bool {
    let class = if p.is_icmp() {
        protocol::ICMP
    } else {
        p.protocol
    };
    let has_ports = p.has_ports && (p.protocol == ip::TCP || p.protocol == ip::UDP);
    rules.admits(class, if has_ports { Some(p.dst_port) } else { None })
}

/// The pair's entry: a flow joins the two segments (in either direction).
#[inline(always)]
fn pair(generation: u32, from: u32, to: u32) -> Option<&'static PairInfo> {
    // SAFETY: the entry is read within this run.
    unsafe {
        PAIRS.get(PairKey {
            generation,
            from,
            to,
        })
    }
}

/// A flow from segment `from` to segment `to` admits the packet.
#[inline(always)]
pub fn flow(generation: u32, from: u32, to: u32, p: &Packet) -> bool {
    pair_admits(generation, from, to, p, 0)
}

/// A flow joins the two segments in one direction or the other.
#[inline(always)]
pub fn neighbours(generation: u32, a: u32, b: u32) -> bool {
    pair(generation, a, b).is_some()
}

/// The address is a gateway of `segment` (the host's or a router's address there).
#[inline(always)]
pub fn gateway(
    generation: u32,
    segment: u32,
    addr: &[u8; 16],
    class: Class,
) -> Option<&'static RuleSet> {
    if !class.gateway_of_some_segment() {
        return None;
    }
    let key = GatewayKey {
        generation,
        segment,
        addr: *addr,
    };
    // SAFETY: the rule set is read within this run.
    unsafe { GATEWAYS.get(key) }
}

/// What the policy says about a destination that is the host itself or a gateway.
pub enum HostVerdict {
    /// Neither: judged by the other rules.
    NotHost,
    /// A gateway of the sender's segment, for a service its VMs may use there.
    Service,
    /// The host (or a gateway) for anything else: `management`.
    Protected,
}

/// Whether the packet is for the host itself (one of its own addresses) or a gateway of
/// the sender's segment, and if so whether the service is one the segment may use.
#[inline(always)]
pub fn host(generation: u32, sender: u32, p: &Packet, dst: Class) -> HostVerdict {
    if let Some(rules) = gateway(generation, sender, &p.dst, dst) {
        return if admits(rules, p) {
            HostVerdict::Service
        } else {
            HostVerdict::Protected
        };
    }
    if dst.host() {
        HostVerdict::Protected
    } else {
        HostVerdict::NotHost
    }
}
