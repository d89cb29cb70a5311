//! Item 3: UDP and ICMPv6 from outside every segment, from a host on the bridge that is no
//! VM (its port is named by no policy entry, so isolator judges its frames only where they
//! reach a VM: TC egress on the VM's vif). Real sockets and real echo requests, over IPv4
//! and IPv6.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use isolator_tests::netns::in_netns;
use isolator_tests::{Env, Lab, Vm, ping_count};

use super::{neighbour, static_fdb_all, vm};
use crate::common::ARRIVAL;
use crate::failclosed::{Problems, expect_exactly, settle};

const POLICY: &str = r#"version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24, fd00:1:1::/64]
        expose:
          - {address: 10.1.1.2, protocol: udp, ports: 7000}
          - {address: "fd00:1:1::2", protocol: udp, ports: 7000}
          - {address: "fd00:1:1::2", protocol: icmp}
"#;

const EXPOSED: u16 = 7000;
const PRIVATE: u16 = 7001;

/// web1 (exposes UDP 7000 on both addresses and ICMP on its IPv6 one), web2 (exposes
/// nothing) and the host `outside` on the bridge (10.9.0.10/8, fd00:9::10/16), with
/// permanent neighbour entries both ways (no ARP or neighbour discovery among the counted
/// frames) and permanent bridge forwarding entries (no flooded copies).
fn lab() -> (Lab, Vec<Vm>) {
    let mut lab = Lab::new("rp-outside").unwrap_or_else(|e| panic!("harness: {e:#}"));
    let mut vms = Vec::new();
    for (name, vif, v4, v6) in [
        ("web1", "vacme-web1", "10.1.1.2/24", "fd00:1:1::2/64"),
        ("web2", "vacme-web2", "10.1.1.3/24", "fd00:1:1::3/64"),
    ] {
        vms.push(
            lab.add_vm(name, vif, &[v4, v6])
                .unwrap_or_else(|e| panic!("harness: {e:#}")),
        );
    }
    let h = lab
        .add_bridge_host(
            "outside",
            "xoutside",
            &["10.9.0.10/8", "fd00:9::10/16"],
            &[],
        )
        .unwrap_or_else(|e| panic!("harness: {e:#}"));
    let outside = Vm {
        name: h.name.clone(),
        ns: h.ns.clone(),
        vif: "xoutside".into(),
        mac: h.mac.clone(),
        addrs: h.addrs.clone(),
    };
    for v in &vms {
        for (a, _) in &v.addrs {
            neighbour(&outside.ns, &a.to_string(), &v.mac);
        }
        for (a, _) in &outside.addrs {
            neighbour(&v.ns, &a.to_string(), &outside.mac);
        }
    }
    vms.push(outside);
    static_fdb_all(&lab, &vms);
    (lab, vms)
}

/// A UDP socket on `[::]:port` (IPv4 and IPv6) in `vm`, not blocking.
fn listen(vm: &Vm, port: u16) -> UdpSocket {
    in_netns(&vm.ns, || {
        let s = UdpSocket::bind(("::", port))?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .unwrap_or_else(|e| panic!("harness: UDP socket on port {port} in {}: {e:#}", vm.name))
}

/// The datagrams `socket` holds now.
fn drain(socket: &UdpSocket) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = socket.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

/// Item 3. From the outside host: a UDP datagram to web1's exposed port 7000 arrives (its
/// socket reads it; `egress pass` at web1), one to its port 7001, which it does not
/// expose, does not (`egress not_exposed`), over IPv4 and IPv6; an ICMPv6 echo request to
/// web1's IPv6 address (ICMP exposed) is answered (`egress pass`, and the reply `ingress
/// pass`), one to web2 (nothing exposed) is not (`egress not_exposed` at web2).
#[test]
fn udp_and_icmpv6_from_outside_reach_only_exposed_endpoints() {
    let (lab, vms) = lab();
    let env = Env::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    let (web1, web2, outside) = (vm(&vms, "web1"), vm(&vms, "web2"), vm(&vms, "outside"));
    let (w1, w2) = (web1.vif.as_str(), web2.vif.as_str());
    let vifs = [w1, w2];
    let exposed = listen(web1, EXPOSED);
    let private = listen(web1, PRIVATE);
    let client = in_netns(&outside.ns, || Ok(UdpSocket::bind(("::", 0))?))
        .unwrap_or_else(|e| panic!("harness: UDP client in outside: {e:#}"));
    let mut bad = Problems::new();
    // Let the VMs' kernels finish what they send of their own when an interface comes up
    // (multicast listener reports).
    let mut before = settle(&vifs, Duration::from_millis(500), || env.scrape());
    for dst in [web1.v4(), web1.v6()] {
        for (port, socket, passes) in [(EXPOSED, &exposed, true), (PRIVATE, &private, false)] {
            let what = format!("UDP from outside to {}", SocketAddr::new(dst, port));
            let marker = format!("rp {what}");
            // An IPv4 destination is written IPv4-mapped on the dual-stack socket.
            let target = match dst {
                IpAddr::V4(a) => SocketAddr::new(IpAddr::V6(a.to_ipv6_mapped()), port),
                IpAddr::V6(_) => SocketAddr::new(dst, port),
            };
            client
                .send_to(marker.as_bytes(), target)
                .unwrap_or_else(|e| panic!("harness: sending {what}: {e}"));
            let key = if passes {
                "egress pass"
            } else {
                "egress not_exposed"
            };
            before = expect_exactly(
                &mut bad,
                env.daemon(),
                &vifs,
                &before,
                &[(w1, key, 1.0)],
                &what,
            );
            std::thread::sleep(ARRIVAL);
            let got = drain(socket);
            let wanted = if passes { vec![marker.clone()] } else { vec![] };
            bad.check(got == wanted, || {
                format!("{what}: web1's socket on port {port} must read {wanted:?}, read {got:?}")
            });
        }
    }
    for (to, addr, answered, moves) in [
        (
            "web1 (ICMP exposed)",
            web1.v6(),
            1,
            vec![(w1, "egress pass", 1.0), (w1, "ingress pass", 1.0)],
        ),
        (
            "web2 (nothing exposed)",
            web2.v6(),
            0,
            vec![(w2, "egress not_exposed", 1.0)],
        ),
    ] {
        let what = format!("ICMPv6 echo request from outside to {to}");
        let replies = ping_count(
            &outside.ns,
            addr,
            1,
            Duration::ZERO,
            Duration::from_millis(if answered == 1 { 2000 } else { 500 }),
        )
        .unwrap_or_else(|e| panic!("harness: {e:#}"));
        bad.check(replies == answered, || {
            format!("{what}: {answered} reply expected, {replies} came")
        });
        before = expect_exactly(&mut bad, env.daemon(), &vifs, &before, &moves, &what);
    }
    bad.finish("UDP and ICMPv6 from outside", POLICY, &env.log_tail());
}
