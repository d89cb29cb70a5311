//! The one lab fixture: a topology (a [`Lab`] or a [`ServiceLab`]), a policy file and the
//! `isolator` daemon enforcing it, behind one RAII guard. Field order is drop order: the
//! daemon stops (SIGTERM, then SIGKILL) before the lab's namespaces go, and the temporary
//! directory with the policy and the daemon's log goes last. Every path cleans up: a
//! failed start drops what was built so far, a panicking test unwinds through the same
//! `Drop`s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::daemon::{Daemon, TempDir, isolator_bin, tail};
use crate::lab::{Lab, Vm};
use crate::metrics::{Expect, Scrape, Series, poll};
use crate::service_lab::ServiceLab;

/// Port of `/metrics` inside a lab's host namespace (its own loopback: labs never clash).
pub const METRICS_PORT: u16 = 9464;

/// What a fixture can enforce a policy on.
pub trait Topology {
    fn lab(&self) -> &Lab;
    fn lab_mut(&mut self) -> &mut Lab;
    /// Removes everything now and reports what could not be removed.
    fn destroy(self) -> Result<()>;
}

impl Topology for Lab {
    fn lab(&self) -> &Lab {
        self
    }
    fn lab_mut(&mut self) -> &mut Lab {
        self
    }
    fn destroy(self) -> Result<()> {
        Lab::destroy(self)
    }
}

impl Topology for ServiceLab {
    fn lab(&self) -> &Lab {
        &self.lab
    }
    fn lab_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
    fn destroy(self) -> Result<()> {
        ServiceLab::destroy(self)
    }
}

/// A topology with the daemon enforcing a policy on it. See the module documentation.
pub struct Env<T: Topology = Lab> {
    daemon: Option<Daemon>,
    topo: T,
    tmp: TempDir,
    bin: PathBuf,
    config: PathBuf,
}

impl<T: Topology> Env<T> {
    /// Writes `policy`, starts `isolator run` in the lab's host namespace and waits until
    /// `/healthz` answers 200.
    pub fn start(topo: T, policy: &str) -> Result<Env<T>> {
        Env::start_bin(topo, policy, isolator_bin()?)
    }

    /// [`Env::start`] with `args` added to `isolator run`.
    pub fn start_args(topo: T, policy: &str, args: &[&str]) -> Result<Env<T>> {
        Env::start_with(topo, policy, isolator_bin()?, args)
    }

    /// [`Env::start`] with the `isolator` binary `bin`.
    pub fn start_bin(topo: T, policy: &str, bin: PathBuf) -> Result<Env<T>> {
        Env::start_with(topo, policy, bin, &[])
    }

    fn start_with(topo: T, policy: &str, bin: PathBuf, args: &[&str]) -> Result<Env<T>> {
        let tmp = TempDir::new("isot")?;
        let config = tmp.write("policy.yaml", policy)?;
        let mut env = Env {
            daemon: None,
            topo,
            tmp,
            bin,
            config,
        };
        env.start_daemon(args)
            .with_context(|| format!("with this policy:\n{policy}"))?;
        Ok(env)
    }

    /// Starts a daemon (again) with the same policy file, state directory and log
    /// directory, and `args` added to `isolator run`; waits for `/healthz`.
    pub fn start_daemon(&mut self, args: &[&str]) -> Result<&Daemon> {
        anyhow::ensure!(self.daemon.is_none(), "a daemon is running already");
        let mut d = Daemon::start(
            self.topo.lab(),
            &self.bin,
            &self.config,
            METRICS_PORT,
            self.tmp.path(),
            args,
        )?;
        d.wait_healthy(Duration::from_secs(30))
            .with_context(|| format!("starting `{} run`", self.bin.display()))?;
        Ok(self.daemon.insert(d))
    }

    /// Daemons started from now on run `bin` (another build, for an upgrade).
    pub fn use_bin(&mut self, bin: PathBuf) {
        self.bin = bin;
    }

    /// The running daemon; panics if there is none (a test bug).
    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the daemon is running")
    }

    /// Takes the daemon out of the fixture (to stop, crash or inspect it).
    pub fn take_daemon(&mut self) -> Daemon {
        self.daemon.take().expect("the daemon is running")
    }

    pub fn topo(&self) -> &T {
        &self.topo
    }

    pub fn lab(&self) -> &Lab {
        self.topo.lab()
    }

    pub fn lab_mut(&mut self) -> &mut Lab {
        self.topo.lab_mut()
    }

    /// The policy file the daemon reads.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The VM called `name`.
    pub fn vm(&self, name: &str) -> &Vm {
        self.lab().vm(name)
    }

    /// The namespace of VM or host `name`.
    pub fn ns(&self, name: &str) -> &str {
        let lab = self.lab();
        match lab.vms().iter().find(|v| v.name == name) {
            Some(vm) => &vm.ns,
            None => &lab.host(name).ns,
        }
    }

    /// `/metrics`, parsed; panics with the daemon's output if it cannot be read.
    pub fn scrape(&self) -> Scrape {
        self.daemon()
            .scrape()
            .unwrap_or_else(|e| panic!("scraping /metrics: {e:#}"))
    }

    /// The value of one series now; panics naming it if it is missing.
    pub fn value(&self, series: &Series) -> f64 {
        self.scrape()
            .value(series)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Polls until the counters moved as `expect` says and stay there; panics otherwise.
    pub fn expect(&self, before: &Scrape, expect: &Expect) -> Scrape {
        self.daemon()
            .expect(before, expect)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Polls until `series` has the value `value` (gauges that follow an event); panics
    /// after `timeout`.
    pub fn await_value(&self, series: &Series, value: f64, timeout: Duration) {
        poll(&format!("{series} becomes {value}"), timeout, || {
            let now = self.daemon().scrape()?.value(series)?;
            Ok(if now == value {
                Ok(())
            } else {
                Err(format!("{now}"))
            })
        })
        .unwrap_or_else(|e| panic!("{e:#}\ndaemon output:\n{}", self.log_tail()));
    }

    /// Replaces the policy file, sends SIGHUP and waits until the daemon counts the
    /// reload as `succeeded` (`true`) or `failed`.
    pub fn reload(&self, policy: &str, succeeds: bool) -> Result<()> {
        let series = Series::reloads(if succeeds { "succeeded" } else { "failed" });
        let before = self.daemon().scrape()?;
        std::fs::write(&self.config, policy)
            .with_context(|| format!("write {}", self.config.display()))?;
        self.daemon().signal(libc::SIGHUP)?;
        self.daemon()
            .expect(&before, &Expect::new().grows(series, 1.0))
            .with_context(|| format!("reloading this policy:\n{policy}"))?;
        Ok(())
    }

    /// Stops the daemon (if it runs) and removes the topology now; fails if a namespace
    /// could not be removed.
    pub fn destroy(mut self) -> Result<()> {
        drop(self.daemon.take());
        let Env { topo, tmp, .. } = self;
        let result = topo.destroy();
        drop(tmp);
        result
    }

    /// The daemon's whole output (or the last daemon's, once taken).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("isolator.log")).unwrap_or_default()
    }

    /// The last lines of the daemon's output (or of the last daemon's, once taken).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.tmp.path().join("isolator.log"))
            .unwrap_or_else(|e| format!("<no daemon log: {e}>"));
        tail(&log, 30)
    }
}
