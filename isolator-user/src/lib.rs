//! isolator's userspace: the policy model, its compilation into kernel map entries,
//! the dataplane (loading, attaching, counters), the metrics exposition and the daemon.

pub mod audit;
pub mod compile;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod encode;
pub mod events;
pub mod fleet;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod policy;
pub mod recheck;
pub mod service;
pub mod signing;
#[cfg(test)]
mod testing;
pub mod verify;

/// An error and its sources on one line: "outer: inner: root cause".
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
