//! The fleet source: one signed policy for many hosts, kept in etcd (docs/operations.md,
//! "Fleet").
//!
//! Keys under a prefix `P` (`--policy-source etcd://HOST:PORT[,HOST:PORT...]/P`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `P/policy/GROUP` | a [`Bundle`]: the policy's text and its signature | `isolator publish` |
//! | `P/status/HOST` | a [`HostStatus`], under the host's lease: gone when the host is | each daemon |
//! | `P/hosts/HOST` | a [`Registration`], no lease: the host was part of the fleet | each daemon |
//!
//! A daemon follows the one bundle of its group (`--fleet-group`, `default` unless told):
//! a canary group, or a group of one host, gets a bundle before the rest. The bundle's
//! revision is the key's etcd `mod_revision`; a daemon never puts a revision older than
//! the one in force into effect.

pub mod cache;
pub mod cli;
pub mod follow;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};

/// The bundle format this build writes and reads.
pub const BUNDLE_FORMAT: u32 = 1;

/// The group a daemon follows unless `--fleet-group` says otherwise.
pub const DEFAULT_GROUP: &str = "default";

/// Where a daemon keeps the last good bundle unless `--fleet-cache` says otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/isolator/fleet";

/// How long a host's status outlives the host (its lease), unless told otherwise.
pub const DEFAULT_LEASE_SECONDS: i64 = 15;

/// How long one request to etcd may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// An etcd cluster and the prefix under which the fleet's keys are:
/// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`, or `etcds://...` for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// `HOST:PORT` of each member.
    pub endpoints: Vec<String>,
    /// The prefix, with a leading `/` and no trailing one.
    pub prefix: String,
    /// Whether to speak TLS (`etcds://`).
    pub tls: bool,
}

impl FromStr for Location {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Location> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("etcd://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("etcds://") {
            (true, rest)
        } else {
            bail!(
                "{text:?}: expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX (or etcds:// for TLS)"
            );
        };
        let (hosts, prefix) = rest
            .split_once('/')
            .ok_or_else(|| anyhow!("{text:?}: no /PREFIX after the members (e.g. /isolator)"))?;
        let mut endpoints = Vec::new();
        for member in hosts.split(',') {
            let (host, port) = member
                .rsplit_once(':')
                .ok_or_else(|| anyhow!("{text:?}: member {member:?} has no :PORT"))?;
            if host.is_empty() || host.contains(['/', '@', ' ']) {
                bail!("{text:?}: member {member:?} has no valid host");
            }
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| anyhow!("{text:?}: member {member:?}: {port:?} is not a port"))?;
            endpoints.push(member.to_string());
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            bail!("{text:?}: the prefix is empty (e.g. etcd://{hosts}/isolator)");
        }
        if prefix.split('/').any(|part| !valid_name(part)) {
            bail!(
                "{text:?}: the prefix {prefix:?} may hold only letters, digits, '.', '_', '-' \
                 between single slashes"
            );
        }
        Ok(Location {
            endpoints,
            prefix: format!("/{prefix}"),
            tls,
        })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "etcds" } else { "etcd" };
        write!(f, "{scheme}://{}{}", self.endpoints.join(","), self.prefix)
    }
}

impl Location {
    /// The key of a group's bundle.
    pub fn policy_key(&self, group: &str) -> String {
        format!("{}/policy/{group}", self.prefix)
    }

    /// The prefix of every group's bundle.
    pub fn policies(&self) -> String {
        format!("{}/policy/", self.prefix)
    }

    /// The key of a host's status (under its lease).
    pub fn status_key(&self, host: &str) -> String {
        format!("{}/status/{host}", self.prefix)
    }

    pub fn statuses(&self) -> String {
        format!("{}/status/", self.prefix)
    }

    /// The key that says a host is part of the fleet (no lease).
    pub fn host_key(&self, host: &str) -> String {
        format!("{}/hosts/{host}", self.prefix)
    }

    pub fn hosts(&self) -> String {
        format!("{}/hosts/", self.prefix)
    }
}

/// Whether `name` may be a group, a host or a part of the prefix: 1 to 64 of letters,
/// digits, `.`, `_` and `-`, not `.` or `..`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "."
        && name != ".."
}

/// Checks a group or host name given on the command line.
pub fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    if !valid_name(name) {
        bail!("{what} {name:?}: use 1 to 64 letters, digits, '.', '_' or '-'");
    }
    Ok(())
}

/// This host's name (for its status key), as the kernel knows it.
pub fn hostname() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the host name");
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    // The short name: a status key per machine, not per domain.
    Ok(name.split('.').next().unwrap_or_default().to_string())
}

/// What `isolator publish` writes under `P/policy/GROUP`: the policy's text and its
/// detached signature (the text of `FILE.sig`), as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub format: u32,
    /// The policy, exactly as signed (YAML).
    pub policy: String,
    /// The signature file's text (`isolator sign`); `None`: unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The SHA-256 of `policy`, in hex (checked on decoding).
    pub sha256: String,
    /// When it was published (RFC 3339) and by whom (`user@host`).
    pub published_at: String,
    pub publisher: String,
}

impl Bundle {
    pub fn new(policy: String, signature: Option<String>, publisher: String) -> Bundle {
        Bundle {
            format: BUNDLE_FORMAT,
            sha256: crate::signing::digest(policy.as_bytes()),
            policy,
            signature,
            published_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            publisher,
        }
    }

    /// Reads a bundle as stored in etcd; refuses another format and a hash that does not
    /// match the policy (a bundle changed by hand).
    pub fn decode(bytes: &[u8]) -> anyhow::Result<Bundle> {
        let bundle: Bundle = serde_json::from_slice(bytes)
            .context("not a policy bundle (JSON, see `isolator publish`)")?;
        if bundle.format != BUNDLE_FORMAT {
            bail!(
                "bundle format {} (this build reads format {BUNDLE_FORMAT}): publish it again \
                 with this version's `isolator publish`",
                bundle.format
            );
        }
        let digest = crate::signing::digest(bundle.policy.as_bytes());
        if digest != bundle.sha256 {
            bail!(
                "the bundle says its policy's SHA-256 is {}, but it is {digest} (changed after \
                 publishing?)",
                bundle.sha256
            );
        }
        Ok(bundle)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A bundle as a daemon received it: where from, at which revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The etcd key.
    pub key: String,
    /// The key's `mod_revision`.
    pub revision: i64,
    pub bundle: Bundle,
}

impl Candidate {
    /// How the policy is named in diagnostics and logs: `etcd:KEY@REVISION`.
    pub fn name(&self) -> String {
        format!("etcd:{}@{}", self.key, self.revision)
    }
}

/// What a daemon says of itself under `P/status/HOST`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: String,
    pub group: String,
    pub version: String,
    pub pid: u32,
    /// The bundle revision in force (0: none from etcd).
    pub revision: i64,
    /// The policy in force: its SHA-256 and signer.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Policies put into effect since the daemon started.
    pub generation: u64,
    /// `etcd`, or `cache` while the daemon enforces its cached bundle (etcd unreachable
    /// at start).
    pub source: String,
    /// Interfaces enforced, and those refused with why.
    pub enforced: Vec<String>,
    pub failed: Vec<FailedInterface>,
    /// Why the last bundle (or the host's state) is not in force, while that lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The revision refused last, while no later one is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_revision: Option<i64>,
    /// The daemon's own verification of the host (`isolator verify`): findings, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySummary>,
    /// When the policy in force was put into effect, and when this status was written
    /// (Unix milliseconds).
    pub applied_at_ms: u64,
    pub updated_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedInterface {
    pub device: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifySummary {
    /// Findings of the last verification (0: the host is as the policy says).
    pub findings: u64,
    pub at_ms: u64,
}

/// What a daemon writes once under `P/hosts/HOST`: it belongs to the fleet, so that its
/// absence from `P/status/` shows as gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub group: String,
    /// When the daemon last started (Unix milliseconds).
    pub started_ms: u64,
}

/// TLS for etcd (`etcds://`): the CA that signed the members' certificates, and this
/// client's certificate and key when the members ask for one.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// The CA certificate (PEM) that etcd's server certificates are checked against
    /// (etcds:// only).
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// This client's certificate (PEM), for members started with --client-cert-auth.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The key (PEM) of --etcd-cert.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// The name the members' certificates must carry, if not the host in the URL.
    #[arg(long, value_name = "NAME")]
    pub etcd_domain: Option<String>,
}

impl TlsArgs {
    fn given(&self) -> bool {
        self.etcd_ca.is_some() || self.etcd_cert.is_some() || self.etcd_domain.is_some()
    }
}

/// Connects to the cluster at `location`. The connection is made lazily, member by
/// member, and again after every failure: a cluster that is down now is not an error
/// here, only its requests fail. Dead connections are noticed within seconds (HTTP/2
/// pings every 2 s, even while idle).
pub async fn connect(location: &Location, tls: &TlsArgs) -> anyhow::Result<etcd_client::Client> {
    let mut options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    let scheme = if location.tls {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
        };
        let mut config = etcd_client::TlsOptions::new();
        if let Some(ca) = &tls.etcd_ca {
            config = config.ca_certificate(etcd_client::Certificate::from_pem(read(
                ca,
                "etcd CA certificate (--etcd-ca)",
            )?));
        }
        if let (Some(cert), Some(key)) = (&tls.etcd_cert, &tls.etcd_key) {
            config = config.identity(etcd_client::Identity::from_pem(
                read(cert, "etcd client certificate (--etcd-cert)")?,
                read(key, "etcd client key (--etcd-key)")?,
            ));
        }
        if let Some(domain) = &tls.etcd_domain {
            config = config.domain_name(domain.clone());
        }
        options = options.with_tls(config);
        "https://"
    } else {
        if tls.given() {
            bail!(
                "--etcd-ca, --etcd-cert and --etcd-domain are for TLS: write the cluster as \
                 etcds://... instead of {location}"
            );
        }
        "http://"
    };
    let urls: Vec<String> = location
        .endpoints
        .iter()
        .map(|e| format!("{scheme}{e}"))
        .collect();
    etcd_client::Client::connect(urls, Some(options))
        .await
        .with_context(|| format!("connecting to etcd at {location}"))
}

/// Runs one request to etcd with [`REQUEST_TIMEOUT`].
pub async fn timed<T>(
    what: &str,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(anyhow!("{what}: {}", describe(&e))),
        Err(_) => Err(anyhow!(
            "{what}: no answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        )),
    }
}

/// An etcd client error in one line, with its causes.
pub fn describe(e: &etcd_client::Error) -> String {
    crate::error_chain(e)
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
