//! What the kernel could not record (a full map, a refused insert): counted in
//! `KERNEL_FAULTS`, and logged through aya-log at most once every 10 s per CPU and kind.
//! Only failure paths come here; the common path never does.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_log_ebpf::warn;
use isolator_common::fault;

use crate::maps::{FAULTS_LOGGED, KERNEL_FAULTS};

/// How often a CPU logs one kind of fault at most.
const LOG_INTERVAL_NS: u64 = 10_000_000_000;

/// Records that the kernel could not record something of kind `kind` (one of
/// [`fault`]). A BPF subprogram of its own, not inlined: it is called only on failure
/// paths, and inlining its logging at every call site would multiply what the verifier
/// has to walk.
#[inline(never)]
pub fn record(kind: u32) {
    if let Some(count) = KERNEL_FAULTS.get_ptr_mut(kind) {
        // SAFETY: a per-CPU slot; only this CPU writes it.
        unsafe { *count += 1 };
    }
    let Some(logged) = FAULTS_LOGGED.get_ptr_mut(kind) else {
        return;
    };
    // SAFETY: reads the clock; no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a per-CPU slot; only this CPU reads and writes it.
    let logged = unsafe { &mut *logged };
    if *logged != 0 && now.saturating_sub(*logged) < LOG_INTERVAL_NS {
        return;
    }
    *logged = now;
    // aya-log's macros take a context they do not use; there is none down here.
    match kind {
        fault::COUNTER_MAP_FULL => warn!(
            &(),
            "the counter map is full: frames are counted by direction and reason only"
        ),
        fault::CONNECTION_UNRECORDED => warn!(
            &(),
            "a connection could not be recorded: its replies will be judged as new traffic"
        ),
        _ => warn!(
            &(),
            "a first fragment could not be recorded: its later fragments will drop"
        ),
    }
}
