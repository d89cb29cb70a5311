//! `isolator publish` and `isolator fleet status|forget`: the operator's side of the fleet.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::Serialize;
use serde_json::json;

use super::follow::read_prefix;
use super::{Bundle, HostStatus, Location, Registration, TlsArgs, connect, timed};
use crate::policy::{self, diff};

/// `isolator publish`'s exit status when the bundle is written.
pub const PUBLISHED: u8 = 0;
/// ... when someone published meanwhile (or the revision is not the one expected).
pub const CONFLICT: u8 = 1;
/// ... when nothing was written: an invalid or unsigned policy, or etcd unreachable.
pub const FAILED: u8 = 2;

/// What `isolator publish` is asked to do.
pub struct Publish<'a> {
    pub location: &'a Location,
    pub tls: &'a TlsArgs,
    pub group: &'a str,
    pub file: &'a Path,
    /// The keys the signature must be by; `None` with `unsigned`.
    pub trusted_keys: Option<&'a Path>,
    pub unsigned: bool,
    /// Publish only if the bundle in etcd is at this revision (0: none is there).
    pub expect_revision: Option<i64>,
    pub dry_run: bool,
    pub json: bool,
}

/// Validates, checks the signature, shows the diff against the bundle in etcd and writes
/// the new one in a transaction that fails if the key changed since it was read.
pub async fn publish(request: Publish<'_>) -> ExitCode {
    match publish_inner(&request).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            eprintln!("nothing was published");
            ExitCode::from(FAILED)
        }
    }
}

async fn publish_inner(request: &Publish<'_>) -> anyhow::Result<u8> {
    super::check_name("group", request.group)?;
    let file = request.file;
    let bytes =
        std::fs::read(file).with_context(|| format!("reading the policy {}", file.display()))?;
    let (signature, signer) = match (request.trusted_keys, request.unsigned) {
        (Some(dir), false) => {
            let keys = crate::signing::TrustedKeys::load(dir)?;
            let signer = keys.verify(file, &bytes)?;
            let path = crate::signing::signature_path(file);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            (Some(text), Some(signer))
        }
        (None, true) => (None, None),
        (Some(_), true) => bail!("--trusted-keys and --unsigned exclude each other"),
        (None, false) => bail!(
            "give --trusted-keys DIR to check {}'s signature before it goes to every host (or \
             --unsigned for a fleet whose daemons run without --trusted-keys)",
            file.display()
        ),
    };
    let text =
        String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", file.display()))?;
    let new = policy::parse(&text, &file.display().to_string()).map_err(|diagnostics| {
        anyhow!(
            "{diagnostics}{}: invalid: {} error(s)",
            file.display(),
            diagnostics.len()
        )
    })?;

    let mut client = connect(request.location, request.tls).await?;
    let key = request.location.policy_key(request.group);
    let current = timed("reading the bundle in force", client.get(key.clone(), None)).await?;
    let (old_revision, old) = match current.kvs().first() {
        Some(kv) => (kv.mod_revision(), Some(kv.value().to_vec())),
        None => (0, None),
    };
    let old_policy = match &old {
        Some(value) => match Bundle::decode(value).and_then(|b| {
            policy::parse(&b.policy, &format!("etcd:{key}@{old_revision}"))
                .map_err(|d| anyhow!("{d}the policy is not valid"))
        }) {
            Ok(policy) => Some(policy),
            Err(e) => {
                eprintln!(
                    "warning: the bundle at {key} (revision {old_revision}) is not a valid one \
                     ({e:#}); the diff is against an empty policy"
                );
                None
            }
        },
        None => None,
    };
    let changes = diff::diff(&old_policy.clone().unwrap_or_default(), &new);
    if let Some(expected) = request.expect_revision
        && expected != old_revision
    {
        eprintln!(
            "error: {key} is at revision {old_revision}, not {expected}: someone published \
             meanwhile; review the diff again (--dry-run) and retry"
        );
        return Ok(CONFLICT);
    }
    let bundle = Bundle::new(text, signature, publisher());
    let mut published = None;
    let mut sent_ms = None;
    if !request.dry_run {
        // The key must still be where it was read: mod_revision 0 for a key that is absent.
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                old_revision,
            )])
            .and_then([TxnOp::put(key.clone(), bundle.encode(), None)]);
        sent_ms = Some(super::unix_ms());
        let response = timed("writing the bundle", client.txn(txn)).await?;
        if !response.succeeded() {
            eprintln!(
                "error: someone published to {key} after revision {old_revision} was read; \
                 nothing was written: review the diff again (--dry-run) and retry"
            );
            return Ok(CONFLICT);
        }
        published = Some(response.header().map_or(0, |h| h.revision()));
    }
    if request.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "key": key,
                "published": published.is_some(),
                "revision": published,
                "previous_revision": (old_revision > 0).then_some(old_revision),
                "sha256": bundle.sha256,
                "signer": signer,
                "published_at": bundle.published_at,
                "sent_ms": sent_ms,
                "widened": changes.count(diff::Effect::Widened),
                "narrowed": changes.count(diff::Effect::Narrowed),
                "other": changes.count(diff::Effect::Changed),
                "changes": changes.changes,
            }))?
        );
    } else {
        print!("{changes}");
        let what = if changes.is_empty() {
            "no change".to_string()
        } else {
            format!(
                "{}{}",
                changes.summary(),
                if changes.widens() {
                    ": reachability widened"
                } else {
                    ""
                }
            )
        };
        let before = if old_revision > 0 {
            format!("revision {old_revision}")
        } else {
            "nothing published".to_string()
        };
        match published {
            Some(revision) => println!(
                "{key}: published revision {revision} (sha256 {}, signer {}); against {before}: {what}",
                &bundle.sha256[..16],
                signer.as_deref().unwrap_or("none: unsigned"),
            ),
            None => println!(
                "{key}: not published (--dry-run); against {before}: {what}; publish with \
                 --expect-revision {old_revision} to be sure it goes over what you saw"
            ),
        }
    }
    Ok(PUBLISHED)
}

/// `user@host` of whoever publishes.
fn publisher() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| {
            // SAFETY: getuid has no preconditions.
            format!("uid {}", unsafe { libc::getuid() })
        });
    let host = super::hostname().unwrap_or_else(|_| "?".into());
    format!("{user}@{host}")
}

/// One host as `isolator fleet status` judges it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRow {
    pub host: String,
    pub group: String,
    /// `ok`, `behind` (an older revision than its group's), `failing` (a refused bundle,
    /// refused interfaces, verification findings), `gone` (its status expired), or
    /// `unknown-group` (nothing is published for its group).
    pub state: &'static str,
    /// What is wrong, in words.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The group's bundle revision now, and the host's.
    pub group_revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<HostStatus>,
}

/// Judges every host known to the fleet: those with a status, and those registered whose
/// status expired.
pub fn assess(
    groups: &BTreeMap<String, i64>,
    statuses: &BTreeMap<String, HostStatus>,
    registrations: &BTreeMap<String, Registration>,
) -> Vec<HostRow> {
    let mut rows = Vec::new();
    for (host, status) in statuses {
        let group_revision = groups.get(&status.group).copied();
        let mut problems = Vec::new();
        let mut behind = false;
        match group_revision {
            None => problems.push(format!("nothing is published for group {:?}", status.group)),
            Some(revision) if status.revision < revision => {
                behind = true;
                problems.push(format!(
                    "runs revision {}, its group is at {revision}",
                    status.revision
                ));
            }
            Some(_) => {}
        }
        if let Some(refused) = status.refused_revision
            && refused > status.revision
        {
            problems.push(format!("refused revision {refused}"));
        }
        if let Some(error) = &status.last_error {
            problems.push(error.clone());
        }
        if status.source == "cache" {
            problems.push("enforcing its cached bundle (etcd was unreachable at start)".into());
        }
        if !status.failed.is_empty() {
            problems.push(format!(
                "{} interface(s) not enforced: {}",
                status.failed.len(),
                status
                    .failed
                    .iter()
                    .map(|f| format!("{} ({})", f.device, f.reason))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(verify) = &status.verify
            && verify.findings > 0
        {
            problems.push(format!(
                "its verification found {} problem(s) (isolator verify on the host)",
                verify.findings
            ));
        }
        let failing = status.last_error.is_some()
            || !status.failed.is_empty()
            || status.verify.as_ref().is_some_and(|v| v.findings > 0);
        let state = if group_revision.is_none() {
            "unknown-group"
        } else if failing {
            "failing"
        } else if behind {
            "behind"
        } else {
            "ok"
        };
        rows.push(HostRow {
            host: host.clone(),
            group: status.group.clone(),
            state,
            problems,
            group_revision,
            status: Some(status.clone()),
        });
    }
    for (host, registration) in registrations {
        if statuses.contains_key(host) {
            continue;
        }
        rows.push(HostRow {
            host: host.clone(),
            group: registration.group.clone(),
            state: "gone",
            problems: vec![
                "no status: its lease expired (the daemon stopped, the host is down or cut \
                 off from etcd); `isolator fleet forget` removes a host for good"
                    .into(),
            ],
            group_revision: groups.get(&registration.group).copied(),
            status: None,
        });
    }
    rows.sort_by(|a, b| a.host.cmp(&b.host));
    rows
}

/// `isolator fleet status`: every host, flagged; exit 0 when all are ok, 1 otherwise, 2
/// when etcd could not be read.
pub async fn status(location: &Location, tls: &TlsArgs, json: bool) -> ExitCode {
    match status_inner(location, tls, json).await {
        Ok(all_ok) => ExitCode::from(if all_ok { 0 } else { 1 }),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn status_inner(location: &Location, tls: &TlsArgs, json: bool) -> anyhow::Result<bool> {
    let mut client = connect(location, tls).await?;
    let mut groups = BTreeMap::new();
    let mut sums = BTreeMap::new();
    for (key, value, revision) in read_prefix(&mut client, &location.policies()).await? {
        let group = key.trim_start_matches(&location.policies()).to_string();
        sums.insert(
            group.clone(),
            Bundle::decode(&value).map_or_else(|e| format!("invalid: {e:#}"), |b| b.sha256),
        );
        groups.insert(group, revision);
    }
    let mut statuses = BTreeMap::new();
    for (key, value, _) in read_prefix(&mut client, &location.statuses()).await? {
        let host = key.trim_start_matches(&location.statuses()).to_string();
        match serde_json::from_slice::<HostStatus>(&value) {
            Ok(status) => {
                statuses.insert(host, status);
            }
            Err(e) => eprintln!("warning: {key}: not a host status ({e})"),
        }
    }
    let mut registrations = BTreeMap::new();
    for (key, value, _) in read_prefix(&mut client, &location.hosts()).await? {
        let host = key.trim_start_matches(&location.hosts()).to_string();
        match serde_json::from_slice::<Registration>(&value) {
            Ok(r) => {
                registrations.insert(host, r);
            }
            Err(e) => eprintln!("warning: {key}: not a host registration ({e})"),
        }
    }
    let rows = assess(&groups, &statuses, &registrations);
    let all_ok = rows.iter().all(|r| r.state == "ok");
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "location": location.to_string(),
                "groups": groups.iter().map(|(g, r)| (g.clone(), json!({
                    "revision": r, "sha256": sums.get(g) }))).collect::<serde_json::Map<_, _>>(),
                "hosts": rows,
            }))?
        );
        return Ok(all_ok);
    }
    for (group, revision) in &groups {
        let sum = sums.get(group).map(String::as_str).unwrap_or_default();
        println!(
            "group {group}: revision {revision}, sha256 {}",
            sum.get(..16).unwrap_or(sum)
        );
    }
    if groups.is_empty() {
        println!(
            "no bundle is published under {} (isolator publish)",
            location.policies()
        );
    }
    println!(
        "{:<20} {:<10} {:<13} {:>9} {:<16} {:>4} {:>10}  PROBLEMS",
        "HOST", "GROUP", "STATE", "REVISION", "POLICY", "GEN", "ENFORCED"
    );
    let now = super::unix_ms();
    for row in &rows {
        let (revision, policy, generation, enforced) = match &row.status {
            Some(s) => (
                s.revision.to_string(),
                s.sha256.get(..16).unwrap_or(&s.sha256).to_string(),
                s.generation.to_string(),
                format!("{}/{}", s.enforced.len(), s.enforced.len() + s.failed.len()),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let updated = row
            .status
            .as_ref()
            .map(|s| {
                format!(
                    " (status {} s old)",
                    now.saturating_sub(s.updated_at_ms) / 1000
                )
            })
            .unwrap_or_default();
        println!(
            "{:<20} {:<10} {:<13} {:>9} {:<16} {:>4} {:>10}  {}{updated}",
            row.host,
            row.group,
            row.state,
            revision,
            policy,
            generation,
            enforced,
            if row.problems.is_empty() {
                "-".to_string()
            } else {
                row.problems.join("; ")
            }
        );
    }
    let count = |state: &str| rows.iter().filter(|r| r.state == state).count();
    println!(
        "{} host(s): {} ok, {} behind, {} failing, {} gone",
        rows.len(),
        count("ok"),
        count("behind"),
        count("failing"),
        count("gone")
    );
    Ok(all_ok)
}

/// `isolator fleet forget HOST`: removes a host that left the fleet for good (its
/// registration and any status).
pub async fn forget(location: &Location, tls: &TlsArgs, host: &str) -> ExitCode {
    let run = async {
        super::check_name("host", host)?;
        let mut client = connect(location, tls).await?;
        let removed = timed(
            "removing the host",
            client.txn(Txn::new().and_then([
                TxnOp::delete(location.host_key(host), None),
                TxnOp::delete(location.status_key(host), None),
            ])),
        )
        .await?;
        anyhow::Ok(removed.succeeded())
    };
    match run.await {
        Ok(_) => {
            println!(
                "{host}: forgotten ({} and its status removed)",
                location.host_key(host)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
