//! TCP echo services inside lab namespaces, and a client that checks data flows both ways.
//!
//! [`EchoServers`] listens on a set of ports (dual-stack `[::]`, so IPv4 and IPv6) in one
//! namespace, echoes whatever a client sends, and records every accepted connection: a test
//! can then say not only "the scanner saw the port closed" but "nothing from that address
//! ever arrived". Everything runs in-process (no socat/ncat to start, wait for and kill):
//! the sockets are bound when [`EchoServers::start`] returns, and dropping the value stops
//! every thread and closes every socket.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::netns::in_netns;

/// One connection an [`EchoServers`] accepted (addresses with IPv4-mapped IPv6 unmapped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// Echo listeners on some ports of one namespace. See the module documentation.
pub struct EchoServers {
    ns: String,
    ports: Vec<u16>,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<Accepted>>>,
    thread: Option<JoinHandle<()>>,
}

/// How long the acceptor sleeps in poll(2) at most: the delay before [`EchoServers::accepted`]
/// sees a connection.
const POLL_MS: i32 = 20;

impl EchoServers {
    /// Binds `[::]:PORT` (IPv4 and IPv6) for every port in namespace `ns` and serves them on a
    /// background thread.
    pub fn start(ns: &str, ports: &[u16]) -> Result<EchoServers> {
        let listeners = in_netns(ns, || {
            ports
                .iter()
                .map(|&port| {
                    let addr = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
                    let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                })
                .collect::<Result<Vec<_>>>()
        })
        .with_context(|| format!("echo listeners on {ports:?} in netns {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            std::thread::spawn(move || serve(listeners, stop, accepted))
        };
        Ok(EchoServers {
            ns: ns.to_string(),
            ports: ports.to_vec(),
            stop,
            accepted,
            thread: Some(thread),
        })
    }

    /// The namespace the servers listen in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The ports they listen on.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Every connection accepted so far. Waits a little first, so that connections completed
    /// just before the call are included.
    pub fn accepted(&self) -> Vec<Accepted> {
        std::thread::sleep(Duration::from_millis(3 * POLL_MS as u64));
        self.accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The connections accepted from `peer` (see [`EchoServers::accepted`]).
    pub fn accepted_from(&self, peer: IpAddr) -> Vec<Accepted> {
        self.accepted()
            .into_iter()
            .filter(|a| a.peer.ip() == peer)
            .collect()
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn unmapped(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn serve(listeners: Vec<TcpListener>, stop: Arc<AtomicBool>, accepted: Arc<Mutex<Vec<Accepted>>>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: `fds` is a valid array of pollfd of the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
        if n <= 0 {
            continue;
        }
        for l in &listeners {
            while let Ok((conn, peer)) = l.accept() {
                let local = conn.local_addr().unwrap_or(peer);
                accepted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Accepted {
                        local: unmapped(local),
                        peer: unmapped(peer),
                    });
                let stop = stop.clone();
                conns.push(std::thread::spawn(move || echo(conn, stop)));
            }
        }
        conns.retain(|h| !h.is_finished());
    }
    for h in conns {
        let _ = h.join();
    }
}

/// Echoes until EOF, an error, 10 s of silence, or `stop`.
fn echo(mut conn: TcpStream, stop: Arc<AtomicBool>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 16384];
    let mut idle_since = Instant::now();
    while !stop.load(Ordering::SeqCst) && idle_since.elapsed() < Duration::from_secs(10) {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
                idle_since = Instant::now();
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
}

/// What became of one [`tcp_echo`] exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EchoOutcome {
    /// Connected, and all the bytes sent came back unchanged.
    Echoed { bytes: usize },
    /// The connection could not be established: no answer (timeout), or the neighbour or
    /// a router on the way could not reach the address (host unreachable).
    ConnectFailed(String),
    /// A TCP reset answered the SYN (connection refused): the SYN reached a stack with no
    /// listener there. Not [`EchoOutcome::refused`]: something on the way let it through.
    Reset(String),
    /// Connected, but the data did not come back complete and unchanged.
    Broken {
        sent: usize,
        received: usize,
        error: String,
    },
}

impl EchoOutcome {
    /// Whether the data went there and back.
    pub fn echoed(&self) -> bool {
        matches!(self, EchoOutcome::Echoed { .. })
    }

    /// Whether no connection was established and nothing answered the SYN (a reset is
    /// an answer: see [`EchoOutcome::Reset`]).
    pub fn refused(&self) -> bool {
        matches!(self, EchoOutcome::ConnectFailed(_))
    }
}

/// From namespace `ns`, connects to `target` (within `timeout`), sends `len` bytes of a known
/// pattern while reading the echo back, and compares. Data in both directions: the request
/// direction carries the payload, the reply direction (the connection's replies, which
/// isolator must recognise) carries it back.
pub fn tcp_echo(
    ns: &str,
    target: SocketAddr,
    len: usize,
    timeout: Duration,
) -> Result<EchoOutcome> {
    in_netns(ns, || {
        let conn = match TcpStream::connect_timeout(&target, timeout) {
            Ok(c) => c,
            // A SYN the local stack could not send is a harness error, not "refused".
            Err(e) => {
                return Ok(match crate::net::connect_failure(target, e)? {
                    Ok(failed) => EchoOutcome::ConnectFailed(failed),
                    Err(reset) => EchoOutcome::Reset(reset),
                });
            }
        };
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        conn.set_write_timeout(Some(Duration::from_secs(3)))?;
        let mut writer = conn.try_clone()?;
        let mut reader = conn;
        let (sent, got, error) = std::thread::scope(|s| {
            let w = s.spawn(|| -> std::io::Result<usize> {
                writer.write_all(&payload)?;
                writer.shutdown(Shutdown::Write)?;
                Ok(payload.len())
            });
            let mut got = Vec::with_capacity(len);
            let mut buf = [0u8; 16384];
            let mut error = String::new();
            while got.len() < len {
                match reader.read(&mut buf) {
                    Ok(0) => {
                        error = "connection closed early".into();
                        break;
                    }
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => {
                        error = e.to_string();
                        break;
                    }
                }
            }
            let sent = match w.join() {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    if error.is_empty() {
                        error = format!("write: {e}");
                    }
                    0
                }
                Err(p) => std::panic::resume_unwind(p),
            };
            (sent, got, error)
        });
        if got == payload {
            Ok(EchoOutcome::Echoed { bytes: len })
        } else {
            Ok(EchoOutcome::Broken {
                sent,
                received: got.len(),
                error: if error.is_empty() {
                    "data changed on the way".into()
                } else {
                    error
                },
            })
        }
    })
    .with_context(|| format!("tcp echo to {target} from netns {ns}"))
}

/// An open TCP connection inside a namespace, kept open until dropped (e.g. to look at the
/// connection table while it lives). [`HeldConnection::exchange`] sends and reads back.
pub struct HeldConnection {
    conn: TcpStream,
}

impl HeldConnection {
    /// Connects from `ns` to `target` within `timeout`.
    pub fn open(ns: &str, target: SocketAddr, timeout: Duration) -> Result<HeldConnection> {
        let conn = in_netns(ns, || {
            TcpStream::connect_timeout(&target, timeout)
                .with_context(|| format!("connect {target}"))
        })
        .with_context(|| format!("from netns {ns}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        conn.set_write_timeout(Some(Duration::from_secs(3)))?;
        Ok(HeldConnection { conn })
    }

    /// Sends `data` and reads the same number of bytes back; returns them.
    pub fn exchange(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        self.conn.write_all(data)?;
        let mut got = vec![0u8; data.len()];
        self.conn
            .read_exact(&mut got)
            .context("read the echo back")?;
        Ok(got)
    }
}
