//! Hotplug latency (`--hotplug`): how long after a VM's link is created the daemon
//! enforces it, for links created in a burst and one by one.
//!
//! The real daemon (the built `isolator` binary, `$ISOLATOR_BIN` or the one next to this
//! benchmark's build) runs in the benchmark's private network and mount namespaces with a
//! policy whose segment claims `vhp*`. The benchmark creates veth pairs over rtnetlink
//! (the vif `vhp…`, its peer `p…` left in the same namespace) and, from outside the
//! daemon, watches each new vif for two moments, measured from just before the netlink
//! request that creates it:
//!
//! - **guarded**: the vif carries an XDP program (`IFLA_XDP`, read over netlink) and a
//!   program on each of its TC hooks (TCX, `BPF_PROG_QUERY`, or a `cls_bpf` filter, read
//!   over netlink): from then on every frame it sends
//!   or receives is judged (dropped as `no_policy` until classified);
//! - **enforced**: the XDP program attached to it passes a frame within its segment
//!   (`BPF_PROG_TEST_RUN` of that program with the vif as the ingress interface): its
//!   segment's policy is in force for it. Until then the same frame drops.
//!
//! Nothing is read from the daemon's log, metrics or maps. Each watch pass over the
//! links not yet enforced takes some time of its own (printed): it bounds the resolution.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::TryStreamExt as _;
use isolator_tests::TempDir;
use isolator_tests::frame;
use isolator_tests::netns::tcx_prog_counts_of;
use isolator_tests::rawbpf::{prog_fd_by_id, test_run_xdp};
use rtnetlink::packet_route::link::{LinkAttribute, LinkXdp};

/// Links created in each mode.
const LINKS: usize = 100;
/// How long one link may take before the benchmark gives up on it.
const GIVE_UP: Duration = Duration::from_secs(30);
/// Where the daemon serves `/healthz`, inside the private namespace.
const METRICS_ADDR: &str = "127.0.0.1:9647";
const XDP_PASS: u32 = 2;

/// Every `vhp*` link is a VM's (`vif_names`) and belongs to `hotplug/vms`; `vother` is a
/// vif of another tenant that exists before the daemon starts.
const POLICY: &str = r#"version: 1
vif_names: ["vhp*"]
tenants:
  - name: hotplug
    segments:
      - name: vms
        interfaces: ["vhp*"]
        prefixes: ["10.9.0.0/16"]
  - name: other
    segments:
      - name: other
        interfaces: ["vother"]
        prefixes: ["10.10.0.0/16"]
"#;

/// Runs the measurement and prints its table. Call on a thread of its own: it enters
/// private namespaces.
pub fn run() -> anyhow::Result<()> {
    let bin = isolator_bin()?;
    super::live::private_namespaces()?;
    let tmp = TempDir::new("isolator-hotplug")?;
    let config = tmp.write("policy.yaml", POLICY)?;
    let (rt, netlink) = runtime_with_netlink()?;
    rt.block_on(create(&netlink, "vother", "pother"))?;

    let daemon = DaemonGuard::start(&bin, &config, &tmp)?;
    daemon.wait_healthy(Duration::from_secs(60))?;
    println!(
        "hotplug latency: {LINKS} veth vifs created in a burst, then {LINKS} more one by one \
         (each once the previous is enforced), real daemon {}, {} CPUs, kernel {}",
        bin.display(),
        // SAFETY: no preconditions.
        unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) },
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );

    let burst = burst(&rt, &netlink).context("the burst")?;
    let one_by_one = one_by_one(&rt, &netlink).context("one by one")?;
    daemon.check_running()?;
    print(&[("burst", &burst), ("one by one", &one_by_one)]);
    daemon.stop()?;
    Ok(())
}

/// The `isolator` binary: `$ISOLATOR_BIN`, else the one of the same build profile as this
/// benchmark (`target/<profile>/isolator`).
pub(super) fn isolator_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ISOLATOR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/bench-<hash> -> target/<profile>/isolator
    let bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("isolator"))
        .context("locating the isolator binary")?;
    if !bin.is_file() {
        bail!(
            "the isolator binary is not at {}: build it with the same profile (`cargo build \
             --release -p isolator-user`) or set ISOLATOR_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// A single-threaded runtime and a netlink handle on it.
fn runtime_and_netlink() -> anyhow::Result<(tokio::runtime::Runtime, rtnetlink::Handle)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let netlink = {
        let _entered = rt.enter();
        let (connection, handle, _) = rtnetlink::new_connection()?;
        rt.spawn(connection);
        handle
    };
    Ok((rt, netlink))
}

/// A runtime, a netlink handle on it, and the namespace's loopback up.
pub(super) fn runtime_with_netlink() -> anyhow::Result<(tokio::runtime::Runtime, rtnetlink::Handle)>
{
    let (rt, netlink) = runtime_and_netlink()?;
    rt.block_on(async {
        let lo = netlink
            .link()
            .get()
            .match_name("lo")
            .execute()
            .try_next()
            .await?
            .context("no lo")?;
        netlink
            .link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(lo.header.index)
                    .up()
                    .build(),
            )
            .execute()
            .await?;
        anyhow::Ok(())
    })?;
    Ok((rt, netlink))
}

pub(super) async fn create(
    netlink: &rtnetlink::Handle,
    vif: &str,
    peer: &str,
) -> anyhow::Result<u32> {
    netlink
        .link()
        .add(rtnetlink::LinkVeth::new(vif, peer).up().build())
        .execute()
        .await
        .with_context(|| format!("creating the veth {vif}"))?;
    ifindex_of(vif)
}

fn ifindex_of(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => bail!("no link {name}"),
        i => Ok(i),
    }
}

/// One new link, being watched.
struct Watched {
    name: String,
    ifindex: u32,
    created: Instant,
    /// The XDP program attached to it, once all three programs are.
    program: Option<OwnedFd>,
    guarded: Option<Duration>,
    enforced: Option<Duration>,
}

/// What was measured in one mode.
struct Measured {
    guarded: Vec<Duration>,
    enforced: Vec<Duration>,
    /// How long each watch pass over the pending links took.
    passes: Vec<Duration>,
}

/// Looks at links from outside the daemon.
pub(super) struct Probe {
    rt: tokio::runtime::Runtime,
    netlink: rtnetlink::Handle,
    /// A frame from a VM of the segment to another address of it: passed once the vif's
    /// entries are in force, dropped (`no_policy`) before.
    frame: Vec<u8>,
}

impl Probe {
    pub(super) fn new() -> anyhow::Result<Probe> {
        let (rt, netlink) = runtime_and_netlink()?;
        let frame = frame::ip(
            [0x02, 0, 0, 0, 0x09, 1],
            [0x02, 0, 0, 0, 0x09, 2],
            "10.9.0.2",
            "10.9.0.3",
            frame::udp(40000, 9),
        );
        Ok(Probe { rt, netlink, frame })
    }

    /// The id of the XDP program attached to `ifindex` (`IFLA_XDP`), if any.
    pub(super) fn xdp_program(&self, ifindex: u32) -> anyhow::Result<Option<u32>> {
        let message = self.rt.block_on(async {
            self.netlink
                .link()
                .get()
                .match_index(ifindex)
                .execute()
                .try_next()
                .await
        })?;
        let Some(message) = message else {
            return Ok(None);
        };
        Ok(message.attributes.iter().find_map(|a| match a {
            LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
                LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                _ => None,
            }),
            _ => None,
        }))
    }

    /// Looks at `link` once; records the moments reached. True once it is enforced.
    fn check(&self, link: &mut Watched) -> anyhow::Result<bool> {
        if link.program.is_none() {
            let Some(id) = self.xdp_program(link.ifindex)? else {
                return Ok(false);
            };
            let (ingress, egress) = tcx_prog_counts_of(link.ifindex)?;
            // A TC hook counts through TCX or a `cls_bpf` filter (the daemon's quick
            // attachment of a new link, handed over to TCX later).
            let filtered = |ingress: bool| -> anyhow::Result<bool> {
                Ok(!self
                    .rt
                    .block_on(isolator::netlink::bpf_filters(
                        &self.netlink,
                        link.ifindex,
                        ingress,
                    ))?
                    .is_empty())
            };
            if (ingress == 0 && !filtered(true)?) || (egress == 0 && !filtered(false)?) {
                return Ok(false);
            }
            link.guarded = Some(link.created.elapsed());
            link.program = Some(prog_fd_by_id(id)?);
        }
        let program = link.program.as_ref().expect("set above");
        if test_run_xdp(program.as_fd(), link.ifindex, &self.frame)? == XDP_PASS {
            link.enforced = Some(link.created.elapsed());
            return Ok(true);
        }
        Ok(false)
    }
}

/// Watches `links` until each is enforced (or [`GIVE_UP`] after its creation). `more`
/// brings links created meanwhile; the watch ends once it is closed and every link is done.
fn watch(probe: &Probe, more: Option<mpsc::Receiver<Watched>>) -> anyhow::Result<Measured> {
    let mut pending: BTreeMap<u32, Watched> = BTreeMap::new();
    let mut done = Vec::new();
    let mut passes = Vec::new();
    let mut open = more;
    loop {
        if let Some(rx) = &open {
            loop {
                match rx.try_recv() {
                    Ok(link) => {
                        pending.insert(link.ifindex, link);
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = None;
                        break;
                    }
                }
            }
        }
        if pending.is_empty() && open.is_none() {
            break;
        }
        let started = Instant::now();
        let mut enforced = Vec::new();
        for (ifindex, link) in &mut pending {
            if probe.check(link)? {
                enforced.push(*ifindex);
            } else if link.created.elapsed() > GIVE_UP {
                bail!(
                    "{} was not {} within {GIVE_UP:?} of its creation",
                    link.name,
                    if link.guarded.is_some() {
                        "enforced"
                    } else {
                        "guarded"
                    }
                );
            }
        }
        if !pending.is_empty() {
            passes.push(started.elapsed());
        }
        for ifindex in enforced {
            done.extend(pending.remove(&ifindex));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(Measured {
        guarded: done.iter().filter_map(|l| l.guarded).collect(),
        enforced: done.iter().filter_map(|l| l.enforced).collect(),
        passes,
    })
}

/// [`LINKS`] vifs created as fast as netlink takes them, watched from another thread.
fn burst(rt: &tokio::runtime::Runtime, netlink: &rtnetlink::Handle) -> anyhow::Result<Measured> {
    let (tx, rx) = mpsc::channel();
    // The watcher runs in this thread's namespaces (a new thread inherits them).
    let watcher = std::thread::spawn(move || -> anyhow::Result<Measured> {
        let probe = Probe::new()?;
        watch(&probe, Some(rx))
    });
    let created = rt.block_on(async {
        for i in 0..LINKS {
            let name = format!("vhpb{i}");
            let created = Instant::now();
            let ifindex = create(netlink, &name, &format!("pb{i}")).await?;
            if tx
                .send(Watched {
                    name,
                    ifindex,
                    created,
                    program: None,
                    guarded: None,
                    enforced: None,
                })
                .is_err()
            {
                break;
            }
        }
        anyhow::Ok(())
    });
    drop(tx);
    let measured = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the watcher panicked"))??;
    created?;
    Ok(measured)
}

/// [`LINKS`] vifs, each created once the previous one is enforced.
fn one_by_one(
    rt: &tokio::runtime::Runtime,
    netlink: &rtnetlink::Handle,
) -> anyhow::Result<Measured> {
    let probe = Probe::new()?;
    let mut all = Measured {
        guarded: Vec::new(),
        enforced: Vec::new(),
        passes: Vec::new(),
    };
    for i in 0..LINKS {
        let name = format!("vhps{i}");
        let created = Instant::now();
        let ifindex = rt.block_on(create(netlink, &name, &format!("ps{i}")))?;
        let (tx, rx) = mpsc::channel();
        tx.send(Watched {
            name,
            ifindex,
            created,
            program: None,
            guarded: None,
            enforced: None,
        })?;
        drop(tx);
        let m = watch(&probe, Some(rx))?;
        all.guarded.extend(m.guarded);
        all.enforced.extend(m.enforced);
        all.passes.extend(m.passes);
    }
    Ok(all)
}

/// Nearest-rank percentile `p` (0..=100) of `samples`, in ms.
fn percentile(samples: &[Duration], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1].as_secs_f64() * 1e3
}

fn print(modes: &[(&str, &Measured)]) {
    println!(
        "from just before the netlink request creating the vif to: guarded (XDP and both TC \
         programs attached, through TCX or as cls_bpf filters, seen over netlink and \
         BPF_PROG_QUERY: every frame judged, \
         no_policy until classified) and enforced (the attached XDP program passes a frame \
         within the vif's segment under BPF_PROG_TEST_RUN: its segment's policy in force)"
    );
    println!(
        "{:<12} {:>6} {:>12} {:>12} {:>12} {:>13} {:>13} {:>13} {:>10}",
        "mode",
        "links",
        "guarded p50",
        "guarded p99",
        "guarded max",
        "enforced p50",
        "enforced p99",
        "enforced max",
        "watch pass"
    );
    for (mode, m) in modes {
        println!(
            "{:<12} {:>6} {:>9.1} ms {:>9.1} ms {:>9.1} ms {:>10.1} ms {:>10.1} ms {:>10.1} ms {:>7.2} ms",
            mode,
            m.enforced.len(),
            percentile(&m.guarded, 50.0),
            percentile(&m.guarded, 99.0),
            percentile(&m.guarded, 100.0),
            percentile(&m.enforced, 50.0),
            percentile(&m.enforced, 99.0),
            percentile(&m.enforced, 100.0),
            percentile(&m.passes, 50.0),
        );
    }
    println!(
        "(watch pass: the median time one look at every pending link takes, the resolution of \
         these figures; the burst's links stay while the one-by-one links are added)"
    );
}

/// The daemon, stopped (SIGTERM, then SIGKILL) when dropped.
pub(super) struct DaemonGuard {
    child: Option<Child>,
    log: PathBuf,
}

impl DaemonGuard {
    pub(super) fn start(
        bin: &std::path::Path,
        config: &std::path::Path,
        tmp: &TempDir,
    ) -> anyhow::Result<Self> {
        // `$BENCH_DAEMON_LOG` keeps the daemon's output after the run.
        let log = std::env::var_os("BENCH_DAEMON_LOG")
            .map_or_else(|| tmp.path().join("isolator.log"), PathBuf::from);
        let file = std::fs::File::create(&log)?;
        // Spawned from this thread, the daemon lives in its private namespaces.
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(["--metrics-addr", METRICS_ADDR])
            .args(["--state-dir", "/sys/fs/bpf/isolator-hotplug"])
            .arg("--audit-log")
            .arg(tmp.path().join("audit.jsonl"))
            .arg("--control-socket")
            .arg(tmp.path().join("control.sock"))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(DaemonGuard {
            child: Some(child),
            log,
        })
    }

    /// The daemon's process id.
    pub(super) fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// The daemon's whole output so far.
    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn output(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub(super) fn check_running(&self) -> anyhow::Result<()> {
        let pid = self.child.as_ref().map_or(0, |c| c.id() as i32);
        // SAFETY: signal 0 checks only that our child exists.
        if pid == 0 || unsafe { libc::kill(pid, 0) } != 0 {
            bail!("the daemon has exited; its output:\n{}", self.output());
        }
        Ok(())
    }

    pub(super) fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.check_running()?;
            match health() {
                Ok(answer) if answer.starts_with("HTTP/1.1 200") => return Ok(()),
                Ok(answer) => last = answer,
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the daemon did not answer /healthz with 200 within {within:?} (last: {last}); its \
             output:\n{}",
            self.output()
        )
    }

    pub(super) fn stop(mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("stopped already")?;
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait()?;
        if !status.success() {
            bail!(
                "the daemon exited with {status}; its output:\n{}",
                self.output()
            );
        }
        Ok(())
    }
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET /healthz`: the status line and body.
fn health() -> anyhow::Result<String> {
    get("/healthz")
}

/// `GET path` from the daemon's metrics address: the status line and body.
fn get(path: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(METRICS_ADDR)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// The value of the metric line that starts with `series` (name and labels), if any.
pub(super) fn metric(series: &str) -> anyhow::Result<Option<f64>> {
    let page = get("/metrics")?;
    Ok(page.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    }))
}
