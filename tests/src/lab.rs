//! The lab: a throwaway topology of network namespaces behind an RAII guard.
//!
//! ```text
//!   netns <lab>-h ("host")                       netns <lab>-N (one per VM)
//!   +------------------------------------+       +------------------------+
//!   | br0 (Linux bridge, no IP)          |       | eth0  10.1.1.2/24      |
//!   |  +- vacme-web1  <--- veth pair ---------->  |       fd00:1:1::2/64   |
//!   |  +- vacme-db1   <--- veth pair ---> ...     | routes: 10.0.0.0/8,    |
//!   |  +- vglobex-web1 ...               |       |   fd00::/16 on-link    |
//!   +------------------------------------+       +------------------------+
//! ```
//!
//! All vifs hang off ONE bridge and every VM has on-link routes covering all the others, so
//! nothing but isolator keeps them apart. No namespace has a default route or any link to the
//! root namespace. Nothing here touches the root namespace apart from `ip netns add/del`.
//!
//! Besides VMs a lab can hold [`Host`]s: namespaces that are not VMs, attached to the bridge
//! through a port that no policy names (a router, a management host: [`Lab::add_bridge_host`],
//! [`Lab::add_router`]) or linked to another host by a private veth pair (an "outside" host
//! behind the router: [`Lab::add_linked_host`]). Routes are added with [`Lab::add_route`],
//! which refuses default routes.
//!
//! Cleanup is the [`Drop`] of [`Lab`]: it kills tracked child processes, then every process
//! still living in one of the lab's namespaces, then deletes the namespaces. It runs on normal
//! return, on `?` errors (also half-way through construction) and while unwinding a panic.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::{self, ip, ip_n, netns_pids, pid_alive, run, sysctl};

/// Every namespace the lab creates is called `isot-<pid>-<counter>...`.
pub const NS_PREFIX: &str = "isot-";

/// Name of the bridge in the host namespace.
pub const BRIDGE: &str = "br0";

/// Name of the VM end of every veth pair.
pub const VM_IFNAME: &str = "eth0";

static LAB_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A VM: its own network namespace with `eth0`, whose peer (the vif) sits on the host bridge.
/// Plain data: cloning it is cheap, and it stays valid as long as the [`Lab`] lives.
#[derive(Clone, Debug)]
pub struct Vm {
    /// Logical name, e.g. `acme-web1`.
    pub name: String,
    /// Network namespace of the VM.
    pub ns: String,
    /// Name of the host end of the veth pair (in the host namespace), e.g. `vacme-web1`.
    pub vif: String,
    /// MAC address of the VM's `eth0`.
    pub mac: String,
    /// Addresses of `eth0` with their prefix length.
    pub addrs: Vec<(IpAddr, u8)>,
}

impl Vm {
    /// The first IPv4 address of the VM.
    pub fn v4(&self) -> IpAddr {
        self.addrs
            .iter()
            .map(|a| a.0)
            .find(IpAddr::is_ipv4)
            .unwrap_or_else(|| panic!("VM {} has no IPv4 address", self.name))
    }

    /// The first IPv6 address of the VM.
    pub fn v6(&self) -> IpAddr {
        self.addrs
            .iter()
            .map(|a| a.0)
            .find(IpAddr::is_ipv6)
            .unwrap_or_else(|| panic!("VM {} has no IPv6 address", self.name))
    }
}

/// A lab namespace that is not a VM: a router, a management host, an outside host. Plain data,
/// like [`Vm`].
#[derive(Clone, Debug)]
pub struct Host {
    /// Logical name, e.g. `router`.
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// The host-namespace end of its veth pair on the bridge (e.g. `xrouter`), if it is
    /// attached to the bridge. The name must match no interface pattern of the policy, so
    /// isolator leaves it alone.
    pub port: Option<String>,
    /// MAC address of its `eth0`.
    pub mac: String,
    /// Every address it holds (on any interface), with the prefix length.
    pub addrs: Vec<(IpAddr, u8)>,
}

impl Host {
    /// The first IPv4 address of the host.
    pub fn v4(&self) -> IpAddr {
        self.addrs
            .iter()
            .map(|a| a.0)
            .find(IpAddr::is_ipv4)
            .unwrap_or_else(|| panic!("host {} has no IPv4 address", self.name))
    }

    /// The first IPv6 address of the host.
    pub fn v6(&self) -> IpAddr {
        self.addrs
            .iter()
            .map(|a| a.0)
            .find(IpAddr::is_ipv6)
            .unwrap_or_else(|| panic!("host {} has no IPv6 address", self.name))
    }
}

/// The RAII guard of one lab. See the module documentation.
pub struct Lab {
    id: String,
    host: String,
    /// Every namespace this lab created (or tried to), host first.
    namespaces: Vec<String>,
    vms: Vec<Vm>,
    hosts: Vec<Host>,
    children: Mutex<Vec<Child>>,
    onlink_routes: Vec<String>,
    /// A private bpffs instance for the daemon's pinned state, mounted on first use.
    bpffs: Mutex<Option<PathBuf>>,
}

impl Lab {
    /// Creates the host namespace with `lo` up and the bridge `br0` (no multicast snooping,
    /// no STP, no IPv6 on the host side so the host namespace itself stays silent).
    ///
    /// `name_hint` only shows up in messages; namespace names are `isot-<pid>-<n>h` (host) and
    /// `isot-<pid>-<n>-<i>` (the lab's i-th namespace, i >= 1: the VMs). Namespaces left
    /// behind by dead processes of earlier runs (`isot-<pid>-...` whose pid is gone) are
    /// removed first.
    pub fn new(name_hint: &str) -> Result<Lab> {
        check_root()?;
        reap_stale();
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{NS_PREFIX}{}-{n}", std::process::id());
        let mut lab = Lab {
            host: format!("{id}h"),
            id,
            namespaces: Vec::new(),
            vms: Vec::new(),
            hosts: Vec::new(),
            children: Mutex::new(Vec::new()),
            onlink_routes: vec!["10.0.0.0/8".into(), "fd00::/16".into()],
            bpffs: Mutex::new(None),
        };
        let host = lab.host.clone();
        lab.add_netns(&host)
            .with_context(|| format!("lab {name_hint}: host namespace"))?;
        // No IPv6 on the host side: the vifs and the bridge then send nothing of their own.
        sysctl(&host, "net.ipv6.conf.default.disable_ipv6", "1")?;
        sysctl(&host, "net.ipv6.conf.all.disable_ipv6", "1")?;
        ip_n(
            &host,
            &[
                "link",
                "add",
                BRIDGE,
                "type",
                "bridge",
                "stp_state",
                "0",
                "mcast_snooping",
                "0",
            ],
        )
        .with_context(|| format!("lab {name_hint}: bridge"))?;
        ip_n(&host, &["link", "set", BRIDGE, "up"])?;
        Ok(lab)
    }

    /// Unique id of this lab (`isot-<pid>-<n>`), the prefix of all its namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Name of the host namespace (bridge + vifs; where the daemon runs).
    pub fn host_ns(&self) -> &str {
        &self.host
    }

    /// All VMs added so far.
    pub fn vms(&self) -> &[Vm] {
        &self.vms
    }

    /// The VM called `name`; panics if there is none (a test bug).
    pub fn vm(&self, name: &str) -> &Vm {
        self.vms
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("lab {} has no VM {name}", self.id))
    }

    /// All hosts (non-VM namespaces) added so far.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host called `name`; panics if there is none (a test bug).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("lab {} has no host {name}", self.id))
    }

    /// All namespaces of this lab.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Replaces the on-link routes that [`Lab::add_vm`] installs in each VM (default
    /// `10.0.0.0/8` and `fd00::/16`, so that VMs in different /24s ARP/ND for each other
    /// directly over the shared bridge). Never a default route.
    pub fn set_onlink_routes(&mut self, routes: &[&str]) {
        self.onlink_routes = routes.iter().map(|s| s.to_string()).collect();
    }

    /// Adds a VM: a namespace with `lo` and `eth0` up, `eth0` carrying `addrs` (CIDR form;
    /// IPv6 without DAD) and on-link routes, its veth peer `vif` in the host namespace as a port
    /// of `br0`. `vif` must be at most 15 characters.
    pub fn add_vm(&mut self, name: &str, vif: &str, addrs: &[&str]) -> Result<Vm> {
        ensure!(
            !vif.is_empty() && vif.len() <= 15,
            "vif name {vif:?} must be 1..=15 characters"
        );
        self.check_new_name(name, Some(vif))?;
        let mut parsed = Vec::new();
        for a in addrs {
            parsed.push(parse_cidr(a)?);
        }
        // Numbered by namespaces created so far (host = 0), so that a retry after a failed
        // add_vm gets fresh names.
        let idx = self.namespaces.len();
        let ns = format!("{}-{idx}", self.id);
        let lab_id = self.id.clone();
        let ctx = || format!("lab {lab_id}: VM {name} (netns {ns}, vif {vif})");
        self.add_netns(&ns).with_context(ctx)?;
        quiet_ipv6(&ns).with_context(ctx)?;
        let mac = format!("02:15:00:00:{:02x}:{:02x}", (idx >> 8) & 0xff, idx & 0xff);
        let host = self.host.clone();
        ip_n(
            &host,
            &[
                "link", "add", vif, "type", "veth", "peer", "name", VM_IFNAME, "address", &mac,
                "netns", &ns,
            ],
        )
        .with_context(ctx)?;
        ip_n(&host, &["link", "set", vif, "master", BRIDGE]).with_context(ctx)?;
        ip_n(&host, &["link", "set", vif, "up"]).with_context(ctx)?;
        add_addrs(&ns, VM_IFNAME, addrs).with_context(ctx)?;
        ip_n(&ns, &["link", "set", VM_IFNAME, "up"]).with_context(ctx)?;
        for route in &self.onlink_routes {
            let v6 = route.contains(':');
            if parsed.iter().any(|(a, _)| a.is_ipv6() == v6) {
                ip_n(&ns, &["route", "add", route, "dev", VM_IFNAME]).with_context(ctx)?;
            }
        }
        let vm = Vm {
            name: name.to_string(),
            ns,
            vif: vif.to_string(),
            mac,
            addrs: parsed,
        };
        self.vms.push(vm.clone());
        Ok(vm)
    }

    /// Fails if a VM or host called `name`, or a bridge port `port`, exists already.
    fn check_new_name(&self, name: &str, port: Option<&str>) -> Result<()> {
        let taken = self
            .vms
            .iter()
            .any(|v| v.name == name || Some(v.vif.as_str()) == port)
            || self
                .hosts
                .iter()
                .any(|h| h.name == name || (port.is_some() && h.port.as_deref() == port));
        ensure!(
            !taken,
            "lab {}: duplicate name {name} or port {port:?}",
            self.id
        );
        Ok(())
    }

    /// Adds a host attached to the bridge: a namespace whose `eth0` is the peer of `port` (a
    /// port of `br0` in the host namespace), with `addrs` (CIDR form; IPv6 without DAD) and
    /// `routes` (see [`Lab::add_route`]). `port` must match no interface pattern of the
    /// policy: isolator must leave it alone.
    pub fn add_bridge_host(
        &mut self,
        name: &str,
        port: &str,
        addrs: &[&str],
        routes: &[&str],
    ) -> Result<Host> {
        ensure!(
            !port.is_empty() && port.len() <= 15,
            "port name {port:?} must be 1..=15 characters"
        );
        self.check_new_name(name, Some(port))?;
        let parsed = addrs
            .iter()
            .map(|a| parse_cidr(a))
            .collect::<Result<Vec<_>>>()?;
        let idx = self.namespaces.len();
        let ns = format!("{}-{idx}", self.id);
        let lab_id = self.id.clone();
        let ctx = || format!("lab {lab_id}: host {name} (netns {ns}, bridge port {port})");
        self.add_netns(&ns).with_context(ctx)?;
        quiet_ipv6(&ns).with_context(ctx)?;
        let mac = format!("02:15:01:00:{:02x}:{:02x}", (idx >> 8) & 0xff, idx & 0xff);
        let host = self.host.clone();
        ip_n(
            &host,
            &[
                "link", "add", port, "type", "veth", "peer", "name", VM_IFNAME, "address", &mac,
                "netns", &ns,
            ],
        )
        .with_context(ctx)?;
        ip_n(&host, &["link", "set", port, "master", BRIDGE]).with_context(ctx)?;
        ip_n(&host, &["link", "set", port, "up"]).with_context(ctx)?;
        add_addrs(&ns, VM_IFNAME, addrs).with_context(ctx)?;
        ip_n(&ns, &["link", "set", VM_IFNAME, "up"]).with_context(ctx)?;
        for route in routes {
            self.add_route(&ns, route).with_context(ctx)?;
        }
        let h = Host {
            name: name.to_string(),
            ns,
            port: Some(port.to_string()),
            mac,
            addrs: parsed,
        };
        self.hosts.push(h.clone());
        Ok(h)
    }

    /// Adds a router: a host on the bridge ([`Lab::add_bridge_host`]) with IPv4 and IPv6
    /// forwarding on and ICMP redirects off. Its `lan_addrs` are typically one gateway address
    /// in each segment's subnet. Link it to more namespaces with [`Lab::add_linked_host`].
    pub fn add_router(&mut self, name: &str, port: &str, lan_addrs: &[&str]) -> Result<Host> {
        let router = self.add_bridge_host(name, port, lan_addrs, &[])?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
        ] {
            sysctl(&router.ns, key, value)
                .with_context(|| format!("lab {}: router {name}", self.id))?;
        }
        Ok(router)
    }

    /// Adds a host linked to host `via` (e.g. the router) by a veth pair of its own, not
    /// through the bridge: `via_ifname` in `via`'s namespace carries `via_addrs`, the new
    /// namespace's `eth0` carries `addrs`; `routes` as in [`Lab::add_route`] (e.g.
    /// `10.0.0.0/8 via 203.0.113.1`: never a default route).
    pub fn add_linked_host(
        &mut self,
        name: &str,
        via: &str,
        via_ifname: &str,
        via_addrs: &[&str],
        addrs: &[&str],
        routes: &[&str],
    ) -> Result<Host> {
        self.check_new_name(name, None)?;
        let via_idx = self
            .hosts
            .iter()
            .position(|h| h.name == via)
            .with_context(|| format!("lab {}: no host {via}", self.id))?;
        let via_ns = self.hosts[via_idx].ns.clone();
        let mut parsed = Vec::new();
        for a in addrs {
            parsed.push(parse_cidr(a)?);
        }
        let mut via_parsed = Vec::new();
        for a in via_addrs {
            via_parsed.push(parse_cidr(a)?);
        }
        let idx = self.namespaces.len();
        let ns = format!("{}-{idx}", self.id);
        let lab_id = self.id.clone();
        let ctx = || format!("lab {lab_id}: host {name} (netns {ns}, linked to {via})");
        self.add_netns(&ns).with_context(ctx)?;
        quiet_ipv6(&ns).with_context(ctx)?;
        let mac = format!("02:15:02:00:{:02x}:{:02x}", (idx >> 8) & 0xff, idx & 0xff);
        ip_n(
            &via_ns,
            &[
                "link", "add", via_ifname, "type", "veth", "peer", "name", VM_IFNAME, "address",
                &mac, "netns", &ns,
            ],
        )
        .with_context(ctx)?;
        add_addrs(&via_ns, via_ifname, via_addrs).with_context(ctx)?;
        ip_n(&via_ns, &["link", "set", via_ifname, "up"]).with_context(ctx)?;
        add_addrs(&ns, VM_IFNAME, addrs).with_context(ctx)?;
        ip_n(&ns, &["link", "set", VM_IFNAME, "up"]).with_context(ctx)?;
        for route in routes {
            self.add_route(&ns, route).with_context(ctx)?;
        }
        self.hosts[via_idx].addrs.extend(via_parsed);
        let h = Host {
            name: name.to_string(),
            ns,
            port: None,
            mac,
            addrs: parsed,
        };
        self.hosts.push(h.clone());
        Ok(h)
    }

    /// `ip -n NS route add ROUTE` in one of this lab's namespaces, ROUTE split on whitespace
    /// (`203.0.113.0/24 via 10.1.1.1`, `192.168.100.0/24 dev eth0`). Refuses default routes
    /// (`default`, any `/0`): no lab namespace may route to the world.
    pub fn add_route(&self, ns: &str, route: &str) -> Result<()> {
        ensure!(
            self.namespaces.iter().any(|n| n == ns),
            "lab {}: {ns} is not one of its namespaces",
            self.id
        );
        let words: Vec<&str> = route.split_whitespace().collect();
        let dst = words.first().copied().unwrap_or_default();
        ensure!(
            !dst.is_empty()
                && dst != "default"
                && !dst.ends_with("/0")
                && words.iter().all(|w| *w != "default"),
            "lab {}: refusing route {route:?} in {ns}: lab namespaces get no default route",
            self.id
        );
        let mut args = vec!["route", "add"];
        args.extend(&words);
        if !words.contains(&"dev") && !words.contains(&"via") {
            args.extend(["dev", VM_IFNAME]);
        }
        ip_n(ns, &args).with_context(|| format!("route {route:?} in {ns}"))?;
        Ok(())
    }

    /// Creates namespace `ns`, records it for cleanup first, brings `lo` up.
    fn add_netns(&mut self, ns: &str) -> Result<()> {
        ensure!(
            !std::path::Path::new(&netns::netns_path(ns)).exists(),
            "netns {ns} already exists"
        );
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        ip_n(ns, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// `ip netns exec NS ARGS...` (stdin closed); the caller checks the exit status.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// Like [`Lab::exec`] but fails (with the command's stderr) unless it exits 0; returns stdout.
    pub fn exec_ok(&self, ns: &str, args: &[&str]) -> Result<String> {
        netns::run_ok(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// A command `nsenter --net=/run/netns/HOST PROGRAM`: it joins only the host namespace's
    /// network namespace, so the root's /sys/fs/bpf stays visible (unlike `ip netns exec`).
    /// Use it to start the daemon.
    pub fn nsenter_host(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.nsenter(&self.host, program)
    }

    /// `nsenter --net=/run/netns/NS PROGRAM`.
    pub fn nsenter(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns::netns_path(ns)))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Spawns a background process that the lab kills (SIGKILL) and reaps in its Drop.
    /// Returns its pid.
    pub fn spawn(&self, mut cmd: Command) -> Result<u32> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {}", netns::describe(&cmd)))?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        Ok(pid)
    }

    /// Sets a permanent neighbour entry in `from` for `to`'s address `addr` (no ARP/ND needed,
    /// so exactly the packets the test sends cross the vif).
    pub fn static_neigh(&self, from: &Vm, to: &Vm, addr: IpAddr) -> Result<()> {
        ip_n(
            &from.ns,
            &[
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                &to.mac,
                "dev",
                VM_IFNAME,
                "nud",
                "permanent",
            ],
        )
        .map(|_| ())
    }

    /// `ip -n HOST -d link show VIF`: the detailed view of a vif (shows `xdp` when a program is
    /// attached).
    pub fn vif_details(&self, vif: &str) -> Result<String> {
        ip_n(&self.host, &["-d", "link", "show", "dev", vif])
    }

    /// Whether an XDP program is attached to `vif` in the host namespace.
    pub fn vif_has_xdp(&self, vif: &str) -> Result<bool> {
        let details = self.vif_details(vif)?;
        Ok(details.split_whitespace().any(|w| w.starts_with("xdp")))
    }

    /// Every BPF program attached to `vif` in the host namespace, one description each:
    /// `xdp` (from `ip -d link`), `tcx ingress`/`tcx egress` (BPF_PROG_QUERY), and classic tc
    /// filters on the clsact hooks (`tc filter show`). Empty when nothing is attached.
    pub fn vif_programs(&self, vif: &str) -> Result<Vec<String>> {
        let mut found = Vec::new();
        if self.vif_has_xdp(vif)? {
            found.push("xdp".to_string());
        }
        let (tcx_in, tcx_out) = netns::tcx_prog_counts(&self.host, vif)?;
        for (n, hook) in [(tcx_in, "ingress"), (tcx_out, "egress")] {
            for _ in 0..n {
                found.push(format!("tcx {hook}"));
            }
        }
        for hook in ["ingress", "egress"] {
            let out = run(
                Command::new("tc").args(["-n", &self.host, "filter", "show", "dev", vif, hook])
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            // A filter's own line (with its handle), not its priority's header line.
            for line in text
                .lines()
                .filter(|l| l.contains("bpf") && l.contains(" handle "))
            {
                found.push(format!("tc {hook}: {}", line.trim()));
            }
        }
        Ok(found)
    }

    /// Removes everything now and reports what could not be removed.
    pub fn destroy(mut self) -> Result<()> {
        let leftover = self.cleanup();
        if leftover.is_empty() {
            Ok(())
        } else {
            bail!("could not remove netns {}", leftover.join(", "))
        }
    }

    /// Kills children and processes in our namespaces, deletes the namespaces. Never panics.
    /// Returns the namespaces that still exist afterwards.
    fn cleanup(&mut self) -> Vec<String> {
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let namespaces = std::mem::take(&mut self.namespaces);
        let left = delete_namespaces(&namespaces);
        // After the namespaces (and the daemons in them) are gone: the pins go with the
        // private bpffs instance.
        if let Some(dir) = self.bpffs.lock().unwrap_or_else(|e| e.into_inner()).take() {
            unmount_bpffs(&dir);
        }
        left
    }

    /// A directory for `isolator run --state-dir`: inside a bpffs instance private to this
    /// lab (mounted on first use under the temp dir, unmounted when the lab is dropped), so
    /// that parallel labs never share pinned maps and nothing is pinned under the host's
    /// /sys/fs/bpf. Daemons started again on the same lab find what the previous one left.
    pub fn state_dir(&self) -> Result<PathBuf> {
        let mut slot = self.bpffs.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let dir = bpffs_mount_point(&self.id);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            netns::run_ok(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir))
                .with_context(|| format!("mount a bpffs at {}", dir.display()))?;
            *slot = Some(dir);
        }
        Ok(slot.as_ref().expect("mounted").join("isolator"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let leftover = self.cleanup();
        if !leftover.is_empty() {
            eprintln!(
                "isolator-tests: WARNING: could not remove netns {}",
                leftover.join(", ")
            );
        }
    }
}

/// Kills every process in each namespace, deletes it, waits until it is gone. Never panics.
/// Returns the namespaces that still exist.
fn delete_namespaces(namespaces: &[String]) -> Vec<String> {
    for ns in namespaces {
        for _ in 0..3 {
            let pids = netns_pids(ns);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: plain syscall. These processes live in a namespace we created.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = run(Command::new("ip").args(["netns", "del", ns]));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = namespaces
            .iter()
            .filter(|ns| std::path::Path::new(&netns::netns_path(ns)).exists())
            .cloned()
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        for ns in &left {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes namespaces `isot-<pid>-...` whose creating process `pid` no longer exists
/// (left behind by a test run that was SIGKILLed). Never panics.
pub fn reap_stale() {
    reap_stale_bpffs();
    let Ok(all) = netns::list_netns() else { return };
    let stale: Vec<String> = all
        .into_iter()
        .filter(|ns| {
            ns.strip_prefix(NS_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok())
                .is_some_and(|pid| !pid_alive(pid))
        })
        .collect();
    if !stale.is_empty() {
        eprintln!(
            "isolator-tests: removing stale lab namespaces {}",
            stale.join(", ")
        );
        delete_namespaces(&stale);
    }
}

/// Where a lab's private bpffs is mounted.
fn bpffs_mount_point(lab_id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{lab_id}-bpffs"))
}

/// Unmounts a lab's bpffs (lazily, should a file still be open) and removes the mount
/// point. Never panics.
fn unmount_bpffs(dir: &std::path::Path) {
    let _ = run(Command::new("umount").arg("-l").arg(dir));
    let _ = std::fs::remove_dir(dir);
}

/// Private bpffs instances of labs whose process died without cleaning up.
fn reap_stale_bpffs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = name
            .strip_prefix(NS_PREFIX)
            .filter(|rest| rest.ends_with("-bpffs"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
            .is_some_and(|pid| !pid_alive(pid));
        if stale {
            unmount_bpffs(&entry.path());
        }
    }
}

/// The namespaces of this process's labs that currently exist (`isot-<ourpid>-...`).
pub fn our_namespaces() -> Vec<String> {
    let prefix = format!("{NS_PREFIX}{}-", std::process::id());
    netns::list_netns()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect()
}

/// Fails with a clear message unless we may create namespaces.
pub fn check_root() -> Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the isolator lab needs root (network namespaces, veth, bridge, XDP)");
    }
    Ok(())
}

/// Quiet, deterministic IPv6 in a new namespace: no DAD, no router solicitations, no
/// autoconfiguration from router advertisements (set before its interfaces exist, so they
/// inherit it).
fn quiet_ipv6(ns: &str) -> Result<()> {
    for key in [
        "net.ipv6.conf.default.accept_dad",
        "net.ipv6.conf.all.accept_dad",
        "net.ipv6.conf.default.router_solicitations",
        "net.ipv6.conf.default.accept_ra",
    ] {
        sysctl(ns, key, "0")?;
    }
    Ok(())
}

/// Adds `addrs` (CIDR form) to `ifname` in `ns`; IPv6 without DAD.
fn add_addrs(ns: &str, ifname: &str, addrs: &[&str]) -> Result<()> {
    for a in addrs {
        parse_cidr(a)?;
        let mut args = vec!["addr", "add", a, "dev", ifname];
        if a.contains(':') {
            args.push("nodad");
        }
        ip_n(ns, &args)?;
    }
    Ok(())
}

/// Parses `10.1.1.2/24` or `fd00::2/64`.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8)> {
    let (a, p) = s
        .split_once('/')
        .with_context(|| format!("{s:?}: expected ADDRESS/PREFIXLEN"))?;
    let addr: IpAddr = a.parse().with_context(|| format!("{s:?}: bad address"))?;
    let plen: u8 = p
        .parse()
        .with_context(|| format!("{s:?}: bad prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    ensure!(plen <= max, "{s:?}: prefix length > {max}");
    Ok((addr, plen))
}
