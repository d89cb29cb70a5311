//! Issue 14, point 6: real packets between network namespaces for what only test runs
//! (BPF_PROG_TEST_RUN) or unit tests proved before. Every blocked frame has a twin that
//! must arrive in the same test, every check has the exact counter changes with the right
//! reason, and what arrived is seen by a capture, a socket or the VM's side of a tap.
//!
//! | module    | item | what |
//! |-----------|------|------|
//! | `link`    | 1, 2 | broadcast and multicast (255.255.255.255, the subnet broadcast, mDNS v4 and v6) stay in the tenant; LLDP is `unknown_ethertype` |
//! | `outside` | 3    | UDP and ICMPv6 from a host on the bridge that is no VM: only exposed endpoints |
//! | `routed`  | 4    | a management prefix behind a router (the VM's route via the lab router) is `management`; the outside behind it is reached |
//! | `tap`     | 5    | a tap vif opened through `/dev/net/tun` as the VM: XDP judges what it writes, TC egress what it is sent |
//! | `daemon`  | 6, 7, 8 | `/healthz` 503 and `attach_failed` for a vif whose XDP hook a foreign program holds; a taken metrics port fails before anything is attached; a reload that stops matching a vif detaches it and drops its series |
//!
//! Helpers beyond the common lab: [`isolator_tests::tap`] (the tap played as the VM),
//! [`isolator_tests::rawbpf::attach_xdp_link`] (the foreign XDP program), and those of
//! [`crate::failclosed`].

mod daemon;
mod link;
mod outside;
mod routed;
mod tap;

use isolator_tests::netns::ip_n;
use isolator_tests::{Lab, Vm};

/// The VM called `name` among `vms`.
pub fn vm<'a>(vms: &'a [Vm], name: &str) -> &'a Vm {
    vms.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no VM {name}"))
}

/// The vifs of `vms`, for [`crate::failclosed::expect_exactly`].
pub fn watched(vms: &[Vm]) -> Vec<&str> {
    vms.iter().map(|v| v.vif.as_str()).collect()
}

/// A permanent entry in the bridge's forwarding table: frames to `mac` leave only through
/// `port`, from the first one on (an unknown unicast MAC is flooded to every port, and
/// every other vif's egress would count the copy it was handed).
pub fn static_fdb(lab: &Lab, mac: &str, port: &str) {
    isolator_tests::netns::run_ok(std::process::Command::new("bridge").args([
        "-n",
        lab.host_ns(),
        "fdb",
        "replace",
        mac,
        "dev",
        port,
        "master",
        "static",
    ]))
    .unwrap_or_else(|e| panic!("harness: bridge fdb entry for {mac} on {port}: {e:#}"));
}

/// [`static_fdb`] for every VM (and host on the bridge) of `vms`.
pub fn static_fdb_all(lab: &Lab, vms: &[Vm]) {
    for v in vms {
        static_fdb(lab, &v.mac, &v.vif);
    }
}

/// A permanent neighbour entry in namespace `ns`: `addr` is at `mac` on `eth0`.
pub fn neighbour(ns: &str, addr: &str, mac: &str) {
    ip_n(
        ns,
        &[
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )
    .unwrap_or_else(|e| panic!("harness: neighbour {addr} -> {mac} in {ns}: {e:#}"));
}
