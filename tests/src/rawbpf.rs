//! Tiny TC programs of the lab's own (a VLAN pusher, a foreign counting program), written
//! as a handful of instructions and loaded with the raw `bpf(2)` syscall: no object file,
//! nothing for aya to parse. Every fd returned is owned: dropping a link detaches it.
//! Also a test run of any XDP program by fd, from any thread. And a foreign XDP program
//! (passes everything) on a bpf_link, to take an interface's XDP hook before the daemon.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_DRV_MODE`: native (driver) mode.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `src` of a 64-bit immediate load that names a map by fd.
pub const BPF_PSEUDO_MAP_FD: u8 = 1;
/// Helper ids.
pub const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
pub const BPF_FUNC_SKB_VLAN_PUSH: i32 = 18;

/// Opcodes the lab's programs use.
pub mod op {
    pub const ST_MEM_W: u8 = 0x62;
    pub const MOV64_X: u8 = 0xbf;
    pub const MOV64_K: u8 = 0xb7;
    pub const ADD64_K: u8 = 0x07;
    pub const LD_IMM64: u8 = 0x18;
    pub const CALL: u8 = 0x85;
    pub const JEQ_K: u8 = 0x15;
    pub const ATOMIC_DW: u8 = 0xdb;
    pub const EXIT: u8 = 0x95;
}

/// One eBPF instruction.
pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (dst & 0x0f) | (src << 4);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

fn bpf_fd(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: a successful MAP_CREATE / PROG_LOAD / LINK_CREATE returns a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// An array map of one `u64`, for a program to count in.
pub fn counter_map() -> Result<OwnedFd> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_MAP_TYPE_ARRAY.to_ne_bytes());
    attr[4..8].copy_from_slice(&4u32.to_ne_bytes());
    attr[8..12].copy_from_slice(&8u32.to_ne_bytes());
    attr[12..16].copy_from_slice(&1u32.to_ne_bytes());
    bpf_fd(BPF_MAP_CREATE, &mut attr).context("creating a counter map")
}

/// The `u64` in slot 0 of [`counter_map`] `map`.
pub fn read_counter(map: &OwnedFd) -> Result<u64> {
    let key = 0u32;
    let mut value = 0u64;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(&key as *const u32 as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(&mut value as *mut u64 as u64).to_ne_bytes());
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).context("reading a counter map")?;
    Ok(value)
}

/// Loads `insns` as a TC (`sched_cls`) program, in the calling thread's namespace; `what`
/// names it in errors, with the verifier's log.
pub fn load_tc(insns: &[u8], what: &str) -> Result<OwnedFd> {
    load(BPF_PROG_TYPE_SCHED_CLS, insns, what)
}

fn load(prog_type: u32, insns: &[u8], what: &str) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 8192];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&((insns.len() / 8) as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&1u32.to_ne_bytes());
    attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
    attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
    bpf_fd(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        anyhow::anyhow!(
            "loading {what}: {e}; verifier log:\n{}",
            String::from_utf8_lossy(&log[..end])
        )
    })
}

/// `BPF_LINK_CREATE` of `prog` on `ifname` (calling thread's namespace) for
/// `attach_type`, with `flags`.
fn link_create(prog: &OwnedFd, ifname: &str, attach_type: u32, flags: u32) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(ifname)?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname}");
    }
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&attach_type.to_ne_bytes());
    attr[12..16].copy_from_slice(&flags.to_ne_bytes());
    Ok(bpf_fd(BPF_LINK_CREATE, &mut attr)?)
}

/// Attaches `prog` to the egress of `ifname` (calling thread's namespace) with a TCX link,
/// at the end of the chain, as any tool that asks for no position.
pub fn attach_tcx_egress(prog: &OwnedFd, ifname: &str, what: &str) -> Result<OwnedFd> {
    link_create(prog, ifname, BPF_TCX_EGRESS, 0)
        .with_context(|| format!("attaching {what} to {ifname}'s egress"))
}

/// `r0 = XDP_PASS; exit`: an XDP program that passes every frame.
pub fn xdp_pass_program() -> Vec<u8> {
    [insn(op::MOV64_K, 0, 0, 0, 2), insn(op::EXIT, 0, 0, 0, 0)].concat()
}

/// Loads `insns` as an XDP program, in the calling thread's namespace; `what` names it in
/// errors, with the verifier's log.
pub fn load_xdp(insns: &[u8], what: &str) -> Result<OwnedFd> {
    load(BPF_PROG_TYPE_XDP, insns, what)
}

/// Attaches the XDP program `prog` to `ifname` (calling thread's namespace) in native
/// mode with a bpf_link, as another tool on the host would: while the link lives, the
/// interface's XDP hook is taken in both modes (the kernel runs native and generic XDP
/// never at once, and replaces no link). Dropping the fd detaches it.
pub fn attach_xdp_link(prog: &OwnedFd, ifname: &str, what: &str) -> Result<OwnedFd> {
    link_create(prog, ifname, BPF_XDP, XDP_FLAGS_DRV_MODE)
        .with_context(|| format!("attaching {what} to {ifname} (native XDP, bpf_link)"))
}

/// Runs the XDP program `prog` once on `frame` as if it arrived on `ifindex` (a device of
/// the calling thread's network namespace) with BPF_PROG_TEST_RUN, and returns its
/// action. Unlike aya's test runs it needs no `&mut` to the program: any thread holding
/// the fd can run it while another changes its maps.
pub fn test_run_xdp(prog: BorrowedFd<'_>, ifindex: u32, frame: &[u8]) -> Result<u32> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    attr[12..16].copy_from_slice(&(out.len() as u32).to_ne_bytes());
    attr[16..24].copy_from_slice(&(frame.as_ptr() as u64).to_ne_bytes());
    attr[24..32].copy_from_slice(&(out.as_mut_ptr() as u64).to_ne_bytes());
    attr[32..36].copy_from_slice(&1u32.to_ne_bytes());
    attr[40..44].copy_from_slice(&(size_of_val(&ctx) as u32).to_ne_bytes());
    attr[48..56].copy_from_slice(&(ctx.as_ptr() as u64).to_ne_bytes());
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN")?;
    Ok(u32::from_ne_bytes(attr[4..8].try_into().unwrap()))
}

/// A file descriptor of the loaded program with id `id` (as `IFLA_XDP` reports the
/// program attached to an interface), to run it with [`test_run_xdp`].
pub fn prog_fd_by_id(id: u32) -> Result<OwnedFd> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&id.to_ne_bytes());
    bpf_fd(BPF_PROG_GET_FD_BY_ID, &mut attr).with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}"))
}

/// Opens a map or program pinned on bpffs at `path` (to change a daemon's maps behind its
/// back, as a fault would).
pub fn obj_get(path: &std::path::Path) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    bpf_fd(BPF_OBJ_GET, &mut attr).with_context(|| format!("BPF_OBJ_GET {}", path.display()))
}

/// Looks `key` up in the map `map`; `None` if it has no such entry.
pub fn map_lookup(map: &OwnedFd, key: &[u8], value_size: usize) -> Result<Option<Vec<u8>>> {
    let mut value = vec![0u8; value_size];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(value.as_mut_ptr() as u64).to_ne_bytes());
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e).context("BPF_MAP_LOOKUP_ELEM"),
    }
}

/// Adds or replaces an entry of the map `map`.
pub fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(value.as_ptr() as u64).to_ne_bytes());
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// Removes an entry of the map `map`.
pub fn map_delete(map: &OwnedFd, key: &[u8]) -> std::io::Result<()> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(|_| ())
}

/// The ids of a bpf link and of the program inside it, as the kernel reports them
/// (`BPF_OBJ_GET_INFO_BY_FD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkIds {
    pub link: u32,
    pub program: u32,
}

/// [`LinkIds`] of the link pinned at `path`.
pub fn pinned_link_ids(path: &std::path::Path) -> Result<LinkIds> {
    let link = obj_get(path)?;
    // struct bpf_link_info: type, id, prog_id, then a union we do not read.
    let mut info = [0u8; 64];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .with_context(|| format!("BPF_OBJ_GET_INFO_BY_FD on {}", path.display()))?;
    Ok(LinkIds {
        link: u32::from_ne_bytes(info[4..8].try_into().unwrap()),
        program: u32::from_ne_bytes(info[8..12].try_into().unwrap()),
    })
}

/// Detaches the bpf link pinned at `path` from its hook (`BPF_LINK_DETACH`, what
/// `bpftool link detach` does): the program stops running there, the link object and its
/// pin stay. `ip link set dev X xdp off` cannot do this to a link (the kernel refuses).
pub fn detach_pinned_link(path: &std::path::Path) -> Result<()> {
    let link = obj_get(path)?;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &mut attr)
        .with_context(|| format!("BPF_LINK_DETACH {}", path.display()))?;
    Ok(())
}

/// Helper id of `bpf_redirect`.
pub const BPF_FUNC_REDIRECT: i32 = 23;
/// `BPF_F_TEST_XDP_LIVE_FRAMES`: a test run whose frames the kernel really drops, passes,
/// transmits or redirects.
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// `r0 = XDP_DROP; exit`: an XDP program that drops every frame (a benchmark's floor).
pub fn xdp_drop_program() -> Vec<u8> {
    [insn(op::MOV64_K, 0, 0, 0, 1), insn(op::EXIT, 0, 0, 0, 0)].concat()
}

/// `return bpf_redirect(ifindex, 0)`: an XDP program that sends every frame out of
/// `ifindex` (a traffic generator, run with [`xdp_live_frames`]).
pub fn xdp_redirect_program(ifindex: u32) -> Vec<u8> {
    [
        insn(op::MOV64_K, 1, 0, 0, ifindex as i32),
        insn(op::MOV64_K, 2, 0, 0, 0),
        insn(op::CALL, 0, 0, 0, BPF_FUNC_REDIRECT),
        insn(op::EXIT, 0, 0, 0, 0),
    ]
    .concat()
}

/// Runs the XDP program `prog` `repeat` times on copies of `frame` in live-frames mode
/// (BPF_PROG_TEST_RUN with `BPF_F_TEST_XDP_LIVE_FRAMES`, `batch_size` frames at a time):
/// the kernel performs each verdict for real, so a program that redirects transmits the
/// frames. In the calling thread's network namespace. Returns the kernel's average time
/// per run.
pub fn xdp_live_frames(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
    batch_size: u32,
) -> Result<std::time::Duration> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    attr[16..24].copy_from_slice(&(frame.as_ptr() as u64).to_ne_bytes());
    attr[32..36].copy_from_slice(&repeat.to_ne_bytes());
    attr[64..68].copy_from_slice(&BPF_F_TEST_XDP_LIVE_FRAMES.to_ne_bytes());
    attr[72..76].copy_from_slice(&batch_size.to_ne_bytes());
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN (live frames)")?;
    let ns = u32::from_ne_bytes(attr[36..40].try_into().unwrap());
    Ok(std::time::Duration::from_nanos(u64::from(ns)))
}
