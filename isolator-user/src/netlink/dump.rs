//! The namespace's links, listed with one `RTM_GETLINK` dump read straight off a socket of
//! its own: only each link's index, name, kind and XDP mode are read out of the messages.
//!
//! The listing comes before every plan (each new link's event leads to one), and with a
//! few hundred links a dump parsed whole by `netlink-packet-route` (every attribute of
//! every link, the statistics and the IPv6 configuration among them, into owned values)
//! took 5 to 13 ms of the daemon's time here, most of it in the parsing; this reads the
//! four attributes it needs and skips the rest by their length, and asks the kernel to
//! leave the statistics out (`RTEXT_FILTER_SKIP_STATS`).
//!
//! A dump that the kernel marks inconsistent (`NLM_F_DUMP_INTR`: links came or went
//! while it ran) is taken once more, and the second is kept whatever it says: during a
//! burst of new links nearly every dump is marked, and each costs a few milliseconds
//! then. What such a dump can get wrong depends on the kernel: since Linux 6.7 links are
//! dumped in ifindex order, resuming after the last one sent, so only links that came or
//! went during the dump may be missing (each announced by its own event, which leads to
//! the next listing); an older kernel, walking a hash table, may also skip a link that
//! stayed, or send one twice (kept once here). The listing through `netlink-packet-route`
//! that this replaced kept every dump as it was.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd as _;

use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{Socket, SocketAddr};

use crate::compile::Link;

const NLMSG_HDRLEN: usize = 16;
/// `struct ifinfomsg`.
const IFINFOMSG_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_XDP: u16 = 43;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
/// An attribute's type without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// A dump's messages come in datagrams of at most 32 KiB (`netlink_recvmsg` caps what
/// it sizes them to there).
const RECEIVE_BUFFER: usize = 64 * 1024;
/// How many times a dump is taken while the kernel marks it inconsistent.
const ATTEMPTS: usize = 2;

/// Every link of the calling thread's network namespace, and how an XDP program is
/// attached to those that have one (`native`, `generic`, `offload`, `multiple`).
pub fn links() -> io::Result<(Vec<Link>, BTreeMap<u32, &'static str>)> {
    let mut attempt = 1;
    loop {
        let listed = dump_once(attempt as u32)?;
        if !listed.interrupted || attempt == ATTEMPTS {
            if listed.interrupted {
                tracing::debug!(
                    attempts = ATTEMPTS,
                    "links kept changing during the listing; keeping the last one"
                );
            }
            let mut links = listed.links;
            // An inconsistent dump may send a link twice: the last message is kept.
            let mut seen = std::collections::BTreeSet::new();
            links.reverse();
            links.retain(|l| seen.insert(l.ifindex));
            links.reverse();
            return Ok((links, listed.xdp_modes));
        }
        attempt += 1;
    }
}

/// What one dump said.
#[derive(Debug, Default, PartialEq)]
struct Listed {
    links: Vec<Link>,
    xdp_modes: BTreeMap<u32, &'static str>,
    /// The kernel marked a message `NLM_F_DUMP_INTR`.
    interrupted: bool,
}

fn dump_once(seq: u32) -> io::Result<Listed> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&request(seq), 0)?;
    let mut buffer = vec![0u8; RECEIVE_BUFFER];
    let mut listed = Listed::default();
    loop {
        // SAFETY: the descriptor is the socket's, open while `socket` lives; the buffer is
        // writable for its whole length, which is passed with it.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        if n > buffer.len() {
            return Err(io::Error::other(format!(
                "a netlink datagram of {n} bytes is larger than the {} bytes read",
                buffer.len()
            )));
        }
        if read_datagram(&buffer[..n], seq, &mut listed)? {
            return Ok(listed);
        }
    }
}

/// `RTM_GETLINK` with `NLM_F_DUMP`, every family, without statistics.
fn request(seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + IFINFOMSG_LEN + 8;
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(&(len as u32).to_ne_bytes());
    message.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&[0u8; IFINFOMSG_LEN]);
    message.extend_from_slice(&8u16.to_ne_bytes());
    message.extend_from_slice(&IFLA_EXT_MASK.to_ne_bytes());
    message.extend_from_slice(&RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
    message
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed netlink link listing: {what}"),
    )
}

/// Reads the messages of one datagram into `listed`; true once the dump is done.
fn read_datagram(datagram: &[u8], seq: u32, listed: &mut Listed) -> io::Result<bool> {
    let mut at = 0;
    while datagram.len() - at >= NLMSG_HDRLEN {
        let len = u32_at(datagram, at) as usize;
        if len < NLMSG_HDRLEN || len > datagram.len() - at {
            return Err(malformed("a message's length runs past its datagram"));
        }
        let kind = u16_at(datagram, at + 4);
        let flags = u16_at(datagram, at + 6);
        let message_seq = u32_at(datagram, at + 8);
        let payload = &datagram[at + NLMSG_HDRLEN..at + len];
        at += align4(len).min(datagram.len() - at);
        if message_seq != seq {
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            listed.interrupted = true;
        }
        match kind {
            NLMSG_DONE | NLMSG_ERROR => {
                // Both carry an int: 0, or a negative errno.
                let code = if payload.len() >= 4 {
                    u32_at(payload, 0) as i32
                } else {
                    0
                };
                if code < 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                if kind == NLMSG_DONE {
                    return Ok(true);
                }
            }
            RTM_NEWLINK => read_link(payload, listed)?,
            _ => {}
        }
    }
    Ok(false)
}

/// The attributes of `bytes`, as (type without flags, value); a truncated one ends them
/// with an error.
fn attributes(bytes: &[u8]) -> impl Iterator<Item = io::Result<(u16, &[u8])>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if bytes.len() - at < 4 {
            return None;
        }
        let len = u16_at(bytes, at) as usize;
        if len < 4 || len > bytes.len() - at {
            at = bytes.len();
            return Some(Err(malformed(
                "an attribute's length runs past its message",
            )));
        }
        let kind = u16_at(bytes, at + 2) & NLA_TYPE_MASK;
        let value = &bytes[at + 4..at + len];
        at += align4(len).min(bytes.len() - at);
        Some(Ok((kind, value)))
    })
}

/// A NUL-terminated string attribute (names are bytes to the kernel; any that are not
/// UTF-8 are read with replacement characters, and match no pattern of a policy).
fn string(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

fn read_link(payload: &[u8], listed: &mut Listed) -> io::Result<()> {
    if payload.len() < IFINFOMSG_LEN {
        return Err(malformed("a link message shorter than its header"));
    }
    let ifindex = u32_at(payload, 4);
    let mut name = None;
    let mut kind = String::new();
    let mut xdp = None;
    for attribute in attributes(&payload[IFINFOMSG_LEN..]) {
        let (attribute, value) = attribute?;
        match attribute {
            IFLA_IFNAME => name = Some(string(value)),
            IFLA_LINKINFO => {
                for info in attributes(value) {
                    let (info, value) = info?;
                    if info == IFLA_INFO_KIND {
                        kind = string(value);
                    }
                }
            }
            IFLA_XDP => {
                for x in attributes(value) {
                    let (x, value) = x?;
                    if x == IFLA_XDP_ATTACHED && !value.is_empty() {
                        xdp = match value[0] {
                            1 => Some("native"),
                            2 => Some("generic"),
                            3 => Some("offload"),
                            4 => Some("multiple"),
                            _ => None,
                        };
                    }
                }
            }
            _ => {}
        }
    }
    // A link without a name is no link a policy can name (the kernel always sends one).
    let Some(name) = name else {
        return Ok(());
    };
    if let Some(mode) = xdp {
        listed.xdp_modes.insert(ifindex, mode);
    }
    listed.links.push(Link {
        name,
        ifindex,
        kind,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(align4(a.len()), 0);
        a
    }

    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align4(m.len()), 0);
        m
    }

    /// A link message as the kernel sends it: header, then attributes (nested ones with
    /// `NLA_F_NESTED`), some the listing skips.
    fn link(ifindex: u32, name: &str, kind: Option<&str>, xdp: Option<u8>) -> Vec<u8> {
        let mut p = vec![0u8; IFINFOMSG_LEN];
        p[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        p.extend(attribute(4, &1500u32.to_ne_bytes())); // IFLA_MTU, skipped
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        p.extend(attribute(IFLA_IFNAME, &n));
        if let Some(kind) = kind {
            let mut k = kind.as_bytes().to_vec();
            k.push(0);
            let info = attribute(IFLA_INFO_KIND, &k);
            p.extend(attribute(IFLA_LINKINFO | 0x8000, &info));
        }
        if let Some(mode) = xdp {
            let mut x = attribute(1, &7i32.to_ne_bytes()); // IFLA_XDP_FD, skipped
            x.extend(attribute(IFLA_XDP_ATTACHED, &[mode]));
            p.extend(attribute(IFLA_XDP | 0x8000, &x));
        }
        p
    }

    #[test]
    fn the_request_asks_for_a_dump_without_statistics() {
        let r = request(7);
        assert_eq!(r.len(), 40);
        assert_eq!(u32_at(&r, 0), 40);
        assert_eq!(u16_at(&r, 4), RTM_GETLINK);
        assert_eq!(u16_at(&r, 6), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(u32_at(&r, 8), 7);
        assert_eq!(u16_at(&r, 34), IFLA_EXT_MASK);
        assert_eq!(u32_at(&r, 36), RTEXT_FILTER_SKIP_STATS);
    }

    #[test]
    fn links_are_read_with_their_kind_and_xdp_mode_until_done() {
        let mut d = message(RTM_NEWLINK, 2, 1, &link(1, "lo", None, None));
        d.extend(message(
            RTM_NEWLINK,
            2,
            1,
            &link(7, "vm-a", Some("veth"), Some(1)),
        ));
        d.extend(message(
            RTM_NEWLINK,
            2,
            1,
            &link(9, "tap0", Some("tun"), Some(2)),
        ));
        // Another request's message on the socket is not this dump's.
        d.extend(message(
            RTM_NEWLINK,
            2,
            5,
            &link(11, "other", Some("veth"), None),
        ));
        let mut listed = Listed::default();
        assert!(!read_datagram(&d, 1, &mut listed).unwrap());
        let done = message(NLMSG_DONE, 2, 1, &0i32.to_ne_bytes());
        assert!(read_datagram(&done, 1, &mut listed).unwrap());
        assert_eq!(
            listed.links,
            vec![
                Link {
                    name: "lo".into(),
                    ifindex: 1,
                    kind: String::new()
                },
                Link::veth("vm-a", 7),
                Link {
                    name: "tap0".into(),
                    ifindex: 9,
                    kind: "tun".into()
                },
            ]
        );
        assert_eq!(
            listed.xdp_modes,
            BTreeMap::from([(7, "native"), (9, "generic")])
        );
        assert!(!listed.interrupted);
    }

    #[test]
    fn an_inconsistent_dump_is_marked() {
        let d = message(
            RTM_NEWLINK,
            2 | NLM_F_DUMP_INTR,
            1,
            &link(3, "x", Some("veth"), None),
        );
        let mut listed = Listed::default();
        read_datagram(&d, 1, &mut listed).unwrap();
        assert!(listed.interrupted);
    }

    #[test]
    fn errors_and_malformed_messages_fail_the_listing() {
        let mut listed = Listed::default();
        let e = read_datagram(
            &message(NLMSG_ERROR, 0, 1, &(-libc::EPERM).to_ne_bytes()),
            1,
            &mut listed,
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let e = read_datagram(
            &message(NLMSG_DONE, 2, 1, &(-libc::EINTR).to_ne_bytes()),
            1,
            &mut listed,
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINTR));
        // A message claiming more bytes than its datagram holds.
        let mut d = message(RTM_NEWLINK, 2, 1, &link(3, "x", None, None));
        let claimed = d.len() as u32 + 4;
        d[0..4].copy_from_slice(&claimed.to_ne_bytes());
        assert_eq!(
            read_datagram(&d, 1, &mut listed).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // An attribute claiming more bytes than its message holds.
        let mut p = link(3, "x", None, None);
        let name_at = IFINFOMSG_LEN + 8;
        p[name_at..name_at + 2].copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(
            read_datagram(&message(RTM_NEWLINK, 2, 1, &p), 1, &mut listed)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData
        );
        assert!(listed.links.is_empty());
    }

    /// The listing agrees with `netlink-packet-route`'s full parse of the same links: in a
    /// network namespace of this test's own thread (unnamed: it goes with the thread),
    /// with a veth pair, a bridge and a tap beside `lo`.
    #[test]
    fn the_listing_agrees_with_a_full_parse() {
        std::thread::spawn(|| {
            // SAFETY: no preconditions; only this thread moves.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!(
                    "a network namespace of its own (run as root): {}",
                    io::Error::last_os_error()
                );
            }
            for args in [
                &["link", "add", "lv0", "type", "veth", "peer", "name", "lv1"][..],
                &["link", "add", "lb0", "type", "bridge"],
                &["tuntap", "add", "lt0", "mode", "tap"],
                &["link", "set", "lv0", "up"],
            ] {
                let out = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "ip {args:?}: {out:?}");
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let (lean, modes) = links().expect("listing links");
            let (full, full_modes) = rt.block_on(async {
                let (connection, handle, _) = rtnetlink::new_connection().unwrap();
                let task = tokio::spawn(connection);
                let listed = super::super::list_links_parsed(&handle).await.unwrap();
                task.abort();
                listed
            });
            let kinds: Vec<(&str, &str)> = lean
                .iter()
                .map(|l| (l.name.as_str(), l.kind.as_str()))
                .collect();
            assert_eq!(
                kinds,
                [
                    ("lo", ""),
                    ("lv1", "veth"),
                    ("lv0", "veth"),
                    ("lb0", "bridge"),
                    ("lt0", "tun")
                ]
            );
            assert_eq!(lean, full);
            assert_eq!(modes, full_modes);
        })
        .join()
        .unwrap();
    }
}
