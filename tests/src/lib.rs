//! The isolator test lab: throwaway network-namespace topologies (a host namespace with one
//! bridge and the vifs, one namespace per VM, plus routers and hosts that are not VMs), the
//! one fixture that runs the `isolator` daemon on them ([`env::Env`]), in-process traffic
//! (ICMP echo, TCP, echo servers), `nmap` scans confined to the lab, scapy for crafted
//! frames, one frame builder ([`frame`], on etherparse) and one way to read a counter
//! ([`metrics`]). Used by the integration tests in `tests/`, by the BPF test-run tables of
//! `isolator-user` and by `cargo xtask demo`. Needs root. Never touches the root network
//! namespace's interfaces; every namespace is named `isot-<pid>-<n>...` and removed by RAII
//! guards, also on panics.

pub mod attack_lab;
pub mod daemon;
pub mod echo;
pub mod env;
pub mod etcd;
pub mod failclosed_lab;
pub mod frame;
pub mod lab;
pub mod metrics;
pub mod net;
pub mod netns;
pub mod nmap;
pub mod rawbpf;
pub mod scapy;
pub mod service_lab;
pub mod signal;
pub mod tap;
pub mod topology;
pub mod traffic;
pub mod vlan_push;

pub use daemon::{Daemon, TempDir, isolator_bin, isolator_rehearsal_bin};
pub use echo::{EchoOutcome, EchoServers, tcp_echo};
pub use env::Env;
pub use lab::{Host, Lab, Vm};
pub use metrics::{Dir, Expect, Scrape, Series};
pub use net::{TcpOutcome, ping, ping_count, tcp_connect, tcp_probe};
