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
    let flows: HashMap<(u32, u32), &RuleSet> = plan
        .flows
        .iter()
        .map(|(pair, rules)| (*pair, rules))
        .collect();
    let pairs = plan
        .neighbours
        .iter()
        .map(|(from, to)| {
            let mut info = PairInfo::default();
            if let Some(services) = flows.get(&(*from, *to)) {
                info.flags |= PairInfo::FLOW;
                info.flow = rules.index(services);
                info.flow_summary = Summary::of(services);
            }
            if let Some(services) = flows.get(&(*to, *from)) {
                info.flags |= PairInfo::BACK;
                info.back = rules.index(services);
                info.back_summary = Summary::of(services);
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
                                .segments
                                .get(v.segment as usize)
                                .map(|s| SegmentInfo {
                                    tenant: s.tenant_id,
                                    flags: s.flags,
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

/// The rule sets of one generation, each distinct set stored once.
struct RuleSets {
    generation: u32,
    index: HashMap<SetKey, u32>,
    sets: Vec<RuleSet>,
}

/// A rule set as a map key, hashed by the rules in use, one word each: the derived
/// `Hash` writes every field of all `MAX_RULES` rules one at a time, and a cloud-scale
/// plan looks up hundreds of thousands of sets (the flows of every segment pair). Equal
/// sets have the same rules in use, so they hash alike.
#[derive(PartialEq, Eq)]
struct SetKey(RuleSet);

impl std::hash::Hash for SetKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let set = &self.0;
        state.write_u64(u64::from(set.count) | u64::from(set.flags) << 32);
        let used = (set.count as usize).min(set.rules.len());
        for rule in &set.rules[..used] {
            state.write_u64(
                u64::from(rule.protocol)
                    | u64::from(rule.first_port) << 16
                    | u64::from(rule.last_port) << 32,
            );
        }
    }
}

impl RuleSets {
    fn new(generation: u32) -> Self {
        RuleSets {
            generation,
            index: HashMap::default(),
            sets: Vec::new(),
        }
    }

    /// The index of `set`, added if new.
    fn index(&mut self, set: &RuleSet) -> u32 {
        let i = self.sets.len() as u32;
        match self.index.entry(SetKey(*set)) {
            std::collections::hash_map::Entry::Occupied(found) => *found.get(),
            std::collections::hash_map::Entry::Vacant(new) => {
                new.insert(i);
                self.sets.push(*set);
                i
            }
        }
    }

    fn entries(&self) -> Vec<(RuleKey, RuleSet)> {
        self.sets
            .iter()
            .enumerate()
            .map(|(i, set)| {
                (
                    RuleKey {
                        generation: self.generation,
                        index: i as u32,
                    },
                    *set,
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

    /// Prefixes of one kind, found by longest match.
    struct Kind<V> {
        entries: HashMap<Prefix, V>,
        /// Longest first.
        lengths: Vec<u8>,
    }

    impl<V: Copy> Kind<V> {
        fn new(entries: impl IntoIterator<Item = (Prefix, V)>) -> Self {
            let entries: HashMap<Prefix, V> = entries.into_iter().collect();
            let mut lengths: Vec<u8> = entries.keys().map(|(len, _)| *len).collect();
            lengths.sort_unstable_by(|a, b| b.cmp(a));
            lengths.dedup();
            Kind { entries, lengths }
        }

        /// The value of the longest prefix of this kind containing `prefix`.
        fn longest(&self, (len, addr): Prefix) -> Option<V> {
            self.lengths
                .iter()
                .filter(|l| **l <= len)
                .find_map(|l| self.entries.get(&(*l, mask(addr, *l))).copied())
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

    /// For each entry, whether it contains an entry of a longer length other than
    /// `except` (`Some(filter)`: the [`AddrClass::inside`] bits of what they cover), or
    /// not (`None`). `index`: each entry's position in `classes`.
    fn containing(
        classes: &[(Prefix, AddrClass)],
        index: &HashMap<Prefix, usize>,
        lengths: &[u8],
        except: u8,
        v4: bool,
    ) -> Vec<Option<u64>> {
        let mut marked = vec![None; classes.len()];
        for ((len, addr), _) in classes.iter().filter(|((len, _), _)| *len != except) {
            let mut bits = None;
            for shorter in lengths.iter().take_while(|l| **l < *len) {
                if let Some(i) = index.get(&(*shorter, mask(*addr, *shorter))) {
                    let bits = *bits.get_or_insert_with(|| filter_of((*len, *addr), v4));
                    marked[*i] = Some(marked[*i].unwrap_or(0) | bits);
                }
            }
        }
        marked
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
    fn order_and_mark(
        classes: &mut [(Prefix, AddrClass)],
        v4: bool,
    ) -> (Vec<u8>, Vec<Option<u64>>) {
        let lengths = lengths(classes);
        let Some(&longest) = lengths.last() else {
            return (lengths, vec![None; classes.len()]);
        };
        let n = lengths.len();
        let position = |len: u8| lengths.iter().position(|l| *l == len).unwrap_or(n);
        let index: HashMap<Prefix, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, (prefix, _))| (*prefix, i))
            .collect();
        let all = containing(classes, &index, &lengths, u8::MAX, v4);
        let below_longest = containing(classes, &index, &lengths, longest, v4);
        drop(index);
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

    /// Every kind of prefix of one family.
    struct Kinds {
        v4: bool,
        segments: Kind<u32>,
        management: Kind<RuleSet>,
        exposed: Kind<RuleSet>,
        declared: Kind<u32>,
        host: Kind<()>,
        gateways: Kind<()>,
    }

    impl Kinds {
        fn all_prefixes(&self) -> impl Iterator<Item = Prefix> + '_ {
            self.segments
                .entries
                .keys()
                .chain(self.management.entries.keys())
                .chain(self.exposed.entries.keys())
                .chain(self.declared.entries.keys())
                .chain(self.host.entries.keys())
                .chain(self.gateways.entries.keys())
                .copied()
        }

        /// Every entry of the family, sorted by prefix, and the order the programs probe
        /// the lengths in.
        fn classify(&self, plan: &Plan, rules: &mut RuleSets) -> Classified {
            // Sorted and deduplicated: the entries come out sorted, and their rule sets
            // are numbered in that order.
            let mut prefixes: Vec<Prefix> = self.all_prefixes().collect();
            prefixes.sort_unstable();
            prefixes.dedup();
            let mut out = Vec::with_capacity(prefixes.len());
            for prefix in prefixes {
                let mut class = AddrClass::OUTSIDE;
                if let Some(segment) = self.segments.longest(prefix) {
                    class.segment = segment;
                    class.tenant = plan
                        .segments
                        .get(segment as usize)
                        .map(|s| s.tenant_id)
                        .unwrap_or_default();
                }
                if let Some(services) = self.management.longest(prefix) {
                    class.flags |= AddrClass::MANAGEMENT;
                    if services.flags & RuleSet::ALL != 0 {
                        class.flags |= AddrClass::MANAGEMENT_ALL;
                    }
                    class.management = rules.index(&services);
                }
                if let Some(services) = self.exposed.longest(prefix) {
                    class.flags |= AddrClass::EXPOSED;
                    class.exposure = rules.index(&services);
                }
                if let Some(owner) = self.declared.longest(prefix) {
                    class.flags |= AddrClass::DECLARED;
                    class.owner = owner;
                }
                if self.host.longest(prefix).is_some() {
                    class.flags |= AddrClass::HOST;
                }
                if self.gateways.longest(prefix).is_some() {
                    class.flags |= AddrClass::GATEWAY;
                }
                out.push((prefix, class));
            }
            let (order, inside) = order_and_mark(&mut out, self.v4);
            (out, order, inside)
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

    fn kinds(plan: &Plan, v4: bool) -> Kinds {
        let family = |(is_v4, prefix): (bool, Prefix)| (is_v4 == v4).then_some(prefix);
        Kinds {
            v4,
            segments: Kind::new(of_family(&plan.v4, &plan.v6, v4)),
            management: Kind::new(of_family(&plan.management_v4, &plan.management_v6, v4)),
            exposed: Kind::new(of_family(&plan.exposed_v4, &plan.exposed_v6, v4)),
            declared: Kind::new(plan.vifs.iter().flat_map(|vif| {
                vif.addresses
                    .iter()
                    .filter_map(|n| family(of_net(n)).map(|p| (p, vif.ifindex)))
                    .collect::<Vec<_>>()
            })),
            host: Kind::new(
                plan.host_addresses
                    .iter()
                    .filter_map(|a| family(of_addr(a)).map(|p| (p, ()))),
            ),
            gateways: Kind::new(
                plan.gateways
                    .iter()
                    .filter_map(|g| family(of_addr(&g.address)).map(|p| (p, ()))),
            ),
        }
    }

    /// Classifies every prefix and address of the plan, both families.
    pub fn classify(plan: &Plan, rules: &mut RuleSets) -> Addresses {
        let (v4, v4_order, v4_inside) = kinds(plan, true).classify(plan, rules);
        let (v6, v6_order, _) = kinds(plan, false).classify(plan, rules);
        Addresses {
            v4,
            v6,
            v4_order,
            v4_inside,
            v6_order,
        }
    }
}
