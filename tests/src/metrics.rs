//! The one way the tests read isolator's counters.
//!
//! - The metric families, their types and label names are listed once, in [`FAMILIES`]
//!   (a unit test holds them to the table in `docs/metrics.md`); drop reasons come from
//!   `isolator_common::verdict`, the definition the kernel and the daemon share.
//! - [`Scrape`] reads the text exposition with the `prometheus-parse` crate, strictly: a
//!   line it cannot read fails the scrape instead of vanishing.
//! - [`Series`] names one series (or, for [`Scrape::sum`], a set of them) by family,
//!   device, direction, reason...; [`Scrape::value`] fails, naming the series, when it is
//!   missing: a missing series is a failure, never a zero.
//! - [`Expect`] is the polling form: wait until counters moved by the expected amounts
//!   (with a deadline), then check that they stay exactly there.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use isolator_common::verdict;

pub const DROP_PACKETS: &str = "isolator_drop_packets_total";
pub const DROP_BYTES: &str = "isolator_drop_bytes_total";
pub const PASS_PACKETS: &str = "isolator_pass_packets_total";
pub const PASS_BYTES: &str = "isolator_pass_bytes_total";
pub const AUDIT_PACKETS: &str = "isolator_audit_packets_total";
pub const AUDIT_BYTES: &str = "isolator_audit_bytes_total";
pub const INTERFACES: &str = "isolator_interfaces";
pub const POLICY_MAP_MEMORY: &str = "isolator_policy_map_memory_bytes";
pub const POLICY_MAP_CAPACITY: &str = "isolator_policy_map_capacity";
pub const CONNTRACK_ENTRIES: &str = "isolator_conntrack_entries";
pub const CONNTRACK_CAPACITY: &str = "isolator_conntrack_capacity";
pub const POLICY_RELOADS: &str = "isolator_policy_reloads_total";
pub const CONNTRACK_EVENTS: &str = "isolator_conntrack_events_total";
pub const INTERFACES_REFUSED: &str = "isolator_interfaces_refused";
pub const RECONCILE_FAILING: &str = "isolator_reconcile_failing";
pub const RECONCILE_FAILURES: &str = "isolator_reconcile_failures_total";
pub const KERNEL_FAULTS: &str = "isolator_kernel_faults_total";
pub const UNCOUNTED_PACKETS: &str = "isolator_uncounted_packets_total";
pub const NETLINK_OVERRUNS: &str = "isolator_netlink_overruns_total";
pub const NETLINK_RECONNECTS: &str = "isolator_netlink_reconnects_total";
pub const POLICY_INFO: &str = "isolator_policy_info";
pub const SIGNATURE_REFUSALS: &str = "isolator_policy_signature_refusals_total";
pub const MANAGEMENT_ATTEMPTS: &str = "isolator_management_attempts_total";
pub const AUDIT_EVENTS_DROPPED: &str = "isolator_audit_events_dropped_total";
pub const BUILD_INFO: &str = "isolator_build_info";
pub const POLICY_GENERATION: &str = "isolator_policy_generation";
pub const LAST_RELOAD_SUCCESS: &str = "isolator_last_reload_success_timestamp_seconds";
pub const INTERFACE_ENFORCED: &str = "isolator_interface_enforced";
pub const ATTACH_FAILURES: &str = "isolator_attach_failures_total";
pub const TOPOLOGY_VIOLATIONS: &str = "isolator_topology_violations";
pub const LAST_VERIFY: &str = "isolator_last_verify_timestamp_seconds";
pub const FLEET_REVISION: &str = "isolator_fleet_revision";
pub const FLEET_CONNECTED: &str = "isolator_fleet_connected";

const DEVICE_REASON: &[&str] = &["device", "tenant", "segment", "direction", "reason"];
const DEVICE: &[&str] = &["device", "tenant", "segment", "direction"];

/// Every metric family of `docs/metrics.md`: sample name, `# TYPE`, label names in the
/// order the documentation lists them.
pub const FAMILIES: [(&str, &str, &[&str]); 33] = [
    (DROP_PACKETS, "counter", DEVICE_REASON),
    (DROP_BYTES, "counter", DEVICE_REASON),
    (PASS_PACKETS, "counter", DEVICE),
    (PASS_BYTES, "counter", DEVICE),
    (AUDIT_PACKETS, "counter", DEVICE_REASON),
    (AUDIT_BYTES, "counter", DEVICE_REASON),
    (INTERFACES, "gauge", &["tenant", "segment"]),
    (POLICY_MAP_MEMORY, "gauge", &["map"]),
    (POLICY_MAP_CAPACITY, "gauge", &["map"]),
    (CONNTRACK_ENTRIES, "gauge", &[]),
    (CONNTRACK_CAPACITY, "gauge", &[]),
    (POLICY_RELOADS, "counter", &["result"]),
    (INTERFACES_REFUSED, "gauge", &["device", "reason"]),
    (RECONCILE_FAILING, "gauge", &[]),
    (RECONCILE_FAILURES, "counter", &[]),
    (POLICY_INFO, "gauge", &["sha256", "signer"]),
    (SIGNATURE_REFUSALS, "counter", &[]),
    (NETLINK_OVERRUNS, "counter", &[]),
    (NETLINK_RECONNECTS, "counter", &[]),
    (KERNEL_FAULTS, "counter", &["what"]),
    (UNCOUNTED_PACKETS, "counter", &["direction", "verdict"]),
    (CONNTRACK_EVENTS, "counter", &["event"]),
    (
        MANAGEMENT_ATTEMPTS,
        "counter",
        &["device", "tenant", "segment"],
    ),
    (AUDIT_EVENTS_DROPPED, "counter", &["reason"]),
    (BUILD_INFO, "gauge", &["version"]),
    (POLICY_GENERATION, "gauge", &[]),
    (LAST_RELOAD_SUCCESS, "gauge", &[]),
    (INTERFACE_ENFORCED, "gauge", &["device", "mode"]),
    (ATTACH_FAILURES, "counter", &[]),
    (TOPOLOGY_VIOLATIONS, "gauge", &["kind"]),
    (LAST_VERIFY, "gauge", &[]),
    (FLEET_REVISION, "gauge", &[]),
    (FLEET_CONNECTED, "gauge", &[]),
];

/// How long counters are watched, once they reached the expected value, to see that they
/// stay there (no late duplicate, no second count of one frame).
pub const SETTLE: Duration = Duration::from_millis(250);
/// How long counters are given to reach the expected value.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Which program judged the frame: `ingress` (what the VM sends, XDP) or `egress` (what is
/// delivered to the VM, TC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    pub const BOTH: [Dir; 2] = [Dir::Ingress, Dir::Egress];

    pub fn label(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }
}

/// The `reason` label of drop code `code` (`isolator_common::verdict`); panics on `PASS` or
/// an unknown code (a test bug).
pub fn reason(code: u8) -> &'static str {
    verdict::name(code).unwrap_or_else(|| panic!("{code} is not a drop reason"))
}

/// The codes of every drop reason.
pub fn all_reasons() -> impl Iterator<Item = u8> {
    verdict::DROP_REASONS.iter().map(|(code, _, _)| *code)
}

/// A series, or with [`Scrape::sum`] the set of series that carry all of its labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    pub name: &'static str,
    pub labels: BTreeMap<&'static str, String>,
}

impl Series {
    pub fn new(name: &'static str, labels: &[(&'static str, &str)]) -> Series {
        Series {
            name,
            labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }

    /// Packets of `device` dropped in `dir` for drop code `code`.
    pub fn drop(device: &str, dir: Dir, code: u8) -> Series {
        Series::new(
            DROP_PACKETS,
            &[
                ("device", device),
                ("direction", dir.label()),
                ("reason", reason(code)),
            ],
        )
    }

    /// Packets of `device` dropped in `dir`, every reason (for [`Scrape::sum`] and
    /// [`Scrape::by_reason`]).
    pub fn drops(device: &str, dir: Dir) -> Series {
        Series::new(
            DROP_PACKETS,
            &[("device", device), ("direction", dir.label())],
        )
    }

    /// Packets of `device` passed in `dir`.
    pub fn pass(device: &str, dir: Dir) -> Series {
        Series::new(
            PASS_PACKETS,
            &[("device", device), ("direction", dir.label())],
        )
    }

    /// Packets of `device` that audit mode passed in `dir` for drop code `code`.
    pub fn audit(device: &str, dir: Dir, code: u8) -> Series {
        Series::new(
            AUDIT_PACKETS,
            &[
                ("device", device),
                ("direction", dir.label()),
                ("reason", reason(code)),
            ],
        )
    }

    /// Audit verdicts of `device` in `dir`, every reason.
    pub fn audits(device: &str, dir: Dir) -> Series {
        Series::new(
            AUDIT_PACKETS,
            &[("device", device), ("direction", dir.label())],
        )
    }

    /// `isolator_interfaces{tenant, segment}`.
    pub fn interfaces(tenant: &str, segment: &str) -> Series {
        Series::new(INTERFACES, &[("tenant", tenant), ("segment", segment)])
    }

    /// `isolator_conntrack_events_total{event}`.
    pub fn conntrack_event(event: &str) -> Series {
        Series::new(CONNTRACK_EVENTS, &[("event", event)])
    }

    /// `isolator_policy_reloads_total{result}`: `succeeded` or `failed`.
    pub fn reloads(result: &str) -> Series {
        Series::new(POLICY_RELOADS, &[("result", result)])
    }

    pub fn conntrack_entries() -> Series {
        Series::new(CONNTRACK_ENTRIES, &[])
    }

    pub fn conntrack_capacity() -> Series {
        Series::new(CONNTRACK_CAPACITY, &[])
    }

    /// The same series in the bytes family of a packets family.
    pub fn bytes(mut self) -> Series {
        self.name = match self.name {
            DROP_PACKETS => DROP_BYTES,
            PASS_PACKETS => PASS_BYTES,
            AUDIT_PACKETS => AUDIT_BYTES,
            other => panic!("{other} has no bytes family"),
        };
        self
    }

    /// With the `tenant` and `segment` labels too: the lookup then also checks that the
    /// device is exported under these names.
    pub fn of(mut self, tenant: &str, segment: &str) -> Series {
        self.labels.insert("tenant", tenant.to_string());
        self.labels.insert("segment", segment.to_string());
        self
    }

    fn matches(&self, sample: &Sample) -> bool {
        sample.name == self.name
            && self
                .labels
                .iter()
                .all(|(k, v)| sample.labels.get(*k) == Some(v))
    }

    /// Audit series appear with the first audit verdict (the daemon exports drop and
    /// pass series from zero, audit series not): an audit series that is absent while the
    /// drop series with the same labels exists (the vif is attached) is 0.
    fn absent_means_zero(&self, scrape: &Scrape) -> bool {
        let drop_name = match self.name {
            AUDIT_PACKETS => DROP_PACKETS,
            AUDIT_BYTES => DROP_BYTES,
            _ => return false,
        };
        let twin = Series {
            name: drop_name,
            labels: self.labels.clone(),
        };
        scrape.samples.iter().any(|s| twin.matches(s))
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        write!(f, "{}{{{}}}", self.name, labels.join(","))
    }
}

/// One sample of a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One parsed `/metrics` answer.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
    /// `# TYPE` by the name on that line (for counters the name without `_total`).
    pub types: HashMap<String, String>,
}

impl Scrape {
    /// Parses the text exposition format (0.0.4) with `prometheus-parse`. Fails on any line
    /// that is neither a comment nor a sample that parses, which that crate skips.
    pub fn parse(text: &str) -> Result<Scrape> {
        use prometheus_parse::LineInfo;
        let mut types = HashMap::new();
        let mut sample_lines = 0;
        for (i, line) in text.lines().enumerate() {
            match LineInfo::parse(line) {
                LineInfo::Type {
                    metric_name,
                    sample_type,
                    ..
                } => {
                    let t = format!("{sample_type:?}").to_lowercase();
                    types.insert(metric_name, t);
                }
                LineInfo::Sample { value, .. } => {
                    ensure!(
                        value.parse::<f64>().is_ok(),
                        "metrics line {}: value {value:?} is not a number: {line:?}",
                        i + 1
                    );
                    sample_lines += 1;
                }
                LineInfo::Ignored if !line.trim_start().starts_with('#') => {
                    bail!("metrics line {} is not a sample: {line:?}", i + 1)
                }
                _ => {}
            }
        }
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .context("prometheus-parse")?;
        let samples: Vec<Sample> = parsed
            .samples
            .into_iter()
            .map(|s| {
                let value = match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => Ok(v),
                    other => Err(anyhow::anyhow!("{}: unexpected {other:?}", s.metric)),
                }?;
                Ok(Sample {
                    labels: s
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    name: s.metric,
                    value,
                })
            })
            .collect::<Result<_>>()?;
        ensure!(
            samples.len() == sample_lines,
            "{sample_lines} sample lines, but only {} samples parsed",
            samples.len()
        );
        Ok(Scrape {
            text: text.to_string(),
            samples,
            types,
        })
    }

    /// The `# TYPE` of the family of sample name `name` (counters are typed under the name
    /// without `_total`).
    pub fn type_of(&self, name: &str) -> Option<&str> {
        self.types
            .get(name)
            .or_else(|| self.types.get(name.strip_suffix("_total").unwrap_or(name)))
            .map(String::as_str)
    }

    /// The samples `series` selects.
    pub fn select(&self, series: &Series) -> Vec<&Sample> {
        self.samples.iter().filter(|s| series.matches(s)).collect()
    }

    /// The value of the one sample `series` names. Fails if there is none (except for an
    /// audit series of an attached vif, see [`Series`]) or more than one.
    pub fn value(&self, series: &Series) -> Result<f64> {
        match self.select(series).as_slice() {
            [one] => Ok(one.value),
            [] if series.absent_means_zero(self) => Ok(0.0),
            [] => bail!(
                "the series {series} is missing; {} has:\n{}",
                series.name,
                self.dump(series.name)
            ),
            many => bail!("{series} names {} series, not one", many.len()),
        }
    }

    /// The sum over every sample `series` selects. Fails if it selects none.
    pub fn sum(&self, series: &Series) -> Result<f64> {
        let selected = self.select(series);
        if selected.is_empty() && !series.absent_means_zero(self) {
            bail!(
                "no series {series}; {} has:\n{}",
                series.name,
                self.dump(series.name)
            );
        }
        // A fold from +0.0: `Sum` of no f64 is -0.0, which prints as "-0".
        Ok(selected.iter().fold(0.0, |acc, s| acc + s.value))
    }

    /// The values of the samples `series` selects, by their `reason` label (non-zero only).
    pub fn by_reason(&self, series: &Series) -> Result<BTreeMap<String, f64>> {
        self.sum(series)?;
        let mut out = BTreeMap::new();
        for s in self.select(series) {
            if s.value != 0.0 {
                let reason = s.labels.get("reason").cloned().unwrap_or_default();
                *out.entry(reason).or_insert(0.0) += s.value;
            }
        }
        Ok(out)
    }

    /// How much `series` grew since `before` (a series absent before counts from 0 only
    /// where [`Scrape::value`] allows it).
    pub fn delta(&self, before: &Scrape, series: &Series) -> Result<f64> {
        Ok(self.sum(series)? - before.sum(series)?)
    }

    /// The non-zero samples of `name`, one per line, sorted, for messages.
    pub fn dump(&self, name: &str) -> String {
        let all: Vec<&Sample> = self.samples.iter().filter(|s| s.name == name).collect();
        let mut lines: Vec<String> = all
            .iter()
            .filter(|s| s.value != 0.0)
            .map(|s| {
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                format!("  {}{{{}}} {}\n", s.name, labels.join(","), s.value)
            })
            .collect();
        lines.sort();
        let zero = all.len() - lines.len();
        let mut out = lines.concat();
        out.push_str(&format!("  ({zero} more samples of {name} are 0)\n"));
        out
    }
}

/// Expected counter changes, checked by polling: [`Expect::wait`] scrapes until every
/// series grew by at least its amount (failing after [`DEADLINE`]), then watches them for
/// [`SETTLE`] and fails unless each grew by exactly its amount.
#[derive(Clone, Debug)]
pub struct Expect {
    changes: Vec<(Series, f64)>,
    settle: Duration,
}

impl Default for Expect {
    fn default() -> Expect {
        Expect {
            changes: Vec::new(),
            settle: SETTLE,
        }
    }
}

impl Expect {
    pub fn new() -> Expect {
        Expect::default()
    }

    /// Watches the reached values for `settle` instead of [`SETTLE`] (to give a change
    /// that must not come more time to show).
    pub fn settle(mut self, settle: Duration) -> Expect {
        self.settle = settle;
        self
    }

    /// `series` must grow by exactly `by` (0: must not move).
    pub fn grows(mut self, series: Series, by: f64) -> Expect {
        self.changes.push((series, by));
        self
    }

    /// Polls `scrape` until every change is reached, then checks that each is exact.
    /// Returns the last scrape.
    pub fn wait(
        &self,
        before: &Scrape,
        mut scrape: impl FnMut() -> Result<Scrape>,
    ) -> Result<Scrape> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let now = scrape()?;
            let mut reached = true;
            for (series, by) in &self.changes {
                if now.delta(before, series)? < *by {
                    reached = false;
                }
            }
            if reached {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "within {DEADLINE:?}, expected:\n{}",
                    self.report(before, &now)?
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(self.settle);
        let last = scrape()?;
        for (series, by) in &self.changes {
            if last.delta(before, series)? != *by {
                bail!(
                    "the counters went past the expected values:\n{}",
                    self.report(before, &last)?
                );
            }
        }
        Ok(last)
    }

    fn report(&self, before: &Scrape, now: &Scrape) -> Result<String> {
        let mut out = String::new();
        for (series, by) in &self.changes {
            out.push_str(&format!(
                "  {series} +{by}: grew by {}\n",
                now.delta(before, series)?
            ));
        }
        for name in self
            .changes
            .iter()
            .map(|(s, _)| s.name)
            .collect::<std::collections::BTreeSet<_>>()
        {
            out.push_str(&format!("{name} now:\n{}", now.dump(name)));
        }
        Ok(out)
    }
}

/// Polls `probe` every 20 ms until it returns `Some`, for at most `timeout`; fails with
/// `what` and the last state `probe` reported otherwise.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<std::result::Result<T, String>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe()? {
            Ok(v) => return Ok(v),
            Err(state) if Instant::now() > deadline => {
                bail!("{what}: not within {timeout:?}; last: {state}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs `promtool check metrics` on `text`; Ok(output) if it passes, Err(output) otherwise.
/// Errors too if promtool is missing.
pub fn promtool_check(text: &str) -> Result<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn promtool (Debian package `prometheus`)")?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("promtool check metrics failed ({}):\n{msg}", out.status);
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP isolator_drop_packets Packets dropped.\n\
        # TYPE isolator_drop_packets counter\n\
        isolator_drop_packets_total{device=\"v1\",tenant=\"t\",segment=\"s\",direction=\"ingress\",reason=\"malformed\"} 3\n\
        isolator_drop_packets_total{device=\"v1\",tenant=\"t\",segment=\"s\",direction=\"ingress\",reason=\"vlan\"} 2\n\
        isolator_drop_packets_total{device=\"v1\",tenant=\"t\",segment=\"s\",direction=\"ingress\",reason=\"cross_segment\"} 0\n\
        isolator_drop_packets_total{device=\"v1\",tenant=\"t\",segment=\"s\",direction=\"egress\",reason=\"vlan\"} 0\n\
        # TYPE isolator_conntrack_entries gauge\n\
        isolator_conntrack_entries 7\n";

    #[test]
    fn series_are_read_and_a_missing_one_is_an_error_naming_it() {
        let m = Scrape::parse(TEXT).unwrap();
        assert_eq!(m.type_of(DROP_PACKETS), Some("counter"));
        assert_eq!(m.type_of(CONNTRACK_ENTRIES), Some("gauge"));
        let malformed = Series::drop("v1", Dir::Ingress, verdict::MALFORMED);
        assert_eq!(m.value(&malformed).unwrap(), 3.0);
        assert_eq!(m.value(&malformed.clone().of("t", "s")).unwrap(), 3.0);
        assert!(m.value(&malformed.clone().of("t", "other")).is_err());
        assert_eq!(m.sum(&Series::drops("v1", Dir::Ingress)).unwrap(), 5.0);
        assert_eq!(
            m.by_reason(&Series::drops("v1", Dir::Ingress)).unwrap(),
            [("malformed".to_string(), 3.0), ("vlan".to_string(), 2.0)].into()
        );
        assert_eq!(m.value(&Series::conntrack_entries()).unwrap(), 7.0);
        let missing = Series::drop("v2", Dir::Ingress, verdict::MALFORMED);
        let err = format!("{:#}", m.value(&missing).unwrap_err());
        assert!(err.contains("device=\"v2\""), "{err}");
        assert!(m.sum(&Series::drops("v2", Dir::Egress)).is_err());
        assert!(
            m.value(&Series::drops("v1", Dir::Ingress)).is_err(),
            "ambiguous"
        );
        // An audit series is 0 while its vif is attached, missing otherwise.
        assert_eq!(
            m.value(&Series::audit("v1", Dir::Ingress, verdict::CROSS_SEGMENT))
                .unwrap(),
            0.0
        );
        assert!(
            m.value(&Series::audit("v2", Dir::Ingress, verdict::CROSS_SEGMENT))
                .is_err()
        );
    }

    #[test]
    fn lines_the_parser_would_skip_fail_the_scrape() {
        assert!(Scrape::parse("a{b=\"c\" 1\n").is_err());
        assert!(Scrape::parse("a notanumber\n").is_err());
        assert!(Scrape::parse("{} 1\n").is_err());
    }

    #[test]
    fn expectations_wait_for_the_counters_and_refuse_overshoot() {
        let before = Scrape::parse("x_total{a=\"1\"} 0\n").unwrap();
        let series = Series::new("x_total", &[("a", "1")]);
        let mut n = 0;
        let last = Expect::new()
            .grows(series.clone(), 2.0)
            .wait(&before, || {
                n += 1;
                Scrape::parse(&format!("x_total{{a=\"1\"}} {}\n", n.min(2)))
            })
            .unwrap();
        assert_eq!(last.value(&series).unwrap(), 2.0);
        let mut n = 0;
        let err = Expect::new()
            .grows(series, 1.0)
            .wait(&before, || {
                n += 1;
                Scrape::parse(&format!("x_total{{a=\"1\"}} {n}\n"))
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("went past"), "{err:#}");
    }

    /// The families listed here are the ones `docs/metrics.md` documents, with the same
    /// types and labels.
    #[test]
    fn families_match_the_documentation() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"),
        )
        .unwrap();
        let mut documented = Vec::new();
        let mut previous: Vec<String> = Vec::new();
        for line in doc.lines().filter(|l| l.starts_with("| `isolator_")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_string();
            let labels: Vec<String> = if cells[3] == "same" {
                previous.clone()
            } else {
                cells[3]
                    .split(',')
                    .map(|l| l.trim().trim_matches('`').to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            };
            previous = labels.clone();
            documented.push((name, cells[2].to_string(), labels));
        }
        let listed: Vec<(String, String, Vec<String>)> = FAMILIES
            .iter()
            .map(|(n, t, l)| {
                (
                    n.to_string(),
                    t.to_string(),
                    l.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(listed, documented);
    }
}
