//! The programs' reports (`EVENTS`, see `isolator-ebpf/src/events.rs`) as the daemon
//! reads them: management attempts, which go to the audit log, and sampled drops, which
//! go to `isolator monitor`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use isolator_common::{Event, direction, event, verdict};
use serde::{Deserialize, Serialize};

use crate::metrics::VifLabels;

/// Reads one report from the ring buffer's bytes; `None` if they are not one.
pub fn parse(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: `Event` is `repr(C)` plain integers and byte arrays, valid for any bits;
    // the length was checked; the read is unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// A report, in words: what the audit log records and `isolator monitor` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// RFC 3339, from the kernel's timestamp.
    pub time: String,
    /// `management` or `drop`.
    pub kind: String,
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// `ingress` (from the VM) or `egress` (to it).
    pub direction: String,
    /// The drop reason (a `reason` label of the metrics).
    pub reason: String,
    /// Audit mode passed the packet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audited: bool,
    pub src: String,
    pub dst: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, another protocol's number, or `-` (not IP).
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// Reports of this kind on this interface not made (rate limit, full ring) just
    /// before this one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suppressed: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Turns a report into words. `place` names its interface; `boot_to_wall` converts the
/// kernel's `CLOCK_BOOTTIME` nanoseconds to wall-clock time.
pub fn describe(
    e: &Event,
    place: Option<&VifLabels>,
    boot_to_wall: impl Fn(u64) -> chrono::DateTime<chrono::Utc>,
) -> Report {
    let v4 = e.flags & event::V4 != 0;
    let address = |bytes: &[u8; 16]| -> IpAddr {
        if v4 {
            IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*bytes))
        }
    };
    let ports = e.flags & event::PORTS != 0;
    let protocol = match e.protocol {
        0 if address(&e.src).is_unspecified() && address(&e.dst).is_unspecified() => {
            "-".to_string()
        }
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    };
    let (device, tenant, segment) = match place {
        Some(p) => (
            p.device.clone(),
            (!p.tenant.is_empty()).then(|| p.tenant.clone()),
            (!p.segment.is_empty()).then(|| p.segment.clone()),
        ),
        None => (format!("ifindex {}", e.ifindex), None, None),
    };
    Report {
        time: boot_to_wall(e.time_ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        kind: if e.kind == event::MANAGEMENT {
            "management"
        } else {
            "drop"
        }
        .into(),
        device,
        tenant,
        segment,
        direction: if e.direction == direction::EGRESS {
            "egress"
        } else {
            "ingress"
        }
        .into(),
        reason: verdict::name(e.verdict).unwrap_or("unknown").to_string(),
        audited: e.flags & event::AUDITED != 0,
        src: address(&e.src).to_string(),
        dst: address(&e.dst).to_string(),
        protocol,
        src_port: ports.then_some(e.src_port),
        dst_port: ports.then_some(e.dst_port),
        suppressed: e.suppressed,
    }
}

/// Converts `CLOCK_BOOTTIME` nanoseconds to wall-clock time, by the two clocks now.
pub fn boot_to_wall(boot_ns: u64) -> chrono::DateTime<chrono::Utc> {
    let ago = crate::dataplane::boottime_ns().saturating_sub(boot_ns);
    chrono::Utc::now() - chrono::Duration::nanoseconds(ago.min(i64::MAX as u64) as i64)
}

/// Which reports a monitor wants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &Report) -> bool {
        let is = |want: &Option<String>, have: Option<&str>| match want {
            None => true,
            Some(w) => have == Some(w.as_str()),
        };
        is(&self.device, Some(&r.device))
            && is(&self.tenant, r.tenant.as_deref())
            && is(&self.segment, r.segment.as_deref())
            && is(&self.reason, Some(&r.reason))
    }
}

/// `isolator monitor`'s line for a report.
pub fn render(r: &Report) -> String {
    let place = match (&r.tenant, &r.segment) {
        (Some(t), Some(s)) => format!("{t}/{s}"),
        _ => "-".into(),
    };
    let with_port = |addr: &str, port: Option<u16>| match port {
        Some(p) if addr.contains(':') => format!("[{addr}]:{p}"),
        Some(p) => format!("{addr}:{p}"),
        None => addr.to_string(),
    };
    let mut line = format!(
        "{} {} {} {} {}{} {} {} -> {}",
        r.time,
        r.device,
        place,
        r.direction,
        r.reason,
        if r.audited { " (audited, passed)" } else { "" },
        r.protocol,
        with_port(&r.src, r.src_port),
        with_port(&r.dst, r.dst_port),
    );
    if r.suppressed > 0 {
        line.push_str(&format!("  (+{} not shown before this)", r.suppressed));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        let mut src = [0u8; 16];
        src[10] = 0xff;
        src[11] = 0xff;
        src[12..].copy_from_slice(&[10, 1, 1, 2]);
        let mut dst = src;
        dst[12..].copy_from_slice(&[192, 168, 100, 5]);
        Event {
            time_ns: 1_000,
            ifindex: 7,
            kind: event::MANAGEMENT,
            direction: direction::INGRESS,
            verdict: verdict::MANAGEMENT,
            protocol: 6,
            src,
            dst,
            src_port: 40000,
            dst_port: 22,
            flags: event::V4 | event::PORTS,
            suppressed: 3,
            ..Event::default()
        }
    }

    #[test]
    fn a_report_in_words() {
        let e = event();
        // SAFETY: `e` is a plain `repr(C)` value; its bytes are read while it lives.
        let bytes: Vec<u8> = unsafe {
            std::slice::from_raw_parts((&e as *const Event).cast::<u8>(), size_of::<Event>())
        }
        .to_vec();
        assert_eq!(parse(&bytes), Some(e));
        assert_eq!(parse(&bytes[..10]), None);
        let place = VifLabels {
            device: "vm1".into(),
            tenant: "acme".into(),
            segment: "web".into(),
        };
        let r = describe(&e, Some(&place), |_| chrono::DateTime::UNIX_EPOCH);
        assert_eq!(r.kind, "management");
        assert_eq!(r.reason, "management");
        assert_eq!(
            (r.src.as_str(), r.dst.as_str()),
            ("10.1.1.2", "192.168.100.5")
        );
        assert_eq!((r.src_port, r.dst_port), (Some(40000), Some(22)));
        assert_eq!(r.protocol, "tcp");
        assert_eq!(r.suppressed, 3);
        assert_eq!(
            render(&r),
            "1970-01-01T00:00:00.000000Z vm1 acme/web ingress management tcp \
             10.1.1.2:40000 -> 192.168.100.5:22  (+3 not shown before this)"
        );
        let unknown = describe(&e, None, |_| chrono::DateTime::UNIX_EPOCH);
        assert_eq!(unknown.device, "ifindex 7");
    }

    #[test]
    fn filters_match_every_field_given() {
        let r = describe(
            &event(),
            Some(&VifLabels {
                device: "vm1".into(),
                tenant: "acme".into(),
                segment: "web".into(),
            }),
            |_| chrono::DateTime::UNIX_EPOCH,
        );
        assert!(Filter::default().matches(&r));
        let f = |device: Option<&str>, tenant: Option<&str>, reason: Option<&str>| Filter {
            device: device.map(Into::into),
            tenant: tenant.map(Into::into),
            segment: None,
            reason: reason.map(Into::into),
        };
        assert!(f(Some("vm1"), Some("acme"), Some("management")).matches(&r));
        assert!(!f(Some("vm2"), None, None).matches(&r));
        assert!(!f(None, Some("globex"), None).matches(&r));
        assert!(!f(None, None, Some("cross_tenant")).matches(&r));
    }
}
