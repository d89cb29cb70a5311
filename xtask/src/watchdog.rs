//! A time limit on the whole of `cargo xtask test`: each command runs in a process group
//! of its own, so that when the limit is reached the whole group (cargo, the test
//! binaries, the daemons they started) is stopped, with a message that says which phase
//! ran out of time. Ctrl-C and SIGTERM reach the group too.

use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// The process group of the command running now (0: none).
static GROUP: AtomicI32 = AtomicI32::new(0);
/// What is running now, for the timeout's message.
static PHASE: Mutex<String> = Mutex::new(String::new());

/// Says what runs now (for the message should the time run out).
pub fn phase(what: &str) {
    *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = what.to_string();
}

extern "C" fn forward(signal: libc::c_int) {
    let group = GROUP.load(Ordering::SeqCst);
    if group > 0 {
        // SAFETY: kill is async-signal-safe; the group is one we created.
        unsafe { libc::kill(-group, signal) };
    }
}

/// Stops everything after `limit`: SIGTERM to the running group (the tests clean their
/// labs up on it), SIGKILL 20 s later, exit status 124. Also forwards SIGINT and SIGTERM
/// to the running group.
pub fn arm(limit: Duration) {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs an async-signal-safe handler (an atomic load and kill).
        unsafe { libc::signal(signal, forward as *const () as libc::sighandler_t) };
    }
    let started = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        let phase = PHASE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        eprintln!(
            "\nxtask test: TIMEOUT: the whole run may take {} min and took {:.0?}; it was \
             still in: {phase}. Stopping it (SIGTERM, then SIGKILL after 20 s). Look at the \
             output above for the test that hangs; XTASK_TEST_TIMEOUT_MINUTES sets the limit.",
            limit.as_secs() / 60,
            started.elapsed(),
        );
        let group = GROUP.load(Ordering::SeqCst);
        if group > 0 {
            // SAFETY: signals a process group we created.
            unsafe { libc::kill(-group, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(20));
            // SAFETY: as above.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        // A test binary killed by a signal leaves its labs, and the daemons it started (in
        // process groups of their own); remove both.
        isolator_tests::lab::reap_stale();
        std::process::exit(124);
    });
}

/// Starts `cmd` in a process group of its own (the one the watchdog stops).
pub fn spawn(cmd: &mut Command) -> anyhow::Result<Child> {
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    GROUP.store(child.id() as i32, Ordering::SeqCst);
    Ok(child)
}

/// Waits for a child [`spawn`] started.
pub fn wait(mut child: Child) -> anyhow::Result<ExitStatus> {
    let status = child.wait().context("waiting for a command");
    GROUP.store(0, Ordering::SeqCst);
    status
}

/// Runs `cmd` to its end under the watchdog; fails unless it succeeds.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = wait(spawn(cmd)?)?;
    if !status.success() {
        anyhow::bail!("{shown} failed ({status})");
    }
    Ok(())
}
