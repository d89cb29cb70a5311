//! Running the `isolator` daemon in a lab's host namespace.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::Lab;
use crate::metrics::Scrape;
use crate::netns::in_netns;

/// A second build of the same source whose `--version` ends in `+rehearsal`, started in
/// place of a running daemon to rehearse an upgrade: `$ISOLATOR_REHEARSAL_BIN`, else
/// `<target dir>/debug/isolator-rehearsal`. Fails with a clear message if missing.
pub fn isolator_rehearsal_bin() -> Result<PathBuf> {
    let p = match std::env::var_os("ISOLATOR_REHEARSAL_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"))
            .join("debug")
            .join("isolator-rehearsal"),
    };
    if !p.is_file() {
        bail!(
            "the rehearsal build of isolator (a second, distinguishable build for the upgrade \
             tests) is not at {}: `cargo xtask test` builds it; by hand: `cargo build -p \
             isolator-user --bin isolator --features rehearsal && cp target/debug/isolator \
             target/debug/isolator-rehearsal`, then build the normal one again (or set \
             ISOLATOR_REHEARSAL_BIN)",
            p.display()
        );
    }
    Ok(p)
}

/// The `isolator` binary to test: `$ISOLATOR_BIN`, else `<target dir>/debug/isolator` (target
/// dir = `$CARGO_TARGET_DIR` or `<workspace>/target`). Fails with a clear message if missing.
pub fn isolator_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ISOLATOR_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("ISOLATOR_BIN={} does not exist", p.display());
        }
        return Ok(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let p = target.join("debug").join("isolator");
    if !p.is_file() {
        bail!(
            "isolator binary not found at {}: build it first with `cargo build -p isolator-user` \
             (or set ISOLATOR_BIN=/path/to/isolator)",
            p.display()
        );
    }
    Ok(p)
}

/// The cargo workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A running `isolator run` in a lab's host namespace (entered with `nsenter --net`, so the
/// root's bpffs stays visible). Its stdout+stderr go to a log file. Dropping it sends SIGTERM,
/// then SIGKILL after 3 s; [`Daemon::stop`] is the checked way to end it.
pub struct Daemon {
    child: Option<Child>,
    host_ns: String,
    metrics_addr: SocketAddr,
    log_path: PathBuf,
}

impl Daemon {
    /// Starts `BIN run --config CONFIG --metrics-addr 127.0.0.1:PORT --state-dir ...
    /// --audit-log LOG_DIR/audit.jsonl --control-socket LOG_DIR/control.sock ARGS` (the last
    /// two unless ARGS has them) in the lab's host namespace, in its own process group (a terminal's Ctrl-C does not
    /// reach it: whoever started it stops it). `log_dir` receives `isolator.log`. Does not
    /// wait: see [`Daemon::wait_healthy`]; [`crate::env::Env`] does both.
    pub fn start(
        lab: &Lab,
        bin: &Path,
        config: &Path,
        metrics_port: u16,
        log_dir: &Path,
        extra: &[&str],
    ) -> Result<Daemon> {
        Daemon::start_env(lab, bin, config, metrics_port, log_dir, extra, &[])
    }

    /// [`Daemon::start`] with `envs` set in the daemon's environment (e.g. FAILPOINTS for
    /// the rehearsal build's fault injection).
    pub fn start_env(
        lab: &Lab,
        bin: &Path,
        config: &Path,
        metrics_port: u16,
        log_dir: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Daemon> {
        Daemon::spawn(lab, bin, Some(config), metrics_port, log_dir, extra, envs)
    }

    /// [`Daemon::start`] without `--config`: `extra` names the policy's source
    /// (`--policy-source etcd://...`).
    pub fn start_source(
        lab: &Lab,
        bin: &Path,
        metrics_port: u16,
        log_dir: &Path,
        extra: &[&str],
    ) -> Result<Daemon> {
        Daemon::spawn(lab, bin, None, metrics_port, log_dir, extra, &[])
    }

    fn spawn(
        lab: &Lab,
        bin: &Path,
        config: Option<&Path>,
        metrics_port: u16,
        log_dir: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Daemon> {
        let metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, metrics_port));
        let log_path = log_dir.join("isolator.log");
        let log =
            File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        let state_dir = lab.state_dir()?;
        let mut cmd = lab.nsenter_host(bin);
        cmd.arg("run");
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            .arg("--state-dir")
            .arg(&state_dir);
        // Each daemon its own audit log and control socket, beside its log, unless the
        // test names them.
        if !extra.contains(&"--audit-log") {
            cmd.arg("--audit-log").arg(log_dir.join("audit.jsonl"));
        }
        if !extra.contains(&"--control-socket") {
            cmd.arg("--control-socket")
                .arg(log_dir.join("control.sock"));
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(envs.iter().copied());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", crate::netns::describe(&cmd)))?;
        Ok(Daemon {
            child: Some(child),
            host_ns: lab.host_ns().to_string(),
            metrics_addr,
            log_path,
        })
    }

    /// Waits until `GET /healthz` answers 200. Fails, with the daemon's output, if the daemon
    /// exits first or `timeout` passes.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            crate::signal::check_interrupted()?;
            if let Some(status) = self.try_wait()? {
                bail!(
                    "isolator exited ({status}) before /healthz answered 200; its output:\n{}",
                    self.log()
                );
            }
            match self.get("/healthz") {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("HTTP {}: {}", r.status, r.body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!(
                    "isolator did not answer /healthz with 200 within {timeout:?} (last: {last}); \
                     its output:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://127.0.0.1:PORT`, as seen from the host namespace.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// GET `path` from the daemon's HTTP endpoint (inside the host namespace), with the
    /// `minreq` client.
    pub fn get(&self, path: &str) -> Result<HttpResponse> {
        let url = format!("http://{}{path}", self.metrics_addr);
        in_netns(&self.host_ns, || {
            let r = minreq::get(&url)
                .with_timeout(5)
                .send()
                .with_context(|| format!("GET {url}"))?;
            Ok(HttpResponse {
                status: r.status_code,
                body: r
                    .as_str()
                    .with_context(|| format!("GET {url}"))?
                    .to_string(),
                headers: r.headers,
            })
        })
        .with_context(|| format!("in netns {}", self.host_ns))
    }

    /// `/metrics`, parsed (fails unless HTTP 200 and every line parses; the error carries
    /// the daemon's output).
    pub fn scrape(&self) -> Result<Scrape> {
        let r = self
            .get("/metrics")
            .with_context(|| format!("scraping /metrics; daemon output:\n{}", self.log()))?;
        if r.status != 200 {
            bail!("/metrics answered HTTP {}: {}", r.status, r.body);
        }
        Scrape::parse(&r.body).with_context(|| format!("parsing /metrics:\n{}", r.body))
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// Path of the daemon's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Whether it has exited (and how).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("daemon already stopped"),
        }
    }

    /// Waits up to `timeout` for the daemon to exit (after a signal); returns how it ended.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        crate::metrics::poll("the daemon exits", timeout, || {
            Ok(self.try_wait()?.ok_or_else(|| "still running".to_string()))
        })
    }

    /// Polls `/metrics` until the counters moved as `expect` says, then checks they stay
    /// there ([`Expect::wait`](crate::metrics::Expect::wait)); returns the last scrape.
    pub fn expect(&self, before: &Scrape, expect: &crate::metrics::Expect) -> Result<Scrape> {
        expect
            .wait(before, || self.scrape())
            .with_context(|| format!("daemon output:\n{}", tail(&self.log(), 30)))
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = self.pid().context("daemon already stopped")?;
        // SAFETY: plain syscall to our own child.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for the exit. Returns the exit status; fails (after
    /// a SIGKILL) if it did not exit in time.
    pub fn stop(mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("daemon already stopped")?;
        if child.try_wait()?.is_none() {
            // SAFETY: plain syscall to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "isolator did not exit within {timeout:?} of SIGTERM (killed); its output:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                // SAFETY: plain syscall to our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// An HTTP response of the daemon.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// First header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A temporary directory, removed with its contents on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/<prefix>-<pid>-<n>`.
    pub fn new(prefix: &str) -> Result<TempDir> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::write(&p, contents).with_context(|| format!("write {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
