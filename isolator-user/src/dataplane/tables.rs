//! The policy maps of the kernel, generated from [`policy_tables!`]: writing a generation,
//! purging one, and reporting which generations each map holds, all in one order.

use std::collections::BTreeSet;

use std::os::fd::{AsFd, AsRawFd};

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, IterableMap, MapData, MapError},
};
use isolator_common::{
    AddrClass, AddrV4Key, AddrV6Key, DeclaredMacKey, GatewayKey, GenerationKey, LinkInfo, PairInfo,
    PairKey, PrefixLengths, RuleKey, RuleSet, Settings, UplinkKey, VifInfo, VifKey, VlanKey, maps,
};

use super::error::{DataplaneError, map_err};
use crate::encode::{Entries, entry_key, policy_tables};

/// A table's entries.
type Entry<T> = Vec<(<T as Table>::Key, <T as Table>::Value)>;

/// A policy map: entries keyed by generation, written, purged and listed by generation.
trait Table {
    type Key: Pod;
    type Value: Pod;
    fn put(&mut self, key: &Self::Key, value: &Self::Value) -> Result<(), MapError>;
    fn delete(&mut self, key: &Self::Key) -> Result<(), MapError>;
    /// Every key holding an entry.
    fn all_keys(&self) -> Result<Vec<Self::Key>, MapError>;
    fn generation_of(key: &Self::Key) -> u32;
    fn data(&self) -> &MapData;
    /// The value of the entry at `key`, if there is one.
    fn value(&self, key: &Self::Key) -> Result<Option<Self::Value>, MapError>;
    /// The keys of `generation` to remove, given the keys of `VIFS` of that generation;
    /// `None`: every key holding an entry of it (the default, a listing of the map).
    fn purge_keys(&self, _generation: u32, _vifs: &[VifKey]) -> Option<Vec<Self::Key>> {
        None
    }
    /// Every entry of generation 0 and every entry of generation 1, from one reading of
    /// the map (entries of any other generation are left out).
    fn entries_by_generation(&self) -> Result<[Entry<Self>; 2], MapError> {
        let mut out = [Vec::new(), Vec::new()];
        for key in self.all_keys()? {
            if let Some(list) = out.get_mut(Self::generation_of(&key) as usize)
                && let Some(value) = self.value(&key)?
            {
                list.push((key, value));
            }
        }
        Ok(out)
    }
    /// Adds or replaces every entry.
    fn put_all(&mut self, entries: &[(Self::Key, Self::Value)]) -> Result<(), MapError> {
        for (key, value) in entries {
            self.put(key, value)?;
        }
        Ok(())
    }
    /// Removes every key (each holding an entry).
    fn delete_all(&mut self, keys: &[Self::Key]) -> Result<(), MapError> {
        for key in keys {
            self.delete(key)?;
        }
        Ok(())
    }
}

/// An array indexed by [`isolator_common::vif_slot`] (`VIF_SLOTS`): a slot holds an
/// entry when it is not all zeroes; the slot tells the generation.
pub struct SlotArray<V: Pod>(Array<MapData, V>);

impl<V: Pod> TryFrom<aya::maps::Map> for SlotArray<V> {
    type Error = MapError;
    fn try_from(map: aya::maps::Map) -> Result<Self, MapError> {
        Ok(SlotArray(Array::try_from(map)?))
    }
}

impl<V: Pod + Default + PartialEq> Table for SlotArray<V> {
    type Key = u32;
    type Value = V;
    fn put(&mut self, key: &u32, value: &V) -> Result<(), MapError> {
        self.0.set(*key, *value, 0)
    }
    /// A slot cannot be removed: it is reset to all zeroes.
    fn delete(&mut self, key: &u32) -> Result<(), MapError> {
        self.0.set(*key, V::default(), 0)
    }
    /// The slots that hold an entry, read in batches.
    fn all_keys(&self) -> Result<Vec<u32>, MapError> {
        Ok(super::batch::entries::<u32, V>(self.0.map().fd().as_fd())
            .map_err(batch_err("BPF_MAP_LOOKUP_BATCH"))?
            .into_iter()
            // All zeroes, the state of a slot never written or cleared, is no entry.
            .filter(|(_, value)| *value != V::default())
            .map(|(key, _)| key)
            .collect())
    }
    fn generation_of(key: &u32) -> u32 {
        key / isolator_common::limits::VIF_SLOTS
    }
    /// The slots of the generation's `VIFS` entries, without listing the whole array (a
    /// purge is on every swap's path): the daemon writes a vif's slot after its `VIFS`
    /// entry and clears it before, so every slot in use has one (a slot changed behind
    /// the daemon's back is `isolator verify`'s to find, which reads the whole array).
    fn purge_keys(&self, generation: u32, vifs: &[VifKey]) -> Option<Vec<u32>> {
        Some(
            vifs.iter()
                .filter(|key| key.generation == generation)
                .filter_map(|key| isolator_common::vif_slot(key.generation, key.ifindex))
                .collect(),
        )
    }
    fn data(&self) -> &MapData {
        self.0.map()
    }
    fn value(&self, key: &u32) -> Result<Option<V>, MapError> {
        let value = self.0.get(key, 0)?;
        Ok((value != V::default()).then_some(value))
    }
    /// Read in batches.
    fn entries_by_generation(&self) -> Result<[Entry<Self>; 2], MapError> {
        let all = super::batch::entries::<u32, V>(self.0.map().fd().as_fd())
            .map_err(batch_err("BPF_MAP_LOOKUP_BATCH"))?;
        Ok(by_generation(
            all.into_iter().filter(|(_, value)| *value != V::default()),
            Self::generation_of,
        ))
    }
    fn put_all(&mut self, entries: &[(u32, V)]) -> Result<(), MapError> {
        super::batch::update(self.0.map().fd().as_fd(), entries)
            .map_err(batch_err("BPF_MAP_UPDATE_BATCH"))
    }
    fn delete_all(&mut self, keys: &[u32]) -> Result<(), MapError> {
        let zeroes: Vec<(u32, V)> = keys.iter().map(|key| (*key, V::default())).collect();
        self.put_all(&zeroes)
    }
}

/// `entries` split by generation (`generation_of` their key), 0 and 1, each in the order
/// given; entries of any other generation are left out.
fn by_generation<K, V>(
    entries: impl IntoIterator<Item = (K, V)>,
    generation_of: impl Fn(&K) -> u32,
) -> [Vec<(K, V)>; 2] {
    let mut out = [Vec::new(), Vec::new()];
    for (key, value) in entries {
        if let Some(list) = out.get_mut(generation_of(&key) as usize) {
            list.push((key, value));
        }
    }
    out
}

/// A failed batch call as aya reports a failed system call.
fn batch_err(call: &'static str) -> impl FnOnce(std::io::Error) -> MapError {
    move |io_error| MapError::SyscallError(aya::sys::SyscallError { call, io_error })
}

impl<V: Pod + Default + PartialEq> Table for Array<MapData, V> {
    type Key = u32;
    type Value = V;
    fn put(&mut self, key: &u32, value: &V) -> Result<(), MapError> {
        self.set(*key, *value, 0)
    }
    /// An array slot cannot be removed: it is reset to its default.
    fn delete(&mut self, key: &u32) -> Result<(), MapError> {
        self.set(*key, V::default(), 0)
    }
    /// The slots that hold something other than the default.
    fn all_keys(&self) -> Result<Vec<u32>, MapError> {
        let mut keys = Vec::new();
        for index in 0..self.len() {
            if self.get(&index, 0)? != V::default() {
                keys.push(index);
            }
        }
        Ok(keys)
    }
    fn generation_of(key: &u32) -> u32 {
        *key
    }
    fn data(&self) -> &MapData {
        self.map()
    }
    fn value(&self, key: &u32) -> Result<Option<V>, MapError> {
        self.get(key, 0).map(Some)
    }
}

impl<K: Pod + GenerationKey, V: Pod> Table for HashMap<MapData, K, V> {
    type Key = K;
    type Value = V;
    fn put(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        self.insert(key, value, 0)
    }
    fn delete(&mut self, key: &K) -> Result<(), MapError> {
        self.remove(key)
    }
    /// In batches of thousands (one system call each).
    fn all_keys(&self) -> Result<Vec<K>, MapError> {
        super::batch::keys::<K, V>(self.map().fd().as_fd())
            .map_err(batch_err("BPF_MAP_LOOKUP_BATCH"))
    }
    fn generation_of(key: &K) -> u32 {
        key.generation()
    }
    fn data(&self) -> &MapData {
        self.map()
    }
    fn value(&self, key: &K) -> Result<Option<V>, MapError> {
        match self.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            // Removed since it was listed.
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// Read in batches.
    fn entries_by_generation(&self) -> Result<[Entry<Self>; 2], MapError> {
        let all = super::batch::entries::<K, V>(self.map().fd().as_fd())
            .map_err(batch_err("BPF_MAP_LOOKUP_BATCH"))?;
        Ok(by_generation(all, Self::generation_of))
    }
    fn put_all(&mut self, entries: &[(K, V)]) -> Result<(), MapError> {
        super::batch::update(self.map().fd().as_fd(), entries)
            .map_err(batch_err("BPF_MAP_UPDATE_BATCH"))
    }
    fn delete_all(&mut self, keys: &[K]) -> Result<(), MapError> {
        super::batch::delete(self.map().fd().as_fd(), keys)
            .map_err(batch_err("BPF_MAP_DELETE_BATCH"))
    }
}

fn write<T: Table>(
    table: &mut T,
    name: &'static str,
    entries: &[(T::Key, T::Value)],
) -> Result<(), DataplaneError> {
    table
        .put_all(entries)
        .map_err(map_err(name, "adding entries"))
}

/// The bytes of a plain value, to compare and index by.
pub(crate) fn bytes_of<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: `T: Pod` is plain old data (`#[repr(C)]` integers and byte arrays with
    // explicit padding): every byte is initialised; the slice borrows `value`.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// The entries to add or replace in a table, and the keys to remove.
type Changes<K, V> = (Vec<(K, V)>, Vec<K>);

/// What turns a table's `base` entries into `entries` (each with a key at most once).
///
/// Entries at the start and at the end that are the same in both (key and value, at
/// the same place from that end) are skipped first: encoding is deterministic, so a
/// change to a few segments leaves most of each table's list in place. Only the rest is
/// compared by key; a key of the rest cannot be among the skipped entries, which both
/// lists share and hold each key once.
fn changes<K: Pod, V: Pod>(base: &[(K, V)], entries: &[(K, V)]) -> Changes<K, V> {
    let same = |(a, b): (&(K, V), &(K, V))| {
        bytes_of(&a.0) == bytes_of(&b.0) && bytes_of(&a.1) == bytes_of(&b.1)
    };
    let start = base
        .iter()
        .zip(entries)
        .take_while(|&pair| same(pair))
        .count();
    let (base, entries) = (&base[start..], &entries[start..]);
    let end = base
        .iter()
        .rev()
        .zip(entries.iter().rev())
        .take_while(|&pair| same(pair))
        .count();
    let (base, entries) = (&base[..base.len() - end], &entries[..entries.len() - end]);
    type Index<'a, V> = std::collections::HashMap<&'a [u8], &'a V, foldhash::fast::RandomState>;
    let mut old: Index<'_, V> = Index::with_capacity_and_hasher(base.len(), Default::default());
    for (key, value) in base {
        old.insert(bytes_of(key), value);
    }
    let mut put = Vec::new();
    for (key, value) in entries {
        match old.remove(bytes_of(key)) {
            Some(was) if bytes_of(was) == bytes_of(value) => {}
            _ => put.push((*key, *value)),
        }
    }
    let removed = if old.is_empty() {
        Vec::new()
    } else {
        base.iter()
            .filter(|(key, _)| old.contains_key(bytes_of(key)))
            .map(|(key, _)| *key)
            .collect()
    };
    (put, removed)
}

fn remove<T: Table>(
    table: &mut T,
    name: &'static str,
    keys: &[T::Key],
) -> Result<(), DataplaneError> {
    table.delete_all(keys).map_err(map_err(
        name,
        "removing entries the new policy does not have",
    ))
}

/// What a swap wrote into the kernel maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Entries added or replaced.
    pub put: usize,
    /// Entries removed.
    pub removed: usize,
    /// Whether the generation was written from nothing (its content was not known, or
    /// it was empty), rather than changed from the previous policy's entries.
    pub whole: bool,
    /// How long encoding the plan into entries took.
    pub encode: std::time::Duration,
    /// Whether the entries were worked out from what changed since the last plan, rather
    /// than from the whole plan.
    pub followed: bool,
    /// How long finding what differs from the generation's entries took.
    pub compare: std::time::Duration,
}

fn purge<T: Table>(
    table: &mut T,
    name: &'static str,
    generation: u32,
    vifs: &[VifKey],
) -> Result<(), DataplaneError> {
    let keys: Vec<T::Key> = match table.purge_keys(generation, vifs) {
        Some(keys) => keys,
        None => table
            .all_keys()
            .map_err(map_err(name, "listing keys"))?
            .into_iter()
            .filter(|k| T::generation_of(k) == generation)
            .collect(),
    };
    table
        .delete_all(&keys)
        .map_err(map_err(name, "removing old entries"))
}

/// What one map takes: its capacity and the kernel's own account of its memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footprint {
    pub name: &'static str,
    /// The most entries it can hold (both generations together).
    pub capacity: u32,
    /// Bytes of kernel memory it takes now, as the kernel reports it (`memlock` in the
    /// map's fdinfo: the buckets, and the entries allocated so far for maps without
    /// preallocation).
    pub memory_bytes: u64,
}

fn footprint<T: Table>(table: &T, name: &'static str) -> Result<Footprint, DataplaneError> {
    let data = table.data();
    let info = data
        .info()
        .map_err(map_err(name, "reading the map's information"))?;
    let fd = data.fd().as_fd().as_raw_fd();
    let memory_bytes = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    Ok(Footprint {
        name,
        capacity: info.max_entries(),
        memory_bytes,
    })
}

fn generation_of<T: Table>(_table: &T, key: &T::Key) -> u32 {
    T::generation_of(key)
}

fn generations<T: Table>(table: &T, name: &'static str) -> Result<BTreeSet<u32>, DataplaneError> {
    Ok(table
        .all_keys()
        .map_err(map_err(name, "listing keys"))?
        .iter()
        .map(T::generation_of)
        .collect())
}

/// The tables to which a new link adds entries of its own, and nothing else does
/// ([`PolicyTables::add_in_place`]): a vif's VLANs, its declared MAC, a link that is no
/// vif, the vif's entry and its slot.
const ADDED_IN_PLACE: [&str; 5] = [
    maps::VIF_VLANS,
    maps::DECLARED_MACS,
    maps::LINKS,
    maps::VIFS,
    maps::VIF_SLOTS,
];

/// The aya map type of a table kind.
macro_rules! map_type {
    (Array, $k:ty, $v:ty) => { Array<MapData, $v> };
    (Hash, $k:ty, $v:ty) => { HashMap<MapData, $k, $v> };
    (Slots, $k:ty, $v:ty) => { SlotArray<$v> };
}

macro_rules! define_tables {
    ($($field:ident: $name:ident => $kind:ident<$k:ty, $v:ty>,)*) => {
        /// The names of the policy maps, in write order.
        pub const POLICY_MAPS: [&str; [$(maps::$name),*].len()] = [$(maps::$name),*];

        /// The policy maps of the loaded object.
        pub struct PolicyTables {
            $( $field: map_type!($kind, $k, $v), )*
        }

        impl PolicyTables {
            /// Takes the policy maps out of the loaded object.
            pub fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
                Ok(PolicyTables {
                    $( $field: super::take(ebpf, maps::$name)?, )*
                })
            }

            /// Turns the entries of a generation that hold `base` into `entries` (both
            /// under the same generation), writing only what differs: removals first, in
            /// reverse write order (so the map never holds both at once), then additions
            /// and replacements in write order. The generation must not be active.
            pub fn write_changes(
                &mut self,
                base: &Entries,
                entries: &Entries,
            ) -> Result<Written, DataplaneError> {
                let mut written = Written::default();
                let started = std::time::Instant::now();
                $( let $field = changes(&base.$field, &entries.$field); )*
                written.compare = started.elapsed();
                {
                    let mut steps: Vec<&mut dyn FnMut() -> Result<usize, DataplaneError>> =
                        Vec::new();
                    $(
                        let table = &mut self.$field;
                        let keys = &$field.1;
                        let mut step = move || {
                            remove(table, maps::$name, keys)?;
                            Ok(keys.len())
                        };
                        steps.push(&mut step);
                    )*
                    for step in steps.into_iter().rev() {
                        written.removed += step()?;
                    }
                }
                $(
                    write(&mut self.$field, maps::$name, &$field.0)?;
                    written.put += $field.0.len();
                )*
                Ok(written)
            }

            /// Adds to a generation in force, in place, what turns `base` (what it holds)
            /// into `entries`, where that is only new keys in the tables a new link adds
            /// to ([`ADDED_IN_PLACE`]); `None` (nothing written) otherwise. Every state in
            /// between is the policy in force plus some of the new link's entries, the
            /// vif's own entry last: until it is there, the programs drop everything the
            /// vif sends or receives. A `VIF_SLOTS` slot is written twice, first without
            /// `PRESENT` (a program that reads it meanwhile takes the vif's `VIFS` entry,
            /// written before), then whole: its other bytes are the same in both writes, so
            /// no read of it mixes two values that differ.
            pub fn add_in_place(
                &mut self,
                base: &Entries,
                entries: &Entries,
            ) -> Result<Option<Written>, DataplaneError> {
                let started = std::time::Instant::now();
                let mut added = true;
                $(
                    let $field = changes(&base.$field, &entries.$field);
                    if !$field.1.is_empty() {
                        added = false;
                    }
                    if added && !$field.0.is_empty() {
                        if !ADDED_IN_PLACE.contains(&maps::$name) {
                            added = false;
                        } else {
                            let held: std::collections::HashSet<&[u8]> =
                                base.$field.iter().map(|(k, _)| bytes_of(k)).collect();
                            if $field.0.iter().any(|(k, _)| held.contains(bytes_of(k))) {
                                added = false;
                            }
                        }
                    }
                )*
                if !added {
                    return Ok(None);
                }
                let mut written = Written {
                    compare: started.elapsed(),
                    ..Written::default()
                };
                $(
                    if maps::$name != maps::VIF_SLOTS {
                        write(&mut self.$field, maps::$name, &$field.0)?;
                        written.put += $field.0.len();
                    }
                )*
                let slots = changes(&base.vif_slots, &entries.vif_slots).0;
                let hidden: Vec<_> = slots
                    .iter()
                    .map(|(k, v)| {
                        let mut v = *v;
                        v.flags &= !VifInfo::PRESENT;
                        (*k, v)
                    })
                    .collect();
                write(&mut self.vif_slots, maps::VIF_SLOTS, &hidden)?;
                write(&mut self.vif_slots, maps::VIF_SLOTS, &slots)?;
                written.put += slots.len();
                Ok(Some(written))
            }

            /// Removes every entry of `generation`, in reverse write order (vifs first,
            /// so that a straggling packet of that generation fails closed rather than
            /// finding half of a policy).
            pub fn purge(&mut self, generation: u32) -> Result<(), DataplaneError> {
                // VIF_SLOTS' slots in use are those of VIFS' entries (see `purge_keys`).
                let vifs = self
                    .vifs
                    .all_keys()
                    .map_err(map_err(maps::VIFS, "listing keys"))?;
                let vifs = &vifs;
                let mut steps: Vec<&mut dyn FnMut() -> Result<(), DataplaneError>> = Vec::new();
                $(
                    let table = &mut self.$field;
                    let mut step = move || purge(table, maps::$name, generation, vifs);
                    steps.push(&mut step);
                )*
                for step in steps.into_iter().rev() {
                    step()?;
                }
                Ok(())
            }

            /// Opens the policy maps pinned in `dir` (another process's: a running daemon's),
            /// to read them.
            pub fn from_pins(dir: &std::path::Path) -> Result<Self, DataplaneError> {
                Ok(PolicyTables {
                    $( $field: {
                        let path = dir.join(maps::$name);
                        let data = MapData::from_pin(&path)
                            .map_err(map_err(maps::$name, format!("opening {}", path.display())))?;
                        let map = aya::maps::Map::from_map_data(data)
                            .map_err(map_err(maps::$name, "unexpected map type"))?;
                        map.try_into().map_err(map_err(maps::$name, "unexpected map type"))?
                    }, )*
                })
            }

            /// Every entry of `generation`, as [`crate::encode::encode`] would make them.
            pub fn read(&self, generation: u32) -> Result<Entries, DataplaneError> {
                let [zero, one] = self.read_both()?;
                Ok(match generation {
                    0 => zero,
                    1 => one,
                    _ => Entries::default(),
                })
            }

            /// Every entry of generations 0 and 1, each map read once (a read returns
            /// both generations' entries anyway).
            pub fn read_both(&self) -> Result<[Entries; 2], DataplaneError> {
                let (mut zero, mut one) = (Entries::default(), Entries::default());
                $(
                    let [a, b] = self.$field.entries_by_generation()
                        .map_err(map_err(maps::$name, "reading entries"))?;
                    zero.$field = a;
                    one.$field = b;
                )*
                Ok([zero, one])
            }

            /// How many entries of `generation` the map named `map` holds.
            pub fn count_generation(&self, map: &str, generation: u32) -> Result<usize, DataplaneError> {
                $(
                    if map == maps::$name {
                        let keys = self.$field.all_keys().map_err(map_err(maps::$name, "listing keys"))?;
                        return Ok(keys.iter().filter(|k| generation_of(&self.$field, k) == generation).count());
                    }
                )*
                Ok(0)
            }

            /// Each policy map's capacity and kernel memory, in write order.
            pub fn footprints(&self) -> Result<Vec<Footprint>, DataplaneError> {
                Ok(vec![$( footprint(&self.$field, maps::$name)?, )*])
            }

            /// The generations that entries of each policy map belong to, by map name.
            pub fn generations(&self) -> Result<Vec<(&'static str, BTreeSet<u32>)>, DataplaneError> {
                Ok(vec![$( (maps::$name, generations(&self.$field, maps::$name)?), )*])
            }
        }

        // Entries and tables agree on every key and value type.
        const _: fn(&Entries) = |e| {
            $( let _: &[(entry_key!($kind, $k), $v)] = &e.$field; )*
        };
    };
}
policy_tables!(define_tables);

#[cfg(test)]
mod tests {
    use super::{by_generation, changes};

    /// One reading of a map split by generation: each entry in its generation's list, in
    /// the order read; a key of another generation (none is written) in neither.
    #[test]
    fn a_reading_splits_into_both_generations_in_order() {
        let read = [
            (10u32, 'a'),
            (21, 'b'),
            (11, 'c'),
            (35, 'x'),
            (20, 'd'),
            (12, 'e'),
        ];
        let [zero, one] = by_generation(read, |key| key / 10 - 1);
        assert_eq!(zero, vec![(10, 'a'), (11, 'c'), (12, 'e')]);
        assert_eq!(one, vec![(21, 'b'), (20, 'd')]);
    }

    /// Added, replaced and removed entries, and unchanged ones left alone, in the order
    /// of the new entries (additions) and of the old ones (removals).
    #[test]
    fn changes_hold_what_differs_and_nothing_else() {
        let base = [(1u32, 10u64), (2, 20), (3, 30), (4, 40)];
        let entries = [(5u32, 50u64), (3, 31), (1, 10), (6, 60)];
        let (put, removed) = changes(&base, &entries);
        assert_eq!(put, vec![(5, 50), (3, 31), (6, 60)]);
        assert_eq!(removed, vec![2, 4]);
        assert_eq!(changes(&base, &base), (vec![], vec![]));
        assert_eq!(changes::<u32, u64>(&[], &base), (base.to_vec(), vec![]));
        assert_eq!(changes::<u32, u64>(&base, &[]), (vec![], vec![1, 2, 3, 4]));
    }

    /// What turns `base` into `entries`, by comparing every key (the definition).
    fn by_every_key(base: &[(u32, u64)], entries: &[(u32, u64)]) -> (Vec<(u32, u64)>, Vec<u32>) {
        let put = entries
            .iter()
            .filter(|e| !base.contains(e))
            .copied()
            .collect();
        let removed = base
            .iter()
            .filter(|(k, _)| !entries.iter().any(|(key, _)| key == k))
            .map(|(k, _)| *k)
            .collect();
        (put, removed)
    }

    /// Skipping what both lists share at their ends finds what comparing every key
    /// finds: random lists with keys once each, changed here and there (values changed,
    /// entries added, removed or moved), at the ends too.
    #[test]
    fn skipping_the_shared_ends_finds_what_every_key_finds() {
        let mut seed = 0x007a_b1e5_u64;
        let mut next = move |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        let mut fresh = 1000u32;
        for round in 0..2000 {
            let len = next(40);
            let base: Vec<(u32, u64)> = (0..len).map(|k| (k as u32 * 3, next(4))).collect();
            let mut entries = base.clone();
            for _ in 0..next(4) {
                let at = next(entries.len() as u64 + 1) as usize;
                match next(4) {
                    0 if at < entries.len() => entries[at].1 += 1,
                    1 if at < entries.len() => {
                        entries.remove(at);
                    }
                    2 if at < entries.len() => {
                        let moved = entries.remove(at);
                        let to = next(entries.len() as u64 + 1) as usize;
                        entries.insert(to, moved);
                    }
                    _ => {
                        fresh += 1;
                        entries.insert(at, (fresh, 7));
                    }
                }
            }
            assert_eq!(
                changes(&base, &entries),
                by_every_key(&base, &entries),
                "round {round}: {base:?} -> {entries:?}"
            );
        }
    }

    /// How many entries of each table a swap from a plan of `before` to one of `after`
    /// writes or removes (all tables, through `changes`), by map name: only those with
    /// any.
    fn written(before: &str, after: &str) -> Vec<(&'static str, usize)> {
        use crate::compile::{HostView, Plan};
        let encode = |text: &str| {
            let policy = crate::policy::parse(text, "policy.yaml").expect("a valid policy");
            crate::encode::encode(&Plan::new(&policy, HostView::default()).expect("plan"), 1)
        };
        let (a, b) = (encode(before), encode(after));
        let mut out = Vec::new();
        macro_rules! count {
            ($($field:ident: $name:ident => $kind:ident<$k:ty, $v:ty>,)*) => {
                $(
                    let (put, removed) = changes(&a.$field, &b.$field);
                    if put.len() + removed.len() > 0 {
                        out.push((isolator_common::maps::$name, put.len() + removed.len()));
                    }
                )*
            };
        }
        crate::encode::policy_tables!(count);
        out
    }

    /// Issue 13, point 4: a reload that adds a segment, or a tenant, before all the others
    /// of a cloud of 400 segments writes that segment's entry and nothing else (ids
    /// follow from names, not from places: `compile::stable_ids`); its twin at the end of
    /// the file writes the same; the same tenants in another order write nothing. Before
    /// the ids did, the first wrote every address entry after it (1 200 and 800) and
    /// half the segment pairs.
    #[test]
    fn adding_a_segment_anywhere_writes_only_its_own_entries() {
        use crate::policy::synthetic::{Shape, generate};
        let cloud = generate(&Shape::cloud(400));
        let segment = "      - name: snew\n        interfaces: [\"vnew*\"]\n        prefixes: [\"10.250.0.0/28\", \"fd00:250::/64\"]\n";
        let first = "  - name: t0\n    segments:\n";
        let last = "  - name: t99\n    segments:\n";
        assert!(cloud.contains(first) && cloud.contains(last));
        let expected = vec![
            (isolator_common::maps::ADDRESSES_V4, 1),
            (isolator_common::maps::ADDRESSES_V6, 1),
        ];
        let in_first = cloud.replacen(first, &format!("{first}{segment}"), 1);
        assert_eq!(written(&cloud, &in_first), expected, "in the first tenant");
        let in_last = cloud.replacen(last, &format!("{last}{segment}"), 1);
        assert_eq!(written(&cloud, &in_last), expected, "in the last tenant");
        let tenant = format!("  - name: anew\n    segments:\n{segment}");
        let new_first = cloud.replacen(first, &format!("{tenant}{first}"), 1);
        assert_eq!(written(&cloud, &new_first), expected, "a new first tenant");
        assert_eq!(written(&in_first, &cloud), expected, "and removed again");
        // The tenants in reverse order: the same policy.
        let (head, tenants) = cloud.split_at(cloud.find(first).expect("tenants"));
        let mut entries: Vec<&str> = tenants.split_inclusive("\n  - name: ").collect();
        let mut reversed = String::from(head);
        if let Some(last_entry) = entries.pop() {
            reversed.push_str("  - name: ");
            reversed.push_str(last_entry.strip_prefix("  - name: ").unwrap_or(last_entry));
            reversed.push('\n');
        }
        for entry in entries.iter().rev() {
            let entry = entry.strip_suffix("\n  - name: ").unwrap_or(entry);
            reversed.push_str("  - name: ");
            reversed.push_str(entry.strip_prefix("  - name: ").unwrap_or(entry));
            reversed.push('\n');
        }
        assert_ne!(reversed, cloud);
        assert_eq!(written(&cloud, &reversed), vec![], "the tenants reordered");
    }
}
