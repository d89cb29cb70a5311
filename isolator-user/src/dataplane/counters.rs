//! The per-CPU drop and pass counters.

use aya::maps::MapError;
use isolator_common::{Counter, CounterKey, maps};

use super::error::{DataplaneError, map_err};
use super::{Dataplane, collect_keys};

impl Dataplane {
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

    /// One counter, summed over CPUs; zero where the kernel has not counted anything
    /// under `key` (cheaper than [`Dataplane::counters`] when a caller knows the keys).
    pub fn counter(&self, key: &CounterKey) -> Result<Counter, DataplaneError> {
        match self.counters.get(key, 0) {
            Ok(per_cpu) => Ok(per_cpu.iter().fold(Counter::default(), |total, c| Counter {
                packets: total.packets.wrapping_add(c.packets),
                bytes: total.bytes.wrapping_add(c.bytes),
            })),
            Err(MapError::KeyNotFound) => Ok(Counter::default()),
            Err(e) => Err(map_err(maps::COUNTERS, "reading")(e)),
        }
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
