//! Live frames: the cost of each verdict path on frames that really arrive on a vif.
//!
//! A generator (a four-instruction XDP program that returns `bpf_redirect(peer)`, run with
//! BPF_PROG_TEST_RUN in live-frames mode) transmits copies of one 60-byte frame into the
//! peer of a vif; the veth delivers them to the vif, whose native XDP hook carries the arm
//! under test. Every vif is a port of a bridge with one more port, a veth `sink`, where a
//! static entry sends the frames' destination MAC: a frame an arm passes is forwarded
//! there (and counted), one it drops is not. Everything runs on one pinned core: the
//! generator's syscall, the veth's NAPI poll (softirq, run as each of the generator's
//! batches ends) and the bridge. The time per frame is the generator's, as the kernel
//! measures its loop (so without the ~25 ms a run spends setting up its page pool); it
//! includes the receive side, which runs inside that loop (the isolator arm's time over
//! the floor's matches its program's own time from the BPF statistics).
//!
//! The arms, set up in turn in every round and measured on every path (rounds rotate the
//! order; figures are medians of the rounds):
//! - XDP_DROP floor: a two-instruction program that drops everything;
//! - xdp-filter (xdp-tools), native mode, dropping the same frames by exact destination
//!   address and port (it knows no interfaces or prefixes);
//! - nftables, netdev ingress on the vifs, with sets;
//! - nftables, bridge family, forward hook, an `iifname . ip daddr` verdict map;
//! - isolator, attached by the library as the daemon would.

use std::fs;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aya::programs::loaded_programs;
use aya::sys::{Stats, enable_stats};
use isolator::compile::Link;
use isolator::dataplane::{AttachMode, Dataplane};
use isolator_tests::rawbpf;

/// Sizes of one live-frames run.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Frames per measurement (one arm, one path, one round).
    pub frames: u32,
    pub rounds: usize,
}

/// Frames the generator hands over per batch (the kernel's default and NAPI's budget).
const BATCH: u32 = 64;
const BRIDGE: &str = "br-bench";
/// The bridge port every passed frame is forwarded to (a veth; its peer's stack frees
/// them) and its peer.
const SINK: &str = "sink";
const SINK_PEER: &str = "sink-p";
/// The nftables table both nftables arms use.
const NFT_TABLE: &str = "isobench";

/// One verdict path: a frame, the vif it enters through, and whether isolator passes it.
pub struct Path {
    pub name: &'static str,
    /// Index into the benchmark's links.
    pub vif: usize,
    pub frame: Vec<u8>,
    pub passes: bool,
    /// The path whose frame opens the connection this one replies in; before each
    /// measurement isolator sees it again, as it would cross the host ([`open_connection`]:
    /// an unanswered opening expires in 10 s).
    pub opened_by: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    Floor,
    XdpFilter,
    NftNetdev,
    NftBridge,
    Isolator,
}

impl Arm {
    pub const ALL: [Arm; 5] = [
        Arm::Floor,
        Arm::XdpFilter,
        Arm::NftNetdev,
        Arm::NftBridge,
        Arm::Isolator,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Arm::Floor => "XDP_DROP floor",
            Arm::XdpFilter => "xdp-filter",
            Arm::NftNetdev => "nftables netdev ingress, sets",
            Arm::NftBridge => "nftables bridge, iifname.daddr vmap",
            Arm::Isolator => "isolator",
        }
    }

    /// Whether the arm is an XDP program on the vif (the kernel's BPF statistics time it).
    fn is_xdp(self) -> bool {
        !matches!(self, Arm::NftNetdev | Arm::NftBridge)
    }
}

/// One measurement.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// The generator's run time divided by the frames, as the kernel times it (its loop,
    /// without setting up and tearing down its page pool, without the time the thread was
    /// scheduled out): everything the core did for a frame, the generator, the veth, the
    /// arm and what follows its verdict, run as softirq when the generator's batch ends.
    ns_per_frame: f64,
    /// The arm's program's own time per run from the kernel's BPF statistics, measured
    /// in a second run with statistics on (XDP arms only).
    program_ns: Option<f64>,
    /// Frames the vif received (its `rx_packets`).
    received: u64,
    /// Frames forwarded to the sink (passed).
    passed: u64,
}

/// The medians of one arm on one path.
#[derive(Clone, Debug)]
pub struct Row {
    pub arm: Arm,
    pub ns_per_frame: f64,
    /// Median over rounds of this arm's time over the floor's in the same round.
    pub ratio_to_floor: f64,
    pub program_ns: Option<f64>,
    /// Frames received and passed in the last round (of [`Config::frames`] sent).
    pub received: u64,
    pub passed: u64,
    /// Whether what passed matches the arm's intended verdict on every round.
    pub verdict_ok: bool,
}

pub struct PathReport {
    pub path: &'static str,
    pub passes: bool,
    pub rows: Vec<Row>,
}

/// Makes the calling thread's network and mount namespaces its own and mounts sysfs (for
/// the namespace's interfaces) and a fresh bpffs (for xdp-filter's pins) in it: nothing
/// the benchmark does reaches the host's interfaces or bpffs, and all of it goes away
/// with the thread.
pub fn private_namespaces() -> anyhow::Result<()> {
    let netns = || {
        std::fs::metadata("/proc/thread-self/ns/net")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .context("reading /proc/thread-self/ns/net")
    };
    let host = netns()?;
    // SAFETY: unshare affects only the calling thread (a thread of its own).
    if unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) } != 0 {
        bail!(
            "unshare(CLONE_NEWNET | CLONE_NEWNS): {} (run as root)",
            std::io::Error::last_os_error()
        );
    }
    if netns()? == host {
        bail!("still in the host's network namespace after unshare: refusing to go on");
    }
    mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE)?;
    mount(Some(c"sysfs"), "/sys", Some(c"sysfs"), 0)?;
    mount(Some(c"bpf"), "/sys/fs/bpf", Some(c"bpf"), 0)?;
    Ok(())
}

fn mount(
    source: Option<&std::ffi::CStr>,
    target: &str,
    fstype: Option<&std::ffi::CStr>,
    flags: libc::c_ulong,
) -> anyhow::Result<()> {
    let t = std::ffi::CString::new(target)?;
    let ptr = |c: Option<&std::ffi::CStr>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: NUL-terminated strings or null, no data argument; in this thread's own
    // mount namespace.
    let rc = unsafe {
        libc::mount(
            ptr(source),
            t.as_ptr(),
            ptr(fstype),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!("mount {target}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs the live-frames benchmark on `paths` with the dataplane `dp` (its plan applied
/// for `links`, nothing attached) and returns the medians per path ([`print`] shows
/// them). Call in [`private_namespaces`]: it pins the calling thread to its core.
pub fn run(
    dp: &mut Dataplane,
    links: &[Link],
    paths: &[Path],
    config: Config,
) -> anyhow::Result<Vec<PathReport>> {
    pin_to_this_cpu()?;
    topology(links)?;
    // Every path's verdict as isolator judges it (a test run, nothing attached), in order:
    // the exposed endpoint's SYN opens the connection the tracked reply belongs to.
    for path in paths {
        if let Some(opener) = path.opened_by {
            let opener = &paths[opener];
            open_connection(
                dp,
                links[opener.vif].ifindex,
                links[path.vif].ifindex,
                &opener.frame,
            )?;
        }
        let verdict = dp.test_run_ingress(links[path.vif].ifindex, &path.frame)?;
        let want = if path.passes { XDP_PASS } else { XDP_DROP };
        if verdict != want {
            bail!(
                "{}: isolator returns {verdict}, the benchmark expects {want}",
                path.name
            );
        }
    }
    // One generator per vif, transmitting into its peer.
    let mut generators = Vec::new();
    for link in links {
        let peer = ifindex(&format!("{}-p", link.name))?;
        generators.push(rawbpf::load_xdp(
            &rawbpf::xdp_redirect_program(peer),
            "the live-frames generator",
        )?);
    }
    let floor = rawbpf::load_xdp(&rawbpf::xdp_drop_program(), "the XDP_DROP floor")?;

    let mut samples = vec![vec![Vec::<Sample>::new(); paths.len()]; Arm::ALL.len()];
    for round in 0..config.rounds {
        for k in 0..Arm::ALL.len() {
            let a = (round + k) % Arm::ALL.len();
            let arm = Arm::ALL[a];
            let mut active = Active::start(arm, links, dp, &floor)
                .with_context(|| format!("setting up the {} arm", arm.label()))?;
            for (p, path) in paths.iter().enumerate() {
                let generator = &generators[path.vif];
                let vif = &links[path.vif].name;
                if let Some(opener) = path.opened_by {
                    let opener = &paths[opener];
                    active.open_connection(
                        links[opener.vif].ifindex,
                        links[path.vif].ifindex,
                        &opener.frame,
                    )?;
                }
                // Warm up (first use of maps, caches, the sink's learning).
                rawbpf::xdp_live_frames(generator.as_fd(), &path.frame, 1000, BATCH)?;
                let program = if arm.is_xdp() {
                    Some(attached_xdp_program(vif)?)
                } else {
                    None
                };
                samples[a][p].push(measure(generator, path, vif, config.frames, program)?);
            }
            drop(active);
        }
    }

    let mut reports = Vec::new();
    for (p, path) in paths.iter().enumerate() {
        let mut rows = Vec::new();
        for (a, arm) in Arm::ALL.iter().enumerate() {
            let s = &samples[a][p];
            // Arm::ALL[0] is the floor.
            let floor = &samples[0][p];
            let ns_per_frame = median(s.iter().map(|x| x.ns_per_frame).collect());
            let ratio_to_floor = median(
                s.iter()
                    .zip(floor)
                    .map(|(x, f)| x.ns_per_frame / f.ns_per_frame.max(1e-9))
                    .collect(),
            );
            let program_ns = arm
                .is_xdp()
                .then(|| median(s.iter().filter_map(|x| x.program_ns).collect()));
            let expect_pass = path.passes && *arm != Arm::Floor;
            let sent = u64::from(config.frames);
            // A stray frame of the bridge's own may reach the sink: allow 1%.
            let verdict_ok = s.iter().all(|x| {
                if expect_pass {
                    x.passed > 0 && x.passed >= x.received.min(sent) * 99 / 100
                } else {
                    x.passed <= sent / 100
                }
            });
            let last = s.last().copied().expect("at least one round");
            rows.push(Row {
                arm: *arm,
                ns_per_frame,
                ratio_to_floor,
                program_ns,
                received: last.received,
                passed: last.passed,
                verdict_ok,
            });
        }
        reports.push(PathReport {
            path: path.name,
            passes: path.passes,
            rows,
        });
    }
    Ok(reports)
}

pub fn print(reports: &[PathReport], config: Config) {
    println!(
        "live frames: a BPF_PROG_TEST_RUN live-frames generator redirects each path's 60-byte \
         frame into the vif's veth peer; the vif's native XDP hook carries the arm; what passes \
         goes through the bridge to a sink. {} frames x {} rounds, arms interleaved, medians, \
         one pinned core",
        config.frames, config.rounds
    );
    println!(
        "  ns/frame: the generator's run time / frames as the kernel times it (setup excluded): \
         generator, veth, the arm and what follows its verdict (skb, bridge, sink) on one core"
    );
    println!(
        "  x floor: ns/frame over the XDP_DROP floor's in the same round (the floor pays the \
         same generator and veth), median of the rounds"
    );
    println!(
        "  prog ns: the arm's XDP program's own run time per frame from the kernel's BPF \
         statistics, in a second run with them on (they inflate it by a few ns); nftables: -"
    );
    for report in reports {
        println!(
            "\n{} (isolator {} it)",
            report.path,
            if report.passes { "passes" } else { "drops" }
        );
        println!(
            "  {:<36} {:>9} {:>10} {:>8} {:>8} {:>21}",
            "arm", "ns/frame", "Mpps/core", "x floor", "prog ns", "received / passed"
        );
        for row in &report.rows {
            println!(
                "  {:<36} {:>9.0} {:>10.2} {:>7.2}x {:>8} {:>10} / {:<9}{}",
                row.arm.label(),
                row.ns_per_frame,
                1e3 / row.ns_per_frame.max(1e-9),
                row.ratio_to_floor,
                row.program_ns
                    .map_or_else(|| "-".to_string(), |n| format!("{n:.0}")),
                row.received,
                row.passed,
                if row.verdict_ok {
                    ""
                } else {
                    "  VERDICT NOT AS INTENDED"
                }
            );
        }
    }
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// One measurement: `frames` copies of the path's frame through the vif, timed; then,
/// for an XDP arm, as many again with BPF statistics on, for the program's own time.
fn measure(
    generator: &OwnedFd,
    path: &Path,
    vif: &str,
    frames: u32,
    program: Option<u32>,
) -> anyhow::Result<Sample> {
    let received = || stat(vif, "rx_packets");
    let passed = || stat(SINK, "tx_packets");
    let (rx0, sink0) = (received()?, passed()?);
    let per_frame = rawbpf::xdp_live_frames(generator.as_fd(), &path.frame, frames, BATCH)?;
    // What a deferred softirq still had to receive.
    settle(vif)?;
    let (rx1, sink1) = (received()?, passed()?);

    let program_ns = match program {
        None => None,
        Some(id) => {
            let stats = enable_stats(Stats::RunTime).context("enabling BPF statistics")?;
            let before = program_stats(id)?;
            rawbpf::xdp_live_frames(generator.as_fd(), &path.frame, frames, BATCH)?;
            settle(vif)?;
            let after = program_stats(id)?;
            drop(stats);
            let runs = after.1.saturating_sub(before.1);
            (runs > 0).then(|| after.0.saturating_sub(before.0) as f64 / runs as f64)
        }
    };
    Ok(Sample {
        ns_per_frame: per_frame.as_nanos() as f64,
        program_ns,
        received: rx1.saturating_sub(rx0),
        passed: sink1.saturating_sub(sink0),
    })
}

/// Waits (briefly) until the vif's receive counter stops moving.
fn settle(vif: &str) -> anyhow::Result<()> {
    let mut last = stat(vif, "rx_packets")?;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(1));
        let now = stat(vif, "rx_packets")?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(())
}

/// (run time ns, run count) of the program with id `id`.
fn program_stats(id: u32) -> anyhow::Result<(u64, u64)> {
    for info in loaded_programs() {
        let info = info.context("listing BPF programs")?;
        if info.id() == id {
            return Ok((info.run_time().as_nanos() as u64, info.run_count()));
        }
    }
    bail!("no BPF program with id {id}")
}

/// The id of the XDP program attached to `vif` (for xdp-filter, libxdp's dispatcher,
/// which runs xdp-filter's program inside its own run).
fn attached_xdp_program(vif: &str) -> anyhow::Result<u32> {
    let out = run_ok(Command::new("ip").args(["-d", "link", "show", "dev", vif]))?;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "prog/xdp"
            && words.next() == Some("id")
            && let Some(id) = words.next().and_then(|n| n.parse().ok())
        {
            return Ok(id);
        }
    }
    bail!("no XDP program on {vif}: {out}")
}

/// A counter of `/sys/class/net/<dev>/statistics` (this thread's sysfs: its namespace).
fn stat(dev: &str, counter: &str) -> anyhow::Result<u64> {
    let path = format!("/sys/class/net/{dev}/statistics/{counter}");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("{path}: {text:?}"))
}

fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("no interface {name}");
    }
    Ok(index)
}

fn pin_to_this_cpu() -> anyhow::Result<()> {
    // SAFETY: no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        bail!("sched_getcpu: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The bridge, its sink, and the vifs as its ports: up, no IPv6 link-local chatter, GRO
/// on (a veth takes redirected frames only with an XDP program or GRO on its peer: the
/// nftables arms have no XDP program).
fn topology(links: &[Link]) -> anyhow::Result<()> {
    ip(&[
        "link",
        "add",
        BRIDGE,
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
    ])?;
    // No dummy devices on this kernel: a veth whose peer's stack drops what it gets (not
    // addressed to it) early in ip_rcv.
    ip(&[
        "link", "add", SINK, "type", "veth", "peer", "name", SINK_PEER,
    ])?;
    let mut devices = vec![BRIDGE.to_string(), SINK.to_string(), SINK_PEER.to_string()];
    for link in links {
        devices.push(link.name.clone());
        devices.push(format!("{}-p", link.name));
    }
    for dev in &devices {
        ip(&["link", "set", "dev", dev, "addrgenmode", "none"])?;
    }
    for link in links {
        ip(&["link", "set", "dev", &link.name, "master", BRIDGE])?;
        set_gro(&link.name)?;
    }
    ip(&["link", "set", "dev", SINK, "master", BRIDGE])?;
    for dev in &devices {
        ip(&["link", "set", "dev", dev, "up"])?;
    }
    // The frames' destination: the bridge forwards them to the sink.
    let mac = crate::DST_MAC.map(|b| format!("{b:02x}")).join(":");
    run_ok(Command::new("bridge").args(["fdb", "add", &mac, "dev", SINK, "master", "static"]))?;
    Ok(())
}

/// `ethtool -K dev gro on` (the `SIOCETHTOOL` ioctl: no ethtool on the machine needed).
fn set_gro(dev: &str) -> anyhow::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const ETHTOOL_SGRO: u32 = 0x2c;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: 1,
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    if dev.len() >= libc::IFNAMSIZ {
        bail!("interface name {dev} too long");
    }
    req.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: plain socket(2); the fd is owned right away.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if sock < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    // SAFETY: `req` is a `struct ifreq` whose data points at a live `ethtool_value`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) };
    if rc != 0 {
        bail!(
            "turning GRO on for {dev}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// An arm set up on every vif; dropping it takes it down again.
enum Active<'a> {
    Floor(Vec<OwnedFd>),
    XdpFilter(Vec<String>),
    Nft(&'static str),
    Isolator(&'a mut Dataplane),
}

impl<'a> Active<'a> {
    fn start(
        arm: Arm,
        links: &[Link],
        dp: &'a mut Dataplane,
        floor: &OwnedFd,
    ) -> anyhow::Result<Active<'a>> {
        match arm {
            Arm::Floor => {
                let mut held = Vec::new();
                for link in links {
                    held.push(rawbpf::attach_xdp_link(
                        floor,
                        &link.name,
                        "the XDP_DROP floor",
                    )?);
                }
                Ok(Active::Floor(held))
            }
            Arm::XdpFilter => {
                let mut active = Active::XdpFilter(Vec::new());
                for link in links {
                    run_ok(
                        Command::new("xdp-filter")
                            .args(["load", "--mode", "native", "--policy", "allow", &link.name]),
                    )?;
                    if let Active::XdpFilter(loaded) = &mut active {
                        loaded.push(link.name.clone());
                    }
                }
                for rule in XDP_FILTER_RULES {
                    run_ok(Command::new("xdp-filter").args(*rule))?;
                }
                Ok(active)
            }
            Arm::NftNetdev | Arm::NftBridge => {
                let (family, ruleset) = if arm == Arm::NftNetdev {
                    ("netdev", NFT_NETDEV)
                } else {
                    ("bridge", NFT_BRIDGE)
                };
                nft_load(ruleset)?;
                Ok(Active::Nft(family))
            }
            Arm::Isolator => {
                // The guard first: a failure half way detaches what was attached.
                let mut active = Active::Isolator(dp);
                let Active::Isolator(dp) = &mut active else {
                    unreachable!()
                };
                for link in links {
                    let mode = dp.attach(&link.name, link.ifindex)?;
                    if mode != AttachMode::Native {
                        bail!(
                            "isolator attached to {} in {mode:?} mode, not native",
                            link.name
                        );
                    }
                }
                Ok(active)
            }
        }
    }
}

impl Active<'_> {
    /// [`open_connection`], for the isolator arm.
    fn open_connection(&mut self, opener: u32, responder: u32, frame: &[u8]) -> anyhow::Result<()> {
        if let Active::Isolator(dp) = self {
            open_connection(dp, opener, responder, frame)?;
        }
        Ok(())
    }
}

/// Shows isolator `frame` (a connection's first) crossing the host from the vif `opener`
/// to the vif `responder`, by test runs: the opener's ingress and the responder's egress
/// each track the connection (a reply is judged at the responder's ingress).
pub fn open_connection(
    dp: &mut Dataplane,
    opener: u32,
    responder: u32,
    frame: &[u8],
) -> anyhow::Result<()> {
    let verdict = dp.test_run_ingress(opener, frame)?;
    let delivered = dp.test_run_egress(responder, opener, frame)?;
    if verdict != XDP_PASS || delivered != isolator::dataplane::TC_PASS {
        bail!("isolator does not pass a connection's opening frame ({verdict}, {delivered})");
    }
    Ok(())
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        match self {
            Active::Floor(links) => links.clear(),
            Active::XdpFilter(loaded) => {
                for vif in loaded.drain(..) {
                    if let Err(e) = run_ok(Command::new("xdp-filter").args(["unload", &vif])) {
                        eprintln!("bench: unloading xdp-filter from {vif}: {e:#}");
                    }
                }
            }
            Active::Nft(family) => {
                if let Err(e) =
                    run_ok(Command::new("nft").args(["delete", "table", family, NFT_TABLE]))
                {
                    eprintln!("bench: removing the nftables table: {e:#}");
                }
            }
            Active::Isolator(dp) => {
                for (vif, e) in dp.detach_all() {
                    eprintln!("bench: detaching isolator from {vif}: {e}");
                }
            }
        }
    }
}

/// xdp-filter's rules: the benchmark's drops by exact destination (cross tenant, cross
/// segment, management) and destination port (not exposed). Its tables are shared by
/// every interface it is loaded on.
const XDP_FILTER_RULES: &[&[&str]] = &[
    &["ip", "--mode", "dst", "10.2.1.3"],
    &["ip", "--mode", "dst", "10.1.2.3"],
    &["ip", "--mode", "dst", "192.168.100.1"],
    &["port", "--mode", "dst", "8080"],
];

/// The bench policy as an administrator would write it for nftables at the vifs' ingress
/// (IPv4 only, as the frames; stateless: the netdev family has no connection tracking,
/// so replies are admitted by their source endpoint).
const NFT_NETDEV: &str = r#"
table netdev isobench {
    set management { type ipv4_addr; flags interval; elements = { 192.168.100.0/24 } }
    set same_segment {
        type ifname . ipv4_addr; flags interval
        elements = { "b-web" . 10.1.1.0/24, "b-db" . 10.1.2.0/24, "b-globex" . 10.2.1.0/24 }
    }
    set exposed {
        type ipv4_addr . inet_proto . inet_service
        elements = { 10.1.1.10 . tcp . 443 }
    }
    set flows {
        type ifname . ipv4_addr . inet_proto . inet_service; flags interval
        elements = { "b-web" . 10.1.2.0/24 . tcp . 5432 }
    }
    set replies {
        type ifname . ipv4_addr . inet_proto . inet_service; flags interval
        elements = { "b-web" . 10.1.1.10 . tcp . 443, "b-db" . 10.1.2.0/24 . tcp . 5432 }
    }
    chain vifs {
        type filter hook ingress devices = { "b-web", "b-db", "b-globex" } priority 0; policy accept;
        meta protocol != ip accept
        ip daddr @management drop
        iifname . ip daddr @same_segment accept
        ip daddr . ip protocol . th dport @exposed accept
        iifname . ip daddr . ip protocol . th dport @flows accept
        iifname . ip saddr . ip protocol . th sport @replies accept
        drop
    }
}
"#;

/// The same policy on the bridge: one verdict map from (input port, destination) to a
/// verdict, then the exposed endpoints and replies (the bridge family has no connection
/// tracking on this kernel either).
const NFT_BRIDGE: &str = r#"
table bridge isobench {
    set exposed {
        type ipv4_addr . inet_proto . inet_service
        elements = { 10.1.1.10 . tcp . 443 }
    }
    set replies {
        type ifname . ipv4_addr . inet_proto . inet_service; flags interval
        elements = { "b-web" . 10.1.1.10 . tcp . 443, "b-db" . 10.1.2.0/24 . tcp . 5432 }
    }
    chain web_to_db {
        tcp dport 5432 accept
    }
    map segments {
        type ifname . ipv4_addr : verdict; flags interval
        elements = {
            "b-web" . 10.1.1.0/24 : accept, "b-web" . 10.1.2.0/24 : jump web_to_db,
            "b-web" . 192.168.100.0/24 : drop,
            "b-db" . 10.1.2.0/24 : accept, "b-db" . 192.168.100.0/24 : drop,
            "b-globex" . 10.2.1.0/24 : accept, "b-globex" . 192.168.100.0/24 : drop
        }
    }
    chain vifs {
        type filter hook forward priority 0; policy accept;
        ether type != ip accept
        iifname . ip daddr vmap @segments
        ip daddr . ip protocol . th dport @exposed accept
        iifname . ip saddr . ip protocol . th sport @replies accept
        drop
    }
}
"#;

fn nft_load(ruleset: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft (is nftables installed? `cargo xtask setup`)")?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(ruleset.as_bytes())
        .context("writing the ruleset to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft -f - failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run_ok(Command::new("ip").args(args))
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
