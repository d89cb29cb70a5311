//! Crafted frames with scapy, sent from inside a lab namespace.
//!
//! [`Scapy::start`] runs one long-lived Debian `/usr/bin/python3` (the one that can import
//! `python3-scapy`; the pyenv `python3` first on PATH cannot) under `ip netns exec NS`, so
//! everything it sends leaves through that namespace's `eth0` and nowhere else. Python code
//! is sent to it one request at a time and runs in one persistent session with
//! `from scapy.all import *` done, so that a test pays for the scapy import once per VM.
//!
//! ```no_run
//! # fn f(lab: &isolator_tests::Lab) -> anyhow::Result<()> {
//! let mut s = isolator_tests::scapy::Scapy::start(&lab.vm("acme-web1").ns)?;
//! let frame = s.sendp("Ether(src='02:15:00:00:00:01', dst='ff:ff:ff:ff:ff:ff')/ARP()", 1)?;
//! # let _ = frame; Ok(()) }
//! ```
//!
//! Frames are built once with `bytes(...)` and then sent as they are
//! (`sendp(Raw(load=frame), iface="eth0")`): what leaves the VM is byte for byte what the
//! caller gets back, even for malformed frames that scapy would "fix" when rebuilding them.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::lab::VM_IFNAME;

/// The interpreter that has `python3-scapy` (Debian's, not pyenv's).
pub const PYTHON: &str = "/usr/bin/python3";

/// How long one request (import included) may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The server side: reads one hex-encoded snippet per line, runs it in one persistent
/// globals dict with stdout captured, answers `ok HEX(output)` or `err HEX(traceback)`.
const SERVER: &str = r#"
import sys, io, contextlib, traceback
G = {}
exec("from scapy.all import *\nconf.verb = 0\n", G)
G["IFACE"] = sys.argv[1]
def _frame(p):
    return p if isinstance(p, (bytes, bytearray)) else bytes(p)
def send_frame(p, count=1):
    raw = _frame(p)
    G["sendp"](G["Raw"](load=raw), iface=G["IFACE"], count=count, verbose=False)
    return raw
G["send_frame"] = send_frame
G["_frame"] = _frame
print("ready", flush=True)
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    out = io.StringIO()
    try:
        code = bytes.fromhex(line).decode()
        with contextlib.redirect_stdout(out):
            exec(code, G)
        print("ok " + out.getvalue().encode().hex(), flush=True)
    except BaseException:
        msg = out.getvalue() + traceback.format_exc()
        print("err " + msg.encode().hex(), flush=True)
"#;

/// A scapy session inside one lab namespace. Dropping it kills the interpreter (the lab's
/// cleanup would too: it kills every process left in its namespaces).
pub struct Scapy {
    ns: String,
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Scapy {
    /// Starts the interpreter in namespace `ns`, sending on its `eth0`; waits until scapy is
    /// imported.
    pub fn start(ns: &str) -> Result<Scapy> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", ns, PYTHON, "-I", "-u", "-c", SERVER, VM_IFNAME,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {PYTHON} (scapy) in netns {ns}"))?;
        let stdin = child.stdin.take().context("python stdin")?;
        let stdout = child.stdout.take().context("python stdout")?;
        let err_pipe = child.stderr.take().context("python stderr")?;
        let (tx, replies) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut s = Scapy {
            ns: ns.to_string(),
            child,
            stdin,
            replies,
            stderr,
        };
        let first = s.reply()?;
        if first != "ready" {
            bail!(
                "scapy in netns {ns} did not start: {first:?}; stderr:\n{}",
                s.stderr()
            );
        }
        Ok(s)
    }

    /// The namespace it sends from.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn reply(&mut self) -> Result<String> {
        match self.replies.recv_timeout(TIMEOUT) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => bail!(
                "scapy in netns {} did not answer within {TIMEOUT:?}; stderr:\n{}",
                self.ns,
                self.stderr()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait().ok().flatten();
                bail!(
                    "scapy in netns {} exited ({status:?}); stderr:\n{}",
                    self.ns,
                    self.stderr()
                )
            }
        }
    }

    /// Runs Python statements in the session (scapy's names, `IFACE`, and
    /// `send_frame(pkt_or_bytes, count=1)`, which sends a frame unchanged and returns its
    /// bytes, are in scope; names assigned stay for later calls). Returns what it printed.
    pub fn run(&mut self, code: &str) -> Result<String> {
        writeln!(self.stdin, "{}", hex(code.as_bytes()))
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("write to scapy in netns {}", self.ns))?;
        let line = self.reply()?;
        let (status, payload) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let text = String::from_utf8_lossy(&unhex(payload)?).into_owned();
        match status {
            "ok" => Ok(text),
            "err" => bail!("scapy in netns {} failed:\n{code}\n---\n{text}", self.ns),
            _ => bail!("scapy in netns {}: unexpected answer {line:?}", self.ns),
        }
    }

    /// The bytes of the frame that the scapy expression `expr` builds (e.g.
    /// `Ether(...)/IP(...)/UDP(...)`), without sending it.
    pub fn build(&mut self, expr: &str) -> Result<Vec<u8>> {
        let out = self.run(&format!("print(_frame({expr}).hex())"))?;
        unhex(out.trim())
    }

    /// Builds the frame `expr` once and sends it `count` times out of the namespace's `eth0`
    /// (`sendp`); returns its bytes.
    pub fn sendp(&mut self, expr: &str, count: usize) -> Result<Vec<u8>> {
        let out = self.run(&format!("print(send_frame({expr}, count={count}).hex())"))?;
        unhex(out.trim())
    }

    /// Sends the raw frame `frame` `count` times out of `eth0` (`sendp`).
    pub fn send_bytes(&mut self, frame: &[u8], count: usize) -> Result<()> {
        self.run(&format!(
            "send_frame(bytes.fromhex('{}'), count={count})",
            hex(frame)
        ))?;
        Ok(())
    }

    /// The frames of a list expression (e.g. `fragment(IP(...)/UDP(...), fragsize=64)`), each
    /// as bytes, without sending them.
    pub fn build_list(&mut self, expr: &str) -> Result<Vec<Vec<u8>>> {
        let out = self.run(&format!(
            "for _p in ({expr}):\n    print(_frame(_p).hex())\n"
        ))?;
        out.lines().map(|l| unhex(l.trim())).collect()
    }
}

impl Drop for Scapy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses lowercase or uppercase hex.
pub fn unhex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd-length hex {s:?}");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("bad hex {s:?}")))
        .collect()
}

/// The IPv6 link-local address (modified EUI-64, as the kernel derives it by default) of a
/// MAC `aa:bb:cc:dd:ee:ff`: `fe80::a8bb:ccff:fedd:eeff` with the universal/local bit flipped.
pub fn eui64_link_local(mac: &str) -> Result<std::net::Ipv6Addr> {
    let m = crate::frame::parse_mac(mac)?;
    Ok(std::net::Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]]),
    ))
}
