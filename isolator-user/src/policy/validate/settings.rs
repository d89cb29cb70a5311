//! Settings: the format version, the global and per-segment `mode`, a segment's
//! `egress` and guard options, and `connection_tracking`.

use serde_saphyr::Spanned;

use super::Checker;
use super::values::{Keywords, choose};
use crate::policy::raw::{
    RawConnectionTracking, RawFlag, RawScalar, RawSeconds, RawSegment, RawVersion,
};
use crate::policy::{ConnectionTracking, Egress, Mode, POLICY_VERSION, TIMEOUT_MAX_SECONDS};

pub(super) fn check_version(cx: &mut Checker<'_>, version: &Spanned<RawVersion>) {
    match &version.value {
        RawVersion::Number(POLICY_VERSION) => {}
        RawVersion::Number(n) => cx.error(
            &version.referenced,
            format!("unsupported policy format version {n}"),
            Some(format!(
                "this isolator reads version {POLICY_VERSION}; write `version: {POLICY_VERSION}` \
                 and use only the keys of that version"
            )),
        ),
        RawVersion::Other(shown) => cx.error(
            &version.referenced,
            format!("`version` must be the number {POLICY_VERSION}, found {shown}"),
            Some(format!("write `version: {POLICY_VERSION}`")),
        ),
    }
}

const MODE: Keywords<Mode> = Keywords {
    key: "mode",
    choices: &[("enforce", Mode::Enforce), ("audit", Mode::Audit)],
    help: "write `mode: enforce` to drop what the policy forbids, or `mode: audit` to count it \
           and let it pass",
};

const EGRESS: Keywords<Egress> = Keywords {
    key: "egress",
    choices: &[("allow", Egress::Allow), ("deny", Egress::Deny)],
    help: "write `egress: allow` to let the segment's VMs reach destinations outside every \
           segment, or `egress: deny` to drop that traffic",
};

/// The top-level `mode` (the default when absent or invalid).
pub(super) fn global_mode(cx: &mut Checker<'_>) -> Mode {
    let raw = cx.raw;
    raw.mode
        .as_ref()
        .and_then(|m| choose(cx, m, &MODE))
        .unwrap_or_default()
}

/// A segment's own settings, resolved.
pub(super) struct SegmentOptions {
    /// The segment's own `mode`, else the global one.
    pub mode: Mode,
    pub egress: Egress,
    pub allow_router_advertisements: bool,
    pub allow_dhcp_server: bool,
}

/// The settings of one segment; `global` is the top-level mode.
pub(super) fn check_segment(
    cx: &mut Checker<'_>,
    raw: &RawSegment,
    global: Mode,
) -> SegmentOptions {
    SegmentOptions {
        mode: match &raw.mode {
            Some(own) => choose(cx, own, &MODE).unwrap_or(global),
            None => global,
        },
        egress: raw
            .egress
            .as_ref()
            .and_then(|e| choose(cx, e, &EGRESS))
            .unwrap_or_default(),
        allow_router_advertisements: check_flag(
            cx,
            raw.allow_router_advertisements.as_ref(),
            &ALLOW_RA,
        ),
        allow_dhcp_server: check_flag(cx, raw.allow_dhcp_server.as_ref(), &ALLOW_DHCP_SERVER),
    }
}

/// A yes/no key of a segment, for [`check_flag`].
struct Flag {
    key: &'static str,
    /// What to write instead.
    help: &'static str,
}

const ALLOW_RA: Flag = Flag {
    key: "allow_router_advertisements",
    help: "write `allow_router_advertisements: true` to let the segment's VMs act as IPv6 \
           routers (router advertisements and redirects), or leave out the key (default \
           `false`)",
};

const ALLOW_DHCP_SERVER: Flag = Flag {
    key: "allow_dhcp_server",
    help: "write `allow_dhcp_server: true` to let the segment's VMs answer DHCP and DHCPv6 \
           requests, or leave out the key (default `false`)",
};

/// The value of a yes/no key (`false` when absent), or `false` after reporting a value
/// that is not a boolean.
fn check_flag(cx: &mut Checker<'_>, value: Option<&Spanned<RawFlag>>, flag: &Flag) -> bool {
    let Some(value) = value else {
        return false;
    };
    match &value.value.0 {
        RawScalar::Bool(b) => *b,
        other => {
            cx.error(
                &value.referenced,
                format!(
                    "`{}` must be `true` or `false`, found {}",
                    flag.key,
                    other.shown()
                ),
                Some(flag.help.to_owned()),
            );
            false
        }
    }
}

/// `connection_tracking`: every timeout, the default where it is absent or invalid.
pub(super) fn check_connection_tracking(cx: &mut Checker<'_>) -> ConnectionTracking {
    let absent = RawConnectionTracking::default();
    let policy = cx.raw;
    let raw = policy.connection_tracking.as_ref().unwrap_or(&absent);
    let default = ConnectionTracking::default();
    let mut timeout = |key: &str, value: &Option<Spanned<RawSeconds>>, default: u32| {
        let Some(value) = value else {
            return default;
        };
        match &value.value.0 {
            RawScalar::Integer(n) => {
                if let Some(n) = u32::try_from(*n)
                    .ok()
                    .filter(|n| (1..=TIMEOUT_MAX_SECONDS).contains(n))
                {
                    return n;
                }
                cx.error(
                    &value.referenced,
                    format!(
                        "`{key}` must be from 1 to {TIMEOUT_MAX_SECONDS} seconds (one day), \
                         found {n}"
                    ),
                    Some(format!(
                        "the default is {default}; leave out the key to use it"
                    )),
                );
            }
            other => cx.error(
                &value.referenced,
                format!(
                    "`{key}` must be a whole number of seconds, found {}",
                    other.shown()
                ),
                Some(format!(
                    "write a number from 1 to {TIMEOUT_MAX_SECONDS}, e.g. `{key}: {default}`"
                )),
            ),
        }
        default
    };
    ConnectionTracking {
        tcp_idle_seconds: timeout(
            "tcp_idle_seconds",
            &raw.tcp_idle_seconds,
            default.tcp_idle_seconds,
        ),
        tcp_closing_seconds: timeout(
            "tcp_closing_seconds",
            &raw.tcp_closing_seconds,
            default.tcp_closing_seconds,
        ),
        udp_idle_seconds: timeout(
            "udp_idle_seconds",
            &raw.udp_idle_seconds,
            default.udp_idle_seconds,
        ),
        icmp_idle_seconds: timeout(
            "icmp_idle_seconds",
            &raw.icmp_idle_seconds,
            default.icmp_idle_seconds,
        ),
    }
}
