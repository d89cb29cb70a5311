//! Continuous traffic across an event (a swap, a restart): a UDP flow of numbered
//! datagrams from one namespace to another, sent at a steady pace from a thread of its
//! own and received by another, so that a test can say exactly which datagrams were lost.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::in_netns;

/// Datagrams `0, 1, 2, ...` (8-byte big-endian sequence numbers) from `from_ns` to `to`,
/// one every `gap`, until [`UdpFlow::stop`].
pub struct UdpFlow {
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<Result<u64>>>,
    received: Arc<Mutex<BTreeSet<u64>>>,
    receiver: Option<JoinHandle<Result<()>>>,
    done: Arc<AtomicBool>,
}

/// What a flow delivered.
#[derive(Debug)]
pub struct Delivery {
    pub sent: u64,
    pub received: u64,
    /// Sequence numbers sent and never received (the first 20).
    pub lost: Vec<u64>,
    pub duplicates: bool,
}

impl UdpFlow {
    /// Binds the receiver at `to` in `to_ns`, then starts sending from `from_ns`.
    pub fn start(from_ns: &str, to_ns: &str, to: SocketAddr, gap: Duration) -> Result<UdpFlow> {
        let rx = in_netns(to_ns, || Ok(UdpSocket::bind(to)?))
            .with_context(|| format!("binding {to} in {to_ns}"))?;
        rx.set_read_timeout(Some(Duration::from_millis(50)))?;
        let tx = in_netns(from_ns, || Ok(UdpSocket::bind("0.0.0.0:0")?))
            .with_context(|| format!("a UDP socket in {from_ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(BTreeSet::new()));
        let receiver = {
            let (done, received) = (done.clone(), received.clone());
            std::thread::spawn(move || -> Result<()> {
                let mut buf = [0u8; 64];
                let mut duplicate = false;
                while !done.load(Ordering::SeqCst) {
                    match rx.recv(&mut buf) {
                        Ok(8) => {
                            let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                            duplicate |= !received.lock().unwrap().insert(seq);
                        }
                        Ok(n) => bail!("a datagram of {n} bytes that the flow did not send"),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock
                                    | std::io::ErrorKind::TimedOut
                                    | std::io::ErrorKind::Interrupted
                            ) => {}
                        Err(e) => return Err(e).context("receiving"),
                    }
                }
                if duplicate {
                    // Recorded as u64::MAX: no sequence number reaches it.
                    received.lock().unwrap().insert(u64::MAX);
                }
                Ok(())
            })
        };
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<u64> {
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    // A send the local stack refuses is a harness error, not a loss.
                    tx.send_to(&seq.to_be_bytes(), to)
                        .with_context(|| format!("sending datagram {seq} to {to}"))?;
                    seq += 1;
                    std::thread::sleep(gap);
                }
                Ok(seq)
            })
        };
        Ok(UdpFlow {
            stop,
            sender: Some(sender),
            received,
            receiver: Some(receiver),
            done,
        })
    }

    /// How many datagrams have arrived so far.
    pub fn received(&self) -> u64 {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|s| **s != u64::MAX)
            .count() as u64
    }

    /// Stops sending, waits up to `linger` for the datagrams in flight, and says what was
    /// delivered.
    pub fn stop(mut self, linger: Duration) -> Result<Delivery> {
        self.stop.store(true, Ordering::SeqCst);
        let sent = match self.sender.take().expect("running").join() {
            Ok(r) => r?,
            Err(p) => std::panic::resume_unwind(p),
        };
        let deadline = Instant::now() + linger;
        while self.received() < sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.done.store(true, Ordering::SeqCst);
        match self.receiver.take().expect("running").join() {
            Ok(r) => r?,
            Err(p) => std::panic::resume_unwind(p),
        }
        let received = self.received.lock().unwrap();
        let lost: Vec<u64> = (0..sent)
            .filter(|s| !received.contains(s))
            .take(20)
            .collect();
        Ok(Delivery {
            sent,
            received: received.iter().filter(|s| **s < sent).count() as u64,
            lost,
            duplicates: received.contains(&u64::MAX),
        })
    }
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
        if let Some(t) = self.receiver.take() {
            let _ = t.join();
        }
    }
}
