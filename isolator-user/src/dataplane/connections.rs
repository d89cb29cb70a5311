//! The per-vif state tables (tracked connections being opened and established, fragments
//! in flight): creating them before a vif is attached, dropping them with it, listing
//! connections, sweeping idle ones, revoking those a new policy no longer admits, and the
//! event counts.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::time::Duration;

use aya::{
    Ebpf, Pod,
    maps::{HashMap, HashOfMaps, Map, MapData, MapError},
};
use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH;
use isolator_common::{ConnKey, ConnState, FragKey, FragState, Settings, conntrack, limits, maps};

use super::Dataplane;
use super::error::{DataplaneError, io_err, map_err};
use crate::recheck::Recheck;

/// The kernel's `ENOTSUPP` (not in libc: internal, but returned to user space).
const ENOTSUPP: i32 = 524;

/// One kind of per-vif table: an outer map from a vif's ifindex to its own LRU table.
pub(super) struct PerVif<K, V> {
    outer: HashOfMaps<MapData, u32, MapData>,
    /// The outer map's descriptor (a duplicate), for inserts on other threads and the
    /// batch insert aya does not offer.
    outer_fd: OwnedFd,
    name: &'static str,
    capacity: u32,
    _kv: PhantomData<(K, V)>,
}

impl<K: Pod, V: Pod> PerVif<K, V> {
    fn take(ebpf: &mut Ebpf, name: &'static str, capacity: u32) -> Result<Self, DataplaneError> {
        let map = ebpf
            .take_map(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        // aya's HashOfMaps keeps its MapData to itself: a duplicate of the descriptor.
        let outer_fd = match &map {
            Map::HashOfMaps(data) => data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(io_err(format!("duplicating the descriptor of {name}")))?,
            _ => return Err(DataplaneError::MissingMap(name)),
        };
        let outer = HashOfMaps::try_from(map).map_err(map_err(name, "unexpected map type"))?;
        Ok(PerVif {
            outer,
            outer_fd,
            name,
            capacity,
            _kv: PhantomData,
        })
    }

    /// The vifs that have a table.
    fn vifs(&self) -> Result<Vec<u32>, DataplaneError> {
        self.outer
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(self.name, "listing the vifs' tables"))
    }

    /// New tables for those of `ifindexes` that have none, made but not yet in the outer
    /// map (`None`: every one has its table): [`NewTables::insert`] puts them there.
    fn prepare(&self, ifindexes: &BTreeSet<u32>) -> Result<Option<Insert>, DataplaneError> {
        let Some(mut insert) = self.prepare_unmade(ifindexes)? else {
            return Ok(None);
        };
        insert.make()?;
        Ok(Some(insert))
    }

    /// [`PerVif::prepare`], the tables to be made where they are inserted
    /// ([`Insert::run`]): making a preallocated LRU table takes a while.
    fn prepare_unmade(&self, ifindexes: &BTreeSet<u32>) -> Result<Option<Insert>, DataplaneError> {
        let present: BTreeSet<u32> = self.vifs()?.into_iter().collect();
        let missing: Vec<u32> = ifindexes.difference(&present).copied().collect();
        if missing.is_empty() {
            return Ok(None);
        }
        let outer = self.outer_fd.try_clone().map_err(io_err(format!(
            "duplicating the descriptor of {}",
            self.name
        )))?;
        Ok(Some(Insert {
            outer,
            name: self.name,
            short_name: self.short_name(),
            sizes: (size_of::<K>() as u32, size_of::<V>() as u32, self.capacity),
            ifindexes: missing,
            tables: Vec::new(),
        }))
    }

    /// A kernel map name (at most 15 characters) for a vif's table.
    fn short_name(&self) -> &'static str {
        match self.name {
            maps::CONNTRACK => "ct",
            maps::CONNTRACK_OPENING => "ct_open",
            _ => "frag",
        }
    }

    /// Drops the table of `ifindex` (the kernel frees it once no program holds it).
    fn remove(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        match self.outer.remove(&ifindex) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(map_err(
                self.name,
                format!("dropping the table of ifindex {ifindex}"),
            )(e)),
        }
    }

    /// The table of `ifindex`.
    fn table(&self, ifindex: u32) -> Result<HashMap<MapData, K, V>, DataplaneError> {
        let data: MapData = self.outer.get(&ifindex, 0).map_err(map_err(
            self.name,
            format!("opening the table of ifindex {ifindex}"),
        ))?;
        HashMap::try_from(Map::LruHashMap(data)).map_err(map_err(
            self.name,
            format!("the table of ifindex {ifindex}"),
        ))
    }

    /// Every entry of every vif's table: (ifindex, key, value).
    fn entries(&self) -> Result<Vec<(u32, K, V)>, DataplaneError> {
        let mut out = Vec::new();
        for ifindex in self.vifs()? {
            for item in self.table(ifindex)?.iter() {
                let (key, value) = item.map_err(map_err(self.name, "listing entries"))?;
                out.push((ifindex, key, value));
            }
        }
        Ok(out)
    }

    /// Removes `key` from the table of `ifindex`; `false` if it was gone already (ended or
    /// evicted meanwhile).
    fn remove_entry(&self, ifindex: u32, key: &K) -> Result<bool, DataplaneError> {
        let mut table = self.table(ifindex)?;
        match table.remove(key) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(map_err(self.name, "removing an entry")(e)),
        }
    }
}

/// New tables of one kind, to be put into their outer map.
struct Insert {
    /// A duplicate of the outer map's descriptor.
    outer: OwnedFd,
    name: &'static str,
    /// The prefix of the tables' kernel names.
    short_name: &'static str,
    /// Key size, value size and capacity of a table.
    sizes: (u32, u32, u32),
    ifindexes: Vec<u32>,
    /// Made (one per ifindex), or still to be made.
    tables: Vec<MapData>,
}

impl Insert {
    /// Makes the tables, new and empty, not yet in the outer map.
    fn make(&mut self) -> Result<(), DataplaneError> {
        if !self.tables.is_empty() {
            return Ok(());
        }
        let (key, value, capacity) = self.sizes;
        for ifindex in &self.ifindexes {
            // The kernel requires every inner table to match the object's template: type,
            // key and value size, capacity and flags.
            let spec = aya_obj::Map::new_from_params(
                BPF_MAP_TYPE_LRU_HASH as u32,
                key,
                value,
                capacity,
                0,
            );
            let table = MapData::create(spec, &format!("{}_{ifindex}", self.short_name), None)
                .map_err(map_err(
                    self.name,
                    format!("creating the table of ifindex {ifindex}"),
                ))?;
            self.tables.push(table);
        }
        Ok(())
    }

    /// Puts the tables into the outer map. The kernel waits for an RCU grace period after
    /// every change to a map of maps (so that no program still holds what was replaced):
    /// about 10 ms here. One `BPF_MAP_UPDATE_BATCH` waits once for all of them; where
    /// the kernel has no batch operations on this map type, one update each.
    fn run(mut self) -> Result<(), DataplaneError> {
        self.make()?;
        let fds: Vec<u32> = self
            .tables
            .iter()
            .map(|t| t.fd().as_fd().as_raw_fd() as u32)
            .collect();
        let outcome = match self.ifindexes.as_slice() {
            [ifindex] => update_elem(&self.outer, ifindex, &fds[0]),
            _ => match update_batch(&self.outer, &self.ifindexes, &fds) {
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
                    ) =>
                {
                    self.ifindexes
                        .iter()
                        .zip(&fds)
                        .try_for_each(|(ifindex, fd)| update_elem(&self.outer, ifindex, fd))
                }
                other => other,
            },
        };
        outcome.map_err(|e| {
            io_err(format!(
                "adding the tables of {} vif(s) (ifindex {:?}) to {}",
                self.ifindexes.len(),
                self.ifindexes,
                self.name
            ))(e)
        })
    }
}

/// New per-vif tables of every kind, made but not yet in their outer maps
/// ([`VifState::prepare`]). Inserting them waits for RCU grace periods, and needs nothing
/// of the dataplane: it can run on another thread while the dataplane does other work.
pub(super) struct NewTables(Vec<Insert>);

impl NewTables {
    /// Whether there is nothing to insert.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Makes and inserts the tables, each kind on a thread of its own, and returns at
    /// once: [`Inserting::await_in_place`] waits until the programs can use them.
    /// `delays` (for tests, [`Dataplane::delay_table_insertions`]): a pause before each
    /// insertion, and one after it that stands for a long grace period.
    pub(super) fn start(
        self,
        delays: Option<(Duration, Duration)>,
    ) -> Result<Inserting, DataplaneError> {
        let mut inserting = Inserting {
            watch: Vec::with_capacity(self.0.len()),
            threads: Vec::with_capacity(self.0.len()),
        };
        for insert in self.0 {
            let outer = insert.outer.try_clone().map_err(io_err(format!(
                "duplicating the descriptor of {}",
                insert.name
            )))?;
            inserting
                .watch
                .push((outer, insert.name, insert.ifindexes.clone()));
            let thread = std::thread::Builder::new()
                .name("tables".into())
                .spawn(move || {
                    let Some((before, after)) = delays else {
                        return insert.run();
                    };
                    std::thread::sleep(before);
                    let outcome = insert.run();
                    std::thread::sleep(after);
                    outcome
                })
                .map_err(io_err("starting a thread that inserts state tables"))?;
            inserting.threads.push(thread);
        }
        Ok(inserting)
    }

    /// Puts every new table into its outer map, each kind on a thread of its own, so that
    /// their grace periods pass together (one wait rather than one per kind).
    pub(super) fn insert(self) -> Result<(), DataplaneError> {
        let mut inserts = self.0;
        let Some(last) = inserts.pop() else {
            return Ok(());
        };
        std::thread::scope(|scope| {
            let others: Vec<_> = inserts
                .into_iter()
                .map(|insert| scope.spawn(move || insert.run()))
                .collect();
            let mut outcome = last.run();
            for other in others {
                let joined = other
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                outcome = outcome.and(joined);
            }
            outcome
        })
    }
}

/// State tables being inserted on threads of their own ([`NewTables::start`]). A table
/// is in its outer map, and the programs use it, as soon as the kernel has put it there;
/// the system call then waits for an RCU grace period (tens of milliseconds on a busy
/// host) before it returns, which nothing here needs: [`Inserting::await_in_place`]
/// watches the outer maps instead, and the threads finish in the background.
pub(super) struct Inserting {
    /// For each kind: a duplicate of the outer map's descriptor, its name, and the
    /// ifindexes whose tables are not yet seen in it.
    watch: Vec<(OwnedFd, &'static str, Vec<u32>)>,
    threads: Vec<std::thread::JoinHandle<Result<(), DataplaneError>>>,
}

impl Inserting {
    /// Whether every insertion is over (its grace period passed, or it failed).
    pub(super) fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for the insertions to end: their outcome.
    pub(super) fn finish(&mut self) -> Result<(), DataplaneError> {
        let mut outcome = Ok(());
        for thread in std::mem::take(&mut self.threads) {
            let joined = thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            outcome = outcome.and(joined);
        }
        outcome
    }

    /// Waits until every table is in its outer map, not for the grace periods after. An
    /// insertion that fails is waited for, and its error returned.
    pub(super) fn await_in_place(&mut self) -> Result<(), DataplaneError> {
        let mut pause = Duration::from_micros(20);
        loop {
            if self.in_place()? {
                return Ok(());
            }
            if self.is_finished() {
                self.finish()?;
                if self.in_place()? {
                    return Ok(());
                }
                let (_, name, missing) = self
                    .watch
                    .iter()
                    .find(|(_, _, missing)| !missing.is_empty())
                    .expect("not in place");
                return Err(io_err(format!(
                    "adding the tables of ifindex {missing:?} to {name}"
                ))(std::io::Error::other(
                    "inserted, but not in the map (removed meanwhile?)",
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// Whether every table is in its outer map now (those seen once stay seen: only the
    /// dataplane removes them).
    fn in_place(&mut self) -> Result<bool, DataplaneError> {
        for (outer, name, missing) in &mut self.watch {
            // The batch inserts in order: the last is the last to come.
            while let Some(ifindex) = missing.last() {
                let present = lookup_elem(outer, ifindex).map_err(io_err(format!(
                    "looking up the table of ifindex {ifindex} in {name}"
                )))?;
                if !present {
                    return Ok(false);
                }
                missing.pop();
            }
        }
        Ok(true)
    }
}

/// `BPF_MAP_LOOKUP_ELEM` of `key` in the map of maps `map`: whether a table is there.
fn lookup_elem(map: &OwnedFd, key: &u32) -> std::io::Result<bool> {
    /// `BPF_MAP_LOOKUP_ELEM` of `enum bpf_cmd`.
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    // The inner map's id.
    let mut id = 0u32;
    // The element member of `union bpf_attr`: map_fd (and padding), key, value, flags.
    let mut attr = [0u8; 32];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(std::ptr::from_ref(key) as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(std::ptr::from_mut(&mut id) as u64).to_ne_bytes());
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_UPDATE_ELEM` of `value` under `key` in the map `map`.
fn update_elem(map: &OwnedFd, key: &u32, value: &u32) -> std::io::Result<()> {
    /// `BPF_MAP_UPDATE_ELEM` of `enum bpf_cmd`.
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    // The element member of `union bpf_attr`: map_fd (and padding), key, value, flags.
    let mut attr = [0u8; 32];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(std::ptr::from_ref(key) as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(std::ptr::from_ref(value) as u64).to_ne_bytes());
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

/// `BPF_MAP_UPDATE_BATCH` of `values` under `keys` in the map `map`.
fn update_batch(map: &OwnedFd, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    /// `BPF_MAP_UPDATE_BATCH` of `enum bpf_cmd`.
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    // The `batch` member of `union bpf_attr`: in_batch, out_batch, keys, values,
    // count, map_fd, elem_flags, flags.
    let mut attr = [0u8; 56];
    attr[16..24].copy_from_slice(&(keys.as_ptr() as u64).to_ne_bytes());
    attr[24..32].copy_from_slice(&(values.as_ptr() as u64).to_ne_bytes());
    attr[32..36].copy_from_slice(&(keys.len().min(values.len()) as u32).to_ne_bytes());
    attr[36..40].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)
}

/// The `bpf` system call with `attr` (a zero-padded member of `union bpf_attr` whose
/// pointers stay valid during the call).
fn bpf(command: libc::c_long, attr: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: `attr` is a zero-padded member of `union bpf_attr` of the size passed; the
    // callers' pointers in it (keys and values, `count` u32s each) are alive during the
    // call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The per-vif state tables of the object.
pub(super) struct VifState {
    established: PerVif<ConnKey, ConnState>,
    opening: PerVif<ConnKey, ConnState>,
    fragments: PerVif<FragKey, FragState>,
}

impl VifState {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Ok(VifState {
            established: PerVif::take(ebpf, maps::CONNTRACK, limits::CONNECTIONS_PER_VIF)?,
            opening: PerVif::take(ebpf, maps::CONNTRACK_OPENING, limits::OPENING_PER_VIF)?,
            fragments: PerVif::take(ebpf, maps::FRAGMENTS, limits::FRAGMENTS_PER_VIF)?,
        })
    }

    /// Gives each vif its tables (kept where it has them: a restarted daemon finds them).
    pub(super) fn ensure_all(
        &mut self,
        ifindexes: impl IntoIterator<Item = u32>,
    ) -> Result<(), DataplaneError> {
        self.prepare(ifindexes)?.insert()
    }

    /// The tables the vifs that have none need, made but not yet in place: the waits of
    /// [`NewTables::insert`] can then pass on another thread.
    pub(super) fn prepare(
        &self,
        ifindexes: impl IntoIterator<Item = u32>,
    ) -> Result<NewTables, DataplaneError> {
        let ifindexes: BTreeSet<u32> = ifindexes.into_iter().collect();
        let inserts = [
            self.established.prepare(&ifindexes)?,
            self.opening.prepare(&ifindexes)?,
            self.fragments.prepare(&ifindexes)?,
        ];
        Ok(NewTables(inserts.into_iter().flatten().collect()))
    }

    /// [`VifState::prepare`], the tables made where they are inserted.
    pub(super) fn prepare_unmade(
        &self,
        ifindexes: impl IntoIterator<Item = u32>,
    ) -> Result<NewTables, DataplaneError> {
        let ifindexes: BTreeSet<u32> = ifindexes.into_iter().collect();
        let inserts = [
            self.established.prepare_unmade(&ifindexes)?,
            self.opening.prepare_unmade(&ifindexes)?,
            self.fragments.prepare_unmade(&ifindexes)?,
        ];
        Ok(NewTables(inserts.into_iter().flatten().collect()))
    }

    /// Drops a vif's tables: its connections and fragments end with it.
    pub(super) fn remove(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.established.remove(ifindex)?;
        self.opening.remove(ifindex)?;
        self.fragments.remove(ifindex)
    }

    /// The vifs that have tables.
    pub(super) fn vifs(&self) -> Result<BTreeSet<u32>, DataplaneError> {
        let mut vifs: BTreeSet<u32> = self.established.vifs()?.into_iter().collect();
        vifs.extend(self.opening.vifs()?);
        vifs.extend(self.fragments.vifs()?);
        Ok(vifs)
    }
}

/// A tracked connection as the kernel holds it, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// The vif whose table holds it.
    pub vif: u32,
    pub key: ConnKey,
    pub state: ConnState,
    /// In the vif's opening table (not answered yet).
    pub opening: bool,
}

impl Dataplane {
    /// The vifs that have their state tables (connections, fragments).
    pub fn vifs_with_state(&self) -> Result<BTreeSet<u32>, DataplaneError> {
        self.state.vifs()
    }

    /// The vifs that have every kind of state table (connections being opened and
    /// established, fragments).
    pub fn vifs_with_every_table(&self) -> Result<BTreeSet<u32>, DataplaneError> {
        let opening: BTreeSet<u32> = self.state.opening.vifs()?.into_iter().collect();
        let fragments: BTreeSet<u32> = self.state.fragments.vifs()?.into_iter().collect();
        Ok(self
            .state
            .established
            .vifs()?
            .into_iter()
            .filter(|i| opening.contains(i) && fragments.contains(i))
            .collect())
    }

    /// Every tracked connection, in every vif's tables.
    pub fn tracked(&self) -> Result<Vec<Tracked>, DataplaneError> {
        let established = self
            .state
            .established
            .entries()?
            .into_iter()
            .map(|(vif, key, state)| Tracked {
                vif,
                key,
                state,
                opening: false,
            });
        let opening = self
            .state
            .opening
            .entries()?
            .into_iter()
            .map(|(vif, key, state)| Tracked {
                vif,
                key,
                state,
                opening: true,
            });
        Ok(established.chain(opening).collect())
    }

    /// Every tracked connection: its key and state.
    pub fn connections(&self) -> Result<Vec<(ConnKey, ConnState)>, DataplaneError> {
        Ok(self
            .tracked()?
            .into_iter()
            .map(|t| (t.key, t.state))
            .collect())
    }

    fn remove_tracked(&self, t: &Tracked) -> Result<bool, DataplaneError> {
        if t.opening {
            self.state.opening.remove_entry(t.vif, &t.key)
        } else {
            self.state.established.remove_entry(t.vif, &t.key)
        }
    }

    /// Removes every tracked connection of every vif and returns how many it removed
    /// (the differential test judges each frame afresh, as the stateless model does).
    pub fn forget_connections(&mut self) -> Result<u64, DataplaneError> {
        let mut removed = 0;
        for t in self.tracked()? {
            if self.remove_tracked(&t)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes tracked connections idle past their timeout under `settings` (the kernel
    /// removes them only when a packet looks them up) and returns how many it removed.
    pub fn sweep_connections(&mut self, settings: &Settings) -> Result<u64, DataplaneError> {
        let now = monotonic_ns();
        let mut removed = 0;
        for t in self.tracked()? {
            let idle = now.saturating_sub(t.state.last_seen_ns);
            if idle > settings.timeout_ns(t.key.protocol, t.state.state)
                && self.remove_tracked(&t)?
            {
                removed += 1;
            }
        }
        self.count_event(conntrack::EVENT_SWEPT, removed)?;
        Ok(removed)
    }

    /// Removes the tracked connections the policy in `recheck` would not admit (see
    /// [`Recheck`]) and returns how many it removed. Run after every policy swap.
    pub fn revoke_connections(&mut self, recheck: &Recheck) -> Result<u64, DataplaneError> {
        // The connections of vifs whose tables the swap still to be retired drops are
        // released with them there, not revoked here.
        let leaving = |vif: u32| {
            self.retiring
                .as_ref()
                .is_some_and(|retiring| !retiring.keep.contains(&vif))
        };
        let revoked: Vec<Tracked> = self
            .tracked()?
            .into_iter()
            .filter(|t| !leaving(t.vif) && !recheck.admits(&t.key, &t.state))
            .collect();
        let mut removed = 0;
        for t in revoked {
            if self.remove_tracked(&t)? {
                removed += 1;
            }
        }
        self.count_event(conntrack::EVENT_REVOKED, removed)?;
        Ok(removed)
    }

    /// Connection tracking: (entries in all tables, their capacity, events by
    /// [`conntrack`] index summed over CPUs).
    pub fn conntrack(
        &self,
    ) -> Result<(u64, u64, [u64; conntrack::EVENTS as usize]), DataplaneError> {
        let mut entries = 0;
        let mut capacity = 0;
        for table in [&self.state.established, &self.state.opening] {
            // Not the spares made ahead of links (empty, no vif's yet), nor those another
            // link took, which the next retirement drops.
            let spares = self.spares();
            for vif in table.vifs()?.into_iter().filter(|v| {
                !spares.contains(v)
                    && (self.attached.contains_key(v) || !self.spares_taken.contains(v))
            }) {
                entries += table.table(vif)?.keys().count() as u64;
                capacity += u64::from(table.capacity);
            }
        }
        let mut events = [0u64; conntrack::EVENTS as usize];
        for (i, total) in events.iter_mut().enumerate() {
            let per_cpu = self
                .conntrack_events
                .get(&(i as u32), 0)
                .map_err(map_err(maps::CONNTRACK_EVENTS, "reading"))?;
            *total = per_cpu.iter().sum();
        }
        Ok((entries, capacity, events))
    }

    /// Drops the state tables of vifs other than `keep` (ifindexes): those of vifs that
    /// are gone or no longer managed. Returns how many vifs' tables it dropped.
    pub fn prune_vif_state(&mut self, keep: &BTreeSet<u32>) -> Result<usize, DataplaneError> {
        let stale: Vec<u32> = self.state.vifs()?.difference(keep).copied().collect();
        for ifindex in &stale {
            let mut held = 0;
            for table in [&self.state.established, &self.state.opening] {
                if table.vifs()?.contains(ifindex) {
                    held += table.table(*ifindex)?.keys().count() as u64;
                }
            }
            self.state.remove(*ifindex)?;
            self.count_event(conntrack::EVENT_RELEASED, held)?;
        }
        Ok(stale.len())
    }

    /// Adds `n` to the daemon's own event counter `event` (one of the `EVENT_*` that only
    /// the daemon writes), in the pinned map.
    fn count_event(&mut self, event: u32, n: u64) -> Result<(), DataplaneError> {
        if n == 0 {
            return Ok(());
        }
        let total = self.event_total(event)?;
        self.set_event(event, total + n)
    }

    fn event_total(&self, event: u32) -> Result<u64, DataplaneError> {
        let per_cpu = self
            .conntrack_events
            .get(&event, 0)
            .map_err(map_err(maps::CONNTRACK_EVENTS, "reading"))?;
        Ok(per_cpu.iter().sum())
    }

    /// Sets the daemon's own event counter `event` to `value` (kept in the first CPU's
    /// slot, the others zero).
    fn set_event(&mut self, event: u32, value: u64) -> Result<(), DataplaneError> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| io_err(format!("counting CPUs for {}", maps::CONNTRACK_EVENTS))(e))?;
        let mut values = vec![0u64; cpus];
        values[0] = value;
        let values = aya::maps::PerCpuValues::try_from(values)
            .map_err(io_err(format!("writing {}", maps::CONNTRACK_EVENTS)))?;
        self.conntrack_events
            .set(event, values, 0)
            .map_err(map_err(maps::CONNTRACK_EVENTS, "writing"))
    }

    /// Records `value` as the highest eviction count reported (see
    /// [`conntrack::EVENT_EVICTED_REPORTED`]).
    pub fn record_evicted_reported(&mut self, value: u64) -> Result<(), DataplaneError> {
        self.set_event(conntrack::EVENT_EVICTED_REPORTED, value)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Dataplane {
    /// Gives the ifindexes `wanted` (the next ones the kernel will give new links) empty
    /// state tables ahead of any link, made and inserted on threads of their own. Tables
    /// are keyed by ifindex and only the programs attached to that ifindex use them, so a
    /// spare that another kind of link takes stays empty, and goes at the next retirement
    /// once [`Dataplane::forget_spares_up_to`] has let it go. One batch at a time; returns
    /// how many tables' ifindexes it started on.
    pub fn prepare_spares(
        &mut self,
        wanted: impl IntoIterator<Item = u32>,
    ) -> Result<usize, DataplaneError> {
        self.collect_spares(false)?;
        if self.sparing.is_some() {
            return Ok(0);
        }
        let wanted: BTreeSet<u32> = wanted
            .into_iter()
            .filter(|i| !self.attached.contains_key(i) && !self.spares.contains(i))
            .collect();
        let tables = self.state.prepare_unmade(wanted.iter().copied())?;
        if tables.is_empty() {
            // Present already (a restarted daemon's, say): spares all the same.
            self.spares.extend(wanted);
            return Ok(0);
        }
        let count = wanted.len();
        self.sparing = Some((wanted, tables.start(self.insert_delays)?));
        Ok(count)
    }

    /// Takes the spare batch's outcome once its insertions are over (or, with `wait`,
    /// waits for them).
    pub(super) fn collect_spares(&mut self, wait: bool) -> Result<(), DataplaneError> {
        let done = self
            .sparing
            .as_ref()
            .is_some_and(|(_, inserting)| wait || inserting.is_finished());
        if !done {
            return Ok(());
        }
        let (batch, mut inserting) = self.sparing.take().expect("checked above");
        inserting.finish()?;
        self.spares.extend(batch);
        Ok(())
    }

    /// Waits until the spare batch's tables are in place if it is making tables for one
    /// of `ifindexes` (about to be given tables of their own). Not for its grace periods:
    /// a burst of new links whose first ones are among the spares does not wait for them.
    pub(super) fn await_spares_of(&mut self, ifindexes: impl IntoIterator<Item = u32>) {
        let Some((batch, inserting)) = self.sparing.as_mut() else {
            return;
        };
        if !ifindexes.into_iter().any(|i| batch.contains(&i)) {
            return;
        }
        if let Err(e) = inserting.await_in_place() {
            // Over (a failed insertion is waited for): its tables are made when needed.
            tracing::debug!(error = %crate::error_chain(&e), "spare state tables failed; made when needed");
            self.sparing = None;
        }
    }

    /// For tests: each insertion of state tables waits `before` on its thread, and its
    /// thread `after` it (as a long RCU grace period would).
    #[doc(hidden)]
    pub fn delay_table_insertions(&mut self, before: Duration, after: Duration) {
        self.insert_delays = Some((before, after));
    }

    /// The ifindexes of the spare batch being inserted.
    pub(super) fn spares_pending(&self) -> BTreeSet<u32> {
        self.sparing
            .as_ref()
            .map(|(batch, _)| batch.clone())
            .unwrap_or_default()
    }

    /// Ends the insertions whose grace periods have passed, and says if one failed (its
    /// tables were seen in place, so this is not expected).
    pub(super) fn reap_insertions(&mut self) {
        self.finishing.retain_mut(|inserting| {
            if !inserting.is_finished() {
                return true;
            }
            if let Err(e) = inserting.finish() {
                tracing::warn!(error = %crate::error_chain(&e), "inserting state tables failed after they were in place");
            }
            false
        });
    }

    /// Waits until `inserting`'s tables are in place, then keeps it until its grace
    /// periods have passed.
    pub(super) fn await_in_place(
        &mut self,
        mut inserting: Inserting,
    ) -> Result<(), DataplaneError> {
        let outcome = inserting.await_in_place();
        if !inserting.is_finished() {
            self.finishing.push(inserting);
        }
        outcome
    }

    /// Gives `ifindexes` their state tables where they have none, and returns once the
    /// tables are in place (their insertions' grace periods pass on other threads). Those
    /// the spare batch is making are waited for alike.
    pub(super) fn ensure_tables(&mut self, ifindexes: &[u32]) -> Result<(), DataplaneError> {
        self.reap_insertions();
        let pending = self.spares_pending();
        let tables = self
            .state
            .prepare_unmade(ifindexes.iter().copied().filter(|i| !pending.contains(i)))?;
        let inserting = if tables.is_empty() {
            None
        } else {
            Some(tables.start(self.insert_delays)?)
        };
        let spared = ifindexes.iter().any(|i| pending.contains(i));
        self.await_spares_of(ifindexes.iter().copied());
        if let Some(inserting) = inserting {
            self.await_in_place(inserting)?;
        }
        if spared {
            // Where the spare batch failed, they are made now.
            self.state.ensure_all(ifindexes.iter().copied())?;
        }
        Ok(())
    }

    /// Spares at or below `highest` (the highest ifindex the daemon has seen) that no vif
    /// took: another link took the ifindex, so they go at the next retirement.
    pub fn forget_spares_up_to(&mut self, highest: u32) {
        let attached = &self.attached;
        let taken = &mut self.spares_taken;
        self.spares.retain(|i| {
            let keep = *i > highest && !attached.contains_key(i);
            if !keep && !attached.contains_key(i) {
                taken.insert(*i);
            }
            keep
        });
    }

    /// The ifindexes with spare tables (inserted, or being inserted).
    pub fn spares(&self) -> BTreeSet<u32> {
        let mut out = self.spares.clone();
        if let Some((batch, _)) = &self.sparing {
            out.extend(batch);
        }
        out
    }
}
