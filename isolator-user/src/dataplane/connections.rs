//! The tracked connections: listing, sweeping idle ones, revoking those a new policy no
//! longer admits, and the event counts.

use aya::maps::MapError;
use isolator_common::{ConnKey, ConnState, Settings, conntrack, maps};

use super::Dataplane;
use super::error::{DataplaneError, map_err};
use crate::recheck::Recheck;

impl Dataplane {
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
            if now.saturating_sub(state.last_seen_ns)
                > settings.timeout_ns(key.protocol, state.state)
            {
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
