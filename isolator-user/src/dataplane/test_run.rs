//! Running the loaded programs on a frame with BPF_PROG_TEST_RUN: the verdict tables, the
//! benchmarks, and `isolator explain`'s runs of the programs attached on the host
//! ([`test_run_live`], by file descriptor: another process's programs).

use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use isolator_common::programs;

use super::Dataplane;
use super::error::{DataplaneError, prog_err};

/// What the TC programs return for a frame they pass: `TCX_NEXT`, so that programs
/// attached after isolator's still judge it.
pub const TC_PASS: i32 = -1;
/// What the TC programs return for a frame they pass on a vif whose hooks are being handed
/// over from the quick `cls_bpf` attachment to TCX: `TC_ACT_OK` (under TCX, `TCX_PASS`:
/// the chain ends there).
pub const TC_PASS_END: i32 = 0;
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

/// Where a live test run pretends the frame is: arriving on a vif (XDP, or the TC ingress
/// judge), or delivered through one after entering the host through `entered`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveContext {
    /// An XDP program: the frame arrives on `ifindex`.
    Xdp { ifindex: u32 },
    /// A TC program on `ifindex`; the frame entered the host through `entered` (for the
    /// ingress judge, the vif itself; 0: the host's own stack).
    Tc { ifindex: u32, entered: u32 },
}

/// `BPF_PROG_TEST_RUN` (include/uapi/linux/bpf.h).
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`, up to `ctx_out`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Runs the program `prog` (any process's, by file descriptor: BPF_PROG_GET_FD_BY_ID) once
/// on `frame` in `context`, with BPF_PROG_TEST_RUN, and returns its return value (an XDP
/// action, or a TC action as `u32`). The interfaces must be devices of the calling
/// thread's network namespace. The program runs on its live maps: it counts the frame and
/// may open a tracked connection, as for a real frame; nothing is sent.
pub fn test_run_live(
    prog: std::os::fd::BorrowedFd<'_>,
    frame: &[u8],
    context: LiveContext,
) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    let xdp;
    let tc;
    let ctx: &[u8] = match context {
        LiveContext::Xdp { ifindex } => {
            xdp = xdp_md(ifindex, frame);
            xdp.bytes()
        }
        LiveContext::Tc { ifindex, entered } => {
            tc = sk_buff(ifindex, entered);
            tc.bytes()
        }
    };
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..TestAttr::default()
    };
    // SAFETY: `attr` is a valid, initialised `bpf_attr` prefix of the size passed; the
    // buffers it points at (frame, out, ctx) live until the call returns and have the
    // sizes given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            size_of::<TestAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr.retval)
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

    /// Runs the tags program (TC ingress, after XDP) once on `frame` arriving on
    /// `ifindex`, with BPF_PROG_TEST_RUN, and returns the TC action.
    pub fn test_run_tags(&mut self, ifindex: u32, frame: &[u8]) -> Result<i32, DataplaneError> {
        let ctx = sk_buff(ifindex, 0);
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(ctx.bytes()),
            ..TestRunOptions::new()
        };
        let result = self
            .classifier(programs::TC_INGRESS_TAGS)?
            .test_run(opts)
            .map_err(prog_err(programs::TC_INGRESS_TAGS, "test run"))?;
        Ok(result.return_value as i32)
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
