//! The state directory on bpffs: pinned maps and links that keep enforcement running
//! while the daemon restarts (invariant I7).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::programs::links::PinnedLink;

use super::error::{DataplaneError, pin_err};

/// A vif's pinned links left by a previous daemon.
#[derive(Default)]
pub(super) struct LeftVif {
    pub xdp: Option<PinnedLink>,
    pub tc: Option<PinnedLink>,
    pub tags: Option<PinnedLink>,
    /// The TC ingress judge, where another program held the XDP hook.
    pub judge: Option<PinnedLink>,
}

/// Links left by a previous daemon, by ifindex.
pub(super) type LeftLinks = BTreeMap<u32, LeftVif>;

/// Where pinned links are kept, and the links a previous daemon left there.
pub(super) struct Pins {
    pub links: PathBuf,
    /// Not yet taken over.
    pub left: LeftLinks,
}

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The state directory must be on bpffs. The conventional place, /sys/fs/bpf, is
/// mounted here when nothing is (as systemd does at boot); anywhere else the operator
/// has to mount it.
pub(super) fn ensure_bpffs(state_dir: &Path) -> Result<(), DataplaneError> {
    let mut existing = state_dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if fs_magic(existing) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let conventional = Path::new("/sys/fs/bpf");
    if existing == conventional && fs_magic(conventional) != Some(BPF_FS_MAGIC) {
        tracing::info!("mounting bpffs at /sys/fs/bpf (nothing was mounted there)");
        // SAFETY: valid NUL-terminated strings; mounting bpffs has no other preconditions.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        return Err(pin_err("mounting bpffs at /sys/fs/bpf")(Box::new(
            std::io::Error::last_os_error(),
        )));
    }
    Err(pin_err(format!(
        "{} is not on a bpf filesystem; mount one (mount -t bpf bpf DIR) or choose \
         --state-dir under /sys/fs/bpf",
        state_dir.display()
    ))(Box::new(std::io::Error::from(
        std::io::ErrorKind::Unsupported,
    ))))
}

fn fs_magic(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs is a plain C struct of integers; all zeros is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated and st is a valid statfs to fill.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_type as i64)
}

/// The ifindex and kind (`xdp`, `tc`, `tags`, `judge`) a link's pin is named after
/// (`<ifindex>-<kind>`).
pub fn pin_name(name: &str) -> Option<(u32, &str)> {
    let (ifindex, kind) = name.split_once('-')?;
    Some((ifindex.parse().ok()?, kind))
}

/// The links pinned under `dir` by a previous daemon, by ifindex: files `<ifindex>-xdp`,
/// `<ifindex>-tc` and `<ifindex>-tags`, or `<ifindex>-tc` and `<ifindex>-judge`.
pub(super) fn read_pinned_links(dir: &Path) -> Result<LeftLinks, DataplaneError> {
    let mut left = LeftLinks::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| pin_err(format!("listing {}", dir.display()))(Box::new(e)))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((ifindex, kind)) = pin_name(&name) else {
            continue;
        };
        let link = match PinnedLink::from_pin(entry.path()) {
            Ok(link) => link,
            Err(e) => {
                // Not a link (or unreadable): leave it, say so.
                tracing::warn!(path = %entry.path().display(), error = %e, "ignoring a pin that is not a link");
                continue;
            }
        };
        let slot = left.entry(ifindex).or_default();
        match kind {
            "xdp" => slot.xdp = Some(link),
            "tc" => slot.tc = Some(link),
            "tags" => slot.tags = Some(link),
            "judge" => slot.judge = Some(link),
            _ => {}
        }
    }
    Ok(left)
}

/// What `isolator teardown` released.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Teardown {
    /// Interfaces whose links were released (their programs detached), by ifindex.
    pub interfaces: Vec<u32>,
    /// Links released.
    pub links: usize,
    /// The state directory existed and was removed.
    pub removed: bool,
}

/// Removes enforcement that a stopped daemon left (`isolator run --persist`): releases
/// every link pinned in `state_dir` (which detaches its program, no other reference
/// holding it) and removes the directory with its pinned maps. Nothing here is undone by
/// a later `isolator run` but by enforcing anew.
pub fn teardown(state_dir: &Path) -> Result<Teardown, DataplaneError> {
    let mut out = Teardown::default();
    if !state_dir.exists() {
        return Ok(out);
    }
    // Quick attachments (`cls_bpf` filters) have no pins: found on the links.
    out.links += super::links::remove_all_quick_attachments(|_| true);
    let links = state_dir.join("links");
    if links.exists() {
        for (ifindex, vif) in read_pinned_links(&links)? {
            out.interfaces.push(ifindex);
            for link in [vif.xdp, vif.tc, vif.tags, vif.judge].into_iter().flatten() {
                link.unpin().map_err(|e| {
                    pin_err(format!("releasing a link of ifindex {ifindex}"))(Box::new(e))
                })?;
                out.links += 1;
            }
        }
    }
    std::fs::remove_dir_all(state_dir)
        .map_err(|e| pin_err(format!("removing {}", state_dir.display()))(Box::new(e)))?;
    out.removed = true;
    Ok(out)
}
