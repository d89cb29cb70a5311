//! Every map of the programs. Names, keys and values are defined in `isolator-common`
//! (one definition for both sides); docs/design.md ("Map layout") describes each.
//!
//! Policy maps (keys carry the generation) are written by the daemon and only read here;
//! state maps (counters, connections, fragments) are written here.

use aya_ebpf::{
    btf_maps::{HashOfMaps, LruHashMap as BtfLruHashMap},
    macros::{btf_map, map},
    maps::{Array, HashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use isolator_common::{
    AddrClass, AddrV4Key, AddrV6Key, ConnKey, ConnState, Counter, CounterBlock, CounterKey,
    DeclaredMacKey, EventKey, EventSettings, EventWindow, EventWindows, FragKey, FragState,
    GatewayKey, LinkInfo, PairInfo, PairKey, PrefixLengths, RuleKey, RuleSet, Settings,
    UNCOUNTED_SLOTS, UplinkKey, VifInfo, VifKey, VlanKey, conntrack, event, fault, limits,
};

use crate::packet::Packet;

// Policy maps.

#[map]
pub static CONFIG: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(2, 0);

#[map]
pub static VIFS: HashMap<VifKey, VifInfo> = HashMap::with_max_entries(2 * limits::MAX_VIFS, 0);

/// `VIFS`' entries of vifs with an ifindex below `limits::VIF_SLOTS`, by
/// `isolator_common::vif_slot`.
/// Vifs whose TC hooks are being handed over from a `cls_bpf` filter to TCX, by ifindex
/// (`isolator_common::maps::HANDOFF`), and how many there are.
#[map]
pub static HANDOFF: HashMap<u32, u32> = HashMap::with_max_entries(limits::MAX_VIFS, 0);

#[map]
pub static HANDOFF_COUNT: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static VIF_SLOTS: Array<VifInfo> = Array::with_max_entries(2 * limits::VIF_SLOTS, 0);

/// `BPF_F_NO_PREALLOC`: entries are allocated as they are added, so a map sized for the
/// largest policy costs only what the policy in force holds.
const NO_PREALLOC: u32 = 1;

// The sizes of these are placeholders: the daemon sets them at load time
// (`dataplane::Sizes`, from the policy or the command line).

#[map]
pub static ADDRESSES_V4: HashMap<AddrV4Key, AddrClass> = HashMap::with_max_entries(1, NO_PREALLOC);

#[map]
pub static ADDRESSES_V6: HashMap<AddrV6Key, AddrClass> = HashMap::with_max_entries(1, NO_PREALLOC);

#[map]
pub static PREFIX_LENGTHS: Array<PrefixLengths> = Array::with_max_entries(2, 0);

#[map]
pub static RULESETS: HashMap<RuleKey, RuleSet> = HashMap::with_max_entries(1, NO_PREALLOC);

#[map]
pub static PAIRS: HashMap<PairKey, PairInfo> = HashMap::with_max_entries(1, NO_PREALLOC);

#[map]
pub static DECLARED_MACS: HashMap<DeclaredMacKey, u32> =
    HashMap::with_max_entries(2 * limits::MAX_VIFS, 0);

#[map]
pub static VIF_VLANS: HashMap<VlanKey, u8> =
    HashMap::with_max_entries(2 * limits::MAX_VIF_VLANS, 0);

#[map]
pub static LINKS: HashMap<VifKey, LinkInfo> = HashMap::with_max_entries(2 * limits::MAX_LINKS, 0);

#[map]
pub static UPLINKS: HashMap<UplinkKey, u8> = HashMap::with_max_entries(2 * limits::MAX_UPLINKS, 0);

#[map]
pub static GATEWAYS: HashMap<GatewayKey, RuleSet> =
    HashMap::with_max_entries(2 * limits::MAX_GATEWAYS, 0);

// State maps.

/// A vif's established connections.
pub type ConnTable = BtfLruHashMap<ConnKey, ConnState, { limits::CONNECTIONS_PER_VIF as usize }>;
/// A vif's connections being opened.
pub type OpeningTable = BtfLruHashMap<ConnKey, ConnState, { limits::OPENING_PER_VIF as usize }>;
/// A vif's fragmented datagrams in flight.
pub type FragTable = BtfLruHashMap<FragKey, FragState, { limits::FRAGMENTS_PER_VIF as usize }>;

// Per-vif state, one table of each kind per vif (by ifindex), created by the daemon
// before the vif is attached: what a VM (or the outside talking to it) fills can only
// displace its own entries, never another tenant's.

#[btf_map]
pub static CONNTRACK: HashOfMaps<u32, ConnTable, { limits::MAX_VIFS as usize }> = HashOfMaps::new();

#[btf_map]
pub static CONNTRACK_OPENING: HashOfMaps<u32, OpeningTable, { limits::MAX_VIFS as usize }> =
    HashOfMaps::new();

#[btf_map]
pub static FRAGMENTS: HashOfMaps<u32, FragTable, { limits::MAX_VIFS as usize }> = HashOfMaps::new();

#[map]
pub static CONNTRACK_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(conntrack::EVENTS, 0);

#[map]
pub static COUNTERS: PerCpuHashMap<CounterKey, Counter> =
    PerCpuHashMap::with_max_entries(limits::MAX_COUNTERS, 0);

/// The counters of interfaces with a small ifindex, at the ifindex: an array slot instead
/// of `COUNTERS`' hash lookup on every frame (`crate::account`).
#[map]
pub static COUNTER_BLOCKS: PerCpuArray<CounterBlock> =
    PerCpuArray::with_max_entries(limits::COUNTER_BLOCKS, 0);

#[map]
pub static UNCOUNTED: PerCpuArray<Counter> = PerCpuArray::with_max_entries(UNCOUNTED_SLOTS, 0);

#[map]
pub static KERNEL_FAULTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(fault::KINDS, 0);

#[map]
pub static FAULTS_LOGGED: PerCpuArray<u64> = PerCpuArray::with_max_entries(fault::KINDS, 0);

/// Reports to userspace (`crate::events`): 256 KiB, some 3 600 reports.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
pub static EVENT_SETTINGS: Array<EventSettings> = Array::with_max_entries(1, 0);

#[map]
pub static EVENT_WINDOWS: LruPerCpuHashMap<EventKey, EventWindow> =
    LruPerCpuHashMap::with_max_entries(2 * limits::MAX_VIFS, 0);

/// The windows of interfaces with a small ifindex, at the ifindex (`crate::events`).
#[map]
pub static EVENT_WINDOW_SLOTS: PerCpuArray<EventWindows> =
    PerCpuArray::with_max_entries(limits::COUNTER_BLOCKS, 0);

#[map]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(event::lost::KINDS, 0);

/// Per-CPU: drops since the last one sampled for `isolator monitor`.
#[map]
pub static EVENT_SAMPLE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU classifications of the addresses of the frame being judged, by
/// [`crate::rules::slot`].
#[map]
pub static CLASSES: PerCpuArray<AddrClass> = PerCpuArray::with_max_entries(4, 0);

/// Per-CPU: whether the connection the tracker just found was admitted under an earlier
/// policy (`conntrack::found_stale`).
#[map]
pub static STALE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU working memory: the parsed packet and keys to build lookups in (they do not fit
/// on the 512-byte BPF stack beside the rest).
#[repr(C)]
pub struct Scratch {
    pub packet: Packet,
    pub key: ConnKey,
    pub frag: FragKey,
    /// Faults recorded and not reported yet, a bit per [`isolator_common::fault`] kind
    /// (reported at a program's exit, `faults::flush`).
    pub faults: u32,
    pub _pad: u32,
    /// Copies of vif entries (`crate::vif::lookup`): the vif the program runs on, and
    /// the vif a delivered frame came from.
    pub vifs: [VifInfo; 2],
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// `BPF_NOEXIST`: insert only if the key is absent.
pub const BPF_NOEXIST: u64 = 1;

/// This CPU's scratch space. The packet still holds the previous frame's fields
/// ([`Packet::reset`] clears them); the faults are those recorded since the last
/// program exit that reported them (`faults::flush`).
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    let s = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU array slot, valid for the whole run. XDP and TC run with bottom
    // halves disabled, so no other run of these programs interleaves on this CPU.
    Some(unsafe { &mut *s })
}
