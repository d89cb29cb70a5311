//! Shared harness of the BPF_PROG_TEST_RUN verdict tests: a private network namespace,
//! veth devices standing in for vifs, frame builders, and a row checker that compares
//! the action and the exact counter change.
#![allow(dead_code)] // each test file uses part of it

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use bytes::{BufMut, BytesMut};
use isolator::compile::{Link, Plan};
use isolator::dataplane::Dataplane;
use isolator::policy;
use isolator_common::{Counter, CounterKey, direction, verdict};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;

/// Runs `body` on a fresh thread in a new, anonymous network namespace: whatever it
/// creates there vanishes with the thread; nothing touches the root namespace.
pub fn in_private_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread's network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) failed: {} (these tests need root)",
            std::io::Error::last_os_error()
        );
        body()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Creates a veth pair per name in the calling thread's (private) namespace (this kernel
/// has no dummy driver) and returns the named ends.
pub fn veths(names: &[&str]) -> Vec<Link> {
    names
        .iter()
        .map(|name| {
            let status = Command::new("ip")
                .args(["link", "add", name, "type", "veth", "peer", "name"])
                .arg(format!("{name}-p"))
                .status()
                .expect("running ip");
            assert!(status.success(), "ip link add {name} failed");
            let c = std::ffi::CString::new(*name).unwrap();
            // SAFETY: c is a valid NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            assert_ne!(ifindex, 0, "{name} has no ifindex");
            Link {
                name: name.to_string(),
                ifindex,
            }
        })
        .collect()
}

/// Which program a row runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// XDP: the frame is sent by the VM behind the vif.
    In,
    /// TC egress: the frame is delivered to the VM behind the vif.
    Out,
}

pub struct Row {
    pub name: &'static str,
    pub dir: Dir,
    pub vif: &'static str,
    pub frame: Vec<u8>,
    pub verdict: u8,
    /// A drop that audit mode passes.
    pub audited: bool,
}

pub fn row(name: &'static str, vif: &'static str, frame: Vec<u8>, verdict: u8) -> Row {
    Row {
        name,
        dir: Dir::In,
        vif,
        frame,
        verdict,
        audited: false,
    }
}

pub fn out(name: &'static str, vif: &'static str, frame: Vec<u8>, verdict: u8) -> Row {
    Row {
        dir: Dir::Out,
        ..row(name, vif, frame, verdict)
    }
}

impl Row {
    pub fn audited(mut self) -> Row {
        self.audited = true;
        self
    }
}

pub struct Lab {
    pub dp: Dataplane,
    pub links: Vec<Link>,
}

impl Lab {
    /// Loads the programs and applies `policy_text` with `names` as the host's links.
    pub fn new(policy_text: &str, names: &[&str]) -> Lab {
        Lab::with_plan(policy_text, names, |_| {})
    }

    /// Like [`Lab::new`], letting `adjust` change the compiled plan before it is applied.
    pub fn with_plan(policy_text: &str, names: &[&str], adjust: impl FnOnce(&mut Plan)) -> Lab {
        let links = veths(names);
        let policy = policy::parse(policy_text, "test.yaml").expect("valid policy");
        let mut plan = Plan::new(&policy, &links).expect("plan");
        adjust(&mut plan);
        let mut dp = Dataplane::load().expect("loading the programs");
        dp.apply(&plan).expect("applying the policy");
        Lab { dp, links }
    }

    pub fn ifindex(&self, name: &str) -> u32 {
        self.links
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no link {name}"))
            .ifindex
    }

    /// Runs one row; checks the action and that exactly the row's counter moved, by one
    /// packet and the frame's length.
    pub fn check(&mut self, row: &Row) {
        let ifindex = self.ifindex(row.vif);
        let before = self.dp.counters().expect("counters");
        let passes = row.verdict == verdict::PASS || row.audited;
        let dir = match row.dir {
            Dir::In => {
                let action = self
                    .dp
                    .test_run_ingress(ifindex, &row.frame)
                    .unwrap_or_else(|e| panic!("{}: test run failed: {e:?}", row.name));
                let expected = if passes { XDP_PASS } else { XDP_DROP };
                assert_eq!(
                    action, expected,
                    "{}: XDP action (1 = drop, 2 = pass)",
                    row.name
                );
                direction::INGRESS
            }
            Dir::Out => {
                let action = self
                    .dp
                    .test_run_egress(ifindex, &row.frame)
                    .unwrap_or_else(|e| panic!("{}: test run failed: {e:?}", row.name));
                let expected = if passes { TC_ACT_OK } else { TC_ACT_SHOT };
                assert_eq!(
                    action, expected,
                    "{}: TC action (0 = pass, 2 = drop)",
                    row.name
                );
                direction::EGRESS
            }
        };
        let after = self.dp.counters().expect("counters");
        let key = CounterKey {
            ifindex,
            direction: dir,
            verdict: row.verdict,
            flags: if row.audited { CounterKey::AUDIT } else { 0 },
            _pad: 0,
        };
        let get = |snapshot: &[(CounterKey, Counter)], k: &CounterKey| {
            snapshot
                .iter()
                .find(|(kk, _)| kk == k)
                .map(|(_, c)| *c)
                .unwrap_or_default()
        };
        let delta_packets = get(&after, &key).packets - get(&before, &key).packets;
        let delta_bytes = get(&after, &key).bytes - get(&before, &key).bytes;
        assert_eq!(
            (delta_packets, delta_bytes),
            (1, row.frame.len() as u64),
            "{}: counter for verdict {}{} on {}",
            row.name,
            verdict::name(row.verdict).unwrap_or("pass"),
            if row.audited { " (audit)" } else { "" },
            row.vif
        );
        for (k, c) in &after {
            if *k != key {
                assert_eq!(
                    get(&before, k),
                    *c,
                    "{}: unexpected counter change at {k:?}",
                    row.name
                );
            }
        }
    }

    pub fn check_all(&mut self, rows: &[Row]) {
        for r in rows {
            self.check(r);
        }
    }
}

// ---------------------------------------------------------------- frame builders

pub const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// A router's MAC: frames from outside every segment come from it, never from a vif.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];

pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const SYN_ACK: u8 = SYN | ACK;

/// A transport header.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6 (by address family): type, code, identifier.
    Icmp {
        kind: u8,
        code: u8,
        id: u16,
    },
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

pub fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

/// Echo request (8 / 128 by family is chosen by [`ip`]).
pub fn echo_request(id: u16) -> L4 {
    L4::Icmp {
        kind: 255,
        code: 0,
        id,
    }
}

/// Echo reply (0 / 129).
pub fn echo_reply(id: u16) -> L4 {
    L4::Icmp {
        kind: 254,
        code: 0,
        id,
    }
}

fn l4_bytes(l4: L4, v6: bool) -> (u8, Vec<u8>) {
    let mut b = BytesMut::new();
    match l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
        } => {
            b.put_u16(sport);
            b.put_u16(dport);
            b.put_u32(1); // seq
            b.put_u32(0); // ack
            b.put_u8(5 << 4);
            b.put_u8(flags);
            b.put_u16(65535);
            b.put_u16(0);
            b.put_u16(0);
            (6, b.to_vec())
        }
        L4::Udp { sport, dport } => {
            b.put_u16(sport);
            b.put_u16(dport);
            b.put_u16(8 + 4);
            b.put_u16(0);
            b.put_u32(0xdead_beef);
            (17, b.to_vec())
        }
        L4::Icmp { kind, code, id } => {
            let kind = match (kind, v6) {
                (255, false) => 8,
                (255, true) => 128,
                (254, false) => 0,
                (254, true) => 129,
                (k, _) => k,
            };
            b.put_u8(kind);
            b.put_u8(code);
            b.put_u16(0);
            b.put_u16(id);
            b.put_u16(1);
            (if v6 { 58 } else { 1 }, b.to_vec())
        }
    }
}

/// An IP packet (no Ethernet header) carrying `payload` as protocol `proto`.
pub fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            b.put_u8(0x45);
            b.put_u8(0);
            b.put_u16(20 + payload.len() as u16);
            b.put_u32(0);
            b.put_u8(64);
            b.put_u8(proto);
            b.put_u16(0);
            b.put_slice(&s.octets());
            b.put_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            b.put_u32(6 << 28);
            b.put_u16(payload.len() as u16);
            b.put_u8(proto);
            b.put_u8(64);
            b.put_slice(&s.octets());
            b.put_slice(&d.octets());
        }
        _ => panic!("mixed address families"),
    }
    b.put_slice(payload);
    b.to_vec()
}

/// An Ethernet frame with an IP packet; the family follows the addresses.
pub fn ip(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    ip_from(VM_MAC, PEER_MAC, src, dst, l4)
}

/// A frame from outside every segment, through a router.
pub fn from_outside(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    ip_from(ROUTER_MAC, VM_MAC, src, dst, l4)
}

/// Like [`ip`] with explicit MAC addresses.
pub fn ip_from(src_mac: [u8; 6], dst_mac: [u8; 6], src: &str, dst: &str, l4: L4) -> Vec<u8> {
    let src: IpAddr = src.parse().unwrap();
    let dst: IpAddr = dst.parse().unwrap();
    let (proto, payload) = l4_bytes(l4, src.is_ipv6());
    ethernet(
        src_mac,
        dst_mac,
        src.is_ipv6(),
        &ip_packet(src, dst, proto, &payload),
    )
}

pub fn ethernet(src_mac: [u8; 6], dst_mac: [u8; 6], v6: bool, packet: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_slice(&dst_mac);
    b.put_slice(&src_mac);
    b.put_u16(if v6 { 0x86dd } else { 0x0800 });
    b.put_slice(packet);
    b.to_vec()
}

/// An ICMP (or ICMPv6) error from `src` to `dst` quoting `quoted` (an IP packet).
pub fn icmp_error(src: &str, dst: &str, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let src: IpAddr = src.parse().unwrap();
    let dst: IpAddr = dst.parse().unwrap();
    let mut payload = vec![kind, code, 0, 0, 0, 0, 0, 0];
    payload.extend_from_slice(quoted);
    let proto = if src.is_ipv6() { 58 } else { 1 };
    ethernet(
        VM_MAC,
        PEER_MAC,
        src.is_ipv6(),
        &ip_packet(src, dst, proto, &payload),
    )
}

/// The IP packet of [`ip`], without Ethernet (what an ICMP error quotes).
pub fn quoted(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    ip(src, dst, l4)[14..].to_vec()
}

/// An ARP request from `src_mac` (sender `sender`) for `target`, broadcast.
pub fn arp_request(src_mac: [u8; 6], sender: &str, target: &str) -> Vec<u8> {
    let sender: Ipv4Addr = sender.parse().unwrap();
    let target: Ipv4Addr = target.parse().unwrap();
    let mut b = BytesMut::new();
    b.put_slice(&BROADCAST);
    b.put_slice(&src_mac);
    b.put_u16(0x0806);
    b.put_u16(1);
    b.put_u16(0x0800);
    b.put_u8(6);
    b.put_u8(4);
    b.put_u16(1);
    b.put_slice(&src_mac);
    b.put_slice(&sender.octets());
    b.put_slice(&[0; 6]);
    b.put_slice(&target.octets());
    b.to_vec()
}

/// An IPv6 neighbour solicitation (135) or advertisement (136) about `target`.
pub fn nd(src_mac: [u8; 6], kind: u8, src: &str, dst: &str, target: &str) -> Vec<u8> {
    let target: Ipv6Addr = target.parse().unwrap();
    let mut payload = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    payload.extend_from_slice(&target.octets());
    payload.extend_from_slice(&[1, 1]);
    payload.extend_from_slice(&src_mac);
    let packet = ip_packet(src.parse().unwrap(), dst.parse().unwrap(), 58, &payload);
    ethernet(src_mac, [0x33, 0x33, 0xff, 0, 0, 1], true, &packet)
}

/// An IPv6 router advertisement (134) from `src`.
pub fn router_advertisement(src_mac: [u8; 6], src: &str) -> Vec<u8> {
    let payload = vec![134, 0, 0, 0, 64, 0, 0, 0x1e, 0, 0, 0, 0, 0, 0, 0, 0];
    let packet = ip_packet(
        src.parse().unwrap(),
        "ff02::1".parse().unwrap(),
        58,
        &payload,
    );
    ethernet(src_mac, [0x33, 0x33, 0, 0, 0, 1], true, &packet)
}

// ------------------------------------------------------- frames for the L2/L3 guards

/// The transport bytes of `l4` (and its IP protocol number) for the family.
pub fn l4(l4: L4, v6: bool) -> (u8, Vec<u8>) {
    l4_bytes(l4, v6)
}

/// An IPv4 header and payload with every field under the caller's control.
#[derive(Clone)]
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub id: u16,
    /// Flags (DF 0x4000, MF 0x2000) and fragment offset in 8-byte units.
    pub flags_offset: u16,
    /// Option bytes (a multiple of 4).
    pub options: Vec<u8>,
    /// Total length; by default the true one.
    pub total_len: Option<u16>,
    pub payload: Vec<u8>,
}

impl V4 {
    pub fn new(src: &str, dst: &str, l4: L4) -> V4 {
        let (protocol, payload) = l4_bytes(l4, false);
        V4 {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol,
            id: 0x1234,
            flags_offset: 0,
            options: Vec::new(),
            total_len: None,
            payload,
        }
    }

    pub fn frame(&self, src_mac: [u8; 6]) -> Vec<u8> {
        let header_len = 20 + self.options.len();
        let mut b = BytesMut::new();
        b.put_slice(&PEER_MAC);
        b.put_slice(&src_mac);
        b.put_u16(0x0800);
        b.put_u8(0x40 | (header_len / 4) as u8);
        b.put_u8(0);
        b.put_u16(
            self.total_len
                .unwrap_or((header_len + self.payload.len()) as u16),
        );
        b.put_u16(self.id);
        b.put_u16(self.flags_offset);
        b.put_u8(64);
        b.put_u8(self.protocol);
        b.put_u16(0);
        b.put_slice(&self.src.octets());
        b.put_slice(&self.dst.octets());
        b.put_slice(&self.options);
        b.put_slice(&self.payload);
        b.to_vec()
    }
}

/// An IPv6 frame with extension headers `(next-header value of the extension, body)`;
/// a body must make the extension a multiple of 8 bytes with its 2-byte head.
pub fn v6_with_extensions(
    src_mac: [u8; 6],
    src: &str,
    dst: &str,
    extensions: &[(u8, Vec<u8>)],
    l4: L4,
) -> Vec<u8> {
    let (proto, payload) = l4_bytes(l4, true);
    let mut body = BytesMut::new();
    for (i, (_, ext)) in extensions.iter().enumerate() {
        let next = extensions.get(i + 1).map(|(t, _)| *t).unwrap_or(proto);
        body.put_u8(next);
        body.put_u8(((ext.len() + 2) / 8 - 1) as u8);
        body.put_slice(ext);
    }
    body.put_slice(&payload);
    let first = extensions.first().map(|(t, _)| *t).unwrap_or(proto);
    let packet = ip_packet(src.parse().unwrap(), dst.parse().unwrap(), first, &body);
    ethernet(src_mac, PEER_MAC, true, &packet)
}

/// An IPv6 fragment header body (after next-header and reserved): offset in 8-byte
/// units, more-fragments flag, identification.
pub fn fragment_header(offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u16(offset << 3 | u16::from(more));
    b.put_u32(id);
    // The 2-byte head is written by `v6_with_extensions` (next header, and this "length"
    // byte, which for a fragment header is reserved and zero).
    b.to_vec()
}

/// `frame` with an 802.1Q (or other `tpid`) tag inserted after the MAC addresses.
pub fn tagged(frame: &[u8], tpid: u16, vlan: u16) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_slice(&frame[..12]);
    b.put_u16(tpid);
    b.put_u16(vlan);
    b.put_slice(&frame[12..]);
    b.to_vec()
}

/// An ARP packet with every address under the caller's control.
pub fn arp_frame(eth_src: [u8; 6], sha: [u8; 6], spa: &str, tpa: &str, op: u16) -> Vec<u8> {
    let spa: Ipv4Addr = spa.parse().unwrap();
    let tpa: Ipv4Addr = tpa.parse().unwrap();
    let mut b = BytesMut::new();
    b.put_slice(&BROADCAST);
    b.put_slice(&eth_src);
    b.put_u16(0x0806);
    b.put_u16(1);
    b.put_u16(0x0800);
    b.put_u8(6);
    b.put_u8(4);
    b.put_u16(op);
    b.put_slice(&sha);
    b.put_slice(&spa.octets());
    b.put_slice(&[0; 6]);
    b.put_slice(&tpa.octets());
    b.to_vec()
}

/// A neighbour solicitation (135) or advertisement (136) whose link-layer address option
/// carries `lladdr` (sent from `src_mac`).
pub fn nd_with_lladdr(
    src_mac: [u8; 6],
    lladdr: [u8; 6],
    kind: u8,
    src: &str,
    dst: &str,
    target: &str,
) -> Vec<u8> {
    let target: Ipv6Addr = target.parse().unwrap();
    let mut payload = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    payload.extend_from_slice(&target.octets());
    payload.extend_from_slice(&[if kind == 135 { 1 } else { 2 }, 1]);
    payload.extend_from_slice(&lladdr);
    let packet = ip_packet(src.parse().unwrap(), dst.parse().unwrap(), 58, &payload);
    ethernet(src_mac, [0x33, 0x33, 0, 0, 0, 1], true, &packet)
}

/// A neighbour solicitation (135) or advertisement (136) with several 8-byte options
/// `(type, six bytes)`: 1 source and 2 target link-layer address, 5 MTU.
pub fn nd_with_options(
    src_mac: [u8; 6],
    kind: u8,
    src: &str,
    dst: &str,
    target: &str,
    options: &[(u8, [u8; 6])],
) -> Vec<u8> {
    let target: Ipv6Addr = target.parse().unwrap();
    let mut payload = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    payload.extend_from_slice(&target.octets());
    for (kind, body) in options {
        payload.extend_from_slice(&[*kind, 1]);
        payload.extend_from_slice(body);
    }
    let packet = ip_packet(src.parse().unwrap(), dst.parse().unwrap(), 58, &payload);
    ethernet(src_mac, [0x33, 0x33, 0, 0, 0, 1], true, &packet)
}
