//! What several test modules share: the standard fixtures and the checks on frames that
//! arrived.

use std::net::IpAddr;
use std::time::Duration;

use isolator_tests::frame::{self, describe};
use isolator_tests::metrics::{FAMILIES, Scrape, promtool_check};
use isolator_tests::net::Capture;
use isolator_tests::service_lab::{self, ServiceLab};
use isolator_tests::{Env, Lab, topology};

/// The standard topology (acme/globex x web/db, five VMs, [`topology`]) under its policy.
pub fn standard(hint: &str) -> Env<Lab> {
    let lab = topology::lab(hint).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    Env::start(lab, &topology::policy_yaml()).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The service lab (three tenants, a router, an outside host, a management host, echo
/// servers, [`service_lab`]) under `policy`.
pub fn service(hint: &str, policy: &str) -> Env<ServiceLab> {
    let sl = ServiceLab::build(hint).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    Env::start(sl, policy).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The service lab under its own policy.
pub fn service_lab(hint: &str) -> Env<ServiceLab> {
    service(hint, &service_lab::policy_yaml())
}

/// How long a capture stays open after the counters said what happened to a frame, for a
/// frame that (wrongly) passed to arrive.
pub const ARRIVAL: Duration = Duration::from_millis(150);

/// Captures on `ifname` of `ns` while `act` runs, and [`ARRIVAL`] longer.
pub fn capture<T>(ns: &str, ifname: &str, act: impl FnOnce() -> T) -> (T, Vec<Vec<u8>>) {
    let cap = Capture::start(ns, ifname).unwrap_or_else(|e| panic!("capture: {e:#}"));
    let result = act();
    std::thread::sleep(ARRIVAL);
    let frames = cap.stop().unwrap_or_else(|e| panic!("capture: {e:#}"));
    (result, frames)
}

/// The captured frames from `src_mac` that concern `addr` (IP destination, ARP or ND
/// target), described.
pub fn about(frames: &[Vec<u8>], src_mac: &str, addr: IpAddr) -> Vec<String> {
    frames
        .iter()
        .filter(|f| frame::source_mac(f) == src_mac && frame::targets(f, addr))
        .map(|f| describe(f))
        .collect()
}

/// Copies of `sent` among `frames` (also with its first VLAN tag moved to metadata).
pub fn copies(frames: &[Vec<u8>], sent: &[u8]) -> usize {
    let untagged = frame::untagged(sent);
    frames
        .iter()
        .filter(|f| f.as_slice() == sent || **f == untagged)
        .count()
}

/// The exposition passes `promtool check metrics`, every family of `docs/metrics.md` that
/// has samples has its `# TYPE`, every sample of a family carries exactly the family's labels, and the
/// families `populated` have samples.
pub fn assert_well_formed(m: &Scrape, populated: &[&str]) {
    for name in populated {
        assert!(
            m.samples.iter().any(|s| s.name == *name),
            "no samples of {name}"
        );
    }
    if let Err(e) = promtool_check(&m.text) {
        panic!("{e:#}\n--- scraped text ---\n{}", m.text);
    }
    for (name, ty, labels) in FAMILIES {
        // A family without samples (audit before any audit verdict) has no `# TYPE` line.
        if m.samples.iter().any(|s| s.name == name) {
            assert_eq!(m.type_of(name), Some(ty), "# TYPE of {name}");
        }
        let mut expected: Vec<&str> = labels.to_vec();
        expected.sort();
        for s in m.samples.iter().filter(|s| s.name == name) {
            let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            assert_eq!(keys, expected, "labels of {s:?}");
            if let Some(dir) = s.labels.get("direction") {
                assert!(dir == "ingress" || dir == "egress", "direction of {s:?}");
            }
        }
    }
}

/// The directory of the policy maps (and `CONFIG`) a daemon pinned under `state_dir`:
/// inside the layout's directory, named after their sizes (`policy-a4-…`).
pub fn policy_maps_dir(state_dir: &std::path::Path) -> std::path::PathBuf {
    let layout = state_dir.join(format!("maps-v{}", isolator_common::STATE_LAYOUT));
    std::fs::read_dir(&layout)
        .unwrap_or_else(|e| panic!("listing {}: {e}", layout.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("policy-"))
        })
        .unwrap_or_else(|| panic!("no policy maps' directory in {}", layout.display()))
}

/// A finished command's exit status and output, for assertion messages.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
