//! Ctrl-C handling without extra crates: SIGINT/SIGTERM set a flag that long-running
//! programs (the demo) poll between steps, so they unwind normally and every RAII guard
//! (lab namespaces, daemon) cleans up.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let msg = b"\ninterrupted: cleaning up (namespaces, daemon)...\n";
    // SAFETY: write(2) is async-signal-safe; the buffer is valid.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Installs the handler for SIGINT and SIGTERM (idempotent).
pub fn install_interrupt_handler() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls write(2).
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// Whether SIGINT/SIGTERM arrived since the handler was installed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with "interrupted" once SIGINT/SIGTERM arrived.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}
