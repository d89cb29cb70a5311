//! Kernel side of isolator: the XDP program on the host side of every vif.
//!
//! It reads like the policy: parse, identify the sender, classify the destination,
//! decide, account. Every exit goes through [`account`], so the verdict and the
//! counters can never disagree.
#![no_std]
#![no_main]

use core::mem;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{
        Array, HashMap, LpmTrie, PerCpuHashMap,
        lpm_trie::Key,
    },
    programs::XdpContext,
};
use isolator_common::{
    Counter, CounterKey, GENERATION_PREFIX_BITS, Ipv4PrefixKey, Ipv6PrefixKey, SegmentInfo,
    SegmentKey, VifInfo, VifKey, direction, limits, verdict,
};
use network_types::{
    arp::ArpHdr,
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

#[map]
static CONFIG: Array<u32> = Array::with_max_entries(1, 0);

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
static COUNTERS: PerCpuHashMap<CounterKey, Counter> =
    PerCpuHashMap::with_max_entries(limits::MAX_COUNTERS, 0);

/// ARP for IPv4 over Ethernet: hardware type 1, protocol 0x0800, lengths 6 and 4.
const ARP_HTYPE_ETHERNET: [u8; 2] = [0, 1];
const ARP_PTYPE_IPV4: [u8; 2] = [0x08, 0x00];

#[xdp]
pub fn isolator_ingress(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let code = judge_ingress(&ctx, ifindex);
    account(&ctx, ifindex, direction::INGRESS, code)
}

/// The single accounting exit: counts the packet under its verdict and turns the
/// verdict into an XDP action. Anything but `PASS` drops.
#[inline(always)]
fn account(ctx: &XdpContext, ifindex: u32, dir: u8, code: u8) -> u32 {
    let key = CounterKey {
        ifindex,
        direction: dir,
        verdict: code,
        _pad: [0; 2],
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    match COUNTERS.get_ptr_mut(key) {
        Some(counter) => unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        },
        None => {
            let first = Counter { packets: 1, bytes };
            // Another CPU may have created the key meanwhile: then count on ours.
            if COUNTERS.insert(key, first, 1 /* BPF_NOEXIST */).is_err()
                && let Some(counter) = COUNTERS.get_ptr_mut(key)
            {
                unsafe {
                    (*counter).packets += 1;
                    (*counter).bytes += bytes;
                }
            }
        }
    }
    if code == verdict::PASS {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

/// Where a destination address lies.
enum Destination {
    /// Inside the prefixes of this segment.
    Segment(u32),
    /// Outside every segment.
    Outside,
}

/// Decides the fate of a frame sent by the VM behind `ifindex`.
#[inline(always)]
fn judge_ingress(ctx: &XdpContext, ifindex: u32) -> u8 {
    // Identify the sender: its vif, segment and tenant in the active generation.
    let generation = match CONFIG.get(0) {
        Some(g) => *g,
        None => return verdict::NO_POLICY,
    };
    let vif = match unsafe { VIFS.get(VifKey { generation, ifindex }) } {
        Some(v) => v.segment,
        None => return verdict::NO_POLICY,
    };
    let tenant = match tenant_of(generation, vif) {
        Some(t) => t,
        None => return verdict::NO_POLICY,
    };

    // Parse and classify the destination.
    let destination = match classify_destination(ctx, generation) {
        Ok(d) => d,
        Err(code) => return code,
    };

    // Decide.
    match destination {
        Destination::Outside => verdict::PASS,
        Destination::Segment(segment) if segment == vif => verdict::PASS,
        Destination::Segment(segment) => match tenant_of(generation, segment) {
            Some(t) if t == tenant => verdict::CROSS_SEGMENT,
            Some(_) => verdict::CROSS_TENANT,
            None => verdict::NO_POLICY,
        },
    }
}

#[inline(always)]
fn tenant_of(generation: u32, segment: u32) -> Option<u32> {
    unsafe { SEGMENTS.get(SegmentKey { generation, segment }) }.map(|s| s.tenant)
}

/// Parses the frame far enough to find its destination address and looks that up.
#[inline(always)]
fn classify_destination(ctx: &XdpContext, generation: u32) -> Result<Destination, u8> {
    let eth: *const EthHdr = ptr_at(ctx, 0).map_err(|()| verdict::MALFORMED)?;
    let gen_bytes = generation.to_be_bytes();
    match unsafe { (*eth).ether_type() } {
        Ok(EtherType::Ipv4) => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).map_err(|()| verdict::MALFORMED)?;
            let ip = unsafe { &*ip };
            let header_len = ip.ihl() as usize;
            if ip.version() != 4
                || header_len < Ipv4Hdr::LEN
                || ctx.data() + EthHdr::LEN + header_len > ctx.data_end()
            {
                return Err(verdict::MALFORMED);
            }
            Ok(lookup_v4(gen_bytes, ip.dst_addr))
        }
        Ok(EtherType::Ipv6) => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, EthHdr::LEN).map_err(|()| verdict::MALFORMED)?;
            let ip = unsafe { &*ip };
            if ip.version() != 6 {
                return Err(verdict::MALFORMED);
            }
            let key = Key::new(
                GENERATION_PREFIX_BITS + 128,
                Ipv6PrefixKey {
                    generation: gen_bytes,
                    addr: ip.dst_addr,
                },
            );
            Ok(match PREFIXES_V6.get(&key) {
                Some(segment) => Destination::Segment(*segment),
                None => Destination::Outside,
            })
        }
        Ok(EtherType::Arp) => {
            let arp: *const ArpHdr = ptr_at(ctx, EthHdr::LEN).map_err(|()| verdict::MALFORMED)?;
            let arp = unsafe { &*arp };
            if arp.htype != ARP_HTYPE_ETHERNET
                || arp.ptype != ARP_PTYPE_IPV4
                || arp.hlen != 6
                || arp.plen != 4
            {
                return Err(verdict::MALFORMED);
            }
            Ok(lookup_v4(gen_bytes, arp.tpa))
        }
        _ => Err(verdict::UNKNOWN_ETHERTYPE),
    }
}

#[inline(always)]
fn lookup_v4(generation: [u8; 4], addr: [u8; 4]) -> Destination {
    let key = Key::new(
        GENERATION_PREFIX_BITS + 32,
        Ipv4PrefixKey { generation, addr },
    );
    match PREFIXES_V4.get(&key) {
        Some(segment) => Destination::Segment(*segment),
        None => Destination::Outside,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
