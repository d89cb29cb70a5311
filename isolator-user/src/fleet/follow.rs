//! The daemon's side of the fleet: following its group's bundle in etcd, and keeping its
//! status there under a lease.
//!
//! The follower reads the bundle once, then watches the key from the next revision. Every
//! new revision is offered to the controller, which puts it into effect through the same
//! checks as a reload (signature, validation, all-or-nothing swap) or refuses it. A lost
//! watch resumes from the revision after the last one seen; a watch whose revision was
//! compacted meanwhile (a long partition) reads the key again. Failures are retried with
//! exponential backoff and jitter, forever: enforcement never depends on etcd being up.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::{Bundle, HostStatus, Location, Registration, timed, unix_ms};

/// A revision of the bundle key, offered to the controller.
#[derive(Debug)]
pub struct Offer {
    pub key: String,
    pub revision: i64,
    /// The bundle, or why it is not one (not JSON, a hash that does not match, deleted).
    pub bundle: Result<Bundle, String>,
}

/// What the controller did with an [`Offer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// In force now.
    Applied,
    /// Refused: the policy in force stays.
    Refused(String),
    /// Not newer than the revision in force: ignored.
    Stale,
}

/// An offer and where to answer it.
pub type Submission = (Offer, oneshot::Sender<Outcome>);

/// The connection to etcd as the follower last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    pub connected: bool,
    /// Since when (Unix milliseconds; 0: never connected).
    pub since_ms: u64,
    /// The last failure, while not connected.
    pub error: Option<String>,
    /// Watches that were compacted away and led to a new read.
    pub rereads: u64,
    /// Reconnections after a lost connection or watch.
    pub reconnects: u64,
}

/// The longest wait between two attempts to reach etcd: a thousand hosts retrying at most
/// every 5 to 10 s are 100 to 200 requests a second, and a healed partition is noticed
/// within 10 s.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Exponential backoff with jitter: each wait is drawn between half and all of a bound
/// that doubles from `first` to `max`, so that a thousand hosts that lost etcd together
/// do not come back in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    bound: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            bound: first,
        }
    }

    pub fn reset(&mut self) {
        self.bound = self.first;
    }

    pub fn next_wait(&mut self) -> Duration {
        let mut random = [0u8; 4];
        let fraction = match getrandom::fill(&mut random) {
            Ok(()) => f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX),
            Err(_) => 1.0,
        };
        let wait = self.bound.mul_f64(0.5 + 0.5 * fraction);
        self.bound = (self.bound * 2).min(self.max);
        wait
    }
}

/// Follows the bundle at `key` for the controller.
pub struct Follower {
    pub client: Client,
    pub key: String,
    /// Where offers go.
    pub submit: mpsc::Sender<Submission>,
    /// The revision in force (0: none from etcd yet).
    pub in_force: i64,
    /// The newest revision the controller refused: not offered again (a new read after a
    /// reconnection finds it still there), the next one is.
    pub refused: i64,
    /// The revision to watch from; 0: read the key first.
    pub watch_from: i64,
    /// Asks for the key to be read again now (a reload).
    pub refresh: Arc<Notify>,
    pub link: watch::Sender<LinkState>,
    pub backoff: Backoff,
}

/// Why a watch ended.
enum Ended {
    /// The revision watched from was compacted: read the key again.
    Compacted(i64),
    /// The stream or the connection broke: resume after a wait.
    Lost(String),
    /// A reload asked for a new read.
    Refresh,
    /// The controller is gone: the daemon stops.
    Stopped,
}

impl Follower {
    pub async fn run(mut self) {
        loop {
            if self.watch_from == 0 {
                match self.read().await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        self.down(format!("{e:#}"));
                        let wait = self.backoff.next_wait();
                        warn!(error = %format!("{e:#}"), key = %self.key, retry_in_ms = wait.as_millis() as u64, "etcd: reading the policy bundle failed; the policy in force stays, retrying");
                        self.sleep_or_refresh(wait).await;
                        continue;
                    }
                }
            }
            match self.watch().await {
                Ended::Compacted(at) => {
                    info!(key = %self.key, from = self.watch_from, compacted = at, "etcd: the revisions since the last one seen were compacted away; reading the bundle again");
                    self.link.send_modify(|l| l.rereads += 1);
                    self.watch_from = 0;
                }
                Ended::Refresh => self.watch_from = 0,
                Ended::Stopped => return,
                Ended::Lost(why) => {
                    self.down(why.clone());
                    let wait = self.backoff.next_wait();
                    warn!(error = %why, key = %self.key, resume_from = self.watch_from, retry_in_ms = wait.as_millis() as u64, "etcd: the watch was lost; the policy in force stays, resuming");
                    self.link.send_modify(|l| l.reconnects += 1);
                    self.sleep_or_refresh(wait).await;
                }
            }
        }
    }

    async fn sleep_or_refresh(&mut self, wait: Duration) {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.refresh.notified() => self.watch_from = 0,
        }
    }

    fn up(&mut self) {
        self.backoff.reset();
        self.link.send_modify(|l| {
            if !l.connected {
                info!(key = %self.key, "etcd: connected; following the policy bundle");
                l.connected = true;
                l.since_ms = unix_ms();
            }
            l.error = None;
        });
    }

    fn down(&mut self, error: String) {
        self.link.send_modify(|l| {
            if l.connected {
                l.since_ms = unix_ms();
            }
            l.connected = false;
            l.error = Some(error);
        });
    }

    /// Reads the key and offers what it holds; sets where to watch from. `Ok(false)`: the
    /// controller is gone.
    async fn read(&mut self) -> anyhow::Result<bool> {
        let response = timed(
            "reading the policy bundle",
            self.client.get(self.key.clone(), None),
        )
        .await?;
        self.up();
        let header = response.header().map_or(0, |h| h.revision());
        match response.kvs().first() {
            Some(kv) => {
                let offer = Offer {
                    key: self.key.clone(),
                    revision: kv.mod_revision(),
                    bundle: Bundle::decode(kv.value()).map_err(|e| format!("{e:#}")),
                };
                if !self.offer(offer).await {
                    return Ok(false);
                }
            }
            None => {
                warn!(key = %self.key, "etcd: no policy bundle is published for this host's group (isolator publish); the policy in force stays");
            }
        }
        self.watch_from = header + 1;
        Ok(true)
    }

    async fn watch(&mut self) -> Ended {
        let options = WatchOptions::new().with_start_revision(self.watch_from);
        let mut stream = match timed(
            "watching the policy bundle",
            self.client.watch(self.key.clone(), Some(options)),
        )
        .await
        {
            Ok(stream) => stream,
            Err(e) => return Ended::Lost(format!("{e:#}")),
        };
        loop {
            let message = tokio::select! {
                () = self.refresh.notified() => return Ended::Refresh,
                message = stream.message() => message,
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => return Ended::Lost("etcd ended the watch".into()),
                Err(e) => return Ended::Lost(super::describe(&e)),
            };
            if response.compact_revision() > 0 {
                return Ended::Compacted(response.compact_revision());
            }
            if response.canceled() {
                return Ended::Lost(format!(
                    "etcd canceled the watch: {}",
                    response.cancel_reason()
                ));
            }
            if response.created() {
                self.up();
                debug!(key = %self.key, from = self.watch_from, "etcd: watching");
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision();
                self.watch_from = self.watch_from.max(revision + 1);
                let bundle = match event.event_type() {
                    EventType::Put => Bundle::decode(kv.value()).map_err(|e| format!("{e:#}")),
                    EventType::Delete => Err(
                        "the bundle was deleted from etcd (publish one again with isolator publish)"
                            .to_string(),
                    ),
                };
                let offer = Offer {
                    key: self.key.clone(),
                    revision,
                    bundle,
                };
                if !self.offer(offer).await {
                    return Ended::Stopped;
                }
            }
        }
    }

    /// Offers a revision to the controller, unless it is not newer than the one in force;
    /// `false`: the controller is gone.
    async fn offer(&mut self, offer: Offer) -> bool {
        if offer.revision <= self.in_force {
            debug!(
                revision = offer.revision,
                in_force = self.in_force,
                "etcd: not newer than the bundle in force"
            );
            return true;
        }
        if offer.revision <= self.refused {
            debug!(
                revision = offer.revision,
                refused = self.refused,
                "etcd: refused already"
            );
            return true;
        }
        let revision = offer.revision;
        let (reply, answer) = oneshot::channel();
        if self.submit.send((offer, reply)).await.is_err() {
            return false;
        }
        match answer.await {
            Ok(Outcome::Applied) => self.in_force = revision,
            Ok(Outcome::Refused(_)) => self.refused = revision,
            Ok(Outcome::Stale) => {}
            Err(_) => return false,
        }
        true
    }
}

/// Keeps `P/status/HOST` up to date under a lease of `ttl` seconds, kept alive while the
/// daemon lives, and `P/hosts/HOST` written at each new lease. Writes when the status
/// changes (gathered over 100 ms). A lease that expired (a partition longer than `ttl`) is
/// replaced, and the status written again.
pub async fn publish_status(
    client: Client,
    location: Location,
    host: String,
    group: String,
    ttl: i64,
    mut status: watch::Receiver<HostStatus>,
) {
    let status_key = location.status_key(&host);
    let host_key = location.host_key(&host);
    let registration = Registration {
        group,
        started_ms: unix_ms(),
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), BACKOFF_MAX);
    let keep_alive_every = Duration::from_secs((ttl as u64 / 3).max(1));
    loop {
        let mut client = client.clone();
        let lease = match timed("granting the status lease", client.lease_grant(ttl, None)).await {
            Ok(lease) => lease.id(),
            Err(e) => {
                debug!(error = %format!("{e:#}"), "etcd: no status lease yet; retrying");
                tokio::time::sleep(backoff.next_wait()).await;
                continue;
            }
        };
        let written = async {
            timed(
                "registering the host",
                client.put(
                    host_key.clone(),
                    serde_json::to_vec(&registration).unwrap_or_default(),
                    None,
                ),
            )
            .await?;
            put_status(&mut client, &status_key, lease, &mut status).await
        }
        .await;
        if let Err(e) = written {
            debug!(error = %format!("{e:#}"), "etcd: writing the host's status failed; retrying");
            tokio::time::sleep(backoff.next_wait()).await;
            continue;
        }
        let (mut keeper, mut responses) = match timed(
            "keeping the status lease alive",
            client.lease_keep_alive(lease),
        )
        .await
        {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %format!("{e:#}"), "etcd: cannot keep the status lease alive; retrying");
                tokio::time::sleep(backoff.next_wait()).await;
                continue;
            }
        };
        backoff.reset();
        info!(key = %status_key, lease, ttl, "etcd: the host's status is published");
        let mut tick = tokio::time::interval(keep_alive_every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let alive = async {
                        keeper.keep_alive().await.ok()?;
                        let response = tokio::time::timeout(super::REQUEST_TIMEOUT, responses.message()).await.ok()?.ok()??;
                        (response.ttl() > 0).then_some(())
                    }.await;
                    if alive.is_none() {
                        warn!(key = %status_key, "etcd: the status lease could not be kept alive (expired or unreachable); a new one will be taken");
                        break;
                    }
                }
                changed = status.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Err(e) = put_status(&mut client, &status_key, lease, &mut status).await {
                        warn!(error = %format!("{e:#}"), "etcd: writing the host's status failed; a new lease will be taken");
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

async fn put_status(
    client: &mut Client,
    key: &str,
    lease: i64,
    status: &mut watch::Receiver<HostStatus>,
) -> anyhow::Result<()> {
    let mut value = status.borrow_and_update().clone();
    value.updated_at_ms = unix_ms();
    timed(
        "writing the host's status",
        client.put(
            key.to_string(),
            serde_json::to_vec(&value).unwrap_or_default(),
            Some(PutOptions::new().with_lease(lease)),
        ),
    )
    .await?;
    Ok(())
}

/// Reads every key under `prefix`: (key, value, mod_revision).
pub async fn read_prefix(
    client: &mut Client,
    prefix: &str,
) -> anyhow::Result<Vec<(String, Vec<u8>, i64)>> {
    let response = timed(
        "reading etcd",
        client.get(prefix.to_string(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    Ok(response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
                kv.mod_revision(),
            )
        })
        .collect())
}
