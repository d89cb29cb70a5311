//! Where addresses lie and what the policy's rules admit: segments by prefix, management
//! prefixes, the host and gateways, exposed endpoints, flows between segments.

use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};
use isolator_common::{
    AddrKey, GatewayKey, Ipv4PrefixKey, Ipv6PrefixKey, PairKey, RuleSet, protocol, unmapped,
};

use crate::maps::{
    EXPOSED_V4, EXPOSED_V6, FLOWS, GATEWAYS, HOST_ADDRS, MANAGEMENT_V4, MANAGEMENT_V6, NEIGHBOURS,
};
use crate::maps::{PREFIXES_V4, PREFIXES_V6};
use crate::packet::Packet;
use crate::proto::ip;

/// Where an address lies.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Segment(u32),
    Outside,
}

/// Longest-prefix lookup of `addr` (IPv4-mapped for IPv4) under `generation` in the map
/// pair of its family. A BPF subprogram: its two branches build keys of different sizes on
/// the stack, which inlined would never merge again and double what the verifier walks at
/// every lookup.
#[inline(never)]
pub fn lpm_lookup<'a, V>(
    v4map: &'a LpmTrie<Ipv4PrefixKey, V>,
    v6map: &'a LpmTrie<Ipv6PrefixKey, V>,
    generation: u32,
    v4: bool,
    addr: &[u8; 16],
) -> Option<&'a V> {
    if v4 {
        let (len, data) = Ipv4PrefixKey::address(generation, unmapped(addr));
        v4map.get(&Key::new(len, data))
    } else {
        let (len, data) = Ipv6PrefixKey::address(generation, *addr);
        v6map.get(&Key::new(len, data))
    }
}

/// The segment an address belongs to.
#[inline(always)]
pub fn place(generation: u32, v4: bool, addr: &[u8; 16]) -> Place {
    match lpm_lookup(&PREFIXES_V4, &PREFIXES_V6, generation, v4, addr) {
        Some(segment) => Place::Segment(*segment),
        None => Place::Outside,
    }
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

/// The destination is a management address for this protocol and port, or a loopback
/// address (which no frame on a link may carry).
#[inline(always)]
pub fn management(generation: u32, p: &Packet) -> bool {
    if p.dst_loopback() {
        return true;
    }
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

/// The address is in a management prefix protected for every protocol: not even its
/// existence may be learned from a VM.
#[inline(always)]
pub fn management_address(generation: u32, v4: bool, addr: &[u8; 16]) -> bool {
    match lpm_lookup(&MANAGEMENT_V4, &MANAGEMENT_V6, generation, v4, addr) {
        Some(rules) => rules.flags & RuleSet::ALL != 0,
        None => false,
    }
}

/// The destination is an exposed endpoint for this protocol and port.
#[inline(always)]
pub fn exposed(generation: u32, p: &Packet) -> bool {
    match lpm_lookup(&EXPOSED_V4, &EXPOSED_V6, generation, p.is_v4(), &p.dst) {
        Some(rules) => admits(rules, p),
        None => false,
    }
}

/// The address is exposed for some service (address resolution may reach it).
#[inline(always)]
pub fn exposed_any(generation: u32, v4: bool, addr: &[u8; 16]) -> bool {
    lpm_lookup(&EXPOSED_V4, &EXPOSED_V6, generation, v4, addr).is_some()
}

/// A flow from segment `from` to segment `to` admits the packet.
#[inline(always)]
pub fn flow(generation: u32, from: u32, to: u32, p: &Packet) -> bool {
    // SAFETY: the rule set is read at once, within this run.
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
pub fn neighbours(generation: u32, a: u32, b: u32) -> bool {
    // SAFETY: only the presence of the entry is read.
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

/// The address is a gateway of `segment` (the host's or a router's address there).
#[inline(always)]
pub fn gateway(generation: u32, segment: u32, addr: &[u8; 16]) -> Option<&'static RuleSet> {
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
/// the sender's segment, and if so whether the service is one the segment may use. A BPF
/// subprogram of its own.
#[inline(never)]
pub fn host(generation: u32, sender: u32, p: &Packet) -> HostVerdict {
    if let Some(rules) = gateway(generation, sender, &p.dst) {
        return if admits(rules, p) {
            HostVerdict::Service
        } else {
            HostVerdict::Protected
        };
    }
    if host_address(generation, &p.dst) {
        HostVerdict::Protected
    } else {
        HostVerdict::NotHost
    }
}

/// One of the host's own addresses.
#[inline(always)]
pub fn host_address(generation: u32, addr: &[u8; 16]) -> bool {
    let key = AddrKey {
        generation,
        addr: *addr,
    };
    // SAFETY: only the presence of the entry is read.
    unsafe { HOST_ADDRS.get(key) }.is_some()
}
