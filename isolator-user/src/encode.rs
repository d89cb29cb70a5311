//! Encoding a plan into the entries of one policy generation of the kernel maps. Pure.
//!
//! [`policy_tables!`] is the one list of the generation-keyed policy maps, in the order
//! they are written (the vifs last, so that a vif entry only ever points at segments that
//! exist); [`Entries`] here and the kernel-facing tables in `dataplane::tables` (write,
//! purge, generations, pins) are both generated from it, so a map cannot be forgotten in
//! one of those places.

use aya::maps::lpm_trie::Key;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::IpAddr;

use isolator_common::{
    AddrKey, DeclaredMacKey, GatewayKey, Ipv4PrefixKey, Ipv6PrefixKey, LinkInfo, PairKey, RuleSet,
    SegmentInfo, SegmentKey, Settings, UplinkKey, VifAddrV4Key, VifAddrV6Key, VifInfo, VifKey,
    VlanKey, mapped,
};

use crate::compile::{Declared, ManagedVif, Plan, vif_flags};

/// Calls `$callback!` with the policy tables, in write order: `field: MAP_NAME =>
/// Kind<Key, Value>`, where `Kind` is `Array` (indexed by generation), `Hash` (keys carry
/// the generation) or `Lpm` (trie keys whose data carries the generation).
macro_rules! policy_tables {
    ($callback:ident) => {
        $callback! {
            settings: SETTINGS => Array<u32, Settings>,
            segments: SEGMENTS => Hash<SegmentKey, SegmentInfo>,
            prefixes_v4: PREFIXES_V4 => Lpm<Ipv4PrefixKey, u32>,
            prefixes_v6: PREFIXES_V6 => Lpm<Ipv6PrefixKey, u32>,
            management_v4: MANAGEMENT_V4 => Lpm<Ipv4PrefixKey, RuleSet>,
            management_v6: MANAGEMENT_V6 => Lpm<Ipv6PrefixKey, RuleSet>,
            exposed_v4: EXPOSED_V4 => Lpm<Ipv4PrefixKey, RuleSet>,
            exposed_v6: EXPOSED_V6 => Lpm<Ipv6PrefixKey, RuleSet>,
            flows: FLOWS => Hash<PairKey, RuleSet>,
            neighbours: NEIGHBOURS => Hash<PairKey, u32>,
            vif_addrs_v4: VIF_ADDRS_V4 => Lpm<VifAddrV4Key, u8>,
            vif_addrs_v6: VIF_ADDRS_V6 => Lpm<VifAddrV6Key, u8>,
            vif_vlans: VIF_VLANS => Hash<VlanKey, u8>,
            declared_macs: DECLARED_MACS => Hash<DeclaredMacKey, u32>,
            declared_v4: DECLARED_V4 => Lpm<Ipv4PrefixKey, u32>,
            declared_v6: DECLARED_V6 => Lpm<Ipv6PrefixKey, u32>,
            links: LINKS => Hash<VifKey, LinkInfo>,
            uplinks: UPLINKS => Hash<UplinkKey, u8>,
            host_addrs: HOST_ADDRS => Hash<AddrKey, u8>,
            gateways: GATEWAYS => Hash<GatewayKey, RuleSet>,
            vifs: VIFS => Hash<VifKey, VifInfo>,
        }
    };
}
pub(crate) use policy_tables;

/// The key type of a table kind's entries.
macro_rules! entry_key {
    (Array, $k:ty) => { $k };
    (Hash, $k:ty) => { $k };
    (Lpm, $k:ty) => { Key<$k> };
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
    let declared = Declared::of(plan);
    Entries {
        settings: vec![(generation, plan.settings)],
        segments: plan
            .segments
            .iter()
            .map(|s| {
                (
                    SegmentKey {
                        generation,
                        segment: s.id,
                    },
                    SegmentInfo {
                        tenant: s.tenant_id,
                        flags: s.flags,
                    },
                )
            })
            .collect(),
        prefixes_v4: v4_keys(&plan.v4, generation),
        prefixes_v6: v6_keys(&plan.v6, generation),
        management_v4: v4_keys(&plan.management_v4, generation),
        management_v6: v6_keys(&plan.management_v6, generation),
        exposed_v4: v4_keys(&plan.exposed_v4, generation),
        exposed_v6: v6_keys(&plan.exposed_v6, generation),
        flows: plan
            .flows
            .iter()
            .map(|((from, to), rules)| (pair(generation, *from, *to), *rules))
            .collect(),
        neighbours: plan
            .neighbours
            .iter()
            .map(|(from, to)| (pair(generation, *from, *to), 1))
            .collect(),
        vif_addrs_v4: declared_sources(plan, |vif, net| match net {
            IpNet::V4(n) => {
                let (len, data) = VifAddrV4Key::prefix(
                    generation,
                    vif.ifindex,
                    n.network().octets(),
                    n.prefix_len(),
                );
                Some((Key::new(len, data), 1))
            }
            IpNet::V6(_) => None,
        }),
        vif_addrs_v6: declared_sources(plan, |vif, net| match net {
            IpNet::V6(n) => {
                let (len, data) = VifAddrV6Key::prefix(
                    generation,
                    vif.ifindex,
                    n.network().octets(),
                    n.prefix_len(),
                );
                Some((Key::new(len, data), 1))
            }
            IpNet::V4(_) => None,
        }),
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
        declared_v4: declared_sources(plan, |vif, net| match net {
            IpNet::V4(n) => {
                let n = n.trunc();
                let (len, data) =
                    Ipv4PrefixKey::prefix(generation, n.network().octets(), n.prefix_len());
                Some((Key::new(len, data), vif.ifindex))
            }
            IpNet::V6(_) => None,
        }),
        declared_v6: declared_sources(plan, |vif, net| match net {
            IpNet::V6(n) => {
                let n = n.trunc();
                let (len, data) =
                    Ipv6PrefixKey::prefix(generation, n.network().octets(), n.prefix_len());
                Some((Key::new(len, data), vif.ifindex))
            }
            IpNet::V4(_) => None,
        }),
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
        host_addrs: plan
            .host_addresses
            .iter()
            .map(|addr| {
                (
                    AddrKey {
                        generation,
                        addr: bytes(*addr),
                    },
                    1,
                )
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
                    VifInfo {
                        segment: v.segment,
                        flags: vif_flags(v, &declared),
                        mac: v.mac.unwrap_or_default(),
                        _pad: [0; 2],
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
                        flags: VifInfo::QUARANTINED,
                        mac: [0; 6],
                        _pad: [0; 2],
                    },
                )
            }))
            .collect(),
    }
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

/// One entry per declared source address of every vif, as `entry` makes it (or skips it).
fn declared_sources<E>(plan: &Plan, entry: impl Fn(&ManagedVif, &IpNet) -> Option<E>) -> Vec<E> {
    plan.vifs
        .iter()
        .flat_map(|vif| {
            vif.addresses
                .iter()
                .filter_map(|net| entry(vif, net))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn v4_keys<V: Copy>(entries: &[(Ipv4Net, V)], generation: u32) -> Vec<(Key<Ipv4PrefixKey>, V)> {
    entries
        .iter()
        .map(|(net, value)| {
            let (len, data) =
                Ipv4PrefixKey::prefix(generation, net.network().octets(), net.prefix_len());
            (Key::new(len, data), *value)
        })
        .collect()
}

fn v6_keys<V: Copy>(entries: &[(Ipv6Net, V)], generation: u32) -> Vec<(Key<Ipv6PrefixKey>, V)> {
    entries
        .iter()
        .map(|(net, value)| {
            let (len, data) =
                Ipv6PrefixKey::prefix(generation, net.network().octets(), net.prefix_len());
            (Key::new(len, data), *value)
        })
        .collect()
}
