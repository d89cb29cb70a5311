//! A tap device in the lab's host namespace, played by the test as the VM: created with
//! `ip tuntap add mode tap`, opened through `/dev/net/tun` (`TUNSETIFF` with
//! `IFF_TAP | IFF_NO_PI`, as a hypervisor opens it) and made a port of the lab's bridge.
//! What the test writes to the file is what the VM sends (the host receives it on the
//! tap: XDP, direction `ingress`); what the host transmits on the tap (TC egress) is what
//! the test reads. Like the rest of the lab, nothing here touches the root namespace.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::lab::{BRIDGE, Lab};
use crate::netns::{in_netns, ip_n};

/// `TUNSETIFF`, `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// A tap vif whose VM side is this process. The device goes with the lab's host namespace.
pub struct Tap {
    /// The tap device (the vif) in the lab's host namespace.
    pub name: String,
    /// The MAC the "VM" sends from (not the tap device's own).
    pub mac: String,
    file: File,
}

impl Tap {
    /// Creates the tap `name` in the lab's host namespace, opens it as the VM with MAC
    /// `mac`, makes it a port of the bridge and brings it up.
    pub fn create(lab: &Lab, name: &str, mac: &str) -> Result<Tap> {
        let host = lab.host_ns();
        ip_n(host, &["tuntap", "add", "mode", "tap", "name", name])
            .with_context(|| format!("creating the tap {name}"))?;
        // `/dev/net/tun` finds the device in the namespace of whoever opens it.
        let owned = name.to_string();
        let file = in_netns(host, move || open_tap(&owned))
            .with_context(|| format!("opening the tap {name} in netns {host}"))?;
        ip_n(host, &["link", "set", name, "master", BRIDGE])?;
        ip_n(host, &["link", "set", name, "up"])?;
        Ok(Tap {
            name: name.to_string(),
            mac: mac.to_string(),
            file,
        })
    }

    /// The VM sends `frame` (Ethernet header first).
    pub fn write(&self, frame: &[u8]) -> Result<()> {
        (&self.file)
            .write_all(frame)
            .with_context(|| format!("writing a frame to the tap {}", self.name))
    }

    /// Every frame the VM could read within `window`.
    pub fn read_for(&self, window: Duration) -> Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + window;
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(frames);
            }
            let mut pfd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if rc <= 0 {
                continue;
            }
            // SAFETY: the buffer is valid for its length.
            let n =
                unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                frames.push(buf[..n as usize].to_vec());
            }
        }
    }
}

/// Opens `/dev/net/tun` and attaches it to the tap `name` of the calling thread's
/// namespace, without packet information: the file then carries bare Ethernet frames.
fn open_tap(name: &str) -> Result<File> {
    ensure!(name.len() < libc::IFNAMSIZ, "tap name {name:?} is too long");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .context("open /dev/net/tun")?;
    // SAFETY: a zeroed ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
    // SAFETY: TUNSETIFF reads (and writes back) one ifreq, valid for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut ifr) };
    ensure!(
        rc == 0,
        "TUNSETIFF {name} (IFF_TAP | IFF_NO_PI): {}",
        std::io::Error::last_os_error()
    );
    Ok(file)
}
