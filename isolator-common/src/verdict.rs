//! What a program decided about a frame: [`Verdict::Pass`], or the reason it was dropped.
//!
//! This is the one list of drop reasons. The kernel writes a verdict's code into
//! [`crate::CounterKey::verdict`], userspace turns it into the `reason` label with
//! [`Verdict::label`], and `docs/metrics.md` documents each one (a test keeps the
//! document's table equal to this list).

macro_rules! verdicts {
    (
        $(
            $(#[$doc:meta])*
            $variant:ident / $constant:ident = $code:literal, $label:literal, audit: $audit:literal,
            $meaning:literal;
        )*
    ) => {
        /// A program's decision about one frame. `#[repr(u8)]`: its code is what the
        /// kernel stores in counter keys.
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Verdict {
            /// The frame passes.
            Pass = 0,
            $( $(#[$doc])* $variant = $code, )*
        }

        impl Verdict {
            /// Every drop reason, in code order.
            pub const DROPS: &'static [Verdict] = &[ $( Verdict::$variant, )* ];

            /// The verdict with `code`, if there is one.
            #[inline(always)]
            pub const fn from_code(code: u8) -> Option<Verdict> {
                match code {
                    0 => Some(Verdict::Pass),
                    $( $code => Some(Verdict::$variant), )*
                    _ => None,
                }
            }

            /// The `reason` label of a drop (`None` for [`Verdict::Pass`]).
            pub const fn label(self) -> Option<&'static str> {
                match self {
                    Verdict::Pass => None,
                    $( Verdict::$variant => Some($label), )*
                }
            }

            /// What a drop for this reason means (for documentation and `explain`).
            pub const fn meaning(self) -> &'static str {
                match self {
                    Verdict::Pass => "the frame passed",
                    $( Verdict::$variant => $meaning, )*
                }
            }

            /// Whether a segment in audit mode counts this reason and passes the frame.
            /// Malformed frames, fail-closed drops, management protection and the guards
            /// are always enforced.
            #[inline(always)]
            pub const fn auditable(self) -> bool {
                match self {
                    Verdict::Pass => false,
                    $( Verdict::$variant => $audit, )*
                }
            }
        }

        /// The frame passed (the code of [`Verdict::Pass`]).
        pub const PASS: u8 = Verdict::Pass as u8;
        $(
            #[doc = concat!("The code of [`Verdict::", stringify!($variant), "`]: `", $label, "`.")]
            pub const $constant: u8 = Verdict::$variant as u8;
        )*

        /// Every drop reason: `(code, label, meaning)`, in code order.
        pub const DROP_REASONS: &[(u8, &str, &str)] = &[ $( ($code, $label, $meaning), )* ];
    };
}

verdicts! {
    /// A header could not be parsed (truncated or inconsistent).
    Malformed / MALFORMED = 1, "malformed", audit: false,
        "a header could not be parsed (truncated or inconsistent)";
    /// Addressed to another segment of the sender's tenant.
    CrossSegment / CROSS_SEGMENT = 2, "cross_segment", audit: true,
        "addressed to another segment of the same tenant";
    /// Addressed to a segment of another tenant.
    CrossTenant / CROSS_TENANT = 3, "cross_tenant", audit: true,
        "addressed to a segment of another tenant";
    /// The policy has no complete entry for the vif or a segment it needs (fail closed).
    NoPolicy / NO_POLICY = 4, "no_policy", audit: false,
        "no complete policy entry for the vif or a segment it needs (fail closed)";
    /// An EtherType the enforcer does not judge.
    UnknownEthertype / UNKNOWN_ETHERTYPE = 5, "unknown_ethertype", audit: false,
        "an EtherType other than IPv4, IPv6 and ARP";
    /// Addressed to a management prefix (never audited).
    Management / MANAGEMENT = 6, "management", audit: false,
        "addressed to a management prefix";
    /// Outside every segment from a segment with `egress: deny`.
    EgressDenied / EGRESS_DENIED = 7, "egress_denied", audit: true,
        "addressed outside every segment from a segment with egress: deny";
    /// From outside every segment to something the segment does not expose.
    NotExposed / NOT_EXPOSED = 8, "not_exposed", audit: true,
        "from outside every segment to an endpoint the segment does not expose";
    /// A source MAC other than the vif's declared one (or one another vif declared).
    SpoofedMac / SPOOFED_MAC = 9, "spoofed_mac", audit: false,
        "sent with a source MAC other than the interface's declared one";
    /// A source address the VM does not own.
    SpoofedIp / SPOOFED_IP = 10, "spoofed_ip", audit: false,
        "sent from a source address the VM does not own";
    /// ARP whose sender address or MAC the VM does not own.
    ArpSpoof / ARP_SPOOF = 11, "arp_spoof", audit: false,
        "ARP with a sender address or sender MAC the VM does not own";
    /// Neighbour discovery claiming what the VM does not own.
    NdSpoof / ND_SPOOF = 12, "nd_spoof", audit: false,
        "neighbour discovery claiming an address or link-layer address the VM does not own";
    /// A router advertisement or redirect from a VM whose segment does not allow them.
    RaGuard / RA_GUARD = 13, "ra_guard", audit: false,
        "a router advertisement or redirect from a VM";
    /// A DHCP or DHCPv6 server message from a VM whose segment does not allow them.
    DhcpGuard / DHCP_GUARD = 14, "dhcp_guard", audit: false,
        "a DHCP or DHCPv6 server message from a VM";
    /// A VLAN tag the interface may not use, or stacked tags.
    Vlan / VLAN = 15, "vlan", audit: false,
        "a VLAN tag the interface may not use, or stacked tags";
    /// IPv4 options other than a lone router alert.
    IpOptions / IP_OPTIONS = 16, "ip_options", audit: false,
        "IPv4 options other than a lone router alert";
    /// A fragment that cannot be judged.
    Fragment / FRAGMENT = 17, "fragment", audit: false,
        "a fragment whose first fragment did not pass, an overlapping fragment, or a first fragment without the whole transport header";
    /// More IPv6 extension headers than the enforcer walks.
    Ipv6Extensions / IPV6_EXTENSIONS = 18, "ipv6_extensions", audit: false,
        "more IPv6 extension headers than the enforcer walks";
    /// From or to an interface that looks like a VM's but is not enforceable as one, or
    /// delivered from a link the daemon has not classified yet (fail closed).
    UnknownInterface / UNKNOWN_INTERFACE = 19, "unknown_interface", audit: false,
        "from or to an interface the policy does not classify, whose kind is not supported, or that the daemon has not classified yet";
}

/// The `reason` label of a drop code; `None` for [`PASS`] and unknown codes.
pub const fn name(code: u8) -> Option<&'static str> {
    match Verdict::from_code(code) {
        Some(v) => v.label(),
        None => None,
    }
}

/// Whether a segment in audit mode counts drops with this code and passes the frame.
#[inline(always)]
pub const fn auditable(code: u8) -> bool {
    match Verdict::from_code(code) {
        Some(v) => v.auditable(),
        None => false,
    }
}
