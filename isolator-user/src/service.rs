//! Running under systemd (`Type=notify`, docs/operations.md "Running as a service"):
//! readiness is announced only once every interface the policy claims is enforced, the
//! service's status line says what it enforces or what it waits for, and the watchdog is
//! fed only while the dataplane thread answers.
//!
//! Everything here is a no-op without systemd (`NOTIFY_SOCKET` unset).

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Sends `states` to systemd, if it listens; a failure is logged, never fatal.
pub fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "telling systemd the service's state failed");
    }
}

/// How often the watchdog must be fed, if systemd asked for it (`WatchdogSec=`):
/// `WATCHDOG_USEC`, for this process unless `WATCHDOG_PID` names another (as
/// `sd_watchdog_enabled(3)` reads them).
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok().filter(|u| *u > 0)?;
    match pid.map(str::parse::<u32>) {
        None => Some(Duration::from_micros(usec)),
        Some(Ok(pid)) if pid == me => Some(Duration::from_micros(usec)),
        Some(_) => None,
    }
}

/// The status line: what is enforced, or why readiness waits.
pub fn status_line(enforced: usize, problems: Option<&str>) -> String {
    match problems {
        None => format!("enforcing on {enforced} interface(s)"),
        Some(why) => format!("NOT READY: {why}"),
    }
}

/// Feeds the watchdog every half interval while `alive` says the daemon works.
pub async fn feed_watchdog<F, Fut>(interval: Duration, mut alive: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tick.tick().await;
        if alive().await {
            notify(&[NotifyState::Watchdog]);
        } else {
            debug!("the dataplane thread did not answer: not feeding the watchdog");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_this_process_s_unless_another_is_named() {
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(watchdog_from(Some("400000"), None, 7), ms(400));
        assert_eq!(watchdog_from(Some("400000"), Some("7"), 7), ms(400));
        assert_eq!(watchdog_from(Some("400000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(None, Some("7"), 7), None);
        assert_eq!(watchdog_from(Some("soon"), None, 7), None);
    }
}
