//! What the fail-closed tests (`tests/tests/failclosed/`) need beyond the rest of the lab:
//!
//! - [`Watched`]: the daemon on a lab whose `/healthz` may answer 503 from the start (an
//!   interface it refuses exists before it starts), where [`crate::Env`] waits for 200;
//! - [`quiet_v4`]: a VM namespace without IPv6, so that no multicast listener report sent
//!   at the kernel's own time lands among counted frames;
//! - [`FrameSender`]: one packet socket in a namespace that sends many frames fast (a SYN
//!   flood, a flood of first fragments), and [`Stream`], a sender on a thread that waits
//!   for its interface to appear and sends from the first moment it can;
//! - [`Macvtap`]: a macvtap on a veth of the lab's host namespace, whose character
//!   device the test opens as the VM would;
//! - [`CountingTcx`]: a foreign TC program (hand-assembled, like [`crate::vlan_push`]) on
//!   a vif's egress that counts the frames it sees and passes them with `TC_ACT_OK`
//!   (TCX_PASS: "pass, and stop the chain");
//! - [`LateNetns`]: a namespace made outside the [`Lab`], for a VM that exists before its
//!   vif does;
//! - [`tcp_segments`]: the TCP segments of a capture, for the sequence numbers of a live
//!   connection.
//!
//! Like the rest of the lab, nothing here touches the root namespace's interfaces.

use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use crate::daemon::{Daemon, HttpResponse, TempDir, isolator_bin, tail};
use crate::env::METRICS_PORT;
use crate::lab::{BRIDGE, Lab, Vm};
use crate::metrics::{Expect, Scrape, Series, poll};
pub use crate::net::{FrameSender, TcpPair};
use crate::net::{packet_socket, send_on};
use crate::netns::{in_netns, ip_n, netns_path, netns_pids, run, sysctl};
use crate::rawbpf::{
    BPF_FUNC_MAP_LOOKUP_ELEM, BPF_PSEUDO_MAP_FD, attach_tcx_egress, counter_map, insn, load_tc, op,
    read_counter,
};

/// The daemon on a lab, whatever `/healthz` says. Field order is drop order: the daemon
/// stops before the lab's namespaces go, the directory with the policy and the log last.
pub struct Watched {
    daemon: Daemon,
    lab: Lab,
    tmp: TempDir,
    config: PathBuf,
}

impl Watched {
    /// Writes `policy`, starts `isolator run` in the lab's host namespace and waits until
    /// `/healthz` answers at all (the daemon serves it once its first plan is in force and
    /// attached).
    pub fn start(lab: Lab, policy: &str) -> Result<Watched> {
        let tmp = TempDir::new("isot-fc")?;
        let config = tmp.write("policy.yaml", policy)?;
        let mut daemon = Daemon::start(
            &lab,
            &isolator_bin()?,
            &config,
            METRICS_PORT,
            tmp.path(),
            &[],
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = daemon.try_wait()? {
                bail!(
                    "isolator exited ({status}) before /healthz answered; policy:\n{policy}\n\
                     its output:\n{}",
                    daemon.log()
                );
            }
            if daemon.get("/healthz").is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "isolator did not answer /healthz within 30 s; its output:\n{}",
                    daemon.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Watched {
            daemon,
            lab,
            tmp,
            config,
        })
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// `GET /healthz`.
    pub fn health(&self) -> HttpResponse {
        self.daemon
            .get("/healthz")
            .unwrap_or_else(|e| panic!("GET /healthz: {e:#}"))
    }

    pub fn scrape(&self) -> Scrape {
        self.daemon
            .scrape()
            .unwrap_or_else(|e| panic!("scraping /metrics: {e:#}"))
    }

    /// Polls until the counters moved as `expect` says and stay there; panics otherwise.
    pub fn expect(&self, before: &Scrape, expect: &Expect) -> Scrape {
        self.daemon
            .expect(before, expect)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Replaces the policy file, sends SIGHUP and waits until the daemon counts the
    /// reload as `succeeded` (`true`) or `failed`.
    pub fn reload(&self, policy: &str, succeeds: bool) -> Result<()> {
        let series = Series::reloads(if succeeds { "succeeded" } else { "failed" });
        let before = self.daemon.scrape()?;
        std::fs::write(&self.config, policy)
            .with_context(|| format!("write {}", self.config.display()))?;
        self.daemon.signal(libc::SIGHUP)?;
        self.daemon
            .expect(&before, &Expect::new().grows(series, 1.0))
            .with_context(|| format!("reloading this policy:\n{policy}"))?;
        Ok(())
    }

    /// The last lines of the daemon's output.
    pub fn log_tail(&self) -> String {
        tail(&self.daemon.log(), 40)
    }

    /// Where the daemon's log and the policy live.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
}

/// Turns IPv6 off in namespace `ns` (before or after its interfaces exist): its kernel
/// then sends nothing of its own choosing over IPv6 (no listener reports, no neighbour
/// discovery) among the frames a test counts.
pub fn quiet_v4(ns: &str) -> Result<()> {
    for key in ["all", "default"] {
        sysctl(ns, &format!("net.ipv6.conf.{key}.disable_ipv6"), "1")?;
    }
    Ok(())
}

/// A VM with only IPv4 ([`quiet_v4`]): `lab.add_vm` with one address, IPv6 then off.
pub fn add_v4_vm(lab: &mut Lab, name: &str, vif: &str, addr: &str) -> Result<Vm> {
    let vm = lab.add_vm(name, vif, &[addr])?;
    quiet_v4(&vm.ns)?;
    sysctl(&vm.ns, "net.ipv6.conf.eth0.disable_ipv6", "1")?;
    Ok(vm)
}

/// Permanent neighbour entries between every two of `vms` for each address family they
/// share: no ARP or neighbour discovery among the frames a test counts.
pub fn static_mesh(lab: &Lab, vms: &[&Vm]) -> Result<()> {
    for a in vms {
        for b in vms {
            if a.name == b.name {
                continue;
            }
            for (addr, _) in &b.addrs {
                if a.addrs.iter().any(|(x, _)| x.is_ipv4() == addr.is_ipv4()) {
                    lab.static_neigh(a, b, *addr)?;
                }
            }
        }
    }
    Ok(())
}

/// Frames sent over and over from a thread of their own, from the moment their interface
/// exists and is up, until stopped: [`Stream::start`] may run before the interface is
/// created. Counts the frames of each kind that the kernel accepted.
pub struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<Vec<AtomicU64>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Stream {
    /// In namespace `ns`, waits for `ifname`, then sends `frames[0]`, `frames[1]`, ... in
    /// turn, one every `gap`, until [`Stream::stop`].
    pub fn start(ns: &str, ifname: &str, frames: Vec<Vec<u8>>, gap: Duration) -> Result<Stream> {
        let path = netns_path(ns);
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent: Arc<Vec<AtomicU64>> =
            Arc::new(frames.iter().map(|_| AtomicU64::new(0)).collect());
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let ifname = ifname.to_string();
        let thread = std::thread::spawn(move || -> Result<()> {
            // SAFETY: plain syscall on a valid fd; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns({path}): {}", std::io::Error::last_os_error());
            }
            let mut socket = None;
            let mut i = 0;
            while !stop2.load(Ordering::SeqCst) {
                if socket.is_none() {
                    socket = packet_socket(&ifname).ok();
                    if socket.is_none() {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                }
                let (sock, ifindex) = socket.as_ref().expect("opened");
                let k = i % frames.len();
                match send_on(sock, *ifindex, &frames[k]) {
                    Ok(()) => {
                        sent2[k].fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                    // The interface went away: wait for it again.
                    Err(e) if e.raw_os_error() == Some(libc::ENXIO) => socket = None,
                    // Not up yet (ENETDOWN), or its queue is full or the frame dropped
                    // on the way out (ENOBUFS, EAGAIN): not sent, not counted.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENETDOWN | libc::ENOBUFS | libc::EAGAIN)
                        ) => {}
                    // Anything else is a harness error, never "not arrived".
                    Err(e) => bail!("sending frame {k} on {ifname} in {path}: {e}"),
                }
                std::thread::sleep(gap);
            }
            Ok(())
        });
        Ok(Stream {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    /// How many frames of each kind were sent so far.
    pub fn sent(&self) -> Vec<u64> {
        self.sent.iter().map(|c| c.load(Ordering::SeqCst)).collect()
    }

    /// Stops sending; returns how many frames of each kind were sent.
    pub fn stop(mut self) -> Result<Vec<u64>> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r?,
            Some(Err(p)) => std::panic::resume_unwind(p),
            None => {}
        }
        Ok(self.sent())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A new VM's vif, created while the daemon runs: the veth `vif` in the lab's host
/// namespace, up and a port of the lab's bridge in one step, its peer `eth0` (with `mac`)
/// in `ns`, brought up right after. Returns when the vif was created.
pub fn add_late_vif(lab: &Lab, vif: &str, mac: &str, ns: &LateNetns) -> Result<Instant> {
    ip_n(
        lab.host_ns(),
        &[
            "link", "add", "name", vif, "master", BRIDGE, "up", "type", "veth", "peer", "name",
            "eth0", "address", mac, "netns", &ns.name,
        ],
    )
    .with_context(|| format!("the new vif {vif}"))?;
    let created = Instant::now();
    // At once, not by another `ip`: the daemon may classify the vif within tens of
    // milliseconds, and a test wants the VM's frames from the moment before.
    crate::netns::set_up_now(&ns.name, "eth0")?;
    Ok(created)
}

/// Waits until the daemon has attached its programs to `vif`, at most `within`; returns
/// how long after `since` it was.
pub fn await_attached(lab: &Lab, vif: &str, since: Instant, within: Duration) -> Result<Duration> {
    poll(&format!("the daemon attaches to {vif}"), within, || {
        Ok(if lab.vif_has_xdp(vif)? {
            Ok(since.elapsed())
        } else {
            Err("no program attached".to_string())
        })
    })
}

/// A network namespace made outside the [`Lab`] (named after the lab, so that a test
/// run that dies leaves nothing [`crate::lab::reap_stale`] would not remove), deleted with
/// every process in it on drop.
pub struct LateNetns {
    pub name: String,
}

impl LateNetns {
    /// `<lab id>-<suffix>`, with `lo` up and IPv6 off ([`quiet_v4`]).
    pub fn new(lab: &Lab, suffix: &str) -> Result<LateNetns> {
        let name = format!("{}-{suffix}", lab.id());
        crate::netns::ip(&["netns", "add", &name])?;
        let ns = LateNetns { name };
        ip_n(&ns.name, &["link", "set", "lo", "up"])?;
        quiet_v4(&ns.name)?;
        Ok(ns)
    }
}

impl Drop for LateNetns {
    fn drop(&mut self) {
        for pid in netns_pids(&self.name) {
            // SAFETY: plain syscall; a process in a namespace this test made.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = run(std::process::Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// A macvtap in the lab's host namespace, in bridge mode on `lower`, a veth whose peer is
/// a port of the bridge; its character device is opened as the VM would open it (through
/// a node of its own, made from the device number the namespace's sysfs gives: `/dev/tapN`
/// is named after an ifindex, which other namespaces reuse).
pub struct Macvtap {
    pub name: String,
    pub mac: String,
    file: File,
    _dir: TempDir,
}

/// The size of the `virtio_net_hdr` that a macvtap's file carries before every frame
/// (`IFF_VNET_HDR` is on by default).
const VNET_HDR: usize = 10;

impl Macvtap {
    /// Creates `lower` (a veth whose peer `port` joins the bridge) and the macvtap `name`
    /// with MAC `mac` on it, brings them up and opens the macvtap's character device.
    pub fn create(lab: &Lab, name: &str, mac: &str, lower: &str, port: &str) -> Result<Macvtap> {
        let host = lab.host_ns();
        ip_n(
            host,
            &["link", "add", lower, "type", "veth", "peer", "name", port],
        )?;
        ip_n(host, &["link", "set", port, "master", BRIDGE])?;
        ip_n(host, &["link", "set", port, "up"])?;
        ip_n(host, &["link", "set", lower, "up"])?;
        ip_n(
            host,
            &[
                "link", "add", "link", lower, "name", name, "address", mac, "type", "macvtap",
                "mode", "bridge",
            ],
        )?;
        ip_n(host, &["link", "set", name, "up"])?;
        let sysfs = |what: &str| -> Result<String> {
            let out = lab.exec_ok(host, &["cat", &format!("/sys/class/net/{name}/{what}")])?;
            Ok(out.trim().to_string())
        };
        let ifindex = sysfs("ifindex")?;
        let dev = sysfs(&format!("macvtap/tap{ifindex}/dev"))?;
        let (major, minor) = dev
            .split_once(':')
            .with_context(|| format!("device number {dev:?} of {name}"))?;
        let (major, minor): (u32, u32) = (major.parse()?, minor.parse()?);
        let dir = TempDir::new("isot-macvtap")?;
        let node = dir.path().join(format!("tap{ifindex}"));
        let c = std::ffi::CString::new(node.as_os_str().as_encoded_bytes())?;
        // SAFETY: a valid path; makedev of the numbers the kernel reported.
        let rc = unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(major, minor),
            )
        };
        ensure!(
            rc == 0,
            "mknod {} {major}:{minor}: {}",
            node.display(),
            std::io::Error::last_os_error()
        );
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&node)
            .with_context(|| format!("open {} (the character device of {name})", node.display()))?;
        Ok(Macvtap {
            name: name.to_string(),
            mac: mac.to_string(),
            file,
            _dir: dir,
        })
    }

    /// The VM sends `frame`: written to the character device.
    pub fn write(&self, frame: &[u8]) -> Result<()> {
        let mut buf = vec![0u8; VNET_HDR];
        buf.extend_from_slice(frame);
        (&self.file)
            .write_all(&buf)
            .with_context(|| format!("write a frame to {}'s character device", self.name))
    }

    /// Everything the VM could read from the character device within `window`.
    pub fn read_for(&self, window: Duration) -> Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + window;
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(frames);
            }
            let mut pfd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    // A device that cannot be read cannot say nothing came.
                    return Err(e).with_context(|| format!("polling {}", self.name));
                }
            }
            if rc <= 0 {
                continue;
            }
            // SAFETY: the buffer is valid for its length.
            let n =
                unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) {
                    return Err(e).with_context(|| format!("reading {}", self.name));
                }
            }
            if n > VNET_HDR as isize {
                frames.push(buf[VNET_HDR..n as usize].to_vec());
            }
        }
    }
}

/// `key = 0; v = map_lookup(map, &key); if v { *v += 1 (atomic) }; return TC_ACT_OK`.
fn counting_program(map_fd: i32) -> Vec<u8> {
    use op::{ADD64_K, ATOMIC_DW, CALL, EXIT, JEQ_K, LD_IMM64, MOV64_K, MOV64_X, ST_MEM_W};
    [
        insn(ST_MEM_W, 10, 0, -4, 0),
        insn(MOV64_X, 2, 10, 0, 0),
        insn(ADD64_K, 2, 0, 0, -4),
        insn(LD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        insn(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),
        insn(JEQ_K, 0, 0, 2, 0),
        insn(MOV64_K, 1, 0, 0, 1),
        // BPF_ADD (imm 0), 64 bits, *(r0 + 0) += r1.
        insn(ATOMIC_DW, 0, 1, 0, 0),
        // TC_ACT_OK, which TCX reads as TCX_PASS: pass, and run no later program.
        insn(MOV64_K, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]
    .concat()
}

/// A foreign TC program on a vif's egress, attached through TCX (at the end of the chain,
/// as any tool that does not ask for a position): it counts every frame it sees and
/// returns `TC_ACT_OK` (TCX_PASS), which ends the chain. Dropping it detaches it.
pub struct CountingTcx {
    map: OwnedFd,
    _link: OwnedFd,
    _prog: OwnedFd,
}

impl CountingTcx {
    /// Loads the program and attaches it to the egress of `ifname` in namespace `ns`.
    pub fn attach_egress(ns: &str, ifname: &str) -> Result<CountingTcx> {
        let ifname = ifname.to_string();
        in_netns(ns, move || {
            let map = counter_map()?;
            let prog = load_tc(
                &counting_program(map.as_raw_fd()),
                "the counting TC program",
            )?;
            let link = attach_tcx_egress(&prog, &ifname, "the counting TC program")?;
            Ok(CountingTcx {
                map,
                _link: link,
                _prog: prog,
            })
        })
        .with_context(|| format!("in netns {ns}"))
    }

    /// How many frames the program has seen.
    pub fn count(&self) -> Result<u64> {
        read_counter(&self.map)
    }
}

/// One TCP segment of a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: usize,
}

impl Segment {
    /// The sequence number after this segment (what its sender's position becomes).
    pub fn end(&self) -> u32 {
        self.seq
            .wrapping_add(self.payload as u32)
            .wrapping_add(u32::from(self.syn) + u32::from(self.fin))
    }
}

/// The TCP segments among `frames` from `src:sport` to `dst:dport`, in capture order.
pub fn tcp_segments(frames: &[Vec<u8>], src: (IpAddr, u16), dst: (IpAddr, u16)) -> Vec<Segment> {
    frames
        .iter()
        .filter_map(|f| {
            let p = SlicedPacket::from_ethernet(f).ok()?;
            let (s, d): (IpAddr, IpAddr) = match &p.net {
                Some(NetSlice::Ipv4(ip)) => (
                    ip.header().source_addr().into(),
                    ip.header().destination_addr().into(),
                ),
                Some(NetSlice::Ipv6(ip)) => (
                    ip.header().source_addr().into(),
                    ip.header().destination_addr().into(),
                ),
                _ => return None,
            };
            let Some(TransportSlice::Tcp(t)) = &p.transport else {
                return None;
            };
            let seg = Segment {
                src: s,
                dst: d,
                sport: t.source_port(),
                dport: t.destination_port(),
                seq: t.sequence_number(),
                ack: t.acknowledgment_number(),
                syn: t.syn(),
                fin: t.fin(),
                rst: t.rst(),
                payload: t.payload().len(),
            };
            (seg.src == src.0 && seg.sport == src.1 && seg.dst == dst.0 && seg.dport == dst.1)
                .then_some(seg)
        })
        .collect()
}

/// The furthest position (sequence number after the last byte) among `segments`.
pub fn position(segments: &[Segment]) -> Option<u32> {
    segments
        .iter()
        .map(Segment::end)
        .reduce(|a, b| if (b.wrapping_sub(a) as i32) > 0 { b } else { a })
}

/// Polls `/healthz` of `daemon` until its status is `code` and its body contains every
/// one of `needles`; returns the body. Fails naming the last answer after `timeout`.
pub fn await_health(
    daemon: &Daemon,
    code: u16,
    needles: &[&str],
    timeout: Duration,
) -> Result<String> {
    poll(
        &format!("/healthz answers {code} naming {needles:?}"),
        timeout,
        || {
            let r = daemon.get("/healthz")?;
            Ok(
                if r.status == code && needles.iter().all(|n| r.body.contains(n)) {
                    Ok(r.body)
                } else {
                    Err(format!("HTTP {}: {}", r.status, r.body.trim()))
                },
            )
        },
    )
}

/// Runs the calling thread (and every thread and process it starts while pinned: they
/// inherit the mask) on one CPU, until dropped. The kernel's LRU maps keep a list per CPU
/// of entries recently added there, which eviction on another CPU does not reach: a test
/// that floods a shared LRU table to show what it evicts pins the flood and the victim to
/// one CPU, so that the table has to choose between them whatever the scheduler does.
pub struct PinnedCpu {
    previous: libc::cpu_set_t,
}

impl PinnedCpu {
    pub fn to(cpu: usize) -> Result<PinnedCpu> {
        // SAFETY: zeroed cpu_set_t is valid; plain syscalls on the calling thread.
        unsafe {
            let mut previous: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut previous)
                != 0
            {
                bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
                bail!(
                    "sched_setaffinity(CPU {cpu}): {}",
                    std::io::Error::last_os_error()
                );
            }
            Ok(PinnedCpu { previous })
        }
    }
}

impl Drop for PinnedCpu {
    fn drop(&mut self) {
        // SAFETY: restores the mask read in `to`, on the same thread.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.previous);
        }
    }
}

/// A lab of IPv4-only namespaces ([`quiet_v4`]) with permanent neighbour entries between
/// every two of them ([`static_mesh`]): `vms` as `(name, vif, address/len)`, and `hosts`
/// outside every segment on the bridge as `(name, bridge port, address/len)`, returned as
/// [`Vm`]s too (their `vif` is their bridge port), VMs first.
pub fn quiet_lab(
    hint: &str,
    vms: &[(&str, &str, &str)],
    hosts: &[(&str, &str, &str)],
) -> Result<(Lab, Vec<Vm>)> {
    let mut lab = Lab::new(hint)?;
    let mut all = Vec::new();
    for (name, vif, addr) in vms {
        all.push(add_v4_vm(&mut lab, name, vif, addr)?);
    }
    for (name, port, addr) in hosts {
        let h = lab.add_bridge_host(name, port, &[addr], &[])?;
        quiet_v4(&h.ns)?;
        sysctl(&h.ns, "net.ipv6.conf.eth0.disable_ipv6", "1")?;
        all.push(Vm {
            name: h.name.clone(),
            ns: h.ns.clone(),
            vif: port.to_string(),
            mac: h.mac.clone(),
            addrs: h.addrs.clone(),
        });
    }
    let refs: Vec<&Vm> = all.iter().collect();
    static_mesh(&lab, &refs)?;
    Ok((lab, all))
}

/// A UDP socket bound to `0.0.0.0:port` in each VM of `vms`: datagrams to that port are
/// received quietly (without one, the VM's kernel would answer each with an ICMP error,
/// a frame of its own among the counted ones). Keep them as long as frames are sent.
pub fn udp_sinks(vms: &[&Vm], port: u16) -> Result<Vec<std::net::UdpSocket>> {
    vms.iter()
        .map(|vm| {
            in_netns(&vm.ns, || {
                Ok(std::net::UdpSocket::bind((
                    std::net::Ipv4Addr::UNSPECIFIED,
                    port,
                ))?)
            })
            .with_context(|| format!("UDP sink on port {port} in {}", vm.name))
        })
        .collect()
}
