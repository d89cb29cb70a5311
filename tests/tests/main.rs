//! End-to-end tests of isolator: real packets between network namespaces, with the daemon
//! enforcing a policy. One test binary, one module per feature (as aya's
//! `test/integration-test`), one fixture for all ([`isolator_tests::Env`]: lab + policy +
//! daemon behind one RAII guard). Tests run in parallel, each on labs of its own.
//!
//! Needs root, the `isolator` binary (`cargo build -p isolator-user`, or `ISOLATOR_BIN`),
//! and Debian's `nmap`, `prometheus` (promtool) and `python3-scapy`.
//!
//! | module         | what                                                              |
//! |----------------|-------------------------------------------------------------------|
//! | `lab_smoke`    | the lab itself, no daemon: one bridge connects all, RAII cleanup  |
//! | `isolation`    | segments and tenants apart (I1), exact drop counters              |
//! | `exposition`   | `/metrics`: promtool, types, label sets, the interfaces gauge     |
//! | `hotplug`      | a burst of new vifs: a new VM reaches no other tenant before its vif is enforced |
//! | `lifecycle`    | SIGTERM, SIGHUP, hotplug, crash and planned restarts (I7), `check`|
//! | `policy`       | exposed endpoints, flows, egress, audit, management (scans, data) |
//! | `conntrack_proofs` | UDP conversations, idle timeouts (sweep and lookup), ICMP echo, FIN closing, `evicted` |
//! | `revoke`       | reloads cut tracked connections they no longer admit              |
//! | `signed`       | only a policy signed by a trusted key is loaded or reloaded       |
//! | `package`      | the Debian package installs, upgrades keeping the configuration, purges clean |
//! | `service`      | the systemd unit verifies, readiness and the watchdog, teardown |
//! | `fleet`        | twenty daemons follow one signed bundle in a real etcd: convergence, refusals, outages, partitions with compaction, TLS, publish conflicts |
//! | `chronicle`    | the control socket (status, reload, other users refused) and the audit log's chain |
//! | `realpackets::*` | real packets for broadcast/multicast, LLDP, UDP/ICMPv6 from outside, management behind a router, tap vifs, attach failures, a taken metrics port, a vif a reload lets go |
//! | `underfault::*`| I6 and I7 while it happens: reloads and restarts under traffic    |
//! | `guards::*`    | source and layer-2 guards (I2), malformed frames, fragments       |
//! | `vlan_offload` | VLAN tags in offload metadata                                     |
//! | `verify`       | `isolator verify` finds drift (detached, foreign programs, stray ports, changed maps); `isolator explain` |

mod attacks;
mod chronicle;
mod common;
mod conntrack_proofs;
mod exposition;
mod failclosed;
mod fleet;
mod guards;
mod hotplug;
mod isolation;
mod lab_smoke;
mod lifecycle;
mod package;
mod policy;
mod realpackets;
mod revoke;
mod service;
mod signed;
mod underfault;
mod verify;
mod vlan_offload;
