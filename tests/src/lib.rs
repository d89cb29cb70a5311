//! The isolator test lab: throwaway network-namespace topologies (a host namespace with one
//! bridge and the vifs, one namespace per VM, plus routers and hosts that are not VMs),
//! in-process traffic (ICMP echo, TCP, HTTP, echo servers), `nmap` scans confined to the lab,
//! a Prometheus text reader and a handle on the `isolator` daemon. Used by the integration
//! tests in `tests/` and by `cargo xtask demo`. Needs root. Never touches the root network
//! namespace's interfaces; every namespace is named `isot-<pid>-<n>...` and removed by RAII
//! guards, also on panics.

pub mod daemon;
pub mod echo;
pub mod lab;
pub mod net;
pub mod netns;
pub mod nmap;
pub mod prom;
pub mod scapy;
pub mod service_lab;
pub mod signal;
pub mod topology;
pub mod vlan_push;

pub use daemon::{Daemon, TempDir, isolator_bin};
pub use echo::{EchoOutcome, EchoServers, tcp_echo};
pub use lab::{Host, Lab, Vm};
pub use net::{TcpOutcome, http_get, ping, ping_count, tcp_connect, tcp_probe};
pub use prom::{Metrics, promtool_check};
