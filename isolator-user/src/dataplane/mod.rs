//! The parts that touch the kernel: loading the eBPF object, writing a policy
//! generation into the maps and swapping it in all at once, attaching the XDP program to
//! vifs, and reading the counters.
//!
//! The swap (see docs/design.md): every map key carries a generation (0 or 1). A new
//! policy is written under the generation that is not active, then the single `CONFIG`
//! entry is flipped to it, then, after a grace period longer than any program run, the
//! old generation's entries are removed. A packet reads the generation once, first, so
//! it is judged entirely by the old or entirely by the new policy. If writing the new
//! generation fails, it is removed again and the old policy stays active.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::{
    Ebpf, EbpfError, EbpfLoader, Pod,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use isolator_common::{
    ConnKey, ConnState, Counter, CounterKey, DeclaredMacKey, Ipv4PrefixKey, Ipv6PrefixKey, PairKey,
    RuleSet, SegmentInfo, SegmentKey, Settings, VifAddrV4Key, VifAddrV6Key, VifInfo, VifKey,
    VlanKey, conntrack, maps, programs,
};
use thiserror::Error;

use crate::compile::Plan;
use crate::recheck::Recheck;

/// The compiled kernel programs, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/isolator"));

/// How long to wait after a generation flip before removing the old generation's
/// entries. A program run takes microseconds; this is many orders of magnitude more.
pub const GRACE_PERIOD: Duration = Duration::from_millis(50);

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object")]
    Load(#[source] EbpfError),
    #[error("eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("map {map}: {what}")]
    Map {
        map: &'static str,
        what: String,
        #[source]
        source: MapError,
    },
    #[error("pinned state: {what}")]
    Pin {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("program {program}: {what}")]
    Program {
        program: &'static str,
        what: String,
        #[source]
        source: ProgramError,
    },
}

fn map_err(map: &'static str, what: impl Into<String>) -> impl FnOnce(MapError) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Map { map, what, source }
}

fn prog_err(
    program: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(ProgramError) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Program {
        program,
        what,
        source,
    }
}

/// How an XDP program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (native XDP).
    Native,
    /// Generic (skb) mode: correct, slower; used when the driver refuses native mode.
    Generic,
    /// Taken over from a previous daemon: its links were pinned and now run this
    /// daemon's programs (the mode they were attached in is kept).
    TakenOver,
}

/// A link the dataplane holds: by its file descriptor alone, or pinned as well, so that
/// it outlives the daemon.
enum Held {
    Owned(FdLink),
    Pinned(PinnedLink),
}

impl Held {
    /// Detaches the link (and removes its pin).
    fn release(self) -> std::io::Result<()> {
        match self {
            Held::Owned(link) => drop(link),
            Held::Pinned(link) => drop(link.unpin()?),
        }
        Ok(())
    }
}

struct Attachment {
    name: String,
    xdp: Held,
    tc: Held,
    tags: Held,
    mode: AttachMode,
}

/// A vif's pinned links left by a previous daemon.
#[derive(Default)]
struct LeftVif {
    xdp: Option<PinnedLink>,
    tc: Option<PinnedLink>,
    tags: Option<PinnedLink>,
}

/// Links left by a previous daemon, by ifindex.
type LeftLinks = BTreeMap<u32, LeftVif>;

/// Where pinned links are kept, and the links a previous daemon left there.
struct Pins {
    links: PathBuf,
    /// Not yet taken over.
    left: LeftLinks,
}

/// Maps kept in the state directory, so that a restarted daemon finds the policy in
/// force, its counters and its tracked connections: every map of the object but the
/// per-CPU scratch space (a test keeps this list complete).
pub const PINNED_MAPS: [&str; 23] = [
    maps::CONFIG,
    maps::SETTINGS,
    maps::VIFS,
    maps::SEGMENTS,
    maps::PREFIXES_V4,
    maps::PREFIXES_V6,
    maps::MANAGEMENT_V4,
    maps::MANAGEMENT_V6,
    maps::EXPOSED_V4,
    maps::EXPOSED_V6,
    maps::FLOWS,
    maps::NEIGHBOURS,
    maps::CONNTRACK,
    maps::CONNTRACK_EVENTS,
    maps::MAC_VIFS,
    maps::VIF_ADDRS_V4,
    maps::VIF_ADDRS_V6,
    maps::VIF_VLANS,
    maps::DECLARED_MACS,
    maps::DECLARED_V4,
    maps::DECLARED_V6,
    maps::FRAGMENTS,
    maps::COUNTERS,
];

fn pin_err(
    what: impl Into<String>,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Pin { what, source }
}

/// The loaded programs and their maps.
pub struct Dataplane {
    ebpf: Ebpf,
    config: Array<MapData, u32>,
    settings: Array<MapData, Settings>,
    vifs: HashMap<MapData, VifKey, VifInfo>,
    segments: HashMap<MapData, SegmentKey, SegmentInfo>,
    v4: LpmTrie<MapData, Ipv4PrefixKey, u32>,
    v6: LpmTrie<MapData, Ipv6PrefixKey, u32>,
    management_v4: LpmTrie<MapData, Ipv4PrefixKey, RuleSet>,
    management_v6: LpmTrie<MapData, Ipv6PrefixKey, RuleSet>,
    exposed_v4: LpmTrie<MapData, Ipv4PrefixKey, RuleSet>,
    exposed_v6: LpmTrie<MapData, Ipv6PrefixKey, RuleSet>,
    flows: HashMap<MapData, PairKey, RuleSet>,
    neighbours: HashMap<MapData, PairKey, u32>,
    vif_addrs_v4: LpmTrie<MapData, VifAddrV4Key, u8>,
    vif_addrs_v6: LpmTrie<MapData, VifAddrV6Key, u8>,
    vif_vlans: HashMap<MapData, VlanKey, u8>,
    declared_macs: HashMap<MapData, DeclaredMacKey, u32>,
    declared_v4: LpmTrie<MapData, Ipv4PrefixKey, u32>,
    declared_v6: LpmTrie<MapData, Ipv6PrefixKey, u32>,
    conntrack: HashMap<MapData, ConnKey, ConnState>,
    conntrack_events: PerCpuArray<MapData, u64>,
    counters: PerCpuHashMap<MapData, CounterKey, Counter>,
    active: u32,
    attached: BTreeMap<u32, Attachment>,
    pins: Option<Pins>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
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
        let ebpf = Ebpf::load(EBPF_OBJECT).map_err(DataplaneError::Load)?;
        Self::from_ebpf(ebpf, None)
    }

    /// Loads the programs with their maps and links kept under `state_dir` (a bpffs
    /// directory): maps a previous daemon pinned there are reused (the policy in force,
    /// counters, tracked connections), and its pinned links are taken over by
    /// [`Dataplane::attach`]. Without a previous daemon this is [`Dataplane::load`]
    /// plus pinning.
    pub fn load_pinned(state_dir: &Path) -> Result<Self, DataplaneError> {
        ensure_bpffs(state_dir)?;
        let map_dir = state_dir.join(format!("maps-v{}", isolator_common::STATE_LAYOUT));
        let links = state_dir.join("links");
        for dir in [&map_dir, &links] {
            std::fs::create_dir_all(dir)
                .map_err(|e| pin_err(format!("creating {}", dir.display()))(Box::new(e)))?;
        }
        let mut loader = EbpfLoader::new();
        for name in PINNED_MAPS {
            loader.map_pin_path(name, map_dir.join(name));
        }
        let ebpf = loader.load(EBPF_OBJECT).map_err(DataplaneError::Load)?;
        let left = read_pinned_links(&links)?;
        let mut dp = Self::from_ebpf(ebpf, Some(Pins { links, left }))?;
        // A previous daemon's policy may be in force: continue from its generation.
        dp.active = dp
            .config
            .get(&0, 0)
            .map_err(map_err(maps::CONFIG, "reading the active generation"))?;
        // Maps of other layouts belong to older versions; their programs are replaced
        // as this daemon takes their links over, so the maps can go.
        if let Ok(entries) = std::fs::read_dir(state_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("maps-v") && entry.path() != map_dir {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(dp)
    }

    fn from_ebpf(mut ebpf: Ebpf, pins: Option<Pins>) -> Result<Self, DataplaneError> {
        let config = take(&mut ebpf, maps::CONFIG)?;
        let settings = take(&mut ebpf, maps::SETTINGS)?;
        let vifs = take(&mut ebpf, maps::VIFS)?;
        let segments = take(&mut ebpf, maps::SEGMENTS)?;
        let v4 = take(&mut ebpf, maps::PREFIXES_V4)?;
        let v6 = take(&mut ebpf, maps::PREFIXES_V6)?;
        let counters = take(&mut ebpf, maps::COUNTERS)?;
        let management_v4 = take(&mut ebpf, maps::MANAGEMENT_V4)?;
        let management_v6 = take(&mut ebpf, maps::MANAGEMENT_V6)?;
        let exposed_v4 = take(&mut ebpf, maps::EXPOSED_V4)?;
        let exposed_v6 = take(&mut ebpf, maps::EXPOSED_V6)?;
        let flows = take(&mut ebpf, maps::FLOWS)?;
        let neighbours = take(&mut ebpf, maps::NEIGHBOURS)?;
        let vif_addrs_v4 = take(&mut ebpf, maps::VIF_ADDRS_V4)?;
        let vif_addrs_v6 = take(&mut ebpf, maps::VIF_ADDRS_V6)?;
        let vif_vlans = take(&mut ebpf, maps::VIF_VLANS)?;
        let declared_macs = take(&mut ebpf, maps::DECLARED_MACS)?;
        let declared_v4 = take(&mut ebpf, maps::DECLARED_V4)?;
        let declared_v6 = take(&mut ebpf, maps::DECLARED_V6)?;
        let conntrack = take(&mut ebpf, maps::CONNTRACK)?;
        let conntrack_events = take(&mut ebpf, maps::CONNTRACK_EVENTS)?;
        let mut dp = Dataplane {
            ebpf,
            config,
            settings,
            vifs,
            segments,
            v4,
            v6,
            management_v4,
            management_v6,
            exposed_v4,
            exposed_v6,
            flows,
            neighbours,
            vif_addrs_v4,
            vif_addrs_v6,
            vif_vlans,
            declared_macs,
            declared_v4,
            declared_v6,
            conntrack,
            conntrack_events,
            counters,
            active: 0,
            attached: BTreeMap::new(),
            pins,
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

    /// The generation the kernel judges packets by.
    pub fn active_generation(&self) -> u32 {
        self.active
    }

    /// Puts `plan` into effect all at once (see the module documentation). On error the
    /// previously active policy is still in force, untouched.
    pub fn apply(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
        let next = self.active ^ 1;
        // Leftovers of an earlier, failed apply would otherwise mix into this one.
        self.purge(next)?;
        if let Err(e) = self.write(plan, next) {
            // Best effort: the entries are inert while `next` is not active.
            let _ = self.purge(next);
            return Err(e);
        }
        self.config
            .set(0, next, 0)
            .map_err(map_err(maps::CONFIG, "activating the new generation"))?;
        let old = self.active;
        self.active = next;
        std::thread::sleep(GRACE_PERIOD);
        self.purge(old)
    }

    fn write(&mut self, plan: &Plan, generation: u32) -> Result<(), DataplaneError> {
        self.settings
            .set(generation, plan.settings, 0)
            .map_err(map_err(maps::SETTINGS, "writing the settings"))?;
        for (key, value) in plan.segment_entries(generation) {
            insert(&mut self.segments, maps::SEGMENTS, &key, &value)?;
        }
        insert_lpm(&mut self.v4, maps::PREFIXES_V4, plan.v4_entries(generation))?;
        insert_lpm(&mut self.v6, maps::PREFIXES_V6, plan.v6_entries(generation))?;
        insert_lpm(
            &mut self.management_v4,
            maps::MANAGEMENT_V4,
            plan.management_v4_entries(generation),
        )?;
        insert_lpm(
            &mut self.management_v6,
            maps::MANAGEMENT_V6,
            plan.management_v6_entries(generation),
        )?;
        insert_lpm(
            &mut self.exposed_v4,
            maps::EXPOSED_V4,
            plan.exposed_v4_entries(generation),
        )?;
        insert_lpm(
            &mut self.exposed_v6,
            maps::EXPOSED_V6,
            plan.exposed_v6_entries(generation),
        )?;
        for (key, value) in plan.flow_entries(generation) {
            insert(&mut self.flows, maps::FLOWS, &key, &value)?;
        }
        for key in plan.neighbour_entries(generation) {
            insert(&mut self.neighbours, maps::NEIGHBOURS, &key, &1)?;
        }
        insert_lpm(
            &mut self.vif_addrs_v4,
            maps::VIF_ADDRS_V4,
            plan.vif_addr_v4_entries(generation),
        )?;
        insert_lpm(
            &mut self.vif_addrs_v6,
            maps::VIF_ADDRS_V6,
            plan.vif_addr_v6_entries(generation),
        )?;
        for key in plan.vlan_entries(generation) {
            insert(&mut self.vif_vlans, maps::VIF_VLANS, &key, &1)?;
        }
        for (key, ifindex) in plan.declared_mac_entries(generation) {
            insert(&mut self.declared_macs, maps::DECLARED_MACS, &key, &ifindex)?;
        }
        insert_lpm(
            &mut self.declared_v4,
            maps::DECLARED_V4,
            plan.declared_v4_entries(generation),
        )?;
        insert_lpm(
            &mut self.declared_v6,
            maps::DECLARED_V6,
            plan.declared_v6_entries(generation),
        )?;
        // Vifs last: a vif's entry only ever points at segments already written.
        for (key, value) in plan.vif_entries(generation) {
            insert(&mut self.vifs, maps::VIFS, &key, &value)?;
        }
        Ok(())
    }

    /// Removes every entry of `generation`. Vifs first, so that a straggling packet of
    /// that generation fails closed rather than finding half of a policy.
    fn purge(&mut self, generation: u32) -> Result<(), DataplaneError> {
        let g = generation.to_be_bytes();
        purge(&mut self.vifs, maps::VIFS, |k| k.generation == generation)?;
        purge(&mut self.segments, maps::SEGMENTS, |k| {
            k.generation == generation
        })?;
        purge(&mut self.flows, maps::FLOWS, |k| k.generation == generation)?;
        purge(&mut self.neighbours, maps::NEIGHBOURS, |k| {
            k.generation == generation
        })?;
        purge_lpm(&mut self.v4, maps::PREFIXES_V4, |k| k.generation == g)?;
        purge_lpm(&mut self.v6, maps::PREFIXES_V6, |k| k.generation == g)?;
        purge_lpm(&mut self.management_v4, maps::MANAGEMENT_V4, |k| {
            k.generation == g
        })?;
        purge_lpm(&mut self.management_v6, maps::MANAGEMENT_V6, |k| {
            k.generation == g
        })?;
        purge_lpm(&mut self.exposed_v4, maps::EXPOSED_V4, |k| {
            k.generation == g
        })?;
        purge_lpm(&mut self.exposed_v6, maps::EXPOSED_V6, |k| {
            k.generation == g
        })?;
        purge_lpm(&mut self.vif_addrs_v4, maps::VIF_ADDRS_V4, |k| {
            k.generation == g
        })?;
        purge_lpm(&mut self.vif_addrs_v6, maps::VIF_ADDRS_V6, |k| {
            k.generation == g
        })?;
        purge(&mut self.vif_vlans, maps::VIF_VLANS, |k| {
            k.generation == generation
        })?;
        purge(&mut self.declared_macs, maps::DECLARED_MACS, |k| {
            k.generation == generation
        })?;
        purge_lpm(&mut self.declared_v4, maps::DECLARED_V4, |k| {
            k.generation == g
        })?;
        purge_lpm(&mut self.declared_v6, maps::DECLARED_V6, |k| {
            k.generation == g
        })?;
        Ok(())
    }

    /// The generations that entries of each generation-keyed map belong to. After a
    /// completed swap every map holds the active generation only (or nothing): a map
    /// left out of the purge would bring an old policy back when its generation number
    /// is reused.
    pub fn generations(&self) -> Result<Vec<(&'static str, BTreeSet<u32>)>, DataplaneError> {
        fn of<K>(
            keys: impl Iterator<Item = Result<K, MapError>>,
            name: &'static str,
            generation: impl Fn(&K) -> u32,
        ) -> Result<(&'static str, BTreeSet<u32>), DataplaneError> {
            Ok((
                name,
                collect_keys(keys, name)?.iter().map(generation).collect(),
            ))
        }
        let be = u32::from_be_bytes;
        Ok(vec![
            of(self.vifs.keys(), maps::VIFS, |k| k.generation)?,
            of(self.segments.keys(), maps::SEGMENTS, |k| k.generation)?,
            of(self.v4.keys(), maps::PREFIXES_V4, |k| {
                be(k.data().generation)
            })?,
            of(self.v6.keys(), maps::PREFIXES_V6, |k| {
                be(k.data().generation)
            })?,
            of(self.management_v4.keys(), maps::MANAGEMENT_V4, |k| {
                be(k.data().generation)
            })?,
            of(self.management_v6.keys(), maps::MANAGEMENT_V6, |k| {
                be(k.data().generation)
            })?,
            of(self.exposed_v4.keys(), maps::EXPOSED_V4, |k| {
                be(k.data().generation)
            })?,
            of(self.exposed_v6.keys(), maps::EXPOSED_V6, |k| {
                be(k.data().generation)
            })?,
            of(self.flows.keys(), maps::FLOWS, |k| k.generation)?,
            of(self.neighbours.keys(), maps::NEIGHBOURS, |k| k.generation)?,
            of(self.vif_addrs_v4.keys(), maps::VIF_ADDRS_V4, |k| {
                be(k.data().generation)
            })?,
            of(self.vif_addrs_v6.keys(), maps::VIF_ADDRS_V6, |k| {
                be(k.data().generation)
            })?,
            of(self.vif_vlans.keys(), maps::VIF_VLANS, |k| k.generation)?,
            of(self.declared_macs.keys(), maps::DECLARED_MACS, |k| {
                k.generation
            })?,
            of(self.declared_v4.keys(), maps::DECLARED_V4, |k| {
                be(k.data().generation)
            })?,
            of(self.declared_v6.keys(), maps::DECLARED_V6, |k| {
                be(k.data().generation)
            })?,
        ])
    }

    /// Attaches the programs to a vif: XDP (ingress) in native mode, or generic mode
    /// when the driver refuses native XDP; TC on its egress; and TC on its ingress for
    /// VLAN tags carried outside the frame (both TCX). All or none: if one attachment
    /// fails, the others are undone. Links a previous daemon pinned for this vif are
    /// taken over instead: the running programs are replaced by this daemon's, atomically,
    /// so the vif is never without one.
    pub fn attach(&mut self, name: &str, ifindex: u32) -> Result<AttachMode, DataplaneError> {
        if let Some(existing) = self.attached.get(&ifindex) {
            return Ok(existing.mode);
        }
        let old = self
            .pins
            .as_mut()
            .and_then(|p| p.left.remove(&ifindex))
            .unwrap_or_default();
        let taken_over = old.xdp.is_some() || old.tc.is_some() || old.tags.is_some();

        let (xdp, mut mode) = match old.xdp {
            Some(old) => (self.take_over_xdp(name, old)?, AttachMode::TakenOver),
            None => self.attach_xdp(name, ifindex)?,
        };
        let mut held = vec![xdp];
        for (program, attach_type, old) in [
            (programs::TC_EGRESS, TcAttachType::Egress, old.tc),
            (programs::TC_INGRESS_TAGS, TcAttachType::Ingress, old.tags),
        ] {
            let link = match old {
                Some(old) => self.take_over_tc(program, name, old),
                None => self.attach_tc(program, attach_type, name, ifindex),
            };
            match link {
                Ok(link) => held.push(link),
                Err(e) => {
                    for link in held {
                        let _ = link.release();
                    }
                    return Err(e);
                }
            }
        }
        // Pinned, the links outlive this daemon (a crash leaves the vif enforced).
        let mut pinned = Vec::new();
        let mut unpinned = PIN_KINDS.into_iter().zip(held);
        while let Some((kind, link)) = unpinned.next() {
            match self.pin(ifindex, kind, link) {
                Ok(link) => pinned.push(link),
                Err(e) => {
                    for link in pinned.into_iter().chain(unpinned.map(|(_, l)| l)) {
                        let _ = link.release();
                    }
                    return Err(e);
                }
            }
        }
        let [xdp, tc, tags]: [Held; 3] = match pinned.try_into() {
            Ok(links) => links,
            Err(_) => unreachable!("three programs, three links"),
        };
        if taken_over {
            mode = AttachMode::TakenOver;
        }
        self.attached.insert(
            ifindex,
            Attachment {
                name: name.to_string(),
                xdp,
                tc,
                tags,
                mode,
            },
        );
        Ok(mode)
    }

    fn attach_xdp(
        &mut self,
        name: &str,
        ifindex: u32,
    ) -> Result<(Held, AttachMode), DataplaneError> {
        let program = self.ingress()?;
        let (id, mode) = match program.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(id) => (id, AttachMode::Native),
            Err(native_err) => {
                let id = program
                    .attach_to_if_index(ifindex, XdpMode::Skb)
                    .map_err(prog_err(
                        programs::XDP_INGRESS,
                        format!(
                            "attaching to {name} (ifindex {ifindex}) in native mode failed \
                             ({native_err}) and in generic mode too"
                        ),
                    ))?;
                (id, AttachMode::Generic)
            }
        };
        let link = program
            .take_link(id)
            .map_err(prog_err(programs::XDP_INGRESS, "taking the link"))?;
        let link = FdLink::try_from(link).map_err(|e| {
            pin_err(format!("the XDP link of {name} is not a bpf_link"))(Box::new(e))
        })?;
        Ok((Held::Owned(link), mode))
    }

    fn attach_tc(
        &mut self,
        program_name: &'static str,
        attach_type: TcAttachType,
        name: &str,
        ifindex: u32,
    ) -> Result<Held, DataplaneError> {
        let program = self.classifier(program_name)?;
        let id = program.attach(name, attach_type).map_err(prog_err(
            program_name,
            format!("attaching to the {attach_type:?} of {name} (ifindex {ifindex})"),
        ))?;
        let link = program
            .take_link(id)
            .map_err(prog_err(program_name, "taking the link"))?;
        let link = FdLink::try_from(link).map_err(|e| {
            pin_err(format!("the TC link of {name} is not a bpf_link"))(Box::new(e))
        })?;
        Ok(Held::Owned(link))
    }

    fn take_over_xdp(&mut self, name: &str, old: PinnedLink) -> Result<Held, DataplaneError> {
        let link = old
            .unpin()
            .map_err(|e| pin_err(format!("unpinning the XDP link of {name}"))(Box::new(e)))?;
        let link = XdpLink::try_from(link)
            .map_err(|e| pin_err(format!("the pinned XDP link of {name}"))(Box::new(e)))?;
        let program = self.ingress()?;
        let id = program.attach_to_link(link).map_err(prog_err(
            programs::XDP_INGRESS,
            format!("replacing the program on {name}'s pinned link"),
        ))?;
        let link = program
            .take_link(id)
            .map_err(prog_err(programs::XDP_INGRESS, "taking the link"))?;
        let link = FdLink::try_from(link)
            .map_err(|e| pin_err(format!("the XDP link of {name}"))(Box::new(e)))?;
        Ok(Held::Owned(link))
    }

    fn take_over_tc(
        &mut self,
        program_name: &'static str,
        name: &str,
        old: PinnedLink,
    ) -> Result<Held, DataplaneError> {
        let link = old
            .unpin()
            .map_err(|e| pin_err(format!("unpinning the TC link of {name}"))(Box::new(e)))?;
        let link = SchedClassifierLink::try_from(link)
            .map_err(|e| pin_err(format!("the pinned TC link of {name}"))(Box::new(e)))?;
        let program = self.classifier(program_name)?;
        let id = program.attach_to_link(link).map_err(prog_err(
            program_name,
            format!("replacing the program on {name}'s pinned link"),
        ))?;
        let link = program
            .take_link(id)
            .map_err(prog_err(program_name, "taking the link"))?;
        let link = FdLink::try_from(link)
            .map_err(|e| pin_err(format!("the TC link of {name}"))(Box::new(e)))?;
        Ok(Held::Owned(link))
    }

    /// Pins a link under the state directory (when there is one). On error the link is
    /// gone (detached).
    fn pin(&self, ifindex: u32, kind: &str, link: Held) -> Result<Held, DataplaneError> {
        let Some(pins) = &self.pins else {
            return Ok(link);
        };
        let Held::Owned(fd) = link else {
            return Ok(link);
        };
        let path = pins.links.join(format!("{ifindex}-{kind}"));
        // A leftover that was not a link would block the pin.
        let _ = std::fs::remove_file(&path);
        fd.pin(&path)
            .map(Held::Pinned)
            .map_err(|e| pin_err(format!("pinning {}", path.display()))(Box::new(e)))
    }

    /// Links pinned by a previous daemon that no vif took over: the vifs are gone or no
    /// longer managed, so their programs are removed.
    pub fn release_leftovers(&mut self) -> usize {
        let Some(pins) = self.pins.as_mut() else {
            return 0;
        };
        let left = std::mem::take(&mut pins.left);
        let count = left.len();
        for (_, vif) in left {
            for link in [vif.xdp, vif.tc, vif.tags].into_iter().flatten() {
                let _ = link.unpin();
            }
        }
        count
    }

    /// Detaches the programs from one vif.
    pub fn detach(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let Some(attachment) = self.attached.remove(&ifindex) else {
            return Ok(());
        };
        let name = attachment.name;
        let xdp = attachment.xdp.release();
        let tc = attachment.tc.release();
        let tags = attachment.tags.release();
        xdp.and(tc)
            .and(tags)
            .map_err(|e| pin_err(format!("detaching from {name}"))(Box::new(e)))
    }

    /// Detaches from every vif; returns the names of the ones that failed with why.
    pub fn detach_all(&mut self) -> Vec<(String, DataplaneError)> {
        let mut failures = Vec::new();
        let ifindexes: Vec<u32> = self.attached.keys().copied().collect();
        for ifindex in ifindexes {
            let name = self.attached[&ifindex].name.clone();
            if let Err(e) = self.detach(ifindex) {
                failures.push((name, e));
            }
        }
        failures
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

    /// The vifs the program is attached to: (ifindex, name, mode).
    pub fn attachments(&self) -> impl Iterator<Item = (u32, &str, AttachMode)> {
        self.attached
            .iter()
            .map(|(i, a)| (*i, a.name.as_str(), a.mode))
    }

    /// Removes the counters of interfaces other than `keep` (ifindexes): those of
    /// interfaces that are gone would otherwise fill the map over time. Returns how many
    /// keys it removed.
    pub fn prune_counters(
        &mut self,
        keep: &std::collections::BTreeSet<u32>,
    ) -> Result<usize, DataplaneError> {
        let keys = collect_keys(self.counters.keys(), maps::COUNTERS)?;
        let mut removed = 0;
        for key in keys.iter().filter(|k| !keep.contains(&k.ifindex)) {
            match self.counters.remove(key) {
                Ok(()) => removed += 1,
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_err(maps::COUNTERS, "removing stale counters")(e)),
            }
        }
        Ok(removed)
    }

    /// Every counter, summed over CPUs, sorted by key.
    pub fn counters(&self) -> Result<Vec<(CounterKey, Counter)>, DataplaneError> {
        let mut out = Vec::new();
        for item in self.counters.iter() {
            let (key, per_cpu) = item.map_err(map_err(maps::COUNTERS, "reading"))?;
            let mut total = Counter::default();
            for c in per_cpu.iter() {
                // Wrapping: a CPU's share can dip below zero when a frame counted on
                // one CPU is taken back on another (see `isolator_tags`).
                total.packets = total.packets.wrapping_add(c.packets);
                total.bytes = total.bytes.wrapping_add(c.bytes);
            }
            out.push((key, total));
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// Every tracked connection, as the kernel holds it.
    pub fn connections(&self) -> Result<Vec<(ConnKey, ConnState)>, DataplaneError> {
        self.conntrack
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(maps::CONNTRACK, "listing connections"))
    }

    /// Removes tracked connections idle past their timeout under `settings` (the kernel
    /// removes them only when a packet looks them up) and returns how many it removed.
    pub fn sweep_connections(&mut self, settings: &Settings) -> Result<u64, DataplaneError> {
        let now = monotonic_ns();
        let mut removed = 0;
        for (key, state) in self.connections()? {
            let timeout = match key.protocol {
                6 if state.state == conntrack::ESTABLISHED => settings.tcp_idle_ns,
                6 => settings.tcp_closing_ns,
                17 => settings.udp_idle_ns,
                _ => settings.icmp_idle_ns,
            };
            if now.saturating_sub(state.last_seen_ns) > timeout {
                match self.conntrack.remove(&key) {
                    Ok(()) => removed += 1,
                    // Removed meanwhile by the kernel (RST, expiry) or evicted.
                    Err(MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(map_err(maps::CONNTRACK, "removing an idle entry")(e)),
                }
            }
        }
        Ok(removed)
    }

    /// Removes the tracked connections the policy in `recheck` would not admit (see
    /// [`Recheck`]) and returns how many it removed. Run after every policy swap.
    pub fn revoke_connections(&mut self, recheck: &Recheck) -> Result<u64, DataplaneError> {
        let mut removed = 0;
        for (key, state) in self.connections()? {
            if recheck.admits(&key, &state) {
                continue;
            }
            match self.conntrack.remove(&key) {
                Ok(()) => removed += 1,
                // Ended meanwhile (RST, expiry) or evicted.
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => {
                    return Err(map_err(maps::CONNTRACK, "removing a revoked connection")(e));
                }
            }
        }
        Ok(removed)
    }

    /// Connection tracking: (entries in the table, events by [`conntrack`] index summed
    /// over CPUs).
    pub fn conntrack(&self) -> Result<(u64, [u64; conntrack::EVENTS as usize]), DataplaneError> {
        let mut entries = 0;
        for key in self.conntrack.keys() {
            key.map_err(map_err(maps::CONNTRACK, "counting entries"))?;
            entries += 1;
        }
        let mut events = [0u64; conntrack::EVENTS as usize];
        for (i, total) in events.iter_mut().enumerate() {
            let per_cpu = self
                .conntrack_events
                .get(&(i as u32), 0)
                .map_err(map_err(maps::CONNTRACK_EVENTS, "reading"))?;
            *total = per_cpu.iter().sum();
        }
        Ok((entries, events))
    }

    /// Runs the ingress program once on `frame` as if it arrived on `ifindex`
    /// (BPF_PROG_TEST_RUN) and returns the XDP action. `ifindex` must name a device in
    /// the calling thread's network namespace.
    pub fn test_run_ingress(&mut self, ifindex: u32, frame: &[u8]) -> Result<u32, DataplaneError> {
        let ctx = xdp_md(ifindex, frame);
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            ..TestRunOptions::new()
        };
        let result = self
            .ingress()?
            .test_run(opts)
            .map_err(prog_err(programs::XDP_INGRESS, "test run"))?;
        Ok(result.return_value)
    }

    /// Runs the ingress program (or, with `baseline`, the pass-everything baseline)
    /// `repeat` times on `frame` arriving on `ifindex` and returns the kernel's average
    /// time per run. For benchmarks.
    pub fn bench_ingress(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
        baseline: bool,
    ) -> Result<Duration, DataplaneError> {
        let ctx = xdp_md(ifindex, frame);
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        };
        let name = if baseline {
            programs::XDP_BASELINE
        } else {
            programs::XDP_INGRESS
        };
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(prog_err(name, "unexpected program type"))?;
        if baseline && program.fd().is_err() {
            program.load().map_err(prog_err(name, "loading"))?;
        }
        let result = program
            .test_run(opts)
            .map_err(prog_err(name, "benchmark run"))?;
        Ok(result.duration)
    }

    /// Times `repeat` runs of the TC ingress program (VLAN tags in offload metadata) on
    /// `frame` received on `ifindex` (BPF_PROG_TEST_RUN cannot set a metadata tag, so this
    /// is the cost every untagged frame pays); returns the kernel's average per run.
    pub fn bench_tags(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> Result<Duration, DataplaneError> {
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        };
        let result = self
            .classifier(programs::TC_INGRESS_TAGS)?
            .test_run(opts)
            .map_err(prog_err(programs::TC_INGRESS_TAGS, "benchmark run"))?;
        Ok(result.duration)
    }

    /// Runs the egress program once on `frame` as if it were delivered through
    /// `ifindex` (BPF_PROG_TEST_RUN) and returns the TC action (0 pass, 2 drop).
    /// `ifindex` must name a device in the calling thread's network namespace.
    pub fn test_run_egress(&mut self, ifindex: u32, frame: &[u8]) -> Result<i32, DataplaneError> {
        // struct __sk_buff up to `ifindex` (offset 40); the kernel takes a prefix and
        // wants every field it does not allow to be set left zero.
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            ..TestRunOptions::new()
        };
        let result = self
            .classifier(programs::TC_EGRESS)?
            .test_run(opts)
            .map_err(prog_err(programs::TC_EGRESS, "test run"))?;
        Ok(result.return_value as i32)
    }
}

fn insert<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: &K,
    value: &V,
) -> Result<(), DataplaneError> {
    map.insert(key, value, 0)
        .map_err(map_err(name, "adding an entry"))
}

fn insert_lpm<K: Pod, V: Pod>(
    map: &mut LpmTrie<MapData, K, V>,
    name: &'static str,
    entries: Vec<(u32, K, V)>,
) -> Result<(), DataplaneError> {
    for (len, data, value) in entries {
        map.insert(&Key::new(len, data), value, 0)
            .map_err(map_err(name, "adding a prefix"))?;
    }
    Ok(())
}

fn purge<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    doomed: impl Fn(&K) -> bool,
) -> Result<(), DataplaneError> {
    let keys = collect_keys(map.keys(), name)?;
    for key in keys.iter().filter(|k| doomed(k)) {
        map.remove(key)
            .map_err(map_err(name, "removing an old entry"))?;
    }
    Ok(())
}

fn purge_lpm<K: Pod, V: Pod>(
    map: &mut LpmTrie<MapData, K, V>,
    name: &'static str,
    doomed: impl Fn(&K) -> bool,
) -> Result<(), DataplaneError> {
    let keys = collect_keys(map.keys(), name)?;
    for key in keys.iter().filter(|k| doomed(&k.data())) {
        map.remove(key)
            .map_err(map_err(name, "removing an old entry"))?;
    }
    Ok(())
}

/// The context of a test run of an XDP program: `struct xdp_md { data, data_end,
/// data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }`; the kernel wants
/// data_end = frame length and the rest zero but the ingress interface.
fn xdp_md(ifindex: u32, frame: &[u8]) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
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

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The state directory must be on bpffs. The conventional place, /sys/fs/bpf, is
/// mounted here when nothing is (as systemd does at boot); anywhere else the operator
/// has to mount it.
fn ensure_bpffs(state_dir: &Path) -> Result<(), DataplaneError> {
    let mut existing = state_dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if fs_magic(existing) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let conventional = Path::new("/sys/fs/bpf");
    if existing == conventional && fs_magic(conventional) != Some(BPF_FS_MAGIC) {
        tracing::info!("mounting bpffs at /sys/fs/bpf (nothing was mounted there)");
        // SAFETY: valid NUL-terminated strings; mounting bpffs has no other preconditions.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        return Err(pin_err("mounting bpffs at /sys/fs/bpf")(Box::new(
            std::io::Error::last_os_error(),
        )));
    }
    Err(pin_err(format!(
        "{} is not on a bpf filesystem; mount one (mount -t bpf bpf DIR) or choose \
         --state-dir under /sys/fs/bpf",
        state_dir.display()
    ))(Box::new(std::io::Error::from(
        std::io::ErrorKind::Unsupported,
    ))))
}

fn fs_magic(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated and st is a valid statfs to fill.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_type as i64)
}

/// Pin names of a vif's links, in attachment order: `<ifindex>-<kind>`.
const PIN_KINDS: [&str; 3] = ["xdp", "tc", "tags"];

/// The links pinned under `dir` by a previous daemon, by ifindex: files `<ifindex>-xdp`,
/// `<ifindex>-tc` and `<ifindex>-tags`.
fn read_pinned_links(dir: &Path) -> Result<LeftLinks, DataplaneError> {
    let mut left = LeftLinks::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| pin_err(format!("listing {}", dir.display()))(Box::new(e)))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((ifindex, kind)) = name.split_once('-') else {
            continue;
        };
        let Ok(ifindex) = ifindex.parse::<u32>() else {
            continue;
        };
        let link = match PinnedLink::from_pin(entry.path()) {
            Ok(link) => link,
            Err(e) => {
                // Not a link (or unreadable): leave it, say so.
                tracing::warn!(path = %entry.path().display(), error = %e, "ignoring a pin that is not a link");
                continue;
            }
        };
        let slot = left.entry(ifindex).or_default();
        match kind {
            "xdp" => slot.xdp = Some(link),
            "tc" => slot.tc = Some(link),
            "tags" => slot.tags = Some(link),
            _ => {}
        }
    }
    Ok(left)
}

fn collect_keys<K>(
    keys: impl Iterator<Item = Result<K, MapError>>,
    map: &'static str,
) -> Result<Vec<K>, DataplaneError> {
    keys.collect::<Result<Vec<_>, _>>()
        .map_err(map_err(map, "listing keys"))
}
