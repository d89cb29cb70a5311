//! The Prometheus exposition: kernel counters plus the names of the vifs, tenants and
//! segments they belong to, rendered at scrape time (text format 0.0.4).
//!
//! Pure: it turns an [`Inventory`] and a counter snapshot into text; the daemon reads
//! the kernel maps and calls [`render`]. The metric names and labels are documented in
//! docs/metrics.md.

use std::collections::BTreeMap;

use isolator_common::{Counter, CounterKey, Uncounted, Verdict, direction, fault, verdict};
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter as PromCounter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::compile::Plan;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Labels of one managed vif (those of `isolator_management_attempts_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VifLabels {
    pub device: String,
    pub tenant: String,
    pub segment: String,
}

/// The names behind the kernel's numbers, as of the active policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Attached vifs by ifindex.
    pub vifs: BTreeMap<u32, VifLabels>,
    /// Every segment of the policy as (tenant, segment), attached or not.
    pub segments: Vec<(String, String)>,
}

impl Inventory {
    /// The inventory of `plan`, keeping only the vifs in `attached` (ifindexes).
    pub fn new(plan: &Plan, attached: impl IntoIterator<Item = u32>) -> Self {
        let attached: std::collections::BTreeSet<u32> = attached.into_iter().collect();
        let vifs = plan
            .vifs
            .iter()
            .filter(|v| attached.contains(&v.ifindex))
            .map(|v| {
                let s = plan
                    .segment(v.segment)
                    .expect("a plan's vifs belong to its segments");
                (
                    v.ifindex,
                    VifLabels {
                        device: v.name.clone(),
                        tenant: s.tenant.to_string(),
                        segment: s.name.to_string(),
                    },
                )
            })
            .collect();
        let mut vifs: BTreeMap<u32, VifLabels> = vifs;
        // Quarantined interfaces belong to no tenant or segment; their drops still count.
        for q in plan
            .quarantined
            .iter()
            .filter(|q| attached.contains(&q.ifindex))
        {
            vifs.insert(
                q.ifindex,
                VifLabels {
                    device: q.name.clone(),
                    tenant: String::new(),
                    segment: String::new(),
                },
            );
        }
        let segments = plan
            .segments
            .iter()
            .map(|s| (s.tenant.to_string(), s.name.to_string()))
            .collect();
        Inventory { vifs, segments }
    }

    /// With `links` (ifindex, name) that carry the programs but are in no plan yet (a
    /// link guarded the moment it appeared): their drops count under their names, with no
    /// tenant or segment, like a quarantined interface's.
    pub fn with_unclassified(mut self, links: impl IntoIterator<Item = (u32, String)>) -> Self {
        for (ifindex, device) in links {
            self.vifs.entry(ifindex).or_insert(VifLabels {
                device,
                tenant: String::new(),
                segment: String::new(),
            });
        }
        self
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    device: String,
    tenant: String,
    segment: String,
    direction: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    device: String,
    tenant: String,
    segment: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

/// Connection tracking figures for the exposition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackStats {
    /// Connections in the table now.
    pub entries: u64,
    /// The table's size; when full, the least recently used connection is evicted.
    pub capacity: u64,
    /// Connections opened (TCP SYN, first UDP datagram, ICMP echo request).
    pub opened: u64,
    /// Connections ended by a TCP RST.
    pub reset: u64,
    /// Connections removed after their idle timeout (by the kernel or the daemon's sweep).
    pub expired: u64,
    /// Connections removed because a new policy no longer admits them.
    pub revoked: u64,
    /// Connections removed with the tables of an interface that went away.
    pub released: u64,
    /// Connections evicted because the table was full.
    pub evicted: u64,
}

/// Connections evicted from a full table, which the kernel does not report: whatever was
/// opened and is neither live nor ended otherwise (an RST, a timeout, a new policy, its
/// interface going away).
pub fn evicted(opened: u64, ended: u64, entries: u64) -> u64 {
    opened.saturating_sub(ended + entries)
}

/// Policy reloads (SIGHUP) by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReloadStats {
    pub succeeded: u64,
    /// Refused: the file did not validate or the kernel refused the plan. The running
    /// policy stayed in force.
    pub failed: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SegmentLabels {
    tenant: String,
    segment: String,
}

/// Directions whose programs exist; their series are exported from zero.
const DIRECTIONS: [u8; 2] = [direction::INGRESS, direction::EGRESS];

/// An interface the daemon does not enforce as a vif.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub device: String,
    /// `unclassified`, `unsupported_kind` or `attach_failed`.
    pub reason: &'static str,
}

/// What the daemon itself reports: reloads, reconciles, refused interfaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonStats {
    pub reloads: ReloadStats,
    /// The last attempt to bring the kernel in line with the policy and the host failed
    /// (it is being retried).
    pub reconcile_failing: bool,
    /// Attempts that failed, since the start.
    pub reconcile_failures: u64,
    pub netlink: NetlinkStats,
    pub refused: Vec<Refused>,
    /// The policy in force: its file's SHA-256 and its signer's key id (empty without
    /// `--trusted-keys`).
    pub policy_sha256: String,
    pub policy_signer: String,
    /// Reloads refused because the policy's signature did not check out.
    pub signature_refusals: u64,
    /// Audit log records that could not be written.
    pub audit_write_failures: u64,
    /// Policies put into effect since the daemon started.
    pub policy_generation: u64,
    /// When the policy in force was put into effect (Unix milliseconds).
    pub last_reload_success_ms: u64,
    /// Attempts to attach to an interface that failed, since the start.
    pub attach_failures: u64,
    /// Every interface the policy claims.
    pub enforcement: Vec<Enforcement>,
    /// What the daemon's own verification found last.
    pub topology: Topology,
    /// A fleet daemon's source (`--policy-source`); `None` for a policy file.
    pub fleet: Option<Fleet>,
}

/// A fleet daemon's bundle source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    /// The bundle revision in force (0: none from etcd).
    pub revision: i64,
    /// Whether the daemon follows etcd now (its last request or watch succeeded).
    pub connected: bool,
}

/// The daemon's verification of the host against the policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Findings by kind (every kind, from zero).
    pub violations: Vec<(String, u64)>,
    /// When it last finished (Unix milliseconds; 0: not yet).
    pub last_verify_ms: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    sha256: String,
    signer: String,
}

/// The daemon's netlink subscription, since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetlinkStats {
    /// Times the socket's receive buffer overflowed (events were lost; every link was
    /// listed again).
    pub overruns: u64,
    /// Times the event stream ended and a new subscription was opened.
    pub reconnects: u64,
}

/// Everything one scrape shows.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub inventory: Inventory,
    /// The kernel's counters, summed over CPUs.
    pub counters: Vec<(CounterKey, Counter)>,
    /// Frames counted while the counter map was full, by (direction, verdict, audited).
    pub uncounted: Vec<Uncounted>,
    /// What the kernel could not record, by [`fault`] kind.
    pub faults: [u64; fault::KINDS as usize],
    pub conntrack: ConntrackStats,
    /// Each policy map's capacity and the kernel memory it takes.
    pub maps: Vec<crate::dataplane::Footprint>,
    /// Reports the kernel did not make, by [`isolator_common::event::lost`].
    pub events_lost: [u64; isolator_common::event::lost::KINDS as usize],
    pub daemon: DaemonStats,
    pub detail: Detail,
}

/// How finely the per-interface families are broken down (`--metrics-detail`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Detail {
    /// One series per interface, direction and reason (81 per interface from zero).
    #[default]
    Device,
    /// Summed per segment: the `device` label is left empty (81 per segment,
    /// whatever the number of interfaces). `isolator_interface_enforced` stays per
    /// interface.
    Segment,
}

/// One interface's enforcement, for `isolator_interface_enforced`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enforcement {
    pub device: String,
    /// `native`, `generic`, `tc_ingress`, or `none` when not enforced.
    pub mode: String,
    pub enforced: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnforcedLabels {
    device: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    device: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    what: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UncountedLabels {
    direction: String,
    verdict: String,
}

/// Renders the exposition. Every attached vif gets a series for each direction it is
/// judged in and each drop reason, starting at zero, so that `rate()` sees the first drop.
/// Counters of interfaces no longer attached are left out.
pub fn render(scrape: &Scrape) -> String {
    let Scrape {
        inventory,
        counters,
        uncounted,
        faults,
        conntrack,
        maps,
        events_lost,
        daemon,
        detail,
    } = scrape;
    // With `--metrics-detail segment` the per-interface families are summed per segment.
    let by_segment;
    let inventory = if *detail == Detail::Segment {
        let mut summed = inventory.clone();
        for vif in summed.vifs.values_mut() {
            vif.device = String::new();
        }
        by_segment = summed;
        &by_segment
    } else {
        inventory
    };
    let management_attempts = Family::<VifLabels, PromCounter>::default();
    for vif in inventory.vifs.values() {
        management_attempts.get_or_create(vif).inc_by(0);
    }
    for (key, value) in counters.iter() {
        if key.verdict != verdict::MANAGEMENT || key.direction != direction::INGRESS {
            continue;
        }
        if let Some(vif) = inventory.vifs.get(&key.ifindex) {
            management_attempts.get_or_create(vif).inc_by(value.packets);
        }
    }
    let events_dropped = Family::<ReasonLabels, PromCounter>::default();
    for (reason, n) in isolator_common::event::lost::NAMES
        .iter()
        .zip(events_lost.iter())
        .map(|(r, n)| (*r, *n))
        .chain([("write_failed", daemon.audit_write_failures)])
    {
        events_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }
    let reloads = &daemon.reloads;
    let drop_packets = Family::<DropLabels, PromCounter>::default();
    let drop_bytes = Family::<DropLabels, PromCounter>::default();
    let audit_packets = Family::<DropLabels, PromCounter>::default();
    let audit_bytes = Family::<DropLabels, PromCounter>::default();
    let pass_packets = Family::<PassLabels, PromCounter>::default();
    let pass_bytes = Family::<PassLabels, PromCounter>::default();
    let interfaces = Family::<SegmentLabels, Gauge>::default();

    let drop_labels = |vif: &VifLabels, dir: &str, reason: &str| DropLabels {
        device: vif.device.clone(),
        tenant: vif.tenant.clone(),
        segment: vif.segment.clone(),
        direction: dir.to_string(),
        reason: reason.to_string(),
    };
    let pass_labels = |vif: &VifLabels, dir: &str| PassLabels {
        device: vif.device.clone(),
        tenant: vif.tenant.clone(),
        segment: vif.segment.clone(),
        direction: dir.to_string(),
    };

    for (tenant, segment) in &inventory.segments {
        interfaces
            .get_or_create(&SegmentLabels {
                tenant: tenant.clone(),
                segment: segment.clone(),
            })
            .set(0);
    }
    for vif in inventory.vifs.values() {
        // A quarantined interface belongs to no segment.
        if !vif.segment.is_empty() {
            interfaces
                .get_or_create(&SegmentLabels {
                    tenant: vif.tenant.clone(),
                    segment: vif.segment.clone(),
                })
                .inc();
        }
        for dir in DIRECTIONS {
            let dir = direction::name(dir).unwrap_or("unknown");
            pass_packets.get_or_create(&pass_labels(vif, dir)).inc_by(0);
            pass_bytes.get_or_create(&pass_labels(vif, dir)).inc_by(0);
            for (_, reason, _) in verdict::DROP_REASONS {
                drop_packets
                    .get_or_create(&drop_labels(vif, dir, reason))
                    .inc_by(0);
                drop_bytes
                    .get_or_create(&drop_labels(vif, dir, reason))
                    .inc_by(0);
            }
        }
    }

    for (key, value) in counters.iter() {
        let Some(vif) = inventory.vifs.get(&key.ifindex) else {
            continue;
        };
        let Some(dir) = direction::name(key.direction) else {
            continue;
        };
        if key.verdict == verdict::PASS {
            let labels = pass_labels(vif, dir);
            pass_packets.get_or_create(&labels).inc_by(value.packets);
            pass_bytes.get_or_create(&labels).inc_by(value.bytes);
        } else if let Some(reason) = verdict::name(key.verdict) {
            let labels = drop_labels(vif, dir, reason);
            if key.flags & CounterKey::AUDIT != 0 {
                audit_packets.get_or_create(&labels).inc_by(value.packets);
                audit_bytes.get_or_create(&labels).inc_by(value.bytes);
            } else {
                drop_packets.get_or_create(&labels).inc_by(value.packets);
                drop_bytes.get_or_create(&labels).inc_by(value.bytes);
            }
        }
    }

    let mut registry = Registry::with_prefix("isolator");
    registry.register(
        "drop_packets",
        "Packets dropped, by interface, tenant, segment, direction and reason",
        drop_packets,
    );
    registry.register(
        "drop_bytes",
        "Bytes of dropped packets (layer 2 frame length)",
        drop_bytes,
    );
    registry.register(
        "pass_packets",
        "Packets passed, by interface, tenant, segment and direction",
        pass_packets,
    );
    registry.register(
        "pass_bytes",
        "Bytes of passed packets (layer 2 frame length)",
        pass_bytes,
    );
    registry.register(
        "audit_packets",
        "Packets a segment in audit mode would have dropped, counted and passed",
        audit_packets,
    );
    registry.register(
        "audit_bytes",
        "Bytes of packets audit mode passed (layer 2 frame length)",
        audit_bytes,
    );
    let map_memory = Family::<MapLabels, Gauge<i64>>::default();
    let map_capacity = Family::<MapLabels, Gauge<i64>>::default();
    for map in maps {
        let labels = MapLabels {
            map: map.name.to_ascii_lowercase(),
        };
        map_memory
            .get_or_create(&labels)
            .set(i64::try_from(map.memory_bytes).unwrap_or(i64::MAX));
        map_capacity
            .get_or_create(&labels)
            .set(i64::from(map.capacity));
    }
    registry.register(
        "policy_map_memory_bytes",
        "Kernel memory a policy map takes, as the kernel accounts it (its fdinfo memlock)",
        map_memory,
    );
    registry.register(
        "policy_map_capacity",
        "Entries a policy map holds at most, both policy generations together (sized from \
         the policy the daemon started with)",
        map_capacity,
    );
    let entries = Gauge::<i64>::default();
    entries.set(i64::try_from(conntrack.entries).unwrap_or(i64::MAX));
    registry.register(
        "conntrack_entries",
        "Tracked connections in the kernel table",
        entries,
    );
    let capacity = Gauge::<i64>::default();
    capacity.set(i64::try_from(conntrack.capacity).unwrap_or(i64::MAX));
    registry.register(
        "conntrack_capacity",
        "Size of the connection table; when full the least recently used entry is evicted",
        capacity,
    );
    let events = Family::<EventLabels, PromCounter>::default();
    for (event, value) in [
        ("opened", conntrack.opened),
        ("reset", conntrack.reset),
        ("expired", conntrack.expired),
        ("revoked", conntrack.revoked),
        ("released", conntrack.released),
        ("evicted", conntrack.evicted),
    ] {
        events
            .get_or_create(&EventLabels {
                event: event.to_string(),
            })
            .inc_by(value);
    }
    registry.register(
        "conntrack_events",
        "Connection tracking events: opened, reset (TCP RST), expired (idle), revoked (no longer admitted by a new policy), released (with the tables of an interface that went away), evicted (table full)",
        events,
    );
    let reload_family = Family::<ResultLabels, PromCounter>::default();
    for (result, value) in [("succeeded", reloads.succeeded), ("failed", reloads.failed)] {
        reload_family
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc_by(value);
    }
    registry.register(
        "policy_reloads",
        "Policy reloads on SIGHUP by result; after a failed one the running policy stays in force",
        reload_family,
    );
    registry.register(
        "interfaces",
        "Interfaces with isolator attached, by tenant and segment",
        interfaces,
    );
    let refused = Family::<RefusedLabels, Gauge>::default();
    for r in &daemon.refused {
        refused
            .get_or_create(&RefusedLabels {
                device: r.device.clone(),
                reason: r.reason.to_string(),
            })
            .set(1);
    }
    registry.register(
        "interfaces_refused",
        "Interfaces that look like VMs' but are not enforced as such (everything they send and receive is dropped, or the programs could not be attached), by reason: unclassified, unsupported_kind, attach_failed",
        refused,
    );
    let failing = Gauge::<i64>::default();
    failing.set(i64::from(daemon.reconcile_failing));
    registry.register(
        "reconcile_failing",
        "1 while the daemon cannot bring the kernel in line with the policy and the host's interfaces (it retries; see /healthz for the cause)",
        failing,
    );
    let failures = PromCounter::<u64>::default();
    failures.inc_by(daemon.reconcile_failures);
    registry.register(
        "reconcile_failures",
        "Attempts to bring the kernel in line with the policy and the host that failed",
        failures,
    );
    let info = Family::<PolicyLabels, Gauge>::default();
    info.get_or_create(&PolicyLabels {
        sha256: daemon.policy_sha256.clone(),
        signer: daemon.policy_signer.clone(),
    })
    .set(1);
    registry.register(
        "policy_info",
        "The policy in force: the SHA-256 of its file and the key id that signed it (empty without --trusted-keys)",
        info,
    );
    let refusals = PromCounter::<u64>::default();
    refusals.inc_by(daemon.signature_refusals);
    registry.register(
        "policy_signature_refusals",
        "Reloads refused because the policy had no valid signature by a trusted key (the running policy stayed in force)",
        refusals,
    );
    let overruns = PromCounter::<u64>::default();
    overruns.inc_by(daemon.netlink.overruns);
    registry.register(
        "netlink_overruns",
        "Times the netlink socket's receive buffer overflowed and link events were lost; each is followed by a full listing of the host's links (raise --netlink-receive-buffer if it grows)",
        overruns,
    );
    let reconnects = PromCounter::<u64>::default();
    reconnects.inc_by(daemon.netlink.reconnects);
    registry.register(
        "netlink_reconnects",
        "Times the netlink event stream ended and the daemon subscribed again (followed by a full listing)",
        reconnects,
    );
    let fault_family = Family::<FaultLabels, PromCounter>::default();
    for (what, value) in fault::NAMES.iter().zip(faults.iter()) {
        fault_family
            .get_or_create(&FaultLabels {
                what: what.to_string(),
            })
            .inc_by(*value);
    }
    registry.register(
        "kernel_faults",
        "What the kernel could not record: counter_map_full (a frame was counted by direction and reason only), connection_unrecorded, fragment_unrecorded",
        fault_family,
    );
    let uncounted_family = Family::<UncountedLabels, PromCounter>::default();
    for slot in uncounted {
        let (Some(dir), Some(verdict)) = (
            direction::name(slot.direction),
            Verdict::from_code(slot.verdict).map(|v| v.label().unwrap_or("pass")),
        ) else {
            continue;
        };
        uncounted_family
            .get_or_create(&UncountedLabels {
                direction: dir.to_string(),
                verdict: verdict.to_string(),
            })
            .inc_by(slot.frames.packets);
    }
    registry.register(
        "uncounted_packets",
        "Frames judged while the counter map was full, so not counted by interface: by direction and verdict (pass or the drop reason)",
        uncounted_family,
    );
    let build = Family::<VersionLabels, Gauge>::default();
    build
        .get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);
    registry.register("build_info", "1, labelled with the daemon's version", build);
    let generation = Gauge::<i64>::default();
    generation.set(daemon.policy_generation as i64);
    registry.register(
        "policy_generation",
        "Policies put into effect since the daemon started: 1 for the one it started with, one more per successful reload",
        generation,
    );
    let last_success = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    last_success.set(daemon.last_reload_success_ms as f64 / 1000.0);
    registry.register(
        "last_reload_success_timestamp_seconds",
        "When the policy in force was put into effect (at start or by the last successful reload), Unix seconds",
        last_success,
    );
    let enforced = Family::<EnforcedLabels, Gauge>::default();
    for e in &daemon.enforcement {
        enforced
            .get_or_create(&EnforcedLabels {
                device: e.device.clone(),
                mode: e.mode.clone(),
            })
            .set(i64::from(e.enforced));
    }
    registry.register(
        "interface_enforced",
        "1 for each interface the policy claims that isolator judges (mode native or generic XDP, or tc_ingress where another program holds the XDP hook), 0 for one it does not (mode none: attaching failed, or it is quarantined); `isolator_interface_enforced == 0` is the alert",
        enforced,
    );
    let attach_failures = PromCounter::<u64>::default();
    attach_failures.inc_by(daemon.attach_failures);
    registry.register(
        "attach_failures",
        "Attempts to attach isolator's programs to an interface that failed (each retry counts); isolator_interfaces_refused names the interfaces",
        attach_failures,
    );
    let violations = Family::<KindLabels, Gauge>::default();
    for (kind, n) in &daemon.topology.violations {
        violations
            .get_or_create(&KindLabels { kind: kind.clone() })
            .set(*n as i64);
    }
    registry.register(
        "topology_violations",
        "What the daemon's last verification of the host against the policy found, by kind (missing_interface is a warning; the others are violations): the log and the audit log name each",
        violations,
    );
    let last_verify = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    last_verify.set(daemon.topology.last_verify_ms as f64 / 1000.0);
    registry.register(
        "last_verify_timestamp_seconds",
        "When the daemon last finished verifying the host against the policy, Unix seconds (0: not yet)",
        last_verify,
    );
    if let Some(fleet) = &daemon.fleet {
        let revision = Gauge::<i64>::default();
        revision.set(fleet.revision);
        registry.register(
            "fleet_revision",
            "The etcd revision of the policy bundle in force (--policy-source); 0: none from etcd yet",
            revision,
        );
        let connected = Gauge::<i64>::default();
        connected.set(i64::from(fleet.connected));
        registry.register(
            "fleet_connected",
            "1 while the daemon follows its policy bundle in etcd, 0 while etcd is unreachable (the policy in force stays)",
            connected,
        );
    }
    registry.register(
        "management_attempts",
        "Packets a VM sent to a management prefix or the host's protected services (dropped, or passed in audit mode), by interface; each is also an audit log record, within a rate limit",
        management_attempts,
    );
    registry.register(
        "audit_events_dropped",
        "Reports not written to the audit log (management attempts) or shown to a monitor: rate_limited (the interface's budget per second was spent), ring_full (the daemon fell behind), write_failed (the audit log could not be written)",
        events_dropped,
    );
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        let mut vifs = BTreeMap::new();
        vifs.insert(
            7,
            VifLabels {
                device: "vacme-web1".into(),
                tenant: "acme".into(),
                segment: "web".into(),
            },
        );
        Inventory {
            vifs,
            segments: vec![("acme".into(), "web".into()), ("acme".into(), "db".into())],
        }
    }

    fn key(ifindex: u32, verdict: u8) -> CounterKey {
        CounterKey {
            ifindex,
            direction: direction::INGRESS,
            verdict,
            flags: 0,
            _pad: 0,
        }
    }

    #[test]
    fn audit_counters_are_their_own_family_and_egress_is_exported() {
        let mut audited = key(7, verdict::NOT_EXPOSED);
        audited.direction = direction::EGRESS;
        audited.flags = CounterKey::AUDIT;
        let counters = [(
            audited,
            Counter {
                packets: 4,
                bytes: 400,
            },
        )];
        let stats = ConntrackStats {
            entries: 3,
            capacity: 262_144,
            opened: 10,
            reset: 2,
            expired: 4,
            revoked: 5,
            released: 6,
            evicted: 1,
        };
        let text = render(&Scrape {
            inventory: inventory(),
            counters: counters.to_vec(),
            conntrack: stats,
            maps: vec![crate::dataplane::Footprint {
                name: "ADDRESSES_V4",
                capacity: 131072,
                memory_bytes: 2_100_000,
            }],
            daemon: DaemonStats {
                reloads: ReloadStats {
                    succeeded: 2,
                    failed: 1,
                },
                ..DaemonStats::default()
            },
            ..Scrape::default()
        });
        assert!(text.contains("isolator_audit_packets_total{device=\"vacme-web1\",tenant=\"acme\",segment=\"web\",direction=\"egress\",reason=\"not_exposed\"} 4\n"), "{text}");
        assert!(text.contains("isolator_drop_packets_total{device=\"vacme-web1\",tenant=\"acme\",segment=\"web\",direction=\"egress\",reason=\"not_exposed\"} 0\n"), "{text}");
        assert!(!text.contains("isolator_audit_packets_total{device=\"vacme-web1\",tenant=\"acme\",segment=\"web\",direction=\"ingress\",reason=\"malformed\"}"), "malformed is never audited");
        assert!(text.contains("isolator_conntrack_entries 3\n"));
        assert!(text.contains("isolator_policy_map_memory_bytes{map=\"addresses_v4\"} 2100000\n"));
        assert!(text.contains("isolator_policy_map_capacity{map=\"addresses_v4\"} 131072\n"));
        assert!(text.contains("isolator_conntrack_capacity 262144\n"));
        assert!(text.contains("isolator_conntrack_events_total{event=\"evicted\"} 1\n"));
        assert!(text.contains("isolator_conntrack_events_total{event=\"revoked\"} 5\n"));
        assert!(text.contains("isolator_conntrack_events_total{event=\"released\"} 6\n"));
        assert!(text.contains("isolator_conntrack_events_total{event=\"opened\"} 10\n"));
        assert!(text.contains("isolator_policy_reloads_total{result=\"failed\"} 1\n"));
        assert!(text.contains("isolator_policy_reloads_total{result=\"succeeded\"} 2\n"));
    }

    /// A link guarded before any plan has it: its drops count under its name, with no
    /// tenant or segment, and it adds to no segment's interface count; a vif of the plan
    /// keeps its labels.
    #[test]
    fn a_guarded_links_drops_count_under_its_name() {
        let counters = [(
            key(12, verdict::NO_POLICY),
            Counter {
                packets: 6,
                bytes: 360,
            },
        )];
        let text = render(&Scrape {
            inventory: inventory()
                .with_unclassified([(12, "vacme-web9".to_string()), (7, "renamed".to_string())]),
            counters: counters.to_vec(),
            ..Scrape::default()
        });
        assert!(text.contains("isolator_drop_packets_total{device=\"vacme-web9\",tenant=\"\",segment=\"\",direction=\"ingress\",reason=\"no_policy\"} 6\n"), "{text}");
        assert!(
            text.contains("isolator_interfaces{tenant=\"acme\",segment=\"web\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("device=\"renamed\""), "{text}");
    }

    /// `n` vifs of acme/web, each with 3 cross-segment drops.
    fn vifs(n: u32) -> (Inventory, Vec<(CounterKey, Counter)>) {
        let mut inventory = inventory();
        let mut counters = Vec::new();
        for i in 0..n {
            inventory.vifs.insert(
                100 + i,
                VifLabels {
                    device: format!("vacme-web{}", 100 + i),
                    tenant: "acme".into(),
                    segment: "web".into(),
                },
            );
            counters.push((
                key(100 + i, verdict::CROSS_SEGMENT),
                Counter {
                    packets: 3,
                    bytes: 180,
                },
            ));
        }
        (inventory, counters)
    }

    fn series(text: &str) -> usize {
        text.lines().filter(|l| !l.starts_with('#')).count()
    }

    /// The cardinality `--metrics-detail` bounds: what one more vif adds, per device and
    /// per segment (docs/metrics.md quotes these figures).
    #[test]
    fn per_segment_detail_sums_interfaces_and_bounds_the_series() {
        let scrape = |n: u32, detail: Detail| {
            let (inventory, counters) = vifs(n);
            render(&Scrape {
                inventory,
                counters,
                detail,
                ..Scrape::default()
            })
        };
        let per_vif = series(&scrape(11, Detail::Device)) - series(&scrape(10, Detail::Device));
        assert_eq!(
            per_vif, 81,
            "series one more vif adds with --metrics-detail device"
        );
        let summed = scrape(10, Detail::Segment);
        assert_eq!(
            series(&summed),
            series(&scrape(1000, Detail::Segment)),
            "per segment, more vifs of a segment add no series"
        );
        assert!(
            summed.contains("isolator_drop_packets_total{device=\"\",tenant=\"acme\",segment=\"web\",direction=\"ingress\",reason=\"cross_segment\"} 30\n"),
            "{summed}"
        );
        assert!(!summed.contains("device=\"vacme-web100\""), "{summed}");
    }

    #[test]
    fn the_fleet_families_are_there_for_a_fleet_daemon_only() {
        let file = render(&Scrape::default());
        assert!(!file.contains("isolator_fleet_"), "{file}");
        let fleet = render(&Scrape {
            daemon: DaemonStats {
                fleet: Some(Fleet {
                    revision: 42,
                    connected: false,
                }),
                ..DaemonStats::default()
            },
            ..Scrape::default()
        });
        assert!(fleet.contains("isolator_fleet_revision 42\n"), "{fleet}");
        assert!(fleet.contains("isolator_fleet_connected 0\n"), "{fleet}");
    }

    #[test]
    fn interfaces_enforced_or_not_generation_and_build() {
        let text = render(&Scrape {
            inventory: inventory(),
            daemon: DaemonStats {
                policy_generation: 3,
                last_reload_success_ms: 1_700_000_000_500,
                attach_failures: 2,
                enforcement: vec![
                    Enforcement {
                        device: "vacme-web1".into(),
                        mode: "native".into(),
                        enforced: true,
                    },
                    Enforcement {
                        device: "tap9".into(),
                        mode: "none".into(),
                        enforced: false,
                    },
                ],
                ..DaemonStats::default()
            },
            ..Scrape::default()
        });
        assert!(
            text.contains("isolator_interface_enforced{device=\"vacme-web1\",mode=\"native\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("isolator_interface_enforced{device=\"tap9\",mode=\"none\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("isolator_policy_generation 3\n"), "{text}");
        assert!(
            text.contains("isolator_last_reload_success_timestamp_seconds 1700000000.5\n"),
            "{text}"
        );
        assert!(
            text.contains("isolator_attach_failures_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "isolator_build_info{{version=\"{}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
    }

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
    }

    #[test]
    fn counters_become_labelled_series() {
        let counters = [
            (
                key(7, verdict::PASS),
                Counter {
                    packets: 3,
                    bytes: 300,
                },
            ),
            (
                key(7, verdict::CROSS_TENANT),
                Counter {
                    packets: 5,
                    bytes: 490,
                },
            ),
            // An interface that is no longer attached: left out.
            (
                key(99, verdict::CROSS_TENANT),
                Counter {
                    packets: 1,
                    bytes: 1,
                },
            ),
        ];
        let text = render(&Scrape {
            inventory: inventory(),
            counters: counters.to_vec(),
            ..Scrape::default()
        });
        assert_eq!(
            line(
                &text,
                "isolator_drop_packets_total{device=\"vacme-web1\",tenant=\"acme\",segment=\"web\",direction=\"ingress\",reason=\"cross_tenant\"}"
            ),
            "isolator_drop_packets_total{device=\"vacme-web1\",tenant=\"acme\",segment=\"web\",direction=\"ingress\",reason=\"cross_tenant\"} 5"
        );
        assert!(text.contains("isolator_drop_bytes_total{device=\"vacme-web1\",tenant=\"acme\",segment=\"web\",direction=\"ingress\",reason=\"cross_tenant\"} 490\n"));
        assert!(text.contains("isolator_pass_packets_total{device=\"vacme-web1\",tenant=\"acme\",segment=\"web\",direction=\"ingress\"} 3\n"));
        assert!(text.contains("isolator_pass_bytes_total{device=\"vacme-web1\",tenant=\"acme\",segment=\"web\",direction=\"ingress\"} 300\n"));
        assert!(!text.contains("99"));
        assert!(text.contains("# TYPE isolator_drop_packets_total counter\n"));
        assert!(text.contains("# TYPE isolator_interfaces gauge\n"));
    }

    #[test]
    fn every_reason_starts_at_zero_and_segments_without_vifs_are_shown() {
        let text = render(&Scrape {
            inventory: inventory(),
            ..Scrape::default()
        });
        for (_, reason, _) in verdict::DROP_REASONS {
            let series = format!(
                "isolator_drop_packets_total{{device=\"vacme-web1\",tenant=\"acme\",segment=\"web\",direction=\"ingress\",reason=\"{reason}\"}} 0\n"
            );
            assert!(text.contains(&series), "missing {series} in\n{text}");
        }
        assert!(text.contains("isolator_interfaces{tenant=\"acme\",segment=\"web\"} 1\n"));
        assert!(text.contains("isolator_interfaces{tenant=\"acme\",segment=\"db\"} 0\n"));
    }

    /// docs/metrics.md's table of drop reasons is the code's one list: the same reasons
    /// in the same order, and the auditable ones named as such.
    #[test]
    fn the_documented_reasons_are_the_code_s() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"),
        )
        .expect("docs/metrics.md");
        let section = doc
            .split("## Drop reasons")
            .nth(1)
            .expect("a section \"Drop reasons\"");
        let documented: Vec<&str> = section
            .lines()
            .take_while(|l| !l.starts_with("## "))
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let listed: Vec<&str> = Verdict::DROPS.iter().filter_map(|v| v.label()).collect();
        assert_eq!(documented, listed, "docs/metrics.md's reason table");
        let auditable: Vec<String> = Verdict::DROPS
            .iter()
            .filter(|v| v.auditable())
            .filter_map(|v| v.label())
            .map(|l| format!("`{l}`"))
            .collect();
        let line = section
            .lines()
            .find(|l| l.starts_with("Auditable reasons"))
            .expect("the line naming the auditable reasons");
        let paragraph: String = section
            .split(line)
            .nth(1)
            .map(|rest| format!("{line}{}", rest.split("\n\n").next().unwrap_or("")))
            .unwrap_or_default();
        for reason in &auditable {
            assert!(
                paragraph.contains(reason.as_str()),
                "{reason} is auditable: {paragraph}"
            );
        }
    }
}
