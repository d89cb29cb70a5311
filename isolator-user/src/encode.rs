//! Encoding a plan into the entries of one policy generation of the kernel maps. Pure.
//!
//! [`policy_tables!`] is the one list of the generation-keyed policy maps, in the order
//! they are written (the vifs last, so that a vif entry only ever points at segments that
//! exist); [`Entries`] here and the kernel-facing tables in `dataplane::tables` (write,
//! purge, generations, pins) are both generated from it, so a map cannot be forgotten in
//! one of those places.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::IpAddr;

use isolator_common::{
    AddrClass, AddrV4Key, AddrV6Key, DeclaredMacKey, GatewayKey, LinkInfo, PairInfo, PairKey,
    PrefixLengths, RuleKey, RuleSet, SegmentInfo, Settings, Summary, UplinkKey, VifInfo, VifKey,
    VlanKey, inside_bit_v4, inside_bit_v6, mapped, vif_slot,
};

use crate::compile::{Declared, Plan, vif_flags};

/// A hash map with a fast hash: the encoder's keys are the policy's own, not a sender's.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Calls `$callback!` with the policy tables, in write order: `field: MAP_NAME =>
/// Kind<Key, Value>`, where `Kind` is `Array` (indexed by generation), `Hash` (keys carry
/// the generation) or `Slots` (an array indexed by `isolator_common::vif_slot`).
macro_rules! policy_tables {
    ($callback:ident) => {
        $callback! {
            settings: SETTINGS => Array<u32, Settings>,
            rulesets: RULESETS => Hash<RuleKey, RuleSet>,
            addresses_v4: ADDRESSES_V4 => Hash<AddrV4Key, AddrClass>,
            addresses_v6: ADDRESSES_V6 => Hash<AddrV6Key, AddrClass>,
            prefix_lengths: PREFIX_LENGTHS => Array<u32, PrefixLengths>,
            pairs: PAIRS => Hash<PairKey, PairInfo>,
            vif_vlans: VIF_VLANS => Hash<VlanKey, u8>,
            declared_macs: DECLARED_MACS => Hash<DeclaredMacKey, u32>,
            links: LINKS => Hash<VifKey, LinkInfo>,
            uplinks: UPLINKS => Hash<UplinkKey, u8>,
            gateways: GATEWAYS => Hash<GatewayKey, RuleSet>,
            vifs: VIFS => Hash<VifKey, VifInfo>,
            vif_slots: VIF_SLOTS => Slots<u32, VifInfo>,
        }
    };
}
pub(crate) use policy_tables;

/// The key type of a table kind's entries.
macro_rules! entry_key {
    (Array, $k:ty) => {
        $k
    };
    (Hash, $k:ty) => {
        $k
    };
    (Slots, $k:ty) => {
        $k
    };
}
pub(crate) use entry_key;

macro_rules! define_entries {
    ($($field:ident: $name:ident => $kind:ident<$k:ty, $v:ty>,)*) => {
        /// Every entry one policy generation puts into the kernel, by table (see
        /// [`policy_tables!`]).
        #[derive(Clone, Default)]
        pub struct Entries {
            $(
                #[doc = concat!("Entries of `", stringify!($name), "`.")]
                pub $field: Vec<(entry_key!($kind, $k), $v)>,
            )*
        }

        impl Entries {
            /// How many entries of each table, by map name, in write order.
            pub fn counts(&self) -> Vec<(&'static str, usize)> {
                vec![$( (isolator_common::maps::$name, self.$field.len()), )*]
            }
        }
    };
}
policy_tables!(define_entries);

/// The entries of `plan` under `generation`.
pub fn encode(plan: &Plan, generation: u32) -> Entries {
    let mut entries = encode_tables(plan, generation);
    entries.vif_slots = entries
        .vifs
        .iter()
        .filter_map(|(key, info)| vif_slot(key.generation, key.ifindex).map(|slot| (slot, *info)))
        .collect();
    entries
}

/// Every table's entries but `VIF_SLOTS`, which mirrors `VIFS`.
fn encode_tables(plan: &Plan, generation: u32) -> Entries {
    let declared = Declared::of(plan);
    let mut rules = RuleSets::new(generation);
    let addresses = addresses::classify(plan, &mut rules);
    let prefix_lengths = PrefixLengths::new(&addresses.v4_lengths(), &addresses.v6_lengths());
    // Each flow's rule set id and summary, worked out once (each pair entry names the
    // flows of both directions, so every flow is asked for twice).
    let flows: HashMap<(u32, u32), (u32, Summary)> = plan
        .flows
        .iter()
        .map(|(pair, services)| (*pair, (rules.index(services), Summary::of(services))))
        .collect();
    // Each segment's flows out and in, their summaries united.
    let mut segment_flows: HashMap<u32, (Summary, Summary)> = HashMap::default();
    for (&(from, to), &(_, summary)) in &flows {
        let out = segment_flows.entry(from).or_default();
        out.0 = out.0.union(summary);
        let back = segment_flows.entry(to).or_default();
        back.1 = back.1.union(summary);
    }
    let pairs = plan
        .neighbours
        .iter()
        .map(|(from, to)| {
            let mut info = PairInfo::default();
            if let Some(&(id, summary)) = flows.get(&(*from, *to)) {
                info.flags |= PairInfo::FLOW;
                info.flow = id;
                info.flow_summary = summary;
            }
            if let Some(&(id, summary)) = flows.get(&(*to, *from)) {
                info.flags |= PairInfo::BACK;
                info.back = id;
                info.back_summary = summary;
            }
            (pair(generation, *from, *to), info)
        })
        .collect();
    // Each segment's first IPv4 prefix, for the homes of vifs that declare no IPv4
    // address: one pass over the plan's prefixes, not one a vif.
    let mut first_v4: HashMap<u32, Ipv4Net> = HashMap::default();
    for (net, segment) in &plan.v4 {
        first_v4.entry(*segment).or_insert(*net);
    }
    Entries {
        settings: vec![(generation, plan.settings)],
        addresses_v4: addresses
            .v4
            .iter()
            .map(|((len, addr), class)| {
                let octets = ((*addr >> 96) as u32).to_be_bytes();
                (AddrV4Key::new(generation, octets, *len), *class)
            })
            .collect(),
        addresses_v6: addresses
            .v6
            .iter()
            .map(|((len, addr), class)| {
                (AddrV6Key::new(generation, addr.to_be_bytes(), *len), *class)
            })
            .collect(),
        prefix_lengths: vec![(generation, prefix_lengths)],
        pairs,
        rulesets: rules.entries(),
        vif_vlans: plan
            .vifs
            .iter()
            .flat_map(|vif| {
                vif.vlans.iter().map(move |vlan| {
                    (
                        VlanKey {
                            generation,
                            ifindex: vif.ifindex,
                            vlan: *vlan,
                            _pad: [0; 2],
                        },
                        1,
                    )
                })
            })
            .collect(),
        declared_macs: plan
            .vifs
            .iter()
            .filter_map(|vif| {
                vif.mac.map(|mac| {
                    (
                        DeclaredMacKey {
                            generation,
                            mac,
                            _pad: [0; 2],
                        },
                        vif.ifindex,
                    )
                })
            })
            .collect(),
        links: plan
            .links
            .iter()
            .map(|link| {
                let flags = if link.uplink_for.is_empty() {
                    0
                } else {
                    LinkInfo::UPLINK
                };
                (
                    VifKey {
                        generation,
                        ifindex: link.ifindex,
                    },
                    LinkInfo { flags },
                )
            })
            .collect(),
        uplinks: plan
            .links
            .iter()
            .flat_map(|link| {
                link.uplink_for.iter().map(move |segment| {
                    (
                        UplinkKey {
                            generation,
                            ifindex: link.ifindex,
                            segment: *segment,
                        },
                        1,
                    )
                })
            })
            .collect(),
        gateways: plan
            .gateways
            .iter()
            .map(|g| {
                (
                    GatewayKey {
                        generation,
                        segment: g.segment,
                        addr: bytes(g.address),
                    },
                    g.services,
                )
            })
            .collect(),
        vifs: plan
            .vifs
            .iter()
            .map(|v| {
                (
                    VifKey {
                        generation,
                        ifindex: v.ifindex,
                    },
                    {
                        let home = home(v, &first_v4, &addresses.v4, &addresses.v4_inside);
                        VifInfo {
                            segment: v.segment,
                            flags: vif_flags(v, &declared)
                                | VifInfo::PRESENT
                                | if home.is_some() { VifInfo::HAS_HOME } else { 0 },
                            mac: v.mac.unwrap_or_default(),
                            _pad: [0; 2],
                            info: plan
                                .segment(v.segment)
                                .map(|s| {
                                    let (flows_out, flows_in) =
                                        segment_flows.get(&s.id).copied().unwrap_or_default();
                                    SegmentInfo {
                                        tenant: s.tenant_id,
                                        flags: s.flags,
                                        flows_out,
                                        flows_in,
                                    }
                                })
                                .unwrap_or_default(),
                            home: home
                                .map(|(net, _)| net.network().octets())
                                .unwrap_or_default(),
                            home_mask: home
                                .map(|(net, _)| u32::from_ne_bytes(net.netmask().octets()))
                                .unwrap_or_default(),
                            home_class: home.map(|(_, class)| class).unwrap_or(AddrClass::OUTSIDE),
                        }
                    },
                )
            })
            .chain(plan.quarantined.iter().map(|q| {
                (
                    VifKey {
                        generation,
                        ifindex: q.ifindex,
                    },
                    VifInfo {
                        segment: u32::MAX,
                        flags: VifInfo::QUARANTINED | VifInfo::PRESENT,
                        mac: [0; 6],
                        _pad: [0; 2],
                        info: SegmentInfo::default(),
                        home: [0; 4],
                        home_mask: 0,
                        home_class: AddrClass::OUTSIDE,
                    },
                )
            }))
            .collect(),
        vif_slots: Vec::new(),
    }
}

/// The IPv4 prefix a vif's frames come from, with its entry among `v4` (the encoded
/// IPv4 classes, sorted by prefix): its first declared IPv4 address or prefix, else its
/// segment's first IPv4 prefix. `None` when it has neither.
/// `first_v4`: each segment's first IPv4 prefix in the plan.
fn home(
    vif: &crate::compile::ManagedVif,
    first_v4: &HashMap<u32, Ipv4Net>,
    v4: &[(addresses::Prefix, AddrClass)],
    inside: &[Option<u64>],
) -> Option<(Ipv4Net, AddrClass)> {
    let declared = vif.addresses.iter().find_map(|net| match net {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    });
    let net = declared.or_else(|| first_v4.get(&vif.segment).copied())?;
    let net = net.trunc();
    let prefix = (net.prefix_len(), u128::from(u32::from(net.network())) << 96);
    let at = v4.binary_search_by_key(&prefix, |(p, _)| *p).ok()?;
    // Marked by what lies inside whatever the probing order: with the longest length
    // probed first, the entry itself is not marked for entries of that length.
    let mut class = v4[at].1;
    match inside.get(at).copied().flatten() {
        Some(filter) => {
            class.flags |= AddrClass::LONGER;
            class.inside = filter;
        }
        None => {
            class.flags &= !AddrClass::LONGER;
            class.inside = 0;
        }
    }
    Some((net, class))
}

/// An address as the maps store it: 16 bytes, IPv4 IPv4-mapped.
fn bytes(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

fn pair(generation: u32, from: u32, to: u32) -> PairKey {
    PairKey {
        generation,
        from,
        to,
    }
}

/// The rule sets of one generation, each distinct set stored once, under an id that
/// follows from its rules (see [`RuleSets::index`]).
struct RuleSets {
    generation: u32,
    index: HashMap<SetKey, u32>,
    /// (id, set), in the order first asked for.
    sets: Vec<(u32, RuleSet)>,
    taken: std::collections::HashSet<u32, foldhash::fast::RandomState>,
}

/// A rule set as a map key, hashed by the rules in use, one word each: the derived
/// `Hash` writes every field of all `MAX_RULES` rules one at a time, and a cloud-scale
/// plan looks up hundreds of thousands of sets (the flows of every segment pair). Equal
/// sets have the same rules in use, so they hash alike.
#[derive(PartialEq, Eq)]
struct SetKey(RuleSet);

impl SetKey {
    /// The words [`SetKey`] hashes: what the set says, nothing of its unused rules.
    fn words(&self) -> impl Iterator<Item = u64> + '_ {
        let set = &self.0;
        let used = (set.count as usize).min(set.rules.len());
        std::iter::once(u64::from(set.count) | u64::from(set.flags) << 32).chain(
            set.rules[..used].iter().map(|rule| {
                u64::from(rule.protocol)
                    | u64::from(rule.first_port) << 16
                    | u64::from(rule.last_port) << 32
            }),
        )
    }
}

impl std::hash::Hash for SetKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for word in self.words() {
            state.write_u64(word);
        }
    }
}

impl RuleSets {
    fn new(generation: u32) -> Self {
        RuleSets {
            generation,
            index: HashMap::default(),
            sets: Vec::new(),
            taken: Default::default(),
        }
    }

    /// The id of `set`, added if new. A set of one rule for one port or every port has
    /// its inline id, which says the rule itself (`RuleSet::inline_id`: the programs
    /// judge by it without reading the set, written all the same so that the map holds
    /// every set the plan names). Any other set's id is the FNV-1a hash of its rules,
    /// folded into 1..2^31, or the next free one if another set has it. Either way a
    /// reload that adds or removes a set leaves the ids of the others, and so the address
    /// entries that name them, as they were (but for sets whose hashes collide, which
    /// take ids in the order asked).
    fn index(&mut self, set: &RuleSet) -> u32 {
        const SPACE: u32 = RuleSet::INLINE;
        let key = SetKey(*set);
        if let Some(&id) = self.index.get(&key) {
            return id;
        }
        if let Some(id) = set.inline_id() {
            self.index.insert(key, id);
            // Once, should two sets differ only in rules not in use.
            if self.taken.insert(id) {
                self.sets.push((id, *set));
            }
            return id;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for word in key.words() {
            for byte in word.to_le_bytes() {
                h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        let mut id = ((h >> 32) ^ h) as u32 % (SPACE - 1) + 1;
        while !self.taken.insert(id) {
            id = if id == SPACE - 1 { 1 } else { id + 1 };
        }
        self.index.insert(key, id);
        self.sets.push((id, *set));
        id
    }

    fn entries(&self) -> Vec<(RuleKey, RuleSet)> {
        self.sets
            .iter()
            .map(|&(index, set)| {
                (
                    RuleKey {
                        generation: self.generation,
                        index,
                    },
                    set,
                )
            })
            .collect()
    }
}

/// The classification of addresses: every prefix of the policy with what the longest
/// prefix of each kind containing it says (docs/design.md, "Classifying an address").
mod addresses {
    use super::*;

    /// A prefix as (length, address), the address left-aligned in 128 bits (an IPv4
    /// address in the top 32) with the bits beyond the length cleared.
    pub type Prefix = (u8, u128);

    fn mask(addr: u128, len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            addr & (u128::MAX << (128 - u32::from(len)))
        }
    }

    fn of_net(net: &IpNet) -> (bool, Prefix) {
        match net {
            IpNet::V4(n) => (
                true,
                (
                    n.prefix_len(),
                    mask(u128::from(u32::from(n.network())) << 96, n.prefix_len()),
                ),
            ),
            IpNet::V6(n) => (
                false,
                (
                    n.prefix_len(),
                    mask(u128::from(n.network()), n.prefix_len()),
                ),
            ),
        }
    }

    fn of_addr(addr: &IpAddr) -> (bool, Prefix) {
        match addr {
            IpAddr::V4(a) => (true, (32, u128::from(u32::from(*a)) << 96)),
            IpAddr::V6(a) => (false, (128, u128::from(*a))),
        }
    }

    /// Both families' entries, each sorted by prefix, and the order the programs probe
    /// each family's prefix lengths in.
    pub struct Addresses {
        pub v4: Vec<(Prefix, AddrClass)>,
        pub v6: Vec<(Prefix, AddrClass)>,
        v4_order: Vec<u8>,
        /// For each IPv4 entry, the filter of every longer entry inside it, whatever the
        /// probing order (`None`: nothing inside).
        pub v4_inside: Vec<Option<u64>>,
        v6_order: Vec<u8>,
    }

    impl Addresses {
        /// The IPv4 prefix lengths in use, in the order the programs probe them.
        pub fn v4_lengths(&self) -> Vec<u8> {
            self.v4_order.clone()
        }

        /// The IPv6 prefix lengths in use, in the order the programs probe them.
        pub fn v6_lengths(&self) -> Vec<u8> {
            self.v6_order.clone()
        }
    }

    /// The prefix lengths in use, shortest first.
    fn lengths(classes: &[(Prefix, AddrClass)]) -> Vec<u8> {
        let mut lengths: Vec<u8> = classes.iter().map(|((len, _), _)| *len).collect();
        lengths.sort_unstable();
        lengths.dedup();
        lengths
    }

    /// The [`AddrClass::inside`] bits of every address of `prefix`: each one's bit when
    /// it holds fewer than 64, else every bit.
    fn filter_of((len, addr): Prefix, v4: bool) -> u64 {
        let host_bits = if v4 {
            32 - u32::from(len)
        } else {
            128 - u32::from(len)
        };
        if host_bits >= 6 {
            return u64::MAX;
        }
        let mut bits = 0;
        for i in 0..1u32 << host_bits {
            bits |= if v4 {
                inside_bit_v4(((addr >> 96) as u32 + i).to_be_bytes())
            } else {
                inside_bit_v6(&(addr + u128::from(i)).to_be_bytes())
            };
        }
        bits
    }

    /// The share of addresses whose bit a filter holds.
    fn share(filter: u64) -> f64 {
        f64::from(filter.count_ones()) / 64.0
    }

    /// Chooses the order the programs probe one family's lengths in, and marks the
    /// entries at which they must go on probing ([`AddrClass::LONGER`], with the filter
    /// of the addresses that need it in [`AddrClass::inside`]); returns the order, and for
    /// each entry the filter of every longer entry inside it, whatever the order (`None`:
    /// nothing inside). The programs stop at the first match without the mark, or whose
    /// filter rules the address out.
    ///
    /// Two orders, whichever costs fewer probes summed over the entries (each standing
    /// for the addresses whose longest match it is; a marked entry's further probes
    /// weighed by the share of addresses its filter lets through):
    /// - shortest first, an entry marked when it holds a longer one: an address in a
    ///   segment prefix with nothing longer inside costs one lookup;
    /// - the longest length first, then the others shortest first, an entry marked when
    ///   it holds a longer one of a length other than the longest (after a miss at the
    ///   longest length, those no longer count): an address with an entry of the longest
    ///   length, typically a VM's declared address, costs one lookup.
    ///
    /// `all` and `below_longest` are [`Swept`]'s, for `classes`.
    fn order_and_mark(
        classes: &mut [(Prefix, AddrClass)],
        all: Vec<Option<u64>>,
        below_longest: Vec<Option<u64>>,
    ) -> (Vec<u8>, Vec<Option<u64>>) {
        let lengths = lengths(classes);
        let Some(&longest) = lengths.last() else {
            return (lengths, vec![None; classes.len()]);
        };
        let n = lengths.len();
        let position = |len: u8| lengths.iter().position(|l| *l == len).unwrap_or(n);
        let (mut shortest_cost, mut longest_cost) = (0f64, 0f64);
        for (((len, _), _), (all, below)) in classes.iter().zip(all.iter().zip(&below_longest)) {
            let first = position(*len) + 1;
            shortest_cost += match all {
                Some(filter) => first as f64 + share(*filter) * (n - first) as f64,
                None => first as f64,
            };
            // The longest, then the others shortest first (the same positions).
            longest_cost += if *len == longest {
                1.0
            } else {
                let probes = 1 + first;
                match below {
                    Some(filter) => probes as f64 + share(*filter) * (n - probes) as f64,
                    None => probes as f64,
                }
            };
        }
        let longest_first = n > 1 && longest_cost < shortest_cost;
        let marks = if longest_first {
            below_longest
        } else {
            all.clone()
        };
        for ((_, class), marked) in classes.iter_mut().zip(marks) {
            if let Some(filter) = marked {
                class.flags |= AddrClass::LONGER;
                class.inside = filter;
            }
        }
        let mut order = lengths;
        if longest_first {
            order.pop();
            order.insert(0, longest);
        }
        (order, all)
    }

    /// One family's entries sorted by prefix, the order the programs probe the lengths
    /// in, and each entry's filter of every longer entry inside it.
    type Classified = (Vec<(Prefix, AddrClass)>, Vec<u8>, Vec<Option<u64>>);

    /// The kinds of entries, as indexes of [`Found`].
    const SEGMENT: usize = 0;
    const MANAGEMENT: usize = 1;
    const EXPOSED: usize = 2;
    const DECLARED: usize = 3;
    const HOST: usize = 4;
    const GATEWAY: usize = 5;
    const KINDS: usize = 6;

    /// For a prefix, the position (in its kind's list) of the longest entry of each kind
    /// that contains it or is it.
    type Found = [Option<u32>; KINDS];

    /// An entry of one kind: its address, its length, its kind, its position in its
    /// kind's list. Sorted, containing prefixes come before what they contain.
    type Entry = (u128, u8, u8, u32);

    /// Every prefix of one family, by kind, in the plan's order.
    struct Lists {
        segments: Vec<(Prefix, u32)>,
        management: Vec<(Prefix, RuleSet)>,
        exposed: Vec<(Prefix, RuleSet)>,
        declared: Vec<(Prefix, u32)>,
        host: Vec<Prefix>,
        gateways: Vec<Prefix>,
    }

    impl Lists {
        fn of(plan: &Plan, v4: bool) -> Lists {
            let family = |(is_v4, prefix): (bool, Prefix)| (is_v4 == v4).then_some(prefix);
            Lists {
                segments: of_family(&plan.v4, &plan.v6, v4),
                management: of_family(&plan.management_v4, &plan.management_v6, v4),
                exposed: of_family(&plan.exposed_v4, &plan.exposed_v6, v4),
                declared: plan
                    .vifs
                    .iter()
                    .flat_map(|vif| {
                        vif.addresses
                            .iter()
                            .filter_map(move |n| family(of_net(n)).map(|p| (p, vif.ifindex)))
                    })
                    .collect(),
                host: plan
                    .host_addresses
                    .iter()
                    .filter_map(|a| family(of_addr(a)))
                    .collect(),
                gateways: plan
                    .gateways
                    .iter()
                    .filter_map(|g| family(of_addr(&g.address)))
                    .collect(),
            }
        }

        fn entries(&self) -> Vec<Entry> {
            fn add<'a>(
                out: &mut Vec<Entry>,
                kind: usize,
                prefixes: impl Iterator<Item = &'a Prefix>,
            ) {
                out.extend(
                    prefixes
                        .enumerate()
                        .map(|(at, (len, addr))| (*addr, *len, kind as u8, at as u32)),
                );
            }
            let mut out = Vec::with_capacity(
                self.segments.len()
                    + self.management.len()
                    + self.exposed.len()
                    + self.declared.len()
                    + self.host.len()
                    + self.gateways.len(),
            );
            add(&mut out, SEGMENT, self.segments.iter().map(|(p, _)| p));
            add(&mut out, MANAGEMENT, self.management.iter().map(|(p, _)| p));
            add(&mut out, EXPOSED, self.exposed.iter().map(|(p, _)| p));
            add(&mut out, DECLARED, self.declared.iter().map(|(p, _)| p));
            add(&mut out, HOST, self.host.iter());
            add(&mut out, GATEWAY, self.gateways.iter());
            out
        }
    }

    /// One family's distinct prefixes, sorted by prefix, with what [`sweep`] found.
    struct Swept {
        prefixes: Vec<Prefix>,
        found: Vec<Found>,
        /// For each, the [`AddrClass::inside`] bits of every longer entry inside it
        /// (`None`: nothing inside)...
        all: Vec<Option<u64>>,
        /// ... and of those of a length other than the longest in use.
        below_longest: Vec<Option<u64>>,
    }

    /// Finds, in one pass over the entries sorted by address (a prefix before the longer
    /// ones inside it), each distinct prefix's longest entry of each kind containing it
    /// and the filters of the entries inside it: the prefixes that contain the current
    /// one are the stack of those not yet closed. Of two entries of one kind with the same
    /// prefix, the later in its list counts.
    fn sweep(mut entries: Vec<Entry>, v4: bool) -> Swept {
        entries.sort_unstable();
        let longest = entries.iter().map(|e| e.1).max().unwrap_or(0);
        // At most one node per entry: no growing (and copying) of the lists on the way.
        let mut nodes: Vec<(Prefix, Found)> = Vec::with_capacity(entries.len());
        let (mut all, mut below): (Vec<Option<u64>>, Vec<Option<u64>>) = (
            Vec::with_capacity(entries.len()),
            Vec::with_capacity(entries.len()),
        );
        let mut open: Vec<usize> = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let (addr, len, _, _) = entries[i];
            let mut found: Found = [None; KINDS];
            while let Some(&(a, l, kind, at)) = entries.get(i) {
                if (a, l) != (addr, len) {
                    break;
                }
                found[usize::from(kind)] = Some(at);
                i += 1;
            }
            while let Some(&top) = open.last() {
                let (top_len, top_addr) = nodes[top].0;
                if top_len <= len && mask(addr, top_len) == top_addr {
                    break;
                }
                open.pop();
            }
            if let Some(&parent) = open.last() {
                // The longest entry of a kind that the parent has found contains this one
                // too, and is the longest such that is not this one.
                let inherited = nodes[parent].1;
                for (own, from_parent) in found.iter_mut().zip(inherited) {
                    if own.is_none() {
                        *own = from_parent;
                    }
                }
                // Marking the parent is enough: its filter covers every address of this
                // entry, so the prefixes around it hold these bits already.
                let bits = filter_of((len, addr), v4);
                all[parent] = Some(all[parent].unwrap_or(0) | bits);
                if len != longest {
                    below[parent] = Some(below[parent].unwrap_or(0) | bits);
                }
            }
            open.push(nodes.len());
            nodes.push(((len, addr), found));
            all.push(None);
            below.push(None);
        }
        // The nodes are in address order (and, for one address, shorter first), each
        // (length, address) once: placing them by length, in that order, sorts them by
        // (length, address) in one pass (a counting sort, no comparisons).
        let mut starts = [0usize; 130];
        for ((len, _), _) in &nodes {
            starts[usize::from(*len) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut order = vec![0usize; nodes.len()];
        for (n, ((len, _), _)) in nodes.iter().enumerate() {
            let at = &mut starts[usize::from(*len)];
            order[*at] = n;
            *at += 1;
        }
        debug_assert!(order.windows(2).all(|w| nodes[w[0]].0 < nodes[w[1]].0));
        Swept {
            prefixes: order.iter().map(|&n| nodes[n].0).collect(),
            found: order.iter().map(|&n| nodes[n].1).collect(),
            all: order.iter().map(|&n| all[n]).collect(),
            below_longest: order.iter().map(|&n| below[n]).collect(),
        }
    }

    /// The entries of one family of a pair of per-family lists.
    fn of_family<V: Copy>(
        v4_list: &[(Ipv4Net, V)],
        v6_list: &[(Ipv6Net, V)],
        v4: bool,
    ) -> Vec<(Prefix, V)> {
        if v4 {
            v4_list
                .iter()
                .map(|(n, v)| (of_net(&IpNet::V4(*n)).1, *v))
                .collect()
        } else {
            v6_list
                .iter()
                .map(|(n, v)| (of_net(&IpNet::V6(*n)).1, *v))
                .collect()
        }
    }

    /// One family's prefixes by kind, swept, with the tenant of each segment prefix: the
    /// part of [`classify_family`] that names no rule set, so that the two families'
    /// can be worked out side by side.
    struct Prepared {
        lists: Lists,
        swept: Swept,
        tenant_of: Vec<u32>,
    }

    fn prepare_family(plan: &Plan, v4: bool) -> Prepared {
        let lists = Lists::of(plan, v4);
        let swept = sweep(lists.entries(), v4);
        // The tenant of each segment prefix, looked up once a segment: the plan lists a
        // segment's prefixes together.
        let mut last: Option<(u32, u32)> = None;
        let tenant_of: Vec<u32> = lists
            .segments
            .iter()
            .map(|&(_, segment)| match last {
                Some((id, tenant)) if id == segment => tenant,
                _ => {
                    let tenant = plan
                        .segment(segment)
                        .map(|s| s.tenant_id)
                        .unwrap_or_default();
                    last = Some((segment, tenant));
                    tenant
                }
            })
            .collect();
        Prepared {
            lists,
            swept,
            tenant_of,
        }
    }

    /// Every entry of the family, sorted by prefix, and the order the programs probe the
    /// lengths in: the classes of what [`prepare_family`] found, their rule sets named
    /// (ids taken in this order).
    fn classify_family(prepared: Prepared, rules: &mut RuleSets) -> Classified {
        let Prepared {
            lists,
            swept,
            tenant_of,
        } = prepared;
        let mut out = Vec::with_capacity(swept.prefixes.len());
        for (prefix, found) in swept.prefixes.iter().zip(&swept.found) {
            let at = |kind: usize| found[kind].map(|at| at as usize);
            let mut class = AddrClass::OUTSIDE;
            if let Some(at) = at(SEGMENT) {
                class.segment = lists.segments[at].1;
                class.tenant = tenant_of[at];
            }
            if let Some(at) = at(MANAGEMENT) {
                let services = &lists.management[at].1;
                class.flags |= AddrClass::MANAGEMENT;
                if services.flags & RuleSet::ALL != 0 {
                    class.flags |= AddrClass::MANAGEMENT_ALL;
                }
                class.management = rules.index(services);
            }
            if let Some(at) = at(EXPOSED) {
                class.flags |= AddrClass::EXPOSED;
                class.exposure = rules.index(&lists.exposed[at].1);
            }
            if let Some(at) = at(DECLARED) {
                class.flags |= AddrClass::DECLARED;
                class.owner = lists.declared[at].1;
            }
            if found[HOST].is_some() {
                class.flags |= AddrClass::HOST;
            }
            if found[GATEWAY].is_some() {
                class.flags |= AddrClass::GATEWAY;
            }
            out.push((*prefix, class));
        }
        let (order, inside) = order_and_mark(&mut out, swept.all, swept.below_longest);
        (out, order, inside)
    }

    /// Classifies every prefix and address of the plan, both families: their sweeps side
    /// by side (the IPv6 one on a thread of its own), then their classes, IPv4 first, so
    /// that rule set ids are taken in the same order whatever the timing.
    pub fn classify(plan: &Plan, rules: &mut RuleSets) -> Addresses {
        let (v4, v6) = std::thread::scope(|scope| {
            let v6 = scope.spawn(|| prepare_family(plan, false));
            let v4 = prepare_family(plan, true);
            match v6.join() {
                Ok(v6) => (v4, v6),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        });
        let (v4, v4_order, v4_inside) = classify_family(v4, rules);
        let (v6, v6_order, _) = classify_family(v6, rules);
        Addresses {
            v4,
            v6,
            v4_order,
            v4_inside,
            v6_order,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::testing::Rng;

        fn contains((outer_len, outer): Prefix, (len, addr): Prefix) -> bool {
            outer_len <= len && mask(addr, outer_len) == outer
        }

        /// The sweep finds, for every prefix, what comparing it with every entry finds:
        /// the longest entry of each kind containing it (the later of equal ones), and the
        /// filters of the entries inside it. Random entries of both families, crowded
        /// into a few addresses so that they nest, repeat and share prefixes across
        /// kinds.
        #[test]
        fn the_sweep_finds_what_comparing_every_pair_finds() {
            let mut rng = Rng(0x5eed);
            for round in 0..300 {
                let v4 = round % 2 == 0;
                let (base, bits) = if v4 {
                    (0x0a00_0000u128 << 96, 32u8)
                } else {
                    (0xfd00u128 << 112, 128u8)
                };
                let count = 1 + (rng.next() % 60) as usize;
                let mut entries: Vec<Entry> = Vec::new();
                let mut next_at = [0u32; KINDS];
                for _ in 0..count {
                    // Lengths within 8 of the full length, addresses within 256 of base.
                    let len = bits - (rng.next() % 9) as u8;
                    let offset = u128::from(rng.next() % 256) << (128 - u32::from(bits));
                    let addr = mask(base + offset, len);
                    let kind = (rng.next() % KINDS as u64) as usize;
                    entries.push((addr, len, kind as u8, next_at[kind]));
                    next_at[kind] += 1;
                }
                let swept = sweep(entries.clone(), v4);

                let mut distinct: Vec<Prefix> = entries.iter().map(|e| (e.1, e.0)).collect();
                distinct.sort_unstable();
                distinct.dedup();
                assert_eq!(swept.prefixes, distinct, "round {round}");
                let longest = entries.iter().map(|e| e.1).max().unwrap_or(0);
                for (n, prefix) in distinct.iter().enumerate() {
                    let found: Found = std::array::from_fn(|kind| {
                        // Longest first; of equal ones the later in the list.
                        entries
                            .iter()
                            .filter(|e| usize::from(e.2) == kind && contains((e.1, e.0), *prefix))
                            .max_by_key(|e| (e.1, e.3))
                            .map(|e| e.3)
                    });
                    assert_eq!(swept.found[n], found, "round {round}, {prefix:?}");
                    let inside = |skip: u8| {
                        distinct
                            .iter()
                            .filter(|p| p.0 > prefix.0 && p.0 != skip && contains(*prefix, **p))
                            .map(|p| filter_of(*p, v4))
                            .reduce(|a, b| a | b)
                    };
                    assert_eq!(swept.all[n], inside(u8::MAX), "round {round}, {prefix:?}");
                    assert_eq!(
                        swept.below_longest[n],
                        inside(longest),
                        "round {round}, {prefix:?}"
                    );
                }
            }
        }
    }
}
