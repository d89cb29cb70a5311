//! Sets of services (protocols and port ranges) as reachability, for comparing entries
//! of a policy ([`super::findings`]) and two policies ([`super::diff`]).
//!
//! A [`ServiceSet`] is what a list of [`Service`]s admits, whatever way it is written:
//! `tcp` and `tcp "1-65535"` are the same set, `tcp 80` and `tcp 81` are `tcp 80-81`,
//! `any` is every TCP and UDP port, ICMP and every other IP protocol.

use std::fmt;

use ipnet::IpNet;

use super::{PortRange, Protocol, Service};

/// Every TCP or UDP port a service may name.
const ALL_PORTS: (u16, u16) = (1, u16::MAX);

/// Sorted, disjoint, non-adjacent inclusive port ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct Ports(Vec<(u16, u16)>);

impl Ports {
    fn all() -> Ports {
        Ports(vec![ALL_PORTS])
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn is_all(&self) -> bool {
        self.0 == [ALL_PORTS]
    }

    fn insert(&mut self, (first, last): (u16, u16)) {
        self.0.push((first, last));
        self.0.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(self.0.len());
        for &(a, b) in &self.0 {
            match merged.last_mut() {
                Some((_, end)) if u32::from(a) <= u32::from(*end) + 1 => *end = (*end).max(b),
                _ => merged.push((a, b)),
            }
        }
        self.0 = merged;
    }

    fn union(&self, other: &Ports) -> Ports {
        let mut out = self.clone();
        for &range in &other.0 {
            out.insert(range);
        }
        out
    }

    /// The ports of `self` that `other` does not have.
    fn minus(&self, other: &Ports) -> Ports {
        let mut out = Vec::new();
        for &(first, last) in &self.0 {
            let mut from = u32::from(first);
            let last = u32::from(last);
            for &(a, b) in &other.0 {
                let (a, b) = (u32::from(a), u32::from(b));
                if b < from || a > last {
                    continue;
                }
                if a > from {
                    out.push((from, a - 1));
                }
                from = from.max(b + 1);
            }
            if from <= last {
                out.push((from, last));
            }
        }
        // Every bound comes from a u16 range and stays within it.
        Ports(out.into_iter().map(|(a, b)| (a as u16, b as u16)).collect())
    }
}

/// What a list of services admits (or, for a management prefix, protects).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ServiceSet {
    tcp: Ports,
    udp: Ports,
    icmp: bool,
    /// Every IP protocol other than TCP, UDP and ICMP (only `any` admits them).
    other: bool,
}

impl ServiceSet {
    /// Nothing.
    pub fn empty() -> ServiceSet {
        ServiceSet::default()
    }

    /// Every protocol and port (`any`).
    pub fn all() -> ServiceSet {
        ServiceSet {
            tcp: Ports::all(),
            udp: Ports::all(),
            icmp: true,
            other: true,
        }
    }

    /// What one service admits.
    pub fn of(service: Service) -> ServiceSet {
        let mut set = ServiceSet::empty();
        set.insert(service);
        set
    }

    /// What the services admit together.
    pub fn of_all<'s>(services: impl IntoIterator<Item = &'s Service>) -> ServiceSet {
        let mut set = ServiceSet::empty();
        for service in services {
            set.insert(*service);
        }
        set
    }

    /// The protection of a management prefix: its `services`, or every service when it
    /// lists none.
    pub fn protected(services: &[Service]) -> ServiceSet {
        if services.is_empty() {
            ServiceSet::all()
        } else {
            ServiceSet::of_all(services)
        }
    }

    pub fn insert(&mut self, service: Service) {
        let ports = service
            .ports
            .map_or(ALL_PORTS, |PortRange { first, last }| (first, last));
        match service.protocol {
            Protocol::Tcp => self.tcp.insert(ports),
            Protocol::Udp => self.udp.insert(ports),
            Protocol::Icmp => self.icmp = true,
            Protocol::Any => *self = ServiceSet::all(),
        }
    }

    pub fn union(&self, other: &ServiceSet) -> ServiceSet {
        ServiceSet {
            tcp: self.tcp.union(&other.tcp),
            udp: self.udp.union(&other.udp),
            icmp: self.icmp || other.icmp,
            other: self.other || other.other,
        }
    }

    /// What `self` admits and `other` does not.
    pub fn minus(&self, other: &ServiceSet) -> ServiceSet {
        ServiceSet {
            tcp: self.tcp.minus(&other.tcp),
            udp: self.udp.minus(&other.udp),
            icmp: self.icmp && !other.icmp,
            other: self.other && !other.other,
        }
    }

    /// What both admit.
    pub fn intersect(&self, other: &ServiceSet) -> ServiceSet {
        self.minus(&self.minus(other))
    }

    /// Whether `self` admits everything `other` does.
    pub fn contains(&self, other: &ServiceSet) -> bool {
        other.minus(self).is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty() && !self.icmp && !self.other
    }

    pub fn is_all(&self) -> bool {
        *self == ServiceSet::all()
    }

    /// Whether it holds every port of TCP or of UDP.
    pub fn has_all_ports(&self) -> bool {
        self.tcp.is_all() || self.udp.is_all()
    }

    /// The set as policy services, e.g. `["tcp 22", "tcp 6443-6444", "icmp"]`; `["any"]`
    /// for every service, `[]` for none. Protocols other than TCP, UDP and ICMP (which
    /// only `any` names) show as `other protocols`.
    pub fn describe(&self) -> Vec<String> {
        if self.is_all() {
            return vec!["any".to_owned()];
        }
        let mut parts = Vec::new();
        for (name, ports) in [("tcp", &self.tcp), ("udp", &self.udp)] {
            if ports.is_all() {
                parts.push(name.to_owned());
                continue;
            }
            for &(first, last) in &ports.0 {
                parts.push(format!("{name} {}", PortRange { first, last }));
            }
        }
        if self.icmp {
            parts.push("icmp".to_owned());
        }
        if self.other {
            parts.push("other protocols".to_owned());
        }
        parts
    }
}

impl fmt::Display for ServiceSet {
    /// [`ServiceSet::describe`], joined with `, `; `nothing` for the empty set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = self.describe();
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// `10.1.1.10` for a single address (a /32 or /128), else the prefix.
pub fn shown(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(protocol: Protocol, ports: Option<(u16, u16)>) -> Service {
        Service {
            protocol,
            ports: ports.map(|(a, b)| PortRange::new(a, b).unwrap()),
        }
    }

    #[test]
    fn equal_however_written() {
        let all_tcp = ServiceSet::of(svc(Protocol::Tcp, None));
        assert_eq!(
            all_tcp,
            ServiceSet::of(svc(Protocol::Tcp, Some((1, 65535))))
        );
        let split = ServiceSet::of_all(&[
            svc(Protocol::Tcp, Some((1, 100))),
            svc(Protocol::Tcp, Some((101, 65535))),
        ]);
        assert_eq!(split, all_tcp);
        assert_eq!(ServiceSet::of(Service::ANY), ServiceSet::all());
        assert_eq!(ServiceSet::protected(&[]), ServiceSet::all());
    }

    #[test]
    fn minus_and_contains() {
        let wide = ServiceSet::of(svc(Protocol::Tcp, Some((8000, 8080))));
        let narrow = ServiceSet::of(svc(Protocol::Tcp, Some((8010, 8020))));
        assert!(wide.contains(&narrow));
        assert!(!narrow.contains(&wide));
        assert_eq!(
            wide.minus(&narrow).to_string(),
            "tcp 8000-8009, tcp 8021-8080"
        );
        assert!(narrow.minus(&wide).is_empty());
        let any = ServiceSet::all();
        assert_eq!(
            any.minus(&wide).to_string(),
            "tcp 1-7999, tcp 8081-65535, udp, icmp, other protocols"
        );
        assert_eq!(ServiceSet::empty().to_string(), "nothing");
        assert!(any.has_all_ports() && !wide.has_all_ports());
    }
}
