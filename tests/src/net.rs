//! Traffic between lab namespaces, generated in-process (no ping/socat/curl needed): ICMP echo
//! over raw sockets, TCP with std sockets, a minimal HTTP/1.1 GET. Each runs on a thread that
//! has joined the namespace (see [`crate::netns::in_netns`]).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::lab::Vm;
use crate::netns::in_netns;

/// ICMP payload size of every echo request: like `ping`'s default, so an IPv4 echo request is
/// a 98-byte frame (14 Ethernet + 20 IPv4 + 8 ICMP + 56) and an IPv6 one 118 bytes.
pub const PING_PAYLOAD: usize = 56;

/// Frame length (Ethernet header included, no FCS) of one echo request to `dst`.
pub fn echo_request_frame_len(dst: IpAddr) -> u64 {
    use crate::frame::{echo_request, ip_frame};
    ip_frame(
        [0; 6],
        [0; 6],
        dst,
        dst,
        echo_request(0),
        &[0; PING_PAYLOAD],
    )
    .len() as u64
}

static ICMP_ID: AtomicU16 = AtomicU16::new(0);

fn next_icmp_id() -> u16 {
    let n = ICMP_ID.fetch_add(1, Ordering::Relaxed);
    (std::process::id() as u16)
        .wrapping_mul(31)
        .wrapping_add(n.wrapping_mul(7919))
}

/// One ICMP echo (v4 or v6, by the address) from `from` to `dst`, waiting up to 1 s for the
/// reply, like `ping -c 1 -W 1`. Returns whether the reply came.
pub fn ping(from: &Vm, dst: IpAddr) -> Result<bool> {
    Ok(ping_count(&from.ns, dst, 1, Duration::ZERO, Duration::from_secs(1))? == 1)
}

/// Sends `count` echo requests from namespace `ns` to `dst`, `interval` apart, then waits up to
/// `wait` for outstanding replies. Returns how many distinct requests were answered.
/// Returns early once every request is answered.
pub fn ping_count(
    ns: &str,
    dst: IpAddr,
    count: u16,
    interval: Duration,
    wait: Duration,
) -> Result<u16> {
    in_netns(ns, || ping_here(dst, count, interval, wait))
        .with_context(|| format!("ping {dst} from netns {ns}"))
}

fn ping_here(dst: IpAddr, count: u16, interval: Duration, wait: Duration) -> Result<u16> {
    let (family, proto) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    // SAFETY: plain syscall; the fd is owned right away.
    let raw = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if raw < 0 {
        bail!("raw ICMP socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let id = next_icmp_id();
    let mut answered = HashSet::new();
    for seq in 0..count {
        send_echo(&sock, dst, id, seq)?;
        let until = Instant::now() + if seq + 1 < count { interval } else { wait };
        loop {
            if answered.len() == count as usize {
                return Ok(count);
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            if let Some(s) = recv_echo_reply(&sock, dst, id, until - now)? {
                answered.insert(s);
            }
        }
    }
    Ok(answered.len() as u16)
}

fn send_echo(sock: &OwnedFd, dst: IpAddr, id: u16, seq: u16) -> Result<()> {
    use etherparse::{IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type};
    let payload: Vec<u8> = (0..PING_PAYLOAD)
        .map(|i| b"isolator-lab-"[i % 13])
        .collect();
    let echo = IcmpEchoHeader { id, seq };
    let mut pkt = if dst.is_ipv4() {
        Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(echo), &payload)
            .to_bytes()
            .to_vec()
    } else {
        // The kernel fills in the checksum on raw ICMPv6 sockets.
        Icmpv6Header::new(Icmpv6Type::EchoRequest(echo))
            .to_bytes()
            .to_vec()
    };
    pkt.extend_from_slice(&payload);
    let (storage, len) = sockaddr(SocketAddr::new(dst, 0));
    // SAFETY: pkt and storage are valid for the lengths given.
    let rc = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc < 0 {
        // A request that could not even be sent says nothing about isolator: the harness
        // failed (no route, no address...), not the traffic.
        bail!(
            "could not send an echo request to {dst}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Waits up to `timeout` for one packet; returns the seq if it is our echo reply from `dst`.
fn recv_echo_reply(sock: &OwnedFd, dst: IpAddr, id: u16, timeout: Duration) -> Result<Option<u16>> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc <= 0 {
        return Ok(None);
    }
    let mut buf = [0u8; 2048];
    // SAFETY: zeroed sockaddr_storage is a valid value.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut from_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: buffers valid for the lengths given.
    let n = unsafe {
        libc::recvfrom(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut from as *mut libc::sockaddr_storage).cast(),
            &mut from_len,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(None),
            // The socket itself failed: the harness, not the traffic.
            _ => Err(e).context("receiving on the raw ICMP socket"),
        };
    }
    if n == 0 {
        return Ok(None);
    }
    let pkt = &buf[..n as usize];
    if from_sockaddr(&from).map(|s| s.ip()) != Some(dst) {
        return Ok(None);
    }
    // IPv4 raw sockets deliver the IP header too, IPv6 ones only the ICMPv6 message.
    let echo = match dst {
        IpAddr::V4(_) => etherparse::Ipv4Slice::from_slice(pkt)
            .ok()
            .and_then(|ip| etherparse::Icmpv4Slice::from_slice(ip.payload().payload).ok())
            .and_then(|icmp| match icmp.icmp_type() {
                etherparse::Icmpv4Type::EchoReply(e) => Some(e),
                _ => None,
            }),
        IpAddr::V6(_) => etherparse::Icmpv6Slice::from_slice(pkt)
            .ok()
            .and_then(|icmp| match icmp.icmp_type() {
                etherparse::Icmpv6Type::EchoReply(e) => Some(e),
                _ => None,
            }),
    };
    Ok(echo.filter(|e| e.id == id).map(|e| e.seq))
}

fn sockaddr(sa: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid; we write a sockaddr_in/in6 into its prefix.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match sa {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: family says it is a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::new(
                IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: family says it is a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::new(
                IpAddr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}

/// What became of one TCP connection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpOutcome {
    /// Connected, and the listener received exactly the payload.
    Delivered,
    /// The connection could not be established: no answer (timeout), or the neighbour or
    /// a router on the way could not reach the address (host unreachable).
    ConnectFailed(String),
    /// A TCP reset answered the SYN (connection refused): the SYN reached a stack that
    /// has no listener there. Neither delivered to the listener nor blocked.
    Reset(String),
    /// Connected, but the listener did not receive the payload (it got this instead).
    PayloadLost(String),
}

/// What a failed `connect` says: `Err` where the local stack could not even send the SYN
/// (no route, no usable source address...): a harness error, never "blocked";
/// `Ok(Err(..))` for a reset (the SYN arrived somewhere); `Ok(Ok(..))` for a connection
/// that got no answer.
pub(crate) fn connect_failure(
    target: SocketAddr,
    e: std::io::Error,
) -> Result<std::result::Result<String, String>> {
    match e.raw_os_error() {
        Some(
            libc::ENETUNREACH
            | libc::ENETDOWN
            | libc::EADDRNOTAVAIL
            | libc::EAFNOSUPPORT
            | libc::EINVAL
            | libc::EACCES
            | libc::EPERM,
        ) => Err(anyhow::Error::new(e).context(format!(
            "could not send a SYN to {target}: the local stack refused it"
        ))),
        Some(libc::ECONNREFUSED) => Ok(Err(e.to_string())),
        _ => Ok(Ok(e.to_string())),
    }
}

impl TcpOutcome {
    pub fn delivered(&self) -> bool {
        *self == TcpOutcome::Delivered
    }
}

/// A TCP connection from `from` to `to` at `addr:port` (an address of `to`): a listener bound
/// to `addr:port` in `to`'s namespace, a client in `from`'s namespace that connects with a
/// 1.5 s timeout and sends a unique line, which the listener must receive. Returns whether it
/// arrived.
pub fn tcp_connect(from: &Vm, to: &Vm, addr: IpAddr, port: u16) -> Result<bool> {
    Ok(tcp_probe(&from.ns, &to.ns, addr, port, Duration::from_millis(1500))?.delivered())
}

/// The detailed form of [`tcp_connect`], between two namespaces.
pub fn tcp_probe(
    from_ns: &str,
    to_ns: &str,
    addr: IpAddr,
    port: u16,
    timeout: Duration,
) -> Result<TcpOutcome> {
    let target = SocketAddr::new(addr, port);
    let listener = in_netns(to_ns, || {
        let l = TcpListener::bind(target).with_context(|| format!("bind {target}"))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .with_context(|| format!("listener in netns {to_ns}"))?;
    let payload = format!(
        "isolator-lab {from_ns} -> {to_ns} {target} {}\n",
        next_icmp_id()
    );
    let deadline = Instant::now() + timeout + Duration::from_millis(500);
    std::thread::scope(|scope| {
        let server = scope.spawn(move || -> Result<Option<Vec<u8>>> {
            loop {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false)?;
                        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                        let mut got = Vec::new();
                        let _ = conn.read_to_end(&mut got);
                        return Ok(Some(got));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Ok(None);
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => bail!("accept on {target}: {e}"),
                }
            }
        });
        let client = in_netns(from_ns, || {
            match TcpStream::connect_timeout(&target, timeout) {
                Ok(mut s) => {
                    s.set_write_timeout(Some(Duration::from_secs(2)))?;
                    s.write_all(payload.as_bytes())?;
                    s.shutdown(Shutdown::Write)?;
                    Ok(None)
                }
                Err(e) => Ok(Some(connect_failure(target, e)?)),
            }
        })
        .with_context(|| format!("tcp {target} from netns {from_ns}"));
        let received = match server.join() {
            Ok(r) => r?,
            Err(p) => std::panic::resume_unwind(p),
        };
        let client = client?;
        Ok(match (client, received) {
            (Some(Err(reset)), _) => TcpOutcome::Reset(reset),
            (Some(Ok(err)), _) => TcpOutcome::ConnectFailed(err),
            (None, Some(got)) if got == payload.as_bytes() => TcpOutcome::Delivered,
            (None, Some(got)) => TcpOutcome::PayloadLost(String::from_utf8_lossy(&got).into()),
            (None, None) => TcpOutcome::PayloadLost("<no connection accepted>".into()),
        })
    })
}

/// A packet capture on one interface of a namespace (AF_PACKET), collecting the frames the
/// interface receives (not those it sends) until [`Capture::stop`].
pub struct Capture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<Vec<Vec<u8>>>>>,
}

impl Capture {
    /// Starts capturing on `ifname` in `ns`; the socket is bound when this returns.
    pub fn start(ns: &str, ifname: &str) -> Result<Capture> {
        let ifname = std::ffi::CString::new(ifname)?;
        let sock = in_netns(ns, || {
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            // SAFETY: plain syscall; the fd is owned right away.
            let raw = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto)
            };
            if raw < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            // SAFETY: fresh fd owned by nobody else.
            let sock = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: valid C string.
            let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {ifname:?}");
            }
            // SAFETY: zeroed sockaddr_ll is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: sll is a valid sockaddr_ll of the given size.
            let rc = unsafe {
                libc::bind(
                    sock.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                bail!("bind AF_PACKET: {}", std::io::Error::last_os_error());
            }
            Ok(sock)
        })
        .with_context(|| format!("capture on {ifname:?} in netns {ns}"))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || -> Result<Vec<Vec<u8>>> {
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let mut pfd = libc::pollfd {
                    fd: sock.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let rc = unsafe { libc::poll(&mut pfd, 1, 20) };
                if rc < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        // A capture that stopped seeing frames cannot say none arrived.
                        return Err(e).context("polling the capture's socket");
                    }
                }
                if rc <= 0 {
                    if stop2.load(Ordering::SeqCst) {
                        return Ok(frames);
                    }
                    continue;
                }
                // SAFETY: zeroed sockaddr_ll is valid.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: buffers valid for the lengths given.
                let n = unsafe {
                    libc::recvfrom(
                        sock.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                        (&mut from as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    match e.kind() {
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => {}
                        _ => return Err(e).context("receiving on the capture's socket"),
                    }
                }
                if n > 0 && from.sll_pkttype != libc::PACKET_OUTGOING {
                    frames.push(buf[..n as usize].to_vec());
                }
            }
        });
        Ok(Capture {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops and returns the received frames (Ethernet header first).
    pub fn stop(mut self) -> Result<Vec<Vec<u8>>> {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(p)) => std::panic::resume_unwind(p),
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Sends one raw Ethernet frame (header included) out of `ifname` in namespace `ns`
/// (AF_PACKET), e.g. to test what isolator does with frames a VM's stack would never build.
pub fn send_frame(ns: &str, ifname: &str, frame: &[u8]) -> Result<()> {
    FrameSender::open(ns, ifname)?.send(frame)
}

/// The ifindex of `ifname` in the calling thread's namespace.
fn ifindex_here(ifname: &str) -> Result<u32> {
    let c = std::ffi::CString::new(ifname)?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname}");
    }
    Ok(ifindex)
}

/// A packet socket bound to `ifname`, in the calling thread's namespace.
pub(crate) fn packet_socket(ifname: &str) -> Result<(OwnedFd, u32)> {
    let ifindex = ifindex_here(ifname)?;
    // SAFETY: plain syscall; the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok((sock, ifindex))
}

/// Sends `frame` (Ethernet header first) on the packet socket `sock` out of `ifindex`.
pub(crate) fn send_on(sock: &OwnedFd, ifindex: u32, frame: &[u8]) -> std::io::Result<()> {
    // SAFETY: zeroed sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&frame[..6.min(frame.len())]);
    // SAFETY: buffers valid for the lengths given.
    let rc = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One packet socket on an interface of a namespace, for many frames in a row.
pub struct FrameSender {
    sock: OwnedFd,
    ifindex: u32,
    what: String,
}

impl FrameSender {
    /// A sender on `ifname` of namespace `ns`.
    pub fn open(ns: &str, ifname: &str) -> Result<FrameSender> {
        let (sock, ifindex) = in_netns(ns, || packet_socket(ifname))
            .with_context(|| format!("packet socket on {ifname} in netns {ns}"))?;
        Ok(FrameSender {
            sock,
            ifindex,
            what: format!("{ifname} in netns {ns}"),
        })
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        send_on(&self.sock, self.ifindex, frame)
            .with_context(|| format!("sending a frame on {}", self.what))
    }

    /// Sends every frame of `frames`, in order. When the kernel's queues are full
    /// (`ENOBUFS`) it waits a moment and sends that frame again: every frame leaves.
    pub fn send_all<F: AsRef<[u8]>>(&self, frames: impl IntoIterator<Item = F>) -> Result<usize> {
        let mut sent = 0;
        for frame in frames {
            let frame = frame.as_ref();
            let mut tries = 0;
            loop {
                match send_on(&self.sock, self.ifindex, frame) {
                    Ok(()) => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && tries < 1000 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("frame {sent} on {}", self.what));
                    }
                }
            }
            sent += 1;
        }
        Ok(sent)
    }
}

/// A TCP connection between two lab namespaces whose two ends the test holds: a listener
/// bound in the server's namespace, a client connected from the client's.
pub struct TcpPair {
    pub client: std::net::TcpStream,
    pub server: std::net::TcpStream,
    n: u32,
}

impl TcpPair {
    /// Binds `target` in `server_ns`, connects to it from `client_ns` within `timeout`,
    /// accepts. Both ends time out reads and writes after `timeout`.
    pub fn open(
        client_ns: &str,
        server_ns: &str,
        target: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<TcpPair> {
        use std::net::{TcpListener, TcpStream};
        // A listener on `target` closed just before (the last pair's) may still be open in
        // a process another test thread forked and has not yet exec'd (its descriptors are
        // close-on-exec, not close-on-fork): the address is in use until it execs. Tried
        // again for a while.
        let deadline = Instant::now() + timeout;
        let listener = loop {
            let bound = in_netns(server_ns, || {
                let l = TcpListener::bind(target).with_context(|| format!("bind {target}"))?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
            match bound {
                Err(e)
                    if Instant::now() < deadline
                        && e.chain().any(|c| {
                            c.downcast_ref::<std::io::Error>()
                                .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
                        }) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.with_context(|| format!("listener in netns {server_ns}"))?,
            }
        };
        let client = in_netns(client_ns, || {
            TcpStream::connect_timeout(&target, timeout)
                .with_context(|| format!("connect to {target} within {timeout:?}"))
        })
        .with_context(|| format!("client in netns {client_ns}"))?;
        let deadline = Instant::now() + timeout;
        let server = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => bail!("accept on {target}: {e}"),
            }
        };
        server.set_nonblocking(false)?;
        for s in [&client, &server] {
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            s.set_nodelay(true)?;
        }
        Ok(TcpPair {
            client,
            server,
            n: 0,
        })
    }

    /// The client's end (address, port).
    pub fn client_addr(&self) -> std::net::SocketAddr {
        let a = self.client.local_addr().expect("a connected socket");
        std::net::SocketAddr::new(a.ip().to_canonical(), a.port())
    }

    /// Reads and writes on both ends time out after `timeout` from now on.
    pub fn set_io_timeout(&self, timeout: Duration) -> Result<()> {
        for s in [&self.client, &self.server] {
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
        }
        Ok(())
    }

    /// A request client -> server and a reply server -> client, each read in full by the
    /// other end within the pair's timeout. Returns how long it took.
    pub fn round_trip(&mut self) -> Result<Duration> {
        use std::io::{Read, Write};
        self.n += 1;
        let start = Instant::now();
        let request = format!("request {:08}\n", self.n);
        self.client.write_all(request.as_bytes())?;
        let mut got = vec![0u8; request.len()];
        self.server
            .read_exact(&mut got)
            .with_context(|| format!("the server reads request {} (client -> server)", self.n))?;
        ensure!(
            got == request.as_bytes(),
            "request {} changed on the way",
            self.n
        );
        let reply = format!("reply   {:08}\n", self.n);
        self.server.write_all(reply.as_bytes())?;
        self.client
            .read_exact(&mut got)
            .with_context(|| format!("the client reads reply {} (server -> client)", self.n))?;
        ensure!(
            got == reply.as_bytes(),
            "reply {} changed on the way",
            self.n
        );
        Ok(start.elapsed())
    }
}

/// `recv_from` that reads again when a signal to the test process interrupted it (a socket
/// with a read timeout is not restarted by the kernel): an interruption is the harness's,
/// never an answer about the traffic.
pub fn recv_from_retrying(
    sock: &std::net::UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    loop {
        match sock.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Every datagram `sock` receives until its read timeout passes (the test sets it):
/// what arrived. A read interrupted by a signal is read again; any other error is the
/// harness's, a panic, never "nothing arrived".
pub fn drain_udp(sock: &std::net::UdpSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => out.push(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return out;
            }
            Err(e) => panic!("receiving on {:?}: {e}", sock.local_addr()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN the local stack refuses is a harness error; a reset is an answer; a timeout
    /// or an unreachable neighbour is "no connection".
    #[test]
    fn connect_failures_are_told_apart() {
        let target: SocketAddr = "10.1.1.2:80".parse().unwrap();
        let e = |code| std::io::Error::from_raw_os_error(code);
        for code in [libc::ENETUNREACH, libc::EADDRNOTAVAIL, libc::EPERM] {
            let err = connect_failure(target, e(code)).unwrap_err();
            assert!(format!("{err:#}").contains("could not send"), "{err:#}");
        }
        assert!(matches!(
            connect_failure(target, e(libc::ECONNREFUSED)),
            Ok(Err(_))
        ));
        for code in [libc::ETIMEDOUT, libc::EHOSTUNREACH] {
            assert!(matches!(connect_failure(target, e(code)), Ok(Ok(_))));
        }
    }
}
