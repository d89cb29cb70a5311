//! The service lab: the topology and policy that exercise everything a policy v1 can say
//! (exposed endpoints, flows within and across tenants, egress allow/deny, audit mode,
//! management prefixes), with a router to an outside host and a management host. Used by
//! `tests/tests/policy.rs` and by `cargo xtask demo`.
//!
//! ```text
//!  netns <lab>h: br0 ---+-- vacme-web1 ... vinitech-dev1   (8 VMs, managed: v<tenant>-<seg>*)
//!                       +-- xrouter --- router  eth0: 10.T.S.1/28, fd00:T:S::1/64 (each segment),
//!                       |                             192.168.100.1/24, fd00:ff::1/64
//!                       |               eth1: 203.0.113.1/24, 2001:db8:ff::1/64 --- outside
//!                       |                     (a veth of its own, not on the bridge)
//!                       +-- xmgmt ----- mgmt    192.168.100.10/24, fd00:ff::10/64
//! ```
//!
//! | VM            | vif           | tenant  | segment | IPv4         | IPv6            |
//! |---------------|---------------|---------|---------|--------------|-----------------|
//! | acme-web1     | vacme-web1    | acme    | web     | 10.1.1.2/28  | fd00:1:1::2/64  |
//! | acme-web2     | vacme-web2    | acme    | web     | 10.1.1.3/28  | fd00:1:1::3/64  |
//! | acme-db1      | vacme-db1     | acme    | db      | 10.1.2.2/28  | fd00:1:2::2/64  |
//! | globex-api1   | vglobex-api1  | globex  | api     | 10.2.1.2/28  | fd00:2:1::2/64  |
//! | globex-api2   | vglobex-api2  | globex  | api     | 10.2.1.3/28  | fd00:2:1::3/64  |
//! | globex-ops1   | vglobex-ops1  | globex  | ops     | 10.2.2.2/28  | fd00:2:2::2/64  |
//! | initech-lab1  | vinitech-lab1 | initech | lab     | 10.3.1.2/28  | fd00:3:1::2/64  |
//! | initech-dev1  | vinitech-dev1 | initech | dev     | 10.3.2.2/28  | fd00:3:2::2/64  |
//!
//! Every VM has on-link routes 10.0.0.0/8, fd00::/16 (all other VMs and the IPv6 management
//! range) and 192.168.100.0/24 (the management host), and a route to the outside test
//! networks 203.0.113.0/24 and 2001:db8:ff::/64 via its segment's gateway (the router's
//! address in its subnet). No namespace has a default route: the "outside" is the `outside`
//! namespace behind the router, which routes 10.0.0.0/8 and fd00::/16 back via the router.
//!
//! The router and the management host hang off the bridge through ports (`xrouter`,
//! `xmgmt`) that no policy entry names, so isolator does not manage them; isolator judges
//! their traffic where it reaches a VM (TC egress on the VM's vif). The router's addresses
//! lie in the segments' subnets: the policy declares them as each segment's gateways (with
//! no service a VM may use there), so that its ARP and neighbour discovery for them is
//! believed. Everything the router sends, itself or forwarded from the outside host,
//! entered the host through `xrouter` and is judged as from outside every segment.
//!
//! [`ServiceLab::build`] starts TCP echo servers ([`EchoServers`]) on [`SCAN_PORTS`] in every
//! VM and on the management host, and on [`OUTSIDE_PORTS`] on the outside host, so that a
//! port that is not open to a scanner is closed by isolator, not by a missing listener.

use std::net::IpAddr;

use anyhow::{Context, Result};

use crate::echo::EchoServers;
use crate::lab::{Host, Lab, Vm};

/// A segment of the service lab: prefixes `10.T.S.0/28` and `fd00:T:S::/64`, gateway `.1` and
/// `::1` (the router), vifs `v<tenant>-<segment>*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub tenant: &'static str,
    pub segment: &'static str,
    pub t: u8,
    pub s: u8,
}

impl Seg {
    pub fn v4_prefix(&self) -> String {
        format!("10.{}.{}.0/28", self.t, self.s)
    }
    pub fn v6_prefix(&self) -> String {
        format!("fd00:{}:{}::/64", self.t, self.s)
    }
    /// The IPv6 part that scans cover: the first 16 addresses (every VM of the lab is there).
    pub fn v6_scan_range(&self) -> String {
        format!("fd00:{}:{}::/124", self.t, self.s)
    }
    pub fn gw_v4(&self) -> String {
        format!("10.{}.{}.1", self.t, self.s)
    }
    pub fn gw_v6(&self) -> String {
        format!("fd00:{}:{}::1", self.t, self.s)
    }
    pub fn vif_glob(&self) -> String {
        format!("v{}-{}*", self.tenant, self.segment)
    }
    /// `tenant/segment`.
    pub fn path(&self) -> String {
        format!("{}/{}", self.tenant, self.segment)
    }
}

const fn seg(tenant: &'static str, segment: &'static str, t: u8, s: u8) -> Seg {
    Seg {
        tenant,
        segment,
        t,
        s,
    }
}

pub const ACME_WEB: Seg = seg("acme", "web", 1, 1);
pub const ACME_DB: Seg = seg("acme", "db", 1, 2);
pub const GLOBEX_API: Seg = seg("globex", "api", 2, 1);
pub const GLOBEX_OPS: Seg = seg("globex", "ops", 2, 2);
pub const INITECH_LAB: Seg = seg("initech", "lab", 3, 1);
pub const INITECH_DEV: Seg = seg("initech", "dev", 3, 2);

pub const SEGMENTS: [Seg; 6] = [
    ACME_WEB,
    ACME_DB,
    GLOBEX_API,
    GLOBEX_OPS,
    INITECH_LAB,
    INITECH_DEV,
];

/// A VM of the service lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub name: &'static str,
    pub seg: Seg,
    /// Host part of its addresses (10.T.S.host, fd00:T:S::host).
    pub host: u8,
}

impl VmSpec {
    /// `v<name>`, e.g. `vacme-web1`.
    pub fn vif(&self) -> String {
        format!("v{}", self.name)
    }
    pub fn v4(&self) -> String {
        format!("10.{}.{}.{}", self.seg.t, self.seg.s, self.host)
    }
    pub fn v6(&self) -> String {
        format!("fd00:{}:{}::{:x}", self.seg.t, self.seg.s, self.host)
    }
}

const fn vm(name: &'static str, seg: Seg, host: u8) -> VmSpec {
    VmSpec { name, seg, host }
}

pub const VMS: [VmSpec; 8] = [
    vm("acme-web1", ACME_WEB, 2),
    vm("acme-web2", ACME_WEB, 3),
    vm("acme-db1", ACME_DB, 2),
    vm("globex-api1", GLOBEX_API, 2),
    vm("globex-api2", GLOBEX_API, 3),
    vm("globex-ops1", GLOBEX_OPS, 2),
    vm("initech-lab1", INITECH_LAB, 2),
    vm("initech-dev1", INITECH_DEV, 2),
];

/// The plan entry of VM `name`; panics if unknown (a test bug).
pub fn spec(name: &str) -> VmSpec {
    *VMS.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no VM {name} in the service lab"))
}

/// Ports every VM and the management host listen on, and scans cover.
pub const SCAN_PORTS: [u16; 6] = [22, 80, 443, 5432, 8080, 9000];
/// Ports the outside host listens on.
pub const OUTSIDE_PORTS: [u16; 2] = [443, 8443];

/// Names of the hosts, and the bridge ports of those on the bridge.
pub const ROUTER: &str = "router";
pub const ROUTER_PORT: &str = "xrouter";
pub const MGMT: &str = "mgmt";
pub const MGMT_PORT: &str = "xmgmt";
pub const OUTSIDE: &str = "outside";

/// The outside host and the router's address on its side.
pub const OUTSIDE_V4: &str = "203.0.113.10";
pub const OUTSIDE_V6: &str = "2001:db8:ff::10";
pub const OUTSIDE_NET_V4: &str = "203.0.113.0/24";
pub const OUTSIDE_NET_V6: &str = "2001:db8:ff::/64";
/// The management host, in the management prefixes 192.168.100.0/24 and fd00:ff::/64.
pub const MGMT_V4: &str = "192.168.100.10";
pub const MGMT_V6: &str = "fd00:ff::10";

/// The policy of the service lab (YAML v1).
pub fn policy_yaml() -> String {
    r#"# isolator service lab policy (tests/src/service_lab.rs)
version: 1
mode: enforce

# The hypervisors' management network: nothing from any VM may reach it.
management:
  - prefix: 192.168.100.0/24
  - prefix: fd00:ff::/64

tenants:
  - name: acme
    segments:
      - name: web                      # the shop's front end: HTTPS and ping
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/28, "fd00:1:1::/64"]
        gateways:                      # the router's addresses in the segment
          - {address: 10.1.1.1}
          - {address: "fd00:1:1::1"}
        expose:
          - {address: 10.1.1.2, protocol: tcp, ports: 443}
          - {address: "fd00:1:1::2", protocol: tcp, ports: 443}
          - {address: 10.1.1.2, protocol: icmp}
      - name: db                       # the database: reachable only through the flow
        egress: deny
        interfaces: ["vacme-db*"]
        prefixes: [10.1.2.0/28, "fd00:1:2::/64"]
        gateways:                      # the router's addresses in the segment
          - {address: 10.1.2.1}
          - {address: "fd00:1:2::1"}
    flows:
      - {from: web, to: db, protocol: tcp, ports: 5432}
      - {from: web, to: globex/api, protocol: tcp, ports: 9000}

  - name: globex
    segments:
      - name: api                      # public API servers; may not call out
        egress: deny
        interfaces: ["vglobex-api*"]
        prefixes: [10.2.1.0/28, "fd00:2:1::/64"]
        gateways:                      # the router's addresses in the segment
          - {address: 10.2.1.1}
          - {address: "fd00:2:1::1"}
        expose:
          - {address: 10.2.1.2, protocol: tcp, ports: 80}
          - {address: "fd00:2:1::2", protocol: tcp, ports: 80}
          - {address: 10.2.1.3, protocol: tcp, ports: 8080}
          - {address: "fd00:2:1::3", protocol: tcp, ports: 8080}
      - name: ops                      # internal tools: private, may call out
        interfaces: ["vglobex-ops*"]
        prefixes: [10.2.2.0/28, "fd00:2:2::/64"]
        gateways:                      # the router's addresses in the segment
          - {address: 10.2.2.1}
          - {address: "fd00:2:2::1"}

  - name: initech                      # a new customer, watched before enforcing
    segments:
      - name: lab
        mode: audit
        egress: deny
        interfaces: ["vinitech-lab*"]
        prefixes: [10.3.1.0/28, "fd00:3:1::/64"]
        gateways:                      # the router's addresses in the segment
          - {address: 10.3.1.1}
          - {address: "fd00:3:1::1"}
      - name: dev
        mode: audit
        interfaces: ["vinitech-dev*"]
        prefixes: [10.3.2.0/28, "fd00:3:2::/64"]
        gateways:                      # the router's addresses in the segment
          - {address: 10.3.2.1}
          - {address: "fd00:3:2::1"}
"#
    .to_string()
}

/// The built service lab: the [`Lab`] guard, its hosts, and the echo servers.
pub struct ServiceLab {
    /// Dropped first (field order), before the namespaces go.
    servers: Vec<(String, EchoServers)>,
    pub lab: Lab,
}

impl ServiceLab {
    /// Builds the whole topology (see the module documentation) and starts the echo servers.
    /// The daemon is not started: start it afterwards (it attaches to the vifs that exist
    /// when it starts).
    pub fn build(hint: &str) -> Result<ServiceLab> {
        let mut lab = Lab::new(hint)?;
        lab.set_onlink_routes(&["10.0.0.0/8", "fd00::/16", "192.168.100.0/24"]);
        for v in VMS {
            let addrs = [format!("{}/28", v.v4()), format!("{}/64", v.v6())];
            let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            let created = lab.add_vm(v.name, &v.vif(), &addrs)?;
            lab.add_route(
                &created.ns,
                &format!("{OUTSIDE_NET_V4} via {}", v.seg.gw_v4()),
            )?;
            lab.add_route(
                &created.ns,
                &format!("{OUTSIDE_NET_V6} via {}", v.seg.gw_v6()),
            )?;
        }
        let mut lan: Vec<String> = Vec::new();
        for s in SEGMENTS {
            lan.push(format!("{}/28", s.gw_v4()));
            lan.push(format!("{}/64", s.gw_v6()));
        }
        lan.push("192.168.100.1/24".into());
        lan.push("fd00:ff::1/64".into());
        let lan: Vec<&str> = lan.iter().map(String::as_str).collect();
        lab.add_router(ROUTER, ROUTER_PORT, &lan)
            .context("service lab: router")?;
        lab.add_linked_host(
            OUTSIDE,
            ROUTER,
            "eth1",
            &["203.0.113.1/24", "2001:db8:ff::1/64"],
            &[&format!("{OUTSIDE_V4}/24"), &format!("{OUTSIDE_V6}/64")],
            &["10.0.0.0/8 via 203.0.113.1", "fd00::/16 via 2001:db8:ff::1"],
        )
        .context("service lab: outside host")?;
        lab.add_bridge_host(
            MGMT,
            MGMT_PORT,
            &[&format!("{MGMT_V4}/24"), &format!("{MGMT_V6}/64")],
            &["10.0.0.0/8", "fd00::/16"],
        )
        .context("service lab: management host")?;

        let mut servers = Vec::new();
        for v in lab.vms() {
            servers.push((v.name.clone(), EchoServers::start(&v.ns, &SCAN_PORTS)?));
        }
        let mgmt_ns = lab.host(MGMT).ns.clone();
        servers.push((MGMT.to_string(), EchoServers::start(&mgmt_ns, &SCAN_PORTS)?));
        let outside_ns = lab.host(OUTSIDE).ns.clone();
        servers.push((
            OUTSIDE.to_string(),
            EchoServers::start(&outside_ns, &OUTSIDE_PORTS)?,
        ));
        Ok(ServiceLab { servers, lab })
    }

    /// The VM called `name`.
    pub fn vm(&self, name: &str) -> &Vm {
        self.lab.vm(name)
    }

    pub fn router(&self) -> &Host {
        self.lab.host(ROUTER)
    }

    pub fn outside(&self) -> &Host {
        self.lab.host(OUTSIDE)
    }

    pub fn mgmt(&self) -> &Host {
        self.lab.host(MGMT)
    }

    /// The echo servers of VM or host `name`.
    pub fn servers(&self, name: &str) -> &EchoServers {
        self.servers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("no echo servers in {name}"))
    }

    /// Stops the echo servers, then removes everything now (see [`Lab::destroy`]).
    pub fn destroy(self) -> Result<()> {
        let ServiceLab { servers, lab } = self;
        drop(servers);
        lab.destroy()
    }

    /// Every connection that VM or host `name` accepted from `peer`.
    pub fn arrived_from(&self, name: &str, peer: IpAddr) -> Vec<crate::echo::Accepted> {
        self.servers(name).accepted_from(peer)
    }
}
