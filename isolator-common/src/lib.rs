//! Types shared by the kernel programs and the userspace daemon.
//!
//! Everything here is `#[repr(C)]`, made of plain integers and byte arrays, with
//! explicit padding, so that both sides agree on the bytes of every map key and value.
//! The map layout and the all-or-nothing policy swap are described in `docs/design.md`.
#![no_std]

/// Names of the maps in the eBPF object (userspace looks them up by these names).
pub mod maps {
    /// `Array<u32>` of one entry: the active policy generation (0 or 1).
    pub const CONFIG: &str = "CONFIG";
    /// `HashMap<VifKey, VifInfo>`: which segment a vif (by ifindex) belongs to.
    pub const VIFS: &str = "VIFS";
    /// `HashMap<SegmentKey, SegmentInfo>`: which tenant a segment belongs to.
    pub const SEGMENTS: &str = "SEGMENTS";
    /// `LpmTrie<Ipv4PrefixKey, u32>`: IPv4 prefix -> segment id.
    pub const PREFIXES_V4: &str = "PREFIXES_V4";
    /// `LpmTrie<Ipv6PrefixKey, u32>`: IPv6 prefix -> segment id.
    pub const PREFIXES_V6: &str = "PREFIXES_V6";
    /// `PerCpuHashMap<CounterKey, Counter>`: packets and bytes per (vif, direction, verdict).
    pub const COUNTERS: &str = "COUNTERS";
}

/// Program names in the eBPF object.
pub mod programs {
    /// XDP program attached to the host side of each vif (direction ingress).
    pub const XDP_INGRESS: &str = "isolator_ingress";
}

/// Capacity of the maps. A generation-keyed map holds two generations at once during a
/// swap, so its capacity is twice the number of objects a single policy may hold.
pub mod limits {
    /// Vifs in one policy generation.
    pub const MAX_VIFS: u32 = 8192;
    /// Segments in one policy generation.
    pub const MAX_SEGMENTS: u32 = 8192;
    /// Prefixes per address family in one policy generation.
    pub const MAX_PREFIXES: u32 = 16384;
    /// Distinct (vif, direction, verdict) counter keys.
    pub const MAX_COUNTERS: u32 = 65536;
}

/// Direction of a packet relative to the VM.
pub mod direction {
    /// From the VM into the host (XDP on the vif).
    pub const INGRESS: u8 = 0;
    /// From the host to the VM (TC egress on the vif).
    pub const EGRESS: u8 = 1;

    /// Label value for a direction, as exported in metrics.
    pub const fn name(direction: u8) -> Option<&'static str> {
        match direction {
            INGRESS => Some("ingress"),
            EGRESS => Some("egress"),
            _ => None,
        }
    }
}

/// What the program decided: `PASS`, or the reason a packet was dropped.
///
/// This is the one definition of the drop reasons; the kernel writes these codes into
/// [`CounterKey::verdict`], userspace turns them into the `reason` label with
/// [`verdict::name`], and `docs/metrics.md` documents each one.
pub mod verdict {
    /// The packet was passed.
    pub const PASS: u8 = 0;
    /// A header could not be parsed (truncated or inconsistent).
    pub const MALFORMED: u8 = 1;
    /// Addressed to another segment of the sender's tenant.
    pub const CROSS_SEGMENT: u8 = 2;
    /// Addressed to a segment of another tenant.
    pub const CROSS_TENANT: u8 = 3;
    /// The policy has no complete entry for the sending vif or for a segment it needs
    /// (fail closed: the kernel never guesses).
    pub const NO_POLICY: u8 = 4;
    /// An EtherType the enforcer does not judge (anything but IPv4, IPv6 and ARP).
    pub const UNKNOWN_ETHERTYPE: u8 = 5;

    /// Every drop reason, in code order: `(code, label, meaning)`.
    pub const DROP_REASONS: [(u8, &str, &str); 5] = [
        (
            MALFORMED,
            "malformed",
            "a header could not be parsed (truncated or inconsistent)",
        ),
        (
            CROSS_SEGMENT,
            "cross_segment",
            "addressed to another segment of the same tenant",
        ),
        (
            CROSS_TENANT,
            "cross_tenant",
            "addressed to a segment of another tenant",
        ),
        (
            NO_POLICY,
            "no_policy",
            "no complete policy entry for the vif or a segment it needs (fail closed)",
        ),
        (
            UNKNOWN_ETHERTYPE,
            "unknown_ethertype",
            "an EtherType other than IPv4, IPv6 and ARP",
        ),
    ];

    /// The `reason` label of a drop code; `None` for `PASS` and unknown codes.
    pub fn name(code: u8) -> Option<&'static str> {
        let mut i = 0;
        while i < DROP_REASONS.len() {
            if DROP_REASONS[i].0 == code {
                return Some(DROP_REASONS[i].1);
            }
            i += 1;
        }
        None
    }
}

/// Key of the `VIFS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VifKey {
    /// Policy generation this entry belongs to.
    pub generation: u32,
    pub ifindex: u32,
}

/// Value of the `VIFS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VifInfo {
    pub segment: u32,
    /// Reserved for per-vif options; zero today.
    pub flags: u32,
}

/// Key of the `SEGMENTS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentKey {
    pub generation: u32,
    pub segment: u32,
}

/// Value of the `SEGMENTS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub tenant: u32,
    /// Reserved for per-segment options; zero today.
    pub flags: u32,
}

/// Data part of an IPv4 LPM key: the generation is the first 32 bits of every prefix,
/// so the trie's prefix length is `32 + prefix length of the address`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4PrefixKey {
    /// Generation, in big-endian byte order.
    pub generation: [u8; 4],
    /// Address, network byte order.
    pub addr: [u8; 4],
}

/// Data part of an IPv6 LPM key (see [`Ipv4PrefixKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6PrefixKey {
    pub generation: [u8; 4],
    pub addr: [u8; 16],
}

/// Bits of the generation that lead every LPM key.
pub const GENERATION_PREFIX_BITS: u32 = 32;

/// Key of the `COUNTERS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    pub ifindex: u32,
    /// One of [`direction`].
    pub direction: u8,
    /// One of [`verdict`].
    pub verdict: u8,
    pub _pad: [u8; 2],
}

/// Value of the `COUNTERS` map (one per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C) structs of integers and byte arrays without
    // implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for VifKey {}
    unsafe impl aya::Pod for VifInfo {}
    unsafe impl aya::Pod for SegmentKey {}
    unsafe impl aya::Pod for SegmentInfo {}
    unsafe impl aya::Pod for Ipv4PrefixKey {}
    unsafe impl aya::Pod for Ipv6PrefixKey {}
    unsafe impl aya::Pod for CounterKey {}
    unsafe impl aya::Pod for Counter {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<VifKey>(), 8);
        assert_eq!(size_of::<VifInfo>(), 8);
        assert_eq!(size_of::<SegmentKey>(), 8);
        assert_eq!(size_of::<SegmentInfo>(), 8);
        assert_eq!(size_of::<Ipv4PrefixKey>(), 8);
        assert_eq!(size_of::<Ipv6PrefixKey>(), 20);
        assert_eq!(size_of::<CounterKey>(), 8);
        assert_eq!(size_of::<Counter>(), 16);
    }

    #[test]
    fn reason_codes_are_unique_and_named() {
        for (i, (code, label, _)) in verdict::DROP_REASONS.iter().enumerate() {
            assert_ne!(*code, verdict::PASS);
            assert_eq!(verdict::name(*code), Some(*label));
            for (other, _, _) in &verdict::DROP_REASONS[i + 1..] {
                assert_ne!(code, other);
            }
            assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        assert_eq!(verdict::name(verdict::PASS), None);
    }
}
