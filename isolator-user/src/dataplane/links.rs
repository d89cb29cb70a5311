//! Attaching the programs to vifs, pinning their links, taking over a previous daemon's
//! links without a gap, and detaching.

use aya::programs::{
    TcAttachType, XdpMode,
    links::{FdLink, LinkOrder, PinnedLink},
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    xdp::XdpLink,
};
use isolator_common::programs;

use super::Dataplane;
use super::error::{DataplaneError, pin_err, prog_err};
use super::quick;
use std::os::fd::AsFd as _;

/// How an XDP program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (native XDP).
    Native,
    /// Generic (skb) mode: correct, slower; used when the driver refuses native mode.
    Generic,
    /// Taken over from a previous daemon: its links were pinned and now run this
    /// daemon's programs (the mode they were attached in is kept).
    TakenOver,
    /// Another program holds the vif's XDP hook: what the VM sends is judged on the vif's
    /// TC ingress instead (the same story), after that program; what it redirects
    /// elsewhere is not judged. Each reconcile tries XDP again.
    TcIngress,
}

impl AttachMode {
    /// How `isolator status` names it.
    pub fn label(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::TakenOver => "taken_over",
            AttachMode::TcIngress => "tc_ingress",
        }
    }
}

/// The priority of isolator's quick attachments ([`Held::Filter`]): first among the
/// classic filters of the hook.
const FILTER_PRIORITY: u16 = 1;
/// Their handle.
const FILTER_HANDLE: TcHandle = TcHandle::new(0, 0x150);

/// A link the dataplane holds: by its file descriptor alone, or pinned as well, so that
/// it outlives the daemon; or, on a TC hook of a new vif until [`Dataplane::settle`]
/// hands it to TCX, a `cls_bpf` filter.
pub(super) enum Held {
    Owned(FdLink),
    Pinned(PinnedLink),
    /// The program as a `cls_bpf` filter (direct action) on the vif's `clsact` qdisc:
    /// attached without waiting for an RCU grace period, where a TCX attachment waits for
    /// one holding the RTNL lock. No bpf_link: it outlives the daemon without a pin (the
    /// next daemon finds it by its program's name), and runs after every TCX program of
    /// the hook.
    Filter {
        program: &'static str,
        attach_type: TcAttachType,
        device: String,
    },
}

impl Held {
    /// Detaches the link (and removes its pin, or the filter).
    pub(super) fn release(self) -> std::io::Result<()> {
        match self {
            Held::Owned(link) => drop(link),
            Held::Pinned(link) => drop(link.unpin()?),
            Held::Filter {
                program,
                attach_type,
                device,
            } => remove_filters(&device, attach_type, program)?,
        }
        Ok(())
    }

    fn is_filter(&self) -> bool {
        matches!(self, Held::Filter { .. })
    }
}

/// Removes the `cls_bpf` filters running `program` from `device`'s hook; none there is no
/// error (nor is a device that is gone, which took them along).
fn remove_filters(device: &str, attach_type: TcAttachType, program: &str) -> std::io::Result<()> {
    match aya::programs::tc::qdisc_detach_program(device, attach_type, program) {
        Ok(()) => Ok(()),
        Err(TcError::IoError(e))
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENODEV) =>
        {
            Ok(())
        }
        Err(TcError::NetlinkError(e))
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// The TC programs isolator attaches, with the hook of each.
const TC_PROGRAMS: [(&str, TcAttachType); 3] = [
    (programs::TC_EGRESS, TcAttachType::Egress),
    (programs::TC_INGRESS_TAGS, TcAttachType::Ingress),
    (programs::TC_INGRESS_JUDGE, TcAttachType::Ingress),
];

pub(super) struct Attachment {
    name: String,
    /// The XDP link; `None` in [`AttachMode::TcIngress`].
    xdp: Option<Held>,
    tc: Held,
    /// The tags program's link, or in [`AttachMode::TcIngress`] the TC ingress judge's.
    tags: Held,
    mode: AttachMode,
}

impl Attachment {
    /// Whether a TC hook holds a quick attachment still ([`Held::Filter`]).
    fn quick(&self) -> bool {
        self.tc.is_filter() || self.tags.is_filter()
    }
}

impl Dataplane {
    /// Attaches the programs to a vif: XDP (ingress) in native mode, or generic mode
    /// when the driver refuses native XDP; TC on its egress; and TC on its ingress for
    /// VLAN tags carried outside the frame (both TCX). All or none: if one attachment
    /// fails, the others are undone. Links a previous daemon pinned for this vif are
    /// taken over instead: the running programs are replaced by this daemon's, atomically,
    /// so the vif is never without one.
    pub fn attach(&mut self, name: &str, ifindex: u32) -> Result<AttachMode, DataplaneError> {
        if let Some(existing) = self.attached.get(&ifindex) {
            return Ok(existing.mode);
        }
        // A vif's tables are its own now, no spare.
        self.spares.remove(&ifindex);
        self.note_counted([ifindex]);
        let old = self
            .pins
            .as_mut()
            .and_then(|p| p.left.remove(&ifindex))
            .unwrap_or_default();
        let taken_over =
            old.xdp.is_some() || old.tc.is_some() || old.tags.is_some() || old.judge.is_some();
        if !taken_over {
            return self.attach_new(name, ifindex, old, false);
        }
        // A previous daemon that stopped while handing this vif over to TCX may have left
        // its quick attachments beside the links taken over: until they are removed, the
        // vif is in `HANDOFF`, so that they judge nothing the TCX links passed.
        self.hand_over(ifindex, true)?;
        let attached = self.attach_new(name, ifindex, old, true);
        if attached.is_ok() {
            self.remove_quick_leftovers(name);
        }
        self.hand_over(ifindex, false)?;
        attached
    }

    /// [`Dataplane::attach`] for several vifs at once, the answer for each in order. While
    /// new attachments are quick ([`Dataplane::attach_quickly`]), the new vifs' TC hooks
    /// get their `cls_bpf` filters from worker threads ([`quick::attach_filters`]) while
    /// this thread attaches their XDP programs, so that the batch's requests hold several
    /// places in the RTNL lock's queue, beside the link creations of a burst, rather than
    /// one. A vif that cannot be attached that way (another program holds its XDP hook, a
    /// request failed) is attached as [`Dataplane::attach`] does, after the others.
    pub fn attach_batch(
        &mut self,
        links: &[(String, u32)],
    ) -> Vec<(u32, Result<AttachMode, DataplaneError>)> {
        let mut seen = std::collections::BTreeSet::new();
        let quick: Vec<usize> = if self.quick {
            (0..links.len())
                .filter(|&k| {
                    let ifindex = links[k].1;
                    seen.insert(ifindex)
                        && !self.attached.contains_key(&ifindex)
                        && !self
                            .pins
                            .as_ref()
                            .is_some_and(|p| p.left.contains_key(&ifindex))
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut answers: Vec<Option<Result<AttachMode, DataplaneError>>> =
            (0..links.len()).map(|_| None).collect();
        if quick.len() > 1 {
            match self.attach_quick_batch(links, &quick) {
                Ok(attached) => {
                    for (k, mode) in attached {
                        answers[k] = Some(Ok(mode));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %crate::error_chain(&e), "no batch of quick attachments: attaching one vif after another");
                }
            }
        }
        links
            .iter()
            .zip(answers)
            .map(|((name, ifindex), answer)| {
                (
                    *ifindex,
                    answer.unwrap_or_else(|| self.attach(name, *ifindex)),
                )
            })
            .collect()
    }

    /// The quick part of [`Dataplane::attach_batch`] for `links[k]`, `k` in `which`: the
    /// vifs attached, by position, with their mode. The others are left as they were
    /// (anything made for them undone).
    fn attach_quick_batch(
        &mut self,
        links: &[(String, u32)],
        which: &[usize],
    ) -> Result<Vec<(usize, AttachMode)>, DataplaneError> {
        let fd_of = |dp: &mut Dataplane, name: &'static str| -> Result<_, DataplaneError> {
            dp.classifier(name)?
                .fd()
                .and_then(|fd| fd.try_clone().map_err(Into::into))
                .map_err(prog_err(name, "duplicating the program's descriptor"))
        };
        let egress = fd_of(self, programs::TC_EGRESS)?;
        let tags = fd_of(self, programs::TC_INGRESS_TAGS)?;
        let egress_name = std::ffi::CString::new(programs::TC_EGRESS).expect("no NUL");
        let tags_name = std::ffi::CString::new(programs::TC_INGRESS_TAGS).expect("no NUL");
        let filters = [
            quick::Filter {
                program: egress.as_fd(),
                name: &egress_name,
                hook: quick::Hook::Egress,
                priority: FILTER_PRIORITY,
                handle: u32::from(FILTER_HANDLE),
            },
            quick::Filter {
                program: tags.as_fd(),
                name: &tags_name,
                hook: quick::Hook::Ingress,
                priority: FILTER_PRIORITY,
                handle: u32::from(FILTER_HANDLE),
            },
        ];
        let ifindexes: Vec<u32> = which.iter().map(|&k| links[k].1).collect();
        for &ifindex in &ifindexes {
            // A vif's tables are its own now, no spare.
            self.spares.remove(&ifindex);
        }
        self.note_counted(ifindexes.iter().copied());
        let (filtered, xdp) = std::thread::scope(|scope| {
            let filtering = scope.spawn(|| quick::attach_filters(&ifindexes, &filters));
            let xdp: Vec<_> = which
                .iter()
                .map(|&k| self.attach_xdp(&links[k].0, links[k].1))
                .collect();
            let filtered = filtering.join().unwrap_or_else(|_| {
                ifindexes
                    .iter()
                    .map(|_| Err(std::io::Error::other("the attaching thread panicked")))
                    .collect()
            });
            (filtered, xdp)
        });
        let mut attached = Vec::new();
        for ((&k, filtered), xdp) in which.iter().zip(filtered).zip(xdp) {
            let (name, ifindex) = (&links[k].0, links[k].1);
            let undo_filters = || {
                for (program, attach_type) in [
                    (programs::TC_EGRESS, TcAttachType::Egress),
                    (programs::TC_INGRESS_TAGS, TcAttachType::Ingress),
                ] {
                    let _ = remove_filters(name, attach_type, program);
                }
            };
            let (xdp, mode) = match (xdp, filtered) {
                (Ok(xdp), Ok(())) => xdp,
                (xdp, filtered) => {
                    // Another program on the XDP hook (judged at TC ingress instead), or a
                    // request that failed: attached one by one, as before.
                    if let Ok((link, _)) = xdp {
                        let _ = link.release();
                    }
                    if let Err(e) = filtered {
                        tracing::debug!(device = %name, error = %e, "no quick TC attachment from the batch");
                    }
                    undo_filters();
                    continue;
                }
            };
            match self.pin(ifindex, "xdp", xdp) {
                Ok(xdp) => {
                    self.attached.insert(
                        ifindex,
                        Attachment {
                            name: name.clone(),
                            xdp: Some(xdp),
                            tc: Held::Filter {
                                program: programs::TC_EGRESS,
                                attach_type: TcAttachType::Egress,
                                device: name.clone(),
                            },
                            tags: Held::Filter {
                                program: programs::TC_INGRESS_TAGS,
                                attach_type: TcAttachType::Ingress,
                                device: name.clone(),
                            },
                            mode,
                        },
                    );
                    attached.push((k, mode));
                }
                // The pin failed and the XDP link is gone with it: one by one, as before.
                Err(_) => undo_filters(),
            }
        }
        Ok(attached)
    }

    /// [`Dataplane::attach`] once the previous daemon's links (`old`) are known.
    fn attach_new(
        &mut self,
        name: &str,
        ifindex: u32,
        old: super::state::LeftVif,
        taken_over: bool,
    ) -> Result<AttachMode, DataplaneError> {
        // XDP first: a previous daemon's link, or a new one; where another program holds
        // the hook, the TC ingress judge instead.
        let (xdp, mut mode, ingress_program, ingress_old) = if let Some(judge) = old.judge {
            self.load_judge()?;
            (
                None,
                AttachMode::TcIngress,
                programs::TC_INGRESS_JUDGE,
                Some(judge),
            )
        } else {
            let attached = match old.xdp {
                Some(old) => self
                    .take_over_xdp(name, old)
                    .map(|l| (l, AttachMode::TakenOver)),
                None => self.attach_xdp(name, ifindex),
            };
            match attached {
                Ok((link, mode)) => (Some(link), mode, programs::TC_INGRESS_TAGS, old.tags),
                Err(e) => {
                    tracing::debug!(device = name, error = %e, "no XDP hook: judging at TC ingress");
                    self.load_judge()?;
                    if let Some(tags) = old.tags {
                        // A previous daemon's tags link has no place beside the judge.
                        let _ = tags.unpin();
                    }
                    (
                        None,
                        AttachMode::TcIngress,
                        programs::TC_INGRESS_JUDGE,
                        None,
                    )
                }
            }
        };
        let mut held: Vec<(&'static str, Held)> = xdp.into_iter().map(|l| ("xdp", l)).collect();
        let ingress_kind = if mode == AttachMode::TcIngress {
            "judge"
        } else {
            "tags"
        };
        // One `clsact` qdisc serves both hooks: made (or found) with the first filter.
        let mut clsact = false;
        for (kind, program, attach_type, old) in [
            ("tc", programs::TC_EGRESS, TcAttachType::Egress, old.tc),
            (
                ingress_kind,
                ingress_program,
                TcAttachType::Ingress,
                ingress_old,
            ),
        ] {
            // Once the daemon runs ([`Dataplane::attach_quickly`]), a new attachment is
            // quick ([`Held::Filter`]), handed to TCX later ([`Dataplane::settle`]); where
            // the quick way fails, TCX at once.
            let link = match old {
                Some(old) => self.take_over_tc(program, name, old),
                None if self.quick => self
                    .attach_filter(program, attach_type, name, ifindex, !clsact)
                    .inspect(|_| clsact = true)
                    .or_else(|e| {
                        tracing::debug!(device = name, program, error = %e, "no quick TC attachment: attaching through TCX");
                        self.attach_tc(program, attach_type, name, ifindex)
                    }),
                None => self.attach_tc(program, attach_type, name, ifindex),
            };
            match link {
                Ok(link) => held.push((kind, link)),
                Err(e) => {
                    for (_, link) in held {
                        let _ = link.release();
                    }
                    return Err(e);
                }
            }
        }
        // Pinned, the links outlive this daemon (a crash leaves the vif enforced).
        let mut pinned = Vec::new();
        let mut unpinned = held.into_iter();
        while let Some((kind, link)) = unpinned.next() {
            match self.pin(ifindex, kind, link) {
                Ok(link) => pinned.push(link),
                Err(e) => {
                    for link in pinned.into_iter().chain(unpinned.map(|(_, l)| l)) {
                        let _ = link.release();
                    }
                    return Err(e);
                }
            }
        }
        let mut pinned = pinned.into_iter();
        let xdp = if mode == AttachMode::TcIngress {
            None
        } else {
            pinned.next()
        };
        let (Some(tc), Some(tags)) = (pinned.next(), pinned.next()) else {
            unreachable!("two TC links");
        };
        if taken_over && mode != AttachMode::TcIngress {
            mode = AttachMode::TakenOver;
        }
        self.attached.insert(
            ifindex,
            Attachment {
                name: name.to_string(),
                xdp,
                tc,
                tags,
                mode,
            },
        );
        Ok(mode)
    }

    /// [`Dataplane::attach`] for a new vif the plan in force does not have yet (with no
    /// entry, the programs drop everything it sends and everything sent to it), which
    /// also gives it its state tables (connections, fragments) at the same time, on other
    /// threads: the next swap that classifies it then finds them in place. Both the
    /// attachments (each TCX one) and the tables' inserts wait for RCU grace periods; this
    /// way they pass together. Failing to make the tables is no failure of the guard: the
    /// swap makes them (or reports why it cannot) before the vif gets an entry.
    pub fn guard(&mut self, name: &str, ifindex: u32) -> Result<AttachMode, DataplaneError> {
        let mut guarded = self.guard_all(&[(name.to_string(), ifindex)]);
        guarded.pop().expect("one link").1
    }

    /// [`Dataplane::guard`] for several new vifs at once: their tables are inserted
    /// together, so that a burst of new links waits for one grace period rather than one
    /// each. The answer for each, in order.
    pub fn guard_all(
        &mut self,
        links: &[(String, u32)],
    ) -> Vec<(u32, Result<AttachMode, DataplaneError>)> {
        let new: Vec<u32> = links
            .iter()
            .map(|(_, ifindex)| *ifindex)
            .filter(|ifindex| !self.attached.contains_key(ifindex))
            .collect();
        // The others' tables are made and inserted while the links are attached; those of
        // the spare batch being inserted are waited for after.
        self.reap_insertions();
        let started = std::time::Instant::now();
        let pending = self.spares_pending();
        let inserting = self
            .state
            .prepare_unmade(new.iter().copied().filter(|i| !pending.contains(i)))
            .and_then(|tables| tables.start(self.insert_delays));
        let attached = self.attach_batch(links);
        let attaching = started.elapsed();
        self.await_spares_of(new.iter().copied());
        let inserted = inserting.and_then(|inserting| self.await_in_place(inserting));
        tracing::debug!(
            links = links.len(),
            attach_ms = attaching.as_secs_f64() * 1e3,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "guarded new links; their state tables in place"
        );
        if let Err(e) = inserted {
            tracing::warn!(links = links.len(), error = %crate::error_chain(&e), "could not give guarded interfaces their state tables yet; the swap that classifies them will");
        }
        attached
    }

    /// For a vif judged at TC ingress ([`AttachMode::TcIngress`]): tries XDP again, and
    /// if the hook is free now, attaches XDP and the tags program, then removes the
    /// judge (in that order: the vif is never without a judgement of what it sends).
    /// Returns the new mode, or `None` if the hook is still held (or the vif is not in
    /// that mode).
    pub fn retry_xdp(&mut self, ifindex: u32) -> Result<Option<AttachMode>, DataplaneError> {
        let Some(attachment) = self.attached.get(&ifindex) else {
            return Ok(None);
        };
        if attachment.mode != AttachMode::TcIngress {
            return Ok(None);
        }
        let name = attachment.name.clone();
        let Ok((xdp, mode)) = self.attach_xdp(&name, ifindex) else {
            return Ok(None);
        };
        let xdp = self.pin(ifindex, "xdp", xdp)?;
        let tags = self
            .attach_tc(
                programs::TC_INGRESS_TAGS,
                TcAttachType::Ingress,
                &name,
                ifindex,
            )
            .and_then(|link| self.pin(ifindex, "tags", link));
        let tags = match tags {
            Ok(link) => link,
            Err(e) => {
                let _ = xdp.release();
                return Err(e);
            }
        };
        let attachment = self.attached.get_mut(&ifindex).expect("checked above");
        let judge = std::mem::replace(&mut attachment.tags, tags);
        attachment.xdp = Some(xdp);
        attachment.mode = mode;
        judge.release().map_err(|e| {
            pin_err(format!("removing the TC ingress judge of {name}"))(Box::new(e))
        })?;
        Ok(Some(mode))
    }

    /// Loads the TC ingress judge (once): only where some vif needs it, since verifying
    /// it takes as long as the XDP program.
    pub(super) fn load_judge(&mut self) -> Result<(), DataplaneError> {
        let program = self.classifier(programs::TC_INGRESS_JUDGE)?;
        if program.fd().is_err() {
            program.load().map_err(prog_err(
                programs::TC_INGRESS_JUDGE,
                "verifying and loading",
            ))?;
        }
        Ok(())
    }

    fn attach_xdp(
        &mut self,
        name: &str,
        ifindex: u32,
    ) -> Result<(Held, AttachMode), DataplaneError> {
        let program = self.ingress()?;
        let (id, mode) = match program.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(id) => (id, AttachMode::Native),
            Err(native_err) => {
                let id = program
                    .attach_to_if_index(ifindex, XdpMode::Skb)
                    .map_err(prog_err(
                        programs::XDP_INGRESS,
                        format!(
                            "attaching to {name} (ifindex {ifindex}) in native mode failed \
                             ({native_err}) and in generic mode too"
                        ),
                    ))?;
                (id, AttachMode::Generic)
            }
        };
        let link = program
            .take_link(id)
            .map_err(prog_err(programs::XDP_INGRESS, "taking the link"))?;
        let link = FdLink::try_from(link).map_err(|e| {
            pin_err(format!("the XDP link of {name} is not a bpf_link"))(Box::new(e))
        })?;
        Ok((Held::Owned(link), mode))
    }

    fn attach_tc(
        &mut self,
        program_name: &'static str,
        attach_type: TcAttachType,
        name: &str,
        ifindex: u32,
    ) -> Result<Held, DataplaneError> {
        let program = self.classifier(program_name)?;
        // First in the interface's TCX chain: no program attached earlier can pass a frame
        // before isolator has judged it. isolator hands what it passes on to the rest.
        let first = TcAttachOptions::TcxOrder(LinkOrder::first());
        let id = program
            .attach_with_options(name, attach_type, first)
            .map_err(prog_err(
                program_name,
                format!("attaching to the {attach_type:?} of {name} (ifindex {ifindex})"),
            ))?;
        let link = program
            .take_link(id)
            .map_err(prog_err(program_name, "taking the link"))?;
        let link = FdLink::try_from(link).map_err(|e| {
            pin_err(format!("the TC link of {name} is not a bpf_link"))(Box::new(e))
        })?;
        Ok(Held::Owned(link))
    }

    /// Attaches a TC program the quick way: a `cls_bpf` filter on the vif's `clsact`
    /// qdisc (made here first with `clsact`, if the vif has none: a request under the
    /// RTNL lock, about 0.2 ms, so once per vif), at isolator's priority and handle. One
    /// that a previous daemon left there is replaced, atomically.
    fn attach_filter(
        &mut self,
        program_name: &'static str,
        attach_type: TcAttachType,
        name: &str,
        ifindex: u32,
        clsact: bool,
    ) -> Result<Held, DataplaneError> {
        // Already there (isolator's, or another tool's) is fine.
        if clsact {
            let _ = aya::programs::tc::qdisc_add_clsact(name);
        }
        let program = self.classifier(program_name)?;
        let options = NlOptions {
            priority: FILTER_PRIORITY,
            handle: FILTER_HANDLE,
            classid: None,
        };
        let what = || {
            format!(
                "attaching to the {attach_type:?} of {name} (ifindex {ifindex}) as a cls_bpf filter"
            )
        };
        let id =
            match program.attach_with_options(name, attach_type, TcAttachOptions::Netlink(options))
            {
                Ok(id) => id,
                Err(aya::programs::ProgramError::TcError(TcError::NetlinkError(e)))
                    if e.raw_os_error() == Some(libc::EEXIST) =>
                {
                    let left = SchedClassifierLink::attached(
                        name,
                        attach_type,
                        FILTER_PRIORITY,
                        FILTER_HANDLE,
                        None,
                    )
                    .map_err(|e| prog_err(program_name, what())(e.into()))?;
                    program
                        .attach_to_link(left)
                        .map_err(prog_err(program_name, what()))?
                }
                Err(e) => return Err(prog_err(program_name, what())(e)),
            };
        // Held as what it is, not as aya's link, whose drop would detach it: the filter
        // stays where this daemon stops or fails (I7).
        let link = program
            .take_link(id)
            .map_err(prog_err(program_name, "taking the link"))?;
        std::mem::forget(link);
        Ok(Held::Filter {
            program: program_name,
            attach_type,
            device: name.to_string(),
        })
    }

    /// Hands one of a vif's TC hooks that still hold a quick attachment
    /// ([`Held::Filter`]) over to TCX: the hook gets the program through TCX, first in its
    /// chain, pinned; then the filter goes. From the first hook's handover to the last
    /// one's, the vif is in `HANDOFF`, where the programs end the hook's chain at a pass
    /// (`TCX_PASS`), so that the filter, which runs after every TCX program, does not
    /// judge a frame again: every frame judged, none twice. A TCX attachment waits for an
    /// RCU grace period holding the RTNL lock, which every new link's creation and
    /// attachment wait for too: the daemon hands over one hook at a time, when no new
    /// link is waiting. Returns whether a hook of the vif still holds a quick attachment.
    pub fn settle(&mut self, ifindex: u32) -> Result<bool, DataplaneError> {
        let Some(attachment) = self.attached.get(&ifindex) else {
            return Ok(false);
        };
        let (kind, program, attach_type) = if attachment.tc.is_filter() {
            ("tc", programs::TC_EGRESS, TcAttachType::Egress)
        } else if attachment.tags.is_filter() {
            if attachment.mode == AttachMode::TcIngress {
                ("judge", programs::TC_INGRESS_JUDGE, TcAttachType::Ingress)
            } else {
                ("tags", programs::TC_INGRESS_TAGS, TcAttachType::Ingress)
            }
        } else {
            return Ok(false);
        };
        let name = attachment.name.clone();
        self.hand_over(ifindex, true)?;
        let link = self
            .attach_tc(program, attach_type, &name, ifindex)
            .and_then(|link| self.pin(ifindex, kind, link));
        let link = match link {
            Ok(link) => link,
            Err(e) => {
                // The filter judges alone, as before.
                self.hand_over(ifindex, false)?;
                return Err(e);
            }
        };
        let attachment = self.attached.get_mut(&ifindex).expect("checked above");
        let slot = if kind == "tc" {
            &mut attachment.tc
        } else {
            &mut attachment.tags
        };
        let filter = std::mem::replace(slot, link);
        let quick = attachment.quick();
        if let Err(e) = filter.release() {
            // The filter stays beside the TCX link: the vif stays in `HANDOFF` (until it
            // is detached), where the filter judges nothing again.
            return Err(pin_err(format!(
                "removing the quick TC attachment of {name}"
            ))(Box::new(e)));
        }
        if !quick {
            self.hand_over(ifindex, false)?;
        }
        Ok(quick)
    }

    /// Whether new attachments are made the quick way (`cls_bpf` filters, handed over to
    /// TCX later by [`Dataplane::settle`]): for links that come while the daemon runs,
    /// not for those it finds when it starts, which it attaches through TCX at once.
    pub fn attach_quickly(&mut self, on: bool) {
        self.quick = on;
    }

    /// The vifs whose TC hooks hold a quick attachment still ([`Dataplane::settle`]).
    pub fn unsettled(&self) -> impl Iterator<Item = u32> + '_ {
        self.attached
            .iter()
            .filter(|(_, a)| a.quick())
            .map(|(i, _)| *i)
    }

    /// For tests: puts a vif into `HANDOFF` or takes it out, as [`Dataplane::settle`] does
    /// around a handover.
    #[doc(hidden)]
    pub fn set_handing_over(&mut self, ifindex: u32, on: bool) -> Result<(), DataplaneError> {
        self.hand_over(ifindex, on)
    }

    /// Puts a vif into `HANDOFF` or takes it out, with `HANDOFF_COUNT` counting them: up
    /// before an entry goes in, down after one went.
    fn hand_over(&mut self, ifindex: u32, on: bool) -> Result<(), DataplaneError> {
        use isolator_common::maps as m;
        let changed = if on {
            self.handing.insert(ifindex)
        } else {
            self.handing.remove(&ifindex)
        };
        if !changed {
            return Ok(());
        }
        if !on {
            let _ = self.handoff.remove(&ifindex);
        }
        self.handoff_count
            .set(0, self.handing.len() as u32, 0)
            .map_err(super::error::map_err(
                m::HANDOFF_COUNT,
                "counting the vifs handed over",
            ))?;
        if on {
            self.handoff
                .insert(ifindex, 1, 0)
                .map_err(super::error::map_err(
                    m::HANDOFF,
                    "marking a vif handed over",
                ))?;
        }
        Ok(())
    }

    /// Removes isolator's quick attachments that a previous daemon left on `name`'s TC
    /// hooks (the caller has the vif in `HANDOFF`).
    fn remove_quick_leftovers(&mut self, name: &str) {
        for (program, attach_type) in TC_PROGRAMS {
            if let Err(e) = remove_filters(name, attach_type, program) {
                tracing::warn!(device = name, program, error = %e, "could not remove a quick TC attachment a previous daemon left");
            }
        }
    }

    fn take_over_xdp(&mut self, name: &str, old: PinnedLink) -> Result<Held, DataplaneError> {
        let link = old
            .unpin()
            .map_err(|e| pin_err(format!("unpinning the XDP link of {name}"))(Box::new(e)))?;
        let link = XdpLink::try_from(link)
            .map_err(|e| pin_err(format!("the pinned XDP link of {name}"))(Box::new(e)))?;
        let program = self.ingress()?;
        let id = program.attach_to_link(link).map_err(prog_err(
            programs::XDP_INGRESS,
            format!("replacing the program on {name}'s pinned link"),
        ))?;
        let link = program
            .take_link(id)
            .map_err(prog_err(programs::XDP_INGRESS, "taking the link"))?;
        let link = FdLink::try_from(link)
            .map_err(|e| pin_err(format!("the XDP link of {name}"))(Box::new(e)))?;
        Ok(Held::Owned(link))
    }

    fn take_over_tc(
        &mut self,
        program_name: &'static str,
        name: &str,
        old: PinnedLink,
    ) -> Result<Held, DataplaneError> {
        let link = old
            .unpin()
            .map_err(|e| pin_err(format!("unpinning the TC link of {name}"))(Box::new(e)))?;
        let link = SchedClassifierLink::try_from(link)
            .map_err(|e| pin_err(format!("the pinned TC link of {name}"))(Box::new(e)))?;
        let program = self.classifier(program_name)?;
        let id = program.attach_to_link(link).map_err(prog_err(
            program_name,
            format!("replacing the program on {name}'s pinned link"),
        ))?;
        let link = program
            .take_link(id)
            .map_err(prog_err(program_name, "taking the link"))?;
        let link = FdLink::try_from(link)
            .map_err(|e| pin_err(format!("the TC link of {name}"))(Box::new(e)))?;
        Ok(Held::Owned(link))
    }

    /// Pins a link under the state directory (when there is one). On error the link is
    /// gone (detached).
    fn pin(&self, ifindex: u32, kind: &str, link: Held) -> Result<Held, DataplaneError> {
        let Some(pins) = &self.pins else {
            return Ok(link);
        };
        let Held::Owned(fd) = link else {
            return Ok(link);
        };
        let path = pins.links.join(format!("{ifindex}-{kind}"));
        // A leftover that was not a link would block the pin.
        let _ = std::fs::remove_file(&path);
        fd.pin(&path)
            .map(Held::Pinned)
            .map_err(|e| pin_err(format!("pinning {}", path.display()))(Box::new(e)))
    }

    /// Links pinned by a previous daemon that no vif took over: the vifs are gone or no
    /// longer managed, so their programs are removed.
    pub fn release_leftovers(&mut self) -> usize {
        let Some(pins) = self.pins.as_mut() else {
            return 0;
        };
        let left = std::mem::take(&mut pins.left);
        let mut count = left.len();
        if !self.swept_filters {
            // Quick attachments have no pins: a previous daemon's are found on the links
            // themselves, once.
            self.swept_filters = true;
            let attached: std::collections::BTreeSet<u32> = self.attached.keys().copied().collect();
            count += remove_all_quick_attachments(|ifindex| !attached.contains(&ifindex));
        }
        for (_, vif) in left {
            for link in [vif.xdp, vif.tc, vif.tags, vif.judge].into_iter().flatten() {
                let _ = link.unpin();
            }
        }
        count
    }

    /// Detaches the programs from one vif.
    pub fn detach(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let Some(attachment) = self.attached.remove(&ifindex) else {
            return Ok(());
        };
        let name = attachment.name;
        let _ = self.hand_over(ifindex, false);
        let xdp = attachment.xdp.map_or(Ok(()), Held::release);
        let tc = attachment.tc.release();
        let tags = attachment.tags.release();
        xdp.and(tc)
            .and(tags)
            .map_err(|e| pin_err(format!("detaching from {name}"))(Box::new(e)))
    }

    /// Detaches from every vif; returns the names of the ones that failed with why.
    pub fn detach_all(&mut self) -> Vec<(String, DataplaneError)> {
        let mut failures = Vec::new();
        let ifindexes: Vec<u32> = self.attached.keys().copied().collect();
        for ifindex in ifindexes {
            let name = self.attached[&ifindex].name.clone();
            if let Err(e) = self.detach(ifindex) {
                failures.push((name, e));
            }
        }
        failures
    }

    /// The vifs the program is attached to: (ifindex, name, mode).
    pub fn attachments(&self) -> impl Iterator<Item = (u32, &str, AttachMode)> {
        self.attached
            .iter()
            .map(|(i, a)| (*i, a.name.as_str(), a.mode))
    }
}

/// Removes isolator's quick attachments (`cls_bpf` filters running its TC programs) from
/// every link of the namespace for which `wanted` says so; returns how many links had
/// some. Links are listed with `if_nameindex(3)`.
pub(super) fn remove_all_quick_attachments(wanted: impl Fn(u32) -> bool) -> usize {
    let mut removed = 0;
    for (ifindex, name) in namespace_links() {
        if !wanted(ifindex) {
            continue;
        }
        let mut any = false;
        for (program, attach_type) in TC_PROGRAMS {
            // Nothing there (no clsact, no such filter) is the common answer.
            if aya::programs::tc::qdisc_detach_program(&name, attach_type, program).is_ok() {
                any = true;
            }
        }
        removed += usize::from(any);
    }
    removed
}

/// The links of the calling thread's network namespace: (ifindex, name).
pub fn namespace_links() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array ended by a zero entry, or null; it is freed
    // with if_freenameindex once read.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut at = list;
        while (*at).if_index != 0 && !(*at).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*at).if_name)
                .to_string_lossy()
                .into_owned();
            out.push(((*at).if_index, name));
            at = at.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}
