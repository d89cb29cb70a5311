//! `isolator run`: load the policy, enforce it on every matching interface, serve
//! `/metrics` and `/healthz`, and detach everything on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::compile::Plan;
use crate::dataplane::{AttachMode, Dataplane};
use crate::metrics::{self, ConntrackStats, Inventory};
use crate::{error_chain, netlink, policy};

/// Where `/metrics` and `/healthz` are served unless `--metrics-addr` says otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9647";

pub struct RunOptions {
    pub config: PathBuf,
    pub metrics_addr: SocketAddr,
}

/// How often idle tracked connections are swept from the kernel table.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

struct Shared {
    dataplane: Mutex<Dataplane>,
    inventory: Inventory,
    /// Interfaces the policy manages but the program could not be attached to.
    failures: Vec<String>,
    /// Connection tracking figures kept by the daemon.
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    /// Idle connections the sweep removed.
    swept: u64,
    /// Highest eviction count reported so far (the estimate can dip while the table
    /// changes between the reads it is made of; a counter must not).
    evicted: u64,
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

    let links = netlink::list_links().await?;
    let plan = Plan::new(&policy, &links)?;
    if plan.vifs.is_empty() {
        warn!(
            "the policy matches no interface of this host; nothing is enforced until one appears"
        );
    }

    let mut dataplane =
        Dataplane::load().context("loading the kernel programs (are you root, kernel >= 6.6?)")?;
    dataplane
        .apply(&plan)
        .context("writing the policy into the kernel maps")?;
    let mut failures = Vec::new();
    for vif in &plan.vifs {
        let segment = plan.segment_label(vif.segment);
        match dataplane.attach(&vif.name, vif.ifindex) {
            Ok(AttachMode::Native) => info!(device = %vif.name, %segment, "enforcing (native XDP)"),
            Ok(AttachMode::Generic) => warn!(
                device = %vif.name, %segment,
                "enforcing in generic XDP mode: the driver refused native mode; correct but slower"
            ),
            Err(e) => {
                error!(device = %vif.name, %segment, error = %error_chain(&e), "NOT enforcing on this interface");
                failures.push(vif.name.clone());
            }
        }
    }
    let inventory = Inventory::new(
        &plan,
        dataplane.attachments().map(|(ifindex, _, _)| ifindex),
    );
    let shared = Arc::new(Shared {
        dataplane: Mutex::new(dataplane),
        inventory,
        failures,
        tally: Mutex::new(Tally::default()),
    });
    let sweeper = tokio::spawn(sweep_connections(shared.clone(), plan.settings));

    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(serve_health))
        .with_state(shared.clone());
    info!(addr = %opts.metrics_addr, "serving /metrics and /healthz");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;

    sweeper.abort();
    let mut dataplane = shared.dataplane.lock().unwrap_or_else(|p| p.into_inner());
    let failed = dataplane.detach_all();
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
async fn sweep_connections(shared: Arc<Shared>, settings: isolator_common::Settings) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        interval.tick().await;
        let shared = shared.clone();
        let swept = tokio::task::spawn_blocking(move || {
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
            Ok(Ok(n)) if n > 0 => tracing::debug!(removed = n, "swept idle connections"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %error_chain(&e), "sweeping idle connections failed"),
            Err(e) => warn!(error = %e, "the connection sweep task failed"),
        }
    }
}

/// Reads everything a scrape shows from the kernel.
fn snapshot(
    shared: &Shared,
) -> Result<
    (
        Vec<(isolator_common::CounterKey, isolator_common::Counter)>,
        ConntrackStats,
    ),
    crate::dataplane::DataplaneError,
> {
    let dataplane = shared.dataplane.lock().unwrap_or_else(|p| p.into_inner());
    let counters = dataplane.counters()?;
    let (entries, events) = dataplane.conntrack()?;
    drop(dataplane);
    let mut tally = shared.tally.lock().unwrap_or_else(|p| p.into_inner());
    let opened = events[isolator_common::conntrack::EVENT_CREATED as usize];
    let reset = events[isolator_common::conntrack::EVENT_CLOSED as usize];
    let expired = events[isolator_common::conntrack::EVENT_EXPIRED as usize] + tally.swept;
    // Whatever was opened and is neither live nor ended by RST or timeout was evicted.
    let evicted = opened.saturating_sub(reset + expired + entries);
    tally.evicted = tally.evicted.max(evicted);
    Ok((
        counters,
        ConntrackStats {
            entries,
            capacity: u64::from(isolator_common::limits::MAX_CONNECTIONS),
            opened,
            reset,
            expired,
            evicted: tally.evicted,
        },
    ))
}

async fn serve_metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match snapshot(&shared) {
        Ok((counters, conntrack)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            metrics::render(&shared.inventory, &counters, &conntrack),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("reading the kernel counters failed: {}\n", error_chain(&e)),
        ),
    }
}

async fn serve_health(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.failures.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not enforcing on: {}\n", shared.failures.join(", ")),
        )
    }
}
