//! The parts that touch the kernel, one module per concern: the policy tables and the
//! all-or-nothing swap (here and in `tables`), attaching to vifs (`links`), the state
//! directory on bpffs (`state`), counters, tracked connections, test runs, and the one
//! error type (`error`).
//!
//! The swap (see docs/design.md): every policy map key carries a generation (0 or 1). A
//! new policy is written under the generation that is not active, then the single
//! `CONFIG` entry is flipped to it. A packet reads the generation once, first, so it is
//! judged entirely by the old or entirely by the new policy. The old generation stays as
//! it is, unread, until the next swap: that one changes only the entries that differ
//! between the old generation's policy and its own (a reload that changes one segment
//! writes that segment's entries), once a grace period longer than any program run has
//! passed since the flip. Where the old generation's content is not known (maps taken
//! over from an earlier daemon, drift found by the verification), it is read from the
//! kernel first. If writing the new generation fails, it is removed and the old policy
//! stays active.

mod batch;
mod connections;
mod counters;
mod error;
mod links;
mod quick;
mod state;
mod tables;
pub(crate) use tables::bytes_of;
mod test_run;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{SchedClassifier, Xdp},
};
use isolator_common::{Counter, CounterKey, limits, maps, programs};

pub use self::connections::Tracked;
use self::connections::VifState;
pub use self::error::DataplaneError;
use self::error::{io_err, map_err, prog_err};
use self::links::Attachment;
pub use self::links::{AttachMode, namespace_links};
pub use self::state::pin_name;
use self::state::{Pins, ensure_bpffs, read_pinned_links};
pub use self::state::{Teardown, teardown};
pub use self::tables::{Footprint, Written};
use self::tables::{POLICY_MAPS, PolicyTables};
pub use self::test_run::{LiveContext, TC_DROP, TC_PASS, TC_PASS_END, test_run_live};
use crate::compile::Plan;
use crate::encode::{Encoder, Entries, encode};

/// How [`wait_for_readers`] waited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grace {
    /// For an RCU grace period: every program run that had started has ended.
    Rcu,
    /// The kernel refused; [`GRACE_PERIOD`] was waited instead.
    Fixed,
}

/// Waits until no program run that may have read the old generation is still running.
///
/// The programs run inside RCU read-side critical sections (XDP and TC run with bottom
/// halves disabled, test runs under `rcu_read_lock`), and `membarrier(MEMBARRIER_CMD_GLOBAL)`
/// returns only after an RCU grace period (the kernel implements it with
/// `synchronize_rcu()`), so every run that started before the generation flip has ended.
/// Where the kernel refuses it (`nohz_full` CPUs), [`GRACE_PERIOD`] stands in.
pub fn wait_for_readers() -> Grace {
    /// `MEMBARRIER_CMD_GLOBAL` (include/uapi/linux/membarrier.h).
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes two integer arguments (and a CPU id that GLOBAL ignores)
    // and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc == 0 {
        return Grace::Rcu;
    }
    tracing::debug!(
        error = %std::io::Error::last_os_error(),
        "membarrier refused; waiting a fixed grace period instead"
    );
    std::thread::sleep(GRACE_PERIOD);
    Grace::Fixed
}

/// The kernel's aya-log records, readable when its file descriptor is.
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Writes the kernel's aya-log records into the daemon's log.
struct KernelLog;

static KERNEL_LOG: KernelLog = KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "isolator::kernel", "{message}"),
            log::Level::Warn => tracing::warn!(target: "isolator::kernel", "{message}"),
            log::Level::Info => tracing::info!(target: "isolator::kernel", "{message}"),
            _ => tracing::debug!(target: "isolator::kernel", "{message}"),
        }
    }

    fn flush(&self) {}
}

/// The compiled kernel programs, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/isolator"));

/// How long to wait after a generation flip before removing the old generation's entries
/// where the kernel cannot wait for an RCU grace period on request (see
/// [`wait_for_readers`]). A program run takes microseconds; this is many orders of
/// magnitude more.
pub const GRACE_PERIOD: Duration = Duration::from_millis(50);

/// The maps that hold state rather than policy: written by the programs (counters,
/// connections, fragments) or read first by them (`CONFIG`).
pub const STATE_MAPS: [&str; 16] = [
    maps::CONFIG,
    maps::CONNTRACK,
    maps::CONNTRACK_OPENING,
    maps::CONNTRACK_EVENTS,
    maps::FRAGMENTS,
    maps::COUNTERS,
    maps::COUNTER_BLOCKS,
    maps::UNCOUNTED,
    maps::KERNEL_FAULTS,
    maps::FAULTS_LOGGED,
    maps::AYA_LOGS,
    maps::EVENTS,
    maps::EVENT_SETTINGS,
    maps::EVENT_WINDOWS,
    maps::EVENT_WINDOW_SLOTS,
    maps::EVENTS_LOST,
];

/// Maps kept in the state directory, so that a restarted daemon finds the policy in
/// force, its counters and its tracked connections: every map of the object but the
/// per-CPU scratch space (a test keeps this list complete).
pub const PINNED_MAPS: [&str; POLICY_MAPS.len() + STATE_MAPS.len()] =
    concat(POLICY_MAPS, STATE_MAPS);

const fn concat<const N: usize, const M: usize, const T: usize>(
    a: [&'static str; N],
    b: [&'static str; M],
) -> [&'static str; T] {
    assert!(N + M == T);
    let mut out = [""; T];
    let mut i = 0;
    while i < N {
        out[i] = a[i];
        i += 1;
    }
    while i < T {
        out[i] = b[i - N];
        i += 1;
    }
    out
}

/// The sizes of the maps that are set at load time rather than in the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Keys of `COUNTERS`: (vif, direction, verdict, audit flag) combinations seen. When it
    /// is full, frames are counted by direction and verdict only (`UNCOUNTED`) and the
    /// fault is counted and logged.
    pub counters: u32,
    /// Entries of `ADDRESSES_V4`, both generations together (the policy in force and,
    /// in the other generation, the previous one, which the next swap changes).
    pub addresses_v4: u32,
    /// Entries of `ADDRESSES_V6`, both generations together.
    pub addresses_v6: u32,
    /// Entries of `RULESETS` (distinct rule sets), both generations together.
    pub rulesets: u32,
    /// Entries of `PAIRS` (ordered segment pairs joined by a flow), both generations.
    pub pairs: u32,
    /// Entries of `GATEWAYS` (gateway addresses of all segments), both generations.
    pub gateways: u32,
    /// Entries of `UPLINKS` (trusted (uplink, segment) pairs), both generations.
    pub uplinks: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            counters: limits::MAX_COUNTERS,
            addresses_v4: Sizes::MIN_ADDRESSES,
            addresses_v6: Sizes::MIN_ADDRESSES,
            rulesets: Sizes::MIN_RULESETS,
            pairs: Sizes::MIN_PAIRS,
            gateways: Sizes::MIN_GATEWAYS,
            uplinks: Sizes::MIN_UPLINKS,
        }
    }
}

impl Sizes {
    /// The smallest sizes the daemon gives the policy maps: policies up to half of them
    /// (both generations live in the maps) fit without sizing.
    pub const MIN_ADDRESSES: u32 = 1 << 17;
    pub const MIN_RULESETS: u32 = 1 << 15;
    pub const MIN_PAIRS: u32 = 1 << 17;
    pub const MIN_GATEWAYS: u32 = 2 * limits::MAX_GATEWAYS;
    pub const MIN_UPLINKS: u32 = 2 * limits::MAX_UPLINKS;

    fn apply(&self, loader: &mut EbpfLoader<'_>) {
        loader.map_max_entries(maps::COUNTERS, self.counters);
        loader.map_max_entries(maps::ADDRESSES_V4, self.addresses_v4);
        loader.map_max_entries(maps::ADDRESSES_V6, self.addresses_v6);
        loader.map_max_entries(maps::RULESETS, self.rulesets);
        loader.map_max_entries(maps::PAIRS, self.pairs);
        loader.map_max_entries(maps::GATEWAYS, self.gateways);
        loader.map_max_entries(maps::UPLINKS, self.uplinks);
    }

    /// The name of the directory (under the state directory's maps) that holds policy maps
    /// of these sizes.
    fn dir_name(&self) -> String {
        format!(
            "policy-a4-{}-a6-{}-r-{}-p-{}-g-{}-u-{}",
            self.addresses_v4,
            self.addresses_v6,
            self.rulesets,
            self.pairs,
            self.gateways,
            self.uplinks
        )
    }

    /// The sizes a [`Sizes::dir_name`] names.
    fn from_dir_name(name: &str) -> Option<Sizes> {
        let parts: Vec<&str> = name.split('-').collect();
        match parts.as_slice() {
            ["policy", "a4", a4, "a6", a6, "r", r, "p", p, "g", g, "u", u] => Some(Sizes {
                counters: limits::MAX_COUNTERS,
                addresses_v4: a4.parse().ok()?,
                addresses_v6: a6.parse().ok()?,
                rulesets: r.parse().ok()?,
                pairs: p.parse().ok()?,
                gateways: g.parse().ok()?,
                uplinks: u.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// Whether maps of these sizes hold everything maps of `other`'s do.
    fn covers(&self, other: &Sizes) -> bool {
        self.addresses_v4 >= other.addresses_v4
            && self.addresses_v6 >= other.addresses_v6
            && self.rulesets >= other.rulesets
            && self.pairs >= other.pairs
            && self.gateways >= other.gateways
            && self.uplinks >= other.uplinks
    }

    /// The capacity of a sized map, by name.
    fn capacity(&self, map: &str) -> Option<u32> {
        match map {
            maps::ADDRESSES_V4 => Some(self.addresses_v4),
            maps::ADDRESSES_V6 => Some(self.addresses_v6),
            maps::RULESETS => Some(self.rulesets),
            maps::PAIRS => Some(self.pairs),
            maps::GATEWAYS => Some(self.gateways),
            maps::UPLINKS => Some(self.uplinks),
            _ => None,
        }
    }

    /// The sized maps of `plan` with these sizes: (map, entries one generation holds,
    /// capacity, estimated kernel memory in bytes once it is in force). The estimate
    /// counts the bucket table (16 bytes a slot, slots a power of two) and about 56 bytes of
    /// overhead per entry besides its key and value, which is what the kernel reported for
    /// the IPv4 address map on the development machine (88 bytes an entry).
    pub fn estimate(&self, plan: &Plan) -> Vec<(&'static str, usize, u32, u64)> {
        use isolator_common::{
            AddrClass, AddrV4Key, AddrV6Key, GatewayKey, PairInfo, PairKey, RuleKey, RuleSet,
            UplinkKey,
        };
        let entries = encode(plan, 0);
        let per_entry =
            |key: usize, value: usize| (56 + key.div_ceil(8) * 8 + value.div_ceil(8) * 8) as u64;
        let map = |name, count: usize, capacity: u32, key, value| {
            let buckets = u64::from(capacity).next_power_of_two() * 16;
            (
                name,
                count,
                capacity,
                buckets + count as u64 * per_entry(key, value),
            )
        };
        vec![
            map(
                maps::ADDRESSES_V4,
                entries.addresses_v4.len(),
                self.addresses_v4,
                size_of::<AddrV4Key>(),
                size_of::<AddrClass>(),
            ),
            map(
                maps::ADDRESSES_V6,
                entries.addresses_v6.len(),
                self.addresses_v6,
                size_of::<AddrV6Key>(),
                size_of::<AddrClass>(),
            ),
            map(
                maps::RULESETS,
                entries.rulesets.len(),
                self.rulesets,
                size_of::<RuleKey>(),
                size_of::<RuleSet>(),
            ),
            map(
                maps::PAIRS,
                entries.pairs.len(),
                self.pairs,
                size_of::<PairKey>(),
                size_of::<PairInfo>(),
            ),
            map(
                maps::GATEWAYS,
                entries.gateways.len(),
                self.gateways,
                size_of::<GatewayKey>(),
                size_of::<RuleSet>(),
            ),
            map(
                maps::UPLINKS,
                entries.uplinks.len(),
                self.uplinks,
                size_of::<UplinkKey>(),
                size_of::<u8>(),
            ),
        ]
    }

    /// Room for `plan`: each sized map holds four times the plan's entries (both
    /// generations, and as much again for policies to grow into without a restart),
    /// rounded up to a power of two, and never less than the defaults.
    pub fn for_plan(plan: &Plan) -> Sizes {
        let entries = encode(plan, 0);
        let room = |count: usize, min: u32| -> u32 {
            let want = (count as u64 * 4).next_power_of_two();
            want.clamp(u64::from(min), u64::from(u32::MAX >> 1)) as u32
        };
        Sizes {
            counters: limits::MAX_COUNTERS,
            addresses_v4: room(entries.addresses_v4.len(), Self::MIN_ADDRESSES),
            addresses_v6: room(entries.addresses_v6.len(), Self::MIN_ADDRESSES),
            rulesets: room(entries.rulesets.len(), Self::MIN_RULESETS),
            pairs: room(entries.pairs.len(), Self::MIN_PAIRS),
            gateways: room(entries.gateways.len(), Self::MIN_GATEWAYS),
            uplinks: room(entries.uplinks.len(), Self::MIN_UPLINKS),
        }
    }
}

/// Spare state tables being inserted on threads of their own, for these ifindexes.
type SpareBatch = (BTreeSet<u32>, connections::Inserting);

/// The loaded programs and their maps.
pub struct Dataplane {
    ebpf: Ebpf,
    config: Array<MapData, u32>,
    tables: PolicyTables,
    state: VifState,
    conntrack_events: PerCpuArray<MapData, u64>,
    counters: PerCpuHashMap<MapData, CounterKey, Counter>,
    counter_blocks: PerCpuArray<MapData, isolator_common::CounterBlock>,
    /// The ifindexes whose block of `COUNTER_BLOCKS` may have counted something: the
    /// links of the plans swapped in and the links attached to, until their counters are
    /// pruned ([`Dataplane::prune_counters`]).
    counted: BTreeSet<u32>,
    uncounted: PerCpuArray<MapData, Counter>,
    faults: PerCpuArray<MapData, u64>,
    event_settings: Array<MapData, isolator_common::EventSettings>,
    events_lost: PerCpuArray<MapData, u64>,
    /// The reports' ring buffer, until the daemon takes it ([`Dataplane::take_events`]).
    events: Option<RingBuf<MapData>>,
    /// The kernel's aya-log records, until the daemon takes it to follow them.
    logger: Option<KernelLogger>,
    active: u32,
    attached: BTreeMap<u32, Attachment>,
    pins: Option<Pins>,
    /// `HANDOFF` and `HANDOFF_COUNT`, and the vifs in `HANDOFF` ([`Dataplane::settle`]).
    handoff: aya::maps::HashMap<MapData, u32, u32>,
    handoff_count: Array<MapData, u32>,
    handing: BTreeSet<u32>,
    /// Whether the links of the namespace were searched once for quick attachments
    /// (`cls_bpf` filters) that an earlier daemon left ([`Dataplane::release_leftovers`]).
    swept_filters: bool,
    /// Whether new TC attachments are quick ([`Dataplane::attach_quickly`]).
    quick: bool,
    /// Ifindexes whose state tables were made ahead of any link
    /// ([`Dataplane::prepare_spares`]), and the batch being inserted.
    spares: BTreeSet<u32>,
    sparing: Option<SpareBatch>,
    /// Insertions of state tables that are in place, waiting for their grace periods
    /// ([`connections::Inserting`]).
    finishing: Vec<connections::Inserting>,
    /// For tests ([`Dataplane::delay_table_insertions`]).
    insert_delays: Option<(Duration, Duration)>,
    /// Spares that a link other than a vif took, until a retirement drops their tables.
    spares_taken: BTreeSet<u32>,
    /// How the last swap waited for the programs still running on the old generation.
    last_wait: Option<Grace>,
    /// For tests: called once the programs have left the generation that is not active,
    /// before it is changed.
    observe_before_change: Option<fn(&Dataplane)>,
    /// What each generation holds, as this daemon wrote it (`None`: not known).
    contents: [Option<Arc<Entries>>; 2],
    /// What the last swap wrote.
    last_written: Option<Written>,
    /// The plan the last [`Dataplane::swap_shared`] encoded, with what encoding it kept
    /// to encode the next one from the change ([`Encoder::next`]).
    encoder: Option<(Arc<Plan>, Encoder)>,
    /// The sizes the policy maps were loaded with.
    sizes: Sizes,
    /// How many entries the active generation holds in each sized map.
    held: Vec<(&'static str, usize)>,
    /// Swaps made so far (numbers them).
    swaps: u64,
    /// The last swap, until its old generation is removed ([`Dataplane::retire`]).
    retiring: Option<Retiring>,
}

/// A swap made by [`Dataplane::swap`], to be retired with [`Dataplane::retire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Swap(u64);

/// What [`Dataplane::retire`] removes once the programs have left the old generation.
pub(crate) struct Retiring {
    swap: Swap,
    /// The old generation.
    old: u32,
    /// The vifs of the plan swapped in: their state tables stay.
    pub(crate) keep: BTreeSet<u32>,
    /// The quarantined links of that plan: attached, but without state tables.
    quarantined: BTreeSet<u32>,
}

pub(crate) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name, "unexpected map type"))
}

impl Dataplane {
    /// Loads the programs into the kernel (verifier included) without attaching them.
    /// Until a policy is applied, every frame would be dropped as `no_policy`.
    pub fn load() -> Result<Self, DataplaneError> {
        Self::load_sized(&Sizes::default())
    }

    /// [`Dataplane::load`] with the given map sizes.
    pub fn load_sized(sizes: &Sizes) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        sizes.apply(&mut loader);
        let ebpf = loader.load(EBPF_OBJECT).map_err(DataplaneError::Load)?;
        let mut dp = Self::from_ebpf(ebpf, None)?;
        dp.sizes = *sizes;
        Ok(dp)
    }

    /// Loads the programs with their maps and links kept under `state_dir` (a bpffs
    /// directory): maps a previous daemon pinned there are reused (the policy in force,
    /// counters, tracked connections), and its pinned links are taken over by
    /// [`Dataplane::attach`]. Without a previous daemon this is [`Dataplane::load`]
    /// plus pinning.
    pub fn load_pinned(state_dir: &Path) -> Result<Self, DataplaneError> {
        Self::load_pinned_sized(state_dir, &Sizes::default())
    }

    /// [`Dataplane::load_pinned`] with policy maps of at least `wanted`'s sizes. State
    /// maps (connections, counters, fragments) live in the layout's directory; policy
    /// maps (and `CONFIG`, which names their active generation) in a directory named after
    /// their sizes inside it. A previous daemon's policy maps are reused if they are at
    /// least as large; otherwise new ones are made (the previous daemon's programs keep
    /// theirs, consistent with their `CONFIG`, until this daemon's replace them on every
    /// link), and the smaller ones go once this daemon has loaded.
    pub fn load_pinned_sized(state_dir: &Path, wanted: &Sizes) -> Result<Self, DataplaneError> {
        ensure_bpffs(state_dir)?;
        let map_dir = state_dir.join(format!("maps-v{}", isolator_common::STATE_LAYOUT));
        let links = state_dir.join("links");
        for dir in [&map_dir, &links] {
            std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let existing = std::fs::read_dir(&map_dir)
            .map_err(io_err(format!("listing {}", map_dir.display())))?
            .flatten()
            .filter_map(|e| {
                let sizes = Sizes::from_dir_name(&e.file_name().to_string_lossy())?;
                Some((e.path(), sizes))
            })
            .find(|(_, sizes)| sizes.covers(wanted));
        // Policy maps made now hold nothing in either generation: known without reading
        // them, so that a link that comes right after the first swap is added in place.
        let fresh = existing.is_none();
        let (policy_dir, mut sizes) =
            existing.unwrap_or_else(|| (map_dir.join(wanted.dir_name()), *wanted));
        sizes.counters = wanted.counters;
        std::fs::create_dir_all(&policy_dir)
            .map_err(io_err(format!("creating {}", policy_dir.display())))?;
        let mut loader = EbpfLoader::new();
        sizes.apply(&mut loader);
        for name in PINNED_MAPS {
            let dir = if name == maps::CONFIG || POLICY_MAPS.contains(&name) {
                &policy_dir
            } else {
                &map_dir
            };
            loader.map_pin_path(name, dir.join(name));
        }
        let ebpf = loader.load(EBPF_OBJECT).map_err(DataplaneError::Load)?;
        let left = read_pinned_links(&links)?;
        let mut dp = Self::from_ebpf(ebpf, Some(Pins { links, left }))?;
        dp.sizes = sizes;
        if fresh {
            dp.contents = [Some(Arc::default()), Some(Arc::default())];
        }
        // A previous daemon's policy may be in force: continue from its generation.
        dp.active = dp
            .config
            .get(&0, 0)
            .map_err(map_err(maps::CONFIG, "reading the active generation"))?;
        // A previous daemon's counters: reported, and pruned with the others.
        dp.counted = dp.blocks_in_use()?;
        // Maps of other layouts belong to older versions, and policy maps of other sizes
        // to an older daemon; their programs are replaced as this daemon takes their links
        // over, so the pins can go (the maps live on while a program uses them).
        let stale = |dir: &Path, keep: &Path, prefix: &str| {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if name.to_string_lossy().starts_with(prefix) && entry.path() != keep {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
        };
        stale(state_dir, &map_dir, "maps-v");
        stale(&map_dir, &policy_dir, "policy-");
        Ok(dp)
    }

    /// The sizes the policy maps were loaded with.
    pub fn sizes(&self) -> Sizes {
        self.sizes
    }

    fn from_ebpf(mut ebpf: Ebpf, pins: Option<Pins>) -> Result<Self, DataplaneError> {
        let logger = aya_log::EbpfLogger::init_with_logger(&mut ebpf, &KERNEL_LOG as &dyn log::Log)
            .map_err(|e| DataplaneError::Pin {
                what: "following the kernel's log records".into(),
                source: Box::new(e),
            })?;
        // Maps made for this daemon are empty; pinned ones are known once written.
        let contents = if pins.is_some() {
            [None, None]
        } else {
            [Some(Arc::default()), Some(Arc::default())]
        };
        let handoff = take(&mut ebpf, maps::HANDOFF)?;
        let handoff_count = take(&mut ebpf, maps::HANDOFF_COUNT)?;
        let mut dp = Dataplane {
            config: take(&mut ebpf, maps::CONFIG)?,
            tables: PolicyTables::take(&mut ebpf)?,
            state: VifState::take(&mut ebpf)?,
            conntrack_events: take(&mut ebpf, maps::CONNTRACK_EVENTS)?,
            counters: take(&mut ebpf, maps::COUNTERS)?,
            counter_blocks: take(&mut ebpf, maps::COUNTER_BLOCKS)?,
            counted: BTreeSet::new(),
            uncounted: take(&mut ebpf, maps::UNCOUNTED)?,
            faults: take(&mut ebpf, maps::KERNEL_FAULTS)?,
            event_settings: take(&mut ebpf, maps::EVENT_SETTINGS)?,
            events_lost: take(&mut ebpf, maps::EVENTS_LOST)?,
            events: Some(take(&mut ebpf, maps::EVENTS)?),
            logger: Some(logger),
            ebpf,
            active: 0,
            attached: BTreeMap::new(),
            pins,
            handoff,
            handoff_count,
            handing: BTreeSet::new(),
            swept_filters: false,
            quick: false,
            spares: BTreeSet::new(),
            sparing: None,
            finishing: Vec::new(),
            insert_delays: None,
            spares_taken: BTreeSet::new(),
            last_wait: None,
            observe_before_change: None,
            contents,
            last_written: None,
            encoder: None,
            sizes: Sizes::default(),
            held: Vec::new(),
            swaps: 0,
            retiring: None,
        };
        dp.ingress()?
            .load()
            .map_err(prog_err(programs::XDP_INGRESS, "verifying and loading"))?;
        for program in [programs::TC_EGRESS, programs::TC_INGRESS_TAGS] {
            dp.classifier(program)?
                .load()
                .map_err(prog_err(program, "verifying and loading"))?;
        }
        Ok(dp)
    }

    fn ingress(&mut self) -> Result<&mut Xdp, DataplaneError> {
        let program = self
            .ebpf
            .program_mut(programs::XDP_INGRESS)
            .ok_or(DataplaneError::MissingProgram(programs::XDP_INGRESS))?;
        program
            .try_into()
            .map_err(prog_err(programs::XDP_INGRESS, "unexpected program type"))
    }

    fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DataplaneError> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        program
            .try_into()
            .map_err(prog_err(name, "unexpected program type"))
    }

    /// For tests: `observe` is called once the programs still running on the generation
    /// that is not active have left it, just before it is changed (by the next swap, or
    /// purged by a retirement: it still holds what it held).
    #[doc(hidden)]
    pub fn observe_before_change(&mut self, observe: fn(&Dataplane)) {
        self.observe_before_change = Some(observe);
    }

    /// What the last swap wrote into the policy maps.
    pub fn last_written(&self) -> Option<Written> {
        self.last_written
    }

    /// Forgets what the generations hold: the next swap reads the one it writes from the
    /// kernel and changes whatever differs from the new policy there, entries changed
    /// behind this daemon's back included (after drift was found in the maps).
    pub fn forget_contents(&mut self) {
        self.contents = [None, None];
    }

    /// The generation not in force and what it holds, as this daemon wrote it (`None`:
    /// not known: the next swap reads it from the kernel first).
    pub fn other_generation(&self) -> (u32, Option<Arc<Entries>>) {
        let other = self.active ^ 1;
        (other, self.contents[other as usize].clone())
    }

    /// Every entry the maps hold under `generation`, read from the kernel.
    pub fn read_generation(&self, generation: u32) -> Result<Entries, DataplaneError> {
        self.tables.read(generation)
    }

    /// How the last completed swap waited for the programs still running on the old
    /// generation before purging it (`None` before the first).
    pub fn last_swap_wait(&self) -> Option<Grace> {
        self.last_wait
    }

    /// The generation the kernel judges packets by.
    pub fn active_generation(&self) -> u32 {
        self.active
    }

    /// Puts `plan` into effect all at once (see the module documentation). On error the
    /// previously active policy is still in force, untouched.
    pub fn apply(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
        let swap = self.swap(plan)?;
        self.retire(swap, wait_for_readers())
    }

    /// The first half of [`Dataplane::apply`]: writes `plan` under the other generation
    /// (changing only what differs from the policy that generation held, where that is
    /// known; see [`Dataplane::last_written`]) and flips `CONFIG` to it. From its return
    /// on, the new policy is in force. [`Dataplane::retire`] must then be given what a
    /// [`wait_for_readers`] that began after this returned said; meanwhile the dataplane
    /// may do other work (attach to links). A swap still to be retired when the next one
    /// begins is retired first, after a wait of its own: a generation is changed only
    /// once no program run can still be reading it.
    pub fn swap(&mut self, plan: &Plan) -> Result<Swap, DataplaneError> {
        self.swap_with(plan, None)
    }

    /// [`Dataplane::swap`] of a plan that the caller keeps (the daemon's): the entries are
    /// worked out from what changed since the last plan swapped in this way, where the
    /// encoder follows the change ([`Encoder::next`]), rather than from the whole plan.
    /// The entries are the same either way.
    pub fn swap_shared(&mut self, plan: &Arc<Plan>) -> Result<Swap, DataplaneError> {
        self.swap_with(plan, Some(plan))
    }

    /// Puts `plan` into effect without a swap where it differs from the plan in force
    /// (the last one [`Dataplane::swap_shared`] or this swapped in) only by new links'
    /// own entries (a new vif, its VLANs and declared MAC, a new link that is no vif):
    /// those are added to the generation in force, in place
    /// ([`PolicyTables::add_in_place`]), the vif's entry last, so no program run sees
    /// anything but the policy in force and some of the new links' entries. No wait for
    /// the programs to leave a generation: a new vif is enforced as soon as its entries
    /// are written, while the previous swap may still be retiring. The other generation
    /// gets them with the next swap. `None` where the change is anything else (nothing
    /// written; [`Dataplane::swap_shared`] then writes it), or where what the generation
    /// in force holds is not known.
    pub fn add_in_place(&mut self, plan: &Arc<Plan>) -> Result<Option<Written>, DataplaneError> {
        let active = self.active;
        let (Some(base), Some(other)) = (
            self.contents[active as usize].clone(),
            self.contents[(active ^ 1) as usize].clone(),
        ) else {
            return Ok(None);
        };
        if plan.vifs.len() + plan.quarantined.len() > limits::MAX_VIFS as usize {
            return Ok(None);
        }
        let Some((before, encoder)) = self.encoder.take() else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let Some((encoder, mut entries)) = encoder.next(&before, plan, active) else {
            // Not followed: the next swap encodes the plan whole.
            return Ok(None);
        };
        self.encoder = Some((Arc::clone(plan), encoder));
        let encoding = started.elapsed();
        // The epoch stays: no connection's admission changes.
        if entries.settings.len() == base.settings.len() {
            for ((_, new), (_, old)) in entries.settings.iter_mut().zip(&base.settings) {
                new.epoch = old.epoch;
            }
        }
        // The sized maps hold this generation and the other one.
        for (map, count) in entries.counts() {
            let Some(capacity) = self.sizes.capacity(map) else {
                continue;
            };
            let beside = other
                .counts()
                .iter()
                .find(|(m, _)| *m == map)
                .map_or(0, |(_, n)| *n);
            if beside + count > capacity as usize {
                return Ok(None);
            }
        }
        // Every vif of the plan has its state tables before its entry exists.
        let vifs: Vec<u32> = plan.vifs.iter().map(|v| v.ifindex).collect();
        self.ensure_tables(&vifs)?;
        let Some(mut written) = self.tables.add_in_place(&base, &entries)? else {
            return Ok(None);
        };
        written.encode = encoding;
        written.followed = true;
        self.note_counted(plan.links.iter().map(|l| l.ifindex));
        self.note_counted(plan.vifs.iter().map(|v| v.ifindex));
        self.note_counted(plan.quarantined.iter().map(|q| q.ifindex));
        self.held = entries.counts();
        self.contents[active as usize] = Some(Arc::new(entries));
        self.last_written = Some(written);
        if let Some(retiring) = self.retiring.as_mut() {
            // Its tables stay when the swap before retires.
            retiring.keep.extend(plan.vifs.iter().map(|v| v.ifindex));
        }
        Ok(Some(written))
    }

    fn swap_with(
        &mut self,
        plan: &Plan,
        shared: Option<&Arc<Plan>>,
    ) -> Result<Swap, DataplaneError> {
        if let Some(pending) = self.retiring.as_ref().map(|r| r.swap) {
            self.retire(pending, wait_for_readers())?;
        }
        // A plan beyond the kernel's capacity is refused before anything changes (one
        // from `Plan::new` never is; this guards plans made otherwise).
        let interfaces = plan.vifs.len() + plan.quarantined.len();
        if interfaces > limits::MAX_VIFS as usize {
            return Err(DataplaneError::TooMany {
                what: "interfaces",
                count: interfaces,
                limit: limits::MAX_VIFS,
            });
        }
        let next = self.active ^ 1;
        let started = std::time::Instant::now();
        // The encoder follows the plan even if this swap fails below: what it gives is a
        // function of the plan alone.
        let (encoder, mut entries, followed) = match (self.encoder.take(), shared) {
            (Some((before, encoder)), Some(_)) => match encoder.next(&before, plan, next) {
                Some((encoder, entries)) => (encoder, entries, true),
                None => {
                    let (encoder, entries) = Encoder::new(plan, next);
                    (encoder, entries, false)
                }
            },
            _ => {
                let (encoder, entries) = Encoder::new(plan, next);
                (encoder, entries, false)
            }
        };
        if let Some(shared) = shared {
            self.encoder = Some((Arc::clone(shared), encoder));
        }
        let encoding = started.elapsed();
        // Connections admitted before carry an earlier epoch: the programs judge each
        // again by this policy on its next packet.
        let epoch = boottime_ns();
        for (_, settings) in &mut entries.settings {
            settings.epoch = epoch;
        }
        // The sized maps hold both generations: the one in force, and the new policy.
        let counts = entries.counts();
        for (map, count) in &counts {
            let Some(capacity) = self.sizes.capacity(map) else {
                continue;
            };
            let held = self.held_in(map);
            if held + count > capacity as usize {
                return Err(DataplaneError::Capacity {
                    map,
                    needed: *count,
                    held,
                    capacity,
                });
            }
        }
        // Every vif of the plan has its state tables before its entry exists.
        let vifs: Vec<u32> = plan.vifs.iter().map(|v| v.ifindex).collect();
        self.ensure_tables(&vifs)?;
        self.note_counted(plan.links.iter().map(|l| l.ifindex));
        self.note_counted(plan.vifs.iter().map(|v| v.ifindex));
        self.note_counted(plan.quarantined.iter().map(|q| q.ifindex));
        if let Some(observe) = self.observe_before_change {
            observe(self);
        }
        // What `next` holds: as this daemon wrote it, or else (maps an earlier daemon
        // left, drift the verification found) as the kernel has it now.
        let base = match self.contents[next as usize].take() {
            Some(base) => Ok(base),
            None => self.tables.read(next).map(Arc::new),
        };
        let written = base.and_then(|base| {
            self.tables.write_changes(&base, &entries).map(|mut w| {
                w.whole = base.counts().iter().all(|(_, n)| *n == 0);
                w.encode = encoding;
                w.followed = followed;
                w
            })
        });
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                // Best effort: the entries are inert while `next` is not active.
                if self.purge(next).is_ok() {
                    self.contents[next as usize] = Some(Arc::default());
                }
                return Err(e);
            }
        };
        self.config
            .set(0, next, 0)
            .map_err(map_err(maps::CONFIG, "activating the new generation"))?;
        let old = self.active;
        self.active = next;
        self.held = counts;
        self.contents[next as usize] = Some(Arc::new(entries));
        self.last_written = Some(written);
        self.swaps += 1;
        let swap = Swap(self.swaps);
        self.retiring = Some(Retiring {
            swap,
            old,
            keep: plan.vifs.iter().map(|v| v.ifindex).collect(),
            quarantined: plan.quarantined.iter().map(|q| q.ifindex).collect(),
        });
        Ok(swap)
    }

    /// The second half of [`Dataplane::apply`], once every program run that may have read
    /// the old generation has ended (`grace`: how a [`wait_for_readers`] begun after
    /// [`Dataplane::swap`] returned waited): from then on the next swap may change the old
    /// generation (which it is left for; removed now where what it holds is not known),
    /// and the state tables of vifs that neither the plan nor a guard
    /// ([`Dataplane::guard`]) since has go. Nothing to do if `swap` was retired already (by
    /// the next swap).
    pub fn retire(&mut self, swap: Swap, grace: Grace) -> Result<(), DataplaneError> {
        if self.retiring.as_ref().map(|r| r.swap) != Some(swap) {
            return Ok(());
        }
        let Some(retiring) = self.retiring.take() else {
            return Ok(());
        };
        self.last_wait = Some(grace);
        // The old generation stays for the next swap to change; where what it holds is
        // not known (maps an earlier daemon left), it is read now, so that the next swap
        // writes only what differs from it.
        if self.contents[retiring.old as usize].is_none() {
            self.contents[retiring.old as usize] = Some(Arc::new(self.tables.read(retiring.old)?));
        }
        // The state tables of vifs the plan no longer has go with them; a link guarded
        // since the swap keeps the tables its guard gave it.
        let mut keep = retiring.keep;
        keep.extend(
            self.attached
                .keys()
                .filter(|ifindex| !retiring.quarantined.contains(ifindex)),
        );
        // And the spares, ahead of the links that will take them.
        keep.extend(self.spares());
        self.prune_vif_state(&keep)?;
        // Dropped now, or a vif's since.
        self.spares_taken.clear();
        Ok(())
    }

    /// The swap still to be retired, if there is one.
    pub fn retiring(&self) -> Option<Swap> {
        self.retiring.as_ref().map(|r| r.swap)
    }

    /// Entries the active generation holds in `map` (after a restart, before the first
    /// apply, unknown: counted from the map).
    fn held_in(&self, map: &str) -> usize {
        match self.held.iter().find(|(name, _)| *name == map) {
            Some((_, count)) => *count,
            None => self.tables.count_generation(map, self.active).unwrap_or(0),
        }
    }

    fn purge(&mut self, generation: u32) -> Result<(), DataplaneError> {
        self.tables.purge(generation)
    }

    /// Each policy map's capacity and the kernel memory it takes now.
    pub fn footprints(&self) -> Result<Vec<Footprint>, DataplaneError> {
        self.tables.footprints()
    }

    /// The generations that entries of each policy map belong to. After a completed swap
    /// every map holds the active generation only (or nothing): a map left out of the
    /// purge would bring an old policy back when its generation number is reused.
    pub fn generations(&self) -> Result<Vec<(&'static str, BTreeSet<u32>)>, DataplaneError> {
        self.tables.generations()
    }

    /// Detaches from every vif and removes the state directory (pinned maps and links):
    /// once this daemon exits, nothing of it stays in the kernel.
    pub fn shut_down(&mut self, state_dir: Option<&Path>) -> Vec<(String, DataplaneError)> {
        let failures = self.detach_all();
        self.release_leftovers();
        if let Some(dir) = state_dir
            && let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "removing the state directory");
        }
        failures
    }
}

/// The directory of the state maps (counters, connections) under a state directory.
pub fn state_map_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join(format!("maps-v{}", isolator_common::STATE_LAYOUT))
}

/// The policy in force as a running daemon pinned it under its state directory: read,
/// never written.
pub struct PinnedPolicy {
    /// The directory of its policy maps (`…/policy-a4-…`).
    pub dir: std::path::PathBuf,
    /// The active generation (`CONFIG[0]`).
    pub generation: u32,
    /// The entries of the active generation.
    pub entries: crate::encode::Entries,
    /// The entries of the other generation (the one not in force, which the next swap
    /// builds on), from the same reading of the maps.
    pub other: crate::encode::Entries,
}

/// Reads the policy in force from the maps pinned under `state_dir`, and in the same
/// reading the generation not in force. Where two daemons' policy maps are pinned (a
/// restart with larger maps, for a moment), the larger ones, the newer daemon's, are
/// read.
pub fn read_pinned_policy(state_dir: &Path) -> Result<PinnedPolicy, DataplaneError> {
    let map_dir = state_map_dir(state_dir);
    let dir = std::fs::read_dir(&map_dir)
        .map_err(io_err(format!("listing {}", map_dir.display())))?
        .flatten()
        .filter_map(|e| {
            let sizes = Sizes::from_dir_name(&e.file_name().to_string_lossy())?;
            Some((e.path(), sizes))
        })
        .max_by_key(|(_, s)| {
            (
                s.addresses_v4,
                s.addresses_v6,
                s.rulesets,
                s.pairs,
                s.gateways,
                s.uplinks,
            )
        })
        .map(|(path, _)| path)
        .ok_or_else(|| {
            io_err(format!("finding the policy maps in {}", map_dir.display()))(
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
    let config_path = dir.join(maps::CONFIG);
    let config = MapData::from_pin(&config_path).map_err(map_err(
        maps::CONFIG,
        format!("opening {}", config_path.display()),
    ))?;
    let config: Array<MapData, u32> = aya::maps::Map::from_map_data(config)
        .and_then(|m| m.try_into())
        .map_err(map_err(maps::CONFIG, "unexpected map type"))?;
    let generation = config
        .get(&0, 0)
        .map_err(map_err(maps::CONFIG, "reading the active generation"))?;
    let [zero, one] = PolicyTables::from_pins(&dir)?.read_both()?;
    let (entries, other) = match generation {
        0 => (zero, one),
        1 => (one, zero),
        _ => (
            crate::encode::Entries::default(),
            crate::encode::Entries::default(),
        ),
    };
    Ok(PinnedPolicy {
        dir,
        generation,
        entries,
        other,
    })
}

/// `CLOCK_BOOTTIME` in nanoseconds: increasing across daemon restarts (tracked
/// connections do not outlive a reboot).
pub(crate) fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(crate) fn collect_keys<K>(
    keys: impl Iterator<Item = Result<K, MapError>>,
    map: &'static str,
) -> Result<Vec<K>, DataplaneError> {
    keys.collect::<Result<Vec<_>, _>>()
        .map_err(map_err(map, "listing keys"))
}

impl Dataplane {
    /// The kernel's log records (once: the daemon follows them on its runtime, flushing
    /// whenever the returned logger's file descriptor is readable).
    pub fn take_kernel_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }

    /// The ring buffer of the programs' reports (management attempts, sampled drops), to
    /// read from another thread; `None` once taken.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// What the programs report, and how often (`EVENT_SETTINGS`).
    pub fn set_event_settings(
        &mut self,
        settings: isolator_common::EventSettings,
    ) -> Result<(), DataplaneError> {
        self.event_settings
            .set(0, settings, 0)
            .map_err(map_err(maps::EVENT_SETTINGS, "writing"))
    }

    /// Reports the programs did not make, by [`isolator_common::event::lost`], summed
    /// over CPUs.
    pub fn events_lost(
        &self,
    ) -> Result<[u64; isolator_common::event::lost::KINDS as usize], DataplaneError> {
        let mut out = [0; isolator_common::event::lost::KINDS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = self
                .events_lost
                .get(&(i as u32), 0)
                .map_err(map_err(maps::EVENTS_LOST, "reading"))?;
            *slot = per_cpu.iter().fold(0u64, |a, b| a.wrapping_add(*b));
        }
        Ok(out)
    }

    /// How many instructions the kernel's verifier walked to accept each program: their
    /// distance from its limit of 1 000 000 is what the next change to the programs has.
    pub fn verified_instructions(&mut self) -> Result<Vec<(&'static str, u32)>, DataplaneError> {
        // The TC ingress judge is loaded only where a vif needs it; here it is, to count.
        self.load_judge()?;
        let mut out = Vec::new();
        for name in [
            programs::XDP_INGRESS,
            programs::TC_EGRESS,
            programs::TC_INGRESS_TAGS,
            programs::TC_INGRESS_JUDGE,
        ] {
            let program = self
                .ebpf
                .program(name)
                .ok_or(DataplaneError::MissingProgram(name))?;
            let info = program
                .info()
                .map_err(prog_err(name, "reading the program's information"))?;
            out.push((name, info.verified_instruction_count().unwrap_or(0)));
        }
        Ok(out)
    }
}
