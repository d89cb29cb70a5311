//! What `verify` and `explain` read from the kernel, beside a running daemon and without
//! changing anything: links over netlink, TCX programs (BPF_PROG_QUERY), program names,
//! the daemon's pinned links and its pinned policy maps.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{Finding, Inventory, compare_maps, compare_plan};
use crate::compile::Plan;
use crate::policy::{InterfacePattern, Locations, Policy};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// `bpf(cmd, attr)` with a zero-padded `union bpf_attr`; the result (a file descriptor for
/// the commands that make one).
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, initialised `bpf_attr` of the size passed; the pointers
    // the callers put in it point at buffers that outlive the call, of the sizes given.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The programs attached to `ifindex`'s TCX hook (`ingress` or egress), in the order they
/// run.
fn tcx_programs(ifindex: u32, ingress: bool) -> std::io::Result<Vec<u32>> {
    let attach_type = if ingress {
        BPF_TCX_INGRESS
    } else {
        BPF_TCX_EGRESS
    };
    let mut ids = vec![0u32; 64];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&ifindex.to_ne_bytes());
    attr[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    attr[16..24].copy_from_slice(&(ids.as_mut_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
    match bpf(BPF_PROG_QUERY, &mut attr) {
        Ok(_) => {}
        // Nothing attached (or no TCX on this device).
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let count = u32::from_ne_bytes(attr[24..28].try_into().expect("4 bytes")) as usize;
    ids.truncate(count.min(ids.len()));
    Ok(ids)
}

/// The id of the program inside the link pinned at `path`.
fn pinned_link_program(path: &Path) -> std::io::Result<u32> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    // (Links take no BPF_F_RDONLY; nothing here changes it.)
    let link = owned(bpf(BPF_OBJ_GET, &mut attr)?);
    // struct bpf_link_info: type, id, prog_id, then a union not read here.
    let mut info = [0u8; 64];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(u32::from_ne_bytes(info[8..12].try_into().expect("4 bytes")))
}

/// A file descriptor of the loaded program with id `id`, to run it
/// ([`crate::dataplane::test_run_live`]).
pub fn program_fd(id: u32) -> std::io::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&id.to_ne_bytes());
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned)
}

/// The daemon's pinned links under `state_dir/links`: by ifindex, kind → program id.
fn pinned_links(state_dir: &Path) -> anyhow::Result<BTreeMap<u32, BTreeMap<String, u32>>> {
    let dir = state_dir.join("links");
    let mut out: BTreeMap<u32, BTreeMap<String, u32>> = BTreeMap::new();
    let entries = std::fs::read_dir(&dir).with_context(|| {
        format!(
            "listing the daemon's pinned links in {} (is the daemon running with this \
             --state-dir?)",
            dir.display()
        )
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((ifindex, kind)) = crate::dataplane::pin_name(&name) else {
            continue;
        };
        let program = pinned_link_program(&entry.path())
            .with_context(|| format!("reading the pinned link {}", entry.path().display()))?;
        out.entry(ifindex)
            .or_default()
            .insert(kind.to_string(), program);
    }
    Ok(out)
}

/// Inventories the host: links (netlink), their TCX programs, the names of every program
/// attached, and the daemon's pinned links under `state_dir`.
pub fn inventory(state_dir: &Path) -> anyhow::Result<Inventory> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (mut links, host_addresses) = runtime.block_on(crate::netlink::link_details())?;
    for link in &mut links {
        link.tcx_ingress = tcx_programs(link.ifindex, true)
            .with_context(|| format!("querying the TCX ingress programs of {}", link.name))?;
        link.tcx_egress = tcx_programs(link.ifindex, false)
            .with_context(|| format!("querying the TCX egress programs of {}", link.name))?;
    }
    let pinned = pinned_links(state_dir)?;
    let wanted: std::collections::BTreeSet<u32> = links
        .iter()
        .flat_map(|l| {
            l.xdp
                .iter()
                .chain(&l.tcx_ingress)
                .chain(&l.tcx_egress)
                .chain(&l.filters_ingress)
                .chain(&l.filters_egress)
        })
        .chain(pinned.values().flat_map(|p| p.values()))
        .copied()
        .collect();
    let mut programs = BTreeMap::new();
    for info in aya::programs::loaded_programs().flatten() {
        if wanted.contains(&info.id()) {
            programs.insert(
                info.id(),
                info.name_as_str().unwrap_or_default().to_string(),
            );
        }
    }
    Ok(Inventory {
        links,
        host_addresses,
        programs,
        pinned,
    })
}

/// The policy file, validated, with its entries' positions.
pub fn load_policy(config: &Path) -> anyhow::Result<(Policy, Locations)> {
    crate::policy::load_located(config).map_err(|diagnostics| {
        let text: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
        anyhow::anyhow!("{}", text.join("\n"))
    })
}

/// What `isolator verify` found.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// The policy generation in force.
    pub generation: u32,
    pub findings: Vec<Finding>,
    pub inventory: Inventory,
}

impl Report {
    /// Whether any finding is a violation (not only warnings).
    pub fn violated(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == super::Severity::Violation)
    }
}

/// How often [`verify`] looks again when the maps differ from the policy, and how long it
/// waits before each look: a link that appeared a moment ago is in this look's plan but
/// not yet in the daemon's (it gathers events for 20 ms, then writes a new generation).
const LOOKS: usize = 3;
const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

/// Inventories the host and compares it with the policy in `config` and the daemon's
/// pinned maps under `state_dir`. Where the maps differ, or the host's links changed
/// during the look, it looks again (up to 3 times, 300 ms apart) so that a reconcile in
/// progress is not reported as drift; links still changing at the last look leave map
/// drift and unenforced links to the next verification. An error: it could not look.
pub fn verify(
    config: &Path,
    state_dir: &Path,
    infrastructure: &[InterfacePattern],
) -> anyhow::Result<Report> {
    let (policy, _) = load_policy(config)?;
    verify_policy(&policy, config, state_dir, infrastructure)
}

/// [`verify`] against `policy`, the one in force (the daemon's own verification: the file
/// may have changed since it was loaded). Blocking: run it off the async runtime.
pub fn verify_policy(
    policy: &Policy,
    config: &Path,
    state_dir: &Path,
    infrastructure: &[InterfacePattern],
) -> anyhow::Result<Report> {
    verify_policy_reading_both(policy, config, state_dir, infrastructure).map(|(report, _)| report)
}

/// The generation not in force, as a verification read it (with the one in force, in
/// one reading of the maps).
pub struct OtherGeneration {
    pub generation: u32,
    pub entries: crate::encode::Entries,
}

/// [`verify_policy`], and what the maps hold in the generation not in force, from the
/// same reading (the daemon compares it with what it wrote there).
pub fn verify_policy_reading_both(
    policy: &Policy,
    config: &Path,
    state_dir: &Path,
    infrastructure: &[InterfacePattern],
) -> anyhow::Result<(Report, OtherGeneration)> {
    let mut look = 1;
    loop {
        // Links that come or go while a look lists the host and reads the maps (a burst
        // of new VMs) make it compare the maps with a plan of another moment: the daemon
        // adds a new link's entries within milliseconds, so its entries may be in the
        // maps and not in the plan, or its programs not yet on it.
        let links = crate::dataplane::namespace_links();
        let (mut report, other) = look_once(policy, config, state_dir, infrastructure)?;
        let changed = crate::dataplane::namespace_links() != links;
        let drift = report
            .findings
            .iter()
            .any(|f| f.kind == super::kind::MAP_DRIFT);
        if (!drift && !changed) || look == LOOKS {
            if changed {
                // Still changing at the last look: what the churn explains is not
                // reported (nor taken as drift, which would make the daemon read its maps
                // again); the verification after the changes settle looks at it.
                report.findings.retain(|f| {
                    f.kind != super::kind::MAP_DRIFT && f.kind != super::kind::NOT_ENFORCED
                });
                tracing::debug!(
                    "the host's links changed during each look of the verification; map \
                     drift and unenforced links are left to the next one"
                );
            }
            return Ok((report, other));
        }
        look += 1;
        std::thread::sleep(SETTLE);
    }
}

fn look_once(
    policy: &Policy,
    config: &Path,
    state_dir: &Path,
    infrastructure: &[InterfacePattern],
) -> anyhow::Result<(Report, OtherGeneration)> {
    let inventory = inventory(state_dir)?;
    // Compiled once, for the host's links and for the maps.
    let plan = Plan::new(policy, inventory.host_view())
        .map_err(|e| anyhow::anyhow!("compiling the policy for this host: {e}"))?;
    let mut findings = compare_plan(policy, &plan, &inventory, infrastructure);
    let pinned = crate::dataplane::read_pinned_policy(state_dir)
        .map_err(|e| anyhow::anyhow!("{}", crate::error_chain(&e)))
        .context("reading the daemon's pinned policy maps")?;
    let expected = crate::encode::encode(&plan, pinned.generation);
    findings.extend(compare_maps(&expected, &pinned.entries));
    findings.sort_by(|a, b| (a.severity, a.kind).cmp(&(b.severity, b.kind)));
    let other = OtherGeneration {
        generation: pinned.generation ^ 1,
        entries: pinned.other,
    };
    let report = Report {
        config: config.to_path_buf(),
        state_dir: state_dir.to_path_buf(),
        generation: pinned.generation,
        findings,
        inventory,
    };
    Ok((report, other))
}
