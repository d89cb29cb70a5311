//! The standard lab topology shared by the tests and the demo: two tenants with two segments
//! each, all VMs on one bridge.
//!
//! | VM          | vif          | tenant | segment | IPv4        | IPv6          |
//! |-------------|--------------|--------|---------|-------------|---------------|
//! | acme-web1   | vacme-web1   | acme   | web     | 10.1.1.2/24 | fd00:1:1::2/64 |
//! | acme-web2   | vacme-web2   | acme   | web     | 10.1.1.3/24 | fd00:1:1::3/64 |
//! | acme-db1    | vacme-db1    | acme   | db      | 10.1.2.2/24 | fd00:1:2::2/64 |
//! | globex-web1 | vglobex-web1 | globex | web     | 10.2.1.2/24 | fd00:2:1::2/64 |
//! | globex-db1  | vglobex-db1  | globex | db      | 10.2.2.2/24 | fd00:2:2::2/64 |
//!
//! Every VM also has on-link routes 10.0.0.0/8 and fd00::/16, so it ARPs/solicits for every
//! other VM directly.

use std::fmt;

use anyhow::Result;

use crate::lab::{Lab, Vm};

/// A segment of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentPlan {
    pub tenant: &'static str,
    pub segment: &'static str,
    /// Tenant number (1 = acme, 2 = globex) and segment number (1 = web, 2 = db): the
    /// prefixes are 10.T.S.0/24 and fd00:T:S::/64.
    pub t: u8,
    pub s: u8,
}

impl SegmentPlan {
    pub fn v4_prefix(&self) -> String {
        format!("10.{}.{}.0/24", self.t, self.s)
    }
    pub fn v6_prefix(&self) -> String {
        format!("fd00:{}:{}::/64", self.t, self.s)
    }
    /// Glob of the vifs of this segment, e.g. `vacme-web*`.
    pub fn vif_glob(&self) -> String {
        format!("v{}-{}*", self.tenant, self.segment)
    }
}

pub const SEGMENTS: [SegmentPlan; 4] = [
    SegmentPlan {
        tenant: "acme",
        segment: "web",
        t: 1,
        s: 1,
    },
    SegmentPlan {
        tenant: "acme",
        segment: "db",
        t: 1,
        s: 2,
    },
    SegmentPlan {
        tenant: "globex",
        segment: "web",
        t: 2,
        s: 1,
    },
    SegmentPlan {
        tenant: "globex",
        segment: "db",
        t: 2,
        s: 2,
    },
];

/// A VM of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmPlan {
    pub name: &'static str,
    pub seg: SegmentPlan,
    /// Host part of its addresses (10.T.S.host, fd00:T:S::host).
    pub host: u8,
}

impl VmPlan {
    /// `v<tenant>-<segment><n>` where n = host - 1, e.g. `vacme-web1`.
    pub fn vif(&self) -> String {
        format!("v{}", self.name)
    }
    pub fn addrs(&self) -> [String; 2] {
        [
            format!("10.{}.{}.{}/24", self.seg.t, self.seg.s, self.host),
            format!("fd00:{}:{}::{:x}/64", self.seg.t, self.seg.s, self.host),
        ]
    }
}

pub const VMS: [VmPlan; 5] = [
    VmPlan {
        name: "acme-web1",
        seg: SEGMENTS[0],
        host: 2,
    },
    VmPlan {
        name: "acme-web2",
        seg: SEGMENTS[0],
        host: 3,
    },
    VmPlan {
        name: "acme-db1",
        seg: SEGMENTS[1],
        host: 2,
    },
    VmPlan {
        name: "globex-web1",
        seg: SEGMENTS[2],
        host: 2,
    },
    VmPlan {
        name: "globex-db1",
        seg: SEGMENTS[3],
        host: 2,
    },
];

/// The plan entry of VM `name`; panics if unknown.
pub fn plan(name: &str) -> VmPlan {
    *VMS.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no VM {name} in the standard topology"))
}

/// A new lab with every VM of [`VMS`].
pub fn lab(hint: &str) -> Result<Lab> {
    let mut lab = Lab::new(hint)?;
    build(&mut lab)?;
    Ok(lab)
}

/// Adds every VM of [`VMS`] to the lab.
pub fn build(lab: &mut Lab) -> Result<Vec<Vm>> {
    VMS.iter()
        .map(|p| {
            let addrs = p.addrs();
            let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            lab.add_vm(p.name, &p.vif(), &addrs)
        })
        .collect()
}

/// The policy (YAML v1) for the standard topology.
pub fn policy_yaml() -> String {
    let mut y = String::from("version: 1\ntenants:\n");
    for tenant in ["acme", "globex"] {
        y.push_str(&format!("  - name: {tenant}\n    segments:\n"));
        for s in SEGMENTS.iter().filter(|s| s.tenant == tenant) {
            y.push_str(&format!(
                "      - name: {}\n        interfaces: [\"{}\"]\n        prefixes: [\"{}\", \"{}\"]\n",
                s.segment,
                s.vif_glob(),
                s.v4_prefix(),
                s.v6_prefix()
            ));
        }
    }
    y
}

/// How two VMs relate, and so what isolator must do with traffic between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    SameSegment,
    CrossSegment,
    CrossTenant,
}

impl Relation {
    pub fn of(from: &VmPlan, to: &VmPlan) -> Relation {
        if from.seg.tenant != to.seg.tenant {
            Relation::CrossTenant
        } else if from.seg.segment != to.seg.segment {
            Relation::CrossSegment
        } else {
            Relation::SameSegment
        }
    }

    /// Whether traffic is expected to be delivered.
    pub fn allowed(&self) -> bool {
        *self == Relation::SameSegment
    }

    /// The drop reason (`isolator_common::verdict` code) isolator must count, if dropped.
    pub fn reason(&self) -> Option<u8> {
        match self {
            Relation::SameSegment => None,
            Relation::CrossSegment => Some(isolator_common::verdict::CROSS_SEGMENT),
            Relation::CrossTenant => Some(isolator_common::verdict::CROSS_TENANT),
        }
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Relation::SameSegment => "same segment",
            Relation::CrossSegment => "cross segment",
            Relation::CrossTenant => "cross tenant",
        })
    }
}
