//! The bypasses a security audit found, each replayed with real frames against the fixed
//! enforcer: the attack must be dropped (it never arrives where it was aimed, and exactly
//! the expected reason is counted on the vif that judged it), and its legitimate twin (the
//! same kind of frame, sent as the protocol intends) must still arrive. The labs and the
//! shot machinery are in [`isolator_tests::attack_lab`].
//!
//! | file          | issue point | what it proves |
//! |---------------|-------------|----------------|
//! | `sender`      | 1           | the sender of a delivered frame is the interface it entered through: neither a MAC a VM used nor a source address a router port claims makes the outside a segment |
//! | `icmp_errors` | 2           | an ICMP error passes as part of a connection only towards the source of the packet it quotes |
//! | `link_scope`  | 3           | neighbour discovery, MLD and DHCP-client exceptions only on the link, after the management check; from outside only from the infrastructure; no outside ARP/NA for a segment's address |
//! | `host`        | 8           | the host's own addresses: a gateway's declared services for its segment only, its link-local address and loopback never |
//!
//! Points 1 to 3 run on a policy without the keys `gateways`, `uplinks` and `vif_names`, so
//! that they also run against a binary from before the fix (`ISOLATOR_BIN=...`), where they
//! fail. Point 8 needs `gateways`.

mod host;
mod icmp_errors;
mod link_scope;
mod sender;

use isolator_tests::attack_lab::{self, VmSpec};
use isolator_tests::lab::Host;
use isolator_tests::scapy::Scapy;
use isolator_tests::{Dir, Env, Lab, Series, Vm};

/// The routed attack lab under its policy, with the bridge knowing every VM.
pub fn start(hint: &str) -> Env<Lab> {
    let lab = attack_lab::build(hint).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    let env = Env::start(lab, &attack_lab::policy_yaml()).unwrap_or_else(|e| panic!("{e:#}"));
    attack_lab::warm_up(env.lab()).unwrap_or_else(|e| panic!("warming the bridge up: {e:#}"));
    env
}

/// The VM of `spec`.
pub fn vm(env: &Env<Lab>, spec: VmSpec) -> &Vm {
    env.lab().vm(spec.name)
}

/// The host (router, outside host, management host) called `name`.
pub fn host<'a>(env: &'a Env<Lab>, name: &str) -> &'a Host {
    env.lab().host(name)
}

/// A scapy session in namespace `ns`.
pub fn scapy(ns: &str) -> Scapy {
    Scapy::start(ns).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Builds the frame of scapy expression `expr` in `s`'s session.
pub fn build(s: &mut Scapy, expr: &str) -> Vec<u8> {
    s.build(expr)
        .unwrap_or_else(|e| panic!("building {expr}: {e:#}"))
}

/// `Ether(src=SRC, dst=DST)`.
pub fn eth(src: &str, dst: &str) -> String {
    format!("Ether(src='{src}', dst='{dst}')")
}

/// `IP(...)` or `IPv6(...)` by the family of the addresses.
pub fn l3(src: &str, dst: &str) -> String {
    if src.contains(':') {
        format!("IPv6(src='{src}', dst='{dst}')")
    } else {
        format!("IP(src='{src}', dst='{dst}')")
    }
}

/// The drop series of VM `spec`'s vif in `dir` for `code`, with its tenant and segment.
pub fn dropped(spec: VmSpec, dir: Dir, code: u8) -> Series {
    Series::drop(&spec.vif(), dir, code).of(spec.tenant, spec.segment)
}

/// 64 bytes for a payload: `tag`, padded with dots (cut to 64).
pub fn payload64(tag: &str) -> Vec<u8> {
    let mut p = tag.as_bytes().to_vec();
    p.resize(64, b'.');
    p
}

/// A Python bytes literal of `b`.
pub fn py_bytes(b: &[u8]) -> String {
    format!("bytes.fromhex('{}')", isolator_tests::scapy::hex(b))
}

/// A neighbour discovery option of an unknown type (250) carrying 62 bytes starting with
/// `tag`: how a payload rides in a neighbour solicitation or advertisement, whose options a
/// receiver walks (a raw payload would be read as options). As a scapy `Raw`.
pub fn nd_payload_option(tag: &str) -> String {
    let mut o = vec![250u8, 8];
    o.extend_from_slice(&payload64(tag)[..62]);
    format!("Raw(load={})", py_bytes(&o))
}

/// The solicited-node multicast group of `addr` and its MAC.
pub fn solicited_node(addr: &str) -> (String, String) {
    let a: std::net::Ipv6Addr = addr.parse().expect("IPv6 address");
    let o = a.octets();
    (
        format!("ff02::1:ff{:02x}:{:02x}{:02x}", o[13], o[14], o[15]),
        format!("33:33:ff:{:02x}:{:02x}:{:02x}", o[13], o[14], o[15]),
    )
}

/// `problems`, each prefixed with `[what]`.
pub fn prefixed(what: &str, problems: Vec<String>) -> Vec<String> {
    problems
        .into_iter()
        .map(|p| format!("[{what}] {p}"))
        .collect()
}
