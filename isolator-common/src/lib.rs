//! Types shared by the kernel programs and the userspace daemon.
//!
//! Everything here is `#[repr(C)]`, made of plain integers and byte arrays, with
//! explicit padding, so that both sides agree on the bytes of every map key and value.
//! The map layout and the all-or-nothing policy swap are described in `docs/design.md`.
#![no_std]

/// Names of the maps in the eBPF object (userspace looks them up by these names).
pub mod maps {
    /// `Array<u32>` of one entry: the active policy generation (0 or 1).
    pub const CONFIG: &str = "CONFIG";
    /// `HashMap<VifKey, VifInfo>`: which segment a vif (by ifindex) belongs to.
    pub const VIFS: &str = "VIFS";
    /// `Array<VifInfo>`: the same entries for vifs whose ifindex is below
    /// [`limits::VIF_SLOTS`](crate::limits::VIF_SLOTS), at [`vif_slot`](crate::vif_slot):
    /// the programs find those without a hash lookup.
    pub const VIF_SLOTS: &str = "VIF_SLOTS";
    /// `HashMap<AddrV4Key, AddrClass>`: what the policy says about an IPv4 address, by
    /// prefix: one entry per prefix of the policy (segments, management, exposures,
    /// declared addresses) and per address of the host and the gateways, each carrying
    /// the longest match of every kind (docs/design.md, "Classifying an address").
    pub const ADDRESSES_V4: &str = "ADDRESSES_V4";
    /// `HashMap<AddrV6Key, AddrClass>`: the same for IPv6.
    pub const ADDRESSES_V6: &str = "ADDRESSES_V6";
    /// `Array<PrefixLengths>` of two entries, indexed by generation: the prefix lengths
    /// `ADDRESSES_V4`/`_V6` hold, in the order a lookup probes them.
    pub const PREFIX_LENGTHS: &str = "PREFIX_LENGTHS";
    /// `HashMap<RuleKey, RuleSet>`: the services of management prefixes, exposures and
    /// flows, stored once per distinct set and referred to by index.
    pub const RULESETS: &str = "RULESETS";
    /// `PerCpuHashMap<CounterKey, Counter>`: packets and bytes per (vif, direction, verdict),
    /// for what [`COUNTER_BLOCKS`] does not count.
    pub const COUNTERS: &str = "COUNTERS";
    /// `PerCpuArray<CounterBlock>` of [`limits::COUNTER_BLOCKS`](crate::limits::COUNTER_BLOCKS)
    /// entries: the counters of an interface whose ifindex is below that, at its ifindex,
    /// by [`counter_block_index`](crate::counter_block_index) (direction, verdict).
    /// Frames audit mode passed are counted in `COUNTERS` only.
    pub const COUNTER_BLOCKS: &str = "COUNTER_BLOCKS";
    /// `Array<Settings>` of two entries, indexed by generation.
    pub const SETTINGS: &str = "SETTINGS";
    /// `HashMap<PairKey, PairInfo>`: segment pairs joined by a flow (in either
    /// direction), with the services the flow from `from` to `to` allows.
    pub const PAIRS: &str = "PAIRS";
    /// `HashOfMaps<u32, LruHashMap<ConnKey, ConnState>>`: each vif's (by ifindex)
    /// established connections.
    pub const CONNTRACK: &str = "CONNTRACK";
    /// `HashOfMaps<u32, LruHashMap<ConnKey, ConnState>>`: each vif's connections being
    /// opened.
    pub const CONNTRACK_OPENING: &str = "CONNTRACK_OPENING";
    /// `PerCpuArray<u64>`: connection tracking events, indexed by [`conntrack`] event.
    pub const CONNTRACK_EVENTS: &str = "CONNTRACK_EVENTS";
    /// `HashMap<VlanKey, u8>`: VLAN ids a vif may tag its frames with.
    pub const VIF_VLANS: &str = "VIF_VLANS";
    /// `HashMap<DeclaredMacKey, u32>`: every declared MAC and the vif (ifindex) that
    /// declared it; no other vif may send with it.
    pub const DECLARED_MACS: &str = "DECLARED_MACS";
    /// `HashOfMaps<u32, LruHashMap<FragKey, FragState>>`: each vif's fragmented
    /// datagrams whose first fragment it passed.
    pub const FRAGMENTS: &str = "FRAGMENTS";
    /// `HashMap<VifKey, LinkInfo>`: every link of the host that is not an attached vif
    /// (bridges, uplinks, the loopback device): frames entering through one of them come
    /// from outside every segment, or, for a trusted uplink, from the segment its source
    /// address lies in if `UPLINKS` trusts it for that segment.
    pub const LINKS: &str = "LINKS";
    /// `HashMap<UplinkKey, u8>`: (uplink, segment) pairs the policy trusts.
    pub const UPLINKS: &str = "UPLINKS";
    /// `HashMap<GatewayKey, RuleSet>`: gateway addresses of each segment and the services
    /// its VMs may use there.
    pub const GATEWAYS: &str = "GATEWAYS";
    /// `PerCpuArray<u64>`: what the kernel could not record, indexed by [`fault`](crate::fault).
    pub const KERNEL_FAULTS: &str = "KERNEL_FAULTS";
    /// `PerCpuArray<u64>`: when each fault was last logged (rate limit).
    pub const FAULTS_LOGGED: &str = "FAULTS_LOGGED";
    /// `PerCpuArray<Counter>`: frames judged while `COUNTERS` was full, counted by
    /// [`uncounted_index`](crate::uncounted_index) (direction, verdict, audit flag) only.
    pub const UNCOUNTED: &str = "UNCOUNTED";
    /// The ring buffer of aya-log records (the kernel's diagnostics).
    pub const AYA_LOGS: &str = "AYA_LOGS";
    /// `RingBuf` of [`Event`](crate::Event)s: attempts to reach management, and sampled
    /// drops while someone runs `isolator monitor`.
    pub const EVENTS: &str = "EVENTS";
    /// `Array<EventSettings>` of one entry: what the programs report, and how often.
    pub const EVENT_SETTINGS: &str = "EVENT_SETTINGS";
    /// `LruPerCpuHashMap<EventKey, EventWindow>`: each interface's reports of each kind
    /// in the current second (the rate limit).
    pub const EVENT_WINDOWS: &str = "EVENT_WINDOWS";
    /// `PerCpuArray<EventWindows>` of [`limits::COUNTER_BLOCKS`](crate::limits::COUNTER_BLOCKS)
    /// entries: the windows of interfaces with an ifindex below that, at the ifindex (an
    /// array slot where `EVENT_WINDOWS` costs a hash lookup).
    pub const EVENT_WINDOW_SLOTS: &str = "EVENT_WINDOW_SLOTS";
    /// `PerCpuArray<u64>`: reports not made, by [`event::lost`](crate::event::lost).
    pub const EVENTS_LOST: &str = "EVENTS_LOST";
    /// `PerCpuArray<u32>` of one entry: drops since the last one sampled.
    pub const EVENT_SAMPLE: &str = "EVENT_SAMPLE";
    /// `HashMap<u32, u32>` of [`limits::MAX_VIFS`](crate::limits::MAX_VIFS) entries, by
    /// ifindex: vifs whose TC hooks are being handed from the first, quick attachment (a
    /// `cls_bpf` filter) to the lasting one (TCX). On them a TC program ends the hook's
    /// chain where it passes a frame, so that the other attachment does not judge it again
    /// (docs/design.md, "A new vif's first attachment"). Not pinned: each daemon's own.
    pub const HANDOFF: &str = "HANDOFF";
    /// `Array<u32>` of one entry: how many entries `HANDOFF` has; while 0, the programs do
    /// not look it up.
    pub const HANDOFF_COUNT: &str = "HANDOFF_COUNT";
}

/// What the programs report through `EVENTS` (docs/design.md, "Events").
pub mod event {
    /// A VM's packet to a management prefix (or the host) was dropped (or, in audit
    /// mode, passed): always reported, at most `management_rate` a second per interface
    /// and CPU.
    pub const MANAGEMENT: u8 = 1;
    /// A sampled drop, while `monitor_every` is set (someone runs `isolator monitor`).
    pub const DROP: u8 = 2;
    /// [`Event::flags`]: the addresses are IPv4 (mapped).
    pub const V4: u8 = 1;
    /// [`Event::flags`]: audit mode passed the packet.
    pub const AUDITED: u8 = 2;
    /// [`Event::flags`]: the protocol has ports.
    pub const PORTS: u8 = 4;
    /// Why a report was not made: indexes of `EVENTS_LOST`.
    pub mod lost {
        /// The interface's budget for the second was spent.
        pub const RATE_LIMITED: u32 = 0;
        /// The ring buffer was full (userspace behind).
        pub const RING_FULL: u32 = 1;
        pub const KINDS: u32 = 2;
        pub const NAMES: [&str; KINDS as usize] = ["rate_limited", "ring_full"];
    }
    /// Nanoseconds of one rate-limit window.
    pub const WINDOW_NS: u64 = 1_000_000_000;
}

/// One report in `EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub time_ns: u64,
    pub ifindex: u32,
    /// One of [`event::MANAGEMENT`], [`event::DROP`].
    pub kind: u8,
    /// One of [`direction`].
    pub direction: u8,
    /// One of [`verdict`].
    pub verdict: u8,
    /// The IP protocol number (0 when not IP).
    pub protocol: u8,
    /// IPv4-mapped for IPv4.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// [`event::V4`], [`event::AUDITED`], [`event::PORTS`].
    pub flags: u8,
    pub _pad: [u8; 3],
    /// Reports of this kind on this interface (and CPU) not made since the previous one.
    pub suppressed: u32,
    pub _pad2: u32,
}

/// Value of `EVENT_SETTINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventSettings {
    /// 0: no drop is reported but management attempts; N: one drop in N is.
    pub monitor_every: u32,
    /// Sampled drops reported per interface, CPU and second, at most.
    pub monitor_rate: u32,
    /// Management attempts reported per interface, CPU and second, at most.
    pub management_rate: u32,
    pub _pad: u32,
}

/// Key of `EVENT_WINDOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventKey {
    pub ifindex: u32,
    /// One of the [`event`] kinds.
    pub kind: u32,
}

/// Value of `EVENT_WINDOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventWindow {
    /// When the current window began (`CLOCK_MONOTONIC_COARSE` ns).
    pub start_ns: u64,
    /// Reports made in it.
    pub count: u32,
    /// Reports not made since the last one that was.
    pub suppressed: u32,
}

/// Value of `EVENT_WINDOW_SLOTS`: one interface's windows, by [`event`] kind
/// ([`EventWindows::index`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventWindows {
    pub windows: [EventWindow; 2],
}

impl EventWindows {
    /// The index of [`event`] kind `kind`'s window.
    #[inline(always)]
    pub const fn index(kind: u8) -> usize {
        (kind as usize).wrapping_sub(1) & 1
    }
}

/// What the kernel could not record: each is counted in `KERNEL_FAULTS` and logged (at
/// most once per 10 s per CPU) through aya-log. Never on the common path.
pub mod fault {
    /// `COUNTERS` was full: a frame was counted by direction and reason only (`UNCOUNTED`).
    pub const COUNTER_MAP_FULL: u32 = 0;
    /// A connection could not be recorded (its vif had no table, or the insert failed):
    /// its replies will be judged as new traffic.
    pub const CONNECTION_UNRECORDED: u32 = 1;
    /// A first fragment could not be recorded: its later fragments will drop.
    pub const FRAGMENT_UNRECORDED: u32 = 2;
    /// Number of fault kinds.
    pub const KINDS: u32 = 3;
    /// The `what` label of each fault kind, by index.
    pub const NAMES: [&str; KINDS as usize] = [
        "counter_map_full",
        "connection_unrecorded",
        "fragment_unrecorded",
    ];
}

/// Index in `UNCOUNTED` of a (direction, verdict, audit flag).
#[inline(always)]
pub const fn uncounted_index(direction: u8, verdict: u8, audited: bool) -> u32 {
    (direction as u32 & 1) << 6 | (audited as u32) << 5 | (verdict as u32 & 0x1f)
}

/// Entries of `UNCOUNTED`: two directions × audit flag × 32 verdict codes.
pub const UNCOUNTED_SLOTS: u32 = 128;

/// Index in a [`CounterBlock`] of a (direction, verdict).
#[inline(always)]
pub const fn counter_block_index(direction: u8, verdict: u8) -> usize {
    (direction as usize & 1) << 5 | (verdict as usize & 0x1f)
}

/// Counters in a [`CounterBlock`]: two directions × 32 verdict codes.
pub const COUNTER_BLOCK_LEN: usize = 64;

/// Value of the `COUNTER_BLOCKS` map: one interface's counters by
/// [`counter_block_index`] (one per CPU; userspace sums them). An array slot, so the
/// programs count a frame without the hash lookup `COUNTERS` costs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterBlock {
    pub counters: [Counter; COUNTER_BLOCK_LEN],
}

impl Default for CounterBlock {
    fn default() -> Self {
        CounterBlock {
            counters: [Counter::default(); COUNTER_BLOCK_LEN],
        }
    }
}

/// What one `UNCOUNTED` slot counted, summed over CPUs (userspace's view).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uncounted {
    /// One of [`direction`].
    pub direction: u8,
    /// One of [`verdict`].
    pub verdict: u8,
    /// Passed by audit mode.
    pub audited: bool,
    pub frames: Counter,
}

/// Version of the map layout (keys, values, sizes, and what their numbers mean). Pinned
/// maps live in a directory named after it, so that a daemon never reuses maps of another
/// layout; bump it with any change to the types below, to a map's definition, or to how
/// ids are given (7: segment, tenant and rule set ids follow from names and rules, not
/// from places, so a connection's `peer` recorded under 6 names another segment).
pub const STATE_LAYOUT: u32 = 7;

/// Program names in the eBPF object.
pub mod programs {
    /// XDP program attached to the host side of each vif (direction ingress).
    pub const XDP_INGRESS: &str = "isolator_ingress";
    /// TC program attached to the egress of each vif (direction egress).
    pub const TC_EGRESS: &str = "isolator_egress";
    /// TC program on the ingress of each vif, after the XDP program: judges the VLAN tag
    /// a frame carries in offload metadata (`skb->vlan_tci`), which XDP cannot see.
    pub const TC_INGRESS_TAGS: &str = "isolator_tags";
    /// TC program that judges what a VM sends on its vif's ingress, in place of the XDP
    /// program and the tags program, where another program holds the vif's XDP hook.
    pub const TC_INGRESS_JUDGE: &str = "isolator_ingress_tc";
    /// XDP program that passes everything: the benchmark baseline, never attached.
    pub const XDP_BASELINE: &str = "isolator_baseline";
}

/// Capacity of the maps. A generation-keyed map holds two generations at once during a
/// swap, so its capacity is twice the number of objects a single policy may hold.
pub mod limits {
    /// Vifs in one policy generation.
    pub const MAX_VIFS: u32 = 8192;
    /// Ifindexes below this have their vif's entry in `VIF_SLOTS` too (per generation).
    pub const VIF_SLOTS: u32 = 16384;
    /// Segments in one policy generation (segment ids are numbered from 0).
    pub const MAX_SEGMENTS: u32 = 1 << 24;
    /// Distinct (vif, direction, verdict) counter keys.
    pub const MAX_COUNTERS: u32 = 65536;
    /// Interfaces with an ifindex below this are counted in `COUNTER_BLOCKS` (an array,
    /// one block at each ifindex) rather than in `COUNTERS` (a hash). 1 KiB per CPU each.
    pub const COUNTER_BLOCKS: u32 = 1024;
    /// Distinct prefix lengths `ADDRESSES_V4` or `ADDRESSES_V6` may hold in one
    /// generation: an address lookup probes at most this many (IPv4 has 33 at most).
    pub const MAX_PREFIX_LENGTHS: usize = 40;
    /// Services in one rule set (one exposed prefix, one flow pair, one management prefix).
    pub const MAX_RULES: usize = 16;
    /// Established connections per vif (the vif's own table: what one VM, or the outside
    /// talking to it, can fill is its own); the least recently used is evicted when full.
    pub const CONNECTIONS_PER_VIF: u32 = 4096;
    /// Connections being opened per vif, in a table of their own so that half-open ones
    /// (a SYN flood) never displace established ones.
    pub const OPENING_PER_VIF: u32 = 1024;
    /// Links of the host that are not attached vifs, in one generation.
    pub const MAX_LINKS: u32 = 8192;
    /// Trusted (uplink, segment) pairs in one generation, in maps of the smallest size
    /// (the daemon sizes `UPLINKS` for the host's policy: `Sizes` in the user crate).
    pub const MAX_UPLINKS: u32 = 8192;
    /// Addresses of the host itself in one generation.
    pub const MAX_HOST_ADDRS: u32 = 4096;
    /// Gateway addresses (all segments together) in one generation, in maps of the
    /// smallest size (the daemon sizes `GATEWAYS` for the policy: `Sizes` in the user
    /// crate).
    pub const MAX_GATEWAYS: u32 = 8192;
    /// Allowed (vif, VLAN) pairs in one generation.
    pub const MAX_VIF_VLANS: u32 = 16384;
    /// Fragmented datagrams in flight per vif.
    pub const FRAGMENTS_PER_VIF: u32 = 256;
}

/// Direction of a packet relative to the VM.
pub mod direction {
    /// From the VM into the host (XDP on the vif).
    pub const INGRESS: u8 = 0;
    /// From the host to the VM (TC egress on the vif).
    pub const EGRESS: u8 = 1;

    /// Label value for a direction, as exported in metrics.
    pub const fn name(direction: u8) -> Option<&'static str> {
        match direction {
            INGRESS => Some("ingress"),
            EGRESS => Some("egress"),
            _ => None,
        }
    }
}

pub mod verdict;
pub use verdict::Verdict;

/// Key of the `VIFS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VifKey {
    /// Policy generation this entry belongs to.
    pub generation: u32,
    pub ifindex: u32,
}

/// Value of the `VIFS` map (and of `VIF_SLOTS`, where all zeroes, the default, is an
/// empty slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VifInfo {
    pub segment: u32,
    /// [`VifInfo::HAS_MAC`], [`VifInfo::HAS_ADDRESSES`].
    pub flags: u32,
    /// The declared MAC (when [`VifInfo::HAS_MAC`]).
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// The segment's tenant and settings (one lookup tells the programs everything about
    /// the vif).
    pub info: SegmentInfo,
    /// With [`VifInfo::HAS_HOME`]: the IPv4 prefix the vif's frames come from (its first
    /// declared IPv4 address or prefix, else its segment's first IPv4 prefix), as the 4
    /// bytes of the network address, and its mask (the bytes in network order read as a
    /// native integer, as in [`PrefixLengths::v4_masks`]).
    pub home: [u8; 4],
    pub home_mask: u32,
    /// The entry of `ADDRESSES_V4` for `home`, under the same generation: an address in
    /// `home` that no longer entry inside holds (not [`AddrClass::LONGER`], or its bit
    /// clear in `inside`) has this class, which spares the programs the lookups of the
    /// frame's source.
    pub home_class: AddrClass,
}

impl VifInfo {
    /// The interface declared the only MAC it may send from.
    pub const HAS_MAC: u32 = 1;
    /// The interface declared the only addresses it may send from (`ADDRESSES_*` entries
    /// with it as their owner); otherwise its segment's prefixes apply.
    pub const HAS_ADDRESSES: u32 = 2;
    /// The interface declared its IPv6 link-local addresses; otherwise any link-local
    /// source is its own.
    pub const HAS_LINK_LOCAL: u32 = 4;
    /// Other interfaces declared MACs (`DECLARED_MACS`) this one must not use. Without
    /// it (nothing declared anywhere) the lookup is skipped.
    pub const OTHERS_DECLARED_MACS: u32 = 8;
    /// Other interfaces declared addresses (`ADDRESSES_*` owners) this one must not use.
    pub const OTHERS_DECLARED_ADDRESSES: u32 = 16;
    /// The interface looks like a VM's but is not enforceable as one (the policy does not
    /// classify it, or its link kind is not supported): everything it sends and everything
    /// sent to it is dropped (`unknown_interface`). Its `segment` means nothing.
    pub const QUARANTINED: u32 = 32;
    /// `home` and `home_class` hold an entry of `ADDRESSES_V4`.
    pub const HAS_HOME: u32 = 64;
    /// Set in every entry: an empty slot of `VIF_SLOTS` (all zeroes) is no vif.
    pub const PRESENT: u32 = 128;

    /// The class of IPv4 address `addr` (4 bytes in network order) if the vif's home
    /// entry tells it: `addr` lies in `home` and no longer entry inside holds it. The
    /// class is then the one the probe would find (the longest entry holding `addr`).
    #[inline(always)]
    pub fn home_class_of(&self, addr: [u8; 4]) -> Option<&AddrClass> {
        let class = &self.home_class;
        (self.flags & VifInfo::HAS_HOME != 0
            && u32::from_ne_bytes(addr) & self.home_mask == u32::from_ne_bytes(self.home)
            && (class.flags & AddrClass::LONGER == 0 || class.inside & inside_bit_v4(addr) == 0))
            .then_some(class)
    }
}

/// The index of `ifindex`'s entry in `VIF_SLOTS` under `generation` (0 or 1), if it has
/// one there.
#[inline(always)]
pub fn vif_slot(generation: u32, ifindex: u32) -> Option<u32> {
    (ifindex < limits::VIF_SLOTS && generation < 2)
        .then_some(generation * limits::VIF_SLOTS + ifindex)
}

/// Value of the `LINKS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// [`LinkInfo::UPLINK`].
    pub flags: u32,
}

impl LinkInfo {
    /// The policy trusts this link for some segments (see `UPLINKS`).
    pub const UPLINK: u32 = 1;
}

/// Key of the `UPLINKS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UplinkKey {
    pub generation: u32,
    pub ifindex: u32,
    pub segment: u32,
}

/// Key of the `GATEWAYS` map: a gateway address of a segment (IPv4-mapped for IPv4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GatewayKey {
    pub generation: u32,
    pub segment: u32,
    pub addr: [u8; 16],
}

/// A segment's tenant and settings (part of [`VifInfo`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentInfo {
    pub tenant: u32,
    /// [`SegmentInfo::EGRESS_ALLOW`], [`SegmentInfo::AUDIT`], ...
    pub flags: u32,
    /// The summaries of every flow from the segment to another, united: a packet it rules
    /// out is admitted by no flow from the segment (the programs then need not look up
    /// the segment pair).
    pub flows_out: Summary,
    /// The same of every flow from another segment to this one: a packet whose source
    /// port it rules out answers no connection such a flow admits.
    pub flows_in: Summary,
}

impl SegmentInfo {
    /// The segment's VMs may send to destinations outside every segment.
    pub const EGRESS_ALLOW: u32 = 1;
    /// The segment is in audit mode: auditable drops are counted and passed.
    pub const AUDIT: u32 = 2;
    /// The segment's VMs may send router advertisements and redirects.
    pub const ALLOW_RA: u32 = 4;
    /// The segment's VMs may send DHCP and DHCPv6 server messages.
    pub const ALLOW_DHCP_SERVER: u32 = 8;
    /// A flow joins the segment to a segment of another tenant (in either direction):
    /// without it, no `PAIRS` entry joins it to any, and the programs need not look.
    pub const FOREIGN_NEIGHBOURS: u32 = 16;
}

/// Key of the `ADDRESSES_V4` map: a prefix of one length under one generation, the
/// address masked to the length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrV4Key {
    /// [`address_tag`]: generation and prefix length.
    pub tag: u32,
    /// Network byte order, bits beyond the prefix length zero.
    pub addr: [u8; 4],
}

/// Key of the `ADDRESSES_V6` map (see [`AddrV4Key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrV6Key {
    pub tag: u32,
    pub addr: [u8; 16],
}

/// The `tag` of an address key: the generation and the prefix length in one word.
#[inline(always)]
pub const fn address_tag(generation: u32, len: u8) -> u32 {
    generation << 8 | len as u32
}

/// `addr` with the bits beyond the first `len` cleared.
#[inline(always)]
pub const fn mask_v4(addr: [u8; 4], len: u8) -> [u8; 4] {
    let mask = if len == 0 {
        0
    } else if len >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - len as u32)
    };
    (u32::from_be_bytes(addr) & mask).to_be_bytes()
}

/// `addr` with the bits beyond the first `len` cleared.
#[inline(always)]
pub const fn mask_v6(addr: [u8; 16], len: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let start = (i * 8) as u32;
        let len = len as u32;
        out[i] = if len >= start + 8 {
            addr[i]
        } else if len <= start {
            0
        } else {
            addr[i] & (0xffu8 << (8 - (len - start)))
        };
        i += 1;
    }
    out
}

impl AddrV4Key {
    /// The entry of prefix `addr/len` under `generation`.
    #[inline(always)]
    pub const fn new(generation: u32, addr: [u8; 4], len: u8) -> Self {
        AddrV4Key {
            tag: address_tag(generation, len),
            addr: mask_v4(addr, len),
        }
    }

    /// The prefix length this key is for.
    pub const fn prefix_len(&self) -> u8 {
        (self.tag & 0xff) as u8
    }
}

impl AddrV6Key {
    /// The entry of prefix `addr/len` under `generation`.
    #[inline(always)]
    pub const fn new(generation: u32, addr: [u8; 16], len: u8) -> Self {
        AddrV6Key {
            tag: address_tag(generation, len),
            addr: mask_v6(addr, len),
        }
    }

    /// The prefix length this key is for.
    pub const fn prefix_len(&self) -> u8 {
        (self.tag & 0xff) as u8
    }
}

/// Value of the `ADDRESSES_*` maps: what the policy says about every address whose
/// longest matching entry this is. Each kind of fact (the segment, management, exposure,
/// the declaring interface) is the one of that kind's longest prefix containing this
/// entry's, so one lookup answers every question the programs ask about an address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrClass {
    /// The segment the address lies in, or [`AddrClass::NO_SEGMENT`].
    pub segment: u32,
    /// That segment's tenant.
    pub tenant: u32,
    /// [`AddrClass::MANAGEMENT`] and the other flags.
    pub flags: u32,
    /// Index of the management rule set in `RULESETS` (with [`AddrClass::MANAGEMENT`]).
    pub management: u32,
    /// Index of the exposed services in `RULESETS` (with [`AddrClass::EXPOSED`]).
    pub exposure: u32,
    /// The vif (ifindex) that declared the address (with [`AddrClass::DECLARED`]).
    pub owner: u32,
    /// With [`AddrClass::LONGER`]: a filter of the addresses the longer entries inside
    /// cover, a bit each ([`inside_bit_v4`], [`inside_bit_v6`]). A lookup that matched this
    /// entry probes the longer lengths only if the address's bit is set: a clear bit
    /// proves that no longer entry holds the address.
    pub inside: u64,
}

/// The bit of an [`AddrClass::inside`] filter an IPv4 address falls on (a fold of its
/// last three bytes: addresses next to each other fall on different bits).
#[inline(always)]
pub fn inside_bit_v4(addr: [u8; 4]) -> u64 {
    let x = addr[3] ^ addr[2].rotate_left(3) ^ addr[1].rotate_left(5);
    1u64 << (x & 63)
}

/// The bit of an [`AddrClass::inside`] filter an IPv6 address falls on (a fold of its
/// interface identifier).
#[inline(always)]
pub fn inside_bit_v6(addr: &[u8; 16]) -> u64 {
    let x = addr[15]
        ^ addr[14].rotate_left(3)
        ^ addr[13].rotate_left(5)
        ^ addr[12].rotate_left(1)
        ^ addr[11].rotate_left(4)
        ^ addr[10].rotate_left(2)
        ^ addr[9].rotate_left(6)
        ^ addr[8].rotate_left(7);
    1u64 << (x & 63)
}

impl AddrClass {
    /// `segment` of an address outside every segment.
    pub const NO_SEGMENT: u32 = u32::MAX;
    /// In a management prefix (services in `management`).
    pub const MANAGEMENT: u32 = 1;
    /// In a management prefix protected for every protocol and port.
    pub const MANAGEMENT_ALL: u32 = 2;
    /// An exposed endpoint (services in `exposure`).
    pub const EXPOSED: u32 = 4;
    /// One of the host's own addresses.
    pub const HOST: u32 = 8;
    /// A gateway address of some segment (`GATEWAYS` says which and for what).
    pub const GATEWAY: u32 = 16;
    /// Declared by an interface (`owner`) as its own.
    pub const DECLARED: u32 = 32;
    /// Some longer entry lies inside this one's prefix: a lookup that matched this one
    /// probes the longer lengths too, if the address's bit is set in `inside`.
    pub const LONGER: u32 = 64;

    /// An address the policy says nothing about.
    pub const OUTSIDE: AddrClass = AddrClass {
        segment: Self::NO_SEGMENT,
        tenant: 0,
        flags: 0,
        management: 0,
        exposure: 0,
        owner: 0,
        inside: 0,
    };
}

/// Value of the `PREFIX_LENGTHS` map: the prefix lengths each address map holds under
/// one generation, in the order the programs probe them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixLengths {
    pub v4_count: u32,
    pub v6_count: u32,
    pub v4: [u8; limits::MAX_PREFIX_LENGTHS],
    pub v6: [u8; limits::MAX_PREFIX_LENGTHS],
    /// The mask of each IPv4 length, as the 4 bytes of an address in network order read
    /// as a native integer (the programs mask without swapping bytes).
    pub v4_masks: [u32; limits::MAX_PREFIX_LENGTHS],
    /// The mask of each IPv6 length.
    pub v6_masks: [[u8; 16]; limits::MAX_PREFIX_LENGTHS],
}

impl Default for PrefixLengths {
    fn default() -> Self {
        PrefixLengths {
            v4_count: 0,
            v6_count: 0,
            v4: [0; limits::MAX_PREFIX_LENGTHS],
            v6: [0; limits::MAX_PREFIX_LENGTHS],
            v4_masks: [0; limits::MAX_PREFIX_LENGTHS],
            v6_masks: [[0; 16]; limits::MAX_PREFIX_LENGTHS],
        }
    }
}

impl PrefixLengths {
    /// The lengths given (each family's in probing order; at most
    /// [`limits::MAX_PREFIX_LENGTHS`] each, more are ignored) with their masks.
    pub fn new(v4: &[u8], v6: &[u8]) -> Self {
        let mut out = PrefixLengths::default();
        for (i, len) in v4.iter().take(limits::MAX_PREFIX_LENGTHS).enumerate() {
            out.v4[i] = *len;
            out.v4_masks[i] = u32::from_ne_bytes(mask_v4([0xff; 4], *len));
            out.v4_count += 1;
        }
        for (i, len) in v6.iter().take(limits::MAX_PREFIX_LENGTHS).enumerate() {
            out.v6[i] = *len;
            out.v6_masks[i] = mask_v6([0xff; 16], *len);
            out.v6_count += 1;
        }
        out
    }
}

/// Key of the `RULESETS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleKey {
    pub generation: u32,
    pub index: u32,
}

/// Value of the `PAIRS` map: the pair's segments may resolve each other's addresses (a
/// flow joins them in one direction or the other); with [`PairInfo::FLOW`], a flow from
/// `from` to `to` allows the services at `flow` in `RULESETS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairInfo {
    /// [`PairInfo::FLOW`], [`PairInfo::BACK`].
    pub flags: u32,
    /// The services of the flow `from` -> `to` (with [`PairInfo::FLOW`]).
    pub flow: u32,
    /// The services of the flow `to` -> `from` (with [`PairInfo::BACK`]): one lookup
    /// tells whether a packet opens a connection either way or answers one.
    pub back: u32,
    pub _pad: u32,
    /// What the rule set at `flow` may admit at most: a packet it rules out needs no
    /// lookup of the rule set.
    pub flow_summary: Summary,
    /// The same for `back`.
    pub back_summary: Summary,
}

impl PairInfo {
    /// A flow from `from` to `to` exists.
    pub const FLOW: u32 = 1;
    /// A flow from `to` to `from` exists.
    pub const BACK: u32 = 2;
}

/// What a rule set may admit at most, small enough to travel in another map's value:
/// the protocol classes of its rules, the span of their ports, and whether a packet
/// without ports can match. [`Summary::may_admit`] is false only when
/// [`RuleSet::admits`] is false too; the programs ask the summary first and look the rule
/// set up only when it says maybe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Summary {
    /// A bit per protocol class: [`Summary::ICMP`], [`Summary::TCP`], [`Summary::UDP`],
    /// [`Summary::OTHER`] (any other protocol).
    pub protocols: u8,
    /// 1 when some rule admits packets without ports (it covers every port).
    pub portless: u8,
    /// The lowest first port and the highest last port of the rules.
    pub first_port: u16,
    pub last_port: u16,
    pub _pad: u16,
}

impl Summary {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 2;
    pub const UDP: u8 = 4;
    pub const OTHER: u8 = 8;

    #[inline(always)]
    fn bit(class: u8) -> u8 {
        match class {
            protocol::ICMP => Summary::ICMP,
            protocol::TCP => Summary::TCP,
            protocol::UDP => Summary::UDP,
            protocol::ANY => Summary::ICMP | Summary::TCP | Summary::UDP | Summary::OTHER,
            _ => Summary::OTHER,
        }
    }

    /// The summary of `rules`.
    pub fn of(rules: &RuleSet) -> Summary {
        if rules.flags & RuleSet::ALL != 0 {
            return Summary {
                protocols: Summary::bit(protocol::ANY),
                portless: 1,
                first_port: 0,
                last_port: u16::MAX,
                _pad: 0,
            };
        }
        let mut out = Summary {
            protocols: 0,
            portless: 0,
            first_port: u16::MAX,
            last_port: 0,
            _pad: 0,
        };
        for r in rules.rules.iter().take(rules.count as usize) {
            out.protocols |= Summary::bit(r.protocol);
            if r.first_port == 0 && r.last_port == u16::MAX {
                out.portless = 1;
            }
            out.first_port = out.first_port.min(r.first_port);
            out.last_port = out.last_port.max(r.last_port);
        }
        out
    }

    /// A summary of both rule sets summarised: it may admit whatever either may.
    pub fn union(self, other: Summary) -> Summary {
        if self.protocols == 0 {
            return other;
        }
        if other.protocols == 0 {
            return self;
        }
        Summary {
            protocols: self.protocols | other.protocols,
            portless: self.portless | other.portless,
            first_port: self.first_port.min(other.first_port),
            last_port: self.last_port.max(other.last_port),
            _pad: 0,
        }
    }

    /// Whether the rule set summarised may admit a packet of protocol class `class` (as
    /// [`RuleSet::admits`] takes it) to `port`.
    #[inline(always)]
    pub fn may_admit(&self, class: u8, port: Option<u16>) -> bool {
        self.protocols & Summary::bit(class) != 0
            && match port {
                Some(port) => port >= self.first_port && port <= self.last_port,
                None => self.portless != 0,
            }
    }
}

/// Key of the `COUNTERS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    pub ifindex: u32,
    /// One of [`direction`].
    pub direction: u8,
    /// One of [`verdict`].
    pub verdict: u8,
    /// [`CounterKey::AUDIT`] when the verdict was a drop that audit mode passed.
    pub flags: u8,
    pub _pad: u8,
}

impl CounterKey {
    /// The packet would have been dropped for `verdict` but was passed (audit mode).
    pub const AUDIT: u8 = 1;
}

/// Value of the `COUNTERS` map (one per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-generation settings (map `SETTINGS`, indexed by generation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Idle timeout of an established TCP connection, nanoseconds.
    pub tcp_idle_ns: u64,
    /// Timeout of a TCP connection that is opening (SYN seen, no reply) or closing (FIN).
    pub tcp_closing_ns: u64,
    pub udp_idle_ns: u64,
    pub icmp_idle_ns: u64,
    /// When this generation was put into effect (`CLOCK_BOOTTIME`, nanoseconds): a
    /// connection admitted under an earlier policy carries an earlier epoch, and is judged
    /// again by this one on its next packet.
    pub epoch: u64,
}

/// Protocol of a [`Rule`]. `ICMP` means ICMP for IPv4 and ICMPv6 for IPv6.
pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    /// Every protocol.
    pub const ANY: u8 = 255;
}

/// One allowed (or protected) service: a protocol and an inclusive port range.
/// Port range `0..=65535` means every port (and matches packets without ports).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    /// One of [`protocol`].
    pub protocol: u8,
    pub _pad: u8,
    pub first_port: u16,
    pub last_port: u16,
    pub _pad2: u16,
}

/// Services attached to an exposed prefix, a flow pair or a management prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleSet {
    /// How many of `rules` are in use.
    pub count: u32,
    /// [`RuleSet::ALL`].
    pub flags: u32,
    pub rules: [Rule; limits::MAX_RULES],
}

impl RuleSet {
    /// Every protocol and port (a management prefix without `services`).
    pub const ALL: u32 = 1;

    /// Whether the set admits a packet of protocol class `class` (one of [`protocol`]
    /// except `ANY`: ICMP stands for ICMP and ICMPv6) to `dst_port` (`None`: the packet
    /// carries no ports, e.g. ICMP or a later fragment). A rule with a port range admits
    /// only packets with a port in it, unless the range is every port. The kernel
    /// programs and the daemon's re-check of tracked connections both judge by this.
    #[inline(always)]
    pub fn admits(&self, class: u8, dst_port: Option<u16>) -> bool {
        if self.flags & RuleSet::ALL != 0 {
            return true;
        }
        let count = self.count as usize;
        for i in 0..limits::MAX_RULES {
            if i >= count {
                break;
            }
            let r = &self.rules[i];
            let protocol_ok = r.protocol == protocol::ANY || r.protocol == class;
            let every_port = r.first_port == 0 && r.last_port == u16::MAX;
            let port_ok = every_port
                || match dst_port {
                    Some(port) => port >= r.first_port && port <= r.last_port,
                    None => false,
                };
            if protocol_ok && port_ok {
                return true;
            }
        }
        false
    }

    /// Ids of rule sets (`RuleKey::index`) with this bit are sets of one rule written out
    /// in the id itself ([`RuleSet::inline_id`]); other ids are below it.
    pub const INLINE: u32 = 1 << 31;
    /// In an inline id: the rule covers every port (else the id's low 16 bits are its one
    /// port).
    const INLINE_EVERY_PORT: u32 = 1 << 24;

    /// The set's inline id, if it has one: a set of one rule (no [`RuleSet::ALL`]) for
    /// one port or every port, the commonest exposure, flow and management service. The
    /// id says all the set says, so the programs judge a service by it without looking
    /// the set up ([`RuleSet::inline_admits`]); the same ids in two plans are the same
    /// sets.
    pub fn inline_id(&self) -> Option<u32> {
        if self.flags != 0 || self.count != 1 {
            return None;
        }
        let rule = &self.rules[0];
        let protocol = u32::from(rule.protocol) << 16;
        if rule.first_port == 0 && rule.last_port == u16::MAX {
            Some(Self::INLINE | Self::INLINE_EVERY_PORT | protocol)
        } else if rule.first_port == rule.last_port {
            Some(Self::INLINE | protocol | u32::from(rule.first_port))
        } else {
            None
        }
    }

    /// For an inline id ([`RuleSet::inline_id`]), what [`RuleSet::admits`] says of the
    /// set it stands for; `None` for any other id, whose set must be looked up.
    #[inline(always)]
    pub fn inline_admits(id: u32, class: u8, dst_port: Option<u16>) -> Option<bool> {
        if id & Self::INLINE == 0 {
            return None;
        }
        let protocol = (id >> 16) as u8;
        let protocol_ok = protocol == protocol::ANY || protocol == class;
        let port_ok = id & Self::INLINE_EVERY_PORT != 0 || dst_port == Some(id as u16);
        Some(protocol_ok && port_ok)
    }
}

/// Key of the `PAIRS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PairKey {
    pub generation: u32,
    pub from: u32,
    pub to: u32,
}

/// Key of the `CONNTRACK` map, in the direction of the packet that opened the
/// connection. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`). For ICMP echo
/// the identifier stands in `src_port` and `dst_port` is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number (6, 17, 1 or 58).
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// Value of the per-vif connection tables (`CONNTRACK`, `CONNTRACK_OPENING`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// `bpf_ktime_get_ns()` of the last packet.
    pub last_seen_ns: u64,
    /// One of [`conntrack`] states.
    pub state: u8,
    /// Where the opening packet was judged: [`direction`] on the vif `ifindex`. The
    /// daemon re-checks the connection against every new policy from there.
    pub direction: u8,
    /// [`ConnState::SYN_ACK_SEEN`], [`ConnState::FIN_FROM_OPENER`],
    /// [`ConnState::FIN_FROM_RESPONDER`].
    pub flags: u8,
    pub _pad: u8,
    pub ifindex: u32,
    /// TCP: the sequence number after the furthest byte (SYN and FIN count one) the
    /// opener has sent; RST and FIN from it count only near it.
    pub opener_end: u32,
    /// TCP: the same for the responder.
    pub responder_end: u32,
    /// Who the VM talks to in this connection, as the programs placed them: the segment
    /// id, or [`ConnState::PEER_OUTSIDE`]. A frame delivered to the VM is part of the
    /// connection only if it entered the host from that peer (a spoofed frame from
    /// elsewhere with the same addresses and ports is not).
    pub peer: u32,
    pub _pad2: u32,
    /// The [`Settings::epoch`] of the policy that last admitted the connection.
    pub epoch: u64,
}

impl ConnState {
    /// TCP: the responder answered the SYN with a SYN-ACK acknowledging it.
    pub const SYN_ACK_SEEN: u8 = 1;
    /// TCP: the opener closed its direction (half-close).
    pub const FIN_FROM_OPENER: u8 = 2;
    /// TCP: the responder closed its direction.
    pub const FIN_FROM_RESPONDER: u8 = 4;
    /// [`ConnState::peer`] outside every segment.
    pub const PEER_OUTSIDE: u32 = u32::MAX;
    /// For the programs' lookups: the sender is the VM itself (ingress), no peer check.
    pub const PEER_VM: u32 = u32::MAX - 1;
}

/// Connection tracking states and event counters.
pub mod conntrack {
    /// Opened (TCP SYN, first UDP datagram, ICMP echo request) and not yet answered (for
    /// TCP: the handshake is not complete). Such entries live in the vif's opening table,
    /// where they cannot displace established connections.
    pub const NEW: u8 = 1;
    /// Answered (TCP: the opener acknowledged the responder's SYN-ACK).
    pub const ESTABLISHED: u8 = 2;
    /// TCP: both directions sent a FIN; ends after the short closing timeout.
    pub const CLOSING: u8 = 3;

    /// How far (in sequence space) from the sender's furthest byte an RST or FIN may lie
    /// to be honoured: a coarse window (Linux conntrack uses the peers' windows); an
    /// off-path attacker must guess within it, 1 in 2048 of the sequence space.
    pub const SEQUENCE_WINDOW: u32 = 1 << 20;

    /// Index in `CONNTRACK_EVENTS`: connections opened.
    pub const EVENT_CREATED: u32 = 0;
    /// Connections ended by RST.
    pub const EVENT_CLOSED: u32 = 1;
    /// Connections found idle past their timeout and removed (by a packet's lookup).
    pub const EVENT_EXPIRED: u32 = 2;
    // The daemon writes the counters below (and only it: a per-CPU slot that a program
    // also wrote could lose counts to the daemon's read-modify-write). They live in the
    // pinned map with the kernel's, so that a restarted daemon neither resets nor
    // forgets them.
    /// Connections idle past their timeout that the daemon's sweep removed.
    pub const EVENT_SWEPT: u32 = 3;
    /// Connections removed because a new policy no longer admits them.
    pub const EVENT_REVOKED: u32 = 4;
    /// Connections removed with the tables of an interface that went away (or is no
    /// longer managed).
    pub const EVENT_RELEASED: u32 = 5;
    /// The highest eviction count reported so far (evictions are estimated, and the
    /// estimate can dip while the tables change between its reads; a counter must not).
    pub const EVENT_EVICTED_REPORTED: u32 = 6;
    /// Number of event counters (one spare).
    pub const EVENTS: u32 = 8;
}

/// Key of the `VIF_VLANS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VlanKey {
    pub generation: u32,
    pub ifindex: u32,
    pub vlan: u16,
    pub _pad: [u8; 2],
}

/// Key of the per-vif `FRAGMENTS` tables: a datagram (IPv4-mapped addresses for IPv4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IPv4 identification or IPv6 fragment identification.
    pub id: u32,
    /// IPv4: the protocol field; IPv6: the Fragment header's Next Header (the same in
    /// every fragment of a datagram).
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// Value of the per-vif `FRAGMENTS` tables: a datagram whose first fragment passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragState {
    /// When the first fragment passed (`bpf_ktime_get_ns()`).
    pub first_ns: u64,
    /// The lowest offset (bytes into the fragmentable part) a later fragment may start
    /// at: the end of the transport header the first fragment was judged by. A later
    /// fragment below it would overwrite that header.
    pub min_offset: u32,
    pub _pad: u32,
}

/// Key of the `DECLARED_MACS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeclaredMacKey {
    pub generation: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// A key of a generation-keyed policy map: every such key names the policy generation it
/// belongs to, so that userspace can remove a whole generation and check that only the
/// active one is left.
pub trait GenerationKey {
    /// The policy generation this key belongs to.
    fn generation(&self) -> u32;
}

macro_rules! generation_field {
    ($($ty:ty),*) => {$(
        impl GenerationKey for $ty {
            #[inline(always)]
            fn generation(&self) -> u32 {
                self.generation
            }
        }
    )*};
}
generation_field!(
    VifKey,
    PairKey,
    VlanKey,
    DeclaredMacKey,
    UplinkKey,
    GatewayKey,
    RuleKey
);

macro_rules! generation_in_tag {
    ($($ty:ty),*) => {$(
        impl GenerationKey for $ty {
            #[inline(always)]
            fn generation(&self) -> u32 {
                self.tag >> 8
            }
        }
    )*};
}
generation_in_tag!(AddrV4Key, AddrV6Key);

/// An IPv4 address as the maps store it in 16-byte fields: IPv4-mapped (`::ffff:a.b.c.d`).
#[inline(always)]
pub const fn mapped(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// The IPv4 address in the last four bytes of a 16-byte address field.
#[inline(always)]
pub const fn unmapped(addr: &[u8; 16]) -> [u8; 4] {
    [addr[12], addr[13], addr[14], addr[15]]
}

impl Settings {
    /// How long a connection of IP protocol `protocol` in [`conntrack`] state `state` may
    /// stay idle. The kernel (on lookup) and the daemon (its sweep) both expire by this.
    #[inline(always)]
    pub const fn timeout_ns(&self, protocol: u8, state: u8) -> u64 {
        match protocol {
            protocol::TCP => {
                if state == conntrack::ESTABLISHED {
                    self.tcp_idle_ns
                } else {
                    self.tcp_closing_ns
                }
            }
            protocol::UDP => self.udp_idle_ns,
            _ => self.icmp_idle_ns,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;

    macro_rules! pod {
        ($($ty:ty),* $(,)?) => {$(
            // SAFETY: every one of these is a `#[repr(C)]` struct of integers and byte
            // arrays without implicit padding (the layout test below checks the sizes),
            // valid for any bit pattern.
            unsafe impl aya::Pod for $ty {}
        )*};
    }

    pod!(
        VifKey,
        VifInfo,
        SegmentInfo,
        AddrV4Key,
        AddrV6Key,
        AddrClass,
        PrefixLengths,
        RuleKey,
        PairInfo,
        CounterKey,
        Counter,
        CounterBlock,
        Settings,
        Rule,
        RuleSet,
        PairKey,
        ConnKey,
        ConnState,
        LinkInfo,
        UplinkKey,
        GatewayKey,
        DeclaredMacKey,
        VlanKey,
        FragKey,
        FragState,
        Event,
        EventSettings,
        EventKey,
        EventWindow,
        EventWindows,
    );
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use core::mem::size_of;
    use std::vec;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<VifKey>(), 8);
        assert_eq!(size_of::<Event>(), 64);
        assert_eq!(size_of::<EventSettings>(), 16);
        assert_eq!(size_of::<EventKey>(), 8);
        assert_eq!(size_of::<EventWindow>(), 16);
        assert_eq!(size_of::<EventWindows>(), 32);
        assert_ne!(
            EventWindows::index(event::MANAGEMENT),
            EventWindows::index(event::DROP)
        );
        assert_eq!(size_of::<VifInfo>(), 80);
        assert_eq!(size_of::<SegmentInfo>(), 24);
        assert_eq!(size_of::<AddrV4Key>(), 8);
        assert_eq!(size_of::<AddrV6Key>(), 20);
        assert_eq!(size_of::<AddrClass>(), 32);
        assert_eq!(
            size_of::<PrefixLengths>(),
            8 + (1 + 1 + 4 + 16) * limits::MAX_PREFIX_LENGTHS
        );
        assert_eq!(size_of::<RuleKey>(), 8);
        assert_eq!(size_of::<PairInfo>(), 32);
        assert_eq!(size_of::<CounterKey>(), 8);
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(size_of::<CounterBlock>(), 16 * COUNTER_BLOCK_LEN);
        assert_eq!(size_of::<Settings>(), 40);
        assert_eq!(size_of::<Rule>(), 8);
        assert_eq!(size_of::<RuleSet>(), 8 + 8 * limits::MAX_RULES);
        assert_eq!(size_of::<PairKey>(), 12);
        assert_eq!(size_of::<ConnKey>(), 40);
        assert_eq!(size_of::<ConnState>(), 40);
        assert_eq!(size_of::<FragState>(), 16);
        assert_eq!(size_of::<LinkInfo>(), 4);
        assert_eq!(size_of::<UplinkKey>(), 12);
        assert_eq!(size_of::<GatewayKey>(), 24);
        assert_eq!(size_of::<DeclaredMacKey>(), 12);
        assert_eq!(size_of::<VlanKey>(), 12);
        assert_eq!(size_of::<FragKey>(), 40);
    }

    #[test]
    fn masks_keep_the_prefix_bits_only() {
        assert_eq!(mask_v4([10, 1, 2, 3], 0), [0, 0, 0, 0]);
        assert_eq!(mask_v4([10, 1, 2, 3], 8), [10, 0, 0, 0]);
        assert_eq!(mask_v4([10, 1, 255, 3], 20), [10, 1, 240, 0]);
        assert_eq!(mask_v4([10, 1, 2, 3], 32), [10, 1, 2, 3]);
        let a = [0xffu8; 16];
        for len in 0..=128u8 {
            let m = u128::from_be_bytes(mask_v6(a, len));
            assert_eq!(m.count_ones(), u32::from(len));
            assert_eq!(m.leading_ones(), u32::from(len));
        }
        let lengths = PrefixLengths::new(&[32, 24], &[128, 64]);
        assert_eq!(lengths.v4_count, 2);
        assert_eq!(lengths.v4_masks[1].to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(lengths.v6_masks[1], mask_v6(a, 64));
        assert_eq!(AddrV4Key::new(1, [10, 1, 2, 3], 24).generation(), 1);
        assert_eq!(AddrV4Key::new(1, [10, 1, 2, 3], 24).prefix_len(), 24);
    }

    #[test]
    fn reason_codes_are_unique_and_named() {
        for (i, (code, label, _)) in verdict::DROP_REASONS.iter().enumerate() {
            assert_ne!(*code, verdict::PASS);
            assert_eq!(verdict::name(*code), Some(*label));
            for (other, _, _) in &verdict::DROP_REASONS[i + 1..] {
                assert_ne!(code, other);
            }
            assert!(
                label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            );
        }
        assert_eq!(verdict::name(verdict::PASS), None);
    }

    fn rules(list: &[(u8, u16, u16)]) -> RuleSet {
        let mut set = RuleSet::default();
        for (i, (protocol, first_port, last_port)) in list.iter().enumerate() {
            set.rules[i] = Rule {
                protocol: *protocol,
                first_port: *first_port,
                last_port: *last_port,
                ..Rule::default()
            };
        }
        set.count = list.len() as u32;
        set
    }

    #[test]
    fn rule_sets_admit_by_protocol_class_and_port() {
        use protocol::{ANY, ICMP, TCP, UDP};
        let web = rules(&[(TCP, 80, 80), (TCP, 8000, 8080), (ICMP, 0, u16::MAX)]);
        let cases: &[(u8, Option<u16>, bool)] = &[
            (TCP, Some(80), true),
            (TCP, Some(81), false),
            (TCP, Some(7999), false),
            (TCP, Some(8000), true),
            (TCP, Some(8080), true),
            (TCP, Some(8081), false),
            (UDP, Some(80), false),
            (ICMP, None, true),
            // A packet without ports (a later fragment) never matches a port range.
            (TCP, None, false),
        ];
        for (class, port, expected) in cases {
            assert_eq!(web.admits(*class, *port), *expected, "{class} {port:?}");
        }
        let any = rules(&[(ANY, 0, u16::MAX)]);
        assert!(any.admits(UDP, Some(53)) && any.admits(ICMP, None) && any.admits(TCP, None));
        let any_dns = rules(&[(ANY, 53, 53)]);
        assert!(any_dns.admits(UDP, Some(53)) && any_dns.admits(TCP, Some(53)));
        assert!(!any_dns.admits(ICMP, None));
        assert!(!RuleSet::default().admits(TCP, Some(80)));
        let all = RuleSet {
            flags: RuleSet::ALL,
            ..RuleSet::default()
        };
        assert!(all.admits(UDP, None));
        // Rules past `count` are not in use.
        let mut stale = web;
        stale.count = 1;
        assert!(!stale.admits(ICMP, None));
    }

    /// A summary never rules out what its rule set admits, and does rule out some
    /// packets (else it would save no lookup); an inline id says exactly what its set
    /// says, and two sets share one only if they are the same.
    #[test]
    fn summaries_and_inline_ids_say_what_their_rule_sets_say() {
        let rule = |protocol, first_port, last_port| Rule {
            protocol,
            _pad: 0,
            first_port,
            last_port,
            _pad2: 0,
        };
        let candidates = [
            rule(protocol::TCP, 5432, 5432),
            rule(protocol::TCP, 80, 443),
            rule(protocol::UDP, 53, 53),
            rule(protocol::UDP, 0, u16::MAX),
            rule(protocol::ICMP, 0, u16::MAX),
            rule(47, 0, u16::MAX),
            rule(protocol::ANY, 1000, 2000),
            rule(protocol::ANY, 0, u16::MAX),
        ];
        let classes = [protocol::ICMP, protocol::TCP, protocol::UDP, 47, 132];
        let ports = [
            None,
            Some(0),
            Some(53),
            Some(79),
            Some(80),
            Some(300),
            Some(443),
            Some(1500),
            Some(5432),
            Some(u16::MAX),
        ];
        let mut ruled_out = 0;
        // Every set of up to three of the candidates, and the set admitting everything.
        let mut sets = vec![RuleSet {
            count: 0,
            flags: RuleSet::ALL,
            rules: [Rule::default(); limits::MAX_RULES],
        }];
        for a in 0..candidates.len() {
            for b in a..candidates.len() {
                for c in b..candidates.len() {
                    for n in 1..=3 {
                        let mut set = RuleSet::default();
                        for (i, r) in [a, b, c].iter().take(n).enumerate() {
                            set.rules[i] = candidates[*r];
                        }
                        set.count = n as u32;
                        sets.push(set);
                    }
                }
            }
        }
        let mut inline = std::collections::BTreeMap::new();
        for set in &sets {
            let summary = Summary::of(set);
            let id = set.inline_id();
            if let Some(id) = id {
                let rules = set.rules[..set.count as usize].to_vec();
                let before = inline.insert(id, rules.clone());
                assert!(
                    before.is_none() || before == Some(rules),
                    "two sets share the inline id {id:#x}"
                );
            }
            for class in classes {
                for port in ports {
                    match id {
                        Some(id) => assert_eq!(
                            RuleSet::inline_admits(id, class, port),
                            Some(set.admits(class, port)),
                            "{set:?} as {id:#x}, {class}/{port:?}"
                        ),
                        // An id of the hash's range.
                        None => assert_eq!(RuleSet::inline_admits(0x7fff_ffff, class, port), None),
                    }
                    let may = summary.may_admit(class, port);
                    assert!(
                        may || !set.admits(class, port),
                        "{set:?} admits {class}/{port:?} but its summary {summary:?} rules it out"
                    );
                    if !may {
                        ruled_out += 1;
                    }
                }
            }
        }
        assert!(
            ruled_out > sets.len(),
            "summaries ruled out only {ruled_out} packets"
        );
        // The single rules of one port or every port (six of the eight candidates).
        assert_eq!(inline.len(), 6, "{inline:?}");
    }
}
