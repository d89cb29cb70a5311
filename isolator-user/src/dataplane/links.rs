//! Attaching the programs to vifs, pinning their links, taking over a previous daemon's
//! links without a gap, and detaching.

use aya::programs::{
    TcAttachType, XdpMode,
    links::{FdLink, LinkOrder, PinnedLink},
    tc::SchedClassifierLink,
    tc::TcAttachOptions,
    xdp::XdpLink,
};
use isolator_common::programs;

use super::Dataplane;
use super::error::{DataplaneError, pin_err, prog_err};

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

/// A link the dataplane holds: by its file descriptor alone, or pinned as well, so that
/// it outlives the daemon.
pub(super) enum Held {
    Owned(FdLink),
    Pinned(PinnedLink),
}

impl Held {
    /// Detaches the link (and removes its pin).
    pub(super) fn release(self) -> std::io::Result<()> {
        match self {
            Held::Owned(link) => drop(link),
            Held::Pinned(link) => drop(link.unpin()?),
        }
        Ok(())
    }
}

pub(super) struct Attachment {
    name: String,
    /// The XDP link; `None` in [`AttachMode::TcIngress`].
    xdp: Option<Held>,
    tc: Held,
    /// The tags program's link, or in [`AttachMode::TcIngress`] the TC ingress judge's.
    tags: Held,
    mode: AttachMode,
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
        self.note_counted([ifindex]);
        let old = self
            .pins
            .as_mut()
            .and_then(|p| p.left.remove(&ifindex))
            .unwrap_or_default();
        let taken_over =
            old.xdp.is_some() || old.tc.is_some() || old.tags.is_some() || old.judge.is_some();

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
        for (kind, program, attach_type, old) in [
            ("tc", programs::TC_EGRESS, TcAttachType::Egress, old.tc),
            (
                ingress_kind,
                ingress_program,
                TcAttachType::Ingress,
                ingress_old,
            ),
        ] {
            let link = match old {
                Some(old) => self.take_over_tc(program, name, old),
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
        if let Some(existing) = self.attached.get(&ifindex) {
            return Ok(existing.mode);
        }
        let tables = self.state.prepare([ifindex]);
        let (attached, inserted) = std::thread::scope(|scope| {
            let inserting = tables.map(|tables| scope.spawn(move || tables.insert()));
            let attached = self.attach(name, ifindex);
            let inserted = inserting.and_then(|inserting| {
                inserting
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            });
            (attached, inserted)
        });
        if let Err(e) = inserted {
            tracing::warn!(device = name, error = %crate::error_chain(&e), "could not give a guarded interface its state tables yet; the swap that classifies it will");
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
        let count = left.len();
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
