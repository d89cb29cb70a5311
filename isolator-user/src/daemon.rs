//! `isolator run`: load the policy, enforce it on every matching interface, follow
//! interfaces as they come and go, reload the policy on SIGHUP, serve `/metrics` and
//! `/healthz`, and detach everything on SIGINT/SIGTERM.
//!
//! Every change goes through [`reconcile`]: list the links, compile a plan from the
//! policy and the links, swap it into the kernel all at once, then attach to the new
//! vifs and detach from the ones that are gone. A policy that does not validate, or a
//! plan the kernel refuses, leaves the running policy in force.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use futures::StreamExt as _;
use rtnetlink::sys::AsyncSocket as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, error, info, warn};

use crate::compile::Plan;
use crate::dataplane::{AttachMode, Dataplane};
use crate::metrics::{self, ConntrackStats, Inventory, ReloadStats};
use crate::policy::Policy;
use crate::recheck::Recheck;
use crate::{error_chain, netlink, policy};

/// Where `/metrics` and `/healthz` are served unless `--metrics-addr` says otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9647";

/// Where pinned maps and links live unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/sys/fs/bpf/isolator";

pub struct RunOptions {
    pub config: PathBuf,
    pub metrics_addr: SocketAddr,
    /// A bpffs directory for pinned maps and links (one per daemon).
    pub state_dir: PathBuf,
    /// On SIGINT/SIGTERM, leave the programs enforcing for the next daemon.
    pub persist: bool,
}

/// How often idle tracked connections are swept from the kernel table.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// How long link events are gathered before the daemon reconciles once for all of them.
const LINK_SETTLE: Duration = Duration::from_millis(50);

/// rtnetlink multicast group mask of link events.
const RTMGRP_LINK: u32 = 1;

struct Shared {
    /// Held for a whole [`reconcile`]: one change at a time.
    reconciling: tokio::sync::Mutex<()>,
    dataplane: Mutex<Dataplane>,
    state: RwLock<Enforced>,
    /// Connection tracking figures kept by the daemon.
    tally: Mutex<Tally>,
}

/// What is in force.
struct Enforced {
    policy: Policy,
    plan: Plan,
    inventory: Inventory,
    /// Interfaces the policy manages but the programs could not be attached to.
    failures: Vec<String>,
}

#[derive(Default)]
struct Tally {
    /// Idle connections the sweep removed.
    swept: u64,
    /// Connections removed because a new policy no longer admits them.
    revoked: u64,
    /// Highest eviction count reported so far (the estimate can dip while the table
    /// changes between the reads it is made of; a counter must not).
    evicted: u64,
    reloads: ReloadStats,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let policy = policy::load(&opts.config).map_err(|diagnostics| {
        anyhow!("{diagnostics}the policy is not valid; nothing was loaded (see `isolator check`)")
    })?;
    info!(config = %opts.config.display(), summary = %policy.summary(), "policy is valid");

    // Bind first: a port conflict should fail before anything is attached.
    let listener = tokio::net::TcpListener::bind(opts.metrics_addr)
        .await
        .with_context(|| {
            format!(
                "binding the metrics address {}; choose a free one with --metrics-addr",
                opts.metrics_addr
            )
        })?;

    // Subscribe to link events before listing the links, so that none is missed.
    let (mut connection, _handle, mut link_events) =
        rtnetlink::new_connection().context("opening a netlink socket for link events")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&rtnetlink::sys::SocketAddr::new(0, RTMGRP_LINK))
        .context("subscribing to link events")?;
    let link_task = tokio::spawn(connection);

    let dataplane = Dataplane::load_pinned(&opts.state_dir).with_context(|| {
        format!(
            "loading the kernel programs with their state in {} (are you root, kernel >= \
                 6.6, bpffs mounted at /sys/fs/bpf?)",
            opts.state_dir.display()
        )
    })?;
    let shared = Arc::new(Shared {
        reconciling: tokio::sync::Mutex::new(()),
        dataplane: Mutex::new(dataplane),
        state: RwLock::new(Enforced {
            policy: policy.clone(),
            plan: Plan::default(),
            inventory: Inventory::default(),
            failures: Vec::new(),
        }),
        tally: Mutex::new(Tally::default()),
    });
    reconcile(&shared, Some(policy))
        .await
        .context("putting the policy into effect")?;

    let sweeper = tokio::spawn(sweep_connections(shared.clone()));
    let follower = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while link_events.next().await.is_some() {
                // Gather the burst (a VM start brings several events), then reconcile once.
                tokio::time::sleep(LINK_SETTLE).await;
                while let Ok(Some(_)) =
                    tokio::time::timeout(Duration::ZERO, link_events.next()).await
                {}
                if let Err(e) = reconcile(&shared, None).await {
                    error!(error = %format!("{e:#}"), "following an interface change failed; the previous state stays in force");
                }
            }
            warn!("the link event stream ended: interfaces are no longer followed");
        })
    };
    let reloader = {
        let shared = shared.clone();
        let config = opts.config.clone();
        let mut hangup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                reload(&shared, &config).await;
            }
        })
    };

    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(serve_health))
        .with_state(shared.clone());
    info!(addr = %opts.metrics_addr, "serving /metrics and /healthz");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;

    for task in [sweeper, follower, reloader, link_task] {
        task.abort();
    }
    let mut dataplane = shared.dataplane.lock().unwrap_or_else(|p| p.into_inner());
    if opts.persist {
        info!(
            state_dir = %opts.state_dir.display(),
            "--persist: leaving every interface enforced for the next daemon; exiting"
        );
        return Ok(());
    }
    let failed = dataplane.shut_down(Some(&opts.state_dir));
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

/// SIGHUP: validate the file again and put it into effect, or keep the running policy.
async fn reload(shared: &Shared, config: &std::path::Path) {
    info!(config = %config.display(), "SIGHUP: reloading the policy");
    let outcome = match policy::load(config) {
        Err(diagnostics) => Err(anyhow!(
            "{diagnostics}the new policy is not valid; the running policy stays in force"
        )),
        Ok(policy) => {
            let summary = policy.summary();
            reconcile(shared, Some(policy))
                .await
                .map(|()| summary)
                .context("the new policy could not be put into effect; the running policy stays in force")
        }
    };
    let mut tally = shared.tally.lock().unwrap_or_else(|p| p.into_inner());
    match outcome {
        Ok(summary) => {
            tally.reloads.succeeded += 1;
            info!(%summary, "policy reloaded");
        }
        Err(e) => {
            tally.reloads.failed += 1;
            error!("{e:#}");
        }
    }
}

/// Brings the kernel in line with `policy` (or the policy in force) and the host's
/// links as they are now. On error nothing changed in the kernel's policy.
async fn reconcile(shared: &Shared, policy: Option<Policy>) -> anyhow::Result<()> {
    let _one_at_a_time = shared.reconciling.lock().await;
    let links = netlink::list_links().await?;
    let policy_changed = policy.is_some();
    let policy = match policy {
        Some(p) => p,
        None => shared
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .policy
            .clone(),
    };
    let plan = Plan::new(&policy, &links)?;
    let mut dataplane = shared.dataplane.lock().unwrap_or_else(|p| p.into_inner());

    // Detach from interfaces the new plan no longer manages (gone, renamed, or dropped
    // from the policy) before the swap; attach to new ones after it, so that a program
    // never runs on a vif without its entries.
    let wanted: BTreeSet<(u32, &str)> = plan
        .vifs
        .iter()
        .map(|v| (v.ifindex, v.name.as_str()))
        .collect();
    let stale: Vec<(u32, String)> = dataplane
        .attachments()
        .filter(|(ifindex, name, _)| !wanted.contains(&(*ifindex, *name)))
        .map(|(ifindex, name, _)| (ifindex, name.to_string()))
        .collect();
    for (ifindex, name) in stale {
        match dataplane.detach(ifindex) {
            Ok(()) => info!(device = %name, "no longer managed: detached"),
            // A deleted interface takes its programs with it.
            Err(e) => {
                debug!(device = %name, error = %error_chain(&e), "detaching a vanished interface")
            }
        }
    }

    let unchanged =
        !policy_changed && shared.state.read().unwrap_or_else(|p| p.into_inner()).plan == plan;
    if !unchanged {
        dataplane
            .apply(&plan)
            .context("writing the policy into the kernel maps")?;
        // Connections the old policy admitted are judged again by the new one.
        match dataplane.revoke_connections(&Recheck::new(&plan)) {
            Ok(0) => {}
            Ok(n) => {
                info!(
                    count = n,
                    "removed tracked connections the policy no longer admits"
                );
                shared
                    .tally
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .revoked += n;
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

    let mut failures = Vec::new();
    for vif in &plan.vifs {
        if dataplane
            .attachments()
            .any(|(ifindex, _, _)| ifindex == vif.ifindex)
        {
            continue;
        }
        let segment = plan.segment_label(vif.segment);
        match dataplane.attach(&vif.name, vif.ifindex) {
            Ok(AttachMode::Native) => info!(device = %vif.name, %segment, "enforcing (native XDP)"),
            Ok(AttachMode::Generic) => warn!(
                device = %vif.name, %segment,
                "enforcing in generic XDP mode: the driver refused native mode; correct but slower"
            ),
            Ok(AttachMode::TakenOver) => info!(
                device = %vif.name, %segment,
                "enforcing (took over the previous daemon's programs without a gap)"
            ),
            Err(e) => {
                error!(device = %vif.name, %segment, error = %error_chain(&e), "NOT enforcing on this interface");
                failures.push(vif.name.clone());
            }
        }
    }
    let released = dataplane.release_leftovers();
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
    let attached: BTreeSet<u32> = dataplane.attachments().map(|(i, _, _)| i).collect();
    if let Err(e) = dataplane.prune_counters(&attached) {
        warn!(error = %error_chain(&e), "removing the counters of vanished interfaces failed");
    }
    let inventory = Inventory::new(&plan, attached);
    drop(dataplane);
    *shared.state.write().unwrap_or_else(|p| p.into_inner()) = Enforced {
        policy,
        plan,
        inventory,
        failures,
    };
    Ok(())
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

/// Removes idle connections from the kernel table every [`SWEEP_INTERVAL`].
async fn sweep_connections(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        interval.tick().await;
        let shared = shared.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let settings = shared
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .plan
                .settings;
            let mut dataplane = shared.dataplane.lock().unwrap_or_else(|p| p.into_inner());
            let result = dataplane.sweep_connections(&settings);
            drop(dataplane);
            if let Ok(n) = result {
                shared.tally.lock().unwrap_or_else(|p| p.into_inner()).swept += n;
            }
            result
        })
        .await;
        match swept {
            Ok(Ok(n)) if n > 0 => debug!(removed = n, "swept idle connections"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %error_chain(&e), "sweeping idle connections failed"),
            Err(e) => warn!(error = %e, "the connection sweep task failed"),
        }
    }
}

type Snapshot = (
    Vec<(isolator_common::CounterKey, isolator_common::Counter)>,
    ConntrackStats,
    ReloadStats,
);

/// Reads everything a scrape shows from the kernel.
fn snapshot(shared: &Shared) -> Result<Snapshot, crate::dataplane::DataplaneError> {
    let dataplane = shared.dataplane.lock().unwrap_or_else(|p| p.into_inner());
    let counters = dataplane.counters()?;
    let (entries, events) = dataplane.conntrack()?;
    drop(dataplane);
    let mut tally = shared.tally.lock().unwrap_or_else(|p| p.into_inner());
    let opened = events[isolator_common::conntrack::EVENT_CREATED as usize];
    let reset = events[isolator_common::conntrack::EVENT_CLOSED as usize];
    let expired = events[isolator_common::conntrack::EVENT_EXPIRED as usize] + tally.swept;
    let revoked = tally.revoked;
    let evicted = metrics::evicted(opened, reset, expired, revoked, entries);
    tally.evicted = tally.evicted.max(evicted);
    Ok((
        counters,
        ConntrackStats {
            entries,
            capacity: u64::from(isolator_common::limits::MAX_CONNECTIONS),
            opened,
            reset,
            expired,
            revoked,
            evicted: tally.evicted,
        },
        tally.reloads,
    ))
}

async fn serve_metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match snapshot(&shared) {
        Ok((counters, conntrack, reloads)) => {
            let state = shared.state.read().unwrap_or_else(|p| p.into_inner());
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                metrics::render(&state.inventory, &counters, &conntrack, &reloads),
            )
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("reading the kernel counters failed: {}\n", error_chain(&e)),
        ),
    }
}

async fn serve_health(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let state = shared.state.read().unwrap_or_else(|p| p.into_inner());
    if state.failures.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not enforcing on: {}\n", state.failures.join(", ")),
        )
    }
}
