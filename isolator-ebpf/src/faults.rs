//! What the kernel could not record (a full map, a refused insert): counted in
//! `KERNEL_FAULTS` where it happens, and logged through aya-log at the program's exit (one
//! kind per run, each kind at most once every 10 s per CPU). The common path pays one
//! register test.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_log_ebpf::warn;
use isolator_common::fault;

use crate::maps::{FAULTS_LOGGED, KERNEL_FAULTS, SCRATCH};

/// How often a CPU logs one kind of fault at most.
const LOG_INTERVAL_NS: u64 = 10_000_000_000;

/// Records that the kernel could not record something of kind `kind` (one of
/// [`isolator_common::fault`]): counts it, and flags it for [`report`] at the program's
/// exit.
#[inline(always)]
pub fn record(kind: u32) {
    if let Some(count) = KERNEL_FAULTS.get_ptr_mut(kind) {
        // SAFETY: a per-CPU slot; only this CPU writes it.
        unsafe { *count += 1 };
    }
    if let Some(scratch) = SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch space, used by this run only (see `maps::scratch`).
        unsafe { (*scratch).faults |= 1 << kind };
    }
}

/// Reports, at a program's exit, the faults this run recorded, and clears them. Costs one
/// load and one test when there are none.
#[inline(always)]
pub fn flush() {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch space, used by this run only (see `maps::scratch`).
    let faults = unsafe { core::mem::replace(&mut (*scratch).faults, 0) };
    if faults != 0 {
        report(faults);
    }
}

/// Logs one fault of this run (the lowest kind flagged in `faults`, a bit per kind), at
/// most once every 10 s per CPU and kind; every fault is counted in `KERNEL_FAULTS`
/// whether or not it is logged. Called from each program's exit only: aya-log's record is
/// large, and the verifier walks it once per call site.
#[inline(never)]
fn report(faults: u32) {
    let kind = faults.trailing_zeros();
    let what = match kind {
        fault::COUNTER_MAP_FULL => {
            "the counter map is full: frames are counted by direction and reason only"
        }
        fault::CONNECTION_UNRECORDED => {
            "a connection could not be recorded (its vif's table is full): its replies are judged as new traffic"
        }
        fault::FRAGMENT_UNRECORDED => {
            "a first fragment could not be recorded (its vif's table is full): its later fragments drop"
        }
        _ => return,
    };
    let Some(logged) = FAULTS_LOGGED.get_ptr_mut(kind) else {
        return;
    };
    // SAFETY: a per-CPU slot; only this CPU reads and writes it.
    let logged = unsafe { &mut *logged };
    // SAFETY: reads the clock; no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if *logged != 0 && now.saturating_sub(*logged) < LOG_INTERVAL_NS {
        return;
    }
    *logged = now;
    // aya-log's macros take a context they do not use.
    warn!(&(), "kernel fault {}: {}", kind, what);
}
