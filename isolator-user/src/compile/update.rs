//! [`Plan::update`]: the plan of a policy worked out from the plan of the policy before
//! it, where the two differ in a few tenants (what a reload through the tenant cache
//! gives: the tenants whose text did not change are the same `Arc`s).
//!
//! The tenants that changed are a window of the tenant list (what lies between what the
//! two lists have in common at the start and at the end); their entries are a window of
//! each of the plan's per-tenant lists ([`Plan::tenant_ends`]). The new plan is the old
//! one's lists with those windows replaced by the changed tenants' entries (made as
//! [`Plan::new`] makes them), its flows those of the other tenants with the changed
//! tenants' in place of theirs, and its links as before but for those the changed
//! segments claim or claimed. Segment ids follow from names alone
//! ([`super::stable_ids`]): they are worked out again, and where one of a tenant that did
//! not change is not as it was, or anything else this does not follow changed, the plan
//! is made whole.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Claims, HostView, Link, Plan, PlanError, Quarantine, stable_ids};
use crate::policy::{Policy, Service};

/// A hash map with a fast hash: the keys are the policy's own.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// More tenants changed than this share (1/n) of the policy's: made whole.
const WHOLE_ABOVE: usize = 4;

impl Plan {
    /// [`Plan::new`] of `policy` and `host`, worked out from `before`, the plan of
    /// `before_policy` and the same `host`, where the two policies differ in a few
    /// tenants only. The result is the same as [`Plan::new`]'s (a property test holds it
    /// to that), errors included: where this does not follow the change, or the change
    /// is one that [`Plan::new`] refuses, [`Plan::new`] answers.
    pub fn update(
        before: &Plan,
        before_policy: &Policy,
        policy: &Policy,
        host: &HostView,
    ) -> Result<Plan, PlanError> {
        match follow(before, before_policy, policy, host) {
            Some(plan) => Ok(plan),
            None => Plan::new(policy, host),
        }
    }
}

impl Plan {
    /// Appends to each per-tenant list (numbered as in [`Plan::tenant_ends`]) the part
    /// `range(list)` of `before`'s, with room for `room(list)` entries in all.
    fn extend_lists(
        &mut self,
        before: &Plan,
        range: impl Fn(usize) -> std::ops::Range<usize>,
        room: impl Fn(usize) -> usize,
    ) {
        fn extend<T: Clone>(list: &mut Vec<T>, from: &[T], room: usize) {
            list.reserve(room.saturating_sub(list.len()));
            list.extend_from_slice(from);
        }
        extend(&mut self.segments, &before.segments[range(0)], room(0));
        extend(&mut self.v4, &before.v4[range(1)], room(1));
        extend(&mut self.v6, &before.v6[range(2)], room(2));
        extend(&mut self.exposed_v4, &before.exposed_v4[range(3)], room(3));
        extend(&mut self.exposed_v6, &before.exposed_v6[range(4)], room(4));
        extend(&mut self.gateways, &before.gateways[range(5)], room(5));
    }
}

fn follow(before: &Plan, before_policy: &Policy, policy: &Policy, host: &HostView) -> Option<Plan> {
    if before.tenant_ends.len() != before_policy.tenants.len()
        || before_policy.mode != policy.mode
        || before_policy.management != policy.management
        || before_policy.connection_tracking != policy.connection_tracking
        || before_policy.vif_names != policy.vif_names
    {
        return None;
    }
    let (start, was, now) =
        crate::encode::window_by(&before_policy.tenants, &policy.tenants, Arc::ptr_eq);
    if (was.len() + now.len()) * WHOLE_ABOVE > policy.tenants.len().max(8) {
        return None;
    }
    let after = start + now.len();
    // Where the changed tenants' entries are in each list, before.
    let from = match start {
        0 => [0; 6],
        _ => before.tenant_ends[start - 1],
    };
    let to = match was.len() {
        0 => from,
        n => before.tenant_ends[start + n - 1],
    };
    let [seg_from, seg_to] = [from[0] as usize, to[0] as usize];

    // The ids (a function of the names alone, `stable_ids`): those of the tenants that
    // did not change must be as they were. Tenant ids are worked out again. The changed
    // segments' ids are found alone where the change moves no other id: no id went past
    // the top of the space; a segment that goes frees its id, which no segment that stays
    // wanted (the one on the next id up, past those that go, has its name's own); a
    // segment that comes takes its name's hash, which is free. Otherwise every segment id
    // is worked out again.
    let tenant_ids = stable_ids(policy.tenants.iter().map(|t| [t.name.as_str(), ""]));
    let new_segments: usize = now.iter().map(|t| t.segments.len()).sum();
    let seg_after = seg_from + new_segments;
    let tail = before.segments.len() - seg_to;
    let going = seg_from..seg_to;
    let own = || -> Option<Vec<u32>> {
        for s in &before.segments[going.clone()] {
            let mut next = s.id.checked_add(1)?;
            while let Some(at) = before.position(next) {
                if going.contains(&at) {
                    next = next.checked_add(1)?;
                    continue;
                }
                let stays = &before.segments[at];
                if stays.id != super::name_id([&stays.tenant, &stays.name]) {
                    return None;
                }
                break;
            }
        }
        let mut ids = Vec::with_capacity(seg_after + tail);
        ids.extend(before.segments[..seg_from].iter().map(|s| s.id));
        let mut fresh: Map<u32, ()> = Map::default();
        for tenant in now {
            for segment in &tenant.segments {
                let id = super::name_id([&tenant.name, &segment.name]);
                let taken = before.position(id).is_some_and(|at| !going.contains(&at));
                if taken || fresh.insert(id, ()).is_some() {
                    return None;
                }
                ids.push(id);
            }
        }
        ids.extend(before.segments[seg_to..].iter().map(|s| s.id));
        Some(ids)
    };
    let (segment_ids, wrapped) = match (!before.segment_ids_wrapped).then(own).flatten() {
        Some(ids) => (ids, false),
        None => super::stable_ids_checked(policy.tenants.iter().flat_map(|t| {
            t.segments
                .iter()
                .map(|s| [t.name.as_str(), s.name.as_str()])
        })),
    };
    let mut tenant_of_segment = Vec::with_capacity(segment_ids.len());
    for (tenant, &id) in policy.tenants.iter().zip(&tenant_ids) {
        tenant_of_segment.extend(std::iter::repeat_n(id, tenant.segments.len()));
    }
    let same = |old: &[super::SegmentRef], ids: &[u32], tenants: &[u32]| {
        old.iter()
            .zip(ids.iter().zip(tenants))
            .all(|(s, (&id, &tenant))| s.id == id && s.tenant_id == tenant)
    };
    if !same(
        &before.segments[..seg_from],
        &segment_ids[..seg_from],
        &tenant_of_segment[..seg_from],
    ) || !same(
        &before.segments[seg_to..],
        &segment_ids[seg_after..],
        &tenant_of_segment[seg_after..],
    ) {
        return None;
    }

    // The per-tenant lists: what did not change copied, the changed tenants' made anew.
    let mut plan = Plan {
        settings: before.settings,
        segment_ids_wrapped: wrapped,
        management_v4: before.management_v4.clone(),
        management_v6: before.management_v6.clone(),
        host_addresses: before.host_addresses.clone(),
        ..Plan::default()
    };
    let lengths = before.ends();
    plan.extend_lists(
        before,
        |list| 0..from[list] as usize,
        |list| lengths[list] as usize + 1024,
    );
    plan.tenant_ends.reserve(policy.tenants.len());
    plan.tenant_ends
        .extend_from_slice(&before.tenant_ends[..start]);
    let mut next_id = seg_from;
    for (tenant, &tenant_id) in now.iter().zip(&tenant_ids[start..after]) {
        let ids = &segment_ids[next_id..next_id + tenant.segments.len()];
        next_id += tenant.segments.len();
        plan.push_tenant(tenant, tenant_id, ids).ok()?;
    }
    let moved = plan.ends();
    plan.extend_lists(
        before,
        |list| to[list] as usize..lengths[list] as usize,
        |_| 0,
    );
    for ends in &before.tenant_ends[start + was.len()..] {
        plan.tenant_ends
            .push(std::array::from_fn(|i| ends[i] - to[i] + moved[i]));
    }
    plan.index_segments();

    // The flows: the other tenants' as they were (their ends' ids are as they were),
    // the changed tenants' made anew, in pair order.
    let gone: Map<u32, ()> = before.segments[seg_from..seg_to]
        .iter()
        .map(|s| (s.id, ()))
        .collect();
    let came: Map<(&str, &str), u32> = plan.segments[seg_from..seg_after]
        .iter()
        .map(|s| ((&*s.tenant, &*s.name), s.id))
        .collect();
    // A flow of another tenant to a changed segment: that segment must still be there,
    // under the same name and id.
    let kept: Vec<&super::Flow> = before
        .flows
        .iter()
        .filter(|((from, _), _)| !gone.contains_key(from))
        .collect();
    for ((_, to), _) in &kept {
        if let Some(at) = before
            .position(*to)
            .filter(|at| (seg_from..seg_to).contains(at))
        {
            let old = &before.segments[at];
            if came.get(&(&*old.tenant, &*old.name)) != Some(to) {
                return None;
            }
        }
    }
    // The changed tenants' flows, their ends found among the changed segments, or
    // among the others by their ids (a name's id is its hash unless hashes collide:
    // a name not found where its hash says is left to `Plan::new`).
    let id_of = |tenant: &str, segment: &str| -> Option<u32> {
        if let Some(&id) = came.get(&(tenant, segment)) {
            return Some(id);
        }
        let id = stable_ids(std::iter::once([tenant, segment]))[0];
        let at = plan.position(id)?;
        let s = &plan.segments[at];
        (&*s.tenant == tenant && &*s.name == segment && !(seg_from..seg_after).contains(&at))
            .then_some(id)
    };
    let mut flows: Vec<((u32, u32), Service)> = Vec::new();
    for tenant in now.iter() {
        for flow in &tenant.flows {
            let from = id_of(&tenant.name, &flow.from)?;
            let to = id_of(&flow.to.tenant, &flow.to.segment)?;
            flows.push(((from, to), flow.service));
        }
    }
    flows.sort_by_key(|(pair, _)| *pair);
    let fresh = plan.flow_sets(&flows).ok()?;
    // Both sorted, and no pair in both (a fresh pair's first end is a changed segment).
    let mut merged = Vec::with_capacity(kept.len() + fresh.len());
    let mut fresh = fresh.into_iter().peekable();
    for &&(pair, set) in &kept {
        while let Some(new) = fresh.next_if(|(p, _)| *p < pair) {
            merged.push(new);
        }
        merged.push((pair, set));
    }
    merged.extend(fresh);
    plan.flows = merged;
    plan.neighbours = super::neighbours(&plan.flows);
    // The segments whose neighbours may have changed: the changed ones, and the ends of
    // the flows that went or came.
    let mut touched: Vec<u32> = plan.segments[seg_from..seg_after]
        .iter()
        .map(|s| s.id)
        .collect();
    for ((a, b), _) in before
        .flows
        .iter()
        .filter(|((a, _), _)| gone.contains_key(a))
    {
        touched.extend([*a, *b]);
    }
    for ((a, b), _) in &flows {
        touched.extend([*a, *b]);
    }
    touched.sort_unstable();
    touched.dedup();
    for id in touched {
        if let Some(at) = plan.position(id) {
            plan.mark_foreign_neighbours(at);
        }
    }

    // The changed segments, before and after, with their ids.
    let went: Vec<(u32, &crate::policy::Segment)> = before.segments[seg_from..seg_to]
        .iter()
        .map(|s| s.id)
        .zip(was.iter().flat_map(|t| &t.segments))
        .collect();
    let came: Vec<(u32, &crate::policy::Segment)> = segment_ids[seg_from..seg_after]
        .iter()
        .copied()
        .zip(now.iter().flat_map(|t| &t.segments))
        .collect();
    links(&mut plan, before, policy, host, &went, &came)?;
    plan.check().ok()?;
    Some(plan)
}

/// The host's links in `plan`: as in `before` but for those the changed segments claim
/// or claimed (as a vif or an uplink), placed again. `went` and `came` are the changed
/// segments before and after, with their ids. `None` where that would need what
/// `before` does not keep (the uplinks of a link that was not the host's own) or two
/// segments claim a link (an error [`Plan::new`] reports).
fn links(
    plan: &mut Plan,
    before: &Plan,
    policy: &Policy,
    host: &HostView,
    went: &[(u32, &crate::policy::Segment)],
    came: &[(u32, &crate::policy::Segment)],
) -> Option<()> {
    let mut links: Vec<&Link> = host.links.iter().collect();
    links.sort_by_key(|l| l.ifindex);
    let (then, now) = (Claims::new(&links, went), Claims::new(&links, came));
    let gone = |segment: &u32| went.iter().any(|(id, _)| id == segment);
    for (l, link) in links.iter().enumerate() {
        let vif = before
            .vifs
            .binary_search_by_key(&link.ifindex, |v| v.ifindex);
        let quarantined = before
            .quarantined
            .binary_search_by_key(&link.ifindex, |q| q.ifindex);
        let host_link = before
            .links
            .binary_search_by_key(&link.ifindex, |h| h.ifindex);
        let mut claimers: Vec<usize> = now.interfaces[l].iter().map(|c| c.0).collect();
        claimers.dedup();
        let claimed = !then.interfaces[l].is_empty();
        if !claimed
            && claimers.is_empty()
            && then.uplinks[l].is_empty()
            && now.uplinks[l].is_empty()
        {
            // As before.
            if let Ok(at) = vif {
                plan.vifs.push(before.vifs[at].clone());
            } else if let Ok(at) = quarantined {
                plan.quarantined.push(before.quarantined[at].clone());
            } else if let Ok(at) = host_link {
                plan.links.push(before.links[at].clone());
            } else {
                return None;
            }
            continue;
        }
        // A segment that did not change claims it (it is a vif of one, or quarantined
        // for its kind and none of the changed ones claimed it): as before, unless a
        // changed one claims it too.
        let kept = match (vif, quarantined) {
            (Ok(at), _) => !gone(&before.vifs[at].segment),
            (_, Ok(at)) => {
                matches!(before.quarantined[at].why, Quarantine::UnsupportedKind(_)) && !claimed
            }
            _ => false,
        };
        if kept {
            if !claimers.is_empty() {
                return None;
            }
            match (vif, quarantined) {
                (Ok(at), _) => plan.vifs.push(before.vifs[at].clone()),
                (_, Ok(at)) => plan.quarantined.push(before.quarantined[at].clone()),
                _ => return None,
            }
            continue;
        }
        if claimers.len() > 1 {
            return None;
        }
        let owner = claimers.first().map(|&position| {
            let (_, _, entry) = now.interfaces[l][0];
            let (id, segment) = came[position];
            (id, &segment.interfaces[entry])
        });
        let uplinks = now.uplinks[l].iter().map(|&at| came[at].0);
        // The uplinks of the segments that did not change: known where it was the host's
        // own link.
        let uplink_for = match host_link {
            Ok(at) => before.links[at]
                .uplink_for
                .iter()
                .copied()
                .filter(|s| !gone(s))
                .chain(uplinks)
                .collect(),
            Err(_) if owner.is_some() => Vec::new(),
            Err(_) if policy.vif_names.iter().any(|p| p.matches(&link.name)) => Vec::new(),
            Err(_) => return None,
        };
        plan.place_link(link, owner, &policy.vif_names, uplink_for);
    }
    Some(())
}

#[cfg(test)]
mod tests;
