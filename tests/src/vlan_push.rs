//! A VM that tags its frames the way a kernel VLAN device or bridge does: the tag travels
//! in the socket buffer's offload metadata (`skb->vlan_tci`), not in the frame bytes, so a
//! program that reads only the bytes does not see it. This kernel has no 802.1Q module,
//! no VLAN-filtering bridge and no `vlan` TC action, so the lab puts a tiny TC program of
//! its own on a VM's `eth0` egress that calls `bpf_skb_vlan_push` on every frame: exactly
//! what `vlan_dev_hard_start_xmit` does on a device with TX VLAN offload (veth has it).
//!
//! The program is six instructions, loaded with the raw `bpf(2)` syscall (no object file)
//! and attached with a TCX link inside the VM's namespace. Dropping the [`VlanPusher`]
//! closes the link, which detaches the program.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

use crate::netns::in_netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_FUNC_SKB_VLAN_PUSH: i32 = 18;

/// One eBPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (dst & 0x0f) | (src << 4);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}

/// `r6 = r1; r1 = r6; r2 = htons(tpid); r3 = tci; call skb_vlan_push; r0 = 0 (pass); exit`.
fn program(tpid: u16, tci: u16) -> Vec<u8> {
    const MOV64_X: u8 = 0xbf;
    const MOV64_K: u8 = 0xb7;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    [
        insn(MOV64_X, 6, 1, 0, 0),
        insn(MOV64_X, 1, 6, 0, 0),
        insn(
            MOV64_K,
            2,
            0,
            0,
            i32::from(u16::from_ne_bytes(tpid.to_be_bytes())),
        ),
        insn(MOV64_K, 3, 0, 0, i32::from(tci)),
        insn(CALL, 0, 0, 0, BPF_FUNC_SKB_VLAN_PUSH),
        insn(MOV64_K, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]
    .concat()
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a successful PROG_LOAD / LINK_CREATE returns a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Tags every frame a VM sends on one interface, in offload metadata, while it lives.
pub struct VlanPusher {
    _link: OwnedFd,
    _prog: OwnedFd,
}

impl VlanPusher {
    /// Attaches to the egress of `ifname` in namespace `ns`: every frame leaves with the
    /// tag (`tpid` 0x8100 or 0x88a8, VLAN id `vid`) in its metadata.
    pub fn attach(ns: &str, ifname: &str, tpid: u16, vid: u16) -> Result<VlanPusher> {
        let ifname = ifname.to_string();
        in_netns(ns, move || {
            let insns = program(tpid, vid);
            let license = c"GPL";
            let mut log = vec![0u8; 4096];
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
            attr[4..8].copy_from_slice(&((insns.len() / 8) as u32).to_ne_bytes());
            attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
            attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
            attr[24..28].copy_from_slice(&1u32.to_ne_bytes());
            attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
            attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
            let prog = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                anyhow::anyhow!(
                    "loading the VLAN push program: {e}; verifier log:\n{}",
                    String::from_utf8_lossy(&log[..end])
                )
            })?;
            let c = std::ffi::CString::new(ifname.as_str())?;
            // SAFETY: a valid NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {ifname}");
            }
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
            attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
            attr[8..12].copy_from_slice(&BPF_TCX_EGRESS.to_ne_bytes());
            let link = bpf(BPF_LINK_CREATE, &mut attr)
                .with_context(|| format!("attaching the VLAN push program to {ifname}"))?;
            Ok(VlanPusher {
                _link: link,
                _prog: prog,
            })
        })
        .with_context(|| format!("in netns {ns}"))
    }
}
