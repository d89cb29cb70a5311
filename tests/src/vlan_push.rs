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

use std::os::fd::OwnedFd;

use anyhow::{Context, Result};

use crate::netns::in_netns;
use crate::rawbpf::{BPF_FUNC_SKB_VLAN_PUSH, attach_tcx_egress, insn, load_tc, op};

/// `r6 = r1; r1 = r6; r2 = htons(tpid); r3 = tci; call skb_vlan_push; r0 = 0 (pass); exit`.
fn program(tpid: u16, tci: u16) -> Vec<u8> {
    use op::{CALL, EXIT, MOV64_K, MOV64_X};
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
            let prog = load_tc(&program(tpid, vid), "the VLAN push program")?;
            let link = attach_tcx_egress(&prog, &ifname, "the VLAN push program")?;
            Ok(VlanPusher {
                _link: link,
                _prog: prog,
            })
        })
        .with_context(|| format!("in netns {ns}"))
    }
}
