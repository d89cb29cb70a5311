//! The quick attachments of a batch of new vifs' TC hooks, made on several threads.
//!
//! Every request that attaches a program to a link (XDP, a `clsact` qdisc, a `cls_bpf`
//! filter) takes the kernel's RTNL lock, and so does every request that creates a link.
//! In a burst of new VMs the daemon's requests queue for that lock behind the hypervisor's
//! link creations, one of theirs between two of the daemon's (about 2 ms for a vif's four
//! requests, where the requests themselves take 0.2 ms): the daemon falls behind the
//! burst. The lock's waiters are served in turn, so requests sent from several threads at
//! once hold several places in that queue. Here each worker thread makes the `clsact`
//! qdisc and both filters of one vif after another, over a netlink socket of its own,
//! while the dataplane thread attaches the vifs' XDP programs.
//!
//! The requests are the ones aya's `SchedClassifier` sends for a `cls_bpf` filter in
//! direct-action mode (the program's name, priority and handle are what
//! [`super::links`] reads back to find and remove it); they are written here because aya
//! attaches a program only through `&mut` access to it, one request at a time.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{Socket, SocketAddr};

const NLMSG_HDRLEN: usize = 16;
/// `struct tcmsg`.
const TCMSG_LEN: usize = 20;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWQDISC: u16 = 36;
const RTM_NEWTFILTER: u16 = 44;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
const NLA_F_NESTED: u16 = 0x8000;
/// `TC_H_CLSACT` (= `TC_H_INGRESS`): the `clsact` qdisc's parent, and its handle's major.
const TC_H_CLSACT: u32 = 0xffff_fff1;
const TC_H_MIN_INGRESS: u32 = 0xfff2;
const TC_H_MIN_EGRESS: u32 = 0xfff3;
const ETH_P_ALL: u16 = 0x0003;
/// At most this many threads attach at once (with 4, a burst of 100 was enforced at p99
/// about 59 ms against 47 with 8, in alternating runs on the 2-vCPU test machine: the
/// threads mostly wait for the lock).
pub(super) const WORKERS: usize = 8;

/// Which hook of the `clsact` qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn parent(self) -> u32 {
        let minor = match self {
            Hook::Ingress => TC_H_MIN_INGRESS,
            Hook::Egress => TC_H_MIN_EGRESS,
        };
        (TC_H_CLSACT & 0xffff_0000) | minor
    }
}

/// A program to attach as a `cls_bpf` filter, in direct-action mode.
#[derive(Clone, Copy)]
pub(super) struct Filter<'a> {
    pub program: BorrowedFd<'a>,
    /// The name aya gives the filter (the program's), by which it is found again.
    pub name: &'a CStr,
    pub hook: Hook,
    pub priority: u16,
    pub handle: u32,
}

/// For each of `ifindexes`, in order: a `clsact` qdisc (one already there is kept) and
/// every one of `filters` on it, made by up to [`WORKERS`] threads at once. An error for
/// a vif says which request failed; its other filters may be in place (the caller removes
/// them or replaces them).
pub(super) fn attach_filters(ifindexes: &[u32], filters: &[Filter<'_>]) -> Vec<io::Result<()>> {
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<io::Result<()>>> = (0..ifindexes.len()).map(|_| None).collect();
    let workers = WORKERS.min(ifindexes.len());
    let done: Vec<Vec<(usize, io::Result<()>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    let socket = open();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&ifindex) = ifindexes.get(i) else {
                            break;
                        };
                        let result = match &socket {
                            Ok(socket) => attach_one(socket, ifindex, filters, i as u32),
                            Err(e) => Err(io::Error::new(
                                e.kind(),
                                format!("opening a netlink socket: {e}"),
                            )),
                        };
                        done.push((i, result));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for (i, result) in done.into_iter().flatten() {
        results[i] = Some(result);
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("a worker thread panicked"))))
        .collect()
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// The qdisc and the filters of one vif: sent together, each acknowledged.
fn attach_one(socket: &Socket, ifindex: u32, filters: &[Filter<'_>], tag: u32) -> io::Result<()> {
    // Sequence numbers: the vif's position in the batch, then the request's.
    let seq = |request: usize| (tag << 4) | request as u32;
    let mut batch = qdisc_request(ifindex, seq(0));
    for (n, filter) in filters.iter().enumerate() {
        batch.extend(filter_request(ifindex, filter, seq(n + 1))?);
    }
    socket.send(&batch, 0)?;
    let mut pending = filters.len() + 1;
    let mut buffer = vec![0u8; 8192];
    let mut failure = None;
    while pending > 0 {
        // SAFETY: the descriptor is the socket's, open while `socket` lives; the buffer is
        // writable for its whole length, which is passed with it.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (seq, code) in acks(&buffer[..n as usize]) {
            if seq >> 4 != tag {
                continue;
            }
            pending = pending.saturating_sub(1);
            let request = (seq & 0xf) as usize;
            // A `clsact` qdisc already there serves as well.
            if code == 0 || (request == 0 && code == -libc::EEXIST) {
                continue;
            }
            let what = match request {
                0 => "adding a clsact qdisc".to_string(),
                r => format!(
                    "adding the cls_bpf filter {:?} at {:?}",
                    filters[r - 1].name,
                    filters[r - 1].hook
                ),
            };
            failure.get_or_insert(io::Error::new(
                io::Error::from_raw_os_error(-code).kind(),
                format!("{what}: {}", io::Error::from_raw_os_error(-code)),
            ));
        }
    }
    failure.map_or(Ok(()), Err)
}

/// The acknowledgements (`NLMSG_ERROR`: sequence number, 0 or a negative errno) in a
/// datagram.
fn acks(datagram: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let mut at = 0;
    while datagram.len() - at >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(datagram[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > datagram.len() - at {
            break;
        }
        let kind = u16::from_ne_bytes([datagram[at + 4], datagram[at + 5]]);
        let seq = u32::from_ne_bytes(datagram[at + 8..at + 12].try_into().expect("4 bytes"));
        if kind == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
            let code = i32::from_ne_bytes(
                datagram[at + NLMSG_HDRLEN..at + NLMSG_HDRLEN + 4]
                    .try_into()
                    .expect("4 bytes"),
            );
            out.push((seq, code));
        }
        at += (len + 3) & !3;
    }
    out
}

fn header(message: &mut Vec<u8>, kind: u16, flags: u16, seq: u32) {
    message.extend_from_slice(&0u32.to_ne_bytes()); // the length, set by `finish`
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
}

fn tcmsg(message: &mut Vec<u8>, ifindex: u32, handle: u32, parent: u32, info: u32) {
    let start = message.len();
    message.extend_from_slice(&[0u8; 4]); // family (AF_UNSPEC) and padding
    message.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    message.extend_from_slice(&handle.to_ne_bytes());
    message.extend_from_slice(&parent.to_ne_bytes());
    message.extend_from_slice(&info.to_ne_bytes());
    debug_assert_eq!(message.len() - start, TCMSG_LEN);
}

fn attribute(message: &mut Vec<u8>, kind: u16, value: &[u8]) {
    message.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(value);
    message.resize((message.len() + 3) & !3, 0);
}

fn finish(mut message: Vec<u8>) -> Vec<u8> {
    let len = message.len() as u32;
    message[..4].copy_from_slice(&len.to_ne_bytes());
    message
}

/// A request that creates something new (`NLM_F_EXCL`), acknowledged: its header.
fn create_request(kind: u16, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    header(
        &mut m,
        kind,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE,
        seq,
    );
    m
}

/// `tc qdisc add dev <ifindex> clsact`.
fn qdisc_request(ifindex: u32, seq: u32) -> Vec<u8> {
    let mut m = create_request(RTM_NEWQDISC, seq);
    tcmsg(&mut m, ifindex, TC_H_CLSACT & 0xffff_0000, TC_H_CLSACT, 0);
    attribute(&mut m, TCA_KIND, b"clsact\0");
    finish(m)
}

/// `tc filter add dev <ifindex> <hook> prio <priority> handle <handle> bpf direct-action
/// fd <program> name <name>`: a new filter only (`NLM_F_EXCL`).
fn filter_request(ifindex: u32, filter: &Filter<'_>, seq: u32) -> io::Result<Vec<u8>> {
    let name = filter.name.to_bytes_with_nul();
    let mut options = Vec::with_capacity(64);
    attribute(
        &mut options,
        TCA_BPF_FD,
        &filter.program.as_raw_fd().to_ne_bytes(),
    );
    attribute(&mut options, TCA_BPF_NAME, name);
    attribute(
        &mut options,
        TCA_BPF_FLAGS,
        &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes(),
    );
    if options.len() + 4 > usize::from(u16::MAX) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a filter's options longer than an attribute holds",
        ));
    }
    let mut m = create_request(RTM_NEWTFILTER, seq);
    let info = (u32::from(filter.priority) << 16) | u32::from(ETH_P_ALL.to_be());
    tcmsg(&mut m, ifindex, filter.handle, filter.hook.parent(), info);
    attribute(&mut m, TCA_KIND, b"bpf\0");
    attribute(&mut m, TCA_OPTIONS | NLA_F_NESTED, &options);
    Ok(finish(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qdisc_request_is_tc_qdisc_add_clsact() {
        let m = qdisc_request(7, 3);
        assert_eq!(m.len(), NLMSG_HDRLEN + TCMSG_LEN + 12);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 48);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWQDISC);
        // ifindex, handle ffff:0, parent ffff:fff1
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 7);
        assert_eq!(
            u32::from_ne_bytes(m[24..28].try_into().unwrap()),
            0xffff_0000
        );
        assert_eq!(
            u32::from_ne_bytes(m[28..32].try_into().unwrap()),
            0xffff_fff1
        );
        assert_eq!(&m[40..47], b"clsact\0");
    }

    #[test]
    fn hooks_are_the_clsact_minors() {
        assert_eq!(Hook::Ingress.parent(), 0xffff_fff2);
        assert_eq!(Hook::Egress.parent(), 0xffff_fff3);
    }

    #[test]
    fn acks_are_read_by_sequence_number() {
        let mut d = Vec::new();
        for (seq, code) in [(0x10u32, 0i32), (0x11, -libc::EEXIST)] {
            let mut m = Vec::new();
            header(&mut m, NLMSG_ERROR, 0, seq);
            m.extend_from_slice(&code.to_ne_bytes());
            m.extend_from_slice(&[0u8; 16]); // the request's header, echoed
            d.extend(finish(m));
        }
        assert_eq!(acks(&d), vec![(0x10, 0), (0x11, -libc::EEXIST)]);
    }
}
