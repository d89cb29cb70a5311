//! Ctrl-C for long-running programs (the demo), with `signal-hook`: SIGINT and SIGTERM set
//! a flag that the program polls between steps, so that it unwinds normally and every RAII
//! guard (lab namespaces, daemon) cleans up.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Installs the handler for SIGINT and SIGTERM (once; later calls do nothing).
pub fn install_interrupt_handler() -> Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| match Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    INTERRUPTED.store(true, Ordering::SeqCst);
                    eprintln!("\ninterrupted: cleaning up (namespaces, daemon)...");
                }
            });
        }
        Err(e) => result = Err(e.into()),
    });
    result
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
