//! `isolator run`: load the policy, enforce it on every matching interface, follow
//! interfaces and addresses as they come and go, reload the policy on SIGHUP, serve
//! `/metrics` and `/healthz`, and detach everything on SIGINT/SIGTERM (or, with
//! `--persist`, leave it enforcing for the next daemon).
//!
//! Its parts share no lock; they talk through channels and published snapshots:
//!
//! - the **dataplane thread** owns the kernel side ([`Dataplane`]): every blocking kernel
//!   call runs there, one command at a time (apply a plan, scrape the counters, set what
//!   the programs report, stop), and it sweeps idle connections in between;
//! - the **controller** task owns the policy and the one netlink connection: link and
//!   address events (queued ones together), SIGHUP, reloads asked on the control socket,
//!   a periodic full resync, and retries after a failure each lead to one reconcile: list
//!   the host, compile a plan, hand it to the dataplane thread, publish the outcome. A
//!   policy that does not validate, or a plan the kernel refuses, leaves the running
//!   policy in force; a reconcile that fails shows in `/healthz` and the metrics and is
//!   retried. Every load and reload goes to the audit log ([`Chronicle`]);
//! - the **HTTP server** serves `/metrics` (a scrape from the dataplane thread) and
//!   `/healthz` (the published status);
//! - the **control server** answers `isolator status`, `reload` and `monitor` on a Unix
//!   socket ([`crate::control`]), checking each caller and recording each request;
//! - the **reports reader** takes the programs' reports from their ring buffer: management
//!   attempts to the audit log, every report to the monitors connected;
//! - the **verification** checks the host against the policy in force after changes and
//!   periodically, on a thread of its own ([`crate::verify`]);
//! - **systemd**: readiness once every claimed interface is enforced, and the watchdog
//!   ([`crate::service`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::audit::Chronicle;
use crate::control::{self, Access, Caller, ReloadReport, Request, Response};

use crate::compile::{Link, Plan};
use crate::dataplane::{AttachMode, Dataplane, DataplaneError, KernelLogger, Sizes};
use crate::metrics::{
    self, ConntrackStats, DaemonStats, Inventory, NetlinkStats, Refused, ReloadStats, Scrape,
};
use crate::netlink::{Event, Netlink};
use crate::policy::Policy;
use crate::policy::diff;
use crate::recheck::Recheck;
use crate::{error_chain, policy};

/// Where `/metrics` and `/healthz` are served unless `--metrics-addr` says otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9647";

/// Where pinned maps and links live unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/sys/fs/bpf/isolator";

pub struct RunOptions {
    /// The policy file; with a fleet source, how the bundle's key is shown.
    pub config: PathBuf,
    /// Follow a policy bundle in etcd instead of the file (`--policy-source etcd://...`).
    pub fleet: Option<FleetOptions>,
    pub metrics_addr: SocketAddr,
    /// A bpffs directory for pinned maps and links (one per daemon).
    pub state_dir: PathBuf,
    /// On SIGINT/SIGTERM, leave the programs enforcing for the next daemon.
    pub persist: bool,
    /// The netlink socket's receive buffer, in bytes.
    pub netlink_receive_buffer: usize,
    /// How often the whole host is listed again without any event.
    pub resync_interval: Duration,
    /// How long the dataplane waits with no new link before it hands a quick TC
    /// attachment over to TCX ([`DEFAULT_HANDOVER_QUIET_MS`]).
    pub handover_quiet: Duration,
    /// A directory of trusted public keys: every policy loaded must carry a valid
    /// signature by one of them.
    pub trusted_keys: Option<PathBuf>,
    /// The audit log.
    pub audit: crate::audit::Options,
    /// The control socket, and the group that may use it besides root.
    pub control_socket: PathBuf,
    pub control_group: Option<u32>,
    /// Management attempts recorded per interface (and CPU) and second, at most.
    pub management_rate: u32,
    /// Drops shown to `isolator monitor` per interface (and CPU) and second, at most.
    pub monitor_rate: u32,
    /// How finely the per-interface metric families are broken down.
    pub metrics_detail: metrics::Detail,
    /// How often the host is verified against the policy without any change (besides
    /// after every reload and every change of interfaces); `None`: only then.
    pub verify_interval: Option<Duration>,
    /// Links that may share a bridge with tenant vifs without being managed.
    pub infrastructure: Vec<crate::policy::InterfacePattern>,
}

/// Where a fleet daemon follows its policy, and how it reports (`--policy-source`,
/// `--fleet-*`).
pub struct FleetOptions {
    pub location: crate::fleet::Location,
    pub tls: crate::fleet::TlsArgs,
    /// The group whose bundle this host follows.
    pub group: String,
    /// This host's name in the fleet.
    pub host: String,
    /// Where the last good bundle is kept.
    pub cache_dir: PathBuf,
    /// The status key's lease, in seconds.
    pub lease_seconds: i64,
    /// How long to wait for etcd at start before enforcing the cached bundle.
    pub start_timeout: Duration,
}

/// What the daemon's own verification found last (`isolator verify`, run in the daemon).
#[derive(Clone, Debug, Default)]
struct Verified {
    /// Findings by kind (every kind present).
    counts: BTreeMap<&'static str, u64>,
    /// When the last verification finished (Unix milliseconds; 0: none yet).
    last_ms: u64,
}

/// After a change, how long to wait before verifying: a burst of changes is one verify.
const VERIFY_SETTLE: Duration = Duration::from_millis(500);

/// The nice value of the daemon's verification thread (and the threads it starts): on a
/// busy host it gives way to what enforces (a reload, a new vif, the re-check of
/// connections), and still goes on beside the VMs' work.
const VERIFY_NICE: i32 = 10;

/// Starts `work` on the verification thread: named `verify`, at [`VERIFY_NICE`] (on Linux
/// a thread's nice value is its own, and the threads it starts inherit it). Where the
/// priority cannot be lowered the work runs as it is, and that is logged.
fn spawn_verification<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name("verify".into())
        .spawn(move || {
            // SAFETY: neither call takes a pointer.
            let tid = unsafe { libc::gettid() };
            // SAFETY: as above.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, VERIFY_NICE) } != 0
            {
                warn!(
                    error = %std::io::Error::last_os_error(),
                    nice = VERIFY_NICE,
                    "could not lower the verification thread's priority"
                );
            }
            work()
        })
}

/// What the daemon's own verification works with ([`verify_continuously`]).
struct Verification {
    changes: tokio::sync::mpsc::Receiver<()>,
    interval: Option<Duration>,
    policy: watch::Receiver<Arc<Policy>>,
    config: PathBuf,
    state_dir: PathBuf,
    infrastructure: Vec<crate::policy::InterfacePattern>,
    chronicle: Arc<Chronicle>,
    published: watch::Sender<Verified>,
    /// Told when the maps drifted: the next swap reads them from the kernel first.
    kernel: KernelHandle,
}

/// The generation not in force against what the dataplane wrote there (the next swap
/// changes only what differs from it): one `map_drift` finding per map that differs.
/// `written` is what the dataplane held there before the verification read the maps,
/// `read` what the verification read. None when the dataplane changed that generation
/// meanwhile (the next verification looks again), or did not know what it holds.
fn other_generation_drift(
    kernel: &KernelHandle,
    written: OtherGeneration,
    read: &crate::verify::live::OtherGeneration,
) -> Vec<crate::verify::Finding> {
    let Some((generation, expected)) = written else {
        return Vec::new();
    };
    let unchanged = generation == read.generation
        && kernel
            .other_generation()
            .is_some_and(|(g, e)| g == generation && Arc::ptr_eq(&e, &expected));
    if !unchanged {
        return Vec::new();
    }
    crate::verify::compare_maps(&expected, &read.entries)
        .into_iter()
        .map(|mut finding| {
            finding.detail = format!(
                "in the generation not in force ({generation}), which the next reload \
                 builds on: {}",
                finding.detail
            );
            finding
        })
        .collect()
}

/// Verifies the host against the policy in force after every change it is told of and
/// every `interval`, on a thread of its own (never in the way of enforcement); logs each
/// new finding once and each that went away, writes both to the audit log, and publishes
/// the counts for the metrics.
async fn verify_continuously(task: Verification) {
    let Verification {
        mut changes,
        interval,
        policy,
        config,
        state_dir,
        infrastructure,
        chronicle,
        published,
        kernel,
    } = task;
    let mut known: BTreeMap<String, crate::verify::Finding> = BTreeMap::new();
    // The first verification at once: the policy was just put into effect.
    let mut due = true;
    loop {
        if !due {
            let periodic = async {
                match interval {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                change = changes.recv() => {
                    if change.is_none() {
                        return;
                    }
                    tokio::time::sleep(VERIFY_SETTLE).await;
                    while changes.try_recv().is_ok() {}
                }
                () = periodic => {}
            }
        }
        due = false;
        let in_force = policy.borrow().clone();
        let checked = in_force.clone();
        let (config, state_dir, infra) =
            (config.clone(), state_dir.clone(), infrastructure.clone());
        let (tx, rx) = oneshot::channel();
        let dataplane = kernel.clone();
        // A thread of its own: verification lists the host over netlink with a runtime of
        // its own and reads the pinned maps, blocking.
        let spawned = spawn_verification(move || {
            // What the dataplane wrote into the generation not in force, before the maps
            // are read (both generations at once).
            let written = dataplane.other_generation();
            let report = crate::verify::live::verify_policy_reading_both(
                &in_force, &config, &state_dir, &infra,
            )
            .map(|(mut report, other)| {
                report
                    .findings
                    .extend(other_generation_drift(&dataplane, written, &other));
                report
            });
            let _ = tx.send(report);
        });
        if let Err(e) = spawned {
            warn!(error = %e, "could not start a verification");
            continue;
        }
        let report = match rx.await {
            // A new policy came into force while this one was verified: the maps were
            // compared with the wrong one. Again, with the new one.
            Ok(Ok(_)) if !Arc::ptr_eq(&checked, &policy.borrow()) => {
                due = true;
                continue;
            }
            Ok(Ok(report)) => report,
            Ok(Err(e)) => {
                warn!(error = %format!("{e:#}"), "verifying the host against the policy failed");
                continue;
            }
            Err(_) => continue,
        };
        // The maps differ from what the daemon wrote: the next swap must not build on its
        // own record of them. It reads the generation it writes from the kernel and
        // rewrites whatever differs from the policy, so a reload repairs the drift.
        if report
            .findings
            .iter()
            .any(|f| f.kind == crate::verify::kind::MAP_DRIFT)
        {
            kernel.forget_contents();
        }
        let now: BTreeMap<String, crate::verify::Finding> = report
            .findings
            .into_iter()
            .map(|f| (format!("{}:{}", f.kind, f.objects.join(",")), f))
            .collect();
        for (key, finding) in &now {
            if !known.contains_key(key) {
                warn!(kind = finding.kind, objects = %finding.objects.join(", "), fix = %finding.fix, "topology: {}", finding.detail);
                audit(
                    &chronicle,
                    "topology_violation",
                    json!({ "kind": finding.kind, "severity": finding.severity,
                            "objects": finding.objects, "detail": finding.detail,
                            "fix": finding.fix }),
                );
            }
        }
        for (key, finding) in &known {
            if !now.contains_key(key) {
                info!(kind = finding.kind, objects = %finding.objects.join(", "), "topology: resolved");
                audit(
                    &chronicle,
                    "topology_resolved",
                    json!({ "kind": finding.kind, "objects": finding.objects }),
                );
            }
        }
        let mut counts: BTreeMap<&'static str, u64> =
            crate::verify::kind::ALL.iter().map(|k| (*k, 0)).collect();
        for finding in now.values() {
            *counts.entry(finding.kind).or_default() += 1;
        }
        known = now;
        published.send_replace(Verified {
            counts,
            last_ms: unix_ms(),
        });
    }
}

/// Where the policy in force came from: its file's SHA-256 and who signed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    pub sha256: String,
    /// The signer's key id (`None`: the daemon runs without `--trusted-keys`).
    pub signer: Option<String>,
}

/// A policy's provenance, its digest perhaps still being worked out on a thread of its
/// own: the digest is for the log, the status and the audit record, none of which is on
/// the way to enforcement (a signature, with `--trusted-keys`, is checked before the
/// policy is even parsed).
enum Pending {
    Known(Provenance),
    Digesting {
        digest: std::thread::JoinHandle<String>,
        signer: Option<String>,
    },
}

impl Pending {
    /// The provenance, once the digest is worked out.
    fn resolve(self) -> Provenance {
        match self {
            Pending::Known(provenance) => provenance,
            Pending::Digesting { digest, signer } => match digest.join() {
                Ok(sha256) => Provenance { sha256, signer },
                Err(panic) => std::panic::resume_unwind(panic),
            },
        }
    }
}

/// Why a policy file was not loaded.
#[derive(Debug)]
enum LoadError {
    /// No valid signature by a trusted key (`--trusted-keys`).
    Signature(anyhow::Error),
    /// Unreadable, or not a valid policy.
    Invalid(anyhow::Error),
}

impl LoadError {
    fn into_inner(self) -> anyhow::Error {
        match self {
            LoadError::Signature(e) | LoadError::Invalid(e) => e,
        }
    }
}

/// Reads the policy file once, checks its signature against `trusted` (if given) over
/// the bytes read, and parses those same bytes (through `cache`: the tenants the last
/// file read through it had are not parsed again).
fn load_policy(
    config: &Path,
    trusted: Option<&crate::signing::TrustedKeys>,
    cache: &mut policy::Cache,
) -> Result<(Policy, Provenance), LoadError> {
    load_policy_pending(config, trusted, cache).map(|(policy, pending)| (policy, pending.resolve()))
}

/// [`load_policy`], the file's digest left to work out on a thread of its own (at cloud
/// scale it takes tens of milliseconds, as much as the rest of a reload's reading).
fn load_policy_pending(
    config: &Path,
    trusted: Option<&crate::signing::TrustedKeys>,
    cache: &mut policy::Cache,
) -> Result<(Policy, Pending), LoadError> {
    let started = Instant::now();
    let bytes = std::fs::read(config)
        .with_context(|| format!("reading the policy {}", config.display()))
        .map_err(LoadError::Invalid)?;
    let signer = match trusted {
        Some(keys) => Some(keys.verify(config, &bytes).map_err(LoadError::Signature)?),
        None => None,
    };
    std::str::from_utf8(&bytes)
        .with_context(|| format!("{}: not UTF-8 text", config.display()))
        .map_err(LoadError::Invalid)?;
    let read = started.elapsed();
    let bytes = Arc::new(bytes);
    let digest = {
        let bytes = Arc::clone(&bytes);
        std::thread::Builder::new()
            .name("policy-digest".into())
            .spawn(move || crate::signing::digest(&bytes))
            .map_err(|e| LoadError::Invalid(anyhow!("starting the policy's digest: {e}")))?
    };
    // Checked above.
    let source = std::str::from_utf8(&bytes).unwrap_or_default();
    let (policy, times, reuse) = cache.parse_timed(source, &config.display().to_string());
    let policy = policy.map_err(|diagnostics| {
        LoadError::Invalid(anyhow!("{diagnostics}the policy is not valid"))
    })?;
    debug!(
        read_ms = read.as_millis() as u64,
        yaml_ms = times.yaml.as_millis() as u64,
        validate_ms = times.validate.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        tenants_parsed = reuse.parsed,
        tenants_reused = reuse.reused,
        whole = reuse.whole,
        delta = reuse.delta,
        "policy loaded"
    );
    Ok((policy, Pending::Digesting { digest, signer }))
}

/// Checks a fleet bundle as [`load_policy`] checks a file: its signature (with
/// `--trusted-keys`) over the policy's bytes, then the policy itself.
fn load_bundle(
    candidate: &crate::fleet::Candidate,
    trusted: Option<&crate::signing::TrustedKeys>,
    cache: &mut policy::Cache,
) -> Result<(Policy, Provenance), LoadError> {
    let name = candidate.name();
    let bytes = candidate.bundle.policy.as_bytes();
    let signer = match (trusted, &candidate.bundle.signature) {
        (Some(keys), Some(signature)) => Some(
            keys.verify_signature(&name, bytes, &format!("{name} (signature)"), signature)
                .map_err(LoadError::Signature)?,
        ),
        (Some(_), None) => {
            return Err(LoadError::Signature(anyhow!(
                "{name} is not signed (publish it with `isolator publish --trusted-keys DIR` \
                 after `isolator sign`)"
            )));
        }
        (None, _) => None,
    };
    let (policy, _, _) = cache.parse_timed(&candidate.bundle.policy, &name);
    let policy = policy.map_err(|diagnostics| {
        LoadError::Invalid(anyhow!("{diagnostics}the policy is not valid"))
    })?;
    Ok((
        policy,
        Provenance {
            sha256: crate::signing::digest(bytes),
            signer,
        },
    ))
}

/// The audit record of a fleet bundle's load.
fn bundle_record(
    key: &str,
    revision: i64,
    source: &str,
    loaded: Result<&(Policy, Provenance), &LoadError>,
    sha256: Option<&str>,
) -> serde_json::Value {
    match loaded {
        Ok((policy, provenance)) => json!({
            "key": key, "revision": revision, "source": source,
            "sha256": provenance.sha256, "signer": provenance.signer,
            "summary": policy.summary().to_string(), "result": "ok",
        }),
        Err(e) => json!({
            "key": key, "revision": revision, "source": source, "sha256": sha256,
            "result": "refused",
            "reason": match e { LoadError::Signature(_) => "signature", LoadError::Invalid(_) => "invalid" },
            "error": match e { LoadError::Signature(e) | LoadError::Invalid(e) => format!("{e:#}") },
        }),
    }
}

/// What a fleet daemon starts with: the policy, where it came from, and where to follow
/// from.
struct FleetStart {
    client: etcd_client::Client,
    /// The revision in force, and whether it came from the cache.
    revision: i64,
    from_cache: bool,
    /// The revision to watch from (0: read first).
    watch_from: i64,
    /// A revision in etcd refused at start, and why.
    refused: Option<(i64, String)>,
}

/// A fleet daemon's start: the bundle in etcd if it answers within the start timeout and
/// the bundle checks out, else the cached last good bundle (checked again), else nothing.
/// Every load is on record in the audit log.
async fn fleet_start(
    fleet: &FleetOptions,
    trusted: Option<&crate::signing::TrustedKeys>,
    chronicle: &Chronicle,
) -> anyhow::Result<((Policy, Provenance), FleetStart)> {
    let mut client = crate::fleet::connect(&fleet.location, &fleet.tls).await?;
    let key = fleet.location.policy_key(&fleet.group);
    let mut start = FleetStart {
        client: client.clone(),
        revision: 0,
        from_cache: false,
        watch_from: 0,
        refused: None,
    };
    let cached = match crate::fleet::cache::load(&fleet.cache_dir) {
        Ok(cached) => cached,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "the fleet cache cannot be used");
            None
        }
    };
    let fetched = tokio::time::timeout(fleet.start_timeout, client.get(key.clone(), None)).await;
    let mut from_etcd = None;
    let why_not = match fetched {
        Ok(Ok(response)) => {
            start.watch_from = response.header().map_or(0, |h| h.revision()) + 1;
            match response.kvs().first() {
                None => format!("nothing is published at {key} (isolator publish)"),
                Some(kv) => {
                    let revision = kv.mod_revision();
                    let loaded = match crate::fleet::Bundle::decode(kv.value()) {
                        Ok(bundle) => {
                            let candidate = crate::fleet::Candidate {
                                key: key.clone(),
                                revision,
                                bundle,
                            };
                            load_bundle(&candidate, trusted, &mut policy::Cache::new())
                                .map(|loaded| (loaded, candidate.bundle))
                        }
                        Err(e) => Err(LoadError::Invalid(anyhow!("etcd:{key}@{revision}: {e:#}"))),
                    };
                    audit(
                        chronicle,
                        "policy_load",
                        bundle_record(
                            &key,
                            revision,
                            "etcd",
                            loaded.as_ref().map(|(l, _)| l),
                            None,
                        ),
                    );
                    match loaded {
                        Ok((loaded, bundle)) => {
                            from_etcd = Some((loaded, revision, bundle));
                            String::new()
                        }
                        Err(e) => {
                            let e = e.into_inner();
                            error!(key = %key, revision, "{e:#}");
                            start.refused = Some((revision, format!("{e:#}")));
                            format!("the bundle at {key} (revision {revision}) was refused")
                        }
                    }
                }
            }
        }
        Ok(Err(e)) => format!(
            "etcd at {} is unreachable ({})",
            fleet.location,
            crate::fleet::describe(&e)
        ),
        Err(_) => format!(
            "etcd at {} did not answer within {} s",
            fleet.location,
            fleet.start_timeout.as_secs_f64()
        ),
    };
    if let Some(((policy, provenance), revision, bundle)) = from_etcd {
        let newer_cache = cached
            .as_ref()
            .filter(|(c, _)| c.key == key && c.revision > revision);
        if newer_cache.is_none() {
            info!(key = %key, revision, "the policy bundle comes from etcd");
            start.revision = revision;
            if let Err(e) = crate::fleet::cache::store(
                &fleet.cache_dir,
                &crate::fleet::Candidate {
                    key: key.clone(),
                    revision,
                    bundle,
                },
            ) {
                warn!(error = %format!("{e:#}"), "could not cache the bundle in force");
            }
            return Ok(((policy, provenance), start));
        }
        warn!(key = %key, revision, "etcd holds an older revision than the cached bundle (a restored cluster?); the cached bundle stays in force until a newer revision is published");
    }
    let Some((candidate, stored_ms)) = cached else {
        anyhow::bail!(
            "{why_not}, and there is no cached bundle in {} to enforce meanwhile",
            fleet.cache_dir.display()
        );
    };
    if candidate.key != key {
        anyhow::bail!(
            "{why_not}, and the cached bundle in {} is {}'s, not {key}'s (another group or \
             prefix): remove it or start with the group it was cached for",
            fleet.cache_dir.display(),
            candidate.key
        );
    }
    let loaded = load_bundle(&candidate, trusted, &mut policy::Cache::new());
    audit(
        chronicle,
        "policy_load",
        bundle_record(
            &key,
            candidate.revision,
            "cache",
            loaded.as_ref(),
            Some(&candidate.bundle.sha256),
        ),
    );
    let loaded = loaded
        .map_err(LoadError::into_inner)
        .with_context(|| format!("{why_not}, and the cached bundle does not check out"))?;
    let age = crate::fleet::unix_ms().saturating_sub(stored_ms) / 1000;
    if !why_not.is_empty() {
        warn!(reason = %why_not, revision = candidate.revision, cached_seconds_ago = age, "enforcing the cached policy bundle; following etcd as soon as it answers");
    }
    start.revision = candidate.revision;
    start.from_cache = true;
    Ok((loaded, start))
}

/// The netlink socket's receive buffer unless told otherwise: room for the events of
/// some thousands of links changing at once (a host booting its VMs).
pub const DEFAULT_NETLINK_RECEIVE_BUFFER: usize = 8 << 20;

/// How often idle tracked connections are swept from the kernel tables.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How long, by default, the dataplane thread has had no link to guard and no plan to
/// swap in before it hands a quick TC attachment over to TCX (`Dataplane::settle`): each
/// handover holds the RTNL lock for an RCU grace period, which a new link's creation and
/// attachment would wait for.
pub const DEFAULT_HANDOVER_QUIET_MS: u64 = 100;
/// How many of the next ifindexes get state tables ahead of their links (a VM's veth
/// takes two, a tap one).
const SPARE_TABLES: u32 = 8;

/// How often the whole host is listed again even without events (a missed event, or a
/// change netlink does not report, is caught up with here), unless told otherwise.
pub const DEFAULT_RESYNC_SECONDS: u64 = 60;

/// Retries of a failed reconcile: the first after this, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the daemon says about itself: `/healthz` and part of `/metrics`.
#[derive(Clone, Debug, Default)]
struct Status {
    inventory: Inventory,
    /// Interfaces not enforced as vifs: (name, why, metric reason).
    refused: Vec<(String, String, &'static str)>,
    /// Why the kernel is not in line with the policy and the host, while that lasts.
    reconcile_error: Option<String>,
    reconcile_failures: u64,
    reloads: ReloadStats,
    netlink: NetlinkStats,
    /// The policy in force: its file's hash and signer.
    provenance: Provenance,
    /// Why the last reload was refused, until one succeeds.
    reload_refused: Option<String>,
    /// Reloads refused because the signature did not check out.
    signature_refusals: u64,
    /// Policies put into effect since start.
    generation: u64,
    /// The kernel maps' generation in force.
    kernel_generation: u32,
    /// How each attached interface is attached, by ifindex.
    modes: BTreeMap<u32, &'static str>,
    /// The policy in force, in a line.
    summary: String,
    last_reload: Option<control::LastReload>,
    /// When the policy in force was put into effect (Unix milliseconds).
    last_reload_success_ms: u64,
    /// Attempts to attach to an interface that failed.
    attach_failures: u64,
    /// A fleet daemon's bundle revision in force (0: none from etcd), where it came from
    /// (`etcd`, `cache`; empty for a policy file), and the revision refused last while no
    /// later one is in force.
    fleet_revision: i64,
    fleet_source: &'static str,
    fleet_refused: Option<i64>,
}

/// Now, in Unix milliseconds.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let trusted = match &opts.trusted_keys {
        Some(dir) => {
            let keys = crate::signing::TrustedKeys::load(dir)?;
            Some(keys)
        }
        None => None,
    };
    let chronicle = Arc::new(Chronicle::open(&opts.audit).with_context(|| {
        format!(
            "opening the audit log {} (choose another with --audit-log)",
            opts.audit.path.display()
        )
    })?);
    audit(
        &chronicle,
        "start",
        json!({ "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id(),
                "config": opts.config.display().to_string() }),
    );
    if let Err(e) = chronicle.checkpoint() {
        error!(error = %format!("{e:#}"), "signing the audit log's checkpoint at start failed");
    }
    let mut fleet_started = None;
    // Reloads parse only the tenants that changed since the last file read through it.
    let mut policy_cache = policy::Cache::new();
    let (policy, provenance) = match &opts.fleet {
        None => {
            let loaded = load_policy(&opts.config, trusted.as_ref(), &mut policy_cache)
                .map(|(policy, provenance)| (policy, Pending::Known(provenance)));
            audit(
                &chronicle,
                "policy_load",
                load_record(&opts.config, &loaded),
            );
            loaded
                .map(|(policy, pending)| (policy, pending.resolve()))
                .map_err(LoadError::into_inner)
                .context("nothing was loaded (see `isolator check`)")?
        }
        Some(fleet) => {
            let (loaded, start) = fleet_start(fleet, trusted.as_ref(), &chronicle)
                .await
                .context("nothing was loaded")?;
            fleet_started = Some(start);
            loaded
        }
    };
    info!(
        config = %opts.config.display(),
        summary = %policy.summary(),
        sha256 = %provenance.sha256,
        signer = provenance.signer.as_deref().unwrap_or("(not checked: no --trusted-keys)"),
        "policy is valid"
    );

    // Bind first: a port conflict should fail before anything is attached.
    let listener = tokio::net::TcpListener::bind(opts.metrics_addr)
        .await
        .with_context(|| {
            format!(
                "binding the metrics address {}; choose a free one with --metrics-addr",
                opts.metrics_addr
            )
        })?;

    let control_listener = control::bind(&opts.control_socket, opts.control_group).await?;

    // Subscribe to events before listing anything, so that no change is missed.
    let netlink = Netlink::open(opts.netlink_receive_buffer)?;

    // The policy maps are sized from the policy on this host as it is now (with room to
    // grow; see `Sizes`): the trusted uplinks depend on the host's links.
    let host = netlink.host_view().await.unwrap_or_default();
    let sizes = crate::compile::Plan::new(&policy, &host)
        .or_else(|_| crate::compile::Plan::new(&policy, crate::compile::HostView::default()))
        .map(|plan| Sizes::for_plan(&plan))
        .unwrap_or_default();
    drop(host);
    info!(
        addresses_v4 = sizes.addresses_v4,
        addresses_v6 = sizes.addresses_v6,
        rulesets = sizes.rulesets,
        pairs = sizes.pairs,
        gateways = sizes.gateways,
        uplinks = sizes.uplinks,
        "policy map capacities"
    );
    let state_dir = opts.state_dir.clone();
    let mut dataplane =
        tokio::task::spawn_blocking(move || Dataplane::load_pinned_sized(&state_dir, &sizes))
            .await
            .context("loading the kernel programs")?
            .with_context(|| {
                format!(
                    "loading the kernel programs with their state in {} (are you root, kernel >= \
                 6.6, bpffs mounted at /sys/fs/bpf?)",
                    opts.state_dir.display()
                )
            })?;
    let kernel_log = dataplane.take_kernel_logger();
    let event_ring = dataplane.take_events();
    dataplane
        .set_event_settings(isolator_common::EventSettings {
            monitor_every: 0,
            monitor_rate: opts.monitor_rate,
            management_rate: opts.management_rate,
            _pad: 0,
        })
        .context("setting what the programs report")?;
    let kernel = KernelHandle::spawn(dataplane, opts.handover_quiet);
    if let Some(logger) = kernel_log {
        tokio::spawn(follow_kernel_log(logger));
    }

    let (status_tx, status) = watch::channel(Status {
        provenance: provenance.clone(),
        summary: policy.summary().to_string(),
        fleet_revision: fleet_started.as_ref().map_or(0, |f| f.revision),
        fleet_source: match &fleet_started {
            None => "",
            Some(f) if f.from_cache => "cache",
            Some(_) => "etcd",
        },
        fleet_refused: fleet_started
            .as_ref()
            .and_then(|f| f.refused.as_ref().map(|(revision, _)| *revision)),
        reload_refused: fleet_started
            .as_ref()
            .and_then(|f| f.refused.as_ref().map(|(_, why)| why.clone())),
        ..Status::default()
    });
    // A fleet daemon: offers of new revisions go to the controller; reloads ask for a new
    // read.
    let (offers_tx, offers_rx) = tokio::sync::mpsc::channel(1);
    let refresh = Arc::new(tokio::sync::Notify::new());
    let (link_tx, link_rx) = watch::channel(crate::fleet::follow::LinkState::default());
    let fleet_link = opts.fleet.as_ref().map(|_| link_rx);
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    let (policy_tx, policy_rx) = watch::channel(Arc::new(policy.clone()));
    let (changed_tx, changed_rx) = tokio::sync::mpsc::channel(1);
    let (verified_tx, verified) = watch::channel(Verified::default());
    let (reports, _) = tokio::sync::broadcast::channel(MONITOR_BACKLOG);
    if let Some(ring) = event_ring {
        tokio::spawn(follow_events(
            ring,
            status.clone(),
            chronicle.clone(),
            reports.clone(),
        ));
    }
    let mut controller = Controller {
        config: opts.config.clone(),
        trusted,
        policy,
        policy_cache,
        planned: None,
        netlink,
        netlink_receive_buffer: opts.netlink_receive_buffer,
        resync_interval: opts.resync_interval,
        kernel: kernel.clone(),
        status: status_tx,
        failing_since_retry: RETRY_FIRST,
        chronicle: chronicle.clone(),
        control_reloads: reload_rx,
        policy_in_force: policy_tx,
        changed: changed_tx,
        fleet: match (&opts.fleet, &fleet_started) {
            (Some(fleet), Some(start)) => Some(FleetControl {
                key: fleet.location.policy_key(&fleet.group),
                cache_dir: fleet.cache_dir.clone(),
                offers: offers_rx,
                refresh: refresh.clone(),
                in_force: start.revision,
            }),
            _ => None,
        },
    };
    controller
        .reconcile(None)
        .await
        .context("putting the policy into effect")?;
    controller.status.send_modify(|s| {
        s.generation = 1;
        s.last_reload_success_ms = unix_ms();
    });

    tokio::spawn(verify_continuously(Verification {
        changes: changed_rx,
        interval: opts.verify_interval,
        policy: policy_rx,
        config: opts.config.clone(),
        state_dir: opts.state_dir.clone(),
        infrastructure: opts.infrastructure.clone(),
        chronicle: chronicle.clone(),
        published: verified_tx,
        kernel: kernel.clone(),
    }));
    if let (Some(fleet), Some(start)) = (&opts.fleet, fleet_started) {
        tokio::spawn(
            crate::fleet::follow::Follower {
                client: start.client.clone(),
                key: fleet.location.policy_key(&fleet.group),
                submit: offers_tx,
                in_force: start.revision,
                refused: start.refused.as_ref().map_or(0, |(revision, _)| *revision),
                watch_from: start.watch_from,
                refresh,
                link: link_tx,
                backoff: crate::fleet::follow::Backoff::new(
                    Duration::from_millis(500),
                    crate::fleet::follow::BACKOFF_MAX,
                ),
            }
            .run(),
        );
        let (host_tx, host_rx) = watch::channel(crate::fleet::HostStatus::default());
        tokio::spawn(report_host(
            status.clone(),
            verified.clone(),
            crate::fleet::HostStatus {
                host: fleet.host.clone(),
                group: fleet.group.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
                ..crate::fleet::HostStatus::default()
            },
            host_tx,
        ));
        tokio::spawn(crate::fleet::follow::publish_status(
            start.client,
            fleet.location.clone(),
            fleet.host.clone(),
            fleet.group.clone(),
            fleet.lease_seconds,
            host_rx,
        ));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let controller_task = tokio::spawn(controller.run(stop_rx));
    let control_server = ControlServer {
        access: Access {
            // SAFETY: geteuid has no preconditions.
            owner: unsafe { libc::geteuid() },
            group: opts.control_group,
        },
        kernel: kernel.clone(),
        status: status.clone(),
        reloads: reload_tx,
        chronicle: chronicle.clone(),
        config: opts.config.clone(),
        reports,
        monitors: Arc::new(std::sync::Mutex::new(Vec::new())),
        monitor_rate: opts.monitor_rate,
        management_rate: opts.management_rate,
        fleet: opts
            .fleet
            .as_ref()
            .zip(fleet_link.clone())
            .map(|(fleet, link)| {
                (
                    fleet.location.policy_key(&fleet.group),
                    fleet.host.clone(),
                    fleet.group.clone(),
                    link,
                )
            }),
    };
    info!(socket = %opts.control_socket.display(), "control socket ready (isolator status, isolator reload)");
    // systemd: ready once every claimed interface is enforced; the watchdog fed while the
    // dataplane thread answers.
    tokio::spawn(announce_readiness(status.clone()));
    if let Some(interval) = crate::service::watchdog_interval() {
        let kernel = kernel.clone();
        tokio::spawn(crate::service::feed_watchdog(interval, move || {
            let kernel = kernel.clone();
            async move { kernel.scrape().await.is_ok() }
        }));
    }
    let control_task = tokio::spawn(control_server.serve(control_listener));

    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(serve_health))
        .with_state(Http {
            kernel: kernel.clone(),
            status,
            chronicle: chronicle.clone(),
            detail: opts.metrics_detail,
            verified,
            fleet: fleet_link.clone(),
        });
    info!(addr = %opts.metrics_addr, "serving /metrics and /healthz");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;

    crate::service::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    let _ = controller_task.await;
    control_task.abort();
    let _ = std::fs::remove_file(&opts.control_socket);
    audit(&chronicle, "stop", json!({ "persist": opts.persist }));
    if let Err(e) = chronicle.checkpoint() {
        error!(error = %format!("{e:#}"), "signing the audit log's last checkpoint failed");
    }
    if opts.persist {
        info!(
            state_dir = %opts.state_dir.display(),
            "--persist: leaving every interface enforced for the next daemon; exiting"
        );
        return Ok(());
    }
    let failed = kernel.shut_down(opts.state_dir.clone()).await?;
    for (name, e) in &failed {
        error!(device = %name, error = %error_chain(e), "detaching failed");
    }
    if !failed.is_empty() {
        return Err(anyhow!(
            "{} interface(s) could not be detached",
            failed.len()
        ));
    }
    info!("detached from every interface; exiting");
    Ok(())
}

/// The controller: the one place that decides what the kernel should enforce.
struct Controller {
    config: PathBuf,
    /// The keys a policy must be signed by (`--trusted-keys`).
    trusted: Option<crate::signing::TrustedKeys>,
    /// The policy in force.
    policy: Policy,
    /// The tenants of the last policy read (see [`policy::Cache`]).
    policy_cache: policy::Cache,
    /// The last plan made, with the policy and the host it was made of: the next one is
    /// worked out from it where only a few tenants changed ([`Plan::update`]).
    planned: Option<Planned>,
    netlink: Netlink,
    netlink_receive_buffer: usize,
    resync_interval: Duration,
    kernel: KernelHandle,
    status: watch::Sender<Status>,
    /// The wait before the next retry while reconciles fail.
    failing_since_retry: Duration,
    chronicle: Arc<Chronicle>,
    /// Reloads asked through the control socket, each with where to send the outcome.
    control_reloads: tokio::sync::mpsc::Receiver<oneshot::Sender<ReloadReport>>,
    /// The policy in force, for the verification.
    policy_in_force: watch::Sender<Arc<Policy>>,
    /// Tells the verification that the kernel or the host changed.
    changed: tokio::sync::mpsc::Sender<()>,
    /// A fleet daemon's bundle source.
    fleet: Option<FleetControl>,
}

/// A plan, with the policy and the host's links and addresses it was made of.
struct Planned {
    plan: Arc<Plan>,
    policy: Policy,
    host: crate::compile::HostView,
}

/// The controller's side of the fleet source.
struct FleetControl {
    /// The bundle's key.
    key: String,
    cache_dir: PathBuf,
    /// New revisions from the follower.
    offers: tokio::sync::mpsc::Receiver<crate::fleet::follow::Submission>,
    /// Asks the follower to read the key again (a reload).
    refresh: Arc<tokio::sync::Notify>,
    /// The revision in force.
    in_force: i64,
}

/// The next offer of a fleet daemon's follower; never, for a daemon following a file.
async fn next_offer(fleet: &mut Option<FleetControl>) -> Option<crate::fleet::follow::Submission> {
    match fleet {
        Some(fleet) => fleet.offers.recv().await,
        None => std::future::pending().await,
    }
}

impl Controller {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot listen for SIGHUP: reloads are off");
                return;
            }
        };
        let mut resync = tokio::time::interval(self.resync_interval);
        resync.tick().await;
        loop {
            let failing = self.status.borrow().reconcile_error.is_some();
            let retry = self.failing_since_retry;
            tokio::select! {
                _ = stop.changed() => return,
                event = self.netlink.next_event() => match event {
                    Some(event) => {
                        let mut overrun = false;
                        let mut new = Vec::new();
                        match event {
                            Event::Changed(link) => new.extend(link),
                            Event::Overrun => overrun = true,
                        }
                        // Whatever else is queued already is guarded with it (one grace
                        // period for all their tables) and joins this reconcile; what
                        // comes while it runs, the next one. No waiting for more: a lone
                        // new link is enforced as soon as it can be.
                        tokio::task::yield_now().await;
                        let (links, lost) = self.netlink.drain_events();
                        new.extend(links);
                        self.guard(new).await;
                        if overrun || lost {
                            warn!("the netlink socket's receive buffer overflowed: events were lost; listing every link again (raise --netlink-receive-buffer if this repeats)");
                            self.status.send_modify(|s| s.netlink.overruns += 1);
                        }
                        // Every event, a lost one too, leads to a full listing.
                        let _ = self.reconcile(None).await;
                    }
                    None => self.reopen_netlink(&mut stop).await,
                },
                Some(()) = hangup.recv() => {
                    self.reload("sighup").await;
                }
                Some(reply) = self.control_reloads.recv() => {
                    let report = self.reload("control").await;
                    let _ = reply.send(report);
                }
                Some((offer, reply)) = next_offer(&mut self.fleet) => {
                    let outcome = self.take_offer(offer).await;
                    let _ = reply.send(outcome);
                }
                _ = resync.tick() => {
                    debug!("periodic resync");
                    let _ = self.reconcile(None).await;
                }
                _ = tokio::time::sleep(retry), if failing => {
                    info!("retrying after a failed reconcile");
                    let _ = self.reconcile(None).await;
                }
            }
        }
    }

    /// A link the policy claims as a VM's is guarded the moment it is announced, before
    /// the reconcile that classifies it: the programs are attached with no entry for it
    /// yet, so that everything it sends or receives drops (`no_policy`) until its entries
    /// are in place (or until a failing reconcile recovers).
    async fn guard(&mut self, links: Vec<Link>) {
        let claimed: Vec<(String, u32)> = links
            .into_iter()
            .filter(|link| self.policy.claims(&link.name))
            .map(|link| (link.name, link.ifindex))
            .collect();
        if claimed.is_empty() {
            return;
        }
        match self.kernel.guard(claimed).await {
            Ok(failed) => {
                for (name, e) in failed {
                    warn!(device = %name, error = %error_chain(&e), "could not guard a new interface before classifying it");
                }
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "could not guard new interfaces before classifying them");
            }
        }
    }

    /// The event stream ended: open a new connection (with backoff) and list everything.
    async fn reopen_netlink(&mut self, stop: &mut watch::Receiver<bool>) {
        warn!("the netlink event stream ended; reconnecting");
        let mut wait = RETRY_FIRST;
        loop {
            match Netlink::open(self.netlink_receive_buffer) {
                Ok(netlink) => {
                    self.netlink = netlink;
                    self.status.send_modify(|s| s.netlink.reconnects += 1);
                    info!("netlink reconnected; resynchronizing");
                    let _ = self.reconcile(None).await;
                    return;
                }
                Err(e) => {
                    self.fail(format!("{e:#}"));
                    error!(error = %format!("{e:#}"), "reconnecting to netlink failed; retrying");
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(RETRY_MAX);
        }
    }

    /// SIGHUP or a control request (`trigger`): check the file's signature (with
    /// `--trusted-keys`), validate it again and put it into effect, or keep the running
    /// policy. Recorded in the audit log either way.
    async fn reload(&mut self, trigger: &'static str) -> ReloadReport {
        if let Some(fleet) = &self.fleet {
            // The policy follows etcd: a reload reads the bundle again (a revision newer
            // than the one in force is put into effect as it arrives).
            info!(key = %fleet.key, trigger, in_force = fleet.in_force, "reload: reading the policy bundle from etcd again");
            fleet.refresh.notify_one();
            let status = self.status.borrow();
            return ReloadReport {
                result: "ok".into(),
                error: None,
                sha256: status.provenance.sha256.clone(),
                signer: status.provenance.signer.clone(),
            };
        }
        info!(config = %self.config.display(), trigger, "reloading the policy");
        let loaded =
            load_policy_pending(&self.config, self.trusted.as_ref(), &mut self.policy_cache);
        // The record's digest is filled in once known (after the swap).
        let record = load_record(&self.config, &loaded);
        self.put_into_effect(trigger, loaded, record).await
    }

    /// A new revision from etcd: put into effect as a reload is (signature, validation,
    /// all-or-nothing swap), cached once in force; refused (and the policy in force kept)
    /// otherwise; ignored if it is not newer than the one in force.
    async fn take_offer(
        &mut self,
        offer: crate::fleet::follow::Offer,
    ) -> crate::fleet::follow::Outcome {
        use crate::fleet::follow::Outcome;
        let Some(fleet) = &self.fleet else {
            return Outcome::Stale;
        };
        if offer.revision <= fleet.in_force {
            return Outcome::Stale;
        }
        info!(key = %offer.key, revision = offer.revision, in_force = fleet.in_force, "etcd: a new policy bundle");
        let (loaded, candidate) = match offer.bundle {
            Ok(bundle) => {
                let candidate = crate::fleet::Candidate {
                    key: offer.key.clone(),
                    revision: offer.revision,
                    bundle,
                };
                (
                    load_bundle(&candidate, self.trusted.as_ref(), &mut self.policy_cache),
                    Some(candidate),
                )
            }
            Err(why) => (
                Err(LoadError::Invalid(anyhow!(
                    "etcd:{}@{}: {why}",
                    offer.key,
                    offer.revision
                ))),
                None,
            ),
        };
        let record = bundle_record(
            &offer.key,
            offer.revision,
            "etcd",
            loaded.as_ref(),
            candidate.as_ref().map(|c| c.bundle.sha256.as_str()),
        );
        let loaded = loaded.map(|(policy, provenance)| (policy, Pending::Known(provenance)));
        let report = self.put_into_effect("etcd", loaded, record).await;
        let applied = report.result == "ok";
        self.status.send_modify(|s| {
            if applied {
                s.fleet_revision = offer.revision;
                s.fleet_source = "etcd";
                s.fleet_refused = None;
            } else {
                s.fleet_refused = Some(offer.revision);
            }
        });
        if !applied {
            return Outcome::Refused(report.error.unwrap_or_default());
        }
        if let Some(fleet) = &mut self.fleet {
            fleet.in_force = offer.revision;
            if let Some(candidate) = &candidate
                && let Err(e) = crate::fleet::cache::store(&fleet.cache_dir, candidate)
            {
                warn!(error = %format!("{e:#}"), "could not cache the bundle in force; a start while etcd is unreachable would enforce an older one");
            }
        }
        Outcome::Applied
    }

    /// Puts a loaded policy (or a refusal) into effect as a reload: the swap, the status,
    /// the log and the audit record `record` (completed here).
    async fn put_into_effect(
        &mut self,
        trigger: &'static str,
        loaded: Result<(Policy, Pending), LoadError>,
        mut record: serde_json::Value,
    ) -> ReloadReport {
        let mut unsigned = false;
        let outcome = match loaded {
            Err(e) => {
                unsigned = matches!(e, LoadError::Signature(_));
                Err(e.into_inner().context("the running policy stays in force"))
            }
            Ok((policy, pending)) => {
                let summary = policy.summary();
                let result = self.reconcile(Some(policy)).await;
                // Worked out beside the reload: known now, whatever came of it.
                let provenance = pending.resolve();
                if record["sha256"].is_null() {
                    record["sha256"] = json!(provenance.sha256);
                }
                // What the reload changed, against the policy that was in force: worked
                // out once the new one is in force (logged and on record then).
                result
                    .map(|previous| {
                        let changes = previous
                            .as_ref()
                            .map(|previous| diff::diff(previous, &self.policy))
                            .unwrap_or_default();
                        // Freeing a large policy takes a while: not on this task's way.
                        if let Some(previous) = previous {
                            drop_later(previous);
                        }
                        (summary, provenance, changes)
                    })
                    .context(
                        "the new policy could not be put into effect; the running policy stays in force",
                    )
            }
        };
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.status.send_modify(|s| {
            match &outcome {
                Ok((summary, provenance, _)) => {
                    s.reloads.succeeded += 1;
                    s.provenance = provenance.clone();
                    s.reload_refused = None;
                    s.generation += 1;
                    s.summary = summary.to_string();
                    s.last_reload_success_ms = unix_ms();
                }
                Err(e) => {
                    s.reloads.failed += 1;
                    s.signature_refusals += u64::from(unsigned);
                    s.reload_refused = Some(format!("{e:#}"));
                }
            }
            s.last_reload = Some(control::LastReload {
                time: time.clone(),
                result: if outcome.is_ok() { "ok" } else { "refused" }.into(),
                error: outcome.as_ref().err().map(|e| format!("{e:#}")),
            });
        });
        record["trigger"] = json!(trigger);
        let report = match &outcome {
            Ok((summary, provenance, changes)) => {
                info!(
                    %summary,
                    sha256 = %provenance.sha256,
                    signer = provenance.signer.as_deref().unwrap_or("(not checked)"),
                    "policy reloaded"
                );
                let described = if changes.is_empty() {
                    "nothing".to_owned()
                } else {
                    changes.summary()
                };
                let (widened, narrowed, other) = (
                    changes.count(diff::Effect::Widened),
                    changes.count(diff::Effect::Narrowed),
                    changes.count(diff::Effect::Changed),
                );
                info!(
                    widened,
                    narrowed, other, "what the reload changed: {described}"
                );
                let lines = changes.bounded_lines(RELOAD_DIFF_LINES);
                for line in &lines {
                    info!("reload: {line}");
                }
                record["result"] = json!("ok");
                record["diff"] = json!({
                    "widened": widened,
                    "narrowed": narrowed,
                    "other": other,
                    "summary": described,
                    "lines": lines,
                });
                ReloadReport {
                    result: "ok".into(),
                    error: None,
                    sha256: provenance.sha256.clone(),
                    signer: provenance.signer.clone(),
                }
            }
            Err(e) => {
                error!("{e:#}");
                record["result"] = json!("refused");
                record["error"] = json!(format!("{e:#}"));
                ReloadReport {
                    result: "refused".into(),
                    error: Some(format!("{e:#}")),
                    sha256: record["sha256"].as_str().unwrap_or_default().to_string(),
                    signer: record["signer"].as_str().map(str::to_string),
                }
            }
        };
        audit(&self.chronicle, "reload", record);
        report
    }

    /// Brings the kernel in line with `policy` (or the policy in force) and the host's
    /// links and addresses as they are now. On error the kernel's policy is unchanged,
    /// the failure is published, and (for the policy in force) retried. With a new
    /// policy put into effect: the one it replaced.
    async fn reconcile(&mut self, policy: Option<Policy>) -> anyhow::Result<Option<Policy>> {
        let new_policy = policy.is_some();
        let outcome = async {
            let started = Instant::now();
            let host = self.netlink.host_view().await?;
            let listed = started.elapsed();
            let target = policy.as_ref().unwrap_or(&self.policy);
            // The links and addresses: what the plan is made of (not the XDP modes).
            let same_host = |before: &crate::compile::HostView| {
                before.links == host.links && before.addresses == host.addresses
            };
            let plan = match self.planned.take() {
                Some(before) if same_host(&before.host) => {
                    Plan::update(&before.plan, &before.policy, target, &host)?
                }
                _ => Plan::new(target, &host)?,
            };
            let plan = Arc::new(plan);
            self.planned = Some(Planned {
                plan: Arc::clone(&plan),
                policy: target.clone(),
                host: host.clone(),
            });
            let planned = started.elapsed();
            let applied = self.kernel.apply(plan, new_policy).await?;
            debug!(
                list_ms = listed.as_millis() as u64,
                plan_ms = (planned - listed).as_millis() as u64,
                apply_ms = (started.elapsed() - planned).as_millis() as u64,
                "reconciled"
            );
            anyhow::Ok((applied, host.xdp_modes))
        }
        .await;
        match outcome {
            Ok((mut applied, xdp_modes)) => {
                // Links taken over from a previous daemon: their mode is the kernel's.
                for (ifindex, mode) in applied.modes.iter_mut() {
                    if *mode == AttachMode::TakenOver.label() {
                        *mode = xdp_modes.get(ifindex).copied().unwrap_or(mode);
                    }
                }
                let previous = policy.map(|policy| {
                    self.policy_in_force.send_replace(Arc::new(policy.clone()));
                    std::mem::replace(&mut self.policy, policy)
                });
                // Verify again (a full queue: one is due already).
                let _ = self.changed.try_send(());
                self.failing_since_retry = RETRY_FIRST;
                self.status.send_modify(|s| {
                    if s.reconcile_error.take().is_some() {
                        info!("the kernel is in line with the policy and the host again");
                    }
                    s.inventory = applied.inventory;
                    s.refused = applied.refused;
                    s.kernel_generation = applied.kernel_generation;
                    s.modes = applied.modes;
                    s.attach_failures += applied.attach_failures;
                });
                Ok(previous)
            }
            // A new policy that cannot be put into effect is a refused reload: the policy
            // in force stays, and stays in line with the host.
            Err(e) if new_policy => Err(e),
            Err(e) => {
                error!(error = %format!("{e:#}"), "the kernel could not be brought in line with the policy and the host; the previous state stays in force, retrying");
                self.fail(format!("{e:#}"));
                Err(e)
            }
        }
    }

    fn fail(&mut self, cause: String) {
        self.status.send_modify(|s| {
            s.reconcile_error = Some(cause);
            s.reconcile_failures += 1;
        });
        self.failing_since_retry = (self.failing_since_retry * 2).min(RETRY_MAX);
    }
}

/// Drops `value` on a thread of its own (freeing a policy of 100 000 segments takes
/// a few hundred milliseconds); here if no thread can be started.
fn drop_later<T: Send + 'static>(value: T) {
    // On error the closure, and `value` with it, is dropped here.
    let _ = std::thread::Builder::new()
        .name("free".into())
        .spawn(move || drop(value));
}

/// Most changes a reload logs one by one (`isolator diff` shows them all); the rest are
/// counted in one line, so that a reload of a very different policy does not flood the
/// log.
const RELOAD_DIFF_LINES: usize = 50;

/// Writes a record to the audit log; a failure is logged (and counted by the chronicle),
/// never allowed to stop enforcement.
fn audit(chronicle: &Chronicle, kind: &str, fields: serde_json::Value) {
    if let Err(e) = chronicle.record(kind, fields) {
        error!(error = %format!("{e:#}"), kind, "writing to the audit log failed");
    }
}

/// The audit record of a policy load: the file, its hash and signer, or why it was
/// refused.
fn load_record(config: &Path, loaded: &Result<(Policy, Pending), LoadError>) -> serde_json::Value {
    let file = config.display().to_string();
    match loaded {
        Ok((policy, pending)) => {
            let (sha256, signer) = match pending {
                Pending::Known(p) => (Some(p.sha256.clone()), p.signer.clone()),
                Pending::Digesting { signer, .. } => (None, signer.clone()),
            };
            json!({
                "file": file,
                "sha256": sha256,
                "signer": signer,
                "summary": policy.summary().to_string(),
                "result": "ok",
            })
        }
        Err(e) => {
            // The hash of what was refused, when it could be read.
            let sha256 = std::fs::read(config)
                .map(|bytes| crate::signing::digest(&bytes))
                .ok();
            let reason = match e {
                LoadError::Signature(_) => "signature",
                LoadError::Invalid(_) => "invalid",
            };
            let error = match e {
                LoadError::Signature(e) | LoadError::Invalid(e) => format!("{e:#}"),
            };
            json!({
                "file": file,
                "sha256": sha256,
                "result": "refused",
                "reason": reason,
                "error": error,
            })
        }
    }
}

/// Keeps a fleet daemon's [`crate::fleet::HostStatus`] in line with its status and its
/// last verification; the publisher writes it to etcd whenever it changes.
async fn report_host(
    mut status: watch::Receiver<Status>,
    mut verified: watch::Receiver<Verified>,
    base: crate::fleet::HostStatus,
    out: watch::Sender<crate::fleet::HostStatus>,
) {
    loop {
        let host = {
            let status = status.borrow_and_update();
            let verified = verified.borrow_and_update();
            let refused: BTreeSet<&str> = status.refused.iter().map(|r| r.0.as_str()).collect();
            crate::fleet::HostStatus {
                revision: status.fleet_revision,
                sha256: status.provenance.sha256.clone(),
                signer: status.provenance.signer.clone(),
                generation: status.generation,
                source: status.fleet_source.to_string(),
                enforced: status
                    .inventory
                    .vifs
                    .values()
                    .map(|labels| labels.device.clone())
                    .filter(|device| !refused.contains(device.as_str()))
                    .collect(),
                failed: status
                    .refused
                    .iter()
                    .map(|(device, why, reason)| crate::fleet::FailedInterface {
                        device: device.clone(),
                        reason: format!("{reason}: {why}"),
                    })
                    .collect(),
                last_error: status
                    .reload_refused
                    .clone()
                    .or_else(|| status.reconcile_error.clone()),
                refused_revision: status.fleet_refused,
                verify: (verified.last_ms > 0).then(|| crate::fleet::VerifySummary {
                    findings: verified.counts.values().sum(),
                    at_ms: verified.last_ms,
                }),
                applied_at_ms: status.last_reload_success_ms,
                ..base.clone()
            }
        };
        out.send_if_modified(|old| {
            let changed = *old != host;
            if changed {
                *old = host;
            }
            changed
        });
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            changed = verified.changed() => if changed.is_err() { return },
        }
    }
}

/// Reports kept for a monitor that is behind before it misses some (it is told how many).
const MONITOR_BACKLOG: usize = 4096;

/// Reads the programs' reports: management attempts go to the audit log, and every report
/// to the monitors listening.
async fn follow_events(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    status: watch::Receiver<Status>,
    chronicle: Arc<Chronicle>,
    reports: tokio::sync::broadcast::Sender<Arc<crate::events::Report>>,
) {
    // SAFETY: the ring buffer owns its file descriptor (the map's) for as long as it lives,
    // and the AsyncFd owns the ring buffer.
    let mut ring = match unsafe { tokio::io::unix::AsyncFd::register(ring) } {
        Ok(ring) => ring,
        Err(e) => {
            error!(error = %e, "cannot follow the programs' reports: management attempts are NOT recorded in the audit log");
            return;
        }
    };
    loop {
        let Ok(mut ready) = ring.readable_mut().await else {
            return;
        };
        let mut batch = Vec::new();
        while let Some(item) = ready.get_inner_mut().next() {
            if let Some(event) = crate::events::parse(&item) {
                batch.push(event);
            }
        }
        ready.clear_ready();
        if batch.is_empty() {
            continue;
        }
        let places: BTreeMap<u32, metrics::VifLabels> = {
            let status = status.borrow();
            batch
                .iter()
                .filter_map(|e| {
                    let vif = status.inventory.vifs.get(&e.ifindex)?;
                    Some((e.ifindex, vif.clone()))
                })
                .collect()
        };
        for event in &batch {
            let report = crate::events::describe(
                event,
                places.get(&event.ifindex),
                crate::events::boot_to_wall,
            );
            if event.kind == isolator_common::event::MANAGEMENT {
                debug!(device = %report.device, src = %report.src, dst = %report.dst, "management attempt");
                match serde_json::to_value(&report) {
                    Ok(fields) => audit(&chronicle, "management_attempt", fields),
                    Err(e) => error!(error = %e, "encoding a management attempt"),
                }
            }
            // Nobody listening is no error.
            let _ = reports.send(Arc::new(report));
        }
    }
}

/// Serves the control socket (see [`crate::control`]).
struct ControlServer {
    access: Access,
    kernel: KernelHandle,
    status: watch::Receiver<Status>,
    reloads: tokio::sync::mpsc::Sender<oneshot::Sender<ReloadReport>>,
    chronicle: Arc<Chronicle>,
    config: PathBuf,
    reports: tokio::sync::broadcast::Sender<Arc<crate::events::Report>>,
    /// The sampling each connected monitor asked for (one drop in N).
    monitors: Arc<std::sync::Mutex<Vec<(u64, u32)>>>,
    monitor_rate: u32,
    management_rate: u32,
    /// A fleet daemon's key, host and group, and its connection to etcd.
    fleet: Option<(
        String,
        String,
        String,
        watch::Receiver<crate::fleet::follow::LinkState>,
    )>,
}

impl ControlServer {
    async fn serve(self, listener: tokio::net::UnixListener) {
        let server = Arc::new(self);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let server = server.clone();
                    tokio::spawn(async move { server.handle(stream).await });
                }
                Err(e) => {
                    warn!(error = %e, "accepting on the control socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn handle(&self, mut stream: tokio::net::UnixStream) {
        let caller = match stream.peer_cred() {
            Ok(cred) => Caller {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            },
            Err(e) => {
                warn!(error = %e, "control socket: cannot tell who connected; refused");
                return;
            }
        };
        let groups = caller.pid.and_then(control::supplementary_groups);
        let who = json!({ "uid": caller.uid, "gid": caller.gid, "pid": caller.pid });
        if !self.access.allows(&caller, groups.as_deref()) {
            warn!(uid = caller.uid, pid = ?caller.pid, "control socket: refused a caller that is neither root nor in the control group");
            audit(
                &self.chronicle,
                "control",
                json!({ "caller": who, "request": null, "result": "refused",
                        "error": "not root, the daemon's user, or in its control group" }),
            );
            let refused = Response {
                ok: false,
                error: Some(format!(
                    "refused: uid {} is not root and not in the daemon's --control-group",
                    caller.uid
                )),
                ..Response::default()
            };
            let _ = control::write_response(&mut stream, &refused).await;
            return;
        }
        let request = match control::read_request(&mut stream).await {
            Ok(r) => r,
            Err(e) => {
                warn!(uid = caller.uid, pid = ?caller.pid, error = %format!("{e:#}"), "control socket: a bad request");
                audit(
                    &self.chronicle,
                    "control",
                    json!({ "caller": who, "request": null, "result": "bad_request",
                            "error": format!("{e:#}") }),
                );
                let bad = Response {
                    ok: false,
                    error: Some(format!("{e:#}")),
                    ..Response::default()
                };
                let _ = control::write_response(&mut stream, &bad).await;
                return;
            }
        };
        info!(request = request.name(), uid = caller.uid, pid = ?caller.pid, "control request");
        if let Request::Monitor { filter, every } = &request {
            let every = every.unwrap_or(1).max(1);
            audit(
                &self.chronicle,
                "control",
                json!({ "caller": who, "request": "monitor", "filter": filter,
                        "every": every, "result": "ok" }),
            );
            self.monitor(stream, filter.clone(), every).await;
            return;
        }
        let response = match request {
            Request::Status => match self.status_report().await {
                Ok(status) => Response {
                    ok: true,
                    status: Some(status),
                    ..Response::default()
                },
                Err(e) => Response {
                    ok: false,
                    error: Some(format!("{e:#}")),
                    ..Response::default()
                },
            },
            // Answered above.
            Request::Monitor { .. } => return,
            Request::Reload => {
                let (reply, answer) = oneshot::channel();
                let report = match self.reloads.send(reply).await {
                    Ok(()) => answer
                        .await
                        .map_err(|_| anyhow!("the daemon is stopping: no reload")),
                    Err(_) => Err(anyhow!("the daemon is stopping: no reload")),
                };
                match report {
                    Ok(report) => Response {
                        ok: report.result == "ok",
                        error: report.error.clone(),
                        reload: Some(report),
                        ..Response::default()
                    },
                    Err(e) => Response {
                        ok: false,
                        error: Some(format!("{e:#}")),
                        ..Response::default()
                    },
                }
            }
        };
        audit(
            &self.chronicle,
            "control",
            json!({ "caller": who, "request": request.name(),
                    "result": if response.ok { "ok" } else { "failed" },
                    "error": response.error }),
        );
        if let Err(e) = control::write_response(&mut stream, &response).await {
            debug!(error = %format!("{e:#}"), "control socket: the caller left before the answer");
        }
    }

    /// Streams reports to a monitor until it leaves; the programs report drops (one in
    /// the smallest `every` any monitor asked for) only while one is connected.
    async fn monitor(
        &self,
        mut stream: tokio::net::UnixStream,
        filter: crate::events::Filter,
        every: u32,
    ) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut reports = self.reports.subscribe();
        self.monitors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, every));
        let ready = match self.sample_drops().await {
            Ok(()) => Response {
                ok: true,
                ..Response::default()
            },
            Err(e) => Response {
                ok: false,
                error: Some(format!("{e:#}")),
                ..Response::default()
            },
        };
        let started = control::write_line(&mut stream, &ready).await.is_ok() && ready.ok;
        let shown = if started {
            Self::stream_reports(stream, &mut reports, &filter).await
        } else {
            0
        };
        self.monitors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(m, _)| *m != id);
        if let Err(e) = self.sample_drops().await {
            warn!(error = %format!("{e:#}"), "could not stop sampling drops for monitors");
        }
        info!(shown, "a monitor left");
    }

    /// Writes the reports `filter` matches to a monitor until it leaves; returns how many.
    async fn stream_reports(
        stream: tokio::net::UnixStream,
        reports: &mut tokio::sync::broadcast::Receiver<Arc<crate::events::Report>>,
        filter: &crate::events::Filter,
    ) -> u64 {
        let (mut from_client, mut to_client) = stream.into_split();
        let mut shown = 0u64;
        let mut scratch = [0u8; 256];
        loop {
            tokio::select! {
                // The client leaving (or closing its side) ends the stream.
                read = tokio::io::AsyncReadExt::read(&mut from_client, &mut scratch) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        break;
                    }
                }
                report = reports.recv() => match report {
                    Ok(report) => {
                        if filter.matches(&report) {
                            let line = control::MonitorLine::Report(Box::new((*report).clone()));
                            if control::write_line(&mut to_client, &line).await.is_err() {
                                break;
                            }
                            shown += 1;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        let line = control::MonitorLine::Missed { missed };
                        if control::write_line(&mut to_client, &line).await.is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        shown
    }

    /// Tells the programs to sample drops as the connected monitors ask (one in the
    /// smallest N), or not at all when none is connected.
    async fn sample_drops(&self) -> anyhow::Result<()> {
        let every = self
            .monitors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, every)| *every)
            .min()
            .unwrap_or(0);
        self.kernel
            .set_events(isolator_common::EventSettings {
                monitor_every: every,
                monitor_rate: self.monitor_rate,
                management_rate: self.management_rate,
                _pad: 0,
            })
            .await
    }

    async fn status_report(&self) -> anyhow::Result<control::StatusReport> {
        let kernel = self.kernel.scrape().await?;
        let status = self.status.borrow().clone();
        let mut interfaces: Vec<control::InterfaceReport> = Vec::new();
        let refused: BTreeMap<&str, (&str, &str)> = status
            .refused
            .iter()
            .map(|(device, why, reason)| (device.as_str(), (why.as_str(), *reason)))
            .collect();
        for (ifindex, labels) in &status.inventory.vifs {
            let refusal = refused.get(labels.device.as_str());
            interfaces.push(control::InterfaceReport {
                device: labels.device.clone(),
                ifindex: *ifindex,
                tenant: (!labels.tenant.is_empty()).then(|| labels.tenant.clone()),
                segment: (!labels.segment.is_empty()).then(|| labels.segment.clone()),
                state: if refusal.is_some() {
                    "refused"
                } else {
                    "enforced"
                }
                .into(),
                mode: status.modes.get(ifindex).map(|m| m.to_string()),
                reason: refusal.map(|(why, reason)| format!("{reason}: {why}")),
            });
        }
        for (device, (why, reason)) in &refused {
            if !interfaces.iter().any(|i| i.device == *device) {
                interfaces.push(control::InterfaceReport {
                    device: device.to_string(),
                    state: "refused".into(),
                    reason: Some(format!("{reason}: {why}")),
                    ..control::InterfaceReport::default()
                });
            }
        }
        for (ifindex, name) in &kernel.guarded {
            interfaces.push(control::InterfaceReport {
                device: name.clone(),
                ifindex: *ifindex,
                state: "guarded".into(),
                mode: status.modes.get(ifindex).map(|m| m.to_string()),
                ..control::InterfaceReport::default()
            });
        }
        interfaces.sort_by(|a, b| a.device.cmp(&b.device));
        let mut counters = control::CountersReport::default();
        for (key, counter) in &kernel.counters {
            let audited = key.flags & isolator_common::CounterKey::AUDIT != 0;
            if key.verdict == isolator_common::verdict::PASS && !audited {
                counters.passed_packets += counter.packets;
                continue;
            }
            counters.dropped_packets += counter.packets;
            let name = isolator_common::verdict::name(key.verdict).unwrap_or("unknown");
            let label = if audited {
                format!("{name} (audited, passed)")
            } else {
                name.to_string()
            };
            *counters.dropped_by_reason.entry(label).or_default() += counter.packets;
        }
        counters.dropped_by_reason.retain(|_, n| *n > 0);
        let (next_seq, _) = self.chronicle.head();
        Ok(control::StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            generation: status.generation,
            kernel_generation: status.kernel_generation,
            policy: control::PolicyReport {
                file: self.config.display().to_string(),
                sha256: status.provenance.sha256.clone(),
                signer: status.provenance.signer.clone(),
                summary: status.summary.clone(),
            },
            interfaces,
            last_reload: status.last_reload.clone(),
            reconcile_error: status.reconcile_error.clone(),
            counters,
            fleet: self.fleet.as_ref().map(|(key, host, group, link)| {
                let link = link.borrow();
                control::FleetReport {
                    key: key.clone(),
                    host: host.clone(),
                    group: group.clone(),
                    revision: status.fleet_revision,
                    source: status.fleet_source.to_string(),
                    refused_revision: status.fleet_refused,
                    connected: link.connected,
                    since_ms: link.since_ms,
                    error: link.error.clone(),
                    rereads: link.rereads,
                    reconnects: link.reconnects,
                }
            }),
            audit: Some(control::AuditReport {
                path: self.chronicle.path().display().to_string(),
                next_seq,
                failures: self.chronicle.failures(),
            }),
        })
    }
}

/// What a successful apply left in force.
struct Applied {
    inventory: Inventory,
    refused: Vec<(String, String, &'static str)>,
    kernel_generation: u32,
    /// How each attached interface is attached, by ifindex.
    modes: BTreeMap<u32, &'static str>,
    /// Attempts to attach that failed.
    attach_failures: u64,
}

/// What a scrape reads from the kernel.
struct KernelScrape {
    counters: Vec<(isolator_common::CounterKey, isolator_common::Counter)>,
    uncounted: Vec<isolator_common::Uncounted>,
    faults: [u64; isolator_common::fault::KINDS as usize],
    conntrack: ConntrackStats,
    /// Each policy map's capacity and kernel memory.
    maps: Vec<crate::dataplane::Footprint>,
    /// Links guarded but not classified yet: their drops count under their names.
    guarded: Vec<(u32, String)>,
    events_lost: [u64; isolator_common::event::lost::KINDS as usize],
}

enum Command {
    Apply {
        plan: Arc<Plan>,
        /// The policy changed: swap even if the plan's entries did not.
        force: bool,
        reply: oneshot::Sender<anyhow::Result<Applied>>,
        /// The way back to the dataplane thread, for [`Command::Retire`].
        inbox: mpsc::Sender<Command>,
    },
    /// The wait after the last swap is over: remove the old generation
    /// ([`Kernel::retire`]).
    Retire,
    /// The maps drifted from what the daemon wrote: the next swap reads them from the
    /// kernel first ([`Dataplane::forget_contents`]).
    Forget,
    /// Attach to a link the plan does not have yet (nothing passes it until it does).
    Guard {
        links: Vec<(String, u32)>,
        reply: oneshot::Sender<Vec<(String, DataplaneError)>>,
    },
    Scrape {
        reply: oneshot::Sender<Result<KernelScrape, DataplaneError>>,
    },
    /// What the programs report (`EVENT_SETTINGS`).
    Events {
        settings: isolator_common::EventSettings,
        reply: oneshot::Sender<Result<(), DataplaneError>>,
    },
    ShutDown {
        state_dir: PathBuf,
        reply: oneshot::Sender<Vec<(String, DataplaneError)>>,
    },
}

/// The way to the dataplane thread.
#[derive(Clone)]
struct KernelHandle {
    commands: mpsc::Sender<Command>,
    /// The generation not in force and what the dataplane wrote there, as of the last
    /// command it finished ([`Dataplane::other_generation`]).
    other: Arc<std::sync::Mutex<OtherGeneration>>,
}

/// See [`KernelHandle::other_generation`].
type OtherGeneration = Option<(u32, Arc<crate::encode::Entries>)>;

impl KernelHandle {
    fn spawn(dataplane: Dataplane, handover_quiet: Duration) -> KernelHandle {
        let (commands, inbox) = mpsc::channel();
        let other = Arc::new(std::sync::Mutex::new(None));
        let kernel = Kernel {
            dataplane,
            plan: None,
            guarded: BTreeMap::new(),
            grace: None,
            other: other.clone(),
            busy: Instant::now(),
            highest: 0,
            handover_quiet,
            unsettling: BTreeSet::new(),
        };
        std::thread::Builder::new()
            .name("dataplane".into())
            .spawn(move || kernel.serve(inbox))
            .expect("spawning the dataplane thread");
        KernelHandle { commands, other }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> anyhow::Result<T> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .map_err(|_| anyhow!("the dataplane thread has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow!("the dataplane thread stopped without answering"))
    }

    /// See [`Command::Forget`]. Nothing to do once the dataplane thread has stopped.
    fn forget_contents(&self) {
        let _ = self.commands.send(Command::Forget);
    }

    /// The generation not in force and what the next swap expects to find there (`None`:
    /// nothing it builds on).
    fn other_generation(&self) -> OtherGeneration {
        self.other.lock().map(|o| o.clone()).unwrap_or(None)
    }

    async fn apply(&self, plan: Arc<Plan>, force: bool) -> anyhow::Result<Applied> {
        let inbox = self.commands.clone();
        self.ask(|reply| Command::Apply {
            plan,
            force,
            reply,
            inbox,
        })
        .await?
    }

    /// Guards links (see [`Kernel::guard`]); the ones that failed, with why.
    async fn guard(
        &self,
        links: Vec<(String, u32)>,
    ) -> anyhow::Result<Vec<(String, DataplaneError)>> {
        self.ask(|reply| Command::Guard { links, reply }).await
    }

    async fn scrape(&self) -> anyhow::Result<KernelScrape> {
        Ok(self.ask(|reply| Command::Scrape { reply }).await??)
    }

    async fn set_events(&self, settings: isolator_common::EventSettings) -> anyhow::Result<()> {
        Ok(self
            .ask(|reply| Command::Events { settings, reply })
            .await??)
    }

    async fn shut_down(&self, state_dir: PathBuf) -> anyhow::Result<Vec<(String, DataplaneError)>> {
        self.ask(|reply| Command::ShutDown { state_dir, reply })
            .await
    }
}

/// A vif judged at TC ingress because another program holds its XDP hook: reported like
/// a refused one (`/healthz` 503, `isolator_interfaces_refused{reason="xdp_taken"}`).
fn xdp_taken(name: &str) -> (String, String, &'static str) {
    (
        name.to_string(),
        "judged at TC ingress: another program holds its XDP hook, and frames it redirects \
         are not judged"
            .to_string(),
        "xdp_taken",
    )
}

/// The ifindex of the link called `name` in the daemon's namespace, if there is one.
fn ifindex_of(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string; the call reads it and nothing else.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (ifindex != 0).then_some(ifindex)
}

/// The dataplane thread's state.
struct Kernel {
    dataplane: Dataplane,
    /// The plan in force (the dataplane's encoder holds it too, to encode the next one
    /// from the change).
    plan: Option<Arc<Plan>>,
    /// Links attached before the plan had them ([`Kernel::guard`]), with their names.
    guarded: BTreeMap<u32, String>,
    /// The swap waiting for the programs to leave its old generation, and the answer of
    /// the thread that waits ([`Kernel::retire_later`]).
    grace: Option<(
        crate::dataplane::Swap,
        mpsc::Receiver<crate::dataplane::Grace>,
    )>,
    /// Published after every command ([`KernelHandle::other_generation`]).
    other: Arc<std::sync::Mutex<OtherGeneration>>,
    /// When the thread last guarded a link or swapped a plan in.
    busy: Instant,
    /// The highest ifindex the thread has seen (in plans and guards): the kernel gives
    /// new links the ones above it, which get spare state tables
    /// ([`Dataplane::prepare_spares`]).
    highest: u32,
    /// How long after that it hands quick TC attachments over to TCX.
    handover_quiet: Duration,
    /// Vifs whose quick TC attachment could not be handed over to TCX: not tried again
    /// while attached (the filter judges on, and they are reported).
    unsettling: BTreeSet<u32>,
}

impl Kernel {
    fn serve(mut self, inbox: mpsc::Receiver<Command>) {
        // A deadline, not a timeout per wait: commands (a scrape every few seconds) must
        // not keep the sweep from ever running.
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        loop {
            if let Ok(mut other) = self.other.lock() {
                let (generation, contents) = self.dataplane.other_generation();
                *other = contents.map(|contents| (generation, contents));
            }
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep();
                next_sweep = now + SWEEP_INTERVAL;
            }
            let mut deadline = next_sweep;
            if let Some(ifindex) = self.unsettled() {
                let due = self.busy + self.handover_quiet;
                if now >= due {
                    self.settle(ifindex);
                    // Commands first: one hook per turn.
                    deadline = now;
                } else {
                    deadline = deadline.min(due);
                }
            }
            match inbox.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Command::Apply {
                    plan,
                    force,
                    reply,
                    inbox,
                }) => {
                    let seen = plan
                        .links
                        .iter()
                        .map(|l| l.ifindex)
                        .chain(plan.vifs.iter().map(|v| v.ifindex))
                        .chain(plan.quarantined.iter().map(|q| q.ifindex))
                        .max();
                    let applied = self.apply(plan, force);
                    // Links that come from now on are attached the quick way (the ones
                    // found at the start were attached through TCX).
                    if applied.is_ok() {
                        self.dataplane.attach_quickly(true);
                    }
                    let _ = reply.send(applied);
                    self.retire_later(inbox);
                    self.busy = Instant::now();
                    self.spare_tables(seen);
                }
                Ok(Command::Retire) => self.retire(),
                Ok(Command::Forget) => self.dataplane.forget_contents(),
                Ok(Command::Guard { links, reply }) => {
                    let seen = links.iter().map(|(_, ifindex)| *ifindex).max();
                    let _ = reply.send(self.guard(links, true));
                    self.busy = Instant::now();
                    self.spare_tables(seen);
                }
                Ok(Command::Scrape { reply }) => {
                    let _ = reply.send(self.scrape());
                }
                Ok(Command::Events { settings, reply }) => {
                    let _ = reply.send(self.dataplane.set_event_settings(settings));
                }
                Ok(Command::ShutDown { state_dir, reply }) => {
                    let _ = reply.send(self.dataplane.shut_down(Some(&state_dir)));
                    return;
                }
                // The sweep is due: it runs at the top of the loop.
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Every handle is gone (the daemon is exiting): leave everything as it is.
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Keeps [`SPARE_TABLES`] ifindexes above the highest seen (now at least `seen`)
    /// with spare state tables, once the daemon runs (after its first plan).
    fn spare_tables(&mut self, seen: Option<u32>) {
        self.highest = self.highest.max(seen.unwrap_or(0));
        if self.plan.is_none() {
            return;
        }
        self.dataplane.forget_spares_up_to(self.highest);
        let next = self.highest.saturating_add(1);
        let wanted = next..next.saturating_add(SPARE_TABLES);
        if let Err(e) = self.dataplane.prepare_spares(wanted) {
            debug!(error = %error_chain(&e), "could not make spare state tables; new vifs get theirs when they come");
        }
    }

    /// A vif whose TC hooks hold a quick attachment still, not given up on.
    fn unsettled(&mut self) -> Option<u32> {
        let attached: BTreeSet<u32> = self.dataplane.attachments().map(|(i, _, _)| i).collect();
        self.unsettling.retain(|i| attached.contains(i));
        self.dataplane
            .unsettled()
            .find(|i| !self.unsettling.contains(i))
    }

    /// Hands one of `ifindex`'s quick TC attachments over to TCX.
    fn settle(&mut self, ifindex: u32) {
        let started = Instant::now();
        match self.dataplane.settle(ifindex) {
            Ok(more) => debug!(
                ifindex,
                more,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "handed a quick TC attachment over to TCX"
            ),
            Err(e) => {
                self.unsettling.insert(ifindex);
                warn!(ifindex, error = %error_chain(&e), "could not hand a quick TC attachment over to TCX; the cls_bpf filter judges on (after any TCX program of the hook)");
            }
        }
    }

    /// Attaches to links the plan in force does not manage (yet): with no entry for them,
    /// the programs drop everything they send and everything sent to them. Their state
    /// tables are inserted together ([`Dataplane::guard_all`]). `announced`: events
    /// announced the links (else a listing found one first, just before the swap that
    /// classifies it). Returns the links that could not be guarded, with why.
    fn guard(
        &mut self,
        links: Vec<(String, u32)>,
        announced: bool,
    ) -> Vec<(String, DataplaneError)> {
        let mut seen = BTreeSet::new();
        let wanted: Vec<(String, u32)> = links
            .into_iter()
            // A link's events may come more than once in a batch.
            .filter(|(_, ifindex)| seen.insert(*ifindex))
            .filter(|(name, ifindex)| {
                let managed = self.plan.as_ref().is_some_and(|plan| {
                    plan.vifs.iter().any(|v| v.ifindex == *ifindex)
                        || plan.quarantined.iter().any(|q| q.ifindex == *ifindex)
                });
                if managed || self.dataplane.attachments().any(|(i, _, _)| i == *ifindex) {
                    return false;
                }
                // An event about a link that is gone already (a deleted link's last change).
                if ifindex_of(name) != Some(*ifindex) {
                    debug!(device = %name, "not guarding a link that is gone");
                    return false;
                }
                true
            })
            .collect();
        let mut failed = Vec::new();
        if wanted.is_empty() {
            return failed;
        }
        let guarded = self.dataplane.guard_all(&wanted);
        for ((name, _), (ifindex, mode)) in wanted.into_iter().zip(guarded) {
            let mode = match mode {
                Ok(mode) => mode,
                Err(e) => {
                    failed.push((name, e));
                    continue;
                }
            };
            if mode == AttachMode::Generic {
                warn!(
                    device = %name,
                    "generic XDP mode: the driver refused native mode; correct but slower"
                );
            }
            if announced {
                info!(
                    device = %name,
                    "guarding a new interface: nothing passes it until it is classified"
                );
            } else {
                info!(
                    device = %name,
                    "attached to a new interface just before the swap that classifies it (no event announced it)"
                );
            }
            self.guarded.insert(ifindex, name);
        }
        failed
    }

    /// The wait after a swap (an RCU grace period, 8 to 16 ms here) passes on a thread of
    /// its own, which then asks this thread to remove the old generation
    /// ([`Command::Retire`]): meanwhile this thread is free, so that a new link is guarded
    /// without waiting for it. (A swap that begins before then first waits for that same
    /// wait to end and retires the previous one: [`Kernel::retire`].)
    fn retire_later(&mut self, inbox: mpsc::Sender<Command>) {
        let Some(swap) = self.dataplane.retiring() else {
            return;
        };
        let (done, waited) = mpsc::channel();
        let waiter = std::thread::Builder::new()
            .name("grace".into())
            .spawn(move || {
                let _ = done.send(crate::dataplane::wait_for_readers());
                let _ = inbox.send(Command::Retire);
            });
        match waiter {
            Ok(_) => self.grace = Some((swap, waited)),
            // Not retired now: the next swap retires it first, after a wait of its own.
            Err(e) => {
                warn!(error = %e, "could not start a thread to wait for the programs to leave the old policy")
            }
        }
    }

    /// Removes the old generation of the last swap once the wait begun after it is over
    /// (blocking until then: a swap that begins sooner waits for the same grace period
    /// rather than for one of its own).
    fn retire(&mut self) {
        let Some((swap, waited)) = self.grace.take() else {
            return;
        };
        // A waiter that died without an answer: the next swap waits itself.
        let Ok(grace) = waited.recv() else {
            return;
        };
        if let Err(e) = self.dataplane.retire(swap, grace) {
            // The next swap purges the generation it writes first.
            warn!(error = %error_chain(&e), "removing the previous policy's entries failed");
        }
    }

    fn sweep(&mut self) {
        let Some(plan) = &self.plan else {
            return;
        };
        match self.dataplane.sweep_connections(&plan.settings) {
            Ok(0) => {}
            Ok(n) => {
                debug!(removed = n, "swept idle connections");
            }
            Err(e) => warn!(error = %error_chain(&e), "sweeping idle connections failed"),
        }
    }

    /// Detaches from interfaces the plan no longer has, swaps the plan in (unless nothing
    /// changed), re-checks tracked connections, attaches to new interfaces.
    fn apply(&mut self, plan: Arc<Plan>, force: bool) -> anyhow::Result<Applied> {
        let dp = &mut self.dataplane;
        // Detach from interfaces the new plan no longer has (gone, renamed, or dropped
        // from the policy) before the swap; attach to new ones after it, so that a
        // program never runs on a vif without its entries (a guarded link aside, which
        // passes nothing until then).
        let wanted: BTreeSet<(u32, &str)> = plan
            .vifs
            .iter()
            .map(|v| (v.ifindex, v.name.as_str()))
            .chain(
                plan.quarantined
                    .iter()
                    .map(|q| (q.ifindex, q.name.as_str())),
            )
            .collect();
        let stale: Vec<(u32, String)> = dp
            .attachments()
            .filter(|(ifindex, name, _)| !wanted.contains(&(*ifindex, *name)))
            .map(|(ifindex, name, _)| (ifindex, name.to_string()))
            .collect();
        for (ifindex, name) in stale {
            match dp.detach(ifindex) {
                Ok(()) => info!(device = %name, "no longer managed: detached"),
                // A deleted interface takes its programs with it.
                Err(e) => {
                    debug!(device = %name, error = %error_chain(&e), "detaching a vanished interface")
                }
            }
        }

        // New vifs that no event announced yet (this reconcile listed them first) are
        // guarded before the swap (attached with no entry yet: everything they send or
        // receive drops until the swap), which gives them their state tables while their
        // programs attach (one batch: [`Dataplane::guard_all`]), where attached after it
        // they would first wait for their tables, then attach: enforced at the swap or the
        // addition in place.
        let unattached: Vec<(String, u32)> = plan
            .vifs
            .iter()
            .filter(|v| !self.dataplane.attachments().any(|(i, _, _)| i == v.ifindex))
            .map(|v| (v.name.clone(), v.ifindex))
            .collect();
        // Not at the first swap, where most links are the ones a previous daemon enforces
        // (taken over after the swap, so that its programs judge by its entries until this
        // daemon's are in force), unless there is only one.
        if unattached.len() == 1 || (self.plan.is_some() && !unattached.is_empty()) {
            for (name, e) in self.guard(unattached, false) {
                // Tried again after the swap, where a failure is reported.
                debug!(device = %name, error = %error_chain(&e), "guarding a new interface before the swap failed");
            }
        }
        // A plan that only adds links to the one in force (more interfaces than it) may go
        // in without a swap, so without waiting for the last swap's grace period
        // (`Dataplane::add_in_place`); anything else is swapped in.
        let grows = self.plan.as_ref().is_some_and(|old| {
            plan.vifs.len() + plan.quarantined.len() > old.vifs.len() + old.quarantined.len()
        });
        let started = Instant::now();
        let added = if !force && grows {
            match self.dataplane.add_in_place(&plan) {
                Ok(added) => added,
                Err(e) => {
                    debug!(error = %error_chain(&e), "adding new links' entries in place failed; swapping");
                    None
                }
            }
        } else {
            None
        };
        if let Some(written) = added {
            debug!(
                ms = started.elapsed().as_millis() as u64,
                put = written.put,
                encode_ms = written.encode.as_millis() as u64,
                "added new links' entries in place"
            );
        } else if force || self.plan.as_deref() != Some(&*plan) {
            self.retire();
            let dp = &mut self.dataplane;
            // In force from here on; the old generation is changed by the next swap only
            // once the programs have left it ([`Kernel::retire_later`]).
            let started = Instant::now();
            dp.swap_shared(&plan)
                .context("writing the policy into the kernel maps")?;
            let written = dp.last_written().unwrap_or_default();
            debug!(
                swap_ms = started.elapsed().as_millis() as u64,
                put = written.put,
                removed = written.removed,
                whole = written.whole,
                encode_ms = written.encode.as_millis() as u64,
                followed = written.followed,
                compare_ms = written.compare.as_millis() as u64,
                "swapped"
            );
            // Connections the old policy admitted are judged again by the new one.
            match dp.revoke_connections(&Recheck::new(&plan)) {
                Ok(0) => {}
                Ok(n) => {
                    info!(
                        count = n,
                        "removed tracked connections the policy no longer admits"
                    );
                }
                // The new policy is in force for every new connection; the next swap
                // re-checks again.
                Err(e) => error!(
                    error = %error_chain(&e),
                    "re-checking tracked connections against the new policy failed: some \
                     connections it no longer admits may keep passing until they end"
                ),
            }
        }

        let dp = &mut self.dataplane;
        let mut refused = Vec::new();
        let mut attach_failures = 0;
        self.guarded
            .retain(|i, _| dp.attachments().any(|(ifindex, _, _)| ifindex == *i));
        // The new vifs are attached together ([`Dataplane::attach_batch`]): their entries
        // are in force already, so each is enforced once its programs are on.
        let held: BTreeSet<u32> = dp.attachments().map(|(ifindex, _, _)| ifindex).collect();
        let unattached: Vec<(String, u32)> = plan
            .vifs
            .iter()
            .filter(|v| !held.contains(&v.ifindex))
            .map(|v| (v.name.clone(), v.ifindex))
            .collect();
        let mut newly: BTreeMap<u32, Result<AttachMode, DataplaneError>> =
            dp.attach_batch(&unattached).into_iter().collect();
        for vif in &plan.vifs {
            let segment = plan.segment_label(vif.segment);
            let attached = newly.remove(&vif.ifindex);
            let held = dp
                .attachments()
                .find(|(ifindex, _, _)| *ifindex == vif.ifindex)
                .map(|(_, _, mode)| mode)
                .filter(|_| attached.is_none());
            if let Some(mode) = held {
                if self.guarded.remove(&vif.ifindex).is_some() {
                    info!(device = %vif.name, %segment, "classified: enforcing");
                }
                if mode == AttachMode::TcIngress {
                    match dp.retry_xdp(vif.ifindex) {
                        Ok(Some(_)) => info!(
                            device = %vif.name, %segment,
                            "the XDP hook is free again: enforcing at XDP"
                        ),
                        Ok(None) => refused.push(xdp_taken(&vif.name)),
                        Err(e) => {
                            warn!(device = %vif.name, error = %error_chain(&e), "moving back to XDP failed; still judging at TC ingress");
                            refused.push(xdp_taken(&vif.name));
                        }
                    }
                }
                continue;
            }
            let Some(attached) = attached else {
                continue;
            };
            match attached {
                Ok(AttachMode::Native) => {
                    info!(device = %vif.name, %segment, "enforcing (native XDP)")
                }
                Ok(AttachMode::Generic) => warn!(
                    device = %vif.name, %segment,
                    "enforcing in generic XDP mode: the driver refused native mode; correct but slower"
                ),
                Ok(AttachMode::TakenOver) => info!(
                    device = %vif.name, %segment,
                    "enforcing (took over the previous daemon's programs without a gap)"
                ),
                Ok(AttachMode::TcIngress) => {
                    error!(
                        device = %vif.name, %segment,
                        "another program holds this interface's XDP hook: judging what the VM sends at TC ingress instead; frames that program redirects elsewhere are NOT judged (remove it; isolator moves back to XDP by itself)"
                    );
                    refused.push(xdp_taken(&vif.name));
                }
                Err(e) => {
                    attach_failures += 1;
                    error!(device = %vif.name, %segment, error = %error_chain(&e), "NOT enforcing on this interface");
                    refused.push((
                        vif.name.clone(),
                        format!("attaching failed: {}", error_chain(&e)),
                        "attach_failed",
                    ));
                }
            }
        }
        // Interfaces that look like VMs' but cannot be enforced as such: attached all the
        // same, so that they pass nothing (their entries say so), and reported.
        for q in &plan.quarantined {
            let attached = dp.attachments().any(|(ifindex, _, _)| ifindex == q.ifindex);
            // Said once: when first attached, or when a guarded link turns out to be one.
            if self.guarded.remove(&q.ifindex).is_some() || !attached {
                error!(device = %q.name, why = %q.why, "NOT enforcing on this interface as a vif: everything it sends or receives is dropped (unknown_interface)");
            }
            if !attached && let Err(e) = dp.attach(&q.name, q.ifindex) {
                attach_failures += 1;
                error!(device = %q.name, error = %error_chain(&e), "could not even attach the drop-all programs to it");
            }
            refused.push((q.name.clone(), q.why.to_string(), q.why.label()));
        }
        let released = dp.release_leftovers();
        if released > 0 {
            info!(
                count = released,
                "removed programs a previous daemon left on interfaces that are gone or no longer managed"
            );
        }
        if plan.vifs.is_empty() {
            warn!(
                "the policy matches no interface of this host; nothing is enforced until one appears"
            );
        }
        let attached: BTreeSet<u32> = dp.attachments().map(|(i, _, _)| i).collect();
        if let Err(e) = dp.prune_counters(&attached) {
            warn!(error = %error_chain(&e), "removing the counters of vanished interfaces failed");
        }
        let inventory = Inventory::new(&plan, attached);
        self.plan = Some(plan);
        Ok(Applied {
            inventory,
            refused,
            kernel_generation: dp.active_generation(),
            modes: dp
                .attachments()
                .map(|(ifindex, _, mode)| (ifindex, mode.label()))
                .collect(),
            attach_failures,
        })
    }

    fn scrape(&mut self) -> Result<KernelScrape, DataplaneError> {
        let dp = &self.dataplane;
        let counters = dp.counters()?;
        let uncounted = dp.uncounted()?;
        let faults = dp.faults()?;
        let (entries, capacity, events) = dp.conntrack()?;
        let maps = dp.footprints()?;
        let events_lost = dp.events_lost()?;
        use isolator_common::conntrack;
        let event = |i: u32| events[i as usize];
        let opened = event(conntrack::EVENT_CREATED);
        let reset = event(conntrack::EVENT_CLOSED);
        let expired = event(conntrack::EVENT_EXPIRED) + event(conntrack::EVENT_SWEPT);
        let revoked = event(conntrack::EVENT_REVOKED);
        let released = event(conntrack::EVENT_RELEASED);
        let reported = event(conntrack::EVENT_EVICTED_REPORTED);
        let estimate = metrics::evicted(opened, reset + expired + revoked + released, entries);
        let evicted = if estimate > reported {
            // Kept with the other counts, so that a restart does not start it over.
            if let Err(e) = self.dataplane.record_evicted_reported(estimate) {
                warn!(error = %error_chain(&e), "recording the eviction count in the kernel map");
            }
            estimate
        } else {
            reported
        };
        Ok(KernelScrape {
            counters,
            uncounted,
            faults,
            conntrack: ConntrackStats {
                entries,
                capacity,
                opened,
                reset,
                expired,
                revoked,
                released,
                evicted,
            },
            maps,
            events_lost,
            guarded: self
                .guarded
                .iter()
                .map(|(ifindex, name)| (*ifindex, name.clone()))
                .collect(),
        })
    }
}

/// Writes the kernel's aya-log records (what it could not record) into the daemon's log
/// whenever there are some.
async fn follow_kernel_log(logger: KernelLogger) {
    // SAFETY: the logger owns its file descriptor (the ring buffer map's) for as long as
    // it lives, and the AsyncFd owns the logger.
    let mut logger = match unsafe { tokio::io::unix::AsyncFd::register(logger) } {
        Ok(logger) => logger,
        Err(e) => {
            warn!(error = %e, "cannot follow the kernel's log records");
            return;
        }
    };
    loop {
        let Ok(mut ready) = logger.readable_mut().await else {
            return;
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = term.recv() => info!("SIGTERM received"),
    }
}

#[derive(Clone)]
struct Http {
    kernel: KernelHandle,
    status: watch::Receiver<Status>,
    chronicle: Arc<Chronicle>,
    detail: metrics::Detail,
    verified: watch::Receiver<Verified>,
    /// A fleet daemon's connection to etcd.
    fleet: Option<watch::Receiver<crate::fleet::follow::LinkState>>,
}

/// Each interface the policy claims, enforced or not, for `isolator_interface_enforced`:
/// attached vifs by their mode (a vif judged at TC ingress counts as enforced), and
/// refused ones (quarantined, attaching failed) as not.
fn enforcement(status: &Status) -> Vec<metrics::Enforcement> {
    let mut out = Vec::new();
    let refused: BTreeMap<&str, &str> = status
        .refused
        .iter()
        .map(|(device, _, reason)| (device.as_str(), *reason))
        .collect();
    for (ifindex, vif) in &status.inventory.vifs {
        let reason = refused.get(vif.device.as_str()).copied();
        let enforced = matches!(reason, None | Some("xdp_taken"));
        out.push(metrics::Enforcement {
            device: vif.device.clone(),
            mode: if enforced {
                status.modes.get(ifindex).copied().unwrap_or("none")
            } else {
                "none"
            }
            .to_string(),
            enforced,
        });
    }
    for device in refused.keys() {
        if !out.iter().any(|e| e.device == *device) {
            out.push(metrics::Enforcement {
                device: device.to_string(),
                mode: "none".into(),
                enforced: false,
            });
        }
    }
    out
}

async fn serve_metrics(State(http): State<Http>) -> impl IntoResponse {
    match http.kernel.scrape().await {
        Ok(kernel) => {
            let status = http.status.borrow().clone();
            let enforcement = enforcement(&status);
            let scrape = Scrape {
                inventory: status.inventory.with_unclassified(kernel.guarded),
                counters: kernel.counters,
                uncounted: kernel.uncounted,
                faults: kernel.faults,
                conntrack: kernel.conntrack,
                maps: kernel.maps,
                events_lost: kernel.events_lost,
                detail: http.detail,
                daemon: DaemonStats {
                    reloads: status.reloads,
                    reconcile_failing: status.reconcile_error.is_some(),
                    reconcile_failures: status.reconcile_failures,
                    netlink: status.netlink,
                    policy_sha256: status.provenance.sha256.clone(),
                    policy_signer: status.provenance.signer.clone().unwrap_or_default(),
                    signature_refusals: status.signature_refusals,
                    audit_write_failures: http.chronicle.failures(),
                    policy_generation: status.generation,
                    last_reload_success_ms: status.last_reload_success_ms,
                    attach_failures: status.attach_failures,
                    enforcement,
                    fleet: http.fleet.as_ref().map(|link| metrics::Fleet {
                        revision: status.fleet_revision,
                        connected: link.borrow().connected,
                    }),
                    topology: {
                        let v = http.verified.borrow();
                        metrics::Topology {
                            violations: v.counts.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
                            last_verify_ms: v.last_ms,
                        }
                    },
                    refused: status
                        .refused
                        .iter()
                        .map(|(device, _, reason)| Refused {
                            device: device.clone(),
                            reason,
                        })
                        .collect(),
                },
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                metrics::render(&scrape),
            )
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("reading the kernel counters failed: {e:#}\n"),
        ),
    }
}

async fn serve_health(State(http): State<Http>) -> impl IntoResponse {
    let status = http.status.borrow().clone();
    health(&status)
}

/// Tells systemd the service is ready once `/healthz` would answer 200 (every interface
/// the policy claims enforced, the kernel in line), and keeps its status line current.
async fn announce_readiness(mut status: watch::Receiver<Status>) {
    let mut ready = false;
    loop {
        let (line, healthy) = {
            let s = status.borrow_and_update();
            let (code, text) = health(&s);
            let healthy = code == StatusCode::OK;
            let problems = (!healthy).then(|| text.trim().replace('\n', "; "));
            (
                crate::service::status_line(s.inventory.vifs.len(), problems.as_deref()),
                healthy,
            )
        };
        if healthy && !ready {
            ready = true;
            crate::service::notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(&line),
            ]);
        } else {
            crate::service::notify(&[sd_notify::NotifyState::Status(&line)]);
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// `/healthz`: 200 when every interface that looks like a VM's is enforced and the kernel
/// is in line with the policy and the host; 503 naming what is not, otherwise.
fn health(status: &Status) -> (StatusCode, String) {
    let mut problems = Vec::new();
    if !status.refused.is_empty() {
        let names: Vec<String> = status
            .refused
            .iter()
            .map(|(device, why, _)| format!("{device} ({why})"))
            .collect();
        problems.push(format!("not enforcing on: {}", names.join(", ")));
    }
    if let Some(cause) = &status.reconcile_error {
        problems.push(format!(
            "not in line with the policy and the host (retrying): {cause}"
        ));
    }
    // What a refused reload left (enforcement is whole: the running policy stays).
    let notes = match &status.reload_refused {
        Some(why) => format!("last reload refused (the running policy stays): {why}\n"),
        None => String::new(),
    };
    if problems.is_empty() {
        (StatusCode::OK, format!("ok\n{notes}"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            problems.join("\n") + "\n" + &notes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_names_every_refused_interface_and_a_failing_reconcile() {
        assert_eq!(health(&Status::default()), (StatusCode::OK, "ok\n".into()));
        let status = Status {
            refused: vec![(
                "macvtap0".into(),
                "its link kind \"macvtap\" cannot be enforced as a vif".into(),
                "unsupported_kind",
            )],
            reconcile_error: Some("the policy needs 9000 interfaces".into()),
            ..Status::default()
        };
        let (code, text) = health(&status);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            text.contains("not enforcing on: macvtap0 (its link kind"),
            "{text}"
        );
        assert!(
            text.contains("retrying): the policy needs 9000 interfaces"),
            "{text}"
        );
    }

    /// This thread's nice value.
    fn own_nice() -> i32 {
        // SAFETY: neither call takes a pointer; `getpriority` may return -1 as a value, so
        // errno is cleared first and checked after.
        unsafe {
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t);
            assert_eq!(*libc::__errno_location(), 0, "getpriority failed");
            nice
        }
    }

    #[test]
    fn the_verification_thread_gives_way_to_enforcement() {
        let before = own_nice();
        let (name, nice, started) = spawn_verification(|| {
            let name = std::thread::current().name().map(str::to_owned);
            // What verification starts (the netlink runtime's threads) runs as it does.
            let started = std::thread::spawn(own_nice).join().expect("a thread");
            (name, own_nice(), started)
        })
        .expect("spawned")
        .join()
        .expect("joined");
        assert_eq!(name.as_deref(), Some("verify"));
        assert_eq!(nice, VERIFY_NICE);
        assert_eq!(started, VERIFY_NICE);
        // The daemon's other threads keep theirs.
        assert_eq!(own_nice(), before);
    }
}
