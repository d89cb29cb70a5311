//! `nmap` TCP connect scans from inside a lab namespace, against lab addresses only.
//!
//! A scan is what an attacker on a VM (or on the outside) would run: `nmap -n -Pn -sT` (full
//! TCP connect, no host discovery, no DNS) over a fixed port list, with tight timeouts so
//! that a filtered /28 takes a few seconds. The grepable output (`-oG -`) is parsed into the
//! set of open (address, port) pairs; the raw output is kept for failure messages.
//!
//! Safety: the scanner runs only inside one of the lab's namespaces (`isot-...`), and only
//! against addresses of the lab's test ranges ([`LAB_RANGES`]); anything else is refused
//! before nmap starts.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::lab::{NS_PREFIX, parse_cidr};
use crate::netns::run;

/// The only ranges a lab scan may target: the segments (10/8, fd00::/16, which includes the
/// IPv6 management range), the IPv4 management range and the outside test networks.
pub const LAB_RANGES: [&str; 5] = [
    "10.0.0.0/8",
    "fd00::/16",
    "192.168.100.0/24",
    "203.0.113.0/24",
    "2001:db8::/32",
];

/// An (address, port) pair.
pub type Endpoint = (IpAddr, u16);

/// The result of one scan.
#[derive(Clone, Debug)]
pub struct Scan {
    /// The namespace it ran in.
    pub ns: String,
    /// The command line, for messages.
    pub command: String,
    /// nmap's grepable output (and stderr).
    pub output: String,
    /// Every (address, port) nmap reported `open`.
    pub open: BTreeSet<Endpoint>,
    /// Every address nmap reported up (meaningful for host discovery, [`host_discovery`];
    /// a `-Pn` port scan reports every target up).
    pub up: BTreeSet<IpAddr>,
    /// How long the scan took.
    pub took: Duration,
}

impl Scan {
    /// The open pairs as `addr:port` (`[v6]:port`), sorted, comma-separated; `none` if empty.
    pub fn open_list(&self) -> String {
        fmt_endpoints(&self.open)
    }
}

impl fmt::Display for Scan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}   ({:.1?})", self.command, self.took)?;
        if self.command.contains(" -sn ") {
            writeln!(f, "up: {}", fmt_addrs(&self.up))?;
        } else {
            writeln!(f, "open: {}", self.open_list())?;
        }
        for line in self.output.lines() {
            writeln!(f, "  | {line}")?;
        }
        Ok(())
    }
}

/// `a:p, [b]:q, ...` sorted; `none` if empty.
pub fn fmt_endpoints<'a>(set: impl IntoIterator<Item = &'a Endpoint>) -> String {
    let mut v: Vec<String> = set
        .into_iter()
        .map(|(a, p)| match a {
            IpAddr::V4(a) => format!("{a}:{p}"),
            IpAddr::V6(a) => format!("[{a}]:{p}"),
        })
        .collect();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// `a, b, ...` sorted; `none` if empty.
pub fn fmt_addrs<'a>(set: impl IntoIterator<Item = &'a IpAddr>) -> String {
    let mut v: Vec<String> = set.into_iter().map(IpAddr::to_string).collect();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Builds an address set from strings (panics on a bad address: a test bug).
pub fn addrs(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter()
        .map(|a| {
            a.parse()
                .unwrap_or_else(|e| panic!("bad address {a:?}: {e}"))
        })
        .collect()
}

/// Builds an endpoint set from `("10.1.1.2", 443)` pairs (panics on a bad address: a test bug).
pub fn endpoints(pairs: &[(&str, u16)]) -> BTreeSet<Endpoint> {
    pairs
        .iter()
        .map(|(a, p)| {
            (
                a.parse()
                    .unwrap_or_else(|e| panic!("bad address {a:?}: {e}")),
                *p,
            )
        })
        .collect()
}

/// Whether `target` (an address or CIDR prefix) lies entirely inside one of [`LAB_RANGES`].
pub fn is_lab_target(target: &str) -> bool {
    let (addr, len) = match target.parse::<IpAddr>() {
        Ok(a) => (a, if a.is_ipv4() { 32 } else { 128 }),
        Err(_) => match parse_cidr(target) {
            Ok(x) => x,
            Err(_) => return false,
        },
    };
    LAB_RANGES.iter().any(|r| {
        let (net, plen) = parse_cidr(r).expect("LAB_RANGES are valid");
        len >= plen && in_prefix(addr, net, plen)
    })
}

fn in_prefix(addr: IpAddr, net: IpAddr, plen: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if plen == 0 {
                0
            } else {
                u32::MAX << (32 - plen)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if plen == 0 {
                0
            } else {
                u128::MAX << (128 - plen)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// `nmap -n -Pn -sT` of `ports` on `targets` (addresses or prefixes, one family; IPv6 adds
/// `-6`) from lab namespace `ns`: full TCP connects, every target treated as up, tight
/// timeouts. Fails if nmap fails or a target is not a lab address.
pub fn tcp_connect_scan(ns: &str, targets: &[&str], ports: &[u16]) -> Result<Scan> {
    ensure!(!ports.is_empty(), "no ports to scan");
    let port_list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    run_nmap(
        ns,
        &[
            "-Pn",
            "-sT",
            "-T4",
            "--max-retries",
            "1",
            "--initial-rtt-timeout",
            "150ms",
            "--max-rtt-timeout",
            "300ms",
            "--host-timeout",
            "30s",
            "-p",
            &port_list,
        ],
        targets,
    )
}

/// `nmap -n -sn` (host discovery, no port scan) of `targets` from lab namespace `ns`: on a
/// directly connected network nmap (as root) asks by ARP (IPv4) or neighbour solicitation
/// (IPv6), so this shows which addresses a VM can even see at layer 2. The result's `up`.
pub fn host_discovery(ns: &str, targets: &[&str]) -> Result<Scan> {
    run_nmap(
        ns,
        &["-sn", "--max-retries", "1", "--host-timeout", "10s"],
        targets,
    )
}

fn run_nmap(ns: &str, options: &[&str], targets: &[&str]) -> Result<Scan> {
    ensure!(
        ns.starts_with(NS_PREFIX),
        "nmap runs only inside a lab namespace ({NS_PREFIX}...), not {ns:?}"
    );
    ensure!(!targets.is_empty(), "nothing to scan");
    for t in targets {
        ensure!(
            is_lab_target(t),
            "refusing to scan {t:?}: not inside the lab ranges {LAB_RANGES:?}"
        );
    }
    let v6 = targets[0].contains(':');
    ensure!(
        targets.iter().all(|t| t.contains(':') == v6),
        "one address family per scan: {targets:?}"
    );
    for t in targets {
        ensure_route(ns, t)?;
    }
    let mut args: Vec<String> = ["netns", "exec", ns, "nmap", "-n"]
        .iter()
        .chain(options)
        .chain(&["-oG", "-"])
        .map(|s| s.to_string())
        .collect();
    if v6 {
        args.push("-6".into());
    }
    args.extend(targets.iter().map(|t| t.to_string()));
    let command = format!("ip {}", args.join(" "));
    let start = Instant::now();
    let out = run(Command::new("ip").args(&args)).context("run nmap (Debian package `nmap`)")?;
    let took = start.elapsed();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("`{command}` failed ({}):\n{output}", out.status);
    }
    // nmap reports a probe it could not send as a warning and goes on: its targets then
    // look down or filtered, which would read as "blocked".
    if let Some(line) = output.lines().find(|l| could_not_send(l)) {
        bail!("`{command}` could not send its probes ({line:?}): a harness error:\n{output}");
    }
    let (open, up) = parse_grepable(&output)?;
    Ok(Scan {
        ns: ns.to_string(),
        command,
        output,
        open,
        up,
        took,
    })
}

/// Fails unless namespace `ns` has a route to `target` (an address, or a prefix by its
/// first address): a connect the local stack refuses ("network unreachable") makes nmap
/// report the port filtered, which would read as "blocked" though nothing was sent.
fn ensure_route(ns: &str, target: &str) -> Result<()> {
    let addr = match target.parse::<IpAddr>() {
        Ok(a) => a,
        Err(_) => parse_cidr(target)?.0,
    };
    crate::netns::ip_n(ns, &["route", "get", &addr.to_string()])
        .map(|_| ())
        .with_context(|| {
            format!(
                "netns {ns} has no route to {target}: a scan could not send anything there \
                 (a harness error, not \"filtered\")"
            )
        })
}

/// Whether a line of nmap's output says that it could not send a probe.
fn could_not_send(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("sendto in send_")
        || l.contains("failed to send")
        || l.contains("network is unreachable")
        || l.contains("operation not permitted")
}

/// The open (address, port) pairs and the addresses reported up in nmap's grepable output.
pub fn parse_grepable(text: &str) -> Result<(BTreeSet<Endpoint>, BTreeSet<IpAddr>)> {
    let mut open = BTreeSet::new();
    let mut up = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("Host: ") else {
            continue;
        };
        let mut fields = rest.split('\t');
        let host = fields
            .next()
            .and_then(|h| h.split_whitespace().next())
            .with_context(|| format!("nmap line without address: {line:?}"))?;
        let addr: IpAddr = host
            .parse()
            .with_context(|| format!("nmap line with a bad address: {line:?}"))?;
        for field in fields {
            if field.trim() == "Status: Up" {
                up.insert(addr);
            }
            let Some(ports) = field.strip_prefix("Ports: ") else {
                continue;
            };
            for entry in ports.split(", ") {
                let mut parts = entry.trim().split('/');
                let (Some(port), Some(state)) = (parts.next(), parts.next()) else {
                    bail!("nmap port entry {entry:?} in {line:?}");
                };
                if state == "open" {
                    let port: u16 = port
                        .parse()
                        .with_context(|| format!("nmap port {port:?} in {line:?}"))?;
                    open.insert((addr, port));
                }
            }
        }
    }
    Ok((open, up))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grepable_output() {
        let text = "# Nmap 7.93 scan initiated\n\
            Host: 10.2.1.2 ()\tStatus: Up\n\
            Host: 10.2.1.2 ()\tPorts: 22/filtered/tcp//ssh///, 80/open/tcp//http///\tIgnored State: filtered (4)\n\
            Host: fd00:2:1::3 ()\tPorts: 8080/open/tcp//http-proxy///, 9000/closed/tcp//cslistener///\n\
            # Nmap done\n";
        let (open, up) = parse_grepable(text).unwrap();
        assert_eq!(up, addrs(&["10.2.1.2"]));
        assert_eq!(open, endpoints(&[("10.2.1.2", 80), ("fd00:2:1::3", 8080)]));
        assert_eq!(fmt_endpoints(&open), "10.2.1.2:80, [fd00:2:1::3]:8080");
    }

    #[test]
    fn probes_nmap_could_not_send_are_recognised() {
        assert!(could_not_send(
            "sendto in send_ip_packet_sd: sendto(5, packet, 44, 0, 10.1.1.2, 16) => Operation not permitted"
        ));
        assert!(could_not_send("WARNING: Failed to send an ARP request"));
        assert!(!could_not_send(
            "Host: 10.2.1.2 ()\tPorts: 22/filtered/tcp//ssh///"
        ));
        assert!(!could_not_send(
            "# Nmap done at ...: 16 IP addresses (2 hosts up)"
        ));
    }

    #[test]
    fn only_lab_targets() {
        for ok in [
            "10.2.1.0/28",
            "10.1.1.2",
            "fd00:2:1::/124",
            "192.168.100.10",
            "203.0.113.10",
            "2001:db8:ff::10",
        ] {
            assert!(is_lab_target(ok), "{ok}");
        }
        for bad in [
            "0.0.0.0/0",
            "8.8.8.8",
            "10.0.0.0/7",
            "192.168.1.1",
            "::/0",
            "2001:4860::8888",
            "scanme.nmap.org",
            "10.1.1.1-20",
        ] {
            assert!(!is_lab_target(bad), "{bad}");
        }
    }
}
