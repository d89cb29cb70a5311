//! Traffic between lab namespaces, generated in-process (no ping/socat/curl needed): ICMP echo
//! over raw sockets, TCP with std sockets, a minimal HTTP/1.1 GET. Each runs on a thread that
//! has joined the namespace (see [`crate::netns::in_netns`]).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::Vm;
use crate::netns::in_netns;

/// ICMP payload size of every echo request: like `ping`'s default, so an IPv4 echo request is
/// a 98-byte frame (14 Ethernet + 20 IPv4 + 8 ICMP + 56) and an IPv6 one 118 bytes.
pub const PING_PAYLOAD: usize = 56;

/// Frame length (Ethernet header included, no FCS) of one echo request to `dst`.
pub fn echo_request_frame_len(dst: IpAddr) -> u64 {
    let l3 = if dst.is_ipv4() { 20 } else { 40 };
    (14 + l3 + 8 + PING_PAYLOAD) as u64
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

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn send_echo(sock: &OwnedFd, dst: IpAddr, id: u16, seq: u16) -> Result<()> {
    let mut pkt = vec![0u8; 8 + PING_PAYLOAD];
    pkt[0] = if dst.is_ipv4() { 8 } else { 128 };
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    pkt[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in pkt[8..].iter_mut().enumerate() {
        *b = b"isolator-lab-"[i % 13];
    }
    if dst.is_ipv4() {
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    } // ICMPv6: the kernel fills in the checksum on raw ICMPv6 sockets.
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
        let err = std::io::Error::last_os_error();
        // Unreachable neighbours etc. are "no reply", not a harness failure.
        match err.raw_os_error() {
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EAGAIN | libc::ENOBUFS) => {
                return Ok(());
            }
            _ => bail!("sendto {dst}: {err}"),
        }
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
    if n <= 0 {
        return Ok(None);
    }
    let pkt = &buf[..n as usize];
    if from_sockaddr(&from).map(|s| s.ip()) != Some(dst) {
        return Ok(None);
    }
    let icmp = match dst {
        IpAddr::V4(_) => {
            let ihl = ((pkt[0] & 0x0f) as usize) * 4;
            if pkt.len() < ihl + 8 {
                return Ok(None);
            }
            &pkt[ihl..]
        }
        IpAddr::V6(_) => pkt,
    };
    let reply_type = if dst.is_ipv4() { 0 } else { 129 };
    if icmp.len() < 8 || icmp[0] != reply_type || icmp[4..6] != id.to_be_bytes() {
        return Ok(None);
    }
    Ok(Some(u16::from_be_bytes([icmp[6], icmp[7]])))
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
    /// The connection could not be established (timeout, unreachable, refused...).
    ConnectFailed(String),
    /// Connected, but the listener did not receive the payload (it got this instead).
    PayloadLost(String),
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
                Err(e) => Ok(Some(e.to_string())),
            }
        })?;
        let received = match server.join() {
            Ok(r) => r?,
            Err(p) => std::panic::resume_unwind(p),
        };
        Ok(match (client, received) {
            (Some(err), _) => TcpOutcome::ConnectFailed(err),
            (None, Some(got)) if got == payload.as_bytes() => TcpOutcome::Delivered,
            (None, Some(got)) => TcpOutcome::PayloadLost(String::from_utf8_lossy(&got).into()),
            (None, None) => TcpOutcome::PayloadLost("<no connection accepted>".into()),
        })
    })
}

/// An HTTP response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// First header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET http://ADDR PATH` from inside namespace `ns` (HTTP/1.1, `Connection: close`).
pub fn http_get(ns: &str, addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpResponse> {
    in_netns(ns, || {
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .with_context(|| format!("read response from {addr}"))?;
        parse_http_response(&raw)
    })
    .with_context(|| format!("GET http://{addr}{path} in netns {ns}"))
}

/// Parses a complete HTTP/1.x response (Content-Length, chunked, or until close).
pub fn parse_http_response(raw: &[u8]) -> Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of HTTP headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut resp = HttpResponse {
        status,
        headers,
        body: String::new(),
    };
    let rest = &raw[split + 4..];
    let body = if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)?
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().context("bad Content-Length")?;
        if rest.len() < len {
            bail!("body truncated: {} of {len} bytes", rest.len());
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    resp.body = String::from_utf8(body).context("body is not UTF-8")?;
    Ok(resp)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_str:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("chunk truncated");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
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

/// Formats a MAC address like `ip` does (`02:15:00:00:00:01`).
pub fn fmt_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A one-line description of an Ethernet frame, for messages.
pub fn describe_frame(f: &[u8]) -> String {
    if f.len() < 14 {
        return format!("runt frame of {} bytes", f.len());
    }
    let (dst, src) = (fmt_mac(&f[0..6]), fmt_mac(&f[6..12]));
    let et = u16::from_be_bytes([f[12], f[13]]);
    let what = match et {
        0x0806 if f.len() >= 42 => {
            let op = u16::from_be_bytes([f[20], f[21]]);
            format!(
                "ARP {} who-has/is {} from {}",
                if op == 1 { "request" } else { "reply" },
                IpAddr::from([f[38], f[39], f[40], f[41]]),
                IpAddr::from([f[28], f[29], f[30], f[31]])
            )
        }
        0x0800 if f.len() >= 34 => format!(
            "IPv4 proto {} {} -> {}",
            f[23],
            IpAddr::from([f[26], f[27], f[28], f[29]]),
            IpAddr::from([f[30], f[31], f[32], f[33]])
        ),
        0x86dd if f.len() >= 54 => {
            let s: [u8; 16] = f[22..38].try_into().unwrap_or_default();
            let d: [u8; 16] = f[38..54].try_into().unwrap_or_default();
            let mut w = format!(
                "IPv6 nh {} {} -> {}",
                f[20],
                IpAddr::from(s),
                IpAddr::from(d)
            );
            if f[20] == 58 && f.len() >= 55 {
                w.push_str(&format!(" icmpv6 type {}", f[54]));
                if (f[54] == 135 || f[54] == 136) && f.len() >= 78 {
                    let t: [u8; 16] = f[62..78].try_into().unwrap_or_default();
                    w.push_str(&format!(" target {}", IpAddr::from(t)));
                }
            }
            w
        }
        _ => format!("ethertype {et:#06x}"),
    };
    format!("{src} > {dst} {what} ({} bytes)", f.len())
}

/// Whether Ethernet frame `f` is about `addr`: an ARP request/reply whose target is `addr`, an
/// IPv4/IPv6 packet to `addr`, or an IPv6 neighbour solicitation/advertisement whose target is
/// `addr`.
pub fn frame_targets(f: &[u8], addr: IpAddr) -> bool {
    if f.len() < 14 {
        return false;
    }
    let et = u16::from_be_bytes([f[12], f[13]]);
    match (et, addr) {
        (0x0806, IpAddr::V4(a)) => f.len() >= 42 && f[38..42] == a.octets(),
        (0x0800, IpAddr::V4(a)) => f.len() >= 34 && f[30..34] == a.octets(),
        (0x86dd, IpAddr::V6(a)) => {
            if f.len() >= 54 && f[38..54] == a.octets() {
                return true;
            }
            f.len() >= 78
                && f[20] == 58
                && (f[54] == 135 || f[54] == 136)
                && f[62..78] == a.octets()
        }
        _ => false,
    }
}

/// Sends one raw Ethernet frame (header included) out of `ifname` in namespace `ns`
/// (AF_PACKET), e.g. to test what isolator does with frames a VM's stack would never build.
pub fn send_frame(ns: &str, ifname: &str, frame: &[u8]) -> Result<()> {
    let ifname_c = std::ffi::CString::new(ifname)?;
    in_netns(ns, || {
        // SAFETY: plain syscall; the fd is owned right away.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fresh fd owned by nobody else.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(ifname_c.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {ifname}");
        }
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
            bail!(
                "send frame on {ifname}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    })
    .with_context(|| format!("send frame in netns {ns}"))
}

/// Parses `02:15:00:00:00:01`.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {s:?}"))?;
    v.try_into().map_err(|_| anyhow::anyhow!("bad MAC {s:?}"))
}

/// An Ethernet frame carrying an IPv4/ICMP echo request `src -> dst` (valid checksums),
/// optionally 802.1Q-tagged with `vlan`.
pub fn icmp4_echo_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    vlan: Option<u16>,
) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(&[0x5a; PING_PAYLOAD]);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    if let Some(id) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}
