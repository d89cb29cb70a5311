//! The control socket: `isolator status` and `isolator reload` talk to the running daemon
//! through a Unix socket (docs/operations.md, "Control socket").
//!
//! One request per connection: the client writes one JSON line (`{"request":"status"}` or
//! `{"request":"reload"}`), the daemon answers with one JSON line ([`Response`]) and
//! closes. The socket is the daemon's own user's (root) with mode 0600, or 0660 with
//! `--control-group`; the daemon also checks each caller's credentials (`SO_PEERCRED`)
//! and refuses anyone but root, its own user and members of that group. Every request,
//! refused ones included, is logged and written to the audit log with the caller's uid,
//! gid and pid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Where the socket is unless `--control-socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/isolator/control.sock";

/// The longest request line accepted.
const MAX_REQUEST: usize = 4096;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// What the daemon enforces now.
    Status,
    /// Reload the policy file (as SIGHUP does) and say how it went.
    Reload,
    /// Stream the programs' reports (management attempts, and one drop in `every` while
    /// the stream is open) that `filter` matches, one JSON line each, after a first
    /// [`Response`] line; the programs report drops only while a monitor is connected.
    Monitor {
        #[serde(default)]
        filter: crate::events::Filter,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        every: Option<u32>,
    },
}

impl Request {
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Reload => "reload",
            Request::Monitor { .. } => "monitor",
        }
    }
}

/// The daemon's answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadReport>,
}

/// What `isolator status` shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's version.
    pub version: String,
    /// Policies put into effect since the daemon started (1 for the one it started
    /// with, one more for each successful reload).
    pub generation: u64,
    /// The kernel maps' generation the programs judge by (0 or 1; it flips at each swap).
    pub kernel_generation: u32,
    pub policy: PolicyReport,
    pub interfaces: Vec<InterfaceReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<LastReload>,
    /// Why the kernel is not in line with the policy and the host, while that lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile_error: Option<String>,
    pub counters: CountersReport,
    /// A fleet daemon's bundle source (`--policy-source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditReport>,
}

/// Where a fleet daemon's policy comes from, and how its connection to etcd is.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FleetReport {
    /// The bundle's key, this host's name and group.
    pub key: String,
    pub host: String,
    pub group: String,
    /// The revision in force (0: none from etcd) and where it came from (`etcd`, `cache`).
    pub revision: i64,
    pub source: String,
    /// The revision refused last, while no later one is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_revision: Option<i64>,
    /// Whether etcd answers now, since when (Unix milliseconds), and the last failure.
    pub connected: bool,
    pub since_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Watches compacted away (the bundle read again), and reconnections.
    pub rereads: u64,
    pub reconnects: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PolicyReport {
    pub file: String,
    pub sha256: String,
    /// The signer's key id, when the daemon checks signatures (`--trusted-keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    pub summary: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InterfaceReport {
    pub device: String,
    pub ifindex: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// `enforced`, `refused` or `guarded` (attached, not classified yet: nothing passes).
    pub state: String,
    /// How it is attached: `native`, `generic`, `taken_over` (from a previous daemon),
    /// `tc_ingress` (another program holds its XDP hook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Why it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LastReload {
    /// RFC 3339.
    pub time: String,
    /// `ok` or `refused`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every vif's counters summed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CountersReport {
    pub passed_packets: u64,
    pub dropped_packets: u64,
    /// Drops by reason (audited drops, which passed, included).
    pub dropped_by_reason: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuditReport {
    pub path: String,
    /// The next record's number.
    pub next_seq: u64,
    /// Records that could not be written since the daemon started.
    pub failures: u64,
}

/// How a reload through the socket went.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReloadReport {
    /// `ok` or `refused` (the running policy stays in force).
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// Who is on the other end of a connection (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// Who may use the socket: root, the daemon's own user, members of `group`.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    pub owner: u32,
    pub group: Option<u32>,
}

impl Access {
    /// Whether `caller` may ask anything; `groups` lists the caller's supplementary
    /// groups (from /proc; `None` when they could not be read).
    pub fn allows(&self, caller: &Caller, groups: Option<&[u32]>) -> bool {
        if caller.uid == 0 || caller.uid == self.owner {
            return true;
        }
        match self.group {
            Some(group) => caller.gid == group || groups.is_some_and(|g| g.contains(&group)),
            None => false,
        }
    }
}

/// A process's supplementary groups, from `/proc/PID/status`.
pub fn supplementary_groups(pid: i32) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(
        line.split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}

/// Resolves a group given by name or number.
pub fn group_id(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").context("reading /etc/group")?;
    text.lines()
        .find_map(|l| {
            let mut fields = l.split(':');
            (fields.next() == Some(group))
                .then(|| fields.nth(1).and_then(|g| g.parse().ok()))
                .flatten()
        })
        .ok_or_else(|| anyhow!("no group {group:?} in /etc/group (give a name or a number)"))
}

/// Binds the socket at `path` with the right owner and mode. A socket file left by a
/// daemon that is gone is replaced; one a running daemon answers on is not.
pub async fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("creating the control socket's directory {}", dir.display())
        })?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "{} is in use: another daemon is running (stop it, or give this one its own \
                 --control-socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // Created with no permission for anyone else, then opened up as configured: there is
    // no moment where another user could connect.
    // SAFETY: umask only changes this process's file creation mask, restored at once.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener =
        listener.with_context(|| format!("binding the control socket {}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o660))
            .with_context(|| format!("opening {} to its group", path.display()))?;
    }
    Ok(listener)
}

/// Reads one request from a connection, within 5 s and 4 KiB.
pub async fn read_request(stream: &mut UnixStream) -> anyhow::Result<Request> {
    let limited = tokio::io::AsyncReadExt::take(&mut *stream, MAX_REQUEST as u64);
    let mut reader = BufReader::new(limited);
    let mut line = Vec::new();
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| anyhow!("no request within {REQUEST_TIMEOUT:?}"))?
        .context("reading the request")?;
    if line.len() >= MAX_REQUEST {
        bail!("the request is longer than {MAX_REQUEST} bytes");
    }
    serde_json::from_slice(&line).map_err(|e| {
        anyhow!(
            "not a request ({e}): send one JSON line, {{\"request\":\"status\"}}, \
             {{\"request\":\"reload\"}} or {{\"request\":\"monitor\"}}"
        )
    })
}

/// Writes the answer as one JSON line and closes the connection.
pub async fn write_response(stream: &mut UnixStream, response: &Response) -> anyhow::Result<()> {
    write_line(stream, response).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Writes one JSON line.
pub async fn write_line<W: tokio::io::AsyncWrite + Unpin>(
    stream: &mut W,
    value: &impl Serialize,
) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    Ok(())
}

/// A line of the monitor stream: a report, or how many reports a monitor that fell
/// behind missed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MonitorLine {
    Missed { missed: u64 },
    Report(Box<crate::events::Report>),
}

/// The client side of `isolator monitor`: sends the request, checks the first answer,
/// then calls `each` with every line until the daemon closes the stream (or `each`
/// returns false).
pub fn monitor(
    socket: &Path,
    request: &Request,
    mut each: impl FnMut(MonitorLine) -> bool,
) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let (reader, answer) = send(socket, request, None)?;
    if !answer.ok {
        bail!("{}", answer.error.unwrap_or_else(|| "refused".into()));
    }
    for line in reader.lines() {
        let line = line.context("reading the stream")?;
        let parsed: MonitorLine =
            serde_json::from_str(&line).with_context(|| format!("a monitor line: {line:?}"))?;
        if !each(parsed) {
            break;
        }
    }
    Ok(())
}

/// Connects to the daemon at `socket`, sends `request`, and reads the first answer line
/// (a caller the daemon refuses gets its answer at once, possibly before the request is
/// written: the answer is read even when writing failed).
fn send(
    socket: &Path,
    request: &Request,
    timeout: Option<Duration>,
) -> anyhow::Result<(std::io::BufReader<std::os::unix::net::UnixStream>, Response)> {
    use std::io::{BufRead as _, Write as _};
    let stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the daemon's control socket {} (is `isolator run` running, and \
             are you root or in its --control-group?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    let sent = (&stream).write_all(&line);
    let mut reader = std::io::BufReader::new(stream);
    let mut answer = String::new();
    let read = reader.read_line(&mut answer);
    if answer.is_empty() {
        sent.context("sending the request")?;
        read.context("reading the daemon's answer")?;
        bail!("the daemon closed the connection without answering");
    }
    let answer = serde_json::from_str(&answer)
        .with_context(|| format!("the daemon's answer: {answer:?}"))?;
    Ok((reader, answer))
}

/// The client side: sends `request` to the daemon at `socket` and returns its answer.
pub fn ask(socket: &Path, request: Request, timeout: Duration) -> anyhow::Result<Response> {
    send(socket, &request, Some(timeout)).map(|(_, answer)| answer)
}

/// The socket path for a client: `--socket`, else the default.
pub fn socket_path(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// `isolator status` for people.
pub fn render_status(status: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "isolator {}", status.version);
    let _ = writeln!(
        out,
        "policy: {} (sha256 {}){}",
        status.policy.file,
        status.policy.sha256,
        match &status.policy.signer {
            Some(id) => format!(", signed by key {id}"),
            None => String::new(),
        }
    );
    let _ = writeln!(out, "  {}", status.policy.summary);
    let _ = writeln!(
        out,
        "generation: {} (kernel maps: {})",
        status.generation, status.kernel_generation
    );
    match &status.last_reload {
        Some(r) => {
            let _ = writeln!(
                out,
                "last reload: {} at {}{}",
                r.result,
                r.time,
                r.error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
        None => {
            let _ = writeln!(out, "last reload: none since start");
        }
    }
    if let Some(e) = &status.reconcile_error {
        let _ = writeln!(
            out,
            "NOT IN LINE with the policy and the host (retrying): {e}"
        );
    }
    if let Some(f) = &status.fleet {
        let _ = writeln!(
            out,
            "fleet: host {} in group {}, following {}: revision {} in force (from {}){}",
            f.host,
            f.group,
            f.key,
            f.revision,
            f.source,
            f.refused_revision
                .map(|r| format!(", revision {r} refused"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "  etcd: {}{} ({} re-reads after compaction, {} reconnects)",
            if f.connected {
                "connected"
            } else {
                "UNREACHABLE, the policy in force stays"
            },
            f.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
            f.rereads,
            f.reconnects
        );
    }
    let _ = writeln!(out, "interfaces: {}", status.interfaces.len());
    for i in &status.interfaces {
        let place = match (&i.tenant, &i.segment) {
            (Some(t), Some(s)) => format!("{t}/{s}"),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<16} {:<24} {:<9} {}{}",
            i.device,
            place,
            i.state,
            i.mode.as_deref().unwrap_or("-"),
            i.reason
                .as_ref()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default()
        );
    }
    let c = &status.counters;
    let _ = writeln!(
        out,
        "counters: {} passed, {} dropped",
        c.passed_packets, c.dropped_packets
    );
    for (reason, n) in &c.dropped_by_reason {
        let _ = writeln!(out, "  {reason:<20} {n}");
    }
    if let Some(a) = &status.audit {
        let _ = writeln!(
            out,
            "audit log: {} (next record {}, {} not written)",
            a.path, a.next_seq, a.failures
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_the_owner_and_the_group_are_allowed() {
        let caller = |uid, gid| Caller {
            uid,
            gid,
            pid: Some(1),
        };
        let closed = Access {
            owner: 0,
            group: None,
        };
        assert!(closed.allows(&caller(0, 0), None));
        assert!(!closed.allows(&caller(1000, 1000), Some(&[0, 27])));
        let grouped = Access {
            owner: 0,
            group: Some(27),
        };
        assert!(grouped.allows(&caller(1000, 27), None), "primary group");
        assert!(
            grouped.allows(&caller(1000, 1000), Some(&[4, 27])),
            "supplementary"
        );
        assert!(!grouped.allows(&caller(1000, 1000), Some(&[4])));
        assert!(!grouped.allows(&caller(1000, 1000), None));
        let own = Access {
            owner: 1000,
            group: None,
        };
        assert!(own.allows(&caller(1000, 5), None), "the daemon's own user");
    }

    #[test]
    fn requests_and_answers_are_one_json_line() {
        assert_eq!(
            serde_json::to_string(&Request::Status).expect("json"),
            r#"{"request":"status"}"#
        );
        let m: Request = serde_json::from_str(r#"{"request":"monitor"}"#).expect("parse");
        assert_eq!(
            m,
            Request::Monitor {
                filter: crate::events::Filter::default(),
                every: None
            }
        );
        let m: Request = serde_json::from_str(
            r#"{"request":"monitor","filter":{"tenant":"acme","reason":"cross_tenant"},"every":10}"#,
        )
        .expect("parse");
        let Request::Monitor { filter, every } = m else {
            panic!("a monitor request");
        };
        assert_eq!(
            (filter.tenant.as_deref(), filter.reason.as_deref(), every),
            (Some("acme"), Some("cross_tenant"), Some(10))
        );
        let r: Request = serde_json::from_str(r#"{"request":"reload"}"#).expect("parse");
        assert_eq!(r, Request::Reload);
        assert!(serde_json::from_str::<Request>(r#"{"request":"teardown"}"#).is_err());
        let answer = Response {
            ok: false,
            error: Some("refused".into()),
            ..Response::default()
        };
        let line = serde_json::to_string(&answer).expect("json");
        assert_eq!(line, r#"{"ok":false,"error":"refused"}"#);
    }

    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(group_id("27").expect("a number"), 27);
        assert_eq!(group_id("root").expect("root is in /etc/group"), 0);
        assert!(group_id("no-such-group-here").is_err());
    }
}
