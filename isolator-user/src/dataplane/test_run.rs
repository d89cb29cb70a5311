//! Running the loaded programs on a frame with BPF_PROG_TEST_RUN: the verdict tables, the
//! benchmarks, and (later) `verify`'s live reachability matrix.

use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use isolator_common::programs;

use super::Dataplane;
use super::error::{DataplaneError, prog_err};

/// What the TC programs return for a frame they pass: `TCX_NEXT`, so that programs
/// attached after isolator's still judge it.
pub const TC_PASS: i32 = -1;
/// What the TC programs return for a frame they drop: `TC_ACT_SHOT`.
pub const TC_DROP: i32 = 2;

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it: the kernel wants `data_end` = the frame's
/// length and every other field zero but the ingress interface.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// The head of `struct __sk_buff`, up to `ifindex`: the kernel takes a prefix of the
/// context and wants every field it does not let a test set left zero (it lets one set
/// `ingress_ifindex` and `ifindex`, among others).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SkBuffHead {
    len: u32,
    pkt_type: u32,
    mark: u32,
    queue_mapping: u32,
    protocol: u32,
    vlan_present: u32,
    vlan_tci: u32,
    vlan_proto: u32,
    priority: u32,
    ingress_ifindex: u32,
    ifindex: u32,
}

/// The bytes of a context struct.
trait Context: Copy {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the contexts are `#[repr(C)]` structs of `u32`s (no padding), so every
        // byte is initialized; the slice borrows `self`.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }
}
impl Context for XdpMd {}
impl Context for SkBuffHead {}

fn xdp_md(ifindex: u32, frame: &[u8]) -> XdpMd {
    XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        ..XdpMd::default()
    }
}

/// A socket buffer delivered through `ifindex`, having entered the host through
/// `ingress_ifindex` (0: from the host's own stack).
fn sk_buff(ifindex: u32, ingress_ifindex: u32) -> SkBuffHead {
    SkBuffHead {
        ifindex,
        ingress_ifindex,
        ..SkBuffHead::default()
    }
}

impl Dataplane {
    /// A file descriptor of the loaded program `name` (one of
    /// [`isolator_common::programs`]), for running it from another thread with
    /// BPF_PROG_TEST_RUN while this one changes the maps.
    pub fn program_fd(&self, name: &'static str) -> Result<std::os::fd::OwnedFd, DataplaneError> {
        let program = self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        let fd = program.fd().map_err(prog_err(name, "getting its fd"))?;
        std::os::fd::AsFd::as_fd(fd)
            .try_clone_to_owned()
            .map_err(|e| prog_err(name, "duplicating its fd")(e.into()))
    }

    /// Runs the ingress program once on `frame` as if it arrived on `ifindex`
    /// (BPF_PROG_TEST_RUN) and returns the XDP action. `ifindex` must name a device in
    /// the calling thread's network namespace.
    pub fn test_run_ingress(&mut self, ifindex: u32, frame: &[u8]) -> Result<u32, DataplaneError> {
        let ctx = xdp_md(ifindex, frame);
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(ctx.bytes()),
            ..TestRunOptions::new()
        };
        let result = self
            .ingress()?
            .test_run(opts)
            .map_err(prog_err(programs::XDP_INGRESS, "test run"))?;
        Ok(result.return_value)
    }

    /// Runs the ingress program (or, with `baseline`, the pass-everything baseline)
    /// `repeat` times on `frame` arriving on `ifindex` and returns the kernel's average
    /// time per run. For benchmarks.
    pub fn bench_ingress(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
        baseline: bool,
    ) -> Result<Duration, DataplaneError> {
        let ctx = xdp_md(ifindex, frame);
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(ctx.bytes()),
            repeat,
            ..TestRunOptions::new()
        };
        let name = if baseline {
            programs::XDP_BASELINE
        } else {
            programs::XDP_INGRESS
        };
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(prog_err(name, "unexpected program type"))?;
        if baseline && program.fd().is_err() {
            program.load().map_err(prog_err(name, "loading"))?;
        }
        let result = program
            .test_run(opts)
            .map_err(prog_err(name, "benchmark run"))?;
        Ok(result.duration)
    }

    /// Times `repeat` runs of the TC ingress program (VLAN tags in offload metadata) on
    /// `frame` received on `ifindex` (BPF_PROG_TEST_RUN cannot set a metadata tag, so this
    /// is the cost every untagged frame pays); returns the kernel's average per run.
    pub fn bench_tags(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> Result<Duration, DataplaneError> {
        let ctx = sk_buff(ifindex, 0);
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(ctx.bytes()),
            repeat,
            ..TestRunOptions::new()
        };
        let result = self
            .classifier(programs::TC_INGRESS_TAGS)?
            .test_run(opts)
            .map_err(prog_err(programs::TC_INGRESS_TAGS, "benchmark run"))?;
        Ok(result.duration)
    }

    /// Runs the egress program once on `frame` as if it were delivered through `ifindex`
    /// after entering the host through `entered` (0: from the host's own stack), with
    /// BPF_PROG_TEST_RUN, and returns the TC action ([`TC_PASS`] or [`TC_DROP`]). The
    /// interfaces must be devices in the calling thread's network namespace.
    pub fn test_run_egress(
        &mut self,
        ifindex: u32,
        entered: u32,
        frame: &[u8],
    ) -> Result<i32, DataplaneError> {
        let ctx = sk_buff(ifindex, entered);
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(ctx.bytes()),
            ..TestRunOptions::new()
        };
        let result = self
            .classifier(programs::TC_EGRESS)?
            .test_run(opts)
            .map_err(prog_err(programs::TC_EGRESS, "test run"))?;
        Ok(result.return_value as i32)
    }

    /// Runs the TC ingress judge (loading it first if need be) once on `frame` as if the
    /// VM behind `ifindex` sent it, with BPF_PROG_TEST_RUN, and returns the TC action.
    pub fn test_run_ingress_tc(
        &mut self,
        ifindex: u32,
        frame: &[u8],
    ) -> Result<i32, DataplaneError> {
        self.load_judge()?;
        let ctx = sk_buff(ifindex, ifindex);
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(ctx.bytes()),
            ..TestRunOptions::new()
        };
        let result = self
            .classifier(programs::TC_INGRESS_JUDGE)?
            .test_run(opts)
            .map_err(prog_err(programs::TC_INGRESS_JUDGE, "test run"))?;
        Ok(result.return_value as i32)
    }
}
