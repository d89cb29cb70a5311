//! Compiling a validated policy and the host's live links into the entries of one
//! policy generation of the kernel maps. Pure: no kernel access, unit-tested.

use std::fmt;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use isolator_common::{
    GENERATION_PREFIX_BITS, Ipv4PrefixKey, Ipv6PrefixKey, SegmentInfo, SegmentKey, VifInfo, VifKey,
    limits,
};

use crate::policy::Policy;

/// A network interface of the host, as netlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
}

/// A segment with the numeric ids the kernel maps use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRef {
    pub id: u32,
    pub tenant_id: u32,
    pub tenant: String,
    pub name: String,
}

/// A host interface that the policy manages, with the segment it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedVif {
    pub name: String,
    pub ifindex: u32,
    pub segment: u32,
}

/// Everything one policy generation puts into the kernel, plus the names metrics need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Indexed by segment id.
    pub segments: Vec<SegmentRef>,
    /// Sorted by ifindex.
    pub vifs: Vec<ManagedVif>,
    pub v4: Vec<(Ipv4Net, u32)>,
    pub v6: Vec<(Ipv6Net, u32)>,
}

/// Why a policy cannot be put into the kernel maps as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// More objects than the kernel maps can hold in one generation.
    TooMany {
        what: &'static str,
        count: usize,
        limit: u32,
    },
    /// Two segments claim the same link (validation rules this out; kept as a guard).
    AmbiguousLink {
        link: String,
        first: String,
        second: String,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::TooMany { what, count, limit } => write!(
                f,
                "the policy needs {count} {what}, but the kernel maps hold at most {limit}; \
                 split the host's policy or raise the limit in isolator-common"
            ),
            PlanError::AmbiguousLink {
                link,
                first,
                second,
            } => write!(
                f,
                "interface {link:?} is matched by segments {first} and {second}; \
                 make the interface patterns disjoint"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

impl Plan {
    /// Numbers the policy's segments and assigns each link the policy matches to its
    /// segment. Links that no pattern matches are not managed.
    pub fn new(policy: &Policy, links: &[Link]) -> Result<Plan, PlanError> {
        let mut plan = Plan::default();
        // Which segment (id) claims each pattern, in policy order.
        let mut patterns = Vec::new();
        for (tenant_id, tenant) in policy.tenants.iter().enumerate() {
            for segment in &tenant.segments {
                let id = plan.segments.len() as u32;
                plan.segments.push(SegmentRef {
                    id,
                    tenant_id: tenant_id as u32,
                    tenant: tenant.name.clone(),
                    name: segment.name.clone(),
                });
                for pattern in &segment.interfaces {
                    patterns.push((pattern, id));
                }
                for prefix in &segment.prefixes {
                    match prefix {
                        IpNet::V4(p) => plan.v4.push((*p, id)),
                        IpNet::V6(p) => plan.v6.push((*p, id)),
                    }
                }
            }
        }

        let mut links: Vec<&Link> = links.iter().collect();
        links.sort_by_key(|l| l.ifindex);
        for link in links {
            let mut owner: Option<u32> = None;
            for (pattern, id) in &patterns {
                if !pattern.matches(&link.name) {
                    continue;
                }
                match owner {
                    Some(first) if first != *id => {
                        return Err(PlanError::AmbiguousLink {
                            link: link.name.clone(),
                            first: plan.segment_label(first),
                            second: plan.segment_label(*id),
                        });
                    }
                    _ => owner = Some(*id),
                }
            }
            if let Some(segment) = owner {
                plan.vifs.push(ManagedVif {
                    name: link.name.clone(),
                    ifindex: link.ifindex,
                    segment,
                });
            }
        }

        check_limit("segments", plan.segments.len(), limits::MAX_SEGMENTS)?;
        check_limit("interfaces", plan.vifs.len(), limits::MAX_VIFS)?;
        check_limit("IPv4 prefixes", plan.v4.len(), limits::MAX_PREFIXES)?;
        check_limit("IPv6 prefixes", plan.v6.len(), limits::MAX_PREFIXES)?;
        Ok(plan)
    }

    /// `tenant/segment` of a segment id.
    pub fn segment_label(&self, id: u32) -> String {
        match self.segments.get(id as usize) {
            Some(s) => format!("{}/{}", s.tenant, s.name),
            None => format!("#{id}"),
        }
    }

    /// Entries of the `VIFS` map for `generation`.
    pub fn vif_entries(&self, generation: u32) -> Vec<(VifKey, VifInfo)> {
        self.vifs
            .iter()
            .map(|v| {
                (
                    VifKey {
                        generation,
                        ifindex: v.ifindex,
                    },
                    VifInfo {
                        segment: v.segment,
                        flags: 0,
                    },
                )
            })
            .collect()
    }

    /// Entries of the `SEGMENTS` map for `generation`.
    pub fn segment_entries(&self, generation: u32) -> Vec<(SegmentKey, SegmentInfo)> {
        self.segments
            .iter()
            .map(|s| {
                (
                    SegmentKey {
                        generation,
                        segment: s.id,
                    },
                    SegmentInfo {
                        tenant: s.tenant_id,
                        flags: 0,
                    },
                )
            })
            .collect()
    }

    /// Entries of the `PREFIXES_V4` trie for `generation`: (trie prefix length, key, segment).
    pub fn v4_entries(&self, generation: u32) -> Vec<(u32, Ipv4PrefixKey, u32)> {
        self.v4
            .iter()
            .map(|(net, id)| {
                (
                    GENERATION_PREFIX_BITS + u32::from(net.prefix_len()),
                    Ipv4PrefixKey {
                        generation: generation.to_be_bytes(),
                        addr: net.network().octets(),
                    },
                    *id,
                )
            })
            .collect()
    }

    /// Entries of the `PREFIXES_V6` trie for `generation`.
    pub fn v6_entries(&self, generation: u32) -> Vec<(u32, Ipv6PrefixKey, u32)> {
        self.v6
            .iter()
            .map(|(net, id)| {
                (
                    GENERATION_PREFIX_BITS + u32::from(net.prefix_len()),
                    Ipv6PrefixKey {
                        generation: generation.to_be_bytes(),
                        addr: net.network().octets(),
                    },
                    *id,
                )
            })
            .collect()
    }
}

fn check_limit(what: &'static str, count: usize, limit: u32) -> Result<(), PlanError> {
    if count > limit as usize {
        return Err(PlanError::TooMany { what, count, limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    const POLICY: &str = r#"
version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: ["10.1.1.0/24", "fd00:1:1::/64"]
      - name: db
        interfaces: ["vacme-db1"]
        prefixes: ["10.1.2.0/24"]
  - name: globex
    segments:
      - name: web
        interfaces: ["vglobex-web?"]
        prefixes: ["10.2.1.0/24", "fd00:2:1::/64"]
"#;

    fn links(names: &[(&str, u32)]) -> Vec<Link> {
        names
            .iter()
            .map(|(n, i)| Link {
                name: n.to_string(),
                ifindex: *i,
            })
            .collect()
    }

    fn plan(links_: &[(&str, u32)]) -> Plan {
        let policy = policy::parse(POLICY, "test.yaml").expect("test policy is valid");
        Plan::new(&policy, &links(links_)).expect("plan")
    }

    #[test]
    fn segments_are_numbered_in_policy_order_with_their_tenants() {
        let plan = plan(&[]);
        let got: Vec<(u32, u32, &str, &str)> = plan
            .segments
            .iter()
            .map(|s| (s.id, s.tenant_id, s.tenant.as_str(), s.name.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0, "acme", "web"),
                (1, 0, "acme", "db"),
                (2, 1, "globex", "web")
            ]
        );
        assert_eq!(plan.segment_label(2), "globex/web");
    }

    #[test]
    fn links_are_assigned_by_exact_name_and_glob_and_others_ignored() {
        let plan = plan(&[
            ("lo", 1),
            ("eth0", 2),
            ("vacme-web1", 7),
            ("vacme-web22", 5),
            ("vacme-db1", 6),
            ("vacme-db2", 9),
            ("vglobex-web1", 8),
            ("vglobex-web12", 10),
        ]);
        let got: Vec<(&str, u32, u32)> = plan
            .vifs
            .iter()
            .map(|v| (v.name.as_str(), v.ifindex, v.segment))
            .collect();
        assert_eq!(
            got,
            vec![
                ("vacme-web22", 5, 0),
                ("vacme-db1", 6, 1),
                ("vacme-web1", 7, 0),
                ("vglobex-web1", 8, 2),
            ]
        );
    }

    #[test]
    fn map_entries_carry_the_generation() {
        let plan = plan(&[("vacme-db1", 6)]);
        assert_eq!(
            plan.vif_entries(1),
            vec![(
                VifKey {
                    generation: 1,
                    ifindex: 6
                },
                VifInfo {
                    segment: 1,
                    flags: 0
                }
            )]
        );
        assert_eq!(
            plan.segment_entries(0)[2],
            (
                SegmentKey {
                    generation: 0,
                    segment: 2
                },
                SegmentInfo {
                    tenant: 1,
                    flags: 0
                }
            )
        );
        assert_eq!(
            plan.v4_entries(1),
            vec![
                (
                    56,
                    Ipv4PrefixKey {
                        generation: [0, 0, 0, 1],
                        addr: [10, 1, 1, 0]
                    },
                    0
                ),
                (
                    56,
                    Ipv4PrefixKey {
                        generation: [0, 0, 0, 1],
                        addr: [10, 1, 2, 0]
                    },
                    1
                ),
                (
                    56,
                    Ipv4PrefixKey {
                        generation: [0, 0, 0, 1],
                        addr: [10, 2, 1, 0]
                    },
                    2
                ),
            ]
        );
        let v6 = plan.v6_entries(0);
        assert_eq!(v6.len(), 2);
        assert_eq!(v6[1].0, 32 + 64);
        assert_eq!(&v6[1].1.addr[..6], &[0xfd, 0, 0, 2, 0, 1]);
        assert_eq!(v6[1].2, 2);
    }

    #[test]
    fn too_many_objects_is_an_error_not_a_truncation() {
        let err = check_limit("IPv4 prefixes", 20, 10).unwrap_err();
        assert_eq!(
            err,
            PlanError::TooMany {
                what: "IPv4 prefixes",
                count: 20,
                limit: 10
            }
        );
        assert!(err.to_string().contains("at most 10"));
        assert!(check_limit("x", 10, 10).is_ok());
    }
}
