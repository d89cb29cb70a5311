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

use std::collections::BTreeMap;
use std::time::Duration;

use aya::{
    Ebpf, EbpfError,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuHashMap, lpm_trie::Key},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use isolator_common::{
    Counter, CounterKey, Ipv4PrefixKey, Ipv6PrefixKey, SegmentInfo, SegmentKey, VifInfo, VifKey,
    maps, programs,
};
use thiserror::Error;

use crate::compile::Plan;

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
}

#[derive(Debug)]
struct Attachment {
    name: String,
    link: XdpLinkId,
    mode: AttachMode,
}

/// The loaded programs and their maps.
pub struct Dataplane {
    ebpf: Ebpf,
    config: Array<MapData, u32>,
    vifs: HashMap<MapData, VifKey, VifInfo>,
    segments: HashMap<MapData, SegmentKey, SegmentInfo>,
    v4: LpmTrie<MapData, Ipv4PrefixKey, u32>,
    v6: LpmTrie<MapData, Ipv6PrefixKey, u32>,
    counters: PerCpuHashMap<MapData, CounterKey, Counter>,
    active: u32,
    attached: BTreeMap<u32, Attachment>,
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
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(DataplaneError::Load)?;
        let config = take(&mut ebpf, maps::CONFIG)?;
        let vifs = take(&mut ebpf, maps::VIFS)?;
        let segments = take(&mut ebpf, maps::SEGMENTS)?;
        let v4 = take(&mut ebpf, maps::PREFIXES_V4)?;
        let v6 = take(&mut ebpf, maps::PREFIXES_V6)?;
        let counters = take(&mut ebpf, maps::COUNTERS)?;
        let mut dp = Dataplane {
            ebpf,
            config,
            vifs,
            segments,
            v4,
            v6,
            counters,
            active: 0,
            attached: BTreeMap::new(),
        };
        dp.ingress()?
            .load()
            .map_err(prog_err(programs::XDP_INGRESS, "verifying and loading"))?;
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
        for (key, value) in plan.segment_entries(generation) {
            self.segments.insert(key, value, 0).map_err(map_err(
                maps::SEGMENTS,
                format!("adding segment {}", key.segment),
            ))?;
        }
        for (len, data, segment) in plan.v4_entries(generation) {
            self.v4
                .insert(&Key::new(len, data), segment, 0)
                .map_err(map_err(maps::PREFIXES_V4, "adding a prefix"))?;
        }
        for (len, data, segment) in plan.v6_entries(generation) {
            self.v6
                .insert(&Key::new(len, data), segment, 0)
                .map_err(map_err(maps::PREFIXES_V6, "adding a prefix"))?;
        }
        // Vifs last: a vif's entry only ever points at segments already written.
        for (key, value) in plan.vif_entries(generation) {
            self.vifs.insert(key, value, 0).map_err(map_err(
                maps::VIFS,
                format!("adding ifindex {}", key.ifindex),
            ))?;
        }
        Ok(())
    }

    /// Removes every entry of `generation`. Vifs first, so that a straggling packet of
    /// that generation fails closed rather than finding half of a policy.
    fn purge(&mut self, generation: u32) -> Result<(), DataplaneError> {
        let keys = collect_keys(self.vifs.keys(), maps::VIFS)?;
        for key in keys.into_iter().filter(|k| k.generation == generation) {
            self.vifs
                .remove(&key)
                .map_err(map_err(maps::VIFS, "removing an old entry"))?;
        }
        let keys = collect_keys(self.segments.keys(), maps::SEGMENTS)?;
        for key in keys.into_iter().filter(|k| k.generation == generation) {
            self.segments
                .remove(&key)
                .map_err(map_err(maps::SEGMENTS, "removing an old entry"))?;
        }
        let gen_bytes = generation.to_be_bytes();
        let keys = collect_keys(self.v4.keys(), maps::PREFIXES_V4)?;
        for key in keys
            .into_iter()
            .filter(|k| k.data().generation == gen_bytes)
        {
            self.v4
                .remove(&key)
                .map_err(map_err(maps::PREFIXES_V4, "removing an old entry"))?;
        }
        let keys = collect_keys(self.v6.keys(), maps::PREFIXES_V6)?;
        for key in keys
            .into_iter()
            .filter(|k| k.data().generation == gen_bytes)
        {
            self.v6
                .remove(&key)
                .map_err(map_err(maps::PREFIXES_V6, "removing an old entry"))?;
        }
        Ok(())
    }

    /// Attaches the ingress program to a vif: native mode, or generic mode when the
    /// driver refuses native XDP.
    pub fn attach(&mut self, name: &str, ifindex: u32) -> Result<AttachMode, DataplaneError> {
        if let Some(existing) = self.attached.get(&ifindex) {
            return Ok(existing.mode);
        }
        let program = self.ingress()?;
        let (link, mode) = match program.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(link) => (link, AttachMode::Native),
            Err(native_err) => {
                let link = program
                    .attach_to_if_index(ifindex, XdpMode::Skb)
                    .map_err(prog_err(
                        programs::XDP_INGRESS,
                        format!(
                            "attaching to {name} (ifindex {ifindex}) in native mode failed \
                             ({native_err}) and in generic mode too"
                        ),
                    ))?;
                (link, AttachMode::Generic)
            }
        };
        self.attached.insert(
            ifindex,
            Attachment {
                name: name.to_string(),
                link,
                mode,
            },
        );
        Ok(mode)
    }

    /// Detaches the program from one vif.
    pub fn detach(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let Some(attachment) = self.attached.remove(&ifindex) else {
            return Ok(());
        };
        let name = attachment.name.clone();
        self.ingress()?.detach(attachment.link).map_err(prog_err(
            programs::XDP_INGRESS,
            format!("detaching from {name}"),
        ))
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

    /// The vifs the program is attached to: (ifindex, name, mode).
    pub fn attachments(&self) -> impl Iterator<Item = (u32, &str, AttachMode)> {
        self.attached
            .iter()
            .map(|(i, a)| (*i, a.name.as_str(), a.mode))
    }

    /// Every counter, summed over CPUs, sorted by key.
    pub fn counters(&self) -> Result<Vec<(CounterKey, Counter)>, DataplaneError> {
        let mut out = Vec::new();
        for item in self.counters.iter() {
            let (key, per_cpu) = item.map_err(map_err(maps::COUNTERS, "reading"))?;
            let mut total = Counter::default();
            for c in per_cpu.iter() {
                total.packets += c.packets;
                total.bytes += c.bytes;
            }
            out.push((key, total));
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// Runs the ingress program once on `frame` as if it arrived on `ifindex`
    /// (BPF_PROG_TEST_RUN) and returns the XDP action. `ifindex` must name a device in
    /// the calling thread's network namespace.
    pub fn test_run_ingress(&mut self, ifindex: u32, frame: &[u8]) -> Result<u32, DataplaneError> {
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex }: the kernel wants data_end = frame length, the rest zero.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
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
}

fn collect_keys<K>(
    keys: impl Iterator<Item = Result<K, MapError>>,
    map: &'static str,
) -> Result<Vec<K>, DataplaneError> {
    keys.collect::<Result<Vec<_>, _>>()
        .map_err(map_err(map, "listing keys"))
}
