//! The per-CPU drop and pass counters: an array block per interface with a small ifindex
//! (`COUNTER_BLOCKS`), a hash for the rest and for frames audit mode passed (`COUNTERS`).
//! Readers see one set of counters by (interface, direction, verdict, audit flag).

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{MapError, PerCpuValues};
use isolator_common::{
    COUNTER_BLOCK_LEN, Counter, CounterBlock, CounterKey, counter_block_index, limits, maps,
};

use super::error::{DataplaneError, io_err, map_err};
use super::{Dataplane, collect_keys};

/// `total` plus `c`, wrapping: a CPU's share can dip below zero when a frame counted on one
/// CPU is taken back on another (see `isolator_tags`).
fn add(total: Counter, c: &Counter) -> Counter {
    Counter {
        packets: total.packets.wrapping_add(c.packets),
        bytes: total.bytes.wrapping_add(c.bytes),
    }
}

/// A block's counters summed over CPUs, by [`counter_block_index`].
fn summed(per_cpu: &PerCpuValues<CounterBlock>) -> [Counter; COUNTER_BLOCK_LEN] {
    let mut out = [Counter::default(); COUNTER_BLOCK_LEN];
    for block in per_cpu.iter() {
        for (total, c) in out.iter_mut().zip(&block.counters) {
            *total = add(*total, c);
        }
    }
    out
}

impl Dataplane {
    /// Notes that the interfaces `ifindexes` may be counted in `COUNTER_BLOCKS`.
    pub(crate) fn note_counted(&mut self, ifindexes: impl IntoIterator<Item = u32>) {
        self.counted.extend(
            ifindexes
                .into_iter()
                .filter(|&i| i < limits::COUNTER_BLOCKS),
        );
    }

    /// The ifindexes whose block of `COUNTER_BLOCKS` holds a count (a previous daemon's,
    /// when the map was pinned): read once, when the programs are loaded.
    pub(crate) fn blocks_in_use(&self) -> Result<BTreeSet<u32>, DataplaneError> {
        let mut out = BTreeSet::new();
        for ifindex in 0..limits::COUNTER_BLOCKS {
            let per_cpu = self
                .counter_blocks
                .get(&ifindex, 0)
                .map_err(map_err(maps::COUNTER_BLOCKS, "reading"))?;
            if per_cpu
                .iter()
                .any(|b| b.counters.iter().any(|c| *c != Counter::default()))
            {
                out.insert(ifindex);
            }
        }
        Ok(out)
    }

    /// Removes the counters of interfaces other than `keep` (ifindexes): those of
    /// interfaces that are gone would otherwise fill the map over time, and a block would
    /// carry them over to a new interface that gets the same ifindex. Returns how many
    /// counters (by interface, direction, verdict and audit flag) it removed.
    pub fn prune_counters(&mut self, keep: &BTreeSet<u32>) -> Result<usize, DataplaneError> {
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
        let gone: Vec<u32> = self.counted.difference(keep).copied().collect();
        if !gone.is_empty() {
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| {
                io_err(format!("counting CPUs for {}", maps::COUNTER_BLOCKS))(e)
            })?;
            for ifindex in gone {
                let per_cpu = self
                    .counter_blocks
                    .get(&ifindex, 0)
                    .map_err(map_err(maps::COUNTER_BLOCKS, "reading"))?;
                let held = block_counters(ifindex, &summed(&per_cpu)).count();
                if held > 0 {
                    let zeroes = PerCpuValues::try_from(vec![CounterBlock::default(); cpus])
                        .map_err(io_err(format!("clearing {}", maps::COUNTER_BLOCKS)))?;
                    // No program counts there: the interface is not attached to.
                    self.counter_blocks
                        .set(ifindex, zeroes, 0)
                        .map_err(map_err(maps::COUNTER_BLOCKS, "clearing stale counters"))?;
                    removed += held;
                }
                self.counted.remove(&ifindex);
            }
        }
        Ok(removed)
    }

    /// Every counter that counted something, summed over CPUs, sorted by key.
    pub fn counters(&self) -> Result<Vec<(CounterKey, Counter)>, DataplaneError> {
        let mut out = BTreeMap::new();
        for item in self.counters.iter() {
            let (key, per_cpu) = item.map_err(map_err(maps::COUNTERS, "reading"))?;
            out.insert(key, per_cpu.iter().fold(Counter::default(), add));
        }
        for &ifindex in &self.counted {
            let per_cpu = self
                .counter_blocks
                .get(&ifindex, 0)
                .map_err(map_err(maps::COUNTER_BLOCKS, "reading"))?;
            for (key, counter) in block_counters(ifindex, &summed(&per_cpu)) {
                let total = out.entry(key).or_default();
                *total = add(*total, &counter);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// One counter, summed over CPUs; zero where the kernel has not counted anything
    /// under `key` (cheaper than [`Dataplane::counters`] when a caller knows the keys).
    pub fn counter(&self, key: &CounterKey) -> Result<Counter, DataplaneError> {
        let hashed = match self.counters.get(key, 0) {
            Ok(per_cpu) => per_cpu.iter().fold(Counter::default(), add),
            Err(MapError::KeyNotFound) => Counter::default(),
            Err(e) => return Err(map_err(maps::COUNTERS, "reading")(e)),
        };
        if key.flags != 0 || key.ifindex >= limits::COUNTER_BLOCKS {
            return Ok(hashed);
        }
        let per_cpu = self
            .counter_blocks
            .get(&key.ifindex, 0)
            .map_err(map_err(maps::COUNTER_BLOCKS, "reading"))?;
        let at = counter_block_index(key.direction, key.verdict);
        Ok(per_cpu
            .iter()
            .fold(hashed, |total, block| add(total, &block.counters[at])))
    }

    /// Frames judged while the counter map was full, by (direction, verdict, audit flag),
    /// summed over CPUs; only slots that counted something.
    pub fn uncounted(&self) -> Result<Vec<isolator_common::Uncounted>, DataplaneError> {
        let mut out = Vec::new();
        for direction in [
            isolator_common::direction::INGRESS,
            isolator_common::direction::EGRESS,
        ] {
            for audited in [false, true] {
                for verdict in 0..32u8 {
                    let slot = isolator_common::uncounted_index(direction, verdict, audited);
                    let per_cpu = self
                        .uncounted
                        .get(&slot, 0)
                        .map_err(map_err(maps::UNCOUNTED, "reading"))?;
                    let mut total = Counter::default();
                    for c in per_cpu.iter() {
                        total.packets = total.packets.wrapping_add(c.packets);
                        total.bytes = total.bytes.wrapping_add(c.bytes);
                    }
                    if total.packets != 0 {
                        out.push(isolator_common::Uncounted {
                            direction,
                            verdict,
                            audited,
                            frames: total,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// What the kernel could not record, by [`isolator_common::fault`] kind, summed over
    /// CPUs.
    pub fn faults(&self) -> Result<[u64; isolator_common::fault::KINDS as usize], DataplaneError> {
        let mut out = [0u64; isolator_common::fault::KINDS as usize];
        for (kind, total) in out.iter_mut().enumerate() {
            let per_cpu = self
                .faults
                .get(&(kind as u32), 0)
                .map_err(map_err(maps::KERNEL_FAULTS, "reading"))?;
            *total = per_cpu.iter().sum();
        }
        Ok(out)
    }
}

/// The counters of `ifindex`'s block that counted something, by key (never audited:
/// audit mode's counters are all in `COUNTERS`).
pub(crate) fn block_counters(
    ifindex: u32,
    block: &[Counter; COUNTER_BLOCK_LEN],
) -> impl Iterator<Item = (CounterKey, Counter)> + '_ {
    block
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != Counter::default())
        .map(move |(at, c)| {
            (
                CounterKey {
                    ifindex,
                    direction: (at >> 5) as u8,
                    verdict: (at & 0x1f) as u8,
                    flags: 0,
                    _pad: 0,
                },
                *c,
            )
        })
}
