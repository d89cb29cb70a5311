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
//! Cleanup is the [`Drop`] of [`Lab`]: it kills tracked child processes, then every process
//! still living in one of the lab's namespaces, then deletes the namespaces. It runs on normal
//! return, on `?` errors (also half-way through construction) and while unwinding a panic.

use std::net::IpAddr;
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

/// The RAII guard of one lab. See the module documentation.
pub struct Lab {
    id: String,
    host: String,
    /// Every namespace this lab created (or tried to), host first.
    namespaces: Vec<String>,
    vms: Vec<Vm>,
    children: Mutex<Vec<Child>>,
    onlink_routes: Vec<String>,
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
            children: Mutex::new(Vec::new()),
            onlink_routes: vec!["10.0.0.0/8".into(), "fd00::/16".into()],
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
        ensure!(
            self.vms.iter().all(|v| v.name != name && v.vif != vif),
            "lab {}: duplicate VM {name} or vif {vif}",
            self.id
        );
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
        // Quiet, deterministic IPv6: no DAD, no router solicitations.
        for key in [
            "net.ipv6.conf.default.accept_dad",
            "net.ipv6.conf.all.accept_dad",
            "net.ipv6.conf.default.router_solicitations",
            "net.ipv6.conf.default.accept_ra",
        ] {
            sysctl(&ns, key, "0").with_context(ctx)?;
        }
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
        for a in addrs {
            let mut args = vec!["addr", "add", a, "dev", VM_IFNAME];
            if a.contains(':') {
                args.push("nodad");
            }
            ip_n(&ns, &args).with_context(ctx)?;
        }
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
            for line in text.lines().filter(|l| l.contains("bpf")) {
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
        delete_namespaces(&namespaces)
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
