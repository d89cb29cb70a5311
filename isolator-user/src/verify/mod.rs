//! `isolator verify`: the host's actual virtual network (links, bridges, VLANs, attached
//! programs, live map contents) compared with what the policy says (PRODUCT.md, principle
//! 4). The comparison is pure ([`compare`], [`compare_maps`]) over an [`Inventory`]; what
//! touches the kernel (netlink, BPF_PROG_QUERY, pinned links and maps) is in [`live`], and
//! `isolator explain` (one frame through the live programs, beside the reference model)
//! in [`explain`], and the reachability matrix of `verify --matrix` (probes between every
//! two places, run the same way) in [`matrix`].

pub mod explain;
pub mod live;
pub mod matrix;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::IpAddr;

use isolator_common::programs;
use serde::Serialize;

use crate::compile::{HostView, Link, Plan};
use crate::encode::{Entries, policy_tables};
use crate::policy::{InterfacePattern, Policy};

/// One link of the host as netlink reports it, with the programs attached to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkDetails {
    pub name: String,
    pub ifindex: u32,
    /// `IFLA_INFO_KIND` (`veth`, `tun`, `bridge`, `vlan`, `vxlan`, …); empty for a
    /// physical device.
    pub kind: String,
    /// The bridge (or other controller) it is a port of.
    pub master: Option<u32>,
    /// A VLAN device's id.
    pub vlan_id: Option<u16>,
    /// A VXLAN device's VNI.
    pub vni: Option<u32>,
    /// `IFLA_LINK`: a veth's peer, a VLAN device's lower device.
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the namespace (id as this namespace knows it) of `link`.
    pub link_netnsid: Option<i32>,
    /// Its addresses, `ADDR/LEN`.
    pub addresses: Vec<String>,
    /// The program on its XDP hook (`IFLA_XDP_PROG_ID`).
    pub xdp: Option<u32>,
    /// The programs on its TCX ingress and egress hooks, in the order they run.
    pub tcx_ingress: Vec<u32>,
    pub tcx_egress: Vec<u32>,
    /// The programs of the `cls_bpf` filters on its `clsact` ingress and egress hooks, in
    /// the order they run (after the TCX ones): isolator's quick attachment of a new vif
    /// until the daemon hands it over to TCX, or another tool's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters_ingress: Vec<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters_egress: Vec<u32>,
}

impl LinkDetails {
    /// The programs that judge what the link receives from its VM (TC ingress), in the
    /// order they run: the TCX ones, then the `cls_bpf` filters.
    pub fn tc_ingress(&self) -> Vec<u32> {
        self.tcx_ingress
            .iter()
            .chain(&self.filters_ingress)
            .copied()
            .collect()
    }

    /// The same for TC egress.
    pub fn tc_egress(&self) -> Vec<u32> {
        self.tcx_egress
            .iter()
            .chain(&self.filters_egress)
            .copied()
            .collect()
    }
}

/// Everything `verify` looked at.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Inventory {
    pub links: Vec<LinkDetails>,
    /// The host's own addresses (on any link): part of a plan.
    pub host_addresses: Vec<IpAddr>,
    /// The names of the programs attached anywhere, by id (as the kernel keeps them: at
    /// most 15 characters).
    pub programs: BTreeMap<u32, String>,
    /// The daemon's pinned links: by ifindex, kind (`xdp`, `tc`, `tags`, `judge`) → the id
    /// of the program inside.
    pub pinned: BTreeMap<u32, BTreeMap<String, u32>>,
}

impl Inventory {
    /// The host as `compile` and the model take it.
    pub fn host_view(&self) -> HostView {
        HostView {
            links: self
                .links
                .iter()
                .map(|l| Link {
                    name: l.name.clone(),
                    ifindex: l.ifindex,
                    kind: l.kind.clone(),
                })
                .collect(),
            addresses: self.host_addresses.clone(),
            ..HostView::default()
        }
    }

    fn link(&self, ifindex: u32) -> Option<&LinkDetails> {
        self.links.iter().find(|l| l.ifindex == ifindex)
    }

    fn name_of(&self, ifindex: u32) -> String {
        self.link(ifindex)
            .map_or_else(|| format!("ifindex {ifindex}"), |l| l.name.clone())
    }

    fn program(&self, id: u32) -> String {
        match self.programs.get(&id) {
            Some(name) => format!("{id} ({name})"),
            None => id.to_string(),
        }
    }
}

/// How bad a finding is: a violation makes `verify` exit 1, a warning does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Violation,
    Warning,
}

/// What kind of drift, one list (the values of the `kind` field and label).
pub mod kind {
    /// A policy interface without isolator's programs on one of its hooks.
    pub const NOT_ENFORCED: &str = "not_enforced";
    /// Another program holds a hook of a policy interface (XDP), or runs before
    /// isolator's (TCX).
    pub const FOREIGN_PROGRAM: &str = "foreign_program";
    /// An isolator program that is not the one behind the daemon's pinned link.
    pub const STALE_PROGRAM: &str = "stale_program";
    /// A link neither managed nor declared infrastructure on a tenant vif's bridge or
    /// VLAN.
    pub const UNMANAGED_PORT: &str = "unmanaged_port";
    /// Segments sharing an L2 domain where some port of it is not enforced.
    pub const SHARED_L2_UNENFORCED: &str = "shared_l2_unenforced";
    /// Live map contents that differ from what the policy compiles to.
    pub const MAP_DRIFT: &str = "map_drift";
    /// An interface the policy names that does not exist (a warning).
    pub const MISSING_INTERFACE: &str = "missing_interface";
    /// Every kind, in this order.
    pub const ALL: [&str; 7] = [
        NOT_ENFORCED,
        FOREIGN_PROGRAM,
        STALE_PROGRAM,
        UNMANAGED_PORT,
        SHARED_L2_UNENFORCED,
        MAP_DRIFT,
        MISSING_INTERFACE,
    ];
}

/// One finding: its kind, the objects involved, what is wrong and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub kind: &'static str,
    pub objects: Vec<String>,
    pub detail: String,
    pub fix: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let severity = match self.severity {
            Severity::Violation => "violation",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{severity}[{}] {}: {}\n  fix: {}",
            self.kind,
            self.objects.join(", "),
            self.detail,
            self.fix
        )
    }
}

fn violation(kind: &'static str, objects: Vec<String>, detail: String, fix: &str) -> Finding {
    Finding {
        severity: Severity::Violation,
        kind,
        objects,
        detail,
        fix: fix.to_string(),
    }
}

/// The name the kernel keeps of a program: its first 15 characters.
fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

/// Whether a program of this (kernel) name is one of isolator's.
fn is_isolators(name: &str) -> bool {
    [
        programs::XDP_INGRESS,
        programs::TC_EGRESS,
        programs::TC_INGRESS_TAGS,
        programs::TC_INGRESS_JUDGE,
    ]
    .iter()
    .any(|p| kernel_name(p) == name)
}

/// One hook of a managed interface and what should be on it.
struct Hook<'a> {
    /// `xdp`, `tcx ingress`, `tcx egress`.
    label: &'static str,
    /// What runs there, in order.
    attached: &'a [u32],
    /// Where in `attached` the `cls_bpf` filters begin (TC hooks): isolator's program
    /// there is a quick attachment, with no pinned link to compare.
    filters_from: usize,
    /// isolator's program expected there.
    expected: &'static str,
    /// The program behind the daemon's pinned link for this hook.
    pinned: Option<u32>,
}

const FIX_REATTACH: &str = "find what removed isolator's program: the running daemon does not \
     re-attach to an interface it holds; restart it (with the same --state-dir) and verify again";
const FIX_FOREIGN: &str = "remove the other program (or have its owner move it after \
     isolator's); then restart the daemon so that isolator attaches in its place";
const FIX_STALE: &str = "a program of an earlier daemon is still attached: restart the daemon \
     with the same --state-dir so that it takes every link over";

fn check_hook(inv: &Inventory, vif: &str, hook: &Hook<'_>, out: &mut Vec<Finding>) {
    let name = |id: &u32| inv.programs.get(id).map(String::as_str).unwrap_or("");
    let ours = hook
        .attached
        .iter()
        .position(|id| name(id) == kernel_name(hook.expected));
    let foreign_before: Vec<u32> = hook.attached[..ours.unwrap_or(hook.attached.len())]
        .iter()
        .filter(|id| !is_isolators(name(id)))
        .copied()
        .collect();
    if !foreign_before.is_empty() {
        let list: Vec<String> = foreign_before.iter().map(|id| inv.program(*id)).collect();
        let detail = match ours {
            Some(_) => format!(
                "{} on its {} runs before isolator's {}",
                list.join(", "),
                hook.label,
                hook.expected
            ),
            None => format!(
                "its {} holds {} instead of isolator's {}",
                hook.label,
                list.join(", "),
                hook.expected
            ),
        };
        out.push(violation(
            kind::FOREIGN_PROGRAM,
            vec![vif.to_string()],
            detail,
            FIX_FOREIGN,
        ));
    }
    match ours {
        None => out.push(violation(
            kind::NOT_ENFORCED,
            vec![vif.to_string()],
            format!(
                "no {} on its {}: {} not judged",
                hook.expected,
                hook.label,
                if hook.label == "tcx egress" {
                    "what reaches the VM is"
                } else {
                    "what the VM sends is"
                }
            ),
            FIX_REATTACH,
        )),
        Some(i) if i < hook.filters_from && Some(hook.attached[i]) != hook.pinned => {
            out.push(violation(
                kind::STALE_PROGRAM,
                vec![vif.to_string()],
                format!(
                    "its {} runs {}, not the daemon's ({})",
                    hook.label,
                    inv.program(hook.attached[i]),
                    hook.pinned
                        .map_or("no pinned link".to_string(), |id| format!("program {id}"))
                ),
                FIX_STALE,
            ))
        }
        Some(_) => {}
    }
}

/// The interfaces a plan attaches to: its vifs and its quarantined links.
fn managed(plan: &Plan) -> BTreeMap<u32, Option<u32>> {
    plan.vifs
        .iter()
        .map(|v| (v.ifindex, Some(v.segment)))
        .chain(plan.quarantined.iter().map(|q| (q.ifindex, None)))
        .collect()
}

/// Compares the host's inventory with `policy`: attachments of every interface the policy
/// manages, the L2 domains (bridges, VLAN devices) of tenant vifs, and interfaces the
/// policy names that do not exist. `infrastructure`: links declared to share tenant L2
/// domains (besides segments' `uplinks`). Fails only if the policy cannot be compiled
/// for this host.
pub fn compare(
    policy: &Policy,
    inv: &Inventory,
    infrastructure: &[InterfacePattern],
) -> Result<Vec<Finding>, crate::compile::PlanError> {
    let plan = Plan::new(policy, inv.host_view())?;
    Ok(compare_plan(policy, &plan, inv, infrastructure))
}

/// [`compare`] with `policy` already compiled for this host (`plan`: `Plan::new` of it
/// and `inv.host_view()`).
pub fn compare_plan(
    policy: &Policy,
    plan: &Plan,
    inv: &Inventory,
    infrastructure: &[InterfacePattern],
) -> Vec<Finding> {
    let managed = managed(plan);
    let mut out = Vec::new();

    // Attachments.
    for &ifindex in managed.keys() {
        let Some(link) = inv.link(ifindex) else {
            continue;
        };
        let pinned = inv.pinned.get(&ifindex);
        let pin = |kind: &str| pinned.and_then(|p| p.get(kind)).copied();
        let xdp: Vec<u32> = link.xdp.into_iter().collect();
        let judged_at_tc = pin("judge").is_some();
        let (tc_ingress, tc_egress) = (link.tc_ingress(), link.tc_egress());
        let mut hooks = vec![Hook {
            label: "tcx egress",
            attached: &tc_egress,
            filters_from: link.tcx_egress.len(),
            expected: programs::TC_EGRESS,
            pinned: pin("tc"),
        }];
        if judged_at_tc {
            // The daemon found the XDP hook taken and judges at TC ingress instead: the
            // other program is reported, the judge checked.
            if let Some(id) = link
                .xdp
                .filter(|id| !is_isolators(inv.programs.get(id).map(String::as_str).unwrap_or("")))
            {
                out.push(violation(
                    kind::FOREIGN_PROGRAM,
                    vec![link.name.clone()],
                    format!(
                        "its xdp hook holds {}: isolator judges at TC ingress after it, and \
                         what it redirects is not judged",
                        inv.program(id)
                    ),
                    FIX_FOREIGN,
                ));
            }
            hooks.push(Hook {
                label: "tcx ingress",
                attached: &tc_ingress,
                filters_from: link.tcx_ingress.len(),
                expected: programs::TC_INGRESS_JUDGE,
                pinned: pin("judge"),
            });
        } else {
            hooks.push(Hook {
                label: "xdp",
                attached: &xdp,
                filters_from: xdp.len(),
                expected: programs::XDP_INGRESS,
                pinned: pin("xdp"),
            });
            hooks.push(Hook {
                label: "tcx ingress",
                attached: &tc_ingress,
                filters_from: link.tcx_ingress.len(),
                expected: programs::TC_INGRESS_TAGS,
                pinned: pin("tags"),
            });
        }
        for hook in &hooks {
            check_hook(inv, &link.name, hook, &mut out);
        }
    }
    let unenforced: BTreeSet<String> = out.iter().flat_map(|f| f.objects.clone()).collect();

    // L2 domains: each bridge with a managed vif as a port, and VLAN devices on a vif or
    // on such a bridge.
    let declared = |name: &str| {
        infrastructure.iter().any(|p| p.matches(name))
            || policy
                .tenants
                .iter()
                .flat_map(|t| &t.segments)
                .any(|s| s.uplinks.iter().any(|u| u.matches(name)))
    };
    let mut domains: BTreeMap<u32, Vec<&LinkDetails>> = BTreeMap::new();
    for link in &inv.links {
        if let Some(master) = link.master
            && managed.contains_key(&link.ifindex)
        {
            domains.entry(master).or_default();
        }
    }
    for link in &inv.links {
        if let Some(master) = link.master
            && let Some(ports) = domains.get_mut(&master)
        {
            ports.push(link);
        }
    }
    for link in &inv.links {
        // A VLAN device stacked on a tenant vif or bridge shares that L2 domain.
        if link.kind == "vlan"
            && let Some(lower) = link.link
        {
            if let Some(ports) = domains.get_mut(&lower) {
                ports.push(link);
            } else if managed.contains_key(&lower) {
                out.push(violation(
                    kind::UNMANAGED_PORT,
                    vec![link.name.clone(), inv.name_of(lower)],
                    format!(
                        "VLAN {} on the tenant interface {} is neither managed nor declared \
                         infrastructure",
                        link.vlan_id.unwrap_or(0),
                        inv.name_of(lower)
                    ),
                    "remove it, or declare it (a segment's `uplinks`, or verify's \
                     --infrastructure)",
                ));
            }
        }
    }
    for (bridge, ports) in &domains {
        let bridge_name = inv.name_of(*bridge);
        let mut segments = BTreeSet::new();
        let mut not_enforced = Vec::new();
        for port in ports {
            match managed.get(&port.ifindex) {
                Some(segment) => {
                    segments.extend(*segment);
                    if unenforced.contains(&port.name) {
                        not_enforced.push(port.name.clone());
                    }
                }
                None if declared(&port.name) => {}
                None => {
                    let what = match (port.kind.as_str(), port.vlan_id, port.vni) {
                        ("vlan", Some(id), _) => format!("VLAN {id} device"),
                        (_, _, Some(vni)) => format!("VXLAN device (VNI {vni})"),
                        ("", _, _) => "device".to_string(),
                        (kind, _, _) => format!("{kind} link"),
                    };
                    out.push(violation(
                        kind::UNMANAGED_PORT,
                        vec![port.name.clone(), bridge_name.clone()],
                        format!(
                            "the {what} {} shares {bridge_name} with tenant interfaces but \
                             is neither managed by the policy nor declared infrastructure",
                            port.name
                        ),
                        "remove it from the bridge, claim it in a segment's `interfaces`, \
                         or declare it (a segment's `uplinks`, or verify's --infrastructure)",
                    ));
                    not_enforced.push(port.name.clone());
                }
            }
        }
        if segments.len() > 1 && !not_enforced.is_empty() {
            let names: Vec<String> = segments.iter().map(|s| plan.segment_label(*s)).collect();
            out.push(violation(
                kind::SHARED_L2_UNENFORCED,
                std::iter::once(bridge_name.clone())
                    .chain(not_enforced.iter().cloned())
                    .collect(),
                format!(
                    "{bridge_name} joins segments {} and its port(s) {} are not enforced: \
                     frames between them can cross unjudged",
                    names.join(", "),
                    not_enforced.join(", ")
                ),
                "enforce or remove those ports (see the findings about them)",
            ));
        }
    }

    // Interfaces the policy names literally that do not exist.
    for tenant in &policy.tenants {
        for segment in &tenant.segments {
            for entry in segment.interfaces.iter().filter(|i| !i.is_glob()) {
                if !inv.links.iter().any(|l| entry.matches(&l.name)) {
                    out.push(Finding {
                        severity: Severity::Warning,
                        kind: kind::MISSING_INTERFACE,
                        objects: vec![entry.as_str().to_string()],
                        detail: format!(
                            "{}/{} names interface {}, which does not exist on this host",
                            tenant.name,
                            segment.name,
                            entry.as_str()
                        ),
                        fix: "nothing while its VM is not here; otherwise correct the name \
                              in the policy"
                            .to_string(),
                    });
                }
            }
        }
    }
    out
}

/// Differences in one map, at most this many listed (the rest counted).
pub const MAP_DRIFT_SHOWN: usize = 10;

/// The bytes of a plain value, borrowed: to compare and order by.
fn raw<T: aya::Pod>(value: &T) -> &[u8] {
    // SAFETY: `T: Pod` is plain old data (`#[repr(C)]` integers and byte arrays with
    // explicit padding): every byte is initialised; the slice borrows `value`.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Whether two values of a table say the same: their bytes, but for the `epoch` of
/// `SETTINGS` (when the daemon put the generation into effect), which is not compared.
fn same_value<V: aya::Pod + 'static>(a: &V, b: &V) -> bool {
    let (any_a, any_b): (&dyn std::any::Any, &dyn std::any::Any) = (a, b);
    match (
        any_a.downcast_ref::<isolator_common::Settings>(),
        any_b.downcast_ref::<isolator_common::Settings>(),
    ) {
        (Some(a), Some(b)) => {
            let epochless =
                |s: &isolator_common::Settings| isolator_common::Settings { epoch: 0, ..*s };
            raw(&epochless(a)) == raw(&epochless(b))
        }
        _ => raw(a) == raw(b),
    }
}

/// A table's entries ordered by their keys' bytes; of entries with equal keys, the last
/// (as a map would keep it).
fn by_key<K: aya::Pod, V>(entries: &[(K, V)]) -> Vec<&(K, V)> {
    let mut sorted: Vec<&(K, V)> = entries.iter().collect();
    // Stable: equal keys stay in their order, so the last of them is kept below.
    sorted.sort_by(|a, b| raw(&a.0).cmp(raw(&b.0)));
    let mut out: Vec<&(K, V)> = Vec::with_capacity(sorted.len());
    for entry in sorted {
        match out.last_mut() {
            Some(last) if raw(&last.0) == raw(&entry.0) => *last = entry,
            _ => out.push(entry),
        }
    }
    out
}

/// Adds a finding for `map` if the live entries differ from the expected ones: each side
/// ordered by key once, then walked together (no copy of an entry, no allocation per
/// key: a table of a large policy holds hundreds of thousands).
fn diff_table<K: aya::Pod + Debug, V: aya::Pod + Debug + 'static>(
    map: &'static str,
    expected: &[(K, V)],
    live: &[(K, V)],
    out: &mut Vec<Finding>,
) {
    let (expected, live) = (by_key(expected), by_key(live));
    // Missing and changed entries in the expected order, then the extra ones.
    let (mut lines, mut extra) = (Vec::new(), Vec::new());
    let (mut e, mut l) = (expected.iter().peekable(), live.iter().peekable());
    loop {
        match (e.peek(), l.peek()) {
            (None, None) => break,
            (Some((key, value)), None) => {
                lines.push(format!("missing {key:?} => {value:?}"));
                e.next();
            }
            (None, Some((key, value))) => {
                extra.push(format!("extra {key:?} => {value:?}"));
                l.next();
            }
            (Some((key, value)), Some((live_key, got))) => match raw(key).cmp(raw(live_key)) {
                std::cmp::Ordering::Less => {
                    lines.push(format!("missing {key:?} => {value:?}"));
                    e.next();
                }
                std::cmp::Ordering::Greater => {
                    extra.push(format!("extra {live_key:?} => {got:?}"));
                    l.next();
                }
                std::cmp::Ordering::Equal => {
                    if !same_value(value, got) {
                        lines.push(format!("{key:?}: expected {value:?}, found {got:?}"));
                    }
                    e.next();
                    l.next();
                }
            },
        }
    }
    lines.append(&mut extra);
    if lines.is_empty() {
        return;
    }
    let count = lines.len();
    let mut detail = format!(
        "{count} entr{} differ:",
        if count == 1 { "y" } else { "ies" }
    );
    for line in lines.iter().take(MAP_DRIFT_SHOWN) {
        detail.push_str("\n    ");
        detail.push_str(line);
    }
    if count > MAP_DRIFT_SHOWN {
        detail.push_str(&format!("\n    … and {} more", count - MAP_DRIFT_SHOWN));
    }
    out.push(violation(
        kind::MAP_DRIFT,
        vec![map.to_string()],
        detail,
        "something changed the daemon's maps behind its back: find it; once the daemon's \
         own verification has seen the drift, its next reload (`isolator reload`) reads \
         the maps and rewrites what differs from the policy",
    ));
}

macro_rules! define_compare_maps {
    ($($field:ident: $name:ident => $kind:ident<$k:ty, $v:ty>,)*) => {
        /// The differences between the entries the policy compiles to (`expected`) and
        /// the live ones, one finding per map that differs. The `epoch` of `SETTINGS`
        /// (when the daemon put the generation into effect) is not compared.
        pub fn compare_maps(expected: &Entries, live: &Entries) -> Vec<Finding> {
            let mut out = Vec::new();
            $( diff_table(isolator_common::maps::$name, &expected.$field, &live.$field, &mut out); )*
            out
        }
    };
}
policy_tables!(define_compare_maps);

#[cfg(test)]
mod tests;
